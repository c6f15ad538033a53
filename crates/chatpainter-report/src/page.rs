//! Assembles the page, one section per part of the run. Each section shows what exists and says
//! "not run" for what does not; read failures are collected as warnings naming the file.

use crate::html::{bytes, duration, esc, num, png_img, table, utc};
use crate::read::{self, MetricSeries};
use crate::{Inputs, Report, StageInfo, StageState, plot};
use chatpainter_artifacts::{Manifest, Stage};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// Images larger than this are listed, not embedded: one stray huge PNG should not make a page
/// that a browser struggles to open.
const MAX_IMAGE_BYTES: u64 = 16 << 20;

/// Training stages whose folders follow `chatpainter-train`'s layout, with the columns of their
/// sample sheets.
const TRAINING: [(Stage, &str, &str); 2] = [
    (Stage::Stage1, "Stage-I (64×64)", "real | generated"),
    (
        Stage::Stage2,
        "Stage-II (256×256)",
        "real | Stage-I 64 upscaled | Stage-II 256",
    ),
];

/// The charts of a training stage: (title, metrics fields). Fields a run does not log are left
/// out, a chart with none is not drawn.
const CHARTS: [(&str, &[&str]); 5] = [
    (
        "Discriminator losses",
        &[
            "d_loss",
            "d_real",
            "d_wrong",
            "d_fake",
            "d_uncond_real",
            "d_uncond_fake",
        ],
    ),
    ("Generator losses", &["g_loss", "g_adv"]),
    ("KL (conditioning augmentation)", &["kl"]),
    ("Learning rates", &["lr_g", "lr_d"]),
    ("Throughput (images/s)", &["images_per_s"]),
];

