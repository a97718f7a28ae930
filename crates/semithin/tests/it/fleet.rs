//! The server and agents as real processes on loopback: enrollment, updates, crashes, an absent
//! server, health checks and rollback, tampering, and who may do what.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use semithin_protocol::sign::MachineKey;
use serde_json::{Value, json};

use crate::common::{BIN, q, sh};

/// A deployment has the image's content and metadata; its files share inodes with the agent's
/// checkout cache and earlier deployments, so link counts are not compared, nor the mtimes and
/// sizes of directories (which depend on the order their entries were made in).
pub(crate) fn assert_deployed(src: &Path, dep: &Path) {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(src)
        .arg(dep)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let list = |d: &Path| {
        sh(&format!(
            "cd {} && find . -printf '%p|%y|%U|%G|%m|%T@|%l|%s\\n' | LC_ALL=C sort | \
             awk -F'|' -v OFS='|' '$2 == \"d\" {{ $6 = \"\"; $8 = \"\" }} {{ print }}'",
            q(d)
        ))
    };
    let (want, got) = (list(src), list(dep));
    let only = |a: &str, b: &str| -> Vec<String> {
        let b: std::collections::HashSet<&str> = b.lines().collect();
        a.lines()
            .filter(|l| !b.contains(l))
            .map(str::to_owned)
            .collect()
    };
    assert!(
        want == got,
        "metadata of {} differs: image has {:?}, deployment has {:?}",
        dep.display(),
        only(&want, &got),
        only(&got, &want)
    );
}

/// An HTTP client as the binary makes them (rustls with the ring provider installed).
pub(crate) fn http() -> reqwest::blocking::ClientBuilder {
    semithin_agent::http::client_builder(None).unwrap()
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A server in a temporary directory.
pub(crate) struct Server {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub port: u16,
    pub url: String,
    pub token: String,
    child: Option<Child>,
    http: reqwest::blocking::Client,
    /// With TLS: the CA certificate that signed the server's certificate.
    pub ca: Option<PathBuf>,
    /// More flags of `semithin serve`.
    args: Vec<String>,
    /// The address it listens on (127.0.0.1, or 0.0.0.0 for machines in namespaces).
    ip: &'static str,
}

/// A certificate authority of the fleet's own and a server certificate it signed for
/// 127.0.0.1, made with openssl in `dir`: (CA certificate, server certificate, server key).
pub(crate) fn make_certs(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    sh(&format!(
        "set -e; cd {d}; \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
           -subj '/CN=semithin test CA {name}' -keyout ca.key -out ca.pem 2>/dev/null; \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
           -subj '/CN=127.0.0.1' -keyout server.key -out server.csr 2>/dev/null; \
         printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > ext; \
         openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
           -extfile ext -out server.pem 2>/dev/null",
        d = q(&d)
    ));
    (d.join("ca.pem"), d.join("server.pem"), d.join("server.key"))
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(false)
    }

    /// A server speaking HTTPS with a certificate of its own CA.
    pub fn start_tls() -> Server {
        Self::start_with(true)
    }

    /// A server started with more flags of `semithin serve`.
    pub fn start_args(args: &[&str]) -> Server {
        Self::start_full(false, args)
    }

    /// A server speaking HTTPS, started with more flags of `semithin serve`.
    pub fn start_tls_args(args: &[&str]) -> Server {
        Self::start_full(true, args)
    }

    fn start_with(tls: bool) -> Server {
        Self::start_full(tls, &[])
    }

    /// A server listening on every IPv4 address (for machines in network namespaces), started
    /// with more flags of `semithin serve`; its `url` is still the loopback one.
    pub fn start_args_everywhere(args: &[&str]) -> Server {
        Self::start_on(false, "0.0.0.0", args)
    }

    fn start_full(tls: bool, args: &[&str]) -> Server {
        Self::start_on(tls, "127.0.0.1", args)
    }

    fn start_on(tls: bool, ip: &'static str, args: &[&str]) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("semithin-fleet")
            .tempdir()
            .unwrap();
        let data = dir.path().join("server");
        let port = free_port();
        let ca = tls.then(|| make_certs(dir.path(), "fleet").0);
        let mut client = http().timeout(Duration::from_secs(60));
        if let Some(ca) = &ca {
            let pem = std::fs::read(ca).unwrap();
            client = client.tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap());
        }
        let mut s = Server {
            url: format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" }),
            data,
            port,
            token: String::new(),
            child: None,
            http: client.build().unwrap(),
            ca,
            dir,
            args: args.iter().map(|a| a.to_string()).collect(),
            ip,
        };
        s.spawn();
        s.token = std::fs::read_to_string(s.data.join("admin-token"))
            .unwrap()
            .trim()
            .to_owned();
        s
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn repo(&self) -> PathBuf {
        self.data.join("repo")
    }

    pub fn root_json(&self) -> PathBuf {
        self.repo().join("trust/metadata/1.root.json")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", &format!("{}:{}", self.ip, self.port)])
            .arg("--data")
            .arg(&self.data)
            .args(["--checkin-interval", "30", "--max-wait", "30"])
            .args(&self.args);
        if self.ca.is_some() {
            let certs = self.dir.path().join("fleet");
            cmd.arg("--tls-cert")
                .arg(certs.join("server.pem"))
                .arg("--tls-key")
                .arg(certs.join("server.key"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let url = format!("{}/api/v1/health", self.url);
        wait_until("the server answering", 30, || {
            self.http
                .get(&url)
                .send()
                .is_ok_and(|r| r.status().is_success())
        });
    }

    /// SIGKILL, then start again on the same port and data.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs `semithin ARGS` as the admin of this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        if let Some(ca) = &self.ca {
            c.env("SEMITHIN_CA", ca);
        }
        c.args(args)
            .env("SEMITHIN_SERVER", &self.url)
            .env("SEMITHIN_ADMIN_TOKEN", &self.token)
            .env("SEMITHIN_REPO", self.repo())
            .env("HOME", self.dir.path())
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "semithin {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (
            status,
            serde_json::from_str(&r.text().unwrap()).unwrap_or(Value::Null),
        )
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, body)
    }

    pub fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, body)
    }

    fn send(&self, method: reqwest::Method, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).unwrap())
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (
            status,
            serde_json::from_str(&r.text().unwrap()).unwrap_or(Value::Null),
        )
    }

    pub fn enroll_token(&self, preauthorized: bool) -> String {
        let (s, v) = self.post(
            "/api/v1/admin/tokens",
            &json!({"preauthorized": preauthorized}),
        );
        assert_eq!(s, 200, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }

    pub fn machine(&self, name: &str) -> Value {
        let (s, v) = self.get(&format!("/api/v1/admin/machines/{name}"));
        assert_eq!(s, 200, "{v}");
        v
    }

    pub fn machines(&self) -> Vec<Value> {
        let (s, v) = self.get("/api/v1/admin/machines");
        assert_eq!(s, 200, "{v}");
        v.as_array().unwrap().clone()
    }

    /// Commits `src` on `channel` and publishes it (telling the server); returns the commit id.
    pub fn release(&self, src: &Path, channel: &str) -> String {
        let out = self.ok(&[
            "commit",
            src.to_str().unwrap(),
            "--channel",
            channel,
            "--json",
        ]);
        let v: Value = serde_json::from_str(&out).unwrap();
        let id = v["commit"].as_str().unwrap().to_owned();
        self.ok(&["publish", channel]);
        id
    }

    pub fn stats(&self) -> Value {
        self.get("/api/v1/admin/stats").1
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
    }
}

/// An agent's state directory and, while it runs as a daemon, its process.
pub(crate) struct Agent {
    pub name: String,
    pub state: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    /// Runs under `faketime -f OFFSET` (a clock that is off).
    faketime: Option<String>,
    /// Runs in this network namespace (`ip netns exec NS`).
    netns: Option<String>,
}

impl Agent {
    pub fn new(s: &Server, name: &str, token: &str) -> Agent {
        Agent {
            name: name.into(),
            state: s.path(&format!("agents/{name}")),
            log: s.path(&format!("agents/{name}.log")),
            child: None,
            extra: vec![
                "--server".into(),
                s.url.clone(),
                "--token".into(),
                token.into(),
                "--name".into(),
                name.into(),
                "--trusted-root".into(),
                s.root_json().display().to_string(),
                "--verify-interval".into(),
                "0".into(),
                // The host's packages are not the machine's: no inventory unless asked for.
                "--inventory-interval".into(),
                "0".into(),
            ]
            .into_iter()
            .chain(
                s.ca.iter()
                    .flat_map(|ca| ["--ca".into(), ca.display().to_string()]),
            )
            .collect(),
            env: Vec::new(),
            faketime: None,
            netns: None,
        }
    }

    /// Trusts this root instead of the server's.
    pub fn trusted_root(mut self, root: &Path) -> Self {
        let i = self
            .extra
            .iter()
            .position(|x| x == "--trusted-root")
            .unwrap();
        self.extra[i + 1] = root.display().to_string();
        self
    }

    /// Runs with a clock off by `offset` (`faketime -f`, e.g. `+2m`).
    pub fn faketime(mut self, offset: &str) -> Self {
        self.faketime = Some(offset.into());
        self
    }

