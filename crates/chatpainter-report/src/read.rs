//! Tolerant readers for the files the report shows.
//!
//! The report is a viewer written alongside the stages it views, so its readers accept what they
//! do not know: unknown fields are ignored, missing fields are `None`, and a torn last line of a
//! metrics file (a trainer still running) is skipped and counted. A file that cannot be read at
//! all is an error naming it; the page builder turns that into a warning on the page instead of
//! failing the whole report.

use crate::ReportError;
use chatpainter_formats::metrics::MetricsFile;
use chatpainter_formats::quality::QualityReport;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn read_bytes(path: &Path) -> Result<Vec<u8>, ReportError> {
    std::fs::read(path).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ReportError> {
    let bytes = read_bytes(path)?;
    serde_json::from_slice(&bytes).map_err(|source| ReportError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads `eval/metrics.json` (the format's own type, tolerant of other versions).
///
/// # Errors
/// [`ReportError::Io`] or [`ReportError::Json`] naming the file.
pub fn read_eval_metrics(path: &Path) -> Result<MetricsFile, ReportError> {
    read_json(path)
}

/// Reads `ingest/quality.json`.
///
/// # Errors
/// [`ReportError::Io`] or [`ReportError::Json`] naming the file.
pub fn read_quality(path: &Path) -> Result<QualityReport, ReportError> {
    read_json(path)
}

/// Every numeric field of a `metrics.jsonl`, as one series per field name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricSeries {
    /// Field name → (step, value), in file order.
    pub series: BTreeMap<String, Vec<(f64, f64)>>,
    /// Lines read as metrics.
    pub lines: usize,
    /// The last metrics line's numeric fields.
    pub last: BTreeMap<String, f64>,
    /// Lines that were not a JSON object with a numeric `step`: (1-based line, why).
    pub skipped: Vec<(usize, String)>,
}

/// Reads a `metrics.jsonl` (one JSON object per step). Whatever numeric fields the lines carry
/// become series (so Stage-II's extra `d_uncond_*` terms appear without a code change); values
/// that are not finite numbers (`null`) are left out.
///
/// # Errors
/// [`ReportError::Io`] naming the file; bad lines are skipped and listed, not errors.
pub fn read_metrics(path: &Path) -> Result<MetricSeries, ReportError> {
    let bytes = read_bytes(path)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut out = MetricSeries::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let object = match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(line)
        {
            Ok(o) => o,
            Err(e) => {
                out.skipped.push((i + 1, e.to_string()));
                continue;
            }
        };
        let Some(step) = object.get("step").and_then(serde_json::Value::as_f64) else {
            out.skipped.push((i + 1, "no numeric `step`".into()));
            continue;
        };
        out.last.clear();
        for (key, value) in &object {
            if key == "step" {
                continue;
            }
            if let Some(v) = value.as_f64().filter(|v| v.is_finite()) {
                out.series.entry(key.clone()).or_default().push((step, v));
                out.last.insert(key.clone(), v);
            }
        }
        out.last.insert("step".into(), step);
        out.lines += 1;
    }
    Ok(out)
}

/// A PNG found in a stage directory, with the number its name carries (`step-000042.png` → 42,
/// `123.png` → 123) for ordering.
#[derive(Debug, Clone, PartialEq)]
pub struct PngFile {
    pub path: PathBuf,
    pub name: String,
    pub number: Option<u64>,
}

/// The `*.png` files of `dir` (not recursive), ordered by the number in their name, then by
/// name. A missing folder is an empty list: the stage simply wrote none.
///
/// # Errors
/// [`ReportError::Io`] naming the folder when it exists but cannot be listed.
pub fn list_pngs(dir: &Path) -> Result<Vec<PngFile>, ReportError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ReportError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ReportError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Temporaries of an atomic write in progress start with a dot.
        if name.starts_with('.') || !name.ends_with(".png") {
            continue;
        }
        let stem = name.trim_end_matches(".png");
        let digits: String = stem
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        files.push(PngFile {
            path: entry.path(),
            number: digits.parse().ok(),
            name,
        });
    }
    files.sort_by(|a, b| a.number.cmp(&b.number).then_with(|| a.name.cmp(&b.name)));
    Ok(files)
}

