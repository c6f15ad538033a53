//! The run report: one self-contained HTML page, `<run>/report/index.html`, built from whatever
//! stages of a run directory exist.
//!
//! The page reads only files (manifests, `metrics.jsonl`, sample PNGs, `quality.json`,
//! `eval/metrics.json`), never models, so this crate has no Burn and builds in seconds. Every part
//! is optional: a stage that is absent is listed as "not run", one without a manifest as
//! unfinished, and a file that cannot be read becomes a warning on the page rather than a failed
//! report, because a partial run is exactly when one wants to look at it. Images are embedded as
//! data URIs and charts as inline SVG, so the file opens from disk with nothing beside it; every
//! string taken from a file is HTML-escaped.

mod html;
mod page;
mod plot;
pub mod read;

use chatpainter_artifacts::{ArtifactError, Manifest, OutputFile, Stage, write_atomic};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The page's file name in `<run>/report/`.
pub const REPORT_FILE: &str = "index.html";

/// The `[report]` table of a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// Page title; by default "ChatPainter run `<run.name>`".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Per-turn strips shown (the first ones by image id).
    pub per_turn_strips: usize,
    /// Newest sample sheets shown per training stage.
    pub max_samples: usize,
    /// Points per training curve; longer runs are averaged into this many buckets so the page
    /// stays small.
    pub max_curve_points: usize,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            title: None,
            per_turn_strips: 4,
            max_samples: 3,
            max_curve_points: 500,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Contract { path: PathBuf, message: String },
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
}

/// What the report found in one stage folder.
#[derive(Debug, Clone)]
pub enum StageState {
    /// No folder.
    NotRun,
    /// A folder without a manifest whose lock names a live process.
    Running { pid: u32 },
    /// A folder without a manifest and nobody running it: killed, failed, or in progress elsewhere.
    Unfinished,
    /// A valid manifest.
    Finished(Box<Manifest>),
    /// A manifest that does not load (other schema version, bad JSON); the message says why.
    Invalid(String),
}

/// One stage of the run as found on disk.
#[derive(Debug, Clone)]
pub struct StageInfo {
    pub stage: Stage,
    pub dir: PathBuf,
    pub state: StageState,
    /// When the stage last started: `run_stage` writes `config.toml` first, so its mtime.
    pub started_unix: Option<u64>,
}

impl StageInfo {
    pub fn exists(&self) -> bool {
        !matches!(self.state, StageState::NotRun)
    }
}

/// The stages upstream of the report, in pipeline order, as found under `run_root`.
pub fn stages(run_root: &Path) -> Vec<StageInfo> {
    Stage::ALL
        .into_iter()
        .filter(|s| *s != Stage::Report)
        .map(|stage| {
            let dir = run_root.join(stage.name());
            let state = if !dir.is_dir() {
                StageState::NotRun
            } else if Manifest::path_in(&dir).exists() {
                match Manifest::load(&dir) {
                    Ok(m) => StageState::Finished(Box::new(m)),
                    Err(e) => StageState::Invalid(e.to_string()),
                }
            } else if let Some(pid) = chatpainter_artifacts::stage::running_pid(&dir) {
                StageState::Running { pid }
            } else {
                StageState::Unfinished
            };
            let started_unix = std::fs::metadata(dir.join("config.toml"))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            StageInfo {
                stage,
                dir,
                state,
                started_unix,
            }
        })
        .collect()
}

/// The report's upstream key: the digest of every stage manifest present. A stage folder
/// without a manifest cannot be keyed, so it gets a value that never repeats (`unfinished@<now>`)
/// and a report over an unfinished stage is always rebuilt rather than wrongly skipped.
///
/// # Errors
/// [`ReportError::Artifact`] when a manifest exists but cannot be read.
pub fn upstream_digests(run_root: &Path) -> Result<BTreeMap<String, String>, ReportError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut out = BTreeMap::new();
    for stage in stages(run_root) {
        match stage.state {
            StageState::NotRun => {}
            StageState::Finished(_) | StageState::Invalid(_) => {
                // An unreadable manifest has no content digest; it still counts as a change.
                let digest = Manifest::outputs_digest_of(&stage.dir)
                    .unwrap_or_else(|e| format!("unreadable: {e}"));
                out.insert(stage.stage.name().to_string(), digest);
            }
            StageState::Running { .. } | StageState::Unfinished => {
                out.insert(stage.stage.name().to_string(), format!("unfinished@{now}"));
            }
        }
    }
    Ok(out)
}

/// What the page is built from besides the run directory.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub run_root: &'a Path,
    pub config: &'a ReportConfig,
    /// The resolved pipeline (file as loaded, `--set` overrides applied) as TOML.
    pub pipeline_toml: &'a str,
    /// `run.name` of the pipeline, for the default title.
    pub run_name: &'a str,
}

/// A built page.
#[derive(Debug, Clone)]
pub struct Report {
    pub html: String,
    /// Files that could not be read or shown, each naming the file; also listed on the page.
    pub warnings: Vec<String>,
    /// Stages shown with their outputs, and stages listed as not run.
    pub shown: Vec<Stage>,
    pub not_run: Vec<Stage>,
}

/// Builds the page from the run directory.
///
/// # Errors
/// [`ReportError::Contract`] when `run_root` is not a folder. Unreadable stage files are not
/// errors: they become [`Report::warnings`].
pub fn build(inputs: &Inputs<'_>) -> Result<Report, ReportError> {
    if !inputs.run_root.is_dir() {
        return Err(ReportError::Contract {
            path: inputs.run_root.to_path_buf(),
            message: "not a run directory (no such folder)".into(),
        });
    }
    Ok(page::build(inputs))
}

/// Writes the page atomically as `<stage_dir>/index.html` and describes it for the manifest.
///
/// # Errors
/// [`ReportError::Artifact`] naming the file on an IO failure.
pub fn write(report: &Report, stage_dir: &Path) -> Result<OutputFile, ReportError> {
    write_atomic(stage_dir.join(REPORT_FILE), report.html.as_bytes())?;
    Ok(OutputFile::describe(stage_dir, REPORT_FILE, None)?)
}
