//! Generation from new text (`chatpainter generate`): a caption and a dialogue → one PNG, or,
//! with `per_turn`, a strip with one image after each turn ("the sketch artist"), all frames
//! drawn with the same noise so that only the conversation changes them.
//!
//! The text is encoded by the run's own encoders through [`RunEncoders`] (which refuses an
//! encoder that differs from the one the run was embedded with) and the generator is rebuilt
//! from the stage's saved config and newest checkpoint.

use std::path::{Path, PathBuf};

use chatpainter_model::{DeviceChoice, Variant};
use image::RgbImage;

use crate::conditions::{RunEncoders, TurnPair};
use crate::error::{EvalError, Result};
use crate::genapi::RunGenerator;
use crate::pictures::strip;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// The run directory.
    pub run: PathBuf,
    /// `stage1` / `stage2`; `None`: Stage-II if the run has one, else Stage-I.
    pub stage: Option<String>,
    pub caption: String,
    pub turns: Vec<TurnPair>,
    /// One frame per turn instead of one image.
    pub per_turn: bool,
    /// Fixes the noise (and CA eps): same seed, same picture.
    pub seed: u64,
    pub device: DeviceChoice,
}

/// The picture and what made it.
pub struct GenerateResult {
    /// One image, or the strip of frames.
    pub image: RgbImage,
    /// Number of frames (1 without `per_turn`).
    pub frames: usize,
    /// The stage directory the generator came from.
    pub stage_dir: PathBuf,
    pub checkpoint: PathBuf,
    pub step: u64,
    pub variant: Variant,
}

/// Resolves the generator stage directory of `req`.
///
/// # Errors
/// A stage name other than `stage1` / `stage2`.
pub fn stage_dir(run: &Path, stage: Option<&str>) -> Result<PathBuf> {
    let Some(name) = stage else {
        return Ok(crate::stage::default_generator_stage(run));
    };
    match name.parse::<chatpainter_artifacts::Stage>() {
        Ok(s) if s.is_training() => Ok(run.join(s.name())),
        _ => Err(EvalError::Config(format!(
            "--stage {name}: expected stage1 or stage2"
        ))),
    }
}

/// Encodes the text as the run's embed stage does, generates, and composes the picture.
///
/// # Errors
/// A different encoder than the run's; a dialogue variant without turns; generator errors.
pub fn generate(req: &GenerateRequest) -> Result<GenerateResult> {
    let stage_dir = stage_dir(&req.run, req.stage.as_deref())?;
    let encoders = RunEncoders::load(&req.run.join(chatpainter_artifacts::Stage::Embed))?;
    let generator = RunGenerator::load(&stage_dir, req.device)?;
    let variant = generator.variant();
    encoders.check_widths(variant, generator.caption_dim(), generator.dialogue_dim())?;
    if req.per_turn && variant == Variant::Stackgan {
        return Err(EvalError::Config(format!(
            "--per-turn: the run in {} is the caption-only StackGAN baseline; its pictures do not \
             depend on the dialogue",
            stage_dir.display()
        )));
    }
    let conditions =
        encoders.per_turn_conditions(variant, &req.caption, &req.turns, req.per_turn)?;
    let seeds = vec![req.seed; conditions.len()];
    let frames: Vec<RgbImage> = generator
        .generate(&conditions, &seeds, conditions.len().max(1))?
        .into_iter()
        .map(|g| g.stage2.unwrap_or(g.stage1))
        .collect();
    let image = match frames.as_slice() {
        [one] if !req.per_turn => one.clone(),
        [] => {
            return Err(EvalError::Data("the generator returned no image".into()));
        }
        many => strip(many),
    };
    Ok(GenerateResult {
        image,
        frames: frames.len(),
        checkpoint: generator.checkpoint().to_path_buf(),
        step: generator.step(),
        stage_dir,
        variant,
    })
}
