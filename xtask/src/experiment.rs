//! `cargo xtask bench dialogue`: the "does dialogue help?" experiment. Runs
//! `pipelines/dialogue.toml` once per variant (identical but for `stage1.variant`) into
//! `runs/dialogue-<variant>/`, then prints one table from the three `eval/metrics.json`: per
//! scene attribute, the accuracy of each variant's generated test images and the chance level,
//! and the per-turn curve of the dialogue variants. The table is also written to
//! `runs/dialogue-table.md`.
//!
//! A finished run is skipped by the runner (its stages are current), so rerunning only prints
//! the table; `--set` overrides (e.g. `stage1.max_steps=…`) make the stages stale and rerun them.

use crate::dag::Devices;
use crate::runner::{RunOptions, run_pipeline};
use crate::util::root;
use anyhow::{Context, Result};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub const VARIANTS: [&str; 3] = [
    "stackgan",
    "chatpainter-nonrecurrent",
    "chatpainter-recurrent",
];

/// The run directory of one variant.
pub fn run_dir(variant: &str) -> PathBuf {
    root().join("runs").join(format!("dialogue-{variant}"))
}

/// Runs the three variants (device `devices`, by default LibTorch on the CPU; extra `--set`
/// overrides) and prints the table.
pub fn dialogue(devices: Option<Devices>, overrides: &[String]) -> Result<()> {
    let pipeline = root().join("pipelines/dialogue.toml");
    let devices = Some(devices.unwrap_or(Devices::TchCpu(1)));
    for variant in VARIANTS {
        let mut sets = vec![format!("stage1.variant={variant}")];
        sets.extend(overrides.iter().cloned());
        eprintln!("[xtask] dialogue: {variant}");
        run_pipeline(&RunOptions {
            pipeline: pipeline.clone(),
            run: Some(run_dir(variant)),
            devices: devices.clone(),
            overrides: sets,
            ..RunOptions::default()
        })
        .with_context(|| format!("the {variant} run"))?;
    }
    let metrics: Vec<Value> = VARIANTS
        .iter()
        .map(|v| read_metrics(&run_dir(v).join("eval/metrics.json")))
        .collect::<Result<_>>()?;
    let text = table(&metrics)?;
    print!("{text}");
    let out = root().join("runs/dialogue-table.md");
    chatpainter_artifacts::write_atomic(&out, text.as_bytes())?;
    let page = root().join("runs/dialogue.html");
    chatpainter_artifacts::write_atomic(&page, html(&text).as_bytes())?;
    eprintln!(
        "[xtask] dialogue: table in {}, the three sample sheets side by side in {}",
        out.display(),
        page.display()
    );
    Ok(())
}

/// A page beside the runs: the tables, then each variant's eval sheet (real | generated) side by
/// side, linked from the run folders (each run's own report has the rest).
fn html(markdown: &str) -> String {
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
        let _ = write!(
            body,
            "<figure><img src=\"dialogue-{v}/eval/sheet.png\" alt=\"{v}\"><figcaption>{v} \
             (<a href=\"dialogue-{v}/report/index.html\">report</a>)</figcaption></figure>"
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

/// The Markdown table of the three variants' scene scores, then the per-turn curves.
pub fn table(metrics: &[Value]) -> Result<String> {
    let scores = |m: &Value| m["scenes"]["images"]["attributes"].clone();
    let first = scores(&metrics[0]);
    let attributes = first
        .as_array()
        .context("eval/metrics.json has no scene scores: is the dataset synthetic?")?;
    let mut s = String::from("| attribute | stated by |");
    for v in VARIANTS {
        let _ = write!(s, " {v} |");
    }
    s.push_str(" chance | majority |\n|---|---|");
    s.push_str(&"---:|".repeat(VARIANTS.len() + 2));
    s.push('\n');
    for (row, a) in attributes.iter().enumerate() {
        let _ = write!(
            s,
            "| {} | {} |",
            a["name"].as_str().unwrap_or("?"),
            a["visibility"].as_str().unwrap_or("?")
        );
        for m in metrics {
            let _ = write!(s, " {} |", pct(&scores(m)[row]["accuracy"]));
        }
        let _ = writeln!(s, " {} | {} |", pct(&a["chance"]), pct(&a["majority"]));
    }
    let images = metrics[0]["scenes"]["images"]["images"]
        .as_u64()
        .unwrap_or(0);
    let steps: Vec<String> = metrics
        .iter()
        .map(|m| {
            m["protocol"]["step"]
                .as_u64()
                .map_or("?".into(), |n| n.to_string())
        })
        .collect();
    let _ = writeln!(
        s,
        "\n{images} generated test images per variant (Stage-I, steps {}), scorer {}.\n",
        steps.join(" / "),
        metrics[0]["scenes"]["images"]["scorer"]
            .as_str()
            .unwrap_or("?")
    );
    for (m, v) in metrics.iter().zip(VARIANTS) {
        let Some(turns) = m["scenes"]["per_turn"].as_array().filter(|t| !t.is_empty()) else {
            continue;
        };
        let strips = turns[0]["images"].as_u64().unwrap_or(0);
        let _ = writeln!(
            s,
            "Per-turn accuracy, {v} ({strips} dialogues; column t = caption + first t turns):\n"
        );
        s.push_str("| attribute |");
        for t in 1..=turns.len() {
            let _ = write!(s, " {t} |");
        }
        s.push_str("\n|---|");
        s.push_str(&"---:|".repeat(turns.len()));
        s.push('\n');
        for (row, a) in attributes.iter().enumerate() {
            let _ = write!(s, "| {} |", a["name"].as_str().unwrap_or("?"));
            for t in turns {
                let _ = write!(s, " {} |", pct(&t["attributes"][row]["accuracy"]));
            }
            s.push('\n');
        }
        s.push('\n');
    }
    Ok(s)
}
