//! The machine's rendered configuration (docs/CONFIG.md): variable sets received in check-in
//! answers, verified against the admin keys this machine trusts, and the release's templates
//! rendered with them into the `/etc` overlay's upper layer.
//!
//! `STATE/config.json` (written atomically) holds the sets accepted, the highest version
//! applied per scope (an older set is refused: no rollback of a variable), and a record of each
//! file rendered (its BLAKE3, mode and owner), which verification uses to tell the machine's
//! configuration from local drift. Every template is rendered before anything is written; a
//! refused set or a failed rendering is reported (`Report::config`) and leaves the files
//! rendered before as they were.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use semithin_protocol::vars::{self, Bundle, ConfigReport, Facts, MAX_BUNDLE_SETS, Scope};
use semithin_template as template;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One file rendered into `/etc`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// BLAKE3 of the content, hex.
    pub hash: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub template: String,
}

/// `STATE/config.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Rendering {
    /// The variable sets accepted last, lowest precedence first.
    #[serde(default)]
    pub bundle: Option<Bundle>,
    /// The digest of the last bundle given, accepted or refused (reported, so the server sends
    /// a bundle once, not at every check-in).
    #[serde(default)]
    pub seen: Option<String>,
    /// Why the last bundle was refused.
    #[serde(default)]
    pub refused: Option<String>,
    /// The highest version applied of each scope.
    #[serde(default)]
    pub versions: BTreeMap<String, u64>,
    /// Files rendered, by path relative to `/etc`.
    #[serde(default)]
    pub files: BTreeMap<String, FileRecord>,
    /// The records of files being replaced while a rendering writes (a kill then leaves either
    /// content, both known); empty once it is done.
    #[serde(default)]
    pub previous: BTreeMap<String, FileRecord>,
    /// Directories made in the upper layer for them (relative to `/etc`).
    #[serde(default)]
    pub dirs: BTreeSet<String>,
    /// What the last rendering was made from (release, bundle, facts), when it succeeded.
    #[serde(default)]
    pub applied: Option<String>,
    /// What the last attempt was made from, successful or not (not tried again).
    #[serde(default)]
    pub tried: Option<String>,
    /// Why the last rendering failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// `STATE/config.json`.
pub fn path(layout: &crate::state::Layout) -> PathBuf {
    layout.dir.join("config.json")
}

impl Rendering {
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                Error::Config(format!("{}: damaged ({e}); move it aside", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::io("reading", path)(e)),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path.parent().expect("a file in the state directory");
        let bytes = serde_json::to_vec_pretty(self).expect("serialises");
        semithin_store::fsutil::replace_atomic(path, dir, &bytes)?;
        Ok(())
    }

    pub fn report(&self) -> ConfigReport {
        ConfigReport {
            vars_digest: self.seen.clone(),
            files: self.files.len() as u32,
            error: self
                .refused
                .clone()
                .or_else(|| self.error.clone())
                .map(|e| semithin_protocol::api::bound_error(&e)),
        }
    }

    /// Takes a bundle from a check-in answer: every set signed by a trusted admin key, in
    /// precedence order, naming this machine and its channel, none older than one applied.
    /// Refused, the sets held before stay.
    pub fn receive(
        &mut self,
        b: &Bundle,
        trusted: &[[u8; 32]],
        name: &str,
        channel: Option<&str>,
    ) -> std::result::Result<(), String> {
        self.seen = Some(b.digest.clone());
        let res = check(b, trusted, name, channel, &self.versions);
        match res {
            Ok(versions) => {
                self.versions.extend(versions);
                self.bundle = Some(b.clone());
                self.refused = None;
                Ok(())
            }
            Err(e) => {
                let e = format!("variable sets refused: {e}");
                self.refused = Some(e.clone());
                Err(e)
            }
        }
    }

    /// The variables the templates see, merged from the accepted sets.
    pub fn vars(&self) -> BTreeMap<String, serde_json::Value> {
        match &self.bundle {
            Some(b) => vars::merge(b.sets.iter().map(|s| s.set.set())),
            None => BTreeMap::new(),
        }
    }

