//! Checkpoints: one directory per step, `checkpoints/step-000000042/`, holding
//! `g.bpk` and `d.bpk` (Burn burnpack records of the G side and D, BatchNorm running statistics
//! included, ParamIds persisted), `opt_g.bpk` and `opt_d.bpk` (the Adam states, keyed by those
//! ParamIds) and `state.json` ([`TrainState`]: step, epoch, data-order position, every RNG state,
//! the LR-schedule position and the resolved config).
//!
//! A checkpoint is written into a hidden temporary directory that is renamed into place only when
//! complete, so a crash (even SIGKILL) leaves either the whole checkpoint or none. Only the newest
//! `keep` checkpoints are kept.
//!
//! `checksums.json` (written last, format 2 on) records the SHA-256 of every other file, so that
//! a checkpoint damaged after it was written (a truncated or altered file, a disk error) is
//! recognised by name instead of failing the resume with an I/O or decoding error:
//! [`latest_intact`] sets such a checkpoint aside (`step-…​.damaged`) and falls back to the newest
//! intact one.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::config::TrainConfig;
use chatpainter_artifacts::Xoshiro256;
use chatpainter_model::ResolvedNetwork;
pub use chatpainter_model::checkpoint::{CHECKPOINTS_DIR, dir_name, latest, list, load_generator};

/// Version of the checkpoint layout (bumped on changes). 2 added `checksums.json`; format-1
/// checkpoints (no checksums) are still read, unverified.
pub const CHECKPOINT_FORMAT: u32 = 2;
const OLDEST_READABLE_FORMAT: u32 = 1;
const STATE_FILE: &str = "state.json";
const CHECKSUMS_FILE: &str = "checksums.json";
/// The files of a checkpoint besides `checksums.json`.
const FILES: [&str; 5] = ["g.bpk", "d.bpk", "opt_g.bpk", "opt_d.bpk", STATE_FILE];
/// Suffix of a checkpoint directory set aside as damaged.
pub const DAMAGED_SUFFIX: &str = ".damaged";

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
    /// How many data-parallel ranks wrote this checkpoint (1 before format 2). The data cursor
    /// counts global batches, so a run may resume with another world size.
    #[serde(default = "one_rank")]
    pub world_size: usize,
    pub config: TrainConfig,
    pub network: ResolvedNetwork,
}

fn one_rank() -> usize {
    1
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
    write_into(&temp, state, gnet, d, opt_g, opt_d)?;
    chatpainter_artifacts::atomic::rename_durable(&temp, &target)?;
    let all = list(stage_dir)?;
    if all.len() > keep {
        for (_, old) in &all[..all.len() - keep] {
            std::fs::remove_dir_all(old).map_err(|e| TrainError::io(old, e))?;
        }
    }
    Ok(target)
}

/// Writes the files of a checkpoint into the (new) directory `dir`, `checksums.json` last.
///
/// # Errors
/// IO and record-writing errors, naming the file.
pub fn write_into<G: Module, D: Module>(
    dir: &Path,
    state: &TrainState,
    gnet: &G,
    d: &D,
    opt_g: &ModuleOptimizer,
    opt_d: &ModuleOptimizer,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    // `valid()` folds pending BatchNorm running-stat updates into the shared state, so that the
    // record holds the current statistics, not ones lagging by an update.
    let _ = gnet.valid();
    let _ = d.valid();
    let p = dir.join("g.bpk");
    gnet.clone().save_file(&p).map_err(|e| record_err(&p, e))?;
    let p = dir.join("d.bpk");
    d.clone().save_file(&p).map_err(|e| record_err(&p, e))?;
    let p = dir.join("opt_g.bpk");
    opt_g.save(&p).map_err(|e| record_err(&p, e))?;
    let p = dir.join("opt_d.bpk");
    opt_d.save(&p).map_err(|e| record_err(&p, e))?;
    let json = serde_json::to_vec_pretty(state)
        .map_err(|e| TrainError::Internal(format!("serialising the train state: {e}")))?;
    chatpainter_artifacts::write_atomic(dir.join(STATE_FILE), &json)?;
    let mut sums = std::collections::BTreeMap::new();
    for f in FILES {
        sums.insert(f, chatpainter_artifacts::sha256_file(dir.join(f))?);
    }
    let json = serde_json::to_vec_pretty(&sums)
        .map_err(|e| TrainError::Internal(format!("serialising the checksums: {e}")))?;
    chatpainter_artifacts::write_atomic(dir.join(CHECKSUMS_FILE), &json).map_err(TrainError::from)
}

