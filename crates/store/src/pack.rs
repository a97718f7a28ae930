//! Pack files: many compressed objects in one file, found through an index file beside it.
//!
//! `objects/packs/NAME.pack` holds records `kind u8 | id [32] | stored_len u32le | raw_len u32le |
//! zstd frame`; `NAME.idx` lists where each object is and ends with the BLAKE3 of everything before
//! it. A pack counts only once its index exists: both are written under temporary names, synced,
//! and renamed (pack first, index last), so an interrupted writer leaves nothing that is read.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;

pub const PACK_MAGIC: &[u8; 8] = b"STPACK01";
pub const IDX_MAGIC: &[u8; 8] = b"STIDX001";
/// Bytes before each object's zstd frame in a pack.
pub const RECORD_HEADER: u64 = 1 + 32 + 4 + 4;

/// The kind of a stored object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum ObjKind {
    Chunk = 1,
    Tree = 2,
    Commit = 3,
}

impl ObjKind {
    pub fn name(self) -> &'static str {
        match self {
            ObjKind::Chunk => "chunk",
            ObjKind::Tree => "tree",
            ObjKind::Commit => "commit",
        }
    }
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(ObjKind::Chunk),
            2 => Some(ObjKind::Tree),
            3 => Some(ObjKind::Commit),
            _ => None,
        }
    }
}

/// One index entry: where an object's frame is in its pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdxEntry {
    pub kind: u8,
    pub id: [u8; 32],
    /// Offset of the zstd frame (after the record header).
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
}

impl IdxEntry {
    pub fn kind(&self) -> ObjKind {
        // Checked when the index is read.
        ObjKind::from_u8(self.kind).expect("kind checked on load")
    }
}

