//! BitTorrent among machines (docs/TORRENT.md), real processes on loopback: a stock client
//! (aria2c) fetching a delta pack from the server's swarm, many agents updating through the
//! swarm, the tracker refusing bad announces, and the fall back to HTTP when nobody seeds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::sh;
use crate::fleet::{
    Agent, Server, assert_deployed, free_port, http, image, wait_until, wait_updated,
};

fn delta_pack(s: &Server, from: &str, to: &str) -> PathBuf {
    let p = s.data.join(format!("deltas/{from}-{to}.pack"));
    wait_until("the delta pack built at publish", 120, || p.exists());
    p
}

/// GET as the admin, the body's bytes.
fn admin_bytes(s: &Server, path: &str) -> (u16, Vec<u8>) {
    let r = http()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
        .get(format!("{}{path}", s.url))
        .bearer_auth(&s.token)
        .send()
        .unwrap();
    (r.status().as_u16(), r.bytes().unwrap().to_vec())
}

/// A tracker request as any client makes it (no authentication: the passkey is the key).
fn announce(s: &Server, path_and_query: &str) -> (u16, Vec<u8>) {
    let r = http()
        .build()
        .unwrap()
        .get(format!("{}{path_and_query}", s.url))
        .send()
        .unwrap();
    (r.status().as_u16(), r.bytes().unwrap().to_vec())
}

/// A release v2 that adds `mib` MiB of content nothing compresses: the pack is about that.
fn v2_with(src: &Path, mib: usize) {
    sh(&format!(
        "set -e; head -c {} /dev/urandom > {}/usr/lib/payload.bin; printf 'VERSION_ID=2\\n' > {}/etc/os-release",
        mib << 20,
        src.display(),
        src.display()
    ));
}

fn torrents(s: &Server) -> Vec<Value> {
    let (st, v) = s.get("/api/v1/admin/torrents");
    assert_eq!(st, 200, "{v}");
    v.as_array().unwrap().clone()
}

#[test]
fn a_stock_client_fetches_a_delta_pack_from_the_swarm_byte_for_byte() {
    let s = Server::start_args(&["--torrent"]);
    let src = s.path("img");
    image(&src, 1, 3);
    let v1 = s.release(&src, "lab/stable");
    v2_with(&src, 3);
    let v2 = s.release(&src, "lab/stable");
    delta_pack(&s, &v1, &v2);
    let (st, torrent) = admin_bytes(&s, &format!("/api/v1/torrents/delta/{v1}/{v2}"));
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&torrent));
    let text = String::from_utf8_lossy(&torrent);
    assert!(text.contains("7:privatei1e"), "a private torrent");
    assert!(text.contains(&format!("{}/announce/", s.url)), "{text}");
    let (st, pack) = admin_bytes(&s, &format!("/api/v1/deltas/{v1}/{v2}"));
    assert_eq!(st, 200);
    assert!(pack.len() > 3 << 20, "{}", pack.len());

    let dir = s.path("aria2");
    std::fs::create_dir_all(&dir).unwrap();
    let tfile = dir.join("pack.torrent");
    std::fs::write(&tfile, &torrent).unwrap();
    let start = Instant::now();
    let out = Command::new("timeout")
        .args([
            "90",
            "aria2c",
            "--seed-time=0",
            "--enable-dht=false",
            "--enable-dht6=false",
        ])
        .args([
            "--enable-peer-exchange=false",
            "--bt-enable-lpd=false",
            "--console-log-level=warn",
        ])
        .args([
            "--summary-interval=0",
            "--check-certificate=false",
            "--bt-stop-timeout=60",
        ])
        .arg(format!("--listen-port={}", free_port()))
        .arg(format!("--dir={}", dir.join("out").display()))
        .arg(&tfile)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "aria2c: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(dir.join(format!("out/{v1}-{v2}.pack"))).unwrap();
    assert!(got == pack, "aria2c's copy differs from the pack over HTTP");
    eprintln!(
        "aria2c fetched {} bytes in {:.1} s",
        got.len(),
        start.elapsed().as_secs_f64()
    );
    // the server's seeder sent it, and the tracker saw aria2c
    let t = torrents(&s);
    let mine = t
        .iter()
        .find(|t| t["name"] == format!("{v1}-{v2}.pack"))
        .unwrap();
    assert_eq!(mine["length"], pack.len() as u64);
    assert!(
        mine["uploaded"].as_u64().unwrap() >= pack.len() as u64,
        "{mine}"
    );
    assert_eq!(mine["kind"], "delta");
}

