//! The reference losses as pure tensor functions, as StackGAN-Pytorch codes them: `nn.BCELoss` on
//! probabilities (mean, log terms clamped at −100), the CA KL term, and the Stage-I / Stage-II
//! discriminator and generator compositions with the shift-by-one wrong pairs.

use burn::tensor::{FloatDType, Tensor};

use crate::{Discriminator, NnError};

/// PyTorch's `BCELoss` lower bound on each log term.
pub const LOG_CLAMP: f64 = -100.0;

/// `max(log(x), −100)` with a finite gradient everywhere.
///
/// The value is exactly PyTorch's clamped log (also for `x = 0`). The gradient is taken from
/// `log(max(x, f32::MIN_POSITIVE))`, so a saturated sigmoid (`x = 0`) gives a zero gradient instead
/// of `0 · ∞ = NaN` (PyTorch gets the same effect from its hand-written BCE backward).
fn clamped_log<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let safe = x
        .clone()
        .clamp_min(f32::MIN_POSITIVE)
        .log()
        .clamp_min(LOG_CLAMP);
    let exact = x.detach().log().clamp_min(LOG_CLAMP);
    let correction = (exact - safe.clone()).detach();
    safe + correction
}

/// Losses are computed in float32 whatever precision the networks ran in (as PyTorch's autocast
/// does for `binary_cross_entropy`, `exp` and `log`): a bfloat16 log has 3 significant digits.
fn to_f32<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.cast(FloatDType::F32)
}

/// `nn.BCELoss()(probs, targets)`: `−mean(y·max(log p, −100) + (1−y)·max(log(1−p), −100))`.
///
/// # Shapes
/// `probs`, `targets`: `[N]` → `[1]`
pub fn bce(probs: Tensor<1>, targets: Tensor<1>) -> Tensor<1> {
    let (probs, targets) = (to_f32(probs), to_f32(targets));
    let log_p = clamped_log(probs.clone());
    let log_q = clamped_log(probs.neg().add_scalar(1.0));
    let ones_minus_y = targets.clone().neg().add_scalar(1.0);
    (targets * log_p + ones_minus_y * log_q).mean().neg()
}

/// BCE against a constant label (1 = real, 0 = fake), as the reference's label vectors.
///
/// # Shapes
/// `[N]` → `[1]`
pub fn bce_const(probs: Tensor<1>, label: f64) -> Tensor<1> {
    let probs = to_f32(probs);
    let targets = probs.full_like(label);
    bce(probs, targets)
}

/// `KL_loss`: `−0.5 · mean(1 + logvar − mu² − exp(logvar))` over all batch × Nc elements.
///
/// # Shapes
/// `mu`, `logvar`: `[B, Nc]` → `[1]`
pub fn kl_loss(mu: Tensor<2>, logvar: Tensor<2>) -> Tensor<1> {
    let (mu, logvar) = (to_f32(mu), to_f32(logvar));
    let inner = logvar.clone().add_scalar(1.0) - mu.powi_scalar(2) - logvar.exp();
    inner.mean().mul_scalar(-0.5)
}

/// The auxiliary object-recognition term: binary cross-entropy of D's object head against the
/// fraction of each cell that each category's boxes cover (a soft target in `[0, 1]`), summed
/// over the categories and averaged over images and cells, so that its size does not shrink with
/// the number of categories. Computed from logits (`max(l, 0) − l·t + ln(1 + e^−|l|)`), which
/// stays finite where a probability would saturate.
///
/// # Shapes
/// `logits`, `targets`: `[B, C, H, W]` → `[1]`
pub fn object_loss(logits: Tensor<4>, targets: Tensor<4>) -> Tensor<1> {
    let (l, t) = (to_f32(logits), to_f32(targets));
    let [b, _, h, w] = l.dims();
    let per_element = l.clone().clamp_min(0.0) - l.clone() * t + l.abs().neg().exp().log1p();
    per_element.sum().div_scalar((b * h * w) as f64)
}

/// What the auxiliary object loss needs: the targets of the batch (the real images' boxes after
/// their crop and flip) and its weight in D's and G's losses.
#[derive(Debug, Clone)]
pub struct ObjectTerm {
    /// `[B, C, 4, 4]` coverage fractions.
    pub targets: Tensor<4>,
    pub weight: f64,
}

