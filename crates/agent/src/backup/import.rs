//! `semithin agent import DIR`: a release brought on removable media (`semithin bundle create`,
//! docs/OFFLINE.md), deployed without a network, and the machine's signed report left beside it.
//!
//! The bundle has the backup disk's layout (manifest, repository, signed metadata, roots) plus
//! delta packs, `bundle.json` and `results/`. Unlike a restore, its metadata is verified with
//! the TUF client starting from the machine's own trusted state, expiry judged now: a bundle
//! older than what the machine trusts is a rollback, an expired one is frozen, both refused.
//! Nothing of the machine changes before the metadata and every object the machine lacks have
//! verified; then the trusted metadata advances, the release is staged and switched to as an
//! update is (trial, health checks, rollback), and the result is written, signed as a check-in.

use std::path::{Path, PathBuf};

use semithin_protocol::api::CheckInRequest;
use semithin_protocol::path::ApiPath;
use semithin_protocol::sign::{Counter, MachineKey};
use semithin_store::pack::ObjKind;
use semithin_store::{Access, CommitId, Repo, transfer};
use serde::{Deserialize, Serialize};

use super::manifest::{Manifest, Paths};
use super::trust;
use crate::error::{Error, Result};
use crate::{Agent, deploy, now, short};

/// The format of a result file; a newer one is refused by the server.
pub const RESULT_FORMAT: u32 = 1;

/// `results/MACHINE-ID.json`: a check-in request as the machine would have sent it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResultFile {
    pub format: u32,
    pub machine: String,
    pub method: String,
    /// The path the signature covers (`/api/v1/checkin`).
    pub path: String,
    /// The four signature headers, by name.
    pub headers: std::collections::BTreeMap<String, String>,
    /// The check-in request body, exactly the bytes signed (JSON text).
    pub body: String,
}

/// What an import did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Imported {
    pub release: String,
    pub channel: String,
    /// The release the machine ran before.
    pub from: Option<String>,
    /// A delta pack from that release was applied (every object it made verified).
    pub delta_applied: bool,
    /// Objects read from the bundle's repository (each verified against its id).
    pub objects_copied: u64,
    /// `current` was switched to it (else it was current already).
    pub switched: bool,
    /// The signed report written for `bundle sync`.
    pub result: PathBuf,
}

