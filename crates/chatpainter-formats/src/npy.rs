//! The one `.npy` / `.npz` reader and writer: FID reference statistics (float64, written and
//! read) and the Skip-Thought weights (float32 word tables of up to a gigabyte, read streaming).
//!
//! pytorch-fid and torch-fidelity store statistics as `np.savez(path, mu=mu, sigma=sigma)` (or
//! `savez_compressed`): a zip archive whose members `mu.npy` / `sigma.npy` are `.npy` files.
//! The `.npy` format (numpy NEP 1): magic `\x93NUMPY`, version byte pair, a little-endian
//! header length (u16 for v1.0, u32 for v2.0/v3.0), then an ASCII Python dict literal
//! `{'descr': '<f8', 'fortran_order': False, 'shape': (2048, 2048), }` padded with spaces and
//! terminated by `\n` so the data starts at a multiple of 64 bytes, then the raw data.
//!
//! Written: v1.0, `<f8`, C order, stored (uncompressed) members, exactly what `np.savez` writes.
//! Read: v1.0–3.0, `<f4` / `>f4` / `<f8` / `>f8`, C or Fortran order, stored or deflated
//! members, into `f64` (any float) or `f32` (float32 only: a word table is never narrowed
//! silently). Hand-written because the `ndarray-npy` crate would pull `ndarray` and its own zip
//! version; this is ~250 lines with precise errors.

use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::error::{FormatError, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// A value type arrays are read into.
pub trait Element: Copy + Default {
    /// Converts one stored value of dtype `descr`'s kind; `None` when `Self` cannot hold that
    /// dtype without loss.
    fn from_f32(v: f32) -> Self;
    fn from_f64(v: f64) -> Option<Self>;
    /// The dtypes accepted, for the error message.
    const ACCEPTS: &'static str;
}

impl Element for f64 {
    fn from_f32(v: f32) -> Self {
        f64::from(v)
    }
    fn from_f64(v: f64) -> Option<Self> {
        Some(v)
    }
    const ACCEPTS: &'static str = "'<f8', '>f8', '<f4' or '>f4'";
}

impl Element for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    const ACCEPTS: &'static str = "float32 ('<f4' or '>f4')";
}

/// A dense array with its shape, in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray<T = f64> {
    /// Dimensions; `[]` is a scalar.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values, row-major.
    pub data: Vec<T>,
}

fn bad(path: &Path, member: &str, message: impl Into<String>) -> FormatError {
    FormatError::Npy {
        path: path.to_path_buf(),
        member: member.to_string(),
        message: message.into(),
    }
}

