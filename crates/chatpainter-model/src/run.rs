//! What a generator needs from a training stage's `config.json`: the stage, the variant, the
//! network widths and the text statistics.
//!
//! The trainer writes `config.json` (its `ResolvedConfig`: these fields among the whole training
//! configuration, the data counts and the step plan); this reads only the fields that rebuild
//! the networks, so a run's users do not depend on the training loop's configuration type.

use std::path::Path;

use burn::tensor::Device;
use serde::Deserialize;

use crate::ModelError;
use crate::network::{ResolvedNetwork, Variant};
use crate::networks::{Stage1Generator, Stage2Generator};
use crate::text_norm::TextStats;

/// File name of the resolved configuration inside a training stage directory.
pub const RESOLVED_CONFIG_FILE: &str = "config.json";

/// The network-defining part of a training stage's `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RunConfig {
    /// `stage1` or `stage2`.
    #[serde(default = "stage1")]
    pub stage: String,
    pub train: RunTraining,
    pub network: ResolvedNetwork,
    /// With `text_norm = "standardize"`: the statistics every text input is standardised with.
    #[serde(default)]
    pub text_stats: Option<TextStats>,
}

/// The fields of the `train` table that the networks depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct RunTraining {
    pub variant: Variant,
    /// Seeds the networks' initialisation (overwritten by a checkpoint's weights).
    pub seed: u64,
}

fn stage1() -> String {
    chatpainter_artifacts::Stage::Stage1.name().into()
}

impl RunConfig {
    /// Reads `config.json` of a training stage directory.
    ///
    /// # Errors
    /// IO and parse errors naming the file.
    pub fn read(stage_dir: &Path) -> Result<Self, ModelError> {
        let path = stage_dir.join(RESOLVED_CONFIG_FILE);
        let bytes = std::fs::read(&path).map_err(|e| ModelError::io(&path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| ModelError::Checkpoint {
            path,
            message: e.to_string(),
        })
    }

    /// The run's Stage-I G side (all of a Stage-I run's G; the frozen inner G of a Stage-II
    /// run), freshly initialised: a checkpoint's weights go in next. The one place a trained
    /// run's networks are rebuilt from its directory.
    pub fn stage1_generator(&self, device: &Device) -> Stage1Generator {
        let net = ResolvedNetwork {
            stage2: None,
            ..self.network
        };
        Stage1Generator::init(&net, self.train.variant, device, self.train.seed).0
    }

    /// A Stage-II run's G side around [`Self::stage1_generator`], freshly initialised.
    ///
    /// # Errors
    /// [`ModelError::Internal`] when the run has no Stage-II widths.
    pub fn stage2_generator(&self, device: &Device) -> Result<Stage2Generator, ModelError> {
        let stage1 = self.stage1_generator(device);
        Ok(Stage2Generator::init(
            &self.network,
            self.train.variant,
            stage1,
            device,
            self.train.seed,
        )?
        .0)
    }
}
