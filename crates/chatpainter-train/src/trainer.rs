//! The training loop of both stages (model.md §5), generic over [`StageGenerator`]: per batch
//! fresh noise, one G forward, one D update on real / wrong (shift-by-one) / detached fake with
//! `cond = mu.detach()`, then one G update (adversarial loss plus λ·KL) through the just-updated
//! D; Adam with explicit ε; both learning rates halved every `lr_decay_epochs` epochs.
//! Checkpoints, exact resume, metrics, sample sheets, the NaN guard and data-parallel replicas
//! are wired here once; [`train_stage1`] and [`train_stage2`] only build their networks.
//!
//! Data-parallel (`device = "cpu,cpu"`, `"cuda:0,cuda:1"`): the global batch is split into equal
//! contiguous shards, each replica (`fork` of G and D on its device, one thread each) computes its
//! shard's losses scaled by 1/N, and `step_multi` sums the gradients: the mean over shards.
//! BatchNorm normalises with per-replica batch statistics, like the reference's `nn.DataParallel`
//! (no synchronised BN); the running statistics become the mean of the replicas' updates (torch
//! keeps replica 0's). Wrong pairs are formed within a shard.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, MultiGradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use chatpainter_artifacts::{OutputFile, Progress};
use chatpainter_nn::loss::{discriminator_loss, generator_loss};
use chatpainter_nn::{GenOutput, Stage1D};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::checkpoint::{self, CHECKPOINT_FORMAT, TrainState};
use crate::config::{ResolvedNetwork, TrainConfig, Variant};
use crate::data::{Augment, Geometry, HostBatch, TrainData, assemble};
use crate::export::first_non_finite;
use crate::metrics::{
    METRICS_FILE, MetricsWriter, SAMPLES_DIR, SheetColumn, StepMetrics, sample_sheet_png,
};
use crate::model::{DeviceBatch, Stage1Generator, Stage2Generator, StageGenerator};
use crate::rng::Xoshiro256;
use crate::text_norm::{TextNorm, TextStats};

/// RNG stream ids derived from the seed.
const STREAM_DATA: u64 = 1;
const STREAM_NOISE: u64 = 2;
const STREAM_SAMPLES: u64 = 3;

/// File with the resolved configuration in the stage directory.
pub const RESOLVED_CONFIG_FILE: &str = "config.json";

/// What a run wrote next to its checkpoints: the configuration actually used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedConfig {
    /// `stage1` or `stage2`.
    #[serde(default = "stage1_name")]
    pub stage: String,
    pub train: TrainConfig,
    pub network: ResolvedNetwork,
    pub items: usize,
    pub steps_per_epoch: u64,
    pub total_steps: u64,
    /// Stage-II: the Stage-I run it was built on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage1: Option<Stage1Origin>,
    /// With `text_norm = "standardize"`: the statistics every text input is standardised with
    /// (Stage-II copies its Stage-I run's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_stats: Option<TextStats>,
}

fn stage1_name() -> String {
    Stage1Generator::STAGE.into()
}

/// The Stage-I checkpoint a Stage-II run froze.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage1Origin {
    pub checkpoint: PathBuf,
    pub step: u64,
}

impl ResolvedConfig {
    /// Reads `config.json` of a stage directory.
    ///
    /// # Errors
    /// IO and parse errors naming the file.
    pub fn read(stage_dir: &Path) -> Result<Self, TrainError> {
        let path = stage_dir.join(RESOLVED_CONFIG_FILE);
        let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| TrainError::Checkpoint {
            path,
            message: e.to_string(),
        })
    }
}

/// What a training run reports (serialisable, e.g. as a stage manifest's summary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// `stage1` or `stage2`.
    pub stage: String,
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
    /// Data-parallel replicas.
    pub replicas: usize,
}

/// Names of Stage-I's safetensors exports (see [`StageGenerator::EXPORT_FILES`]).
pub const EXPORT_FILES: &[&str] = Stage1Generator::EXPORT_FILES;

