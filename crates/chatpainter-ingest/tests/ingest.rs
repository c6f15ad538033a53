//! End-to-end tests of ingestion on synthetic data in the real file formats, including every
//! bad-input case of the issue: each asserts the quarantine reason or the error message.
#![allow(clippy::unwrap_used)] // tests may panic on fixture setup

use chatpainter_artifacts::NoProgress;
use chatpainter_formats::ingested::{self as tables, Record, Shard};
use chatpainter_formats::objects::{OBJECTS_FILE, ObjectBox, Objects};
use chatpainter_formats::quality::{Issue, Reason};
use chatpainter_ingest::pipeline;
use chatpainter_ingest::synth::{self, SynthConfig};
use chatpainter_ingest::{CocoSource, IngestConfig, VisdialSource, images};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

struct Fixture {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    out: PathBuf,
}

fn fixture(train: usize, test: usize, visdial_val: usize) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = SynthConfig {
        train_images: train,
        test_images: test,
        visdial_val_images: visdial_val,
        width: 64,
        height: 48,
        seed: 7,
        ..Default::default()
    };
    synth::generate(&cfg, &data).unwrap();
    let out = tmp.path().join("out");
    Fixture {
        _tmp: tmp,
        data,
        out,
    }
}

fn config() -> IngestConfig {
    IngestConfig {
        data_root: String::new(),
        coco: vec![
            CocoSource {
                captions: "annotations/captions_train2014.json".into(),
                images: "train2014".into(),
                split: "train".into(),
                instances: None,
            },
            CocoSource {
                captions: "annotations/captions_val2014.json".into(),
                images: "val2014".into(),
                split: "test".into(),
                instances: None,
            },
        ],
        visdial: vec![
            VisdialSource {
                file: "visdial/visdial_1.0_train.json".into(),
                images: None,
                split: None,
                file_pattern: None,
            },
            VisdialSource {
                file: "visdial/visdial_1.0_val.json".into(),
                images: Some("VisualDialog_val2018".into()),
                split: None,
                file_pattern: None,
            },
        ],
        load_sizes: vec![16, 24],
        require_dialog: true,
        strict: false,
        row_group_size: 4,
    }
}

fn run(f: &Fixture, cfg: &IngestConfig) -> chatpainter_ingest::Result<(Vec<Record>, Vec<Issue>)> {
    pipeline::run(cfg, &f.data, &f.out, Shard::WHOLE, &NoProgress)?;
    Ok((
        tables::read_records(&f.out.join("records.parquet"))?,
        tables::read_issues(&f.out.join("issues.parquet"))?,
    ))
}

/// Ingests one shard into its folder under `root` and returns the folder and its manifest, not
/// saved yet (a shard counts as finished once its manifest is saved).
fn run_shard(
    cfg: &IngestConfig,
    f: &Fixture,
    root: &Path,
    shard: Shard,
) -> (std::path::PathBuf, chatpainter_artifacts::Manifest) {
    let dir = root.join(shard.dir_name());
    let out = pipeline::run(cfg, &f.data, &dir, shard, &NoProgress).unwrap();
    let mut m = chatpainter_artifacts::Manifest::new(
        chatpainter_artifacts::Stage::Ingest,
        Default::default(),
        out.outputs,
    );
    m.summary = serde_json::to_value(&out.summary).unwrap();
    (dir, m)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_vec(v).unwrap()).unwrap();
}

fn edit(f: &Fixture, rel: &str, change: impl FnOnce(&mut Value)) {
    let path = f.data.join(rel);
    let mut v = read_json(&path);
    change(&mut v);
    write_json(&path, &v);
}

const TRAIN: &str = "annotations/captions_train2014.json";
const VISDIAL: &str = "visdial/visdial_1.0_train.json";

fn image_id(v: &Value, i: usize) -> i64 {
    v["images"][i]["id"].as_i64().unwrap()
}

fn reasons_for(issues: &[Issue], id: i64) -> Vec<Reason> {
    issues
        .iter()
        .filter(|i| i.image_id == Some(id))
        .map(|i| i.reason)
        .collect()
}

