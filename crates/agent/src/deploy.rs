//! Deployments on disk: staging a release beside the running one, the atomic switch of the
//! `current` link, pruning, and health checks.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use semithin_store::checkout::{CheckoutOptions, checkout};
use semithin_store::{CommitId, NoProgress, Repo};

use crate::error::{Error, Result};
use crate::state::{BootFailure, Layout, Trial};

/// Materialises `release` as `deployments/ID`, sharing unchanged files with earlier deployments
/// through the repository's checkout cache (hardlinks), synced before it is renamed into place:
/// a deployment directory either is complete or does not exist.
pub fn stage(repo: &Repo, layout: &Layout, release: &str) -> Result<u64> {
    stage_from(repo, &repo.cache_dir(), layout, release)
}

/// [`stage`] from any repository holding the release (`agent restore`: the backup's), sharing
/// files through the checkout cache `cache` on the deployments' file system.
pub fn stage_from(repo: &Repo, cache: &Path, layout: &Layout, release: &str) -> Result<u64> {
    let id: CommitId = release.parse().map_err(|_| Error::Release {
        release: release.to_owned(),
        reason: "not a commit id".into(),
    })?;
    let staging = layout.staging(release);
    remove_dir(&staging)?;
    let opts = CheckoutOptions {
        cache: Some(cache.to_owned()),
        fsync: true,
    };
    let stats = match checkout(repo, id, &staging, &opts, &NoProgress) {
        Ok(s) => s,
        Err(e) => {
            // a half-made deployment (say, on a full disk) would keep the disk full
            let _ = remove_dir(&staging);
            return Err(e.into());
        }
    };
    crate::crash_point("stage");
    let dest = layout.deployment(release);
    std::fs::rename(&staging, &dest).map_err(Error::io("renaming into", &dest))?;
    semithin_store::fsutil::sync_dir(&layout.deployments())?;
    Ok(stats.written_bytes)
}

/// Points `current` at `release` (or removes it for `None`) by renaming a new link over it.
pub fn point_current(layout: &Layout, release: Option<&str>) -> Result<()> {
    let link = layout.current_link();
    match release {
        Some(r) => {
            let tmp = layout.dir.join(".current.tmp");
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(Path::new("deployments").join(r), &tmp)
                .map_err(Error::io("creating", &tmp))?;
            std::fs::rename(&tmp, &link).map_err(Error::io("switching", &link))?;
        }
        None => match std::fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("removing", &link)(e)),
        },
    }
    semithin_store::fsutil::sync_dir(&layout.dir)?;
    Ok(())
}

/// Removes every deployment and leftover staging directory not in `keep`. Whatever the
/// `current` link points at is never removed, whether `keep` names it or not.
pub fn prune(layout: &Layout, keep: &[&str]) -> Result<Vec<String>> {
    let dir = layout.deployments();
    let mut removed = Vec::new();
    let current = layout.current()?;
    let keep: Vec<&str> = keep.iter().copied().chain(current.as_deref()).collect();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(Error::io("listing", &dir)(e)),
    };
    for e in rd {
        let e = e.map_err(Error::io("listing", &dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if keep.contains(&name.as_str()) {
            continue;
        }
        if name.starts_with('.') {
            // A staging or removal a kill interrupted: never a deployment.
            remove_dir(&e.path())?;
            continue;
        }
        // Out of the deployments' names first: a kill halfway through the removal must not
        // leave a partial tree under a name that a later switch would take for the release.
        let doomed = dir.join(format!(".removing-{name}"));
        std::fs::rename(e.path(), &doomed).map_err(Error::io("renaming", &doomed))?;
        semithin_store::fsutil::sync_dir(&dir)?;
        crate::crash_point("prune");
        remove_dir(&doomed)?;
        removed.push(name);
    }
    // the seals of what is gone (and of removals a kill interrupted)
    crate::repair::seal::remove_stale(layout)?;
    Ok(removed)
}

/// A trial opens (Switch, before the link moves): `STATE/trial` says `RELEASE PREVIOUS` for the
/// boot script, and no boot of it is counted yet.
pub fn open_boot_trial(layout: &Layout, trial: &Trial) -> Result<()> {
    remove_file(&layout.trial_boots())?;
    remove_file(&layout.trial_failed())?;
    write_boot_trial(layout, trial)
}

/// Writes `STATE/trial` for an open trial unless it already says so (replaced atomically,
/// synced). The boot counter is left as it is.
pub fn write_boot_trial(layout: &Layout, trial: &Trial) -> Result<()> {
    let path = layout.trial_file();
    let text = format!(
        "{} {}\n",
        trial.release,
        trial.previous.as_deref().unwrap_or("-")
    );
    if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    let tmp = layout.dir.join(".trial.tmp");
    semithin_store::fsutil::write_synced(&tmp, text.as_bytes())?;
    std::fs::rename(&tmp, &path).map_err(Error::io("renaming into", &path))?;
    semithin_store::fsutil::sync_dir(&layout.dir)?;
    Ok(())
}

/// The trial is closed (confirmed healthy, rolled back or abandoned): `STATE/trial`, its boot
/// count and the boot script's failure marker are removed, and the removal is synced, so the
/// boot script never acts on a closed trial.
pub fn close_boot_trial(layout: &Layout) -> Result<()> {
    let mut any = false;
    for p in [
        layout.trial_file(),
        layout.trial_boots(),
        layout.trial_failed(),
    ] {
        any |= remove_file(&p)?;
    }
    if any {
        semithin_store::fsutil::sync_dir(&layout.dir)?;
    }
    Ok(())
}

/// At start without a trial in state.json: a `STATE/trial` left over (state.json moved aside)
/// is removed, so the boot script does not count boots of a release nobody checks. The boot
/// script's failure marker stays for the agent to record.
pub fn tidy_boot_trial(layout: &Layout) -> Result<()> {
    let mut any = false;
    for p in [layout.trial_file(), layout.trial_boots()] {
        any |= remove_file(&p)?;
    }
    if any {
        semithin_store::fsutil::sync_dir(&layout.dir)?;
    }
    Ok(())
}

/// `STATE/trial-failed`, if the boot script left it: `RELEASE REASON`, one line. A marker that
/// does not name a release (64 hex digits) is an error naming the file.
pub fn boot_failure(layout: &Layout) -> Result<Option<BootFailure>> {
    let path = layout.trial_failed();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("reading", &path)(e)),
    };
    let line = text.lines().next().unwrap_or("").trim();
    let (release, reason) = line.split_once(' ').unwrap_or((line, ""));
    if release.len() != 64 || !release.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Config(format!(
            "{} does not start with a release id (it holds {line:?}); remove it",
            path.display()
        )));
    }
    let reason = reason.trim();
    Ok(Some(BootFailure {
        release: release.to_owned(),
        reason: if reason.is_empty() {
            "the boot script switched back to the previous deployment".into()
        } else {
            reason.to_owned()
        },
    }))
}