impl TrainSummary {
    /// The stage's outputs for a manifest: the resolved config, the metrics, the exports that
    /// exist and every file of the newest checkpoint (paths relative to `out_dir`).
    ///
    /// # Errors
    /// IO errors naming the file.
    pub fn outputs(&self, out_dir: &Path) -> Result<Vec<OutputFile>, TrainError> {
        let mut rel: Vec<String> = vec![RESOLVED_CONFIG_FILE.into(), METRICS_FILE.into()];
        let exports = Stage1Generator::EXPORT_FILES
            .iter()
            .chain(Stage2Generator::EXPORT_FILES);
        rel.extend(
            exports
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

pub(crate) fn adam(cfg: &TrainConfig) -> ModuleOptimizer {
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

/// Loads a Stage-I checkpoint's networks for inference (on the config's inference device), with
/// the state that describes them.
///
/// # Errors
/// As [`checkpoint::read_state`] and [`checkpoint::load_tensors`].
pub fn load_checkpoint_networks(
    checkpoint_dir: &Path,
) -> Result<(Stage1Generator, Stage1D, TrainState), TrainError> {
    let state = checkpoint::read_state(checkpoint_dir)?;
    let (_, device) = state.config.device.primary().devices();
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

/// Trains Stage-I on `data` (76→64 geometry), writing checkpoints, `metrics.jsonl`, sample
/// sheets and, at the end, the safetensors exports into `out_dir`. When `out_dir` already holds
/// a checkpoint the run resumes from the newest one (its configuration must match `cfg` except
/// for the run length, intervals and retention). Setting `stop` makes the run write a
/// checkpoint after the current step and return with `stopped = true`.
///
/// # Errors
/// Config, data, IO and checkpoint errors; [`TrainError::NonFinite`] when a loss or (at a
/// checkpoint) a weight stops being finite — the last good checkpoint stays on disk.
pub fn train_stage1(
    cfg: &TrainConfig,
    data: &TrainData,
    out_dir: &Path,
    progress: &dyn Progress,
    stop: &AtomicBool,
) -> Result<TrainSummary, TrainError> {
    cfg.validate()?;
    check_geometry(data, Geometry::STAGE1)?;
    let net = cfg.network(data.caption_dim, data.dialogue_width(cfg.variant))?;
    let text_stats =
        (cfg.text_norm == TextNorm::Standardize).then(|| TextStats::of(data, cfg.variant));
    let run = Run {
        cfg,
        data,
        out_dir,
        net,
        stage1: None,
        text_stats,
    };
    run.train(
        |device| Ok(Stage1Generator::init(&net, cfg.variant, device, cfg.seed)),
        progress,
        stop,
    )
}

/// Trains Stage-II (304→256 geometry) on the newest checkpoint of the Stage-I run in
/// `stage1_dir`: Stage-I G (and the recurrent variant's BiLSTM) rebuilt from that run's saved
/// config, loaded, and frozen; Stage-II's own layers fresh. Otherwise as [`train_stage1`].
///
/// # Errors
/// As [`train_stage1`]; [`TrainError::Config`] when the Stage-I run's variant or embedding
/// widths differ from this run's.
pub fn train_stage2(
    cfg: &TrainConfig,
    data: &TrainData,
    stage1_dir: &Path,
    out_dir: &Path,
    progress: &dyn Progress,
    stop: &AtomicBool,
) -> Result<TrainSummary, TrainError> {
    cfg.validate()?;
    check_geometry(data, Geometry::STAGE2)?;
    let s1 = ResolvedConfig::read(stage1_dir)?;
    if s1.stage != Stage1Generator::STAGE {
        return Err(TrainError::Config(format!(
            "stage1: {} is a {} run, not a Stage-I run",
            stage1_dir.display(),
            s1.stage
        )));
    }
    if s1.train.variant != cfg.variant {
        return Err(TrainError::Config(format!(
            "variant: {} but the Stage-I run in {} is {}",
            cfg.variant.name(),
            stage1_dir.display(),
            s1.train.variant.name()
        )));
    }
    if s1.train.text_norm != cfg.text_norm {
        return Err(TrainError::Config(format!(
            "text_norm: {:?} but the Stage-I run in {} used {:?} (its frozen G expects those inputs)",
            cfg.text_norm,
            stage1_dir.display(),
            s1.train.text_norm
        )));
    }
    let widths = (data.caption_dim, data.dialogue_width(cfg.variant));
    let theirs = (s1.network.caption_dim, s1.network.dialogue_dim);
    if widths != theirs {
        return Err(TrainError::Config(format!(
            "the embeddings are (caption, dialogue) = {widths:?} wide, the Stage-I run in {} used {theirs:?}",
            stage1_dir.display()
        )));
    }
    let ckpt = checkpoint::latest(stage1_dir)?.ok_or_else(|| {
        TrainError::Config(format!(
            "stage1: no checkpoint in {}: train Stage-I first",
            stage1_dir.display()
        ))
    })?;
    let s1_state = checkpoint::read_state(&ckpt)?;
    let net = cfg.network2(&s1.network)?;
    let origin = Stage1Origin {
        checkpoint: ckpt.clone(),
        step: s1_state.step,
    };
    let run = Run {
        cfg,
        data,
        out_dir,
        net,
        stage1: Some(origin),
        text_stats: s1.text_stats.clone(),
    };
    run.train(
        |device| {
            let (g1, _) =
                Stage1Generator::init(&s1.network, s1.train.variant, device, s1.train.seed);
            let g1 = checkpoint::load_generator(&ckpt, g1)?;
            Stage2Generator::init(&net, cfg.variant, g1, device, cfg.seed)
        },
        progress,
        stop,
    )
}

/// A batch as the networks see it: assembled, then standardised when the run does that.
fn batch_of(
    data: &TrainData,
    variant: Variant,
    text_stats: Option<&TextStats>,
    indices: &[usize],
    augs: &[Augment],
) -> Result<HostBatch, TrainError> {
    let mut host = assemble(data, variant, indices, augs)?;
    if let Some(stats) = text_stats {
        stats.apply_batch(&mut host);
    }
    Ok(host)
}

fn check_geometry(data: &TrainData, want: Geometry) -> Result<(), TrainError> {
    data.validate()?;
    if data.geometry != want {
        return Err(TrainError::Data(format!(
            "the data is {}→{} px, this stage trains on {}→{}",
            data.geometry.load, data.geometry.crop, want.load, want.crop
        )));
    }
    Ok(())
}

/// One training run of either stage.
struct Run<'a> {
    cfg: &'a TrainConfig,
    data: &'a TrainData,
    out_dir: &'a Path,
    net: ResolvedNetwork,
    stage1: Option<Stage1Origin>,
    text_stats: Option<TextStats>,
}

/// The logged terms of one step.
pub(crate) struct StepLosses {
    pub d_loss: f64,
    pub d_real: f64,
    pub d_wrong: f64,
    pub d_fake: f64,
    pub d_uncond: Option<(f64, f64)>,
    pub g_loss: f64,
    pub g_adv: f64,
    pub kl: f64,
}

impl Run<'_> {
    fn train<G: StageGenerator>(
        &self,
        init: impl Fn(&Device) -> Result<(G, G::D), TrainError>,
        progress: &dyn Progress,
        stop: &AtomicBool,
    ) -> Result<TrainSummary, TrainError> {
        let (cfg, data, out_dir, net) = (self.cfg, self.data, self.out_dir, self.net);
        data.check_variant(cfg.variant)?;
        // A `cuda:N` this machine lacks panics inside tch on first use; fail cleanly first.
        cfg.device.probe()?;
        let replicas = replicas(cfg);
        let n = data.items.len();
        let batch = cfg.batch_size;
        if !batch.is_multiple_of(replicas.len()) || batch / replicas.len() < 2 {
            return Err(TrainError::Config(format!(
                "batch_size: {batch} does not split into {} replicas of at least 2 images",
                replicas.len()
            )));
        }
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
            stage: G::STAGE.into(),
            train: cfg.clone(),
            network: net,
            items: n,
            steps_per_epoch: spe,
            total_steps: total,
            stage1: self.stage1.clone(),
            text_stats: self.text_stats.clone(),
        };
        let json = serde_json::to_vec_pretty(&resolved)
            .map_err(|e| TrainError::Internal(format!("serialising the config: {e}")))?;
        chatpainter_artifacts::write_atomic(out_dir.join(RESOLVED_CONFIG_FILE), &json)?;

        let (device, infer_device) = replicas[0].clone();
        let (mut gnet, mut d) = init(&device)?;
        let (mut opt_g, mut opt_d) = (adam(cfg), adam(cfg));

        checkpoint::remove_partial(out_dir)?;
        let mut resumed_from = None;
        let mut state = match checkpoint::latest(out_dir)? {
            Some(dir) => {
                let st = checkpoint::read_state(&dir)?;
                check_resumable(&dir, &st, cfg, &net, n)?;
                (gnet, d, opt_g, opt_d) = checkpoint::load_tensors(&dir, gnet, d, opt_g, opt_d)?;
                gnet = gnet.after_load();
                tracing::info!(step = st.step, checkpoint = %dir.display(), "resuming {}", G::STAGE);
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
        let sampler = Sampler::new::<G>(cfg, data, &net, self.text_stats.as_ref())?;
        let mut last_checkpoint = checkpoint::latest(out_dir)?;
        let mut last_metrics = None;
        let mut stopped = false;
        progress.start(G::STAGE, total);
        progress.advance(state.step.min(total));
        let devices: Vec<Device> = replicas.iter().map(|(t, _)| t.clone()).collect();
        // Modules for replicas 1.. (their own BatchNorm running state; see `replica_copies`).
        let spares = devices[1..]
            .iter()
            .map(&init)
            .collect::<Result<Vec<_>, _>>()?;

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
                .map(|&i| {
                    Augment::draw(
                        &mut state.data_rng,
                        data.items[i].captions.len(),
                        data.geometry,
                        cfg.flip,
                    )
                })
                .collect();
            let host = batch_of(data, cfg.variant, self.text_stats.as_ref(), &indices, &augs)?;
            let noise = state.noise_rng.normals(batch * net.z_dim);
            let eps: Vec<Vec<f32>> = (0..G::CA_DRAWS)
                .map(|_| state.noise_rng.normals(batch * net.cond_dim))
                .collect();
            let inputs = StepInputs {
                host,
                noise,
                eps,
                variant: cfg.variant,
                net,
                step,
                kl_coeff: cfg.kl_coeff,
            };
            // A backend failure inside the step (LibTorch raises out-of-memory as a panic)
            // becomes an error naming the batch size; the last checkpoint stays intact.
            let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                train_step(
                    gnet,
                    d,
                    &spares,
                    &mut opt_g,
                    &mut opt_d,
                    (lr_g, lr_d),
                    inputs,
                    &devices,
                )
            }));
            let losses;
            (gnet, d, losses) = match stepped {
                Ok(result) => result?,
                Err(payload) => {
                    let message = payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "the backend panicked".into());
                    return Err(TrainError::StepFailed {
                        step,
                        batch_size: batch,
                        message,
                    });
                }
            };

            state.step = step;
            state.next_batch += 1;
            let step_s = t0.elapsed().as_secs_f64();
            let m = StepMetrics {
                step,
                epoch: state.epoch,
                d_loss: losses.d_loss,
                d_real: losses.d_real,
                d_wrong: losses.d_wrong,
                d_fake: losses.d_fake,
                d_uncond_real: losses.d_uncond.map(|u| u.0),
                d_uncond_fake: losses.d_uncond.map(|u| u.1),
                g_loss: losses.g_loss,
                g_adv: losses.g_adv,
                kl: losses.kl,
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
                    d_loss = m.d_loss,
                    g_loss = m.g_loss,
                    kl = m.kl,
                    lr_g,
                    ms = m.step_ms,
                    "{}",
                    G::STAGE
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
            gnet.export(&d, out_dir)?;
        }
        Ok(TrainSummary {
            stage: G::STAGE.into(),
            steps: state.step,
            total_steps: total,
            epoch: state.epoch,
            stopped,
            resumed_from,
            last_checkpoint,
            last_metrics,
            network: net,
            replicas: replicas.len(),
        })
    }
}

