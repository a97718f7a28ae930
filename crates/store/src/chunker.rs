//! Splitting file content into chunks and storing them.

use std::io::Read;

use fastcdc::v2020::{FastCDC, StreamCDC};

use crate::error::{Error, Result};
use crate::id::{ChunkId, FileHash};
use crate::object::{ChunkRef, FileContent};
use crate::objects::{ObjectStore, Put};
use crate::pack::ObjKind;
use crate::repo::ChunkerConfig;
use crate::verified::VerifiedObject;

/// What storing some content cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContentStats {
    /// Raw bytes of chunks stored for the first time.
    pub new_bytes: u64,
    /// Their compressed size.
    pub stored_bytes: u64,
    pub new_chunks: u64,
    /// Raw bytes of chunks that were already stored.
    pub shared_bytes: u64,
}

impl ContentStats {
    pub fn add(&mut self, o: &ContentStats) {
        self.new_bytes += o.new_bytes;
        self.stored_bytes += o.stored_bytes;
        self.new_chunks += o.new_chunks;
        self.shared_bytes += o.shared_bytes;
    }
}

/// Cut points of `data`, as (offset, length).
pub fn cut_points(cfg: &ChunkerConfig, data: &[u8]) -> Vec<(usize, usize)> {
    if data.is_empty() {
        return Vec::new();
    }
    FastCDC::new(data, cfg.min as usize, cfg.avg as usize, cfg.max as usize)
        .map(|c| (c.offset, c.length))
        .collect()
}

fn put_chunk(store: &ObjectStore, data: &[u8], stats: &mut ContentStats) -> Result<ChunkRef> {
    let obj = VerifiedObject::from_raw(ObjKind::Chunk, data)?;
    let id = ChunkId::from_bytes(*obj.id());
    match store.put(&obj)? {
        Put::New { stored } => {
            stats.new_bytes += data.len() as u64;
            stats.stored_bytes += stored;
            stats.new_chunks += 1;
        }
        Put::Existing => stats.shared_bytes += data.len() as u64,
    }
    Ok(ChunkRef {
        id,
        len: data.len() as u32,
    })
}

/// Chunks and stores content held in memory.
pub fn store_bytes(
    store: &ObjectStore,
    cfg: &ChunkerConfig,
    data: &[u8],
) -> Result<(FileContent, ContentStats)> {
    let mut stats = ContentStats::default();
    let mut chunks = Vec::new();
    for (off, len) in cut_points(cfg, data) {
        chunks.push(put_chunk(store, &data[off..off + len], &mut stats)?);
    }
    let hash = match chunks.as_slice() {
        // The file hash and the chunk id are the same function of the same bytes.
        [one] => FileHash::from_bytes(*one.id.as_bytes()),
        _ => FileHash::of(data),
    };
    Ok((
        FileContent {
            size: data.len() as u64,
            hash,
            chunks,
        },
        stats,
    ))
}

/// Chunks and stores content read from a stream, holding at most one chunk in memory.
pub fn store_stream(
    store: &ObjectStore,
    cfg: &ChunkerConfig,
    reader: impl Read,
    what: &std::path::Path,
) -> Result<(FileContent, ContentStats)> {
    let mut stats = ContentStats::default();
    let mut chunks = Vec::new();
    let mut hasher = FileHash::hasher();
    let mut size = 0u64;
    for c in StreamCDC::new(reader, cfg.min as usize, cfg.avg as usize, cfg.max as usize) {
        let c = c.map_err(|e| Error::Io {
            action: "reading",
            path: what.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
        hasher.update(&c.data);
        size += c.data.len() as u64;
        chunks.push(put_chunk(store, &c.data, &mut stats)?);
    }
    Ok((
        FileContent {
            size,
            hash: FileHash::from_hasher(&hasher),
            chunks,
        },
        stats,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden cut points: the chunker decides what is stored, so its output must never change
    /// for a given config. If this fails, the repository format changed.
    #[test]
    fn golden_cut_points() {
        let cfg = ChunkerConfig::default();
        // Deterministic pseudo-random data (xorshift), 1 MiB.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let data: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let cuts = cut_points(&cfg, &data);
        let lens: Vec<usize> = cuts.iter().map(|c| c.1).collect();
        assert_eq!(lens.iter().sum::<usize>(), data.len());
        assert_eq!(lens, GOLDEN);
        // The streaming chunker cuts the same way.
        let streamed: Vec<usize> = StreamCDC::new(
            &data[..],
            cfg.min as usize,
            cfg.avg as usize,
            cfg.max as usize,
        )
        .map(|c| c.unwrap().length)
        .collect();
        assert_eq!(streamed, lens);
    }

    const GOLDEN: &[usize] = &[
        107373, 20054, 68325, 116126, 82734, 225270, 59137, 89965, 123366, 83427, 64556, 8243,
    ];
}
