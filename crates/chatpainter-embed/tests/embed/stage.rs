//! The embed stage end to end: char-CNN-RNN captions from StackGAN-style pickles written here
//! (Python-2 protocol 2, opcode by opcode: what cPickle emits for numpy arrays and byte-string
//! filenames), quarantine of images the pickles cannot serve, the cache index with part-by-part
//! reads, and the empty / non-ASCII / truncation policies.

use std::path::{Path, PathBuf};

use chatpainter_artifacts::{NoProgress, RunDir};
use chatpainter_embed::cache::{EncoderCache, key_of};
use chatpainter_embed::config::EmbedConfig;
use chatpainter_embed::stage::build;
use chatpainter_embed::verify::verify;
use chatpainter_formats::ingested::Record;
use chatpainter_formats::ingested::{Dialogue, Turn};
use chatpainter_model::text::{EmbedError, HashingEncoder, TextEncoder};
use chatpainter_model::text::{EncoderSpec, Encoders, Paths};
use sha2::{Digest, Sha256};

type TestResult = Result<(), Box<dyn std::error::Error>>;

// --- A minimal Python-2 pickle writer (protocol 2) -------------------------------------------

/// A Python-2 `str` (raw bytes): SHORT_BINSTRING or BINSTRING.
fn py2_str(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.len() < 256 {
        out.push(b'U');
        out.push(bytes.len() as u8);
    } else {
        out.push(b'T');
        out.extend((bytes.len() as u32).to_le_bytes());
    }
    out.extend(bytes);
}

