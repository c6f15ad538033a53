//! `cargo xtask <command>`: parses the command line and calls the `xtask` library.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use xtask::dag::Devices;
use xtask::runner::{RunOptions, run_pipeline};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "The chatpainter runner: pipelines, setup, benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a pipeline file's stages in DAG order; current stages are skipped, interrupted
    /// training resumes from its last checkpoint.
    Run {
        /// pipelines/<name>.toml; without it, --run DIR of a run made before, which remembers
        /// its pipeline and overrides.
        pipeline: Option<PathBuf>,
        /// Run directory (default runs/<pipeline file name>).
        #[arg(long)]
        run: Option<PathBuf>,
        /// First stage to run (the stages before it must have finished).
        #[arg(long, value_name = "STAGE")]
        from: Option<String>,
        /// Last stage to run.
        #[arg(long, value_name = "STAGE")]
        to: Option<String>,
        /// Redo this stage even if current (repeatable); everything downstream follows.
        #[arg(long = "force", value_name = "STAGE")]
        force: Vec<String>,
        /// cpu (flex), tch-cpu, or cuda:0[,1,…]: the `device` of stage1/stage2/eval; libtorch
        /// devices build the binary with --features tch.
        #[arg(long, value_name = "DEVICES")]
        devices: Option<Devices>,
        /// Override a pipeline key, e.g. --set stage1.max_steps=100 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Check every stage and print the plan (what running would do), then stop.
        #[arg(long)]
        dry_run: bool,
    },
    /// Each stage of a run directory (done / running / resumable / failed / not started), its
    /// moved-aside runs, and the plan: what `run` would do now (the same plan `run --dry-run`
    /// prints), for the pipeline and overrides the run was made with unless given here.
    Status {
        /// Run directory (or a name under runs/).
        run: PathBuf,
        /// The pipeline file to plan with (default: the one the run was made with).
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// Overrides to plan with, as given to `run` (default: the run's own).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// A stage's earlier runs, moved aside instead of deleted (`<stage>/.previous/<name>`):
    /// list them, restore one (the current run is moved aside first), or prune one.
    Previous {
        /// Run directory (or a name under runs/).
        run: PathBuf,
        /// Bring back `STAGE/NAME`.
        #[arg(long, value_name = "STAGE/NAME", conflicts_with = "prune")]
        restore: Option<String>,
        /// Delete `STAGE/NAME` for good.
        #[arg(long, value_name = "STAGE/NAME")]
        prune: Option<String>,
    },
    /// The smoke pipeline into a fresh run directory, then check every stage's artifacts.
    Smoke {
        /// Run directory (default: a fresh runs/smoke-<time>).
        #[arg(long)]
        run: Option<PathBuf>,
    },
    /// What CI runs: fetch-models, fmt, clippy -D warnings, tests, smoke, Parquet readers.
    Ci,
    /// Optional heavy parts, each on request: libtorch (PyPI torch wheel), minilm, all.
    Setup {
        #[arg(value_name = "PART")]
        parts: Vec<String>,
    },
    /// Download the pretrained MiniLM weights (same as `setup minilm`).
    FetchModels,
    /// Benchmarks (ingest, embed, stage1, stage2, loader, eval or all); prints one table. `dialogue`
    /// runs the three-variant experiment on generated scenes (tens of minutes; not in `all`);
    /// `scaling` trains with 1 and 2 data-parallel CPU ranks (needs Open MPI; not in `all`);
    /// `parity` runs our step and MiniLM beside the PyTorch references (needs `setup
    /// torch-reference`; not in `all`); `scale` runs the pipeline at MS COCO's size and prints
    /// each stage's peak RSS, wall time and artifact size (`--set` shrinks it; not in `all`).
    Bench {
        #[arg(default_value = "all")]
        what: String,
        /// `dialogue` only: where Stage-I and eval run (default `tch-cpu`).
        #[arg(long)]
        devices: Option<String>,
        /// `dialogue`: `key=value` overrides for every variant's run; `scale`: for the scale run.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// `dialogue` only: runs per variant (`stage1.seed` = 0, 1, …); the table shows mean ± std.
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        /// `dialogue` only: a named setting of switches (`paper`, `objects`, `objects-linear-ca`).
        #[arg(long)]
        setting: Option<String>,
        /// `dialogue` only: also run the setting with each of its switches off in turn.
        #[arg(long)]
        ablation: bool,
    },
    /// Prepare a folder (binary + run.sh) that a GPU machine with PyTorch 2.11 runs.
    GpuCheck {
        /// Output folder (default gpu-check/ in the workspace).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The checkout this xtask works on and the one it was built from (they must be one).
    Where,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match xtask::util::check_checkout().and_then(|_| dispatch(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Ctrl-C: one line, and the shell's code for SIGINT (128 + 2).
        Err(e) if e.is::<xtask::runner::Interrupted>() => {
            let said = e.to_string();
            if !said.is_empty() {
                eprintln!("{said}");
            }
            std::process::ExitCode::from(130)
        }
        Err(e) => {
            let e: &(dyn std::error::Error + 'static) = e.as_ref();
            eprintln!("error: {}", chatpainter_artifacts::display::error_chain(e));
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Cmd) -> Result<()> {
    match command {
        Cmd::Run {
            pipeline,
            run,
            from,
            to,
            force,
            devices,
            overrides,
            dry_run,
        } => {
            let (pipeline, overrides) = remembered(pipeline, run.as_deref(), overrides)?;
            run_pipeline(&RunOptions {
                pipeline,
                run,
                from,
                to,
                force,
                devices,
                overrides,
                dry_run,
                ..RunOptions::default()
            })
            .map(|_| ())
        }
        Cmd::Status {
            run,
            pipeline,
            overrides,
        } => xtask::status::print_status(
            &xtask::status::resolve_run(&run),
            pipeline.as_deref(),
            &overrides,
        ),
        Cmd::Previous {
            run,
            restore,
            prune,
        } => xtask::status::previous(
            &xtask::status::resolve_run(&run),
            restore.as_deref(),
            prune.as_deref(),
        ),
        Cmd::Smoke { run } => xtask::smoke(run).map(|_| ()),
        Cmd::Ci => xtask::ci(),
        Cmd::Setup { parts } => xtask::setup::setup(&parts),
        Cmd::FetchModels => xtask::fetch_models(),
        Cmd::Bench {
            what,
            devices,
            sets,
            seeds,
            setting,
            ablation,
        } if what == "dialogue" => {
            let devices = devices.map(|d| d.parse()).transpose()?;
            xtask::experiment::dialogue(&xtask::experiment::Experiment {
                devices,
                overrides: sets,
                seeds,
                setting,
                ablation,
            })
        }
        Cmd::Bench { what, .. } if what == "scaling" => xtask::bench::scaling(),
        Cmd::Bench { what, .. } if what == "parity" => xtask::parity::parity(),
        Cmd::Bench { what, sets, .. } if what == "scale" => xtask::scale::scale(&sets),
        Cmd::Bench { what, .. } => xtask::bench::bench(&what),
        Cmd::GpuCheck { out } => xtask::gpu_check::gpu_check(out),
        Cmd::Where => {
            println!("workspace {}", xtask::util::root().display());
            println!("built from {}", xtask::util::built_from().display());
            Ok(())
        }
    }
}

/// The pipeline file and overrides of `run`: as given, or, with no pipeline file, the ones the
/// run directory was made with (`--set` given now replaces the recorded ones).
fn remembered(
    pipeline: Option<PathBuf>,
    run: Option<&std::path::Path>,
    overrides: Vec<String>,
) -> Result<(PathBuf, Vec<String>)> {
    if let Some(p) = pipeline {
        return Ok((p, overrides));
    }
    let Some(run) = run else {
        anyhow::bail!(
            "give a pipeline file, or --run DIR of a run made before (it remembers its pipeline)"
        );
    };
    let dir = xtask::status::resolve_run(run);
    let made = xtask::plan::Invocation::read(&dir).ok_or_else(|| {
        anyhow::anyhow!(
            "{} remembers no pipeline (no {}): give the pipeline file",
            dir.display(),
            xtask::plan::Invocation::path(&dir).display()
        )
    })?;
    let overrides = if overrides.is_empty() {
        made.overrides
    } else {
        overrides
    };
    Ok((made.pipeline, overrides))
}
