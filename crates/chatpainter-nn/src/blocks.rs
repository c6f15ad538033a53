//! The reference building blocks (`conv3x3`, `upBlock`, `ResBlock`, the 4×4/s2 down block and the
//! two `D_GET_LOGITS` heads), each a Burn module whose fields name the layers of the PyTorch
//! `nn.Sequential` they replace; [`crate::names`] turns those fields into the Sequential indices.
//!
//! Layer constructors here only fix shapes and bias flags. Weight values come from Burn's defaults
//! (PyTorch-like) until [`crate::weights_init`] applies the reference scheme.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::activation::{leaky_relu, relu, sigmoid};
use burn::tensor::module::{batch_norm_train, interpolate};
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, FloatDType, Tensor};

/// LeakyReLU slope used everywhere in the reference code.
pub const LEAKY_SLOPE: f64 = 0.2;

/// `conv3x3(in, out)`: kernel 3, stride 1, padding 1, no bias.
pub fn conv3x3(cin: usize, cout: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(device)
}

/// `nn.Conv2d(in, out, 4, 2, 1, bias=False)`: halves H and W.
pub fn conv4x4_down(cin: usize, cout: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [4, 4])
        .with_stride([2, 2])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(device)
}

/// The logit conv `nn.Conv2d(in, 1, kernel_size=4, stride=4)`: the only biased conv (PyTorch
/// default `bias=True`); on a 4×4 map it is a fully connected layer to one unit.
pub fn logit_conv(cin: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, 1], [4, 4])
        .with_stride([4, 4])
        .with_padding(PaddingConfig2d::Valid)
        .with_bias(true)
        .init(device)
}

/// `nn.BatchNorm{1,2}d(c)` with the PyTorch defaults (eps 1e-5, momentum 0.1, affine).
pub fn batch_norm(c: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(c)
        .with_epsilon(1e-5)
        .with_momentum(0.1)
        .init(device)
}

thread_local! {
    static BATCH_STATISTICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every inference-mode BatchNorm of this thread normalising by the batch's own
/// statistics (train-mode arithmetic) while the running statistics are neither used nor
/// updated. For training sample sheets: the reference draws them in train mode, and in the
/// first hundreds of steps the running statistics lag so far behind that inference mode shows
/// flat grey squares while the generator already draws structure; this shows the latter without
/// changing the training state.
pub fn with_batch_statistics<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            BATCH_STATISTICS.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(BATCH_STATISTICS.with(|b| b.replace(true)));
    f()
}

/// A BatchNorm forward with PyTorch's running-variance rule.
///
/// Train mode (an autodiff input and the layer's training flag on, Burn's own test) normalises
/// with the biased batch variance, like both frameworks, but PyTorch updates `running_var` with the
/// *unbiased* variance (× n/(n−1), n = elements per channel) while Burn's `BatchNorm` uses the
/// biased one. That matters for the Stage-I `fc` BatchNorm1d (n = batch size) whose running
/// statistics the evaluation uses. Eval mode is Burn's own path (running statistics).
///
/// # Shapes
/// `[B, C, ...]` → same
pub fn bn_forward<const D: usize>(bn: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    if !(x.device().is_autodiff() && bn.training.is_enabled()) {
        if BATCH_STATISTICS.with(std::cell::Cell::get) {
            return batch_norm_train(x, bn.gamma.val(), bn.beta.val(), bn.epsilon).output;
        }
        return bn.forward(x);
    }
    let dims = x.dims();
    let n = dims[0] * dims[2..].iter().product::<usize>();
    let unbiased = if n > 1 {
        n as f64 / (n - 1) as f64
    } else {
        1.0
    };
    let device = x.device();
    let result = batch_norm_train(x, bn.gamma.val(), bn.beta.val(), bn.epsilon);
    // Running statistics stay float32 when the step computes in bfloat16.
    let m = bn.momentum;
    let running_mean = bn
        .running_mean
        .value_sync()
        .to_device(&device)
        .mul_scalar(1.0 - m)
        .add(result.mean.detach().cast(FloatDType::F32).mul_scalar(m));
    let running_var = bn
        .running_var
        .value_sync()
        .to_device(&device)
        .mul_scalar(1.0 - m)
        .add(
            result
                .variance
                .detach()
                .cast(FloatDType::F32)
                .mul_scalar(m * unbiased),
        );
    bn.running_mean.update(running_mean.detach());
    bn.running_var.update(running_var.detach());
    result.output
}

/// Nearest-neighbour ×2 upsampling (`nn.Upsample(scale_factor=2, mode='nearest')`).
///
/// # Shapes
/// `[B, C, H, W]` → `[B, C, 2H, 2W]`
pub fn upsample_nearest2x(x: Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    // Explicit output size and align_corners=false: PyTorch `nearest` picks floor(dst * in/out).
    let options = InterpolateOptions::new(InterpolateMode::Nearest)
        .with_align_corners(false)
        .with_output_size([2 * h, 2 * w]);
    interpolate(x, options)
}

/// `upBlock(in, out)`: upsample ×2 → conv3x3 → BatchNorm2d → ReLU.
/// Torch names: `conv` = `.1`, `bn` = `.2` (index 0 is the parameter-free `nn.Upsample`).
#[derive(Module, Debug)]
pub struct UpBlock {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

impl UpBlock {
    pub fn new(cin: usize, cout: usize, device: &Device) -> Self {
        Self {
            conv: conv3x3(cin, cout, device),
            bn: batch_norm(cout, device),
        }
    }

    /// # Shapes
    /// `[B, cin, H, W]` → `[B, cout, 2H, 2W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        relu(bn_forward(
            &self.bn,
            self.conv.forward(upsample_nearest2x(x)),
        ))
    }
}

