//! Stage-I and Stage-II training of StackGAN / ChatPainter: a library the CLI's `train stage1` /
//! `train stage2` call through [`train_stage1`] / [`train_stage2`]. What a trained run is made of
//! and what uses it without training (devices, variant and widths, the stage generators,
//! checkpoint reading, the dataset reader, generation) is `chatpainter-model`.
//!
//! - [`config`]: [`TrainConfig`] (variant, widths, schedule, intervals, device).
//! - [`source`] and [`loader`]: the training data (in memory or streamed from Parquet row
//!   groups), its windowed epoch order and the background batch prefetcher.
//! - [`trainer`]: the GAN loop, checkpoints and exact resume, the stop flag; [`step`]: one step
//!   in StackGAN-Pytorch's order (D update on real / wrong / detached fake, then G update with
//!   the KL term), its named losses and the NaN/Inf guard. The loop's schedule, resume, sample
//!   sheets and data-parallel averaging are private modules beside it.
//! - [`checkpoint`]: writing and verifying checkpoints (atomic directory per step, newest N
//!   kept) and the training state they hold.
//! - [`metrics`]: `metrics.jsonl` and sample sheets. [`exports`]: the safetensors (and
//!   Stage-II `.pth`) a completed run writes.
//! - [`precision`]: bf16 mixed precision. [`text_norm`]: the `text_norm` option and the
//!   statistics it standardises with.
//! - [`import`] and [`reference_run`]: reference PyTorch checkpoints into our modules, and a
//!   reference Stage-II generator into a run directory that generation samples from.
//! - [`ranks`]: data-parallel ranks.
//!
//! The stage directory (`out_dir` of [`train_stage1`]; Stage-II's has the same layout with
//! `stage2_*` exports, 256×256 samples and the reference generator `stage2_g.pth`):
//!
//! ```text
//! config.json                     resolved config + network sizes + steps per epoch (ResolvedConfig)
//! metrics.jsonl                   one StepMetrics JSON object per optimiser step
//! samples/step-000000100.png      real 64×64 crops | generated, at fixed noise and conditions
//! checkpoints/step-000000100/     g.bpk d.bpk opt_g.bpk opt_d.bpk state.json checksums.json
//!                                 (newest N kept; a damaged one is set aside as step-….damaged)
//! stage1_g.safetensors            reference PyTorch names (STAGE1_G state_dict), end of run
//! stage1_d.safetensors            reference names (STAGE1_D)
//! stage1_dialogue_rnn.safetensors recurrent variant: the BiLSTM (`lstm.weight_ih_l0`, …)
//! ```
//!
//! Decisions: sample sheets run G with batch-statistics BatchNorm (as the reference's train-mode
//! sheets; inference mode shows flat grey for the first hundreds of steps, while the running
//! statistics lag) on a copy whose running statistics are neither used nor updated, so sampling
//! never changes the training state; the non-finite guard checks every loss every step
//! and every weight before each checkpoint (a weight going NaN shows in the next step's losses).
//!
//! Determinism: all training randomness (order, crops, flips, captions, noise, CA eps) comes from
//! `Xoshiro256` streams (`chatpainter_artifacts`) stored in checkpoints; the device RNG only initialises the
//! networks. On the flex CPU backend a resumed run ends bit-identical to an uninterrupted one
//! (tested).
//!
//! Data-parallel training ([`ranks`]): one process per device, started by `mpirun` / `srun`;
//! rank 0 broadcasts its state, every rank trains on its contiguous share of each global batch,
//! gradients are averaged over the ranks before each optimiser step, and only rank 0 writes.

mod batch;
pub mod checkpoint;
pub mod config;
mod data_parallel;
pub mod exports;
pub mod import;
pub mod loader;
pub mod metrics;
pub mod objects;
pub mod precision;
pub mod ranks;
pub mod reference_run;
mod resume;
mod sampling;
mod schedule;
pub mod source;
pub mod step;
pub mod text_norm;
pub mod trainer;

use std::path::PathBuf;

pub use config::{AdamSettings, NetworkConfig, TrainConfig};
pub use metrics::StepMetrics;
pub use precision::Precision;
pub use ranks::World;
pub use source::{ParquetSource, TrainSource};
pub use text_norm::TextNorm;
pub use trainer::{
    ResolvedConfig, TrainSummary, load_checkpoint_networks, train_stage1, train_stage2,
};

/// Errors of training. User/config, data, IO/runtime and
/// internal errors are apart.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A bad configuration value (the message starts with the key).
    #[error("training config: {0}")]
    Config(String),
    /// The data breaks a contract (names the image or file).
    #[error("training data: {0}")]
    Data(String),
    /// The backend failed inside a step, e.g. out of device memory.
    #[error(
        "step {step}: the training step failed at batch_size {batch_size}: {message} \
         (if the device ran out of memory, lower batch_size; the last checkpoint is kept)"
    )]
    StepFailed {
        step: u64,
        batch_size: usize,
        message: String,
    },
    /// A loss or weight stopped being finite.
    #[error("step {step}: {what} is {value}; stopping (the last good checkpoint is kept)")]
    NonFinite { step: u64, what: String, value: f64 },
    /// A checkpoint exists whose configuration differs from the requested one.
    #[error("{checkpoint}: cannot resume: {detail}", checkpoint = .checkpoint.display())]
    ResumeMismatch { checkpoint: PathBuf, detail: String },
    /// An unreadable checkpoint file.
    #[error("{path}: {message}", path = .path.display())]
    Checkpoint { path: PathBuf, message: String },
    /// A Burn record (weights or optimiser state) could not be written or read.
    #[error("{path}: record: {message}", path = .path.display())]
    Record { path: PathBuf, message: String },
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Artifact(#[from] chatpainter_artifacts::ArtifactError),
    #[error(transparent)]
    Format(#[from] chatpainter_formats::FormatError),
    #[error("network: {0}")]
    Nn(#[from] chatpainter_nn::NnError),
    /// A bug in this crate.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The model runtime's errors keep their kind (and message) in training.
impl From<chatpainter_model::ModelError> for TrainError {
    fn from(e: chatpainter_model::ModelError) -> Self {
        use chatpainter_model::ModelError as M;
        match e {
            M::Config(m) => Self::Config(m),
            M::Data(m) => Self::Data(m),
            M::Checkpoint { path, message } => Self::Checkpoint { path, message },
            M::Record { path, message } => Self::Record { path, message },
            M::Io { path, source } => Self::Io { path, source },
            M::Artifact(e) => Self::Artifact(e),
            M::Format(e) => Self::Format(e),
            M::Nn(e) => Self::Nn(e),
            M::Device(e) => Self::Config(e.to_string()),
            M::Internal(m) => Self::Internal(m),
        }
    }
}

impl From<chatpainter_model::DeviceError> for TrainError {
    fn from(e: chatpainter_model::DeviceError) -> Self {
        Self::Config(e.to_string())
    }
}

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
