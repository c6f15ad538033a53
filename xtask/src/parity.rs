//! `cargo xtask bench parity`: our training step and MiniLM encoder beside their PyTorch
//! references, in one run on this machine.
//!
//! - The step: `chatpainter bench-step` on flex and (when `cargo xtask setup libtorch` has run)
//!   LibTorch CPU, and `tests/reference/step_torch.py` on PyTorch CPU, with the same arguments:
//!   same networks, widths, losses, optimisers and batch, random inputs of the real shapes.
//!   Each implementation runs in its own process, `ROUNDS` times interleaved (these machines are
//!   shared and noisy, so a slow moment hits all three alike); a figure is the median of the
//!   per-round medians, warm-up steps excluded. Both sides use every core
//!   (`OMP_NUM_THREADS`/rayon) and `OMP_WAIT_POLICY=PASSIVE` (libgomp's busy-waiting otherwise
//!   makes shared cores crawl).
//! - The encoder: `chatpainter bench-encode` and `tests/reference/minilm_transformers.py` on
//!   the same generated texts (written out by ours), same batching; the vectors are compared.
//! - A reference whose parameter counts differ from ours is refused: then the two do not run
//!   the same networks and a ratio would mean nothing.
//!
//! The PyTorch side needs the venv of `cargo xtask setup torch-reference` (or
//! `$CHATPAINTER_TORCH_PYTHON`).

use crate::bench::Row;
use crate::dag::Libtorch;
use crate::runner::{Binary, Profile, build_cli};
use crate::setup::LibtorchPaths;
use crate::util::root;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Interleaved rounds per implementation.
const ROUNDS: usize = 3;

/// One step configuration compared.
struct Case {
    name: &'static str,
    args: &'static [&'static str],
    batch: usize,
}

/// Reduced widths, so that a CPU step takes a fraction of a second (the paper's widths are the
/// GPU folder's job).
const CASES: [Case; 2] = [
    Case {
        name: "stage1 stackgan gf32/df32",
        args: &[
            "--stage",
            "1",
            "--variant",
            "stackgan",
            "--gf",
            "32",
            "--df",
            "32",
            "--warmup",
            "2",
            "--steps",
            "5",
        ],
        batch: 16,
    },
    Case {
        name: "stage2 stackgan s1 gf32, s2 gf32/df16 r2",
        args: &[
            "--stage",
            "2",
            "--variant",
            "stackgan",
            "--gf",
            "32",
            "--df",
            "32",
            "--s2-gf",
            "32",
            "--s2-df",
            "16",
            "--r-num",
            "2",
            "--warmup",
            "1",
            "--steps",
            "3",
        ],
        batch: 4,
    },
];

/// The Python that has the reference's packages.
pub fn torch_python() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CHATPAINTER_TORCH_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let venv = crate::setup::torch_reference_venv();
    let python = venv.join("bin/python");
    if !python.is_file() {
        bail!(
            "no PyTorch reference environment at {}: run `cargo xtask setup torch-reference` \
             (or set $CHATPAINTER_TORCH_PYTHON)",
            venv.display()
        );
    }
    Ok(python)
}

/// The thread settings both sides run with.
fn threads_env(cmd: &mut Command, cores: usize) {
    cmd.env("OMP_NUM_THREADS", cores.to_string())
        .env("RAYON_NUM_THREADS", cores.to_string())
        .env("OMP_WAIT_POLICY", "PASSIVE");
}

/// Runs one process and parses the last JSON line of its stdout.
fn json_line(mut cmd: Command, what: &str) -> Result<Value> {
    eprintln!("[xtask] {what}: {}", crate::util::show(&cmd));
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{what} printed no JSON line"))?;
    serde_json::from_str(line).with_context(|| format!("{what}: {line}"))
}

