//! Putting the release back: what is not the release's is moved aside into the quarantine
//! (STATE/quarantine/TIME-ID/, mode 0700, for the admin to look at), entries are made anew from
//! the store (or from chunks fetched again), metadata is set in place.
//!
//! Order: parents before children (moving aside, making directories, links, devices, fifos,
//! metadata of what stays), then regular files, then the metadata of the directories made,
//! deepest first, so that writing their children does not change it afterwards.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, FileType, Mode};
use semithin_store::checkout::restore_file;
use semithin_store::object::{DeviceKind, Entry, EntryKind, FileContent, Meta};

use super::meta;
use super::objects::Objects;
use super::scan::{Finding, Fix, at, join};
use crate::error::{Error, Result};

/// Quarantine directories kept; older ones are removed when a new one is made.
const KEEP_QUARANTINES: usize = 8;

/// Where one verification moves things aside: made on the first move.
pub(crate) struct Quarantine {
    base: PathBuf,
    dir: PathBuf,
    made: bool,
}

impl Quarantine {
    pub fn new(base: &Path, release: &str, now: i64) -> Self {
        Self {
            base: base.to_owned(),
            dir: base.join(format!("{now}-{}", crate::short(release))),
            made: false,
        }
    }

    /// The directory, if anything was moved into it.
    pub fn used(&self) -> Option<&Path> {
        self.made.then_some(self.dir.as_path())
    }

    fn make(&mut self) -> Result<()> {
        if self.made {
            return Ok(());
        }
        for d in [&self.base, &self.dir] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(Error::io("creating", d))?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .map_err(Error::io("setting mode of", d))?;
        }
        self.made = true;
        // The oldest go: names start with the time.
        let mut old = super::scan::names(&self.base).map_err(Error::io("listing", &self.base))?;
        old.retain(|n| n.first().is_some_and(u8::is_ascii_digit));
        old.sort_by_key(|n| {
            let s = String::from_utf8_lossy(n);
            s.split('-').next().and_then(|t| t.parse::<i64>().ok())
        });
        let excess = old.len().saturating_sub(KEEP_QUARANTINES);
        for n in &old[..excess] {
            let p = self.base.join(OsStr::from_bytes(n));
            if p != self.dir {
                crate::deploy::remove_dir(&p)?;
            }
        }
        Ok(())
    }

    /// Moves what is at `from` to `AREA/REL` in the quarantine; false when nothing is there.
    /// Across file systems it is removed instead.
    pub fn aside(&mut self, from: &Path, area: &str, rel: &[u8]) -> Result<bool> {
        let md = match std::fs::symlink_metadata(from) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("reading", from)(e)),
        };
        self.make()?;
        let to = self.dir.join(area).join(OsStr::from_bytes(rel));
        let parent = to.parent().expect("below the quarantine directory");
        std::fs::create_dir_all(parent).map_err(Error::io("creating", parent))?;
        match std::fs::rename(from, &to) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
                if md.is_dir() {
                    crate::deploy::remove_dir(from)?;
                } else {
                    std::fs::remove_file(from).map_err(Error::io("removing", from))?;
                }
                Ok(true)
            }
            Err(e) => Err(Error::io("moving aside", from)(e)),
        }
    }
}

enum Action {
    Aside,
    MakeDir(Meta),
    Make(Entry),
    File(FileContent, Meta),
    SetMeta(Meta),
}

struct Step {
    finding: usize,
    rel: Vec<u8>,
    action: Action,
}

