//! Running one stage under the artifact contract: skip when current, otherwise invalidate,
//! write the resolved config, do the work, and write the manifest last.

use crate::manifest::{CONFIG_CHANGED, Freshness, Manifest, OutputFile, StageKey, freshness};
use crate::{ArtifactError, Stage, write_atomic};
use std::path::Path;

/// What a stage body produced.
pub struct StageOutput {
    pub outputs: Vec<OutputFile>,
    pub summary: serde_json::Value,
    pub seed: Option<u64>,
}

pub enum Outcome {
    /// The stage was already current; nothing was done.
    Skipped,
    /// The stage ran (first time, stale, or forced); `why` says which.
    Ran {
        why: String,
        manifest: Box<Manifest>,
    },
}

/// Upstream digest recorded by a plan (`--plan`) for an upstream stage that has not finished:
/// the stage will run once it has.
pub const PENDING_UPSTREAM: &str = "pending";

/// What running a stage would do, decided from the files alone: the one decision that a real
/// run ([`run_stage`]) acts on and a plan prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Current and not forced: nothing to do.
    Skip,
    /// It must run; `why` says so in words (`no previous run`, `forced`, `stale: …`).
    Run { why: String },
}

/// Decides whether the stage in `dir` runs for `key`. A changed config is described by its first
/// differing key with both values (the old `config.toml` against `resolved_config_toml`).
pub fn decide(
    dir: &Path,
    key: &StageKey,
    force: bool,
    resolved_config_toml: &str,
) -> Result<Decision, ArtifactError> {
    if let Some((up, _)) = key.upstream.iter().find(|(_, d)| *d == PENDING_UPSTREAM) {
        return Ok(Decision::Run {
            why: format!("upstream `{up}` has not finished yet"),
        });
    }
    Ok(match freshness(dir, key)? {
        Freshness::Current if !force => Decision::Skip,
        Freshness::Current => Decision::Run {
            why: "forced".into(),
        },
        // A folder with a resolved config but no manifest: a run started there and stopped.
        Freshness::Missing if dir.join("config.toml").is_file() => Decision::Run {
            why: "the earlier run did not finish".into(),
        },
        Freshness::Missing => Decision::Run {
            why: "no previous run".into(),
        },
        Freshness::Stale(reason) => {
            let detail = (reason == CONFIG_CHANGED)
                .then(|| {
                    let old = std::fs::read_to_string(dir.join("config.toml")).ok()?;
                    crate::config_diff::first_difference(&old, resolved_config_toml)
                })
                .flatten();
            Decision::Run {
                why: match detail {
                    Some(d) => format!("stale: {d}"),
                    None => format!("stale: {reason}"),
                },
            }
        }
    })
}

/// Runs `body` in `dir` unless the stage is current (and not forced).
///
/// The old manifest is removed before anything else is touched, so a stage killed halfway is
/// never mistaken for a finished one; the new manifest is written only after `body` succeeds.
pub fn run_stage<E: From<ArtifactError>>(
    dir: &Path,
    stage: Stage,
    key: &StageKey,
    force: bool,
    resolved_config_toml: &str,
    body: impl FnOnce(&Path) -> Result<StageOutput, E>,
) -> Result<Outcome, E> {
    let decision = decide(dir, key, force, resolved_config_toml)?;
    run_decided(dir, stage, key, decision, resolved_config_toml, body)
}

/// As [`run_stage`] for a decision already made (and acted on: a training stage moves its
/// earlier run aside between deciding and running, and the outcome still says why).
pub fn run_decided<E: From<ArtifactError>>(
    dir: &Path,
    stage: Stage,
    key: &StageKey,
    decision: Decision,
    resolved_config_toml: &str,
    body: impl FnOnce(&Path) -> Result<StageOutput, E>,
) -> Result<Outcome, E> {
    let why = match decision {
        Decision::Skip => return Ok(Outcome::Skipped),
        Decision::Run { why } => why,
    };
    std::fs::create_dir_all(dir).map_err(|e| ArtifactError::io(dir, e))?;
    let _lock = StageLock::acquire(dir)?;
    let manifest_path = Manifest::path_in(dir);
    if manifest_path.exists() {
        std::fs::remove_file(&manifest_path).map_err(|e| ArtifactError::io(&manifest_path, e))?;
    }
    remove_stale_temporaries(dir)?;
    write_atomic(dir.join("config.toml"), resolved_config_toml.as_bytes())?;
    let out = body(dir)?;
    let mut manifest = Manifest::new(stage, key.clone(), out.outputs);
    manifest.summary = out.summary;
    manifest.seed = out.seed;
    manifest.save(dir)?;
    Ok(Outcome::Ran {
        why,
        manifest: Box::new(manifest),
    })
}

