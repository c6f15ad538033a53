//! all-MiniLM-L6-v2 (sentence-transformers) in Burn 0.22: a 6-layer BERT encoder, attention-masked
//! mean pooling and L2 normalisation, giving 384-d sentence vectors.
//!
//! Weights come from the sentence-transformers `model.safetensors` (PyTorch names, `Linear`
//! weights `[out, in]`). They are read with the `safetensors` crate by a small loader instead
//! of `burn-store`: it keeps Burn's feature set (and so the shared build) unchanged, and it
//! can name the offending tensor and both shapes when a file does not fit. Module fields mirror
//! the Hugging Face `BertModel` tree (flattened per layer: `attention.output.dense` →
//! `attention_output`, …); the whole name mapping sits in one place,
//! [`BertModel::from_safetensors_bytes`].
//!
//! Tokenisation uses the `tokenizers` crate with the model's own `tokenizer.json`, with its
//! fixed padding to 128 switched off: texts are tokenised in parallel (rayon), sorted by
//! length, cut into batches of neighbours (at most [`MiniLmConfig::batch_size`] texts and
//! [`MiniLmConfig::batch_tokens`] padded word pieces) padded to their longest member, and the
//! results are put back in input order. Padding never changes a vector (it is masked in
//! attention and pooling).
//!
//! Where the time goes (perf, 2-core AMD EPYC, flex): ≈65 % in gemm's f32 microkernel (the
//! Q/K/V, output and feed-forward matmuls), ≈8 % in exact-erf GELU, ≈3 % attention, the rest
//! element-wise ops and head split/merge copies; tokenisation is <1 % for short turns and
//! ≈0.5 ms per 90-token dialogue. The cost is linear in padded tokens (≈0.75 ms of CPU per
//! word piece), so batching only has to avoid padding and oversized activations.

use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::gelu;
#[cfg(test)]
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use rayon::prelude::*;
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::text::fetch::{MINILM_DIR_NAME, MINILM_SAFETENSORS_SHA256, default_models_dir};
use crate::text::{EmbedError, EmbeddingBatch, EncoderIdentity, TextEncoder, normalize_batch};

/// Name in the identity.
pub const MINILM_NAME: &str = "all-MiniLM-L6-v2";

/// BERT hyper-parameters, read from the model's `config.json` (Hugging Face field names;
/// other fields of that file are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Word-piece vocabulary size.
    pub vocab_size: usize,
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads (must divide `hidden_size`).
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Number of learned positions (the longest possible input).
    pub max_position_embeddings: usize,
    /// Number of token types (segments).
    pub type_vocab_size: usize,
    /// LayerNorm epsilon (1e-12 for BERT, not Burn's 1e-5 default).
    pub layer_norm_eps: f64,
    /// Activation of the feed-forward block; only exact-erf `gelu` is implemented.
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_act() -> String {
    "gelu".into()
}

impl BertConfig {
    /// The all-MiniLM-L6-v2 architecture: 6 layers, hidden 384, 12 heads, FFN 1536.
    pub fn minilm_l6() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 384,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 1536,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: default_act(),
        }
    }

    /// Reads `config.json` and checks that this code implements what it describes.
    ///
    /// # Errors
    /// [`EmbedError::Io`] or [`EmbedError::ModelConfig`].
    pub fn from_file(path: &Path) -> Result<Self, EmbedError> {
        let text = std::fs::read_to_string(path).map_err(|e| EmbedError::io(path, e))?;
        let config: Self = serde_json::from_str(&text).map_err(|e| EmbedError::ModelConfig {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config
            .validate()
            .map_err(|message| EmbedError::ModelConfig {
                path: path.to_path_buf(),
                message,
            })?;
        Ok(config)
    }

    /// Checks the values are usable.
    ///
    /// # Errors
    /// A sentence saying what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act `{}` is not supported (only exact-erf `gelu`)",
                self.hidden_act
            ));
        }
        Ok(())
    }
}

