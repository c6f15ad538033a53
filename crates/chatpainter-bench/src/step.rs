//! Step benchmarks. Random weights and inputs: speed does not depend on them.
//!
//! - `chatpainter bench stage2` ([`stage2_rows`]): one Stage-II optimiser step (the trainer's own
//!   step) and the memory it needs, at the paper's widths (`chatpainter` preset: Stage-I gf 128,
//!   Stage-II gf 128 / df 64 / 4 residual blocks, caption-only, 1024-d captions) for a few batch
//!   sizes, per device.
//! - `chatpainter bench-step` ([`step_bench`]): one step of either stage at any widths, the JSON
//!   the PyTorch reference `tests/reference/step_torch.py` prints too.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use chatpainter_artifacts::BenchRow;
use chatpainter_artifacts::Xoshiro256;
use chatpainter_artifacts::bench::peak_rss_mib;
use chatpainter_model::dataset::HostBatch;
use chatpainter_model::{DeviceChoice, ResolvedNetwork, Stage2Widths, Variant};
use chatpainter_model::{Stage1Generator, Stage2Generator, StageGenerator};
use chatpainter_train::config::TrainConfig;
use chatpainter_train::step::{Optimizers, StepInputs, train_step};
use chatpainter_train::{Precision, TrainError, World};
use serde::{Deserialize, Serialize};

use crate::adam;
use crate::gpu_check::{HostInputs, StepSetup, Timing};

