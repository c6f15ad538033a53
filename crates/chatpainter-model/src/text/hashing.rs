//! A zero-file, deterministic text encoder for smoke runs and CI, so that the whole pipeline runs
//! on a fresh machine without downloading a model.
//!
//! Algorithm `hashing-v1`, fixed forever (change the name if it ever changes):
//! 1. collapse whitespace ([`crate::text::normalize_whitespace`]) and lower-case (Unicode);
//! 2. tokens = maximal runs of alphanumeric characters; every other non-space character is a
//!    token of its own (so `"sunny?"` gives `sunny`, `?`);
//! 3. features = every token, and every pair of neighbouring tokens joined by one space;
//! 4. each feature's UTF-8 bytes are hashed with 64-bit FNV-1a followed by the MurmurHash3
//!    `fmix64` finaliser (FNV alone mixes short keys poorly); bucket = `h % dim`,
//!    sign = `-1` if bit 63 of `h` is set, else `+1`;
//! 5. the signed one-hot features are averaged, then the vector is L2-normalised.
//!
//! Only integer arithmetic decides buckets and signs, so the output is bit-identical on every
//! machine. If all features cancel (only possible through colliding buckets) the vector is
//! all zeros rather than NaN.

use rayon::prelude::*;

use crate::text::{EmbedError, EmbeddingBatch, EncoderIdentity, TextEncoder, normalize_batch};

/// Name (and algorithm version) in the identity.
pub const HASHING_NAME: &str = "hashing-v1";

/// Signed feature hashing of lower-cased tokens and bigrams.
#[derive(Debug, Clone)]
pub struct HashingEncoder {
    identity: EncoderIdentity,
}

impl HashingEncoder {
    /// An encoder producing `dim`-wide vectors (1024 mimics the char-CNN-RNN caption vector,
    /// 4800 combine-skip).
    ///
    /// # Errors
    /// [`EmbedError::Config`] if `dim` is 0.
    pub fn new(dim: usize) -> Result<Self, EmbedError> {
        if dim == 0 {
            return Err(EmbedError::Config(
                "hashing encoder dimension must be at least 1".into(),
            ));
        }
        Ok(Self {
            identity: EncoderIdentity {
                name: HASHING_NAME.into(),
                weights_sha256: None,
                dim,
                normalization: format!("{}+lowercase", crate::text::NORMALIZATION_VERSION),
            },
        })
    }

    /// Encodes one already whitespace-normalised, non-empty text into `out` (`dim` wide).
    fn encode_one(&self, text: &str, out: &mut [f32]) {
        let lower = text.to_lowercase();
        let tokens = tokenize(&lower);
        let dim = out.len() as u64;
        let mut n_features = 0usize;
        let mut add = |feature: &str| {
            let h = feature_hash(feature.as_bytes());
            let bucket = (h % dim) as usize;
            out[bucket] += if h >> 63 == 1 { -1.0 } else { 1.0 };
            n_features += 1;
        };
        let mut bigram = String::new();
        for (i, token) in tokens.iter().enumerate() {
            add(token);
            if let Some(next) = tokens.get(i + 1) {
                bigram.clear();
                bigram.push_str(token);
                bigram.push(' ');
                bigram.push_str(next);
                add(&bigram);
            }
        }
        if n_features == 0 {
            return;
        }
        // Averaging does not change the direction; it is kept because `hashing-v1` is defined
        // as averaged features and it keeps intermediate values small.
        let inv = 1.0 / n_features as f32;
        out.iter_mut().for_each(|x| *x *= inv);
        let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            out.iter_mut().for_each(|x| *x /= norm);
        }
    }
}

impl TextEncoder for HashingEncoder {
    fn identity(&self) -> &EncoderIdentity {
        &self.identity
    }

    fn max_tokens(&self) -> Option<usize> {
        None
    }

