//! Logging (stderr + the stage's `log.txt`) and progress bars (only on a terminal, never in CI).

use chatpainter_artifacts::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

/// Installs the subscriber; `log_file` (appended to) receives the same events without colours.
pub fn init_logging(log_file: Option<&Path>) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_from_env("CHATPAINTER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match log_file {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            builder
                .with_ansi(false)
                .with_writer(std::io::stderr.and(Mutex::new(file)))
                .try_init()
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
        None => builder
            .with_writer(std::io::stderr)
            .try_init()
            .map_err(|e| anyhow::anyhow!("{e}")),
    }
}

/// An indicatif bar, hidden when stderr is not a terminal or `CI` is set.
pub struct Bar {
    bar: Mutex<Option<ProgressBar>>,
    visible: bool,
}

impl Bar {
    pub fn new() -> Self {
        Self {
            bar: Mutex::new(None),
            visible: std::io::stderr().is_terminal() && std::env::var_os("CI").is_none(),
        }
    }
}

impl Default for Bar {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for Bar {
    fn start(&self, label: &str, total: u64) {
        if !self.visible {
            tracing::info!("{label}: {total} items");
            return;
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(label.to_string());
        if let Ok(mut b) = self.bar.lock() {
            *b = Some(bar);
        }
    }
    fn advance(&self, n: u64) {
        if let Ok(b) = self.bar.lock()
            && let Some(bar) = b.as_ref()
        {
            bar.inc(n);
        }
    }
    fn finish(&self) {
        if let Ok(mut b) = self.bar.lock()
            && let Some(bar) = b.take()
        {
            bar.finish_and_clear();
        }
    }
}

pub use chatpainter_artifacts::bench::peak_rss_mib;
