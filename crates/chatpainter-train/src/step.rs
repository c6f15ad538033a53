//! One optimiser step of either stage, in StackGAN-Pytorch's order: one G forward, one D update
//! on real / wrong / detached fake with `cond = mu.detach()`, then one G update (adversarial loss
//! plus λ·KL) through the just-updated D, each gradient averaged over the data-parallel ranks
//! (`data_parallel.rs`) before its optimiser step.
//!
//! The logged terms are named as `metrics.jsonl` names them: [`DiscriminatorLosses`]
//! (`d_loss`, `d_real`, `d_wrong`, `d_fake`, Stage-II's `d_uncond_*`) and [`GeneratorLosses`]
//! (`g_loss`, `g_adv`, `kl`). The training loop, the benchmarks and the device check all call
//! [`train_step`], so what they time and compare is what training runs.

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use chatpainter_nn::loss::{DLoss, GLoss, ObjectTerm, discriminator_loss, generator_loss};
use chatpainter_nn::{GenOutput, input_shares};

use crate::TrainError;
use crate::batch::DeviceBatch;
use crate::data_parallel;
use crate::precision::Precision;
use crate::ranks::World;
use chatpainter_model::dataset::HostBatch;
use chatpainter_model::networks::StageGenerator;
use chatpainter_model::{ResolvedNetwork, Variant};

/// The host-side inputs of one optimiser step.
pub struct StepInputs {
    pub host: HostBatch,
    pub noise: Vec<f32>,
    /// One `[B, cond_dim]` block per CA draw.
    pub eps: Vec<Vec<f32>>,
    pub variant: Variant,
    pub net: ResolvedNetwork,
    /// 1-based step number (named by the NaN guard's error).
    pub step: u64,
    pub kl_coeff: f64,
    pub precision: Precision,
    /// The auxiliary object loss: its weight and this rank's `[rows, C, 4, 4]` targets (`None`:
    /// off, the reference).
    pub objects: Option<(f64, Vec<f32>)>,
}

/// A batch's inputs on the device.
struct OnDevice {
    batch: DeviceBatch,
    noise: Tensor<2>,
    eps: Vec<Tensor<2>>,
    objects: Option<ObjectTerm>,
}

impl StepInputs {
    /// The batch, noise, CA eps and object targets as tensors on `device`, in the compute
    /// precision (the targets stay f32: the loss is computed in f32).
    fn into_device(self, device: &Device) -> OnDevice {
        let (rows, p) = (self.host.size, self.precision);
        let batch = DeviceBatch::new(self.host, self.variant, &self.net, device).cast(p);
        let noise = p.input(tensor2(self.noise, [rows, self.net.z_dim], device));
        let eps = self
            .eps
            .into_iter()
            .map(|e| p.input(tensor2(e, [rows, self.net.cond_dim], device)))
            .collect();
        let grid = crate::objects::GRID;
        let objects = self.objects.map(|(weight, targets)| ObjectTerm {
            targets: Tensor::from_data(
                TensorData::new(targets, [rows, self.net.object_classes, grid, grid]),
                device,
            ),
            weight,
        });
        OnDevice {
            batch,
            noise,
            eps,
            objects,
        }
    }
}

/// Stage-II's unconditional-head terms of D.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UncondLosses {
    /// `d_uncond_real`: on reals, label 1.
    pub real: f64,
    /// `d_uncond_fake`: on fakes, label 0.
    pub fake: f64,
}

/// D's logged terms (before D's update).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiscriminatorLosses {
    /// `d_loss`: what is back-propagated.
    pub total: f64,
    /// `d_real`: (real image, its condition), label 1.
    pub real: f64,
    /// `d_wrong`: (real image i, condition of i+1), label 0.
    pub wrong: f64,
    /// `d_fake`: (detached fake, its condition), label 0.
    pub fake: f64,
    /// Stage-II only.
    pub uncond: Option<UncondLosses>,
    /// `d_object`: the object loss on the real images (unweighted), when on.
    pub object: Option<f64>,
}

