//! Walking trees by path.

use crate::error::Result;
use crate::id::TreeId;
use crate::object::{Entry, EntryKind};
use crate::objects::ObjectStore;

/// Calls `f(path, entry)` for every entry below `tree`, parents before children, in name order
/// (depth first, with an explicit stack: no recursion on the depth of the tree).
pub fn walk(
    store: &ObjectStore,
    tree: TreeId,
    f: &mut dyn FnMut(&[u8], &Entry) -> Result<()>,
) -> Result<()> {
    let mut path = Vec::new();
    // Per directory being walked: its entries still to visit, and the length of its path.
    let mut stack = vec![(store.get_tree(&tree)?.entries.into_iter(), 0)];
    while let Some((entries, dir_len)) = stack.last_mut() {
        let dir_len = *dir_len;
        let Some(e) = entries.next() else {
            stack.pop();
            continue;
        };
        path.truncate(dir_len);
        if dir_len > 0 {
            path.push(b'/');
        }
        path.extend_from_slice(&e.name);
        f(&path, &e)?;
        if let EntryKind::Dir(sub) = e.kind {
            stack.push((store.get_tree(&sub)?.entries.into_iter(), path.len()));
        }
    }
    Ok(())
}

/// The entry at `path` (`/`-separated, relative) below `tree`.
pub fn lookup(store: &ObjectStore, tree: TreeId, path: &[u8]) -> Result<Option<Entry>> {
    let mut cur = tree;
    let mut parts = path
        .split(|b| *b == b'/')
        .filter(|p| !p.is_empty())
        .peekable();
    while let Some(name) = parts.next() {
        let t = store.get_tree(&cur)?;
        let Some(e) = t.get(name) else {
            return Ok(None);
        };
        if parts.peek().is_none() {
            return Ok(Some(e.clone()));
        }
        match e.kind {
            EntryKind::Dir(sub) => cur = sub,
            _ => return Ok(None),
        }
    }
    Ok(None)
}

pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::{Meta, Tree};
    use crate::repo::{Access, Config, Repo};

    #[test]
    fn parents_come_before_children_in_name_order() {
        let d = tempfile::tempdir().unwrap();
        Repo::init(d.path(), Config::default()).unwrap();
        let repo = Repo::open(d.path(), Access::Write).unwrap();
        let store = &repo.objects;
        let fifo = |name: &str| Entry {
            name: name.as_bytes().to_vec(),
            meta: Meta::default(),
            kind: EntryKind::Fifo,
        };
        let dir = |name: &str, entries: Vec<Entry>| Entry {
            name: name.as_bytes().to_vec(),
            meta: Meta::default(),
            kind: EntryKind::Dir(store.put_tree(&Tree { entries }).unwrap().0),
        };
        let y = dir("y", vec![fifo("z")]);
        let a = dir("a", vec![fifo("x"), y, dir("yy", vec![])]);
        let (root, _) = store
            .put_tree(&Tree {
                entries: vec![a, fifo("b")],
            })
            .unwrap();
        store.flush().unwrap();
        let mut seen = Vec::new();
        walk(store, root, &mut |p, _| {
            seen.push(String::from_utf8(p.to_vec()).unwrap());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ["a", "a/x", "a/y", "a/y/z", "a/yy", "b"]);
    }
}
