//! Where a session starts and what it leaves to resume from: rank 0 resumes from the newest
//! intact checkpoint (damaged newer ones set aside, a checkpoint of another configuration or
//! data set refused) or starts fresh from the seed; checkpoints are written only with finite
//! weights, so the last one on disk is always a good one.

use std::path::{Path, PathBuf};

use burn::optim::ModuleOptimizer;

use crate::TrainError;
use crate::checkpoint::{self, CHECKPOINT_FORMAT, TrainState};
use crate::config::TrainConfig;
use crate::loader::{Layout, WINDOW_BYTES};
use crate::trainer::{Run, STREAM_DATA, STREAM_NOISE, adam};
use chatpainter_artifacts::Xoshiro256;
use chatpainter_model::ResolvedNetwork;
use chatpainter_model::export::first_non_finite;
use chatpainter_model::networks::StageGenerator;

/// The networks, optimisers and loop state a session starts from.
pub(crate) struct Start<G: StageGenerator> {
    pub gnet: G,
    pub d: G::D,
    pub opt_g: ModuleOptimizer,
    pub opt_d: ModuleOptimizer,
    pub state: TrainState,
    pub resumed_from: Option<u64>,
}

/// Rank 0: the newest intact checkpoint's state (damaged newer ones set aside), or a fresh
/// start. The other ranks get theirs from rank 0 ([`crate::data_parallel::share_start`]).
pub(crate) fn start<G: StageGenerator>(
    run: &Run<'_>,
    gnet: G,
    d: G::D,
) -> Result<Start<G>, TrainError> {
    let cfg = run.cfg;
    let n = run.data.len();
    let (opt_g, opt_d) = (adam(cfg), adam(cfg));
    let resume_from = if run.world.is_root() {
        checkpoint::remove_partial(run.out_dir)?;
        checkpoint::latest_intact(run.out_dir)?
    } else {
        None
    };
    let Some(dir) = resume_from else {
        let mut data_rng = Xoshiro256::new(cfg.seed, STREAM_DATA);
        let mut permutation: Vec<u32> = (0..n as u32).collect();
        Layout::new(run.data, cfg.variant, WINDOW_BYTES).shuffle(&mut permutation, &mut data_rng);
        let state = TrainState {
            format: CHECKPOINT_FORMAT,
            step: 0,
            epoch: 0,
            next_batch: 0,
            permutation,
            data_rng,
            noise_rng: Xoshiro256::new(cfg.seed, STREAM_NOISE),
            lr_halvings: 0,
            config: cfg.clone(),
            network: run.net,
            world_size: run.world.size(),
        };
        return Ok(Start {
            gnet,
            d,
            opt_g,
            opt_d,
            state,
            resumed_from: None,
        });
    };
    let st = checkpoint::read_state(&dir)?;
    check_resumable(&dir, &st, cfg, &run.net, n)?;
    let (gnet, d, opt_g, opt_d) = checkpoint::load_tensors(&dir, gnet, d, opt_g, opt_d)?;
    tracing::info!(step = st.step, checkpoint = %dir.display(), "resuming {}", G::STAGE);
    let ranks = run.world.size();
    if st.world_size != ranks {
        let message = format!(
            "{}: resuming step {} written by {} rank(s) with {ranks} rank(s): the global \
             batch ({}) and its order are unchanged, each rank now takes {} images per step",
            G::STAGE,
            st.step,
            st.world_size,
            cfg.batch_size,
            cfg.batch_size / ranks
        );
        tracing::info!("{message}");
    }
    Ok(Start {
        gnet: gnet.after_load(),
        d,
        opt_g,
        opt_d,
        resumed_from: Some(st.step),
        state: st,
    })
}

/// Refuses to resume from a checkpoint of another configuration or data set.
fn check_resumable(
    dir: &Path,
    st: &TrainState,
    cfg: &TrainConfig,
    net: &ResolvedNetwork,
    n: usize,
) -> Result<(), TrainError> {
    if st.config.resume_key() != cfg.resume_key() || st.network != *net {
        return Err(TrainError::ResumeMismatch {
            checkpoint: dir.to_path_buf(),
            detail: format!(
                "checkpoint config {:?} / network {:?}, requested {:?} / {:?}",
                st.config.resume_key(),
                st.network,
                cfg.resume_key(),
                net
            ),
        });
    }
    let mut seen = vec![false; n];
    let is_permutation = st.permutation.len() == n
        && st.permutation.iter().all(|&i| {
            let fresh = seen.get(i as usize).is_some_and(|s| !s);
            if fresh {
                seen[i as usize] = true;
            }
            fresh
        });
    if !is_permutation {
        return Err(TrainError::ResumeMismatch {
            checkpoint: dir.to_path_buf(),
            detail: format!(
                "the checkpoint's data order ({} entries) is not a permutation of the {n} images",
                st.permutation.len()
            ),
        });
    }
    Ok(())
}

/// Writes a checkpoint, refusing non-finite weights (the previous checkpoint stays the last
/// good one).
pub(crate) fn save_checked<G: StageGenerator>(
    out_dir: &Path,
    state: &TrainState,
    gnet: &G,
    d: &G::D,
    opt_g: &ModuleOptimizer,
    opt_d: &ModuleOptimizer,
    cfg: &TrainConfig,
) -> Result<PathBuf, TrainError> {
    for (net, bad) in [("G", first_non_finite(gnet)), ("D", first_non_finite(d))] {
        if let Some((path, value)) = bad {
            return Err(TrainError::NonFinite {
                step: state.step,
                what: format!("{net} weight `{path}`"),
                value: f64::from(value),
            });
        }
    }
    checkpoint::save(out_dir, state, gnet, d, opt_g, opt_d, cfg.keep_checkpoints)
}
