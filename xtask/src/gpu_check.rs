//! `cargo xtask gpu-check [--out DIR]`: prepares, on this CPU machine, a small folder that a GPU
//! machine with PyTorch but no Rust toolchain (and no internet) runs: the `chatpainter`
//! release binary built with `tch` against the same libtorch (2.11.0, full lib folder, so that
//! `libtorch_cuda` is linked), stripped, and `run.sh`, which runs `chatpainter gpu-check` on
//! `cuda:0` and `nvidia-smi`, writes everything under `results/` and exits non-zero on failure.

use crate::dag::Libtorch;
use crate::setup::{LibtorchPaths, TORCH_VERSION, TORCH_WHEEL};
use crate::util::{self, human_bytes, root};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// Where the GPU machines' PyTorch 2.11 (cu130) is installed; its `torch/lib` is the libtorch the
/// binary loads there.
pub const GPU_SITE_PACKAGES: &str = "/opt/torch/.venv/lib/python3.12/site-packages";
/// Its Python (runs the PyTorch reference beside our binary).
pub const GPU_VENV: &str = "/opt/torch/.venv";

/// The PyTorch reference files the folder carries (into `reference/`).
pub const REFERENCE_FILES: [&str; 3] = ["stackgan_torch.py", "step_torch.py", "parity_table.py"];

/// What the folder records about its binary.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    pub commit: String,
    pub built_unix: u64,
}

/// The script the GPU machine runs.
pub fn run_script(info: &BuildInfo) -> String {
    format!(
        r#"#!/usr/bin/env bash
# chatpainter gpu-check, prepared by `cargo xtask gpu-check` on {built} from commit {commit}.
# The binary is built against libtorch {TORCH_VERSION} (wheel sha256 {sha}); it loads the
# machine's PyTorch libraries. Usage: bash run.sh   (results in ./results/)
set -uo pipefail
cd "$(dirname "$0")"
export LD_LIBRARY_PATH={site}/torch/lib:{site}/nvidia/cu13/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}
mkdir -p results
status=0
# The binary travels gzipped (it is ~65 MB stripped, ~22 MB compressed).
if [ -f chatpainter.gz ] && [ ! -x chatpainter ]; then
  gunzip -c chatpainter.gz > chatpainter && chmod +x chatpainter
fi

echo "== nvidia-smi"
if ! nvidia-smi 2>&1 | tee results/nvidia-smi.txt; then
  echo "gpu-check: nvidia-smi failed" >&2
  status=1
fi

echo "== libraries"
if ldd ./chatpainter 2>&1 | tee results/ldd.txt | grep "not found"; then
  echo "gpu-check: the binary misses libraries (above); is PyTorch {TORCH_VERSION} at {site}?" >&2
  exit 1
fi

echo "== chatpainter gpu-check --device cuda:0"
if ! ./chatpainter gpu-check --device cuda:0 --out results/ 2>&1 | tee results/gpu-check.log; then
  echo "gpu-check: chatpainter gpu-check failed (results/gpu-check.log)" >&2
  status=1
fi

echo "== the same training step beside the PyTorch reference (reference/step_torch.py)"
# Paper widths (Stage-I gf 128 / df 64, Stage-II gf 128 / df 64 / 4 residual blocks, 1024-d
# captions), the paper's batches (Stage-I 384, Stage-II 64) and the reference code's (128, 40),
# float32 and bf16 mixed precision. Float32 on both sides lets cuDNN convolutions use TF32
# (LibTorch's default, which our binary runs with; the reference gets --tf32-convs to match).
# Peak memory: nvidia-smi sampled every 100 ms while each run lasts, the same for both sides.
PY=${{CHATPAINTER_GPU_PYTHON:-{venv}/bin/python}}
peak() {{  # runs "$@" while sampling the GPU's used memory; prints the peak MiB to fd 3
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > results/.mem 2>/dev/null &
  local sampler=$!
  "$@"; local rc=$?
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  sort -n results/.mem | tail -1 >&3
  return $rc
}}
W="--gf 128 --df 64 --s2-gf 128 --s2-df 64 --r-num 4 --caption-dim 1024 --warmup 3 --steps 10"
for case in "1 384 stackgan" "1 128 stackgan" "1 384 chatpainter-recurrent" "2 64 stackgan" "2 40 stackgan"; do
  set -- $case
  for prec in f32 bf16; do
    name="step-s$1-b$2-$3-$prec"
    echo "-- $name"
    if ! peak ./chatpainter bench-step --device cuda:0 --stage "$1" --batch "$2" --variant "$3" \
        --precision "$prec" $W > "results/$name-ours.json" 3> "results/$name-ours.mem" 2> "results/$name-ours.log"; then
      echo "gpu-check: $name (ours) failed (results/$name-ours.log)" >&2; status=1
    fi
    if ! peak "$PY" reference/step_torch.py --device cuda --tf32-convs --stage "$1" --batch "$2" \
        --variant "$3" --precision "$prec" $W > "results/$name-torch.json" 3> "results/$name-torch.mem" 2> "results/$name-torch.log"; then
      echo "gpu-check: $name (PyTorch) failed (results/$name-torch.log)" >&2; status=1
    fi
  done
done
rm -f results/.mem
"$PY" reference/parity_table.py results/ | tee results/parity.txt

echo "== results"
ls -l results/
if [ "$status" -ne 0 ]; then
  echo "gpu-check: FAILED" >&2
else
  echo "gpu-check: ok"
fi
exit "$status"
"#,
        built = util::utc_time(info.built_unix),
        commit = info.commit,
        sha = TORCH_WHEEL.sha256,
        site = GPU_SITE_PACKAGES,
        venv = GPU_VENV,
    )
}

