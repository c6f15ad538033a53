//! Errors of rebuilding and running a trained run's networks. Training wraps them variant for
//! variant (`chatpainter_train::TrainError` has the same variants and messages).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A bad configuration value (the message starts with the key).
    #[error("{0}")]
    Config(String),
    /// The data breaks a contract (names the image or file).
    #[error("{0}")]
    Data(String),
    /// An unreadable checkpoint file.
    #[error("{path}: {message}", path = .path.display())]
    Checkpoint { path: PathBuf, message: String },
    /// A Burn record (weights) could not be written or read.
    #[error("{path}: record: {message}", path = .path.display())]
    Record { path: PathBuf, message: String },
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Artifact(#[from] chatpainter_artifacts::ArtifactError),
    #[error(transparent)]
    Format(#[from] chatpainter_formats::FormatError),
    #[error("network: {0}")]
    Nn(#[from] chatpainter_nn::NnError),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    /// A bug in this crate.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
