//! Self-repair (`agent verify`, and the daemon every `verify_interval_secs`): the whole running
//! deployment against its release, and the `/etc` overlay against the release's `/etc`.
//!
//! - `scan`: every entry of the release (kind, content, link target, device numbers, mode,
//!   owner, xattrs) and every entry the release does not have, by an explicit stack;
//! - `overlay`: local changes in the overlay's upper directory, reported or restored by policy;
//! - `fix`: moving aside what is not the release's (STATE/quarantine/) and making it anew;
//! - `objects`: the release's trees, commit and chunks from the store, or fetched again from
//!   the server when the local copy is damaged or missing;
//! - `meta`: comparing and setting one entry;
//! - `boot`: the same check before the deployment is booted, from the initramfs, offline;
//! - `seal`: the digest of a deployment's metadata, written after a full verification, that
//!   lets the quick check at boot skip reading a deployment nothing changed since.
//!
//! What was found is kept in `state.json` and reported at check-ins (`Report::integrity`): a
//! path still different from the release makes the machine `tampered` for the admin.

pub mod boot;
mod fix;
mod meta;
mod objects;
mod overlay;
mod scan;
pub mod seal;

use semithin_protocol::api::Integrity;
use semithin_store::CommitId;
use semithin_store::object::EntryKind;
use serde::Serialize;

pub use self::objects::Refetched;
use crate::error::{Error, Result};
use crate::{Agent, now};

#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub release: Option<String>,
    pub files: u64,
    pub bytes: u64,
    /// One line per path found different from the release (`/PATH: what`), in the deployment
    /// and, where the policy restores it, in the /etc overlay.
    pub problems: Vec<String>,
    /// How many of them were put right.
    pub repaired: u64,
    /// Local changes in the /etc overlay that the policy only reports (`/etc/PATH: what`).
    pub etc_drift: Vec<String>,
    /// What could not be done or looked at (each also leaves the machine unverified there).
    pub errors: Vec<String>,
    /// Chunks fetched from the server because the local copy was damaged.
    pub refetched_chunks: u64,
    /// Objects of each kind fetched again.
    pub refetched: Refetched,
    /// Where what was moved aside went.
    pub quarantine: Option<std::path::PathBuf>,
    /// What is reported to the server.
    pub integrity: Option<Integrity>,
    /// The check at boot could not leave its record for the agent: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unrecorded: Option<String>,
    /// The quick check at boot: unchanged since the seal, or why it verified in full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quick: Option<boot::Quick>,
    /// After a full verification: sealed (the entries walked), or why not (`repair::seal`).
    /// In JSON `{"entries": N}` or `{"not_sealed": "why"}`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "sealed_json"
    )]
    pub sealed: Option<seal::Sealed>,
}

fn sealed_json<S: serde::Serializer>(
    v: &Option<seal::Sealed>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Shown<'a> {
        Sealed { entries: u64 },
        NotSealed { not_sealed: &'a str },
    }
    match v {
        Some(Ok(n)) => s.serialize_some(&Shown::Sealed { entries: *n }),
        Some(Err(why)) => s.serialize_some(&Shown::NotSealed { not_sealed: why }),
        None => s.serialize_none(),
    }
}

impl VerifyReport {
    /// Something is still different from the release, or could not be checked.
    pub fn unresolved(&self) -> bool {
        self.integrity.as_ref().is_some_and(Integrity::is_tampered) || !self.errors.is_empty()
    }
}

fn shown(prefix: &str, rel: &[u8]) -> String {
    format!("{prefix}{}", String::from_utf8_lossy(rel))
}

