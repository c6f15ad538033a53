//! COCO instance annotations (`instances_{train,val}2014.json`) → the rows of `objects.parquet`
//! (format in `chatpainter_formats::objects`): a category and a relative box per object of
//! every kept image.
//!
//! [`read`] parses every configured instances file before any image is decoded, so a whole-file
//! problem stops the run early: malformed JSON or a missing field (file, line, column), a
//! category id listed twice in one file, the same id named differently in two files (naming both),
//! an annotation whose `category_id` its file does not list (file, annotation index and id, field).
//! [`join`] runs once the images are decoded, because boxes are stored as fractions of the decoded
//! width and height. Per-record problems are quarantined as issues, like captions:
//! - an annotation whose `image_id` is not in its file's `images[]`: `object-for-unknown-image`
//!   (per annotation, as `caption-for-unknown-image`);
//! - annotations of an image that the split's captions file does not list:
//!   `objects-without-captions` (per image, as `dialog-without-captions`);
//! - a box of zero or negative size, outside its image by more than a pixel, or with no area left
//!   inside it: `object-box-invalid`; overshoot within a pixel is clamped to the image;
//! - annotations of an image the captions file lists but ingest dropped go with it, silently:
//!   the image's own issue covers them (as its captions).
//!
//! `quality.json` counts each instances file (kind `coco-instances`): records in = images plus
//! annotations, used = kept images plus boxes written.

use crate::config::IngestConfig;
use crate::error::{IngestError, Result};
use crate::sources::{self, InstanceAnnotation, InstancesFile};
use chatpainter_formats::ingested::{Record, Shard};
use chatpainter_formats::objects::{Category, ObjectBox, Objects};
use chatpainter_formats::quality::{FileCounts, Issue, Reason};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// The instances files of a run, checked, holding this shard's annotations only.
pub struct Instances {
    /// The union over all files, in id order.
    pub categories: Vec<Category>,
    files: Vec<InstancesOfFile>,
}

struct InstancesOfFile {
    /// As configured (relative to the data root), for issues and the quality report.
    name: String,
    split: String,
    /// `images[]` ids owned by this shard → their index in the file.
    images: HashMap<i64, u32>,
    records_in: u64,
    /// This shard's annotations with their index in `annotations[]`.
    annotations: Vec<(u32, InstanceAnnotation)>,
}

/// The objects table of this shard and what building it found.
pub struct Joined {
    pub objects: Objects,
    pub issues: Vec<Issue>,
    /// Per instances file, for `quality.json`.
    pub files: Vec<(String, FileCounts)>,
}

