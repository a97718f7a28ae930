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
//! STATE/trial                  "RELEASE PREVIOUS" while a switch is under trial (for the boot)
//! STATE/trial-boots            "RELEASE N": boots of that trial, counted by the boot script
//! STATE/trial-failed           "RELEASE REASON": the boot script switched back to PREVIOUS
//! STATE/jobs/DELIVERY.json     a job delivery: started (before it runs), then its result
//! STATE/quarantine/TIME-ID/    what verification moved out of deployment ID and the /etc overlay
//! STATE/seals/ID               the seal of deployment ID, written after a full verification
//!                              (the quick check at boot, crates/agent/src/repair/seal.rs)
//! ```

use std::path::{Path, PathBuf};

use semithin_protocol::api::{Failure, Health, Integrity, MachineStatus};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
    /// On a live machine (`live = true`): the file the live boot wrote the verified release
    /// into (`/run/semithin/booted`), which is then the running release instead of `current`.
    pub live_booted: Option<PathBuf>,
}

impl Layout {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            live_booted: None,
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
    /// One record per job delivery (crates/agent/src/jobs).
    pub fn jobs(&self) -> PathBuf {
        self.dir.join("jobs")
    }
    /// What verification moved aside: one directory per verification that moved anything.
    pub fn quarantine(&self) -> PathBuf {
        self.dir.join("quarantine")
    }
    /// Seals of deployments, one file per deployment verified in full (`repair::seal`).
    pub fn seals(&self) -> PathBuf {
        self.dir.join("seals")
    }
    /// The default upper directory of the `/etc` overlay (docs/BOOT.md).
    pub fn etc_upper(&self) -> PathBuf {
        self.dir.join("overlay/etc/upper")
    }
    pub fn current_link(&self) -> PathBuf {
        self.dir.join("current")
    }
    /// The open trial, for the boot script: `RELEASE PREVIOUS` (`-` for none).
    pub fn trial_file(&self) -> PathBuf {
        self.dir.join("trial")
    }
    /// Boots of the open trial, written by the boot script: `RELEASE N`.
    pub fn trial_boots(&self) -> PathBuf {
        self.dir.join("trial-boots")
    }
    /// Left by the boot script when it switched a trial back: `RELEASE REASON`.
    pub fn trial_failed(&self) -> PathBuf {
        self.dir.join("trial-failed")
    }

    /// The release the `current` link points at.
    pub fn current(&self) -> Result<Option<String>> {
        if let Some(f) = &self.live_booted {
            return crate::live::booted(f);
        }
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub release: String,
    /// What `current` pointed at before (the rollback target).
    pub previous: Option<String>,
    pub switched_at: i64,
    /// Past this time without confirmation, the switch is rolled back.
    pub deadline: i64,
    /// `health` before the trial, given back when the switch never happened.
    #[serde(default)]
    pub health_before: Health,
    /// A rollback has begun, for this reason: it is finished whatever `current` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_back: Option<String>,
}

/// `STATE/trial-failed`: the boot script switched `current` back from `release` at boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootFailure {
    pub release: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub machine_id: Option<String>,
    pub name: Option<String>,
    pub server: Option<String>,
    pub status: Option<MachineStatus>,
    /// The channel this machine follows: its pinned one, else the first the server named
    /// (docs/TRUST.md, "Channel assignment").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
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
    /// Unix seconds of the last quick check at boot (the deployment unchanged since its seal):
    /// the boot was checked, but the next full verification is still due `verify_interval_secs`
    /// after `last_verify`.
    #[serde(skip_serializing_if = "is_zero")]
    pub last_boot_check: i64,
    /// What that verification found, reported while its release is current.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrity: Option<Integrity>,
    /// The last cycle failed (not reaching the server aside): reported until a cycle succeeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing: Option<Failure>,
    /// Why the server keeps this machine on its release for now (its delta pack is being
    /// built), as the last check-in said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// The backup (`backup_dir`) could not be made, since when and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<crate::backup::Warning>,
}

impl State {
    /// Switch, before the link moves: the trial, and the release at the front of `history`, so
    /// that a kill at any later point leaves a history that holds the running deployment.
    pub fn open_trial(
        &mut self,
        release: &str,
        previous: Option<String>,
        now: i64,
        deadline_secs: u64,
    ) {
        self.trial = Some(Trial {
            release: release.to_owned(),
            previous,
            switched_at: now,
            deadline: now.saturating_add(deadline_secs.min(i64::MAX as u64) as i64),
            health_before: self.health,
            rolling_back: None,
        });
        self.health = Health::Checking;
        // The deployment switched from is kept for rollback even when no history named it (a
        // state directory made by `image disk`, or a state.json moved aside).
        if let Some(p) = self.trial.as_ref().and_then(|t| t.previous.clone())
            && !self.history.contains(&p)
        {
            self.history.insert(0, p);
        }
        self.history.retain(|h| h != release);
        self.history.insert(0, release.to_owned());
    }

    /// The switch never happened (killed before the link moved): forget the trial and give
    /// back what it changed.
    pub fn abandon_trial(&mut self) -> Option<Trial> {
        let t = self.trial.take()?;
        self.history.retain(|h| *h != t.release);
        self.health = t.health_before;
        Some(t)
    }

