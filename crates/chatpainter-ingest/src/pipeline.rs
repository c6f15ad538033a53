//! The ingest stage: catalog → (this shard's) images decoded in parallel → Parquet tables, and
//! the merge step that joins shards into one dataset after checking nothing is missing or doubled.

use crate::catalog::{self, Candidate};
use crate::config::IngestConfig;
use crate::error::{IngestError, Result};
use crate::images;
use crate::objects;
use chatpainter_artifacts::{Manifest, OutputFile, Progress, write_atomic};
use chatpainter_formats::ingested::{
    self as tables, ISSUES_FILE, ImageTableWriter, IngestSummary, QUALITY_FILE, RECORDS_FILE,
    Record, Shard,
};
use chatpainter_formats::objects::{OBJECTS_FILE, Objects, read_objects, write_objects};
use chatpainter_formats::quality::{Action, Issue, QualityReport, Reason};
use rayon::prelude::*;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

pub struct IngestOutput {
    pub outputs: Vec<OutputFile>,
    pub report: QualityReport,
    pub summary: IngestSummary,
}

/// Ingests (one shard of) the dataset into `out`.
pub fn run(
    config: &IngestConfig,
    data_root: &Path,
    out: &Path,
    shard: Shard,
    progress: &dyn Progress,
) -> Result<IngestOutput> {
    config.validate().map_err(IngestError::Config)?;
    let catalog = catalog::build(config, data_root)?;
    // Before any image is decoded, so that a bad instances file fails the run early.
    let instances = objects::read(config, data_root, shard)?;
    let listed = catalog.listed;
    let candidates_total = catalog.candidates.len() as u64;
    let candidates: Vec<Candidate> = catalog
        .candidates
        .into_iter()
        .filter(|c| shard.owns(c.image_id))
        .collect();
    // Issues without an image id belong to shard 0, so that each is reported exactly once.
    let mut issues: Vec<Issue> = catalog
        .issues
        .into_iter()
        .filter(|i| i.image_id.map_or(shard.index == 0, |id| shard.owns(id)))
        .collect();
    fail_if_strict(config, &issues)?;
    let mut report = catalog.report;

    let mut summary = IngestSummary {
        shard: (shard.count > 1).then_some(shard),
        candidates_total,
        candidates: candidates.len() as u64,
        load_sizes: config.load_sizes.clone(),
        ..Default::default()
    };
    let mut records: Vec<Record> = Vec::with_capacity(candidates.len());
    let mut outputs = Vec::new();
    let part = format!("part-{:05}-of-{:05}.parquet", shard.index, shard.count);
    progress.start("decoding images", candidates.len() as u64);
    let mut by_split: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
    for c in &candidates {
        by_split.entry(c.split.as_str()).or_default().push(c);
    }
    for (split, list) in by_split {
        let mut writers = Vec::new();
        for &size in &config.load_sizes {
            let rel = format!("images/{size}/{split}/{part}");
            writers.push((
                rel.clone(),
                ImageTableWriter::create(&out.join(&rel), size)?,
            ));
            summary
                .image_tables
                .entry(size)
                .or_default()
                .entry(split.to_string())
                .or_default()
                .push(rel);
        }
        for chunk in list.chunks(config.row_group_size) {
            let decoded: Vec<_> = chunk
                .par_iter()
                .map(|c| images::load(&data_root.join(&c.file_name), &config.load_sizes))
                .collect();
            let mut ids = Vec::with_capacity(chunk.len());
            let mut kept = Vec::with_capacity(chunk.len());
            for (c, result) in chunk.iter().zip(decoded) {
                match result {
                    Ok(d) => {
                        note_conversions(c, &d, &mut issues);
                        ids.push(c.image_id);
                        records.push(Record {
                            image_id: c.image_id,
                            split: c.split.clone(),
                            file_name: c.file_name.clone(),
                            width: d.width as i32,
                            height: d.height as i32,
                            captions: c.captions.clone(),
                            dialogue: c.dialogue.clone(),
                        });
                        kept.push(d.png);
                    }
                    Err((reason, detail)) => {
                        summary.images_dropped += 1;
                        issues.push(Issue::new(
                            &c.listed_in,
                            &c.file_name,
                            "file_name",
                            Some(c.image_id),
                            reason,
                            detail,
                        ));
                    }
                }
            }
            for (k, (_, writer)) in writers.iter_mut().enumerate() {
                let pngs: Vec<&[u8]> = kept.iter().map(|p| p[k].as_slice()).collect();
                writer.write_group(&ids, &pngs)?;
            }
            progress.advance(chunk.len() as u64);
        }
        for (rel, writer) in writers {
            let rows = writer.finish()?;
            outputs.push(OutputFile::describe(out, &rel, Some(rows))?);
        }
    }
    progress.finish();
    let objects = instances.map(|instances| {
        let joined = objects::join(instances, &records, &listed);
        // `read` kept only this shard's images and annotations, so these are all ours.
        issues.extend(joined.issues);
        report.files.extend(joined.files);
        joined.objects
    });
    fail_if_strict(config, &issues)?;
    summary.records = records.len() as u64;

    for r in &records {
        report
            .splits
            .entry(r.split.clone())
            .or_default()
            .records_out += 1;
    }
    for split in report.splits.values_mut() {
        split.dropped = split.images_in.saturating_sub(split.records_out);
    }
    count_file_use(&mut report, &records, &candidates);
    issues.sort_by(|a, b| (&a.file, a.image_id, &a.record).cmp(&(&b.file, b.image_id, &b.record)));
    report.count_issues(&issues);
    outputs.extend(write_tables(
        out,
        &records,
        &issues,
        &report,
        objects.as_ref(),
    )?);
    Ok(IngestOutput {
        outputs,
        report,
        summary,
    })
}

