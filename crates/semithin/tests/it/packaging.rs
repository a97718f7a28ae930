//! `packaging/`: the example settings are read by the real parsers, and the systemd units run
//! flags the binary has.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::BIN;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging")
        .canonicalize()
        .expect("the packaging directory")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("semithin-packaging")
        .tempdir()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The example with every commented-out `# key = value` line turned into a setting; the number
/// of lines turned.
fn uncommented(example: &str) -> (String, usize) {
    let mut n = 0;
    let mut out = String::new();
    for line in example.lines() {
        let setting = line.strip_prefix("# ").filter(|rest| {
            rest.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
        });
        match setting {
            Some(s) => {
                n += 1;
                out.push_str(s);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    (out, n)
}

#[test]
fn the_example_agent_settings_are_what_the_agent_reads() {
    let path = packaging().join("agent.toml");
    let c = semithin_agent::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.server.as_deref(), Some("https://updates.example.org"));
    assert_eq!(
        c.trusted_root.as_deref(),
        Some(Path::new("/etc/semithin/root.json"))
    );
    assert_eq!(c.health_deadline_secs, 1800);
    assert_eq!(c.health_checks.len(), 1);
    assert!(c.health_checks[0].contains("$SEMITHIN_DEPLOYMENT"));
    assert_eq!(c.labels.get("site").map(String::as_str), Some("school-12"));
    assert_eq!(c.name, None);

    // The commented-out keys are settings too.
    let dir = tempdir();
    let (all, n) = uncommented(&read(&path));
    assert_eq!(n, 2, "name and token are commented out:\n{all}");
    let all_path = dir.path().join("all.toml");
    std::fs::write(&all_path, &all).unwrap();
    let c = semithin_agent::Config::load(&all_path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.name.as_deref(), Some("lab-07"));
    assert!(c.token.is_some());

    // The parser refuses what it does not know, so the checks above mean something.
    let bogus = dir.path().join("bogus.toml");
    std::fs::write(&bogus, format!("healthcheck = []\n{all}")).unwrap();
    let e = semithin_agent::Config::load(&bogus)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field"), "{e}");

    // The binary reads it the same way.
    let out = Command::new(BIN)
        .arg("agent")
        .arg("--config")
        .arg(&path)
        .arg("--state")
        .arg(dir.path().join("state"))
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"]["machine_id"], serde_json::Value::Null, "{v}");
    let out = Command::new(BIN)
        .arg("agent")
        .arg("--config")
        .arg(&bogus)
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("unknown field"), "{}", text(&out));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for a process to end by itself; `None` if it is still running after `secs`.
fn wait_exit(child: &mut Child, secs: u64) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The one `ExecStart=` line of a unit, split into words.
fn exec_start(unit: &str) -> Vec<String> {
    let text = read(&packaging().join("systemd").join(unit));
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("ExecStart="))
        .collect();
    assert_eq!(lines.len(), 1, "{unit} must have one ExecStart= line");
    lines[0].split_whitespace().map(str::to_owned).collect()
}

/// The words of `unit`'s ExecStart with the installed paths replaced by test ones, the binary
/// by the one under test.
fn runnable(unit: &str, replace: &[(&str, &Path)]) -> Command {
    let words = exec_start(unit);
    let mut c = Command::new(BIN);
    for w in &words[1..] {
        match replace.iter().find(|(from, _)| from == w) {
            Some((_, to)) => c.arg(to),
            None => c.arg(w),
        };
    }
    c
}

#[test]
fn the_units_start_the_binary_with_flags_it_has() {
    let units = [
        ("semithin-agent.service", "agent"),
        ("semithin-agent-once.service", "agent"),
        ("semithin-server.service", "serve"),
    ];
    for (unit, sub) in units {
        let words = exec_start(unit);
        assert!(words[0].ends_with("/semithin"), "{unit}: {words:?}");
        assert_eq!(words[1], sub, "{unit}");
        let out = Command::new(BIN).args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let flags: Vec<&str> = help
            .split(|c: char| c.is_whitespace() || matches!(c, ',' | '[' | ']'))
            .filter(|w| w.starts_with("--"))
            .collect();
        for w in words.iter().filter(|w| w.starts_with("--")) {
            let flag = w.split('=').next().unwrap();
            assert!(
                flags.contains(&flag),
                "{unit} uses {flag}, which `semithin {sub} --help` does not list:\n{help}"
            );
        }
    }

    // The daemon and the timer's run are the same command but for --once.
    let daemon = exec_start("semithin-agent.service");
    let once = exec_start("semithin-agent-once.service");
    assert_eq!(once.last().map(String::as_str), Some("--once"));
    assert_eq!(daemon[..], once[..once.len() - 1]);
    let state = daemon
        .iter()
        .position(|w| w == "--state")
        .map(|i| daemon[i + 1].clone())
        .expect("--state");
    assert_eq!(state, "/var/lib/semithin");

    let timer = read(&packaging().join("systemd/semithin-agent.timer"));
    assert!(
        timer.contains("\nUnit=semithin-agent-once.service\n"),
        "{timer}"
    );
    assert!(timer.contains("\nRandomizedDelaySec="), "{timer}");
    let daemon_unit = read(&packaging().join("systemd/semithin-agent.service"));
    assert!(
        daemon_unit.contains("\nConflicts=semithin-agent-once.service semithin-agent.timer\n"),
        "{daemon_unit}"
    );

    // Both agent command lines run as they are (with a test state directory).
    let dir = tempdir();
    let agent_toml = packaging().join("agent.toml");
    let state_dir = dir.path().join("state");
    for unit in ["semithin-agent.service", "semithin-agent-once.service"] {
        let out = runnable(
            unit,
            &[
                ("/etc/semithin/agent.toml", &agent_toml),
                ("/var/lib/semithin", &state_dir),
            ],
        )
        .args(["status", "--json"])
        .output()
        .unwrap();
        assert!(out.status.success(), "{unit}: {}", text(&out));
        assert!(state_dir.join("repo/config").exists());
    }
}

#[test]
fn the_server_unit_and_settings_start_a_server() {
    let dir = tempdir();
    let server_toml = packaging().join("server.toml");
    let data = dir.path().join("data");
    let port = free_port();
    let log = dir.path().join("server.log");
    let mut child = runnable(
        "semithin-server.service",
        &[("/etc/semithin/server.toml", &server_toml)],
    )
    .arg("--data")
    .arg(&data)
    .args(["--listen", &format!("127.0.0.1:{port}")])
    .env_remove("SEMITHIN_ADMIN_TOKEN")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let url = format!("http://127.0.0.1:{port}/api/v1/health");
    let start = Instant::now();
    let answer = loop {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("semithin serve exited ({s}):\n{}", read(&log));
        }
        if let Ok(r) = reqwest::blocking::get(&url) {
            break (r.status().as_u16(), r.text().unwrap());
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server did not answer within 30 s:\n{}",
            read(&log)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = wait_exit(&mut child, 30);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(answer, (200, "ok\n".to_owned()));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}:\n{}",
        read(&log)
    );
    assert!(
        data.join("admin-token").exists(),
        "the data directory is --data's"
    );

    // The commented-out keys are settings too: with them the server takes the admin token from
    // the file (no DATA/admin-token is made) and then refuses TLS, which this build lacks.
    let (all, n) = uncommented(&read(&server_toml));
    assert_eq!(
        n, 3,
        "admin_token, tls_cert and tls_key are commented out:\n{all}"
    );
    let all_path = dir.path().join("all.toml");
    std::fs::write(&all_path, &all).unwrap();
    let data2 = dir.path().join("data2");
    let serve = |config: &Path, data: &Path| {
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("SEMITHIN_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_exit(&mut child, 60);
        if status.is_none() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        let status =
            status.unwrap_or_else(|| panic!("semithin serve kept running: {}", text(&out)));
        (status, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (status, err) = serve(&all_path, &data2);
    assert!(!status.success());
    assert!(!err.contains("settings file"), "{err}");
    assert!(err.contains("not available in this build"), "{err}");
    assert!(data2.join("repo/config").exists(), "{err}");
    assert!(!data2.join("admin-token").exists(), "{err}");

    // The parser refuses what it does not know, so the checks above mean something.
    let bogus = dir.path().join("bogus.toml");
    std::fs::write(&bogus, format!("port = 8470\n{}", read(&server_toml))).unwrap();
    let (status, err) = serve(&bogus, &dir.path().join("data3"));
    assert!(!status.success());
    assert!(
        err.contains("settings file") && err.contains("unknown field"),
        "{err}"
    );
}
