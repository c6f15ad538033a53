//! Reading the COCO 2014 captions and instances files and the VisDial files.
//!
//! Both are parsed with serde straight from a buffered reader into the few fields we need:
//! unknown keys (`info`, `licenses`, `coco_url`, VisDial's 100 `answer_options` per round…) are
//! skipped without being materialised, so the ≈1 GB `visdial_1.0_train.json` is read in one pass
//! with memory bounded by the question/answer pools and the dialogues' indices.

use crate::error::{IngestError, Result};
use serde::Deserialize;
use std::io::BufReader;
use std::path::{Component, Path};

#[derive(Debug, Deserialize)]
pub struct CocoFile {
    pub images: Vec<CocoImage>,
    pub annotations: Vec<CocoAnnotation>,
}

#[derive(Debug, Deserialize)]
pub struct CocoImage {
    pub id: i64,
    pub file_name: String,
    #[serde(default)]
    pub width: Option<i64>,
    #[serde(default)]
    pub height: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct CocoAnnotation {
    pub image_id: i64,
    pub caption: String,
}

/// A COCO instances file (`instances_train2014.json`), reduced to ids, categories and boxes:
/// the `segmentation` polygons and masks, most of the ≈450 MB of train2014's, are skipped unread.
#[derive(Debug, Deserialize)]
pub struct InstancesFile {
    pub images: Vec<InstancesImage>,
    pub annotations: Vec<InstanceAnnotation>,
    pub categories: Vec<InstanceCategory>,
}

#[derive(Debug, Deserialize)]
pub struct InstancesImage {
    pub id: i64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct InstanceAnnotation {
    pub id: i64,
    pub image_id: i64,
    /// Wider than a category id, so that an out-of-range one is reported with its annotation.
    pub category_id: i64,
    /// `[x, y, width, height]` in source pixels.
    pub bbox: [f64; 4],
}

#[derive(Debug, Deserialize)]
pub struct InstanceCategory {
    pub id: i32,
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub struct VisdialFile {
    pub version: VersionTag,
    pub split: String,
    pub data: VisdialData,
}

/// VisDial writes the version as a string ("1.0"); accept a bare number too.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum VersionTag {
    Text(String),
    Number(f64),
}

impl VersionTag {
    pub fn as_string(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Number(n) => format!("{n:.1}"),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct VisdialData {
    pub questions: Vec<String>,
    pub answers: Vec<String>,
    pub dialogs: Vec<VisdialDialog>,
}

#[derive(Debug, Deserialize)]
pub struct VisdialDialog {
    pub image_id: i64,
    pub caption: String,
    pub dialog: Vec<VisdialRound>,
}

#[derive(Debug, Deserialize)]
pub struct VisdialRound {
    pub question: i64,
    /// Absent in the last round of v1.0 test dialogues.
    #[serde(default)]
    pub answer: Option<i64>,
}

/// Parses a JSON file into `T`, streaming from disk; errors name the file, line and column.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let file = std::fs::File::open(path).map_err(|e| IngestError::io(path, e))?;
    let reader = BufReader::with_capacity(1 << 20, file);
    serde_json::from_reader(reader).map_err(|e| {
        if e.is_io() {
            IngestError::io(path, std::io::Error::other(e.to_string()))
        } else {
            let message = e.to_string();
            // serde_json appends " at line L column C"; we print position ourselves.
            let message = match message.rfind(" at line ") {
                Some(i) => message[..i].to_string(),
                None => message,
            };
            IngestError::Json {
                path: path.to_path_buf(),
                message,
                line: e.line(),
                column: e.column(),
            }
        }
    })
}

/// True when `name` is a plain relative path that stays inside its root: no `..`, no absolute
/// path, no drive prefix. Such names are never opened.
pub fn is_contained(name: &str) -> bool {
    let path = Path::new(name);
    !name.is_empty()
        && !name.contains('\0')
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && path.components().any(|c| matches!(c, Component::Normal(_)))
}

/// Collapses runs of white space (including newlines) to one space and trims the ends; unicode
/// is kept as is. Returns the text and whether it changed.
pub fn normalise_whitespace(text: &str) -> (String, bool) {
    let normalised = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let changed = normalised != text;
    (normalised, changed)
}

/// Restores the `?` VisDial strips from questions (without doubling one already there).
pub fn restore_question_mark(question: &str) -> String {
    let (q, _) = normalise_whitespace(question);
    if q.ends_with('?') || q.is_empty() {
        q
    } else {
        format!("{q}?")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containment() {
        assert!(is_contained("COCO_train2014_000000000009.jpg"));
        assert!(is_contained("sub/dir/x.jpg"));
        assert!(!is_contained("../x.jpg"));
        assert!(!is_contained("a/../../x.jpg"));
        assert!(!is_contained("/etc/passwd"));
        assert!(!is_contained(""));
        assert!(!is_contained("."));
    }

    #[test]
    fn whitespace_and_questions() {
        assert_eq!(
            normalise_whitespace("  A man\n riding a  horse. \n"),
            ("A man riding a horse.".into(), true)
        );
        assert_eq!(
            normalise_whitespace("Café crème"),
            ("Café crème".into(), false)
        );
        assert_eq!(restore_question_mark("is it sunny"), "is it sunny?");
        assert_eq!(restore_question_mark("is it sunny?"), "is it sunny?");
    }

    #[test]
    fn json_errors_name_file_and_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("captions_train2014.json");
        std::fs::write(
            &path,
            "{\"images\": [\n{\"id\": 1, \"file_name\": \"a.jpg\"},\n{\"id\": \"x\"",
        )
        .unwrap();
        let err = read_json::<CocoFile>(&path).unwrap_err().to_string();
        assert!(err.contains("captions_train2014.json"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }
}
