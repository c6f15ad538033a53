//! One error type for reading and writing the formats, always naming the file.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file breaks its contract: schema version, a missing column, a column of the wrong
    /// type, a bad value in a record.
    #[error("{path}: {message}")]
    Contract { path: PathBuf, message: String },
    /// A `.npy` array (or an `.npz` member) that cannot be read as asked.
    #[error("{path}: {member}: {message}")]
    Npy {
        path: PathBuf,
        member: String,
        message: String,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Artifact(#[from] chatpainter_artifacts::ArtifactError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

impl FormatError {
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

pub type Result<T, E = FormatError> = std::result::Result<T, E>;

/// Reads a JSON file into `T`, naming the file on any error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| FormatError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json<T: serde::Serialize>(path: &std::path::Path, value: &T) -> Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(|source| FormatError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    chatpainter_artifacts::write_atomic(path, &json)?;
    Ok(())
}
