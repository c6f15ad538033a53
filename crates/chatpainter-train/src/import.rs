//! Import of reference PyTorch checkpoints (`torch.save(net.state_dict())` of StackGAN-Pytorch's
//! `STAGE1_G` / `STAGE1_D`) into our modules, and a small writer of the same format.
//!
//! Reading uses Burn's PyTorch reader (`burn::store::pytorch_reader`: the zip + pickle format,
//! no Python). The names come from `chatpainter-nn`'s [`reference_names`] mapping, not from
//! Burn's generic PyTorch adapter, because our Sequential-index ↔ field mapping is specific to
//! these networks; so the check is strict and its errors precise: every tensor of the module
//! must be in the file with the reference shape (Linear weights `[out, in]`, transposed here to
//! Burn's `[in, out]`), a file tensor the module does not have is an error, and torch's
//! `*.num_batches_tracked` counters are ignored (no Burn counterpart; they only matter for
//! `momentum=None`). BatchNorm running statistics are imported. The checked values are then
//! applied through an in-memory safetensors store keyed by our paths.
//!
//! [`write_state_dict`] writes what `torch.save` writes for a state_dict (zip archive of stored
//! entries: `archive/data.pkl` with protocol-2 pickle of an `OrderedDict` of
//! `torch._utils._rebuild_tensor_v2` calls, one storage per tensor under `archive/data/`), so tests
//! can build reference checkpoints without Python, and weights can be handed back to PyTorch.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::store::pytorch_reader::{DType as PtDType, PytorchReader};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use chatpainter_nn::{ReferenceLayout, Stage1D, Stage1G, reference_names};

use chatpainter_model::export::tensor_values;

/// Errors of importing a reference checkpoint; each names the file and the tensor.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file is not a readable PyTorch checkpoint.
    #[error("{path}: not a readable PyTorch checkpoint: {message}", path = .path.display())]
    Read { path: PathBuf, message: String },
    /// A tensor of the module is missing from the file.
    #[error("{path}: tensor `{name}` is missing (expected shape {shape:?})", path = .path.display())]
    Missing {
        path: PathBuf,
        name: String,
        shape: Vec<usize>,
    },
    /// A tensor has another shape than the module's (both in torch layout).
    #[error(
        "{path}: tensor `{name}` has shape {found:?} in the file, the network expects {expected:?}",
        path = .path.display()
    )]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    /// Tensors in the file that the network does not have (a different network or variant).
    #[error("{path}: tensors the network does not have: {names:?}", path = .path.display())]
    Unexpected { path: PathBuf, names: Vec<String> },
    /// An element type other than float32/float64.
    #[error("{path}: tensor `{name}` is {dtype}; only float32 and float64 are imported", path = .path.display())]
    DType {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    /// Writing a checkpoint failed.
    #[error("{path}: {message}", path = .path.display())]
    Write { path: PathBuf, message: String },
    /// The mapping or the store failed (a bug, not bad input).
    #[error("import into the network: {0}")]
    Internal(String),
}

