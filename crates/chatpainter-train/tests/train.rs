//! Integration tests of Stage-I training on tiny synthetic in-memory data (smoke widths, flex
//! CPU): exact resume (bit-identical weights after interrupting and resuming, by step limit and by
//! the stop flag), checkpoint retention, metrics, sample sheets, the NaN guard, the variants and
//! bad inputs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use chatpainter_artifacts::Xoshiro256;
use chatpainter_artifacts::{NoProgress, Stage};
use chatpainter_model::export::tensor_values;
use chatpainter_model::{Geometry, StoredImage, TrainData, TrainItem, Variant};
use chatpainter_train::checkpoint::{self, CHECKPOINTS_DIR};
use chatpainter_train::metrics::{METRICS_FILE, SAMPLES_DIR, read_metrics};
use chatpainter_train::{TrainConfig, TrainError, World, load_checkpoint_networks, train_stage1};

const CAPTION_DIM: usize = 12;
const DIALOGUE_DIM: usize = 6;

fn synthetic(n: usize, seed: u64) -> TrainData {
    synthetic_at(Geometry::STAGE1, n, seed)
}

fn synthetic_at(geometry: Geometry, n: usize, seed: u64) -> TrainData {
    let mut rng = Xoshiro256::new(seed, 0);
    let items = (0..n)
        .map(|i| {
            let base = (i * 37 % 200) as u8;
            let image = (0..geometry.stored_bytes())
                .map(|k| {
                    base.wrapping_add((k % 97) as u8)
                        .wrapping_add((rng.below(16)) as u8)
                })
                .collect();
            let turns = 1 + i % 3;
            TrainItem {
                image_id: i as i64,
                image: StoredImage::Rgb(image),
                captions: (0..2).map(|_| rng.normals(CAPTION_DIM)).collect(),
                dialogue: Some(rng.normals(DIALOGUE_DIM)),
                turns: (0..turns).map(|_| rng.normals(DIALOGUE_DIM)).collect(),
            }
        })
        .collect();
    TrainData::new(geometry, items).expect("synthetic data")
}

fn config(variant: Variant, max_steps: u64) -> TrainConfig {
    let mut c = TrainConfig::smoke(variant);
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
    cfg: &TrainConfig,
    data: &TrainData,
    dir: &Path,
    stop: bool,
) -> Result<chatpainter_train::TrainSummary, TrainError> {
    train_stage1(
        cfg,
        data,
        dir,
        &NoProgress,
        &AtomicBool::new(stop),
        &World::single(),
    )
}

