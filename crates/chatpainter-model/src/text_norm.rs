//! Optional per-dimension standardisation of the text vectors before the CA (a deviation from the
//! reference, off by default: `text_norm = "standardize"`).
//!
//! Why: the reference feeds char-CNN-RNN / Skip-Thought vectors whose entries are O(0.1–1); the
//! CA's `fc` starts at N(0, 0.02) weights and its ReLU keeps `logvar ≥ 0`, so the condition code
//! carries noise of σ ≥ 1 around a mean of about `0.02·‖text‖`. With L2-normalised vectors
//! (hashing, MiniLM: ‖v‖ = 1) of which most is shared by every text (template words, fillers),
//! the part that tells scenes apart reaches the generator 50–100× below the CA noise, and a few
//! thousand Adam steps do not grow the weights enough: generated backgrounds ignore the dialogue
//! (measured at chance). Standardising each dimension with the training split's mean and standard
//! deviation removes the shared part and gives every informative dimension unit scale.
//!
//! The statistics are computed once from the Stage-I training data, written into the stage's
//! `config.json` (so Stage-II, `eval` and `generate` apply exactly the same transform) and
//! applied to every batch and every generation condition. Dimensions that never vary (e.g.
//! hashing buckets no text hits) map to 0.

use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::dataset::HostBatch;
use crate::generate::{Condition, DialogueCondition};

/// Mean and inverse standard deviation of one kind of vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    pub mean: Vec<f32>,
    /// `1 / std`, or 0 where the dimension does not vary.
    pub inv_std: Vec<f32>,
}

/// Below this standard deviation a dimension counts as constant.
const MIN_STD: f64 = 1e-6;

/// Running sums for [`Moments`], fed one vector at a time in item order (the trainer computes a
/// run's statistics with them).
pub struct MomentSums {
    n: f64,
    sum: Vec<f64>,
    sq: Vec<f64>,
}

impl MomentSums {
    pub fn new(dim: usize) -> Self {
        Self {
            n: 0.0,
            sum: vec![0.0; dim],
            sq: vec![0.0; dim],
        }
    }

    pub fn add(&mut self, v: &[f32]) {
        self.n += 1.0;
        for ((s, q), x) in self.sum.iter_mut().zip(&mut self.sq).zip(v) {
            let x = f64::from(*x);
            *s += x;
            *q += x * x;
        }
    }

    pub fn finish(self) -> Moments {
        let n = self.n.max(1.0);
        let mean: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let inv_std = self
            .sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| {
                let std = (q / n - m * m).max(0.0).sqrt();
                if std < MIN_STD {
                    0.0
                } else {
                    (1.0 / std) as f32
                }
            })
            .collect();
        Moments {
            mean: mean.into_iter().map(|m| m as f32).collect(),
            inv_std,
        }
    }
}

impl Moments {
    /// Moments of `vectors` (all `dim` wide), accumulated in f64.
    #[cfg(test)]
    fn of<'a>(dim: usize, vectors: impl Iterator<Item = &'a [f32]>) -> Self {
        let mut sums = MomentSums::new(dim);
        vectors.for_each(|v| sums.add(v));
        sums.finish()
    }

    /// Standardises every `dim`-wide row of `values` in place.
    fn apply(&self, values: &mut [f32]) {
        let dim = self.mean.len();
        for row in values.chunks_exact_mut(dim) {
            for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.inv_std) {
                *x = (*x - m) * s;
            }
        }
    }
}

/// The statistics of a run's text inputs: captions, and the dialogue input of the variant (the
/// whole-dialogue vector, or the per-turn vectors of the recurrent variant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextStats {
    pub caption: Moments,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dialogue: Option<Moments>,
}

impl TextStats {
    /// Standardises a batch in place; recurrent padding turns stay zero.
    pub fn apply_batch(&self, batch: &mut HostBatch) {
        self.caption.apply(&mut batch.captions);
        let Some(d) = &self.dialogue else { return };
        if batch.lengths.is_empty() {
            d.apply(&mut batch.dialogue);
            return;
        }
        let dim = d.mean.len();
        let slots = batch.dialogue.len() / (batch.size.max(1) * dim).max(1);
        for (b, &len) in batch.lengths.iter().enumerate() {
            let at = b * slots * dim;
            d.apply(&mut batch.dialogue[at..at + len * dim]);
        }
    }

    /// A standardised copy of a generation condition.
    pub fn apply_condition(&self, c: &Condition) -> Condition {
        let mut out = c.clone();
        self.caption.apply(&mut out.caption);
        if let Some(d) = &self.dialogue {
            match &mut out.dialogue {
                DialogueCondition::None => {}
                DialogueCondition::Whole(v) => d.apply(v),
                DialogueCondition::Turns(ts) => ts.iter_mut().for_each(|t| d.apply(t)),
            }
        }
        out
    }

    /// Checks the widths against a run's network.
    ///
    /// # Errors
    /// [`ModelError::Config`] when a width differs.
    pub fn check(&self, caption_dim: usize, dialogue_dim: usize) -> Result<(), ModelError> {
        let d = self.dialogue.as_ref().map_or(0, |m| m.mean.len());
        if self.caption.mean.len() != caption_dim || (self.dialogue.is_some() && d != dialogue_dim)
        {
            return Err(ModelError::Config(format!(
                "text_norm: statistics are (caption, dialogue) = ({}, {d}) wide, the run's vectors ({caption_dim}, {dialogue_dim})",
                self.caption.mean.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardised_rows_have_zero_mean_unit_std_and_constant_dims_vanish() {
        let rows: Vec<Vec<f32>> = (0..100)
            .map(|i| vec![5.0, i as f32, (i % 2) as f32 * 4.0])
            .collect();
        let m = Moments::of(3, rows.iter().map(Vec::as_slice));
        let mut flat: Vec<f32> = rows.concat();
        m.apply(&mut flat);
        for d in 0..3 {
            let col: Vec<f64> = flat.chunks(3).map(|r| f64::from(r[d])).collect();
            let mean = col.iter().sum::<f64>() / 100.0;
            let var = col.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 100.0;
            assert!(mean.abs() < 1e-5, "dim {d}: mean {mean}");
            let want = if d == 0 { 0.0 } else { 1.0 };
            assert!((var - want).abs() < 1e-4, "dim {d}: var {var}");
        }
    }

    #[test]
    fn recurrent_padding_stays_zero() {
        let m = Moments {
            mean: vec![1.0, 1.0],
            inv_std: vec![2.0, 2.0],
        };
        let stats = TextStats {
            caption: m.clone(),
            dialogue: Some(m),
        };
        // Two samples, three turn slots of width 2; the first has 1 turn, the second 3.
        let mut batch = HostBatch {
            size: 2,
            crop: 1,
            images: vec![],
            captions: vec![3.0; 4],
            dialogue: vec![3.0, 3.0, 0.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0],
            lengths: vec![1, 3],
        };
        stats.apply_batch(&mut batch);
        assert_eq!(batch.captions, vec![4.0; 4]);
        assert_eq!(
            batch.dialogue,
            vec![4.0, 4.0, 0.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
        );
    }
}