/// Word, position and token-type embeddings, summed and layer-normalised.
#[derive(Module, Debug)]
pub struct BertEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
}

impl BertEmbeddings {
    /// # Shapes
    /// - `input_ids`: `[batch, seq]` (seq ≤ `max_position_embeddings`)
    /// - output: `[batch, seq, hidden]`
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        let [_, seq] = input_ids.dims();
        let words = self.word_embeddings.forward(input_ids);
        // Positions are 0..seq for every row and every text is one segment (type 0), so both
        // are slices of the tables broadcast over the batch instead of index lookups.
        let positions = self
            .position_embeddings
            .weight
            .val()
            .narrow(0, 0, seq)
            .unsqueeze_dim::<3>(0);
        let token_type = self
            .token_type_embeddings
            .weight
            .val()
            .narrow(0, 0, 1)
            .unsqueeze_dim::<3>(0);
        self.layer_norm.forward(words + positions + token_type)
    }
}

/// One post-LayerNorm BERT layer (HF `BertLayer`: self-attention, its output projection and
/// norm, the intermediate GELU block, the output projection and norm).
#[derive(Module, Debug)]
pub struct BertLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    n_heads: usize,
}

impl BertLayer {
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`
    /// - `pad_mask`: `[batch, 1, 1, seq]`, `true` at padding positions
    /// - output: `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<3>, pad_mask: Tensor<4, Bool>) -> Tensor<3> {
        let [batch, seq, hidden] = x.dims();
        let (q, k, v) = self.heads(x.clone());
        // Burn's fused scaled-dot-product attention (flex: one kernel, no materialised
        // score tensors; masked keys get -inf). Same maths as `forward_reference`.
        let context = attention(
            q,
            k,
            v,
            Some(pad_mask),
            None,
            AttentionModuleOptions::default(),
        );
        self.finish(x, context.swap_dims(1, 2).reshape([batch, seq, hidden]))
    }

    /// Q, K, V split into heads: `[batch, heads, seq, head_dim]` each.
    fn heads(&self, x: Tensor<3>) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [batch, seq, hidden] = x.dims();
        let heads = self.n_heads;
        let split = |t: Tensor<3>| {
            t.reshape([batch, seq, heads, hidden / heads])
                .swap_dims(1, 2)
        };
        (
            split(self.query.forward(x.clone())),
            split(self.key.forward(x.clone())),
            split(self.value.forward(x)),
        )
    }

    /// Attention output projection + residual + norm, then the GELU block + residual + norm
    /// (post-LayerNorm, as in BERT).
    fn finish(&self, x: Tensor<3>, context: Tensor<3>) -> Tensor<3> {
        let x = self
            .attention_norm
            .forward(self.attention_output.forward(context) + x);
        let h = gelu(self.intermediate.forward(x.clone()));
        self.output_norm.forward(self.output.forward(h) + x)
    }

    /// The same layer written out op by op (HF `BertSelfAttention` with an additive mask);
    /// the reference the fused path is tested against.
    #[cfg(test)]
    fn forward_reference(&self, x: Tensor<3>, pad_mask: Tensor<4, Bool>) -> Tensor<3> {
        let [batch, seq, hidden] = x.dims();
        let (q, k, v) = self.heads(x.clone());
        let head_dim = hidden / self.n_heads;
        let bias = Tensor::<4>::zeros(pad_mask.dims(), &x.device()).mask_fill(pad_mask, -1e9);
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(1.0 / (head_dim as f64).sqrt())
            + bias;
        let context = softmax(scores, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([batch, seq, hidden]);
        self.finish(x, context)
    }
}

/// The BERT encoder without its pooler (sentence-transformers does not use it).
#[derive(Module, Debug)]
pub struct BertModel {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
}

