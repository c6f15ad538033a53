//! The Parquet tables ingest writes (`records.parquet`, `issues.parquet` and the image tables),
//! their Arrow schemas, writers, and typed readers that check the schema on open. Schemas are
//! documented in ARCHITECTURE.md; a change here bumps `chatpainter_artifacts::SCHEMA_VERSION`.

use crate::error::{FormatError, Result};
use crate::parquet_io::{check_schema, column, metadata, open_file};
use crate::quality::{Issue, Reason};
use arrow::array::{
    Array, ArrayRef, BinaryArray, Int32Array, Int64Array, ListArray, RecordBatch, StringArray,
    StructArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use chatpainter_artifacts::{AtomicFile, Manifest};
use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::{ImageEncoder, ImageFormat, RgbImage};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File names inside the ingest stage directory.
pub const RECORDS_FILE: &str = "records.parquet";
pub const ISSUES_FILE: &str = "issues.parquet";
pub const QUALITY_FILE: &str = "quality.json";

/// `--shard I/N`: this process handles the images whose id hashes to `index` modulo `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Folder of a shard's outputs inside the ingest stage directory.
    pub fn dir_name(&self) -> String {
        format!("shards/{:05}-of-{:05}", self.index, self.count)
    }

    pub fn owns(&self, image_id: i64) -> bool {
        shard_of(image_id, self.count) == self.index
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("--shard {s:?}: expected I/N, e.g. 0/8"))?;
        let index: u32 = i
            .trim()
            .parse()
            .map_err(|_| format!("--shard {s:?}: I is not a number"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("--shard {s:?}: N is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("--shard {s:?}: need 0 <= I < N"));
        }
        Ok(Self { index, count })
    }
}

/// Deterministic on every machine: SplitMix64 of the id, modulo the shard count.
pub fn shard_of(image_id: i64, count: u32) -> u32 {
    (chatpainter_artifacts::SplitMix::new(image_id as u64).next_u64() % count as u64) as u32
}

/// Counts a merge checks; kept in each shard's manifest summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestSummary {
    pub shard: Option<Shard>,
    /// Candidate images (after JSON-level checks) in the whole dataset, and in this shard.
    pub candidates_total: u64,
    pub candidates: u64,
    pub records: u64,
    /// Candidates whose image could not be used.
    pub images_dropped: u64,
    pub load_sizes: Vec<u32>,
    /// Image table paths (relative to the stage directory) per load size and split.
    pub image_tables: BTreeMap<u32, BTreeMap<String, Vec<String>>>,
}

/// One question/answer round of a VisDial dialogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// With its `?` restored.
    pub question: String,
    /// `None` only in the last round of VisDial v1.0 test.
    pub answer: Option<String>,
}

/// An image's VisDial dialogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialogue {
    /// The caption VisDial showed the questioner.
    pub caption: String,
    pub turns: Vec<Turn>,
    /// `"<version>/<split>"` of the VisDial file, e.g. `1.0/train`.
    pub source: String,
}

/// One row of `records.parquet`: a usable image with its texts.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub image_id: i64,
    pub split: String,
    /// Relative to the data root, e.g. `train2014/COCO_train2014_000000000009.jpg`.
    pub file_name: String,
    /// Size of the source image as decoded.
    pub width: i32,
    pub height: i32,
    pub captions: Vec<String>,
    pub dialogue: Option<Dialogue>,
}

fn turn_fields() -> Fields {
    Fields::from(vec![
        Field::new("question", DataType::Utf8, false),
        Field::new("answer", DataType::Utf8, true),
    ])
}

