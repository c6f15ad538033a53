//! Import of StackGAN's precomputed char-CNN-RNN caption embeddings (the paper's captions):
//! `char-CNN-RNN-embeddings.pickle` plus `filenames.pickle`, mapped to COCO image ids.
//!
//! The files were written by Python 2 (protocol 0 or 2), but any pickle protocol 0–5 is read.
//! They are decoded with `serde-pickle` (`DeOptions::new().replace_unresolved_globals()
//! .keep_restore_state()`, strings **not** decoded, so raw array bytes stay bytes). With
//! these options a numpy array arrives as
//! - protocols 0–4 (`numpy.core.multiarray._reconstruct` + `BUILD`): the state 5-tuple
//!   `(1, shape, dtype_state, fortran_flag, raw_bytes)`;
//! - protocol 5 (`numpy._core.numeric._frombuffer`): `(raw_bytes, dtype_state, shape, order)`.
//!
//! `dtype_state` is the dtype's `BUILD` state `(3, '<', …)` (byte order in field 1) or, when
//! the pickler reused a memoised dtype, its constructor arguments `('f4', False, True)`
//! (kind and size, no byte order: the byte order of the previous array of the same file is
//! used, else the machine's). The element size is `len(raw) / prod(shape)`; 4-byte elements
//! are float32, 8-byte ones float64 (converted to f32); anything else, or a dtype kind other
//! than `f`, is an error. Fortran-ordered arrays are reordered to C order.
//!
//! The embeddings are one array `(N, n_captions, dim)` or a list of per-image
//! `(n_captions, dim)` arrays (a 1-D array counts as one caption). Filenames are `str` or
//! Python-2 byte strings like `COCO_train2014_000000000009` (an optional `.jpg`/`.png`
//! extension is ignored); the image id is the run of trailing digits. Malformed keys,
//! duplicate ids, a count mismatch between the files or inconsistent vector widths are
//! reported as [`EmbedError::Pickle`], never a panic.
//!
//! Memory: the whole pickle is decoded in memory, so a COCO train file (≈1.7 GB of floats)
//! needs roughly twice that while loading.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_pickle::{DeOptions, Value};

use crate::text::{EmbedError, EmbeddingBatch, EncoderIdentity, TextEncoder};

/// File name of the embeddings inside a StackGAN `train/` or `test/` folder.
pub const CHAR_CNN_EMBEDDINGS_FILE: &str = "char-CNN-RNN-embeddings.pickle";
/// File name of the image keys inside a StackGAN `train/` or `test/` folder.
pub const CHAR_CNN_FILENAMES_FILE: &str = "filenames.pickle";

/// Caption vectors per image, as imported.
#[derive(Debug, Clone, PartialEq)]
pub struct CharCnnRnnEmbeddings {
    /// Width of every caption vector (1024 in StackGAN's files).
    pub dim: usize,
    /// Image ids in file order.
    pub order: Vec<i64>,
    /// Per image id, one vector per caption (in file order).
    pub by_image: HashMap<i64, Vec<Vec<f32>>>,
}

impl CharCnnRnnEmbeddings {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// `true` when no image was imported.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The per-image map alone.
    pub fn into_map(self) -> HashMap<i64, Vec<Vec<f32>>> {
        self.by_image
    }
}

/// Name in the identity of [`CharCnnRnnSource`].
pub const CHAR_CNN_RNN_NAME: &str = "char-CNN-RNN-stackgan-precomputed";

/// A pickle file and its sha256, as recorded in the embed report and manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileDigest {
    pub path: PathBuf,
    pub sha256: String,
}

/// StackGAN's precomputed char-CNN-RNN caption vectors as the embed stage's caption source.
///
/// It is a [`TextEncoder`] only so that it can stand where a caption encoder stands: its
/// identity is the pickles' sha256 (a changed file gives a new identity, hence a rebuild), and
/// [`TextEncoder::encode_batch`] always fails with [`EmbedError::CannotEncode`], because the
/// vectors exist only for the captions StackGAN encoded. [`Self::load`] decodes the files
/// (only when the stage runs, not when its identity is computed).
#[derive(Debug, Clone)]
pub struct CharCnnRnnSource {
    pairs: Vec<(PathBuf, PathBuf)>,
    files: Vec<FileDigest>,
    identity: EncoderIdentity,
}

