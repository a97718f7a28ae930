//! `backup_dir` (`semithin agent --backup-dir DIR`): a copy of what the machine needs to get
//! back onto its kept deployments without a server, on a disk of its own, and `agent restore`.
//!
//! ```text
//! DIR/manifest.json          which releases the backup holds, which was current (written last)
//! DIR/repo/                  a semithin repository: the objects of those releases
//! DIR/trust/RELEASE/         the signed metadata (TUF) that release was verified with
//! DIR/trust/roots/N.root.json   every root version seen, for the walk from a trusted root
//! DIR/tmp/                   temporary names
//! ```
//!
//! After a cycle that left the machine on a confirmed release (never during a trial), and at
//! start, the agent brings the backup up to its kept deployments: objects the backup's
//! repository lacks are copied (verified as they are read from the machine's store), the
//! metadata of a release new to the backup is copied and verified as a restore would, then the
//! manifest is replaced atomically, and only then are releases no longer kept removed from it
//! (their metadata, and their objects by gc). A crash at any point leaves the previous manifest
//! and everything it names. A disk that is missing, not mounted, read-only or full is a warning
//! (logged and kept in `state.json` once per change), never a failure of the agent's work.

mod disk;
pub mod import;
pub mod manifest;
mod restore;
mod trust;

use std::collections::HashSet;
use std::path::Path;

use semithin_store::object::EntryKind;
use semithin_store::objects::ObjectStore;
use semithin_store::pack::ObjKind;
use semithin_store::repo::Config as RepoConfig;
use semithin_store::{Access, CommitId, NoProgress, Repo, TreeId};

pub use self::import::{Imported, ResultFile};
use self::manifest::{Entry, FORMAT, Manifest, Paths};
pub use self::restore::Restored;
use crate::error::{Error, Result};
use crate::{Agent, now, short};

/// A backup that could not be made: kept in `state.json` while it lasts, and reported.
pub type Warning = semithin_protocol::api::BackupWarning;

/// After a failed copy, the next try waits this long unless the kept releases change.
const RETRY_SECS: i64 = 3600;

/// What the agent remembers of its backups while it runs.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// The kept releases (current first) the backup was last brought up to.
    done: Option<Vec<String>>,
    /// The kept releases of the last failed copy, and when it failed.
    failed: Option<(Vec<String>, i64)>,
}

/// What one backup did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub releases: usize,
    pub objects_copied: u64,
    pub removed: Vec<String>,
    /// Kept releases the backup cannot hold: why.
    pub skipped: Vec<String>,
}

impl Agent {
    /// The releases of the kept deployments, current first.
    fn kept_releases(&self) -> Result<Vec<String>> {
        let current = self.layout.current()?;
        let mut out: Vec<String> = Vec::new();
        for r in current.iter().chain(&self.state.history) {
            if !out.contains(r) && self.layout.deployment(r).is_dir() {
                out.push(r.clone());
            }
        }
        Ok(out)
    }

    /// Brings the backup up to the kept deployments when it is behind; never fails the agent's
    /// work: what goes wrong is a warning, logged and reported once per change. True when the
    /// warning changed (so the report is sent at once).
    pub(crate) fn backup_when_due(&mut self) -> Result<bool> {
        let Some(dir) = self.cfg.backup_dir.clone() else {
            return Ok(false);
        };
        if self.state.trial.is_some() {
            return Ok(false);
        }
        let kept = self.kept_releases()?;
        if kept.is_empty() {
            return Ok(false);
        }
        // Looked at every cycle, so a disk that goes is said at once.
        if let Err(u) = disk::check(&dir, &self.layout.dir) {
            return self.backup_warning(Some((u.kind, u.reason)));
        }
        if self.backup.done.as_ref() == Some(&kept) && Paths::new(&dir).manifest().exists() {
            return self.backup_warning(None);
        }
        if let Some((k, at)) = &self.backup.failed
            && *k == kept
            && now() - at < RETRY_SECS
        {
            return Ok(false);
        }
        match self.write_backup(&dir, &kept) {
            Ok(s) => {
                self.say(&format!(
                    "backup: {} release(s) in {}, {} object(s) copied{}",
                    s.releases,
                    dir.display(),
                    s.objects_copied,
                    if s.removed.is_empty() {
                        String::new()
                    } else {
                        format!(", {} no longer kept removed", s.removed.len())
                    }
                ));
                for k in &s.skipped {
                    self.say(&format!("backup: {k}"));
                }
                self.backup.done = Some(kept);
                self.backup.failed = None;
                self.backup_warning(None)
            }
            Err(e) => {
                let kind = if is_errno(&e, std::io::ErrorKind::StorageFull) {
                    "full"
                } else if is_errno(&e, std::io::ErrorKind::ReadOnlyFilesystem) {
                    "read-only"
                } else {
                    "failed"
                };
                self.backup.failed = Some((kept, now()));
                self.backup_warning(Some((kind, crate::error::render(&e))))
            }
        }
    }

