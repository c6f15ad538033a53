//! Skip-Thought encoder tests on tiny random-weight files in the real layout (word dim 5,
//! uni dim 4, bi dim 3 per direction, a 12-word dictionary with `UNK`), written by this test
//! with its own `.npy`/`.npz` writer.
//!
//! Golden recipe (independent of the library: plain f64 scalar loops over each step, no Burn,
//! no batching, backward direction = the same loop over the reversed token list):
//!   a_j = b_j + Σ_i x_i W_ij + Σ_k h_k U_kj            (j < 2d; Theano `x @ W` layout)
//!   r_j = σ(a_j), u_j = σ(a_{d+j})                      (gate blocks [reset | update])
//!   c_j = tanh(bx_j + Σ_i x_i Wx_ij + r_j Σ_k h_k Ux_kj) (reset after the Ux product)
//!   h_j ← u_j h_j + (1 − u_j) c_j,  h starts at 0
//!   uni = h_final / ‖h_final‖; bi = [h_fwd ‖ h_bwd] / ‖[h_fwd ‖ h_bwd]‖; combine = [uni ‖ bi].

use std::io::Write;
use std::path::Path;

use chatpainter_formats::FormatError;
use chatpainter_formats::npy::{NpyArray, read_npy};
use chatpainter_model::text::tokenize::tokenize;
use chatpainter_model::text::{
    EmbedError, SkipThoughtConfig, SkipThoughtEncoder, SkipThoughtVariant, TextEncoder,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const WORDS: [&str; 12] = [
    "<eos>", "UNK", "Do", "n't", "stop", ".", "the", "The", "dog", "runs", ",", "cat",
];
const DIM_WORD: usize = 5;
const UNI: usize = 4;
const BI: usize = 3;

/// A deterministic pseudo-random stream in [-0.8, 0.8).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 40) as f64 / (1u64 << 24) as f64 * 1.6 - 0.8) as f32
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// `.npy` v1 bytes of a float32 C-order array.
fn npy_bytes(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let shape_text = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    npy_with_header(
        &format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}"),
        data,
    )
}

fn npy_with_header(dict: &str, data: &[f32]) -> Vec<u8> {
    let mut header = dict.to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn write_npz(path: &Path, members: &[(String, Vec<usize>, Vec<f32>)]) -> TestResult {
    write_npz_with(path, members, zip::CompressionMethod::Deflated)
}

fn write_npz_with(
    path: &Path,
    members: &[(String, Vec<usize>, Vec<f32>)],
    method: zip::CompressionMethod,
) -> TestResult {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path)?);
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, shape, data) in members {
        zip.start_file(format!("{name}.npy"), options)?;
        zip.write_all(&npy_bytes(shape, data))?;
    }
    zip.finish()?;
    Ok(())
}

/// One GRU direction, f64, for the reference.
#[derive(Clone)]
struct Gru {
    d: usize,
    w: Vec<f32>,
    b: Vec<f32>,
    u: Vec<f32>,
    wx: Vec<f32>,
    bx: Vec<f32>,
    ux: Vec<f32>,
}

impl Gru {
    fn random(rng: &mut Lcg, d: usize) -> Self {
        Self {
            d,
            w: rng.vec(DIM_WORD * 2 * d),
            b: rng.vec(2 * d),
            u: rng.vec(d * 2 * d),
            wx: rng.vec(DIM_WORD * d),
            bx: rng.vec(d),
            ux: rng.vec(d * d),
        }
    }

    fn members(&self, prefix: &str) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let d = self.d;
        vec![
            (format!("{prefix}_W"), vec![DIM_WORD, 2 * d], self.w.clone()),
            (format!("{prefix}_b"), vec![2 * d], self.b.clone()),
            (format!("{prefix}_U"), vec![d, 2 * d], self.u.clone()),
            (format!("{prefix}_Wx"), vec![DIM_WORD, d], self.wx.clone()),
            (format!("{prefix}_bx"), vec![d], self.bx.clone()),
            (format!("{prefix}_Ux"), vec![d, d], self.ux.clone()),
        ]
    }

    /// The golden recipe, step by step in f64.
    fn final_state(&self, inputs: &[Vec<f64>]) -> Vec<f64> {
        let d = self.d;
        let g = |v: &[f32], i: usize| f64::from(v[i]);
        let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
        let mut h = vec![0.0f64; d];
        for x in inputs {
            let mut a = vec![0.0f64; 2 * d];
            for (j, aj) in a.iter_mut().enumerate() {
                let mut s = g(&self.b, j);
                for (i, xi) in x.iter().enumerate() {
                    s += xi * g(&self.w, i * 2 * d + j);
                }
                for (k, hk) in h.iter().enumerate() {
                    s += hk * g(&self.u, k * 2 * d + j);
                }
                *aj = s;
            }
            let mut next = vec![0.0f64; d];
            for j in 0..d {
                let r = sigmoid(a[j]);
                let u = sigmoid(a[d + j]);
                let mut hux = 0.0;
                for (k, hk) in h.iter().enumerate() {
                    hux += hk * g(&self.ux, k * d + j);
                }
                let mut s = g(&self.bx, j);
                for (i, xi) in x.iter().enumerate() {
                    s += xi * g(&self.wx, i * d + j);
                }
                let c = (s + r * hux).tanh();
                next[j] = u * h[j] + (1.0 - u) * c;
            }
            h = next;
        }
        h
    }
}

