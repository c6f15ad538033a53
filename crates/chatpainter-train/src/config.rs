//! The Stage-I training configuration (`[stage1]` table of a pipeline file): the variant, the
//! network widths (a preset plus overrides), the schedule and every interval. Parsed with
//! `deny_unknown_fields`; [`TrainConfig::validate`] checks values, and
//! [`TrainConfig::network`] resolves the widths against the embedding widths of the data.

use chatpainter_model::{CaActivation, DeviceChoice, ResolvedNetwork, Stage2Widths, Variant};
use chatpainter_nn::{NetworkPreset, NnError};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::precision::Precision;
use crate::text_norm::TextNorm;

/// Network widths: a named preset, then single-key overrides. The caption and dialogue widths
/// are not here: they come from the embedding table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// One of `chatpainter-nn`'s [`NETWORK_PRESETS`](chatpainter_nn::NETWORK_PRESETS):
    /// `chatpainter` (the paper's widths), `stackgan-pytorch-coco` or `smoke`.
    pub preset: String,
    pub z_dim: Option<usize>,
    pub cond_dim: Option<usize>,
    pub gf_dim: Option<usize>,
    pub df_dim: Option<usize>,
    /// BiLSTM hidden size per direction (recurrent variant only).
    pub rnn_hidden: Option<usize>,
    /// Stage-II residual blocks (GAN.R_NUM; Stage-II only).
    pub r_num: Option<usize>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            preset: "chatpainter".into(),
            z_dim: None,
            cond_dim: None,
            gf_dim: None,
            df_dim: None,
            rnn_hidden: None,
            r_num: None,
        }
    }
}

/// Adam settings (PyTorch defaults except β1, as the reference).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamSettings {
    fn default() -> Self {
        Self {
            beta1: 0.5,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// How the frozen Stage-I's BatchNorms run inside Stage-II.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage1BatchNorm {
    /// Reference behaviour: train mode (batch statistics; running statistics keep moving), only
    /// the parameters are frozen.
    #[default]
    BatchStats,
    /// Eval mode: the Stage-I run's running statistics, untouched.
    RunningStats,
}

/// Everything training needs besides the data: the `[stage1]` and `[stage2]` tables (the
/// `stage1*` keys are Stage-II only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Stage-II: must equal the Stage-I run's variant.
    pub variant: Variant,
    #[serde(default)]
    pub network: NetworkConfig,
    /// Global batch size (drop_last; at least 2 for the wrong pairs).
    pub batch_size: usize,
    /// Run length in epochs; with `max_steps` too, whichever ends first.
    #[serde(default)]
    pub epochs: Option<u64>,
    /// Run length in optimiser steps (one D + one G update each).
    #[serde(default)]
    pub max_steps: Option<u64>,
    #[serde(default = "default_lr")]
    pub lr_g: f64,
    #[serde(default = "default_lr")]
    pub lr_d: f64,
    /// Halve both learning rates every this many epochs (0 = never).
    #[serde(default)]
    pub lr_decay_epochs: u64,
    /// KL weight λ.
    #[serde(default = "default_kl")]
    pub kl_coeff: f64,
    #[serde(default)]
    pub adam: AdamSettings,
    #[serde(default)]
    pub seed: u64,
    /// Checkpoint every this many steps (0 = only at the end and on stop).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// Write a sample sheet every this many steps (0 = never).
    #[serde(default)]
    pub sample_every: u64,
    /// Emit a tracing `info` line every this many steps (metrics go to the file every step).
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// How many checkpoints to keep.
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Conditions (and real images) on a sample sheet.
    #[serde(default = "default_sample_count")]
    pub sample_count: usize,
    /// `cpu` (default), `tch-cpu`, `cuda:N`, or `cuda` (each data-parallel rank on the GPU of
    /// its local index).
    #[serde(default)]
    pub device: DeviceChoice,
    /// Stage-II: the Stage-I stage directory (`run:stage1` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage1: Option<String>,
    /// Stage-II: BatchNorm mode of the frozen Stage-I.
    #[serde(default)]
    pub stage1_batch_norm: Stage1BatchNorm,
    /// Text vectors as embedded (`none`, the reference) or standardised per dimension
    /// (`standardize`, see [`crate::text_norm`]). Stage-II must use its Stage-I run's choice.
    #[serde(default)]
    pub text_norm: TextNorm,
    /// Random horizontal flips (the reference: true). Off for data whose captions or dialogues
    /// say left and right, such as the synthetic scenes: a flip makes those words wrong.
    #[serde(default = "default_flip")]
    pub flip: bool,
    /// `f32` (default, the reference) or `bf16` mixed precision (see [`crate::precision`]).
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// Weight of the auxiliary object-recognition loss on D (0, the default: off, the paper's
    /// recipe). ChatPainter's §6 proposes it; GeNeVA (5) and LatteGAN (10) train with one. D gets
    /// a 1×1-convolution head on its 4×4 image features that predicts, per category and cell,
    /// how much of the cell the category's boxes cover; D learns it on the real images, G is
    /// asked to make D see the same objects in its fakes. The boxes come from the ingest stage's
    /// `objects.parquet` (COCO-format instance annotations, `instances` in `[[ingest.coco]]`),
    /// moved by each image's crop and flip. Stage-I only.
    #[serde(default, skip_serializing_if = "is_off")]
    pub object_loss: f64,
    /// The CA's activation: `relu` (the default, StackGAN-Pytorch's `CA_NET`, which keeps
    /// σ ≥ 1, so the condition code always carries noise of at least the text's own scale) or
    /// `linear` (the paper's "fully connected layer"; σ can shrink where the text is
    /// informative). Stage-II uses its Stage-I run's.
    #[serde(default, skip_serializing_if = "CaActivation::is_reference")]
    pub ca_activation: CaActivation,
}