    /// Whether the path (relative to `/etc`) in the upper layer is this machine's rendered
    /// configuration, as rendered: then it is no local drift.
    pub fn owns(&self, upper: &Path, rel: &str) -> bool {
        let p = upper.join(rel);
        if self.dirs.contains(rel) {
            return p.is_dir();
        }
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            return false;
        };
        let records: Vec<&FileRecord> = [self.files.get(rel), self.previous.get(rel)]
            .into_iter()
            .flatten()
            .collect();
        if records.is_empty() || !md.is_file() {
            return false;
        }
        let Ok(bytes) = std::fs::read(&p) else {
            return false;
        };
        let hash = blake3::hash(&bytes).to_hex().to_string();
        records.iter().any(|r| {
            md.mode() & 0o7777 == r.mode && md.uid() == r.uid && md.gid() == r.gid && hash == r.hash
        })
    }
}

fn check(
    b: &Bundle,
    trusted: &[[u8; 32]],
    name: &str,
    channel: Option<&str>,
    applied: &BTreeMap<String, u64>,
) -> std::result::Result<Vec<(String, u64)>, String> {
    if b.sets.len() > MAX_BUNDLE_SETS {
        return Err(format!("{} sets; at most {MAX_BUNDLE_SETS}", b.sets.len()));
    }
    if !b.sets.is_empty() && trusted.is_empty() {
        return Err("this machine trusts no admin key (admin_keys in the agent's settings)".into());
    }
    let mut rank = 0;
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for s in &b.sets {
        let scope = s.verify(trusted)?;
        if scope.rank() < rank || !seen.insert(scope.to_string()) {
            return Err(format!("{scope} is out of order or given twice"));
        }
        rank = scope.rank();
        match &scope {
            Scope::Machine(m) if m != name => {
                return Err(format!(
                    "{scope} is for another machine (this one is {name})"
                ));
            }
            Scope::Channel(c) if channel.is_some_and(|ch| ch != c) => {
                return Err(format!(
                    "{scope} is for another channel (this machine follows {})",
                    channel.unwrap_or_default()
                ));
            }
            _ => {}
        }
        let key = scope.to_string();
        if let Some(had) = applied.get(&key)
            && s.set.version < *had
        {
            return Err(format!(
                "{scope} is version {}, older than version {had} applied here",
                s.set.version
            ));
        }
        out.push((key, s.set.version));
    }
    Ok(out)
}

/// Where rendered files are written: through `/etc` when it is the overlay over `upper`
/// (writing into a mounted overlay's upper directory directly is not allowed), else into
/// `upper` itself (the overlay is mounted at the next boot).
pub fn write_root(upper: &Path) -> PathBuf {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return upper.to_owned();
    };
    let want = format!("upperdir={}", upper.display());
    let mounted = info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.get(4) == Some(&"/etc")
            && l.split(" - ").nth(1).is_some_and(|rest| {
                rest.starts_with("overlay ") && rest.split([',', ' ']).any(|o| o == want)
            })
    });
    if mounted {
        PathBuf::from("/etc")
    } else {
        upper.to_owned()
    }
}

/// Why a rendering failed, and whether trying again as it is may succeed.
#[derive(Debug)]
pub struct Failure {
    pub msg: String,
    pub retry: bool,
}

/// What a rendering did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Files written (their content, mode or owner changed).
    pub written: Vec<String>,
    /// Files removed (their template is gone from the release).
    pub removed: Vec<String>,
    /// Units to restart (templates whose file changed).
    pub restart: BTreeSet<String>,
}

