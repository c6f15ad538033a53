//! MS COCO 2014 captions + VisDial dialogues + images → validated Parquet.
//!
//! [`catalog`] reads and joins the JSON files, quarantining bad records; [`pipeline`] decodes the
//! images (in parallel, one row group at a time), writes the tables and the quality report whose
//! formats live in `chatpainter_formats::{ingested, quality}`, and merges shards. [`objects`] joins
//! COCO instance annotations to the kept images (`objects.parquet`). [`synth`] writes a synthetic
//! dataset in the real file formats, for CI and benchmarks. No Burn here.

pub mod catalog;
pub mod config;
pub mod error;
pub mod images;
pub mod objects;
pub mod pipeline;
pub mod sources;
pub mod synth;

pub use config::{CocoSource, IngestConfig, VisdialSource};
pub use error::{IngestError, Result};
pub use pipeline::IngestOutput;

use std::path::Path;

/// Fingerprint of the raw inputs: the content hash of every JSON file, and the name, size and
/// modification time of every file in the image folders (hashing 20 GB of JPEGs on every run
/// would cost more than it protects).
pub fn inputs_digest(config: &IngestConfig, data_root: &Path) -> Result<String> {
    let mut lines = Vec::new();
    let mut folders = Vec::new();
    for c in &config.coco {
        let p = data_root.join(&c.captions);
        lines.push(format!(
            "{} {}",
            c.captions,
            chatpainter_artifacts::sha256_file(&p)?
        ));
        if let Some(instances) = &c.instances {
            let p = data_root.join(instances);
            lines.push(format!(
                "{instances} {}",
                chatpainter_artifacts::sha256_file(&p)?
            ));
        }
        folders.push(c.images.clone());
    }
    for v in &config.visdial {
        let p = data_root.join(&v.file);
        lines.push(format!(
            "{} {}",
            v.file,
            chatpainter_artifacts::sha256_file(&p)?
        ));
        folders.extend(v.images.clone());
    }
    for folder in folders {
        let dir = data_root.join(&folder);
        let mut entries = Vec::new();
        if dir.is_dir() {
            for entry in std::fs::read_dir(&dir).map_err(|e| IngestError::io(&dir, e))? {
                let entry = entry.map_err(|e| IngestError::io(&dir, e))?;
                let meta = entry
                    .metadata()
                    .map_err(|e| IngestError::io(entry.path(), e))?;
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                entries.push(format!(
                    "{} {} {mtime}",
                    entry.file_name().to_string_lossy(),
                    meta.len()
                ));
            }
        }
        entries.sort_unstable();
        lines.push(format!(
            "{folder}/ {}",
            chatpainter_artifacts::sha256_bytes(entries.join("\n").as_bytes())
        ));
    }
    Ok(chatpainter_artifacts::sha256_bytes(
        lines.join("\n").as_bytes(),
    ))
}
