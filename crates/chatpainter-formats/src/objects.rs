//! `objects.parquet`: the objects of every kept image, from COCO-format instance annotations
//! (`instances_train2014.json` / `instances_val2014.json`: a category and a box per object).
//! Ingest writes it when the pipeline lists instance files; the training stages read it for the
//! auxiliary object-recognition loss on D (`object_loss`).
//!
//! Boxes are stored relative to the image (`x`, `y`, `w`, `h` in `[0, 1]` of the decoded source
//! width and height), because every stored load size is a squash of the whole source image: a
//! relative box is the same box in each of them. The category list of the instance files (id and
//! name, in id order) is in the file metadata (`chatpainter.categories`, JSON), so that a network
//! head can give every category a fixed index even when a split holds none of some category.

use crate::error::{FormatError, Result};
use crate::parquet_io::{check_schema, column, metadata, open_file};
use arrow::array::{Float32Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chatpainter_artifacts::AtomicFile;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// The file name inside the ingest stage directory.
pub const OBJECTS_FILE: &str = "objects.parquet";

/// One category of the instance files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Category {
    pub id: i32,
    pub name: String,
}

/// One annotated object.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectBox {
    pub image_id: i64,
    pub split: String,
    pub category_id: i32,
    /// Left, top, width, height, each a fraction of the source image's width or height.
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

impl ObjectBox {
    /// The box centre `(cx, cy)`, fractions of the image's width and height.
    pub fn centre(&self) -> (f32, f32) {
        (self.x + self.w / 2.0, self.y + self.h / 2.0)
    }
}

/// The objects table: every box plus the category list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Objects {
    /// In id order, ids unique.
    pub categories: Vec<Category>,
    /// In `(image_id, annotation order)` order.
    pub boxes: Vec<ObjectBox>,
}

impl Objects {
    /// The index of category `id` in [`Self::categories`] (the network head's channel).
    pub fn category_index(&self, id: i32) -> Option<usize> {
        self.categories.binary_search_by_key(&id, |c| c.id).ok()
    }
}

pub fn objects_schema() -> SchemaRef {
    schema_with(Vec::new())
}

fn schema_with(extra: Vec<(&str, String)>) -> SchemaRef {
    let f32_field = |name: &str| Field::new(name, DataType::Float32, false);
    Arc::new(
        Schema::new(vec![
            Field::new("image_id", DataType::Int64, false),
            Field::new("split", DataType::Utf8, false),
            Field::new("category_id", DataType::Int32, false),
            f32_field("x"),
            f32_field("y"),
            f32_field("w"),
            f32_field("h"),
        ])
        .with_metadata(metadata("objects", &extra)),
    )
}

/// Writes `objects.parquet` atomically (row groups of 65,536 boxes).
///
/// # Errors
/// [`FormatError::Contract`] when the categories are not in strictly increasing id order or a
/// box names a category not in the list; IO and Parquet errors naming the file.
pub fn write_objects(path: &Path, objects: &Objects) -> Result<()> {
    if objects.categories.windows(2).any(|w| w[0].id >= w[1].id) {
        return Err(FormatError::contract(
            path,
            "categories are not in strictly increasing id order",
        ));
    }
    if let Some(b) = objects
        .boxes
        .iter()
        .find(|b| objects.category_index(b.category_id).is_none())
    {
        return Err(FormatError::contract(
            path,
            format!(
                "image {}: category {} is not in the category list",
                b.image_id, b.category_id
            ),
        ));
    }
    let categories = serde_json::to_string(&objects.categories)
        .map_err(|e| FormatError::contract(path, format!("categories: {e}")))?;
    let schema = schema_with(vec![("categories", categories)]);
    let file = AtomicFile::create(path)?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), None)?;
    for rows in objects.boxes.chunks(65_536) {
        let floats = |f: fn(&ObjectBox) -> f32| -> Arc<Float32Array> {
            Arc::new(rows.iter().map(f).collect::<Float32Array>())
        };
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(rows.iter().map(|b| b.image_id).collect::<Int64Array>()),
                Arc::new(
                    rows.iter()
                        .map(|b| Some(b.split.as_str()))
                        .collect::<StringArray>(),
                ),
                Arc::new(rows.iter().map(|b| b.category_id).collect::<Int32Array>()),
                floats(|b| b.x),
                floats(|b| b.y),
                floats(|b| b.w),
                floats(|b| b.h),
            ],
        )?;
        writer.write(&batch)?;
    }
    writer.into_inner()?.commit()?;
    Ok(())
}

