//! `cargo xtask run`: builds the `chatpainter` binary with the features the pipeline needs and
//! runs the selected stages in DAG order, each as a subprocess. Skipping current stages and
//! resuming training are the CLI's job (manifests and checkpoints); xtask picks the range,
//! passes `--force`, `--set` and the devices through, and reports what each stage did.

use crate::dag::{Devices, Libtorch, PipelineFile, join, libtorch_for, subcommand};
use crate::plan::{self, Invocation, Plan};
use crate::setup::LibtorchPaths;
use crate::util::{self, root, show};
use anyhow::{Context, Result, bail};
use chatpainter_artifacts::Stage;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Instant;

/// Environment variable naming a prebuilt `chatpainter` binary to use instead of building one
/// (tests, or a machine without a toolchain).
pub const BIN_ENV: &str = "CHATPAINTER_BIN";

/// Folder in a run directory where xtask keeps what it knows about stage processes (the captured
/// error output of a failed stage); stage folders belong to the stages.
pub const XTASK_DIR: &str = ".xtask";

/// A built (or given) `chatpainter` binary and the environment it needs at run time.
#[derive(Debug, Clone)]
pub struct Binary {
    pub path: PathBuf,
    /// Extra environment for every run (`LD_LIBRARY_PATH` for libtorch builds).
    pub env: Vec<(String, String)>,
}

impl Binary {
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.path);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }
}

/// Cargo profile of a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The dev profile (dependencies optimised; fast to rebuild).
    Dev,
    Release,
}

/// Whether `build_cli` adds the `mpi` feature (data-parallel ranks; needs Open MPI and
/// libclang): set for runs with several ranks and by `ci`, whose test build has it too (one
/// feature set, so the smoke binary does not rebuild the crates above chatpainter-train).
static MPI_BUILDS: AtomicBool = AtomicBool::new(false);

/// From now on, build `chatpainter` with the `mpi` feature.
pub fn build_with_mpi() {
    MPI_BUILDS.store(true, Ordering::SeqCst);
}

/// Builds `chatpainter` (or takes `$CHATPAINTER_BIN`) for the given libtorch need.
///
/// Libtorch builds use the libtorch that `cargo xtask setup libtorch` prepared, with `LIBTORCH`
/// always set so that torch-sys never downloads anything. CPU builds link the symlink folder
/// without the CUDA libraries; CUDA builds of the dev profile get their own target folder so that
/// switching between the two does not rebuild torch-sys and everything above it each time.
pub fn build_cli(libtorch: Option<Libtorch>, profile: Profile) -> Result<Binary> {
    let runtime_env = |lt: Libtorch| -> Vec<(String, String)> {
        match LibtorchPaths::locate().ready() {
            Some(p) => vec![("LD_LIBRARY_PATH".into(), p.runtime_library_path(lt))],
            None => Vec::new(),
        }
    };
    if let Some(bin) = std::env::var_os(BIN_ENV) {
        let path = PathBuf::from(bin);
        if !path.is_file() {
            bail!("${BIN_ENV}={}: no such file", path.display());
        }
        return Ok(Binary {
            path,
            env: libtorch.map(runtime_env).unwrap_or_default(),
        });
    }
    let mut target = util::target_dir()?;
    let mut build = util::cargo();
    build.args(["build", "--quiet", "-p", "chatpainter-cli"]);
    if MPI_BUILDS.load(Ordering::SeqCst) {
        build.args(["--features", "mpi"]);
    }
    if profile == Profile::Release {
        build.arg("--release");
    }
    let mut env = Vec::new();
    if let Some(lt) = libtorch {
        let paths = LibtorchPaths::locate().ready().with_context(|| {
            format!(
                "a libtorch device needs libtorch {}: run `cargo xtask setup libtorch` first",
                crate::setup::TORCH_VERSION
            )
        })?;
        if !util::package_features("chatpainter-cli")?
            .iter()
            .any(|f| f == "tch")
        {
            bail!(
                "a libtorch device needs the `tch` feature of chatpainter-cli, which this checkout does not have yet"
            );
        }
        build.args(["--features", "tch"]);
        paths.build_env(&mut build, lt);
        // Builds with libtorch get their own target folder: in the shared one, the `tch`
        // feature set and the default one (`cargo test`, `smoke`, `bench parity`'s flex side)
        // would overwrite the same `chatpainter` binary and rebuild burn and everything above
        // it at every switch (seen: a running `--devices tch-cpu` pipeline lost its libtorch
        // binary to a `cargo build`).
        target = target.join(match lt {
            Libtorch::Cuda => "libtorch-cuda",
            Libtorch::Cpu => "libtorch-cpu",
        });
        build.arg("--target-dir").arg(&target);
        env = runtime_env(lt);
    }
    util::run_checked(build).context("building the chatpainter binary")?;
    let dir = match profile {
        Profile::Dev => "debug",
        Profile::Release => "release",
    };
    Ok(Binary {
        path: target.join(dir).join("chatpainter"),
        env,
    })
}

