//! Never lose a trained run: each way the runner used to throw a trained model away, on the smoke
//! pipeline with the real CLI. A bad override changes nothing; an identical rebuild upstream
//! keeps training current; lowering `max_steps` below the checkpoints is refused; a change that
//! cannot resume moves the training aside (restorable), never deletes it; the report's sample
//! sheets are the manifest's; `status` prints the plan `run --dry-run` prints; Ctrl-C exits 130
//! with one line.
//!
//! The `chatpainter` binary is `$CHATPAINTER_BIN` if set, else built here (`common`).

use anyhow::{Context, Result, bail};
use chatpainter_artifacts::{Manifest, Stage, previous};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
mod common;

use common::{chatpainter, smoke_toml};
use xtask::runner::{Outcome, RunOptions, run_pipeline};
use xtask::util::root;

fn opts(run: &Path, to: &str, sets: &[&str]) -> Result<RunOptions> {
    Ok(RunOptions {
        pipeline: smoke_toml(),
        run: Some(run.to_path_buf()),
        to: Some(to.into()),
        overrides: sets.iter().map(|s| s.to_string()).collect(),
        bin: Some(chatpainter()?),
        quiet: true,
        ..RunOptions::default()
    })
}

/// Every file under `dir` (`.previous/` excepted) with its bytes: what a run must not lose.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            if e.file_name() == previous::PREVIOUS_DIR || e.file_name() == "log.txt" {
                continue;
            }
            if path.is_dir() {
                walk(base, &path, out);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.insert(
                    path.strip_prefix(base).unwrap_or(&path).to_path_buf(),
                    bytes,
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// A run with Stage-I trained (smoke sizes, 6 steps, checkpoints at 3 and 6).
fn trained_run() -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let run = dir.path().join("run");
    run_pipeline(&opts(&run, "stage1", &[])?)?;
    let m = Manifest::load(&run.join("stage1"))?;
    assert_eq!(m.summary["steps"].as_u64(), Some(6), "{}", m.summary);
    Ok((dir, run))
}

#[test]
fn a_bad_override_or_setting_changes_nothing() -> Result<()> {
    let (_dir, run) = trained_run()?;
    let before = snapshot(&run);
    for (set, says) in [
        (
            "stage1.network.preset=huge",
            "--set stage1.network.preset=huge",
        ),
        ("stage1.batch_size=0", "--set stage1.batch_size=0"),
        ("stage1.no_such_key=1", "--set stage1.no_such_key=1"),
        ("eval.weights=/no/such/inception.pth", "eval.weights"),
    ] {
        let err = match run_pipeline(&opts(&run, "stage1", &[set])?) {
            Ok(_) => bail!("--set {set} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(says), "--set {set}: {err}");
        assert!(err.contains("nothing was changed"), "--set {set}: {err}");
        assert!(!err.contains("line "), "points at a generated file: {err}");
        assert!(
            snapshot(&run) == before,
            "--set {set} changed the run directory"
        );
    }
    Ok(())
}

#[test]
fn an_identical_rebuild_upstream_keeps_training_current() -> Result<()> {
    let (_dir, run) = trained_run()?;
    let stage1 = snapshot(&run.join("stage1"));
    let mut o = opts(&run, "embed", &[])?;
    o.force = vec!["embed".into()];
    let rebuilt = run_pipeline(&o)?;
    assert_eq!(
        rebuilt.outcome(Stage::Embed),
        Some(&Outcome::Ran("forced".into()))
    );
    let next = run_pipeline(&opts(&run, "stage1", &[])?)?;
    assert_eq!(next.outcome(Stage::Stage1), Some(&Outcome::Skipped));
    assert!(snapshot(&run.join("stage1")) == stage1, "Stage-I changed");
    Ok(())
}

#[test]
fn a_run_directory_remembers_its_pipeline_and_overrides() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let run = dir.path().join("run");
    run_pipeline(&opts(&run, "embed", &["embed.batch_size=32"])?)?;
    // No pipeline file, no --set: the run's own, from another folder.
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["run", "--dry-run", "--to", "embed", "--run"])
        .arg(&run)
        .current_dir(root().join("crates"))
        .env(xtask::runner::BIN_ENV, &chatpainter()?.path)
        .output()?;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("embed    skip") && !said.contains("note:"),
        "{said}"
    );
    // Other overrides are planned, and the plan says they differ from the run's.
    let plan = {
        let mut o = opts(&run, "embed", &[])?;
        o.dry_run = true;
        run_pipeline(&o)?.plan.render()
    };
    assert!(
        plan.contains("embed    run")
            && plan
                .contains("note: this run was made with the overrides --set embed.batch_size=32"),
        "{plan}"
    );
    Ok(())
}

