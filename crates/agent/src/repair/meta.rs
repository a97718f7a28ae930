//! Comparing what is on disk with a release's entry, and putting an entry's metadata back.
//! Nothing here follows a symlink: entries are looked at with `lstat`, `llistxattr`,
//! `lgetxattr`, and changed with `lchown`-style calls.

use std::ffi::OsStr;
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::{AtFlags, CWD, Mode, Timespec, Timestamps};
use semithin_store::id::FileHash;
use semithin_store::object::{DeviceKind, Entry, EntryKind, Meta, Xattr};

use crate::error::{Error, Result};

/// Attributes the kernel or a security module sets by itself: never compared.
const IGNORED_XATTRS: &[&[u8]] = &[b"security.selinux", b"security.ima", b"security.evm"];

/// The xattrs that count: not the ignored ones, and without root only `user.*` (a checkout
/// without root cannot set the others).
fn counts(name: &[u8], root: bool) -> bool {
    !IGNORED_XATTRS.contains(&name) && (root || name.starts_with(b"user."))
}

/// What kind of thing `md` is, in the words of [`EntryKind::type_name`].
pub(crate) fn kind_name(md: &Metadata) -> &'static str {
    let t = md.file_type();
    if t.is_dir() {
        "dir"
    } else if t.is_file() {
        "file"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_char_device() {
        "char-device"
    } else if t.is_block_device() {
        "block-device"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else {
        "unknown"
    }
}

/// "setuid, setgid, sticky" as far as `mode` has them.
fn special(mode: u32) -> Vec<&'static str> {
    let mut v = Vec::new();
    if mode & 0o4000 != 0 {
        v.push("setuid");
    }
    if mode & 0o2000 != 0 {
        v.push("setgid");
    }
    if mode & 0o1000 != 0 {
        v.push("sticky");
    }
    v
}

/// An entry the release does not have: "a setuid file, mode 4755, owner 0:0".
pub(crate) fn describe(md: &Metadata) -> String {
    let mode = md.mode() & 0o7777;
    let sp = special(mode);
    let sp = if sp.is_empty() {
        String::new()
    } else {
        format!("{} ", sp.join(" "))
    };
    format!(
        "not in the release: a {sp}{}, mode {mode:04o}, owner {}:{}",
        kind_name(md),
        md.uid(),
        md.gid()
    )
}

fn xattrs_of(path: &Path, root: bool) -> std::io::Result<Vec<Xattr>> {
    let mut out = Vec::new();
    for name in xattr::list(path)? {
        if !counts(name.as_bytes(), root) {
            continue;
        }
        if let Some(value) = xattr::get(path, &name)? {
            out.push(Xattr {
                name: name.as_bytes().to_vec(),
                value,
            });
        }
    }
    out.sort();
    Ok(out)
}

/// How the metadata of `path` (`md` its lstat) differs from `meta`: one phrase per field.
/// `xattrs`: compare extended attributes too (not in the /etc overlay, where overlayfs keeps
/// its own).
pub(crate) fn meta_diff(
    path: &Path,
    md: &Metadata,
    meta: &Meta,
    root: bool,
    xattrs: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    let symlink = md.file_type().is_symlink();
    let mode = md.mode() & 0o7777;
    if !symlink && mode != meta.mode {
        let mut s = format!("mode {mode:04o}, the release has {:04o}", meta.mode);
        let added: Vec<_> = special(mode)
            .into_iter()
            .filter(|b| !special(meta.mode).contains(b))
            .collect();
        if !added.is_empty() {
            s.push_str(&format!(" ({} added)", added.join(", ")));
        }
        out.push(s);
    }
    if root && (md.uid() != meta.uid || md.gid() != meta.gid) {
        out.push(format!(
            "owner {}:{}, the release has {}:{}",
            md.uid(),
            md.gid(),
            meta.uid,
            meta.gid
        ));
    }
    if xattrs {
        let want: Vec<&Xattr> = meta
            .xattrs
            .iter()
            .filter(|x| counts(&x.name, root))
            .collect();
        match xattrs_of(path, root) {
            Err(e) => out.push(format!("its xattrs cannot be read ({e})")),
            Ok(have) => {
                let names = |v: &mut dyn Iterator<Item = &Xattr>| -> Vec<String> {
                    v.map(|x| String::from_utf8_lossy(&x.name).into_owned())
                        .collect()
                };
                let extra = names(&mut have.iter().filter(|x| !want.contains(x)));
                let lacking = names(&mut want.iter().copied().filter(|x| !have.contains(x)));
                if !extra.is_empty() || !lacking.is_empty() {
                    let mut s = "xattrs differ".to_owned();
                    if !extra.is_empty() {
                        s.push_str(&format!(" (not as released: {})", extra.join(", ")));
                    }
                    if !lacking.is_empty() {
                        s.push_str(&format!(" (missing or changed: {})", lacking.join(", ")));
                    }
                    out.push(s);
                }
            }
        }
    }
    out
}

