//! Seals of deployments (docs/BOOT.md, "Verification at boot"): what lets the check at boot
//! (`semithin.verify=quick`, the default) skip reading a deployment that nothing has changed
//! since it was last verified in full.
//!
//! A seal is a BLAKE3 digest, in its own derive-key context and bound to the release id, over
//! every entry of the deployment tree walked in name order (directories and symlinks included,
//! nothing followed): its path, `st_mode` (file type and permission bits), owner, group, size,
//! device numbers, inode number, mtime and ctime with nanoseconds, and a symlink's target. The
//! kernel sets ctime to the current time whenever anything writes, truncates, chmods, chowns,
//! renames, links, unlinks or changes an xattr of an inode, and user space cannot set it
//! back, so a change made through the running system shows in the walk even when the mtime
//! was put back. `st_nlink` is left out: a link count only changes with a link or an unlink,
//! which changes the ctime too, so it would add nothing; and the agent verifies and seals the
//! current deployment again after it links or unlinks shared files anyway ([`reseal`]).
//!
//! `STATE/seals/ID` holds one line, `semithin-seal-v1 DIGEST ENTRIES`, replaced atomically. It
//! is written only right after a full verification that found the deployment as released and
//! whose walk before and after the verification is the same ([`seal_if_unchanged`],
//! [`verify_and_seal`]): nothing changed while it was read.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use semithin_store::CommitId;
use semithin_store::objects::ObjectStore;

use super::{objects, scan};
use crate::error::{Error, Result};
use crate::state::Layout;

const CONTEXT: &str = "semithin 2026-12 deployment seal v1";
const MAGIC: &str = "semithin-seal-v1";

/// What a walk of a deployment gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    pub digest: [u8; 32],
    /// Entries below the deployment's root (the root itself not counted).
    pub entries: u64,
}

/// Walks the deployment of `release` at `root`: the digest of its entries' metadata. A
/// directory another file system is mounted on is hashed as it is seen (the mount's root)
/// and not walked into.
pub fn walk(root: &Path, release: &str) -> Result<Walk> {
    let mut h = blake3::Hasher::new_derive_key(CONTEXT);
    h.update(&(release.len() as u64).to_le_bytes());
    h.update(release.as_bytes());
    let md = std::fs::symlink_metadata(root).map_err(Error::io("reading", root))?;
    if !md.is_dir() {
        return Err(Error::Config(format!(
            "the deployment {} is not a directory",
            root.display()
        )));
    }
    let dev = md.dev();
    entry(&mut h, b"", &md, None);
    let mut entries = 0u64;
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let dir = scan::at(root, &rel);
        let mut list = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(Error::io("listing", &dir))? {
            let e = e.map_err(Error::io("listing", &dir))?;
            list.push((e.file_name().as_bytes().to_vec(), e));
        }
        list.sort_by(|a, b| a.0.cmp(&b.0));
        let mut subdirs = Vec::new();
        for (name, e) in list {
            let crel = scan::join(&rel, &name);
            let path = e.path();
            // lstat (fstatat with AT_SYMLINK_NOFOLLOW): never through a symlink
            let md = e.metadata().map_err(Error::io("reading", &path))?;
            let target = if md.file_type().is_symlink() {
                Some(std::fs::read_link(&path).map_err(Error::io("reading the link", &path))?)
            } else {
                None
            };
            entry(&mut h, &crel, &md, target.as_deref());
            entries += 1;
            if md.is_dir() && md.dev() == dev {
                subdirs.push(crel);
            }
        }
        // in reverse, so that directories are taken in name order
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(Walk {
        digest: *h.finalize().as_bytes(),
        entries,
    })
}

/// One entry of the stream: every field fixed-size and little-endian, the path and the link
/// target prefixed by their length.
fn entry(h: &mut blake3::Hasher, rel: &[u8], md: &std::fs::Metadata, target: Option<&Path>) {
    h.update(&(rel.len() as u64).to_le_bytes());
    h.update(rel);
    h.update(&md.mode().to_le_bytes());
    h.update(&md.uid().to_le_bytes());
    h.update(&md.gid().to_le_bytes());
    h.update(&md.size().to_le_bytes());
    h.update(&md.rdev().to_le_bytes());
    h.update(&md.ino().to_le_bytes());
    h.update(&md.mtime().to_le_bytes());
    h.update(&md.mtime_nsec().to_le_bytes());
    h.update(&md.ctime().to_le_bytes());
    h.update(&md.ctime_nsec().to_le_bytes());
    match target {
        Some(t) => {
            let t = t.as_os_str().as_bytes();
            h.update(&[1]);
            h.update(&(t.len() as u64).to_le_bytes());
            h.update(t);
        }
        None => {
            h.update(&[0]);
        }
    }
}