/// `numpy.core.multiarray._reconstruct(ndarray, (0,), 'b')` + BUILD with the state
/// `(1, shape, dtype('<f4'), False, raw)`, as numpy's `__reduce__` writes it.
fn py2_array(out: &mut Vec<u8>, shape: &[usize], data: &[f32]) {
    out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85");
    py2_str(out, b"b");
    out.extend(b"\x87R(K\x01(");
    for &d in shape {
        out.push(b'J');
        out.extend((d as i32).to_le_bytes());
    }
    out.extend(b"tcnumpy\ndtype\n");
    py2_str(out, b"f4");
    out.extend(b"K\x00K\x01\x87R(K\x03");
    py2_str(out, b"<");
    out.extend(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89");
    let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    py2_str(out, &raw);
    out.extend(b"tb");
}

fn pickle_one_array(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let mut out = b"\x80\x02".to_vec();
    py2_array(&mut out, shape, data);
    out.push(b'.');
    out
}

fn pickle_array_list(arrays: &[(Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let mut out = b"\x80\x02](".to_vec();
    for (shape, data) in arrays {
        py2_array(&mut out, shape, data);
    }
    out.extend(b"e.");
    out
}

fn pickle_names(names: &[&str]) -> Vec<u8> {
    let mut out = b"\x80\x02](".to_vec();
    for n in names {
        py2_str(&mut out, n.as_bytes());
    }
    out.extend(b"e.");
    out
}

// --- Data ------------------------------------------------------------------------------------

const DIM: usize = 4;

/// The pickled vector of caption `c` of image `id`.
fn vector(id: i64, c: usize) -> Vec<f32> {
    (0..DIM)
        .map(|d| id as f32 + c as f32 / 10.0 + d as f32 / 100.0)
        .collect()
}

fn vectors(id: i64, n: usize) -> Vec<f32> {
    (0..n).flat_map(|c| vector(id, c)).collect()
}

fn coco(id: i64, split: &str) -> String {
    let folder = if split == "train" {
        "train2014"
    } else {
        "val2014"
    };
    format!("COCO_{folder}_{id:012}")
}

fn record(id: i64, split: &str, captions: &[&str], turns: &[(&str, Option<&str>)]) -> Record {
    Record {
        image_id: id,
        split: split.into(),
        file_name: format!("{}.jpg", coco(id, split)),
        width: 8,
        height: 8,
        captions: captions.iter().map(|c| c.to_string()).collect(),
        dialogue: (!turns.is_empty()).then(|| Dialogue {
            caption: captions.first().unwrap_or(&"").to_string(),
            source: "1.0/train".into(),
            turns: turns
                .iter()
                .map(|(q, a)| Turn {
                    question: q.to_string(),
                    answer: a.map(str::to_string),
                })
                .collect(),
        }),
    }
}

/// Writes StackGAN's layout under `<run>/stackgan/{train,test}/`: train as one `(N, 2, 4)`
/// array (images 9, 25), test as a list of per-image arrays (30 with 2 captions, 42 with 3).
fn write_stackgan(run: &Path) -> TestResult {
    let train = run.join("stackgan/train");
    let test = run.join("stackgan/test");
    std::fs::create_dir_all(&train)?;
    std::fs::create_dir_all(&test)?;
    let mut all = vectors(9, 2);
    all.extend(vectors(25, 2));
    std::fs::write(
        train.join("char-CNN-RNN-embeddings.pickle"),
        pickle_one_array(&[2, 2, DIM], &all),
    )?;
    std::fs::write(
        train.join("filenames.pickle"),
        pickle_names(&[&coco(9, "train"), &coco(25, "train")]),
    )?;
    std::fs::write(
        test.join("char-CNN-RNN-embeddings.pickle"),
        pickle_array_list(&[
            (vec![2, DIM], vectors(30, 2)),
            (vec![3, DIM], vectors(42, 3)),
        ]),
    )?;
    std::fs::write(
        test.join("filenames.pickle"),
        pickle_names(&[&coco(30, "test"), &coco(42, "test")]),
    )?;
    Ok(())
}

fn char_cnn_config(dim: usize) -> EmbedConfig {
    let both = |name: &str| {
        Paths::Many(vec![
            format!("run:stackgan/train/{name}"),
            format!("run:stackgan/test/{name}"),
        ])
    };
    EmbedConfig {
        caption_encoder: EncoderSpec::CharCnnRnn {
            embeddings: both("char-CNN-RNN-embeddings.pickle"),
            filenames: both("filenames.pickle"),
            dim,
        },
        dialogue_encoder: EncoderSpec::Hashing { dim: 6 },
        cache_dir: "run:cache".into(),
        batch_size: 2,
        part_size: 3,
        device: Default::default(),
        batch_tokens: None,
    }
}

fn sha256(path: &Path) -> Result<String, std::io::Error> {
    Ok(hex::encode(Sha256::digest(std::fs::read(path)?)))
}

fn dataset() -> Vec<Record> {
    let turns = [("is it sunny", Some("yes")), ("any people", Some("two"))];
    vec![
        record(9, "train", &["a dog", "a brown dog"], &turns),
        record(25, "train", &["a cat", "a cat on a mat"], &turns),
        record(30, "test", &["a bus", "a red bus"], &[("what color", None)]),
        // The pickle holds 3 vectors for 42: count mismatch.
        record(42, "test", &["a kite", "two kites"], &turns),
        // No entry at all.
        record(77, "test", &["a boat", "a small boat"], &turns),
    ]
}

#[test]
fn char_cnn_rnn_captions_end_to_end() -> TestResult {
    let run = tempfile::tempdir()?;
    write_stackgan(run.path())?;
    let cfg = char_cnn_config(DIM);
    let run_dir = RunDir::new(run.path());
    let resolver = |p: &str| run_dir.resolve(p);
    let encoders = Encoders::load_with(&cfg.encoders(), &resolver)?;
    let records = dataset();
    let out = run.path().join("embeddings.parquet");
    let report = build(
        &cfg,
        &encoders,
        &records,
        &run.path().join("cache"),
        &out,
        &NoProgress,
    )?;

    // Vectors by image id, in caption order; the quarantined images are left out.
    let table = chatpainter_formats::embeddings::read(&out)?;
    let ids: Vec<i64> = table.rows.iter().map(|r| r.image_id).collect();
    assert_eq!(ids, [9, 25, 30]);
    for row in &table.rows {
        assert_eq!(
            row.captions,
            vec![vector(row.image_id, 0), vector(row.image_id, 1)]
        );
        assert_eq!(row.captions[0].len(), DIM);
    }
    assert_eq!(table.rows[2].turns.len(), 1, "image 30 has one turn");
    assert_eq!(table.caption_encoder, *encoders.caption.identity());
    assert_eq!(report.images, 3);
    assert_eq!((report.captions.reused, report.captions.encoded), (6, 0));

    let q: Vec<(i64, &str, &str)> = report
        .quarantined
        .iter()
        .map(|q| (q.image_id, q.field.as_str(), q.reason.as_str()))
        .collect();
    assert_eq!(q.len(), 2, "{q:?}");
    assert_eq!((q[0].0, q[0].1), (42, "captions"));
    assert!(q[0].2.contains("3 caption vectors") && q[0].2.contains("2 captions"));
    assert_eq!(q[1].0, 77);
    assert!(q[1].2.contains("no entry"), "{}", q[1].2);
    assert_eq!(
        report.quarantined[1].file_name,
        "COCO_val2014_000000000077.jpg"
    );
    assert!(report.summary().contains("quarantined: 2 images"));

    // The manifest side: every pickle with its sha256; the identity digests them all.
    let files: Vec<(PathBuf, String)> = report
        .caption_files
        .iter()
        .map(|f| (f.path.clone(), f.sha256.clone()))
        .collect();
    assert_eq!(files.len(), 4);
    for (path, sha) in &files {
        assert_eq!(&sha256(path)?, sha, "{}", path.display());
    }
    let identity = encoders.caption.identity();
    assert_eq!(identity.dim, DIM);
    assert!(identity.weights_sha256.is_some());

    // It cannot encode text: new captions, --verify.
    let err = encoders.caption.encode_batch(&["a new caption"]).err();
    assert!(
        matches!(err, Some(EmbedError::CannotEncode { .. })),
        "{err:?}"
    );
    let err = verify(&encoders, &records, &table, 3, 0).err();
    let message = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("cannot encode new text"), "{message}");

    // A changed pickle is a new identity (so the stage key changes and it rebuilds).
    let train_names = run.path().join("stackgan/train/filenames.pickle");
    std::fs::write(
        &train_names,
        pickle_names(&[&coco(25, "train"), &coco(9, "train")]),
    )?;
    let again = Encoders::load_with(&cfg.encoders(), &resolver)?;
    assert_ne!(again.caption.identity(), identity);
    let swapped = build(
        &cfg,
        &again,
        &records,
        &run.path().join("cache"),
        &out,
        &NoProgress,
    )?;
    assert_eq!(swapped.dialogues.encoded, 0, "dialogue vectors are reused");
    let table = chatpainter_formats::embeddings::read(&out)?;
    assert_eq!(
        table.rows[0].captions[0],
        vector(25, 0),
        "id 9 now maps to row 2"
    );
    Ok(())
}

#[test]
fn char_cnn_rnn_bad_configs_are_clear_errors() -> TestResult {
    let run = tempfile::tempdir()?;
    write_stackgan(run.path())?;
    let run_dir = RunDir::new(run.path());
    let resolver = |p: &str| run_dir.resolve(p);
    let records = dataset();
    let out = run.path().join("e.parquet");

    // Wrong width: names the pickle and both widths.
    let cfg = char_cnn_config(5);
    let enc = Encoders::load_with(&cfg.encoders(), &resolver)?;
    let err = build(&cfg, &enc, &records, run.path(), &out, &NoProgress)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("char-CNN-RNN-embeddings.pickle")
            && err.contains("4-d")
            && err.contains("dim = 5"),
        "{err}"
    );

    // No image of the dataset in the pickles.
    let cfg = char_cnn_config(DIM);
    let enc = Encoders::load_with(&cfg.encoders(), &resolver)?;
    let strangers = vec![
        record(1, "train", &["x"], &[]),
        record(2, "train", &["y"], &[]),
    ];
    let err = build(&cfg, &enc, &strangers, run.path(), &out, &NoProgress)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("none of the 2 images"), "{err}");

    // As the dialogue encoder; unpaired lists; a missing file.
    let mut cfg = char_cnn_config(DIM);
    cfg.dialogue_encoder = cfg.caption_encoder.clone();
    let err = Encoders::load_with(&cfg.encoders(), &resolver).err();
    assert!(
        matches!(err, Some(EmbedError::CannotEncode { .. })),
        "{err:?}"
    );
    let mut cfg = char_cnn_config(DIM);
    if let EncoderSpec::CharCnnRnn { filenames, .. } = &mut cfg.caption_encoder {
        *filenames = Paths::One("run:stackgan/train/filenames.pickle".into());
    }
    let err = Encoders::load_with(&cfg.encoders(), &resolver)
        .err()
        .map(|e| e.to_string());
    assert!(err.unwrap_or_default().contains("pair up"));
    let mut cfg = char_cnn_config(DIM);
    cfg.caption_encoder = EncoderSpec::CharCnnRnn {
        embeddings: Paths::One("run:nowhere/emb.pickle".into()),
        filenames: Paths::One("run:nowhere/names.pickle".into()),
        dim: DIM,
    };
    let err = Encoders::load_with(&cfg.encoders(), &resolver).err();
    assert!(matches!(err, Some(EmbedError::Io { .. })), "{err:?}");

    // The TOML form of the pipeline table parses (one pair, default dim 1024).
    let spec: EncoderSpec = serde_json::from_value(serde_json::json!({
        "kind": "char-cnn-rnn",
        "embeddings": "data/raw/stackgan/train/char-CNN-RNN-embeddings.pickle",
        "filenames": "data/raw/stackgan/train/filenames.pickle"
    }))?;
    assert!(matches!(spec, EncoderSpec::CharCnnRnn { dim: 1024, .. }));
    Ok(())
}

