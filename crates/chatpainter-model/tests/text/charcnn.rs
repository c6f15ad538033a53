//! Import of StackGAN's char-CNN-RNN pickles from fixtures written by
//! `tests/fixtures/charcnn/make_fixtures.py`: real numpy pickles of protocols 0–5 (one array,
//! lists of arrays, float64, big-endian, bytes keys) and hand-written Python-2 pickles
//! (protocol 0 `STRING`, protocol 2 `BINSTRING` raw data and byte-string keys).

use std::path::{Path, PathBuf};

use chatpainter_model::text::charcnn::{
    CharCnnRnnEmbeddings, image_id_from_filename, import_char_cnn_rnn, read_embeddings_pickle,
};
use chatpainter_model::text::{EmbedError, import_char_cnn_rnn_dir};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/charcnn")
        .join(name)
}

/// The generator's values: `embeddings[i, c, d] = i + c / 10 + d / 100`.
fn expected(i: usize, c: usize) -> Vec<f32> {
    (0..4)
        .map(|d| (i as f64 + c as f64 / 10.0 + d as f64 / 100.0) as f32)
        .collect()
}

const IDS: [i64; 3] = [9, 25, 581_929];

fn check(e: &CharCnnRnnEmbeddings) {
    assert_eq!(e.dim, 4);
    assert_eq!(e.order, IDS);
    assert_eq!(e.len(), 3);
    for (i, id) in IDS.iter().enumerate() {
        let caps = &e.by_image[id];
        assert_eq!(caps.len(), 2, "image {id}");
        for (c, v) in caps.iter().enumerate() {
            assert_eq!(v, &expected(i, c), "image {id} caption {c}");
        }
    }
}

#[test]
fn every_protocol_imports() -> TestResult {
    for p in 0..=5 {
        let e = import_char_cnn_rnn(
            &fixture(&format!("p{p}_emb.pickle")),
            &fixture(&format!("p{p}_names.pickle")),
        )
        .map_err(|e| format!("protocol {p}: {e}"))?;
        check(&e);
    }
    Ok(())
}

#[test]
fn python2_pickles_import() -> TestResult {
    for p in [0, 2] {
        let e = import_char_cnn_rnn(
            &fixture(&format!("py2_p{p}_emb.pickle")),
            &fixture(&format!("py2_p{p}_names.pickle")),
        )
        .map_err(|e| format!("python 2 protocol {p}: {e}"))?;
        check(&e);
    }
    Ok(())
}

#[test]
fn lists_float64_big_endian_and_bytes_keys() -> TestResult {
    for (emb, names) in [
        ("list_p2_emb.pickle", "p2_names.pickle"),
        ("list_p5_emb.pickle", "p5_names.pickle"),
        ("f64_p2_emb.pickle", "bytes_p2_names.pickle"),
        ("be_p2_emb.pickle", "bytes_p4_names.pickle"),
    ] {
        let e = import_char_cnn_rnn(&fixture(emb), &fixture(names))
            .map_err(|e| format!("{emb} + {names}: {e}"))?;
        check(&e);
    }
    Ok(())
}

#[test]
fn raw_array_shapes() -> TestResult {
    let arrays = read_embeddings_pickle(&fixture("p3_emb.pickle"))?;
    assert_eq!(arrays.len(), 3);
    assert!(arrays.iter().all(|a| a.shape == [2, 4]));
    Ok(())
}

#[test]
fn count_mismatch_is_an_error() {
    let r = import_char_cnn_rnn(&fixture("p2_emb.pickle"), &fixture("short_names.pickle"));
    match r {
        Err(EmbedError::Pickle { message, .. }) => {
            assert!(
                message.contains("3 images") && message.contains("2 filenames"),
                "{message}"
            );
        }
        other => panic!("expected a count mismatch error, got {other:?}"),
    }
}

#[test]
fn malformed_key_is_an_error() {
    let r = import_char_cnn_rnn(&fixture("p2_emb.pickle"), &fixture("bad_names.pickle"));
    match r {
        Err(EmbedError::Pickle { message, .. }) => {
            assert!(message.contains("COCO_train2014_"), "{message}");
        }
        other => panic!("expected a malformed key error, got {other:?}"),
    }
}

#[test]
fn swapped_or_missing_files_are_errors_not_panics() {
    // The filenames pickle where the embeddings belong: not an array.
    let r = import_char_cnn_rnn(&fixture("p2_names.pickle"), &fixture("p2_names.pickle"));
    assert!(matches!(r, Err(EmbedError::Pickle { .. })), "{r:?}");
    // Not a pickle at all.
    let r = import_char_cnn_rnn(&fixture("make_fixtures.py"), &fixture("p2_names.pickle"));
    assert!(matches!(r, Err(EmbedError::Pickle { .. })), "{r:?}");
    let r = import_char_cnn_rnn_dir(Path::new("/nonexistent/stackgan/train"));
    assert!(matches!(r, Err(EmbedError::Io { .. })), "{r:?}");
}

#[test]
fn image_ids_from_keys() {
    assert_eq!(
        image_id_from_filename("COCO_train2014_000000000009"),
        Some(9)
    );
    assert_eq!(
        image_id_from_filename("COCO_val2014_000000581929.jpg"),
        Some(581_929)
    );
    assert_eq!(image_id_from_filename("COCO_train2014_"), None);
    assert_eq!(image_id_from_filename(""), None);
    assert_eq!(image_id_from_filename("99999999999999999999999"), None);
}
