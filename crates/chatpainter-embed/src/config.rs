//! The `[embed]` table of a pipeline file: the two encoders and where they run (the part
//! `chatpainter_model::text::EncoderSettings` reads back to rebuild them), the cache folder and
//! the batching of the stage.

use chatpainter_model::DeviceChoice;
use chatpainter_model::text::{EncoderSettings, EncoderSpec};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedConfig {
    /// Encodes each caption (or, `char-cnn-rnn`, looks it up in StackGAN's pickles).
    pub caption_encoder: EncoderSpec,
    /// Encodes the whole dialogue (one string) and each turn.
    pub dialogue_encoder: EncoderSpec,
    /// Cache folder, shared between runs if you like; `run:` paths are inside the run.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: String,
    /// Texts per encoder call.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Vectors per cache part file (the unit of resumption).
    #[serde(default = "default_part")]
    pub part_size: usize,
    /// Device of the Burn encoders (MiniLM, Skip-Thought): `cpu` (flex, the default),
    /// `tch-cpu` or `cuda:N` (builds with the `tch` feature). Hashing and char-CNN-RNN ignore
    /// it. Not part of the cache key: a cache filled on one device serves every other.
    #[serde(default, skip_serializing_if = "DeviceChoice::is_cpu")]
    pub device: DeviceChoice,
    /// Most padded tokens (texts × longest text) per forward pass of MiniLM or Skip-Thought;
    /// `None`: each encoder's default (MiniLM 768, Skip-Thought 4096). Larger suits a GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_tokens: Option<usize>,
}

impl EmbedConfig {
    /// The encoder part of this table: what loads the encoders (eval reads the same fields of
    /// the stage's `config.toml` to rebuild them).
    pub fn encoders(&self) -> EncoderSettings {
        EncoderSettings {
            caption_encoder: self.caption_encoder.clone(),
            dialogue_encoder: self.dialogue_encoder.clone(),
            device: self.device,
            batch_tokens: self.batch_tokens,
        }
    }
}

fn default_cache_dir() -> String {
    "run:embed/cache".into()
}
fn default_batch() -> usize {
    64
}
fn default_part() -> usize {
    4096
}
