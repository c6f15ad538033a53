//! `cargo xtask status <run-dir> [--pipeline P] [--set k=v]…`: what each stage of a run
//! directory is, read from its files (manifests, locks, checkpoints, logs), the runs moved aside
//! in each stage's `.previous/`, and the plan: what `cargo xtask run` would do now, from the one
//! planner ([`crate::plan`]) with the pipeline and overrides the run was made with (recorded in
//! `<run>/.xtask/invocation.json`) unless others are given.

use crate::dag::PipelineFile;
use crate::plan::{self, Invocation};
use crate::runner::{self, XTASK_DIR};
use crate::util::{human_bytes, utc_time};
use anyhow::{Context, Result, bail};
use chatpainter_artifacts::stage::{lock_pid, running_pid};
use chatpainter_artifacts::{ArtifactError, Manifest, Stage, StageKey, previous};
use std::path::{Path, PathBuf};

/// The state of one stage directory.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Finished and current as far as the files tell.
    Done {
        finished_unix: u64,
        outputs: usize,
        bytes: u64,
    },
    /// Finished, but something it was made from changed.
    Stale {
        finished_unix: u64,
        reason: String,
    },
    /// A live process holds the stage lock.
    Running {
        pid: u32,
        step: Option<u64>,
    },
    /// Killed or stopped during training: checkpoints but no manifest.
    Resumable {
        step: u64,
    },
    /// Started, not finished, not running.
    Failed {
        reason: String,
    },
    NotStarted,
}

#[derive(Debug, Clone)]
pub struct StageStatus {
    pub stage: Stage,
    pub state: State,
    /// The last line of `metrics.jsonl`, shortened, for training stages.
    pub last_metrics: Option<String>,
    /// The stage is in the run folder but not in the given pipeline.
    pub not_in_pipeline: bool,
}

/// Reads the state of every stage of the run (and of the pipeline's stages, when given).
pub fn collect(run: &Path, file: Option<&PipelineFile>) -> Result<Vec<StageStatus>> {
    if !run.is_dir() {
        bail!("{}: no such run directory", run.display());
    }
    let mut out = Vec::new();
    for stage in Stage::ALL {
        let dir = run.join(stage);
        let in_pipeline = file.map(|f| f.has(stage));
        let recorded = run.join(XTASK_DIR).join(format!("{stage}.log")).is_file();
        if !dir.exists() && !recorded && in_pipeline != Some(true) {
            continue;
        }
        let state = stage_state(run, stage)?;
        let last_metrics = stage
            .is_training()
            .then(|| last_metrics(&dir.join("metrics.jsonl")))
            .flatten();
        out.push(StageStatus {
            stage,
            state,
            last_metrics,
            not_in_pipeline: in_pipeline == Some(false),
        });
    }
    Ok(out)
}

/// The state from the stage directory and its upstream manifests only.
pub fn stage_state(run: &Path, stage: Stage) -> Result<State> {
    let dir = run.join(stage);
    if !dir.exists() {
        // A stage that failed before making its folder (e.g. a bad pipeline file).
        if run.join(XTASK_DIR).join(format!("{stage}.log")).is_file() {
            return Ok(State::Failed {
                reason: failure_reason(run, stage),
            });
        }
        return Ok(State::NotStarted);
    }
    if let Some(pid) = running_pid(&dir) {
        return Ok(State::Running {
            pid,
            step: latest_checkpoint(&dir),
        });
    }
    if Manifest::path_in(&dir).is_file() {
        let m = match Manifest::load(&dir) {
            Ok(m) => m,
            Err(e @ ArtifactError::Io { .. }) => return Err(e.into()),
            // Not JSON, not a manifest, or another schema version: the stage must be redone.
            Err(e) => {
                return Ok(State::Failed {
                    reason: e.to_string(),
                });
            }
        };
        let finished_unix = m.finished_unix;
        if let Some(reason) = upstream_change(run, &m).or_else(|| m.output_change(&dir)) {
            return Ok(State::Stale {
                finished_unix,
                reason,
            });
        }
        return Ok(State::Done {
            finished_unix,
            outputs: m.outputs.len(),
            bytes: m.outputs.iter().map(|o| o.bytes).sum(),
        });
    }
    if let Some(step) = latest_checkpoint(&dir) {
        return Ok(State::Resumable { step });
    }
    Ok(State::Failed {
        reason: failure_reason(run, stage),
    })
}