/// Refuses to resume from a checkpoint of another configuration or data set.
fn check_resumable(
    dir: &Path,
    st: &TrainState,
    cfg: &TrainConfig,
    net: &ResolvedNetwork,
    n: usize,
) -> Result<(), TrainError> {
    if st.config.resume_key() != cfg.resume_key() || st.network != *net {
        return Err(TrainError::ResumeMismatch {
            checkpoint: dir.to_path_buf(),
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
            checkpoint: dir.to_path_buf(),
            detail: format!(
                "the checkpoint's data order ({} entries) is not a permutation of the {n} images",
                st.permutation.len()
            ),
        });
    }
    Ok(())
}

/// The host-side inputs of one optimiser step.
pub(crate) struct StepInputs {
    pub host: HostBatch,
    pub noise: Vec<f32>,
    /// One `[B, cond_dim]` block per CA draw.
    pub eps: Vec<Vec<f32>>,
    pub variant: Variant,
    pub net: ResolvedNetwork,
    pub step: u64,
    pub kl_coeff: f64,
}

impl StepInputs {
    /// Splits into one shard per replica (contiguous rows), as device tensors.
    fn shards(self, devices: &[Device]) -> Vec<(DeviceBatch, Tensor<2>, Vec<Tensor<2>>)> {
        let n = devices.len();
        let per = self.host.size / n;
        let rows = |v: &[f32], k: usize, w: usize| v[k * per * w..(k + 1) * per * w].to_vec();
        self.host
            .split(n)
            .into_iter()
            .zip(devices)
            .enumerate()
            .map(|(k, (host, dev))| {
                let b = DeviceBatch::new(host, self.variant, &self.net, dev);
                let z = tensor2(
                    rows(&self.noise, k, self.net.z_dim),
                    [per, self.net.z_dim],
                    dev,
                );
                let eps = self
                    .eps
                    .iter()
                    .map(|e| tensor2(rows(e, k, self.net.cond_dim), [per, self.net.cond_dim], dev))
                    .collect();
                (b, z, eps)
            })
            .collect()
    }
}

