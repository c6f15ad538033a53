//! The `[ingest]` table of a pipeline file.

use serde::{Deserialize, Serialize};

/// One COCO 2014 captions file and the folder holding its images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CocoSource {
    /// e.g. `annotations/captions_train2014.json`, relative to `data_root`.
    pub captions: String,
    /// e.g. `train2014`, relative to `data_root`; `images[].file_name` is resolved inside it.
    pub images: String,
    /// Our split name for these images: `train` for train2014, `test` for val2014 (as the paper).
    pub split: String,
    /// Optional COCO instance annotations of the same images (e.g.
    /// `annotations/instances_train2014.json`, relative to `data_root`): a category and a box per
    /// object, written to `objects.parquet`. Without any, no objects table is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<String>,
}

/// One VisDial file. Without `images`, its dialogues attach to COCO images by id (v0.9 train/val,
/// v1.0 train re-split by the image's COCO split). With `images`, it is a source of its own
/// (v1.0 val/test, Flickr images, no COCO captions): the dialogue caption becomes the only caption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisdialSource {
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<String>,
    /// Split name for a standalone source; default `visdial-<split in the file>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// Image file name for a standalone source, `{id}` standing for the zero-padded 12-digit id;
    /// default `VisualDialog_<split in the file>2018_{id}.jpg`, as VisDial v1.0 ships them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_pattern: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Folder the source paths are relative to; `run:synth` means the run's synth stage.
    pub data_root: String,
    #[serde(default)]
    pub coco: Vec<CocoSource>,
    /// In priority order: when two files hold a dialogue for the same image, the earlier wins.
    #[serde(default)]
    pub visdial: Vec<VisdialSource>,
    /// Square sizes every image is squashed to, one image table each (76 for Stage-I, 304 for Stage-II).
    #[serde(default = "default_load_sizes")]
    pub load_sizes: Vec<u32>,
    /// Drop COCO images that have no dialogue (default when any VisDial file is configured).
    #[serde(default = "default_true")]
    pub require_dialog: bool,
    /// Any quarantined record is an error instead.
    #[serde(default)]
    pub strict: bool,
    /// Images per Parquet row group, and per decode batch.
    #[serde(default = "default_row_group")]
    pub row_group_size: usize,
}

fn default_load_sizes() -> Vec<u32> {
    vec![76, 304]
}
fn default_true() -> bool {
    true
}
fn default_row_group() -> usize {
    128
}

impl IngestConfig {
    /// Checks values that serde cannot: returns a message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.coco.is_empty() && self.visdial.iter().all(|v| v.images.is_none()) {
            return Err("ingest: no image source: add [[ingest.coco]] entries or a standalone [[ingest.visdial]] with `images`".into());
        }
        if self.load_sizes.is_empty() || self.load_sizes.iter().any(|&s| !(8..=1024).contains(&s)) {
            return Err(format!(
                "ingest.load_sizes: {:?}: need at least one size, each in 8..=1024",
                self.load_sizes
            ));
        }
        if self.row_group_size == 0 {
            return Err("ingest.row_group_size: must be at least 1".into());
        }
        let mut splits: Vec<&str> = self.coco.iter().map(|c| c.split.as_str()).collect();
        splits.sort_unstable();
        if splits.windows(2).any(|w| w[0] == w[1]) {
            return Err("ingest.coco: two captions files map to the same split".into());
        }
        for (i, c) in self.coco.iter().enumerate() {
            if !is_split_name(&c.split) {
                return Err(format!(
                    "ingest.coco[{i}].split: {:?}: use letters, digits and '-'",
                    c.split
                ));
            }
        }
        Ok(())
    }
}

pub(crate) fn is_split_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}