impl BertModel {
    /// Last hidden states.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, seq]`
    /// - `attention_mask`: `[batch, seq]`, 1.0 for tokens, 0.0 for padding
    /// - output: `[batch, seq, hidden]`
    ///
    /// # Panics
    /// If `seq` exceeds `max_position_embeddings` or an id is outside the vocabulary (Burn's
    /// shape and index checks); [`MiniLmEncoder`] guarantees neither happens.
    pub fn forward(&self, input_ids: Tensor<2, Int>, attention_mask: Tensor<2>) -> Tensor<3> {
        let [batch, seq] = input_ids.dims();
        let pad_mask = attention_mask.equal_elem(0.0).reshape([batch, 1, 1, seq]);
        let mut x = self.embeddings.forward(input_ids);
        for layer in &self.layers {
            x = layer.forward(x, pad_mask.clone());
        }
        x
    }

    /// Sentence embeddings: attention-masked mean of the last hidden states, L2-normalised
    /// (sentence-transformers `Pooling(mean)` + `Normalize`).
    ///
    /// # Shapes
    /// - `input_ids`, `attention_mask`: `[batch, seq]`
    /// - output: `[batch, hidden]`
    pub fn embed(&self, input_ids: Tensor<2, Int>, attention_mask: Tensor<2>) -> Tensor<2> {
        let hidden = self.forward(input_ids, attention_mask.clone());
        let [batch, _, width] = hidden.dims();
        let mask = attention_mask.unsqueeze_dim::<3>(2);
        let summed = (hidden * mask.clone()).sum_dim(1);
        // Same epsilons as sentence-transformers (clamp 1e-9) and F.normalize (1e-12).
        let counts = mask.sum_dim(1).clamp_min(1e-9);
        let mean = (summed / counts).reshape([batch, width]);
        let norm = mean
            .clone()
            .powi_scalar(2)
            .sum_dim(1)
            .sqrt()
            .clamp_min(1e-12);
        mean / norm
    }

    /// Loads a safetensors file; see [`Self::from_safetensors_bytes`].
    ///
    /// # Errors
    /// As [`Self::from_safetensors_bytes`], plus [`EmbedError::Io`].
    pub fn from_safetensors_file(
        path: &Path,
        config: &BertConfig,
        device: &Device,
    ) -> Result<Self, EmbedError> {
        let bytes = std::fs::read(path).map_err(|e| EmbedError::io(path, e))?;
        Self::from_safetensors_bytes(&bytes, path, config, device)
    }

    /// Builds the network from the bytes of a Hugging Face BERT `model.safetensors`.
    ///
    /// Tensor names are the PyTorch ones (`embeddings.word_embeddings.weight`,
    /// `encoder.layer.{i}.attention.self.query.weight`, …), optionally prefixed with `bert.`;
    /// extra tensors (`pooler.*`, `embeddings.position_ids`) are ignored. Linear weights are
    /// transposed from PyTorch's `[out, in]` to Burn's `[in, out]`. `path` is only used in
    /// error messages.
    ///
    /// # Errors
    /// [`EmbedError::Safetensors`] for an unreadable file; [`EmbedError::TensorMissing`],
    /// [`EmbedError::TensorDtype`] or [`EmbedError::TensorShape`] (naming the tensor and both
    /// shapes) for a file that does not fit `config`; [`EmbedError::ModelConfig`] for an
    /// invalid `config`.
    pub fn from_safetensors_bytes(
        bytes: &[u8],
        path: &Path,
        config: &BertConfig,
        device: &Device,
    ) -> Result<Self, EmbedError> {
        config
            .validate()
            .map_err(|message| EmbedError::ModelConfig {
                path: path.to_path_buf(),
                message,
            })?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| EmbedError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let loader = Loader {
            st: &st,
            path,
            device,
            eps: config.layer_norm_eps,
        };
        let h = config.hidden_size;
        let embeddings = BertEmbeddings {
            word_embeddings: loader.embedding(
                "embeddings.word_embeddings.weight",
                config.vocab_size,
                h,
            )?,
            position_embeddings: loader.embedding(
                "embeddings.position_embeddings.weight",
                config.max_position_embeddings,
                h,
            )?,
            token_type_embeddings: loader.embedding(
                "embeddings.token_type_embeddings.weight",
                config.type_vocab_size,
                h,
            )?,
            layer_norm: loader.layer_norm("embeddings.LayerNorm", h)?,
        };
        let ffn = config.intermediate_size;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                Ok(BertLayer {
                    query: loader.linear(&format!("{p}.attention.self.query"), h, h)?,
                    key: loader.linear(&format!("{p}.attention.self.key"), h, h)?,
                    value: loader.linear(&format!("{p}.attention.self.value"), h, h)?,
                    attention_output: loader.linear(
                        &format!("{p}.attention.output.dense"),
                        h,
                        h,
                    )?,
                    attention_norm: loader
                        .layer_norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                    intermediate: loader.linear(&format!("{p}.intermediate.dense"), h, ffn)?,
                    output: loader.linear(&format!("{p}.output.dense"), ffn, h)?,
                    output_norm: loader.layer_norm(&format!("{p}.output.LayerNorm"), h)?,
                    n_heads: config.num_attention_heads,
                })
            })
            .collect::<Result<Vec<_>, EmbedError>>()?;
        Ok(Self { embeddings, layers })
    }
}