fn passkey_of(s: &Server, owner: &str) -> String {
    let secret = std::fs::read(s.data.join("torrent-secret")).unwrap();
    let key: [u8; 32] = secret.try_into().unwrap();
    let h = blake3::keyed_hash(&key, owner.as_bytes());
    format!("{}.{owner}", hex(&h.as_bytes()[..16]))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn pct(b: &[u8]) -> String {
    b.iter().map(|b| format!("%{b:02X}")).collect()
}

#[test]
fn the_tracker_answers_bad_announces_with_a_bencoded_reason_and_never_fails() {
    let s = Server::start_args(&["--torrent"]);
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 3);
    let v1 = s.release(&src, "lab/stable");
    let a = Agent::new(&s, "m1", &t);
    assert!(a.once().success(), "{}", a.log());
    image(&src, 2, 3);
    let v2 = s.release(&src, "lab/stable");
    delta_pack(&s, &v1, &v2);
    let (st, torrent) = admin_bytes(&s, &format!("/api/v1/torrents/delta/{v1}/{v2}"));
    assert_eq!(st, 200);
    let info_hash = {
        let (m, _) = semithin_swarm::Metainfo::parse(&torrent).unwrap();
        m.info_hash()
    };
    let id = pct(&[7u8; 20]);
    let good = |key: &str| {
        format!(
            "/announce/{key}?info_hash={}&peer_id={id}&port=6881&left=10&compact=1",
            pct(&info_hash)
        )
    };
    let admin_key = passkey_of(&s, "admin");
    let m1_id = s.machine("m1")["id"].as_str().unwrap().to_owned();
    let m1_key = passkey_of(&s, &m1_id);
    let fails = |q: &str, want: &str| {
        let (st, body) = announce(&s, q);
        let body = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(st, 200, "{q}: {body}");
        assert!(body.starts_with("d14:failure reason"), "{q}: {body}");
        assert!(body.contains(want), "{q}: {body}");
    };
    // a good announce lists peers (none but the server's seeder yet)
    let (st, body) = announce(&s, &good(&m1_key));
    assert_eq!(st, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("8:intervali60e") && text.contains("5:peers"),
        "{text}"
    );
    assert!(!text.contains("failure"), "{text}");
    fails(&good("0123.nobody"), "unknown passkey");
    // m1's MAC with another owner
    fails(&good(&format!("{m1_key}x")), "unknown passkey");
    // no passkey at all is no tracker route
    assert_eq!(announce(&s, &good("")).0, 404);
    fails(&format!("/announce/{admin_key}"), "info_hash is missing");
    fails(
        &format!("/announce/{admin_key}?info_hash=abc&peer_id={id}&port=1"),
        "info_hash must be 20 bytes, not 3",
    );
    fails(
        &format!("/announce/{admin_key}?info_hash=%zz&peer_id={id}&port=1"),
        "bad percent escape",
    );
    fails(
        &format!("/announce/{admin_key}?info_hash={}&port=1", pct(&info_hash)),
        "peer_id is missing",
    );
    fails(
        &format!(
            "/announce/{admin_key}?info_hash={}&peer_id={id}",
            pct(&info_hash)
        ),
        "port is missing",
    );
    fails(
        &format!(
            "/announce/{admin_key}?info_hash={}&peer_id={id}&port=1",
            pct(&[9u8; 20])
        ),
        "unknown torrent",
    );
    // a machine removed: its passkey opens nothing
    s.ok(&["fleet", "remove", "m1", "--yes"]);
    fails(&good(&m1_key), "not an accepted machine");
    // torrents need the signature or the admin token
    let r = http()
        .build()
        .unwrap()
        .get(format!("{}/api/v1/torrents/delta/{v1}/{v2}", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (st, _) = admin_bytes(&s, &format!("/api/v1/torrents/delta/{v1}/nothex"));
    assert_eq!(st, 400);
}

#[test]
fn with_nobody_seeding_the_agent_fetches_over_http_at_once() {
    let s = Server::start_args(&["--torrent", "--torrent-no-seed"]);
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 3);
    let v1 = s.release(&src, "lab/stable");
    let a = Agent::new(&s, "m1", &t)
        .arg("--torrent")
        .arg("--torrent-patience")
        .arg("60");
    assert!(a.once().success(), "{}", a.log());
    s.ok(&["fleet", "assign", "m1", "lab/stable"]);
    assert!(a.once().success(), "{}", a.log());
    v2_with(&src, 1);
    let v2 = s.release(&src, "lab/stable");
    delta_pack(&s, &v1, &v2);
    let start = Instant::now();
    assert!(a.once().success(), "{}", a.log());
    let secs = start.elapsed().as_secs_f64();
    let log = a.log();
    // the first install did not wait for the swarm either
    assert!(
        log.contains("the release's objects over HTTP: not from the swarm (no peer has all of it"),
        "{log}"
    );
    assert!(
        log.contains(
            "the delta pack over HTTP: not from the swarm (no peer has all of it and the server does not seed it)"
        ),
        "{log}"
    );
    assert!(log.contains("rebuilt and verified"), "{log}");
    assert_eq!(a.current().as_deref(), Some(v2.as_str()));
    assert_deployed(&src, &a.deployment());
    // at once: not after the patience of 60 s
    assert!(secs < 30.0, "the update took {secs:.1} s");
    let st = s.stats();
    assert!(st["delta_bytes_sent"].as_u64().unwrap() > 1 << 20, "{st}");
}

/// First installs on a site: the server makes the full-release pack and its torrent on the first
/// request (at publish only when machines of the channel wait for their first release), the
/// new machines take it from the swarm (the server seeding it about once), apply it with every
/// object verified, and fetch next to nothing as objects; what they shared shows in /metrics.
#[test]
fn first_installs_take_the_full_release_pack_from_the_swarm() {
    let s = Server::start_args(&["--torrent", "--torrent-peers", "1"]);
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 3);
    v2_with(&src, 3);
    let v1 = s.release(&src, "lab/stable");
    let pack = s.data.join(format!("deltas/{}-{v1}.pack", "0".repeat(64)));
    // no machine waits for a first install: the pack is made on the first request
    std::thread::sleep(Duration::from_secs(2));
    assert!(!pack.exists());
    let mut agents: Vec<Agent> = (1..=4)
        .map(|i| {
            Agent::new(&s, &format!("f{i}"), &t)
                .arg("--torrent")
                .arg("--torrent-seed-time")
                .arg("120")
        })
        .collect();
    for a in &agents {
        assert!(a.once().success(), "{}", a.log());
    }
    let objects_before = s.stats()["object_bytes_sent"].as_u64().unwrap();
    s.ok(&["fleet", "assign", "*", "lab/stable"]);
    for a in &mut agents {
        a.spawn();
    }
    for a in &agents {
        wait_updated(&s, &a.name, &v1, 180);
    }
    let len = std::fs::metadata(&pack).unwrap().len();
    for a in &agents {
        let log = a.log();
        assert!(
            log.contains(&format!(
                "fetched the full-release pack of {}",
                v1.get(..12).unwrap()
            )),
            "{}: {log}\nserver: {}",
            a.name,
            std::fs::read_to_string(s.path("server.log")).unwrap_or_default()
        );
        assert!(log.contains("applied the full-release pack"), "{log}");
        assert_deployed(&src, &a.deployment());
    }
    let objects = s.stats()["object_bytes_sent"].as_u64().unwrap() - objects_before;
    let full = torrents(&s)
        .into_iter()
        .find(|t| t["kind"] == "full")
        .expect("the full-release pack's torrent is listed");
    assert_eq!(full["name"], format!("{}-{v1}.pack", "0".repeat(64)));
    let seeded = full["uploaded"].as_u64().unwrap();
    eprintln!("pack {len} bytes; the server seeded {seeded} and sent {objects} as objects");
    // the objects of a 3 MiB release went through the swarm, not over HTTP
    assert!(objects < len / 4, "{objects} bytes of objects over HTTP");
    assert!(
        seeded <= 2 * len,
        "the server seeded {seeded} of a {len}-byte pack"
    );
    // each agent reports what its client exchanged; /metrics sums it
    wait_until("the agents' swarm bytes reported", 60, || {
        let m = metrics_text(&s);
        metric(&m, "semithin_swarm_bytes{direction=\"received\"}") >= 3.0 * len as f64
    });
    let m = metrics_text(&s);
    assert!(
        metric(&m, "semithin_torrent_seeded_bytes_total") > 0.0,
        "{m}"
    );
    for a in &mut agents {
        a.stop();
    }
}

