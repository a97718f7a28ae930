//! The agent on a live (diskless) machine (docs/BOOT.md, "The agent on a live machine"). The
//! running release is the one the live boot verified and mounted (`/run/semithin/booted`); an
//! update is the next boot's: the new release's squashfs is fetched into the live cache (the
//! `semithin.cache=` partition, which the boot leaves mounted under /run), verified against its
//! signed target (length and SHA-256), and named in the cache's `next` file, which the boot
//! script passes to `semithin live fetch --release`. The boot verifies it again before it
//! mounts it, and the channel's signed target must still permit it then.
//!
//! ```text
//! CACHE/squashfs/SHA256        a verified squashfs (the boot's own layout)
//! CACHE/squashfs/.SHA256.part  one being fetched (resumed with a range request)
//! CACHE/next                   "RELEASE SHA256": the release the next boot runs
//! ```

use std::path::{Path, PathBuf};

use semithin_protocol::boot;
use semithin_protocol::ids::ReleaseId;
use semithin_protocol::path::ApiPath;

use crate::error::{Error, Result};
use crate::{Agent, short};

/// The release the live boot wrote into `file` (`None`: not a live boot, or not yet).
pub(crate) fn booted(file: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(file) {
        Ok(t) => {
            let id = t.trim();
            id.parse::<ReleaseId>()
                .map(|r| Some(r.to_string()))
                .map_err(|_| {
                    Error::Config(format!(
                        "{} holds {:?}, not a release id (the live boot writes it)",
                        file.display(),
                        id.get(..80).unwrap_or(id)
                    ))
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading", file)(e)),
    }
}

/// A live machine booted another release than it ran before: its health is that release's to
/// prove (the checks run again), and it heads the history. Saved.
pub(crate) fn booted_into(
    layout: &crate::state::Layout,
    state: &mut crate::state::State,
) -> Result<()> {
    let Some(cur) = layout.current()? else {
        return Ok(());
    };
    if state.history.first() == Some(&cur) {
        return Ok(());
    }
    state.history.retain(|h| h != &cur);
    state.history.insert(0, cur);
    state.history.truncate(8);
    state.health = semithin_protocol::api::Health::Unknown;
    state.save(&layout.state())
}

fn next_file(cache: &Path) -> PathBuf {
    cache.join("next")
}

fn squashfs(cache: &Path, sha: &str) -> PathBuf {
    cache.join("squashfs").join(sha)
}

/// Whether the cache names `release` as the next boot's and holds its squashfs whole (its hash
/// was checked when it was fetched; the boot checks it again).
pub(crate) fn staged(cache: &Path, release: &str) -> bool {
    let Ok(t) = std::fs::read_to_string(next_file(cache)) else {
        return false;
    };
    let mut w = t.split_whitespace();
    match (w.next(), w.next()) {
        (Some(r), Some(sha)) if r == release && boot::is_sha256_hex(sha) => {
            squashfs(cache, sha).is_file()
        }
        _ => false,
    }
}

use semithin_trust::digest::sha256_file;

/// Writes `text` to `path` through a temporary file and a rename, synced.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(Error::io("creating", &tmp))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(Error::io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io("renaming", &tmp))
}

impl Agent {
    /// Fetches the signed squashfs of `release` (already checked against the channel's signed
    /// target by [`Agent::verify_release`]) into the live cache and names it as the next boot's.
    pub(crate) fn stage_live(&mut self, release: &str) -> Result<()> {
        let cache = self.cfg.live_cache.clone();
        if !cache.is_dir() {
            // A cache in a tmpfs is gone at the next boot, which fetches the release itself.
            self.say(&format!(
                "release {} is for the next boot; no live cache at {} to fetch it into \
                 (semithin.cache=): the boot fetches it",
                short(release),
                cache.display()
            ));
            self.live_staged = Some(release.to_owned());
            return Ok(());
        }
        let rid: ReleaseId = release.parse().map_err(|_| Error::Release {
            release: release.to_owned(),
            reason: "not a release id".into(),
        })?;
        let name = boot::target(&rid, boot::SQUASHFS);
        let meta_path = self
            .answer
            .as_ref()
            .and_then(|a| a.desired.as_ref())
            .map(|d| d.metadata_path.clone())
            .unwrap_or_else(ApiPath::trust_metadata);
        let info = {
            let mut client = self.trust_client(&meta_path)?;
            client.find_target(&name)?
        };
        let info = info.ok_or_else(|| Error::Release {
            release: release.to_owned(),
            reason: format!(
                "the signed metadata has no squashfs for it ({name}): publish it with its boot \
                 artifacts (`semithin publish --boot always`)"
            ),
        })?;
        let sha = info
            .hashes
            .get("sha256")
            .filter(|h| boot::is_sha256_hex(h))
            .cloned()
            .ok_or_else(|| Error::Release {
                release: release.to_owned(),
                reason: format!("the signed target {name} has no sha256"),
            })?;
        let dir = cache.join("squashfs");
        std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        let file = squashfs(&cache, &sha);
        let have = match sha256_file(&file) {
            Ok((len, h)) => len == info.length && h == sha,
            Err(_) => false,
        };
        if !have {
            self.phase = semithin_protocol::api::Phase::Fetching;
            let part = dir.join(format!(".{sha}.part"));
            let etag = dir.join(format!(".{sha}.etag"));
            let path = ApiPath::new(format!("/api/v1/{name}"))?;
            let found =
                crate::delta::download(self.api(), &path, &part, &etag, Some(info.length), |m| {
                    self.say(m)
                })?;
            if !found {
                return Err(Error::Release {
                    release: release.to_owned(),
                    reason: format!("the server has no {name}"),
                });
            }
            let (len, h) = sha256_file(&part).map_err(Error::io("reading", &part))?;
            if len != info.length || h != sha {
                let _ = std::fs::remove_file(&part);
                let _ = std::fs::remove_file(&etag);
                return Err(Error::Release {
                    release: release.to_owned(),
                    reason: format!(
                        "the squashfs fetched does not verify: {len} bytes, sha256 {h}; the \
                         signed target has {} bytes, sha256 {sha} (dropped)",
                        info.length
                    ),
                });
            }
            std::fs::rename(&part, &file).map_err(Error::io("renaming", &part))?;
            let _ = std::fs::remove_file(&etag);
            self.state.fetched_bytes += len;
        }
        write_atomic(&next_file(&cache), &format!("{release} {sha}\n"))?;
        self.say(&format!(
            "release {} staged for the next boot: its squashfs ({} bytes, sha256 {}) verified in {}",
            short(release),
            info.length,
            sha.get(..12).unwrap_or(&sha),
            cache.display()
        ));
        self.live_staged = Some(release.to_owned());
        self.save()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn the_booted_release_is_read_and_a_bad_one_named() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("booted");
        assert_eq!(booted(&f).unwrap(), None);
        std::fs::write(&f, format!("{A}\n")).unwrap();
        assert_eq!(booted(&f).unwrap().as_deref(), Some(A));
        std::fs::write(&f, "../../etc\n").unwrap();
        let e = booted(&f).unwrap_err().to_string();
        assert!(e.contains("not a release id"), "{e}");
    }

    #[test]
    fn a_boot_into_another_release_checks_its_health_again() {
        let d = tempfile::tempdir().unwrap();
        let mut layout = crate::state::Layout::new(d.path());
        let booted_file = d.path().join("booted");
        layout.live_booted = Some(booted_file.clone());
        let mut st = crate::state::State::default();
        booted_into(&layout, &mut st).unwrap();
        assert!(st.history.is_empty(), "nothing booted");
        std::fs::write(&booted_file, A).unwrap();
        st.health = semithin_protocol::api::Health::Healthy;
        booted_into(&layout, &mut st).unwrap();
        assert_eq!(st.history, vec![A.to_owned()]);
        assert_eq!(st.health, semithin_protocol::api::Health::Unknown);
        st.health = semithin_protocol::api::Health::Healthy;
        booted_into(&layout, &mut st).unwrap();
        assert_eq!(
            st.health,
            semithin_protocol::api::Health::Healthy,
            "the same boot"
        );
        let saved = crate::state::State::load(&layout.state()).unwrap();
        assert_eq!(saved.history, vec![A.to_owned()]);
    }

    #[test]
    fn staged_needs_the_release_named_and_its_squashfs_there() {
        let d = tempfile::tempdir().unwrap();
        let sha = "ab".repeat(32);
        assert!(!staged(d.path(), A));
        std::fs::write(next_file(d.path()), format!("{A} {sha}\n")).unwrap();
        assert!(!staged(d.path(), A), "no squashfs yet");
        std::fs::create_dir_all(d.path().join("squashfs")).unwrap();
        std::fs::write(squashfs(d.path(), &sha), b"x").unwrap();
        assert!(staged(d.path(), A));
        assert!(!staged(d.path(), &"b".repeat(64)), "another release");
        std::fs::write(next_file(d.path()), format!("{A} ../x\n")).unwrap();
        assert!(!staged(d.path(), A), "not a hash");
    }
}
