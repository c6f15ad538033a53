//! Whole-file and whole-run errors. Per-record problems are not errors: they are
//! [`chatpainter_formats::quality::Issue`]s, quarantined and counted (unless `strict`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Malformed JSON or the wrong schema; serde_json's message carries line and column.
    #[error("{path}: {message} (line {line}, column {column})")]
    Json {
        path: PathBuf,
        message: String,
        line: usize,
        column: usize,
    },
    #[error("{0}")]
    Config(String),
    #[error("strict mode: {count} record(s) would be quarantined; first: {first}")]
    Strict { count: usize, first: String },
    #[error("{path}: {message}")]
    Contract { path: PathBuf, message: String },
    #[error(transparent)]
    Format(#[from] chatpainter_formats::FormatError),
    #[error(transparent)]
    Artifact(#[from] chatpainter_artifacts::ArtifactError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("polars: {0}")]
    Polars(#[from] polars::error::PolarsError),
    #[error("{path}: image: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
}

impl IngestError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
    pub fn contract(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Contract {
            path: path.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = IngestError> = std::result::Result<T, E>;
