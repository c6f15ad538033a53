//! The files a completed training stage exports: G, D and the BiLSTM as safetensors under the
//! reference PyTorch names, and for Stage-II also the reference netG layout that `torch.load`
//! reads.

use chatpainter_model::export::export_safetensors;
use chatpainter_model::networks::StageGenerator;
use chatpainter_model::{Stage1Generator, Stage2Generator};
use chatpainter_nn::{DialogueEncoder, ReferenceLayout, Stage1D, Stage2D};

use crate::TrainError;

/// A stage's G side that writes its exports at the end of a completed run.
pub trait Exported: StageGenerator {
    /// Safetensors exports with the reference names (and Stage-II's `.pth`).
    const EXPORT_FILES: &'static [&'static str];

    /// Writes [`Self::EXPORT_FILES`] (those that apply) into `out_dir`.
    ///
    /// # Errors
    /// Mapping and IO errors.
    fn export(&self, d: &Self::D, out_dir: &std::path::Path) -> Result<(), TrainError>;
}

/// G, D and the BiLSTM (if any) as safetensors, under `files[0..3]`.
fn export_networks<G: ReferenceLayout, D: ReferenceLayout>(
    g: &G,
    d: &D,
    dialogue: Option<&DialogueEncoder>,
    out_dir: &std::path::Path,
    files: &[&str],
) -> Result<(), TrainError> {
    export_safetensors(g, &out_dir.join(files[0]))?;
    export_safetensors(d, &out_dir.join(files[1]))?;
    if let Some(enc) = dialogue {
        export_safetensors(enc, &out_dir.join(files[2]))?;
    }
    Ok(())
}

impl Exported for Stage1Generator {
    const EXPORT_FILES: &'static [&'static str] = &[
        "stage1_g.safetensors",
        "stage1_d.safetensors",
        "stage1_dialogue_rnn.safetensors",
    ];

    fn export(&self, d: &Stage1D, out_dir: &std::path::Path) -> Result<(), TrainError> {
        export_networks(
            &self.g,
            d,
            self.dialogue.as_ref(),
            out_dir,
            Self::EXPORT_FILES,
        )
    }
}

impl Exported for Stage2Generator {
    /// `stage2_g` holds the nested `STAGE1_G.*` tensors, like the reference's `netG_epoch_N.pth`.
    const EXPORT_FILES: &'static [&'static str] = &[
        "stage2_g.safetensors",
        "stage2_d.safetensors",
        "stage2_dialogue_rnn.safetensors",
        "stage2_g.pth",
    ];

    fn export(&self, d: &Stage2D, out_dir: &std::path::Path) -> Result<(), TrainError> {
        export_networks(
            &self.g,
            d,
            self.dialogue.as_ref(),
            out_dir,
            Self::EXPORT_FILES,
        )?;
        // What torch.load reads, in the reference's netG layout (nested STAGE1_G.*).
        let state_dict = crate::import::reference_state_dict(&self.g, 0)?;
        crate::import::write_state_dict(&out_dir.join(Self::EXPORT_FILES[3]), &state_dict)?;
        Ok(())
    }
}
