//! Self-repair: re-hash the running deployment against its release; put back what changed,
//! from the local store, or from the server when the store's copy is damaged too.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use semithin_store::checkout::restore_file;
use semithin_store::id::FileHash;
use semithin_store::object::{EntryKind, FileContent};
use semithin_store::pack::ObjKind;
use semithin_store::{ChunkId, CommitId, transfer, walk};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::{Agent, now};

#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub release: Option<String>,
    pub files: u64,
    pub bytes: u64,
    /// One line per path found wrong.
    pub problems: Vec<String>,
    pub repaired: u64,
    /// Chunks fetched from the server because the local copy was damaged.
    pub refetched_chunks: u64,
}

/// What is wrong with a regular file, if anything.
fn check_file(path: &Path, content: &FileContent, mode: u32) -> Option<String> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => return Some(format!("cannot be read ({e})")),
    };
    if !md.is_file() {
        return Some("is no longer a regular file".into());
    }
    if md.len() != content.size {
        return Some(format!(
            "has {} bytes, the release has {}",
            md.len(),
            content.size
        ));
    }
    if md.permissions().mode() & 0o7777 != mode {
        return Some(format!(
            "has mode {:o}, the release has {:o}",
            md.permissions().mode() & 0o7777,
            mode
        ));
    }
    let mut h = FileHash::hasher();
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return Some(format!("cannot be read ({e})")),
    };
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
            }
            Err(e) => return Some(format!("cannot be read ({e})")),
        }
    }
    let _ = md.ino();
    (FileHash::from_hasher(&h) != content.hash).then(|| "content differs from the release".into())
}

impl Agent {
    /// Re-hashes every regular file of the running deployment; with `fix`, restores each one
    /// that differs.
    pub fn verify(&mut self, fix: bool) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let Some(release) = self.layout.current()? else {
            return Ok(report);
        };
        report.release = Some(release.clone());
        let id: CommitId = release.parse().map_err(|_| Error::Release {
            release: release.clone(),
            reason: "not a commit id".into(),
        })?;
        let root = self.layout.deployment(&release);
        let store = &self.repo().objects;
        let commit = store.get_commit(&id)?;
        let mut bad: Vec<(Vec<u8>, FileContent, semithin_store::object::Meta)> = Vec::new();
        walk::walk(store, commit.tree, &mut |rel, e| {
            let path = root.join(std::ffi::OsStr::from_bytes(rel));
            let problem = match &e.kind {
                EntryKind::File(c) => {
                    report.files += 1;
                    report.bytes += c.size;
                    let p = check_file(&path, c, e.meta.mode);
                    if p.is_some() {
                        bad.push((rel.to_vec(), c.clone(), e.meta.clone()));
                    }
                    p
                }
                EntryKind::Dir(_) => match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => None,
                    _ => Some("is no longer a directory (restage the release)".into()),
                },
                EntryKind::Symlink(t) => match std::fs::read_link(&path) {
                    Ok(x) if x.as_os_str().as_bytes() == t.as_slice() => None,
                    _ => Some("is no longer the release's symlink (restage the release)".into()),
                },
                _ => None,
            };
            if let Some(p) = problem {
                report
                    .problems
                    .push(format!("{}: {p}", String::from_utf8_lossy(rel)));
            }
            Ok(())
        })?;
        if fix && !bad.is_empty() {
            // Chunks the store cannot give back intact are fetched from the server, verified,
            // and used from memory.
            let mut damaged: HashSet<(ObjKind, [u8; 32])> = HashSet::new();
            for (_, c, _) in &bad {
                for ch in &c.chunks {
                    if store.get_chunk(&ch.id).is_err() {
                        damaged.insert((ObjKind::Chunk, *ch.id.as_bytes()));
                    }
                }
            }
            let mut fetched: HashMap<[u8; 32], Vec<u8>> = HashMap::new();
            if !damaged.is_empty() {
                let api = self.api.as_ref().ok_or_else(|| {
                    Error::Config(
                        "the local store is damaged and the machine is not enrolled".into(),
                    )
                })?;
                let refs = damaged
                    .iter()
                    .map(|(k, id)| format!("{}/{}", k.name(), hex::encode(id)))
                    .collect();
                let stream = api.objects("/api/v1/objects", refs)?;
                transfer::read_stream(&damaged, stream, |_, id, _, _, raw| {
                    fetched.insert(id, raw);
                    Ok(())
                })?;
                report.refetched_chunks = fetched.len() as u64;
            }
            let get = |id: &ChunkId| -> semithin_store::Result<Vec<u8>> {
                match fetched.get(id.as_bytes()) {
                    Some(b) => Ok(b.clone()),
                    None => store.get_chunk(id),
                }
            };
            let cache = self.repo().cache_dir();
            for (rel, c, meta) in &bad {
                let path = root.join(std::ffi::OsStr::from_bytes(rel));
                if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                    continue;
                }
                restore_file(&get, Some(&cache), &path, c, meta)?;
                report.repaired += 1;
            }
            self.say(&format!(
                "verify: {} file(s) restored in release {}",
                report.repaired,
                crate::short(&release)
            ));
        }
        self.state.last_verify = now();
        self.save()?;
        Ok(report)
    }
}
