//! Inception v3 in Burn 0.22, in the two flavours that IS/FID numbers are computed with.
//!
//! * [`Backbone::TorchvisionImagenet`]: torchvision's `Inception3` (ImageNet, 1000 classes,
//!   `inception_v3_google-0cc3c7bd.pth`), what ChatPainter used for its Inception Score.
//! * [`Backbone::TfInception2015`]: the TensorFlow "2015-12-05" graph as converted by
//!   pytorch-fid / torch-fidelity (`pt_inception-2015-12-05-6726825d.pth`), what StackGAN,
//!   AttnGAN and DM-GAN used, and the only backbone FID is defined with. Same skeleton; it
//!   differs in 1008 classes, no aux head, `count_include_pad = False` in the average pools of
//!   Mixed_5b–6e and Mixed_7b, a **max** pool in Mixed_7c's pool branch, and IS logits taken
//!   as `pool3 · fcᵀ` without the bias (torch-fidelity's `logits_unbiased`).
//!
//! Module and field names are the PyTorch `state_dict` names (`Conv2d_1a_3x3.conv.weight`,
//! `Mixed_5b.branch1x1.bn.running_mean`, `fc.weight`, `AuxLogits.conv0.conv.weight`, ...), so a
//! checkpoint maps one-to-one through burn-store's PyTorch adapter (BatchNorm
//! `weight`/`bias` ↔ `gamma`/`beta`, Linear weight transposed). Pooling layers carry no
//! parameters, so their names (`maxpool1` vs torch-fidelity's `MaxPool_1`) do not matter.
//! BatchNorm epsilon is 0.001 as in both references. The network is only ever run in
//! inference mode here (running statistics, no dropout).

// Field names must equal the PyTorch state_dict keys (`Conv2d_1a_3x3`, `Mixed_5b`, `AuxLogits`).
#![allow(non_snake_case)]

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{
    AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, AvgPool2d, AvgPool2dConfig, MaxPool2d,
    MaxPool2dConfig,
};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::{relu, softmax};
use burn::tensor::{Device, Tensor};

/// BatchNorm epsilon of torchvision's `BasicConv2d` (and of the TF graph).
pub const BN_EPS: f64 = 0.001;

/// Input side length both backbones were trained / converted at.
pub const INPUT_SIZE: usize = 299;

/// Dimension of the final average pool ("pool3") features used by FID.
pub const POOL3_DIM: usize = 2048;

/// Which Inception v3 weights / graph semantics to build. Never compare numbers across them.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Backbone {
    /// torchvision `inception_v3` with ImageNet weights (1000 classes, logits with bias).
    TorchvisionImagenet,
    /// TF "2015-12-05" graph as in pytorch-fid / torch-fidelity (1008 classes, bias-free logits).
    TfInception2015,
}

impl Backbone {
    /// Number of classifier outputs.
    pub fn num_classes(self) -> usize {
        match self {
            Self::TorchvisionImagenet => 1000,
            Self::TfInception2015 => 1008,
        }
    }

    /// A stable human-readable label to print next to every number this backbone produced.
    pub fn label(self) -> &'static str {
        match self {
            Self::TorchvisionImagenet => "torchvision-inception-v3-imagenet",
            Self::TfInception2015 => "tf-inception-2015-12-05",
        }
    }

    /// The published weights file name; its 8 hex digits are the sha256 prefix.
    pub fn reference_weights_file(self) -> &'static str {
        match self {
            Self::TorchvisionImagenet => "inception_v3_google-0cc3c7bd.pth",
            Self::TfInception2015 => "pt_inception-2015-12-05-6726825d.pth",
        }
    }

    /// sha256 prefix of the published weights file (torch hub naming convention).
    pub fn reference_sha256_prefix(self) -> &'static str {
        match self {
            Self::TorchvisionImagenet => "0cc3c7bd",
            Self::TfInception2015 => "6726825d",
        }
    }
}

