//! Image preprocessing matched to each Inception backbone, as the published IS / FID code does it.
//!
//! Resize semantics are part of the metric: PyTorch's bilinear with `align_corners = False`
//! (half-pixel centres, no antialias) for torchvision and pytorch-fid, TensorFlow 1.x's
//! `resize_bilinear` (no half-pixel offset: `src = dst · in/out`) for the TF graph as
//! torch-fidelity reproduces it. Both are written out here on the host in f32, in the same
//! arithmetic order as the references, rather than relying on a backend's interpolate whose
//! corner convention is not part of its contract. Normalisation per variant:
//!
//! | [`Preprocess`] | input range before resize | after resize |
//! |---|---|---|
//! | `Torchvision { transform_input: false }` | [-1, 1] | as is |
//! | `Torchvision { transform_input: true }` | [-1, 1] | → [0,1] → `(x − mean_c)/std_c` (ImageNet) |
//! | `TorchFidelity` | u8 values 0..255 as f32 | `(x − 128)/128` |
//! | `PytorchFid` | [0, 1] | `2x − 1` |
//!
//! Float images in [-1, 1] given to `TorchFidelity` are first quantised to u8 the way
//! torchvision's `save_image` does (`floor(255·x01 + 0.5)`), because torch-fidelity only accepts
//! uint8 images.

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{EvalError, Result};
use crate::inception::{Backbone, INPUT_SIZE, InceptionConfig};

/// ImageNet channel means used by torchvision's `transform_input`.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations used by torchvision's `transform_input`.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Preprocessing recipe; pick it with [`Preprocess::for_config`] unless reproducing pytorch-fid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Preprocess {
    /// torchvision backbone: [-1, 1], PyTorch bilinear; ImageNet-normalised when the model's
    /// `transform_input` is on (it maps the input back to [-1, 1] itself).
    Torchvision {
        /// Must equal the model's `transform_input`.
        transform_input: bool,
    },
    /// TF graph as torch-fidelity feeds it: u8 → TF1 bilinear → `(x − 128)/128`.
    TorchFidelity,
    /// TF graph as pytorch-fid feeds it: [0, 1] → PyTorch bilinear → `2x − 1`.
    PytorchFid,
}

impl Preprocess {
    /// The recipe of the published code for a network built from `config` (table above).
    pub fn for_config(config: &InceptionConfig) -> Self {
        match config.backbone {
            Backbone::TorchvisionImagenet => Self::Torchvision {
                transform_input: config.transform_input,
            },
            Backbone::TfInception2015 => Self::TorchFidelity,
        }
    }
}

/// A batch of RGB images to score, in one of the two layouts the pipeline produces.
#[derive(Debug, Clone, Copy)]
pub enum ImageBatch<'a> {
    /// Generator output: NCHW f32 in [-1, 1] (`tanh`), RGB channel order.
    SignedUnitNchw {
        /// `n · 3 · height · width` values.
        data: &'a [f32],
        /// Number of images.
        n: usize,
        /// Height in pixels.
        height: usize,
        /// Width in pixels.
        width: usize,
    },
    /// Decoded image files: NHWC interleaved u8 RGB (what `image::RgbImage` holds).
    U8Nhwc {
        /// `n · height · width · 3` values.
        data: &'a [u8],
        /// Number of images.
        n: usize,
        /// Height in pixels.
        height: usize,
        /// Width in pixels.
        width: usize,
    },
}

impl ImageBatch<'_> {
    fn dims(&self) -> (usize, usize, usize, usize) {
        match *self {
            Self::SignedUnitNchw {
                data,
                n,
                height,
                width,
            } => (data.len(), n, height, width),
            Self::U8Nhwc {
                data,
                n,
                height,
                width,
            } => (data.len(), n, height, width),
        }
    }

    /// Checks sizes and value range.
    fn validate(&self) -> Result<()> {
        let (len, n, h, w) = self.dims();
        if n == 0 || h == 0 || w == 0 {
            return Err(EvalError::InvalidImages(format!(
                "empty batch: n={n}, height={h}, width={w}"
            )));
        }
        let expected = n
            .checked_mul(3)
            .and_then(|v| v.checked_mul(h))
            .and_then(|v| v.checked_mul(w))
            .ok_or_else(|| EvalError::InvalidImages("batch size overflows usize".into()))?;
        if len != expected {
            return Err(EvalError::InvalidImages(format!(
                "expected n·3·h·w = {n}·3·{h}·{w} = {expected} values, found {len}"
            )));
        }
        if let Self::SignedUnitNchw { data, .. } = self {
            // A small tolerance for tanh round-off; anything beyond means a wrong range
            // ([0, 255] input is a known way to get meaningless scores).
            if let Some((i, v)) = data
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite() || v.abs() > 1.0 + 1e-3)
            {
                return Err(EvalError::InvalidImages(format!(
                    "value {v} at flat index {i} is outside [-1, 1] (expected generator output in [-1, 1])"
                )));
            }
        }
        Ok(())
    }

    /// Channel `c` of image `i` as a dense `h × w` f32 plane in the value range `range`.
    fn plane(&self, i: usize, c: usize, range: PlaneRange) -> Vec<f32> {
        match *self {
            Self::SignedUnitNchw {
                data,
                height,
                width,
                ..
            } => {
                let hw = height * width;
                let start = (i * 3 + c) * hw;
                let src = &data[start..start + hw];
                match range {
                    PlaneRange::SignedUnit => src.to_vec(),
                    PlaneRange::Unit => src.iter().map(|&x| (x + 1.0) * 0.5).collect(),
                    PlaneRange::U8 => src.iter().map(|&x| quantise_u8(x)).collect(),
                }
            }
            Self::U8Nhwc {
                data,
                height,
                width,
                ..
            } => {
                let hw = height * width;
                let base = i * hw * 3;
                (0..hw)
                    .map(|p| {
                        let v = f32::from(data[base + p * 3 + c]);
                        match range {
                            PlaneRange::SignedUnit => v / 255.0 * 2.0 - 1.0,
                            PlaneRange::Unit => v / 255.0,
                            PlaneRange::U8 => v,
                        }
                    })
                    .collect()
            }
        }
    }
}

