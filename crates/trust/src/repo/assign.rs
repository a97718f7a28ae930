//! Channel assignments signed into the TUF metadata: which channel each machine is on.
//!
//! TUF signs what each channel's release is; which channel a machine follows is said by the
//! server. Signed here, a move (`semithin fleet assign`) is authenticated end to end: a man in
//! the middle, a relay or a mirror cannot put a machine on another channel.
//!
//! The top-level targets role (the admin's key) delegates the paths `assignments/*`, and only
//! them, terminating, to the role `assignments`, signed with an online key kept by the server
//! (`keys/assignments.key`, like the snapshot and timestamp keys). That role delegates to 256
//! succinct hash bins (TAP 15) `assignments-00` .. `assignments-ff` with the same key: one
//! target `assignments/MACHINE` per assigned machine, its `custom` `{"channel": "..."}`. A change
//! signs again only the bins of the machines it moves, then snapshot and timestamp; a machine
//! downloads only its own bin. The key can sign nothing but assignments: a lookup of
//! `channels/...` never reaches the role.
//!
//! The target files are not written: the assignment is the `custom` field. Length and hashes
//! describe the canonical JSON `{"channel": C, "machine": M}`, so the metadata stays valid TUF.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::{Value, json};

use super::*;
use crate::metadata::{DelegatedRole, Delegations, SuccinctRoles, TargetFile};

/// The delegated role that holds the assignments (through its bins).
pub const ROLE: &str = "assignments";
/// The target path prefix of an assignment.
pub const PREFIX: &str = "assignments/";
/// Bits of a target path's SHA-256 that number its bin: 256 bins.
const BIN_BITS: u32 = 8;

/// The target path of a machine's assignment.
pub fn target_path(machine: &str) -> String {
    format!("{PREFIX}{machine}")
}

/// The channel an assignment target names.
pub fn channel_of(info: &TargetFile) -> std::result::Result<String, String> {
    info.custom
        .as_ref()
        .and_then(|c| c.get("channel"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| "the assignment has no custom.channel".to_owned())
}

/// The succinct delegation of the `assignments` role to its bins.
fn bins(keyid: &str) -> SuccinctRoles {
    SuccinctRoles {
        keyids: vec![keyid.to_owned()],
        threshold: 1,
        bit_length: BIN_BITS,
        name_prefix: ROLE.to_owned(),
        extra: Default::default(),
    }
}

/// What a change of assignments signed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AssignReport {
    /// Machines whose signed assignment changed.
    pub changed: usize,
    /// Bins signed again.
    pub bins: usize,
    /// What was written but the bins.
    pub written: Vec<Written>,
}

/// Leaves the bins out of what was written (256 lines say nothing to anyone).
fn without_bins(written: Vec<Written>) -> (Vec<Written>, usize) {
    let (bins, rest): (Vec<_>, Vec<_>) = written
        .into_iter()
        .partition(|w| w.role.starts_with(ROLE) && w.role != ROLE);
    (rest, bins.len())
}

fn empty_targets(version: u64, expires: String, delegations: Option<Delegations>) -> Targets {
    Targets {
        kind: "targets".into(),
        spec_version: SPEC_VERSION.into(),
        version,
        expires,
        targets: BTreeMap::new(),
        delegations,
        extra: Default::default(),
    }
}

impl TrustRepo {
    fn assignments_key_path(&self) -> PathBuf {
        self.layout().keys().join(format!("{ROLE}.key"))
    }

    /// The delegation of `assignments/*` in the top-level targets, if there is one.
    fn assignments_delegation(&self) -> Option<(&Delegations, &DelegatedRole)> {
        let d = self.targets.signed.delegations.as_ref()?;
        let r = d.roles.as_ref()?.iter().find(|r| r.name == ROLE)?;
        Some((d, r))
    }

    /// Whether the targets role delegates channel assignments.
    pub fn assignments_enabled(&self) -> bool {
        self.assignments_delegation().is_some()
    }

