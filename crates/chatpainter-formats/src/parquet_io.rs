//! What every table's reader and writer share: the file metadata that stamps a table, and the
//! check run on open (schema version, then every expected column's type).

use crate::error::{FormatError, Result};
use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema};
use chatpainter_artifacts::SCHEMA_VERSION;
use std::collections::HashMap;
use std::path::Path;

/// File metadata of a table: `chatpainter.table`, `chatpainter.schema_version` and `extra`
/// (keys without the `chatpainter.` prefix).
pub(crate) fn metadata(table: &str, extra: &[(&str, String)]) -> HashMap<String, String> {
    let mut m = HashMap::from([
        ("chatpainter.table".to_string(), table.to_string()),
        (
            "chatpainter.schema_version".to_string(),
            SCHEMA_VERSION.to_string(),
        ),
    ]);
    for (k, v) in extra {
        m.insert(format!("chatpainter.{k}"), v.clone());
    }
    m
}

/// Checks a file's schema version and that every column of `expected` is present with the
/// expected type (equal up to the names and nullability of nested fields, which writers other
/// than ours may spell differently).
pub(crate) fn check_schema(path: &Path, found: &Schema, expected: &Schema) -> Result<()> {
    match found.metadata().get("chatpainter.schema_version") {
        Some(v) if *v == SCHEMA_VERSION.to_string() => {}
        other => {
            return Err(FormatError::contract(
                path,
                format!("schema version {other:?}, expected {SCHEMA_VERSION}"),
            ));
        }
    }
    for field in expected.fields() {
        match found.field_with_name(field.name()) {
            Err(_) => {
                return Err(FormatError::contract(
                    path,
                    format!("column `{}` is missing", field.name()),
                ));
            }
            Ok(f) if !same_type(f.data_type(), field.data_type()) => {
                return Err(FormatError::contract(
                    path,
                    format!(
                        "column `{}`: expected {}, found {}",
                        field.name(),
                        field.data_type(),
                        f.data_type()
                    ),
                ));
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Types equal up to the names and nullability of nested fields.
fn same_type(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::List(x), DataType::List(y)) => same_type(x.data_type(), y.data_type()),
        (DataType::FixedSizeList(x, n), DataType::FixedSizeList(y, m)) => {
            n == m && same_type(x.data_type(), y.data_type())
        }
        (DataType::Struct(x), DataType::Struct(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|(f, g)| f.name() == g.name() && same_type(f.data_type(), g.data_type()))
        }
        _ => a == b,
    }
}

/// A column of a batch as its concrete array type, or an error naming file and column.
pub(crate) fn column<'a, T: 'static>(
    batch: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            FormatError::contract(path, format!("column `{name}` is missing or mistyped"))
        })
}

pub(crate) fn open_file(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| FormatError::io(path, e))
}
