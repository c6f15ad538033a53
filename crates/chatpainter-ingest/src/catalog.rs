//! From the parsed JSON files to the list of candidate images, with every per-record problem
//! quarantined as an [`Issue`].
//!
//! The joins and group-bys (captions per image, dialogues per image, duplicates, orphans) are done
//! with Polars on id columns; the texts themselves stay in Rust vectors addressed by row index, so
//! nothing is copied twice.

use crate::config::{IngestConfig, is_split_name};
use crate::error::{IngestError, Result};
use crate::sources::{self, CocoFile, VisdialFile};
use chatpainter_formats::ingested::{Dialogue, Turn};
use chatpainter_formats::quality::{FileCounts, Issue, QualityReport, Reason};
use polars::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// An image that passed every JSON-level check; its pixels are checked next.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub image_id: i64,
    pub split: String,
    /// The JSON file that listed it (for issue messages).
    pub listed_in: String,
    /// Path relative to the data root, e.g. `train2014/COCO_train2014_000000000009.jpg`.
    pub file_name: String,
    /// Width and height claimed by the JSON, if any.
    pub json_size: Option<(i64, i64)>,
    pub captions: Vec<String>,
    pub dialogue: Option<Dialogue>,
}

pub struct Catalog {
    /// Sorted by (split, image_id).
    pub candidates: Vec<Candidate>,
    /// Every `(split, image_id)` a captions file lists, usable or not: an image listed here
    /// either became a candidate or has an issue of its own.
    pub listed: HashSet<(String, i64)>,
    pub issues: Vec<Issue>,
    pub report: QualityReport,
}

/// Reads every configured file and joins them.
pub fn build(config: &IngestConfig, data_root: &Path) -> Result<Catalog> {
    let mut b = Builder::default();
    for coco in &config.coco {
        let file: CocoFile = sources::read_json(&data_root.join(&coco.captions))?;
        b.add_coco(coco.captions.clone(), &coco.images, &coco.split, file);
    }
    for vd in &config.visdial {
        let file: VisdialFile = sources::read_json(&data_root.join(&vd.file))?;
        b.add_visdial(vd, file)?;
    }
    b.join(config.require_dialog && config.visdial.iter().any(|v| v.images.is_none()))
}

#[derive(Default)]
struct Builder {
    files: Vec<String>,
    listed: HashSet<(String, i64)>,
    report: QualityReport,
    issues: Vec<Issue>,
    // COCO images, one entry per `images[]` record.
    img_id: Vec<i64>,
    img_file: Vec<u32>,
    img_rec: Vec<u32>,
    img_split: Vec<String>,
    img_path: Vec<String>,
    img_size: Vec<Option<(i64, i64)>>,
    // COCO captions, one per annotation.
    cap_id: Vec<i64>,
    cap_file: Vec<u32>,
    cap_rec: Vec<u32>,
    cap_text: Vec<String>,
    // Dialogues attached to COCO images (by id), in priority order.
    dlg_id: Vec<i64>,
    dlg_file: Vec<u32>,
    dlg_rec: Vec<u32>,
    dialogues: Vec<Dialogue>,
    // Standalone (Flickr) dialogues: they are their own images.
    standalone: Vec<(Candidate, u32, u32)>,
}

impl Builder {
    fn file_index(&mut self, name: String, kind: &str, records_in: u64) -> u32 {
        self.report.files.insert(
            name.clone(),
            FileCounts {
                kind: kind.to_string(),
                records_in,
                records_used: 0,
            },
        );
        self.files.push(name);
        (self.files.len() - 1) as u32
    }

