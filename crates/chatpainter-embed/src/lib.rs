//! The embed stage: every caption, whole dialogue and dialogue turn of an ingested dataset through
//! the configured text encoders (`chatpainter_model::text`), via an incremental cache
//! ([`cache`]), into `embeddings.parquet` ([`stage`]); [`bench`] measures it
//! (`chatpainter bench embed`).

pub mod bench;
pub mod cache;
pub mod stage;
