//! A release's trees and regular files, read once from a store, by path.

use std::collections::{HashMap, HashSet};

use semithin_store::object::{EntryKind, FileContent, Tree};
use semithin_store::objects::ObjectStore;
use semithin_store::{CommitId, FileHash, TreeId};

use crate::error::Result;

/// Joins a directory path (`""` for the root) and an entry name with `/`.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    if !dir.is_empty() {
        p.extend_from_slice(dir);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub root: Option<TreeId>,
    /// Every tree, decoded.
    pub trees: HashMap<TreeId, Tree>,
    /// Directory path (`""` is the root) → its tree.
    pub dirs: HashMap<Vec<u8>, TreeId>,
    /// Regular file path → its content.
    pub files: HashMap<Vec<u8>, FileContent>,
}

/// The `from` of a full-release pack (docs/FORMAT.md, "Delta packs"): no release at all, so
/// the pack carries every tree and file of its `to` (what a first install needs, in one file
/// that can be shared as a torrent).
pub const NOTHING: CommitId = CommitId::from_bytes([0; 32]);

impl Listing {
    /// Reads every tree of `commit` from `store`; [`NOTHING`] is the empty listing.
    pub fn read(store: &ObjectStore, commit: CommitId) -> Result<Self> {
        if commit == NOTHING {
            return Ok(Self::default());
        }
        let c = store.get_commit(&commit)?;
        let mut l = Listing {
            root: Some(c.tree),
            ..Default::default()
        };
        let mut stack = vec![(Vec::new(), c.tree)];
        while let Some((path, id)) = stack.pop() {
            l.dirs.entry(path.clone()).or_insert(id);
            if let std::collections::hash_map::Entry::Vacant(v) = l.trees.entry(id) {
                v.insert(store.get_tree(&id)?);
            }
            let t = &l.trees[&id];
            for e in &t.entries {
                let p = join(&path, &e.name);
                match &e.kind {
                    EntryKind::Dir(sub) => stack.push((p, *sub)),
                    EntryKind::File(content) => {
                        l.files.insert(p, content.clone());
                    }
                    _ => {}
                }
            }
        }
        Ok(l)
    }

    pub fn tree_ids(&self) -> HashSet<TreeId> {
        self.trees.keys().copied().collect()
    }

    pub fn file_hashes(&self) -> HashSet<FileHash> {
        self.files.values().map(|c| c.hash).collect()
    }
}
