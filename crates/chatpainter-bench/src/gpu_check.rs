//! Device checks and step timing for Stage-I, with no dataset: random inputs of the real shapes.
//!
//! - [`StepSetup`] fixes what one step computes (variant, widths, batch); [`HostInputs`] are its
//!   random inputs on the host; [`Trainee`] is G, D and both Adam states on one device, with
//!   weights initialised on flex from a seed and forked to the device, so every device starts
//!   from the same weights.
//! - [`Trainee::step`] is one training step as the trainer does it (the reference order: one G
//!   forward, one D update on real / wrong / detached fake, one G update through the updated D).
//! - [`gpu_check`] trains a few steps on a device, checks that every loss is finite, that one
//!   step's losses match flex for the same inputs and weights, and times steps after warm-up;
//!   `chatpainter gpu-check` writes its [`GpuCheckReport`].
//! - [`bench_rows`] is `chatpainter bench stage1`: ms/step and images/s per device.

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use chatpainter_artifacts::BenchRow;
use chatpainter_artifacts::Xoshiro256;
use chatpainter_model::Stage1Generator;
use chatpainter_model::dataset::HostBatch;
use chatpainter_model::export::first_non_finite;
use chatpainter_model::{DeviceChoice, ResolvedNetwork, Variant};
use chatpainter_nn::{Stage1D, count_trainable};
use chatpainter_train::config::AdamSettings;
use chatpainter_train::step::{self, Optimizers, StepInputs, train_step};
use chatpainter_train::{Precision, TrainError, World};
use serde::{Deserialize, Serialize};

use crate::adam;

/// Image side of Stage-I.
const SIDE: usize = 64;

/// What one Stage-I step computes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSetup {
    /// Short name for reports, e.g. `chatpainter` or `bench-reduced`.
    pub name: String,
    pub variant: Variant,
    pub net: ResolvedNetwork,
    pub batch: usize,
    /// Dialogue turns per sample (recurrent variant).
    pub turns: usize,
    pub lr: f64,
    pub kl_coeff: f64,
    pub adam: AdamSettings,
    /// Seed of the weights and the inputs.
    pub seed: u64,
}

impl StepSetup {
    fn with(name: &str, variant: Variant, net: ResolvedNetwork, batch: usize) -> Self {
        Self {
            name: name.into(),
            variant,
            net,
            batch,
            turns: if variant == Variant::ChatpainterRecurrent {
                10
            } else {
                0
            },
            lr: 2e-4,
            kl_coeff: chatpainter_nn::KL_COEFF,
            adam: AdamSettings::default(),
            seed: 0,
        }
    }

    /// The paper's recurrent ChatPainter at its published widths: char-CNN-RNN captions (1024),
    /// 10 Skip-Thought turns (4800 each) through the BiLSTM (1024 per direction), gf 128, df 64,
    /// Nc 128, Nz 100.
    pub fn chatpainter_recurrent(batch: usize) -> Self {
        let net = ResolvedNetwork {
            z_dim: 100,
            caption_dim: 1024,
            dialogue_dim: 4800,
            rnn_hidden: 1024,
            cond_dim: 128,
            gf_dim: 128,
            df_dim: 64,
            stage2: None,
            object_classes: 0,
            ca_activation: chatpainter_model::CaActivation::Relu,
        };
        Self::with("chatpainter", Variant::ChatpainterRecurrent, net, batch)
    }

    /// The smoke preset's widths (recurrent, 64-d hashing embeddings): for fast tests.
    pub fn smoke_recurrent(batch: usize) -> Self {
        let net = ResolvedNetwork {
            z_dim: 100,
            caption_dim: 64,
            dialogue_dim: 64,
            rnn_hidden: 16,
            cond_dim: 16,
            gf_dim: 8,
            df_dim: 8,
            stage2: None,
            object_classes: 0,
            ca_activation: chatpainter_model::CaActivation::Relu,
        };
        Self::with("smoke", Variant::ChatpainterRecurrent, net, batch)
    }

