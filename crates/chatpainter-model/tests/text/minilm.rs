//! MiniLM and hashing encoder tests.
//!
//! The MiniLM tests need the real weights. They look in `$CHATPAINTER_MODELS/all-MiniLM-L6-v2`
//! and then `<workspace>/data/models/all-MiniLM-L6-v2`; when neither exists they print
//! "skipped: weights not found, run cargo xtask fetch-models" and pass (tests never
//! download; CI fetches the weights first). Everything else runs everywhere, using tiny
//! weights written by the test itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::tensor::{Device, Int, Tensor, TensorData};
use chatpainter_model::text::{
    BertConfig, BertModel, EmbedError, HashingEncoder, MINILM_DIR_NAME, MiniLmConfig,
    MiniLmEncoder, TextEncoder, dialogue_text,
};
use safetensors::{Dtype, tensor::TensorView};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn weights_dir() -> Option<PathBuf> {
    let from_env = std::env::var_os("CHATPAINTER_MODELS")
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join(MINILM_DIR_NAME));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/models")
        .join(MINILM_DIR_NAME);
    from_env
        .into_iter()
        .chain([workspace])
        .find(|d| d.join("model.safetensors").is_file())
}

/// The real encoder, loaded once for all tests (loading reads 90 MB and hashes it).
fn minilm() -> Option<&'static MiniLmEncoder> {
    static ENCODER: OnceLock<Option<MiniLmEncoder>> = OnceLock::new();
    ENCODER
        .get_or_init(|| {
            let dir = weights_dir()?;
            match MiniLmEncoder::load(&MiniLmConfig::new(dir)) {
                Ok(enc) => Some(enc),
                Err(e) => panic!("weights present but loading failed: {e}"),
            }
        })
        .as_ref()
}

