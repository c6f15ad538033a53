//! Stage-II networks (256×256): `STAGE2_G` (which holds a frozen `STAGE1_G`) and `STAGE2_D`
//! (image encoder + conditional and unconditional heads).

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::tanh;
use burn::tensor::{Device, Tensor};

use crate::Discriminator;
use crate::blocks::{
    Act, CondLogits, ConvBn, ResBlock, UncondLogits, UpBlock, conv3x3, conv4x4_down,
    run_sequential, tile_condition,
};
use crate::ca::{CaNet, CaNetConfig, CaNoise};
use crate::stage1::{GenOutput, Stage1G, Stage1GConfig};

/// [`Stage2G`] hyper-parameters.
#[derive(Config, Debug)]
pub struct Stage2GConfig {
    /// The inner Stage-I generator (same text_dim, cond_dim, z_dim; its own gf_dim).
    pub stage1: Stage1GConfig,
    /// GAN.GF_DIM: the Stage-II base width `ngf` (encoder ngf→2ngf→4ngf). Multiple of 4.
    pub gf_dim: usize,
    /// GAN.R_NUM residual blocks.
    pub r_num: usize,
    /// How the frozen Stage-I's BatchNorms behave during Stage-II training.
    /// `true` (reference): train mode, i.e. batch statistics on an autodiff device, running stats
    /// keep updating, only the parameters are frozen (`no_grad`). `false`: eval mode (`freeze`),
    /// running statistics, a small deviation from the reference.
    #[config(default = true)]
    pub stage1_bn_batch_stats: bool,
}

impl Stage2GConfig {
    /// Builds the module with Burn's default weights and the Stage-I part frozen (see
    /// [`Stage2G::freeze_stage1`]); apply [`crate::weights_init`] afterwards, then load Stage-I
    /// weights, then call [`Stage2G::freeze_stage1`] again if the load replaced parameters.
    pub fn init(&self, device: &Device) -> Stage2G {
        let ngf = self.gf_dim;
        let text_dim = self.stage1.text_dim;
        let cond_dim = self.stage1.cond_dim;
        let g = Stage2G {
            stage1_g: self.stage1.init(device),
            ca_net: CaNetConfig::new(text_dim, cond_dim)
                .with_relu(self.stage1.ca_relu)
                .init(device),
            encoder: vec![
                ConvBn::new(conv3x3(3, ngf, device), None, device),
                ConvBn::new(conv4x4_down(ngf, ngf * 2, device), Some(ngf * 2), device),
                ConvBn::new(
                    conv4x4_down(ngf * 2, ngf * 4, device),
                    Some(ngf * 4),
                    device,
                ),
            ],
            hr_joint: ConvBn::new(
                conv3x3(cond_dim + ngf * 4, ngf * 4, device),
                Some(ngf * 4),
                device,
            ),
            residual: (0..self.r_num)
                .map(|_| ResBlock::new(ngf * 4, device))
                .collect(),
            upsample1: UpBlock::new(ngf * 4, ngf * 2, device),
            upsample2: UpBlock::new(ngf * 2, ngf, device),
            upsample3: UpBlock::new(ngf, ngf / 2, device),
            upsample4: UpBlock::new(ngf / 2, ngf / 4, device),
            img: conv3x3(ngf / 4, 3, device),
            cond_dim,
            stage1_bn_batch_stats: self.stage1_bn_batch_stats,
        };
        g.freeze_stage1()
    }
}

/// `STAGE2_G`. The field `stage1_g` maps to the reference's `STAGE1_G.*` names.
#[derive(Module, Debug)]
pub struct Stage2G {
    /// The frozen Stage-I generator (torch `STAGE1_G`).
    pub stage1_g: Stage1G,
    pub ca_net: CaNet,
    /// torch `encoder.{0,2,3,5,6}` (ReLU activations).
    pub encoder: Vec<ConvBn>,
    /// torch `hr_joint.{0,1}`.
    pub hr_joint: ConvBn,
    /// torch `residual.{i}.block.{0,1,3,4}`.
    pub residual: Vec<ResBlock>,
    pub upsample1: UpBlock,
    pub upsample2: UpBlock,
    pub upsample3: UpBlock,
    pub upsample4: UpBlock,
    /// torch `img.0` (then Tanh).
    pub img: Conv2d,
    pub cond_dim: usize,
    pub stage1_bn_batch_stats: bool,
}

impl Stage2G {
    /// Marks the inner Stage-I as not trainable: `no_grad` (reference: its BatchNorms stay in
    /// train mode) or `freeze` (eval-mode BatchNorms), per `stage1_bn_batch_stats`.
    pub fn freeze_stage1(mut self) -> Self {
        self.stage1_g = if self.stage1_bn_batch_stats {
            self.stage1_g.no_grad()
        } else {
            self.stage1_g.freeze()
        };
        self
    }