    /// How the current snapshot describes the delegated targets roles (`NAME.json`).
    pub(super) fn delegated_meta(&self) -> BTreeMap<String, MetaFile> {
        let mut m = self.snapshot.signed.meta.clone();
        m.remove("targets.json");
        m
    }

    /// Reads the current version of a delegated role, as the snapshot names it.
    pub(super) fn read_delegated(&self, role: &str) -> Result<Signed<Targets>> {
        let file = format!("{role}.json");
        let meta = self.snapshot.signed.meta.get(&file).ok_or_else(|| {
            Error::invalid(
                "snapshot",
                format!("does not list {file}: run `semithin trust refresh`"),
            )
        })?;
        let path = self
            .layout()
            .metadata()
            .join(format!("{}.{role}.json", meta.version));
        let bytes = std::fs::read(&path).map_err(Error::io("reading", &path))?;
        Signed::parse(role, &bytes).map_err(|e| Error::TrustRepo {
            path: path.clone(),
            reason: e.to_string(),
        })
    }

    /// The online key of the `assignments` role, checked against the delegation.
    fn assignments_key(&self) -> Result<KeyPair> {
        let path = self.assignments_key_path();
        let (_, r) = self
            .assignments_delegation()
            .ok_or_else(|| Error::TrustRepo {
                path: self.dir.clone(),
                reason: "channel assignments are not signed in this repository yet: a publish or \
                     `semithin trust refresh` (with the targets key) sets them up"
                    .into(),
            })?;
        let k = KeyPair::load(&path)?;
        if !r.keyids.contains(&k.id) {
            // an interrupted rotation: the delegation names the new key, not yet in place
            let pending = self.layout().keys().join(format!("{ROLE}.key.new"));
            if let Ok(n) = KeyPair::load(&pending)
                && r.keyids.contains(&n.id)
            {
                std::fs::rename(&pending, &path).map_err(Error::io("renaming into", &path))?;
                sync_dir(&self.layout().keys())?;
                return Ok(n);
            }
            return Err(Error::KeyFile {
                path,
                reason: format!(
                    "key {} is not the key the targets role delegates assignments to ({})",
                    k.id,
                    r.keyids.join(", ")
                ),
            });
        }
        Ok(k)
    }

    /// Sets up signed channel assignments: makes the `assignments` key when there is none, signs
    /// a targets role that delegates `assignments/*` to it, the role itself and its 256 empty
    /// bins, then snapshot and timestamp. Needs the targets key. Nothing is written when they
    /// are set up already.
    pub fn enable_assignments(&mut self, now: i64) -> Result<Vec<Written>> {
        if self.assignments_enabled() {
            return Ok(Vec::new());
        }
        let keys = self.online_keys(&Role::ONLINE)?;
        let key_path = self.assignments_key_path();
        let akey = if key_path.is_file() {
            KeyPair::load(&key_path)?
        } else {
            let k = KeyPair::generate()?;
            k.save(&key_path)?;
            sync_dir(&self.layout().keys())?;
            k
        };
        let lifetime = self.config.expires.snapshot;
        let expires = clock::format(now + lifetime);

        let mut t = self.targets.signed.clone();
        t.version = self.next_version(Role::Targets)?;
        t.expires = clock::format(now + self.config.expires.targets);
        let d = t.delegations.get_or_insert_with(|| Delegations {
            keys: BTreeMap::new(),
            roles: Some(Vec::new()),
            succinct_roles: None,
            extra: Default::default(),
        });
        if d.succinct_roles.is_some() {
            return Err(Error::invalid(
                "targets",
                "the targets role delegates to hash bins already: assignments cannot be added",
            ));
        }
        d.keys.insert(akey.id.clone(), akey.public.clone());
        d.roles.get_or_insert_with(Vec::new).push(DelegatedRole {
            name: ROLE.into(),
            keyids: vec![akey.id.clone()],
            threshold: 1,
            terminating: true,
            paths: Some(vec![format!("{PREFIX}*")]),
            path_hash_prefixes: None,
            extra: Default::default(),
        });
        let targets = sign(Role::Targets, &t, &[&keys[&Role::Targets]])?;

        let mut delegated = Vec::new();
        let next = |role: &str| self.next_delegated_version(role);
        let role = empty_targets(
            next(ROLE)?,
            expires.clone(),
            Some(Delegations {
                keys: BTreeMap::from([(akey.id.clone(), akey.public.clone())]),
                roles: None,
                succinct_roles: Some(bins(&akey.id)),
                extra: Default::default(),
            }),
        );
        delegated.push((ROLE.to_owned(), sign_as(ROLE, &role, &[&akey])?));
        for bin in 0..(1u32 << BIN_BITS) {
            let name = format!("{ROLE}-{bin:02x}");
            let b = empty_targets(next(&name)?, expires.clone(), None);
            delegated.push((name.clone(), sign_as(&name, &b, &[&akey])?));
        }
        let pending = self.seal(
            Some(targets),
            delegated,
            &keys[&Role::Snapshot],
            &keys[&Role::Timestamp],
            now,
        )?;
        self.self_check(&pending)?;
        self.clean_tmp()?;
        Ok(without_bins(self.write(pending)?).0)
    }

