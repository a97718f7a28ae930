//! The admin side of trust: `semithin trust init/rotate/refresh/status` and `semithin publish`
//! write real TUF metadata. semithin's own client and python-tuf's client (over real HTTP) both
//! accept it after every publish, key rotation and refresh; bad input changes nothing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use semithin_store::pack::ObjKind;
use semithin_store::{Access, CommitId, Repo};
use semithin_trust::client::{self, Client, Fetcher, Limits};
use serde_json::Value;

use crate::common::*;

const TARGET: &str = "channels/lab/stable";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn trust(env: &Env) -> PathBuf {
    env.repo.join("trust")
}

/// The raw bytes of a commit object, as the store keeps them.
fn commit_bytes(env: &Env, id: &str) -> Vec<u8> {
    let repo = Repo::open(&env.repo, Access::Read).unwrap();
    let id: CommitId = id.parse().unwrap();
    repo.objects.get(ObjKind::Commit, id.as_bytes()).unwrap()
}

/// Commits a small tree with `version` in it to `channel`; returns the commit id.
fn commit_version(env: &Env, channel: &str, version: &str) -> String {
    let src = env.path(&format!("src-{}", channel.replace('/', "-")));
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/version"), version).unwrap();
    env.commit(channel, &src)
}

/// Every entry of a directory with its metadata and the sha256 of every file: two equal
/// snapshots mean nothing changed.
fn state_of(dir: &Path) -> String {
    let sums = sh(&format!(
        "cd {} && find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum",
        q(dir)
    ));
    format!("{}{sums}", listing(dir))
}

fn status(env: &Env) -> Value {
    env.json(&["trust", "status"])
}

fn version(env: &Env, role: &str) -> u64 {
    status(env)["roles"][role]["version"].as_u64().unwrap()
}

/// Reads `file://` URLs from the local filesystem, with the size limit.
struct Files;

impl Fetcher for Files {
    fn fetch(&self, url: &str, max_len: u64) -> semithin_trust::Result<Option<Vec<u8>>> {
        let path = url.strip_prefix("file://").expect("file URL");
        match std::fs::read(path) {
            Ok(b) if b.len() as u64 > max_len => Err(semithin_trust::Error::TooLarge {
                url: url.to_owned(),
                limit: max_len,
            }),
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(semithin_trust::Error::Fetch {
                url: url.to_owned(),
                reason: e.to_string(),
            }),
        }
    }
}

/// semithin's client, keeping its trusted metadata in `dir` between runs.
struct SemithinClient {
    dir: PathBuf,
    out: PathBuf,
}

impl SemithinClient {
    fn new(env: &Env, name: &str) -> SemithinClient {
        let dir = env.path(&format!("{name}/metadata"));
        let root = std::fs::read(trust(env).join("metadata/1.root.json")).unwrap();
        client::init(&dir, &root).unwrap();
        SemithinClient {
            dir,
            out: env.path(&format!("{name}/targets")),
        }
    }

    /// Refreshes, and returns the target's custom field and downloaded bytes (None when the
    /// target is not listed).
    fn fetch(&self, env: &Env, target: &str) -> Option<(Value, Vec<u8>)> {
        let t = trust(env);
        let meta_url = format!("file://{}", t.join("metadata").display());
        let targets_url = format!("file://{}", t.join("targets").display());
        let mut c = Client::new(
            &self.dir,
            &meta_url,
            &Files,
            Limits::default(),
            semithin_trust::clock::now(),
        )
        .unwrap();
        c.refresh()
            .unwrap_or_else(|e| panic!("semithin's client refused the metadata: {e}"));
        let info = c.find_target(target).unwrap()?;
        let path = c
            .download_target(target, &info, &targets_url, &self.out)
            .unwrap_or_else(|e| panic!("semithin's client refused {target}: {e}"));
        Some((info.custom.clone().unwrap(), std::fs::read(path).unwrap()))
    }

    fn trusted(&self, role: &str) -> u64 {
        let v: Value =
            serde_json::from_slice(&std::fs::read(self.dir.join(format!("{role}.json"))).unwrap())
                .unwrap();
        v["signed"]["version"].as_u64().unwrap()
    }

