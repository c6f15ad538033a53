//! The real `chatpainter` binary on small generated data: skip / stale / force, a run killed
//! mid-stage and rerun, sharded ingestion merged, bad pipeline keys.
#![allow(clippy::unwrap_used)] // tests may panic on fixture setup

use chatpainter_formats::ingested as tables;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PIPELINE: &str = r#"
[run]
name = "cli-test"

[synth]
train_images = 10
test_images = 4
visdial_val_images = 2
width = 64
height = 48

[ingest]
data_root = "run:synth"
load_sizes = [16, 32]
row_group_size = 4

[[ingest.coco]]
captions = "annotations/captions_train2014.json"
images = "train2014"
split = "train"

[[ingest.coco]]
captions = "annotations/captions_val2014.json"
images = "val2014"
split = "test"

[[ingest.visdial]]
file = "visdial/visdial_1.0_train.json"

[[ingest.visdial]]
file = "visdial/visdial_1.0_val.json"
images = "VisualDialog_val2018"
"#;

struct Env {
    _tmp: tempfile::TempDir,
    pipeline: PathBuf,
    run: PathBuf,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = tmp.path().join("p.toml");
    std::fs::write(&pipeline, PIPELINE).unwrap();
    let run = tmp.path().join("run");
    Env {
        _tmp: tmp,
        pipeline,
        run,
    }
}