/// The `chatpainter` binary a pipeline needs (dev profile). The strongest libtorch need of any
/// stage decides the build: every stage parses the whole file, so a `cuda:0` in stage1 must
/// parse even when only ingest runs.
pub fn binary_for(file: &PipelineFile, overrides: &[String]) -> Result<Binary> {
    let libtorch = file
        .stages
        .iter()
        .filter_map(|s| file.device_of(*s, overrides))
        .filter_map(|d| libtorch_for(&d))
        .max_by_key(|l| matches!(l, Libtorch::Cuda));
    build_cli(libtorch, Profile::Dev)
}

/// What `cargo xtask run` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub pipeline: PathBuf,
    /// Run directory (default `runs/<pipeline file stem>`).
    pub run: Option<PathBuf>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub force: Vec<String>,
    pub devices: Option<Devices>,
    pub overrides: Vec<String>,
    /// Use this binary instead of building (after `$CHATPAINTER_BIN`).
    pub bin: Option<Binary>,
    /// Print the CLI's output (tests turn it off and read the report).
    pub quiet: bool,
    /// Check every stage and print the plan, run nothing.
    pub dry_run: bool,
}

/// What happened to one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Current; the CLI skipped it.
    Skipped,
    /// It ran; the CLI's reason (`no previous run`, `forced`, `stale: …`).
    Ran(String),
}

#[derive(Debug, Clone)]
pub struct StageRun {
    pub stage: Stage,
    pub outcome: Outcome,
    pub seconds: f64,
    /// The CLI's standard output.
    pub stdout: String,
}

/// The plan, and the stages that ran, in order.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub run: PathBuf,
    pub plan: Plan,
    pub stages: Vec<StageRun>,
}

impl RunReport {
    pub fn outcome(&self, stage: Stage) -> Option<&Outcome> {
        self.stages
            .iter()
            .find(|s| s.stage == stage)
            .map(|s| &s.outcome)
    }
}

/// The default run directory of a pipeline file: `runs/<file stem>`.
pub fn default_run_dir(pipeline: &Path) -> PathBuf {
    let name = pipeline
        .file_stem()
        .map_or("run".into(), |s| s.to_string_lossy().into_owned());
    root().join("runs").join(name)
}

/// The pid of the stage process running now (0: none), for the interrupt handler.
static CURRENT_CHILD: AtomicU32 = AtomicU32::new(0);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The run was interrupted (Ctrl-C / SIGTERM) and the stage stopped: `main` exits 130 after
/// the one line this says.
#[derive(Debug)]
pub struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

/// Sends `signal` to `pid`, quietly (the process may just have exited).
fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// On Ctrl-C or SIGTERM: ask the running stage to stop (SIGTERM: training writes a checkpoint
/// first) and let the loop report it once the stage has exited; with no stage running, exit
/// 130. A second Ctrl-C kills the stage at once (as torchrun does); its last checkpoint stays.
fn install_interrupt_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            let again = INTERRUPTED.swap(true, Ordering::SeqCst);
            let pid = CURRENT_CHILD.load(Ordering::SeqCst);
            if pid == 0 {
                std::process::exit(130);
            }
            if again {
                eprintln!("[xtask] interrupted again: killing the stage (pid {pid})");
                signal(pid, "-KILL");
                std::process::exit(130);
            }
            // Quiet: the stage says what it did when it stops (one line in all).
            signal(pid, "-TERM");
        });
    });
}