impl CharCnnRnnSource {
    /// Hashes the `(embeddings, filenames)` pickle pairs (e.g. StackGAN's `train/` and `test/`)
    /// whose vectors must be `dim` wide.
    ///
    /// # Errors
    /// [`EmbedError::Config`] for no pair or `dim` 0; [`EmbedError::Io`] naming a missing or
    /// unreadable file.
    pub fn open(pairs: Vec<(PathBuf, PathBuf)>, dim: usize) -> Result<Self, EmbedError> {
        if pairs.is_empty() || dim == 0 {
            return Err(EmbedError::Config(
                "char-cnn-rnn: needs at least one embeddings/filenames pair and dim ≥ 1".into(),
            ));
        }
        let mut files = Vec::with_capacity(2 * pairs.len());
        for (embeddings, filenames) in &pairs {
            for path in [embeddings, filenames] {
                files.push(FileDigest {
                    path: path.clone(),
                    sha256: crate::text::fetch::sha256_file(path)?,
                });
            }
        }
        let joined: Vec<&str> = files.iter().map(|f| f.sha256.as_str()).collect();
        let identity = EncoderIdentity {
            name: CHAR_CNN_RNN_NAME.into(),
            // One digest over every file's sha256 (in config order); the files and their own
            // hashes are listed by [`Self::files`] for the manifest.
            weights_sha256: Some(crate::text::hex_sha256(joined.join(" ").as_bytes())),
            dim,
            normalization: "precomputed-per-image".into(),
        };
        Ok(Self {
            pairs,
            files,
            identity,
        })
    }

    /// Every pickle with its sha256.
    pub fn files(&self) -> &[FileDigest] {
        &self.files
    }

    /// Decodes every pair and merges them: image id → one vector per caption.
    ///
    /// # Errors
    /// As [`import_char_cnn_rnn`]; [`EmbedError::Pickle`] when vectors are not `dim` wide or
    /// an image id appears in two pairs (naming both files).
    pub fn load(&self) -> Result<HashMap<i64, Vec<Vec<f32>>>, EmbedError> {
        let mut merged: HashMap<i64, Vec<Vec<f32>>> = HashMap::new();
        let mut origin: HashMap<i64, usize> = HashMap::new();
        for (pair, (embeddings, filenames)) in self.pairs.iter().enumerate() {
            let imported = import_char_cnn_rnn(embeddings, filenames)?;
            if !imported.is_empty() && imported.dim != self.identity.dim {
                return Err(pickle_err(
                    embeddings,
                    format!(
                        "holds {}-d vectors, the config says dim = {}",
                        imported.dim, self.identity.dim
                    ),
                ));
            }
            for (id, vectors) in imported.by_image {
                if let Some(&first) = origin.get(&id) {
                    return Err(pickle_err(
                        filenames,
                        format!(
                            "image id {id} is also listed in {}",
                            self.pairs[first].1.display()
                        ),
                    ));
                }
                origin.insert(id, pair);
                merged.insert(id, vectors);
            }
        }
        Ok(merged)
    }
}

impl TextEncoder for CharCnnRnnSource {
    fn identity(&self) -> &EncoderIdentity {
        &self.identity
    }

    fn max_tokens(&self) -> Option<usize> {
        None
    }

    fn encode_batch(&self, texts: &[&str]) -> Result<EmbeddingBatch, EmbedError> {
        Err(EmbedError::CannotEncode {
            encoder: CHAR_CNN_RNN_NAME.into(),
            what: format!(
                "{} text(s), e.g. {:?}",
                texts.len(),
                texts.first().unwrap_or(&"")
            ),
        })
    }

    fn precomputed(&self) -> Option<&CharCnnRnnSource> {
        Some(self)
    }
}

