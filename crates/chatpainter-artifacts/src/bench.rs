//! One benchmark figure, as every `chatpainter bench <stage>` prints it (one JSON object per
//! line on stdout) and `cargo xtask bench` collects into one table.

use serde::{Deserialize, Serialize};

/// A measured figure with its unit and the conditions that produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchRow {
    /// What was measured, e.g. `embed minilm short turns`.
    pub name: String,
    pub value: f64,
    /// e.g. `sentences/s`, `ms/step`, `MiB`.
    pub unit: String,
    /// Device, batch size, thread count and anything else needed to read the figure.
    #[serde(default)]
    pub conditions: String,
}

impl BenchRow {
    pub fn new(
        name: impl Into<String>,
        value: f64,
        unit: impl Into<String>,
        conditions: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.into(),
            conditions: conditions.into(),
        }
    }
}

/// The process's peak resident memory (`VmHWM`) in MiB, where the OS reports it (Linux).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