    /// Runs in the network namespace `ns`.
    pub fn netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.into());
        self
    }

    /// Another state directory (another machine) under the same name.
    pub fn state_dir(mut self, dir: &str) -> Self {
        self.state = self.state.with_file_name(dir);
        self.log = self.log.with_file_name(format!("{dir}.log"));
        self
    }

    /// Trusts this CA instead of the server's (none: the system's roots).
    pub fn ca(mut self, ca: Option<&Path>) -> Self {
        if let Some(i) = self.extra.iter().position(|x| x == "--ca") {
            self.extra.drain(i..i + 2);
        }
        if let Some(ca) = ca {
            self.extra
                .extend(["--ca".to_owned(), ca.display().to_string()]);
        }
        self
    }

    /// Reads the package inventory (of its --sysroot) every `secs` seconds.
    pub fn inventory(mut self, secs: u64) -> Self {
        if let Some(i) = self.extra.iter().position(|x| x == "--inventory-interval") {
            self.extra[i + 1] = secs.to_string();
        }
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.into());
        self
    }

    /// Talks to these upstreams (comma-separated: relays, then the root) instead of the server.
    pub fn server(mut self, urls: &str) -> Self {
        let i = self.extra.iter().position(|x| x == "--server").unwrap();
        self.extra[i + 1] = urls.into();
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    fn command(&self) -> Command {
        std::fs::create_dir_all(self.state.parent().unwrap()).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut c = match (&self.faketime, &self.netns) {
            (Some(offset), _) => {
                let mut c = Command::new("faketime");
                c.args(["-f", offset]).arg(BIN);
                c
            }
            (None, Some(ns)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(BIN);
                c
            }
            (None, None) => Command::new(BIN),
        };
        c.arg("agent")
            .arg("--state")
            .arg(&self.state)
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        c
    }

    /// `agent --once`; the exit status.
    pub fn once(&self) -> std::process::ExitStatus {
        self.command().arg("--once").status().unwrap()
    }

    pub fn spawn(&mut self) {
        self.child = Some(self.command().args(["--interval", "300"]).spawn().unwrap());
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
    }

    /// Waits for the process to end by itself (a crash point); its status.
    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let c = self.child.as_mut().expect("running");
        let start = Instant::now();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                self.child = None;
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "agent did not exit"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn current(&self) -> Option<String> {
        std::fs::read_link(self.state.join("current"))
            .ok()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
    }

    pub fn deployment(&self) -> PathBuf {
        self.state.join("deployments").join(self.current().unwrap())
    }

    /// `semithin agent --state STATE ARGS` (no server flags).
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("agent")
            .arg("--state")
            .arg(&self.state)
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A small image: a few files in nested directories, and `n` extra small files.
pub(crate) fn image(root: &Path, version: u32, extra: usize) {
    sh(&format!(
        "set -e; mkdir -p {r}/etc {r}/usr/bin {r}/usr/lib/x/y/z; cd {r}; \
         printf 'VERSION_ID={version}\\n' > etc/os-release; \
         head -c 400000 /dev/urandom > usr/lib/x/y/z/big; \
         printf '#!/bin/sh\\necho v{version}\\n' > usr/bin/tool; chmod 755 usr/bin/tool; \
         ln -sf tool usr/bin/alias",
        r = q(root)
    ));
    for i in 0..extra {
        let p = root.join(format!("usr/lib/x/f{i}"));
        std::fs::write(p, format!("file {i} of version {version}\n").repeat(3)).unwrap();
    }
}

/// Waits until the machine reports `release` as current and healthy (the server says updated).
pub(crate) fn wait_updated(s: &Server, name: &str, release: &str, secs: u64) {
    wait_until(&format!("{name} updated to {release}"), secs, || {
        let m = s.machine(name);
        m["updated"] == json!(true) && m["report"]["current"] == json!(release)
    });
}

#[test]
fn enrollment_pending_accepted_rejected_and_preauthorised() {
    let s = Server::start();
    let t = s.enroll_token(false);
    let a = Agent::new(&s, "lab-01", &t);
    assert!(a.once().success(), "{}", a.log());
    assert!(a.log().contains("pending"), "{}", a.log());
    let out = s.ok(&["fleet", "list"]);
    assert!(out.contains("lab-01") && out.contains("pending"), "{out}");
    // pending machines get nothing
    let src = s.path("img");
    image(&src, 1, 3);
    let v1 = s.release(&src, "lab/stable");
    let out = s.ok(&["fleet", "accept", "lab-01"]);
    assert!(out.contains("accepted 1 machine"), "{out}");
    s.ok(&["fleet", "assign", "lab-01", "lab/stable"]);
    assert!(a.once().success(), "{}", a.log());
    wait_updated(&s, "lab-01", &v1, 10);
    assert_eq!(a.current().as_deref(), Some(v1.as_str()));

    // a pre-authorised token: accepted at once, labels from the token
    let (st, v) = s.post(
        "/api/v1/admin/tokens",
        &json!({"preauthorized": true, "labels": {"site": "school-12"}, "uses": 1}),
    );
    assert_eq!(st, 200, "{v}");
    let pre = v["token"].as_str().unwrap();
    let b = Agent::new(&s, "kiosk-1", pre);
    assert!(b.once().success(), "{}", b.log());
    let m = s.machine("kiosk-1");
    assert_eq!(m["status"], "accepted");
    assert_eq!(m["labels"]["site"], "school-12");
    // the token had one use
    let c = Agent::new(&s, "kiosk-2", pre);
    assert!(!c.once().success());
    assert!(
        c.log()
            .contains("enrollment token unknown, expired or used up"),
        "{}",
        c.log()
    );
    let d = Agent::new(&s, "x", "not-a-token");
    assert!(!d.once().success());
    assert!(d.log().contains("enrollment token unknown"), "{}", d.log());
    // a second machine cannot take a name in use
    let e = Agent::new(&s, "lab-01", &t).state_dir("impostor");
    assert!(!e.once().success());
    assert!(e.log().contains("taken by another machine"), "{}", e.log());

    // assign by label selector, then reject
    let out = s.ok(&["fleet", "assign", "site=school-12", "lab/stable"]);
    assert!(out.contains("kiosk-1"), "{out}");
    assert!(b.once().success(), "{}", b.log());
    wait_updated(&s, "kiosk-1", &v1, 10);
    s.ok(&["fleet", "reject", "kiosk-1"]);
    assert!(!b.once().success());
    assert!(b.log().contains("rejected"), "{}", b.log());
    let out = s.ok(&["fleet", "list", "--json"]);
    let list: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(list.len(), 2);
    let out = s.ok(&["fleet", "show", "lab-01"]);
    assert!(out.contains("enrolled") && out.contains(&v1), "{out}");
}

#[test]
fn a_fleet_converges_v1_to_v2_fetching_only_what_changed() {
    let s = Server::start();
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 200);
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
    let after_v1 = s.stats();
    let fetched_v1: u64 = s.machine("m1")["report"]["fetched_bytes"].as_u64().unwrap();
    assert!(fetched_v1 > 400_000 / 50, "fetched {fetched_v1}");

    // v2 changes two small files; the agents are woken by the publish (their interval is 300 s)
    std::fs::write(src.join("etc/os-release"), "VERSION_ID=2\n").unwrap();
    std::fs::write(src.join("usr/lib/x/f7"), "changed\n").unwrap();
    let v2 = s.release(&src, "lab/stable");
    let start = Instant::now();
    for a in &agents {
        wait_updated(&s, &a.name, &v2, 30);
    }
    assert!(start.elapsed() < Duration::from_secs(60));
    let after_v2 = s.stats();
    let sent_v2 = after_v2["object_bytes_sent"].as_u64().unwrap()
        - after_v1["object_bytes_sent"].as_u64().unwrap();
    let sent_v1 = after_v1["object_bytes_sent"].as_u64().unwrap();
    // v2 brings 2 chunks and the trees above them, per machine
    assert!(sent_v2 * 5 < sent_v1, "v2 {sent_v2} vs v1 {sent_v1}");
    // ... as a delta pack from v1: no object crossed the network for it
    let deltas_v2 = after_v2["delta_bytes_sent"].as_u64().unwrap()
        - after_v1["delta_bytes_sent"].as_u64().unwrap();
    assert!(deltas_v2 > 0, "{after_v2}");
    assert_eq!(sent_v2, 0, "v2 came as a delta: {after_v2}");
    let fetched_v2 = s.machine("m1")["report"]["fetched_bytes"].as_u64().unwrap() - fetched_v1;
    assert!(fetched_v2 * 5 < fetched_v1, "{fetched_v2} vs {fetched_v1}");
    for a in &agents {
        assert_eq!(a.current().as_deref(), Some(v2.as_str()));
        assert_deployed(&src, &a.deployment());
        // the previous deployment is kept for rollback, unchanged files are shared with it
        let prev = a.state.join("deployments").join(&v1);
        assert!(prev.join("etc/os-release").exists());
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        assert_eq!(
            ino(&prev.join("usr/lib/x/y/z/big")),
            ino(&a.deployment().join("usr/lib/x/y/z/big"))
        );
        assert!(a.log().contains("is healthy"), "{}", a.log());
        assert!(a.log().contains("applied the delta pack"), "{}", a.log());
    }
    // a third release: the oldest deployment is removed (keep 1 besides the current)
    std::fs::write(src.join("etc/os-release"), "VERSION_ID=3\n").unwrap();
    let v3 = s.release(&src, "lab/stable");
    for a in &agents {
        wait_updated(&s, &a.name, &v3, 30);
        let mut left: Vec<String> = std::fs::read_dir(a.state.join("deployments"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec![v2.clone(), v3.clone()];
        want.sort();
        assert_eq!(left, want);
    }
    // `semithin push` wakes a machine: it checks in at once
    let before = s.stats()["checkins"].as_u64().unwrap();
    let out = s.ok(&["push", "m2"]);
    assert!(out.contains("woke 1 machine"), "{out}");
    wait_until("m2 checked in after the push", 10, || {
        s.stats()["checkins"].as_u64().unwrap() > before
    });
    // the daemon holds its store; stopped, the store can be read
    let a = &mut agents[0];
    a.stop();
    // what only v1 needed left the machine's store, which stays whole
    let repo = |args: &[&str]| {
        Command::new(BIN)
            .arg("--repo")
            .arg(a.state.join("repo"))
            .args(args)
            .output()
            .unwrap()
    };
    assert!(
        !repo(&["show", &v1]).status.success(),
        "v1's commit is gone: {}",
        a.log()
    );
    assert!(repo(&["show", &v3]).status.success());
    let fsck = repo(&["fsck"]);
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
fn killed_while_downloading_and_while_staging_it_converges_without_a_broken_deployment() {
    let s = Server::start();
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 300);
    let v1 = s.release(&src, "lab/stable");
    for (name, point) in [("dl", "fetch"), ("st", "stage"), ("sw", "switch")] {
        let mut a = Agent::new(&s, name, &t)
            .env("SEMITHIN_AGENT_CRASH_AT", point)
            .env("SEMITHIN_FETCH_BATCH", "20");
        assert!(a.once().success(), "{}", a.log());
        s.ok(&["fleet", "assign", name, "lab/stable"]);
        a.spawn();
        let st = a.wait_exit(30);
        assert!(!st.success(), "{name}: {}", a.log());
        assert!(
            a.log().contains(&format!("killed at {point}")),
            "{}",
            a.log()
        );
        match point {
            "fetch" => assert!(a.current().is_none()),
            "stage" => {
                assert!(a.current().is_none());
                let staging = a.state.join(format!("deployments/.staging-{v1}"));
                assert!(
                    staging.exists(),
                    "killed during staging leaves its directory"
                );
            }
            _ => assert_eq!(a.current().as_deref(), Some(v1.as_str())),
        }
        // restarted without the crash point: it continues and converges
        let mut a = Agent::new(&s, name, &t).env("SEMITHIN_FETCH_BATCH", "20");
        a.spawn();
        wait_updated(&s, name, &v1, 30);
        assert_deployed(&src, &a.deployment());
        let names: Vec<String> = std::fs::read_dir(a.state.join("deployments"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![v1.clone()], "{name}: no staging leftovers");
        // beside the running daemon: status reads, verify refuses at once instead of waiting
        let out = a.run(&["status", "--json"]);
        assert!(out.status.success());
        let st: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(st["report"]["current"], json!(v1));
        let out = a.run(&["verify"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("another semithin agent is working on"),
            "{err}"
        );
        a.stop();
        let out = a.run(&["verify"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn the_agent_backs_off_while_the_server_is_away_and_converges_when_it_is_back() {
    let mut s = Server::start();
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 2000);
    let v1 = s.release(&src, "lab/stable");
    let mut a = Agent::new(&s, "m1", &t).env("SEMITHIN_FETCH_BATCH", "10");
    assert!(a.once().success(), "{}", a.log());
    s.ok(&["fleet", "assign", "m1", "lab/stable"]);
    a.spawn();
    wait_until("the agent fetching", 30, || a.log().contains("fetching"));
    s.kill();
    wait_until("the agent noticing", 30, || a.log().contains("retrying in"));
    assert!(a.current().is_none(), "the server went away mid-update");
    std::thread::sleep(Duration::from_secs(2));
    s.restart();
    wait_updated(&s, "m1", &v1, 90);
    assert_deployed(&src, &a.deployment());
}

#[test]
fn a_failing_health_check_rolls_back_and_the_server_sees_the_failure() {
    let s = Server::start();
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 3);
    let v1 = s.release(&src, "lab/stable");
    let mut a = Agent::new(&s, "m1", &t).arg("--health-check").arg(
        "test ! -e \"$SEMITHIN_DEPLOYMENT/etc/broken\" || { echo 'broken marker found'; exit 3; }",
    );
    assert!(a.once().success(), "{}", a.log());
    s.ok(&["fleet", "assign", "m1", "lab/stable"]);
    a.spawn();
    wait_updated(&s, "m1", &v1, 30);
    std::fs::write(src.join("etc/broken"), "yes\n").unwrap();
    let v2 = s.release(&src, "lab/stable");
    wait_until("the failure reported", 30, || {
        s.machine("m1")["report"]["failed_release"] == json!(v2)
    });
    let m = s.machine("m1");
    assert_eq!(m["updated"], json!(false));
    assert_eq!(m["report"]["current"], json!(v1));
    assert_eq!(m["report"]["health"], "failed");
    let err = m["report"]["last_error"].as_str().unwrap();
    assert!(err.contains("broken marker found"), "{err}");
    assert!(m["events"].to_string().contains("failed"), "{m}");
    assert_eq!(a.current().as_deref(), Some(v1.as_str()));
    let out = s.ok(&["fleet", "list"]);
    assert!(out.contains("failed"), "{out}");
    assert!(!a.state.join("deployments").join(&v2).exists());
    // a fixed release goes through
    std::fs::remove_file(src.join("etc/broken")).unwrap();
    std::fs::write(src.join("etc/fixed"), "yes\n").unwrap();
    let v3 = s.release(&src, "lab/stable");
    wait_updated(&s, "m1", &v3, 30);
    a.stop();

    // a switch never confirmed within the deadline (the agent died right after switching, as a
    // machine that does not come back up) is rolled back at the next start
    let b = Agent::new(&s, "m2", &t)
        .arg("--health-deadline")
        .arg("1")
        .env("SEMITHIN_AGENT_CRASH_AT", "switch");
    assert!(b.once().success(), "{}", b.log());
    s.ok(&["fleet", "assign", "m2", "lab/stable"]);
    assert!(!b.once().success());
    assert_eq!(b.current().as_deref(), Some(v3.as_str()));
    std::thread::sleep(Duration::from_secs(2));
    let b = Agent::new(&s, "m2", &t).arg("--health-deadline").arg("1");
    assert!(b.once().success(), "{}", b.log());
    assert!(
        b.log().contains("not confirmed healthy within"),
        "{}",
        b.log()
    );
    assert_eq!(
        b.current(),
        None,
        "rolled back to nothing: it had no earlier deployment"
    );
    let m = s.machine("m2");
    assert_eq!(m["report"]["failed_release"], json!(v3));
}

#[test]
fn tampered_objects_and_metadata_from_the_server_are_refused_and_nothing_is_stored() {
    let s = Server::start();
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 3);
    let v1 = s.release(&src, "lab/stable");
    let a = Agent::new(&s, "m1", &t);
    assert!(a.once().success(), "{}", a.log());
    s.ok(&["fleet", "assign", "m1", "lab/stable"]);
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(a.current().as_deref(), Some(v1.as_str()));

    // A new file whose content is flipped in the server's pack: the agent refuses it.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(src.join("usr/lib/new.bin"), &big).unwrap();
    let before: Vec<PathBuf> = packs(&s.repo());
    let v2 = s.release(&src, "lab/stable");
    let new_packs: Vec<PathBuf> = packs(&s.repo())
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert_eq!(new_packs.len(), 1);
    // the delta pack built at publish is whole; it goes, and the one the server tries to make
    // again meets the damage: the agent is told there is none and fetches objects
    let delta = delta_pack(&s, &v1, &v2);
    damage_chunks(&s.repo(), Some(&new_packs[0]));
    std::fs::remove_file(&delta).unwrap();
    assert!(!a.once().success());
    let log = a.log();
    assert!(log.contains("is corrupt: content hashes to"), "{log}");
    assert!(!delta.exists(), "no pack is made from damaged objects");
    assert_eq!(a.current().as_deref(), Some(v1.as_str()), "still on v1");
    assert!(!a.state.join("deployments").join(&v2).exists());
    // nothing unverified was stored: the agent's store has no object the release lacks
    let out = Command::new(BIN)
        .args(["--repo"])
        .arg(a.state.join("repo"))
        .arg("fsck")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let m = s.machine("m1");
    assert!(
        m["report"]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("chunk"),
        "{m}"
    );

    // Metadata changed on the server without its keys: refused, the trusted copy unchanged.
    let meta = s.repo().join("trust/metadata/timestamp.json");
    let trusted = a.state.join("trust/timestamp.json");
    let trusted_before = std::fs::read(&trusted).unwrap();
    let text = std::fs::read_to_string(&meta).unwrap();
    let forged = text.replacen("\"version\":", "\"version\": 1000000 ,\"x\":", 1);
    assert_ne!(forged, text);
    std::fs::write(&meta, forged).unwrap();
    assert!(!a.once().success());
    assert_eq!(std::fs::read(&trusted).unwrap(), trusted_before);
    assert_eq!(a.current().as_deref(), Some(v1.as_str()));
}

/// Flips a byte inside the frame of every chunk of a repository (trees and commits stay whole).
fn damage_chunks(repo: &Path, only: Option<&Path>) {
    use semithin_store::pack::ObjKind;
    let r = semithin_store::Repo::open(repo, semithin_store::Access::Read).unwrap();
    let mut by_pack = Vec::new();
    for (name, entries) in r.objects.packs().unwrap() {
        let offsets: Vec<u64> = entries
            .iter()
            .filter(|e| e.kind() == ObjKind::Chunk)
            .map(|e| e.offset + e.stored_len as u64 / 2)
            .collect();
        let p = repo.join(format!("objects/packs/{name}.pack"));
        if only.is_none_or(|o| o == p) {
            by_pack.push((p, offsets));
        }
    }
    drop(r);
    for (p, offsets) in by_pack {
        let mut b = std::fs::read(&p).unwrap();
        for o in offsets {
            b[o as usize] ^= 0x55;
        }
        std::fs::write(&p, b).unwrap();
    }
}

fn packs(repo: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(repo.join("objects/packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .collect()
}

/// The counters of the raw signed requests of these tests.
static COUNTER: semithin_protocol::sign::Counter = semithin_protocol::sign::Counter::new();

/// A raw signed request, as an agent (or an impostor) would send it.
pub(crate) fn signed(
    s: &Server,
    key: &MachineKey,
    id: Option<&str>,
    method: &str,
    path: &str,
    body: &[u8],
    date: i64,
) -> (u16, String) {
    let client = http().build().unwrap();
    let url = format!("{}{path}", s.url);
    let mut rb = if method == "GET" {
        client.get(url)
    } else {
        client.post(url).body(body.to_vec())
    };
    // Today's requests take the next counter; others are dated at the start of their second.
    let counter = if date == now() {
        COUNTER.next_now()
    } else {
        u64::try_from(date).unwrap() * 1_000_000
    };
    for (k, v) in key.sign(method, path, counter, body) {
        if k == "semithin-machine"
            && let Some(id) = id
        {
            rb = rb.header(k, id);
        } else {
            rb = rb.header(k, v);
        }
    }
    let r = rb.send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn no_machine_acts_for_another_and_the_admin_api_needs_its_token() {
    let s = Server::start();
    let t = s.enroll_token(true);
    let a = Agent::new(&s, "alice", &t);
    assert!(a.once().success(), "{}", a.log());
    let alice_id = s.machine("alice")["id"].as_str().unwrap().to_owned();
    let before = s.machine("alice");

    let mallory = MachineKey::generate().unwrap();
    let report = serde_json::to_vec(&json!({"report": {"current": "f".repeat(64),
        "health": "healthy", "phase": "idle", "disk_free": 1, "uptime_secs": 1,
        "agent_version": "x", "fetched_bytes": 0}}))
    .unwrap();
    // mallory signs with her key but claims alice's id
    let (st, body) = signed(
        &s,
        &mallory,
        Some(&alice_id),
        "POST",
        "/api/v1/checkin",
        &report,
        now(),
    );
    assert_eq!(st, 401, "{body}");
    assert!(body.contains("does not verify"), "{body}");
    // an unknown machine
    let (st, body) = signed(
        &s,
        &mallory,
        None,
        "POST",
        "/api/v1/checkin",
        &report,
        now(),
    );
    assert_eq!(st, 401);
    assert!(body.contains("no machine"), "{body}");
    // alice's key, but a stale date (a replay)
    let alice = MachineKey::load(&a.state.join("machine.key")).unwrap();
    let (st, body) = signed(
        &s,
        &alice,
        None,
        "POST",
        "/api/v1/checkin",
        &report,
        now() - 3600,
    );
    assert_eq!(st, 401);
    assert!(body.contains("more than 300 s"), "{body}");
    // unsigned
    let r = http()
        .build()
        .unwrap()
        .post(format!("{}/api/v1/checkin", s.url))
        .body(report.clone())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // a signature over another body
    let client = http().build().unwrap();
    let mut rb = client
        .post(format!("{}/api/v1/checkin", s.url))
        .body(report.clone());
    for (k, v) in alice.sign("POST", "/api/v1/checkin", COUNTER.next_now(), b"{}") {
        rb = rb.header(k, v);
    }
    assert_eq!(rb.send().unwrap().status().as_u16(), 401);
    let after = s.machine("alice");
    assert_eq!(before["report"], after["report"], "nothing changed");

    // the admin API without a token, or with a wrong one
    for token in [None, Some("wrong-token-wrong-token")] {
        let mut rb = client
            .post(format!("{}/api/v1/admin/accept", s.url))
            .body(r#"{"selector":"*"}"#);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        let r = rb.send().unwrap();
        assert_eq!(r.status().as_u16(), 401);
        assert!(r.text().unwrap().contains("token"));
        let r = client
            .get(format!("{}/api/v1/admin/machines", s.url))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
    }
    let out = Command::new(BIN)
        .args(["fleet", "list"])
        .env("SEMITHIN_SERVER", &s.url)
        .env("SEMITHIN_ADMIN_TOKEN", "wrong-token-wrong-token")
        .env("HOME", s.dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong admin token"));
    // a pending machine reads no release data
    let t2 = s.enroll_token(false);
    let p = Agent::new(&s, "pending-1", &t2);
    assert!(p.once().success());
    let pk = MachineKey::load(&p.state.join("machine.key")).unwrap();
    let (st, body) = signed(
        &s,
        &pk,
        None,
        "GET",
        "/api/v1/trust/metadata/timestamp.json",
        b"",
        now(),
    );
    assert_eq!(st, 403, "{body}");
    let (st, body) = signed(
        &s,
        &pk,
        None,
        "POST",
        "/api/v1/objects",
        br#"{"objects":[]}"#,
        now(),
    );
    assert_eq!(st, 403, "{body}");
    // and the accepted one does
    let (st, _) = signed(
        &s,
        &alice,
        None,
        "GET",
        "/api/v1/trust/metadata/timestamp.json",
        b"",
        now(),
    );
    assert_eq!(st, 200);

    // a rejected machine's check-in is refused before anything of it is stored
    s.ok(&["fleet", "reject", "alice"]);
    let before = s.machine("alice");
    let (st, body) = signed(&s, &alice, None, "POST", "/api/v1/checkin", &report, now());
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("rejected"), "{body}");
    let after = s.machine("alice");
    assert_ne!(after["report"]["current"], json!("f".repeat(64)), "{after}");
    assert_eq!(before["report"], after["report"], "the report was stored");
    assert_eq!(before["events"], after["events"], "events were recorded");
}

/// A request signed once and sent as captured (same bytes, same headers): (status, body).
fn send_captured(
    s: &Server,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&'static str, String); 4],
) -> (u16, String) {
    let client = http().build().unwrap();
    let url = format!("{}{path}", s.url);
    let mut rb = if method == "GET" {
        client.get(url)
    } else {
        client.post(url).body(body.to_vec())
    };
    for (k, v) in headers {
        rb = rb.header(*k, v);
    }
    let r = rb.send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn a_replayed_signed_request_is_refused_and_changes_nothing_also_after_a_restart() {
    let mut s = Server::start();
    let t = s.enroll_token(true);
    let a = Agent::new(&s, "alice", &t);
    assert!(a.once().success(), "{}", a.log());
    let alice = MachineKey::load(&a.state.join("machine.key")).unwrap();
    let report = |failed: Option<&str>| {
        serde_json::to_vec(&json!({"report": {"current": "f".repeat(64),
            "health": if failed.is_some() { "failed" } else { "healthy" },
            "failed_release": failed, "last_error": failed.map(|_| "it broke"),
            "phase": "idle", "disk_free": 1, "uptime_secs": 1,
            "agent_version": "x", "fetched_bytes": 0}}))
        .unwrap()
    };
    let path = "/api/v1/checkin";
    // A check-in reporting a failure, then a newer one: healthy again.
    let failing = report(Some(&"e".repeat(64)));
    let h_failing = alice.sign("POST", path, COUNTER.next_now(), &failing);
    let (st, body) = send_captured(&s, "POST", path, &failing, &h_failing);
    assert_eq!(st, 200, "{body}");
    let healthy = report(None);
    let h_healthy = alice.sign("POST", path, COUNTER.next_now(), &healthy);
    let (st, body) = send_captured(&s, "POST", path, &healthy, &h_healthy);
    assert_eq!(st, 200, "{body}");
    // A read, signed and sent once.
    let meta = "/api/v1/trust/metadata/timestamp.json";
    let h_read = alice.sign("GET", meta, COUNTER.next_now(), b"");
    assert_eq!(send_captured(&s, "GET", meta, b"", &h_read).0, 200);
    // Requests signed at once may arrive out of order: the later one first, then the earlier.
    let h_early = alice.sign("GET", meta, COUNTER.next_now(), b"");
    let h_late = alice.sign("GET", meta, COUNTER.next_now(), b"");
    assert_eq!(send_captured(&s, "GET", meta, b"", &h_late).0, 200);
    assert_eq!(send_captured(&s, "GET", meta, b"", &h_early).0, 200);
    assert_eq!(send_captured(&s, "GET", meta, b"", &h_early).0, 409);
    let before = s.machine("alice");
    let failed_events = |m: &Value| {
        m["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "failed")
            .count()
    };
    assert_eq!(failed_events(&before), 1, "{before}");
    assert_eq!(before["report"]["health"], "healthy");

    let replays = |s: &Server| {
        for (method, p, body, h) in [
            ("POST", path, &failing[..], &h_failing),
            ("POST", path, &healthy[..], &h_healthy),
            ("GET", meta, &b""[..], &h_read),
        ] {
            let (st, text) = send_captured(s, method, p, body, h);
            assert_eq!(st, 409, "{method} {p}: {text}");
            assert!(text.contains("replayed"), "{text}");
        }
        let after = s.machine("alice");
        assert_eq!(
            after["report"], before["report"],
            "a replay changed the report"
        );
        assert_eq!(after["events"], before["events"], "a replay added events");
    };
    replays(&s);
    // The counters outlive a kill of the server (the read's with the last-seen batch, written
    // every 5 s; the check-ins' before their reports).
    std::thread::sleep(Duration::from_secs(6));
    s.restart();
    replays(&s);
    // and the agent goes on as before
    assert!(a.once().success(), "{}", a.log());

    // Removed, and the same key enrolled again (as a reinstalled machine would): what it
    // signed before is still refused, without a restart of the server.
    s.ok(&["fleet", "remove", "alice", "--yes"]);
    let b = Agent::new(&s, "alice", &t).state_dir("alice-again");
    std::fs::create_dir_all(&b.state).unwrap();
    std::fs::copy(a.state.join("machine.key"), b.state.join("machine.key")).unwrap();
    assert!(b.once().success(), "{}", b.log());
    for (method, p, body, h) in [
        ("POST", path, &failing[..], &h_failing),
        ("GET", meta, &b""[..], &h_read),
    ] {
        let (st, text) = send_captured(&s, method, p, body, h);
        assert_eq!(st, 409, "{method} {p} after enrolling again: {text}");
    }
}

#[test]
fn bad_requests_get_clear_errors() {
    let s = Server::start();
    let t = s.enroll_token(false);
    let c = http().build().unwrap();
    let post = |path: &str, body: &str| {
        let r = c
            .post(format!("{}{path}", s.url))
            .body(body.to_owned())
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let key = hex::encode([1u8; 32]);
    for (body, want) in [
        ("{", "bad request body"),
        (r#"{"token":"x"}"#, "missing field"),
        (
            &*format!(r#"{{"token":"{t}","name":"a b","public_key":"{key}"}}"#),
            "may hold only",
        ),
        (
            &*format!(r#"{{"token":"{t}","name":"ok","public_key":"abc"}}"#),
            "32 bytes of hex",
        ),
        (
            &*format!(
                r#"{{"token":"{t}","name":"ok","public_key":"{key}","labels":{{"a":"$(x)"}}}}"#
            ),
            "value must be",
        ),
    ] {
        let (st, text) = post("/api/v1/enroll", body);
        assert_eq!(st, 400, "{body}: {text}");
        assert!(text.contains(want), "{body}: {text}");
    }
    // Without a valid token each of them is refused alike, before anything else is looked at.
    for body in [
        format!(r#"{{"token":"wrong","name":"a b","public_key":"{key}"}}"#),
        r#"{"token":"wrong","name":"ok","public_key":"abc"}"#.to_owned(),
        format!(r#"{{"token":"wrong","name":"ok","public_key":"{key}","labels":{{"a":"$(x)"}}}}"#),
    ] {
        let (st, text) = post("/api/v1/enroll", &body);
        assert_eq!(st, 403, "{body}: {text}");
        assert!(text.contains("enrollment token unknown"), "{body}: {text}");
    }
    let (st, text) = post("/api/v1/nothing", "");
    assert_eq!(st, 404);
    assert!(text.contains("no such endpoint"), "{text}");

    // Every error has the JSON body, also those axum and tower make: 405, 413, a path that is
    // not UTF-8, 408.
    let error = |r: reqwest::blocking::Response| {
        let st = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let allow = r
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = r.text().unwrap();
        assert_eq!(ct, "application/json", "{st}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("{text}"));
        (st, msg.to_owned(), allow)
    };
    let (st, msg, allow) = error(c.get(format!("{}/api/v1/enroll", s.url)).send().unwrap());
    assert_eq!(st, 405);
    assert!(
        msg.contains("GET is not allowed on /api/v1/enroll (it takes POST)"),
        "{msg}"
    );
    assert!(
        allow.as_deref().is_some_and(|a| a.contains("POST")),
        "{allow:?}"
    );
    let big = "x".repeat(9 << 20);
    // (a client of its own: the server closes the connection of a body it refuses unread)
    let (st, msg, _) = error(
        http()
            .build()
            .unwrap()
            .post(format!("{}/api/v1/enroll", s.url))
            .body(big)
            .send()
            .unwrap(),
    );
    assert_eq!(st, 413);
    assert!(msg.contains("larger than the 8388608 bytes"), "{msg}");
    let (st, msg, _) = error(
        c.get(format!("{}/api/v1/admin/machines/%FF%FE", s.url))
            .bearer_auth(&s.token)
            .send()
            .unwrap(),
    );
    assert_eq!(st, 400);
    assert!(msg.contains("/api/v1/admin/machines/%FF%FE"), "{msg}");
    assert!(msg.to_lowercase().contains("utf-8"), "{msg}");
    let (st, msg, _) = error(
        c.put(format!("{}/api/v1/admin/tokens", s.url))
            .bearer_auth(&s.token)
            .send()
            .unwrap(),
    );
    assert_eq!(st, 405);
    assert!(
        msg.contains("PUT is not allowed on /api/v1/admin/tokens"),
        "{msg}"
    );
    let (st, v) = s.post(
        "/api/v1/admin/assign",
        &json!({"selector": "a=1,,", "channel": "c"}),
    );
    assert_eq!(st, 400, "{v}");
    let (st, v) = s.post(
        "/api/v1/admin/assign",
        &json!({"selector": "nobody", "channel": "c", "unpublished": true}),
    );
    assert_eq!(st, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no machine matches"));
    let (st, v) = s.post(
        "/api/v1/admin/assign",
        &json!({"selector": "*", "channel": "../x"}),
    );
    assert_eq!(st, 400, "{v}");
    // nothing was enrolled by any of it
    assert!(s.machines().is_empty());

    // A request whose body never comes: 408 with the JSON body, from a server with a deadline
    // of 1 s.
    let quick = Server::start_args(&["--request-deadline", "1"]);
    let (st, text) = raw_request(
        quick.port,
        "POST /api/v1/enroll HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{",
    );
    assert_eq!(st, 408, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("deadline of 1 s"), "{msg}");
}

/// Sends `request` as it is on a new connection; the status and body of the answer.
fn raw_request(port: u16, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
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
            if body.len() >= len {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, body.get(..len).unwrap().to_owned());
            }
        }
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "the connection closed: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// Enrolls `key` as `name` with `token` by hand; the status and the answer.
pub(crate) fn enroll_raw(s: &Server, token: &str, name: &str, key: &MachineKey) -> (u16, Value) {
    let r = http()
        .build()
        .unwrap()
        .post(format!("{}/api/v1/enroll", s.url))
        .body(
            json!({"token": token, "name": name, "public_key": hex::encode(key.public())})
                .to_string(),
        )
        .send()
        .unwrap();
    let st = r.status().as_u16();
    (
        st,
        serde_json::from_str(&r.text().unwrap()).unwrap_or(Value::Null),
    )
}

fn uses_left(s: &Server, token: &str) -> Value {
    let (_, list) = s.get("/api/v1/admin/tokens");
    let id = s
        .dir
        .path()
        .join("token-ids")
        .join(token.get(..16).unwrap())
        .to_string_lossy()
        .into_owned();
    let id = std::fs::read_to_string(id).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == json!(id))
        .map(|t| t["uses_left"].clone())
        .unwrap_or(Value::Null)
}

/// A token with `uses`; its secret (its id is noted for [`uses_left`]).
fn token_with_uses(s: &Server, uses: u32) -> String {
    let (st, v) = s.post("/api/v1/admin/tokens", &json!({"uses": uses}));
    assert_eq!(st, 200, "{v}");
    let secret = v["token"].as_str().unwrap().to_owned();
    let dir = s.dir.path().join("token-ids");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(secret.get(..16).unwrap()),
        v["id"].as_str().unwrap(),
    )
    .unwrap();
    secret
}

#[test]
fn enrollment_checks_the_token_first_and_never_wastes_a_use() {
    let s = Server::start();
    let t = s.enroll_token(false);
    let (k1, k2, k3) = (
        MachineKey::generate().unwrap(),
        MachineKey::generate().unwrap(),
        MachineKey::generate().unwrap(),
    );
    let (st, v) = enroll_raw(&s, &t, "first", &k1);
    assert_eq!(st, 200, "{v}");
    // Without a valid token, a taken name and a known key get the same answer as anything else.
    for (name, key) in [("first", &k2), ("first", &k1)] {
        let (st, v) = enroll_raw(&s, "not-a-token", name, key);
        assert_eq!(st, 403, "{name}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains("token unknown"),
            "{v}"
        );
    }
    // A token with one use: refused enrollments take none of it.
    let one = token_with_uses(&s, 1);
    let (st, v) = enroll_raw(&s, &one, "first", &k2);
    assert_eq!(st, 409, "{v}");
    let (st, v) = enroll_raw(&s, &one, "a b", &k2);
    assert_eq!(st, 400, "{v}");
    assert_eq!(uses_left(&s, &one), json!(1));
    let (st, v) = enroll_raw(&s, &one, "second", &k2);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "pending");
    assert_eq!(uses_left(&s, &one), json!(0));
    // Used up now: the machine it enrolled may still enroll again with it (it crashed before
    // saving the answer), another one may not.
    let (st, v) = enroll_raw(&s, &one, "second", &k2);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["machine_id"], json!(k2.id()));
    let (st, v) = enroll_raw(&s, &one, "third", &k3);
    assert_eq!(st, 403, "{v}");
    // A known key with another valid token: its status, no use taken.
    let two = token_with_uses(&s, 2);
    let (st, v) = enroll_raw(&s, &two, "second", &k2);
    assert_eq!(st, 200, "{v}");
    assert_eq!(uses_left(&s, &two), json!(2));
    let names: Vec<Value> = s.machines().iter().map(|m| m["name"].clone()).collect();
    assert_eq!(names, vec![json!("first"), json!("second")]);
}

#[test]
fn tokens_are_revoked_and_listings_show_no_part_of_a_secret() {
    let mut s = Server::start();
    let secrets: Vec<String> = (0..3).map(|_| s.enroll_token(true)).collect();
    let a = Agent::new(&s, "m1", &secrets[0]);
    assert!(a.once().success(), "{}", a.log());
    let (st, list) = s.get("/api/v1/admin/tokens");
    assert_eq!(st, 200, "{list}");
    let ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3);
    let shown = format!(
        "{list}\n{}\n{}\n{}",
        s.ok(&["fleet", "token", "list"]),
        s.ok(&["fleet", "token", "list", "--json"]),
        s.machine("m1")["events"]
    );
    let no_secret_in = |shown: &str| {
        for sec in &secrets {
            for w in sec.as_bytes().windows(8) {
                let w = std::str::from_utf8(w).unwrap();
                assert!(!shown.contains(w), "{w} of a secret is shown:\n{shown}");
            }
        }
    };
    no_secret_in(&shown);
    for id in &ids {
        assert_eq!(id.len(), 16, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    }
    assert!(shown.contains(&format!("token {}", ids[0])), "{shown}");

    // Revoked: it enrolls nothing any more, and is gone from the list.
    let out = s.ok(&["fleet", "token", "revoke", &ids[1]]);
    assert!(out.contains(&format!("token {} revoked", ids[1])), "{out}");
    let (_, list) = s.get("/api/v1/admin/tokens");
    assert!(!list.to_string().contains(&ids[1]), "{list}");
    let b = Agent::new(&s, "m2", &secrets[1]);
    assert!(!b.once().success());
    assert!(b.log().contains("enrollment token unknown"), "{}", b.log());
    let out = s.cli(&["fleet", "token", "revoke", &ids[1]]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("404") && err.contains("no enrollment token has the id"),
        "{err}"
    );
    // A machine its token enrolled stays enrolled after the token is revoked.
    s.ok(&["fleet", "token", "revoke", &ids[0]]);
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(s.machines().len(), 1);

    // A token made before ids were random (its id the first 8 digits of its secret) gets a new
    // id when the server starts, and still enrolls.
    s.kill();
    let old = "0123456789abcdef0123456789abcdef0123456789abcdef";
    let db_path = s.data.join("fleet.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = semithin_server::db::open(&db_path).await.unwrap();
        let row = semithin_server::db::TokenRow {
            id: old.get(..8).unwrap().to_owned(),
            preauthorized: true,
            labels: Default::default(),
            uses_left: None,
            expires_at: None,
            created_at: 1,
            channel: None,
        };
        let hash = blake3::hash(old.as_bytes()).to_hex().to_string();
        semithin_server::db::insert_token(&pool, &row, &hash)
            .await
            .unwrap();
        pool.close().await;
    });
    s.restart();
    let (_, list) = s.get("/api/v1/admin/tokens");
    assert!(!list.to_string().contains(old.get(..8).unwrap()), "{list}");
    let c = Agent::new(&s, "m3", old);
    assert!(c.once().success(), "{}", c.log());
    let shown = s.machine("m3")["events"].to_string();
    assert!(!shown.contains(old.get(..8).unwrap()), "{shown}");
}

#[test]
fn verify_restores_changed_files_from_the_store_or_the_server() {
    let s = Server::start();
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 3);
    let v1 = s.release(&src, "lab/stable");
    let a = Agent::new(&s, "m1", &t);
    assert!(a.once().success());
    s.ok(&["fleet", "assign", "m1", "lab/stable"]);
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(a.current().as_deref(), Some(v1.as_str()));
    let dep = a.deployment();
    let out = a.run(&["verify", "--json"]);
    assert!(out.status.success());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["problems"], json!([]));

    // tampered in place (shared inode) and replaced
    std::fs::write(dep.join("usr/bin/tool"), "#!/bin/sh\necho evil\n").unwrap();
    std::fs::remove_file(dep.join("etc/os-release")).unwrap();
    let out = a.run(&["verify", "--no-fix"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("usr/bin/tool: ") && text.contains("etc/os-release: "),
        "{text}"
    );
    let out = a.run(&["verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_deployed(&src, &dep);

    // with the local store's copy damaged too, the chunk comes from the server
    std::fs::write(dep.join("usr/lib/x/y/z/big"), "short").unwrap();
    damage_chunks(&a.state.join("repo"), None);
    let out = a.run(&["verify", "--json"]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{r}");
    assert!(r["refetched_chunks"].as_u64().unwrap() >= 1, "{r}");
    assert_deployed(&src, &dep);
}

#[test]
fn over_https_with_the_fleets_own_ca_machines_update_and_others_are_refused() {
    let s = Server::start_tls();
    assert!(s.url.starts_with("https://"));
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 5);
    // the admin CLI (SEMITHIN_CA) commits, publishes and tells the server over HTTPS
    let v1 = s.release(&src, "lab/stable");
    let a = Agent::new(&s, "m1", &t);
    assert!(a.once().success(), "{}", a.log());
    s.ok(&["fleet", "assign", "m1", "lab/stable"]);
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(a.current().as_deref(), Some(v1.as_str()));
    assert_deployed(&src, &a.deployment());
    wait_updated(&s, "m1", &v1, 10);

    // plain HTTP on the HTTPS port gets no answer
    let plain = format!("http://127.0.0.1:{}/api/v1/health", s.port);
    assert!(http().build().unwrap().get(&plain).send().is_err());

    // an agent that trusts only the system's roots, or another CA, refuses the server
    let other_ca = make_certs(s.dir.path(), "other").0;
    for (name, ca) in [("m2", None), ("m3", Some(&other_ca))] {
        let b = Agent::new(&s, name, &t).ca(ca.map(|p| p.as_path()));
        assert!(!b.once().success(), "{}", b.log());
        let log = b.log();
        assert!(log.contains("certificate"), "{name}: {log}");
        assert!(!b.state.join("state.json").exists() || !log.contains("enrolled as"));
    }
    assert_eq!(
        s.machines().len(),
        1,
        "no machine enrolled through a distrusted server"
    );

    // the admin CLI without the CA refuses too, and says why
    let out = Command::new(BIN)
        .args(["fleet", "list"])
        .env("SEMITHIN_SERVER", &s.url)
        .env("SEMITHIN_ADMIN_TOKEN", &s.token)
        .env("HOME", s.dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate"), "{err}");
}

#[test]
fn a_bad_tls_certificate_or_key_stops_the_server_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = make_certs(dir.path(), "c");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    for (c, k, want) in [
        (&junk, &key, "junk.pem: no PEM certificate"),
        (&cert, &junk, "junk.pem"),
        (&cert, &cert, "server.pem"),
    ] {
        let out = Command::new(BIN)
            .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--data")
            .arg(dir.path().join("data"))
            .arg("--tls-cert")
            .arg(c)
            .arg("--tls-key")
            .arg(k)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{c:?} {k:?}: {err}");
        assert!(
            !dir.path().join("data").exists(),
            "nothing made before TLS is known good"
        );
    }
}

/// Waits until the server has built the delta pack from `from` to `to`; its path.
fn delta_pack(s: &Server, from: &str, to: &str) -> PathBuf {
    let p = s.data.join(format!("deltas/{from}-{to}.pack"));
    wait_until("the delta pack built at publish", 60, || p.exists());
    p
}

#[test]
fn a_damaged_delta_pack_is_refused_and_the_machine_fetches_objects_instead() {
    let s = Server::start();
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 20);
    let v1 = s.release(&src, "lab/stable");
    let a = Agent::new(&s, "m1", &t);
    assert!(a.once().success(), "{}", a.log());
    s.ok(&["fleet", "assign", "m1", "lab/stable"]);
    assert!(a.once().success(), "{}", a.log());
    let big: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(src.join("usr/lib/new.bin"), &big).unwrap();
    std::fs::write(src.join("etc/os-release"), "VERSION_ID=2\n").unwrap();
    let v2 = s.release(&src, "lab/stable");
    let pack = delta_pack(&s, &v1, &v2);
    let mut b = std::fs::read(&pack).unwrap();
    let n = b.len();
    for at in [n / 3, n / 2, n - 10] {
        b[at] ^= 0x55;
    }
    std::fs::write(&pack, b).unwrap();
    assert!(a.once().success(), "{}", a.log());
    let log = a.log();
    assert!(log.contains("the delta pack was refused"), "{log}");
    assert_eq!(a.current().as_deref(), Some(v2.as_str()));
    assert_deployed(&src, &a.deployment());
    let st = s.stats();
    assert!(st["object_bytes_sent"].as_u64().unwrap() > 400_000, "{st}");
    // nothing wrong was stored on the way
    let out = Command::new(BIN)
        .arg("--repo")
        .arg(a.state.join("repo"))
        .arg("fsck")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_delta_download_killed_halfway_resumes_where_it_stopped() {
    let s = Server::start();
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 20);
    let v1 = s.release(&src, "lab/stable");
    let a = Agent::new(&s, "m1", &t);
    assert!(a.once().success(), "{}", a.log());
    s.ok(&["fleet", "assign", "m1", "lab/stable"]);
    assert!(a.once().success(), "{}", a.log());
    // new content that does not compress: the pack is as large as it
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let big: Vec<u8> = (0..1_500_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    std::fs::write(src.join("usr/lib/new.bin"), &big).unwrap();
    let v2 = s.release(&src, "lab/stable");
    let size = std::fs::metadata(delta_pack(&s, &v1, &v2)).unwrap().len();
    assert!(size > 1_000_000, "{size}");
    let crashing = Agent::new(&s, "m1", &t).env("SEMITHIN_AGENT_CRASH_AT", "delta");
    assert!(!crashing.once().success());
    assert!(
        crashing.log().contains("killed at delta"),
        "{}",
        crashing.log()
    );
    let part = a.state.join(format!("tmp/{v1}-{v2}.pack.part"));
    let got = std::fs::metadata(&part).unwrap().len();
    assert!(got * 2 >= size && got < size, "{got} of {size}");
    assert_eq!(a.current().as_deref(), Some(v1.as_str()));

    let before = s.stats()["delta_bytes_sent"].as_u64().unwrap();
    assert!(a.once().success(), "{}", a.log());
    let log = a.log();
    assert!(
        log.contains(&format!("resuming the delta pack at byte {got}")),
        "{log}"
    );
    assert!(log.contains("applied the delta pack"), "{log}");
    assert_eq!(a.current().as_deref(), Some(v2.as_str()));
    assert_deployed(&src, &a.deployment());
    assert!(!part.exists(), "the download is removed once applied");
    // the second request sent only what the first had not delivered
    let sent = s.stats()["delta_bytes_sent"].as_u64().unwrap() - before;
    assert_eq!(sent, size - got, "pack of {size}, {got} kept");
}

/// A machine on `v1` of `src` (published on lab/stable), enrolled with a pre-authorised token.
fn machine_on_v1(s: &Server, name: &str, extra: usize) -> (String, PathBuf, String) {
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, extra);
    let v1 = s.release(&src, "lab/stable");
    let a = Agent::new(s, name, &t);
    assert!(a.once().success(), "{}", a.log());
    s.ok(&["fleet", "assign", name, "lab/stable"]);
    assert!(a.once().success(), "{}", a.log());
    wait_updated(s, name, &v1, 10);
    (t, src, v1)
}

fn deployments(a: &Agent) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(a.state.join("deployments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

const BROKEN_CHECK: &str =
    "test ! -e \"$SEMITHIN_DEPLOYMENT/etc/broken\" || { echo 'broken marker found'; exit 3; }";

#[test]
fn pruning_never_removes_the_running_deployment() {
    let s = Server::start();
    let (t, src, v1) = machine_on_v1(&s, "m1", 3);
    // Killed right after the link moved to v2: the next run confirms v2 and prunes.
    std::fs::write(src.join("etc/os-release"), "VERSION_ID=2\n").unwrap();
    let v2 = s.release(&src, "lab/stable");
    let k = Agent::new(&s, "m1", &t).env("SEMITHIN_AGENT_CRASH_AT", "switch-link");
    assert!(!k.once().success());
    assert!(k.log().contains("killed at switch-link"), "{}", k.log());
    assert_eq!(k.current().as_deref(), Some(v2.as_str()));
    let a = Agent::new(&s, "m1", &t)
        .arg("--health-check")
        .arg(BROKEN_CHECK);
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(a.current().as_deref(), Some(v2.as_str()));
    assert!(a.deployment().is_dir(), "current dangles: {}", a.log());
    assert_deployed(&src, &a.deployment());
    assert_eq!(deployments(&a), sorted(vec![v1.clone(), v2.clone()]));
    wait_updated(&s, "m1", &v2, 10);

    // state.json moved aside (the machine enrolls again with its key, history is empty), then a
    // release fails its checks: the rollback to v2 keeps v2.
    std::fs::rename(a.state.join("state.json"), a.state.join("state.json.old")).unwrap();
    std::fs::write(src.join("etc/broken"), "yes\n").unwrap();
    let v3 = s.release(&src, "lab/stable");
    assert!(a.once().success(), "{}", a.log());
    assert!(a.log().contains("broken marker found"), "{}", a.log());
    assert_eq!(a.current().as_deref(), Some(v2.as_str()));
    assert!(a.deployment().is_dir(), "current dangles: {}", a.log());
    let dep = a.deployment();
    assert_eq!(
        std::fs::read_to_string(dep.join("etc/os-release")).unwrap(),
        "VERSION_ID=2\n"
    );
    assert!(!dep.join("etc/broken").exists());
    assert!(!deployments(&a).contains(&v3));
    assert!(deployments(&a).contains(&v2));
}

/// Found by bench/crash.sh: a kill halfway through removing an old deployment left a partial
/// tree under the release's name, and a later switch back to that release took it as deployed.
#[test]
fn killed_while_pruning_a_later_switch_back_restages_the_release() {
    let s = Server::start();
    let (t, src, v1) = machine_on_v1(&s, "m1", 3);
    std::fs::write(src.join("etc/os-release"), "VERSION_ID=2\n").unwrap();
    let v2 = s.release(&src, "lab/stable");
    let a = Agent::new(&s, "m1", &t);
    assert!(a.once().success(), "{}", a.log());
    std::fs::write(src.join("etc/os-release"), "VERSION_ID=3\n").unwrap();
    let v3 = s.release(&src, "lab/stable");
    // keep 1 besides the current one: switching to v3 prunes v1, and the kill lands in it
    let k = Agent::new(&s, "m1", &t).env("SEMITHIN_AGENT_CRASH_AT", "prune");
    assert!(!k.once().success());
    assert!(k.log().contains("killed at prune"), "{}", k.log());
    assert_eq!(k.current().as_deref(), Some(v3.as_str()));
    assert!(
        !deployments(&k).contains(&v1),
        "a half-removed deployment keeps its name: {:?}",
        deployments(&k)
    );
    // back to v1: it is staged again, complete, and the leftover is gone
    s.ok(&["channel", "set", "lab/stable", &v1]);
    s.ok(&["publish", "lab/stable"]);
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(a.current().as_deref(), Some(v1.as_str()));
    assert!(a.log().contains("staged release"), "{}", a.log());
    let want = s.path("v1-checkout");
    s.ok(&["checkout", &v1, want.to_str().unwrap()]);
    assert_deployed(&want, &a.deployment());
    assert_eq!(deployments(&a), sorted(vec![v1.clone(), v3.clone()]));
    assert_ne!(v2, v1);
}

#[test]
fn killed_while_rolling_back_the_failure_is_recorded_and_not_tried_again() {
    // Killed after the rollback was recorded (the link still on v2), and after the link moved
    // back to v1; both before the failure was saved.
    for (point, on_v1) in [("rollback-begun", false), ("rollback-link", true)] {
        let s = Server::start();
        let (t, src, v1) = machine_on_v1(&s, "m1", 3);
        std::fs::write(src.join("etc/broken"), "yes\n").unwrap();
        let v2 = s.release(&src, "lab/stable");
        let k = Agent::new(&s, "m1", &t)
            .arg("--health-check")
            .arg(BROKEN_CHECK)
            .env("SEMITHIN_AGENT_CRASH_AT", point);
        assert!(!k.once().success());
        assert!(
            k.log().contains(&format!("killed at {point}")),
            "{}",
            k.log()
        );
        let want = if on_v1 { &v1 } else { &v2 };
        assert_eq!(k.current().as_deref(), Some(want.as_str()), "{point}");
        let switched = format!("switched to release {}", v2.get(..12).unwrap());
        assert_eq!(k.log().matches(&switched).count(), 1, "{}", k.log());

        let a = Agent::new(&s, "m1", &t)
            .arg("--health-check")
            .arg(BROKEN_CHECK);
        assert!(a.once().success(), "{}", a.log());
        assert_eq!(
            a.log().matches(&switched).count(),
            1,
            "{point}: the failed release was tried again:\n{}",
            a.log()
        );
        assert_eq!(a.current().as_deref(), Some(v1.as_str()), "{point}");
        let m = s.machine("m1");
        assert_eq!(m["report"]["failed_release"], json!(v2), "{point}: {m}");
        assert_eq!(m["report"]["health"], "failed", "{point}: {m}");
        let err = m["report"]["last_error"].as_str().unwrap_or("");
        assert!(err.contains("broken marker found"), "{point}: {m}");
        assert_eq!(deployments(&a), vec![v1.clone()], "{point}");
        let st: Value = serde_json::from_slice(&a.run(&["status", "--json"]).stdout).unwrap();
        assert_eq!(st["state"]["trial"], Value::Null, "{point}: {st}");
        assert!(!a.state.join("trial").exists(), "{point}");
    }
}

#[test]
fn an_abandoned_switch_gives_back_the_health_it_had() {
    let s = Server::start();
    let (t, src, v1) = machine_on_v1(&s, "m1", 3);
    std::fs::write(src.join("etc/os-release"), "VERSION_ID=2\n").unwrap();
    s.release(&src, "lab/stable");
    // Killed after the trial was saved, before the link moved.
    let k = Agent::new(&s, "m1", &t).env("SEMITHIN_AGENT_CRASH_AT", "switch-trial");
    assert!(!k.once().success());
    assert!(k.log().contains("killed at switch-trial"), "{}", k.log());
    assert_eq!(k.current().as_deref(), Some(v1.as_str()));
    // Meanwhile the machine is assigned a channel with nothing on it: the agent waits.
    s.ok(&["fleet", "assign", "--unpublished", "m1", "lab/nothing-yet"]);
    let a = Agent::new(&s, "m1", &t);
    assert!(a.once().success(), "{}", a.log());
    assert!(
        a.log().contains("the last switch did not happen"),
        "{}",
        a.log()
    );
    let m = s.machine("m1");
    assert_eq!(m["report"]["current"], json!(v1), "{m}");
    assert_eq!(m["report"]["health"], "healthy", "{m}");
    assert_eq!(m["report"]["previous"], Value::Null, "{m}");
    assert!(!a.state.join("trial").exists());
}

/// Runs the boot script's trial logic (semithin_trial from semithin-mount.sh) on an agent's
/// state directory, as the initramfs would at a boot; its messages.
fn boot_trial(a: &Agent, tries: u32) -> String {
    let mount_sh = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging/initramfs-tools/semithin-mount.sh");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            ". {}; semithin_trial '' {} {tries}",
            q(&mount_sh),
            q(&a.state)
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{text}");
    text
}

#[test]
fn a_release_the_boot_script_rolled_back_is_reported_as_failed() {
    let s = Server::start();
    let (t, src, v1) = machine_on_v1(&s, "m1", 3);
    std::fs::write(src.join("etc/os-release"), "VERSION_ID=2\n").unwrap();
    let v2 = s.release(&src, "lab/stable");
    // Switched to v2, and then the machine rebooted (the agent was stopped in its checks).
    let k = Agent::new(&s, "m1", &t).env("SEMITHIN_AGENT_CRASH_AT", "switch");
    assert!(!k.once().success());
    assert_eq!(k.current().as_deref(), Some(v2.as_str()));
    assert_eq!(
        std::fs::read_to_string(k.state.join("trial")).unwrap(),
        format!("{v2} {v1}\n")
    );
    // The first boot of v2 is counted; v2 hangs, and the second boot switches back to v1.
    let msg = boot_trial(&k, 1);
    assert!(msg.contains("boot 1 of 1"), "{msg}");
    assert_eq!(k.current().as_deref(), Some(v2.as_str()));
    let msg = boot_trial(&k, 1);
    assert!(
        msg.contains(&format!("the boot switched back to {v1}")),
        "{msg}"
    );
    assert_eq!(k.current().as_deref(), Some(v1.as_str()));
    let marker = std::fs::read_to_string(k.state.join("trial-failed")).unwrap();
    assert!(marker.starts_with(&format!("{v2} ")), "{marker}");

    // The agent, running in v1, records and reports the failure instead of trying v2 again.
    let a = Agent::new(&s, "m1", &t);
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(a.current().as_deref(), Some(v1.as_str()));
    let m = s.machine("m1");
    assert_eq!(m["report"]["failed_release"], json!(v2), "{m}");
    assert_eq!(m["report"]["health"], "failed", "{m}");
    let err = m["report"]["last_error"].as_str().unwrap_or("");
    assert!(err.contains("rolled back at boot"), "{m}");
    assert!(err.contains("without being confirmed healthy"), "{m}");
    assert!(m["events"].to_string().contains("failed"), "{m}");
    for f in ["trial", "trial-boots", "trial-failed"] {
        assert!(!a.state.join(f).exists(), "{f} left behind");
    }
    assert_eq!(deployments(&a), vec![v1.clone()]);
    let switched = format!("switched to release {}", v2.get(..12).unwrap());
    assert_eq!(a.log().matches(&switched).count(), 1, "{}", a.log());
    // A later run waits for another release.
    assert!(a.once().success(), "{}", a.log());
    assert!(a.log().ends_with("waiting for a new one\n"), "{}", a.log());
}

#[test]
fn agent_retry_tries_a_failed_release_again_and_a_stale_failure_is_forgotten() {
    let s = Server::start();
    let flag = s.path("flag");
    let check = format!("test ! -e {} || {{ echo 'flag set'; exit 1; }}", q(&flag));
    let (t, src, _v1) = machine_on_v1(&s, "m1", 3);
    std::fs::write(&flag, "").unwrap();
    std::fs::write(src.join("etc/os-release"), "VERSION_ID=2\n").unwrap();
    let v2 = s.release(&src, "lab/stable");
    let mut a = Agent::new(&s, "m1", &t).arg("--health-check").arg(&check);
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(s.machine("m1")["report"]["failed_release"], json!(v2));
    // Fixed on the machine, but the failed release is not tried again by itself.
    std::fs::remove_file(&flag).unwrap();
    assert!(a.once().success(), "{}", a.log());
    assert_ne!(a.current().as_deref(), Some(v2.as_str()));
    // Not while the daemon runs.
    let before = s.stats()["checkins"].as_u64().unwrap();
    a.spawn();
    // Once it has checked in, the daemon holds the lock.
    wait_until("the daemon checking in", 30, || {
        s.stats()["checkins"].as_u64().unwrap() > before
    });
    let out = a.run(&["retry"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another semithin agent is working on"),
        "{err}"
    );
    a.stop();
    let out = a.run(&["retry"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("release {v2} will be tried again")),
        "{said}"
    );
    assert!(a.once().success(), "{}", a.log());
    wait_updated(&s, "m1", &v2, 10);
    let out = a.run(&["retry"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to retry"));

    // v3 fails, v4 is healthy: the failure of v3 does not linger.
    std::fs::write(&flag, "").unwrap();
    std::fs::write(src.join("etc/os-release"), "VERSION_ID=3\n").unwrap();
    let v3 = s.release(&src, "lab/stable");
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(s.machine("m1")["report"]["failed_release"], json!(v3));
    std::fs::remove_file(&flag).unwrap();
    std::fs::write(src.join("etc/os-release"), "VERSION_ID=4\n").unwrap();
    let v4 = s.release(&src, "lab/stable");
    assert!(a.once().success(), "{}", a.log());
    wait_updated(&s, "m1", &v4, 10);
    let m = s.machine("m1");
    assert_eq!(m["report"]["failed_release"], Value::Null, "{m}");
    assert_eq!(m["report"]["last_error"], Value::Null, "{m}");
}

/// The machine's line in `fleet list` and the reason lines under the table.
fn fleet_line(s: &Server, name: &str) -> (String, String) {
    let list = s.ok(&["fleet", "list"]);
    let line = list
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not listed: {list}"))
        .to_owned();
    let why = list
        .lines()
        .find(|l| l.starts_with(&format!("{name}: ")))
        .unwrap_or_default()
        .to_owned();
    (line, why)
}

#[test]
fn a_machine_that_cannot_verify_shows_as_failing_with_the_reason() {
    let s = Server::start();
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 3);
    let v1 = s.release(&src, "lab/stable");

    // A wrong trusted root: another repository's.
    let other = crate::common::Env::new();
    let key = other.path("root.key");
    other.ok(&["trust", "init", "--root-key", key.to_str().unwrap()]);
    let wrong = other.repo.join("trust/metadata/1.root.json");
    let a = Agent::new(&s, "wrong-root", &t).trusted_root(&wrong);
    assert!(a.once().success(), "{}", a.log());
    s.ok(&["fleet", "assign", "wrong-root", "lab/stable"]);
    assert!(!a.once().success(), "{}", a.log());
    let m = s.machine("wrong-root");
    assert_eq!(m["state"], "failing", "{m:#}");
    assert_eq!(m["report"]["failing"]["phase"], "verifying", "{m:#}");
    assert_eq!(m["report"]["failing"]["release"], json!(v1), "{m:#}");
    let why = m["state_reason"].as_str().unwrap();
    assert!(
        why.starts_with(&format!("verifying release {}: ", v1.get(..12).unwrap()))
            && why.contains("valid signature(s) from authorised keys"),
        "{why}"
    );
    assert!(m["events"].to_string().contains("failing"), "{m:#}");
    let (line, reason) = fleet_line(&s, "wrong-root");
    assert!(
        line.contains("failing (verifying)") && !line.contains("updating"),
        "{line}"
    );
    assert!(reason.contains("valid signature(s)"), "{reason}");
    let shown = s.ok(&["fleet", "show", "wrong-root"]);
    assert!(shown.contains("failing:    verifying since"), "{shown}");

    // Expired metadata: the timestamp lives a minute, and this machine's clock is two minutes
    // ahead (within the server's five minutes of skew for signed requests).
    let config = s.repo().join("trust/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("timestamp = \"1d\"", "timestamp = \"60s\""),
    )
    .unwrap();
    std::fs::write(src.join("etc/os-release"), "VERSION_ID=2\n").unwrap();
    let v2 = s.release(&src, "lab/stable");
    let late = Agent::new(&s, "late-clock", &t).faketime("+2m");
    assert!(late.once().success(), "{}", late.log());
    s.ok(&["fleet", "assign", "late-clock", "lab/stable"]);
    assert!(!late.once().success(), "{}", late.log());
    let m = s.machine("late-clock");
    assert_eq!(m["state"], "failing", "{m:#}");
    let why = m["state_reason"].as_str().unwrap();
    assert!(
        why.starts_with(&format!("verifying release {}: ", v2.get(..12).unwrap()))
            && why.contains("timestamp: expired at"),
        "{why}"
    );
    let (line, reason) = fleet_line(&s, "late-clock");
    assert!(line.contains("failing (verifying)"), "{line}");
    assert!(reason.contains("expired at"), "{reason}");

    // Its clock fixed, it verifies and updates; the failure is gone from its report.
    let fixed = Agent::new(&s, "late-clock", &t);
    assert!(fixed.once().success(), "{}", fixed.log());
    wait_updated(&s, "late-clock", &v2, 30);
    let m = s.machine("late-clock");
    assert_eq!(m["state"], "updated", "{m:#}");
    assert_eq!(m["report"]["failing"], Value::Null, "{m:#}");
    assert_eq!(m.get("state_reason"), None, "{m:#}");
}

#[test]
fn a_machine_gets_delta_packs_only_between_releases_of_its_channel() {
    let s = Server::start();
    let (_, src, v1) = machine_on_v1(&s, "m1", 5);
    std::fs::write(src.join("etc/os-release"), "VERSION_ID=2\n").unwrap();
    let v2 = s.release(&src, "lab/stable");
    std::fs::write(src.join("etc/os-release"), "VERSION_ID=x\n").unwrap();
    let other = s.release(&src, "lab/other");
    let key = MachineKey::load(&s.path("agents/m1/machine.key")).unwrap();
    let get = |from: &str, to: &str| {
        let path = format!("/api/v1/deltas/{from}/{to}");
        signed(&s, &key, None, "GET", &path, b"", now())
    };
    // to a release of another channel, from one, or between two commits of no channel: refused
    // before anything is built
    let (st, body) = get(&v1, &other);
    assert_eq!(st, 404, "{body}");
    assert!(
        body.contains("not a release this machine is told to run"),
        "{body}"
    );
    let (st, body) = get(&other, &v2);
    assert_eq!(st, 404, "{body}");
    assert!(
        body.contains("never a release of channel lab/stable"),
        "{body}"
    );
    for (f, t) in [(&v1, &other), (&other, &v2)] {
        assert!(!s.data.join(format!("deltas/{f}-{t}.pack")).exists());
    }
    // its own channel's releases: the pack
    let (st, _) = get(&v1, &v2);
    assert_eq!(st, 200);
}

#[test]
fn a_machine_waits_for_the_pack_a_publish_prepares_and_is_told_why() {
    let s = Server::start();
    let (t, src, v1) = machine_on_v1(&s, "m1", 5);
    // new content that does not compress: its pack takes the server a few seconds
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let big: Vec<u8> = (0..6_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    std::fs::write(src.join("usr/lib/new.bin"), &big).unwrap();
    let v2 = s.release(&src, "lab/stable");
    let a = Agent::new(&s, "m1", &t);
    let before = s.stats();
    // while its pack is built the machine stays on v1 and says why; then it goes, in the same
    // run, as soon as the server wakes it
    let status = std::thread::scope(|sc| {
        let run = sc.spawn(|| a.once());
        let mut seen = String::new();
        wait_until("agent status to say it waits", 60, || {
            let out = Command::new(BIN)
                .args(["agent", "--state"])
                .arg(&a.state)
                .arg("status")
                .output()
                .unwrap();
            seen = String::from_utf8_lossy(&out.stdout).into_owned();
            seen.contains("waiting:   release") || run.is_finished()
        });
        assert!(run.join().unwrap().success(), "{}", a.log());
        seen
    });
    assert!(status.contains("waiting:   release"), "{status}");
    assert!(status.contains(&format!("current:   {v1}")), "{status}");
    let log = a.log();
    assert!(
        log.contains("waits for its delta pack from") && log.contains("woken when it is ready"),
        "{log}"
    );
    assert!(log.contains("applied the delta pack"), "{log}");
    assert_eq!(a.current().as_deref(), Some(v2.as_str()));
    delta_pack(&s, &v1, &v2);
    let after = s.stats();
    assert_eq!(
        after["object_bytes_sent"], before["object_bytes_sent"],
        "the release came as the prepared pack: {after}"
    );
}

/// A tmpfs mounted at a directory, unmounted when dropped.
pub(crate) struct Tmpfs(PathBuf);

impl Tmpfs {
    pub(crate) fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs at {}", dir.display());
        Tmpfs(dir.to_owned())
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Bytes in use.
    fn used(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=used", "-B1"])
            .arg(&self.0)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().nth(1).unwrap().trim().parse().unwrap()
    }

    /// Files under it whose name contains `pat`.
    fn find(&self, pat: &str) -> Vec<String> {
        sh(&format!("find {} -name '*{pat}*'", q(&self.0)))
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_reported_as_such_and_leaves_nothing_that_keeps_it_full() {
    let s = Server::start();
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 5);
    let v1 = s.release(&src, "lab/stable");
    let a = Agent::new(&s, "m1", &t);
    let disk = Tmpfs::mount(&a.state, "256M");
    assert!(a.once().success(), "{}", a.log());
    s.ok(&["fleet", "assign", "m1", "lab/stable"]);
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(a.current().as_deref(), Some(v1.as_str()));
    // v2 brings 12 MB that do not compress; the machine has 4 MB left
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let big: Vec<u8> = (0..12_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    std::fs::write(src.join("usr/lib/new.bin"), &big).unwrap();
    let v2 = s.release(&src, "lab/stable");
    delta_pack(&s, &v1, &v2);
    disk.resize(&format!("{}", disk.used() + (4 << 20)));
    for _ in 0..2 {
        assert!(!a.once().success(), "{}", a.log());
        assert_eq!(a.current().as_deref(), Some(v1.as_str()));
        // nothing of the failed try is left to keep the disk full
        assert_eq!(disk.find(".part"), Vec::<String>::new());
        assert_eq!(disk.find(".staging-"), Vec::<String>::new());
    }
    // the admin reads the cause
    let err = s.machine("m1")["report"]["last_error"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(err.contains("the disk is full"), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    // once there is room, the next try succeeds
    disk.resize("256M");
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(a.current().as_deref(), Some(v2.as_str()));
}

/// A machine without the system's CA certificates (no ca-certificates package) still talks
/// plain HTTP to its server; over HTTPS without `--ca` it says what is missing.
#[test]
fn an_agent_without_system_certificates_works_over_http_and_says_what_https_needs() {
    let s = Server::start();
    let t = s.enroll_token(true);
    let no_roots = |a: Agent| {
        a.env("SSL_CERT_FILE", "/nonexistent/ca.pem")
            .env("SSL_CERT_DIR", "/nonexistent")
    };
    let a = no_roots(Agent::new(&s, "m1", &t));
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(s.machines().len(), 1, "enrolled over http");
    let mut b = no_roots(Agent::new(&s, "m2", &t));
    let i = b.extra.iter().position(|x| x == "--server").unwrap();
    b.extra[i + 1] = s.url.replace("http:", "https:");
    assert!(!b.once().success());
    assert!(
        b.log().contains("install ca-certificates, or give --ca"),
        "{}",
        b.log()
    );
}

#[test]
fn a_token_with_a_channel_puts_its_machines_on_it_from_their_enrollment() {
    let s = Server::start();
    let src = s.path("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/motd"), "lab\n").unwrap();
    let v1 = s.release(&src, "lab/stable");
    // Bad channels are refused naming the problem, and no token is made.
    let (st, v) = s.post(
        "/api/v1/admin/tokens",
        &json!({"preauthorized": true, "channel": "lab/stabel"}),
    );
    assert_eq!(st, 404, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("nothing is published on channel \"lab/stabel\""),
        "{e}"
    );
    assert!(e.contains("lab/stable"), "{e}");
    let (st, v) = s.post(
        "/api/v1/admin/tokens",
        &json!({"preauthorized": true, "channel": "../etc"}),
    );
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().starts_with("channel: "), "{v}");
    assert_eq!(s.get("/api/v1/admin/tokens").1, json!([]));

    let out = s.ok(&[
        "fleet",
        "token",
        "create",
        "--preauthorized",
        "--channel",
        "lab/stable",
        "--json",
    ]);
    let t: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(t["channel"], "lab/stable");
    let list = s.ok(&["fleet", "token", "list"]);
    assert!(
        list.contains("CHANNEL") && list.contains("lab/stable"),
        "{list}"
    );
    // The machine runs the channel's release after its first run, with no `fleet assign`: its
    // assignment is signed at enrollment (the agent follows only a signed one).
    let a = Agent::new(&s, "m1", t["token"].as_str().unwrap());
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(a.current().as_deref(), Some(v1.as_str()), "{}", a.log());
    let m = s.machine("m1");
    assert_eq!(m["channel"], "lab/stable", "{m}");
    assert!(
        a.log().contains("as signed for this machine"),
        "{}",
        a.log()
    );
}
