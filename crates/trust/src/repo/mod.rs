//! The repository (publisher) side of TUF: writes root, targets, snapshot and timestamp metadata
//! with consistent snapshots, signs them with canonical JSON, and keeps the online keys.
//!
//! Layout of the trust directory (in a semithin repository: `REPO/trust/`, docs/FORMAT.md):
//!
//! ```text
//! config.toml                      lifetimes of the roles' metadata (optional, defaults below)
//! metadata/N.root.json             every root ever signed; root.json is a copy of the latest
//! metadata/timestamp.json          the only file replaced in place
//! metadata/N.snapshot.json         consistent snapshots: one file per version
//! metadata/N.targets.json
//! targets/DIR/SHA256.BASENAME      target files at their consistent-snapshot paths
//! keys/{targets,snapshot,timestamp}.key   online signing keys (0600); the root key is not here
//! tmp/                             temporary files of atomic writes
//! ```
//!
//! Every file is written atomically (temporary file, fsync, rename, fsync of the directory), and a
//! change is written in the order target files, targets, snapshot, timestamp (roots before all of
//! them), so a reader that starts at the timestamp never meets a file that is not there yet.
//! Versions only grow, also over files a crash left unreferenced. Everything is built, signed and
//! checked with the client's own verification in memory before the first byte is written, so a
//! command that fails on bad input changes nothing.
//!
//! The caller serialises writers (semithin holds the repository's write lock).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cjson;
use crate::client::check_target_name;
use crate::clock;
use crate::error::{Error, Result};
use crate::keys::{self, KeyPair};
use crate::metadata::{
    MetaFile, RoleKeys, RoleMeta, Root, SPEC_VERSION, Signed, Snapshot, TargetFile, Targets,
    Timestamp, envelope,
};
use crate::release::ChannelRelease;

/// Name of the trust directory inside a semithin repository.
pub const DIR_NAME: &str = "trust";
/// Name of the settings file inside the trust directory.
pub const CONFIG_FILE: &str = "config.toml";

pub mod assign;
mod config;
mod files;
mod init;
mod offline;
mod refresh;
mod rotate;

pub use config::{
    Config, Lifetimes, Role, format_duration, format_duration_rounded, parse_duration,
};
pub use files::target_file_path;
use files::{Layout, highest_version, make_dirs, sync_dir, write_atomic};
pub use init::init;
pub use offline::OfflineMeta;

