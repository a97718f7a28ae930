//! A relay's own traffic upward (docs/RELAY.md), as real processes on loopback: its machines'
//! check-ins in batches held as one long poll at the root, its own reports of its health in
//! `fleet tree`, `fleet move --relay NAME`, and HTTPS to its machines.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fleet::{Agent, Server, http, image, make_certs, wait_until, wait_updated};
use crate::relay::{Relay, many_uses_token};

fn n(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

#[test]
fn slow_relay_batches_its_machines_check_ins_into_one_long_poll_at_the_root() {
    let s = Server::start();
    let t = many_uses_token(&s);
    let src = s.path("img");
    image(&src, 1, 10);
    let v1 = s.release(&src, "lab/stable");
    // relay-c batches (the default); relay-d, for comparison, forwards each check-in alone
    let c = Relay::start(&s, "relay-c", &[&s.url], &t);
    let d = Relay::start_full(
        &s,
        "relay-d",
        &[&s.url],
        &t,
        "127.0.0.1",
        None,
        &["--batch-window-ms", "0"],
        None,
    );
    let mut agents: Vec<Agent> = (1..=6)
        .map(|i| Agent::new(&s, &format!("c{i}"), &t).server(&c.url))
        .chain((1..=3).map(|i| Agent::new(&s, &format!("d{i}"), &t).server(&d.url)))
        .collect();
    for ag in &mut agents {
        ag.spawn();
    }
    wait_until("9 machines and 2 relays enrolled", 60, || {
        s.machines().len() == 11
    });
    s.ok(&["fleet", "assign", "*", "lab/stable"]);
    for ag in &agents {
        wait_updated(&s, &ag.name, &v1, 60);
    }
    // idle: relay-c's six machines long-poll as one batch at the root (its batches end
    // together, so the machines poll again together); relay-d's three hold one each
    let held = || n(&s.stats(), "polls_held");
    wait_until("1 + 3 long polls at the root", 90, || held() == 4);
    let seen = |name: &str| s.machine(name)["last_seen"].as_i64().unwrap_or(0);
    let seen0: Vec<i64> = agents.iter().map(|a| seen(&a.name)).collect();
    let (st0, c0, d0) = (s.stats(), c.info(), d.info());
    let mut max_held = 0;
    let start = Instant::now();
    // a little longer than two long polls (the test server's --max-wait 30)
    while start.elapsed() < Duration::from_secs(65) {
        max_held = max_held.max(held());
        std::thread::sleep(Duration::from_millis(250));
    }
    let (st1, c1, d1) = (s.stats(), c.info(), d.info());
    let dn = |a: &Value, b: &Value, f: &str| n(b, f) - n(a, f);
    let (checkins, batched, batches) = (
        dn(&st0, &st1, "checkins"),
        dn(&st0, &st1, "checkins_batched"),
        dn(&st0, &st1, "checkin_batches"),
    );
    let (c_batches, c_batched) = (dn(&c0, &c1, "batches"), dn(&c0, &c1, "batched"));
    let d_forwarded = dn(&d0, &d1, "forwarded");
    eprintln!(
        "65 s idle: relay-c (batching, 6 machines) sent {c_batched} check-ins in {c_batches} \
         batches; relay-d (one by one, 3 machines) sent {d_forwarded} requests; the root \
         recorded {checkins} check-ins, {batched} of them in {batches} batches; at most \
         {max_held} long polls held at the root"
    );
    // (the root counts a batch when it arrives, the relay when it is answered: one batch may
    // fall on either side of the window's ends)
    assert!(
        c_batched >= 12,
        "each machine checked in twice: {c_batched}"
    );
    assert!(batched >= 12, "each machine checked in twice: {batched}");
    assert!(
        c_batches * 3 <= c_batched && batches * 3 <= batched,
        "relay-c {c_batches} batches for {c_batched} check-ins, the root {batches} for {batched}"
    );
    // relay-d's, one request each
    assert!(
        d_forwarded >= 6,
        "each machine checked in twice: {d_forwarded}"
    );
    assert!(
        (checkins - batched).abs_diff(d_forwarded) <= 1,
        "{} check-ins one by one at the root, {d_forwarded} forwarded by relay-d",
        checkins - batched
    );
    assert!(
        max_held <= 5,
        "{max_held} long polls held: relay-c's six machines held more than 2"
    );
    for (ag, before) in agents.iter().zip(seen0) {
        assert!(seen(&ag.name) > before, "{} not seen since", ag.name);
    }
    // the same counters in /metrics
    let metrics = http()
        .build()
        .unwrap()
        .get(format!("{}/metrics", s.url))
        .bearer_auth(&s.token)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let sample = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert!(sample("semithin_checkins_batched_total") >= c_batched as f64);
    assert!(sample("semithin_checkin_batches_total") >= 1.0);
    // the gauge is there (what it holds moves as batches end and start again)
    sample("semithin_polls_held");

    // a publish wakes the batch: every machine hears of it at once
    image(&src, 2, 10);
    let v2 = s.release(&src, "lab/stable");
    let start = Instant::now();
    for ag in &agents {
        wait_updated(&s, &ag.name, &v2, 60);
    }
    let took = start.elapsed();
    eprintln!("published to all 9 updated through the relays: {took:?}");
    assert!(
        took < Duration::from_secs(25),
        "{took:?}: not woken, waited for the long poll to run out"
    );
    for ag in &agents[..6] {
        assert_eq!(s.machine(&ag.name)["relay_path"], json!(["relay-c"]));
    }
    assert_eq!(s.machine("d1")["relay_path"], json!(["relay-d"]));
    drop(agents);
}

#[test]
fn relay_reports_its_health_shown_in_fleet_tree_and_is_placed_by_name() {
    let s = Server::start();
    let t = many_uses_token(&s);
    let a = Relay::start(&s, "relay-h", &[&s.url], &t);
    let b = Relay::start(&s, "relay-i", &[&a.url], &t);
    let mut ag = Agent::new(&s, "h1", &t).server(&b.url);
    ag.spawn();
    wait_until("h1 and both relays enrolled", 60, || {
        s.machines().len() == 3
    });
    wait_until("both relays reported", 30, || {
        s.machine("relay-h")["relay"]["version"].is_string()
            && s.machine("relay-i")["relay"]["version"].is_string()
    });
    let h = s.machine("relay-i")["relay"].clone();
    assert_eq!(h["url"], json!(b.url), "{h}");
    assert_eq!(h["upstream"], json!(a.url), "{h}");
    assert_eq!(h["cache_limit"], json!(10u64 << 30), "{h}");
    assert!(h["at"].as_i64().unwrap() > 0, "{h}");
    wait_until("h1 checking in through both relays", 30, || {
        s.machine("h1")["relay_path"] == json!(["relay-i", "relay-h"])
    });
    // relay-i's own requests came through relay-h: it hangs under it
    assert_eq!(s.machine("relay-i")["relay_path"], json!(["relay-h"]));
    let tree: Value = serde_json::from_str(&s.ok(&["fleet", "tree", "--json"])).unwrap();
    let rh = &tree["children"][0];
    assert_eq!(rh["name"], "relay-h", "{tree:#}");
    assert_eq!(rh["health"]["url"], json!(a.url), "{tree:#}");
    let ri = &rh["children"][0];
    assert_eq!(ri["name"], "relay-i", "{tree:#}");
    assert_eq!(ri["health"]["upstream"], json!(a.url), "{tree:#}");
    assert_eq!(ri["machines"], 1, "{tree:#}");
    let shown = s.ok(&["fleet", "show", "relay-i"]);
    assert!(
        shown.contains(&format!(
            "as a relay: {} at {}",
            h["version"].as_str().unwrap(),
            b.url
        )),
        "{shown}"
    );
    let text = s.ok(&["fleet", "tree"]);
    eprintln!("{text}");
    assert!(
        text.contains("relay-i [") && text.contains("reported") && text.contains("cache"),
        "{text}"
    );

    // placed by the relay's name: the URL it reported
    let out = s.ok(&["fleet", "move", "h1", "--relay", "relay-h"]);
    assert!(out.contains("1 machine(s) changed"), "{out}");
    assert_eq!(s.machine("h1")["placement"], json!([a.url]));
    let bad = s.cli(&["fleet", "move", "h1", "--relay", "relay-nope"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("no relay \"relay-nope\"") && err.contains(&format!("relay-h ({})", a.url)),
        "{err}"
    );
    // a machine that is no relay is refused by name too
    let bad = s.cli(&["fleet", "move", "h1", "--relay", "h1"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("has not reported a URL"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    drop(ag);
}

#[test]
fn relay_serves_https_to_machines_that_trust_the_fleet_ca() {
    let s = Server::start_tls();
    let t = many_uses_token(&s);
    let src = s.path("img");
    image(&src, 1, 10);
    let v1 = s.release(&src, "lab/stable");
    let fleet_ca = s.ca.clone().unwrap();
    let (relay_ca, cert, key) = make_certs(&s.path("certs"), "relay");
    // the fleet's CA bundle: the root's CA and the relay's
    let bundle = s.path("fleet-cas.pem");
    let mut pem = std::fs::read(&fleet_ca).unwrap();
    pem.extend(std::fs::read(&relay_ca).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let (cert, key, fca) = (
        cert.display().to_string(),
        key.display().to_string(),
        fleet_ca.display().to_string(),
    );
    let r = Relay::start_full(
        &s,
        "relay-tls",
        &[&s.url],
        &t,
        "127.0.0.1",
        None,
        &["--tls-cert", &cert, "--tls-key", &key, "--ca", &fca],
        Some(&relay_ca),
    );
    assert!(r.url.starts_with("https://"), "{}", r.url);
    // a second relay under it, over HTTPS both ways, trusting the bundle
    let b = bundle.display().to_string();
    let r2 = Relay::start_full(
        &s,
        "relay-tls2",
        &[&r.url],
        &t,
        "127.0.0.1",
        None,
        &["--tls-cert", &cert, "--tls-key", &key, "--ca", &b],
        Some(&relay_ca),
    );
    let mut ag = Agent::new(&s, "tls1", &t).server(&r.url).ca(Some(&bundle));
    let mut ag2 = Agent::new(&s, "tls2", &t).server(&r2.url).ca(Some(&bundle));
    ag.spawn();
    ag2.spawn();
    wait_until("2 machines and 2 relays enrolled", 60, || {
        s.machines().len() == 4
    });
    s.ok(&["fleet", "assign", "*", "lab/stable"]);
    wait_updated(&s, "tls1", &v1, 60);
    wait_updated(&s, "tls2", &v1, 60);
    assert_eq!(s.machine("tls1")["relay_path"], json!(["relay-tls"]));
    assert_eq!(
        s.machine("tls2")["relay_path"],
        json!(["relay-tls2", "relay-tls"])
    );
    assert!(r.n("served_bytes") > 0, "{}", r.info());
    assert!(r2.n("batches") > 0, "{}", r2.info());
    assert_eq!(
        s.machine("relay-tls2")["relay"]["upstream"],
        json!(r.url),
        "{}",
        r2.log()
    );
    assert!(!ag.log().contains("bad-upstream"), "{}", ag.log());
    // plain HTTP to it is no answer; a client that does not trust its CA is refused
    let plain = http()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!(
            "{}/api/v1/health",
            r.url.replacen("https", "http", 1)
        ))
        .send();
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    let untrusted = http()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!("{}/api/v1/health", r.url))
        .send();
    assert!(untrusted.is_err(), "an unknown CA was accepted");
    drop((ag, ag2));
}

#[test]
fn relay_not_accepted_yet_sends_check_ins_one_by_one_then_batches() {
    let s = Server::start();
    let t = many_uses_token(&s);
    // the relay enrolls pending: the root refuses its batches and its reports
    let pending = s.enroll_token(false);
    let r = Relay::start_full(
        &s,
        "relay-p",
        &[&s.url],
        &pending,
        "127.0.0.1",
        None,
        &["--status-interval", "1"],
        None,
    );
    let mut ag = Agent::new(&s, "p1", &t).server(&r.url);
    ag.spawn();
    wait_until("p1 enrolled through the pending relay", 60, || {
        s.machines().len() == 2
    });
    wait_until("p1 checking in through the pending relay", 60, || {
        s.machine("p1")["relay_path"] == json!(["relay-p"])
    });
    assert_eq!(s.machine("relay-p")["status"], "pending");
    assert_eq!(r.n("batches"), 0, "{}", r.info());
    assert!(r.n("forwarded") > 0, "{}", r.info());
    assert!(r.log().contains("refused a batch"), "{}", r.log());
    // accepted: its next report goes through, and its check-ins go up in batches again
    s.ok(&["fleet", "accept", "relay-p"]);
    wait_until("the relay's own report taken", 30, || {
        s.machine("relay-p")["relay"]["version"].is_string()
    });
    s.ok(&["push", "p1"]);
    wait_until("p1's check-ins in batches", 60, || r.n("batches") > 0);
    assert!(n(&s.stats(), "checkins_batched") > 0);
    drop(ag);
}
