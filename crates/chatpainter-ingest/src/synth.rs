//! A synthetic dataset in the real COCO-2014 + VisDial v1.0 file formats, deterministic from a seed.
//!
//! Each image is a few flat shapes on a background. The captions name only the kinds of shape
//! ("a circle and triangles"); the dialogue reveals what the captions do not: how many shapes, their
//! colours, where they are, their size and the background. A model conditioned on the dialogue can
//! therefore do measurably better than one conditioned on the caption alone, which is the point of
//! ChatPainter. The ground truth of every scene is written to `attributes.json` for later scoring.
//!
//! Layout (the same as the real downloads, see the README):
//! `annotations/captions_{train,val}2014.json`, `{train,val}2014/COCO_{train,val}2014_%012d.jpg`,
//! `visdial/visdial_1.0_train.json` (dialogues for both COCO splits, as v1.0 ships them),
//! `visdial/visdial_1.0_val.json` + `VisualDialog_val2018/` (standalone images, no COCO captions),
//! and `annotations/instances_{train,val}2014.json`: COCO instance annotations, a category
//! (colour × shape, 21 of them) and the exact pixel box of every drawn object.

use crate::error::{IngestError, Result};
use chatpainter_artifacts::{AtomicFile, OutputFile, SplitMix};
use chatpainter_formats::scenes::{
    ATTRIBUTES_FILE, BACKGROUNDS, COLOURS, COLUMNS, LARGE_RADIUS, Object, SHADE_DROP, SHAPES,
    SMALL_RADIUS, Scene,
};
use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthConfig {
    /// Images in COCO train2014 (→ split `train`).
    #[serde(default = "d_train")]
    pub train_images: usize,
    /// Images in COCO val2014 (→ split `test`).
    #[serde(default = "d_test")]
    pub test_images: usize,
    /// Standalone VisDial v1.0 val images (Flickr-like: dialogue caption only).
    #[serde(default = "d_visdial_val")]
    pub visdial_val_images: usize,
    /// Nominal image size; each image varies by up to ±20 % in each direction, like COCO's.
    #[serde(default = "d_width")]
    pub width: u32,
    #[serde(default = "d_height")]
    pub height: u32,
    #[serde(default = "d_rounds")]
    pub rounds: usize,
    #[serde(default = "d_quality")]
    pub jpeg_quality: u8,
    #[serde(default)]
    pub seed: u64,
    /// Size of the VisDial train file's question pool: when larger than the distinct questions
    /// the dialogues ask, it is filled up with questions no dialogue uses (real v1.0 train has
    /// 376,082), so the file and ingest's in-memory pools have their real size.
    #[serde(default)]
    pub question_pool: usize,
    /// Likewise for the answer pool (real v1.0 train: 337,527). The 100 answer options per
    /// round are drawn from the whole pool, so their indices, and the file (≈1 GB at COCO
    /// scale), grow with it as in the real download.
    #[serde(default)]
    pub answer_pool: usize,
}

fn d_train() -> usize {
    48
}
fn d_test() -> usize {
    16
}
fn d_visdial_val() -> usize {
    4
}
fn d_width() -> u32 {
    160
}
fn d_height() -> u32 {
    120
}
fn d_rounds() -> usize {
    10
}
fn d_quality() -> u8 {
    92
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            train_images: d_train(),
            test_images: d_test(),
            visdial_val_images: d_visdial_val(),
            width: d_width(),
            height: d_height(),
            rounds: d_rounds(),
            jpeg_quality: d_quality(),
            seed: 0,
            question_pool: 0,
            answer_pool: 0,
        }
    }
}

fn pick<'a, T>(rng: &mut SplitMix, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len())]
}

fn number(n: usize) -> &'static str {
    ["zero", "one", "two", "three", "four"][n.min(4)]
}