/// Reads and checks every `instances` file the config lists; `None` when none is listed.
///
/// # Errors
/// Whole-file problems (see the module docs), each naming the file.
pub fn read(config: &IngestConfig, data_root: &Path, shard: Shard) -> Result<Option<Instances>> {
    let mut categories: BTreeMap<i32, (String, String)> = BTreeMap::new();
    let mut files = Vec::new();
    for coco in &config.coco {
        let Some(name) = &coco.instances else {
            continue;
        };
        let path = data_root.join(name);
        let file: InstancesFile = sources::read_json(&path)?;
        let mut own: HashMap<i32, &str> = HashMap::with_capacity(file.categories.len());
        for (i, c) in file.categories.iter().enumerate() {
            if own.insert(c.id, &c.name).is_some() {
                return Err(IngestError::contract(
                    &path,
                    format!(
                        "categories[{i}]: field `id`: category id {} is listed twice",
                        c.id
                    ),
                ));
            }
            match categories.get(&c.id) {
                Some((other, other_file)) if *other != c.name => {
                    return Err(IngestError::contract(
                        &path,
                        format!(
                            "categories[{i}]: category {} is named {:?} here but {:?} in {other_file}",
                            c.id, c.name, other
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    categories.insert(c.id, (c.name.clone(), name.clone()));
                }
            }
        }
        for (rec, a) in file.annotations.iter().enumerate() {
            let known = i32::try_from(a.category_id)
                .ok()
                .is_some_and(|id| own.contains_key(&id));
            if !known {
                return Err(IngestError::contract(
                    &path,
                    format!(
                        "annotations[{rec}] (id {}): field `category_id`: {} is not one of the file's {} categories",
                        a.id,
                        a.category_id,
                        file.categories.len()
                    ),
                ));
            }
        }
        let records_in = (file.images.len() + file.annotations.len()) as u64;
        files.push(InstancesOfFile {
            name: name.clone(),
            split: coco.split.clone(),
            images: file
                .images
                .iter()
                .enumerate()
                .filter(|(_, image)| shard.owns(image.id))
                .map(|(rec, image)| (image.id, rec as u32))
                .collect(),
            records_in,
            annotations: file
                .annotations
                .into_iter()
                .enumerate()
                .filter(|(_, a)| shard.owns(a.image_id))
                .map(|(rec, a)| (rec as u32, a))
                .collect(),
        });
    }
    if files.is_empty() {
        return Ok(None);
    }
    Ok(Some(Instances {
        categories: categories
            .into_iter()
            .map(|(id, (name, _))| Category { id, name })
            .collect(),
        files,
    }))
}

/// The boxes of the kept `records` (this shard's), relative to their decoded size; `listed` is
/// every `(split, image_id)` the captions files list (`Catalog::listed`).
pub fn join(instances: Instances, records: &[Record], listed: &HashSet<(String, i64)>) -> Joined {
    let kept: HashMap<(&str, i64), (i32, i32)> = records
        .iter()
        .map(|r| ((r.split.as_str(), r.image_id), (r.width, r.height)))
        .collect();
    let mut issues = Vec::new();
    let mut counts = Vec::new();
    // Keyed by (image_id, file, annotation index).
    let mut boxes: Vec<((i64, usize, u32), ObjectBox)> = Vec::new();
    for (f, file) in instances.files.into_iter().enumerate() {
        let split = file.split.as_str();
        let mut used = file
            .images
            .keys()
            .filter(|&&id| kept.contains_key(&(split, id)))
            .count() as u64;
        // Images not listed by the captions file: one issue each, with their annotation count.
        let mut unlisted: BTreeMap<i64, u64> = BTreeMap::new();
        for (rec, a) in &file.annotations {
            if !file.images.contains_key(&a.image_id) {
                issues.push(Issue::new(
                    &file.name,
                    format!("annotations[{rec}]"),
                    "image_id",
                    Some(a.image_id),
                    Reason::ObjectForUnknownImage,
                    format!(
                        "annotation {}: no image with id {} in this file's images[]",
                        a.id, a.image_id
                    ),
                ));
                continue;
            }
            let Some(&(width, height)) = kept.get(&(split, a.image_id)) else {
                if !listed.contains(&(file.split.clone(), a.image_id)) {
                    *unlisted.entry(a.image_id).or_default() += 1;
                }
                continue;
            };
            match relative_box(a.bbox, width, height) {
                Ok([x, y, w, h]) => {
                    used += 1;
                    boxes.push((
                        (a.image_id, f, *rec),
                        ObjectBox {
                            image_id: a.image_id,
                            split: file.split.clone(),
                            // Checked against the file's categories by `read`.
                            category_id: a.category_id as i32,
                            x,
                            y,
                            w,
                            h,
                        },
                    ));
                }
                Err(problem) => issues.push(Issue::new(
                    &file.name,
                    format!("annotations[{rec}]"),
                    "bbox",
                    Some(a.image_id),
                    Reason::ObjectBoxInvalid,
                    format!("annotation {}: bbox {:?} {problem}", a.id, a.bbox),
                )),
            }
        }
        for (id, n) in unlisted {
            issues.push(Issue::new(
                &file.name,
                format!("images[{}]", file.images.get(&id).copied().unwrap_or_default()),
                "id",
                Some(id),
                Reason::ObjectsWithoutCaptions,
                format!(
                    "{n} annotation(s) of image {id}, which the captions file of split {split:?} does not list"
                ),
            ));
        }
        counts.push((
            file.name,
            FileCounts {
                kind: "coco-instances".into(),
                records_in: file.records_in,
                records_used: used,
            },
        ));
    }
    // An image's boxes in annotation order (its id is in one split only, but keep the order
    // total and the same as `merge`'s).
    boxes.sort_by(|(ka, a), (kb, b)| (ka.0, &a.split, ka.2).cmp(&(kb.0, &b.split, kb.2)));
    Joined {
        objects: Objects {
            categories: instances.categories,
            boxes: boxes.into_iter().map(|(_, b)| b).collect(),
        },
        issues,
        files: counts,
    }
}

/// A COCO `[x, y, w, h]` in pixels as fractions of `width` × `height`, such that the box and its
/// far edges stay in `[0, 1]` in `f32` (what `read_objects` checks). Overshoot of up to a pixel
/// is clamped; anything else is refused with the reason.
fn relative_box(bbox: [f64; 4], width: i32, height: i32) -> Result<[f32; 4], String> {
    let [x, y, w, h] = bbox;
    if !(w > 0.0 && h > 0.0) {
        return Err("has zero or negative size".into());
    }
    let (iw, ih) = (f64::from(width), f64::from(height));
    if x < -1.0 || y < -1.0 || x + w > iw + 1.0 || y + h > ih + 1.0 {
        return Err(format!(
            "lies outside the {width}x{height} image by more than a pixel"
        ));
    }
    let (Some((rx, rw)), Some((ry, rh))) = (axis(x, w, iw), axis(y, h, ih)) else {
        return Err(format!("has no area inside the {width}x{height} image"));
    };
    Ok([rx, ry, rw, rh])
}

/// One axis of [`relative_box`]: `(start, length)` as fractions of `size`, or `None` when
/// nothing is left inside.
fn axis(start: f64, len: f64, size: f64) -> Option<(f32, f32)> {
    let (a, b) = (start.clamp(0.0, size), (start + len).clamp(0.0, size));
    let (ra, rb) = ((a / size) as f32, (b / size) as f32);
    let mut rl = rb - ra;
    // `ra + rl` may round above `rb` (and so above 1): step the length down an ulp at a time.
    while rl > 0.0 && ra + rl > rb {
        rl = f32::from_bits(rl.to_bits() - 1);
    }
    (rl > 0.0).then_some((ra, rl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_are_relative_and_clamped_within_a_pixel() {
        assert_eq!(
            relative_box([16.0, 12.0, 32.0, 24.0], 64, 48),
            Ok([0.25, 0.25, 0.5, 0.5])
        );
        // Overshoot below a pixel is clamped to the image.
        assert_eq!(
            relative_box([-0.5, 24.0, 64.9, 24.5], 64, 48),
            Ok([0.0, 0.5, 1.0, 0.5])
        );
        for (bbox, problem) in [
            ([0.0, 0.0, -3.0, 4.0], "negative size"),
            ([0.0, 0.0, 0.0, 4.0], "negative size"),
            ([-1.5, 0.0, 10.0, 4.0], "more than a pixel"),
            ([60.0, 0.0, 6.0, 4.0], "more than a pixel"),
            ([64.2, 0.0, 0.5, 4.0], "no area inside"),
        ] {
            let err = relative_box(bbox, 64, 48).expect_err("refused");
            assert!(err.contains(problem), "{bbox:?}: {err}");
        }
    }

    #[test]
    fn far_edges_never_round_past_one() {
        for size in 1..2000 {
            let size_f = f64::from(size);
            for start in [0.0, 0.3, size_f / 3.0, size_f - 1.7, size_f * 0.77] {
                let Some((a, l)) = axis(start, size_f - start + 0.9, size_f) else {
                    continue;
                };
                assert!(
                    a >= 0.0 && l > 0.0 && a + l <= 1.0,
                    "{size} {start}: {a} {l}"
                );
            }
        }
    }
}