/// Reads named float32 tensors out of a safetensors file and turns them into Burn modules.
struct Loader<'a> {
    st: &'a SafeTensors<'a>,
    path: &'a Path,
    device: &'a Device,
    eps: f64,
}

impl Loader<'_> {
    /// The values of tensor `name` (or `bert.<name>`), checked against `shape`.
    fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EmbedError> {
        let view = self
            .st
            .tensor(name)
            .or_else(|_| self.st.tensor(&format!("bert.{name}")))
            .map_err(|_| EmbedError::TensorMissing {
                path: self.path.to_path_buf(),
                name: name.to_string(),
            })?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(EmbedError::TensorDtype {
                path: self.path.to_path_buf(),
                name: name.to_string(),
                found: format!("{:?}", view.dtype()),
            });
        }
        if view.shape() != shape {
            return Err(EmbedError::TensorShape {
                path: self.path.to_path_buf(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        // safetensors stores little-endian values; the header check above guarantees the
        // byte length matches the shape.
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    fn param<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Param<Tensor<D>> {
        Param::from_tensor(Tensor::from_data(
            TensorData::new(values, shape),
            self.device,
        ))
    }

    fn embedding(&self, name: &str, rows: usize, width: usize) -> Result<Embedding, EmbedError> {
        let w = self.values(name, &[rows, width])?;
        Ok(Embedding {
            weight: self.param(w, [rows, width]),
        })
    }

    /// A PyTorch `Linear(d_in, d_out)`: weight `[d_out, d_in]` in the file, `[d_in, d_out]`
    /// in Burn.
    fn linear(&self, prefix: &str, d_in: usize, d_out: usize) -> Result<Linear, EmbedError> {
        let w = self.values(&format!("{prefix}.weight"), &[d_out, d_in])?;
        let b = self.values(&format!("{prefix}.bias"), &[d_out])?;
        let mut wt = vec![0.0f32; w.len()];
        for (o, row) in w.chunks_exact(d_in).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                wt[i * d_out + o] = v;
            }
        }
        Ok(Linear {
            weight: self.param(wt, [d_in, d_out]),
            bias: Some(self.param(b, [d_out])),
        })
    }

    /// A PyTorch `LayerNorm`: `weight` → gamma, `bias` → beta.
    fn layer_norm(&self, prefix: &str, width: usize) -> Result<LayerNorm, EmbedError> {
        let gamma = self.values(&format!("{prefix}.weight"), &[width])?;
        let beta = self.values(&format!("{prefix}.bias"), &[width])?;
        let mut norm = LayerNormConfig::new(width)
            .with_epsilon(self.eps)
            .init(self.device);
        norm.gamma = self.param(gamma, [width]);
        norm.beta = Some(self.param(beta, [width]));
        Ok(norm)
    }
}

/// How to load and run [`MiniLmEncoder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MiniLmConfig {
    /// Folder holding `model.safetensors`, `tokenizer.json` and `config.json`.
    pub model_dir: PathBuf,
    /// Token limit including `[CLS]` and `[SEP]`; longer texts keep their first
    /// `max_tokens - 2` word pieces. 128 is what MiniLM was trained with; a whole 10-turn
    /// VisDial dialogue (~89 tokens) fits.
    pub max_tokens: usize,
    /// Most texts per forward pass (after sorting by length).
    pub batch_size: usize,
    /// Most padded word pieces (`texts × longest`) per forward pass: measured on 2 cores,
    /// the matmuls run fastest with a few hundred rows (short turns then go 32–64 at a time,
    /// whole dialogues ~8), since bigger activations fall out of the caches.
    pub batch_tokens: usize,
    /// Refuse a `model.safetensors` whose sha256 is not the published one. Only tests that
    /// bring their own tiny weights turn this off.
    pub verify_sha256: bool,
}

