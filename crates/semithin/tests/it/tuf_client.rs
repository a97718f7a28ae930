//! `semithin tuf-client` against repositories made by python-tuf, the reference implementation,
//! served over real HTTP on loopback: valid ones are accepted, every kind of broken one refused,
//! and the trusted state survives damage, clock changes and kill -9.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::common::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn python() -> String {
    sh(&q(&fixtures().join("python-tuf.sh"))).trim().to_owned()
}

/// A python-tuf repository, served over HTTP, and a semithin client of it.
struct World {
    dir: tempfile::TempDir,
    py: String,
    server: Child,
    port: u16,
}

impl World {
    fn new(init_args: &[&str]) -> World {
        let dir = tempfile::Builder::new()
            .prefix("semithin-tuf")
            .tempdir()
            .unwrap();
        let py = python();
        let w = |args: &[&str]| {
            let out = Command::new(&py)
                .arg(fixtures().join("tuf_sim.py"))
                .arg(dir.path().join("repo"))
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "tuf_sim {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let mut a = vec!["init"];
        a.extend(init_args);
        w(&a);
        let mut server = Command::new(&py)
            .arg("-u")
            .arg(fixtures().join("serve.py"))
            .arg(dir.path().join("repo"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().strip_prefix("PORT ").unwrap().parse().unwrap();
        let world = World {
            dir,
            py,
            server,
            port,
        };
        world.client(
            &[
                "init",
                world.path("repo/initial_root.json").to_str().unwrap(),
            ],
            None,
        );
        world
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Changes the repository with tuf_sim.py. An argument `@NAME` stands for the path of the
    /// served metadata file NAME.
    fn sim(&self, args: &[&str]) {
        let args: Vec<String> = args
            .iter()
            .map(|a| match a.strip_prefix('@') {
                Some(name) => self
                    .path(&format!("repo/metadata/{name}"))
                    .to_string_lossy()
                    .into_owned(),
                None => a.to_string(),
            })
            .collect();
        let out = Command::new(&self.py)
            .arg(fixtures().join("tuf_sim.py"))
            .arg(self.path("repo"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tuf_sim {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self, what: &str) -> String {
        format!("http://127.0.0.1:{}/{what}", self.port)
    }

    fn client(&self, args: &[&str], faketime: Option<&str>) -> Output {
        let mut cmd = match faketime {
            Some(t) => {
                let mut c = Command::new("faketime");
                c.arg(t).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.arg("tuf-client")
            .arg("--metadata-dir")
            .arg(self.path("client"));
        if args[0] != "init" {
            cmd.arg("--metadata-url").arg(self.url("metadata"));
        }
        cmd.args(args).output().unwrap()
    }

    fn refresh(&self) -> Output {
        self.client(&["refresh"], None)
    }

    fn download(&self, name: &str) -> Output {
        self.download_at(name, None)
    }

    fn download_at(&self, name: &str, faketime: Option<&str>) -> Output {
        let base = self.url("targets");
        let dir = self.path("artifacts");
        self.client(
            &[
                "--target-name",
                name,
                "--target-base-url",
                &base,
                "--target-dir",
                dir.to_str().unwrap(),
                "download",
            ],
            faketime,
        )
    }

    /// The version of a role the client trusts, or None.
    fn trusted(&self, role: &str) -> Option<u64> {
        let bytes = std::fs::read(self.path(&format!("client/{role}.json"))).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["signed"]["version"].as_u64()
    }

    fn requests(&self, path: &str) -> usize {
        std::fs::read_to_string(self.path("repo/requests.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(path))
            .count()
    }

    /// Runs several tuf_sim.py commands in one go.
    fn sims(&self, commands: &[&[&str]]) {
        let args: Vec<&str> = commands.join(&";");
        self.sim(&args);
    }

    /// The metadata files requested since the log was last cleared, in order, as requested
    /// (`2.root.json`, `timestamp.json`, ...).
    fn meta_requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("repo/requests.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("/metadata/"))
            .map(str::to_owned)
            .collect()
    }

    /// The delegated roles whose metadata was requested, in order, by their (quoted) names.
    fn delegated_requests(&self) -> Vec<String> {
        self.meta_requests()
            .into_iter()
            .map(|n| {
                let n = n.strip_suffix(".json").unwrap().to_owned();
                match n.split_once('.') {
                    Some((v, rest)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                        rest.to_owned()
                    }
                    _ => n,
                }
            })
            .filter(|n| !["root", "timestamp", "snapshot", "targets"].contains(&n.as_str()))
            .collect()
    }

    /// The artifact paths requested since the log was last cleared.
    fn target_requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("repo/requests.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("/targets/"))
            .map(str::to_owned)
            .collect()
    }

    /// The contents of every downloaded artifact, sorted.
    fn artifacts(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path("artifacts"))
            .map(|d| {
                d.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn clear_log(&self) {
        let _ = std::fs::remove_file(self.path("repo/requests.log"));
    }

    /// What the conformance suite sees as trusted: every `*.json` file in the metadata
    /// directory, by name without `.json`, with its version, sorted by name.
    fn trusted_roles(&self) -> Vec<(String, u64)> {
        let mut names: Vec<String> = std::fs::read_dir(self.path("client"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter_map(|n| n.strip_suffix(".json").map(str::to_owned))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let v = self
                    .trusted(&n)
                    .unwrap_or_else(|| panic!("{n}.json has no version"));
                (n, v)
            })
            .collect()
    }

    /// The version of a role in the repository (its latest, published or not).
    fn repo_version(&self, role: &str) -> u64 {
        let bytes = std::fs::read(self.path(&format!("repo/state/{role}.md.json"))).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["signed"]["version"].as_u64().unwrap()
    }

    /// Starts the client over from `root` (a file name under repo/metadata).
    fn reinit(&self, root: &str) {
        std::fs::remove_dir_all(self.path("client")).unwrap();
        let root = self.path(&format!("repo/metadata/{root}"));
        ok(&self.client(&["init", root.to_str().unwrap()], None));
    }

    /// The bytes of a trusted file.
    fn trusted_bytes(&self, role: &str) -> Vec<u8> {
        std::fs::read(self.path(&format!("client/{role}.json"))).unwrap()
    }

    /// The bytes the repository serves under a metadata file name.
    fn served(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(&format!("repo/metadata/{name}"))).unwrap()
    }
}

/// `(name, version)` pairs, for comparing with [`World::trusted_roles`].
fn roles(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect()
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "expected success: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Exit code 1 and an error containing `what`.
fn refused(out: &Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected exit 1: {err}");
    assert!(
        err.contains(what),
        "the error should mention {what:?}: {err}"
    );
}

#[test]
fn python_tuf_repositories_are_accepted_and_targets_cached() {
    for consistent in [true, false] {
        let w = World::new(if consistent {
            &[]
        } else {
            &["--no-consistent"]
        });
        w.sim(&["add-target", "dir/file.txt", "hello"]);
        ok(&w.refresh());
        assert_eq!(w.trusted("timestamp"), Some(2));
        assert_eq!(w.trusted("targets"), Some(2));
        ok(&w.download("dir/file.txt"));
        let local = w.path("artifacts/dir%2Ffile.txt");
        assert_eq!(std::fs::read_to_string(&local).unwrap(), "hello");
        // Downloaded with matching hashes: not fetched again.
        let fetched = w.requests("file.txt");
        assert_eq!(fetched, 1);
        ok(&w.download("dir/file.txt"));
        assert_eq!(w.requests("file.txt"), fetched);
        // A new version of the target replaces the file under the same name.
        w.sim(&["add-target", "dir/file.txt", "hello again"]);
        ok(&w.download("dir/file.txt"));
        assert_eq!(std::fs::read_to_string(&local).unwrap(), "hello again");
        // An unknown target fails.
        refused(&w.download("nope"), "not listed");
    }
}

#[test]
fn root_rotation_is_followed_and_an_unauthorised_one_refused() {
    let w = World::new(&[]);
    ok(&w.refresh());
    w.sim(&["rotate", "root"]);
    w.sim(&["rotate", "timestamp"]);
    ok(&w.refresh());
    assert_eq!(w.trusted("root"), Some(3));
    // A root signed by the new key only does not chain to the trusted one.
    w.sim(&["rotate", "root", "--unsigned-by-old"]);
    refused(&w.refresh(), "root: 0 valid signature(s)");
    assert_eq!(w.trusted("root"), Some(3));
}

#[test]
fn delegated_targets_are_found() {
    let w = World::new(&[]);
    w.sim(&["delegate", "team", "team/*"]);
    w.sim(&[
        "add-target",
        "team/tool",
        "delegated content",
        "--role",
        "team",
    ]);
    ok(&w.download("team/tool"));
    assert_eq!(
        std::fs::read_to_string(w.path("artifacts/team%2Ftool")).unwrap(),
        "delegated content"
    );
    assert!(w.trusted("team").is_some());
    // The delegation covers team/* only.
    w.sim(&["add-target", "other/tool", "x", "--role", "team"]);
    refused(&w.download("other/tool"), "not listed");
}

#[test]
fn broken_repositories_are_refused() {
    type Case = (
        &'static str,
        &'static [&'static [&'static str]],
        &'static str,
    );
    let cases: &[Case] = &[
        (
            "expired timestamp",
            &[
                &["set", "timestamp", "expires", "-60"],
                &["set", "timestamp", "version", "4"],
            ],
            "timestamp: expired",
        ),
        (
            "expired snapshot",
            &[
                &["set", "snapshot", "expires", "-60"],
                &["set", "snapshot", "version", "4"],
                &["publish", "timestamp"],
            ],
            "snapshot: expired",
        ),
        (
            "snapshot rolled back",
            &[
                &["set", "snapshot", "version", "2"],
                &["publish", "timestamp"],
            ],
            "snapshot (in timestamp): version 2 is older than the trusted version 3",
        ),
        (
            "targets rolled back",
            &[
                &["set", "targets", "version", "2"],
                &["publish", "snapshot", "timestamp"],
            ],
            "targets.json (in snapshot): version 2 is older than the trusted version 3",
        ),
        (
            "timestamp rolled back",
            &[&["set", "timestamp", "version", "1"]],
            "older than the trusted version 3",
        ),
        (
            "unsigned timestamp",
            &[&["sign", "timestamp", "none"]],
            "timestamp: 0 valid signature(s)",
        ),
        (
            "timestamp signed by a stranger",
            &[&["sign", "timestamp", "wrong-key"]],
            "timestamp: 0 valid signature(s)",
        ),
        (
            "targets below threshold",
            &[
                &["threshold", "targets", "2"],
                &["sign", "targets", "first-only"],
            ],
            "targets: 1 valid signature(s) from authorised keys, threshold is 2",
        ),
        (
            "one signature counted twice",
            &[&["sign", "timestamp", "duplicate"]],
            "timestamp: 1 valid signature(s)",
        ),
        (
            "one key under two key ids",
            &[&["sign", "timestamp", "alias"]],
            "timestamp: 1 valid signature(s)",
        ),
        (
            "version beyond u64",
            &[&["set", "timestamp", "version", "18446744073709551616"]],
            "timestamp: cannot parse",
        ),
        (
            "spec version 2",
            &[&["set", "timestamp", "spec_version", "2.0.0"]],
            "spec_version 2.0.0 is not 1.x",
        ),
    ];
    for (name, steps, expected) in cases {
        let w = World::new(&[]);
        w.sim(&["publish"]);
        ok(&w.refresh());
        assert_eq!(w.trusted("timestamp"), Some(2), "{name}");
        w.sim(&["publish"]);
        ok(&w.refresh());
        for step in *steps {
            w.sim(step);
        }
        let out = w.refresh();
        eprintln!("case: {name}");
        refused(&out, expected);
        // Nothing bad was trusted.
        assert_eq!(w.trusted("targets"), Some(3), "{name}");
    }
}

#[test]
fn mixed_snapshot_is_refused_by_its_hash() {
    let w = World::new(&[]);
    w.sim(&["publish"]);
    // The server swaps in the older snapshot under the new name.
    w.sim(&[
        "serve-raw",
        "2.snapshot.json",
        w.path("repo/metadata/1.snapshot.json").to_str().unwrap(),
    ]);
    refused(&w.refresh(), "snapshot: length or hash does not match");
    assert_eq!(w.trusted("snapshot"), None);
}

#[test]
fn equal_version_with_other_content_keeps_the_trusted_copy() {
    let w = World::new(&[]);
    ok(&w.refresh());
    let before = std::fs::read(w.path("client/timestamp.json")).unwrap();
    w.sim(&["set", "timestamp", "expires", "7200"]);
    ok(&w.refresh());
    assert_eq!(
        std::fs::read(w.path("client/timestamp.json")).unwrap(),
        before
    );
}

#[test]
fn a_huge_timestamp_stops_at_the_size_limit() {
    for spec in ["length 10737418240", "chunked"] {
        let w = World::new(&[]);
        std::fs::write(w.path("repo/metadata/timestamp.json.huge"), spec).unwrap();
        let out = Command::new("/usr/bin/time")
            .args(["-f", "maxrss=%M"])
            .arg(BIN)
            .arg("tuf-client")
            .arg("--metadata-dir")
            .arg(w.path("client"))
            .arg("--metadata-url")
            .arg(w.url("metadata"))
            .arg("refresh")
            .output()
            .unwrap();
        refused(&out, "more than 16384 bytes");
        let err = String::from_utf8_lossy(&out.stderr);
        let rss: u64 = err
            .rsplit("maxrss=")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(rss < 64 * 1024, "{spec}: the client grew to {rss} KiB");
    }
}

#[test]
fn unsafe_target_names_are_refused() {
    let w = World::new(&[]);
    ok(&w.refresh());
    let outside = w.path("x");
    for name in ["../x", "/etc/passwd", "a%2F..%2Fx", "a/../../x", ""] {
        refused(&w.download(name), "not a safe name");
    }
    assert!(!outside.exists());
    assert!(
        !w.path("artifacts").exists()
            || std::fs::read_dir(w.path("artifacts"))
                .unwrap()
                .next()
                .is_none()
    );
}

#[test]
fn damaged_trusted_metadata_fails_closed() {
    for (file, damage) in [
        ("root.json", "truncate"),
        ("timestamp.json", "truncate"),
        ("snapshot.json", "flip"),
        ("semithin-state", "garbage"),
    ] {
        let w = World::new(&[]);
        ok(&w.refresh());
        w.sim(&["publish"]);
        let p = w.path(&format!("client/{file}"));
        let mut bytes = std::fs::read(&p).unwrap();
        match damage {
            "truncate" => bytes.truncate(bytes.len() / 2),
            "flip" => {
                // Change a signed value: the file still parses, the signature no longer holds.
                let s = String::from_utf8(bytes).unwrap().replacen(
                    "\"version\": 1",
                    "\"version\": 7",
                    1,
                );
                bytes = s.into_bytes();
            }
            _ => bytes = b"not json".to_vec(),
        }
        std::fs::write(&p, &bytes).unwrap();
        refused(&w.refresh(), "damaged");
        // Still damaged: nothing was silently replaced or skipped.
        assert_eq!(std::fs::read(&p).unwrap(), bytes, "{file}");
    }
}

#[test]
fn setting_the_clock_back_does_not_revive_expired_metadata() {
    let w = World::new(&[]);
    // A run five days ahead succeeds (everything expires in 30 days).
    ok(&w.client(&["refresh"], Some("+5 days")));
    // The repository then serves a timestamp that expires in one day: fine for a client that
    // believes it is today, expired for one that has seen five days from now.
    w.sim(&["set", "timestamp", "expires", "86400"]);
    w.sim(&["set", "timestamp", "version", "9"]);
    refused(&w.refresh(), "timestamp: expired");
    // A fresh client with no history accepts it: the difference is the remembered time.
    let fresh = w.path("fresh");
    let init = Command::new(BIN)
        .args(["tuf-client", "--metadata-dir"])
        .arg(&fresh)
        .arg("init")
        .arg(w.path("repo/initial_root.json"))
        .output()
        .unwrap();
    ok(&init);
    let out = Command::new(BIN)
        .args(["tuf-client", "--metadata-dir"])
        .arg(&fresh)
        .arg("--metadata-url")
        .arg(w.url("metadata"))
        .arg("refresh")
        .output()
        .unwrap();
    ok(&out);
}

#[test]
fn kill_while_persisting_leaves_old_or_new_state() {
    let w = World::new(&[]);
    ok(&w.refresh());
    for round in 0..12u64 {
        w.sim(&["publish"]);
        let before = w.trusted("timestamp").unwrap();
        let mut child = Command::new(BIN)
            .arg("tuf-client")
            .arg("--metadata-dir")
            .arg(w.path("client"))
            .arg("--metadata-url")
            .arg(w.url("metadata"))
            .arg("refresh")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(round * 4));
        let _ = child.kill();
        child.wait().unwrap();
        // Every trusted file is whole: the version it had or the new one.
        for role in ["root", "timestamp", "snapshot", "targets"] {
            if let Some(v) = w.trusted(role) {
                assert!(v >= 1, "{role}");
            } else {
                assert!(role != "root" && role != "timestamp", "{role} vanished");
            }
        }
        let after = w.trusted("timestamp").unwrap();
        assert!(
            after == before || after == before + 1,
            "timestamp {before} -> {after}"
        );
        // And the next run completes from there.
        ok(&w.refresh());
    }
}

// The scenarios below follow the tuf-conformance test suite (its tuf_conformance/test_*.py): the
// same repository changes, made with python-tuf, and the same observations: exit codes, the
// requests made, and the files left in the metadata directory.

/// test_basic.py: a first refresh asks for the next root, the timestamp, then the snapshot and
/// targets it names; a refresh with nothing new stops at the timestamp, also when the repository
/// re-signs the same timestamp version with other content or publishes a targets version that no
/// snapshot lists yet. A download right after init refreshes first.
#[test]
fn request_sequences_follow_the_workflow() {
    for consistent in [true, false] {
        let w = World::new(if consistent {
            &[]
        } else {
            &["--no-consistent"]
        });
        let (snapshot, targets) = if consistent {
            ("1.snapshot.json", "1.targets.json")
        } else {
            ("snapshot.json", "targets.json")
        };
        ok(&w.refresh());
        assert_eq!(
            w.meta_requests(),
            ["2.root.json", "timestamp.json", snapshot, targets]
        );
        let all_v1 = roles(&[
            ("root", 1),
            ("snapshot", 1),
            ("targets", 1),
            ("timestamp", 1),
        ]);
        assert_eq!(w.trusted_roles(), all_v1);
        w.clear_log();
        ok(&w.refresh());
        assert_eq!(w.meta_requests(), ["2.root.json", "timestamp.json"]);
        // Timestamp v1 again, now naming a snapshot v100 that does not exist.
        w.sim(&["set-meta", "timestamp", "snapshot.json", "100"]);
        w.clear_log();
        ok(&w.refresh());
        assert_eq!(w.meta_requests(), ["2.root.json", "timestamp.json"]);
        let ts: serde_json::Value = serde_json::from_slice(&w.trusted_bytes("timestamp")).unwrap();
        assert_eq!(ts["signed"]["meta"]["snapshot.json"]["version"], 1);
        // Targets v2, which no snapshot lists.
        w.sim(&["publish", "targets"]);
        w.clear_log();
        ok(&w.refresh());
        assert_eq!(w.meta_requests(), ["2.root.json", "timestamp.json"]);
        assert_eq!(w.trusted_roles(), all_v1);
    }
    let w = World::new(&[]);
    refused(&w.download("nonexistent artifact"), "not listed");
    assert_eq!(
        w.meta_requests(),
        [
            "2.root.json",
            "timestamp.json",
            "1.snapshot.json",
            "1.targets.json"
        ]
    );
    assert_eq!(w.trusted("targets"), Some(1));
}

/// test_basic.py: when a refresh fails, the roles verified before the failure are trusted and
/// stored, the failing one and those after it are not. Covers missing files (404), unsigned
/// metadata, a version other than the one in the URL, and a file of the wrong type.
#[test]
fn a_failed_refresh_keeps_what_was_verified_before() {
    type Case = (
        &'static str,
        bool,
        &'static [&'static [&'static str]],
        &'static str,
        &'static str,
        &'static [(&'static str, u64)],
    );
    // name, refresh once first, repository changes, error, last request, trusted afterwards
    let cases: &[Case] = &[
        (
            "snapshot 404",
            true,
            &[&["set-meta", "timestamp", "snapshot.json", "2", "--bump"]],
            "2.snapshot.json: not found",
            "2.snapshot.json",
            &[
                ("root", 1),
                ("snapshot", 1),
                ("targets", 1),
                ("timestamp", 2),
            ],
        ),
        (
            "targets 404",
            true,
            &[
                &["set-meta", "snapshot", "targets.json", "2", "--bump"],
                &["publish", "timestamp"],
            ],
            "2.targets.json: not found",
            "2.targets.json",
            &[
                ("root", 1),
                ("snapshot", 2),
                ("targets", 1),
                ("timestamp", 2),
            ],
        ),
        (
            "timestamp 404",
            true,
            &[&["unserve", "timestamp.json"]],
            "timestamp.json: not found",
            "timestamp.json",
            &[
                ("root", 1),
                ("snapshot", 1),
                ("targets", 1),
                ("timestamp", 1),
            ],
        ),
        (
            "unsigned root",
            false,
            &[&["bump-root"], &["sign", "root", "none"]],
            "root: 0 valid signature(s)",
            "2.root.json",
            &[("root", 1)],
        ),
        (
            "unsigned timestamp",
            false,
            &[&["bump-root"], &["publish"], &["sign", "timestamp", "none"]],
            "timestamp: 0 valid signature(s)",
            "timestamp.json",
            &[("root", 2)],
        ),
        (
            "unsigned snapshot",
            false,
            &[
                &["bump-root"],
                &["publish", "targets", "snapshot"],
                &["sign", "snapshot", "none"],
                &["publish", "timestamp"],
            ],
            "snapshot: 0 valid signature(s)",
            "2.snapshot.json",
            &[("root", 2), ("timestamp", 2)],
        ),
        (
            "unsigned targets",
            false,
            &[
                &["bump-root"],
                &["publish", "targets"],
                &["sign", "targets", "none"],
                &["publish", "snapshot", "timestamp"],
            ],
            "targets: 0 valid signature(s)",
            "2.targets.json",
            &[("root", 2), ("snapshot", 2), ("timestamp", 2)],
        ),
        (
            "root version is not the one in its name",
            false,
            &[
                &["bump-root"],
                &["bump-root"],
                &["serve-raw", "2.root.json", "@3.root.json"],
            ],
            "root: expected version 2, got 3",
            "2.root.json",
            &[("root", 1)],
        ),
        (
            "snapshot version is not the one in its name",
            false,
            &[
                &["set", "snapshot", "version", "3"],
                &["serve-raw", "2.snapshot.json", "@3.snapshot.json"],
                &[
                    "set-meta",
                    "timestamp",
                    "snapshot.json",
                    "2",
                    "--bump",
                    "--rehash",
                ],
            ],
            "snapshot: expected version 2, got 3",
            "2.snapshot.json",
            &[("root", 1), ("timestamp", 2)],
        ),
        (
            "targets version is not the one in its name",
            false,
            &[
                &["set", "targets", "version", "3"],
                &["serve-raw", "2.targets.json", "@3.targets.json"],
                &["set-meta", "snapshot", "targets.json", "2", "--bump"],
                &["publish", "timestamp"],
            ],
            "targets: expected version 2, got 3",
            "2.targets.json",
            &[("root", 1), ("snapshot", 2), ("timestamp", 2)],
        ),
        (
            "a snapshot served as the timestamp",
            false,
            &[&["serve-raw", "timestamp.json", "@1.snapshot.json"]],
            "_type is \"snapshot\", expected \"timestamp\"",
            "timestamp.json",
            &[("root", 1)],
        ),
    ];
    for (name, refresh_first, steps, error, last, trusted) in cases {
        eprintln!("case: {name}");
        let w = World::new(&[]);
        if *refresh_first {
            ok(&w.refresh());
        }
        w.sims(steps);
        refused(&w.refresh(), error);
        assert_eq!(w.meta_requests().last().unwrap(), last, "{name}");
        assert_eq!(w.trusted_roles(), roles(trusted), "{name}");
    }
}

/// test_expiration.py: expired timestamp, snapshot and targets are discarded, not stored; the
/// root chain is followed through expired intermediate roots and stored even when the final root
/// has expired (which then stops the refresh); expired trusted timestamp and snapshot still serve
/// to update from.
#[test]
fn expired_metadata_is_never_stored() {
    const DAYS_AGO_5: &str = "-432000";
    type Case = (
        &'static str,
        &'static [&'static [&'static str]],
        &'static str,
        &'static [(&'static str, u64)],
    );
    // role, repository changes, error, trusted afterwards
    let cases: &[Case] = &[
        (
            "timestamp",
            &[
                &["set", "timestamp", "expires", DAYS_AGO_5],
                &["publish", "timestamp"],
            ],
            "timestamp: expired",
            &[
                ("root", 1),
                ("snapshot", 1),
                ("targets", 1),
                ("timestamp", 1),
            ],
        ),
        (
            "snapshot",
            &[
                &["set", "snapshot", "expires", DAYS_AGO_5],
                &["publish", "snapshot", "timestamp"],
            ],
            "snapshot: expired",
            &[
                ("root", 1),
                ("snapshot", 1),
                ("targets", 1),
                ("timestamp", 2),
            ],
        ),
        (
            "targets",
            &[&["set", "targets", "expires", DAYS_AGO_5], &["publish"]],
            "targets: expired",
            &[
                ("root", 1),
                ("snapshot", 2),
                ("targets", 1),
                ("timestamp", 2),
            ],
        ),
        (
            "final root",
            &[&["bump-root", "--expires", "-86400"], &["publish"]],
            "root: expired",
            &[
                ("root", 2),
                ("snapshot", 1),
                ("targets", 1),
                ("timestamp", 1),
            ],
        ),
    ];
    for (name, steps, error, trusted) in cases {
        eprintln!("case: {name}");
        let w = World::new(&[]);
        ok(&w.refresh());
        w.sims(steps);
        refused(&w.refresh(), error);
        assert_eq!(w.trusted_roles(), roles(trusted), "{name}");
    }

    // Root v2 expired yesterday, v3 is valid: the walk goes through.
    let w = World::new(&[]);
    w.sims(&[
        &["bump-root", "--expires", "-86400"],
        &["bump-root", "--expires", "2592000"],
    ]);
    ok(&w.refresh());
    assert_eq!(w.trusted("root"), Some(3));

    // The trusted timestamp expires on day 7, the repository publishes a new one expiring on
    // day 21 with new snapshot and targets: on day 18 the refresh succeeds.
    let w = World::new(&[]);
    w.sim(&["set", "timestamp", "expires", "604800"]);
    ok(&w.refresh());
    w.sims(&[
        &["publish", "targets", "snapshot"],
        &["set", "timestamp", "expires", "1814400"],
        &["publish", "timestamp"],
    ]);
    ok(&w.client(&["refresh"], Some("+18 days")));
    assert_eq!(
        w.trusted_roles(),
        roles(&[
            ("root", 1),
            ("snapshot", 2),
            ("targets", 2),
            ("timestamp", 2)
        ])
    );
}

/// test_keys.py test_keytype_and_scheme: the key types and schemes of the specification. Every
/// role signed with keys of the type; then a root key of the type raises the root threshold, and a
/// root whose signature by it is plausible but wrong is refused.
#[test]
fn every_key_type_of_the_specification_verifies() {
    for kt in ["ed25519", "ecdsa", "rsa-pss", "rsa-pkcs1"] {
        eprintln!("key type: {kt}");
        let w = World::new(&["--keytype", kt]);
        w.sim(&["add-target", "file.txt", kt]);
        ok(&w.download("file.txt"));
        w.sims(&[
            &["add-key", "root", "--keytype", kt],
            &["threshold", "root", "2"],
        ]);
        ok(&w.refresh());
        assert_eq!(w.trusted("root"), Some(3));
        w.sim(&["bump-root", "--corrupt-keytype", kt]);
        refused(
            &w.refresh(),
            "root: 1 valid signature(s) from authorised keys, threshold is 2",
        );
        assert_eq!(w.trusted("root"), Some(3));
    }
}

/// test_keys.py: a key id may sign only once, even when the threshold is met; a bad signature
/// next to enough good ones does no harm; keys that are listed but do not sign do not count.
#[test]
fn signatures_are_counted_as_the_specification_says() {
    for role in ["timestamp", "snapshot"] {
        let w = World::new(&[]);
        let then: &[&str] = if role == "snapshot" {
            &["publish", "timestamp"]
        } else {
            &["sign", "timestamp", "repeat"]
        };
        w.sims(&[&["publish", role], &["sign", role, "repeat"], then]);
        refused(&w.refresh(), &format!("{role}: key id"));
        assert_eq!(w.trusted(role), None);
    }

    // Two timestamp keys, threshold 1: the second signature is empty or wrong.
    let w = World::new(&[]);
    w.sim(&["add-key", "timestamp"]);
    for mode in ["second-wrong", "second-empty"] {
        w.sims(&[&["publish", "timestamp"], &["sign", "timestamp", mode]]);
        ok(&w.refresh());
    }
    assert_eq!(w.trusted("timestamp"), Some(3));

    // Snapshot threshold 3 with three signing keys; then two more keys listed in root that never
    // sign, fine; then threshold 5, which three signatures do not meet: root is updated, the
    // snapshot is not, and the one trusted before stays on disk.
    let w = World::new(&[]);
    ok(&w.refresh());
    w.sims(&[
        &["threshold", "snapshot", "3"],
        &["publish", "snapshot", "timestamp"],
    ]);
    ok(&w.refresh());
    assert_eq!(w.trusted("snapshot"), Some(2));
    w.sims(&[
        &["add-key", "snapshot", "--not-signing"],
        &["add-key", "snapshot", "--not-signing"],
        &["publish", "snapshot", "timestamp"],
    ]);
    ok(&w.refresh());
    assert_eq!(w.trusted("root"), Some(4));
    assert_eq!(w.trusted("snapshot"), Some(3));
    w.sims(&[
        &["threshold", "snapshot", "5", "--keep-keys"],
        &["publish", "snapshot", "timestamp"],
    ]);
    refused(
        &w.refresh(),
        "snapshot: 3 valid signature(s) from authorised keys, threshold is 5",
    );
    assert_eq!(w.trusted("root"), Some(5));
    assert_eq!(w.trusted("snapshot"), Some(3));
}

/// test_updater_key_rotations.py test_root_rotation: sequences of root versions, each with its
/// keys (indices into a pool of keys), threshold and signing keys. The client starts from the
/// first and stores the last one, or the one before it when the last is not signed by a
/// threshold of both the old and the new root keys.
#[test]
fn root_rotations_need_old_and_new_thresholds() {
    type Case = (&'static str, &'static [[&'static str; 3]], bool);
    // name, root versions as [keys, threshold, signing keys], whether the last one is accepted
    let cases: &[Case] = &[
        (
            "1-of-1 key rotation",
            &[["1", "1", "1"], ["2", "1", "2,1"], ["2", "1", "2"]],
            true,
        ),
        (
            "1-of-1 key rotation, unused signatures",
            &[
                ["1", "1", "3,1,4"],
                ["2", "1", "3,2,1,4"],
                ["2", "1", "3,2,4"],
            ],
            true,
        ),
        (
            "3-of-5, different key combinations",
            &[
                ["0,1,2,3,4", "3", "0,2,4"],
                ["0,1,2,3,4", "3", "0,4,1"],
                ["0,1,2,3,4", "3", "0,1,3"],
                ["0,1,2,3,4", "3", "0,1,3"],
            ],
            true,
        ),
        (
            "3-of-5, one key rotated",
            &[["0,1,2,3,4", "3", "0,2,4"], ["0,1,3,4,5", "3", "0,4,1"]],
            true,
        ),
        (
            "3-of-5, one key rotated with an intermediate step",
            &[
                ["0,1,2,3,4", "3", "0,2,4"],
                ["0,1,3,4,5", "3", "0,2,4,5"],
                ["0,1,3,4,5", "3", "0,4,5"],
            ],
            true,
        ),
        (
            "3-of-5, all keys rotated with an intermediate step",
            &[
                ["0,1,2,3,4", "3", "0,2,4"],
                ["5,6,7,8,9", "3", "0,2,4,5,6,7"],
                ["5,6,7,8,9", "3", "5,6,7"],
            ],
            true,
        ),
        (
            "1-of-3 to 2-of-3",
            &[["1,2,3", "1", "1"], ["1,2,3", "2", "1,2"]],
            true,
        ),
        (
            "2-of-3 to 1-of-3",
            &[
                ["1,2,3", "2", "1,2"],
                ["1,2,3", "1", "1,2"],
                ["1,2,3", "1", "1"],
            ],
            true,
        ),
        (
            "1-of-1 to 2-of-2",
            &[["1", "1", "1"], ["1,2", "2", "1,2"]],
            true,
        ),
        (
            "1-of-1 rotation not signed with the old key",
            &[["1", "1", "1"], ["2", "1", "2,3,4"]],
            false,
        ),
        (
            "1-of-1 rotation not signed with the new key",
            &[["1", "1", "1"], ["2", "1", "1,3,4"]],
            false,
        ),
        (
            "3-of-5 rotation not signed with 3 new keys",
            &[["0,1,2,3,4", "3", "0,2,4"], ["0,1,3,4,5", "3", "0,2,4"]],
            false,
        ),
        (
            "3-of-5 rotation not signed with 3 old keys",
            &[["0,1,2,3,4", "3", "0,2,4"], ["0,1,3,4,5", "3", "0,4,5"]],
            false,
        ),
        (
            "1-of-3 to 2-of-3, new threshold not met",
            &[["1,2,3", "1", "1"], ["1,2,3", "2", "2"]],
            false,
        ),
        (
            "2-of-3 to 1-of-3, old threshold not met",
            &[["1,2,3", "2", "1,2"], ["1,2,3", "1", "1"]],
            false,
        ),
    ];
    // One repository for all cases: each starts a client at its own first root version.
    let w = World::new(&[]);
    for (name, versions, accepted) in cases {
        eprintln!("case: {name}");
        let first = w.repo_version("root") + 1;
        let steps: Vec<Vec<&str>> = versions
            .iter()
            .map(|[keys, threshold, sigs]| vec!["keys", "root", keys, threshold, sigs])
            .collect();
        let steps: Vec<&[&str]> = steps.iter().map(Vec::as_slice).collect();
        w.sims(&steps);
        w.reinit(&format!("{first}.root.json"));
        let last = w.repo_version("root");
        let expected = if *accepted {
            ok(&w.refresh());
            last
        } else {
            refused(&w.refresh(), "root: ");
            last - 1
        };
        assert_eq!(
            w.trusted_bytes("root"),
            w.served(&format!("{expected}.root.json")),
            "{name}"
        );
    }
}

/// test_updater_key_rotations.py test_non_root_rotations: the keys, threshold and signatures of
/// timestamp, snapshot and targets change in turn (each time in a new root); the client follows
/// and stores exactly what the repository serves, or refuses when the threshold is not met.
#[test]
fn non_root_key_changes_are_followed() {
    // name, [keys, threshold, signing keys], whether accepted
    let cases: &[(&str, [&str; 3], bool)] = &[
        ("1-of-1 key rotation", ["2", "1", "2"], true),
        ("1-of-1, unused signatures", ["1", "1", "3,1,4"], true),
        (
            "1-of-1, not signed with the new key",
            ["2", "1", "1,3,4"],
            false,
        ),
        (
            "3-of-5, signed by keys 0, 2 and 4 of which 2 is not listed",
            ["0,1,3,4,5", "3", "0,2,4"],
            false,
        ),
        ("3-of-5, two signatures", ["0,1,3,4,5", "3", "0,4"], false),
        (
            "3-of-5, first combination",
            ["0,1,2,3,4", "3", "0,2,4"],
            true,
        ),
        (
            "3-of-5, second combination",
            ["0,1,2,3,4", "3", "0,4,1"],
            true,
        ),
        (
            "3-of-5, third combination",
            ["0,1,2,3,4", "3", "0,1,3"],
            true,
        ),
        (
            "3-of-5, fourth combination",
            ["0,1,2,3,4", "3", "1,2,3"],
            true,
        ),
        (
            "3-of-5, fifth combination",
            ["0,1,2,3,4", "3", "2,3,4"],
            true,
        ),
    ];
    for (name, [keys, threshold, sigs], accepted) in cases {
        eprintln!("case: {name}");
        let w = World::new(&[]);
        ok(&w.refresh());
        for role in ["timestamp", "snapshot", "targets"] {
            w.sim(&["keys", role, keys, threshold, sigs]);
            if *accepted {
                ok(&w.refresh());
                let served = match role {
                    "timestamp" => "timestamp.json".to_owned(),
                    _ => format!("{}.{role}.json", w.repo_version(role)),
                };
                assert_eq!(w.trusted_bytes(role), w.served(&served), "{name}: {role}");
            } else {
                refused(&w.refresh(), "valid signature(s)");
            }
        }
    }
}

/// A delegating role that gives a delegated role new keys: the delegated metadata trusted
/// before no longer verifies, and the new version is used (as python-tuf does) instead of the
/// old file being taken for damage.
#[test]
fn delegated_key_changes_are_followed() {
    let w = World::new(&[]);
    w.sims(&[
        &["delegate", "A", "a/*"],
        &["add-target", "a/one", "one", "--role", "A"],
    ]);
    ok(&w.download("a/one"));
    w.sims(&[
        &["delegate", "A", "a/*", "--new-key"],
        &["add-target", "a/two", "two", "--role", "A"],
    ]);
    ok(&w.download("a/two"));
    assert_eq!(w.trusted("A"), Some(w.repo_version("A")));
    assert_eq!(w.artifacts(), ["one", "two"]);
}

/// A diamond: A and B both delegate C, B with a key that never signs C. C's metadata verified on
/// the way through A must not be trusted on the way through B: in one run, a target only B
/// delegates to C is refused (C lacks a threshold of B's keys for it), before as after the
/// target that A delegates to C was found; alone it is refused too, and nothing of it is
/// downloaded.
#[test]
fn a_role_delegated_by_two_parents_is_verified_against_each_delegator() {
    let w = World::new(&[]);
    w.sims(&[
        &["delegate", "A", "*/*", "--no-publish"],
        &["delegate", "B", "*/*", "--no-publish"],
        &["delegate", "C", "a/*", "--parent", "A", "--no-publish"],
        &[
            "delegate",
            "C",
            "b/*",
            "--parent",
            "B",
            "--foreign-key",
            "--no-publish",
        ],
        &["publish", "C", "A", "B", "targets", "snapshot", "timestamp"],
        &["add-target", "a/ok", "through A", "--role", "C"],
        &["add-target", "b/evil", "through B", "--role", "C"],
    ]);
    let base = w.url("targets");
    let dir = w.path("artifacts");
    let download = |names: &[&str]| {
        let mut args = Vec::new();
        for n in names {
            args.extend(["--target-name", n]);
        }
        args.extend([
            "--target-base-url",
            &base,
            "--target-dir",
            dir.to_str().unwrap(),
            "download",
        ]);
        w.client(&args, None)
    };
    // the target A delegates: found, C verified with A's delegation of it
    ok(&download(&["a/ok"]));
    assert_eq!(w.artifacts(), ["through A"]);
    // in the same run after it: C is checked against B's keys, and refused
    refused(&download(&["a/ok", "b/evil"]), "C: 0 valid signature(s)");
    refused(&download(&["b/evil"]), "C: 0 valid signature(s)");
    assert_eq!(w.artifacts(), ["through A"]);
    // the trusted copy of C is still what A's delegation verified: a/ok is still found
    ok(&download(&["a/ok"]));
}

/// test_rollback.py fast-forward recovery: after an attacker pushed timestamp, snapshot or
/// targets to a huge version, rotating the keys of the timestamp or snapshot role lets the
/// repository go back to small versions.
#[test]
fn key_rotation_recovers_from_fast_forward_attacks() {
    type Steps = &'static [&'static [&'static str]];
    // role, the attack, the recovery
    let cases: &[(&str, Steps, Steps)] = &[
        (
            "timestamp",
            &[&["set", "timestamp", "version", "99999"]],
            &[
                &["rotate", "timestamp"],
                &["set", "timestamp", "version", "1"],
            ],
        ),
        (
            "snapshot",
            &[
                &["set", "snapshot", "version", "99999"],
                &["publish", "timestamp"],
            ],
            &[
                &["rotate", "snapshot"],
                &["rotate", "timestamp"],
                &["set", "snapshot", "version", "1"],
                &["set", "timestamp", "version", "1"],
                &["publish", "timestamp"],
            ],
        ),
        (
            "targets",
            &[
                &["set", "targets", "version", "99999"],
                &["publish", "snapshot", "timestamp"],
            ],
            &[
                &["rotate", "snapshot"],
                &["set", "targets", "version", "1"],
                &["publish", "snapshot", "timestamp"],
            ],
        ),
    ];
    for (role, attack, recovery) in cases {
        eprintln!("case: {role}");
        let w = World::new(&[]);
        ok(&w.refresh());
        w.sims(attack);
        ok(&w.refresh());
        assert_eq!(w.trusted(role), Some(99999), "{role}");
        w.sims(recovery);
        ok(&w.refresh());
        assert!(w.trusted(role).unwrap() < 3, "{role}");
        // And on from there.
        w.sim(&["publish"]);
        ok(&w.refresh());
    }
}

/// test_rollback.py: rollback attacks on timestamp, snapshot and targets are refused, with and
/// without lengths and hashes in the meta entries, and the trusted files stay as they were; the
/// client asks for nothing after a refused timestamp.
#[test]
fn rollback_attacks_leave_the_trusted_files() {
    for hashes in ["--meta-hashes", "--no-meta-hashes"] {
        // A snapshot version that timestamp does not name is never fetched.
        let w = World::new(&[hashes]);
        w.sim(&["publish", "snapshot", "timestamp"]);
        ok(&w.refresh());
        w.sim(&["set", "snapshot", "version", "1"]);
        w.clear_log();
        ok(&w.refresh());
        assert_eq!(w.meta_requests(), ["2.root.json", "timestamp.json"]);
        assert_eq!(w.trusted("snapshot"), Some(2));

        // A timestamp older than the trusted one.
        w.sims(&[
            &["set", "snapshot", "version", "2"],
            &["publish", "timestamp"],
        ]);
        ok(&w.refresh());
        w.sim(&["set", "timestamp", "version", "2"]);
        w.clear_log();
        refused(
            &w.refresh(),
            "timestamp: version 2 is older than the trusted version 3",
        );
        assert_eq!(w.meta_requests(), ["2.root.json", "timestamp.json"]);

        // A new timestamp naming an older snapshot.
        w.sim(&["set", "timestamp", "version", "3"]);
        ok(&w.refresh());
        w.sims(&[
            &["set", "snapshot", "version", "1"],
            &["publish", "timestamp"],
        ]);
        w.clear_log();
        refused(&w.refresh(), "snapshot (in timestamp): version 1 is older");
        assert_eq!(w.meta_requests(), ["2.root.json", "timestamp.json"]);
        assert_eq!(
            w.trusted_roles(),
            roles(&[
                ("root", 1),
                ("snapshot", 2),
                ("targets", 1),
                ("timestamp", 3)
            ])
        );

        // A new snapshot naming an older targets.
        let w = World::new(&[hashes]);
        w.sim(&["publish"]);
        ok(&w.refresh());
        w.sims(&[
            &["set", "targets", "version", "1"],
            &["publish", "snapshot", "timestamp"],
        ]);
        refused(
            &w.refresh(),
            "targets.json (in snapshot): version 1 is older",
        );
        assert_eq!(
            w.trusted_roles(),
            roles(&[
                ("root", 1),
                ("snapshot", 2),
                ("targets", 2),
                ("timestamp", 3)
            ])
        );
    }
}

/// test_updater_delegation_graphs.py test_graph_traversal: delegated roles are visited in
/// pre-order depth-first order, in their order in the delegating metadata; a terminating
/// delegation ends the search after its own subtree; roles whose paths do not match are not
/// fetched; a cycle is walked once; a role delegated twice is fetched once. Every visited role
/// is stored.
#[test]
fn delegation_graphs_are_walked_depth_first() {
    type Delegation = (&'static str, &'static str, bool, &'static str);
    // name, delegations as (delegator, role, terminating, paths), roles fetched in order
    let cases: &[(&str, &[Delegation], &[&str])] = &[
        ("basic", &[("targets", "A", false, "*")], &["A"]),
        (
            "single level",
            &[("targets", "A", false, "*"), ("targets", "B", false, "*")],
            &["A", "B"],
        ),
        (
            "two levels",
            &[
                ("targets", "A", false, "*"),
                ("targets", "B", false, "*"),
                ("B", "C", false, "*"),
            ],
            &["A", "B", "C"],
        ),
        (
            "two levels, depth first",
            &[
                ("targets", "A", false, "*"),
                ("targets", "B", false, "*"),
                ("A", "C", false, "*"),
                ("A", "D", false, "*"),
            ],
            &["A", "C", "D", "B"],
        ),
        (
            "three levels, depth first",
            &[
                ("targets", "A", false, "*"),
                ("targets", "B", false, "*"),
                ("A", "C", false, "*"),
                ("C", "D", false, "*"),
            ],
            &["A", "C", "D", "B"],
        ),
        (
            "two levels, terminating",
            &[
                ("targets", "A", false, "*"),
                ("targets", "B", false, "*"),
                ("A", "C", true, "*"),
                ("A", "D", false, "*"),
            ],
            &["A", "C"],
        ),
        (
            "three levels, terminating",
            &[
                ("targets", "A", false, "*"),
                ("targets", "B", false, "*"),
                ("A", "C", true, "*"),
                ("C", "D", false, "*"),
            ],
            &["A", "C", "D"],
        ),
        (
            "two levels, paths not matching",
            &[
                ("targets", "A", false, "*.py"),
                ("targets", "B", false, "*"),
                ("A", "C", false, "*"),
            ],
            &["B"],
        ),
        (
            "three levels, paths not matching",
            &[
                ("targets", "A", false, "*"),
                ("targets", "B", false, "*"),
                ("A", "C", false, "*.py"),
                ("C", "D", false, "*"),
            ],
            &["A", "B"],
        ),
        (
            "cycle",
            &[
                ("targets", "A", false, "*"),
                ("targets", "B", false, "*"),
                ("B", "C", false, "*"),
                ("C", "D", false, "*"),
                ("D", "B", false, "*"),
            ],
            &["A", "B", "C", "D"],
        ),
        (
            "two roles delegating to a third",
            &[
                ("targets", "A", false, "*"),
                ("targets", "B", false, "*"),
                ("B", "C", false, "*"),
                ("A", "C", false, "*"),
            ],
            &["A", "C", "B"],
        ),
        (
            "two roles delegating to a third, different paths",
            &[
                ("targets", "A", false, "*"),
                ("targets", "B", false, "*"),
                ("B", "C", false, "*"),
                ("A", "C", false, "*.py"),
            ],
            &["A", "B", "C"],
        ),
    ];
    for (name, delegations, visited) in cases {
        eprintln!("case: {name}");
        let w = World::new(&[]);
        let mut steps: Vec<Vec<&str>> = Vec::new();
        let mut roles = vec!["publish"];
        for (delegator, role, terminating, paths) in *delegations {
            let mut step = vec![
                "delegate",
                role,
                paths,
                "--parent",
                delegator,
                "--no-publish",
            ];
            if *terminating {
                step.push("--terminating");
            }
            steps.push(step);
            for r in [role, delegator] {
                if !roles.contains(r) {
                    roles.push(r);
                }
            }
        }
        roles.extend(["snapshot", "timestamp"]);
        steps.push(roles);
        let steps: Vec<&[&str]> = steps.iter().map(Vec::as_slice).collect();
        w.sims(&steps);
        ok(&w.refresh());
        w.clear_log();
        refused(&w.download("missingpath"), "not listed");
        assert_eq!(w.delegated_requests(), *visited, "{name}");
        for role in *visited {
            assert!(w.trusted(role).is_some(), "{name}: {role}");
        }
    }
}

/// test_updater_delegation_graphs.py test_targetfile_search: patterns with several path
/// components and several patterns per role; a target is looked for only along delegations whose
/// patterns match it, and is not found in a role the chain does not delegate it to.
/// Also delegation by hash prefixes, and without consistent snapshots.
#[test]
fn targets_are_searched_along_matching_delegations() {
    for consistent in [true, false] {
        let w = World::new(if consistent {
            &[]
        } else {
            &["--no-consistent"]
        });
        w.sims(&[
            &["delegate", "A", "*.doc,*.md", "--no-publish"],
            &["delegate", "B", "releases/*/*", "--no-publish"],
            &[
                "delegate",
                "C",
                "releases/x/*",
                "--parent",
                "B",
                "--no-publish",
            ],
            &[
                "delegate",
                "D",
                "releases/y/*.zip",
                "--parent",
                "B",
                "--no-publish",
            ],
            &[
                "publish",
                "A",
                "B",
                "C",
                "D",
                "targets",
                "snapshot",
                "timestamp",
            ],
            &["add-target", "targetfile", "targetfile content"],
            &["add-target", "README.md", "README by A", "--role", "A"],
            &[
                "add-target",
                "releases/x/x_v1",
                "x release by C",
                "--role",
                "C",
            ],
            &[
                "add-target",
                "releases/y/y_v1.zip",
                "y release by D",
                "--role",
                "D",
            ],
            &[
                "add-target",
                "releases/z/z_v1.zip",
                "z release by D",
                "--role",
                "D",
            ],
        ]);
        let cases: &[(&str, Option<&str>, &[&str])] = &[
            ("targetfile", Some("targetfile content"), &[]),
            ("README.md", Some("README by A"), &["A"]),
            ("releases/x/x_v1", Some("x release by C"), &["B", "C"]),
            ("releases/y/y_v1.zip", Some("y release by D"), &["B", "D"]),
            ("releases/z/z_v1.zip", None, &["B"]),
        ];
        for (path, content, visited) in cases {
            // A fresh client for each search, as the suite has.
            w.reinit("1.root.json");
            ok(&w.refresh());
            w.clear_log();
            match content {
                Some(c) => {
                    ok(&w.download(path));
                    let local = w.path(&format!("artifacts/{}", path.replace('/', "%2F")));
                    assert_eq!(std::fs::read_to_string(local).unwrap(), *c);
                }
                None => refused(&w.download(path), "not listed"),
            }
            assert_eq!(w.delegated_requests(), *visited, "{path}");
        }

        // Delegation by hash prefix: H is asked only for the paths whose SHA-256 starts with
        // one of its prefixes.
        let hash = |p: &str| sh(&format!("printf %s {} | sha256sum", q(Path::new(p))));
        let (inside, outside) = ("hashed/in", "hashed/out");
        let inside_hash = hash(inside);
        let prefix = inside_hash.get(..2).unwrap();
        assert!(!hash(outside).starts_with(prefix));
        w.sims(&[
            &["delegate", "H", prefix, "--hash-prefixes"],
            &["add-target", inside, "hashed in", "--role", "H"],
            &["add-target", outside, "hashed out", "--role", "H"],
        ]);
        w.clear_log();
        ok(&w.download(inside));
        assert_eq!(w.delegated_requests(), ["H"]);
        w.reinit("1.root.json");
        ok(&w.refresh());
        w.clear_log();
        refused(&w.download(outside), "not listed");
        assert_eq!(w.delegated_requests(), Vec::<String>::new());
    }
}

/// test_updater_delegation_graphs.py test_succinct_roles_graph_traversal: with succinct hash
/// bin delegations (TAP 15) the one bin a path hashes to is fetched and stored, and nothing else.
#[test]
fn succinct_hash_bins_are_searched() {
    let cases = [
        ("1", "boo", "bin-0"),
        ("1", "too", "bin-1"),
        ("2", "foo", "bin-0"),
        ("2", "doo", "bin-1"),
        ("2", "too", "bin-2"),
        ("2", "bar", "bin-3"),
        ("8", "bar", "bin-fc"),
    ];
    for (bit_length, path, bin) in cases {
        let w = World::new(&[]);
        w.sim(&["succinct", bit_length, "bin"]);
        ok(&w.refresh());
        w.clear_log();
        refused(&w.download(path), "not listed");
        assert_eq!(w.delegated_requests(), [bin], "{bit_length} {path}");
        assert_eq!(w.trusted_roles().len(), 5, "{bit_length} {path}");
        assert!(w.trusted(bin).is_some());
        w.sim(&["add-target", path, "in its bin", "--role", bin]);
        ok(&w.download(path));
    }
}

/// test_expiration.py test_TestDelegateConsistentSnapshotDisabled: a root that turns
/// consistent snapshots off, with delegated roles named "role1", ".." and "."; from then on
/// metadata is asked for without version prefixes.
#[test]
fn consistent_snapshots_can_be_turned_off() {
    let w = World::new(&[]);
    ok(&w.refresh());
    w.sims(&[
        &["bump-root", "--consistent", "no"],
        &["delegate", "role1", "*"],
        &["delegate", "..", "*"],
        &["delegate", ".", "*"],
    ]);
    w.clear_log();
    ok(&w.refresh());
    assert_eq!(
        w.meta_requests(),
        [
            "2.root.json",
            "3.root.json",
            "timestamp.json",
            "snapshot.json",
            "targets.json"
        ]
    );
    w.clear_log();
    refused(&w.download("missingpath"), "not listed");
    assert_eq!(w.delegated_requests(), ["role1", "..", "."]);
    assert_eq!(w.trusted_roles().len(), 7);
}

/// test_quoting_issues.py: role names that are not safe in a URL or a file name are quoted in
/// both (as Python's quote(name, safe="")), and stay inside the metadata directory.
#[test]
fn unusual_role_names_are_quoted() {
    for consistent in [true, false] {
        for role in ["?", "#", "/delegatedrole", "../delegatedrole", ".."] {
            let w = World::new(if consistent {
                &[]
            } else {
                &["--no-consistent"]
            });
            w.sim(&["delegate", role, "*"]);
            refused(&w.download("nonexistent target"), "not listed");
            let quoted = match role {
                "?" => "%3F",
                "#" => "%23",
                "/delegatedrole" => "%2Fdelegatedrole",
                "../delegatedrole" => "..%2Fdelegatedrole",
                _ => "..",
            };
            let expected = if consistent {
                format!("2.{quoted}.json")
            } else {
                format!("{quoted}.json")
            };
            assert_eq!(w.meta_requests().last().unwrap(), &expected, "{role}");
            assert_eq!(w.trusted_roles().len(), 5, "{role}");
            assert!(!w.path("delegatedrole.json").exists());
        }
    }
}

/// test_delegated_expiration.py: a delegated role that has expired is not used, whether it
/// arrives expired or expires while trusted; a newer unexpired version is fetched and used.
#[test]
fn expired_delegated_roles_are_not_used() {
    let w = World::new(&[]);
    w.sims(&[
        &[
            "delegate",
            "delegated",
            "delegatedpath/*",
            "--expires",
            "-86400",
        ],
        &[
            "add-target",
            "delegatedpath/target",
            "delegated content",
            "--role",
            "delegated",
        ],
    ]);
    ok(&w.refresh());
    refused(&w.download("delegatedpath/target"), "delegated: expired");
    assert!(w.artifacts().is_empty());
    assert_eq!(
        w.trusted_roles(),
        roles(&[
            ("root", 1),
            ("snapshot", 3),
            ("targets", 2),
            ("timestamp", 3)
        ])
    );

    for newer in [false, true] {
        let w = World::new(&[]);
        w.sims(&[
            &[
                "delegate",
                "delegated",
                "delegatedpath/*",
                "--expires",
                "604800",
            ],
            &[
                "add-target",
                "delegatedpath/first",
                "first",
                "--role",
                "delegated",
            ],
            &[
                "add-target",
                "delegatedpath/second",
                "second",
                "--role",
                "delegated",
            ],
        ]);
        ok(&w.download("delegatedpath/first"));
        if newer {
            w.sims(&[
                &["set", "delegated", "expires", "1814400"],
                &["publish", "delegated", "snapshot", "timestamp"],
            ]);
            ok(&w.download_at("delegatedpath/second", Some("+18 days")));
            assert_eq!(w.artifacts(), ["first", "second"]);
        } else {
            refused(
                &w.download_at("delegatedpath/second", Some("+18 days")),
                "delegated: expired",
            );
            assert_eq!(w.artifacts(), ["first"]);
        }
    }
}

/// test_file_download.py: artifacts in subdirectories, under hash-prefixed names with
/// consistent snapshots; a repository that swaps artifacts for other bytes gets none of them
/// stored; a changed artifact replaces the old one under the same name.
#[test]
fn artifacts_are_verified_cached_and_replaced() {
    for consistent in [true, false] {
        let w = World::new(if consistent {
            &[]
        } else {
            &["--no-consistent"]
        });
        w.sims(&[
            &[
                "add-target",
                "path/to/a/target_file.txt",
                "target file contents",
            ],
            &["add-target", "another_target_file.txt", "content"],
        ]);
        ok(&w.download("path/to/a/target_file.txt"));
        let hash = sh("printf %s 'target file contents' | sha256sum");
        let expected = if consistent {
            format!("path/to/a/{}.target_file.txt", hash.get(..64).unwrap())
        } else {
            "path/to/a/target_file.txt".to_owned()
        };
        assert_eq!(w.target_requests(), [expected]);
        assert_eq!(w.artifacts(), ["target file contents"]);

        // The repository now serves other bytes for both.
        w.sims(&[
            &[
                "replace-target",
                "path/to/a/target_file.txt",
                "malicious data",
            ],
            &[
                "replace-target",
                "another_target_file.txt",
                "malicious data",
            ],
        ]);
        ok(&w.download("path/to/a/target_file.txt"));
        // (Longer than the metadata says: refused as soon as that shows.)
        refused(
            &w.download("another_target_file.txt"),
            "another_target_file.txt",
        );
        assert_eq!(w.artifacts(), ["target file contents"]);

        // Legitimate changes, each followed by a swap the metadata does not cover.
        for i in 0..3 {
            let (modified, new) = (format!("modified {i}"), format!("new {i}"));
            let new_path = format!("new-target-{i}");
            w.sims(&[
                &["add-target", "path/to/a/target_file.txt", &modified],
                &["add-target", &new_path, &new],
            ]);
            ok(&w.download("path/to/a/target_file.txt"));
            ok(&w.download(&new_path));
            w.sims(&[
                &["replace-target", "path/to/a/target_file.txt", "malicious"],
                &["publish"],
            ]);
            let _ = w.download("path/to/a/target_file.txt");
            let stored =
                std::fs::read_to_string(w.path("artifacts/path%2Fto%2Fa%2Ftarget_file.txt"));
            assert_eq!(stored.unwrap(), modified);
        }
    }
}

/// test_basic.py test_custom_fields, test_metadata_bytes_match: unknown fields anywhere are
/// covered by the signatures and kept; what is stored is the bytes as served. And the
/// specification versions python-tuf accepts (MAJOR.MINOR[.PATCH] with major version 1).
#[test]
fn metadata_is_read_as_other_implementations_write_it() {
    let w = World::new(&[]);
    w.sims(&[
        &["custom", "root"],
        &["custom", "timestamp"],
        &["custom", "snapshot"],
        &["custom", "targets"],
        &["publish"],
    ]);
    ok(&w.refresh());
    assert_eq!(w.trusted("root"), Some(2));
    assert_eq!(w.trusted("targets"), Some(2));
    let root: serde_json::Value = serde_json::from_slice(&w.trusted_bytes("root")).unwrap();
    assert_eq!(root["signed"]["x-custom-field"]["a"], 1);

    // A trailing space makes this serialisation unlike any other.
    w.sim(&["publish", "timestamp"]);
    let mut served = w.served("timestamp.json");
    served.push(b' ');
    std::fs::write(w.path("repo/metadata/timestamp.json"), &served).unwrap();
    ok(&w.refresh());
    assert_eq!(w.trusted_bytes("timestamp"), served);

    let mut version = 3;
    for spec in ["1.0", "1.0.0", "1.0.31", "1.99.0"] {
        version += 1;
        w.sims(&[
            &["set", "timestamp", "version", &version.to_string()],
            &["set", "timestamp", "spec_version", spec],
        ]);
        ok(&w.refresh());
        assert_eq!(w.trusted("timestamp"), Some(version), "{spec}");
    }
    for (spec, error) in [
        ("2.0.0", "spec_version 2.0.0 is not 1.x"),
        ("1", "spec_version \"1\" is not MAJOR.MINOR[.PATCH]"),
        (
            "1.0.0.0",
            "spec_version \"1.0.0.0\" is not MAJOR.MINOR[.PATCH]",
        ),
        ("1.0.x", "spec_version \"1.0.x\" is not MAJOR.MINOR[.PATCH]"),
    ] {
        let w = World::new(&[]);
        w.sims(&[
            &["set", "timestamp", "version", "2"],
            &["set", "timestamp", "spec_version", spec],
        ]);
        refused(&w.refresh(), error);
        assert_eq!(w.trusted("timestamp"), None, "{spec}");
    }
}

/// python-tuf's limits: at most 256 root versions per refresh (the next refresh goes on from
/// there), and the top-level targets role plus at most 32 delegated roles per search.
#[test]
fn root_rotations_and_delegations_are_bounded_as_in_python_tuf() {
    let w = World::new(&[]);
    let bumps: Vec<&[&str]> = vec![&["bump-root"]; 299];
    w.sims(&bumps);
    ok(&w.refresh());
    assert_eq!(w.trusted("root"), Some(257));
    let roots = w
        .meta_requests()
        .iter()
        .filter(|r| r.ends_with(".root.json"))
        .count();
    assert_eq!(roots, 256);
    ok(&w.refresh());
    assert_eq!(w.trusted("root"), Some(300));

    // A chain targets -> D1 -> D2 -> ... -> D34.
    let w = World::new(&[]);
    let names: Vec<String> = (1..=34).map(|i| format!("D{i}")).collect();
    let mut steps: Vec<Vec<&str>> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let parent = if i == 0 {
            "targets"
        } else {
            names[i - 1].as_str()
        };
        steps.push(vec![
            "delegate",
            name,
            "*",
            "--parent",
            parent,
            "--no-publish",
        ]);
    }
    let mut publish = vec!["publish"];
    publish.extend(names.iter().map(String::as_str));
    publish.extend(["targets", "snapshot", "timestamp"]);
    steps.push(publish);
    steps.push(vec!["add-target", "in-32", "found", "--role", "D32"]);
    steps.push(vec!["add-target", "in-33", "too deep", "--role", "D33"]);
    let steps: Vec<&[&str]> = steps.iter().map(Vec::as_slice).collect();
    w.sims(&steps);
    ok(&w.download("in-32"));
    refused(&w.download("in-33"), "not listed");
    assert_eq!(w.trusted("D33"), None);
}
