//! Self-repair: re-hash the running deployment against its release; put back what changed,
//! from the local store, or from the server when the store's copy is damaged too.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use semithin_store::checkout::restore_file;
use semithin_store::id::FileHash;
use semithin_store::object::{EntryKind, FileContent};
use semithin_store::pack::ObjKind;
use semithin_store::{ChunkId, CommitId, transfer, walk};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::{Agent, now};

#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub release: Option<String>,
    pub files: u64,
    pub bytes: u64,
    /// One line per path found wrong.
    pub problems: Vec<String>,
    pub repaired: u64,
    /// Chunks fetched from the server because the local copy was damaged.
    pub refetched_chunks: u64,
}

/// What is wrong with a regular file, if anything.
fn check_file(path: &Path, content: &FileContent, mode: u32) -> Option<String> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => return Some(format!("cannot be read ({e})")),
    };
    if !md.is_file() {
        return Some("is no longer a regular file".into());
    }
    if md.len() != content.size {
        return Some(format!(
            "has {} bytes, the release has {}",
            md.len(),
            content.size
        ));
    }
    if md.permissions().mode() & 0o7777 != mode {
        return Some(format!(
            "has mode {:o}, the release has {:o}",
            md.permissions().mode() & 0o7777,
            mode
        ));
    }
    let mut h = FileHash::hasher();
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return Some(format!("cannot be read ({e})")),
    };
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
            }
            Err(e) => return Some(format!("cannot be read ({e})")),
        }
    }
    let _ = md.ino();
    (FileHash::from_hasher(&h) != content.hash).then(|| "content differs from the release".into())
}

impl Agent {
    /// Where the server serves objects: the `objects_path` of its answer in this run, asked for
    /// with a check-in when there is none yet.
    fn objects_path(&mut self) -> Result<String> {
        if self.answer.is_none() {
            self.checkin(0)?;
        }
        self.answer
            .as_ref()
            .and_then(|a| a.desired.as_ref())
            .map(|d| d.objects_path.clone())
            .ok_or_else(|| {
                Error::Config(
                    "the local store is damaged and the server names no release for this \
                     machine (not accepted, or no channel assigned), so there is nowhere to \
                     fetch the damaged chunks from"
                        .into(),
                )
            })
    }

