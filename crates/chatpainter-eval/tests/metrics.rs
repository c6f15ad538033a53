//! Integration tests of chatpainter-eval: Inception shapes, parameter counts, state_dict
//! names, weight loading round trip and its errors, npz files written the way numpy writes them.
//!
//! Expected parameter counts were derived independently of this crate: a Python transcription
//! of torchvision's `inception.py` layer table (conv in·out·kh·kw + 2·out BN affine per
//! `BasicConv2d`, plus fc) gives 23,834,568 without aux and 27,161,264 with aux; the latter equals
//! the `num_params` torchvision publishes in `Inception_V3_Weights.IMAGENET1K_V1.meta`. The
//! pytorch-fid FID network (1008-class fc with bias, no aux) gives 23,850,960. BatchNorm
//! channels: 17,216 (+896 in the aux head) → 2·17,216 running-statistics values.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::io::Write;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use chatpainter_eval::fid::{FidStatistics, frechet_distance};
use chatpainter_eval::weights::{
    Availability, load_inception, load_weights_into, pytorch_parameter_count,
    pytorch_tensor_shapes, save_pytorch_named_safetensors,
};
use chatpainter_eval::{Backbone, EvalError, InceptionConfig};
use chatpainter_formats::npy::{NpyArray, read_npz, write_npz};

const TV_NO_AUX: usize = 23_834_568;
const TV_AUX: usize = 27_161_264;
const FID_NET: usize = 23_850_960;
const BN_CHANNELS: usize = 17_216;
const BN_CHANNELS_AUX: usize = 896;

fn device() -> Device {
    Device::flex()
}

#[test]
fn parameter_counts_match_torchvision_and_pytorch_fid() {
    let d = device();
    let tv = InceptionConfig::new(Backbone::TorchvisionImagenet).init(&d);
    assert_eq!(pytorch_parameter_count(&tv), TV_NO_AUX);
    // Burn's num_params also counts running_mean / running_var.
    assert_eq!(tv.num_params(), TV_NO_AUX + 2 * BN_CHANNELS);
    let tv_aux = InceptionConfig::new(Backbone::TorchvisionImagenet)
        .with_aux_logits(true)
        .init(&d);
    assert_eq!(pytorch_parameter_count(&tv_aux), TV_AUX);
    assert_eq!(
        tv_aux.num_params(),
        TV_AUX + 2 * (BN_CHANNELS + BN_CHANNELS_AUX)
    );
    let tf = InceptionConfig::new(Backbone::TfInception2015)
        .with_aux_logits(true) // ignored: the TF graph has no aux head
        .init(&d);
    assert_eq!(pytorch_parameter_count(&tf), FID_NET);
}

#[test]
fn tensor_names_are_the_state_dict_names() {
    let d = device();
    let tv = InceptionConfig::new(Backbone::TorchvisionImagenet)
        .with_aux_logits(true)
        .init(&d);
    let shapes = pytorch_tensor_shapes(&tv);
    let expect = [
        ("Conv2d_1a_3x3.conv.weight", vec![32, 3, 3, 3]),
        ("Conv2d_1a_3x3.bn.weight", vec![32]),
        ("Conv2d_1a_3x3.bn.bias", vec![32]),
        ("Conv2d_1a_3x3.bn.running_mean", vec![32]),
        ("Conv2d_1a_3x3.bn.running_var", vec![32]),
        ("Mixed_5b.branch1x1.conv.weight", vec![64, 192, 1, 1]),
        ("Mixed_6b.branch7x7_2.conv.weight", vec![128, 128, 1, 7]),
        ("Mixed_7c.branch3x3dbl_3b.conv.weight", vec![384, 384, 3, 1]),
        ("AuxLogits.conv1.conv.weight", vec![768, 128, 5, 5]),
        ("AuxLogits.fc.weight", vec![1000, 768]),
        ("fc.weight", vec![1000, 2048]),
        ("fc.bias", vec![1000]),
    ];
    for (name, shape) in expect {
        assert_eq!(shapes.get(name), Some(&shape), "{name}");
    }
    // 94 BasicConv2d × 5 tensors + fc (2) + aux (2 BasicConv2d × 5 + fc 2) = 484 state_dict
    // entries without num_batches_tracked.
    assert_eq!(shapes.len(), 94 * 5 + 2 + 12);
    assert!(
        shapes
            .keys()
            .all(|k| !k.contains("gamma") && !k.contains("beta"))
    );
    assert_eq!(tv.Conv2d_1a_3x3.bn.epsilon, 0.001);
}

