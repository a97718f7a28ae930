//! Cherry-pick: apply one commit's changes (against its parent) to another channel's head, as a
//! three-way merge of trees. Where both sides changed the same entry differently, the path is a
//! conflict; any conflict refuses the whole pick and writes nothing.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::channel::{self, MoveKind};
use crate::error::{Error, Result};
use crate::id::{CommitId, TreeId};
use crate::object::{Commit, Entry, EntryKind, Meta, Tree};
use crate::objects::ObjectStore;
use crate::repo::Repo;
use crate::walk::{self, lossy};

#[derive(Clone, Debug, Serialize)]
pub struct PickResult {
    pub commit: String,
    pub channel: String,
    pub parent: String,
    pub picked: String,
}

/// Three-way choice for one value: take the side that changed; equal changes agree.
fn pick3<T: PartialEq + Clone>(base: &T, ours: &T, theirs: &T) -> Option<T> {
    if theirs == base || ours == theirs {
        Some(ours.clone())
    } else if ours == base {
        Some(theirs.clone())
    } else {
        None
    }
}

/// Merges directory listings; returns the merged tree id.
fn merge_trees(
    store: &ObjectStore,
    base: Option<TreeId>,
    ours: TreeId,
    theirs: TreeId,
    prefix: &[u8],
    conflicts: &mut Vec<String>,
) -> Result<TreeId> {
    if let Some(t) = pick3(&base, &Some(ours), &Some(theirs)) {
        return Ok(t.expect("ours and theirs are trees"));
    }
    let tb = match base {
        Some(b) => store.get_tree(&b)?,
        None => Tree::default(),
    };
    let (to, tt) = (store.get_tree(&ours)?, store.get_tree(&theirs)?);
    let names: BTreeSet<&Vec<u8>> = tb
        .entries
        .iter()
        .chain(&to.entries)
        .chain(&tt.entries)
        .map(|e| &e.name)
        .collect();
    let mut entries = Vec::new();
    for name in names {
        let (b, o, t) = (
            tb.get(name).cloned(),
            to.get(name).cloned(),
            tt.get(name).cloned(),
        );
        let mut path = prefix.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        if let Some(e) = pick3(&b, &o, &t) {
            entries.extend(e);
            continue;
        }
        match (&b, &o, &t) {
            (
                b,
                Some(Entry {
                    meta: mo,
                    kind: EntryKind::Dir(so),
                    ..
                }),
                Some(Entry {
                    meta: mt,
                    kind: EntryKind::Dir(st),
                    ..
                }),
            ) => {
                let (mb, sb) = match b {
                    Some(Entry {
                        meta,
                        kind: EntryKind::Dir(s),
                        ..
                    }) => (Some(meta.clone()), Some(*s)),
                    _ => (None, None),
                };
                let meta = match mb {
                    Some(mb) => pick3(&mb, mo, mt),
                    None => (mo == mt).then(|| mo.clone()),
                };
                let Some(meta) = meta else {
                    conflicts.push(format!(
                        "{} (directory metadata changed on both sides)",
                        lossy(&path)
                    ));
                    continue;
                };
                let sub = merge_trees(store, sb, *so, *st, &path, conflicts)?;
                entries.push(Entry {
                    name: name.clone(),
                    meta,
                    kind: EntryKind::Dir(sub),
                });
            }
            _ => conflicts.push(format!("{} ({})", lossy(&path), describe(&b, &o, &t))),
        }
    }
    Ok(store.put_tree(&Tree { entries })?.0)
}

fn describe(b: &Option<Entry>, o: &Option<Entry>, t: &Option<Entry>) -> &'static str {
    match (b, o, t) {
        (None, Some(_), Some(_)) => "added differently on both sides",
        (Some(_), None, Some(_)) => "removed on the channel, changed by the commit",
        (Some(_), Some(_), None) => "changed on the channel, removed by the commit",
        _ => "changed differently on both sides",
    }
}

