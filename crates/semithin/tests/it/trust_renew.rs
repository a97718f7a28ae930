//! Fleets never stall on expired trust metadata: `semithin serve` signs a new snapshot and
//! timestamp before they expire (and at start when they already have), says what it cannot do,
//! and `semithin trust status` fails on anything expired.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{BIN, Env};
use crate::fleet::{Agent, Server, image, wait_until, wait_updated};

/// `semithin ARGS` as the server's admin, with the clock `faketime` sets (`-25 hours`).
fn cli_at(s: &Server, faketime: &str, args: &[&str]) -> Output {
    Command::new("faketime")
        .arg(faketime)
        .arg(BIN)
        .args(args)
        .env("SEMITHIN_SERVER", &s.url)
        .env("SEMITHIN_ADMIN_TOKEN", &s.token)
        .env("SEMITHIN_REPO", s.repo())
        .env("HOME", s.dir.path())
        .output()
        .unwrap()
}

/// The served timestamp: (version, expiry in Unix seconds).
fn timestamp(s: &Server) -> (u64, i64) {
    let t: Value = serde_json::from_slice(
        &std::fs::read(s.repo().join("trust/metadata/timestamp.json")).unwrap(),
    )
    .unwrap();
    let expires = t["signed"]["expires"].as_str().unwrap();
    (
        t["signed"]["version"].as_u64().unwrap(),
        semithin_trust::clock::parse(expires).unwrap(),
    )
}

fn now() -> i64 {
    semithin_trust::clock::now()
}