/// What the report knows about a per-turn strip beyond its picture: an optional sidecar
/// `<image_id>.json` next to the PNG with the caption and the dialogue turns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StripText {
    pub caption: Option<String>,
    pub turns: Vec<String>,
}

/// Reads a strip's sidecar if there is one: `caption` (string) and `turns` / `dialogue` / `dialog`
/// (strings, or objects with `question` and `answer`). Anything else in it is ignored.
///
/// # Errors
/// [`ReportError::Io`] or [`ReportError::Json`] naming the sidecar when it exists but is unreadable.
pub fn read_strip_text(png: &Path) -> Result<StripText, ReportError> {
    let path = png.with_extension("json");
    if !path.exists() {
        return Ok(StripText::default());
    }
    let value: serde_json::Value = read_json(&path)?;
    let caption = value
        .get("caption")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string);
    let turns = ["turns", "dialogue", "dialog"]
        .iter()
        .find_map(|k| value.get(*k).and_then(serde_json::Value::as_array))
        .map(|turns| {
            turns
                .iter()
                .filter_map(|t| match t {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Object(o) => {
                        let q = o.get("question").and_then(serde_json::Value::as_str);
                        let a = o.get("answer").and_then(serde_json::Value::as_str);
                        match (q, a) {
                            (Some(q), Some(a)) => Some(format!("{q} {a}")),
                            (Some(q), None) => Some(q.to_string()),
                            (None, Some(a)) => Some(a.to_string()),
                            (None, None) => None,
                        }
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(StripText { caption, turns })
}

/// Width and height of a PNG from its header, or `None` when the bytes are not a PNG.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
    if bytes.len() < 24 || bytes[..8] != SIGNATURE || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let h = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    Some((w, h))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn metrics_keep_unknown_numeric_fields_and_skip_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(
            &path,
            "{\"step\":1,\"d_loss\":1.5,\"note\":\"x\"}\n\
             {\"step\":2,\"d_loss\":1.0,\"d_uncond_real\":0.3,\"kl\":null}\n\
             {\"step\":3,\"d_lo",
        )
        .unwrap();
        let m = read_metrics(&path).unwrap();
        assert_eq!(m.lines, 2);
        assert_eq!(m.series["d_loss"], vec![(1.0, 1.5), (2.0, 1.0)]);
        assert_eq!(m.series["d_uncond_real"], vec![(2.0, 0.3)]);
        assert!(!m.series.contains_key("kl") && !m.series.contains_key("note"));
        assert_eq!(m.skipped.len(), 1);
        assert_eq!(m.skipped[0].0, 3);
        assert_eq!(m.last["step"], 2.0);
    }

    #[test]
    fn eval_metrics_ignore_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        std::fs::write(
            &path,
            r#"{"protocol": {"backbone": "torchvision", "images": 16, "extra": [1]},
                "inception_score": {"available": true, "mean": 1.5, "std": 0.1, "reason": null},
                "fid": {"available": false, "value": null, "reason": "no weights"},
                "new_metric": {}}"#,
        )
        .unwrap();
        let m = read_eval_metrics(&path).unwrap();
        assert_eq!(m.protocol.backbone, "torchvision");
        assert_eq!(m.protocol.images, 16);
        assert_eq!(m.protocol.rows()[5], ("seed", "0".to_string()));
        assert_eq!(m.inception_score.mean, Some(1.5));
        assert!(!m.fid.available);
        std::fs::write(&path, "{").unwrap();
        let err = read_eval_metrics(&path).unwrap_err().to_string();
        assert!(err.contains("metrics.json"), "{err}");
    }

    #[test]
    fn pngs_are_ordered_by_their_number() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "step-10.png",
            "step-9.png",
            ".step-11.png.1.tmp",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let names: Vec<String> = list_pngs(dir.path())
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, vec!["step-9.png", "step-10.png"]);
        assert!(list_pngs(&dir.path().join("absent")).unwrap().is_empty());
    }

    #[test]
    fn png_header_size() {
        let mut header = vec![
            0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n', 0, 0, 0, 13,
        ];
        header.extend_from_slice(b"IHDR");
        header.extend_from_slice(&640u32.to_be_bytes());
        header.extend_from_slice(&66u32.to_be_bytes());
        assert_eq!(png_size(&header), Some((640, 66)));
        assert_eq!(png_size(b"GIF89a...................."), None);
    }
}