/// `STATE/seals/ID`.
pub fn path(layout: &Layout, release: &str) -> PathBuf {
    layout.seals().join(release)
}

/// The seal of `release`, if there is one; an error when it cannot be read or is not one.
pub fn read(layout: &Layout, release: &str) -> std::result::Result<Option<Walk>, String> {
    let p = path(layout, release);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("its seal {} cannot be read ({e})", p.display())),
    };
    let bad = || format!("its seal {} is not one", p.display());
    let mut words = text.split_ascii_whitespace();
    if words.next() != Some(MAGIC) {
        return Err(bad());
    }
    let digest: [u8; 32] = words
        .next()
        .and_then(|d| hex::decode(d).ok())
        .and_then(|d| d.try_into().ok())
        .ok_or_else(bad)?;
    let entries = words.next().and_then(|n| n.parse().ok()).ok_or_else(bad)?;
    if words.next().is_some() {
        return Err(bad());
    }
    Ok(Some(Walk { digest, entries }))
}

/// Writes the seal of `release` (atomically, synced).
pub fn write(layout: &Layout, release: &str, w: &Walk) -> Result<()> {
    let dir = layout.seals();
    std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
    let text = format!("{MAGIC} {} {}\n", hex::encode(w.digest), w.entries);
    semithin_store::fsutil::replace_atomic(&path(layout, release), &dir, text.as_bytes())?;
    Ok(())
}

/// Removes the seal of `release`, if any.
pub fn remove(layout: &Layout, release: &str) -> Result<()> {
    let p = path(layout, release);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(semithin_store::fsutil::sync_dir(&layout.seals())?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing", &p)(e)),
    }
}

/// Removes the seals of deployments that are gone (pruned, or a removal a kill interrupted).
pub fn remove_stale(layout: &Layout) -> Result<()> {
    let dir = layout.seals();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("listing", &dir)(e)),
    };
    for e in rd {
        let e = e.map_err(Error::io("listing", &dir))?;
        let name = e.file_name();
        if !layout.deployments().join(&name).is_dir() {
            let p = e.path();
            std::fs::remove_file(&p).map_err(Error::io("removing", &p))?;
        }
    }
    Ok(())
}

/// The quick check: the deployment's walk against its seal. `Ok(entries)` when they are the
/// same; otherwise why the deployment must be verified in full.
pub fn check(layout: &Layout, release: &str) -> std::result::Result<u64, String> {
    let sealed = match read(layout, release)? {
        Some(s) => s,
        None => return Err("no seal (not verified in full since it was made)".into()),
    };
    let now = walk(&layout.deployment(release), release)
        .map_err(|e| format!("it cannot be walked ({e})"))?;
    if now == sealed {
        Ok(now.entries)
    } else {
        Err("it changed since its seal was written".into())
    }
}

/// What came of sealing: `Ok(entries)` sealed, `Err(why)` not sealed.
pub type Sealed = std::result::Result<u64, String>;

/// After a full verification of `release` that found its deployment as released: seals it
/// when its walk now is `before`, the walk taken before the verification began (nothing
/// changed while it was read). Otherwise the seal is removed.
pub fn seal_if_unchanged(layout: &Layout, release: &str, before: Option<Walk>) -> Sealed {
    let root = layout.deployment(release);
    let after = walk(&root, release).map_err(|e| format!("not sealed: {e}"));
    match (before, after) {
        (Some(b), Ok(a)) if a == b => match write(layout, release, &a) {
            Ok(()) => Ok(a.entries),
            Err(e) => Err(format!("the seal cannot be written: {e}")),
        },
        (_, after) => {
            let _ = remove(layout, release);
            Err(match after {
                Err(e) => e,
                Ok(_) => "not sealed: it changed while it was verified".into(),
            })
        }
    }
}

