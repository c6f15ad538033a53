//! The error type of this crate.
//!
//! Variants are grouped the way the workspace conventions ask: bad input from the caller
//! (`EmptyText`, `Config`), bad or missing files (`WeightsNotFound`, `WeightsHashMismatch`,
//! `Tensor*`, `Safetensors`, `ModelConfig`, `Tokenizer`), fetching (`Fetch`), asking a
//! precomputed source for new text (`CannotEncode`) and run-time failures (`Io`, `Artifact`,
//! `Tokenize`, `Backend`). Messages name the file, the tensor or the text index.

use std::path::PathBuf;

/// Everything that can go wrong while building or running a text encoder.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A text is empty (or only whitespace). Encoders refuse it instead of inventing a vector:
    /// in this project an empty caption or turn means an upstream bug.
    #[error(
        "text #{index} of the batch is empty after whitespace normalisation; encoders refuse empty texts (filter or fill them upstream)"
    )]
    EmptyText { index: usize },

    /// An encoder was configured with impossible values.
    #[error("invalid encoder configuration: {0}")]
    Config(String),

    /// A model file is missing.
    #[error(
        "MiniLM weights not found: {path} does not exist; run `cargo xtask fetch-models` (or set CHATPAINTER_MODELS to a folder holding all-MiniLM-L6-v2/)"
    )]
    WeightsNotFound { path: PathBuf },

    /// The weights file is not the one this encoder was written and tested for.
    #[error(
        "{path}: sha256 is {found}, expected {expected}; this is not the all-MiniLM-L6-v2 model.safetensors (delete the folder and run `cargo xtask fetch-models`)"
    )]
    WeightsHashMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },

    /// The safetensors file lacks a tensor the network needs.
    #[error("{path}: tensor `{name}` is missing")]
    TensorMissing { path: PathBuf, name: String },

    /// A tensor has the wrong shape.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A tensor is not stored as float32.
    #[error("{path}: tensor `{name}` has dtype {found}, expected F32")]
    TensorDtype {
        path: PathBuf,
        name: String,
        found: String,
    },

    /// The file is not a readable safetensors file.
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },

    /// `config.json` is unreadable or describes a network this code does not implement.
    #[error("{path}: {message}")]
    ModelConfig { path: PathBuf, message: String },

    /// `tokenizer.json` could not be loaded or configured.
    #[error("{path}: cannot load the tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },

    /// The tokenizer failed on one text.
    #[error("tokenising text #{index}: {message}")]
    Tokenize { index: usize, message: String },

    /// Reading back a tensor from the backend failed.
    #[error("backend error: {0}")]
    Backend(String),

    /// Downloading or unpacking the model failed.
    #[error("fetching the model failed: {0}")]
    Fetch(String),

    /// A Skip-Thought model folder lacks files (all missing ones are listed).
    #[error(
        "Skip-Thought files missing in {dir}: {missing:?}; expected {expected:?} (convert the pickled word tables as the `skipthought` module docs show)"
    )]
    SkipThoughtFilesMissing {
        dir: PathBuf,
        missing: Vec<String>,
        expected: Vec<String>,
    },

    /// A file format broken: a `.npy` array (a file or an `.npz` member) that is not plain
    /// float32 or is malformed, an ingested table or `embeddings.parquet` off its schema.
    #[error(transparent)]
    Format(#[from] chatpainter_formats::FormatError),

    /// A pickle file could not be decoded or does not hold what was expected.
    #[error("{path}: {message}")]
    Pickle { path: PathBuf, message: String },

    /// The encoder holds precomputed vectors only (StackGAN's char-CNN-RNN pickles) and was
    /// asked for the vector of a text it has never seen.
    #[error(
        "{encoder} cannot encode new text ({what}): its vectors were precomputed by StackGAN per image; use an encoder that runs on text (minilm, skipthought, hashing) for this"
    )]
    CannotEncode { encoder: String, what: String },

    /// An artifact contract broken by a file (bad JSON, wrong content), naming the file. IO
    /// failures of the shared artifact helpers become [`EmbedError::Io`].
    #[error(transparent)]
    Artifact(chatpainter_artifacts::ArtifactError),

    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl EmbedError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// A device this build or machine cannot use is a configuration problem.
impl From<crate::DeviceError> for EmbedError {
    fn from(e: crate::DeviceError) -> Self {
        Self::Config(e.to_string())
    }
}

impl From<chatpainter_artifacts::ArtifactError> for EmbedError {
    fn from(e: chatpainter_artifacts::ArtifactError) -> Self {
        match e {
            chatpainter_artifacts::ArtifactError::Io { path, source } => Self::Io { path, source },
            other => Self::Artifact(other),
        }
    }
}
