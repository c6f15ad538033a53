//! The embed stage with the real all-MiniLM-L6-v2 (needs the weights: `$CHATPAINTER_MODELS` or
//! `data/models`, else it prints "skipped" and passes).

use std::path::{Path, PathBuf};

use chatpainter_model::text::MINILM_DIR_NAME;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn weights_dir() -> Option<PathBuf> {
    let from_env = std::env::var_os("CHATPAINTER_MODELS")
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join(MINILM_DIR_NAME));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/models")
        .join(MINILM_DIR_NAME);
    from_env
        .into_iter()
        .chain([workspace])
        .find(|d| d.join("model.safetensors").is_file())
}

#[test]
fn the_stage_counts_truncated_dialogues_and_states_the_limit() -> TestResult {
    use chatpainter_embed::config::EmbedConfig;
    use chatpainter_embed::stage::build;
    use chatpainter_formats::ingested::Record;
    use chatpainter_formats::ingested::{Dialogue, Turn};
    use chatpainter_model::text::{EncoderSpec, Encoders};
    let Some(dir) = weights_dir() else {
        eprintln!("skipped: weights not found, run cargo xtask fetch-models");
        return Ok(());
    };
    let spec = EncoderSpec::Minilm {
        model_dir: Some(dir.display().to_string()),
        max_tokens: 32,
    };
    let cfg = EmbedConfig {
        caption_encoder: spec.clone(),
        dialogue_encoder: spec,
        cache_dir: String::new(),
        batch_size: 8,
        part_size: 8,
        device: Default::default(),
        batch_tokens: None,
    };
    let encoders = Encoders::load(&cfg.encoders())?;
    let turn = |q: &str, a: &str| Turn {
        question: q.into(),
        answer: Some(a.into()),
    };
    // Ten turns: the whole dialogue is ≈70 word pieces, over the limit of 32; no turn is.
    let record = Record {
        image_id: 1,
        split: "train".into(),
        file_name: "train2014/COCO_train2014_000000000001.jpg".into(),
        width: 8,
        height: 8,
        captions: vec!["a dog on a beach".into()],
        dialogue: Some(Dialogue {
            caption: "a dog on a beach".into(),
            source: "1.0/train".into(),
            turns: (0..10)
                .map(|i| turn(&format!("is the dog number {i} happy"), "yes it is"))
                .collect(),
        }),
    };
    let tmp = tempfile::tempdir()?;
    let report = build(
        &cfg,
        &encoders,
        &[record],
        &tmp.path().join("cache"),
        &tmp.path().join("e.parquet"),
        &chatpainter_artifacts::NoProgress,
    )?;
    assert_eq!(report.dialogues.truncated, 1, "{report:?}");
    assert_eq!(report.turns.truncated, 0);
    assert_eq!(report.dialogue_max_tokens, Some(32));
    assert!(
        report
            .summary()
            .contains("dialogues and turns first 32 tokens kept"),
        "{}",
        report.summary()
    );
    Ok(())
}
