//! The dense scratch file the output is assembled through: every occurrence's vector written at
//! its slot, part by part from the cache, then read back in image order, so neither the cache
//! nor the table has to fit in memory.

use crate::cache::{EncoderCache, Key};
use chatpainter_model::text::EmbedError;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Vectors written at arbitrary slots, read back in slot order: how the output is assembled
/// from cache parts without holding them. Anonymous temporary file, gone when dropped.
struct Scratch {
    file: std::fs::File,
    dim: usize,
}

impl Scratch {
    fn new(dir: &Path, dim: usize) -> Result<Self, EmbedError> {
        let file = tempfile::tempfile_in(dir).map_err(|e| EmbedError::io(dir, e))?;
        Ok(Self { file, dim })
    }

    fn put(&mut self, slot: usize, vector: &[f32], dir: &Path) -> Result<(), EmbedError> {
        let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.file
            .seek(SeekFrom::Start((slot * self.dim * 4) as u64))
            .and_then(|_| self.file.write_all(&bytes))
            .map_err(|e| EmbedError::io(dir, e))
    }

    fn reader(mut self, dir: &Path) -> Result<ScratchReader, EmbedError> {
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| EmbedError::io(dir, e))?;
        Ok(ScratchReader {
            reader: BufReader::with_capacity(1 << 20, self.file),
            dim: self.dim,
            buf: vec![0u8; self.dim * 4],
        })
    }
}

pub(crate) struct ScratchReader {
    reader: BufReader<std::fs::File>,
    dim: usize,
    buf: Vec<u8>,
}

impl ScratchReader {
    pub(crate) fn next(&mut self, dir: &Path) -> Result<Vec<f32>, EmbedError> {
        self.reader
            .read_exact(&mut self.buf)
            .map_err(|e| EmbedError::io(dir, e))?;
        let mut v = Vec::with_capacity(self.dim);
        v.extend(
            self.buf
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        Ok(v)
    }
}

/// Fills a scratch file with the vectors of `keys` (one slot per occurrence, in order),
/// reading the cache part by part.
pub(crate) fn scatter(
    cache: &EncoderCache,
    keys: &[Key],
    dir: &Path,
) -> Result<ScratchReader, EmbedError> {
    let mut scratch = Scratch::new(dir, cache.identity().dim)?;
    cache.gather(keys, |slot, v| scratch.put(slot, v, dir))?;
    scratch.reader(dir)
}
