//! The check at boot (`semithin agent --state DIR boot-verify`; docs/BOOT.md, "Verification at
//! boot"): the initramfs runs it on the root partition before it mounts the deployment. It is
//! `agent verify` without the network: the deployment `current` points at is compared with its
//! release, what differs is put back from the local store alone, and what is not the release's
//! goes into `STATE/quarantine/`. What it found is left in `STATE/boot-verify.json`; the agent
//! takes it into `state.json` when it next starts ([`take`]) and reports it
//! (`Integrity::at_boot`), so the admin sees that the machine was tampered with and put right.

use std::path::{Path, PathBuf};

use semithin_protocol::api::{BootCheck, Integrity};
use semithin_store::{Access, CommitId, Repo};
use serde::{Deserialize, Serialize};

use super::{VerifyReport, fix, note, objects, scan, seal, shown};
use crate::error::{Error, Result};
use crate::now;
use crate::state::{Layout, State};

/// `STATE/boot-verify.json`: what the check at boot found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BootRecord {
    pub integrity: Integrity,
    /// One line per path that differed (`/PATH: what`).
    #[serde(default)]
    pub problems: Vec<String>,
    /// What could not be verified or put back: the deployment was not booted.
    #[serde(default)]
    pub errors: Vec<String>,
    #[serde(default)]
    pub quarantine: Option<PathBuf>,
}

pub fn record_path(layout: &Layout) -> PathBuf {
    layout.dir.join("boot-verify.json")
}

/// How the check at boot goes about it (`semithin.verify=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every file read and hashed against the release, at every boot.
    Full,
    /// The deployment's metadata against its seal; in full only when it differs.
    Quick,
}

/// What the quick check found.
#[derive(Clone, Debug, Serialize)]
pub enum Quick {
    /// Unchanged since its seal: this many entries, walked in this many seconds.
    Unchanged { entries: u64, secs: f64 },
    /// Verified in full instead, for this reason.
    Fallback(String),
}

/// [`boot_verify_mode`] in full.
pub fn boot_verify(dir: &Path) -> Result<VerifyReport> {
    boot_verify_mode(dir, Mode::Full)
}

/// Verifies and repairs the current deployment of the state directory `dir` from its local
/// store, and records what it found. `Ok` with [`VerifyReport::unresolved`] when the deployment
/// could not be verified or put right (it must not be booted then); `Err` only when the state
/// directory itself cannot be used. No current deployment: nothing to do.
///
/// [`Mode::Quick`]: when the deployment's walk matches its seal ([`seal::check`]), nothing is
/// read ([`VerifyReport::quick`] says so); otherwise it is verified in full. A full
/// verification that leaves the deployment as released seals it ([`VerifyReport::sealed`]).
pub fn boot_verify_mode(dir: &Path, mode: Mode) -> Result<VerifyReport> {
    let layout = Layout::new(dir);
    let _lock = crate::lock_state(&layout)?;
    let mut report = VerifyReport::default();
    let Some(release) = layout.current()? else {
        return Ok(report);
    };
    report.release = Some(release.clone());
    let id: CommitId = release.parse().map_err(|_| Error::Release {
        release: release.clone(),
        reason: "not a commit id".into(),
    })?;
    let mut integrity = Integrity::new(id.into(), now());
    integrity.at_boot = true;
    if mode == Mode::Quick {
        let start = std::time::Instant::now();
        match seal::check(&layout, &release) {
            Ok(entries) => {
                report.quick = Some(Quick::Unchanged {
                    entries,
                    secs: start.elapsed().as_secs_f64(),
                });
                integrity.boot_check = Some(BootCheck::Quick);
                record(&layout, &mut report, integrity, false);
                return Ok(report);
            }
            Err(why) => report.quick = Some(Quick::Fallback(why)),
        }
    }
    integrity.boot_check = Some(BootCheck::Full);
    let root = layout.deployment(&release);
    let before = seal::walk(&root, &release).ok();
    let mut q = fix::Quarantine::new(&layout.quarantine(), &release, now());
    if let Err(e) = check(&layout, &release, id, &mut report, &mut integrity, &mut q) {
        report.errors.push(format!(
            "deployment {} cannot be verified: {e}",
            crate::short(&release)
        ));
    }
    report.quarantine = q.used().map(|p| p.to_owned());
    report.integrity = Some(integrity.clone());
    report.sealed = Some(if report.unresolved() {
        let _ = seal::remove(&layout, &release);
        Err("not sealed: not as released".into())
    } else if report.problems.is_empty() {
        seal::seal_if_unchanged(&layout, &release, before)
    } else {
        // What was put back is read once more before it is sealed.
        match Repo::open(&layout.repo(), Access::Read) {
            Ok(repo) => seal::verify_and_seal(&layout, &repo.objects, &release, true),
            Err(e) => Err(format!("not sealed: {e}")),
        }
    });
    // What was put back reaches the disk before the deployment is mounted.
    rustix::fs::sync();
    record(&layout, &mut report, integrity, true);
    Ok(report)
}