fn field(v: &Value, key: &str) -> Result<f64> {
    v[key]
        .as_f64()
        .with_context(|| format!("no number `{key}` in {v}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One implementation of the step: how to start it.
struct Side {
    label: String,
    command: Box<dyn Fn() -> Command>,
}

fn sides(python: &Path, flex: &Binary, tch: Option<&Binary>) -> Vec<Side> {
    let mut out = Vec::new();
    let script = root().join("tests/reference/step_torch.py");
    let py = python.to_path_buf();
    out.push(Side {
        label: "PyTorch CPU".into(),
        command: Box::new(move || {
            let mut c = Command::new(&py);
            c.arg(&script).args(["--device", "cpu"]);
            c
        }),
    });
    let flex = flex.clone();
    out.push(Side {
        label: "ours, flex".into(),
        command: Box::new(move || {
            let mut c = flex.command();
            c.args(["bench-step", "--device", "cpu"]);
            c
        }),
    });
    if let Some(tch) = tch.cloned() {
        out.push(Side {
            label: "ours, LibTorch CPU".into(),
            command: Box::new(move || {
                let mut c = tch.command();
                c.args(["bench-step", "--device", "tch-cpu"]);
                c
            }),
        });
    }
    out
}

/// `cargo xtask bench parity`.
pub fn parity() -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let python = torch_python()?;
    let flex = build_cli(None, Profile::Release)?;
    let tch = match LibtorchPaths::locate().ready() {
        Some(_) => Some(build_cli(Some(Libtorch::Cpu), Profile::Release)?),
        None => {
            eprintln!(
                "[xtask] libtorch not prepared: LibTorch CPU is left out (cargo xtask setup libtorch)"
            );
            None
        }
    };
    let sides = sides(&python, &flex, tch.as_ref());
    let mut rows = Vec::new();
    for case in &CASES {
        let batch = case.batch.to_string();
        let mut medians: Vec<Vec<f64>> = vec![Vec::new(); sides.len()];
        let mut reports: Vec<Value> = vec![Value::Null; sides.len()];
        for round in 0..ROUNDS {
            for (i, side) in sides.iter().enumerate() {
                let mut cmd = (side.command)();
                cmd.args(case.args).args(["--batch", &batch]);
                threads_env(&mut cmd, cores);
                let what = format!("{} round {}/{ROUNDS}: {}", case.name, round + 1, side.label);
                let v = json_line(cmd, &what)?;
                if v["finite"].as_bool() != Some(true) {
                    bail!("{what}: non-finite losses: {}", v["losses"]);
                }
                medians[i].push(field(&v, "median_ms")?);
                reports[i] = v;
            }
        }
        let counts = |v: &Value| (v["params_g"].as_u64(), v["params_d"].as_u64());
        for (side, v) in sides.iter().zip(&reports).skip(1) {
            if counts(v) != counts(&reports[0]) {
                bail!(
                    "{}: {} has G/D parameters {:?}, the PyTorch reference {:?}: not the same networks",
                    case.name,
                    side.label,
                    counts(v),
                    counts(&reports[0])
                );
            }
        }
        let torch_ms = median(medians[0].clone());
        for (i, side) in sides.iter().enumerate() {
            let ms = median(medians[i].clone());
            let v = &reports[i];
            let conditions = format!(
                "batch {batch}, G {} / D {} params; {}; median of {ROUNDS} interleaved runs' medians ({} steps after {} warm-up each); threads: {}{}",
                v["params_g"],
                v["params_d"],
                if i == 0 {
                    format!("torch {}", v["torch"].as_str().unwrap_or("?"))
                } else {
                    "release build".into()
                },
                v["steps"],
                v["warmup"],
                v["threads"]
                    .as_str()
                    .map_or_else(|| v["threads"].to_string(), str::to_string),
                if i == 0 {
                    String::new()
                } else {
                    format!("; {:.2}x PyTorch's time", ms / torch_ms)
                }
            );
            rows.push(Row {
                name: format!("{}, {}", case.name, side.label),
                value: ms,
                unit: "ms/step".into(),
                conditions: conditions.clone(),
            });
            rows.push(Row {
                name: format!("{}, {} throughput", case.name, side.label),
                value: case.batch as f64 * 1e3 / ms,
                unit: "images/s".into(),
                conditions,
            });
        }
        eprint!("{}", crate::bench::table(&rows));
    }
    rows.extend(encoder_rows(&python, &flex, cores)?);
    print!("{}", crate::bench::table(&rows));
    println!(
        "\nconditions: {cores} cores, OMP_NUM_THREADS=RAYON_NUM_THREADS={cores}, OMP_WAIT_POLICY=PASSIVE; \
         ratio = our ms / PyTorch's ms (1.00 = parity, lower is faster)"
    );
    Ok(())
}

/// MiniLM: ours and `transformers` on the same texts; per text ms and the largest difference
/// between the two sets of vectors.
fn encoder_rows(python: &Path, flex: &Binary, cores: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    // Scratch files (texts, vectors) in the target folder, rewritten by every run.
    let dir = crate::util::target_dir()?.join("parity");
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    for (kind, count) in [("short-turns", 512usize), ("dialogues", 64)] {
        let texts = dir.join(format!("{kind}.json"));
        let ours_vec = dir.join(format!("{kind}.f32"));
        let theirs_vec = dir.join(format!("{kind}.npy"));
        let mut ours_ms = Vec::new();
        let mut theirs_ms = Vec::new();
        let (mut ours, mut theirs) = (Value::Null, Value::Null);
        for round in 0..ROUNDS {
            let mut c = flex.command();
            c.args(["bench-encode", "--kind", kind, "--repeat", "3"])
                .args(["--count", &count.to_string()])
                .arg("--texts-out")
                .arg(&texts)
                .arg("--vectors-out")
                .arg(&ours_vec);
            threads_env(&mut c, cores);
            ours = json_line(c, &format!("MiniLM {kind} round {}: ours", round + 1))?;
            ours_ms.push(field(&ours, "median_ms_per_text")?);
            let mut c = Command::new(python);
            c.arg(root().join("tests/reference/minilm_transformers.py"))
                .args(["--device", "cpu", "--repeat", "3"])
                .args(["--threads", &cores.to_string()])
                .args(["--batch", &field(&ours, "batch")?.to_string()])
                .args(["--batch-tokens", &field(&ours, "batch_tokens")?.to_string()])
                .arg("--texts")
                .arg(&texts)
                .arg("--dump")
                .arg(&theirs_vec);
            threads_env(&mut c, cores);
            theirs = json_line(
                c,
                &format!("MiniLM {kind} round {}: transformers", round + 1),
            )?;
            theirs_ms.push(field(&theirs, "median_ms_per_text")?);
        }
        let diff = max_abs_diff(&read_f32(&ours_vec)?, &read_npy_f32(&theirs_vec)?)?;
        let (o, t) = (median(ours_ms), median(theirs_ms));
        let common = format!(
            "{count} texts, {:.1} word pieces on average, batches of ≤{} texts / ≤{} padded word pieces (length-sorted, both); median of {ROUNDS} runs' medians of 3 passes; largest |difference| of the vectors {diff:.1e}",
            field(&ours, "mean_word_pieces")?,
            ours["batch"],
            ours["batch_tokens"],
        );
        rows.push(Row {
            name: format!("MiniLM {kind}, transformers CPU"),
            value: t,
            unit: "ms/text".into(),
            conditions: format!(
                "{common}; transformers {}, torch {}",
                theirs["transformers"].as_str().unwrap_or("?"),
                theirs["torch"].as_str().unwrap_or("?")
            ),
        });
        rows.push(Row {
            name: format!("MiniLM {kind}, ours flex"),
            value: o,
            unit: "ms/text".into(),
            conditions: format!("{common}; {:.2}x transformers' time", o / t),
        });
    }
    Ok(rows)
}

fn read_f32(path: &std::path::Path) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// A little-endian float32 `.npy` (format 1.x or 2.x): the header, then the raw values.
fn read_npy_f32(path: &std::path::Path) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    let bad = || anyhow::anyhow!("{}: not a little-endian float32 .npy", path.display());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad());
    }
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        _ if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad()),
    };
    let header = bytes
        .get(start..start + header_len)
        .map(String::from_utf8_lossy)
        .ok_or_else(bad)?;
    if !header.contains("'<f4'") || header.contains("'fortran_order': True") {
        return Err(bad());
    }
    let data = &bytes[start + header_len..];
    Ok(data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> Result<f32> {
    if a.len() != b.len() {
        bail!(
            "the two encoders returned {} and {} values for the same texts",
            a.len(),
            b.len()
        );
    }
    Ok(a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_numpy_float32_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("a.npy");
        // What numpy.save writes for np.array([1.5, -2.0], dtype=np.float32).
        let mut header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }".to_vec();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(b' ');
        }
        header.push(b'\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header);
        for v in [1.5f32, -2.0] {
            bytes.extend(v.to_le_bytes());
        }
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(read_npy_f32(&path).expect("read"), vec![1.5, -2.0]);
        std::fs::write(&path, b"not numpy").expect("write");
        assert!(read_npy_f32(&path).is_err());
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }
}