/// Serialises `array` as a `.npy` v1.0 `<f8` C-order file.
pub fn write_npy(array: &NpyArray) -> Result<Vec<u8>> {
    let count: usize = array.shape.iter().product();
    if count != array.data.len() {
        return Err(bad(
            Path::new("<array>"),
            "",
            format!(
                "array of shape {:?} needs {count} values, has {}",
                array.shape,
                array.data.len()
            ),
        ));
    }
    // Python tuple syntax: a 1-tuple needs its trailing comma.
    let shape = match array.shape.as_slice() {
        [one] => format!("({one},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad with spaces so that magic(6) + version(2) + len(2) + header (incl. '\n') ≡ 0 mod 64.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let header_len = u16::try_from(header.len()).map_err(|_| {
        bad(
            Path::new("<array>"),
            "",
            "npy header longer than 65535 bytes",
        )
    })?;
    let mut out = Vec::with_capacity(10 + header.len() + 8 * count);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &array.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Parsed header fields.
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses the Python dict literal of an npy header (the subset numpy writes).
fn parse_header(text: &str, path: &Path, member: &str) -> Result<Header> {
    let body = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(|| bad(path, member, format!("npy header is not a dict: {text:?}")))?;
    let mut descr = None;
    let mut fortran_order = None;
    let mut shape = None;
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        // key
        let quote = rest
            .chars()
            .next()
            .filter(|c| *c == '\'' || *c == '"')
            .ok_or_else(|| {
                bad(
                    path,
                    member,
                    format!("npy header: expected a quoted key at {rest:?}"),
                )
            })?;
        let end = rest[1..]
            .find(quote)
            .ok_or_else(|| bad(path, member, "npy header: unterminated key"))?;
        let key = &rest[1..1 + end];
        rest = rest[end + 2..].trim_start();
        rest = rest
            .strip_prefix(':')
            .ok_or_else(|| {
                bad(
                    path,
                    member,
                    format!("npy header: expected ':' after key {key:?}"),
                )
            })?
            .trim_start();
        // value
        let value_end = if rest.starts_with('(') {
            rest.find(')')
                .map(|i| i + 1)
                .ok_or_else(|| bad(path, member, "npy header: unterminated shape tuple"))?
        } else if rest.starts_with('\'') || rest.starts_with('"') {
            let q = &rest[..1];
            rest[1..]
                .find(q)
                .map(|i| i + 2)
                .ok_or_else(|| bad(path, member, "npy header: unterminated string value"))?
        } else {
            rest.find(',').unwrap_or(rest.len())
        };
        let value = rest[..value_end].trim();
        match key {
            "descr" => descr = Some(value.trim_matches(|c| c == '\'' || c == '"').to_string()),
            "fortran_order" => {
                fortran_order = Some(match value {
                    "True" => true,
                    "False" => false,
                    other => {
                        return Err(bad(
                            path,
                            member,
                            format!("npy header: fortran_order = {other}"),
                        ));
                    }
                })
            }
            "shape" => {
                let inner = value.trim_start_matches('(').trim_end_matches(')');
                let dims = inner
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        // numpy on some platforms writes `3L` in old files.
                        s.trim_end_matches('L').parse::<usize>().map_err(|_| {
                            bad(path, member, format!("npy header: bad dimension {s:?}"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                shape = Some(dims);
            }
            _ => {} // unknown keys are tolerated, like numpy does
        }
        rest = rest[value_end..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(Header {
        descr: descr.ok_or_else(|| bad(path, member, "npy header has no 'descr'"))?,
        fortran_order: fortran_order
            .ok_or_else(|| bad(path, member, "npy header has no 'fortran_order'"))?,
        shape: shape.ok_or_else(|| bad(path, member, "npy header has no 'shape'"))?,
    })
}

/// Bytes of one stored value → the value as `T` (`None`: `T` cannot hold the dtype).
type Decoder<T> = fn(&[u8]) -> Option<T>;

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], path: &Path, member: &str) -> Result<()> {
    r.read_exact(buf)
        .map_err(|e| bad(path, member, format!("file ends early: {e}")))
}

/// Reads a `.npy` stream holding a float array into `T` (see the module docs for what is
/// accepted). `path` and `member` only label errors.
///
/// # Errors
/// [`FormatError::Npy`] for a bad header, a dtype `T` cannot hold (a pickled object array gets
/// the conversion hint), or data shorter than the shape.
pub fn read_npy<T: Element, R: Read>(mut r: R, path: &Path, member: &str) -> Result<NpyArray<T>> {
    let mut magic = [0u8; 8];
    read_exact(&mut r, &mut magic, path, member)?;
    if &magic[..6] != MAGIC {
        return Err(bad(path, member, "not an npy file (bad magic)"));
    }
    let header_len = match magic[6] {
        1 => {
            let mut b = [0u8; 2];
            read_exact(&mut r, &mut b, path, member)?;
            usize::from(u16::from_le_bytes(b))
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            read_exact(&mut r, &mut b, path, member)?;
            u32::from_le_bytes(b) as usize
        }
        v => {
            return Err(bad(
                path,
                member,
                format!("unsupported npy version {v}.{}", magic[7]),
            ));
        }
    };
    let mut header = vec![0u8; header_len];
    read_exact(&mut r, &mut header, path, member)?;
    let text = std::str::from_utf8(&header)
        .map_err(|_| bad(path, member, "npy header is not valid text"))?;
    let header = parse_header(text, path, member)?;
    let count = header
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(path, member, "npy shape overflows"))?;
    let decode: (usize, Decoder<T>) = match header.descr.as_str() {
        "<f4" => (4, |b| {
            Some(T::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        }),
        ">f4" => (4, |b| {
            Some(T::from_f32(f32::from_be_bytes([b[0], b[1], b[2], b[3]])))
        }),
        "<f8" => (8, |b| {
            T::from_f64(f64::from_le_bytes([
                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
            ]))
        }),
        ">f8" => (8, |b| {
            T::from_f64(f64::from_be_bytes([
                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
            ]))
        }),
        "|O" => {
            return Err(bad(
                path,
                member,
                "is a pickled object array; convert it to plain float32 first (the Skip-Thought \
                 encoder's module docs give the one-line numpy recipe)",
            ));
        }
        other => {
            return Err(bad(
                path,
                member,
                format!("unsupported dtype {other:?} (expected {})", T::ACCEPTS),
            ));
        }
    };
    let (width, decode) = decode;
    if width == 8 && T::from_f64(0.0).is_none() {
        return Err(bad(
            path,
            member,
            format!("dtype {:?} is not {}", header.descr, T::ACCEPTS),
        ));
    }
    // Read in 1 MiB chunks: a word table is up to a gigabyte and is never held twice.
    let mut data: Vec<T> = Vec::with_capacity(count);
    let mut buf = vec![0u8; (1 << 20) / width * width];
    while data.len() < count {
        let n = ((count - data.len()) * width).min(buf.len());
        r.read_exact(&mut buf[..n]).map_err(|e| {
            bad(
                path,
                member,
                format!(
                    "npy data ends early ({} of {count} values of shape {:?}): {e}",
                    data.len(),
                    header.shape
                ),
            )
        })?;
        data.extend(
            buf[..n]
                .chunks_exact(width)
                .map(|b| decode(b).unwrap_or_default()),
        );
    }
    if header.fortran_order && header.shape.len() > 1 {
        data = fortran_to_c(&data, &header.shape);
    }
    Ok(NpyArray {
        shape: header.shape,
        data,
    })
}

/// Column-major → row-major: the element at C index i has the Fortran index of the same
/// multi-index with the strides reversed.
fn fortran_to_c<T: Copy + Default>(data: &[T], shape: &[usize]) -> Vec<T> {
    let mut c_data = vec![T::default(); data.len()];
    let mut idx = vec![0usize; shape.len()];
    for (c_idx, slot) in c_data.iter_mut().enumerate() {
        let mut rem = c_idx;
        for (k, &d) in shape.iter().enumerate().rev() {
            idx[k] = rem % d;
            rem /= d;
        }
        let (mut f_idx, mut f_stride) = (0, 1);
        for (k, &d) in shape.iter().enumerate() {
            f_idx += idx[k] * f_stride;
            f_stride *= d;
        }
        *slot = data[f_idx];
    }
    c_data
}

/// Writes named arrays as an uncompressed `.npz` (like `np.savez`) into `writer`.
pub fn write_npz_to<W: Write + Seek>(writer: W, arrays: &[(&str, &NpyArray)]) -> Result<W> {
    let zerr = |e: zip::result::ZipError| bad(Path::new("<npz>"), "", format!("zip: {e}"));
    let mut zip = zip::ZipWriter::new(writer);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    for (name, array) in arrays {
        zip.start_file(format!("{name}.npy"), options)
            .map_err(zerr)?;
        zip.write_all(&write_npy(array)?)
            .map_err(|e| FormatError::io("<npz member>", e))?;
    }
    zip.finish().map_err(zerr)
}

/// Writes named arrays to `path` as `.npz`, atomically.
pub fn write_npz(path: &Path, arrays: &[(&str, &NpyArray)]) -> Result<()> {
    let mut bytes = write_npz_to(std::io::Cursor::new(Vec::new()), arrays)?.into_inner();
    bytes.shrink_to_fit();
    chatpainter_artifacts::write_atomic(path, &bytes)?;
    Ok(())
}

/// An opened `.npz` archive whose members are read by name.
pub struct Npz<R> {
    archive: zip::ZipArchive<R>,
    path: std::path::PathBuf,
}

impl<R: Read + Seek> Npz<R> {
    /// Opens the archive in `reader`; `path` labels errors.
    pub fn new(reader: R, path: &Path) -> Result<Self> {
        let archive = zip::ZipArchive::new(reader)
            .map_err(|e| bad(path, "", format!("not a zip/npz archive: {e}")))?;
        Ok(Self {
            archive,
            path: path.to_path_buf(),
        })
    }

    /// Whether member `{name}.npy` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.archive
            .index_for_name(&format!("{name}.npy"))
            .is_some()
    }

    /// Reads member `{name}.npy` (`"mu"` reads `mu.npy`).
    pub fn array<T: Element>(&mut self, name: &str) -> Result<NpyArray<T>> {
        let member = format!("{name}.npy");
        let file = self.archive.by_name(&member).map_err(|e| {
            bad(
                &self.path,
                &member,
                format!("array `{name}` not found: {e}"),
            )
        })?;
        read_npy(file, &self.path, &member)
    }
}

/// Reads the named float64 arrays (`"mu"` reads member `mu.npy`) from an `.npz` in `reader`.
pub fn read_npz_from<R: Read + Seek>(
    reader: R,
    names: &[&str],
    path: &Path,
) -> Result<Vec<NpyArray>> {
    let mut npz = Npz::new(reader, path)?;
    names.iter().map(|name| npz.array(name)).collect()
}

/// Reads the named float64 arrays from the `.npz` file at `path`.
pub fn read_npz(path: &Path, names: &[&str]) -> Result<Vec<NpyArray>> {
    let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    read_npz_from(std::io::BufReader::new(file), names, path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip_and_alignment() {
        for shape in [vec![3], vec![2, 3], vec![]] {
            let count: usize = shape.iter().product();
            let a = NpyArray {
                shape: shape.clone(),
                data: (0..count).map(|v| v as f64 * 0.5 - 1.0).collect(),
            };
            let bytes = write_npy(&a).unwrap();
            let hl = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!((10 + hl) % 64, 0);
            assert_eq!(bytes[10 + hl - 1], b'\n');
            assert_eq!(
                read_npy::<f64, _>(&bytes[..], Path::new("x"), "x").unwrap(),
                a
            );
        }
    }

    #[test]
    fn header_text_is_numpys() {
        let a = NpyArray {
            shape: vec![4],
            data: vec![0.0; 4],
        };
        let bytes = write_npy(&a).unwrap();
        let text = std::str::from_utf8(&bytes[10..bytes.len() - 32]).unwrap();
        assert!(text.starts_with("{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }"));
    }

    #[test]
    fn fortran_order_is_transposed_to_c() {
        // 2×3 array [[0,1,2],[3,4,5]] stored column-major: 0,3,1,4,2,5.
        let header = "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }";
        let mut h = header.to_string();
        let total = (10 + header.len() + 1).div_ceil(64) * 64;
        h.push_str(&" ".repeat(total - 10 - header.len() - 1));
        h.push('\n');
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[1, 0]);
        bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
        bytes.extend_from_slice(h.as_bytes());
        for v in [0.0f64, 3.0, 1.0, 4.0, 2.0, 5.0] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let a = read_npy::<f64, _>(&bytes[..], Path::new("f"), "f").unwrap();
        assert_eq!(a.data, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn float32_targets_refuse_float64_and_read_float32() {
        let a = NpyArray {
            shape: vec![2],
            data: vec![1.0, 2.0],
        };
        let bytes = write_npy(&a).unwrap();
        let err = read_npy::<f32, _>(&bytes[..], Path::new("t"), "t").unwrap_err();
        assert!(err.to_string().contains("float32"), "{err}");
        let mut f4 = bytes[..10].to_vec();
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
        let mut h = header.to_string();
        h.push_str(&" ".repeat((10 + header.len() + 1).div_ceil(64) * 64 - 10 - header.len() - 1));
        h.push('\n');
        f4[8..10].copy_from_slice(&(h.len() as u16).to_le_bytes());
        f4.extend_from_slice(h.as_bytes());
        for v in [1.5f32, -2.0] {
            f4.extend_from_slice(&v.to_le_bytes());
        }
        let read = read_npy::<f32, _>(&f4[..], Path::new("t"), "t").unwrap();
        assert_eq!((read.shape, read.data), (vec![2], vec![1.5, -2.0]));
    }

    #[test]
    fn malformed_files_are_errors() {
        assert!(read_npy::<f64, _>(&b"hello world!"[..], Path::new("x"), "x").is_err());
        let a = NpyArray {
            shape: vec![2],
            data: vec![1.0, 2.0],
        };
        let mut bytes = write_npy(&a).unwrap();
        bytes.pop();
        assert!(matches!(
            read_npy::<f64, _>(&bytes[..], Path::new("x"), "x"),
            Err(FormatError::Npy { .. })
        ));
    }
}
