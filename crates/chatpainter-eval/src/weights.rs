//! Loading user-supplied Inception weights, and the typed "unavailable" result.
//!
//! No package registry ships Inception v3 ImageNet weights and these machines cannot download
//! them, so the user supplies a file: torchvision's `inception_v3_google-0cc3c7bd.pth`, the
//! pytorch-fid / torch-fidelity `pt_inception-2015-12-05-6726825d.pth`, or a safetensors file
//! with the same `state_dict` names. Without one, callers get [`Availability::Unavailable`]
//! with the reason, never a number.
//!
//! Files are parsed with burn-store (PyTorch pickle/zip and legacy formats, safetensors). Before
//! anything is copied, every tensor the network has is checked against the file by PyTorch name
//! and PyTorch-layout shape, so a wrong file fails with the tensor's name and both shapes
//! instead of a partial load. Extra tensors that torchvision files legitimately carry
//! (`*.num_batches_tracked`, and `AuxLogits.*` when the network is built without the aux head)
//! are ignored and listed; any other extra tensor is an error (probably the other backbone's
//! file). The file's sha256 is recorded and compared with the published prefix in the
//! reference file name.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{
    BurnToPyTorchAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, PytorchStore,
    SafetensorsStore,
};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::inception::{InceptionConfig, InceptionV3};

/// A metric input (or value) that may be unavailable, with the reason; reports print
/// `unavailable: <reason>` instead of a number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Availability<T> {
    /// The thing is here.
    Available(T),
    /// It is not, and this is why.
    Unavailable {
        /// Human-readable reason.
        reason: String,
    },
}

impl<T> Availability<T> {
    /// `Some` when available.
    pub fn available(self) -> Option<T> {
        match self {
            Self::Available(t) => Some(t),
            Self::Unavailable { .. } => None,
        }
    }

    /// Maps the available value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Availability<U> {
        match self {
            Self::Available(t) => Availability::Available(f(t)),
            Self::Unavailable { reason } => Availability::Unavailable { reason },
        }
    }
}

impl<T: std::fmt::Display> std::fmt::Display for Availability<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Available(t) => t.fmt(f),
            Self::Unavailable { reason } => write!(f, "unavailable: {reason}"),
        }
    }
}

/// On-disk format of a weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WeightsFormat {
    /// `torch.save` output (zip or legacy pickle).
    Pytorch,
    /// safetensors.
    Safetensors,
}

/// Where the loaded weights came from; goes into the evaluation manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightsProvenance {
    /// The file.
    pub path: PathBuf,
    /// Lower-case hex sha256 of the file bytes.
    pub sha256: String,
    /// Detected format.
    pub format: WeightsFormat,
    /// Whether `sha256` starts with the published prefix of the backbone's reference file
    /// (false for converted / safetensors files, which is not an error but worth printing).
    pub matches_reference_prefix: bool,
    /// Number of tensors copied into the network.
    pub tensors_applied: usize,
    /// Tensors in the file deliberately not used (`num_batches_tracked`, `AuxLogits.*`).
    pub ignored: Vec<String>,
}

/// A ready-to-run network and the provenance of its weights.
#[derive(Debug)]
pub struct LoadedInception {
    /// The network with the file's weights, in inference mode.
    pub model: InceptionV3,
    /// The config it was built from.
    pub config: InceptionConfig,
    /// Where the weights came from.
    pub provenance: WeightsProvenance,
}

/// Detects the format from the first bytes: zip (`PK\x03\x04`, modern `torch.save`), pickle
/// protocol 2+ (`\x80`, legacy `torch.save`), otherwise safetensors (8-byte header length then
/// a JSON object).
fn detect_format(path: &Path) -> Result<WeightsFormat> {
    let mut head = [0u8; 9];
    let mut file = std::fs::File::open(path).map_err(|e| EvalError::io(path, e))?;
    let k = file.read(&mut head).map_err(|e| EvalError::io(path, e))?;
    if k >= 4 && &head[..4] == b"PK\x03\x04" || k >= 1 && head[0] == 0x80 {
        Ok(WeightsFormat::Pytorch)
    } else if k == 9 && head[8] == b'{' {
        Ok(WeightsFormat::Safetensors)
    } else {
        Err(EvalError::WeightsUnreadable {
            path: path.to_path_buf(),
            reason: "neither a PyTorch checkpoint (zip / pickle) nor a safetensors file".into(),
        })
    }
}

/// True for tensors a torchvision / pytorch-fid file may hold that the network need not use.
fn ignorable(name: &str, model_has_aux: bool) -> bool {
    name.ends_with("num_batches_tracked") || (!model_has_aux && name.starts_with("AuxLogits."))
}

/// PyTorch names and shapes of every tensor of `model` (what a state_dict would hold, minus
/// `num_batches_tracked`).
pub fn pytorch_tensor_shapes(model: &InceptionV3) -> BTreeMap<String, Vec<usize>> {
    model
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), false)
        .into_iter()
        .map(|t| (t.name.clone(), t.shape.to_vec()))
        .collect()
}