#[test]
fn parquet_texts_equal_the_json() {
    let f = fixture(6, 3, 2);
    let (records, issues) = run(&f, &config()).unwrap();
    assert!(issues.is_empty(), "{issues:?}");
    assert_eq!(records.len(), 11);

    // Captions per image, normalised, in annotation order.
    let mut expected: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for file in [TRAIN, "annotations/captions_val2014.json"] {
        for a in read_json(&f.data.join(file))["annotations"]
            .as_array()
            .unwrap()
        {
            let c = a["caption"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            expected
                .entry(a["image_id"].as_i64().unwrap())
                .or_default()
                .push(c);
        }
    }
    // Dialogues per image, with the question mark restored.
    let vd = read_json(&f.data.join(VISDIAL));
    let (qs, ans) = (&vd["data"]["questions"], &vd["data"]["answers"]);
    let mut dialogs: BTreeMap<i64, Vec<(String, String)>> = BTreeMap::new();
    for d in vd["data"]["dialogs"].as_array().unwrap() {
        let turns = d["dialog"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let q = qs[r["question"].as_u64().unwrap() as usize]
                    .as_str()
                    .unwrap();
                let a = ans[r["answer"].as_u64().unwrap() as usize]
                    .as_str()
                    .unwrap();
                (format!("{q}?"), a.to_string())
            })
            .collect();
        dialogs.insert(d["image_id"].as_i64().unwrap(), turns);
    }
    let mut coco_records = 0;
    for r in &records {
        let d = r.dialogue.as_ref().expect("every record has a dialogue");
        let turns: Vec<(String, String)> = d
            .turns
            .iter()
            .map(|t| (t.question.clone(), t.answer.clone().unwrap()))
            .collect();
        if r.split == "visdial-val" {
            assert_eq!(r.captions, vec![d.caption.clone()]);
            assert_eq!(d.source, "1.0/val");
            assert!(
                r.file_name
                    .starts_with("VisualDialog_val2018/VisualDialog_val2018_")
            );
            continue;
        }
        coco_records += 1;
        assert_eq!(
            r.captions, expected[&r.image_id],
            "captions of {}",
            r.image_id
        );
        assert!((5..=7).contains(&r.captions.len()));
        assert_eq!(turns, dialogs[&r.image_id], "dialogue of {}", r.image_id);
        assert_eq!(d.turns.len(), 10);
        assert_eq!(d.source, "1.0/train");
        assert_eq!(
            r.split,
            if r.file_name.starts_with("train2014/") {
                "train"
            } else {
                "test"
            }
        );
    }
    assert_eq!(coco_records, 9);

    // Image tables: one per size and split, ids in record order, decodable 8-bit RGB squares.
    for size in [16u32, 24] {
        let path = f
            .out
            .join(format!("images/{size}/train/part-00000-of-00001.parquet"));
        let ids = tables::read_image_ids(&path, size).unwrap();
        let train: Vec<i64> = records
            .iter()
            .filter(|r| r.split == "train")
            .map(|r| r.image_id)
            .collect();
        assert_eq!(ids, train);
        // Row groups of 4: the second group holds the 5th and 6th image only.
        let group = tables::read_image_group(&path, 1).unwrap();
        assert_eq!(
            group.iter().map(|g| g.0).collect::<Vec<_>>(),
            train[4..].to_vec()
        );
        let rgb = tables::decode_png(&group[0].1).unwrap();
        assert_eq!(rgb.dimensions(), (size, size));
    }
}

