//! The embedding cache: content-addressed by (encoder identity, normalised text).
//!
//! `<cache_dir>/<encoder fingerprint>/` holds `encoder.json` (the [`EncoderIdentity`]) and
//! `part-NNNNN-<writer>.parquet` files of `(key: fixed_size_binary(32) = sha256 of the normalised
//! text, vector: fixed_size_list<float32, dim>)`, each stamped (Parquet key-value metadata
//! `chatpainter.encoder`) with the fingerprint of the encoder that wrote it. One folder per
//! encoder identity means vectors of two encoders (or two weight files, or two text rules) can
//! never mix. New vectors are appended as new parts, each written atomically: a killed build
//! keeps every finished part and resumes from there.
//!
//! Several writers may share a cache folder at once (two pipelines embedding at the same time)
//! without a lock: a part's name carries a token unique to its writer, so two writers never
//! publish to the same name, and every vector read back is checked against the key stored in its
//! row and the part's encoder stamp, so an index that does not match its files is an error, never
//! a wrong vector.
//!
//! Memory: only an index (key → part, row; ≈60 bytes a text) is held. Vectors stay on disk
//! and are read back part by part by [`EncoderCache::gather`], so a 4800-d Skip-Thought cache
//! of ~800k turns (≈15 GB) needs one part in memory at a time, not the whole cache.

use arrow::array::{Array, FixedSizeBinaryArray, FixedSizeListArray, Float32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use chatpainter_artifacts::{AtomicFile, write_atomic};
use chatpainter_model::text::{EmbedError, EncoderIdentity, TextEncoder};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub type Key = [u8; 32];

/// Parquet key-value metadata naming the encoder fingerprint of a part.
const ENCODER_METADATA: &str = "chatpainter.encoder";

/// The cache key of a text: sha256 of its whitespace-normalised form.
pub fn key_of(normalised: &str) -> Key {
    Sha256::digest(normalised.as_bytes()).into()
}

/// Where a cached vector lives: part file number and row inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    part: u32,
    row: u32,
}

/// The index of one encoder's cached vectors (the vectors themselves stay in the part files).
pub struct EncoderCache {
    dir: PathBuf,
    identity: EncoderIdentity,
    parts: Vec<PathBuf>,
    index: HashMap<Key, Loc>,
    /// Number of the next part file: one past the highest on disk, so a gap left by a
    /// deleted part is never overwritten.
    next_number: usize,
    /// This writer's token in its part names (process id and clock), so that writers sharing
    /// the folder never write the same name even when they count to the same number.
    writer: String,
}

fn err(path: &Path, message: impl std::fmt::Display) -> EmbedError {
    EmbedError::Config(format!("{}: {message}", path.display()))
}

/// Counts of one [`EncoderCache::fill`] call.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FillStats {
    /// Distinct texts asked for.
    pub distinct: usize,
    /// Found in the cache.
    pub reused: usize,
    /// Encoded now.
    pub encoded: usize,
    /// Encoded now and truncated by the encoder's token limit.
    pub truncated: usize,
}

