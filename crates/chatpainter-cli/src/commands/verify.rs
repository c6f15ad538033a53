//! `chatpainter verify --run R`: re-hashes every output of the run's finished stages against
//! their manifests.

use anyhow::{Result, bail};
use chatpainter_artifacts::{Manifest, OutputFile, RunDir, Stage};
use std::path::Path;

pub fn verify(run: &Path) -> Result<()> {
    let run = RunDir::new(run);
    let mut checked = 0;
    for stage in Stage::ALL {
        let dir = run.stage(stage);
        let Some(manifest) = Manifest::load_if_present(&dir)? else {
            continue;
        };
        manifest.verify_hashes(&dir)?;
        let bytes: u64 = manifest.outputs.iter().map(|o: &OutputFile| o.bytes).sum();
        println!(
            "{stage}: {} file(s), {bytes} bytes, hashes match",
            manifest.outputs.len()
        );
        checked += 1;
    }
    if checked == 0 {
        bail!("{}: no finished stage to verify", run.root().display());
    }
    Ok(())
}