/// Applies `commit`'s changes against its parent onto the head of `onto`, and commits the
/// result there.
pub fn cherry_pick(
    repo: &Repo,
    commit: CommitId,
    onto: &str,
    message: Option<&str>,
) -> Result<PickResult> {
    let store = &repo.objects;
    let head = channel::head(repo, onto)?.ok_or_else(|| Error::NoSuchChannel(onto.to_owned()))?;
    let picked = store.get_commit(&commit)?;
    let ours = store.get_commit(&head)?;
    let base = match picked.parent {
        Some(p) => Some(store.get_commit(&p)?),
        None => None,
    };
    let mut conflicts = Vec::new();
    let empty = Meta::default();
    let base_meta = base.as_ref().map_or(&empty, |b| &b.root_meta);
    let root_meta = pick3(base_meta, &ours.root_meta, &picked.root_meta).unwrap_or_else(|| {
        conflicts.push(". (root directory metadata changed on both sides)".into());
        ours.root_meta.clone()
    });
    let tree = merge_trees(
        store,
        base.as_ref().map(|b| b.tree),
        ours.tree,
        picked.tree,
        b"",
        &mut conflicts,
    )?;
    if !conflicts.is_empty() {
        // Nothing was flushed: the trees written so far stay in a temporary pack that the next
        // writer removes.
        return Err(Error::Conflicts(conflicts));
    }
    // The merged trees are read back below (hardlink groups, sizes): the store reads only
    // what is flushed.
    store.flush()?;
    let hardlinks = merged_hardlinks(store, tree, &[(&ours, ours.tree), (&picked, picked.tree)])?;
    let mut entries = 0u64;
    let mut bytes = 0u64;
    walk::walk(store, tree, &mut |_, e| {
        entries += 1;
        if let EntryKind::File(c) = &e.kind {
            bytes += c.size;
        }
        Ok(())
    })?;
    let message = match message {
        Some(m) => m.to_owned(),
        None => format!("cherry-pick {}: {}", commit.short(), picked.message),
    };
    let new = Commit {
        tree,
        root_meta,
        parent: Some(head),
        time: crate::now(),
        message,
        hardlinks,
        entries,
        bytes,
    };
    let (id, _) = store.put_commit(&new)?;
    store.flush()?;
    channel::move_to(repo, onto, id, MoveKind::CherryPick, &new.message)?;
    Ok(PickResult {
        commit: id.to_hex(),
        channel: onto.to_owned(),
        parent: head.to_hex(),
        picked: commit.to_hex(),
    })
}

