//! The embed stage: every caption, every whole dialogue and every dialogue turn of an ingested
//! dataset through the configured encoders, via the cache, into `embeddings.parquet`.
//!
//! Policies (the same for every encoder; see the crate docs for the encoder side):
//! - **Empty texts**: an empty caption is an error naming the image (ingest should have
//!   quarantined it); an empty turn is skipped and counted (`empty_turns_skipped`).
//! - **Truncation**: an encoder with a token limit keeps the first `max_tokens` tokens of a
//!   longer text (MiniLM: 128 word pieces with `[CLS]`/`[SEP]`; a whole 10-turn VisDial
//!   dialogue is ≈90). Truncated texts are counted per kind in the report and listed in the
//!   summary next to the limit, never silently.
//! - **Non-ASCII** text is kept as is (whitespace collapsed only); each encoder handles it in
//!   its own way (MiniLM's tokenizer strips accents, hashing hashes UTF-8 bytes).
//! - **Precomputed captions** (`kind = "char-cnn-rnn"`): vectors come from StackGAN's pickles by
//!   image id, caption `k` of the pickle being caption `k` of the record (COCO annotation
//!   order). An image without an entry, or whose vector count differs from its caption count,
//!   is quarantined: left out of `embeddings.parquet` and listed in the report (file, image,
//!   field, reason). All images quarantined is an error (most likely the wrong pickle).
//!
//! Memory: the cache keeps an index only; the output is assembled through a scratch file
//! (vectors written at their occurrence slot part by part, then read back in image order) and
//! written a row group at a time, so neither cache nor table has to fit in memory;
//! [`verify_file`] streams the table the same way.

use crate::cache::{EncoderCache, FillStats, Key, key_of};
use chatpainter_artifacts::Progress;
use chatpainter_formats::embeddings::{ImageEmbeddings, TableWriter};
use chatpainter_formats::ingested::Record;
use chatpainter_model::DeviceChoice;
use chatpainter_model::text::charcnn::FileDigest;
use chatpainter_model::text::{
    EmbedError, EncoderSettings, EncoderSpec, Encoders, dialogue_text, normalize_whitespace,
    turn_text,
};
use serde::{Deserialize, Serialize};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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

/// An image left out of `embeddings.parquet`, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quarantined {
    pub image_id: i64,
    pub split: String,
    pub file_name: String,
    /// The record field concerned, e.g. `captions`.
    pub field: String,
    /// The file that could not serve it.
    pub source: PathBuf,
    pub reason: String,
}

/// What a build did, for the manifest and the console.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EmbedReport {
    /// Images written to `embeddings.parquet`.
    pub images: usize,
    pub captions: FillStats,
    pub dialogues: FillStats,
    pub turns: FillStats,
    /// Turns whose text was empty (nothing to encode): left out of `turns`.
    pub empty_turns_skipped: usize,
    /// Token limits of the caption and dialogue encoders (`None`: never truncates).
    #[serde(default)]
    pub caption_max_tokens: Option<usize>,
    #[serde(default)]
    pub dialogue_max_tokens: Option<usize>,
    /// Precomputed caption files with their sha256 (char-CNN-RNN); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caption_files: Vec<FileDigest>,
    /// Images left out, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<Quarantined>,
}

impl EmbedReport {
    pub fn summary(&self) -> String {
        let line = |name: &str, s: &FillStats| {
            format!(
                "  {name:<10} {:>8} distinct texts: {:>8} reused from cache, {:>8} encoded ({} truncated)\n",
                s.distinct, s.reused, s.encoded, s.truncated
            )
        };
        let limit = |n: Option<usize>| match n {
            Some(n) => format!("first {n} tokens kept"),
            None => "no limit".to_string(),
        };
        let mut out = format!(
            "embed: {} images\n{}{}{}  empty turns skipped: {}\n  truncation: captions {}, dialogues and turns {}\n",
            self.images,
            line("captions", &self.captions),
            line("dialogues", &self.dialogues),
            line("turns", &self.turns),
            self.empty_turns_skipped,
            limit(self.caption_max_tokens),
            limit(self.dialogue_max_tokens),
        );
        if !self.quarantined.is_empty() {
            out.push_str(&format!(
                "  quarantined: {} images (first: image {} {}: {})\n",
                self.quarantined.len(),
                self.quarantined[0].image_id,
                self.quarantined[0].field,
                self.quarantined[0].reason
            ));
        }
        out
    }
}

