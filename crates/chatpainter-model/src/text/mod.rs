//! Text encoders for ChatPainter: turn captions, dialogue turns and whole dialogues into
//! fixed-size vectors. The embed stage runs them over a dataset; eval and `generate` run them on
//! new text, with the encoders the run's embed stage recorded.
//!
//! Every encoder implements [`TextEncoder`]: an [`EncoderIdentity`] that the embedding cache
//! stores next to the vectors (so a different model, file or text rule never reuses stale
//! embeddings) and [`TextEncoder::encode_batch`], which returns an [`EmbeddingBatch`] — a
//! row-major matrix plus the list of texts that had to be truncated.
//!
//! Encoders here: [`HashingEncoder`] (no files, deterministic; smoke runs and CI),
//! [`MiniLmEncoder`] (pretrained all-MiniLM-L6-v2 in Burn, files from [`fetch_minilm`] /
//! `cargo xtask fetch-models`) and [`SkipThoughtEncoder`] (uni/bi/combine-skip, the paper's
//! dialogue encoder, files the user brings). [`charcnn`] imports StackGAN's precomputed
//! char-CNN-RNN caption vectors and serves them as a caption source ([`CharCnnRnnSource`],
//! which cannot encode new text). [`spec`] names an encoder in a
//! config and loads it ([`Encoders`]); the embed stage (`chatpainter-embed`) caches and stores
//! their vectors.
//!
//! Shared policies, identical for every encoder:
//! - **Whitespace**: each text goes through [`normalize_whitespace`] first.
//! - **Empty texts**: a text that is empty after that is refused with
//!   [`EmbedError::EmptyText`] naming its index; no vector is invented.
//! - **Truncation**: an encoder with a token limit cuts longer texts (keeping the beginning)
//!   and reports each one in [`EmbeddingBatch::truncated`]; it never fails on length.

pub mod charcnn;
mod error;
pub mod fetch;
pub mod hashing;
pub mod minilm;
pub mod normalize;
pub mod skipthought;
pub mod spec;
pub mod tokenize;

use sha2::{Digest, Sha256};

pub use charcnn::{
    CharCnnRnnEmbeddings, CharCnnRnnSource, import_char_cnn_rnn, import_char_cnn_rnn_dir,
};
pub use chatpainter_formats::embeddings::EncoderIdentity;
pub use error::EmbedError;
pub use fetch::{MINILM_DIR_NAME, MINILM_SAFETENSORS_SHA256, default_models_dir, fetch_minilm};
pub use hashing::HashingEncoder;
pub use minilm::{BertConfig, BertModel, MiniLmConfig, MiniLmEncoder};
pub use normalize::{NORMALIZATION_VERSION, dialogue_text, normalize_whitespace, turn_text};
pub use skipthought::{SkipThoughtConfig, SkipThoughtEncoder, SkipThoughtVariant};
pub use spec::{EncoderSettings, EncoderSpec, Encoders, Paths, Placement};

/// The vectors of one [`TextEncoder::encode_batch`] call, in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingBatch {
    /// Width of every row.
    pub dim: usize,
    /// Row-major `[texts.len(), dim]` values.
    pub data: Vec<f32>,
    /// Indices (into the input slice, ascending) of the texts that were truncated.
    pub truncated: Vec<usize>,
}

impl EmbeddingBatch {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }

    /// `true` when the batch holds no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The vector of text `i`, or `None` past the end.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        self.data.get(i * self.dim..(i + 1) * self.dim)
    }

    /// All rows, in input order.
    pub fn rows(&self) -> impl Iterator<Item = &[f32]> {
        self.data.chunks_exact(self.dim.max(1))
    }

    /// One `Vec` per text.
    pub fn to_vecs(&self) -> Vec<Vec<f32>> {
        self.rows().map(<[f32]>::to_vec).collect()
    }

    /// How many texts were truncated.
    pub fn truncated_count(&self) -> usize {
        self.truncated.len()
    }
}