/// Reads `objects.parquet` whole (COCO 2014's ≈ 890k boxes are ≈ 30 MB in memory).
///
/// # Errors
/// Schema, metadata and value errors naming the file (and the image for a bad box).
pub fn read_objects(path: &Path) -> Result<Objects> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(open_file(path)?)?;
    check_schema(path, builder.schema(), &objects_schema())?;
    let categories: Vec<Category> = match builder.schema().metadata().get("chatpainter.categories")
    {
        Some(json) => serde_json::from_str(json).map_err(|e| {
            FormatError::contract(path, format!("metadata `chatpainter.categories`: {e}"))
        })?,
        None => {
            return Err(FormatError::contract(
                path,
                "metadata `chatpainter.categories` is missing",
            ));
        }
    };
    let mut objects = Objects {
        categories,
        boxes: Vec::new(),
    };
    if objects.categories.windows(2).any(|w| w[0].id >= w[1].id) {
        return Err(FormatError::contract(
            path,
            "metadata `chatpainter.categories`: ids are not strictly increasing",
        ));
    }
    for batch in builder.with_batch_size(65_536).build()? {
        let batch = batch?;
        let ids: &Int64Array = column(&batch, "image_id", path)?;
        let split: &StringArray = column(&batch, "split", path)?;
        let cat: &Int32Array = column(&batch, "category_id", path)?;
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|n| column::<Float32Array>(&batch, n, path));
        let (x, y, w, h) = (x?, y?, w?, h?);
        for i in 0..batch.num_rows() {
            let b = ObjectBox {
                image_id: ids.value(i),
                split: split.value(i).to_string(),
                category_id: cat.value(i),
                x: x.value(i),
                y: y.value(i),
                w: w.value(i),
                h: h.value(i),
            };
            if objects.category_index(b.category_id).is_none() {
                return Err(FormatError::contract(
                    path,
                    format!(
                        "image {}: category {} is not in the category list",
                        b.image_id, b.category_id
                    ),
                ));
            }
            let inside = |v: f32| (0.0..=1.0).contains(&v);
            if !(inside(b.x) && inside(b.y) && inside(b.x + b.w) && inside(b.y + b.h))
                || b.w <= 0.0
                || b.h <= 0.0
            {
                return Err(FormatError::contract(
                    path,
                    format!("image {}: box {:?} is not inside the image", b.image_id, b),
                ));
            }
            objects.boxes.push(b);
        }
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Objects {
        let b = |image_id, category_id, x| ObjectBox {
            image_id,
            split: "train".into(),
            category_id,
            x,
            y: 0.25,
            w: 0.2,
            h: 0.5,
        };
        Objects {
            categories: vec![
                Category {
                    id: 1,
                    name: "red circle".into(),
                },
                Category {
                    id: 7,
                    name: "blue square".into(),
                },
            ],
            boxes: vec![b(3, 7, 0.1), b(3, 1, 0.7), b(9, 1, 0.0)],
        }
    }

    #[test]
    fn round_trips_with_categories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(OBJECTS_FILE);
        let objects = sample();
        write_objects(&path, &objects).expect("write");
        let back = read_objects(&path).expect("read");
        assert_eq!(back, objects);
        assert_eq!(back.category_index(7), Some(1));
        assert_eq!(back.boxes[0].centre(), (0.2, 0.5));
    }

    #[test]
    fn unknown_categories_and_boxes_outside_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(OBJECTS_FILE);
        let mut objects = sample();
        objects.boxes[1].category_id = 5;
        let err = write_objects(&path, &objects).expect_err("unknown category");
        assert!(err.to_string().contains("image 3: category 5"), "{err}");
        let mut objects = sample();
        objects.boxes[2].x = 0.9;
        write_objects(&path, &objects).expect("the writer trusts the boxes");
        let err = read_objects(&path).expect_err("box outside");
        assert!(
            err.to_string().contains("image 9") && err.to_string().contains(OBJECTS_FILE),
            "{err}"
        );
    }
}
