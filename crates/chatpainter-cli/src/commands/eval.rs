//! `chatpainter eval` (the eval stage), `eval-folder`, `score-scenes` and `bench eval`.
//! The work is in `chatpainter_eval`; this module wires config, the artifact contract, logging
//! and the progress bar.

use anyhow::{Context, Result, anyhow};
use chatpainter_artifacts::digest::sha256_json;
use chatpainter_artifacts::{BenchRow, Manifest, OutputFile, Stage, StageKey, StageOutput};
use chatpainter_eval::score::{BackboneChoice, ScoreSettings};
use chatpainter_formats::metrics::{METRICS_FILE, MetricsFile};
use chatpainter_model::DeviceChoice;
use clap::Args;
use std::path::PathBuf;

use super::stage::{StageRunner, load, table, upstream_of};
use crate::{StageArgs, ui};

/// `chatpainter eval --pipeline P --run R`.
pub fn eval_stage(args: &StageArgs) -> Result<()> {
    let (pipeline, run) = load(args)?;
    let cfg = table(args, &pipeline.eval, Stage::Eval)?;
    cfg.validate()
        .map_err(|e| anyhow!("{}: {e}", args.pipeline.display()))?;
    cfg.device
        .probe()
        .with_context(|| format!("eval.device = {}", cfg.device))?;
    let generator = cfg.generator_stage()?.to_string();
    // Checked before anything is created, so a mistyped --run leaves no folder behind.
    let upstream = upstream_of(
        args,
        &run,
        &[&format!("run:{generator}"), "run:embed", "run:ingest"],
    )?;
    let stage = StageRunner::create(&run, Stage::Eval, args)?;
    // Files read from outside the run are identified by their content.
    let mut inputs = Vec::new();
    for (key, path) in [
        ("weights", &cfg.weights),
        ("fid_reference", &cfg.fid_reference),
    ] {
        if let Some(p) = path {
            let resolved = run.resolve(p);
            if !resolved.is_file() {
                anyhow::bail!("eval.{key} = {p:?}: {} is not a file", resolved.display());
            }
            inputs.push((key, chatpainter_artifacts::sha256_file(&resolved)?));
        }
    }
    let key = StageKey {
        config_digest: sha256_json(&cfg),
        inputs_digest: if inputs.is_empty() {
            String::new()
        } else {
            sha256_json(&inputs)
        },
        upstream,
    };
    let bar = ui::Bar::new();
    stage.run_or_show(
        &key,
        &toml::to_string(&cfg)?,
        |dir| -> Result<StageOutput> {
            let out = chatpainter_eval::stage::run_eval(&cfg, &run, dir, &bar)?;
            print!("{}", out.metrics.summary());
            if out.left_out > 0 {
                println!(
                    "eval: {} image(s) of split `{}` left out (no dialogue for this variant)",
                    out.left_out, cfg.split
                );
            }
            let outputs = out
                .files
                .iter()
                .map(|f| OutputFile::describe(dir, f, None))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(StageOutput {
                outputs,
                summary: serde_json::to_value(&out.metrics)?,
                seed: Some(cfg.seed),
            })
        },
        |dir| {
            let m = MetricsFile::read(&dir.join(METRICS_FILE))?;
            print!("{}", m.summary());
            Ok(())
        },
    )?;
    // The manifest is the stage's last write; make sure it is there.
    if !args.plan {
        Manifest::load(stage.dir())?;
    }
    Ok(())
}

