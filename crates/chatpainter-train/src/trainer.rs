//! The training loop of both stages (StackGAN order), generic over [`StageGenerator`]: per batch
//! fresh noise, one G forward, one D update on real / wrong (shift-by-one) / detached fake with
//! `cond = mu.detach()`, then one G update (adversarial loss plus λ·KL) through the just-updated
//! D; Adam with explicit ε; both learning rates halved every `lr_decay_epochs` epochs.
//! Checkpoints, exact resume, metrics, sample sheets, the NaN guard and data-parallel ranks
//! are wired here once; [`train_stage1`] and [`train_stage2`] only build their networks.
//!
//! The loop's parts have their own modules: the step itself and its named losses
//! ([`crate::step`]), the schedule (`schedule.rs`: steps, epochs, learning rates, the cadence of
//! logs, samples and checkpoints), fresh start or resume and checked checkpoint writes
//! (`resume.rs`), sample sheets (`sampling.rs`) and what the loop does across ranks
//! (`data_parallel.rs`: rank 0's start shared, gradients and losses averaged); a session
//! (`Session`) opens, steps and summarises.
//!
//! Data-parallel ranks ([`World`], one process per device, as PyTorch DDP):
//! - rank 0 picks the checkpoint (or initialises) and sends its whole state — weights, BatchNorm
//!   statistics, optimiser moments, data order, RNG streams — to the others, so every replica
//!   starts identical;
//! - every rank walks the same global order and draws the same random numbers for the whole
//!   global batch (crops, flips, captions, noise, CA eps) and keeps its contiguous share (rank r
//!   of W takes rows `r·B/W .. (r+1)·B/W`), so a step sees the same samples whatever W is and
//!   the data cursor counts global batches (a run may resume with another world size);
//! - each rank's losses are means over its share; gradients of D, then of G (with the dialogue
//!   encoder), are averaged over the ranks before each optimiser step, so replicas stay
//!   identical without further broadcasts;
//! - BatchNorm normalises with each rank's own batch statistics (DDP's default, no synchronised
//!   BN); rank 0's running statistics are the ones saved;
//! - wrong pairs (image i with the condition of i+1) are formed within a rank's share: B−W pairs
//!   per global batch instead of B−1 (forming them across ranks would need the neighbour's
//!   condition, computed by the neighbour's generator, for one row);
//! - only rank 0 writes (config, metrics, samples, checkpoints, exports).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::optim::{AdamConfig, ModuleOptimizer};
use burn::tensor::Device;
use chatpainter_artifacts::{OutputFile, Progress};
use chatpainter_nn::Stage1D;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::checkpoint::{self, TrainState};
use crate::config::TrainConfig;
use crate::data_parallel::{self, Scratch};
use crate::exports::Exported;
use crate::loader::{Cursor, Plan, Prefetcher, Prepared, WINDOW_BYTES};
use crate::metrics::{METRICS_FILE, MetricsWriter, StepMetrics};
use crate::objects::ObjectTargets;
use crate::ranks::World;
use crate::resume::{self, Start, save_checked};
use crate::sampling::Sampler;
use crate::schedule::Schedule;
pub use crate::schedule::lr_halvings;
use crate::source::TrainSource;
use crate::step::{Optimizers, StepInputs, StepLosses, Stepped, train_step};
use crate::text_norm::TextNorm;
use chatpainter_model::ResolvedNetwork;
use chatpainter_model::TextStats;
use chatpainter_model::dataset::Geometry;
use chatpainter_model::networks::{Stage1Generator, Stage2Generator, StageGenerator};
use chatpainter_model::run::{RunConfig, RunTraining};