/// What one replica computed in the D phase, kept for its G phase.
struct ReplicaPass<G: StageGenerator> {
    gnet: G,
    out: GenOutput,
    terms: [f64; 6],
    grads: GradientsParams,
}

/// Per-replica copies of the current weights. Replica 0 is the master itself (it shares the
/// master's BatchNorm running state, so its updates are kept, as torch's `DataParallel` keeps
/// device 0's); the others load the weights into their own spare modules, whose running
/// statistics are discarded. Separate running state also keeps burn's per-thread running-stat
/// merging out of the picture, which would otherwise mix replicas' updates in timing-dependent
/// order.
fn replica_copies<M: Module>(
    master: &M,
    spares: &[M],
    refresh: impl Fn(M) -> M,
) -> Result<Vec<M>, TrainError> {
    let mut out = vec![master.clone()];
    for spare in spares {
        let loaded = spare
            .clone()
            .try_load_record(master.clone().into_record())
            .map_err(|e| TrainError::Internal(format!("replica weights: {e}")))?;
        out.push(refresh(loaded));
    }
    Ok(out)
}

/// Runs `f` on every replica, on one thread each when there are several.
fn on_replicas<I: Send, O: Send>(
    work: Vec<I>,
    devices: &[Device],
    f: impl Fn(I, &Device) -> Result<O, TrainError> + Sync,
) -> Result<Vec<O>, TrainError> {
    if devices.len() == 1 {
        return work.into_iter().map(|w| f(w, &devices[0])).collect();
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = work
            .into_iter()
            .zip(devices)
            .map(|(w, dev)| scope.spawn(move || f(w, dev)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| TrainError::Internal("a replica thread panicked".into()))?
            })
            .collect()
    })
}