/// One scene drawn from `rng`: jittered size, background, one to three objects in distinct
/// columns (the palettes of `chatpainter_formats::scenes`).
fn random_scene(
    rng: &mut SplitMix,
    image_id: i64,
    split: &str,
    file_name: String,
    cfg: &SynthConfig,
) -> Scene {
    let jitter = |rng: &mut SplitMix, v: u32| {
        ((v as f32) * (0.8 + 0.4 * rng.unit())).round().max(16.0) as u32
    };
    let (width, height) = (jitter(rng, cfg.width), jitter(rng, cfg.height));
    let background = rng.below(BACKGROUNDS.len());
    let count = 1 + rng.below(3);
    let mut columns = vec![0usize, 1, 2];
    let objects = (0..count)
        .map(|_| {
            let column = columns.remove(rng.below(columns.len()));
            let colour = loop {
                let c = rng.below(COLOURS.len());
                // Keep shapes visible: no white on the beach, nothing dark on the night.
                if !(background == 2 && c == 6) {
                    break c;
                }
            };
            Object {
                shape: pick(rng, &SHAPES).to_string(),
                colour: COLOURS[colour].0.to_string(),
                position: COLUMNS[column].to_string(),
                large: rng.below(2) == 1,
            }
        })
        .collect();
    Scene {
        image_id,
        split: split.to_string(),
        file_name,
        width,
        height,
        background: BACKGROUNDS[background].0.to_string(),
        objects,
    }
}

/// The kinds of shape present, e.g. "a circle and triangles": no counts beyond
/// singular/plural, no colours, no positions.
fn shape_phrase(scene: &Scene) -> String {
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for o in &scene.objects {
        match kinds.iter_mut().find(|(s, _)| *s == o.shape) {
            Some((_, n)) => *n += 1,
            None => kinds.push((&o.shape, 1)),
        }
    }
    let words: Vec<String> = kinds
        .iter()
        .map(|(s, n)| {
            if *n == 1 {
                format!("a {s}")
            } else {
                format!("{s}s")
            }
        })
        .collect();
    match words.len() {
        1 => words[0].clone(),
        _ => format!(
            "{} and {}",
            words[..words.len() - 1].join(", "),
            words[words.len() - 1]
        ),
    }
}

fn captions(scene: &Scene, rng: &mut SplitMix) -> Vec<String> {
    let s = shape_phrase(scene);
    let all = [
        format!("A simple drawing of {s}."),
        format!("a picture with {s} in it"),
        format!("An image showing {s}. "),
        format!("Some flat shapes: {s}.\n"),
        format!("  a cartoon of {s}"),
        format!("There is {s} in this picture."),
        format!("A computer drawing that shows {s}."),
    ];
    // COCO has 5 captions per image, sometimes 6 or 7.
    let n = [5, 5, 5, 6, 7][rng.below(5)];
    let start = rng.below(all.len());
    (0..n)
        .map(|i| all[(start + i) % all.len()].clone())
        .collect()
}

/// Question/answer rounds (questions without `?`, as VisDial stores them).
fn dialogue(scene: &Scene, rng: &mut SplitMix, rounds: usize) -> Vec<(String, String)> {
    let n = scene.objects.len();
    let mut qa = vec![
        (
            "how many shapes are there".to_string(),
            if n == 1 {
                "just one".to_string()
            } else {
                number(n).to_string()
            },
        ),
        (
            "what is the background".to_string(),
            format!("it is {}", scene.background),
        ),
    ];
    // Two rounds per object (the first names its column), so that three objects, the count
    // and the background fit in ten rounds: every attribute the captions leave out is stated.
    for o in &scene.objects {
        let the = format!("the {} on the {}", o.shape, o.position);
        qa.push((format!("what color is {the}"), o.colour.clone()));
        qa.push((
            format!("is {the} big"),
            if o.large {
                "yes, it is large".into()
            } else {
                "no, it is small".into()
            },
        ));
    }
    let fillers = [
        ("is this a photo", "no, it looks like a drawing"),
        ("are there any people", "no people"),
        ("are the shapes overlapping", "no"),
        ("is there any text", "no text"),
        ("can you see any animals", "no"),
        ("is it colorful", "yes"),
    ];
    let mut f = rng.below(fillers.len());
    while qa.len() < rounds {
        let (q, a) = fillers[f % fillers.len()];
        qa.push((q.to_string(), a.to_string()));
        f += 1;
    }
    qa.truncate(rounds);
    qa
}

/// Where one object's fill landed in the source image: the inclusive pixel extent and the number
/// of pixels it painted (a later object may paint over some of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Drawn {
    x0: u32,
    y0: u32,
    x1: u32,
    y1: u32,
    pixels: u64,
}

impl Drawn {
    /// The COCO `bbox`, `[x, y, width, height]` in pixels: the pixel squares the fill covers.
    fn bbox(&self) -> [f64; 4] {
        [
            f64::from(self.x0),
            f64::from(self.y0),
            f64::from(self.x1 - self.x0 + 1),
            f64::from(self.y1 - self.y0 + 1),
        ]
    }