impl Agent {
    /// Verifies and repairs the running deployment when `verify_interval_secs` (not 0) have
    /// passed since the last verification, or the machine has booted since without a check at
    /// boot (a quick check at boot counts as this boot's): so a reboot puts a tampered machine
    /// right. Never during a trial, nor on a live machine (its root is the
    /// squashfs the boot verified, read-only). Logs what it found.
    pub fn verify_when_due(&mut self) -> Result<Option<VerifyReport>> {
        let last = self.state.last_verify;
        let due = self.cfg.verify_interval_secs > 0
            && !self.cfg.live
            && self.state.trial.is_none()
            && self.layout.current()?.is_some()
            && (now() - last > self.cfg.verify_interval_secs as i64
                || crate::jobs::boot_time()
                    .is_some_and(|b| b > last.max(self.state.last_boot_check)));
        if !due {
            return Ok(None);
        }
        let r = match self.verify(true) {
            Ok(r) => r,
            Err(e) => {
                // Tried again at the next interval or boot, not at every cycle.
                self.state.last_verify = now();
                let _ = self.save();
                return Err(e);
            }
        };
        if !r.problems.is_empty() || !r.errors.is_empty() {
            self.say(&format!(
                "verify: {} path(s) differed from the release, {} put back{}",
                r.problems.len(),
                r.repaired,
                match r.errors.first() {
                    Some(e) => format!("; {} error(s), the first: {e}", r.errors.len()),
                    None => String::new(),
                }
            ));
        }
        Ok(Some(r))
    }

    /// Verifies the running deployment and the /etc overlay against the release; with `fix`,
    /// puts back what differs (the overlay only where `etc_policy` says so). Saves what was
    /// found and reports it to the server when the machine is enrolled.
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
        let patterns = self.cfg.etc_restore()?;
        let policy = self.cfg.etc_policy;
        let upper = self
            .cfg
            .etc_upper
            .clone()
            .unwrap_or_else(|| self.layout.etc_upper());
        let root = self.layout.deployment(&release);
        let cache = self.repo.cache_dir();
        let root_owner = rustix::process::geteuid().is_root();
        let remote = objects::Remote {
            api: self.api.as_ref(),
            objects_path: self
                .answer
                .as_ref()
                .and_then(|a| a.desired.as_ref())
                .map(|d| d.objects_path.clone()),
            report: self.report()?,
            offline: false,
        };
        // The walk for the seal before anything is read: sealed only if it is the same after.
        let before = seal::walk(&root, &release).ok();
        let mut objs = objects::Objects::new(&self.repo.objects, remote);
        let commit = objs.commit(id)?;
        let found = scan::scan(&mut objs, &root, &commit, root_owner)?;
        let deployment_found = found.findings.len();
        let deployment_read = found.errors.is_empty();
        report.files = found.files;
        report.bytes = found.bytes;
        report.errors = found.errors;
        let etc = match objs.tree(commit.tree) {
            Ok(t) => t.get(b"etc").and_then(|e| match e.kind {
                EntryKind::Dir(t) => Some(t),
                _ => None,
            }),
            Err(e) => {
                report.errors.push(format!("/: not verified: {e}"));
                None
            }
        };
        let (mut drift, errors) = overlay::scan(&mut objs, &upper, etc, root_owner);
        report.errors.extend(errors);
        // the machine's rendered configuration, as rendered, is no local change
        drift.retain(|d| {
            !self
                .rendering
                .owns(&upper, &String::from_utf8_lossy(&d.rel))
        });