    /// Records the backup's state; says so when it changed (and whether it did).
    fn backup_warning(&mut self, w: Option<(&'static str, String)>) -> Result<bool> {
        let old = self.state.backup.as_ref().map(|w| w.kind.as_str());
        let new = w.as_ref().map(|(k, _)| *k);
        if old == new {
            return Ok(false);
        }
        match &w {
            Some((_, reason)) => self.say(&format!(
                "backup: warning: {reason}; carrying on without it"
            )),
            None => self.say("backup: the backup disk is usable again"),
        }
        self.state.backup = w.map(|(kind, reason)| Warning {
            kind: kind.to_owned(),
            reason: semithin_protocol::api::bound_error(&reason),
            since: now(),
        });
        self.save()?;
        Ok(true)
    }

    /// Makes the backup in `dir` hold exactly `kept` (those it can verify).
    pub(crate) fn write_backup(&mut self, dir: &Path, kept: &[String]) -> Result<Summary> {
        let paths = Paths::new(dir);
        for d in [paths.tmp(), paths.trust()] {
            std::fs::create_dir_all(&d).map_err(Error::io("creating", &d))?;
        }
        clear(&paths.tmp())?;
        let rp = paths.repo();
        if !rp.join("config").exists() {
            if rp.exists() {
                crate::deploy::remove_dir(&rp)?;
            }
            Repo::init(&rp, RepoConfig::default())?;
        }
        let repo = Repo::open(&rp, Access::Write)?;
        let old = match Manifest::load(&paths.manifest()) {
            Ok(m) => m.unwrap_or_default(),
            Err(e) => {
                self.say(&format!("backup: {e}: it is made anew"));
                Manifest::default()
            }
        };
        let mut summary = Summary::default();
        let mut entries = Vec::new();
        let anchor = self.trusted_root_bytes()?;
        for r in kept {
            summary.objects_copied += copy_objects(&self.repo.objects, &repo.objects, r)?;
            if let Some(e) = old.entry(r)
                && paths.trust_of(r).is_dir()
            {
                entries.push(e.clone());
                continue;
            }
            // New to the backup: the metadata the machine trusts now, which must sign it.
            let Some(channel) = self.state.channel.clone().or(self.cfg.channel.clone()) else {
                summary.skipped.push(format!(
                    "release {} is not backed up: the machine knows no channel yet",
                    short(r)
                ));
                continue;
            };
            let tmp = paths.tmp().join(format!("trust-{r}"));
            let verified_at = trust::copy_trusted(&self.layout.trust(), &tmp, &paths.roots())?;
            let entry = Entry {
                release: r.clone(),
                channel,
                verified_at,
            };
            // Verified where it will be: moved into place first, under the release's name, which
            // the manifest names only once it is written after.
            let dest = paths.trust_of(r);
            crate::deploy::remove_dir(&dest)?;
            std::fs::rename(&tmp, &dest).map_err(Error::io("renaming into", &dest))?;
            semithin_store::fsutil::sync_dir(&paths.trust())?;
            let work = paths.tmp().join("verify");
            match trust::verify(&paths, &entry, &anchor, &repo.objects, &work, now()) {
                Ok(_) => entries.push(entry),
                Err(e) => {
                    crate::deploy::remove_dir(&dest)?;
                    summary.skipped.push(format!(
                        "release {} is not backed up: {e} (it was deployed before the backup \
                         began, or the metadata moved on)",
                        short(r)
                    ));
                }
            }
        }
        crate::crash_point("backup");
        let current = self.layout.current()?;
        let manifest = Manifest {
            format: FORMAT,
            machine: self.state.machine_id.clone(),
            made_at: now(),
            current: current.filter(|c| entries.iter().any(|e| e.release == *c)),
            releases: entries,
        };
        manifest.save(&paths)?;
        summary.releases = manifest.releases.len();
        // Only now is what the new manifest does not name removed.
        let names: HashSet<&str> = manifest
            .releases
            .iter()
            .map(|e| e.release.as_str())
            .collect();
        let rd = std::fs::read_dir(paths.trust()).map_err(Error::io("listing", paths.trust()))?;
        for e in rd {
            let e = e.map_err(Error::io("listing", paths.trust()))?;
            let n = e.file_name().to_string_lossy().into_owned();
            if n != "roots" && !names.contains(n.as_str()) {
                crate::deploy::remove_dir(&e.path())?;
                if manifest::is_release_id(&n) {
                    summary.removed.push(n);
                }
            }
        }
        let ids: Vec<CommitId> = manifest
            .releases
            .iter()
            .filter_map(|e| e.release.parse().ok())
            .collect();
        if old
            .releases
            .iter()
            .any(|e| !names.contains(e.release.as_str()))
        {
            semithin_store::gc::gc_releases(&repo, &ids, 0.5, &NoProgress)?;
        }
        clear(&paths.tmp())?;
        Ok(summary)
    }

    /// The root this machine trusts: its trusted directory's, else the configured
    /// `trusted_root` (a fresh state directory, a rescue system).
    pub(crate) fn trusted_root_bytes(&self) -> Result<Vec<u8>> {
        let own = self.layout.trust().join("root.json");
        match std::fs::read(&own) {
            Ok(b) => return Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("reading", &own)(e)),
        }
        let root = self.cfg.trusted_root.as_ref().ok_or_else(|| {
            Error::Config(format!(
                "{} is missing and no --trusted-root is given: there is no root to verify the \
                 backup with",
                own.display()
            ))
        })?;
        std::fs::read(root).map_err(Error::io("reading", root))
    }
}