/// Whether process `pid` runs: it has a `/proc` entry and is not a zombie (a killed process
/// whose parent has not collected it yet, e.g. a data-parallel rank orphaned by `mpirun`).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")) {
        // `pid (comm) state …`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// `<stage>/.lock` holds the pid of the process running the stage; a second process refuses to
/// run the same stage, and a lock whose process is gone (killed) is taken over.
struct StageLock {
    path: std::path::PathBuf,
}

impl StageLock {
    fn acquire(dir: &Path) -> Result<Self, ArtifactError> {
        let path = dir.join(".lock");
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    write!(f, "{}", std::process::id()).map_err(|e| ArtifactError::io(&path, e))?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if let Some(pid) = lock_pid(dir).filter(|p| process_alive(*p)) {
                        return Err(ArtifactError::contract(
                            dir,
                            format!(
                                "the stage is being run by process {pid}; wait for it or stop it"
                            ),
                        ));
                    }
                    // Left by a killed run.
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(ArtifactError::io(&path, e)),
            }
        }
        Err(ArtifactError::contract(
            dir,
            "could not take the stage lock",
        ))
    }
}

impl Drop for StageLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The pid written in `<dir>/.lock`, whether or not that process still runs (a killed run
/// leaves its lock behind).
pub fn lock_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join(".lock"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The pid of the process running the stage in `dir`, if any: the lock's, while it is alive.
pub fn running_pid(dir: &Path) -> Option<u32> {
    lock_pid(dir).filter(|p| process_alive(*p))
}

/// Removes the `.<name>.<pid>.tmp` files a killed run left behind (recursively).
fn remove_stale_temporaries(dir: &Path) -> Result<(), ArtifactError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ArtifactError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ArtifactError::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        // Shards of a stage are finished (or running) by other processes: not ours to clean.
        if path.is_dir() && name != "shards" && name != crate::previous::PREVIOUS_DIR {
            remove_stale_temporaries(&path)?;
        } else if name.starts_with('.') && name.ends_with(".tmp") {
            std::fs::remove_file(&path).map_err(|e| ArtifactError::io(&path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(dir: &Path) -> Result<StageOutput, ArtifactError> {
        write_atomic(dir.join("out.txt"), b"x")?;
        Ok(StageOutput {
            outputs: vec![OutputFile::describe(dir, "out.txt", Some(1))?],
            summary: serde_json::json!({"n": 1}),
            seed: None,
        })
    }

    #[test]
    fn skip_force_and_stale() {
        let dir = tempfile::tempdir().unwrap();
        let key = StageKey {
            config_digest: "a".into(),
            ..Default::default()
        };
        assert!(matches!(
            run_stage(dir.path(), Stage::Embed, &key, false, "", body).unwrap(),
            Outcome::Ran { .. }
        ));
        assert!(matches!(
            run_stage(dir.path(), Stage::Embed, &key, false, "", body).unwrap(),
            Outcome::Skipped
        ));
        assert!(
            matches!(run_stage(dir.path(), Stage::Embed, &key, true, "", body).unwrap(), Outcome::Ran { why, .. } if why == "forced")
        );
        let other = StageKey {
            config_digest: "b".into(),
            ..Default::default()
        };
        assert!(
            matches!(run_stage(dir.path(), Stage::Embed, &other, false, "", body).unwrap(), Outcome::Ran { why, .. } if why.contains("config"))
        );
    }

    #[test]
    fn failed_body_leaves_no_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let key = StageKey::default();
        run_stage(dir.path(), Stage::Embed, &key, false, "", body).unwrap();
        std::fs::write(dir.path().join(".out.txt.999.tmp"), b"torn").unwrap();
        let failed = run_stage(dir.path(), Stage::Embed, &key, true, "", |_| {
            Err::<StageOutput, _>(ArtifactError::contract("x", "boom"))
        });
        assert!(failed.is_err());
        assert!(!Manifest::path_in(dir.path()).exists());
        assert!(!dir.path().join(".out.txt.999.tmp").exists());
    }
}
