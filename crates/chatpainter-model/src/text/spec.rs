//! Naming an encoder in a config (`kind = "hashing" | "minilm" | "skipthought" |
//! "char-cnn-rnn"`, as the `[embed]` table writes it) and loading it where the settings say.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::device::DeviceChoice;
use crate::text::charcnn::CharCnnRnnSource;
use crate::text::{
    EmbedError, HashingEncoder, MiniLmConfig, MiniLmEncoder, SkipThoughtConfig, SkipThoughtEncoder,
    SkipThoughtVariant, TextEncoder,
};

/// One path or a list of them (e.g. StackGAN's `train/` and `test/` pickles).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Paths {
    One(String),
    Many(Vec<String>),
}

impl Paths {
    pub fn to_vec(&self) -> Vec<&str> {
        match self {
            Self::One(p) => vec![p.as_str()],
            Self::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// Which encoder, and how to load it. Paths are resolved as every pipeline path is
/// ([`chatpainter_artifacts::RunDir::resolve`]): `run:<rel>` inside the run directory, anything
/// else as written (relative to the working directory, the workspace root for the CLI and xtask).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum EncoderSpec {
    /// Zero-file feature hashing (smoke runs, CI).
    Hashing { dim: usize },
    /// all-MiniLM-L6-v2 (384-d); `model_dir` defaults to `$CHATPAINTER_MODELS` or `data/models`.
    Minilm {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model_dir: Option<String>,
        #[serde(default = "default_max_tokens")]
        max_tokens: usize,
    },
    /// Skip-Thought (the paper's dialogue encoder): `model_dir` holds `dictionary.txt`, the
    /// word tables and `uni_skip.npz` / `bi_skip.npz` (see the `skipthought` module docs).
    Skipthought {
        model_dir: String,
        #[serde(default = "default_skipthought_variant")]
        variant: SkipThoughtVariant,
    },
    /// StackGAN's precomputed caption vectors (captions only: it cannot encode new text).
    /// `embeddings[i]` pairs with `filenames[i]`; several pairs (train/ and test/) are merged.
    CharCnnRnn {
        embeddings: Paths,
        filenames: Paths,
        #[serde(default = "default_char_cnn_dim")]
        dim: usize,
    },
}

fn default_skipthought_variant() -> SkipThoughtVariant {
    SkipThoughtVariant::Combine
}

fn default_max_tokens() -> usize {
    128
}

fn default_char_cnn_dim() -> usize {
    1024
}

impl EncoderSpec {
    /// Loads the encoder on flex with its default batching, paths taken as written.
    pub fn load(&self) -> Result<Box<dyn TextEncoder>, EmbedError> {
        self.load_with(&|p: &str| PathBuf::from(p), &Placement::default())
    }

    /// Loads the encoder, turning every configured path into a file path with `resolve`; the
    /// Burn encoders (MiniLM, Skip-Thought) go where `placement` says.
    pub fn load_with(
        &self,
        resolve: &dyn Fn(&str) -> PathBuf,
        placement: &Placement,
    ) -> Result<Box<dyn TextEncoder>, EmbedError> {
        let device = placement.device.burn_device();
        Ok(match self {
            Self::Hashing { dim } => Box::new(HashingEncoder::new(*dim)?),
            Self::Minilm {
                model_dir,
                max_tokens,
            } => {
                let mut cfg = match model_dir {
                    Some(dir) => MiniLmConfig::new(resolve(dir)),
                    None => MiniLmConfig::from_default_dir(),
                };
                cfg.max_tokens = *max_tokens;
                if let Some(tokens) = placement.batch_tokens {
                    cfg.batch_tokens = tokens;
                }
                Box::new(MiniLmEncoder::load_on(&cfg, device)?)
            }
            Self::Skipthought { model_dir, variant } => {
                let mut cfg = SkipThoughtConfig::new(resolve(model_dir), *variant);
                if let Some(tokens) = placement.batch_tokens {
                    cfg.batch_tokens = tokens;
                }
                Box::new(SkipThoughtEncoder::load_on(&cfg, device)?)
            }
            Self::CharCnnRnn {
                embeddings,
                filenames,
                dim,
            } => {
                let (e, f) = (embeddings.to_vec(), filenames.to_vec());
                if e.len() != f.len() {
                    return Err(EmbedError::Config(format!(
                        "char-cnn-rnn: {} embeddings file(s) but {} filenames file(s); they pair up one to one",
                        e.len(),
                        f.len()
                    )));
                }
                let pairs = e.iter().zip(&f).map(|(e, f)| (resolve(e), resolve(f)));
                Box::new(CharCnnRnnSource::open(pairs.collect(), *dim)?)
            }
        })
    }
}

/// Where and in what portions the Burn encoders run; not part of any encoder's identity (the
/// vectors do not depend on it beyond float rounding).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    pub device: DeviceChoice,
    /// Most padded tokens per forward pass (`None`: the encoder's default).
    pub batch_tokens: Option<usize>,
}

/// The encoder part of the embed stage's `[embed]` table (and of the `config.toml` the stage
/// writes): both encoders and where the Burn ones run. The stage's own keys (cache, batching,
/// part size) are the embed stage's; a reader of the stage's `config.toml` ignores them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EncoderSettings {
    pub caption_encoder: EncoderSpec,
    pub dialogue_encoder: EncoderSpec,
    #[serde(default)]
    pub device: DeviceChoice,
    #[serde(default)]
    pub batch_tokens: Option<usize>,
}

