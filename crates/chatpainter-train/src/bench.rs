//! Training benchmarks. Random weights and inputs: speed does not depend on them.
//!
//! - `chatpainter bench stage2` ([`stage2_rows`]): one Stage-II optimiser step (the trainer's own
//!   step) and the memory it needs, at the paper's widths (`chatpainter` preset: Stage-I gf 128,
//!   Stage-II gf 128 / df 64 / 4 residual blocks, caption-only, 1024-d captions) for a few batch
//!   sizes, per device.
//! - `chatpainter bench loader` ([`loader_rows`]): the batch preparation the loader does per core.
//! - `chatpainter bench-step` ([`step_bench`]): one step of either stage at any widths, the JSON
//!   the PyTorch reference `tests/reference/step_torch.py` prints too.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::AdamConfig;
use burn::tensor::Tensor;
use chatpainter_artifacts::BenchRow;
use chatpainter_artifacts::bench::peak_rss_mib;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::config::{ResolvedNetwork, Stage2Widths, TrainConfig, TrainDevice, Variant};
use crate::data::HostBatch;
use crate::gpu_check::{HostInputs, StepSetup, Timing};
use crate::model::{Stage1Generator, Stage2Generator, StageGenerator};
use crate::precision::Precision;
use crate::ranks::World;
use crate::rng::Xoshiro256;
use crate::step::{Optimizers, StepInputs, train_step};
use crate::trainer::adam;

/// Rows per device and batch size: median ms/step over `steps` after one warm-up step,
/// images/s, and the process's peak RSS after that configuration (batch sizes run in increasing
/// order, so each peak is that batch's or a smaller one's).
///
/// # Errors
/// An unusable device; step errors (a batch that does not fit names its size).
pub fn stage2_rows(
    devices: &[TrainDevice],
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
            let (mut opt_g, mut opt_d) = (adam(&cfg), adam(&cfg));
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

/// Step rates of one H200 that the loader must keep up with (images/s): Stage-I at batch 384,
/// Stage-II at batch 64, as measured by the project's GPU check (not by this benchmark).
pub const H200_STAGE1_IMAGES_PER_S: f64 = 1200.0;
pub const H200_STAGE2_IMAGES_PER_S: f64 = 115.0;

/// `chatpainter bench loader`: images/s one core prepares for each stage — Stage-I: 76→64
/// random crop + flip + `[-1, 1]` from decoded pixels; Stage-II: PNG 304 decode + 256 crop —
/// through the trainer's own batch assembly on a one-thread pool, and from that how many cores
/// keep one and eight H200s fed. Pictures are synthetic (smooth colour fields plus noise, so
/// their PNGs are photo-sized rather than trivially compressible); the conditions give the mean
/// PNG size.
///
/// # Errors
/// A thread pool that cannot be built; assembly errors.
pub fn loader_rows(seconds: f64) -> Result<Vec<BenchRow>, TrainError> {
    use crate::data::{Augment, BatchShape, Geometry, StoredImage, TrainItem, assemble_items};
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|e| TrainError::Internal(format!("one-thread pool: {e}")))?;
    let mut rows = Vec::new();
    let stages = [
        (
            "stage1",
            Geometry::STAGE1,
            384usize,
            H200_STAGE1_IMAGES_PER_S,
        ),
        ("stage2", Geometry::STAGE2, 64, H200_STAGE2_IMAGES_PER_S),
    ];
    for (stage, geometry, batch, gpu_rate) in stages {
        let mut rng = Xoshiro256::new(11, geometry.load as u64);
        let items: Vec<TrainItem> = (0..batch)
            .map(|i| {
                let rgb = synthetic_picture(geometry.load, i as u64, &mut rng);
                let image = if geometry.keeps_decoded() {
                    Ok(StoredImage::Rgb(rgb.into_raw()))
                } else {
                    chatpainter_ingest::images::encode_png(&rgb)
                        .map(StoredImage::Png)
                        .map_err(|e| TrainError::Internal(format!("encoding a PNG: {e}")))
                };
                Ok(TrainItem {
                    image_id: i as i64,
                    image: image?,
                    captions: vec![rng.normals(1024)],
                    dialogue: None,
                    turns: Vec::new(),
                })
            })
            .collect::<Result<_, TrainError>>()?;
        let png_kib = items
            .iter()
            .map(|it| match &it.image {
                StoredImage::Png(p) => p.len() as f64 / 1024.0,
                StoredImage::Rgb(_) => 0.0,
            })
            .sum::<f64>()
            / batch as f64;
        let refs: Vec<&TrainItem> = items.iter().collect();
        let shape = BatchShape {
            geometry,
            dialogue_dim: 0,
            turn_dim: 0,
            max_turns: 0,
        };
        let (mut images, t0) = (0usize, Instant::now());
        while images == 0 || t0.elapsed().as_secs_f64() < seconds {
            let augs: Vec<Augment> = (0..batch)
                .map(|_| Augment::draw(&mut rng, 1, geometry, true))
                .collect();
            let host = pool.install(|| assemble_items(&refs, shape, Variant::Stackgan, &augs))?;
            images += host.size;
        }
        let per_core = images as f64 / t0.elapsed().as_secs_f64();
        let what = if geometry.keeps_decoded() {
            format!(
                "{}→{} crop + flip from decoded pixels",
                geometry.load, geometry.crop
            )
        } else {
            format!(
                "PNG {} decode + {} crop + flip (mean PNG {png_kib:.0} KiB)",
                geometry.load, geometry.crop
            )
        };
        rows.push(BenchRow::new(
            format!("loader {stage} per core"),
            per_core,
            "images/s",
            format!("{what}; batch {batch}, caption 1024-d, one thread"),
        ));
        for gpus in [1.0, 8.0] {
            rows.push(BenchRow::new(
                format!("loader {stage} cores for {gpus} H200"),
                (gpus * gpu_rate / per_core).ceil(),
                "cores",
                format!(
                    "to never starve {gpus} GPU(s) stepping at {gpu_rate} images/s each (given \
                     H200 step rate, batch {batch}), at this machine's per-core rate; decoding \
                     scales with cores, Parquet reads not counted"
                ),
            ));
        }
    }
    Ok(rows)
}

/// A `side`-px picture: smooth colour gradients with per-pixel noise (±12).
fn synthetic_picture(side: usize, seed: u64, rng: &mut Xoshiro256) -> image::RgbImage {
    let phase = (seed % 17) as f32;
    image::RgbImage::from_fn(side as u32, side as u32, |x, y| {
        let (x, y) = (x as f32 / side as f32, y as f32 / side as f32);
        let mut px = [0u8; 3];
        for (c, v) in px.iter_mut().enumerate() {
            let base =
                127.0 + 100.0 * ((x * 6.0 + phase + c as f32) * (1.0 + y * 3.0)).sin() * y.cos();
            let noise = rng.below(25) as f32 - 12.0;
            *v = (base + noise).clamp(0.0, 255.0) as u8;
        }
        image::Rgb(px)
    })
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
    pub device: TrainDevice,
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
    let adam = AdamConfig::new()
        .with_beta_1(s.adam.beta1 as f32)
        .with_beta_2(s.adam.beta2 as f32)
        .with_epsilon(s.adam.eps as f32);
    let (mut opt_g, mut opt_d) = (adam.init(), adam.init());
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
pub fn intra_op_threads(device: TrainDevice) -> String {
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
            device: TrainDevice::Cpu,
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