fn cli(e: &Env, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatpainter"));
    cmd.args(&args[..1])
        .arg("--pipeline")
        .arg(&e.pipeline)
        .arg("--run")
        .arg(&e.run)
        .args(&args[1..]);
    cmd.env("CI", "1").output().unwrap()
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn err(out: Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure; stdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn skip_force_and_stale() {
    let e = env();
    assert!(ok(cli(&e, &["synth"])).contains("synth: done (no previous run)"));
    let first = ok(cli(&e, &["ingest"]));
    assert!(first.contains("ingest: done (no previous run)"), "{first}");
    assert!(first.contains("ingest quality report"), "{first}");
    let again = ok(cli(&e, &["ingest"]));
    assert!(again.contains("ingest: up to date"), "{again}");
    assert!(ok(cli(&e, &["ingest", "--force"])).contains("ingest: done (forced)"));
    let changed = ok(cli(&e, &["ingest", "--set", "ingest.row_group_size=3"]));
    assert!(
        changed.contains("stale: `row_group_size` = 4 before, 3 now"),
        "{changed}"
    );
    // A changed upstream (synth redone with other data) makes ingest stale.
    ok(cli(&e, &["synth", "--set", "synth.train_images=11"]));
    let upstream = ok(cli(&e, &["ingest", "--set", "ingest.row_group_size=3"]));
    assert!(upstream.contains("stale:"), "{upstream}");
    let records = tables::read_records(&e.run.join("ingest/records.parquet")).unwrap();
    assert_eq!(records.iter().filter(|r| r.split == "train").count(), 11);
    assert!(
        ok(Command::new(env!("CARGO_BIN_EXE_chatpainter"))
            .arg("verify")
            .arg("--run")
            .arg(&e.run)
            .output()
            .unwrap())
        .contains("ingest:")
    );
}

#[test]
fn bad_pipeline_keys_and_values_are_named() {
    let e = env();
    std::fs::write(
        &e.pipeline,
        PIPELINE.replace("row_group_size = 4", "row_group_sise = 4"),
    )
    .unwrap();
    let msg = err(cli(&e, &["ingest"]));
    assert!(
        msg.contains("row_group_sise") && msg.contains("p.toml"),
        "{msg}"
    );
    std::fs::write(
        &e.pipeline,
        PIPELINE.replace("load_sizes = [16, 32]", "load_sizes = [4]"),
    )
    .unwrap();
    let msg = err(cli(&e, &["ingest"]));
    assert!(msg.contains("ingest.load_sizes"), "{msg}");
    std::fs::write(&e.pipeline, PIPELINE).unwrap();
    let msg = err(cli(&e, &["ingest"]));
    assert!(msg.contains("stage `synth` has not finished"), "{msg}");
    let msg = err(cli(&e, &["ingest", "--shard", "3/2"]));
    assert!(msg.contains("--shard"), "{msg}");
}

#[test]
fn killed_ingest_reruns_cleanly() {
    let e = env();
    let sets = [
        "synth.train_images=120",
        "synth.width=480",
        "synth.height=360",
        "ingest.load_sizes=[76, 304]",
    ];
    let mut synth = vec!["synth"];
    let mut ingest = vec!["ingest"];
    for s in &sets {
        synth.extend(["--set", s]);
        ingest.extend(["--set", s]);
    }
    ok(cli(&e, &synth));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatpainter"));
    cmd.args(&ingest[..1])
        .arg("--pipeline")
        .arg(&e.pipeline)
        .arg("--run")
        .arg(&e.run)
        .args(&ingest[1..]);
    let mut child = cmd
        .env("CI", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it is writing image tables.
    let started = Instant::now();
    let images = e.run.join("ingest/images");
    while !images.exists() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !e.run.join("ingest/manifest.json").exists(),
        "a killed stage must not look finished"
    );
    let rerun = ok(cli(&e, &ingest));
    assert!(
        rerun.contains("ingest: done (the earlier run did not finish)"),
        "{rerun}"
    );
    assert_eq!(
        tables::read_records(&e.run.join("ingest/records.parquet"))
            .unwrap()
            .len(),
        120 + 4 + 2
    );
    assert!(no_temporaries(&e.run.join("ingest")));
    assert!(ok(cli(&e, &ingest)).contains("up to date"));
}

fn no_temporaries(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().all(|entry| {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() {
            no_temporaries(&entry.path())
        } else {
            !name.ends_with(".tmp")
        }
    })
}

#[test]
fn sharded_ingest_merges_to_the_whole() {
    let e = env();
    ok(cli(&e, &["synth"]));
    ok(cli(&e, &["ingest"]));
    let whole = tables::read_records(&e.run.join("ingest/records.parquet")).unwrap();
    let msg = err(cli(&e, &["ingest-merge", "--shards", "2"]));
    assert!(msg.contains("shard 0/2 has not finished"), "{msg}");
    ok(cli(&e, &["ingest", "--shard", "0/2"]));
    ok(cli(&e, &["ingest", "--shard", "1/2"]));
    assert!(ok(cli(&e, &["ingest", "--shard", "1/2"])).contains("up to date"));
    let merged = ok(cli(&e, &["ingest-merge", "--shards", "2"]));
    assert!(merged.contains("ingest-merge: done"), "{merged}");
    assert_eq!(
        tables::read_records(&e.run.join("ingest/records.parquet")).unwrap(),
        whole
    );
    assert!(ok(cli(&e, &["ingest-merge", "--shards", "2"])).contains("up to date"));
}

/// The smoke pipeline up to Stage-I, then `report`: one page with what exists and the rest
/// listed as not run; a second call is skipped, a changed `[report]` key redoes it.
#[test]
fn report_on_the_smoke_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let e = Env {
        pipeline: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../pipelines/smoke.toml"
        )),
        run: tmp.path().join("run"),
        _tmp: tmp,
    };
    let msg = err(cli(&e, &["report"]));
    assert!(msg.contains("no such run directory"), "{msg}");
    for stage in ["synth", "ingest", "embed"] {
        ok(cli(&e, &[stage]));
    }
    ok(Command::new(env!("CARGO_BIN_EXE_chatpainter"))
        .args(["train", "stage1", "--pipeline"])
        .arg(&e.pipeline)
        .arg("--run")
        .arg(&e.run)
        .env("CI", "1")
        .output()
        .unwrap());
    let out = ok(cli(&e, &["report"]));
    assert!(out.contains("report: done (no previous run)"), "{out}");
    let html = std::fs::read_to_string(e.run.join("report/index.html")).unwrap();
    assert!(e.run.join("report/manifest.json").exists());
    assert!(html.contains("<title>ChatPainter smoke run</title>"));
    assert!(html.contains("stage2: not run") && html.contains("eval: not run"));
    assert!(html.contains("Discriminator losses") && html.contains("<svg"));
    assert!(html.contains("src=\"data:image/png;base64,"));
    assert!(html.contains("<h2 id=\"quality\">") && html.contains("[stage1]"));
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(ok(cli(&e, &["report"])).contains("report: up to date"));
    let again = ok(cli(&e, &["report", "--set", "report.max_samples=1"]));
    assert!(
        again.contains("stale: `max_samples` = 3 before, 1 now"),
        "{again}"
    );
}

