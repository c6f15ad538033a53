//! The eval stage (`chatpainter eval`): generate one image per test-split condition with a
//! trained Stage-I or Stage-II run, score them, and write `<run>/eval/`:
//!
//! ```text
//! metrics.json              protocol stamp + Inception Score + FID (MetricsFile)
//! images/<image_id>.png     every generated image (256 px for Stage-II, 64 px for Stage-I)
//! sheet.png                 real | Stage-I (upscaled) | Stage-II, one row per condition
//! per_turn/<image_id>.png   dialogue variants: one image after each turn, same noise
//! per_turn/<image_id>.json  the caption and the turns of that strip, one per frame
//! reference_stats.npz       FID statistics of the split's real images (when computed here)
//! ```
//!
//! Conditions: each image's **first** caption vector (the paper does not say which caption;
//! the first is the deterministic choice, and the embed stage keeps COCO's order) and its
//! dialogue as the variant needs it (whole-dialogue vector or per-turn vectors), read from the
//! embed stage's table. Images without the dialogue the variant needs are left out (logged).
//! Image `i` gets the noise seed [`image_seed`]`(seed, i)`; a per-turn strip reuses its image's
//! seed for every turn, so the last frame shows the same noise as the image in `images/`.
//! Real images for the sheet and the FID reference are centre crops of the ingested images at
//! the generator's resolution (76 → 64 for Stage-I, 304 → 256 for Stage-II).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chatpainter_artifacts::{Progress, RunDir, SplitMix, Stage};
use chatpainter_model::{CaSampling, DeviceChoice, Geometry, TrainData, Variant};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::conditions::{RunEncoders, TurnPair};
use crate::error::{EvalError, Result};
use crate::genapi::{Condition, DialogueCondition, Generated, RunGenerator};
use crate::pictures::{center_crop, grid, strip, write_png};
use crate::scene_score::{self, SceneReading};
use crate::score::{BackboneChoice, FidReference, ScoreSettings, Scorer};
use chatpainter_formats::metrics::{CurvePoint, METRICS_FILE, MetricsFile, SceneMetrics};
use chatpainter_formats::scenes::{ATTRIBUTES_FILE, Scene};

/// Generated images, relative to the eval directory.
pub const IMAGES_DIR: &str = "images";
/// Per-turn strips, relative to the eval directory.
pub const PER_TURN_DIR: &str = "per_turn";
/// The sample sheet.
pub const SHEET_FILE: &str = "sheet.png";
/// FID statistics of the real images, when the stage computed them.
pub const REFERENCE_FILE: &str = "reference_stats.npz";

/// The `[eval]` table of a pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// The trained stage to generate with: `run:stage2` or `run:stage1`.
    #[serde(default = "default_generator")]
    pub generator: String,
    /// Whose conditions (and real images) to use.
    #[serde(default = "default_split")]
    pub split: String,
    /// How many images; default one per image of the split (the paper's protocol). More than
    /// the split cycles through its conditions with fresh noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<usize>,
    /// Conditions per generator call (and images per Inception batch).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Seeds the generator noise and the IS shuffle.
    #[serde(default)]
    pub seed: u64,
    /// Where generation and Inception run (training's device names).
    #[serde(default)]
    pub device: DeviceChoice,
    /// `torchvision`, `pytorch-fid` or `torch-fidelity` (scores from different backbones are not
    /// comparable).
    #[serde(default)]
    pub backbone: BackboneChoice,
    /// Inception weights (torchvision / pytorch-fid `.pth`, or safetensors with the same
    /// names). Without it both metrics are reported unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    /// FID reference statistics (`.npz` with `mu`, `sigma`); default: computed from the
    /// split's real images and written to `reference_stats.npz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid_reference: Option<String>,
    /// Inception Score splits.
    #[serde(default = "default_splits")]
    pub splits: usize,
    /// Score the Inception Score over `splits` random subsets of this many images (the paper:
    /// 10 subsets of 30,000 of its 40k generated images) instead of `splits` contiguous chunks
    /// of a seeded shuffle (the common convention, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inception_subset: Option<usize>,
    /// Rows of `sheet.png`.
    #[serde(default = "default_sheet")]
    pub sheet_count: usize,
    /// Per-turn strips for this many of the split's dialogues (dialogue variants only).
    #[serde(default = "default_per_turn")]
    pub per_turn_count: usize,
    /// The CA's condition code: `sample` (the reference: μ + σ·ε) or `mean` (μ, no CA noise;
    /// a diagnostic, recorded in `metrics.json`'s protocol as `ca = "mean"`).
    #[serde(default, skip_serializing_if = "is_sample")]
    pub ca: CaSampling,
    /// The learning curve: the scene scorer also reads what every kept checkpoint of the
    /// generator's stage makes of the same conditions and seeds (synthetic data only; the
    /// number of points is the stage's `keep_checkpoints`). Written to `metrics.json`
    /// (`scenes.curve`), drawn by the report: rising curves say "train longer", flat ones
    /// "stuck".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub curve: bool,
}