    /// The benchmark step: caption-only StackGAN Stage-I at reduced widths (gf 32 → ngf 256,
    /// df 32, Nc 128, Nz 100, 1024-d captions), 64×64.
    pub fn bench_reduced(batch: usize) -> Self {
        let net = ResolvedNetwork {
            z_dim: 100,
            caption_dim: 1024,
            dialogue_dim: 0,
            rnn_hidden: 0,
            cond_dim: 128,
            gf_dim: 32,
            df_dim: 32,
            stage2: None,
            object_classes: 0,
            ca_activation: chatpainter_model::CaActivation::Relu,
        };
        Self::with("bench-reduced", Variant::Stackgan, net, batch)
    }

    /// One line describing the step, for reports and bench conditions.
    pub fn describe(&self) -> String {
        let n = &self.net;
        format!(
            "{} ({}), batch {}, 64x64, gf {} df {} Nc {} Nz {}, caption {}{}",
            self.name,
            self.variant.name(),
            self.batch,
            n.gf_dim,
            n.df_dim,
            n.cond_dim,
            n.z_dim,
            n.caption_dim,
            match self.variant {
                Variant::Stackgan => String::new(),
                Variant::ChatpainterNonrecurrent => format!(", dialogue {}", n.dialogue_dim),
                Variant::ChatpainterRecurrent => format!(
                    ", {} turns x {} -> BiLSTM {}",
                    self.turns, n.dialogue_dim, n.rnn_hidden
                ),
            }
        )
    }
}

/// One step's random inputs on the host, in the shapes the trainer feeds.
#[derive(Debug, Clone, PartialEq)]
pub struct HostInputs {
    /// `[B, 3, 64, 64]` uniform in `[-1, 1]`.
    pub real: Vec<f32>,
    /// `[B, caption_dim]`
    pub captions: Vec<f32>,
    /// Non-recurrent `[B, dialogue_dim]`; recurrent `[B, turns, dialogue_dim]`, zero after each
    /// sample's length.
    pub dialogue: Vec<f32>,
    /// Present turns per sample (recurrent), between 1 and `turns`.
    pub lengths: Vec<usize>,
    /// `[B, z_dim]`
    pub noise: Vec<f32>,
    /// CA eps `[B, cond_dim]`
    pub eps: Vec<f32>,
}

impl HostInputs {
    /// Inputs drawn from `(setup.seed, stream)`.
    pub fn random(setup: &StepSetup, stream: u64) -> Self {
        let mut rng = Xoshiro256::new(setup.seed, 100 + stream);
        let b = setup.batch;
        let n = &setup.net;
        let real = (0..b * 3 * SIDE * SIDE)
            .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
            .collect();
        let captions = rng.normals(b * n.caption_dim);
        let (dialogue, lengths) = match setup.variant {
            Variant::Stackgan => (Vec::new(), Vec::new()),
            Variant::ChatpainterNonrecurrent => (rng.normals(b * n.dialogue_dim), Vec::new()),
            Variant::ChatpainterRecurrent => {
                let t = setup.turns.max(1);
                // Mostly full dialogues, as VisDial train; a few short ones exercise packing.
                let lengths: Vec<usize> = (0..b)
                    .map(|i| if i % 4 == 3 { 1 + i % t } else { t })
                    .collect();
                let mut v = rng.normals(b * t * n.dialogue_dim);
                for (i, &len) in lengths.iter().enumerate() {
                    let from = (i * t + len) * n.dialogue_dim;
                    let to = (i + 1) * t * n.dialogue_dim;
                    v[from..to].fill(0.0);
                }
                (v, lengths)
            }
        };
        Self {
            real,
            captions,
            dialogue,
            lengths,
            noise: rng.normals(b * n.z_dim),
            eps: rng.normals(b * n.cond_dim),
        }
    }
}

