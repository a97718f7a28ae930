//! Offline and air-gapped sites: `bundle create` writes what machines need to removable media,
//! `agent import` deploys it on each machine inside a network namespace of its own (it provably
//! cannot reach the server), and `bundle sync` stores the reports they signed; bad bundles and
//! results are refused by name and change nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use semithin_store::object::EntryKind;
use semithin_store::{Access, CommitId, Repo};
use serde_json::Value;

use crate::common::{BIN, q, sh};
use crate::fleet::{Agent, Server, assert_deployed, image};

/// A fleet of m1 and m2 on v1 of lab/stable (and m3 on no channel), with v2 published.
struct Site {
    a1: Agent,
    a2: Agent,
    a3: Agent,
    s: Server,
    src2: PathBuf,
    v1: String,
    v2: String,
}

fn site() -> Site {
    let s = Server::start();
    let t = s.enroll_token(true);
    let (src1, src2) = (s.path("img1"), s.path("img2"));
    image(&src1, 1, 5);
    sh(&format!(
        "cp -a {} {} && echo VERSION_ID=2 > {}/etc/os-release && echo new > {}/usr/bin/added",
        q(&src1),
        q(&src2),
        q(&src2),
        q(&src2)
    ));
    let v1 = s.release(&src1, "lab/stable");
    let a1 = Agent::new(&s, "m1", &t);
    let a2 = Agent::new(&s, "m2", &t);
    let a3 = Agent::new(&s, "m3", &t);
    for a in [&a1, &a2, &a3] {
        assert!(a.once().success(), "{}", a.log());
    }
    for m in ["m1", "m2"] {
        s.ok(&["fleet", "assign", m, "lab/stable"]);
    }
    for a in [&a1, &a2] {
        assert!(a.once().success(), "{}", a.log());
        assert_eq!(a.current().as_deref(), Some(v1.as_str()), "{}", a.log());
    }
    let v2 = s.release(&src2, "lab/stable");
    Site {
        a1,
        a2,
        a3,
        s,
        src2,
        v1,
        v2,
    }
}

/// `agent import DIR --json` in a network namespace of its own (`unshare --net`: only a loopback
/// that is down), after checking that the server cannot be reached from there.
fn import_offline(s: &Server, a: &Agent, dir: &Path) -> Output {
    import_at(s, a, dir, "+0")
}

/// [`import_offline`] with the agent's clock off by `offset` (`faketime -f`).
fn import_at(s: &Server, a: &Agent, dir: &Path, offset: &str) -> Output {
    let port = s.port.to_string();
    Command::new("unshare")
        .args([
            "--net",
            "bash",
            "-c",
            r#"if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
                   echo "the server is reachable from the namespace" >&2; exit 99
               fi
               exec faketime -f "$5" "$2" agent --state "$3" import "$4" --json"#,
            "import",
            &port,
            BIN,
        ])
        .arg(&a.state)
        .arg(dir)
        .arg(offset)
        .output()
        .unwrap()
}

fn ok_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn refused(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "accepted: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn create(s: &Server, out: &Path) -> Value {
    ok_json(&create_with(s, out, &["--json"]))
}