/// The newest complete `checkpoints/step-N` (partial ones are `.step-N….tmp`).
pub fn latest_checkpoint(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir.join("checkpoints"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("step-")?
                .parse::<u64>()
                .ok()
        })
        .max()
}

/// An upstream stage whose outputs are no longer what this stage was built from (by content).
fn upstream_change(run: &Path, m: &Manifest) -> Option<String> {
    let mut now = m.key.upstream.clone();
    for (up, digest) in &mut now {
        // Shard entries of a merged ingest live below the stage; only stage names are checked.
        if up.parse::<Stage>().is_err() {
            continue;
        }
        match Manifest::outputs_digest_of(&run.join(up)) {
            Ok(d) => *digest = d,
            Err(_) => return Some(format!("upstream `{up}` has no manifest now")),
        }
    }
    let key = StageKey {
        upstream: now,
        ..m.key.clone()
    };
    m.upstream_change(&run.join(m.stage.name()), &key)
}

/// Why an unfinished, idle stage stopped: the error xtask recorded, else the last error line of
/// the stage's log.
fn failure_reason(run: &Path, stage: Stage) -> String {
    let recorded = run.join(XTASK_DIR).join(format!("{stage}.log"));
    if let Ok(text) = std::fs::read_to_string(&recorded)
        && let Some(line) = text
            .lines()
            .rev()
            .find(|l| l.starts_with("error") || l.contains("ERROR"))
    {
        return line.trim().to_string();
    }
    let log = run.join(stage).join("log.txt");
    if let Ok(text) = std::fs::read_to_string(&log)
        && let Some(line) = text
            .lines()
            .rev()
            .find(|l| l.contains("ERROR") || l.contains("error"))
    {
        return format!("{} (from {})", line.trim(), log.display());
    }
    let dead = lock_pid(&run.join(stage))
        .map(|p| format!("; process {p} died holding the lock"))
        .unwrap_or_default();
    format!("unfinished: no manifest, no checkpoint{dead}")
}

/// The last line of `metrics.jsonl` in short form: step, epoch, losses, speed.
pub fn last_metrics(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let obj = v.as_object()?;
    let preferred = [
        "step",
        "epoch",
        "d_loss",
        "g_loss",
        "kl",
        "lr_g",
        "step_ms",
        "images_per_s",
    ];
    let keys: Vec<&str> = if preferred.iter().any(|k| obj.contains_key(*k)) {
        preferred
            .iter()
            .copied()
            .filter(|k| obj.contains_key(*k))
            .collect()
    } else {
        obj.keys().map(String::as_str).take(8).collect()
    };
    let parts: Vec<String> = keys
        .iter()
        .map(|k| {
            let val = &obj[*k];
            match val.as_f64() {
                Some(f) if val.is_f64() => format!("{k} {}", short_float(f)),
                _ => format!("{k} {val}"),
            }
        })
        .collect();
    Some(parts.join(", "))
}

fn short_float(f: f64) -> String {
    if f != 0.0 && (f.abs() < 1e-3 || f.abs() >= 1e5) {
        format!("{f:.3e}")
    } else {
        format!("{f:.4}")
    }
}

/// One line per state, for people.
pub fn describe(s: &State) -> String {
    match s {
        State::Done {
            finished_unix,
            outputs,
            bytes,
        } => format!(
            "done      {} · {outputs} output file(s), {}",
            utc_time(*finished_unix),
            human_bytes(*bytes)
        ),
        State::Stale {
            finished_unix,
            reason,
        } => format!("stale     {reason} (finished {})", utc_time(*finished_unix)),
        State::Running { pid, step } => format!(
            "running   pid {pid}{}",
            step.map(|s| format!(", last checkpoint step {s}"))
                .unwrap_or_default()
        ),
        State::Resumable { step } => {
            format!("resumable at step {step} (checkpoint; rerun to continue)")
        }
        State::Failed { reason } => format!("failed    {reason}"),
        State::NotStarted => "not started".into(),
    }
}

/// `cargo xtask status`: the stages' states, their moved-aside runs, and the plan.
pub fn print_status(run: &Path, pipeline: Option<&Path>, overrides: &[String]) -> Result<()> {
    use std::io::Write as _;
    let out = status_text(run, pipeline, overrides)?;
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(())
}

