//! A tampered machine: `agent verify` against the whole release (what was added, every mode,
//! owner and link target, directories), the `/etc` overlay by policy, damaged objects fetched
//! again, and what the admin sees (`tampered` with the paths in `fleet list` and `fleet show`,
//! then healthy after the repair). Real server and agent processes on loopback.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::common::{q, sh};
use crate::fleet::{Agent, Server, assert_deployed, image, wait_updated};

/// A machine `name` running v1 of an image with `/etc/cron.d`: (agent, image, release).
fn machine(s: &Server, name: &str) -> (Agent, PathBuf, String) {
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 3);
    sh(&format!(
        "set -e; cd {}; mkdir -p etc/cron.d; chmod 0755 etc/cron.d usr/lib/x; \
         printf '0 3 * * * root /usr/bin/tool\\n' > etc/cron.d/backup; \
         printf 'lab\\n' > etc/hostname",
        q(&src)
    ));
    let v1 = s.release(&src, "lab/stable");
    let a = Agent::new(s, name, &t);
    assert!(a.once().success(), "{}", a.log());
    s.ok(&["fleet", "assign", name, "lab/stable"]);
    assert!(a.once().success(), "{}", a.log());
    wait_updated(s, name, &v1, 10);
    (a, src, v1)
}

/// `agent --state STATE ARGS verify --json`: (success, the report).
fn verify(a: &Agent, args: &[&str]) -> (bool, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = a.run(&all);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "verify {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

fn lines(v: &Value) -> String {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

fn paths(v: &Value) -> Vec<String> {
    let mut p: Vec<String> = v["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect();
    p.sort();
    p
}

#[test]
fn an_added_setuid_file_a_cron_entry_a_directory_mode_and_a_hijacked_link_are_reported_then_put_back()
 {
    let s = Server::start();
    let (a, src, v1) = machine(&s, "m1");
    let dep = a.deployment();
    let (ok, r) = verify(&a, &["verify", "--no-fix"]);
    assert!(ok, "{r}");
    assert_eq!(r["problems"], json!([]));

    sh(&format!(
        "set -e; cd {}; cp usr/bin/tool usr/bin/rootshell; chmod 4755 usr/bin/rootshell; \
         printf '* * * * * root /usr/bin/rootshell\\n' > etc/cron.d/evil; \
         chmod 0777 usr/lib/x; ln -sfn /tmp/evil usr/bin/alias",
        q(&dep)
    ));
    let (ok, r) = verify(&a, &["verify", "--no-fix"]);
    assert!(!ok, "{r}");
    let problems = lines(&r["problems"]);
    for want in [
        "/usr/bin/rootshell: not in the release: a setuid file, mode 4755",
        "/etc/cron.d/evil: not in the release: a file",
        "/usr/lib/x: mode 0777, the release has 0755",
        "/usr/bin/alias: points at /tmp/evil, the release's link points at tool",
    ] {
        assert!(problems.contains(want), "{want:?} not in\n{problems}");
    }
    assert_eq!(r["problems"].as_array().unwrap().len(), 4, "{problems}");
    assert!(
        dep.join("usr/bin/rootshell").exists(),
        "--no-fix changes nothing"
    );

    // The server knows, and the admin sees it.
    let m = s.machine("m1");
    let i = &m["report"]["integrity"];
    assert_eq!(i["release"], json!(v1), "{m}");
    assert_eq!(i["tampered"]["count"], json!(4), "{m}");
    assert_eq!(
        paths(&i["tampered"]),
        [
            "/etc/cron.d/evil",
            "/usr/bin/alias",
            "/usr/bin/rootshell",
            "/usr/lib/x"
        ]
    );
    let list = s.ok(&["fleet", "list"]);
    let row = list.lines().find(|l| l.starts_with("m1 ")).unwrap();
    assert!(row.contains("tampered"), "{list}");
    assert!(
        list.contains(&format!(
            "m1: tampered: 4 path(s) differ from release {}: /etc/cron.d/evil, \
             /usr/bin/rootshell, /usr/bin/alias and 1 more",
            v1.get(..12).unwrap()
        )),
        "{list}"
    );
    let show = s.ok(&["fleet", "show", "m1"]);
    assert!(show.contains("TAMPERED, 4 path(s)"), "{show}");
    assert!(show.contains("tampered   /usr/bin/rootshell"), "{show}");

    // Repaired: the deployment is the release again, what was added is kept aside.
    let (ok, r) = verify(&a, &["verify"]);
    assert!(ok, "{r}");
    assert_eq!(r["repaired"], json!(4), "{r}");
    assert_deployed(&src, &dep);
    assert_eq!(
        std::fs::read_link(dep.join("usr/bin/alias")).unwrap(),
        Path::new("tool")
    );
    let qdir = PathBuf::from(r["quarantine"].as_str().unwrap());
    assert!(qdir.starts_with(&a.state), "{}", qdir.display());
    assert_eq!(
        std::fs::metadata(&qdir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(qdir.join("deployment/usr/bin/rootshell").is_file());
    assert!(qdir.join("deployment/etc/cron.d/evil").is_file());
    let (ok, r) = verify(&a, &["verify", "--no-fix"]);
    assert!(ok, "{r}");
    assert_eq!(r["problems"], json!([]));

    let m = s.machine("m1");
    assert_eq!(
        m["report"]["integrity"]["tampered"]["count"],
        json!(0),
        "{m}"
    );
    assert_eq!(m["updated"], json!(true), "{m}");
    let list = s.ok(&["fleet", "list"]);
    let row = list.lines().find(|l| l.starts_with("m1 ")).unwrap();
    assert!(
        row.contains("updated") && !list.contains("tampered"),
        "{list}"
    );
    let kinds: Vec<&str> = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"tampered") && kinds.contains(&"repaired"),
        "{kinds:?}"
    );
}

/// Flips a byte in every tree object of a repository.
fn damage_trees(repo: &Path) {
    use semithin_store::pack::ObjKind;
    let r = semithin_store::Repo::open(repo, semithin_store::Access::Read).unwrap();
    let mut by_pack = Vec::new();
    for (name, entries) in r.objects.packs().unwrap() {
        let offsets: Vec<u64> = entries
            .iter()
            .filter(|e| e.kind() == ObjKind::Tree)
            .map(|e| e.offset + e.stored_len as u64 / 2)
            .collect();
        by_pack.push((repo.join(format!("objects/packs/{name}.pack")), offsets));
    }
    drop(r);
    for (p, offsets) in by_pack {
        let mut b = std::fs::read(&p).unwrap();
        for o in offsets {
            b[o as usize] ^= 0x55;
        }
        std::fs::write(&p, b).unwrap();
    }
}

#[test]
fn a_damaged_tree_object_is_fetched_again_and_the_repair_goes_on() {
    let s = Server::start();
    let (a, src, _) = machine(&s, "m1");
    let dep = a.deployment();
    std::fs::write(dep.join("usr/lib/x/f1"), "changed\n").unwrap();
    std::fs::write(dep.join("usr/lib/x/y/added"), "added\n").unwrap();
    damage_trees(&a.state.join("repo"));
    let (ok, r) = verify(&a, &["verify"]);
    assert!(ok, "{r}");
    assert!(r["refetched"]["trees"].as_u64().unwrap() >= 4, "{r}");
    assert_eq!(r["repaired"], json!(2), "{r}");
    assert_deployed(&src, &dep);
}

#[test]
fn etc_overlay_drift_is_reported_or_restored_by_policy() {
    let s = Server::start();
    let (a, _, _) = machine(&s, "m1");
    // The overlay's upper directory as the booted system leaves it (docs/BOOT.md): a cron
    // entry added, the hostname changed, the release's backup job deleted (a whiteout), an
    // untouched copy of os-release (no change).
    let upper = a.state.join("overlay/etc/upper");
    let dep = a.deployment();
    sh(&format!(
        "set -e; mkdir -p {u}/cron.d; cd {u}; \
         printf '* * * * * root sh -c id\\n' > cron.d/evil; \
         printf 'pwned\\n' > hostname; mknod cron.d/backup c 0 0; \
         cp -a {d}/etc/os-release os-release",
        u = q(&upper),
        d = q(&dep)
    ));

    // report (the default): listed, nothing changed, not tampered
    let (ok, r) = verify(&a, &["verify"]);
    assert!(ok, "{r}");
    let drift = lines(&r["etc_drift"]);
    assert!(drift.contains("/etc/cron.d/evil: added locally"), "{drift}");
    assert!(drift.contains("/etc/hostname: changed locally"), "{drift}");
    assert!(
        drift.contains("/etc/cron.d/backup: deleted locally"),
        "{drift}"
    );
    assert_eq!(r["etc_drift"].as_array().unwrap().len(), 3, "{drift}");
    assert!(upper.join("cron.d/evil").exists());
    let m = s.machine("m1");
    let i = &m["report"]["integrity"];
    assert_eq!(
        paths(&i["etc_drift"]),
        ["/etc/cron.d/backup", "/etc/cron.d/evil", "/etc/hostname"],
        "{m}"
    );
    assert_eq!(i["tampered"]["count"], json!(0), "{m}");
    assert!(!s.ok(&["fleet", "list"]).contains("tampered"));

    // restore cron.d (flags), not fixing: the machine is tampered
    let policy = ["--etc-policy", "restore", "--etc-restore", "cron.d/*"];
    let (ok, r) = verify(&a, &[&policy[..], &["verify", "--no-fix"]].concat());
    assert!(!ok, "{r}");
    assert_eq!(
        paths(&r["integrity"]["tampered"]),
        ["/etc/cron.d/backup", "/etc/cron.d/evil"]
    );
    assert_eq!(
        lines(&r["etc_drift"]),
        "/etc/hostname: changed locally: has 6 bytes, the release has 4"
    );
    let list = s.ok(&["fleet", "list"]);
    assert!(
        list.contains("m1: tampered: 2 path(s) differ from release ")
            && list.contains(": /etc/cron.d/backup, /etc/cron.d/evil"),
        "{list}"
    );

    // the same policy in agent.toml, fixing: the upper copies go, the rest stays
    std::fs::write(
        a.state.join("agent.toml"),
        "etc_policy = \"restore\"\netc_restore = [\"/etc/cron.d\"]\n",
    )
    .unwrap();
    let (ok, r) = verify(&a, &["verify"]);
    assert!(ok, "{r}");
    assert_eq!(r["repaired"], json!(2), "{r}");
    assert!(!upper.join("cron.d/evil").exists());
    assert!(std::fs::symlink_metadata(upper.join("cron.d/backup")).is_err());
    assert!(upper.join("hostname").exists(), "not covered: left alone");
    let qdir = PathBuf::from(r["quarantine"].as_str().unwrap());
    assert!(qdir.join("etc-overlay/cron.d/evil").is_file());
    let m = s.machine("m1");
    assert_eq!(m["report"]["integrity"]["tampered"]["count"], json!(0));
    assert_eq!(m["report"]["integrity"]["repaired"]["count"], json!(2));
    assert_eq!(
        paths(&m["report"]["integrity"]["etc_drift"]),
        ["/etc/hostname"]
    );
    assert!(!s.ok(&["fleet", "list"]).contains("tampered"));

    // a restore policy without paths is refused with the reason
    std::fs::write(a.state.join("agent.toml"), "etc_policy = \"restore\"\n").unwrap();
    let out = a.run(&["verify"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs the paths to restore in etc_restore"),
        "{err}"
    );
}

#[test]
fn a_run_of_the_timer_verifies_when_due_repairs_and_reports() {
    let s = Server::start();
    let (a, src, _) = machine(&s, "m1");
    let dep = a.deployment();
    sh(&format!(
        "set -e; cd {}; cp usr/bin/tool usr/bin/rootshell; chmod 4755 usr/bin/rootshell",
        q(&dep)
    ));
    // never verified yet: due at once
    let out = a.run(&[
        "--verify-interval",
        "3600",
        "--inventory-interval",
        "0",
        "--once",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("verify: 1 path(s) differed from the release, 1 put back"),
        "{err}"
    );
    assert_deployed(&src, &dep);
    let m = s.machine("m1");
    assert_eq!(
        paths(&m["report"]["integrity"]["repaired"]),
        ["/usr/bin/rootshell"],
        "{m}"
    );
    // verified since the last boot and within the interval: not due
    std::fs::write(dep.join("usr/bin/later"), "x").unwrap();
    let out = a.run(&[
        "--verify-interval",
        "3600",
        "--inventory-interval",
        "0",
        "--once",
    ]);
    assert!(out.status.success());
    assert!(dep.join("usr/bin/later").exists());
}
