//! `chatpainter embed [--verify N]`: caption, whole-dialogue and per-turn vectors of the
//! ingested dataset. The work is in `chatpainter_embed`.

use anyhow::{Result, bail};
use chatpainter_artifacts::digest::sha256_json;
use chatpainter_artifacts::{OutputFile, Stage, StageKey, StageOutput};
use chatpainter_embed::config::EmbedConfig;
use chatpainter_embed::stage as embed;
use chatpainter_formats::ingested::{RECORDS_FILE, read_records};
use chatpainter_model::text::Encoders;

use super::stage::{StageRunner, load, table, upstream_of};
use crate::{StageArgs, ui};

pub fn embed(args: &StageArgs, verify_n: Option<usize>) -> Result<()> {
    let (pipeline, run) = load(args)?;
    let cfg = table(args, &pipeline.embed, Stage::Embed)?;
    let stage = StageRunner::create(&run, Stage::Embed, args)?;
    let upstream = upstream_of(args, &run, &["run:ingest"])?;
    // Encoder paths resolve like every pipeline path (`run:` inside the run).
    let encoders = Encoders::load_with(&cfg.encoders(), &|p: &str| run.resolve(p))?;
    // The encoders' identities (weights hashes included) are part of the key: new weights,
    // new embeddings. Where and in what batches they run is not: the vectors are the same up
    // to float rounding, so moving a finished run to another device does not redo it.
    let keyed = EmbedConfig {
        device: Default::default(),
        batch_tokens: None,
        ..cfg.clone()
    };
    let key = StageKey {
        config_digest: sha256_json(&(
            &keyed,
            encoders.caption.identity(),
            encoders.dialogue.identity(),
        )),
        inputs_digest: String::new(),
        upstream,
    };
    let records_path = run.stage(Stage::Ingest).join(RECORDS_FILE);
    let cache_dir = run.resolve(&cfg.cache_dir);
    let bar = ui::Bar::new();
    stage.run(
        &key,
        &toml::to_string(&cfg)?,
        |dir| -> Result<StageOutput> {
            let records = read_records(&records_path)?;
            let report = embed::build(
                &cfg,
                &encoders,
                &records,
                &cache_dir,
                &dir.join("embeddings.parquet"),
                &bar,
            )?;
            print!("{}", report.summary());
            let json = serde_json::to_vec_pretty(&report)?;
            chatpainter_artifacts::write_atomic(dir.join("report.json"), &json)?;
            Ok(StageOutput {
                outputs: vec![
                    // Quarantined images (char-CNN-RNN captions) are not in the table.
                    OutputFile::describe(dir, "embeddings.parquet", Some(report.images as u64))?,
                    OutputFile::describe(dir, "report.json", None)?.as_report(),
                ],
                summary: serde_json::json!({
                    "report": report,
                    "caption_encoder": encoders.caption.identity(),
                    "dialogue_encoder": encoders.dialogue.identity(),
                }),
                seed: None,
            })
        },
    )?;
    if let Some(n) = verify_n.filter(|_| !args.plan) {
        let records = read_records(&records_path)?;
        // Streams the table: only the sampled vectors are kept.
        let path = stage.dir().join("embeddings.parquet");
        let v = chatpainter_embed::verify::verify_file(&encoders, &records, &path, n, 0)?;
        println!(
            "embed verify: {} texts re-encoded, max |difference| {:.2e} (worst: {:?})",
            v.checked, v.max_abs_diff, v.worst_text
        );
        if v.max_abs_diff > 1e-4 {
            bail!(
                "embed verify: the cache disagrees with the encoder by {:.2e}",
                v.max_abs_diff
            );
        }
    }
    Ok(())
}