/// The weighted object term on `features` (`None` when D has no object head).
fn weighted_object_loss<D: Discriminator>(
    d: &D,
    features: Tensor<4>,
    term: Option<&ObjectTerm>,
) -> Option<(Tensor<1>, f64)> {
    let term = term?;
    let logits = d.object_logits(features)?;
    Some((object_loss(logits, term.targets.clone()), term.weight))
}

/// The terms of one discriminator loss. Every field is a `[1]` tensor.
#[derive(Debug, Clone)]
pub struct DLoss {
    /// What is back-propagated: Stage-I `real + (fake + wrong)/2`, Stage-II
    /// `(real + u_real)/2 + (fake + wrong + u_fake)/3`.
    pub total: Tensor<1>,
    /// Conditional head on (real image, its condition), label 1.
    pub real: Tensor<1>,
    /// Conditional head on (real image i, condition of i+1), label 0; B−1 pairs.
    pub wrong: Tensor<1>,
    /// Conditional head on (fake, its condition), label 0.
    pub fake: Tensor<1>,
    /// Stage-II unconditional head on reals, label 1.
    pub uncond_real: Option<Tensor<1>>,
    /// Stage-II unconditional head on fakes, label 0.
    pub uncond_fake: Option<Tensor<1>>,
    /// [`object_loss`] on the real images (added to `total` with its weight), when on.
    pub object: Option<Tensor<1>>,
}

impl DLoss {
    /// The reference's logged `errD_real`: the cond term, averaged with the uncond one in Stage-II.
    pub fn logged_real(&self) -> Tensor<1> {
        match &self.uncond_real {
            Some(u) => (self.real.clone() + u.clone()).div_scalar(2.0),
            None => self.real.clone(),
        }
    }

    /// The reference's logged `errD_fake`, likewise.
    pub fn logged_fake(&self) -> Tensor<1> {
        match &self.uncond_fake {
            Some(u) => (self.fake.clone() + u.clone()).div_scalar(2.0),
            None => self.fake.clone(),
        }
    }
}

/// The discriminator loss from head outputs (probabilities).
///
/// # Shapes
/// - `real_p`, `fake_p`: `[B]` conditional-head outputs; `wrong_p`: `[B−1]`
/// - `uncond`: Stage-II `(real [B], fake [B])` unconditional-head outputs, `None` in Stage-I
pub fn d_loss_from_probs(
    real_p: Tensor<1>,
    wrong_p: Tensor<1>,
    fake_p: Tensor<1>,
    uncond: Option<(Tensor<1>, Tensor<1>)>,
) -> DLoss {
    let real = bce_const(real_p, 1.0);
    let wrong = bce_const(wrong_p, 0.0);
    let fake = bce_const(fake_p, 0.0);
    match uncond {
        None => DLoss {
            total: real.clone() + (fake.clone() + wrong.clone()).mul_scalar(0.5),
            real,
            wrong,
            fake,
            uncond_real: None,
            uncond_fake: None,
            object: None,
        },
        Some((ur, uf)) => {
            let uncond_real = bce_const(ur, 1.0);
            let uncond_fake = bce_const(uf, 0.0);
            let total = (real.clone() + uncond_real.clone()).div_scalar(2.0)
                + (fake.clone() + wrong.clone() + uncond_fake.clone()).div_scalar(3.0);
            DLoss {
                total,
                real,
                wrong,
                fake,
                uncond_real: Some(uncond_real),
                uncond_fake: Some(uncond_fake),
                object: None,
            }
        }
    }
}

