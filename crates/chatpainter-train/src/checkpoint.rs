//! Checkpoints: one directory per step, `checkpoints/step-000000042/`, holding
//! `g.bpk` and `d.bpk` (Burn burnpack records of the G side and D, BatchNorm running statistics
//! included, ParamIds persisted), `opt_g.bpk` and `opt_d.bpk` (the Adam states, keyed by those
//! ParamIds) and `state.json` ([`TrainState`]: step, epoch, data-order position, every RNG state,
//! the LR-schedule position and the resolved config).
//!
//! A checkpoint is written into a hidden temporary directory that is renamed into place only when
//! complete, so a crash (even SIGKILL) leaves either the whole checkpoint or none. Only the newest
//! `keep` checkpoints are kept.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::config::{ResolvedNetwork, TrainConfig};
use crate::rng::Xoshiro256;

/// Version of the checkpoint layout (bumped on incompatible changes).
pub const CHECKPOINT_FORMAT: u32 = 1;
/// Sub-directory of the stage directory that holds the checkpoints.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
const STATE_FILE: &str = "state.json";

/// Everything besides the tensors that a resumed run needs to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    pub format: u32,
    /// Optimiser steps completed.
    pub step: u64,
    /// The epoch the next batch belongs to unless `next_batch` reaches the epoch's end.
    pub epoch: u64,
    /// Index (in batches) of the next batch within `permutation`.
    pub next_batch: usize,
    /// This epoch's order of item indices.
    pub permutation: Vec<u32>,
    /// Stream for epoch order, crops, flips and caption picks.
    pub data_rng: Xoshiro256,
    /// Stream for G's noise and the CA's eps.
    pub noise_rng: Xoshiro256,
    /// LR-schedule position: how many halvings the current epoch has had.
    pub lr_halvings: u32,
    pub config: TrainConfig,
    pub network: ResolvedNetwork,
}

/// The directory name of the checkpoint of `step`.
pub fn dir_name(step: u64) -> String {
    format!("step-{step:09}")
}

