//! Weight export with the reference PyTorch `state_dict` names (through `chatpainter-nn`'s
//! [`reference_names`] mapping), as safetensors files: Linear weights are transposed back to
//! PyTorch's `[out, in]`, BatchNorm running statistics are included, and torch's
//! `num_batches_tracked` counters (no Burn counterpart) are not.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use chatpainter_nn::{ReferenceLayout, reference_names};

use crate::ModelError;

/// One tensor's values, read back to the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dotted Burn path, e.g. `upsample1.bn.gamma`.
    pub path: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Every float tensor of `module` (parameters and BatchNorm running statistics), in visiting
/// order. Running statistics are read as currently stored.
pub fn tensor_values<M: Module>(module: &M) -> Vec<HostTensor> {
    struct V {
        stack: Vec<String>,
        out: Vec<HostTensor>,
    }
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.stack.push(name.to_owned());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            let shape = t.dims().to_vec();
            let values = t.into_data().iter::<f32>().collect();
            self.out.push(HostTensor {
                path: self.stack.join("."),
                shape,
                values,
            });
        }
    }
    let mut v = V {
        stack: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

/// The first non-finite value in `module`, as `(path, value)`.
pub fn first_non_finite<M: Module>(module: &M) -> Option<(String, f32)> {
    tensor_values(module).into_iter().find_map(|t| {
        t.values
            .iter()
            .find(|v| !v.is_finite())
            .map(|v| (t.path.clone(), *v))
    })
}

/// Writes `module` as a safetensors file keyed by the reference names; returns the tensor count.
///
/// # Errors
/// [`ModelError::Internal`] for a mapping gap; IO errors naming the file.
pub fn export_safetensors<M: ReferenceLayout>(
    module: &M,
    path: &Path,
) -> Result<usize, ModelError> {
    let names = reference_names(module)?;
    let by_path: HashMap<&str, &chatpainter_nn::ReferenceName> =
        names.iter().map(|n| (n.ours.as_str(), n)).collect();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for t in tensor_values(module) {
        let name = by_path
            .get(t.path.as_str())
            .ok_or_else(|| ModelError::Internal(format!("no reference name for `{}`", t.path)))?;
        let values = if name.torch_shape != t.shape && t.shape.len() == 2 {
            // Burn Linear weight [in, out] → torch [out, in].
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let mut v = vec![0f32; t.values.len()];
            for r in 0..rows {
                for c in 0..cols {
                    v[c * rows + r] = t.values[r * cols + c];
                }
            }
            v
        } else {
            t.values
        };
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((name.torch.clone(), name.torch_shape.clone(), bytes));
    }
    let views = tensors
        .iter()
        .map(|(n, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ModelError::Internal(format!("safetensors view: {e}")))?;
    let count = views.len();
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| ModelError::Internal(format!("safetensors: {e}")))?;
    chatpainter_artifacts::write_atomic(path, &bytes)?;
    Ok(count)
}