/// Value range a plane is brought to before resizing.
#[derive(Clone, Copy)]
enum PlaneRange {
    SignedUnit,
    Unit,
    U8,
}

/// [-1, 1] float → u8 value (as f32) like torchvision's `save_image`: `floor(255·x01 + 0.5)`.
fn quantise_u8(x: f32) -> f32 {
    let x01 = (x + 1.0) * 0.5;
    (x01 * 255.0 + 0.5).floor().clamp(0.0, 255.0)
}

/// Bilinear resize of one plane, PyTorch `F.interpolate(mode="bilinear", align_corners=False,
/// antialias=False)` semantics: `src = (dst + 0.5)·in/out − 0.5`, clamped at 0.
pub fn resize_bilinear_pytorch(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let idx = |out: usize, inn: usize| -> Vec<(usize, usize, f32)> {
        let scale = inn as f32 / out as f32;
        (0..out)
            .map(|d| {
                let s = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (s as usize).min(inn - 1);
                let i1 = if i0 < inn - 1 { i0 + 1 } else { i0 };
                (i0, i1, s - i0 as f32)
            })
            .collect()
    };
    let ys = idx(oh, h);
    let xs = idx(ow, w);
    let mut out = Vec::with_capacity(oh * ow);
    for &(y0, y1, ly) in &ys {
        let (r0, r1) = (&src[y0 * w..(y0 + 1) * w], &src[y1 * w..(y1 + 1) * w]);
        for &(x0, x1, lx) in &xs {
            // PyTorch's CPU kernel: h0λ·(w0λ·a + w1λ·b) + h1λ·(w0λ·c + w1λ·d).
            let top = (1.0 - lx) * r0[x0] + lx * r0[x1];
            let bot = (1.0 - lx) * r1[x0] + lx * r1[x1];
            out.push((1.0 - ly) * top + ly * bot);
        }
    }
    out
}

/// Bilinear resize of one plane, TensorFlow 1.x `resize_bilinear(align_corners=False)` without
/// half-pixel centres: `src = dst·in/out`, as torch-fidelity's
/// `interpolate_bilinear_2d_like_tensorflow1x` computes it (lerp form, f32).
pub fn resize_bilinear_tf1(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let idx = |out: usize, inn: usize| -> Vec<(usize, usize, f32)> {
        let scale = inn as f32 / out as f32;
        (0..out)
            .map(|d| {
                let s = d as f32 * scale;
                let lo = (s as usize).min(inn - 1);
                let hi = (lo + 1).min(inn - 1);
                (lo, hi, s - lo as f32)
            })
            .collect()
    };
    let ys = idx(oh, h);
    let xs = idx(ow, w);
    let mut out = Vec::with_capacity(oh * ow);
    for &(y0, y1, dy) in &ys {
        let (r0, r1) = (&src[y0 * w..(y0 + 1) * w], &src[y1 * w..(y1 + 1) * w]);
        for &(x0, x1, dx) in &xs {
            let top = r0[x0] + (r0[x1] - r0[x0]) * dx;
            let bot = r1[x0] + (r1[x1] - r1[x0]) * dx;
            out.push(top + (bot - top) * dy);
        }
    }
    out
}