#[test]
fn quarantines_every_bad_record_with_its_reason() {
    let f = fixture(12, 2, 0);
    let coco = read_json(&f.data.join(TRAIN));
    let ids: Vec<i64> = (0..12).map(|i| image_id(&coco, i)).collect();
    let missing = ids[0];
    let garbage = ids[1];
    let truncated = ids[2];
    let escapes = ids[3];
    let absolute = ids[4];
    let bad_index = ids[5];
    let no_dialog = ids[6];
    let no_captions = ids[7];
    let duplicate = ids[8];
    let orphan_dialog = 999_999;

    let name = |id: i64| {
        f.data
            .join(format!("train2014/COCO_train2014_{id:012}.jpg"))
    };
    std::fs::remove_file(name(missing)).unwrap();
    std::fs::write(name(garbage), b"\xFF\xD8\xFF\xE0 this is not really a jpeg").unwrap();
    let bytes = std::fs::read(name(truncated)).unwrap();
    std::fs::write(name(truncated), &bytes[..bytes.len() * 6 / 10]).unwrap();
    // A perfectly good image outside the root: it must never be opened.
    std::fs::copy(name(ids[9]), f.data.join("outside.jpg")).unwrap();

    edit(&f, TRAIN, |v| {
        let images = v["images"].as_array_mut().unwrap();
        images[3]["file_name"] = "../outside.jpg".into();
        images[4]["file_name"] = f
            .data
            .join("outside.jpg")
            .to_string_lossy()
            .into_owned()
            .into();
        let dup = images[8].clone();
        images.push(dup);
        let annotations = v["annotations"].as_array_mut().unwrap();
        annotations.retain(|a| a["image_id"].as_i64() != Some(no_captions));
        annotations.push(serde_json::json!({"image_id": 4242, "id": 1, "caption": "orphan"}));
        annotations.push(serde_json::json!({"image_id": ids[10], "id": 2, "caption": " \n "}));
    });
    edit(&f, VISDIAL, |v| {
        let dialogs = v["data"]["dialogs"].as_array_mut().unwrap();
        dialogs.retain(|d| d["image_id"].as_i64() != Some(no_dialog));
        for d in dialogs.iter_mut() {
            if d["image_id"].as_i64() == Some(bad_index) {
                d["dialog"][3]["answer"] = 10_000_000.into();
            }
        }
        let mut extra = dialogs[0].clone();
        extra["image_id"] = orphan_dialog.into();
        dialogs.push(extra);
    });

    let (records, issues) = run(&f, &config()).unwrap();
    let kept: BTreeSet<i64> = records.iter().map(|r| r.image_id).collect();
    let expect = [
        (missing, Reason::ImageMissing),
        (garbage, Reason::ImageUndecodable),
        (truncated, Reason::ImageUndecodable),
        (escapes, Reason::PathEscapesRoot),
        (absolute, Reason::PathEscapesRoot),
        (bad_index, Reason::DialogIndexOutOfRange),
        (no_dialog, Reason::CaptionsWithoutDialog),
        (no_captions, Reason::NoCaptions),
        (duplicate, Reason::DuplicateImageId),
        (orphan_dialog, Reason::DialogWithoutCaptions),
        (4242, Reason::CaptionForUnknownImage),
        (ids[10], Reason::EmptyCaption),
    ];
    for (id, reason) in expect {
        assert!(
            reasons_for(&issues, id).contains(&reason),
            "image {id}: expected {reason:?}, got {:?}",
            reasons_for(&issues, id)
        );
    }
    // The bad-index dialogue is dropped, so its image has no dialogue either.
    assert!(reasons_for(&issues, bad_index).contains(&Reason::CaptionsWithoutDialog));
    // Both entries of the duplicated id are reported.
    assert_eq!(
        reasons_for(&issues, duplicate)
            .iter()
            .filter(|r| **r == Reason::DuplicateImageId)
            .count(),
        2
    );
    for id in &ids[..9] {
        assert!(!kept.contains(id), "image {id} should have been dropped");
    }
    // The image with one empty caption keeps its other captions; the clean ones are all there.
    assert!(kept.contains(&ids[10]) && kept.contains(&ids[11]) && kept.contains(&ids[9]));
    // Messages name the file, the record and the field.
    let bad = issues
        .iter()
        .find(|i| i.reason == Reason::DialogIndexOutOfRange)
        .unwrap();
    assert_eq!(bad.file, VISDIAL);
    assert!(
        bad.record.ends_with(".dialog[3]") && bad.field == "answer",
        "{bad}"
    );
    assert!(bad.detail.contains("10000000"), "{bad}");
    let truncated_issue = issues
        .iter()
        .find(|i| i.image_id == Some(truncated))
        .unwrap();
    assert!(
        truncated_issue.detail.contains("truncated"),
        "{truncated_issue}"
    );

    // The quality report counts them.
    let report: chatpainter_formats::quality::QualityReport =
        serde_json::from_slice(&std::fs::read(f.out.join("quality.json")).unwrap()).unwrap();
    assert_eq!(report.reasons["path-escapes-root"], 2);
    assert_eq!(report.splits["train"].images_in, 13);
    assert_eq!(
        report.splits["train"].records_out,
        records.iter().filter(|r| r.split == "train").count() as u64
    );

    // Strict mode turns the same input into an error.
    let mut strict = config();
    strict.strict = true;
    let err = run(&f, &strict).unwrap_err().to_string();
    assert!(err.contains("strict mode"), "{err}");
}

