//! `chatpainter bench <what>`: the stage benchmarks. Each prints one JSON [`BenchRow`] per line
//! on stdout; `cargo xtask bench` collects them into one table. Benchmarks measure, they never
//! assert: figures go into issue notes with the machine they ran on.

use anyhow::{Result, bail};
use chatpainter_artifacts::BenchRow;

/// Runs one benchmark by name.
pub fn run(what: &str) -> Result<Vec<BenchRow>> {
    match what {
        other => bail!("bench {other}: unknown benchmark"),
    }
}
