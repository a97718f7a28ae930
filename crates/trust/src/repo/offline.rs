//! Metadata for offline bundles (docs/OFFLINE.md, "How long a bundle lasts"): a timestamp (and
//! a snapshot) that stay valid long enough for removable media to reach an air-gapped site,
//! followed at once by a timestamp of the usual lifetime, so machines online move past the
//! long-lived one at their next check-in and it cannot be replayed to them.

use super::Role;
use super::{Pending, TrustRepo, new_snapshot_until, new_timestamp_until};
use crate::clock;
use crate::error::{Error, Result};

/// What [`TrustRepo::sign_for_offline`] made for a bundle.
#[derive(Clone, Debug)]
pub struct OfflineMeta {
    /// The long-lived `timestamp.json`, byte for byte (the repository has a newer one).
    pub timestamp: Vec<u8>,
    pub version: u64,
    /// Unix seconds.
    pub expires: i64,
}

impl TrustRepo {
    /// Signs a snapshot and a timestamp valid until `until` (Unix seconds), then a timestamp of
    /// the usual lifetime naming the same snapshot, and returns the first for a bundle. Refused,
    /// with nothing signed, when the root or targets expire before `until` (machines would
    /// refuse the bundle's metadata then anyway) or `until` is not in the future.
    pub fn sign_for_offline(&mut self, until: i64, now: i64) -> Result<OfflineMeta> {
        let refuse = |reason: String| Error::TrustRepo {
            path: self.dir.clone(),
            reason,
        };
        if until <= now {
            return Err(refuse(format!(
                "a bundle valid until {} has already expired",
                clock::format(until)
            )));
        }
        for (role, at, what) in [
            (
                Role::Root,
                self.root.expires_at(),
                "rotate a role (`semithin trust rotate`) to sign a new root",
            ),
            (
                Role::Targets,
                self.targets.expires_at(),
                "publish or run `semithin trust refresh` first, or ask for a shorter --expires",
            ),
        ] {
            if at < until {
                return Err(refuse(format!(
                    "the {} metadata expires at {}, before the bundle would ({}): {what}",
                    role.name(),
                    clock::format(at),
                    clock::format(until)
                )));
            }
        }
        let keys = self.online_keys(&[Role::Snapshot, Role::Timestamp])?;
        let (snapshot_key, timestamp_key) = (&keys[&Role::Snapshot], &keys[&Role::Timestamp]);
        let lifetime = self.config.expires;
        let snapshot = new_snapshot_until(
            (now + lifetime.snapshot).max(until),
            &self.targets,
            &self.delegated_meta(),
            self.next_version(Role::Snapshot)?,
            snapshot_key,
        )?;
        let long = new_timestamp_until(
            until,
            &snapshot,
            self.next_version(Role::Timestamp)?,
            timestamp_key,
        )?;
        let out = OfflineMeta {
            timestamp: long.raw.clone(),
            version: long.signed.version,
            expires: until,
        };
        self.write_checked(Pending {
            snapshot: Some(snapshot.clone()),
            timestamp: Some(long),
            ..Default::default()
        })?;
        let short = new_timestamp_until(
            now + lifetime.timestamp,
            &snapshot,
            self.next_version(Role::Timestamp)?,
            timestamp_key,
        )?;
        self.write_checked(Pending {
            timestamp: Some(short),
            ..Default::default()
        })?;
        Ok(out)
    }
}
