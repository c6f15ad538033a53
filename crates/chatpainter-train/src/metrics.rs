//! Observability: one JSON object per optimiser step appended to `metrics.jsonl`, and sample
//! sheets (`samples/step-000000042.png`: a grid of real crops next to what G makes of the same
//! conditions at fixed noise; Stage-II adds the Stage-I 64×64 image, upscaled, between them).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// File name of the per-step metrics in the stage directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Sub-directory of the sample sheets.
pub const SAMPLES_DIR: &str = "samples";

/// One line of `metrics.jsonl`. Losses are the terms StackGAN-Pytorch's trainer logs:
/// `d_loss = d_real + (d_fake + d_wrong)/2`, `g_loss = g_adv + kl_coeff·kl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// 1-based: the number of optimiser steps done including this one.
    pub step: u64,
    pub epoch: u64,
    pub d_loss: f64,
    pub d_real: f64,
    pub d_wrong: f64,
    pub d_fake: f64,
    /// Stage-II unconditional-head terms (absent in Stage-I).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d_uncond_real: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d_uncond_fake: Option<f64>,
    pub g_loss: f64,
    pub g_adv: f64,
    pub kl: f64,
    pub lr_g: f64,
    pub lr_d: f64,
    pub step_ms: f64,
    pub images_per_s: f64,
    /// Data-parallel runs: milliseconds of this step spent averaging gradients and losses over
    /// the ranks (host copies and MPI all-reduce).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_ms: Option<f64>,
    /// The auxiliary object loss (unweighted) on the real images (D's) and on the fakes (G's),
    /// when `object_loss` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d_object: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub g_object: Option<f64>,
    /// The CA on this batch: mean |μ|, mean σ, and the caption's and the dialogue's share of
    /// μ (root mean square of each part's contribution to μ's pre-activation). Absent in files
    /// written before these were logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_mu_abs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_sigma: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_caption_rms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_dialogue_rms: Option<f64>,
}

/// Appends metric lines, flushing each.
pub struct MetricsWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsWriter {
    /// Opens `stage_dir/metrics.jsonl` for appending after dropping every line of a step later
    /// than `keep_until` (those steps will be trained again after a resume).
    ///
    /// # Errors
    /// [`TrainError::Io`] naming the file.
    pub fn open(stage_dir: &Path, keep_until: u64) -> Result<Self, TrainError> {
        let path = stage_dir.join(METRICS_FILE);
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<StepMetrics>(l).is_ok_and(|m| m.step <= keep_until)
                })
                .flat_map(|l| [l, "\n"])
                .collect();
            if kept.len() != text.len() {
                chatpainter_artifacts::write_atomic(&path, kept.as_bytes())?;
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        Ok(Self { path, file })
    }

    /// Appends one line.
    ///
    /// # Errors
    /// [`TrainError::Io`] naming the file.
    pub fn append(&mut self, m: &StepMetrics) -> Result<(), TrainError> {
        let mut line = serde_json::to_string(m)
            .map_err(|e| TrainError::Internal(format!("serialising metrics: {e}")))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| TrainError::io(&self.path, e))
    }
}

/// Reads a metrics file back.
///
/// # Errors
/// [`TrainError::Io`] or [`TrainError::Data`] naming the file and line.
pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| TrainError::Data(format!("{}: line {}: {e}", path.display(), i + 1)))
        })
        .collect()
}

/// Gap between tiles, in pixels.
const GAP: usize = 2;
/// Samples per row of a sheet.
const SAMPLES_PER_ROW: usize = 4;

/// One column of a sample sheet: `n` CHW images of side `side`, values in `[-1, 1]`.
#[derive(Debug, Clone, Copy)]
pub struct SheetColumn<'a> {
    pub side: usize,
    pub values: &'a [f32],
}

