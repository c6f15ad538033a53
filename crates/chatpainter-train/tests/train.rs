//! Integration tests of Stage-I training on tiny synthetic in-memory data (smoke widths, flex
//! CPU): exact resume (bit-identical weights after interrupting and resuming, by step limit and by
//! the stop flag), checkpoint retention, metrics, sample sheets, the NaN guard, the variants and
//! bad inputs.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use chatpainter_artifacts::NoProgress;
use chatpainter_train::checkpoint::{self, CHECKPOINTS_DIR};
use chatpainter_train::data::LOAD_SIZE;
use chatpainter_train::export::tensor_values;
use chatpainter_train::metrics::{METRICS_FILE, SAMPLES_DIR, read_metrics};
use chatpainter_train::rng::Xoshiro256;
use chatpainter_train::{
    Stage1Data, Stage1Item, Stage1TrainConfig, TrainError, Variant, load_checkpoint_networks,
    train_stage1,
};

const CAPTION_DIM: usize = 12;
const DIALOGUE_DIM: usize = 6;

fn synthetic(n: usize, seed: u64) -> Stage1Data {
    let mut rng = Xoshiro256::new(seed, 0);
    let items = (0..n)
        .map(|i| {
            let base = (i * 37 % 200) as u8;
            let image = (0..LOAD_SIZE * LOAD_SIZE * 3)
                .map(|k| {
                    base.wrapping_add((k % 97) as u8)
                        .wrapping_add((rng.below(16)) as u8)
                })
                .collect();
            let turns = 1 + i % 3;
            Stage1Item {
                image_id: i as i64,
                image,
                captions: (0..2).map(|_| rng.normals(CAPTION_DIM)).collect(),
                dialogue: Some(rng.normals(DIALOGUE_DIM)),
                turns: (0..turns).map(|_| rng.normals(DIALOGUE_DIM)).collect(),
            }
        })
        .collect();
    Stage1Data::new(items).expect("synthetic data")
}

fn config(variant: Variant, max_steps: u64) -> Stage1TrainConfig {
    let mut c = Stage1TrainConfig::smoke(variant);
    c.network.z_dim = Some(8);
    c.network.gf_dim = Some(4);
    c.network.df_dim = Some(4);
    c.network.cond_dim = Some(8);
    c.network.rnn_hidden = Some(4);
    c.batch_size = 4;
    c.max_steps = Some(max_steps);
    c.lr_decay_epochs = 1; // exercise the schedule across the resume
    c.checkpoint_every = 2;
    c.seed = 17;
    c
}

fn run(
    cfg: &Stage1TrainConfig,
    data: &Stage1Data,
    dir: &Path,
    stop: bool,
) -> Result<chatpainter_train::TrainSummary, TrainError> {
    train_stage1(cfg, data, dir, &NoProgress, &AtomicBool::new(stop))
}

fn final_weights(
    dir: &Path,
) -> (
    Vec<chatpainter_train::export::HostTensor>,
    Vec<chatpainter_train::export::HostTensor>,
) {
    let last = checkpoint::latest(dir)
        .expect("list")
        .expect("a checkpoint");
    let (g, d, _) = load_checkpoint_networks(&last).expect("load");
    (tensor_values(&g), tensor_values(&d))
}

fn assert_bit_identical(a: &Path, b: &Path) {
    let (ga, da) = final_weights(a);
    let (gb, db) = final_weights(b);
    for (x, y) in ga.iter().chain(&da).zip(gb.iter().chain(&db)) {
        assert_eq!(x.path, y.path);
        let same = x
            .values
            .iter()
            .zip(&y.values)
            .all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "tensor {} differs", x.path);
    }
    assert_eq!(ga.len() + da.len(), gb.len() + db.len());
    for f in ["stage1_g.safetensors", "stage1_d.safetensors"] {
        let (fa, fb) = (
            std::fs::read(a.join(f)).expect("export"),
            std::fs::read(b.join(f)).expect("export"),
        );
        assert_eq!(fa, fb, "{f} differs");
    }
}