    fn add_coco(&mut self, name: String, images_dir: &str, split: &str, file: CocoFile) {
        let records = (file.images.len() + file.annotations.len()) as u64;
        let f = self.file_index(name.clone(), "coco-captions", records);
        self.report
            .splits
            .entry(split.to_string())
            .or_default()
            .images_in += file.images.len() as u64;
        for (rec, image) in file.images.into_iter().enumerate() {
            self.listed.insert((split.to_string(), image.id));
            if !sources::is_contained(&image.file_name) {
                self.issues.push(Issue::new(
                    &name,
                    format!("images[{rec}]"),
                    "file_name",
                    Some(image.id),
                    Reason::PathEscapesRoot,
                    format!("{:?} leaves the image folder; not opened", image.file_name),
                ));
                // Its captions go with it, silently: the image-level issue covers them.
                self.img_id.push(image.id);
                self.img_file.push(f);
                self.img_rec.push(rec as u32);
                self.img_split.push(String::new());
                self.img_path.push(String::new());
                self.img_size.push(None);
                continue;
            }
            self.img_id.push(image.id);
            self.img_file.push(f);
            self.img_rec.push(rec as u32);
            self.img_split.push(split.to_string());
            self.img_path
                .push(format!("{images_dir}/{}", image.file_name));
            self.img_size.push(image.width.zip(image.height));
        }
        for (rec, ann) in file.annotations.into_iter().enumerate() {
            let (text, changed) = sources::normalise_whitespace(&ann.caption);
            if text.is_empty() {
                self.issues.push(Issue::new(
                    &name,
                    format!("annotations[{rec}]"),
                    "caption",
                    Some(ann.image_id),
                    Reason::EmptyCaption,
                    "caption is empty after whitespace normalisation",
                ));
                continue;
            }
            self.report.captions_whitespace_normalised += changed as u64;
            self.cap_id.push(ann.image_id);
            self.cap_file.push(f);
            self.cap_rec.push(rec as u32);
            self.cap_text.push(text);
        }
    }