#[test]
fn lowering_max_steps_below_the_checkpoints_is_refused_raising_continues() -> Result<()> {
    let (_dir, run) = trained_run()?;
    let before = snapshot(&run);
    let err = match run_pipeline(&opts(&run, "stage1", &["stage1.max_steps=3"])?) {
        Ok(_) => bail!("max_steps=3 below the step-6 checkpoint was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("stage1.max_steps = 3") && err.contains("step 6"),
        "{err}"
    );
    assert!(snapshot(&run) == before, "the refused run changed files");
    let more = run_pipeline(&opts(&run, "stage1", &["stage1.max_steps=9"])?)?;
    assert!(
        matches!(more.outcome(Stage::Stage1), Some(Outcome::Ran(w)) if w.contains("resumed from step 6")),
        "{:?}",
        more.outcome(Stage::Stage1)
    );
    let m = Manifest::load(&run.join("stage1"))?;
    assert_eq!(m.summary["steps"].as_u64(), Some(9), "{}", m.summary);
    Ok(())
}

#[test]
fn a_change_that_cannot_resume_moves_the_training_aside_and_restore_brings_it_back() -> Result<()> {
    let (_dir, run) = trained_run()?;
    let stage1 = run.join("stage1");
    let original = snapshot(&stage1);
    let wider = run_pipeline(&opts(&run, "stage1", &["stage1.network.gf_dim=16"])?)?;
    assert!(
        matches!(wider.outcome(Stage::Stage1), Some(Outcome::Ran(_))),
        "{:?}",
        wider.outcome(Stage::Stage1)
    );
    let aside = previous::list(&stage1)?;
    assert_eq!(aside.len(), 1, "{aside:?}");
    let note = aside[0].note.clone().context("the note")?;
    assert!(
        note.reason.contains("network.gf_dim") && note.reason.contains("step 6"),
        "{note:?}"
    );
    assert!(
        snapshot(&aside[0].path)
            .into_iter()
            .filter(|(p, _)| p != Path::new(previous::NOTE_FILE))
            .collect::<BTreeMap<_, _>>()
            == original,
        "the moved-aside run is not the trained one, file for file"
    );
    // The stage folder holds only the new run's files: every sample sheet is in its manifest.
    let m = Manifest::load(&stage1)?;
    for sheet in std::fs::read_dir(stage1.join("samples"))? {
        let name = format!("samples/{}", sheet?.file_name().to_string_lossy());
        assert!(
            m.outputs.iter().any(|o| o.path == name),
            "{name} is not in the manifest"
        );
    }

    // Restored: the gf_dim 8 training is back byte for byte, the gf_dim 16 one is aside.
    xtask::status::previous(&run, Some(&format!("stage1/{}", aside[0].name)), None)?;
    assert!(
        snapshot(&stage1) == original,
        "restore did not bring it back"
    );
    assert_eq!(previous::list(&stage1)?.len(), 1);
    let back = run_pipeline(&opts(&run, "stage1", &[])?)?;
    assert_eq!(back.outcome(Stage::Stage1), Some(&Outcome::Skipped));
    Ok(())
}

#[test]
fn status_prints_the_plan_run_dry_run_prints() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let run = dir.path().join("run");
    let dry = |sets: &[&str]| -> Result<String> {
        let mut o = opts(&run, "report", sets)?;
        o.to = None;
        o.dry_run = true;
        Ok(run_pipeline(&o)?.plan.render())
    };
    let status = |sets: &[&str]| -> Result<String> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        xtask::status::status_text(&run, Some(&smoke_toml()), &sets)
    };
    // Scripted states: nothing yet, data only, trained, an override, an upstream rebuilt.
    std::fs::create_dir_all(&run)?;
    let states: [(&str, Vec<&str>); 4] = [
        ("empty", vec![]),
        ("embed", vec![]),
        ("stage1", vec![]),
        ("stage1", vec!["stage1.max_steps=9"]),
    ];
    for (to, sets) in states {
        if to != "empty" {
            run_pipeline(&opts(&run, to, &[])?)?;
        }
        let plan = dry(&sets)?;
        let shown = status(&sets)?;
        assert!(
            shown.ends_with(&plan),
            "after `--to {to}` {sets:?}: status\n{shown}\ndry run\n{plan}"
        );
        // And the dry run changed nothing: a second one says the same.
        assert_eq!(dry(&sets)?, plan);
    }
    // What the plan says is what the run does.
    let plan = dry(&["stage1.max_steps=9"])?;
    assert!(plan.contains("stage1   run"), "{plan}");
    assert!(plan.contains("resumes from step 6"), "{plan}");
    assert!(plan.contains("stage2   run"), "{plan}");
    Ok(())
}