struct Model {
    dir: tempfile::TempDir,
    utable: Vec<f32>,
    btable: Vec<f32>,
    uni: Gru,
    fwd: Gru,
    bwd: Gru,
}

impl Model {
    fn write() -> Result<Self, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut rng = Lcg(42);
        let utable = rng.vec(WORDS.len() * DIM_WORD);
        let btable = rng.vec(WORDS.len() * DIM_WORD);
        let uni = Gru::random(&mut rng, UNI);
        let fwd = Gru::random(&mut rng, BI);
        let bwd = Gru::random(&mut rng, BI);
        std::fs::write(dir.path().join("dictionary.txt"), WORDS.join("\n") + "\n")?;
        // The plain-float32 tables under the converted names the docs' recipe writes.
        std::fs::write(
            dir.path().join("utable_f32.npy"),
            npy_bytes(&[WORDS.len(), DIM_WORD], &utable),
        )?;
        std::fs::write(
            dir.path().join("btable.npy"),
            npy_bytes(&[WORDS.len(), DIM_WORD], &btable),
        )?;
        // Decoder parameters that the encoder must ignore.
        let decoder = vec![
            ("Wemb".to_string(), vec![WORDS.len(), DIM_WORD], rng.vec(60)),
            ("decoder_W".to_string(), vec![2, 3], rng.vec(6)),
        ];
        let mut uni_members = uni.members("encoder");
        uni_members.extend(decoder.clone());
        write_npz(&dir.path().join("uni_skip.npz"), &uni_members)?;
        let mut bi_members = decoder;
        bi_members.extend(fwd.members("encoder"));
        bi_members.extend(bwd.members("encoder_r"));
        write_npz(&dir.path().join("bi_skip.npz"), &bi_members)?;
        Ok(Self {
            dir,
            utable,
            btable,
            uni,
            fwd,
            bwd,
        })
    }

    fn encoder(&self, variant: SkipThoughtVariant) -> Result<SkipThoughtEncoder, EmbedError> {
        SkipThoughtEncoder::load(&SkipThoughtConfig::new(self.dir.path(), variant))
    }

    fn rows(table: &[f32], ids: &[usize]) -> Vec<Vec<f64>> {
        ids.iter()
            .map(|&i| {
                table[i * DIM_WORD..(i + 1) * DIM_WORD]
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect()
            })
            .collect()
    }

    /// Golden vector of a token-id sequence.
    fn golden(&self, variant: SkipThoughtVariant, ids: &[usize]) -> Vec<f64> {
        let normalise = |v: Vec<f64>| {
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.into_iter().map(|x| x / n).collect::<Vec<_>>()
        };
        let uni = normalise(self.uni.final_state(&Self::rows(&self.utable, ids)));
        let reversed: Vec<usize> = ids.iter().rev().copied().collect();
        let mut bi = self.fwd.final_state(&Self::rows(&self.btable, ids));
        bi.extend(self.bwd.final_state(&Self::rows(&self.btable, &reversed)));
        let bi = normalise(bi);
        match variant {
            SkipThoughtVariant::Uni => uni,
            SkipThoughtVariant::Bi => bi,
            SkipThoughtVariant::Combine => uni.into_iter().chain(bi).collect(),
        }
    }
}

fn id(word: &str) -> usize {
    WORDS.iter().position(|w| *w == word).unwrap_or(usize::MAX)
}

