//! Conditioning augmentation (`CA_NET`), including the reference code's quirks: the ReLU runs over
//! the whole fc output (so `mu ≥ 0` and `logvar ≥ 0`, hence σ ≥ 1), the second half is log σ², and
//! the noise is drawn on every call, at evaluation time too.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, Tensor};

/// How the CA turns `(mu, logvar)` into the condition code `c`.
#[derive(Debug, Clone, Default)]
pub enum CaNoise {
    /// `c = mu + eps·exp(logvar/2)` with fresh `eps ~ N(0, I)` (the reference, always).
    #[default]
    Random,
    /// `c = mu`: a deterministic decode, an option the reference does not have.
    MeanOnly,
    /// `c = mu + eps·exp(logvar/2)` with the given `eps` (`[B, cond_dim]`), for reproducible tests.
    /// Boxed because a tensor handle is large next to the other variants; see [`CaNoise::given`].
    Given(Box<Tensor<2>>),
}

impl CaNoise {
    /// `CaNoise::Given` with the given `eps` (`[B, cond_dim]`).
    pub fn given(eps: Tensor<2>) -> Self {
        Self::Given(Box::new(eps))
    }
}

/// What [`CaNet::forward`] returns: the reference's `(c_code, mu, logvar)`.
#[derive(Debug, Clone)]
pub struct CaOutput {
    /// `[B, cond_dim]`
    pub c: Tensor<2>,
    /// `[B, cond_dim]`, ≥ 0
    pub mu: Tensor<2>,
    /// `[B, cond_dim]`, ≥ 0 (log σ²)
    pub logvar: Tensor<2>,
}

/// [`CaNet`] hyper-parameters.
#[derive(Config, Debug)]
pub struct CaNetConfig {
    /// Input width T: caption_dim + dialogue_dim (1024 in the reference).
    pub text_dim: usize,
    /// Output width Nc (GAN.CONDITION_DIM, 128).
    pub cond_dim: usize,
    /// The reference's ReLU over the fc output (`true`), which keeps μ ≥ 0 and σ ≥ 1; `false`
    /// leaves the fc linear, as the paper's text ("a fully connected layer") reads, so that σ
    /// can shrink below 1 where the text is informative.
    #[config(default = true)]
    pub relu: bool,
}

impl CaNetConfig {
    /// Builds the module with Burn's default (PyTorch-like) weights; apply
    /// [`crate::weights_init`] afterwards for the reference initialisation.
    pub fn init(&self, device: &Device) -> CaNet {
        CaNet {
            fc: LinearConfig::new(self.text_dim, 2 * self.cond_dim)
                .with_bias(true)
                .init(device),
            cond_dim: self.cond_dim,
            relu: self.relu,
        }
    }
}

/// `CA_NET`: `fc = Linear(T → 2·Nc, bias)`, ReLU (unless switched off), split into
/// `mu | logvar`, reparameterise.
/// Torch names: `fc.weight`, `fc.bias`.
#[derive(Module, Debug)]
pub struct CaNet {
    pub fc: Linear,
    pub cond_dim: usize,
    /// See [`CaNetConfig::relu`].
    pub relu: bool,
}

impl CaNet {
    /// `(mu, logvar)` without sampling.
    ///
    /// # Shapes
    /// `[B, text_dim]` → (`[B, cond_dim]`, `[B, cond_dim]`)
    pub fn encode(&self, text: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let x = self.fc.forward(text);
        let x = if self.relu { relu(x) } else { x };
        let n = self.cond_dim;
        let mu = x.clone().narrow(1, 0, n);
        let logvar = x.narrow(1, n, n);
        (mu, logvar)
    }

    /// The reference forward: always samples fresh `eps ~ N(0, I)`.
    ///
    /// # Shapes
    /// - `text`: `[B, text_dim]`
    /// - output `c`, `mu`, `logvar`: `[B, cond_dim]` each
    pub fn forward(&self, text: Tensor<2>) -> CaOutput {
        self.forward_with(text, CaNoise::Random)
    }

    /// Like [`CaNet::forward`] with an explicit choice of noise.
    ///
    /// # Shapes
    /// As [`CaNet::forward`]; a `CaNoise::Given` eps must be `[B, cond_dim]`.
    pub fn forward_with(&self, text: Tensor<2>, noise: CaNoise) -> CaOutput {
        let (mu, logvar) = self.encode(text);
        let c = match noise {
            CaNoise::MeanOnly => mu.clone(),
            CaNoise::Random => {
                let eps = Tensor::random(mu.shape(), Distribution::Normal(0.0, 1.0), &mu.device());
                reparametrize(mu.clone(), logvar.clone(), eps)
            }
            CaNoise::Given(eps) => reparametrize(mu.clone(), logvar.clone(), *eps),
        };
        CaOutput { c, mu, logvar }
    }
}

/// How much each part of the CA input moves `mu`: the root mean square over the batch of the
/// caption columns' and the dialogue columns' share of `mu`'s pre-activation (`fc`'s weight
/// split by input rows; the bias belongs to neither). A dialogue share near zero beside the
/// caption's says the CA ignores the dialogue. Detached; `None` for the dialogue without one.
///
/// # Shapes
/// `text`: `[B, text_dim]`, its first `caption_dim` columns the caption → `[1]` each
pub fn input_shares(
    ca: &CaNet,
    text: Tensor<2>,
    caption_dim: usize,
) -> (Tensor<1>, Option<Tensor<1>>) {
    let f32 = |t: Tensor<2>| t.detach().cast(burn::tensor::FloatDType::F32);
    let (text, weight) = (f32(text), f32(ca.fc.weight.val()));
    let [_, text_dim] = text.dims();
    let rms =
        |rows: usize, from: usize| {
            let part = text.clone().narrow(1, from, rows).matmul(
                weight
                    .clone()
                    .narrow(0, from, rows)
                    .narrow(1, 0, ca.cond_dim),
            );
            part.powi_scalar(2).mean().sqrt()
        };
    let dialogue = text_dim - caption_dim.min(text_dim);
    (
        rms(caption_dim.min(text_dim), 0),
        (dialogue > 0).then(|| rms(dialogue, caption_dim)),
    )
}

/// `c = mu + eps · exp(0.5 · logvar)`.
pub fn reparametrize(mu: Tensor<2>, logvar: Tensor<2>, eps: Tensor<2>) -> Tensor<2> {
    mu + eps * logvar.mul_scalar(0.5).exp()
}