/// Copies into `to` every object of `release` it lacks, read (so verified) from `from`; synced
/// before it returns. The number copied.
pub fn copy_objects(from: &ObjectStore, to: &ObjectStore, release: &str) -> Result<u64> {
    let id: CommitId = release.parse().map_err(|_| Error::Release {
        release: release.to_owned(),
        reason: "not a commit id".into(),
    })?;
    let mut n = 0u64;
    let mut put = |kind: ObjKind, id: &[u8; 32]| -> Result<()> {
        if !to.contains(kind, id) {
            to.put(&from.get_verified(kind, id)?)?;
            n += 1;
        }
        Ok(())
    };
    let commit = from.get_commit(&id)?;
    let mut seen: HashSet<TreeId> = HashSet::new();
    let mut stack = vec![commit.tree];
    while let Some(t) = stack.pop() {
        if !seen.insert(t) {
            continue;
        }
        for e in from.get_tree(&t)?.entries {
            match e.kind {
                EntryKind::Dir(sub) => stack.push(sub),
                EntryKind::File(f) => {
                    for c in f.chunks {
                        put(ObjKind::Chunk, c.id.as_bytes())?;
                    }
                }
                _ => {}
            }
        }
        put(ObjKind::Tree, t.as_bytes())?;
    }
    put(ObjKind::Commit, id.as_bytes())?;
    to.flush()?;
    Ok(n)
}

/// Reads every object of `release` from `store`, so each is verified against its id; the
/// number read. The first that is missing or damaged is the error, naming it.
pub(crate) fn verify_objects(store: &ObjectStore, release: &str) -> Result<u64> {
    let id: CommitId = release.parse().map_err(|_| Error::Release {
        release: release.to_owned(),
        reason: "not a commit id".into(),
    })?;
    let commit = store.get_commit(&id)?;
    let mut n = 1u64;
    let mut seen_trees: HashSet<TreeId> = HashSet::new();
    let mut seen_chunks = HashSet::new();
    let mut stack = vec![commit.tree];
    while let Some(t) = stack.pop() {
        if !seen_trees.insert(t) {
            continue;
        }
        n += 1;
        for e in store.get_tree(&t)?.entries {
            match e.kind {
                EntryKind::Dir(sub) => stack.push(sub),
                EntryKind::File(f) => {
                    for c in f.chunks {
                        if seen_chunks.insert(c.id) {
                            store.get_chunk(&c.id)?;
                            n += 1;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(n)
}

fn clear(dir: &Path) -> Result<()> {
    crate::deploy::remove_dir(dir)?;
    std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))
}

/// Whether an I/O error of `kind` is anywhere in the chain of `e`.
fn is_errno(e: &(dyn std::error::Error + 'static), kind: std::io::ErrorKind) -> bool {
    let mut cur = Some(e);
    while let Some(x) = cur {
        if x.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == kind)
        {
            return true;
        }
        cur = x.source();
    }
    false
}