fn final_weights(
    dir: &Path,
) -> (
    Vec<chatpainter_model::export::HostTensor>,
    Vec<chatpainter_model::export::HostTensor>,
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
    use chatpainter_formats::embeddings::EncoderIdentity;
    use chatpainter_formats::embeddings::{EmbeddingTable, ImageEmbeddings};
    use chatpainter_formats::ingested::IngestSummary;
    use chatpainter_formats::ingested::{ImageTableWriter, Record, write_records};
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
            Geometry::STAGE1.load as u32,
            Geometry::STAGE1.load as u32,
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
    let mut manifest = Manifest::new(Stage::Ingest, StageKey::default(), Vec::new());
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
    chatpainter_formats::embeddings::write(&embed.join("embeddings.parquet"), &table)
        .expect("embeddings");

    let data = TrainData::load(&ingest, &embed, "train", Geometry::STAGE1).expect("load");
    assert_eq!(
        data.items.iter().map(|i| i.image_id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(
        (data.caption_dim, data.dialogue_dim, data.turn_dim),
        (4, 3, 3)
    );
    let rgb = |i: usize| {
        let it = &data.items[i];
        it.image.rgb(it.image_id, Geometry::STAGE1).expect("rgb")[..3].to_vec()
    };
    assert_eq!(rgb(0), [20, 0, 255]);
    assert_eq!(rgb(1), [10, 0, 255]);
    assert_eq!(data.items[1].turns.len(), 2);
    assert!(TrainData::load(&ingest, &embed, "val", Geometry::STAGE1).is_err());
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

/// Stage-II on a tiny finished Stage-I run (recurrent variant, so the frozen BiLSTM is covered):
/// the Stage-I weights inside Stage-II never change, a resumed run ends bit-identical, the
/// unconditional terms are logged and the sheet shows real | Stage-I | Stage-II.
mod stage2 {
    use super::*;
    use chatpainter_train::config::Stage1BatchNorm;
    use chatpainter_train::train_stage2;

    fn stage1_run(dir: &Path) {
        let data = synthetic(8, 11);
        let mut cfg = config(Variant::ChatpainterRecurrent, 2);
        cfg.checkpoint_every = 0;
        run(&cfg, &data, dir, false).expect("stage1");
    }

    fn config2(max_steps: u64, bn: Stage1BatchNorm) -> TrainConfig {
        let mut c = config(Variant::ChatpainterRecurrent, max_steps);
        c.network.z_dim = None;
        c.network.cond_dim = None;
        c.network.rnn_hidden = None;
        c.network.gf_dim = Some(4);
        c.network.df_dim = Some(2);
        c.network.r_num = Some(1);
        c.stage1_batch_norm = bn;
        c.checkpoint_every = 1;
        c.sample_every = 2;
        c.sample_count = 2;
        c
    }

    fn run2(cfg: &TrainConfig, s1: &Path, dir: &Path) -> chatpainter_train::TrainSummary {
        let data = synthetic_at(Geometry::STAGE2, 6, 12);
        train_stage2(
            cfg,
            &data,
            s1,
            dir,
            &NoProgress,
            &AtomicBool::new(false),
            &World::single(),
        )
        .expect("stage2")
    }

    fn tensors(path: &Path) -> HashMap<String, Vec<u8>> {
        let bytes = std::fs::read(path).expect("export");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        st.tensors()
            .into_iter()
            .map(|(n, v)| (n, v.data().to_vec()))
            .collect()
    }

    /// Every Stage-I tensor (`running` stats included or not) equals its `STAGE1_G.*` copy.
    fn assert_frozen(s1: &Path, s2: &Path, with_running_stats: bool) {
        let g1 = tensors(&s1.join("stage1_g.safetensors"));
        let g2 = tensors(&s2.join("stage2_g.safetensors"));
        let mut compared = 0;
        for (name, bytes) in &g1 {
            if !with_running_stats && name.contains("running_") {
                continue;
            }
            let inner = g2
                .get(&format!("STAGE1_G.{name}"))
                .unwrap_or_else(|| panic!("STAGE1_G.{name} missing"));
            assert_eq!(inner, bytes, "Stage-I tensor {name} changed");
            compared += 1;
        }
        assert!(compared > 10, "{compared}");
        let r1 = tensors(&s1.join("stage1_dialogue_rnn.safetensors"));
        let r2 = tensors(&s2.join("stage2_dialogue_rnn.safetensors"));
        assert_eq!(r1, r2, "the BiLSTM changed");
    }

    #[test]
    fn freezes_stage1_resumes_exactly_and_logs_the_unconditional_head() {
        let root = tempfile::tempdir().expect("tempdir");
        let s1 = root.path().join("stage1");
        stage1_run(&s1);
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        let cfg = config2(3, Stage1BatchNorm::BatchStats);
        let full = run2(&cfg, &s1, &a);
        assert_eq!((full.stage.as_str(), full.steps), ("stage2", 3));
        // What Stage-II builds from its Stage-I run in memory is what a reader of the file gets.
        for dir in [&s1, &a] {
            let resolved = chatpainter_train::ResolvedConfig::read(dir).expect("config.json");
            let read = chatpainter_model::RunConfig::read(dir).expect("config.json");
            assert_eq!(resolved.run_config(), read, "{}", dir.display());
        }
        // The .pth export reads back into a Stage-II G by the reference names.
        let pth = chatpainter_train::import::load_reference_pth(
            {
                let s1_net = chatpainter_train::ResolvedConfig::read(&s1)
                    .expect("stage1 config")
                    .network;
                let net = cfg.network2(&s1_net).expect("net2");
                let dev = burn::tensor::Device::flex();
                let (g1, _) =
                    chatpainter_model::Stage1Generator::init(&s1_net, cfg.variant, &dev, 5);
                chatpainter_model::Stage2Generator::init(&net, cfg.variant, g1, &dev, 5)
                    .expect("init")
                    .0
                    .g
            },
            &a.join("stage2_g.pth"),
        )
        .expect("stage2_g.pth");
        assert!(pth.1.applied > 50, "{}", pth.1.applied);
        assert_frozen(&s1, &a, false);
        // The reference keeps the frozen Stage-I's BatchNorms in train mode: its running
        // statistics move, its parameters do not.
        let g2 = tensors(&a.join("stage2_g.safetensors"));
        let g1 = tensors(&s1.join("stage1_g.safetensors"));
        assert!(
            g1.iter()
                .filter(|(n, _)| n.ends_with("running_mean"))
                .any(|(n, v)| g2[&format!("STAGE1_G.{n}")] != *v)
        );

        run2(&config2(1, Stage1BatchNorm::BatchStats), &s1, &b);
        let rest = run2(&cfg, &s1, &b);

        assert_eq!(rest.resumed_from, Some(1));
        for f in ["stage2_g.safetensors", "stage2_d.safetensors"] {
            let (ta, tb) = (tensors(&a.join(f)), tensors(&b.join(f)));
            let mut differ: Vec<&String> = ta.keys().filter(|k| tb.get(*k) != ta.get(*k)).collect();
            differ.sort();
            assert!(differ.is_empty(), "{f}: {differ:?} differ after resume");
        }
        let m = read_metrics(&a.join(METRICS_FILE)).expect("metrics");
        let first = &m[0];
        let (ur, uf) = (
            first.d_uncond_real.expect("uncond real"),
            first.d_uncond_fake.expect("uncond fake"),
        );
        // (real + uncond_real)/2 + (fake + wrong + uncond_fake)/3
        let want = (first.d_real + ur) / 2.0 + (first.d_fake + first.d_wrong + uf) / 3.0;
        assert!(
            (first.d_loss - want).abs() < 1e-5,
            "{} vs {want}",
            first.d_loss
        );
        let sheet = image::open(a.join(SAMPLES_DIR).join("step-000000002.png")).expect("sheet");
        // Two samples × (real, Stage-I, Stage-II) tiles of 256 + 2 px gaps.
        assert_eq!(sheet.width(), 6 * 258 + 2);
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(a.join("config.json")).expect("config"))
                .expect("json");
        assert_eq!(config["stage"], "stage2");
        assert_eq!(config["stage1"]["step"], 2);
    }

    #[test]
    fn generates_from_both_stages_deterministically() {
        use chatpainter_model::DeviceChoice;
        use chatpainter_model::generate::{Condition, DialogueCondition, RunGenerator};
        let root = tempfile::tempdir().expect("tempdir");
        let s1 = root.path().join("stage1");
        stage1_run(&s1);
        let s2 = root.path().join("stage2");
        run2(&config2(1, Stage1BatchNorm::BatchStats), &s1, &s2);
        let mut rng = Xoshiro256::new(5, 0);
        let cond = |turns: usize, rng: &mut Xoshiro256| Condition {
            caption: rng.normals(CAPTION_DIM),
            dialogue: DialogueCondition::Turns(
                (0..turns).map(|_| rng.normals(DIALOGUE_DIM)).collect(),
            ),
        };
        let conds: Vec<Condition> = (1..=3).map(|t| cond(t, &mut rng)).collect();
        let g1 = RunGenerator::load(&s1, DeviceChoice::CPU).expect("stage1 generator");
        assert_eq!(
            (g1.stage(), g1.step(), g1.dialogue_dim()),
            (1, 2, DIALOGUE_DIM)
        );
        let a = g1.generate(&conds, &[1, 2, 3], 2).expect("generate");
        assert_eq!(a[0].stage1.dimensions(), (64, 64));
        assert!(a[0].stage2.is_none());
        // The same seed gives the same image whatever the batching. (Two seeds can give the same
        // 8-bit image here: a 2-step tiny G's output is almost flat grey.)
        let b = g1.generate(&conds[2..], &[3], 1).expect("generate");
        assert!(a[2] == b[0], "batching changed an image");

        let g2 = RunGenerator::load(&s2, DeviceChoice::CPU).expect("stage2 generator");
        assert_eq!(g2.stage(), 2);
        let out = g2.generate(&conds, &[1, 2, 3], 3).expect("generate");
        let big = out[1].stage2.as_ref().expect("stage2 image");
        assert_eq!(big.dimensions(), (256, 256));
        assert!(out[1].final_image() == big);
        // Stage-II also returns its inner Stage-I picture.
        assert_eq!(out[1].stage1.dimensions(), (64, 64));

        let wrong = Condition {
            caption: vec![0.0; CAPTION_DIM + 1],
            dialogue: DialogueCondition::None,
        };
        let err = g2.generate(&[wrong], &[0], 1).expect_err("bad width");
        assert!(err.to_string().contains("condition 0"), "{err}");
        assert!(RunGenerator::load(&root.path().join("none"), DeviceChoice::CPU).is_err());
    }

    #[test]
    fn running_stats_mode_keeps_every_stage1_tensor() {
        let root = tempfile::tempdir().expect("tempdir");
        let s1 = root.path().join("stage1");
        stage1_run(&s1);
        let out = root.path().join("s2");
        run2(&config2(2, Stage1BatchNorm::RunningStats), &s1, &out);
        assert_frozen(&s1, &out, true);
    }

    #[test]
    fn a_stage1_run_of_another_variant_or_width_is_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let s1 = root.path().join("stage1");
        stage1_run(&s1);
        let data = synthetic_at(Geometry::STAGE2, 6, 12);
        let never = AtomicBool::new(false);
        let mut cfg = config2(1, Stage1BatchNorm::BatchStats);
        cfg.variant = Variant::Stackgan;
        let err = train_stage2(
            &cfg,
            &data,
            &s1,
            &root.path().join("x"),
            &NoProgress,
            &never,
            &World::single(),
        )
        .expect_err("variant");
        assert!(err.to_string().contains("variant"), "{err}");
        let mut cfg = config2(1, Stage1BatchNorm::BatchStats);
        cfg.network.cond_dim = Some(99);
        let err = train_stage2(
            &cfg,
            &data,
            &s1,
            &root.path().join("y"),
            &NoProgress,
            &never,
            &World::single(),
        )
        .expect_err("cond_dim");
        assert!(err.to_string().contains("cond_dim"), "{err}");
        // Stage-I data (76 px) is refused by Stage-II.
        let err = train_stage2(
            &config2(1, Stage1BatchNorm::BatchStats),
            &synthetic(6, 1),
            &s1,
            &root.path().join("z"),
            &NoProgress,
            &never,
            &World::single(),
        )
        .expect_err("geometry");
        assert!(err.to_string().contains("304"), "{err}");
        let err = train_stage2(
            &config2(1, Stage1BatchNorm::BatchStats),
            &data,
            &root.path().join("nothing"),
            &root.path().join("w"),
            &NoProgress,
            &never,
            &World::single(),
        )
        .expect_err("no stage1");
        assert!(err.to_string().contains("config.json"), "{err}");
    }
}

/// Import of reference `STAGE1_G` / `STAGE1_D` state_dicts: the test writes the
/// `.pth` files itself, tensor by tensor under the torch names of `chatpainter-nn`'s mapping, with
/// a distinct value per element, and checks where every value lands.
mod pth_import {
    use std::collections::HashMap;
    use std::path::Path;

    use burn::tensor::Device;
    use chatpainter_model::export::tensor_values;
    use chatpainter_model::{ResolvedNetwork, Stage1Generator, Variant};
    use chatpainter_nn::{ReferenceLayout, reference_names};
    use chatpainter_train::import::{
        ImportError, PthData, PthTensor, load_reference_pth, load_stage1_pth, write_state_dict,
    };

    fn nets(seed: u64) -> (chatpainter_nn::Stage1G, chatpainter_nn::Stage1D) {
        let net = ResolvedNetwork {
            z_dim: 8,
            caption_dim: 12,
            dialogue_dim: 0,
            rnn_hidden: 0,
            cond_dim: 8,
            gf_dim: 4,
            df_dim: 4,
            stage2: None,
            object_classes: 0,
            ca_activation: chatpainter_model::CaActivation::Relu,
        };
        let (g, d) = Stage1Generator::init(&net, Variant::Stackgan, &Device::flex(), seed);
        (g.g, d)
    }

    /// The state_dict torch would save: every reference tensor in torch layout with element j of
    /// tensor k worth `k + j/10⁴` (running variances kept positive by that), plus the BN
    /// counters. Returns it with the expected values in torch layout by torch name.
    fn state_dict<M: ReferenceLayout>(m: &M) -> (Vec<PthTensor>, HashMap<String, Vec<f32>>) {
        let mut out = Vec::new();
        let mut expect = HashMap::new();
        for (k, n) in reference_names(m).expect("names").iter().enumerate() {
            let numel: usize = n.torch_shape.iter().product();
            let v: Vec<f32> = (0..numel)
                .map(|j| (k + 1) as f32 + j as f32 * 1e-4)
                .collect();
            expect.insert(n.torch.clone(), v.clone());
            out.push(PthTensor {
                name: n.torch.clone(),
                shape: n.torch_shape.clone(),
                data: PthData::F32(v),
            });
            if let Some(prefix) = n.torch.strip_suffix(".running_var") {
                out.push(PthTensor {
                    name: format!("{prefix}.num_batches_tracked"),
                    shape: vec![],
                    data: PthData::I64(vec![123]),
                });
            }
        }
        (out, expect)
    }

    /// Every tensor of `m` equals the file's, Linear weights transposed ([out,in] → [in,out]).
    fn assert_landed<M: ReferenceLayout>(m: &M, expect: &HashMap<String, Vec<f32>>) -> usize {
        let names = reference_names(m).expect("names");
        let by_ours: HashMap<&str, _> = names.iter().map(|n| (n.ours.as_str(), n)).collect();
        let mut checked = 0;
        for t in tensor_values(m) {
            let n = by_ours[t.path.as_str()];
            let file = &expect[&n.torch];
            let want: Vec<f32> = if n.shape == n.torch_shape {
                file.clone()
            } else {
                let (rows, cols) = (n.shape[0], n.shape[1]); // ours [in, out]
                let mut w = vec![0.0; file.len()];
                for r in 0..rows {
                    for c in 0..cols {
                        w[r * cols + c] = file[c * rows + r];
                    }
                }
                w
            };
            assert_eq!(t.values, want, "tensor {} (torch {})", t.path, n.torch);
            checked += 1;
        }
        assert_eq!(checked, names.len());
        checked
    }

    fn write(dir: &Path, name: &str, tensors: &[PthTensor]) -> std::path::PathBuf {
        let p = dir.join(name);
        write_state_dict(&p, tensors).expect("write .pth");
        p
    }

    #[test]
    fn reference_stage1_checkpoints_land_tensor_by_tensor() {
        let dir = tempfile::tempdir().expect("tmp");
        let (g, d) = nets(1);
        let (g_dict, g_expect) = state_dict(&g);
        let (d_dict, d_expect) = state_dict(&d);
        assert!(g_dict.iter().any(|t| t.name == "fc.0.weight"));
        assert!(g_dict.iter().any(|t| t.name.ends_with("running_mean")));
        let g_path = write(dir.path(), "netG_epoch_120.pth", &g_dict);
        let d_path = write(dir.path(), "netD_epoch_last.pth", &d_dict);
        let (g, d) = load_stage1_pth(g, &g_path, d, &d_path).expect("import");
        let n = assert_landed(&g, &g_expect) + assert_landed(&d, &d_expect);
        assert!(n > 40, "{n} tensors checked");
        // The counters are reported as ignored, everything else applied.
        let (_, report) = load_reference_pth(nets(2).0, &g_path).expect("import");
        assert_eq!(report.applied, g_expect.len());
        assert!(
            report
                .ignored
                .iter()
                .all(|k| k.ends_with("num_batches_tracked"))
                && !report.ignored.is_empty()
        );
    }

    #[test]
    fn mismatches_name_the_tensor_and_both_shapes() {
        let dir = tempfile::tempdir().expect("tmp");
        let (g, _) = nets(1);
        let (dict, _) = state_dict(&g);

        let mut bad = dict.clone();
        let fc = bad
            .iter_mut()
            .find(|t| t.name == "fc.0.weight")
            .expect("fc");
        let expected = fc.shape.clone();
        fc.shape = vec![expected[0], expected[1] + 1];
        fc.data = PthData::F32(vec![0.5; expected[0] * (expected[1] + 1)]);
        let p = write(dir.path(), "bad_shape.pth", &bad);
        let e = load_reference_pth(nets(1).0, &p).expect_err("shape mismatch");
        let msg = e.to_string();
        match e {
            ImportError::ShapeMismatch {
                name,
                found,
                expected: want,
                ..
            } => {
                assert_eq!(name, "fc.0.weight");
                assert_eq!(found, vec![expected[0], expected[1] + 1]);
                assert_eq!(want, expected);
            }
            other => panic!("unexpected error {other}"),
        }
        assert!(
            msg.contains("fc.0.weight")
                && msg.contains(&format!("{:?}", expected))
                && msg.contains(&format!("{:?}", [expected[0], expected[1] + 1])),
            "{msg}"
        );

        let missing: Vec<PthTensor> = dict
            .iter()
            .filter(|t| t.name != "upsample2.2.running_var")
            .cloned()
            .collect();
        let p = write(dir.path(), "missing.pth", &missing);
        let e = load_reference_pth(nets(1).0, &p).expect_err("missing");
        assert!(
            matches!(&e, ImportError::Missing { name, .. } if name == "upsample2.2.running_var"),
            "{e}"
        );

        let mut extra = dict.clone();
        extra.push(PthTensor {
            name: "get_uncond_logits.outlogits.0.weight".into(),
            shape: vec![1],
            data: PthData::F32(vec![0.0]),
        });
        let p = write(dir.path(), "extra.pth", &extra);
        let e = load_reference_pth(nets(1).0, &p).expect_err("unexpected");
        assert!(e.to_string().contains("get_uncond_logits"), "{e}");

        // A D checkpoint offered as G, and a file that is not a checkpoint.
        let (_, d) = nets(1);
        let (d_dict, _) = state_dict(&d);
        let p = write(dir.path(), "d_as_g.pth", &d_dict);
        assert!(load_reference_pth(nets(1).0, &p).is_err());
        let p = dir.path().join("garbage.pth");
        std::fs::write(&p, b"not a zip").expect("write");
        let e = load_reference_pth(nets(1).0, &p).expect_err("garbage");
        assert!(matches!(e, ImportError::Read { .. }), "{e}");
    }
}

/// The trainer end to end on LibTorch CPU (`--features tch`; needs libtorch from `cargo xtask
/// setup libtorch`, so plain `cargo test` does not build it). The step-by-step comparison with
/// flex is `chatpainter-bench`'s (`gpu_check::tch_cpu`).
#[cfg(feature = "tch")]
mod tch_cpu {
    use chatpainter_model::DeviceChoice;

    #[test]
    fn train_stage1_runs_on_tch_cpu() {
        let data = super::synthetic(10, 5);
        let mut cfg = super::config(chatpainter_model::Variant::ChatpainterRecurrent, 3);
        cfg.device = DeviceChoice::TCH_CPU;
        let root = tempfile::tempdir().expect("tmp");
        let summary = super::run(&cfg, &data, root.path(), false).expect("train on tch-cpu");
        assert_eq!(summary.steps, 3);
        let m = summary.last_metrics.expect("metrics");
        assert!(m.d_loss.is_finite() && m.g_loss.is_finite(), "{m:?}");
        assert!(root.path().join("stage1_g.safetensors").exists());
    }
}

/// A reference-layout Stage-II generator checkpoint (nested `STAGE1_G.*`, written here
/// as torch.save would) becomes a run directory that the generation path samples from, and our
/// Stage-II exports the same layout.
mod stage2_reference_import {
    use super::*;
    use chatpainter_model::generate::{Condition, DialogueCondition, RunGenerator};
    use chatpainter_model::{DeviceChoice, Stage1Generator, Stage2Generator};
    use chatpainter_train::import::{reference_state_dict, write_state_dict};
    use chatpainter_train::reference_run::import_stage2_generator;

    fn coco_like() -> TrainConfig {
        let mut cfg = TrainConfig::smoke(Variant::Stackgan);
        cfg.network.gf_dim = Some(4);
        cfg.network.df_dim = Some(2);
        cfg.network.r_num = Some(2);
        cfg.network.cond_dim = Some(8);
        cfg.network.z_dim = Some(8);
        cfg
    }

    #[test]
    fn a_reference_netg_imports_and_generates() {
        let root = tempfile::tempdir().expect("tempdir");
        let cfg = coco_like();
        // A "reference" STAGE2_G with its own random weights (seed 99), saved as a state_dict.
        let s1 = cfg.network(CAPTION_DIM, 0).expect("net");
        let net = cfg.network2(&s1).expect("net2");
        let dev = burn::tensor::Device::flex();
        let (g1, _) = Stage1Generator::init(&s1, Variant::Stackgan, &dev, 98);
        let (theirs, _) =
            Stage2Generator::init(&net, Variant::Stackgan, g1, &dev, 99).expect("init");
        let sd = reference_state_dict(&theirs.g, 90).expect("state dict");
        assert!(sd.iter().any(|t| t.name == "STAGE1_G.fc.0.weight"));
        let pth = root.path().join("netG_epoch_90.pth");
        write_state_dict(&pth, &sd).expect("write");

        let run = root.path().join("stage2");
        let report = import_stage2_generator(&pth, &cfg, CAPTION_DIM, 0, &run).expect("import");
        assert_eq!(report.applied, tensor_values(&theirs.g).len());
        let generator = RunGenerator::load(&run, DeviceChoice::CPU).expect("load");
        assert_eq!((generator.stage(), generator.step()), (2, 0));
        let cond = Condition {
            caption: vec![0.1; CAPTION_DIM],
            dialogue: DialogueCondition::None,
        };
        let out = generator
            .generate(&[cond.clone(), cond], &[7, 7], 2)
            .expect("generate");
        assert_eq!(out[0].final_image().dimensions(), (256, 256));
        assert!(
            out[0] == out[1],
            "same seed, same condition, different images"
        );

        // Every imported tensor equals the reference one.
        let ckpt = checkpoint::latest(&run).expect("list").expect("checkpoint");
        let (g1, _) = Stage1Generator::init(&s1, Variant::Stackgan, &dev, 1);
        let (ours, _) = Stage2Generator::init(&net, Variant::Stackgan, g1, &dev, 1).expect("init");
        let ours = checkpoint::load_generator(&ckpt, ours).expect("load g");
        for (a, b) in tensor_values(&theirs.g).iter().zip(tensor_values(&ours.g)) {
            assert_eq!(a.path, b.path);
            assert_eq!(a.values, b.values, "{}", a.path);
        }

        // A checkpoint of other widths names the tensor and both shapes.
        let mut wide = cfg.clone();
        wide.network.gf_dim = Some(8);
        let err = import_stage2_generator(&pth, &wide, CAPTION_DIM, 0, &root.path().join("x"))
            .expect_err("mismatch");
        let msg = err.to_string();
        assert!(
            msg.contains("netG_epoch_90.pth") && msg.contains('['),
            "{msg}"
        );
    }
}

/// The lazy Parquet source against the in-memory set, and the loader's memory bound.
mod lazy {
    use super::*;
    use chatpainter_artifacts::{Manifest, StageKey};
    use chatpainter_formats::embeddings::EncoderIdentity;
    use chatpainter_formats::embeddings::{ImageEmbeddings, TableWriter};
    use chatpainter_formats::ingested::IngestSummary;
    use chatpainter_formats::ingested::{ImageTableWriter, Record, write_records};
    use chatpainter_model::dataset::{Augment, BatchShape, assemble};
    use chatpainter_train::ParquetSource;
    use chatpainter_train::TextNorm;
    use chatpainter_train::loader::{BlockCache, Layout};
    use chatpainter_train::source::{TrainSource, item_bytes};
    use std::collections::BTreeMap;

    /// Writes ingest and embed artifacts of `n` train images (ids 10, 13, 16, …) plus two test
    /// images: embeddings in row groups of `per_group`, pictures in row groups of 6.
    fn write_dataset(
        root: &Path,
        n: usize,
        per_group: usize,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let (ingest, embed) = (root.join("ingest"), root.join("embed"));
        std::fs::create_dir_all(&ingest).expect("mkdir");
        std::fs::create_dir_all(&embed).expect("mkdir");
        let mut rng = Xoshiro256::new(n as u64, 9);
        let id = |i: usize| 10 + 3 * i as i64;
        let mut records: Vec<Record> = (0..n + 2)
            .map(|i| Record {
                image_id: id(i),
                split: if i < n { "train" } else { "test" }.into(),
                file_name: format!("x/{i}.jpg"),
                width: 80,
                height: 80,
                captions: vec!["a".into(), "b".into()],
                dialogue: None,
            })
            .collect();
        records.sort_by(|a, b| (&a.split, a.image_id).cmp(&(&b.split, b.image_id)));
        write_records(&ingest.join("records.parquet"), &records).expect("records");
        let rel = "images/76/train/part-00000-of-00001.parquet";
        let mut w = ImageTableWriter::create(&ingest.join(rel), 76).expect("image table");
        let pngs: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let img = image::RgbImage::from_fn(76, 76, |x, y| {
                    image::Rgb([
                        (x * 3) as u8,
                        (y * 3) as u8,
                        (i * 7 + rng.below(9) as usize) as u8,
                    ])
                });
                let mut out = std::io::Cursor::new(Vec::new());
                img.write_to(&mut out, image::ImageFormat::Png)
                    .expect("png");
                out.into_inner()
            })
            .collect();
        for start in (0..n).step_by(6) {
            let end = (start + 6).min(n);
            let ids: Vec<i64> = (start..end).map(id).collect();
            let refs: Vec<&[u8]> = pngs[start..end].iter().map(Vec::as_slice).collect();
            w.write_group(&ids, &refs).expect("group");
        }
        w.finish().expect("finish");
        let summary = IngestSummary {
            image_tables: BTreeMap::from([(
                76,
                BTreeMap::from([("train".to_string(), vec![rel.to_string()])]),
            )]),
            ..IngestSummary::default()
        };
        let mut manifest = Manifest::new(Stage::Ingest, StageKey::default(), Vec::new());
        manifest.summary = serde_json::to_value(&summary).expect("summary");
        manifest.save(&ingest).expect("manifest");
        let ident = |dim| EncoderIdentity {
            name: "test".into(),
            weights_sha256: None,
            dim,
            normalization: "v1".into(),
        };
        let rows: Vec<ImageEmbeddings> = records
            .iter()
            .map(|r| ImageEmbeddings {
                image_id: r.image_id,
                split: r.split.clone(),
                captions: (0..1 + r.image_id as usize % 3)
                    .map(|_| rng.normals(CAPTION_DIM))
                    .collect(),
                dialogue: Some(rng.normals(DIALOGUE_DIM)),
                turns: (0..1 + r.image_id as usize % 4)
                    .map(|_| rng.normals(DIALOGUE_DIM))
                    .collect(),
            })
            .collect();
        let path = embed.join("embeddings.parquet");
        let mut t =
            TableWriter::create(&path, &ident(CAPTION_DIM), &ident(DIALOGUE_DIM)).expect("table");
        for chunk in rows.chunks(per_group) {
            t.write(chunk).expect("rows");
        }
        t.finish().expect("finish");
        (ingest, embed)
    }

    fn shape(src: &dyn TrainSource) -> BatchShape {
        let w = src.widths();
        BatchShape {
            geometry: src.geometry(),
            dialogue_dim: w.dialogue,
            turn_dim: w.turn,
            max_turns: src.max_turns(),
        }
    }

    #[test]
    fn parquet_batches_equal_the_in_memory_ones() {
        let root = tempfile::tempdir().expect("tempdir");
        let (ingest, embed) = write_dataset(root.path(), 40, 8);
        let memory = TrainData::load(&ingest, &embed, "train", Geometry::STAGE1).expect("load");
        for variant in [
            Variant::Stackgan,
            Variant::ChatpainterNonrecurrent,
            Variant::ChatpainterRecurrent,
        ] {
            let lazy = ParquetSource::open(&ingest, &embed, "train", Geometry::STAGE1, variant)
                .expect("open");
            assert_eq!(lazy.len(), 40);
            // Rows sort by (split, id): the 2 test rows open the first row group of 8.
            assert_eq!(lazy.blocks().len(), 6);
            assert_eq!(lazy.max_turns(), memory.max_turns());
            assert_eq!(lazy.dialogue_width(variant), memory.dialogue_width(variant));
            for i in 0..40 {
                assert_eq!(lazy.meta(i).image_id, memory.items[i].image_id);
                assert_eq!(lazy.meta(i).captions, memory.items[i].captions.len());
            }
            lazy.check_variant(variant)
                .expect("the variant it was opened for");
            let other = if variant == Variant::Stackgan {
                Variant::ChatpainterRecurrent
            } else {
                Variant::Stackgan
            };
            let err = lazy
                .check_variant(other)
                .expect_err("opened for another variant");
            assert!(err.to_string().contains(other.name()), "{err}");
            let layout = Layout::new(&lazy, variant, 1 << 20);
            let mut cache = BlockCache::new(&lazy, layout, 1 << 20);
            let mut rng = Xoshiro256::new(4, 4);
            for _ in 0..5 {
                let idx: Vec<usize> = (0..7).map(|_| rng.below(40) as usize).collect();
                let augs: Vec<Augment> = idx
                    .iter()
                    .map(|&i| {
                        Augment::draw(
                            &mut rng,
                            memory.items[i].captions.len(),
                            Geometry::STAGE1,
                            true,
                        )
                    })
                    .collect();
                let want = assemble(&memory, variant, &idx, &augs).expect("memory batch");
                let got = cache
                    .batch(&idx, &augs, shape(&lazy), variant)
                    .expect("lazy batch");
                assert_eq!(got, want, "{variant:?}");
            }
        }
    }

    #[test]
    fn embeddings_out_of_image_id_order_are_refused_naming_the_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let (ingest, embed) = write_dataset(root.path(), 12, 4);
        let path = embed.join("embeddings.parquet");
        let mut table = chatpainter_formats::embeddings::read(&path).expect("read");
        table.rows.reverse();
        chatpainter_formats::embeddings::write(&path, &table).expect("write");
        let err = ParquetSource::open(
            &ingest,
            &embed,
            "train",
            Geometry::STAGE1,
            Variant::Stackgan,
        )
        .err()
        .expect("unsorted rows");
        let text = err.to_string();
        assert!(
            text.contains("embeddings.parquet") && text.contains("image-id order"),
            "{text}"
        );
    }

    #[test]
    fn loader_memory_is_bounded_by_its_window_not_by_the_data_set() {
        let variant = Variant::ChatpainterRecurrent;
        let mut peaks = Vec::new();
        for n in [96, 480] {
            let root = tempfile::tempdir().expect("tempdir");
            let (ingest, embed) = write_dataset(root.path(), n, 8);
            let src = ParquetSource::open(&ingest, &embed, "train", Geometry::STAGE1, variant)
                .expect("open");
            let blocks: Vec<usize> = (0..src.blocks().len())
                .map(|b| {
                    src.read_block(b)
                        .expect("block")
                        .iter()
                        .map(item_bytes)
                        .sum()
                })
                .collect();
            let (total, largest) = (
                blocks.iter().sum::<usize>(),
                *blocks.iter().max().expect("blocks"),
            );
            // A window of about three blocks, whatever the set's size.
            let window = 3 * largest;
            let layout = Layout::new(&src, variant, window);
            assert!(!layout.single_window());
            let mut cache = BlockCache::new(&src, layout.clone(), window);
            let mut order: Vec<u32> = (0..n as u32).collect();
            let mut rng = Xoshiro256::new(1, 1);
            for _epoch in 0..3 {
                layout.shuffle(&mut order, &mut rng);
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert!(sorted.iter().enumerate().all(|(i, &v)| v as usize == i));
                for chunk in order.chunks_exact(16) {
                    let idx: Vec<usize> = chunk.iter().map(|&i| i as usize).collect();
                    let augs = vec![Augment::center(Geometry::STAGE1); idx.len()];
                    cache
                        .batch(&idx, &augs, shape(&src), variant)
                        .expect("batch");
                }
            }
            // Two windows (a batch may straddle them) plus the block being read.
            let bound = 2 * window + 2 * largest;
            assert!(
                cache.peak_bytes() <= bound,
                "n {n}: peak {} > {bound}",
                cache.peak_bytes()
            );
            peaks.push((n, cache.peak_bytes(), total, bound));
        }
        let (n, peak, total, _) = peaks[1];
        assert!(
            peak * 3 < total,
            "n {n}: peak {peak} of {total} bytes: the loader held most of the set"
        );
    }

    #[test]
    fn training_from_parquet_equals_training_from_memory() {
        let root = tempfile::tempdir().expect("tempdir");
        let (ingest, embed) = write_dataset(root.path(), 14, 4);
        let memory = TrainData::load(&ingest, &embed, "train", Geometry::STAGE1).expect("load");
        let variant = Variant::ChatpainterRecurrent;
        let lazy =
            ParquetSource::open(&ingest, &embed, "train", Geometry::STAGE1, variant).expect("open");
        let mut cfg = config(variant, 5);
        cfg.text_norm = TextNorm::Standardize;
        let (a, b) = (root.path().join("memory"), root.path().join("lazy"));
        run(&cfg, &memory, &a, false).expect("memory run");
        train_stage1(
            &cfg,
            &lazy,
            &b,
            &NoProgress,
            &AtomicBool::new(false),
            &World::single(),
        )
        .expect("lazy run");
        assert_bit_identical(&a, &b);
    }

    /// Two categories; every train image has one box whose column depends on its id.
    fn write_objects(ingest: &Path, n: usize) {
        use chatpainter_formats::objects::{Category, ObjectBox, Objects, write_objects};
        let categories = vec![
            Category {
                id: 3,
                name: "red circle".into(),
            },
            Category {
                id: 8,
                name: "blue square".into(),
            },
        ];
        let boxes = (0..n)
            .map(|i| ObjectBox {
                image_id: 10 + 3 * i as i64,
                split: "train".into(),
                category_id: if i % 2 == 0 { 3 } else { 8 },
                x: [0.05, 0.4, 0.7][i % 3],
                y: 0.3,
                w: 0.25,
                h: 0.3,
            })
            .collect();
        let objects = Objects { categories, boxes };
        write_objects(&ingest.join("objects.parquet"), &objects).expect("objects");
    }

    fn train(cfg: &TrainConfig, data: &dyn TrainSource, dir: &Path) -> Result<(), TrainError> {
        train_stage1(
            cfg,
            data,
            dir,
            &NoProgress,
            &AtomicBool::new(false),
            &World::single(),
        )
        .map(|_| ())
    }

    #[test]
    fn the_object_loss_is_off_by_default_and_trains_and_resumes_when_on() {
        let root = tempfile::tempdir().expect("tempdir");
        let (ingest, embed) = write_dataset(root.path(), 14, 4);
        let variant = Variant::ChatpainterNonrecurrent;
        let plain =
            ParquetSource::open(&ingest, &embed, "train", Geometry::STAGE1, variant).expect("open");
        write_objects(&ingest, 14);
        let boxed =
            ParquetSource::open(&ingest, &embed, "train", Geometry::STAGE1, variant).expect("open");
        assert_eq!(boxed.objects().map(|o| o.classes()), Some(2));
        // Off (the default): the boxes change nothing.
        let cfg = config(variant, 4);
        let (a, b) = (root.path().join("plain"), root.path().join("boxed-off"));
        train(&cfg, &plain, &a).expect("plain run");
        train(&cfg, &boxed, &b).expect("boxed run, loss off");
        assert_bit_identical(&a, &b);
        let off = read_metrics(&b.join(METRICS_FILE)).expect("metrics");
        assert!(
            off.iter()
                .all(|m| m.d_object.is_none() && m.g_object.is_none())
        );
        assert!(off.iter().all(|m| m.ca_sigma.is_some_and(|s| s >= 1.0)));
        // On without boxes: refused, saying how to get them.
        let mut on = config(variant, 6);
        on.object_loss = 5.0;
        let err = train(&on, &plain, &root.path().join("no-boxes")).expect_err("no boxes");
        assert!(
            err.to_string().contains("instances") && err.to_string().contains("object_loss"),
            "{err}"
        );
        // On: D grows a head, both losses are logged, and an interrupted run resumes exactly.
        let whole = root.path().join("on");
        train(&on, &boxed, &whole).expect("object loss run");
        let metrics = read_metrics(&whole.join(METRICS_FILE)).expect("metrics");
        assert_eq!(metrics.len(), 6);
        for m in &metrics {
            let (d, g) = (m.d_object.expect("d_object"), m.g_object.expect("g_object"));
            assert!(
                d.is_finite() && d > 0.0 && g.is_finite() && g > 0.0,
                "{m:?}"
            );
        }
        let (_, d) = final_weights(&whole);
        let head: Vec<_> = d
            .iter()
            .filter(|t| t.path.contains("object_head"))
            .collect();
        assert_eq!(head.len(), 2, "weight and bias");
        let (_, d_off) = final_weights(&b);
        assert_eq!(d.len(), d_off.len() + 2);
        let split = root.path().join("on-resumed");
        let mut first = on.clone();
        first.max_steps = Some(3);
        train(&first, &boxed, &split).expect("first half");
        train(&on, &boxed, &split).expect("resumed");
        assert_bit_identical(&whole, &split);
        // A run with the switch never resumes as one without.
        let err = train(&config(variant, 8), &boxed, &whole).expect_err("switch off on resume");
        assert!(err.to_string().contains("object_loss"), "{err}");
    }
}
