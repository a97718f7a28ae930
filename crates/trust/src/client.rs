//! The TUF client workflow (specification 1.0, section 5), network-free: bytes come through a
//! [`Fetcher`], and the reference time is fixed once at the start of a refresh.
//!
//! Order: root (walk N+1, N+2, ... each signed by the old and the new root), timestamp,
//! snapshot, targets; delegated targets roles on demand while looking for a target. Every step
//! checks signatures against thresholds, versions against what was trusted before (files and
//! high-water marks), expiry against the reference time, and length and hashes against the
//! metadata that describes the file. What passes is persisted before the next step starts.
//!
//! A trusted file that does not parse, or does not verify with the keys that verified it when it
//! was stored, is damage: the client stops rather than trust less than it did. A file stored
//! before its role's keys or threshold changed (a key rotation) is kept on disk but no longer
//! used: the next good version from the repository replaces it. After a rotation of the
//! timestamp or snapshot keys, both are forgotten together with their high-water marks, so that
//! a repository can recover from a fast-forward attack (section 5.3.11).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

use crate::cjson;
use crate::clock;
use crate::error::{Error, Result};
use crate::keys;
use crate::metadata::{
    Key, MetaFile, RoleKeys, RoleMeta, Root, Signed, Snapshot, TargetFile, Targets, Timestamp,
};
use crate::trusted::{State, TrustedDir, quote};

/// Downloads with a size limit. `Ok(None)` means the file does not exist (HTTP 404/403).
pub trait Fetcher {
    fn fetch(&self, url: &str, max_len: u64) -> Result<Option<Vec<u8>>>;
}

/// Size limits and bounds, as python-tuf's defaults.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_root_rotations: u64,
    pub max_delegations: usize,
    pub root_max: u64,
    pub timestamp_max: u64,
    pub snapshot_max: u64,
    pub targets_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_root_rotations: 256,
            max_delegations: 32,
            root_max: 512_000,
            timestamp_max: 16_384,
            snapshot_max: 2_000_000,
            targets_max: 5_000_000,
        }
    }
}

/// Checks length and hashes of `data` against `length` / `hashes` when given. At least one
/// supported hash must match when hashes are given; every supported one must.
pub fn check_length_and_hashes(
    what: &str,
    data: &[u8],
    length: Option<u64>,
    hashes: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    let mismatch = |reason: String| Error::Mismatch {
        what: what.to_owned(),
        reason,
    };
    if let Some(l) = length
        && data.len() as u64 != l
    {
        return Err(mismatch(format!("{} bytes, expected {l}", data.len())));
    }
    if let Some(hashes) = hashes {
        if hashes.is_empty() {
            return Err(mismatch("no hashes given".into()));
        }
        for (alg, expected) in hashes {
            let actual = match alg.as_str() {
                "sha224" => hex::encode(Sha224::digest(data)),
                "sha256" => hex::encode(Sha256::digest(data)),
                "sha384" => hex::encode(Sha384::digest(data)),
                "sha512" => hex::encode(Sha512::digest(data)),
                // As python-tuf: a hash that cannot be checked is not a match.
                other => return Err(mismatch(format!("unsupported hash algorithm {other:?}"))),
            };
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(mismatch(format!("{alg} is {actual}, expected {expected}")));
            }
        }
    }
    Ok(())
}

/// A fingerprint of the keys and threshold that verify a role: SHA-256 of the canonical JSON of
/// the threshold and each authorised key id with its key.
pub fn fingerprint(keys: &BTreeMap<String, Key>, rk: &RoleKeys) -> String {
    let authorised: BTreeMap<&String, Option<&Key>> =
        rk.keyids.iter().map(|id| (id, keys.get(id))).collect();
    let v = serde_json::json!({ "threshold": rk.threshold, "keys": authorised });
    hex::encode(Sha256::digest(
        cjson::to_vec(&v).expect("keys are canonical JSON"),
    ))
}

/// What `State::verified_with` holds for a file that must not be used any more.
const SUPERSEDED: &str = "superseded";

/// A trusted targets role.
struct TrustedTargets {
    signed: Signed<Targets>,
}

/// A client working on one metadata directory.
pub struct Client<'a> {
    dir: TrustedDir,
    metadata_url: String,
    fetcher: &'a dyn Fetcher,
    limits: Limits,
    /// The reference time of this run.
    now: i64,
    state: State,
    root: Option<Signed<Root>>,
    timestamp: Option<Signed<Timestamp>>,
    snapshot: Option<Signed<Snapshot>>,
    targets: BTreeMap<String, TrustedTargets>,
}

