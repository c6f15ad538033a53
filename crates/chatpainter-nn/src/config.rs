//! One configuration for the whole model family and the named presets (the paper's ChatPainter,
//! the reference code's COCO model, smoke): every width
//! is a value here, so the smoke pipeline builds tiny networks from the same code.

use burn::config::Config;

use crate::NnError;
use crate::ca::CaNetConfig;
use crate::dialogue::DialogueEncoderConfig;
use crate::stage1::{Stage1DConfig, Stage1GConfig};
use crate::stage2::{Stage2DConfig, Stage2GConfig};

/// The widths of one named network preset, both stages; the caption and dialogue widths are
/// not here (they come from the data, or from [`StackGanConfig::preset`]'s model names).
/// `[stage1]`/`[stage2]` `network.preset = "…"` in a pipeline file names one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkPreset {
    pub name: &'static str,
    /// Noise width Nz (Z_DIM).
    pub z_dim: usize,
    /// CA output width Nc (GAN.CONDITION_DIM).
    pub cond_dim: usize,
    /// Stage-I GAN.GF_DIM (base 8·gf_dim).
    pub gf_dim: usize,
    /// Stage-I GAN.DF_DIM.
    pub df_dim: usize,
    /// BiLSTM hidden size per direction (recurrent variant only).
    pub rnn_hidden: usize,
    /// Stage-II GAN.GF_DIM (base gf_dim).
    pub stage2_gf_dim: usize,
    /// Stage-II GAN.DF_DIM.
    pub stage2_df_dim: usize,
    /// Stage-II GAN.R_NUM, residual blocks.
    pub r_num: usize,
}

/// The ChatPainter paper ("same as StackGAN"): gf 128, df 64, Nc 128, 4 residual blocks.
const CHATPAINTER: NetworkPreset = NetworkPreset {
    name: "chatpainter",
    z_dim: 100,
    cond_dim: 128,
    gf_dim: 128,
    df_dim: 64,
    rnn_hidden: 1024,
    stage2_gf_dim: 128,
    stage2_df_dim: 64,
    r_num: 4,
};

/// The reference code's COCO configuration (coco_s1.yml / coco_s2.yml).
const STACKGAN_PYTORCH_COCO: NetworkPreset = NetworkPreset {
    name: "stackgan-pytorch-coco",
    z_dim: 100,
    cond_dim: 128,
    gf_dim: 192,
    df_dim: 96,
    rnn_hidden: 1024,
    stage2_gf_dim: 192,
    stage2_df_dim: 96,
    r_num: 2,
};

/// Tiny networks for CI.
const SMOKE: NetworkPreset = NetworkPreset {
    name: "smoke",
    z_dim: 100,
    cond_dim: 16,
    gf_dim: 8,
    df_dim: 8,
    rnn_hidden: 16,
    stage2_gf_dim: 8,
    stage2_df_dim: 8,
    r_num: 1,
};

/// Every network preset: the one place their widths are written.
pub const NETWORK_PRESETS: [NetworkPreset; 3] = [CHATPAINTER, STACKGAN_PYTORCH_COCO, SMOKE];

impl NetworkPreset {
    /// The preset called `name`.
    ///
    /// # Errors
    /// [`NnError::UnknownPreset`] listing the known names.
    pub fn named(name: &str) -> Result<Self, NnError> {
        NETWORK_PRESETS
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| NnError::UnknownPreset {
                name: name.to_owned(),
                known: NETWORK_PRESETS.map(|p| p.name).join(", "),
            })
    }

    /// The model of these widths (both stages) with `caption_dim`-d captions and `dialogue`.
    fn stackgan(self, caption_dim: usize, dialogue: DialogueVariant) -> StackGanConfig {
        StackGanConfig::new(
            self.z_dim,
            caption_dim,
            dialogue,
            self.cond_dim,
            self.gf_dim,
            self.df_dim,
        )
        .with_stage2(Some(self.stage2()))
    }

    /// The Stage-II widths of this preset.
    pub fn stage2(self) -> Stage2Sizes {
        Stage2Sizes::new(self.stage2_gf_dim, self.stage2_df_dim, self.r_num)
    }
}

