//! The one planner: for a pipeline file, its overrides and a run directory, what running would
//! do to every stage, decided by the stage commands themselves (`chatpainter <stage> --plan`,
//! the same decision a real run acts on) and printed before anything is touched. `run` prints
//! it before acting, `run --dry-run` prints it and stops, `status` prints it: they cannot
//! disagree because they are this one function.
//!
//! Asking every stage of the file also checks every stage's table (with the overrides), paths,
//! weights files and widths before the first stage starts: a typo fails here, not after the
//! stages before it have run (and never after something was moved or deleted).

use crate::dag::{PipelineFile, subcommand};
use crate::runner::{Binary, XTASK_DIR};
use anyhow::{Context, Result, bail};
use chatpainter_artifacts::{Stage, write_atomic};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What one stage command said it would do (its `plan: {json}` line).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StageDecision {
    pub stage: Stage,
    pub runs: bool,
    pub why: String,
    #[serde(default)]
    pub checkpoints: Option<String>,
}

/// What `run` will do to one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Outside `--from/--to`: left as it is.
    NotSelected,
    /// Current: skipped.
    Skip,
    /// Runs, for the reason given; for training, what happens to the checkpoints there.
    Run {
        why: String,
        checkpoints: Option<String>,
    },
    /// Current now; runs only if the outputs of `upstream`, which runs first, come out different
    /// (stages are compared by content, so an identical rebuild upstream keeps this one).
    RunsIfChanged { upstream: Stage },
}

#[derive(Debug, Clone)]
pub struct StagePlan {
    pub stage: Stage,
    pub action: Action,
}

/// The plan of a whole pipeline on a run directory.
#[derive(Debug, Clone)]
pub struct Plan {
    pub run: PathBuf,
    pub stages: Vec<StagePlan>,
    /// How the run directory was made, when it differs from this request (in words).
    pub invocation_note: Option<String>,
}

/// How a run directory was made: recorded by `run` in `<run>/.xtask/invocation.json`, so that
/// `status RUN` needs no flags and a different pipeline or override set is reported as such.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invocation {
    pub pipeline: PathBuf,
    /// The `--set` overrides, then the `device` overrides `--devices` made.
    pub overrides: Vec<String>,
}

const INVOCATION_FILE: &str = "invocation.json";

impl Invocation {
    pub fn path(run: &Path) -> PathBuf {
        run.join(XTASK_DIR).join(INVOCATION_FILE)
    }