#[test]
fn torchvision_forward_shapes_and_safetensors_round_trip() {
    let d = device();
    let cfg = InceptionConfig::new(Backbone::TorchvisionImagenet);
    let a = cfg.init(&d);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inception_tv.safetensors");
    save_pytorch_named_safetensors(&a, &path).unwrap();

    let mut b = cfg.init(&d);
    // Fresh random init differs from `a` before loading...
    let before = (a.fc.weight.val() - b.fc.weight.val())
        .abs()
        .max()
        .into_scalar::<f32>();
    assert!(before > 0.0);
    let prov = load_weights_into(&mut b, &path, &cfg).unwrap();
    assert_eq!(prov.sha256.len(), 64);
    assert_eq!(prov.tensors_applied, 94 * 5 + 2);
    assert!(!prov.matches_reference_prefix);

    let x = Tensor::<4>::random([2, 3, 299, 299], Distribution::Uniform(-1.0, 1.0), &d);
    let oa = a.forward(x.clone());
    let ob = b.forward(x);
    assert_eq!(oa.pool3.dims(), [2, 2048]);
    assert_eq!(oa.logits.dims(), [2, 1000]);
    let scale = oa.logits.clone().abs().max().into_scalar::<f32>();
    let diff = (oa.logits - ob.logits).abs().max().into_scalar::<f32>();
    assert!(scale > 0.0);
    assert!(diff <= 1e-6 * scale, "diff {diff}, scale {scale}");
    let pdiff = (oa.pool3 - ob.pool3).abs().max().into_scalar::<f32>();
    assert!(pdiff == 0.0 || pdiff < 1e-6 * scale);
}

#[test]
fn tf_graph_forward_shapes_and_bias_free_logits() {
    let d = device();
    let m = InceptionConfig::new(Backbone::TfInception2015).init(&d);
    assert!(m.Mixed_7c.pool_is_max && !m.Mixed_7b.pool_is_max);
    assert!(!m.Mixed_5b.pool.count_include_pad && !m.Mixed_7b.avg_pool.count_include_pad);
    let x = Tensor::<4>::random([1, 3, 299, 299], Distribution::Uniform(-1.0, 1.0), &d);
    let out = m.forward(x);
    assert_eq!(out.pool3.dims(), [1, 2048]);
    assert_eq!(out.logits.dims(), [1, 1008]);
    // logits = pool3 · Wᵀ (PyTorch layout) without the bias, checked on the host.
    let pool: Vec<f32> = out.pool3.into_data().try_into_vec().unwrap();
    let w: Vec<f32> = m.fc.weight.val().into_data().try_into_vec().unwrap(); // Burn: [2048, 1008]
    let logits: Vec<f32> = out.logits.into_data().try_into_vec().unwrap();
    for c in [0usize, 17, 1007] {
        let manual: f64 = (0..2048)
            .map(|i| f64::from(pool[i]) * f64::from(w[i * 1008 + c]))
            .sum();
        let tol = 1e-4 * (1.0 + manual.abs());
        assert!((f64::from(logits[c]) - manual).abs() < tol, "class {c}");
    }
    // torchvision flavour keeps the default count_include_pad and average pools.
    let tv = InceptionConfig::new(Backbone::TorchvisionImagenet).init(&d);
    assert!(!tv.Mixed_7c.pool_is_max && tv.Mixed_5b.pool.count_include_pad);
}