#[test]
fn cache_keeps_an_index_and_reads_parts_on_demand() -> TestResult {
    let dir = tempfile::tempdir()?;
    let enc = HashingEncoder::new(5)?;
    let texts: Vec<String> = (0..10).map(|i| format!("text number {i}")).collect();
    let mut cache = EncoderCache::open(dir.path(), enc.identity())?;
    let stats = cache.fill(&enc, &texts, 2, 3, &NoProgress)?;
    assert_eq!((stats.encoded, stats.reused), (10, 0));

    // Reopened: only keys are indexed; vectors come back from the parts, in request order,
    // duplicates included.
    let cache = EncoderCache::open(dir.path(), enc.identity())?;
    assert_eq!(cache.len(), 10);
    let order = [7usize, 0, 7, 9, 3];
    let keys: Vec<_> = order.iter().map(|&i| key_of(&texts[i])).collect();
    let mut got = vec![Vec::new(); keys.len()];
    cache.gather(&keys, |i, v| {
        got[i] = v.to_vec();
        Ok(())
    })?;
    for (slot, &i) in order.iter().enumerate() {
        assert_eq!(got[slot], enc.encode_batch(&[&texts[i]])?.data, "text {i}");
    }
    assert_eq!(
        cache.get(&texts[4])?,
        Some(enc.encode_batch(&[&texts[4]])?.data)
    );
    assert_eq!(cache.get("never encoded")?, None);
    let err = cache
        .gather(&[key_of("never encoded")], |_, _| Ok(()))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("no vector for key"), "{err}");

    // A part lost in the middle: its texts are encoded again into a new part, and no
    // finished part is overwritten.
    let folder = dir.path().join(enc.identity().fingerprint());
    let numbered = |n: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&folder)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with(&format!("part-{n}-")))
            })
            .collect();
        v.sort();
        v
    };
    let second = numbered("00001");
    assert_eq!(second.len(), 1, "{second:?}");
    std::fs::remove_file(&second[0])?;
    let mut cache = EncoderCache::open(dir.path(), enc.identity())?;
    assert_eq!(cache.len(), 7);
    let stats = cache.fill(&enc, &texts, 2, 3, &NoProgress)?;
    assert_eq!((stats.encoded, stats.reused), (3, 7));
    assert_eq!(numbered("00004").len(), 1);
    assert_eq!(EncoderCache::open(dir.path(), enc.identity())?.len(), 10);

    // A part replaced behind an open cache's back (what a second writer publishing to the same
    // name would do) is an error naming the row, never a wrong vector.
    let cache = EncoderCache::open(dir.path(), enc.identity())?;
    let first = numbered("00000");
    let fourth = numbered("00004");
    std::fs::copy(&fourth[0], &first[0])?;
    let keys: Vec<_> = texts.iter().map(|t| key_of(t)).collect();
    let err = cache
        .gather(&keys, |_, _| Ok(()))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("the index expected"), "{err}");
    Ok(())
}