/// A full verification of the deployment of `release` with the objects of `store` alone (no
/// network, nothing put back) and, when it is as released, its seal ([`seal_if_unchanged`]).
/// What differs leaves it unsealed, and is said in the `Err`: the agent's own verification
/// or the check at boot puts it right.
pub fn verify_and_seal(
    layout: &Layout,
    store: &ObjectStore,
    release: &str,
    root_owner: bool,
) -> Sealed {
    let root = layout.deployment(release);
    let before = walk(&root, release).ok();
    let found = (|| -> Result<scan::Scan> {
        let id: CommitId = release.parse().map_err(|_| Error::Release {
            release: release.to_owned(),
            reason: "not a commit id".into(),
        })?;
        let mut objs = objects::Objects::offline(store);
        let commit = objs.commit(id)?;
        scan::scan(&mut objs, &root, &commit, root_owner)
    })();
    let why = match found {
        Err(e) => format!("it cannot be verified: {e}"),
        Ok(s) if s.findings.is_empty() && s.errors.is_empty() => {
            return seal_if_unchanged(layout, release, before);
        }
        Ok(s) => match (s.findings.first(), s.errors.first()) {
            (Some(f), _) => format!(
                "{} path(s) differ from the release, the first /{}: {}",
                s.findings.len(),
                String::from_utf8_lossy(&f.rel),
                f.what
            ),
            (None, Some(e)) => e.clone(),
            (None, None) => unreachable!("matched above"),
        },
    };
    let _ = remove(layout, release);
    Err(format!("not sealed: {why}"))
}

