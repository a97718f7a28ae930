//! Package-based machines: real apt and dpkg in a copy of the cached debootstrap root (the
//! agent's --sysroot; the host's packages are never touched), against a local apt repository
//! the test builds from its own tiny .debs, signs with a throwaway gpg key and serves on
//! loopback: sources, install, upgrade (security only, then all), remove, and the outdated
//! machines the inventory shows.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::common::{q, sh};
use crate::fleet::{Agent, Server, wait_until};

/// Files below `dir` over HTTP/1.1 on loopback; every request path is counted.
pub(crate) struct Http {
    pub(crate) port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

pub(crate) fn serve(dir: PathBuf) -> Http {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let dir = dir.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(30)));
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    return;
                }
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                        break;
                    }
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("").to_owned();
                let path = parts.next().unwrap_or("/").to_owned();
                seen.lock().unwrap().push(path.clone());
                let path = percent_decode(&path);
                let rel = path.trim_start_matches('/');
                let file = dir.join(rel);
                let body = (!rel.contains("..") && file.is_file())
                    .then(|| std::fs::read(&file).ok())
                    .flatten();
                let (status, body) = match body {
                    Some(b) => ("200 OK", b),
                    None => ("404 Not Found", b"not found\n".to_vec()),
                };
                let _ = write!(
                    c,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                if method != "HEAD" {
                    let _ = c.write_all(&body);
                }
            });
        }
    });
    Http { port, requests }
}