    fn add(this: &mut Option<Self>, x: u32, y: u32) {
        match this {
            None => {
                *this = Some(Self {
                    x0: x,
                    y0: y,
                    x1: x,
                    y1: y,
                    pixels: 1,
                });
            }
            Some(d) => {
                d.x0 = d.x0.min(x);
                d.y0 = d.y0.min(y);
                d.x1 = d.x1.max(x);
                d.y1 = d.y1.max(y);
                d.pixels += 1;
            }
        }
    }
}

/// The image, and per object where its fill landed (`None` if it covers no pixel centre).
fn render(scene: &Scene, seed: u64) -> (RgbImage, Vec<Option<Drawn>>) {
    let (w, h) = (scene.width, scene.height);
    let bg = BACKGROUNDS
        .iter()
        .find(|b| b.0 == scene.background)
        .map_or([128; 3], |b| b.1);
    let mut rng = SplitMix::new(seed);
    let mut img = RgbImage::from_fn(w, h, |_, y| {
        let shade = 1.0 - SHADE_DROP * (y as f32 / h as f32);
        Rgb(bg.map(|c| (c as f32 * shade) as u8))
    });
    for p in img.pixels_mut() {
        let noise = rng.below(9) as i16 - 4;
        *p = Rgb(p.0.map(|c| (c as i16 + noise).clamp(0, 255) as u8));
    }
    let mut drawn = Vec::with_capacity(scene.objects.len());
    for o in &scene.objects {
        let colour = COLOURS
            .iter()
            .find(|c| c.0 == o.colour)
            .map_or([0; 3], |c| c.1);
        let column = COLUMNS.iter().position(|c| *c == o.position).unwrap_or(1) as f32;
        let cx = (column + 0.5) * w as f32 / 3.0;
        let cy = h as f32 * (0.35 + 0.3 * rng.unit());
        let r = (w.min(h) as f32) * if o.large { LARGE_RADIUS } else { SMALL_RADIUS };
        let mut extent = None;
        for y in 0..h {
            for x in 0..w {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                let inside = match o.shape.as_str() {
                    "circle" => dx * dx + dy * dy <= r * r,
                    "square" => dx.abs() <= r * 0.9 && dy.abs() <= r * 0.9,
                    _ => dy <= r * 0.8 && dy >= -r && dx.abs() <= (dy + r) * 0.6,
                };
                if inside {
                    img.put_pixel(x, y, Rgb(colour));
                    Drawn::add(&mut extent, x, y);
                }
            }
        }
        drawn.push(extent);
    }
    (img, drawn)
}

/// The categories of the synthetic instance files, one per colour × shape (as i-CLEVR's 24):
/// `(id, name, supercategory)`, ids `1..=21` in the order of `COLOURS`, then `SHAPES`.
pub fn instance_categories() -> Vec<(i32, String, &'static str)> {
    COLOURS
        .iter()
        .flat_map(|(colour, _)| SHAPES.iter().map(move |shape| (colour, shape)))
        .enumerate()
        .map(|(i, (colour, shape))| (i as i32 + 1, format!("{colour} {shape}"), *shape))
        .collect()
}

/// The category id of an object of `colour` and `shape` (see [`instance_categories`]).
pub fn category_id(colour: &str, shape: &str) -> Option<i32> {
    let c = COLOURS.iter().position(|(name, _)| *name == colour)?;
    let s = SHAPES.iter().position(|name| *name == shape)?;
    Some((c * SHAPES.len() + s) as i32 + 1)
}

/// The captions and the (question, answer) rounds of one scene.
type SceneTexts = (Vec<String>, Vec<(String, String)>);

/// Dialogues serialised per parallel task, and per sequential write (bounds memory: at COCO
/// scale one dialogue with its 1,000 answer options is ≈7.5 KB of JSON).
const DIALOGS_PER_TASK: usize = 256;
const DIALOGS_PER_WRITE: usize = 8192;