/// Hyper-parameters of [`InceptionV3`].
#[derive(Config, Debug)]
pub struct InceptionConfig {
    /// Which flavour.
    pub backbone: Backbone,
    /// Build torchvision's auxiliary classifier (`AuxLogits.*`). It is never run (inference
    /// only); it exists so that parameter counts / strict loading can mirror torchvision.
    /// Ignored (treated as false) for the TF backbone, which has none.
    #[config(default = false)]
    pub aux_logits: bool,
    /// torchvision `transform_input`: the network expects ImageNet-normalised input and maps
    /// it back to [-1, 1] itself. Feeding [-1, 1] with this on silently lowers the score.
    /// Ignored for the TF backbone.
    #[config(default = false)]
    pub transform_input: bool,
}

/// What [`InceptionV3::forward`] returns.
#[derive(Debug, Clone)]
pub struct InceptionOutput {
    /// Final average pool ("pool3") features, `[N, 2048]`: the FID features.
    pub pool3: Tensor<2>,
    /// Classifier logits, `[N, num_classes]`: torchvision: `fc(pool3)` with bias;
    /// TF graph: `pool3 · fcᵀ` without bias (what the TF IS code and torch-fidelity use).
    pub logits: Tensor<2>,
}

/// `BasicConv2d`: conv (no bias) → BatchNorm(eps 0.001) → ReLU.
#[derive(Module, Debug)]
pub struct BasicConv2d {
    /// Convolution without bias.
    pub conv: Conv2d,
    /// Batch norm (inference: running statistics).
    pub bn: BatchNorm,
}

impl BasicConv2d {
    fn new(
        cin: usize,
        cout: usize,
        kernel: [usize; 2],
        stride: usize,
        padding: [usize; 2],
        device: &Device,
    ) -> Self {
        let [ph, pw] = padding;
        let conv = Conv2dConfig::new([cin, cout], kernel)
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(ph, pw, ph, pw))
            .with_bias(false)
            .init(device);
        let bn = BatchNormConfig::new(cout).with_epsilon(BN_EPS).init(device);
        Self { conv, bn }
    }

    /// Square kernel, stride 1, no padding.
    fn k(cin: usize, cout: usize, k: usize, device: &Device) -> Self {
        Self::new(cin, cout, [k, k], 1, [0, 0], device)
    }

    /// # Shapes
    /// `[N, cin, H, W]` → `[N, cout, H', W']`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        relu(self.bn.forward(self.conv.forward(x)))
    }
}

/// 3×3 stride-1 pad-1 average pool; `count_include_pad` is torchvision's default (true) or the
/// TF graph's behaviour (false: padded zeros are not counted).
fn avg3(count_include_pad: bool) -> AvgPool2d {
    AvgPool2dConfig::new([3, 3])
        .with_strides([1, 1])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_count_include_pad(count_include_pad)
        .init()
}

/// 3×3 stride-2 max pool without padding (reductions and stem).
fn max3s2() -> MaxPool2d {
    MaxPool2dConfig::new([3, 3]).with_strides([2, 2]).init()
}

/// `InceptionA` (Mixed_5b–5d): 35×35 block.
#[derive(Module, Debug)]
pub struct InceptionA {
    pub branch1x1: BasicConv2d,
    pub branch5x5_1: BasicConv2d,
    pub branch5x5_2: BasicConv2d,
    pub branch3x3dbl_1: BasicConv2d,
    pub branch3x3dbl_2: BasicConv2d,
    pub branch3x3dbl_3: BasicConv2d,
    pub branch_pool: BasicConv2d,
    pub pool: AvgPool2d,
}

