//! Skip-Thought sentence encoders (Kiros et al. 2015), the paper's dialogue encoder: uni-skip
//! (2400-d), bi-skip (2400-d = 1200 forward ‖ 1200 backward) and combine-skip (4800-d = uni ‖ bi),
//! run in Burn on the flex CPU backend from the original parameter archives.
//!
//! # Files
//! A model folder holds (all users' own files; none is obtainable from a registry):
//! - `dictionary.txt`: UTF-8, one word per line (trimmed), line i = row i of both tables;
//!   must contain `UNK`.
//! - `utable_f32.npy` (or `utable.npy`) and `btable_f32.npy` (or `btable.npy`): the word
//!   tables as **plain float32** `[n_words, 620]` arrays. The original `utable.npy` /
//!   `btable.npy` are pickled numpy object arrays of per-word vectors; convert each once with
//!   ```text
//!   python3 -c "import numpy as np; np.save('utable_f32.npy', np.stack([np.asarray(v, np.float32).reshape(620) for v in np.load('utable.npy', allow_pickle=True, encoding='latin1')]))"
//!   ```
//!   (and the same with `btable`). `encoding='latin1'` reads the Python-2 pickle, each
//!   element (shape `(620,)` or `(1, 620)`) is flattened to 620 float32 values, and
//!   `np.stack` keeps the row order, so row i still belongs to line i of `dictionary.txt`.
//!   Loading an unconverted object array fails with an error that points here.
//! - `uni_skip.npz` / `bi_skip.npz`: zip archives of plain float32 `.npy` members in Theano
//!   layout (`x @ W`, i.e. `[in, out]`): `encoder_W`, `encoder_b`, `encoder_U`,
//!   `encoder_Wx`, `encoder_bx`, `encoder_Ux`, and for bi-skip the backward direction's
//!   `encoder_r_*`. Decoder parameters in the archives are ignored. All widths (620-d words,
//!   2400 or 1200 hidden) are taken from the arrays, so tiny archives in the same layout work.
//!   A member of the wrong shape gives [`EmbedError::TensorShape`] naming the archive, the
//!   member and both shapes; missing files give [`EmbedError::SkipThoughtFilesMissing`]
//!   listing what is expected.
//!
//! uni-skip uses `dictionary.txt`, the u-table and `uni_skip.npz`; bi-skip the b-table and
//! `bi_skip.npz`; combine-skip all five. The identity's weights hash is the sha256 of the
//! text `"<file name> <sha256 of file>\n"` over those files in that order.
//!
//! # Network
//! Reset-after GRU with `h0 = 0`, gate blocks ordered `[reset | update]`:
//! `a = x·W + b + h·U`; `r = σ(a[:, :d])`; `u = σ(a[:, d:])`;
//! `h̃ = tanh(x·Wx + bx + r ⊙ (h·Ux))`; `h' = u ⊙ h + (1 − u) ⊙ h̃`.
//! uni = the final state; bi = [final forward state ‖ final state of the same GRU form run on
//! the reversed sequence with the `encoder_r_` parameters]. uni and bi are each L2-normalised;
//! combine-skip concatenates the two normalised parts (its norm is √2, as in the original
//! `encode(..., use_norm=True)`).
//!
//! # Text policy
//! - Whitespace is collapsed ([`crate::text::normalize_whitespace`]); an empty text is refused with
//!   [`EmbedError::EmptyText`].
//! - [`tokenize`] (its own module): sentence split, then Penn-Treebank word tokenisation of
//!   each sentence (the rules of NLTK's `TreebankWordTokenizer` as used by `word_tokenize`:
//!   punctuation split off, a sentence-final period split, clitics `n't 's 'll 're 've 'm 'd` split, `"` → ``` ``
//!   ```/`''`), all tokens joined into one sequence. The sentence splitter approximates NLTK's
//!   Punkt: a word ending in `.`, `!` or `?` ends a sentence unless it is a common
//!   abbreviation (`Mr.`, `Dr.`, `etc.`, …), a single-letter initial or dotted initialism
//!   (`U.S.`).
//! - **No lower-casing**: lookup is case-sensitive, exactly as the original model.
//! - A token not in the dictionary uses the `UNK` row; no `<eos>` is appended.
//! - Truncation: none by default (a GRU has no length limit);
//!   [`SkipThoughtConfig::max_tokens`] keeps the first N tokens and reports the text.
//!
//! # Batching
//! Texts are tokenised in parallel, sorted by token count and run in batches of similar
//! length. Inside a batch, rows shorter than the longest are padded at the end and a per-step
//! mask freezes their state once their tokens are used up; the backward direction reverses
//! each row's own tokens before padding. So padding is never read by either direction and a
//! text's vector does not depend on what it is batched with.
//!
//! # Speed
//! Input projections (`x·W`, `x·Wx`) are one matmul per batch; each time step costs two
//! `[batch, d]` matmuls plus a few element-wise ops in Burn (flex).

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use burn::tensor::activation::{sigmoid, tanh};
use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::text::tokenize::tokenize;
use crate::text::{EmbedError, EmbeddingBatch, EncoderIdentity, TextEncoder, normalize_batch};
use chatpainter_formats::FormatError;
use chatpainter_formats::npy::{NpyArray, Npz, read_npy};

