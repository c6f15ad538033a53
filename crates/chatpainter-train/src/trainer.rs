//! The Stage-I loop (model.md §5): per batch fresh noise, one G forward, one D update on real /
//! wrong (shift-by-one) / detached fake with `cond = mu.detach()`, then one G update (adversarial
//! loss plus λ·KL) through the just-updated D; Adam with explicit ε; both learning rates halved
//! every `lr_decay_epochs` epochs. Checkpoints, resume, metrics, sample sheets and the NaN guard
//! are wired here.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use chatpainter_artifacts::{OutputFile, Progress};
use chatpainter_nn::Stage1D;
use chatpainter_nn::loss::{discriminator_loss, generator_loss};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::checkpoint::{self, CHECKPOINT_FORMAT, TrainState};
use crate::config::{ResolvedNetwork, Stage1TrainConfig, TrainDevice};
use crate::data::{Augment, Stage1Data, assemble};
use crate::export::{export_safetensors, first_non_finite};
use crate::metrics::{METRICS_FILE, MetricsWriter, SAMPLES_DIR, StepMetrics, sample_sheet_png};
use crate::model::{DeviceBatch, Stage1Generator};
use crate::rng::Xoshiro256;

/// RNG stream ids derived from the seed.
const STREAM_DATA: u64 = 1;
const STREAM_NOISE: u64 = 2;
const STREAM_SAMPLES: u64 = 3;

/// File with the resolved configuration in the stage directory.
pub const RESOLVED_CONFIG_FILE: &str = "config.json";

/// What a run wrote next to its checkpoints: the configuration actually used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedConfig {
    pub train: Stage1TrainConfig,
    pub network: ResolvedNetwork,
    pub items: usize,
    pub steps_per_epoch: u64,
    pub total_steps: u64,
}

/// What [`train_stage1`] reports (serialisable, e.g. as a stage manifest's summary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Optimiser steps completed (over all sessions of this run).
    pub steps: u64,
    /// The step limit of this configuration.
    pub total_steps: u64,
    pub epoch: u64,
    /// The stop flag ended the run early (after a checkpoint).
    pub stopped: bool,
    /// The step this session resumed from, if it did.
    pub resumed_from: Option<u64>,
    /// The newest checkpoint on disk.
    pub last_checkpoint: Option<PathBuf>,
    /// The last step's metrics of this session.
    pub last_metrics: Option<StepMetrics>,
    pub network: ResolvedNetwork,
}

/// Names of the safetensors exports written at the end of a completed run.
pub const EXPORT_FILES: [&str; 3] = [
    "stage1_g.safetensors",
    "stage1_d.safetensors",
    "stage1_dialogue_rnn.safetensors",
];

impl TrainSummary {
    /// The stage's outputs for a manifest: the resolved config, the metrics, the exports that
    /// exist and every file of the newest checkpoint (paths relative to `out_dir`).
    ///
    /// # Errors
    /// IO errors naming the file.
    pub fn outputs(&self, out_dir: &Path) -> Result<Vec<OutputFile>, TrainError> {
        let mut rel: Vec<String> = vec![RESOLVED_CONFIG_FILE.into(), METRICS_FILE.into()];
        rel.extend(
            EXPORT_FILES
                .iter()
                .filter(|f| out_dir.join(f).exists())
                .map(|f| (*f).to_string()),
        );
        if let Some(ckpt) = checkpoint::latest(out_dir)? {
            let mut files: Vec<String> = std::fs::read_dir(&ckpt)
                .map_err(|e| TrainError::io(&ckpt, e))?
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            files.sort();
            let dir = ckpt
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            rel.extend(
                files
                    .into_iter()
                    .map(|f| format!("{}/{dir}/{f}", checkpoint::CHECKPOINTS_DIR)),
            );
        }
        rel.iter()
            .map(|r| OutputFile::describe(out_dir, r, None).map_err(TrainError::from))
            .collect()
    }
}

impl TrainDevice {
    /// `(training device with autodiff, inference device)`.
    pub fn devices(self) -> (Device, Device) {
        match self {
            Self::Cpu => (Device::flex().autodiff(), Device::flex()),
        }
    }
}

fn adam(cfg: &Stage1TrainConfig) -> ModuleOptimizer {
    AdamConfig::new()
        .with_beta_1(cfg.adam.beta1 as f32)
        .with_beta_2(cfg.adam.beta2 as f32)
        .with_epsilon(cfg.adam.eps as f32)
        .init()
}

