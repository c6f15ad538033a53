//! What an embed run reports: counts per kind of text, truncations against the encoders'
//! limits, and the images quarantined with their reasons.

use crate::cache::FillStats;
use chatpainter_model::text::charcnn::FileDigest;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// An image left out of `embeddings.parquet`, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quarantined {
    pub image_id: i64,
    pub split: String,
    pub file_name: String,
    /// The record field concerned, e.g. `captions`.
    pub field: String,
    /// The file that could not serve it.
    pub source: PathBuf,
    pub reason: String,
}

/// What a build did, for the manifest and the console.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EmbedReport {
    /// Images written to `embeddings.parquet`.
    pub images: usize,
    pub captions: FillStats,
    pub dialogues: FillStats,
    pub turns: FillStats,
    /// Turns whose text was empty (nothing to encode): left out of `turns`.
    pub empty_turns_skipped: usize,
    /// Token limits of the caption and dialogue encoders (`None`: never truncates).
    #[serde(default)]
    pub caption_max_tokens: Option<usize>,
    #[serde(default)]
    pub dialogue_max_tokens: Option<usize>,
    /// Precomputed caption files with their sha256 (char-CNN-RNN); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caption_files: Vec<FileDigest>,
    /// Images left out, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<Quarantined>,
}

impl EmbedReport {
    pub fn summary(&self) -> String {
        let line = |name: &str, s: &FillStats| {
            format!(
                "  {name:<10} {:>8} distinct texts: {:>8} reused from cache, {:>8} encoded ({} truncated)\n",
                s.distinct, s.reused, s.encoded, s.truncated
            )
        };
        let limit = |n: Option<usize>| match n {
            Some(n) => format!("first {n} tokens kept"),
            None => "no limit".to_string(),
        };
        let mut out = format!(
            "embed: {} images\n{}{}{}  empty turns skipped: {}\n  truncation: captions {}, dialogues and turns {}\n",
            self.images,
            line("captions", &self.captions),
            line("dialogues", &self.dialogues),
            line("turns", &self.turns),
            self.empty_turns_skipped,
            limit(self.caption_max_tokens),
            limit(self.dialogue_max_tokens),
        );
        if !self.quarantined.is_empty() {
            out.push_str(&format!(
                "  quarantined: {} images (first: image {} {}: {})\n",
                self.quarantined.len(),
                self.quarantined[0].image_id,
                self.quarantined[0].field,
                self.quarantined[0].reason
            ));
        }
        out
    }
}