fn is_sample(ca: &CaSampling) -> bool {
    *ca == CaSampling::Sample
}

fn default_generator() -> String {
    "run:stage2".into()
}
fn default_split() -> String {
    "test".into()
}
fn default_batch() -> usize {
    16
}
fn default_splits() -> usize {
    crate::inception_score::DEFAULT_SPLITS
}
fn default_sheet() -> usize {
    8
}
fn default_per_turn() -> usize {
    4
}

impl EvalConfig {
    /// The generator's stage (Stage-I or Stage-II).
    ///
    /// # Errors
    /// Anything but `run:stage1` / `run:stage2`.
    pub fn generator_stage(&self) -> Result<Stage> {
        match self.generator.as_str() {
            "run:stage1" => Ok(Stage::Stage1),
            "run:stage2" => Ok(Stage::Stage2),
            other => Err(EvalError::Config(format!(
                "eval.generator = {other:?}: expected \"run:stage2\" or \"run:stage1\""
            ))),
        }
    }

    /// Checks values that have no natural default behaviour.
    ///
    /// # Errors
    /// The key and what is wrong.
    pub fn validate(&self) -> Result<()> {
        self.generator_stage()?;
        if self.batch_size == 0 {
            return Err(EvalError::Config(
                "eval.batch_size must be at least 1".into(),
            ));
        }
        if self.splits == 0 {
            return Err(EvalError::Config("eval.splits must be at least 1".into()));
        }
        if self.images == Some(0) {
            return Err(EvalError::Config("eval.images must be at least 1".into()));
        }
        Ok(())
    }
}

/// What the stage wrote.
pub struct EvalOutcome {
    pub metrics: MetricsFile,
    /// Every file written, relative to the eval directory (for the manifest).
    pub files: Vec<String>,
    /// Conditions of the split left out for lack of the variant's dialogue.
    pub left_out: usize,
}

/// The seed of image `i` (and of its per-turn strip): SplitMix64 of (mixed `seed`) + `i`, so
/// nearby seeds do not share shifted sequences.
pub fn image_seed(seed: u64, i: usize) -> u64 {
    let base = SplitMix::new(seed).next_u64();
    SplitMix::new(base.wrapping_add(i as u64)).next_u64()
}

fn condition_of(
    variant: Variant,
    caption: &[f32],
    dialogue: Option<&Vec<f32>>,
    turns: &[Vec<f32>],
) -> Option<Condition> {
    let dialogue = match variant {
        Variant::Stackgan => DialogueCondition::None,
        Variant::ChatpainterNonrecurrent => DialogueCondition::Whole(dialogue?.clone()),
        Variant::ChatpainterRecurrent if turns.is_empty() => return None,
        Variant::ChatpainterRecurrent => DialogueCondition::Turns(turns.to_vec()),
    };
    Some(Condition {
        caption: caption.to_vec(),
        dialogue,
    })
}

/// The synthetic dataset's ground truth, keyed by (split, image id), when the ingested data root
/// holds one (`attributes.json` next to the annotations, as `synth` writes it).
type GroundTruth = (PathBuf, BTreeMap<(String, i64), Scene>);