/// Reads and checks an index file.
pub fn read_index(path: &Path) -> Result<Vec<IdxEntry>> {
    let bytes = std::fs::read(path).map_err(Error::io("reading pack index", path))?;
    let bad = |reason: &str| Error::BadPackIndex {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if bytes.len() < 8 + 32 || &bytes[..8] != IDX_MAGIC {
        return Err(bad("not a semithin pack index (bad magic or too short)"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err(bad("checksum mismatch"));
    }
    let entries: Vec<IdxEntry> =
        postcard::from_bytes(&body[8..]).map_err(|e| bad(&format!("cannot decode: {e}")))?;
    if entries.iter().any(|e| ObjKind::from_u8(e.kind).is_none()) {
        return Err(bad("unknown object kind"));
    }
    Ok(entries)
}

fn encode_index(entries: &[IdxEntry]) -> Vec<u8> {
    let mut out = IDX_MAGIC.to_vec();
    out.extend(postcard::to_stdvec(entries).expect("postcard encodes into a Vec"));
    let sum = *blake3::hash(&out).as_bytes();
    out.extend(sum);
    out
}

/// A pack being written.
pub struct PackWriter {
    tmp_path: PathBuf,
    out: BufWriter<File>,
    len: u64,
    entries: Vec<IdxEntry>,
    /// What `entries` holds, for lookups in constant time.
    held: HashSet<(u8, [u8; 32])>,
}

impl PackWriter {
    pub fn create(tmp_dir: &Path) -> Result<Self> {
        let tmp_path = fsutil::unique_tmp(tmp_dir, "pack");
        let file = File::create_new(&tmp_path).map_err(Error::io("creating", &tmp_path))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(PACK_MAGIC)
            .map_err(Error::io("writing", &tmp_path))?;
        Ok(Self {
            tmp_path,
            out,
            len: PACK_MAGIC.len() as u64,
            entries: Vec::new(),
            held: HashSet::new(),
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether this pack holds the object already.
    pub fn contains(&self, kind: ObjKind, id: &[u8; 32]) -> bool {
        self.held.contains(&(kind as u8, *id))
    }

    /// Appends one compressed object; returns its index entry.
    pub fn append(
        &mut self,
        kind: ObjKind,
        id: [u8; 32],
        frame: &[u8],
        raw_len: u32,
    ) -> Result<IdxEntry> {
        let stored_len = u32::try_from(frame.len()).map_err(|_| Error::Tool {
            tool: "pack",
            reason: "object larger than 4 GiB".into(),
        })?;
        let w = |r: std::io::Result<()>| r.map_err(Error::io("writing", &self.tmp_path));
        w(self.out.write_all(&[kind as u8]))?;
        w(self.out.write_all(&id))?;
        w(self.out.write_all(&stored_len.to_le_bytes()))?;
        w(self.out.write_all(&raw_len.to_le_bytes()))?;
        w(self.out.write_all(frame))?;
        let entry = IdxEntry {
            kind: kind as u8,
            id,
            offset: self.len + RECORD_HEADER,
            stored_len,
            raw_len,
        };
        self.len += RECORD_HEADER + u64::from(stored_len);
        self.entries.push(entry);
        self.held.insert((entry.kind, entry.id));
        Ok(entry)
    }

    /// Syncs the pack, writes its index and renames both into `packs_dir`. Returns the pack name.
    pub fn finish(self, packs_dir: &Path, tmp_dir: &Path) -> Result<(String, Vec<IdxEntry>)> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io("writing", &self.tmp_path)(e.into_error()))?;
        file.sync_all()
            .map_err(Error::io("syncing", &self.tmp_path))?;
        drop(file);
        let idx = encode_index(&self.entries);
        let name = hex::encode(&blake3::hash(&idx).as_bytes()[..16]);
        let idx_tmp = fsutil::unique_tmp(tmp_dir, "idx");
        fsutil::write_synced(&idx_tmp, &idx)?;
        let pack_path = packs_dir.join(format!("{name}.pack"));
        let idx_path = packs_dir.join(format!("{name}.idx"));
        std::fs::rename(&self.tmp_path, &pack_path)
            .map_err(Error::io("renaming into", &pack_path))?;
        std::fs::rename(&idx_tmp, &idx_path).map_err(Error::io("renaming into", &idx_path))?;
        fsutil::sync_dir(packs_dir)?;
        Ok((name, self.entries))
    }
}

/// An open pack for reading.
pub struct PackReader {
    pub name: String,
    pub path: PathBuf,
    file: File,
}

impl PackReader {
    pub fn open(path: PathBuf, name: String) -> Result<Self> {
        let file = File::open(&path).map_err(Error::io("opening pack", &path))?;
        Ok(Self { name, path, file })
    }

    /// Checks the pack's magic and that the record header in front of every indexed object
    /// repeats the index (kind, id, lengths). Returns what does not match.
    pub fn check_headers(&self, entries: &[IdxEntry]) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let mut magic = [0u8; 8];
        if self.file.read_exact_at(&mut magic, 0).is_err() || &magic != PACK_MAGIC {
            problems.push("not a semithin pack (bad magic)".to_owned());
            return Ok(problems);
        }
        let mut h = [0u8; RECORD_HEADER as usize];
        for e in entries {
            let Some(at) = e.offset.checked_sub(RECORD_HEADER) else {
                problems.push(format!(
                    "object {} has an offset inside the pack header",
                    hex::encode(e.id)
                ));
                continue;
            };
            if self.file.read_exact_at(&mut h, at).is_err() {
                problems.push(format!(
                    "object {} lies past the end of the pack",
                    hex::encode(e.id)
                ));
                continue;
            }
            let stored = u32::from_le_bytes(h[33..37].try_into().expect("4 bytes"));
            let raw = u32::from_le_bytes(h[37..41].try_into().expect("4 bytes"));
            if h[0] != e.kind || h[1..33] != e.id || stored != e.stored_len || raw != e.raw_len {
                problems.push(format!(
                    "the record header of object {} does not match the index",
                    hex::encode(e.id)
                ));
            }
        }
        Ok(problems)
    }

    /// Reads the stored (compressed) bytes of an object.
    pub fn read_frame(&self, e: &IdxEntry) -> Result<Vec<u8>> {
        // A damaged index may give any length: never allocate past the end of the file.
        let len = self
            .file
            .metadata()
            .map_err(Error::io("reading pack", &self.path))?
            .len();
        if e.offset
            .checked_add(u64::from(e.stored_len))
            .is_none_or(|end| end > len)
        {
            return Err(Error::Corrupt {
                kind: ObjKind::from_u8(e.kind).map_or("unknown", ObjKind::name),
                id: hex::encode(e.id),
                reason: format!(
                    "the index puts it at {}..+{} in pack {}, past its end ({len} bytes)",
                    e.offset, e.stored_len, self.name
                ),
            });
        }
        let mut buf = vec![0u8; e.stored_len as usize];
        self.file
            .read_exact_at(&mut buf, e.offset)
            .map_err(Error::io("reading pack", &self.path))?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_index_length_is_refused_before_anything_is_allocated() {
        let d = tempfile::tempdir().unwrap();
        let mut w = PackWriter::create(d.path()).unwrap();
        let frame = zstd::bulk::compress(b"x", 1).unwrap();
        w.append(ObjKind::Chunk, [1; 32], &frame, 1).unwrap();
        let packs = d.path().join("packs");
        std::fs::create_dir(&packs).unwrap();
        let (name, entries) = w.finish(&packs, d.path()).unwrap();
        let r = PackReader::open(packs.join(format!("{name}.pack")), name).unwrap();
        assert_eq!(r.read_frame(&entries[0]).unwrap(), frame);
        for (offset, stored_len) in [(entries[0].offset, u32::MAX), (u64::MAX - 1, 8)] {
            let bad = IdxEntry {
                offset,
                stored_len,
                ..entries[0]
            };
            let e = r.read_frame(&bad).unwrap_err().to_string();
            assert!(e.contains("past its end"), "{e}");
        }
    }

    #[test]
    fn a_writer_knows_what_it_holds_by_kind_and_id() {
        let d = tempfile::tempdir().unwrap();
        let mut w = PackWriter::create(d.path()).unwrap();
        let frame = zstd::bulk::compress(b"x", 1).unwrap();
        for i in 0u8..200 {
            w.append(ObjKind::Chunk, [i; 32], &frame, 1).unwrap();
        }
        assert!(w.contains(ObjKind::Chunk, &[7; 32]));
        assert!(!w.contains(ObjKind::Tree, &[7; 32]));
        assert!(!w.contains(ObjKind::Chunk, &[200; 32]));
        let packs = d.path().join("packs");
        std::fs::create_dir(&packs).unwrap();
        let (name, entries) = w.finish(&packs, d.path()).unwrap();
        assert_eq!(entries.len(), 200);
        assert_eq!(
            read_index(&packs.join(format!("{name}.idx"))).unwrap(),
            entries
        );
    }
}