#[test]
fn odd_but_valid_images_come_out_as_8bit_rgb() {
    let f = fixture(5, 1, 0);
    let coco = read_json(&f.data.join(TRAIN));
    let path = |i: usize| {
        f.data.join(format!(
            "train2014/{}",
            coco["images"][i]["file_name"].as_str().unwrap()
        ))
    };
    let originals: Vec<image::RgbImage> = (0..4)
        .map(|i| image::open(path(i)).unwrap().to_rgb8())
        .collect();
    // Grayscale JPEG.
    image::DynamicImage::ImageRgb8(originals[0].clone())
        .to_luma8()
        .save_with_format(path(0), image::ImageFormat::Jpeg)
        .unwrap();
    // CMYK JPEG.
    let rgb = &originals[1];
    let cmyk: Vec<u8> = rgb
        .pixels()
        .flat_map(|p| [255 - p[0], 255 - p[1], 255 - p[2], 0])
        .collect();
    jpeg_encoder::Encoder::new_file(path(1), 90)
        .unwrap()
        .encode(
            &cmyk,
            rgb.width() as u16,
            rgb.height() as u16,
            jpeg_encoder::ColorType::Cmyk,
        )
        .unwrap();
    // 16-bit RGB PNG under a .jpg name.
    let rgb = &originals[2];
    let sixteen = image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_fn(
        rgb.width(),
        rgb.height(),
        |x, y| image::Rgb(rgb.get_pixel(x, y).0.map(|c| c as u16 * 257)),
    );
    sixteen
        .save_with_format(path(2), image::ImageFormat::Png)
        .unwrap();
    // RGBA PNG under a .jpg name.
    image::DynamicImage::ImageRgb8(originals[3].clone())
        .to_rgba8()
        .save_with_format(path(3), image::ImageFormat::Png)
        .unwrap();

    let (records, issues) = run(&f, &config()).unwrap();
    assert_eq!(
        records.iter().filter(|r| r.split == "train").count(),
        5,
        "{issues:?}"
    );
    let id = |i: usize| image_id(&coco, i);
    assert_eq!(reasons_for(&issues, id(0)), vec![Reason::Grayscale]);
    assert_eq!(reasons_for(&issues, id(1)), vec![Reason::Cmyk]);
    assert_eq!(
        reasons_for(&issues, id(2)),
        vec![Reason::PngNamedJpeg, Reason::SixteenBit]
    );
    assert_eq!(
        reasons_for(&issues, id(3)),
        vec![Reason::PngNamedJpeg, Reason::Alpha]
    );

    // The CMYK and 16-bit images decode to the same colours as the original (within JPEG error).
    let table = f.out.join("images/24/train/part-00000-of-00001.parquet");
    let mut stored = BTreeMap::new();
    for g in 0..2 {
        for (i, png) in tables::read_image_group(&table, g).unwrap() {
            stored.insert(i, tables::decode_png(&png).unwrap());
        }
    }
    for k in [1, 2] {
        let reference = images::squash(&originals[k], 24);
        let img = &stored[&id(k)];
        let diff: f64 = img
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / img.as_raw().len() as f64;
        assert!(diff < 6.0, "image {k}: mean abs difference {diff}");
    }
    // The grayscale one has equal channels.
    assert!(
        stored[&id(0)]
            .pixels()
            .all(|p| p[0] == p[1] && p[1] == p[2])
    );
}

#[test]
fn whole_file_problems_are_errors_naming_file_and_position() {
    let f = fixture(2, 1, 0);
    let path = f.data.join(TRAIN);
    std::fs::write(
        &path,
        "{\"images\": [\n  {\"id\": 1, \"file_name\": \"a.jpg\"},\n  oops\n]}",
    )
    .unwrap();
    let err = run(&f, &config()).unwrap_err().to_string();
    assert!(
        err.contains("captions_train2014.json") && err.contains("line 3"),
        "{err}"
    );

    std::fs::write(&path, "{\"pictures\": []}").unwrap();
    let err = run(&f, &config()).unwrap_err().to_string();
    assert!(
        err.contains("captions_train2014.json") && err.contains("missing field `images`"),
        "{err}"
    );

    std::fs::write(&path, "[1, 2, 3]").unwrap();
    let err = run(&f, &config()).unwrap_err().to_string();
    assert!(
        err.contains("captions_train2014.json") && err.contains("line 1"),
        "{err}"
    );

    let f = fixture(2, 1, 0);
    std::fs::write(
        f.data.join(VISDIAL),
        "{\"version\": \"1.0\", \"split\": \"train\", \"data\": {\"questions\": [\"q\"]",
    )
    .unwrap();
    let err = run(&f, &config()).unwrap_err().to_string();
    assert!(
        err.contains("visdial_1.0_train.json") && err.contains("line 1"),
        "{err}"
    );
}

