//! Reading a source directory into an import.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::import::Importer;
use crate::memtree::{self, Node};
use crate::object::{DeviceKind, EntryKind, Meta, PATH_MAX, Xattr};

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
    // Directories still to list, with their paths in the tree: an explicit stack, so neither
    // the call stack nor the open directories grow with the depth of the source.
    let mut dirs = vec![(source.to_owned(), Vec::new())];
    while let Some((dir, rel)) = dirs.pop() {
        w.dir(&dir, rel, &mut dirs)?;
    }
    w.imp.progress_phase("storing", Some(w.total));
    Ok(())
}

impl Walk<'_, '_> {
    /// Places the entries of `dir`; its subdirectories to scan go onto `dirs`.
    fn dir(
        &mut self,
        dir: &Path,
        mut rel: Vec<Vec<u8>>,
        dirs: &mut Vec<(PathBuf, Vec<Vec<u8>>)>,
    ) -> Result<()> {
        let rd = std::fs::read_dir(dir).map_err(Error::io("listing", dir))?;
        for de in rd {
            let de = de.map_err(Error::io("listing", dir))?;
            let path = de.path();
            rel.push(de.file_name().as_bytes().to_vec());
            // Refused before the source is read further: no deeper than a path may go.
            memtree::check_path(&rel).map_err(|e| bad_source(&rel, e))?;
            if path.as_os_str().len() >= PATH_MAX {
                return Err(Error::BadSource {
                    path,
                    reason: format!(
                        "the path is longer than the {} bytes the kernel takes; commit the \
                         source from a shorter path, or as a tar archive",
                        PATH_MAX - 1
                    ),
                });
            }
            let md = std::fs::symlink_metadata(&path).map_err(Error::io("reading", &path))?;
            if self.entry(&path, &md, &rel)? {
                dirs.push((path, rel.clone()));
            }
            rel.pop();
        }
        Ok(())
    }

    /// Places one entry; true for a directory whose content is to be scanned.
    fn entry(&mut self, path: &Path, md: &Metadata, rel: &[Vec<u8>]) -> Result<bool> {
        let ft = md.file_type();
        let rel_str = || String::from_utf8_lossy(&rel.join(&b'/')).into_owned();
        if ft.is_socket() {
            self.imp.warn(format!("skipped socket {}", rel_str()));
            return Ok(false);
        }
        let meta = read_meta(path, md)?;
        let node = if ft.is_dir() {
            self.imp.counts.dirs += 1;
            let node = Node::empty_dir(meta);
            self.place(rel, node)?;
            if md.dev() == self.root_dev {
                return Ok(true);
            }
            self.imp.warn(format!(
                "{} is a mount point: stored empty, its contents skipped",
                rel_str()
            ));
            return Ok(false);
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
        self.place(rel, node)?;
        Ok(false)
    }

    fn place(&mut self, rel: &[Vec<u8>], node: Node) -> Result<()> {
        memtree::place(&mut self.imp.root, rel, node).map_err(|e| bad_source(rel, e))
    }
}

fn bad_source(rel: &[Vec<u8>], e: memtree::PlaceError) -> Error {
    Error::BadSource {
        path: String::from_utf8_lossy(&rel.join(&b'/'))
            .into_owned()
            .into(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use rustix::fs::{CWD, Mode, OFlags, mkdirat, openat};

    use crate::Error;
    use crate::import::{CommitOptions, commit};
    use crate::repo::{Access, Config, Repo};
    use crate::{NoProgress, channel};

    /// `depth` directories named `a`, one in the other, below `root` (made through directory
    /// descriptors: the deep paths are longer than the kernel takes).
    fn nest(root: &std::path::Path, depth: usize) {
        let dir = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
        std::fs::create_dir_all(root).unwrap();
        let mut fd = openat(CWD, root, dir, Mode::empty()).unwrap();
        for _ in 0..depth {
            mkdirat(&fd, "a", Mode::from_raw_mode(0o755)).unwrap();
            fd = openat(&fd, "a", dir, Mode::empty()).unwrap();
        }
    }

    /// Regression: a source 12,000 directories deep overflowed the stack of the scan; one
    /// deeper than a path may go is refused with its path, before it is read any further.
    #[test]
    fn a_path_too_deep_to_check_out_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        // Deep trees are slow to make and remove on a disk: the source is in memory.
        let s = tempfile::tempdir_in("/dev/shm").unwrap();
        let (src, repo_dir) = (s.path().join("src"), d.path().join("repo"));
        Repo::init(&repo_dir, Config::default()).unwrap();
        let repo = Repo::open(&repo_dir, Access::Write).unwrap();
        nest(&src, 2100);
        let opts = CommitOptions {
            channel: "c",
            message: "",
            time: Some(0),
        };
        let e = commit(&repo, &src, &opts, &NoProgress).err().unwrap();
        std::fs::remove_dir_all(&src).unwrap();
        // The source's own path counts too, so the refusal comes a little before 4094 bytes
        // in the tree.
        let Error::BadSource { path, reason } = &e else {
            panic!("{e}")
        };
        let p = path.to_string_lossy();
        assert!(
            p.starts_with(&src.join("a/a/a").to_string_lossy().into_owned())
                && p.len() >= 4096
                && reason.contains("the path is longer than the 4095 bytes the kernel takes"),
            "{e}"
        );
        assert_eq!(channel::head(&repo, "c").unwrap(), None);
        // Deep, but within the limits, it is committed (each level costs a walk of its whole
        // path in the kernel, so not at the very limit here).
        nest(&src, 500);
        let stats = commit(&repo, &src, &opts, &NoProgress).unwrap();
        assert_eq!(stats.dirs, 500);
    }
}
