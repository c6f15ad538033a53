//! Contracts between pipeline stages.
//!
//! Every stage writes into `<run>/<stage>/`: its outputs, the resolved config (`config.toml`),
//! a log, and last of all `manifest.json`, which names every output with its size, row count and
//! content hash, plus digests of the config, of the raw inputs and of the upstream stages' outputs.
//! Because the manifest is written last and atomically, a stage directory without a valid manifest
//! is by definition unfinished, and a manifest that matches today's inputs means the stage can be
//! skipped. No Burn and no Polars here: every crate can depend on this one.

pub mod atomic;
pub mod bench;
pub mod config_diff;
pub mod device;
pub mod digest;
pub mod display;
pub mod launch;
pub mod manifest;
pub mod previous;
pub mod progress;
pub mod rng;
pub mod run;
pub mod stage;
pub mod xoshiro;

pub use atomic::{AtomicFile, write_atomic};
pub use bench::BenchRow;
pub use digest::{Sha256Writer, sha256_bytes, sha256_file};
pub use manifest::{Freshness, Manifest, OutputFile, StageKey};
pub use progress::{NoProgress, Progress};
pub use rng::SplitMix;
pub use run::{RunDir, Stage, UnknownStage};
pub use stage::{Decision, Outcome, StageOutput, decide, run_decided, run_stage};
pub use xoshiro::Xoshiro256;

/// Version of the manifest layout and of the Parquet schemas written by this tool. Readers refuse
/// artifacts written with another version instead of guessing.
pub const SCHEMA_VERSION: u32 = 1;

/// The tool version stamped into every manifest.
pub const TOOL_VERSION: &str = concat!("chatpainter ", env!("CARGO_PKG_VERSION"));

/// Errors about artifacts: IO on a named path, or a contract broken by a file on disk.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Contract {
        path: std::path::PathBuf,
        message: String,
    },
}

impl ArtifactError {
    pub fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
    pub fn contract(path: impl Into<std::path::PathBuf>, message: impl Into<String>) -> Self {
        Self::Contract {
            path: path.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = ArtifactError> = std::result::Result<T, E>;

/// Seconds since the Unix epoch now (0 if the clock is before it).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
