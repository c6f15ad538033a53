//! Parameter listing, trainable-parameter counts and the one-to-one mapping between our parameter
//! paths and the reference PyTorch `state_dict` keys.
//!
//! Our modules name their fields after the reference attributes; where the reference uses an
//! `nn.Sequential`, our field (`fc.linear`, `upsample1.conv`, `encode_img.3.bn`, …) is mapped to
//! its Sequential index (`fc.0`, `upsample1.1`, `encode_img.9`, …). Parameter suffixes are mapped
//! per layer kind (BatchNorm `gamma`/`beta` ↔ `weight`/`bias`); Linear weights are stored
//! transposed in Burn (`[in, out]` vs `[out, in]`). The torch `*.num_batches_tracked` counters have
//! no Burn counterpart and are not listed (they only matter for BN with `momentum=None`).

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

use crate::NnError;
use crate::blocks::{CondLogits, ConvBn, ResBlock, UncondLogits, UpBlock};
use crate::ca::CaNet;
use crate::dialogue::DialogueEncoder;
use crate::stage1::{Stage1D, Stage1G};
use crate::stage2::{Stage2D, Stage2G};

/// One tensor of a module, as Burn's visitor reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    /// Dotted path, e.g. `upsample1.bn.gamma`.
    pub path: String,
    pub shape: Vec<usize>,
    /// BatchNorm running statistics: state, not trained (Burn's `num_params` counts them).
    pub buffer: bool,
}

/// Lists every float tensor of `module` (parameters and BatchNorm running statistics) without
/// initialising lazy parameters.
pub fn list_params<M: Module>(module: &M) -> Vec<ParamInfo> {
    let mut v = Lister {
        stack: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

/// Number of trainable scalars (weights, biases, BN affine), without the running statistics:
/// the way PyTorch's `sum(p.numel() for p in m.parameters())` counts.
pub fn count_trainable<M: Module>(module: &M) -> usize {
    list_params(module)
        .iter()
        .filter(|p| !p.buffer)
        .map(|p| p.shape.iter().product::<usize>())
        .sum()
}

struct Lister {
    stack: Vec<String>,
    out: Vec<ParamInfo>,
}

impl ModuleVisitor for Lister {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let last = self.stack.last().map(String::as_str).unwrap_or("");
        self.out.push(ParamInfo {
            path: self.stack.join("."),
            shape: param.lazy_shape().to_vec(),
            buffer: matches!(last, "running_mean" | "running_var"),
        });
    }
}

/// The kind of a leaf layer, which decides how parameter suffixes and shapes map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    Conv,
    Linear,
    BatchNorm,
    /// `nn.LSTM` layer 0, forward direction (`*_l0`).
    LstmForward,
    /// `nn.LSTM` layer 0, reverse direction (`*_l0_reverse`).
    LstmReverse,
}

/// A leaf layer: our path prefix, the torch prefix and its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    pub ours: String,
    pub torch: String,
    pub kind: LayerKind,
}

/// One parameter with its reference name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceName {
    /// Our path (Burn record key).
    pub ours: String,
    /// The PyTorch `state_dict` key.
    pub torch: String,
    /// Our shape.
    pub shape: Vec<usize>,
    /// The PyTorch shape (Linear weights transposed, everything else equal).
    pub torch_shape: Vec<usize>,
    /// Running statistic rather than a trained parameter.
    pub buffer: bool,
}

/// Networks whose layers map to the reference implementation's names.
pub trait ReferenceLayout: Module {
    /// Appends this module's leaf layers, with `ours`/`torch` as the path prefixes ("" at the top).
    fn layout(&self, ours: &str, torch: &str, out: &mut Vec<LayerRef>);
}