    /// The reference forward: Stage-I runs on the same text and noise (with its own CA draw), its
    /// image is detached, and the returned `mu`/`logvar` are Stage-II's own.
    ///
    /// # Shapes
    /// - `text`: `[B, text_dim]`, `noise`: `[B, z_dim]`
    /// - output `stage1_img`: `Some([B, 3, 64, 64])`, `fake`: `[B, 3, 256, 256]`,
    ///   `mu`, `logvar`: `[B, cond_dim]`
    pub fn forward(&self, text: Tensor<2>, noise: Tensor<2>) -> GenOutput {
        self.forward_with(text, noise, CaNoise::Random, CaNoise::Random)
    }

    /// [`Stage2G::forward`] with explicit CA noise for the inner Stage-I CA (`ca1`) and for
    /// Stage-II's own CA (`ca2`).
    ///
    /// # Shapes
    /// As [`Stage2G::forward`].
    pub fn forward_with(
        &self,
        text: Tensor<2>,
        noise: Tensor<2>,
        ca1: CaNoise,
        ca2: CaNoise,
    ) -> GenOutput {
        let s1 = self.stage1_g.forward_with(text.clone(), noise, ca1);
        let stage1_img = s1.fake.detach();
        let encoded = run_sequential(&self.encoder, stage1_img.clone(), Act::Relu);
        let [_, _, h, _] = encoded.dims();
        let ca = self.ca_net.forward_with(text.clone(), ca2);
        // Image code first, then the tiled condition (reference order).
        let ic = Tensor::cat(vec![encoded, tile_condition(ca.c, h)], 1);
        let mut x = self.hr_joint.forward(ic, Act::Relu);
        for block in &self.residual {
            x = block.forward(x);
        }
        let x = self.upsample1.forward(x);
        let x = self.upsample2.forward(x);
        let x = self.upsample3.forward(x);
        let x = self.upsample4.forward(x);
        let fake = tanh(self.img.forward(x));
        GenOutput {
            stage1_img: Some(stage1_img),
            fake,
            mu: ca.mu,
            logvar: ca.logvar,
            text,
        }
    }
}

/// [`Stage2D`] hyper-parameters.
#[derive(Config, Debug)]
pub struct Stage2DConfig {
    /// GAN.DF_DIM (`ndf`).
    pub df_dim: usize,
    /// Condition width fed to the conditional head.
    pub cond_dim: usize,
}

impl Stage2DConfig {
    /// Builds the module with Burn's default weights; apply [`crate::weights_init`] afterwards.
    pub fn init(&self, device: &Device) -> Stage2D {
        let ndf = self.df_dim;
        let down = |cin: usize, cout: usize, bn: bool| {
            ConvBn::new(conv4x4_down(cin, cout, device), bn.then_some(cout), device)
        };
        Stage2D {
            encode_img: vec![
                down(3, ndf, false),
                down(ndf, ndf * 2, true),
                down(ndf * 2, ndf * 4, true),
                down(ndf * 4, ndf * 8, true),
                down(ndf * 8, ndf * 16, true),
                down(ndf * 16, ndf * 32, true),
                ConvBn::new(conv3x3(ndf * 32, ndf * 16, device), Some(ndf * 16), device),
                ConvBn::new(conv3x3(ndf * 16, ndf * 8, device), Some(ndf * 8), device),
            ],
            get_cond_logits: CondLogits::new(ndf * 8, self.cond_dim, device),
            get_uncond_logits: UncondLogits::new(ndf * 8, device),
        }
    }
}

/// `STAGE2_D`: six 4×4/s2 down blocks (no BN on the first), two conv3x3+BN, all LeakyReLU(0.2),
/// then a conditional and an unconditional head.
#[derive(Module, Debug)]
pub struct Stage2D {
    /// torch `encode_img.{0,2,3,5,6,...,20,21}`
    pub encode_img: Vec<ConvBn>,
    pub get_cond_logits: CondLogits,
    pub get_uncond_logits: UncondLogits,
}

impl Stage2D {
    /// Image features.
    ///
    /// # Shapes
    /// `[B, 3, 256, 256]` → `[B, 8·ndf, 4, 4]`
    pub fn forward(&self, image: Tensor<4>) -> Tensor<4> {
        run_sequential(&self.encode_img, image, Act::LeakyRelu)
    }
}

impl Discriminator for Stage2D {
    fn features(&self, image: Tensor<4>) -> Tensor<4> {
        self.forward(image)
    }

    fn cond_prob(&self, features: Tensor<4>, cond: Tensor<2>) -> Tensor<1> {
        self.get_cond_logits.forward(features, cond)
    }

    fn uncond_prob(&self, features: Tensor<4>) -> Option<Tensor<1>> {
        Some(self.get_uncond_logits.forward(features))
    }
}
