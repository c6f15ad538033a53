//! Minimal `.npy` / `.npz` reader and writer for float64 arrays (FID reference statistics).
//!
//! pytorch-fid and torch-fidelity store statistics as `np.savez(path, mu=mu, sigma=sigma)` (or
//! `savez_compressed`): a zip archive whose members `mu.npy` / `sigma.npy` are `.npy` files.
//! The `.npy` format (numpy NEP 1): magic `\x93NUMPY`, version byte pair, a little-endian
//! header length (u16 for v1.0, u32 for v2.0/v3.0), then an ASCII Python dict literal
//! `{'descr': '<f8', 'fortran_order': False, 'shape': (2048, 2048), }` padded with spaces and
//! terminated by `\n` so the data starts at a multiple of 64 bytes, then the raw data.
//!
//! Written: v1.0, `<f8`, C order, stored (uncompressed) members, exactly what `np.savez` writes.
//! Read: v1.0–3.0, `<f8` / `>f8` / `<f4` (widened to f64), C or Fortran order, stored or
//! deflated members. Hand-written because the `ndarray-npy` crate would pull `ndarray` and its
//! own zip version for two arrays; this is ~200 lines with precise errors.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{EvalError, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// A dense f64 array with its shape, in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Dimensions; `[]` is a scalar.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values, row-major.
    pub data: Vec<f64>,
}

fn bad(path: &Path, reason: impl Into<String>) -> EvalError {
    EvalError::BadNpz {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Serialises `array` as a `.npy` v1.0 `<f8` C-order file.
pub fn write_npy(array: &NpyArray) -> Result<Vec<u8>> {
    let count: usize = array.shape.iter().product();
    if count != array.data.len() {
        return Err(EvalError::InvalidArgument(format!(
            "array of shape {:?} needs {count} values, has {}",
            array.shape,
            array.data.len()
        )));
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
    let header_len = u16::try_from(header.len())
        .map_err(|_| EvalError::InvalidArgument("npy header longer than 65535 bytes".into()))?;
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
fn parse_header(text: &str, path: &Path) -> Result<Header> {
    let body = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(|| bad(path, format!("npy header is not a dict: {text:?}")))?;
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
                    format!("npy header: expected a quoted key at {rest:?}"),
                )
            })?;
        let end = rest[1..]
            .find(quote)
            .ok_or_else(|| bad(path, "npy header: unterminated key"))?;
        let key = &rest[1..1 + end];
        rest = rest[end + 2..].trim_start();
        rest = rest
            .strip_prefix(':')
            .ok_or_else(|| bad(path, format!("npy header: expected ':' after key {key:?}")))?
            .trim_start();
        // value
        let value_end = if rest.starts_with('(') {
            rest.find(')')
                .map(|i| i + 1)
                .ok_or_else(|| bad(path, "npy header: unterminated shape tuple"))?
        } else if rest.starts_with('\'') || rest.starts_with('"') {
            let q = &rest[..1];
            rest[1..]
                .find(q)
                .map(|i| i + 2)
                .ok_or_else(|| bad(path, "npy header: unterminated string value"))?
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
                    other => return Err(bad(path, format!("npy header: fortran_order = {other}"))),
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
                        s.trim_end_matches('L')
                            .parse::<usize>()
                            .map_err(|_| bad(path, format!("npy header: bad dimension {s:?}")))
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
        descr: descr.ok_or_else(|| bad(path, "npy header has no 'descr'"))?,
        fortran_order: fortran_order
            .ok_or_else(|| bad(path, "npy header has no 'fortran_order'"))?,
        shape: shape.ok_or_else(|| bad(path, "npy header has no 'shape'"))?,
    })
}