/// Renders the templates of the deployment at `root` and writes what changed below `etc`
/// (the write root, [`write_root`]); the records are saved to `state` before any file is
/// written.
pub fn render(
    r: &mut Rendering,
    root: &Path,
    etc: &Path,
    ctx: &serde_json::Value,
    state: &Path,
) -> std::result::Result<Outcome, Failure> {
    // the templates, the manifest or a variable: rendering again changes nothing
    let fixed = |msg: String| Failure { msg, retry: false };
    // writing: tried again at the next cycle
    let io = |msg: String| Failure { msg, retry: true };
    let dir = root.join(template::DIR);
    let manifest = dir.join(template::MANIFEST);
    let templates = match std::fs::read_to_string(&manifest) {
        Ok(t) => template::parse_manifest(&t).map_err(|e| fixed(e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(fixed(format!(
                "/{}/{}: {e}",
                template::DIR,
                template::MANIFEST
            )));
        }
    };
    let read = |src: &str| -> std::result::Result<Vec<u8>, String> {
        let p = dir.join(src);
        let md = std::fs::symlink_metadata(&p).map_err(|e| e.to_string())?;
        if !md.is_file() {
            return Err("not a regular file".into());
        }
        if md.len() > template::MAX_BYTES as u64 {
            return Err(format!(
                "{} bytes; at most {}",
                md.len(),
                template::MAX_BYTES
            ));
        }
        std::fs::read(&p).map_err(|e| e.to_string())
    };
    let rendered = template::render_all(&templates, read, ctx).map_err(|e| fixed(e.to_string()))?;
    // What changes, recorded before anything is written: killed while writing, every file is
    // either as recorded now or as recorded before.
    let mut out = Outcome::default();
    let mut files = BTreeMap::new();
    let mut changed = Vec::new();
    for f in &rendered {
        let t = &f.template;
        let rel = t.rel().to_owned();
        let path = etc.join(&rel);
        let same = std::fs::symlink_metadata(&path).is_ok_and(|md| {
            md.is_file()
                && md.mode() & 0o7777 == t.mode
                && md.uid() == t.uid
                && md.gid() == t.gid
                && std::fs::read(&path).is_ok_and(|b| b == f.content)
        });
        if !same {
            changed.push(f);
            for d in missing_dirs(etc, &rel).map_err(|e| io(e.to_string()))? {
                r.dirs.insert(d);
            }
        }
        files.insert(
            rel,
            FileRecord {
                hash: blake3::hash(&f.content).to_hex().to_string(),
                mode: t.mode,
                uid: t.uid,
                gid: t.gid,
                template: t.source.clone(),
            },
        );
    }
    let gone: Vec<(String, FileRecord)> = r
        .files
        .iter()
        .filter(|(rel, _)| !files.contains_key(*rel))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    r.previous = std::mem::replace(&mut r.files, files);
    r.save(state).map_err(|e| io(e.to_string()))?;
    for f in changed {
        let t = &f.template;
        let path = etc.join(t.rel());
        make_dirs(etc, t.rel()).map_err(|e| io(format!("{}: {e}", t.target)))?;
        write_file(&path, &f.content, t.mode, t.uid, t.gid)
            .map_err(|e| io(format!("writing {}: {e}", t.target)))?;
        out.written.push(t.target.clone());
        if let Some(u) = &t.restart {
            out.restart.insert(u.clone());
        }
    }
    // Files whose template is gone: removed when still as rendered (a local edit stays).
    for (rel, rec) in gone {
        let p = etc.join(&rel);
        if std::fs::read(&p).is_ok_and(|b| blake3::hash(&b).to_hex().as_str() == rec.hash) {
            std::fs::remove_file(&p).map_err(|e| io(format!("removing /etc/{rel}: {e}")))?;
            out.removed.push(format!("/etc/{rel}"));
        }
    }
    r.previous.clear();
    Ok(out)
}

/// The directories above `rel` missing below `etc` (relative to `/etc`), outermost first.
fn missing_dirs(etc: &Path, rel: &str) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut at = String::new();
    let parts: Vec<&str> = rel.split('/').collect();
    for p in parts.iter().take(parts.len().saturating_sub(1)) {
        if !at.is_empty() {
            at.push('/');
        }
        at.push_str(p);
        match std::fs::symlink_metadata(etc.join(&at)) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} is in the way: not a directory",
                    etc.join(&at).display()
                )));
            }
            Err(_) => out.push(at.clone()),
        }
    }
    Ok(out)
}

