//! The training data of either stage: every image at the stage's load size (Stage-I 76×76, kept
//! decoded; Stage-II 304×304, kept as PNG and decoded per batch, so a COCO-sized set fits in
//! memory), every caption vector and the image's dialogue vectors; and the per-batch augmentation
//! of StackGAN-Pytorch's COCO loader: a random crop (76→64 or 304→256, corner uniform), a
//! horizontal flip with p = 0.5, the `[-1, 1]` mapping, and one caption drawn uniformly per image
//! per load.
//!
//! The random choices are drawn sequentially from the caller's [`Xoshiro256`] (so they are
//! reproducible and checkpointable); only the pixel work runs in parallel (rayon).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use rayon::prelude::*;

use crate::ModelError;
use crate::network::Variant;
use chatpainter_artifacts::Xoshiro256;

/// Load and crop sizes of a stage (the stored image is `crop · 76/64`, as the reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Side of the stored image.
    pub load: usize,
    /// Side of the training crop (the stage's output resolution).
    pub crop: usize,
}

impl Geometry {
    pub const STAGE1: Self = Self { load: 76, crop: 64 };
    pub const STAGE2: Self = Self {
        load: 304,
        crop: 256,
    };

    /// RGB bytes of one stored image.
    pub fn stored_bytes(self) -> usize {
        self.load * self.load * 3
    }

    /// Small images are kept decoded (Stage-I: 17 KB each); large ones as PNG.
    pub fn keeps_decoded(self) -> bool {
        self.load <= Self::STAGE1.load
    }
}

/// Width and height from a PNG's IHDR chunk (no decoding).
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    let sig: &[u8] = b"\x89PNG\r\n\x1a\n";
    if png.len() < 24 || &png[..8] != sig || &png[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&png[16..20]), be(&png[20..24])))
}

/// One stored image: decoded RGB (row-major, `load × load × 3`) or the PNG from the image table.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredImage {
    Rgb(Vec<u8>),
    Png(Vec<u8>),
}

impl StoredImage {
    /// The RGB bytes (decoding a PNG).
    ///
    /// # Errors
    /// [`ModelError::Data`] when the PNG does not decode to `geometry.load` pixels square.
    pub fn rgb(
        &self,
        id: i64,
        geometry: Geometry,
    ) -> Result<std::borrow::Cow<'_, [u8]>, ModelError> {
        let bytes: std::borrow::Cow<'_, [u8]> = match self {
            Self::Rgb(v) => v.as_slice().into(),
            Self::Png(png) => chatpainter_formats::ingested::decode_png(png)
                .map_err(|e| ModelError::Data(format!("image {id}: {e}")))?
                .into_raw()
                .into(),
        };
        if bytes.len() != geometry.stored_bytes() {
            return Err(ModelError::Data(format!(
                "image {id}: {} bytes, expected {load}×{load}×3",
                bytes.len(),
                load = geometry.load
            )));
        }
        Ok(bytes)
    }
}

/// One training image with its text vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainItem {
    pub image_id: i64,
    pub image: StoredImage,
    /// One vector per caption (at least one).
    pub captions: Vec<Vec<f32>>,
    /// The whole-dialogue vector (non-recurrent variant).
    pub dialogue: Option<Vec<f32>>,
    /// One vector per present turn (recurrent variant).
    pub turns: Vec<Vec<f32>>,
}

/// The whole training set, in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainData {
    pub geometry: Geometry,
    pub items: Vec<TrainItem>,
    pub caption_dim: usize,
    /// Width of the whole-dialogue vectors (0 if none).
    pub dialogue_dim: usize,
    /// Width of the per-turn vectors (0 if none).
    pub turn_dim: usize,
}

impl TrainData {
    /// Checks sizes and widths and records them.
    ///
    /// # Errors
    /// [`ModelError::Data`] naming the image whose image size or vector width is off.
    pub fn new(geometry: Geometry, items: Vec<TrainItem>) -> Result<Self, ModelError> {
        let first = items
            .first()
            .ok_or_else(|| ModelError::Data("the training set is empty".into()))?;
        let caption_dim = first.captions.first().map_or(0, Vec::len);
        let dialogue_dim = items
            .iter()
            .find_map(|i| i.dialogue.as_ref().map(Vec::len))
            .unwrap_or(0);
        let turn_dim = items
            .iter()
            .find_map(|i| i.turns.first().map(Vec::len))
            .unwrap_or(0);
        let data = Self {
            geometry,
            items,
            caption_dim,
            dialogue_dim,
            turn_dim,
        };
        data.validate()?;
        Ok(data)
    }