impl MiniLmConfig {
    /// Defaults for the model in `model_dir`: 128 tokens, batches of at most 64 texts and 768
    /// padded word pieces, hash checked.
    pub fn new(model_dir: impl Into<PathBuf>) -> Self {
        Self {
            model_dir: model_dir.into(),
            max_tokens: 128,
            batch_size: 64,
            batch_tokens: 768,
            verify_sha256: true,
        }
    }

    /// Defaults for `<models dir>/all-MiniLM-L6-v2`, see [`default_models_dir`].
    pub fn from_default_dir() -> Self {
        Self::new(default_models_dir().join(MINILM_DIR_NAME))
    }
}

/// The all-MiniLM-L6-v2 sentence encoder (384-d, L2-normalised).
#[derive(Debug)]
pub struct MiniLmEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    identity: EncoderIdentity,
    max_tokens: usize,
    batch_size: usize,
    batch_tokens: usize,
    hidden: usize,
}

/// One tokenised text.
struct Tokens {
    ids: Vec<u32>,
    truncated: bool,
}

impl MiniLmEncoder {
    /// Loads the model on Burn's CPU backend (flex).
    ///
    /// # Errors
    /// See [`Self::load_on`].
    pub fn load(config: &MiniLmConfig) -> Result<Self, EmbedError> {
        Self::load_on(config, Device::flex())
    }

    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from
    /// `config.model_dir` onto `device`.
    ///
    /// # Errors
    /// [`EmbedError::WeightsNotFound`] if a file is missing (the message says to run
    /// `cargo xtask fetch-models`); [`EmbedError::WeightsHashMismatch`] for another weights
    /// file; [`EmbedError::Config`] for a bad token limit or batch size; the loader's errors
    /// for a file that does not fit.
    pub fn load_on(config: &MiniLmConfig, device: Device) -> Result<Self, EmbedError> {
        let dir = &config.model_dir;
        let weights_path = dir.join("model.safetensors");
        let tokenizer_path = dir.join("tokenizer.json");
        let config_path = dir.join("config.json");
        for p in [&weights_path, &tokenizer_path, &config_path] {
            if !p.is_file() {
                return Err(EmbedError::WeightsNotFound { path: p.clone() });
            }
        }
        let bert = BertConfig::from_file(&config_path)?;
        if config.max_tokens < 2 || config.max_tokens > bert.max_position_embeddings {
            return Err(EmbedError::Config(format!(
                "max_tokens {} must be between 2 ([CLS] + [SEP]) and {} (the model's positions)",
                config.max_tokens, bert.max_position_embeddings
            )));
        }
        if config.batch_size == 0 || config.batch_tokens == 0 {
            return Err(EmbedError::Config(
                "batch_size and batch_tokens must be at least 1".into(),
            ));
        }

        let bytes = std::fs::read(&weights_path).map_err(|e| EmbedError::io(&weights_path, e))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        if config.verify_sha256 && sha != MINILM_SAFETENSORS_SHA256 {
            return Err(EmbedError::WeightsHashMismatch {
                path: weights_path,
                expected: MINILM_SAFETENSORS_SHA256.into(),
                found: sha,
            });
        }
        let model = BertModel::from_safetensors_bytes(&bytes, &weights_path, &bert, &device)?;
        drop(bytes);

        let tokenizer_err = |message: String| EmbedError::Tokenizer {
            path: tokenizer_path.clone(),
            message,
        };
        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| tokenizer_err(e.to_string()))?;
        // Ids past the embedding table would panic inside Burn; refuse such a pair up front.
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > bert.vocab_size {
            return Err(tokenizer_err(format!(
                "the tokenizer has {vocab} tokens but the model's vocab_size is {}",
                bert.vocab_size
            )));
        }
        // The file pads every text to 128; padding is done per length bucket instead.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: config.max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| tokenizer_err(e.to_string()))?;

