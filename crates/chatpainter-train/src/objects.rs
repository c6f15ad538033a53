//! Targets of the auxiliary object-recognition loss (`object_loss`): for every training image,
//! which categories cover which cells of D's 4×4 feature grid, after the crop and the flip that
//! the batch applied to that image.
//!
//! The boxes come from the ingest stage's `objects.parquet` (COCO-format instance annotations),
//! relative to the whole source image; the stored load-size picture is a squash of that whole
//! image, so a box maps onto it by scaling. A target cell holds, per category, the fraction of the
//! cell that the category's boxes cover (clamped to 1): the object's place (which column), its
//! size (how many cells, how much of them) and its count all show in the grid.

use std::collections::HashMap;
use std::path::Path;

use chatpainter_formats::objects::{OBJECTS_FILE, Objects, read_objects};
use chatpainter_model::dataset::{Augment, Geometry};

use crate::TrainError;

/// Side of the target grid: Stage-I D's image features are 4×4.
pub const GRID: usize = 4;

/// One box of an image: category index and `[x0, y0, x1, y1]` as fractions of the image.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RelativeBox {
    class: usize,
    corners: [f32; 4],
}

/// The objects of one split, by image.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObjectTargets {
    classes: usize,
    by_image: HashMap<i64, Vec<RelativeBox>>,
}

impl ObjectTargets {
    /// The boxes of split `split` from `objects`.
    pub fn from_objects(objects: &Objects, split: &str) -> Self {
        let mut by_image: HashMap<i64, Vec<RelativeBox>> = HashMap::new();
        for b in objects.boxes.iter().filter(|b| b.split == split) {
            // `read_objects` refused boxes of categories outside the list.
            if let Some(class) = objects.category_index(b.category_id) {
                by_image.entry(b.image_id).or_default().push(RelativeBox {
                    class,
                    corners: [b.x, b.y, b.x + b.w, b.y + b.h],
                });
            }
        }
        Self {
            classes: objects.categories.len(),
            by_image,
        }
    }

    /// `objects.parquet` of an ingest stage directory, if it has one.
    ///
    /// # Errors
    /// Read and contract errors naming the file.
    pub fn open(ingest_dir: &Path, split: &str) -> Result<Option<Self>, TrainError> {
        let path = ingest_dir.join(OBJECTS_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        Ok(Some(Self::from_objects(&read_objects(&path)?, split)))
    }

    /// Number of categories (the object head's width).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The `[C, GRID, GRID]` coverage of image `image_id` as the batch cropped and flipped it
    /// (all zeros for an image without annotated objects).
    pub fn grid(&self, image_id: i64, aug: Augment, geometry: Geometry) -> Vec<f32> {
        let mut out = vec![0f32; self.classes * GRID * GRID];
        let (load, crop) = (geometry.load as f32, geometry.crop as f32);
        let cell = crop / GRID as f32;
        for b in self.by_image.get(&image_id).into_iter().flatten() {
            // Into the crop's pixels: scale to the stored square, shift by the crop corner,
            // mirror if flipped (crop_flip reads source column crop−1−x for output column x, so
            // a pixel interval [a, b) lands on [crop − b, crop − a)).
            let [x0, y0, x1, y1] = b.corners;
            let (mut left, mut right) = (x0 * load - aug.x0 as f32, x1 * load - aug.x0 as f32);
            if aug.flip {
                (left, right) = (crop - right, crop - left);
            }
            let (top, bottom) = (y0 * load - aug.y0 as f32, y1 * load - aug.y0 as f32);
            for gy in 0..GRID {
                let dy = overlap(top, bottom, gy as f32 * cell, (gy + 1) as f32 * cell);
                if dy <= 0.0 {
                    continue;
                }
                for gx in 0..GRID {
                    let dx = overlap(left, right, gx as f32 * cell, (gx + 1) as f32 * cell);
                    let at = (b.class * GRID + gy) * GRID + gx;
                    out[at] = (out[at] + dx * dy / (cell * cell)).min(1.0);
                }
            }
        }
        out
    }
}

/// Length of `[a0, a1) ∩ [b0, b1)`.
fn overlap(a0: f32, a1: f32, b0: f32, b1: f32) -> f32 {
    (a1.min(b1) - a0.max(b0)).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatpainter_formats::objects::{Category, ObjectBox};

    fn targets(boxes: Vec<ObjectBox>) -> ObjectTargets {
        let categories = (1..=3)
            .map(|id| Category {
                id,
                name: format!("c{id}"),
            })
            .collect();
        ObjectTargets::from_objects(&Objects { categories, boxes }, "train")
    }

    fn object(category_id: i32, x: f32, y: f32, w: f32, h: f32) -> ObjectBox {
        ObjectBox {
            image_id: 5,
            split: "train".into(),
            category_id,
            x,
            y,
            w,
            h,
        }
    }

    const G: Geometry = Geometry { load: 80, crop: 64 };

    fn aug(x0: usize, y0: usize, flip: bool) -> Augment {
        Augment {
            x0,
            y0,
            flip,
            caption: 0,
        }
    }

    #[test]
    fn a_box_covers_its_cells_after_crop_and_flip() {
        // Stored pixels [8, 28)² of an 80-px square; the crop at (8, 8) puts the box at [0, 20)²:
        // all of cell (0, 0) (cells are 16 px), a quarter of cells (0, 1) and (1, 0), a
        // sixteenth of (1, 1).
        let t = targets(vec![object(2, 0.1, 0.1, 0.25, 0.25)]);
        let g = t.grid(5, aug(8, 8, false), G);
        let at = |c: usize, y: usize, x: usize| g[(c * GRID + y) * GRID + x];
        assert_eq!(at(1, 0, 0), 1.0);
        assert_eq!(at(1, 0, 1), 0.25);
        assert_eq!(at(1, 1, 1), 0.25 * 0.25);
        assert_eq!(at(0, 0, 0), 0.0);
        assert_eq!(g.iter().sum::<f32>(), 400.0 / 256.0);
        // Crop at (0, 8), flipped: x [8, 28) mirrors to [36, 56), 12 px of cell 2, 8 of cell 3.
        let f = t.grid(5, aug(0, 8, true), G);
        let at = |c: usize, y: usize, x: usize| f[(c * GRID + y) * GRID + x];
        assert_eq!((at(1, 0, 0), at(1, 0, 1)), (0.0, 0.0));
        assert_eq!(at(1, 0, 2), 12.0 / 16.0);
        assert_eq!(at(1, 0, 3), 8.0 / 16.0);
    }

    #[test]
    fn overlapping_boxes_saturate_and_other_images_are_empty() {
        let t = targets(vec![
            object(1, 0.0, 0.0, 1.0, 1.0),
            object(1, 0.0, 0.0, 1.0, 1.0),
        ]);
        let g = t.grid(5, aug(0, 0, false), G);
        assert!(g[..GRID * GRID].iter().all(|v| *v == 1.0), "{g:?}");
        assert!(g[GRID * GRID..].iter().all(|v| *v == 0.0));
        assert!(t.grid(6, aug(0, 0, false), G).iter().all(|v| *v == 0.0));
        assert_eq!(t.classes(), 3);
    }
}