/// A request path with its `%XX` escapes decoded (apt asks for `pool/main/a_1.0%2bdeb12u1.deb`).
fn percent_decode(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A tiny package: one file saying its version.
fn deb(work: &Path, name: &str, version: &str) -> PathBuf {
    let d = work.join(format!("build/{name}-{version}"));
    sh(&format!(
        "set -e; mkdir -p {d}/DEBIAN {d}/usr/share/{name}; echo {version} > {d}/usr/share/{name}/version; \
         printf 'Package: {name}\\nVersion: {version}\\nArchitecture: all\\nMaintainer: semithin tests <tests@example.invalid>\\nDescription: a package of the semithin tests\\n' > {d}/DEBIAN/control; \
         dpkg-deb --root-owner-group -Zgzip --build {d} {d}.deb >/dev/null",
        d = q(&d)
    ));
    work.join(format!("build/{name}-{version}.deb"))
}

/// A repository with suites `testing` and `testing-security`, each with these packages, its
/// Release files signed (InRelease) by the key in `gnupg`.
pub(crate) fn publish_repo(work: &Path, suites: &[(&str, &[(&str, &str)])]) {
    let repo = work.join("repo");
    let arch = sh("dpkg --print-architecture").trim().to_owned();
    for (suite, pkgs) in suites {
        let pool = repo.join(format!("pool/{suite}"));
        sh(&format!("rm -rf {p}; mkdir -p {p}", p = q(&pool)));
        for (n, v) in *pkgs {
            let d = deb(work, n, v);
            sh(&format!("cp {} {}", q(&d), q(&pool)));
        }
        let dists = repo.join(format!("dists/{suite}"));
        let bin = dists.join(format!("main/binary-{arch}"));
        sh(&format!(
            "set -e; rm -rf {dists}; mkdir -p {bin}; cd {repo}; \
             apt-ftparchive packages pool/{suite} > {bin}/Packages; gzip -9kn {bin}/Packages; \
             apt-ftparchive -o APT::FTPArchive::Release::Suite={suite} \
               -o APT::FTPArchive::Release::Codename={suite} \
               -o APT::FTPArchive::Release::Origin=semithin-test \
               -o APT::FTPArchive::Release::Architectures={arch} \
               -o APT::FTPArchive::Release::Components=main release dists/{suite} > {work}/Release; \
             mv {work}/Release {dists}/Release; \
             gpg --homedir {work}/gnupg --batch --yes --clearsign -o {dists}/InRelease {dists}/Release",
            dists = q(&dists),
            bin = q(&bin),
            repo = q(&repo),
            work = q(work),
        ));
    }
}

/// A throwaway signing key; its public half exported to work/key.asc.
pub(crate) fn gpg_key(work: &Path) -> PathBuf {
    sh(&format!(
        "set -e; mkdir -p -m 700 {w}/gnupg; \
         gpg --homedir {w}/gnupg --batch --passphrase '' --quick-gen-key \
           'semithin test repository <tests@example.invalid>' ed25519 sign never 2>/dev/null; \
         gpg --homedir {w}/gnupg --export --armor > {w}/key.asc",
        w = q(work)
    ));
    work.join("key.asc")
}

pub(crate) fn installed(root: &Path, pkg: &str) -> Option<String> {
    let out = std::process::Command::new("chroot")
        .arg(root)
        .args(["dpkg-query", "-W", "-f=${db:Status-Abbrev}${Version}", pkg])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.strip_prefix("ii ").map(str::to_owned)
}

fn outdated(s: &Server, extra: &[&str]) -> Value {
    let mut a = vec!["fleet", "outdated", "--json"];
    a.extend_from_slice(extra);
    serde_json::from_str(&s.ok(&a)).unwrap()
}

/// Runs a job with --wait; its status (all machines succeeded, else the test fails).
pub(crate) fn job(s: &Server, args: &[&str]) -> Value {
    let mut a = vec!["job"];
    a.extend_from_slice(args);
    a.extend(["--wait", "--json", "--timeout", "5m"]);
    serde_json::from_str(&s.ok(&a)).unwrap()
}

#[test]
fn apt_jobs_in_a_debootstrap_root_install_upgrade_remove_and_manage_sources() {
    let s = Server::start();
    let work = s.path("apt");
    std::fs::create_dir_all(&work).unwrap();
    let key = gpg_key(&work);
    publish_repo(
        &work,
        &[
            ("testing", &[("stone", "1.0"), ("pebble", "1.0")]),
            ("testing-security", &[]),
        ],
    );
    let http = serve(work.join("repo"));
    let uri = format!("http://127.0.0.1:{}/", http.port);

    // The machine's root: the cached debootstrap tree, copied. Its one-line sources.list names
    // a Debian mirror this test does not reach: it is replaced by a comment, and must stay so.
    let base = sh(&format!(
        "{} base",
        q(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/debian-root.sh"))
    ));
    let root = s.path("root");
    sh(&format!("cp -a {} {}", q(Path::new(base.trim())), q(&root)));
    let sources_list = "# this machine's one-line sources (left intact by semithin)\n";
    std::fs::write(root.join("etc/apt/sources.list"), sources_list).unwrap();
    let host_before = sh("dpkg-query -W -f='${Package} ${Version}\\n' | sha256sum");

    let t = s.enroll_token(true);
    let mut m = Agent::new(&s, "deb1", &t)
        .inventory(3600)
        .arg("--sysroot")
        .arg(root.to_str().unwrap());
    m.spawn();
    wait_until("deb1 checked in", 60, || {
        s.get("/api/v1/admin/machines/deb1").1["last_seen"].is_i64()
    });

    // Sources: deb822 files with their key; `[trusted=yes]` cannot be written.
    let key_s = key.to_str().unwrap();
    for (name, suite) in [
        ("semithin-test", "testing"),
        ("semithin-sec", "testing-security"),
    ] {
        job(
            &s,
            &[
                "apt",
                "source",
                "add",
                "deb1",
                name,
                "--uri",
                &uri,
                "--suite",
                suite,
                "--components",
                "main",
                "--signed-by",
                key_s,
            ],
        );
    }
    let text =
        std::fs::read_to_string(root.join("etc/apt/sources.list.d/semithin-test.sources")).unwrap();
    assert!(
        text.contains(&format!(
            "Types: deb\nURIs: {uri}\nSuites: testing\nComponents: main\nSigned-By: /etc/apt/keyrings/semithin-test.asc\n"
        )),
        "{text}"
    );
    assert!(root.join("etc/apt/keyrings/semithin-test.asc").is_file());
    let bad = s.cli(&[
        "job",
        "apt",
        "source",
        "add",
        "deb1",
        "evil",
        "--uri",
        &uri,
        "--suite",
        "testing [trusted=yes]",
        "--components",
        "main",
        "--signed-by",
        key_s,
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("bad suite"),
        "{bad:?}"
    );
    let bad = s.cli(&["job", "apt", "install", "deb1", "stone;reboot"]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("bad package"),
        "{bad:?}"
    );

    // Install from the signed repository.
    let st = job(&s, &["apt", "update", "deb1"]);
    let out = st["runs"][0]["output"].as_str().unwrap();
    assert!(out.contains("InRelease"), "{out}");
    job(&s, &["apt", "install", "deb1", "stone", "pebble"]);
    assert_eq!(installed(&root, "stone").as_deref(), Some("1.0"));
    assert_eq!(installed(&root, "pebble").as_deref(), Some("1.0"));
    assert!(outdated(&s, &[]).as_array().unwrap().is_empty());

    // New versions: stone 1.1 in testing, pebble 1.1 in testing-security.
    publish_repo(
        &work,
        &[
            ("testing", &[("stone", "1.1"), ("pebble", "1.0")]),
            ("testing-security", &[("pebble", "1.1")]),
        ],
    );
    job(&s, &["apt", "update", "deb1"]);
    let o = outdated(&s, &[]);
    let o = &o.as_array().unwrap()[0];
    assert_eq!(o["machine"], "deb1", "{o:#}");
    assert_eq!(
        (o["upgradable"].as_u64(), o["security"].as_u64()),
        (Some(2), Some(1)),
        "{o:#}"
    );
    let pkgs = o["packages"].as_array().unwrap();
    let pebble = pkgs.iter().find(|p| p["name"] == "pebble").unwrap();
    assert_eq!(
        (pebble["from"].as_str(), pebble["to"].as_str()),
        (Some("1.0"), Some("1.1"))
    );
    assert_eq!(pebble["security"], true, "{pebble}");
    assert_eq!(
        pkgs.iter().find(|p| p["name"] == "stone").unwrap()["security"],
        false
    );
    let sec = outdated(&s, &["--security", "deb1"]);
    assert_eq!(sec[0]["packages"].as_array().unwrap().len(), 1, "{sec:#}");
    let text = s.ok(&["fleet", "outdated"]);
    assert!(text.contains("pebble*") && text.contains("stone"), "{text}");

    // Security updates only, then the rest.
    job(&s, &["apt", "upgrade", "deb1", "--security-only"]);
    assert_eq!(installed(&root, "pebble").as_deref(), Some("1.1"));
    assert_eq!(installed(&root, "stone").as_deref(), Some("1.0"));
    assert!(outdated(&s, &["--security"]).as_array().unwrap().is_empty());
    job(&s, &["apt", "upgrade", "deb1", "--dist"]);
    assert_eq!(installed(&root, "stone").as_deref(), Some("1.1"));
    assert!(outdated(&s, &[]).as_array().unwrap().is_empty());

    // Remove, and the sources go with their keys; the one-line file is as it was.
    job(&s, &["apt", "remove", "deb1", "stone"]);
    assert_eq!(installed(&root, "stone"), None);
    job(&s, &["apt", "source", "remove", "deb1", "semithin-test"]);
    assert!(
        !root
            .join("etc/apt/sources.list.d/semithin-test.sources")
            .exists()
    );
    assert!(!root.join("etc/apt/keyrings/semithin-test.asc").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/apt/sources.list")).unwrap(),
        sources_list
    );
    // The host's own packages never changed.
    assert_eq!(
        sh("dpkg-query -W -f='${Package} ${Version}\\n' | sha256sum"),
        host_before
    );
    assert!(
        http.requests
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.ends_with(".deb"))
    );
    m.stop();
}

/// A copy of the cached debootstrap root whose one-line sources.list names nothing.
pub(crate) fn machine_root(s: &Server, name: &str) -> PathBuf {
    let base = sh(&format!(
        "{} base",
        q(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/debian-root.sh"))
    ));
    let root = s.path(name);
    sh(&format!("cp -a {} {}", q(Path::new(base.trim())), q(&root)));
    std::fs::write(root.join("etc/apt/sources.list"), "# none\n").unwrap();
    root
}

#[test]
fn the_servers_apt_cache_serves_the_second_machine_without_touching_upstream() {
    // The upstream mirror: a repository on its own loopback server, counting requests.
    let work = tempfile::Builder::new()
        .prefix("semithin-apt")
        .tempdir()
        .unwrap();
    let work = work.path().to_owned();
    let key = gpg_key(&work);
    publish_repo(
        &work,
        &[("testing", &[("stone", "1.0"), ("pebble", "1.0")])],
    );
    let upstream = serve(work.join("repo"));
    let s = Server::start_args(&[
        "--apt-upstream",
        &format!("mirror=http://127.0.0.1:{}", upstream.port),
    ]);
    let t = s.enroll_token(true);
    let mut agents = Vec::new();
    for name in ["c1", "c2"] {
        let root = machine_root(&s, &format!("root-{name}"));
        let mut a = Agent::new(&s, name, &t)
            .arg("--sysroot")
            .arg(root.to_str().unwrap());
        a.spawn();
        agents.push((a, root));
    }
    for name in ["c1", "c2"] {
        wait_until(&format!("{name} checked in"), 60, || {
            s.get(&format!("/api/v1/admin/machines/{name}")).1["last_seen"].is_i64()
        });
    }
    // Both machines point apt at the server.
    let uri = format!("{}/apt/mirror/", s.url);
    job(
        &s,
        &[
            "apt",
            "source",
            "add",
            "*",
            "mirror",
            "--uri",
            &uri,
            "--suite",
            "testing",
            "--components",
            "main",
            "--signed-by",
            key.to_str().unwrap(),
        ],
    );
    job(&s, &["apt", "update", "c1"]);
    let debs = || {
        upstream
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.ends_with(".deb"))
            .count()
    };
    job(&s, &["apt", "install", "c1", "stone"]);
    assert_eq!(installed(&agents[0].1, "stone").as_deref(), Some("1.0"));
    assert_eq!(debs(), 1, "{:?}", upstream.requests.lock().unwrap());
    let upstream_before = upstream.requests.lock().unwrap().len();
    // The second machine: its indexes and the package come from the cache.
    job(&s, &["apt", "update", "c2"]);
    job(&s, &["apt", "install", "c2", "stone"]);
    assert_eq!(installed(&agents[1].1, "stone").as_deref(), Some("1.0"));
    assert_eq!(debs(), 1, "the .deb crossed the upstream link twice");
    assert_eq!(
        upstream.requests.lock().unwrap().len(),
        upstream_before,
        "the second machine reached the upstream: {:?}",
        upstream.requests.lock().unwrap()
    );
    assert!(
        s.data
            .join("apt-cache/mirror/pool/testing/stone-1.0.deb")
            .is_file()
    );
    // Paths outside the repository and unknown upstreams are refused.
    let (code, _) = s.get("/apt/mirror/../../admin-token");
    assert_ne!(code, 200);
    let (code, v) = s.get("/apt/other/dists/testing/InRelease");
    assert_eq!(code, 404);
    assert!(
        v["error"].as_str().unwrap().contains("no apt upstream"),
        "{v}"
    );
    for (a, _) in &mut agents {
        a.stop();
    }
}