/// One D update then one G update over all replicas; returns the updated networks and the
/// logged terms (means over replicas). `spares` holds one (G, D) per replica after the first.
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_step<G: StageGenerator>(
    gnet: G,
    d: G::D,
    spares: &[(G, G::D)],
    opt_g: &mut ModuleOptimizer,
    opt_d: &mut ModuleOptimizer,
    (lr_g, lr_d): (f64, f64),
    inputs: StepInputs,
    devices: &[Device],
) -> Result<(G, G::D, StepLosses), TrainError> {
    let (step, kl_coeff) = (inputs.step, inputs.kl_coeff);
    let n = devices.len();
    let scale = 1.0 / n as f64;
    let fork = |m: G, dev: &Device| if n == 1 { m } else { m.fork(dev) };
    let fork_d = |m: G::D, dev: &Device| if n == 1 { m } else { m.fork(dev) };
    let scaled = |t: Tensor<1>| if n == 1 { t } else { t.mul_scalar(scale) };
    let spare_g: Vec<G> = spares.iter().map(|(g, _)| g.clone()).collect();
    let spare_d: Vec<G::D> = spares.iter().map(|(_, d)| d.clone()).collect();
    let gs = replica_copies(&gnet, &spare_g, G::after_load)?;
    let ds = replica_copies(&d, &spare_d, |m| m)?;
    let work: Vec<_> = gs.into_iter().zip(ds).zip(inputs.shards(devices)).collect();
    // D phase: per replica, G forward, D loss on real / wrong / detached fake.
    let passes = on_replicas(work, devices, |((g_r, d_r), (b, z, eps)), dev| {
        let (g_r, d_r) = (fork(g_r, dev), fork_d(d_r, dev));
        let out = g_r.generate(b.captions, &b.dialogue, z, eps)?;
        let dl = discriminator_loss(&d_r, b.real, out.fake.clone(), out.mu.clone())?;
        let uncond = |t: &Option<Tensor<1>>| t.as_ref().map_or(f64::NAN, scalar);
        let terms = [
            scalar(&dl.total),
            scalar(&dl.real),
            scalar(&dl.wrong),
            scalar(&dl.fake),
            uncond(&dl.uncond_real),
            uncond(&dl.uncond_fake),
        ];
        let grads = GradientsParams::from_grads(scaled(dl.total).backward(), &d_r);
        Ok(ReplicaPass {
            gnet: g_r,
            out,
            terms,
            grads,
        })
    })?;
    let mean = |k: usize| passes.iter().map(|p| p.terms[k]).sum::<f64>() * scale;
    let (d_loss, d_real, d_wrong, d_fake) = (mean(0), mean(1), mean(2), mean(3));
    let d_uncond = passes[0].terms[4].is_finite().then(|| (mean(4), mean(5)));
    let mut checks = vec![
        ("d_loss", d_loss),
        ("d_real", d_real),
        ("d_wrong", d_wrong),
        ("d_fake", d_fake),
    ];
    if let Some((ur, uf)) = d_uncond {
        checks.extend([("d_uncond_real", ur), ("d_uncond_fake", uf)]);
    }
    guard(step, &checks)?;
    let mut grads = Vec::with_capacity(n);
    let mut passes = passes;
    for (p, dev) in passes.iter_mut().zip(devices) {
        grads.push((
            std::mem::replace(&mut p.grads, GradientsParams::new()),
            dev.clone(),
        ));
    }
    let d = step_replicas(opt_d, lr_d, d, grads)?;
    // G phase: the same fakes through the updated D (no new G forward).
    let ds = replica_copies(&d, &spare_d, |m| m)?;
    let work: Vec<_> = passes.into_iter().zip(ds).collect();
    let results = on_replicas(work, devices, |(p, d_r), dev| {
        let d_r = fork_d(d_r, dev);
        let gl = generator_loss(&d_r, p.out.fake, p.out.mu, p.out.logvar, kl_coeff);
        let terms = [scalar(&gl.total), scalar(&gl.adversarial), scalar(&gl.kl)];
        let grads = GradientsParams::from_grads(scaled(gl.total).backward(), &p.gnet);
        Ok((grads, terms))
    })?;
    let gmean = |k: usize| results.iter().map(|r| r.1[k]).sum::<f64>() * scale;
    let (g_loss, g_adv, kl) = (gmean(0), gmean(1), gmean(2));
    guard(step, &[("g_loss", g_loss), ("g_adv", g_adv), ("kl", kl)])?;
    let grads = results
        .into_iter()
        .zip(devices)
        .map(|(r, dev)| (r.0, dev.clone()))
        .collect();
    let gnet = step_replicas(opt_g, lr_g, gnet, grads)?;
    if n > 1 {
        // The G phase ran D forward on replica 0's thread: fold that update too, before the
        // next step's threads read the running statistics.
        let _ = d.valid();
    }
    Ok((
        gnet,
        d,
        StepLosses {
            d_loss,
            d_real,
            d_wrong,
            d_fake,
            d_uncond,
            g_loss,
            g_adv,
            kl,
        },
    ))
}