/// The texts of one record, normalised: captions, whole dialogue, turns.
struct Texts {
    captions: Vec<String>,
    dialogue: Option<String>,
    turns: Vec<String>,
}

fn texts_of(r: &Record, empty_turns: &mut usize) -> Result<Texts, EmbedError> {
    let captions: Vec<String> = r.captions.iter().map(|c| normalize_whitespace(c)).collect();
    if let Some(k) = captions.iter().position(String::is_empty) {
        return Err(EmbedError::Config(format!(
            "image {} ({}, {}): caption #{k} is empty after whitespace normalisation (ingest should have quarantined it)",
            r.image_id, r.split, r.file_name
        )));
    }
    let (dialogue, turns) = match &r.dialogue {
        None => (None, Vec::new()),
        Some(d) => {
            let pairs: Vec<(&str, &str)> = d
                .turns
                .iter()
                .map(|t| (t.question.as_str(), t.answer.as_deref().unwrap_or("")))
                .collect();
            let turns: Vec<String> = pairs.iter().map(|(q, a)| turn_text(q, a)).collect();
            *empty_turns += turns.iter().filter(|t| t.is_empty()).count();
            let whole = dialogue_text(&pairs);
            (
                (!whole.is_empty()).then_some(whole),
                turns.into_iter().filter(|t| !t.is_empty()).collect(),
            )
        }
    };
    Ok(Texts {
        captions,
        dialogue,
        turns,
    })
}

/// Vectors written at arbitrary slots, read back in slot order: how the output is assembled
/// from cache parts without holding them. Anonymous temporary file, gone when dropped.
struct Scratch {
    file: std::fs::File,
    dim: usize,
}

impl Scratch {
    fn new(dir: &Path, dim: usize) -> Result<Self, EmbedError> {
        let file = tempfile::tempfile_in(dir).map_err(|e| EmbedError::io(dir, e))?;
        Ok(Self { file, dim })
    }

    fn put(&mut self, slot: usize, vector: &[f32], dir: &Path) -> Result<(), EmbedError> {
        let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.file
            .seek(SeekFrom::Start((slot * self.dim * 4) as u64))
            .and_then(|_| self.file.write_all(&bytes))
            .map_err(|e| EmbedError::io(dir, e))
    }

    fn reader(mut self, dir: &Path) -> Result<ScratchReader, EmbedError> {
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| EmbedError::io(dir, e))?;
        Ok(ScratchReader {
            reader: BufReader::with_capacity(1 << 20, self.file),
            dim: self.dim,
            buf: vec![0u8; self.dim * 4],
        })
    }
}

struct ScratchReader {
    reader: BufReader<std::fs::File>,
    dim: usize,
    buf: Vec<u8>,
}

