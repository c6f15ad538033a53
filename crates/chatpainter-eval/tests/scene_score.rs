//! The scene scorer on real synthetic images (JPEG → ingest's decode and squash → the training
//! centre crop), and the contract between the scenes and their texts.
#![allow(clippy::unwrap_used)] // tests may panic on fixture setup

use chatpainter_eval::scene_score::{SceneReading, read_scene, score};
use chatpainter_formats::ingested::decode_png;
use chatpainter_formats::scenes::read_attributes;
use chatpainter_formats::scenes::{BACKGROUNDS, COLOURS, COLUMNS, Scene};
use chatpainter_ingest::images;
use chatpainter_ingest::synth::{self, SynthConfig};
use image::RgbImage;
use serde_json::Value;

const SCENES: usize = 400;

fn centre_crop(img: &RgbImage, side: u32) -> RgbImage {
    let off = (img.width() - side) / 2;
    image::imageops::crop_imm(img, off, off, side, side).to_image()
}

fn dataset() -> (tempfile::TempDir, Vec<Scene>) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        train_images: 0,
        test_images: SCENES,
        visdial_val_images: 0,
        seed: 11,
        ..Default::default()
    };
    synth::generate(&cfg, tmp.path()).unwrap();
    let scenes = read_attributes(&tmp.path().join("attributes.json")).unwrap();
    (tmp, scenes)
}

#[test]
fn reads_every_attribute_of_ingested_scenes_at_64_and_256() {
    let (tmp, scenes) = dataset();
    assert_eq!(scenes.len(), SCENES);
    let mut readings: [Vec<SceneReading>; 2] = [Vec::new(), Vec::new()];
    for s in &scenes {
        let path = tmp.path().join("val2014").join(&s.file_name);
        let decoded = images::load(&path, &[76, 304]).unwrap();
        for (k, (png, crop)) in decoded.png.iter().zip([64, 256]).enumerate() {
            let squashed = decode_png(png).unwrap();
            readings[k].push(read_scene(&centre_crop(&squashed, crop)));
        }
    }
    let mut failures = Vec::new();
    for (side, reads) in [64, 256].iter().zip(&readings) {
        let scores = score(reads.iter().zip(&scenes));
        for a in &scores.attributes {
            println!(
                "{side:>3} px  {:<12} {:>4}/{:<4} {:>6.2} %  (chance {:>5.1} %)  confusions {:?}",
                a.name,
                a.correct,
                a.total,
                100.0 * a.accuracy,
                100.0 * a.chance,
                a.confusions
            );
            if a.accuracy < 0.98 {
                failures.push(format!("{side} px {}: {:.3}", a.name, a.accuracy));
            }
        }
    }
    assert!(failures.is_empty(), "below 98 %: {failures:?}");
}

#[test]
fn a_wrong_scene_scores_low() {
    // The scorer must not agree with anything: readings of one scene scored against another's
    // ground truth land near chance.
    let (tmp, scenes) = dataset();
    let reads: Vec<SceneReading> = scenes
        .iter()
        .map(|s| {
            let img = image::open(tmp.path().join("val2014").join(&s.file_name))
                .unwrap()
                .to_rgb8();
            read_scene(&images::squash(&img, 64))
        })
        .collect();
    let shifted = score(reads.iter().zip(scenes.iter().cycle().skip(1)));
    let bg = shifted.get("background").unwrap();
    assert!(bg.accuracy < bg.chance + 0.1, "{bg:?}");
    let right = score(reads.iter().zip(&scenes));
    assert!(right.get("background").unwrap().accuracy > 0.98);
}

/// Lower-cased words of a text.
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn captions_hide_and_dialogues_state_the_dialogue_only_attributes() {
    let (tmp, scenes) = dataset();
    let read = |rel: &str| -> Value {
        serde_json::from_slice(&std::fs::read(tmp.path().join(rel)).unwrap()).unwrap()
    };
    let captions = read("annotations/captions_val2014.json");
    let visdial = read("visdial/visdial_1.0_train.json");
    let data = &visdial["data"];
    let text = |pool: &str, i: &Value| {
        data[pool][i.as_u64().unwrap() as usize]
            .as_str()
            .unwrap()
            .to_string()
    };

    // Words that give away a dialogue-only attribute.
    let mut banned: Vec<String> = Vec::new();
    for (name, _) in BACKGROUNDS.iter().chain(&COLOURS) {
        banned.extend(words(name).into_iter().filter(|w| w != "a"));
    }
    banned.extend(COLUMNS.iter().map(|c| c.to_string()));
    banned.extend(["one", "two", "three", "large", "small", "big", "little"].map(str::to_string));
    for c in captions["annotations"].as_array().unwrap() {
        let caption = c["caption"].as_str().unwrap();
        for w in words(caption) {
            assert!(!banned.contains(&w), "caption {caption:?} says {w:?}");
        }
    }

    for d in data["dialogs"].as_array().unwrap() {
        let id = d["image_id"].as_i64().unwrap();
        let scene = scenes.iter().find(|s| s.image_id == id).unwrap();
        let turns: Vec<String> = d["dialog"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{} ? {}",
                    text("questions", &r["question"]),
                    text("answers", &r["answer"])
                )
            })
            .collect();
        let stated = |needle: &str| turns.iter().any(|t| t.contains(needle));
        assert!(
            stated(&scene.background),
            "{id}: background {}",
            scene.background
        );
        let n = scene.objects.len();
        let count_word = if n == 1 {
            "just one"
        } else {
            ["", "", "two", "three"][n]
        };
        assert!(stated(count_word), "{id}: count {n}");
        for o in &scene.objects {
            let the = format!("{} on the {}", o.shape, o.position);
            let colour = turns.iter().any(|t| {
                t.contains(&format!("color is the {the} ?"))
                    && t.ends_with(&format!("? {}", o.colour))
            });
            assert!(colour, "{id}: colour of the {the}");
            let size = if o.large {
                "yes, it is large"
            } else {
                "no, it is small"
            };
            let sized = turns
                .iter()
                .any(|t| t.contains(&format!("is the {the} big")) && t.ends_with(size));
            assert!(sized, "{id}: size of the {the}");
        }
    }
}
