//! One module per command family; `stage` holds the template every pipeline-stage command
//! follows (pipeline table, stage directory and log, the artifact contract, the outcome line).

pub mod bench;
pub mod embed;
pub mod eval;
pub mod generate;
pub mod gpu_check;
pub mod ingest;
pub mod models;
pub mod report;
mod stage;
pub mod train;
pub mod verify;