/// `ResBlock(C)`: `ReLU(body(x) + x)` with body = conv3x3 → BN → ReLU → conv3x3 → BN.
/// Torch names: `block.0` conv1, `block.1` bn1, `block.3` conv2, `block.4` bn2.
#[derive(Module, Debug)]
pub struct ResBlock {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
}

impl ResBlock {
    pub fn new(c: usize, device: &Device) -> Self {
        Self {
            conv1: conv3x3(c, c, device),
            bn1: batch_norm(c, device),
            conv2: conv3x3(c, c, device),
            bn2: batch_norm(c, device),
        }
    }

    /// # Shapes
    /// `[B, C, H, W]` → `[B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = relu(bn_forward(&self.bn1, self.conv1.forward(x.clone())));
        let h = bn_forward(&self.bn2, self.conv2.forward(h));
        // The reference applies the ReLU after the identity add.
        relu(h + x)
    }
}

/// Activation that follows a [`ConvBn`] block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Relu,
    LeakyRelu,
}

/// A conv, an optional BatchNorm2d, then an activation (the activation is a property of the
/// owning Sequential, passed to [`ConvBn::forward`]). One entry of an encoder `nn.Sequential`:
/// the conv, the BN (if any) and the activation each take one torch index.
#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: Option<BatchNorm>,
}

impl ConvBn {
    pub fn new(conv: Conv2d, bn_channels: Option<usize>, device: &Device) -> Self {
        Self {
            conv,
            bn: bn_channels.map(|c| batch_norm(c, device)),
        }
    }

    /// Number of torch Sequential slots this block takes (conv, optional BN, activation).
    pub fn torch_len(&self) -> usize {
        if self.bn.is_some() { 3 } else { 2 }
    }

    /// # Shapes
    /// `[B, cin, H, W]` → `[B, cout, H', W']` (H' = H for conv3x3, H/2 for the 4×4/s2 conv)
    pub fn forward(&self, x: Tensor<4>, act: Act) -> Tensor<4> {
        let mut h = self.conv.forward(x);
        if let Some(bn) = &self.bn {
            h = bn_forward(bn, h);
        }
        match act {
            Act::Relu => relu(h),
            Act::LeakyRelu => leaky_relu(h, LEAKY_SLOPE),
        }
    }
}

/// Runs a list of [`ConvBn`] blocks with one activation, like the reference encoders.
pub fn run_sequential(blocks: &[ConvBn], x: Tensor<4>, act: Act) -> Tensor<4> {
    blocks.iter().fold(x, |h, b| b.forward(h, act))
}

/// Tiles a condition vector to a square map.
///
/// # Shapes
/// `[B, C]` → `[B, C, size, size]`
pub fn tile_condition(c: Tensor<2>, size: usize) -> Tensor<4> {
    let [b, n] = c.dims();
    c.reshape([b, n, 1, 1]).repeat(&[1, 1, size, size])
}

/// `D_GET_LOGITS(ndf, nef, bcondition=True)`: `[h ‖ tile(c)]` → conv3x3(8ndf+nef → 8ndf) → BN →
/// LeakyReLU(0.2) → Conv2d(8ndf → 1, k4, s4, bias) → Sigmoid.
/// Torch names: `outlogits.0` joint conv, `outlogits.1` BN, `outlogits.3` logit conv.
#[derive(Module, Debug)]
pub struct CondLogits {
    pub joint_conv: Conv2d,
    pub joint_bn: BatchNorm,
    pub logit: Conv2d,
    /// Condition width `nef` (the CA output dim).
    pub cond_dim: usize,
}

impl CondLogits {
    /// `feat_channels` = 8·ndf, `cond_dim` = nef.
    pub fn new(feat_channels: usize, cond_dim: usize, device: &Device) -> Self {
        Self {
            joint_conv: conv3x3(feat_channels + cond_dim, feat_channels, device),
            joint_bn: batch_norm(feat_channels, device),
            logit: logit_conv(feat_channels, device),
            cond_dim,
        }
    }

    /// Probability that (image, condition) is a real, matching pair.
    ///
    /// # Shapes
    /// - `h`: `[B, 8·ndf, 4, 4]` image features
    /// - `c`: `[B, nef]` condition (the generator's CA `mu`, detached by the caller)
    /// - output: `[B]` probabilities in (0, 1)
    pub fn forward(&self, h: Tensor<4>, c: Tensor<2>) -> Tensor<1> {
        let [_, _, hh, _] = h.dims();
        // Image features first, then the tiled condition (reference concat order).
        let hc = Tensor::cat(vec![h, tile_condition(c, hh)], 1);
        let x = leaky_relu(
            bn_forward(&self.joint_bn, self.joint_conv.forward(hc)),
            LEAKY_SLOPE,
        );
        let out = sigmoid(self.logit.forward(x));
        let n = out.dims().iter().product::<usize>();
        out.reshape([n])
    }
}

/// `D_GET_LOGITS(ndf, nef, bcondition=False)`: Conv2d(8ndf → 1, k4, s4, bias) → Sigmoid.
/// Torch name: `outlogits.0`.
#[derive(Module, Debug)]
pub struct UncondLogits {
    pub logit: Conv2d,
}

impl UncondLogits {
    pub fn new(feat_channels: usize, device: &Device) -> Self {
        Self {
            logit: logit_conv(feat_channels, device),
        }
    }

    /// Probability that the image is real, ignoring the condition.
    ///
    /// # Shapes
    /// `[B, 8·ndf, 4, 4]` → `[B]`
    pub fn forward(&self, h: Tensor<4>) -> Tensor<1> {
        let out = sigmoid(self.logit.forward(h));
        let n = out.dims().iter().product::<usize>();
        out.reshape([n])
    }
}
