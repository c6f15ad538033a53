//! Reads the scene attributes that ingest's `synth` draws back out of an image (generated or
//! real, 64×64 or 256×256 training crops, or any square image of a whole scene), and scores a set
//! of readings against `attributes.json`. Deterministic image processing on the known palettes
//! and layout; no learned weights.
//!
//! How a scene is drawn (synth): a background colour darkening linearly from the top row (×1) to
//! the bottom (×0.75), pixel noise of ±4, then one to three flat shapes, one per column (left,
//! middle, right thirds of the width), centred vertically between 35 % and 65 % of the height,
//! of radius 9 % (small) or 16 % (large) of the shorter side. Ingest squashes it to a square
//! (76 or 304 px) and training crops the centre 64 or 256 px.
//!
//! How it is read back:
//! 1. Geometry: a 64 (256) px image is taken as the centre crop of a 76 (304) px squash, anything
//!    else as a whole squash, so every pixel maps to a fraction of the original scene.
//! 2. Background: the median colour of the rows above and below the band objects can occupy
//!    (objects stay within 19–81 % of the height), each undone by the known shade at its height;
//!    the nearest background of the palette wins. The per-row background colour is the linear
//!    interpolation between the two bands' medians.
//! 3. Objects: pixels farther than [`FOREGROUND_DISTANCE`] from their row's background are
//!    foreground; per column, the largest 4-connected foreground region is the object if it
//!    covers at least [`MIN_OBJECT_AREA`] of the scene. Its colour is the palette colour nearest
//!    to the median of its pixels, its size class comes from its height (large shapes are 26–32 %
//!    of the scene height, small ones 14–18 %), and its shape from the balance of its halves (a
//!    triangle, apex up, has a third of the bottom half's area in its top half) and then how much
//!    of its bounding box it fills (square ≈ 1, circle ≈ π/4). Both survive a crop that cuts an
//!    object vertically, and the blur of a 64 px image better than the fill ratio alone.
//!
//! Scores: per attribute, the share of correct readings and, beside it, two baselines: chance,
//! the accuracy of guessing at random from the ground truth's own distribution (Σ p²), and
//! majority, the accuracy of always answering the most frequent value (max p). Attributes the
//! captions state ("caption-visible": the shape of each object and the set of shape kinds) are
//! kept apart from those only the dialogue states ("dialogue-only": background, count, which
//! columns hold an object, each object's colour and size).

use std::collections::BTreeMap;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use chatpainter_formats::scenes::{
    AttributeScore, BACKGROUNDS, COLOURS, COLUMNS, SHADE_DROP, SHAPES, Scene, SceneScores,
    Visibility,
};

/// Stamped into every score: bump it whenever a reading rule changes.
pub const SCORER_VERSION: &str = "scene-score-v1";

/// RGB distance from the row's background above which a pixel belongs to an object. Pixel noise
/// and JPEG ringing stay below 15; the closest object/background pair (green on grass) is ≈ 55.
pub const FOREGROUND_DISTANCE: f32 = 32.0;

/// Smallest object region, as a fraction of the scene's area (a small triangle covers ≈ 1.2 %,
/// half of one when the crop cuts it).
pub const MIN_OBJECT_AREA: f32 = 0.003;

/// Height (fraction of the scene) separating small from large shapes.
const LARGE_HEIGHT: f32 = 0.22;

/// Objects stay inside this band of the scene height; the background is read outside it.
const OBJECT_BAND: (f32, f32) = (0.17, 0.83);

/// One object as read from an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectReading {
    pub shape: String,
    pub colour: String,
    pub large: bool,
}

/// Everything read from one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SceneReading {
    pub background: String,
    /// Left, middle, right.
    pub columns: [Option<ObjectReading>; 3],
}

impl SceneReading {
    pub fn count(&self) -> usize {
        self.columns.iter().flatten().count()
    }
}

/// How image pixels map to fractions of the original scene.
struct View {
    side: usize,
    /// Side of the squashed scene the image was cropped from, and the crop offset.
    load: f32,
    offset: f32,
}