impl InceptionA {
    fn new(cin: usize, pool_features: usize, count_include_pad: bool, d: &Device) -> Self {
        Self {
            branch1x1: BasicConv2d::k(cin, 64, 1, d),
            branch5x5_1: BasicConv2d::k(cin, 48, 1, d),
            branch5x5_2: BasicConv2d::new(48, 64, [5, 5], 1, [2, 2], d),
            branch3x3dbl_1: BasicConv2d::k(cin, 64, 1, d),
            branch3x3dbl_2: BasicConv2d::new(64, 96, [3, 3], 1, [1, 1], d),
            branch3x3dbl_3: BasicConv2d::new(96, 96, [3, 3], 1, [1, 1], d),
            branch_pool: BasicConv2d::k(cin, pool_features, 1, d),
            pool: avg3(count_include_pad),
        }
    }

    /// # Shapes
    /// `[N, cin, 35, 35]` → `[N, 224 + pool_features, 35, 35]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b5 = self
            .branch5x5_2
            .forward(self.branch5x5_1.forward(x.clone()));
        let b3 = self.branch3x3dbl_3.forward(
            self.branch3x3dbl_2
                .forward(self.branch3x3dbl_1.forward(x.clone())),
        );
        let bp = self.branch_pool.forward(self.pool.forward(x));
        Tensor::cat(vec![b1, b5, b3, bp], 1)
    }
}

/// `InceptionB` (Mixed_6a): 35×35 → 17×17 reduction.
#[derive(Module, Debug)]
pub struct InceptionB {
    pub branch3x3: BasicConv2d,
    pub branch3x3dbl_1: BasicConv2d,
    pub branch3x3dbl_2: BasicConv2d,
    pub branch3x3dbl_3: BasicConv2d,
    pub pool: MaxPool2d,
}

impl InceptionB {
    fn new(cin: usize, d: &Device) -> Self {
        Self {
            branch3x3: BasicConv2d::new(cin, 384, [3, 3], 2, [0, 0], d),
            branch3x3dbl_1: BasicConv2d::k(cin, 64, 1, d),
            branch3x3dbl_2: BasicConv2d::new(64, 96, [3, 3], 1, [1, 1], d),
            branch3x3dbl_3: BasicConv2d::new(96, 96, [3, 3], 2, [0, 0], d),
            pool: max3s2(),
        }
    }

    /// # Shapes
    /// `[N, 288, 35, 35]` → `[N, 768, 17, 17]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b3 = self.branch3x3.forward(x.clone());
        let bd = self.branch3x3dbl_3.forward(
            self.branch3x3dbl_2
                .forward(self.branch3x3dbl_1.forward(x.clone())),
        );
        let bp = self.pool.forward(x);
        Tensor::cat(vec![b3, bd, bp], 1)
    }
}

/// `InceptionC` (Mixed_6b–6e): 17×17 block with factorised 7×7 convolutions.
#[derive(Module, Debug)]
pub struct InceptionC {
    pub branch1x1: BasicConv2d,
    pub branch7x7_1: BasicConv2d,
    pub branch7x7_2: BasicConv2d,
    pub branch7x7_3: BasicConv2d,
    pub branch7x7dbl_1: BasicConv2d,
    pub branch7x7dbl_2: BasicConv2d,
    pub branch7x7dbl_3: BasicConv2d,
    pub branch7x7dbl_4: BasicConv2d,
    pub branch7x7dbl_5: BasicConv2d,
    pub branch_pool: BasicConv2d,
    pub pool: AvgPool2d,
}

impl InceptionC {
    fn new(cin: usize, c7: usize, count_include_pad: bool, d: &Device) -> Self {
        let h = |a, b| BasicConv2d::new(a, b, [1, 7], 1, [0, 3], d);
        let v = |a, b| BasicConv2d::new(a, b, [7, 1], 1, [3, 0], d);
        Self {
            branch1x1: BasicConv2d::k(cin, 192, 1, d),
            branch7x7_1: BasicConv2d::k(cin, c7, 1, d),
            branch7x7_2: h(c7, c7),
            branch7x7_3: v(c7, 192),
            branch7x7dbl_1: BasicConv2d::k(cin, c7, 1, d),
            branch7x7dbl_2: v(c7, c7),
            branch7x7dbl_3: h(c7, c7),
            branch7x7dbl_4: v(c7, c7),
            branch7x7dbl_5: h(c7, 192),
            branch_pool: BasicConv2d::k(cin, 192, 1, d),
            pool: avg3(count_include_pad),
        }
    }

