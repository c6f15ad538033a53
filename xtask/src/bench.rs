//! `cargo xtask bench [ingest|embed|stage1|stage2|loader|eval|all]`: runs the stage benchmarks and
//! prints one table. `ingest` is timed here (a generated COCO-shaped set through the real
//! stage); the others are `chatpainter bench <what>` on a release build, which prints one JSON
//! `BenchRow` (`name`, `value`, `unit`, `conditions`) per line. A benchmark the CLI does not have
//! yet becomes a `not available` row instead of failing the table.

use crate::runner::{Binary, Profile, build_cli};
use crate::util::root;
use anyhow::{Context, Result, bail};
use chatpainter_artifacts::Stage;
use std::process::Command;
use std::time::Instant;

/// Benchmarks, in table order.
pub const BENCHES: [&str; 6] = ["ingest", "embed", "stage1", "stage2", "loader", "eval"];

/// One figure of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub conditions: String,
}

impl Row {
    fn note(name: &str, conditions: String) -> Self {
        Self {
            name: name.into(),
            value: f64::NAN,
            unit: String::new(),
            conditions,
        }
    }
}

/// What one `chatpainter bench` run gave: its rows, or why there are none.
#[derive(Debug, Clone, PartialEq)]
pub enum BenchResult {
    Rows(Vec<Row>),
    /// The CLI has no such benchmark (yet).
    NotAvailable(String),
    Failed(String),
}

/// Parses `chatpainter bench` output: JSON rows on stdout; other lines are ignored.
pub fn parse_rows(stdout: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in stdout.lines().enumerate() {
        let line = line.trim();
        if !line.starts_with('{') {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("line {}: {line}", i + 1))?;
        let name = v["name"]
            .as_str()
            .with_context(|| format!("line {}: no `name`", i + 1))?;
        let value = v["value"].as_f64().unwrap_or(f64::NAN);
        rows.push(Row {
            name: name.to_string(),
            value,
            unit: v["unit"].as_str().unwrap_or_default().to_string(),
            conditions: v["conditions"].as_str().unwrap_or_default().to_string(),
        });
    }
    Ok(rows)
}

/// Classifies a finished `chatpainter bench <what>` process.
pub fn interpret(success: bool, stdout: &str, stderr: &str) -> BenchResult {
    let last_error = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("error"))
        .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("no error output")
        .trim()
        .to_string();
    if !success {
        let missing = stderr.contains("unknown benchmark")
            || stderr.contains("unrecognized subcommand")
            || stderr.contains("not implemented");
        return if missing {
            BenchResult::NotAvailable(last_error)
        } else {
            BenchResult::Failed(last_error)
        };
    }
    match parse_rows(stdout) {
        Ok(rows) if rows.is_empty() => {
            BenchResult::Failed("the benchmark printed no JSON row".into())
        }
        Ok(rows) => BenchResult::Rows(rows),
        Err(e) => BenchResult::Failed(format!("unreadable output: {e:#}")),
    }
}

