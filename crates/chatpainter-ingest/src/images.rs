//! Decoding one source image into the stored load sizes.
//!
//! Every image becomes 8-bit RGB: grayscale, CMYK, 16-bit and alpha images are converted (and the
//! conversion is recorded), PNG data under a `.jpg` name is decoded by its content. The square
//! resize is the reference's squash (aspect ratio not kept) with a triangle (bilinear) filter
//! whose support widens when downscaling, i.e. antialiased like PIL's `BILINEAR`. Each size is
//! stored as a lossless PNG.

use chatpainter_formats::quality::Reason;

use chatpainter_formats::ingested::encode_png;
use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, RgbImage};
use std::path::Path;

/// A decoded, resized, re-encoded image.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub width: u32,
    pub height: u32,
    /// One PNG per requested load size, in the order of the sizes.
    pub png: Vec<Vec<u8>>,
    /// Conversions that were needed to reach 8-bit RGB.
    pub conversions: Vec<Reason>,
}

/// Why an image could not be used: `ImageMissing` or `ImageUndecodable`, with a detail.
pub type Rejection = (Reason, String);

pub fn load(path: &Path, sizes: &[u32]) -> Result<Decoded, Rejection> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => (Reason::ImageMissing, "file not found".to_string()),
        _ => (Reason::ImageMissing, format!("cannot read: {e}")),
    })?;
    decode(&bytes, path, sizes)
}

/// Decodes bytes; `path` only supplies the extension and the messages.
pub fn decode(bytes: &[u8], path: &Path, sizes: &[u32]) -> Result<Decoded, Rejection> {
    let undecodable = |m: String| (Reason::ImageUndecodable, m);
    if bytes.is_empty() {
        return Err(undecodable("empty file".into()));
    }
    let format =
        image::guess_format(bytes).map_err(|_| undecodable("not a JPEG or PNG file".into()))?;
    let mut conversions = Vec::new();
    let named_jpeg = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"));
    match format {
        ImageFormat::Jpeg => {
            let info =
                jpeg_info(bytes).ok_or_else(|| undecodable("JPEG header is damaged".into()))?;
            if !info.complete {
                return Err(undecodable(
                    "JPEG is truncated (no end-of-image marker after the scan)".into(),
                ));
            }
            if info.components == 4 {
                conversions.push(Reason::Cmyk);
            }
        }
        ImageFormat::Png => {
            if named_jpeg {
                conversions.push(Reason::PngNamedJpeg);
            }
        }
        other => return Err(undecodable(format!("unsupported format {other:?}"))),
    }
    let image = image::load_from_memory_with_format(bytes, format)
        .map_err(|e| undecodable(format!("decode failed: {e}")))?;
    match &image {
        DynamicImage::ImageLuma8(_) => conversions.push(Reason::Grayscale),
        DynamicImage::ImageLumaA8(_) => conversions.extend([Reason::Grayscale, Reason::Alpha]),
        DynamicImage::ImageRgba8(_) => conversions.push(Reason::Alpha),
        DynamicImage::ImageLuma16(_) => conversions.extend([Reason::Grayscale, Reason::SixteenBit]),
        DynamicImage::ImageLumaA16(_) => {
            conversions.extend([Reason::Grayscale, Reason::SixteenBit, Reason::Alpha])
        }
        DynamicImage::ImageRgb16(_) => conversions.push(Reason::SixteenBit),
        DynamicImage::ImageRgba16(_) => conversions.extend([Reason::SixteenBit, Reason::Alpha]),
        _ => {}
    }
    let rgb: RgbImage = image.to_rgb8();
    let (width, height) = rgb.dimensions();
    if width == 0 || height == 0 {
        return Err(undecodable("image has no pixels".into()));
    }
    let png = sizes
        .iter()
        .map(|&s| encode_png(&squash(&rgb, s)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| undecodable(format!("re-encode failed: {e}")))?;
    Ok(Decoded {
        width,
        height,
        png,
        conversions,
    })
}

/// The reference's square squash-resize.
pub fn squash(rgb: &RgbImage, size: u32) -> RgbImage {
    image::imageops::resize(rgb, size, size, FilterType::Triangle)
}

struct JpegInfo {
    components: u8,
    /// An end-of-image marker follows the first scan.
    complete: bool,
}

/// Walks the JPEG segments up to the first scan: reads the frame header's component count (4 =
/// CMYK/YCCK), then checks that an end-of-image marker follows the entropy-coded data. Inside
/// that data every 0xFF byte is stuffed, so `FF D9` there can only be the real marker; decoders
/// silently fill a truncated scan with grey, which is why we look ourselves.
fn jpeg_info(bytes: &[u8]) -> Option<JpegInfo> {
    let mut i = 2; // after SOI
    let mut components = None;
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return None;
        }
        let marker = bytes[i + 1];
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        let is_sof = (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            components = bytes.get(i + 9).copied();
        }
        if marker == 0xDA {
            let scan = i + 2 + len;
            let complete =
                scan <= bytes.len() && bytes[scan..].windows(2).any(|w| w == [0xFF, 0xD9]);
            return Some(JpegInfo {
                components: components?,
                complete,
            });
        }
        i += 2 + len;
    }
    None
}