/// What is wrong with the thing at `path` compared with the release's entry.
pub(crate) enum Verdict {
    Same,
    /// Nothing there.
    Missing,
    /// The kind, content, link target or device numbers differ: it is made anew.
    Replace(String),
    /// Only metadata differs: it is set in place.
    Meta(String),
}

/// Compares `path` with `e`; for a regular file its content is hashed.
pub(crate) fn compare(path: &Path, e: &Entry, root: bool, xattrs: bool) -> Verdict {
    let md = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Verdict::Missing,
        Err(err) => return Verdict::Replace(format!("cannot be read ({err})")),
    };
    let t = md.file_type();
    let same_kind = match &e.kind {
        EntryKind::Dir(_) => t.is_dir(),
        EntryKind::File(_) => t.is_file(),
        EntryKind::Symlink(_) => t.is_symlink(),
        EntryKind::Device {
            kind: DeviceKind::Char,
            ..
        } => t.is_char_device(),
        EntryKind::Device {
            kind: DeviceKind::Block,
            ..
        } => t.is_block_device(),
        EntryKind::Fifo => t.is_fifo(),
    };
    if !same_kind {
        return Verdict::Replace(format!(
            "is a {}, the release has a {}",
            kind_name(&md),
            e.kind.type_name()
        ));
    }
    match &e.kind {
        EntryKind::Symlink(target) => match std::fs::read_link(path) {
            Ok(t) if t.as_os_str().as_bytes() == target.as_slice() => {}
            Ok(t) => {
                return Verdict::Replace(format!(
                    "points at {}, the release's link points at {}",
                    t.display(),
                    String::from_utf8_lossy(target)
                ));
            }
            Err(err) => return Verdict::Replace(format!("cannot be read ({err})")),
        },
        EntryKind::Device { major, minor, .. } => {
            let (ma, mi) = (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()));
            if (ma, mi) != (*major, *minor) {
                return Verdict::Replace(format!(
                    "is device {ma}:{mi}, the release has {major}:{minor}"
                ));
            }
        }
        EntryKind::File(c) => {
            if md.len() != c.size {
                return Verdict::Replace(format!(
                    "has {} bytes, the release has {}",
                    md.len(),
                    c.size
                ));
            }
            match hash(path) {
                Ok(h) if h == c.hash => {}
                Ok(_) => return Verdict::Replace("content differs from the release".into()),
                Err(err) => return Verdict::Replace(format!("cannot be read ({err})")),
            }
        }
        EntryKind::Dir(_) | EntryKind::Fifo => {}
    }
    let diff = meta_diff(path, &md, &e.meta, root, xattrs);
    if diff.is_empty() {
        Verdict::Same
    } else {
        Verdict::Meta(diff.join("; "))
    }
}

/// The hash of a regular file's content (opened without following a symlink).
pub(crate) fn hash(path: &Path) -> std::io::Result<FileHash> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let mut h = FileHash::hasher();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match f.read(&mut buf)? {
            0 => break,
            n => {
                h.update(&buf[..n]);
            }
        }
    }
    Ok(FileHash::from_hasher(&h))
}

/// Puts `meta` on the thing at `path` (not following a symlink): owner first (it clears setuid
/// bits and file capabilities), then mode, xattrs (removing those the release lacks), mtime.
pub(crate) fn set_meta(path: &Path, meta: &Meta, root: bool) -> Result<()> {
    let io = |what| move |e: rustix::io::Errno| Error::io(what, path)(e.into());
    let md = std::fs::symlink_metadata(path).map_err(Error::io("reading", path))?;
    let symlink = md.file_type().is_symlink();
    if root {
        rustix::fs::chownat(
            CWD,
            path,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io("setting owner of"))?;
    }
    if !symlink {
        rustix::fs::chmodat(CWD, path, Mode::from_raw_mode(meta.mode), AtFlags::empty())
            .map_err(io("setting mode of"))?;
    }
    let have = xattrs_of(path, root).map_err(Error::io("reading xattrs of", path))?;
    for x in have.iter().filter(|x| !meta.xattrs.contains(x)) {
        if !meta.xattrs.iter().any(|m| m.name == x.name) {
            xattr::remove(path, OsStr::from_bytes(&x.name))
                .map_err(Error::io("removing xattrs of", path))?;
        }
    }
    for x in meta.xattrs.iter().filter(|x| counts(&x.name, root)) {
        if !have.contains(x) {
            xattr::set(path, OsStr::from_bytes(&x.name), &x.value)
                .map_err(Error::io("setting xattrs of", path))?;
        }
    }
    let t = Timespec {
        tv_sec: meta.mtime,
        tv_nsec: i64::from(meta.mtime_nsec),
    };
    let ts = Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(CWD, path, &ts, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(io("setting mtime of"))?;
    Ok(())
}
