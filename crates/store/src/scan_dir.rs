//! Reading a source directory into an import.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::error::{Error, Result};
use crate::import::Importer;
use crate::memtree::{self, Node};
use crate::object::{DeviceKind, EntryKind, Meta, Xattr};

/// Reads the metadata of `path` (not following symlinks) as stored.
pub fn read_meta(path: &Path, md: &Metadata) -> Result<Meta> {
    let mut xattrs = Vec::new();
    let names = xattr::list(path).map_err(Error::io("listing xattrs of", path))?;
    for name in names {
        // An attribute removed between list and get is simply gone.
        if let Some(value) =
            xattr::get(path, &name).map_err(Error::io("reading xattrs of", path))?
        {
            xattrs.push(Xattr {
                name: name.as_bytes().to_vec(),
                value,
            });
        }
    }
    xattrs.sort();
    Ok(Meta {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime(),
        mtime_nsec: md.mtime_nsec() as u32,
        xattrs,
    })
}

struct Walk<'i, 'r> {
    imp: &'i mut Importer<'r>,
    root_dev: u64,
    /// Regular files with more than one link: (dev, ino) -> (content, first path).
    inodes: HashMap<(u64, u64), (usize, Vec<u8>)>,
    total: u64,
}

pub fn scan(imp: &mut Importer, source: &Path) -> Result<()> {
    let md = std::fs::symlink_metadata(source).map_err(Error::io("reading", source))?;
    imp.set_root_meta(read_meta(source, &md)?);
    let mut w = Walk {
        imp,
        root_dev: md.dev(),
        inodes: HashMap::new(),
        total: 0,
    };
    let mut path = Vec::new();
    w.dir(source, &mut path)?;
    w.imp.progress_phase("storing", Some(w.total));
    Ok(())
}

impl Walk<'_, '_> {
    fn dir(&mut self, dir: &Path, rel: &mut Vec<Vec<u8>>) -> Result<()> {
        let rd = std::fs::read_dir(dir).map_err(Error::io("listing", dir))?;
        for de in rd {
            let de = de.map_err(Error::io("listing", dir))?;
            let path = de.path();
            let md = std::fs::symlink_metadata(&path).map_err(Error::io("reading", &path))?;
            rel.push(de.file_name().as_bytes().to_vec());
            self.entry(&path, &md, rel)?;
            rel.pop();
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path, md: &Metadata, rel: &mut Vec<Vec<u8>>) -> Result<()> {
        let ft = md.file_type();
        let rel_str = || String::from_utf8_lossy(&rel.join(&b'/')).into_owned();
        if ft.is_socket() {
            self.imp.warn(format!("skipped socket {}", rel_str()));
            return Ok(());
        }
        let meta = read_meta(path, md)?;
        let node = if ft.is_dir() {
            self.imp.counts.dirs += 1;
            let node = Node::empty_dir(meta);
            self.place(rel, node)?;
            if md.dev() == self.root_dev {
                self.dir(path, rel)?;
            } else {
                self.imp.warn(format!(
                    "{} is a mount point: stored empty, its contents skipped",
                    rel_str()
                ));
            }
            return Ok(());
        } else if ft.is_file() {
            self.imp.counts.files += 1;
            let joined = rel.join(&b'/');
            if md.nlink() > 1 {
                if let Some((content, first)) = self.inodes.get(&(md.dev(), md.ino())) {
                    self.imp
                        .links
                        .entry(first.clone())
                        .or_default()
                        .push(joined);
                    Node::PendingFile {
                        meta,
                        content: *content,
                    }
                } else {
                    let content = self.imp.add_path(path.to_owned(), md.size());
                    self.total += md.size();
                    self.inodes.insert((md.dev(), md.ino()), (content, joined));
                    Node::PendingFile { meta, content }
                }
            } else {
                self.total += md.size();
                Node::PendingFile {
                    meta,
                    content: self.imp.add_path(path.to_owned(), md.size()),
                }
            }
        } else if ft.is_symlink() {
            self.imp.counts.symlinks += 1;
            let target = std::fs::read_link(path).map_err(Error::io("reading link", path))?;
            Node::Done {
                meta,
                kind: EntryKind::Symlink(target.as_os_str().as_bytes().to_vec()),
            }
        } else {
            self.imp.counts.others += 1;
            let kind = if ft.is_fifo() {
                EntryKind::Fifo
            } else {
                let rdev = md.rdev();
                EntryKind::Device {
                    kind: if ft.is_block_device() {
                        DeviceKind::Block
                    } else {
                        DeviceKind::Char
                    },
                    major: rustix::fs::major(rdev),
                    minor: rustix::fs::minor(rdev),
                }
            };
            Node::Done { meta, kind }
        };
        self.place(rel, node)
    }

    fn place(&mut self, rel: &[Vec<u8>], node: Node) -> Result<()> {
        memtree::place(&mut self.imp.root, rel, node).map_err(|e| Error::BadSource {
            path: String::from_utf8_lossy(&rel.join(&b'/'))
                .into_owned()
                .into(),
            reason: format!("{e:?}"),
        })
    }
}