    /// # Shapes
    /// `[N, 768, 17, 17]` → `[N, 768, 17, 17]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b7 = self.branch7x7_3.forward(
            self.branch7x7_2
                .forward(self.branch7x7_1.forward(x.clone())),
        );
        let mut bd = self.branch7x7dbl_1.forward(x.clone());
        bd = self.branch7x7dbl_2.forward(bd);
        bd = self.branch7x7dbl_3.forward(bd);
        bd = self.branch7x7dbl_4.forward(bd);
        bd = self.branch7x7dbl_5.forward(bd);
        let bp = self.branch_pool.forward(self.pool.forward(x));
        Tensor::cat(vec![b1, b7, bd, bp], 1)
    }
}

/// `InceptionD` (Mixed_7a): 17×17 → 8×8 reduction.
#[derive(Module, Debug)]
pub struct InceptionD {
    pub branch3x3_1: BasicConv2d,
    pub branch3x3_2: BasicConv2d,
    pub branch7x7x3_1: BasicConv2d,
    pub branch7x7x3_2: BasicConv2d,
    pub branch7x7x3_3: BasicConv2d,
    pub branch7x7x3_4: BasicConv2d,
    pub pool: MaxPool2d,
}

impl InceptionD {
    fn new(cin: usize, d: &Device) -> Self {
        Self {
            branch3x3_1: BasicConv2d::k(cin, 192, 1, d),
            branch3x3_2: BasicConv2d::new(192, 320, [3, 3], 2, [0, 0], d),
            branch7x7x3_1: BasicConv2d::k(cin, 192, 1, d),
            branch7x7x3_2: BasicConv2d::new(192, 192, [1, 7], 1, [0, 3], d),
            branch7x7x3_3: BasicConv2d::new(192, 192, [7, 1], 1, [3, 0], d),
            branch7x7x3_4: BasicConv2d::new(192, 192, [3, 3], 2, [0, 0], d),
            pool: max3s2(),
        }
    }

    /// # Shapes
    /// `[N, 768, 17, 17]` → `[N, 1280, 8, 8]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b3 = self
            .branch3x3_2
            .forward(self.branch3x3_1.forward(x.clone()));
        let mut b7 = self.branch7x7x3_1.forward(x.clone());
        b7 = self.branch7x7x3_2.forward(b7);
        b7 = self.branch7x7x3_3.forward(b7);
        b7 = self.branch7x7x3_4.forward(b7);
        let bp = self.pool.forward(x);
        Tensor::cat(vec![b3, b7, bp], 1)
    }
}

/// `InceptionE` (Mixed_7b, 7c): 8×8 block with expanded filter banks. The pool branch is an
/// average pool (torchvision; TF graph in Mixed_7b with `count_include_pad = False`) or a 3×3
/// stride-1 pad-1 max pool (TF graph Mixed_7c, pytorch-fid's `FIDInceptionE_2`).
#[derive(Module, Debug)]
pub struct InceptionE {
    pub branch1x1: BasicConv2d,
    pub branch3x3_1: BasicConv2d,
    pub branch3x3_2a: BasicConv2d,
    pub branch3x3_2b: BasicConv2d,
    pub branch3x3dbl_1: BasicConv2d,
    pub branch3x3dbl_2: BasicConv2d,
    pub branch3x3dbl_3a: BasicConv2d,
    pub branch3x3dbl_3b: BasicConv2d,
    pub branch_pool: BasicConv2d,
    pub avg_pool: AvgPool2d,
    pub max_pool: MaxPool2d,
    /// Use `max_pool` instead of `avg_pool` in the pool branch.
    pub pool_is_max: bool,
}

