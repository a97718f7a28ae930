//! The canonical order of what a target release has and the old one lacks. The builder walks
//! the target's trees, the applier walks the trees it rebuilds from the pack; both get the same
//! sequence, so the pack names each item by its position in it.
//!
//! Trees: depth first from the root, entries in name order, each tree id once, not descending
//! into a tree the old release has (everything below it is there too).
//! Files: the entries of those trees in the same order, each content (file hash) once, leaving
//! out contents the old release has.

use std::collections::HashSet;

use semithin_store::object::{EntryKind, FileContent, Tree};
use semithin_store::{FileHash, TreeId};

use crate::listing::join;

/// The trees the old release lacks, one at a time: the caller gives each yielded tree's content
/// to [`MissingTrees::expand`] before asking for the next.
pub struct MissingTrees {
    old: HashSet<TreeId>,
    stack: Vec<(Vec<u8>, TreeId)>,
    seen: HashSet<TreeId>,
}

impl MissingTrees {
    /// `old`: every tree id of the old release.
    pub fn new(root: TreeId, old: HashSet<TreeId>) -> Self {
        Self {
            old,
            stack: vec![(Vec::new(), root)],
            seen: HashSet::new(),
        }
    }

    /// The next missing tree: (path, id).
    pub fn next_tree(&mut self) -> Option<(Vec<u8>, TreeId)> {
        while let Some((path, id)) = self.stack.pop() {
            if self.old.contains(&id) || !self.seen.insert(id) {
                continue;
            }
            return Some((path, id));
        }
        None
    }

    /// Queues the subdirectories of a tree just yielded.
    pub fn expand(&mut self, path: &[u8], tree: &Tree) {
        for e in tree.entries.iter().rev() {
            if let EntryKind::Dir(sub) = e.kind {
                self.stack.push((join(path, &e.name), sub));
            }
        }
    }
}

/// The files of `trees` (the missing trees, in canonical order) whose content the old release
/// lacks, each content once: (path, content).
pub fn missing_files(
    trees: &[(Vec<u8>, &Tree)],
    old: &HashSet<FileHash>,
) -> Vec<(Vec<u8>, FileContent)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (path, tree) in trees {
        for e in &tree.entries {
            if let EntryKind::File(c) = &e.kind
                && !old.contains(&c.hash)
                && seen.insert(c.hash)
            {
                out.push((join(path, &e.name), c.clone()));
            }
        }
    }
    out
}