fn ground_truth(run: &RunDir, ingest_dir: &Path) -> Result<Option<GroundTruth>> {
    let config_path = ingest_dir.join("config.toml");
    let Ok(text) = std::fs::read_to_string(&config_path) else {
        return Ok(None);
    };
    /// The one field of ingest's `config.toml` needed here (the rest is ingest's business).
    #[derive(Deserialize)]
    struct IngestDataRoot {
        data_root: String,
    }
    let config: IngestDataRoot = toml::from_str(&text)
        .map_err(|e| EvalError::Data(format!("{}: {e}", config_path.display())))?;
    let path = run.resolve(&config.data_root).join(ATTRIBUTES_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let scenes = chatpainter_formats::scenes::read_attributes(&path)?
        .into_iter()
        .map(|s| ((s.split.clone(), s.image_id), s))
        .collect();
    Ok(Some((path, scenes)))
}

/// Scores readings of `split` images against the ground truth; images it lacks are skipped.
fn score_readings<'a>(
    truth: &'a BTreeMap<(String, i64), Scene>,
    split: &str,
    readings: impl IntoIterator<Item = (i64, &'a SceneReading)>,
) -> chatpainter_formats::scenes::SceneScores {
    scene_score::score(
        readings
            .into_iter()
            .filter_map(|(id, r)| truth.get(&(split.to_string(), id)).map(|s| (r, s))),
    )
}

/// Runs the stage body into `dir` (the caller handles the manifest).
///
/// # Errors
/// Config errors naming the `[eval]` key; missing upstream artifacts (named); generator,
/// encoder and weights errors.
pub fn run_eval(
    cfg: &EvalConfig,
    run: &RunDir,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<EvalOutcome> {
    cfg.validate()?;
    let generator_stage = cfg.generator_stage()?;
    let (ingest_dir, embed_dir) = (run.stage(Stage::Ingest), run.stage(Stage::Embed));
    let generator = RunGenerator::load(&run.stage(generator_stage), cfg.device)?.with_ca(cfg.ca);
    let variant = generator.variant();
    let stage2 = generator.stage() == 2;
    let (_, device) = cfg.device.devices();

    // Conditions and real images of the split at the generator's resolution, in image-id order.
    let geometry = if stage2 {
        Geometry::STAGE2
    } else {
        Geometry::STAGE1
    };
    let data = TrainData::load(&ingest_dir, &embed_dir, &cfg.split, geometry)?;
    if data.caption_dim != generator.caption_dim() {
        return Err(EvalError::Data(format!(
            "{}: caption vectors have width {}, the generator in {} expects {}",
            embed_dir.join("embeddings.parquet").display(),
            data.caption_dim,
            generator.checkpoint().display(),
            generator.caption_dim()
        )));
    }
    let mut pool: Vec<(i64, Condition)> = Vec::new();
    for item in &data.items {
        if let Some(c) = item
            .captions
            .first()
            .and_then(|caption| condition_of(variant, caption, item.dialogue.as_ref(), &item.turns))
        {
            pool.push((item.image_id, c));
        }
    }
    let left_out = data.items.len() - pool.len();
    if left_out > 0 {
        tracing::warn!(
            left_out,
            variant = variant.name(),
            "split images without the dialogue the variant needs are not evaluated"
        );
    }
    if pool.is_empty() {
        return Err(EvalError::Data(format!(
            "split `{}` has no image with the conditions variant {} needs",
            cfg.split,
            variant.name()
        )));
    }
    let n = cfg.images.unwrap_or(pool.len());

    // A re-run must not leave images of an earlier, larger run behind.
    for sub in [IMAGES_DIR, PER_TURN_DIR] {
        let p = dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| EvalError::io(&p, e))?;
        }
    }
    let mut files: Vec<String> = Vec::new();

    let settings = ScoreSettings {
        backbone: cfg.backbone,
        weights: cfg.weights.as_deref().map(|w| run.resolve(w)),
        splits: cfg.splits,
        seed: cfg.seed,
        subset_size: cfg.inception_subset,
    };
    let mut scorer = Scorer::new(&settings, &device)?;
    let truth = ground_truth(run, &ingest_dir)?;
    let mut readings: Vec<(i64, SceneReading)> = Vec::new();

    // Real images are decoded and centre-cropped on demand: a COCO-sized test split at 256 px
    // would not fit in memory at once.
    let real = |it: &chatpainter_model::TrainItem| -> Result<RgbImage> {
        let rgb = it.image.rgb(it.image_id, geometry)?.into_owned();
        let side = geometry.load as u32;
        let img = RgbImage::from_raw(side, side, rgb).ok_or_else(|| {
            EvalError::Data(format!("image {}: not {side}×{side} RGB", it.image_id))
        })?;
        Ok(center_crop(&img, geometry.crop as u32))
    };
    let reference = if !scorer.available() {
        FidReference::Missing(String::new()) // unused: the scorer reports its own reason
    } else if let Some(path) = &cfg.fid_reference {
        FidReference::from_npz(&run.resolve(path))?
    } else {
        progress.start("FID reference (real images)", data.items.len() as u64);
        for chunk in data.items.chunks(cfg.batch_size) {
            let images = chunk.iter().map(&real).collect::<Result<Vec<_>>>()?;
            scorer.push(&images.iter().collect::<Vec<_>>())?;
            progress.advance(chunk.len() as u64);
        }
        progress.finish();
        let r = match scorer.fid_statistics() {
            Ok(stats) => {
                stats.save_npz(&dir.join(REFERENCE_FILE))?;
                files.push(REFERENCE_FILE.into());
                FidReference::Stats {
                    stats: Box::new(stats),
                    label: REFERENCE_FILE.into(),
                }
            }
            Err(reason) => FidReference::Missing(format!(
                "reference statistics of {} real `{}` images: {reason}",
                data.items.len(),
                cfg.split
            )),
        };
        scorer.reset()?;
        r
    };

    // Generate, write and score.
    let sheet_rows = cfg.sheet_count.min(n);
    let mut sheet: Vec<(i64, Generated)> = Vec::with_capacity(sheet_rows);
    progress.start("generating and scoring", n as u64);
    let mut start = 0;
    while start < n {
        let end = (start + cfg.batch_size).min(n);
        let idx: Vec<usize> = (start..end).collect();
        let generated = generate_at(&generator, pool.as_slice(), cfg, &idx)?;
        for (&i, g) in idx.iter().zip(&generated) {
            let id = pool[i % pool.len()].0;
            let round = i / pool.len();
            let name = if round == 0 {
                format!("{IMAGES_DIR}/{id}.png")
            } else {
                format!("{IMAGES_DIR}/{id}-{round}.png")
            };
            write_png(&dir.join(&name), g.final_image())?;
            files.push(name);
        }
        let refs: Vec<&RgbImage> = generated.iter().map(Generated::final_image).collect();
        scorer.push(&refs)?;
        if truth.is_some() {
            for (&i, g) in idx.iter().zip(&generated) {
                let id = pool[i % pool.len()].0;
                readings.push((id, scene_score::read_scene(g.final_image())));
            }
        }
        for (&i, g) in idx.iter().zip(generated) {
            if sheet.len() < sheet_rows {
                sheet.push((pool[i % pool.len()].0, g));
            }
        }
        progress.advance((end - start) as u64);
        start = end;
    }
    progress.finish();

    // The sample sheet: real | Stage-I | Stage-II.
    if !sheet.is_empty() {
        let cell = if stage2 { 256 } else { 128 };
        let by_id: BTreeMap<i64, &chatpainter_model::TrainItem> =
            data.items.iter().map(|it| (it.image_id, it)).collect();
        let reals: Vec<Option<RgbImage>> = sheet
            .iter()
            .map(|(id, _)| by_id.get(id).map(|it| real(it)).transpose())
            .collect::<Result<_>>()?;
        let rows: Vec<Vec<Option<&RgbImage>>> = sheet
            .iter()
            .zip(&reals)
            .map(|((_, g), real)| {
                let mut row = vec![real.as_ref(), Some(&g.stage1)];
                if stage2 {
                    row.push(g.stage2.as_ref());
                }
                row
            })
            .collect();
        write_png(&dir.join(SHEET_FILE), &grid(&rows, cell))?;
        files.push(SHEET_FILE.into());
    }

    // Per-turn strips of the first dialogues.
    let mut strips: Vec<StripReading> = Vec::new();
    if variant != Variant::Stackgan && cfg.per_turn_count > 0 {
        let (written, frames) = per_turn_strips(
            cfg,
            &generator,
            variant,
            &ingest_dir,
            &embed_dir,
            &pool,
            dir,
        )?;
        files.extend(written);
        strips = frames;
    }
    let curve = match &truth {
        Some((_, truth)) if cfg.curve => {
            let newest = (generator.step(), readings.as_slice());
            learning_curve(cfg, run, generator_stage, &pool, n, truth, newest, progress)?
        }
        _ => Vec::new(),
    };
    let scenes = truth.map(|(path, truth)| {
        let turns = strips.iter().map(|(_, f)| f.len()).max().unwrap_or(0);
        let per_turn = (0..turns)
            .map(|t| {
                let at_t = strips
                    .iter()
                    .filter_map(|(id, f)| f.get(t).map(|r| (*id, r)));
                score_readings(&truth, &cfg.split, at_t)
            })
            .collect();
        SceneMetrics {
            attributes_file: path
                .strip_prefix(run.root())
                .unwrap_or(&path)
                .display()
                .to_string(),
            images: score_readings(&truth, &cfg.split, readings.iter().map(|(id, r)| (*id, r))),
            per_turn,
            curve,
        }
    });

    let (inception_score, fid) = scorer.finish(&reference);
    let mut protocol = scorer.protocol(n);
    protocol.generator_stage = Some(format!("stage{}", generator.stage()));
    let ckpt = generator.checkpoint();
    protocol.checkpoint = Some(
        ckpt.strip_prefix(run.root())
            .unwrap_or(ckpt)
            .display()
            .to_string(),
    );
    protocol.step = Some(generator.step());
    protocol.split = Some(cfg.split.clone());
    protocol.ca = (cfg.ca != CaSampling::Sample).then(|| cfg.ca.name().to_owned());
    let metrics = MetricsFile {
        protocol,
        inception_score,
        fid,
        scenes,
    };
    metrics.write(&dir.join(METRICS_FILE))?;
    files.push(METRICS_FILE.into());
    Ok(EvalOutcome {
        metrics,
        files,
        left_out,
    })
}