impl DiscriminatorLosses {
    /// The values of `loss`'s terms, read in one device-to-host transfer.
    fn read(loss: &DLoss) -> Self {
        let mut terms = vec![&loss.total, &loss.real, &loss.wrong, &loss.fake];
        terms.extend(loss.uncond_real.iter().chain(&loss.uncond_fake));
        terms.extend(&loss.object);
        let values = scalar_values(&terms);
        let at = |i: usize| values.get(i).copied().unwrap_or(f64::NAN);
        let uncond = loss.uncond_real.as_ref().map(|_| UncondLosses {
            real: at(4),
            fake: at(5),
        });
        let object_at = if uncond.is_some() { 6 } else { 4 };
        Self {
            total: at(0),
            real: at(1),
            wrong: at(2),
            fake: at(3),
            uncond,
            object: loss.object.as_ref().map(|_| at(object_at)),
        }
    }

    /// `(metrics name, value)` of every term present, in `metrics.jsonl`'s order.
    pub fn named(&self) -> Vec<(&'static str, f64)> {
        let mut terms = vec![
            ("d_loss", self.total),
            ("d_real", self.real),
            ("d_wrong", self.wrong),
            ("d_fake", self.fake),
        ];
        if let Some(u) = self.uncond {
            terms.extend([("d_uncond_real", u.real), ("d_uncond_fake", u.fake)]);
        }
        terms.extend(self.object.map(|v| ("d_object", v)));
        terms
    }
}

/// G's logged terms (after D's update, through the updated D).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeneratorLosses {
    /// `g_loss = g_adv + kl_coeff · kl`: what is back-propagated.
    pub total: f64,
    /// `g_adv`: the fakes through D, label 1 (Stage-II: plus the unconditional head).
    pub adversarial: f64,
    /// `kl`: the CA's KL term.
    pub kl: f64,
    /// `g_object`: the object loss on the fakes (unweighted), when on.
    pub object: Option<f64>,
    /// What the CA made of this batch's text (diagnostics, not back-propagated).
    pub ca: CaStats,
}

/// Diagnostics of the CA on one batch: is the code still carrying the text, and which part?
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CaStats {
    /// `ca_mu_abs`: mean |μ|.
    pub mu_abs: f64,
    /// `ca_sigma`: mean σ = exp(log σ² / 2) (the reference's ReLU keeps it ≥ 1).
    pub sigma: f64,
    /// `ca_caption_rms`: the caption's share of μ's pre-activation ([`input_shares`]).
    pub caption_rms: f64,
    /// `ca_dialogue_rms`: the dialogue's share (`None` for `stackgan`).
    pub dialogue_rms: Option<f64>,
}

impl GeneratorLosses {
    /// The values of `loss`'s terms and of the CA diagnostics, read in one device-to-host
    /// transfer.
    fn read(loss: &GLoss, ca: &CaTensors) -> Self {
        let mut terms = vec![&loss.total, &loss.adversarial, &loss.kl];
        terms.extend([&ca.mu_abs, &ca.sigma, &ca.caption_rms]);
        terms.extend(&ca.dialogue_rms);
        terms.extend(&loss.object);
        let values = scalar_values(&terms);
        let at = |i: usize| values.get(i).copied().unwrap_or(f64::NAN);
        let dialogue_rms = ca.dialogue_rms.as_ref().map(|_| at(6));
        let object_at = if dialogue_rms.is_some() { 7 } else { 6 };
        Self {
            total: at(0),
            adversarial: at(1),
            kl: at(2),
            object: loss.object.as_ref().map(|_| at(object_at)),
            ca: CaStats {
                mu_abs: at(3),
                sigma: at(4),
                caption_rms: at(5),
                dialogue_rms,
            },
        }
    }

    /// `(metrics name, value)` of every loss term present, in `metrics.jsonl`'s order.
    pub fn named(&self) -> Vec<(&'static str, f64)> {
        let mut terms = vec![
            ("g_loss", self.total),
            ("g_adv", self.adversarial),
            ("kl", self.kl),
        ];
        terms.extend(self.object.map(|v| ("g_object", v)));
        terms
    }
}

/// The CA diagnostics as `[1]` tensors, before they are read.
struct CaTensors {
    mu_abs: Tensor<1>,
    sigma: Tensor<1>,
    caption_rms: Tensor<1>,
    dialogue_rms: Option<Tensor<1>>,
}

impl CaTensors {
    fn of<G: StageGenerator>(gnet: &G, out: &GenOutput, caption_dim: usize) -> Self {
        let f32 = |t: Tensor<2>| t.detach().cast(FloatDType::F32);
        let (caption_rms, dialogue_rms) =
            input_shares(gnet.ca_net(), out.text.clone(), caption_dim);
        Self {
            mu_abs: f32(out.mu.clone()).abs().mean(),
            sigma: f32(out.logvar.clone()).mul_scalar(0.5).exp().mean(),
            caption_rms,
            dialogue_rms,
        }
    }
}