/// Number of parameters as PyTorch's `sum(p.numel() for p in model.parameters())` counts them:
/// conv / linear weights and biases and BatchNorm affine terms, excluding running statistics
/// (Burn's `num_params()` includes those).
pub fn pytorch_parameter_count(model: &InceptionV3) -> usize {
    pytorch_tensor_shapes(model)
        .iter()
        .filter(|(name, _)| !name.ends_with("running_mean") && !name.ends_with("running_var"))
        .map(|(_, shape)| shape.iter().product::<usize>())
        .sum()
}

/// Builds the network from `config` and loads `weights`; `None` → `Unavailable`.
pub fn load_inception(
    config: &InceptionConfig,
    weights: Option<&Path>,
    device: &Device,
) -> Result<Availability<LoadedInception>> {
    let Some(path) = weights else {
        return Ok(Availability::Unavailable {
            reason: format!(
                "no Inception weights file given for backbone {} (expected e.g. {}; \
                 no package registry ships it and it cannot be downloaded here)",
                config.backbone.label(),
                config.backbone.reference_weights_file()
            ),
        });
    };
    let mut model = config.init(device);
    let provenance = load_weights_into(&mut model, path, config)?;
    tracing::info!(
        path = %provenance.path.display(),
        sha256 = %provenance.sha256,
        applied = provenance.tensors_applied,
        backbone = config.backbone.label(),
        "loaded Inception weights"
    );
    if !provenance.matches_reference_prefix {
        tracing::warn!(
            sha256 = %provenance.sha256,
            expected_prefix = config.backbone.reference_sha256_prefix(),
            "Inception weights file is not byte-identical to the published {}",
            config.backbone.reference_weights_file()
        );
    }
    Ok(Availability::Available(LoadedInception {
        model,
        config: config.clone(),
        provenance,
    }))
}

/// Loads the tensors of `path` (PyTorch names) into `model`, checking names and shapes first.
pub fn load_weights_into(
    model: &mut InceptionV3,
    path: &Path,
    config: &InceptionConfig,
) -> Result<WeightsProvenance> {
    if !path.exists() {
        return Err(EvalError::WeightsNotFound {
            path: path.to_path_buf(),
        });
    }
    let format = detect_format(path)?;
    let sha256 = chatpainter_artifacts::sha256_file(path)?;
    let unreadable = |reason: String| EvalError::WeightsUnreadable {
        path: path.to_path_buf(),
        reason,
    };
    let tensors = match format {
        WeightsFormat::Pytorch => {
            let mut store = PytorchStore::from_file(path).map_indices_contiguous(false);
            store
                .get_all_tensors()
                .map_err(|e| unreadable(e.to_string()))?
                .clone()
        }
        WeightsFormat::Safetensors => {
            let mut store = SafetensorsStore::from_file(path);
            store
                .get_all_tensors()
                .map_err(|e| unreadable(e.to_string()))?
                .clone()
        }
    };

    let has_aux = model.AuxLogits.is_some();
    let expected = pytorch_tensor_shapes(model);
    for (name, want) in &expected {
        match tensors.get(name) {
            None => {
                return Err(EvalError::MissingTensor {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    expected: want.clone(),
                });
            }
            Some(t) if t.shape.to_vec() != *want => {
                return Err(EvalError::ShapeMismatch {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    expected: want.clone(),
                    found: t.shape.to_vec(),
                });
            }
            Some(_) => {}
        }
    }
    let mut ignored = Vec::new();
    let mut unexpected = Vec::new();
    for name in tensors.keys() {
        if expected.contains_key(name) {
            continue;
        }
        if ignorable(name, has_aux) {
            ignored.push(name.clone());
        } else {
            unexpected.push(name.clone());
        }
    }
    if let Some(example) = unexpected.first() {
        return Err(EvalError::UnexpectedTensors {
            path: path.to_path_buf(),
            count: unexpected.len(),
            example: example.clone(),
        });
    }

    let to_apply: Vec<_> = tensors
        .into_iter()
        .filter(|(name, _)| expected.contains_key(name))
        .map(|(_, t)| t)
        .collect();
    let result = model.apply(to_apply, None, Some(Box::new(PyTorchToBurnAdapter)), false);
    if !result.errors.is_empty() || !result.missing.is_empty() {
        let mut reasons: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
        reasons.extend(result.missing.iter().map(|(p, _)| format!("missing `{p}`")));
        return Err(EvalError::ApplyFailed {
            path: path.to_path_buf(),
            reason: reasons.join("; "),
        });
    }
    // Keep inference mode explicit even if the module was built on an autodiff device.
    *model = model.valid();
    Ok(WeightsProvenance {
        path: path.to_path_buf(),
        matches_reference_prefix: sha256.starts_with(config.backbone.reference_sha256_prefix()),
        sha256,
        format,
        tensors_applied: result.applied.len(),
        ignored,
    })
}

/// Writes `model`'s tensors as safetensors under their PyTorch `state_dict` names (weights
/// converted from torchvision layout, or test fixtures).
pub fn save_pytorch_named_safetensors(model: &InceptionV3, path: &Path) -> Result<()> {
    let mut store = SafetensorsStore::from_file(path).with_to_adapter(BurnToPyTorchAdapter);
    model
        .save_into(&mut store)
        .map_err(|e| EvalError::WeightsUnreadable {
            path: path.to_path_buf(),
            reason: format!("writing safetensors: {e}"),
        })
}
