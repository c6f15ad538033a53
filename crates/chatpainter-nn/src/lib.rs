//! Every network of the ChatPainter / StackGAN model family, with its `Config`, in Burn 0.22:
//! the conditioning augmentation (`CA_NET`), the Stage-I and Stage-II generators and
//! discriminators of StackGAN-Pytorch, layer for layer, and ChatPainter's
//! recurrent dialogue encoder (a BiLSTM). Also the reference weight initialisation
//! ([`weights_init`], the only place that sets weight values), the reference losses ([`loss`]), the
//! named presets ([`StackGanConfig::preset`]) and the mapping of our parameter paths to the
//! reference PyTorch `state_dict` keys ([`reference_names`]).
//!
//! No IO and no training loops live here: configs build modules, modules compute tensors.
//!
//! Conventions: each network has a `#[derive(Config)]` struct with `init(&self, &Device)` (Burn's
//! PyTorch-like default weights; call [`weights_init`] after it, as the reference calls
//! `net.apply(weights_init)`), a `#[derive(Module)]` struct, and `forward` with a `# Shapes` doc.
//! Field names follow the reference attributes so that weights map one-to-one.
//!
//! Decisions worth knowing:
//! - BatchNorm runs through [`blocks::bn_forward`], which keeps PyTorch's rule of updating
//!   `running_var` with the unbiased batch variance (Burn's `BatchNorm` uses the biased one).
//!   Read running statistics with `RunningState::value_sync` (`value` may lag one update).
//! - The frozen Stage-I inside Stage-II keeps train-mode BatchNorm by default (reference);
//!   `stage1_bn_batch_stats = false` switches it to eval mode ([`Stage2G::freeze_stage1`]).
//! - The CA always samples its noise; [`CaNoise::MeanOnly`] is the optional deterministic decode.
//! - The dialogue BiLSTM packs variable turn counts by masking and keeps PyTorch's `nn.LSTM`
//!   layout, names and default init; its torch names assume an attribute called `lstm`.
//! - Torch's `num_batches_tracked` BatchNorm counters have no Burn counterpart and are not mapped.
//!
//! Measured trainable-parameter counts (weights + BN affine, no running statistics; checked by
//! `tests/nn.rs`):
//!
//! | preset | CA_NET | Stage-I G | Stage-I D | Stage-II G (trainable / with Stage-I) | Stage-II D | BiLSTM |
//! |---|---|---|---|---|---|---|
//! | `stackgan-pytorch-coco` | 262,400 | 20,020,832 | 12,407,425 | 37,130,480 / 57,151,312 | 159,889,538 | – |
//! | `stackgan` (chatpainter widths, caption only) | 262,400 | 10,301,248 | 5,715,713 | 26,290,080 / 36,591,328 | 71,269,122 | – |
//! | `chatpainter-nonrecurrent` (CA input 5824) | 1,491,200 | 11,530,048 | 5,715,713 | 27,518,880 / 39,048,928 | 71,269,122 | – |
//! | `chatpainter-recurrent` (CA input 3072) | 786,688 | 10,825,536 | 5,715,713 | 26,814,368 / 37,639,904 | 71,269,122 | 47,726,592 |

pub mod blocks;
pub mod ca;
pub mod config;
pub mod dialogue;
pub mod init;
pub mod loss;
pub mod names;
pub mod stage1;
pub mod stage2;

use burn::tensor::Tensor;

pub use ca::{CaNet, CaNetConfig, CaNoise, CaOutput, input_shares};
pub use config::{
    DialogueVariant, KL_COEFF, NETWORK_PRESETS, NetworkPreset, PRESET_NAMES, StackGanConfig,
    Stage2Sizes,
};
pub use dialogue::{DialogueEncoder, DialogueEncoderConfig};
pub use init::weights_init;
pub use names::{ReferenceLayout, ReferenceName, count_trainable, list_params, reference_names};
pub use stage1::{GenOutput, Stage1D, Stage1DConfig, Stage1G, Stage1GConfig};
pub use stage2::{Stage2D, Stage2DConfig, Stage2G, Stage2GConfig};

/// A StackGAN discriminator: an image encoder plus a conditional head and, in Stage-II, an
/// unconditional head. The losses in [`loss`] are written against this.
pub trait Discriminator {
    /// Image features.
    ///
    /// # Shapes
    /// `[B, 3, S, S]` → `[B, 8·ndf, 4, 4]`
    fn features(&self, image: Tensor<4>) -> Tensor<4>;

    /// Conditional head (`get_cond_logits`).
    ///
    /// # Shapes
    /// features `[B, 8·ndf, 4, 4]`, cond `[B, Nc]` → `[B]` probabilities
    fn cond_prob(&self, features: Tensor<4>, cond: Tensor<2>) -> Tensor<1>;

    /// Unconditional head (`get_uncond_logits`), `None` where there is none (Stage-I).
    ///
    /// # Shapes
    /// `[B, 8·ndf, 4, 4]` → `[B]` probabilities
    fn uncond_prob(&self, features: Tensor<4>) -> Option<Tensor<1>>;

    /// The auxiliary object head's logits, `None` where there is none (the reference; Stage-II).
    ///
    /// # Shapes
    /// `[B, 8·ndf, 4, 4]` → `[B, categories, 4, 4]`
    fn object_logits(&self, _features: Tensor<4>) -> Option<Tensor<4>> {
        None
    }
}

/// Errors from this crate: bad inputs and bad configuration names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NnError {
    /// A preset name that does not exist.
    UnknownPreset { name: String, known: String },
    /// Dialogue turn counts that do not fit the batch.
    BadLengths(String),
    /// The discriminator loss needs at least two samples for the shift-by-one wrong pairs.
    BatchTooSmall(usize),
    /// A parameter without a reference name (a layout bug).
    Mapping(String),
}

impl std::fmt::Display for NnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownPreset { name, known } => {
                write!(f, "unknown network preset `{name}` (known: {known})")
            }
            Self::BadLengths(msg) => write!(f, "bad dialogue lengths: {msg}"),
            Self::BatchTooSmall(b) => write!(
                f,
                "batch of {b}: the discriminator loss needs at least 2 samples for wrong pairs"
            ),
            Self::Mapping(msg) => write!(f, "reference name mapping: {msg}"),
        }
    }
}

impl std::error::Error for NnError {}
