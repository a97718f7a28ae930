//! The whole deployment against its release: every entry of the release (kind, content, link
//! target, device numbers, mode with setuid/setgid/sticky, owner, xattrs; directories and the
//! root too) and every entry on disk that the release does not have. An explicit stack, not
//! recursion; a directory is only looked into once it was found to be a real directory, so
//! nothing is read through a symlink.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use semithin_store::TreeId;
use semithin_store::object::{Commit, Entry, EntryKind};

use super::meta::{self, Verdict};
use super::objects::Objects;
use crate::error::{Error, Result};

/// What is to be done about a finding.
#[derive(Clone, Debug)]
pub(crate) enum Fix {
    /// Not in the release: moved aside.
    Remove,
    /// Missing, or of another kind, content, target or device: what is there is moved aside and
    /// the entry made anew (a directory with everything below it).
    Replace(Entry),
    /// Only metadata differs: set in place.
    Meta(Entry),
}

/// One path found to differ from the release.
#[derive(Clone, Debug)]
pub(crate) struct Finding {
    /// Relative to the deployment, `/`-separated; empty for its root.
    pub rel: Vec<u8>,
    pub what: String,
    pub fix: Fix,
}

#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub findings: Vec<Finding>,
    pub files: u64,
    pub bytes: u64,
    /// Directories that could not be looked at, with the reason.
    pub errors: Vec<String>,
}

pub(crate) fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut r = rel.to_vec();
    if !r.is_empty() {
        r.push(b'/');
    }
    r.extend_from_slice(name);
    r
}

pub(crate) fn at(root: &Path, rel: &[u8]) -> std::path::PathBuf {
    if rel.is_empty() {
        root.to_owned()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// The names in a directory, sorted.
pub(crate) fn names(dir: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        v.push(e?.file_name().as_bytes().to_vec());
    }
    v.sort();
    Ok(v)
}

/// Compares the deployment at `root` with the release `commit`.
pub(crate) fn scan(
    objs: &mut Objects,
    root: &Path,
    commit: &Commit,
    root_owner: bool,
) -> Result<Scan> {
    let mut s = Scan::default();
    let md = std::fs::symlink_metadata(root).map_err(Error::io("reading", root))?;
    if !md.is_dir() {
        return Err(Error::Config(format!(
            "the deployment {} is not a directory (restage the release)",
            root.display()
        )));
    }
    let root_entry = Entry {
        name: Vec::new(),
        meta: commit.root_meta.clone(),
        kind: EntryKind::Dir(commit.tree),
    };
    if let Verdict::Meta(what) = meta::compare(root, &root_entry, root_owner, true) {
        s.findings.push(Finding {
            rel: Vec::new(),
            what,
            fix: Fix::Meta(root_entry),
        });
    }
    let dev = md.dev();
    let mut stack: Vec<(Vec<u8>, TreeId)> = vec![(Vec::new(), commit.tree)];
    while let Some((rel, tree_id)) = stack.pop() {
        let dir = at(root, &rel);
        // Something mounted over a directory is not the deployment: it is not looked into.
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.dev() != dev) {
            s.errors.push(format!(
                "/{}: another file system is mounted there; not verified",
                String::from_utf8_lossy(&rel)
            ));
            continue;
        }
        let tree = match objs.tree(tree_id) {
            Ok(t) => t,
            Err(e) => {
                s.errors.push(format!(
                    "/{}: not verified: {e}",
                    String::from_utf8_lossy(&rel)
                ));
                continue;
            }
        };
        let on_disk = match names(&dir) {
            Ok(n) => n,
            Err(e) => {
                s.errors.push(format!(
                    "/{}: cannot be listed ({e})",
                    String::from_utf8_lossy(&rel)
                ));
                continue;
            }
        };
        let released: HashSet<&[u8]> = tree.entries.iter().map(|e| e.name.as_slice()).collect();
        for name in on_disk.iter().filter(|n| !released.contains(n.as_slice())) {
            let crel = join(&rel, name);
            let what = match std::fs::symlink_metadata(at(root, &crel)) {
                Ok(md) => meta::describe(&md),
                Err(e) => format!("not in the release (cannot be read: {e})"),
            };
            s.findings.push(Finding {
                rel: crel,
                what,
                fix: Fix::Remove,
            });
        }
        // Pushed in reverse so that directories are taken in name order.
        let mut subdirs = Vec::new();
        for e in &tree.entries {
            let crel = join(&rel, &e.name);
            let path = at(root, &crel);
            if let EntryKind::File(c) = &e.kind {
                s.files += 1;
                s.bytes += c.size;
            }
            let verdict = meta::compare(&path, e, root_owner, true);
            let descend = matches!(verdict, Verdict::Same | Verdict::Meta(_));
            let (what, fix) = match verdict {
                Verdict::Same => (None, None),
                Verdict::Missing => (Some("missing".into()), Some(Fix::Replace(e.clone()))),
                Verdict::Replace(w) => (Some(w), Some(Fix::Replace(e.clone()))),
                Verdict::Meta(w) => (Some(w), Some(Fix::Meta(e.clone()))),
            };
            if let (Some(what), Some(fix)) = (what, fix) {
                s.findings.push(Finding {
                    rel: crel.clone(),
                    what,
                    fix,
                });
            }
            if let (EntryKind::Dir(sub), true) = (&e.kind, descend) {
                subdirs.push((crel, *sub));
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(s)
}