/// `chatpainter eval-folder`.
#[derive(Debug, Args)]
pub struct EvalFolderArgs {
    /// Folder of .png / .jpg images (not recursive).
    #[arg(long)]
    pub images: PathBuf,
    /// Inception weights: torchvision / pytorch-fid .pth, or safetensors with the same names.
    /// Without it both metrics are reported unavailable.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// torchvision, pytorch-fid or torch-fidelity.
    #[arg(long, default_value = "torchvision")]
    pub backbone: BackboneChoice,
    /// Inception Score splits.
    #[arg(long, default_value_t = 10)]
    pub splits: usize,
    /// Score random subsets of this many images per split (the paper: 30000) instead of chunks.
    #[arg(long)]
    pub subset_size: Option<usize>,
    /// Seed of the IS shuffle.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// FID reference statistics (.npz with mu, sigma); without it FID is unavailable.
    #[arg(long)]
    pub fid_reference: Option<PathBuf>,
    /// Images per Inception batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Where Inception runs (cpu, or a LibTorch device in a tch build).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Write metrics.json here (default: print it on stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn eval_folder(args: &EvalFolderArgs) -> Result<()> {
    ui::init_logging(None)?;
    args.device
        .probe()
        .with_context(|| format!("--device {}", args.device))?;
    let settings = ScoreSettings {
        backbone: args.backbone,
        weights: args.weights.clone(),
        splits: args.splits,
        seed: args.seed,
        subset_size: args.subset_size,
    };
    let (_, device) = args.device.devices();
    let bar = ui::Bar::new();
    let metrics = chatpainter_eval::folder::score_folder(
        &args.images,
        &settings,
        args.fid_reference.as_deref(),
        args.batch_size,
        &device,
        &bar,
    )?;
    match &args.out {
        Some(out) => {
            metrics.write(out)?;
            print!("{}", metrics.summary());
            println!("eval-folder: wrote {}", out.display());
        }
        None => println!("{}", serde_json::to_string_pretty(&metrics)?),
    }
    Ok(())
}

/// Batch of the Inception benchmark.
pub const BENCH_BATCH: usize = 8;

/// `chatpainter bench eval`: images/s through Inception (random weights) on `device`, one row
/// per network (torch-fidelity is the pytorch-fid network with another resize: not timed apart).
pub fn bench(device: DeviceChoice) -> Result<Vec<BenchRow>> {
    device
        .probe()
        .with_context(|| format!("bench eval on {device}"))?;
    let (_, burn_device) = device.devices();
    let device_name = if device.is_libtorch() {
        format!("{device} (libtorch)")
    } else {
        format!("{device} (flex)")
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut rows = Vec::new();
    for choice in [BackboneChoice::Torchvision, BackboneChoice::PytorchFid] {
        let ips = chatpainter_eval::bench::inception_images_per_second(
            choice,
            &burn_device,
            BENCH_BATCH,
            2,
        )?;
        rows.push(BenchRow::new(
            format!("eval inception {}", choice.name()),
            ips,
            "images/s",
            format!(
                "{device_name}, batch {BENCH_BATCH}, 64x64 input resized to 299, random weights, {threads} threads"
            ),
        ));
    }
    Ok(rows)
}

/// `chatpainter score-scenes`.
#[derive(Debug, Args)]
pub struct ScoreScenesArgs {
    /// Folder of `<image_id>.png` (square, 64 or 256 px training crops or whole scenes); other
    /// file names are skipped.
    pub images: PathBuf,
    /// The synthetic dataset's `attributes.json` (e.g. `runs/<name>/synth/attributes.json`).
    #[arg(long)]
    pub attributes: PathBuf,
    /// Which split's scenes the ids refer to.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Also write the scores as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn score_scenes(args: &ScoreScenesArgs) -> Result<()> {
    use chatpainter_eval::scene_score::{read_scene, score};
    use chatpainter_formats::scenes::read_attributes;
    let truth: std::collections::BTreeMap<i64, _> = read_attributes(&args.attributes)?
        .into_iter()
        .filter(|s| s.split == args.split)
        .map(|s| (s.image_id, s))
        .collect();
    let mut readings = Vec::new();
    let entries =
        std::fs::read_dir(&args.images).with_context(|| args.images.display().to_string())?;
    for entry in entries {
        let path = entry
            .with_context(|| args.images.display().to_string())?
            .path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".png"))
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        let scene = truth.get(&id).with_context(|| {
            format!(
                "{}: image {id} has no `{}` scene in {}",
                path.display(),
                args.split,
                args.attributes.display()
            )
        })?;
        let img = image::open(&path)
            .with_context(|| path.display().to_string())?
            .to_rgb8();
        readings.push((read_scene(&img), scene));
    }
    if readings.is_empty() {
        anyhow::bail!("{}: no <image_id>.png files", args.images.display());
    }
    let scores = score(readings.iter().map(|(r, s)| (r, *s)));
    print!(
        "{} images scored by {}:\n{}",
        scores.images,
        scores.scorer,
        chatpainter_formats::scenes::scene_table(&[("accuracy", &scores)])
    );
    if let Some(out) = &args.json {
        let json = serde_json::to_vec_pretty(&scores)?;
        chatpainter_artifacts::write_atomic(out, &json)?;
    }
    Ok(())
}