macro_rules! minilm_or_skip {
    () => {
        match minilm() {
            Some(enc) => enc,
            None => {
                eprintln!("skipped: weights not found, run cargo xtask fetch-models");
                return Ok(());
            }
        }
    };
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn norm(a: &[f32]) -> f32 {
    a.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[test]
fn minilm_matches_sentence_transformers_reference() -> TestResult {
    let enc = minilm_or_skip!();
    // Reference values computed with sentence-transformers 2.x (PyTorch, fp32) on the same files.
    let batch = enc.encode_batch(&["This is an example sentence", "Each sentence is converted"])?;
    let want_a = [
        0.0676569, 0.0634960, 0.0487131, 0.0793050, 0.0374480, 0.0026528,
    ];
    let want_b = [
        0.0864386, 0.1027626, 0.0053945, 0.0020444, -0.0099634, 0.0253855,
    ];
    let a = batch.row(0).ok_or("row 0")?;
    let b = batch.row(1).ok_or("row 1")?;
    assert_eq!(a.len(), 384);
    assert!(max_abs_diff(&a[..6], &want_a) < 1e-4, "{:?}", &a[..6]);
    assert!(max_abs_diff(&b[..6], &want_b) < 1e-4, "{:?}", &b[..6]);
    assert!(
        (cosine(a, b) - 0.40456).abs() < 1e-4,
        "cosine {}",
        cosine(a, b)
    );
    assert!((norm(a) - 1.0).abs() < 1e-5);
    assert!(batch.truncated.is_empty());
    Ok(())
}

#[test]
fn minilm_batched_equals_one_by_one() -> TestResult {
    let enc = minilm_or_skip!();
    let turns = [
        ("how many people are there", "2"),
        (
            "are they young or old",
            "they look like young adults, maybe in their twenties",
        ),
        ("is it sunny", "yes"),
        ("what color is the car", "red"),
        ("any animals", "no"),
        (
            "is this in a city",
            "it looks like a busy downtown street with tall buildings",
        ),
        ("can you see the sky", "a little, it is blue"),
        ("are there trees", "a few on the left"),
        ("is anyone holding something", "the woman holds an umbrella"),
        ("any signs", "one stop sign"),
    ];
    let dialogue = dialogue_text(&turns);
    let texts = [
        "yes",
        dialogue.as_str(),
        "is it sunny? yes",
        "what color is the car? red, with a white stripe along the side",
        "a man riding a wave on top of a surfboard",
        "no",
    ];
    let batched = enc.encode_batch(&texts)?;
    for (i, text) in texts.iter().enumerate() {
        let single = enc.encode_batch(&[text])?;
        let d = max_abs_diff(batched.row(i).ok_or("row")?, &single.data);
        assert!(d < 1e-5, "text #{i}: batched vs single differ by {d}");
    }
    Ok(())
}

#[test]
fn minilm_refuses_empty_text() -> TestResult {
    let enc = minilm_or_skip!();
    let r = enc.encode_batch(&["fine", "", "also fine"]);
    assert!(
        matches!(r, Err(EmbedError::EmptyText { index: 1 })),
        "{r:?}"
    );
    let r = enc.encode_batch(&[" \n\t"]);
    assert!(
        matches!(r, Err(EmbedError::EmptyText { index: 0 })),
        "{r:?}"
    );
    Ok(())
}

#[test]
fn minilm_handles_non_ascii() -> TestResult {
    let enc = minilm_or_skip!();
    let texts = [
        "Ein Café in München – très bien! 😀",
        "日本語のテキスト",
        "ÉLÉPHANT",
    ];
    let batch = enc.encode_batch(&texts)?;
    for row in batch.rows() {
        assert!(row.iter().all(|x| x.is_finite()));
        assert!((norm(row) - 1.0).abs() < 1e-5);
    }
    // The uncased BERT normaliser lower-cases and strips accents.
    let pair = enc.encode_batch(&["ÉLÉPHANT", "elephant"])?;
    let d = max_abs_diff(pair.row(0).ok_or("row")?, pair.row(1).ok_or("row")?);
    assert!(d < 1e-6, "accents/case should not matter, diff {d}");
    Ok(())
}

#[test]
fn minilm_truncates_long_texts_and_counts_them() -> TestResult {
    let enc = minilm_or_skip!();
    let head = "the quick brown fox jumps over the lazy dog ".repeat(30);
    let long_a = format!("{head} and then it rains");
    let long_b = format!("{head} but the sun comes out again");
    let texts = ["short text", long_a.as_str(), long_b.as_str()];
    let batch = enc.encode_batch(&texts)?;
    assert_eq!(batch.truncated, vec![1, 2]);
    assert_eq!(batch.truncated_count(), 2);
    // Both keep only their first 126 word pieces, which are identical.
    let d = max_abs_diff(batch.row(1).ok_or("row")?, batch.row(2).ok_or("row")?);
    assert!(d < 1e-5, "truncated texts should coincide, diff {d}");
    assert_eq!(enc.max_tokens(), Some(128));
    Ok(())
}

#[test]
fn minilm_identity() -> TestResult {
    let enc = minilm_or_skip!();
    let id = enc.identity();
    assert_eq!(id.name, "all-MiniLM-L6-v2");
    assert_eq!(id.dim, 384);
    assert_eq!(
        id.weights_sha256.as_deref(),
        Some(chatpainter_model::text::MINILM_SAFETENSORS_SHA256)
    );
    assert!(id.normalization.contains("max_tokens=128"));
    assert!(enc.encode_batch(&[])?.is_empty());
    Ok(())
}

// ---- tiny weights written by the test: loader and error paths, no download needed ----

fn tiny_config() -> BertConfig {
    BertConfig {
        vocab_size: 11,
        hidden_size: 8,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 12,
        max_position_embeddings: 16,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        hidden_act: "gelu".into(),
    }
}

/// PyTorch-named tensors of a BERT with `config`, filled with a fixed pseudo-random sequence;
/// `override_shape` replaces one tensor's shape.
fn tiny_state_dict(
    config: &BertConfig,
    override_shape: Option<(&str, Vec<usize>)>,
) -> Vec<(String, Vec<usize>)> {
    let (h, f) = (config.hidden_size, config.intermediate_size);
    let mut t = vec![
        (
            "embeddings.word_embeddings.weight".to_string(),
            vec![config.vocab_size, h],
        ),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![config.max_position_embeddings, h],
        ),
        (
            "embeddings.token_type_embeddings.weight".into(),
            vec![config.type_vocab_size, h],
        ),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
        ("pooler.dense.weight".into(), vec![h, h]),
    ];
    for i in 0..config.num_hidden_layers {
        let p = format!("encoder.layer.{i}");
        for (name, out_dim, in_dim) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", f, h),
            ("output.dense", h, f),
        ] {
            t.push((format!("{p}.{name}.weight"), vec![out_dim, in_dim]));
            t.push((format!("{p}.{name}.bias"), vec![out_dim]));
        }
        for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
            t.push((format!("{p}.{name}.weight"), vec![h]));
            t.push((format!("{p}.{name}.bias"), vec![h]));
        }
    }
    if let Some((name, shape)) = override_shape {
        for (n, s) in &mut t {
            if n == name {
                *s = shape.clone();
            }
        }
    }
    t
}

fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>)]) -> TestResult {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let buffers: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, shape)| {
            let n: usize = shape.iter().product();
            (0..n)
                .flat_map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1);
                    let v = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5;
                    v.to_le_bytes()
                })
                .collect()
        })
        .collect();
    let views = tensors
        .iter()
        .zip(&buffers)
        .map(|((name, shape), data)| {
            Ok((
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), data)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    std::fs::write(path, safetensors::serialize(views, Some(metadata))?)?;
    Ok(())
}

#[test]
fn tiny_weights_load_and_embed_unit_vectors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("model.safetensors");
    let config = tiny_config();
    write_safetensors(&path, &tiny_state_dict(&config, None))?;
    let device = Device::flex();
    let model = BertModel::from_safetensors_file(&path, &config, &device)?;

    // Row 0 is 5 tokens, row 1 is 3 tokens + 2 padding.
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(vec![1i64, 4, 7, 2, 9, 1, 3, 2, 0, 0], [2, 5]),
        &device,
    );
    let mask = Tensor::<2>::from_data(
        TensorData::new(vec![1.0f32, 1., 1., 1., 1., 1., 1., 1., 0., 0.], [2, 5]),
        &device,
    );
    let out = model.embed(ids, mask).into_data().try_into_vec::<f32>()?;
    assert_eq!(out.len(), 16);
    for row in out.chunks(8) {
        assert!((norm(row) - 1.0).abs() < 1e-5, "{row:?}");
    }
    // Padding must not change row 1: compare with the unpadded 3-token input.
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 3, 2], [1, 3]), &device);
    let mask = Tensor::<2>::ones([1, 3], &device);
    let single = model.embed(ids, mask).into_data().try_into_vec::<f32>()?;
    let d = max_abs_diff(&out[8..], &single);
    assert!(d < 1e-5, "padding changed the vector by {d}");
    Ok(())
}

