//! A directory tree being built in memory (by an import) before it is written as tree objects,
//! bottom-up.
//!
//! Nothing here recurses on the depth of the tree (placing, writing, dropping), and `place`
//! refuses names and paths the kernel could not create, so a hostile source cannot overflow the
//! stack and every path committed can be checked out.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};

use crate::error::Result;
use crate::id::TreeId;
use crate::object::{Entry, EntryKind, FileContent, Meta, NAME_MAX, PATH_MAX, Tree};
use crate::objects::{ObjectStore, Put};

/// One node of a tree under construction.
#[derive(Clone, Debug)]
pub enum Node {
    Dir {
        meta: Meta,
        children: Children,
    },
    /// A regular file whose content is number `n` of the import's content list.
    PendingFile {
        meta: Meta,
        content: usize,
    },
    /// A finished entry (any kind, a directory as a stored tree).
    Done {
        meta: Meta,
        kind: EntryKind,
    },
}

/// The entries of a directory node, by name. Dropped without recursion: a deep tree is taken
/// apart level by level.
#[derive(Clone, Debug, Default)]
pub struct Children(BTreeMap<Vec<u8>, Node>);

impl Children {
    /// The entries, in name order, leaving this empty.
    pub fn take(&mut self) -> BTreeMap<Vec<u8>, Node> {
        std::mem::take(&mut self.0)
    }
}

impl Deref for Children {
    type Target = BTreeMap<Vec<u8>, Node>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Children {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        let mut maps = vec![self.take()];
        while let Some(map) = maps.pop() {
            for (_, node) in map {
                if let Node::Dir { mut children, .. } = node {
                    maps.push(children.take());
                }
            }
        }
    }
}

impl Node {
    pub fn empty_dir(meta: Meta) -> Node {
        Node::Dir {
            meta,
            children: Children::default(),
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
    /// A name of the path (given) is longer than `NAME_MAX`; its length.
    NameTooLong(String, usize),
    /// The path is longer than a path may be; its length.
    PathTooLong(usize),
    /// A symlink's target is longer than `PATH_MAX` allows; its length.
    TargetTooLong(usize),
}

impl std::fmt::Display for PlaceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlaceError::ThroughSymlink(p) => write!(f, "goes through the symlink {p:?}"),
            PlaceError::NotADir(p) => write!(f, "{p:?} is not a directory"),
            PlaceError::NameTooLong(name, len) => write!(
                f,
                "the name {name:?} is {len} bytes long, over the {NAME_MAX} a file name may have"
            ),
            PlaceError::PathTooLong(len) => write!(
                f,
                "the path is {len} bytes long, over the {} a path may have (PATH_MAX)",
                PATH_MAX - 2
            ),
            PlaceError::TargetTooLong(len) => write!(
                f,
                "the symlink target is {len} bytes long, over the {} a target may have (PATH_MAX)",
                PATH_MAX - 1
            ),
        }
    }
}

