//! The reference weight initialisation (`weights_init` in StackGAN-Pytorch `trainer.py`), the only
//! place in the crate that sets weight values on purpose.
//!
//! Like the reference, the rule is chosen by the layer's class, here the Burn struct that owns the
//! parameter:
//! - `Conv2d`: weight ~ N(0, 0.02); the bias is left alone, so the biased logit convs keep the
//!   PyTorch-equal default U(±1/√fan_in) that Burn's `Conv2dConfig` draws.
//! - `Linear`: weight ~ N(0, 0.02), bias = 0.
//! - `BatchNorm` (1d and 2d): γ ~ N(1, 0.02), β = 0; running statistics untouched.
//!
//! Everything else (the dialogue LSTM) keeps its constructor default, as in the reference.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Distribution, Tensor};

/// Standard deviation of every reference normal draw.
pub const INIT_STD: f64 = 0.02;

/// Applies the reference initialisation to every Conv2d, Linear and BatchNorm in `module`.
/// Call it right after a config's `init` (before loading any checkpoint), like
/// `netG.apply(weights_init)`. Seed the device first for reproducible draws.
pub fn weights_init<M: Module>(module: M) -> M {
    module.map(&mut WeightsInit { stack: Vec::new() })
}

struct WeightsInit {
    /// (field name, owning container type) of every module entered so far.
    stack: Vec<(String, String)>,
}

enum Rule {
    Normal(f64),
    Zero,
    Keep,
}

impl WeightsInit {
    fn rule(&self) -> Rule {
        let Some((field, owner)) = self.stack.last() else {
            return Rule::Keep;
        };
        match (owner.as_str(), field.as_str()) {
            ("Struct:Conv2d", "weight") | ("Struct:Linear", "weight") => Rule::Normal(0.0),
            ("Struct:Linear", "bias") | ("Struct:BatchNorm", "beta") => Rule::Zero,
            ("Struct:BatchNorm", "gamma") => Rule::Normal(1.0),
            _ => Rule::Keep,
        }
    }
}

impl ModuleMapper for WeightsInit {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack
            .push((name.to_owned(), container_type.to_owned()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let fresh = |t: Tensor<D>, value: Tensor<D>| {
            // A new tensor is a leaf without gradient tracking: carry the old one's over, so that
            // trainable parameters stay trainable and frozen ones (Stage-I in Stage-II) frozen.
            if t.is_require_grad() {
                value.require_grad()
            } else {
                value
            }
        };
        match self.rule() {
            Rule::Keep => param,
            Rule::Zero => param.map(|t| {
                let z = t.zeros_like();
                fresh(t, z)
            }),
            Rule::Normal(mean) => param.map(|t| {
                let r =
                    Tensor::random(t.shape(), Distribution::Normal(mean, INIT_STD), &t.device());
                fresh(t, r)
            }),
        }
    }
}
