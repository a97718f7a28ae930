//! The command line as a person meets it: output into a pipe closed early, errors about reaching
//! a server in plain words, misspelt channels, durations and times, usage lines, and machines
//! removed from the fleet.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{BIN, Env, q, sh};
use crate::fleet::{Agent, Server, free_port, image, make_certs, wait_until};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `semithin ARGS` with only these environment variables of ours.
fn bare(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    for v in [
        "SEMITHIN_REPO",
        "SEMITHIN_SERVER",
        "SEMITHIN_ADMIN_TOKEN",
        "SEMITHIN_CA",
        "SEMITHIN_ADMIN_CONFIG",
    ] {
        c.env_remove(v);
    }
    c.env("HOME", "/nonexistent")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Runs `semithin ARGS | READER` in bash with pipefail: semithin's exit status and stderr.
fn piped(env: &Env, args: &str, reader: &str) -> (i32, String) {
    let err = env.path("pipe.err");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; {} --repo {} {args} 2>{} | {reader} >/dev/null",
            q(Path::new(BIN)),
            q(&env.repo),
            q(&err)
        ))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        std::fs::read_to_string(&err).unwrap(),
    )
}

#[test]
fn output_into_a_pipe_closed_early_ends_quietly() {
    let env = Env::new();
    let (a, b) = (env.path("a"), env.path("b"));
    // 3000 new files with long names: `diff` prints about 130 KiB, more than a pipe holds, so
    // it is still writing when `head` has gone.
    sh(&format!(
        "mkdir -p {a} {b}/many && cd {b}/many && for i in $(seq 3000); do echo $i > a-file-with-a-rather-long-name-$i; done",
        a = q(&a),
        b = q(&b)
    ));
    env.commit("c", &a);
    env.commit("c", &b);
    for (args, reader) in [
        ("diff c~1 c", "head -n 1"),
        ("export c --format tar -", "head -c 1000"),
        ("log", "true"),
    ] {
        let (code, err) = piped(&env, args, reader);
        assert_eq!(code, 0, "semithin {args} | {reader}: {err}");
        assert!(
            !err.contains("panicked"),
            "semithin {args} | {reader}: {err}"
        );
        assert_eq!(err, "", "semithin {args} | {reader}");
    }
    // `commit` is slower than `true` is to exit: its first line meets a closed pipe. The
    // commit itself is made.
    let (code, err) = piped(&env, &format!("commit -c c {}", q(&a)), "true");
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let log = env.json(&["log", "-c", "c"]);
    assert_eq!(
        log[0]["versions"].as_array().map(Vec::len),
        Some(3),
        "{log}"
    );
}