    /// Replaces the assignments key: a targets role delegating `assignments/*` to a new key, and
    /// the role and all its bins signed with it (their content unchanged), then snapshot and
    /// timestamp. Needs the targets key. The new key is written as `assignments.key.new` first
    /// and renamed over the old one once the metadata naming it is written; a command that
    /// finds the delegation naming the pending key takes it.
    pub fn rotate_assignments_key(&mut self, now: i64) -> Result<AssignReport> {
        let old = self.assignments_key()?;
        let keys = self.online_keys(&Role::ONLINE)?;
        let new = KeyPair::generate()?;
        let l = self.layout();
        let pending_path = l.keys().join(format!("{ROLE}.key.new"));
        let _ = std::fs::remove_file(&pending_path);
        new.save(&pending_path)?;
        sync_dir(&l.keys())?;

        let mut t = self.targets.signed.clone();
        t.version = self.next_version(Role::Targets)?;
        t.expires = clock::format(now + self.config.expires.targets);
        let d = t
            .delegations
            .as_mut()
            .expect("assignments_key found the delegation");
        for r in d.roles.iter_mut().flatten() {
            if r.name == ROLE {
                r.keyids = vec![new.id.clone()];
            }
        }
        let still_used = d.roles.iter().flatten().any(|r| r.keyids.contains(&old.id));
        if !still_used {
            d.keys.remove(&old.id);
        }
        d.keys.insert(new.id.clone(), new.public.clone());
        let targets = sign(Role::Targets, &t, &[&keys[&Role::Targets]])?;

        let expires = clock::format(now + self.config.expires.snapshot);
        let mut delegated = Vec::new();
        let mut role = self.read_delegated(ROLE)?.signed;
        role.version = self.next_delegated_version(ROLE)?;
        role.expires = expires.clone();
        role.delegations = Some(Delegations {
            keys: BTreeMap::from([(new.id.clone(), new.public.clone())]),
            roles: None,
            succinct_roles: Some(bins(&new.id)),
            extra: Default::default(),
        });
        delegated.push((ROLE.to_owned(), sign_as(ROLE, &role, &[&new])?));
        for bin in 0..(1u32 << BIN_BITS) {
            let name = format!("{ROLE}-{bin:02x}");
            let mut b = self.read_delegated(&name)?.signed;
            b.version = self.next_delegated_version(&name)?;
            b.expires = expires.clone();
            delegated.push((name.clone(), sign_as(&name, &b, &[&new])?));
        }
        let pending = self.seal(
            Some(targets),
            delegated,
            &keys[&Role::Snapshot],
            &keys[&Role::Timestamp],
            now,
        )?;
        let (written, bins) = self.write_delegated(pending)?;
        let path = self.assignments_key_path();
        std::fs::rename(&pending_path, &path).map_err(Error::io("renaming into", &path))?;
        sync_dir(&self.layout().keys())?;
        Ok(AssignReport {
            changed: 0,
            bins,
            written,
        })
    }

