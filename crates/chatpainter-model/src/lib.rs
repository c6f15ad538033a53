//! A trained run's runtime: everything needed to rebuild a run's networks from its directory and
//! run them on a device, without the training loop. Training (`chatpainter-train`) and
//! evaluation (`chatpainter-eval`) both build on it; neither links the other.
//!
//! - [`device`]: [`DeviceChoice`], a device name (the workspace's one grammar,
//!   `chatpainter_artifacts::device::DeviceName`) this build can drive, and its Burn devices.
//! - [`network`]: the conditioning [`Variant`] and the widths a run used ([`ResolvedNetwork`]).
//! - [`networks`]: each stage's G side behind [`StageGenerator`] ([`Stage1Generator`],
//!   [`Stage2Generator`] around the frozen Stage-I G).
//! - [`checkpoint`]: the checkpoint directory layout and loading a generator from it.
//! - [`run`]: what a generator needs from a training stage's `config.json` ([`RunConfig`]).
//! - [`generate`]: [`RunGenerator`], images from a trained stage directory.
//! - [`dataset`]: a split of the ingested and embedded data in memory ([`TrainData`]), the
//!   reference augmentation and batch assembly.
//! - [`text_norm`]: the text-vector standardisation a run recorded ([`TextStats`]).
//! - [`export`]: weights as safetensors under the reference PyTorch names.
//! - [`text`]: the text encoders (hashing, all-MiniLM-L6-v2, Skip-Thought, StackGAN's
//!   char-CNN-RNN vectors) behind one trait, and loading them from a config.

pub mod checkpoint;
pub mod dataset;
pub mod device;
mod error;
pub mod export;
pub mod generate;
pub mod network;
pub mod networks;
pub mod run;
pub mod text;
pub mod text_norm;

pub use dataset::{Geometry, StoredImage, TrainData, TrainItem};
pub use device::{DeviceChoice, DeviceError};
pub use error::ModelError;
pub use generate::{CaSampling, RunGenerator};
pub use network::{CaActivation, ResolvedNetwork, Stage2Widths, Variant};
pub use networks::{Stage1Generator, Stage2Generator, StageGenerator};
pub use run::RunConfig;
pub use text_norm::TextStats;