/// One optimiser step from the replicas' gradients: `step` for one replica, else `step_multi`
/// (which sums them; the losses were scaled by 1/N, so the sum is the mean), then the running
/// statistics replica 0 updated on its thread are folded into the module.
fn step_replicas<M: Module>(
    opt: &mut ModuleOptimizer,
    lr: f64,
    module: M,
    mut grads: Vec<(GradientsParams, Device)>,
) -> Result<M, TrainError> {
    if grads.len() == 1 {
        let (g, _) = grads
            .pop()
            .ok_or_else(|| TrainError::Internal("no replica".into()))?;
        return Ok(opt.step(lr, module, g));
    }
    let module = opt.step_multi(lr, module, MultiGradientsParams { grads });
    let _ = module.valid();
    Ok(module)
}

/// Refuses to checkpoint non-finite weights (the previous checkpoint stays the last good one).
fn save_checked<G: StageGenerator>(
    out_dir: &Path,
    state: &TrainState,
    gnet: &G,
    d: &G::D,
    opt_g: &ModuleOptimizer,
    opt_d: &ModuleOptimizer,
    cfg: &TrainConfig,
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
    host: HostBatch,
    noise: Vec<f32>,
    eps: Vec<Vec<f32>>,
    variant: Variant,
    net: ResolvedNetwork,
}

