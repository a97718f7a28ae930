//! Ids and text from the other side: a malformed release in a check-in answer is an error naming
//! the field, never a panic; a machine's text reaches the admin's terminal escaped.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use semithin_protocol::sign::MachineKey;
use serde_json::json;

use crate::common::BIN;
use crate::fleet::{Agent, Server, enroll_raw, now, signed};

/// A check-in signed by `key` carrying `report`; the status and the answer.
fn check_in(s: &Server, key: &MachineKey, report: serde_json::Value) -> (u16, String) {
    let body = serde_json::to_vec(&json!({ "report": report })).unwrap();
    signed(s, key, None, "POST", "/api/v1/checkin", &body, now())
}

fn report(extra: serde_json::Value) -> serde_json::Value {
    let mut r = json!({"health": "healthy", "phase": "idle", "disk_free": 1,
        "uptime_secs": 1, "agent_version": "x", "fetched_bytes": 0});
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    r
}

#[test]
fn fleet_show_and_list_print_a_machines_escape_sequences_escaped() {
    let s = Server::start();
    let t = s.enroll_token(true);
    let a = Agent::new(&s, "evil", &t);
    assert!(a.once().success());
    let key = MachineKey::load(&a.state.join("machine.key")).unwrap();
    let clear = "\u{1b}[2J";
    let current = "a".repeat(64);
    let (st, body) = check_in(
        &s,
        &key,
        report(json!({
            "current": current,
            "last_error": format!("{clear}boom"),
            "failing": {"phase": "fetching", "reason": format!("{clear}no\rway\u{9b}31m"),
                "since": 1},
            "integrity": {"release": current, "checked_at": 1,
                "tampered": {"count": 1, "paths": [format!("/etc/{clear}x")]}},
        })),
    );
    assert_eq!(st, 200, "{body}");
    for args in [&["fleet", "show", "evil"][..], &["fleet", "list"][..]] {
        let out = s.cli(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {text}");
        assert!(
            !text.contains('\u{1b}') && !text.contains('\r') && !text.contains('\u{9b}'),
            "{args:?} printed a control character raw: {text:?}"
        );
    }
    let shown = s.ok(&["fleet", "show", "evil"]);
    assert!(shown.contains("last error: \\u{1b}[2Jboom"), "{shown}");
    assert!(shown.contains("/etc/\\u{1b}[2Jx"), "{shown}");
    assert!(shown.contains("no\\u{d}way\\u{9b}31m"), "{shown}");
}

#[test]
fn a_pending_machines_report_with_odd_strings_is_refused_or_listed_never_a_panic() {
    let s = Server::start();
    let t = s.enroll_token(false);
    let key = MachineKey::generate().unwrap();
    let (st, v) = enroll_raw(&s, &t, "pending-one", &key);
    assert_eq!(st, 200, "{v}");
    // a release that is not a commit id: refused on arrival, naming the field
    let (st, body) = check_in(&s, &key, report(json!({"current": "é".repeat(32)})));
    assert!(st == 400 || st == 422, "{st}: {body}");
    assert!(body.contains("report.current"), "{body}");
    assert!(body.contains("release id"), "{body}");
    // odd text where text belongs
    let (st, body) = check_in(
        &s,
        &key,
        report(json!({"last_error": "é\u{1b}[2J".repeat(100), "agent_version": "é"})),
    );
    assert!(st < 500, "{st}: {body}");
    for args in [
        &["fleet", "list"][..],
        &["fleet", "show", "pending-one"][..],
    ] {
        let out = s.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("pending-one"));
    }
}

/// A server that answers enrollment and then every check-in with `desired.release` set to
/// `release`, for at most `secs` seconds or until `stop` is set; the requests it saw.
fn fake_server(
    release: String,
    secs: u64,
    stop: Arc<AtomicBool>,
) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    l.set_nonblocking(true).unwrap();
    let h = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(secs);
        let mut seen = Vec::new();
        while Instant::now() < end && seen.len() < 20 && !stop.load(Ordering::Relaxed) {
            let Ok((mut c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            c.set_nonblocking(false).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 8192];
            // the head, then the body by its length
            let (head, mut body_len) = loop {
                let Ok(n) = c.read(&mut buf) else {
                    break (String::new(), 0);
                };
                if n == 0 {
                    break (String::new(), 0);
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    break (head.to_owned(), len.saturating_sub(body.len()));
                }
            };
            while body_len > 0 {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => body_len = body_len.saturating_sub(n),
                }
            }
            let line = head.lines().next().unwrap_or("").to_owned();
            let answer = if line.contains("/api/v1/enroll") {
                json!({"machine_id": "m1", "status": "accepted"}).to_string()
            } else if line.contains("/api/v1/checkin") {
                json!({"status": "accepted", "next_checkin_secs": 60, "desired": {
                    "channel": "lab", "release": release,
                    "metadata_path": "/api/v1/trust/metadata/",
                    "objects_path": "/api/v1/objects"}})
                .to_string()
            } else {
                String::new()
            };
            let status = if answer.is_empty() {
                "404 Not Found"
            } else {
                "200 OK"
            };
            let _ = write!(
                c,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
            seen.push(line);
        }
        seen
    });
    (url, h)
}

#[test]
fn an_agent_told_a_malformed_release_says_which_field_and_does_not_panic() {
    let s = Server::start();
    let dir = s.path("hostile-agent");
    // "a" first: byte 12 falls inside a character, where the old `short()` panicked
    for bad in [format!("a{}", "é".repeat(31)), "\u{1b}[2J".repeat(16)] {
        let stop = Arc::new(AtomicBool::new(false));
        let (url, server) = fake_server(bad.clone(), 60, stop.clone());
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(BIN)
            .args(["agent", "--once", "--state"])
            .arg(&dir)
            .args([
                "--server",
                &url,
                "--token",
                "t",
                "--name",
                "m1",
                "--trusted-root",
            ])
            .arg(s.root_json())
            .args(["--verify-interval", "0", "--inventory-interval", "0"])
            .output()
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        let err = String::from_utf8_lossy(&out.stderr);
        let seen = server.join().unwrap();
        assert!(
            seen.iter().any(|l| l.contains("/api/v1/checkin")),
            "{seen:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("desired.release"), "{err}");
        assert!(err.contains("release id"), "{err}");
    }
}