#[test]
fn wrong_shape_names_the_tensor_and_both_shapes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("model.safetensors");
    let config = tiny_config();
    let bad = "encoder.layer.1.intermediate.dense.weight";
    write_safetensors(&path, &tiny_state_dict(&config, Some((bad, vec![8, 12]))))?;
    let err = BertModel::from_safetensors_file(&path, &config, &Device::flex())
        .err()
        .ok_or("a wrong shape must be an error")?;
    match &err {
        EmbedError::TensorShape {
            name,
            expected,
            found,
            ..
        } => {
            assert_eq!(name, bad);
            assert_eq!(expected, &vec![12, 8]);
            assert_eq!(found, &vec![8, 12]);
        }
        other => panic!("unexpected error {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(bad) && msg.contains("[8, 12]") && msg.contains("[12, 8]"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn missing_tensor_and_garbage_file_are_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("model.safetensors");
    let config = tiny_config();
    let mut tensors = tiny_state_dict(&config, None);
    tensors.retain(|(n, _)| n != "embeddings.LayerNorm.bias");
    write_safetensors(&path, &tensors)?;
    let r = BertModel::from_safetensors_file(&path, &config, &Device::flex());
    assert!(
        matches!(&r, Err(EmbedError::TensorMissing { name, .. }) if name == "embeddings.LayerNorm.bias"),
        "{r:?}"
    );
    std::fs::write(&path, b"not a safetensors file")?;
    let r = BertModel::from_safetensors_file(&path, &config, &Device::flex());
    assert!(matches!(r, Err(EmbedError::Safetensors { .. })), "{r:?}");
    Ok(())
}

#[test]
fn missing_weights_say_how_to_get_them() -> TestResult {
    let dir = tempfile::tempdir()?;
    let err = MiniLmEncoder::load(&MiniLmConfig::new(dir.path().join("nope")))
        .err()
        .ok_or("missing weights must be an error")?;
    assert!(matches!(err, EmbedError::WeightsNotFound { .. }), "{err:?}");
    assert!(
        err.to_string().contains("cargo xtask fetch-models"),
        "{err}"
    );
    Ok(())
}

#[test]
fn wrong_weights_file_is_refused_by_hash() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = tiny_config();
    write_safetensors(
        &dir.path().join("model.safetensors"),
        &tiny_state_dict(&config, None),
    )?;
    // A valid MiniLM config so that loading gets as far as the weights' hash.
    let minilm_config = BertConfig::minilm_l6();
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&minilm_config)?,
    )?;
    std::fs::write(dir.path().join("tokenizer.json"), "{}")?;
    let err = MiniLmEncoder::load(&MiniLmConfig::new(dir.path()))
        .err()
        .ok_or("a wrong file must be refused")?;
    assert!(
        matches!(err, EmbedError::WeightsHashMismatch { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(chatpainter_model::text::MINILM_SAFETENSORS_SHA256)
    );
    Ok(())
}

#[test]
fn hashing_encoder_through_the_trait() -> TestResult {
    let enc: Box<dyn TextEncoder> = Box::new(HashingEncoder::new(1024)?);
    assert_eq!(enc.dim(), 1024);
    assert_eq!(enc.max_tokens(), None);
    let long = "word ".repeat(10_000);
    let batch = enc.encode_batch(&["a cat", "A  Cat", long.as_str()])?;
    assert_eq!(batch.len(), 3);
    assert_eq!(batch.row(0), batch.row(1));
    assert!(batch.truncated.is_empty());
    assert!(enc.encode_batch(&[])?.is_empty());
    assert_eq!(enc.identity().name, "hashing-v1");
    assert_eq!(enc.identity().weights_sha256, None);
    Ok(())
}

#[test]
fn minilm_token_budget_never_changes_vectors() -> TestResult {
    let enc = minilm_or_skip!();
    let dir = weights_dir().ok_or("weights")?;
    // Batches of at most 3 texts and 24 padded word pieces: every text of 9+ pieces alone.
    let mut cfg = MiniLmConfig::new(dir);
    cfg.batch_size = 3;
    cfg.batch_tokens = 24;
    let small = MiniLmEncoder::load(&cfg)?;
    let long = "is it sunny? yes, and the sky is blue with a few clouds ".repeat(3);
    let texts = [
        "no",
        "yes",
        long.as_str(),
        "a man riding a wave on top of a surfboard",
        "two",
        "what color is the car? red",
        "is it sunny? yes",
    ];
    let a = enc.encode_batch(&texts)?;
    let b = small.encode_batch(&texts)?;
    let d = max_abs_diff(&a.data, &b.data);
    assert!(d < 1e-5, "token budget changed vectors by {d}");
    Ok(())
}