fn cli_bench(bin: &Binary, what: &str) -> Result<BenchResult> {
    let mut cmd = bin.command();
    cmd.current_dir(root()).args(["bench", what]);
    eprintln!("[xtask] bench {what}: {}", crate::util::show(&cmd));
    let out = cmd
        .output()
        .with_context(|| format!("running chatpainter bench {what}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The benchmark's log goes to our stderr, so a long run shows progress.
    eprint!("{stderr}");
    Ok(interpret(
        out.status.success(),
        &String::from_utf8_lossy(&out.stdout),
        &stderr,
    ))
}

/// `cargo xtask bench <what>`.
pub fn bench(what: &str) -> Result<()> {
    let selected: Vec<&str> = match what {
        "all" => BENCHES.to_vec(),
        w if BENCHES.contains(&w) => vec![w],
        w => bail!("bench {w}: unknown; known: all, {}", BENCHES.join(", ")),
    };
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    let mut release: Option<Binary> = None;
    for w in selected {
        if w == "ingest" {
            match bench_ingest() {
                Ok(r) => {
                    eprint!("{}", table(&r));
                    rows.extend(r);
                }
                Err(e) => {
                    rows.push(Row::note("ingest", format!("failed: {e:#}")));
                    failed.push(w);
                }
            }
            continue;
        }
        let bin = match &release {
            Some(b) => b.clone(),
            None => {
                let b = build_cli(None, Profile::Release)?;
                release = Some(b.clone());
                b
            }
        };
        match cli_bench(&bin, w)? {
            BenchResult::Rows(r) => {
                // Each benchmark's rows as soon as they exist: a long table is not lost to a
                // later failure or a timeout.
                eprint!("{}", table(&r));
                rows.extend(r);
            }
            BenchResult::NotAvailable(why) => {
                rows.push(Row::note(w, format!("not available: {why}")));
            }
            BenchResult::Failed(why) => {
                rows.push(Row::note(w, format!("failed: {why}")));
                failed.push(w);
            }
        }
    }
    {
        use std::io::Write as _;
        let _ = std::io::stdout().write_all(table(&rows).as_bytes());
    }
    if !failed.is_empty() {
        bail!("benchmark(s) failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The table: name, value, unit, conditions.
pub fn table(rows: &[Row]) -> String {
    let w = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(9)
        .max(9);
    let mut s = format!(
        "\n{:<w$}  {:>12}  {:<12}  conditions\n",
        "benchmark", "value", "unit"
    );
    for r in rows {
        let value = if r.value.is_nan() {
            "—".to_string()
        } else if r.value.abs() >= 100.0 {
            format!("{:.1}", r.value)
        } else {
            format!("{:.3}", r.value)
        };
        s.push_str(&format!(
            "{:<w$}  {:>12}  {:<12}  {}\n",
            r.name, value, r.unit, r.conditions
        ));
    }
    s
}

/// Ingest of a generated COCO-shaped set: 2,000 JPEGs around 640x480.
fn bench_ingest() -> Result<Vec<Row>> {
    let bin = build_cli(None, Profile::Dev)?;
    let run = root().join("runs/bench-ingest");
    let pipeline = root().join("pipelines/smoke.toml");
    let sets = [
        "synth.train_images=1600",
        "synth.test_images=400",
        "synth.visdial_val_images=0",
        "synth.width=640",
        "synth.height=480",
        "ingest.row_group_size=128",
    ];
    let with_sets = |cmd: &mut Command| {
        for s in sets {
            cmd.arg("--set").arg(s);
        }
    };
    let mut synth = bin.command();
    synth
        .args([Stage::Synth.name(), "--pipeline"])
        .arg(&pipeline)
        .arg("--run")
        .arg(&run);
    with_sets(&mut synth);
    crate::util::run_checked(synth)?;
    let mut ingest = bin.command();
    ingest
        .args([Stage::Ingest.name(), "--force", "--pipeline"])
        .arg(&pipeline)
        .arg("--run")
        .arg(&run);
    with_sets(&mut ingest);
    let started = Instant::now();
    let out = ingest.output().context("running chatpainter ingest")?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("ingest failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rss = stdout
        .lines()
        .find_map(|l| l.split("peak RSS ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cond = format!("{threads} threads, 1600 train + 400 test images");
    Ok(vec![
        Row {
            name: "ingest 2000 jpeg 640x480: time".into(),
            value: secs,
            unit: "s".into(),
            conditions: cond.clone(),
        },
        Row {
            name: "ingest 2000 jpeg 640x480: rate".into(),
            value: 2000.0 / secs,
            unit: "images/s".into(),
            conditions: cond.clone(),
        },
        Row {
            name: "ingest 2000 jpeg 640x480: peak RSS".into(),
            value: rss,
            unit: "MiB".into(),
            conditions: cond,
        },
    ])
}

/// `cargo xtask bench scaling`: Stage-I images/s with 1 and 2 data-parallel CPU ranks (each
/// rank gets its share of the cores) and, with 2 ranks, the share of a Stage-I and a Stage-II
/// step spent averaging gradients (host copies + MPI all-reduce; `sync_ms` of `metrics.jsonl`).
/// Medians over the steps after the first five.
pub fn scaling() -> Result<()> {
    let pipeline = root().join("pipelines/smoke.toml");
    let sets = [
        "synth.train_images=256",
        "stage1.max_steps=40",
        "stage1.batch_size=32",
        "stage1.network.gf_dim=32",
        "stage1.network.df_dim=16",
        "stage1.checkpoint_every=0",
        "stage1.sample_every=0",
        "stage2.max_steps=12",
        "stage2.batch_size=4",
        "stage2.checkpoint_every=0",
        "stage2.sample_every=0",
    ];
    let mut rows = Vec::new();
    for ranks in [1usize, 2] {
        let run = root().join(format!("runs/bench-scaling-{ranks}"));
        crate::runner::run_pipeline(&crate::runner::RunOptions {
            pipeline: pipeline.clone(),
            run: Some(run.clone()),
            to: Some(Stage::Stage2.to_string()),
            force: vec![Stage::Stage1.to_string(), Stage::Stage2.to_string()],
            devices: Some(crate::dag::Devices::Cpu(ranks)),
            overrides: sets.iter().map(|s| (*s).to_string()).collect(),
            quiet: true,
            ..Default::default()
        })?;
        for (stage, widths) in [
            (Stage::Stage1, "gf 32 / df 16, caption+BiLSTM, batch 32"),
            (Stage::Stage2, "smoke widths (gf 8 / df 8), batch 4"),
        ] {
            let text = std::fs::read_to_string(run.join(stage).join("metrics.jsonl"))?;
            let mut step = Vec::new();
            let mut sync = Vec::new();
            for line in text.lines().skip(5) {
                let m: serde_json::Value = serde_json::from_str(line)?;
                step.push(m["step_ms"].as_f64().unwrap_or(f64::NAN));
                sync.extend(m["sync_ms"].as_f64());
            }
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
            };
            let (step_ms, sync_ms) = (median(&mut step), median(&mut sync));
            let batch = if stage == Stage::Stage1 { 32.0 } else { 4.0 };
            let conditions = format!(
                "{ranks} CPU rank(s) on {} cores, flex, {widths}, median of {} steps",
                std::thread::available_parallelism().map_or(1, |n| n.get()),
                step.len()
            );
            rows.push(Row {
                name: format!("{stage} step, {ranks} rank(s)"),
                value: batch * 1e3 / step_ms,
                unit: "images/s".into(),
                conditions: conditions.clone(),
            });
            if ranks > 1 {
                rows.push(Row {
                    name: format!("{stage} gradient all-reduce, {ranks} ranks"),
                    value: sync_ms,
                    unit: format!(
                        "ms/step ({:.1} % of {step_ms:.0} ms)",
                        100.0 * sync_ms / step_ms
                    ),
                    conditions,
                });
            }
        }
    }
    println!("{}", table(&rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_missing_arms() {
        let out = "noise\n{\"name\":\"embed minilm\",\"value\":812.5,\"unit\":\"sentences/s\",\"conditions\":\"2 threads\"}\n";
        assert_eq!(
            interpret(true, out, ""),
            BenchResult::Rows(vec![Row {
                name: "embed minilm".into(),
                value: 812.5,
                unit: "sentences/s".into(),
                conditions: "2 threads".into()
            }])
        );
        assert!(matches!(
            interpret(false, "", "error: bench stage2: unknown benchmark\n"),
            BenchResult::NotAvailable(m) if m == "error: bench stage2: unknown benchmark"
        ));
        assert!(matches!(
            interpret(false, "", "error: out of memory\n"),
            BenchResult::Failed(_)
        ));
        assert!(matches!(interpret(true, "", ""), BenchResult::Failed(_)));
        let t = table(&[
            Row::note("stage2", "not available: x".into()),
            Row {
                name: "a".into(),
                value: 1234.56,
                unit: "ms".into(),
                conditions: String::new(),
            },
        ]);
        assert!(
            t.contains("not available: x") && t.contains("1234.6"),
            "{t}"
        );
    }
}
