//! Fréchet Inception Distance in f64, as pytorch-fid defines it.
//!
//! Statistics are `mu = mean(act)` and `sigma = cov(act)` with N − 1, accumulated batch by
//! batch ([`FeatureAccumulator`]) on features shifted by the first batch's mean, so the
//! one-pass sums do not lose precision to a large common offset. The distance is
//! `|mu1 − mu2|² + Tr(S1) + Tr(S2) − 2·Tr((S1 S2)^½)` where only the trace of the matrix square
//! root is needed: with `S1 = V diag(w) Vᵀ` and `A = V diag(√max(w, 0)) Vᵀ`, `M = A S2 A` is
//! symmetric PSD with the eigenvalues of `S1 S2`, so `Tr(covmean) = Σ √max(λ_i(M), 0)` — two
//! symmetric eigendecompositions (nalgebra) instead of scipy's non-symmetric `sqrtm`.
//! Reference statistics are `.npz` files with arrays `mu` and `sigma` (pytorch-fid layout).

use std::path::Path;

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use chatpainter_formats::npy::{NpyArray, read_npz, write_npz};

/// Mean and covariance of Inception pool3 features.
#[derive(Debug, Clone, PartialEq)]
pub struct FidStatistics {
    /// Feature mean, length d.
    pub mu: DVector<f64>,
    /// Feature covariance (N − 1), d × d, symmetric.
    pub sigma: DMatrix<f64>,
    /// Number of feature rows the statistics came from (`None` when read from a file, which
    /// does not record it).
    pub n: Option<usize>,
}

impl FidStatistics {
    /// Builds statistics from given moments, checking shapes and finiteness.
    pub fn new(mu: DVector<f64>, sigma: DMatrix<f64>) -> Result<Self> {
        let d = mu.len();
        if d == 0 {
            return Err(EvalError::InvalidArgument("empty mean vector".into()));
        }
        if sigma.nrows() != d || sigma.ncols() != d {
            return Err(EvalError::DimensionMismatch {
                what: format!(
                    "sigma ({}×{}) must be square with the dimension of mu",
                    sigma.nrows(),
                    sigma.ncols()
                ),
                expected: d,
                found: sigma.nrows(),
            });
        }
        if mu.iter().chain(sigma.iter()).any(|v| !v.is_finite()) {
            return Err(EvalError::Numerical(
                "statistics contain non-finite values".into(),
            ));
        }
        Ok(Self { mu, sigma, n: None })
    }

    /// Feature dimension d.
    pub fn dim(&self) -> usize {
        self.mu.len()
    }

    /// Statistics of `n` rows of `d` features (row-major f32, as read back from the device).
    pub fn from_features(features: &[f32], n: usize, d: usize) -> Result<Self> {
        let mut acc = FeatureAccumulator::new(d)?;
        if n.checked_mul(d) != Some(features.len()) {
            return Err(EvalError::InvalidArgument(format!(
                "features [{n}, {d}] need {} values, found {}",
                n.saturating_mul(d),
                features.len()
            )));
        }
        // Chunks bound the f64 working copy (a 30k × 2048 f64 matrix would be 490 MB).
        for chunk in features.chunks(d * 1024) {
            acc.push(chunk)?;
        }
        acc.finish()
    }

    /// Reads `mu` and `sigma` from a pytorch-fid style `.npz`.
    pub fn load_npz(path: &Path) -> Result<Self> {
        let arrays = read_npz(path, &["mu", "sigma"])?;
        let [mu, sigma] = <[NpyArray; 2]>::try_from(arrays).map_err(|_| EvalError::BadNpz {
            path: path.to_path_buf(),
            reason: "expected arrays mu and sigma".into(),
        })?;
        let bad = |reason: String| EvalError::BadNpz {
            path: path.to_path_buf(),
            reason,
        };
        let d = match mu.shape.as_slice() {
            [d] => *d,
            s => return Err(bad(format!("array `mu` has shape {s:?}, expected (d,)"))),
        };
        if sigma.shape != [d, d] {
            return Err(bad(format!(
                "array `sigma` has shape {:?}, expected ({d}, {d}) to match `mu`",
                sigma.shape
            )));
        }
        Self::new(
            DVector::from_vec(mu.data),
            DMatrix::from_row_slice(d, d, &sigma.data),
        )
        .map_err(|e| bad(e.to_string()))
    }

