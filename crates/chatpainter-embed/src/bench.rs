//! `chatpainter bench embed`: MiniLM (and Skip-Thought, given its files) throughput on short
//! turns and whole dialogues per device, and the wall time of a full embed build against a
//! rebuild with 1 % of the texts changed.
//!
//! Devices: `$CHATPAINTER_BENCH_DEVICES` (e.g. `cpu,tch-cpu,cuda:0`) or flex plus, in `tch`
//! builds, LibTorch CPU. Every device's vectors are compared with flex's on the same texts and
//! the largest difference is stated in the row's conditions. Skip-Thought rows need
//! `$CHATPAINTER_SKIPTHOUGHT_DIR` (a folder as `[embed] dialogue_encoder = { kind =
//! "skipthought" }` reads, combine-skip).
//!
//! Texts are generated (seeded, VisDial-like), so the figures need no dataset. The rebuild
//! rows go through [`crate::stage::build`] and a fresh cache, exactly as `chatpainter embed`
//! does. When the MiniLM weights are absent the MiniLM rows are skipped with a message on
//! stderr and the rebuild rows use the hashing encoder (said in their conditions). Figures are
//! printed, never asserted.

use std::path::Path;
use std::time::Instant;

use chatpainter_artifacts::{BenchRow, NoProgress, SplitMix};
use chatpainter_formats::ingested::Record;
use chatpainter_formats::ingested::{Dialogue, Turn};

use crate::config::EmbedConfig;
use crate::report::EmbedReport;
use crate::stage::build;
use chatpainter_model::DeviceChoice;
use chatpainter_model::device::bench_devices;
use chatpainter_model::text::{
    EmbedError, MINILM_DIR_NAME, MiniLmConfig, MiniLmEncoder, SkipThoughtConfig,
    SkipThoughtEncoder, SkipThoughtVariant, TextEncoder,
};
use chatpainter_model::text::{EncoderSpec, Encoders};

/// What the benchmark runs on.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Folder holding `all-MiniLM-L6-v2/` ([`chatpainter_model::text::default_models_dir`] by default).
    pub models_dir: std::path::PathBuf,
    /// Short turns timed.
    pub short_texts: usize,
    /// Whole dialogues timed.
    pub dialogues: usize,
    /// Images of the generated rebuild set (5 captions, 10 turns and 1 dialogue each).
    pub rebuild_images: usize,
    /// MiniLM batching: most texts and most padded word pieces per forward pass.
    pub batch_size: usize,
    pub batch_tokens: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            models_dir: chatpainter_model::text::default_models_dir(),
            short_texts: 512,
            dialogues: 96,
            rebuild_images: 250,
            batch_size: MiniLmConfig::new("").batch_size,
            batch_tokens: MiniLmConfig::new("").batch_tokens,
        }
    }
}

const SUBJECTS: [&str; 12] = [
    "man", "woman", "dog", "cat", "bus", "train", "kite", "pizza", "giraffe", "bench", "boy",
    "surfer",
];
const COLOURS: [&str; 8] = [
    "red", "white", "black", "green", "blue", "brown", "yellow", "grey",
];
const QUESTIONS: [&str; 12] = [
    "any animals",
    "is it daytime",
    "what color is the {}",
    "is the {} standing",
    "how many people are there",
    "is it sunny",
    "can you see the sky",
    "is the {} young or old",
    "are there any trees near the {}",
    "what is the {} doing",
    "is this photo in color",
    "is anyone holding something",
];
const ANSWERS: [&str; 10] = [
    "yes",
    "no",
    "i think so",
    "it is white and brown",
    "2",
    "not that i can see",
    "yes, a few",
    "looks like it",
    "maybe in his twenties",
    "sitting on a bench",
];

fn pick<'a>(rng: &mut SplitMix, items: &[&'a str]) -> &'a str {
    items[rng.below(items.len())]
}

/// One VisDial-like `(question, answer)` pair; `detail` lengthens most answers (more
/// distinct texts for the rebuild set).
fn turn(rng: &mut SplitMix, detail: bool) -> (String, String) {
    let subject = pick(rng, &SUBJECTS);
    let q = pick(rng, &QUESTIONS).replace("{}", subject);
    let answer = pick(rng, &ANSWERS);
    // Most answers get a detail, so that turns are as varied as VisDial's.
    let answer = match rng.below(3) {
        _ if !detail => answer.to_string(),
        0 => answer.to_string(),
        _ => format!("{answer}, {} {}", pick(rng, &COLOURS), pick(rng, &SUBJECTS)),
    };
    (q, answer)
}

