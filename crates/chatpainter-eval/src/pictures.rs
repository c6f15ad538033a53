//! Pictures the eval stage and `generate` write: atomic PNG files, centre crops of the stored
//! real images, sample sheets (one row per condition: real | Stage-I | Stage-II) and per-turn
//! strips. Upscaling is nearest-neighbour so that a 64-px Stage-I image shows its real pixels.

use std::path::Path;

use image::{Rgb, RgbImage, imageops};

use crate::error::{EvalError, Result};

/// Grey gap between tiles, in pixels.
pub const GAP: u32 = 4;
const GROUND: Rgb<u8> = Rgb([128, 128, 128]);

/// Encodes `img` as PNG and writes it atomically (temporary name, flush, rename).
pub fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| EvalError::Image {
            path: path.to_path_buf(),
            reason: format!("PNG encoding: {e}"),
        })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    }
    chatpainter_artifacts::write_atomic(path, &bytes.into_inner())?;
    Ok(())
}

/// Reads any image file the `image` crate decodes, as RGB.
pub fn read_rgb(path: &Path) -> Result<RgbImage> {
    Ok(image::open(path)
        .map_err(|e| EvalError::Image {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
        .to_rgb8())
}

/// The centred `crop × crop` window of a square RGB image `img` (the evaluation counterpart of
/// training's random crop).
pub fn center_crop(img: &RgbImage, crop: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let crop = crop.min(w).min(h);
    let (x, y) = ((w - crop) / 2, (h - crop) / 2);
    imageops::crop_imm(img, x, y, crop, crop).to_image()
}

/// Nearest-neighbour resize to `size × size` (no-op when already that size).
pub fn fit(img: &RgbImage, size: u32) -> RgbImage {
    if img.dimensions() == (size, size) {
        img.clone()
    } else {
        imageops::resize(img, size, size, imageops::FilterType::Nearest)
    }
}

/// A grid: `rows[r][c]` is drawn in a `cell × cell` tile (missing tiles stay grey).
pub fn grid(rows: &[Vec<Option<&RgbImage>>], cell: u32) -> RgbImage {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let tile = cell + GAP;
    let mut out = RgbImage::from_pixel(cols * tile + GAP, rows.len() as u32 * tile + GAP, GROUND);
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            if let Some(img) = img {
                let x = i64::from(GAP + c as u32 * tile);
                let y = i64::from(GAP + r as u32 * tile);
                imageops::replace(&mut out, &fit(img, cell), x, y);
            }
        }
    }
    out
}

/// One row of frames, left to right, each drawn at its own size (they share one here).
pub fn strip(frames: &[RgbImage]) -> RgbImage {
    let cell = frames
        .iter()
        .map(|f| f.width().max(f.height()))
        .max()
        .unwrap_or(1);
    let row: Vec<Option<&RgbImage>> = frames.iter().map(Some).collect();
    grid(&[row], cell)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    #[test]
    fn grid_places_tiles_and_strip_has_one_cell_per_frame() {
        let white = RgbImage::from_pixel(4, 4, Rgb([255, 255, 255]));
        let black = RgbImage::from_pixel(8, 8, Rgb([0, 0, 0]));
        let g = grid(&[vec![Some(&white), None, Some(&black)]], 8);
        assert_eq!(g.dimensions(), (3 * 12 + GAP, 12 + GAP));
        assert_eq!(g.get_pixel(GAP, GAP).0, [255; 3]);
        assert_eq!(g.get_pixel(GAP + 12, GAP).0, [128; 3]);
        assert_eq!(g.get_pixel(GAP + 24 + 7, GAP + 7).0, [0; 3]);
        let s = strip(&[black.clone(), black.clone(), black]);
        assert_eq!(s.dimensions(), (3 * 12 + GAP, 12 + GAP));
        let c = center_crop(&RgbImage::new(76, 76), 64);
        assert_eq!(c.dimensions(), (64, 64));
    }

    #[test]
    fn png_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/x.png");
        let img = RgbImage::from_fn(5, 3, |x, y| Rgb([x as u8 * 40, y as u8 * 80, 7]));
        write_png(&p, &img).unwrap();
        assert_eq!(read_rgb(&p).unwrap(), img);
        let err = read_rgb(&dir.path().join("none.png"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("none.png"), "{err}");
    }
}