    /// Asserts the client gets `commit` as the release of `target`, byte for byte.
    fn expect(&self, env: &Env, target: &str, commit: &str) {
        let (custom, bytes) = self
            .fetch(env, target)
            .unwrap_or_else(|| panic!("{target} is not published"));
        assert_eq!(custom["commit"], commit, "{custom}");
        assert_eq!(custom["channel"], target.strip_prefix("channels/").unwrap());
        assert!(custom["published"].as_i64().unwrap() > 1_700_000_000);
        assert_eq!(bytes, commit_bytes(env, commit), "downloaded commit object");
    }
}

/// `trust init` with a root key outside the repository; returns the key's path.
fn init_trust(env: &Env) -> PathBuf {
    let key = env.path("root.key");
    env.ok(&["trust", "init", "--root-key", key.to_str().unwrap()]);
    key
}

#[test]
fn init_writes_version_one_of_every_role_and_keeps_the_root_key_out() {
    let env = Env::new();
    let key = env.path("offline/root.key");
    std::fs::create_dir(env.path("offline")).unwrap();
    let out = env.json(&["trust", "init", "--root-key", key.to_str().unwrap()]);
    assert_eq!(out["root_threshold"], 1, "{out:#}");
    let t = trust(&env);
    for f in [
        "metadata/1.root.json",
        "metadata/root.json",
        "metadata/1.targets.json",
        "metadata/1.snapshot.json",
        "metadata/timestamp.json",
        "keys/targets.key",
        "keys/snapshot.key",
        "keys/timestamp.key",
        "config.toml",
    ] {
        assert!(t.join(f).is_file(), "{f} missing");
    }
    // Private keys are for their owner only; the root key is not in the repository.
    for f in [
        "keys/targets.key",
        "keys/snapshot.key",
        "keys/timestamp.key",
    ] {
        let mode = sh(&format!("stat -c %a {}", q(&t.join(f))));
        assert_eq!(mode.trim(), "600", "{f}");
    }
    assert_eq!(sh(&format!("stat -c %a {}", q(&key))).trim(), "600");
    let root_id = out["root_keys"][0]["keyid"].as_str().unwrap();
    let found = sh(&format!("grep -rl {root_id} {} || true", q(&env.repo)));
    let in_keys: Vec<&str> = found.lines().filter(|l| l.contains("/keys/")).collect();
    assert!(in_keys.is_empty(), "root key id in key files: {in_keys:?}");
    let private =
        serde_json::from_slice::<Value>(&std::fs::read(&key).unwrap()).unwrap()["private"]
            .as_str()
            .unwrap()
            .to_owned();
    let leaked = sh(&format!("grep -rl {private} {} || true", q(&env.repo)));
    assert_eq!(leaked, "", "the root private key is in the repository");
    // Real TUF root: consistent snapshots, every role, ed25519 keys.
    let root: Value =
        serde_json::from_slice(&std::fs::read(t.join("metadata/1.root.json")).unwrap()).unwrap();
    assert_eq!(root["signed"]["_type"], "root");
    assert_eq!(root["signed"]["consistent_snapshot"], true);
    assert_eq!(root["signed"]["version"], 1);
    for role in ["root", "targets", "snapshot", "timestamp"] {
        let ids = root["signed"]["roles"][role]["keyids"].as_array().unwrap();
        assert_eq!(ids.len(), 1, "{role}");
        let k = &root["signed"]["keys"][ids[0].as_str().unwrap()];
        assert_eq!(k["keytype"], "ed25519", "{role}");
    }
    let s = status(&env);
    // (targets, snapshot and timestamp 2: version 1 and the set-up of signed channel
    // assignments, docs/TRUST.md)
    for (role, v) in [
        ("root", 1),
        ("targets", 2),
        ("snapshot", 2),
        ("timestamp", 2),
    ] {
        assert_eq!(s["roles"][role]["version"], v, "{s:#}");
        assert_eq!(s["roles"][role]["signed"], true, "{s:#}");
    }
    // Default lifetimes: root 365 days, targets 90, snapshot 30, timestamp 1.
    for (role, days) in [
        ("root", 365),
        ("targets", 90),
        ("snapshot", 30),
        ("timestamp", 1),
    ] {
        let left = s["roles"][role]["expires_in"].as_i64().unwrap();
        assert!(
            (days * 86_400 - 120..=days * 86_400).contains(&left),
            "{role}: {left}"
        );
    }
    assert_eq!(s["targets"], serde_json::json!([]));
}

