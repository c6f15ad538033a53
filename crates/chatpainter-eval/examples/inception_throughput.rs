//! Hand measurement of Inception v3 forward throughput (images/s) on the flex CPU backend.
//!
//! `cargo run -p chatpainter-eval --example inception_throughput [batch] [iters] [fid]`
//! Random weights; the cost does not depend on their values. Prints one line per backbone;
//! with a third argument `fid` it only times the f64 statistics + Fréchet distance at the real
//! feature size (2048-d), which is dominated by two 2048×2048 symmetric eigendecompositions.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use chatpainter_eval::{Backbone, FidStatistics, InceptionConfig, frechet_distance};

fn main() {
    let mut args = std::env::args().skip(1);
    let batch: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let iters: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    if args.next().as_deref() == Some("fid") {
        time_fid();
        return;
    }
    let device = Device::flex();
    for backbone in [Backbone::TorchvisionImagenet, Backbone::TfInception2015] {
        let model = InceptionConfig::new(backbone).init(&device);
        let x = Tensor::<4>::random(
            [batch, 3, 299, 299],
            Distribution::Uniform(-1.0, 1.0),
            &device,
        );
        // Warm-up: first call allocates buffers / spins up the thread pool.
        let _ = model.forward(x.clone()).logits.into_data();
        let start = Instant::now();
        for _ in 0..iters {
            // into_data() waits for the result, so the timing covers the whole forward.
            let _ = model.forward(x.clone()).logits.into_data();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{}: batch {batch}, {iters} iters, {:.3} s/batch, {:.2} images/s",
            backbone.label(),
            secs / iters as f64,
            (batch * iters) as f64 / secs
        );
    }
}

fn time_fid() {
    let (n, d) = (2500, 2048);
    // Deterministic pseudo-random features (LCG), no RNG dependency needed.
    let mut state = 1u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let a: Vec<f32> = (0..n * d).map(|_| next()).collect();
    let b: Vec<f32> = (0..n * d).map(|_| next() * 1.1).collect();
    let start = Instant::now();
    let (sa, sb) = match (
        FidStatistics::from_features(&a, n, d),
        FidStatistics::from_features(&b, n, d),
    ) {
        (Ok(sa), Ok(sb)) => (sa, sb),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("statistics failed: {e}");
            return;
        }
    };
    let stats_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    match frechet_distance(&sa, &sb) {
        Ok(f) => println!(
            "FID d={d}: statistics of 2×{n} rows {stats_s:.2} s, distance {:.2} s (fid = {:.4})",
            start.elapsed().as_secs_f64(),
            f.fid
        ),
        Err(e) => eprintln!("FID failed: {e}"),
    }
}