impl ScratchReader {
    fn next(&mut self, dir: &Path) -> Result<Vec<f32>, EmbedError> {
        self.reader
            .read_exact(&mut self.buf)
            .map_err(|e| EmbedError::io(dir, e))?;
        let mut v = Vec::with_capacity(self.dim);
        v.extend(
            self.buf
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        Ok(v)
    }
}

/// Fills a scratch file with the vectors of `keys` (one slot per occurrence, in order),
/// reading the cache part by part.
fn scatter(cache: &EncoderCache, keys: &[Key], dir: &Path) -> Result<ScratchReader, EmbedError> {
    let mut scratch = Scratch::new(dir, cache.identity().dim)?;
    cache.gather(keys, |slot, v| scratch.put(slot, v, dir))?;
    scratch.reader(dir)
}

/// Images per row group: about 64 MiB of vectors, between 16 and 1,024 images.
fn rows_per_group(caption_dim: usize, dialogue_dim: usize) -> usize {
    // A COCO image has ~5 captions; a VisDial dialogue 1 whole + 10 turns.
    let bytes = 4 * (5 * caption_dim + 11 * dialogue_dim);
    ((64 << 20) / bytes.max(1)).clamp(16, 1024)
}

/// Encodes what the cache lacks and writes `out` (`embeddings.parquet`).
pub fn build(
    cfg: &EmbedConfig,
    encoders: &Encoders,
    records: &[Record],
    cache_dir: &Path,
    out: &Path,
    progress: &dyn Progress,
) -> Result<EmbedReport, EmbedError> {
    let mut report = EmbedReport {
        caption_max_tokens: encoders.caption.max_tokens(),
        dialogue_max_tokens: encoders.dialogue.max_tokens(),
        ..Default::default()
    };
    let mut texts = Vec::with_capacity(records.len());
    for r in records {
        texts.push(texts_of(r, &mut report.empty_turns_skipped)?);
    }

    // Precomputed captions: look every image up first, so the quarantined ones are known
    // before anything is encoded for them.
    let precomputed = match encoders.caption.precomputed() {
        Some(source) => {
            report.caption_files = source.files().to_vec();
            let vectors = source.load()?;
            let pickle = source
                .files()
                .first()
                .map(|f| f.path.clone())
                .unwrap_or_default();
            for (r, t) in records.iter().zip(&texts) {
                let reason = match vectors.get(&r.image_id) {
                    None => Some("no entry in the char-CNN-RNN filenames pickle".to_string()),
                    Some(v) if v.len() != t.captions.len() => Some(format!(
                        "the pickle holds {} caption vectors, the record {} captions",
                        v.len(),
                        t.captions.len()
                    )),
                    Some(_) => None,
                };
                if let Some(reason) = reason {
                    report.quarantined.push(Quarantined {
                        image_id: r.image_id,
                        split: r.split.clone(),
                        file_name: r.file_name.clone(),
                        field: "captions".into(),
                        source: pickle.clone(),
                        reason,
                    });
                }
            }
            if !records.is_empty() && report.quarantined.len() == records.len() {
                let q = &report.quarantined[0];
                return Err(EmbedError::Pickle {
                    path: pickle,
                    message: format!(
                        "none of the {} images can be served (first: image {} {}: {}); wrong pickle for this dataset?",
                        records.len(),
                        q.image_id,
                        q.file_name,
                        q.reason
                    ),
                });
            }
            for q in report.quarantined.iter().take(5) {
                tracing::warn!(image_id = q.image_id, file = %q.file_name, reason = %q.reason, "quarantined");
            }
            Some(vectors)
        }
        None => None,
    };
    let quarantined: std::collections::HashSet<(i64, &str)> = report
        .quarantined
        .iter()
        .map(|q| (q.image_id, q.split.as_str()))
        .collect();
    let kept: Vec<(&Record, &Texts)> = records
        .iter()
        .zip(&texts)
        .filter(|(r, _)| !quarantined.contains(&(r.image_id, r.split.as_str())))
        .collect();
    report.images = kept.len();

    // Every occurrence, in output order: these are the scratch slots.
    let caption_keys: Vec<Key> = if precomputed.is_some() {
        Vec::new()
    } else {
        kept.iter()
            .flat_map(|(_, t)| t.captions.iter().map(|c| key_of(c)))
            .collect()
    };
    let dialogue_texts: Vec<&String> = kept
        .iter()
        .flat_map(|(_, t)| t.dialogue.iter().chain(&t.turns))
        .collect();
    let dialogue_keys: Vec<Key> = dialogue_texts.iter().map(|t| key_of(t)).collect();

    let mut caption_cache = if precomputed.is_none() {
        let mut cache = EncoderCache::open(cache_dir, encoders.caption.identity())?;
        let captions: Vec<String> = kept
            .iter()
            .flat_map(|(_, t)| t.captions.iter().cloned())
            .collect();
        report.captions = cache.fill(
            encoders.caption.as_ref(),
            &captions,
            cfg.batch_size,
            cfg.part_size,
            progress,
        )?;
        Some(cache)
    } else {
        let n = kept.iter().map(|(_, t)| t.captions.len()).sum();
        report.captions = FillStats {
            distinct: n,
            reused: n,
            ..Default::default()
        };
        None
    };
    let same = encoders.caption.identity() == encoders.dialogue.identity();
    let mut own_dialogue_cache = match (&caption_cache, same) {
        (Some(_), true) => None,
        _ => Some(EncoderCache::open(cache_dir, encoders.dialogue.identity())?),
    };
    let dcache = match own_dialogue_cache.as_mut() {
        Some(c) => c,
        None => caption_cache
            .as_mut()
            .ok_or_else(|| EmbedError::Config("internal: no dialogue cache".into()))?,
    };
    let dialogues: Vec<String> = kept
        .iter()
        .filter_map(|(_, t)| t.dialogue.clone())
        .collect();
    let turns: Vec<String> = kept
        .iter()
        .flat_map(|(_, t)| t.turns.iter().cloned())
        .collect();
    report.dialogues = dcache.fill(
        encoders.dialogue.as_ref(),
        &dialogues,
        cfg.batch_size,
        cfg.part_size,
        progress,
    )?;
    report.turns = dcache.fill(
        encoders.dialogue.as_ref(),
        &turns,
        cfg.batch_size,
        cfg.part_size,
        progress,
    )?;
    drop((dialogues, turns));

    // Assemble: cache parts → scratch slots → row groups in image order.
    let scratch_dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dcache = own_dialogue_cache
        .as_ref()
        .or(caption_cache.as_ref())
        .ok_or_else(|| EmbedError::Config("internal: no dialogue cache".into()))?;
    let mut caption_reader = match &caption_cache {
        Some(cache) => Some(scatter(cache, &caption_keys, scratch_dir)?),
        None => None,
    };
    let mut dialogue_reader = scatter(dcache, &dialogue_keys, scratch_dir)?;
    let (dc, dd) = (encoders.caption.dim(), encoders.dialogue.dim());
    let mut writer = TableWriter::create(
        out,
        encoders.caption.identity(),
        encoders.dialogue.identity(),
    )?;
    let chunk = rows_per_group(dc, dd);
    let mut rows = Vec::with_capacity(chunk);
    for (r, t) in &kept {
        let captions = match (&precomputed, caption_reader.as_mut()) {
            (Some(map), _) => map.get(&r.image_id).cloned().unwrap_or_default(),
            (None, Some(reader)) => (0..t.captions.len())
                .map(|_| reader.next(scratch_dir))
                .collect::<Result<_, _>>()?,
            (None, None) => Vec::new(),
        };
        let dialogue = match t.dialogue {
            Some(_) => Some(dialogue_reader.next(scratch_dir)?),
            None => None,
        };
        let turns = (0..t.turns.len())
            .map(|_| dialogue_reader.next(scratch_dir))
            .collect::<Result<_, _>>()?;
        rows.push(ImageEmbeddings {
            image_id: r.image_id,
            split: r.split.clone(),
            captions,
            dialogue,
            turns,
        });
        if rows.len() == chunk {
            writer.write(&rows)?;
            rows.clear();
        }
    }
    writer.write(&rows)?;
    writer.finish()?;
    Ok(report)
}

/// Result of [`verify`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub checked: usize,
    pub max_abs_diff: f32,
    pub worst_text: String,
}

