//! Walking trees by path.

use crate::error::Result;
use crate::id::TreeId;
use crate::object::{Entry, EntryKind};
use crate::objects::ObjectStore;

/// Calls `f(path, entry)` for every entry below `tree`, parents before children.
pub fn walk(
    store: &ObjectStore,
    tree: TreeId,
    f: &mut dyn FnMut(&[u8], &Entry) -> Result<()>,
) -> Result<()> {
    fn go(
        store: &ObjectStore,
        tree: TreeId,
        prefix: &mut Vec<u8>,
        f: &mut dyn FnMut(&[u8], &Entry) -> Result<()>,
    ) -> Result<()> {
        let t = store.get_tree(&tree)?;
        for e in &t.entries {
            let len = prefix.len();
            if len > 0 {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(&e.name);
            f(prefix, e)?;
            if let EntryKind::Dir(sub) = e.kind {
                go(store, sub, prefix, f)?;
            }
            prefix.truncate(len);
        }
        Ok(())
    }
    go(store, tree, &mut Vec::new(), f)
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
