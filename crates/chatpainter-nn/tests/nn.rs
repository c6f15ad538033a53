//! Integration tests of `chatpainter-nn`: parameter counts against the reference networks', the
//! bijection to the reference `state_dict` names, forward shapes at the smoke preset, the dialogue
//! BiLSTM's packing, the reference initialisation statistics, the CA and the losses wired to real
//! networks.

use std::collections::{HashMap, HashSet};

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use chatpainter_nn::blocks::{batch_norm, bn_forward, upsample_nearest2x};
use chatpainter_nn::loss::{discriminator_loss, generator_loss, kl_loss};
use chatpainter_nn::{
    CaNoise, DialogueEncoderConfig, DialogueVariant, Discriminator, NnError, PRESET_NAMES,
    ReferenceLayout, StackGanConfig, Stage1DConfig, Stage1GConfig, count_trainable, list_params,
    reference_names, weights_init,
};

fn randn<const D: usize>(shape: [usize; D], dev: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), dev)
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 tensor")
}

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    to_vec(a)
        .iter()
        .zip(to_vec(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn mean_std<const D: usize>(t: Tensor<D>) -> (f64, f64) {
    let v = to_vec(t);
    let n = v.len() as f64;
    let mean = v.iter().map(|x| f64::from(*x)).sum::<f64>() / n;
    let var = v
        .iter()
        .map(|x| (f64::from(*x) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

// ---------------------------------------------------------------- parameter counts

/// Targets: the reference StackGAN-Pytorch networks at its COCO widths, counted as PyTorch's
/// `sum(p.numel() for p in m.parameters())` (weights and BN affine, no running statistics).
#[test]
fn coco_parameter_counts_match_the_reference() {
    // Parameters are lazy: counting reads shapes only, so even the 160M-parameter D is cheap.
    let dev = Device::flex();
    let cfg = StackGanConfig::stackgan_pytorch_coco();
    assert_eq!(count_trainable(&cfg.ca().init(&dev)), 262_400);
    assert_eq!(count_trainable(&cfg.stage1_g().init(&dev)), 20_020_832);
    let d1 = cfg.stage1_d().init(&dev);
    assert_eq!(count_trainable(&d1), 12_407_425);
    assert_eq!(count_trainable(&d1.encode_img), 6_200_448);
    assert_eq!(count_trainable(&d1.get_cond_logits), 6_206_977);
    let g2 = cfg.stage2_g().expect("stage2").init(&dev);
    let total = count_trainable(&g2);
    assert_eq!(total, 57_151_312);
    assert_eq!(total - count_trainable(&g2.stage1_g), 37_130_480);
    assert_eq!(
        count_trainable(&cfg.stage2_d().expect("stage2").init(&dev)),
        159_889_538
    );
    // Burn's own count also has the BN running mean/var (2 per BN feature).
    let g1 = cfg.stage1_g().init(&dev);
    let bn_features = 24_576 + 768 + 384 + 192 + 96;
    assert_eq!(g1.num_params(), 20_020_832 + 2 * bn_features);
}

/// The `chatpainter` presets (paper widths gf 128, df 64, r_num 4); the same numbers are in the
/// crate docs.
#[test]
fn chatpainter_parameter_counts() {
    let dev = Device::flex();
    let cases = [
        ("stackgan", 262_400, 10_301_248, 26_290_080),
        (
            "chatpainter-nonrecurrent",
            1_491_200,
            11_530_048,
            27_518_880,
        ),
        ("chatpainter-recurrent", 786_688, 10_825_536, 26_814_368),
    ];
    for (name, ca, g1, g2_trainable) in cases {
        let cfg = StackGanConfig::preset(name).expect("preset");
        assert_eq!(count_trainable(&cfg.ca().init(&dev)), ca, "{name} CA");
        assert_eq!(count_trainable(&cfg.stage1_g().init(&dev)), g1, "{name} G1");
        assert_eq!(
            count_trainable(&cfg.stage1_d().init(&dev)),
            5_715_713,
            "{name} D1"
        );
        let g2 = cfg.stage2_g().expect("stage2").init(&dev);
        assert_eq!(
            count_trainable(&g2) - count_trainable(&g2.stage1_g),
            g2_trainable
        );
        assert_eq!(count_trainable(&g2), g2_trainable + g1, "{name} G2 total");
        assert_eq!(
            count_trainable(&cfg.stage2_d().expect("stage2").init(&dev)),
            71_269_122,
            "{name} D2"
        );
        if let Some(rnn) = cfg.dialogue_encoder() {
            assert_eq!(
                count_trainable(&rnn.init(&dev)),
                47_726_592,
                "{name} BiLSTM"
            );
        }
    }
}

// ---------------------------------------------------------------- reference names

type Expected = Vec<(String, Vec<usize>)>;

fn bn(prefix: &str, c: usize) -> Expected {
    ["weight", "bias", "running_mean", "running_var"]
        .iter()
        .map(|s| (format!("{prefix}.{s}"), vec![c]))
        .collect()
}

fn one(name: &str, shape: &[usize]) -> Expected {
    vec![(name.to_owned(), shape.to_vec())]
}

/// Checks that the mapping is a bijection onto distinct torch names, covers every tensor, and
/// returns torch name → torch shape.
fn checked_map<M: ReferenceLayout>(m: &M) -> HashMap<String, Vec<usize>> {
    let names = reference_names(m).expect("every parameter has a reference name");
    let params = list_params(m);
    assert_eq!(names.len(), params.len());
    let ours: HashSet<_> = names.iter().map(|n| n.ours.clone()).collect();
    let torch: HashSet<_> = names.iter().map(|n| n.torch.clone()).collect();
    assert_eq!(ours.len(), names.len(), "our paths are distinct");
    assert_eq!(torch.len(), names.len(), "torch names are distinct");
    let trainable: usize = names
        .iter()
        .filter(|n| !n.buffer)
        .map(|n| n.torch_shape.iter().product::<usize>())
        .sum();
    assert_eq!(trainable, count_trainable(m));
    for n in &names {
        let mut s = n.shape.clone();
        if n.shape != n.torch_shape {
            s.reverse(); // only Linear weights differ, by a transpose
            assert_eq!(s, n.torch_shape, "{}", n.ours);
            assert!(n.ours.ends_with("weight"), "{}", n.ours);
        }
    }
    names
        .into_iter()
        .map(|n| (n.torch, n.torch_shape))
        .collect()
}

fn assert_exact(map: &HashMap<String, Vec<usize>>, want: Expected) {
    let want: HashMap<String, Vec<usize>> = want.into_iter().collect();
    assert_eq!(map, &want);
}

fn assert_contains(map: &HashMap<String, Vec<usize>>, want: Expected) {
    for (k, s) in want {
        assert_eq!(map.get(&k), Some(&s), "{k}");
    }
}

/// Torch keys and shapes written out from StackGAN-Pytorch `code/model.py` at the COCO widths
/// (GF_DIM 192, DF_DIM 96, CONDITION_DIM 128, Z_DIM 100, TEXT.DIMENSION 1024), without the
/// `num_batches_tracked` counters.
fn stage1_g_coco_keys(prefix: &str) -> Expected {
    let p = |s: &str| format!("{prefix}{s}");
    [
        one(&p("ca_net.fc.weight"), &[256, 1024]),
        one(&p("ca_net.fc.bias"), &[256]),
        one(&p("fc.0.weight"), &[24576, 228]),
        bn(&p("fc.1"), 24576),
        one(&p("upsample1.1.weight"), &[768, 1536, 3, 3]),
        bn(&p("upsample1.2"), 768),
        one(&p("upsample2.1.weight"), &[384, 768, 3, 3]),
        bn(&p("upsample2.2"), 384),
        one(&p("upsample3.1.weight"), &[192, 384, 3, 3]),
        bn(&p("upsample3.2"), 192),
        one(&p("upsample4.1.weight"), &[96, 192, 3, 3]),
        bn(&p("upsample4.2"), 96),
        one(&p("img.0.weight"), &[3, 96, 3, 3]),
    ]
    .concat()
}

#[test]
fn coco_reference_names_are_a_bijection() {
    let dev = Device::flex();
    let cfg = StackGanConfig::stackgan_pytorch_coco();

    let g1 = checked_map(&cfg.stage1_g().init(&dev));
    assert_exact(&g1, stage1_g_coco_keys(""));

    let d1 = checked_map(&cfg.stage1_d().init(&dev));
    assert_exact(
        &d1,
        [
            one("encode_img.0.weight", &[96, 3, 4, 4]),
            one("encode_img.2.weight", &[192, 96, 4, 4]),
            bn("encode_img.3", 192),
            one("encode_img.5.weight", &[384, 192, 4, 4]),
            bn("encode_img.6", 384),
            one("encode_img.8.weight", &[768, 384, 4, 4]),
            bn("encode_img.9", 768),
            one("get_cond_logits.outlogits.0.weight", &[768, 896, 3, 3]),
            bn("get_cond_logits.outlogits.1", 768),
            one("get_cond_logits.outlogits.3.weight", &[1, 768, 4, 4]),
            one("get_cond_logits.outlogits.3.bias", &[1]),
        ]
        .concat(),
    );

    let g2 = checked_map(&cfg.stage2_g().expect("stage2").init(&dev));
    let mut res = Vec::new();
    for i in 0..2 {
        res.push(one(
            &format!("residual.{i}.block.0.weight"),
            &[768, 768, 3, 3],
        ));
        res.push(bn(&format!("residual.{i}.block.1"), 768));
        res.push(one(
            &format!("residual.{i}.block.3.weight"),
            &[768, 768, 3, 3],
        ));
        res.push(bn(&format!("residual.{i}.block.4"), 768));
    }
    assert_exact(
        &g2,
        [
            stage1_g_coco_keys("STAGE1_G."),
            one("ca_net.fc.weight", &[256, 1024]),
            one("ca_net.fc.bias", &[256]),
            one("encoder.0.weight", &[192, 3, 3, 3]),
            one("encoder.2.weight", &[384, 192, 4, 4]),
            bn("encoder.3", 384),
            one("encoder.5.weight", &[768, 384, 4, 4]),
            bn("encoder.6", 768),
            one("hr_joint.0.weight", &[768, 896, 3, 3]),
            bn("hr_joint.1", 768),
            res.concat(),
            one("upsample1.1.weight", &[384, 768, 3, 3]),
            bn("upsample1.2", 384),
            one("upsample2.1.weight", &[192, 384, 3, 3]),
            bn("upsample2.2", 192),
            one("upsample3.1.weight", &[96, 192, 3, 3]),
            bn("upsample3.2", 96),
            one("upsample4.1.weight", &[48, 96, 3, 3]),
            bn("upsample4.2", 48),
            one("img.0.weight", &[3, 48, 3, 3]),
        ]
        .concat(),
    );

    let d2 = checked_map(&cfg.stage2_d().expect("stage2").init(&dev));
    let chans = [96, 192, 384, 768, 1536, 3072];
    let mut enc = vec![one("encode_img.0.weight", &[96, 3, 4, 4])];
    for i in 1..6 {
        let idx = 3 * i - 1; // conv at 2, 5, 8, 11, 14; BN right after
        enc.push(one(
            &format!("encode_img.{idx}.weight"),
            &[chans[i], chans[i - 1], 4, 4],
        ));
        enc.push(bn(&format!("encode_img.{}", idx + 1), chans[i]));
    }
    enc.push(one("encode_img.17.weight", &[1536, 3072, 3, 3]));
    enc.push(bn("encode_img.18", 1536));
    enc.push(one("encode_img.20.weight", &[768, 1536, 3, 3]));
    enc.push(bn("encode_img.21", 768));
    assert_exact(
        &d2,
        [
            enc.concat(),
            one("get_cond_logits.outlogits.0.weight", &[768, 896, 3, 3]),
            bn("get_cond_logits.outlogits.1", 768),
            one("get_cond_logits.outlogits.3.weight", &[1, 768, 4, 4]),
            one("get_cond_logits.outlogits.3.bias", &[1]),
            one("get_uncond_logits.outlogits.0.weight", &[1, 768, 4, 4]),
            one("get_uncond_logits.outlogits.0.bias", &[1]),
        ]
        .concat(),
    );
}

#[test]
fn dialogue_encoder_names_follow_torch_lstm() {
    let dev = Device::flex();
    let rnn = DialogueEncoderConfig::new(48).with_hidden(8).init(&dev);
    let map = checked_map(&rnn);
    assert_eq!(map.len(), 8);
    assert_contains(
        &map,
        [
            one("lstm.weight_ih_l0", &[32, 48]),
            one("lstm.weight_hh_l0", &[32, 8]),
            one("lstm.bias_ih_l0", &[32]),
            one("lstm.bias_hh_l0_reverse", &[32]),
            one("lstm.weight_ih_l0_reverse", &[32, 48]),
        ]
        .concat(),
    );
}

// ---------------------------------------------------------------- forward shapes (smoke)

#[test]
fn smoke_forward_shapes_all_networks() {
    // Autodiff device: BatchNorms use batch statistics, as in training.
    let dev = Device::flex().autodiff();
    dev.seed(7);
    let cfg = StackGanConfig::smoke(StackGanConfig::smoke_recurrent());
    let b = 3;
    let rnn = cfg
        .dialogue_encoder()
        .expect("recurrent variant")
        .init(&dev);
    let turns = randn([b, 10, 64], &dev);
    let summary = rnn.forward(turns, &[10, 4, 1]).expect("valid lengths");
    assert_eq!(summary.dims(), [b, 32]);
    let text = Tensor::cat(vec![randn([b, cfg.caption_dim], &dev), summary], 1);
    assert_eq!(text.dims(), [b, cfg.text_dim()]);
    let noise = randn([b, cfg.z_dim], &dev);

    let g1 = weights_init(cfg.stage1_g().init(&dev));
    let out = g1.forward(text.clone(), noise.clone());
    assert!(out.stage1_img.is_none());
    assert_eq!(out.fake.dims(), [b, 3, 64, 64]);
    assert_eq!(out.mu.dims(), [b, cfg.cond_dim]);
    assert_eq!(out.logvar.dims(), [b, cfg.cond_dim]);
    let v = to_vec(out.fake.clone());
    assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));

    let d1 = weights_init(cfg.stage1_d().init(&dev));
    let f = d1.features(out.fake.clone());
    assert_eq!(f.dims(), [b, 8 * cfg.df_dim, 4, 4]);
    let p = d1.cond_prob(f.clone(), out.mu.clone());
    assert_eq!(p.dims(), [b]);
    assert!(to_vec(p).iter().all(|x| *x > 0.0 && *x < 1.0));
    assert!(d1.uncond_prob(f).is_none());

    let g2 = weights_init(cfg.stage2_g().expect("stage2").init(&dev));
    let out2 = g2.forward(text, noise);
    assert_eq!(out2.fake.dims(), [b, 3, 256, 256]);
    assert_eq!(
        out2.stage1_img.as_ref().map(|t| t.dims()),
        Some([b, 3, 64, 64])
    );
    assert_eq!(out2.mu.dims(), [b, cfg.cond_dim]);

    let d2 = weights_init(cfg.stage2_d().expect("stage2").init(&dev));
    let f2 = d2.features(out2.fake);
    assert_eq!(f2.dims(), [b, 8 * cfg.df_dim, 4, 4]);
    assert_eq!(d2.cond_prob(f2.clone(), out2.mu).dims(), [b]);
    assert_eq!(d2.uncond_prob(f2).map(|t| t.dims()), Some([b]));
}

#[test]
fn smoke_inference_mode_and_other_variants() {
    // Plain device: BatchNorms use running statistics (eval), CA still samples.
    let dev = Device::flex();
    dev.seed(8);
    for variant in [
        DialogueVariant::CaptionOnly,
        StackGanConfig::smoke_nonrecurrent(),
    ] {
        let cfg = StackGanConfig::smoke(variant);
        let g1 = weights_init(cfg.stage1_g().init(&dev));
        let out = g1.forward(
            randn([2, cfg.text_dim()], &dev),
            randn([2, cfg.z_dim], &dev),
        );
        assert_eq!(out.fake.dims(), [2, 3, 64, 64]);
    }
}

#[test]
fn nearest_upsample_repeats_pixels() {
    let dev = Device::flex();
    let x = Tensor::<4>::from_data(
        TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 2, 2]),
        &dev,
    );
    let y = to_vec(upsample_nearest2x(x));
    let want = [
        1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.,
    ];
    assert_eq!(y, want);
}

#[test]
fn batch_norm_train_mode_matches_pytorch_running_stats() {
    let dev = Device::flex().autodiff();
    let bn = batch_norm(1, &dev);
    // One channel with values 1, 2, 3, 4: mean 2.5, biased var 1.25, unbiased var 5/3.
    let x = Tensor::<3>::from_data(
        TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [4, 1, 1]),
        &dev,
    );
    let y = to_vec(bn_forward(&bn, x));
    // Normalised with the biased variance (PyTorch and Burn agree).
    assert!(
        (y[0] - (-1.5 / (1.25f32 + 1e-5).sqrt())).abs() < 1e-5,
        "{y:?}"
    );
    let rm = to_vec(bn.running_mean.value_sync());
    let rv = to_vec(bn.running_var.value_sync());
    assert!((rm[0] - 0.25).abs() < 1e-6, "{rm:?}");
    // PyTorch: 0.9·1 + 0.1·(5/3), the unbiased variance.
    assert!((rv[0] - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-6, "{rv:?}");
}

// ---------------------------------------------------------------- dialogue BiLSTM packing

#[test]
fn bilstm_ignores_padding_and_matches_unpadded_runs() {
    let dev = Device::flex();
    dev.seed(3);
    let rnn = DialogueEncoderConfig::new(12).with_hidden(6).init(&dev);
    let (b, t, d) = (3, 5, 12);
    let lengths = [5, 2, 3];
    let turns = randn([b, t, d], &dev);
    let out = rnn.forward(turns.clone(), &lengths).expect("valid");
    assert_eq!(out.dims(), [b, 12]);

    // Change only padding slots (sample 1: slots 2.., sample 2: slots 3..) to other values.
    let mut v = to_vec(turns.clone());
    for (s, &l) in lengths.iter().enumerate() {
        for slot in l..t {
            for k in 0..d {
                v[(s * t + slot) * d + k] = 1000.0 + (slot * k) as f32;
            }
        }
    }
    let turns2 = Tensor::<3>::from_data(TensorData::new(v, [b, t, d]), &dev);
    let out2 = rnn.forward(turns2, &lengths).expect("valid");
    assert!(max_abs_diff(out.clone(), out2) < 1e-6);

    // Each sample equals the same sample run alone with exactly its own turns (no padding at
    // all): both directions see only the present turns, like pack_padded_sequence.
    for (s, &l) in lengths.iter().enumerate() {
        let alone = turns.clone().narrow(0, s, 1).narrow(1, 0, l);
        let want = rnn.forward(alone, &[l]).expect("valid");
        let got = out.clone().narrow(0, s, 1);
        assert!(max_abs_diff(got, want) < 1e-5, "sample {s}");
    }

    // Bad inputs are errors, not panics.
    assert!(matches!(
        rnn.forward(turns.clone(), &[5, 0, 3]),
        Err(NnError::BadLengths(_))
    ));
    assert!(matches!(
        rnn.forward(turns.clone(), &[5, 6, 3]),
        Err(NnError::BadLengths(_))
    ));
    assert!(matches!(
        rnn.forward(turns, &[5, 2]),
        Err(NnError::BadLengths(_))
    ));
}

// ---------------------------------------------------------------- initialisation

#[test]
fn reference_init_statistics() {
    let dev = Device::flex();
    dev.seed(11);
    // Mid-sized widths so the statistics are tight: ngf = 256, fc BN has 4096 features.
    let g = weights_init(Stage1GConfig::new(64, 16, 100, 32).init(&dev));
    let (m, s) = mean_std(g.upsample1.conv.weight.val());
    assert!(m.abs() < 1e-3 && (s - 0.02).abs() < 5e-4, "conv {m} {s}");
    let (m, s) = mean_std(g.fc.linear.weight.val());
    assert!(m.abs() < 1e-3 && (s - 0.02).abs() < 5e-4, "linear {m} {s}");
    assert!(g.fc.linear.bias.is_none());
    let ca_bias = g.ca_net.fc.bias.as_ref().expect("CA fc has a bias").val();
    assert!(to_vec(ca_bias).iter().all(|x| *x == 0.0));
    let (m, s) = mean_std(g.fc.bn.gamma.val());
    assert!(
        (m - 1.0).abs() < 2e-3 && (s - 0.02).abs() < 2e-3,
        "gamma {m} {s}"
    );
    assert!(to_vec(g.fc.bn.beta.val()).iter().all(|x| *x == 0.0));
    // Running statistics are state, left at their defaults.
    assert!(
        to_vec(g.fc.bn.running_mean.value())
            .iter()
            .all(|x| *x == 0.0)
    );
    assert!(
        to_vec(g.fc.bn.running_var.value())
            .iter()
            .all(|x| *x == 1.0)
    );

    // The logit conv: weight N(0, 0.02), bias keeps the PyTorch default U(±1/√fan_in).
    let d = weights_init(Stage1DConfig::new(32, 16).init(&dev));
    let (_, s) = mean_std(d.get_cond_logits.logit.weight.val());
    assert!((s - 0.02).abs() < 2e-3, "logit weight {s}");
    let bound = 1.0 / ((8 * 32 * 16) as f32).sqrt();
    let bias = to_vec(
        d.get_cond_logits
            .logit
            .bias
            .as_ref()
            .expect("logit conv has a bias")
            .val(),
    );
    assert!(bias[0] != 0.0 && bias[0].abs() <= bound, "{bias:?}");

    // The dialogue LSTM keeps PyTorch's nn.LSTM default U(±1/√H).
    let rnn = weights_init(DialogueEncoderConfig::new(64).with_hidden(64).init(&dev));
    let w = to_vec(rnn.lstm.fwd.weight_ih.val());
    let k = 1.0f32 / 8.0;
    assert!(w.iter().all(|x| x.abs() <= k));
    let (_, s) = mean_std(rnn.lstm.fwd.weight_ih.val());
    assert!((s - f64::from(k) / 3f64.sqrt()).abs() < 3e-3, "lstm {s}");
}

// ---------------------------------------------------------------- CA

#[test]
fn ca_shapes_quirks_and_kl() {
    let dev = Device::flex();
    dev.seed(5);
    let cfg = StackGanConfig::smoke(DialogueVariant::CaptionOnly);
    let ca = weights_init(cfg.ca().init(&dev));
    // Larger inputs so the fc output is clearly non-zero after the ReLU.
    let text = randn([4, cfg.text_dim()], &dev).mul_scalar(10.0);
    let out = ca.forward(text.clone());
    assert_eq!(out.c.dims(), [4, 16]);
    assert_eq!(out.mu.dims(), [4, 16]);
    assert_eq!(out.logvar.dims(), [4, 16]);
    // ReLU over the whole fc output: mu ≥ 0 and logvar ≥ 0.
    assert!(to_vec(out.mu.clone()).iter().all(|x| *x >= 0.0));
    assert!(to_vec(out.logvar.clone()).iter().all(|x| *x >= 0.0));
    // Fresh noise on every call.
    let again = ca.forward(text.clone());
    assert!(max_abs_diff(out.c.clone(), again.c) > 1e-3);
    assert!(max_abs_diff(out.mu.clone(), again.mu) == 0.0);
    // Mean-only option.
    let m = ca.forward_with(text.clone(), CaNoise::MeanOnly);
    assert!(max_abs_diff(m.c, m.mu) == 0.0);
    // Given eps: c = mu + eps·exp(logvar/2).
    let eps = randn([4, 16], &dev);
    let g = ca.forward_with(text, CaNoise::given(eps.clone()));
    let want = g.mu.clone() + eps * g.logvar.clone().mul_scalar(0.5).exp();
    assert!(max_abs_diff(g.c, want) < 1e-5);
    // KL of the quirky CA is a non-negative scalar.
    let kl = kl_loss(g.mu, g.logvar);
    assert_eq!(kl.dims(), [1]);
    assert!(kl.into_scalar::<f32>() >= 0.0);
}

// ---------------------------------------------------------------- losses on real networks

#[test]
fn losses_wire_through_networks_and_gradients_stay_separate() {
    let dev = Device::flex().autodiff();
    dev.seed(9);
    let cfg = StackGanConfig::smoke(DialogueVariant::CaptionOnly);
    let g = weights_init(cfg.stage1_g().init(&dev));
    let d = weights_init(cfg.stage1_d().init(&dev));
    let b = 4;
    let text = randn([b, cfg.text_dim()], &dev);
    let real = randn([b, 3, 64, 64], &dev).tanh();
    let out = g.forward(text, randn([b, cfg.z_dim], &dev));

    let dl = discriminator_loss(&d, real.clone(), out.fake.clone(), out.mu.clone(), None)
        .expect("B ≥ 2");
    assert!(dl.uncond_real.is_none());
    let total = dl.total.clone().into_scalar::<f32>();
    assert!(total.is_finite() && total > 0.0);
    let grads = dl.total.backward();
    assert!(d.get_cond_logits.logit.weight.val().grad(&grads).is_some());
    // The fake and the condition are detached: no gradient reaches G.
    assert!(g.fc.linear.weight.val().grad(&grads).is_none());
    assert!(g.ca_net.fc.weight.val().grad(&grads).is_none());

    let gl = generator_loss(&d, out.fake, out.mu, out.logvar, 2.0, None);
    let want =
        gl.adversarial.clone().into_scalar::<f32>() + 2.0 * gl.kl.clone().into_scalar::<f32>();
    assert!((gl.total.clone().into_scalar::<f32>() - want).abs() < 1e-5);
    let grads = gl.total.backward();
    assert!(g.fc.linear.weight.val().grad(&grads).is_some());
    assert!(g.ca_net.fc.weight.val().grad(&grads).is_some());

    let one = randn([1, 3, 64, 64], &dev);
    let e = discriminator_loss(&d, one.clone(), one, randn([1, cfg.cond_dim], &dev), None);
    assert!(matches!(e, Err(NnError::BatchTooSmall(1))));
}

/// The object head (a switch, off by default): with it, the rest of D draws the same initial
/// weights; D's loss trains the head on the reals, G's loss reaches G through it, and a linear
/// CA lets σ fall below 1.
#[test]
fn the_object_head_adds_a_term_and_changes_nothing_else() {
    use chatpainter_nn::loss::{ObjectTerm, object_loss};
    let dev = Device::flex().autodiff();
    let cfg = StackGanConfig::smoke(DialogueVariant::CaptionOnly);
    let with = StackGanConfig {
        object_classes: 5,
        ..StackGanConfig::smoke(DialogueVariant::CaptionOnly)
    };
    let init_d = |c: &StackGanConfig| {
        dev.seed(4);
        weights_init(c.stage1_d().init(&dev))
    };
    let (plain, d) = (init_d(&cfg), init_d(&with));
    assert!(plain.object_head.is_none());
    let head = d.object_head.as_ref().expect("head");
    assert_eq!(head.weight.val().dims(), [5, 8 * cfg.df_dim, 1, 1]);
    assert_eq!(
        to_vec(plain.get_cond_logits.logit.weight.val()),
        to_vec(d.get_cond_logits.logit.weight.val())
    );
    dev.seed(9);
    let g = weights_init(cfg.stage1_g().init(&dev));
    let b = 4;
    let real = randn([b, 3, 64, 64], &dev).tanh();
    let out = g.forward(
        randn([b, cfg.text_dim()], &dev),
        randn([b, cfg.z_dim], &dev),
    );
    let targets = randn([b, 5, 4, 4], &dev).abs().clamp_max(1.0);
    let term = ObjectTerm {
        targets: targets.clone(),
        weight: 3.0,
    };
    let base = discriminator_loss(&d, real.clone(), out.fake.clone(), out.mu.clone(), None)
        .expect("B ≥ 2");
    let dl = discriminator_loss(
        &d,
        real.clone(),
        out.fake.clone(),
        out.mu.clone(),
        Some(&term),
    )
    .expect("B ≥ 2");
    let object = dl.object.clone().expect("object term");
    let want = object_loss(head.forward(d.forward(real)), targets).into_scalar::<f32>();
    assert!((object.clone().into_scalar::<f32>() - want).abs() < 1e-5);
    let total = dl.total.clone().into_scalar::<f32>();
    let expected = base.total.into_scalar::<f32>() + 3.0 * want;
    assert!((total - expected).abs() < 1e-4, "{total} vs {expected}");
    let grads = dl.total.backward();
    assert!(head.weight.val().grad(&grads).is_some());
    let gl = generator_loss(&d, out.fake, out.mu, out.logvar, 2.0, Some(&term));
    assert!(gl.object.is_some());
    let grads = gl.total.backward();
    assert!(g.fc.linear.weight.val().grad(&grads).is_some());
    // A linear CA: logvar may be negative, so σ < 1 is reachable.
    let linear = StackGanConfig {
        ca_relu: false,
        ..StackGanConfig::smoke(DialogueVariant::CaptionOnly)
    };
    dev.seed(2);
    let ca = weights_init(linear.ca().init(&dev));
    let (mu, logvar) = ca.encode(randn([64, linear.text_dim()], &dev).mul_scalar(30.0));
    assert!(to_vec(logvar).iter().any(|v| *v < 0.0));
    assert!(to_vec(mu).iter().any(|v| *v < 0.0));
}

#[test]
fn stage2_losses_use_both_heads() {
    let dev = Device::flex().autodiff();
    dev.seed(10);
    let cfg = StackGanConfig::smoke(DialogueVariant::CaptionOnly);
    let d = weights_init(cfg.stage2_d().expect("stage2").init(&dev));
    let b = 2;
    let real = randn([b, 3, 256, 256], &dev).tanh();
    let fake = randn([b, 3, 256, 256], &dev).tanh();
    let mu = randn([b, cfg.cond_dim], &dev);
    let dl = discriminator_loss(&d, real, fake.clone(), mu.clone(), None).expect("B ≥ 2");
    let (r, w, f) = (
        dl.real.clone().into_scalar::<f32>(),
        dl.wrong.clone().into_scalar::<f32>(),
        dl.fake.clone().into_scalar::<f32>(),
    );
    let ur = dl
        .uncond_real
        .clone()
        .expect("stage-II")
        .into_scalar::<f32>();
    let uf = dl
        .uncond_fake
        .clone()
        .expect("stage-II")
        .into_scalar::<f32>();
    let want = (r + ur) / 2.0 + (f + w + uf) / 3.0;
    assert!((dl.total.into_scalar::<f32>() - want).abs() < 1e-5);
    let gl = generator_loss(&d, fake, mu.clone(), mu.zeros_like(), 2.0, None);
    assert!(gl.total.into_scalar::<f32>().is_finite());
}

// ---------------------------------------------------------------- Stage-II's frozen Stage-I

#[test]
fn stage2_freezes_stage1_with_configurable_batch_norm_mode() {
    let dev = Device::flex().autodiff();
    dev.seed(12);
    for batch_stats in [true, false] {
        let mut cfg = StackGanConfig::smoke(DialogueVariant::CaptionOnly);
        cfg.stage1_bn_batch_stats = batch_stats;
        let g2 = weights_init(cfg.stage2_g().expect("stage2").init(&dev));
        assert!(!g2.stage1_g.img.weight.val().is_require_grad());
        assert!(!g2.stage1_g.ca_net.fc.weight.val().is_require_grad());
        assert!(g2.img.weight.val().is_require_grad());
        assert_eq!(g2.stage1_g.fc.bn.training.is_enabled(), batch_stats);
        let before = to_vec(g2.stage1_g.upsample1.bn.running_mean.value_sync());
        let out = g2.forward(
            randn([2, cfg.text_dim()], &dev),
            randn([2, cfg.z_dim], &dev),
        );
        let after = to_vec(g2.stage1_g.upsample1.bn.running_mean.value_sync());
        // Reference behaviour: train-mode BN inside the frozen Stage-I updates running stats.
        assert_eq!(before != after, batch_stats);
        // Gradients reach Stage-II's own layers only.
        let grads = out.fake.mean().backward();
        assert!(g2.img.weight.val().grad(&grads).is_some());
        assert!(g2.stage1_g.img.weight.val().grad(&grads).is_none());
    }
}

// ---------------------------------------------------------------- presets

#[test]
fn presets_resolve() {
    for name in PRESET_NAMES {
        let cfg = StackGanConfig::preset(name).expect(name);
        assert!(cfg.text_dim() >= cfg.caption_dim);
    }
    let text_dim = |n: &str| StackGanConfig::preset(n).expect(n).text_dim();
    assert_eq!(text_dim("stackgan-pytorch-coco"), 1024);
    assert_eq!(text_dim("chatpainter-nonrecurrent"), 5824);
    assert_eq!(text_dim("chatpainter-recurrent"), 3072);
    let coco = StackGanConfig::stackgan_pytorch_coco();
    assert_eq!(
        (
            coco.gf_dim,
            coco.df_dim,
            coco.stage2.map(|s| s.r_num),
            coco.cond_dim,
            coco.z_dim
        ),
        (192, 96, Some(2), 128, 100)
    );
    let cp = StackGanConfig::chatpainter(DialogueVariant::paper_recurrent());
    assert_eq!(
        (cp.gf_dim, cp.df_dim, cp.stage2.map(|s| s.r_num)),
        (128, 64, Some(4))
    );
    assert!(matches!(
        StackGanConfig::preset("nope"),
        Err(NnError::UnknownPreset { .. })
    ));
}
