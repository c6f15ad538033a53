//! `manifest.json`: what a finished stage produced, and from what.
//!
//! The skip rule is make-style: a stage is current when its manifest exists, was written by this
//! schema version, its config / input / upstream digests equal the ones the caller computes now,
//! and every listed output still exists with its recorded size. Anything else is stale, with a
//! reason that says which of those failed.

use crate::{ArtifactError, Result, SCHEMA_VERSION, Stage, TOOL_VERSION, digest, write_atomic};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const MANIFEST_FILE: &str = "manifest.json";

/// The staleness reason for a changed config digest ([`crate::stage::decide`] names the key).
pub const CONFIG_CHANGED: &str = "the stage config changed";

/// One output file of a stage, relative to the stage directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputFile {
    pub path: String,
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<u64>>,
    pub sha256: String,
    /// A report about the run (counts, timings), not data a downstream stage reads: it is left
    /// out of [`Manifest::outputs_digest`], so a rebuild whose data comes out identical leaves
    /// downstream current even when its report says "reused 9, encoded 0" this time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub report: bool,
}

impl OutputFile {
    /// Marks the file as a report ([`OutputFile::report`]).
    pub fn as_report(self) -> Self {
        Self {
            report: true,
            ..self
        }
    }

    /// Describes an existing file by hashing it.
    pub fn describe(stage_dir: &Path, relative: &str, rows: Option<u64>) -> Result<Self> {
        let path = stage_dir.join(relative);
        let bytes = std::fs::metadata(&path)
            .map_err(|e| ArtifactError::io(&path, e))?
            .len();
        Ok(Self {
            path: relative.to_string(),
            bytes,
            rows,
            shape: None,
            sha256: digest::sha256_file(&path)?,
            report: false,
        })
    }
}

/// What identifies a stage's work: if these are unchanged, so are its outputs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StageKey {
    /// Digest of the resolved config of this stage.
    pub config_digest: String,
    /// Digest of the raw inputs read from outside the run directory (empty if none).
    pub inputs_digest: String,
    /// Content digest of each upstream stage's outputs ([`Manifest::outputs_digest`]), by stage
    /// name: a rebuild upstream that writes byte-identical outputs leaves this stage current,
    /// whatever its finish time, summary or report say.
    pub upstream: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    pub stage: Stage,
    pub tool_version: String,
    #[serde(flatten)]
    pub key: StageKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    pub outputs: Vec<OutputFile>,
    /// Seconds since the Unix epoch when the stage finished.
    pub finished_unix: u64,
    /// Stage-specific summary (counts, dimensions, ...), for people and for `status`.
    #[serde(default)]
    pub summary: serde_json::Value,
}

/// Whether a stage's existing outputs can be reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    Current,
    Missing,
    Stale(String),
}

