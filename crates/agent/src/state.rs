//! What the agent keeps in its state directory, and the one file of its own state.
//!
//! ```text
//! STATE/machine.key            the machine's ed25519 key (0600)
//! STATE/state.json             enrollment and deployment state (written atomically)
//! STATE/repo/                  a semithin repository: the objects of every release kept
//! STATE/trust/                 the TUF metadata this machine trusts
//! STATE/deployments/ID/        a release materialised (ID = commit id)
//! STATE/deployments/.staging-ID/  one being staged (removed at start)
//! STATE/current -> deployments/ID   the deployment to run, switched by rename
//! ```

use std::path::{Path, PathBuf};

use semithin_protocol::api::{Health, MachineStatus};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("machine.key")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn repo(&self) -> PathBuf {
        self.dir.join("repo")
    }
    pub fn trust(&self) -> PathBuf {
        self.dir.join("trust")
    }
    pub fn targets(&self) -> PathBuf {
        self.dir.join("trust/targets")
    }
    pub fn deployments(&self) -> PathBuf {
        self.dir.join("deployments")
    }
    pub fn deployment(&self, release: &str) -> PathBuf {
        self.deployments().join(release)
    }
    pub fn staging(&self, release: &str) -> PathBuf {
        self.deployments().join(format!(".staging-{release}"))
    }
    pub fn current_link(&self) -> PathBuf {
        self.dir.join("current")
    }

    /// The release the `current` link points at.
    pub fn current(&self) -> Result<Option<String>> {
        let link = self.current_link();
        match std::fs::read_link(&link) {
            Ok(t) => {
                let name = t
                    .file_name()
                    .and_then(|n| n.to_str())
                    .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
                    .ok_or_else(|| {
                        Error::Config(format!(
                            "{} points at {}, not a deployment",
                            link.display(),
                            t.display()
                        ))
                    })?;
                Ok(Some(name.to_owned()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading", &link)(e)),
        }
    }
}

/// A release switched to and not yet confirmed healthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub release: String,
    /// What `current` pointed at before (the rollback target).
    pub previous: Option<String>,
    pub switched_at: i64,
    /// Past this time without confirmation, the switch is rolled back.
    pub deadline: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub machine_id: Option<String>,
    pub name: Option<String>,
    pub server: Option<String>,
    pub status: Option<MachineStatus>,
    pub trial: Option<Trial>,
    pub health: Health,
    pub failed_release: Option<String>,
    pub last_error: Option<String>,
    /// Deployments, newest first (the current one included).
    pub history: Vec<String>,
    /// Bytes fetched from the server in all.
    pub fetched_bytes: u64,
    /// Unix seconds of the last full verification of the running deployment.
    pub last_verify: i64,
}

impl State {
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                Error::Config(format!(
                    "{} is damaged ({e}); move it aside to start over (the machine will enroll \
                     again)",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::io("reading", path)(e)),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path.parent().expect("state file has a parent");
        let tmp = dir.join(".state.json.tmp");
        let bytes = serde_json::to_vec_pretty(self).expect("serialises");
        semithin_store::fsutil::write_synced(&tmp, &bytes)?;
        std::fs::rename(&tmp, path).map_err(Error::io("renaming", path))?;
        semithin_store::fsutil::sync_dir(dir)?;
        Ok(())
    }
}
