//! Generation from a trained run: rebuild the stage's networks from its saved config, load the
//! newest checkpoint, and turn (caption vector, dialogue vectors, seed) into images. Used by
//! `eval` (the test split) and `generate` (new text, per-turn strips).
//!
//! G runs in inference mode (BatchNorm running statistics). Each image's noise `z` and CA eps come
//! from its own seed, so the same seed gives the same noise whatever the batch, and a per-turn
//! strip differs only by the conversation.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use crate::ModelError;
use crate::checkpoint;
use crate::device::DeviceChoice;
use crate::network::{ResolvedNetwork, Variant};
use crate::networks::{DialogueInput, Stage1Generator, Stage2Generator, StageGenerator};
use crate::run::RunConfig;
use chatpainter_artifacts::Xoshiro256;

/// RNG stream of generation noise (apart from the training streams).
const STREAM_GENERATE: u64 = 4;

/// The dialogue part of one condition, as the run's variant needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum DialogueCondition {
    /// `stackgan`: caption only.
    None,
    /// `chatpainter-nonrecurrent`: the whole-dialogue vector.
    Whole(Vec<f32>),
    /// `chatpainter-recurrent`: one vector per turn (at least one).
    Turns(Vec<Vec<f32>>),
}

/// What one image is generated from.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub caption: Vec<f32>,
    pub dialogue: DialogueCondition,
}

/// One generated image: the 64×64 Stage-I picture and, for a Stage-II run, the 256×256 one.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub stage1: image::RgbImage,
    pub stage2: Option<image::RgbImage>,
}

impl Generated {
    /// The run's final-resolution image.
    pub fn final_image(&self) -> &image::RgbImage {
        self.stage2.as_ref().unwrap_or(&self.stage1)
    }
}

#[derive(Debug)]
enum Nets {
    One(Box<Stage1Generator>),
    Two(Box<Stage2Generator>),
}

/// A trained generator, ready for inference.
#[derive(Debug)]
pub struct RunGenerator {
    nets: Nets,
    resolved: RunConfig,
    network: ResolvedNetwork,
    checkpoint: PathBuf,
    step: u64,
    device: Device,
    ca: CaSampling,
}

/// How generation draws the CA's condition code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaSampling {
    /// `c = μ + σ·ε` with ε from each image's seed (the reference, at evaluation time too).
    #[default]
    Sample,
    /// `c = μ`: no CA noise. A diagnostic: when the CA's σ drowns what the text says about
    /// single objects, conditioning on μ shows what G learned of them.
    Mean,
}

impl CaSampling {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sample => "sample",
            Self::Mean => "mean",
        }
    }
}

impl RunGenerator {
    /// Loads a trained stage directory (`<run>/stage1` or `<run>/stage2`): its `config.json` and
    /// newest checkpoint, onto `device`.
    ///
    /// # Errors
    /// IO and record errors naming the file; [`ModelError::Config`] when the directory has no
    /// checkpoint or is not a training stage.
    pub fn load(stage_dir: &Path, device: DeviceChoice) -> Result<Self, ModelError> {
        let newest = checkpoint::list(stage_dir)?.pop().ok_or_else(|| {
            ModelError::Config(format!(
                "{}: no checkpoint: train this stage first",
                stage_dir.display()
            ))
        })?;
        Self::load_checkpoint(stage_dir, newest, device)
    }

    /// Every kept checkpoint of a trained stage directory as `(step, directory)`, oldest first.
    ///
    /// # Errors
    /// IO errors naming the directory.
    pub fn checkpoints(stage_dir: &Path) -> Result<Vec<(u64, PathBuf)>, ModelError> {
        checkpoint::list(stage_dir)
    }

    /// As [`Self::load`], from the given checkpoint (`(step, directory)` of
    /// [`Self::checkpoints`]).
    ///
    /// # Errors
    /// As [`Self::load`].
    pub fn load_checkpoint(
        stage_dir: &Path,
        (step, ckpt): (u64, PathBuf),
        device: DeviceChoice,
    ) -> Result<Self, ModelError> {
        let resolved = RunConfig::read(stage_dir)?;
        let device = device.burn_device();
        let net = resolved.network;
        if let Some(stats) = &resolved.text_stats {
            stats.check(net.caption_dim, net.dialogue_dim)?;
        }
        let nets = match resolved.stage.as_str() {
            Stage1Generator::STAGE => Nets::One(Box::new(checkpoint::load_generator(
                &ckpt,
                resolved.stage1_generator(&device),
            )?)),
            Stage2Generator::STAGE => Nets::Two(Box::new(checkpoint::load_generator(
                &ckpt,
                resolved.stage2_generator(&device)?,
            )?)),
            other => {
                return Err(ModelError::Config(format!(
                    "{}: stage `{other}` is not a training stage",
                    stage_dir.display()
                )));
            }
        };
        Ok(Self {
            nets,
            resolved,
            network: net,
            checkpoint: ckpt,
            step,
            device,
            ca: CaSampling::default(),
        })
    }

