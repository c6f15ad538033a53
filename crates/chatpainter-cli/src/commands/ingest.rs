//! `chatpainter synth`, `ingest` (whole or one shard) and `ingest-merge`: the data stages. The
//! work is in `chatpainter_ingest`.

use anyhow::{Context, Result, bail};
use chatpainter_artifacts::digest::sha256_json;
use chatpainter_artifacts::stage::PENDING_UPSTREAM;
use chatpainter_artifacts::{Manifest, Stage, StageKey, StageOutput};
use chatpainter_formats::ingested::{QUALITY_FILE, Shard};
use chatpainter_formats::quality::QualityReport;
use chatpainter_ingest::pipeline as ingest;
use std::path::Path;

use super::stage::{StageRunner, load, table, upstream_of};
use crate::{StageArgs, ui};

/// `chatpainter synth`: the synthetic dataset in the real COCO + VisDial formats.
pub fn synth(args: &StageArgs) -> Result<()> {
    let (pipeline, run) = load(args)?;
    let mut cfg = table(args, &pipeline.synth, Stage::Synth)?;
    cfg.seed ^= pipeline.run.seed;
    let stage = StageRunner::create(&run, Stage::Synth, args)?;
    let key = StageKey {
        config_digest: sha256_json(&cfg),
        ..Default::default()
    };
    stage.run(&key, &toml::to_string(&cfg)?, |dir| {
        tracing::info!(
            "synth: {} train, {} test, {} visdial-val images at ~{}x{}",
            cfg.train_images,
            cfg.test_images,
            cfg.visdial_val_images,
            cfg.width,
            cfg.height
        );
        let outputs = chatpainter_ingest::synth::generate(&cfg, dir)?;
        Ok::<_, chatpainter_ingest::IngestError>(StageOutput {
            outputs,
            summary: serde_json::json!({"images": cfg.train_images + cfg.test_images + cfg.visdial_val_images}),
            seed: Some(cfg.seed),
        })
    })?;
    Ok(())
}

/// `chatpainter ingest [--shard I/N] [--strict]`.
pub fn ingest(args: &StageArgs, shard: Option<Shard>, strict: bool) -> Result<()> {
    let (pipeline, run) = load(args)?;
    let mut cfg = table(args, &pipeline.ingest, Stage::Ingest)?;
    cfg.strict |= strict;
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.pipeline.display()))?;
    let shard = shard.unwrap_or(Shard::WHOLE);
    let stage_dir = if args.plan {
        run.stage(Stage::Ingest)
    } else {
        run.create_stage(Stage::Ingest)?
    };
    let dir = if shard.count > 1 {
        stage_dir.join(shard.dir_name())
    } else {
        stage_dir
    };
    let stage = StageRunner::open(dir, Stage::Ingest, args)?;
    let upstream = upstream_of(args, &run, &[&cfg.data_root])?;
    if upstream.values().any(|d| d == PENDING_UPSTREAM) {
        // A plan, with the data still to be made (`run:synth`): it will run once it is.
        let key = StageKey {
            upstream,
            ..StageKey::default()
        };
        return stage.print_plan(&stage.decide(&key, "")?, None);
    }
    let data_root = run.resolve(&cfg.data_root);
    if !data_root.is_dir() {
        bail!(
            "ingest.data_root {:?}: {} is not a folder",
            cfg.data_root,
            data_root.display()
        );
    }
    // The shard is not part of the key: every shard must share the same one to be merged.
    let key = StageKey {
        config_digest: sha256_json(&cfg),
        inputs_digest: chatpainter_ingest::inputs_digest(&cfg, &data_root)?,
        upstream,
    };
    let bar = ui::Bar::new();
    stage.run_or_show(
        &key,
        &toml::to_string(&cfg)?,
        |dir| {
            let out = ingest::run(&cfg, &data_root, dir, shard, &bar)?;
            print!("{}", out.report.summary());
            Ok::<_, chatpainter_ingest::IngestError>(StageOutput {
                outputs: out.outputs,
                summary: serde_json::to_value(&out.summary).unwrap_or_default(),
                seed: None,
            })
        },
        print_quality,
    )?;
    Ok(())
}

/// A finished ingest's quality summary, as the run printed it.
fn print_quality(dir: &Path) -> Result<()> {
    let path = dir.join(QUALITY_FILE);
    let report: QualityReport =
        serde_json::from_slice(&std::fs::read(&path).with_context(|| path.display().to_string())?)
            .with_context(|| path.display().to_string())?;
    print!("{}", report.summary());
    Ok(())
}

/// `chatpainter ingest-merge --shards N`.
pub fn merge(args: &StageArgs, shards: u32) -> Result<()> {
    if shards < 2 {
        bail!("--shards {shards}: a merge needs at least 2 shards");
    }
    let (_pipeline, run) = load(args)?;
    let stage = StageRunner::create(&run, Stage::Ingest, args)?.labelled("ingest-merge");
    let dir = stage.dir();
    let first = Shard {
        index: 0,
        count: shards,
    };
    let shard0 = Manifest::load(&dir.join(first.dir_name()))
        .with_context(|| format!("shard 0/{shards} has not finished"))?;
    // The merged dataset is identified by the shards' common inputs and their manifests.
    let mut key = shard0.key.clone();
    key.config_digest = sha256_json(&(&shard0.key.config_digest, shards));
    for i in 0..shards {
        let shard_dir = dir.join(
            Shard {
                index: i,
                count: shards,
            }
            .dir_name(),
        );
        let digest = Manifest::outputs_digest_of(&shard_dir)
            .with_context(|| format!("shard {i}/{shards} has not finished"))?;
        key.upstream.insert(format!("shard-{i}"), digest);
    }
    stage.run(&key, &format!("shards = {shards}\n"), |dir| {
        let out = ingest::merge(dir, shards)?;
        print!("{}", out.report.summary());
        Ok::<_, chatpainter_ingest::IngestError>(StageOutput {
            outputs: out.outputs,
            summary: serde_json::to_value(&out.summary).unwrap_or_default(),
            seed: None,
        })
    })?;
    Ok(())
}