        tracing::info!(
            dir = %dir.display(),
            max_tokens = config.max_tokens,
            batch_size = config.batch_size,
            "loaded all-MiniLM-L6-v2"
        );
        Ok(Self {
            model,
            tokenizer,
            device,
            identity: EncoderIdentity {
                name: MINILM_NAME.into(),
                weights_sha256: Some(sha),
                dim: bert.hidden_size,
                normalization: format!(
                    "{};bert-uncased-wordpiece;max_tokens={}",
                    crate::text::NORMALIZATION_VERSION,
                    config.max_tokens
                ),
            },
            max_tokens: config.max_tokens,
            batch_size: config.batch_size,
            batch_tokens: config.batch_tokens,
            hidden: bert.hidden_size,
        })
    }

    /// The network, for callers that want hidden states.
    pub fn model(&self) -> &BertModel {
        &self.model
    }

    /// Number of word pieces (with `[CLS]` and `[SEP]`, after truncation) of each text; for
    /// reporting lengths and choosing the token limit.
    ///
    /// # Errors
    /// As [`TextEncoder::encode_batch`] (empty texts, tokenizer failures).
    pub fn token_lengths(&self, texts: &[&str]) -> Result<Vec<usize>, EmbedError> {
        let texts = normalize_batch(texts)?;
        Ok(self.tokenize(&texts)?.iter().map(|t| t.ids.len()).collect())
    }

    /// Word-piece ids (with `[CLS]`/`[SEP]`, truncated to the limit) of each text, in
    /// parallel.
    fn tokenize(&self, texts: &[String]) -> Result<Vec<Tokens>, EmbedError> {
        texts
            .par_iter()
            .enumerate()
            .map(|(index, text)| {
                let enc = self
                    .tokenizer
                    .encode_fast(text.as_str(), true)
                    .map_err(|e| EmbedError::Tokenize {
                        index,
                        message: e.to_string(),
                    })?;
                Ok(Tokens {
                    ids: enc.get_ids().to_vec(),
                    // With stride 0 the tokenizer moves everything past the limit into
                    // `overflowing`, so a non-empty list means the text was cut.
                    truncated: !enc.get_overflowing().is_empty(),
                })
            })
            .collect()
    }

    /// Runs one padded batch; returns `[rows.len() * hidden]` values.
    fn run_batch(&self, rows: &[&Tokens]) -> Result<Vec<f32>, EmbedError> {
        let batch = rows.len();
        let seq = rows.iter().map(|t| t.ids.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0i64; batch * seq];
        let mut mask = vec![0.0f32; batch * seq];
        for (r, tokens) in rows.iter().enumerate() {
            for (c, &id) in tokens.ids.iter().enumerate() {
                ids[r * seq + c] = i64::from(id);
                mask[r * seq + c] = 1.0;
            }
        }
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, seq]), &self.device);
        let mask = Tensor::<2>::from_data(TensorData::new(mask, [batch, seq]), &self.device);
        let out = self.model.embed(ids, mask);
        out.try_into_data()
            .map_err(|e| EmbedError::Backend(format!("{e:?}")))?
            .try_into_vec::<f32>()
            .map_err(|e| EmbedError::Backend(format!("{e:?}")))
    }
}