/// Conventional folder name under the models directory.
pub const SKIPTHOUGHT_DIR_NAME: &str = "skip-thoughts";
/// The dictionary file.
pub const DICTIONARY_FILE: &str = "dictionary.txt";
/// Parameter archive of uni-skip.
pub const UNI_SKIP_FILE: &str = "uni_skip.npz";
/// Parameter archive of bi-skip.
pub const BI_SKIP_FILE: &str = "bi_skip.npz";
/// Word table of uni-skip, converted to plain float32 (preferred name).
pub const UTABLE_FILES: [&str; 2] = ["utable_f32.npy", "utable.npy"];
/// Word table of bi-skip, converted to plain float32 (preferred name).
pub const BTABLE_FILES: [&str; 2] = ["btable_f32.npy", "btable.npy"];
/// The unknown-word token.
pub const UNK: &str = "UNK";

/// Which Skip-Thought vector to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SkipThoughtVariant {
    /// uni-skip, 2400-d.
    Uni,
    /// bi-skip, 2400-d (1200 forward ‖ 1200 backward).
    Bi,
    /// combine-skip, 4800-d (uni ‖ bi).
    Combine,
}

impl SkipThoughtVariant {
    /// `uni`, `bi` or `combine`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uni => "uni",
            Self::Bi => "bi",
            Self::Combine => "combine",
        }
    }

    fn uses_uni(self) -> bool {
        matches!(self, Self::Uni | Self::Combine)
    }

    fn uses_bi(self) -> bool {
        matches!(self, Self::Bi | Self::Combine)
    }
}

/// How to load and run [`SkipThoughtEncoder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkipThoughtConfig {
    /// Folder holding the files listed in the module docs.
    pub model_dir: PathBuf,
    /// uni, bi or combine.
    pub variant: SkipThoughtVariant,
    /// Most texts per batch (after sorting by length).
    pub batch_size: usize,
    /// Most padded tokens (texts × longest) per batch. The input projections of a batch hold
    /// `2·d + d` floats per padded token (≈29 KB for uni-skip's d = 2400), so this bounds the
    /// activations: whole dialogues (≈100 tokens) then go ~40 at a time, short turns 64.
    pub batch_tokens: usize,
    /// Keep only the first N tokens of a text (`None`: no limit, the default).
    pub max_tokens: Option<usize>,
}

impl SkipThoughtConfig {
    /// Defaults (batches of at most 64 texts and 4,096 padded tokens, no token limit).
    pub fn new(model_dir: impl Into<PathBuf>, variant: SkipThoughtVariant) -> Self {
        Self {
            model_dir: model_dir.into(),
            variant,
            batch_size: 64,
            batch_tokens: 4096,
            max_tokens: None,
        }
    }
}