pub fn records_schema() -> SchemaRef {
    Arc::new(
        Schema::new(vec![
            Field::new("image_id", DataType::Int64, false),
            Field::new("split", DataType::Utf8, false),
            Field::new("file_name", DataType::Utf8, false),
            Field::new("width", DataType::Int32, false),
            Field::new("height", DataType::Int32, false),
            Field::new(
                "captions",
                DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, false))),
                false,
            ),
            Field::new(
                "dialog",
                DataType::List(Arc::new(Field::new_list_field(
                    DataType::Struct(turn_fields()),
                    false,
                ))),
                true,
            ),
            Field::new("dialog_caption", DataType::Utf8, true),
            Field::new("visdial_source", DataType::Utf8, true),
        ])
        .with_metadata(metadata("records", &[])),
    )
}

pub fn images_schema(size: u32) -> SchemaRef {
    Arc::new(
        Schema::new(vec![
            Field::new("image_id", DataType::Int64, false),
            Field::new("png", DataType::Binary, false),
        ])
        .with_metadata(metadata(
            "images",
            &[
                ("image_size", size.to_string()),
                ("encoding", "png-rgb8".to_string()),
            ],
        )),
    )
}

pub fn issues_schema() -> SchemaRef {
    Arc::new(
        Schema::new(vec![
            Field::new("file", DataType::Utf8, false),
            Field::new("record", DataType::Utf8, false),
            Field::new("field", DataType::Utf8, false),
            Field::new("image_id", DataType::Int64, true),
            Field::new("action", DataType::Utf8, false),
            Field::new("reason", DataType::Utf8, false),
            Field::new("detail", DataType::Utf8, false),
        ])
        .with_metadata(metadata("issues", &[])),
    )
}

fn offsets<I: IntoIterator<Item = usize>>(lengths: I) -> OffsetBuffer<i32> {
    OffsetBuffer::from_lengths(lengths)
}

fn records_batch(rows: &[Record]) -> Result<RecordBatch> {
    let strings = |f: &dyn Fn(&Record) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let captions_values: StringArray = rows
        .iter()
        .flat_map(|r| r.captions.iter().map(|c| Some(c.as_str())))
        .collect();
    let captions = ListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Utf8, false)),
        offsets(rows.iter().map(|r| r.captions.len())),
        Arc::new(captions_values),
        None,
    )?;
    let turns: Vec<&Turn> = rows
        .iter()
        .flat_map(|r| r.dialogue.iter().flat_map(|d| d.turns.iter()))
        .collect();
    let turn_struct = StructArray::try_new(
        turn_fields(),
        vec![
            Arc::new(
                turns
                    .iter()
                    .map(|t| Some(t.question.as_str()))
                    .collect::<StringArray>(),
            ),
            Arc::new(
                turns
                    .iter()
                    .map(|t| t.answer.as_deref())
                    .collect::<StringArray>(),
            ),
        ],
        None,
    )?;
    let dialog = ListArray::try_new(
        Arc::new(Field::new_list_field(
            DataType::Struct(turn_fields()),
            false,
        )),
        offsets(
            rows.iter()
                .map(|r| r.dialogue.as_ref().map_or(0, |d| d.turns.len())),
        ),
        Arc::new(turn_struct),
        Some(NullBuffer::from(
            rows.iter()
                .map(|r| r.dialogue.is_some())
                .collect::<Vec<_>>(),
        )),
    )?;
    Ok(RecordBatch::try_new(
        records_schema(),
        vec![
            Arc::new(rows.iter().map(|r| r.image_id).collect::<Int64Array>()),
            strings(&|r| Some(r.split.as_str())),
            strings(&|r| Some(r.file_name.as_str())),
            Arc::new(rows.iter().map(|r| r.width).collect::<Int32Array>()),
            Arc::new(rows.iter().map(|r| r.height).collect::<Int32Array>()),
            Arc::new(captions),
            Arc::new(dialog),
            strings(&|r| r.dialogue.as_ref().map(|d| d.caption.as_str())),
            strings(&|r| r.dialogue.as_ref().map(|d| d.source.as_str())),
        ],
    )?)
}

fn zstd_props() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build()
}