    fn add_visdial(&mut self, vd: &crate::config::VisdialSource, file: VisdialFile) -> Result<()> {
        let version = file.version.as_string();
        let source = format!("{version}/{}", file.split);
        let f = self.file_index(
            vd.file.clone(),
            &format!("visdial-{source}"),
            file.data.dialogs.len() as u64,
        );
        let data = file.data;
        let standalone_split = vd
            .split
            .clone()
            .unwrap_or_else(|| format!("visdial-{}", file.split));
        if vd.images.is_some() && !is_split_name(&standalone_split) {
            return Err(IngestError::Config(format!(
                "ingest.visdial {:?}: split {standalone_split:?}: use letters, digits and '-'",
                vd.file
            )));
        }
        if vd.images.is_some() {
            self.report
                .splits
                .entry(standalone_split.clone())
                .or_default()
                .images_in += data.dialogs.len() as u64;
        }
        let pattern = vd
            .file_pattern
            .clone()
            .unwrap_or_else(|| format!("VisualDialog_{}2018_{{id}}.jpg", file.split));
        if vd.images.is_some() && !pattern.contains("{id}") {
            return Err(IngestError::Config(format!(
                "ingest.visdial {:?}: file_pattern {pattern:?} has no {{id}}",
                vd.file
            )));
        }
        'dialogs: for (rec, d) in data.dialogs.into_iter().enumerate() {
            let mut turns = Vec::with_capacity(d.dialog.len());
            if d.dialog.is_empty() {
                self.issues.push(Issue::new(
                    &vd.file,
                    format!("dialogs[{rec}]"),
                    "dialog",
                    Some(d.image_id),
                    Reason::DialogEmpty,
                    "dialogue has no rounds",
                ));
                continue;
            }
            for (round, r) in d.dialog.iter().enumerate() {
                let question = lookup(&data.questions, r.question);
                let answer = r.answer.map(|a| (a, lookup(&data.answers, a)));
                let bad = match (&question, &answer) {
                    (None, _) => Some(("question", r.question, data.questions.len())),
                    (_, Some((a, None))) => Some(("answer", *a, data.answers.len())),
                    _ => None,
                };
                if let Some((field, index, pool)) = bad {
                    self.issues.push(Issue::new(
                        &vd.file,
                        format!("dialogs[{rec}].dialog[{round}]"),
                        field,
                        Some(d.image_id),
                        Reason::DialogIndexOutOfRange,
                        format!("index {index} out of range: the {field} pool has {pool} entries"),
                    ));
                    continue 'dialogs;
                }
                turns.push(Turn {
                    question: sources::restore_question_mark(question.unwrap_or_default()),
                    answer: answer
                        .and_then(|(_, a)| a)
                        .map(|a| sources::normalise_whitespace(a).0),
                });
            }
            let dialogue = Dialogue {
                caption: sources::normalise_whitespace(&d.caption).0,
                turns,
                source: source.clone(),
            };
            match &vd.images {
                None => {
                    self.dlg_id.push(d.image_id);
                    self.dlg_file.push(f);
                    self.dlg_rec.push(rec as u32);
                    self.dialogues.push(dialogue);
                }
                Some(images_dir) => {
                    let name = pattern.replace("{id}", &format!("{:012}", d.image_id));
                    if dialogue.caption.is_empty() {
                        self.issues.push(Issue::new(
                            &vd.file,
                            format!("dialogs[{rec}]"),
                            "caption",
                            Some(d.image_id),
                            Reason::NoCaptions,
                            "standalone VisDial image with an empty caption",
                        ));
                        continue;
                    }
                    let candidate = Candidate {
                        image_id: d.image_id,
                        split: standalone_split.clone(),
                        listed_in: vd.file.clone(),
                        file_name: format!("{images_dir}/{name}"),
                        json_size: None,
                        captions: vec![dialogue.caption.clone()],
                        dialogue: Some(dialogue),
                    };
                    self.standalone.push((candidate, f, rec as u32));
                }
            }
        }
        Ok(())
    }

    fn join(mut self, require_dialog: bool) -> Result<Catalog> {
        let idx = |n: usize| (0..n as u32).collect::<Vec<u32>>();
        let images = df!(
            "image_id" => &self.img_id,
            "img_row" => idx(self.img_id.len()),
            "bad_path" => self.img_path.iter().map(String::is_empty).collect::<Vec<_>>(),
        )?;
        let captions = df!(
            "image_id" => &self.cap_id,
            "cap_row" => idx(self.cap_id.len()),
        )?;
        let dialogs = df!(
            "image_id" => &self.dlg_id,
            "dlg_row" => idx(self.dlg_id.len()),
            "dlg_file" => &self.dlg_file,
        )?;

        // Duplicate image ids: every record of such an id is quarantined.
        let counts = images
            .clone()
            .lazy()
            .group_by([col("image_id")])
            .agg([len().alias("n")]);
        let images = images
            .lazy()
            .join(
                counts,
                [col("image_id")],
                [col("image_id")],
                JoinArgs::new(JoinType::Left),
            )
            .collect()?;
        let dup = images.column("n")?.u32()?.clone();
        for (row, n) in images.column("img_row")?.u32()?.iter().zip(dup.iter()) {
            let (row, n) = (row.unwrap_or(0) as usize, n.unwrap_or(1));
            if n > 1 && !self.img_path[row].is_empty() {
                self.issues.push(Issue::new(
                    &self.files[self.img_file[row] as usize],
                    format!("images[{}]", self.img_rec[row]),
                    "id",
                    Some(self.img_id[row]),
                    Reason::DuplicateImageId,
                    format!(
                        "image id {} is listed {n} times across the captions files",
                        self.img_id[row]
                    ),
                ));
            }
        }
        let all_image_ids = images
            .clone()
            .lazy()
            .select([col("image_id")])
            .unique(None, UniqueKeepStrategy::First);
        let good_images = images
            .lazy()
            .filter(col("n").eq(lit(1u32)).and(col("bad_path").not()))
            .select([col("image_id"), col("img_row")]);

        // Captions whose image id no captions file lists.
        let orphans = captions
            .clone()
            .lazy()
            .join(
                all_image_ids.clone(),
                [col("image_id")],
                [col("image_id")],
                JoinArgs::new(JoinType::Anti),
            )
            .collect()?;
        for row in orphans.column("cap_row")?.u32()?.into_no_null_iter() {
            let row = row as usize;
            self.issues.push(Issue::new(
                &self.files[self.cap_file[row] as usize],
                format!("annotations[{}]", self.cap_rec[row]),
                "image_id",
                Some(self.cap_id[row]),
                Reason::CaptionForUnknownImage,
                format!("no image with id {} in any captions file", self.cap_id[row]),
            ));
        }
        let caps_per_image = captions
            .lazy()
            .group_by_stable([col("image_id")])
            .agg([col("cap_row").alias("cap_rows")]);

        // Dialogues: duplicates inside one file are all dropped; across files the earlier file wins.
        let per_file = dialogs
            .clone()
            .lazy()
            .group_by([col("image_id"), col("dlg_file")])
            .agg([len().alias("n_in_file")]);
        let dialogs = dialogs
            .lazy()
            .join(
                per_file,
                [col("image_id"), col("dlg_file")],
                [col("image_id"), col("dlg_file")],
                JoinArgs::new(JoinType::Left),
            )
            .collect()?;
        for (row, n) in dialogs
            .column("dlg_row")?
            .u32()?
            .into_no_null_iter()
            .zip(dialogs.column("n_in_file")?.u32()?.into_no_null_iter())
        {
            if n > 1 {
                let row = row as usize;
                self.issues.push(Issue::new(
                    &self.files[self.dlg_file[row] as usize],
                    format!("dialogs[{}]", self.dlg_rec[row]),
                    "image_id",
                    Some(self.dlg_id[row]),
                    Reason::DuplicateDialog,
                    format!(
                        "image id {} has {n} dialogues in this file",
                        self.dlg_id[row]
                    ),
                ));
            }
        }
        let unique_dialogs = dialogs
            .lazy()
            .filter(col("n_in_file").eq(lit(1u32)))
            .sort(["dlg_row"], Default::default());
        let first_dialog = unique_dialogs
            .clone()
            .group_by_stable([col("image_id")])
            .agg([col("dlg_row").first().alias("dlg_row")]);
        let superseded = unique_dialogs
            .clone()
            .join(
                first_dialog.clone(),
                [col("dlg_row")],
                [col("dlg_row")],
                JoinArgs::new(JoinType::Anti),
            )
            .join(
                first_dialog
                    .clone()
                    .select([col("image_id"), col("dlg_row").alias("winner")]),
                [col("image_id")],
                [col("image_id")],
                JoinArgs::new(JoinType::Left),
            )
            .collect()?;
        for (row, winner) in superseded
            .column("dlg_row")?
            .u32()?
            .into_no_null_iter()
            .zip(superseded.column("winner")?.u32()?.into_no_null_iter())
        {
            let (row, winner) = (row as usize, winner as usize);
            self.issues.push(Issue::new(
                &self.files[self.dlg_file[row] as usize],
                format!("dialogs[{}]", self.dlg_rec[row]),
                "image_id",
                Some(self.dlg_id[row]),
                Reason::DialogSuperseded,
                format!(
                    "image {} already has a dialogue from {} (listed earlier)",
                    self.dlg_id[row], self.files[self.dlg_file[winner] as usize]
                ),
            ));
        }

        // Images with captions, and their dialogue (if any).
        let joined = good_images
            .join(
                caps_per_image,
                [col("image_id")],
                [col("image_id")],
                JoinArgs::new(JoinType::Left),
            )
            .join(
                first_dialog.clone(),
                [col("image_id")],
                [col("image_id")],
                JoinArgs::new(JoinType::Left),
            )
            .collect()?;
        let with_captions = joined
            .clone()
            .lazy()
            .filter(col("cap_rows").is_not_null())
            .select([col("image_id")]);
        let unmatched_dialogs = first_dialog
            .join(
                with_captions,
                [col("image_id")],
                [col("image_id")],
                JoinArgs::new(JoinType::Anti),
            )
            .collect()?;
        for row in unmatched_dialogs
            .column("dlg_row")?
            .u32()?
            .into_no_null_iter()
        {
            let row = row as usize;
            self.issues.push(Issue::new(
                &self.files[self.dlg_file[row] as usize],
                format!("dialogs[{}]", self.dlg_rec[row]),
                "image_id",
                Some(self.dlg_id[row]),
                Reason::DialogWithoutCaptions,
                format!(
                    "no usable COCO image with captions has id {}",
                    self.dlg_id[row]
                ),
            ));
        }

        let mut candidates = Vec::with_capacity(joined.height());
        let img_rows = joined.column("img_row")?.u32()?;
        let cap_rows = joined.column("cap_rows")?.list()?;
        let dlg_rows = joined.column("dlg_row")?.u32()?;
        let mut dialogues: Vec<Option<Dialogue>> = self.dialogues.drain(..).map(Some).collect();
        let mut cap_text: Vec<String> = std::mem::take(&mut self.cap_text);
        for (i, (img_row, dlg)) in img_rows
            .into_no_null_iter()
            .zip(dlg_rows.iter())
            .enumerate()
        {
            let caps = cap_rows.get_as_series(i);
            let row = img_row as usize;
            let file = &self.files[self.img_file[row] as usize];
            let Some(caps) = caps else {
                self.issues.push(Issue::new(
                    file,
                    format!("images[{}]", self.img_rec[row]),
                    "id",
                    Some(self.img_id[row]),
                    Reason::NoCaptions,
                    "image has no caption in annotations[]",
                ));
                continue;
            };
            let dialogue = dlg.and_then(|d| dialogues[d as usize].take());
            if dialogue.is_none() && require_dialog {
                self.issues.push(Issue::new(
                    file,
                    format!("images[{}]", self.img_rec[row]),
                    "id",
                    Some(self.img_id[row]),
                    Reason::CaptionsWithoutDialog,
                    "image has captions but no VisDial dialogue",
                ));
                continue;
            }
            let captions = caps
                .u32()?
                .into_no_null_iter()
                .map(|c| std::mem::take(&mut cap_text[c as usize]))
                .collect();
            candidates.push(Candidate {
                image_id: self.img_id[row],
                split: self.img_split[row].clone(),
                listed_in: file.clone(),
                file_name: std::mem::take(&mut self.img_path[row]),
                json_size: self.img_size[row],
                captions,
                dialogue,
            });
        }

        // Standalone (Flickr) dialogues: duplicates within a file are dropped.
        let mut seen: BTreeMap<(u32, i64), usize> = BTreeMap::new();
        for (c, f, _) in &self.standalone {
            *seen.entry((*f, c.image_id)).or_default() += 1;
        }
        for (c, f, rec) in self.standalone.drain(..) {
            let n = seen[&(f, c.image_id)];
            if n > 1 {
                self.issues.push(Issue::new(
                    &self.files[f as usize],
                    format!("dialogs[{rec}]"),
                    "image_id",
                    Some(c.image_id),
                    Reason::DuplicateImageId,
                    format!("image id {} has {n} dialogues in this file", c.image_id),
                ));
            } else {
                candidates.push(c);
            }
        }
        candidates.sort_by(|a, b| (&a.split, a.image_id).cmp(&(&b.split, b.image_id)));
        Ok(Catalog {
            candidates,
            listed: self.listed,
            issues: self.issues,
            report: self.report,
        })
    }
}

fn lookup(pool: &[String], index: i64) -> Option<&str> {
    usize::try_from(index)
        .ok()
        .and_then(|i| pool.get(i))
        .map(String::as_str)
}