#[test]
fn resume_is_bit_identical_to_an_uninterrupted_run() {
    // 14 images, batch 4: 3 steps per epoch (2 images dropped), LR halving every epoch.
    let data = synthetic(14, 1);
    let root = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = (
        root.path().join("a"),
        root.path().join("b"),
        root.path().join("c"),
    );
    let total = 5;

    let full = run(&config(Variant::Stackgan, total), &data, &a, false).expect("uninterrupted");
    assert_eq!(
        (full.steps, full.epoch, full.stopped, full.resumed_from),
        (5, 1, false, None)
    );

    // Interrupted mid-epoch by the step limit, then resumed in a fresh call.
    let first = run(&config(Variant::Stackgan, 2), &data, &b, false).expect("first part");
    assert_eq!(first.steps, 2);
    // What a SIGKILL during the next checkpoint write would leave: a partial temporary directory
    // and metric lines of steps that the resumed run trains again.
    let partial = b.join(CHECKPOINTS_DIR).join(".step-000000004.999.tmp");
    std::fs::create_dir_all(&partial).expect("partial");
    std::fs::write(partial.join("g.bpk"), b"torn").expect("torn file");
    let metrics = b.join(METRICS_FILE);
    let mut text = std::fs::read_to_string(&metrics).expect("metrics");
    text.push_str(
        &text
            .lines()
            .last()
            .expect("a line")
            .replace("\"step\":2", "\"step\":3"),
    );
    text.push('\n');
    std::fs::write(&metrics, text).expect("metrics");
    let rest = run(&config(Variant::Stackgan, total), &data, &b, false).expect("resumed");
    assert_eq!((rest.steps, rest.resumed_from), (5, Some(2)));
    assert_bit_identical(&a, &b);
    assert!(!partial.exists());

    // Interrupted by the stop flag after the first step.
    let stopped = run(&config(Variant::Stackgan, total), &data, &c, true).expect("stopped");
    assert_eq!((stopped.steps, stopped.stopped), (1, true));
    let rest = run(&config(Variant::Stackgan, total), &data, &c, false).expect("resumed");
    assert_eq!((rest.steps, rest.resumed_from), (5, Some(1)));
    assert_bit_identical(&a, &c);

    // Metrics: every step once, the same losses, the LR halved in epoch 1.
    let ma = read_metrics(&a.join(METRICS_FILE)).expect("metrics a");
    let mb = read_metrics(&b.join(METRICS_FILE)).expect("metrics b");
    assert_eq!(
        ma.iter().map(|m| m.step).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(
            (x.step, x.epoch, x.d_loss, x.g_loss, x.kl),
            (y.step, y.epoch, y.d_loss, y.g_loss, y.kl)
        );
    }
    assert_eq!(ma[2].lr_g, 2e-4);
    assert_eq!(ma[3].lr_g, 1e-4);
    assert!(
        ma.iter()
            .all(|m| m.d_loss.is_finite() && m.images_per_s > 0.0)
    );
    // d_loss = real + (fake + wrong)/2
    let m = &ma[0];
    assert!((m.d_loss - (m.d_real + 0.5 * (m.d_fake + m.d_wrong))).abs() < 1e-5);

    // Only the newest two checkpoints are kept (steps 2, 4, 5 were written in run a).
    let steps: Vec<u64> = checkpoint::list(&a)
        .expect("list")
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(steps, vec![4, 5]);
    let state =
        checkpoint::read_state(&checkpoint::latest(&a).expect("l").expect("some")).expect("state");
    assert_eq!(
        (state.step, state.epoch, state.next_batch, state.lr_halvings),
        (5, 1, 2, 1)
    );
    assert_eq!(state.permutation.len(), 14);
    assert!(
        !root
            .path()
            .join("a")
            .join(CHECKPOINTS_DIR)
            .read_dir()
            .expect("dir")
            .any(|e| e
                .map(|e| e.file_name().to_string_lossy().starts_with('.'))
                .unwrap_or(false))
    );
}

#[test]
fn nan_in_a_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let mut data = synthetic(8, 2);
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    run(&config(Variant::Stackgan, 2), &data, dir, false).expect("clean part");
    // A resume request with another learning rate is refused.
    let mut other = config(Variant::Stackgan, 4);
    other.lr_g = 1e-3;
    assert!(matches!(
        run(&other, &data, dir, false),
        Err(TrainError::ResumeMismatch { .. })
    ));
    // Poison every caption: the next step's losses are NaN.
    for it in &mut data.items {
        for c in &mut it.captions {
            c.iter_mut().for_each(|v| *v = f32::NAN);
        }
    }
    let err =
        run(&config(Variant::Stackgan, 4), &data, dir, false).expect_err("NaN must stop the run");
    match &err {
        TrainError::NonFinite { step, what, .. } => {
            assert_eq!(*step, 3, "{err}");
            assert!(what.starts_with("loss "), "{err}");
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("step 3"), "{err}");
    let steps: Vec<u64> = checkpoint::list(dir)
        .expect("list")
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(steps, vec![2]);
    load_checkpoint_networks(&checkpoint::latest(dir).expect("l").expect("some"))
        .expect("loadable");
}