/// Image `i` of the evaluation for each `i` of `idx`: condition `i` of `pool` (cycling) with
/// seed `image_seed(cfg.seed, i)`, so that every checkpoint draws the same noise.
///
/// # Errors
/// Generator errors; [`EvalError::Data`] when it returns another number of images.
fn generate_at(
    generator: &RunGenerator,
    pool: &[(i64, Condition)],
    cfg: &EvalConfig,
    idx: &[usize],
) -> Result<Vec<Generated>> {
    let conditions: Vec<Condition> = idx
        .iter()
        .map(|&i| pool[i % pool.len()].1.clone())
        .collect();
    let seeds: Vec<u64> = idx.iter().map(|&i| image_seed(cfg.seed, i)).collect();
    let generated = generator.generate(&conditions, &seeds, cfg.batch_size)?;
    if generated.len() != idx.len() {
        return Err(EvalError::Data(format!(
            "the generator returned {} images for {} conditions",
            generated.len(),
            idx.len()
        )));
    }
    Ok(generated)
}

/// The scene scores of every kept checkpoint of the generator's stage on the first `n`
/// conditions of `pool` with the evaluation's seeds, oldest first; the newest checkpoint's
/// readings (`newest`, the evaluation's own) are reused.
#[allow(clippy::too_many_arguments)]
fn learning_curve(
    cfg: &EvalConfig,
    run: &RunDir,
    stage: Stage,
    pool: &[(i64, Condition)],
    n: usize,
    truth: &BTreeMap<(String, i64), Scene>,
    newest: (u64, &[(i64, SceneReading)]),
    progress: &dyn Progress,
) -> Result<Vec<CurvePoint>> {
    let stage_dir = run.stage(stage);
    let checkpoints = RunGenerator::checkpoints(&stage_dir)?;
    progress.start("learning curve (checkpoints)", checkpoints.len() as u64);
    let mut curve = Vec::with_capacity(checkpoints.len());
    for (step, path) in checkpoints {
        let scores = if step == newest.0 {
            score_readings(truth, &cfg.split, newest.1.iter().map(|(id, r)| (*id, r)))
        } else {
            let generator = RunGenerator::load_checkpoint(&stage_dir, (step, path), cfg.device)?
                .with_ca(cfg.ca);
            let mut readings = Vec::with_capacity(n);
            for chunk in (0..n).collect::<Vec<_>>().chunks(cfg.batch_size) {
                let generated = generate_at(&generator, pool, cfg, chunk)?;
                for (&i, g) in chunk.iter().zip(&generated) {
                    readings.push((
                        pool[i % pool.len()].0,
                        scene_score::read_scene(g.final_image()),
                    ));
                }
            }
            score_readings(truth, &cfg.split, readings.iter().map(|(id, r)| (*id, r)))
        };
        curve.push(CurvePoint { step, scores });
        progress.advance(1);
    }
    progress.finish();
    Ok(curve)
}