impl EncoderSettings {
    /// The device and batching the Burn encoders load with.
    pub fn placement(&self) -> Placement {
        Placement {
            device: self.device,
            batch_tokens: self.batch_tokens,
        }
    }
}

/// The loaded encoders of a config (one instance when both specs are equal).
pub struct Encoders {
    pub caption: std::sync::Arc<dyn TextEncoder>,
    pub dialogue: std::sync::Arc<dyn TextEncoder>,
}

impl Encoders {
    /// Loads both encoders, paths taken as written.
    pub fn load(cfg: &EncoderSettings) -> Result<Self, EmbedError> {
        Self::load_with(cfg, &|p: &str| PathBuf::from(p))
    }

    /// Loads both encoders, resolving configured paths with `resolve` (the CLI passes the run
    /// directory's resolver so that `run:` paths work).
    ///
    /// # Errors
    /// The encoders' load errors; [`EmbedError::CannotEncode`] for a `char-cnn-rnn` dialogue
    /// encoder (dialogues are new text).
    pub fn load_with(
        cfg: &EncoderSettings,
        resolve: &dyn Fn(&str) -> PathBuf,
    ) -> Result<Self, EmbedError> {
        if matches!(cfg.dialogue_encoder, EncoderSpec::CharCnnRnn { .. }) {
            return Err(EmbedError::CannotEncode {
                encoder: crate::text::charcnn::CHAR_CNN_RNN_NAME.into(),
                what: "as `dialogue_encoder`: StackGAN has no dialogue vectors".into(),
            });
        }
        let placement = cfg.placement();
        let burn_encoder = |s: &EncoderSpec| {
            matches!(
                s,
                EncoderSpec::Minilm { .. } | EncoderSpec::Skipthought { .. }
            )
        };
        if burn_encoder(&cfg.caption_encoder) || burn_encoder(&cfg.dialogue_encoder) {
            cfg.device.probe()?;
        }
        let caption: std::sync::Arc<dyn TextEncoder> =
            cfg.caption_encoder.load_with(resolve, &placement)?.into();
        let dialogue = if cfg.dialogue_encoder == cfg.caption_encoder {
            caption.clone()
        } else {
            cfg.dialogue_encoder.load_with(resolve, &placement)?.into()
        };
        Ok(Self { caption, dialogue })
    }
}