#[test]
fn loading_errors_name_the_tensor_and_both_shapes() {
    let d = device();
    let dir = tempfile::tempdir().unwrap();
    // The FID network's file loaded as torchvision: fc has 1008 vs 1000 classes.
    let tf_path = dir.path().join("tf.safetensors");
    let tf = InceptionConfig::new(Backbone::TfInception2015).init(&d);
    save_pytorch_named_safetensors(&tf, &tf_path).unwrap();
    let tv_cfg = InceptionConfig::new(Backbone::TorchvisionImagenet);
    let err = load_weights_into(&mut tv_cfg.init(&d), &tf_path, &tv_cfg).unwrap_err();
    match &err {
        EvalError::ShapeMismatch {
            tensor,
            expected,
            found,
            ..
        } => {
            assert!(tensor.starts_with("fc."), "{err}");
            assert_eq!(expected[0], 1000);
            assert_eq!(found[0], 1008);
        }
        other => panic!("unexpected error {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("1008") && msg.contains("1000"), "{msg}");

    // A file without the aux head loaded into a network with one: missing tensor.
    let tv_path = dir.path().join("tv.safetensors");
    save_pytorch_named_safetensors(&tv_cfg.init(&d), &tv_path).unwrap();
    let aux_cfg = tv_cfg.clone().with_aux_logits(true);
    let err = load_weights_into(&mut aux_cfg.init(&d), &tv_path, &aux_cfg).unwrap_err();
    assert!(
        matches!(&err, EvalError::MissingTensor { tensor, .. } if tensor.starts_with("AuxLogits.")),
        "{err}"
    );
    // ...and the other way round the aux tensors are ignored, not an error.
    let aux_path = dir.path().join("tv_aux.safetensors");
    save_pytorch_named_safetensors(&aux_cfg.init(&d), &aux_path).unwrap();
    let prov = load_weights_into(&mut tv_cfg.init(&d), &aux_path, &tv_cfg).unwrap();
    assert_eq!(prov.ignored.len(), 12);

    // Garbage and absent files.
    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"not weights at all").unwrap();
    assert!(matches!(
        load_weights_into(&mut tv_cfg.init(&d), &junk, &tv_cfg),
        Err(EvalError::WeightsUnreadable { .. })
    ));
    assert!(matches!(
        load_weights_into(&mut tv_cfg.init(&d), &dir.path().join("nope.pth"), &tv_cfg),
        Err(EvalError::WeightsNotFound { .. })
    ));
}

#[test]
fn no_weights_file_is_unavailable_not_a_number() {
    let cfg = InceptionConfig::new(Backbone::TfInception2015);
    let r = load_inception(&cfg, None, &device()).unwrap();
    match &r {
        Availability::Unavailable { reason } => {
            assert!(reason.contains("pt_inception-2015-12-05-6726825d.pth"))
        }
        Availability::Available(_) => panic!("no file must not be available"),
    }
    let shown = r.map(|_| 0.0f64).to_string();
    assert!(shown.starts_with("unavailable: "), "{shown}");
}

/// Builds an npy v1.0 file byte by byte as numpy 1.x/2.x `np.save` writes it.
fn numpy_npy_bytes(shape: &str, values: &[f64]) -> Vec<u8> {
    let dict = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}");
    // numpy pads with spaces so that 10 + len(header) is a multiple of 64, '\n' last.
    let total = (10 + dict.len() + 1).div_ceil(64) * 64;
    let header = format!("{dict}{}\n", " ".repeat(total - 10 - dict.len() - 1));
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[test]
fn npz_written_like_numpy_reads_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ref_stats.npz");
    let mu = [1.0, -2.0, 0.5];
    let sigma = [2.0, 0.1, 0.0, 0.1, 3.0, 0.2, 0.0, 0.2, 4.0];
    {
        // np.savez: a zip with stored members mu.npy and sigma.npy (deflated for
        // savez_compressed: covered too).
        let file = std::fs::File::create(&path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        let deflated = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("mu.npy", stored).unwrap();
        zip.write_all(&numpy_npy_bytes("(3,)", &mu)).unwrap();
        zip.start_file("sigma.npy", deflated).unwrap();
        zip.write_all(&numpy_npy_bytes("(3, 3)", &sigma)).unwrap();
        zip.finish().unwrap();
    }
    let stats = FidStatistics::load_npz(&path).unwrap();
    assert_eq!(stats.mu.as_slice(), &mu);
    assert_eq!(stats.sigma[(0, 1)], 0.1);
    assert_eq!(stats.sigma[(2, 1)], 0.2);
    assert_eq!(stats.sigma[(2, 2)], 4.0);

    // Our writer's bytes equal numpy's layout, and the statistics round-trip exactly.
    let out = dir.path().join("ours.npz");
    stats.save_npz(&out).unwrap();
    let arrays = read_npz(&out, &["mu", "sigma"]).unwrap();
    assert_eq!(
        arrays[0],
        NpyArray {
            shape: vec![3],
            data: mu.to_vec()
        }
    );
    let back = FidStatistics::load_npz(&out).unwrap();
    assert_eq!(back.mu, stats.mu);
    assert_eq!(back.sigma, stats.sigma);
    assert!(frechet_distance(&stats, &back).unwrap().fid.abs() < 1e-12);
    {
        let file = std::fs::File::open(&out).unwrap();
        let mut zip = zip::ZipArchive::new(file).unwrap();
        let mut m = zip.by_name("mu.npy").unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut m, &mut bytes).unwrap();
        assert_eq!(bytes, numpy_npy_bytes("(3,)", &mu));
    }

    // Missing array and wrong shapes are errors naming the array.
    let only_mu = dir.path().join("only_mu.npz");
    write_npz(
        &only_mu,
        &[(
            "mu",
            &NpyArray {
                shape: vec![3],
                data: mu.to_vec(),
            },
        )],
    )
    .unwrap();
    let err = FidStatistics::load_npz(&only_mu).unwrap_err();
    assert!(err.to_string().contains("sigma"), "{err}");
    let wrong = dir.path().join("wrong.npz");
    write_npz(
        &wrong,
        &[
            (
                "mu",
                &NpyArray {
                    shape: vec![2],
                    data: vec![0.0; 2],
                },
            ),
            (
                "sigma",
                &NpyArray {
                    shape: vec![3, 3],
                    data: sigma.to_vec(),
                },
            ),
        ],
    )
    .unwrap();
    let err = FidStatistics::load_npz(&wrong).unwrap_err();
    assert!(err.to_string().contains("sigma"), "{err}");
}