    /// The recorded invocation of a run directory, if any.
    pub fn read(run: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(Self::path(run)).ok()?).ok()
    }

    pub fn write(&self, run: &Path) -> Result<()> {
        let path = Self::path(run);
        std::fs::create_dir_all(path.parent().context("invocation path has a parent")?)?;
        write_atomic(&path, &serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    /// How `self` (asked now) differs from `recorded`, in words.
    pub fn difference(&self, recorded: &Self) -> Option<String> {
        let same_file = match (
            self.pipeline.canonicalize(),
            recorded.pipeline.canonicalize(),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => self.pipeline == recorded.pipeline,
        };
        if !same_file {
            return Some(format!(
                "this run was made with the pipeline {}, not {}",
                recorded.pipeline.display(),
                self.pipeline.display()
            ));
        }
        (self.overrides != recorded.overrides).then(|| {
            let shown = |o: &[String]| {
                if o.is_empty() {
                    "none".to_string()
                } else {
                    o.iter()
                        .map(|s| format!("--set {s}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                }
            };
            format!(
                "this run was made with the overrides {}; this request has {}",
                shown(&recorded.overrides),
                shown(&self.overrides)
            )
        })
    }
}

/// Asks one stage command what it would do. Its error (a bad table, a missing weights file, an
/// unknown preset) is the stage's, named as the CLI names it.
pub fn ask_stage(
    bin: &Binary,
    stage: Stage,
    pipeline: &Path,
    run: &Path,
    overrides: &[String],
    force: bool,
) -> Result<StageDecision> {
    let mut cmd = bin.command();
    cmd.args(subcommand(stage))
        .arg("--plan")
        .arg("--pipeline")
        .arg(pipeline)
        .arg("--run")
        .arg(run);
    if force {
        cmd.arg("--force");
    }
    for o in overrides {
        cmd.arg("--set").arg(o);
    }
    let out = cmd
        .output()
        .with_context(|| format!("starting {}", bin.path.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let error = stderr
            .lines()
            .skip_while(|l| !l.starts_with("error"))
            .collect::<Vec<_>>()
            .join("\n");
        let error = if error.is_empty() {
            stderr.trim().to_string()
        } else {
            error.trim_start_matches("error: ").to_string()
        };
        bail!("{error}");
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("plan: "))
        .with_context(|| format!("stage `{stage}` printed no plan line: {stdout}"))?;
    let decision: StageDecision =
        serde_json::from_str(line).with_context(|| format!("stage `{stage}`: plan line {line}"))?;
    Ok(decision)
}

/// The plan for `selected` stages of `file` on `run`; every stage of the file is asked (and so
/// checked), the selected ones are the ones `run` would act on.
pub fn plan(
    bin: &Binary,
    file: &PipelineFile,
    run: &Path,
    overrides: &[String],
    selected: &[Stage],
    forced: &[Stage],
) -> Result<Plan> {
    let mut stages = Vec::new();
    let mut errors = Vec::new();
    // The nearest selected stage upstream that will run, for the stages after it.
    let mut running_before: Option<Stage> = None;
    for &stage in &file.stages {
        let decision = match ask_stage(
            bin,
            stage,
            &file.path,
            run,
            overrides,
            forced.contains(&stage),
        ) {
            Ok(d) => d,
            Err(e) => {
                errors.push((stage, format!("{e:#}")));
                continue;
            }
        };
        let action = if !selected.contains(&stage) {
            Action::NotSelected
        } else if decision.runs {
            Action::Run {
                why: decision.why,
                checkpoints: decision.checkpoints,
            }
        } else if let Some(upstream) = running_before {
            Action::RunsIfChanged { upstream }
        } else {
            Action::Skip
        };
        if matches!(action, Action::Run { .. }) {
            running_before = Some(stage);
        }
        stages.push(StagePlan { stage, action });
    }
    if !errors.is_empty() {
        // A file-wide error (an unknown key, a bad --set) is every stage's: say it once.
        let text: Vec<&str> = errors.iter().map(|(_, e)| e.as_str()).collect();
        let shown = if errors.len() > 1 && text.iter().all(|e| *e == text[0]) {
            text[0].to_string()
        } else {
            errors
                .iter()
                .map(|(stage, e)| format!("stage `{stage}`: {e}"))
                .collect::<Vec<_>>()
                .join("\n  ")
        };
        bail!(
            "{} (checked before running anything; nothing was changed in {}):\n  {shown}",
            file.path.display(),
            run.display(),
        );
    }
    let asked = Invocation {
        pipeline: file.path.clone(),
        overrides: overrides.to_vec(),
    };
    let invocation_note = Invocation::read(run).and_then(|r| asked.difference(&r));
    Ok(Plan {
        run: run.to_path_buf(),
        stages,
        invocation_note,
    })
}

impl Plan {
    /// The stages `run` will start (those that run or may run), in order.
    pub fn to_start(&self) -> Vec<Stage> {
        self.stages
            .iter()
            .filter(|s| !matches!(s.action, Action::NotSelected))
            .map(|s| s.stage)
            .collect()
    }

    /// One line per stage, for people.
    pub fn render(&self) -> String {
        let mut out = format!("plan for {}:\n", self.run.display());
        if let Some(note) = &self.invocation_note {
            out.push_str(&format!("  note: {note}\n"));
        }
        for s in &self.stages {
            let line = match &s.action {
                Action::NotSelected => "—      not selected (outside --from/--to)".to_string(),
                Action::Skip => "skip   up to date".to_string(),
                Action::Run { why, checkpoints } => match checkpoints {
                    Some(c) => format!("run    {why}; the training there {c}"),
                    None => format!("run    {why}"),
                },
                Action::RunsIfChanged { upstream } => format!(
                    "maybe  up to date now; runs if the outputs of `{upstream}` come out different"
                ),
            };
            out.push_str(&format!("  {:<8} {line}\n", s.stage));
        }
        out
    }
}
