//! `semithin agent restore --from DIR [--release ID]`: a release of the backup, verified against
//! the root this machine trusts and deployed as the agent deploys, without a server.
//!
//! Nothing is changed before everything is verified: the manifest, the release's signed
//! metadata (TUF's workflow from the trusted root, the channel's target permitting the release,
//! the commit object against the target's hashes) and every object of the release (read, so
//! hashed against its id). Then the objects the machine's store lacks are copied into it, the
//! deployment is staged from the backup (or, when it exists, verified and put right with the
//! backup's objects), and a release other than the current one is switched to as after an
//! update: a trial, the health checks, confirmation or rollback.

use std::path::Path;

use semithin_store::{Access, Repo};
use serde::Serialize;

use super::manifest::{Manifest, Paths, is_release_id};
use super::{copy_objects, trust, verify_objects};
use crate::error::{Error, Result};
use crate::{Agent, deploy, now, short};

/// What a restore did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Restored {
    pub release: String,
    pub channel: String,
    /// Objects of the release read from the backup and verified.
    pub objects_verified: u64,
    /// Of them, copied into the machine's store (it lacked them).
    pub objects_copied: u64,
    /// The deployment was staged anew (else it existed and was verified and put right).
    pub staged: bool,
    /// Paths of an existing deployment put back.
    pub repaired: u64,
    /// `current` was switched to it (else it was current already).
    pub switched: bool,
}

impl Agent {
    /// Restores `release` (default: the backup's current one) from the backup in `from`.
    pub fn restore(&mut self, from: &Path, release: Option<&str>) -> Result<Restored> {
        let paths = Paths::new(from);
        let manifest = Manifest::load(&paths.manifest())?.ok_or_else(|| {
            Error::Config(format!(
                "{} holds no backup: {} is missing",
                from.display(),
                paths.manifest().display()
            ))
        })?;
        let release = match release {
            Some(r) if is_release_id(r) => r.to_owned(),
            Some(r) => {
                return Err(Error::Config(format!(
                    "{r:?} is not a release id (64 lowercase hex digits)"
                )));
            }
            None => manifest.current.clone().ok_or_else(|| {
                Error::Config(format!(
                    "{} names no current release: give --release",
                    paths.manifest().display()
                ))
            })?,
        };
        let entry = manifest.entry(&release).cloned().ok_or_else(|| {
            let held: Vec<&str> = manifest
                .releases
                .iter()
                .map(|e| e.release.as_str())
                .collect();
            Error::Config(format!(
                "the backup in {} does not hold release {release} (it holds {})",
                from.display(),
                if held.is_empty() {
                    "none".to_owned()
                } else {
                    held.join(", ")
                }
            ))
        })?;
        if let Some(ch) = self.cfg.channel.clone().or(self.state.channel.clone())
            && ch != entry.channel
        {
            return Err(Error::Release {
                release,
                reason: format!(
                    "the backup says it is of channel {}, but this machine follows {ch}",
                    entry.channel
                ),
            });
        }
        let backup = Repo::open(&paths.repo(), Access::Read)?;
        let anchor = self.trusted_root_bytes()?;
        let work = self.layout.dir.join(".restore-trust");
        trust::verify(&paths, &entry, &anchor, &backup.objects, &work, now())?;
        let objects_verified =
            verify_objects(&backup.objects, &release).map_err(|e| Error::Release {
                release: release.clone(),
                reason: format!("the backup's objects do not verify: {e}"),
            })?;
        self.say(&format!(
            "restore: release {} of channel {} verified in {} ({objects_verified} objects)",
            short(&release),
            entry.channel,
            from.display()
        ));
        // Verified: from here on the machine is changed.
        let objects_copied = copy_objects(&backup.objects, &self.repo.objects, &release)?;
        // The other kept deployments' releases too, when the backup has them: a store made anew
        // (the damaged one moved aside) then holds every kept release again, as pruning needs.
        for e in &manifest.releases {
            if e.release != release
                && self.layout.deployment(&e.release).is_dir()
                && let Err(err) = copy_objects(&backup.objects, &self.repo.objects, &e.release)
            {
                self.say(&format!(
                    "restore: release {} (kept) could not be copied too: {err}",
                    short(&e.release)
                ));
            }
        }
        let mut out = Restored {
            release: release.clone(),
            channel: entry.channel.clone(),
            objects_verified,
            objects_copied,
            ..Restored::default()
        };
        let cache = self.repo.cache_dir();
        if self.layout.deployment(&release).is_dir() {
            let r =
                crate::repair::boot::repair_with(&self.layout, &backup.objects, &cache, &release)?;
            if r.unresolved() {
                return Err(Error::Release {
                    release,
                    reason: format!(
                        "its deployment could not be put right: {}",
                        r.errors
                            .iter()
                            .chain(&r.problems)
                            .take(5)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                });
            }
            out.repaired = r.repaired;
        } else {
            deploy::stage_from(&backup, &cache, &self.layout, &release)?;
            out.staged = true;
        }
        drop(backup);
        // put right or made anew: verified once more from the machine's store, and sealed
        self.seal_staged(&release);
        let current = self.layout.current()?;
        if current.as_deref() == Some(release.as_str()) {
            if !self.state.history.contains(&release) {
                self.state.history.insert(0, release.clone());
                self.save()?;
            }
            return Ok(out);
        }
        // As after an update: a trial, the configuration, the health checks.
        self.switch(&release, current)?;
        self.configure()?;
        self.check_health()?;
        if self.layout.current()?.as_deref() != Some(release.as_str()) {
            return Err(Error::Release {
                release,
                reason: format!(
                    "restored, but rolled back: {}",
                    self.state
                        .last_error
                        .as_deref()
                        .unwrap_or("its health checks failed")
                ),
            });
        }
        out.switched = true;
        Ok(out)
    }
}