fn ids(words: &[&str]) -> Vec<usize> {
    words.iter().map(|w| id(w)).collect()
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: width");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() < 2e-5,
            "{what}: dim {i}: got {g}, want {w}\n got {got:?}\nwant {want:?}"
        );
    }
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

const TEXTS: [&str; 4] = [
    "Don't stop.",
    "The dog runs, the cat runs.",
    "cat",
    "zebra cat",
];

fn text_ids() -> Vec<Vec<usize>> {
    vec![
        ids(&["Do", "n't", "stop", "."]),
        ids(&["The", "dog", "runs", ",", "the", "cat", "runs", "."]),
        ids(&["cat"]),
        ids(&["UNK", "cat"]),
    ]
}

#[test]
fn all_variants_match_the_scalar_recipe() -> TestResult {
    let model = Model::write()?;
    for (variant, dim) in [
        (SkipThoughtVariant::Uni, UNI),
        (SkipThoughtVariant::Bi, 2 * BI),
        (SkipThoughtVariant::Combine, UNI + 2 * BI),
    ] {
        let enc = model.encoder(variant)?;
        assert_eq!(enc.dim(), dim);
        let id = enc.identity();
        assert_eq!(id.name, format!("skipthought-{}-v1", variant.as_str()));
        assert_eq!(id.weights_sha256.as_ref().map(String::len), Some(64));
        let batch = enc.encode_batch(&TEXTS)?;
        assert_eq!(batch.dim, dim);
        assert!(batch.truncated.is_empty());
        for (i, want_ids) in text_ids().iter().enumerate() {
            let row = batch.row(i).ok_or("missing row")?;
            assert_close(
                row,
                &model.golden(variant, want_ids),
                &format!("{variant:?} #{i}"),
            );
            match variant {
                SkipThoughtVariant::Combine => {
                    assert!((norm(&row[..UNI]) - 1.0).abs() < 1e-5);
                    assert!((norm(&row[UNI..]) - 1.0).abs() < 1e-5);
                }
                _ => assert!((norm(row) - 1.0).abs() < 1e-5),
            }
        }
    }
    Ok(())
}

#[test]
fn identities_differ_between_variants() -> TestResult {
    let model = Model::write()?;
    let uni = model.encoder(SkipThoughtVariant::Uni)?;
    let bi = model.encoder(SkipThoughtVariant::Bi)?;
    let combine = model.encoder(SkipThoughtVariant::Combine)?;
    assert_ne!(uni.identity().weights_sha256, bi.identity().weights_sha256);
    assert_ne!(
        uni.identity().weights_sha256,
        combine.identity().weights_sha256
    );
    assert_ne!(uni.identity().fingerprint(), bi.identity().fingerprint());
    Ok(())
}

#[test]
fn tokenisation_is_treebank_style_and_case_sensitive() {
    assert_eq!(tokenize("Don't stop."), ["Do", "n't", "stop", "."]);
    assert_eq!(
        tokenize("The dog runs, the cat runs."),
        ["The", "dog", "runs", ",", "the", "cat", "runs", "."]
    );
    assert_eq!(
        tokenize("Is it big? No. It's tiny!"),
        ["Is", "it", "big", "?", "No", ".", "It", "'s", "tiny", "!"]
    );
}

#[test]
fn unknown_words_and_case() -> TestResult {
    let model = Model::write()?;
    let enc = model.encoder(SkipThoughtVariant::Combine)?;
    assert_eq!(
        enc.token_ids("zebra THE The the"),
        [id("UNK"), id("UNK"), id("The"), id("the")]
            .iter()
            .map(|&i| i as u32)
            .collect::<Vec<_>>()
    );
    let b = enc.encode_batch(&["zebra cat", "UNK cat", "The dog", "the dog", "THE dog"])?;
    assert_eq!(b.row(0), b.row(1), "unknown word = UNK row");
    assert_ne!(b.row(2), b.row(3), "lookup is case-sensitive");
    assert_close(
        b.row(4).ok_or("row")?,
        &model.golden(SkipThoughtVariant::Combine, &ids(&["UNK", "dog"])),
        "THE → UNK",
    );
    Ok(())
}