/// Our path → reference name for every tensor of `module`, in visiting order.
///
/// # Errors
/// [`NnError::Mapping`] when a tensor has no layer in the layout or an unknown suffix (a bug in a
/// layout, caught by the tests).
pub fn reference_names<M: ReferenceLayout>(module: &M) -> Result<Vec<ReferenceName>, NnError> {
    let mut layers = Vec::new();
    module.layout("", "", &mut layers);
    let by_prefix: HashMap<&str, &LayerRef> = layers.iter().map(|l| (l.ours.as_str(), l)).collect();
    list_params(module)
        .into_iter()
        .map(|p| {
            let (prefix, suffix) = p.path.rsplit_once('.').unwrap_or(("", p.path.as_str()));
            let layer = by_prefix
                .get(prefix)
                .ok_or_else(|| NnError::Mapping(format!("no layer for parameter `{}`", p.path)))?;
            let torch_suffix = torch_suffix(layer.kind, suffix).ok_or_else(|| {
                NnError::Mapping(format!(
                    "unexpected parameter `{}` in a {:?}",
                    p.path, layer.kind
                ))
            })?;
            let mut torch_shape = p.shape.clone();
            if layer.kind == LayerKind::Linear && suffix == "weight" {
                torch_shape.reverse();
            }
            Ok(ReferenceName {
                torch: join(&layer.torch, &torch_suffix),
                ours: p.path,
                shape: p.shape,
                torch_shape,
                buffer: p.buffer,
            })
        })
        .collect()
}

fn torch_suffix(kind: LayerKind, suffix: &str) -> Option<String> {
    let s = match (kind, suffix) {
        (LayerKind::Conv | LayerKind::Linear, "weight" | "bias") => suffix.to_owned(),
        (LayerKind::BatchNorm, "gamma") => "weight".to_owned(),
        (LayerKind::BatchNorm, "beta") => "bias".to_owned(),
        (LayerKind::BatchNorm, "running_mean" | "running_var") => suffix.to_owned(),
        (LayerKind::LstmForward, "weight_ih" | "weight_hh" | "bias_ih" | "bias_hh") => {
            format!("{suffix}_l0")
        }
        (LayerKind::LstmReverse, "weight_ih" | "weight_hh" | "bias_ih" | "bias_hh") => {
            format!("{suffix}_l0_reverse")
        }
        _ => return None,
    };
    Some(s)
}

/// Joins dotted path parts, skipping empty ones.
fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}.{b}"),
    }
}

fn push(out: &mut Vec<LayerRef>, ours: String, torch: String, kind: LayerKind) {
    out.push(LayerRef { ours, torch, kind });
}

/// Layout of a list of [`ConvBn`] blocks forming one torch `nn.Sequential` (conv, optional BN,
/// activation each taking an index).
fn sequential_layout(blocks: &[ConvBn], ours: &str, torch: &str, out: &mut Vec<LayerRef>) {
    let mut idx = 0;
    for (i, block) in blocks.iter().enumerate() {
        let o = join(ours, &i.to_string());
        push(
            out,
            join(&o, "conv"),
            join(torch, &idx.to_string()),
            LayerKind::Conv,
        );
        if block.bn.is_some() {
            push(
                out,
                join(&o, "bn"),
                join(torch, &(idx + 1).to_string()),
                LayerKind::BatchNorm,
            );
        }
        idx += block.torch_len();
    }
}

impl ReferenceLayout for UpBlock {
    fn layout(&self, ours: &str, torch: &str, out: &mut Vec<LayerRef>) {
        // Index 0 is nn.Upsample, 3 the ReLU.
        push(out, join(ours, "conv"), join(torch, "1"), LayerKind::Conv);
        push(
            out,
            join(ours, "bn"),
            join(torch, "2"),
            LayerKind::BatchNorm,
        );
    }
}

impl ReferenceLayout for ResBlock {
    fn layout(&self, ours: &str, torch: &str, out: &mut Vec<LayerRef>) {
        let t = join(torch, "block");
        push(out, join(ours, "conv1"), join(&t, "0"), LayerKind::Conv);
        push(out, join(ours, "bn1"), join(&t, "1"), LayerKind::BatchNorm);
        push(out, join(ours, "conv2"), join(&t, "3"), LayerKind::Conv);
        push(out, join(ours, "bn2"), join(&t, "4"), LayerKind::BatchNorm);
    }
}

impl ReferenceLayout for CondLogits {
    fn layout(&self, ours: &str, torch: &str, out: &mut Vec<LayerRef>) {
        let t = join(torch, "outlogits");
        push(
            out,
            join(ours, "joint_conv"),
            join(&t, "0"),
            LayerKind::Conv,
        );
        push(
            out,
            join(ours, "joint_bn"),
            join(&t, "1"),
            LayerKind::BatchNorm,
        );
        push(out, join(ours, "logit"), join(&t, "3"), LayerKind::Conv);
    }
}

impl ReferenceLayout for UncondLogits {
    fn layout(&self, ours: &str, torch: &str, out: &mut Vec<LayerRef>) {
        push(
            out,
            join(ours, "logit"),
            join(torch, "outlogits.0"),
            LayerKind::Conv,
        );
    }
}

