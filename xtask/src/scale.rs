//! `cargo xtask bench scale [--set k=v]…`: the pipeline at MS COCO 2014 + VisDial's size on
//! this machine — synth → ingest → embed → a few hundred Stage-I steps → a few Stage-II steps —
//! with one row per stage: wall time, throughput, peak RSS (the line every stage prints) and the
//! disk size of its artifacts.
//!
//! `pipelines/coco-scale.toml` says what runs: the embeddings are the hashing encoder's at the
//! paper's widths (1024-d captions, 4800-d per dialogue turn, Skip-Thought's size) so memory is
//! what the real encoders would need without days of encoding; training is the recurrent
//! variant, which reads the per-turn vectors, the largest data a step touches. `--set` overrides
//! its keys, so a smaller `synth.train_images` gives the same table for a fraction of the data —
//! comparing two sizes shows whether memory grows with the data. Not in CI: at full size it runs
//! for tens of minutes here.

use crate::bench::Row;
use crate::runner::{RunOptions, run_pipeline};
use crate::util::{human_bytes, root};
use anyhow::{Context, Result};
use chatpainter_artifacts::Stage;
use std::path::Path;

/// The scale run: MS COCO + VisDial's sizes, the paper's embedding widths, Stage-I.
pub const PIPELINE: &str = "pipelines/coco-scale.toml";

/// The stages the scale run times (eval and report are not about the data path's size).
const STAGES: [Stage; 5] = [
    Stage::Synth,
    Stage::Ingest,
    Stage::Embed,
    Stage::Stage1,
    Stage::Stage2,
];

/// Bytes below `dir` (files only; a missing folder is 0).
pub fn disk_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_size(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// The `<stage>: peak RSS X MiB` line a stage printed.
pub fn peak_rss(stdout: &str) -> Option<f64> {
    stdout
        .lines()
        .find_map(|l| l.split("peak RSS ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// How fast a stage went, from its manifest summary: synth and ingest in images/s, embed in
/// texts encoded/s (captions, turns and dialogues), training in images/s of its last logged step.
fn throughput(run: &Path, stage: Stage, seconds: f64) -> Option<String> {
    let text = std::fs::read_to_string(run.join(stage).join("manifest.json")).ok()?;
    let m: serde_json::Value = serde_json::from_str(&text).ok()?;
    let s = &m["summary"];
    match stage {
        Stage::Synth => Some(format!("{:.0} images/s", s["images"].as_f64()? / seconds)),
        Stage::Ingest => Some(format!("{:.0} images/s", s["records"].as_f64()? / seconds)),
        Stage::Embed => {
            let r = &s["report"];
            let encoded: f64 = ["captions", "turns", "dialogues"]
                .iter()
                .filter_map(|k| r[*k]["encoded"].as_f64())
                .sum();
            Some(format!("{:.0} texts encoded/s", encoded / seconds))
        }
        _ => Some(format!(
            "{:.1} images/s at the last logged step",
            s["last_metrics"]["images_per_s"].as_f64()?
        )),
    }
}

/// `cargo xtask bench scale`.
pub fn scale(sets: &[String]) -> Result<()> {
    let run = root().join("runs/bench-scale");
    let report = run_pipeline(&RunOptions {
        pipeline: root().join(PIPELINE),
        run: Some(run.clone()),
        overrides: sets.to_vec(),
        ..Default::default()
    })
    .context("the scale run")?;
    let mut rows = Vec::new();
    for stage in STAGES {
        let Some(s) = report.stages.iter().find(|s| s.stage == stage) else {
            continue;
        };
        let bytes = disk_size(&run.join(stage));
        let rss = peak_rss(&s.stdout).unwrap_or(f64::NAN);
        let throughput =
            throughput(&run, stage, s.seconds).unwrap_or_else(|| "throughput not recorded".into());
        let conditions = format!(
            "{:.0} s wall, {throughput}, artifacts {}{}",
            s.seconds,
            human_bytes(bytes),
            if matches!(s.outcome, crate::runner::Outcome::Skipped) {
                " (skipped: up to date, so the wall time and RSS are the skip's)"
            } else {
                ""
            }
        );
        rows.push(Row {
            name: format!("scale {stage} peak RSS"),
            value: rss,
            unit: "MiB".into(),
            conditions,
        });
    }
    print!("{}", crate::bench::table(&rows));
    println!("\nsettings: {PIPELINE} with {}", sets.join(" "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_peak_rss_line_and_sizes_a_folder() {
        assert_eq!(
            peak_rss("stage1: 6 steps\nstage1: peak RSS 55.7 MiB\n"),
            Some(55.7)
        );
        assert_eq!(peak_rss("nothing here"), None);
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("a/b")).expect("dirs");
        std::fs::write(dir.path().join("a/b/f"), [0u8; 10]).expect("f");
        std::fs::write(dir.path().join("g"), [0u8; 5]).expect("g");
        assert_eq!(disk_size(dir.path()), 15);
        assert_eq!(disk_size(&dir.path().join("missing")), 0);
    }
}
