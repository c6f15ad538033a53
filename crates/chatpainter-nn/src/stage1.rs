//! Stage-I networks (64×64): `STAGE1_G` and `STAGE1_D` (image encoder + conditional head).

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, Linear, LinearConfig};
use burn::tensor::activation::{relu, tanh};
use burn::tensor::{Device, Tensor};

use crate::Discriminator;
use crate::blocks::{
    Act, CondLogits, ConvBn, UpBlock, batch_norm, bn_forward, conv3x3, conv4x4_down, run_sequential,
};
use crate::ca::{CaNet, CaNetConfig, CaNoise};

/// [`Stage1G`] hyper-parameters.
#[derive(Config, Debug)]
pub struct Stage1GConfig {
    /// CA input width: caption_dim + dialogue_dim.
    pub text_dim: usize,
    /// CA output width (GAN.CONDITION_DIM).
    pub cond_dim: usize,
    /// Noise width (Z_DIM).
    pub z_dim: usize,
    /// GAN.GF_DIM; the Stage-I base width is `ngf = 8·gf_dim`. Must be a multiple of 2 so that
    /// `ngf/16` is whole.
    pub gf_dim: usize,
    /// The CA's ReLU ([`CaNetConfig::relu`]; `true`, the reference).
    #[config(default = true)]
    pub ca_relu: bool,
}

impl Stage1GConfig {
    /// Stage-I base width `ngf = 8·gf_dim`.
    pub fn ngf(&self) -> usize {
        8 * self.gf_dim
    }

    /// Builds the module with Burn's default weights; apply [`crate::weights_init`] afterwards.
    pub fn init(&self, device: &Device) -> Stage1G {
        let ngf = self.ngf();
        Stage1G {
            ca_net: CaNetConfig::new(self.text_dim, self.cond_dim)
                .with_relu(self.ca_relu)
                .init(device),
            fc: Stage1Fc {
                linear: LinearConfig::new(self.z_dim + self.cond_dim, ngf * 16)
                    .with_bias(false)
                    .init(device),
                bn: batch_norm(ngf * 16, device),
            },
            upsample1: UpBlock::new(ngf, ngf / 2, device),
            upsample2: UpBlock::new(ngf / 2, ngf / 4, device),
            upsample3: UpBlock::new(ngf / 4, ngf / 8, device),
            upsample4: UpBlock::new(ngf / 8, ngf / 16, device),
            img: conv3x3(ngf / 16, 3, device),
            ngf,
        }
    }
}

/// The Stage-I `fc` Sequential: `Linear(z+Nc → 16·ngf, no bias)` (torch `fc.0`) →
/// `BatchNorm1d(16·ngf)` (torch `fc.1`) → ReLU.
#[derive(Module, Debug)]
pub struct Stage1Fc {
    pub linear: Linear,
    pub bn: BatchNorm,
}

impl Stage1Fc {
    /// # Shapes
    /// `[B, z+Nc]` → `[B, 16·ngf]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = self.linear.forward(x);
        let [b, n] = h.dims();
        // BatchNorm1d on a vector: Burn's BatchNorm wants [B, C, ...], so add a length-1 axis.
        let h = bn_forward(&self.bn, h.reshape([b, n, 1])).reshape([b, n]);
        relu(h)
    }
}

/// Output of a generator forward pass: the reference's `(stage1_img | None, fake, mu, logvar)`.
#[derive(Debug, Clone)]
pub struct GenOutput {
    /// Stage-II only: the (detached) Stage-I image `[B, 3, 64, 64]`.
    pub stage1_img: Option<Tensor<4>>,
    /// The generated image in [-1, 1]: `[B, 3, 64, 64]` (Stage-I) or `[B, 3, 256, 256]` (Stage-II).
    pub fake: Tensor<4>,
    /// This stage's CA mean `[B, Nc]`.
    pub mu: Tensor<2>,
    /// This stage's CA log-variance `[B, Nc]`.
    pub logvar: Tensor<2>,
    /// The CA input `[caption ‖ dialogue]` `[B, text_dim]` (for diagnostics).
    pub text: Tensor<2>,
}

/// `STAGE1_G`.
#[derive(Module, Debug)]
pub struct Stage1G {
    pub ca_net: CaNet,
    pub fc: Stage1Fc,
    pub upsample1: UpBlock,
    pub upsample2: UpBlock,
    pub upsample3: UpBlock,
    pub upsample4: UpBlock,
    /// torch `img.0` (then Tanh).
    pub img: burn::nn::conv::Conv2d,
    pub ngf: usize,
}