/// `compute_discriminator_loss`: separate feature passes for reals and (detached) fakes, the
/// condition is the generator's CA `mu`, detached; wrong pairs are (real_i, cond_{i+1}) reusing the
/// real features. With `objects` (and an object head on D), D also learns to recognise the
/// objects of the real images: `total += weight · object_loss`.
///
/// # Shapes
/// - `real`, `fake`: `[B, 3, S, S]` (S = 64 for Stage-I, 256 for Stage-II); `mu`: `[B, Nc]`
///
/// # Errors
/// [`NnError::BatchTooSmall`] when B < 2 (no wrong pair can be formed).
pub fn discriminator_loss<D: Discriminator>(
    d: &D,
    real: Tensor<4>,
    fake: Tensor<4>,
    mu: Tensor<2>,
    objects: Option<&ObjectTerm>,
) -> Result<DLoss, NnError> {
    let [b, _] = mu.dims();
    if b < 2 {
        return Err(NnError::BatchTooSmall(b));
    }
    let cond = mu.detach();
    let real_f = d.features(real);
    let fake_f = d.features(fake.detach());
    let real_p = d.cond_prob(real_f.clone(), cond.clone());
    let wrong_p = d.cond_prob(
        real_f.clone().narrow(0, 0, b - 1),
        cond.clone().narrow(0, 1, b - 1),
    );
    let fake_p = d.cond_prob(fake_f.clone(), cond);
    let object = weighted_object_loss(d, real_f.clone(), objects);
    let uncond = match (d.uncond_prob(real_f), d.uncond_prob(fake_f)) {
        (Some(r), Some(f)) => Some((r, f)),
        _ => None,
    };
    let mut loss = d_loss_from_probs(real_p, wrong_p, fake_p, uncond);
    if let Some((term, weight)) = object {
        loss.total = loss.total + term.clone().mul_scalar(weight);
        loss.object = Some(term);
    }
    Ok(loss)
}

/// The terms of one generator loss. Every field is a `[1]` tensor.
#[derive(Debug, Clone)]
pub struct GLoss {
    /// `adversarial + kl_coeff · kl`.
    pub total: Tensor<1>,
    /// `BCE(Dc(feat(fake), mu.detach()), 1)` plus, in Stage-II, `BCE(Du(feat(fake)), 1)` (a sum).
    pub adversarial: Tensor<1>,
    /// [`kl_loss`] of this stage's CA.
    pub kl: Tensor<1>,
    /// [`object_loss`] of D's object head on the fakes against the real images' objects (added
    /// to `total` with its weight), when on.
    pub object: Option<Tensor<1>>,
}