fn caption(rng: &mut SplitMix, n: usize) -> String {
    format!(
        "a {} next to a {} on a {} street number {n}",
        pick(rng, &SUBJECTS),
        pick(rng, &SUBJECTS),
        pick(rng, &["busy", "quiet", "wet", "sunny", "narrow"])
    )
}

/// `n` generated records: 5 captions and a 10-turn dialogue each (seeded).
pub fn generated_records(n: usize, seed: u64) -> Vec<Record> {
    let mut rng = SplitMix::new(seed);
    (0..n)
        .map(|i| {
            let image_id = i as i64 + 1;
            Record {
                image_id,
                split: "train".into(),
                file_name: format!("train2014/COCO_train2014_{image_id:012}.jpg"),
                width: 640,
                height: 480,
                captions: (0..5).map(|c| caption(&mut rng, i * 5 + c)).collect(),
                dialogue: Some(Dialogue {
                    caption: caption(&mut rng, i),
                    source: "1.0/train".into(),
                    turns: (0..10)
                        .map(|_| {
                            let (question, answer) = turn(&mut rng, true);
                            Turn {
                                question,
                                answer: Some(answer),
                            }
                        })
                        .collect(),
                }),
            }
        })
        .collect()
}

/// CPU seconds used by this process so far (all threads; Linux `/proc`), to tell a busy
/// machine from a slow encoder: wall ≫ CPU / threads means other processes had the cores.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime, fields 14 and 15 of stat(5), in clock ticks (100 per second).
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn cpu_note(cpu: Option<f64>, per: f64, unit: &str) -> String {
    cpu.map_or(String::new(), |c| {
        format!(", CPU {:.2} {unit} (all threads)", c / per)
    })
}

fn conditions(extra: &str) -> String {
    device_conditions(DeviceChoice::CPU, extra)
}