/// RNG stream ids derived from the seed: the data order and draws, G's noise and CA eps (both
/// checkpointed), and the sample sheets' fixed inputs.
pub(crate) const STREAM_DATA: u64 = 1;
pub(crate) const STREAM_NOISE: u64 = 2;
pub(crate) const STREAM_SAMPLES: u64 = 3;

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
    /// The fields that rebuild this run's networks: what `chatpainter_model::run::RunConfig`
    /// reads from this file.
    pub fn run_config(&self) -> RunConfig {
        RunConfig {
            stage: self.stage.clone(),
            train: RunTraining {
                variant: self.train.variant,
                seed: self.train.seed,
            },
            network: self.network,
            text_stats: self.text_stats.clone(),
        }
    }

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
    /// Data-parallel ranks of this session.
    #[serde(alias = "replicas")]
    pub ranks: usize,
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
        // The sample sheets belong to the run too: listed, they go with it and the report
        // shows only these.
        let samples = out_dir.join(crate::metrics::SAMPLES_DIR);
        if samples.is_dir() {
            let mut sheets: Vec<String> = std::fs::read_dir(&samples)
                .map_err(|e| TrainError::io(&samples, e))?
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".png") && !n.starts_with('.'))
                .collect();
            sheets.sort();
            rel.extend(
                sheets
                    .into_iter()
                    .map(|n| format!("{}/{n}", crate::metrics::SAMPLES_DIR)),
            );
        }
        // `metrics.jsonl` holds timings: a report, so an identical retrain leaves Stage-II current.
        rel.iter()
            .map(|r| -> Result<OutputFile, TrainError> {
                let file = OutputFile::describe(out_dir, r, None)?;
                Ok(if r == METRICS_FILE {
                    file.as_report()
                } else {
                    file
                })
            })
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

/// Loads a Stage-I checkpoint's networks for inference (on the config's inference device), with
/// the state that describes them.
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

/// Trains Stage-I on `data` (76→64 geometry), writing checkpoints, `metrics.jsonl`, sample
/// sheets and, at the end, the safetensors exports into `out_dir` (rank 0 of `world` writes,
/// every rank trains). When `out_dir` already holds a checkpoint the run resumes from the newest
/// intact one (its configuration must match `cfg` except
/// for the run length, intervals and retention). Setting `stop` makes the run write a
/// checkpoint after the current step and return with `stopped = true`.
///
/// # Errors
/// Config, data, IO and checkpoint errors; [`TrainError::NonFinite`] when a loss or (at a
/// checkpoint) a weight stops being finite — the last good checkpoint stays on disk.
pub fn train_stage1(
    cfg: &TrainConfig,
    data: &dyn TrainSource,
    out_dir: &Path,
    progress: &dyn Progress,
    stop: &AtomicBool,
    world: &World,
) -> Result<TrainSummary, TrainError> {
    cfg.validate()?;
    check_geometry(data, Geometry::STAGE1)?;
    let mut net = cfg.network(data.widths().caption, data.dialogue_width(cfg.variant))?;
    if cfg.object_loss > 0.0 {
        net.object_classes = object_classes(data)?;
    }
    let text_stats = (cfg.text_norm == TextNorm::Standardize)
        .then(|| crate::text_norm::stats_of(data, cfg.variant))
        .transpose()?;
    let run = Run {
        cfg,
        data,
        out_dir,
        net,
        stage1: None,
        text_stats,
        world,
    };
    run.train(
        |device| Ok(Stage1Generator::init(&net, cfg.variant, device, cfg.seed)),
        progress,
        stop,
    )
}

/// The object head's width: the categories of the data's `objects.parquet`.
fn object_classes(data: &dyn TrainSource) -> Result<usize, TrainError> {
    match data.objects().map(ObjectTargets::classes) {
        Some(n) if n > 0 => Ok(n),
        Some(_) => Err(TrainError::Config(
            "object_loss: the ingest stage's objects.parquet lists no category".into(),
        )),
        None => Err(TrainError::Config(
            "object_loss: the training data has no object boxes; list the COCO instance files \
             (`instances = \"annotations/instances_train2014.json\"`) in the pipeline's \
             [[ingest.coco]] entries so that ingest writes objects.parquet"
                .into(),
        )),
    }
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
    data: &dyn TrainSource,
    stage1_dir: &Path,
    out_dir: &Path,
    progress: &dyn Progress,
    stop: &AtomicBool,
    world: &World,
) -> Result<TrainSummary, TrainError> {
    cfg.validate()?;
    if cfg.object_loss > 0.0 {
        return Err(TrainError::Config(
            "object_loss: Stage-II's discriminator has no object head (the switch is Stage-I's)"
                .into(),
        ));
    }
    check_geometry(data, Geometry::STAGE2)?;
    let s1 = ResolvedConfig::read(stage1_dir)?;
    let s1_run = s1.run_config();
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
    let widths = (data.widths().caption, data.dialogue_width(cfg.variant));
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
        world,
    };
    run.train(
        |device| {
            let g1 = checkpoint::load_generator(&ckpt, s1_run.stage1_generator(device))?;
            Ok(Stage2Generator::init(
                &net,
                cfg.variant,
                g1,
                device,
                cfg.seed,
            )?)
        },
        progress,
        stop,
    )
}

