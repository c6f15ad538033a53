//! The report built from run directories that the tests write: every section present on a full
//! run, "not run" on a partial one, escaping, embedded images and no external reference.
#![allow(clippy::unwrap_used)] // tests may panic on fixture setup

use chatpainter_artifacts::{Manifest, OutputFile, Stage, StageKey};
use chatpainter_report::{Inputs, Report, ReportConfig, build, upstream_digests, write};
use std::path::Path;

const EVIL: &str = "<script>alert('pwned')</script>";

fn png(path: &Path, w: u32, h: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(w, h, image::Rgb([200, 30, 30]))
        .save(path)
        .unwrap();
}

fn finish(run: &Path, stage: &str, files: &[&str]) {
    let dir = run.join(stage);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), "x = 1\n").unwrap();
    let outputs = files
        .iter()
        .map(|f| OutputFile::describe(&dir, f, Some(3)).unwrap())
        .collect();
    let mut m = Manifest::new(stage.parse().unwrap(), StageKey::default(), outputs);
    m.seed = Some(7);
    m.summary = serde_json::json!({"note": EVIL});
    m.save(&dir).unwrap();
}

fn ingest(run: &Path) {
    let dir = run.join("ingest");
    std::fs::create_dir_all(&dir).unwrap();
    let quality = serde_json::json!({
        "files": {"annotations/captions_train2014.json": {"kind": "coco-captions", "records_in": 12, "records_used": 10}},
        "splits": {"train": {"images_in": 12, "records_out": 10, "dropped": 2}},
        "reasons": {"image-missing": 1, "empty-caption": 1},
        "captions_whitespace_normalised": 3,
        "examples": {"empty-caption": [format!("captions.json: annotations[4] field `caption`: {EVIL} (empty-caption)")]},
        "a_field_from_the_future": true
    });
    std::fs::write(dir.join("quality.json"), quality.to_string()).unwrap();
    finish(run, "ingest", &["quality.json"]);
}

fn metrics_line(step: u64, extra: &str) -> String {
    format!(
        "{{\"step\":{step},\"epoch\":0,\"d_loss\":{d},\"d_real\":0.7,\"d_wrong\":0.6,\"d_fake\":0.5,\
         \"g_loss\":{g},\"g_adv\":1.9,\"kl\":0.01,\"lr_g\":0.0002,\"lr_d\":0.0002,\"step_ms\":120.0,\
         \"images_per_s\":66.0{extra}}}\n",
        d = 1.5 - step as f64 * 0.1,
        g = 2.0 + step as f64 * 0.05,
    )
}

fn training(run: &Path, stage: &str, extra: &str, steps: &[u64]) {
    let dir = run.join(stage);
    let lines: String = (1..=9).map(|s| metrics_line(s, extra)).collect();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("metrics.jsonl"), lines).unwrap();
    std::fs::write(dir.join("config.json"), "{\"train\": {\"batch_size\": 8}}").unwrap();
    let mut listed = vec!["metrics.jsonl".to_string(), "config.json".to_string()];
    for s in steps {
        let sheet = format!("samples/step-{s:09}.png");
        png(&dir.join(&sheet), 40, 12);
        listed.push(sheet);
    }
    let listed: Vec<&str> = listed.iter().map(String::as_str).collect();
    finish(run, stage, &listed);
}

fn eval_metrics(available: bool) -> serde_json::Value {
    let protocol = serde_json::json!({
        "backbone": "torchvision-inception-v3", "weights_file": if available { Some("inception.pth") } else { None },
        "weights_sha256": if available { Some("ab12cd34") } else { None }, "images": 16, "splits": 10,
        "seed": 5, "resize": "bilinear 299", "generator_stage": "stage2", "checkpoint": "stage2/checkpoints/step-6",
        "step": 6, "split": "test", "unknown_key": 1
    });
    if available {
        serde_json::json!({"protocol": protocol,
            "inception_score": {"available": true, "mean": 11.25, "std": 0.375, "reason": null},
            "fid": {"available": true, "value": 42.5, "reason": null, "reference": "coco-val2014.npz"}})
    } else {
        serde_json::json!({"protocol": protocol,
            "inception_score": {"available": false, "mean": null, "std": null, "reason": format!("no Inception weights file {EVIL}")},
            "fid": {"available": false, "value": null, "reason": "no Inception weights file", "reference": null}})
    }
}