fn device_conditions(device: DeviceChoice, extra: &str) -> String {
    let name = if device.is_cpu() {
        "flex CPU".to_string()
    } else {
        format!("LibTorch {device}")
    };
    format!(
        "{name}, {} rayon threads, {} cores; {extra}",
        rayon::current_num_threads(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

/// Runs every embed benchmark.
///
/// # Errors
/// Encoder, cache or file errors of the measured code paths.
pub fn run(options: &BenchOptions) -> Result<Vec<BenchRow>, EmbedError> {
    let mut rows = Vec::new();
    let devices = bench_devices()?;
    for device in &devices {
        device.probe()?;
    }
    let texts = bench_texts(options);
    let model_dir = options.models_dir.join(MINILM_DIR_NAME);
    let have_minilm = model_dir.join("model.safetensors").is_file();
    if have_minilm {
        let mut cfg = MiniLmConfig::new(&model_dir);
        cfg.batch_size = options.batch_size;
        cfg.batch_tokens = options.batch_tokens;
        let flex = MiniLmEncoder::load(&cfg)?;
        let reference = encode_all(&flex, &texts)?;
        for &device in &devices {
            let enc = MiniLmEncoder::load_on(&cfg, device.burn_device())?;
            let lengths = |t: &[&str]| enc.token_lengths(t);
            let what = format!(
                "minilm, batches of ≤{} texts and ≤{} padded word pieces (length-sorted)",
                options.batch_size, options.batch_tokens
            );
            rows.extend(encoder_rows(
                "minilm", &what, device, &enc, &texts, &reference, &lengths,
            )?);
        }
    } else {
        tracing::warn!(
            "bench embed: MiniLM rows skipped: {} not found (run `chatpainter fetch-models`); the rebuild rows use the hashing encoder",
            model_dir.join("model.safetensors").display()
        );
    }
    match std::env::var_os("CHATPAINTER_SKIPTHOUGHT_DIR") {
        Some(dir) => {
            let cfg = SkipThoughtConfig::new(dir, SkipThoughtVariant::Combine);
            let flex = SkipThoughtEncoder::load(&cfg)?;
            let reference = encode_all(&flex, &texts)?;
            for &device in &devices {
                let enc = SkipThoughtEncoder::load_on(&cfg, device.burn_device())?;
                let lengths = |t: &[&str]| -> Result<Vec<usize>, EmbedError> {
                    Ok(t.iter().map(|t| enc.token_ids(t).len()).collect())
                };
                let what = format!(
                    "combine-skip, batches of ≤{} texts and ≤{} padded tokens (length-sorted)",
                    cfg.batch_size, cfg.batch_tokens
                );
                rows.extend(encoder_rows(
                    "skipthought",
                    &what,
                    device,
                    &enc,
                    &texts,
                    &reference,
                    &lengths,
                )?);
            }
        }
        None => tracing::warn!(
            "bench embed: Skip-Thought rows skipped: set CHATPAINTER_SKIPTHOUGHT_DIR to a folder with its files"
        ),
    }
    rows.extend(rebuild_rows(
        options,
        have_minilm.then_some(model_dir.as_path()),
    )?);
    Ok(rows)
}

/// The timed texts: `(label, texts)` for short turns and whole dialogues.
type BenchTexts = Vec<(&'static str, Vec<String>)>;

fn bench_texts(options: &BenchOptions) -> BenchTexts {
    let mut rng = SplitMix::new(11);
    let short: Vec<String> = (0..options.short_texts)
        .map(|_| {
            let (q, a) = turn(&mut rng, true);
            chatpainter_model::text::turn_text(&q, &a)
        })
        .collect();
    let dialogues: Vec<String> = (0..options.dialogues)
        .map(|_| {
            let turns: Vec<(String, String)> = (0..10).map(|_| turn(&mut rng, false)).collect();
            chatpainter_model::text::dialogue_text(&turns)
        })
        .collect();
    vec![("short turns", short), ("whole dialogues", dialogues)]
}

/// Flex's vectors of every timed text, the reference other devices are compared with.
fn encode_all(enc: &dyn TextEncoder, texts: &BenchTexts) -> Result<Vec<Vec<f32>>, EmbedError> {
    texts
        .iter()
        .map(|(_, t)| {
            let refs: Vec<&str> = t.iter().map(String::as_str).collect();
            Ok(enc.encode_batch(&refs)?.data)
        })
        .collect()
}

/// An encoder's word-piece counts per text (with `[CLS]`/`[SEP]`).
type TokenLengths<'a> = &'a dyn Fn(&[&str]) -> Result<Vec<usize>, EmbedError>;

/// Throughput and latency rows of one encoder on one device, with the largest difference of
/// its vectors from flex's in the conditions.
#[allow(clippy::too_many_arguments)]
fn encoder_rows(
    name: &str,
    what: &str,
    device: DeviceChoice,
    enc: &dyn TextEncoder,
    texts: &BenchTexts,
    reference: &[Vec<f32>],
    token_lengths: TokenLengths<'_>,
) -> Result<Vec<BenchRow>, EmbedError> {
    // One untimed call warms the allocator, the thread pool and the device.
    enc.encode_batch(&["warm up the encoder"])?;
    let mut rows = Vec::new();
    for ((label, texts), reference) in texts.iter().zip(reference) {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let lengths = token_lengths(&refs)?;
        let mean_tokens = lengths.iter().sum::<usize>() as f64 / lengths.len().max(1) as f64;
        let (started, cpu0) = (Instant::now(), cpu_seconds());
        let out = enc.encode_batch(&refs)?;
        let secs = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds().zip(cpu0).map(|(b, a)| b - a);
        let n = out.len() as f64;
        let max_diff = out
            .data
            .iter()
            .zip(reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let cond = device_conditions(
            device,
            &format!(
                "{what}; {} texts, mean {mean_tokens:.1} tokens; max |difference| from flex {max_diff:.1e}{}",
                out.len(),
                cpu_note(cpu.map(|c| 1e3 * c), n, "ms/text"),
            ),
        );
        rows.push(BenchRow::new(
            format!("embed {name} {label} {device}"),
            n / secs,
            "texts/s",
            cond.clone(),
        ));
        rows.push(BenchRow::new(
            format!("embed {name} {label} {device} latency"),
            1e3 * secs / n,
            "ms/text",
            cond,
        ));
    }
    Ok(rows)
}

fn fill_counts(r: &EmbedReport) -> (usize, usize) {
    let parts = [&r.captions, &r.dialogues, &r.turns];
    (
        parts.iter().map(|s| s.encoded).sum(),
        parts.iter().map(|s| s.reused).sum(),
    )
}

fn rebuild_rows(
    options: &BenchOptions,
    minilm_dir: Option<&Path>,
) -> Result<Vec<BenchRow>, EmbedError> {
    let spec = match minilm_dir {
        Some(dir) => EncoderSpec::Minilm {
            model_dir: Some(dir.display().to_string()),
            max_tokens: 128,
        },
        None => EncoderSpec::Hashing { dim: 384 },
    };
    let encoder_name = if minilm_dir.is_some() {
        "all-MiniLM-L6-v2"
    } else {
        "hashing-v1 384-d (MiniLM weights absent)"
    };
    let cfg = EmbedConfig {
        caption_encoder: spec.clone(),
        dialogue_encoder: spec,
        cache_dir: String::new(),
        batch_size: 64,
        part_size: 4096,
        device: Default::default(),
        batch_tokens: None,
    };
    let encoders = Encoders::load(&cfg.encoders())?;
    let dir = tempfile::tempdir().map_err(|e| EmbedError::io(std::env::temp_dir(), e))?;
    let (cache, out) = (
        dir.path().join("cache"),
        dir.path().join("embeddings.parquet"),
    );
    let mut records = generated_records(options.rebuild_images, 5);

    let (started, cpu0) = (Instant::now(), cpu_seconds());
    let full = build(&cfg, &encoders, &records, &cache, &out, &NoProgress)?;
    let full_s = started.elapsed().as_secs_f64();
    let full_cpu = cpu_seconds().zip(cpu0).map(|(b, a)| b - a);
    let (encoded, reused) = fill_counts(&full);

    // Change 1 % of all texts: captions of every hundredth caption slot, and answers of some
    // turns (each also changes its image's whole-dialogue string).
    let total_texts = encoded + reused;
    let to_change = (total_texts / 100).max(1);
    let mut rng = SplitMix::new(99);
    for k in 0..to_change {
        let r = rng.below(records.len());
        if k % 2 == 0 {
            let c = rng.below(records[r].captions.len());
            records[r].captions[c] = format!("an edited caption {k} of image {r}");
        } else if let Some(d) = records[r].dialogue.as_mut() {
            let t = rng.below(d.turns.len());
            d.turns[t].answer = Some(format!("an edited answer {k}"));
        }
    }
    let (started, cpu0) = (Instant::now(), cpu_seconds());
    let again = build(&cfg, &encoders, &records, &cache, &out, &NoProgress)?;
    let rebuild_s = started.elapsed().as_secs_f64();
    let rebuild_cpu = cpu_seconds().zip(cpu0).map(|(b, a)| b - a);
    let (re_encoded, re_reused) = fill_counts(&again);
    let common = format!(
        "{encoder_name}, {} generated images (5 captions, 10 turns, 1 dialogue each), {total_texts} distinct texts, stage::build, cache empty before the full build, batch {}, part {}",
        options.rebuild_images, cfg.batch_size, cfg.part_size
    );
    Ok(vec![
        BenchRow::new(
            "embed full build",
            full_s,
            "s",
            conditions(&format!(
                "{common}; encoded {encoded}, reused {reused}{}",
                cpu_note(full_cpu, 1.0, "s")
            )),
        ),
        BenchRow::new(
            "embed rebuild, 1% of texts changed",
            rebuild_s,
            "s",
            conditions(&format!(
                "{common}; {to_change} texts edited; encoded {re_encoded}, reused {re_reused}{}",
                cpu_note(rebuild_cpu, 1.0, "s")
            )),
        ),
    ])
}

/// The texts `chatpainter bench-encode` times (and writes out for the `transformers` reference
/// to encode the same ones): `short-turns` (one question + answer each) or `dialogues` (ten
/// turns each, ≈ 85 word pieces), generated from a fixed seed.
pub fn parity_texts(kind: &str, n: usize) -> Option<Vec<String>> {
    let mut rng = SplitMix::new(11);
    match kind {
        "short-turns" => Some(
            (0..n)
                .map(|_| {
                    let (q, a) = turn(&mut rng, true);
                    chatpainter_model::text::turn_text(&q, &a)
                })
                .collect(),
        ),
        "dialogues" => Some(
            (0..n)
                .map(|_| {
                    let turns: Vec<(String, String)> =
                        (0..10).map(|_| turn(&mut rng, false)).collect();
                    chatpainter_model::text::dialogue_text(&turns)
                })
                .collect(),
        ),
        _ => None,
    }
}
