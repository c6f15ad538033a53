//! What the training loop does to keep data-parallel replicas identical (the collectives
//! themselves are [`crate::ranks`]'s):
//! - at the start, rank 0's state — fresh or resumed — is every rank's ([`share_start`]);
//! - in each step, D's gradients and logged terms, then G's, are averaged over the ranks before
//!   the optimiser step ([`average_d`], [`average_g`]), so every rank's NaN guard and update
//!   decide alike.
//!
//! With one rank every function here is the identity.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;

use crate::TrainError;
use crate::checkpoint;
use crate::ranks::World;
use crate::resume::Start;
use crate::step::{CaStats, DiscriminatorLosses, GeneratorLosses, UncondLosses};
use chatpainter_model::networks::StageGenerator;

/// Averages D's gradients and logged terms over the ranks; returns the gradients and the
/// seconds spent. The seven terms travel in one all-reduce (zeros for the terms a run lacks:
/// Stage-I's unconditional head, the object loss when off).
pub(crate) fn average_d<M: Module>(
    world: &World,
    grads: GradientsParams,
    d: &M,
    losses: &mut DiscriminatorLosses,
) -> (GradientsParams, f64) {
    let t0 = Instant::now();
    let grads = world.average_gradients(grads, d);
    let u = losses.uncond.unwrap_or(UncondLosses {
        real: 0.0,
        fake: 0.0,
    });
    let mut terms = [
        losses.total,
        losses.real,
        losses.wrong,
        losses.fake,
        u.real,
        u.fake,
        losses.object.unwrap_or(0.0),
    ];
    world.mean_f64(&mut terms);
    let [total, real, wrong, fake, uncond_real, uncond_fake, object] = terms;
    *losses = DiscriminatorLosses {
        total,
        real,
        wrong,
        fake,
        uncond: losses.uncond.map(|_| UncondLosses {
            real: uncond_real,
            fake: uncond_fake,
        }),
        object: losses.object.map(|_| object),
    };
    (grads, t0.elapsed().as_secs_f64())
}

/// Averages G's (and the dialogue encoder's) gradients and logged terms over the ranks; returns
/// the gradients and the seconds spent.
pub(crate) fn average_g<M: Module>(
    world: &World,
    grads: GradientsParams,
    gnet: &M,
    losses: &mut GeneratorLosses,
) -> (GradientsParams, f64) {
    let t0 = Instant::now();
    let grads = world.average_gradients(grads, gnet);
    let ca = losses.ca;
    let mut terms = [
        losses.total,
        losses.adversarial,
        losses.kl,
        losses.object.unwrap_or(0.0),
        ca.mu_abs,
        ca.sigma,
        ca.caption_rms,
        ca.dialogue_rms.unwrap_or(0.0),
    ];
    world.mean_f64(&mut terms);
    let [
        total,
        adversarial,
        kl,
        object,
        mu_abs,
        sigma,
        caption_rms,
        dialogue_rms,
    ] = terms;
    *losses = GeneratorLosses {
        total,
        adversarial,
        kl,
        object: losses.object.map(|_| object),
        ca: CaStats {
            mu_abs,
            sigma,
            caption_rms,
            dialogue_rms: ca.dialogue_rms.map(|_| dialogue_rms),
        },
    };
    (grads, t0.elapsed().as_secs_f64())
}

/// Rank 0's [`Start`] on every rank (with one rank, `start` itself): rank 0 writes its state as
/// a checkpoint into a scratch directory and broadcasts the files; the others load them.
/// Loading restores rank 0's parameter ids too, so the optimiser moments line up with the
/// parameters. Burn reads a loaded record's tensors lazily, on first use, so the receiving
/// ranks keep their copy (the returned [`Scratch`]) for the whole session.
pub(crate) fn share_start<G: StageGenerator>(
    world: &World,
    start: Start<G>,
) -> Result<(Start<G>, Option<Scratch>), TrainError> {
    if world.size() == 1 {
        return Ok((start, None));
    }
    let (start, scratch) = share_root_state(world, start)?;
    Ok((start, Some(scratch)))
}

fn share_root_state<G: StageGenerator>(
    world: &World,
    start: Start<G>,
) -> Result<(Start<G>, Scratch), TrainError> {
    let scratch = Scratch::new(world)?;
    let bytes = if world.is_root() {
        checkpoint::write_into(
            &scratch.0,
            &start.state,
            &start.gnet,
            &start.d,
            &start.opt_g,
            &start.opt_d,
        )?;
        checkpoint::pack(&scratch.0)?
    } else {
        Vec::new()
    };
    let bytes = world.broadcast_bytes(bytes);
    if world.is_root() {
        return Ok((start, scratch));
    }
    checkpoint::unpack(&bytes, &scratch.0)?;
    let state = checkpoint::read_state(&scratch.0)?;
    let (gnet, d, opt_g, opt_d) =
        checkpoint::load_tensors(&scratch.0, start.gnet, start.d, start.opt_g, start.opt_d)?;
    let start = Start {
        gnet: gnet.after_load(),
        d,
        opt_g,
        opt_d,
        resumed_from: (state.step > 0).then_some(state.step),
        state,
    };
    Ok((start, scratch))
}

/// A rank's private scratch directory under the system's temporary folder, removed when dropped.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    fn new(world: &World) -> Result<Self, TrainError> {
        let dir = std::env::temp_dir().join(format!(
            "chatpainter-rank{}-{}",
            world.rank(),
            std::process::id()
        ));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        }
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
