//! Inception Score (Salimans et al. 2016) in f64.
//!
//! Two ways to form the S splits, each scoring `exp(mean_i KL(p(y|x_i) ‖ p_k(y)))` with `p_k`
//! the split's mean row; the result is the mean and the population (ddof 0) standard deviation
//! of the split scores:
//! - chunks (the common convention, `subset_size = None`): rows optionally shuffled with a
//!   recorded seed (class-sorted input gives very low per-split scores), then S contiguous
//!   chunks `[k·N/S, (k+1)·N/S)`;
//! - random subsets (the ChatPainter paper's protocol: 10 subsets of 30k of its 40k images,
//!   `subset_size = Some(m)`): split k is the first m rows of a permutation seeded with
//!   SplitMix64(seed + k), so subsets overlap as independent draws do.
//!
//! The shuffle is a Fisher–Yates driven by the workspace's SplitMix64 with Lemire's unbiased
//! bounded draw ([`SplitMix::below_unbiased`]), not `rand`, so that a recorded seed reproduces
//! the same permutation regardless of dependency versions.

use chatpainter_artifacts::SplitMix;
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};

/// Number of splits used by every published number.
pub const DEFAULT_SPLITS: usize = 10;

/// Row-major `[rows, cols]` matrix of class posteriors `p(y|x)`, f64.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbabilityMatrix {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
}

impl ProbabilityMatrix {
    /// Wraps probabilities (e.g. from [`crate::inception::InceptionV3::probabilities`]).
    /// Every row must be finite, non-negative and sum to 1 within 1e-3 (f32 softmax round-off).
    pub fn new(rows: usize, cols: usize, data: Vec<f64>) -> Result<Self> {
        if rows == 0 || cols == 0 {
            return Err(EvalError::InvalidArgument(format!(
                "probability matrix must be non-empty, got [{rows}, {cols}]"
            )));
        }
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(EvalError::InvalidArgument(format!(
                "probability matrix [{rows}, {cols}] needs {} values, found {}",
                rows.saturating_mul(cols),
                data.len()
            )));
        }
        for (r, row) in data.chunks_exact(cols).enumerate() {
            if let Some(v) = row.iter().find(|v| !v.is_finite() || **v < 0.0) {
                return Err(EvalError::InvalidProbabilities {
                    row: r,
                    reason: format!("entry {v} is not a finite non-negative number"),
                });
            }
            let s: f64 = row.iter().sum();
            if (s - 1.0).abs() > 1e-3 {
                return Err(EvalError::InvalidProbabilities {
                    row: r,
                    reason: format!(
                        "sums to {s}, not 1 (pass softmax outputs, or use from_logits)"
                    ),
                });
            }
        }
        Ok(Self { rows, cols, data })
    }

    /// From f32 probabilities as read back from the device.
    pub fn from_f32(rows: usize, cols: usize, data: &[f32]) -> Result<Self> {
        Self::new(rows, cols, data.iter().map(|&v| f64::from(v)).collect())
    }

    /// Softmax of f32 logits computed in f64 (max-subtracted), so no precision is lost before
    /// the score.
    pub fn from_logits(rows: usize, cols: usize, logits: &[f32]) -> Result<Self> {
        if rows == 0 || cols == 0 || rows.checked_mul(cols) != Some(logits.len()) {
            return Err(EvalError::InvalidArgument(format!(
                "logits [{rows}, {cols}] need {} values, found {}",
                rows.saturating_mul(cols),
                logits.len()
            )));
        }
        let mut data = Vec::with_capacity(logits.len());
        for (r, row) in logits.chunks_exact(cols).enumerate() {
            if row.iter().any(|v| !v.is_finite()) {
                return Err(EvalError::InvalidProbabilities {
                    row: r,
                    reason: "non-finite logit".into(),
                });
            }
            let m = row
                .iter()
                .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
            let start = data.len();
            data.extend(row.iter().map(|&v| (f64::from(v) - m).exp()));
            let z: f64 = data[start..].iter().sum();
            data[start..].iter_mut().for_each(|v| *v /= z);
        }
        Self::new(rows, cols, data)
    }

    /// Number of rows (images).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of classes.
    pub fn cols(&self) -> usize {
        self.cols
    }

    fn row(&self, r: usize) -> &[f64] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// Settings of one Inception Score computation (recorded next to the result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InceptionScoreConfig {
    /// Number of contiguous chunks S (10 by convention).
    pub splits: usize,
    /// Shuffle rows with this seed before splitting; `None` keeps the given order (only for
    /// input already in random order, or for exact tests). Seeds the subsets too.
    pub shuffle_seed: Option<u64>,
    /// Score S random subsets of this many rows instead of S chunks (the paper's protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset_size: Option<usize>,
}

