//! The embedding cache: content-addressed by (encoder identity, normalised text).
//!
//! `<cache_dir>/<encoder fingerprint>/` holds `encoder.json` (the [`EncoderIdentity`]) and
//! `part-NNNNN.parquet` files of `(key: fixed_size_binary(32) = sha256 of the normalised text,
//! vector: fixed_size_list<float32, dim>)`. One folder per encoder identity means vectors of two
//! encoders (or two weight files, or two text rules) can never mix. New vectors are appended as
//! new parts, each written atomically: a killed build keeps every finished part and resumes
//! from there.

use crate::{EmbedError, EncoderIdentity, TextEncoder};
use arrow::array::{Array, FixedSizeBinaryArray, FixedSizeListArray, Float32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use chatpainter_artifacts::{AtomicFile, write_atomic};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub type Key = [u8; 32];

/// The cache key of a text: sha256 of its whitespace-normalised form.
pub fn key_of(normalised: &str) -> Key {
    Sha256::digest(normalised.as_bytes()).into()
}

/// The vectors of one encoder, loaded into memory.
pub struct EncoderCache {
    dir: PathBuf,
    identity: EncoderIdentity,
    vectors: HashMap<Key, Vec<f32>>,
    next_part: usize,
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
    /// Opens (or creates) the folder of `identity` under `cache_dir` and loads its parts.
    pub fn open(cache_dir: &Path, identity: &EncoderIdentity) -> Result<Self, EmbedError> {
        let dir = cache_dir.join(identity.fingerprint());
        std::fs::create_dir_all(&dir).map_err(|source| EmbedError::Io {
            path: dir.clone(),
            source,
        })?;
        let id_path = dir.join("encoder.json");
        if id_path.exists() {
            let stored: EncoderIdentity =
                serde_json::from_slice(&std::fs::read(&id_path).map_err(|source| {
                    EmbedError::Io {
                        path: id_path.clone(),
                        source,
                    }
                })?)
                .map_err(|e| err(&id_path, e))?;
            if &stored != identity {
                return Err(err(
                    &id_path,
                    format!("belongs to encoder {stored:?}, not {identity:?}"),
                ));
            }
        } else {
            let json = serde_json::to_vec_pretty(identity).map_err(|e| err(&id_path, e))?;
            write_atomic(&id_path, &json).map_err(|e| err(&id_path, e))?;
        }
        let mut parts: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|source| EmbedError::Io {
                path: dir.clone(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("part-") && n.ends_with(".parquet"))
            })
            .collect();
        parts.sort();
        let mut vectors = HashMap::new();
        for part in &parts {
            read_part(part, identity.dim, &mut vectors)?;
        }
        Ok(Self {
            dir,
            identity: identity.clone(),
            vectors,
            next_part: parts.len(),
        })
    }

    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    pub fn get(&self, normalised: &str) -> Option<&Vec<f32>> {
        self.vectors.get(&key_of(normalised))
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
            .filter(|(k, _)| !self.vectors.contains_key(*k))
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
                values.extend_from_slice(&out.data);
                progress.advance(batch.len() as u64);
            }
            self.write_part(&keys, &values)?;
            for (k, v) in keys.iter().zip(values.chunks(self.identity.dim)) {
                self.vectors.insert(*k, v.to_vec());
            }
            stats.encoded += keys.len();
        }
        progress.finish();
        Ok(stats)
    }

    fn write_part(&mut self, keys: &[Key], values: &[f32]) -> Result<(), EmbedError> {
        let path = self.dir.join(format!("part-{:05}.parquet", self.next_part));
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
            Arc::new(Float32Array::from(values.to_vec())),
            None,
        )
        .map_err(|e| err(&path, e))?;
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(key_array), Arc::new(vectors)])
                .map_err(|e| err(&path, e))?;
        let file = AtomicFile::create(&path).map_err(|e| err(&path, e))?;
        let mut writer = ArrowWriter::try_new(file, schema, None).map_err(|e| err(&path, e))?;
        writer.write(&batch).map_err(|e| err(&path, e))?;
        writer
            .into_inner()
            .map_err(|e| err(&path, e))?
            .commit()
            .map_err(|e| err(&path, e))?;
        self.next_part += 1;
        Ok(())
    }
}

fn read_part(path: &Path, dim: usize, into: &mut HashMap<Key, Vec<f32>>) -> Result<(), EmbedError> {
    let file = std::fs::File::open(path).map_err(|source| EmbedError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| err(path, e))?
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
        if vectors.value_length() as usize != dim {
            return Err(err(
                path,
                format!(
                    "vectors have {} values, the encoder {dim}",
                    vectors.value_length()
                ),
            ));
        }
        let values = vectors
            .values()
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(|| err(path, "column `vector`: values are not float32"))?;
        for i in 0..keys.len() {
            let key: Key = keys
                .value(i)
                .try_into()
                .map_err(|_| err(path, format!("row {i}: key is not 32 bytes")))?;
            into.insert(key, values.values()[i * dim..(i + 1) * dim].to_vec());
        }
    }
    Ok(())
}