#[test]
fn recurrent_variant_trains_the_bilstm_and_writes_samples() {
    let data = synthetic(8, 3);
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let mut cfg = config(Variant::ChatpainterRecurrent, 2);
    cfg.checkpoint_every = 1;
    cfg.sample_every = 2;
    let s = run(&cfg, &data, dir, false).expect("train");
    assert_eq!(s.network.dialogue_dim, DIALOGUE_DIM);
    let ckpts = checkpoint::list(dir).expect("list");
    assert_eq!(ckpts.len(), 2);
    let rnn = |p: &Path| {
        let (g, _, _) = load_checkpoint_networks(p).expect("load");
        tensor_values(&g.dialogue.expect("BiLSTM"))
    };
    let (r1, r2) = (rnn(&ckpts[0].1), rnn(&ckpts[1].1));
    assert!(
        r1.iter().zip(&r2).any(|(a, b)| a.values != b.values),
        "the BiLSTM did not move"
    );
    let sheet = dir.join(SAMPLES_DIR).join("step-000000002.png");
    let img = image::open(&sheet).expect("sample sheet");
    assert!(img.width() > 64 * 8 && img.height() > 64);
    assert!(dir.join("stage1_dialogue_rnn.safetensors").exists());

    let nr = root.path().join("nonrecurrent");
    let s = run(
        &config(Variant::ChatpainterNonrecurrent, 1),
        &data,
        &nr,
        false,
    )
    .expect("train");
    assert_eq!(s.steps, 1);
}

#[test]
fn bad_inputs_are_refused() {
    let data = synthetic(3, 4);
    let root = tempfile::tempdir().expect("tempdir");
    let err =
        run(&config(Variant::Stackgan, 1), &data, root.path(), false).expect_err("batch > data");
    assert!(matches!(err, TrainError::Data(_)), "{err}");
    let mut no_dialogue = synthetic(4, 5);
    no_dialogue.items[2].dialogue = None;
    let err = run(
        &config(Variant::ChatpainterNonrecurrent, 1),
        &no_dialogue,
        root.path(),
        false,
    )
    .expect_err("missing dialogue");
    assert!(err.to_string().contains("image 2"), "{err}");
    // Items edited after construction are checked again, not trusted.
    let mut edited = synthetic(4, 7);
    edited.items[1].captions.clear();
    let err =
        run(&config(Variant::Stackgan, 1), &edited, root.path(), false).expect_err("no caption");
    assert!(err.to_string().contains("image 1"), "{err}");
    let mut cfg = config(Variant::Stackgan, 1);
    cfg.network.preset = "huge".into();
    let err = run(&cfg, &synthetic(4, 8), root.path(), false).expect_err("unknown preset");
    assert!(matches!(err, TrainError::Config(_)), "{err}");
}

