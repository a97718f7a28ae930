//! Local changes in the `/etc` overlay (docs/BOOT.md): everything in its upper directory that
//! makes the booted `/etc` differ from the release's. Overlayfs keeps a changed file whole in
//! the upper directory, a deleted one as a whiteout (a character device 0:0), a directory whose
//! lower entries are hidden as an opaque directory; a copy that is still equal to the release's
//! (content, link target, mode, owner) is no change.
//!
//! Restoring a path removes its upper copy or whiteout (moved into the quarantine), so the
//! release's version shows again; overlayfs may keep showing the old one until the overlay is
//! mounted again, so the change is certain from the next boot on.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use semithin_store::TreeId;
use semithin_store::object::{Entry, EntryKind};

use super::meta::{self, Verdict};
use super::objects::Objects;
use super::scan::{at, join, names};
use crate::config::EtcPolicy;

const OPAQUE: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];
const METACOPY: [&str; 2] = ["trusted.overlay.metacopy", "user.overlay.metacopy"];

/// One path of `/etc` that differs from the release because of the overlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Drift {
    /// Relative to `/etc`.
    pub rel: Vec<u8>,
    pub what: String,
}

fn has_xattr(path: &Path, names: &[&str]) -> bool {
    names
        .iter()
        .any(|n| xattr::get(path, n).ok().flatten().is_some())
}

/// Compares the upper directory `upper` with the release's `/etc` (`etc`: its tree, if the
/// release has one). Returns the drift and the directories that could not be looked at.
pub(crate) fn scan(
    objs: &mut Objects,
    upper: &Path,
    etc: Option<TreeId>,
    root_owner: bool,
) -> (Vec<Drift>, Vec<String>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    if !upper.is_dir() {
        return (out, errors);
    }
    let mut stack: Vec<(Vec<u8>, Option<TreeId>)> = vec![(Vec::new(), etc)];
    while let Some((rel, tree_id)) = stack.pop() {
        let tree = match tree_id.map(|t| objs.tree(t)).transpose() {
            Ok(t) => t.unwrap_or_default(),
            Err(e) => {
                errors.push(format!(
                    "/etc/{}: not verified: {e}",
                    String::from_utf8_lossy(&rel)
                ));
                continue;
            }
        };
        let listed = match names(&at(upper, &rel)) {
            Ok(n) => n,
            Err(e) => {
                errors.push(format!(
                    "/etc/{} in the overlay: cannot be listed ({e})",
                    String::from_utf8_lossy(&rel)
                ));
                continue;
            }
        };
        let mut subdirs = Vec::new();
        for name in listed {
            let crel = join(&rel, &name);
            let path = at(upper, &crel);
            let Ok(md) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let released = tree.get(&name);
            let t = md.file_type();
            let what = if t.is_char_device() && md.rdev() == 0 {
                released.map(|_| "deleted locally".to_owned())
            } else if t.is_dir() {
                match released {
                    Some(Entry {
                        kind: EntryKind::Dir(_),
                        ..
                    }) if has_xattr(&path, &OPAQUE) => {
                        Some("replaced locally by a new directory (opaque)".into())
                    }
                    Some(Entry {
                        kind: EntryKind::Dir(sub),
                        meta: m,
                        ..
                    }) => {
                        subdirs.push((crel.clone(), Some(*sub)));
                        let d = meta::meta_diff(&path, &md, m, root_owner, false);
                        (!d.is_empty()).then(|| format!("changed locally: {}", d.join("; ")))
                    }
                    Some(e) => Some(format!(
                        "a {} replaced by a directory locally",
                        e.kind.type_name()
                    )),
                    None => Some("a directory added locally".into()),
                }
            } else {
                match released {
                    None => Some(format!("added locally: {}", meta::describe(&md))),
                    Some(e) => changed(&path, e, root_owner),
                }
            };
            if let Some(what) = what {
                out.push(Drift { rel: crel, what });
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    (out, errors)
}

/// How an upper copy of a release's non-directory differs from it, if it does.
fn changed(path: &Path, e: &Entry, root_owner: bool) -> Option<String> {
    let e = if has_xattr(path, &METACOPY) {
        // Only the metadata was copied up; the content is still the release's.
        match &e.kind {
            EntryKind::File(_) => {
                let md = std::fs::symlink_metadata(path).ok()?;
                let d = meta::meta_diff(path, &md, &e.meta, root_owner, false);
                return (!d.is_empty()).then(|| format!("changed locally: {}", d.join("; ")));
            }
            _ => e,
        }
    } else {
        e
    };
    match meta::compare(path, e, root_owner, false) {
        Verdict::Same => None,
        Verdict::Missing => None,
        Verdict::Replace(w) | Verdict::Meta(w) => Some(format!("changed locally: {w}")),
    }
}

/// Whether `rel` (relative to /etc) or a directory above it matches one of the patterns.
pub(crate) fn covered(rel: &[u8], patterns: &[glob::Pattern]) -> bool {
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let text = String::from_utf8_lossy(rel);
    let mut prefix = text.as_ref();
    loop {
        if patterns.iter().any(|p| p.matches_with(prefix, opts)) {
            return true;
        }
        match prefix.rsplit_once('/') {
            Some((p, _)) => prefix = p,
            None => return false,
        }
    }
}

/// Which drift the policy puts back.
pub(crate) fn to_restore(d: &Drift, policy: EtcPolicy, patterns: &[glob::Pattern]) -> bool {
    policy == EtcPolicy::Restore && covered(&d.rel, patterns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_covers_its_directory_and_what_is_below() {
        let p: Vec<glob::Pattern> = ["cron.d", "sudoers.d/*", "ssh/sshd_config"]
            .iter()
            .map(|s| glob::Pattern::new(s).unwrap())
            .collect();
        for yes in [
            "cron.d",
            "cron.d/evil",
            "cron.d/a/b",
            "sudoers.d/x",
            "ssh/sshd_config",
        ] {
            assert!(covered(yes.as_bytes(), &p), "{yes}");
        }
        for no in [
            "cron.daily/x",
            "sudoers",
            "ssh/ssh_config",
            "ssh",
            "crontab",
        ] {
            assert!(!covered(no.as_bytes(), &p), "{no}");
        }
        let star = [glob::Pattern::new("*").unwrap()];
        assert!(covered(b"a/b/c", &star), "a directory match covers below");
    }
}
