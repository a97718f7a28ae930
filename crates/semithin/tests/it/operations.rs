//! Day-2 operations against a real server on loopback: `/metrics` in the Prometheus text
//! format, `/api/v1/ready`, `semithin fleet check` (Nagios exit codes), the audit log of admin
//! requests and the access log.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::BIN;
use crate::fleet::{Agent, Server, image, wait_until, wait_updated};

/// The value of the first sample line starting with `name{labels}` (or `name ` alone).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn metrics(s: &Server) -> String {
    let r = reqwest::blocking::Client::new()
        .get(format!("{}/metrics", s.url))
        .bearer_auth(&s.token)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    r.text().unwrap()
}

fn check(s: &Server, args: &[&str]) -> (i32, String) {
    let mut a = vec!["fleet", "check"];
    a.extend_from_slice(args);
    let out = s.cli(&a);
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn metrics_readiness_checks_and_the_audit_log_tell_the_admin_what_happens() {
    let s = Server::start();
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 20);
    let v1 = s.release(&src, "lab/stable");
    let mut agents: Vec<Agent> = (1..=3)
        .map(|i| Agent::new(&s, &format!("m{i}"), &t))
        .collect();
    for a in &mut agents {
        a.spawn();
    }
    wait_until("3 machines enrolled", 30, || s.machines().len() == 3);
    s.ok(&["fleet", "assign", "*", "lab/stable"]);
    for a in &agents {
        wait_updated(&s, &a.name, &v1, 30);
    }

    // readiness, and metrics only for the admin
    let http = reqwest::blocking::Client::new();
    let r = http.get(format!("{}/api/v1/ready", s.url)).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().unwrap(), "ready\n");
    let r = http.get(format!("{}/metrics", s.url)).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let m = metrics(&s);
    assert_eq!(
        sample(&m, "semithin_machines{state=\"updated\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "semithin_machines{state=\"failed\"}"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "semithin_machines_health{health=\"healthy\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "semithin_machines_channel{channel=\"lab/stable\"}"),
        Some(3.0),
        "{m}"
    );
    assert!(sample(&m, "semithin_checkins_total").unwrap() >= 3.0, "{m}");
    let objects = sample(&m, "semithin_sent_bytes_total{kind=\"objects\"}").unwrap();
    let stats_bytes = s.stats()["object_bytes_sent"].as_f64().unwrap();
    assert!(
        objects > 0.0 && objects <= stats_bytes,
        "{objects} vs {stats_bytes}"
    );
    // latency by route template, never by the path asked for
    let checkin =
        "semithin_http_request_duration_seconds_count{route=\"/api/v1/checkin\",method=\"POST\"}";
    assert!(sample(&m, checkin).unwrap() >= 3.0, "{m}");
    assert!(!m.contains(&v1), "no release ids in route labels");
    assert!(
        m.contains("# TYPE semithin_http_request_duration_seconds histogram"),
        "{m}"
    );

    // fleet check: all updated → OK; machines that stop checking in → offline, over the
    // thresholds → CRITICAL; a server that is gone → UNKNOWN
    let (code, line) = check(&s, &[]);
    assert_eq!(code, 0, "{line}");
    assert!(
        line.starts_with("SEMITHIN OK - 3 machines, 3 updated |"),
        "{line}"
    );
    assert!(
        line.contains("machines=3") && line.contains("updated=3"),
        "{line}"
    );
    for a in &mut agents[..2] {
        a.stop();
    }
    std::thread::sleep(Duration::from_secs(3));
    let (code, line) = check(&s, &["--offline-after", "2", "--critical", "50%"]);
    let v: Value = serde_json::from_str(&String::from_utf8_lossy(
        &s.cli(&[
            "fleet",
            "check",
            "--offline-after",
            "2",
            "--critical",
            "50%",
            "--json",
        ])
        .stdout,
    ))
    .unwrap();
    // m3 still checks in every ~30 s: it may or may not be offline at 2 s
    let offline = v["counts"]["offline"].as_u64().unwrap();
    assert!(offline >= 2, "{v:#}");
    assert_eq!(code, 2, "{line}");
    assert!(line.starts_with("SEMITHIN CRITICAL - "), "{line}");
    assert!(line.contains("m1") && line.contains("m2"), "{line}");
    let (code, line) = check(&s, &["m3", "--offline-after", "3600"]);
    assert_eq!(code, 0, "{line}");
    assert!(line.contains("1 machines"), "{line}");
    let bad = s.cli(&["fleet", "check", "--warning", "lots"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("neither a count"));

    // the audit log: changes, who made them, the machines named; refused attempts too;
    // reading is not a change
    let mut cmd = Command::new(BIN);
    cmd.args(["fleet", "label", "m1", "room=12"])
        .env("SEMITHIN_SERVER", &s.url)
        .env("SEMITHIN_ADMIN_TOKEN", &s.token)
        .env("USER", "alice")
        .env_remove("SUDO_USER");
    assert!(cmd.output().unwrap().status.success());
    s.ok(&["push", "*"]);
    let r = http
        .post(format!("{}/api/v1/admin/assign", s.url))
        .bearer_auth("not-the-token")
        .header("content-type", "application/json")
        .body(json!({"selector": "*", "channel": "lab/stable"}).to_string())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    s.ok(&["fleet", "list"]);
    let log: Vec<Value> = serde_json::from_str(&s.ok(&["audit", "--json"])).unwrap();
    let paths: Vec<&str> = log.iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(
        !paths.contains(&"/api/v1/admin/machines"),
        "reads are not audited: {paths:?}"
    );
    let label = log
        .iter()
        .find(|e| e["path"] == "/api/v1/admin/machines/m1/labels")
        .expect("the label change");
    let fingerprint = hex::encode(&blake3::hash(s.token.as_bytes()).as_bytes()[..8]);
    assert_eq!(label["actor"], format!("admin:{fingerprint}"));
    assert_eq!(label["user"], "alice");
    assert_eq!(label["status"], 200);
    assert!(
        label["request"]
            .as_str()
            .unwrap()
            .contains(r#""room":"12""#),
        "{label}"
    );
    assert_eq!(label["ip"], "127.0.0.1");
    assert_eq!(label["machines"], json!(["m1"]), "the machine of the path");
    let push = log
        .iter()
        .find(|e| e["path"] == "/api/v1/admin/push")
        .unwrap();
    let mut woken: Vec<&str> = push["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    woken.sort();
    assert_eq!(woken, ["m1", "m2", "m3"], "{push}");
    let refused = log
        .iter()
        .find(|e| e["path"] == "/api/v1/admin/assign" && e["status"] == 401)
        .expect("the refused assign");
    assert_eq!(refused["actor"], "refused");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("wrong admin token")
    );
    assert!(
        !refused.to_string().contains("not-the-token"),
        "tokens are never stored"
    );
    // the assign and the token of the setup are there, oldest last
    assert!(
        log.iter()
            .any(|e| e["path"] == "/api/v1/admin/assign" && e["status"] == 200)
    );
    assert!(log.first().unwrap()["id"].as_i64() > log.last().unwrap()["id"].as_i64());
    // filtered by machine, in text
    let text = s.ok(&["audit", "--machine", "m1"]);
    assert!(
        text.contains("/api/v1/admin/machines/m1/labels") && text.contains("(alice)"),
        "{text}"
    );
    assert!(!text.contains("tokens"), "{text}");
    let r = s.cli(&["audit", "--limit", "0"]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("between 1 and"));

    // the access log names every request, also those no route matched
    let _ = http.get(format!("{}/no/such/thing", s.url)).send().unwrap();
    let log = std::fs::read_to_string(s.path("server.log")).unwrap();
    assert!(
        log.lines().any(|l| l.contains("semithin::access")
            && l.contains("/api/v1/checkin")
            && l.contains("status=200")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("/no/such/thing") && l.contains("status=404"))
    );

    // a server that is not there: UNKNOWN
    drop(agents);
    let mut s = s;
    s.kill();
    let (code, line) = check(&s, &[]);
    assert_eq!(code, 3, "{line}");
    assert!(line.starts_with("SEMITHIN UNKNOWN - "), "{line}");
}