fn check_geometry(data: &dyn TrainSource, want: Geometry) -> Result<(), TrainError> {
    data.validate()?;
    let have = data.geometry();
    if have != want {
        return Err(TrainError::Data(format!(
            "the data is {}→{} px, this stage trains on {}→{}",
            have.load, have.crop, want.load, want.crop
        )));
    }
    Ok(())
}

/// One training run of either stage.
pub(crate) struct Run<'a> {
    pub cfg: &'a TrainConfig,
    pub data: &'a dyn TrainSource,
    pub out_dir: &'a Path,
    pub net: ResolvedNetwork,
    pub stage1: Option<Stage1Origin>,
    pub text_stats: Option<TextStats>,
    pub world: &'a World,
}

impl Run<'_> {
    fn train<G: Exported>(
        &self,
        init: impl Fn(&Device) -> Result<(G, G::D), TrainError>,
        progress: &dyn Progress,
        stop: &AtomicBool,
    ) -> Result<TrainSummary, TrainError> {
        let (mut session, gnet, d) = Session::open(self, init)?;
        let total = session.schedule.total;
        progress.start(G::STAGE, total);
        progress.advance(session.state.step.min(total));
        let (gnet, d) = session.run_loop(gnet, d, progress, stop)?;
        progress.finish();
        if self.world.is_root() && !session.stopped && session.state.step >= total {
            // Final weights with the reference names.
            gnet.export(&d, self.out_dir)?;
        }
        Ok(session.summary::<G>())
    }

    /// `config.json`: the configuration this run actually uses.
    fn write_resolved_config<G: Exported>(
        &self,
        steps_per_epoch: u64,
        total_steps: u64,
    ) -> Result<(), TrainError> {
        std::fs::create_dir_all(self.out_dir).map_err(|e| TrainError::io(self.out_dir, e))?;
        let resolved = ResolvedConfig {
            stage: G::STAGE.into(),
            train: self.cfg.clone(),
            network: self.net,
            items: self.data.len(),
            steps_per_epoch,
            total_steps,
            stage1: self.stage1.clone(),
            text_stats: self.text_stats.clone(),
        };
        let json = serde_json::to_vec_pretty(&resolved)
            .map_err(|e| TrainError::Internal(format!("serialising the config: {e}")))?;
        chatpainter_artifacts::write_atomic(self.out_dir.join(RESOLVED_CONFIG_FILE), &json)?;
        Ok(())
    }
}

/// What one session of a run (this process, this rank) carries from step to step.
struct Session<'r> {
    run: &'r Run<'r>,
    schedule: Schedule,
    /// Where this rank trains, and where sample sheets are drawn.
    device: Device,
    infer_device: Device,
    opt_g: ModuleOptimizer,
    opt_d: ModuleOptimizer,
    /// The loop state a checkpoint saves; it counts the batches steps consumed.
    state: TrainState,
    /// The data order `state.permutation` copies, shared with the prefetcher's cursors.
    permutation: Arc<Vec<u32>>,
    resumed_from: Option<u64>,
    /// Rank 0's writers; the other ranks have none.
    metrics: Option<MetricsWriter>,
    sampler: Option<Sampler>,
    last_checkpoint: Option<PathBuf>,
    last_metrics: Option<StepMetrics>,
    stopped: bool,
    /// Rank 0's state as the other ranks loaded it (read lazily): kept for the whole session.
    _scratch: Option<Scratch>,
}