/// Writes the initial trusted root into `dir` (made if missing). No checks: trust starts here.
pub fn init(dir: &Path, root: &[u8]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    let d = TrustedDir::new(dir);
    d.write("root", root)?;
    d.save_state(&State::default())
}

fn url_join(base: &str, name: &str) -> String {
    if base.ends_with('/') {
        format!("{base}{name}")
    } else {
        format!("{base}/{name}")
    }
}

impl<'a> Client<'a> {
    /// Opens the trusted directory. The reference time is the later of `now` and the latest time
    /// this directory has seen, so setting the clock back does not revive expired metadata.
    pub fn new(
        dir: &Path,
        metadata_url: &str,
        fetcher: &'a dyn Fetcher,
        limits: Limits,
        now: i64,
    ) -> Result<Self> {
        let dir = TrustedDir::new(dir);
        let state = dir.state()?;
        Ok(Self {
            now: now.max(state.latest_time),
            dir,
            metadata_url: metadata_url.to_owned(),
            fetcher,
            limits,
            state,
            root: None,
            timestamp: None,
            snapshot: None,
            targets: BTreeMap::new(),
        })
    }

    pub fn reference_time(&self) -> i64 {
        self.now
    }

    fn root(&self) -> &Signed<Root> {
        self.root.as_ref().expect("root is loaded first")
    }

    fn damaged(&self, role: &str, reason: String) -> Error {
        Error::TrustedDamaged {
            path: self.dir.role_path(role),
            reason,
        }
    }

    fn mark(&mut self, role: &str, version: u64) {
        let v = self.state.versions.entry(role.to_owned()).or_insert(0);
        *v = (*v).max(version);
    }

    fn high_water(&self, role: &str) -> u64 {
        self.state.versions.get(role).copied().unwrap_or(0)
    }

    /// Stores a role's new trusted file, raises its high-water mark and records which keys
    /// verified it.
    fn persist(
        &mut self,
        role: &str,
        raw: &[u8],
        version: u64,
        verified_with: String,
    ) -> Result<()> {
        self.dir.write(role, raw)?;
        self.mark(role, version);
        self.state
            .verified_with
            .insert(role.to_owned(), verified_with);
        self.dir.save_state(&self.state)
    }

    /// Whether the trusted file of `role` was verified with other keys than `current` (the
    /// fingerprint of the keys that verify the role now): then it predates a key rotation and
    /// is not used.
    fn superseded(&self, role: &str, current: &str) -> bool {
        self.state
            .verified_with
            .get(role)
            .is_some_and(|f| f != current)
    }

    fn root_fingerprint(root: &Signed<Root>, role: &str) -> String {
        fingerprint(&root.signed.keys, Self::role_keys(root, role))
    }

    fn check_expiry<T: RoleMeta>(&self, role: &str, s: &Signed<T>) -> Result<()> {
        if s.expires_at() <= self.now {
            return Err(Error::Expired {
                role: role.to_owned(),
                expires: s.signed.expires().to_owned(),
                now: clock::format(self.now),
            });
        }
        Ok(())
    }

