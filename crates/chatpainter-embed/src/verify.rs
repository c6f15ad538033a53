//! `chatpainter embed --verify N`: re-encodes a sample of the texts and compares them with the
//! vectors stored in `embeddings.parquet`, streaming the table a row group at a time.

use crate::stage::texts_of;
use chatpainter_formats::embeddings::ImageEmbeddings;
use chatpainter_formats::ingested::Record;
use chatpainter_model::text::{EmbedError, Encoders};
use serde::{Deserialize, Serialize};
use std::path::Path;

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