#[test]
fn batched_equals_single_for_every_batch_size() -> TestResult {
    let model = Model::write()?;
    let mut singles = Vec::new();
    let enc = model.encoder(SkipThoughtVariant::Combine)?;
    for t in TEXTS {
        singles.push(enc.encode_batch(&[t])?.data);
    }
    for batch_size in [1, 2, 3, 64] {
        let mut config = SkipThoughtConfig::new(model.dir.path(), SkipThoughtVariant::Combine);
        config.batch_size = batch_size;
        let enc = SkipThoughtEncoder::load(&config)?;
        let batch = enc.encode_batch(&TEXTS)?;
        for (i, single) in singles.iter().enumerate() {
            let row = batch.row(i).ok_or("row")?;
            let diff = row
                .iter()
                .zip(single)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff < 1e-5,
                "batch {batch_size}, text {i}: differs by {diff}"
            );
        }
    }
    Ok(())
}

/// The token budget only changes how texts are grouped, never a vector: budgets smaller than
/// one text (each alone), a few texts, and all of them.
#[test]
fn token_budget_never_changes_vectors() -> TestResult {
    let model = Model::write()?;
    let reference = model
        .encoder(SkipThoughtVariant::Combine)?
        .encode_batch(&TEXTS)?;
    for batch_tokens in [1, 7, 12, 10_000] {
        let mut config = SkipThoughtConfig::new(model.dir.path(), SkipThoughtVariant::Combine);
        config.batch_tokens = batch_tokens;
        let batch = SkipThoughtEncoder::load(&config)?.encode_batch(&TEXTS)?;
        let diff = batch
            .data
            .iter()
            .zip(&reference.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff < 1e-5,
            "batch_tokens {batch_tokens}: differs by {diff}"
        );
    }
    let mut config = SkipThoughtConfig::new(model.dir.path(), SkipThoughtVariant::Combine);
    config.batch_tokens = 0;
    let err = SkipThoughtEncoder::load(&config)
        .err()
        .ok_or("zero budget accepted")?;
    assert!(err.to_string().contains("batch_tokens"), "{err}");
    Ok(())
}

#[test]
fn truncation_is_reported() -> TestResult {
    let model = Model::write()?;
    let mut config = SkipThoughtConfig::new(model.dir.path(), SkipThoughtVariant::Uni);
    config.max_tokens = Some(2);
    let enc = SkipThoughtEncoder::load(&config)?;
    let b = enc.encode_batch(&["cat", "Don't stop."])?;
    assert_eq!(b.truncated, [1]);
    assert_close(
        b.row(1).ok_or("row")?,
        &model.golden(SkipThoughtVariant::Uni, &ids(&["Do", "n't"])),
        "truncated",
    );
    Ok(())
}

#[test]
fn empty_text_is_an_error() -> TestResult {
    let model = Model::write()?;
    let enc = model.encoder(SkipThoughtVariant::Bi)?;
    let r = enc.encode_batch(&["cat", "  \n "]);
    assert!(
        matches!(r, Err(EmbedError::EmptyText { index: 1 })),
        "{r:?}"
    );
    Ok(())
}