#[test]
fn semithin_client_follows_publishes_and_every_rotation() {
    let env = Env::new();
    let c1 = commit_version(&env, "lab/stable", "1");
    let key = init_trust(&env);
    let client = SemithinClient::new(&env, "client");
    assert!(
        client.fetch(&env, TARGET).is_none(),
        "nothing is published yet"
    );

    let p = env.json(&["publish", "lab/stable"]);
    assert_eq!(p["target"], TARGET, "{p:#}");
    assert_eq!(p["custom"]["commit"], c1.as_str());
    let bytes = commit_bytes(&env, &c1);
    assert_eq!(p["length"], bytes.len());
    // The target file is at its consistent-snapshot path.
    let sha = p["sha256"].as_str().unwrap();
    assert_eq!(
        std::fs::read(trust(&env).join(format!("targets/channels/lab/{sha}.stable"))).unwrap(),
        bytes
    );
    client.expect(&env, TARGET, &c1);
    assert_eq!(client.trusted("targets"), 3);

    // A second channel, then a new version of the first: publishing keeps the others.
    let t1 = commit_version(&env, "lab/testing", "t1");
    env.ok(&["publish", "lab/testing"]);
    let c2 = commit_version(&env, "lab/stable", "2");
    env.ok(&["publish", "lab/stable"]);
    client.expect(&env, TARGET, &c2);
    client.expect(&env, "channels/lab/testing", &t1);
    assert_eq!(client.trusted("targets"), 5);
    assert_eq!(client.trusted("timestamp"), 5);

    // Every rotation: a new root signed by the old root key, the role re-signed.
    let mut root_version = 1;
    for role in ["timestamp", "snapshot", "targets"] {
        let before = status(&env);
        let old_ids = before["roles"][role]["keyids"].clone();
        env.ok(&["trust", "rotate", role, "--root-key", key.to_str().unwrap()]);
        root_version += 1;
        let after = status(&env);
        assert_ne!(after["roles"][role]["keyids"], old_ids, "{role}");
        assert_eq!(after["roles"]["root"]["version"], root_version);
        for r in ["root", "targets", "snapshot", "timestamp"] {
            assert_eq!(
                after["roles"][r]["signed"], true,
                "{r} after rotating {role}"
            );
            assert!(
                after["roles"][r]["version"].as_u64() >= before["roles"][r]["version"].as_u64(),
                "{r} went down"
            );
        }
        assert!(
            after["roles"][role]["version"].as_u64().unwrap()
                > before["roles"][role]["version"].as_u64().unwrap(),
            "{role} not re-signed"
        );
        client.expect(&env, TARGET, &c2);
        assert_eq!(
            client.trusted("root"),
            root_version,
            "after rotating {role}"
        );
        client.expect(&env, "channels/lab/testing", &t1);
    }

    // The root itself: the new root key goes to the admin's file, the old one stops working.
    let key2 = env.path("root2.key");
    env.ok(&[
        "trust",
        "rotate",
        "root",
        "--root-key",
        key.to_str().unwrap(),
        "--new-root-key",
        key2.to_str().unwrap(),
    ]);
    root_version += 1;
    client.expect(&env, TARGET, &c2);
    assert_eq!(client.trusted("root"), root_version);
    let err = env.fails(&[
        "trust",
        "rotate",
        "timestamp",
        "--root-key",
        key.to_str().unwrap(),
    ]);
    assert!(
        err.contains(key.to_str().unwrap()) && err.contains("not a root key"),
        "{err}"
    );
    env.ok(&[
        "trust",
        "rotate",
        "timestamp",
        "--root-key",
        key2.to_str().unwrap(),
    ]);
    root_version += 1;
    client.expect(&env, TARGET, &c2);
    assert_eq!(client.trusted("root"), root_version);

    // A rollback is a new release of an older version, with higher metadata versions.
    let before = version(&env, "targets");
    env.ok(&["publish", "lab/stable", &c1]);
    assert_eq!(version(&env, "targets"), before + 1);
    client.expect(&env, TARGET, &c1);

    // A client starting from 1.root.json walks every root up to the newest.
    let fresh = SemithinClient::new(&env, "fresh");
    fresh.expect(&env, TARGET, &c1);
    assert_eq!(fresh.trusted("root"), root_version);
    for n in 1..=root_version {
        assert!(
            trust(&env)
                .join(format!("metadata/{n}.root.json"))
                .is_file()
        );
    }
}

