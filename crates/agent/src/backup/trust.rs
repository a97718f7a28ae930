//! The signed metadata a release of the backup was verified with, and its verification: TUF's
//! client workflow ([`semithin_trust::client`]) run in a fresh trusted directory that starts
//! from a root the machine trusts, over the backup's copy instead of the server, then the rule
//! every verifier applies (the channel's signed target permits the release) and the commit
//! object checked against the target's length and hashes.
//!
//! Each release keeps the copy of the machine's trusted metadata (`STATE/trust/*.json`) taken
//! when it was first backed up: the channel's target signed then names it. The roots seen are
//! kept apart (`trust/roots/N.root.json`), so a walk from an older trusted root finds every
//! step. The fetcher serves that copy as a repository with consistent snapshots would:
//! `N.root.json`, `timestamp.json`, `V.snapshot.json`, `V.targets.json`, `V.ROLE.json`, each
//! only when the copy holds exactly that version.

use std::path::{Path, PathBuf};

use semithin_store::CommitId;
use semithin_store::objects::ObjectStore;
use semithin_store::pack::ObjKind;
use semithin_trust::client::{Client, Fetcher, Limits, check_length_and_hashes};
use semithin_trust::release::ChannelRelease;

use super::manifest::{Entry, Paths};
use crate::error::{Error, Result};

/// The metadata of one release's copy, served by name.
struct Copy {
    dir: PathBuf,
    roots: PathBuf,
}

const BASE: &str = "backup:/";

impl Fetcher for Copy {
    fn fetch(&self, url: &str, max_len: u64) -> semithin_trust::Result<Option<Vec<u8>>> {
        let Some(name) = url.strip_prefix(BASE) else {
            return Ok(None);
        };
        if name.contains('/') || name.starts_with('.') {
            return Ok(None);
        }
        let (version, rest) = match name.split_once('.') {
            Some((v, rest)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                (v.parse::<u64>().ok(), rest)
            }
            _ => (None, name),
        };
        let path = match (version, rest) {
            (Some(_), "root.json") => self.roots.join(name),
            (Some(_), _) | (None, "timestamp.json") => self.dir.join(rest),
            _ => return Ok(None),
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(semithin_trust::Error::Fetch {
                    url: path.display().to_string(),
                    reason: e.to_string(),
                });
            }
        };
        if bytes.len() as u64 > max_len {
            return Err(semithin_trust::Error::TooLarge {
                url: path.display().to_string(),
                limit: max_len,
            });
        }
        // A consistent-snapshot name is served only by the copy of exactly that version.
        if let Some(v) = version
            && rest != "root.json"
            && version_of(&bytes) != Some(v)
        {
            return Ok(None);
        }
        Ok(Some(bytes))
    }
}

fn version_of(bytes: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    v.get("signed")?.get("version")?.as_u64()
}

/// Verifies that `entry`'s release is signed for its channel by the backup's metadata, starting
/// from the trusted root `anchor`; the commit object comes from `store` (read, so verified
/// against its id). `work` is a directory for the client's trusted files: made empty, and
/// removed afterwards.
pub fn verify(
    paths: &Paths,
    entry: &Entry,
    anchor: &[u8],
    store: &ObjectStore,
    work: &Path,
    now: i64,
) -> Result<()> {
    crate::deploy::remove_dir(work)?;
    // Expiry is judged at the time the agent last verified this metadata: a backup is used when
    // the server is away, by which time its timestamp has expired by design.
    let res = verify_in(
        paths,
        entry,
        Start::Root(anchor),
        store,
        work,
        entry.verified_at.min(now),
        &|_| Ok(()),
    );
    let _ = crate::deploy::remove_dir(work);
    res
}

