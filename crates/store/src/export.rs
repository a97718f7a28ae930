//! Exporting a commit as a tar archive (pax, with xattrs, hardlinks and nanosecond mtimes) or as
//! a squashfs image.
//!
//! squashfs is written by `tar2sqfs` (squashfs-tools-ng) from the tar stream: the Rust squashfs
//! writer we looked at (backhand) drops xattrs and hardlinks, and a root filesystem without its
//! file capabilities does not work the same way.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use tar::{EntryType, Header};

use crate::error::{Error, Result};
use crate::id::CommitId;
use crate::object::{DeviceKind, EntryKind, Meta};
use crate::objects::ObjectStore;
use crate::progress::Progress;
use crate::walk::{lossy, walk};

fn header(meta: &Meta, kind: EntryType, size: u64) -> Header {
    let mut h = Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(meta.mode);
    h.set_uid(u64::from(meta.uid));
    h.set_gid(u64::from(meta.gid));
    h.set_mtime(meta.mtime.max(0) as u64);
    h.set_size(size);
    h
}

/// Options of a tar export.
#[derive(Clone, Copy, Debug, Default)]
pub struct TarOptions {
    /// Leave out POSIX ACLs (`system.posix_acl_*`), which squashfs cannot hold.
    pub drop_acls: bool,
}

fn is_acl(name: &[u8]) -> bool {
    name.starts_with(b"system.posix_acl_")
}

fn pax_records(meta: &Meta, opts: TarOptions) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if meta.mtime_nsec != 0 || meta.mtime < 0 {
        out.push((
            "mtime".to_owned(),
            format!("{}.{:09}", meta.mtime, meta.mtime_nsec).into_bytes(),
        ));
    }
    for x in meta
        .xattrs
        .iter()
        .filter(|x| !(opts.drop_acls && is_acl(&x.name)))
    {
        let name = std::str::from_utf8(&x.name).map_err(|_| Error::Tool {
            tool: "export",
            reason: format!(
                "xattr name {:?} is not UTF-8 and cannot go into a pax header",
                lossy(&x.name)
            ),
        })?;
        out.push((format!("SCHILY.xattr.{name}"), x.value.clone()));
    }
    Ok(out)
}

/// Appends one entry. Names and link targets longer than the header's 100 bytes travel in pax
/// `path` / `linkpath` records, never through tar-rs's path handling, so any stored name is kept.
fn emit<W: Write>(
    b: &mut tar::Builder<W>,
    path: &[u8],
    meta: &Meta,
    mut h: Header,
    link: Option<&[u8]>,
    data: &mut dyn std::io::Read,
    opts: TarOptions,
) -> Result<()> {
    let mut pax = pax_records(meta, opts)?;
    if path.len() > 100 {
        pax.push(("path".to_owned(), path.to_vec()));
    }
    let old = h.as_old_mut();
    let n = path.len().min(100);
    old.name[..n].copy_from_slice(&path[..n]);
    if let Some(link) = link {
        if link.len() > 100 {
            pax.push(("linkpath".to_owned(), link.to_vec()));
        }
        let n = link.len().min(100);
        old.linkname[..n].copy_from_slice(&link[..n]);
    }
    if !pax.is_empty() {
        b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(werr)?;
    }
    h.set_cksum();
    b.append(&h, data).map_err(werr)
}

fn werr(e: std::io::Error) -> Error {
    Error::Tool {
        tool: "export",
        reason: format!("writing the archive: {e}"),
    }
}