/// Minimal `torch.save(state_dict)` writer (PyTorch ≥ 1.6 zip layout, pickle protocol 2), so
/// the `.pth` path of the loader is exercised without Python: `archive/data.pkl` holds an
/// `OrderedDict` of `torch._utils._rebuild_tensor_v2(persistent_id(('storage', <Storage>, key,
/// 'cpu', numel)), 0, size, stride, False, OrderedDict())`, `archive/data/<key>` the raw
/// little-endian bytes, plus `byteorder` and `version` entries.
fn write_torch_pth(path: &std::path::Path, tensors: &[(String, Vec<usize>, &str, Vec<u8>)]) {
    fn unicode(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend_from_slice(&(s.len() as u32).to_le_bytes());
        p.extend_from_slice(s.as_bytes());
    }
    fn int(p: &mut Vec<u8>, v: usize) {
        p.push(b'J');
        p.extend_from_slice(&(v as i32).to_le_bytes());
    }
    fn int_tuple(p: &mut Vec<u8>, vs: &[usize]) {
        if vs.is_empty() {
            p.push(b')');
            return;
        }
        p.push(b'(');
        for &v in vs {
            int(p, v);
        }
        p.push(b't');
    }
    let mut p = vec![0x80, 2];
    p.extend_from_slice(b"ccollections\nOrderedDict\n)R(");
    for (key, (name, shape, storage, _)) in tensors.iter().enumerate() {
        unicode(&mut p, name);
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.push(b'(');
        unicode(&mut p, "storage");
        p.extend_from_slice(format!("ctorch\n{storage}\n").as_bytes());
        unicode(&mut p, &key.to_string());
        unicode(&mut p, "cpu");
        int(&mut p, shape.iter().product());
        p.extend_from_slice(b"tQ");
        int(&mut p, 0);
        int_tuple(&mut p, shape);
        let mut stride = vec![1usize; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * shape[i + 1];
        }
        int_tuple(&mut p, &stride);
        p.push(0x89); // False: requires_grad
        p.extend_from_slice(b"ccollections\nOrderedDict\n)R");
        p.extend_from_slice(b"tR");
    }
    p.extend_from_slice(b"u.");

    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(&p).unwrap();
    zip.start_file("archive/byteorder", stored).unwrap();
    zip.write_all(b"little").unwrap();
    for (key, (_, _, _, bytes)) in tensors.iter().enumerate() {
        zip.start_file(format!("archive/data/{key}"), stored)
            .unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.start_file("archive/version", stored).unwrap();
    zip.write_all(b"3\n").unwrap();
    zip.finish().unwrap();
}

#[test]
fn pth_state_dict_in_pytorch_fid_naming_loads() {
    use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot};
    let d = device();
    let cfg = InceptionConfig::new(Backbone::TfInception2015);
    let src = cfg.init(&d);
    let mut tensors: Vec<(String, Vec<usize>, &str, Vec<u8>)> = src
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), false)
        .into_iter()
        .map(|t| {
            let bytes = t.to_bytes().unwrap().to_vec();
            (t.name.clone(), t.shape.to_vec(), "FloatStorage", bytes)
        })
        .collect();
    // torch state_dicts carry BatchNorm's int64 step counter; the loader must skip it.
    tensors.push((
        "Conv2d_1a_3x3.bn.num_batches_tracked".into(),
        vec![],
        "LongStorage",
        7i64.to_le_bytes().to_vec(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pt_inception-test.pth");
    write_torch_pth(&path, &tensors);

    let loaded = load_inception(&cfg, Some(&path), &d)
        .unwrap()
        .available()
        .unwrap();
    let prov = &loaded.provenance;
    assert_eq!(
        prov.format,
        chatpainter_eval::weights::WeightsFormat::Pytorch
    );
    assert_eq!(prov.tensors_applied, tensors.len() - 1);
    assert_eq!(
        prov.ignored,
        vec!["Conv2d_1a_3x3.bn.num_batches_tracked".to_string()]
    );
    let same = |a: Tensor<1>, b: Tensor<1>| (a - b).abs().max().into_scalar::<f32>() == 0.0;
    let m = &loaded.model;
    assert!(same(
        m.fc.weight.val().flatten(0, 1),
        src.fc.weight.val().flatten(0, 1)
    ));
    assert!(same(
        m.fc.bias.as_ref().unwrap().val(),
        src.fc.bias.as_ref().unwrap().val()
    ));
    assert!(same(
        m.Mixed_7c.branch_pool.conv.weight.val().flatten(0, 3),
        src.Mixed_7c.branch_pool.conv.weight.val().flatten(0, 3)
    ));
}

#[test]
fn runner_scores_u8_images_end_to_end() {
    use chatpainter_eval::{ImageBatch, InceptionRunner, InceptionScoreConfig, Preprocess};
    let d = device();
    let cfg = InceptionConfig::new(Backbone::TfInception2015);
    let model = cfg.init(&d);
    let mut runner =
        InceptionRunner::from_model(model, cfg.backbone, Preprocess::for_config(&cfg), &d).unwrap();
    // Two 32×32 RGB images (NHWC u8), a gradient and its inverse.
    let pixels: Vec<u8> = (0..2 * 32 * 32 * 3)
        .map(|i| {
            let v = (i % (32 * 32 * 3)) as u32 * 255 / (32 * 32 * 3);
            if i < 32 * 32 * 3 {
                v as u8
            } else {
                255 - v as u8
            }
        })
        .collect();
    let batch = ImageBatch::U8Nhwc {
        data: &pixels,
        n: 2,
        height: 32,
        width: 32,
    };
    runner.push(&batch).unwrap();
    assert_eq!(runner.count(), 2);
    let probs = runner.probabilities().unwrap();
    assert_eq!((probs.rows(), probs.cols()), (2, 1008));
    let is = runner
        .inception_score(InceptionScoreConfig {
            splits: 2,
            shuffle_seed: Some(0),
            subset_size: None,
        })
        .unwrap();
    // One image per split → each split's marginal is its own row → IS exactly 1.
    assert!((is.mean - 1.0).abs() < 1e-9, "{is:?}");
    let stats = runner.fid_statistics().unwrap();
    assert_eq!(stats.dim(), 2048);
    assert_eq!(stats.n, Some(2));
}

// ---- the metric checks through the public API, at the real sizes -------------------

/// Identical rows score exactly 1 and one-hot rows spread evenly over K classes inside every
/// chunk score exactly K, at the torchvision width (1000 classes), through the shuffle.
#[test]
fn inception_score_exact_values_at_imagenet_width() {
    use chatpainter_eval::{InceptionScoreConfig, ProbabilityMatrix, inception_score};
    let classes = 1000;
    let row: Vec<f64> = (0..classes).map(|c| (c % 7 + 1) as f64).collect();
    let total: f64 = row.iter().sum();
    let row: Vec<f64> = row.iter().map(|v| v / total).collect();
    let p = ProbabilityMatrix::new(50, classes, row.repeat(50)).unwrap();
    let is = inception_score(&p, InceptionScoreConfig::new(11)).unwrap();
    assert!(
        (is.mean - 1.0).abs() < 1e-12 && is.std.abs() < 1e-12,
        "{is:?}"
    );

    // K = 8 classes, 10 chunks of 16 rows, each chunk holding every class twice (unshuffled:
    // the shuffle would break the per-chunk balance the closed form needs).
    let k = 8;
    let rows = 160;
    let mut d = vec![0.0; rows * classes];
    for r in 0..rows {
        d[r * classes + (r % k) * 97] = 1.0;
    }
    let p = ProbabilityMatrix::new(rows, classes, d).unwrap();
    let is = inception_score(
        &p,
        InceptionScoreConfig {
            splits: 10,
            shuffle_seed: None,
            subset_size: None,
        },
    )
    .unwrap();
    assert!((is.mean - k as f64).abs() < 1e-9 && is.std < 1e-9, "{is:?}");
    assert_eq!(is.split_scores.len(), 10);
}

/// FID(s, s) = 0, and the diagonal closed form `|mu1 − mu2|² + Σ (√v1 − √v2)²` at the pool3
/// width (2048) so the eigendecompositions run at the size real statistics have.
#[test]
fn fid_zero_and_diagonal_closed_form_at_pool3_width() {
    use nalgebra::{DMatrix, DVector};
    let d = 2048;
    let mu1 = DVector::from_fn(d, |i, _| (i % 13) as f64 * 0.1);
    let mu2 = DVector::from_fn(d, |i, _| (i % 5) as f64 * -0.2);
    let v1 = DVector::from_fn(d, |i, _| 0.5 + (i % 11) as f64);
    let v2 = DVector::from_fn(d, |i, _| 0.1 + (i % 3) as f64 * 2.0);
    let a = FidStatistics::new(mu1.clone(), DMatrix::from_diagonal(&v1)).unwrap();
    let b = FidStatistics::new(mu2.clone(), DMatrix::from_diagonal(&v2)).unwrap();
    // FID(s, s) = 0 on full-rank, non-diagonal statistics of a smaller width (each FID at 2048
    // costs two ~2048³ eigendecompositions, seconds each on a CI core). Full rank matters: with
    // fewer samples than dimensions the ~1e-12 eigenvalue noise of the zero directions adds
    // √1e-12 each to Tr(covmean), as in every sqrtm-based FID.
    let (n, dim) = (600, 128);
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let x = DMatrix::from_fn(n, dim, |r, c| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 11) as f64 / (1u64 << 53) as f64 + (r % 7) as f64 * 0.01 * (c % 3) as f64
    });
    let mean = DVector::from_fn(dim, |c, _| x.column(c).mean());
    let centred = DMatrix::from_fn(n, dim, |r, c| x[(r, c)] - mean[c]);
    let s = FidStatistics::new(mean, centred.transpose() * &centred / (n as f64 - 1.0)).unwrap();
    let same = frechet_distance(&s, &s).unwrap();
    assert!(same.fid.abs() < 1e-9 * same.trace_sigma1, "{same:?}");
    let expected: f64 = (0..d)
        .map(|j| (mu1[j] - mu2[j]).powi(2) + (v1[j].sqrt() - v2[j].sqrt()).powi(2))
        .sum();
    let f = frechet_distance(&a, &b).unwrap();
    assert!(
        (f.fid - expected).abs() < 1e-8 * expected,
        "{} vs {expected}",
        f.fid
    );
}

