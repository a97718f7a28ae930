//! What changed between two commits: added, removed and modified paths, with the fields that
//! changed. Unchanged directories are skipped by their tree id without being read.

use std::collections::HashMap;

use serde::Serialize;

use crate::error::Result;
use crate::id::{CommitId, TreeId};
use crate::object::{Entry, EntryKind, Meta, Tree};
use crate::objects::ObjectStore;
use crate::walk::{lossy, walk};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    Added,
    Removed,
    Modified,
    TypeChanged,
}

impl ChangeKind {
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Removed => 'D',
            ChangeKind::Modified => 'M',
            ChangeKind::TypeChanged => 'T',
        }
    }
}

/// One changed path. `fields` names what changed for a modified entry: `content`, `target`,
/// `device`, `mode`, `uid`, `gid`, `mtime`, `xattrs`, `hardlinks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub path: String,
    pub change: ChangeKind,
    #[serde(rename = "type")]
    pub entry_type: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<&'static str>,
}

/// The metadata fields that differ.
pub fn meta_fields(a: &Meta, b: &Meta) -> Vec<&'static str> {
    let mut f = Vec::new();
    if a.mode != b.mode {
        f.push("mode");
    }
    if a.uid != b.uid {
        f.push("uid");
    }
    if a.gid != b.gid {
        f.push("gid");
    }
    if (a.mtime, a.mtime_nsec) != (b.mtime, b.mtime_nsec) {
        f.push("mtime");
    }
    if a.xattrs != b.xattrs {
        f.push("xattrs");
    }
    f
}

/// Differences between two commits, in path order within each directory.
pub fn diff_commits(store: &ObjectStore, a: CommitId, b: CommitId) -> Result<Vec<Change>> {
    let ca = store.get_commit(&a)?;
    let cb = store.get_commit(&b)?;
    let mut out = Vec::new();
    let root_fields = meta_fields(&ca.root_meta, &cb.root_meta);
    if !root_fields.is_empty() {
        out.push(Change {
            path: ".".into(),
            change: ChangeKind::Modified,
            entry_type: "dir",
            fields: root_fields,
        });
    }
    diff_trees(
        store,
        Some(ca.tree),
        Some(cb.tree),
        &mut Vec::new(),
        &mut out,
    )?;
    hardlink_changes(&ca.hardlinks, &cb.hardlinks, &mut out);
    Ok(out)
}

/// Paths present on both sides whose hardlink group changed (linked, unlinked, or linked to
/// other paths) get the field `hardlinks`.
fn hardlink_changes(a: &[Vec<Vec<u8>>], b: &[Vec<Vec<u8>>], out: &mut Vec<Change>) {
    let groups = |gs: &[Vec<Vec<u8>>]| -> HashMap<String, Vec<String>> {
        let mut m = HashMap::new();
        for g in gs {
            let names: Vec<String> = g.iter().map(|p| lossy(p)).collect();
            for n in &names {
                m.insert(n.clone(), names.clone());
            }
        }
        m
    };
    let (ga, gb) = (groups(a), groups(b));
    let mut paths: Vec<&String> = ga.keys().chain(gb.keys()).collect();
    paths.sort();
    paths.dedup();
    for p in paths {
        if ga.get(p) == gb.get(p) {
            continue;
        }
        match out.iter_mut().find(|c| &c.path == p) {
            Some(c) if c.change == ChangeKind::Modified => c.fields.push("hardlinks"),
            // Added, removed or retyped paths say enough.
            Some(_) => {}
            None => out.push(Change {
                path: p.clone(),
                change: ChangeKind::Modified,
                entry_type: "file",
                fields: vec!["hardlinks"],
            }),
        }
    }
}

fn load(store: &ObjectStore, t: Option<TreeId>) -> Result<Tree> {
    match t {
        Some(t) => store.get_tree(&t),
        None => Ok(Tree::default()),
    }
}