    /// Checks every image against the recorded sizes (the fields are public, so the trainer
    /// checks again before training). PNG-stored images are checked when decoded.
    ///
    /// # Errors
    /// [`ModelError::Data`] naming the image whose image size or vector width is off.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.items.is_empty() {
            return Err(ModelError::Data("the training set is empty".into()));
        }
        if self.caption_dim == 0 {
            return Err(ModelError::Data("caption vectors have width 0".into()));
        }
        for it in &self.items {
            let id = it.image_id;
            if let StoredImage::Rgb(v) = &it.image
                && v.len() != self.geometry.stored_bytes()
            {
                return Err(ModelError::Data(format!(
                    "image {id}: {} bytes, expected {load}×{load}×3",
                    v.len(),
                    load = self.geometry.load
                )));
            }
            if it.captions.is_empty() {
                return Err(ModelError::Data(format!("image {id}: no caption vectors")));
            }
            let widths = it
                .captions
                .iter()
                .map(|c| (c.len(), self.caption_dim, "caption"));
            let dia = it
                .dialogue
                .iter()
                .map(|d| (d.len(), self.dialogue_dim, "dialogue"));
            let turns = it.turns.iter().map(|t| (t.len(), self.turn_dim, "turn"));
            for (found, want, what) in widths.chain(dia).chain(turns) {
                if found != want {
                    return Err(ModelError::Data(format!(
                        "image {id}: {what} vector of width {found}, expected {want}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Width of the dialogue input the variant uses (whole vector or per-turn vector).
    pub fn dialogue_width(&self, variant: Variant) -> usize {
        match variant {
            Variant::Stackgan => 0,
            Variant::ChatpainterNonrecurrent => self.dialogue_dim,
            Variant::ChatpainterRecurrent => self.turn_dim,
        }
    }

    /// Most turns of any image (the padded length of a recurrent batch).
    pub fn max_turns(&self) -> usize {
        self.items.iter().map(|i| i.turns.len()).max().unwrap_or(0)
    }

    /// Loads split `split` from an ingest stage directory (`records.parquet`, the image tables of
    /// the geometry's load size named in its manifest) and an embed stage directory
    /// (`embeddings.parquet`). Images are kept in image-id order, decoded for Stage-I and as PNG
    /// for Stage-II. Records without embeddings or without a picture are left out (and counted in
    /// a warning); the result must not be empty.
    ///
    /// # Errors
    /// Any read or decode failure, naming the file; [`ModelError::Data`] for a contract breach.
    pub fn load(
        ingest_dir: &Path,
        embed_dir: &Path,
        split: &str,
        geometry: Geometry,
    ) -> Result<Self, ModelError> {
        let tables =
            chatpainter_formats::ingested::image_tables(ingest_dir, split, geometry.load as u32)?;
        let records =
            chatpainter_formats::ingested::read_records(&ingest_dir.join("records.parquet"))?;
        let wanted: HashSet<i64> = records
            .iter()
            .filter(|r| r.split == split)
            .map(|r| r.image_id)
            .collect();
        let emb = chatpainter_formats::embeddings::read(&embed_dir.join("embeddings.parquet"))?;
        let mut embeddings: BTreeMap<i64, chatpainter_formats::embeddings::ImageEmbeddings> = emb
            .rows
            .into_iter()
            .filter(|r| wanted.contains(&r.image_id))
            .map(|r| (r.image_id, r))
            .collect();
        let mut pixels: HashMap<i64, StoredImage> = HashMap::new();
        for path in tables {
            for (id, img) in read_table(&path, &embeddings, geometry)? {
                pixels.insert(id, img);
            }
        }
        let (mut no_picture, mut items) = (0usize, Vec::new());
        for (id, e) in std::mem::take(&mut embeddings) {
            match pixels.remove(&id) {
                Some(image) => items.push(TrainItem {
                    image_id: id,
                    image,
                    captions: e.captions,
                    dialogue: e.dialogue,
                    turns: e.turns,
                }),
                None => no_picture += 1,
            }
        }
        let no_embedding = wanted.len().saturating_sub(items.len() + no_picture);
        if no_picture + no_embedding > 0 {
            tracing::warn!(
                split,
                no_picture,
                no_embedding,
                kept = items.len(),
                "records left out of training"
            );
        }
        Self::new(geometry, items)
    }
}

/// Reads the wanted images of one image table; decodes them (in parallel) when the geometry keeps
/// images decoded, else keeps the PNG after checking its header's size.
fn read_table<T>(
    path: &Path,
    wanted: &BTreeMap<i64, T>,
    geometry: Geometry,
) -> Result<Vec<(i64, StoredImage)>, ModelError>
where
    T: Sync,
{
    let groups = chatpainter_formats::ingested::image_row_groups(path)?;
    let mut out = Vec::new();
    for g in 0..groups {
        let rows = chatpainter_formats::ingested::read_image_group(path, g)?;
        let decoded: Result<Vec<_>, ModelError> = rows
            .into_par_iter()
            .filter(|(id, _)| wanted.contains_key(id))
            .map(|(id, png)| Ok((id, stored_image(path, id, png, geometry)?)))
            .collect();
        out.extend(decoded?);
    }
    Ok(out)
}

/// One image of an image table as the geometry keeps it: decoded when small, else the PNG
/// after checking its header's size.
///
/// # Errors
/// [`ModelError::Data`] naming the file and the image when it does not decode or is not
/// `load × load`.
pub fn stored_image(
    path: &Path,
    id: i64,
    png: Vec<u8>,
    geometry: Geometry,
) -> Result<StoredImage, ModelError> {
    let load = geometry.load;
    let wrong_size = |w: u32, h: u32| {
        ModelError::Data(format!(
            "{}: image {id} is {w}×{h}, expected {load}×{load}",
            path.display()
        ))
    };
    if geometry.keeps_decoded() {
        let img = chatpainter_formats::ingested::decode_png(&png)
            .map_err(|e| ModelError::Data(format!("{}: image {id}: {e}", path.display())))?;
        if img.width() as usize != load || img.height() as usize != load {
            return Err(wrong_size(img.width(), img.height()));
        }
        return Ok(StoredImage::Rgb(img.into_raw()));
    }
    let (w, h) = png_size(&png)
        .ok_or_else(|| ModelError::Data(format!("{}: image {id}: not a PNG", path.display())))?;
    if w as usize != load || h as usize != load {
        return Err(wrong_size(w, h));
    }
    Ok(StoredImage::Png(png))
}

/// The random choices for one image of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Augment {
    pub x0: usize,
    pub y0: usize,
    pub flip: bool,
    pub caption: usize,
}

impl Augment {
    /// Draws crop corner, flip and caption (in that order) for an image with `n_captions`.
    /// Without `flips` the coin is still drawn (and ignored), so turning flips off changes no
    /// other random choice.
    pub fn draw(rng: &mut Xoshiro256, n_captions: usize, geometry: Geometry, flips: bool) -> Self {
        let span = (geometry.load - geometry.crop + 1) as u64;
        let x0 = rng.below(span) as usize;
        let y0 = rng.below(span) as usize;
        let flip = rng.coin() && flips;
        let caption = rng.below(n_captions.max(1) as u64) as usize;
        Self {
            x0,
            y0,
            flip,
            caption,
        }
    }

    /// The centre crop, no flip, first caption (sample sheets).
    pub fn center(geometry: Geometry) -> Self {
        let c = (geometry.load - geometry.crop) / 2;
        Self {
            x0: c,
            y0: c,
            flip: false,
            caption: 0,
        }
    }
}

/// Crops, flips and maps one stored RGB image to `[-1, 1]`, CHW.
pub fn crop_flip(image: &[u8], a: Augment, geometry: Geometry) -> Vec<f32> {
    let (load, crop) = (geometry.load, geometry.crop);
    let mut out = vec![0f32; 3 * crop * crop];
    for y in 0..crop {
        for x in 0..crop {
            let sx = if a.flip { crop - 1 - x } else { x } + a.x0;
            let src = ((a.y0 + y) * load + sx) * 3;
            for c in 0..3 {
                // ToTensor then Normalize(0.5, 0.5): v/255·2 − 1.
                out[(c * crop + y) * crop + x] = f32::from(image[src + c]) / 127.5 - 1.0;
            }
        }
    }
    out
}

/// A batch on the host, ready to become tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    pub size: usize,
    /// Side of the images.
    pub crop: usize,
    /// `[B, 3, crop, crop]` in `[-1, 1]`.
    pub images: Vec<f32>,
    /// `[B, caption_dim]`
    pub captions: Vec<f32>,
    /// Non-recurrent: `[B, dialogue_dim]`; recurrent: `[B, max_turns, turn_dim]` zero-padded.
    pub dialogue: Vec<f32>,
    /// Recurrent: present turns per sample.
    pub lengths: Vec<usize>,
}

/// Builds the batch of `indices` with the given augmentations (decoding and pixels in parallel).
///
/// # Errors
/// [`ModelError::Data`] naming an image that does not decode to the load size.
pub fn assemble(
    data: &TrainData,
    variant: Variant,
    indices: &[usize],
    augs: &[Augment],
) -> Result<HostBatch, ModelError> {
    let items: Vec<&TrainItem> = indices.iter().map(|&i| &data.items[i]).collect();
    let shape = BatchShape {
        geometry: data.geometry,
        dialogue_dim: data.dialogue_dim,
        turn_dim: data.turn_dim,
        max_turns: data.max_turns(),
    };
    assemble_items(&items, shape, variant, augs)
}

/// What fixes a batch's layout besides its items: the geometry, the dialogue widths and the
/// padded turn count (the most turns of any item of the whole set, not of the batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchShape {
    pub geometry: Geometry,
    pub dialogue_dim: usize,
    pub turn_dim: usize,
    pub max_turns: usize,
}

/// Builds the batch of `items` with the given augmentations (decoding and pixels in parallel).
///
/// # Errors
/// [`ModelError::Data`] naming an image that does not decode to the load size.
pub fn assemble_items(
    items: &[&TrainItem],
    shape: BatchShape,
    variant: Variant,
    augs: &[Augment],
) -> Result<HostBatch, ModelError> {
    let g = shape.geometry;
    let crops: Vec<Vec<f32>> = items
        .par_iter()
        .zip(augs.par_iter())
        .map(|(it, a)| Ok(crop_flip(&it.image.rgb(it.image_id, g)?, *a, g)))
        .collect::<Result<_, ModelError>>()?;
    let images = crops.concat();
    let captions: Vec<f32> = items
        .iter()
        .zip(augs)
        .flat_map(|(it, a)| {
            let k = a.caption.min(it.captions.len() - 1);
            it.captions[k].iter().copied()
        })
        .collect();
    let (dialogue, lengths) = match variant {
        Variant::Stackgan => (Vec::new(), Vec::new()),
        Variant::ChatpainterNonrecurrent => (
            items
                .iter()
                .flat_map(|it| {
                    it.dialogue
                        .iter()
                        .flatten()
                        .copied()
                        .chain(std::iter::repeat(0.0))
                        .take(shape.dialogue_dim)
                })
                .collect(),
            Vec::new(),
        ),
        Variant::ChatpainterRecurrent => {
            let (t, width) = (shape.max_turns, shape.turn_dim);
            let mut v = vec![0f32; items.len() * t * width];
            for (b, it) in items.iter().enumerate() {
                for (s, turn) in it.turns.iter().enumerate() {
                    let at = (b * t + s) * width;
                    v[at..at + turn.len()].copy_from_slice(turn);
                }
            }
            (v, items.iter().map(|it| it.turns.len()).collect())
        }
    };
    Ok(HostBatch {
        size: items.len(),
        crop: g.crop,
        images,
        captions,
        dialogue,
        lengths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const G1: Geometry = Geometry::STAGE1;
    const CROP_SIZE: usize = 64;

    fn rgb(it: &TrainItem) -> &[u8] {
        match &it.image {
            StoredImage::Rgb(v) => v,
            StoredImage::Png(_) => unreachable!("test items are decoded"),
        }
    }

    fn item(id: i64, pixel: impl Fn(usize, usize, usize) -> u8) -> TrainItem {
        let load = G1.load;
        let mut image = vec![0u8; load * load * 3];
        for y in 0..load {
            for x in 0..load {
                for c in 0..3 {
                    image[(y * load + x) * 3 + c] = pixel(x, y, c);
                }
            }
        }
        TrainItem {
            image_id: id,
            image: StoredImage::Rgb(image),
            captions: vec![vec![1.0; 4], vec![2.0; 4]],
            dialogue: Some(vec![3.0; 2]),
            turns: vec![vec![4.0; 3]; (id as usize % 3) + 1],
        }
    }

    #[test]
    fn crop_flip_and_range() {
        let it = item(0, |x, y, c| (x + y + c) as u8);
        let a = Augment {
            x0: 5,
            y0: 7,
            flip: false,
            caption: 0,
        };
        let v = crop_flip(rgb(&it), a, G1);
        // Channel 1, row 2, column 3 comes from (x=8, y=9).
        let want = f32::from((8 + 9 + 1) as u8) / 127.5 - 1.0;
        assert_eq!(v[(CROP_SIZE + 2) * CROP_SIZE + 3], want);
        let f = crop_flip(rgb(&it), Augment { flip: true, ..a }, G1);
        assert_eq!(f[(CROP_SIZE + 2) * CROP_SIZE + (CROP_SIZE - 1 - 3)], want);
        let white = item(1, |_, _, _| 255);
        let black = item(2, |_, _, _| 0);
        assert!(crop_flip(rgb(&white), a, G1).iter().all(|v| *v == 1.0));
        assert!(crop_flip(rgb(&black), a, G1).iter().all(|v| *v == -1.0));
    }

    #[test]
    fn augment_draws_cover_the_ranges() {
        let mut rng = Xoshiro256::new(3, 0);
        let draws: Vec<Augment> = (0..2000)
            .map(|_| Augment::draw(&mut rng, 5, G1, true))
            .collect();
        assert!(
            draws
                .iter()
                .all(|a| a.x0 <= 12 && a.y0 <= 12 && a.caption < 5)
        );
        assert!(draws.iter().any(|a| a.x0 == 0) && draws.iter().any(|a| a.x0 == 12));
        let flips = draws.iter().filter(|a| a.flip).count();
        assert!((800..1200).contains(&flips), "{flips}");
    }

    #[test]
    fn turning_flips_off_changes_no_other_draw() {
        let (mut on, mut off) = (Xoshiro256::new(5, 0), Xoshiro256::new(5, 0));
        for _ in 0..200 {
            let a = Augment::draw(&mut on, 5, G1, true);
            let b = Augment::draw(&mut off, 5, G1, false);
            assert_eq!(Augment { flip: false, ..a }, b);
        }
        assert_eq!(on.below(1 << 40), off.below(1 << 40));
    }

    #[test]
    fn batches_pad_turns_and_pick_captions() {
        let data =
            TrainData::new(G1, (0..3).map(|i| item(i, |_, _, _| 9)).collect()).expect("data");
        assert_eq!(
            (data.caption_dim, data.dialogue_dim, data.turn_dim),
            (4, 2, 3)
        );
        let augs = [
            Augment {
                caption: 1,
                ..Augment::center(G1)
            },
            Augment::center(G1),
        ];
        let b = assemble(&data, Variant::ChatpainterRecurrent, &[2, 0], &augs).expect("batch");
        assert_eq!(b.images.len(), 2 * 3 * 64 * 64);
        assert_eq!(&b.captions[..4], &[2.0; 4]);
        assert_eq!(&b.captions[4..], &[1.0; 4]);
        assert_eq!(b.lengths, vec![3, 1]);
        assert_eq!(b.dialogue.len(), 2 * 3 * 3);
        assert_eq!(&b.dialogue[9..12], &[4.0; 3]);
        assert!(b.dialogue[12..].iter().all(|v| *v == 0.0));
        let nb =
            assemble(&data, Variant::ChatpainterNonrecurrent, &[1], &augs[..1]).expect("batch");
        assert_eq!(nb.dialogue, vec![3.0; 2]);
    }

    #[test]
    fn png_stored_images_decode_per_batch_and_sizes_are_checked() {
        let g = Geometry { load: 12, crop: 8 };
        let png = |side: u32| {
            let img = image::RgbImage::from_pixel(side, side, image::Rgb([255, 0, 0]));
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png)
                .expect("png");
            out.into_inner()
        };
        assert_eq!(png_size(&png(12)), Some((12, 12)));
        assert_eq!(png_size(b"not a png at all, no header here"), None);
        let mut it = item(7, |_, _, _| 0);
        it.image = StoredImage::Png(png(12));
        let data = TrainData::new(g, vec![it.clone()]).expect("data");
        let b = assemble(&data, Variant::Stackgan, &[0], &[Augment::center(g)]).expect("batch");
        assert_eq!(b.images.len(), 3 * 8 * 8);
        assert!(b.images[..64].iter().all(|v| *v == 1.0));
        assert!(b.images[64..].iter().all(|v| *v == -1.0));
        it.image = StoredImage::Png(png(10));
        let bad = TrainData::new(g, vec![it]).expect("not decoded yet");
        let err =
            assemble(&bad, Variant::Stackgan, &[0], &[Augment::center(g)]).expect_err("wrong size");
        assert!(err.to_string().contains("image 7"), "{err}");
    }

    #[test]
    fn bad_items_are_refused_with_the_image_id() {
        let mut it = item(42, |_, _, _| 0);
        it.captions[1].pop();
        let err = TrainData::new(G1, vec![it]).expect_err("width mismatch");
        assert!(err.to_string().contains("image 42"), "{err}");
        let mut it = item(43, |_, _, _| 0);
        it.image = StoredImage::Rgb(vec![0; 10]);
        assert!(TrainData::new(G1, vec![it]).is_err());
        assert!(TrainData::new(G1, vec![]).is_err());
        let mut it = item(44, |_, _, _| 0);
        it.turns.clear();
        it.dialogue = None;
        TrainData::new(G1, vec![it]).expect("no dialogue is fine for stackgan");
    }
}