/// One per-turn strip as the scene scorer read it: the image id and a reading per frame.
type StripReading = (i64, Vec<SceneReading>);

/// Strips for the first `per_turn_count` evaluated dialogues; returns the files written and
/// each strip's frames as read by the scene scorer.
fn per_turn_strips(
    cfg: &EvalConfig,
    generator: &RunGenerator,
    variant: Variant,
    ingest_dir: &Path,
    embed_dir: &Path,
    pool: &[(i64, Condition)],
    dir: &Path,
) -> Result<(Vec<String>, Vec<StripReading>)> {
    let encoders = RunEncoders::load(embed_dir)?;
    encoders.check_widths(variant, generator.caption_dim(), generator.dialogue_dim())?;
    let records_path = ingest_dir.join(chatpainter_formats::ingested::RECORDS_FILE);
    let records: BTreeMap<i64, chatpainter_formats::ingested::Record> =
        chatpainter_formats::ingested::read_records(&records_path)?
            .into_iter()
            .filter(|r| r.split == cfg.split)
            .map(|r| (r.image_id, r))
            .collect();
    let (mut files, mut readings) = (Vec::new(), Vec::new());
    for (i, (id, _)) in pool.iter().take(cfg.per_turn_count).enumerate() {
        let record = records.get(id).ok_or_else(|| {
            EvalError::Data(format!(
                "{}: no record for image {id}",
                records_path.display()
            ))
        })?;
        let (Some(caption), Some(dialogue)) = (record.captions.first(), &record.dialogue) else {
            continue;
        };
        let turns: Vec<TurnPair> = dialogue
            .turns
            .iter()
            .map(|t| (t.question.clone(), t.answer.clone().unwrap_or_default()))
            .collect();
        let conditions = encoders.per_turn_conditions(variant, caption, &turns, true)?;
        let seeds = vec![image_seed(cfg.seed, i); conditions.len()];
        let frames: Vec<RgbImage> = generator
            .generate(&conditions, &seeds, cfg.batch_size)?
            .iter()
            .map(|g| g.final_image().clone())
            .collect();
        let name = format!("{PER_TURN_DIR}/{id}.png");
        write_png(&dir.join(&name), &strip(&frames))?;
        files.push(name);
        readings.push((*id, frames.iter().map(scene_score::read_scene).collect()));
        // Sidecar with the text of each frame (the report prints it under the strip).
        let shown: Vec<serde_json::Value> = turns
            .iter()
            .filter(|(q, a)| !chatpainter_model::text::turn_text(q, a).is_empty())
            .map(|(q, a)| serde_json::json!({"question": q, "answer": a}))
            .collect();
        let sidecar = serde_json::json!({
            "image_id": id,
            "caption": chatpainter_model::text::normalize_whitespace(caption),
            "dialog": shown,
        });
        let json_name = format!("{PER_TURN_DIR}/{id}.json");
        let bytes = serde_json::to_vec_pretty(&sidecar)
            .map_err(|e| EvalError::Data(format!("{json_name}: {e}")))?;
        chatpainter_artifacts::write_atomic(dir.join(&json_name), &bytes)?;
        files.push(json_name);
    }
    Ok((files, readings))
}

