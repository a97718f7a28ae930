//! Client changes baked into layers, on real server and agent processes: `agent capture` and
//! the capture job send the /etc overlay's upper directory (whiteouts and opaque directories
//! kept) and chosen paths; `overlay list|show|bake` turn a capture into a layer channel after
//! showing its diff; `serve --auto-bake` does it by itself; bad input is refused with the
//! reason and changes nothing.

use std::path::PathBuf;

use serde_json::Value;

use crate::common::{q, sh};
use crate::fleet::{Agent, Server, image, wait_until, wait_updated};

/// The machine's /etc upper directory: a changed file, a new one in a new directory, a
/// whiteout (`motd` removed), an opaque `cron.d` holding one file; and below its sysroot,
/// `/var/lib/foo` with a file.
fn machine_files(s: &Server, name: &str) -> (PathBuf, PathBuf) {
    let upper = s.path(&format!("{name}/upper"));
    let root = s.path(&format!("{name}/root"));
    sh(&format!(
        "set -e; mkdir -p {u}/ssh {u}/cron.d {r}/var/lib/foo
         echo {name} > {u}/hostname
         echo 'PermitRootLogin no' > {u}/ssh/sshd_config
         mknod {u}/motd c 0 0
         setfattr -n trusted.overlay.opaque -v y {u}/cron.d
         echo '0 3 * * * root true' > {u}/cron.d/backup
         echo 42 > {r}/var/lib/foo/state",
        u = q(&upper),
        r = q(&root)
    ));
    (upper, root)
}

