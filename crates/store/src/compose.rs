//! Layers composed as overlayfs composes them, over stored trees.
//!
//! A layer is a tree as an overlayfs upper directory holds it: a character device 0/0 is a
//! whiteout (the name is removed from what is below), a directory with the xattr
//! `trusted.overlay.opaque` (or `user.overlay.opaque`) set to `y` hides what is below it, any
//! other entry replaces what is below, and a directory present on both sides is merged.
//!
//! [`apply`] lays one commit's tree over another's. In [`Mode::Image`] the result is a root
//! filesystem: whiteouts and opaque marks are consumed and appear nowhere in it. In
//! [`Mode::Layer`] two layers are squashed into one: whiteouts and opaque marks are kept, so the
//! result still hides from whatever is below it what either layer hid. [`upper`] is the inverse:
//! the layer that turns one tree into another.
//!
//! Both are pure functions of the trees (what they write is content-addressed, so the same
//! layers always give the same tree id); [`commit`] records a result on a channel.

use std::collections::{BTreeMap, BTreeSet};

use crate::channel::{self, MoveKind};
use crate::error::Result;
use crate::id::{CommitId, TreeId};
use crate::object::{Commit, DeviceKind, Entry, EntryKind, Meta, Tree};
use crate::objects::ObjectStore;
use crate::repo::Repo;
use crate::walk;

/// The xattrs that mark a directory opaque (the kernel's own, and the one of unprivileged
/// overlays with `userxattr`).
pub const OPAQUE_XATTRS: [&[u8]; 2] = [b"trusted.overlay.opaque", b"user.overlay.opaque"];

/// What [`apply`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A root filesystem: whiteouts remove, opaque directories hide, neither is kept.
    Image,
    /// One layer from two: whiteouts and opaque marks are kept for what lies below.
    Layer,
}

/// The result of laying a tree over another, ready to be committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Composed {
    pub tree: TreeId,
    /// The lower side's root directory metadata (a layer's own root is not part of what it
    /// changes: it is the directory the layer happened to be made in).
    pub root_meta: Meta,
    pub hardlinks: Vec<Vec<Vec<u8>>>,
    pub entries: u64,
    pub bytes: u64,
    /// Paths where the upper side replaced or hid something the lower side held differently
    /// (not counting directories merged), in order.
    pub shadowed: Vec<Vec<u8>>,
}

/// Whether an entry is an overlayfs whiteout.
pub fn is_whiteout(e: &Entry) -> bool {
    matches!(
        e.kind,
        EntryKind::Device {
            kind: DeviceKind::Char,
            major: 0,
            minor: 0
        }
    )
}

/// Whether a directory's metadata marks it opaque.
pub fn is_opaque(meta: &Meta) -> bool {
    meta.xattrs
        .iter()
        .any(|x| OPAQUE_XATTRS.contains(&x.name.as_slice()) && x.value == b"y")
}

fn without_opaque(meta: &Meta) -> Meta {
    let mut m = meta.clone();
    m.xattrs
        .retain(|x| !OPAQUE_XATTRS.contains(&x.name.as_slice()));
    m
}

/// A whiteout entry for `name`.
pub fn whiteout(name: Vec<u8>) -> Entry {
    Entry {
        name,
        meta: Meta::default(),
        kind: EntryKind::Device {
            kind: DeviceKind::Char,
            major: 0,
            minor: 0,
        },
    }
}

/// Lays `upper`'s tree over `lower`'s. Nothing is flushed: the caller commits (or drops) it.
pub fn apply(store: &ObjectStore, lower: &Commit, upper: &Commit, mode: Mode) -> Result<Composed> {
    let mut shadowed = Vec::new();
    let tree = merge(
        store,
        Some(lower.tree),
        upper.tree,
        mode,
        b"",
        &mut shadowed,
    )?;
    finish(
        store,
        tree,
        lower.root_meta.clone(),
        &[upper, lower],
        shadowed,
    )
}