fn metrics_text(s: &Server) -> String {
    let (st, b) = admin_bytes(s, "/metrics");
    assert_eq!(st, 200);
    String::from_utf8(b).unwrap()
}

/// A sample's value in a Prometheus text answer (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A fleet on HTTPS with a CA of its own: the BitTorrent client announces with the CA given as
/// SSL_CERT_FILE and the machines share the pack; without it the agent says why up front.
#[test]
fn over_https_with_a_fleet_ca_the_swarm_works_when_the_agent_is_given_the_ca() {
    let s = Server::start_tls_args(&["--torrent"]);
    let ca = s.ca.clone().unwrap();
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 3);
    let v1 = s.release(&src, "lab/stable");
    let mut agents: Vec<Agent> = (1..=3)
        .map(|i| {
            Agent::new(&s, &format!("t{i}"), &t)
                .arg("--torrent")
                .arg("--torrent-seed-time")
                .arg("120")
                .env("SSL_CERT_FILE", ca.to_str().unwrap())
        })
        .collect();
    let warned = Agent::new(&s, "t4", &t).arg("--torrent");
    for a in agents.iter().chain([&warned]) {
        assert!(a.once().success(), "{}", a.log());
    }
    s.ok(&["fleet", "assign", "*", "lab/stable"]);
    assert!(warned.once().success(), "{}", warned.log());
    assert!(
        warned.log().contains("will not trust") && warned.log().contains("SSL_CERT_FILE="),
        "{}",
        warned.log()
    );
    for a in &mut agents {
        a.spawn();
    }
    for a in &agents {
        wait_updated(&s, &a.name, &v1, 120);
    }
    v2_with(&src, 2);
    let v2 = s.release(&src, "lab/stable");
    for a in &agents {
        wait_updated(&s, &a.name, &v2, 180);
    }
    for a in &agents {
        let log = a.log();
        assert!(log.contains("from the swarm: "), "{}: {log}", a.name);
        assert!(!log.contains("will not trust"), "{log}");
        assert_deployed(&src, &a.deployment());
    }
    for a in &mut agents {
        a.stop();
    }
}