fn smoke_env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    Env {
        pipeline: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../pipelines/smoke.toml"
        )),
        run: tmp.path().join("run"),
        _tmp: tmp,
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `train stage1` killed with SIGKILL mid-run (after a checkpoint) and rerun with
/// the same command ends with exported weights bit-identical to an uninterrupted run of the
/// same length in another run directory (same synth/ingest/embed outputs, copied).
#[test]
fn stage1_killed_with_sigkill_resumes_bit_identical() {
    let a = smoke_env();
    for stage in ["synth", "ingest", "embed"] {
        ok(cli(&a, &[stage]));
    }
    let b = smoke_env();
    for stage in ["synth", "ingest", "embed"] {
        copy_tree(&a.run.join(stage), &b.run.join(stage));
    }
    // 48 training images at batch 8: 6 steps per epoch, so the kill lands mid-epoch and the run
    // crosses epochs (reshuffles, LR halvings every 2 epochs) after the resume.
    let sets = [
        "stage1.max_steps=30",
        "stage1.checkpoint_every=4",
        "stage1.sample_every=0",
    ];
    let train = |e: &Env| train_stage1(e, None, &sets);
    let mut child = train(&a)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // SIGKILL once the first checkpoint is on disk.
    let checkpointed = wait_for_checkpoint(&a, Duration::from_secs(60));
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(checkpointed, "no checkpoint within 60 s");
    assert!(
        !a.run.join("stage1/manifest.json").exists(),
        "killed before the end: the stage must not look finished"
    );
    assert!(!a.run.join("stage1/stage1_g.safetensors").exists());
    ok(train(&a).output().unwrap());
    ok(train(&b).output().unwrap());
    let s = summary(&a, "stage1");
    assert!(
        s["resumed_from"].as_u64().is_some_and(|r| r > 0 && r < 30),
        "the rerun must resume mid-run: {s}"
    );
    for f in [
        "stage1_g.safetensors",
        "stage1_d.safetensors",
        "stage1_dialogue_rnn.safetensors",
    ] {
        let (x, y) = (
            std::fs::read(a.run.join("stage1").join(f)).unwrap(),
            std::fs::read(b.run.join("stage1").join(f)).unwrap(),
        );
        assert!(
            x == y,
            "{f}: resumed run differs from the uninterrupted one"
        );
    }
}