impl View {
    fn of(side: usize) -> Self {
        let (load, offset) = match side {
            64 => (76.0, 6.0),
            256 => (304.0, 24.0),
            s => (s as f32, 0.0),
        };
        Self { side, load, offset }
    }
    /// Scene fraction of the centre of pixel `i` along either axis.
    fn frac(&self, i: usize) -> f32 {
        (i as f32 + self.offset + 0.5) / self.load
    }
    /// Pixel range whose centres fall in `[lo, hi)` of the scene.
    fn range(&self, lo: f32, hi: f32) -> std::ops::Range<usize> {
        let first = (0..self.side)
            .find(|&i| self.frac(i) >= lo)
            .unwrap_or(self.side);
        let end = (0..self.side)
            .rfind(|&i| self.frac(i) < hi)
            .map_or(first, |i| i + 1);
        first..end.max(first)
    }
}

type Rgb = [f32; 3];

fn dist2(a: Rgb, b: Rgb) -> f32 {
    (0..3).map(|c| (a[c] - b[c]).powi(2)).sum()
}

fn to_rgb(c: [u8; 3]) -> Rgb {
    c.map(f32::from)
}

fn nearest<'a>(c: Rgb, palette: &[(&'a str, [u8; 3])]) -> &'a str {
    palette
        .iter()
        .min_by(|a, b| dist2(c, to_rgb(a.1)).total_cmp(&dist2(c, to_rgb(b.1))))
        .map_or("", |p| p.0)
}

/// Per-channel median.
fn median(pixels: &[Rgb]) -> Rgb {
    let mut out = [0.0; 3];
    for (c, o) in out.iter_mut().enumerate() {
        let mut v: Vec<f32> = pixels.iter().map(|p| p[c]).collect();
        v.sort_by(f32::total_cmp);
        *o = v.get(v.len() / 2).copied().unwrap_or(0.0);
    }
    out
}

fn shade(frac_y: f32) -> f32 {
    1.0 - SHADE_DROP * frac_y
}

/// Reads the scene attributes of one square image.
pub fn read_scene(img: &RgbImage) -> SceneReading {
    let side = img.width().min(img.height()) as usize;
    let view = View::of(side);
    let px = |x: usize, y: usize| to_rgb(img.get_pixel(x as u32, y as u32).0);

    // Background: the bands above and below the objects, shade undone.
    let band_pixels = |rows: std::ops::Range<usize>| -> (Rgb, f32) {
        let fy = rows.clone().map(|y| view.frac(y)).sum::<f32>() / rows.len().max(1) as f32;
        let pixels: Vec<Rgb> = rows
            .flat_map(|y| (0..side).map(move |x| (x, y)))
            .map(|(x, y)| px(x, y))
            .collect();
        (median(&pixels), fy)
    };
    let (top, top_y) = band_pixels(view.range(0.0, OBJECT_BAND.0));
    let (bottom, bottom_y) = band_pixels(view.range(OBJECT_BAND.1, 1.0));
    let base: Rgb =
        std::array::from_fn(|c| 0.5 * (top[c] / shade(top_y) + bottom[c] / shade(bottom_y)));
    let background = nearest(base, &BACKGROUNDS).to_string();
    let row_background = |y: usize| -> Rgb {
        let t = ((view.frac(y) - top_y) / (bottom_y - top_y).max(1e-6)).clamp(0.0, 1.0);
        std::array::from_fn(|c| top[c] + t * (bottom[c] - top[c]))
    };

    // Foreground mask inside the object band.
    let rows = view.range(OBJECT_BAND.0, OBJECT_BAND.1);
    let mut fg = vec![false; side * side];
    for y in rows.clone() {
        let bg = row_background(y);
        for x in 0..side {
            fg[y * side + x] = dist2(px(x, y), bg) > FOREGROUND_DISTANCE * FOREGROUND_DISTANCE;
        }
    }

    let scene_px = view.load * view.load;
    let columns = std::array::from_fn(|k| {
        let cols = view.range(k as f32 / 3.0, (k + 1) as f32 / 3.0);
        let region = largest_region(&fg, side, cols, rows.clone())?;
        if (region.len() as f32) < MIN_OBJECT_AREA * scene_px {
            return None;
        }
        let (x0, x1) = min_max(region.iter().map(|p| p.0));
        let (y0, y1) = min_max(region.iter().map(|p| p.1));
        let (w, h) = ((x1 - x0 + 1) as f32, (y1 - y0 + 1) as f32);
        let fill = region.len() as f32 / (w * h);
        // Twice the middle row index: pixels above it form the top half.
        let mid2 = y0 + y1;
        let top = region.iter().filter(|p| 2 * p.1 < mid2).count() as f32;
        let bottom = region.iter().filter(|p| 2 * p.1 > mid2).count() as f32;
        let shape = if top < 0.6 * bottom {
            SHAPES[2]
        } else if fill >= 0.88 {
            SHAPES[1]
        } else {
            SHAPES[0]
        };
        let colours: Vec<Rgb> = region.iter().map(|&(x, y)| px(x, y)).collect();
        Some(ObjectReading {
            shape: shape.to_string(),
            colour: nearest(median(&colours), &COLOURS).to_string(),
            large: h / view.load >= LARGE_HEIGHT,
        })
    });
    SceneReading {
        background,
        columns,
    }
}