    /// The generator with the CA drawing its code as `ca` says (the seeds still fix the same
    /// noise `z`).
    pub fn with_ca(self, ca: CaSampling) -> Self {
        Self { ca, ..self }
    }

    /// 1 or 2.
    pub fn stage(&self) -> u8 {
        match self.nets {
            Nets::One(_) => 1,
            Nets::Two(_) => 2,
        }
    }

    pub fn variant(&self) -> Variant {
        self.resolved.train.variant
    }

    pub fn caption_dim(&self) -> usize {
        self.network.caption_dim
    }

    /// Whole-dialogue width (non-recurrent), per-turn width (recurrent), 0 for `stackgan`.
    pub fn dialogue_dim(&self) -> usize {
        self.network.dialogue_dim
    }

    /// The checkpoint directory the weights came from.
    pub fn checkpoint(&self) -> &Path {
        &self.checkpoint
    }

    /// Training steps of that checkpoint.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The run's resolved configuration.
    pub fn config(&self) -> &RunConfig {
        &self.resolved
    }

    /// One image per condition, `seeds[i]` fixing image i's noise; batched by `batch_size`.
    ///
    /// # Errors
    /// [`ModelError::Data`] naming the condition whose vector widths or dialogue form do not fit
    /// the run.
    pub fn generate(
        &self,
        conditions: &[Condition],
        seeds: &[u64],
        batch_size: usize,
    ) -> Result<Vec<Generated>, ModelError> {
        if conditions.len() != seeds.len() {
            return Err(ModelError::Data(format!(
                "{} conditions but {} seeds",
                conditions.len(),
                seeds.len()
            )));
        }
        for (i, c) in conditions.iter().enumerate() {
            self.check(i, c)?;
        }
        let standardised: Vec<Condition>;
        let conditions = match &self.resolved.text_stats {
            Some(stats) => {
                standardised = conditions
                    .iter()
                    .map(|c| stats.apply_condition(c))
                    .collect();
                &standardised[..]
            }
            None => conditions,
        };
        let mut out = Vec::with_capacity(conditions.len());
        let batch = batch_size.max(1);
        for (conds, seeds) in conditions.chunks(batch).zip(seeds.chunks(batch)) {
            out.extend(match &self.nets {
                Nets::One(g) => self.run_batch(&g.as_ref().valid(), conds, seeds)?,
                Nets::Two(g) => self.run_batch(&g.as_ref().valid(), conds, seeds)?,
            });
        }
        Ok(out)
    }

    fn check(&self, i: usize, c: &Condition) -> Result<(), ModelError> {
        let bad = |what: String| Err(ModelError::Data(format!("condition {i}: {what}")));
        if c.caption.len() != self.network.caption_dim {
            return bad(format!(
                "caption vector of width {}, the run uses {}",
                c.caption.len(),
                self.network.caption_dim
            ));
        }
        let dim = self.network.dialogue_dim;
        match (self.variant(), &c.dialogue) {
            (Variant::Stackgan, DialogueCondition::None) => Ok(()),
            (Variant::ChatpainterNonrecurrent, DialogueCondition::Whole(v)) if v.len() == dim => {
                Ok(())
            }
            (Variant::ChatpainterRecurrent, DialogueCondition::Turns(t))
                if !t.is_empty() && t.iter().all(|v| v.len() == dim) =>
            {
                Ok(())
            }
            (v, d) => bad(format!(
                "variant {} needs {}, got {}",
                v.name(),
                match v {
                    Variant::Stackgan => "no dialogue".to_owned(),
                    Variant::ChatpainterNonrecurrent => format!("one {dim}-d dialogue vector"),
                    Variant::ChatpainterRecurrent => format!("at least one {dim}-d turn vector"),
                },
                match d {
                    DialogueCondition::None => "no dialogue".to_owned(),
                    DialogueCondition::Whole(v) => format!("a {}-d dialogue vector", v.len()),
                    DialogueCondition::Turns(t) => format!("{} turn vectors", t.len()),
                }
            )),
        }
    }