        let mut integrity = Integrity::new(id.into(), now());
        let mut q = fix::Quarantine::new(&self.layout.quarantine(), &release, now());
        let outcome = if fix {
            fix::repair(
                &mut objs,
                &root,
                &found.findings,
                &mut q,
                &cache,
                root_owner,
            )
        } else {
            vec![Some("not fixed (--no-fix)".into()); found.findings.len()]
        };
        for (f, failed) in found.findings.iter().zip(&outcome) {
            let path = shown("/", &f.rel);
            report.problems.push(format!("{path}: {}", f.what));
            note(&mut integrity, &mut report, &path, failed.as_deref(), fix);
        }
        for d in &drift {
            let path = shown("/etc/", &d.rel);
            if !overlay::to_restore(d, policy, &patterns) {
                report.etc_drift.push(format!("{path}: {}", d.what));
                integrity.etc_drift.push(&path);
                continue;
            }
            report.problems.push(format!("{path}: {}", d.what));
            let failed = if fix {
                q.aside(&overlay_path(&upper, &d.rel), "etc-overlay", &d.rel)
                    .err()
                    .map(|e| e.to_string())
            } else {
                Some("not fixed (--no-fix)".into())
            };
            note(&mut integrity, &mut report, &path, failed.as_deref(), fix);
        }
        report.refetched = objs.refetched;
        report.refetched_chunks = objs.refetched.chunks;
        report.quarantine = q.used().map(|p| p.to_owned());
        drop(objs);
        if report.repaired > 0 {
            self.say(&format!(
                "verify: {} path(s) put back in release {}{}",
                report.repaired,
                crate::short(&release),
                match &report.quarantine {
                    Some(q) => format!(", what was there moved to {}", q.display()),
                    None => String::new(),
                }
            ));
        }
        // The seal covers the deployment alone (the overlay is the machine's own).
        report.sealed = Some(if !deployment_read || (deployment_found > 0 && !fix) {
            let _ = seal::remove(&self.layout, &release);
            Err("not sealed: not as released".into())
        } else if deployment_found == 0 {
            seal::seal_if_unchanged(&self.layout, &release, before)
        } else {
            // What was put back is read once more before it is sealed.
            seal::verify_and_seal(&self.layout, &self.repo.objects, &release, root_owner)
        });
        report.integrity = Some(integrity.clone());
        self.state.integrity = Some(integrity);
        self.state.last_verify = now();
        self.save()?;
        if self.api.is_some()
            && let Err(e) = self.checkin(0)
        {
            self.say(&format!("verify: could not report to the server: {e}"));
        }
        Ok(report)
    }
}

fn overlay_path(upper: &std::path::Path, rel: &[u8]) -> std::path::PathBuf {
    scan::at(upper, rel)
}