fn note_conversions(c: &Candidate, d: &images::Decoded, issues: &mut Vec<Issue>) {
    for &reason in &d.conversions {
        issues.push(Issue::new(
            &c.listed_in,
            &c.file_name,
            "file_name",
            Some(c.image_id),
            reason,
            "converted to 8-bit RGB",
        ));
    }
    if let Some((w, h)) = c.json_size
        && (w, h) != (d.width as i64, d.height as i64)
    {
        issues.push(Issue::new(
            &c.listed_in,
            &c.file_name,
            "width/height",
            Some(c.image_id),
            Reason::SizeMismatch,
            format!(
                "JSON says {w}x{h}, the image is {}x{}; kept the image's size",
                d.width, d.height
            ),
        ));
    }
}

fn count_file_use(report: &mut QualityReport, records: &[Record], candidates: &[Candidate]) {
    let kept: HashSet<(&str, i64)> = records
        .iter()
        .map(|r| (r.split.as_str(), r.image_id))
        .collect();
    for c in candidates
        .iter()
        .filter(|c| kept.contains(&(c.split.as_str(), c.image_id)))
    {
        if let Some(f) = report.files.get_mut(&c.listed_in) {
            // A COCO record is its image entry plus its captions.
            f.records_used += if f.kind == "coco-captions" {
                1 + c.captions.len() as u64
            } else {
                1
            };
        }
        if let Some(d) = &c.dialogue {
            let file = report.files.iter_mut().find(|(name, f)| {
                f.kind == format!("visdial-{}", d.source) && **name != c.listed_in
            });
            if let Some((_, f)) = file {
                f.records_used += 1;
            }
        }
    }
}

fn fail_if_strict(config: &IngestConfig, issues: &[Issue]) -> Result<()> {
    let dropped: Vec<&Issue> = issues
        .iter()
        .filter(|i| i.reason.action() != Action::Converted)
        .collect();
    if config.strict && !dropped.is_empty() {
        return Err(IngestError::Strict {
            count: dropped.len(),
            first: dropped[0].to_string(),
        });
    }
    Ok(())
}