/// The losses of one step (D terms before the D update, G terms after it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepLosses {
    pub d_loss: f64,
    pub d_real: f64,
    pub d_wrong: f64,
    pub d_fake: f64,
    pub g_loss: f64,
    pub g_adv: f64,
    pub kl: f64,
}

impl From<step::StepLosses> for StepLosses {
    fn from(l: step::StepLosses) -> Self {
        Self {
            d_loss: l.d.total,
            d_real: l.d.real,
            d_wrong: l.d.wrong,
            d_fake: l.d.fake,
            g_loss: l.g.total,
            g_adv: l.g.adversarial,
            kl: l.g.kl,
        }
    }
}

impl StepLosses {
    /// `(name, value)` pairs, in a fixed order.
    pub fn named(&self) -> [(&'static str, f64); 7] {
        [
            ("d_loss", self.d_loss),
            ("d_real", self.d_real),
            ("d_wrong", self.d_wrong),
            ("d_fake", self.d_fake),
            ("g_loss", self.g_loss),
            ("g_adv", self.g_adv),
            ("kl", self.kl),
        ]
    }

    /// Whether every loss is finite.
    pub fn all_finite(&self) -> bool {
        self.named().iter().all(|(_, v)| v.is_finite())
    }
}

/// How close two devices' losses must be: `|a − b| ≤ atol + rtol·|a|` per loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
}

impl Tolerance {
    /// Default for comparing `device` with flex.
    ///
    /// CPU backends (flex, LibTorch CPU) compute in f32 with different kernels (summation order
    /// in GEMM/convolution, `exp`/`log`), so the D losses (before any update) differ by a few
    /// ulp: measured ≤ 2e-7 relative. The G losses come after one Adam step of D, and Adam's
    /// first step moves every weight by ≈ lr·sign(g): a gradient near 0 whose sign differs
    /// between backends moves that weight by up to 2·lr, which shows as ~1e-5 relative in the G
    /// losses (measured on LibTorch CPU: 1.5e-5 at smoke widths, 3.6e-6 at paper widths).
    /// Hence 1e-4 relative. CUDA: LibTorch runs cuDNN convolutions in TF32 by default (10-bit
    /// mantissa, ~5e-4 relative per product), so 1e-2.
    pub fn for_device(device: DeviceChoice) -> Self {
        if device_is_cuda(device) {
            Self {
                rtol: 1e-2,
                atol: 1e-3,
            }
        } else {
            Self {
                rtol: 1e-4,
                atol: 1e-5,
            }
        }
    }

    /// `|a − b| ≤ atol + rtol·|a|`; false when either is NaN.
    pub fn close(&self, a: f64, b: f64) -> bool {
        matches!(
            (a - b)
                .abs()
                .partial_cmp(&(self.atol + self.rtol * a.abs())),
            Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
        )
    }

    /// The loss names outside the tolerance, with both values.
    pub fn violations(&self, reference: &StepLosses, other: &StepLosses) -> Vec<String> {
        reference
            .named()
            .iter()
            .zip(other.named())
            .filter(|((_, a), (_, b))| !self.close(*a, *b))
            .map(|((name, a), (_, b))| format!("{name}: flex {a:.7} vs device {b:.7}"))
            .collect()
    }
}

fn device_is_cuda(device: DeviceChoice) -> bool {
    device.name().is_cuda()
}

/// Largest `|a − b|` and `|a − b| / |a|` over the losses.
pub fn max_diffs(reference: &StepLosses, other: &StepLosses) -> (f64, f64) {
    reference.named().iter().zip(other.named()).fold(
        (0.0f64, 0.0f64),
        |(ma, mr), ((_, a), (_, b))| {
            let d = (a - b).abs();
            (ma.max(d), mr.max(d / a.abs().max(1e-12)))
        },
    )
}

