//! Relays as real processes on loopback (docs/RELAY.md): root → relay A → relay B → machines;
//! each relay fetches content from its upstream once; check-ins pass through with their
//! signatures and the root records the path; a relay killed or poisoned is left for the next
//! upstream and reported; bad requests to a relay get clear errors.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::BIN;
use crate::fleet::{Agent, Server, free_port, http, image, wait_until, wait_updated};

/// A `semithin relay` process.
pub(crate) struct Relay {
    pub name: String,
    pub data: PathBuf,
    log: PathBuf,
    port: u16,
    pub url: String,
    upstreams: Vec<String>,
    token: String,
    child: Option<Child>,
    /// Where it listens (127.0.0.1 unless given) and the network namespace it runs in.
    host: String,
    netns: Option<String>,
    /// More flags of `semithin relay`.
    args: Vec<String>,
    /// A client for its URL (trusting its CA when it serves HTTPS).
    client: reqwest::blocking::Client,
}

impl Relay {
    pub fn start(s: &Server, name: &str, upstreams: &[&str], token: &str) -> Relay {
        Self::start_in(s, name, upstreams, token, "127.0.0.1", None)
    }

    fn start_in(
        s: &Server,
        name: &str,
        upstreams: &[&str],
        token: &str,
        host: &str,
        netns: Option<&str>,
    ) -> Relay {
        Self::start_full(s, name, upstreams, token, host, netns, &[], None)
    }