impl Sampler {
    fn new<G: StageGenerator>(
        cfg: &TrainConfig,
        data: &TrainData,
        net: &ResolvedNetwork,
        text_stats: Option<&TextStats>,
    ) -> Result<Self, TrainError> {
        let count = cfg.sample_count.clamp(1, data.items.len());
        let indices: Vec<usize> = (0..count).collect();
        let augs = vec![Augment::center(data.geometry); count];
        let host = batch_of(data, cfg.variant, text_stats, &indices, &augs)?;
        let mut rng = Xoshiro256::new(cfg.seed, STREAM_SAMPLES);
        Ok(Self {
            count,
            real: host.images.clone(),
            noise: rng.normals(count * net.z_dim),
            eps: (0..G::CA_DRAWS)
                .map(|_| rng.normals(count * net.cond_dim))
                .collect(),
            host,
            variant: cfg.variant,
            net: *net,
        })
    }

    /// G on the fixed inputs, its BatchNorms normalising with the sheet's own batch statistics
    /// (as the reference, which draws sheets in train mode; the running statistics are neither
    /// used nor changed): real | (Stage-I image, in Stage-II) | generated.
    fn write<G: StageGenerator>(
        &self,
        gnet: &G,
        out_dir: &Path,
        step: u64,
        device: &Device,
    ) -> Result<(), TrainError> {
        let g = gnet.valid();
        let n = self.count;
        let b = DeviceBatch::new(self.host.clone(), self.variant, &self.net, device);
        let noise = tensor2(self.noise.clone(), [n, self.net.z_dim], device);
        let eps = self
            .eps
            .iter()
            .map(|e| tensor2(e.clone(), [n, self.net.cond_dim], device))
            .collect();
        // Batch statistics, as the reference's train-mode sheets (running statistics untouched).
        let out = chatpainter_nn::blocks::with_batch_statistics(|| {
            g.generate(b.captions, &b.dialogue, noise, eps)
        })?;
        let host = |t: Tensor<4>| -> (usize, Vec<f32>) {
            (t.dims()[3], t.into_data().iter::<f32>().collect())
        };
        let crop = self.host.crop;
        let mut columns = vec![(crop, self.real.clone())];
        if let Some(s1) = out.stage1_img {
            columns.push(host(s1));
        }
        columns.push(host(out.fake));
        let views: Vec<SheetColumn<'_>> = columns
            .iter()
            .map(|(side, values)| SheetColumn {
                side: *side,
                values,
            })
            .collect();
        let png = sample_sheet_png(&views, n)?;
        let path = out_dir
            .join(SAMPLES_DIR)
            .join(format!("{}.png", checkpoint::dir_name(step)));
        chatpainter_artifacts::write_atomic(path, &png)?;
        Ok(())
    }
}

