//! What is published: the object store and the channel → release map, read from the repository
//! and its trust directory, and reloaded when a publish changes them.
//!
//! The server never holds the repository's lock: it opens the store (shared lock), keeps the
//! pack files open and lets the lock go, so `commit`, `publish` and `gc` run beside it. Packs are
//! immutable; one removed by gc stays readable through the open file until the next reload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use semithin_store::objects::ObjectStore;
use semithin_store::{Access, CommitId, Repo};
use semithin_trust::release::ChannelRelease;
use semithin_trust::repo::TrustRepo;

use crate::error::{Error, Result};

pub struct Published {
    pub store: Arc<ObjectStore>,
    /// channel → release
    pub releases: BTreeMap<String, CommitId>,
    /// channel → what its signed target says (the release, and while a rollout governs the
    /// channel, the releases it allows and the rollout's id).
    pub targets: BTreeMap<String, ChannelRelease>,
    /// channel → the commits it pointed at before its release, newest first, each once.
    pub earlier: BTreeMap<String, Vec<CommitId>>,
    /// release → its signed boot artifacts by name (`boot/RELEASE/NAME` targets).
    pub boot: BTreeMap<CommitId, BTreeMap<&'static str, BootFile>>,
    /// What the trust directory looked like when read (size and mtime of timestamp.json).
    pub stamp: Option<(u64, std::time::SystemTime)>,
}

/// A boot artifact as its target signs it; the file is `REPO/boot/SHA256`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootFile {
    pub length: u64,
    pub sha256: String,
    /// The kernel's version (on the kernel's target).
    pub kernel_version: Option<String>,
}

pub fn trust_dir(repo: &Path) -> PathBuf {
    repo.join("trust")
}

pub fn stamp(repo: &Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(trust_dir(repo).join("metadata/timestamp.json")).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// Reads the store and the published releases (blocking).
pub fn load(repo_path: &Path) -> Result<Published> {
    let stamp = stamp(repo_path);
    let repo = Repo::open(repo_path, Access::Read)?;
    let mut releases = BTreeMap::new();
    let mut targets = BTreeMap::new();
    let mut boot: BTreeMap<CommitId, BTreeMap<&'static str, BootFile>> = BTreeMap::new();
    let td = trust_dir(repo_path);
    if td.exists() {
        let t = TrustRepo::open(&td)?;
        for (target, info) in &t.targets().signed.targets {
            if let Some((release, name)) = semithin_protocol::boot::parse_target(target) {
                // what publish signed, named by SHA-256; another hash cannot name a file here
                let Some(sha) = info
                    .hashes
                    .get("sha256")
                    .filter(|h| semithin_protocol::boot::is_sha256_hex(h))
                else {
                    continue;
                };
                let kernel_version = info
                    .custom
                    .as_ref()
                    .and_then(|c| c.get("kernel_version"))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned);
                boot.entry(release.commit()).or_default().insert(
                    name,
                    BootFile {
                        length: info.length,
                        sha256: sha.clone(),
                        kernel_version,
                    },
                );
                continue;
            }
            let Some(channel) = target.strip_prefix("channels/") else {
                continue;
            };
            let signed = ChannelRelease::from_custom(info.custom.as_ref())
                .map_err(|e| Error::Config(format!("published target {target}: {e}")))?;
            let commit = signed
                .commit
                .parse()
                .map_err(|_| Error::Config(format!("published target {target} names no commit")))?;
            releases.insert(channel.to_owned(), commit);
            targets.insert(channel.to_owned(), signed);
        }
    }
    let mut earlier = BTreeMap::new();
    for (channel, release) in &releases {
        let moves = match semithin_store::channel::history(&repo, channel) {
            Ok(m) => m,
            // published from a channel since removed: no history to offer packs from
            Err(semithin_store::Error::NoSuchChannel(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        // the moves before the release (the channel may have moved on without a publish)
        let upto = moves
            .iter()
            .rposition(|m| m.commit.0 == *release)
            .unwrap_or(moves.len());
        let mut seen = std::collections::HashSet::from([*release]);
        let list: Vec<CommitId> = moves[..upto]
            .iter()
            .rev()
            .map(|m| m.commit.0)
            .filter(|c| seen.insert(*c))
            .collect();
        earlier.insert(channel.clone(), list);
    }
    Ok(Published {
        store: Arc::new(repo.objects),
        releases,
        targets,
        earlier,
        boot,
        stamp,
    })
}