/// Removes a file; whether it was there.
fn remove_file(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("removing", path)(e)),
    }
}

/// Removes a directory tree, making read-only directories writable first (deployments keep
/// the image's modes).
pub fn remove_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("reading", path)(e)),
        Ok(_) => {}
    }
    if std::fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    // Not root: a directory without write permission keeps its children.
    fn open_up(p: &Path) {
        if let Ok(md) = std::fs::symlink_metadata(p)
            && md.is_dir()
        {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    open_up(&e.path());
                }
            }
        }
    }
    open_up(path);
    std::fs::remove_dir_all(path).map_err(Error::io("removing", path))
}

/// Runs the health checks against a deployment; the first failure's reason, if any.
pub fn health_checks(
    checks: &[String],
    deployment: &Path,
    release: &str,
    timeout: Duration,
    log_dir: &Path,
) -> std::result::Result<(), String> {
    for cmd in checks {
        let log = log_dir.join("health.log");
        let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        // In a process group of its own, so that a timeout ends everything the check started.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("SEMITHIN_DEPLOYMENT", deployment)
            .env("SEMITHIN_RELEASE", release)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("health check {cmd:?} could not start: {e}"))?;
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if start.elapsed() > timeout => {
                    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                        let _ =
                            rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "health check {cmd:?} did not finish within {} s",
                        timeout.as_secs()
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(format!("health check {cmd:?}: {e}")),
            }
        };
        if !status.success() {
            let mut text = String::new();
            if let Ok(f) = std::fs::File::open(&log) {
                let _ = f.take(4096).read_to_string(&mut text);
            }
            let tail: String = text
                .trim()
                .lines()
                .last()
                .unwrap_or("")
                .chars()
                .take(300)
                .collect();
            return Err(format!(
                "health check {cmd:?} failed ({status}){}",
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(": {tail}")
                }
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    fn layout_with(deployments: &[&str]) -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        for d in deployments {
            std::fs::create_dir_all(layout.deployment(d).join("etc")).unwrap();
            std::fs::write(layout.deployment(d).join("etc/os-release"), d).unwrap();
        }
        (dir, layout)
    }

    fn names(layout: &Layout) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(layout.deployments())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn prune_never_removes_what_current_points_at() {
        let (_d, layout) = layout_with(&[A, B, C]);
        std::fs::create_dir_all(layout.staging(C)).unwrap();
        point_current(&layout, Some(B)).unwrap();
        // a history that lost the running release (state.json moved aside, or a kill between
        // two saves) names only A
        let removed = prune(&layout, &[A]).unwrap();
        assert_eq!(names(&layout), vec![A.to_owned(), B.to_owned()]);
        assert_eq!(removed, vec![C.to_owned()], "leftovers are not deployments");
        assert!(!layout.staging(C).exists());
        assert_eq!(layout.current().unwrap().as_deref(), Some(B));
        assert!(layout.deployment(B).join("etc/os-release").exists());
        // nothing named at all: still the current one
        prune(&layout, &[]).unwrap();
        assert_eq!(names(&layout), vec![B.to_owned()]);
        // without a link, what keep names
        point_current(&layout, None).unwrap();
        prune(&layout, &[B]).unwrap();
        assert_eq!(names(&layout), vec![B.to_owned()]);
    }

    #[test]
    fn the_boot_trial_files_open_and_close() {
        let (_d, layout) = layout_with(&[A, B]);
        let t = Trial {
            release: B.into(),
            previous: Some(A.into()),
            ..Trial::default()
        };
        std::fs::write(layout.trial_boots(), format!("{B} 3\n")).unwrap();
        std::fs::write(layout.trial_failed(), format!("{B} old\n")).unwrap();
        open_boot_trial(&layout, &t).unwrap();
        assert_eq!(
            std::fs::read_to_string(layout.trial_file()).unwrap(),
            format!("{B} {A}\n")
        );
        assert!(
            !layout.trial_boots().exists(),
            "a new trial has no boots yet"
        );
        assert!(boot_failure(&layout).unwrap().is_none());
        // rewriting keeps the boot count
        std::fs::write(layout.trial_boots(), format!("{B} 1\n")).unwrap();
        write_boot_trial(&layout, &t).unwrap();
        assert!(layout.trial_boots().exists());
        // no previous: "-"
        let none = Trial {
            release: B.into(),
            previous: None,
            ..Trial::default()
        };
        write_boot_trial(&layout, &none).unwrap();
        assert_eq!(
            std::fs::read_to_string(layout.trial_file()).unwrap(),
            format!("{B} -\n")
        );
        // the boot script's marker
        std::fs::write(
            layout.trial_failed(),
            format!("{B} booted 1 time(s) without being confirmed healthy\n"),
        )
        .unwrap();
        let b = boot_failure(&layout).unwrap().unwrap();
        assert_eq!(b.release, B);
        assert_eq!(b.reason, "booted 1 time(s) without being confirmed healthy");
        // tidying at start keeps the marker for the agent to record
        tidy_boot_trial(&layout).unwrap();
        assert!(!layout.trial_file().exists() && !layout.trial_boots().exists());
        assert!(layout.trial_failed().exists());
        close_boot_trial(&layout).unwrap();
        assert!(!layout.trial_failed().exists());
        assert!(!layout.dir.join(".trial.tmp").exists());
        // a marker that names no release is an error naming the file
        std::fs::write(layout.trial_failed(), "junk\n").unwrap();
        let e = boot_failure(&layout).unwrap_err().to_string();
        assert!(e.contains("trial-failed") && e.contains("junk"), "{e}");
    }

    #[test]
    fn a_health_check_that_times_out_is_ended_with_everything_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("sleep.pid");
        let check = format!("sleep 300 & echo $! > '{}'; wait", pidfile.display());
        let start = Instant::now();
        let r = health_checks(&[check], dir.path(), A, Duration::from_secs(1), dir.path());
        let err = r.unwrap_err();
        assert!(err.contains("did not finish within 1 s"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(30));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The sleep was killed too: gone, or at most a zombie waiting for its reaper.
        let gone = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
        };
        let end = Instant::now() + Duration::from_secs(10);
        while !gone() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(gone(), "the check's child {pid} outlived the timeout");
    }

    /// A tmpfs of `size` at `dir`, unmounted when dropped.
    struct Tmpfs(std::path::PathBuf);

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }

    #[test]
    fn a_stage_that_fills_the_disk_leaves_no_half_made_deployment() {
        use semithin_store::import::{CommitOptions, commit};
        let dir = tempfile::tempdir().unwrap();
        // the machine's disk: room for the release in the store, not for a second copy
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=5M", "tmpfs"])
            .arg(&state)
            .status()
            .unwrap();
        assert!(ok.success());
        let _disk = Tmpfs(state.clone());
        let rp = state.join("repo");
        Repo::init(&rp, Default::default()).unwrap();
        let repo = Repo::open(&rp, semithin_store::Access::Write).unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("usr/lib")).unwrap();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let big: Vec<u8> = (0..3_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        std::fs::write(src.join("usr/lib/big.bin"), &big).unwrap();
        let opts = CommitOptions {
            channel: "lab/stable",
            message: "v1",
            time: Some(1_700_000_000),
        };
        let id = commit(&repo, &src, &opts, &NoProgress).unwrap().commit;
        let layout = Layout::new(&state);
        std::fs::create_dir_all(layout.deployments()).unwrap();
        let e = stage(&repo, &layout, &id).unwrap_err();
        let said = crate::error::render(&e);
        assert!(said.starts_with("the disk is full"), "{said}");
        let left: Vec<_> = std::fs::read_dir(layout.deployments())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