fn eval(run: &Path, available: bool) {
    let dir = run.join("eval");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("metrics.json"),
        eval_metrics(available).to_string(),
    )
    .unwrap();
    png(&dir.join("sheet.png"), 30, 10);
    for id in [42u64, 7, 1000] {
        png(&dir.join(format!("per_turn/{id}.png")), 50, 10);
    }
    std::fs::write(
        dir.join("per_turn/7.json"),
        serde_json::json!({"caption": EVIL, "turns": [{"question": "is it red?", "answer": "yes"}, "any people? no"]}).to_string(),
    )
    .unwrap();
    finish(run, "eval", &["metrics.json", "sheet.png"]);
}

fn full_run(run: &Path, available: bool) {
    ingest(run);
    finish(run, "synth", &[]);
    finish(run, "embed", &[]);
    training(run, "stage1", "", &[3, 6, 9, 12]);
    training(
        run,
        "stage2",
        ",\"d_uncond_real\":0.4,\"d_uncond_fake\":0.3",
        &[6],
    );
    eval(run, available);
}

fn report(run: &Path, config: &ReportConfig) -> Report {
    build(&Inputs {
        run_root: run,
        config,
        pipeline_toml: &format!("[run]\nname = \"t\"\ndescription = \"{EVIL}\"\n"),
        run_name: "t",
    })
    .unwrap()
}

/// Every `src`/`href` is a data URI or an in-page anchor, and nothing names a host.
fn assert_self_contained(html: &str) {
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(!html.contains("url(") && !html.contains("@import"));
    for (i, _) in html.match_indices("src=\"") {
        assert!(
            html[i + 5..].starts_with("data:image/png;base64,"),
            "{}",
            &html[i..i + 40]
        );
    }
    for (i, _) in html.match_indices("href=\"") {
        assert!(html[i + 6..].starts_with('#'), "{}", &html[i..i + 40]);
    }
}

#[test]
fn full_run_shows_every_section() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path();
    full_run(run, false);
    png(&run.join("stage1/samples/step-000000015.png"), 40, 12);
    let config = ReportConfig {
        max_samples: 2,
        per_turn_strips: 2,
        ..Default::default()
    };
    let r = report(run, &config);
    let html = &r.html;
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert!(r.not_run.is_empty(), "{:?}", r.not_run);
    for section in [
        "stages", "metrics", "training", "samples", "per-turn", "quality", "config",
    ] {
        assert!(
            html.contains(&format!("<h2 id=\"{section}\">")),
            "{section}"
        );
    }
    // Stage table from the manifests.
    assert!(html.contains("<td>stage2</td><td>finished</td>"), "{html}");
    // Metrics: unavailable with the reason, and the protocol stamp.
    assert!(html.contains("unavailable: no Inception weights file &lt;script&gt;"));
    for field in [
        "torchvision-inception-v3",
        "bilinear 299",
        "stage2/checkpoints/step-6",
        "<code>split</code>",
    ] {
        assert!(html.contains(field), "{field}");
    }
    // Curves for both training stages, Stage-II's extra terms included.
    assert_eq!(html.matches("<svg").count(), 10);
    assert!(html.contains("Discriminator losses") && html.contains("d_uncond_fake"));
    assert!(html.contains("Throughput (images/s)") && html.contains("Learning rates"));
    // Newest two sheets of Stage-I, newest first; Stage-II's one.
    // A sheet the finished stage's manifest does not list (left from discarded training) is
    // never shown, however new.
    assert!(!html.contains("step 15 <"));
    let s12 = html.find("step 12 <").unwrap();
    let s9 = html.find("step 9 <").unwrap();
    assert!(s12 < s9);
    assert_eq!(html.matches("step 6 <").count(), 1); // Stage-II's only sheet
    assert!(!html.contains("step 3 <"));
    // Per-turn: the first two by image id, with the sidecar's text escaped.
    assert!(html.contains("image <code>7</code>") && html.contains("image <code>42</code>"));
    assert!(!html.contains("image <code>1000</code>"));
    assert!(html.contains("is it red? yes"));
    // Quality: counts per reason and examples.
    assert!(html.contains("<code>image-missing</code></td><td><span class=\"n\">1</span>"));
    assert!(html.contains("coco-captions"));
    // Images: 2 + 1 sheets, eval sheet, 2 strips.
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 6);
    // Escaping: the page has no script of its own, and every hostile string arrives as text.
    assert!(!html.to_lowercase().contains("<script"));
    assert!(html.contains("&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;"));
    assert_self_contained(html);
}