/// A sentence encoder.
///
/// Implementations are `Send + Sync` so that one loaded model can serve several threads.
pub trait TextEncoder: Send + Sync {
    /// What this encoder is; see [`EncoderIdentity`].
    fn identity(&self) -> &EncoderIdentity;

    /// Width of the output vectors.
    fn dim(&self) -> usize {
        self.identity().dim
    }

    /// The token limit beyond which texts are truncated (`None`: never truncates).
    fn max_tokens(&self) -> Option<usize>;

    /// Encodes `texts` into L2-normalised vectors, one row per text, in input order.
    ///
    /// # Errors
    /// [`EmbedError::EmptyText`] if a text is empty after whitespace normalisation (the
    /// whole call fails, naming the first such index); encoder-specific run-time errors.
    /// Over-long texts are not an error: they are truncated and listed in
    /// [`EmbeddingBatch::truncated`].
    fn encode_batch(&self, texts: &[&str]) -> Result<EmbeddingBatch, EmbedError>;

    /// `Some` for a source of precomputed per-image vectors (char-CNN-RNN), which the embed
    /// stage reads by image id instead of encoding text.
    fn precomputed(&self) -> Option<&charcnn::CharCnnRnnSource> {
        None
    }
}

/// Cuts texts sorted by ascending token count (`sorted_lengths`) into consecutive batches of at
/// most `max_texts` texts and `max_tokens` padded tokens (`texts × longest`, the longest being
/// the last taken). A text longer than the budget still gets a batch of its own: the budget
/// bounds padding and activations, it never refuses a text.
pub(crate) fn token_budget_batches(
    sorted_lengths: &[usize],
    max_texts: usize,
    max_tokens: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut batches = Vec::new();
    let mut start = 0;
    while start < sorted_lengths.len() {
        let mut end = start + 1;
        while end < sorted_lengths.len()
            && end - start < max_texts
            && (end - start + 1) * sorted_lengths[end] <= max_tokens
        {
            end += 1;
        }
        batches.push(start..end);
        start = end;
    }
    batches
}

/// sha256 of `bytes`, lower-case hex.
pub(crate) fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Normalises every text and checks none is empty; shared by all encoders so the empty-text
/// policy is the same everywhere.
pub(crate) fn normalize_batch(texts: &[&str]) -> Result<Vec<String>, EmbedError> {
    texts
        .iter()
        .enumerate()
        .map(|(index, t)| {
            let n = normalize_whitespace(t);
            if n.is_empty() {
                Err(EmbedError::EmptyText { index })
            } else {
                Ok(n)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_accessors() {
        let b = EmbeddingBatch {
            dim: 2,
            data: vec![1.0, 2.0, 3.0, 4.0],
            truncated: vec![1],
        };
        assert_eq!(b.len(), 2);
        assert_eq!(b.row(1), Some(&[3.0, 4.0][..]));
        assert_eq!(b.row(2), None);
        assert_eq!(b.to_vecs(), vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
        assert_eq!(b.truncated_count(), 1);
    }

    #[test]
    fn token_budget_batches_bound_padding_and_count() {
        let lengths = [2, 3, 3, 5, 8, 8, 40];
        let batches = token_budget_batches(&lengths, 3, 16);
        assert_eq!(batches, vec![0..3, 3..5, 5..6, 6..7]);
        for b in &batches {
            let padded = b.len() * lengths[b.end - 1];
            // Only a lone text may exceed the budget.
            assert!(b.len() <= 3 && (padded <= 16 || b.len() == 1), "{b:?}");
        }
        assert!(token_budget_batches(&[], 4, 8).is_empty());
    }

    #[test]
    fn empty_texts_are_refused_with_their_index() {
        let err = normalize_batch(&["ok", " \t", ""]).err();
        assert!(
            matches!(err, Some(EmbedError::EmptyText { index: 1 })),
            "{err:?}"
        );
    }

    #[test]
    fn fingerprint_depends_on_every_field() {
        let a = EncoderIdentity {
            name: "x".into(),
            weights_sha256: None,
            dim: 4,
            normalization: NORMALIZATION_VERSION.into(),
        };
        let mut b = a.clone();
        b.dim = 5;
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
    }
}