impl TextEncoder for MiniLmEncoder {
    fn identity(&self) -> &EncoderIdentity {
        &self.identity
    }

    fn max_tokens(&self) -> Option<usize> {
        Some(self.max_tokens)
    }

    fn encode_batch(&self, texts: &[&str]) -> Result<EmbeddingBatch, EmbedError> {
        let texts = normalize_batch(texts)?;
        let tokens = self.tokenize(&texts)?;
        let truncated: Vec<usize> = (0..tokens.len()).filter(|&i| tokens[i].truncated).collect();
        if !truncated.is_empty() {
            tracing::debug!(
                count = truncated.len(),
                limit = self.max_tokens,
                "truncated texts"
            );
        }

        // Length buckets: similar lengths share a batch so little compute goes to padding.
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&i| tokens[i].ids.len());
        let dim = self.hidden;
        let mut data = vec![0.0f32; tokens.len() * dim];
        let lengths: Vec<usize> = order.iter().map(|&i| tokens[i].ids.len()).collect();
        for range in crate::text::token_budget_batches(&lengths, self.batch_size, self.batch_tokens)
        {
            let chunk = &order[range];
            let rows: Vec<&Tokens> = chunk.iter().map(|&i| &tokens[i]).collect();
            let out = self.run_batch(&rows)?;
            for (&i, vector) in chunk.iter().zip(out.chunks_exact(dim)) {
                data[i * dim..(i + 1) * dim].copy_from_slice(vector);
            }
        }
        Ok(EmbeddingBatch {
            dim,
            data,
            truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;
    use burn::tensor::Distribution;

    fn random_layer(device: &Device) -> BertLayer {
        let (h, f) = (16, 24);
        let norm = || LayerNormConfig::new(h).with_epsilon(1e-12).init(device);
        BertLayer {
            query: LinearConfig::new(h, h).init(device),
            key: LinearConfig::new(h, h).init(device),
            value: LinearConfig::new(h, h).init(device),
            attention_output: LinearConfig::new(h, h).init(device),
            attention_norm: norm(),
            intermediate: LinearConfig::new(h, f).init(device),
            output: LinearConfig::new(f, h).init(device),
            output_norm: norm(),
            n_heads: 4,
        }
    }

    #[test]
    fn fused_attention_matches_reference() -> Result<(), Box<dyn std::error::Error>> {
        let device = Device::flex();
        device.seed(7);
        let layer = random_layer(&device);
        let x = Tensor::<3>::random([3, 5, 16], Distribution::Normal(0.0, 1.0), &device);
        let mask = Tensor::<2>::from_data(
            TensorData::new(
                vec![
                    1.0f32, 1., 1., 1., 1., 1., 1., 0., 0., 0., 1., 1., 1., 1., 0.,
                ],
                [3, 5],
            ),
            &device,
        );
        let pad = mask.equal_elem(0.0).reshape([3, 1, 1, 5]);
        let fused = layer
            .forward(x.clone(), pad.clone())
            .into_data()
            .try_into_vec::<f32>()?;
        let reference = layer
            .forward_reference(x, pad)
            .into_data()
            .try_into_vec::<f32>()?;
        let diff = fused
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "fused vs reference attention differ by {diff}");
        Ok(())
    }
}
