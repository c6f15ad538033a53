//! A host batch moved onto the device, in the step's compute precision.

use burn::tensor::{Device, Tensor, TensorData};
use chatpainter_model::dataset::HostBatch;
use chatpainter_model::networks::DialogueInput;
use chatpainter_model::{ResolvedNetwork, Variant};

use crate::precision::Precision;

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
            TensorData::new(host.images, [b, 3, host.crop, host.crop]),
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

    /// The batch in a step's compute precision.
    pub fn cast(self, precision: Precision) -> Self {
        Self {
            real: precision.input(self.real),
            captions: precision.input(self.captions),
            dialogue: match self.dialogue {
                DialogueInput::None => DialogueInput::None,
                DialogueInput::Whole(t) => DialogueInput::Whole(precision.input(t)),
                DialogueInput::Turns(t, lengths) => {
                    DialogueInput::Turns(precision.input(t), lengths)
                }
            },
        }
    }
}