/// Where `generate` and `eval` look for a run's generator stage when none is named: Stage-II
/// if it has trained, else Stage-I.
pub fn default_generator_stage(run: &Path) -> PathBuf {
    let s2 = run.join(Stage::Stage2.name());
    if s2.join("config.json").exists() {
        s2
    } else {
        run.join(Stage::Stage1.name())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_keys() {
        let c: EvalConfig = toml::from_str("").unwrap();
        assert_eq!(c.generator_stage().unwrap(), Stage::Stage2);
        assert_eq!((c.split.as_str(), c.splits, c.images), ("test", 10, None));
        assert_eq!(c.backbone, BackboneChoice::Torchvision);
        let c: EvalConfig = toml::from_str(
            "generator = \"run:stage1\"\nbackbone = \"pytorch-fid\"\ndevice = \"cpu\"",
        )
        .unwrap();
        assert_eq!(c.generator_stage().unwrap(), Stage::Stage1);
        assert_eq!(c.backbone, BackboneChoice::PytorchFid);
        let err = toml::from_str::<EvalConfig>("splitz = 3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("splitz"), "{err}");
        let bad: EvalConfig = toml::from_str("generator = \"stage3\"").unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("eval.generator")
        );
        // The resolved config round-trips through TOML (it is written next to the outputs).
        let text = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<EvalConfig>(&text).unwrap(), c);
    }

    #[test]
    fn seeds_are_distinct_and_stable() {
        assert_eq!(image_seed(0, 3), image_seed(0, 3));
        assert_ne!(image_seed(0, 3), image_seed(0, 4));
        assert_ne!(image_seed(1, 3), image_seed(0, 3));
    }
}
