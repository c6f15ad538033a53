//! `chatpainter train stage1` / `train stage2`: one stage command for both (the train crate
//! shares the loop). Under an MPI launcher every rank runs it; rank 0 owns the stage directory
//! and the others follow its decisions. A rank that fails ends the whole job (no rank waits
//! forever).

use anyhow::{Context, Result, bail};
use chatpainter_artifacts::digest::sha256_json;
use chatpainter_artifacts::{Decision, Manifest, RunDir, Stage, StageKey, StageOutput, previous};
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
    // Everything that can be checked without the data, before anything is touched.
    cfg.validate().map_err(|e| match e {
        chatpainter_train::TrainError::Config(m) => config_error(args, stage, &m),
        other => other.into(),
    })?;
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
    let runner = StageRunner::create(&run, stage, args)?;
    let key = key(args, &run, &cfg, stage, &stage1_path, &stage1_dir)?;
    let config_toml = toml::to_string(&cfg)?;
    let decision = runner.decide(&key, &config_toml)?;
    let action = checkpoint_action(args, runner.dir(), &key, &cfg, stage, &decision)?;
    if runner.plan_only() {
        return runner.print_plan(&decision, action.describe().as_deref());
    }
    // Tells the other ranks whether the stage runs: the decision `run_stage` acts on below.
    world.broadcast_bytes(vec![u8::from(decision == Decision::Skip)]);
    match &action {
        CheckpointAction::Resume { step } => {
            println!("{stage}: resuming the earlier training from its checkpoint at step {step}")
        }
        CheckpointAction::MoveAside { reason, .. } => {
            if let Some(to) = previous::move_aside(runner.dir(), reason)? {
                println!(
                    "{stage}: moved the earlier training aside to {} ({reason}); `cargo xtask previous` lists, restores or prunes it",
                    to.display()
                );
            }
        }
        CheckpointAction::None => {}
    }
    let bar = ui::Bar::new();
    let train = |dir: &Path| -> Result<StageOutput> {
        let summary = train_on(&run, &cfg, stage, &stage1_dir, &bar, &stop, world)?;
        if summary.stopped {
            return Err(Interrupted {
                what: format!(
                    "{stage}: interrupted; checkpoint at step {} written, rerun the same command to resume",
                    summary.steps
                ),
            }
            .into());
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
    };
    runner.run_decided(decision, &key, &config_toml, train, |_| Ok(()))?;
    Ok(())
}

/// A config error named by the key as the user wrote it: `stage1.batch_size: …`, and the
/// `--set` that gave the value, if one did.
fn config_error(args: &StageArgs, stage: Stage, message: &str) -> anyhow::Error {
    let key = message.split(':').next().unwrap_or_default().trim();
    let full = format!("{stage}.{key}");
    let given = args
        .overrides
        .iter()
        .find(|o| o.split('=').next().is_some_and(|k| k.trim() == full));
    match given {
        Some(o) => anyhow::anyhow!("--set {o}: {stage}.{message}"),
        None => anyhow::anyhow!("{}: {stage}.{message}", args.pipeline.display()),
    }
}

/// A stage stopped by Ctrl-C or SIGTERM after writing its checkpoint: exit code 130, one line.
#[derive(Debug)]
pub struct Interrupted {
    pub what: String,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for Interrupted {}

/// The stage's key: its config and the manifests of ingest, embed and (Stage-II) the Stage-I
/// run it builds on, inside this run directory or not.
fn key(
    args: &StageArgs,
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
    let mut upstream = upstream_of(args, run, &inputs)?;
    if stage == Stage::Stage2 && !stage1_path.starts_with("run:") {
        // A Stage-I run outside this run directory: its manifest still pins it.
        let digest = Manifest::outputs_digest_of(stage1_dir).with_context(|| {
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

/// What a run does with the training already in the stage folder.
enum CheckpointAction {
    /// Nothing there, or the stage is current.
    None,
    /// Continue from the newest intact checkpoint at `step`.
    Resume { step: u64 },
    /// The training there cannot be continued (another config, other data, `--force`): it is
    /// moved to `.previous/`, never deleted. `at`: its newest step, in words.
    MoveAside { at: String, reason: String },
}

impl CheckpointAction {
    fn describe(&self) -> Option<String> {
        match self {
            Self::None => None,
            Self::Resume { step } => Some(format!("resumes from step {step}")),
            Self::MoveAside { at, .. } => Some(format!("({at}) is moved aside to .previous/")),
        }
    }
}

/// Checkpoints are continued from when the run can: interrupted (no manifest yet) or changed
/// only in run length, intervals or devices, with the same upstream outputs. Otherwise (another
/// config, new upstream outputs, `--force`) the earlier training is moved aside. Lowering
/// `max_steps` below the newest checkpoint is refused: the model would not be what the config
/// says.
fn checkpoint_action(
    args: &StageArgs,
    dir: &Path,
    key: &StageKey,
    cfg: &TrainConfig,
    stage: Stage,
    decision: &Decision,
) -> Result<CheckpointAction> {
    let Decision::Run { why } = decision else {
        return Ok(CheckpointAction::None);
    };
    let has_checkpoints = dir.join("checkpoints").exists();
    if !has_checkpoints && !Manifest::path_in(dir).is_file() {
        return Ok(CheckpointAction::None);
    }
    let newest = newest_step(dir)?;
    if !args.force
        && let Some(step) = newest
        && resumable(dir, key, cfg)?
    {
        if let Some(max) = cfg.max_steps
            && step > max
        {
            bail!(
                "{stage}.max_steps = {max}, but the training in {} is at step {step}: raise max_steps to {step} or more to keep it (e.g. --set {stage}.max_steps={step}), or pass --force to move it aside and train from the start",
                dir.display()
            );
        }
        return Ok(CheckpointAction::Resume { step });
    }
    let at = newest.map_or_else(|| "no intact checkpoint".into(), |s| format!("step {s}"));
    Ok(CheckpointAction::MoveAside {
        reason: format!("{stage} at {at}; {why}"),
        at,
    })
}

/// The step of the newest intact checkpoint, if any.
fn newest_step(dir: &Path) -> Result<Option<u64>> {
    // Damaged checkpoints are skipped here and set aside by the training run.
    let (Some(latest), _) = chatpainter_train::checkpoint::newest_intact(dir)? else {
        return Ok(None);
    };
    Ok(Some(
        chatpainter_train::checkpoint::read_state(&latest)?.step,
    ))
}

/// Whether a stale training stage's checkpoints fit the new request: same upstream outputs and
/// the newest checkpoint's configuration equal to `cfg` up to [`TrainConfig::resume_key`].
fn resumable(dir: &Path, key: &StageKey, cfg: &TrainConfig) -> Result<bool> {
    let same_upstream = match Manifest::load_if_present(dir)? {
        Some(old) => old.upstream_change(dir, key).is_none(),
        None => true,
    };
    let (Some(latest), _) = chatpainter_train::checkpoint::newest_intact(dir)? else {
        return Ok(false);
    };
    let state = chatpainter_train::checkpoint::read_state(&latest)?;
    Ok(same_upstream && state.config.resume_key() == cfg.resume_key())
}