fn is_off(weight: &f64) -> bool {
    *weight == 0.0
}

fn default_flip() -> bool {
    true
}

fn default_lr() -> f64 {
    2e-4
}
fn default_kl() -> f64 {
    chatpainter_nn::KL_COEFF
}
fn default_log_every() -> u64 {
    100
}
fn default_keep() -> usize {
    2
}
fn default_sample_count() -> usize {
    8
}

impl TrainConfig {
    /// A small configuration for tests and the smoke pipeline.
    pub fn smoke(variant: Variant) -> Self {
        Self {
            variant,
            network: NetworkConfig {
                preset: "smoke".into(),
                ..NetworkConfig::default()
            },
            batch_size: 4,
            epochs: None,
            max_steps: Some(4),
            lr_g: default_lr(),
            lr_d: default_lr(),
            lr_decay_epochs: 0,
            kl_coeff: default_kl(),
            adam: AdamSettings::default(),
            seed: 0,
            checkpoint_every: 0,
            sample_every: 0,
            log_every: default_log_every(),
            keep_checkpoints: default_keep(),
            sample_count: 4,
            device: DeviceChoice::default(),
            stage1: None,
            stage1_batch_norm: Stage1BatchNorm::BatchStats,
            text_norm: TextNorm::None,
            flip: true,
            precision: Precision::F32,
            object_loss: 0.0,
            ca_activation: CaActivation::Relu,
        }
    }