/// Writes the dataset into `out`; returns the output files (relative paths, hashed).
///
/// Every JSON file is written as a stream (a record at a time), never built in memory: the
/// COCO-scale VisDial train file is ≈1 GB. Images, the VisDial dialogues and the output hashes
/// are computed in parallel.
pub fn generate(cfg: &SynthConfig, out: &Path) -> Result<Vec<OutputFile>> {
    let mut rng = SplitMix::new(cfg.seed ^ 0x5EED_C0C0);
    let mut scenes = Vec::new();
    let mut files = Vec::new();
    // Ids like COCO's: sparse, and disjoint between train and val.
    for i in 0..cfg.train_images {
        let id = 9 + 7 * i as i64;
        let name = format!("COCO_train2014_{id:012}.jpg");
        scenes.push((random_scene(&mut rng, id, "train", name, cfg), "train2014"));
    }
    for i in 0..cfg.test_images {
        let id = 42 + 7 * i as i64;
        let name = format!("COCO_val2014_{id:012}.jpg");
        scenes.push((random_scene(&mut rng, id, "test", name, cfg), "val2014"));
    }
    for i in 0..cfg.visdial_val_images {
        let id = 185_000 + i as i64;
        let name = format!("VisualDialog_val2018_{id:012}.jpg");
        scenes.push((
            random_scene(&mut rng, id, "visdial-val", name, cfg),
            "VisualDialog_val2018",
        ));
    }
    let texts: Vec<SceneTexts> = scenes
        .iter()
        .map(|(s, _)| (captions(s, &mut rng), dialogue(s, &mut rng, cfg.rounds)))
        .collect();

    // Images, in parallel.
    let written: Vec<Result<(String, Vec<Option<Drawn>>)>> = scenes
        .par_iter()
        .map(|(scene, dir)| {
            let rel = format!("{dir}/{}", scene.file_name);
            let (img, drawn) = render(
                scene,
                cfg.seed
                    .wrapping_mul(31)
                    .wrapping_add(scene.image_id as u64),
            );
            let mut file = AtomicFile::create(out.join(&rel))?;
            JpegEncoder::new_with_quality(&mut file, cfg.jpeg_quality)
                .encode_image(&img)
                .map_err(|source| IngestError::Image {
                    path: out.join(&rel),
                    source,
                })?;
            file.commit()?;
            Ok((rel, drawn))
        })
        .collect();
    let mut drawn = Vec::with_capacity(scenes.len());
    for result in written {
        let (rel, d) = result?;
        files.push(rel);
        drawn.push(d);
    }

    // COCO captions files.
    let mut caption_id = 1;
    for (split, coco) in [("train", "train2014"), ("test", "val2014")] {
        let rel = format!("annotations/captions_{coco}.json");
        let chosen: Vec<usize> = (0..scenes.len())
            .filter(|&i| scenes[i].0.split == split)
            .collect();
        write_streamed(&out.join(&rel), |w| {
            write_coco(w, &chosen, &scenes, &texts, &mut caption_id)
        })?;
        files.push(rel);
    }

    // COCO instance files: the same images as the captions files (the standalone VisDial
    // images have none, as the real Flickr ones), one box per drawn object.
    let mut annotation_id = 1;
    for (split, coco) in [("train", "train2014"), ("test", "val2014")] {
        let rel = format!("annotations/instances_{coco}.json");
        let chosen: Vec<usize> = (0..scenes.len())
            .filter(|&i| scenes[i].0.split == split)
            .collect();
        write_streamed(&out.join(&rel), |w| {
            write_instances(w, &chosen, &scenes, &drawn, &mut annotation_id)
        })?;
        files.push(rel);
    }

    // VisDial v1.0 train (both COCO splits, with the configured pool sizes) and val
    // (standalone).
    for (name, splits, vd_split, pools) in [
        (
            "visdial/visdial_1.0_train.json",
            &["train", "test"][..],
            "train",
            (cfg.question_pool, cfg.answer_pool),
        ),
        (
            "visdial/visdial_1.0_val.json",
            &["visdial-val"][..],
            "val",
            (0, 0),
        ),
    ] {
        let chosen: Vec<usize> = (0..scenes.len())
            .filter(|&i| splits.contains(&scenes[i].0.split.as_str()))
            .collect();
        let doc = VisdialPlan::new(&chosen, &scenes, &texts, pools);
        write_streamed(&out.join(name), |w| doc.write(w, vd_split, cfg.seed))?;
        files.push(name.to_string());
    }

    write_streamed(&out.join(ATTRIBUTES_FILE), |w| {
        write_array(w, scenes.iter().map(|(s, _)| s))
    })?;
    files.push(ATTRIBUTES_FILE.into());
    files.sort();
    files
        .par_iter()
        .map(|f| Ok(OutputFile::describe(out, f, None)?))
        .collect()
}