/// The logged terms of one step: means over the ranks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLosses {
    pub d: DiscriminatorLosses,
    pub g: GeneratorLosses,
}

/// What [`train_step`] returns.
pub struct Stepped<G: StageGenerator> {
    pub gnet: G,
    pub d: G::D,
    pub losses: StepLosses,
    /// Seconds spent averaging gradients and losses over the ranks.
    pub sync_s: f64,
}

/// The optimisers of G (with the dialogue encoder) and D and their learning rates.
pub struct Optimizers<'a> {
    pub g: &'a mut ModuleOptimizer,
    pub d: &'a mut ModuleOptimizer,
    pub lr_g: f64,
    pub lr_d: f64,
}

/// One D update then one G update on this rank's share of the batch, each gradient averaged
/// over the ranks before its optimiser step. Returns the updated networks, the logged terms
/// (means over the ranks, so every rank's NaN guard decides alike) and the seconds spent in
/// collectives.
///
/// # Errors
/// [`TrainError::Nn`] for inputs that do not fit the networks; [`TrainError::NonFinite`] naming
/// the first non-finite loss (checked before the optimiser step it would poison).
pub fn train_step<G: StageGenerator>(
    gnet: G,
    d: G::D,
    opt: Optimizers<'_>,
    inputs: StepInputs,
    device: &Device,
    world: &World,
) -> Result<Stepped<G>, TrainError> {
    let (step, kl_coeff, precision) = (inputs.step, inputs.kl_coeff, inputs.precision);
    let caption_dim = inputs.net.caption_dim;
    let OnDevice {
        batch: b,
        noise: z,
        eps,
        objects,
    } = inputs.into_device(device);
    // D phase: G forward, D loss on real / wrong / detached fake. The networks compute in the
    // step's precision; the gradients land on the f32 parameters of `gnet` and `d`.
    let out = precision
        .compute(&gnet)
        .generate(b.captions, &b.dialogue, z, eps)?;
    let dl = discriminator_loss(
        &precision.compute(&d),
        b.real,
        out.fake.clone(),
        out.mu.clone(),
        objects.as_ref(),
    )?;
    let mut d_losses = DiscriminatorLosses::read(&dl);
    let grads = GradientsParams::from_grads(dl.total.backward(), &d);
    let (grads, d_sync) = data_parallel::average_d(world, grads, &d, &mut d_losses);
    guard(step, &d_losses.named())?;
    let d = opt.d.step(opt.lr_d, d, grads);
    // G phase: the same fakes through the updated D (no new G forward).
    let ca = CaTensors::of(&gnet, &out, caption_dim);
    let gl = generator_loss(
        &precision.compute(&d),
        out.fake,
        out.mu,
        out.logvar,
        kl_coeff,
        objects.as_ref(),
    );
    let mut g_losses = GeneratorLosses::read(&gl, &ca);
    let grads = GradientsParams::from_grads(gl.total.backward(), &gnet);
    let (grads, g_sync) = data_parallel::average_g(world, grads, &gnet, &mut g_losses);
    guard(step, &g_losses.named())?;
    let gnet = opt.g.step(opt.lr_g, gnet, grads);
    Ok(Stepped {
        gnet,
        d,
        losses: StepLosses {
            d: d_losses,
            g: g_losses,
        },
        sync_s: d_sync + g_sync,
    })
}

pub(crate) fn tensor2(v: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// The values of `[1]`-shaped terms in one device-to-host transfer (on a GPU each read waits
/// for the device, so one read per phase instead of one per term); a failed read gives no
/// values, which the callers turn into NaN and the NaN guard into an error.
fn scalar_values(terms: &[&Tensor<1>]) -> Vec<f64> {
    let all = Tensor::cat(
        terms
            .iter()
            .map(|t| (*t).clone().detach().cast(FloatDType::F32))
            .collect(),
        0,
    );
    all.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// The first non-finite loss, as [`TrainError::NonFinite`].
fn guard(step: u64, losses: &[(&'static str, f64)]) -> Result<(), TrainError> {
    match losses.iter().find(|(_, v)| !v.is_finite()) {
        Some((name, value)) => Err(TrainError::NonFinite {
            step,
            what: format!("loss {name}"),
            value: *value,
        }),
        None => Ok(()),
    }
}