/// Reads a whole file, returning its bytes and sha256 (hex).
fn read_hashed(path: &Path) -> Result<(Vec<u8>, String), EmbedError> {
    let bytes = std::fs::read(path).map_err(|e| EmbedError::io(path, e))?;
    let sha = hex::encode(Sha256::digest(&bytes));
    Ok((bytes, sha))
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Reads a plain float32 word table `[n_words, dim_word]` and hashes the whole file.
fn read_table(path: &Path, n_words: usize) -> Result<(NpyArray<f32>, String), EmbedError> {
    let file = std::fs::File::open(path).map_err(|e| EmbedError::io(path, e))?;
    let mut reader = HashingReader {
        inner: std::io::BufReader::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let table = read_npy::<f32, _>(&mut reader, path, &name)?;
    // Hash any trailing bytes too, so the digest covers the whole file.
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| EmbedError::io(path, e))?;
    let width = table.shape.get(1).copied().unwrap_or(0);
    if table.shape.len() != 2 || table.shape[0] != n_words || width == 0 {
        return Err(EmbedError::TensorShape {
            path: path.to_path_buf(),
            name,
            expected: vec![n_words, width.max(1)],
            found: table.shape,
        });
    }
    Ok((table, hex::encode(reader.hasher.finalize())))
}

/// One GRU direction's parameters as Burn tensors.
#[derive(Debug)]
struct GruParams {
    /// `[in, 2d]`
    w: Tensor<2>,
    /// `[1, 2d]`
    b: Tensor<2>,
    /// `[d, 2d]`
    u: Tensor<2>,
    /// `[in, d]`
    wx: Tensor<2>,
    /// `[1, d]`
    bx: Tensor<2>,
    /// `[d, d]`
    ux: Tensor<2>,
    dim: usize,
}

/// Reads the encoder members of one `.npz` archive.
struct NpzReader<'a> {
    archive: Npz<Cursor<Vec<u8>>>,
    path: &'a Path,
}

impl NpzReader<'_> {
    fn array(&mut self, key: &str) -> Result<NpyArray<f32>, EmbedError> {
        if !self.archive.contains(key) {
            return Err(EmbedError::TensorMissing {
                path: self.path.to_path_buf(),
                name: format!("{key}.npy"),
            });
        }
        Ok(self.archive.array::<f32>(key)?)
    }

    fn checked(&mut self, key: &str, expected: &[usize]) -> Result<Vec<f32>, EmbedError> {
        let a = self.array(key)?;
        if a.shape != expected {
            return Err(EmbedError::TensorShape {
                path: self.path.to_path_buf(),
                name: format!("{key}.npy"),
                expected: expected.to_vec(),
                found: a.shape,
            });
        }
        Ok(a.data)
    }

    /// One direction (`prefix` = `encoder` or `encoder_r`); the hidden width comes from
    /// `{prefix}_bx`.
    fn gru(
        &mut self,
        prefix: &str,
        dim_word: usize,
        device: &Device,
    ) -> Result<GruParams, EmbedError> {
        let bx = self.array(&format!("{prefix}_bx"))?;
        let [d] = bx.shape[..] else {
            return Err(EmbedError::TensorShape {
                path: self.path.to_path_buf(),
                name: format!("{prefix}_bx.npy"),
                expected: vec![bx.shape.iter().product::<usize>().max(1)],
                found: bx.shape,
            });
        };
        if d == 0 {
            return Err(FormatError::Npy {
                path: self.path.to_path_buf(),
                member: format!("{prefix}_bx.npy"),
                message: "hidden width is 0".into(),
            }
            .into());
        }
        let t = |v: Vec<f32>, shape: [usize; 2]| {
            Tensor::<2>::from_data(TensorData::new(v, shape), device)
        };
        let w = self.checked(&format!("{prefix}_W"), &[dim_word, 2 * d])?;
        let b = self.checked(&format!("{prefix}_b"), &[2 * d])?;
        let u = self.checked(&format!("{prefix}_U"), &[d, 2 * d])?;
        let wx = self.checked(&format!("{prefix}_Wx"), &[dim_word, d])?;
        let ux = self.checked(&format!("{prefix}_Ux"), &[d, d])?;
        Ok(GruParams {
            w: t(w, [dim_word, 2 * d]),
            b: t(b, [1, 2 * d]),
            u: t(u, [d, 2 * d]),
            wx: t(wx, [dim_word, d]),
            bx: t(bx.data, [1, d]),
            ux: t(ux, [d, d]),
            dim: d,
        })
    }
}

fn open_npz(bytes: Vec<u8>, path: &Path) -> Result<NpzReader<'_>, EmbedError> {
    let archive = Npz::new(Cursor::new(bytes), path)?;
    Ok(NpzReader { archive, path })
}

