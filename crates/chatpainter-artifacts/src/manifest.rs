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
}

impl OutputFile {
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
    /// Digest of each upstream stage's `manifest.json`, by stage name.
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
            finished_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
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

    /// Digest of the manifest file as written; downstream stages record it as their upstream.
    pub fn digest_on_disk(stage_dir: &Path) -> Result<String> {
        digest::sha256_file(Self::path_in(stage_dir))
    }

    /// Compares this manifest with the key the caller would produce now.
    pub fn freshness(&self, stage_dir: &Path, key: &StageKey) -> Freshness {
        if self.key.config_digest != key.config_digest {
            return Freshness::Stale("the stage config changed".into());
        }
        if self.key.inputs_digest != key.inputs_digest {
            return Freshness::Stale("the raw input files changed".into());
        }
        if self.key.upstream != key.upstream {
            let changed: Vec<&str> = key
                .upstream
                .iter()
                .filter(|(k, v)| self.key.upstream.get(*k) != Some(*v))
                .map(|(k, _)| k.as_str())
                .collect();
            return Freshness::Stale(format!(
                "upstream stage changed: {}",
                if changed.is_empty() {
                    "a stage was removed".to_string()
                } else {
                    changed.join(", ")
                }
            ));
        }
        match self.output_change(stage_dir) {
            Some(why) => Freshness::Stale(why),
            None => Freshness::Current,
        }
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
            Freshness::Stale("upstream stage changed: ingest".into())
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