/// A machine whose agent runs as a daemon, capturing `upper` and `/var/lib/foo` below `root`.
fn machine(s: &Server, token: &str, name: &str) -> (Agent, PathBuf) {
    let (upper, root) = machine_files(s, name);
    let mut a = Agent::new(s, name, token);
    std::fs::create_dir_all(&a.state).unwrap();
    std::fs::write(
        a.state.join("agent.toml"),
        format!(
            "job_progress_secs = 1\netc_upper = \"{}\"\nsysroot = \"{}\"\n\
             capture_paths = [\"/var/lib/foo\"]\n",
            upper.display(),
            root.display()
        ),
    )
    .unwrap();
    a.spawn();
    wait_until(&format!("{name} checked in"), 60, || {
        s.get(&format!("/api/v1/admin/machines/{name}")).1["last_seen"].is_i64()
    });
    (a, upper)
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn captures(s: &Server) -> Vec<Value> {
    json(&s.ok(&["overlay", "list", "--json"]))
        .as_array()
        .unwrap()
        .clone()
}

fn fails(s: &Server, args: &[&str]) -> String {
    let out = s.cli(args);
    assert!(!out.status.success(), "semithin {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every path of a checked-out layer with its kind (`c 0 0` for a whiteout) and, for
/// directories, the opaque xattr.
fn layer(s: &Server, channel: &str) -> Vec<String> {
    let out = s.path(&format!("checkout-{}", channel.replace('/', "-")));
    sh(&format!("rm -rf {}", q(&out)));
    s.ok(&["checkout", channel, out.to_str().unwrap()]);
    let mut v: Vec<String> = sh(&format!(
        "cd {} && find . -mindepth 1 -printf '%P %y\\n'",
        q(&out)
    ))
    .lines()
    .map(|l| {
        let (p, kind) = l.split_once(' ').unwrap();
        let full = out.join(p);
        match kind {
            "c" => {
                let st = sh(&format!("stat -c '%t %T' {}", q(&full)));
                format!("{p} c {}", st.trim())
            }
            "d" => {
                let x = sh(&format!(
                    "getfattr --absolute-names -n trusted.overlay.opaque --only-values {} 2>/dev/null || true",
                    q(&full)
                ));
                if x == "y" {
                    format!("{p} opaque")
                } else {
                    format!("{p} d")
                }
            }
            k => format!("{p} {k}"),
        }
    })
    .collect();
    v.sort();
    v
}

fn channel_moves(s: &Server, channel: &str) -> usize {
    let out = s.cli(&["channel", "log", channel]);
    String::from_utf8_lossy(&out.stdout).lines().count()
}

const CAPTURED: [&str; 11] = [
    "etc d",
    "etc/cron.d opaque",
    "etc/cron.d/backup f",
    "etc/hostname f",
    "etc/motd c 0 0",
    "etc/ssh d",
    "etc/ssh/sshd_config f",
    "var d",
    "var/lib d",
    "var/lib/foo d",
    "var/lib/foo/state f",
];

#[test]
fn a_capture_is_listed_shown_and_baked_into_a_layer_with_its_whiteouts() {
    let s = Server::start();
    let token = s.enroll_token(true);
    let (a, upper) = machine(&s, &token, "lab-01");
    // it runs a release with an /etc/hostname of its own
    let img = s.path("img");
    image(&img, 1, 2);
    std::fs::write(img.join("etc/hostname"), "base\n").unwrap();
    let release = s.release(&img, "lab/stable");
    s.ok(&["fleet", "assign", "lab-01", "lab/stable"]);
    wait_updated(&s, "lab-01", &release, 60);

    // the machine sends its layer
    let out = a.run(&["capture", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(sent["whiteouts"], 1, "{sent:#}");
    assert_eq!(sent["opaque_dirs"], 1, "{sent:#}");
    let id = sent["capture"]["id"].as_u64().unwrap().to_string();
    let list = captures(&s);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["machine"], "lab-01");

    // what it holds
    let shown = json(&s.ok(&["overlay", "show", "lab-01", "--json"]));
    let kinds: Vec<String> = shown["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["path"].as_str().unwrap(),
                e["type"].as_str().unwrap(),
                e["change"].as_str().unwrap_or("-")
            )
        })
        .collect();
    for want in [
        "etc/motd whiteout -",
        "etc/cron.d opaque -",
        "etc/hostname file changed",
        "etc/ssh/sshd_config file added",
        "var/lib/foo/state file added",
    ] {
        assert!(kinds.iter().any(|k| k == want), "{want} not in {kinds:?}");
    }
    let text = s.ok(&["overlay", "show", &id]);
    assert!(text.contains("whiteout etc/motd"), "{text}");
    let running = format!(
        "against the release it runs, {}",
        release.get(..12).unwrap()
    );
    assert!(text.contains(&running), "{text}");

    // a layer it will be baked into: motd (whited out), cron.d/old (hidden), keep (kept)
    let lower = s.path("lower");
    sh(&format!(
        "set -e; mkdir -p {l}/etc/cron.d; echo welcome > {l}/etc/motd; echo old > {l}/etc/cron.d/old; \
         echo keep > {l}/etc/keep",
        l = q(&lower)
    ));
    s.ok(&["commit", "--channel", "layers/lab", lower.to_str().unwrap()]);
    let lab_before = layer(&s, "layers/lab");

    // bad input: changes nothing
    let e = fails(&s, &["overlay", "bake", &id, "--into", "layers/lab"]);
    assert!(e.contains("not a terminal: pass --yes"), "{e}");
    let e = fails(
        &s,
        &["overlay", "bake", &id, "--into", "layers/lba", "--yes"],
    );
    assert!(
        e.contains("there is no layer channel \"layers/lba\""),
        "{e}"
    );
    assert!(e.contains("did you mean layers/lab?"), "{e}");
    let e = fails(
        &s,
        &["overlay", "bake", "999", "--into", "layers/lab", "--yes"],
    );
    assert!(e.contains("no capture \"999\""), "{e}");
    let e = fails(&s, &["overlay", "show", "nobody"]);
    assert!(e.contains("no machine \"nobody\""), "{e}");
    let e = fails(&s, &["overlay", "bake", &id, "--into", "Bad Name", "--yes"]);
    assert!(e.to_lowercase().contains("channel"), "{e}");
    assert_eq!(layer(&s, "layers/lab"), lab_before);
    assert_eq!(channel_moves(&s, "layers/lab"), 1);
    let channels = s.ok(&["channel", "list"]);
    assert!(!channels.contains("layers/lba"), "{channels}");

    // into a new layer: exactly what was captured, whiteouts and opaque marks kept
    let baked = json(&s.ok(&[
        "overlay",
        "bake",
        &id,
        "--into",
        "layers/lab-01",
        "--new-channel",
        "--yes",
        "--json",
    ]));
    assert!(baked["commit"].is_string(), "{baked:#}");
    let want: Vec<&str> = CAPTURED.to_vec();
    assert_eq!(layer(&s, "layers/lab-01"), want);

    // what it would change in layers/lab, then baked into it
    let shown = json(&s.ok(&["overlay", "show", &id, "--into", "layers/lab", "--json"]));
    let changes: Vec<String> = shown["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c["path"].as_str().unwrap(),
                c["change"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        changes.contains(&"etc/hostname added".to_owned()),
        "{changes:?}"
    );
    assert!(
        changes.contains(&"etc/motd type-changed".to_owned()),
        "{changes:?}"
    );
    assert!(
        changes.contains(&"etc/cron.d/old removed".to_owned()),
        "{changes:?}"
    );
    assert_eq!(
        layer(&s, "layers/lab"),
        lab_before,
        "show changed the layer"
    );
    let out = s.ok(&["overlay", "bake", "lab-01", "--into", "layers/lab", "--yes"]);
    assert!(out.contains("baked: layers/lab is now"), "{out}");
    let mut want: Vec<&str> = want;
    want.push("etc/keep f");
    want.sort();
    assert_eq!(layer(&s, "layers/lab"), want);
    assert_eq!(channel_moves(&s, "layers/lab"), 2);
    // the same capture again changes nothing
    let out = s.ok(&["overlay", "bake", &id, "--into", "layers/lab", "--yes"]);
    assert!(out.contains("nothing to bake"), "{out}");
    assert_eq!(channel_moves(&s, "layers/lab"), 2);

    // over its bound: refused on the machine, nothing sent
    let out = a.run(&["capture", "--max-bytes", "10"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("capture_max_bytes"), "{e}");
    assert_eq!(captures(&s).len(), 1);

    // the capture job: a change on the machine, captured at the admin's word
    std::fs::write(upper.join("hostname"), "lab-01-renamed\n").unwrap();
    let job = s.ok(&["job", "capture", "lab-01"]).trim().to_owned();
    let mut last = Value::Null;
    wait_until("the capture job done", 60, || {
        last = json(&s.ok(&["job", "status", &job, "--json"]));
        last["runs"][0]["state"] == "succeeded"
    });
    let output = last["runs"][0]["output"].as_str().unwrap();
    assert!(output.contains("sent: 11 entries"), "{output}");
    let list = captures(&s);
    assert_eq!(list.len(), 2, "{list:?}");
    // bake the newest: only the host name changes
    let baked = json(&s.ok(&[
        "overlay",
        "bake",
        "lab-01",
        "--into",
        "layers/lab",
        "--yes",
        "--json",
    ]));
    let changes = baked["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{baked:#}");
    assert_eq!(changes[0]["path"], "etc/hostname");
    drop(a);
}

#[test]
fn auto_bake_makes_a_layer_per_machine_from_each_capture() {
    let s = Server::start_args(&["--auto-bake"]);
    let token = s.enroll_token(true);
    let (a, upper) = machine(&s, &token, "lab-02");
    let out = a.run(&["capture"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let baked = |n: usize| {
        let list = captures(&s);
        list.len() == n && list[0]["baked"]["channel"] == "machines/lab-02"
    };
    wait_until("the capture baked", 60, || baked(1));
    let want: Vec<&str> = CAPTURED.to_vec();
    assert_eq!(layer(&s, "machines/lab-02"), want);

    // a change reaches the layer as a new version composed over the last
    std::fs::remove_file(upper.join("ssh/sshd_config")).unwrap();
    sh(&format!(
        "mknod {} c 0 0",
        q(&upper.join("ssh/sshd_config"))
    ));
    let out = a.run(&["capture"]);
    assert!(out.status.success());
    wait_until("the second capture baked", 60, || baked(2));
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    for w in want.iter_mut() {
        if w == "etc/ssh/sshd_config f" {
            *w = "etc/ssh/sshd_config c 0 0".into();
        }
    }
    assert_eq!(layer(&s, "machines/lab-02"), want);
    assert_eq!(channel_moves(&s, "machines/lab-02"), 2);
    drop(a);
}