/// Two writers filling one cache folder at the same time (overlapping texts, the same part
/// numbers): every vector read back afterwards equals a fresh encode of its text.
#[test]
fn concurrent_writers_never_mix_vectors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let enc = HashingEncoder::new(16)?;
    let texts: Vec<String> = (0..400)
        .map(|i| format!("turn {i} of a dialogue"))
        .collect();
    let halves = [&texts[..260], &texts[140..]];
    std::thread::scope(|scope| -> TestResult {
        let handles: Vec<_> = halves
            .iter()
            .map(|part| {
                let (dir, enc) = (dir.path(), &enc);
                scope.spawn(move || -> Result<(), chatpainter_model::text::EmbedError> {
                    let mut cache = EncoderCache::open(dir, enc.identity())?;
                    cache.fill(enc, part, 8, 16, &NoProgress)?;
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "writer panicked")??;
        }
        Ok(())
    })?;
    let cache = EncoderCache::open(dir.path(), enc.identity())?;
    assert_eq!(cache.len(), texts.len());
    let keys: Vec<_> = texts.iter().map(|t| key_of(t)).collect();
    let mut got = vec![Vec::new(); keys.len()];
    cache.gather(&keys, |i, v| {
        got[i] = v.to_vec();
        Ok(())
    })?;
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(got[i], enc.encode_batch(&[t])?.data, "text {i}");
    }
    Ok(())
}