    /// The next version of a delegated role: above every file of it on disk.
    fn next_delegated_version(&self, role: &str) -> Result<u64> {
        let current = self
            .snapshot
            .signed
            .meta
            .get(&format!("{role}.json"))
            .map_or(0, |m| m.version);
        let on_disk = files::highest_version_of(&self.layout().metadata(), role)?.unwrap_or(0);
        Ok(current.max(on_disk) + 1)
    }

    /// Every signed assignment: machine -> channel.
    pub fn assignments(&self) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        if !self.assignments_enabled() {
            return Ok(out);
        }
        for bin in 0..(1u32 << BIN_BITS) {
            let b = self.read_delegated(&format!("{ROLE}-{bin:02x}"))?;
            for (path, info) in &b.signed.targets {
                if let (Some(m), Ok(c)) = (path.strip_prefix(PREFIX), channel_of(info)) {
                    out.insert(m.to_owned(), c);
                }
            }
        }
        Ok(out)
    }

    /// Signs `changes` (machine -> its channel, `None` to drop its assignment): new versions of
    /// the bins they touch, then snapshot and timestamp. Uses the online keys of the server
    /// (assignments, snapshot, timestamp), never the targets key. Nothing is written when the
    /// signed assignments say so already.
    pub fn sign_assignments(
        &mut self,
        changes: &BTreeMap<String, Option<String>>,
        now: i64,
    ) -> Result<AssignReport> {
        self.resign_assignments(changes, false, now)
    }

    /// Whether the assignments metadata has less than `left` of its lifetime left (or expired).
    pub fn assignments_due(&self, left: f64, now: i64) -> Result<bool> {
        if !self.assignments_enabled() {
            return Ok(false);
        }
        let margin = ((self.config.expires.snapshot as f64 * left) as i64).max(1);
        // Bins are signed with the role (set-up, renewal) or later (a change): none expires
        // before the role.
        Ok(self.read_delegated(ROLE)?.expires_at() - now < margin)
    }

    /// Signs the `assignments` role and all of its bins again, unchanged but for version and
    /// expiry (the server does it before they expire).
    pub fn renew_assignments(&mut self, now: i64) -> Result<AssignReport> {
        self.resign_assignments(&BTreeMap::new(), true, now)
    }

    fn resign_assignments(
        &mut self,
        changes: &BTreeMap<String, Option<String>>,
        all: bool,
        now: i64,
    ) -> Result<AssignReport> {
        let (delegated, changed) = self.assignments_pending(changes, all, now)?;
        if delegated.is_empty() {
            return Ok(AssignReport::default());
        }
        let keys = self.online_keys(&[Role::Snapshot, Role::Timestamp])?;
        let pending = self.seal(
            None,
            delegated,
            &keys[&Role::Snapshot],
            &keys[&Role::Timestamp],
            now,
        )?;
        let (written, bins) = self.write_delegated(pending)?;
        Ok(AssignReport {
            changed,
            bins,
            written,
        })
    }

    /// Checks and writes pending metadata that holds delegated roles, then removes their old
    /// versions; what was written, without the bins, and how many bins.
    pub(super) fn write_delegated(&mut self, pending: Pending) -> Result<(Vec<Written>, usize)> {
        self.self_check(&pending)?;
        self.clean_tmp()?;
        let old = self.snapshot.signed.meta.clone();
        let written = self.write(pending)?;
        self.prune_delegated(&old);
        Ok(without_bins(written))
    }

    /// How the snapshot will describe the delegated roles once `delegated` is written.
    pub(super) fn delegated_meta_with(
        &self,
        delegated: &[(String, Signed<Targets>)],
    ) -> BTreeMap<String, MetaFile> {
        let mut meta = self.delegated_meta();
        for (name, s) in delegated {
            meta.insert(format!("{name}.json"), meta_file(s));
        }
        meta
    }

    /// A snapshot listing `targets` (new, or the current) and the delegated roles as they will
    /// be once `delegated` is written, and a timestamp of it: what a change writes.
    pub(super) fn seal(
        &self,
        targets: Option<Signed<Targets>>,
        delegated: Delegated,
        snapshot_key: &KeyPair,
        timestamp_key: &KeyPair,
        now: i64,
    ) -> Result<Pending> {
        let snapshot = new_snapshot(
            &self.config,
            now,
            targets.as_ref().unwrap_or(&self.targets),
            &self.delegated_meta_with(&delegated),
            self.next_version(Role::Snapshot)?,
            snapshot_key,
        )?;
        let timestamp = new_timestamp(
            &self.config,
            now,
            &snapshot,
            self.next_version(Role::Timestamp)?,
            timestamp_key,
        )?;
        Ok(Pending {
            root: None,
            delegated,
            targets,
            snapshot: Some(snapshot),
            timestamp: Some(timestamp),
        })
    }

    /// New versions of the bins `changes` touch (of the role and all bins with `all`), signed
    /// with the assignments key, and how many machines' assignments changed. Writes nothing.
    pub(super) fn assignments_pending(
        &self,
        changes: &BTreeMap<String, Option<String>>,
        all: bool,
        now: i64,
    ) -> Result<(Delegated, usize)> {
        let akey = self.assignments_key()?;
        for (m, c) in changes {
            check_target_name(&target_path(m))?;
            if let Some(c) = c {
                check_target_name(&format!("channels/{c}"))?;
            }
        }
        let s = bins(&akey.id);
        let mut by_bin: BTreeMap<String, Vec<(&String, &Option<String>)>> = BTreeMap::new();
        for (m, c) in changes {
            by_bin
                .entry(s.role_for(&target_path(m)))
                .or_default()
                .push((m, c));
        }
        if all {
            for bin in 0..(1u32 << BIN_BITS) {
                by_bin.entry(format!("{ROLE}-{bin:02x}")).or_default();
            }
        }
        let expires = clock::format(now + self.config.expires.snapshot);
        let mut delegated = Vec::new();
        let mut changed = 0;
        if all {
            let mut role = self.read_delegated(ROLE)?.signed;
            role.version = self.next_delegated_version(ROLE)?;
            role.expires = expires.clone();
            delegated.push((ROLE.to_owned(), sign_as(ROLE, &role, &[&akey])?));
        }
        for (bin, moves) in by_bin {
            let mut b = self.read_delegated(&bin)?.signed;
            let before = b.targets.clone();
            for (m, c) in moves {
                let path = target_path(m);
                match c {
                    None => {
                        b.targets.remove(&path);
                    }
                    Some(c) => {
                        let file = cjson::to_vec(&json!({"channel": c, "machine": m})).map_err(
                            |reason| Error::Parse {
                                role: bin.clone(),
                                reason,
                            },
                        )?;
                        let mut hashes = BTreeMap::new();
                        hashes.insert("sha256".to_owned(), sha256_hex(&file));
                        b.targets.insert(
                            path,
                            TargetFile {
                                length: file.len() as u64,
                                hashes,
                                custom: Some(json!({ "channel": c })),
                                extra: Default::default(),
                            },
                        );
                    }
                }
            }
            let moved = b
                .targets
                .keys()
                .chain(before.keys())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|p| b.targets.get(*p) != before.get(*p))
                .count();
            if moved == 0 && !all {
                continue;
            }
            changed += moved;
            b.version = self.next_delegated_version(&bin)?;
            b.expires = expires.clone();
            delegated.push((bin.clone(), sign_as(&bin, &b, &[&akey])?));
        }
        Ok((delegated, changed))
    }

    /// Removes versions of delegated roles older than the one the previous snapshot named
    /// (`old`): a client in the middle of an update may still ask for that one. Best effort.
    fn prune_delegated(&self, old: &BTreeMap<String, MetaFile>) {
        let m = self.layout().metadata();
        for (file, meta) in old {
            let Some(role) = file.strip_suffix(".json") else {
                continue;
            };
            if role == "targets" || !role.starts_with(ROLE) {
                continue;
            }
            if let Ok(versions) = files::versions_of(&m, role) {
                for v in versions.into_iter().filter(|v| *v < meta.version) {
                    let _ = std::fs::remove_file(m.join(format!("{v}.{role}.json")));
                }
            }
        }
    }
}
