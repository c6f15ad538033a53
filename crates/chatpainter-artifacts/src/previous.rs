//! A stage's earlier run moved aside instead of deleted: `<stage>/.previous/<name>/` holds every
//! file the stage folder had (checkpoints, samples, manifest, config), plus `moved-aside.json`
//! saying why and when. Nothing trained is deleted implicitly: a run that cannot continue from
//! what is there moves it here; `restore` brings it back (moving the current run aside first),
//! and only `prune` deletes.

use crate::{ArtifactError, display, write_atomic};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The folder inside a stage folder that holds its earlier runs.
pub const PREVIOUS_DIR: &str = ".previous";
/// The note inside each moved-aside run.
pub const NOTE_FILE: &str = "moved-aside.json";
/// Entries of a stage folder that belong to no run: the earlier runs, the lock of the process
/// running now and the log it is writing.
const STAYS: [&str; 3] = [PREVIOUS_DIR, ".lock", "log.txt"];

/// Why and when a run was moved aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedAside {
    /// In words, e.g. "stage1: `network.gf_dim` = 16 before, 32 now; checkpoints at step 400".
    pub reason: String,
    pub moved_unix: u64,
}

/// One moved-aside run of a stage.
#[derive(Debug, Clone)]
pub struct Previous {
    pub name: String,
    pub path: PathBuf,
    /// `None` when the note is missing or unreadable (a move that was interrupted).
    pub note: Option<MovedAside>,
}

/// The entries of `dir` that make up its run (everything but [`STAYS`]), sorted.
fn run_entries(dir: &Path) -> Result<Vec<PathBuf>, ArtifactError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(ArtifactError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| ArtifactError::io(dir, e))?;
        let name = entry.file_name();
        if !STAYS.iter().any(|s| name == *s) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Moves everything the stage folder holds of its current run into a new
/// `.previous/<YYYY-MM-DDTHH-MM-SS>/` with a note saying `reason`; `None` when there was
/// nothing to move. The note is written first, then each entry is renamed (same file system,
/// so nothing is copied): a move cut short leaves every file in one place or the other.
pub fn move_aside(dir: &Path, reason: &str) -> Result<Option<PathBuf>, ArtifactError> {
    let entries = run_entries(dir)?;
    if entries.is_empty() {
        return Ok(None);
    }
    let moved_unix = crate::now_unix();
    let stamp = display::utc_time(moved_unix)
        .trim_end_matches(" UTC")
        .replace([' ', ':'], "-");
    let root = dir.join(PREVIOUS_DIR);
    let mut target = root.join(&stamp);
    let mut n = 2;
    while target.exists() {
        target = root.join(format!("{stamp}-{n}"));
        n += 1;
    }
    std::fs::create_dir_all(&target).map_err(|e| ArtifactError::io(&target, e))?;
    let note = MovedAside {
        reason: reason.to_string(),
        moved_unix,
    };
    let json = serde_json::to_vec_pretty(&note).map_err(|source| ArtifactError::Json {
        path: target.join(NOTE_FILE),
        source,
    })?;
    write_atomic(target.join(NOTE_FILE), &json)?;
    for from in entries {
        let to = target.join(from.file_name().unwrap_or_default());
        std::fs::rename(&from, &to).map_err(|e| ArtifactError::io(&from, e))?;
    }
    Ok(Some(target))
}

/// The moved-aside runs of a stage folder, oldest first.
pub fn list(dir: &Path) -> Result<Vec<Previous>, ArtifactError> {
    let root = dir.join(PREVIOUS_DIR);
    let mut out = Vec::new();
    for path in run_entries(&root)? {
        if !path.is_dir() {
            continue;
        }
        let note = std::fs::read(path.join(NOTE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        out.push(Previous {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path,
            note,
        });
    }
    Ok(out)
}

fn find(dir: &Path, name: &str) -> Result<PathBuf, ArtifactError> {
    let path = dir.join(PREVIOUS_DIR).join(name);
    let plain = !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != "..";
    if !plain || !path.is_dir() {
        let known: Vec<String> = list(dir)?.into_iter().map(|p| p.name).collect();
        return Err(ArtifactError::contract(
            dir,
            format!(
                "no moved-aside run `{name}` (there are: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        ));
    }
    Ok(path)
}

/// Brings the moved-aside run `name` back into the stage folder. The current run, if any, is
/// moved aside first (so a restore loses nothing either); returns where it went.
pub fn restore(dir: &Path, name: &str) -> Result<Option<PathBuf>, ArtifactError> {
    let from = find(dir, name)?;
    let current = move_aside(dir, &format!("replaced by the restore of `{name}`"))?;
    for entry in run_entries(&from)? {
        if entry.file_name().is_some_and(|n| n == NOTE_FILE) {
            continue;
        }
        let to = dir.join(entry.file_name().unwrap_or_default());
        std::fs::rename(&entry, &to).map_err(|e| ArtifactError::io(&entry, e))?;
    }
    std::fs::remove_dir_all(&from).map_err(|e| ArtifactError::io(&from, e))?;
    Ok(current)
}

/// Deletes the moved-aside run `name`: the only way one is ever deleted.
pub fn prune(dir: &Path, name: &str) -> Result<(), ArtifactError> {
    let path = find(dir, name)?;
    std::fs::remove_dir_all(&path).map_err(|e| ArtifactError::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn move_list_restore_prune() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(move_aside(dir, "nothing").unwrap().is_none());
        std::fs::create_dir_all(dir.join("checkpoints/step-4")).unwrap();
        std::fs::write(dir.join("checkpoints/step-4/g.bin"), b"g").unwrap();
        std::fs::write(dir.join("manifest.json"), b"{}").unwrap();
        std::fs::write(dir.join("log.txt"), b"log").unwrap();
        std::fs::write(dir.join(".lock"), b"1").unwrap();
        let first = move_aside(dir, "width changed").unwrap().unwrap();
        assert!(first.join("checkpoints/step-4/g.bin").is_file());
        assert!(!dir.join("checkpoints").exists() && !dir.join("manifest.json").exists());
        assert!(dir.join("log.txt").is_file() && dir.join(".lock").is_file());
        let listed = list(dir).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].note.as_ref().unwrap().reason, "width changed");

        // A new run, then the old one restored: the new one goes aside, nothing is lost.
        std::fs::write(dir.join("manifest.json"), b"{\"new\":1}").unwrap();
        let name = listed[0].name.clone();
        let aside = restore(dir, &name).unwrap().unwrap();
        assert!(dir.join("checkpoints/step-4/g.bin").is_file());
        assert_eq!(std::fs::read(dir.join("manifest.json")).unwrap(), b"{}");
        assert_eq!(
            std::fs::read(aside.join("manifest.json")).unwrap(),
            b"{\"new\":1}"
        );
        assert!(!dir.join(PREVIOUS_DIR).join(&name).exists());

        let err = prune(dir, "../x").unwrap_err().to_string();
        assert!(err.contains("no moved-aside run"), "{err}");
        let left = list(dir).unwrap();
        assert_eq!(left.len(), 1);
        prune(dir, &left[0].name).unwrap();
        assert!(list(dir).unwrap().is_empty());
    }
}