/// One decoded numpy array (C order, values as f32).
#[derive(Debug, Clone, PartialEq)]
pub struct NdArrayF32 {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// Imports `dir/char-CNN-RNN-embeddings.pickle` and `dir/filenames.pickle`.
///
/// # Errors
/// As [`import_char_cnn_rnn`].
pub fn import_char_cnn_rnn_dir(dir: &Path) -> Result<CharCnnRnnEmbeddings, EmbedError> {
    import_char_cnn_rnn(
        &dir.join(CHAR_CNN_EMBEDDINGS_FILE),
        &dir.join(CHAR_CNN_FILENAMES_FILE),
    )
}

/// Imports an embeddings pickle and its filenames pickle and maps them to image ids.
///
/// # Errors
/// [`EmbedError::Io`] for unreadable files; [`EmbedError::Pickle`] for undecodable pickles,
/// unsupported arrays, malformed keys, duplicate image ids or a count mismatch.
pub fn import_char_cnn_rnn(
    embeddings: &Path,
    filenames: &Path,
) -> Result<CharCnnRnnEmbeddings, EmbedError> {
    let names = read_filenames_pickle(filenames)?;
    let per_image = read_embeddings_pickle(embeddings)?;
    if names.len() != per_image.len() {
        return Err(pickle_err(
            embeddings,
            format!(
                "holds {} images but {} lists {} filenames",
                per_image.len(),
                filenames.display(),
                names.len()
            ),
        ));
    }
    let mut dim = None;
    let mut order = Vec::with_capacity(names.len());
    let mut by_image = HashMap::with_capacity(names.len());
    for (i, (name, image)) in names.iter().zip(per_image).enumerate() {
        let id = image_id_from_filename(name).ok_or_else(|| {
            pickle_err(
                filenames,
                format!("entry #{i} `{name}` does not end in an image id (trailing digits)"),
            )
        })?;
        if image.shape.len() != 2 {
            return Err(pickle_err(
                embeddings,
                format!("image #{i} has shape {:?}", image.shape),
            ));
        }
        let width = image.shape[1];
        if *dim.get_or_insert(width) != width {
            return Err(pickle_err(
                embeddings,
                format!(
                    "image #{i} has {width}-d vectors, earlier images {}-d",
                    dim.unwrap_or(0)
                ),
            ));
        }
        let captions: Vec<Vec<f32>> = if width == 0 {
            vec![Vec::new(); image.shape[0]]
        } else {
            image
                .data
                .chunks_exact(width)
                .map(<[f32]>::to_vec)
                .collect()
        };
        if by_image.insert(id, captions).is_some() {
            return Err(pickle_err(
                filenames,
                format!("image id {id} (entry #{i} `{name}`) appears twice"),
            ));
        }
        order.push(id);
    }
    Ok(CharCnnRnnEmbeddings {
        dim: dim.unwrap_or(0),
        order,
        by_image,
    })
}

/// The image id of a StackGAN key: its trailing decimal digits (after dropping an optional
/// `.jpg`/`.jpeg`/`.png` extension). `COCO_train2014_000000000009` → 9. `None` if there are
/// no trailing digits or they overflow `i64`.
pub fn image_id_from_filename(name: &str) -> Option<i64> {
    let lower = name.to_ascii_lowercase();
    let stem = [".jpg", ".jpeg", ".png"]
        .iter()
        .find_map(|ext| lower.strip_suffix(ext).map(|s| &name[..s.len()]))
        .unwrap_or(name);
    let digits_start = stem
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_digit())
        .last()
        .map(|(i, _)| i)?;
    stem[digits_start..].parse().ok()
}

/// Reads a filenames pickle: a list (or tuple) of `str` or byte strings.
///
/// # Errors
/// [`EmbedError::Io`], or [`EmbedError::Pickle`] for anything else than a list of
/// UTF-8 strings.
pub fn read_filenames_pickle(path: &Path) -> Result<Vec<String>, EmbedError> {
    let value = load_pickle(path)?;
    let items = match value {
        Value::List(v) | Value::Tuple(v) => v,
        other => {
            return Err(pickle_err(
                path,
                format!("expected a list of filenames, found {}", kind(&other)),
            ));
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s),
            Value::Bytes(b) => String::from_utf8(b)
                .map_err(|_| pickle_err(path, format!("filename #{i} is not valid UTF-8"))),
            other => Err(pickle_err(
                path,
                format!("filename #{i} is a {}, not a string", kind(&other)),
            )),
        })
        .collect()
}