impl EncoderCache {
    /// Opens (or creates) the folder of `identity` under `cache_dir` and indexes its parts
    /// (reading only their `key` columns).
    pub fn open(cache_dir: &Path, identity: &EncoderIdentity) -> Result<Self, EmbedError> {
        let dir = cache_dir.join(identity.fingerprint());
        std::fs::create_dir_all(&dir).map_err(|source| EmbedError::io(&dir, source))?;
        let id_path = dir.join("encoder.json");
        if !id_path.exists() {
            let json = serde_json::to_vec_pretty(identity).map_err(|e| err(&id_path, e))?;
            // Another writer may be creating it at the same moment: then theirs is checked.
            if let Err(e) = write_atomic(&id_path, &json)
                && !id_path.exists()
            {
                return Err(err(&id_path, e));
            }
        }
        let bytes = std::fs::read(&id_path).map_err(|e| EmbedError::io(&id_path, e))?;
        let stored: EncoderIdentity =
            serde_json::from_slice(&bytes).map_err(|e| err(&id_path, e))?;
        if &stored != identity {
            return Err(err(
                &id_path,
                format!("belongs to encoder {stored:?}, not {identity:?}"),
            ));
        }
        let mut parts: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|source| EmbedError::io(&dir, source))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("part-") && n.ends_with(".parquet"))
            })
            .collect();
        parts.sort();
        let next_number = parts
            .iter()
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?;
                let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
                rest.split('-').next()?.parse::<usize>().ok()
            })
            .max()
            .map_or(0, |n| n + 1);
        let mut index = HashMap::new();
        for (number, part) in parts.iter().enumerate() {
            let keys = read_keys(part, identity)?;
            for (row, key) in keys.into_iter().enumerate() {
                // A later part wins; both hold the same vector anyway (same key, same encoder).
                index.insert(
                    key,
                    Loc {
                        part: number as u32,
                        row: row as u32,
                    },
                );
            }
        }
        Ok(Self {
            dir,
            identity: identity.clone(),
            parts,
            index,
            next_number,
            writer: writer_token(),
        })
    }

    /// The encoder whose vectors these are.
    pub fn identity(&self) -> &EncoderIdentity {
        &self.identity
    }

    /// Number of cached vectors.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// `true` when the vector of this key is cached.
    pub fn contains(&self, key: &Key) -> bool {
        self.index.contains_key(key)
    }

    /// The vector of one text, read from its part file (a whole part is decoded: for
    /// occasional look-ups; use [`Self::gather`] for many).
    pub fn get(&self, normalised: &str) -> Result<Option<Vec<f32>>, EmbedError> {
        let key = key_of(normalised);
        if !self.contains(&key) {
            return Ok(None);
        }
        let mut found = None;
        self.gather(std::slice::from_ref(&key), |_, v| {
            found = Some(v.to_vec());
            Ok(())
        })?;
        Ok(found)
    }

    /// Reads the vectors of `keys` part by part (each needed part is decoded once, one at a
    /// time) and hands each to `sink(i, vector)`, `i` being the position in `keys`; a key
    /// listed twice is handed out twice.
    ///
    /// # Errors
    /// [`EmbedError::Config`] naming the key if one is not cached; part read errors; the
    /// sink's errors.
    pub fn gather(
        &self,
        keys: &[Key],
        mut sink: impl FnMut(usize, &[f32]) -> Result<(), EmbedError>,
    ) -> Result<(), EmbedError> {
        // Per part, the (row, request) pairs it must serve, sorted by row.
        let mut wanted: Vec<Vec<(u32, usize)>> = vec![Vec::new(); self.parts.len()];
        for (i, key) in keys.iter().enumerate() {
            let loc = self.index.get(key).ok_or_else(|| {
                err(
                    &self.dir,
                    format!("the cache has no vector for key {}", hex::encode(key)),
                )
            })?;
            wanted[loc.part as usize].push((loc.row, i));
        }
        let dim = self.identity.dim;
        for (part, mut rows) in wanted.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            rows.sort_unstable();
            let path = &self.parts[part];
            let mut next = 0;
            let mut offset = 0usize;
            for_each_batch(path, &self.identity, |stored, values| {
                let n = values.len() / dim.max(1);
                while let Some(&(row, i)) = rows.get(next) {
                    let row = row as usize;
                    if row >= offset + n {
                        break;
                    }
                    let local = row - offset;
                    // The row must hold the vector of the text asked for.
                    if stored.value(local) != keys[i] {
                        return Err(err(
                            path,
                            format!(
                                "row {row} holds key {}, the index expected {}: the part was \
                                 replaced after the cache was opened",
                                hex::encode(stored.value(local)),
                                hex::encode(keys[i])
                            ),
                        ));
                    }
                    sink(i, &values[local * dim..(local + 1) * dim])?;
                    next += 1;
                }
                offset += n;
                Ok(())
            })?;
            if next < rows.len() {
                return Err(err(
                    path,
                    format!(
                        "holds {offset} rows, the index expected at least {}",
                        rows[next].0 + 1
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Makes sure every text is cached: encodes the missing ones in batches of `batch_size`
    /// and writes a new part every `part_size` vectors.
    pub fn fill(
        &mut self,
        encoder: &dyn TextEncoder,
        texts: &[String],
        batch_size: usize,
        part_size: usize,
        progress: &dyn chatpainter_artifacts::Progress,
    ) -> Result<FillStats, EmbedError> {
        if encoder.identity() != &self.identity {
            return Err(EmbedError::Config(
                "cache opened for another encoder".into(),
            ));
        }
        let mut distinct: HashMap<Key, &str> = HashMap::new();
        for t in texts {
            distinct.entry(key_of(t)).or_insert(t.as_str());
        }
        let mut missing: Vec<(Key, &str)> = distinct
            .iter()
            .filter(|(k, _)| !self.index.contains_key(*k))
            .map(|(k, t)| (*k, *t))
            .collect();
        // Deterministic order, and similar lengths together for the encoder's batching.
        missing.sort_by_key(|&(key, text)| (text.len(), key));
        let mut stats = FillStats {
            distinct: distinct.len(),
            reused: distinct.len() - missing.len(),
            ..Default::default()
        };
        progress.start(
            &format!("encoding with {}", self.identity.name),
            missing.len() as u64,
        );
        for part in missing.chunks(part_size.max(1)) {
            let mut keys = Vec::with_capacity(part.len());
            let mut values = Vec::with_capacity(part.len() * self.identity.dim);
            for batch in part.chunks(batch_size.max(1)) {
                let strs: Vec<&str> = batch.iter().map(|(_, t)| *t).collect();
                let out = encoder.encode_batch(&strs)?;
                stats.truncated += out.truncated_count();
                keys.extend(batch.iter().map(|(k, _)| *k));
                values.extend(out.data);
                progress.advance(batch.len() as u64);
            }
            self.write_part(&keys, values)?;
            stats.encoded += keys.len();
        }
        progress.finish();
        Ok(stats)
    }

    fn write_part(&mut self, keys: &[Key], values: Vec<f32>) -> Result<(), EmbedError> {
        let number = self.parts.len();
        let path = self.dir.join(format!(
            "part-{:05}-{}.parquet",
            self.next_number, self.writer
        ));
        let dim = self.identity.dim as i32;
        let schema = Arc::new(Schema::new(vec![
            Field::new("key", DataType::FixedSizeBinary(32), false),
            Field::new(
                "vector",
                DataType::FixedSizeList(
                    Arc::new(Field::new_list_field(DataType::Float32, false)),
                    dim,
                ),
                false,
            ),
        ]));
        let key_array =
            FixedSizeBinaryArray::try_from_iter(keys.iter()).map_err(|e| err(&path, e))?;
        let vectors = FixedSizeListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Float32, false)),
            dim,
            Arc::new(Float32Array::from(values)),
            None,
        )
        .map_err(|e| err(&path, e))?;
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(key_array), Arc::new(vectors)])
                .map_err(|e| err(&path, e))?;
        let file = AtomicFile::create(&path).map_err(|e| err(&path, e))?;
        let props = parquet::file::properties::WriterProperties::builder()
            .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
                ENCODER_METADATA.to_string(),
                self.identity.fingerprint(),
            )]))
            .build();
        let mut writer =
            ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| err(&path, e))?;
        writer.write(&batch).map_err(|e| err(&path, e))?;
        writer
            .into_inner()
            .map_err(|e| err(&path, e))?
            .commit()
            .map_err(|e| err(&path, e))?;
        for (row, key) in keys.iter().enumerate() {
            self.index.insert(
                *key,
                Loc {
                    part: number as u32,
                    row: row as u32,
                },
            );
        }
        self.parts.push(path);
        self.next_number += 1;
        Ok(())
    }
}