impl<'r> Session<'r> {
    /// Checks the data and device, writes `config.json` (rank 0), builds the networks with
    /// `init`, starts them fresh or from the newest intact checkpoint (rank 0's start on every
    /// rank) and opens rank 0's writers.
    fn open<G: Exported>(
        run: &'r Run<'r>,
        init: impl Fn(&Device) -> Result<(G, G::D), TrainError>,
    ) -> Result<(Self, G, G::D), TrainError> {
        let (cfg, data, world) = (run.cfg, run.data, run.world);
        data.check_variant(cfg.variant)?;
        let choice = cfg.device.for_local_rank(world.local_rank());
        // A `cuda:N` this machine lacks panics inside tch on first use; fail cleanly first.
        choice.probe()?;
        let schedule = Schedule::new(cfg, data.len(), world)?;
        let root = world.is_root();
        if root {
            run.write_resolved_config::<G>(schedule.steps_per_epoch, schedule.total)?;
        }
        let (device, infer_device) = choice.devices();
        let (gnet, d) = init(&device)?;
        let start = resume::start(run, gnet, d)?;
        let (start, scratch) = data_parallel::share_start(world, start)?;
        let Start {
            gnet,
            d,
            opt_g,
            opt_d,
            mut state,
            resumed_from,
        } = start;
        state.config = cfg.clone();
        state.world_size = world.size();
        let metrics = root
            .then(|| MetricsWriter::open(run.out_dir, state.step))
            .transpose()?;
        let sampler = root
            .then(|| Sampler::new::<G>(cfg, data, &run.net, run.text_stats.as_ref()))
            .transpose()?;
        let last_checkpoint = if root {
            checkpoint::latest(run.out_dir)?
        } else {
            None
        };
        let permutation = Arc::new(std::mem::take(&mut state.permutation));
        state.permutation = permutation.as_ref().clone();
        let session = Self {
            run,
            schedule,
            device,
            infer_device,
            opt_g,
            opt_d,
            state,
            permutation,
            resumed_from,
            metrics,
            sampler,
            last_checkpoint,
            last_metrics: None,
            stopped: false,
            _scratch: scratch,
        };
        Ok((session, gnet, d))
    }

    /// Steps until the step limit or a stop, with the batches prepared on a background thread.
    fn run_loop<G: Exported>(
        &mut self,
        gnet: G,
        d: G::D,
        progress: &dyn Progress,
        stop: &AtomicBool,
    ) -> Result<(G, G::D), TrainError> {
        let (run, total) = (self.run, self.schedule.total);
        let plan = Plan {
            source: run.data,
            variant: run.cfg.variant,
            text_stats: run.text_stats.as_ref(),
            batch: self.schedule.batch,
            rows: self.schedule.rows.clone(),
            steps_per_epoch: self.schedule.steps_per_epoch,
            flip: run.cfg.flip,
            z_dim: run.net.z_dim,
            cond_dim: run.net.cond_dim,
            ca_draws: G::CA_DRAWS,
            window_bytes: WINDOW_BYTES,
            objects: (run.cfg.object_loss > 0.0)
                .then(|| run.data.objects())
                .flatten(),
        };
        let cursor = Cursor {
            epoch: self.state.epoch,
            next_batch: self.state.next_batch,
            permutation: self.permutation.clone(),
            data_rng: self.state.data_rng,
            noise_rng: self.state.noise_rng,
        };
        let remaining = total.saturating_sub(self.state.step);
        std::thread::scope(|scope| -> Result<(G, G::D), TrainError> {
            let (mut gnet, mut d) = (gnet, d);
            let batches = Prefetcher::spawn(scope, plan, cursor, remaining);
            while self.state.step < total {
                let t0 = Instant::now();
                let (lrs, inputs) = self.adopt(batches.next()?);
                let stepped = self.guarded_step(gnet, d, lrs, inputs)?;
                (gnet, d) = (stepped.gnet, stepped.d);
                self.state.step += 1;
                self.record::<G>(
                    &stepped.losses,
                    lrs,
                    t0.elapsed().as_secs_f64(),
                    stepped.sync_s,
                )?;
                if self.after_step(&gnet, &d, progress, stop)? {
                    break;
                }
            }
            Ok((gnet, d))
        })
    }

    /// Adopts the cursor after `prepared` (a checkpoint counts the batches steps used) and
    /// returns the next step's learning rates `(lr_g, lr_d)` and inputs.
    fn adopt(&mut self, prepared: Prepared) -> ((f64, f64), StepInputs) {
        let state = &mut self.state;
        state.epoch = prepared.epoch;
        state.next_batch = prepared.after.next_batch;
        state.data_rng = prepared.after.data_rng;
        state.noise_rng = prepared.after.noise_rng;
        if !Arc::ptr_eq(&self.permutation, &prepared.after.permutation) {
            self.permutation = prepared.after.permutation.clone();
            state.permutation = self.permutation.as_ref().clone();
        }
        state.lr_halvings = self.schedule.lr_halvings(state.epoch);
        let cfg = self.run.cfg;
        let inputs = StepInputs {
            host: prepared.host,
            noise: prepared.noise,
            eps: prepared.eps,
            variant: cfg.variant,
            net: self.run.net,
            step: state.step + 1,
            kl_coeff: cfg.kl_coeff,
            precision: cfg.precision,
            objects: prepared.objects.map(|targets| (cfg.object_loss, targets)),
        };
        (self.schedule.learning_rates(state.lr_halvings), inputs)
    }

