//! Evaluation metrics of ChatPainter: Inception v3 backbones, Inception Score and FID.
//!
//! The pieces, in the order a caller uses them:
//! 1. [`inception`]: the network in its two flavours (torchvision ImageNet, and the TF
//!    "2015-12-05" graph of pytorch-fid / torch-fidelity), with `state_dict`-compatible names.
//! 2. [`weights`]: loading a user-supplied weights file (`.pth` or safetensors), recording its
//!    sha256; without a file the result is [`Availability::Unavailable`], never a number.
//! 3. [`preprocess`]: resize to 299 and normalise exactly as each backbone expects.
//! 4. [`inception_score`] and [`fid`]: the metrics in f64, FID reference statistics in
//!    [`npz`] files; [`runner`] feeds batches through a network and collects both.
//!
//! Every number must be printed together with [`Backbone::label`]: scores from the two
//! backbones are not comparable (different weights, pooling layers, class counts and resizing).
//!
//! On top of the metrics, the evaluation and generation stages (the CLI's `eval`,
//! `eval-folder` and `generate` call these):
//! 5. [`score`]: one [`score::Scorer`] for generated and real images, and `metrics.json`
//!    ([`score::MetricsFile`]) stamped with the protocol.
//! 6. [`stage`]: the eval stage (generate the test split's conditions, score, sheets, strips);
//!    [`folder`]: the same metrics on a folder of images.
//! 7. [`conditions`]: text → generator conditions with the run's own encoders;
//!    [`generation`]: `generate` from new text, per turn; [`pictures`]: PNGs, sheets, strips.
//! 8. [`bench`]: Inception throughput.

pub mod bench;
pub mod conditions;
pub mod error;
pub mod fid;
pub mod folder;
pub mod generation;
pub mod inception;
pub mod inception_score;
pub mod pictures;
pub mod preprocess;
pub mod runner;
pub mod scene_score;
pub mod score;
pub mod stage;
pub mod weights;

/// The generator API: `chatpainter_model::generate`.
pub(crate) use chatpainter_model::generate as genapi;
pub use error::{EvalError, Result};
pub use fid::{FeatureAccumulator, Fid, FidStatistics, frechet_distance};
pub use inception::{Backbone, InceptionConfig, InceptionOutput, InceptionV3};
pub use inception_score::{
    InceptionScore, InceptionScoreConfig, ProbabilityMatrix, inception_score,
};
pub use preprocess::{ImageBatch, Preprocess, preprocess};
pub use runner::InceptionRunner;

pub use weights::{Availability, LoadedInception, WeightsProvenance, load_inception};
