//! `metrics.json`, the evaluation's result: the protocol stamp (everything needed to reproduce a
//! number, or to refuse to compare two), the Inception Score and FID entries (each possibly
//! unavailable, with the reason), and the synthetic-scene scores.
//!
//! Eval writes every field; readers (the report, `eval-folder`) accept a file from another
//! version: unknown fields are ignored and missing ones take their defaults.

use crate::error::Result;
use crate::scenes::{SceneScores, scene_table};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// File name of the result inside the eval stage directory.
pub const METRICS_FILE: &str = "metrics.json";

/// The protocol stamp of `metrics.json`: everything needed to reproduce (or refuse to compare)
/// a number. Generator fields are `null` for `eval-folder`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Protocol {
    /// The scoring network and preprocessing, e.g. `torchvision` (eval's backbone choice).
    pub backbone: String,
    /// The weights file as given, `null` without one.
    pub weights_file: Option<String>,
    /// Lower-case hex sha256 of the weights file.
    pub weights_sha256: Option<String>,
    /// Number of images scored.
    pub images: usize,
    /// Inception Score splits.
    pub splits: usize,
    /// Images per split when the splits are random subsets (the paper's protocol); absent:
    /// contiguous chunks of the seeded shuffle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset_size: Option<usize>,
    /// Seed of the IS shuffle (and, for the eval stage, of the generator noise).
    pub seed: u64,
    /// How images reached the network (resize and value range).
    pub resize: String,
    /// `stage1` or `stage2`.
    pub generator_stage: Option<String>,
    /// The checkpoint directory the generator was loaded from.
    pub checkpoint: Option<String>,
    /// The generator's training step.
    pub step: Option<u64>,
    /// The dataset split whose conditions were used.
    pub split: Option<String>,
}

/// Inception Score entry of `metrics.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IsEntry {
    pub available: bool,
    pub mean: Option<f64>,
    pub std: Option<f64>,
    /// Why it is unavailable (`null` when available).
    pub reason: Option<String>,
}

/// FID entry of `metrics.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FidEntry {
    pub available: bool,
    pub value: Option<f64>,
    /// Why it is unavailable (`null` when available).
    pub reason: Option<String>,
    /// The reference statistics file (as given, or relative to the eval directory when the
    /// stage computed it), `null` when there is none.
    pub reference: Option<String>,
}

/// `metrics.json`, written by `eval` and `eval-folder` with exactly this shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsFile {
    pub protocol: Protocol,
    pub inception_score: IsEntry,
    pub fid: FidEntry,
    /// Ground-truth attribute scores, when the dataset is synthetic (it has `attributes.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenes: Option<SceneMetrics>,
}

/// The scene scorer's results for one evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SceneMetrics {
    /// The ground truth used (`attributes.json` of the synthetic dataset).
    pub attributes_file: String,
    /// Every generated image against its scene.
    pub images: SceneScores,
    /// The per-turn strips: entry `t` scores the frames generated after turns `1..=t+1`.
    #[serde(default)]
    pub per_turn: Vec<SceneScores>,
}

impl Protocol {
    /// The stamp as (field, value) rows in the file's order; absent values read "—".
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        fn s(v: &Option<String>) -> String {
            v.clone().unwrap_or_else(|| "—".into())
        }
        fn n(v: Option<impl ToString>) -> String {
            v.map_or_else(|| "—".into(), |v| v.to_string())
        }
        let text = |v: &str| {
            if v.is_empty() {
                "—".into()
            } else {
                v.to_string()
            }
        };
        vec![
            ("backbone", text(&self.backbone)),
            ("weights_file", s(&self.weights_file)),
            ("weights_sha256", s(&self.weights_sha256)),
            ("images", self.images.to_string()),
            ("splits", self.splits.to_string()),
            ("seed", self.seed.to_string()),
            ("resize", text(&self.resize)),
            ("generator_stage", s(&self.generator_stage)),
            ("checkpoint", s(&self.checkpoint)),
            ("step", n(self.step)),
            ("split", s(&self.split)),
        ]
    }
}

impl MetricsFile {
    /// Writes the file atomically, pretty-printed.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::error::write_json(path, self)
    }

    /// Reads a file written by [`MetricsFile::write`].
    pub fn read(path: &Path) -> Result<Self> {
        crate::error::read_json(path)
    }

    /// One line per metric for the console, with the backbone next to every number.
    pub fn summary(&self) -> String {
        let b = &self.protocol.backbone;
        let is = match (&self.inception_score.mean, &self.inception_score.std) {
            (Some(m), Some(s)) => match self.protocol.subset_size {
                Some(n) => format!(
                    "{m:.4} ± {s:.4} ({b}, {} random subsets of {n})",
                    self.protocol.splits
                ),
                None => format!("{m:.4} ± {s:.4} ({b}, {} splits)", self.protocol.splits),
            },
            _ => format!(
                "unavailable: {}",
                self.inception_score.reason.as_deref().unwrap_or("?")
            ),
        };
        let fid = match self.fid.value {
            Some(v) => format!("{v:.4} ({b})"),
            None => format!("unavailable: {}", self.fid.reason.as_deref().unwrap_or("?")),
        };
        let mut out = format!(
            "Inception Score over {} images: {is}\nFID: {fid}\n",
            self.protocol.images
        );
        if let Some(scenes) = &self.scenes {
            out.push_str(&format!(
                "Scene attributes ({}, {} images):\n{}",
                scenes.images.scorer,
                scenes.images.images,
                scene_table(&[("accuracy", &scenes.images)])
            ));
        }
        out
    }
}