    /// [`train_step`]; a backend failure inside it (LibTorch raises out-of-memory as a panic)
    /// becomes an error naming the batch size; the last checkpoint stays intact.
    fn guarded_step<G: Exported>(
        &mut self,
        gnet: G,
        d: G::D,
        (lr_g, lr_d): (f64, f64),
        inputs: StepInputs,
    ) -> Result<Stepped<G>, TrainError> {
        let step = inputs.step;
        let opt = Optimizers {
            g: &mut self.opt_g,
            d: &mut self.opt_d,
            lr_g,
            lr_d,
        };
        let (device, world) = (&self.device, self.run.world);
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            train_step(gnet, d, opt, inputs, device, world)
        }));
        stepped.unwrap_or_else(|payload| {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "the backend panicked".into());
            Err(TrainError::StepFailed {
                step,
                batch_size: self.schedule.batch,
                message,
            })
        })
    }

    /// The finished step's line of `metrics.jsonl` (rank 0 writes it) and, at the log interval,
    /// of the log.
    fn record<G: Exported>(
        &mut self,
        losses: &StepLosses,
        (lr_g, lr_d): (f64, f64),
        step_s: f64,
        sync_s: f64,
    ) -> Result<(), TrainError> {
        let (step, ranks) = (self.state.step, self.run.world.size());
        let (dl, gl) = (losses.d, losses.g);
        let m = StepMetrics {
            step,
            epoch: self.state.epoch,
            d_loss: dl.total,
            d_real: dl.real,
            d_wrong: dl.wrong,
            d_fake: dl.fake,
            d_uncond_real: dl.uncond.map(|u| u.real),
            d_uncond_fake: dl.uncond.map(|u| u.fake),
            g_loss: gl.total,
            g_adv: gl.adversarial,
            kl: gl.kl,
            lr_g,
            lr_d,
            step_ms: step_s * 1e3,
            images_per_s: self.schedule.batch as f64 / step_s.max(1e-9),
            sync_ms: (ranks > 1).then_some(sync_s * 1e3),
            d_object: dl.object,
            g_object: gl.object,
            ca_mu_abs: Some(gl.ca.mu_abs),
            ca_sigma: Some(gl.ca.sigma),
            ca_caption_rms: Some(gl.ca.caption_rms),
            ca_dialogue_rms: gl.ca.dialogue_rms,
        };
        if let Some(writer) = self.metrics.as_mut() {
            writer.append(&m)?;
        }
        if self.run.world.is_root() && self.schedule.logs(step) {
            tracing::info!(
                step,
                epoch = m.epoch,
                d_loss = m.d_loss,
                g_loss = m.g_loss,
                kl = m.kl,
                lr_g,
                ms = m.step_ms,
                "{}",
                G::STAGE
            );
        }
        self.last_metrics = Some(m);
        Ok(())
    }

    /// The sample sheet, progress, checkpoint and stop flag after a step; true when the session
    /// leaves (stopped before the step limit).
    fn after_step<G: Exported>(
        &mut self,
        gnet: &G,
        d: &G::D,
        progress: &dyn Progress,
        stop: &AtomicBool,
    ) -> Result<bool, TrainError> {
        let (run, step) = (self.run, self.state.step);
        if let Some(sampler) = &self.sampler
            && self.schedule.samples(step)
        {
            sampler.write(gnet, run.out_dir, step, &self.infer_device)?;
        }
        progress.advance(1);
        // Every rank must leave at the same step: a stop asked of any rank stops them all.
        let stop_now = run.world.any(stop.load(Ordering::SeqCst));
        if run.world.is_root() && self.schedule.checkpoints(step, stop_now) {
            let (state, opt_g, opt_d) = (&self.state, &self.opt_g, &self.opt_d);
            let saved = save_checked(run.out_dir, state, gnet, d, opt_g, opt_d, run.cfg)?;
            self.last_checkpoint = Some(saved);
        }
        if stop_now && step < self.schedule.total {
            tracing::info!(step, "stop requested: checkpoint written, leaving");
            self.stopped = true;
        }
        Ok(self.stopped)
    }

    fn summary<G: Exported>(self) -> TrainSummary {
        TrainSummary {
            stage: G::STAGE.into(),
            steps: self.state.step,
            total_steps: self.schedule.total,
            epoch: self.state.epoch,
            stopped: self.stopped,
            resumed_from: self.resumed_from,
            last_checkpoint: self.last_checkpoint,
            last_metrics: self.last_metrics,
            network: self.run.net,
            ranks: self.run.world.size(),
        }
    }
}

