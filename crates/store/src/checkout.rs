//! Materialising a commit into a directory, identical in content and metadata.
//!
//! Order: directories are made first (private mode), then files are written in parallel (each
//! chunk verified before it is written) with their metadata, then symlinks, devices and fifos,
//! then hardlinks, and last the directories' own metadata, deepest first, so writing children
//! does not change a directory's mtime afterwards.
//!
//! Names come from verified tree objects, which cannot hold `/`, `.` or `..`; every entry is
//! created with O_EXCL / O_NOFOLLOW in a directory this checkout made, so nothing is written
//! outside DEST.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::CommitId;
use crate::object::{DeviceKind, EntryKind, FileContent, Meta};
use crate::objects::ObjectStore;
use crate::progress::Progress;
use crate::repo::Repo;

#[derive(Clone, Debug, Default)]
pub struct CheckoutOptions {
    /// Share files with earlier checkouts through this cache of hardlinkable files.
    pub cache: Option<PathBuf>,
    /// Sync the written files before returning.
    pub fsync: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckoutStats {
    pub commit: String,
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    /// Bytes written to new files (the rest was linked from the cache).
    pub written_bytes: u64,
    pub linked_files: u64,
    pub warnings: Vec<String>,
}

/// One entry to create, in tree order (parents before children).
struct Item {
    path: PathBuf,
    rel: Vec<u8>,
    meta: Meta,
    kind: EntryKind,
}

/// Walks a commit's tree into a list of items, parents first.
fn plan(
    store: &ObjectStore,
    commit: CommitId,
    dest: &Path,
) -> Result<(Vec<Item>, crate::object::Commit)> {
    let c = store.get_commit(&commit)?;
    let mut items = Vec::new();
    let mut stack = vec![(c.tree, dest.to_owned(), Vec::new())];
    while let Some((tree_id, dir, rel)) = stack.pop() {
        let tree = store.get_tree(&tree_id)?;
        for e in tree.entries {
            let path = dir.join(std::ffi::OsStr::from_bytes(&e.name));
            let mut r = rel.clone();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(&e.name);
            if let EntryKind::Dir(t) = e.kind {
                stack.push((t, path.clone(), r.clone()));
            }
            items.push(Item {
                path,
                rel: r,
                meta: e.meta,
                kind: e.kind,
            });
        }
    }
    // The stack visits depth-first but not in path order; sort so parents come first.
    items.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok((items, c))
}

pub fn checkout(
    repo: &Repo,
    commit: CommitId,
    dest: &Path,
    opts: &CheckoutOptions,
    progress: &dyn Progress,
) -> Result<CheckoutStats> {
    prepare_dest(dest)?;
    let store = &repo.objects;
    let (items, c) = plan(store, commit, dest)?;
    let root_owner = rustix::process::geteuid().is_root();
    let mut stats = CheckoutStats {
        commit: commit.to_hex(),
        entries: items.len() as u64,
        ..CheckoutStats::default()
    };
    if !root_owner {
        stats
            .warnings
            .push("not running as root: owners and privileged xattrs are not restored".into());
    }
    // Hardlink groups: every path but the first is linked at the end.
    let mut linked: HashSet<&[u8]> = HashSet::new();
    for g in &c.hardlinks {
        for (i, p) in g.iter().enumerate() {
            let Some(item) = items
                .binary_search_by(|it| it.rel.as_slice().cmp(p))
                .ok()
                .map(|i| &items[i])
            else {
                return Err(bad_commit(
                    commit,
                    format!("hardlink path {} is not in the tree", lossy(p)),
                ));
            };
            if !matches!(item.kind, EntryKind::File(_)) {
                return Err(bad_commit(
                    commit,
                    format!("hardlink path {} is not a file", lossy(p)),
                ));
            }
            if i > 0 {
                linked.insert(p);
            }
        }
    }
    for it in &items {
        if matches!(it.kind, EntryKind::Dir(_)) {
            std::fs::create_dir(&it.path).map_err(Error::io("creating directory", &it.path))?;
        }
    }
    let files: Vec<&Item> = items
        .iter()
        .filter(|it| matches!(it.kind, EntryKind::File(_)) && !linked.contains(it.rel.as_slice()))
        .collect();
    progress.phase("writing", Some(files.iter().map(|it| file_size(it)).sum()));
    let written = AtomicU64::new(0);
    let linked_files = AtomicU64::new(0);
    let cache = opts.cache.as_deref();
    // A cache file serves one path of a checkout: files that are separate in the tree stay
    // separate inodes even when their content and metadata are equal.
    let used: Mutex<HashSet<PathBuf>> = Mutex::default();
    files.par_iter().try_for_each(|it| -> Result<()> {
        let EntryKind::File(content) = &it.kind else {
            unreachable!()
        };
        let cache = cache.filter(|c| {
            used.lock()
                .expect("lock")
                .insert(cache_path(c, content, &it.meta))
        });
        match cache {
            Some(cache) if link_from_cache(cache, content, &it.meta, &it.path)? => {
                linked_files.fetch_add(1, Ordering::Relaxed);
            }
            Some(cache) => {
                write_to_cache(store, cache, content, &it.meta, root_owner)?;
                if !link_from_cache(cache, content, &it.meta, &it.path)? {
                    return Err(Error::io("linking from cache", &it.path)(
                        std::io::Error::other("cache entry vanished"),
                    ));
                }
                written.fetch_add(content.size, Ordering::Relaxed);
            }
            None => {
                write_file(store, &it.path, content, &it.meta, root_owner)?;
                written.fetch_add(content.size, Ordering::Relaxed);
            }
        }
        progress.advance(content.size);
        Ok(())
    })?;
    stats.files = files.len() as u64;
    stats.bytes = files.iter().map(|it| file_size(it)).sum();
    stats.written_bytes = written.into_inner();
    stats.linked_files = linked_files.into_inner();
    for it in &items {
        match &it.kind {
            EntryKind::Symlink(target) => {
                rustix::fs::symlinkat(std::ffi::OsStr::from_bytes(target), CWD, &it.path)
                    .map_err(|e| Error::io("creating symlink", &it.path)(e.into()))?;
                set_path_meta(&it.path, &it.meta, true, root_owner)?;
            }
            EntryKind::Device { kind, major, minor } => {
                let ft = match kind {
                    DeviceKind::Char => FileType::CharacterDevice,
                    DeviceKind::Block => FileType::BlockDevice,
                };
                let dev = rustix::fs::makedev(*major, *minor);
                rustix::fs::mknodat(CWD, &it.path, ft, Mode::from_raw_mode(0o600), dev)
                    .map_err(|e| Error::io("creating device node", &it.path)(e.into()))?;
                set_path_meta(&it.path, &it.meta, false, root_owner)?;
            }
            EntryKind::Fifo => {
                rustix::fs::mknodat(CWD, &it.path, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                    .map_err(|e| Error::io("creating fifo", &it.path)(e.into()))?;
                set_path_meta(&it.path, &it.meta, false, root_owner)?;
            }
            EntryKind::Dir(_) | EntryKind::File(_) => {}
        }
    }
    for g in &c.hardlinks {
        let first = dest.join(std::ffi::OsStr::from_bytes(&g[0]));
        for p in &g[1..] {
            let path = dest.join(std::ffi::OsStr::from_bytes(p));
            std::fs::hard_link(&first, &path).map_err(Error::io("creating hardlink", &path))?;
        }
    }
    for it in items.iter().rev() {
        if matches!(it.kind, EntryKind::Dir(_)) {
            set_path_meta(&it.path, &it.meta, false, root_owner)?;
        }
    }
    set_path_meta(dest, &c.root_meta, false, root_owner)?;
    if opts.fsync {
        let d = File::open(dest).map_err(Error::io("opening", dest))?;
        rustix::fs::syncfs(&d).map_err(|e| Error::io("syncing", dest)(e.into()))?;
    }
    Ok(stats)
}

fn file_size(it: &Item) -> u64 {
    match &it.kind {
        EntryKind::File(c) => c.size,
        _ => 0,
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn bad_commit(id: CommitId, reason: String) -> Error {
    Error::BadObject {
        kind: "commit",
        id: id.to_hex(),
        reason,
    }
}

/// DEST must be missing (it is made) or an empty directory.
fn prepare_dest(dest: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dest) {
        Ok(md) if md.is_dir() => {
            let mut rd = std::fs::read_dir(dest).map_err(Error::io("reading", dest))?;
            if rd.next().is_some() {
                return Err(Error::DestNotEmpty {
                    path: dest.to_owned(),
                });
            }
            Ok(())
        }
        Ok(_) => Err(Error::DestNotEmpty {
            path: dest.to_owned(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dest).map_err(Error::io("creating", dest))
        }
        Err(e) => Err(Error::io("reading", dest)(e)),
    }
}

/// Writes a file's content, each chunk verified, and sets its metadata.
fn write_file(
    store: &ObjectStore,
    path: &Path,
    content: &FileContent,
    meta: &Meta,
    root: bool,
) -> Result<()> {
    write_file_from(&|id| store.get_chunk(id), path, content, meta, root)
}

/// Writes a file from chunks `get` returns (each must be verified by `get`), with metadata.
fn write_file_from(
    get: &dyn Fn(&crate::id::ChunkId) -> Result<Vec<u8>>,
    path: &Path,
    content: &FileContent,
    meta: &Meta,
    root: bool,
) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc_o_nofollow())
        .open(path)
        .map_err(Error::io("creating", path))?;
    let mut w = BufWriter::with_capacity(256 << 10, f);
    for c in &content.chunks {
        let data = get(&c.id)?;
        w.write_all(&data).map_err(Error::io("writing", path))?;
    }
    let f = w
        .into_inner()
        .map_err(|e| Error::io("writing", path)(e.into_error()))?;
    set_file_meta(&f, path, meta, root)
}

fn libc_o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

fn timestamps(meta: &Meta) -> Timestamps {
    let t = Timespec {
        tv_sec: meta.mtime,
        tv_nsec: i64::from(meta.mtime_nsec),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Owner, mode, xattrs and mtime of an open regular file. The owner goes first because chown
/// clears setuid bits and file capabilities.
fn set_file_meta(f: &File, path: &Path, meta: &Meta, root: bool) -> Result<()> {
    let io = |what| move |e: rustix::io::Errno| Error::io(what, path)(e.into());
    if root {
        rustix::fs::fchown(
            f,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
        )
        .map_err(io("setting owner of"))?;
    }
    rustix::fs::fchmod(f, Mode::from_raw_mode(meta.mode)).map_err(io("setting mode of"))?;
    for x in &meta.xattrs {
        let name = std::ffi::OsStr::from_bytes(&x.name);
        if let Err(e) = xattr::FileExt::set_xattr(f, name, &x.value)
            && root
        {
            return Err(Error::io("setting xattrs of", path)(e));
        }
    }
    rustix::fs::futimens(f, &timestamps(meta)).map_err(io("setting mtime of"))?;
    Ok(())
}

/// Metadata of a directory, symlink, device or fifo, by path.
fn set_path_meta(path: &Path, meta: &Meta, symlink: bool, root: bool) -> Result<()> {
    let io = |what| move |e: rustix::io::Errno| Error::io(what, path)(e.into());
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
    for x in &meta.xattrs {
        let name = std::ffi::OsStr::from_bytes(&x.name);
        if let Err(e) = xattr::set(path, name, &x.value)
            && root
        {
            return Err(Error::io("setting xattrs of", path)(e));
        }
    }
    rustix::fs::utimensat(CWD, path, &timestamps(meta), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(io("setting mtime of"))?;
    Ok(())
}

/// The cache name of a file: its content and every metadata field an inode carries.
fn cache_path(cache: &Path, content: &FileContent, meta: &Meta) -> PathBuf {
    let mut h = blake3::Hasher::new_derive_key("semithin 2026-11 checkout cache key v1");
    h.update(content.hash.as_bytes());
    h.update(&content.size.to_le_bytes());
    h.update(&postcard::to_stdvec(meta).expect("meta encodes"));
    let hash = h.finalize();
    let bytes = hash.as_bytes();
    cache
        .join(hex::encode(&bytes[..1]))
        .join(hex::encode(&bytes[1..]))
}

/// Links DEST to a cached file with the same content and metadata; false when there is none.
fn link_from_cache(cache: &Path, content: &FileContent, meta: &Meta, dest: &Path) -> Result<bool> {
    let cp = cache_path(cache, content, meta);
    match std::fs::symlink_metadata(&cp) {
        // A cached file that was changed in place (through a checkout sharing it) is not used.
        Ok(md) if md.is_file() && md.len() == content.size && md.mtime() == meta.mtime => {}
        Ok(_) => {
            std::fs::remove_file(&cp).map_err(Error::io("removing stale cache entry", &cp))?;
            return Ok(false);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("reading", &cp)(e)),
    }
    match std::fs::hard_link(&cp, dest) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.raw_os_error() == Some(18) => Err(Error::io("linking from the cache", dest)(
            std::io::Error::other(format!(
                "the cache {} is on another filesystem than the checkout",
                cache.display()
            )),
        )),
        Err(e) => Err(Error::io("linking from the cache", dest)(e)),
    }
}

/// Puts one regular file back as the tree says (content verified, metadata), replacing what is at
/// `path` by rename, and drops its checkout-cache entry, which may share the damaged inode.
pub fn restore_file(
    get: &dyn Fn(&crate::id::ChunkId) -> Result<Vec<u8>>,
    cache: Option<&Path>,
    path: &Path,
    content: &FileContent,
    meta: &Meta,
) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::io("restoring", path)(std::io::ErrorKind::InvalidInput.into()))?;
    let tmp = crate::fsutil::unique_tmp(dir, "restore");
    let root = rustix::process::geteuid().is_root();
    if let Err(e) = write_file_from(get, &tmp, content, meta, root) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(Error::io("replacing", path))?;
    if let Some(c) = cache {
        let cp = cache_path(c, content, meta);
        match std::fs::remove_file(&cp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("removing", &cp)(e)),
        }
    }
    Ok(())
}

fn write_to_cache(
    store: &ObjectStore,
    cache: &Path,
    content: &FileContent,
    meta: &Meta,
    root: bool,
) -> Result<()> {
    let cp = cache_path(cache, content, meta);
    let dir = cp.parent().expect("cache path has a parent");
    std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    let tmp = crate::fsutil::unique_tmp(cache, "cache");
    write_file(store, &tmp, content, meta, root)?;
    std::fs::rename(&tmp, &cp).map_err(Error::io("renaming into", &cp))
}
