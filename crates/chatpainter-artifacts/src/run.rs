//! The run directory: `<run>/<stage>/…`, one folder per stage.

use crate::{ArtifactError, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A pipeline stage. Its [`name`](Stage::name) is everything the outside sees: the folder in a
/// run directory, the pipeline file's table, the `stage` of a manifest (serde writes the name),
/// the `chatpainter` subcommand and the first word of the stage's outcome line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Synth,
    Ingest,
    Embed,
    Stage1,
    Stage2,
    Eval,
    Report,
}

impl Stage {
    /// Every stage, in pipeline (DAG) order: each depends only on stages before it.
    pub const ALL: [Stage; 7] = [
        Stage::Synth,
        Stage::Ingest,
        Stage::Embed,
        Stage::Stage1,
        Stage::Stage2,
        Stage::Eval,
        Stage::Report,
    ];

    /// The stage's name, which is also its folder in the run directory.
    pub const fn name(self) -> &'static str {
        match self {
            Stage::Synth => "synth",
            Stage::Ingest => "ingest",
            Stage::Embed => "embed",
            Stage::Stage1 => "stage1",
            Stage::Stage2 => "stage2",
            Stage::Eval => "eval",
            Stage::Report => "report",
        }
    }

    /// The training stages, which keep `checkpoints/step-N/` and `metrics.jsonl`.
    pub const fn is_training(self) -> bool {
        matches!(self, Stage::Stage1 | Stage::Stage2)
    }

    /// Stages whose table takes a `device` key (and so receive xtask's `--devices`).
    pub const fn uses_device(self) -> bool {
        matches!(self, Stage::Stage1 | Stage::Stage2 | Stage::Eval)
    }

    /// The names of all stages joined by `sep`, in pipeline order (for error messages).
    pub fn names(sep: &str) -> String {
        Self::ALL.map(Stage::name).join(sep)
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so that `{:<8}` lines stages up in tables.
        f.pad(self.name())
    }
}

/// A stage is its folder: `run_root.join(stage)`.
impl AsRef<Path> for Stage {
    fn as_ref(&self) -> &Path {
        Path::new(self.name())
    }
}

/// A name that is not a stage's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown stage `{0}` (stages: {stages})", stages = Stage::names(", "))]
pub struct UnknownStage(pub String);

impl std::str::FromStr for Stage {
    type Err = UnknownStage;

    fn from_str(s: &str) -> std::result::Result<Self, UnknownStage> {
        Self::ALL
            .into_iter()
            .find(|stage| stage.name() == s)
            .ok_or_else(|| UnknownStage(s.to_string()))
    }
}

#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<run>/<stage>/`.
    pub fn stage(&self, stage: Stage) -> PathBuf {
        self.root.join(stage.name())
    }

    /// Creates the stage folder, ready to be written.
    pub fn create_stage(&self, stage: Stage) -> Result<PathBuf> {
        let dir = self.stage(stage);
        std::fs::create_dir_all(&dir).map_err(|e| ArtifactError::io(&dir, e))?;
        Ok(dir)
    }

    /// Resolves a config path: `run:<rel>` is relative to the run directory, anything else is
    /// taken as written (relative to the current directory).
    pub fn resolve(&self, path: &str) -> PathBuf {
        match path.strip_prefix("run:") {
            Some(rel) => self.root.join(rel),
            None => PathBuf::from(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_round_trip() {
        let names = Stage::ALL.map(Stage::name);
        assert_eq!(
            names,
            [
                "synth", "ingest", "embed", "stage1", "stage2", "eval", "report"
            ]
        );
        for stage in Stage::ALL {
            assert_eq!(stage.name().parse::<Stage>(), Ok(stage));
            assert_eq!(stage.to_string(), stage.name());
            assert_eq!(format!("{stage:<7}|").len(), 8);
            let json = serde_json::to_string(&stage).unwrap();
            assert_eq!(json, format!("\"{}\"", stage.name()));
            assert_eq!(serde_json::from_str::<Stage>(&json).unwrap(), stage);
        }
        assert!(Stage::ALL.is_sorted());
        let err = "stage3".parse::<Stage>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown stage `stage3` (stages: synth, ingest, embed, stage1, stage2, eval, report)"
        );
        let training: Vec<_> = Stage::ALL.into_iter().filter(|s| s.is_training()).collect();
        assert_eq!(training, [Stage::Stage1, Stage::Stage2]);
        let device: Vec<_> = Stage::ALL.into_iter().filter(|s| s.uses_device()).collect();
        assert_eq!(device, [Stage::Stage1, Stage::Stage2, Stage::Eval]);
    }
}