/// Resizes to 299×299 and normalises per `recipe`, returning NCHW f32 values.
///
/// # Shapes
/// `images` of `n` images of any size → `n · 3 · 299 · 299` values (NCHW).
pub fn preprocess_to_vec(images: &ImageBatch<'_>, recipe: Preprocess) -> Result<Vec<f32>> {
    images.validate()?;
    let (_, n, h, w) = images.dims();
    let s = INPUT_SIZE;
    let mut out = Vec::with_capacity(n * 3 * s * s);
    for i in 0..n {
        for c in 0..3 {
            let plane = match recipe {
                Preprocess::Torchvision {
                    transform_input: false,
                } => {
                    resize_bilinear_pytorch(&images.plane(i, c, PlaneRange::SignedUnit), h, w, s, s)
                }
                Preprocess::Torchvision {
                    transform_input: true,
                } => {
                    let r =
                        resize_bilinear_pytorch(&images.plane(i, c, PlaneRange::Unit), h, w, s, s);
                    let (m, sd) = (IMAGENET_MEAN[c], IMAGENET_STD[c]);
                    r.into_iter().map(|x| (x - m) / sd).collect()
                }
                Preprocess::TorchFidelity => {
                    let r = resize_bilinear_tf1(&images.plane(i, c, PlaneRange::U8), h, w, s, s);
                    r.into_iter().map(|x| (x - 128.0) / 128.0).collect()
                }
                Preprocess::PytorchFid => {
                    let r =
                        resize_bilinear_pytorch(&images.plane(i, c, PlaneRange::Unit), h, w, s, s);
                    r.into_iter().map(|x| 2.0 * x - 1.0).collect()
                }
            };
            out.extend_from_slice(&plane);
        }
    }
    Ok(out)
}

/// [`preprocess_to_vec`] into a device tensor ready for [`crate::inception::InceptionV3::forward`].
///
/// # Shapes
/// → `[n, 3, 299, 299]`.
pub fn preprocess(
    images: &ImageBatch<'_>,
    recipe: Preprocess,
    device: &Device,
) -> Result<Tensor<4>> {
    let (_, n, _, _) = images.dims();
    let data = preprocess_to_vec(images, recipe)?;
    Ok(Tensor::from_data(
        TensorData::new(data, [n, 3, INPUT_SIZE, INPUT_SIZE]),
        device,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    #[test]
    fn identity_resize_is_exact_in_both_semantics() {
        let src: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(resize_bilinear_pytorch(&src, 3, 4, 3, 4), src);
        assert_eq!(resize_bilinear_tf1(&src, 3, 4, 3, 4), src);
    }

    #[test]
    fn upsample_2x_matches_hand_computed_values() {
        // 1-D row [0, 10] → 4 samples.
        // PyTorch: src = (d + 0.5)/2 − 0.5 = [-0.25→0, 0.25, 0.75, 1.25→clamped hi] → [0, 2.5, 7.5, 10].
        let p = resize_bilinear_pytorch(&[0.0, 10.0], 1, 2, 1, 4);
        assert_eq!(p, vec![0.0, 2.5, 7.5, 10.0]);
        // TF1: src = d/2 = [0, 0.5, 1, 1.5] → [0, 5, 10, 10].
        let t = resize_bilinear_tf1(&[0.0, 10.0], 1, 2, 1, 4);
        assert_eq!(t, vec![0.0, 5.0, 10.0, 10.0]);
    }

    #[test]
    fn normalisations_per_recipe() {
        // One 1×1 white-ish pixel, u8 (255, 128, 0).
        let px = [255u8, 128, 0];
        let b = ImageBatch::U8Nhwc {
            data: &px,
            n: 1,
            height: 1,
            width: 1,
        };
        let v = preprocess_to_vec(&b, Preprocess::TorchFidelity).unwrap();
        let s2 = INPUT_SIZE * INPUT_SIZE;
        assert_eq!(v.len(), 3 * s2);
        assert_eq!(v[0], (255.0 - 128.0) / 128.0);
        assert_eq!(v[s2], 0.0);
        assert_eq!(v[2 * s2], -1.0);
        let v = preprocess_to_vec(&b, Preprocess::PytorchFid).unwrap();
        assert!((v[0] - 1.0).abs() < 1e-6 && (v[2 * s2] + 1.0).abs() < 1e-6);
        let v = preprocess_to_vec(
            &b,
            Preprocess::Torchvision {
                transform_input: true,
            },
        )
        .unwrap();
        assert!((v[0] - (1.0 - 0.485) / 0.229).abs() < 1e-5);
    }

    #[test]
    fn quantisation_matches_save_image() {
        assert_eq!(quantise_u8(-1.0), 0.0);
        assert_eq!(quantise_u8(1.0), 255.0);
        assert_eq!(quantise_u8(0.0), 128.0); // 127.5 + 0.5 → 128
    }

    #[test]
    fn bad_batches_are_errors() {
        let data = [0.0f32; 10];
        let b = ImageBatch::SignedUnitNchw {
            data: &data,
            n: 1,
            height: 2,
            width: 2,
        };
        assert!(matches!(
            preprocess_to_vec(&b, Preprocess::PytorchFid),
            Err(EvalError::InvalidImages(_))
        ));
        let data = [2.0f32; 12];
        let b = ImageBatch::SignedUnitNchw {
            data: &data,
            n: 1,
            height: 2,
            width: 2,
        };
        assert!(matches!(
            preprocess_to_vec(&b, Preprocess::PytorchFid),
            Err(EvalError::InvalidImages(_))
        ));
    }
}
