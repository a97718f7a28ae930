//! `agent --backup-dir` and `agent restore`: a copy of the kept releases on a disk of its own
//! (a tmpfs mounted for the test), made incrementally, warned about when the disk is gone, and
//! restored with the server stopped; damaged backups are refused and change nothing.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use semithin_store::object::EntryKind;
use semithin_store::pack::ObjKind;
use semithin_store::{Access, CommitId, Repo, TreeId};
use serde_json::Value;

use crate::common::{q, sh};
use crate::fleet::{Agent, Server, Tmpfs, assert_deployed, image};

/// The object counts that `backup: N release(s) in DIR, M object(s) copied` lines said, in order.
fn copied(log: &str) -> Vec<(u64, u64)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split("backup: ").nth(1)?;
            let (n, rest) = rest.split_once(" release(s) in ")?;
            let m = rest.split(", ").nth(1)?.strip_suffix(" object(s) copied")?;
            let m = m.split(',').next()?;
            Some((n.parse().ok()?, m.parse().ok()?))
        })
        .collect()
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

fn held(dir: &Path) -> Vec<String> {
    manifest(dir)["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["release"].as_str().unwrap().to_owned())
        .collect()
}

/// Every object of a release in a repository: (kind, id).
fn objects_of(repo: &Path, release: &str) -> HashSet<(ObjKind, [u8; 32])> {
    let repo = Repo::open(repo, Access::Read).unwrap();
    let id: CommitId = release.parse().unwrap();
    let mut out = HashSet::from([(ObjKind::Commit, *id.as_bytes())]);
    let mut stack: Vec<TreeId> = vec![repo.objects.get_commit(&id).unwrap().tree];
    while let Some(t) = stack.pop() {
        out.insert((ObjKind::Tree, *t.as_bytes()));
        for e in repo.objects.get_tree(&t).unwrap().entries {
            match e.kind {
                EntryKind::Dir(sub) => stack.push(sub),
                EntryKind::File(f) => {
                    out.extend(f.chunks.iter().map(|c| (ObjKind::Chunk, *c.id.as_bytes())))
                }
                _ => {}
            }
        }
    }
    out
}

/// A machine on v1 then v2 with a backup disk; (server, agent, disk, v1 source, v2 source, v1, v2).
struct Machine {
    // dropped in this order: the disk is unmounted before the server's directory goes
    disk: Option<Tmpfs>,
    a: Agent,
    s: Server,
    dir: PathBuf,
    src1: PathBuf,
    src2: PathBuf,
    v1: String,
    v2: String,
}

fn machine_on_v2() -> Machine {
    let s = Server::start();
    let t = s.enroll_token(true);
    let (src1, src2) = (s.path("img1"), s.path("img2"));
    image(&src1, 1, 5);
    // v2 changes one file of v1: the rest is shared
    sh(&format!(
        "cp -a {} {} && echo VERSION_ID=2 > {}/etc/os-release",
        q(&src1),
        q(&src2),
        q(&src2)
    ));
    let dir = s.path("backup-disk");
    let disk = Tmpfs::mount(&dir, "128M");
    let v1 = s.release(&src1, "lab/stable");
    let a = Agent::new(&s, "m1", &t)
        .arg("--backup-dir")
        .arg(dir.to_str().unwrap());
    assert!(a.once().success(), "{}", a.log());
    s.ok(&["fleet", "assign", "m1", "lab/stable"]);
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(a.current().as_deref(), Some(v1.as_str()));
    assert_eq!(held(&dir), vec![v1.clone()], "{}", a.log());
    let v2 = s.release(&src2, "lab/stable");
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(a.current().as_deref(), Some(v2.as_str()));
    Machine {
        disk: Some(disk),
        a,
        s,
        dir,
        src1,
        src2,
        v1,
        v2,
    }
}

#[test]
fn the_backup_holds_the_kept_releases_incrementally_and_restores_without_the_server() {
    let mut m = machine_on_v2();
    let log = m.a.log();
    // the backup holds both kept releases, v2 current
    assert_eq!(held(&m.dir), vec![m.v2.clone(), m.v1.clone()], "{log}");
    assert_eq!(manifest(&m.dir)["current"], Value::from(m.v2.clone()));
    // incremental: the second backup copied less than v2 has (what v1 shares was there)
    let runs = copied(&log);
    assert_eq!(runs.len(), 2, "{log}");
    let (n1, c1) = runs[0];
    let (n2, c2) = runs[1];
    assert_eq!((n1, n2), (1, 2), "{log}");
    let o1 = objects_of(&m.dir.join("repo"), &m.v1);
    let o2 = objects_of(&m.dir.join("repo"), &m.v2);
    assert_eq!(
        c1,
        o1.len() as u64,
        "the first backup copies all of v1: {log}"
    );
    assert_eq!(c2, o2.difference(&o1).count() as u64, "{log}");
    assert!(c2 < o2.len() as u64, "{c2} of {} objects: {log}", o2.len());
    // another run with nothing new copies nothing
    assert!(m.a.once().success(), "{}", m.a.log());
    assert_eq!(copied(&m.a.log()).last(), Some(&(2, 0)), "{}", m.a.log());

    // the server goes away; the machine goes back to v1 from the backup alone, mounted
    // read-only as a rescue would
    m.s.kill();
    sh(&format!("mount -o remount,ro {}", q(&m.dir)));
    let out = m.a.run(&[
        "restore",
        "--from",
        m.dir.to_str().unwrap(),
        "--release",
        &m.v1,
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("switched to and healthy"), "{said}");
    assert_eq!(m.a.current().as_deref(), Some(m.v1.as_str()));
    assert_deployed(&m.src1, &m.a.deployment());
    let boot = m.a.run(&["boot-verify"]);
    assert!(
        boot.status.success(),
        "{}",
        String::from_utf8_lossy(&boot.stderr)
    );
    assert!(
        String::from_utf8_lossy(&boot.stderr).contains("0 path(s) differed"),
        "{}",
        String::from_utf8_lossy(&boot.stderr)
    );

    // the machine's store is damaged: moved aside, and the backup fills a new one, with the
    // other kept release too
    sh(&format!("mv {0}/repo {0}/repo.damaged", q(&m.a.state)));
    let out = m.a.run(&[
        "restore",
        "--from",
        m.dir.to_str().unwrap(),
        "--release",
        &m.v1,
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("already current"), "{said}");
    assert!(
        said.contains(&format!("{} copied", o1.len())),
        "every object of v1 again: {said}"
    );
    for (r, o) in [(&m.v1, &o1), (&m.v2, &o2)] {
        assert_eq!(&objects_of(&m.a.state.join("repo"), r), o);
    }
    let boot = m.a.run(&["boot-verify"]);
    assert!(
        boot.status.success(),
        "{}",
        String::from_utf8_lossy(&boot.stderr)
    );

    // a rescue: an empty state directory and the root shipped with the image
    let fresh = m.s.path("rescue-state");
    let out = std::process::Command::new(crate::common::BIN)
        .arg("agent")
        .arg("--state")
        .arg(&fresh)
        .arg("--trusted-root")
        .arg(m.s.root_json())
        .args(["restore", "--from", m.dir.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["release"], Value::from(m.v2.clone()), "{r}");
    assert_eq!(r["staged"], Value::Bool(true), "{r}");
    assert_eq!(r["objects_copied"], Value::from(o2.len()), "{r}");
    let link = std::fs::read_link(fresh.join("current")).unwrap();
    assert_eq!(link, Path::new("deployments").join(&m.v2));
    assert_deployed(&m.src2, &fresh.join("deployments").join(&m.v2));
    drop(m.disk.take());
}

#[test]
fn a_missing_backup_disk_is_a_warning_once_and_the_update_goes_on() {
    let s = Server::start();
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 3);
    let dir = s.path("backup-disk");
    let disk = Tmpfs::mount(&dir, "64M");
    let v1 = s.release(&src, "lab/stable");
    let a = Agent::new(&s, "m1", &t)
        .arg("--backup-dir")
        .arg(dir.to_str().unwrap());
    assert!(a.once().success(), "{}", a.log());
    s.ok(&["fleet", "assign", "m1", "lab/stable"]);
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(held(&dir), vec![v1.clone()]);
    // the disk goes: its mount point stays behind as an empty directory on the root
    drop(disk);
    assert!(dir.is_dir() && std::fs::read_dir(&dir).unwrap().next().is_none());
    image(&src, 2, 3);
    let v2 = s.release(&src, "lab/stable");
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(a.current().as_deref(), Some(v2.as_str()), "{}", a.log());
    assert!(a.once().success(), "{}", a.log());
    let log = a.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("backup: warning"))
        .collect();
    assert_eq!(warnings.len(), 1, "once per change: {log}");
    assert!(warnings[0].contains("not a mount point"), "{log}");
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "nothing was written into the directory below the disk"
    );
    let st = a.run(&["status"]);
    let st = String::from_utf8_lossy(&st.stdout);
    assert!(st.contains("backup:    unmounted"), "{st}");
    // reported: the server keeps it and records one event
    let events = |kind_detail: &str| {
        let m = s.machine("m1");
        let n = m["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["kind"] == "backup" && e["detail"].as_str().unwrap().starts_with(kind_detail)
            })
            .count();
        (m, n)
    };
    let (m1, n) = events("unmounted: ");
    assert_eq!(m1["report"]["backup"]["kind"], "unmounted", "{m1}");
    assert_eq!(n, 1, "{m1}");
    let show = s.ok(&["fleet", "show", "m1"]);
    assert!(show.contains("backup:     unmounted since "), "{show}");
    // the directory removed too: another kind of warning
    std::fs::remove_dir(&dir).unwrap();
    assert!(a.once().success(), "{}", a.log());
    assert!(
        a.log()
            .contains("does not exist: the backup disk is missing"),
        "{}",
        a.log()
    );
    // the disk is back (empty): the backup is made again, warning gone
    let disk = Tmpfs::mount(&dir, "64M");
    assert!(a.once().success(), "{}", a.log());
    assert!(
        a.log().contains("backup disk is usable again"),
        "{}",
        a.log()
    );
    assert_eq!(held(&dir).first(), Some(&v2), "{}", a.log());
    let st = a.run(&["status"]);
    assert!(!String::from_utf8_lossy(&st.stdout).contains("backup:"));
    let (m1, n) = events("made again");
    assert!(m1["report"]["backup"].is_null(), "{m1}");
    assert_eq!(n, 1, "{m1}");
    // a read-only disk: a warning
    sh(&format!("mount -o remount,ro {}", q(&dir)));
    assert!(a.once().success(), "{}", a.log());
    assert!(a.log().contains("is mounted read-only"), "{}", a.log());
    assert_eq!(events("read-only: ").1, 1);
    // a full disk: a warning, and the update goes on
    drop(disk);
    let _disk = Tmpfs::mount(&dir, "64K");
    image(&src, 3, 3);
    let v3 = s.release(&src, "lab/stable");
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(a.current().as_deref(), Some(v3.as_str()), "{}", a.log());
    let log = a.log();
    let last = log
        .lines()
        .rfind(|l| l.contains("backup: warning"))
        .unwrap();
    assert!(
        last.contains("No space left") || last.contains("disk is full"),
        "{log}"
    );
}