/// One `images[]` entry of a COCO captions file (the fields the real file has).
#[derive(Serialize)]
struct CocoImageOut<'a> {
    license: u32,
    file_name: &'a str,
    coco_url: &'a str,
    height: u32,
    width: u32,
    date_captured: &'a str,
    flickr_url: &'a str,
    id: i64,
}

/// One `annotations[]` entry of a COCO captions file.
#[derive(Serialize)]
struct CocoCaptionOut<'a> {
    image_id: i64,
    id: u64,
    caption: &'a str,
}

/// The part COCO's captions and instances files share: `info`, `licenses` and `images`, up to
/// the `"annotations":` key.
fn write_coco_head(
    w: &mut dyn Write,
    description: &str,
    chosen: &[usize],
    scenes: &[(Scene, &str)],
) -> std::io::Result<()> {
    let head = json!({ "description": description, "version": "1.0", "year": 2014 });
    write!(
        w,
        "{{\"info\":{head},\"licenses\":[{{\"url\":\"\",\"id\":1,\"name\":\"synthetic\"}}],\"images\":"
    )?;
    write_array(
        w,
        chosen.iter().map(|&i| {
            let s = &scenes[i].0;
            CocoImageOut {
                license: 1,
                file_name: &s.file_name,
                coco_url: "",
                height: s.height,
                width: s.width,
                date_captured: "2013-11-14 11:18:45",
                flickr_url: "",
                id: s.image_id,
            }
        }),
    )?;
    w.write_all(b",\"annotations\":")
}

fn write_coco(
    w: &mut dyn Write,
    chosen: &[usize],
    scenes: &[(Scene, &str)],
    texts: &[SceneTexts],
    caption_id: &mut u64,
) -> std::io::Result<()> {
    write_coco_head(
        w,
        "chatpainter synthetic COCO-2014-shaped data",
        chosen,
        scenes,
    )?;
    let captions = chosen.iter().flat_map(|&i| {
        texts[i]
            .0
            .iter()
            .map(move |c| (scenes[i].0.image_id, c.as_str()))
    });
    write_array(
        w,
        captions.map(|(image_id, caption)| {
            *caption_id += 1;
            CocoCaptionOut {
                image_id,
                id: *caption_id - 1,
                caption,
            }
        }),
    )?;
    w.write_all(b"}")
}

/// One `annotations[]` entry of a COCO instances file (the real one's fields, but for the
/// `segmentation` polygon).
#[derive(Serialize)]
struct CocoInstanceOut {
    area: f64,
    iscrowd: u8,
    image_id: i64,
    bbox: [f64; 4],
    category_id: i32,
    id: u64,
}

/// One `categories[]` entry of a COCO instances file.
#[derive(Serialize)]
struct CocoCategoryOut<'a> {
    supercategory: &'a str,
    id: i32,
    name: &'a str,
}

/// A COCO instances file: `images` as in the captions file, an annotation per drawn object
/// (`bbox` its exact pixel extent, `area` the pixels its fill painted), all 21 categories.
/// An object whose fill covers no pixel centre (only possible in tiny images) has no box.
fn write_instances(
    w: &mut dyn Write,
    chosen: &[usize],
    scenes: &[(Scene, &str)],
    drawn: &[Vec<Option<Drawn>>],
    annotation_id: &mut u64,
) -> std::io::Result<()> {
    write_coco_head(
        w,
        "chatpainter synthetic COCO-2014-shaped instances",
        chosen,
        scenes,
    )?;
    let objects = chosen.iter().flat_map(|&i| {
        let s = &scenes[i].0;
        s.objects
            .iter()
            .zip(&drawn[i])
            .filter_map(move |(o, d)| Some((s.image_id, o, (*d)?)))
    });
    write_array(
        w,
        objects.map(|(image_id, o, d)| {
            *annotation_id += 1;
            CocoInstanceOut {
                area: d.pixels as f64,
                iscrowd: 0,
                image_id,
                bbox: d.bbox(),
                category_id: category_id(&o.colour, &o.shape).unwrap_or(0),
                id: *annotation_id - 1,
            }
        }),
    )?;
    w.write_all(b",\"categories\":")?;
    let categories = instance_categories();
    write_array(
        w,
        categories
            .iter()
            .map(|(id, name, supercategory)| CocoCategoryOut {
                supercategory,
                id: *id,
                name,
            }),
    )?;
    w.write_all(b"}")
}