    /// Re-hashes every regular file of the running deployment; with `fix`, restores each one
    /// that differs.
    pub fn verify(&mut self, fix: bool) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let Some(release) = self.layout.current()? else {
            return Ok(report);
        };
        report.release = Some(release.clone());
        let id: CommitId = release.parse().map_err(|_| Error::Release {
            release: release.clone(),
            reason: "not a commit id".into(),
        })?;
        let root = self.layout.deployment(&release);
        let store = &self.repo().objects;
        let commit = store.get_commit(&id)?;
        let mut bad: Vec<(Vec<u8>, FileContent, semithin_store::object::Meta)> = Vec::new();
        walk::walk(store, commit.tree, &mut |rel, e| {
            let path = root.join(std::ffi::OsStr::from_bytes(rel));
            let problem = match &e.kind {
                EntryKind::File(c) => {
                    report.files += 1;
                    report.bytes += c.size;
                    let p = check_file(&path, c, e.meta.mode);
                    if p.is_some() {
                        bad.push((rel.to_vec(), c.clone(), e.meta.clone()));
                    }
                    p
                }
                EntryKind::Dir(_) => match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => None,
                    _ => Some("is no longer a directory (restage the release)".into()),
                },
                EntryKind::Symlink(t) => match std::fs::read_link(&path) {
                    Ok(x) if x.as_os_str().as_bytes() == t.as_slice() => None,
                    _ => Some("is no longer the release's symlink (restage the release)".into()),
                },
                _ => None,
            };
            if let Some(p) = problem {
                report
                    .problems
                    .push(format!("{}: {p}", String::from_utf8_lossy(rel)));
            }
            Ok(())
        })?;
        if fix && !bad.is_empty() {
            // Chunks the store cannot give back intact are fetched from the server, verified,
            // and used from memory.
            let mut damaged: HashSet<(ObjKind, [u8; 32])> = HashSet::new();
            for (_, c, _) in &bad {
                for ch in &c.chunks {
                    if store.get_chunk(&ch.id).is_err() {
                        damaged.insert((ObjKind::Chunk, *ch.id.as_bytes()));
                    }
                }
            }
            let mut fetched: HashMap<[u8; 32], Vec<u8>> = HashMap::new();
            if !damaged.is_empty() {
                if self.api.is_none() {
                    return Err(Error::Config(
                        "the local store is damaged and the machine is not enrolled".into(),
                    ));
                }
                let path = self.objects_path()?;
                let api = self.api.as_ref().expect("enrolled");
                let refs = damaged
                    .iter()
                    .map(|(k, id)| format!("{}/{}", k.name(), hex::encode(id)))
                    .collect();
                let stream = api.objects(&path, refs)?;
                transfer::read_stream(&damaged, stream, |obj, raw| {
                    fetched.insert(*obj.id(), raw);
                    Ok(())
                })?;
                report.refetched_chunks = fetched.len() as u64;
            }
            let store = &self.repo().objects;
            let get = |id: &ChunkId| -> semithin_store::Result<Vec<u8>> {
                match fetched.get(id.as_bytes()) {
                    Some(b) => Ok(b.clone()),
                    None => store.get_chunk(id),
                }
            };
            let cache = self.repo().cache_dir();
            for (rel, c, meta) in &bad {
                let path = root.join(std::ffi::OsStr::from_bytes(rel));
                if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                    continue;
                }
                restore_file(&get, Some(&cache), &path, c, meta)?;
                report.repaired += 1;
            }
            self.say(&format!(
                "verify: {} file(s) restored in release {}",
                report.repaired,
                crate::short(&release)
            ));
        }
        self.state.last_verify = now();
        self.save()?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};

    use semithin_protocol::sign::MachineKey;
    use semithin_store::import::{self, CommitOptions};
    use semithin_store::repo::Config as RepoConfig;
    use semithin_store::{Access, NoProgress, Repo};

    use super::*;
    use crate::state::{Layout, State};
    use crate::{Config, deploy};

    /// A server that answers check-ins naming `objects_path` for the release, serves object
    /// streams from `repo` there and nowhere else, and notes every request line.
    fn fake_server(
        repo: PathBuf,
        release: String,
        objects_path: &'static str,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            let repo = Repo::open(&repo, Access::Read).unwrap();
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0u8; len];
                r.read_exact(&mut body).unwrap();
                let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                log.lock()
                    .unwrap()
                    .push(format!("{} {target}", line.split(' ').next().unwrap()));
                let (status, ctype, answer) = if target == "/api/v1/checkin" {
                    let a = serde_json::json!({"status": "accepted", "desired": {
                        "channel": "lab/stable", "release": release,
                        "metadata_path": "/api/v1/trust/metadata/",
                        "objects_path": objects_path}, "next_checkin_secs": 30});
                    (
                        "200 OK",
                        "application/json",
                        serde_json::to_vec(&a).unwrap(),
                    )
                } else if target == objects_path {
                    let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let wanted: Vec<(ObjKind, [u8; 32])> = req["objects"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|o| {
                            let (k, id) = o.as_str().unwrap().split_once('/').unwrap();
                            assert_eq!(k, "chunk");
                            (ObjKind::Chunk, hex::decode(id).unwrap().try_into().unwrap())
                        })
                        .collect();
                    let mut out = Vec::new();
                    transfer::send(&repo.objects, &wanted, &mut out).unwrap();
                    ("200 OK", "application/x-semithin-objects", out)
                } else {
                    let e = serde_json::json!({"error": format!("no such endpoint: {target}")});
                    (
                        "404 Not Found",
                        "application/json",
                        serde_json::to_vec(&e).unwrap(),
                    )
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    answer.len()
                );
                let _ = conn.write_all(&answer);
            }
        });
        (url, seen)
    }

    #[test]
    fn damaged_chunks_are_fetched_where_the_server_says() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("img");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        let content: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 251) as u8).collect();
        std::fs::write(src.join("etc/data"), &content).unwrap();
        // The server's repository, and the machine's copy of it.
        let server_repo = dir.path().join("server-repo");
        Repo::init(&server_repo, RepoConfig::default()).unwrap();
        let release = {
            let r = Repo::open(&server_repo, Access::Write).unwrap();
            let opts = CommitOptions {
                channel: "lab/stable",
                message: "",
                time: Some(1),
            };
            import::commit(&r, &src, &opts, &NoProgress).unwrap().commit
        };
        let state = dir.path().join("state");
        let layout = Layout::new(&state);
        std::fs::create_dir_all(layout.deployments()).unwrap();
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(&server_repo)
            .arg(layout.repo())
            .status()
            .unwrap();
        assert!(st.success());
        {
            let r = Repo::open(&layout.repo(), Access::Write).unwrap();
            deploy::stage(&r, &layout, &release).unwrap();
        }
        deploy::point_current(&layout, Some(&release)).unwrap();
        // The deployed file and every chunk in the machine's packs damaged.
        let dep = layout.deployment(&release);
        std::fs::remove_file(dep.join("etc/data")).unwrap();
        std::fs::write(dep.join("etc/data"), b"short").unwrap();
        {
            let r = Repo::open(&layout.repo(), Access::Read).unwrap();
            for (name, entries) in r.objects.packs().unwrap() {
                let p = layout.repo().join(format!("objects/packs/{name}.pack"));
                let mut b = std::fs::read(&p).unwrap();
                for e in entries.iter().filter(|e| e.kind() == ObjKind::Chunk) {
                    b[(e.offset + e.stored_len as u64 / 2) as usize] ^= 0x55;
                }
                std::fs::write(&p, b).unwrap();
            }
        }
        // Enrolled with a server that serves objects under a path of its own.
        let (url, seen) = fake_server(server_repo, release.clone(), "/mirror/v1/objects");
        let key = MachineKey::generate().unwrap();
        std::fs::write(layout.key(), key.file_text()).unwrap();
        State {
            machine_id: Some(key.id()),
            server: Some(url),
            ..State::default()
        }
        .save(&layout.state())
        .unwrap();
        let mut agent = Agent::open(&state, Config::default(), Box::new(|_| {})).unwrap();
        let r = agent.verify(true).unwrap();
        assert_eq!(r.problems.len(), 1, "{r:?}");
        assert_eq!(r.repaired, 1, "{r:?}");
        assert!(r.refetched_chunks >= 1, "{r:?}");
        assert_eq!(std::fs::read(dep.join("etc/data")).unwrap(), content);
        let seen = seen.lock().unwrap().clone();
        assert!(
            seen.contains(&"POST /mirror/v1/objects".to_owned()),
            "{seen:?}"
        );
        assert!(
            !seen.iter().any(|s| s.contains("/api/v1/objects")),
            "{seen:?}"
        );
    }
}