/// `(training device with autodiff, inference device)` per data-parallel replica.
fn replicas(cfg: &TrainConfig) -> Vec<(Device, Device)> {
    cfg.device.devices()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;
    use crate::export::tensor_values;

    /// Data-parallel equivalence (issue 4 §3). BatchNorm runs per replica and wrong pairs are
    /// formed within a shard, so N replicas equal one replica on the whole batch exactly when
    /// every shard looks like the whole batch: here all rows of the batch are the same sample
    /// (image, caption, turns, noise, CA eps). Then 2 replicas on CPU and 1 replica must reach
    /// the same weights up to float summation order.
    #[test]
    fn two_cpu_replicas_match_one_on_a_batch_of_equal_rows() {
        let mut cfg = TrainConfig::smoke(Variant::ChatpainterRecurrent);
        cfg.network.gf_dim = Some(4);
        cfg.network.df_dim = Some(4);
        cfg.network.cond_dim = Some(8);
        cfg.network.rnn_hidden = Some(4);
        let net = cfg.network(6, 5).expect("network");
        let (b, crop) = (4, 64);
        let mut rng = Xoshiro256::new(9, 0);
        let row = |n: usize, rng: &mut Xoshiro256| rng.normals(n);
        let (img, cap, turns) = (
            row(3 * crop * crop, &mut rng),
            row(6, &mut rng),
            row(2 * 5, &mut rng),
        );
        let (z, e) = (row(net.z_dim, &mut rng), row(net.cond_dim, &mut rng));
        let inputs = || StepInputs {
            host: HostBatch {
                size: b,
                crop,
                images: img.repeat(b),
                captions: cap.repeat(b),
                dialogue: turns.repeat(b),
                lengths: vec![2; b],
            },
            noise: z.repeat(b),
            eps: vec![e.repeat(b)],
            variant: cfg.variant,
            net,
            step: 1,
            kl_coeff: cfg.kl_coeff,
        };
        let device = Device::flex().autodiff();
        let run = |devices: &[Device]| {
            let (g, d) = Stage1Generator::init(&net, cfg.variant, &device, 3);
            // Plain SGD: Adam divides by the gradient's own scale, so it would hide a sum taken
            // for a mean (and turns rounding noise in near-zero gradients into lr-sized steps).
            let sgd = || burn::optim::SgdConfig::new().init();
            let (mut og, mut od) = (sgd(), sgd());
            let (mut g, mut d) = (g, d);
            let mut losses = Vec::new();
            for _ in 0..2 {
                let l;
                let spares: Vec<_> = devices[1..]
                    .iter()
                    .map(|dev| Stage1Generator::init(&net, cfg.variant, dev, 4))
                    .collect();
                (g, d, l) = train_step(
                    g,
                    d,
                    &spares,
                    &mut og,
                    &mut od,
                    (0.05, 0.05),
                    inputs(),
                    devices,
                )
                .expect("step");
                losses.push((l.d_loss, l.g_loss));
            }
            (tensor_values(&g.valid()), tensor_values(&d.valid()), losses)
        };
        let (g1, d1, l1) = run(std::slice::from_ref(&device));
        let (g2, d2, l2) = run(&[device.clone(), device.clone()]);
        for ((a, b), (c, d)) in l1.iter().zip(&l2) {
            assert!(
                (a - c).abs() < 1e-5 && (b - d).abs() < 1e-5,
                "{l1:?} vs {l2:?}"
            );
        }
        let mut compared = 0;
        for (x, y) in g1.iter().chain(&d1).zip(g2.iter().chain(&d2)) {
            assert_eq!(x.path, y.path);
            // Running variances use the unbiased batch variance, n/(n−1) with n = images·H·W of
            // the replica: 2 images instead of 4 differ by up to 1/(n−1) − 1/(2n−1) ≈ 0.8 % at
            // the 1×1… layers' smallest n; weights and means must agree to float rounding.
            let tol = if x.path.ends_with("running_var") {
                1e-2
            } else {
                1e-5
            };
            for (p, q) in x.values.iter().zip(&y.values) {
                assert!(
                    (p - q).abs() <= tol * (1.0 + p.abs()),
                    "{}: {p} vs {q}",
                    x.path
                );
                compared += 1;
            }
        }
        assert!(compared > 1000, "{compared}");
        // The weights moved (the comparison is not of two untouched copies).
        let (g0, _) = Stage1Generator::init(&net, cfg.variant, &device, 3);
        assert_ne!(tensor_values(&g0)[0].values, g1[0].values);
    }
}