fn write_tables(
    out: &Path,
    records: &[Record],
    issues: &[Issue],
    report: &QualityReport,
    objects: Option<&Objects>,
) -> Result<Vec<OutputFile>> {
    tables::write_records(&out.join(RECORDS_FILE), records)?;
    tables::write_issues(&out.join(ISSUES_FILE), issues)?;
    let json = serde_json::to_vec_pretty(report)
        .map_err(|e| IngestError::contract(out.join(QUALITY_FILE), e.to_string()))?;
    write_atomic(out.join(QUALITY_FILE), &json)?;
    let mut outputs = vec![
        OutputFile::describe(out, RECORDS_FILE, Some(records.len() as u64))?,
        OutputFile::describe(out, ISSUES_FILE, Some(issues.len() as u64))?,
        OutputFile::describe(out, QUALITY_FILE, None)?,
    ];
    if let Some(objects) = objects {
        write_objects(&out.join(OBJECTS_FILE), objects)?;
        outputs.push(OutputFile::describe(
            out,
            OBJECTS_FILE,
            Some(objects.boxes.len() as u64),
        )?);
    }
    Ok(outputs)
}

/// Joins `count` finished shards under `stage_dir/shards/` into one dataset in `stage_dir`.
///
/// Checks: every shard finished (has a manifest) with the same config and inputs, every shard's
/// outputs still hash as recorded, every record sits in the shard its id hashes to, no
/// (split, image id) appears twice, and the shards' candidates add up to the dataset's total.
/// Image tables are not copied: the merged manifest lists the shards' files.
pub fn merge(stage_dir: &Path, count: u32) -> Result<IngestOutput> {
    let mut merged_records = Vec::new();
    let mut merged_issues = Vec::new();
    let mut report = QualityReport::default();
    let mut summary = IngestSummary::default();
    let mut first_key = None;
    let mut image_outputs = Vec::new();
    let mut seen: HashSet<(String, i64)> = HashSet::new();
    // Shard 0 decides whether there are objects; every other shard must agree.
    let mut merged_objects: Option<Objects> = None;
    for index in 0..count {
        let shard = Shard { index, count };
        let dir: PathBuf = stage_dir.join(shard.dir_name());
        let manifest = Manifest::load_if_present(&dir)?.ok_or_else(|| {
            IngestError::contract(&dir, format!("shard {index}/{count} has not finished (no manifest.json): run ingest --shard {index}/{count}"))
        })?;
        manifest.verify_hashes(&dir)?;
        let key = (
            manifest.key.config_digest.clone(),
            manifest.key.inputs_digest.clone(),
        );
        match &first_key {
            None => first_key = Some(key),
            Some(k) if *k != key => {
                return Err(IngestError::contract(
                    &dir,
                    "this shard was ingested with another config or other input files than shard 0",
                ));
            }
            Some(_) => {}
        }
        let s: IngestSummary = serde_json::from_value(manifest.summary.clone())
            .map_err(|e| IngestError::contract(Manifest::path_in(&dir), format!("summary: {e}")))?;
        if s.shard != Some(shard) {
            return Err(IngestError::contract(
                &dir,
                format!("manifest says shard {:?}", s.shard),
            ));
        }
        if index == 0 {
            summary.candidates_total = s.candidates_total;
            summary.load_sizes = s.load_sizes.clone();
        } else if s.candidates_total != summary.candidates_total {
            return Err(IngestError::contract(
                &dir,
                format!(
                    "shard sees {} candidate images, shard 0 saw {}",
                    s.candidates_total, summary.candidates_total
                ),
            ));
        }
        if s.records + s.images_dropped != s.candidates {
            return Err(IngestError::contract(
                &dir,
                format!(
                    "{} records + {} dropped images != {} candidates",
                    s.records, s.images_dropped, s.candidates
                ),
            ));
        }
        summary.candidates += s.candidates;
        summary.records += s.records;
        summary.images_dropped += s.images_dropped;
        let records = tables::read_records(&dir.join(RECORDS_FILE))?;
        if records.len() as u64 != s.records {
            return Err(IngestError::contract(
                dir.join(RECORDS_FILE),
                "row count differs from the manifest",
            ));
        }
        for r in &records {
            if !shard.owns(r.image_id) {
                return Err(IngestError::contract(
                    dir.join(RECORDS_FILE),
                    format!("image {} does not belong to shard {index}", r.image_id),
                ));
            }
            if !seen.insert((r.split.clone(), r.image_id)) {
                return Err(IngestError::contract(
                    dir.join(RECORDS_FILE),
                    format!("image {} ({}) appears in two shards", r.image_id, r.split),
                ));
            }
        }
        for (size, splits) in &s.image_tables {
            for (split, paths) in splits {
                for p in paths {
                    let rel = format!("{}/{p}", shard.dir_name());
                    let out = manifest
                        .outputs
                        .iter()
                        .find(|o| o.path == *p)
                        .ok_or_else(|| {
                            IngestError::contract(&dir, format!("{p} is not in the shard manifest"))
                        })?;
                    if out.rows != Some(records_in(&records, split)) {
                        return Err(IngestError::contract(
                            dir.join(p),
                            "image rows differ from the split's records",
                        ));
                    }
                    image_outputs.push(OutputFile {
                        path: rel.clone(),
                        ..out.clone()
                    });
                    summary
                        .image_tables
                        .entry(*size)
                        .or_default()
                        .entry(split.clone())
                        .or_default()
                        .push(rel);
                }
            }
        }
        let has_objects = manifest.outputs.iter().any(|o| o.path == OBJECTS_FILE);
        if index == 0 && has_objects {
            merged_objects = Some(Objects::default());
        }
        match (&mut merged_objects, has_objects) {
            (Some(merged), true) => {
                let path = dir.join(OBJECTS_FILE);
                let objects = read_objects(&path)?;
                if index == 0 {
                    merged.categories = objects.categories;
                } else if objects.categories != merged.categories {
                    return Err(IngestError::contract(
                        &path,
                        "the category list differs from shard 0's",
                    ));
                }
                let mine: HashSet<(&str, i64)> = records
                    .iter()
                    .map(|r| (r.split.as_str(), r.image_id))
                    .collect();
                if let Some(b) = objects
                    .boxes
                    .iter()
                    .find(|b| !mine.contains(&(b.split.as_str(), b.image_id)))
                {
                    return Err(IngestError::contract(
                        &path,
                        format!(
                            "image {} ({}) has boxes but no record in this shard",
                            b.image_id, b.split
                        ),
                    ));
                }
                merged.boxes.extend(objects.boxes);
            }
            (None, false) => {}
            _ => {
                return Err(IngestError::contract(
                    &dir,
                    if has_objects {
                        format!("this shard has {OBJECTS_FILE}, shard 0 has none")
                    } else {
                        format!("this shard has no {OBJECTS_FILE}, shard 0 has one")
                    },
                ));
            }
        }
        merged_records.extend(records);
        merged_issues.extend(tables::read_issues(&dir.join(ISSUES_FILE))?);
        let shard_report: QualityReport = serde_json::from_slice(
            &std::fs::read(dir.join(QUALITY_FILE))
                .map_err(|e| IngestError::io(dir.join(QUALITY_FILE), e))?,
        )
        .map_err(|e| IngestError::contract(dir.join(QUALITY_FILE), e.to_string()))?;
        report.merge(&shard_report);
    }
    if summary.candidates != summary.candidates_total {
        return Err(IngestError::contract(
            stage_dir,
            format!(
                "shards hold {} candidate images in all, the dataset has {}",
                summary.candidates, summary.candidates_total
            ),
        ));
    }
    merged_records.sort_by(|a, b| (&a.split, a.image_id).cmp(&(&b.split, b.image_id)));
    if let Some(objects) = &mut merged_objects {
        // Stable: an image's boxes come from one shard, in annotation order.
        objects
            .boxes
            .sort_by(|a, b| (a.image_id, &a.split).cmp(&(b.image_id, &b.split)));
    }
    let mut outputs = image_outputs;
    outputs.extend(write_tables(
        stage_dir,
        &merged_records,
        &merged_issues,
        &report,
        merged_objects.as_ref(),
    )?);
    Ok(IngestOutput {
        outputs,
        report,
        summary,
    })
}

/// Records of one split.
fn records_in(records: &[Record], split: &str) -> u64 {
    records.iter().filter(|r| r.split == split).count() as u64
}
