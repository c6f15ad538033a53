//! The runner against the real CLI: every shipped pipeline parses with the CLI's own types, and
//! the stage DAG on the smoke pipeline skips, goes stale, forces, selects ranges and resumes a
//! training stage that was killed mid-run. Also the gpu-check folder, with a fake binary.
//!
//! The `chatpainter` binary is `$CHATPAINTER_BIN` if set, else built here (`common`).

use anyhow::{Context, Result, bail};
use chatpainter_artifacts::Stage;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
mod common;

use common::{chatpainter, smoke_toml};
use xtask::runner::{Binary, Outcome, RunOptions, run_pipeline};
use xtask::status::{State, stage_state};
use xtask::util::root;

fn opts(run: &Path, bin: &Binary) -> RunOptions {
    RunOptions {
        pipeline: smoke_toml(),
        run: Some(run.to_path_buf()),
        bin: Some(bin.clone()),
        quiet: true,
        ..RunOptions::default()
    }
}

fn outcomes(report: &xtask::runner::RunReport) -> Vec<(Stage, Outcome)> {
    report
        .stages
        .iter()
        .map(|s| (s.stage, s.outcome.clone()))
        .collect()
}

fn ran(why: &str) -> Outcome {
    Outcome::Ran(why.into())
}

#[test]
fn every_shipped_pipeline_parses() -> Result<()> {
    let dir = root().join("pipelines");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            chatpainter_cli::pipeline::Pipeline::load(&path, &[])
                .with_context(|| format!("the CLI cannot load {}", path.display()))?;
            let file = xtask::dag::PipelineFile::load(&path)?;
            assert!(!file.stages.is_empty(), "{}: no stage", path.display());
            names.push(
                path.file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    for required in [
        "smoke",
        "chatpainter-recurrent",
        "chatpainter-nonrecurrent",
        "stackgan",
        "stackgan-pytorch-coco",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "pipelines/{required}.toml missing"
        );
    }
    Ok(())
}

#[test]
fn bad_pipelines_are_reported_with_the_file() -> Result<()> {
    let bin = chatpainter()?;
    let dir = tempfile::tempdir()?;
    let smoke = std::fs::read_to_string(smoke_toml())?;
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        smoke.replace("batch_size = 64", "batch_size = 64\nbogus_key = 1"),
    )?;
    let mut o = opts(&dir.path().join("run"), &bin);
    o.pipeline = bad.clone();
    let err = format!(
        "{:#}",
        run_pipeline(&o).err().context("a bad key must fail")?
    );
    assert!(
        err.contains("bogus_key") && err.contains("bad.toml"),
        "{err}"
    );

    std::fs::write(&bad, format!("{smoke}\n[stage9]\nx = 1\n"))?;
    let err = format!(
        "{:#}",
        run_pipeline(&o).err().context("a bad table must fail")?
    );
    assert!(
        err.contains("[stage9]") && err.contains("bad.toml"),
        "{err}"
    );
    Ok(())
}

