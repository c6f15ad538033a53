//! The checkpoint directory layout a training stage writes (`checkpoints/step-000000042/`, one
//! directory per step, renamed into place only when complete) and loading a generator from one.
//! Writing, the training state and the optimiser records are the trainer's
//! (`chatpainter_train::checkpoint`); this is what a run's users need to find and load weights.

use std::path::{Path, PathBuf};

use burn::module::Module;

use crate::ModelError;

/// Sub-directory of the stage directory that holds the checkpoints.
pub const CHECKPOINTS_DIR: &str = "checkpoints";

/// The directory name of the checkpoint of `step`.
pub fn dir_name(step: u64) -> String {
    format!("step-{step:09}")
}

/// Checkpoints under `stage_dir`, oldest first, as `(step, path)`.
///
/// # Errors
/// [`ModelError::Io`] when the directory cannot be listed.
pub fn list(stage_dir: &Path) -> Result<Vec<(u64, PathBuf)>, ModelError> {
    let dir = stage_dir.join(CHECKPOINTS_DIR);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| ModelError::io(&dir, e))? {
        let entry = entry.map_err(|e| ModelError::io(&dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest checkpoint, if any.
///
/// # Errors
/// As [`list`].
pub fn latest(stage_dir: &Path) -> Result<Option<PathBuf>, ModelError> {
    Ok(list(stage_dir)?.pop().map(|(_, p)| p))
}

/// Loads only the G side of a checkpoint (`g.bpk`) into a freshly built module (Stage-II
/// freezing a Stage-I run).
///
/// # Errors
/// [`ModelError::Record`] naming the file that does not fit.
pub fn load_generator<G: Module>(checkpoint: &Path, gnet: G) -> Result<G, ModelError> {
    let p = checkpoint.join("g.bpk");
    gnet.try_load_file(&p).map_err(|e| record_err(&p, e))
}

fn record_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Record {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}
