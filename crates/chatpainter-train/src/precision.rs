//! The arithmetic a training step runs in: `f32` (the reference) or `bf16` mixed precision.
//!
//! Mixed precision the way PyTorch's autocast does it for this network, made explicit because
//! Burn has no autocast: the weights and Adam moments stay `f32` (the master copy that is
//! checkpointed); each step casts the weights and the inputs to bfloat16 *inside* the autodiff
//! graph, runs G, D and their backward passes in bfloat16, and the cast's backward turns every
//! gradient back into `f32` for the optimiser. The losses (BCE, KL) cast their inputs to `f32`
//! first (in `chatpainter-nn`), and BatchNorm running statistics are kept in `f32`. bfloat16
//! has `f32`'s exponent range, so no loss scaling is needed (float16 would need it).
//!
//! With `f32` every function here is the identity, so `f32` training is bit for bit what it was
//! before this option existed.

use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// `precision` in a training config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Precision {
    /// Everything in float32 (the reference).
    #[default]
    #[serde(rename = "f32")]
    F32,
    /// Forward and backward in bfloat16, master weights, optimiser and losses in float32.
    #[serde(rename = "bf16")]
    Bf16,
}

impl Precision {
    /// Whether this is the default (configs omit it then, so their digests do not change).
    pub fn is_f32(&self) -> bool {
        *self == Self::F32
    }

    fn compute_dtype(self) -> Option<FloatDType> {
        match self {
            Self::F32 => None,
            Self::Bf16 => Some(FloatDType::BF16),
        }
    }

    /// The module a step computes with: `module` itself, or a copy whose weights are cast in
    /// the graph (gradients still reach `module`'s `f32` parameters through the cast).
    pub fn compute<M: Module>(self, module: &M) -> M {
        match self.compute_dtype() {
            None => module.clone(),
            Some(dtype) => module.clone().map(&mut CastWeights {
                dtype,
                path: Vec::new(),
            }),
        }
    }

    /// An input in the compute precision.
    pub fn input<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self.compute_dtype() {
            None => x,
            Some(dtype) => x.cast(dtype),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            other => Err(TrainError::Config(format!(
                "precision: unknown `{other}` (known: f32, bf16)"
            ))),
        }
    }
}

/// Casts every float parameter, keeping its id and its place in the graph.
///
/// BatchNorm running statistics are skipped: Burn maps a `RunningState` by replacing the value
/// it *shares* with every clone of the module, so casting them here would turn the master
/// copy's statistics into bfloat16 too. They are recognised by their field names, the only
/// thing a mapper is told about them.
struct CastWeights {
    dtype: FloatDType,
    path: Vec<String>,
}

impl ModuleMapper for CastWeights {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if matches!(
            self.path.last().map(String::as_str),
            Some("running_mean" | "running_var")
        ) {
            return param;
        }
        let dtype = self.dtype;
        param.map(|t| t.cast(dtype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_copy_leaves_the_master_weights_and_running_statistics_f32() {
        use burn::tensor::{DType, Device};
        let device = Device::flex().autodiff();
        let bn = chatpainter_nn::blocks::batch_norm(3, &device);
        let compute = Precision::Bf16.compute(&bn);
        assert_eq!(compute.gamma.val().dtype(), DType::BF16);
        assert_eq!(bn.gamma.val().dtype(), DType::F32);
        assert_eq!(bn.running_mean.value().dtype(), DType::F32);
        assert_eq!(compute.running_var.value().dtype(), DType::F32);
        let same = Precision::F32.compute(&bn);
        assert_eq!(same.gamma.val().dtype(), DType::F32);
    }

    /// Gradients of a bf16 computation land on the f32 parameters and approximate the f32
    /// gradients. One conv (a 3x3 over 4x16x16x8, summing 1,024 products per weight).
    #[test]
    fn bf16_gradients_reach_the_f32_parameters() {
        use burn::nn::PaddingConfig2d;
        use burn::nn::conv::Conv2dConfig;
        use burn::optim::GradientsParams;
        use burn::tensor::{DType, Device, Distribution};
        let device = Device::flex().autodiff();
        device.seed(5);
        let conv = Conv2dConfig::new([8, 8], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&device);
        let x = Tensor::<4>::random([4, 8, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        let target = Tensor::<4>::random([4, 8, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        let grad = |p: Precision| -> Vec<f32> {
            let out = p.compute(&conv).forward(p.input(x.clone()));
            let loss = (out.cast(FloatDType::F32) - target.clone())
                .powi_scalar(2)
                .mean();
            let mut grads = GradientsParams::from_grads(loss.backward(), &conv);
            let g = grads
                .remove::<4>(conv.weight.id)
                .expect("the f32 weight has a gradient");
            assert_eq!(g.dtype(), DType::F32);
            g.into_data().try_to_vec::<f32>().expect("f32")
        };
        let (g32, g16) = (grad(Precision::F32), grad(Precision::Bf16));
        let dot =
            |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| f64::from(x * y)).sum::<f64>();
        let cosine = dot(&g32, &g16) / (dot(&g32, &g32) * dot(&g16, &g16)).sqrt();
        assert!(
            cosine > 0.99,
            "cosine of the f32 and bf16 gradients: {cosine}"
        );
    }

    #[test]
    fn parses_and_prints_both() {
        for p in [Precision::F32, Precision::Bf16] {
            assert_eq!(p.to_string().parse::<Precision>().expect("parse"), p);
        }
        let e = "fp16".parse::<Precision>().expect_err("unknown");
        assert!(e.to_string().contains("known: f32, bf16"), "{e}");
    }
}