/// Set in the two child processes of [`two_processes_share_one_cache`]: `<dir>;<first>;<end>`,
/// the shared folder and the range of generated records that child embeds.
const CACHE_WRITER_ENV: &str = "CHATPAINTER_TEST_EMBED_WRITER";
const TWO_PROCESS_TEST: &str = "stage::two_processes_share_one_cache";

fn two_process_config() -> EmbedConfig {
    EmbedConfig {
        caption_encoder: EncoderSpec::Hashing { dim: 16 },
        dialogue_encoder: EncoderSpec::Hashing { dim: 16 },
        cache_dir: String::new(),
        batch_size: 4,
        // Small parts: each process publishes ~100 of them, interleaved with the other's.
        part_size: 8,
        device: Default::default(),
        batch_tokens: None,
    }
}

/// The child's half: wait for the start signal (so both fill the cache at the same time),
/// then run the embed stage on its records into the shared cache and its own table.
fn embed_as_child(spec: &str) -> TestResult {
    let parts: Vec<&str> = spec.split(';').collect();
    let [dir, first, end] = parts[..] else {
        return Err(format!("{CACHE_WRITER_ENV}={spec:?}: want <dir>;<first>;<end>").into());
    };
    let (dir, first, end) = (
        Path::new(dir),
        first.parse::<usize>()?,
        end.parse::<usize>()?,
    );
    let records = chatpainter_embed::bench::generated_records(end, 3);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !dir.join("go").exists() {
        if std::time::Instant::now() > deadline {
            return Err("no start signal within 60 s".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let cfg = two_process_config();
    let report = build(
        &cfg,
        &Encoders::load(&cfg.encoders())?,
        &records[first..],
        &dir.join("cache"),
        &dir.join(format!("embeddings-{first}.parquet")),
        &NoProgress,
    )?;
    println!("child {first}..{end}: {} images embedded", report.images);
    Ok(())
}

/// Two embed processes (this test binary started twice) build from overlapping records into
/// one cache folder at the same time. Afterwards every vector of the cache and of both tables
/// equals a fresh encode of its text, and both processes published parts. The thread version
/// above shares one address space; this one has two, as two `chatpainter embed` runs do.
#[test]
fn two_processes_share_one_cache() -> TestResult {
    if let Ok(spec) = std::env::var(CACHE_WRITER_ENV) {
        return embed_as_child(&spec);
    }
    let dir = tempfile::tempdir()?;
    let (total, ranges) = (90usize, [(0usize, 60usize), (30, 90)]);
    let exe = std::env::current_exe()?;
    let children: Vec<_> = ranges
        .iter()
        .map(|(first, end)| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    TWO_PROCESS_TEST,
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(
                    CACHE_WRITER_ENV,
                    format!("{};{first};{end}", dir.path().display()),
                )
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    std::fs::write(dir.path().join("go"), b"")?;
    for (child, (first, end)) in children.into_iter().zip(ranges) {
        let out = child.wait_with_output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "child {first}..{end} failed:\n{text}");
        let done = format!("child {first}..{end}: {} images embedded", end - first);
        assert!(text.contains(&done), "{text}");
    }

    let cfg = two_process_config();
    let encoders = Encoders::load(&cfg.encoders())?;
    let records = chatpainter_embed::bench::generated_records(total, 3);
    for (first, end) in ranges {
        let table = dir.path().join(format!("embeddings-{first}.parquet"));
        let v = chatpainter_embed::verify::verify_file(
            &encoders,
            &records[first..end],
            &table,
            usize::MAX,
            0,
        )?;
        assert_eq!(
            v.checked,
            (end - first) * 16,
            "every text of {first}..{end}"
        );
        assert_eq!(v.max_abs_diff, 0.0, "{first}..{end}: {v:?}");
    }
    let enc = HashingEncoder::new(16)?;
    let cache = EncoderCache::open(&dir.path().join("cache"), enc.identity())?;
    let mut texts: Vec<String> = Vec::new();
    for r in &records {
        texts.extend(r.captions.iter().cloned());
        let turns = r
            .dialogue
            .as_ref()
            .map(|d| &d.turns[..])
            .unwrap_or_default();
        let pairs: Vec<(String, String)> = turns
            .iter()
            .map(|t| (t.question.clone(), t.answer.clone().unwrap_or_default()))
            .collect();
        texts.extend(
            pairs
                .iter()
                .map(|(q, a)| chatpainter_model::text::turn_text(q, a)),
        );
        texts.push(chatpainter_model::text::dialogue_text(&pairs));
    }
    let texts: Vec<String> = texts
        .iter()
        .map(|t| chatpainter_model::text::normalize_whitespace(t))
        .collect();
    let keys: Vec<_> = texts.iter().map(|t| key_of(t)).collect();
    let mut got = vec![Vec::new(); keys.len()];
    cache.gather(&keys, |i, v| {
        got[i] = v.to_vec();
        Ok(())
    })?;
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(
            got[i],
            enc.encode_batch(&[t])?.data,
            "cached vector of {t:?}"
        );
    }
    // Part names carry their writer's token: both processes must have published.
    let folder = dir.path().join("cache").join(enc.identity().fingerprint());
    let mut writers = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&folder)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix("part-") {
            let token = rest.split_once('-').map(|(_, t)| t.to_string());
            writers.extend(token);
        }
    }
    assert_eq!(
        writers.len(),
        2,
        "writer tokens in {}: {writers:?}",
        folder.display()
    );
    Ok(())
}