/// Where the client's walk starts.
pub(crate) enum Start<'a> {
    /// A fresh trusted directory from this root (a backup: expiry judged when it was made).
    Root(&'a [u8]),
    /// A copy of the machine's own trusted directory, high-water marks and all (a bundle: a
    /// version older than one trusted is a rollback, an expired one is frozen, judged now).
    Trusted(&'a Path),
}

/// Verifies `entry`'s release against the bundle's metadata starting from the machine's
/// trusted directory `trusted`, in `work` (left there: [`advance`] takes it into the machine's
/// trusted directory once everything else has verified).
/// `also` is asked of the refreshed client before the release is looked up (the machine's
/// signed assignment).
pub(crate) fn verify_from_trusted(
    paths: &Paths,
    entry: &Entry,
    trusted: &Path,
    store: &ObjectStore,
    work: &Path,
    now: i64,
    also: &dyn Fn(&mut Client<'_>) -> Result<()>,
) -> Result<()> {
    crate::deploy::remove_dir(work)?;
    verify_in(
        paths,
        entry,
        Start::Trusted(trusted),
        store,
        work,
        now,
        also,
    )
}

/// Replaces the machine's trusted metadata by the verified copy in `work`: file by file, each
/// atomically, the role files first and the high-water marks last.
pub(crate) fn advance(work: &Path, trusted: &Path) -> Result<()> {
    let mut names = Vec::new();
    let rd = std::fs::read_dir(work).map_err(Error::io("listing", work))?;
    for e in rd {
        let e = e.map_err(Error::io("listing", work))?;
        if e.path().is_file() {
            names.push(e.file_name());
        }
    }
    let state = std::ffi::OsString::from(semithin_trust::trusted::STATE_FILE);
    names.sort_by_key(|n| *n == state);
    for n in names {
        let bytes = std::fs::read(work.join(&n)).map_err(Error::io("reading", work.join(&n)))?;
        let dest = trusted.join(&n);
        let tmp = trusted.join(format!(".{}.import", n.to_string_lossy()));
        semithin_store::fsutil::write_synced(&tmp, &bytes)?;
        std::fs::rename(&tmp, &dest).map_err(Error::io("renaming into", &dest))?;
    }
    semithin_store::fsutil::sync_dir(trusted)?;
    crate::deploy::remove_dir(work)
}

fn copy_dir_files(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(Error::io("creating", to))?;
    let rd = std::fs::read_dir(from).map_err(Error::io("listing", from))?;
    for e in rd {
        let e = e.map_err(Error::io("listing", from))?;
        let n = e.file_name();
        if n.to_string_lossy().starts_with('.') || !e.path().is_file() {
            continue;
        }
        std::fs::copy(e.path(), to.join(&n)).map_err(Error::io("copying", e.path()))?;
    }
    Ok(())
}

fn verify_in(
    paths: &Paths,
    entry: &Entry,
    start: Start<'_>,
    store: &ObjectStore,
    work: &Path,
    at: i64,
    also: &dyn Fn(&mut Client<'_>) -> Result<()>,
) -> Result<()> {
    let release = &entry.release;
    let refused = |reason: String| Error::Release {
        release: release.clone(),
        reason,
    };
    let (what, against) = match start {
        Start::Root(_) => ("backup", "trusted root"),
        Start::Trusted(_) => ("bundle", "metadata this machine trusts"),
    };
    let copy = Copy {
        dir: paths.trust_of(release),
        roots: paths.roots(),
    };
    if !copy.dir.is_dir() {
        return Err(refused(format!(
            "the {what} has no signed metadata for it ({} is missing)",
            copy.dir.display()
        )));
    }
    match start {
        Start::Root(anchor) => semithin_trust::client::init(work, anchor)?,
        Start::Trusted(dir) => copy_dir_files(dir, work)?,
    }
    let mut client = Client::new(work, BASE, &copy, Limits::default(), at)?;
    client.refresh().map_err(|e| {
        refused(format!(
            "the {what}'s signed metadata ({}) does not verify against the {against}: {e}",
            copy.dir.display()
        ))
    })?;
    also(&mut client)?;
    let target = format!("channels/{}", entry.channel);
    let info = client
        .find_target(&target)
        .map_err(|e| refused(format!("the {what}'s signed metadata: {e}")))?
        .ok_or_else(|| {
            refused(format!(
                "the {what}'s signed metadata has no release for channel {}",
                entry.channel
            ))
        })?;
    let signed = ChannelRelease::from_custom(info.custom.as_ref()).map_err(|e| {
        refused(format!(
            "the signed target of channel {} is malformed: {e}",
            entry.channel
        ))
    })?;
    if !signed.permits(release) {
        return Err(refused(format!(
            "the {what}'s signed metadata does not sign it for channel {} (its release is {})",
            entry.channel, signed.commit
        )));
    }
    if signed.commit == *release {
        let id: CommitId = release
            .parse()
            .map_err(|_| refused("not a commit id".into()))?;
        let raw = store.get(ObjKind::Commit, id.as_bytes())?;
        check_length_and_hashes(&target, &raw, Some(info.length), Some(&info.hashes))
            .map_err(|e| refused(format!("its commit object is not the signed one: {e}")))?;
    }
    Ok(())
}

/// Copies the machine's trusted metadata (`trust/*.json`) into `into` (made), and its root
/// into the backup's roots by version. Returns the time the metadata was last verified.
pub fn copy_trusted(trusted: &Path, into: &Path, roots: &Path) -> Result<i64> {
    std::fs::create_dir_all(into).map_err(Error::io("creating", into))?;
    std::fs::create_dir_all(roots).map_err(Error::io("creating", roots))?;
    let rd = std::fs::read_dir(trusted).map_err(Error::io("listing", trusted))?;
    for e in rd {
        let e = e.map_err(Error::io("listing", trusted))?;
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        if !n.ends_with(".json") || n.starts_with('.') || !e.path().is_file() {
            continue;
        }
        let bytes = std::fs::read(e.path()).map_err(Error::io("reading", e.path()))?;
        semithin_store::fsutil::write_synced(&into.join(n), &bytes)?;
        if n == "root.json"
            && let Some(v) = version_of(&bytes)
        {
            let r = roots.join(format!("{v}.root.json"));
            if !r.exists() {
                let tmp = roots.join(format!(".{v}.root.json.tmp"));
                semithin_store::fsutil::write_synced(&tmp, &bytes)?;
                std::fs::rename(&tmp, &r).map_err(Error::io("renaming into", &r))?;
                semithin_store::fsutil::sync_dir(roots)?;
            }
        }
    }
    semithin_store::fsutil::sync_dir(into)?;
    let state = semithin_trust::trusted::TrustedDir::new(trusted).state()?;
    Ok(state.latest_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_serves_each_name_only_at_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let copy = Copy {
            dir: dir.path().join("r"),
            roots: dir.path().join("roots"),
        };
        std::fs::create_dir_all(&copy.dir).unwrap();
        std::fs::create_dir_all(&copy.roots).unwrap();
        let meta = |v: u64| format!(r#"{{"signed": {{"version": {v}}}, "signatures": []}}"#);
        std::fs::write(copy.dir.join("snapshot.json"), meta(7)).unwrap();
        std::fs::write(copy.dir.join("timestamp.json"), meta(9)).unwrap();
        std::fs::write(copy.dir.join("assignments-0a.json"), meta(3)).unwrap();
        std::fs::write(copy.roots.join("2.root.json"), meta(2)).unwrap();
        let get = |name: &str| copy.fetch(&format!("{BASE}{name}"), 1 << 20).unwrap();
        assert_eq!(get("7.snapshot.json"), Some(meta(7).into_bytes()));
        assert_eq!(
            get("6.snapshot.json"),
            None,
            "another version is not served"
        );
        assert_eq!(get("timestamp.json"), Some(meta(9).into_bytes()));
        assert_eq!(get("3.assignments-0a.json"), Some(meta(3).into_bytes()));
        assert_eq!(get("2.root.json"), Some(meta(2).into_bytes()));
        assert_eq!(get("3.root.json"), None);
        for bad in [
            "../r/snapshot.json",
            "7.../snapshot.json",
            "snapshot.json",
            ".x",
        ] {
            assert_eq!(get(bad), None, "{bad}");
        }
        assert_eq!(
            copy.fetch("http://elsewhere/timestamp.json", 1 << 20)
                .unwrap(),
            None
        );
        let e = copy.fetch(&format!("{BASE}timestamp.json"), 3).unwrap_err();
        assert!(e.to_string().contains("more than 3 bytes"), "{e}");
    }
}