impl GruParams {
    /// Final states `[batch, d]` of sequences `x` (`[batch, steps, in]`, row-major) where
    /// row i has `lengths[i]` valid steps at the start; later steps are never read into the
    /// state.
    fn run(&self, x: Vec<f32>, lengths: &[usize], dim_word: usize, device: &Device) -> Tensor<2> {
        let batch = lengths.len();
        let steps = lengths.iter().copied().max().unwrap_or(0);
        let d = self.dim;
        let x = Tensor::<2>::from_data(TensorData::new(x, [batch * steps, dim_word]), device);
        let gates_x =
            (x.clone().matmul(self.w.clone()) + self.b.clone()).reshape([batch, steps, 2 * d]);
        let cand_x = (x.matmul(self.wx.clone()) + self.bx.clone()).reshape([batch, steps, d]);
        let mut h = Tensor::<2>::zeros([batch, d], device);
        for t in 0..steps {
            let a = gates_x.clone().narrow(1, t, 1).reshape([batch, 2 * d])
                + h.clone().matmul(self.u.clone());
            let r = sigmoid(a.clone().narrow(1, 0, d));
            let u = sigmoid(a.narrow(1, d, d));
            let cand = tanh(
                cand_x.clone().narrow(1, t, 1).reshape([batch, d])
                    + r * h.clone().matmul(self.ux.clone()),
            );
            let next = u.clone() * h.clone() + (u.neg().add_scalar(1.0)) * cand;
            if lengths.iter().all(|&l| l > t) {
                h = next;
            } else {
                let mask: Vec<f32> = lengths
                    .iter()
                    .map(|&l| if l > t { 1.0 } else { 0.0 })
                    .collect();
                let m = Tensor::<2>::from_data(TensorData::new(mask, [batch, 1]), device);
                h = m.clone() * next + m.neg().add_scalar(1.0) * h;
            }
        }
        h
    }
}

/// A word table (rows = dictionary entries).
struct WordTable {
    data: Vec<f32>,
    dim: usize,
}

impl std::fmt::Debug for WordTable {
    // The table has ~577 M values in the real model: show its shape only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WordTable")
            .field("rows", &self.data.len().checked_div(self.dim).unwrap_or(0))
            .field("dim", &self.dim)
            .finish()
    }
}

impl WordTable {
    /// `[batch, steps, dim]` inputs: row i holds the vectors of `seqs[i]` then zeros.
    fn gather(&self, seqs: &[Vec<u32>], reverse: bool) -> Vec<f32> {
        let steps = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let dim = self.dim;
        let mut x = vec![0.0f32; seqs.len() * steps * dim];
        for (row, seq) in seqs.iter().enumerate() {
            for (t, &id) in seq.iter().enumerate() {
                let id = if reverse { seq[seq.len() - 1 - t] } else { id } as usize;
                let dst = (row * steps + t) * dim;
                x[dst..dst + dim].copy_from_slice(&self.data[id * dim..(id + 1) * dim]);
            }
        }
        x
    }
}

/// uni-skip / bi-skip / combine-skip sentence encoder.
#[derive(Debug)]
pub struct SkipThoughtEncoder {
    variant: SkipThoughtVariant,
    words: HashMap<String, u32>,
    unk: u32,
    uni: Option<(WordTable, GruParams)>,
    bi: Option<(WordTable, GruParams, GruParams)>,
    device: Device,
    identity: EncoderIdentity,
    batch_size: usize,
    batch_tokens: usize,
    max_tokens: Option<usize>,
}

/// One tokenised text.
struct Encoded {
    ids: Vec<u32>,
    truncated: bool,
}

impl SkipThoughtEncoder {
    /// Loads the model on Burn's CPU backend (flex).
    ///
    /// # Errors
    /// See [`Self::load_on`].
    pub fn load(config: &SkipThoughtConfig) -> Result<Self, EmbedError> {
        Self::load_on(config, Device::flex())
    }