fn write_batches(
    path: &Path,
    schema: SchemaRef,
    batches: &[RecordBatch],
    props: WriterProperties,
) -> Result<()> {
    let file = AtomicFile::create(path)?;
    let mut writer = ArrowWriter::try_new(file, schema, Some(props))?;
    for b in batches {
        writer.write(b)?;
    }
    let file = writer.into_inner()?;
    file.commit()?;
    Ok(())
}

/// Writes `records.parquet` atomically, in row groups of 8192 records.
pub fn write_records(path: &Path, rows: &[Record]) -> Result<()> {
    let batches = rows
        .chunks(8192)
        .map(records_batch)
        .collect::<Result<Vec<_>>>()?;
    write_batches(path, records_schema(), &batches, zstd_props())
}

pub fn write_issues(path: &Path, issues: &[Issue]) -> Result<()> {
    let batches = issues
        .chunks(8192)
        .map(|rows| {
            let s = |f: &dyn Fn(&Issue) -> String| -> ArrayRef {
                Arc::new(rows.iter().map(|i| Some(f(i))).collect::<StringArray>())
            };
            Ok(RecordBatch::try_new(
                issues_schema(),
                vec![
                    s(&|i| i.file.clone()),
                    s(&|i| i.record.clone()),
                    s(&|i| i.field.clone()),
                    Arc::new(rows.iter().map(|i| i.image_id).collect::<Int64Array>()),
                    s(&|i| format!("{:?}", i.reason.action()).to_lowercase()),
                    s(&|i| i.reason.code()),
                    s(&|i| i.detail.clone()),
                ],
            )?)
        })
        .collect::<Result<Vec<_>>>()?;
    write_batches(path, issues_schema(), &batches, zstd_props())
}

/// Streams one image table (one split, one size): each [`ImageTableWriter::write_group`] call
/// becomes one Parquet row group, so a loader can read any slice without the rest.
pub struct ImageTableWriter {
    writer: ArrowWriter<AtomicFile>,
    size: u32,
    rows: u64,
}

impl ImageTableWriter {
    pub fn create(path: &Path, size: u32) -> Result<Self> {
        let file = AtomicFile::create(path)?;
        // PNG bytes are already compressed: Parquet compression would only cost time.
        let props = WriterProperties::builder()
            .set_compression(Compression::UNCOMPRESSED)
            .set_max_row_group_row_count(None)
            .set_max_row_group_bytes(None)
            .set_dictionary_enabled(false)
            .build();
        Ok(Self {
            writer: ArrowWriter::try_new(file, images_schema(size), Some(props))?,
            size,
            rows: 0,
        })
    }

    pub fn write_group(&mut self, ids: &[i64], pngs: &[&[u8]]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let batch = RecordBatch::try_new(
            images_schema(self.size),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(pngs.iter().map(|p| Some(*p)).collect::<BinaryArray>()),
            ],
        )?;
        self.writer.write(&batch)?;
        self.writer.flush()?;
        self.rows += ids.len() as u64;
        Ok(())
    }

    /// Finishes the file and publishes it; returns the row count.
    pub fn finish(self) -> Result<u64> {
        let file = self.writer.into_inner()?;
        file.commit()?;
        Ok(self.rows)
    }
}

/// Opens a Parquet file and checks its schema version and columns against `expected`.
fn open_checked(
    path: &Path,
    expected: &SchemaRef,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(open_file(path)?)?;
    check_schema(path, builder.schema(), expected)?;
    Ok(builder.with_batch_size(8192).build()?)
}

fn string_at(a: &StringArray, i: usize) -> Option<String> {
    a.is_valid(i).then(|| a.value(i).to_string())
}