/// G side, D and both Adam states on one device.
pub struct Trainee {
    pub gnet: Stage1Generator,
    pub d: Stage1D,
    opt_g: ModuleOptimizer,
    opt_d: ModuleOptimizer,
    /// Autodiff device the step runs on.
    pub device: Device,
    setup: StepSetup,
}

impl Trainee {
    /// Networks with the reference initialisation drawn on flex from `setup.seed`, forked to
    /// `device` (so every device starts from the same weights), and fresh Adam states.
    pub fn new(setup: &StepSetup, device: DeviceChoice) -> Self {
        let (flex, _) = DeviceChoice::CPU.devices();
        let (gnet, d) = Stage1Generator::init(&setup.net, setup.variant, &flex, setup.seed);
        let (train_device, _) = device.devices();
        let (gnet, d) = if device == DeviceChoice::CPU {
            (gnet, d)
        } else {
            (gnet.fork(&train_device), d.fork(&train_device))
        };
        Self {
            gnet,
            d,
            opt_g: adam(&setup.adam),
            opt_d: adam(&setup.adam),
            device: train_device,
            setup: setup.clone(),
        }
    }

    /// Trainable parameters of (G with CA, dialogue BiLSTM, D).
    pub fn param_counts(&self) -> (usize, usize, usize) {
        (
            count_trainable(&self.gnet.g),
            self.gnet.dialogue.as_ref().map_or(0, count_trainable),
            count_trainable(&self.d),
        )
    }

    /// One training step on `inputs` through the trainer's own step (so what is timed and
    /// compared is exactly what training runs); returns its losses (read back, so the device is
    /// synced).
    ///
    /// # Errors
    /// [`TrainError::Nn`] for inputs that do not fit the networks; [`TrainError::NonFinite`]
    /// for a non-finite loss.
    pub fn step(&mut self, inputs: &HostInputs) -> Result<StepLosses, TrainError> {
        let s = &self.setup;
        let host = HostBatch {
            size: s.batch,
            crop: SIDE,
            images: inputs.real.clone(),
            captions: inputs.captions.clone(),
            dialogue: inputs.dialogue.clone(),
            lengths: inputs.lengths.clone(),
        };
        let step_inputs = StepInputs {
            host,
            noise: inputs.noise.clone(),
            eps: vec![inputs.eps.clone()],
            variant: s.variant,
            net: s.net,
            step: 1,
            kl_coeff: s.kl_coeff,
            precision: Precision::F32,
            objects: None,
        };
        let opt = Optimizers {
            g: &mut self.opt_g,
            d: &mut self.opt_d,
            lr_g: s.lr,
            lr_d: s.lr,
        };
        let (gnet, d) = (self.gnet.clone(), self.d.clone());
        let stepped = train_step(gnet, d, opt, step_inputs, &self.device, &World::single())?;
        (self.gnet, self.d) = (stepped.gnet, stepped.d);
        Ok(StepLosses::from(stepped.losses))
    }

    /// The first non-finite weight of G or D, as `(path, value)`.
    pub fn first_non_finite_weight(&self) -> Option<(String, f32)> {
        first_non_finite(&self.gnet)
            .map(|(p, v)| (format!("G {p}"), v))
            .or_else(|| first_non_finite(&self.d).map(|(p, v)| (format!("D {p}"), v)))
    }
}

/// Step times of a timed run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub warmup_steps: usize,
    /// Each timed step, in milliseconds (inputs uploaded inside the step, losses read back).
    pub step_ms: Vec<f64>,
    pub median_ms: f64,
    pub mean_ms: f64,
    /// `batch / median step time`.
    pub images_per_s: f64,
}

impl Timing {
    pub(crate) fn from_steps(warmup_steps: usize, step_ms: Vec<f64>, batch: usize) -> Self {
        let mut sorted = step_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let median_ms = match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        let mean_ms = step_ms.iter().sum::<f64>() / step_ms.len().max(1) as f64;
        Self {
            warmup_steps,
            step_ms,
            median_ms,
            mean_ms,
            images_per_s: batch as f64 / (median_ms / 1e3),
        }
    }
}

