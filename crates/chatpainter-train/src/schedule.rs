//! The run's clock: steps per epoch and the step limit, this rank's rows of the global batch,
//! the learning rates of an epoch (both halved every `lr_decay_epochs` epochs, as the
//! reference) and the cadence of logs, sample sheets and checkpoints.

use std::ops::Range;

use crate::TrainError;
use crate::config::TrainConfig;
use crate::ranks::World;

/// Learning-rate halvings in `epoch` (the reference halves at every multiple of the period).
pub fn lr_halvings(epoch: u64, decay_epochs: u64) -> u32 {
    epoch
        .checked_div(decay_epochs)
        .map_or(0, |h| u32::try_from(h).unwrap_or(u32::MAX))
}

/// The schedule of one run on one rank.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    /// The global batch.
    pub batch: usize,
    /// This rank's rows of the global batch (`r·B/W .. (r+1)·B/W`).
    pub rows: Range<usize>,
    pub steps_per_epoch: u64,
    /// The step limit: `max_steps`, `epochs` whole epochs, or the smaller of both.
    pub total: u64,
    lr_g: f64,
    lr_d: f64,
    lr_decay_epochs: u64,
    log_every: u64,
    sample_every: u64,
    checkpoint_every: u64,
}

impl Schedule {
    /// The schedule of `cfg` on `items` training images for this rank of `world`.
    ///
    /// # Errors
    /// [`TrainError::Config`] when the batch does not split into the ranks (at least 2 images
    /// each: the wrong pairs need them); [`TrainError::Data`] when the images do not fill one
    /// batch.
    pub fn new(cfg: &TrainConfig, items: usize, world: &World) -> Result<Self, TrainError> {
        let batch = cfg.batch_size;
        let ranks = world.size();
        if !batch.is_multiple_of(ranks) || batch / ranks < 2 {
            return Err(TrainError::Config(format!(
                "batch_size: {batch} does not split into {ranks} ranks of at least 2 images"
            )));
        }
        let share = batch / ranks;
        let rows = world.rank() * share..(world.rank() + 1) * share;
        let spe = (items / batch) as u64;
        if spe == 0 {
            return Err(TrainError::Data(format!(
                "{items} training images do not fill one batch of {batch}"
            )));
        }
        let total = match (cfg.epochs, cfg.max_steps) {
            (Some(e), Some(s)) => s.min(e.saturating_mul(spe)),
            (Some(e), None) => e.saturating_mul(spe),
            (None, Some(s)) => s,
            (None, None) => 0,
        };
        Ok(Self {
            batch,
            rows,
            steps_per_epoch: spe,
            total,
            lr_g: cfg.lr_g,
            lr_d: cfg.lr_d,
            lr_decay_epochs: cfg.lr_decay_epochs,
            log_every: cfg.log_every,
            sample_every: cfg.sample_every,
            checkpoint_every: cfg.checkpoint_every,
        })
    }

    /// Learning-rate halvings in `epoch`.
    pub fn lr_halvings(&self, epoch: u64) -> u32 {
        lr_halvings(epoch, self.lr_decay_epochs)
    }

    /// `(lr_g, lr_d)` after `halvings` halvings.
    pub fn learning_rates(&self, halvings: u32) -> (f64, f64) {
        let factor = 0.5f64.powi(halvings as i32);
        (self.lr_g * factor, self.lr_d * factor)
    }

    /// Whether `step` logs a line.
    pub fn logs(&self, step: u64) -> bool {
        every(self.log_every, step)
    }

    /// Whether `step` draws a sample sheet.
    pub fn samples(&self, step: u64) -> bool {
        every(self.sample_every, step)
    }

    /// Whether `step` writes a checkpoint: at the interval, when stopping, and at the end.
    pub fn checkpoints(&self, step: u64, stopping: bool) -> bool {
        every(self.checkpoint_every, step) || stopping || step == self.total
    }
}

/// `step` is a multiple of `interval`; an interval of 0 is never.
fn every(interval: u64, step: u64) -> bool {
    interval > 0 && step.is_multiple_of(interval)
}