/// Reads an embeddings pickle into one `(n_captions, dim)` array per image.
///
/// # Errors
/// [`EmbedError::Io`], or [`EmbedError::Pickle`] if the file is not a numpy array of rank 3
/// or a list of rank-1/2 arrays of float32/float64.
pub fn read_embeddings_pickle(path: &Path) -> Result<Vec<NdArrayF32>, EmbedError> {
    let value = load_pickle(path)?;
    let mut order = None;
    match value {
        Value::List(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let mut a = decode_ndarray(v, &mut order)
                    .map_err(|m| pickle_err(path, format!("image #{i}: {m}")))?;
                match a.shape.len() {
                    1 => a.shape.insert(0, 1),
                    2 => {}
                    _ => {
                        return Err(pickle_err(
                            path,
                            format!(
                                "image #{i}: expected a (n_captions, dim) array, found shape {:?}",
                                a.shape
                            ),
                        ));
                    }
                }
                Ok(a)
            })
            .collect(),
        other => {
            let a = decode_ndarray(other, &mut order).map_err(|m| pickle_err(path, m))?;
            let [n, c, d] = a.shape[..] else {
                return Err(pickle_err(
                    path,
                    format!(
                        "expected an (N, n_captions, dim) array or a list of arrays, found shape {:?}",
                        a.shape
                    ),
                ));
            };
            let per = c * d;
            Ok((0..n)
                .map(|i| NdArrayF32 {
                    shape: vec![c, d],
                    data: a.data[i * per..(i + 1) * per].to_vec(),
                })
                .collect())
        }
    }
}

/// Decodes one numpy array payload (see the module docs for the accepted forms).
/// `order` carries the byte order of the previous array for memo-reused dtypes.
///
/// # Errors
/// A sentence saying what does not fit.
pub fn decode_ndarray(value: Value, order: &mut Option<ByteOrder>) -> Result<NdArrayF32, String> {
    let Value::Tuple(fields) = value else {
        return Err(format!("expected a numpy array, found {}", kind(&value)));
    };
    let (shape, dtype, fortran, raw) = match fields.len() {
        5 => {
            let mut it = fields.into_iter();
            let _version = it.next();
            let shape = it.next();
            let dtype = it.next();
            let fortran = it.next();
            let raw = it.next();
            (
                shape,
                dtype,
                fortran.map(|f| truthy(&f)).unwrap_or(false),
                raw,
            )
        }
        4 => {
            let mut it = fields.into_iter();
            let raw = it.next();
            let dtype = it.next();
            let shape = it.next();
            let fortran = match it.next() {
                Some(Value::String(s)) => s == "F",
                Some(Value::Bytes(b)) => b == b"F",
                _ => false,
            };
            (shape, dtype, fortran, raw)
        }
        n => {
            return Err(format!(
                "a tuple of {n} fields is not a numpy array payload (expected 5, or 4 for protocol 5)"
            ));
        }
    };
    let shape = match shape {
        Some(Value::Tuple(v) | Value::List(v)) => v
            .iter()
            .map(|d| match d {
                Value::I64(x) => usize::try_from(*x).map_err(|_| format!("bad dimension {x}")),
                other => Err(format!("bad dimension {}", kind(other))),
            })
            .collect::<Result<Vec<usize>, String>>()?,
        Some(Value::I64(x)) => vec![usize::try_from(x).map_err(|_| format!("bad dimension {x}"))?],
        _ => return Err("array shape is not a tuple".into()),
    };
    let raw = match raw {
        Some(Value::Bytes(b)) => b,
        Some(Value::String(s)) => s.chars().map(|c| c as u32 as u8).collect(),
        Some(other) => {
            return Err(format!(
                "array data is a {} (object arrays are not supported)",
                kind(&other)
            ));
        }
        None => return Err("array data missing".into()),
    };
    let dtype = parse_dtype(dtype.as_ref());
    let byte_order = dtype.order.or(*order).unwrap_or(ByteOrder::NATIVE);
    *order = Some(byte_order);
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("array too large")?;
    let size = if count == 0 {
        4
    } else if raw.len() % count != 0 {
        return Err(format!(
            "{} data bytes do not divide into {count} elements of shape {shape:?}",
            raw.len()
        ));
    } else {
        raw.len() / count
    };
    if let Some((k, s)) = dtype.kind
        && (k != 'f' || s != size)
    {
        return Err(format!(
            "dtype `{k}{s}` with {size}-byte elements is not float32/float64"
        ));
    }
    let big = byte_order == ByteOrder::Big;
    let data: Vec<f32> = match size {
        4 => raw
            .chunks_exact(4)
            .map(|b| {
                let b = [b[0], b[1], b[2], b[3]];
                if big {
                    f32::from_be_bytes(b)
                } else {
                    f32::from_le_bytes(b)
                }
            })
            .collect(),
        8 => raw
            .chunks_exact(8)
            .map(|b| {
                let b = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
                (if big {
                    f64::from_be_bytes(b)
                } else {
                    f64::from_le_bytes(b)
                }) as f32
            })
            .collect(),
        s => return Err(format!("{s}-byte elements are neither float32 nor float64")),
    };
    let data = if fortran && shape.len() > 1 {
        fortran_to_c(&data, &shape)
    } else {
        data
    };
    Ok(NdArrayF32 { shape, data })
}

