//! A Stage-II run directory made from a reference StackGAN-Pytorch generator checkpoint (a
//! `torch.save(netG.state_dict())` of `STAGE2_G`, whose keys include the nested `STAGE1_G.*`
//! weights, like the released COCO `netG_epoch_90.pth`), so the generation path
//! ([`chatpainter_model::generate::RunGenerator`], `eval`, `generate`) samples from it like from our own runs.
//!
//! The directory gets what a training run leaves: `config.json` (stage `stage2`, zero training
//! steps) and `checkpoints/step-000000000/` with the imported G, a freshly initialised D and empty
//! optimiser states (a generator checkpoint has no D). Our own Stage-II exports the same layout
//! back: `stage2_g.safetensors` and `stage2_g.pth` under the reference names.

use std::path::Path;

use crate::TrainError;
use crate::checkpoint::{self, CHECKPOINT_FORMAT, TrainState};
use crate::config::TrainConfig;
use crate::import::{ImportReport, load_reference_pth};
use crate::trainer::{RESOLVED_CONFIG_FILE, ResolvedConfig, Stage1Origin, adam};
use chatpainter_artifacts::{Stage, Xoshiro256};
use chatpainter_model::Variant;
use chatpainter_model::networks::{Stage1Generator, Stage2Generator};

/// Imports `pth` into a new Stage-II run directory `out_dir` with the widths of `cfg` (its
/// network preset and overrides; `stackgan-pytorch-coco` for the released COCO model) and the
/// caption width of the checkpoint (1024 for char-CNN-RNN). Only the caption-only (`stackgan`)
/// and non-recurrent variants can come from a reference file: the recurrent variant's BiLSTM
/// has no reference counterpart.
///
/// # Errors
/// [`TrainError::Config`] for the recurrent variant or bad widths; the import's errors (a
/// missing tensor, a shape mismatch naming the tensor and both shapes) as [`TrainError`].
pub fn import_stage2_generator(
    pth: &Path,
    cfg: &TrainConfig,
    caption_dim: usize,
    dialogue_dim: usize,
    out_dir: &Path,
) -> Result<ImportReport, TrainError> {
    if cfg.variant == Variant::ChatpainterRecurrent {
        return Err(TrainError::Config(
            "variant: chatpainter-recurrent needs the dialogue BiLSTM, which a reference \
             StackGAN checkpoint does not have"
                .into(),
        ));
    }
    cfg.validate()?;
    let stage1_net = cfg.network(caption_dim, dialogue_dim)?;
    let net = cfg.network2(&stage1_net)?;
    let (device, _) = cfg.device.devices();
    let (g1, _) = Stage1Generator::init(&stage1_net, cfg.variant, &device, cfg.seed);
    let (g2, d) = Stage2Generator::init(&net, cfg.variant, g1, &device, cfg.seed)?;
    let (g, report) = load_reference_pth(g2.g, pth)?;
    let g2 = Stage2Generator {
        g,
        dialogue: g2.dialogue,
    }
    .freeze_stage1();

    std::fs::create_dir_all(out_dir).map_err(|e| TrainError::io(out_dir, e))?;
    let resolved = ResolvedConfig {
        stage: Stage::Stage2.name().into(),
        train: cfg.clone(),
        network: net,
        items: 0,
        steps_per_epoch: 0,
        total_steps: 0,
        stage1: Some(Stage1Origin {
            checkpoint: pth.to_path_buf(),
            step: 0,
        }),
        text_stats: None,
    };
    let json = serde_json::to_vec_pretty(&resolved)
        .map_err(|e| TrainError::Internal(format!("serialising the config: {e}")))?;
    chatpainter_artifacts::write_atomic(out_dir.join(RESOLVED_CONFIG_FILE), &json)?;
    let state = TrainState {
        format: CHECKPOINT_FORMAT,
        step: 0,
        epoch: 0,
        next_batch: 0,
        permutation: Vec::new(),
        data_rng: Xoshiro256::new(cfg.seed, 1),
        noise_rng: Xoshiro256::new(cfg.seed, 2),
        lr_halvings: 0,
        config: cfg.clone(),
        network: net,
        world_size: 1,
    };
    let opt = adam(cfg);
    checkpoint::save(out_dir, &state, &g2, &d, &opt, &opt, 1)?;
    Ok(report)
}
