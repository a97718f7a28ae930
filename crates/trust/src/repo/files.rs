//! The files of a trust directory: where each lives, and durable writes.

use std::path::{Path, PathBuf};

use super::Role;
use crate::error::{Error, Result};
pub(super) use crate::fsutil::{sync_dir, write_atomic};

/// Makes `dir` and its missing parents below `top`, syncing each parent that got a new entry.
pub(super) fn make_dirs(top: &Path, dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(top);
    if dir != top {
        make_dirs(top, parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => sync_dir(parent),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("creating", dir)(e)),
    }
}

/// The paths of a trust directory.
pub(super) struct Layout<'a>(pub(super) &'a Path);

impl Layout<'_> {
    pub(super) fn metadata(&self) -> PathBuf {
        self.0.join("metadata")
    }
    pub(super) fn targets(&self) -> PathBuf {
        self.0.join("targets")
    }
    pub(super) fn keys(&self) -> PathBuf {
        self.0.join("keys")
    }
    pub(super) fn tmp(&self) -> PathBuf {
        self.0.join("tmp")
    }
    pub(super) fn key(&self, role: Role) -> PathBuf {
        self.keys().join(format!("{role}.key"))
    }
    /// A new key waiting for its root to be written (see [`TrustRepo::rotate`]).
    pub(super) fn new_key(&self, role: Role) -> PathBuf {
        self.keys().join(format!("{role}.key.new"))
    }
}

/// The consistent-snapshot path of a target under `targets/`: `DIR/SHA256.BASENAME`.
pub fn target_file_path(target: &str, sha256: &str) -> String {
    match target.rsplit_once('/') {
        Some((dir, base)) => format!("{dir}/{sha256}.{base}"),
        None => format!("{sha256}.{target}"),
    }
}

/// The highest N of the files `N.ROLE.json` in `dir`.
pub(super) fn highest_version(dir: &Path, role: Role) -> Result<Option<u64>> {
    highest_version_of(dir, role.name())
}

/// The highest N of the files `N.ROLE.json` in `dir`, for any role name.
pub(super) fn highest_version_of(dir: &Path, role: &str) -> Result<Option<u64>> {
    Ok(versions_of(dir, role)?.into_iter().max())
}

/// Every N of the files `N.ROLE.json` in `dir`.
pub(super) fn versions_of(dir: &Path, role: &str) -> Result<Vec<u64>> {
    let suffix = format!(".{role}.json");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(Error::io("listing", dir))? {
        let e = e.map_err(Error::io("listing", dir))?;
        let name = e.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|s| s.strip_suffix(&suffix))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push(n);
    }
    Ok(out)
}
