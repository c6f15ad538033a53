//! The crate's text-encoder integration tests, one binary (workspace convention):
//!
//! - [`minilm`]: MiniLM golden values (need the real weights: `$CHATPAINTER_MODELS` or
//!   `data/models`, else they print "skipped" and pass), tiny-weight loading, hashing;
//! - [`skipthought`]: Skip-Thought on tiny random archives against an independent recipe;
//! - [`charcnn`]: StackGAN pickle import from committed fixtures of every protocol.

mod charcnn;
mod minilm;
mod skipthought;