/// Checks that the kernel can create `path` (components) with `node` at it: every name within
/// `NAME_MAX`, the path (with its leading `/` and the terminating NUL) and a symlink's target
/// within `PATH_MAX`.
pub fn check_creatable(path: &[Vec<u8>], node: &Node) -> std::result::Result<(), PlaceError> {
    check_path(path)?;
    if let Node::Done {
        kind: EntryKind::Symlink(target),
        ..
    } = node
        && target.len() >= PATH_MAX
    {
        return Err(PlaceError::TargetTooLong(target.len()));
    }
    Ok(())
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
/// Checks that every name of `path` (components) fits `NAME_MAX` and the path `PATH_MAX`.
pub fn check_path(path: &[Vec<u8>]) -> std::result::Result<(), PlaceError> {
    if let Some(name) = path.iter().find(|c| c.len() > NAME_MAX) {
        return Err(PlaceError::NameTooLong(
            String::from_utf8_lossy(name).into_owned(),
            name.len(),
        ));
    }
    let len = path
        .iter()
        .map(|c| c.len() + 1)
        .sum::<usize>()
        .saturating_sub(1);
    if len > PATH_MAX - 2 {
        return Err(PlaceError::PathTooLong(len));
    }
    Ok(())
}

/// Refuses what [`check_creatable`] refuses.
pub fn place(root: &mut Node, path: &[Vec<u8>], node: Node) -> std::result::Result<(), PlaceError> {
    check_creatable(path, &node)?;
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

/// A directory being written: its entries so far, the children still to write, and (below the
/// root) its own name and metadata for the entry its parent gets.
struct Level {
    entries: Vec<Entry>,
    rest: std::collections::btree_map::IntoIter<Vec<u8>, Node>,
    entry: Option<(Vec<u8>, Meta)>,
}

/// Writes a directory node (and everything below it) as tree objects, each directory once all
/// of its subdirectories are written, with an explicit stack; returns the root tree id.
pub fn write(
    store: &ObjectStore,
    node: Node,
    contents: &[FileContent],
    stats: &mut WriteStats,
) -> Result<TreeId> {
    let Node::Dir { mut children, .. } = node else {
        panic!("write takes a directory node")
    };
    let mut stack = vec![Level {
        entries: Vec::with_capacity(children.len()),
        rest: children.take().into_iter(),
        entry: None,
    }];
    while let Some(top) = stack.last_mut() {
        if let Some((name, child)) = top.rest.next() {
            stats.entries += 1;
            let (meta, kind) = match child {
                Node::Dir { meta, mut children } => {
                    stack.push(Level {
                        entries: Vec::with_capacity(children.len()),
                        rest: children.take().into_iter(),
                        entry: Some((name, meta)),
                    });
                    continue;
                }
                Node::PendingFile { meta, content } => {
                    (meta, EntryKind::File(contents[content].clone()))
                }
                Node::Done { meta, kind } => (meta, kind),
            };
            if let EntryKind::File(c) = &kind {
                stats.bytes += c.size;
            }
            top.entries.push(Entry { name, meta, kind });
            continue;
        }
        let done = stack.pop().expect("the loop holds a level");
        let (id, put) = store.put_tree(&Tree {
            entries: done.entries,
        })?;
        if let Put::New { stored } = put {
            stats.new_trees += 1;
            stats.stored_bytes += stored;
        }
        match (done.entry, stack.last_mut()) {
            (Some((name, meta)), Some(parent)) => parent.entries.push(Entry {
                name,
                meta,
                kind: EntryKind::Dir(id),
            }),
            _ => return Ok(id),
        }
    }
    unreachable!("the root level returns")
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

    fn fifo() -> Node {
        Node::Done {
            meta: Meta::default(),
            kind: EntryKind::Fifo,
        }
    }

    #[test]
    fn names_paths_and_targets_the_kernel_cannot_create_are_refused() {
        let mut root = Node::empty_dir(Meta::default());
        let name = |n: usize| vec![b'n'; n];
        place(&mut root, &[name(255)], fifo()).unwrap();
        assert_eq!(
            place(
                &mut root,
                &[b"d".to_vec(), name(256), b"f".to_vec()],
                fifo()
            ),
            Err(PlaceError::NameTooLong("n".repeat(256), 256))
        );
        // 4094 bytes: `/` before and NUL after make the kernel's 4096.
        let mut path: Vec<Vec<u8>> = vec![name(200); 20];
        path.push(name(4094 - 20 * 201));
        place(&mut root, &path, fifo()).unwrap();
        path.last_mut().unwrap().push(b'x');
        assert_eq!(
            place(&mut root, &path, fifo()),
            Err(PlaceError::PathTooLong(4095))
        );
        let link = |n: usize| Node::Done {
            meta: Meta::default(),
            kind: EntryKind::Symlink(vec![b't'; n]),
        };
        place(&mut root, &p("l"), link(4095)).unwrap();
        assert_eq!(
            place(&mut root, &p("l"), link(4096)),
            Err(PlaceError::TargetTooLong(4096))
        );
        let e = PlaceError::PathTooLong(4095).to_string();
        assert!(e.contains("4095 bytes long, over the 4094"), "{e}");
    }

    /// As deep as a path may go, in a test thread's small stack: written and dropped without
    /// recursion, and read back level by level.
    #[test]
    fn the_deepest_tree_is_written_and_dropped_without_recursion() {
        use crate::repo::{Access, Config, Repo};
        let d = tempfile::tempdir().unwrap();
        Repo::init(d.path(), Config::default()).unwrap();
        let repo = Repo::open(d.path(), Access::Write).unwrap();
        let deep = |levels: usize| -> Node {
            let mut root = Node::empty_dir(Meta::default());
            place(&mut root, &vec![b"a".to_vec(); levels], fifo()).unwrap();
            root
        };
        let levels = (PATH_MAX - 2).div_ceil(2);
        let err = place(
            &mut Node::empty_dir(Meta::default()),
            &vec![b"a".to_vec(); levels + 1],
            fifo(),
        );
        assert_eq!(err, Err(PlaceError::PathTooLong(PATH_MAX - 1)));
        let run = move || {
            drop(deep(levels));
            let mut stats = WriteStats::default();
            let id = write(&repo.objects, deep(levels), &[], &mut stats).unwrap();
            assert_eq!(stats.entries, levels as u64);
            assert_eq!(stats.new_trees, levels as u64);
            repo.objects.flush().unwrap();
            let path = vec!["a"; levels].join("/");
            let e = crate::walk::lookup(&repo.objects, id, path.as_bytes())
                .unwrap()
                .unwrap();
            assert_eq!(e.kind, EntryKind::Fifo);
            let mut seen = Vec::new();
            crate::walk::walk(&repo.objects, id, &mut |p, _| {
                seen.push(p.len());
                Ok(())
            })
            .unwrap();
            let want: Vec<usize> = (1..=levels).map(|n| 2 * n - 1).collect();
            assert_eq!(seen, want);
        };
        // Half of a test thread's stack, so recursion would show here first.
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(run)
            .unwrap()
            .join()
            .unwrap();
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