/// Byte order of array data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    /// `<`
    Little,
    /// `>`
    Big,
}

impl ByteOrder {
    const NATIVE: Self = if cfg!(target_endian = "big") {
        Self::Big
    } else {
        Self::Little
    };
}

struct Dtype {
    order: Option<ByteOrder>,
    kind: Option<(char, usize)>,
}

/// Byte order and kind from either form of a pickled dtype.
fn parse_dtype(value: Option<&Value>) -> Dtype {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Bytes(b) => String::from_utf8(b.clone()).ok(),
        _ => None,
    };
    let order_of = |s: &str| match s.chars().next() {
        Some('<') => Some(ByteOrder::Little),
        Some('>') => Some(ByteOrder::Big),
        Some('=' | '|') => Some(ByteOrder::NATIVE),
        _ => None,
    };
    let Some(Value::Tuple(fields)) = value else {
        return Dtype {
            order: None,
            kind: None,
        };
    };
    match fields.first() {
        // BUILD state: (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        Some(Value::I64(_)) => Dtype {
            order: fields.get(1).and_then(text).and_then(|s| order_of(&s)),
            kind: None,
        },
        // constructor arguments: ('f4', align, copy), possibly with a byte order prefix
        Some(first) => {
            let s = text(first).unwrap_or_default();
            let order = order_of(&s);
            let body = s.trim_start_matches(['<', '>', '=', '|']);
            let mut chars = body.chars();
            let kind = chars
                .next()
                .and_then(|k| chars.as_str().parse().ok().map(|n| (k, n)));
            Dtype { order, kind }
        }
        None => Dtype {
            order: None,
            kind: None,
        },
    }
}

/// Reorders column-major values into row-major order.
fn fortran_to_c(data: &[f32], shape: &[usize]) -> Vec<f32> {
    let mut out = vec![0.0f32; data.len()];
    let mut index = vec![0usize; shape.len()];
    for slot in out.iter_mut() {
        // Column-major offset of the current row-major index.
        let mut offset = 0usize;
        let mut stride = 1usize;
        for (&i, &d) in index.iter().zip(shape) {
            offset += i * stride;
            stride *= d;
        }
        *slot = data[offset];
        for k in (0..shape.len()).rev() {
            index[k] += 1;
            if index[k] < shape[k] {
                break;
            }
            index[k] = 0;
        }
    }
    out
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::I64(i) => *i != 0,
        _ => false,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::I64(_) | Value::Int(_) => "int",
        Value::F64(_) => "float",
        Value::Bytes(_) => "byte string",
        Value::String(_) => "str",
        Value::List(_) => "list",
        Value::Tuple(_) => "tuple",
        Value::Set(_) | Value::FrozenSet(_) => "set",
        Value::Dict(_) => "dict",
    }
}

fn load_pickle(path: &Path) -> Result<Value, EmbedError> {
    let file = std::fs::File::open(path).map_err(|e| EmbedError::io(path, e))?;
    let options = DeOptions::new()
        .replace_unresolved_globals()
        .keep_restore_state();
    serde_pickle::value_from_reader(std::io::BufReader::new(file), options)
        .map_err(|e| pickle_err(path, format!("not a readable pickle: {e}")))
}

fn pickle_err(path: &Path, message: String) -> EmbedError {
    EmbedError::Pickle {
        path: PathBuf::from(path),
        message,
    }
}