/// Which vector of an image a sampled text is.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Caption(usize),
    Dialogue,
    Turn(usize),
}

/// `n` texts drawn at random (seeded) from the dataset: (record index, slot, text).
fn sample(
    encoders: &Encoders,
    records: &[Record],
    n: usize,
    seed: u64,
) -> Result<Vec<(usize, Slot, String)>, EmbedError> {
    if encoders.caption.precomputed().is_some() {
        return Err(EmbedError::CannotEncode {
            encoder: chatpainter_model::text::charcnn::CHAR_CNN_RNN_NAME.into(),
            what: "`--verify` would re-encode captions; their vectors are copies of the pickles, whose sha256 the manifest records".into(),
        });
    }
    let mut empty = 0;
    let mut pool = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let t = texts_of(r, &mut empty)?;
        pool.extend(
            t.captions
                .into_iter()
                .enumerate()
                .map(|(k, s)| (i, Slot::Caption(k), s)),
        );
        pool.extend(t.dialogue.map(|s| (i, Slot::Dialogue, s)));
        pool.extend(
            t.turns
                .into_iter()
                .enumerate()
                .map(|(k, s)| (i, Slot::Turn(k), s)),
        );
    }
    // A seeded partial Fisher-Yates: the same sample on every machine.
    let mut rng = chatpainter_artifacts::SplitMix::new(seed);
    let n = n.min(pool.len());
    for i in 0..n {
        let j = i + rng.below(pool.len() - i);
        pool.swap(i, j);
    }
    pool.truncate(n);
    Ok(pool)
}

