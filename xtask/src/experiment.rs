//! `cargo xtask bench dialogue`: the "does dialogue help?" experiment. Runs
//! `pipelines/dialogue.toml` once per variant and seed (identical but for `stage1.variant` and
//! `stage1.seed`), optionally under a named setting of switches, then prints one table from the
//! runs' `eval/metrics.json`: per scene attribute, each variant's accuracy of its generated test
//! images (mean ± standard deviation over the seeds) and the chance level; the per-turn curves;
//! and the learning curves (the scorer on the same test conditions at every kept checkpoint).
//! `--ablation` also runs the setting with each of its switches turned off in turn. Everything
//! is written to `runs/dialogue[-<setting>]-table.md`.
//!
//! A finished run is skipped by the runner (its stages are current), so rerunning only prints
//! the table; `--set` overrides (e.g. `stage1.max_steps=…`) make the stages stale and rerun them.

use crate::dag::Devices;
use crate::runner::{RunOptions, run_pipeline};
use crate::util::root;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub const VARIANTS: [&str; 3] = [
    "stackgan",
    "chatpainter-nonrecurrent",
    "chatpainter-recurrent",
];

/// Named settings: the switches (off by default, so no setting is the paper's recipe) that the
/// experiment compares, as `--set` overrides of `pipelines/dialogue.toml`.
pub const SETTINGS: [(&str, &[&str]); 3] = [
    ("paper", &[]),
    // ChatPainter §6's auxiliary object-recognition loss on D, at GeNeVA's weight.
    ("objects", &["stage1.object_loss=5"]),
    // The same with a linear CA (σ may fall below 1 where the text is informative).
    (
        "objects-linear-ca",
        &["stage1.object_loss=5", "stage1.ca_activation=linear"],
    ),
];

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct Experiment {
    /// Where Stage-I and eval run (default LibTorch on the CPU).
    pub devices: Option<Devices>,
    /// Extra `--set` overrides for every run.
    pub overrides: Vec<String>,
    /// Seeds per variant (`stage1.seed` = 0, 1, …); at least 1.
    pub seeds: u64,
    /// A name of [`SETTINGS`] (default `paper`).
    pub setting: Option<String>,
    /// Also run the setting with each of its switches off in turn.
    pub ablation: bool,
}

/// The overrides of a named setting.
fn setting(name: &str) -> Result<&'static [&'static str]> {
    SETTINGS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, sets)| *sets)
        .with_context(|| {
            format!(
                "unknown setting `{name}` (known: {})",
                SETTINGS.map(|(n, _)| n).join(", ")
            )
        })
}

/// The run directory of one variant and seed under a setting label (`paper`, seed 0: the
/// historical `runs/dialogue-<variant>`).
pub fn run_dir(label: &str, variant: &str, seed: u64) -> PathBuf {
    let mut name = String::from("dialogue");
    if label != "paper" {
        let _ = write!(name, "-{label}");
    }
    let _ = write!(name, "-{variant}");
    if seed > 0 {
        let _ = write!(name, "-seed{seed}");
    }
    root().join("runs").join(name)
}

/// One row group of the table: a label and its switches.
struct Arm {
    label: String,
    sets: Vec<String>,
}

