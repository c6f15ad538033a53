//! The template every pipeline-stage command follows: the pipeline file and the stage's table,
//! `<run>/<stage>/` with this process's log going to its `log.txt`, the work run under the
//! artifact contract (skipped when current, `--force` redoes it, one process at a time, the
//! manifest written last) and the one-line outcome that `cargo xtask` reads from stdout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chatpainter_artifacts::stage::PENDING_UPSTREAM;
use chatpainter_artifacts::{
    ArtifactError, Decision, Manifest, Outcome, RunDir, Stage, StageKey, StageOutput, decide,
    run_decided,
};
use serde::Serialize;

use crate::pipeline::Pipeline;
use crate::{StageArgs, ui};

/// The pipeline file (with the `--set` overrides) and the run directory of a stage command.
pub(crate) fn load(args: &StageArgs) -> Result<(Pipeline, RunDir)> {
    Ok((
        Pipeline::load(&args.pipeline, &args.overrides)?,
        RunDir::new(&args.run),
    ))
}

/// The stage's table of the pipeline, which must be there.
pub(crate) fn table<T: Clone>(args: &StageArgs, table: &Option<T>, stage: Stage) -> Result<T> {
    table
        .clone()
        .with_context(|| format!("{}: no [{stage}] table", args.pipeline.display()))
}

/// Upstream stages of a stage whose inputs live in other stages of the run (`run:<stage>/…`),
/// each with the content digest of its outputs. For a plan (`--plan`), an upstream that has not
/// finished is recorded as pending (the stage will run once it has) instead of an error.
pub(crate) fn upstream_of(
    args: &StageArgs,
    run: &RunDir,
    paths: &[&str],
) -> Result<BTreeMap<String, String>> {
    let mut upstream = BTreeMap::new();
    for p in paths {
        if let Some(rel) = p.strip_prefix("run:") {
            // The first component names the upstream stage's folder; taken as written, so a
            // folder that is not a stage's fails below for want of a manifest.
            let stage = rel.split('/').next().unwrap_or(rel);
            let dir = run.root().join(stage);
            let digest = if args.plan && !Manifest::path_in(&dir).is_file() {
                PENDING_UPSTREAM.to_string()
            } else {
                Manifest::outputs_digest_of(&dir).with_context(|| {
                    format!(
                        "stage `{stage}` has not finished in {}: run it first",
                        run.root().display()
                    )
                })?
            };
            upstream.insert(stage.to_string(), digest);
        }
    }
    Ok(upstream)
}

/// What a stage command would do, as `plan: {json}` on stdout: the line `cargo xtask` reads
/// for its plan (`run --dry-run`, `status`), and the decision a real run acts on.
#[derive(Debug, Serialize)]
pub(crate) struct Plan<'a> {
    pub stage: Stage,
    /// Whether it runs (else: current, skipped).
    pub runs: bool,
    /// Why it runs, in words.
    pub why: String,
    /// For training stages: what happens to the checkpoints there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<&'a str>,
}

/// One stage's directory, opened for a run of the stage.
pub(crate) struct StageRunner<'a> {
    /// The stage its manifest names.
    stage: Stage,
    /// The name its outcome line starts with (`ingest-merge` runs the `ingest` stage).
    label: &'a str,
    dir: PathBuf,
    force: bool,
    /// Only print what would be done (`--plan`).
    plan: bool,
}

impl<'a> StageRunner<'a> {
    /// Creates `<run>/<stage>/` and logs into its `log.txt` (and stderr); for a plan, creates
    /// nothing and logs to stderr only.
    pub fn create(run: &RunDir, stage: Stage, args: &StageArgs) -> Result<Self> {
        let dir = if args.plan {
            run.stage(stage)
        } else {
            run.create_stage(stage)?
        };
        Self::open(dir, stage, args)
    }

    /// As [`StageRunner::create`] for a stage directory elsewhere (an ingest shard's).
    pub fn open(dir: PathBuf, stage: Stage, args: &StageArgs) -> Result<Self> {
        ui::init_logging((!args.plan).then(|| dir.join("log.txt")).as_deref())?;
        Ok(Self {
            stage,
            label: stage.name(),
            dir,
            force: args.force,
            plan: args.plan,
        })
    }

    /// Whether this is a plan only (`--plan`): decide and print, act on nothing.
    pub fn plan_only(&self) -> bool {
        self.plan
    }

    /// The decision a run of this stage makes for `key` ([`decide`]).
    pub fn decide(&self, key: &StageKey, config_toml: &str) -> Result<Decision> {
        Ok(decide(&self.dir, key, self.force, config_toml)?)
    }

    /// Prints the plan line for `decision`.
    pub fn print_plan(&self, decision: &Decision, checkpoints: Option<&str>) -> Result<()> {
        let (runs, why) = match decision {
            Decision::Skip => (false, "up to date".to_string()),
            Decision::Run { why } => (true, why.clone()),
        };
        let plan = Plan {
            stage: self.stage,
            runs,
            why,
            checkpoints,
        };
        println!("plan: {}", serde_json::to_string(&plan)?);
        Ok(())
    }

    /// The outcome line names the command `label` instead of the stage.
    pub fn labelled(self, label: &'a str) -> Self {
        Self { label, ..self }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `body` under the artifact contract unless the stage is current for `key` (and not
    /// forced), with `config_toml` as the stage's resolved `config.toml`, then prints the outcome.
    pub fn run<E>(
        &self,
        key: &StageKey,
        config_toml: &str,
        body: impl FnOnce(&Path) -> Result<StageOutput, E>,
    ) -> Result<Outcome>
    where
        E: From<ArtifactError> + Into<anyhow::Error>,
    {
        self.run_or_show(key, config_toml, body, |_| Ok(()))
    }

    /// As [`StageRunner::run`]; when the stage was current, `show` prints what the skipped
    /// run would have printed (before the outcome line).
    pub fn run_or_show<E>(
        &self,
        key: &StageKey,
        config_toml: &str,
        body: impl FnOnce(&Path) -> Result<StageOutput, E>,
        show: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Outcome>
    where
        E: From<ArtifactError> + Into<anyhow::Error>,
    {
        let decision = self.decide(key, config_toml)?;
        if self.plan {
            self.print_plan(&decision, None)?;
            return Ok(Outcome::Skipped);
        }
        self.run_decided(decision, key, config_toml, body, show)
    }

    /// As [`StageRunner::run_or_show`] for a decision already made ([`StageRunner::decide`]).
    pub fn run_decided<E>(
        &self,
        decision: Decision,
        key: &StageKey,
        config_toml: &str,
        body: impl FnOnce(&Path) -> Result<StageOutput, E>,
        show: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Outcome>
    where
        E: From<ArtifactError> + Into<anyhow::Error>,
    {
        let outcome = run_decided(&self.dir, self.stage, key, decision, config_toml, body)
            .map_err(Into::<anyhow::Error>::into)?;
        if matches!(outcome, Outcome::Skipped) {
            show(&self.dir)?;
        }
        self.print_outcome(&outcome);
        Ok(outcome)
    }

    /// `<stage>: up to date …` / `<stage>: done (<why>); …`: the line `cargo xtask` reads.
    fn print_outcome(&self, outcome: &Outcome) {
        let (stage, dir) = (self.label, self.dir.display());
        match outcome {
            Outcome::Skipped => {
                println!("{stage}: up to date ({dir}), skipped; --force redoes it")
            }
            Outcome::Ran { why, manifest } => println!(
                "{stage}: done ({why}); {} output file(s) in {dir}",
                manifest.outputs.len()
            ),
        }
    }
}