/// Names accepted by [`StackGanConfig::preset`].
pub const PRESET_NAMES: [&str; 7] = [
    "stackgan-pytorch-coco",
    "stackgan",
    "chatpainter-nonrecurrent",
    "chatpainter-recurrent",
    "smoke",
    "smoke-nonrecurrent",
    "smoke-recurrent",
];

/// KL weight λ of the reference code (TRAIN.COEFF.KL).
pub const KL_COEFF: f64 = 2.0;

/// Skip-Thought combine-skip width (one vector per dialogue or per turn).
pub const SKIP_THOUGHT_DIM: usize = 4800;

/// What the dialogue adds to the CA input (concatenated after the caption embedding).
#[derive(Config, Debug, PartialEq)]
pub enum DialogueVariant {
    /// Caption only (`stackgan`): no dialogue input.
    CaptionOnly,
    /// One vector for the whole dialogue string, concatenated to the caption embedding.
    NonRecurrent {
        /// Width of the dialogue vector.
        dim: usize,
    },
    /// One vector per turn through a BiLSTM; the 2·hidden summary is concatenated.
    Recurrent {
        /// Width of one turn vector.
        turn_dim: usize,
        /// LSTM hidden size per direction.
        hidden: usize,
    },
}

impl DialogueVariant {
    /// Width of the dialogue part of the CA input.
    pub fn dialogue_dim(&self) -> usize {
        match self {
            Self::CaptionOnly => 0,
            Self::NonRecurrent { dim } => *dim,
            Self::Recurrent { hidden, .. } => 2 * hidden,
        }
    }

    /// The paper's non-recurrent variant: one 4800-d Skip-Thought vector.
    pub fn paper_nonrecurrent() -> Self {
        Self::NonRecurrent {
            dim: SKIP_THOUGHT_DIM,
        }
    }

    /// The paper's recurrent variant: 4800-d turn vectors, BiLSTM hidden 1024.
    pub fn paper_recurrent() -> Self {
        Self::Recurrent {
            turn_dim: SKIP_THOUGHT_DIM,
            hidden: CHATPAINTER.rnn_hidden,
        }
    }
}

/// Stage-II's own widths (its inner Stage-I is the Stage-I part of the model).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub struct Stage2Sizes {
    /// Stage-II GAN.GF_DIM (base gf_dim).
    pub gf_dim: usize,
    /// Stage-II GAN.DF_DIM.
    pub df_dim: usize,
    /// GAN.R_NUM, residual blocks.
    pub r_num: usize,
}

/// Hyper-parameters of every network of one model (both stages, the CA and the dialogue RNN).
#[derive(Config, Debug)]
pub struct StackGanConfig {
    /// Noise width Nz (Z_DIM).
    pub z_dim: usize,
    /// Caption embedding width (TEXT.DIMENSION).
    pub caption_dim: usize,
    /// Dialogue conditioning.
    pub dialogue: DialogueVariant,
    /// CA output width Nc (GAN.CONDITION_DIM).
    pub cond_dim: usize,
    /// Stage-I GAN.GF_DIM (base 8·gf_dim).
    pub gf_dim: usize,
    /// Stage-I GAN.DF_DIM.
    pub df_dim: usize,
    /// Stage-II's own widths; `None` for a Stage-I-only model.
    #[config(default = "None")]
    pub stage2: Option<Stage2Sizes>,
    /// Frozen Stage-I inside Stage-II: train-mode BatchNorm (reference) or eval mode.
    #[config(default = true)]
    pub stage1_bn_batch_stats: bool,
    /// Categories of Stage-I D's auxiliary object head (0: none, the reference).
    #[config(default = 0)]
    pub object_classes: usize,
    /// The CA's ReLU in both stages (`true`, the reference; see [`CaNetConfig::relu`]).
    #[config(default = true)]
    pub ca_relu: bool,
}

impl StackGanConfig {
    /// The reference code's COCO configuration (coco_s1.yml / coco_s2.yml).
    pub fn stackgan_pytorch_coco() -> Self {
        STACKGAN_PYTORCH_COCO.stackgan(1024, DialogueVariant::CaptionOnly)
    }

    /// The ChatPainter paper's sizes ("same as StackGAN": gf 128, df 64, 4 residual blocks) with
    /// the given dialogue variant; `CaptionOnly` is the `stackgan` baseline.
    pub fn chatpainter(dialogue: DialogueVariant) -> Self {
        CHATPAINTER.stackgan(1024, dialogue)
    }