#[test]
fn skip_stale_force_and_ranges_on_the_smoke_pipeline() -> Result<()> {
    let bin = chatpainter()?;
    let dir = tempfile::tempdir()?;
    let run = dir.path().join("run");
    let base = opts(&run, &bin);

    // A range whose upstream has not run is refused, naming the missing stage.
    let mut o = base.clone();
    o.from = Some("embed".into());
    let err = format!(
        "{:#}",
        run_pipeline(&o)
            .err()
            .context("--from embed on an empty run")?
    );
    assert!(err.contains("`synth` has not finished"), "{err}");

    // Whatever stages smoke.toml has today (it grows as stages land).
    let all = xtask::dag::PipelineFile::load(&smoke_toml())?.stages;
    assert!(all.len() >= 4, "{all:?}");
    let after = |stage: Stage| -> Vec<Stage> {
        all.iter()
            .skip_while(|s| **s != stage)
            .skip(1)
            .copied()
            .collect()
    };
    let first = run_pipeline(&base)?;
    assert_eq!(
        outcomes(&first),
        all.iter()
            .map(|s| (*s, ran("no previous run")))
            .collect::<Vec<_>>()
    );
    xtask::check_run(&run, &smoke_toml())?;

    let again = run_pipeline(&base)?;
    assert_eq!(
        outcomes(&again),
        all.iter()
            .map(|s| (*s, Outcome::Skipped))
            .collect::<Vec<_>>()
    );

    // A changed embed key whose vectors come out the same (the batch size): embed reruns,
    // and everything downstream stays current (stages compare upstream outputs by content).
    let mut o = base.clone();
    o.overrides = vec!["embed.batch_size=32".into()];
    let same = run_pipeline(&o)?;
    assert_eq!(same.outcome(Stage::Ingest), Some(&Outcome::Skipped));
    assert_eq!(
        same.outcome(Stage::Embed),
        Some(&ran("stale: `batch_size` = 64 before, 32 now"))
    );
    for s in after(Stage::Embed) {
        // The report shows the resolved pipeline (with the override), so it is redone.
        if s == Stage::Report {
            assert!(matches!(same.outcome(s), Some(Outcome::Ran(_))), "{s}");
        } else {
            assert_eq!(same.outcome(s), Some(&Outcome::Skipped), "{s}");
        }
    }

    // A changed embed key that changes the vectors: embed and everything downstream rerun.
    o.overrides = vec![
        "embed.batch_size=32".into(),
        "embed.caption_encoder.dim=32".into(),
    ];
    let stale = run_pipeline(&o)?;
    assert_eq!(stale.outcome(Stage::Synth), Some(&Outcome::Skipped));
    assert!(
        matches!(stale.outcome(Stage::Embed), Some(Outcome::Ran(w)) if w.contains("caption_encoder.dim")),
        "{:?}",
        stale.outcome(Stage::Embed)
    );
    assert!(
        matches!(stale.outcome(Stage::Stage1), Some(Outcome::Ran(w)) if w.contains("upstream `embed`")),
        "{:?}",
        stale.outcome(Stage::Stage1)
    );
    for s in after(Stage::Stage1) {
        assert!(matches!(stale.outcome(s), Some(Outcome::Ran(_))), "{s}");
    }

    // Forcing ingest redoes it; its outputs come out byte-identical, so nothing after it runs.
    o.force = vec!["ingest".into()];
    o.to = Some("stage1".into());
    let forced = run_pipeline(&o)?;
    assert_eq!(forced.outcome(Stage::Synth), Some(&Outcome::Skipped));
    assert_eq!(forced.outcome(Stage::Ingest), Some(&ran("forced")));
    for s in [Stage::Embed, Stage::Stage1] {
        assert_eq!(forced.outcome(s), Some(&Outcome::Skipped), "{s}");
    }
    assert_eq!(forced.stages.len(), 4, "--to stage1 stops there");

    // --from/--to: only embed runs (back to 64-d captions, batch 16); stage1 is left stale,
    // and status's plan says what changed.
    o.overrides = vec!["embed.batch_size=16".into()];
    o.force = Vec::new();
    o.from = Some("embed".into());
    o.to = Some("embed".into());
    let one = run_pipeline(&o)?;
    assert_eq!(
        outcomes(&one),
        [(Stage::Embed, ran("stale: `batch_size` = 32 before, 16 now"))]
    );
    assert!(
        matches!(stage_state(&run, Stage::Stage1)?, State::Stale { reason, .. } if reason.contains("upstream `embed`")),
        "{:?}",
        stage_state(&run, Stage::Stage1)?
    );
    let status = xtask::status::status_text(&run, Some(&smoke_toml()), &[])?;
    assert!(
        status.contains("`batch_size` = 16 before, 64 now"),
        "{status}"
    );

    // --force outside the range is refused.
    o.force = vec!["stage1".into()];
    assert!(run_pipeline(&o).is_err());
    Ok(())
}

