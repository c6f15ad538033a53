//! Benchmarks and the device check of the training step, kept out of the training library:
//! nothing here trains a run, everything runs the trainer's own step
//! ([`chatpainter_train::step::train_step`]) on random inputs of the real shapes, so no dataset
//! is needed and what is timed or compared is exactly what training runs. Only the CLI depends
//! on this crate (`chatpainter bench …`, `bench-step`, `gpu-check`).
//!
//! - [`gpu_check`]: a few Stage-I steps on a device — finite losses, one step's losses equal to
//!   flex's, step times — and `bench stage1`.
//! - [`step`]: `bench stage2` (Stage-II step and peak memory at the paper's widths) and
//!   `bench-step` (either stage at any widths; the JSON the PyTorch reference prints).
//! - [`loader`]: `bench loader`, the loader's batch preparation per core.

pub mod gpu_check;
pub mod loader;
pub mod step;

use burn::optim::{AdamConfig, ModuleOptimizer};
use chatpainter_train::AdamSettings;

/// Adam with the settings' β₁, β₂ and ε, as the trainer builds it.
fn adam(settings: &AdamSettings) -> ModuleOptimizer {
    AdamConfig::new()
        .with_beta_1(settings.beta1 as f32)
        .with_beta_2(settings.beta2 as f32)
        .with_epsilon(settings.eps as f32)
        .init()
}