/// `bundle create lab/stable --for '*' --out OUT` with more arguments.
fn create_with(s: &Server, out: &Path, more: &[&str]) -> Output {
    let mut args = vec![
        "bundle",
        "create",
        "lab/stable",
        "--for",
        "*",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(more);
    s.cli(&args)
}

fn machine_id(a: &Agent) -> String {
    read_json(&a.state.join("state.json"))["machine_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_bundle_brings_offline_machines_to_the_release_and_their_reports_back() {
    let site = site();
    let s = &site.s;
    // the server can be reached from here: the namespace's probe is a real one
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", s.port)).is_ok(),
        "the server listens"
    );
    let dir = s.path("usb");
    let info = create(s, &dir);
    assert_eq!(info["release"], Value::from(site.v2.clone()), "{info}");
    let names: Vec<&str> = info["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{info}");
    assert!(names.contains(&"m1") && names.contains(&"m2"), "{info}");
    for m in info["machines"].as_array().unwrap() {
        assert_eq!(m["current"], Value::from(site.v1.clone()), "{info}");
    }
    let skipped = &info["skipped"][0];
    assert_eq!(skipped["name"], "m3", "{info}");
    assert!(
        skipped["reason"].as_str().unwrap().contains("no channel"),
        "{info}"
    );
    assert!(
        info["expires"].as_i64().unwrap() > info["made_at"].as_i64().unwrap(),
        "{info}"
    );
    // the layout: the backup disk's, plus the delta pack from v1 and an empty results/
    let pack = dir
        .join("deltas")
        .join(format!("{}-{}.pack", site.v1, site.v2));
    assert!(pack.is_file(), "{info}");
    for p in [
        "manifest.json",
        "bundle.json",
        "repo/config",
        "trust/roots/1.root.json",
    ] {
        assert!(dir.join(p).exists(), "{p}");
    }
    let rel = dir.join("trust").join(&site.v2);
    for p in ["timestamp.json", "snapshot.json", "targets.json"] {
        assert!(rel.join(p).is_file(), "{p}");
    }
    assert_eq!(std::fs::read_dir(dir.join("results")).unwrap().count(), 0);
    assert!(!dir.join(".partial").exists());
    // the text output says until when it can be imported
    let text = s.ok(&[
        "bundle",
        "create",
        "lab/stable",
        "--for",
        "m1",
        "--out",
        s.path("usb-text").to_str().unwrap(),
    ]);
    assert!(text.contains("expires at"), "{text}");
    // an existing bundle is not overwritten
    let again = s.cli(&[
        "bundle",
        "create",
        "lab/stable",
        "--for",
        "*",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(refused(&again).contains("is not empty"));

    // m1 through the delta pack, m2 (the pack gone) from the bundle's repository
    let r1 = ok_json(&import_offline(s, &site.a1, &dir));
    assert_eq!(r1["delta_applied"], Value::Bool(true), "{r1}");
    assert_eq!(r1["switched"], Value::Bool(true), "{r1}");
    assert_eq!(site.a1.current().as_deref(), Some(site.v2.as_str()));
    assert_deployed(&site.src2, &site.a1.deployment());
    sh(&format!("mv {} {}", q(&pack), q(&s.path("pack-aside"))));
    let r2 = ok_json(&import_offline(s, &site.a2, &dir));
    assert_eq!(r2["delta_applied"], Value::Bool(false), "{r2}");
    assert!(r2["objects_copied"].as_u64().unwrap() > 0, "{r2}");
    assert_eq!(site.a2.current().as_deref(), Some(site.v2.as_str()));
    assert_deployed(&site.src2, &site.a2.deployment());
    eprintln!("bundle: {info}\nimport through the delta pack: {r1}\nwithout: {r2}");
    // the delta path read fewer objects from the bundle's repository
    assert!(
        r1["objects_copied"].as_u64().unwrap() < r2["objects_copied"].as_u64().unwrap(),
        "{r1} {r2}"
    );

    // the server still thinks both run v1
    for m in ["m1", "m2"] {
        assert_eq!(
            s.machine(m)["report"]["current"],
            Value::from(site.v1.clone())
        );
    }
    let results: Vec<(String, Value)> = [&site.a1, &site.a2]
        .iter()
        .map(|a| {
            let id = machine_id(a);
            let f = read_json(&dir.join("results").join(format!("{id}.json")));
            (id, f)
        })
        .collect();
    let out = s.cli(&["bundle", "sync", dir.to_str().unwrap(), "--json"]);
    let answer = ok_json(&out);
    assert_eq!(answer["stored"].as_array().unwrap().len(), 2, "{answer}");
    assert_eq!(answer["refused"].as_array().unwrap().len(), 0, "{answer}");
    for (id, f) in &results {
        let at: i64 = f["headers"]["semithin-date"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let m = s
            .machines()
            .into_iter()
            .find(|m| m["id"] == id.as_str())
            .unwrap();
        assert_eq!(m["report"]["current"], Value::from(site.v2.clone()), "{m}");
        assert_eq!(m["updated"], Value::Bool(true), "{m}");
        assert_eq!(m["last_seen"], Value::from(at), "{m}");
    }
    let list = s.ok(&["fleet", "list", "--json"]);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(
        list.as_array()
            .unwrap()
            .iter()
            .filter(|m| m["report"]["current"] == site.v2.as_str())
            .count(),
        2,
        "{list}"
    );

    // the same results again: replays, refused by name
    let out = s.cli(&["bundle", "sync", dir.to_str().unwrap(), "--json"]);
    assert!(!out.status.success());
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["stored"].as_array().unwrap().len(), 0, "{answer}");
    let refused_ = answer["refused"].as_array().unwrap();
    assert_eq!(refused_.len(), 2, "{answer}");
    for r in refused_ {
        assert!(
            r["reason"]
                .as_str()
                .unwrap()
                .contains("older than what the server has"),
            "{answer}"
        );
    }
    // the route is in the OpenAPI description
    let (st, doc) = s.get("/api/v1/openapi.json");
    assert_eq!(st, 200);
    assert!(
        doc["paths"]["/api/v1/admin/offline-reports"]["post"].is_object(),
        "{}",
        doc["paths"]
    );
    drop(site.a3);
}

/// What a refused import must leave as it was: the state, the deployments, the trusted
/// metadata (verified objects it read may stay in the store, as an interrupted fetch keeps them).
fn snapshot(state: &Path) -> String {
    sh(&format!(
        "cd {} && cat state.json && (readlink current || echo no current) && \
         (ls -a deployments || echo no deployments) && ls -a trust && \
         cat trust/*.json trust/semithin-state",
        q(state)
    ))
}

fn import_refused(s: &Server, a: &Agent, dir: &Path, offset: &str, expect: &str) {
    let before = snapshot(&a.state);
    let out = import_at(s, a, dir, offset);
    let err = refused(&out);
    eprintln!("refused as: {err}");
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    assert_eq!(
        snapshot(&a.state),
        before,
        "a refused import changed: {err}"
    );
    assert!(
        !dir.join("results").read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(&machine_id(a))),
        "a refused import left a result"
    );
}

#[test]
fn bad_bundles_and_results_are_refused_by_name_and_change_nothing() {
    let site = site();
    let s = &site.s;
    let dir = s.path("usb-v2");
    let info = create(s, &dir);
    let copy = |name: &str| {
        let d = s.path(name);
        sh(&format!("cp -a {} {}", q(&dir), q(&d)));
        d
    };

    // a flipped byte in an object only v2 has (no delta pack to rebuild it)
    let d = copy("damaged");
    sh(&format!("rm -r {}/deltas/*", q(&d)));
    let (pack, at, victim) = {
        let repo = Repo::open(&d.join("repo"), Access::Read).unwrap();
        let id: CommitId = site.v2.parse().unwrap();
        let tree = repo.objects.get_commit(&id).unwrap().tree;
        let bin = repo
            .objects
            .get_tree(&tree)
            .unwrap()
            .entries
            .into_iter()
            .find(|e| e.name == b"usr")
            .unwrap();
        let EntryKind::Dir(usr) = bin.kind else {
            panic!("usr is a directory")
        };
        let bin = repo
            .objects
            .get_tree(&usr)
            .unwrap()
            .entries
            .into_iter()
            .find(|e| e.name == b"bin")
            .unwrap();
        let EntryKind::Dir(bin) = bin.kind else {
            panic!("usr/bin is a directory")
        };
        let added = repo
            .objects
            .get_tree(&bin)
            .unwrap()
            .entries
            .into_iter()
            .find(|e| e.name == b"added")
            .unwrap();
        let EntryKind::File(f) = added.kind else {
            panic!("added is a file")
        };
        let victim = *f.chunks[0].id.as_bytes();
        repo.objects
            .packs()
            .unwrap()
            .into_iter()
            .find_map(|(name, entries)| {
                let e = entries.into_iter().find(|e| e.id == victim)?;
                Some((
                    repo.objects.packs_dir().join(format!("{name}.pack")),
                    (e.offset + e.stored_len as u64 / 2) as usize,
                    victim,
                ))
            })
            .unwrap()
    };
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(&pack, bytes).unwrap();
    import_refused(s, &site.a1, &d, "+0", &hex::encode(victim));

    // signed metadata changed after signing
    let d = copy("altered");
    let targets = d.join(format!("trust/{}/targets.json", site.v2));
    let text = std::fs::read_to_string(&targets).unwrap();
    assert!(text.contains(&site.v2));
    std::fs::write(&targets, text.replace(&site.v2, &site.v1)).unwrap();
    import_refused(
        s,
        &site.a1,
        &d,
        "+0",
        "does not verify against the metadata this machine trusts",
    );

    // a machine the signed assignments give no channel (m3) refuses the channel's bundle
    import_refused(
        s,
        &site.a3,
        &dir,
        "+0",
        "its signed assignment for this machine says none",
    );

    // expired: the machine's clock is an hour past the timestamp's expiry (bundle.json's)
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let past = info["expires"].as_i64().unwrap() - now + 3600;
    import_refused(s, &site.a1, &dir, &format!("+{past}"), "timestamp: expired");

    // v3 is published and bundled; imported, then the older bundle is a rollback
    let src3 = s.path("img3");
    sh(&format!(
        "cp -a {} {} && echo VERSION_ID=3 > {}/etc/os-release",
        q(&site.src2),
        q(&src3),
        q(&src3)
    ));
    let v3 = s.release(&src3, "lab/stable");
    let dir3 = s.path("usb-v3");
    create(s, &dir3);
    for a in [&site.a1, &site.a2] {
        ok_json(&import_offline(s, a, &dir3));
        assert_eq!(a.current().as_deref(), Some(v3.as_str()));
    }
    import_refused(s, &site.a1, &dir, "+0", "older than the trusted version");

    // a result changed after it was signed: refused by name, the other stored
    let id1 = machine_id(&site.a1);
    let id2 = machine_id(&site.a2);
    let f = dir3.join("results").join(format!("{id1}.json"));
    let mut v = read_json(&f);
    let body = v["body"].as_str().unwrap().replace(&v3, &site.v1);
    assert_ne!(body, v["body"].as_str().unwrap());
    v["body"] = Value::from(body);
    std::fs::write(&f, v.to_string()).unwrap();
    let out = s.cli(&["bundle", "sync", dir3.to_str().unwrap(), "--json"]);
    assert!(!out.status.success());
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        answer["stored"][0]["machine"],
        Value::from(id2.clone()),
        "{answer}"
    );
    assert_eq!(
        answer["refused"][0]["machine"],
        Value::from(id1.clone()),
        "{answer}"
    );
    assert!(
        answer["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("signature does not verify"),
        "{answer}"
    );
    assert_eq!(answer["stored"].as_array().unwrap().len(), 1, "{answer}");
    assert_eq!(
        s.machine("m1")["report"]["current"],
        Value::from(site.v1.clone()),
        "the tampered report changed nothing"
    );
    assert_eq!(
        s.machine("m2")["report"]["current"],
        Value::from(v3.clone())
    );
    // and the text output names it
    let out = s.cli(&["bundle", "sync", dir3.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("refused: {id1}")), "{said}");

    // a release whose health check fails on the machine: rolled back, and the report says so
    let src4 = s.path("img4");
    sh(&format!(
        "cp -a {} {} && echo yes > {}/etc/broken",
        q(&src3),
        q(&src4),
        q(&src4)
    ));
    let v4 = s.release(&src4, "lab/stable");
    let dir4 = s.path("usb-v4");
    create(s, &dir4);
    std::fs::write(
        site.a2.state.join("agent.toml"),
        "health_checks = [\"test ! -e \\\"$SEMITHIN_DEPLOYMENT/etc/broken\\\" || { echo broken; exit 3; }\"]\n",
    )
    .unwrap();
    let out = import_offline(s, &site.a2, &dir4);
    let err = refused(&out);
    assert!(
        err.contains("rolled back") && err.contains("the report is in"),
        "{err}"
    );
    assert_eq!(site.a2.current().as_deref(), Some(v3.as_str()));
    let answer = ok_json(&s.cli(&["bundle", "sync", dir4.to_str().unwrap(), "--json"]));
    assert_eq!(answer["stored"][0]["machine"], Value::from(id2), "{answer}");
    let m2 = s.machine("m2");
    assert_eq!(m2["report"]["failed_release"], Value::from(v4), "{m2}");
    assert_eq!(m2["report"]["current"], Value::from(v3), "{m2}");
}

/// `bundle create --expires 30d`: the bundle's timestamp lasts 30 days (imported 20 days
/// later), while the repository goes on with a newer timestamp of the usual day, so a machine
/// online moves past the bundle's (it is then an older version to it). Bad or too long
/// durations are refused with nothing signed.
#[test]
fn a_bundle_made_to_last_is_imported_weeks_later_and_machines_online_move_past_it() {
    let site = site();
    let s = &site.s;
    let live = || read_json(&s.repo().join("trust/metadata/timestamp.json"))["signed"].clone();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let before = live();
    for (bad, why) in [
        ("30x", "is not a duration"),
        ("10m", "from 1h to 366d"),
        ("400d", "from 1h to 366d"),
        // targets lasts 90 days from the last publish
        ("200d", "the targets metadata expires at"),
    ] {
        let dir = s.path(&format!("bad-{bad}"));
        let err = refused(&create_with(s, &dir, &["--expires", bad]));
        assert!(err.contains(why), "--expires {bad}: {err}");
        assert!(!dir.join("bundle.json").exists());
    }
    assert_eq!(live(), before, "a refused bundle signed something");

    let dir = s.path("usb-30d");
    let info = ok_json(&create_with(s, &dir, &["--expires", "30d", "--json"]));
    let expires = info["expires"].as_i64().unwrap();
    assert!(
        (expires - (now() + 30 * 86400)).abs() < 3600,
        "the bundle expires at {expires}"
    );
    let bundled =
        read_json(&dir.join(format!("trust/{}/timestamp.json", site.v2)))["signed"].clone();
    let after = live();
    let v = |t: &Value| t["version"].as_u64().unwrap();
    assert_eq!(v(&bundled), v(&before) + 1);
    assert_eq!(
        v(&after),
        v(&bundled) + 1,
        "no newer timestamp for the machines online"
    );
    let live_expires = semithin_trust::clock::parse(after["expires"].as_str().unwrap()).unwrap();
    assert!(
        live_expires < now() + 2 * 86400,
        "the live timestamp lasts {live_expires}"
    );
    assert_eq!(
        after["meta"]["snapshot.json"], bundled["meta"]["snapshot.json"],
        "both name the same snapshot"
    );

    // m1, offline, imports it 20 days later: its clock says so, the bundle still verifies
    let r = ok_json(&import_at(s, &site.a1, &dir, "+20d"));
    eprintln!("{r}");
    assert_eq!(site.a1.current().as_deref(), Some(site.v2.as_str()));
    assert_deployed(&site.src2, &site.a1.deployment());
    // 31 days later it has expired
    import_refused(s, &site.a2, &dir, "+31d", "timestamp: expired");

    // m2 checks in online: it trusts the newer timestamp, and the bundle's is older to it
    assert!(site.a2.once().success(), "{}", site.a2.log());
    assert_eq!(site.a2.current().as_deref(), Some(site.v2.as_str()));
    import_refused(s, &site.a2, &dir, "+0", "older than the trusted version");
    drop(site.a3);
}
