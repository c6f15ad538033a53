//! The real `chatpainter` binary on small generated data: skip / stale / force, a run killed
//! mid-stage and rerun, sharded ingestion merged, bad pipeline keys.
#![allow(clippy::unwrap_used)] // tests may panic on fixture setup

use chatpainter_ingest::tables;
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
        changed.contains("stale: the stage config changed"),
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
    assert!(rerun.contains("ingest: done (no previous run)"), "{rerun}");
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
