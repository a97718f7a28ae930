//! The backup directory's layout and its manifest (docs/FORMAT.md, "Agent backup").

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The manifest's format version; a newer one is refused, naming it.
pub const FORMAT: u32 = 1;

/// Where what a backup holds lives below its directory.
#[derive(Clone, Debug)]
pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }
    /// Which releases the backup holds: written last, atomically.
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }
    /// A semithin repository with the objects of those releases.
    pub fn repo(&self) -> PathBuf {
        self.dir.join("repo")
    }
    /// The signed metadata each release was verified with, one directory per release.
    pub fn trust(&self) -> PathBuf {
        self.dir.join("trust")
    }
    pub fn trust_of(&self, release: &str) -> PathBuf {
        self.trust().join(release)
    }
    /// Every root version the machine trusted while it made backups (`N.root.json`), so a
    /// restore can walk from an older trusted root to the one the metadata was signed under.
    pub fn roots(&self) -> PathBuf {
        self.trust().join("roots")
    }
    /// Temporary names; cleared by every backup.
    pub fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }
}

/// `manifest.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The machine that made it (its id), when enrolled.
    #[serde(default)]
    pub machine: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub made_at: i64,
    /// The release that was current when it was made.
    #[serde(default)]
    pub current: Option<String>,
    /// Every release held, newest first.
    #[serde(default)]
    pub releases: Vec<Entry>,
}

/// A release the backup holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub release: String,
    /// The channel whose signed target allowed it.
    pub channel: String,
    /// The time its metadata was last verified by the agent (Unix seconds): expiry is checked
    /// at this time when the backup is restored.
    pub verified_at: i64,
}

pub fn is_release_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Manifest {
    /// The manifest in `path`; `None` when there is none. One that does not parse, is of a newer
    /// format or names something that is not a release id is an error naming the file.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("reading", path)(e)),
        };
        let bad = |reason: String| Error::Config(format!("{} {reason}", path.display()));
        let m: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("is damaged ({e})")))?;
        if m.format > FORMAT {
            return Err(bad(format!(
                "is of format {}, newer than this agent reads ({FORMAT})",
                m.format
            )));
        }
        for r in m.releases.iter().map(|e| &e.release).chain(&m.current) {
            if !is_release_id(r) {
                return Err(bad(format!("names {r:?}, which is not a release id")));
            }
        }
        for e in &m.releases {
            semithin_store::channel::check_name(&e.channel).map_err(|_| {
                bad(format!(
                    "names channel {:?}, which is no channel (parts of letters, digits, `.`, `_` \
                     and `-` separated by `/`)",
                    e.channel
                ))
            })?;
        }
        if let Some(c) = &m.current
            && !m.releases.iter().any(|e| e.release == *c)
        {
            return Err(bad(format!(
                "says {c} is current but does not list it among its releases"
            )));
        }
        Ok(Some(m))
    }

    pub fn entry(&self, release: &str) -> Option<&Entry> {
        self.releases.iter().find(|e| e.release == release)
    }

    /// Written under a temporary name, synced and renamed: a crash leaves the old manifest or
    /// the new one.
    pub fn save(&self, paths: &Paths) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("a manifest serialises");
        semithin_store::fsutil::replace_atomic(&paths.manifest(), &paths.tmp(), &bytes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn a_manifest_round_trips_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        std::fs::create_dir_all(paths.tmp()).unwrap();
        assert_eq!(Manifest::load(&paths.manifest()).unwrap(), None);
        let m = Manifest {
            format: FORMAT,
            machine: Some("m".into()),
            made_at: 5,
            current: Some(A.into()),
            releases: vec![Entry {
                release: A.into(),
                channel: "lab/stable".into(),
                verified_at: 4,
            }],
        };
        m.save(&paths).unwrap();
        assert_eq!(Manifest::load(&paths.manifest()).unwrap(), Some(m));
        for (text, said) in [
            ("{", "is damaged"),
            (r#"{"format": 9}"#, "newer than this agent reads"),
            (
                r#"{"format": 1, "releases": [{"release": "../x", "channel": "c", "verified_at": 1}]}"#,
                "not a release id",
            ),
            (
                &format!(r#"{{"format": 1, "current": "{A}"}}"#),
                "does not list it",
            ),
            (
                &format!(
                    r#"{{"format": 1, "releases": [{{"release": "{A}", "channel": "a\u001b[2Jb", "verified_at": 1}}]}}"#
                ),
                "which is no channel",
            ),
        ] {
            std::fs::write(paths.manifest(), text).unwrap();
            let e = Manifest::load(&paths.manifest()).unwrap_err().to_string();
            assert!(e.contains("manifest.json") && e.contains(said), "{e}");
        }
    }
}