impl InceptionE {
    fn new(cin: usize, count_include_pad: bool, pool_is_max: bool, d: &Device) -> Self {
        Self {
            branch1x1: BasicConv2d::k(cin, 320, 1, d),
            branch3x3_1: BasicConv2d::k(cin, 384, 1, d),
            branch3x3_2a: BasicConv2d::new(384, 384, [1, 3], 1, [0, 1], d),
            branch3x3_2b: BasicConv2d::new(384, 384, [3, 1], 1, [1, 0], d),
            branch3x3dbl_1: BasicConv2d::k(cin, 448, 1, d),
            branch3x3dbl_2: BasicConv2d::new(448, 384, [3, 3], 1, [1, 1], d),
            branch3x3dbl_3a: BasicConv2d::new(384, 384, [1, 3], 1, [0, 1], d),
            branch3x3dbl_3b: BasicConv2d::new(384, 384, [3, 1], 1, [1, 0], d),
            branch_pool: BasicConv2d::k(cin, 192, 1, d),
            avg_pool: avg3(count_include_pad),
            // Inputs are post-ReLU (≥ 0), so the padding value of the max pool cannot win
            // against the window centre: zero padding and PyTorch's -inf padding agree.
            max_pool: MaxPool2dConfig::new([3, 3])
                .with_strides([1, 1])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            pool_is_max,
        }
    }

    /// # Shapes
    /// `[N, cin, 8, 8]` → `[N, 2048, 8, 8]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let t = self.branch3x3_1.forward(x.clone());
        let b3 = Tensor::cat(
            vec![
                self.branch3x3_2a.forward(t.clone()),
                self.branch3x3_2b.forward(t),
            ],
            1,
        );
        let t = self
            .branch3x3dbl_2
            .forward(self.branch3x3dbl_1.forward(x.clone()));
        let bd = Tensor::cat(
            vec![
                self.branch3x3dbl_3a.forward(t.clone()),
                self.branch3x3dbl_3b.forward(t),
            ],
            1,
        );
        let pooled = if self.pool_is_max {
            self.max_pool.forward(x)
        } else {
            self.avg_pool.forward(x)
        };
        let bp = self.branch_pool.forward(pooled);
        Tensor::cat(vec![b1, b3, bd, bp], 1)
    }
}

/// torchvision `InceptionAux` (only built to mirror torchvision's parameter set; never run).
#[derive(Module, Debug)]
pub struct InceptionAux {
    pub conv0: BasicConv2d,
    pub conv1: BasicConv2d,
    pub fc: Linear,
}

impl InceptionAux {
    fn new(cin: usize, num_classes: usize, d: &Device) -> Self {
        Self {
            conv0: BasicConv2d::k(cin, 128, 1, d),
            conv1: BasicConv2d::k(128, 768, 5, d),
            fc: LinearConfig::new(768, num_classes).init(d),
        }
    }
}

/// Inception v3 (torchvision skeleton), see the module docs for the two flavours.
#[derive(Module, Debug)]
pub struct InceptionV3 {
    pub Conv2d_1a_3x3: BasicConv2d,
    pub Conv2d_2a_3x3: BasicConv2d,
    pub Conv2d_2b_3x3: BasicConv2d,
    pub maxpool1: MaxPool2d,
    pub Conv2d_3b_1x1: BasicConv2d,
    pub Conv2d_4a_3x3: BasicConv2d,
    pub maxpool2: MaxPool2d,
    pub Mixed_5b: InceptionA,
    pub Mixed_5c: InceptionA,
    pub Mixed_5d: InceptionA,
    pub Mixed_6a: InceptionB,
    pub Mixed_6b: InceptionC,
    pub Mixed_6c: InceptionC,
    pub Mixed_6d: InceptionC,
    pub Mixed_6e: InceptionC,
    pub AuxLogits: Option<InceptionAux>,
    pub Mixed_7a: InceptionD,
    pub Mixed_7b: InceptionE,
    pub Mixed_7c: InceptionE,
    pub avgpool: AdaptiveAvgPool2d,
    pub fc: Linear,
    /// Apply torchvision's `_transform_input` (ImageNet-normalised → [-1, 1]) first.
    pub transform_input: bool,
    /// Compute logits without the fc bias (TF graph / torch-fidelity `logits_unbiased`).
    pub logits_without_bias: bool,
}