/// One dialogue of a plan: `(image_id, caption, [(question, answer)])`, the rounds as indices
/// into the plan's pools.
type PlannedDialog = (i64, String, Vec<(usize, usize)>);

/// A VisDial file's question/answer pools and each chosen dialogue as indices into them.
struct VisdialPlan {
    questions: Vec<String>,
    answers: Vec<String>,
    dialogs: Vec<PlannedDialog>,
}

/// One round as VisDial v1.0 writes it.
#[derive(Serialize)]
struct RoundOut {
    question: usize,
    answer: usize,
    answer_options: Vec<usize>,
    gt_index: usize,
}

#[derive(Serialize)]
struct DialogOut<'a> {
    image_id: i64,
    caption: &'a str,
    dialog: Vec<RoundOut>,
}

impl VisdialPlan {
    /// Interns the dialogues' texts, then fills the pools up to `(questions, answers)` with
    /// texts no dialogue uses.
    fn new(
        chosen: &[usize],
        scenes: &[(Scene, &str)],
        texts: &[SceneTexts],
        (question_pool, answer_pool): (usize, usize),
    ) -> Self {
        let mut questions: Vec<String> = Vec::new();
        let mut answers: Vec<String> = Vec::new();
        let mut q_index: HashMap<String, usize> = HashMap::new();
        let mut a_index: HashMap<String, usize> = HashMap::new();
        let intern =
            |pool: &mut Vec<String>, index: &mut HashMap<String, usize>, s: &str| -> usize {
                *index.entry(s.to_string()).or_insert_with(|| {
                    pool.push(s.to_string());
                    pool.len() - 1
                })
            };
        let mut dialogs = Vec::with_capacity(chosen.len());
        for &i in chosen {
            let (captions, rounds) = &texts[i];
            let dialog = rounds
                .iter()
                .map(|(q, a)| {
                    (
                        intern(&mut questions, &mut q_index, q),
                        intern(&mut answers, &mut a_index, a),
                    )
                })
                .collect();
            dialogs.push((scenes[i].0.image_id, captions[0].trim().to_string(), dialog));
        }
        // Distractors: distinct, VisDial-like, never asked or answered by a dialogue.
        for n in questions.len()..question_pool {
            questions.push(format!(
                "is there a {} number {n} in the picture",
                pick_word(n)
            ));
        }
        for n in answers.len()..answer_pool {
            answers.push(format!("i think there are {n} {}s", pick_word(n)));
        }
        Self {
            questions,
            answers,
            dialogs,
        }
    }

    /// Streams the file: the pools, then the dialogues, serialised in parallel blocks and
    /// written in order. Each dialogue's 100 answer options per round (the right one among
    /// them, as VisDial ships them) come from its own seeded stream, so the output does not
    /// depend on the thread count.
    fn write(&self, w: &mut dyn Write, split: &str, seed: u64) -> std::io::Result<()> {
        write!(
            w,
            "{{\"version\":\"1.0\",\"split\":{},\"data\":{{\"questions\":",
            json!(split)
        )?;
        serde_json::to_writer(&mut *w, &self.questions)?;
        w.write_all(b",\"answers\":")?;
        serde_json::to_writer(&mut *w, &self.answers)?;
        w.write_all(b",\"dialogs\":[")?;
        let pool = self.answers.len();
        for (group, dialogs) in self.dialogs.chunks(DIALOGS_PER_WRITE).enumerate() {
            let blocks: Vec<std::io::Result<Vec<u8>>> = dialogs
                .par_chunks(DIALOGS_PER_TASK)
                .enumerate()
                .map(|(block, dialogs)| {
                    let mut buf = Vec::new();
                    for (k, (image_id, caption, rounds)) in dialogs.iter().enumerate() {
                        if group + block + k > 0 {
                            buf.push(b',');
                        }
                        let mut rng = SplitMix::new(
                            seed ^ 0xA115_0E75
                                ^ (*image_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                        );
                        let dialog = rounds
                            .iter()
                            .map(|&(question, answer)| {
                                let gt_index = rng.below(100);
                                let answer_options = (0..100)
                                    .map(|k| {
                                        if k == gt_index {
                                            answer
                                        } else {
                                            rng.below(pool)
                                        }
                                    })
                                    .collect();
                                RoundOut {
                                    question,
                                    answer,
                                    answer_options,
                                    gt_index,
                                }
                            })
                            .collect();
                        let out = DialogOut {
                            image_id: *image_id,
                            caption,
                            dialog,
                        };
                        serde_json::to_writer(&mut buf, &out)?;
                    }
                    Ok(buf)
                })
                .collect();
            for block in blocks {
                w.write_all(&block?)?;
            }
        }
        w.write_all(b"]}}")
    }
}

fn pick_word(n: usize) -> &'static str {
    const WORDS: [&str; 8] = [
        "kite",
        "bench",
        "giraffe",
        "surfboard",
        "umbrella",
        "clock",
        "bicycle",
        "pizza",
    ];
    WORDS[n % WORDS.len()]
}

