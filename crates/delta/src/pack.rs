//! The delta pack format (docs/FORMAT.md, "Delta packs"):
//!
//! ```text
//! magic     8 bytes  "STHDELTA"
//! version   1 byte   1
//! from     32 bytes  commit id the machine runs
//! to       32 bytes  commit id it goes to
//! head_len  4 bytes  little endian, at most 64 MiB
//! head      zstd frame of the postcard-encoded Header
//! segments  each `compressed_len` bytes, in the order of Header.segments
//! ```
//!
//! An item's target is its position in the canonical order of [`crate::order`]; its body is
//! `len` bytes of the segment's decompressed stream. A zstd segment is compressed against a
//! prefix: the bases of its `Prefixed` items, in item order, concatenated.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"STHDELTA";
pub const VERSION: u8 = 1;
/// Largest decompressed header.
pub const MAX_HEAD: usize = 64 << 20;
/// Largest zstd window a decoder accepts (64 MiB): the window covers prefix and segment.
pub const ZSTD_WINDOW_LOG: u32 = 26;
/// Memory an xz decoder may use (its dictionary is 16 MiB).
pub const XZ_MEMLIMIT: u64 = 48 << 20;
/// Largest file patched with bsdiff (it holds base, patch and result in memory).
pub const MAX_BSDIFF: u64 = 8 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Codec {
    /// zstd against the segment's prefix.
    Zstd,
    /// xz (LZMA2).
    Xz,
    /// xz with the x86 branch filter before LZMA2, for programs and libraries.
    XzX86,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// The n-th missing tree.
    Tree(u32),
    /// The n-th missing file content.
    File(u32),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    /// The body is the content.
    Plain,
    /// The body is the content; the old object at this path is part of the segment's prefix.
    Prefixed(Vec<u8>),
    /// The body is a bsdiff patch (in [`crate::bspatch`]'s layout) from the old object at this
    /// path.
    Bsdiff(Vec<u8>),
    /// The body is the uncompressed content of a gzip file, which zlib at `level` compresses
    /// back after `header` ([`crate::gz`]). With a base, the old gzip file at that path,
    /// uncompressed, is part of the segment's prefix.
    Gzip {
        base: Option<Vec<u8>>,
        level: u8,
        header: Vec<u8>,
    },
}

impl Method {
    /// The path of the old content this item is built from, if any.
    pub fn base(&self) -> Option<&[u8]> {
        match self {
            Method::Plain => None,
            Method::Prefixed(b) | Method::Bsdiff(b) => Some(b),
            Method::Gzip { base, .. } => base.as_deref(),
        }
    }

    /// Whether the old content goes into the segment's prefix (zstd segments only).
    pub fn uses_prefix(&self) -> bool {
        matches!(
            self,
            Method::Prefixed(_) | Method::Gzip { base: Some(_), .. }
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub target: Target,
    pub method: Method,
    /// Bytes of the body in the decompressed segment.
    pub len: u64,
}

/// What a segment holds, for reports: metadata (trees), patches, or new content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Metadata,
    Patches,
    New,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub kind: Kind,
    pub codec: Codec,
    pub items: Vec<Item>,
    pub compressed_len: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub segments: Vec<Segment>,
}

/// The fixed start of a pack: from, to, and the encoded header.
pub fn write_start(from: &[u8; 32], to: &[u8; 32], header: &Header) -> Result<Vec<u8>> {
    let raw = postcard::to_stdvec(header).map_err(|e| Error::bad(format!("encoding: {e}")))?;
    let head = zstd::bulk::compress(&raw, 19).map_err(Error::io("compressing the header"))?;
    let mut out = Vec::with_capacity(77 + head.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(from);
    out.extend_from_slice(to);
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    Ok(out)
}

/// Reads the start of a pack: (from, to, header, bytes read).
pub fn read_start(input: &mut impl std::io::Read) -> Result<([u8; 32], [u8; 32], Header, u64)> {
    let mut fixed = [0u8; 8 + 1 + 32 + 32 + 4];
    input
        .read_exact(&mut fixed)
        .map_err(|e| Error::bad(format!("too short for a delta pack ({e})")))?;
    if &fixed[..8] != MAGIC {
        return Err(Error::bad("not a delta pack (bad magic)"));
    }
    if fixed[8] != VERSION {
        return Err(Error::bad(format!(
            "format version {} (this semithin reads version {VERSION})",
            fixed[8]
        )));
    }
    let from: [u8; 32] = fixed[9..41].try_into().expect("32 bytes");
    let to: [u8; 32] = fixed[41..73].try_into().expect("32 bytes");
    let head_len = u32::from_le_bytes(fixed[73..77].try_into().expect("4 bytes")) as usize;
    if head_len > MAX_HEAD {
        return Err(Error::bad(format!(
            "header of {head_len} bytes, over the limit"
        )));
    }
    let mut head = vec![0u8; head_len];
    input
        .read_exact(&mut head)
        .map_err(|e| Error::bad(format!("cut inside the header ({e})")))?;
    let raw = zstd::bulk::decompress(&head, MAX_HEAD)
        .map_err(|e| Error::bad(format!("header does not decompress ({e})")))?;
    let header: Header =
        postcard::from_bytes(&raw).map_err(|e| Error::bad(format!("header: {e}")))?;
    Ok((from, to, header, (fixed.len() + head_len) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_round_trips_and_damage_is_named() {
        let h = Header {
            segments: vec![Segment {
                kind: Kind::Patches,
                codec: Codec::Zstd,
                items: vec![Item {
                    target: Target::File(3),
                    method: Method::Bsdiff(b"usr/lib/x".to_vec()),
                    len: 42,
                }],
                compressed_len: 7,
            }],
        };
        let bytes = write_start(&[1; 32], &[2; 32], &h).unwrap();
        let (f, t, back, n) = read_start(&mut bytes.as_slice()).unwrap();
        assert_eq!((f, t, &back, n), ([1; 32], [2; 32], &h, bytes.len() as u64));
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(
            read_start(&mut bad.as_slice())
                .unwrap_err()
                .to_string()
                .contains("bad magic")
        );
        let mut newer = bytes.clone();
        newer[8] = 9;
        assert!(
            read_start(&mut newer.as_slice())
                .unwrap_err()
                .to_string()
                .contains("format version 9")
        );
        let cut = &bytes[..bytes.len() - 1];
        assert!(
            read_start(&mut &cut[..])
                .unwrap_err()
                .to_string()
                .contains("cut inside the header")
        );
    }
}