/// Runs the selected stages of a pipeline file in order.
pub fn run_pipeline(opts: &RunOptions) -> Result<RunReport> {
    if !opts.quiet {
        install_interrupt_handler();
    }
    let file = PipelineFile::load(&opts.pipeline)?;
    let run = opts
        .run
        .clone()
        .unwrap_or_else(|| default_run_dir(&opts.pipeline));
    let selected = file.select(opts.from.as_deref(), opts.to.as_deref())?;
    let mut forced = Vec::new();
    for f in &opts.force {
        let stage = file.check_stage("--force", f)?;
        if !selected.contains(&stage) {
            bail!(
                "--force {f}: the stage is outside the selected range ({})",
                join(&selected, " → ")
            );
        }
        forced.push(stage);
    }
    file.check_overrides(&opts.overrides)?;
    // Every stage before the range must have finished: the first selected stage reads it.
    if let Some(first) = selected.first() {
        for before in file.stages.iter().take_while(|s| *s != first) {
            let manifest = run.join(before.name()).join("manifest.json");
            if !manifest.is_file() {
                bail!(
                    "--from {first}: stage `{before}` has not finished in {} (no {}); run it first, e.g. with --from {before}",
                    run.display(),
                    manifest.display()
                );
            }
        }
    }
    let mut overrides = opts.overrides.clone();
    let ranks = opts.devices.as_ref().map_or(1, Devices::ranks);
    if let Some(devices) = &opts.devices {
        for stage in file.stages.iter().filter(|s| s.uses_device()) {
            let value = if stage.is_training() {
                devices.train_value()
            } else {
                devices.eval_value()
            };
            overrides.push(format!("{stage}.device=\"{value}\""));
        }
    }
    if ranks > 1 {
        build_with_mpi();
    }
    let bin = match &opts.bin {
        Some(b) => b.clone(),
        None => binary_for(&file, &overrides)?,
    };
    // Every stage checked and planned before anything is touched.
    let plan = plan::plan(&bin, &file, &run, &overrides, &selected, &forced)?;
    if !opts.quiet || opts.dry_run {
        print!(
            "[xtask] {} → {}\n{}",
            opts.pipeline.display(),
            run.display(),
            plan.render()
        );
    }
    let mut report = RunReport {
        run: run.clone(),
        plan: plan.clone(),
        stages: Vec::new(),
    };
    if opts.dry_run {
        return Ok(report);
    }
    Invocation {
        // Absolute, so that `run --run DIR` and `status DIR` find it from any folder.
        pipeline: opts
            .pipeline
            .canonicalize()
            .unwrap_or_else(|_| opts.pipeline.clone()),
        overrides: overrides.clone(),
    }
    .write(&run)?;
    for &stage in &selected {
        // Training stages run as one process per device under mpirun.
        let mut cmd = if ranks > 1 && stage.is_training() {
            let gpus = opts.devices.as_ref().and_then(Devices::visible_gpus);
            let mut c = chatpainter_artifacts::launch::mpirun(ranks, gpus.as_deref());
            c.arg(&bin.path);
            for (k, v) in &bin.env {
                c.env(k, v);
            }
            c
        } else {
            bin.command()
        };
        cmd.args(subcommand(stage))
            .arg("--pipeline")
            .arg(&opts.pipeline)
            .arg("--run")
            .arg(&run);
        // A forced stage changes its manifest, which makes everything downstream stale.
        if forced.contains(&stage) {
            cmd.arg("--force");
        }
        for o in &overrides {
            cmd.arg("--set").arg(o);
        }
        let started = Instant::now();
        let stdout = run_stage_process(cmd, stage, &run, &opts.pipeline, opts.quiet)?;
        let seconds = started.elapsed().as_secs_f64();
        let mut outcome = classify(stage, &stdout);
        if let Outcome::Ran(why) = &mut outcome
            && let Some(step) = resumed_from(&run.join(stage.name()))
        {
            why.push_str(&format!("; resumed from step {step}"));
        }
        if !opts.quiet {
            println!("[xtask] {stage}: {} in {seconds:.1} s", describe(&outcome));
        }
        report.stages.push(StageRun {
            stage,
            outcome,
            seconds,
            stdout,
        });
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Err(Interrupted(format!(
                "[xtask] interrupted after stage `{stage}` finished; rerun the same command to continue"
            ))
            .into());
        }
    }
    if !opts.quiet {
        print_summary(&report);
    }
    Ok(report)
}

/// The step a training stage resumed from, as its manifest's summary records it.
fn resumed_from(stage_dir: &Path) -> Option<u64> {
    chatpainter_artifacts::Manifest::load(stage_dir)
        .ok()?
        .summary["resumed_from"]
        .as_u64()
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Skipped => "skipped (up to date)".into(),
        Outcome::Ran(why) => format!("ran ({why})"),
    }
}

fn print_summary(report: &RunReport) {
    let total: f64 = report.stages.iter().map(|s| s.seconds).sum();
    println!("\n[xtask] {} in {total:.1} s", report.run.display());
    for s in &report.stages {
        println!(
            "  {:<8} {:<60} {:>7.1} s",
            s.stage,
            describe(&s.outcome),
            s.seconds
        );
    }
}