impl Stage1G {
    /// The reference forward (CA noise drawn at random).
    ///
    /// # Shapes
    /// - `text`: `[B, text_dim]`
    /// - `noise`: `[B, z_dim]`
    /// - output `fake`: `[B, 3, 64, 64]`; `mu`, `logvar`: `[B, cond_dim]`; `stage1_img`: `None`
    pub fn forward(&self, text: Tensor<2>, noise: Tensor<2>) -> GenOutput {
        self.forward_with(text, noise, CaNoise::Random)
    }

    /// [`Stage1G::forward`] with an explicit CA noise choice.
    ///
    /// # Shapes
    /// As [`Stage1G::forward`].
    pub fn forward_with(&self, text: Tensor<2>, noise: Tensor<2>, ca: CaNoise) -> GenOutput {
        let ca = self.ca_net.forward_with(text.clone(), ca);
        // Noise first, then the condition code (reference order).
        let zc = Tensor::cat(vec![noise, ca.c], 1);
        let h = self.fc.forward(zc);
        let [b, _] = h.dims();
        let h = h.reshape([b, self.ngf, 4, 4]);
        let h = self.upsample1.forward(h);
        let h = self.upsample2.forward(h);
        let h = self.upsample3.forward(h);
        let h = self.upsample4.forward(h);
        let fake = tanh(self.img.forward(h));
        GenOutput {
            stage1_img: None,
            fake,
            mu: ca.mu,
            logvar: ca.logvar,
            text,
        }
    }
}

/// [`Stage1D`] hyper-parameters.
#[derive(Config, Debug)]
pub struct Stage1DConfig {
    /// GAN.DF_DIM (`ndf`).
    pub df_dim: usize,
    /// Condition width fed to the conditional head (GAN.CONDITION_DIM).
    pub cond_dim: usize,
    /// Categories of the auxiliary object head (0: no head, the reference). See
    /// [`Stage1D::object_head`].
    #[config(default = 0)]
    pub object_classes: usize,
}

impl Stage1DConfig {
    /// Builds the module with Burn's default weights; apply [`crate::weights_init`] afterwards.
    pub fn init(&self, device: &Device) -> Stage1D {
        let ndf = self.df_dim;
        Stage1D {
            encode_img: vec![
                ConvBn::new(conv4x4_down(3, ndf, device), None, device),
                ConvBn::new(conv4x4_down(ndf, ndf * 2, device), Some(ndf * 2), device),
                ConvBn::new(
                    conv4x4_down(ndf * 2, ndf * 4, device),
                    Some(ndf * 4),
                    device,
                ),
                ConvBn::new(
                    conv4x4_down(ndf * 4, ndf * 8, device),
                    Some(ndf * 8),
                    device,
                ),
            ],
            get_cond_logits: CondLogits::new(ndf * 8, self.cond_dim, device),
            object_head: (self.object_classes > 0).then(|| {
                Conv2dConfig::new([ndf * 8, self.object_classes], [1, 1])
                    .with_bias(true)
                    .init(device)
            }),
        }
    }
}

/// `STAGE1_D`: four 4×4/s2 down blocks (no BN on the first), LeakyReLU(0.2), then the conditional
/// head. Stage-I has no unconditional head.
#[derive(Module, Debug)]
pub struct Stage1D {
    /// torch `encode_img.{0,2,3,5,6,8,9}`
    pub encode_img: Vec<ConvBn>,
    pub get_cond_logits: CondLogits,
    /// The auxiliary object-recognition head (ChatPainter §6's proposal, as GeNeVA's and
    /// LatteGAN's detectors): a 1×1 convolution from the 4×4 image features to one logit per
    /// category and cell, so that it learns which objects are where. Not in the reference: absent
    /// unless `object_loss` is on, and then no parameter or random draw of the rest changes.
    pub object_head: Option<Conv2d>,
}

impl Stage1D {
    /// Image features (the reference `forward` returns only these).
    ///
    /// # Shapes
    /// `[B, 3, 64, 64]` → `[B, 8·ndf, 4, 4]`
    pub fn forward(&self, image: Tensor<4>) -> Tensor<4> {
        run_sequential(&self.encode_img, image, Act::LeakyRelu)
    }
}

impl Discriminator for Stage1D {
    fn features(&self, image: Tensor<4>) -> Tensor<4> {
        self.forward(image)
    }

    fn cond_prob(&self, features: Tensor<4>, cond: Tensor<2>) -> Tensor<1> {
        self.get_cond_logits.forward(features, cond)
    }

    fn uncond_prob(&self, _features: Tensor<4>) -> Option<Tensor<1>> {
        None
    }

    fn object_logits(&self, features: Tensor<4>) -> Option<Tensor<4>> {
        self.object_head.as_ref().map(|head| head.forward(features))
    }
}