fn min_max(v: impl Iterator<Item = usize>) -> (usize, usize) {
    v.fold((usize::MAX, 0), |(lo, hi), x| (lo.min(x), hi.max(x)))
}

/// The largest 4-connected region of `mask` inside the rectangle (its pixels), if any.
fn largest_region(
    mask: &[bool],
    side: usize,
    xs: std::ops::Range<usize>,
    ys: std::ops::Range<usize>,
) -> Option<Vec<(usize, usize)>> {
    let mut seen = vec![false; side * side];
    let mut best: Option<Vec<(usize, usize)>> = None;
    for y in ys.clone() {
        for x in xs.clone() {
            if !mask[y * side + x] || seen[y * side + x] {
                continue;
            }
            seen[y * side + x] = true;
            let (mut region, mut stack) = (Vec::new(), vec![(x, y)]);
            while let Some((cx, cy)) = stack.pop() {
                region.push((cx, cy));
                let neighbours = [
                    (cx.wrapping_sub(1), cy),
                    (cx + 1, cy),
                    (cx, cy.wrapping_sub(1)),
                    (cx, cy + 1),
                ];
                for (nx, ny) in neighbours {
                    if xs.contains(&nx) && ys.contains(&ny) {
                        let i = ny * side + nx;
                        if mask[i] && !seen[i] {
                            seen[i] = true;
                            stack.push((nx, ny));
                        }
                    }
                }
            }
            if best.as_ref().is_none_or(|b| region.len() > b.len()) {
                best = Some(region);
            }
        }
    }
    best
}

/// Attribute names in table order, with what states them.
pub const ATTRIBUTES: [(&str, Visibility); 7] = [
    ("background", Visibility::DialogueOnly),
    ("count", Visibility::DialogueOnly),
    ("position", Visibility::DialogueOnly),
    ("colour", Visibility::DialogueOnly),
    ("size", Visibility::DialogueOnly),
    ("shape", Visibility::CaptionVisible),
    ("shape_kinds", Visibility::CaptionVisible),
];

#[derive(Default)]
struct Tally {
    pairs: Vec<(String, String)>,
}

impl Tally {
    fn add(&mut self, truth: impl Into<String>, read: impl Into<String>) {
        self.pairs.push((truth.into(), read.into()));
    }