/// Makes the directories above `rel` that are missing below `etc` (0755, root).
fn make_dirs(etc: &Path, rel: &str) -> std::io::Result<()> {
    for d in missing_dirs(etc, rel)? {
        let p = etc.join(&d);
        std::fs::create_dir(&p)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Writes a file atomically with its mode and owner: temporary file beside it, fsync,
/// rename, fsync of the directory.
fn write_file(path: &Path, bytes: &[u8], mode: u32, uid: u32, gid: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = semithin_store::fsutil::unique_tmp(dir, ".semithin-render");
    let res = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if rustix::process::geteuid().is_root() {
            rustix::fs::fchown(
                &f,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// What the rendering is made from: when it changes, the templates are rendered again.
pub fn key(release: &str, r: &Rendering, facts: Option<&Facts>) -> String {
    let mut h = blake3::Hasher::new();
    h.update(release.as_bytes());
    h.update(b"\0");
    if let Some(b) = &r.bundle {
        h.update(b.digest.as_bytes());
    }
    h.update(b"\0");
    if let Some(f) = facts {
        h.update(f.digest().as_bytes());
    }
    h.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use semithin_protocol::job::{AdminKey, parse_public_key};
    use semithin_protocol::vars::{Bundle, SignedSet, VarSet};

    use super::*;

    fn signed(k: &AdminKey, scope: &str, version: u64) -> SignedSet {
        let set = VarSet {
            scope: scope.into(),
            version,
            vars: [("x".to_owned(), serde_json::json!(version))].into(),
        };
        SignedSet::sign(set, k).unwrap()
    }

    fn bundle(sets: Vec<SignedSet>, digest: &str) -> Bundle {
        Bundle {
            digest: digest.into(),
            sets,
        }
    }

    #[test]
    fn bundles_are_refused_for_another_machine_or_channel_out_of_order_or_rolled_back() {
        let k = AdminKey::generate().unwrap();
        let trusted = [parse_public_key(&k.public_hex()).unwrap()];
        let mut r = Rendering::default();
        let ok = bundle(
            vec![
                signed(&k, "global", 2),
                signed(&k, "channel:lab", 1),
                signed(&k, "machine:m1", 1),
            ],
            "d1",
        );
        r.receive(&ok, &trusted, "m1", Some("lab")).unwrap();
        assert_eq!(r.vars()["x"], serde_json::json!(1));
        assert_eq!(r.report().vars_digest.as_deref(), Some("d1"));
        for (b, name, channel, want) in [
            (
                vec![signed(&k, "machine:m2", 1)],
                "m1",
                Some("lab"),
                "another machine",
            ),
            (
                vec![signed(&k, "channel:x", 1)],
                "m1",
                Some("lab"),
                "another channel",
            ),
            (
                vec![signed(&k, "machine:m1", 2), signed(&k, "global", 3)],
                "m1",
                None,
                "out of order",
            ),
            (
                vec![signed(&k, "global", 1)],
                "m1",
                None,
                "older than version 2",
            ),
        ] {
            let e = r
                .receive(&bundle(b, "d2"), &trusted, name, channel)
                .unwrap_err();
            assert!(e.contains(want), "{e}");
            // the sets held stay; the refused bundle is reported as seen, with the reason
            assert_eq!(r.bundle.as_ref().unwrap().digest, "d1");
            assert_eq!(r.report().vars_digest.as_deref(), Some("d2"));
            assert!(r.report().error.unwrap().contains(want));
        }
        // without a trusted key, only an empty bundle is taken
        let e = r.receive(&ok, &[], "m1", Some("lab")).unwrap_err();
        assert!(e.contains("trusts no admin key"), "{e}");
        r.receive(&bundle(vec![], "d3"), &[], "m1", None).unwrap();
        assert!(r.vars().is_empty());
        assert_eq!(r.report().error, None);
    }
}