/// After the agent linked or unlinked files its deployments share (a staging, a pruning, the
/// gc of the checkout cache), the links changed the ctime of the current deployment's files:
/// when its seal no longer matches, it is verified in full again (offline) and sealed anew, so
/// that the next boot's quick check passes. `Ok(None)`: the seal still matches, or there is
/// no current deployment.
pub fn reseal(
    layout: &Layout,
    store: &ObjectStore,
    root_owner: bool,
) -> Result<Option<(String, Sealed)>> {
    let Some(release) = layout.current()? else {
        return Ok(None);
    };
    if !layout.deployment(&release).is_dir() || check(layout, &release).is_ok() {
        return Ok(None);
    }
    let sealed = verify_and_seal(layout, store, &release, root_owner);
    Ok(Some((release, sealed)))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;

    const R: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A deployment with a file, a directory, a symlink and a fifo: (tempdir, layout, root).
    fn tree() -> (tempfile::TempDir, Layout, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let root = layout.deployment(R);
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("etc/cron.d")).unwrap();
        std::fs::write(root.join("usr/bin/tool"), b"the tool's content").unwrap();
        std::fs::write(root.join("etc/cron.d/backup"), b"0 3 * * * root tool\n").unwrap();
        std::os::unix::fs::symlink("tool", root.join("usr/bin/alias")).unwrap();
        sh(&format!("mkfifo '{}'", root.join("fifo").display()));
        // Whatever is changed next gets another ctime than what was made here.
        std::thread::sleep(Duration::from_millis(30));
        (dir, layout, root)
    }

    fn sh(cmd: &str) {
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .status()
            .unwrap();
        assert!(st.success(), "{cmd}");
    }

    #[test]
    fn the_same_tree_walks_to_the_same_seal_bound_to_its_release() {
        let (_d, _layout, root) = tree();
        let a = walk(&root, R).unwrap();
        let b = walk(&root, R).unwrap();
        assert_eq!(a, b);
        // usr usr/bin usr/bin/tool usr/bin/alias etc etc/cron.d etc/cron.d/backup fifo
        assert_eq!(a.entries, 8);
        let other = R.replace('0', "f");
        assert_ne!(walk(&root, &other).unwrap().digest, a.digest);
    }

    #[test]
    fn every_change_through_the_file_system_changes_the_seal() {
        type Change = (&'static str, fn(&Path));
        let changes: [Change; 9] = [
            (
                "a write of the same size, mtime put back with touch -r",
                |r| {
                    sh(&format!(
                        "set -e; cd '{}'; cp -p usr/bin/tool ../ref; \
                     printf 'EVIL' | dd of=usr/bin/tool bs=1 seek=2 conv=notrunc status=none; \
                     touch -r ../ref usr/bin/tool; rm ../ref",
                        r.display()
                    ))
                },
            ),
            ("a chmod, and back", |r| {
                let p = r.join("usr/bin/tool");
                let mode = std::fs::metadata(&p).unwrap().permissions().mode();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o4755)).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            }),
            ("a rename, and back", |r| {
                std::fs::rename(r.join("usr/bin/tool"), r.join("usr/bin/tool2")).unwrap();
                std::fs::rename(r.join("usr/bin/tool2"), r.join("usr/bin/tool")).unwrap();
            }),
            ("a touch -r that puts the mtime back", |r| {
                sh(&format!(
                    "set -e; cd '{}'; touch -r etc/cron.d/backup etc/cron.d/backup",
                    r.display()
                ))
            }),
            ("a new file", |r| {
                std::fs::write(r.join("etc/cron.d/evil"), b"* * * * * root sh\n").unwrap()
            }),
            ("a removed file", |r| {
                std::fs::remove_file(r.join("etc/cron.d/backup")).unwrap()
            }),
            ("a symlink pointed elsewhere", |r| {
                std::fs::remove_file(r.join("usr/bin/alias")).unwrap();
                std::os::unix::fs::symlink("/tmp/evil", r.join("usr/bin/alias")).unwrap();
            }),
            ("a hard link made and removed", |r| {
                std::fs::hard_link(r.join("usr/bin/tool"), r.join("../elsewhere")).unwrap();
                std::fs::remove_file(r.join("../elsewhere")).unwrap();
            }),
            ("a file replaced by a copy with the same metadata", |r| {
                sh(&format!(
                    "set -e; cd '{}'; cp -a usr/bin/tool usr/bin/.t; mv usr/bin/.t usr/bin/tool",
                    r.display()
                ))
            }),
        ];
        for (what, change) in changes {
            let (_d, layout, root) = tree();
            let before = walk(&root, R).unwrap();
            write(&layout, R, &before).unwrap();
            assert_eq!(check(&layout, R), Ok(before.entries), "{what}");
            change(&root);
            let after = walk(&root, R).unwrap();
            assert_ne!(
                after.digest, before.digest,
                "{what}: the seal did not change"
            );
            let why = check(&layout, R).unwrap_err();
            assert!(why.contains("changed since its seal"), "{what}: {why}");
        }
    }

    #[test]
    fn a_seal_is_read_back_and_one_missing_or_damaged_is_said() {
        let (_d, layout, root) = tree();
        let e = check(&layout, R).unwrap_err();
        assert!(e.starts_with("no seal"), "{e}");
        let w = walk(&root, R).unwrap();
        write(&layout, R, &w).unwrap();
        assert_eq!(read(&layout, R).unwrap(), Some(w));
        let text = std::fs::read_to_string(path(&layout, R)).unwrap();
        assert!(text.starts_with("semithin-seal-v1 "), "{text}");
        for junk in [
            "",
            "semithin-seal-v1 abcd 3\n",
            &text.replace("v1", "v2"),
            &format!("{text} x"),
        ] {
            std::fs::write(path(&layout, R), junk).unwrap();
            let e = check(&layout, R).unwrap_err();
            assert!(e.contains("is not one"), "{junk:?}: {e}");
        }
        remove(&layout, R).unwrap();
        assert!(!path(&layout, R).exists());
        // the seal of a deployment that is gone goes with it
        write(&layout, R, &w).unwrap();
        remove_stale(&layout).unwrap();
        assert!(path(&layout, R).exists());
        std::fs::remove_dir_all(&root).unwrap();
        remove_stale(&layout).unwrap();
        assert!(!path(&layout, R).exists());
    }

    #[test]
    fn a_tree_that_changes_while_it_is_verified_is_not_sealed() {
        let (_d, layout, root) = tree();
        let before = walk(&root, R).unwrap();
        assert_eq!(
            seal_if_unchanged(&layout, R, Some(before)),
            Ok(before.entries)
        );
        std::fs::write(root.join("usr/bin/tool"), b"the tool's content").unwrap();
        let e = seal_if_unchanged(&layout, R, Some(before)).unwrap_err();
        assert!(e.contains("changed while it was verified"), "{e}");
        assert!(!path(&layout, R).exists(), "the old seal is removed");
        assert!(seal_if_unchanged(&layout, R, None).is_err());
    }
}