    fn encode_batch(&self, texts: &[&str]) -> Result<EmbeddingBatch, EmbedError> {
        let texts = normalize_batch(texts)?;
        let dim = self.identity.dim;
        let mut data = vec![0.0f32; texts.len() * dim];
        data.par_chunks_mut(dim)
            .zip(texts.par_iter())
            .for_each(|(row, text)| self.encode_one(text, row));
        Ok(EmbeddingBatch {
            dim,
            data,
            truncated: Vec::new(),
        })
    }
}

/// Splits a lower-cased text into alphanumeric runs and single other non-space characters.
fn tokenize(text: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut run_start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if c.is_alphanumeric() {
            run_start.get_or_insert(i);
            continue;
        }
        if let Some(start) = run_start.take() {
            tokens.push(&text[start..i]);
        }
        if !c.is_whitespace() {
            tokens.push(&text[i..i + c.len_utf8()]);
        }
    }
    if let Some(start) = run_start {
        tokens.push(&text[start..]);
    }
    tokens
}

/// 64-bit FNV-1a of `bytes`, then MurmurHash3's `fmix64`.
fn feature_hash(bytes: &[u8]) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_punctuation_and_keep_unicode_letters() {
        assert_eq!(
            tokenize("is it sunny? yes."),
            ["is", "it", "sunny", "?", "yes", "."]
        );
        assert_eq!(tokenize("café’s 2 dogs"), ["café", "’", "s", "2", "dogs"]);
        assert_eq!(tokenize("?!"), ["?", "!"]);
    }

    // Golden values computed independently in Python (no Rust involved):
    //   M = 2**64 - 1
    //   fnv = lambda b: functools.reduce(lambda h, x: ((h ^ x) * 0x100000001b3) & M, b, 0xcbf29ce484222325)
    //   def fmix(h): h ^= h >> 33; h = h * 0xff51afd7ed558ccd & M; h ^= h >> 33
    //                h = h * 0xc4ceb9fe1a85ec53 & M; return h ^ (h >> 33)
    //   tokens: runs of str.isalnum(), other non-space chars alone; features: tokens + "a b"
    //   bigrams; v[h % dim] += -1 if h >> 63 else 1; v /= n_features; v /= ||v||.
    #[test]
    fn hash_matches_independent_values() {
        assert_eq!(feature_hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(feature_hash(b"a"), 0x82a2_a958_a9be_ce5b);
    }

    fn encode(text: &str, dim: usize) -> Vec<f32> {
        let enc = HashingEncoder::new(dim).ok();
        let batch = enc.map(|e| e.encode_batch(&[text]));
        match batch {
            Some(Ok(b)) => b.data,
            other => panic!("encoding failed: {other:?}"),
        }
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-6, "dim {i}: got {g}, want {w}\n{got:?}");
        }
    }

    #[test]
    fn golden_vectors() {
        // 9 features: is+ it- sunny+ ?- yes+ and four bigrams; buckets listed by the recipe.
        let a = 0.516_397_8;
        let b = 0.258_198_9;
        assert_close(
            &encode("Is it sunny? Yes", 8),
            &[0.0, -a, -a, b, -b, 0.0, a, b],
        );
        let c = 0.577_350_3;
        assert_close(&encode("A  CAT", 4), &[-c, c, 0.0, -c]);
        let d = 0.447_213_6;
        let mut want = [0.0; 16];
        want[1] = -d;
        want[6] = -d;
        want[10] = d;
        want[11] = -d;
        want[12] = d;
        assert_close(&encode("café au lait", 16), &want);
    }

    #[test]
    fn case_and_whitespace_do_not_matter_and_output_is_unit_length() {
        let x = encode("  Two DOGS\tplaying ", 64);
        let y = encode("two dogs playing", 64);
        assert_eq!(x, y);
        let norm: f32 = x.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6);
    }

    #[test]
    fn zero_dim_and_empty_text_are_errors() {
        assert!(matches!(HashingEncoder::new(0), Err(EmbedError::Config(_))));
        let enc = HashingEncoder::new(8).ok();
        let r = enc.map(|e| e.encode_batch(&["fine", "  "]));
        assert!(
            matches!(r, Some(Err(EmbedError::EmptyText { index: 1 }))),
            "{r:?}"
        );
    }
}