#[cfg(all(test, feature = "mpi"))]
mod tests {
    use super::*;
    use crate::config::TrainConfig;
    use crate::precision::Precision;
    use burn::module::Module;
    use chatpainter_artifacts::Xoshiro256;
    use chatpainter_artifacts::launch::mpirun;
    use chatpainter_model::Variant;
    use chatpainter_model::dataset::HostBatch;
    use chatpainter_model::export::tensor_values;

    const TEST: &str = "trainer::tests::two_mpi_ranks_equal_one_rank";

    /// Data-parallel equivalence over real MPI ranks. BatchNorm runs per rank and wrong pairs
    /// are formed within a rank's share, so W ranks equal one rank on the whole batch exactly
    /// when every share looks like the whole batch: here all rows of the global batch are one
    /// sample (image, caption, turns, noise, CA eps). Each rank runs k steps alone on the global
    /// batch and k steps as one of 2 ranks on its share; weights and losses must agree to
    /// float rounding, Stage-I (recurrent: the dialogue encoder's gradients are averaged too)
    /// and Stage-II, and both ranks must hold the same weights afterwards.
    ///
    /// Run by `cargo test` as a launcher: it starts itself under `mpirun -n 2`.
    #[test]
    fn two_mpi_ranks_equal_one_rank() {
        if !World::launched() {
            let exe = std::env::current_exe().expect("test binary");
            let out = mpirun(2, None)
                .arg(exe)
                .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
                .output()
                .expect("mpirun (install openmpi-bin)");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "mpirun -n 2 failed:\n{text}");
            assert_eq!(text.matches("ranks agree").count(), 4, "{text}");
            return;
        }
        let world = World::from_launcher().expect("MPI");
        assert_eq!(world.size(), 2);
        let device = Device::flex().autodiff();
        let mut cfg = TrainConfig::smoke(Variant::ChatpainterRecurrent);
        cfg.network.gf_dim = Some(4);
        cfg.network.df_dim = Some(4);
        cfg.network.cond_dim = Some(8);
        cfg.network.rnn_hidden = Some(4);
        let net1 = cfg.network(6, 5).expect("network");
        let stage1 = |seed| Stage1Generator::init(&net1, cfg.variant, &device, seed);
        compare(&world, "stage1", &net1, 64, cfg.variant, true, &stage1);
        let net2 = cfg.network2(&net1).expect("stage2 network");
        let stage2 = |seed| {
            let (g1, _) = Stage1Generator::init(&net1, cfg.variant, &device, 3);
            Stage2Generator::init(&net2, cfg.variant, g1, &device, seed).expect("stage2")
        };
        // Stage-II is compared with the global batch on the first step's losses only: one rank
        // alone on a batch of 4 and on a batch of 2 identical rows (no MPI involved) already
        // differ after one step by up to 0.4 % in the upsampling convolutions' weights (BatchNorm
        // over near-constant channels amplifies the rounding of batch-size-dependent sums), so
        // the weights are compared bit for bit with one rank on a share instead.
        compare(&world, "stage2", &net2, 256, cfg.variant, false, &stage2);
    }

    /// k steps of one rank on the global batch vs. k steps of this rank in `world` on its share.
    fn compare<G: Exported>(
        world: &World,
        stage: &str,
        net: &ResolvedNetwork,
        crop: usize,
        variant: Variant,
        all_steps_vs_global: bool,
        init: &dyn Fn(u64) -> (G, G::D),
    ) {
        let (global, share) = (4, 2);
        let mut rng = Xoshiro256::new(9, 0);
        let (img, cap, turns) = (
            rng.normals(3 * crop * crop),
            rng.normals(net.caption_dim),
            rng.normals(2 * net.dialogue_dim),
        );
        let z = rng.normals(net.z_dim);
        let eps: Vec<Vec<f32>> = (0..G::CA_DRAWS)
            .map(|_| rng.normals(net.cond_dim))
            .collect();
        let inputs = |rows: usize| StepInputs {
            host: HostBatch {
                size: rows,
                crop,
                images: img.repeat(rows),
                captions: cap.repeat(rows),
                dialogue: turns.repeat(rows),
                lengths: vec![2; rows],
            },
            noise: z.repeat(rows),
            eps: eps.iter().map(|e| e.repeat(rows)).collect(),
            variant,
            net: *net,
            step: 1,
            precision: Precision::F32,
            objects: None,
            kl_coeff: 1.0,
        };
        let device = Device::flex().autodiff();
        let run = |w: &World, rows: usize| {
            let (mut g, mut d) = init(3);
            // Plain SGD: Adam divides by the gradient's own scale, so it would hide a sum taken
            // for a mean.
            let sgd = || burn::optim::SgdConfig::new().init();
            let (mut og, mut od) = (sgd(), sgd());
            let mut losses = Vec::new();
            for _ in 0..2 {
                let opt = Optimizers {
                    g: &mut og,
                    d: &mut od,
                    lr_g: 0.05,
                    lr_d: 0.05,
                };
                let s = train_step(g, d, opt, inputs(rows), &device, w).expect("step");
                (g, d) = (s.gnet, s.d);
                losses.push((s.losses.d.total, s.losses.g.total));
            }
            (tensor_values(&g.valid()), tensor_values(&d.valid()), losses)
        };
        let (g1, d1, l1) = run(&World::single(), global);
        let (g2, d2, l2) = run(world, share);
        // The averaging itself is exact: two ranks of identical shares give bit for bit what
        // one rank gives on one share.
        let (g3, d3, l3) = run(&World::single(), share);
        assert_eq!(l2, l3, "{stage}: 2 ranks vs 1 rank on a share");
        assert!(
            g2.iter()
                .chain(&d2)
                .zip(g3.iter().chain(&d3))
                .all(|(a, b)| a.values == b.values),
            "{stage}: 2 ranks vs 1 rank on a share: weights differ"
        );
        let steps = if all_steps_vs_global { l1.len() } else { 1 };
        for ((a, b), (c, d)) in l1.iter().zip(&l2).take(steps) {
            assert!(
                (a - c).abs() < 1e-5 && (b - d).abs() < 1e-5,
                "{stage}: {l1:?} vs {l2:?}"
            );
        }
        let mut compared = 0;
        let mut mine = Vec::new();
        for (x, y) in g1.iter().chain(&d1).zip(g2.iter().chain(&d2)) {
            mine.extend(y.values.iter().flat_map(|v| v.to_le_bytes()));
            if !all_steps_vs_global {
                continue;
            }
            assert_eq!(x.path, y.path);
            // Running variances use the unbiased batch variance, n/(n−1) with n = images·H·W of
            // the rank: 2 images instead of 4 differ by up to 1/(n−1) − 1/(2n−1) ≈ 0.8 % at
            // the 1×1… layers' smallest n; weights and means must agree to float rounding.
            let tol = if x.path.ends_with("running_var") {
                1e-2
            } else {
                1e-5
            };
            for (p, q) in x.values.iter().zip(&y.values) {
                assert!(
                    (p - q).abs() <= tol * (1.0 + p.abs()),
                    "{stage}: {}: {p} vs {q}",
                    x.path
                );
                compared += 1;
            }
        }
        assert!(
            !all_steps_vs_global || compared > 1000,
            "{stage}: {compared}"
        );
        // Replicas identical: rank 0's weights, bit for bit, on every rank (the running
        // statistics too: every share is the same here).
        let hash = chatpainter_artifacts::sha256_bytes(&mine);
        let root = world.broadcast_bytes(hash.clone().into_bytes());
        assert_eq!(
            root,
            hash.as_bytes(),
            "{stage}: rank {} drifted",
            world.rank()
        );
        // The weights moved (the comparison is not of two untouched copies).
        let (g0, _) = init(3);
        let moved = tensor_values(&g0)
            .iter()
            .zip(&g2)
            .filter(|(a, b)| a.values != b.values)
            .count();
        assert!(moved > 3, "{stage}: {moved} tensors moved");
        println!("{stage}: ranks agree (rank {})", world.rank());
    }
}