#[test]
fn shape_mismatch_names_the_tensor_and_both_shapes() -> TestResult {
    let model = Model::write()?;
    let mut bad = model.uni.clone();
    bad.u = vec![0.0; UNI * 5];
    let mut members = bad.members("encoder");
    members[2].1 = vec![UNI, 5];
    write_npz(&model.dir.path().join("uni_skip.npz"), &members)?;
    match model.encoder(SkipThoughtVariant::Uni) {
        Err(e @ EmbedError::TensorShape { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("uni_skip.npz"), "{msg}");
            assert!(msg.contains("encoder_U.npy"), "{msg}");
            assert!(msg.contains("[4, 5]") && msg.contains("[4, 8]"), "{msg}");
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    // bi-skip still loads: it does not use that archive.
    assert!(model.encoder(SkipThoughtVariant::Bi).is_ok());
    Ok(())
}

#[test]
fn missing_files_are_listed() -> TestResult {
    let model = Model::write()?;
    std::fs::remove_file(model.dir.path().join("bi_skip.npz"))?;
    std::fs::remove_file(model.dir.path().join("btable.npy"))?;
    assert!(model.encoder(SkipThoughtVariant::Uni).is_ok());
    match model.encoder(SkipThoughtVariant::Combine) {
        Err(e @ EmbedError::SkipThoughtFilesMissing { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("bi_skip.npz") && msg.contains("btable"),
                "{msg}"
            );
            assert!(msg.contains("dictionary.txt"), "{msg}");
        }
        other => panic!("expected missing files, got {other:?}"),
    }
    Ok(())
}

#[test]
fn pickled_object_tables_are_refused_with_the_conversion_hint() -> TestResult {
    let model = Model::write()?;
    std::fs::remove_file(model.dir.path().join("utable_f32.npy"))?;
    std::fs::write(
        model.dir.path().join("utable.npy"),
        npy_with_header(
            "{'descr': '|O', 'fortran_order': False, 'shape': (12,), }",
            &[],
        ),
    )?;
    match model.encoder(SkipThoughtVariant::Uni) {
        Err(e @ EmbedError::Format(FormatError::Npy { .. })) => {
            assert!(e.to_string().contains("convert"), "{e}");
        }
        other => panic!("expected an npy error, got {other:?}"),
    }
    Ok(())
}

#[test]
fn npy_reader_round_trips() -> TestResult {
    let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
    let bytes = npy_bytes(&[2, 3], &data);
    let a = read_npy::<f32, _>(bytes.as_slice(), Path::new("mem"), "x")?;
    assert_eq!(
        a,
        NpyArray {
            shape: vec![2, 3],
            data
        }
    );
    let short = &bytes[..bytes.len() - 4];
    assert!(matches!(
        read_npy::<f32, _>(short, Path::new("mem"), "x"),
        Err(FormatError::Npy { .. })
    ));
    Ok(())
}

/// Speed at the real sizes (620-d words, uni 2400, bi 2×1200) with random weights and a
/// 1,000-word dictionary: `cargo test -p chatpainter-model --test text -- --ignored
/// --nocapture`.
#[test]
#[ignore = "benchmark; writes ~140 MB of random weights"]
fn speed_at_real_sizes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (dw, du, db) = (620usize, 2400usize, 1200usize);
    let mut rng = Lcg(7);
    let mut scaled = |n: usize, s: f32| rng.vec(n).into_iter().map(|v| v * s).collect::<Vec<_>>();
    let mut words: Vec<String> = (0..998).map(|i| format!("w{i}")).collect();
    words.push("UNK".into());
    words.push("?".into());
    std::fs::write(dir.path().join("dictionary.txt"), words.join("\n"))?;
    for name in ["utable_f32.npy", "btable_f32.npy"] {
        std::fs::write(
            dir.path().join(name),
            npy_bytes(&[words.len(), dw], &scaled(words.len() * dw, 0.1)),
        )?;
    }
    let mut gru = |prefix: &str, d: usize| {
        vec![
            (
                format!("{prefix}_W"),
                vec![dw, 2 * d],
                scaled(dw * 2 * d, 0.05),
            ),
            (format!("{prefix}_b"), vec![2 * d], scaled(2 * d, 0.05)),
            (
                format!("{prefix}_U"),
                vec![d, 2 * d],
                scaled(d * 2 * d, 0.02),
            ),
            (format!("{prefix}_Wx"), vec![dw, d], scaled(dw * d, 0.05)),
            (format!("{prefix}_bx"), vec![d], scaled(d, 0.05)),
            (format!("{prefix}_Ux"), vec![d, d], scaled(d * d, 0.02)),
        ]
    };
    let uni = gru("encoder", du);
    let mut bi = gru("encoder", db);
    bi.extend(gru("encoder_r", db));
    let stored = zip::CompressionMethod::Stored;
    write_npz_with(&dir.path().join("uni_skip.npz"), &uni, stored)?;
    write_npz_with(&dir.path().join("bi_skip.npz"), &bi, stored)?;
    let started = std::time::Instant::now();
    let enc = SkipThoughtEncoder::load(&SkipThoughtConfig::new(
        dir.path(),
        SkipThoughtVariant::Combine,
    ))?;
    eprintln!("load: {:.2} s", started.elapsed().as_secs_f64());
    let turn = |i: usize| {
        format!(
            "w{} w{} w{} w{}? w{} w{}",
            i % 997,
            i * 7 % 997,
            3,
            4,
            5,
            i % 13
        )
    };
    let turns: Vec<String> = (0..256).map(turn).collect();
    let dialogues: Vec<String> = (0..32)
        .map(|d| {
            (0..13)
                .map(|t| turn(d * 13 + t))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    for (what, texts) in [
        ("short turn (7 tokens)", &turns),
        ("dialogue (91 tokens)", &dialogues),
    ] {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let b = enc.encode_batch(&refs)?;
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(b.len(), refs.len());
        eprintln!(
            "combine-skip, {what}: {} texts in {secs:.2} s = {:.1} ms/text, {:.1} texts/s",
            refs.len(),
            1000.0 * secs / refs.len() as f64,
            refs.len() as f64 / secs
        );
    }
    Ok(())
}
