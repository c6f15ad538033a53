//! The embed stage: every caption, whole dialogue and dialogue turn of an ingested dataset through
//! the configured text encoders (`chatpainter_model::text`), via an incremental cache
//! ([`cache`]), into `embeddings.parquet` ([`stage`], assembled through [`scratch`]);
//! [`config`] is its `[embed]` table, [`report`] what a run reports, [`verify`] the re-encoding
//! check, and [`bench`] measures it (`chatpainter bench embed`).

pub mod bench;
pub mod cache;
pub mod config;
pub mod report;
mod scratch;
pub mod stage;
pub mod verify;