/// `n` agents (daemons sharing through the swarm) update v1 -> v2 with a pack of `mib` MiB;
/// (server's seeder upload, HTTP delta bytes, pack size, seconds to converge). With `uplink`
/// (a `tc` rate), the agents run in a network namespace of their own (the site) that reaches
/// the server through a link shaped to that rate; they share among themselves at the speed of
/// the site's own network.
pub(crate) fn site_update(
    n: usize,
    mib: usize,
    torrent: bool,
    uplink: Option<&str>,
) -> (u64, u64, u64, f64) {
    let mut args = vec![];
    if torrent {
        args.push("--torrent");
    }
    let site = uplink.map(|rate| crate::relay::Site::shaped(3, rate));
    let s = match &site {
        Some(_) => Server::start_args_everywhere(&args),
        None => Server::start_args(&args),
    };
    let url = site
        .as_ref()
        .map(|site| format!("http://{}:{}", site.host_ip, s.port));
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 3);
    let v1 = s.release(&src, "lab/stable");
    let mut agents: Vec<Agent> = (1..=n)
        .map(|i| {
            let mut a = Agent::new(&s, &format!("m{i:02}"), &t);
            if let (Some(site), Some(url)) = (&site, &url) {
                a = a.netns(&site.ns).server(url);
            }
            if torrent {
                a = a
                    .arg("--torrent")
                    .arg("--torrent-seed-time")
                    .arg("300")
                    .arg("--torrent-seed-ratio")
                    .arg("0");
            }
            a
        })
        .collect();
    std::thread::scope(|sc| {
        for a in &agents {
            sc.spawn(move || assert!(a.once().success(), "{}", a.log()));
        }
    });
    s.ok(&["fleet", "assign", "*", "lab/stable"]);
    for a in &mut agents {
        a.spawn();
    }
    for a in &agents {
        wait_updated(&s, &a.name, &v1, 120);
    }
    v2_with(&src, mib);
    let before = s.stats()["delta_bytes_sent"].as_u64().unwrap();
    let start = Instant::now();
    let v2 = s.release(&src, "lab/stable");
    for a in &agents {
        wait_updated(&s, &a.name, &v2, 300);
    }
    let secs = start.elapsed().as_secs_f64();
    let pack = std::fs::metadata(delta_pack(&s, &v1, &v2)).unwrap().len();
    let http_bytes = s.stats()["delta_bytes_sent"].as_u64().unwrap() - before;
    let uploaded = if torrent {
        torrents(&s)
            .iter()
            .find(|t| t["name"] == format!("{v1}-{v2}.pack"))
            .and_then(|t| t["uploaded"].as_u64())
            .unwrap_or(0)
    } else {
        0
    };
    for a in &agents {
        let log = a.log();
        assert!(log.contains("rebuilt and verified"), "{}: {log}", a.name);
        assert_eq!(a.current().as_deref(), Some(v2.as_str()), "{}", a.name);
    }
    assert_deployed(&src, &agents[0].deployment());
    assert_deployed(&src, &agents[n - 1].deployment());
    if torrent {
        let from_swarm = agents
            .iter()
            .filter(|a| a.log().contains("from the swarm: "))
            .count();
        eprintln!("{from_swarm} of {n} agents took the pack from the swarm");
        for a in &agents {
            for l in a
                .log()
                .lines()
                .filter(|l| l.contains("the swarm") || l.contains("applied the delta"))
            {
                eprintln!("{}: {l}", a.name);
            }
        }
    }
    for a in &mut agents {
        a.stop();
    }
    (uploaded, http_bytes, pack, secs)
}