#[test]
fn visdial_priority_and_test_rounds_without_answer() {
    let f = fixture(3, 1, 0);
    // A v0.9-style file that covers one image too: listed first, it wins over v1.0.
    let v1 = read_json(&f.data.join(VISDIAL));
    let mut v09 = v1.clone();
    v09["version"] = "0.9".into();
    let first = v09["data"]["dialogs"][0]["image_id"].as_i64().unwrap();
    v09["data"]["dialogs"].as_array_mut().unwrap().truncate(1);
    // Last round without an answer, as in v1.0 test.
    v09["data"]["dialogs"][0]["dialog"][9]
        .as_object_mut()
        .unwrap()
        .remove("answer");
    write_json(&f.data.join("visdial/visdial_0.9_train.json"), &v09);
    let mut cfg = config();
    cfg.visdial.insert(
        0,
        VisdialSource {
            file: "visdial/visdial_0.9_train.json".into(),
            images: None,
            split: None,
            file_pattern: None,
        },
    );
    let (records, issues) = run(&f, &cfg).unwrap();
    let r = records.iter().find(|r| r.image_id == first).unwrap();
    let d = r.dialogue.as_ref().unwrap();
    assert_eq!(d.source, "0.9/train");
    assert_eq!(d.turns[9].answer, None);
    assert_eq!(reasons_for(&issues, first), vec![Reason::DialogSuperseded]);
}

#[test]
fn shards_merge_to_the_unsharded_dataset() {
    let f = fixture(10, 4, 2);
    let cfg = config();
    let (whole, _) = run(&f, &cfg).unwrap();
    let merged_dir = f.out.with_file_name("sharded");
    let n = 3;
    for index in 0..n {
        let shard = Shard { index, count: n };
        let (dir, m) = run_shard(&cfg, &f, &merged_dir, shard);
        // A merge before every shard has finished is refused.
        if index == 0 {
            let err = pipeline::merge(&merged_dir, n)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("shard 0/3 has not finished"), "{err}");
        }
        m.save(&dir).unwrap();
    }
    let merged = pipeline::merge(&merged_dir, n).unwrap();
    assert_eq!(merged.summary.records, whole.len() as u64);
    let records = tables::read_records(&merged_dir.join("records.parquet")).unwrap();
    assert_eq!(records, whole);
    // Every record's image is in exactly one of the shards' tables for its split.
    for (split, parts) in &merged.summary.image_tables[&16] {
        let mut ids: Vec<i64> = parts
            .iter()
            .flat_map(|p| tables::read_image_ids(&merged_dir.join(p), 16).unwrap())
            .collect();
        ids.sort_unstable();
        let mut expected: Vec<i64> = whole
            .iter()
            .filter(|r| &r.split == split)
            .map(|r| r.image_id)
            .collect();
        expected.sort_unstable();
        assert_eq!(ids, expected, "split {split}");
    }

    // A shard whose files were tampered with is caught.
    let shard1 = merged_dir
        .join(Shard { index: 1, count: n }.dir_name())
        .join("records.parquet");
    let mut bytes = std::fs::read(&shard1).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&shard1, bytes).unwrap();
    let err = pipeline::merge(&merged_dir, n)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("content hash"), "{err}");
}

#[test]
fn shard_assignment_is_a_partition() {
    let n = 7;
    let mut counts = vec![0; n as usize];
    for id in 0..7000 {
        let owners: Vec<u32> = (0..n)
            .filter(|&i| Shard { index: i, count: n }.owns(id))
            .collect();
        assert_eq!(owners.len(), 1);
        counts[owners[0] as usize] += 1;
    }
    assert!(
        counts.iter().all(|&c| (800..1200).contains(&c)),
        "{counts:?}"
    );
    assert_eq!(tables::shard_of(123_456, 8), tables::shard_of(123_456, 8));
}

// ---- Instance annotations → objects.parquet ----

const TRAIN_INSTANCES: &str = "annotations/instances_train2014.json";
const VAL_INSTANCES: &str = "annotations/instances_val2014.json";

fn config_with_instances() -> IngestConfig {
    let mut cfg = config();
    cfg.coco[0].instances = Some(TRAIN_INSTANCES.into());
    cfg.coco[1].instances = Some(VAL_INSTANCES.into());
    cfg
}

fn read_objects(f: &Fixture) -> Objects {
    chatpainter_formats::objects::read_objects(&f.out.join(OBJECTS_FILE)).unwrap()
}

/// `(image_id, category_id, [x, y, w, h])` of every annotation of an instances file.
fn instance_boxes(v: &Value) -> Vec<(i64, i32, [f64; 4])> {
    v["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let b: Vec<f64> = serde_json::from_value(a["bbox"].clone()).unwrap();
            (
                a["image_id"].as_i64().unwrap(),
                a["category_id"].as_i64().unwrap() as i32,
                [b[0], b[1], b[2], b[3]],
            )
        })
        .collect()
}