    /// Tiny networks for CI with the given dialogue variant (caption 64, Nc 16, gf 8, df 8, one
    /// residual block). [`Self::smoke_nonrecurrent`] and [`Self::smoke_recurrent`] give small
    /// dialogue widths.
    pub fn smoke(dialogue: DialogueVariant) -> Self {
        SMOKE.stackgan(64, dialogue)
    }

    /// Smoke dialogue variant: one 64-d dialogue vector.
    pub fn smoke_nonrecurrent() -> DialogueVariant {
        DialogueVariant::NonRecurrent { dim: 64 }
    }

    /// Smoke dialogue variant: 64-d turn vectors, BiLSTM hidden 16.
    pub fn smoke_recurrent() -> DialogueVariant {
        DialogueVariant::Recurrent {
            turn_dim: 64,
            hidden: SMOKE.rnn_hidden,
        }
    }

    /// Looks up one of [`PRESET_NAMES`].
    ///
    /// # Errors
    /// [`NnError::UnknownPreset`] for any other name.
    pub fn preset(name: &str) -> Result<Self, NnError> {
        Ok(match name {
            "stackgan-pytorch-coco" => Self::stackgan_pytorch_coco(),
            "stackgan" => Self::chatpainter(DialogueVariant::CaptionOnly),
            "chatpainter-nonrecurrent" => Self::chatpainter(DialogueVariant::paper_nonrecurrent()),
            "chatpainter-recurrent" => Self::chatpainter(DialogueVariant::paper_recurrent()),
            "smoke" => Self::smoke(DialogueVariant::CaptionOnly),
            "smoke-nonrecurrent" => Self::smoke(Self::smoke_nonrecurrent()),
            "smoke-recurrent" => Self::smoke(Self::smoke_recurrent()),
            other => {
                return Err(NnError::UnknownPreset {
                    name: other.to_owned(),
                    known: PRESET_NAMES.join(", "),
                });
            }
        })
    }

    /// CA input width: caption_dim + dialogue_dim.
    pub fn text_dim(&self) -> usize {
        self.caption_dim + self.dialogue.dialogue_dim()
    }

    /// The CA of either stage.
    pub fn ca(&self) -> CaNetConfig {
        CaNetConfig::new(self.text_dim(), self.cond_dim).with_relu(self.ca_relu)
    }

    pub fn stage1_g(&self) -> Stage1GConfig {
        Stage1GConfig::new(self.text_dim(), self.cond_dim, self.z_dim, self.gf_dim)
            .with_ca_relu(self.ca_relu)
    }

    pub fn stage1_d(&self) -> Stage1DConfig {
        Stage1DConfig::new(self.df_dim, self.cond_dim).with_object_classes(self.object_classes)
    }

    /// Stage-II's G around this model's Stage-I G; `None` for a Stage-I-only model.
    pub fn stage2_g(&self) -> Option<Stage2GConfig> {
        self.stage2.map(|s| {
            Stage2GConfig::new(self.stage1_g(), s.gf_dim, s.r_num)
                .with_stage1_bn_batch_stats(self.stage1_bn_batch_stats)
        })
    }

    /// Stage-II's D; `None` for a Stage-I-only model.
    pub fn stage2_d(&self) -> Option<Stage2DConfig> {
        self.stage2
            .map(|s| Stage2DConfig::new(s.df_dim, self.cond_dim))
    }

    /// The BiLSTM of the recurrent variant; `None` otherwise.
    pub fn dialogue_encoder(&self) -> Option<DialogueEncoderConfig> {
        match &self.dialogue {
            DialogueVariant::Recurrent { turn_dim, hidden } => {
                Some(DialogueEncoderConfig::new(*turn_dim).with_hidden(*hidden))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_by_name() {
        for p in NETWORK_PRESETS {
            assert_eq!(NetworkPreset::named(p.name), Ok(p));
            // StackGanConfig holds one gf/df for both stages.
            assert_eq!((p.stage2_gf_dim, p.stage2_df_dim), (p.gf_dim, p.df_dim));
        }
        assert_eq!(
            NetworkPreset::named("huge"),
            Err(NnError::UnknownPreset {
                name: "huge".into(),
                known: "chatpainter, stackgan-pytorch-coco, smoke".into()
            })
        );
    }
}