    /// A relay started with more flags; `ca`: it serves HTTPS with a certificate of this CA.
    #[allow(clippy::too_many_arguments)]
    pub fn start_full(
        s: &Server,
        name: &str,
        upstreams: &[&str],
        token: &str,
        host: &str,
        netns: Option<&str>,
        args: &[&str],
        ca: Option<&Path>,
    ) -> Relay {
        let port = free_port();
        let mut client = http().timeout(Duration::from_secs(10));
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).unwrap();
            client = client.tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap());
        }
        let scheme = if ca.is_some() { "https" } else { "http" };
        let mut r = Relay {
            host: host.into(),
            netns: netns.map(str::to_owned),
            name: name.into(),
            data: s.path(&format!("relays/{name}")),
            log: s.path(&format!("relays/{name}.log")),
            port,
            url: format!("{scheme}://{host}:{port}"),
            upstreams: upstreams.iter().map(|u| u.to_string()).collect(),
            token: token.into(),
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            client: client.build().unwrap(),
        };
        r.spawn();
        r
    }

    pub fn spawn(&mut self) {
        std::fs::create_dir_all(self.log.parent().unwrap()).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        c.arg("relay")
            .arg("--data")
            .arg(&self.data)
            .args(["--listen", &format!("{}:{}", self.host, self.port)])
            .args(["--name", &self.name, "--token", &self.token])
            .args(["--url", &self.url])
            .args(&self.args);
        for u in &self.upstreams {
            c.args(["--upstream", u]);
        }
        self.child = Some(
            c.stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let url = format!("{}/api/v1/health", self.url);
        wait_until(&format!("relay {} answering", self.name), 30, || {
            self.get(&url).is_some_and(|(st, _)| st == 200)
        });
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// GET from where the relay is (inside its namespace, through curl there).
    fn get(&self, url: &str) -> Option<(u16, String)> {
        match &self.netns {
            None => {
                let r = self.client.get(url).send().ok()?;
                Some((r.status().as_u16(), r.text().ok()?))
            }
            Some(ns) => {
                let out = Command::new("ip")
                    .args(["netns", "exec", ns, "curl", "-s", "-m", "10"])
                    .args(["-w", "\n%{http_code}", url])
                    .output()
                    .ok()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let (body, code) = text.rsplit_once('\n')?;
                Some((code.trim().parse().ok()?, body.to_owned()))
            }
        }
    }

    pub fn info(&self) -> Value {
        let (_, body) = self.get(&format!("{}/api/v1/relay", self.url)).unwrap();
        serde_json::from_str(&body).unwrap()
    }

    pub fn n(&self, field: &str) -> u64 {
        self.info()[field].as_u64().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

fn content_sent(s: &Server) -> u64 {
    let st = s.stats();
    st["object_bytes_sent"].as_u64().unwrap() + st["delta_bytes_sent"].as_u64().unwrap()
}

pub(crate) fn many_uses_token(s: &Server) -> String {
    let (st, v) = s.post(
        "/api/v1/admin/tokens",
        &json!({"preauthorized": true, "uses": 100}),
    );
    assert_eq!(st, 200, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

fn events(s: &Server, name: &str) -> Vec<Value> {
    s.machine(name)["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn has_event(s: &Server, name: &str, kind: &str, text: &str) -> bool {
    events(s, name)
        .iter()
        .any(|e| e["kind"] == json!(kind) && e["detail"].as_str().is_some_and(|d| d.contains(text)))
}

/// Flips one byte in the middle of a file.
fn flip(p: &Path) {
    let mut b = std::fs::read(p).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0xff;
    std::fs::write(p, b).unwrap();
}

#[test]
fn relay_tree_converges_and_the_root_sends_content_once_per_relay() {
    let s = Server::start();
    let t = many_uses_token(&s);
    let src = s.path("img");
    image(&src, 1, 100);
    let v1 = s.release(&src, "lab/stable");
    let a = Relay::start(&s, "relay-a", &[&s.url], &t);
    // relay B enrolls through relay A (its enrollment is forwarded)
    let mut b = Relay::start(&s, "relay-b", &[&a.url], &t);
    let relay_b = s.machine("relay-b");
    assert_eq!(relay_b["status"], "accepted", "{relay_b}");
    assert_eq!(relay_b["labels"]["role"], "relay");

    let mut agents: Vec<Agent> = (1..=3)
        .map(|i| Agent::new(&s, &format!("b{i}"), &t).server(&b.url))
        .collect();
    agents.push(Agent::new(&s, "a1", &t).server(&a.url));
    for ag in &mut agents {
        ag.spawn();
    }
    wait_until("4 machines and 2 relays enrolled", 60, || {
        s.machines().len() == 6
    });
    s.ok(&["fleet", "assign", "*", "lab/stable"]);
    for ag in &agents {
        wait_updated(&s, &ag.name, &v1, 60);
    }
    // every machine's check-ins came through its relays, nearest first
    for i in 1..=3 {
        assert_eq!(
            s.machine(&format!("b{i}"))["relay_path"],
            json!(["relay-b", "relay-a"])
        );
    }
    assert_eq!(s.machine("a1")["relay_path"], json!(["relay-a"]));
    // their check-ins went up in batches: relay B's passed through relay A as they came
    assert!(b.n("batches") > 0 && b.n("batched") >= 3, "{}", b.info());
    assert!(a.n("batches") > 0, "{}", a.info());
    assert!(s.stats()["checkins_batched"].as_u64().unwrap() > 0);
    let list: Value = serde_json::from_str(&s.ok(&["fleet", "list", "--json"])).unwrap();
    let b2 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "b2")
        .unwrap();
    assert_eq!(b2["relay_path"], json!(["relay-b", "relay-a"]));
    let shown = s.ok(&["fleet", "show", "b2"]);
    assert!(
        shown.contains("relay-b") && shown.contains("relay-a"),
        "{shown}"
    );

    // v1: 4 machines, the root sent its content about once (to relay A)
    let root_v1 = content_sent(&s);
    let b_served = b.n("served_bytes");
    let per_machine = b_served / 3;
    assert!(per_machine > 400_000, "{}", b.info());
    assert!(
        (root_v1 as f64) < 1.1 * per_machine as f64,
        "root sent {root_v1} for v1; one machine took {per_machine}"
    );
    assert!(
        (b.n("fetched_bytes") as f64) < 1.1 * per_machine as f64,
        "{}",
        b.info()
    );

    // v2, a delta from v1: again once from the root
    image(&src, 2, 100);
    let before = content_sent(&s);
    let served_before = b.n("served_bytes");
    let v2 = s.release(&src, "lab/stable");
    for ag in &agents {
        wait_updated(&s, &ag.name, &v2, 60);
        assert!(ag.log().contains("applied the delta pack"), "{}", ag.log());
    }
    let root_v2 = content_sent(&s) - before;
    let per_machine_v2 = (b.n("served_bytes") - served_before) / 3;
    eprintln!(
        "root content sent: v1 {root_v1} bytes (one machine took {per_machine}), v2 {root_v2} \
         (one machine took {per_machine_v2}); 4 machines under 2 relays"
    );
    assert!(root_v2 > 0);
    assert!(
        (root_v2 as f64) < 1.1 * per_machine_v2 as f64,
        "root sent {root_v2} for v2; one machine took {per_machine_v2}"
    );

    // a restarted relay keeps its cache and answers from it
    let items = b.n("cache_items");
    assert!(items > 0);
    b.kill();
    b.spawn();
    assert_eq!(b.n("cache_items"), items, "{}", b.log());
    let fetched = b.n("fetched_bytes");
    let delta = format!("{}/api/v1/deltas/{v1}/{v2}", b.url);
    let r = http().build().unwrap().get(&delta).send().unwrap();
    assert_eq!(r.status(), 200);
    let whole = r.bytes().unwrap().len() as u64;
    assert!(whole > 0);
    assert_eq!(b.n("fetched_bytes"), fetched, "served from the cache kept");
    // and a range of it
    let r = http()
        .build()
        .unwrap()
        .get(&delta)
        .header("range", "bytes=10-")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().unwrap().len() as u64, whole - 10);
    drop(agents);
}

#[test]
fn relay_killed_mid_update_its_machines_fail_over_and_converge() {
    let s = Server::start();
    let t = many_uses_token(&s);
    let src = s.path("img");
    image(&src, 1, 50);
    let v1 = s.release(&src, "lab/stable");
    let mut r = Relay::start(&s, "relay-x", &[&s.url], &t);
    let mut agents: Vec<Agent> = (1..=2)
        .map(|i| Agent::new(&s, &format!("x{i}"), &t).server(&format!("{},{}", r.url, s.url)))
        .collect();
    for ag in &mut agents {
        ag.spawn();
    }
    wait_until("2 machines enrolled", 60, || s.machines().len() == 3);
    s.ok(&["fleet", "assign", "*", "lab/stable"]);
    for ag in &agents {
        wait_updated(&s, &ag.name, &v1, 60);
        assert_eq!(s.machine(&ag.name)["relay_path"], json!(["relay-x"]));
    }
    // the relay dies with the machines' long polls open through it; v2 is published
    r.kill();
    image(&src, 2, 50);
    let v2 = s.release(&src, "lab/stable");
    for ag in &agents {
        wait_updated(&s, &ag.name, &v2, 90);
        assert!(ag.log().contains("using http://127.0.0.1"), "{}", ag.log());
        // straight to the root now, and the root knows why
        assert_eq!(s.machine(&ag.name)["relay_path"], Value::Null);
        assert!(
            has_event(&s, &ag.name, "bad-upstream", &r.url),
            "{:#}",
            s.machine(&ag.name)
        );
    }
}

#[test]
fn relay_poisoned_pack_and_object_are_refused_reported_and_fetched_elsewhere() {
    let s = Server::start();
    let t = many_uses_token(&s);
    let src = s.path("img");
    image(&src, 1, 50);
    let v1 = s.release(&src, "lab/stable");
    let p = Relay::start(&s, "relay-p", &[&s.url], &t);
    let both = format!("{},{}", p.url, s.url);
    // a first machine fills the relay's cache with v1's objects
    let mut first = Agent::new(&s, "p1", &t).server(&both);
    first.spawn();
    wait_until("p1 enrolled", 60, || s.machines().len() == 2);
    s.ok(&["fleet", "assign", "*", "lab/stable"]);
    wait_updated(&s, "p1", &v1, 60);
    // the relay now serves a damaged chunk: the largest one, a flipped byte
    let chunks = p.data.join("cache/objects/chunk");
    let biggest = std::fs::read_dir(&chunks)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    flip(&biggest);
    let mut second = Agent::new(&s, "p2", &t).server(&both);
    second.spawn();
    wait_until("p2 enrolled", 60, || s.machines().len() == 3);
    s.ok(&["fleet", "assign", "p2", "lab/stable"]);
    wait_updated(&s, "p2", &v1, 90);
    assert!(
        has_event(&s, "p2", "bad-upstream", &p.url),
        "{:#}\n{}",
        s.machine("p2"),
        second.log()
    );
    crate::fleet::assert_deployed(&src, &second.deployment());

    // v2's delta pack is fetched into the relay, then damaged there
    first.stop();
    image(&src, 2, 50);
    let v2 = s.release(&src, "lab/stable");
    let r = http()
        .build()
        .unwrap()
        .get(format!("{}/api/v1/deltas/{v1}/{v2}", p.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().unwrap();
    flip(&p.data.join(format!("cache/deltas/{v1}/{v2}")));
    first.spawn();
    wait_updated(&s, "p1", &v2, 90);
    assert!(
        first.log().contains("the delta pack was refused"),
        "{}",
        first.log()
    );
    assert!(
        has_event(&s, "p1", "bad-upstream", "did not verify"),
        "{:#}",
        s.machine("p1")
    );
    crate::fleet::assert_deployed(&src, &first.deployment());
}

#[test]
fn relay_refuses_bad_requests_with_clear_errors() {
    let s = Server::start();
    let t = many_uses_token(&s);
    let r = Relay::start(&s, "relay-q", &[&s.url], &t);
    let c = http().timeout(Duration::from_secs(30)).build().unwrap();
    let get = |path: &str| {
        let resp = c.get(format!("{}{path}", r.url)).send().unwrap();
        let st = resp.status().as_u16();
        (
            st,
            serde_json::from_str::<Value>(&resp.text().unwrap()).unwrap_or(Value::Null),
        )
    };
    for (path, status, text) in [
        ("/etc/passwd", 400, "no such endpoint"),
        ("/api/v1/objects/chunk/zz", 400, "bad object"),
        ("/api/v1/deltas/abc/def", 400, "64 hex digits"),
        ("/api/v1/trust/metadata/.hidden", 400, "bad metadata path"),
        ("/api/v1/objects", 405, "takes POST"),
        // a well-formed name the root does not have: its refusal, passed on
        ("/api/v1/trust/metadata/99.root.json", 404, ""),
    ] {
        let (st, v) = get(path);
        assert_eq!(st, status, "{path}: {v}");
        assert!(v["error"].as_str().unwrap().contains(text), "{path}: {v}");
    }
    // a batch naming something that is no object
    let resp = c
        .post(format!("{}/api/v1/objects", r.url))
        .body(r#"{"objects": ["chunk/nothex"]}"#)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().unwrap().contains("bad object"));
    // a body over the relay's limit
    let resp = c
        .post(format!("{}/api/v1/checkin", r.url))
        .body(vec![b' '; 301 << 20])
        .send();
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 413);
        assert!(resp.text().unwrap().contains("larger than"));
    }
    // an unsigned check-in forwarded: the root's own refusal comes back
    let resp = c
        .post(format!("{}/api/v1/checkin", r.url))
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.text().unwrap().contains("unsigned request"));
    assert!(
        r.log().is_empty() || !r.log().contains("panicked"),
        "{}",
        r.log()
    );
}

#[test]
fn relay_placement_moves_machines_under_a_relay_and_back() {
    let s = Server::start();
    let t = many_uses_token(&s);
    let src = s.path("img");
    image(&src, 1, 10);
    let v1 = s.release(&src, "lab/stable");
    let r = Relay::start(&s, "relay-m", &[&s.url], &t);
    let mut ag = Agent::new(&s, "m1", &t).arg("--follow-placement");
    let mut other = Agent::new(&s, "m2", &t);
    ag.spawn();
    other.spawn();
    wait_until("m1 and m2 enrolled", 60, || s.machines().len() == 3);
    s.ok(&["fleet", "label", "m1", "site=x"]);
    s.ok(&["fleet", "label", "m2", "site=y"]);
    // placed by label, and assigned in the same move
    let out = s.ok(&[
        "fleet",
        "move",
        "site=x",
        "--relay",
        &r.url,
        "--channel",
        "lab/stable",
    ]);
    assert!(out.contains("1 machine(s) changed"), "{out}");
    s.ok(&["fleet", "assign", "m2", "lab/stable"]);
    wait_updated(&s, "m1", &v1, 60);
    wait_updated(&s, "m2", &v1, 60);
    wait_until("m1 checking in through the relay", 60, || {
        s.machine("m1")["relay_path"] == json!(["relay-m"])
    });
    assert_eq!(s.machine("m1")["placement"], json!([r.url]));
    assert!(r.n("served_bytes") > 0);
    assert_eq!(
        s.machine("m2")["relay_path"],
        Value::Null,
        "m2 was not moved"
    );
    // bad placements are refused, naming the problem
    let bad = s.cli(&["fleet", "move", "m1", "--relay", "ftp://x/"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("relay URL"));
    // back to the server it is configured with
    s.ok(&["fleet", "move", "m1", "--direct"]);
    s.ok(&["push", "m1"]);
    wait_until("m1 checking in straight to the server", 60, || {
        s.machine("m1")["relay_path"] == Value::Null
    });
    drop((ag, other));
}

/// A network namespace with a veth pair to the host, removed (with the pair) when dropped.
pub(crate) struct Site {
    pub ns: String,
    host_if: String,
    pub host_ip: String,
}

impl Site {
    fn new(n: u8) -> Site {
        Self::shaped(n, "40mbit")
    }

    /// A site whose uplink (host to site) is shaped to `rate` (tc's units: `40mbit`).
    pub(crate) fn shaped(n: u8, rate: &str) -> Site {
        let id = std::process::id() % 100_000;
        let ns = format!("semithin-site-{id}-{n}");
        let host_if = format!("stv{id}h{n}");
        let site_if = format!("stv{id}s{n}");
        let net = format!("10.{}.{n}", 100 + (id % 100));
        let site = Site {
            ns: ns.clone(),
            host_if: host_if.clone(),
            host_ip: format!("{net}.1"),
        };
        crate::common::sh(&format!(
            "set -e; ip netns add {ns}; ip -n {ns} link set lo up; \
             ip link add {host_if} type veth peer name {site_if} netns {ns}; \
             ip addr add {net}.1/24 dev {host_if}; ip link set {host_if} up; \
             ip -n {ns} addr add {net}.2/24 dev {site_if}; ip -n {ns} link set {site_if} up; \
             tc qdisc add dev {host_if} root tbf rate {rate} burst 64kb latency 200ms"
        ));
        site
    }

    /// Bytes the host sent down the uplink.
    pub(crate) fn down_bytes(&self) -> u64 {
        std::fs::read_to_string(format!(
            "/sys/class/net/{}/statistics/tx_bytes",
            self.host_if
        ))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[test]
fn slow_relay_netns_site_behind_a_shaped_uplink_fetches_each_update_once() {
    let s = Server::start();
    let t = many_uses_token(&s);
    let src = s.path("img");
    image(&src, 1, 100);
    let v1 = s.release(&src, "lab/stable");
    let site = Site::new(1);
    // relay A at the root's end of the uplink, relay B and three machines on the site
    let a = Relay::start_in(&s, "region", &[&s.url], &t, &site.host_ip, None);
    let b = Relay::start_in(&s, "school", &[&a.url], &t, "127.0.0.1", Some(&site.ns));
    let mut agents: Vec<Agent> = (1..=3)
        .map(|i| {
            Agent::new(&s, &format!("n{i}"), &t)
                .server(&b.url)
                .netns(&site.ns)
        })
        .collect();
    for ag in &mut agents {
        ag.spawn();
    }
    wait_until("3 machines and 2 relays enrolled", 90, || {
        s.machines().len() == 5
    });
    s.ok(&["fleet", "assign", "*", "lab/stable"]);
    for ag in &agents {
        wait_updated(&s, &ag.name, &v1, 120);
        assert_eq!(
            s.machine(&ag.name)["relay_path"],
            json!(["school", "region"])
        );
    }
    image(&src, 2, 100);
    let down = site.down_bytes();
    let served = b.n("served_bytes");
    let root = content_sent(&s);
    let v2 = s.release(&src, "lab/stable");
    for ag in &agents {
        wait_updated(&s, &ag.name, &v2, 120);
    }
    let uplink = site.down_bytes() - down;
    let per_machine = (b.n("served_bytes") - served) / 3;
    let root_sent = content_sent(&s) - root;
    eprintln!(
        "netns: the uplink carried {uplink} bytes for v2 (root sent {root_sent}), each of 3 \
         machines took {per_machine}"
    );
    assert!(per_machine > 400_000);
    // once over the shaped uplink (plus check-ins and metadata), not once per machine
    assert!(
        (uplink as f64) < 1.5 * per_machine as f64,
        "uplink {uplink} vs one machine's {per_machine}"
    );
    assert!((root_sent as f64) < 1.1 * per_machine as f64);
    drop(agents);
}

/// A hostile relay: forwards everything to the root, but once `STALE` exists it answers
/// `timestamp.json` with the bytes of that file (metadata the machine has seen superseded).
const STALE_PROXY: &str = r#"
import http.server, os, sys, urllib.request, urllib.error
upstream, stale = sys.argv[2], sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def go(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else None
        if self.path.endswith("/timestamp.json") and os.path.exists(stale):
            data, status = open(stale, "rb").read(), 200
        else:
            req = urllib.request.Request(upstream + self.path, data=body, method=self.command)
            for k, v in self.headers.items():
                if k.lower() not in ("host", "content-length", "connection"):
                    req.add_header(k, v)
            try:
                r = urllib.request.urlopen(req, timeout=600)
                data, status = r.read(), r.status
            except urllib.error.HTTPError as e:
                data, status = e.read(), e.code
        self.send_response(status)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    do_GET = do_POST = go
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

#[test]
fn relay_serving_stale_metadata_is_refused_reported_and_left() {
    let s = Server::start();
    let t = many_uses_token(&s);
    let src = s.path("img");
    image(&src, 1, 10);
    let _v1 = s.release(&src, "lab/stable");
    let ts1 = std::fs::read(s.repo().join("trust/metadata/timestamp.json")).unwrap();
    let stale = s.path("stale-timestamp.json");
    let script = s.path("stale-proxy.py");
    std::fs::write(&script, STALE_PROXY).unwrap();
    let port = free_port();
    let proxy_url = format!("http://127.0.0.1:{port}");
    let mut proxy = Command::new("python3")
        .arg(&script)
        .arg(port.to_string())
        .arg(&s.url)
        .arg(&stale)
        .spawn()
        .unwrap();
    wait_until("the proxy answering", 30, || {
        http()
            .build()
            .unwrap()
            .get(format!("{proxy_url}/api/v1/health"))
            .send()
            .is_ok_and(|r| r.status().is_success())
    });
    let mut ag = Agent::new(&s, "st1", &t).server(&format!("{proxy_url},{}", s.url));
    ag.spawn();
    wait_until("st1 enrolled", 60, || s.machines().len() == 1);
    image(&src, 2, 10);
    let v2 = s.release(&src, "lab/stable");
    s.ok(&["fleet", "assign", "st1", "lab/stable"]);
    wait_updated(&s, "st1", &v2, 60);
    // from now on the proxy serves v1's timestamp: older than the one the machine trusts
    std::fs::write(&stale, &ts1).unwrap();
    image(&src, 3, 10);
    let v3 = s.release(&src, "lab/stable");
    wait_updated(&s, "st1", &v3, 90);
    assert!(
        has_event(&s, "st1", "bad-upstream", &proxy_url),
        "{:#}\n{}",
        s.machine("st1"),
        ag.log()
    );
    assert!(
        ag.log().contains(&format!("upstream {proxy_url} failed")),
        "{}",
        ag.log()
    );
    // refused by the machine's TUF client, as a rollback of the timestamp
    assert!(
        has_event(&s, "st1", "bad-upstream", "timestamp"),
        "{:#}",
        s.machine("st1")["events"]
    );
    let _ = proxy.kill();
    let _ = proxy.wait();
}

#[test]
fn relay_in_an_agent_serves_its_neighbours_with_the_machines_own_key() {
    let s = Server::start();
    let t = many_uses_token(&s);
    let src = s.path("img");
    image(&src, 1, 20);
    let v1 = s.release(&src, "lab/stable");
    let port = free_port();
    let mut host = Agent::new(&s, "host1", &t)
        .arg("--relay-listen")
        .arg(&format!("127.0.0.1:{port}"));
    host.spawn();
    // the relay starts once the machine has its key (made when it enrolls)
    let health = format!("http://127.0.0.1:{port}/api/v1/health");
    wait_until("host1's relay answering", 60, || {
        http()
            .build()
            .unwrap()
            .get(&health)
            .send()
            .is_ok_and(|r| r.status().is_success())
    });
    let mut neighbour =
        Agent::new(&s, "neighbour1", &t).server(&format!("http://127.0.0.1:{port},{}", s.url));
    neighbour.spawn();
    wait_until("both enrolled", 60, || s.machines().len() == 2);
    s.ok(&["fleet", "assign", "*", "lab/stable"]);
    wait_updated(&s, "host1", &v1, 60);
    wait_updated(&s, "neighbour1", &v1, 60);
    assert_eq!(s.machine("neighbour1")["relay_path"], json!(["host1"]));
    assert_eq!(s.machine("host1")["relay_path"], Value::Null);
    // the relay read the release as host1 (its own signed requests), and keeps its cache in
    // the agent's state directory
    assert!(
        host.state.join("relay/cache/objects").is_dir(),
        "{}",
        host.log()
    );
    assert!(
        !has_event(&s, "neighbour1", "bad-upstream", ""),
        "{:#}",
        s.machine("neighbour1")
    );
    drop(neighbour);
}