#[test]
fn a_training_stage_killed_mid_run_resumes_from_its_checkpoint() -> Result<()> {
    let bin = chatpainter()?;
    let dir = tempfile::tempdir()?;
    let run = dir.path().join("run");
    let sets = [
        "stage1.max_steps=30",
        "stage1.checkpoint_every=3",
        "stage1.sample_every=0",
    ];
    let mut o = opts(&run, &bin);
    o.to = Some("embed".into());
    run_pipeline(&o)?;

    // `cargo xtask run` as a user would start it; the stage process is killed with SIGKILL as
    // soon as it has written a checkpoint.
    let mut xtask = Command::new(env!("CARGO_BIN_EXE_xtask"));
    xtask
        .arg("run")
        .arg(smoke_toml())
        .args(["--to", "stage1", "--run"])
        .arg(&run)
        .env(xtask::runner::BIN_ENV, &bin.path)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for s in sets {
        xtask.args(["--set", s]);
    }
    let mut child = xtask.spawn()?;
    let stage_dir = run.join("stage1");
    let started = Instant::now();
    let pid = loop {
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            bail!("stage1 wrote no checkpoint within 90 s");
        }
        if let Some(status) = child.try_wait()? {
            bail!("xtask run ended ({status}) before it could be killed");
        }
        let pid = std::fs::read_to_string(stage_dir.join(".lock"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        if let Some(pid) = pid
            && xtask::status::latest_checkpoint(&stage_dir).is_some()
        {
            break pid;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    assert!(killed.success());
    let status = child.wait()?;
    assert!(
        !status.success(),
        "xtask must fail when its stage is killed"
    );

    let State::Resumable { step } = stage_state(&run, Stage::Stage1)? else {
        bail!("after the kill: {:?}", stage_state(&run, Stage::Stage1)?);
    };
    assert!((3..30).contains(&step), "checkpoint step {step}");
    assert!(!stage_dir.join("manifest.json").exists());

    let mut o = opts(&run, &bin);
    o.overrides = sets.map(String::from).to_vec();
    o.to = Some("stage1".into());
    let rerun = run_pipeline(&o)?;
    assert_eq!(rerun.outcome(Stage::Embed), Some(&Outcome::Skipped));
    assert!(
        matches!(rerun.outcome(Stage::Stage1), Some(Outcome::Ran(w)) if w.contains("resumed from step")),
        "{:?}",
        rerun.outcome(Stage::Stage1)
    );
    let summary = &chatpainter_artifacts::Manifest::load(&stage_dir)?.summary;
    assert_eq!(summary["steps"].as_u64(), Some(30), "{summary}");
    let resumed = summary["resumed_from"].as_u64().context("resumed_from")?;
    assert!(
        resumed >= step,
        "resumed from {resumed}, checkpoint was {step}"
    );
    assert!(matches!(
        stage_state(&run, Stage::Stage1)?,
        State::Done { .. }
    ));
    Ok(())
}

#[test]
fn gpu_check_folder_runs_its_binary_and_fails_when_it_fails() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let tools = dir.path().join("tools");
    std::fs::create_dir_all(&tools)?;
    let write_exe = |path: &Path, text: &str| -> Result<()> {
        std::fs::write(path, text)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    };
    write_exe(&tools.join("nvidia-smi"), "#!/bin/sh\necho 'fake H100'\n")?;
    // A stand-in for `chatpainter`: `gpu-check` checks its arguments and the library path,
    // `bench-step` prints a step report (twice PyTorch's time below).
    let good = dir.path().join("good");
    write_exe(
        &good,
        "#!/bin/sh\ncase \"$LD_LIBRARY_PATH\" in /opt/torch/.venv/lib/python3.12/site-packages/torch/lib:*) ;; *) exit 4 ;; esac\n\
         if [ \"$1\" = bench-step ]; then\n\
           echo '{\"median_ms\":200.0,\"images_per_s\":5.0,\"params_g\":10,\"params_d\":5}'; exit 0\n\
         fi\n\
         [ \"$1 $2 $3 $4 $5\" = 'gpu-check --device cuda:0 --out results/' ] || exit 3\n\
         echo '{\"ok\":true}' > results/figures.json\n",
    )?;
    // A stand-in for the GPU machine's Python: the reference step prints its report, anything
    // else (the parity table) runs in this machine's python3.
    let python = tools.join("gpu-python");
    write_exe(
        &python,
        "#!/bin/sh\nif [ \"$1\" = reference/step_torch.py ]; then\n\
           echo '{\"median_ms\":100.0,\"images_per_s\":10.0,\"params_g\":10,\"params_d\":5,\"flops_per_step\":1e12,\"precision\":\"f32\",\"device_name\":\"NVIDIA H200\"}'; exit 0\n\
         fi\n\
         exec python3 \"$@\"\n",
    )?;
    let info = xtask::gpu_check::BuildInfo {
        commit: "test".into(),
        built_unix: 0,
    };
    let out = dir.path().join("gpu-check");
    xtask::gpu_check::prepare_folder(&out, &good, &info)?;
    for f in ["chatpainter", "run.sh", "README.txt", "build.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let ok = Command::new("bash")
        .arg(out.join("run.sh"))
        .env("PATH", &path)
        .env("CHATPAINTER_GPU_PYTHON", &python)
        .output()?;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.join("results/figures.json").is_file());
    assert!(out.join("results/nvidia-smi.txt").is_file());
    let table = std::fs::read_to_string(out.join("results/parity.txt"))?;
    for case in ["step-s1-b384-stackgan-f32", "step-s2-b40-stackgan-bf16"] {
        let row = table
            .lines()
            .find(|l| l.starts_with(case))
            .unwrap_or_else(|| panic!("no row {case} in\n{table}"));
        assert!(row.contains("2.00x"), "{row}");
    }

    let bad = dir.path().join("bad");
    write_exe(&bad, "#!/bin/sh\necho 'loss is NaN' >&2\nexit 1\n")?;
    xtask::gpu_check::prepare_folder(&out, &bad, &info)?;
    let failed = Command::new("bash")
        .arg(out.join("run.sh"))
        .env("PATH", &path)
        .env("CHATPAINTER_GPU_PYTHON", &python)
        .output()?;
    assert!(!failed.status.success());
    assert!(std::fs::read_to_string(out.join("results/gpu-check.log"))?.contains("NaN"));
    Ok(())
}