    fn role_keys<'r>(root: &'r Signed<Root>, role: &str) -> &'r RoleKeys {
        root.signed
            .roles
            .get(role)
            .expect("root checked to have every top-level role")
    }

    fn fetch(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>> {
        self.fetcher.fetch(&url_join(&self.metadata_url, name), max)
    }

    fn fetch_required(&self, name: &str, max: u64) -> Result<Vec<u8>> {
        let url = url_join(&self.metadata_url, name);
        self.fetcher.fetch(&url, max)?.ok_or(Error::Fetch {
            url,
            reason: "not found".into(),
        })
    }

    /// Refreshes the top-level metadata: root, timestamp, snapshot, targets.
    pub fn refresh(&mut self) -> Result<()> {
        self.load_root()?;
        self.update_root()?;
        self.update_timestamp()?;
        self.update_snapshot()?;
        self.update_targets()?;
        self.state.latest_time = self.state.latest_time.max(self.now);
        self.dir.save_state(&self.state)
    }

    fn load_root(&mut self) -> Result<()> {
        let bytes = self
            .dir
            .read("root")?
            .ok_or_else(|| self.damaged("root", "no trusted root: run init first".into()))?;
        let root: Signed<Root> =
            Signed::parse("root", &bytes).map_err(|e| self.damaged("root", e.to_string()))?;
        keys::verify(
            "root",
            &root,
            &root.signed.keys,
            Self::role_keys(&root, "root"),
        )
        .map_err(|e| self.damaged("root", e.to_string()))?;
        if root.signed.version < self.high_water("root") {
            return Err(self.damaged(
                "root",
                format!(
                    "version {} is older than version {} trusted before",
                    root.signed.version,
                    self.high_water("root")
                ),
            ));
        }
        self.root = Some(root);
        Ok(())
    }

    /// Section 5.3: each next root must be signed by a threshold of the current root's root
    /// keys and of its own, and carry exactly the next version.
    fn update_root(&mut self) -> Result<()> {
        let start = self.root().signed.version;
        for step in 1..=self.limits.max_root_rotations {
            // An absurdly high trusted version simply has no successor.
            let Some(next) = start.checked_add(step) else {
                break;
            };
            let Some(bytes) = self.fetch(&format!("{next}.root.json"), self.limits.root_max)?
            else {
                break;
            };
            let new: Signed<Root> = Signed::parse("root", &bytes)?;
            let cur = self.root();
            keys::verify("root", &new, &cur.signed.keys, Self::role_keys(cur, "root"))?;
            keys::verify(
                "root",
                &new,
                &new.signed.keys,
                Self::role_keys(&new, "root"),
            )?;
            if new.signed.version != next {
                return Err(Error::WrongVersion {
                    role: "root".into(),
                    expected: next,
                    found: new.signed.version,
                });
            }
            // 5.3.11: after a rotation of the timestamp or snapshot keys (or a change of their
            // thresholds), the trusted timestamp and snapshot may be an attacker's fast-forward
            // and their versions may legitimately go down: forget both. Recorded before the new
            // root is stored, so that a crash in between cannot leave them in use.
            let cur = self.root();
            let [ts, snapshot, targets] = ["timestamp", "snapshot", "targets"].map(|role| {
                Self::root_fingerprint(cur, role) != Self::root_fingerprint(&new, role)
            });
            if ts || snapshot {
                for role in ["timestamp", "snapshot"] {
                    self.state.versions.remove(role);
                    self.state
                        .verified_with
                        .insert(role.to_owned(), SUPERSEDED.to_owned());
                }
                self.dir.save_state(&self.state)?;
            }
            if targets {
                // Not used any more (as a fingerprint mismatch would also say, but this holds
                // for a file stored before fingerprints were recorded too).
                self.state
                    .verified_with
                    .insert("targets".to_owned(), SUPERSEDED.to_owned());
            }
            let fp = Self::root_fingerprint(&new, "root");
            self.persist("root", &bytes, next, fp)?;
            self.root = Some(new);
        }
        // 5.3.10: checked once the walk is over, so that expired intermediate roots are fine.
        self.check_expiry("root", self.root())
    }

    /// Loads the trusted file of a role whose keys and threshold are `keys` and `rk`. A file
    /// from before a rotation of those keys is not used; any other file that is there but does
    /// not parse or verify is damage.
    fn load_trusted<T: RoleMeta>(
        &self,
        role: &str,
        keys: &BTreeMap<String, Key>,
        rk: &RoleKeys,
    ) -> Result<Option<Signed<T>>> {
        if self.superseded(role, &fingerprint(keys, rk)) {
            return Ok(None);
        }
        let Some(bytes) = self.dir.read(role)? else {
            return Ok(None);
        };
        let s: Signed<T> =
            Signed::parse(role, &bytes).map_err(|e| self.damaged(role, e.to_string()))?;
        keys::verify(role, &s, keys, rk).map_err(|e| self.damaged(role, e.to_string()))?;
        Ok(Some(s))
    }

    /// Loads a trusted non-root top-level file, verified with the current root.
    fn load_local<T: RoleMeta>(&self, role: &str) -> Result<Option<Signed<T>>> {
        let root = self.root();
        self.load_trusted(role, &root.signed.keys, Self::role_keys(root, role))
    }

    fn update_timestamp(&mut self) -> Result<()> {
        let local: Option<Signed<Timestamp>> = self.load_local("timestamp")?;
        let bytes = self.fetch_required("timestamp.json", self.limits.timestamp_max)?;
        let new: Signed<Timestamp> = Signed::parse("timestamp", &bytes)?;
        let root = self.root();
        keys::verify(
            "timestamp",
            &new,
            &root.signed.keys,
            Self::role_keys(root, "timestamp"),
        )?;
        let trusted_version = local
            .as_ref()
            .map_or(0, |l| l.signed.version)
            .max(self.high_water("timestamp"));
        if new.signed.version < trusted_version {
            return Err(Error::Rollback {
                role: "timestamp".into(),
                found: new.signed.version,
                trusted: trusted_version,
            });
        }
        let snap = |t: &Signed<Timestamp>| t.signed.meta["snapshot.json"].version;
        let trusted_snapshot = local
            .as_ref()
            .map_or(0, snap)
            .max(self.high_water("snapshot"));
        if snap(&new) < trusted_snapshot {
            return Err(Error::Rollback {
                role: "snapshot (in timestamp)".into(),
                found: snap(&new),
                trusted: trusted_snapshot,
            });
        }
        if new.signed.version == trusted_version
            && let Some(local) = local
        {
            // Equal version: nothing new, whatever the bytes say; the trusted copy stays (and
            // must itself not have expired).
            self.check_expiry("timestamp", &local)?;
            self.timestamp = Some(local);
        } else {
            // 5.4.4: an expired timestamp is a freeze attack: discarded, not stored.
            self.check_expiry("timestamp", &new)?;
            let fp = Self::root_fingerprint(self.root(), "timestamp");
            self.persist("timestamp", &bytes, new.signed.version, fp)?;
            self.timestamp = Some(new);
        }
        Ok(())
    }

    fn update_snapshot(&mut self) -> Result<()> {
        let meta = self
            .timestamp
            .as_ref()
            .expect("timestamp first")
            .signed
            .meta["snapshot.json"]
            .clone();
        let local: Option<Signed<Snapshot>> = self.load_local("snapshot")?;
        if let Some(l) = &local
            && l.signed.version == meta.version
            && l.expires_at() > self.now
        {
            self.snapshot = local;
            return Ok(());
        }
        let name = if self.root().signed.consistent_snapshot {
            format!("{}.snapshot.json", meta.version)
        } else {
            "snapshot.json".to_owned()
        };
        let bytes = self.fetch_required(&name, meta.length.unwrap_or(self.limits.snapshot_max))?;
        check_length_and_hashes("snapshot", &bytes, meta.length, meta.hashes.as_ref())?;
        let new: Signed<Snapshot> = Signed::parse("snapshot", &bytes)?;
        let root = self.root();
        keys::verify(
            "snapshot",
            &new,
            &root.signed.keys,
            Self::role_keys(root, "snapshot"),
        )?;
        if let Some(l) = &local {
            for (file, old) in &l.signed.meta {
                match new.signed.meta.get(file) {
                    None => {
                        return Err(Error::invalid(
                            "snapshot",
                            format!("{file} is no longer listed"),
                        ));
                    }
                    Some(m) if m.version < old.version => {
                        return Err(Error::Rollback {
                            role: format!("{file} (in snapshot)"),
                            found: m.version,
                            trusted: old.version,
                        });
                    }
                    Some(_) => {}
                }
            }
        }
        if new.signed.version != meta.version {
            return Err(Error::WrongVersion {
                role: "snapshot".into(),
                expected: meta.version,
                found: new.signed.version,
            });
        }
        self.check_expiry("snapshot", &new)?;
        let fp = Self::root_fingerprint(self.root(), "snapshot");
        self.persist("snapshot", &bytes, new.signed.version, fp)?;
        self.snapshot = Some(new);
        Ok(())
    }

    fn update_targets(&mut self) -> Result<()> {
        let root = self.root();
        let (keys, rk) = (
            root.signed.keys.clone(),
            Self::role_keys(root, "targets").clone(),
        );
        self.load_targets_role("targets", &keys, &rk)
    }

    /// Loads (from disk if still current, else from the repository) a targets role whose keys
    /// and threshold are given by its delegator.
    ///
    /// One role name may be delegated by several roles with different keys (a diamond): what
    /// this run already holds under the name was verified with another delegator's keys, so it
    /// is verified again with the keys of this delegation, and refused if they do not sign it.
    fn load_targets_role(
        &mut self,
        role: &str,
        keys: &BTreeMap<String, Key>,
        rk: &RoleKeys,
    ) -> Result<()> {
        if let Some(held) = self.targets.get(role) {
            return keys::verify(role, &held.signed, keys, rk);
        }
        let file = format!("{role}.json");
        let meta: MetaFile = self
            .snapshot
            .as_ref()
            .expect("snapshot first")
            .signed
            .meta
            .get(&file)
            .cloned()
            .ok_or_else(|| Error::invalid("snapshot", format!("does not list {file}")))?;
        if let Some(l) = self.load_trusted::<Targets>(role, keys, rk)?
            && l.signed.version == meta.version
            && l.expires_at() > self.now
        {
            self.targets
                .insert(role.to_owned(), TrustedTargets { signed: l });
            return Ok(());
        }
        let name = if self.root().signed.consistent_snapshot {
            format!("{}.{}.json", meta.version, quote(role))
        } else {
            format!("{}.json", quote(role))
        };
        let bytes = self.fetch_required(&name, meta.length.unwrap_or(self.limits.targets_max))?;
        check_length_and_hashes(role, &bytes, meta.length, meta.hashes.as_ref())?;
        let new: Signed<Targets> = Signed::parse(role, &bytes)?;
        keys::verify(role, &new, keys, rk)?;
        if new.signed.version != meta.version {
            return Err(Error::WrongVersion {
                role: role.to_owned(),
                expected: meta.version,
                found: new.signed.version,
            });
        }
        self.check_expiry(role, &new)?;
        self.persist(role, &bytes, new.signed.version, fingerprint(keys, rk))?;
        self.targets
            .insert(role.to_owned(), TrustedTargets { signed: new });
        Ok(())
    }

    /// Whether the top-level targets role delegates to a role named `role`. Call after
    /// [`Client::refresh`].
    pub fn delegates(&self, role: &str) -> bool {
        self.targets
            .get("targets")
            .and_then(|t| t.signed.signed.delegations.as_ref())
            .and_then(|d| d.roles.as_ref())
            .is_some_and(|roles| roles.iter().any(|r| r.name == role))
    }

    /// Finds a target by walking the delegation graph in pre-order (section 5.6.7), starting at
    /// the top-level targets role. Call after [`Client::refresh`].
    pub fn find_target(&mut self, path: &str) -> Result<Option<TargetFile>> {
        let mut to_visit: Vec<(String, Option<String>)> = vec![("targets".into(), None)];
        let mut visited: HashSet<String> = HashSet::new();
        while let Some((role, parent)) = to_visit.pop() {
            // The top-level targets role and at most `max_delegations` delegated roles, as
            // python-tuf.
            if visited.len() > self.limits.max_delegations {
                break;
            }
            if !visited.insert(role.clone()) {
                continue;
            }
            if let Some(parent) = parent {
                let d = self.targets[&parent]
                    .signed
                    .signed
                    .delegations
                    .clone()
                    .expect("a child comes from delegations");
                let rk = d.role_keys(&role).expect("a child is delegated");
                self.load_targets_role(&role, &d.keys, &rk)?;
            }
            let t = &self.targets[&role].signed.signed;
            if let Some(info) = t.targets.get(path) {
                return Ok(Some(info.clone()));
            }
            if let Some(d) = &t.delegations {
                let mut children = Vec::new();
                for r in d.roles.iter().flatten() {
                    if !delegation_matches(r, path) {
                        continue;
                    }
                    children.push((r.name.clone(), Some(role.clone())));
                    if r.terminating {
                        to_visit.clear();
                        break;
                    }
                }
                if let Some(s) = &d.succinct_roles {
                    // A path belongs to one bin, and bins are terminating (TAP 15).
                    children.push((s.role_for(path), Some(role.clone())));
                    to_visit.clear();
                }
                children.reverse();
                to_visit.extend(children);
            }
        }
        Ok(None)
    }

    /// Downloads a verified target into `target_dir` (under its URL-quoted name), unless a file
    /// with the right length and hashes is already there. Returns the local path.
    pub fn download_target(
        &self,
        path: &str,
        info: &TargetFile,
        base_url: &str,
        target_dir: &Path,
    ) -> Result<PathBuf> {
        check_target_name(path)?;
        let local = target_dir.join(quote(path));
        if let Ok(existing) = std::fs::read(&local)
            && check_length_and_hashes(path, &existing, Some(info.length), Some(&info.hashes))
                .is_ok()
        {
            return Ok(local);
        }
        let mut remote = path.to_owned();
        if self.root().signed.consistent_snapshot {
            let hash = info
                .hashes
                .values()
                .next()
                .ok_or_else(|| Error::invalid("targets", format!("{path} has no hashes")))?;
            let (dir, base) = match path.rsplit_once('/') {
                Some((d, b)) => (format!("{d}/"), b),
                None => (String::new(), path),
            };
            remote = format!("{dir}{hash}.{base}");
        }
        let url = url_join(base_url, &remote);
        let data = self.fetcher.fetch(&url, info.length)?.ok_or(Error::Fetch {
            url: url.clone(),
            reason: "not found".into(),
        })?;
        check_length_and_hashes(path, &data, Some(info.length), Some(&info.hashes))?;
        std::fs::create_dir_all(target_dir).map_err(Error::io("creating", target_dir))?;
        let tmp = target_dir.join(format!(".{}.{}.tmp", quote(path), std::process::id()));
        std::fs::write(&tmp, &data).map_err(Error::io("writing", &tmp))?;
        std::fs::rename(&tmp, &local).map_err(Error::io("renaming into", &local))?;
        Ok(local)
    }
}