/// Writes `commit` as a tar stream to `out`. Returns the number of entries whose ACLs were left
/// out (see [`TarOptions::drop_acls`]).
pub fn write_tar(
    store: &ObjectStore,
    commit: CommitId,
    out: impl Write,
    opts: TarOptions,
    progress: &dyn Progress,
) -> Result<u64> {
    let c = store.get_commit(&commit)?;
    progress.phase("exporting", Some(c.bytes));
    let mut b = tar::Builder::new(out);
    let none = &mut std::io::empty();
    emit(
        &mut b,
        b"./",
        &c.root_meta,
        header(&c.root_meta, EntryType::Directory, 0),
        None,
        none,
        opts,
    )?;
    // Hardlink groups: the first member met in walk order carries the data.
    let mut group_of: HashMap<Vec<u8>, usize> = HashMap::new();
    for (i, g) in c.hardlinks.iter().enumerate() {
        for p in g {
            group_of.insert(p.clone(), i);
        }
    }
    let mut first_seen: HashMap<usize, Vec<u8>> = HashMap::new();
    let mut dropped =
        u64::from(opts.drop_acls && c.root_meta.xattrs.iter().any(|x| is_acl(&x.name)));
    walk(store, c.tree, &mut |path, e| {
        let meta = &e.meta;
        let none = &mut std::io::empty();
        if opts.drop_acls && meta.xattrs.iter().any(|x| is_acl(&x.name)) {
            dropped += 1;
        }
        match &e.kind {
            EntryKind::Dir(_) => {
                let mut p = path.to_vec();
                p.push(b'/');
                emit(
                    &mut b,
                    &p,
                    meta,
                    header(meta, EntryType::Directory, 0),
                    None,
                    none,
                    opts,
                )
            }
            EntryKind::File(content) => {
                if let Some(g) = group_of.get(path) {
                    if let Some(first) = first_seen.get(g) {
                        return emit(
                            &mut b,
                            path,
                            meta,
                            header(meta, EntryType::Link, 0),
                            Some(first),
                            none,
                            opts,
                        );
                    }
                    first_seen.insert(*g, path.to_vec());
                }
                let mut reader = ChunkReader {
                    store,
                    chunks: &content.chunks,
                    next: 0,
                    buf: Vec::new(),
                    pos: 0,
                };
                let h = header(meta, EntryType::Regular, content.size);
                emit(&mut b, path, meta, h, None, &mut reader, opts)?;
                progress.advance(content.size);
                Ok(())
            }
            EntryKind::Symlink(target) => emit(
                &mut b,
                path,
                meta,
                header(meta, EntryType::Symlink, 0),
                Some(target),
                none,
                opts,
            ),
            EntryKind::Device { kind, major, minor } => {
                let t = match kind {
                    DeviceKind::Char => EntryType::Char,
                    DeviceKind::Block => EntryType::Block,
                };
                let mut h = header(meta, t, 0);
                h.set_device_major(*major).map_err(werr)?;
                h.set_device_minor(*minor).map_err(werr)?;
                emit(&mut b, path, meta, h, None, none, opts)
            }
            EntryKind::Fifo => emit(
                &mut b,
                path,
                meta,
                header(meta, EntryType::Fifo, 0),
                None,
                none,
                opts,
            ),
        }
    })?;
    b.into_inner().map_err(werr)?.flush().map_err(werr)?;
    Ok(dropped)
}

/// Reads a file's content chunk by chunk, each verified.
struct ChunkReader<'a> {
    store: &'a ObjectStore,
    chunks: &'a [crate::object::ChunkRef],
    next: usize,
    buf: Vec<u8>,
    pos: usize,
}

impl std::io::Read for ChunkReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(c) = self.chunks.get(self.next) else {
                return Ok(0);
            };
            self.buf = self.store.get_chunk(&c.id).map_err(std::io::Error::other)?;
            self.pos = 0;
            self.next += 1;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Writes `commit` as a squashfs image (zstd) at `out`, through `tar2sqfs`. squashfs has no
/// POSIX ACLs: they are left out, and the number of entries that had some is returned.
pub fn write_squashfs(
    store: &ObjectStore,
    commit: CommitId,
    out: &Path,
    progress: &dyn Progress,
) -> Result<u64> {
    let tool = |reason: String| Error::Tool {
        tool: "tar2sqfs",
        reason,
    };
    let mut child = Command::new("tar2sqfs")
        .args(["--quiet", "--no-skip", "--force", "--compressor", "zstd"])
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| tool(format!("cannot run it ({e}); install squashfs-tools-ng")))?;
    let stdin = child.stdin.take().expect("piped");
    let opts = TarOptions { drop_acls: true };
    let written = write_tar(
        store,
        commit,
        std::io::BufWriter::new(stdin),
        opts,
        progress,
    );
    let output = child.wait_with_output().map_err(|e| tool(e.to_string()))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(out);
        return Err(tool(format!(
            "failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    written
}