/// Everything of the agent's state a refused restore must leave as it was.
fn snapshot(state: &Path) -> String {
    sh(&format!(
        "cd {} && cat state.json && readlink current && ls -a deployments && \
         ls repo/objects/packs && ls -a",
        q(state)
    ))
}

fn refused(m: &Machine, from: &Path, release: Option<&str>, expect: &str) {
    let before = snapshot(&m.a.state);
    let mut args = vec!["restore", "--from", from.to_str().unwrap()];
    if let Some(r) = release {
        args.extend(["--release", r]);
    }
    let out = m.a.run(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("refused as: {err}");
    assert!(!out.status.success(), "restored a damaged backup: {err}");
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    assert_eq!(
        snapshot(&m.a.state),
        before,
        "a refused restore changed the state: {err}"
    );
}

#[test]
fn a_damaged_backup_is_refused_naming_what_and_changes_nothing() {
    let mut m = machine_on_v2();
    m.s.kill();
    let copy = |name: &str| {
        let d = m.s.path(name);
        sh(&format!("cp -a {} {}", q(&m.dir), q(&d)));
        d
    };
    // a flipped byte in an object only v1 has
    let d = copy("flipped");
    let only_v1: Vec<_> = objects_of(&d.join("repo"), &m.v1)
        .difference(&objects_of(&d.join("repo"), &m.v2))
        .copied()
        .filter(|(k, _)| *k == ObjKind::Chunk)
        .collect();
    let (_, victim) = only_v1[0];
    let (pack, entry) = {
        let repo = Repo::open(&d.join("repo"), Access::Read).unwrap();
        repo.objects
            .packs()
            .unwrap()
            .into_iter()
            .find_map(|(name, entries)| {
                let e = entries.into_iter().find(|e| e.id == victim)?;
                Some((repo.objects.packs_dir().join(format!("{name}.pack")), e))
            })
            .unwrap()
    };
    let mut bytes = std::fs::read(&pack).unwrap();
    let at = (entry.offset + entry.stored_len as u64 / 2) as usize;
    bytes[at] ^= 0x01;
    std::fs::write(&pack, bytes).unwrap();
    refused(&m, &d, Some(&m.v1), &hex::encode(victim));

    // a manifest naming a release the backup does not hold, or one nothing signed
    let fake = "f".repeat(64);
    refused(&m, &m.dir, Some(&fake), "does not hold release");
    let d = copy("unknown");
    let mut man = manifest(&d);
    let made = man["made_at"].clone();
    man["releases"].as_array_mut().unwrap().insert(
        0,
        serde_json::json!({"release": fake, "channel": "lab/stable", "verified_at": made}),
    );
    man["current"] = Value::from(fake.clone());
    std::fs::write(d.join("manifest.json"), man.to_string()).unwrap();
    sh(&format!(
        "cp -a {}/trust/{} {}/trust/{fake}",
        q(&d),
        m.v2,
        q(&d)
    ));
    refused(&m, &d, None, "does not sign it for channel lab/stable");
    let man = manifest(&d);
    let mut bad = man.clone();
    bad["current"] = Value::from("../../etc");
    std::fs::write(d.join("manifest.json"), bad.to_string()).unwrap();
    refused(&m, &d, None, "not a release id");

    // signed metadata that does not verify: the targets changed after signing
    let d = copy("metadata");
    let targets = d.join(format!("trust/{}/targets.json", m.v2));
    let text = std::fs::read_to_string(&targets).unwrap();
    assert!(text.contains(&m.v2));
    std::fs::write(&targets, text.replace(&m.v2, &m.v1)).unwrap();
    refused(
        &m,
        &d,
        Some(&m.v2),
        "does not verify against the trusted root",
    );
    // and a timestamp whose signature is not the key's
    let d = copy("timestamp");
    let ts = d.join(format!("trust/{}/timestamp.json", m.v2));
    let mut v: Value = serde_json::from_slice(&std::fs::read(&ts).unwrap()).unwrap();
    let sig = v["signatures"][0]["sig"].as_str().unwrap().to_owned();
    let flipped = format!(
        "{}{}",
        if sig.starts_with('0') { "1" } else { "0" },
        sig.get(1..).unwrap()
    );
    v["signatures"][0]["sig"] = Value::from(flipped);
    std::fs::write(&ts, v.to_string()).unwrap();
    refused(
        &m,
        &d,
        Some(&m.v2),
        "does not verify against the trusted root",
    );

    // the intact backup still restores
    let out = m.a.run(&[
        "restore",
        "--from",
        m.dir.to_str().unwrap(),
        "--release",
        &m.v1,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(m.a.current().as_deref(), Some(m.v1.as_str()));
    let _ = (&m.src1, &m.src2);
    drop(m.disk.take());
}

#[test]
fn a_killed_backup_leaves_the_previous_one_usable_and_a_pruned_release_leaves_the_backup() {
    let s = Server::start();
    let t = s.enroll_token(true);
    let (src1, src2) = (s.path("img1"), s.path("img2"));
    image(&src1, 1, 3);
    image(&src2, 2, 3);
    let dir = s.path("backup-disk");
    let _disk = Tmpfs::mount(&dir, "64M");
    let v1 = s.release(&src1, "lab/stable");
    let a = Agent::new(&s, "m1", &t)
        .arg("--backup-dir")
        .arg(dir.to_str().unwrap());
    assert!(a.once().success(), "{}", a.log());
    s.ok(&["fleet", "assign", "m1", "lab/stable"]);
    assert!(a.once().success(), "{}", a.log());
    let before = std::fs::read(dir.join("manifest.json")).unwrap();
    let v2 = s.release(&src2, "lab/stable");
    // killed once v2's objects and metadata are on the disk, before the manifest names them
    let k = Agent::new(&s, "m1", &t)
        .arg("--backup-dir")
        .arg(dir.to_str().unwrap())
        .env("SEMITHIN_AGENT_CRASH_AT", "backup");
    assert!(!k.once().success(), "{}", k.log());
    assert!(k.log().contains("killed at backup"), "{}", k.log());
    assert_eq!(a.current().as_deref(), Some(v2.as_str()));
    assert_eq!(std::fs::read(dir.join("manifest.json")).unwrap(), before);
    assert_eq!(held(&dir), vec![v1.clone()]);
    // what the previous manifest names restores, as it was
    let fresh = s.path("rescue-state");
    let out = std::process::Command::new(crate::common::BIN)
        .arg("agent")
        .arg("--state")
        .arg(&fresh)
        .arg("--trusted-root")
        .arg(s.root_json())
        .args(["restore", "--from", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_deployed(&src1, &fresh.join("deployments").join(&v1));
    // the next run finishes the backup, copying only what the killed one did not
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(held(&dir), vec![v2.clone(), v1.clone()], "{}", a.log());
    assert_eq!(copied(&a.log()).last(), Some(&(2, 0)), "{}", a.log());

    // v3: the machine prunes v1's deployment, and the backup drops v1 with it
    let src3 = s.path("img3");
    image(&src3, 3, 3);
    let v3 = s.release(&src3, "lab/stable");
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(held(&dir), vec![v3.clone(), v2.clone()], "{}", a.log());
    assert!(a.log().contains("1 no longer kept removed"), "{}", a.log());
    assert!(!dir.join("trust").join(&v1).exists());
    let repo = Repo::open(&dir.join("repo"), Access::Read).unwrap();
    let id: CommitId = v1.parse().unwrap();
    assert!(
        !repo.objects.contains(ObjKind::Commit, id.as_bytes()),
        "v1's objects were collected"
    );
}