/// Counts the result and keeps the hardlink groups of `sides` (in that order of precedence)
/// whose every path still holds the entry it held on that side.
fn finish(
    store: &ObjectStore,
    tree: TreeId,
    root_meta: Meta,
    sides: &[&Commit],
    shadowed: Vec<Vec<u8>>,
) -> Result<Composed> {
    // What was written is read back below: the store reads only what is flushed.
    store.flush()?;
    let mut entries = 0u64;
    let mut bytes = 0u64;
    walk::walk(store, tree, &mut |_, e| {
        entries += 1;
        if let EntryKind::File(c) = &e.kind {
            bytes += c.size;
        }
        Ok(())
    })?;
    let mut hardlinks: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut taken: BTreeSet<Vec<u8>> = BTreeSet::new();
    for side in sides {
        'group: for g in &side.hardlinks {
            if g.iter().any(|p| taken.contains(p)) {
                continue;
            }
            for p in g {
                if walk::lookup(store, tree, p)? != walk::lookup(store, side.tree, p)? {
                    continue 'group;
                }
            }
            taken.extend(g.iter().cloned());
            hardlinks.push(g.clone());
        }
    }
    hardlinks.sort();
    Ok(Composed {
        tree,
        root_meta,
        hardlinks,
        entries,
        bytes,
        shadowed,
    })
}