/// `compute_generator_loss` + `KL_loss`: `fake` is not detached (gradients reach G), `mu` is
/// detached for D's conditioning but not for the KL term. With `objects` (and an object head on
/// D), G is also asked to draw the objects the condition's real image holds, where it holds them:
/// `total += weight · object_loss(fakes)` (the AC-GAN pattern).
///
/// # Shapes
/// - `fake`: `[B, 3, S, S]`; `mu`, `logvar`: `[B, Nc]`
pub fn generator_loss<D: Discriminator>(
    d: &D,
    fake: Tensor<4>,
    mu: Tensor<2>,
    logvar: Tensor<2>,
    kl_coeff: f64,
    objects: Option<&ObjectTerm>,
) -> GLoss {
    let fake_f = d.features(fake);
    let mut adversarial = bce_const(d.cond_prob(fake_f.clone(), mu.clone().detach()), 1.0);
    let object = weighted_object_loss(d, fake_f.clone(), objects);
    if let Some(u) = d.uncond_prob(fake_f) {
        adversarial = adversarial + bce_const(u, 1.0);
    }
    let kl = kl_loss(mu, logvar);
    let mut total = adversarial.clone() + kl.clone().mul_scalar(kl_coeff);
    if let Some((term, weight)) = &object {
        total = total + term.clone().mul_scalar(*weight);
    }
    GLoss {
        total,
        adversarial,
        kl,
        object: object.map(|(term, _)| term),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t1(v: &[f32], dev: &Device) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), dev)
    }

    fn scalar(t: Tensor<1>) -> f32 {
        t.into_scalar::<f32>()
    }

    #[test]
    fn bce_matches_hand_values() {
        let dev = Device::flex();
        // −mean(ln 0.9 + ln 0.6) = 0.3080931
        let l = scalar(bce_const(t1(&[0.9, 0.6], &dev), 1.0));
        assert!((l - 0.308_093_1).abs() < 1e-6, "{l}");
        // −mean(ln(1−0.2) + ln(1−0.7)) = 0.7135581
        let l = scalar(bce_const(t1(&[0.2, 0.7], &dev), 0.0));
        assert!((l - 0.713_558_1).abs() < 1e-6, "{l}");
        // Saturated probabilities hit the −100 clamp exactly: −mean(−100 + ln 0.5) = 50.34657
        let l = scalar(bce_const(t1(&[0.0, 0.5], &dev), 1.0));
        assert!((l - 50.346_57).abs() < 1e-3, "{l}");
        // Mixed targets: −(0.3·ln0.4 + 0.7·ln0.6) = 0.6324652
        let l = scalar(bce(t1(&[0.4], &dev), t1(&[0.3], &dev)));
        assert!((l - 0.632_465_2).abs() < 1e-6, "{l}");
    }

    #[test]
    fn bce_gradient_is_finite_when_saturated() {
        let dev = Device::flex().autodiff();
        let p = t1(&[0.0, 1.0, 0.5], &dev).require_grad();
        let loss = bce_const(p.clone(), 1.0) + bce_const(p.clone(), 0.0);
        let grads = loss.backward();
        let g = p.grad(&grads).map(|g| g.into_data().try_to_vec::<f32>());
        let Some(Ok(g)) = g else {
            panic!("no gradient for p")
        };
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    }

    #[test]
    fn kl_matches_hand_value() {
        let dev = Device::flex();
        let mu = Tensor::<2>::from_data(TensorData::new(vec![0.5f32, 0.0], [1, 2]), &dev);
        let lv = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 1.0], [1, 2]), &dev);
        // elements: 1+0−0.25−1 = −0.25 ; 1+1−0−e = −0.7182818 ; −0.5·mean = 0.2420705
        let l = scalar(kl_loss(mu, lv));
        assert!((l - 0.242_070_5).abs() < 1e-6, "{l}");
    }

    #[test]
    fn object_loss_matches_hand_values() {
        let dev = Device::flex();
        let t4 =
            |v: &[f32]| Tensor::<4>::from_data(TensorData::new(v.to_vec(), [1, 2, 1, 2]), &dev);
        // Elements (logit, target): (0, 1), (2, 0), (−3, 0.5), (40, 1); one image, 2 cells.
        let l = scalar(object_loss(
            t4(&[0.0, 2.0, -3.0, 40.0]),
            t4(&[1.0, 0.0, 0.5, 1.0]),
        ));
        let bce = |x: f64, t: f64| {
            -(t * (1.0 / (1.0 + (-x).exp())).ln() + (1.0 - t) * (1.0 / (1.0 + x.exp())).ln())
        };
        let want = (bce(0.0, 1.0) + bce(2.0, 0.0) + bce(-3.0, 0.5) + bce(40.0, 1.0)) / 2.0;
        assert!((f64::from(l) - want).abs() < 1e-5, "{l} vs {want}");
    }

    #[test]
    fn d_loss_compositions() {
        let dev = Device::flex();
        let (r, w, f) = (
            t1(&[0.9, 0.8], &dev),
            t1(&[0.3], &dev),
            t1(&[0.1, 0.4], &dev),
        );
        let lr = -(0.9f64.ln() + 0.8f64.ln()) / 2.0;
        let lw = -(0.7f64.ln());
        let lf = -(0.9f64.ln() + 0.6f64.ln()) / 2.0;
        let s1 = d_loss_from_probs(r.clone(), w.clone(), f.clone(), None);
        let want1 = lr + 0.5 * (lf + lw);
        assert!((f64::from(scalar(s1.total)) - want1).abs() < 1e-5);
        let (ur, uf) = (t1(&[0.6, 0.7], &dev), t1(&[0.2, 0.5], &dev));
        let lur = -(0.6f64.ln() + 0.7f64.ln()) / 2.0;
        let luf = -(0.8f64.ln() + 0.5f64.ln()) / 2.0;
        let s2 = d_loss_from_probs(r, w, f, Some((ur, uf)));
        let want2 = (lr + lur) / 2.0 + (lf + lw + luf) / 3.0;
        assert!((f64::from(scalar(s2.total.clone())) - want2).abs() < 1e-5);
        assert!((f64::from(scalar(s2.logged_real())) - (lr + lur) / 2.0).abs() < 1e-5);
        assert!((f64::from(scalar(s2.logged_fake())) - (lf + luf) / 2.0).abs() < 1e-5);
    }
}