/// Whether a delegation covers a target path: by path patterns (`*` and `?` within one path
/// component, as Python's fnmatch, and the same number of components) or by hash prefixes.
pub fn delegation_matches(r: &crate::metadata::DelegatedRole, path: &str) -> bool {
    if let Some(patterns) = &r.paths {
        return patterns.iter().any(|p| pattern_matches(p, path));
    }
    if let Some(prefixes) = &r.path_hash_prefixes {
        let h = hex::encode(Sha256::digest(path.as_bytes()));
        return prefixes.iter().any(|p| h.starts_with(p.as_str()));
    }
    false
}

fn pattern_matches(pattern: &str, path: &str) -> bool {
    let (pp, tp): (Vec<&str>, Vec<&str>) =
        (pattern.split('/').collect(), path.split('/').collect());
    pp.len() == tp.len()
        && pp.iter().zip(&tp).all(|(p, t)| {
            glob::Pattern::new(p).is_ok_and(|g| {
                g.matches_with(
                    t,
                    glob::MatchOptions {
                        case_sensitive: true,
                        require_literal_separator: true,
                        require_literal_leading_dot: false,
                    },
                )
            })
        })
}

/// A target path that is safe to name a local file and a URL path: not empty, not absolute, no
/// `.`/`..`/empty component, no control characters, no backslash, no percent-encoded slash.
pub fn check_target_name(path: &str) -> Result<()> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        || path.chars().any(|c| c.is_control() || c == '\\')
        || path.to_ascii_lowercase().contains("%2f")
        || path.to_ascii_lowercase().contains("%2e%2e");
    if bad {
        return Err(Error::UnsafeTargetName(path.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_per_component() {
        assert!(pattern_matches("*", "file.txt"));
        assert!(!pattern_matches("*", "dir/file.txt"));
        assert!(pattern_matches("dir/*.txt", "dir/file.txt"));
        assert!(pattern_matches("dir/?ile.txt", "dir/file.txt"));
        assert!(!pattern_matches("dir/*.txt", "dir/sub/file.txt"));
        assert!(pattern_matches("*/*", "a/b"));
    }

    #[test]
    fn unsafe_names() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/./b",
            "a%2Fb",
            "a\\b",
            "x\n",
        ] {
            assert!(check_target_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["a", "dir/file.txt", "release-1.2/root.caidx"] {
            assert!(check_target_name(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn hashes_and_lengths() {
        let data = b"abc";
        let mut h = BTreeMap::new();
        h.insert("sha256".into(), hex::encode(Sha256::digest(data)));
        assert!(check_length_and_hashes("t", data, Some(3), Some(&h)).is_ok());
        assert!(check_length_and_hashes("t", data, Some(4), Some(&h)).is_err());
        assert!(check_length_and_hashes("t", b"abd", Some(3), Some(&h)).is_err());
        let mut sha384 = BTreeMap::new();
        sha384.insert("sha384".into(), hex::encode(Sha384::digest(data)));
        assert!(check_length_and_hashes("t", data, Some(3), Some(&sha384)).is_ok());
        sha384.insert("sha224".into(), hex::encode(Sha224::digest(b"abd")));
        assert!(check_length_and_hashes("t", data, Some(3), Some(&sha384)).is_err());
        let mut unknown = BTreeMap::new();
        unknown.insert("md5".into(), "00".into());
        assert!(check_length_and_hashes("t", data, None, Some(&unknown)).is_err());
        // An unknown algorithm beside a matching one is still refused, as python-tuf does.
        h.insert("blake2x".into(), "00".into());
        assert!(check_length_and_hashes("t", data, Some(3), Some(&h)).is_err());
        assert!(check_length_and_hashes("t", data, Some(3), Some(&BTreeMap::new())).is_err());
    }
}
