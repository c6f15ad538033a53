//! What a run's networks are: the conditioning [`Variant`] and the widths a run actually used
//! ([`ResolvedNetwork`], written into `config.json` and every checkpoint), mapped onto
//! `chatpainter-nn`'s configuration.

use chatpainter_nn::{DialogueVariant, StackGanConfig, Stage2Sizes};
use serde::{Deserialize, Serialize};

/// Which conditioning the generator gets: the caption alone (StackGAN) or the caption joined by
/// one of ChatPainter's two dialogue encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Caption only (the StackGAN baseline).
    Stackgan,
    /// Caption ⊕ one whole-dialogue vector.
    ChatpainterNonrecurrent,
    /// Caption ⊕ BiLSTM summary of the per-turn vectors (the BiLSTM trains with G).
    ChatpainterRecurrent,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Self::Stackgan => "stackgan",
            Self::ChatpainterNonrecurrent => "chatpainter-nonrecurrent",
            Self::ChatpainterRecurrent => "chatpainter-recurrent",
        }
    }
}

/// The network sizes a run actually used (written into every checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolvedNetwork {
    pub z_dim: usize,
    pub caption_dim: usize,
    /// Whole-dialogue vector width (non-recurrent) or per-turn width (recurrent); 0 otherwise.
    pub dialogue_dim: usize,
    pub rnn_hidden: usize,
    pub cond_dim: usize,
    pub gf_dim: usize,
    pub df_dim: usize,
    /// Stage-II widths (absent in a Stage-I run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage2: Option<Stage2Widths>,
    /// Categories of Stage-I D's auxiliary object head: those of the ingest stage's
    /// `objects.parquet` when `object_loss` is on; 0 (absent from the file) otherwise.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub object_classes: usize,
    /// The CA's activation in both stages (`relu`, the reference; absent from the file).
    #[serde(default, skip_serializing_if = "CaActivation::is_reference")]
    pub ca_activation: CaActivation,
}

/// The activation of the CA's fc layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaActivation {
    /// StackGAN-Pytorch's `CA_NET`: ReLU over the whole output, so μ ≥ 0 and σ ≥ 1.
    #[default]
    Relu,
    /// None: the paper's "a fully connected layer"; σ may shrink below 1.
    Linear,
}

impl CaActivation {
    pub fn is_reference(&self) -> bool {
        *self == Self::Relu
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The Stage-II part of a network (its Stage-I part is the Stage-I run's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage2Widths {
    /// Stage-II base width `ngf`.
    pub gf_dim: usize,
    pub df_dim: usize,
    /// Residual blocks.
    pub r_num: usize,
    /// Frozen Stage-I BatchNorms in train mode (reference).
    pub stage1_bn_batch_stats: bool,
}

impl ResolvedNetwork {
    /// The `chatpainter-nn` configuration of these sizes (with Stage-II's when the run has one).
    pub fn stackgan(&self, variant: Variant) -> StackGanConfig {
        let dialogue = match variant {
            Variant::Stackgan => DialogueVariant::CaptionOnly,
            Variant::ChatpainterNonrecurrent => DialogueVariant::NonRecurrent {
                dim: self.dialogue_dim,
            },
            Variant::ChatpainterRecurrent => DialogueVariant::Recurrent {
                turn_dim: self.dialogue_dim,
                hidden: self.rnn_hidden,
            },
        };
        StackGanConfig::new(
            self.z_dim,
            self.caption_dim,
            dialogue,
            self.cond_dim,
            self.gf_dim,
            self.df_dim,
        )
        .with_stage2(
            self.stage2
                .map(|w| Stage2Sizes::new(w.gf_dim, w.df_dim, w.r_num)),
        )
        .with_stage1_bn_batch_stats(self.stage2.is_none_or(|w| w.stage1_bn_batch_stats))
        .with_object_classes(self.object_classes)
        .with_ca_relu(self.ca_activation == CaActivation::Relu)
    }
}