/// Checkpoints under `stage_dir`, oldest first, as `(step, path)`.
///
/// # Errors
/// [`TrainError::Io`] when the directory cannot be listed.
pub fn list(stage_dir: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    let dir = stage_dir.join(CHECKPOINTS_DIR);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| TrainError::io(&dir, e))? {
        let entry = entry.map_err(|e| TrainError::io(&dir, e))?;
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

/// Removes the temporary directories of checkpoints whose writing was interrupted (a crash or
/// SIGKILL mid-write); complete checkpoints are never touched.
///
/// # Errors
/// [`TrainError::Io`] naming the directory.
pub fn remove_partial(stage_dir: &Path) -> Result<(), TrainError> {
    let dir = stage_dir.join(CHECKPOINTS_DIR);
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(&dir).map_err(|e| TrainError::io(&dir, e))? {
        let entry = entry.map_err(|e| TrainError::io(&dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".step-") && name.ends_with(".tmp") {
            let p = entry.path();
            std::fs::remove_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
        }
    }
    Ok(())
}

/// The newest checkpoint, if any.
///
/// # Errors
/// As [`list`].
pub fn latest(stage_dir: &Path) -> Result<Option<PathBuf>, TrainError> {
    Ok(list(stage_dir)?.pop().map(|(_, p)| p))
}

fn record_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Record {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Writes the checkpoint of `state.step` atomically and prunes old ones; returns its path. A
/// checkpoint that already exists for this step is left as it is.
///
/// # Errors
/// IO and record-writing errors, naming the file.
pub fn save<G: Module, D: Module>(
    stage_dir: &Path,
    state: &TrainState,
    gnet: &G,
    d: &D,
    opt_g: &ModuleOptimizer,
    opt_d: &ModuleOptimizer,
    keep: usize,
) -> Result<PathBuf, TrainError> {
    let dir = stage_dir.join(CHECKPOINTS_DIR);
    let target = dir.join(dir_name(state.step));
    if target.exists() {
        return Ok(target);
    }
    let temp = dir.join(format!(
        ".{}.{}.tmp",
        dir_name(state.step),
        std::process::id()
    ));
    if temp.exists() {
        std::fs::remove_dir_all(&temp).map_err(|e| TrainError::io(&temp, e))?;
    }
    std::fs::create_dir_all(&temp).map_err(|e| TrainError::io(&temp, e))?;
    // `valid()` folds pending BatchNorm running-stat updates into the shared state, so that the
    // record holds the current statistics, not ones lagging by an update.
    let _ = gnet.valid();
    let _ = d.valid();
    let p = temp.join("g.bpk");
    gnet.clone().save_file(&p).map_err(|e| record_err(&p, e))?;
    let p = temp.join("d.bpk");
    d.clone().save_file(&p).map_err(|e| record_err(&p, e))?;
    let p = temp.join("opt_g.bpk");
    opt_g.save(&p).map_err(|e| record_err(&p, e))?;
    let p = temp.join("opt_d.bpk");
    opt_d.save(&p).map_err(|e| record_err(&p, e))?;
    let json = serde_json::to_vec_pretty(state)
        .map_err(|e| TrainError::Internal(format!("serialising the train state: {e}")))?;
    chatpainter_artifacts::write_atomic(temp.join(STATE_FILE), &json)?;
    chatpainter_artifacts::atomic::rename_durable(&temp, &target)?;
    let all = list(stage_dir)?;
    if all.len() > keep {
        for (_, old) in &all[..all.len() - keep] {
            std::fs::remove_dir_all(old).map_err(|e| TrainError::io(old, e))?;
        }
    }
    Ok(target)
}

/// Reads a checkpoint's [`TrainState`].
///
/// # Errors
/// [`TrainError::Io`] or [`TrainError::Checkpoint`] naming the file.
pub fn read_state(checkpoint: &Path) -> Result<TrainState, TrainError> {
    let path = checkpoint.join(STATE_FILE);
    let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    let state: TrainState = serde_json::from_slice(&bytes).map_err(|e| TrainError::Checkpoint {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if state.format != CHECKPOINT_FORMAT {
        return Err(TrainError::Checkpoint {
            path,
            message: format!(
                "checkpoint format {}, this build reads {CHECKPOINT_FORMAT}",
                state.format
            ),
        });
    }
    Ok(state)
}

/// Loads only the G side of a checkpoint (`g.bpk`) into a freshly built module (Stage-II
/// freezing a Stage-I run).
///
/// # Errors
/// [`TrainError::Record`] naming the file that does not fit.
pub fn load_generator<G: Module>(checkpoint: &Path, gnet: G) -> Result<G, TrainError> {
    let p = checkpoint.join("g.bpk");
    gnet.try_load_file(&p).map_err(|e| record_err(&p, e))
}

/// Loads the networks and optimiser states of a checkpoint into freshly built modules (models
/// first: the optimiser states are keyed by the ParamIds the model records restore).
///
/// # Errors
/// [`TrainError::Record`] naming the file that does not fit.
pub fn load_tensors<G: Module, D: Module>(
    checkpoint: &Path,
    gnet: G,
    d: D,
    opt_g: ModuleOptimizer,
    opt_d: ModuleOptimizer,
) -> Result<(G, D, ModuleOptimizer, ModuleOptimizer), TrainError> {
    let p = checkpoint.join("g.bpk");
    let gnet = gnet.try_load_file(&p).map_err(|e| record_err(&p, e))?;
    let p = checkpoint.join("d.bpk");
    let d = d.try_load_file(&p).map_err(|e| record_err(&p, e))?;
    let p = checkpoint.join("opt_g.bpk");
    let opt_g = opt_g.load(&p).map_err(|e| record_err(&p, e))?;
    let p = checkpoint.join("opt_d.bpk");
    let opt_d = opt_d.load(&p).map_err(|e| record_err(&p, e))?;
    Ok((gnet, d, opt_g, opt_d))
}
