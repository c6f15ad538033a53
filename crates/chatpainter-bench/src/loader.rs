//! `chatpainter bench loader`: the batch preparation the training loader does, per core, and
//! the cores that keep one and eight H200s fed.

use std::time::Instant;

use chatpainter_artifacts::Xoshiro256;
use chatpainter_artifacts::{BenchRow, Stage};
use chatpainter_model::Variant;
use chatpainter_model::dataset::{
    Augment, BatchShape, Geometry, StoredImage, TrainItem, assemble_items,
};
use chatpainter_train::TrainError;

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
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|e| TrainError::Internal(format!("one-thread pool: {e}")))?;
    let mut rows = Vec::new();
    let stages = [
        (
            Stage::Stage1.name(),
            Geometry::STAGE1,
            384usize,
            H200_STAGE1_IMAGES_PER_S,
        ),
        (
            Stage::Stage2.name(),
            Geometry::STAGE2,
            64,
            H200_STAGE2_IMAGES_PER_S,
        ),
    ];
    for (stage, geometry, batch, gpu_rate) in stages {
        let mut rng = Xoshiro256::new(11, geometry.load as u64);
        let items: Vec<TrainItem> = (0..batch)
            .map(|i| {
                let rgb = synthetic_picture(geometry.load, i as u64, &mut rng);
                let image = if geometry.keeps_decoded() {
                    Ok(StoredImage::Rgb(rgb.into_raw()))
                } else {
                    chatpainter_formats::ingested::encode_png(&rgb)
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