/// `gpu-check` on flex with the smoke widths: passes, writes its report; a LibTorch device in a
/// build without `tch` is a clear error, not a panic.
#[test]
fn gpu_check_on_flex_writes_its_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("check");
    let run = |device: &str| {
        Command::new(env!("CARGO_BIN_EXE_chatpainter"))
            .args(["gpu-check", "--device", device, "--preset", "smoke"])
            .args(["--batch", "4", "--warmup", "1", "--steps", "2", "--out"])
            .arg(&out)
            .env("CI", "1")
            .output()
            .unwrap()
    };
    let stdout = ok(run("cpu"));
    assert!(stdout.contains("gpu-check cpu: PASSED"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(report["passed"], true);
    assert_eq!(report["losses"].as_array().unwrap().len(), 4);
    assert!(report["timing"]["images_per_s"].as_f64().unwrap() > 0.0);
    assert!(
        std::fs::read_to_string(out.join("summary.txt"))
            .unwrap()
            .contains("PASSED")
    );
    if !cfg!(feature = "tch") {
        let msg = err(run("cuda:0"));
        assert!(
            msg.contains("--features tch") && !msg.contains("panicked"),
            "{msg}"
        );
    }
}

// ---- eval, eval-folder, generate --------------------------------------------------------------

/// Overrides that shrink the smoke pipeline to what the eval tests need: 4 test images (so
/// Inception runs on few pictures), 20 training steps (enough for the noise to show), 2 IS
/// splits.
const EVAL_SETS: [&str; 9] = [
    "synth.train_images=16",
    "synth.test_images=4",
    "stage1.max_steps=20",
    "stage1.batch_size=4",
    "stage1.sample_every=0",
    "stage1.checkpoint_every=0",
    "eval.generator=run:stage1",
    "eval.splits=2",
    "eval.per_turn_count=1",
];

/// Runs a stage subcommand (`train stage1` included) with [`EVAL_SETS`] and `extra` overrides.
fn eval_cli(e: &Env, stage: &[&str], extra: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatpainter"));
    cmd.args(stage)
        .arg("--pipeline")
        .arg(&e.pipeline)
        .arg("--run")
        .arg(&e.run);
    for s in EVAL_SETS.iter().chain(extra) {
        cmd.args(["--set", s]);
    }
    cmd.env("CI", "1").output().unwrap()
}

/// synth → ingest → embed → 20 Stage-I steps of the recurrent smoke model.
fn trained_smoke_run() -> Env {
    let e = smoke_env();
    for stage in [
        &["synth"][..],
        &["ingest"],
        &["embed"],
        &["train", "stage1"],
    ] {
        ok(eval_cli(&e, stage, &[]));
    }
    e
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

fn generate(e: &Env, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chatpainter"))
        .arg("generate")
        .arg("--run")
        .arg(&e.run)
        .args(args)
        .env("CI", "1")
        .output()
        .unwrap()
}

/// Without a weights file the eval stage generates, writes images, a sheet and a per-turn strip,
/// and reports both metrics unavailable with the reason and no number; `generate` is
/// deterministic with `--seed`, `--per-turn` writes one frame per turn, and a run whose encoder
/// changed is refused.
#[test]
fn eval_without_weights_and_generate_on_a_smoke_run() {
    let e = trained_smoke_run();
    let out = ok(eval_cli(&e, &["eval"], &[]));
    assert!(out.contains("eval: done (no previous run)"), "{out}");
    assert!(out.contains("unavailable"), "{out}");
    let eval = e.run.join("eval");
    let m = read_json(&eval.join("metrics.json"));
    for (metric, number) in [
        ("inception_score", "mean"),
        ("inception_score", "std"),
        ("fid", "value"),
    ] {
        assert_eq!(m[metric]["available"], false, "{m}");
        assert!(m[metric][number].is_null(), "{m}");
        let reason = m[metric]["reason"].as_str().unwrap();
        assert!(reason.contains("no Inception weights file"), "{reason}");
    }
    let p = &m["protocol"];
    assert_eq!(p["images"], 4);
    assert_eq!(p["splits"], 2);
    assert_eq!(p["generator_stage"], "stage1");
    assert_eq!(p["split"], "test");
    assert_eq!(p["backbone"], "torchvision");
    assert!(p["weights_file"].is_null() && p["weights_sha256"].is_null());
    assert!(p["step"].as_u64().unwrap() >= 2, "{p}");
    assert!(p["checkpoint"].as_str().unwrap().contains("stage1"), "{p}");
    let images: Vec<PathBuf> = std::fs::read_dir(eval.join("images"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .collect();
    assert_eq!(images.len(), 4);
    assert!(images.iter().all(|p| png_size(p) == (64, 64)));
    // Sheet: 4 rows (sheet_count 8 > 4 images) of real | Stage-I at 128 px.
    assert_eq!(
        png_size(&eval.join("sheet.png")),
        (2 * 132 + 4, 4 * 132 + 4)
    );
    let strips: Vec<PathBuf> = std::fs::read_dir(eval.join("per_turn"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    assert_eq!(strips.len(), 1);
    let (w, h) = png_size(&strips[0]);
    assert_eq!(h, 68 + 4);
    // One 64-px frame per turn, and the sidecar lists the turns.
    let sidecar = read_json(&strips[0].with_extension("json"));
    let turns = sidecar["dialog"].as_array().unwrap().len() as u32;
    assert!(turns > 1, "{sidecar}");
    assert_eq!(w, turns * 68 + 4, "{sidecar}");
    assert!(sidecar["caption"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(e.run.join("eval/manifest.json").exists());
    assert!(ok(eval_cli(&e, &["eval"], &[])).contains("eval: up to date"));

    // generate: deterministic with --seed, a strip with one frame per turn.
    let dir = tempfile::tempdir().unwrap();
    let png = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let text = [
        "--caption",
        "a red circle and a blue square",
        "--turn",
        "how many shapes? two",
        "--turn",
        "what colour is the background? green",
        "--turn",
        "is the circle big? yes",
    ];
    let mut a = text.to_vec();
    a.extend(["--seed", "5", "--out"]);
    let (pa, pb, pc) = (png("a.png"), png("b.png"), png("c.png"));
    let said = ok(generate(&e, &[&a[..], &[pa.as_str()]].concat()));
    assert!(said.contains("1 frame(s)"), "{said}");
    ok(generate(&e, &[&a[..], &[pb.as_str()]].concat()));
    assert_eq!(std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap());
    assert_eq!(png_size(Path::new(&pa)), (64, 64));
    let mut other = text.to_vec();
    other.extend(["--seed", "6", "--out", pc.as_str()]);
    ok(generate(&e, &other));
    assert_ne!(std::fs::read(&pa).unwrap(), std::fs::read(&pc).unwrap());
    let strip = png("strip.png");
    let mut per_turn = text.to_vec();
    per_turn.extend(["--per-turn", "--seed", "5", "--out", strip.as_str()]);
    assert!(ok(generate(&e, &per_turn)).contains("3 frame(s)"));
    assert_eq!(png_size(Path::new(&strip)), (3 * 68 + 4, 68 + 4));
    // A VisDial-style file works too.
    let dialogue = dir.path().join("d.json");
    std::fs::write(
        &dialogue,
        r#"{"caption": "a red circle", "dialog": [{"question": "is it big", "answer": "yes"}]}"#,
    )
    .unwrap();
    let from_file = png("file.png");
    ok(generate(
        &e,
        &[
            "--dialogue",
            &dialogue.to_string_lossy(),
            "--out",
            &from_file,
        ],
    ));
    let msg = err(generate(&e, &["--out", &from_file]));
    assert!(msg.contains("no caption"), "{msg}");

    // A different dialogue encoder than the run was embedded with is refused.
    let config = e.run.join("embed/config.toml");
    let text_cfg = std::fs::read_to_string(&config).unwrap();
    let changed = text_cfg.replacen("dim = 64", "dim = 32", 2);
    assert_ne!(
        changed, text_cfg,
        "the smoke pipeline's embed widths changed"
    );
    std::fs::write(&config, changed).unwrap();
    let msg = err(generate(
        &e,
        &a[..a.len() - 1]
            .iter()
            .copied()
            .chain(["--out", pc.as_str()])
            .collect::<Vec<_>>(),
    ));
    assert!(
        msg.contains("differs from the one this run was trained with"),
        "{msg}"
    );
}

/// With a (random-weights) Inception file in torchvision naming, the stage computes finite IS
/// and FID and stamps the weights hash; `eval-folder` on the stage's own images and reference
/// statistics gives the same numbers.
#[test]
fn eval_with_weights_computes_metrics_and_eval_folder_agrees() {
    let e = trained_smoke_run();
    let weights = e.run.join("inception_tv_random.safetensors");
    let model =
        chatpainter_eval::InceptionConfig::new(chatpainter_eval::Backbone::TorchvisionImagenet)
            .init(&chatpainter_model::DeviceChoice::CPU.devices().1);
    chatpainter_eval::weights::save_pytorch_named_safetensors(&model, &weights).unwrap();
    let set = format!("eval.weights={}", weights.display());
    let out = ok(eval_cli(&e, &["eval"], &["eval.per_turn_count=0", &set]));
    assert!(out.contains("Inception Score over 4 images"), "{out}");
    let m = read_json(&e.run.join("eval/metrics.json"));
    assert_eq!(m["inception_score"]["available"], true, "{m}");
    let is = m["inception_score"]["mean"].as_f64().unwrap();
    let fid = m["fid"]["value"].as_f64().unwrap();
    assert!(is.is_finite() && is >= 1.0 - 1e-9, "{m}");
    assert!(fid.is_finite() && fid >= -1e-6, "{m}");
    assert!(m["inception_score"]["reason"].is_null());
    assert_eq!(m["fid"]["reference"], "reference_stats.npz");
    assert_eq!(m["protocol"]["weights_sha256"].as_str().unwrap().len(), 64);

    let out_file = e.run.join("folder_metrics.json");
    ok(Command::new(env!("CARGO_BIN_EXE_chatpainter"))
        .arg("eval-folder")
        .arg("--images")
        .arg(e.run.join("eval/images"))
        .arg("--weights")
        .arg(&weights)
        .args(["--splits", "2", "--seed", "0", "--fid-reference"])
        .arg(e.run.join("eval/reference_stats.npz"))
        .arg("--out")
        .arg(&out_file)
        .env("CI", "1")
        .output()
        .unwrap());
    let f = read_json(&out_file);
    assert_eq!(
        f["inception_score"]["mean"], m["inception_score"]["mean"],
        "{f}"
    );
    let folder_fid = f["fid"]["value"].as_f64().unwrap();
    assert!((folder_fid - fid).abs() <= 1e-6 * fid.abs().max(1.0), "{f}");
    assert!(f["protocol"]["generator_stage"].is_null());
}

/// `synth`, `ingest` and `embed` of the smoke pipeline in a fresh run directory.
fn smoke_data() -> Env {
    let e = smoke_env();
    for stage in ["synth", "ingest", "embed"] {
        ok(cli(&e, &[stage]));
    }
    e
}

/// `train stage1` of the smoke pipeline with `--set` values (under `launcher` when given).
fn train_stage1(e: &Env, launcher: Option<Command>, sets: &[&str]) -> Command {
    let bin = env!("CARGO_BIN_EXE_chatpainter");
    let mut cmd = match launcher {
        Some(mut l) => {
            l.arg(bin);
            l
        }
        None => Command::new(bin),
    };
    cmd.args(["train", "stage1", "--pipeline"])
        .arg(&e.pipeline)
        .arg("--run")
        .arg(&e.run)
        .env("CI", "1");
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd
}

/// Waits (up to `limit`) until Stage-I of `e` has a checkpoint on disk; whether it has.
fn wait_for_checkpoint(e: &Env, limit: Duration) -> bool {
    let checkpoints = e.run.join("stage1/checkpoints");
    let has_checkpoint = || {
        std::fs::read_dir(&checkpoints).is_ok_and(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
        })
    };
    let started = Instant::now();
    while !has_checkpoint() && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(2));
    }
    has_checkpoint()
}

fn summary(e: &Env, stage: &str) -> serde_json::Value {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(e.run.join(stage).join("manifest.json")).unwrap())
            .unwrap();
    m["summary"].clone()
}

/// A newest checkpoint damaged after it was written (a truncated weights file) is detected by
/// its checksums and named; the rerun sets it aside and resumes from the newest intact one.
#[test]
fn a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_previous() {
    let e = smoke_data();
    let sets = |steps: &'static str| {
        [
            steps,
            "stage1.checkpoint_every=3",
            "stage1.keep_checkpoints=3",
            "stage1.sample_every=0",
        ]
    };
    ok(train_stage1(&e, None, &sets("stage1.max_steps=6"))
        .output()
        .unwrap());
    let newest = e.run.join("stage1/checkpoints/step-000000006");
    let g = newest.join("g.bpk");
    let len = std::fs::metadata(&g).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&g)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let out = train_stage1(&e, None, &sets("stage1.max_steps=9"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out);
    assert!(
        stderr.contains("step-000000006/g.bpk") && stderr.contains("damaged"),
        "{stderr}"
    );
    assert_eq!(summary(&e, "stage1")["resumed_from"], 3);
    assert!(
        e.run
            .join("stage1/checkpoints/step-000000006.damaged")
            .is_dir()
    );
    assert!(e.run.join("stage1/checkpoints/step-000000009").is_dir());
}

/// Data-parallel ranks under `mpirun` (CPU ranks; the same code path as GPUs on a cluster).
#[cfg(feature = "mpi")]
mod ranks {
    use super::*;
    use chatpainter_artifacts::launch::mpirun;

    /// Pids of the processes whose parent is `parent` and whose name starts with `chatpainter`.
    fn ranks_of(parent: u32) -> Vec<u32> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid …
            let Some((head, tail)) = stat.rsplit_once(") ") else {
                continue;
            };
            let ppid = tail.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(parent) && head.contains("(chatpainter") {
                out.extend(head.split(' ').next().and_then(|p| p.parse::<u32>().ok()));
            }
        }
        out
    }

    /// kill -9 of one rank mid-run ends the job within seconds (non-zero); the rerun resumes
    /// and ends byte-identical to an uninterrupted 2-rank run.
    #[test]
    fn a_rank_killed_with_sigkill_ends_the_job_and_the_rerun_resumes_bit_identical() {
        let a = smoke_data();
        let b = smoke_env();
        for stage in ["synth", "ingest", "embed"] {
            copy_tree(&a.run.join(stage), &b.run.join(stage));
        }
        let sets = [
            "stage1.max_steps=30",
            "stage1.checkpoint_every=4",
            "stage1.sample_every=0",
        ];
        let mut job = train_stage1(&a, Some(mpirun(2, None)), &sets)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            wait_for_checkpoint(&a, Duration::from_secs(120)),
            "no checkpoint within 120 s"
        );
        let ranks = ranks_of(job.id());
        assert_eq!(ranks.len(), 2, "rank processes under mpirun: {ranks:?}");
        let killed = Instant::now();
        let status = Command::new("kill")
            .args(["-9", &ranks[1].to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let code = loop {
            if let Some(code) = job.try_wait().unwrap() {
                break code;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(20),
                "the job still runs 20 s after a rank died"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = killed.elapsed();
        assert!(!code.success(), "the job must fail when a rank dies");
        assert!(
            took < Duration::from_secs(10),
            "job ended {took:?} after the kill"
        );
        // The surviving rank is gone too (or a zombie nobody has collected yet).
        let alive = |pid: &u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, r)| !r.starts_with('Z'))
            })
        };
        while ranks.iter().any(alive) {
            assert!(
                killed.elapsed() < Duration::from_secs(10),
                "a rank still runs 10 s after another died"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!a.run.join("stage1/manifest.json").exists());
        ok(train_stage1(&a, Some(mpirun(2, None)), &sets)
            .output()
            .unwrap());
        ok(train_stage1(&b, Some(mpirun(2, None)), &sets)
            .output()
            .unwrap());
        let s = summary(&a, "stage1");
        assert!(
            s["resumed_from"].as_u64().is_some_and(|r| r > 0 && r < 30),
            "the rerun must resume mid-run: {s}"
        );
        assert_eq!(s["ranks"], 2);
        for f in [
            "stage1_g.safetensors",
            "stage1_d.safetensors",
            "stage1_dialogue_rnn.safetensors",
        ] {
            let (x, y) = (
                std::fs::read(a.run.join("stage1").join(f)).unwrap(),
                std::fs::read(b.run.join("stage1").join(f)).unwrap(),
            );
            assert!(
                x == y,
                "{f}: resumed 2-rank run differs from the uninterrupted one"
            );
        }
        // Every step's losses too (all but the timing fields of metrics.jsonl).
        let losses = |e: &Env| -> Vec<String> {
            std::fs::read_to_string(e.run.join("stage1/metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| {
                    let mut m: serde_json::Value = serde_json::from_str(l).unwrap();
                    for k in ["step_ms", "images_per_s", "sync_ms"] {
                        m.as_object_mut().unwrap().remove(k);
                    }
                    m.to_string()
                })
                .collect()
        };
        assert_eq!(losses(&a), losses(&b));
    }

    /// A checkpoint written by one rank resumes with two, and the reverse; the run says so.
    #[test]
    fn the_world_size_may_change_on_resume() {
        let e = smoke_data();
        let sets =
            |steps: &'static str| [steps, "stage1.checkpoint_every=3", "stage1.sample_every=0"];
        ok(train_stage1(&e, None, &sets("stage1.max_steps=3"))
            .output()
            .unwrap());
        // The notice is a log line (stderr).
        let logged = |out: Output| {
            let text = String::from_utf8_lossy(&out.stderr).into_owned();
            ok(out);
            text
        };
        let out = logged(
            train_stage1(&e, Some(mpirun(2, None)), &sets("stage1.max_steps=6"))
                .output()
                .unwrap(),
        );
        assert!(out.contains("written by 1 rank(s) with 2 rank(s)"), "{out}");
        let s = summary(&e, "stage1");
        assert_eq!(
            (s["resumed_from"].as_u64(), s["ranks"].as_u64()),
            (Some(3), Some(2))
        );
        let out = logged(
            train_stage1(&e, None, &sets("stage1.max_steps=9"))
                .output()
                .unwrap(),
        );
        assert!(out.contains("written by 2 rank(s) with 1 rank(s)"), "{out}");
        let s = summary(&e, "stage1");
        assert_eq!(
            (s["resumed_from"].as_u64(), s["ranks"].as_u64()),
            (Some(6), Some(1))
        );
    }
}