    fn run_batch<G: StageGenerator>(
        &self,
        g: &G,
        conds: &[Condition],
        seeds: &[u64],
    ) -> Result<Vec<Generated>, ModelError> {
        let b = conds.len();
        let net = &self.network;
        let dev = &self.device;
        let captions: Vec<f32> = conds.iter().flat_map(|c| c.caption.clone()).collect();
        let captions = Tensor::from_data(TensorData::new(captions, [b, net.caption_dim]), dev);
        let dialogue = dialogue_input(conds, net.dialogue_dim, dev);
        let mut noise = Vec::with_capacity(b * net.z_dim);
        let mut eps = vec![Vec::with_capacity(b * net.cond_dim); G::CA_DRAWS];
        for &seed in seeds {
            let mut rng = Xoshiro256::new(seed, STREAM_GENERATE);
            noise.extend(rng.normals(net.z_dim));
            for e in &mut eps {
                let draw = rng.normals(net.cond_dim);
                // ε = 0 gives c = μ + 0·σ = μ exactly (σ is finite).
                match self.ca {
                    CaSampling::Sample => e.extend(draw),
                    CaSampling::Mean => e.extend(std::iter::repeat_n(0.0, net.cond_dim)),
                }
            }
        }
        let noise = Tensor::from_data(TensorData::new(noise, [b, net.z_dim]), dev);
        let eps = eps
            .into_iter()
            .map(|e| Tensor::from_data(TensorData::new(e, [b, net.cond_dim]), dev))
            .collect();
        let out = g.generate(captions, &dialogue, noise, eps)?;
        let (stage1, stage2) = match out.stage1_img {
            Some(s1) => (to_images(s1), Some(to_images(out.fake))),
            None => (to_images(out.fake), None),
        };
        Ok(match stage2 {
            Some(s2) => stage1
                .into_iter()
                .zip(s2)
                .map(|(a, b)| Generated {
                    stage1: a,
                    stage2: Some(b),
                })
                .collect(),
            None => stage1
                .into_iter()
                .map(|a| Generated {
                    stage1: a,
                    stage2: None,
                })
                .collect(),
        })
    }
}

/// The batch's dialogue tensor (turns zero-padded to the longest dialogue of the batch).
fn dialogue_input(conds: &[Condition], dim: usize, dev: &Device) -> DialogueInput {
    let b = conds.len();
    match conds.first().map(|c| &c.dialogue) {
        Some(DialogueCondition::Whole(_)) => {
            let v: Vec<f32> = conds
                .iter()
                .flat_map(|c| match &c.dialogue {
                    DialogueCondition::Whole(v) => v.clone(),
                    _ => vec![0.0; dim],
                })
                .collect();
            DialogueInput::Whole(Tensor::from_data(TensorData::new(v, [b, dim]), dev))
        }
        Some(DialogueCondition::Turns(_)) => {
            let turns = |c: &Condition| match &c.dialogue {
                DialogueCondition::Turns(t) => t.clone(),
                _ => Vec::new(),
            };
            let t = conds.iter().map(|c| turns(c).len()).max().unwrap_or(1);
            let mut v = vec![0f32; b * t * dim];
            let mut lengths = Vec::with_capacity(b);
            for (i, c) in conds.iter().enumerate() {
                let ts = turns(c);
                for (s, turn) in ts.iter().enumerate() {
                    let at = (i * t + s) * dim;
                    v[at..at + dim].copy_from_slice(turn);
                }
                lengths.push(ts.len());
            }
            DialogueInput::Turns(
                Tensor::from_data(TensorData::new(v, [b, t, dim]), dev),
                lengths,
            )
        }
        _ => DialogueInput::None,
    }
}

/// `[B, 3, S, S]` in `[-1, 1]` → RGB images (`(x + 1)·127.5`, as the reference's PNG output).
fn to_images(t: Tensor<4>) -> Vec<image::RgbImage> {
    let [b, _, h, w] = t.dims();
    let v: Vec<f32> = t.into_data().iter::<f32>().collect();
    (0..b)
        .map(|i| {
            image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let px = |c: usize| {
                    let f = v[((i * 3 + c) * h + y as usize) * w + x as usize];
                    ((f + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
                };
                image::Rgb([px(0), px(1), px(2)])
            })
        })
        .collect()
}