    /// Writes `mu` and `sigma` as a pytorch-fid style `.npz` (atomically).
    pub fn save_npz(&self, path: &Path) -> Result<()> {
        let d = self.dim();
        let mu = NpyArray {
            shape: vec![d],
            data: self.mu.iter().copied().collect(),
        };
        // nalgebra is column-major; npy C order is row-major.
        let sigma = NpyArray {
            shape: vec![d, d],
            data: self.sigma.transpose().iter().copied().collect(),
        };
        Ok(write_npz(path, &[("mu", &mu), ("sigma", &sigma)])?)
    }
}

/// One-pass accumulator of feature mean and covariance, fed batch by batch.
#[derive(Debug, Clone)]
pub struct FeatureAccumulator {
    d: usize,
    n: usize,
    shift: Option<DVector<f64>>,
    sum: DVector<f64>,
    sum_outer: DMatrix<f64>,
}

impl FeatureAccumulator {
    /// An empty accumulator for d-dimensional features.
    pub fn new(d: usize) -> Result<Self> {
        if d == 0 {
            return Err(EvalError::InvalidArgument(
                "feature dimension must be > 0".into(),
            ));
        }
        Ok(Self {
            d,
            n: 0,
            shift: None,
            sum: DVector::zeros(d),
            sum_outer: DMatrix::zeros(d, d),
        })
    }

    /// Rows seen so far.
    pub fn count(&self) -> usize {
        self.n
    }

    /// Adds a row-major batch of `rows.len() / d` feature rows.
    pub fn push(&mut self, rows: &[f32]) -> Result<()> {
        let d = self.d;
        if !rows.len().is_multiple_of(d) {
            return Err(EvalError::DimensionMismatch {
                what: format!(
                    "feature batch of {} values is not a multiple of d",
                    rows.len()
                ),
                expected: d,
                found: rows.len() % d,
            });
        }
        let b = rows.len() / d;
        if b == 0 {
            return Ok(());
        }
        if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
            return Err(EvalError::Numerical(format!(
                "non-finite feature at row {}, column {}",
                self.n + i / d,
                i % d
            )));
        }
        let x = DMatrix::from_row_iterator(b, d, rows.iter().map(|&v| f64::from(v)));
        let shift = self.shift.get_or_insert_with(|| {
            // First batch's mean as the working origin (keeps Σxxᵀ − n·x̄x̄ᵀ well conditioned).
            x.row_mean().transpose()
        });
        let mut x = x;
        for mut row in x.row_iter_mut() {
            row -= shift.transpose();
        }
        for row in x.row_iter() {
            self.sum += row.transpose();
        }
        // sum_outer += xᵀ x. An explicit transpose + `gemm` goes through matrixmultiply's
        // blocked kernel; `gemm_tr` runs column dot products and was ~10× slower at d = 2048.
        let xt = x.transpose();
        self.sum_outer.gemm(1.0, &xt, &x, 1.0);
        self.n += b;
        Ok(())
    }

    /// `mu` and `sigma` (N − 1) of everything pushed; needs at least 2 rows.
    pub fn finish(&self) -> Result<FidStatistics> {
        let n = self.n;
        if n < 2 {
            return Err(EvalError::InvalidArgument(format!(
                "covariance needs at least 2 feature rows, got {n}"
            )));
        }
        let nf = n as f64;
        let mean_shifted = &self.sum / nf;
        let mut sigma =
            (&self.sum_outer - &mean_shifted * mean_shifted.transpose() * nf) / (nf - 1.0);
        symmetrise(&mut sigma);
        let mu = match &self.shift {
            Some(s) => s + mean_shifted,
            None => mean_shifted,
        };
        let mut stats = FidStatistics::new(mu, sigma)?;
        stats.n = Some(n);
        Ok(stats)
    }
}

