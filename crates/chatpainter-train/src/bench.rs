//! `chatpainter bench stage2`: the time of one Stage-II optimiser step (the trainer's own step)
//! and the memory it needs, at the paper's widths (`chatpainter` preset: Stage-I gf 128, Stage-II
//! gf 128 / df 64 / 4 residual blocks, caption-only, 1024-d captions) for a few batch sizes, per
//! device. Random weights and inputs: speed does not depend on them.

use std::time::Instant;

use chatpainter_artifacts::BenchRow;
use chatpainter_artifacts::bench::peak_rss_mib;

use crate::TrainError;
use crate::config::{TrainConfig, TrainDevice, Variant};
use crate::data::HostBatch;
use crate::model::{Stage1Generator, Stage2Generator, StageGenerator};
use crate::ranks::World;
use crate::rng::Xoshiro256;
use crate::trainer::{StepInputs, adam, train_step};

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
                };
                let t0 = Instant::now();
                // The step reads its losses back, so the device has finished when it returns.
                let (g2, d2, _, _) = train_step(
                    g,
                    d,
                    &mut opt_g,
                    &mut opt_d,
                    (2e-4, 2e-4),
                    inputs,
                    &dev,
                    &World::single(),
                )?;
                (g, d) = (g2, d2);
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