    /// Loads the files the variant needs from `config.model_dir` onto `device`.
    ///
    /// # Errors
    /// [`EmbedError::SkipThoughtFilesMissing`] listing every missing file;
    /// [`EmbedError::Config`] for a zero batch size or token limit;
    /// [`EmbedError::ModelConfig`] for a dictionary without `UNK`; [`EmbedError::Format`],
    /// [`EmbedError::TensorMissing`] or [`EmbedError::TensorShape`] (naming the archive,
    /// the member and both shapes) for files that do not fit; [`EmbedError::Io`].
    pub fn load_on(config: &SkipThoughtConfig, device: Device) -> Result<Self, EmbedError> {
        if config.batch_size == 0 || config.batch_tokens == 0 {
            return Err(EmbedError::Config(
                "batch_size and batch_tokens must be at least 1".into(),
            ));
        }
        if config.max_tokens == Some(0) {
            return Err(EmbedError::Config("max_tokens must be at least 1".into()));
        }
        let dir = &config.model_dir;
        let variant = config.variant;
        let pick = |names: [&str; 2]| names.iter().map(|n| dir.join(n)).find(|p| p.is_file());
        let mut expected = vec![DICTIONARY_FILE.to_string()];
        let mut missing = Vec::new();
        if !dir.join(DICTIONARY_FILE).is_file() {
            missing.push(DICTIONARY_FILE.to_string());
        }
        let mut need = |table: [&str; 2], npz: &str| {
            let t = pick(table);
            expected.push(format!("{} (or {})", table[0], table[1]));
            expected.push(npz.to_string());
            if t.is_none() {
                missing.push(table[0].to_string());
            }
            if !dir.join(npz).is_file() {
                missing.push(npz.to_string());
            }
            t
        };
        let utable_path = if variant.uses_uni() {
            need(UTABLE_FILES, UNI_SKIP_FILE)
        } else {
            None
        };
        let btable_path = if variant.uses_bi() {
            need(BTABLE_FILES, BI_SKIP_FILE)
        } else {
            None
        };
        if !missing.is_empty() {
            return Err(EmbedError::SkipThoughtFilesMissing {
                dir: dir.clone(),
                missing,
                expected,
            });
        }

        let dict_path = dir.join(DICTIONARY_FILE);
        let (dict_bytes, dict_sha) = read_hashed(&dict_path)?;
        let dict_text = String::from_utf8(dict_bytes).map_err(|_| EmbedError::ModelConfig {
            path: dict_path.clone(),
            message: "not valid UTF-8".into(),
        })?;
        let mut words = HashMap::new();
        let mut n_words = 0u32;
        for line in dict_text.lines() {
            // Later duplicates win, as in the original `OrderedDict(zip(words, table))`.
            words.insert(line.trim().to_string(), n_words);
            n_words += 1;
        }
        drop(dict_text);
        let unk = *words.get(UNK).ok_or_else(|| EmbedError::ModelConfig {
            path: dict_path.clone(),
            message: format!("the dictionary has no `{UNK}` entry"),
        })?;
        let mut hashes = vec![(DICTIONARY_FILE.to_string(), dict_sha)];
        let file_name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };

        let mut uni = None;
        if let Some(table_path) = utable_path {
            let (table, sha) = read_table(&table_path, n_words as usize)?;
            hashes.push((file_name(&table_path), sha));
            let npz_path = dir.join(UNI_SKIP_FILE);
            let (bytes, sha) = read_hashed(&npz_path)?;
            hashes.push((UNI_SKIP_FILE.to_string(), sha));
            let dim_word = table.shape[1];
            let gru = open_npz(bytes, &npz_path)?.gru("encoder", dim_word, &device)?;
            uni = Some((
                WordTable {
                    data: table.data,
                    dim: dim_word,
                },
                gru,
            ));
        }
        let mut bi = None;
        if let Some(table_path) = btable_path {
            let (table, sha) = read_table(&table_path, n_words as usize)?;
            hashes.push((file_name(&table_path), sha));
            let npz_path = dir.join(BI_SKIP_FILE);
            let (bytes, sha) = read_hashed(&npz_path)?;
            hashes.push((BI_SKIP_FILE.to_string(), sha));
            let dim_word = table.shape[1];
            let mut npz = open_npz(bytes, &npz_path)?;
            let forward = npz.gru("encoder", dim_word, &device)?;
            let backward = npz.gru("encoder_r", dim_word, &device)?;
            bi = Some((
                WordTable {
                    data: table.data,
                    dim: dim_word,
                },
                forward,
                backward,
            ));
        }