impl Agent {
    /// Imports the bundle in `dir` (see the module's documentation).
    pub fn import(&mut self, dir: &Path) -> Result<Imported> {
        let paths = Paths::new(dir);
        let manifest = Manifest::load(&paths.manifest())?.ok_or_else(|| {
            Error::Config(format!(
                "{} holds no bundle: {} is missing",
                dir.display(),
                paths.manifest().display()
            ))
        })?;
        let release = manifest.current.clone().ok_or_else(|| {
            Error::Config(format!("{} names no release", paths.manifest().display()))
        })?;
        let entry = manifest
            .entry(&release)
            .cloned()
            .expect("a loaded manifest lists its current release");
        let machine = self.state.machine_id.clone().ok_or_else(|| {
            Error::Config("this machine is not enrolled: a bundle's report needs its key".into())
        })?;
        if let Some(ch) = self.cfg.channel.clone().or(self.state.channel.clone())
            && ch != entry.channel
        {
            return Err(Error::Release {
                release,
                reason: format!(
                    "the bundle is of channel {}, but this machine follows {ch}",
                    entry.channel
                ),
            });
        }
        let bundle = Repo::open(&paths.repo(), Access::Read)?;
        self.init_trust()?;
        let work = self.layout.dir.join(".import-trust");
        let mut changed = false;
        let res = self.import_verified(&paths, &bundle, &entry, &work, &mut changed);
        let _ = deploy::remove_dir(&work);
        match res {
            Ok(mut out) => {
                out.result = self.write_result(&paths, &machine)?;
                Ok(out)
            }
            // A release tried and rolled back is news for the server too: the report says so.
            Err(e) if changed => {
                let written = self.write_result(&paths, &machine)?;
                Err(Error::Release {
                    release: entry.release.clone(),
                    reason: format!(
                        "{}; the report is in {}",
                        crate::error::render(&e),
                        written.display()
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }

    fn import_verified(
        &mut self,
        paths: &Paths,
        bundle: &Repo,
        entry: &super::manifest::Entry,
        work: &Path,
        changed: &mut bool,
    ) -> Result<Imported> {
        let release = entry.release.clone();
        // A machine that follows the channel signed for it checks the bundle's signed
        // assignment as a check-in's answer is checked.
        let assigned = |client: &mut semithin_trust::client::Client<'_>| -> Result<()> {
            if self.cfg.channel.is_some() {
                return Ok(());
            }
            match self.signed_assignment(client)? {
                Some(signed) if signed.as_deref() != Some(entry.channel.as_str()) => {
                    Err(Error::Channel(format!(
                        "the bundle is of channel {}, but its signed assignment for this machine \
                         says {}: nothing is imported",
                        entry.channel,
                        signed.map_or("none".to_owned(), |s| format!("{s:?}"))
                    )))
                }
                _ => Ok(()),
            }
        };
        trust::verify_from_trusted(
            paths,
            entry,
            &self.layout.trust(),
            &bundle.objects,
            work,
            now(),
            &assigned,
        )?;
        let refused = |reason: String| Error::Release {
            release: release.clone(),
            reason,
        };
        let id: CommitId = release
            .parse()
            .map_err(|_| refused("not a commit id".into()))?;
        let current = self.layout.current()?;
        let mut out = Imported {
            release: release.clone(),
            channel: entry.channel.clone(),
            from: current.clone(),
            ..Imported::default()
        };
        // The commit is signed (its hashes checked above): into the store, then a delta pack
        // from the running release, then whatever is still missing from the bundle's repository.
        if !self.repo.objects.contains(ObjKind::Commit, id.as_bytes()) {
            self.repo.objects.put(
                &bundle
                    .objects
                    .get_verified(ObjKind::Commit, id.as_bytes())?,
            )?;
            self.repo.objects.flush()?;
        }
        if let Some(cur) = current.as_deref().filter(|c| *c != release) {
            let pack = paths
                .dir
                .join("deltas")
                .join(format!("{cur}-{release}.pack"));
            if pack.is_file() {
                out.delta_applied = self.apply_bundle_delta(&pack, cur, &release)?;
            }
        }
        loop {
            let want = transfer::missing(&self.repo.objects, id)?;
            if want.is_empty() {
                break;
            }
            for (kind, oid) in want {
                let obj = bundle.objects.get_verified(kind, &oid).map_err(|e| {
                    refused(format!(
                        "the bundle's objects do not verify: {} {}: {e}",
                        kind.name(),
                        hex::encode(oid)
                    ))
                })?;
                self.repo.objects.put(&obj)?;
                out.objects_copied += 1;
            }
            self.repo.objects.flush()?;
        }
        super::verify_objects(&self.repo.objects, &release)
            .map_err(|e| refused(format!("the release is not whole after the import: {e}")))?;
        self.say(&format!(
            "import: release {} of channel {} verified ({} object(s) from the bundle{})",
            short(&release),
            entry.channel,
            out.objects_copied,
            if out.delta_applied {
                ", the rest from its delta pack"
            } else {
                ""
            }
        ));
        // Verified: from here on the machine is changed.
        trust::advance(work, &self.layout.trust())?;
        *changed = true;
        if current.as_deref() == Some(release.as_str()) {
            return Ok(out);
        }
        if !self.layout.deployment(&release).is_dir() {
            deploy::stage(&self.repo, &self.layout, &release)?;
            self.seal_staged(&release);
        }
        self.switch(&release, current)?;
        self.configure()?;
        self.check_health()?;
        if self.layout.current()?.as_deref() != Some(release.as_str()) {
            return Err(refused(format!(
                "imported, but rolled back: {}",
                self.state
                    .last_error
                    .as_deref()
                    .unwrap_or("its health checks failed")
            )));
        }
        out.switched = true;
        Ok(out)
    }

    /// Applies the bundle's pack `from -> to`; false (said) when it does not fit, so the
    /// objects come from the bundle's repository instead.
    fn apply_bundle_delta(&mut self, pack: &Path, from: &str, to: &str) -> Result<bool> {
        let parse = |s: &str| -> Result<CommitId> {
            s.parse().map_err(|_| Error::Release {
                release: s.to_owned(),
                reason: "not a commit id".into(),
            })
        };
        let f = std::fs::File::open(pack).map_err(Error::io("opening", pack))?;
        match semithin_delta::apply::apply(&self.repo.objects, parse(from)?, parse(to)?, f) {
            Ok(a) => {
                self.say(&format!(
                    "import: applied the delta pack {} -> {}: {} trees and {} files rebuilt and \
                     verified",
                    short(from),
                    short(to),
                    a.trees,
                    a.files
                ));
                Ok(true)
            }
            Err(e) => {
                self.say(&format!(
                    "import: the delta pack {} was refused ({e}); using the bundle's objects",
                    pack.display()
                ));
                Ok(false)
            }
        }
    }

    /// The machine's report, job results not yet reported and facts, signed as a check-in, in
    /// `results/MACHINE.json` (written under a temporary name, synced, renamed).
    fn write_result(&mut self, paths: &Paths, machine: &str) -> Result<PathBuf> {
        self.read_facts();
        let req = CheckInRequest {
            report: self.report()?,
            wait_secs: 0,
            accepts_jobs: false,
            job_results: self.jobs.store.unreported()?,
            inventory: None,
            accepts_vars: false,
            facts: self.facts.as_ref().map(|(_, f)| f.clone()),
            bad_upstreams: Vec::new(),
        };
        let body = serde_json::to_string(&req).expect("serialises");
        let key = MachineKey::load(&self.layout.key())?;
        let path = ApiPath::checkin();
        let counter = Counter::new().next_now();
        let headers = key
            .sign("POST", path.as_str(), counter, body.as_bytes())
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let file = ResultFile {
            format: RESULT_FORMAT,
            machine: machine.to_owned(),
            method: "POST".into(),
            path: path.as_str().to_owned(),
            headers,
            body,
        };
        let dir = paths.dir.join("results");
        std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        let dest = dir.join(format!("{machine}.json"));
        let tmp = dir.join(format!(".{machine}.json.tmp"));
        let bytes = serde_json::to_vec_pretty(&file).expect("serialises");
        semithin_store::fsutil::write_synced(&tmp, &bytes)?;
        std::fs::rename(&tmp, &dest).map_err(Error::io("renaming into", &dest))?;
        semithin_store::fsutil::sync_dir(&dir)?;
        Ok(dest)
    }
}