/// A token unique to this writer among the writers sharing a cache folder.
fn writer_token() -> String {
    static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = OPENED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let digest = Sha256::digest(format!("{}-{nanos}-{n}", std::process::id()).as_bytes());
    hex::encode(&digest[..6])
}

/// Opens a part, checking its encoder stamp (parts written before stamps have none and are
/// accepted: they sit in their encoder's folder) and its columns.
fn open_part(
    path: &Path,
    identity: &EncoderIdentity,
) -> Result<ParquetRecordBatchReaderBuilder<std::fs::File>, EmbedError> {
    let dim = identity.dim;
    let file = std::fs::File::open(path).map_err(|e| EmbedError::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| err(path, e))?;
    let stamp = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|e| e.key == ENCODER_METADATA))
        .and_then(|e| e.value.clone());
    if let Some(stamp) = stamp
        && stamp != identity.fingerprint()
    {
        return Err(err(
            path,
            format!(
                "written by encoder {stamp}, this cache folder is encoder {}",
                identity.fingerprint()
            ),
        ));
    }
    let schema = builder.schema();
    let key_ok = schema
        .field_with_name("key")
        .is_ok_and(|f| f.data_type() == &DataType::FixedSizeBinary(32));
    if !key_ok {
        return Err(err(
            path,
            "column `key` missing or not fixed_size_binary(32)",
        ));
    }
    match schema.field_with_name("vector").map(|f| f.data_type()) {
        Ok(DataType::FixedSizeList(inner, width))
            if inner.data_type() == &DataType::Float32 && *width as usize == dim => {}
        Ok(DataType::FixedSizeList(_, width)) => {
            return Err(err(
                path,
                format!("vectors have {width} float32 values, the encoder {dim}"),
            ));
        }
        _ => {
            return Err(err(
                path,
                "column `vector` missing or not a fixed-size list of float32",
            ));
        }
    }
    Ok(builder)
}

