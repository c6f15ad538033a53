//! The networks one Stage-I run trains: the G side ([`Stage1Generator`]: Stage-I G plus, in the
//! recurrent variant, the dialogue BiLSTM, which learns through the CA from the G loss and the KL
//! term, so it shares G's optimiser) and the D side (`Stage1D`). Also the conversion of a host
//! batch into tensors and the CA input assembly `[caption ‖ dialogue]`.

use std::sync::Mutex;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use chatpainter_nn::{CaNoise, DialogueEncoder, GenOutput, Stage1D, Stage1G, weights_init};

use crate::TrainError;
use crate::config::{ResolvedNetwork, Variant};
use crate::data::{CROP_SIZE, HostBatch};

/// Everything the generator optimiser updates.
#[derive(Module, Debug)]
pub struct Stage1Generator {
    /// `STAGE1_G` (its CA input is `caption_dim + dialogue summary width`).
    pub g: Stage1G,
    /// The recurrent variant's BiLSTM; `None` otherwise.
    pub dialogue: Option<DialogueEncoder>,
}

/// The dialogue part of one batch, as tensors.
#[derive(Debug, Clone)]
pub enum DialogueInput {
    None,
    /// `[B, dialogue_dim]`
    Whole(Tensor<2>),
    /// `[B, T, turn_dim]` zero-padded, with the present turn counts.
    Turns(Tensor<3>, Vec<usize>),
}

/// One batch on the device.
#[derive(Debug, Clone)]
pub struct DeviceBatch {
    /// `[B, 3, 64, 64]`
    pub real: Tensor<4>,
    /// `[B, caption_dim]`
    pub captions: Tensor<2>,
    pub dialogue: DialogueInput,
}

impl DeviceBatch {
    /// Moves a host batch to `device`.
    pub fn new(host: HostBatch, variant: Variant, net: &ResolvedNetwork, device: &Device) -> Self {
        let b = host.size;
        let real = Tensor::from_data(
            TensorData::new(host.images, [b, 3, CROP_SIZE, CROP_SIZE]),
            device,
        );
        let captions =
            Tensor::from_data(TensorData::new(host.captions, [b, net.caption_dim]), device);
        let dialogue = match variant {
            Variant::Stackgan => DialogueInput::None,
            Variant::ChatpainterNonrecurrent => DialogueInput::Whole(Tensor::from_data(
                TensorData::new(host.dialogue, [b, net.dialogue_dim]),
                device,
            )),
            Variant::ChatpainterRecurrent => {
                let t = host.dialogue.len() / (b * net.dialogue_dim).max(1);
                DialogueInput::Turns(
                    Tensor::from_data(
                        TensorData::new(host.dialogue, [b, t, net.dialogue_dim]),
                        device,
                    ),
                    host.lengths,
                )
            }
        };
        Self {
            real,
            captions,
            dialogue,
        }
    }
}

impl Stage1Generator {
    /// Builds both networks with the reference initialisation, drawn from the device RNG seeded
    /// with `seed`. The device RNG is process-global, so seeding and drawing hold a process-wide
    /// lock: two runs initialising at the same time (tests, or several runs in one process) still
    /// get the weights their seed says.
    pub fn init(
        net: &ResolvedNetwork,
        variant: Variant,
        device: &Device,
        seed: u64,
    ) -> (Self, Stage1D) {
        static INIT_LOCK: Mutex<()> = Mutex::new(());
        let _guard = INIT_LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        device.seed(seed);
        let cfg = net.stackgan(variant);
        let g = weights_init(cfg.stage1_g().init(device));
        let dialogue = cfg.dialogue_encoder().map(|c| c.init(device));
        let d = weights_init(cfg.stage1_d().init(device));
        (Self { g, dialogue }, d)
    }

    /// The CA input `[caption ‖ dialogue]`.
    ///
    /// # Shapes
    /// captions `[B, caption_dim]` → `[B, text_dim]`
    ///
    /// # Errors
    /// [`TrainError::Nn`] for bad turn counts; [`TrainError::Internal`] when the variant's inputs
    /// and networks do not match.
    pub fn text(
        &self,
        captions: Tensor<2>,
        dialogue: &DialogueInput,
    ) -> Result<Tensor<2>, TrainError> {
        match (dialogue, &self.dialogue) {
            (DialogueInput::None, None) => Ok(captions),
            (DialogueInput::Whole(d), None) => Ok(Tensor::cat(vec![captions, d.clone()], 1)),
            (DialogueInput::Turns(t, lengths), Some(enc)) => {
                let summary = enc.forward(t.clone(), lengths)?;
                Ok(Tensor::cat(vec![captions, summary], 1))
            }
            _ => Err(TrainError::Internal(
                "dialogue input does not match the generator's variant".into(),
            )),
        }
    }

    /// G forward with explicit noise and CA eps (both from the checkpointed RNG).
    ///
    /// # Shapes
    /// captions `[B, caption_dim]`, noise `[B, z_dim]`, eps `[B, cond_dim]` → fake `[B, 3, 64, 64]`
    ///
    /// # Errors
    /// As [`Stage1Generator::text`].
    pub fn forward(
        &self,
        captions: Tensor<2>,
        dialogue: &DialogueInput,
        noise: Tensor<2>,
        eps: Tensor<2>,
    ) -> Result<GenOutput, TrainError> {
        let text = self.text(captions, dialogue)?;
        Ok(self.g.forward_with(text, noise, CaNoise::given(eps)))
    }
}
