//! The run directory: `<run>/<stage>/…`, one folder per stage.

use crate::{ArtifactError, Result};
use std::path::{Path, PathBuf};

/// Stage folder names, in pipeline order.
pub const STAGES: [&str; 7] = [
    "synth", "ingest", "embed", "stage1", "stage2", "eval", "report",
];

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

    pub fn stage(&self, stage: &str) -> PathBuf {
        self.root.join(stage)
    }

    /// Creates the stage folder, ready to be written.
    pub fn create_stage(&self, stage: &str) -> Result<PathBuf> {
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