/// Trains `warmup + steps` steps (alternating two random input sets, drawn before timing) and
/// times the last `steps`; returns the timing and every step's losses.
///
/// # Errors
/// As [`Trainee::step`].
pub fn time_steps(
    trainee: &mut Trainee,
    warmup: usize,
    steps: usize,
) -> Result<(Timing, Vec<StepLosses>), TrainError> {
    let inputs = [
        HostInputs::random(&trainee.setup, 1),
        HostInputs::random(&trainee.setup, 2),
    ];
    let mut losses = Vec::with_capacity(warmup + steps);
    let mut ms = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        losses.push(trainee.step(&inputs[i % 2])?);
        if i >= warmup {
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok((Timing::from_steps(warmup, ms, trainee.setup.batch), losses))
}

/// What `chatpainter gpu-check` runs.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuCheckOptions {
    pub device: DeviceChoice,
    pub setup: StepSetup,
    pub warmup: usize,
    pub steps: usize,
    /// `None`: [`Tolerance::for_device`].
    pub tolerance: Option<Tolerance>,
}

/// The parity part of a [`GpuCheckReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parity {
    /// Flex CPU, same inputs and starting weights.
    pub flex: StepLosses,
    pub device: StepLosses,
    pub tolerance: Tolerance,
    pub max_abs_diff: f64,
    pub max_rel_diff: f64,
    pub passed: bool,
}

/// `results.json` of `chatpainter gpu-check`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuCheckReport {
    pub device: String,
    pub setup: StepSetup,
    pub setup_description: String,
    /// Trainable parameters: Stage-I G (with CA), BiLSTM, Stage-I D.
    pub params_g: usize,
    pub params_dialogue: usize,
    pub params_d: usize,
    /// CPUs visible to this process; the flex thread-pool size.
    pub cpus: usize,
    pub flex_threads: usize,
    pub parity: Parity,
    /// Losses of every step on the device: the parity step, then warm-up and timed steps.
    pub losses: Vec<StepLosses>,
    pub all_finite: bool,
    pub timing: Timing,
    pub passed: bool,
    /// Why it failed (empty when passed).
    pub failures: Vec<String>,
    pub chatpainter_version: String,
}

impl GpuCheckReport {
    /// The short text summary (`summary.txt`).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "gpu-check {}: {}\n",
            self.device,
            if self.passed { "PASSED" } else { "FAILED" }
        );
        s += &format!("setup: {}\n", self.setup_description);
        s += &format!(
            "params: G {} + BiLSTM {}, D {}\n",
            self.params_g, self.params_dialogue, self.params_d
        );
        s += &format!(
            "parity with flex (one step, same inputs and weights): max |diff| {:.3e}, max rel {:.3e} \
             (tolerance rtol {:.0e} atol {:.0e}): {}\n",
            self.parity.max_abs_diff,
            self.parity.max_rel_diff,
            self.parity.tolerance.rtol,
            self.parity.tolerance.atol,
            if self.parity.passed { "ok" } else { "MISMATCH" }
        );
        s += &format!(
            "losses: {} steps, all finite: {}\n",
            self.losses.len(),
            self.all_finite
        );
        s += &format!(
            "timing: {} warm-up + {} timed steps: median {:.1} ms/step, mean {:.1} ms/step, {:.1} images/s\n",
            self.timing.warmup_steps,
            self.timing.step_ms.len(),
            self.timing.median_ms,
            self.timing.mean_ms,
            self.timing.images_per_s
        );
        for f in &self.failures {
            s += &format!("failure: {f}\n");
        }
        s
    }
}

