//! The client's trusted metadata on disk: one file per role under its plain name (`root.json`,
//! `timestamp.json`, delegated roles URL-quoted), and `semithin-state` with the high-water
//! marks (the highest version trusted per role and the latest time seen) and, per role, which
//! keys verified the file on disk.
//!
//! Every file is replaced atomically (temporary file, fsync, rename, fsync of the directory), so
//! a crash leaves the old or the new file, never neither. A file that exists but does not parse
//! is damage, and the client stops rather than trust less than it did.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Name of the state file. It has no `.json` suffix so that tools listing the role files of the
/// directory do not take it for metadata.
pub const STATE_FILE: &str = "semithin-state";

/// High-water marks, kept apart from the role files so that a lost or replaced role file cannot
/// lower them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Latest reference time used, seconds since the epoch.
    pub latest_time: i64,
    /// Highest version trusted per role file name (`timestamp`, `snapshot`, `targets`, ...).
    pub versions: BTreeMap<String, u64>,
    /// Per role, a fingerprint of the keys and threshold its file on disk was verified with
    /// (see `client::fingerprint`). A file verified with other keys than the role has now was
    /// trusted before a key rotation: it is kept on disk but no longer used. A role without an
    /// entry (a directory from before this field) has its file verified as it is.
    #[serde(default)]
    pub verified_with: BTreeMap<String, String>,
}

pub struct TrustedDir {
    dir: PathBuf,
}

/// Percent-encodes everything but `A-Za-z0-9_.-~`, as Python's `quote(s, safe="")` does: role
/// names become one safe path component and one URL path segment.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl TrustedDir {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file of a role (`root` -> `root.json`; delegated names are quoted; `.` and `..` too).
    pub fn role_path(&self, role: &str) -> PathBuf {
        let q = quote(role);
        let q = match q.as_str() {
            "." => "%2E".to_owned(),
            ".." => "%2E%2E".to_owned(),
            _ => q,
        };
        self.dir.join(format!("{q}.json"))
    }

    /// The trusted bytes of a role, if there are any.
    pub fn read(&self, role: &str) -> Result<Option<Vec<u8>>> {
        let p = self.role_path(role);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading trusted metadata", p)(e)),
        }
    }

    pub fn write(&self, role: &str, bytes: &[u8]) -> Result<()> {
        self.replace(&self.role_path(role), bytes)
    }

    pub fn state(&self) -> Result<State> {
        let p = self.dir.join(STATE_FILE);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::TrustedDamaged {
                path: p,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(Error::io("reading", p)(e)),
        }
    }

    pub fn save_state(&self, state: &State) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(state).expect("state serialises");
        self.replace(&self.dir.join(STATE_FILE), &bytes)
    }

    fn replace(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        crate::fsutil::write_atomic(&self.dir, path, bytes, 0o644)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_matches_python() {
        assert_eq!(quote("a b/c"), "a%20b%2Fc");
        assert_eq!(quote("../x"), "..%2Fx");
        assert_eq!(quote("?#"), "%3F%23");
        assert_eq!(quote("é"), "%C3%A9");
        let d = TrustedDir::new(Path::new("/m"));
        assert_eq!(d.role_path(".."), Path::new("/m/%2E%2E.json"));
        assert_eq!(
            d.role_path("/delegatedrole"),
            Path::new("/m/%2Fdelegatedrole.json")
        );
    }
}
