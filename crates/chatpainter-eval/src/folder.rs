//! Scoring a folder of images (`chatpainter eval-folder`): the same scorer, preprocessing and
//! `metrics.json` shape as the eval stage, so other models' outputs (or the stage's own
//! `eval/images/`) are scored the same way.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use chatpainter_artifacts::Progress;

use crate::error::{EvalError, Result};
use crate::pictures::read_rgb;
use crate::score::{FidReference, ScoreSettings, Scorer};
use chatpainter_formats::metrics::MetricsFile;

/// Image files directly inside `dir` (`.png`, `.jpg`, `.jpeg`, any case), sorted by name.
///
/// # Errors
/// `dir` unreadable, or holding no image.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| EvalError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| EvalError::io(dir, e))?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if path.is_file() && matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg")) {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(EvalError::Config(format!(
            "{}: no .png / .jpg images in this folder",
            dir.display()
        )));
    }
    Ok(files)
}

/// Scores every image of `dir`; FID needs `fid_reference` (an `.npz` with `mu`, `sigma`).
///
/// # Errors
/// Unreadable images (named), a bad weights or reference file.
pub fn score_folder(
    dir: &Path,
    settings: &ScoreSettings,
    fid_reference: Option<&Path>,
    batch_size: usize,
    device: &Device,
    progress: &dyn Progress,
) -> Result<MetricsFile> {
    let files = list_images(dir)?;
    let reference = match fid_reference {
        Some(p) => FidReference::from_npz(p)?,
        None => FidReference::Missing("no FID reference statistics given (--fid-reference)".into()),
    };
    let mut scorer = Scorer::new(settings, device)?;
    progress.start("scoring images", files.len() as u64);
    for chunk in files.chunks(batch_size.max(1)) {
        let images = chunk
            .iter()
            .map(|p| read_rgb(p))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&image::RgbImage> = images.iter().collect();
        scorer.push(&refs)?;
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    let (inception_score, fid) = scorer.finish(&reference);
    Ok(MetricsFile {
        protocol: scorer.protocol(files.len()),
        inception_score,
        fid,
        scenes: None,
    })
}