/// The keys of one part, in row order (the vector column is not decoded).
fn read_keys(path: &Path, identity: &EncoderIdentity) -> Result<Vec<Key>, EmbedError> {
    let builder = open_part(path, identity)?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), ["key"]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| err(path, e))?;
    let mut keys = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| err(path, e))?;
        let column = batch
            .column_by_name("key")
            .and_then(|c| c.as_any().downcast_ref::<FixedSizeBinaryArray>())
            .ok_or_else(|| err(path, "column `key` missing or not fixed_size_binary(32)"))?;
        for i in 0..column.len() {
            let offset = keys.len();
            keys.push(
                column
                    .value(i)
                    .try_into()
                    .map_err(|_| err(path, format!("row {offset}: key is not 32 bytes")))?,
            );
        }
    }
    Ok(keys)
}

/// Streams one part's record batches as (keys, row-major vector values).
fn for_each_batch(
    path: &Path,
    identity: &EncoderIdentity,
    mut f: impl FnMut(&FixedSizeBinaryArray, &[f32]) -> Result<(), EmbedError>,
) -> Result<(), EmbedError> {
    let dim = identity.dim;
    let reader = open_part(path, identity)?
        .build()
        .map_err(|e| err(path, e))?;
    for batch in reader {
        let batch = batch.map_err(|e| err(path, e))?;
        let keys = batch
            .column_by_name("key")
            .and_then(|c| c.as_any().downcast_ref::<FixedSizeBinaryArray>())
            .ok_or_else(|| err(path, "column `key` missing or not fixed_size_binary(32)"))?;
        let vectors = batch
            .column_by_name("vector")
            .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
            .ok_or_else(|| err(path, "column `vector` missing or not a fixed-size list"))?;
        let values = vectors
            .values()
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(|| err(path, "column `vector`: values are not float32"))?;
        // Slicing a fixed-size list slices its child, so values start at row 0.
        let slice = values
            .values()
            .get(..vectors.len() * dim)
            .ok_or_else(|| err(path, "column `vector`: fewer values than rows × dim"))?;
        f(keys, slice)?;
    }
    Ok(())
}