fn server_log(s: &Server) -> String {
    std::fs::read_to_string(s.path("server.log")).unwrap_or_default()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A timestamp that lives 12 s: the server, looking every second, signs a new one each time
/// less than half of that is left, so the one a publish made is replaced before it expires, and
/// a machine enrolled long after that expiry (with no publish since) still updates.
#[test]
fn the_server_renews_the_timestamp_before_it_expires_and_machines_keep_updating() {
    let s = Server::start_args(&["--trust-check-interval", "1"]);
    let config = s.repo().join("trust/config.toml");
    let c = std::fs::read_to_string(&config).unwrap();
    assert!(c.contains("timestamp = \"1d\""), "{c}");
    std::fs::write(
        &config,
        c.replace("timestamp = \"1d\"", "timestamp = \"12s\""),
    )
    .unwrap();
    let src = s.path("img");
    image(&src, 1, 5);
    let v1 = s.release(&src, "lab/stable");
    let (published, expires) = timestamp(&s);
    assert!(expires - now() <= 12);

    // renewed while the published one is still valid
    let start = Instant::now();
    let renewed = loop {
        let (v, e) = timestamp(&s);
        if v > published {
            assert!(
                now() < expires,
                "renewed only at {} after expiry {expires}",
                now()
            );
            break e;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "never renewed");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(renewed > expires);
    // the log line follows the files it speaks of
    wait_until("the renewal in the server's log", 10, || {
        server_log(&s).contains("trust metadata renewed")
    });

    // well after the published timestamp expired, with no publish since: a new machine
    // verifies and updates
    wait_until("the published timestamp long expired", 30, || {
        now() > expires + 8
    });
    let t = s.enroll_token(true);
    let mut a = Agent::new(&s, "m1", &t);
    a.spawn();
    wait_until("m1 enrolled", 30, || s.machines().len() == 1);
    s.ok(&["fleet", "assign", "m1", "lab/stable"]);
    wait_updated(&s, "m1", &v1, 60);
    assert!(timestamp(&s).0 >= published + 2, "renewed again meanwhile");
    // the admin sees the renewals
    let (code, h) = s.get("/api/v1/admin/trust");
    assert_eq!(code, 200, "{h}");
    assert_eq!(h["ok"], true, "{h}");
    assert!(h["renewed_at"].as_i64().unwrap() >= expires - 12, "{h}");
    assert!(
        h["renewed"][0]
            .as_str()
            .unwrap()
            .starts_with("timestamp version"),
        "{h}"
    );
}

/// Metadata published 25 hours ago has an expired timestamp: machines cannot verify, and
/// `trust status` fails naming it. A server that cannot sign (its timestamp key is missing)
/// says so in its log, its admin API and `trust status`, with what to do; started with the key,
/// it renews at once, and the machine updates.
#[test]
fn a_server_started_after_expiry_renews_at_once_or_says_why_it_cannot() {
    let mut s = Server::start_args(&["--trust-check-interval", "3600"]);
    let src = s.path("img");
    image(&src, 1, 5);
    s.ok(&["commit", src.to_str().unwrap(), "--channel", "lab/stable"]);
    // a machine on the channel (its assignment is signed now, before the publish below)
    let t = s.enroll_token(true);
    let a = Agent::new(&s, "m1", &t);
    a.once();
    wait_until("m1 enrolled", 30, || s.machines().len() == 1);
    s.ok(&["fleet", "assign", "m1", "lab/stable", "--unpublished"]);
    let out = cli_at(&s, "-25 hours", &["publish", "lab/stable", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v1: Value = serde_json::from_slice(&out.stdout).unwrap();
    let v1 = v1["custom"]["commit"].as_str().unwrap().to_owned();
    let (published, expires) = timestamp(&s);
    assert!(expires < now(), "published with an expired timestamp");

    // trust status: exit 1, naming the role and what to do
    let out = s.cli(&["trust", "status"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("timestamp expired at"), "{t}");
    assert!(t.contains("EXPIRED"), "{t}");
    let out = s.cli(&["trust", "status", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["expired"][0][0], "timestamp", "{j}");
    assert_eq!(j["server"]["check_interval_secs"], 3600, "{j}");

    // the machine cannot verify the release meanwhile
    assert!(!a.once().success());
    assert!(a.log().contains("timestamp: expired"), "{}", a.log());
    assert_eq!(a.current(), None);

    // without its timestamp key the server cannot renew, and says so
    let key = s.repo().join("trust/keys/timestamp.key");
    let aside = s.path("timestamp.key");
    std::fs::rename(&key, &aside).unwrap();
    s.restart();
    assert_eq!(timestamp(&s).0, published);
    let log = server_log(&s);
    assert!(log.contains("the admin must act"), "{log}");
    assert!(log.contains("timestamp.key"), "{log}");
    let (_, h) = s.get("/api/v1/admin/trust");
    assert_eq!(h["ok"], false, "{h}");
    let problems = h["problems"].to_string();
    assert!(
        problems.contains("cannot sign a new snapshot and timestamp"),
        "{h}"
    );
    assert!(problems.contains("semithin trust rotate"), "{h}");
    let out = s.cli(&["trust", "status"]);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(t.contains("server problem: the server cannot sign"), "{t}");

    // with the key back, the server renews as it starts, before it answers anyone
    std::fs::rename(&aside, &key).unwrap();
    s.restart();
    let (v, e) = timestamp(&s);
    assert!(v > published && e > now() + 23 * 3600, "{v} {e}");
    assert!(server_log(&s).contains("trust metadata renewed"));
    let out = s.cli(&["trust", "status"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("server: renews snapshot and timestamp"), "{t}");
    assert!(!t.contains("server problem"), "{t}");
    let mut a = a;
    a.spawn();
    wait_updated(&s, "m1", &v1, 60);
}

/// `trust status` exits 0 while everything is valid and 1 when any role expired, naming each
/// with what the admin does: targets expired 91 days after a publish, the timestamp after a day.
#[test]
fn trust_status_fails_on_anything_expired_and_names_it() {
    let env = Env::new();
    let root_key = env.path("root.key");
    env.ok(&["trust", "init", "--root-key", root_key.to_str().unwrap()]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "x").unwrap();
    env.commit("lab", &src);
    let status = |faketime: Option<&str>| {
        let mut c = match faketime {
            Some(t) => {
                let mut c = Command::new("faketime");
                c.arg(t).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        c.arg("--repo")
            .arg(&env.repo)
            .args(["trust", "status"])
            .env_remove("SEMITHIN_SERVER")
            .env("HOME", env.dir.path())
            .output()
            .unwrap()
    };
    env.ok(&["publish", "lab"]);
    let out = status(None);
    assert!(out.status.success(), "{}", text(&out));
    // two days on: the timestamp
    let out = status(Some("+2 days"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(t.contains("error: timestamp expired at"), "{t}");
    assert!(!t.contains("targets expired"), "{t}");
    // 91 days on: targets, snapshot and timestamp, each named, targets with its own remedy
    let out = status(Some("+91 days"));
    assert_eq!(out.status.code(), Some(1));
    let t = String::from_utf8_lossy(&out.stderr).into_owned();
    for role in ["targets", "snapshot", "timestamp"] {
        assert!(t.contains(&format!("error: {role} expired at")), "{t}");
    }
    assert!(t.contains("targets key"), "{t}");
    assert!(!t.contains("root expired"), "{t}");
    // renewed by the admin: fine again
    env.ok(&["trust", "refresh", "--force"]);
    assert!(status(None).status.success());
}

/// The renewal settings are checked before the server makes or serves anything.
#[test]
fn bad_renewal_settings_stop_the_server_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value, what) in [
        ("--trust-renew-left", "1.5", "between 0 and 1"),
        ("--trust-renew-left", "0", "between 0 and 1"),
        ("--trust-check-interval", "0", "1 to 86400 seconds"),
    ] {
        let data = dir.path().join("data");
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", flag, value])
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag} {value}");
        let t = text(&out);
        assert!(t.contains(what), "{flag} {value}: {t}");
        assert!(!data.exists(), "{flag} {value}: nothing made");
    }
}
