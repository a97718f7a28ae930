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
use crate::state::Layout;

/// Materialises `release` as `deployments/ID`, sharing unchanged files with earlier deployments
/// through the repository's checkout cache (hardlinks), synced before it is renamed into place:
/// a deployment directory either is complete or does not exist.
pub fn stage(repo: &Repo, layout: &Layout, release: &str) -> Result<u64> {
    let id: CommitId = release.parse().map_err(|_| Error::Release {
        release: release.to_owned(),
        reason: "not a commit id".into(),
    })?;
    let staging = layout.staging(release);
    remove_dir(&staging)?;
    let opts = CheckoutOptions {
        cache: Some(repo.cache_dir()),
        fsync: true,
    };
    let stats = checkout(repo, id, &staging, &opts, &NoProgress)?;
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

/// Removes every deployment and leftover staging directory not in `keep`.
pub fn prune(layout: &Layout, keep: &[&str]) -> Result<Vec<String>> {
    let dir = layout.deployments();
    let mut removed = Vec::new();
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
        remove_dir(&e.path())?;
        removed.push(name);
    }
    Ok(removed)
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
}