impl From<ImportError> for crate::TrainError {
    fn from(e: ImportError) -> Self {
        match e {
            ImportError::Internal(m) => crate::TrainError::Internal(m),
            ImportError::Read { ref path, .. }
            | ImportError::Missing { ref path, .. }
            | ImportError::ShapeMismatch { ref path, .. }
            | ImportError::Unexpected { ref path, .. }
            | ImportError::DType { ref path, .. }
            | ImportError::Write { ref path, .. } => crate::TrainError::Checkpoint {
                path: path.clone(),
                message: e.to_string(),
            },
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImportReport {
    /// Tensors applied (our paths).
    pub applied: usize,
    /// File tensors ignored (`num_batches_tracked`).
    pub ignored: Vec<String>,
}

/// Loads `path` (a reference `state_dict` .pth) into `module` by the reference names.
///
/// # Errors
/// [`ImportError`] naming the file and the first offending tensor; nothing is applied then.
pub fn load_reference_pth<M: ReferenceLayout>(
    mut module: M,
    path: &Path,
) -> Result<(M, ImportReport), ImportError> {
    let reader = PytorchReader::new(path).map_err(|e| ImportError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let names = reference_names(&module).map_err(|e| ImportError::Internal(e.to_string()))?;
    let mut file = reader.into_tensors();
    let mut report = ImportReport::default();
    let mut staged: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(names.len());
    for n in &names {
        let t = file.remove(&n.torch).ok_or_else(|| ImportError::Missing {
            path: path.to_path_buf(),
            name: n.torch.clone(),
            shape: n.torch_shape.clone(),
        })?;
        if t.shape() != n.torch_shape.as_slice() {
            return Err(ImportError::ShapeMismatch {
                path: path.to_path_buf(),
                name: n.torch.clone(),
                found: t.shape().to_vec(),
                expected: n.torch_shape.clone(),
            });
        }
        let bytes = t.read().map_err(|e| ImportError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let values: Vec<f32> = match t.dtype() {
            PtDType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            PtDType::F64 => bytes
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    f64::from_ne_bytes(a) as f32
                })
                .collect(),
            other => {
                return Err(ImportError::DType {
                    path: path.to_path_buf(),
                    name: n.torch.clone(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        // torch Linear [out, in] → Burn [in, out]; every other layout is the same.
        let values = if n.shape != n.torch_shape {
            transpose2(&values, n.torch_shape[0], n.torch_shape[1])
        } else {
            values
        };
        let le: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        staged.push((n.ours.clone(), n.shape.clone(), le));
    }
    let mut rest: Vec<String> = file.into_keys().collect();
    rest.sort();
    let (ignored, unexpected): (Vec<String>, Vec<String>) = rest
        .into_iter()
        .partition(|k| k.ends_with("num_batches_tracked"));
    if !unexpected.is_empty() {
        return Err(ImportError::Unexpected {
            path: path.to_path_buf(),
            names: unexpected,
        });
    }
    report.ignored = ignored;

    let views = staged
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ImportError::Internal(format!("safetensors view: {e}")))?;
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| ImportError::Internal(format!("safetensors: {e}")))?;
    let mut store = SafetensorsStore::from_bytes(Some(bytes));
    let result = module
        .load_from(&mut store)
        .map_err(|e| ImportError::Internal(format!("{e:?}")))?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(ImportError::Internal(format!(
            "store errors {:?}, missing {:?}",
            result.errors, result.missing
        )));
    }
    report.applied = result.applied.len();
    if report.applied != names.len() {
        return Err(ImportError::Internal(format!(
            "{} of {} tensors applied",
            report.applied,
            names.len()
        )));
    }
    Ok((module, report))
}

/// Loads the reference `STAGE1_G` and `STAGE1_D` state_dicts into freshly built networks of the
/// same widths (build them with [`crate::Stage1Generator::init`] or the `chatpainter-nn`
/// configs; the CA input width must match the checkpoint's variant).
///
/// # Errors
/// As [`load_reference_pth`], for the file that fails.
pub fn load_stage1_pth(
    g: Stage1G,
    g_path: &Path,
    d: Stage1D,
    d_path: &Path,
) -> Result<(Stage1G, Stage1D), ImportError> {
    let (g, _) = load_reference_pth(g, g_path)?;
    let (d, _) = load_reference_pth(d, d_path)?;
    Ok((g, d))
}

fn transpose2(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

/// Values of one state_dict entry.
#[derive(Debug, Clone, PartialEq)]
pub enum PthData {
    F32(Vec<f32>),
    /// e.g. BatchNorm's `num_batches_tracked` (a 0-d int64 tensor).
    I64(Vec<i64>),
}

/// One state_dict entry: torch name, torch shape (empty for a scalar), contiguous values.
#[derive(Debug, Clone, PartialEq)]
pub struct PthTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: PthData,
}

/// `module`'s state_dict as the reference code would save it: reference names and torch
/// layouts, plus a `num_batches_tracked` of `batches` for every BatchNorm.
///
/// # Errors
/// [`ImportError::Internal`] for a mapping gap.
pub fn reference_state_dict<M: ReferenceLayout>(
    module: &M,
    batches: i64,
) -> Result<Vec<PthTensor>, ImportError> {
    let names = reference_names(module).map_err(|e| ImportError::Internal(e.to_string()))?;
    let by_path: HashMap<&str, &chatpainter_nn::ReferenceName> =
        names.iter().map(|n| (n.ours.as_str(), n)).collect();
    let mut out = Vec::new();
    let mut bn_prefixes = BTreeMap::new();
    for t in tensor_values(module) {
        let n = by_path
            .get(t.path.as_str())
            .ok_or_else(|| ImportError::Internal(format!("no reference name for `{}`", t.path)))?;
        let values = if n.shape != n.torch_shape {
            transpose2(&t.values, n.shape[0], n.shape[1])
        } else {
            t.values
        };
        if let Some(prefix) = n.torch.strip_suffix(".running_var") {
            bn_prefixes.insert(out.len() + 1, prefix.to_owned());
        }
        out.push(PthTensor {
            name: n.torch.clone(),
            shape: n.torch_shape.clone(),
            data: PthData::F32(values),
        });
    }
    // Insert the counters after each BatchNorm's running_var, where torch puts them.
    for (at, prefix) in bn_prefixes.into_iter().rev() {
        out.insert(
            at.min(out.len()),
            PthTensor {
                name: format!("{prefix}.num_batches_tracked"),
                shape: Vec::new(),
                data: PthData::I64(vec![batches]),
            },
        );
    }
    Ok(out)
}

/// Writes `tensors` as a `torch.save(state_dict)` file (readable by `torch.load` and by
/// [`load_reference_pth`]). Written to a temporary name and renamed into place.
///
/// # Errors
/// [`ImportError::Write`] naming the file, for IO errors or element counts that do not match
/// their shapes.
pub fn write_state_dict(path: &Path, tensors: &[PthTensor]) -> Result<(), ImportError> {
    let bad = |message: String| ImportError::Write {
        path: path.to_path_buf(),
        message,
    };
    let mut pickle = Pickle::default();
    pickle.proto();
    pickle.global("collections", "OrderedDict");
    pickle.op(b')');
    pickle.op(b'R');
    pickle.op(b'(');
    let mut storages: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        let numel: usize = t.shape.iter().product();
        let (storage, bytes): (&str, Vec<u8>) = match &t.data {
            PthData::F32(v) if v.len() == numel => (
                "FloatStorage",
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            PthData::I64(v) if v.len() == numel => (
                "LongStorage",
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            _ => {
                return Err(bad(format!(
                    "tensor `{}`: values do not fill shape {:?}",
                    t.name, t.shape
                )));
            }
        };
        let key = i.to_string();
        pickle.string(&t.name);
        pickle.global("torch._utils", "_rebuild_tensor_v2");
        pickle.op(b'(');
        // persistent id ('storage', torch.<Type>Storage, key, 'cpu', numel)
        pickle.op(b'(');
        pickle.string("storage");
        pickle.global("torch", storage);
        pickle.string(&key);
        pickle.string("cpu");
        pickle.int(numel).map_err(&bad)?;
        pickle.op(b't');
        pickle.op(b'Q');
        pickle.int(0).map_err(&bad)?;
        pickle.tuple(&t.shape).map_err(&bad)?;
        let mut stride = vec![1usize; t.shape.len()];
        for k in (0..t.shape.len().saturating_sub(1)).rev() {
            stride[k] = stride[k + 1] * t.shape[k + 1];
        }
        pickle.tuple(&stride).map_err(&bad)?;
        pickle.op(0x89); // NEWFALSE: requires_grad
        pickle.global("collections", "OrderedDict");
        pickle.op(b')');
        pickle.op(b'R'); // backward hooks
        pickle.op(b't');
        pickle.op(b'R');
        storages.push((key, bytes));
    }
    pickle.op(b'u');
    pickle.op(b'.');

    let mut zip = ZipWriter::default();
    zip.add("archive/data.pkl", &pickle.0).map_err(&bad)?;
    zip.add("archive/byteorder", b"little").map_err(&bad)?;
    for (key, bytes) in &storages {
        zip.add(&format!("archive/data/{key}"), bytes)
            .map_err(&bad)?;
    }
    zip.add("archive/version", b"3\n").map_err(&bad)?;
    let bytes = zip.finish().map_err(&bad)?;
    chatpainter_artifacts::write_atomic(path, &bytes).map_err(|e| bad(e.to_string()))
}

/// The few pickle opcodes a state_dict needs (protocol 2, as `torch.save` writes).
#[derive(Default)]
struct Pickle(Vec<u8>);

impl Pickle {
    fn proto(&mut self) {
        self.0.extend_from_slice(&[0x80, 2]);
    }
    fn op(&mut self, op: u8) {
        self.0.push(op);
    }
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0.extend_from_slice(module.as_bytes());
        self.0.push(b'\n');
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(b'\n');
    }
    fn string(&mut self, s: &str) {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: usize) -> Result<(), String> {
        let v = i32::try_from(v).map_err(|_| format!("{v} does not fit a pickle BININT"))?;
        self.0.push(b'J');
        self.0.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn tuple(&mut self, items: &[usize]) -> Result<(), String> {
        if items.is_empty() {
            self.op(b')');
            return Ok(());
        }
        self.op(b'(');
        for &i in items {
            self.int(i)?;
        }
        self.op(b't');
        Ok(())
    }
}

/// A zip archive of stored (uncompressed) entries, data aligned to 64 bytes like torch's writer.
#[derive(Default)]
struct ZipWriter {
    out: Vec<u8>,
    central: Vec<u8>,
    entries: u16,
}

impl ZipWriter {
    fn add(&mut self, name: &str, data: &[u8]) -> Result<(), String> {
        let offset = u32::try_from(self.out.len()).map_err(|_| "archive over 4 GiB".to_owned())?;
        let size = u32::try_from(data.len()).map_err(|_| format!("{name}: entry over 4 GiB"))?;
        let crc = crc32(data);
        // Pad through an extra field so that the data starts on a 64-byte boundary.
        let header_len = 30 + name.len() + 4;
        let pad = (64 - (self.out.len() + header_len) % 64) % 64;
        let extra_len = (4 + pad) as u16;
        let o = &mut self.out;
        o.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        o.extend_from_slice(&20u16.to_le_bytes()); // version needed
        o.extend_from_slice(&0u16.to_le_bytes()); // flags
        o.extend_from_slice(&0u16.to_le_bytes()); // stored
        o.extend_from_slice(&0u16.to_le_bytes()); // time
        o.extend_from_slice(&0x21u16.to_le_bytes()); // date 1980-01-01
        o.extend_from_slice(&crc.to_le_bytes());
        o.extend_from_slice(&size.to_le_bytes());
        o.extend_from_slice(&size.to_le_bytes());
        o.extend_from_slice(&(name.len() as u16).to_le_bytes());
        o.extend_from_slice(&extra_len.to_le_bytes());
        o.extend_from_slice(name.as_bytes());
        o.extend_from_slice(&0x4246u16.to_le_bytes()); // "FB" padding field, as torch writes
        o.extend_from_slice(&(pad as u16).to_le_bytes());
        o.extend(std::iter::repeat_n(0u8, pad));
        o.extend_from_slice(data);
        let c = &mut self.central;
        c.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        c.extend_from_slice(&20u16.to_le_bytes()); // made by
        c.extend_from_slice(&20u16.to_le_bytes()); // needed
        c.extend_from_slice(&0u16.to_le_bytes());
        c.extend_from_slice(&0u16.to_le_bytes());
        c.extend_from_slice(&0u16.to_le_bytes());
        c.extend_from_slice(&0x21u16.to_le_bytes());
        c.extend_from_slice(&crc.to_le_bytes());
        c.extend_from_slice(&size.to_le_bytes());
        c.extend_from_slice(&size.to_le_bytes());
        c.extend_from_slice(&(name.len() as u16).to_le_bytes());
        c.extend_from_slice(&0u16.to_le_bytes()); // extra
        c.extend_from_slice(&0u16.to_le_bytes()); // comment
        c.extend_from_slice(&0u16.to_le_bytes()); // disk
        c.extend_from_slice(&0u16.to_le_bytes()); // internal attrs
        c.extend_from_slice(&0u32.to_le_bytes()); // external attrs
        c.extend_from_slice(&offset.to_le_bytes());
        c.extend_from_slice(name.as_bytes());
        self.entries = self
            .entries
            .checked_add(1)
            .ok_or_else(|| "over 65535 entries".to_owned())?;
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<u8>, String> {
        let cd_offset =
            u32::try_from(self.out.len()).map_err(|_| "archive over 4 GiB".to_owned())?;
        let cd_size = self.central.len() as u32;
        self.out.extend_from_slice(&self.central);
        let o = &mut self.out;
        o.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        o.extend_from_slice(&0u16.to_le_bytes());
        o.extend_from_slice(&0u16.to_le_bytes());
        o.extend_from_slice(&self.entries.to_le_bytes());
        o.extend_from_slice(&self.entries.to_le_bytes());
        o.extend_from_slice(&cd_size.to_le_bytes());
        o.extend_from_slice(&cd_offset.to_le_bytes());
        o.extend_from_slice(&0u16.to_le_bytes());
        Ok(self.out)
    }
}

/// CRC-32 (IEEE, reflected), as zip stores it.
fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *slot = c;
    }
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn written_state_dict_reads_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("x.pth");
        let tensors = vec![
            PthTensor {
                name: "fc.0.weight".into(),
                shape: vec![2, 3],
                data: PthData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            },
            PthTensor {
                name: "fc.1.num_batches_tracked".into(),
                shape: vec![],
                data: PthData::I64(vec![7]),
            },
        ];
        write_state_dict(&p, &tensors).expect("write");
        let r = PytorchReader::new(&p).expect("read");
        let w = r.get("fc.0.weight").expect("weight");
        assert_eq!(w.shape(), &[2, 3]);
        let b = w.read().expect("bytes");
        let v: Vec<f32> = b
            .chunks_exact(4)
            .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(v, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let n = r.get("fc.1.num_batches_tracked").expect("counter");
        assert_eq!(n.shape(), &[] as &[usize]);
        let bad = vec![PthTensor {
            name: "x".into(),
            shape: vec![3],
            data: PthData::F32(vec![1.0]),
        }];
        assert!(matches!(
            write_state_dict(&p, &bad),
            Err(ImportError::Write { .. })
        ));
    }
}
