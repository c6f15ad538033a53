//! `embeddings.parquet`: the vectors of every image of an ingested dataset, keyed by
//! (split, image_id), as the training stages read them.
//!
//! | column | type |
//! |---|---|
//! | image_id | int64 |
//! | split | utf8 |
//! | captions | list<fixed_size_list<float32, caption_dim>> — one per caption, in `records.parquet` order |
//! | dialogue | fixed_size_list<float32, dialogue_dim> (nullable) — the whole dialogue as one string |
//! | turns | list<fixed_size_list<float32, dialogue_dim>> — one per turn present |
//! | n_turns | int32 |
//!
//! File metadata: `chatpainter.schema_version`, `chatpainter.caption_encoder` and
//! `chatpainter.dialogue_encoder` (the [`EncoderIdentity`] JSON of each).

use crate::error::{FormatError, Result};
use crate::parquet_io::{check_schema, metadata, open_file};
use arrow::array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, Int32Array, Int64Array, ListArray,
    RecordBatch, StringArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chatpainter_artifacts::AtomicFile;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// What produced a set of embeddings; stored with cached vectors and compared on reuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderIdentity {
    /// Encoder name and algorithm version, e.g. `all-MiniLM-L6-v2` or `hashing-v1`.
    pub name: String,
    /// sha256 (hex) of the weights file; `None` for encoders without weights.
    pub weights_sha256: Option<String>,
    /// Width of every output vector.
    pub dim: usize,
    /// Version of the text normalisation applied before encoding
    /// (embed's `NORMALIZATION_VERSION`) plus any encoder-specific setting that changes outputs
    /// (e.g. the token limit).
    pub normalization: String,
}

impl EncoderIdentity {
    /// A short, stable digest of the whole identity (sha256 hex of its JSON form), handy as a
    /// cache key.
    pub fn fingerprint(&self) -> String {
        // Field order is fixed by the struct, so the JSON text is canonical.
        let json = serde_json::to_string(self).unwrap_or_default();
        chatpainter_artifacts::digest::sha256_bytes(json.as_bytes())
    }
}

/// The vectors of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageEmbeddings {
    pub image_id: i64,
    pub split: String,
    /// One vector per caption, in the order of the record's captions.
    pub captions: Vec<Vec<f32>>,
    /// The whole dialogue (non-recurrent variant); `None` when the image has no dialogue.
    pub dialogue: Option<Vec<f32>>,
    /// One vector per turn present (recurrent variant).
    pub turns: Vec<Vec<f32>>,
}

/// A whole embeddings file.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingTable {
    pub caption_encoder: EncoderIdentity,
    pub dialogue_encoder: EncoderIdentity,
    pub rows: Vec<ImageEmbeddings>,
}

impl EmbeddingTable {
    pub fn caption_dim(&self) -> usize {
        self.caption_encoder.dim
    }
    pub fn dialogue_dim(&self) -> usize {
        self.dialogue_encoder.dim
    }
}

fn vector_type(dim: usize) -> DataType {
    DataType::FixedSizeList(
        Arc::new(Field::new_list_field(DataType::Float32, false)),
        dim as i32,
    )
}

pub fn schema(caption_dim: usize, dialogue_dim: usize) -> Schema {
    Schema::new(vec![
        Field::new("image_id", DataType::Int64, false),
        Field::new("split", DataType::Utf8, false),
        Field::new(
            "captions",
            DataType::List(Arc::new(Field::new_list_field(
                vector_type(caption_dim),
                false,
            ))),
            false,
        ),
        Field::new("dialogue", vector_type(dialogue_dim), true),
        Field::new(
            "turns",
            DataType::List(Arc::new(Field::new_list_field(
                vector_type(dialogue_dim),
                false,
            ))),
            false,
        ),
        Field::new("n_turns", DataType::Int32, false),
    ])
}

fn contract(path: &Path, message: impl Into<String>) -> FormatError {
    FormatError::contract(path, message)
}

/// A table-building error (not tied to a file yet).
fn build(e: impl std::fmt::Display) -> FormatError {
    FormatError::contract("embedding table", e.to_string())
}

fn vectors(values: Vec<f32>, dim: usize, nulls: Option<NullBuffer>) -> Result<FixedSizeListArray> {
    FixedSizeListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Float32, false)),
        dim as i32,
        Arc::new(Float32Array::from(values)),
        nulls,
    )
    .map_err(build)
}