/// A `.pth` in torchvision's naming, as `torch.save(inception_v3(aux_logits=True).state_dict())`
/// writes it (aux head and `num_batches_tracked` included), loads into the network without the
/// aux head: every used tensor applied, the aux head and counters ignored, outputs identical.
#[test]
fn pth_state_dict_in_torchvision_naming_loads() {
    use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot};
    let d = device();
    let src = InceptionConfig::new(Backbone::TorchvisionImagenet)
        .with_aux_logits(true)
        .init(&d);
    let mut tensors: Vec<(String, Vec<usize>, &str, Vec<u8>)> = src
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), false)
        .into_iter()
        .map(|t| {
            let bytes = t.to_bytes().unwrap().to_vec();
            (t.name.clone(), t.shape.to_vec(), "FloatStorage", bytes)
        })
        .collect();
    for bn in [
        "Conv2d_1a_3x3.bn",
        "Mixed_7c.branch_pool.bn",
        "AuxLogits.conv0.bn",
    ] {
        tensors.push((
            format!("{bn}.num_batches_tracked"),
            vec![],
            "LongStorage",
            0i64.to_le_bytes().to_vec(),
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inception_v3_google-test.pth");
    write_torch_pth(&path, &tensors);

    let cfg = InceptionConfig::new(Backbone::TorchvisionImagenet);
    let loaded = load_inception(&cfg, Some(&path), &d)
        .unwrap()
        .available()
        .unwrap();
    let prov = &loaded.provenance;
    assert_eq!(prov.tensors_applied, 94 * 5 + 2);
    // 12 aux tensors + 3 counters.
    assert_eq!(prov.ignored.len(), 15, "{:?}", prov.ignored);
    assert!(!prov.matches_reference_prefix);
    let x = Tensor::<4>::random([1, 3, 299, 299], Distribution::Uniform(-1.0, 1.0), &d);
    let a = src.forward(x.clone());
    let b = loaded.model.forward(x);
    assert_eq!(b.logits.dims(), [1, 1000]);
    let scale = a.logits.clone().abs().max().into_scalar::<f32>().max(1e-12);
    let diff = (a.logits - b.logits).abs().max().into_scalar::<f32>();
    assert!(diff <= 1e-5 * scale, "diff {diff}, scale {scale}");
}
