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

mod config;
mod files;

pub use config::{
    Config, Lifetimes, Role, format_duration, format_duration_rounded, parse_duration,
};
pub use files::target_file_path;
use files::{Layout, highest_version, make_dirs, sync_dir, write_atomic};

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
    let canonical = cjson::to_vec(signed).map_err(|reason| Error::Parse {
        role: role.name().into(),
        reason,
    })?;
    let mut seen = BTreeSet::new();
    let sigs: Vec<_> = signers
        .iter()
        .filter(|k| seen.insert(k.id.clone()))
        .map(|k| k.sign(&canonical))
        .collect();
    let bytes = envelope(signed, &sigs)?;
    let parsed = Signed::<T>::parse(role.name(), &bytes)?;
    if parsed.canonical != canonical {
        return Err(Error::invalid(
            role.name(),
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

/// Loads root keys from files and checks they are root keys of `root`, enough of them for its
/// threshold. Errors name the file.
fn load_root_keys(root: &Root, paths: &[PathBuf]) -> Result<Vec<KeyPair>> {
    let rk = &root.roles["root"];
    let mut out: Vec<KeyPair> = Vec::new();
    for p in paths {
        let k = KeyPair::load(p)?;
        if !rk.keyids.contains(&k.id) {
            return Err(Error::KeyFile {
                path: p.clone(),
                reason: format!(
                    "key {} is not a root key of this repository (root version {})",
                    k.id, root.version
                ),
            });
        }
        if !out.iter().any(|o| o.id == k.id) {
            out.push(k);
        }
    }
    if (out.len() as u64) < rk.threshold {
        return Err(Error::invalid(
            "root",
            format!(
                "{} distinct root key(s) given ({}), the root threshold is {}: pass more \
                 --root-key files",
                out.len(),
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                rk.threshold
            ),
        ));
    }
    Ok(out)
}

/// Refuses paths where new root key files cannot go.
fn check_new_key_paths(paths: &[PathBuf]) -> Result<()> {
    let mut seen = BTreeSet::new();
    for p in paths {
        if !seen.insert(p) {
            return Err(Error::KeyFile {
                path: p.clone(),
                reason: "given twice".into(),
            });
        }
        if p.symlink_metadata().is_ok() {
            return Err(Error::KeyFile {
                path: p.clone(),
                reason: "already exists; a key file is never overwritten".into(),
            });
        }
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            return Err(Error::KeyFile {
                path: p.clone(),
                reason: format!("directory {} does not exist", parent.display()),
            });
        }
    }
    Ok(())
}

/// Writes new root keys to the admin's files; on failure removes the ones written.
fn save_root_keys(keys: &[KeyPair], paths: &[PathBuf]) -> Result<()> {
    for (i, (k, p)) in keys.iter().zip(paths).enumerate() {
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if let Err(e) = k.save(p).and_then(|()| sync_dir(parent)) {
            for q in &paths[..i] {
                let _ = std::fs::remove_file(q);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Makes a new trust directory at `dir`: root keys (written to `root_key_paths`, one key each,
/// never overwriting), the online keys, the settings file, and version 1 of every role (an empty
/// targets role). The directory appears at once, complete, or not at all.
pub fn init(
    dir: &Path,
    root_key_paths: &[PathBuf],
    threshold: u64,
    now: i64,
) -> Result<InitReport> {
    let refuse = |reason: String| Error::TrustRepo {
        path: dir.to_owned(),
        reason,
    };
    if dir.symlink_metadata().is_ok() {
        return Err(refuse(
            "already exists: trust is set up; use `semithin trust rotate` to change keys".into(),
        ));
    }
    if root_key_paths.is_empty() {
        return Err(refuse("no root key file given".into()));
    }
    if threshold == 0 || threshold > root_key_paths.len() as u64 {
        return Err(refuse(format!(
            "root threshold {threshold} with {} root key file(s): it must be 1..={0}",
            root_key_paths.len()
        )));
    }
    check_new_key_paths(root_key_paths)?;
    let config = Config::default();
    let root_keys = root_key_paths
        .iter()
        .map(|_| KeyPair::generate())
        .collect::<Result<Vec<_>>>()?;
    let online: BTreeMap<Role, KeyPair> = Role::ONLINE
        .into_iter()
        .map(|r| KeyPair::generate().map(|k| (r, k)))
        .collect::<Result<_>>()?;

    let mut all_keys = BTreeMap::new();
    let mut roles = BTreeMap::new();
    for k in &root_keys {
        all_keys.insert(k.id.clone(), k.public.clone());
    }
    roles.insert(
        "root".to_owned(),
        role_keys(root_keys.iter().map(|k| k.id.clone()).collect(), threshold),
    );
    for (r, k) in &online {
        all_keys.insert(k.id.clone(), k.public.clone());
        roles.insert(r.name().to_owned(), role_keys(vec![k.id.clone()], 1));
    }
    let root = Root {
        kind: "root".into(),
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version: 1,
        expires: clock::format(now + config.expires.root),
        keys: all_keys,
        roles,
        extra: Default::default(),
    };
    let root_signers: Vec<&KeyPair> = root_keys.iter().collect();
    let root = sign(Role::Root, &root, &root_signers)?;
    check_signed(Role::Root, &root, &root.signed)?;
    let targets = Targets {
        kind: "targets".into(),
        spec_version: SPEC_VERSION.into(),
        version: 1,
        expires: clock::format(now + config.expires.targets),
        targets: BTreeMap::new(),
        delegations: None,
        extra: Default::default(),
    };
    let targets = sign(Role::Targets, &targets, &[&online[&Role::Targets]])?;
    let (snapshot, timestamp) = snapshot_and_timestamp(
        &config,
        now,
        &targets,
        1,
        &online[&Role::Snapshot],
        1,
        &online[&Role::Timestamp],
    )?;
    for (role, ok) in [
        (
            Role::Targets,
            check_signed(Role::Targets, &targets, &root.signed),
        ),
        (
            Role::Snapshot,
            check_signed(Role::Snapshot, &snapshot, &root.signed),
        ),
        (
            Role::Timestamp,
            check_signed(Role::Timestamp, &timestamp, &root.signed),
        ),
    ] {
        ok.map_err(|e| Error::invalid(role.name(), format!("self-check failed: {e}")))?;
    }

    // Build the whole directory under a staging name beside it, then rename it into place.
    let parent = dir.parent().unwrap_or(Path::new("."));
    let staging = parent.join(format!(
        ".{}.init.tmp",
        dir.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    if staging.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&staging).map_err(Error::io("removing leftover", &staging))?;
    }
    let result = (|| -> Result<()> {
        let l = Layout(&staging);
        std::fs::create_dir(&staging).map_err(Error::io("creating", &staging))?;
        for d in [l.metadata(), l.targets(), l.tmp()] {
            std::fs::create_dir(&d).map_err(Error::io("creating", &d))?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(l.keys())
            .map_err(Error::io("creating", l.keys()))?;
        for (r, k) in &online {
            write_atomic(&l.tmp(), &l.key(*r), &k.file_bytes(), 0o600)?;
        }
        write_atomic(
            &l.tmp(),
            &staging.join(CONFIG_FILE),
            Config::default_text().as_bytes(),
            0o644,
        )?;
        let m = l.metadata();
        write_atomic(&l.tmp(), &m.join("1.root.json"), &root.raw, 0o644)?;
        write_atomic(&l.tmp(), &m.join("root.json"), &root.raw, 0o644)?;
        write_atomic(&l.tmp(), &m.join("1.targets.json"), &targets.raw, 0o644)?;
        write_atomic(&l.tmp(), &m.join("1.snapshot.json"), &snapshot.raw, 0o644)?;
        write_atomic(&l.tmp(), &m.join("timestamp.json"), &timestamp.raw, 0o644)?;
        sync_dir(&staging)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if let Err(e) = save_root_keys(&root_keys, root_key_paths) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&staging, dir) {
        let _ = std::fs::remove_dir_all(&staging);
        for p in root_key_paths {
            let _ = std::fs::remove_file(p);
        }
        return Err(Error::io("renaming into", dir)(e));
    }
    sync_dir(parent)?;
    let l = Layout(dir);
    Ok(InitReport {
        dir: dir.to_owned(),
        root_keys: root_keys
            .iter()
            .zip(root_key_paths)
            .map(|(k, p)| KeyReport {
                role: "root".into(),
                keyid: k.id.clone(),
                file: p.clone(),
            })
            .collect(),
        root_threshold: threshold,
        online_keys: online
            .iter()
            .map(|(r, k)| KeyReport {
                role: r.name().into(),
                keyid: k.id.clone(),
                file: l.key(*r),
            })
            .collect(),
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
    let snapshot = new_snapshot(config, now, targets, snapshot_version, snapshot_key)?;
    let timestamp = new_timestamp(config, now, &snapshot, timestamp_version, timestamp_key)?;
    Ok((snapshot, timestamp))
}

fn new_snapshot(
    config: &Config,
    now: i64,
    targets: &Signed<Targets>,
    version: u64,
    key: &KeyPair,
) -> Result<Signed<Snapshot>> {
    let mut meta = BTreeMap::new();
    meta.insert("targets.json".to_owned(), meta_file(targets));
    let snapshot = Snapshot {
        kind: "snapshot".into(),
        spec_version: SPEC_VERSION.into(),
        version,
        expires: clock::format(now + config.expires.snapshot),
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
    let mut meta = BTreeMap::new();
    meta.insert("snapshot.json".to_owned(), meta_file(snapshot));
    let timestamp = Timestamp {
        kind: "timestamp".into(),
        spec_version: SPEC_VERSION.into(),
        version,
        expires: clock::format(now + config.expires.timestamp),
        meta,
        extra: Default::default(),
    };
    sign(Role::Timestamp, &timestamp, &[key])
}

/// New metadata waiting to be written, in writing order.
#[derive(Default)]
struct Pending {
    root: Option<Signed<Root>>,
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
        let mut note = |role: Role, version: u64, expires: &str, file: String| {
            written.push(Written {
                role: role.name().into(),
                version,
                expires: expires.to_owned(),
                file,
            })
        };
        if let Some(r) = &p.root {
            let name = format!("{}.root.json", r.signed.version);
            write_atomic(&tmp, &m.join(&name), &r.raw, 0o644)?;
            write_atomic(&tmp, &m.join("root.json"), &r.raw, 0o644)?;
            note(Role::Root, r.signed.version, &r.signed.expires, name);
        }
        if let Some(t) = &p.targets {
            let name = format!("{}.targets.json", t.signed.version);
            write_atomic(&tmp, &m.join(&name), &t.raw, 0o644)?;
            note(Role::Targets, t.signed.version, &t.signed.expires, name);
        }
        if let Some(s) = &p.snapshot {
            let name = format!("{}.snapshot.json", s.signed.version);
            write_atomic(&tmp, &m.join(&name), &s.raw, 0o644)?;
            note(Role::Snapshot, s.signed.version, &s.signed.expires, name);
        }
        if let Some(t) = &p.timestamp {
            write_atomic(&tmp, &m.join("timestamp.json"), &t.raw, 0o644)?;
            note(
                Role::Timestamp,
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

    /// Checks pending metadata against the root it will be read with, as a client would.
    fn self_check(&self, p: &Pending) -> Result<()> {
        let root = p.root.as_ref().unwrap_or(&self.root);
        let wrap = |role: Role, r: Result<()>| {
            r.map_err(|e| Error::invalid(role.name(), format!("self-check failed: {e}")))
        };
        if let Some(t) = &p.targets {
            wrap(Role::Targets, check_signed(Role::Targets, t, &root.signed))?;
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
        check_target_name(name)?;
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
        let targets = sign(Role::Targets, &t, &[&keys[&Role::Targets]])?;
        let snapshot = new_snapshot(
            &self.config,
            now,
            &targets,
            self.next_version(Role::Snapshot)?,
            &keys[&Role::Snapshot],
        )?;
        let timestamp = new_timestamp(
            &self.config,
            now,
            &snapshot,
            self.next_version(Role::Timestamp)?,
            &keys[&Role::Timestamp],
        )?;
        let pending = Pending {
            root: None,
            targets: Some(targets),
            snapshot: Some(snapshot),
            timestamp: Some(timestamp),
        };
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
        self.publish(&format!("channels/{channel}"), content, custom, now)
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

    /// Replaces the key(s) of `role` and signs a new root (version N+1) with a threshold of the
    /// old root keys (`root_key_paths`) and, for a root rotation, of the new ones too.
    ///
    /// - `root`: new root keys are written to `new_root_key_paths` (one key each, never
    ///   overwriting) before the new root is; `threshold` sets the new root threshold (default:
    ///   the old one).
    /// - an online role: its key file is replaced, and its metadata and what depends on it are
    ///   signed again with new versions (targets -> snapshot -> timestamp).
    pub fn rotate(
        &mut self,
        role: Role,
        root_key_paths: &[PathBuf],
        new_root_key_paths: &[PathBuf],
        threshold: Option<u64>,
        now: i64,
    ) -> Result<RotateReport> {
        let old_root = self.root.signed.clone();
        let old_keys = load_root_keys(&old_root, root_key_paths)?;
        let usage = |msg: &str| Error::TrustRepo {
            path: self.dir.clone(),
            reason: msg.to_owned(),
        };
        let old_rk = old_root.roles[role.name()].clone();
        let mut root = old_root.clone();
        root.version = self.next_version(Role::Root)?;
        root.expires = clock::format(now + self.config.expires.root);
        let new_keys: Vec<KeyPair>;
        let new_threshold;
        match role {
            Role::Root => {
                if new_root_key_paths.is_empty() {
                    return Err(usage(
                        "rotating the root needs --new-root-key FILE for each new root key",
                    ));
                }
                new_threshold = threshold.unwrap_or(old_rk.threshold);
                if new_threshold == 0 || new_threshold > new_root_key_paths.len() as u64 {
                    return Err(usage(&format!(
                        "root threshold {new_threshold} with {} new root key file(s): it must be 1..={0}",
                        new_root_key_paths.len()
                    )));
                }
                check_new_key_paths(new_root_key_paths)?;
                new_keys = new_root_key_paths
                    .iter()
                    .map(|_| KeyPair::generate())
                    .collect::<Result<_>>()?;
            }
            _ => {
                if !new_root_key_paths.is_empty() {
                    return Err(usage(
                        "--new-root-key is only for `rotate root`; an online role's new key is \
                         kept in the repository",
                    ));
                }
                if threshold.is_some_and(|t| t != 1) {
                    return Err(usage("online roles have one key and threshold 1"));
                }
                new_threshold = 1;
                new_keys = vec![KeyPair::generate()?];
            }
        }
        // Swap the role's keys in the root; drop old keys no other role uses.
        root.roles.insert(
            role.name().to_owned(),
            role_keys(
                new_keys.iter().map(|k| k.id.clone()).collect(),
                new_threshold,
            ),
        );
        for k in &new_keys {
            root.keys.insert(k.id.clone(), k.public.clone());
        }
        let used: BTreeSet<&String> = root.roles.values().flat_map(|r| &r.keyids).collect();
        root.keys.retain(|id, _| used.contains(id));
        // Signed by the old root keys and, when the root role changes, the new ones.
        let mut signers: Vec<&KeyPair> = old_keys.iter().collect();
        if role == Role::Root {
            signers.extend(new_keys.iter());
        }
        let new_root = sign(Role::Root, &root, &signers)?;
        check_signed(Role::Root, &new_root, &old_root)
            .and_then(|()| check_signed(Role::Root, &new_root, &new_root.signed))
            .map_err(|e| Error::invalid("root", format!("self-check failed: {e}")))?;

        // Re-sign what depends on the rotated key, with the new key.
        let mut pending = Pending {
            root: Some(new_root),
            ..Default::default()
        };
        if role != Role::Root {
            let others: Vec<Role> = Role::ONLINE.into_iter().filter(|r| *r != role).collect();
            let others = self.online_keys(&others)?;
            let mut keys: BTreeMap<Role, &KeyPair> = others.iter().map(|(r, k)| (*r, k)).collect();
            keys.insert(role, &new_keys[0]);
            self.renew(&mut pending, role, &keys, now)?;
        }
        self.self_check(&pending)?;

        // Write: new keys first (so no root ever names a key we could lose), then metadata.
        self.clean_tmp()?;
        self.repair_root_copy()?;
        let dir = self.dir.clone();
        let l = Layout(&dir);
        let pending_key = (role != Role::Root).then(|| l.new_key(role));
        if role == Role::Root {
            save_root_keys(&new_keys, new_root_key_paths)?;
        } else if let Some(p) = &pending_key {
            write_atomic(&l.tmp(), p, &new_keys[0].file_bytes(), 0o600)?;
        }
        let root_only = Pending {
            root: pending.root.take(),
            ..Default::default()
        };
        let mut written = self.write(root_only)?;
        if let Some(p) = &pending_key {
            let dest = l.key(role);
            std::fs::rename(p, &dest).map_err(Error::io("renaming into", &dest))?;
            sync_dir(&l.keys())?;
        }
        written.extend(self.write(pending)?);
        let new_key_files: Vec<PathBuf> = if role == Role::Root {
            new_root_key_paths.to_vec()
        } else {
            vec![self.layout().key(role)]
        };
        Ok(RotateReport {
            role: role.name().into(),
            old_keyids: old_rk.keyids,
            new_keys: new_keys
                .iter()
                .zip(new_key_files)
                .map(|(k, file)| KeyReport {
                    role: role.name().into(),
                    keyid: k.id.clone(),
                    file,
                })
                .collect(),
            threshold: new_threshold,
            written,
        })
    }

    /// Fills `pending` with new versions of `from` and every online role after it (targets ->
    /// snapshot -> timestamp), signed with `keys`.
    fn renew(
        &self,
        pending: &mut Pending,
        from: Role,
        keys: &BTreeMap<Role, &KeyPair>,
        now: i64,
    ) -> Result<()> {
        let e = &self.config.expires;
        if from == Role::Targets {
            let mut t = self.targets.signed.clone();
            t.version = self.next_version(Role::Targets)?;
            t.expires = clock::format(now + e.targets);
            pending.targets = Some(sign(Role::Targets, &t, &[keys[&Role::Targets]])?);
        }
        if from <= Role::Snapshot {
            let targets = pending.targets.as_ref().unwrap_or(&self.targets);
            pending.snapshot = Some(new_snapshot(
                &self.config,
                now,
                targets,
                self.next_version(Role::Snapshot)?,
                keys[&Role::Snapshot],
            )?);
        }
        let snapshot = pending.snapshot.as_ref().unwrap_or(&self.snapshot);
        pending.timestamp = Some(new_timestamp(
            &self.config,
            now,
            snapshot,
            self.next_version(Role::Timestamp)?,
            keys[&Role::Timestamp],
        )?);
        Ok(())
    }

    /// Whether an online role needs new metadata: not validly signed under the current root
    /// (an interrupted rotation), or less than `left` (a fraction) of its lifetime left.
    fn due(&self, role: Role, now: i64, left: f64) -> Option<String> {
        let (valid, expires_at, expires) = match role {
            Role::Targets => (
                check_signed(role, &self.targets, &self.root.signed).is_ok(),
                self.targets.expires_at(),
                &self.targets.signed.expires,
            ),
            Role::Snapshot => (
                check_signed(role, &self.snapshot, &self.root.signed).is_ok(),
                self.snapshot.expires_at(),
                &self.snapshot.signed.expires,
            ),
            Role::Timestamp => (
                check_signed(role, &self.timestamp, &self.root.signed).is_ok(),
                self.timestamp.expires_at(),
                &self.timestamp.signed.expires,
            ),
            Role::Root => return None,
        };
        if !valid {
            return Some("not signed by the key the current root names".into());
        }
        let lifetime = self.config.expires.of(role);
        // in whole seconds, rounded down: `left` of a lifetime, at least one second
        let margin = ((lifetime as f64 * left) as i64).max(1);
        if expires_at <= now {
            return Some(format!("expired {expires}"));
        }
        if expires_at - now < margin {
            return Some(if left == 0.5 {
                format!(
                    "expires {expires}, less than half of its lifetime ({}) left",
                    format_duration(lifetime)
                )
            } else {
                format!(
                    "expires {expires}, less than {}% of its lifetime ({}) left",
                    (left * 100.0).round(),
                    format_duration(lifetime)
                )
            });
        }
        None
    }

    /// Signs again the online roles that are due (see [`Self::due`]: less than half of their
    /// lifetime left) and what depends on them; `force` renews the timestamp in any case. Warns
    /// when the root needs the admin.
    pub fn refresh(&mut self, force: bool, now: i64) -> Result<RefreshReport> {
        self.refresh_roles(&Role::ONLINE, 0.5, force, now)
    }

    /// [`Self::refresh`] of some online roles only: those of `roles` that are due, with less
    /// than `left` (a fraction between 0 and 1) of their lifetime left, and what depends on
    /// them among `roles` (snapshot, then timestamp). A role not in `roles` is never signed,
    /// and its key is not read: `semithin serve` renews snapshot and timestamp this way and
    /// leaves targets, which vouches for the releases, to the admin.
    pub fn refresh_roles(
        &mut self,
        roles: &[Role],
        left: f64,
        force: bool,
        now: i64,
    ) -> Result<RefreshReport> {
        if !(left > 0.0 && left < 1.0) {
            return Err(Error::TrustRepo {
                path: self.dir.clone(),
                reason: format!(
                    "renewing with {left} of a lifetime left: it must be between 0 and 1"
                ),
            });
        }
        // What a role renews depends on it (targets -> snapshot -> timestamp): the roles must be
        // a tail of that chain.
        if let Some(gap) = Role::ONLINE
            .into_iter()
            .skip_while(|r| !roles.contains(r))
            .find(|r| !roles.contains(r))
        {
            return Err(Error::TrustRepo {
                path: self.dir.clone(),
                reason: format!("renewing {roles:?} needs {gap} too, which depends on them"),
            });
        }
        let mut reasons = BTreeMap::new();
        for r in Role::ONLINE {
            if !roles.contains(&r) {
                continue;
            }
            if let Some(why) = self.due(r, now, left) {
                reasons.insert(r.name().to_owned(), why);
            }
        }
        if force && reasons.is_empty() && roles.contains(&Role::Timestamp) {
            reasons.insert("timestamp".into(), "forced".into());
        }
        let warnings = self.warnings(now);
        let first = Role::ONLINE
            .into_iter()
            .find(|r| reasons.contains_key(r.name()));
        let Some(first) = first else {
            return Ok(RefreshReport {
                written: Vec::new(),
                reasons,
                warnings,
            });
        };
        let needed: Vec<Role> = Role::ONLINE
            .into_iter()
            .filter(|r| *r >= first && roles.contains(r))
            .collect();
        let keys = self.online_keys(&needed)?;
        let keys: BTreeMap<Role, &KeyPair> = keys.iter().map(|(r, k)| (*r, k)).collect();
        let mut pending = Pending::default();
        self.renew(&mut pending, first, &keys, now)?;
        self.self_check(&pending)?;
        self.clean_tmp()?;
        self.repair_root_copy()?;
        let written = self.write(pending)?;
        Ok(RefreshReport {
            written,
            reasons,
            warnings,
        })
    }

    /// The roles of `roles` that [`Self::refresh_roles`] would sign now, without signing.
    pub fn due_roles(&self, roles: &[Role], left: f64, now: i64) -> Vec<Role> {
        roles
            .iter()
            .copied()
            .filter(|r| *r != Role::Root && self.due(*r, now, left).is_some())
            .collect()
    }

    /// What only the admin can solve (the root key is offline).
    pub fn warnings(&self, now: i64) -> Vec<String> {
        let mut w = Vec::new();
        let left = self.root.expires_at() - now;
        if left < self.config.expires.root / 2 {
            w.push(format!(
                "the root expires {}{}: sign a new root with `semithin trust rotate` (needs the \
                 root key) before then, or clients stop updating",
                self.root.signed.expires,
                if left <= 0 { " (expired)" } else { "" }
            ));
        }
        w
    }

    /// Versions, expiry and keys of every role, and the published targets.
    pub fn status(&self, now: i64) -> Status {
        let root = &self.root.signed;
        let mut roles = BTreeMap::new();
        let mut add = |role: Role, version: u64, expires: &str, expires_at: i64, signed: bool| {
            let rk = &root.roles[role.name()];
            roles.insert(
                role.name().to_owned(),
                RoleStatus {
                    version,
                    expires: expires.to_owned(),
                    expires_in: expires_at - now,
                    signed,
                    keyids: rk.keyids.clone(),
                    threshold: rk.threshold,
                },
            );
        };
        add(
            Role::Root,
            root.version,
            &root.expires,
            self.root.expires_at(),
            check_signed(Role::Root, &self.root, root).is_ok(),
        );
        add(
            Role::Targets,
            self.targets.signed.version,
            &self.targets.signed.expires,
            self.targets.expires_at(),
            check_signed(Role::Targets, &self.targets, root).is_ok(),
        );
        add(
            Role::Snapshot,
            self.snapshot.signed.version,
            &self.snapshot.signed.expires,
            self.snapshot.expires_at(),
            check_signed(Role::Snapshot, &self.snapshot, root).is_ok(),
        );
        add(
            Role::Timestamp,
            self.timestamp.signed.version,
            &self.timestamp.signed.expires,
            self.timestamp.expires_at(),
            check_signed(Role::Timestamp, &self.timestamp, root).is_ok(),
        );
        let targets = self
            .targets
            .signed
            .targets
            .iter()
            .map(|(name, t)| TargetStatus {
                target: name.clone(),
                length: t.length,
                sha256: t.hashes.get("sha256").cloned().unwrap_or_default(),
                custom: t.custom.clone(),
            })
            .collect();
        let mut warnings = self.warnings(now);
        for r in Role::ONLINE {
            if let Some(why) = self.due(r, now, 0.5) {
                let who = if r == Role::Targets {
                    "run `semithin trust refresh` or publish (the targets key signs it)"
                } else {
                    "a running `semithin serve` renews it, or run `semithin trust refresh`"
                };
                warnings.push(format!("{r}: {why}; {who}"));
            }
        }
        let e = self.config.expires;
        Status {
            consistent_snapshot: root.consistent_snapshot,
            roles,
            targets,
            lifetimes: Role::ALL
                .into_iter()
                .map(|r| (r.name().to_owned(), format_duration(e.of(r))))
                .collect(),
            warnings,
        }
    }
}

#[cfg(test)]
mod tests;