/// Learning-rate halvings in `epoch` (the reference halves at every multiple of the period).
pub fn lr_halvings(epoch: u64, decay_epochs: u64) -> u32 {
    epoch
        .checked_div(decay_epochs)
        .map_or(0, |h| u32::try_from(h).unwrap_or(u32::MAX))
}

fn tensor2(v: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

fn scalar(t: &Tensor<1>) -> f64 {
    f64::from(t.clone().into_scalar::<f32>())
}

fn guard(step: u64, losses: &[(&'static str, f64)]) -> Result<(), TrainError> {
    match losses.iter().find(|(_, v)| !v.is_finite()) {
        Some((name, value)) => Err(TrainError::NonFinite {
            step,
            what: format!("loss {name}"),
            value: *value,
        }),
        None => Ok(()),
    }
}

/// Loads a checkpoint's networks for inference (on the config's inference device), with the
/// state that describes them.
///
/// # Errors
/// As [`checkpoint::read_state`] and [`checkpoint::load_tensors`].
pub fn load_checkpoint_networks(
    checkpoint_dir: &Path,
) -> Result<(Stage1Generator, Stage1D, TrainState), TrainError> {
    let state = checkpoint::read_state(checkpoint_dir)?;
    let (_, device) = state.config.device.devices();
    let (gnet, d) = Stage1Generator::init(
        &state.network,
        state.config.variant,
        &device,
        state.config.seed,
    );
    let opt = adam(&state.config);
    let (gnet, d, _, _) = checkpoint::load_tensors(checkpoint_dir, gnet, d, opt.clone(), opt)?;
    Ok((gnet, d, state))
}

/// Trains Stage-I on `data`, writing checkpoints, `metrics.jsonl`, sample sheets and, at the end,
/// the safetensors exports into `out_dir`. When `out_dir` already holds a checkpoint the run
/// resumes from the newest one (its configuration must match `cfg` except for the run length,
/// intervals and retention). Setting `stop` makes the run write a checkpoint after the current
/// step and return with `stopped = true`.
///
/// # Errors
/// Config, data, IO and checkpoint errors; [`TrainError::NonFinite`] when a loss or (at a
/// checkpoint) a weight stops being finite — the last good checkpoint stays on disk.
pub fn train_stage1(
    cfg: &Stage1TrainConfig,
    data: &Stage1Data,
    out_dir: &Path,
    progress: &dyn Progress,
    stop: &AtomicBool,
) -> Result<TrainSummary, TrainError> {
    cfg.validate()?;
    data.validate()?;
    data.check_variant(cfg.variant)?;
    let net = cfg.network(data.caption_dim, data.dialogue_width(cfg.variant))?;
    let n = data.items.len();
    let batch = cfg.batch_size;
    let spe = (n / batch) as u64;
    if spe == 0 {
        return Err(TrainError::Data(format!(
            "{n} training images do not fill one batch of {batch}"
        )));
    }
    let total = match (cfg.epochs, cfg.max_steps) {
        (Some(e), Some(s)) => s.min(e.saturating_mul(spe)),
        (Some(e), None) => e.saturating_mul(spe),
        (None, Some(s)) => s,
        (None, None) => 0,
    };
    std::fs::create_dir_all(out_dir).map_err(|e| TrainError::io(out_dir, e))?;
    let resolved = ResolvedConfig {
        train: cfg.clone(),
        network: net,
        items: n,
        steps_per_epoch: spe,
        total_steps: total,
    };
    let json = serde_json::to_vec_pretty(&resolved)
        .map_err(|e| TrainError::Internal(format!("serialising the config: {e}")))?;
    chatpainter_artifacts::write_atomic(out_dir.join(RESOLVED_CONFIG_FILE), &json)?;

    let (device, infer_device) = cfg.device.devices();
    let (mut gnet, mut d) = Stage1Generator::init(&net, cfg.variant, &device, cfg.seed);
    let (mut opt_g, mut opt_d) = (adam(cfg), adam(cfg));

    checkpoint::remove_partial(out_dir)?;
    let mut resumed_from = None;
    let mut state = match checkpoint::latest(out_dir)? {
        Some(dir) => {
            let st = checkpoint::read_state(&dir)?;
            if st.config.resume_key() != cfg.resume_key() || st.network != net {
                return Err(TrainError::ResumeMismatch {
                    checkpoint: dir,
                    detail: format!(
                        "checkpoint config {:?} / network {:?}, requested {:?} / {:?}",
                        st.config.resume_key(),
                        st.network,
                        cfg.resume_key(),
                        net
                    ),
                });
            }
            let mut seen = vec![false; n];
            let is_permutation = st.permutation.len() == n
                && st.permutation.iter().all(|&i| {
                    let fresh = seen.get(i as usize).is_some_and(|s| !s);
                    if fresh {
                        seen[i as usize] = true;
                    }
                    fresh
                });
            if !is_permutation {
                return Err(TrainError::ResumeMismatch {
                    checkpoint: dir,
                    detail: format!(
                        "the checkpoint's data order ({} entries) is not a permutation of the {n} images",
                        st.permutation.len()
                    ),
                });
            }
            (gnet, d, opt_g, opt_d) = checkpoint::load_tensors(&dir, gnet, d, opt_g, opt_d)?;
            tracing::info!(step = st.step, checkpoint = %dir.display(), "resuming Stage-I");
            resumed_from = Some(st.step);
            st
        }
        None => {
            let mut data_rng = Xoshiro256::new(cfg.seed, STREAM_DATA);
            let mut permutation: Vec<u32> = (0..n as u32).collect();
            data_rng.shuffle(&mut permutation);
            TrainState {
                format: CHECKPOINT_FORMAT,
                step: 0,
                epoch: 0,
                next_batch: 0,
                permutation,
                data_rng,
                noise_rng: Xoshiro256::new(cfg.seed, STREAM_NOISE),
                lr_halvings: 0,
                config: cfg.clone(),
                network: net,
            }
        }
    };
    state.config = cfg.clone();

    let mut metrics = MetricsWriter::open(out_dir, state.step)?;
    let sampler = Sampler::new(cfg, data, &net);
    let mut last_checkpoint = checkpoint::latest(out_dir)?;
    let mut last_metrics = None;
    let mut stopped = false;
    progress.start("stage1", total);
    progress.advance(state.step.min(total));

    while state.step < total {
        let t0 = Instant::now();
        if state.next_batch as u64 >= spe {
            state.epoch += 1;
            state.next_batch = 0;
            state.data_rng.shuffle(&mut state.permutation);
        }
        state.lr_halvings = lr_halvings(state.epoch, cfg.lr_decay_epochs);
        let factor = 0.5f64.powi(state.lr_halvings as i32);
        let (lr_g, lr_d) = (cfg.lr_g * factor, cfg.lr_d * factor);
        let step = state.step + 1;

        let start = state.next_batch * batch;
        let indices: Vec<usize> = state.permutation[start..start + batch]
            .iter()
            .map(|&i| i as usize)
            .collect();
        let augs: Vec<Augment> = indices
            .iter()
            .map(|&i| Augment::draw(&mut state.data_rng, data.items[i].captions.len()))
            .collect();
        let host = assemble(data, cfg.variant, &indices, &augs);
        let noise = tensor2(
            state.noise_rng.normals(batch * net.z_dim),
            [batch, net.z_dim],
            &device,
        );
        let eps = tensor2(
            state.noise_rng.normals(batch * net.cond_dim),
            [batch, net.cond_dim],
            &device,
        );
        let b = DeviceBatch::new(host, cfg.variant, &net, &device);

        let out = gnet.forward(b.captions, &b.dialogue, noise, eps)?;
        // D step: real / wrong / detached fake, conditioned on the detached CA mean.
        let dl = discriminator_loss(&d, b.real, out.fake.clone(), out.mu.clone())?;
        let (d_loss, d_real, d_wrong, d_fake) = (
            scalar(&dl.total),
            scalar(&dl.real),
            scalar(&dl.wrong),
            scalar(&dl.fake),
        );
        guard(
            step,
            &[
                ("d_loss", d_loss),
                ("d_real", d_real),
                ("d_wrong", d_wrong),
                ("d_fake", d_fake),
            ],
        )?;
        let grads = GradientsParams::from_grads(dl.total.backward(), &d);
        d = opt_d.step(lr_d, d, grads);
        // G step through the updated D; the same fake (no new G forward).
        let gl = generator_loss(&d, out.fake, out.mu, out.logvar, cfg.kl_coeff);
        let (g_loss, g_adv, kl) = (scalar(&gl.total), scalar(&gl.adversarial), scalar(&gl.kl));
        guard(step, &[("g_loss", g_loss), ("g_adv", g_adv), ("kl", kl)])?;
        let grads = GradientsParams::from_grads(gl.total.backward(), &gnet);
        gnet = opt_g.step(lr_g, gnet, grads);

        state.step = step;
        state.next_batch += 1;
        let step_s = t0.elapsed().as_secs_f64();
        let m = StepMetrics {
            step,
            epoch: state.epoch,
            d_loss,
            d_real,
            d_wrong,
            d_fake,
            g_loss,
            g_adv,
            kl,
            lr_g,
            lr_d,
            step_ms: step_s * 1e3,
            images_per_s: batch as f64 / step_s.max(1e-9),
        };
        metrics.append(&m)?;
        if cfg.log_every > 0 && step % cfg.log_every == 0 {
            tracing::info!(
                step,
                epoch = state.epoch,
                d_loss,
                g_loss,
                kl,
                lr_g,
                ms = m.step_ms,
                "stage1"
            );
        }
        last_metrics = Some(m);
        if cfg.sample_every > 0 && step % cfg.sample_every == 0 {
            sampler.write(&gnet, out_dir, step, &infer_device)?;
        }
        progress.advance(1);
        let stop_now = stop.load(Ordering::SeqCst);
        let at_interval = cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0;
        if at_interval || stop_now || step == total {
            last_checkpoint = Some(save_checked(
                out_dir, &state, &gnet, &d, &opt_g, &opt_d, cfg,
            )?);
        }
        if stop_now && step < total {
            tracing::info!(step, "stop requested: checkpoint written, leaving");
            stopped = true;
            break;
        }
    }
    progress.finish();
    if !stopped && state.step >= total {
        // Final weights with the reference names.
        export_safetensors(&gnet.g, &out_dir.join(EXPORT_FILES[0]))?;
        export_safetensors(&d, &out_dir.join(EXPORT_FILES[1]))?;
        if let Some(enc) = &gnet.dialogue {
            export_safetensors(enc, &out_dir.join(EXPORT_FILES[2]))?;
        }
    }
    Ok(TrainSummary {
        steps: state.step,
        total_steps: total,
        epoch: state.epoch,
        stopped,
        resumed_from,
        last_checkpoint,
        last_metrics,
        network: net,
    })
}

/// Refuses to checkpoint non-finite weights (the previous checkpoint stays the last good one).
fn save_checked(
    out_dir: &Path,
    state: &TrainState,
    gnet: &Stage1Generator,
    d: &Stage1D,
    opt_g: &ModuleOptimizer,
    opt_d: &ModuleOptimizer,
    cfg: &Stage1TrainConfig,
) -> Result<PathBuf, TrainError> {
    for (net, bad) in [("G", first_non_finite(gnet)), ("D", first_non_finite(d))] {
        if let Some((path, value)) = bad {
            return Err(TrainError::NonFinite {
                step: state.step,
                what: format!("{net} weight `{path}`"),
                value: f64::from(value),
            });
        }
    }
    checkpoint::save(out_dir, state, gnet, d, opt_g, opt_d, cfg.keep_checkpoints)
}

/// Fixed conditions, noise and CA eps for sample sheets (derived from the seed, never from the
/// training streams, so sampling does not change the training run).
struct Sampler {
    count: usize,
    real: Vec<f32>,
    host: crate::data::HostBatch,
    noise: Vec<f32>,
    eps: Vec<f32>,
    variant: crate::config::Variant,
    net: ResolvedNetwork,
}

impl Sampler {
    fn new(cfg: &Stage1TrainConfig, data: &Stage1Data, net: &ResolvedNetwork) -> Self {
        let count = cfg.sample_count.clamp(1, data.items.len());
        let indices: Vec<usize> = (0..count).collect();
        let augs = vec![Augment::center(); count];
        let host = assemble(data, cfg.variant, &indices, &augs);
        let mut rng = Xoshiro256::new(cfg.seed, STREAM_SAMPLES);
        Self {
            count,
            real: host.images.clone(),
            noise: rng.normals(count * net.z_dim),
            eps: rng.normals(count * net.cond_dim),
            host,
            variant: cfg.variant,
            net: *net,
        }
    }

    /// G in inference mode (BatchNorm running statistics) on the fixed inputs.
    fn write(
        &self,
        gnet: &Stage1Generator,
        out_dir: &Path,
        step: u64,
        device: &Device,
    ) -> Result<(), TrainError> {
        let g = gnet.valid();
        let b = DeviceBatch::new(self.host.clone(), self.variant, &self.net, device);
        let noise = tensor2(self.noise.clone(), [self.count, self.net.z_dim], device);
        let eps = tensor2(self.eps.clone(), [self.count, self.net.cond_dim], device);
        let out = g.forward(b.captions, &b.dialogue, noise, eps)?;
        let fake: Vec<f32> = out.fake.into_data().iter::<f32>().collect();
        let png = sample_sheet_png(&self.real, &fake, self.count)?;
        let path = out_dir
            .join(SAMPLES_DIR)
            .join(format!("{}.png", checkpoint::dir_name(step)));
        chatpainter_artifacts::write_atomic(path, &png)?;
        Ok(())
    }
}