/// Parses a `.npy` file holding a float64 (or float32) array. `path` only labels errors.
pub fn read_npy(bytes: &[u8], path: &Path) -> Result<NpyArray> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad(path, "not an npy file (bad magic)"));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, start) = match major {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => {
            return Err(bad(
                path,
                format!("unsupported npy version {major}.{minor}"),
            ));
        }
    };
    let data_start = start + header_len;
    let header_bytes = bytes
        .get(start..data_start)
        .ok_or_else(|| bad(path, "npy header runs past the end of the file"))?;
    let text =
        std::str::from_utf8(header_bytes).map_err(|_| bad(path, "npy header is not valid text"))?;
    let header = parse_header(text, path)?;
    let count = header
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(path, "npy shape overflows"))?;
    let payload = &bytes[data_start..];
    let (width, decode): (usize, fn(&[u8]) -> f64) = match header.descr.as_str() {
        "<f8" => (8, |b| {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
        }),
        ">f8" => (8, |b| {
            f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
        }),
        "<f4" => (4, |b| {
            f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }),
        other => {
            return Err(bad(
                path,
                format!("unsupported dtype {other:?} (expected '<f8', '>f8' or '<f4')"),
            ));
        }
    };
    if payload.len() != count * width {
        return Err(bad(
            path,
            format!(
                "npy data has {} bytes, shape {:?} of {} needs {}",
                payload.len(),
                header.shape,
                header.descr,
                count * width
            ),
        ));
    }
    let mut data: Vec<f64> = payload.chunks_exact(width).map(decode).collect();
    if header.fortran_order && header.shape.len() > 1 {
        // Column-major → row-major: element at C index i has Fortran index with the
        // multi-index reversed in weight.
        let shape = &header.shape;
        let mut c_data = vec![0.0; count];
        for (c_idx, slot) in c_data.iter_mut().enumerate() {
            let mut rem = c_idx;
            let mut f_idx = 0;
            let mut f_stride = 1;
            let mut idx = vec![0usize; shape.len()];
            for (k, &d) in shape.iter().enumerate().rev() {
                idx[k] = rem % d;
                rem /= d;
            }
            for (k, &d) in shape.iter().enumerate() {
                f_idx += idx[k] * f_stride;
                f_stride *= d;
            }
            *slot = data[f_idx];
        }
        data = c_data;
    }
    Ok(NpyArray {
        shape: header.shape,
        data,
    })
}

/// Writes named arrays as an uncompressed `.npz` (like `np.savez`) into `writer`.
pub fn write_npz_to<W: Write + Seek>(writer: W, arrays: &[(&str, &NpyArray)]) -> Result<W> {
    let zerr = |e: zip::result::ZipError| EvalError::InvalidArgument(format!("zip: {e}"));
    let mut zip = zip::ZipWriter::new(writer);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    for (name, array) in arrays {
        zip.start_file(format!("{name}.npy"), options)
            .map_err(zerr)?;
        zip.write_all(&write_npy(array)?)
            .map_err(|e| EvalError::io("<npz member>", e))?;
    }
    zip.finish().map_err(zerr)
}

/// Writes named arrays to `path` as `.npz`, atomically (temporary name, flush, rename).
pub fn write_npz(path: &Path, arrays: &[(&str, &NpyArray)]) -> Result<()> {
    let tmp = tmp_path(path);
    let file = std::fs::File::create(&tmp).map_err(|e| EvalError::io(&tmp, e))?;
    let file = write_npz_to(std::io::BufWriter::new(file), arrays).map_err(|e| match e {
        EvalError::InvalidArgument(m) => bad(path, m),
        other => other,
    })?;
    let file = file
        .into_inner()
        .map_err(|e| EvalError::io(&tmp, e.into_error()))?;
    file.sync_all().map_err(|e| EvalError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| EvalError::io(path, e))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Reads the named arrays (`"mu"` reads member `mu.npy`) from an `.npz` in `reader`.
pub fn read_npz_from<R: Read + Seek>(
    reader: R,
    names: &[&str],
    path: &Path,
) -> Result<Vec<NpyArray>> {
    let mut zip = zip::ZipArchive::new(reader)
        .map_err(|e| bad(path, format!("not a zip/npz archive: {e}")))?;
    names
        .iter()
        .map(|name| {
            let member = format!("{name}.npy");
            let mut file = zip
                .by_name(&member)
                .map_err(|e| bad(path, format!("array `{name}` ({member}) not found: {e}")))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(|e| bad(path, format!("reading `{member}`: {e}")))?;
            read_npy(&bytes, &path.join(&member))
        })
        .collect()
}

/// Reads the named arrays from the `.npz` file at `path`.
pub fn read_npz(path: &Path, names: &[&str]) -> Result<Vec<NpyArray>> {
    let file = std::fs::File::open(path).map_err(|e| EvalError::io(path, e))?;
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
            assert_eq!(read_npy(&bytes, Path::new("x")).unwrap(), a);
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
        let a = read_npy(&bytes, Path::new("f")).unwrap();
        assert_eq!(a.data, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn malformed_files_are_errors() {
        assert!(read_npy(b"hello world!", Path::new("x")).is_err());
        let a = NpyArray {
            shape: vec![2],
            data: vec![1.0, 2.0],
        };
        let mut bytes = write_npy(&a).unwrap();
        bytes.pop();
        assert!(matches!(
            read_npy(&bytes, Path::new("x")),
            Err(EvalError::BadNpz { .. })
        ));
    }
}
