//! The `chatpainter` command: one subcommand per pipeline stage, each reading its table of a
//! pipeline file and writing `<run>/<stage>/` under the artifact contract (skip when current,
//! `--force` to redo, manifest written last).

pub mod pipeline;
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
    /// Re-hash every output of the run's finished stages against their manifests.
    Verify {
        #[arg(long)]
        run: PathBuf,
    },
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Synth(args) => synth(&args),
        Command::Ingest {
            stage,
            shard,
            strict,
        } => ingest_stage(&stage, shard, strict),
        Command::IngestMerge { stage, shards } => ingest_merge(&stage, shards),
        Command::Verify { run } => verify(&run),
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
    if let Some(mib) = ui::peak_rss_mib() {
        println!("ingest: peak RSS {mib:.1} MiB");
    }
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