impl InceptionScoreConfig {
    /// 10 splits, shuffled with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            splits: DEFAULT_SPLITS,
            shuffle_seed: Some(seed),
            subset_size: None,
        }
    }
}

/// Result of [`inception_score`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InceptionScore {
    /// Mean of the chunk scores.
    pub mean: f64,
    /// Population (ddof 0) standard deviation of the chunk scores.
    pub std: f64,
    /// Every chunk's score, in chunk order.
    pub split_scores: Vec<f64>,
    /// Number of images.
    pub n: usize,
    /// Number of classes.
    pub num_classes: usize,
    /// The settings used.
    pub config: InceptionScoreConfig,
}

impl std::fmt::Display for InceptionScore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.4} ± {:.4}", self.mean, self.std)
    }
}

/// The permutation `inception_score` applies for `seed`: `perm[j]` is the row placed at j.
pub fn shuffle_permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix::new(seed);
    for i in (1..n).rev() {
        let j = rng.below_unbiased(i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    perm
}

/// Inception Score of `probs` (the splits as the module docs say).
///
/// Errors if `splits` is 0 or larger than the number of rows (an empty chunk has no marginal).
pub fn inception_score(
    probs: &ProbabilityMatrix,
    config: InceptionScoreConfig,
) -> Result<InceptionScore> {
    let (n, k) = (probs.rows, probs.cols);
    let s = config.splits;
    if s == 0 || s > n {
        return Err(EvalError::InvalidArgument(format!(
            "Inception Score needs 1 ≤ splits ≤ rows, got splits = {s}, rows = {n}"
        )));
    }
    if let Some(m) = config.subset_size
        && (m == 0 || m > n)
    {
        return Err(EvalError::InvalidArgument(format!(
            "Inception Score subsets need 1 ≤ subset_size ≤ rows, got {m} of {n} rows"
        )));
    }
    let seed = config.shuffle_seed.unwrap_or(0);
    let order: Vec<usize> = match config.shuffle_seed {
        Some(seed) if config.subset_size.is_none() => shuffle_permutation(n, seed),
        _ => (0..n).collect(),
    };
    let mut split_scores = Vec::with_capacity(s);
    let mut marginal = vec![0.0f64; k];
    for chunk in 0..s {
        let subset;
        let rows = match config.subset_size {
            Some(m) => {
                let draw = SplitMix::new(seed.wrapping_add(chunk as u64)).next_u64();
                subset = shuffle_permutation(n, draw);
                &subset[..m]
            }
            None => &order[chunk * n / s..(chunk + 1) * n / s],
        };
        marginal.iter_mut().for_each(|m| *m = 0.0);
        for &r in rows {
            for (m, p) in marginal.iter_mut().zip(probs.row(r)) {
                *m += p;
            }
        }
        let count = rows.len() as f64;
        marginal.iter_mut().for_each(|m| *m /= count);
        let log_marginal: Vec<f64> = marginal.iter().map(|m| m.ln()).collect();
        let mut kl_sum = 0.0f64;
        for &r in rows {
            // 0 · log 0 = 0 (the limit); where p > 0 the marginal is > 0 too.
            kl_sum += probs
                .row(r)
                .iter()
                .zip(&log_marginal)
                .filter(|(p, _)| **p > 0.0)
                .map(|(p, lm)| p * (p.ln() - lm))
                .sum::<f64>();
        }
        split_scores.push((kl_sum / count).exp());
    }
    let mean = split_scores.iter().sum::<f64>() / s as f64;
    let var = split_scores.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / s as f64;
    Ok(InceptionScore {
        mean,
        std: var.sqrt(),
        split_scores,
        n,
        num_classes: k,
        config,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    fn one_hot(rows: usize, k: usize, class_of: impl Fn(usize) -> usize) -> ProbabilityMatrix {
        let mut d = vec![0.0; rows * k];
        for r in 0..rows {
            d[r * k + class_of(r)] = 1.0;
        }
        ProbabilityMatrix::new(rows, k, d).unwrap()
    }

    #[test]
    fn identical_rows_score_one() {
        let row = [0.1, 0.2, 0.3, 0.4];
        let d: Vec<f64> = (0..100).flat_map(|_| row).collect();
        let p = ProbabilityMatrix::new(100, 4, d).unwrap();
        for cfg in [
            InceptionScoreConfig::new(7),
            InceptionScoreConfig {
                splits: 10,
                shuffle_seed: None,
                subset_size: None,
            },
        ] {
            let is = inception_score(&p, cfg).unwrap();
            assert!((is.mean - 1.0).abs() < 1e-12, "{is:?}");
            assert!(is.std.abs() < 1e-12);
        }
    }

    #[test]
    fn even_one_hot_scores_k() {
        // 1000 rows, 10 splits of 100, class = row mod 20 → every chunk holds each of the
        // K = 20 classes exactly 5 times.
        let k = 20;
        let p = one_hot(1000, 1008, |r| r % k);
        let is = inception_score(
            &p,
            InceptionScoreConfig {
                splits: 10,
                shuffle_seed: None,
                subset_size: None,
            },
        )
        .unwrap();
        assert!((is.mean - k as f64).abs() < 1e-9, "{is:?}");
        assert!(is.std < 1e-9);
        assert_eq!(is.split_scores.len(), 10);
    }

    #[test]
    fn sorted_input_scores_low_without_shuffle_and_recovers_with_it() {
        // Class-sorted rows: each chunk sees only 1 class → IS = 1, the pitfall the shuffle
        // guards against. Shuffled, every chunk sees ~all 10 classes.
        let p = one_hot(10_000, 10, |r| r / 1000);
        let sorted = inception_score(
            &p,
            InceptionScoreConfig {
                splits: 10,
                shuffle_seed: None,
                subset_size: None,
            },
        )
        .unwrap();
        assert!((sorted.mean - 1.0).abs() < 1e-12);
        let shuffled = inception_score(&p, InceptionScoreConfig::new(1234)).unwrap();
        assert!(shuffled.mean > 9.8 && shuffled.mean <= 10.0, "{shuffled:?}");
        // Same seed, same permutation, same number.
        assert_eq!(
            shuffled,
            inception_score(&p, InceptionScoreConfig::new(1234)).unwrap()
        );
    }

    #[test]
    fn permutation_is_a_permutation_and_seeded() {
        let a = shuffle_permutation(1000, 42);
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert_eq!(a, shuffle_permutation(1000, 42));
        assert_ne!(a, shuffle_permutation(1000, 43));
        // Golden values from an independent Python transcription of SplitMix64 + Lemire +
        // Fisher–Yates (and SplitMix64(0)'s published first output 0xE220A8397B1DCDAF): pins
        // the algorithm so a recorded seed stays meaningful.
        assert_eq!(SplitMix::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(
            shuffle_permutation(10, 0),
            vec![4, 9, 2, 5, 1, 7, 6, 0, 3, 8]
        );
    }

    /// The score of a set of rows, straight from the definition in f64.
    fn direct(p: &ProbabilityMatrix, rows: &[usize]) -> f64 {
        let k = p.cols();
        let marginal: Vec<f64> = (0..k)
            .map(|c| rows.iter().map(|&r| p.row(r)[c]).sum::<f64>() / rows.len() as f64)
            .collect();
        let kl: f64 = rows
            .iter()
            .map(|&r| {
                (0..k)
                    .filter(|&c| p.row(r)[c] > 0.0)
                    .map(|c| p.row(r)[c] * (p.row(r)[c] / marginal[c]).ln())
                    .sum::<f64>()
            })
            .sum();
        (kl / rows.len() as f64).exp()
    }

    fn random_probs(rows: usize, k: usize) -> ProbabilityMatrix {
        let mut rng = SplitMix::new(99);
        let mut d = Vec::with_capacity(rows * k);
        for _ in 0..rows {
            let raw: Vec<f64> = (0..k)
                .map(|_| (rng.next_u64() >> 11) as f64 + 1.0)
                .collect();
            let z: f64 = raw.iter().map(|v| v.powi(3)).sum();
            d.extend(raw.iter().map(|v| v.powi(3) / z));
        }
        ProbabilityMatrix::new(rows, k, d).unwrap()
    }

    #[test]
    fn chunks_and_subsets_match_a_direct_computation() {
        let p = random_probs(400, 12);
        let mean_std = |scores: &[f64]| {
            let m = scores.iter().sum::<f64>() / scores.len() as f64;
            let v = scores.iter().map(|s| (s - m).powi(2)).sum::<f64>() / scores.len() as f64;
            (m, v.sqrt())
        };
        // Chunks of the seeded permutation.
        let chunked = inception_score(&p, InceptionScoreConfig::new(5)).unwrap();
        let perm = shuffle_permutation(400, 5);
        let want: Vec<f64> = (0..10)
            .map(|c| direct(&p, &perm[c * 40..(c + 1) * 40]))
            .collect();
        let (m, sd) = mean_std(&want);
        assert!((chunked.mean - m).abs() < 1e-12 && (chunked.std - sd).abs() < 1e-12);
        // Random subsets of 300 (the paper: 30k of 40k), seeded per subset.
        let cfg = InceptionScoreConfig {
            subset_size: Some(300),
            ..InceptionScoreConfig::new(5)
        };
        let subsets = inception_score(&p, cfg).unwrap();
        let want: Vec<f64> = (0..10u64)
            .map(|c| {
                let perm = shuffle_permutation(400, SplitMix::new(5 + c).next_u64());
                direct(&p, &perm[..300])
            })
            .collect();
        let (m, sd) = mean_std(&want);
        assert!((subsets.mean - m).abs() < 1e-12 && (subsets.std - sd).abs() < 1e-12);
        for (got, want) in subsets.split_scores.iter().zip(&want) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        assert!((subsets.split_scores[0] - chunked.split_scores[0]).abs() > 1e-9);
        // Subsets larger than the set are refused.
        let too_big = InceptionScoreConfig {
            subset_size: Some(401),
            ..cfg
        };
        assert!(inception_score(&p, too_big).is_err());
    }

    #[test]
    fn logits_softmax_in_f64() {
        let p = ProbabilityMatrix::from_logits(2, 3, &[0.0, 0.0, 0.0, 1000.0, 0.0, 0.0]).unwrap();
        assert!((p.row(0)[0] - 1.0 / 3.0).abs() < 1e-15);
        assert!((p.row(1)[0] - 1.0).abs() < 1e-15);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(ProbabilityMatrix::new(2, 2, vec![0.5, 0.5, 0.9, 0.9]).is_err());
        assert!(ProbabilityMatrix::new(1, 2, vec![1.5, -0.5]).is_err());
        assert!(ProbabilityMatrix::new(2, 2, vec![1.0]).is_err());
        let p = ProbabilityMatrix::new(2, 2, vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        assert!(matches!(
            inception_score(&p, InceptionScoreConfig::new(0)),
            Err(EvalError::InvalidArgument(_))
        ));
    }
}