/// Encodes a sample sheet as PNG: per sample one tile per column (e.g. `[real | fake]`), four
/// samples per row, on a grey ground; tiles are as large as the largest column's images and
/// smaller images are upscaled (nearest), so Stage-I and Stage-II results sit side by side.
///
/// # Errors
/// [`TrainError::Internal`] on an encoder failure or mismatched lengths.
pub fn sample_sheet_png(columns: &[SheetColumn<'_>], n: usize) -> Result<Vec<u8>, TrainError> {
    for c in columns {
        if c.side == 0 || c.values.len() != n * 3 * c.side * c.side {
            return Err(TrainError::Internal(format!(
                "sample sheet: {n} images of side {} but {} values",
                c.side,
                c.values.len()
            )));
        }
    }
    let Some(tile_side) = columns.iter().map(|c| c.side).max().filter(|_| n > 0) else {
        return Err(TrainError::Internal("sample sheet: nothing to draw".into()));
    };
    let per = columns.len();
    let cols = SAMPLES_PER_ROW.min(n) * per;
    let rows = n.div_ceil(SAMPLES_PER_ROW);
    let tile = tile_side + GAP;
    let (w, h) = (cols * tile + GAP, rows * tile + GAP);
    let mut img = image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb([128, 128, 128]));
    for k in 0..n {
        for (which, column) in columns.iter().enumerate() {
            let side = column.side;
            let px = 3 * side * side;
            let col = (k % SAMPLES_PER_ROW) * per + which;
            let (ox, oy) = (GAP + col * tile, GAP + (k / SAMPLES_PER_ROW) * tile);
            let chw = &column.values[k * px..(k + 1) * px];
            for y in 0..tile_side {
                for x in 0..tile_side {
                    let (sx, sy) = (x * side / tile_side, y * side / tile_side);
                    let mut rgb = [0u8; 3];
                    for (c, v) in rgb.iter_mut().enumerate() {
                        let f = chw[(c * side + sy) * side + sx];
                        // (x + 1)·127.5, as the reference's PNG output.
                        *v = ((f + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
                    }
                    img.put_pixel((ox + x) as u32, (oy + y) as u32, image::Rgb(rgb));
                }
            }
        }
    }
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| TrainError::Internal(format!("PNG encoding: {e}")))?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheet_places_real_left_of_fake() {
        const CROP_SIZE: usize = 64;
        let px = 3 * CROP_SIZE * CROP_SIZE;
        let real = vec![1.0f32; 5 * px];
        let fake = vec![-1.0f32; 5 * px];
        let col = |values| SheetColumn {
            side: CROP_SIZE,
            values,
        };
        let png = sample_sheet_png(&[col(&real), col(&fake)], 5).expect("png");
        let img = image::load_from_memory(&png).expect("decode").to_rgb8();
        let tile = CROP_SIZE + GAP;
        assert_eq!(
            img.dimensions(),
            ((8 * tile + GAP) as u32, (2 * tile + GAP) as u32)
        );
        assert_eq!(img.get_pixel(GAP as u32, GAP as u32).0, [255, 255, 255]);
        assert_eq!(img.get_pixel((GAP + tile) as u32, GAP as u32).0, [0, 0, 0]);
        assert!(sample_sheet_png(&[col(&real), col(&fake)], 4).is_err());
    }

    #[test]
    fn small_columns_are_upscaled_to_the_tile() {
        let big = vec![1.0f32; 3 * 8 * 8];
        let mut small = vec![-1.0f32; 3 * 2 * 2];
        small[0] = 1.0; // top-left pixel, red channel
        let png = sample_sheet_png(
            &[
                SheetColumn {
                    side: 8,
                    values: &big,
                },
                SheetColumn {
                    side: 2,
                    values: &small,
                },
            ],
            1,
        )
        .expect("png");
        let img = image::load_from_memory(&png).expect("decode").to_rgb8();
        let ox = (GAP + 8 + GAP) as u32;
        assert_eq!(img.get_pixel(ox + 3, GAP as u32 + 3).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(ox + 4, GAP as u32 + 3).0, [0, 0, 0]);
    }

    #[test]
    fn reopening_drops_steps_after_the_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = |step| StepMetrics {
            step,
            epoch: 0,
            d_loss: 1.0,
            d_real: 0.5,
            d_wrong: 0.5,
            d_fake: 0.5,
            d_uncond_real: None,
            d_uncond_fake: None,
            g_loss: 1.0,
            g_adv: 1.0,
            kl: 0.0,
            lr_g: 2e-4,
            lr_d: 2e-4,
            step_ms: 1.0,
            images_per_s: 1.0,
            sync_ms: None,
            d_object: None,
            g_object: None,
            ca_mu_abs: None,
            ca_sigma: None,
            ca_caption_rms: None,
            ca_dialogue_rms: None,
        };
        let mut w = MetricsWriter::open(dir.path(), 0).expect("open");
        for s in 1..=5 {
            w.append(&m(s)).expect("append");
        }
        drop(w);
        let mut w = MetricsWriter::open(dir.path(), 3).expect("reopen");
        w.append(&m(4)).expect("append");
        let steps: Vec<u64> = read_metrics(&dir.path().join(METRICS_FILE))
            .expect("read")
            .iter()
            .map(|m| m.step)
            .collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
    }
}