/// Writes `items` as one JSON array, an element at a time.
fn write_array<T: Serialize>(
    w: &mut dyn Write,
    items: impl IntoIterator<Item = T>,
) -> std::io::Result<()> {
    w.write_all(b"[")?;
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        serde_json::to_writer(&mut *w, &item)?;
    }
    w.write_all(b"]")
}

/// Writes `path` atomically through `body`, which streams the content.
fn write_streamed(
    path: &Path,
    body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    body(&mut file).map_err(|e| IngestError::io(path, e))?;
    file.flush().map_err(|e| IngestError::io(path, e))?;
    file.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inclusive extent and count of the pixels of exactly `colour`.
    fn extent_of(img: &RgbImage, colour: [u8; 3]) -> Option<Drawn> {
        let mut found: Option<Drawn> = None;
        for (x, y, p) in img.enumerate_pixels() {
            if p.0 == colour {
                let d = found.get_or_insert(Drawn {
                    x0: x,
                    y0: y,
                    x1: x,
                    y1: y,
                    pixels: 0,
                });
                (d.x0, d.y0) = (d.x0.min(x), d.y0.min(y));
                (d.x1, d.y1) = (d.x1.max(x), d.y1.max(y));
                d.pixels += 1;
            }
        }
        found
    }

    /// One object per scene, so nothing paints over it: its box must be exactly the extent of
    /// the pixels of its colour (the noisy background never has an object's exact colour).
    #[test]
    fn boxes_are_the_exact_extent_of_the_drawn_pixels() {
        for (k, (w, h)) in [(64, 48), (37, 90), (16, 16), (160, 120)]
            .into_iter()
            .enumerate()
        {
            for shape in SHAPES {
                for large in [false, true] {
                    for (c, position) in COLUMNS.iter().enumerate() {
                        let (colour, rgb) = COLOURS[(k + c) % COLOURS.len()];
                        let scene = Scene {
                            image_id: 1,
                            split: "train".into(),
                            file_name: String::new(),
                            width: w,
                            height: h,
                            background: BACKGROUNDS[k % 2].0.into(),
                            objects: vec![Object {
                                shape: shape.into(),
                                colour: colour.into(),
                                position: position.to_string(),
                                large,
                            }],
                        };
                        let (img, drawn) = render(&scene, 7 * k as u64 + c as u64);
                        let expected = extent_of(&img, rgb);
                        assert!(expected.is_some(), "{shape} in {w}x{h}");
                        assert_eq!(drawn, vec![expected], "{shape} {position} in {w}x{h}");
                        let [x, _, bw, _] = drawn[0].map(|d| d.bbox()).unwrap_or_default();
                        let column = ((x + bw / 2.0) * 3.0 / f64::from(w)) as usize;
                        assert_eq!(column, c, "{shape} {position} in {w}x{h}");
                    }
                }
            }
        }
    }

    #[test]
    fn categories_are_colours_times_shapes() {
        let categories = instance_categories();
        assert_eq!(categories.len(), COLOURS.len() * SHAPES.len());
        for (id, name, supercategory) in &categories {
            let (colour, shape) = name.split_once(' ').unwrap_or_default();
            assert_eq!(category_id(colour, shape), Some(*id));
            assert_eq!(*supercategory, shape);
        }
        assert_eq!(categories[0].1, "red circle");
        assert_eq!(categories[20].0, 21);
        assert_eq!(category_id("grey", "circle"), None);
    }
}