/// Runs the device check (see the module docs); the report says whether it passed. Failures of
/// the checks are in the report, not errors.
///
/// # Errors
/// [`TrainError::Config`] for an unusable device; step errors.
pub fn gpu_check(opts: &GpuCheckOptions) -> Result<GpuCheckReport, TrainError> {
    if opts.setup.batch < 2 {
        return Err(TrainError::Config(format!(
            "batch {}: the wrong pairs need at least 2",
            opts.setup.batch
        )));
    }
    opts.device.probe()?;
    let tolerance = opts
        .tolerance
        .unwrap_or_else(|| Tolerance::for_device(opts.device));
    let parity_inputs = HostInputs::random(&opts.setup, 0);
    tracing::info!("gpu-check: parity step on flex");
    let flex = Trainee::new(&opts.setup, DeviceChoice::CPU).step(&parity_inputs)?;
    tracing::info!(device = %opts.device, "gpu-check: parity step on the device");
    let mut trainee = Trainee::new(&opts.setup, opts.device);
    let (params_g, params_dialogue, params_d) = trainee.param_counts();
    let first = trainee.step(&parity_inputs)?;
    let (max_abs_diff, max_rel_diff) = max_diffs(&flex, &first);
    let mismatches = tolerance.violations(&flex, &first);
    let parity = Parity {
        flex,
        device: first,
        tolerance,
        max_abs_diff,
        max_rel_diff,
        passed: mismatches.is_empty(),
    };
    tracing::info!(
        warmup = opts.warmup,
        steps = opts.steps,
        "gpu-check: timed steps"
    );
    let (timing, more) = time_steps(&mut trainee, opts.warmup, opts.steps)?;
    let mut losses = vec![first];
    losses.extend(more);
    let mut failures: Vec<String> = mismatches
        .into_iter()
        .map(|m| format!("parity: {m}"))
        .collect();
    for (i, l) in losses.iter().enumerate() {
        if !l.all_finite() {
            failures.push(format!("step {}: non-finite loss {l:?}", i + 1));
        }
    }
    let all_finite = losses.iter().all(StepLosses::all_finite);
    if let Some((path, v)) = trainee.first_non_finite_weight() {
        failures.push(format!("weight {path} is {v} after training"));
    }
    Ok(GpuCheckReport {
        device: opts.device.to_string(),
        setup_description: opts.setup.describe(),
        setup: opts.setup.clone(),
        params_g,
        params_dialogue,
        params_d,
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        flex_threads: rayon::current_num_threads(),
        parity,
        losses,
        all_finite,
        timing,
        passed: failures.is_empty(),
        failures,
        chatpainter_version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// Writes `results.json` and `summary.txt` into `dir` (atomically each).
///
/// # Errors
/// IO errors naming the file.
pub fn write_report(report: &GpuCheckReport, dir: &Path) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let json = serde_json::to_vec_pretty(report)
        .map_err(|e| TrainError::Internal(format!("serialising the report: {e}")))?;
    chatpainter_artifacts::write_atomic(dir.join("results.json"), &json)?;
    chatpainter_artifacts::write_atomic(dir.join("summary.txt"), report.summary().as_bytes())?;
    Ok(())
}

/// `chatpainter bench stage1`: per device, ms/step (median) and images/s of
/// [`StepSetup::bench_reduced`] at batch 16, after 2 warm-up steps, over 5 steps.
///
/// # Errors
/// An unusable device; step errors.
pub fn bench_rows(devices: &[DeviceChoice]) -> Result<Vec<BenchRow>, TrainError> {
    let setup = StepSetup::bench_reduced(16);
    let (warmup, steps) = (2, 5);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let mut rows = Vec::new();
    for &device in devices {
        device.probe()?;
        let mut trainee = Trainee::new(&setup, device);
        let (timing, _) = time_steps(&mut trainee, warmup, steps)?;
        let threads = format!("{}, {cpus} CPUs", crate::step::intra_op_threads(device));
        let conditions = format!(
            "device {device}; {}; {threads}; median of {steps} steps after {warmup} warm-up",
            setup.describe()
        );
        rows.push(BenchRow::new(
            format!("stage1 step {device}"),
            timing.median_ms,
            "ms/step",
            conditions.clone(),
        ));
        rows.push(BenchRow::new(
            format!("stage1 throughput {device}"),
            timing.images_per_s,
            "images/s",
            conditions,
        ));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke_check_on_flex_passes_and_is_deterministic() {
        let mut setup = StepSetup::smoke_recurrent(4);
        setup.turns = 3;
        let opts = GpuCheckOptions {
            device: DeviceChoice::CPU,
            setup: setup.clone(),
            warmup: 1,
            steps: 2,
            tolerance: None,
        };
        let r = gpu_check(&opts).expect("check");
        assert!(r.passed, "{}", r.summary());
        assert_eq!(r.losses.len(), 4);
        assert_eq!(r.parity.max_abs_diff, 0.0, "flex against flex is exact");
        assert!(r.timing.median_ms > 0.0 && r.timing.images_per_s > 0.0);
        let a = Trainee::new(&setup, DeviceChoice::CPU)
            .step(&HostInputs::random(&setup, 5))
            .expect("step");
        let b = Trainee::new(&setup, DeviceChoice::CPU)
            .step(&HostInputs::random(&setup, 5))
            .expect("step");
        assert_eq!(a, b);
    }

    #[test]
    fn tolerance_flags_what_differs() {
        let a = StepLosses {
            d_loss: 1.0,
            d_real: 0.5,
            d_wrong: 0.7,
            d_fake: 0.7,
            g_loss: 0.8,
            g_adv: 0.7,
            kl: 0.05,
        };
        let mut b = a;
        let t = Tolerance::for_device(DeviceChoice::CPU);
        assert!(t.violations(&a, &b).is_empty());
        b.kl = 0.06;
        let v = t.violations(&a, &b);
        assert_eq!(v.len(), 1);
        assert!(v[0].starts_with("kl:"), "{v:?}");
        b.g_loss = f64::NAN;
        assert_eq!(t.violations(&a, &b).len(), 2);
    }
}

/// Stage-I on LibTorch CPU (`--features tch`; needs libtorch from `cargo xtask setup libtorch`,
/// so plain `cargo test` does not build it): the same steps from the same weights and inputs
/// give the same losses as flex.
#[cfg(all(test, feature = "tch"))]
mod tch_cpu {
    use super::*;

    #[test]
    fn stage1_steps_on_libtorch_cpu_match_flex() {
        let mut setup = StepSetup::smoke_recurrent(8);
        setup.turns = 4;
        setup.seed = 3;
        let mut flex = Trainee::new(&setup, DeviceChoice::CPU);
        let mut tch = Trainee::new(&setup, DeviceChoice::TCH_CPU);
        assert!(tch.device.is_autodiff());
        let tol = Tolerance::for_device(DeviceChoice::TCH_CPU);
        let mut worst = Vec::new();
        for step in 0..4u64 {
            let inputs = HostInputs::random(&setup, step);
            let a = flex.step(&inputs).expect("flex step");
            let b = tch.step(&inputs).expect("tch step");
            assert!(b.all_finite(), "{b:?}");
            let (abs, rel) = max_diffs(&a, &b);
            worst.push((abs, rel));
            // Step 1 starts from identical weights: the kernels alone differ. Later steps also
            // carry the weight differences that Adam's first updates amplify (an update is
            // ≈ lr·sign(g) for any |g| ≫ ε, so a gradient near 0 whose sign differs moves a
            // weight by up to 2·lr): allow 10× more.
            let t = if step == 0 {
                tol
            } else {
                Tolerance {
                    rtol: tol.rtol * 10.0,
                    atol: tol.atol * 10.0,
                }
            };
            let v = t.violations(&a, &b);
            assert!(v.is_empty(), "step {}: {v:?}", step + 1);
        }
        eprintln!("flex vs tch-cpu, max (abs, rel) loss difference per step: {worst:?}");
    }
}