fn stored_vector(row: &ImageEmbeddings, slot: Slot) -> Option<&Vec<f32>> {
    match slot {
        Slot::Caption(k) => row.captions.get(k),
        Slot::Dialogue => row.dialogue.as_ref(),
        Slot::Turn(k) => row.turns.get(k),
    }
}

/// Encodes the sample (one batch per encoder) and compares it with the stored vectors.
fn compare(
    encoders: &Encoders,
    sampled: &[(usize, Slot, String)],
    stored: &[Vec<f32>],
) -> Result<VerifyReport, EmbedError> {
    let mut report = VerifyReport {
        checked: sampled.len(),
        max_abs_diff: 0.0,
        worst_text: String::new(),
    };
    for captions in [true, false] {
        let picked: Vec<usize> = (0..sampled.len())
            .filter(|&i| matches!(sampled[i].1, Slot::Caption(_)) == captions)
            .collect();
        if picked.is_empty() {
            continue;
        }
        let encoder = if captions {
            &encoders.caption
        } else {
            &encoders.dialogue
        };
        let texts: Vec<&str> = picked.iter().map(|&i| sampled[i].2.as_str()).collect();
        let fresh = encoder.encode_batch(&texts)?;
        for (row, &i) in fresh.rows().zip(&picked) {
            let diff = row
                .iter()
                .zip(&stored[i])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            if diff >= report.max_abs_diff {
                report.max_abs_diff = diff;
                report.worst_text.clone_from(&sampled[i].2);
            }
        }
    }
    Ok(report)
}

fn not_in_table(r: &Record, slot: Slot) -> EmbedError {
    EmbedError::Config(format!(
        "embeddings table has no {slot:?} vector for image {} ({}); rebuild the embed stage",
        r.image_id, r.split
    ))
}

/// Re-encodes `n` texts drawn at random (seeded) from the dataset and compares them with the
/// vectors in `table` (the built table, in memory; see [`verify_file`] for large tables).
///
/// # Errors
/// [`EmbedError::CannotEncode`] when the captions come from precomputed char-CNN-RNN files:
/// those cannot be re-encoded (their identity is the pickles' sha256, checked by the stage
/// key instead); a sampled text without a vector in the table.
pub fn verify(
    encoders: &Encoders,
    records: &[Record],
    table: &chatpainter_formats::embeddings::EmbeddingTable,
    n: usize,
    seed: u64,
) -> Result<VerifyReport, EmbedError> {
    let sampled = sample(encoders, records, n, seed)?;
    let rows: std::collections::HashMap<(i64, &str), &ImageEmbeddings> = table
        .rows
        .iter()
        .map(|r| ((r.image_id, r.split.as_str()), r))
        .collect();
    let stored = sampled
        .iter()
        .map(|&(i, slot, _)| {
            let r = &records[i];
            rows.get(&(r.image_id, r.split.as_str()))
                .and_then(|row| stored_vector(row, slot))
                .cloned()
                .ok_or_else(|| not_in_table(r, slot))
        })
        .collect::<Result<Vec<_>, _>>()?;
    compare(encoders, &sampled, &stored)
}