#[test]
fn synth_instances_match_the_scenes() {
    let f = fixture(9, 4, 2);
    let scenes =
        chatpainter_formats::scenes::read_attributes(&f.data.join("attributes.json")).unwrap();
    let mut seen = BTreeSet::new();
    for (file, captions, split) in [
        (TRAIN_INSTANCES, TRAIN, "train"),
        (VAL_INSTANCES, "annotations/captions_val2014.json", "test"),
    ] {
        let v = read_json(&f.data.join(file));
        // Categories: one per colour × shape, ids 1..=21, supercategory the shape.
        let categories: BTreeMap<i64, String> = v["categories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let name = c["name"].as_str().unwrap().to_string();
                assert!(name.ends_with(c["supercategory"].as_str().unwrap()));
                (c["id"].as_i64().unwrap(), name)
            })
            .collect();
        let expected: BTreeSet<String> = chatpainter_formats::scenes::COLOURS
            .iter()
            .flat_map(|(c, _)| {
                chatpainter_formats::scenes::SHAPES
                    .iter()
                    .map(move |s| format!("{c} {s}"))
            })
            .collect();
        assert_eq!(
            categories.keys().copied().collect::<Vec<_>>(),
            (1..=21).collect::<Vec<_>>()
        );
        assert_eq!(
            categories.values().cloned().collect::<BTreeSet<_>>(),
            expected
        );
        // The same images as the captions file.
        assert_eq!(v["images"], read_json(&f.data.join(captions))["images"]);
        let boxes = instance_boxes(&v);
        for a in v["annotations"].as_array().unwrap() {
            assert_eq!(a["iscrowd"], 0);
            assert!(
                seen.insert(a["id"].as_i64().unwrap()),
                "annotation ids are unique"
            );
        }
        for scene in scenes.iter().filter(|s| s.split == split) {
            let mine: Vec<_> = boxes.iter().filter(|b| b.0 == scene.image_id).collect();
            assert_eq!(mine.len(), scene.objects.len(), "image {}", scene.image_id);
            for (o, (_, category, [x, y, w, h])) in scene.objects.iter().zip(mine) {
                assert_eq!(
                    categories[&i64::from(*category)],
                    format!("{} {}", o.colour, o.shape)
                );
                let (width, height) = (f64::from(scene.width), f64::from(scene.height));
                assert!(*x >= 0.0 && *y >= 0.0 && x + w <= width && y + h <= height);
                let column = ((x + w / 2.0) * 3.0 / width) as usize;
                assert_eq!(
                    chatpainter_formats::scenes::COLUMNS[column],
                    o.position,
                    "image {}",
                    scene.image_id
                );
            }
        }
    }
    // The standalone VisDial images have no instances.
    assert_eq!(
        seen.len(),
        scenes
            .iter()
            .filter(|s| s.split != "visdial-val")
            .map(|s| s.objects.len())
            .sum::<usize>()
    );
}

