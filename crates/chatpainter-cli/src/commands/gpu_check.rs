//! `chatpainter gpu-check --device <dev> --out DIR [--batch 64]`: the check to run first on a
//! machine with an accelerator (or on LibTorch CPU here). It needs no dataset: the bench crate's
//! [`chatpainter_bench::gpu_check`] trains a few Stage-I steps on random inputs of the real
//! shapes, compares one step with flex, times the rest, and this command writes
//! `DIR/results.json` and `DIR/summary.txt` and exits non-zero when a check fails.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use chatpainter_bench::gpu_check::{
    GpuCheckOptions, StepSetup, Tolerance, gpu_check, write_report,
};
use chatpainter_model::DeviceChoice;
use clap::{Args, ValueEnum};

/// Network widths of the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckPreset {
    /// The paper's recurrent ChatPainter (1024-d captions, 10 × 4800-d turns, BiLSTM 1024,
    /// gf 128, df 64).
    Chatpainter,
    /// The smoke preset's tiny widths (seconds on a CPU; for testing the command).
    Smoke,
}

#[derive(Debug, Args)]
pub struct GpuCheckArgs {
    /// cpu, tch-cpu or cuda:N (LibTorch devices need a build with `--features tch`).
    #[arg(long)]
    pub device: DeviceChoice,
    /// Folder for results.json and summary.txt (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Batch size on the device (64: the reference code's default per-GPU batch; the paper's
    /// Stage-I 384 is 96 per GPU on its 4 GPUs).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, value_enum, default_value_t = CheckPreset::Chatpainter)]
    pub preset: CheckPreset,
    /// Untimed steps after the parity step.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Relative tolerance of the flex comparison (default: 1e-4 on CPUs, 1e-2 on CUDA).
    #[arg(long)]
    pub rtol: Option<f64>,
    /// Absolute tolerance of the flex comparison (default: 1e-5 on CPUs, 1e-3 on CUDA).
    #[arg(long)]
    pub atol: Option<f64>,
    /// Seed of the weights and inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: &GpuCheckArgs) -> Result<()> {
    crate::ui::init_logging(None)?;
    if args.steps == 0 {
        bail!("--steps 0: at least one timed step is needed");
    }
    let mut setup = match args.preset {
        CheckPreset::Chatpainter => StepSetup::chatpainter_recurrent(args.batch),
        CheckPreset::Smoke => StepSetup::smoke_recurrent(args.batch),
    };
    setup.seed = args.seed;
    let default = Tolerance::for_device(args.device);
    let opts = GpuCheckOptions {
        device: args.device,
        setup,
        warmup: args.warmup,
        steps: args.steps,
        tolerance: Some(Tolerance {
            rtol: args.rtol.unwrap_or(default.rtol),
            atol: args.atol.unwrap_or(default.atol),
        }),
    };
    let report = gpu_check(&opts).with_context(|| format!("gpu-check on {}", args.device))?;
    write_report(&report, &args.out)?;
    print!("{}", report.summary());
    println!("results: {}", args.out.join("results.json").display());
    if !report.passed {
        bail!(
            "gpu-check on {} failed: {}",
            report.device,
            report.failures.join("; ")
        );
    }
    Ok(())
}