/// Hardlink groups of the result: a group of either side is kept when every path in it still
/// holds exactly the entry it held on that side.
fn merged_hardlinks(
    store: &ObjectStore,
    result: TreeId,
    sides: &[(&Commit, TreeId)],
) -> Result<Vec<Vec<Vec<u8>>>> {
    let mut out: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut taken: BTreeSet<Vec<u8>> = BTreeSet::new();
    for (c, tree) in sides {
        'group: for g in &c.hardlinks {
            if g.iter().any(|p| taken.contains(p)) {
                continue;
            }
            for p in g {
                if walk::lookup(store, result, p)? != walk::lookup(store, *tree, p)? {
                    continue 'group;
                }
            }
            taken.extend(g.iter().cloned());
            out.push(g.clone());
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    use super::*;
    use crate::repo::{Access, Config as RepoConfig};

    /// A tree as a map (directory, name) -> content: directory 0 is the root, others are `dN`
    /// below it; every entry is a symlink whose target is its content.
    type Model = BTreeMap<(u8, u8), u8>;

    fn leaf(name: u8, v: u8) -> Entry {
        Entry {
            name: format!("f{name}").into_bytes(),
            meta: Meta::default(),
            kind: EntryKind::Symlink(vec![b'0' + v]),
        }
    }

    /// The directories below the root a model has (those with entries).
    fn dirs(m: &Model) -> BTreeSet<u8> {
        m.keys().map(|k| k.0).filter(|d| *d != 0).collect()
    }

    /// Stores the model with these directories below the root (empty ones too).
    fn store_tree(store: &ObjectStore, m: &Model, dirs: &BTreeSet<u8>) -> TreeId {
        let mut root: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
        let mut below: BTreeMap<u8, Vec<Entry>> = dirs.iter().map(|d| (*d, Vec::new())).collect();
        for (&(d, f), &v) in m {
            if d == 0 {
                root.insert(format!("f{f}").into_bytes(), leaf(f, v));
            } else {
                below
                    .get_mut(&d)
                    .expect("a directory of the model")
                    .push(leaf(f, v));
            }
        }
        for (d, entries) in below {
            let name = format!("d{d}").into_bytes();
            let (id, _) = store.put_tree(&Tree { entries }).unwrap();
            let kind = EntryKind::Dir(id);
            let meta = Meta::default();
            root.insert(name.clone(), Entry { name, meta, kind });
        }
        let entries = root.into_values().collect();
        store.put_tree(&Tree { entries }).unwrap().0
    }

    fn store_model(store: &ObjectStore, m: &Model) -> TreeId {
        store_tree(store, m, &dirs(m))
    }

    /// The three-way merge path by path, directories being entries of their own: the merged
    /// entries and directories, or None when some path conflicts (also a directory one side
    /// removed while the other changed something in it).
    fn merge_model(b: &Model, o: &Model, t: &Model) -> Option<(Model, BTreeSet<u8>)> {
        let keys: BTreeSet<_> = b.keys().chain(o.keys()).chain(t.keys()).collect();
        let mut out = Model::new();
        for k in keys {
            if let Some(v) = pick3(&b.get(k), &o.get(k), &t.get(k))? {
                out.insert(*k, *v);
            }
        }
        let (db, d_o, dt) = (dirs(b), dirs(o), dirs(t));
        // A directory one side removed while the other changed something in it is a conflict
        // as a whole (a modify/delete of the directory), even when the changes inside agree.
        let under = |m: &Model, d: u8| -> Model {
            m.iter()
                .filter(|(k, _)| k.0 == d)
                .map(|(k, v)| (*k, *v))
                .collect()
        };
        for d in &db {
            for (one, other) in [(&d_o, t), (&dt, o)] {
                if !one.contains(d) && dirs(other).contains(d) && under(other, *d) != under(b, *d) {
                    return None;
                }
            }
        }
        let mut kept = BTreeSet::new();
        for d in db.union(&d_o).chain(&dt) {
            if pick3(&db.contains(d), &d_o.contains(d), &dt.contains(d))? {
                kept.insert(*d);
            }
        }
        (dirs(&out).is_subset(&kept)).then_some((out, kept))
    }

    fn model() -> impl Strategy<Value = Model> {
        prop::collection::btree_map((0u8..3, 0u8..4), 0u8..4, 0..10)
    }

    /// A side: the base with a few entries changed, added or removed.
    fn edited(base: Model) -> impl Strategy<Value = Model> {
        prop::collection::vec(((0u8..3, 0u8..4), prop::option::of(0u8..4)), 0..4).prop_map(
            move |edits| {
                let mut m = base.clone();
                for (k, v) in edits {
                    match v {
                        Some(v) => m.insert(k, v),
                        None => m.remove(&k),
                    };
                }
                m
            },
        )
    }

    #[test]
    fn the_tree_merge_is_a_three_way_merge_path_by_path() {
        let d = tempfile::tempdir().unwrap();
        Repo::init(d.path(), RepoConfig::default()).unwrap();
        let repo = Repo::open(d.path(), Access::Write).unwrap();
        let store = &repo.objects;
        let merge = |b: Option<TreeId>, o: TreeId, t: TreeId| {
            let mut conflicts = Vec::new();
            let id = merge_trees(store, b, o, t, b"", &mut conflicts).unwrap();
            conflicts.is_empty().then_some(id)
        };
        let cases = model().prop_flat_map(|b| (Just(b.clone()), edited(b.clone()), edited(b)));
        let mut runner = TestRunner::new(Config {
            cases: 200,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&cases, |(b, o, t)| {
                let (bid, oid, tid) = (
                    store_model(store, &b),
                    store_model(store, &o),
                    store_model(store, &t),
                );
                let empty = store_model(store, &Model::new());
                // The merge reads only what is flushed.
                store.flush().unwrap();
                // Nothing changed on one side: the other side, whole.
                prop_assert_eq!(merge(Some(bid), oid, bid), Some(oid));
                prop_assert_eq!(merge(Some(bid), bid, tid), Some(tid));
                prop_assert_eq!(merge(Some(bid), oid, oid), Some(oid));
                // The sides are interchangeable.
                let merged = merge(Some(bid), oid, tid);
                prop_assert_eq!(merged, merge(Some(bid), tid, oid));
                // Without a base, as against an empty tree.
                prop_assert_eq!(merge(None, oid, tid), merge(Some(empty), oid, tid));
                // Path by path, as the flat merge does.
                let expected =
                    merge_model(&b, &o, &t).map(|(m, kept)| store_tree(store, &m, &kept));
                prop_assert_eq!(merged, expected);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn three_way_choice() {
        assert_eq!(pick3(&1, &1, &2), Some(2));
        assert_eq!(pick3(&1, &2, &1), Some(2));
        assert_eq!(pick3(&1, &3, &3), Some(3));
        assert_eq!(pick3(&1, &2, &3), None);
    }
}
