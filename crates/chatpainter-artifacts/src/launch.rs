//! How this project starts data-parallel ranks on one machine: one `mpirun` command line, used
//! by `cargo xtask run --devices …` and by the tests that train with two ranks.

use std::process::Command;

/// `mpirun` for `ranks` data-parallel ranks on this machine, each with its share of the cores
/// for LibTorch's threads (flex sizes its own pool from the MPI world): `--oversubscribe`
/// allows more ranks than cores, `--bind-to none` avoids binding failures in containers, and
/// Open MPI is allowed to run as root (CI runs as root).
pub fn mpirun(ranks: usize, gpus: Option<&str>) -> Command {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / ranks).max(1).to_string();
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "-n",
        &ranks.to_string(),
        "--oversubscribe",
        "--bind-to",
        "none",
    ])
    .args(["-x", &format!("OMP_NUM_THREADS={threads}")])
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    if let Some(ids) = gpus {
        cmd.env("CUDA_VISIBLE_DEVICES", ids);
    }
    cmd
}
