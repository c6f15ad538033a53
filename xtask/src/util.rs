//! Small helpers shared by the commands: the workspace root, cargo invocations, checked
//! subprocesses; re-exported from the artifact contract: the file hash, human-readable sizes
//! and times.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the folder above `xtask/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// `$HOME`, or the current folder when it is unset.
pub fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from)
}

/// A `cargo` command run in the workspace root (the cargo that runs us, if any).
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Runs a command with inherited stdio; a non-zero exit is an error naming the command.
pub fn run_checked(mut cmd: Command) -> Result<()> {
    let shown = show(&cmd);
    let st = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !st.success() {
        bail!("failed ({st}): {shown}");
    }
    Ok(())
}

/// The command line as a person would type it (program and arguments, no environment).
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        s.push(' ');
        if a.contains(' ') || a.is_empty() {
            s.push_str(&format!("'{a}'"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// `cargo metadata --no-deps` of this workspace, parsed.
fn workspace_metadata() -> Result<serde_json::Value> {
    let out = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("cargo metadata: not JSON")
}

/// The target directory cargo uses for this workspace (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> Result<PathBuf> {
    let meta = workspace_metadata()?;
    let target = meta["target_directory"]
        .as_str()
        .context("cargo metadata: no target_directory")?;
    Ok(PathBuf::from(target))
}

/// The features a workspace package declares (from `cargo metadata`).
pub fn package_features(package: &str) -> Result<Vec<String>> {
    let meta = workspace_metadata()?;
    let packages = meta["packages"]
        .as_array()
        .context("cargo metadata: no packages")?;
    let pkg = packages
        .iter()
        .find(|p| p["name"].as_str() == Some(package))
        .with_context(|| format!("cargo metadata: no package {package}"))?;
    Ok(pkg["features"]
        .as_object()
        .map(|f| f.keys().cloned().collect())
        .unwrap_or_default())
}

pub use chatpainter_artifacts::display::{human_bytes, utc_time};
pub use chatpainter_artifacts::sha256_file;

/// Seconds since the Unix epoch now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