fn child(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = prefix.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Merges the directory `upper` over `lower` (absent: nothing below). Recursion is bounded by
/// the depth a stored path can have (`PATH_MAX`).
fn merge(
    store: &ObjectStore,
    lower: Option<TreeId>,
    upper: TreeId,
    mode: Mode,
    prefix: &[u8],
    shadowed: &mut Vec<Vec<u8>>,
) -> Result<TreeId> {
    if lower.is_none() && mode == Mode::Layer {
        return Ok(upper);
    }
    let mut out: BTreeMap<Vec<u8>, Entry> = match lower {
        Some(l) => store
            .get_tree(&l)?
            .entries
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect(),
        None => BTreeMap::new(),
    };
    for e in store.get_tree(&upper)?.entries {
        let below = out.remove(&e.name);
        let path = child(prefix, &e.name);
        if is_whiteout(&e) {
            if below.as_ref().is_some_and(|b| !is_whiteout(b)) {
                shadowed.push(path);
            }
            if mode == Mode::Layer {
                out.insert(e.name.clone(), e);
            }
            continue;
        }
        let below = below.filter(|b| !is_whiteout(b) || mode == Mode::Layer);
        let entry = match (&e.kind, below) {
            (EntryKind::Dir(sub), below) => {
                let opaque = is_opaque(&e.meta);
                let lower_sub = match &below {
                    Some(Entry {
                        kind: EntryKind::Dir(l),
                        ..
                    }) if !opaque => Some(*l),
                    Some(b) if !is_whiteout(b) => {
                        shadowed.push(path.clone());
                        None
                    }
                    _ => None,
                };
                let sub = merge(store, lower_sub, *sub, mode, &path, shadowed)?;
                // In a layer, a directory over anything but a plain directory (a whiteout, a
                // file, an opaque directory) hides what is further below: overlayfs says so
                // with the mark.
                let hides = below
                    .as_ref()
                    .is_some_and(|b| !matches!(b.kind, EntryKind::Dir(_)) || is_opaque(&b.meta));
                let meta = match mode {
                    Mode::Image => without_opaque(&e.meta),
                    Mode::Layer if hides && !opaque => {
                        let mut m = e.meta.clone();
                        m.xattrs.push(crate::object::Xattr {
                            name: OPAQUE_XATTRS[0].to_vec(),
                            value: b"y".to_vec(),
                        });
                        m.xattrs.sort_by(|a, b| a.name.cmp(&b.name));
                        m
                    }
                    Mode::Layer => e.meta.clone(),
                };
                Entry {
                    name: e.name,
                    meta,
                    kind: EntryKind::Dir(sub),
                }
            }
            (_, Some(b)) => {
                if b != e && !is_whiteout(&b) {
                    shadowed.push(path);
                }
                e
            }
            (_, None) => e,
        };
        out.insert(entry.name.clone(), entry);
    }
    Ok(store
        .put_tree(&Tree {
            entries: out.into_values().collect(),
        })?
        .0)
}

/// The layer that, laid over `lower` in [`Mode::Image`], gives `full`: what `full` adds or
/// changes, a whiteout for what it removes, directories present in both merged (their own
/// metadata taken from `full`). Hardlink groups of `full` that touch the layer are kept.
pub fn upper(store: &ObjectStore, lower: &Commit, full: &Commit) -> Result<Composed> {
    let tree = diff_dir(store, lower.tree, full.tree)?;
    store.flush()?;
    let mut hardlinks = Vec::new();
    for g in &full.hardlinks {
        let mut all = true;
        for p in g {
            all &= walk::lookup(store, tree, p)?.is_some();
        }
        if all {
            hardlinks.push(g.clone());
        }
    }
    let mut out = finish(store, tree, full.root_meta.clone(), &[], Vec::new())?;
    out.hardlinks = hardlinks;
    Ok(out)
}

fn diff_dir(store: &ObjectStore, lower: TreeId, full: TreeId) -> Result<TreeId> {
    let low = store.get_tree(&lower)?;
    let high = store.get_tree(&full)?;
    let mut out = Vec::new();
    for e in &high.entries {
        match low.get(&e.name) {
            Some(l) if l == e => {}
            Some(Entry {
                kind: EntryKind::Dir(lsub),
                ..
            }) if !is_opaque(&e.meta) => {
                if let EntryKind::Dir(hsub) = &e.kind {
                    let sub = diff_dir(store, *lsub, *hsub)?;
                    out.push(Entry {
                        name: e.name.clone(),
                        meta: e.meta.clone(),
                        kind: EntryKind::Dir(sub),
                    });
                } else {
                    out.push(e.clone());
                }
            }
            _ => out.push(e.clone()),
        }
    }
    for l in &low.entries {
        if high.get(&l.name).is_none() {
            out.push(whiteout(l.name.clone()));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(store.put_tree(&Tree { entries: out })?.0)
}

/// Commits a composed tree on `channel` (its head as the parent) and moves the channel. The
/// caller holds the write lock.
pub fn commit(repo: &Repo, channel: &str, composed: &Composed, message: &str) -> Result<CommitId> {
    channel::check_name(channel)?;
    let parent = channel::head(repo, channel)?;
    let c = Commit {
        tree: composed.tree,
        root_meta: composed.root_meta.clone(),
        parent,
        time: crate::now(),
        message: message.to_owned(),
        hardlinks: composed.hardlinks.clone(),
        entries: composed.entries,
        bytes: composed.bytes,
    };
    let (id, _) = repo.objects.put_commit(&c)?;
    repo.objects.flush()?;
    channel::move_to(repo, channel, id, MoveKind::Compose, message)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use proptest::test_runner::{Config as RunnerConfig, TestRunner};

    use super::*;
    use crate::object::Xattr;
    use crate::repo::{Access, Config};

    /// A tree or a layer as a model: names are small numbers.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum N {
        Link(u8),
        Whiteout,
        Dir {
            mode: u32,
            opaque: bool,
            children: BTreeMap<u8, N>,
        },
    }

    fn dir(children: BTreeMap<u8, N>) -> N {
        N::Dir {
            mode: 0o755,
            opaque: false,
            children,
        }
    }

    fn meta(mode: u32, opaque: bool) -> Meta {
        Meta {
            mode,
            xattrs: if opaque {
                vec![Xattr {
                    name: OPAQUE_XATTRS[0].to_vec(),
                    value: b"y".to_vec(),
                }]
            } else {
                Vec::new()
            },
            ..Meta::default()
        }
    }

    fn store_dir(store: &ObjectStore, children: &BTreeMap<u8, N>) -> TreeId {
        let mut entries = Vec::new();
        for (name, n) in children {
            let name = format!("n{name}").into_bytes();
            entries.push(match n {
                N::Link(v) => Entry {
                    name,
                    meta: Meta::default(),
                    kind: EntryKind::Symlink(vec![b'0' + v]),
                },
                N::Whiteout => whiteout(name),
                N::Dir {
                    mode,
                    opaque,
                    children,
                } => Entry {
                    name,
                    meta: meta(*mode, *opaque),
                    kind: EntryKind::Dir(store_dir(store, children)),
                },
            });
        }
        store.put_tree(&Tree { entries }).unwrap().0
    }

    fn load_dir(store: &ObjectStore, tree: TreeId) -> BTreeMap<u8, N> {
        let mut out = BTreeMap::new();
        for e in store.get_tree(&tree).unwrap().entries {
            let name: u8 = std::str::from_utf8(&e.name[1..]).unwrap().parse().unwrap();
            let n = if is_whiteout(&e) {
                N::Whiteout
            } else {
                match &e.kind {
                    EntryKind::Symlink(t) => N::Link(t[0] - b'0'),
                    EntryKind::Dir(sub) => N::Dir {
                        mode: e.meta.mode,
                        opaque: is_opaque(&e.meta),
                        children: load_dir(store, *sub),
                    },
                    other => panic!("unexpected {other:?}"),
                }
            };
            out.insert(name, n);
        }
        out
    }

    fn commit_of(store: &ObjectStore, children: &BTreeMap<u8, N>) -> Commit {
        let tree = store_dir(store, children);
        // The store reads only what is flushed.
        store.flush().unwrap();
        Commit {
            tree,
            root_meta: Meta::default(),
            parent: None,
            time: 0,
            message: String::new(),
            hardlinks: Vec::new(),
            entries: 0,
            bytes: 0,
        }
    }

    /// overlayfs as a model: `upper` over `lower`, whiteouts and opaque marks consumed or kept.
    fn model(lower: &BTreeMap<u8, N>, upper: &BTreeMap<u8, N>, mode: Mode) -> BTreeMap<u8, N> {
        let mut out = lower.clone();
        for (name, u) in upper {
            let below = out.remove(name);
            let n = match (u, below) {
                (N::Whiteout, _) if mode == Mode::Image => continue,
                (N::Whiteout, _) => N::Whiteout,
                (
                    N::Dir {
                        mode: m,
                        opaque,
                        children,
                    },
                    below,
                ) => {
                    let (lower_children, hides) = match below {
                        Some(N::Dir {
                            children: lc,
                            opaque: lo,
                            ..
                        }) if !opaque => (Some(lc), lo),
                        None => (None, false),
                        // A whiteout, a link or (under an opaque one) a directory: hidden.
                        Some(_) => (None, true),
                    };
                    let merged = match (lower_children, mode) {
                        (Some(lc), _) => model(&lc, children, mode),
                        (None, Mode::Image) => model(&BTreeMap::new(), children, mode),
                        (None, Mode::Layer) => children.clone(),
                    };
                    N::Dir {
                        mode: *m,
                        opaque: mode == Mode::Layer && (*opaque || hides),
                        children: merged,
                    }
                }
                (other, _) => other.clone(),
            };
            out.insert(*name, n);
        }
        out
    }

    fn image_strategy() -> impl Strategy<Value = BTreeMap<u8, N>> {
        let leaf = (0u8..3).prop_map(N::Link);
        let node = leaf.prop_recursive(3, 24, 4, |inner| {
            (
                prop_oneof![Just(0o755u32), Just(0o700)],
                prop::collection::btree_map(0u8..4, inner, 0..4),
            )
                .prop_map(|(mode, children)| N::Dir {
                    mode,
                    opaque: false,
                    children,
                })
        });
        prop::collection::btree_map(0u8..4, node, 0..4)
    }

    fn layer_strategy() -> impl Strategy<Value = BTreeMap<u8, N>> {
        let leaf = prop_oneof![(0u8..3).prop_map(N::Link), Just(N::Whiteout)];
        let node = leaf.prop_recursive(3, 24, 4, |inner| {
            (
                prop_oneof![Just(0o755u32), Just(0o700)],
                any::<bool>(),
                prop::collection::btree_map(0u8..4, inner, 0..4),
            )
                .prop_map(|(mode, opaque, children)| N::Dir {
                    mode,
                    opaque,
                    children,
                })
        });
        prop::collection::btree_map(0u8..4, node, 0..4)
    }

    fn with_store(f: impl FnOnce(&Repo)) {
        let d = tempfile::tempdir().unwrap();
        Repo::init(d.path(), Config::default()).unwrap();
        let repo = Repo::open(d.path(), Access::Write).unwrap();
        f(&repo)
    }

    /// Laying a layer over an image gives what overlayfs shows (COMPOSE_CASES=N runs N random
    /// cases instead of 200); squashing two layers and
    /// laying the result gives the same as laying them one after the other; the layer `upper`
    /// makes between two images turns the first into the second.
    #[test]
    fn composition_follows_overlayfs_and_upper_inverts_it() {
        with_store(|repo| {
            let store = &repo.objects;
            let mut runner = TestRunner::new(RunnerConfig {
                cases: std::env::var("COMPOSE_CASES")
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(200),
                ..RunnerConfig::default()
            });
            runner
                .run(
                    &(
                        image_strategy(),
                        layer_strategy(),
                        layer_strategy(),
                        image_strategy(),
                    ),
                    |(base, l1, l2, other)| {
                        let (cb, c1, c2) = (
                            commit_of(store, &base),
                            commit_of(store, &l1),
                            commit_of(store, &l2),
                        );
                        let one = apply(store, &cb, &c1, Mode::Image).unwrap();
                        prop_assert_eq!(load_dir(store, one.tree), model(&base, &l1, Mode::Image));
                        let one_c = Commit {
                            tree: one.tree,
                            ..cb.clone()
                        };
                        let two = apply(store, &one_c, &c2, Mode::Image).unwrap();
                        let squashed = apply(store, &c1, &c2, Mode::Layer).unwrap();
                        prop_assert_eq!(
                            load_dir(store, squashed.tree),
                            model(&l1, &l2, Mode::Layer)
                        );
                        let sq_c = Commit {
                            tree: squashed.tree,
                            ..cb.clone()
                        };
                        let at_once = apply(store, &cb, &sq_c, Mode::Image).unwrap();
                        prop_assert_eq!(at_once.tree, two.tree);

                        let co = commit_of(store, &other);
                        let up = upper(store, &cb, &co).unwrap();
                        let up_c = Commit {
                            tree: up.tree,
                            ..cb.clone()
                        };
                        let back = apply(store, &cb, &up_c, Mode::Image).unwrap();
                        prop_assert_eq!(back.tree, co.tree);
                        Ok(())
                    },
                )
                .unwrap();
        });
    }

    /// Regression (found by the property test): a directory laid over a file of the layer below
    /// it hides what the base has under that name, also once the two layers are squashed into
    /// one (the squashed directory is marked opaque).
    #[test]
    fn a_directory_over_a_file_hides_the_base_also_when_layers_are_squashed() {
        with_store(|repo| {
            let store = &repo.objects;
            let base: BTreeMap<u8, N> = [(2, dir([(0, N::Link(0))].into()))].into();
            let l1: BTreeMap<u8, N> = [(2, N::Link(0))].into();
            let l2: BTreeMap<u8, N> = [(2, dir(BTreeMap::new()))].into();
            let (cb, c1, c2) = (
                commit_of(store, &base),
                commit_of(store, &l1),
                commit_of(store, &l2),
            );
            let one = apply(store, &cb, &c1, Mode::Image).unwrap();
            let one_c = Commit {
                tree: one.tree,
                ..cb.clone()
            };
            let two = apply(store, &one_c, &c2, Mode::Image).unwrap();
            let sq = apply(store, &c1, &c2, Mode::Layer).unwrap();
            assert_eq!(
                load_dir(store, sq.tree),
                [(
                    2,
                    N::Dir {
                        mode: 0o755,
                        opaque: true,
                        children: BTreeMap::new()
                    }
                )]
                .into()
            );
            let sq_c = Commit {
                tree: sq.tree,
                ..cb.clone()
            };
            let at_once = apply(store, &cb, &sq_c, Mode::Image).unwrap();
            assert_eq!(at_once.tree, two.tree);
            assert_eq!(load_dir(store, two.tree), l2);
        });
    }

    /// What a layer hides and replaces is listed; a composition is committed on a channel with
    /// the channel's head as its parent.
    #[test]
    fn shadowed_paths_are_listed_and_a_composition_commits() {
        with_store(|repo| {
            let store = &repo.objects;
            let base: BTreeMap<u8, N> = [
                (0, N::Link(1)),
                (1, dir([(0, N::Link(0)), (1, N::Link(1))].into())),
                (2, N::Link(2)),
            ]
            .into();
            let layer: BTreeMap<u8, N> = [
                (0, N::Link(2)),
                (1, dir([(1, N::Whiteout), (2, N::Link(0))].into())),
                (2, N::Link(2)),
                (3, N::Whiteout),
            ]
            .into();
            let (cb, cl) = (commit_of(store, &base), commit_of(store, &layer));
            let c = apply(store, &cb, &cl, Mode::Image).unwrap();
            let names: Vec<String> = c.shadowed.iter().map(|p| walk::lossy(p)).collect();
            // n2 is laid over the same entry: not a change; n3 was not there to hide.
            assert_eq!(names, ["n0", "n1/n1"]);
            assert_eq!(c.entries, 5, "n0, n1, n1/n0, n1/n2, n2");
            let first = commit(repo, "lab/room", &c, "composed").unwrap();
            let second = commit(repo, "lab/room", &c, "again").unwrap();
            let got = store.get_commit(&second).unwrap();
            assert_eq!(got.parent, Some(first));
            assert_eq!(got.tree, c.tree);
            let moves = channel::history(repo, "lab/room").unwrap();
            assert_eq!(moves.last().unwrap().kind, MoveKind::Compose);
        });
    }
}