/// What the CLI said it did: `<stage>: up to date (…)` or `<stage>: done (<why>); …`.
fn classify(stage: Stage, stdout: &str) -> Outcome {
    for line in stdout.lines().rev() {
        let Some(rest) = line
            .strip_prefix(stage.name())
            .and_then(|r| r.strip_prefix(": "))
        else {
            continue;
        };
        if rest.starts_with("up to date") {
            return Outcome::Skipped;
        }
        if let Some(why) = rest.strip_prefix("done (") {
            let why = why.split_once("); ").map_or(why, |(w, _)| w);
            return Outcome::Ran(why.trim_end_matches(')').to_string());
        }
    }
    Outcome::Ran("finished".into())
}

/// Runs one stage process. Standard output is read (and echoed) to learn what the stage did;
/// standard error goes straight to the terminal when there is one (progress bars), else it is
/// echoed and its tail kept, so that a failure is recorded in `<run>/.xtask/<stage>.log` for
/// `cargo xtask status`.
fn run_stage_process(
    mut cmd: Command,
    stage: Stage,
    run: &Path,
    pipeline: &Path,
    quiet: bool,
) -> Result<String> {
    let shown = show(&cmd);
    let capture_err = quiet || !std::io::stderr().is_terminal();
    cmd.stdout(Stdio::piped());
    cmd.stderr(if capture_err {
        Stdio::piped()
    } else {
        Stdio::inherit()
    });
    let mut child = cmd.spawn().with_context(|| format!("starting {shown}"))?;
    CURRENT_CHILD.store(child.id(), Ordering::SeqCst);
    let err_thread = child.stderr.take().map(|err| {
        std::thread::spawn(move || {
            let mut tail: Vec<String> = Vec::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if !quiet {
                    eprintln!("{line}");
                }
                tail.push(line);
                if tail.len() > 200 {
                    tail.remove(0);
                }
            }
            tail
        })
    });
    let mut stdout = String::new();
    if let Some(out) = child.stdout.take() {
        let stdout_handle = std::io::stdout();
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if !quiet {
                let mut h = stdout_handle.lock();
                let _ = writeln!(h, "{line}");
            }
            stdout.push_str(&line);
            stdout.push('\n');
        }
    }
    let status = child.wait();
    CURRENT_CHILD.store(0, Ordering::SeqCst);
    let status = status.with_context(|| format!("waiting for {shown}"))?;
    let tail = err_thread.and_then(|t| t.join().ok()).unwrap_or_default();
    let record = run.join(XTASK_DIR).join(format!("{stage}.log"));
    if status.success() {
        let _ = std::fs::remove_file(&record);
        return Ok(stdout);
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        // A stage that stopped on the signal (exit 130) has said so itself, in one line.
        if status.code() == Some(130) {
            return Err(Interrupted(String::new()).into());
        }
        let what = if stage.is_training() {
            "its last checkpoint is kept; rerun the same command to continue from it"
        } else {
            "it did not finish and will run again; rerun the same command to continue"
        };
        return Err(Interrupted(format!(
            "[xtask] interrupted during stage `{stage}`: {what}"
        ))
        .into());
    }
    // The CLI's error: from its last `error` line to the end (TOML errors span several lines).
    let error_block = tail
        .iter()
        .rposition(|l| l.starts_with("error"))
        .map(|i| {
            tail[i..]
                .iter()
                .take(12)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        })
        .or_else(|| tail.last().cloned());
    if let Some(dir) = record.parent() {
        let _ = std::fs::create_dir_all(dir);
        let text = format!(
            "command: {shown}\nexit: {status}\nfinished_unix: {}\n--- stderr (tail) ---\n{}\n",
            util::now_unix(),
            tail.join("\n")
        );
        let _ = std::fs::write(&record, text);
    }
    let stage_log = run.join(stage.name()).join("log.txt");
    let log = if stage_log.is_file() {
        stage_log
    } else {
        record
    };
    let mut msg = format!(
        "stage `{stage}` failed ({status}); pipeline {}, run {}; its log: {}",
        pipeline.display(),
        run.display(),
        log.display()
    );
    // The stage's own error was already shown as it ran (stderr echoed): not twice.
    if quiet && let Some(block) = error_block {
        msg.push_str(&format!("\n  {block}"));
    }
    bail!(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_cli_lines() {
        assert_eq!(
            classify(
                Stage::Embed,
                "x\nembed: up to date (runs/a/embed), skipped; --force redoes it\n"
            ),
            Outcome::Skipped
        );
        assert_eq!(
            classify(
                Stage::Stage1,
                "stage1: 6 steps\nstage1: done (stale: upstream stage changed: embed); 10 output file(s) in r\n"
            ),
            Outcome::Ran("stale: upstream stage changed: embed".into())
        );
        assert_eq!(
            classify(
                Stage::Ingest,
                "ingest: done (forced); 9 output file(s) in r\n"
            ),
            Outcome::Ran("forced".into())
        );
    }
}