    fn finish(self, name: &str, visibility: Visibility) -> AttributeScore {
        let total = self.pairs.len();
        let correct = self.pairs.iter().filter(|(t, r)| t == r).count();
        let mut freq: BTreeMap<&str, usize> = BTreeMap::new();
        let mut wrong: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (t, r) in &self.pairs {
            *freq.entry(t).or_default() += 1;
            if t != r {
                *wrong.entry((t, r)).or_default() += 1;
            }
        }
        let n = total.max(1) as f64;
        let chance = freq.values().map(|&c| (c as f64 / n).powi(2)).sum();
        let majority = freq.values().max().map_or(0.0, |&c| c as f64 / n);
        let mut confusions: Vec<(String, String, usize)> = wrong
            .into_iter()
            .map(|((t, r), c)| (t.to_string(), r.to_string(), c))
            .collect();
        confusions.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.cmp(b)));
        AttributeScore {
            name: name.to_string(),
            visibility,
            correct,
            total,
            accuracy: correct as f64 / n,
            chance,
            majority,
            confusions,
        }
    }
}

fn shape_kinds<'a>(shapes: impl Iterator<Item = &'a str>) -> String {
    let mut kinds: Vec<&str> = shapes.collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds.join("+")
}

/// Scores readings against their scenes (pairs in any order).
pub fn score<'a>(pairs: impl IntoIterator<Item = (&'a SceneReading, &'a Scene)>) -> SceneScores {
    let mut t: BTreeMap<&str, Tally> = BTreeMap::new();
    let mut images = 0;
    for (read, scene) in pairs {
        images += 1;
        t.entry("background")
            .or_default()
            .add(&scene.background, &read.background);
        t.entry("count")
            .or_default()
            .add(scene.objects.len().to_string(), read.count().to_string());
        for (k, column) in COLUMNS.iter().enumerate() {
            let truth = scene.objects.iter().find(|o| o.position == *column);
            let got = read.columns[k].as_ref();
            let present = |b: bool| if b { "object" } else { "empty" };
            t.entry("position")
                .or_default()
                .add(present(truth.is_some()), present(got.is_some()));
            let Some(o) = truth else { continue };
            let none = "nothing".to_string();
            t.entry("colour")
                .or_default()
                .add(&o.colour, got.map_or(&none, |g| &g.colour));
            let size = |large: bool| if large { "large" } else { "small" };
            t.entry("size")
                .or_default()
                .add(size(o.large), got.map_or("nothing", |g| size(g.large)));
            t.entry("shape")
                .or_default()
                .add(&o.shape, got.map_or(&none, |g| &g.shape));
        }
        t.entry("shape_kinds").or_default().add(
            shape_kinds(scene.objects.iter().map(|o| o.shape.as_str())),
            shape_kinds(read.columns.iter().flatten().map(|o| o.shape.as_str())),
        );
    }
    SceneScores {
        scorer: SCORER_VERSION.to_string(),
        images,
        attributes: ATTRIBUTES
            .iter()
            .map(|(name, vis)| t.remove(name).unwrap_or_default().finish(name, *vis))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chance_is_the_sum_of_squared_frequencies() {
        let mut t = Tally::default();
        for (a, b) in [("x", "x"), ("x", "y"), ("y", "y"), ("y", "y")] {
            t.add(a, b);
        }
        let s = t.finish("a", Visibility::DialogueOnly);
        assert_eq!((s.correct, s.total), (3, 4));
        assert!((s.chance - 0.5).abs() < 1e-12);
        assert!((s.majority - 0.5).abs() < 1e-12);
        assert_eq!(s.confusions, vec![("x".into(), "y".into(), 1)]);
    }

    #[test]
    fn a_flat_background_reads_as_that_background_with_no_objects() {
        for (name, rgb) in BACKGROUNDS {
            let img = RgbImage::from_fn(64, 64, |_, y| {
                let f = shade((y as f32 + 6.5) / 76.0);
                image::Rgb(rgb.map(|c| (f32::from(c) * f) as u8))
            });
            let r = read_scene(&img);
            assert_eq!(r.background, name);
            assert_eq!(r.count(), 0, "{name}");
        }
    }
}
