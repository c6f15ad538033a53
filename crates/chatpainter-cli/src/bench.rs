//! `chatpainter bench <what>`: the stage benchmarks. Each prints one JSON [`BenchRow`] per line
//! on stdout; `cargo xtask bench` collects them into one table. Benchmarks measure, they never
//! assert: figures go into issue notes with the machine they ran on.

use anyhow::{Result, bail};
use chatpainter_artifacts::BenchRow;

/// Runs one benchmark by name.
pub fn run(what: &str) -> Result<Vec<BenchRow>> {
    match what {
        "embed" => Ok(chatpainter_embed::bench::run(
            &chatpainter_embed::bench::BenchOptions::default(),
        )?),
        // Stage-I step time per device (flex; LibTorch CPU in `tch` builds; or the devices in
        // $CHATPAINTER_BENCH_DEVICES), measured by the train crate.
        "stage1" => {
            let devices = chatpainter_train::gpu_check::bench_devices()?;
            Ok(chatpainter_train::gpu_check::bench_rows(&devices)?)
        }
        // Stage-II step time and peak memory at the paper's widths, batches 2 and 4 (more with
        // $CHATPAINTER_BENCH_BATCHES, e.g. "4,16,64" on a GPU).
        "stage2" => {
            let devices = chatpainter_train::gpu_check::bench_devices()?;
            let batches: Vec<usize> = match std::env::var("CHATPAINTER_BENCH_BATCHES") {
                Ok(list) => list
                    .split(',')
                    .map(|b| b.trim().parse())
                    .collect::<Result<_, _>>()
                    .map_err(|e| anyhow::anyhow!("CHATPAINTER_BENCH_BATCHES={list:?}: {e}"))?,
                Err(_) => vec![2, 4],
            };
            Ok(chatpainter_train::bench::stage2_rows(
                &devices, &batches, 3,
            )?)
        }
        // Training loader: images/s per core for each stage's batch preparation and the cores
        // that keep one and eight H200s fed.
        "loader" => Ok(chatpainter_train::bench::loader_rows(3.0)?),
        "eval" => crate::eval_cmd::bench(chatpainter_train::TrainDevice::Cpu),
        other => bail!("bench {other}: unknown benchmark"),
    }
}