impl InceptionConfig {
    /// Builds the network with Burn's default (random) initialisation; real use loads a
    /// weights file afterwards ([`crate::weights::load_inception`]).
    pub fn init(&self, device: &Device) -> InceptionV3 {
        let tf = self.backbone == Backbone::TfInception2015;
        // torchvision counts padded zeros in its 3×3 average pools; the TF graph does not.
        let cip = !tf;
        let nc = self.backbone.num_classes();
        let d = device;
        InceptionV3 {
            Conv2d_1a_3x3: BasicConv2d::new(3, 32, [3, 3], 2, [0, 0], d),
            Conv2d_2a_3x3: BasicConv2d::k(32, 32, 3, d),
            Conv2d_2b_3x3: BasicConv2d::new(32, 64, [3, 3], 1, [1, 1], d),
            maxpool1: max3s2(),
            Conv2d_3b_1x1: BasicConv2d::k(64, 80, 1, d),
            Conv2d_4a_3x3: BasicConv2d::k(80, 192, 3, d),
            maxpool2: max3s2(),
            Mixed_5b: InceptionA::new(192, 32, cip, d),
            Mixed_5c: InceptionA::new(256, 64, cip, d),
            Mixed_5d: InceptionA::new(288, 64, cip, d),
            Mixed_6a: InceptionB::new(288, d),
            Mixed_6b: InceptionC::new(768, 128, cip, d),
            Mixed_6c: InceptionC::new(768, 160, cip, d),
            Mixed_6d: InceptionC::new(768, 160, cip, d),
            Mixed_6e: InceptionC::new(768, 192, cip, d),
            AuxLogits: (self.aux_logits && !tf).then(|| InceptionAux::new(768, nc, d)),
            Mixed_7a: InceptionD::new(768, d),
            Mixed_7b: InceptionE::new(1280, cip, false, d),
            Mixed_7c: InceptionE::new(2048, cip, tf, d),
            avgpool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            fc: LinearConfig::new(POOL3_DIM, nc).init(d),
            transform_input: self.transform_input && !tf,
            logits_without_bias: tf,
        }
    }
}

impl InceptionV3 {
    /// Number of classifier outputs (1000 or 1008).
    pub fn num_classes(&self) -> usize {
        let [_, nc] = self.fc.weight.shape().dims();
        nc
    }

    /// torchvision's `_transform_input`: ImageNet-normalised input → the [-1, 1] input the
    /// ported TF weights expect.
    pub(crate) fn transform(&self, x: Tensor<4>) -> Tensor<4> {
        if !self.transform_input {
            return x;
        }
        let device = x.device();
        // x_c * (std_c / 0.5) + (mean_c - 0.5) / 0.5, per channel.
        let scale = Tensor::<1>::from_floats([0.229 / 0.5, 0.224 / 0.5, 0.225 / 0.5], &device)
            .reshape([1, 3, 1, 1]);
        let shift = Tensor::<1>::from_floats(
            [
                (0.485 - 0.5) / 0.5,
                (0.456 - 0.5) / 0.5,
                (0.406 - 0.5) / 0.5,
            ],
            &device,
        )
        .reshape([1, 3, 1, 1]);
        x * scale + shift
    }