fn all_below(
    store: &ObjectStore,
    prefix: &[u8],
    tree: TreeId,
    change: ChangeKind,
    out: &mut Vec<Change>,
) -> Result<()> {
    walk(store, tree, &mut |p, e| {
        let mut path = prefix.to_vec();
        path.push(b'/');
        path.extend_from_slice(p);
        out.push(Change {
            path: lossy(&path),
            change,
            entry_type: e.kind.type_name(),
            fields: Vec::new(),
        });
        Ok(())
    })
}

fn one_side(
    store: &ObjectStore,
    path: &[u8],
    e: &Entry,
    change: ChangeKind,
    out: &mut Vec<Change>,
) -> Result<()> {
    out.push(Change {
        path: lossy(path),
        change,
        entry_type: e.kind.type_name(),
        fields: Vec::new(),
    });
    if let EntryKind::Dir(t) = e.kind {
        all_below(store, path, t, change, out)?;
    }
    Ok(())
}

fn diff_trees(
    store: &ObjectStore,
    a: Option<TreeId>,
    b: Option<TreeId>,
    prefix: &mut Vec<u8>,
    out: &mut Vec<Change>,
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let (ta, tb) = (load(store, a)?, load(store, b)?);
    let (mut i, mut j) = (0, 0);
    while i < ta.entries.len() || j < tb.entries.len() {
        let ea = ta.entries.get(i);
        let eb = tb.entries.get(j);
        let order = match (ea, eb) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        let len = prefix.len();
        let name = match order {
            std::cmp::Ordering::Less => &ea.expect("some").name,
            _ => &eb.expect("some").name,
        };
        if len > 0 {
            prefix.push(b'/');
        }
        prefix.extend_from_slice(name);
        match order {
            std::cmp::Ordering::Less => {
                one_side(store, prefix, ea.expect("some"), ChangeKind::Removed, out)?;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                one_side(store, prefix, eb.expect("some"), ChangeKind::Added, out)?;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (ea.expect("some"), eb.expect("some"));
                compare(store, prefix, x, y, out)?;
                i += 1;
                j += 1;
            }
        }
        prefix.truncate(len);
    }
    Ok(())
}

fn compare(
    store: &ObjectStore,
    path: &mut Vec<u8>,
    x: &Entry,
    y: &Entry,
    out: &mut Vec<Change>,
) -> Result<()> {
    if x == y {
        return Ok(());
    }
    let mut fields = Vec::new();
    match (&x.kind, &y.kind) {
        (EntryKind::Dir(tx), EntryKind::Dir(ty)) => {
            let f = meta_fields(&x.meta, &y.meta);
            if !f.is_empty() {
                out.push(Change {
                    path: lossy(path),
                    change: ChangeKind::Modified,
                    entry_type: "dir",
                    fields: f,
                });
            }
            return diff_trees(store, Some(*tx), Some(*ty), path, out);
        }
        (EntryKind::File(cx), EntryKind::File(cy)) => {
            if (cx.hash, cx.size) != (cy.hash, cy.size) {
                fields.push("content");
            }
        }
        (EntryKind::Symlink(a), EntryKind::Symlink(b)) => {
            if a != b {
                fields.push("target");
            }
        }
        (EntryKind::Device { .. }, EntryKind::Device { .. })
            if x.kind.type_name() == y.kind.type_name() =>
        {
            fields.push("device");
        }
        (EntryKind::Fifo, EntryKind::Fifo) => {}
        _ => {
            out.push(Change {
                path: lossy(path),
                change: ChangeKind::TypeChanged,
                entry_type: y.kind.type_name(),
                fields: Vec::new(),
            });
            if let EntryKind::Dir(t) = x.kind {
                all_below(store, path, t, ChangeKind::Removed, out)?;
            }
            if let EntryKind::Dir(t) = y.kind {
                all_below(store, path, t, ChangeKind::Added, out)?;
            }
            return Ok(());
        }
    }
    if fields == ["device"] && x.kind == y.kind {
        fields.clear();
    }
    fields.extend(meta_fields(&x.meta, &y.meta));
    if !fields.is_empty() {
        out.push(Change {
            path: lossy(path),
            change: ChangeKind::Modified,
            entry_type: y.kind.type_name(),
            fields,
        });
    }
    Ok(())
}