/// Leaves what the check at boot found in `STATE/boot-verify.json`, and in `report`. `durable`:
/// synced before and after the rename. A quick check's record is not (a flush of the disk is
/// what costs most at boot): it says only that nothing was read, and lost in a power cut, the
/// agent merely does not report that boot's check.
fn record(layout: &Layout, report: &mut VerifyReport, integrity: Integrity, durable: bool) {
    let record = BootRecord {
        integrity: integrity.clone(),
        problems: report.problems.clone(),
        errors: report.errors.clone(),
        quarantine: report.quarantine.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&record).expect("a record serialises");
    // A deployment put right is booted even when the record cannot be written (a full disk):
    // the agent then only misses what was found.
    let path = record_path(layout);
    let written = if durable {
        semithin_store::fsutil::replace_atomic(&path, &layout.dir, &bytes)
            .map_err(|e| e.to_string())
    } else {
        let tmp = semithin_store::fsutil::unique_tmp(&layout.dir, "boot-verify");
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                format!("writing {}: {e}", path.display())
            })
    };
    if let Err(e) = written {
        report.unrecorded = Some(e);
    }
    report.integrity = Some(integrity);
}

fn check(
    layout: &Layout,
    release: &str,
    id: CommitId,
    report: &mut VerifyReport,
    integrity: &mut Integrity,
    q: &mut fix::Quarantine,
) -> Result<()> {
    let repo = Repo::open(&layout.repo(), Access::Read)?;
    let root = layout.deployment(release);
    repair_from(
        &repo.objects,
        &repo.cache_dir(),
        &root,
        id,
        report,
        integrity,
        q,
    )
}

