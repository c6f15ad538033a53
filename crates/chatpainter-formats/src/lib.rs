//! The files the stages hand each other, in one place: every Parquet table's schema with its
//! typed writer and reader, the `.npy`/`.npz` arrays, and the JSON result files.
//!
//! A stage links this crate to read its inputs, never the crate of the stage that wrote them, so
//! the artifacts on disk are the only interface between stages. Every Parquet reader checks
//! `chatpainter.schema_version` in the file metadata and every column's type, and fails naming
//! the file, the column, what it expected and what it found. No Burn, no Polars.

pub mod embeddings;
pub mod error;
pub mod ingested;
pub mod metrics;
pub mod npy;
pub mod objects;
mod parquet_io;
pub mod quality;
pub mod scenes;

pub use error::{FormatError, Result};