    /// The trial's release passed its checks. A failed release is forgotten: this one (tried
    /// again after `agent retry`) or another, which the machine has moved past; it is tried
    /// again if the server ever asks for it again.
    pub fn confirm_trial(&mut self) -> Option<Trial> {
        let t = self.trial.take()?;
        self.health = Health::Healthy;
        self.last_error = None;
        self.failed_release = None;
        Some(t)
    }

    /// A rollback begins: recorded before the link moves back.
    pub fn begin_rollback(&mut self, reason: &str) {
        if let Some(t) = &mut self.trial
            && t.rolling_back.is_none()
        {
            t.rolling_back = Some(reason.to_owned());
        }
    }

    /// The link is back: the release failed here, for the reason recorded.
    pub fn finish_rollback(&mut self) -> Option<Trial> {
        let t = self.trial.take()?;
        self.history.retain(|h| *h != t.release);
        self.health = Health::Failed;
        self.failed_release = Some(t.release.clone());
        self.last_error = t.rolling_back.clone();
        Some(t)
    }

    /// The boot script rolled back a release no trial was recorded for.
    pub fn record_failure(&mut self, release: &str, reason: &str) {
        self.history.retain(|h| h != release);
        self.health = Health::Failed;
        self.failed_release = Some(release.to_owned());
        self.last_error = Some(reason.to_owned());
    }

    /// `semithin agent retry`: the failed release is tried again at the next cycle.
    pub fn retry(&mut self) -> Option<String> {
        let f = self.failed_release.take();
        self.last_error = None;
        if self.health == Health::Failed {
            self.health = Health::Unknown;
        }
        f
    }

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

fn is_zero(v: &i64) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn healthy_on_a() -> State {
        State {
            health: Health::Healthy,
            history: vec![A.into()],
            ..State::default()
        }
    }

    #[test]
    fn a_trial_is_in_history_before_the_link_moves() {
        let mut s = healthy_on_a();
        s.open_trial(B, Some(A.into()), 100, 900);
        assert_eq!(s.history, vec![B.to_owned(), A.to_owned()]);
        assert_eq!(s.health, Health::Checking);
        let t = s.trial.clone().unwrap();
        assert_eq!((t.switched_at, t.deadline), (100, 1000));
        assert_eq!(t.health_before, Health::Healthy);
        // again (a retry after an abandoned switch): still once in history
        s.open_trial(B, Some(A.into()), 200, 900);
        assert_eq!(s.history, vec![B.to_owned(), A.to_owned()]);
    }

    #[test]
    fn an_abandoned_trial_gives_back_health_and_history() {
        let mut s = healthy_on_a();
        s.open_trial(B, Some(A.into()), 100, 900);
        assert_eq!(s.abandon_trial().map(|t| t.release), Some(B.to_owned()));
        assert_eq!(s.health, Health::Healthy, "not `checking` for good");
        assert_eq!(s.history, vec![A.to_owned()]);
        assert!(s.trial.is_none());
        // an old state.json's trial has no health_before: unknown, not checking
        let mut s = healthy_on_a();
        s.trial = Some(Trial {
            release: B.into(),
            ..Trial::default()
        });
        s.health = Health::Checking;
        s.abandon_trial();
        assert_eq!(s.health, Health::Unknown);
        let old: Trial =
            serde_json::from_str(r#"{"release":"b","previous":null,"switched_at":1,"deadline":2}"#)
                .unwrap();
        assert_eq!(old.health_before, Health::Unknown);
        assert_eq!(old.rolling_back, None);
    }

    #[test]
    fn a_rollback_is_marked_then_recorded_as_a_failure() {
        let mut s = healthy_on_a();
        s.open_trial(B, Some(A.into()), 100, 900);
        s.begin_rollback("first reason");
        s.begin_rollback("second reason");
        let t = s.trial.clone().unwrap();
        assert_eq!(t.rolling_back.as_deref(), Some("first reason"));
        // the mark survives a save and a load
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        s.save(&path).unwrap();
        let mut s = State::load(&path).unwrap();
        assert_eq!(s.trial, Some(t));
        s.finish_rollback();
        assert!(s.trial.is_none());
        assert_eq!(s.health, Health::Failed);
        assert_eq!(s.failed_release.as_deref(), Some(B));
        assert_eq!(s.last_error.as_deref(), Some("first reason"));
        assert_eq!(s.history, vec![A.to_owned()]);
        // retry forgets it
        assert_eq!(s.retry().as_deref(), Some(B));
        assert_eq!(s.failed_release, None);
        assert_eq!(s.last_error, None);
        assert_eq!(s.health, Health::Unknown);
    }

    #[test]
    fn a_confirmed_trial_is_healthy() {
        let mut s = healthy_on_a();
        s.last_error = Some("an old error".into());
        s.failed_release = Some(B.into()); // tried again after `agent retry`... and passed
        s.open_trial(B, Some(A.into()), 100, 900);
        s.confirm_trial();
        assert!(s.trial.is_none());
        assert_eq!(s.health, Health::Healthy);
        assert_eq!(s.last_error, None);
        assert_eq!(s.failed_release, None);
        assert_eq!(s.history, vec![B.to_owned(), A.to_owned()]);
        // a failure of another release is forgotten once a release is confirmed here
        let c = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
        s.failed_release = Some(c.into());
        s.open_trial(A, Some(B.into()), 200, 900);
        s.confirm_trial();
        assert_eq!(s.failed_release, None);
    }
}
