//! Small helpers shared by the commands: the workspace root, cargo invocations, checked
//! subprocesses; re-exported from the artifact contract: the file hash, human-readable sizes
//! and times.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace this xtask works on: the nearest folder at or above the current directory
/// whose `Cargo.toml` declares `[workspace]` and which holds `xtask/`. Found at run time, not
/// fixed at compile time, so a binary always works on the checkout it is run in;
/// [`check_checkout`] refuses a binary that was built from another one.
pub fn root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        std::env::current_dir()
            .ok()
            .and_then(|dir| workspace_at_or_above(&dir))
            .unwrap_or_else(built_from)
    })
    .clone()
}

/// The checkout this binary was compiled from (the folder above `xtask/` at compile time).
pub fn built_from() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The nearest folder at or above `dir` that is a workspace root holding `xtask/`.
pub fn workspace_at_or_above(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .find(|d| {
            d.join("xtask/Cargo.toml").is_file()
                && std::fs::read_to_string(d.join("Cargo.toml"))
                    .is_ok_and(|t| t.lines().any(|l| l.trim() == "[workspace]"))
        })
        .map(Path::to_path_buf)
}

/// Refuses to run when the current directory is not inside a checkout, or when this binary was
/// compiled from another checkout than the one it runs in. Cargo's fingerprints of workspace
/// crates do not depend on where the checkout lies, so with a target folder shared between
/// checkouts (`CARGO_TARGET_DIR`) cargo calls the other checkout's build fresh and runs it:
/// its pipelines, its tests, its uncommitted files.
pub fn check_checkout() -> Result<PathBuf> {
    let here = std::env::current_dir().context("reading the current directory")?;
    let Some(root) = workspace_at_or_above(&here) else {
        bail!(
            "{} is not inside a chatpainter checkout (no Cargo.toml with [workspace] and xtask/ at or above it)",
            here.display()
        );
    };
    let built = built_from();
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if !same(&root, &built) {
        bail!(
            "this xtask binary was built from the checkout {} but runs in {}: the two share a \
             target folder (CARGO_TARGET_DIR={}), and cargo reuses one checkout's build in the \
             other. Give each checkout its own target folder (unset CARGO_TARGET_DIR to use \
             <checkout>/target).",
            built.display(),
            root.display(),
            std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "unset".into())
        );
    }
    Ok(root)
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
pub use chatpainter_artifacts::{now_unix, sha256_file};