fn hashing_config() -> EmbedConfig {
    EmbedConfig {
        caption_encoder: EncoderSpec::Hashing { dim: 8 },
        dialogue_encoder: EncoderSpec::Hashing { dim: 8 },
        cache_dir: String::new(),
        batch_size: 4,
        part_size: 4,
        device: Default::default(),
        batch_tokens: None,
    }
}

#[test]
fn empty_and_non_ascii_text_policies() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (cache, out) = (dir.path().join("cache"), dir.path().join("e.parquet"));
    let cfg = hashing_config();
    let enc = Encoders::load(&cfg.encoders())?;

    // Non-ASCII is kept and encoded; texts equal after whitespace collapsing share a vector;
    // an empty turn (no question, no answer) is skipped and counted.
    let records = vec![
        record(
            1,
            "train",
            &["Ein Café in München 😀", "日本語のテキスト"],
            &[("", Some(" ")), ("ist es  sonnig", Some("ja"))],
        ),
        record(2, "train", &["Ein  Café in\tMünchen 😀", "ÉLÉPHANT"], &[]),
    ];
    let report = build(&cfg, &enc, &records, &cache, &out, &NoProgress)?;
    assert_eq!(report.empty_turns_skipped, 1);
    assert_eq!(report.captions.distinct, 3, "{report:?}");
    let table = chatpainter_formats::embeddings::read(&out)?;
    assert_eq!(table.rows[0].captions[0], table.rows[1].captions[0]);
    assert_eq!(table.rows[0].turns.len(), 1);
    assert!(table.rows[1].dialogue.is_none());
    assert!(
        table.rows[0].captions[1].iter().any(|v| *v != 0.0),
        "CJK text has features"
    );

    // An empty caption is an error naming the image and the caption.
    let bad = vec![record(5, "test", &["fine", "  \n "], &[])];
    let err = build(&cfg, &enc, &bad, &cache, &out, &NoProgress)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("image 5") && err.contains("caption #1") && err.contains("COCO_val2014"),
        "{err}"
    );
    Ok(())
}

#[test]
fn the_report_states_the_truncation_limit() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = hashing_config();
    let enc = Encoders::load(&cfg.encoders())?;
    let records = vec![record(1, "train", &["a"], &[("q", Some("a"))])];
    let report = build(
        &cfg,
        &enc,
        &records,
        &dir.path().join("c"),
        &dir.path().join("e.parquet"),
        &NoProgress,
    )?;
    assert_eq!(report.dialogue_max_tokens, None);
    assert!(
        report.summary().contains("truncation: captions no limit"),
        "{}",
        report.summary()
    );
    Ok(())
}