fn symmetrise(m: &mut DMatrix<f64>) {
    let t = m.transpose();
    *m += t;
    *m *= 0.5;
}

/// FID and its terms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fid {
    /// The distance.
    pub fid: f64,
    /// `|mu1 − mu2|²`.
    pub mean_term: f64,
    /// `Tr(S1)`.
    pub trace_sigma1: f64,
    /// `Tr(S2)`.
    pub trace_sigma2: f64,
    /// `Tr((S1 S2)^½)`.
    pub trace_covmean: f64,
    /// Most negative eigenvalue clipped to 0 (of S1 or of M); large magnitudes mean the
    /// statistics are not PSD (too few samples for d, or corrupt input).
    pub most_negative_eigenvalue: f64,
}

/// Fréchet distance between two Gaussians (the formula in the module docs).
pub fn frechet_distance(a: &FidStatistics, b: &FidStatistics) -> Result<Fid> {
    if a.dim() != b.dim() {
        return Err(EvalError::DimensionMismatch {
            what: "FID statistics".into(),
            expected: a.dim(),
            found: b.dim(),
        });
    }
    let diff = &a.mu - &b.mu;
    let mean_term = diff.dot(&diff);
    let mut s1 = a.sigma.clone();
    symmetrise(&mut s1);
    let mut s2 = b.sigma.clone();
    symmetrise(&mut s2);
    let (trace_sigma1, trace_sigma2) = (s1.trace(), s2.trace());

    let eig1 = SymmetricEigen::new(s1);
    let mut most_negative = eig1.eigenvalues.iter().fold(0.0f64, |m, &w| m.min(w));
    // A = V diag(√max(w,0)) Vᵀ
    let mut v_scaled = eig1.eigenvectors.clone();
    for (mut col, &w) in v_scaled.column_iter_mut().zip(eig1.eigenvalues.iter()) {
        col *= w.max(0.0).sqrt();
    }
    let a_half = &v_scaled * eig1.eigenvectors.transpose();
    let mut m = &a_half * s2 * &a_half;
    symmetrise(&mut m);
    // Only M's eigenvalues are needed: skipping the eigenvector accumulation saves time.
    let eig2 = m.symmetric_eigenvalues();
    most_negative = eig2.iter().fold(most_negative, |m, &w| m.min(w));
    let trace_covmean: f64 = eig2.iter().map(|&l| l.max(0.0).sqrt()).sum();
    let fid = mean_term + trace_sigma1 + trace_sigma2 - 2.0 * trace_covmean;
    if !fid.is_finite() {
        return Err(EvalError::Numerical(format!("FID is not finite ({fid})")));
    }
    let scale = trace_sigma1.max(trace_sigma2).max(f64::MIN_POSITIVE);
    if most_negative < -1e-6 * scale {
        tracing::warn!(
            most_negative,
            "FID: clipped a clearly negative eigenvalue; statistics are not positive semi-definite"
        );
    }
    Ok(Fid {
        fid,
        mean_term,
        trace_sigma1,
        trace_sigma2,
        trace_covmean,
        most_negative_eigenvalue: most_negative,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    fn diag_stats(mu: &[f64], var: &[f64]) -> FidStatistics {
        FidStatistics::new(
            DVector::from_column_slice(mu),
            DMatrix::from_diagonal(&DVector::from_column_slice(var)),
        )
        .unwrap()
    }

    /// Deterministic pseudo-random features (LCG) so tests need no RNG dependency.
    fn features(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..n * d)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (s >> 11) as f64 / (1u64 << 53) as f64;
                // correlated columns + an offset, to exercise the shift
                (100.0 + u * 2.0 + (i % d) as f64 * 0.1) as f32
            })
            .collect()
    }

    #[test]
    fn identical_statistics_give_zero() {
        let s = FidStatistics::from_features(&features(300, 16, 1), 300, 16).unwrap();
        let f = frechet_distance(&s, &s).unwrap();
        assert!(f.fid.abs() < 1e-9, "{f:?}");
    }

    #[test]
    fn diagonal_covariances_match_closed_form() {
        let a = diag_stats(&[0.0, 1.0, 2.0, -1.0], &[1.0, 4.0, 0.25, 9.0]);
        let b = diag_stats(&[1.0, 1.0, 0.0, 0.5], &[2.0, 1.0, 1.0, 0.0]);
        let expected: f64 = (0..4)
            .map(|j| {
                let dm = a.mu[j] - b.mu[j];
                let ds = a.sigma[(j, j)].sqrt() - b.sigma[(j, j)].sqrt();
                dm * dm + ds * ds
            })
            .sum();
        let f = frechet_distance(&a, &b).unwrap();
        assert!((f.fid - expected).abs() < 1e-10, "{} vs {expected}", f.fid);
    }

    #[test]
    fn non_commuting_2x2_matches_closed_form() {
        // For 2×2 PSD S1, S2: Tr((S1 S2)^½) = √λ1 + √λ2 = √(Tr(S1 S2) + 2·√(det S1 · det S2)).
        let s1: DMatrix<f64> = DMatrix::from_row_slice(2, 2, &[2.0, 0.5, 0.5, 1.0]);
        let s2: DMatrix<f64> = DMatrix::from_row_slice(2, 2, &[1.0, -0.3, -0.3, 3.0]);
        let tr_prod = (&s1 * &s2).trace();
        let det = s1.determinant() * s2.determinant();
        let tr_sqrt = (tr_prod + 2.0 * det.sqrt()).sqrt();
        let a = FidStatistics::new(DVector::from_column_slice(&[0.0, 1.0]), s1.clone()).unwrap();
        let b = FidStatistics::new(DVector::from_column_slice(&[0.5, -1.0]), s2.clone()).unwrap();
        let expected = 0.25 + 4.0 + s1.trace() + s2.trace() - 2.0 * tr_sqrt;
        let f = frechet_distance(&a, &b).unwrap();
        assert!((f.fid - expected).abs() < 1e-12, "{} vs {expected}", f.fid);
        assert!((f.trace_covmean - tr_sqrt).abs() < 1e-12);
        // Symmetric in its arguments.
        let g = frechet_distance(&b, &a).unwrap();
        assert!((f.fid - g.fid).abs() < 1e-12);
    }

    #[test]
    fn accumulator_matches_two_pass_statistics_in_any_batching() {
        let (n, d) = (257, 8);
        let x = features(n, d, 9);
        let whole = FidStatistics::from_features(&x, n, d).unwrap();
        let mut acc = FeatureAccumulator::new(d).unwrap();
        for chunk in x.chunks(d * 50) {
            acc.push(chunk).unwrap();
        }
        let batched = acc.finish().unwrap();
        // Two-pass reference.
        let xf: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let mean: Vec<f64> = (0..d)
            .map(|j| (0..n).map(|i| xf[i * d + j]).sum::<f64>() / n as f64)
            .collect();
        for j in 0..d {
            assert!((whole.mu[j] - mean[j]).abs() < 1e-9);
            assert!((batched.mu[j] - mean[j]).abs() < 1e-9);
            for k in 0..d {
                let c = (0..n)
                    .map(|i| (xf[i * d + j] - mean[j]) * (xf[i * d + k] - mean[k]))
                    .sum::<f64>()
                    / (n as f64 - 1.0);
                assert!((whole.sigma[(j, k)] - c).abs() < 1e-9);
                assert!((batched.sigma[(j, k)] - c).abs() < 1e-9);
            }
        }
        assert_eq!(batched.n, Some(n));
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(FidStatistics::from_features(&[1.0; 4], 1, 4).is_err());
        assert!(FidStatistics::from_features(&[1.0; 5], 2, 4).is_err());
        let a = diag_stats(&[0.0, 0.0], &[1.0, 1.0]);
        let b = diag_stats(&[0.0], &[1.0]);
        assert!(matches!(
            frechet_distance(&a, &b),
            Err(EvalError::DimensionMismatch { .. })
        ));
    }
}