/// `python3 -m http.server` serving a directory on a loopback port; killed when dropped.
struct HttpServer {
    child: Child,
    port: u16,
}

impl HttpServer {
    fn start(py: &str, dir: &Path) -> HttpServer {
        let mut child = Command::new(py)
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"])
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port N (http://127.0.0.1:N/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from http.server: {line:?}"));
        HttpServer { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// python-tuf's Updater, trusting from `state` (kept between runs), downloading TARGET.
fn python_tuf_download(py: &str, srv: &HttpServer, env: &Env, state: &Path) -> Value {
    let out = Command::new(py)
        .arg(fixtures().join("tuf_download.py"))
        .arg(srv.url("metadata/"))
        .arg(srv.url("targets/"))
        .arg(trust(env).join("metadata/1.root.json"))
        .arg(TARGET)
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python-tuf refused semithin's repository:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Asserts python-tuf's answer carries `commit` and downloaded its exact bytes.
fn python_got(env: &Env, got: &Value, commit: &str) {
    assert_eq!(got["custom"]["commit"], commit, "{got:#}");
    assert_eq!(got["custom"]["channel"], "lab/stable");
    let bytes = std::fs::read(got["path"].as_str().unwrap()).unwrap();
    assert_eq!(bytes, commit_bytes(env, commit));
    assert_eq!(got["length"], bytes.len());
}

#[test]
fn python_tuf_client_reads_what_semithin_publishes() {
    let env = Env::new();
    let py = sh(&q(&fixtures().join("python-tuf.sh"))).trim().to_owned();
    let c1 = commit_version(&env, "lab/stable", "1");
    let key = init_trust(&env);
    env.ok(&["publish", "lab/stable"]);
    // Serve metadata/ and targets/ only: keys/ holds the online private keys.
    let www = env.path("www");
    std::fs::create_dir(&www).unwrap();
    for d in ["metadata", "targets"] {
        std::os::unix::fs::symlink(trust(&env).join(d), www.join(d)).unwrap();
    }
    let srv = HttpServer::start(&py, &www);
    let state = env.path("python-client");

    let got = python_tuf_download(&py, &srv, &env, &state);
    python_got(&env, &got, &c1);
    assert_eq!(got["downloaded"], true);
    assert_eq!(got["versions"]["root"], 1);
    assert_eq!(got["versions"]["targets"], 3);

    let c2 = commit_version(&env, "lab/stable", "2");
    env.ok(&["publish", "lab/stable"]);
    let got = python_tuf_download(&py, &srv, &env, &state);
    python_got(&env, &got, &c2);
    assert_eq!(got["downloaded"], true);
    assert_eq!(got["versions"]["targets"], 4);

    // Root rotation (old and new root keys sign root 2), then a timestamp key rotation (root 3).
    let key2 = env.path("root2.key");
    env.ok(&[
        "trust",
        "rotate",
        "root",
        "--root-key",
        key.to_str().unwrap(),
        "--new-root-key",
        key2.to_str().unwrap(),
    ]);
    env.ok(&[
        "trust",
        "rotate",
        "timestamp",
        "--root-key",
        key2.to_str().unwrap(),
    ]);
    let got = python_tuf_download(&py, &srv, &env, &state);
    python_got(&env, &got, &c2);
    assert_eq!(got["versions"]["root"], 3);
    assert_eq!(got["downloaded"], false, "cached target is reused");

    // A forced timestamp refresh: a new version python-tuf accepts.
    let ts = version(&env, "timestamp");
    let out = env.ok(&["trust", "refresh", "--force"]);
    assert!(out.contains("timestamp"), "{out}");
    assert_eq!(version(&env, "timestamp"), ts + 1);
    let got = python_tuf_download(&py, &srv, &env, &state);
    assert_eq!(got["versions"]["timestamp"], ts + 1);
    python_got(&env, &got, &c2);

    // A fresh python-tuf client walks 1.root.json -> 2 -> 3.
    let got = python_tuf_download(&py, &srv, &env, &env.path("python-fresh"));
    python_got(&env, &got, &c2);
    assert_eq!(got["versions"]["root"], 3);

    // semithin's own client over the same HTTP server agrees.
    let cdir = env.path("tuf-client");
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("tuf-client")
            .arg("--metadata-dir")
            .arg(&cdir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tuf-client {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let root1 = trust(&env).join("metadata/1.root.json");
    run(&["init", root1.to_str().unwrap()]);
    let artifacts = env.path("artifacts");
    run(&[
        "--metadata-url",
        &srv.url("metadata"),
        "--target-name",
        TARGET,
        "--target-base-url",
        &srv.url("targets"),
        "--target-dir",
        artifacts.to_str().unwrap(),
        "download",
    ]);
    assert_eq!(
        std::fs::read(artifacts.join("channels%2Flab%2Fstable")).unwrap(),
        commit_bytes(&env, &c2)
    );
}

#[test]
fn refresh_renews_what_is_due_and_nothing_else() {
    let env = Env::new();
    let c1 = commit_version(&env, "lab/stable", "1");
    init_trust(&env);
    env.ok(&["publish", "lab/stable"]);
    let client = SemithinClient::new(&env, "client");
    let before = state_of(&trust(&env));

    // Fresh metadata: nothing to do, nothing written.
    let r = env.json(&["trust", "refresh"]);
    assert_eq!(r["written"], serde_json::json!([]), "{r:#}");
    assert_eq!(state_of(&trust(&env)), before);
    let out = env.ok(&["trust", "refresh"]);
    assert!(out.contains("nothing to do"), "{out}");

    // A longer timestamp lifetime makes the current one (1 day) less than half: renewed.
    let config = trust(&env).join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("timestamp = \"1d\""), "{text}");
    std::fs::write(
        &config,
        text.replace("timestamp = \"1d\"", "timestamp = \"3d\""),
    )
    .unwrap();
    let r = env.json(&["trust", "refresh"]);
    let written: Vec<&str> = r["written"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["role"].as_str().unwrap())
        .collect();
    assert_eq!(written, ["timestamp"], "{r:#}");
    assert_eq!(version(&env, "timestamp"), 4);
    let left = status(&env)["roles"]["timestamp"]["expires_in"]
        .as_i64()
        .unwrap();
    assert!(left > 2 * 86_400, "new timestamp lives 3 days: {left}");
    assert_eq!(
        env.json(&["trust", "refresh"])["written"],
        serde_json::json!([])
    );

    // A due snapshot brings a new timestamp with it; targets stay.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("snapshot = \"30d\"", "snapshot = \"90d\""),
    )
    .unwrap();
    let r = env.json(&["trust", "refresh"]);
    let written: Vec<&str> = r["written"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["role"].as_str().unwrap())
        .collect();
    // (the channel assignments live as long as the snapshot: due with it)
    assert_eq!(written, ["assignments", "snapshot", "timestamp"], "{r:#}");
    assert_eq!(version(&env, "targets"), 3);
    client.expect(&env, TARGET, &c1);

    // --force always signs a new timestamp.
    env.ok(&["trust", "refresh", "--force"]);
    assert_eq!(version(&env, "timestamp"), 6);
    client.expect(&env, TARGET, &c1);
    assert_eq!(client.trusted("timestamp"), 6);

    // A bad setting is named, and nothing is written.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("timestamp = \"3d\"", "timestamp = \"soon\""),
    )
    .unwrap();
    let before = state_of(&trust(&env));
    let err = env.fails(&["trust", "refresh", "--force"]);
    assert!(err.contains("config.toml") && err.contains("soon"), "{err}");
    assert_eq!(state_of(&trust(&env)), before);
}

#[test]
fn publish_refuses_unknown_channels_and_refs_and_changes_nothing() {
    let env = Env::new();
    let c1 = commit_version(&env, "lab/stable", "1");
    let other = commit_version(&env, "office", "x");

    // Before `trust init`.
    let err = env.fails(&["publish", "lab/stable"]);
    assert!(err.contains("trust init"), "{err}");
    assert!(!trust(&env).exists());

    init_trust(&env);
    env.ok(&["publish", "lab/stable"]);
    let before = state_of(&trust(&env));
    let cases: &[(&[&str], &str)] = &[
        (&["publish", "lab/nosuch"], "lab/nosuch"),
        (&["publish", "lab/stable", "deadbeef"], "deadbeef"),
        (&["publish", "lab/stable", "lab/stable~5"], "lab/stable~5"),
        (&["publish", "../etc"], "../etc"),
        // A commit that was never on the channel: gc would not keep it for the release.
        (&["publish", "lab/stable", &other], "never been on channel"),
    ];
    for (args, what) in cases {
        let err = env.fails(args);
        assert!(err.contains(what), "{args:?}: {err}");
        assert_eq!(
            state_of(&trust(&env)),
            before,
            "{args:?} changed REPO/trust"
        );
    }
    assert_eq!(status(&env)["targets"][0]["custom"]["commit"], c1.as_str());
}

#[test]
fn trust_init_refuses_to_run_twice_or_overwrite_a_key() {
    let env = Env::new();
    // An existing file at the root key path: refused, named, untouched, no trust directory.
    let existing = env.path("precious");
    std::fs::write(&existing, "do not overwrite").unwrap();
    let err = env.fails(&["trust", "init", "--root-key", existing.to_str().unwrap()]);
    assert!(err.contains(existing.to_str().unwrap()), "{err}");
    assert_eq!(
        std::fs::read_to_string(&existing).unwrap(),
        "do not overwrite"
    );
    assert!(!trust(&env).exists());
    let err = env.fails(&[
        "trust",
        "init",
        "--root-key",
        env.path("nodir/root.key").to_str().unwrap(),
    ]);
    assert!(err.contains("nodir/root.key"), "{err}");
    assert!(!trust(&env).exists());

    init_trust(&env);
    let before = state_of(&trust(&env));
    let key2 = env.path("second.key");
    let err = env.fails(&["trust", "init", "--root-key", key2.to_str().unwrap()]);
    assert!(err.contains("already"), "{err}");
    assert!(!key2.exists(), "a refused init wrote a root key");
    assert_eq!(state_of(&trust(&env)), before);
}

#[test]
fn rotate_needs_the_right_root_key_and_names_the_file() {
    let env = Env::new();
    commit_version(&env, "lab/stable", "1");
    let key = init_trust(&env);
    env.ok(&["publish", "lab/stable"]);
    // A real key, but another repository's root key.
    let foreign = Env::new();
    let foreign_key = foreign.path("foreign-root.key");
    foreign.ok(&["trust", "init", "--root-key", foreign_key.to_str().unwrap()]);
    let garbage = env.path("garbage.key");
    std::fs::write(&garbage, "this is not a key").unwrap();
    let online = trust(&env).join("keys/targets.key");
    let missing = env.path("missing.key");
    let new_key = env.path("new-root.key");
    let existing = env.path("existing.key");
    std::fs::write(&existing, "keep").unwrap();

    let before = state_of(&trust(&env));
    let k = |p: &Path| p.to_str().unwrap().to_owned();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec![
                "root".into(),
                "--root-key".into(),
                k(&missing),
                "--new-root-key".into(),
                k(&new_key),
            ],
            k(&missing),
        ),
        (
            vec![
                "root".into(),
                "--root-key".into(),
                k(&foreign_key),
                "--new-root-key".into(),
                k(&new_key),
            ],
            k(&foreign_key),
        ),
        (
            vec![
                "root".into(),
                "--root-key".into(),
                k(&garbage),
                "--new-root-key".into(),
                k(&new_key),
            ],
            k(&garbage),
        ),
        // An online key is not a root key.
        (
            vec!["targets".into(), "--root-key".into(), k(&online)],
            k(&online),
        ),
        // rotate root needs somewhere to put the new key, and never overwrites one.
        (
            vec!["root".into(), "--root-key".into(), k(&key)],
            "--new-root-key".into(),
        ),
        (
            vec![
                "root".into(),
                "--root-key".into(),
                k(&key),
                "--new-root-key".into(),
                k(&existing),
            ],
            k(&existing),
        ),
        (
            vec![
                "root".into(),
                "--root-key".into(),
                k(&key),
                "--new-root-key".into(),
                k(&new_key),
                "--threshold".into(),
                "2".into(),
            ],
            "threshold".into(),
        ),
        (
            vec![
                "timestamp".into(),
                "--root-key".into(),
                k(&key),
                "--new-root-key".into(),
                k(&new_key),
            ],
            "only for `rotate root`".into(),
        ),
    ];
    for (args, what) in &cases {
        let mut a = vec!["trust", "rotate"];
        a.extend(args.iter().map(String::as_str));
        let err = env.fails(&a);
        assert!(err.contains(what.as_str()), "{a:?}: {err}");
        assert_eq!(state_of(&trust(&env)), before, "{a:?} changed REPO/trust");
        assert!(!new_key.exists(), "{a:?} wrote a new root key");
    }
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep");
    assert_eq!(version(&env, "root"), 1);
}

#[test]
fn a_damaged_online_key_is_named_and_nothing_is_written() {
    let env = Env::new();
    commit_version(&env, "lab/stable", "1");
    let key = init_trust(&env);
    let t = trust(&env);
    for role in ["timestamp", "snapshot", "targets"] {
        let path = t.join(format!("keys/{role}.key"));
        let good = std::fs::read(&path).unwrap();
        // Bad content, then a valid key that is not the one the root names.
        let mut wrong = Vec::new();
        let other = env.path(&format!("other-{role}"));
        std::fs::create_dir_all(&other).unwrap();
        let o = Env::new();
        o.ok(&[
            "trust",
            "init",
            "--root-key",
            other.join("r").to_str().unwrap(),
        ]);
        wrong.push(std::fs::read(o.repo.join(format!("trust/keys/{role}.key"))).unwrap());
        for bad in [b"{\"keytype\": \"ed25519\"".to_vec(), wrong.remove(0)] {
            std::fs::write(&path, &bad).unwrap();
            let before = state_of(&t);
            let mut commands = vec![vec!["publish", "lab/stable"]];
            // refresh --force signs only a timestamp: it needs only the timestamp key.
            if role == "timestamp" {
                commands.push(vec!["trust", "refresh", "--force"]);
            }
            for args in commands {
                let err = env.fails(&args);
                let named = format!("keys/{role}.key");
                assert!(err.contains(&named), "{args:?} with bad {role}: {err}");
                assert_eq!(state_of(&t), before, "{args:?} changed REPO/trust");
            }
            let err = env.fails(&[
                "trust",
                "rotate",
                if role == "timestamp" {
                    "targets"
                } else {
                    "timestamp"
                },
                "--root-key",
                key.to_str().unwrap(),
            ]);
            assert!(err.contains(&format!("keys/{role}.key")), "{err}");
            assert_eq!(state_of(&t), before);
        }
        std::fs::write(&path, &good).unwrap();
    }
    env.ok(&["publish", "lab/stable"]);
}