#[test]
fn usage_lines_show_no_global_flag_as_required() {
    let out = bare(&["repo", "init"], &[("SEMITHIN_REPO", "/tmp/somewhere")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("Usage: semithin repo init <PATH>"), "{err}");
    let out = bare(
        &["fleet", "assign", "m1"],
        &[
            ("SEMITHIN_SERVER", "http://127.0.0.1:1"),
            ("SEMITHIN_ADMIN_TOKEN", "secret-token-value"),
        ],
    );
    let err = stderr(&out);
    assert!(
        err.contains("Usage: semithin fleet assign <SELECTOR> <CHANNEL>\n"),
        "{err}"
    );
    assert!(!err.contains("secret-token-value"), "{err}");
    // The variables still work: the repository of SEMITHIN_REPO is the one used.
    let env = Env::new();
    let repo = env.repo.display().to_string();
    let out = bare(&["channel", "list"], &[("SEMITHIN_REPO", &repo)]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The admin configuration is documented where people look.
    let out = bare(&["fleet", "--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("SEMITHIN_ADMIN_CONFIG"), "{help}");
    assert!(help.contains("admin_token_file"), "{help}");
}

#[test]
fn a_server_data_directory_given_as_repository_names_its_repo() {
    let env = Env::new();
    let data = env.path("server-data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::rename(&env.repo, data.join("repo")).unwrap();
    let out = bare(&["--repo", data.to_str().unwrap(), "log"], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("is a server's data directory"), "{err}");
    assert!(
        err.contains(&format!("--repo {}/repo", data.display())),
        "{err}"
    );
}

#[test]
fn misspelt_channels_are_refused_with_the_names_meant() {
    let env = Env::new();
    let src = env.path("src");
    sh(&format!("mkdir -p {0} && echo hi > {0}/f", q(&src)));
    let v1 = env.commit("lab/stable", &src);
    // a commit to a near name is refused, and nothing is made
    let err = env.fails(&["commit", "-c", "lab/stabel", src.to_str().unwrap()]);
    assert!(err.contains("did you mean lab/stable?"), "{err}");
    assert!(err.contains("--new-channel"), "{err}");
    let list = env.ok(&["channel", "list"]);
    assert!(!list.contains("lab/stabel"), "{list}");
    // a name far from every channel is made, and said so
    let out = env.run(&["commit", "-c", "kiosk/edge", src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("made the new channel kiosk/edge"),
        "{}",
        stderr(&out)
    );
    // --new-channel makes the near name when it is meant
    env.ok(&[
        "commit",
        "-c",
        "lab/stabel",
        "--new-channel",
        "-m",
        "another version",
        src.to_str().unwrap(),
    ]);
    // a rollout on the misspelt channel of a version that is on the near one names that one
    // (it used to suggest `channel set lab/stabel`); no server is asked
    let refused = |args: &[&str]| {
        let out = bare(
            &[&["--repo", env.repo.to_str().unwrap()], args].concat(),
            &[
                ("SEMITHIN_SERVER", "http://127.0.0.1:1"),
                ("SEMITHIN_ADMIN_TOKEN", "x".repeat(20).as_str()),
            ],
        );
        assert!(!out.status.success());
        stderr(&out)
    };
    let err = refused(&["rollout", "start", "lab/stabel", &v1, "--to", "*"]);
    assert!(err.contains("did you mean lab/stable?"), "{err}");
    assert!(!err.contains("channel set"), "{err}");
    let err = refused(&["rollout", "start", "lab/stabl", &v1, "--to", "*"]);
    assert!(err.contains("no channel named \"lab/stabl\""), "{err}");
    assert!(err.contains("lab/stable?"), "{err}");
}

#[test]
fn durations_share_one_syntax_and_a_start_in_the_past_is_refused() {
    let admin = [
        ("SEMITHIN_SERVER", "http://127.0.0.1:1"),
        ("SEMITHIN_ADMIN_TOKEN", "an-admin-token-of-length"),
    ];
    let err = stderr(&bare(
        &["job", "reboot", "*", "--at", "2020-01-01T00:00:00Z"],
        &admin,
    ));
    assert!(
        err.contains("--at 2020-01-01T00:00:00Z is in the past"),
        "{err}"
    );
    let err = stderr(&bare(&["job", "reboot", "*", "--at", "@1000"], &admin));
    assert!(err.contains("is in the past"), "{err}");
    // one message, with the syntax, for every duration flag
    for args in [
        &["fleet", "token", "create", "--expires-in", "soon"][..],
        &["job", "reboot", "*", "--window", "soon"],
        &[
            "agent",
            "--state",
            "/nonexistent",
            "--interval",
            "soon",
            "status",
        ],
        &["serve", "--max-wait", "soon"],
    ] {
        let err = stderr(&bare(args, &admin));
        assert!(
            err.contains("bad duration \"soon\"") && err.contains("1h30m"),
            "{args:?}: {err}"
        );
    }
    // `--tz` needs `--every`
    let err = stderr(&bare(
        &["job", "reboot", "*", "--tz", "Europe/Madrid"],
        &admin,
    ));
    assert!(err.contains("--every"), "{err}");
}

#[test]
fn durations_time_zones_and_daily_schedules_reach_the_server() {
    let s = Server::start();
    let out = s.ok(&["fleet", "token", "create", "--expires-in", "1h", "--json"]);
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    let left = t["expires_at"].as_i64().unwrap() - t["created_at"].as_i64().unwrap();
    assert_eq!(left, 3600, "{t}");
    let out = s.ok(&[
        "fleet",
        "token",
        "create",
        "--expires-in",
        "2d 3h",
        "--json",
    ]);
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    let left = t["expires_at"].as_i64().unwrap() - t["created_at"].as_i64().unwrap();
    assert_eq!(left, 2 * 86_400 + 3 * 3600, "{t}");
    // a machine for the job
    let token = s.enroll_token(true);
    let a = Agent::new(&s, "m1", &token);
    assert!(a.once().success(), "{}", a.log());
    let out = s.ok(&[
        "job",
        "reboot",
        "m1",
        "--every",
        "@daily",
        "--tz",
        "Europe/Madrid",
        "--window",
        "1h 30m",
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["spec"]["schedule"]["tz"], "Europe/Madrid", "{j}");
    assert_eq!(j["spec"]["schedule"]["window_secs"], 5400, "{j}");
    // the next start is a midnight in Madrid: 23:00 or 22:00 UTC
    let next = j["next_start"].as_i64().unwrap();
    let hour = next.rem_euclid(86_400) / 3600;
    assert!(matches!(hour, 22 | 23), "{next}: {hour}");
    assert_eq!(next % 3600, 0);
    let id = j["id"].as_str().unwrap();
    let status = s.ok(&["job", "status", id]);
    assert!(status.contains("@daily (Europe/Madrid)"), "{status}");
    let out = s.cli(&[
        "job",
        "reboot",
        "m1",
        "--every",
        "@daily",
        "--tz",
        "Mars/Base",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown time zone \"Mars/Base\""),
        "{}",
        stderr(&out)
    );
}

/// A server of ours started by hand, killed at the end.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(data: &Path, port: u16, tls: Option<(&Path, &Path)>) -> Serve {
    let mut c = Command::new(BIN);
    c.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data")
        .arg(data);
    if let Some((cert, key)) = tls {
        c.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
    }
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let s = Serve(child);
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "no server");
        std::thread::sleep(Duration::from_millis(50));
    }
    s
}

#[test]
fn connection_errors_say_what_is_wrong_and_what_to_do() {
    let jargon = [
        "relative URL",
        "InvalidContentType",
        "CaUsedAsEndEntity",
        "UnknownIssuer",
        "hyper",
        "os error",
    ];
    let list = |url: &str, ca: Option<&Path>| {
        let mut env = vec![("SEMITHIN_ADMIN_TOKEN", "an-admin-token-of-length")];
        let ca = ca.map(|c| c.display().to_string());
        if let Some(ca) = &ca {
            env.push(("SEMITHIN_CA", ca.as_str()));
        }
        let out = bare(&["fleet", "list", "--server", url], &env);
        assert!(!out.status.success(), "{url}");
        let err = stderr(&out);
        for j in jargon {
            assert!(!err.contains(j), "{url}: {err}");
        }
        err
    };
    // not a URL
    let err = list("127.0.0.1:8470", None);
    assert!(err.contains("bad server URL \"127.0.0.1:8470\""), "{err}");
    assert!(err.contains("no scheme (http:// or https://)"), "{err}");
    // nothing listening
    let port = free_port();
    let err = list(&format!("http://127.0.0.1:{port}"), None);
    assert!(
        err.contains(&format!(
            "nothing answers at 127.0.0.1:{port} (connection refused)"
        )),
        "{err}"
    );
    // https:// to a plain HTTP server
    let plain = Server::start();
    // the agent says it the same way
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "0".repeat(48)).unwrap();
    let out = bare(
        &[
            "agent",
            "--state",
            dir.path().join("state").to_str().unwrap(),
            "--server",
            &format!("http://127.0.0.1:{port}"),
            "--token-file",
            token.to_str().unwrap(),
            "--trusted-root",
            plain.root_json().to_str().unwrap(),
            "--once",
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "nothing answers at 127.0.0.1:{port} (connection refused)"
        )),
        "{err}"
    );
    for j in jargon {
        assert!(!err.contains(j), "agent: {err}");
    }
    let err = list(&format!("https://127.0.0.1:{}", plain.port), None);
    assert!(err.contains("does not speak HTTPS"), "{err}");
    assert!(
        err.contains(&format!("use http://127.0.0.1:{}", plain.port)),
        "{err}"
    );
    // http:// to an HTTPS server
    let tls = Server::start_tls();
    let err = list(&format!("http://127.0.0.1:{}", tls.port), None);
    assert!(err.contains("does not answer plain HTTP"), "{err}");
    assert!(
        err.contains(&format!("use https://127.0.0.1:{}", tls.port)),
        "{err}"
    );
    // a CA that did not sign the server's certificate
    let (other_ca, _, _) = make_certs(dir.path(), "other");
    let https = format!("https://127.0.0.1:{}", tls.port);
    let err = list(&https, Some(&other_ca));
    assert!(
        err.contains("signed by a CA this client does not trust"),
        "{err}"
    );
    assert!(err.contains("--ca FILE"), "{err}");
    // and the right one works
    let out = bare(
        &["fleet", "list", "--server", &https],
        &[
            ("SEMITHIN_ADMIN_TOKEN", tls.token.as_str()),
            ("SEMITHIN_CA", tls.ca.as_ref().unwrap().to_str().unwrap()),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // a server that presents its CA's certificate as its own
    let (ca, _, _) = make_certs(dir.path(), "selfca");
    let port = free_port();
    let _s = serve(
        &dir.path().join("data"),
        port,
        Some((&ca, &ca.with_file_name("ca.key"))),
    );
    let err = list(&format!("https://127.0.0.1:{port}"), Some(&ca));
    assert!(err.contains("is a CA certificate"), "{err}");
    assert!(err.contains("--tls-cert"), "{err}");
}

#[test]
fn machines_enrolled_with_a_token_file_can_be_removed_and_their_keys_stop_working() {
    let s = Server::start();
    let src = s.path("img");
    image(&src, 1, 3);
    s.release(&src, "lab/stable");
    // the token in a file, not on the command line
    let token = s.enroll_token(true);
    let file = s.path("enroll-token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let a = Agent::new(&s, "m1", "unused");
    let out = Command::new(BIN)
        .arg("agent")
        .arg("--state")
        .arg(&a.state)
        .args(["--server", &s.url, "--name", "m1", "--once"])
        .arg("--token-file")
        .arg(&file)
        .arg("--trusted-root")
        .arg(s.root_json())
        .args(["--inventory-interval", "0", "--verify-interval", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.machines().len(), 1);
    // once enrolled, the file may go
    std::fs::remove_file(&file).unwrap();
    // an unpublished (misspelt) channel is refused, with the name meant
    let out = s.cli(&["fleet", "assign", "m1", "lab/stabel"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("nothing is published on channel \"lab/stabel\""),
        "{err}"
    );
    assert!(err.contains("did you mean lab/stable?"), "{err}");
    assert_eq!(s.machine("m1")["channel"], serde_json::Value::Null);
    s.ok(&["fleet", "assign", "m1", "lab/stable"]);
    s.ok(&["fleet", "assign", "--unpublished", "m1", "lab/next"]);
    assert_eq!(s.machine("m1")["channel"], "lab/next");
    // removing asks first; without a terminal it needs --yes
    let out = s.cli(&["fleet", "remove", "m1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    assert_eq!(s.machines().len(), 1);
    // on a terminal it asks; "n" keeps the machine
    let asked = |answer: &str| {
        let out = Command::new("script")
            .args([
                "-qec",
                &format!("{} fleet remove m1", q(Path::new(BIN))),
                "/dev/null",
            ])
            .env("SEMITHIN_SERVER", &s.url)
            .env("SEMITHIN_ADMIN_TOKEN", &s.token)
            .env("HOME", s.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(answer.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = asked("n\n");
    assert!(
        text.contains("remove 1 machine(s) from the fleet: m1?"),
        "{text}"
    );
    assert!(text.contains("nothing removed"), "{text}");
    assert_eq!(s.machines().len(), 1);
    let out = s.ok(&["fleet", "remove", "m1", "--yes"]);
    assert!(out.contains("removed 1 machine(s): m1"), "{out}");
    assert!(s.machines().is_empty());
    let out = s.cli(&["fleet", "show", "m1"]);
    assert!(!out.status.success());
    // the machine's key opens nothing now, also after a restart of the server
    let status = a.once();
    assert!(!status.success(), "{}", a.log());
    assert!(a.log().contains("enrolled here"), "{}", a.log());
    let out = s.cli(&["fleet", "remove", "m1", "--yes"]);
    assert!(
        stderr(&out).contains("no machine matches m1"),
        "{}",
        stderr(&out)
    );
    let mut s = s;
    s.restart();
    assert!(s.machines().is_empty());
    wait_until("the server answering", 10, || {
        s.get("/api/v1/health").0 == 200
    });
}
