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
use crate::config::EmbedConfig;
use crate::report::{EmbedReport, Quarantined};
use crate::scratch::scatter;
use chatpainter_artifacts::Progress;
use chatpainter_formats::embeddings::{ImageEmbeddings, TableWriter};
use chatpainter_formats::ingested::Record;
use chatpainter_model::text::{
    EmbedError, Encoders, dialogue_text, normalize_whitespace, turn_text,
};
use std::path::Path;

/// The texts of one record, normalised: captions, whole dialogue, turns.
pub(crate) struct Texts {
    pub(crate) captions: Vec<String>,
    pub(crate) dialogue: Option<String>,
    pub(crate) turns: Vec<String>,
}

pub(crate) fn texts_of(r: &Record, empty_turns: &mut usize) -> Result<Texts, EmbedError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{verify, verify_file};
    use chatpainter_artifacts::NoProgress;
    use chatpainter_formats::ingested::{Dialogue, Turn};
    use chatpainter_model::text::EncoderSpec;

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