impl ReferenceLayout for CaNet {
    fn layout(&self, ours: &str, torch: &str, out: &mut Vec<LayerRef>) {
        push(out, join(ours, "fc"), join(torch, "fc"), LayerKind::Linear);
    }
}

impl ReferenceLayout for Stage1G {
    fn layout(&self, ours: &str, torch: &str, out: &mut Vec<LayerRef>) {
        self.ca_net
            .layout(&join(ours, "ca_net"), &join(torch, "ca_net"), out);
        push(
            out,
            join(ours, "fc.linear"),
            join(torch, "fc.0"),
            LayerKind::Linear,
        );
        push(
            out,
            join(ours, "fc.bn"),
            join(torch, "fc.1"),
            LayerKind::BatchNorm,
        );
        for (name, up) in [
            ("upsample1", &self.upsample1),
            ("upsample2", &self.upsample2),
            ("upsample3", &self.upsample3),
            ("upsample4", &self.upsample4),
        ] {
            up.layout(&join(ours, name), &join(torch, name), out);
        }
        push(
            out,
            join(ours, "img"),
            join(torch, "img.0"),
            LayerKind::Conv,
        );
    }
}

impl ReferenceLayout for Stage1D {
    fn layout(&self, ours: &str, torch: &str, out: &mut Vec<LayerRef>) {
        sequential_layout(
            &self.encode_img,
            &join(ours, "encode_img"),
            &join(torch, "encode_img"),
            out,
        );
        self.get_cond_logits.layout(
            &join(ours, "get_cond_logits"),
            &join(torch, "get_cond_logits"),
            out,
        );
        // Not in the reference; named as our PyTorch reference names it.
        if self.object_head.is_some() {
            push(
                out,
                join(ours, "object_head"),
                join(torch, "object_head"),
                LayerKind::Conv,
            );
        }
    }
}

impl ReferenceLayout for Stage2G {
    fn layout(&self, ours: &str, torch: &str, out: &mut Vec<LayerRef>) {
        self.stage1_g
            .layout(&join(ours, "stage1_g"), &join(torch, "STAGE1_G"), out);
        self.ca_net
            .layout(&join(ours, "ca_net"), &join(torch, "ca_net"), out);
        sequential_layout(
            &self.encoder,
            &join(ours, "encoder"),
            &join(torch, "encoder"),
            out,
        );
        push(
            out,
            join(ours, "hr_joint.conv"),
            join(torch, "hr_joint.0"),
            LayerKind::Conv,
        );
        push(
            out,
            join(ours, "hr_joint.bn"),
            join(torch, "hr_joint.1"),
            LayerKind::BatchNorm,
        );
        for (i, block) in self.residual.iter().enumerate() {
            let name = format!("residual.{i}");
            block.layout(&join(ours, &name), &join(torch, &name), out);
        }
        for (name, up) in [
            ("upsample1", &self.upsample1),
            ("upsample2", &self.upsample2),
            ("upsample3", &self.upsample3),
            ("upsample4", &self.upsample4),
        ] {
            up.layout(&join(ours, name), &join(torch, name), out);
        }
        push(
            out,
            join(ours, "img"),
            join(torch, "img.0"),
            LayerKind::Conv,
        );
    }
}

impl ReferenceLayout for Stage2D {
    fn layout(&self, ours: &str, torch: &str, out: &mut Vec<LayerRef>) {
        sequential_layout(
            &self.encode_img,
            &join(ours, "encode_img"),
            &join(torch, "encode_img"),
            out,
        );
        self.get_cond_logits.layout(
            &join(ours, "get_cond_logits"),
            &join(torch, "get_cond_logits"),
            out,
        );
        self.get_uncond_logits.layout(
            &join(ours, "get_uncond_logits"),
            &join(torch, "get_uncond_logits"),
            out,
        );
    }
}

impl ReferenceLayout for DialogueEncoder {
    fn layout(&self, ours: &str, torch: &str, out: &mut Vec<LayerRef>) {
        // A torch `nn.LSTM(bidirectional=True)` attribute named `lstm` (ChatPainter has no public
        // reference code; this is the natural PyTorch spelling).
        let t = join(torch, "lstm");
        push(
            out,
            join(ours, "lstm.fwd"),
            t.clone(),
            LayerKind::LstmForward,
        );
        push(out, join(ours, "lstm.bwd"), t, LayerKind::LstmReverse);
    }
}
