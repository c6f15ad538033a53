//! Quarantine and the quality report: every dropped, repaired or converted record, with its reason.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Why a record was dropped, repaired or converted. The code names are stable: they appear in
/// `issues.parquet` and `quality.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    // Dropped.
    ImageMissing,
    ImageUndecodable,
    PathEscapesRoot,
    DuplicateImageId,
    NoCaptions,
    EmptyCaption,
    CaptionForUnknownImage,
    DialogIndexOutOfRange,
    DialogEmpty,
    DialogWithoutCaptions,
    CaptionsWithoutDialog,
    DuplicateDialog,
    DialogSuperseded,
    /// An instance annotation whose `image_id` is not in its file's `images[]`.
    ObjectForUnknownImage,
    /// Instance annotations of an image that no captions file of the split lists.
    ObjectsWithoutCaptions,
    /// An instance box of zero or negative size, or outside its image by more than a pixel.
    ObjectBoxInvalid,
    // Repaired: kept, with a value corrected.
    SizeMismatch,
    // Converted: valid input that needed a conversion to 8-bit RGB.
    Grayscale,
    Cmyk,
    SixteenBit,
    Alpha,
    PngNamedJpeg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Dropped,
    Repaired,
    Converted,
}

impl Reason {
    pub fn action(self) -> Action {
        use Reason::*;
        match self {
            SizeMismatch => Action::Repaired,
            Grayscale | Cmyk | SixteenBit | Alpha | PngNamedJpeg => Action::Converted,
            _ => Action::Dropped,
        }
    }

    pub fn code(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// One row of `issues.parquet`: which file, which record, which field, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Issue {
    /// Source file (relative to the data root).
    pub file: String,
    /// Location inside it: `images[12]`, `dialogs[3].dialog[7].answer`, or an image path.
    pub record: String,
    pub field: String,
    pub image_id: Option<i64>,
    pub reason: Reason,
    pub detail: String,
}

impl Issue {
    pub fn new(
        file: &str,
        record: impl Into<String>,
        field: &str,
        image_id: Option<i64>,
        reason: Reason,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_string(),
            record: record.into(),
            field: field.to_string(),
            image_id,
            reason,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} field `{}`: {} ({})",
            self.file,
            self.record,
            self.field,
            self.detail,
            self.reason.code()
        )
    }
}

/// Per input file: records read and kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileCounts {
    pub kind: String,
    pub records_in: u64,
    pub records_used: u64,
}

/// Per split: candidate images and usable records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SplitCounts {
    pub images_in: u64,
    pub records_out: u64,
    pub dropped: u64,
}

/// `quality.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QualityReport {
    pub files: BTreeMap<String, FileCounts>,
    pub splits: BTreeMap<String, SplitCounts>,
    /// Count per reason code.
    pub reasons: BTreeMap<String, u64>,
    /// Captions whose surrounding whitespace was normalised (not listed one by one).
    pub captions_whitespace_normalised: u64,
    /// The first few issues per reason, for people; `issues.parquet` has them all.
    pub examples: BTreeMap<String, Vec<String>>,
}

const EXAMPLES_PER_REASON: usize = 5;

impl QualityReport {
    pub fn count_issues(&mut self, issues: &[Issue]) {
        for issue in issues {
            let code = issue.reason.code();
            *self.reasons.entry(code.clone()).or_default() += 1;
            let examples = self.examples.entry(code).or_default();
            if examples.len() < EXAMPLES_PER_REASON {
                examples.push(issue.to_string());
            }
        }
    }

    /// Adds another shard's report into this one.
    pub fn merge(&mut self, other: &QualityReport) {
        for (k, v) in &other.files {
            let e = self.files.entry(k.clone()).or_default();
            e.kind.clone_from(&v.kind);
            // Every shard reads every source file whole, so records_in is the same in each.
            e.records_in = v.records_in;
            e.records_used += v.records_used;
        }
        for (k, v) in &other.splits {
            let e = self.splits.entry(k.clone()).or_default();
            // Every shard sees every listed image; only the records are split between shards.
            e.images_in = v.images_in;
            e.records_out += v.records_out;
            e.dropped = e.images_in.saturating_sub(e.records_out);
        }
        for (k, v) in &other.reasons {
            *self.reasons.entry(k.clone()).or_default() += v;
        }
        self.captions_whitespace_normalised += other.captions_whitespace_normalised;
        for (k, v) in &other.examples {
            let e = self.examples.entry(k.clone()).or_default();
            for x in v {
                if e.len() < EXAMPLES_PER_REASON {
                    e.push(x.clone());
                }
            }
        }
    }

    /// The printed summary.
    pub fn summary(&self) -> String {
        let mut s = String::from(
            "ingest quality report\n  per split (images in -> records out, dropped):\n",
        );
        for (split, c) in &self.splits {
            s += &format!(
                "    {split:<14} {:>8} -> {:>8}  dropped {}\n",
                c.images_in, c.records_out, c.dropped
            );
        }
        s += "  per file (records in, used):\n";
        for (file, c) in &self.files {
            s += &format!(
                "    {file} [{}]: {} in, {} used\n",
                c.kind, c.records_in, c.records_used
            );
        }
        if self.reasons.is_empty() {
            s += "  no record dropped, repaired or converted\n";
        } else {
            s += "  issues by reason:\n";
            for (reason, n) in &self.reasons {
                s += &format!("    {reason:<28} {n}\n");
            }
        }
        s += &format!(
            "  captions with whitespace normalised: {}\n",
            self.captions_whitespace_normalised
        );
        s
    }
}