    /// Runs the network up to pool3 and the classifier.
    ///
    /// # Shapes
    /// - `x`: `[N, 3, 299, 299]` preprocessed as [`crate::preprocess`] does for this backbone
    ///   (other sizes ≥ 75 run too but are not what the weights were evaluated at).
    /// - `pool3`: `[N, 2048]`, `logits`: `[N, num_classes]`.
    pub fn forward(&self, x: Tensor<4>) -> InceptionOutput {
        let x = self.transform(x);
        let x = self.Conv2d_1a_3x3.forward(x); // N×32×149×149
        let x = self.Conv2d_2a_3x3.forward(x); // N×32×147×147
        let x = self.Conv2d_2b_3x3.forward(x); // N×64×147×147
        let x = self.maxpool1.forward(x); // N×64×73×73
        let x = self.Conv2d_3b_1x1.forward(x); // N×80×73×73
        let x = self.Conv2d_4a_3x3.forward(x); // N×192×71×71
        let x = self.maxpool2.forward(x); // N×192×35×35
        let x = self.Mixed_5b.forward(x); // N×256×35×35
        let x = self.Mixed_5c.forward(x); // N×288×35×35
        let x = self.Mixed_5d.forward(x); // N×288×35×35
        let x = self.Mixed_6a.forward(x); // N×768×17×17
        let x = self.Mixed_6b.forward(x);
        let x = self.Mixed_6c.forward(x);
        let x = self.Mixed_6d.forward(x);
        let x = self.Mixed_6e.forward(x); // N×768×17×17
        let x = self.Mixed_7a.forward(x); // N×1280×8×8
        let x = self.Mixed_7b.forward(x); // N×2048×8×8
        let x = self.Mixed_7c.forward(x); // N×2048×8×8
        let x = self.avgpool.forward(x); // N×2048×1×1
        let pool3: Tensor<2> = x.flatten(1, 3);
        let logits = if self.logits_without_bias {
            // Burn stores Linear weights as [d_in, d_out].
            pool3.clone().matmul(self.fc.weight.val())
        } else {
            self.fc.forward(pool3.clone())
        };
        InceptionOutput { pool3, logits }
    }

    /// Class posteriors `softmax(logits)`, `[N, num_classes]`: the input of the Inception Score.
    pub fn probabilities(&self, x: Tensor<4>) -> Tensor<2> {
        softmax(self.forward(x).logits, 1)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;
    use crate::preprocess::{ImageBatch, Preprocess, preprocess};

    /// `transform_input = true` + ImageNet-normalised input must give the network exactly the
    /// [-1, 1] input that `transform_input = false` gets (feeding [-1, 1] with it on is a known
    /// way to lower the score silently).
    #[test]
    fn transform_input_undoes_imagenet_normalisation() {
        let device = Device::flex();
        let model = InceptionConfig::new(Backbone::TorchvisionImagenet)
            .with_transform_input(true)
            .init(&device);
        assert!(model.transform_input);
        let pixels: Vec<f32> = (0..3 * 8 * 8)
            .map(|i| (i % 17) as f32 / 8.0 - 1.0)
            .collect();
        let batch = ImageBatch::SignedUnitNchw {
            data: &pixels,
            n: 1,
            height: 8,
            width: 8,
        };
        let imagenet = preprocess(
            &batch,
            Preprocess::Torchvision {
                transform_input: true,
            },
            &device,
        )
        .unwrap();
        let plain = preprocess(
            &batch,
            Preprocess::Torchvision {
                transform_input: false,
            },
            &device,
        )
        .unwrap();
        let diff = (model.transform(imagenet) - plain)
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(diff < 1e-5, "{diff}");
        // The TF backbone never transforms.
        let tf = InceptionConfig::new(Backbone::TfInception2015)
            .with_transform_input(true)
            .init(&device);
        assert!(!tf.transform_input && tf.AuxLogits.is_none());
    }
}