impl Manifest {
    pub fn new(stage: Stage, key: StageKey, outputs: Vec<OutputFile>) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            stage,
            tool_version: TOOL_VERSION.to_string(),
            key,
            seed: None,
            outputs,
            finished_unix: crate::now_unix(),
            summary: serde_json::Value::Null,
        }
    }

    pub fn path_in(stage_dir: &Path) -> PathBuf {
        stage_dir.join(MANIFEST_FILE)
    }

    /// Reads and checks a manifest; a wrong schema version is an error, not a guess.
    pub fn load(stage_dir: &Path) -> Result<Self> {
        let path = Self::path_in(stage_dir);
        let bytes = std::fs::read(&path).map_err(|e| ArtifactError::io(&path, e))?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|source| ArtifactError::Json {
                path: path.clone(),
                source,
            })?;
        if manifest.schema_version != SCHEMA_VERSION {
            return Err(ArtifactError::contract(
                &path,
                format!(
                    "schema version {} but this tool reads version {SCHEMA_VERSION}; rerun the stage with --force",
                    manifest.schema_version
                ),
            ));
        }
        Ok(manifest)
    }

    /// Loads the manifest only if the file exists.
    pub fn load_if_present(stage_dir: &Path) -> Result<Option<Self>> {
        if Self::path_in(stage_dir).exists() {
            Self::load(stage_dir).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Writes `manifest.json` atomically; this is the last write of a stage.
    pub fn save(&self, stage_dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|source| ArtifactError::Json {
            path: Self::path_in(stage_dir),
            source,
        })?;
        write_atomic(Self::path_in(stage_dir), &json)
    }

    /// The content digest of the stage's data outputs: their paths and SHA-256s, nothing else
    /// (reports, finish time and summary left out). Downstream stages record it as their
    /// upstream.
    pub fn outputs_digest(&self) -> String {
        let contents: Vec<(&str, &str)> = self
            .outputs
            .iter()
            .filter(|o| !o.report)
            .map(|o| (o.path.as_str(), o.sha256.as_str()))
            .collect();
        digest::sha256_json(&contents)
    }

    /// [`Manifest::outputs_digest`] of the finished stage in `stage_dir`.
    pub fn outputs_digest_of(stage_dir: &Path) -> Result<String> {
        Ok(Self::load(stage_dir)?.outputs_digest())
    }

    /// Compares this manifest with the key the caller would produce now.
    pub fn freshness(&self, stage_dir: &Path, key: &StageKey) -> Freshness {
        if self.key.config_digest != key.config_digest {
            return Freshness::Stale(CONFIG_CHANGED.into());
        }
        if self.key.inputs_digest != key.inputs_digest {
            return Freshness::Stale("the raw input files changed".into());
        }
        if let Some(why) = self.upstream_change(stage_dir, key) {
            return Freshness::Stale(why);
        }
        match self.output_change(stage_dir) {
            Some(why) => Freshness::Stale(why),
            None => Freshness::Current,
        }
    }

    /// Which upstream outputs differ from what this stage was built from, in words; `None`
    /// when `key.upstream` names the same upstream stages with the same content.
    pub fn upstream_change(&self, stage_dir: &Path, key: &StageKey) -> Option<String> {
        let changed: Vec<&str> = key
            .upstream
            .iter()
            .filter(|(k, v)| !self.recorded_upstream_matches(stage_dir, k, v))
            .map(|(k, _)| k.as_str())
            .collect();
        if !changed.is_empty() {
            return Some(format!(
                "the outputs of upstream `{}` changed",
                changed.join("`, `")
            ));
        }
        self.key
            .upstream
            .keys()
            .find(|k| !key.upstream.contains_key(*k))
            .map(|gone| format!("upstream `{gone}` is no longer an input"))
    }

    /// Whether this manifest recorded `now` (a content digest) for upstream `name`. Manifests of
    /// schema version 1 written before upstreams were recorded by content hold the SHA-256 of
    /// the upstream's `manifest.json` file instead; that is accepted when the upstream stage
    /// folder beside this one still has that very file, so that upgrading retrains nothing.
    fn recorded_upstream_matches(&self, stage_dir: &Path, name: &str, now: &str) -> bool {
        let Some(recorded) = self.key.upstream.get(name) else {
            return false;
        };
        recorded == now
            || stage_dir.parent().is_some_and(|run| {
                digest::sha256_file(Self::path_in(&run.join(name))).is_ok_and(|d| &d == recorded)
            })
    }

    /// The first listed output that is missing or no longer has its recorded size (cheap: no
    /// hashing), as a reason for people; `None` when all are as recorded.
    pub fn output_change(&self, stage_dir: &Path) -> Option<String> {
        for out in &self.outputs {
            match std::fs::metadata(stage_dir.join(&out.path)) {
                Ok(m) if m.len() == out.bytes => {}
                Ok(m) => {
                    return Some(format!(
                        "output {} has {} bytes, manifest says {}",
                        out.path,
                        m.len(),
                        out.bytes
                    ));
                }
                Err(_) => return Some(format!("output {} is missing", out.path)),
            }
        }
        None
    }

    /// Re-hashes every output; slower than [`Manifest::freshness`], used by `verify`.
    pub fn verify_hashes(&self, stage_dir: &Path) -> Result<()> {
        for out in &self.outputs {
            let path = stage_dir.join(&out.path);
            let got = digest::sha256_file(&path)?;
            if got != out.sha256 {
                return Err(ArtifactError::contract(
                    &path,
                    format!(
                        "content hash {got} differs from the manifest's {}",
                        out.sha256
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Total rows of the outputs whose path starts with `prefix`.
    pub fn rows_under(&self, prefix: &str) -> u64 {
        self.outputs
            .iter()
            .filter(|o| o.path.starts_with(prefix))
            .filter_map(|o| o.rows)
            .sum()
    }
}

/// Checks a stage directory against the key: `Missing` when no manifest exists.
pub fn freshness(stage_dir: &Path, key: &StageKey) -> Result<Freshness> {
    Ok(match Manifest::load_if_present(stage_dir)? {
        None => Freshness::Missing,
        Some(m) => m.freshness(stage_dir, key),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> StageKey {
        StageKey {
            config_digest: "c".into(),
            inputs_digest: "i".into(),
            upstream: BTreeMap::from([("ingest".to_string(), "u".to_string())]),
        }
    }

    #[test]
    fn round_trip_and_freshness() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.parquet"), b"12345").unwrap();
        let out = OutputFile::describe(dir.path(), "a.parquet", Some(3)).unwrap();
        let m = Manifest::new(Stage::Embed, key(), vec![out]);
        m.save(dir.path()).unwrap();
        let back = Manifest::load(dir.path()).unwrap();
        assert_eq!(back.outputs[0].bytes, 5);
        assert_eq!(back.freshness(dir.path(), &key()), Freshness::Current);

        let mut changed = key();
        changed.upstream.insert("ingest".into(), "v".into());
        assert_eq!(
            back.freshness(dir.path(), &changed),
            Freshness::Stale("the outputs of upstream `ingest` changed".into())
        );
        changed = key();
        changed.config_digest = "d".into();
        assert!(
            matches!(back.freshness(dir.path(), &changed), Freshness::Stale(r) if r.contains("config"))
        );

        std::fs::write(dir.path().join("a.parquet"), b"123").unwrap();
        assert!(
            matches!(back.freshness(dir.path(), &key()), Freshness::Stale(r) if r.contains("3 bytes"))
        );
        assert!(back.verify_hashes(dir.path()).is_err());
    }

    #[test]
    fn outputs_digest_is_content_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data.parquet"), b"rows").unwrap();
        std::fs::write(dir.path().join("report.json"), b"{\"encoded\": 9}").unwrap();
        let outputs = || {
            vec![
                OutputFile::describe(dir.path(), "data.parquet", Some(1)).unwrap(),
                OutputFile::describe(dir.path(), "report.json", None)
                    .unwrap()
                    .as_report(),
            ]
        };
        let first = Manifest::new(Stage::Embed, key(), outputs());
        // Rebuilt later, with another summary and another report: the same data.
        std::fs::write(dir.path().join("report.json"), b"{\"reused\": 9}").unwrap();
        let mut second = Manifest::new(Stage::Embed, StageKey::default(), outputs());
        second.finished_unix += 100;
        second.summary = serde_json::json!({"reused": 9});
        assert_eq!(first.outputs_digest(), second.outputs_digest());
        std::fs::write(dir.path().join("data.parquet"), b"other rows").unwrap();
        let third = Manifest::new(Stage::Embed, key(), outputs());
        assert_ne!(first.outputs_digest(), third.outputs_digest());
    }

    #[test]
    fn other_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::new(Stage::Ingest, key(), vec![]);
        m.schema_version = 99;
        m.save(dir.path()).unwrap();
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }

    #[test]
    fn missing_manifest_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(freshness(dir.path(), &key()).unwrap(), Freshness::Missing);
    }
}
