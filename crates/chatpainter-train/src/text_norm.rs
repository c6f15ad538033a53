//! The `text_norm` option: whether the text vectors are standardised before the CA, and the
//! statistics of the Stage-I training data it standardises with (the transform itself, which
//! generation applies too, is `chatpainter_model::text_norm`).

use chatpainter_model::text_norm::MomentSums;
use chatpainter_model::{TextStats, Variant};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::source::TrainSource;

/// Which transform the text vectors get before the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TextNorm {
    /// As the embed stage wrote them (reference behaviour).
    #[default]
    None,
    /// `(v − mean) / std` per dimension, statistics of the Stage-I training split.
    Standardize,
}

/// Statistics over every caption vector and every dialogue input of `data`, read a block
/// at a time in item order (the sums run in the same order as over an in-memory set).
///
/// # Errors
/// Read failures of the source.
pub fn stats_of(data: &dyn TrainSource, variant: Variant) -> Result<TextStats, TrainError> {
    let w = data.widths();
    let mut caption = MomentSums::new(w.caption);
    let mut dialogue = match variant {
        Variant::Stackgan => None,
        Variant::ChatpainterNonrecurrent => Some(MomentSums::new(w.dialogue)),
        Variant::ChatpainterRecurrent => Some(MomentSums::new(w.turn)),
    };
    for block in 0..data.blocks().len() {
        for item in data.read_block_vectors(block)? {
            item.captions.iter().for_each(|v| caption.add(v));
            match (variant, dialogue.as_mut()) {
                (Variant::ChatpainterNonrecurrent, Some(d)) => {
                    item.dialogue.iter().for_each(|v| d.add(v));
                }
                (Variant::ChatpainterRecurrent, Some(d)) => {
                    item.turns.iter().for_each(|v| d.add(v));
                }
                _ => {}
            }
        }
    }
    Ok(TextStats {
        caption: caption.finish(),
        dialogue: dialogue.map(MomentSums::finish),
    })
}
