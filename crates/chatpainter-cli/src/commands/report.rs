//! `chatpainter report`: the run's HTML page (`<run>/report/index.html`). The page is built by
//! `chatpainter_report`; this module wires the pipeline's `[report]` table, the artifact contract
//! and logging.

use anyhow::{Context, Result};
use chatpainter_artifacts::digest::sha256_json;
use chatpainter_artifacts::{Stage, StageKey, StageOutput};
use chatpainter_report::{Inputs, REPORT_FILE};

use super::stage::{StageRunner, load};
use crate::StageArgs;

/// `chatpainter report --pipeline P --run R`. Works on any run, whichever stages it has: the
/// `[report]` table is optional and absent stages are listed as not run.
pub fn report(args: &StageArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let (pipeline, run) = load(args)?;
    let cfg = pipeline.report.clone().unwrap_or_default();
    if !run.root().is_dir() && !args.plan {
        anyhow::bail!(
            "{}: no such run directory; run the pipeline's stages first",
            run.root().display()
        );
    }
    // The page shows the resolved pipeline, so it is part of what the page is made from.
    let pipeline_toml = toml::to_string(&pipeline).context("serialising the resolved pipeline")?;
    let stage = StageRunner::create(&run, Stage::Report, args)?;
    let key = StageKey {
        config_digest: sha256_json(&(&cfg, &pipeline_toml)),
        inputs_digest: String::new(),
        upstream: chatpainter_report::upstream_digests(run.root())?,
    };
    stage.run(
        &key,
        &toml::to_string(&cfg)?,
        |dir| -> Result<StageOutput> {
            let report = chatpainter_report::build(&Inputs {
                run_root: run.root(),
                config: &cfg,
                pipeline_toml: &pipeline_toml,
                run_name: &pipeline.run.name,
            })?;
            let output = chatpainter_report::write(&report, dir)?;
            for w in &report.warnings {
                println!("report: warning: {w}");
            }
            println!(
                "report: {} ({}), stages shown: {}; not run: {}",
                dir.join(REPORT_FILE).display(),
                output.bytes,
                list(&report.shown),
                list(&report.not_run),
            );
            Ok(StageOutput {
                summary: serde_json::json!({
                    "shown": report.shown,
                    "not_run": report.not_run,
                    "warnings": report.warnings.len(),
                    "bytes": output.bytes,
                }),
                outputs: vec![output],
                seed: None,
            })
        },
    )?;
    tracing::info!("report: {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn list(stages: &[Stage]) -> String {
    if stages.is_empty() {
        "none".into()
    } else {
        stages
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}