/// Runs every variant × seed of the setting (and of its ablations), then prints and writes the
/// tables.
pub fn dialogue(e: &Experiment) -> Result<()> {
    if e.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let name = e.setting.as_deref().unwrap_or("paper");
    let switches = setting(name)?;
    let mut arms = vec![Arm {
        label: name.to_string(),
        sets: switches.iter().map(|s| (*s).to_string()).collect(),
    }];
    if e.ablation {
        for (i, off) in switches.iter().enumerate() {
            let key = off.split('=').next().unwrap_or(off);
            arms.push(Arm {
                label: format!("{name}-without-{}", key.trim_start_matches("stage1.")),
                sets: switches
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, s)| (*s).to_string())
                    .collect(),
            });
        }
    }
    let pipeline = root().join("pipelines/dialogue.toml");
    let devices = Some(e.devices.clone().unwrap_or(Devices::TchCpu(1)));
    let mut text = String::new();
    for arm in &arms {
        let mut metrics: Vec<Vec<Value>> = Vec::new();
        for variant in VARIANTS {
            let mut per_seed = Vec::new();
            for seed in 0..e.seeds {
                let mut sets = vec![
                    format!("stage1.variant={variant}"),
                    format!("stage1.seed={seed}"),
                ];
                sets.extend(arm.sets.iter().cloned());
                sets.extend(e.overrides.iter().cloned());
                let dir = run_dir(&arm.label, variant, seed);
                eprintln!("[xtask] dialogue: {} {variant} seed {seed}", arm.label);
                run_pipeline(&RunOptions {
                    pipeline: pipeline.clone(),
                    run: Some(dir.clone()),
                    devices: devices.clone(),
                    overrides: sets,
                    ..RunOptions::default()
                })
                .with_context(|| format!("the {} {variant} seed {seed} run", arm.label))?;
                per_seed.push(read_metrics(&dir.join("eval/metrics.json"))?);
            }
            metrics.push(per_seed);
        }
        let switches = if arm.sets.is_empty() {
            "no switch (the paper's recipe)".to_string()
        } else {
            arm.sets.join(", ")
        };
        let _ = writeln!(text, "## Setting `{}`: {switches}\n", arm.label);
        text.push_str(&table(&metrics)?);
    }
    print!("{text}");
    let suffix = if name == "paper" {
        String::new()
    } else {
        format!("-{name}")
    };
    let out = root().join(format!("runs/dialogue{suffix}-table.md"));
    chatpainter_artifacts::write_atomic(&out, text.as_bytes())?;
    let page = root().join(format!("runs/dialogue{suffix}.html"));
    chatpainter_artifacts::write_atomic(&page, html(&text, &arms[0].label).as_bytes())?;
    eprintln!(
        "[xtask] dialogue: tables in {}, the sample sheets side by side in {}",
        out.display(),
        page.display()
    );
    Ok(())
}

/// A page beside the runs: the tables, then each variant's eval sheet (real | generated) side by
/// side, linked from the run folders (each run's own report has the rest).
fn html(markdown: &str, label: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut body = String::new();
    let mut in_table = false;
    for line in markdown.lines() {
        if line.starts_with("|---") {
            continue;
        }
        if let Some(row) = line.strip_prefix('|') {
            if !in_table {
                body.push_str("<table>");
                in_table = true;
            }
            body.push_str("<tr>");
            for cell in row.trim_end_matches('|').split('|') {
                let _ = write!(body, "<td>{}</td>", esc(cell.trim()));
            }
            body.push_str("</tr>\n");
            continue;
        }
        if in_table {
            body.push_str("</table>\n");
            in_table = false;
        }
        if !line.trim().is_empty() {
            let _ = writeln!(body, "<p>{}</p>", esc(line));
        }
    }
    if in_table {
        body.push_str("</table>\n");
    }
    body.push_str("<h2>Generated test images (real | generated)</h2><div class=\"cols\">");
    for v in VARIANTS {
        let dir = run_dir(label, v, 0);
        let dir = dir.file_name().and_then(|n| n.to_str()).unwrap_or(v);
        let _ = write!(
            body,
            "<figure><img src=\"{dir}/eval/sheet.png\" alt=\"{v}\"><figcaption>{v} \
             (<a href=\"{dir}/report/index.html\">report</a>)</figcaption></figure>"
        );
    }
    body.push_str("</div>");
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Does dialogue help?</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td{{border:1px solid #ccc;padding:2px 8px}}\
         table{{border-collapse:collapse;margin:1em 0}}.cols{{display:flex;gap:1em}}\
         img{{image-rendering:pixelated}}</style></head><body><h1>Does dialogue help?</h1>\n\
         {body}</body></html>\n"
    )
}

fn read_metrics(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    serde_json::from_slice(&bytes).with_context(|| path.display().to_string())
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "—".into(), |f| format!("{:.1} %", 100.0 * f))
}

