//! The crate's one integration-test binary (workspace convention): every module below is a
//! former test file. (The encoders' own tests are `chatpainter-model`'s `tests/text/`.)
//!
//! - [`stage`]: the embed stage end to end (char-CNN-RNN captions from pickles this test
//!   writes, quarantine, cache index and part-by-part assembly, text policies);
//! - [`minilm_stage`]: the stage's truncation report with the real MiniLM.

mod minilm_stage;
mod stage;
