//! A directory tree being built in memory (by an import or a merge) before it is written as
//! tree objects, bottom-up.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::id::TreeId;
use crate::object::{Entry, EntryKind, FileContent, Meta, Tree};
use crate::objects::{ObjectStore, Put};

/// One node of a tree under construction.
#[derive(Clone, Debug)]
pub enum Node {
    Dir {
        meta: Meta,
        children: BTreeMap<Vec<u8>, Node>,
    },
    /// A regular file whose content is number `n` of the import's content list.
    PendingFile { meta: Meta, content: usize },
    /// A finished entry (any kind, a directory as a stored tree).
    Done { meta: Meta, kind: EntryKind },
}

impl Node {
    pub fn empty_dir(meta: Meta) -> Node {
        Node::Dir {
            meta,
            children: BTreeMap::new(),
        }
    }

    pub fn meta(&self) -> &Meta {
        match self {
            Node::Dir { meta, .. } | Node::PendingFile { meta, .. } | Node::Done { meta, .. } => {
                meta
            }
        }
    }
}

/// Why a path cannot be placed in the tree.
#[derive(Debug, PartialEq, Eq)]
pub enum PlaceError {
    /// A parent of the path is a symlink.
    ThroughSymlink(String),
    /// A parent of the path is something else that is not a directory.
    NotADir(String),
}

/// Default metadata for a directory an archive implies without listing it.
pub fn implied_dir_meta() -> Meta {
    Meta {
        mode: 0o755,
        ..Meta::default()
    }
}

/// Places `node` at `path` (components) below `root`, creating implied parent directories.
/// An existing directory keeps its children when a directory entry arrives for it again.
pub fn place(root: &mut Node, path: &[Vec<u8>], node: Node) -> std::result::Result<(), PlaceError> {
    let (last, parents) = path.split_last().expect("place needs a non-empty path");
    let mut cur = root;
    let mut walked: Vec<&[u8]> = Vec::new();
    for comp in parents {
        walked.push(comp);
        let Node::Dir { children, .. } = cur else {
            unreachable!("checked below before descending")
        };
        let child = children
            .entry(comp.clone())
            .or_insert_with(|| Node::empty_dir(implied_dir_meta()));
        match child {
            Node::Dir { .. } => {}
            Node::Done {
                kind: EntryKind::Symlink(_),
                ..
            } => return Err(PlaceError::ThroughSymlink(join(&walked))),
            _ => return Err(PlaceError::NotADir(join(&walked))),
        }
        cur = child;
    }
    let Node::Dir { children, .. } = cur else {
        unreachable!("loop leaves cur on a directory")
    };
    match (children.get_mut(last), node) {
        (
            Some(Node::Dir { meta, .. }),
            Node::Dir {
                meta: new_meta,
                children: new,
            },
        ) if new.is_empty() => {
            *meta = new_meta;
        }
        (_, node) => {
            children.insert(last.clone(), node);
        }
    }
    Ok(())
}

/// Looks up the node at `path`.
pub fn lookup<'a>(root: &'a Node, path: &[Vec<u8>]) -> Option<&'a Node> {
    let mut cur = root;
    for comp in path {
        match cur {
            Node::Dir { children, .. } => cur = children.get(comp)?,
            _ => return None,
        }
    }
    Some(cur)
}

/// The metadata of the node at `path`, to change it.
pub fn meta_mut<'a>(root: &'a mut Node, path: &[Vec<u8>]) -> Option<&'a mut Meta> {
    let mut cur = root;
    for comp in path {
        match cur {
            Node::Dir { children, .. } => cur = children.get_mut(comp)?,
            _ => return None,
        }
    }
    Some(match cur {
        Node::Dir { meta, .. } | Node::PendingFile { meta, .. } | Node::Done { meta, .. } => meta,
    })
}

pub fn join(parts: &[&[u8]]) -> String {
    String::from_utf8_lossy(&parts.join(&b'/')).into_owned()
}

/// What writing a tree cost.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteStats {
    pub new_trees: u64,
    pub stored_bytes: u64,
    pub entries: u64,
    pub bytes: u64,
}

/// Writes a directory node (and everything below it) as tree objects; returns the root tree id.
pub fn write(
    store: &ObjectStore,
    node: Node,
    contents: &[FileContent],
    stats: &mut WriteStats,
) -> Result<TreeId> {
    let Node::Dir { children, .. } = node else {
        panic!("write takes a directory node")
    };
    let mut entries = Vec::with_capacity(children.len());
    for (name, child) in children {
        stats.entries += 1;
        let (meta, kind) = match child {
            Node::Dir { ref meta, .. } => {
                let meta = meta.clone();
                (meta, EntryKind::Dir(write(store, child, contents, stats)?))
            }
            Node::PendingFile { meta, content } => {
                (meta, EntryKind::File(contents[content].clone()))
            }
            Node::Done { meta, kind } => (meta, kind),
        };
        if let EntryKind::File(c) = &kind {
            stats.bytes += c.size;
        }
        entries.push(Entry { name, meta, kind });
    }
    let (id, put) = store.put_tree(&Tree { entries })?;
    if let Put::New { stored } = put {
        stats.new_trees += 1;
        stats.stored_bytes += stored;
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<Vec<u8>> {
        s.split('/').map(|c| c.as_bytes().to_vec()).collect()
    }

    #[test]
    fn place_refuses_paths_through_symlinks() {
        let mut root = Node::empty_dir(Meta::default());
        let link = Node::Done {
            meta: Meta::default(),
            kind: EntryKind::Symlink(b"/etc".to_vec()),
        };
        place(&mut root, &p("a/link"), link).unwrap();
        let fifo = Node::Done {
            meta: Meta::default(),
            kind: EntryKind::Fifo,
        };
        assert_eq!(
            place(&mut root, &p("a/link/passwd"), fifo.clone()),
            Err(PlaceError::ThroughSymlink("a/link".into()))
        );
        place(&mut root, &p("a/f"), fifo.clone()).unwrap();
        assert_eq!(
            place(&mut root, &p("a/f/x"), fifo),
            Err(PlaceError::NotADir("a/f".into()))
        );
    }

    #[test]
    fn a_later_dir_entry_keeps_children_and_sets_meta() {
        let mut root = Node::empty_dir(Meta::default());
        let fifo = Node::Done {
            meta: Meta::default(),
            kind: EntryKind::Fifo,
        };
        place(&mut root, &p("d/x"), fifo).unwrap();
        let meta = Meta {
            mode: 0o700,
            ..Meta::default()
        };
        place(&mut root, &p("d"), Node::empty_dir(meta.clone())).unwrap();
        let d = lookup(&root, &p("d")).unwrap();
        assert_eq!(d.meta(), &meta);
        assert!(lookup(&root, &p("d/x")).is_some());
    }
}