/// Checks a checkpoint against the checksums recorded when it was written: every file present
/// with its recorded SHA-256. A format-1 checkpoint (written before checksums) passes when its
/// files are present.
///
/// # Errors
/// [`TrainError::Checkpoint`] naming the first missing, unreadable or altered file.
pub fn verify(checkpoint: &Path) -> Result<(), TrainError> {
    let damaged = |path: PathBuf, message: String| TrainError::Checkpoint { path, message };
    let sums_path = checkpoint.join(CHECKSUMS_FILE);
    let sums: std::collections::BTreeMap<String, String> = match std::fs::read(&sums_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| damaged(sums_path.clone(), format!("unreadable checksums: {e}")))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let state = read_state(checkpoint)?;
            if state.format >= 2 {
                return Err(damaged(sums_path, "missing".into()));
            }
            for f in FILES {
                if !checkpoint.join(f).is_file() {
                    return Err(damaged(checkpoint.join(f), "missing".into()));
                }
            }
            return Ok(());
        }
        Err(e) => return Err(TrainError::io(&sums_path, e)),
    };
    for f in FILES {
        let path = checkpoint.join(f);
        let want = sums
            .get(f)
            .ok_or_else(|| damaged(sums_path.clone(), format!("no checksum for {f}")))?;
        if !path.is_file() {
            return Err(damaged(path, "missing".into()));
        }
        let got = chatpainter_artifacts::sha256_file(&path)?;
        if &got != want {
            let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
            return Err(damaged(
                path,
                format!("altered or truncated: SHA-256 {got} ({bytes} bytes), written as {want}"),
            ));
        }
    }
    Ok(())
}

/// The newest checkpoint that passes [`verify`], and each newer one that does not, with what is
/// wrong with it (nothing is changed on disk).
///
/// # Errors
/// IO errors listing the checkpoints.
pub fn newest_intact(stage_dir: &Path) -> Result<(Option<PathBuf>, Vec<Damaged>), TrainError> {
    let mut damaged = Vec::new();
    for (step, dir) in list(stage_dir)?.into_iter().rev() {
        match verify(&dir) {
            Ok(()) => return Ok((Some(dir), damaged)),
            Err(error) => damaged.push(Damaged { step, dir, error }),
        }
    }
    Ok((None, damaged))
}

/// A checkpoint that failed [`verify`].
#[derive(Debug)]
pub struct Damaged {
    pub step: u64,
    pub dir: PathBuf,
    pub error: TrainError,
}

/// [`newest_intact`], with each damaged newer checkpoint reported (a warning naming the file)
/// and renamed to `step-…​.damaged` beside the others, so that it is neither resumed from nor
/// pruned, and the run can write that step again.
///
/// # Errors
/// IO errors listing or renaming the checkpoints.
pub fn latest_intact(stage_dir: &Path) -> Result<Option<PathBuf>, TrainError> {
    let (intact, damaged) = newest_intact(stage_dir)?;
    for Damaged { step, dir, error } in damaged {
        let name = |k: usize| match k {
            0 => format!("{}{DAMAGED_SUFFIX}", dir_name(step)),
            k => format!("{}{DAMAGED_SUFFIX}.{k}", dir_name(step)),
        };
        let mut k = 0;
        while dir.with_file_name(name(k)).exists() {
            k += 1;
        }
        let aside = dir.with_file_name(name(k));
        std::fs::rename(&dir, &aside).map_err(|e| TrainError::io(&dir, e))?;
        // The CLI's subscriber puts warnings on stderr and in the stage's log.
        tracing::warn!(
            "checkpoint of step {step} is damaged ({error}); set aside as {}, resuming from the \
             previous intact checkpoint",
            aside.display()
        );
    }
    Ok(intact)
}

/// A checkpoint directory as one byte string (each file as name length, name, size, bytes), for
/// sending rank 0's state to the other ranks.
///
/// # Errors
/// IO errors naming the file.
pub fn pack(checkpoint: &Path) -> Result<Vec<u8>, TrainError> {
    let mut out = Vec::new();
    for f in FILES.iter().chain(&[CHECKSUMS_FILE]) {
        let path = checkpoint.join(f);
        let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
        out.extend((f.len() as u32).to_le_bytes());
        out.extend(f.as_bytes());
        out.extend((bytes.len() as u64).to_le_bytes());
        out.extend(bytes);
    }
    Ok(out)
}

/// Writes what [`pack`] produced into the (new) directory `dir`.
///
/// # Errors
/// [`TrainError::Internal`] for a malformed byte string, IO errors naming the file.
pub fn unpack(bytes: &[u8], dir: &Path) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let bad = || TrainError::Internal("a malformed checkpoint from rank 0".into());
    let mut rest = bytes;
    let mut take = |n: usize| -> Result<&[u8], TrainError> {
        if rest.len() < n {
            return Err(bad());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    for _ in 0..FILES.len() + 1 {
        let len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad())?) as usize;
        let name = std::str::from_utf8(take(len)?)
            .map_err(|_| bad())?
            .to_owned();
        if !FILES.contains(&name.as_str()) && name != CHECKSUMS_FILE {
            return Err(bad());
        }
        let size = u64::from_le_bytes(take(8)?.try_into().map_err(|_| bad())?) as usize;
        let path = dir.join(&name);
        std::fs::write(&path, take(size)?).map_err(|e| TrainError::io(&path, e))?;
    }
    verify(dir)
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
    if !(OLDEST_READABLE_FORMAT..=CHECKPOINT_FORMAT).contains(&state.format) {
        return Err(TrainError::Checkpoint {
            path,
            message: format!(
                "checkpoint format {}, this build reads {OLDEST_READABLE_FORMAT} to \
                 {CHECKPOINT_FORMAT}",
                state.format
            ),
        });
    }
    Ok(state)
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
