//! Stage-I and Stage-II training of StackGAN / ChatPainter, and everything that uses a trained
//! run: a library the CLI's `train stage1` / `train stage2` call through [`train_stage1`] /
//! [`train_stage2`], and `eval`, `generate`, `gpu-check`, `import-netg` and `bench` build on.
//!
//! - [`config`]: [`TrainConfig`] (variant, widths, schedule, intervals, device).
//! - [`data`]: the in-memory training set read from the ingest and embed artifacts, and the
//!   reference augmentation (random crop 76→64 or 304→256, flip, `[-1, 1]`, one caption per
//!   load).
//! - [`model`]: the networks of each stage behind [`StageGenerator`] (Stage-II holds the frozen
//!   Stage-I G); [`text_norm`]: the optional standardisation of text vectors before the CA.
//! - [`trainer`]: the GAN loop, checkpoints and exact resume, the stop flag; [`step`]: one step
//!   in StackGAN-Pytorch's order (D update on real / wrong / detached fake, then G update with
//!   the KL term), its named losses and the NaN/Inf guard. The loop's schedule, resume, sample
//!   sheets and data-parallel averaging are private modules beside it.
//! - [`checkpoint`]: the on-disk checkpoint layout (atomic directory per step, newest N kept).
//! - [`metrics`]: `metrics.jsonl` and sample sheets. [`export`]: safetensors with reference names.
//! - [`import`] and [`reference_run`]: reference PyTorch checkpoints into our modules, and a
//!   reference Stage-II generator into a run directory that generation samples from.
//! - [`generate`]: images from a trained run (eval's test split, `generate`'s new text).
//! - [`device`] and [`ranks`]: devices (flex CPU, LibTorch CPU/CUDA) and data-parallel ranks.
//! - [`rng`]: the seeded, checkpointable generators behind every random choice.
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
//! [`rng::Xoshiro256`] streams stored in checkpoints; the device RNG only initialises the
//! networks. On the flex CPU backend a resumed run ends bit-identical to an uninterrupted one
//! (tested).
//!
//! Data-parallel training ([`ranks`]): one process per device, started by `mpirun` / `srun`;
//! rank 0 broadcasts its state, every rank trains on its contiguous share of each global batch,
//! gradients are averaged over the ranks before each optimiser step, and only rank 0 writes.

pub mod checkpoint;
pub mod config;
pub mod data;
mod data_parallel;
pub mod device;
pub mod export;
pub mod generate;
pub mod import;
pub mod loader;
pub mod metrics;
pub mod model;
pub mod precision;
pub mod ranks;
pub mod reference_run;
mod resume;
pub mod rng;
mod sampling;
mod schedule;
pub mod source;
pub mod step;
pub mod text_norm;
pub mod trainer;

use std::path::PathBuf;

pub use config::{AdamSettings, NetworkConfig, ResolvedNetwork, TrainConfig, TrainDevice, Variant};
pub use data::{Geometry, StoredImage, TrainData, TrainItem};
pub use device::DeviceError;
pub use metrics::StepMetrics;
pub use model::{Stage1Generator, Stage2Generator, StageGenerator};
pub use precision::Precision;
pub use ranks::World;
pub use source::{ParquetSource, TrainSource};
pub use text_norm::{TextNorm, TextStats};
pub use trainer::{
    ResolvedConfig, TrainSummary, load_checkpoint_networks, train_stage1, train_stage2,
};

/// Errors of training and of the uses of a trained run. User/config, data, IO/runtime and
/// internal errors are apart.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A bad configuration value (the message starts with the key).
    #[error("stage1 config: {0}")]
    Config(String),
    /// The data breaks a contract (names the image or file).
    #[error("stage1 data: {0}")]
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
    #[error(transparent)]
    Embed(#[from] chatpainter_embed::EmbedError),
    #[error("network: {0}")]
    Nn(#[from] chatpainter_nn::NnError),
    /// A bug in this crate.
    #[error("internal error: {0}")]
    Internal(String),
}

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