/// What `status` prints; the plan is its last part, exactly as `run --dry-run` renders it.
pub fn status_text(run: &Path, pipeline: Option<&Path>, overrides: &[String]) -> Result<String> {
    use std::fmt::Write as _;
    // The run's own pipeline and overrides unless others are given.
    let recorded = Invocation::read(run);
    let (pipeline, overrides) = match (pipeline, recorded) {
        (Some(p), _) => (Some(p.to_path_buf()), overrides.to_vec()),
        (None, Some(r)) if overrides.is_empty() => (Some(r.pipeline), r.overrides),
        (None, Some(r)) => (Some(r.pipeline), overrides.to_vec()),
        (None, None) => (None, overrides.to_vec()),
    };
    let file = pipeline.as_deref().map(PipelineFile::load).transpose()?;
    let rows = collect(run, file.as_ref())?;
    let mut out = format!("{}\n", run.display());
    if rows.is_empty() {
        out.push_str("  (no stage directories)\n");
    }
    for r in &rows {
        let extra = if r.not_in_pipeline {
            " (not in the pipeline)"
        } else {
            ""
        };
        let _ = writeln!(out, "  {:<8} {}{extra}", r.stage, describe(&r.state));
        if let Some(m) = &r.last_metrics {
            let _ = writeln!(out, "  {:<8} last metrics: {m}", "");
        }
        for p in previous::list(&run.join(r.stage))? {
            let _ = writeln!(
                out,
                "  {:<8} moved aside: {}/{} ({})",
                "",
                r.stage,
                p.name,
                moved_why(&p)
            );
        }
    }
    match &file {
        Some(file) => {
            file.check_overrides(&overrides)?;
            let bin = runner::binary_for(file, &overrides)?;
            let plan = plan::plan(&bin, file, run, &overrides, &file.stages, &[])?;
            out.push_str(&plan.render());
        }
        None => out.push_str(
            "  (no plan: this run has no recorded pipeline; pass --pipeline to plan with one)\n",
        ),
    }
    Ok(out)
}

fn moved_why(p: &previous::Previous) -> String {
    p.note.as_ref().map_or_else(
        || "no note: a move that was cut short".into(),
        |n| format!("{} · {}", utc_time(n.moved_unix), n.reason),
    )
}

/// `cargo xtask previous`: lists the moved-aside runs of every stage, or restores / prunes one
/// (`STAGE/NAME`).
pub fn previous(run: &Path, restore: Option<&str>, prune: Option<&str>) -> Result<()> {
    let parse = |arg: &str| -> Result<(Stage, String)> {
        let (stage, name) = arg.split_once('/').with_context(|| {
            format!("{arg}: expected STAGE/NAME, e.g. stage1/2026-12-07-10-00-00")
        })?;
        Ok((stage.parse::<Stage>()?, name.to_string()))
    };
    if let Some(arg) = restore {
        let (stage, name) = parse(arg)?;
        let aside = previous::restore(&run.join(stage), &name)?;
        println!("restored {stage}/{name} into {}", run.join(stage).display());
        if let Some(a) = aside {
            println!("the run it replaced was moved aside to {}", a.display());
        }
        return Ok(());
    }
    if let Some(arg) = prune {
        let (stage, name) = parse(arg)?;
        previous::prune(&run.join(stage), &name)?;
        println!("deleted {stage}/{name}");
        return Ok(());
    }
    let mut any = false;
    for stage in Stage::ALL {
        for p in previous::list(&run.join(stage))? {
            any = true;
            println!("{stage}/{}  {}", p.name, moved_why(&p));
        }
    }
    if !any {
        println!("{}: no moved-aside runs", run.display());
    }
    Ok(())
}

