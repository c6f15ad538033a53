//! Feeding image batches through a loaded Inception and collecting what IS and FID need.
//!
//! [`InceptionRunner`] ties one network to the one preprocessing recipe that matches it (a
//! mismatch, e.g. ImageNet-normalised input to a network built without `transform_input`, is
//! refused up front), keeps the logits of every image for the Inception Score (softmax is done
//! later in f64) and streams pool3 features into a [`FeatureAccumulator`] for FID, so memory
//! stays at one `d × d` matrix however many images are scored.

use burn::tensor::Device;

use crate::error::{EvalError, Result};
use crate::fid::{FeatureAccumulator, FidStatistics};
use crate::inception::{Backbone, InceptionV3, POOL3_DIM};
use crate::inception_score::{
    InceptionScore, InceptionScoreConfig, ProbabilityMatrix, inception_score,
};
use crate::preprocess::{ImageBatch, Preprocess, preprocess};
use crate::weights::LoadedInception;

/// Runs batches through one network and accumulates logits and pool3 statistics.
#[derive(Debug)]
pub struct InceptionRunner {
    model: InceptionV3,
    backbone: Backbone,
    recipe: Preprocess,
    device: Device,
    num_classes: usize,
    logits: Vec<f32>,
    features: FeatureAccumulator,
}

/// Checks that `recipe` produces the input `model` (built for `backbone`) expects.
fn check_recipe(backbone: Backbone, model: &InceptionV3, recipe: Preprocess) -> Result<()> {
    let ok = match (backbone, recipe) {
        (Backbone::TorchvisionImagenet, Preprocess::Torchvision { transform_input }) => {
            transform_input == model.transform_input
        }
        (Backbone::TfInception2015, Preprocess::TorchFidelity | Preprocess::PytorchFid) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(EvalError::InvalidArgument(format!(
            "preprocessing {recipe:?} does not match backbone {} (transform_input = {})",
            backbone.label(),
            model.transform_input
        )))
    }
}

impl InceptionRunner {
    /// A runner for `loaded` with the given preprocessing (see [`Preprocess::for_config`]).
    pub fn new(loaded: LoadedInception, recipe: Preprocess, device: &Device) -> Result<Self> {
        Self::from_model(loaded.model, loaded.config.backbone, recipe, device)
    }

    /// A runner for an already-built network (tests, benchmarks).
    pub fn from_model(
        model: InceptionV3,
        backbone: Backbone,
        recipe: Preprocess,
        device: &Device,
    ) -> Result<Self> {
        check_recipe(backbone, &model, recipe)?;
        let num_classes = model.num_classes();
        Ok(Self {
            model,
            backbone,
            recipe,
            device: device.clone(),
            num_classes,
            logits: Vec::new(),
            features: FeatureAccumulator::new(POOL3_DIM)?,
        })
    }

    /// Which backbone produced the numbers (print it next to them).
    pub fn backbone(&self) -> Backbone {
        self.backbone
    }

    /// Images seen so far.
    pub fn count(&self) -> usize {
        self.features.count()
    }

    /// Forgets every image pushed so far (the network stays loaded), e.g. to score the real
    /// reference images after the generated ones with the same weights.
    pub fn reset(&mut self) -> Result<()> {
        self.logits.clear();
        self.features = FeatureAccumulator::new(POOL3_DIM)?;
        Ok(())
    }

    /// Preprocesses and scores one batch.
    pub fn push(&mut self, images: &ImageBatch<'_>) -> Result<()> {
        let x = preprocess(images, self.recipe, &self.device)?;
        let out = self.model.forward(x);
        let logits: Vec<f32> = out
            .logits
            .into_data()
            .try_into_vec()
            .map_err(|e| EvalError::TensorData(format!("logits: {e:?}")))?;
        let pool3: Vec<f32> = out
            .pool3
            .into_data()
            .try_into_vec()
            .map_err(|e| EvalError::TensorData(format!("pool3: {e:?}")))?;
        self.features.push(&pool3)?;
        self.logits.extend_from_slice(&logits);
        Ok(())
    }

    /// Class posteriors of every image so far (softmax in f64).
    pub fn probabilities(&self) -> Result<ProbabilityMatrix> {
        ProbabilityMatrix::from_logits(self.count(), self.num_classes, &self.logits)
    }

    /// Inception Score of every image so far.
    pub fn inception_score(&self, config: InceptionScoreConfig) -> Result<InceptionScore> {
        inception_score(&self.probabilities()?, config)
    }

    /// FID statistics (`mu`, `sigma`) of every image so far.
    pub fn fid_statistics(&self) -> Result<FidStatistics> {
        self.features.finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;
    use crate::inception::InceptionConfig;

    #[test]
    fn mismatched_recipes_are_refused() {
        let d = Device::flex();
        let tv = InceptionConfig::new(Backbone::TorchvisionImagenet).init(&d);
        let err = InceptionRunner::from_model(
            tv,
            Backbone::TorchvisionImagenet,
            Preprocess::Torchvision {
                transform_input: true,
            },
            &d,
        )
        .unwrap_err();
        assert!(matches!(err, EvalError::InvalidArgument(_)));
        let tf = InceptionConfig::new(Backbone::TfInception2015).init(&d);
        assert!(
            InceptionRunner::from_model(
                tf,
                Backbone::TfInception2015,
                Preprocess::Torchvision {
                    transform_input: false
                },
                &d
            )
            .is_err()
        );
    }
}