        let uni_dim = uni.as_ref().map_or(0, |(_, g)| g.dim);
        let bi_dim = bi.as_ref().map_or(0, |(_, f, b)| f.dim + b.dim);
        let summary: String = hashes
            .iter()
            .map(|(name, sha)| format!("{name} {sha}\n"))
            .collect();
        let identity = EncoderIdentity {
            name: format!("skipthought-{}-v1", variant.as_str()),
            weights_sha256: Some(hex::encode(Sha256::digest(summary.as_bytes()))),
            dim: uni_dim + bi_dim,
            normalization: format!(
                "{};ptb-cased-unk-noeos;max_tokens={}",
                crate::text::NORMALIZATION_VERSION,
                config
                    .max_tokens
                    .map_or_else(|| "none".to_string(), |n| n.to_string())
            ),
        };
        tracing::info!(
            dir = %dir.display(),
            variant = variant.as_str(),
            words = n_words,
            dim = identity.dim,
            "loaded Skip-Thought"
        );
        Ok(Self {
            variant,
            words,
            unk,
            uni,
            bi,
            device,
            identity,
            batch_size: config.batch_size,
            batch_tokens: config.batch_tokens,
            max_tokens: config.max_tokens,
        })
    }

    /// uni, bi or combine.
    pub fn variant(&self) -> SkipThoughtVariant {
        self.variant
    }

    /// Dictionary ids of the tokens of `text` (`UNK` for unknown words), before truncation.
    pub fn token_ids(&self, text: &str) -> Vec<u32> {
        tokenize(text)
            .iter()
            .map(|t| self.words.get(t.as_str()).copied().unwrap_or(self.unk))
            .collect()
    }

    /// Runs one batch; returns `[rows.len() * dim]` values.
    fn run_batch(&self, seqs: &[Vec<u32>]) -> Result<Vec<f32>, EmbedError> {
        let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
        let mut parts: Vec<(Vec<f32>, usize)> = Vec::new();
        if let Some((table, gru)) = &self.uni {
            let h = gru.run(table.gather(seqs, false), &lengths, table.dim, &self.device);
            parts.push((read_back(h)?, gru.dim));
        }
        if let Some((table, forward, backward)) = &self.bi {
            let f = forward.run(table.gather(seqs, false), &lengths, table.dim, &self.device);
            let b = backward.run(table.gather(seqs, true), &lengths, table.dim, &self.device);
            let both = Tensor::cat(vec![f, b], 1);
            parts.push((read_back(both)?, forward.dim + backward.dim));
        }
        let dim = self.identity.dim;
        let mut out = vec![0.0f32; seqs.len() * dim];
        for (row, dst) in out.chunks_exact_mut(dim).enumerate() {
            let mut offset = 0;
            for (values, width) in &parts {
                let part = &mut dst[offset..offset + width];
                part.copy_from_slice(&values[row * width..(row + 1) * width]);
                let norm = part.iter().map(|v| v * v).sum::<f32>().sqrt();
                if norm > 0.0 {
                    part.iter_mut().for_each(|v| *v /= norm);
                }
                offset += width;
            }
        }
        Ok(out)
    }
}

fn read_back(t: Tensor<2>) -> Result<Vec<f32>, EmbedError> {
    t.try_into_data()
        .map_err(|e| EmbedError::Backend(format!("{e:?}")))?
        .try_into_vec::<f32>()
        .map_err(|e| EmbedError::Backend(format!("{e:?}")))
}

impl TextEncoder for SkipThoughtEncoder {
    fn identity(&self) -> &EncoderIdentity {
        &self.identity
    }

    fn max_tokens(&self) -> Option<usize> {
        self.max_tokens
    }

    fn encode_batch(&self, texts: &[&str]) -> Result<EmbeddingBatch, EmbedError> {
        let texts = normalize_batch(texts)?;
        let encoded: Vec<Encoded> = texts
            .par_iter()
            .map(|t| {
                let mut ids = self.token_ids(t);
                let truncated = self.max_tokens.is_some_and(|n| ids.len() > n);
                if let Some(n) = self.max_tokens {
                    ids.truncate(n);
                }
                Encoded { ids, truncated }
            })
            .collect();
        if let Some(index) = encoded.iter().position(|e| e.ids.is_empty()) {
            return Err(EmbedError::EmptyText { index });
        }
        let truncated: Vec<usize> = (0..encoded.len())
            .filter(|&i| encoded[i].truncated)
            .collect();
        let mut order: Vec<usize> = (0..encoded.len()).collect();
        order.sort_by_key(|&i| encoded[i].ids.len());
        let dim = self.identity.dim;
        let mut data = vec![0.0f32; encoded.len() * dim];
        let lengths: Vec<usize> = order.iter().map(|&i| encoded[i].ids.len()).collect();
        for range in crate::text::token_budget_batches(&lengths, self.batch_size, self.batch_tokens)
        {
            let chunk = &order[range];
            let seqs: Vec<Vec<u32>> = chunk.iter().map(|&i| encoded[i].ids.clone()).collect();
            let out = self.run_batch(&seqs)?;
            for (&i, v) in chunk.iter().zip(out.chunks_exact(dim)) {
                data[i * dim..(i + 1) * dim].copy_from_slice(v);
            }
        }
        Ok(EmbeddingBatch {
            dim,
            data,
            truncated,
        })
    }
}
