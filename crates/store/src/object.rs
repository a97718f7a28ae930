//! The stored object formats: trees and commits. Chunks are raw bytes and need no type.
//!
//! Every object starts with a one-byte format version and continues as postcard (pinned exactly in
//! Cargo.toml, since its bytes are hashed). See docs/FORMAT.md.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::{ChunkId, CommitId, FileHash, TreeId};

/// Version byte in front of every tree and commit object.
pub const OBJECT_VERSION: u8 = 1;

/// One extended attribute (name without NUL, raw value).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// Metadata every entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Sorted by name, names unique.
    pub xattrs: Vec<Xattr>,
}

/// A piece of a regular file's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
}

/// A regular file's content: its chunks in order, their total size, and the hash of the whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileContent {
    pub size: u64,
    pub hash: FileHash,
    pub chunks: Vec<ChunkRef>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceKind {
    Char,
    Block,
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    Dir(TreeId),
    File(FileContent),
    Symlink(Vec<u8>),
    Device {
        kind: DeviceKind,
        major: u32,
        minor: u32,
    },
    Fifo,
}

impl EntryKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            EntryKind::Dir(_) => "dir",
            EntryKind::File(_) => "file",
            EntryKind::Symlink(_) => "symlink",
            EntryKind::Device {
                kind: DeviceKind::Char,
                ..
            } => "char-device",
            EntryKind::Device {
                kind: DeviceKind::Block,
                ..
            } => "block-device",
            EntryKind::Fifo => "fifo",
        }
    }
}

/// One named entry of a directory. A directory's own metadata lives in its parent's entry, so an
/// unchanged listing keeps its tree id even when the directory's mtime changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: Vec<u8>,
    pub meta: Meta,
    pub kind: EntryKind,
}

/// A directory listing, entries sorted by name and unique.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Tree {
    pub entries: Vec<Entry>,
}

/// One version of a root filesystem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub tree: TreeId,
    /// Metadata of the root directory itself.
    pub root_meta: Meta,
    pub parent: Option<CommitId>,
    /// Seconds since the Unix epoch.
    pub time: i64,
    pub message: String,
    /// Groups of paths (relative, `/`-separated) that are one inode: checkout makes them hardlinks.
    /// Each group is sorted and has at least two paths; groups are sorted.
    pub hardlinks: Vec<Vec<Vec<u8>>>,
    /// Number of entries and of regular-file bytes in the tree, for display.
    pub entries: u64,
    pub bytes: u64,
}

/// The longest name a directory entry may have (Linux `NAME_MAX`): a longer one cannot be
/// created, so a commit refuses it.
pub const NAME_MAX: usize = 255;
/// The kernel's `PATH_MAX`, counting the terminating NUL: every entry's path as the running system
/// sees it (`/`, then its path in the tree) and every symlink target must fit, so a commit refuses
/// a longer one. A path in a tree may thus have at most `PATH_MAX - 2` bytes.
pub const PATH_MAX: usize = 4096;

/// A name a directory entry may carry: not empty, not `.` or `..`, no `/` or NUL.
pub fn check_name(name: &[u8]) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name == b"." || name == b".." {
        return Err("name is . or ..");
    }
    if name.contains(&b'/') {
        return Err("name contains /");
    }
    if name.contains(&0) {
        return Err("name contains NUL");
    }
    Ok(())
}

impl Tree {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes and checks the invariants: valid names, sorted, unique.
    pub fn decode(id: TreeId, bytes: &[u8]) -> Result<Self> {
        let tree: Tree = decode(bytes).map_err(|reason| Error::BadObject {
            kind: "tree",
            id: id.to_hex(),
            reason,
        })?;
        let bad = |reason: String| Error::BadObject {
            kind: "tree",
            id: id.to_hex(),
            reason,
        };
        for (i, e) in tree.entries.iter().enumerate() {
            check_name(&e.name)
                .map_err(|r| bad(format!("{r}: {}", String::from_utf8_lossy(&e.name))))?;
            if i > 0 && tree.entries[i - 1].name >= e.name {
                return Err(bad("entries not sorted or not unique".into()));
            }
            if let EntryKind::File(c) = &e.kind {
                let sum: u64 = c.chunks.iter().map(|c| u64::from(c.len)).sum();
                if sum != c.size {
                    return Err(bad(format!(
                        "file {} chunk lengths add up to {sum}, size says {}",
                        String::from_utf8_lossy(&e.name),
                        c.size
                    )));
                }
            }
        }
        Ok(tree)
    }

    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }
}

impl Commit {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(id: CommitId, bytes: &[u8]) -> Result<Self> {
        decode(bytes).map_err(|reason| Error::BadObject {
            kind: "commit",
            id: id.to_hex(),
            reason,
        })
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![OBJECT_VERSION];
    // Serialising plain data into a Vec cannot fail.
    out.extend(postcard::to_stdvec(v).expect("postcard encodes into a Vec"));
    out
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> std::result::Result<T, String> {
    match bytes.split_first() {
        None => Err("empty object".into()),
        Some((&OBJECT_VERSION, rest)) => {
            let (v, left) = postcard::take_from_bytes(rest).map_err(|e| e.to_string())?;
            if left.is_empty() {
                Ok(v)
            } else {
                Err(format!("{} trailing bytes", left.len()))
            }
        }
        Some((v, _)) => Err(format!(
            "object format version {v} is not supported (this semithin reads version {OBJECT_VERSION})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            meta: Meta::default(),
            kind: EntryKind::Fifo,
        }
    }

    #[test]
    fn tree_round_trip() {
        let t = Tree {
            entries: vec![entry("a"), entry("b")],
        };
        let b = t.encode();
        assert_eq!(Tree::decode(TreeId::of(&b), &b).unwrap(), t);
    }

    #[test]
    fn tree_rejects_bad_names_and_order() {
        for names in [
            vec!["b", "a"],
            vec!["a", "a"],
            vec![".."],
            vec!["x/y"],
            vec![""],
        ] {
            let t = Tree {
                entries: names.into_iter().map(entry).collect(),
            };
            let b = t.encode();
            assert!(Tree::decode(TreeId::of(&b), &b).is_err());
        }
    }

    #[test]
    fn newer_object_version_is_named() {
        let mut b = Tree::default().encode();
        b[0] = 9;
        let e = Tree::decode(TreeId::of(&b), &b).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
    }
}
