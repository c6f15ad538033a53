//! `chatpainter train stage1` / `train stage2`: one stage command for both (the train crate
//! shares the loop). Under an MPI launcher every rank runs it; rank 0 owns the stage directory
//! and the others follow its decisions. A rank that fails ends the whole job (no rank waits
//! forever).

use anyhow::{Context, Result, bail};
use chatpainter_artifacts::digest::sha256_json;
use chatpainter_artifacts::{Freshness, Manifest, RunDir, Stage, StageKey, StageOutput};
use chatpainter_train::{TrainConfig, TrainSummary, World};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::stage::{StageRunner, load, table, upstream_of};
use crate::{StageArgs, ui};

/// Trains `stage` (Stage-I or Stage-II) of the run.
pub fn train(args: &StageArgs, stage: Stage) -> Result<()> {
    let world = World::from_launcher()?;
    let outcome = train_as(args, stage, &world);
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
    stage: Stage,
    variant: chatpainter_model::Variant,
) -> Result<chatpainter_train::ParquetSource> {
    use chatpainter_model::Geometry;
    let geometry = if stage == Stage::Stage1 {
        Geometry::STAGE1
    } else {
        Geometry::STAGE2
    };
    Ok(chatpainter_train::ParquetSource::open(
        &run.stage(Stage::Ingest),
        &run.stage(Stage::Embed),
        "train",
        geometry,
        variant,
    )?)
}

/// Trains `stage` of `run` (this rank's part of it).
fn train_on(
    run: &RunDir,
    cfg: &TrainConfig,
    stage: Stage,
    stage1_dir: &Path,
    progress: &dyn chatpainter_artifacts::Progress,
    stop: &AtomicBool,
    world: &World,
) -> Result<TrainSummary> {
    let data = train_data(run, stage, cfg.variant)?;
    let dir = &run.stage(stage);
    Ok(if stage == Stage::Stage1 {
        chatpainter_train::train_stage1(cfg, &data, dir, progress, stop, world)?
    } else {
        chatpainter_train::train_stage2(cfg, &data, stage1_dir, dir, progress, stop, world)?
    })
}

fn train_as(args: &StageArgs, stage: Stage, world: &World) -> Result<()> {
    let (pipeline, run) = load(args)?;
    let cfg = table(
        args,
        if stage == Stage::Stage1 {
            &pipeline.stage1
        } else {
            &pipeline.stage2
        },
        stage,
    )?;
    let stage1_path = cfg.stage1.clone().unwrap_or_else(|| "run:stage1".into());
    if stage == Stage::Stage1 && cfg.stage1.is_some() {
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
    let runner = StageRunner::create(&run, stage, args.force)?;
    let key = key(&run, &cfg, stage, &stage1_path, &stage1_dir)?;
    keep_or_drop_checkpoints(args, runner.dir(), &key, &cfg, stage, world)?;
    let bar = ui::Bar::new();
    runner.run(&key, &toml::to_string(&cfg)?, |dir| -> Result<StageOutput> {
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
    })?;
    Ok(())
}

/// The stage's key: its config and the manifests of ingest, embed and (Stage-II) the Stage-I
/// run it builds on, inside this run directory or not.
fn key(
    run: &RunDir,
    cfg: &TrainConfig,
    stage: Stage,
    stage1_path: &str,
    stage1_dir: &Path,
) -> Result<StageKey> {
    let mut inputs = vec!["run:ingest", "run:embed"];
    if stage == Stage::Stage2 {
        inputs.push(stage1_path);
    }
    let mut upstream = upstream_of(run, &inputs)?;
    if stage == Stage::Stage2 && !stage1_path.starts_with("run:") {
        // A Stage-I run outside this run directory: its manifest still pins it.
        let digest = Manifest::digest_on_disk(stage1_dir).with_context(|| {
            format!(
                "stage2.stage1 = {stage1_path:?}: {} is not a finished Stage-I stage",
                stage1_dir.display()
            )
        })?;
        upstream.insert(Stage::Stage1.name().into(), digest);
    }
    Ok(StageKey {
        config_digest: sha256_json(cfg),
        inputs_digest: String::new(),
        upstream,
    })
}

/// Checkpoints are kept when the run can continue from them: interrupted (no manifest yet) or
/// changed only in run length, intervals or devices. They go with --force, new upstream
/// artifacts, or a change to anything that shapes the training. Tells the other ranks whether
/// the stage runs (the decision `run_stage` makes after this).
fn keep_or_drop_checkpoints(
    args: &StageArgs,
    dir: &Path,
    key: &StageKey,
    cfg: &TrainConfig,
    stage: Stage,
    world: &World,
) -> Result<()> {
    let fresh = chatpainter_artifacts::manifest::freshness(dir, key)?;
    let skip = matches!(fresh, Freshness::Current) && !args.force;
    world.broadcast_bytes(vec![u8::from(skip)]);
    let checkpoints = dir.join("checkpoints");
    if checkpoints.exists() && (args.force || matches!(fresh, Freshness::Stale(_))) {
        let keep = !args.force && resumable(dir, key, cfg)?;
        if keep {
            println!(
                "{stage}: configuration changed only in run length/intervals/devices: resuming from the checkpoints"
            );
        } else {
            std::fs::remove_dir_all(&checkpoints)
                .with_context(|| checkpoints.display().to_string())?;
        }
    }
    Ok(())
}

/// Whether a stale training stage's checkpoints fit the new request: same upstream artifacts and
/// the newest checkpoint's configuration equal to `cfg` up to [`TrainConfig::resume_key`].
fn resumable(dir: &Path, key: &StageKey, cfg: &TrainConfig) -> Result<bool> {
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
