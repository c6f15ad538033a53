//! The crate's one integration-test binary (workspace convention): every module below is a
//! former test file.
//!
//! - [`minilm`]: MiniLM golden values (need the real weights: `$CHATPAINTER_MODELS` or
//!   `data/models`, else they print "skipped" and pass), tiny-weight loading, hashing;
//! - [`skipthought`]: Skip-Thought on tiny random archives against an independent recipe;
//! - [`charcnn`]: StackGAN pickle import from committed fixtures of every protocol;
//! - [`stage`]: the embed stage end to end (char-CNN-RNN captions from pickles this test
//!   writes, quarantine, cache index and part-by-part assembly, text policies).

mod charcnn;
mod minilm;
mod skipthought;
mod stage;