/// Reads `records.parquet` whole (it holds texts only: ≈100 MB for all of COCO).
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for batch in open_checked(path, &records_schema())? {
        let batch = batch?;
        let ids: &Int64Array = column(&batch, "image_id", path)?;
        let split: &StringArray = column(&batch, "split", path)?;
        let file: &StringArray = column(&batch, "file_name", path)?;
        let width: &Int32Array = column(&batch, "width", path)?;
        let height: &Int32Array = column(&batch, "height", path)?;
        let captions: &ListArray = column(&batch, "captions", path)?;
        let dialog: &ListArray = column(&batch, "dialog", path)?;
        let dcap: &StringArray = column(&batch, "dialog_caption", path)?;
        let dsrc: &StringArray = column(&batch, "visdial_source", path)?;
        for i in 0..batch.num_rows() {
            let caps = captions.value(i);
            let caps = caps
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| FormatError::contract(path, "captions: not a list of strings"))?;
            let dialogue = if dialog.is_valid(i) {
                let turns = dialog.value(i);
                let turns = turns
                    .as_any()
                    .downcast_ref::<StructArray>()
                    .ok_or_else(|| FormatError::contract(path, "dialog: not a list of structs"))?;
                let q = turns.column(0).as_any().downcast_ref::<StringArray>();
                let a = turns.column(1).as_any().downcast_ref::<StringArray>();
                let (Some(q), Some(a)) = (q, a) else {
                    return Err(FormatError::contract(
                        path,
                        "dialog: turn fields are not strings",
                    ));
                };
                Some(Dialogue {
                    caption: string_at(dcap, i).unwrap_or_default(),
                    source: string_at(dsrc, i).unwrap_or_default(),
                    turns: (0..turns.len())
                        .map(|t| Turn {
                            question: q.value(t).to_string(),
                            answer: string_at(a, t),
                        })
                        .collect(),
                })
            } else {
                None
            };
            out.push(Record {
                image_id: ids.value(i),
                split: split.value(i).to_string(),
                file_name: file.value(i).to_string(),
                width: width.value(i),
                height: height.value(i),
                captions: (0..caps.len()).map(|c| caps.value(c).to_string()).collect(),
                dialogue,
            });
        }
    }
    Ok(out)
}

pub fn read_issues(path: &Path) -> Result<Vec<Issue>> {
    let mut out = Vec::new();
    for batch in open_checked(path, &issues_schema())? {
        let batch = batch?;
        let s = |n: &str| column::<StringArray>(&batch, n, path);
        let (file, record, field, reason, detail) = (
            s("file")?,
            s("record")?,
            s("field")?,
            s("reason")?,
            s("detail")?,
        );
        let ids: &Int64Array = column(&batch, "image_id", path)?;
        for i in 0..batch.num_rows() {
            let reason: Reason =
                serde_json::from_value(serde_json::Value::String(reason.value(i).to_string()))
                    .map_err(|_| {
                        FormatError::contract(
                            path,
                            format!("row {i}: unknown reason {:?}", reason.value(i)),
                        )
                    })?;
            out.push(Issue {
                file: file.value(i).to_string(),
                record: record.value(i).to_string(),
                field: field.value(i).to_string(),
                image_id: ids.is_valid(i).then(|| ids.value(i)),
                reason,
                detail: detail.value(i).to_string(),
            });
        }
    }
    Ok(out)
}

/// Reads the image ids of an image table, in order (to verify coverage without decoding pixels).
pub fn read_image_ids(path: &Path, size: u32) -> Result<Vec<i64>> {
    Ok(image_ids_by_group(path, size)?.concat())
}

