//! `cargo xtask status <run-dir> [--pipeline P] [--set k=v]…`: what each stage of a run
//! directory is, read from the files alone (manifests, locks, checkpoints, logs), without
//! running anything.
//!
//! Staleness seen from outside the CLI: a finished stage is stale when an upstream manifest it
//! recorded has changed or vanished, when a listed output is missing or changed size, or — when
//! the pipeline file is given — when a key of the stage's table (after `--set`) differs from the
//! stage's resolved `config.toml`. The CLI's own check is stronger (it also hashes raw inputs and
//! encoder weights); `cargo xtask run` is what acts on it.

use crate::dag::PipelineFile;
use crate::runner::XTASK_DIR;
use crate::util::{human_bytes, utc_time};
use anyhow::{Result, bail};
use chatpainter_artifacts::stage::{lock_pid, running_pid};
use chatpainter_artifacts::{ArtifactError, Manifest, Stage};
use std::collections::BTreeMap;
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

/// Reads the state of every stage of the run (and of the pipeline, when given).
pub fn collect(
    run: &Path,
    pipeline: Option<&Path>,
    overrides: &[String],
) -> Result<Vec<StageStatus>> {
    if !run.is_dir() {
        bail!("{}: no such run directory", run.display());
    }
    let file = pipeline.map(PipelineFile::load).transpose()?;
    if let Some(f) = &file {
        f.check_overrides(overrides)?;
    }
    let mut out = Vec::new();
    for stage in Stage::ALL {
        let dir = run.join(stage);
        let in_pipeline = file.as_ref().map(|f| f.has(stage));
        let recorded = run.join(XTASK_DIR).join(format!("{stage}.log")).is_file();
        if !dir.exists() && !recorded && in_pipeline != Some(true) {
            continue;
        }
        let mut state = stage_state(run, stage)?;
        if let (State::Done { finished_unix, .. }, Some(f)) = (&state, &file)
            && f.has(stage)
            && let Some(reason) = config_difference(f, stage, &dir, overrides)
        {
            state = State::Stale {
                finished_unix: *finished_unix,
                reason,
            };
        }
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
        if let Some(reason) =
            upstream_change(run, &m.key.upstream).or_else(|| m.output_change(&dir))
        {
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

/// An upstream stage whose manifest no longer hashes to what this stage recorded.
fn upstream_change(run: &Path, upstream: &BTreeMap<String, String>) -> Option<String> {
    for (up, recorded) in upstream {
        // Shard entries of a merged ingest live below the stage; only stage names are checked.
        if up.parse::<Stage>().is_err() {
            continue;
        }
        match Manifest::digest_on_disk(&run.join(up)) {
            Ok(now) if &now == recorded => {}
            Ok(_) => return Some(format!("upstream `{up}` changed since this stage ran")),
            Err(_) => return Some(format!("upstream `{up}` has no manifest now")),
        }
    }
    None
}

/// The first key of the pipeline's table (after `--set`) whose value differs from the stage's
/// resolved `config.toml`. Keys the resolved config lacks are not compared (e.g. a value the
/// stage derives), nor is `synth.seed` (the stage mixes in `run.seed`).
fn config_difference(
    file: &PipelineFile,
    stage: Stage,
    dir: &Path,
    overrides: &[String],
) -> Option<String> {
    let mut table = file.table.clone();
    for o in overrides {
        apply_override(&mut table, o);
    }
    let wanted = table.get(stage.name())?.as_table()?;
    let resolved: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.join("config.toml")).ok()?).ok()?;
    let mut path = vec![stage.name().to_string()];
    differs(wanted, &resolved, &mut path, Some(stage))
}

fn differs(
    wanted: &toml::Table,
    resolved: &toml::Table,
    path: &mut Vec<String>,
    stage: Option<Stage>,
) -> Option<String> {
    for (k, w) in wanted {
        if stage == Some(Stage::Synth) && path.len() == 1 && k == "seed" {
            continue;
        }
        let Some(r) = resolved.get(k) else {
            continue;
        };
        path.push(k.clone());
        let found = match (w, r) {
            (toml::Value::Table(wt), toml::Value::Table(rt)) => differs(wt, rt, path, stage),
            _ if same_value(w, r) => None,
            _ => Some(format!(
                "the pipeline has {} = {w}, the finished stage used {r}",
                path.join(".")
            )),
        };
        path.pop();
        if found.is_some() {
            return found;
        }
    }
    None
}

fn same_value(a: &toml::Value, b: &toml::Value) -> bool {
    use toml::Value as V;
    match (a, b) {
        (V::Integer(x), V::Float(y)) | (V::Float(y), V::Integer(x)) => (*x as f64) == *y,
        (V::Array(x), V::Array(y)) => {
            x.len() == y.len()
                && x.iter().zip(y).all(|(a, b)| match (a, b) {
                    (V::Table(at), V::Table(bt)) => {
                        differs(at, bt, &mut Vec::new(), None).is_none()
                    }
                    _ => same_value(a, b),
                })
        }
        _ => a == b,
    }
}

/// `a.b=value` into a table, as the CLI does (TOML value, else a bare string).
fn apply_override(table: &mut toml::Table, assignment: &str) {
    let Some((key, raw)) = assignment.split_once('=') else {
        return;
    };
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    let Some((last, path)) = parts.split_last() else {
        return;
    };
    let mut current = table;
    for p in path {
        let entry = current
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        let toml::Value::Table(t) = entry else {
            return;
        };
        current = t;
    }
    current.insert(last.to_string(), value);
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

/// `cargo xtask status`.
pub fn print_status(run: &Path, pipeline: Option<&Path>, overrides: &[String]) -> Result<()> {
    use std::fmt::Write as _;
    use std::io::Write as _;
    let rows = collect(run, pipeline, overrides)?;
    let mut out = format!("{}\n", run.display());
    if rows.is_empty() {
        out.push_str("  (no stage directories)\n");
    }
    for r in rows {
        let extra = if r.not_in_pipeline {
            " (not in the pipeline)"
        } else {
            ""
        };
        let _ = writeln!(out, "  {:<8} {}{extra}", r.stage, describe(&r.state));
        if let Some(m) = r.last_metrics {
            let _ = writeln!(out, "  {:<8} last metrics: {m}", "");
        }
    }
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(out.as_bytes());
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
    use chatpainter_artifacts::{OutputFile, StageKey};

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
                Manifest::digest_on_disk(&r.join("ingest"))?,
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
        let mut ingest = Manifest::load(&r.join("ingest"))?;
        ingest.seed = Some(1);
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
    fn config_comparison() {
        let wanted: toml::Table =
            toml::from_str("a = 2\nb = { c = 'x' }\nl = [{ f = 1 }]\n").unwrap_or_default();
        let same: toml::Table =
            toml::from_str("a = 2.0\nb = { c = 'x', d = 1 }\nl = [{ f = 1, g = 2 }]\nz = 1\n")
                .unwrap_or_default();
        assert_eq!(differs(&wanted, &same, &mut vec!["s".into()], None), None);
        let other: toml::Table = toml::from_str("a = 2\nb = { c = 'y' }\n").unwrap_or_default();
        let d = differs(&wanted, &other, &mut vec!["s".into()], None).unwrap_or_default();
        assert!(d.contains("s.b.c"), "{d}");
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