#[test]
fn loads_the_ingest_and_embed_artifacts() {
    use chatpainter_artifacts::{Manifest, StageKey};
    use chatpainter_embed::EncoderIdentity;
    use chatpainter_embed::table::{EmbeddingTable, ImageEmbeddings};
    use chatpainter_ingest::IngestSummary;
    use chatpainter_ingest::tables::{ImageTableWriter, Record, write_records};
    use std::collections::BTreeMap;

    let root = tempfile::tempdir().expect("tempdir");
    let (ingest, embed) = (root.path().join("ingest"), root.path().join("embed"));
    std::fs::create_dir_all(&ingest).expect("mkdir");
    std::fs::create_dir_all(&embed).expect("mkdir");
    let record = |id: i64, split: &str| Record {
        image_id: id,
        split: split.into(),
        file_name: format!("{split}/{id}.jpg"),
        width: 100,
        height: 80,
        captions: vec!["a cat".into(), "a small cat".into()],
        dialogue: None,
    };
    // 1, 2, 3: train (3 has no embedding); 4: test.
    let records = vec![
        record(1, "train"),
        record(2, "train"),
        record(3, "train"),
        record(4, "test"),
    ];
    write_records(&ingest.join("records.parquet"), &records).expect("records");
    let png = |v: u8| {
        let img = image::RgbImage::from_pixel(
            LOAD_SIZE as u32,
            LOAD_SIZE as u32,
            image::Rgb([v, 0, 255]),
        );
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png)
            .expect("png");
        out.into_inner()
    };
    let rel = "images/76/train/part-00000-of-00001.parquet";
    let mut w = ImageTableWriter::create(&ingest.join(rel), 76).expect("image table");
    let pngs = [png(10), png(20), png(30)];
    w.write_group(&[2, 1, 3], &[&pngs[0], &pngs[1], &pngs[2]])
        .expect("group");
    w.finish().expect("finish");
    let summary = IngestSummary {
        image_tables: BTreeMap::from([(
            76,
            BTreeMap::from([("train".to_string(), vec![rel.to_string()])]),
        )]),
        ..IngestSummary::default()
    };
    let mut manifest = Manifest::new("ingest", StageKey::default(), Vec::new());
    manifest.summary = serde_json::to_value(&summary).expect("summary");
    manifest.save(&ingest).expect("manifest");
    let ident = |dim| EncoderIdentity {
        name: "test".into(),
        weights_sha256: None,
        dim,
        normalization: "v1".into(),
    };
    let row = |id: i64, split: &str| ImageEmbeddings {
        image_id: id,
        split: split.into(),
        captions: vec![vec![id as f32; 4], vec![-(id as f32); 4]],
        dialogue: Some(vec![0.5; 3]),
        turns: vec![vec![0.25; 3]; id as usize],
    };
    let table = EmbeddingTable {
        caption_encoder: ident(4),
        dialogue_encoder: ident(3),
        rows: vec![row(1, "train"), row(2, "train"), row(4, "test")],
    };
    chatpainter_embed::table::write(&embed.join("embeddings.parquet"), &table).expect("embeddings");

    let data = Stage1Data::load(&ingest, &embed, "train").expect("load");
    assert_eq!(
        data.items.iter().map(|i| i.image_id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(
        (data.caption_dim, data.dialogue_dim, data.turn_dim),
        (4, 3, 3)
    );
    assert_eq!(&data.items[0].image[..3], &[20, 0, 255]);
    assert_eq!(&data.items[1].image[..3], &[10, 0, 255]);
    assert_eq!(data.items[1].turns.len(), 2);
    assert!(Stage1Data::load(&ingest, &embed, "val").is_err());
}

#[test]
fn exports_use_the_reference_names() {
    let data = synthetic(4, 6);
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(Variant::Stackgan, 1);
    run(&cfg, &data, root.path(), false).expect("train");
    let bytes = std::fs::read(root.path().join("stage1_g.safetensors")).expect("g export");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    // z 8 + Nc 8 → 16·ngf = 16·32 = 512, torch layout [out, in].
    assert_eq!(st.tensor("fc.0.weight").expect("fc").shape(), &[512, 16]);
    assert_eq!(
        st.tensor("ca_net.fc.weight").expect("ca").shape(),
        &[16, CAPTION_DIM]
    );
    assert!(st.names().iter().any(|n| n.ends_with("running_var")));
    let bytes = std::fs::read(root.path().join("stage1_d.safetensors")).expect("d export");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    assert!(st.names().iter().any(|n| n.starts_with("encode_img.0.")));
    assert!(
        st.names()
            .iter()
            .any(|n| n.starts_with("get_cond_logits.outlogits."))
    );
    // The manifest outputs of the run: config, metrics, exports, the newest checkpoint's files.
    let summary = run(&cfg, &data, root.path(), false).expect("already done");
    assert_eq!(summary.resumed_from, Some(1));
    let outputs = summary.outputs(root.path()).expect("outputs");
    let paths: Vec<&str> = outputs.iter().map(|o| o.path.as_str()).collect();
    for want in [
        "config.json",
        "metrics.jsonl",
        "stage1_g.safetensors",
        "checkpoints/step-000000001/g.bpk",
        "checkpoints/step-000000001/state.json",
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
    serde_json::to_value(&summary).expect("summary serialises");
}