/// Column order of the last-step table: `StepMetrics`' declaration order.
const FIELD_ORDER: [&str; 15] = [
    "step",
    "epoch",
    "d_loss",
    "d_real",
    "d_wrong",
    "d_fake",
    "d_uncond_real",
    "d_uncond_fake",
    "g_loss",
    "g_adv",
    "kl",
    "lr_g",
    "lr_d",
    "step_ms",
    "images_per_s",
];

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1280px;padding:0 24px 48px;color:#222}
h1{margin:24px 0 4px}h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
nav a{margin-right:14px}.meta{color:#666}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}.n{font-variant-numeric:tabular-nums}
pre{background:#f7f7f7;border:1px solid #e2e2e2;padding:8px;overflow:auto;max-height:480px}
.absent{color:#888;font-style:italic}.warn{background:#fff4e0;border:1px solid #f0c070;padding:8px 12px}
.unavailable{color:#a15c00}.charts{display:flex;flex-wrap:wrap;gap:12px}
.legend{font-size:12px;margin:-4px 0 0 70px}.legend span{margin-right:12px;white-space:nowrap}
.legend i{display:inline-block;width:16px;height:3px;margin:0 4px 3px 0;vertical-align:middle}
.cols{display:flex;gap:24px;flex-wrap:wrap}.cols>div{flex:1;min-width:320px}
figure{margin:8px 0}figcaption{color:#555;font-size:13px}
img{image-rendering:pixelated;max-width:100%;height:auto;border:1px solid #ccc}
code{background:#f4f4f4;padding:0 3px}
";

/// Collects the page and the warnings while the sections are built.
struct Page<'a> {
    inputs: &'a Inputs<'a>,
    body: String,
    warnings: Vec<String>,
}

pub fn build(inputs: &Inputs<'_>) -> Report {
    let stages = crate::stages(inputs.run_root);
    let mut page = Page {
        inputs,
        body: String::new(),
        warnings: Vec::new(),
    };
    page.stage_table(&stages);
    page.eval(&stages);
    page.training(&stages);
    page.samples(&stages);
    page.per_turn(&stages);
    page.quality(&stages);
    page.config();

    let title = inputs
        .config
        .title
        .clone()
        .unwrap_or_else(|| format!("ChatPainter run `{}`", inputs.run_name));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut html = String::with_capacity(page.body.len() + 4096);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{t}</title><style>{STYLE}</style></head><body>\n\
         <h1>{t}</h1><p class=\"meta\">Run directory <code>{run}</code> · built {when} by {tool}</p>\n\
         <nav><a href=\"#stages\">Stages</a><a href=\"#metrics\">Metrics</a>\
         <a href=\"#training\">Training curves</a><a href=\"#samples\">Sample sheets</a>\
         <a href=\"#per-turn\">Per-turn strips</a><a href=\"#quality\">Ingest quality</a>\
         <a href=\"#config\">Pipeline config</a></nav>\n",
        t = esc(&title),
        run = esc(&inputs.run_root.display().to_string()),
        when = utc(now),
        tool = esc(chatpainter_artifacts::TOOL_VERSION),
    );
    if !page.warnings.is_empty() {
        html.push_str("<div class=\"warn\"><strong>Could not show everything:</strong><ul>");
        for w in &page.warnings {
            let _ = write!(html, "<li>{}</li>", esc(w));
        }
        html.push_str("</ul></div>\n");
    }
    html.push_str(&page.body);
    html.push_str("\n</body></html>\n");

    let (shown, not_run) = stages.iter().fold((vec![], vec![]), |(mut s, mut n), st| {
        if st.exists() {
            s.push(st.stage);
        } else {
            n.push(st.stage);
        }
        (s, n)
    });
    Report {
        html,
        warnings: page.warnings,
        shown,
        not_run,
    }
}

fn find(stages: &[StageInfo], stage: Stage) -> Option<&StageInfo> {
    stages.iter().find(|s| s.stage == stage)
}

fn not_run(stage: Stage) -> String {
    format!("<p class=\"absent\">{}: not run</p>\n", esc(stage.name()))
}

impl Page<'_> {
    fn warn(&mut self, message: String) {
        tracing::warn!("report: {message}");
        self.warnings.push(message);
    }

    /// A file the stage has not written: expected of a stage still at work, a warning once it
    /// claims to be finished.
    fn missing(&mut self, path: &Path, stage: &StageInfo) {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if matches!(stage.state, StageState::Finished(_)) {
            self.warn(format!("{}: not found", path.display()));
        }
        let _ = writeln!(
            self.body,
            "<p class=\"absent\">{}: no {} yet</p>",
            esc(stage.stage.name()),
            esc(&name)
        );
    }

    fn h2(&mut self, id: &str, title: &str) {
        let _ = write!(self.body, "\n<h2 id=\"{id}\">{}</h2>\n", esc(title));
    }

    /// A PNG as a figure, or a warning naming the file.
    fn figure(&mut self, path: &Path, caption_html: &str) {
        let shown = path.display().to_string();
        let size = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) => return self.warn(format!("{shown}: {e}")),
        };
        if size > MAX_IMAGE_BYTES {
            return self.warn(format!(
                "{shown}: {} is over the {} embedding limit; open it beside the report",
                bytes(size),
                bytes(MAX_IMAGE_BYTES)
            ));
        }
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) => return self.warn(format!("{shown}: {e}")),
        };
        let Some((w, h)) = read::png_size(&data) else {
            return self.warn(format!("{shown}: not a PNG file"));
        };
        let relative = path
            .strip_prefix(self.inputs.run_root)
            .unwrap_or(path)
            .display()
            .to_string();
        // Sheets of 64-pixel tiles are small on a modern screen: show them twice as large,
        // without smoothing (`image-rendering: pixelated`).
        let scale = if w < 400 { 2 } else { 1 };
        let _ = writeln!(
            self.body,
            "<figure>{}<figcaption>{caption_html} <span class=\"meta\">({w}×{h})</span></figcaption></figure>",
            png_img(&data, &relative, w * scale)
        );
    }

    fn stage_table(&mut self, stages: &[StageInfo]) {
        self.h2("stages", "Stages");
        // Content digests of the stages' outputs as they are now, to tell when a stage was built
        // from an upstream whose outputs have since changed.
        let current: BTreeMap<&str, String> = stages
            .iter()
            .filter(|s| matches!(s.state, StageState::Finished(_)))
            .filter_map(|s| Some((s.stage.name(), Manifest::outputs_digest_of(&s.dir).ok()?)))
            .collect();
        let mut rows = Vec::new();
        let mut details = String::new();
        for s in stages {
            let started = s.started_unix.map(utc).unwrap_or_default();
            let row = match &s.state {
                StageState::NotRun => vec![
                    esc(s.stage.name()),
                    "<span class=\"absent\">not run</span>".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ],
                StageState::Running { pid } => vec![
                    esc(s.stage.name()),
                    format!("running (pid {pid})"),
                    esc(&started),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ],
                StageState::Unfinished => vec![
                    esc(s.stage.name()),
                    "unfinished (no manifest)".into(),
                    esc(&started),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ],
                StageState::Invalid(why) => {
                    self.warn(format!("{}: manifest unreadable: {why}", s.stage));
                    vec![
                        esc(s.stage.name()),
                        format!(
                            "<span class=\"unavailable\">invalid manifest: {}</span>",
                            esc(why)
                        ),
                        esc(&started),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                    ]
                }
                StageState::Finished(m) => {
                    let stale: Vec<&str> = m
                        .key
                        .upstream
                        .iter()
                        .filter(|(up, digest)| {
                            current.get(up.as_str()).is_some_and(|now| now != *digest)
                        })
                        .map(|(up, _)| up.as_str())
                        .collect();
                    let state = if stale.is_empty() {
                        "finished".to_string()
                    } else {
                        format!(
                            "finished; <span class=\"unavailable\">built from an older {}</span>",
                            esc(&stale.join(", "))
                        )
                    };
                    let took = s
                        .started_unix
                        .filter(|t| *t <= m.finished_unix)
                        .map(|t| duration(m.finished_unix - t))
                        .unwrap_or_default();
                    let total: u64 = m.outputs.iter().map(|o| o.bytes).sum();
                    self.manifest_details(s.stage.name(), m, &mut details);
                    vec![
                        esc(s.stage.name()),
                        state,
                        esc(&started),
                        esc(&utc(m.finished_unix)),
                        esc(&took),
                        format!("{}", m.outputs.len()),
                        esc(&bytes(total)),
                        m.seed.map(|s| s.to_string()).unwrap_or_default(),
                    ]
                }
            };
            rows.push(row);
        }
        self.body.push_str(&table(
            &[
                "stage", "state", "started", "finished", "took", "outputs", "size", "seed",
            ],
            &rows,
        ));
        self.body.push_str(
            "<p class=\"meta\">“took” is from the stage's last start (its <code>config.toml</code>) \
             to its manifest; a resumed stage counts its last session only.</p>\n",
        );
        self.body.push_str(&details);
    }

    fn manifest_details(&mut self, name: &str, m: &Manifest, out: &mut String) {
        let rows: Vec<Vec<String>> = m
            .outputs
            .iter()
            .map(|o| {
                let extent = match (&o.rows, &o.shape) {
                    (Some(r), _) => format!("{r} rows"),
                    (None, Some(shape)) => format!("{shape:?}"),
                    (None, None) => String::new(),
                };
                vec![
                    format!("<code>{}</code>", esc(&o.path)),
                    format!("<span class=\"n\">{}</span>", esc(&bytes(o.bytes))),
                    esc(&extent),
                    format!(
                        "<code>{}</code>",
                        esc(o.sha256.get(..12).unwrap_or(&o.sha256))
                    ),
                ]
            })
            .collect();
        let summary = serde_json::to_string_pretty(&m.summary).unwrap_or_default();
        let _ = writeln!(
            out,
            "<details><summary><strong>{n}</strong>: {k} output(s), {tool}, config digest <code>{cd}</code></summary>{t}\
             <pre>{s}</pre></details>",
            n = esc(name),
            k = m.outputs.len(),
            tool = esc(&m.tool_version),
            cd = esc(m
                .key
                .config_digest
                .get(..12)
                .unwrap_or(&m.key.config_digest)),
            t = table(&["file", "bytes", "rows / shape", "sha256"], &rows),
            s = esc(&summary),
        );
    }

    fn eval(&mut self, stages: &[StageInfo]) {
        self.h2("metrics", "Evaluation metrics");
        let Some(stage) = find(stages, Stage::Eval).filter(|s| s.exists()) else {
            self.body.push_str(&not_run(Stage::Eval));
            return;
        };
        let path = stage.dir.join("metrics.json");
        if !path.exists() {
            self.missing(&path, stage);
        } else {
            match read::read_eval_metrics(&path) {
                Err(e) => self.warn(e.to_string()),
                Ok(m) => {
                    let unavailable = |reason: &Option<String>| {
                        format!(
                            "<span class=\"unavailable\">unavailable: {}</span>",
                            esc(reason.as_deref().unwrap_or("no reason given"))
                        )
                    };
                    let is = &m.inception_score;
                    let is_cell = match (is.available, is.mean) {
                        (true, Some(mean)) => format!(
                            "{} ± {}",
                            esc(&num(mean)),
                            esc(&is.std.map(num).unwrap_or_else(|| "?".into()))
                        ),
                        (true, None) => unavailable(&Some("marked available but no mean".into())),
                        (false, _) => unavailable(&is.reason),
                    };
                    let fid = &m.fid;
                    let fid_cell = match (fid.available, fid.value) {
                        (true, Some(v)) => esc(&num(v)),
                        (true, None) => unavailable(&Some("marked available but no value".into())),
                        (false, _) => unavailable(&fid.reason),
                    };
                    let rows = vec![
                        vec![
                            "Inception Score (mean ± std over splits)".into(),
                            is_cell,
                            String::new(),
                        ],
                        vec![
                            "FID".into(),
                            fid_cell,
                            fid.reference
                                .as_deref()
                                .map(|r| format!("reference: {}", esc(r)))
                                .unwrap_or_default(),
                        ],
                    ];
                    self.body
                        .push_str(&table(&["metric", "value", "notes"], &rows));
                    let protocol: Vec<Vec<String>> = m
                        .protocol
                        .rows()
                        .into_iter()
                        .map(|(k, v)| vec![format!("<code>{k}</code>"), esc(&v)])
                        .collect();
                    self.body.push_str("<h3>Protocol</h3>");
                    self.body.push_str(&table(&["field", "value"], &protocol));
                    if let Some(scenes) = &m.scenes {
                        self.scenes(scenes);
                    }
                }
            }
        }
        let sheet = stage.dir.join("sheet.png");
        if sheet.exists() {
            self.body.push_str("<h3>Generated test images</h3>");
            self.figure(&sheet, "<code>eval/sheet.png</code>");
        }
    }

    /// The scene scorer's table and the per-turn curve.
    fn scenes(&mut self, scenes: &chatpainter_formats::metrics::SceneMetrics) {
        let _ = write!(
            self.body,
            "<h3 id=\"scene-scores\">Scene attributes against the ground truth</h3>\n<p>{} generated images scored by \
             <code>{}</code> against <code>{}</code>. Chance: a guess drawn from the ground \
             truth's own distribution; majority: always the most frequent value.</p>",
            scenes.images.images,
            esc(&scenes.images.scorer),
            esc(&scenes.attributes_file)
        );
        let pct = |v: f64| format!("{:.1} %", 100.0 * v);
        let rows: Vec<Vec<String>> = scenes
            .images
            .attributes
            .iter()
            .map(|a| {
                vec![
                    esc(&a.name),
                    esc(a.visibility.name()),
                    format!("{} ({}/{})", pct(a.accuracy), a.correct, a.total),
                    pct(a.chance),
                    pct(a.majority),
                ]
            })
            .collect();
        self.body.push_str(&table(
            &["attribute", "stated by", "accuracy", "chance", "majority"],
            &rows,
        ));
        if !scenes.curve.is_empty() {
            let series = attribute_series(scenes.curve.iter().map(|p| (p.step as f64, &p.scores)));
            let _ = write!(
                self.body,
                "<h3 id=\"learning-curve\">Accuracy over training</h3>\n<p>The same {} test \
                 conditions and noise generated by every kept checkpoint: still rising means \
                 train longer, flat means stuck.</p>",
                scenes.curve[0].scores.images
            );
            self.chart(
                "accuracy (%) vs training step",
                "training step",
                "chart learning-curve",
                &series,
            );
        }
        if scenes.per_turn.is_empty() {
            return;
        }
        let series = attribute_series(
            scenes
                .per_turn
                .iter()
                .enumerate()
                .map(|(t, s)| ((t + 1) as f64, s)),
        );
        let _ = write!(
            self.body,
            "<h3 id=\"per-turn-curve\">Accuracy after each turn</h3>\n<p>The per-turn strips ({} \
             dialogues): each frame sees the caption and the first <i>t</i> turns, with the same \
             noise.</p>",
            scenes.per_turn[0].images
        );
        self.chart(
            "accuracy (%) vs turns seen",
            "turns seen",
            "chart per-turn-curve",
            &series,
        );
    }

    /// One line chart with its legend, in a `<div class="{class}">`; a drawing error is a warning.
    fn chart(
        &mut self,
        title: &str,
        x_label: &str,
        class: &str,
        series: &[(&str, Vec<(f64, f64)>)],
    ) {
        match plot::line_chart(title, x_label, series) {
            Ok(svg) => {
                let _ = write!(
                    self.body,
                    "<div class=\"{class}\">{svg}<div class=\"legend\">"
                );
                for (i, (label, _)) in series.iter().enumerate() {
                    let _ = write!(
                        self.body,
                        "<span><i style=\"background:{}\"></i>{}</span>",
                        plot::css_color(i),
                        esc(label)
                    );
                }
                self.body.push_str("</div></div>\n");
            }
            Err(e) => self.warn(format!("chart {title}: {e}")),
        }
    }

    fn training(&mut self, stages: &[StageInfo]) {
        self.h2("training", "Training curves");
        for (name, title, _) in TRAINING {
            let _ = writeln!(self.body, "<h3>{}</h3>", esc(title));
            let Some(stage) = find(stages, name).filter(|s| s.exists()) else {
                self.body.push_str(&not_run(name));
                continue;
            };
            let path = stage.dir.join("metrics.jsonl");
            if !path.exists() {
                self.missing(&path, stage);
                continue;
            }
            let metrics = match read::read_metrics(&path) {
                Ok(m) => m,
                Err(e) => {
                    self.warn(e.to_string());
                    continue;
                }
            };
            self.skipped_lines(&path, &metrics, &stage.state);
            self.last_values(&metrics);
            self.charts(&metrics);
            let config = stage.dir.join("config.json");
            if config.exists() {
                match std::fs::read(&config)
                    .map_err(|e| e.to_string())
                    .and_then(|b| {
                        serde_json::from_slice::<serde_json::Value>(&b).map_err(|e| e.to_string())
                    }) {
                    Ok(v) => {
                        let _ = writeln!(
                            self.body,
                            "<details><summary>Resolved training config (<code>{name}/config.json</code>)</summary><pre>{}</pre></details>",
                            esc(&serde_json::to_string_pretty(&v).unwrap_or_default())
                        );
                    }
                    Err(e) => self.warn(format!("{}: {e}", config.display())),
                }
            }
        }
    }

    fn skipped_lines(&mut self, path: &Path, metrics: &MetricSeries, state: &StageState) {
        let Some((line, why)) = metrics.skipped.first() else {
            return;
        };
        // A running trainer may be half-way through its last line: that one is not a problem.
        let torn_tail = metrics.skipped.len() == 1
            && !matches!(state, StageState::Finished(_))
            && *line > metrics.lines;
        let message = format!(
            "{}: {} line(s) skipped, first at line {line}: {why}",
            path.display(),
            metrics.skipped.len()
        );
        if torn_tail {
            let _ = writeln!(self.body, "<p class=\"meta\">{}</p>", esc(&message));
        } else {
            self.warn(message);
        }
    }

    fn last_values(&mut self, metrics: &MetricSeries) {
        if metrics.lines == 0 {
            self.body
                .push_str("<p class=\"absent\">no metrics logged yet</p>\n");
            return;
        }
        // The trainer's field order first, then whatever else a stage logs.
        let mut fields: Vec<&str> = FIELD_ORDER
            .iter()
            .copied()
            .filter(|f| metrics.last.contains_key(*f))
            .collect();
        fields.extend(
            metrics
                .last
                .keys()
                .map(String::as_str)
                .filter(|k| !FIELD_ORDER.contains(k)),
        );
        let row: Vec<String> = fields
            .iter()
            .map(|f| {
                let v = metrics.last.get(*f).map(|v| num(*v)).unwrap_or_default();
                format!("<span class=\"n\">{}</span>", esc(&v))
            })
            .collect();
        let _ = write!(
            self.body,
            "<p>{} step(s) logged; the last:</p>",
            metrics.lines
        );
        self.body.push_str(&table(&fields, &[row]));
    }

    fn charts(&mut self, metrics: &MetricSeries) {
        let max = self.inputs.config.max_curve_points;
        self.body.push_str("<div class=\"charts\">");
        for (title, fields) in CHARTS {
            let series: Vec<(&str, Vec<(f64, f64)>)> = fields
                .iter()
                .filter_map(|f| {
                    metrics
                        .series
                        .get(*f)
                        .filter(|p| !p.is_empty())
                        .map(|p| (*f, plot::downsample(p, max)))
                })
                .collect();
            if series.is_empty() {
                continue;
            }
            self.chart(title, "step", "chart", &series);
        }
        self.body.push_str("</div>\n");
    }

    fn samples(&mut self, stages: &[StageInfo]) {
        self.h2("samples", "Sample sheets");
        let max = self.inputs.config.max_samples;
        let _ = write!(
            self.body,
            "<p class=\"meta\">The newest {max} sheet(s) of each training stage, newest first; same \
             conditions and noise at every step. Generated with BatchNorm on the sheet's own batch \
             statistics (train-mode arithmetic, as the reference draws its sheets; the running \
             statistics, which <code>eval</code> uses, are untouched).</p><div class=\"cols\">"
        );
        for (name, title, columns) in TRAINING {
            let _ = write!(
                self.body,
                "<div><h3>{}</h3><p class=\"meta\">columns: {}</p>",
                esc(title),
                esc(columns)
            );
            match find(stages, name).filter(|s| s.exists()) {
                None => self.body.push_str(&not_run(name)),
                Some(stage) => {
                    let dir = stage.dir.join("samples");
                    match read::list_pngs(&dir) {
                        Err(e) => self.warn(e.to_string()),
                        Ok(files) if files.is_empty() => self
                            .body
                            .push_str("<p class=\"absent\">no sample sheets yet</p>"),
                        Ok(files) => {
                            // A finished stage shows only the sheets its manifest lists: a file
                            // left from training that was discarded is not this model's.
                            let listed = |name: &str| match &stage.state {
                                StageState::Finished(m) => m
                                    .outputs
                                    .iter()
                                    .any(|o| o.path == format!("samples/{name}")),
                                _ => true,
                            };
                            for f in files.iter().rev().filter(|f| listed(&f.name)).take(max) {
                                let caption = match f.number {
                                    Some(n) => format!("step {n}"),
                                    None => esc(&f.name),
                                };
                                self.figure(&f.path, &caption);
                            }
                        }
                    }
                }
            }
            self.body.push_str("</div>");
        }
        self.body.push_str("</div>\n");
    }

    fn per_turn(&mut self, stages: &[StageInfo]) {
        self.h2("per-turn", "Per-turn strips");
        let Some(stage) = find(stages, Stage::Eval).filter(|s| s.exists()) else {
            self.body.push_str(&not_run(Stage::Eval));
            return;
        };
        let dir = stage.dir.join("per_turn");
        let files = match read::list_pngs(&dir) {
            Ok(f) => f,
            Err(e) => return self.warn(e.to_string()),
        };
        if files.is_empty() {
            self.body
                .push_str("<p class=\"absent\">eval wrote no per-turn strips</p>\n");
            return;
        }
        let shown = files.len().min(self.inputs.config.per_turn_strips);
        let _ = writeln!(
            self.body,
            "<p class=\"meta\">{shown} of {} strip(s): one image after each dialogue turn, same \
             noise across turns.</p>",
            files.len()
        );
        for f in files.iter().take(shown) {
            let mut caption = format!(
                "image <code>{}</code>",
                esc(f.name.trim_end_matches(".png"))
            );
            match read::read_strip_text(&f.path) {
                Ok(text) => {
                    if let Some(c) = &text.caption {
                        let _ = write!(caption, " · caption: {}", esc(c));
                    }
                    if !text.turns.is_empty() {
                        caption.push_str("<ol>");
                        for t in &text.turns {
                            let _ = write!(caption, "<li>{}</li>", esc(t));
                        }
                        caption.push_str("</ol>");
                    }
                }
                Err(e) => self.warn(e.to_string()),
            }
            self.figure(&f.path, &caption);
        }
    }

    fn quality(&mut self, stages: &[StageInfo]) {
        self.h2("quality", "Ingest quality");
        let Some(stage) = find(stages, Stage::Ingest).filter(|s| s.exists()) else {
            self.body.push_str(&not_run(Stage::Ingest));
            return;
        };
        let path = stage.dir.join("quality.json");
        if !path.exists() {
            return self.missing(&path, stage);
        }
        let q = match read::read_quality(&path) {
            Ok(q) => q,
            Err(e) => return self.warn(e.to_string()),
        };
        let n = |v: u64| format!("<span class=\"n\">{v}</span>");
        let files: Vec<Vec<String>> = q
            .files
            .iter()
            .map(|(f, c)| {
                vec![
                    format!("<code>{}</code>", esc(f)),
                    esc(&c.kind),
                    n(c.records_in),
                    n(c.records_used),
                ]
            })
            .collect();
        self.body.push_str("<h3>Input files</h3>");
        self.body
            .push_str(&table(&["file", "kind", "records in", "used"], &files));
        let splits: Vec<Vec<String>> = q
            .splits
            .iter()
            .map(|(s, c)| vec![esc(s), n(c.images_in), n(c.records_out), n(c.dropped)])
            .collect();
        self.body.push_str("<h3>Splits</h3>");
        self.body.push_str(&table(
            &["split", "images in", "records out", "dropped"],
            &splits,
        ));
        self.body.push_str("<h3>Issues by reason</h3>");
        if q.reasons.is_empty() {
            self.body
                .push_str("<p>No record was dropped, repaired or converted.</p>");
        } else {
            let reasons: Vec<Vec<String>> = q
                .reasons
                .iter()
                .map(|(r, c)| vec![format!("<code>{}</code>", esc(r)), n(*c)])
                .collect();
            self.body.push_str(&table(&["reason", "count"], &reasons));
        }
        let _ = write!(
            self.body,
            "<p>Captions whose whitespace was normalised: {}</p>",
            q.captions_whitespace_normalised
        );
        for (reason, examples) in &q.examples {
            let _ = write!(
                self.body,
                "<details><summary>Examples: <code>{}</code></summary><ul>",
                esc(reason)
            );
            for e in examples {
                let _ = write!(self.body, "<li>{}</li>", esc(e));
            }
            self.body.push_str("</ul></details>");
        }
        self.body.push('\n');
    }

    fn config(&mut self) {
        self.h2("config", "Pipeline config");
        self.body.push_str(
            "<p class=\"meta\">The pipeline file as loaded, with <code>--set</code> overrides \
             applied and defaults filled in.</p>",
        );
        let _ = writeln!(self.body, "<pre>{}</pre>", esc(self.inputs.pipeline_toml));
    }
}

/// One series per attribute (named as the first set names them): `(x, accuracy in %)` for each
/// `(x, scores)`.
fn attribute_series<'a>(
    points: impl Iterator<Item = (f64, &'a chatpainter_formats::scenes::SceneScores)> + Clone,
) -> Vec<(&'a str, Vec<(f64, f64)>)> {
    let Some((_, first)) = points.clone().next() else {
        return Vec::new();
    };
    first
        .attributes
        .iter()
        .map(|a| {
            let name = a.name.as_str();
            let series = points
                .clone()
                .filter_map(|(x, s)| s.get(name).map(|b| (x, 100.0 * b.accuracy)))
                .collect();
            (name, series)
        })
        .collect()
}