/// What `init` made.
#[derive(Clone, Debug, Serialize)]
pub struct InitReport {
    pub dir: PathBuf,
    pub root_keys: Vec<KeyReport>,
    pub root_threshold: u64,
    pub online_keys: Vec<KeyReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KeyReport {
    pub role: String,
    pub keyid: String,
    /// Where the private key is.
    pub file: PathBuf,
}

/// One metadata file written.
#[derive(Clone, Debug, Serialize)]
pub struct Written {
    pub role: String,
    pub version: u64,
    pub expires: String,
    pub file: String,
}

/// What `publish` did.
#[derive(Clone, Debug, Serialize)]
pub struct PublishReport {
    pub target: String,
    pub length: u64,
    pub sha256: String,
    /// The target file's path under `targets/`.
    pub file: String,
    pub custom: Value,
    pub written: Vec<Written>,
}

/// What `rotate` did.
#[derive(Clone, Debug, Serialize)]
pub struct RotateReport {
    pub role: String,
    pub old_keyids: Vec<String>,
    pub new_keys: Vec<KeyReport>,
    pub threshold: u64,
    pub written: Vec<Written>,
}

/// What `refresh` did.
#[derive(Clone, Debug, Serialize)]
pub struct RefreshReport {
    /// Renewed metadata, in the order written; empty when nothing was due.
    pub written: Vec<Written>,
    /// Why each renewed role was renewed.
    pub reasons: BTreeMap<String, String>,
    /// Problems only the admin can solve (the root key is offline).
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RoleStatus {
    pub version: u64,
    pub expires: String,
    /// Seconds left (negative when expired).
    pub expires_in: i64,
    /// Whether the metadata carries a threshold of valid signatures of the current root's keys.
    pub signed: bool,
    pub keyids: Vec<String>,
    pub threshold: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetStatus {
    pub target: String,
    pub length: u64,
    pub sha256: String,
    pub custom: Option<Value>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub consistent_snapshot: bool,
    pub roles: BTreeMap<String, RoleStatus>,
    pub targets: Vec<TargetStatus>,
    pub lifetimes: BTreeMap<String, String>,
    pub warnings: Vec<String>,
}

/// A trust directory opened for reading and publishing.
pub struct TrustRepo {
    dir: PathBuf,
    pub config: Config,
    root: Signed<Root>,
    targets: Signed<Targets>,
    snapshot: Signed<Snapshot>,
    timestamp: Signed<Timestamp>,
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// How the snapshot and timestamp roles describe a metadata file: version, length, sha256.
fn meta_file<T: RoleMeta>(s: &Signed<T>) -> MetaFile {
    let mut hashes = BTreeMap::new();
    hashes.insert("sha256".to_owned(), sha256_hex(&s.raw));
    MetaFile {
        version: s.signed.version(),
        length: Some(s.raw.len() as u64),
        hashes: Some(hashes),
        extra: Default::default(),
    }
}

/// Signs `signed` with every key of `signers`, and parses the result back as a client would.
fn sign<T: RoleMeta>(role: Role, signed: &T, signers: &[&KeyPair]) -> Result<Signed<T>> {
    sign_as(role.name(), signed, signers)
}

/// [`sign`] for any role name, delegated ones included.
fn sign_as<T: RoleMeta>(role: &str, signed: &T, signers: &[&KeyPair]) -> Result<Signed<T>> {
    let canonical = cjson::to_vec(signed).map_err(|reason| Error::Parse {
        role: role.into(),
        reason,
    })?;
    let mut seen = BTreeSet::new();
    let sigs: Vec<_> = signers
        .iter()
        .filter(|k| seen.insert(k.id.clone()))
        .map(|k| k.sign(&canonical))
        .collect();
    let bytes = envelope(signed, &sigs)?;
    let parsed = Signed::<T>::parse(role, &bytes)?;
    if parsed.canonical != canonical {
        return Err(Error::invalid(
            role,
            "the written metadata does not read back as what was signed",
        ));
    }
    Ok(parsed)
}

fn role_keys(keyids: Vec<String>, threshold: u64) -> RoleKeys {
    RoleKeys {
        keyids,
        threshold,
        extra: Default::default(),
    }
}

/// Checks metadata the way a client will, against a root.
fn check_signed<T: RoleMeta>(role: Role, s: &Signed<T>, root: &Root) -> Result<()> {
    let rk = root
        .roles
        .get(role.name())
        .ok_or_else(|| Error::invalid("root", format!("no {role} role")))?;
    keys::verify(role.name(), s, &root.keys, rk)
}

/// Reads a metadata file of the trust directory.
fn read_meta<T: RoleMeta>(path: &Path, role: Role) -> Result<Signed<T>> {
    let bytes = std::fs::read(path).map_err(Error::io("reading", path))?;
    Signed::parse(role.name(), &bytes).map_err(|e| Error::TrustRepo {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// A snapshot describing `targets`, and a timestamp describing that snapshot.
fn snapshot_and_timestamp(
    config: &Config,
    now: i64,
    targets: &Signed<Targets>,
    snapshot_version: u64,
    snapshot_key: &KeyPair,
    timestamp_version: u64,
    timestamp_key: &KeyPair,
) -> Result<(Signed<Snapshot>, Signed<Timestamp>)> {
    let none = BTreeMap::new();
    let snapshot = new_snapshot(config, now, targets, &none, snapshot_version, snapshot_key)?;
    let timestamp = new_timestamp(config, now, &snapshot, timestamp_version, timestamp_key)?;
    Ok((snapshot, timestamp))
}

/// A snapshot listing `targets` and the delegated targets roles in `delegated` (`NAME.json` ->
/// how it is described).
fn new_snapshot(
    config: &Config,
    now: i64,
    targets: &Signed<Targets>,
    delegated: &BTreeMap<String, MetaFile>,
    version: u64,
    key: &KeyPair,
) -> Result<Signed<Snapshot>> {
    new_snapshot_until(
        now + config.expires.snapshot,
        targets,
        delegated,
        version,
        key,
    )
}

/// A snapshot expiring at `expires` (Unix seconds).
fn new_snapshot_until(
    expires: i64,
    targets: &Signed<Targets>,
    delegated: &BTreeMap<String, MetaFile>,
    version: u64,
    key: &KeyPair,
) -> Result<Signed<Snapshot>> {
    let mut meta = delegated.clone();
    meta.insert("targets.json".to_owned(), meta_file(targets));
    let snapshot = Snapshot {
        kind: "snapshot".into(),
        spec_version: SPEC_VERSION.into(),
        version,
        expires: clock::format(expires),
        meta,
        extra: Default::default(),
    };
    sign(Role::Snapshot, &snapshot, &[key])
}

fn new_timestamp(
    config: &Config,
    now: i64,
    snapshot: &Signed<Snapshot>,
    version: u64,
    key: &KeyPair,
) -> Result<Signed<Timestamp>> {
    new_timestamp_until(now + config.expires.timestamp, snapshot, version, key)
}

/// A timestamp expiring at `expires` (Unix seconds).
fn new_timestamp_until(
    expires: i64,
    snapshot: &Signed<Snapshot>,
    version: u64,
    key: &KeyPair,
) -> Result<Signed<Timestamp>> {
    let mut meta = BTreeMap::new();
    meta.insert("snapshot.json".to_owned(), meta_file(snapshot));
    let timestamp = Timestamp {
        kind: "timestamp".into(),
        spec_version: SPEC_VERSION.into(),
        version,
        expires: clock::format(expires),
        meta,
        extra: Default::default(),
    };
    sign(Role::Timestamp, &timestamp, &[key])
}

/// Delegated targets roles: (name, metadata).
type Delegated = Vec<(String, Signed<Targets>)>;

/// New metadata waiting to be written, in writing order.
#[derive(Default)]
struct Pending {
    root: Option<Signed<Root>>,
    /// Delegated targets roles (name, metadata), written before the targets role.
    delegated: Delegated,
    targets: Option<Signed<Targets>>,
    snapshot: Option<Signed<Snapshot>>,
    timestamp: Option<Signed<Timestamp>>,
}

impl TrustRepo {
    /// Opens the trust directory `dir`. Reads only; the current state is what the newest root
    /// and `timestamp.json` describe.
    pub fn open(dir: &Path) -> Result<Self> {
        let l = Layout(dir);
        if !l.metadata().join("root.json").is_file() {
            return Err(Error::TrustRepo {
                path: dir.to_owned(),
                reason: "no trust metadata here: run `semithin trust init` first".into(),
            });
        }
        let config = Config::load(dir)?;
        let m = l.metadata();
        let root_version = highest_version(&m, Role::Root)?.unwrap_or(0);
        let root_path = if root_version == 0 {
            m.join("root.json")
        } else {
            m.join(format!("{root_version}.root.json"))
        };
        let root: Signed<Root> = read_meta(&root_path, Role::Root)?;
        let timestamp: Signed<Timestamp> = read_meta(&m.join("timestamp.json"), Role::Timestamp)?;
        let sv = timestamp.signed.meta["snapshot.json"].version;
        let snapshot: Signed<Snapshot> =
            read_meta(&m.join(format!("{sv}.snapshot.json")), Role::Snapshot)?;
        let tv = snapshot.signed.meta["targets.json"].version;
        let targets: Signed<Targets> =
            read_meta(&m.join(format!("{tv}.targets.json")), Role::Targets)?;
        Ok(Self {
            dir: dir.to_owned(),
            config,
            root,
            targets,
            snapshot,
            timestamp,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn root(&self) -> &Signed<Root> {
        &self.root
    }

    pub fn targets(&self) -> &Signed<Targets> {
        &self.targets
    }

    pub fn snapshot(&self) -> &Signed<Snapshot> {
        &self.snapshot
    }

    pub fn timestamp(&self) -> &Signed<Timestamp> {
        &self.timestamp
    }

    fn layout(&self) -> Layout<'_> {
        Layout(&self.dir)
    }

    /// The next version of a role: above the current one and above every file on disk.
    fn next_version(&self, role: Role) -> Result<u64> {
        let current = match role {
            Role::Root => self.root.signed.version,
            Role::Targets => self.targets.signed.version,
            Role::Snapshot => self.snapshot.signed.version,
            Role::Timestamp => self.timestamp.signed.version,
        };
        let on_disk = if role == Role::Timestamp {
            0
        } else {
            highest_version(&self.layout().metadata(), role)?.unwrap_or(0)
        };
        Ok(current.max(on_disk) + 1)
    }

    /// Loads the key of an online role and checks that the current root authorises it. A new
    /// key left by an interrupted rotation (`ROLE.key.new`) is taken when the root already
    /// names it.
    fn online_key(&self, role: Role) -> Result<(KeyPair, Option<PathBuf>)> {
        let l = self.layout();
        let rk = &self.root.signed.roles[role.name()];
        let path = l.key(role);
        let k = KeyPair::load(&path)?;
        if rk.keyids.contains(&k.id) {
            return Ok((k, None));
        }
        let new = l.new_key(role);
        if new.is_file() {
            let n = KeyPair::load(&new)?;
            if rk.keyids.contains(&n.id) {
                return Ok((n, Some(new)));
            }
        }
        Err(Error::KeyFile {
            path,
            reason: format!(
                "key {} is not the {role} key of root version {} (which names {})",
                k.id,
                self.root.signed.version,
                rk.keyids.join(", ")
            ),
        })
    }

    /// Loads the keys of `roles` before anything is written; promotes a pending new key.
    fn online_keys(&self, roles: &[Role]) -> Result<BTreeMap<Role, KeyPair>> {
        let mut out = BTreeMap::new();
        let mut promote = Vec::new();
        for &r in roles {
            let (k, pending) = self.online_key(r)?;
            if let Some(p) = pending {
                promote.push((p, self.layout().key(r)));
            }
            out.insert(r, k);
        }
        for (from, to) in promote {
            std::fs::rename(&from, &to).map_err(Error::io("renaming into", &to))?;
            sync_dir(&self.layout().keys())?;
        }
        Ok(out)
    }

    /// Removes temporary files an interrupted writer left; makes `tmp/` if it is missing.
    fn clean_tmp(&self) -> Result<()> {
        let tmp = self.layout().tmp();
        match std::fs::read_dir(&tmp) {
            Ok(rd) => {
                for e in rd.flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&tmp).map_err(Error::io("creating", &tmp))
            }
            Err(e) => Err(Error::io("listing", &tmp)(e)),
        }
    }

    /// Writes pending metadata: roots, then targets, snapshot, timestamp; adopts it.
    fn write(&mut self, p: Pending) -> Result<Vec<Written>> {
        let l = self.layout();
        let (m, tmp) = (l.metadata(), l.tmp());
        let mut written = Vec::new();
        let mut note = |role: &str, version: u64, expires: &str, file: String| {
            written.push(Written {
                role: role.into(),
                version,
                expires: expires.to_owned(),
                file,
            })
        };
        if let Some(r) = &p.root {
            let name = format!("{}.root.json", r.signed.version);
            write_atomic(&tmp, &m.join(&name), &r.raw, 0o644)?;
            write_atomic(&tmp, &m.join("root.json"), &r.raw, 0o644)?;
            note(Role::Root.name(), r.signed.version, &r.signed.expires, name);
        }
        for (role, d) in &p.delegated {
            let name = format!("{}.{role}.json", d.signed.version);
            write_atomic(&tmp, &m.join(&name), &d.raw, 0o644)?;
            note(role, d.signed.version, &d.signed.expires, name);
        }
        if let Some(t) = &p.targets {
            let name = format!("{}.targets.json", t.signed.version);
            write_atomic(&tmp, &m.join(&name), &t.raw, 0o644)?;
            note(
                Role::Targets.name(),
                t.signed.version,
                &t.signed.expires,
                name,
            );
        }
        if let Some(s) = &p.snapshot {
            let name = format!("{}.snapshot.json", s.signed.version);
            write_atomic(&tmp, &m.join(&name), &s.raw, 0o644)?;
            note(
                Role::Snapshot.name(),
                s.signed.version,
                &s.signed.expires,
                name,
            );
        }
        if let Some(t) = &p.timestamp {
            write_atomic(&tmp, &m.join("timestamp.json"), &t.raw, 0o644)?;
            note(
                Role::Timestamp.name(),
                t.signed.version,
                &t.signed.expires,
                "timestamp.json".into(),
            );
        }
        if let Some(r) = p.root {
            self.root = r;
        }
        if let Some(t) = p.targets {
            self.targets = t;
        }
        if let Some(s) = p.snapshot {
            self.snapshot = s;
        }
        if let Some(t) = p.timestamp {
            self.timestamp = t;
        }
        Ok(written)
    }

    /// Checks pending metadata as a client would, then writes it.
    fn write_checked(&mut self, p: Pending) -> Result<Vec<Written>> {
        self.self_check(&p)?;
        self.clean_tmp()?;
        self.write(p)
    }

    /// Checks pending metadata against the root it will be read with, as a client would.
    fn self_check(&self, p: &Pending) -> Result<()> {
        let root = p.root.as_ref().unwrap_or(&self.root);
        let wrap = |role: Role, r: Result<()>| {
            r.map_err(|e| Error::invalid(role.name(), format!("self-check failed: {e}")))
        };
        if let Some(t) = &p.targets {
            wrap(Role::Targets, check_signed(Role::Targets, t, &root.signed))?;
        }
        let targets = p.targets.as_ref().unwrap_or(&self.targets);
        for (name, d) in &p.delegated {
            // the delegator: the top-level targets for `assignments`, that role for its bins
            let delegator = if name == assign::ROLE {
                targets.signed.delegations.clone()
            } else {
                p.delegated
                    .iter()
                    .find(|(n, _)| n == assign::ROLE)
                    .map(|(_, r)| Ok(r.clone()))
                    .unwrap_or_else(|| self.read_delegated(assign::ROLE))?
                    .signed
                    .delegations
            };
            let rk = delegator
                .as_ref()
                .and_then(|dl| dl.role_keys(name).map(|rk| (dl, rk)))
                .ok_or_else(|| Error::invalid(name, "self-check failed: not delegated"))?;
            keys::verify(name, d, &rk.0.keys, &rk.1)
                .map_err(|e| Error::invalid(name, format!("self-check failed: {e}")))?;
        }
        if let Some(s) = &p.snapshot {
            wrap(
                Role::Snapshot,
                check_signed(Role::Snapshot, s, &root.signed),
            )?;
        }
        if let Some(t) = &p.timestamp {
            wrap(
                Role::Timestamp,
                check_signed(Role::Timestamp, t, &root.signed),
            )?;
        }
        Ok(())
    }

    /// Rewrites `root.json` when a crash left it behind the newest `N.root.json`.
    fn repair_root_copy(&self) -> Result<()> {
        let l = self.layout();
        let copy = l.metadata().join("root.json");
        if std::fs::read(&copy).ok().as_deref() != Some(&self.root.raw[..]) {
            write_atomic(&l.tmp(), &copy, &self.root.raw, 0o644)?;
        }
        Ok(())
    }

    /// Publishes `content` as target `name` (a TUF target path, e.g. `channels/lab/stable`)
    /// with `custom`, keeping every other target: new targets, snapshot and timestamp.
    pub fn publish(
        &mut self,
        name: &str,
        content: &[u8],
        custom: Value,
        now: i64,
    ) -> Result<PublishReport> {
        self.publish_with(name, content, custom, BTreeMap::new(), now)
    }

    /// [`TrustRepo::publish`], signing `extra` targets in the same targets version: files the
    /// caller keeps elsewhere (boot artifacts), described by their length and hashes only, so
    /// nothing of them is written under `targets/`.
    pub fn publish_with(
        &mut self,
        name: &str,
        content: &[u8],
        custom: Value,
        extra: BTreeMap<String, TargetFile>,
        now: i64,
    ) -> Result<PublishReport> {
        check_target_name(name)?;
        for (n, info) in &extra {
            check_target_name(n)?;
            if n == name || info.hashes.is_empty() {
                return Err(Error::Invalid {
                    role: n.clone(),
                    reason: "an extra target needs hashes and a name of its own".into(),
                });
            }
        }
        // a repository made before assignments were signed gets them with its next publish
        self.enable_assignments(now)?;
        let keys = self.online_keys(&Role::ONLINE)?;
        let sha = sha256_hex(content);
        let mut hashes = BTreeMap::new();
        hashes.insert("sha256".to_owned(), sha.clone());
        let mut t = self.targets.signed.clone();
        t.version = self.next_version(Role::Targets)?;
        t.expires = clock::format(now + self.config.expires.targets);
        t.targets.insert(
            name.to_owned(),
            TargetFile {
                length: content.len() as u64,
                hashes,
                custom: Some(custom.clone()),
                extra: Default::default(),
            },
        );
        t.targets.extend(extra);
        prune_boot_targets(&mut t.targets);
        let targets = sign(Role::Targets, &t, &[&keys[&Role::Targets]])?;
        let pending = self.seal(
            Some(targets),
            Vec::new(),
            &keys[&Role::Snapshot],
            &keys[&Role::Timestamp],
            now,
        )?;
        self.self_check(&pending)?;

        self.clean_tmp()?;
        self.repair_root_copy()?;
        let l = self.layout();
        let file = target_file_path(name, &sha);
        let path = l.targets().join(&file);
        let present = std::fs::read(&path).is_ok_and(|b| b == content);
        if !present {
            make_dirs(&l.targets(), path.parent().unwrap_or(&l.targets()))?;
            write_atomic(&l.tmp(), &path, content, 0o644)?;
        }
        let written = self.write(pending)?;
        Ok(PublishReport {
            target: name.to_owned(),
            length: content.len() as u64,
            sha256: sha,
            file,
            custom,
            written,
        })
    }

    /// Publishes `release` as the target `channels/CHANNEL` (`content`: the commit object's
    /// bytes), with the `custom` field of [`ChannelRelease::to_custom`]. Every release it allows
    /// besides its own must have been signed as a channel's release before in this repository
    /// ([`TrustRepo::signed_releases`]): a rollout can keep machines on, or send them back to,
    /// only what the admin released once.
    pub fn publish_release(
        &mut self,
        channel: &str,
        content: &[u8],
        release: &ChannelRelease,
        now: i64,
    ) -> Result<PublishReport> {
        self.publish_release_with(channel, content, release, BTreeMap::new(), now)
    }

    /// [`TrustRepo::publish_release`] with `extra` targets signed in the same targets version
    /// ([`TrustRepo::publish_with`]): the release's boot artifacts.
    pub fn publish_release_with(
        &mut self,
        channel: &str,
        content: &[u8],
        release: &ChannelRelease,
        extra: BTreeMap<String, TargetFile>,
        now: i64,
    ) -> Result<PublishReport> {
        let invalid = |reason: String| Error::Invalid {
            role: format!("channels/{channel}"),
            reason,
        };
        let mut release = release.clone();
        release.check().map_err(invalid)?;
        if !release.allowed.is_empty() {
            let signed = self.signed_releases()?;
            if let Some(never) = release.allowed.iter().find(|a| !signed.contains(*a)) {
                return Err(invalid(format!(
                    "release {never} was never signed as a channel's release here: a rollout \
                     can allow only releases published before"
                )));
            }
        }
        let custom = release.to_custom(channel, now);
        self.publish_with(&format!("channels/{channel}"), content, custom, extra, now)
    }

    /// Every commit that a `channels/*` target of any targets version on disk named as its
    /// release (`custom.commit`).
    pub fn signed_releases(&self) -> Result<BTreeSet<String>> {
        let m = self.layout().metadata();
        let mut out = BTreeSet::new();
        let suffix = ".targets.json";
        for e in std::fs::read_dir(&m).map_err(Error::io("listing", &m))? {
            let e = e.map_err(Error::io("listing", &m))?;
            let name = e.file_name();
            let numbered = name
                .to_str()
                .and_then(|s| s.strip_suffix(suffix))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if !numbered {
                continue;
            }
            let t: Signed<Targets> = read_meta(&e.path(), Role::Targets)?;
            for (target, info) in &t.signed.targets {
                if !target.starts_with("channels/") {
                    continue;
                }
                if let Some(c) = info
                    .custom
                    .as_ref()
                    .and_then(|c| c.get("commit"))
                    .and_then(Value::as_str)
                {
                    out.insert(c.to_owned());
                }
            }
        }
        Ok(out)
    }
}

/// Drops the boot artifacts (`boot/RELEASE/NAME`) of releases that no channel's target names
/// any more, as its release or one a rollout allows: nothing can boot them (a boot checks the
/// channel's target first), and `semithin gc` can then remove their files.
pub fn prune_boot_targets(targets: &mut BTreeMap<String, TargetFile>) {
    let mut named = BTreeSet::new();
    for (name, info) in targets.iter() {
        if !name.starts_with("channels/") {
            continue;
        }
        if let Some(c) = info.custom.as_ref() {
            if let Some(v) = c.get("commit").and_then(Value::as_str) {
                named.insert(v.to_owned());
            }
            if let Some(a) = c.get("allowed").and_then(Value::as_array) {
                named.extend(a.iter().filter_map(Value::as_str).map(str::to_owned));
            }
        }
    }
    targets.retain(|name, _| match name.strip_prefix("boot/") {
        Some(rest) => rest
            .split_once('/')
            .is_some_and(|(release, _)| named.contains(release)),
        None => true,
    });
}

#[cfg(test)]
mod boot_prune_tests {
    use super::*;

    fn file(custom: Option<Value>) -> TargetFile {
        TargetFile {
            length: 1,
            hashes: BTreeMap::from([("sha256".to_owned(), "00".repeat(32))]),
            custom,
            extra: Default::default(),
        }
    }

    #[test]
    fn boot_targets_of_releases_no_channel_names_are_dropped() {
        let (a, b, c, d) = (
            "a".repeat(64),
            "b".repeat(64),
            "c".repeat(64),
            "d".repeat(64),
        );
        let mut t = BTreeMap::new();
        t.insert(
            "channels/x".to_owned(),
            file(Some(serde_json::json!({"commit": a, "allowed": [b]}))),
        );
        t.insert(
            "channels/y".to_owned(),
            file(Some(serde_json::json!({"commit": c}))),
        );
        for r in [&a, &b, &c, &d] {
            for n in ["vmlinuz", "root.squashfs"] {
                t.insert(format!("boot/{r}/{n}"), file(None));
            }
        }
        t.insert("assignments/m".to_owned(), file(None));
        prune_boot_targets(&mut t);
        let names: Vec<&str> = t.keys().map(String::as_str).collect();
        assert!(names.contains(&"assignments/m"));
        for r in [&a, &b, &c] {
            assert!(t.contains_key(&format!("boot/{r}/vmlinuz")), "{r}");
            assert!(t.contains_key(&format!("boot/{r}/root.squashfs")), "{r}");
        }
        assert!(!names.iter().any(|n| n.contains(&d)), "{names:?}");
    }
}

#[cfg(test)]
mod tests;