/// [`verify`] against `embeddings.parquet` read one row group at a time, keeping only the
/// sampled vectors: what `chatpainter embed --verify N` runs, whatever the table's size.
///
/// # Errors
/// As [`verify`], plus the table's read and contract errors.
pub fn verify_file(
    encoders: &Encoders,
    records: &[Record],
    path: &Path,
    n: usize,
    seed: u64,
) -> Result<VerifyReport, EmbedError> {
    let sampled = sample(encoders, records, n, seed)?;
    let mut wanted: std::collections::HashMap<(i64, &str), Vec<usize>> =
        std::collections::HashMap::new();
    for (s, &(i, _, _)) in sampled.iter().enumerate() {
        let r = &records[i];
        wanted
            .entry((r.image_id, r.split.as_str()))
            .or_default()
            .push(s);
    }
    let mut stored: Vec<Option<Vec<f32>>> = vec![None; sampled.len()];
    chatpainter_formats::embeddings::for_each_row(path, |row| {
        if let Some(list) = wanted.get(&(row.image_id, row.split.as_str())) {
            for &s in list {
                stored[s] = stored_vector(&row, sampled[s].1).cloned();
            }
        }
        Ok(())
    })?;
    let stored = stored
        .into_iter()
        .zip(&sampled)
        .map(|(v, &(i, slot, _))| v.ok_or_else(|| not_in_table(&records[i], slot)))
        .collect::<Result<Vec<_>, _>>()?;
    compare(encoders, &sampled, &stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatpainter_artifacts::NoProgress;
    use chatpainter_formats::ingested::{Dialogue, Turn};

    fn record(id: i64, caption: &str) -> Record {
        Record {
            image_id: id,
            split: "train".into(),
            file_name: format!("train2014/{id}.jpg"),
            width: 10,
            height: 10,
            captions: vec![caption.into(), format!("{caption} again")],
            dialogue: Some(Dialogue {
                caption: caption.into(),
                source: "1.0/train".into(),
                turns: vec![
                    Turn {
                        question: "is it red?".into(),
                        answer: Some("yes".into()),
                    },
                    Turn {
                        question: format!("what is {id}?"),
                        answer: None,
                    },
                ],
            }),
        }
    }

    fn cfg(dim: usize) -> EmbedConfig {
        EmbedConfig {
            caption_encoder: EncoderSpec::Hashing { dim },
            dialogue_encoder: EncoderSpec::Hashing { dim: dim + 1 },
            cache_dir: String::new(),
            batch_size: 3,
            part_size: 2,
            device: Default::default(),
            batch_tokens: None,
        }
    }

    #[test]
    fn incremental_rebuild_encodes_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, out) = (dir.path().join("cache"), dir.path().join("e.parquet"));
        let mut records: Vec<Record> = (0..10)
            .map(|i| record(i, &format!("a picture number {i}")))
            .collect();
        let c = cfg(8);
        let enc = Encoders::load(&c.encoders()).unwrap();
        let first = build(&c, &enc, &records, &cache, &out, &NoProgress).unwrap();
        assert_eq!(
            (
                first.captions.distinct,
                first.captions.encoded,
                first.captions.reused
            ),
            (20, 20, 0)
        );
        // "is it red? yes" is shared by every dialogue: one distinct turn text for it.
        assert_eq!(first.turns.distinct, 11);
        let table = chatpainter_formats::embeddings::read(&out).unwrap();
        assert_eq!(table.rows.len(), 10);
        assert_eq!(table.rows[3].turns.len(), 2);
        assert_eq!(table.rows[3].captions[1].len(), 8);
        assert_eq!(table.rows[3].dialogue.as_ref().unwrap().len(), 9);
        // The non-recurrent string is the turns joined, caption excluded.
        let expected = enc
            .dialogue
            .encode_batch(&["is it red? yes what is 3?"])
            .unwrap();
        assert_eq!(table.rows[3].dialogue.as_ref().unwrap(), &expected.data);

        // Edit one caption, add one image: only those texts are encoded.
        records[4].captions[0] = "an edited caption".into();
        records.push(record(10, "a new picture"));
        let second = build(&c, &enc, &records, &cache, &out, &NoProgress).unwrap();
        assert_eq!(second.captions.encoded, 3, "{second:?}");
        assert_eq!(second.captions.reused, 19);
        assert_eq!((second.dialogues.encoded, second.turns.encoded), (1, 1));

        let table = chatpainter_formats::embeddings::read(&out).unwrap();
        let check = verify(&enc, &records, &table, 15, 7).unwrap();
        assert_eq!(check.checked, 15);
        assert_eq!(check.max_abs_diff, 0.0);
        // The streaming form draws the same sample and finds the same vectors.
        assert_eq!(verify_file(&enc, &records, &out, 15, 7).unwrap(), check);
        let mut tampered = table.clone();
        tampered.rows[0].captions[0][0] += 0.5;
        chatpainter_formats::embeddings::write(&out, &tampered).unwrap();
        let all = verify_file(&enc, &records, &out, 1000, 7).unwrap();
        assert!(all.max_abs_diff >= 0.5, "{all:?}");
    }

    #[test]
    fn a_killed_build_resumes_from_finished_parts() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, out) = (dir.path().join("cache"), dir.path().join("e.parquet"));
        let records: Vec<Record> = (0..6).map(|i| record(i, &format!("caption {i}"))).collect();
        let c = cfg(4);
        let enc = Encoders::load(&c.encoders()).unwrap();
        build(&c, &enc, &records, &cache, &out, &NoProgress).unwrap();
        // Lose the last caption part, as if the run had been killed before writing it.
        let folder = cache.join(enc.caption.identity().fingerprint());
        let mut parts: Vec<_> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        parts.sort();
        assert_eq!(parts.len(), 6, "12 captions in parts of 2");
        std::fs::remove_file(parts.last().unwrap()).unwrap();
        let again = build(&c, &enc, &records, &cache, &out, &NoProgress).unwrap();
        assert_eq!((again.captions.encoded, again.captions.reused), (2, 10));
    }

    #[test]
    fn skipthought_spec_parses_and_names_missing_files() {
        let spec: EncoderSpec = serde_json::from_value(
            serde_json::json!({"kind": "skipthought", "model_dir": "/no/such/dir"}),
        )
        .unwrap();
        assert_eq!(
            spec,
            EncoderSpec::Skipthought {
                model_dir: "/no/such/dir".into(),
                variant: chatpainter_model::text::SkipThoughtVariant::Combine
            }
        );
        let err = spec.load().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("/no/such/dir") && err.contains("dictionary.txt"),
            "{err}"
        );
    }

    #[test]
    fn switching_encoder_never_mixes_vectors() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, out) = (dir.path().join("cache"), dir.path().join("e.parquet"));
        let records: Vec<Record> = (0..3).map(|i| record(i, &format!("caption {i}"))).collect();
        for dim in [4, 6, 4] {
            let c = cfg(dim);
            let enc = Encoders::load(&c.encoders()).unwrap();
            let report = build(&c, &enc, &records, &cache, &out, &NoProgress).unwrap();
            let table = chatpainter_formats::embeddings::read(&out).unwrap();
            assert!(
                table
                    .rows
                    .iter()
                    .all(|r| r.captions.iter().all(|v| v.len() == dim))
            );
            assert_eq!(table.caption_encoder, *enc.caption.identity());
            // The second build with dim 4 reuses everything: its folder was kept apart.
            if dim == 4 && report.captions.reused > 0 {
                assert_eq!(report.captions.encoded, 0);
            }
        }
        assert_eq!(
            std::fs::read_dir(&cache).unwrap().count(),
            4,
            "one folder per encoder identity"
        );
    }
}
