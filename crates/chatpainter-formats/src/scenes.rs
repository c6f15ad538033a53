//! The synthetic dataset's ground truth: the scene vocabulary (shapes, palettes, columns, sizes),
//! `attributes.json` (one [`Scene`] per image), and the scores of generated images against it
//! ([`SceneScores`], stored in eval's `metrics.json`).

use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Shape kinds, colour and background palettes and columns: shared by the generator that draws
/// scenes (ingest's `synth`) and the scorer that reads them back (eval's `scene_score`).
pub const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
pub const COLOURS: [(&str, [u8; 3]); 7] = [
    ("red", [220, 30, 30]),
    ("green", [30, 170, 50]),
    ("blue", [30, 60, 220]),
    ("yellow", [240, 220, 30]),
    ("purple", [140, 40, 170]),
    ("orange", [250, 140, 20]),
    ("white", [245, 245, 245]),
];
pub const BACKGROUNDS: [(&str, [u8; 3]); 4] = [
    ("a blue sky", [120, 170, 235]),
    ("green grass", [70, 140, 60]),
    ("a sandy beach", [220, 200, 150]),
    ("a dark night", [25, 25, 45]),
];
pub const COLUMNS: [&str; 3] = ["left", "middle", "right"];
/// The background darkens linearly from the top row (×1) to the bottom (×(1 − this)).
pub const SHADE_DROP: f32 = 0.25;
/// Object radius as a fraction of the shorter image side.
pub const LARGE_RADIUS: f32 = 0.16;
pub const SMALL_RADIUS: f32 = 0.09;

/// Ground truth of one object in a scene.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Object {
    pub shape: String,
    pub colour: String,
    /// `left`, `middle` or `right`.
    pub position: String,
    pub large: bool,
}

/// The ground-truth file in the dataset folder: a JSON array of [`Scene`].
pub const ATTRIBUTES_FILE: &str = "attributes.json";

/// Ground truth of one image, written to `attributes.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub image_id: i64,
    pub split: String,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
    pub background: String,
    pub objects: Vec<Object>,
}

/// Reads `attributes.json`.
///
/// # Errors
/// IO and parse errors naming the file.
pub fn read_attributes(path: &Path) -> Result<Vec<Scene>> {
    crate::error::read_json(path)
}

/// Which text states an attribute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Visibility {
    /// The captions say it (shape kinds).
    CaptionVisible,
    /// Only the dialogue says it.
    #[default]
    DialogueOnly,
}

impl Visibility {
    /// The name stored in `metrics.json`.
    pub fn name(self) -> &'static str {
        match self {
            Self::CaptionVisible => "caption-visible",
            Self::DialogueOnly => "dialogue-only",
        }
    }
}

/// Accuracy of one attribute over a set of images.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AttributeScore {
    pub name: String,
    pub visibility: Visibility,
    pub correct: usize,
    pub total: usize,
    pub accuracy: f64,
    /// Accuracy of a random guess drawn from the ground truth's distribution (Σ p²).
    pub chance: f64,
    /// Accuracy of always answering the most frequent value (max p): what a generator that
    /// ignores the text but draws the common case gets.
    pub majority: f64,
    /// `(truth, read, count)` for every wrong reading, most frequent first.
    pub confusions: Vec<(String, String, usize)>,
}

/// Scores of a set of readings against their scenes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SceneScores {
    pub scorer: String,
    pub images: usize,
    pub attributes: Vec<AttributeScore>,
}

impl SceneScores {
    pub fn get(&self, name: &str) -> Option<&AttributeScore> {
        self.attributes.iter().find(|a| a.name == name)
    }
}

/// A plain-text table: one row per attribute, one accuracy column per scored set, then the
/// chance and majority baselines (of the first set).
pub fn scene_table(columns: &[(&str, &SceneScores)]) -> String {
    use std::fmt::Write;
    let mut out = format!("{:<13} {:<16}", "attribute", "stated by");
    for (name, _) in columns {
        let _ = write!(out, " {name:>26}");
    }
    out.push_str("   chance  majority\n");
    let Some((_, first)) = columns.first() else {
        return out;
    };
    for (row, a) in first.attributes.iter().enumerate() {
        let stated = match a.visibility {
            Visibility::CaptionVisible => "caption",
            Visibility::DialogueOnly => "dialogue only",
        };
        let _ = write!(out, "{:<13} {stated:<16}", a.name);
        for (_, scores) in columns {
            match scores.attributes.get(row) {
                Some(b) => {
                    let cell = format!("{:.1} % ({}/{})", 100.0 * b.accuracy, b.correct, b.total);
                    let _ = write!(out, " {cell:>26}");
                }
                None => {
                    let _ = write!(out, " {:>26}", "-");
                }
            }
        }
        let _ = writeln!(
            out,
            "   {:>5.1} %   {:>5.1} %",
            100.0 * a.chance,
            100.0 * a.majority
        );
    }
    out
}
