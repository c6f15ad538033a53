//! What the runner's integration tests share: the `chatpainter` binary and the smoke pipeline.

use anyhow::Result;
use std::path::PathBuf;
use std::sync::OnceLock;
use xtask::runner::{Binary, Profile, build_cli};
use xtask::util::root;

/// `$CHATPAINTER_BIN` if set, else built once per test binary (dev profile; a no-op when
/// `cargo test --workspace` already built it).
pub fn chatpainter() -> Result<Binary> {
    static BIN: OnceLock<std::result::Result<Binary, String>> = OnceLock::new();
    BIN.get_or_init(|| build_cli(None, Profile::Dev).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

pub fn smoke_toml() -> PathBuf {
    root().join("pipelines/smoke.toml")
}