/// `mean ± std` (population) of accuracies, in percent; one value prints alone.
fn mean_std(values: &[f64]) -> String {
    if values.is_empty() {
        return "—".into();
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() == 1 {
        return format!("{:.1} %", 100.0 * mean);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    format!("{:.1} ± {:.1} %", 100.0 * mean, 100.0 * var.sqrt())
}

/// The Markdown tables of one setting: per attribute, each variant's accuracy over its seeds
/// (`metrics[variant][seed]`); the per-turn curves and the learning curves of seed 0.
pub fn table(metrics: &[Vec<Value>]) -> Result<String> {
    let scores = |m: &Value| m["scenes"]["images"]["attributes"].clone();
    let first = metrics
        .first()
        .and_then(|v| v.first())
        .context("no run to tabulate")?;
    let base = scores(first);
    let attributes = base
        .as_array()
        .context("eval/metrics.json has no scene scores: is the dataset synthetic?")?;
    let seeds = metrics[0].len();
    let mut s = String::from("| attribute | stated by |");
    for v in VARIANTS {
        let _ = write!(s, " {v} |");
    }
    s.push_str(" chance | majority |\n|---|---|");
    s.push_str(&"---:|".repeat(VARIANTS.len() + 2));
    s.push('\n');
    for (row, a) in attributes.iter().enumerate() {
        let name = a["name"].as_str().unwrap_or("?");
        let _ = write!(
            s,
            "| {name} | {} |",
            a["visibility"].as_str().unwrap_or("?")
        );
        for runs in metrics {
            let accuracies: Vec<f64> = runs
                .iter()
                .filter_map(|m| scores(m)[row]["accuracy"].as_f64())
                .collect();
            let _ = write!(s, " {} |", mean_std(&accuracies));
        }
        let _ = writeln!(s, " {} | {} |", pct(&a["chance"]), pct(&a["majority"]));
    }
    let images = first["scenes"]["images"]["images"].as_u64().unwrap_or(0);
    let steps: Vec<String> = metrics
        .iter()
        .map(|runs| {
            runs[0]["protocol"]["step"]
                .as_u64()
                .map_or("?".into(), |n| n.to_string())
        })
        .collect();
    let _ = writeln!(
        s,
        "\n{images} generated test images per run, {seeds} seed(s) per variant (Stage-I, steps {}), \
         scorer {}.\n",
        steps.join(" / "),
        first["scenes"]["images"]["scorer"].as_str().unwrap_or("?")
    );
    for (runs, v) in metrics.iter().zip(VARIANTS) {
        let m = &runs[0];
        if let Some(turns) = m["scenes"]["per_turn"].as_array().filter(|t| !t.is_empty()) {
            let strips = turns[0]["images"].as_u64().unwrap_or(0);
            let _ = writeln!(
                s,
                "Per-turn accuracy, {v}, seed 0 ({strips} dialogues; column t = caption + first t turns):\n"
            );
            curve_table(
                &mut s,
                attributes,
                "turn",
                turns,
                |i, _| (i + 1).to_string(),
                |t| t,
            );
        }
        if let Some(points) = m["scenes"]["curve"].as_array().filter(|c| !c.is_empty()) {
            let _ = writeln!(
                s,
                "Learning curve, {v}, seed 0 (accuracy by training step):\n"
            );
            curve_table(
                &mut s,
                attributes,
                "step",
                points,
                |_, p| p["step"].as_u64().map_or("?".into(), |n| n.to_string()),
                |p| &p["scores"],
            );
        }
    }
    Ok(s)
}

/// A table with one row per attribute and one column per point (`head` names a column,
/// `scores_of` finds a point's scene scores).
fn curve_table(
    s: &mut String,
    attributes: &[Value],
    what: &str,
    points: &[Value],
    head: impl Fn(usize, &Value) -> String,
    scores_of: impl Fn(&Value) -> &Value,
) {
    let _ = write!(s, "| attribute \\ {what} |");
    for (i, p) in points.iter().enumerate() {
        let _ = write!(s, " {} |", head(i, p));
    }
    s.push_str("\n|---|");
    s.push_str(&"---:|".repeat(points.len()));
    s.push('\n');
    for (row, a) in attributes.iter().enumerate() {
        let _ = write!(s, "| {} |", a["name"].as_str().unwrap_or("?"));
        for p in points {
            let _ = write!(
                s,
                " {} |",
                pct(&scores_of(p)["attributes"][row]["accuracy"])
            );
        }
        s.push('\n');
    }
    s.push('\n');
}