/// Counts a path found different as repaired or still tampered.
fn note(i: &mut Integrity, r: &mut VerifyReport, path: &str, failed: Option<&str>, fix: bool) {
    match failed {
        None => {
            r.repaired += 1;
            i.repaired.push(path);
        }
        Some(why) => {
            if fix {
                r.errors
                    .push(format!("{path}: could not be put back: {why}"));
            }
            i.tampered.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};

    use semithin_protocol::sign::MachineKey;
    use semithin_store::import::{self, CommitOptions};
    use semithin_store::repo::Config as RepoConfig;
    use semithin_store::{Access, NoProgress, Repo};

    use semithin_store::pack::ObjKind;
    use semithin_store::transfer;

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
                            let k = [ObjKind::Chunk, ObjKind::Tree, ObjKind::Commit]
                                .into_iter()
                                .find(|x| x.name() == k)
                                .unwrap();
                            (k, hex::decode(id).unwrap().try_into().unwrap())
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

    /// A machine running a small release, with the server's repository beside it:
    /// (state dir, layout, release, server repository, the content of etc/data).
    fn machine(dir: &std::path::Path) -> (PathBuf, Layout, String, PathBuf, Vec<u8>) {
        let src = dir.join("img");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        let content: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 251) as u8).collect();
        std::fs::write(src.join("etc/data"), &content).unwrap();
        sh(&format!(
            "set -e; cd '{}'; mkdir -p dev tmp var/spool usr/bin; chmod 1777 tmp; \
             mknod dev/null c 1 3; mkfifo dev/initctl; printf 'x' > usr/bin/tool; \
             chmod 0755 usr/bin/tool; printf 'mail' > var/spool/mail",
            src.display()
        ));
        // The server's repository, and the machine's copy of it.
        let server_repo = dir.join("server-repo");
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
        let state = dir.join("state");
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
        (state, layout, release, server_repo, content)
    }

    fn sh(cmd: &str) {
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .status()
            .unwrap();
        assert!(st.success(), "{cmd}");
    }

    /// Flips a byte in every object of KIND in the machine's packs.
    fn damage(layout: &Layout, kinds: &[ObjKind]) {
        let r = Repo::open(&layout.repo(), Access::Read).unwrap();
        for (name, entries) in r.objects.packs().unwrap() {
            let p = layout.repo().join(format!("objects/packs/{name}.pack"));
            let mut b = std::fs::read(&p).unwrap();
            for e in entries.iter().filter(|e| kinds.contains(&e.kind())) {
                b[(e.offset + e.stored_len as u64 / 2) as usize] ^= 0x55;
            }
            std::fs::write(&p, b).unwrap();
        }
    }

    /// Enrolled with a server that serves objects under a path of its own.
    fn enrolled(
        state: &std::path::Path,
        layout: &Layout,
        server_repo: PathBuf,
        release: &str,
    ) -> (Agent, Arc<Mutex<Vec<String>>>) {
        let (url, seen) = fake_server(server_repo, release.to_owned(), "/api/v1/mirror/objects");
        let key = MachineKey::generate().unwrap();
        std::fs::write(layout.key(), key.file_text()).unwrap();
        State {
            machine_id: Some(key.id()),
            server: Some(url),
            ..State::default()
        }
        .save(&layout.state())
        .unwrap();
        let agent = Agent::open(state, Config::default(), Box::new(|_| {})).unwrap();
        (agent, seen)
    }

    #[test]
    fn damaged_trees_and_commit_are_fetched_again_and_the_repair_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (state, layout, release, server_repo, content) = machine(dir.path());
        let dep = layout.deployment(&release);
        std::fs::write(dep.join("etc/data"), b"short").unwrap();
        std::fs::create_dir(dep.join("etc/cron.d")).unwrap();
        std::fs::write(dep.join("etc/cron.d/evil"), b"* * * * * root sh\n").unwrap();
        damage(&layout, &[ObjKind::Tree, ObjKind::Commit]);
        let (mut agent, _) = enrolled(&state, &layout, server_repo, &release);
        let r = agent.verify(true).unwrap();
        assert_eq!(r.refetched.commits, 1, "{r:?}");
        assert!(r.refetched.trees >= 2, "{r:?}");
        assert_eq!(r.problems.len(), 2, "{r:?}");
        assert_eq!(r.repaired, 2, "{r:?}");
        assert!(r.errors.is_empty(), "{r:?}");
        assert_eq!(std::fs::read(dep.join("etc/data")).unwrap(), content);
        assert!(!dep.join("etc/cron.d").exists());
        let q = r.quarantine.unwrap();
        assert!(q.join("deployment/etc/cron.d/evil").is_file());
    }

    #[test]
    fn owner_xattrs_devices_fifos_sticky_bits_and_a_hijacked_directory_are_found_and_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let (state, layout, release, _, _) = machine(dir.path());
        let dep = layout.deployment(&release);
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        sh(&format!(
            "set -e; cd '{}'; chown 1000:1000 usr/bin/tool; setfattr -n trusted.evil -v 1 etc/data; \
             rm dev/null; mknod dev/null c 1 5; rm dev/initctl; : > dev/initctl; chmod 0777 tmp; \
             rm -r var/spool; ln -s '{}' var/spool",
            dep.display(),
            outside.display()
        ));
        let mut agent = Agent::open(&state, Config::default(), Box::new(|_| {})).unwrap();
        let r = agent.verify(false).unwrap();
        let all = r.problems.join("\n");
        for want in [
            "/usr/bin/tool: owner 1000:1000, the release has 0:0",
            "/etc/data: xattrs differ (not as released: trusted.evil)",
            "/dev/null: is device 1:5, the release has 1:3",
            "/dev/initctl: is a file, the release has a fifo",
            "/tmp: mode 0777, the release has 1777",
            "/var/spool: is a symlink, the release has a dir",
        ] {
            assert!(all.contains(want), "{want:?} not in\n{all}");
        }
        assert_eq!(r.problems.len(), 6, "{all}");
        let i = r.integrity.as_ref().unwrap();
        assert_eq!(i.tampered.count, 6);
        assert_eq!(agent.report().unwrap().integrity.as_ref(), Some(i));

        let r = agent.verify(true).unwrap();
        assert_eq!(r.repaired, 6, "{r:?}");
        assert!(r.errors.is_empty(), "{r:?}");
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "nothing written through the link"
        );
        assert_eq!(std::fs::read(dep.join("var/spool/mail")).unwrap(), b"mail");
        let r = agent.verify(false).unwrap();
        assert!(r.problems.is_empty(), "{r:?}");
        assert!(!r.unresolved());
    }

    #[test]
    fn a_verification_seals_the_deployment_and_after_links_change_the_agent_seals_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let (state, layout, v1, _, _) = machine(dir.path());
        // v2: v1 and one more file, in the machine's store
        let src = dir.path().join("img");
        std::fs::write(src.join("etc/new"), b"v2").unwrap();
        let v2 = {
            let r = Repo::open(&layout.repo(), Access::Write).unwrap();
            let opts = CommitOptions {
                channel: "lab/stable",
                message: "",
                time: Some(2),
            };
            import::commit(&r, &src, &opts, &NoProgress).unwrap().commit
        };
        let said = Arc::new(Mutex::new(Vec::new()));
        let log = said.clone();
        let mut agent = Agent::open(
            &state,
            Config::default(),
            Box::new(move |s| log.lock().unwrap().push(s.to_owned())),
        )
        .unwrap();
        assert!(seal::check(&layout, &v1).is_err(), "not verified yet");
        let r = agent.verify(false).unwrap();
        let n = seal::check(&layout, &v1).unwrap();
        assert_eq!(r.sealed, Some(Ok(n)));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["sealed"], serde_json::json!({"entries": n}), "{json}");

        // Staging v2 links the files v1 shares into it: their ctime moves, v1's seal is off.
        std::thread::sleep(std::time::Duration::from_millis(30));
        deploy::stage(&agent.repo, &layout, &v2).unwrap();
        agent.seal_staged(&v2);
        assert!(seal::check(&layout, &v2).is_ok());
        let e = seal::check(&layout, &v1).unwrap_err();
        assert!(e.contains("changed since its seal"), "{e}");

        // Switched to v2, v1 pruned: the unlinks move the ctime of v2's shared files, and the
        // agent verifies v2 again and seals it.
        deploy::point_current(&layout, Some(&v2)).unwrap();
        agent.state.history = vec![v2.clone()];
        std::thread::sleep(std::time::Duration::from_millis(30));
        agent.prune().unwrap();
        assert!(!layout.deployment(&v1).exists());
        assert!(
            !seal::path(&layout, &v1).exists(),
            "the seal went with its deployment"
        );
        assert!(seal::check(&layout, &v2).is_ok());
        let said = said.lock().unwrap().join("\n");
        assert!(
            said.contains(&format!(
                "verified the deployment of release {} again and sealed it (",
                crate::short(&v2)
            )),
            "{said}"
        );

        // A verification that finds the deployment changed removes its seal.
        std::thread::sleep(std::time::Duration::from_millis(30));
        std::fs::write(layout.deployment(&v2).join("etc/new"), b"v3").unwrap();
        let r = agent.verify(false).unwrap();
        assert!(matches!(r.sealed, Some(Err(_))), "{r:?}");
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["sealed"]["not_sealed"].is_string(), "{json}");
        assert!(!seal::path(&layout, &v2).exists());
        // Put right, read again and sealed.
        let r = agent.verify(true).unwrap();
        assert_eq!(r.repaired, 1, "{r:?}");
        assert!(matches!(r.sealed, Some(Ok(_))), "{r:?}");
        assert!(seal::check(&layout, &v2).is_ok());
    }

    #[test]
    fn damaged_chunks_are_fetched_where_the_server_says() {
        let dir = tempfile::tempdir().unwrap();
        let (state, layout, release, server_repo, content) = machine(dir.path());
        // The deployed file and every chunk in the machine's packs damaged.
        let dep = layout.deployment(&release);
        std::fs::remove_file(dep.join("etc/data")).unwrap();
        std::fs::write(dep.join("etc/data"), b"short").unwrap();
        damage(&layout, &[ObjKind::Chunk]);
        let (mut agent, seen) = enrolled(&state, &layout, server_repo, &release);
        let r = agent.verify(true).unwrap();
        assert_eq!(r.problems.len(), 1, "{r:?}");
        assert_eq!(r.repaired, 1, "{r:?}");
        assert!(r.refetched_chunks >= 1, "{r:?}");
        assert_eq!(std::fs::read(dep.join("etc/data")).unwrap(), content);
        let seen = seen.lock().unwrap().clone();
        assert!(
            seen.contains(&"POST /api/v1/mirror/objects".to_owned()),
            "{seen:?}"
        );
        assert!(
            !seen.iter().any(|s| s.contains("/api/v1/objects")),
            "{seen:?}"
        );
    }
}