/// The run directory given, or with only a name, `runs/<name>`.
pub fn resolve_run(arg: &Path) -> PathBuf {
    if arg.exists() || arg.components().count() > 1 {
        arg.to_path_buf()
    } else {
        crate::util::root().join("runs").join(arg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatpainter_artifacts::OutputFile;
    use std::collections::BTreeMap;

    #[test]
    fn states_from_files() -> Result<()> {
        let run = tempfile::tempdir()?;
        let r = run.path();
        assert_eq!(stage_state(r, Stage::Embed)?, State::NotStarted);
        // A stage killed during training: checkpoints, a dead pid in the lock, no manifest.
        let s1 = r.join("stage1");
        std::fs::create_dir_all(s1.join("checkpoints/step-000000004"))?;
        std::fs::create_dir_all(s1.join("checkpoints/.step-000000008.tmp"))?;
        std::fs::write(s1.join(".lock"), "4000000000")?;
        assert_eq!(stage_state(r, Stage::Stage1)?, State::Resumable { step: 4 });
        std::fs::write(s1.join(".lock"), std::process::id().to_string())?;
        assert!(matches!(
            stage_state(r, Stage::Stage1)?,
            State::Running { step: Some(4), .. }
        ));
        // A failed stage: the error line xtask recorded.
        std::fs::create_dir_all(r.join("embed"))?;
        std::fs::create_dir_all(r.join(XTASK_DIR))?;
        std::fs::write(
            r.join(XTASK_DIR).join("embed.log"),
            "command: x\n--- stderr ---\nerror: embed: bad things\n",
        )?;
        assert_eq!(
            stage_state(r, Stage::Embed)?,
            State::Failed {
                reason: "error: embed: bad things".into()
            }
        );
        // Done, then stale when the upstream manifest changes.
        std::fs::create_dir_all(r.join("ingest"))?;
        Manifest::new(Stage::Ingest, StageKey::default(), vec![]).save(&r.join("ingest"))?;
        std::fs::write(r.join("embed/out.bin"), "abc")?;
        let key = StageKey {
            upstream: BTreeMap::from([(
                "ingest".to_string(),
                Manifest::outputs_digest_of(&r.join("ingest"))?,
            )]),
            ..StageKey::default()
        };
        let out = OutputFile::describe(&r.join("embed"), "out.bin", None)?;
        Manifest::new(Stage::Embed, key, vec![out]).save(&r.join("embed"))?;
        assert!(matches!(
            stage_state(r, Stage::Embed)?,
            State::Done {
                outputs: 1,
                bytes: 3,
                ..
            }
        ));
        // A rewritten upstream manifest with the same outputs (another seed, finish time or
        // summary) changes nothing; other outputs make the stage stale.
        let mut ingest = Manifest::load(&r.join("ingest"))?;
        ingest.seed = Some(1);
        ingest.finished_unix += 60;
        ingest.save(&r.join("ingest"))?;
        assert!(matches!(stage_state(r, Stage::Embed)?, State::Done { .. }));
        std::fs::write(r.join("ingest/records.parquet"), "rows")?;
        ingest.outputs = vec![OutputFile::describe(
            &r.join("ingest"),
            "records.parquet",
            None,
        )?];
        ingest.save(&r.join("ingest"))?;
        assert!(
            matches!(stage_state(r, Stage::Embed)?, State::Stale { reason, .. } if reason.contains("upstream `ingest`"))
        );
        // Resized output: stale, naming it.
        std::fs::write(r.join("embed/out.bin"), "abcd")?;
        let mut embed = Manifest::load(&r.join("embed"))?;
        embed.key.upstream.clear();
        embed.save(&r.join("embed"))?;
        assert!(
            matches!(stage_state(r, Stage::Embed)?, State::Stale { reason, .. } if reason.contains("out.bin has 4 bytes")),
            "{:?}",
            stage_state(r, Stage::Embed)?
        );
        // A manifest of another schema version, or not a manifest at all, is not read as done.
        embed.schema_version = 0;
        embed.save(&r.join("embed"))?;
        assert!(
            matches!(stage_state(r, Stage::Embed)?, State::Failed { reason } if reason.contains("schema version 0"))
        );
        std::fs::write(r.join("embed/manifest.json"), "{\"outputs\": []}")?;
        assert!(matches!(
            stage_state(r, Stage::Embed)?,
            State::Failed { .. }
        ));
        Ok(())
    }

    #[test]
    fn metrics_line() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("metrics.jsonl");
        std::fs::write(
            &p,
            "{\"step\":1}\n{\"step\":6,\"epoch\":0,\"d_loss\":1.2094,\"g_loss\":1.21,\"kl\":0.00014,\"d_real\":0.4}\n",
        )?;
        let m = last_metrics(&p).unwrap_or_default();
        assert!(m.starts_with("step 6, epoch 0, d_loss 1.2094"), "{m}");
        assert!(!m.contains("d_real"), "{m}");
        Ok(())
    }
}