/// Puts the findings right; for each finding, `None` when it was put right, else why not.
pub(crate) fn repair(
    objs: &mut Objects,
    root: &Path,
    findings: &[Finding],
    q: &mut Quarantine,
    cache: &Path,
    root_owner: bool,
) -> Vec<Option<String>> {
    let mut failed: Vec<Option<String>> = vec![None; findings.len()];
    let mut steps = Vec::new();
    for (i, f) in findings.iter().enumerate() {
        if let Err(e) = plan(objs, i, f, &mut steps) {
            failed[i] = Some(e.to_string());
        }
    }
    let chunks: Vec<_> = steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::File(c, _) => Some(c.chunks.iter().map(|c| c.id)),
            _ => None,
        })
        .flatten()
        .collect();
    let fetch_error = objs.ensure_chunks(chunks).err().map(|e| e.to_string());
    for s in &steps {
        if failed[s.finding].is_some() {
            continue;
        }
        let path = at(root, &s.rel);
        let r = match &s.action {
            Action::Aside => q.aside(&path, "deployment", &s.rel).map(|_| ()),
            Action::MakeDir(_) => std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .map_err(Error::io("creating directory", &path)),
            Action::Make(e) => make(&path, e, root_owner),
            Action::SetMeta(m) if !path.is_dir() => meta::set_meta(&path, m, root_owner),
            Action::SetMeta(_) | Action::File(..) => Ok(()),
        };
        if let Err(e) = r {
            fail(&mut failed, s.finding, e.to_string());
        }
    }
    let get = |id: &semithin_store::ChunkId| objs.chunk(id);
    for s in &steps {
        let Action::File(c, m) = &s.action else {
            continue;
        };
        if failed[s.finding].is_some() {
            continue;
        }
        let path = at(root, &s.rel);
        if let Err(e) = restore_file(&get, Some(cache), &path, c, m) {
            let why = match &fetch_error {
                Some(f) => format!("{e} (fetching damaged chunks again failed: {f})"),
                None => e.to_string(),
            };
            fail(&mut failed, s.finding, why);
        }
    }
    for s in steps.iter().rev() {
        let m = match &s.action {
            Action::MakeDir(m) => m,
            Action::SetMeta(m) if at(root, &s.rel).is_dir() => m,
            _ => continue,
        };
        if failed[s.finding].is_some() {
            continue;
        }
        if let Err(e) = meta::set_meta(&at(root, &s.rel), m, root_owner) {
            fail(&mut failed, s.finding, e.to_string());
        }
    }
    failed
}

/// Keeps the first reason a finding could not be put right.
fn fail(failed: &mut [Option<String>], i: usize, e: String) {
    if failed[i].is_none() {
        failed[i] = Some(e);
    }
}

/// The steps of one finding; a directory made anew brings every entry below it.
fn plan(objs: &mut Objects, i: usize, f: &Finding, steps: &mut Vec<Step>) -> Result<()> {
    let step = |rel: &[u8], action| Step {
        finding: i,
        rel: rel.to_vec(),
        action,
    };
    match &f.fix {
        Fix::Remove => steps.push(step(&f.rel, Action::Aside)),
        Fix::Meta(e) => steps.push(step(&f.rel, Action::SetMeta(e.meta.clone()))),
        Fix::Replace(e) => {
            steps.push(step(&f.rel, Action::Aside));
            let mut stack = vec![(f.rel.clone(), e.clone())];
            while let Some((rel, e)) = stack.pop() {
                match e.kind {
                    EntryKind::Dir(t) => {
                        steps.push(step(&rel, Action::MakeDir(e.meta)));
                        let tree = objs.tree(t)?;
                        for c in tree.entries.into_iter().rev() {
                            stack.push((join(&rel, &c.name), c));
                        }
                    }
                    EntryKind::File(c) => steps.push(step(&rel, Action::File(c, e.meta))),
                    _ => steps.push(step(&rel, Action::Make(e))),
                }
            }
        }
    }
    Ok(())
}

/// Makes a symlink, device node or fifo with its metadata.
fn make(path: &Path, e: &Entry, root_owner: bool) -> Result<()> {
    let io = |what| move |err: rustix::io::Errno| Error::io(what, path)(err.into());
    match &e.kind {
        EntryKind::Symlink(target) => {
            rustix::fs::symlinkat(OsStr::from_bytes(target), CWD, path)
                .map_err(io("creating symlink"))?;
        }
        EntryKind::Device { kind, major, minor } => {
            let ft = match kind {
                DeviceKind::Char => FileType::CharacterDevice,
                DeviceKind::Block => FileType::BlockDevice,
            };
            let dev = rustix::fs::makedev(*major, *minor);
            rustix::fs::mknodat(CWD, path, ft, Mode::from_raw_mode(0o600), dev)
                .map_err(io("creating device node"))?;
        }
        EntryKind::Fifo => {
            rustix::fs::mknodat(CWD, path, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                .map_err(io("creating fifo"))?;
        }
        EntryKind::Dir(_) | EntryKind::File(_) => unreachable!("made elsewhere"),
    }
    meta::set_meta(path, &e.meta, root_owner)
}