    /// Checks the values that serde cannot.
    ///
    /// # Errors
    /// [`TrainError::Config`] naming the key.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |key: &str, msg: String| Err(TrainError::Config(format!("{key}: {msg}")));
        if self.batch_size < 2 {
            return bad(
                "batch_size",
                format!(
                    "{} is too small; the wrong pairs need at least 2",
                    self.batch_size
                ),
            );
        }
        if self.epochs.is_none() && self.max_steps.is_none() {
            return bad("epochs", "set `epochs` or `max_steps`".into());
        }
        for (key, lr) in [("lr_g", self.lr_g), ("lr_d", self.lr_d)] {
            if !(lr.is_finite() && lr >= 0.0) {
                return bad(key, format!("{lr} is not a finite rate ≥ 0"));
            }
        }
        if !self.kl_coeff.is_finite() {
            return bad("kl_coeff", format!("{} is not finite", self.kl_coeff));
        }
        if !(self.object_loss.is_finite() && self.object_loss >= 0.0) {
            return bad(
                "object_loss",
                format!("{} is not a finite weight ≥ 0", self.object_loss),
            );
        }
        let a = self.adam;
        if !(a.beta1 >= 0.0 && a.beta1 < 1.0 && a.beta2 >= 0.0 && a.beta2 < 1.0 && a.eps > 0.0) {
            return bad("adam", format!("{a:?}: betas must be in [0, 1), eps > 0"));
        }
        if self.keep_checkpoints == 0 {
            return bad("keep_checkpoints", "must be at least 1".into());
        }
        // The widths too (preset name, overrides), with stand-in text widths: a typo must be
        // caught before a run touches anything, not when the data is open.
        self.network(64, 64)?;
        Ok(())
    }

    /// The widths `network.preset` names.
    fn preset(&self) -> Result<NetworkPreset, TrainError> {
        NetworkPreset::named(&self.network.preset).map_err(|e| match e {
            NnError::UnknownPreset { name, known } => {
                TrainError::Config(format!("network.preset: unknown `{name}` (known: {known})"))
            }
            other => TrainError::Config(other.to_string()),
        })
    }

    /// Resolves the widths: preset, then overrides, then the data's embedding widths.
    ///
    /// # Errors
    /// [`TrainError::Config`] for an unknown preset or a zero width.
    pub fn network(
        &self,
        caption_dim: usize,
        dialogue_dim: usize,
    ) -> Result<ResolvedNetwork, TrainError> {
        let p = self.preset()?;
        let n = &self.network;
        let dialogue_dim = match self.variant {
            Variant::Stackgan => 0,
            _ => dialogue_dim,
        };
        let r = ResolvedNetwork {
            z_dim: n.z_dim.unwrap_or(p.z_dim),
            caption_dim,
            dialogue_dim,
            rnn_hidden: match self.variant {
                Variant::ChatpainterRecurrent => n.rnn_hidden.unwrap_or(p.rnn_hidden),
                _ => 0,
            },
            cond_dim: n.cond_dim.unwrap_or(p.cond_dim),
            gf_dim: n.gf_dim.unwrap_or(p.gf_dim),
            df_dim: n.df_dim.unwrap_or(p.df_dim),
            stage2: None,
            object_classes: 0,
            ca_activation: self.ca_activation,
        };
        if r.z_dim == 0 || r.cond_dim == 0 || r.df_dim == 0 || r.caption_dim == 0 {
            return Err(TrainError::Config(format!("zero width in {r:?}")));
        }
        if r.gf_dim == 0 || !r.gf_dim.is_multiple_of(2) {
            return Err(TrainError::Config(format!(
                "network.gf_dim: {} must be a positive even number",
                r.gf_dim
            )));
        }
        if self.variant != Variant::Stackgan && r.dialogue_dim == 0 {
            return Err(TrainError::Config(format!(
                "variant {} needs dialogue embeddings, the data has none",
                self.variant.name()
            )));
        }
        if self.variant == Variant::ChatpainterRecurrent && r.rnn_hidden == 0 {
            return Err(TrainError::Config("network.rnn_hidden: must be > 0".into()));
        }
        Ok(r)
    }

    /// Resolves Stage-II: the Stage-I run's network plus this config's Stage-II widths (preset,
    /// then overrides); the Stage-I widths keys (`z_dim`, `cond_dim`, `rnn_hidden`) must not
    /// contradict the Stage-I run.
    ///
    /// # Errors
    /// [`TrainError::Config`] naming the key.
    pub fn network2(&self, stage1: &ResolvedNetwork) -> Result<ResolvedNetwork, TrainError> {
        let p = self.preset()?;
        let n = &self.network;
        for (key, ours, theirs) in [
            ("z_dim", n.z_dim, stage1.z_dim),
            ("cond_dim", n.cond_dim, stage1.cond_dim),
            ("rnn_hidden", n.rnn_hidden, stage1.rnn_hidden),
        ] {
            if ours.is_some_and(|v| v != theirs) {
                return Err(TrainError::Config(format!(
                    "network.{key}: {} differs from the Stage-I run's {theirs}; Stage-II shares it",
                    ours.unwrap_or_default()
                )));
            }
        }
        if self.ca_activation != stage1.ca_activation {
            return Err(TrainError::Config(format!(
                "ca_activation: {:?} differs from the Stage-I run's {:?}; Stage-II shares it",
                self.ca_activation, stage1.ca_activation
            )));
        }
        let w = Stage2Widths {
            gf_dim: n.gf_dim.unwrap_or(p.stage2_gf_dim),
            df_dim: n.df_dim.unwrap_or(p.stage2_df_dim),
            r_num: n.r_num.unwrap_or(p.r_num),
            stage1_bn_batch_stats: self.stage1_batch_norm == Stage1BatchNorm::BatchStats,
        };
        if w.gf_dim == 0 || !w.gf_dim.is_multiple_of(4) {
            return Err(TrainError::Config(format!(
                "network.gf_dim: {} must be a positive multiple of 4",
                w.gf_dim
            )));
        }
        if w.df_dim == 0 {
            return Err(TrainError::Config("network.df_dim: must be > 0".into()));
        }
        Ok(ResolvedNetwork {
            stage2: Some(w),
            ..*stage1
        })
    }

    /// The config with the keys that may change between a run and its resumption (run length,
    /// intervals, retention, devices) set to fixed values, for comparing a resume request to a
    /// checkpoint. Moving a run to other devices is allowed; it is exact only on the same ones.
    pub fn resume_key(&self) -> Self {
        Self {
            epochs: None,
            max_steps: None,
            checkpoint_every: 0,
            sample_every: 0,
            log_every: 0,
            keep_checkpoints: 0,
            device: DeviceChoice::default(),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_refuses_unknown_keys() {
        let json = r#"{"variant":"chatpainter-recurrent","batch_size":8,"max_steps":3,
            "network":{"preset":"smoke","gf_dim":4}}"#;
        let c: TrainConfig = serde_json::from_str(json).expect("parse");
        assert_eq!(c.adam, AdamSettings::default());
        assert_eq!(c.lr_g, 2e-4);
        assert_eq!(c.device, DeviceChoice::default());
        c.validate().expect("valid");
        let r = c.network(64, 32).expect("resolve");
        assert_eq!(
            (r.gf_dim, r.cond_dim, r.rnn_hidden, r.dialogue_dim),
            (4, 16, 16, 32)
        );
        let bad = r#"{"variant":"stackgan","batch_size":8,"max_steps":3,"lr":1}"#;
        assert!(serde_json::from_str::<TrainConfig>(bad).is_err());
        let dev: TrainConfig = serde_json::from_str(
            r#"{"variant":"stackgan","batch_size":8,"epochs":1,"device":"flex"}"#,
        )
        .expect("alias");
        assert_eq!(dev.device, DeviceChoice::CPU);
        let two = serde_json::from_str::<TrainConfig>(
            r#"{"variant":"stackgan","batch_size":8,"epochs":1,"device":"cpu,cpu"}"#,
        )
        .expect_err("lists are gone");
        assert!(two.to_string().contains("mpirun"), "{two}");
    }

    #[test]
    fn parses_a_pipeline_toml_table() {
        let text = r#"
            variant = "chatpainter-nonrecurrent"
            batch_size = 384
            epochs = 800
            lr_decay_epochs = 50
            checkpoint_every = 1000
            sample_every = 500
            device = "cpu"
            [network]
            preset = "chatpainter"
            [adam]
            beta1 = 0.5
            beta2 = 0.999
            eps = 1e-8
        "#;
        let c: TrainConfig = toml::from_str(text).expect("toml");
        c.validate().expect("valid");
        let r = c.network(1024, 4800).expect("resolve");
        assert_eq!(
            (r.gf_dim, r.df_dim, r.cond_dim, r.dialogue_dim),
            (128, 64, 128, 4800)
        );
        let cfg = r.stackgan(c.variant);
        assert_eq!(cfg.text_dim(), 5824);
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = TrainConfig::smoke(Variant::Stackgan);
        c.batch_size = 1;
        assert!(matches!(c.validate(), Err(TrainError::Config(m)) if m.starts_with("batch_size")));
        let mut c = TrainConfig::smoke(Variant::Stackgan);
        c.lr_d = f64::NAN;
        assert!(matches!(c.validate(), Err(TrainError::Config(m)) if m.starts_with("lr_d")));
        let c = TrainConfig::smoke(Variant::ChatpainterNonrecurrent);
        assert!(c.network(64, 0).is_err());
        let mut c = TrainConfig::smoke(Variant::Stackgan);
        c.network.preset = "huge".into();
        assert!(c.network(64, 0).is_err());
    }
}