#[test]
fn slow_twenty_agents_on_one_site_update_through_the_swarm() {
    let (uploaded, http_bytes, pack, secs) = site_update(20, 8, true, None);
    eprintln!(
        "20 agents: pack {pack} bytes, server seeded {uploaded} and sent {http_bytes} over HTTP, \
         converged in {secs:.1} s"
    );
    assert!(
        uploaded + http_bytes <= 2 * pack,
        "the server sent {uploaded} + {http_bytes} bytes, more than twice the pack ({pack})"
    );
}

/// bench/torrent.sh: the same site updated twice in one run, through the swarm and over HTTP
/// alone; writes a Markdown table to $BENCH_TORRENT_OUT.
#[test]
#[ignore = "a benchmark: bench/torrent.sh runs it"]
fn bench_torrent_site_update_with_and_without_the_swarm() {
    let n: usize = std::env::var("BENCH_AGENTS").map_or(20, |v| v.parse().unwrap());
    let mib: usize = std::env::var("BENCH_MIB").map_or(8, |v| v.parse().unwrap());
    let uplink = std::env::var("BENCH_UPLINK").unwrap_or_else(|_| "100mbit".into());
    let mut out = String::new();
    for (label, shaped) in [
        (
            format!("site behind a {uplink} uplink (netns + tc)"),
            Some(uplink.as_str()),
        ),
        ("loopback, no limit".to_owned(), None),
    ] {
        let (up_t, http_t, pack_t, secs_t) = site_update(n, mib, true, shaped);
        let (_, http_h, pack_h, secs_h) = site_update(n, mib, false, shaped);
        assert!(
            http_h >= pack_h * n as u64,
            "every agent took the pack over HTTP"
        );
        let server_t = up_t + http_t;
        out.push_str(&format!(
            "**{label}**\n\n\
             | mode | agents | pack bytes | server sent (seeder + HTTP) | × pack | converged s |\n\
             | --- | ---: | ---: | ---: | ---: | ---: |\n\
             | BitTorrent | {n} | {pack_t} | {server_t} ({up_t} + {http_t}) | {:.2} | {secs_t:.1} |\n\
             | HTTP only | {n} | {pack_h} | {http_h} | {:.2} | {secs_h:.1} |\n\n\
             Ratios, BitTorrent / HTTP: server bytes {:.3}, time to converge {:.2}.\n\n",
            server_t as f64 / pack_t as f64,
            http_h as f64 / pack_h as f64,
            (server_t as f64 / pack_t as f64) / (http_h as f64 / pack_h as f64),
            secs_t / secs_h,
        ));
    }
    eprintln!("{out}");
    if let Ok(p) = std::env::var("BENCH_TORRENT_OUT") {
        std::fs::write(p, out).unwrap();
    }
}