/// Fills `out` with the binary (copied as `chatpainter`), `run.sh`, `README.txt` and
/// `build.json`; anything else already there is left alone, except an old `results/`.
pub fn prepare_folder(out: &Path, binary: &Path, info: &BuildInfo) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    let bin = out.join("chatpainter");
    let tmp = out.join(".chatpainter.tmp");
    std::fs::copy(binary, &tmp)
        .with_context(|| format!("copying {} to {}", binary.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &bin)?;
    let _ = std::fs::remove_file(out.join("chatpainter.gz"));
    let script = out.join("run.sh");
    std::fs::write(&script, run_script(info))?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(
        out.join("README.txt"),
        format!(
            "chatpainter gpu-check\n\nCopy this folder to a GPU machine with PyTorch {TORCH_VERSION}+cu130 at\n\
             {GPU_SITE_PACKAGES} and run `bash run.sh`. It trains a few Stage-I steps on cuda:0,\n\
             compares one step with the CPU, times steps and images/s, runs the same training step\n\
             beside the PyTorch reference in reference/ (float32 and bf16, paper batch sizes;\n\
             results/parity.txt), and writes the figures, the logs and nvidia-smi's output to\n\
             results/. Exit status 0 means every check passed.\n"
        ),
    )?;
    let record = serde_json::json!({
        "commit": info.commit,
        "built_unix": info.built_unix,
        "built": util::utc_time(info.built_unix),
        "libtorch": TORCH_VERSION,
        "torch_wheel_sha256": TORCH_WHEEL.sha256,
        "features": ["tch"],
        "profile": "release",
        "gpu_site_packages": GPU_SITE_PACKAGES,
    });
    std::fs::write(
        out.join("build.json"),
        serde_json::to_string_pretty(&record)?,
    )?;
    let reference = out.join("reference");
    std::fs::create_dir_all(&reference).with_context(|| reference.display().to_string())?;
    for f in REFERENCE_FILES {
        let from = root().join("tests/reference").join(f);
        std::fs::copy(&from, reference.join(f))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    let results = out.join("results");
    if results.exists() {
        std::fs::remove_dir_all(&results).with_context(|| results.display().to_string())?;
    }
    Ok(())
}

fn git_commit() -> String {
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(root())
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    if dirty { format!("{head}+dirty") } else { head }
}

/// `cargo xtask gpu-check`.
pub fn gpu_check(out: Option<PathBuf>) -> Result<()> {
    let out = out.unwrap_or_else(|| root().join("gpu-check"));
    if !util::package_features("chatpainter-cli")?
        .iter()
        .any(|f| f == "tch")
    {
        bail!(
            "gpu-check needs the `tch` feature of chatpainter-cli, which this checkout does not have yet"
        );
    }
    let paths = match LibtorchPaths::locate().ready() {
        Some(p) => p,
        None => crate::setup::setup_libtorch(&LibtorchPaths::locate())?,
    };
    let started = std::time::Instant::now();
    // Its own target folder: a CUDA-linked tch build in the shared one would replace the
    // release binary other commands use and force rebuilds of everything above torch-sys.
    let target = util::target_dir()?.join("gpu-check");
    let mut build = util::cargo();
    build.args([
        "build",
        "--release",
        "-p",
        "chatpainter-cli",
        "--features",
        "tch",
    ]);
    build.arg("--target-dir").arg(&target);
    // The full lib folder: burn-tch links libtorch_cuda, which the GPU machine has.
    paths.build_env(&mut build, Libtorch::Cuda);
    // build.rs bakes these into the rpath, so the binary also starts without LD_LIBRARY_PATH.
    build.env(
        "CHATPAINTER_TORCH_RPATH",
        format!("{GPU_SITE_PACKAGES}/torch/lib:{GPU_SITE_PACKAGES}/nvidia/cu13/lib"),
    );
    println!("[xtask] gpu-check: {}", util::show(&build));
    util::run_checked(build).context("building chatpainter with --features tch")?;
    let binary = target.join("release/chatpainter");
    let info = BuildInfo {
        commit: git_commit(),
        built_unix: util::now_unix(),
    };
    prepare_folder(&out, &binary, &info)?;
    let mut strip = std::process::Command::new("strip");
    strip.arg(out.join("chatpainter"));
    if let Err(e) = util::run_checked(strip) {
        println!("[xtask] gpu-check: warning: could not strip the binary ({e:#})");
    }
    let needed = std::process::Command::new("readelf")
        .args(["-d"])
        .arg(out.join("chatpainter"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !needed.contains("libtorch_cuda") {
        println!(
            "[xtask] gpu-check: warning: the binary does not link libtorch_cuda.so; cuda:0 will not work"
        );
    }
    let plain = out.join("chatpainter");
    let gz = out.join("chatpainter.gz");
    let mut gzip = std::process::Command::new("gzip");
    gzip.args(["-9", "-c"]).arg(&plain);
    match gzip.output() {
        Ok(o) if o.status.success() => {
            std::fs::write(&gz, &o.stdout).with_context(|| gz.display().to_string())?;
            std::fs::remove_file(&plain).with_context(|| plain.display().to_string())?;
        }
        _ => println!("[xtask] gpu-check: warning: gzip failed; shipping the plain binary"),
    }
    let size: u64 = std::fs::read_dir(&out)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    println!(
        "[xtask] gpu-check: {} ready ({}, built in {:.0} s); on the GPU machine: bash run.sh",
        out.display(),
        human_bytes(size),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_names_the_machine_libraries() {
        let s = run_script(&BuildInfo {
            commit: "abc".into(),
            built_unix: 0,
        });
        assert!(s.starts_with("#!/usr/bin/env bash\n"));
        assert!(s.contains(
            "export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib:/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib"
        ));
        assert!(s.contains("./chatpainter gpu-check --device cuda:0 --out results/"));
        assert!(s.contains("nvidia-smi"));
        assert!(s.contains("exit \"$status\""));
        assert!(s.contains("reference/step_torch.py --device cuda --tf32-convs"));
        assert!(s.contains("./chatpainter bench-step --device cuda:0"));
        assert!(s.contains("PY=${CHATPAINTER_GPU_PYTHON:-/opt/torch/.venv/bin/python}"));
    }

    #[test]
    fn the_folder_carries_the_reference_and_the_script() {
        let dir = tempfile::tempdir().expect("tmp");
        let binary = dir.path().join("bin");
        std::fs::write(&binary, b"#!/bin/sh\n").expect("binary");
        let out = dir.path().join("folder");
        let info = BuildInfo {
            commit: "abc".into(),
            built_unix: 0,
        };
        prepare_folder(&out, &binary, &info).expect("prepare");
        for f in REFERENCE_FILES {
            assert!(out.join("reference").join(f).is_file(), "{f}");
        }
        for f in ["chatpainter", "run.sh", "README.txt", "build.json"] {
            assert!(out.join(f).is_file(), "{f}");
        }
    }
}