#[test]
fn objects_table_holds_the_instance_boxes_of_kept_images() {
    let f = fixture(6, 3, 2);
    let out = pipeline::run(
        &config_with_instances(),
        &f.data,
        &f.out,
        Shard::WHOLE,
        &NoProgress,
    )
    .unwrap();
    let listed = out.outputs.iter().find(|o| o.path == OBJECTS_FILE).unwrap();
    let records = tables::read_records(&f.out.join("records.parquet")).unwrap();
    let objects = read_objects(&f);
    assert_eq!(listed.rows, Some(objects.boxes.len() as u64));
    assert_eq!(objects.categories.len(), 21);
    assert_eq!(objects.categories[0].name, "red circle");
    let size: BTreeMap<i64, (f64, f64)> = records
        .iter()
        .map(|r| (r.image_id, (f64::from(r.width), f64::from(r.height))))
        .collect();
    let mut expected = Vec::new();
    for (file, split) in [(TRAIN_INSTANCES, "train"), (VAL_INSTANCES, "test")] {
        for (id, category, [x, y, w, h]) in instance_boxes(&read_json(&f.data.join(file))) {
            let (iw, ih) = size[&id];
            expected.push(ObjectBox {
                image_id: id,
                split: split.into(),
                category_id: category,
                x: (x / iw) as f32,
                y: (y / ih) as f32,
                w: ((x + w) / iw) as f32 - (x / iw) as f32,
                h: ((y + h) / ih) as f32 - (y / ih) as f32,
            });
        }
    }
    expected.sort_by_key(|b| b.image_id);
    assert_eq!(objects.boxes.len(), expected.len());
    for (got, want) in objects.boxes.iter().zip(&expected) {
        assert_eq!(
            (got.image_id, &got.split, got.category_id),
            (want.image_id, &want.split, want.category_id)
        );
        for (a, b) in [
            (got.x, want.x),
            (got.y, want.y),
            (got.w, want.w),
            (got.h, want.h),
        ] {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }
    let report: chatpainter_formats::quality::QualityReport =
        serde_json::from_slice(&std::fs::read(f.out.join("quality.json")).unwrap()).unwrap();
    let counts = &report.files[TRAIN_INSTANCES];
    assert_eq!(counts.kind, "coco-instances");
    assert_eq!(counts.records_in, counts.records_used);
}

#[test]
fn without_instances_there_is_no_objects_table() {
    let f = fixture(3, 2, 1);
    let cfg = config();
    // The config serialises as before (its digest is unchanged).
    assert!(!serde_json::to_string(&cfg).unwrap().contains("instances"));
    let out = pipeline::run(&cfg, &f.data, &f.out, Shard::WHOLE, &NoProgress).unwrap();
    assert!(!f.out.join(OBJECTS_FILE).exists());
    let mut paths: Vec<&str> = out.outputs.iter().map(|o| o.path.as_str()).collect();
    paths.retain(|p| !p.starts_with("images/"));
    assert_eq!(paths, ["records.parquet", "issues.parquet", "quality.json"]);
    // With instances, the other tables are the same but for the report's file counts.
    let with = f.out.with_file_name("with-instances");
    let out_with = pipeline::run(
        &config_with_instances(),
        &f.data,
        &with,
        Shard::WHOLE,
        &NoProgress,
    )
    .unwrap();
    for o in &out.outputs {
        let w = out_with.outputs.iter().find(|w| w.path == o.path).unwrap();
        assert_eq!(o.sha256 == w.sha256, o.path != "quality.json", "{}", o.path);
    }
}

#[test]
fn sharded_objects_merge_to_the_unsharded_table() {
    let f = fixture(8, 4, 0);
    let cfg = config_with_instances();
    pipeline::run(&cfg, &f.data, &f.out, Shard::WHOLE, &NoProgress).unwrap();
    let whole = read_objects(&f);
    let merged_dir = f.out.with_file_name("sharded");
    let n = 2;
    for index in 0..n {
        let shard = Shard { index, count: n };
        let (dir, m) = run_shard(&cfg, &f, &merged_dir, shard);
        m.save(&dir).unwrap();
    }
    let merged = pipeline::merge(&merged_dir, n).unwrap();
    assert!(merged.outputs.iter().any(|o| o.path == OBJECTS_FILE));
    let objects =
        chatpainter_formats::objects::read_objects(&merged_dir.join(OBJECTS_FILE)).unwrap();
    assert_eq!(objects, whole);
    assert_eq!(
        merged.report.files[TRAIN_INSTANCES].records_used,
        merged.report.files[TRAIN_INSTANCES].records_in
    );
}

#[test]
fn bad_instances_are_errors_naming_file_record_and_field() {
    let f = fixture(3, 2, 0);
    let cfg = config_with_instances();
    let original = read_json(&f.data.join(TRAIN_INSTANCES));

    // A category id the file does not list.
    edit(&f, TRAIN_INSTANCES, |v| {
        v["annotations"][1]["category_id"] = 99.into()
    });
    let id = original["annotations"][1]["id"].as_i64().unwrap();
    let err = run(&f, &cfg).unwrap_err().to_string();
    assert!(
        err.contains(TRAIN_INSTANCES)
            && err.contains(&format!("annotations[1] (id {id})"))
            && err.contains("category_id")
            && err.contains("99"),
        "{err}"
    );

    // Malformed JSON.
    std::fs::write(
        f.data.join(TRAIN_INSTANCES),
        "{\"images\": [\n{\"id\": 1},\n oops",
    )
    .unwrap();
    let err = run(&f, &cfg).unwrap_err().to_string();
    assert!(
        err.contains("instances_train2014.json") && err.contains("line 3"),
        "{err}"
    );

    // A box of the wrong length is a schema error.
    write_json(&f.data.join(TRAIN_INSTANCES), &original);
    edit(&f, TRAIN_INSTANCES, |v| {
        v["annotations"][0]["bbox"] = serde_json::json!([1, 2, 3])
    });
    let err = run(&f, &cfg).unwrap_err().to_string();
    assert!(err.contains("instances_train2014.json"), "{err}");

    // One category id named differently in the train and val files.
    write_json(&f.data.join(TRAIN_INSTANCES), &original);
    edit(&f, VAL_INSTANCES, |v| {
        v["categories"][2]["name"] = "green blob".into()
    });
    let err = run(&f, &cfg).unwrap_err().to_string();
    assert!(
        err.contains(TRAIN_INSTANCES) && err.contains(VAL_INSTANCES) && err.contains("green blob"),
        "{err}"
    );
}

#[test]
fn bad_instance_records_are_quarantined_with_their_reason() {
    let f = fixture(4, 2, 0);
    let cfg = config_with_instances();
    let v = read_json(&f.data.join(TRAIN_INSTANCES));
    let ids: Vec<i64> = (0..4).map(|i| image_id(&v, i)).collect();
    let first_of = |id: i64| {
        v["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .position(|a| a["image_id"].as_i64() == Some(id))
            .unwrap()
    };
    let (outside, negative) = (first_of(ids[0]), first_of(ids[1]));
    let annotations = v["annotations"].as_array().unwrap().len();
    edit(&f, TRAIN_INSTANCES, |v| {
        // Outside the image by more than a pixel, and of negative size.
        v["annotations"][outside]["bbox"] = serde_json::json!([-5.0, 0.0, 10.0, 10.0]);
        v["annotations"][negative]["bbox"] = serde_json::json!([3.0, 4.0, -2.0, 5.0]);
        // COCO's polygons are skipped unread.
        v["annotations"][0]["segmentation"] = serde_json::json!([[1.0, 2.0, 3.0, 4.0]]);
        let mut stray = v["annotations"][0].clone();
        // An image the file does not list.
        stray["image_id"] = 4242.into();
        stray["id"] = 900_001.into();
        v["annotations"].as_array_mut().unwrap().push(stray);
        // An image listed here but not in the captions file.
        let mut extra = v["annotations"][0].clone();
        extra["image_id"] = 5151.into();
        extra["id"] = 900_002.into();
        v["annotations"].as_array_mut().unwrap().push(extra);
        v["images"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"id": 5151}));
    });
    let (records, issues) = run(&f, &cfg).unwrap();
    let objects = read_objects(&f);
    let reason = |r: Reason| issues.iter().filter(|i| i.reason == r).collect::<Vec<_>>();
    let bad_boxes = reason(Reason::ObjectBoxInvalid);
    assert_eq!(bad_boxes.len(), 2, "{issues:?}");
    for (issue, rec, what) in [
        (
            bad_boxes
                .iter()
                .find(|i| i.image_id == Some(ids[0]))
                .unwrap(),
            outside,
            "more than a pixel",
        ),
        (
            bad_boxes
                .iter()
                .find(|i| i.image_id == Some(ids[1]))
                .unwrap(),
            negative,
            "negative size",
        ),
    ] {
        assert_eq!(issue.file, TRAIN_INSTANCES);
        assert_eq!(issue.record, format!("annotations[{rec}]"));
        assert_eq!(issue.field, "bbox");
        assert!(issue.detail.contains(what), "{issue}");
    }
    let unknown = reason(Reason::ObjectForUnknownImage);
    assert_eq!(unknown.len(), 1);
    assert_eq!(
        (
            unknown[0].image_id,
            unknown[0].record.as_str(),
            unknown[0].field.as_str()
        ),
        (
            Some(4242),
            format!("annotations[{annotations}]").as_str(),
            "image_id"
        )
    );
    assert!(unknown[0].detail.contains("900001"), "{}", unknown[0]);
    let unlisted = reason(Reason::ObjectsWithoutCaptions);
    assert_eq!(unlisted.len(), 1);
    assert_eq!(
        (unlisted[0].image_id, unlisted[0].record.as_str()),
        (Some(5151), "images[4]")
    );
    // The images themselves are kept, without the bad boxes.
    assert!(
        ids.iter()
            .all(|id| records.iter().any(|r| r.image_id == *id))
    );
    let train_boxes = objects.boxes.iter().filter(|b| b.split == "train").count();
    assert_eq!(train_boxes, annotations - 2);
    assert!(
        objects
            .boxes
            .iter()
            .all(|b| b.image_id != 4242 && b.image_id != 5151)
    );

    let mut strict = cfg.clone();
    strict.strict = true;
    let err = run(&f, &strict).unwrap_err().to_string();
    assert!(err.contains("strict mode"), "{err}");
}