/// Checks every vector's width, naming the image and the column on a mismatch.
fn check_dims(rows: &[ImageEmbeddings], dc: usize, dd: usize) -> Result<()> {
    for r in rows {
        let bad = r
            .captions
            .iter()
            .find(|v| v.len() != dc)
            .map(|v| ("captions", dc, v.len()))
            .or_else(|| {
                r.dialogue
                    .as_ref()
                    .filter(|v| v.len() != dd)
                    .map(|v| ("dialogue", dd, v.len()))
            })
            .or_else(|| {
                r.turns
                    .iter()
                    .find(|v| v.len() != dd)
                    .map(|v| ("turns", dd, v.len()))
            });
        if let Some((col, want, got)) = bad {
            return Err(build(format!(
                "image {} ({}): {col} vector has {got} values, expected {want}",
                r.image_id, r.split
            )));
        }
    }
    Ok(())
}

fn batch(
    rows: &[ImageEmbeddings],
    (dc, dd): (usize, usize),
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let caption_values: Vec<f32> = rows
        .iter()
        .flat_map(|r| r.captions.iter().flatten().copied())
        .collect();
    let captions = ListArray::try_new(
        Arc::new(Field::new_list_field(vector_type(dc), false)),
        OffsetBuffer::from_lengths(rows.iter().map(|r| r.captions.len())),
        Arc::new(vectors(caption_values, dc, None)?),
        None,
    )
    .map_err(build)?;
    let dialogue_values: Vec<f32> = rows
        .iter()
        .flat_map(|r| r.dialogue.clone().unwrap_or_else(|| vec![0.0; dd]))
        .collect();
    let dialogue = vectors(
        dialogue_values,
        dd,
        Some(NullBuffer::from(
            rows.iter()
                .map(|r| r.dialogue.is_some())
                .collect::<Vec<_>>(),
        )),
    )?;
    let turn_values: Vec<f32> = rows
        .iter()
        .flat_map(|r| r.turns.iter().flatten().copied())
        .collect();
    let turns = ListArray::try_new(
        Arc::new(Field::new_list_field(vector_type(dd), false)),
        OffsetBuffer::from_lengths(rows.iter().map(|r| r.turns.len())),
        Arc::new(vectors(turn_values, dd, None)?),
        None,
    )
    .map_err(build)?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(rows.iter().map(|r| r.image_id).collect::<Int64Array>()),
        Arc::new(
            rows.iter()
                .map(|r| Some(r.split.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(captions),
        Arc::new(dialogue),
        Arc::new(turns),
        Arc::new(
            rows.iter()
                .map(|r| r.turns.len() as i32)
                .collect::<Int32Array>(),
        ),
    ];
    RecordBatch::try_new(schema.clone(), columns).map_err(build)
}

/// Writes `embeddings.parquet` a chunk of images at a time (one row group per chunk), so that
/// a table larger than memory can be produced; nothing is visible under `path` before
/// [`Self::finish`].
pub struct TableWriter {
    path: std::path::PathBuf,
    writer: ArrowWriter<AtomicFile>,
    schema: SchemaRef,
    dims: (usize, usize),
}

impl TableWriter {
    /// Starts a table whose metadata records both encoders.
    pub fn create(
        path: &Path,
        caption_encoder: &EncoderIdentity,
        dialogue_encoder: &EncoderIdentity,
    ) -> Result<Self> {
        let json = |id: &EncoderIdentity| serde_json::to_string(id).unwrap_or_default();
        let schema: SchemaRef = Arc::new(
            schema(caption_encoder.dim, dialogue_encoder.dim).with_metadata(metadata(
                "embeddings",
                &[
                    ("caption_encoder", json(caption_encoder)),
                    ("dialogue_encoder", json(dialogue_encoder)),
                ],
            )),
        );
        let file = AtomicFile::create(path).map_err(|e| contract(path, e.to_string()))?;
        let writer = ArrowWriter::try_new(
            file,
            schema.clone(),
            Some(WriterProperties::builder().build()),
        )
        .map_err(|e| contract(path, e.to_string()))?;
        Ok(Self {
            path: path.to_path_buf(),
            writer,
            schema,
            dims: (caption_encoder.dim, dialogue_encoder.dim),
        })
    }

    /// Appends `rows` as one row group (its encoded pages leave memory right away).
    pub fn write(&mut self, rows: &[ImageEmbeddings]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        check_dims(rows, self.dims.0, self.dims.1)?;
        let path = &self.path;
        let io = |e: parquet::errors::ParquetError| contract(path, e.to_string());
        self.writer
            .write(&batch(rows, self.dims, &self.schema)?)
            .map_err(io)?;
        self.writer.flush().map_err(io)
    }

    /// Closes the file and renames it into place.
    pub fn finish(self) -> Result<()> {
        let path = self.path;
        self.writer
            .into_inner()
            .map_err(|e| contract(&path, e.to_string()))?
            .commit()
            .map_err(|e| contract(&path, e.to_string()))
    }
}

/// Writes a whole in-memory table atomically (1,024 images per row group).
pub fn write(path: &Path, table: &EmbeddingTable) -> Result<()> {
    check_dims(&table.rows, table.caption_dim(), table.dialogue_dim())?;
    let mut writer = TableWriter::create(path, &table.caption_encoder, &table.dialogue_encoder)?;
    for chunk in table.rows.chunks(1024) {
        writer.write(chunk)?;
    }
    writer.finish()
}

fn list_of_vectors(list: &ListArray, i: usize, path: &Path, column: &str) -> Result<Vec<Vec<f32>>> {
    let inner = list.value(i);
    let fixed = inner
        .as_any()
        .downcast_ref::<FixedSizeListArray>()
        .ok_or_else(|| {
            contract(
                path,
                format!("column `{column}`: not a list of fixed-size lists"),
            )
        })?;
    (0..fixed.len())
        .map(|k| vector(fixed, k, path, column))
        .collect()
}

fn vector(fixed: &FixedSizeListArray, k: usize, path: &Path, column: &str) -> Result<Vec<f32>> {
    let v = fixed.value(k);
    let floats = v
        .as_any()
        .downcast_ref::<Float32Array>()
        .ok_or_else(|| contract(path, format!("column `{column}`: values are not float32")))?;
    Ok(floats.values().to_vec())
}

/// Reads the whole table, checking the schema version and the encoders recorded in it.
pub fn read(path: &Path) -> Result<EmbeddingTable> {
    let mut rows = Vec::new();
    let (caption_encoder, dialogue_encoder) = for_each_row(path, |row| {
        rows.push(row);
        Ok(())
    })?;
    Ok(EmbeddingTable {
        caption_encoder,
        dialogue_encoder,
        rows,
    })
}

/// Streams the table one image at a time (one row group in memory), with the same checks as
/// [`read`]; returns the caption and dialogue encoder identities recorded in it.
pub fn for_each_row(
    path: &Path,
    mut f: impl FnMut(ImageEmbeddings) -> Result<()>,
) -> Result<(EncoderIdentity, EncoderIdentity)> {
    let reader = ProjectedReader::open(path, Columns::ALL)?;
    for group in 0..reader.row_groups() {
        reader.for_each_in_group(group, |row, _| f(row))?;
    }
    Ok((reader.caption_encoder, reader.dialogue_encoder))
}

/// Which vector columns a [`ProjectedReader`] reads (`image_id`, `split` and `n_turns` are
/// always read). A column left out reads as empty lists / `None`, and costs no IO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Columns {
    pub captions: bool,
    pub dialogue: bool,
    pub turns: bool,
}

impl Columns {
    pub const ALL: Self = Self {
        captions: true,
        dialogue: true,
        turns: true,
    };
}

/// Reads chosen columns of chosen row groups of `embeddings.parquet`, so a trainer can stream a
/// table far larger than memory and skip the vectors its variant does not use (the per-turn
/// vectors are most of a Skip-Thought table). Opened once: schema version, encoders and column
/// types are checked as by [`read`].
pub struct ProjectedReader {
    path: std::path::PathBuf,
    columns: Columns,
    metadata: parquet::arrow::arrow_reader::ArrowReaderMetadata,
    pub caption_encoder: EncoderIdentity,
    pub dialogue_encoder: EncoderIdentity,
}

impl ProjectedReader {
    /// Opens `path` and checks its contract.
    ///
    /// # Errors
    /// IO errors and contract breaches (schema version, encoder metadata, column types), naming
    /// the file.
    pub fn open(path: &Path, columns: Columns) -> Result<Self> {
        let file = open_file(path)?;
        let metadata =
            parquet::arrow::arrow_reader::ArrowReaderMetadata::load(&file, Default::default())
                .map_err(|e| contract(path, e.to_string()))?;
        let meta = metadata.schema().metadata().clone();
        let identity = |key: &str| -> Result<EncoderIdentity> {
            let json = meta
                .get(key)
                .ok_or_else(|| contract(path, format!("metadata `{key}` is missing")))?;
            serde_json::from_str(json).map_err(|e| contract(path, format!("metadata `{key}`: {e}")))
        };
        let (caption_encoder, dialogue_encoder) = (
            identity("chatpainter.caption_encoder")?,
            identity("chatpainter.dialogue_encoder")?,
        );
        check_schema(
            path,
            metadata.schema(),
            &schema(caption_encoder.dim, dialogue_encoder.dim),
        )?;
        Ok(Self {
            path: path.to_path_buf(),
            columns,
            metadata,
            caption_encoder,
            dialogue_encoder,
        })
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Row groups in the file.
    pub fn row_groups(&self) -> usize {
        self.metadata.metadata().num_row_groups()
    }

    /// Rows of row group `group` (from the footer, no IO).
    pub fn group_rows(&self, group: usize) -> usize {
        self.metadata.metadata().row_group(group).num_rows() as usize
    }

    /// Calls `f(row, n_turns)` for every row of row group `group`, in file order; columns left
    /// out of the projection are empty. `n_turns` is the stored count, checked against the
    /// turn vectors when those are read.
    ///
    /// # Errors
    /// IO and decode errors naming the file, the row group and (for a bad row) the image.
    pub fn for_each_in_group(
        &self,
        group: usize,
        mut f: impl FnMut(ImageEmbeddings, usize) -> Result<()>,
    ) -> Result<()> {
        let path = self.path.as_path();
        if group >= self.row_groups() {
            return Err(contract(
                path,
                format!(
                    "row group {group} requested, file has {}",
                    self.row_groups()
                ),
            ));
        }
        let c = self.columns;
        let wanted: Vec<&str> = [
            ("image_id", true),
            ("split", true),
            ("captions", c.captions),
            ("dialogue", c.dialogue),
            ("turns", c.turns),
            ("n_turns", true),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
        let roots: Vec<usize> = wanted
            .iter()
            .filter_map(|name| self.metadata.schema().index_of(name).ok())
            .collect();
        let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(
            open_file(path)?,
            self.metadata.clone(),
        );
        let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = builder
            .with_row_groups(vec![group])
            .with_projection(mask)
            .build()
            .map_err(|e| contract(path, format!("row group {group}: {e}")))?;
        for batch in reader {
            let batch = batch.map_err(|e| contract(path, format!("row group {group}: {e}")))?;
            let col = |name: &str| {
                batch
                    .column_by_name(name)
                    .ok_or_else(|| contract(path, format!("column `{name}` is missing")))
            };
            let ids = col("image_id")?
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| contract(path, "image_id"))?;
            let splits = col("split")?
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| contract(path, "split"))?;
            let n_turns = col("n_turns")?
                .as_any()
                .downcast_ref::<Int32Array>()
                .ok_or_else(|| contract(path, "n_turns"))?;
            let list = |name: &str, on: bool| -> Result<Option<&ListArray>> {
                if !on {
                    return Ok(None);
                }
                col(name)?
                    .as_any()
                    .downcast_ref::<ListArray>()
                    .map(Some)
                    .ok_or_else(|| contract(path, name))
            };
            let captions = list("captions", c.captions)?;
            let turns = list("turns", c.turns)?;
            let dialogue = if c.dialogue {
                Some(
                    col("dialogue")?
                        .as_any()
                        .downcast_ref::<FixedSizeListArray>()
                        .ok_or_else(|| contract(path, "dialogue"))?,
                )
            } else {
                None
            };
            for i in 0..batch.num_rows() {
                let n = usize::try_from(n_turns.value(i)).map_err(|_| {
                    contract(
                        path,
                        format!("image {}: n_turns {} < 0", ids.value(i), n_turns.value(i)),
                    )
                })?;
                let row = ImageEmbeddings {
                    image_id: ids.value(i),
                    split: splits.value(i).to_string(),
                    captions: match captions {
                        Some(l) => list_of_vectors(l, i, path, "captions")?,
                        None => Vec::new(),
                    },
                    dialogue: match dialogue {
                        Some(d) if d.is_valid(i) => Some(vector(d, i, path, "dialogue")?),
                        _ => None,
                    },
                    turns: match turns {
                        Some(l) => list_of_vectors(l, i, path, "turns")?,
                        None => Vec::new(),
                    },
                };
                if c.turns && row.turns.len() != n {
                    return Err(contract(
                        path,
                        format!(
                            "image {}: n_turns is {n} but {} turn vectors are stored",
                            row.image_id,
                            row.turns.len()
                        ),
                    ));
                }
                f(row, n)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(name: &str, dim: usize) -> EncoderIdentity {
        EncoderIdentity {
            name: name.into(),
            weights_sha256: None,
            dim,
            normalization: "v".into(),
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.parquet");
        let table = EmbeddingTable {
            caption_encoder: identity("c", 3),
            dialogue_encoder: identity("d", 2),
            rows: vec![
                ImageEmbeddings {
                    image_id: 9,
                    split: "train".into(),
                    captions: vec![vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]],
                    dialogue: Some(vec![0.5, 0.25]),
                    turns: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
                },
                ImageEmbeddings {
                    image_id: 16,
                    split: "test".into(),
                    captions: vec![vec![0.0; 3]],
                    dialogue: None,
                    turns: vec![],
                },
            ],
        };
        write(&path, &table).unwrap();
        assert_eq!(read(&path).unwrap(), table);

        let mut bad = table.clone();
        bad.rows[1].captions[0].push(1.0);
        let err = write(&path, &bad).unwrap_err().to_string();
        assert!(
            err.contains("image 16") && err.contains("captions vector has 4 values, expected 3"),
            "{err}"
        );
    }
}
