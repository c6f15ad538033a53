//! Throughput of the Inception scorer (`chatpainter bench eval`): images per second through
//! preprocessing (resize to 299) and the network, with random weights (speed does not depend
//! on the values). The device is a parameter so that other backends can be timed the same way.

use std::time::Instant;

use burn::tensor::Device;

use crate::error::Result;
use crate::preprocess::ImageBatch;
use crate::runner::InceptionRunner;
use crate::score::BackboneChoice;

/// Side of the benchmark's input images (Stage-I output size).
pub const BENCH_IMAGE_SIZE: usize = 64;

/// Images per second for `choice` on `device`: one warm-up batch, then `batches` timed batches
/// of `batch` 64×64 images.
///
/// # Errors
/// Preprocessing or tensor read-back failures.
pub fn inception_images_per_second(
    choice: BackboneChoice,
    device: &Device,
    batch: usize,
    batches: usize,
) -> Result<f64> {
    let config = choice.config();
    let model = config.init(device);
    let mut runner =
        InceptionRunner::from_model(model, config.backbone, choice.preprocess(), device)?;
    let s = BENCH_IMAGE_SIZE;
    let pixels: Vec<u8> = (0..batch * s * s * 3)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let images = ImageBatch::U8Nhwc {
        data: &pixels,
        n: batch,
        height: s,
        width: s,
    };
    runner.push(&images)?;
    let start = Instant::now();
    for _ in 0..batches {
        runner.push(&images)?;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    Ok((batch * batches) as f64 / secs)
}