/// Rows per device and batch size: median ms/step over `steps` after one warm-up step,
/// images/s, and the process's peak RSS after that configuration (batch sizes run in increasing
/// order, so each peak is that batch's or a smaller one's).
///
/// # Errors
/// An unusable device; step errors (a batch that does not fit names its size).
pub fn stage2_rows(
    devices: &[DeviceChoice],
    batches: &[usize],
    steps: usize,
) -> Result<Vec<BenchRow>, TrainError> {
    let mut cfg = TrainConfig::smoke(Variant::Stackgan);
    cfg.network.preset = "chatpainter".into();
    let s1 = cfg.network(1024, 0)?;
    let net = cfg.network2(&s1)?;
    let mut batches = batches.to_vec();
    batches.sort_unstable();
    let mut rows = Vec::new();
    for &device in devices {
        device.probe()?;
        let (dev, _) = device.devices();
        let (g1, _) = Stage1Generator::init(&s1, Variant::Stackgan, &dev, 0);
        let (mut g, mut d) = Stage2Generator::init(&net, Variant::Stackgan, g1, &dev, 0)?;
        for &batch in &batches {
            let (mut opt_g, mut opt_d) = (adam(&cfg.adam), adam(&cfg.adam));
            let mut rng = Xoshiro256::new(7, batch as u64);
            let mut times = Vec::with_capacity(steps);
            for i in 0..=steps {
                let inputs = StepInputs {
                    host: HostBatch {
                        size: batch,
                        crop: 256,
                        images: rng.normals(batch * 3 * 256 * 256),
                        captions: rng.normals(batch * 1024),
                        dialogue: Vec::new(),
                        lengths: Vec::new(),
                    },
                    noise: rng.normals(batch * net.z_dim),
                    eps: (0..Stage2Generator::CA_DRAWS)
                        .map(|_| rng.normals(batch * net.cond_dim))
                        .collect(),
                    variant: Variant::Stackgan,
                    net,
                    step: i as u64 + 1,
                    kl_coeff: cfg.kl_coeff,
                    precision: Precision::F32,
                    objects: None,
                };
                let t0 = Instant::now();
                // The step reads its losses back, so the device has finished when it returns.
                let opt = Optimizers {
                    g: &mut opt_g,
                    d: &mut opt_d,
                    lr_g: 2e-4,
                    lr_d: 2e-4,
                };
                let stepped = train_step(g, d, opt, inputs, &dev, &World::single())?;
                (g, d) = (stepped.gnet, stepped.d);
                if i > 0 {
                    times.push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            times.sort_by(f64::total_cmp);
            let ms = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
            let conditions = format!(
                "chatpainter widths (Stage-II G 26.3 M trainable, D 71.3 M), caption-only, batch {batch}, median of {steps} steps after 1 warm-up, {}",
                device
            );
            rows.push(BenchRow::new(
                format!("stage2 step, batch {batch}, {device}"),
                ms,
                "ms/step",
                conditions.clone(),
            ));
            rows.push(BenchRow::new(
                format!("stage2 throughput, batch {batch}, {device}"),
                batch as f64 / (ms / 1e3),
                "images/s",
                conditions.clone(),
            ));
            if let Some(mib) = peak_rss_mib() {
                rows.push(BenchRow::new(
                    format!("stage2 peak RSS, batch {batch}, {device}"),
                    mib,
                    "MiB",
                    format!("process high-water mark after this configuration; {conditions}"),
                ));
            }
        }
    }
    Ok(rows)
}

/// What `chatpainter bench-step` measures: one training step of either stage, at any widths,
/// with random inputs of the real shapes. `tests/reference/step_torch.py` takes the same
/// arguments and prints the same JSON, so `cargo xtask bench parity` can put the two side by side.
#[derive(Debug, Clone, PartialEq)]
pub struct StepBenchOptions {
    /// Stage-I widths, variant, batch, seed (its `net.stage2` is ignored).
    pub setup: StepSetup,
    /// `Some` for a Stage-II step on top of a frozen Stage-I G of `setup.net`.
    pub stage2: Option<Stage2Widths>,
    pub device: DeviceChoice,
    pub precision: Precision,
    pub warmup: usize,
    pub steps: usize,
}

/// The JSON line `chatpainter bench-step` prints (field for field what the PyTorch reference
/// prints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepBenchReport {
    /// `chatpainter`.
    #[serde(rename = "impl")]
    pub implementation: String,
    pub version: String,
    pub device: String,
    pub stage: u8,
    pub variant: String,
    pub precision: String,
    pub batch: usize,
    pub widths: ResolvedNetwork,
    /// Trainable parameters of the generator side (CA, G, the BiLSTM; Stage-II: only what it
    /// trains) and of D.
    pub params_g: usize,
    pub params_d: usize,
    /// Intra-op threads: rayon's pool (flex) or `OMP_NUM_THREADS` (LibTorch), as set.
    pub threads: String,
    pub warmup: usize,
    pub steps: usize,
    pub step_ms: Vec<f64>,
    pub median_ms: f64,
    pub images_per_s: f64,
    /// The last step's losses.
    pub losses: BTreeMap<String, f64>,
    pub finite: bool,
}

/// Runs `warmup + steps` trainer steps on random inputs (two input sets, drawn before timing,
/// alternating) and times the last `steps`.
///
/// # Errors
/// An unusable device; step errors (a non-finite loss names itself).
pub fn step_bench(o: &StepBenchOptions) -> Result<StepBenchReport, TrainError> {
    o.device.probe()?;
    let (dev, _) = o.device.devices();
    let s = &o.setup;
    let s1 = ResolvedNetwork {
        stage2: None,
        ..s.net
    };
    let (g1, d1) = Stage1Generator::init(&s1, s.variant, &dev, s.seed);
    match o.stage2 {
        None => time_stage(g1, d1, o, s1, 64),
        Some(w) => {
            let net = ResolvedNetwork {
                stage2: Some(w),
                ..s1
            };
            let (g2, d2) = Stage2Generator::init(&net, s.variant, g1, &dev, s.seed)?;
            time_stage(g2, d2, o, net, 256)
        }
    }
}

fn time_stage<G: StageGenerator>(
    mut gnet: G,
    mut d: G::D,
    o: &StepBenchOptions,
    net: ResolvedNetwork,
    side: usize,
) -> Result<StepBenchReport, TrainError> {
    let s = &o.setup;
    let (dev, _) = o.device.devices();
    let (mut opt_g, mut opt_d) = (adam(&s.adam), adam(&s.adam));
    let (params_g, params_d) = (count_updated(&gnet), count_updated(&d));
    let mut step_ms = Vec::with_capacity(o.steps);
    let mut last = None;
    for i in 0..o.warmup + o.steps {
        // Drawn outside the timed region; uploading them is part of the step, as in training.
        let step_inputs = random_inputs::<G>(s, &net, side, o.precision, 1 + (i % 2) as u64);
        let t0 = Instant::now();
        // The step reads its losses back, so the device has finished when it returns.
        let opt = Optimizers {
            g: &mut opt_g,
            d: &mut opt_d,
            lr_g: s.lr,
            lr_d: s.lr,
        };
        let stepped = train_step(gnet, d, opt, step_inputs, &dev, &World::single())?;
        if i >= o.warmup {
            step_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        (gnet, d, last) = (stepped.gnet, stepped.d, Some(stepped.losses));
    }
    let timing = Timing::from_steps(o.warmup, step_ms, s.batch);
    let losses: BTreeMap<String, f64> = last
        .map(|l| {
            [("d_loss", l.d.total), ("g_loss", l.g.total), ("kl", l.g.kl)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
        })
        .unwrap_or_default();
    Ok(StepBenchReport {
        implementation: "chatpainter".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        device: o.device.to_string(),
        stage: if o.stage2.is_some() { 2 } else { 1 },
        variant: s.variant.name().into(),
        precision: o.precision.to_string(),
        batch: s.batch,
        widths: net,
        params_g,
        params_d,
        threads: intra_op_threads(o.device),
        warmup: o.warmup,
        steps: o.steps,
        finite: losses.values().all(|v| v.is_finite()),
        step_ms: timing.step_ms,
        median_ms: timing.median_ms,
        images_per_s: timing.images_per_s,
        losses,
    })
}

/// One step's random inputs of the real shapes: images uniform in `[-1, 1]` at `side`, text
/// vectors, noise and CA eps standard normal, drawn from `(setup.seed, stream)`.
fn random_inputs<G: StageGenerator>(
    s: &StepSetup,
    net: &ResolvedNetwork,
    side: usize,
    precision: Precision,
    stream: u64,
) -> StepInputs {
    let text = HostInputs::random(s, stream);
    let mut rng = Xoshiro256::new(s.seed, 200 + stream);
    StepInputs {
        host: HostBatch {
            size: s.batch,
            crop: side,
            images: (0..s.batch * 3 * side * side)
                .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
                .collect(),
            captions: text.captions,
            dialogue: text.dialogue,
            lengths: text.lengths,
        },
        noise: text.noise,
        eps: (0..G::CA_DRAWS)
            .map(|_| rng.normals(s.batch * net.cond_dim))
            .collect(),
        variant: s.variant,
        net: *net,
        step: 1,
        kl_coeff: s.kl_coeff,
        precision,
        objects: None,
    }
}

/// Scalars the optimiser updates: parameters that require gradients, so a frozen Stage-I G and
/// BatchNorm running statistics do not count (PyTorch: `numel` of the parameters with
/// `requires_grad`).
fn count_updated<M: Module>(module: &M) -> usize {
    struct Count(usize);
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            if t.is_require_grad() {
                self.0 += t.shape().num_elements();
            }
        }
    }
    let mut c = Count(0);
    module.visit(&mut c);
    c.0
}

/// How many threads the device's kernels use, as the environment sets them.
pub fn intra_op_threads(device: DeviceChoice) -> String {
    if device.is_libtorch() {
        // libgomp's busy-waiting makes LibTorch CPU steps up to 15× slower when the cores are
        // shared: OMP_WAIT_POLICY=PASSIVE avoids it, so a figure must say how it ran.
        let omp = |k: &str| std::env::var(k).unwrap_or_else(|_| "unset".into());
        format!(
            "OMP_NUM_THREADS={} OMP_WAIT_POLICY={}",
            omp("OMP_NUM_THREADS"),
            omp("OMP_WAIT_POLICY")
        )
    } else {
        format!("rayon {}", rayon::current_num_threads())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn smoke(stage2: bool, precision: Precision) -> StepBenchOptions {
        StepBenchOptions {
            setup: StepSetup::smoke_recurrent(4),
            stage2: stage2.then_some(Stage2Widths {
                gf_dim: 8,
                df_dim: 4,
                r_num: 1,
                stage1_bn_batch_stats: true,
            }),
            device: DeviceChoice::CPU,
            precision,
            warmup: 1,
            steps: 2,
        }
    }

    #[test]
    fn both_stages_report_every_field() {
        for stage2 in [false, true] {
            let r = step_bench(&smoke(stage2, Precision::F32)).expect("bench");
            assert_eq!(r.stage, if stage2 { 2 } else { 1 });
            assert_eq!(r.step_ms.len(), 2);
            assert!(r.finite && r.median_ms > 0.0, "{r:?}");
            assert!(r.params_g > 0 && r.params_d > 0);
            if stage2 {
                // Only Stage-II's own layers train: not the frozen Stage-I G and BiLSTM inside.
                let o = smoke(true, Precision::F32);
                let device = Device::flex().autodiff();
                let net = ResolvedNetwork {
                    stage2: o.stage2,
                    ..o.setup.net
                };
                let (g1, _) = Stage1Generator::init(&o.setup.net, o.setup.variant, &device, 0);
                let (g2, _) =
                    Stage2Generator::init(&net, o.setup.variant, g1, &device, 0).expect("init");
                let frozen = chatpainter_nn::count_trainable(&g2.g.stage1_g)
                    + g2.dialogue
                        .as_ref()
                        .map_or(0, chatpainter_nn::count_trainable);
                assert_eq!(r.params_g + frozen, chatpainter_nn::count_trainable(&g2));
            }
            let json = serde_json::to_string(&r).expect("json");
            assert!(json.contains("\"impl\":\"chatpainter\""), "{json}");
        }
    }

    /// bf16 mixed precision trains: finite losses, near the f32 step's (bf16 keeps 8 bits of
    /// mantissa, so the D terms of the first steps agree to about 1e-2).
    #[test]
    fn bf16_steps_are_finite_and_near_f32() {
        for stage2 in [false, true] {
            let a = step_bench(&smoke(stage2, Precision::F32)).expect("f32");
            let b = step_bench(&smoke(stage2, Precision::Bf16)).expect("bf16");
            assert!(b.finite, "{b:?}");
            for (k, va) in &a.losses {
                let vb = b.losses[k];
                assert!(
                    (va - vb).abs() <= 0.05 + 0.05 * va.abs(),
                    "stage2={stage2} {k}: f32 {va} vs bf16 {vb}"
                );
            }
        }
    }
}