/// Verifies the deployment at `root` against release `id` and puts back what differs, with the
/// objects of `store` alone (no network): at boot the machine's own store, in `agent restore`
/// the backup's. `cache` is the checkout cache of the deployment's file system.
pub(crate) fn repair_from(
    store: &semithin_store::objects::ObjectStore,
    cache: &Path,
    root: &Path,
    id: CommitId,
    report: &mut VerifyReport,
    integrity: &mut Integrity,
    q: &mut fix::Quarantine,
) -> Result<()> {
    let mut objs = objects::Objects::offline(store);
    let commit = objs.commit(id)?;
    if !root.is_dir() {
        return Err(Error::Config(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    let found = scan::scan(&mut objs, root, &commit, true)?;
    report.files = found.files;
    report.bytes = found.bytes;
    report.errors.extend(found.errors);
    let outcome = fix::repair(&mut objs, root, &found.findings, q, cache, true);
    for (f, failed) in found.findings.iter().zip(&outcome) {
        let path = shown("/", &f.rel);
        report.problems.push(format!("{path}: {}", f.what));
        note(integrity, report, &path, failed.as_deref(), true);
    }
    Ok(())
}

/// `agent restore` onto a deployment that exists: verified against `release` and put right
/// with the objects of `store` (the backup's); what is not the release's goes to quarantine.
pub(crate) fn repair_with(
    layout: &Layout,
    store: &semithin_store::objects::ObjectStore,
    cache: &Path,
    release: &str,
) -> Result<VerifyReport> {
    let id: CommitId = release.parse().map_err(|_| Error::Release {
        release: release.to_owned(),
        reason: "not a commit id".into(),
    })?;
    let mut report = VerifyReport {
        release: Some(release.to_owned()),
        ..VerifyReport::default()
    };
    let mut integrity = Integrity::new(id.into(), now());
    let mut q = fix::Quarantine::new(&layout.quarantine(), release, now());
    let root = layout.deployment(release);
    repair_from(store, cache, &root, id, &mut report, &mut integrity, &mut q)?;
    report.quarantine = q.used().map(|p| p.to_owned());
    report.integrity = Some(integrity);
    Ok(report)
}

/// At the agent's start: what the check at boot left in `STATE/boot-verify.json` becomes the
/// last verification in `state` (saved by the caller), which the next check-in reports; a
/// deployment that was not booted because of it is the last error too. The file is removed
/// once `state` is saved, so a kill in between takes it again. Returns what it took.
pub fn take(layout: &Layout, state: &mut State) -> Result<Option<BootRecord>> {
    let path = record_path(layout);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("reading", &path)(e)),
    };
    let record: BootRecord = serde_json::from_slice(&bytes).map_err(|e| {
        Error::Config(format!(
            "{} is not what the check at boot writes ({e})",
            path.display()
        ))
    })?;
    state.integrity = Some(record.integrity.clone());
    // A deployment put right counts as verified at boot; one that was not booted is verified
    // again as soon as the agent can (after this boot), with the network. A quick check counts
    // as the check of this boot, not as a full verification: the next one is still due
    // `verify_interval_secs` after the last.
    if record.errors.is_empty() {
        let at = record.integrity.checked_at;
        if record.integrity.boot_check == Some(BootCheck::Quick) {
            state.last_boot_check = state.last_boot_check.max(at);
        } else {
            state.last_verify = state.last_verify.max(at);
        }
    }
    if let Some(first) = record.errors.first() {
        state.last_error = Some(format!(
            "at boot, release {} was not booted: {first}{}",
            record.integrity.release,
            match record.errors.len() {
                1 => String::new(),
                n => format!(" (and {} more error(s))", n - 1),
            }
        ));
    }
    Ok(Some(record))
}

/// At the agent's start ([`crate::Agent::open`]): [`take`], `state` saved, the record removed.
/// A record that cannot be read is removed too: never a reason for the agent not to start.
/// Returns the line to log, when there is something to say.
pub(crate) fn take_at_start(layout: &Layout, state: &mut State) -> Result<Option<String>> {
    let record = match take(layout, state) {
        Ok(None) => return Ok(None),
        Ok(Some(r)) => r,
        Err(e) => {
            forget(layout)?;
            return Ok(Some(format!("removed what the check at boot left: {e}")));
        }
    };
    state.save(&layout.state())?;
    forget(layout)?;
    if record.problems.is_empty() && record.errors.is_empty() {
        return Ok(None);
    }
    let i = &record.integrity;
    Ok(Some(format!(
        "the check at boot found {} path(s) different from release {}, put back {}{}",
        record.problems.len(),
        i.release.short(),
        i.repaired.count,
        match record.errors.first() {
            Some(e) => format!("; the deployment was not booted: {e}"),
            None => String::new(),
        }
    )))
}

/// Removes `STATE/boot-verify.json` (after [`take`] and the save of the state).
pub fn forget(layout: &Layout) -> Result<()> {
    let path = record_path(layout);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(semithin_store::fsutil::sync_dir(&layout.dir)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing", &path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Agent, Config};

    #[test]
    fn a_record_the_agent_cannot_read_is_dropped_and_said_and_the_agent_starts() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        std::fs::create_dir_all(&layout.dir).unwrap();
        std::fs::write(record_path(&layout), b"{not json").unwrap();
        let mut state = State::default();
        let e = take(&layout, &mut state).unwrap_err().to_string();
        assert!(e.contains("is not what the check at boot writes"), "{e}");
        let said = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = said.clone();
        let agent = Agent::open(
            dir.path(),
            Config::default(),
            Box::new(move |s| log.lock().unwrap().push(s.to_owned())),
        )
        .unwrap();
        drop(agent);
        assert!(!record_path(&layout).exists());
        let said = said.lock().unwrap().join("\n");
        assert!(
            said.contains("removed what the check at boot left: "),
            "{said}"
        );
    }

    #[test]
    fn a_quick_check_counts_as_the_boots_check_and_a_full_one_as_a_verification() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        std::fs::create_dir_all(&layout.dir).unwrap();
        let release: semithin_protocol::ids::ReleaseId = "ab".repeat(32).parse().unwrap();
        for (check, at) in [(BootCheck::Quick, 100), (BootCheck::Full, 200)] {
            let mut integrity = Integrity::new(release, at);
            integrity.at_boot = true;
            integrity.boot_check = Some(check);
            let record = BootRecord {
                integrity,
                problems: Vec::new(),
                errors: Vec::new(),
                quarantine: None,
            };
            std::fs::write(record_path(&layout), serde_json::to_vec(&record).unwrap()).unwrap();
            let mut state = State {
                last_verify: 50,
                ..State::default()
            };
            take(&layout, &mut state).unwrap().unwrap();
            let i = state.integrity.as_ref().unwrap();
            assert_eq!(i.boot_check, Some(check));
            match check {
                BootCheck::Quick => {
                    assert_eq!((state.last_verify, state.last_boot_check), (50, 100));
                }
                BootCheck::Full => assert_eq!((state.last_verify, state.last_boot_check), (200, 0)),
            }
        }
    }

    #[test]
    fn no_current_deployment_is_nothing_to_verify() {
        let dir = tempfile::tempdir().unwrap();
        let r = boot_verify(dir.path()).unwrap();
        assert!(r.release.is_none());
        assert!(!r.unresolved());
        assert!(!record_path(&Layout::new(dir.path())).exists());
    }
}