/// The image ids of an image table, one list per row group (which group holds which image),
/// from one read of the id column and the footer; the table's image size is checked against
/// `size`.
///
/// # Errors
/// An unreadable file, another image size, or row groups that do not add up to the ids.
pub fn image_ids_by_group(path: &Path, size: u32) -> Result<Vec<Vec<i64>>> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(open_file(path)?)?;
    check_schema(path, builder.schema(), &images_schema(size))?;
    let stored = builder
        .schema()
        .metadata()
        .get("chatpainter.image_size")
        .cloned();
    if stored != Some(size.to_string()) {
        return Err(FormatError::contract(
            path,
            format!("image size {stored:?}, expected {size}"),
        ));
    }
    let rows: Vec<usize> = builder
        .metadata()
        .row_groups()
        .iter()
        .map(|g| usize::try_from(g.num_rows()).unwrap_or_default())
        .collect();
    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [0]);
    let mut ids = Vec::new();
    for batch in builder.with_projection(mask).build()? {
        let batch = batch?;
        let col: &Int64Array = column(&batch, "image_id", path)?;
        ids.extend(col.values().iter().copied());
    }
    let mut next = ids.into_iter();
    let mut groups = Vec::with_capacity(rows.len());
    for (g, n) in rows.into_iter().enumerate() {
        let group: Vec<i64> = next.by_ref().take(n).collect();
        if group.len() != n {
            return Err(FormatError::contract(
                path,
                format!("row group {g} holds more rows than the file's image ids"),
            ));
        }
        groups.push(group);
    }
    Ok(groups)
}

/// Encodes RGB as the image tables store it (`png-rgb8`) (fast compression, adaptive filter).
pub fn encode_png(rgb: &RgbImage) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::with_capacity(rgb.as_raw().len() / 2);
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, PngFilter::Adaptive)
        .write_image(
            rgb.as_raw(),
            rgb.width(),
            rgb.height(),
            image::ExtendedColorType::Rgb8,
        )?;
    Ok(out)
}

/// Decodes a stored PNG back to RGB (for loaders and tests).
pub fn decode_png(bytes: &[u8]) -> Result<RgbImage, image::ImageError> {
    Ok(image::load_from_memory_with_format(bytes, ImageFormat::Png)?.to_rgb8())
}

/// Reads the `(image_id, png)` pairs of one row group, after the same schema checks as every
/// reader (the image size is the caller's to check, with [`read_image_ids`]).
pub fn read_image_group(path: &Path, group: usize) -> Result<Vec<(i64, Vec<u8>)>> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(open_file(path)?)?;
    check_schema(path, builder.schema(), &images_schema(0))?;
    let groups = builder.metadata().num_row_groups();
    if group >= groups {
        return Err(FormatError::contract(
            path,
            format!("row group {group} requested, file has {groups}"),
        ));
    }
    let mut out = Vec::new();
    for batch in builder.with_row_groups(vec![group]).build()? {
        let batch = batch?;
        let ids: &Int64Array = column(&batch, "image_id", path)?;
        let png: &BinaryArray = column(&batch, "png", path)?;
        for i in 0..batch.num_rows() {
            out.push((ids.value(i), png.value(i).to_vec()));
        }
    }
    Ok(out)
}

/// The image tables of `split` at `load_size` px, as the ingest manifest's summary lists them
/// (a merged dataset's tables stay in its shards' folders).
///
/// # Errors
/// An unreadable manifest, or no tables of that size and split (naming the manifest).
pub fn image_tables(ingest_dir: &Path, split: &str, load_size: u32) -> Result<Vec<PathBuf>> {
    let manifest = Manifest::load(ingest_dir)?;
    let path = Manifest::path_in(ingest_dir);
    let summary: IngestSummary = serde_json::from_value(manifest.summary.clone())
        .map_err(|e| FormatError::contract(&path, format!("ingest manifest summary: {e}")))?;
    let tables = summary
        .image_tables
        .get(&load_size)
        .and_then(|by_split| by_split.get(split))
        .ok_or_else(|| {
            FormatError::contract(
                &path,
                format!(
                    "no {load_size}-px image tables for split `{split}` (add {load_size} to ingest.load_sizes)"
                ),
            )
        })?;
    Ok(tables.iter().map(|rel| ingest_dir.join(rel)).collect())
}

/// Row groups of an image table (each one `row_group_size` images), from its footer.
///
/// # Errors
/// An unreadable file or footer, naming the file.
pub fn image_row_groups(path: &Path) -> Result<usize> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(open_file(path)?)?;
    Ok(builder.metadata().num_row_groups())
}