#[test]
fn available_metrics_show_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    full_run(tmp.path(), true);
    let html = report(tmp.path(), &ReportConfig::default()).html;
    assert!(html.contains("11.2500 ± 0.3750"), "{html}");
    assert!(html.contains("42.5000") && html.contains("reference: coco-val2014.npz"));
    assert!(html.contains("ab12cd34") && html.contains("inception.pth"));
    assert!(!html.contains("unavailable:"));
}

#[test]
fn only_ingest_lists_the_rest_as_not_run() {
    let tmp = tempfile::tempdir().unwrap();
    ingest(tmp.path());
    let r = report(tmp.path(), &ReportConfig::default());
    assert_eq!(r.shown, vec![Stage::Ingest]);
    assert_eq!(
        r.not_run,
        vec![
            Stage::Synth,
            Stage::Embed,
            Stage::Stage1,
            Stage::Stage2,
            Stage::Eval
        ]
    );
    for stage in ["stage1", "stage2", "eval"] {
        assert!(r.html.contains(&format!("{stage}: not run")), "{stage}");
    }
    assert!(
        r.html
            .contains("<td>synth</td><td><span class=\"absent\">not run</span>")
    );
    assert!(r.html.contains("image-missing"));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_self_contained(&r.html);
    let up = upstream_digests(tmp.path()).unwrap();
    assert_eq!(up.keys().collect::<Vec<_>>(), vec!["ingest"]);
}

#[test]
fn unreadable_files_are_warnings_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path();
    full_run(run, false);
    std::fs::write(run.join("eval/metrics.json"), "{\"protocol\": ").unwrap();
    std::fs::write(run.join("stage1/samples/step-000000012.png"), b"not a png").unwrap();
    // A stage killed before its manifest: shown as unfinished, and the report is never current.
    std::fs::remove_file(run.join("stage2/manifest.json")).unwrap();
    let r = report(run, &ReportConfig::default());
    let joined = r.warnings.join("\n");
    assert!(
        joined.contains("eval/metrics.json: invalid JSON"),
        "{joined}"
    );
    assert!(
        joined.contains("step-000000012.png: not a PNG file"),
        "{joined}"
    );
    assert!(r.html.contains("unfinished (no manifest)"));
    assert!(r.html.contains("Could not show everything"));
    let up = upstream_digests(run).unwrap();
    assert!(up["stage2"].starts_with("unfinished@"));
    assert_eq!(up.len(), 6);
}

#[test]
fn write_is_atomic_and_described() {
    let tmp = tempfile::tempdir().unwrap();
    ingest(tmp.path());
    let r = report(tmp.path(), &ReportConfig::default());
    let dir = tmp.path().join("report");
    let out = write(&r, &dir).unwrap();
    assert_eq!(out.path, "index.html");
    assert_eq!(out.bytes, r.html.len() as u64);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    let missing = build(&Inputs {
        run_root: &tmp.path().join("nope"),
        config: &ReportConfig::default(),
        pipeline_toml: "",
        run_name: "x",
    })
    .unwrap_err()
    .to_string();
    assert!(
        missing.contains("nope") && missing.contains("not a run directory"),
        "{missing}"
    );
}

#[test]
fn config_rejects_unknown_keys() {
    let c: ReportConfig = serde_json::from_str("{\"max_samples\": 1}").unwrap();
    assert_eq!(c.max_samples, 1);
    assert_eq!(c.per_turn_strips, 4);
    let err = serde_json::from_str::<ReportConfig>("{\"max_sample\": 1}").unwrap_err();
    assert!(err.to_string().contains("max_sample"), "{err}");
}

#[test]
fn a_stage_just_started_is_not_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    ingest(tmp.path());
    let stage1 = tmp.path().join("stage1");
    std::fs::create_dir_all(&stage1).unwrap();
    std::fs::write(stage1.join("config.toml"), "x = 1\n").unwrap();
    let r = report(tmp.path(), &ReportConfig::default());
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert!(
        r.html
            .contains("<td>stage1</td><td>unfinished (no manifest)</td>")
    );
    assert!(r.html.contains("stage1: no metrics.jsonl yet"));
    assert!(r.html.contains("no sample sheets yet"));
    // Once a manifest claims the stage finished, the same absence is a warning.
    finish(tmp.path(), "stage1", &[]);
    let r = report(tmp.path(), &ReportConfig::default());
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("stage1/metrics.jsonl: not found")),
        "{:?}",
        r.warnings
    );
}