#[test]
fn ctrl_c_stops_training_with_one_line_and_exit_code_130() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let run = dir.path().join("run");
    run_pipeline(&opts(&run, "embed", &[])?)?;
    let mut xtask = Command::new(env!("CARGO_BIN_EXE_xtask"));
    xtask
        .arg("run")
        .arg(smoke_toml())
        .args(["--to", "stage1", "--run"])
        .arg(&run)
        .args([
            "--set",
            "stage1.max_steps=100000",
            "--set",
            "stage1.checkpoint_every=2",
        ])
        .current_dir(root())
        .env(xtask::runner::BIN_ENV, &chatpainter()?.path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = xtask.spawn()?;
    let stage_dir = run.join("stage1");
    let started = Instant::now();
    while xtask::status::latest_checkpoint(&stage_dir).is_none() {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("stage1 wrote no checkpoint within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    assert!(sent.success());
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.to_lowercase().contains("interrupt"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    // The rerun continues from the checkpoint and says so.
    let step = xtask::status::latest_checkpoint(&stage_dir).context("a checkpoint")?;
    let target = format!("stage1.max_steps={}", step + 2);
    let rerun = run_pipeline(&opts(
        &run,
        "stage1",
        &[&target, "stage1.checkpoint_every=2"],
    )?)?;
    assert!(
        matches!(rerun.outcome(Stage::Stage1), Some(Outcome::Ran(w))
            if w.contains("did not finish") && w.contains("resumed from step")),
        "{:?}",
        rerun.outcome(Stage::Stage1)
    );
    Ok(())
}

/// Random sequences of what users do (runs with random overrides, forcing a stage, rebuilding
/// upstream, editing an upstream output by hand, Ctrl-C during training) on the smoke pipeline
/// up to Stage-I. Before each step the dry-run plan is taken;
/// after it: every stage did what the plan said, and every Stage-I model trained so far is
/// still there (current, moved aside, or continued by a resume), never silently gone.
#[test]
fn random_sequences_never_lose_a_model_and_do_what_the_plan_says() -> Result<()> {
    use chatpainter_artifacts::SplitMix;
    use xtask::plan::Action;
    const SETS: [&str; 4] = [
        "stage1.max_steps=9",
        "stage1.network.gf_dim=16",
        "embed.batch_size=32",
        "embed.caption_encoder.dim=32",
    ];
    let seed = std::env::var("NEVER_LOSE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut rng = SplitMix::new(seed);
    let (_dir, run) = trained_run()?;
    let stage1 = run.join("stage1");
    let model = |dir: &Path| Manifest::load(dir).ok().map(|m| m.outputs_digest());
    let mut models: Vec<String> = model(&stage1).into_iter().collect();
    let mut interrupted = 0;
    for step in 0..8 {
        let sets: Vec<&str> = SETS.iter().copied().filter(|_| rng.below(2) == 1).collect();
        let force: Vec<String> = match rng.below(4) {
            0 => vec!["embed".into()],
            1 => vec!["stage1".into()],
            _ => Vec::new(),
        };
        let mut o = opts(&run, "stage1", &sets)?;
        o.force = force.clone();
        let context = format!("seed {seed} step {step}: {sets:?} --force {force:?}");
        // Every fourth step from the second an upstream output is edited by hand, every fourth
        // from the fourth a training is interrupted; the overrides and forces stay random.
        match step % 4 {
            // Someone edits an upstream output by hand: synth is redone (to the same data).
            1 => {
                let file = run.join("synth/attributes.json");
                let mut text = std::fs::read(&file)?;
                text.push(b'\n');
                std::fs::write(&file, text)?;
            }
            // Ctrl-C in the middle of a longer training: exit 130, nothing lost.
            3 => {
                let old = model(&stage1);
                let aside_before = previous::list(&stage1)?.len();
                interrupted += usize::from(interrupt_training(&run, &sets)?);
                if let Some(old) = old {
                    let aside: Vec<String> = previous::list(&stage1)?
                        .iter()
                        .filter_map(|p| model(&p.path))
                        .collect();
                    if aside.len() == aside_before {
                        // Continued (resumed), not replaced: its checkpoints go on.
                        models.retain(|m| *m != old);
                    } else {
                        assert!(aside.contains(&old), "{context}: interrupted, {old} lost");
                    }
                }
            }
            _ => {}
        }
        let before = snapshot(&run);
        let current_before = model(&stage1);
        let planned = {
            let mut dry = o.clone();
            dry.dry_run = true;
            run_pipeline(&dry)
        };
        let report = match (planned, run_pipeline(&o)) {
            (Ok(plan), Ok(report)) => {
                for s in &plan.plan.stages {
                    let did = report.outcome(s.stage);
                    let agrees = match &s.action {
                        Action::Skip => did == Some(&Outcome::Skipped),
                        Action::Run { .. } => matches!(did, Some(Outcome::Ran(_))),
                        Action::RunsIfChanged { .. } => did.is_some(),
                        Action::NotSelected => did.is_none(),
                    };
                    assert!(
                        agrees,
                        "{context}: {}: plan {:?}, run {did:?}",
                        s.stage, s.action
                    );
                }
                report
            }
            (Err(p), Err(r)) => {
                // Refused (e.g. max_steps below the checkpoints): by the plan, before anything.
                assert_eq!(format!("{p:#}"), format!("{r:#}"), "{context}");
                assert!(
                    snapshot(&run) == before,
                    "{context}: a refused run changed files"
                );
                continue;
            }
            (p, r) => bail!("{context}: plan {:?} but run {:?}", p.err(), r.err()),
        };
        // The model before this step: still current, continued by a resume, or moved aside.
        let resumed = matches!(report.outcome(Stage::Stage1),
            Some(Outcome::Ran(w)) if w.contains("resumed from step"));
        let aside: Vec<String> = previous::list(&stage1)?
            .iter()
            .filter_map(|p| model(&p.path))
            .collect();
        if let Some(old) = current_before {
            let now = model(&stage1);
            assert!(
                now.as_ref() == Some(&old) || resumed || aside.contains(&old),
                "{context}: the Stage-I model {old} vanished"
            );
            if resumed {
                models.retain(|m| *m != old);
            }
        }
        for m in &models {
            assert!(
                model(&stage1).as_ref() == Some(m) || aside.contains(m),
                "{context}: the Stage-I model {m} trained earlier is gone"
            );
        }
        if let Some(now) = model(&stage1)
            && !models.contains(&now)
        {
            models.push(now);
        }
    }
    assert!(interrupted > 0, "seed {seed}: no training was interrupted");
    Ok(())
}

/// `cargo xtask run --to stage1` with a long Stage-I, stopped by SIGINT once it has written a
/// new checkpoint (or refused before training, when its plan says so): never killed silently.
fn interrupt_training(run: &Path, sets: &[&str]) -> Result<bool> {
    let stage_dir = run.join("stage1");
    let newest = xtask::status::latest_checkpoint(&stage_dir);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.arg("run")
        .arg(smoke_toml())
        .args(["--to", "stage1", "--run"])
        .arg(run)
        .current_dir(root())
        .env(xtask::runner::BIN_ENV, &chatpainter()?.path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for s in sets
        .iter()
        .chain(&["stage1.max_steps=100000", "stage1.checkpoint_every=2"])
    {
        cmd.args(["--set", s]);
    }
    let mut child = cmd.spawn()?;
    let started = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            // Refused by the plan (e.g. max_steps below the checkpoints): it said why.
            let out = child.wait_with_output()?;
            assert!(!out.status.success(), "a 100000-step run ended");
            return Ok(false);
        }
        let now = xtask::status::latest_checkpoint(&stage_dir);
        if now.is_some() && now != newest && stage_dir.join(".lock").exists() {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            bail!("no new checkpoint within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    let out = child.wait_with_output()?;
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(true)
}
