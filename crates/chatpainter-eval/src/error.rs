//! Error type of the evaluation metrics library.
//!
//! Variants are grouped as in every crate here: user/config errors (bad arguments),
//! data/contract errors (a weights or statistics file that does not match what we expect,
//! named with the file, the tensor or array, expected vs found), and IO errors. Nothing in this
//! crate panics on user-controlled input; every such failure ends up here.

use std::path::PathBuf;

/// Everything that can go wrong in `chatpainter-eval`.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    // ---- user / configuration errors -------------------------------------------------------
    /// An argument is out of its valid range (empty input, fewer rows than splits, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// An input image batch does not have the layout or value range the function expects.
    #[error("invalid image batch: {0}")]
    InvalidImages(String),

    /// A probability matrix row is not a probability distribution.
    #[error("invalid probability matrix: row {row}: {reason}")]
    InvalidProbabilities {
        /// Zero-based row index.
        row: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// Two statistics / feature sets that must agree in dimension do not.
    #[error("dimension mismatch: {what}: expected {expected}, found {found}")]
    DimensionMismatch {
        /// Which quantity.
        what: String,
        /// Expected dimension.
        expected: usize,
        /// Found dimension.
        found: usize,
    },

    // ---- data / contract errors: weights files ---------------------------------------------
    /// The weights file given explicitly by the user does not exist.
    #[error("weights file {path} does not exist")]
    WeightsNotFound {
        /// The path the user gave.
        path: PathBuf,
    },

    /// The weights file could not be parsed as a PyTorch checkpoint or safetensors file.
    #[error("cannot read weights file {path}: {reason}")]
    WeightsUnreadable {
        /// The file.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },

    /// A tensor the network needs is absent from the weights file.
    #[error("weights file {path}: tensor `{tensor}` (shape {expected:?}) is missing")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// PyTorch state_dict name, e.g. `Mixed_5b.branch1x1.conv.weight`.
        tensor: String,
        /// Shape the network expects (PyTorch layout).
        expected: Vec<usize>,
    },

    /// A tensor has a different shape in the file than in the network.
    #[error(
        "weights file {path}: tensor `{tensor}` has shape {found:?} in the file but the network expects {expected:?}"
    )]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// PyTorch state_dict name.
        tensor: String,
        /// Shape the network expects (PyTorch layout).
        expected: Vec<usize>,
        /// Shape stored in the file.
        found: Vec<usize>,
    },

    /// The file holds tensors the network does not know (likely the other backbone's file).
    #[error("weights file {path}: {count} unexpected tensors, e.g. `{example}`")]
    UnexpectedTensors {
        /// The file.
        path: PathBuf,
        /// How many.
        count: usize,
        /// The first one, sorted by name.
        example: String,
    },

    /// burn-store reported errors while copying tensors into the network (dtype, adapter, ...).
    #[error("weights file {path}: applying tensors failed: {reason}")]
    ApplyFailed {
        /// The file.
        path: PathBuf,
        /// burn-store's messages.
        reason: String,
    },

    // ---- data / contract errors: statistics files ------------------------------------------
    /// A `.npz` / `.npy` file is malformed or does not hold what we need.
    #[error("statistics file {path}: {reason}")]
    BadNpz {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// What is wrong, naming the array.
        reason: String,
    },

    // ---- the evaluation / generation stage -------------------------------------------------
    /// A bad `[eval]` value or command-line argument (the message names the key or flag).
    #[error("{0}")]
    Config(String),

    /// A run artifact breaks a contract (the message names the file and the record).
    #[error("{0}")]
    Data(String),

    /// An image file could not be read, decoded or written.
    #[error("image {path}: {reason}")]
    Image {
        /// The file.
        path: PathBuf,
        /// Decoder / encoder message.
        reason: String,
    },

    /// Loading or running the trained generator failed.
    #[error(transparent)]
    Model(#[from] chatpainter_model::ModelError),

    /// Loading or running a text encoder failed.
    #[error(transparent)]
    Embed(#[from] chatpainter_model::text::EmbedError),

    /// Reading the ingested dataset failed.
    #[error(transparent)]
    Format(#[from] chatpainter_formats::FormatError),

    /// A run artifact (manifest, atomic write) failed.
    #[error(transparent)]
    Artifact(#[from] chatpainter_artifacts::ArtifactError),

    // ---- IO and internal --------------------------------------------------------------------
    /// Filesystem error with the path it concerns.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Tensor data could not be read back from the device (a bug or backend failure).
    #[error("tensor data error: {0}")]
    TensorData(String),

    /// A numerical routine failed (e.g. non-finite statistics).
    #[error("numerical error: {0}")]
    Numerical(String),
}

impl EvalError {
    /// Wraps an `std::io::Error` with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, EvalError>;
