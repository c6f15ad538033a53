//! `chatpainter generate`: a new caption and dialogue → PNG with a trained run (see
//! `chatpainter_eval::generation`).

use anyhow::{Context, Result, bail};
use chatpainter_eval::conditions::{DialogueFile, TurnPair, parse_turn};
use chatpainter_eval::generation::{GenerateRequest, generate};
use chatpainter_model::DeviceChoice;
use clap::Args;
use std::path::PathBuf;

use crate::ui;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Run directory with embed/ and a trained stage1/ or stage2/.
    #[arg(long)]
    pub run: PathBuf,
    /// stage2 or stage1 (default: stage2 when the run has trained it, else stage1).
    #[arg(long)]
    pub stage: Option<String>,
    /// The caption (default: the caption of --dialogue's file).
    #[arg(long)]
    pub caption: Option<String>,
    /// One dialogue turn, "question? answer" (repeatable, in order).
    #[arg(long = "turn", value_name = "Q? A.", conflicts_with = "dialogue")]
    pub turns: Vec<String>,
    /// VisDial-style JSON: {"caption": …, "dialog": [{"question": …, "answer": …}]}.
    #[arg(long)]
    pub dialogue: Option<PathBuf>,
    /// Write a strip: one image after each turn, same noise for every frame.
    #[arg(long)]
    pub per_turn: bool,
    /// Fixes the noise: the same seed and text give the same picture.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the generator runs.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn generate_cmd(args: &GenerateArgs) -> Result<()> {
    ui::init_logging(None)?;
    args.device
        .probe()
        .with_context(|| format!("--device {}", args.device))?;
    let (file_caption, turns): (Option<String>, Vec<TurnPair>) = match &args.dialogue {
        Some(path) => {
            let f = DialogueFile::read(path)?;
            (f.caption.clone(), f.turns())
        }
        None => (None, args.turns.iter().map(|t| parse_turn(t)).collect()),
    };
    let Some(caption) = args.caption.clone().or(file_caption) else {
        bail!("no caption: give --caption (or a \"caption\" in the --dialogue file)");
    };
    let req = GenerateRequest {
        run: args.run.clone(),
        stage: args.stage.clone(),
        caption,
        turns,
        per_turn: args.per_turn,
        seed: args.seed,
        device: args.device,
    };
    let result = generate(&req)?;
    chatpainter_eval::pictures::write_png(&args.out, &result.image)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "generate: wrote {} ({} frame(s), {} from {} at step {}, seed {})",
        args.out.display(),
        result.frames,
        result.variant.name(),
        result.checkpoint.display(),
        result.step,
        args.seed
    );
    Ok(())
}
