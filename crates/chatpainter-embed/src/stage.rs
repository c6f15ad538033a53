//! The embed stage: every caption, every whole dialogue and every dialogue turn of an ingested
//! dataset through the configured encoders, via the cache, into `embeddings.parquet`.

use crate::cache::{EncoderCache, FillStats};
use crate::table::{EmbeddingTable, ImageEmbeddings};
use crate::{
    EmbedError, HashingEncoder, MiniLmConfig, MiniLmEncoder, TextEncoder, dialogue_text,
    normalize_whitespace, turn_text,
};
use chatpainter_artifacts::Progress;
use chatpainter_ingest::tables::Record;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which encoder, and how to load it.
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
        variant: crate::SkipThoughtVariant,
    },
}

fn default_skipthought_variant() -> crate::SkipThoughtVariant {
    crate::SkipThoughtVariant::Combine
}

fn default_max_tokens() -> usize {
    128
}

impl EncoderSpec {
    pub fn load(&self) -> Result<Box<dyn TextEncoder>, EmbedError> {
        Ok(match self {
            Self::Hashing { dim } => Box::new(HashingEncoder::new(*dim)?),
            Self::Minilm {
                model_dir,
                max_tokens,
            } => {
                let mut cfg = match model_dir {
                    Some(dir) => MiniLmConfig::new(dir),
                    None => MiniLmConfig::from_default_dir(),
                };
                cfg.max_tokens = *max_tokens;
                Box::new(MiniLmEncoder::load(&cfg)?)
            }
            Self::Skipthought { model_dir, variant } => Box::new(crate::SkipThoughtEncoder::load(
                &crate::SkipThoughtConfig::new(model_dir, *variant),
            )?),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedConfig {
    /// Encodes each caption.
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

/// What a build did, for the manifest and the console.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EmbedReport {
    pub images: usize,
    pub captions: FillStats,
    pub dialogues: FillStats,
    pub turns: FillStats,
    /// Turns whose text was empty (nothing to encode): left out of `turns`.
    pub empty_turns_skipped: usize,
}

impl EmbedReport {
    pub fn summary(&self) -> String {
        let line = |name: &str, s: &FillStats| {
            format!(
                "  {name:<10} {:>8} distinct texts: {:>8} reused from cache, {:>8} encoded ({} truncated)\n",
                s.distinct, s.reused, s.encoded, s.truncated
            )
        };
        format!(
            "embed: {} images\n{}{}{}  empty turns skipped: {}\n",
            self.images,
            line("captions", &self.captions),
            line("dialogues", &self.dialogues),
            line("turns", &self.turns),
            self.empty_turns_skipped
        )
    }
}

/// The texts of one record, normalised: captions, whole dialogue, turns.
struct Texts {
    captions: Vec<String>,
    dialogue: Option<String>,
    turns: Vec<String>,
}

fn texts_of(r: &Record, empty_turns: &mut usize) -> Texts {
    let captions = r.captions.iter().map(|c| normalize_whitespace(c)).collect();
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
    Texts {
        captions,
        dialogue,
        turns,
    }
}

/// The loaded encoders of a config (one instance when both specs are equal).
pub struct Encoders {
    pub caption: std::sync::Arc<dyn TextEncoder>,
    pub dialogue: std::sync::Arc<dyn TextEncoder>,
}

impl Encoders {
    pub fn load(cfg: &EmbedConfig) -> Result<Self, EmbedError> {
        let caption: std::sync::Arc<dyn TextEncoder> = cfg.caption_encoder.load()?.into();
        let dialogue = if cfg.dialogue_encoder == cfg.caption_encoder {
            caption.clone()
        } else {
            cfg.dialogue_encoder.load()?.into()
        };
        Ok(Self { caption, dialogue })
    }
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
        images: records.len(),
        ..Default::default()
    };
    let texts: Vec<Texts> = records
        .iter()
        .map(|r| texts_of(r, &mut report.empty_turns_skipped))
        .collect();
    let captions: Vec<String> = texts
        .iter()
        .flat_map(|t| t.captions.iter().cloned())
        .collect();
    let dialogues: Vec<String> = texts.iter().filter_map(|t| t.dialogue.clone()).collect();
    let turns: Vec<String> = texts.iter().flat_map(|t| t.turns.iter().cloned()).collect();

    let mut caption_cache = EncoderCache::open(cache_dir, encoders.caption.identity())?;
    report.captions = caption_cache.fill(
        encoders.caption.as_ref(),
        &captions,
        cfg.batch_size,
        cfg.part_size,
        progress,
    )?;
    let same = encoders.caption.identity() == encoders.dialogue.identity();
    let mut dialogue_cache = if same {
        None
    } else {
        Some(EncoderCache::open(cache_dir, encoders.dialogue.identity())?)
    };
    let dcache = dialogue_cache.as_mut().unwrap_or(&mut caption_cache);
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
    let dcache = dialogue_cache.as_ref().unwrap_or(&caption_cache);

    let lookup = |cache: &EncoderCache, text: &str| -> Result<Vec<f32>, EmbedError> {
        cache
            .get(text)
            .cloned()
            .ok_or_else(|| EmbedError::Config(format!("cache lost the vector of {text:?}")))
    };
    let mut rows = Vec::with_capacity(records.len());
    for (r, t) in records.iter().zip(&texts) {
        rows.push(ImageEmbeddings {
            image_id: r.image_id,
            split: r.split.clone(),
            captions: t
                .captions
                .iter()
                .map(|c| lookup(&caption_cache, c))
                .collect::<Result<_, _>>()?,
            dialogue: t
                .dialogue
                .as_deref()
                .map(|d| lookup(dcache, d))
                .transpose()?,
            turns: t
                .turns
                .iter()
                .map(|x| lookup(dcache, x))
                .collect::<Result<_, _>>()?,
        });
    }
    let table = EmbeddingTable {
        caption_encoder: encoders.caption.identity().clone(),
        dialogue_encoder: encoders.dialogue.identity().clone(),
        rows,
    };
    crate::table::write(out, &table)?;
    Ok(report)
}

/// Result of [`verify`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub checked: usize,
    pub max_abs_diff: f32,
    pub worst_text: String,
}

/// Re-encodes `n` texts drawn at random (seeded) from the dataset and compares them with the
/// vectors in `embeddings` (the built table).
pub fn verify(
    encoders: &Encoders,
    records: &[Record],
    table: &EmbeddingTable,
    n: usize,
    seed: u64,
) -> Result<VerifyReport, EmbedError> {
    let mut empty = 0;
    let mut pool: Vec<(bool, String, Vec<f32>)> = Vec::new();
    for (r, row) in records.iter().zip(&table.rows) {
        if (r.image_id, &r.split) != (row.image_id, &row.split) {
            return Err(EmbedError::Config(format!(
                "embeddings row for image {} does not match records",
                row.image_id
            )));
        }
        let t = texts_of(r, &mut empty);
        pool.extend(
            t.captions
                .into_iter()
                .zip(row.captions.iter().cloned())
                .map(|(s, v)| (true, s, v)),
        );
        pool.extend(
            t.dialogue
                .into_iter()
                .zip(row.dialogue.iter().cloned())
                .map(|(s, v)| (false, s, v)),
        );
        pool.extend(
            t.turns
                .into_iter()
                .zip(row.turns.iter().cloned())
                .map(|(s, v)| (false, s, v)),
        );
    }
    // A seeded partial Fisher-Yates: the same sample on every machine.
    let mut rng = chatpainter_artifacts::SplitMix::new(seed);
    let n = n.min(pool.len());
    for i in 0..n {
        let j = i + rng.below(pool.len() - i);
        pool.swap(i, j);
    }
    let mut report = VerifyReport {
        checked: n,
        max_abs_diff: 0.0,
        worst_text: String::new(),
    };
    for (is_caption, text, stored) in &pool[..n] {
        let encoder = if *is_caption {
            &encoders.caption
        } else {
            &encoders.dialogue
        };
        let fresh = encoder.encode_batch(&[text.as_str()])?;
        let diff = fresh
            .data
            .iter()
            .zip(stored)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        if diff >= report.max_abs_diff {
            report.max_abs_diff = diff;
            report.worst_text.clone_from(text);
        }
    }
    Ok(report)
}

/// Resolves `run:` paths against the run directory.
pub fn resolve(run: &Path, path: &str) -> PathBuf {
    match path.strip_prefix("run:") {
        Some(rel) => run.join(rel),
        None => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatpainter_artifacts::NoProgress;
    use chatpainter_ingest::catalog::{Dialogue, Turn};

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
        let enc = Encoders::load(&c).unwrap();
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
        let table = crate::table::read(&out).unwrap();
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

        let table = crate::table::read(&out).unwrap();
        let check = verify(&enc, &records, &table, 15, 7).unwrap();
        assert_eq!(check.checked, 15);
        assert_eq!(check.max_abs_diff, 0.0);
    }

    #[test]
    fn a_killed_build_resumes_from_finished_parts() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, out) = (dir.path().join("cache"), dir.path().join("e.parquet"));
        let records: Vec<Record> = (0..6).map(|i| record(i, &format!("caption {i}"))).collect();
        let c = cfg(4);
        let enc = Encoders::load(&c).unwrap();
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
                variant: crate::SkipThoughtVariant::Combine
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
            let enc = Encoders::load(&c).unwrap();
            let report = build(&c, &enc, &records, &cache, &out, &NoProgress).unwrap();
            let table = crate::table::read(&out).unwrap();
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
