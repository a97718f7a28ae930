//! The web dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! driven over WebDriver by fantoccini), against a real server with real agents on loopback:
//! a wrong token refused, login, the overview, filtering machines, one machine, a canary
//! rollout planned on the page, signed by the CLI and aborted from the page, an apt job made
//! on the page and run by a machine against a local apt repository, logout. Screenshots are
//! kept under the test's target directory (the path is printed).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::apt::{gpg_key, installed, job, machine_root, publish_repo, serve};
use crate::fleet::{Agent, Server, free_port, image, wait_until, wait_updated};

/// chromedriver on a loopback port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start(log: &Path) -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; test.sh installs it)");
        let url = format!("http://127.0.0.1:{port}");
        wait_until("chromedriver listens", 30, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Driver { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let caps = json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            // as root in a container: no sandbox, no GPU, /tmp instead of a small /dev/shm
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1000"]
        }
    });
    let caps = caps.as_object().unwrap().clone();
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session")
}

struct Shots {
    dir: PathBuf,
    n: usize,
}

impl Shots {
    async fn take(&mut self, c: &Client, name: &str) {
        self.n += 1;
        let png = c.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(self.dir.join(format!("{:02}-{name}.png", self.n)), png).unwrap();
    }
}

/// The text of an element, once the page shows it (a click's page may still be loading).
async fn text(c: &Client, css: &str) -> String {
    wait_text(c, css, 20, |_| true).await
}

/// Waits until the browser is at this path (after a click that navigates).
async fn wait_path(c: &Client, path: &str) {
    let start = Instant::now();
    loop {
        let at = c.current_url().await.unwrap();
        if at.path() == path {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the browser is at {at}, not {path}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the element's text satisfies `ok`, without reloading: the page's live parts
/// are refreshed by htmx.
async fn wait_text(c: &Client, css: &str, secs: u64, ok: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
        {
            if ok(&t) {
                return t;
            }
            last = t;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{css} is still {last:?} after {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn rows(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.unwrap().len()
}

/// A fleet of three machines on lab/stable (two in room=lab) updated to v1, and an apt machine
/// whose root is a copy of the Debian tree with a local apt repository as its source.
struct Fleet {
    _agents: Vec<Agent>,
    src: PathBuf,
    apt_root: PathBuf,
    _http: crate::apt::Http,
}

fn fleet(s: &Server) -> Fleet {
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 10);
    let v1 = s.release(&src, "lab/stable");
    let mut agents: Vec<Agent> = [
        ("m1", "room=lab"),
        ("m2", "room=lab"),
        ("m3", "room=office"),
    ]
    .iter()
    .map(|(n, l)| Agent::new(s, n, &t).arg("--label").arg(l))
    .collect();
    for a in &mut agents {
        a.spawn();
    }
    wait_until("the machines enrolled", 60, || s.machines().len() == 3);
    s.ok(&["fleet", "assign", "*", "lab/stable"]);
    for n in ["m1", "m2", "m3"] {
        wait_updated(s, n, &v1, 60);
    }

    let work = s.path("apt");
    std::fs::create_dir_all(&work).unwrap();
    let key = gpg_key(&work);
    publish_repo(&work, &[("testing", &[("stone", "1.0")])]);
    let http = serve(work.join("repo"));
    let root = machine_root(s, "deb1-root");
    let mut deb1 = Agent::new(s, "deb1", &t)
        .inventory(3600)
        .arg("--sysroot")
        .arg(root.to_str().unwrap());
    deb1.spawn();
    wait_until("deb1 checked in", 60, || {
        s.get("/api/v1/admin/machines/deb1").1["last_seen"].is_i64()
    });
    job(
        s,
        &[
            "apt",
            "source",
            "add",
            "deb1",
            "local",
            "--uri",
            &format!("http://127.0.0.1:{}/", http.port),
            "--suite",
            "testing",
            "--components",
            "main",
            "--signed-by",
            key.to_str().unwrap(),
        ],
    );
    job(s, &["apt", "update", "deb1"]);
    agents.push(deb1);
    Fleet {
        _agents: agents,
        src,
        apt_root: root,
        _http: http,
    }
}

#[test]
fn slow_dashboard_in_chromium_login_machines_rollout_abort_and_an_apt_job() {
    let s = Server::start();
    let f = fleet(&s);
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    println!("screenshots: {}", shots.display());
    let driver = Driver::start(&s.path("chromedriver.log"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = browser(&driver).await;
        let mut shots = Shots {
            dir: shots.clone(),
            n: 0,
        };
        let url = |p: &str| format!("{}{p}", s.url);

        // No page without a session: to the login page, which refuses a wrong token.
        c.goto(&url("/machines")).await.unwrap();
        wait_path(&c, "/login").await;
        c.find(Locator::Css("#token"))
            .await
            .unwrap()
            .send_keys("not-the-admin-token")
            .await
            .unwrap();
        c.find(Locator::Css("#login"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let said = text(&c, "#login-error").await;
        assert!(said.contains("wrong admin token"), "{said}");
        shots.take(&c, "wrong-token").await;
        c.find(Locator::Css("#token"))
            .await
            .unwrap()
            .send_keys(&s.token)
            .await
            .unwrap();
        c.find(Locator::Css("#login"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_path(&c, "/machines").await;

        // The overview counts the fleet.
        c.goto(&url("/")).await.unwrap();
        assert_eq!(text(&c, "#total").await, "4");
        let states = text(&c, "#by-state").await;
        assert!(states.contains("updated"), "{states}");
        shots.take(&c, "overview").await;

        // Machines: all, then filtered by selector and by text.
        c.goto(&url("/machines")).await.unwrap();
        wait_text(&c, "#count", 20, |t| t == "4").await;
        assert_eq!(rows(&c, "tr.machine").await, 4);
        c.find(Locator::Css("#selector"))
            .await
            .unwrap()
            .send_keys("room=lab")
            .await
            .unwrap();
        c.find(Locator::Css("#filter"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&c, "#count", 10, |t| t == "2").await;
        assert_eq!(rows(&c, "tr.machine").await, 2);
        shots.take(&c, "machines-room-lab").await;
        let q = c.find(Locator::Css("#q")).await.unwrap();
        q.send_keys("m2").await.unwrap();
        c.find(Locator::Css("#filter"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&c, "#count", 10, |t| t == "1").await;

        // One machine.
        c.find(Locator::Css("a.name"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        assert_eq!(text(&c, "#machine-name").await, "m2");
        assert_eq!(text(&c, "#state").await, "updated");
        let labels = text(&c, "#labels").await;
        assert!(
            labels.contains("room") && labels.contains("lab"),
            "{labels}"
        );
        shots.take(&c, "machine-m2").await;

        // A canary rollout: planned by the server on the page, started where the keys are.
        std::fs::write(f.src.join("etc/os-release"), "VERSION_ID=2\n").unwrap();
        let out = s.ok(&[
            "commit",
            f.src.to_str().unwrap(),
            "-c",
            "lab/stable",
            "--json",
        ]);
        let v2 = serde_json::from_str::<Value>(&out).unwrap()["commit"]
            .as_str()
            .unwrap()
            .to_owned();
        let v2_short = v2.get(..12).unwrap().to_owned();
        c.goto(&url("/rollouts")).await.unwrap();
        for (name, value) in [
            ("channel", "lab/stable"),
            ("release", v2_short.as_str()),
            ("to", "room=lab"),
            ("soak", "1h"),
        ] {
            let e = c
                .find(Locator::Css(&format!("#plan-form input[name={name}]")))
                .await
                .unwrap();
            e.clear().await.unwrap();
            e.send_keys(value).await.unwrap();
        }
        c.find(Locator::Css("#plan"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let plan = text(&c, "#plan-result").await;
        assert!(plan.contains("canary"), "{plan}");
        let command = text(&c, "#start-command").await;
        assert_eq!(
            command,
            format!(
                "semithin rollout start lab/stable {v2_short} --to room=lab --canary 1 \
                 --waves 100% --soak 1h --max-failures 0"
            )
        );
        shots.take(&c, "rollout-plan").await;
        // asked for a signature on the page: stored on the server, awaiting an admin who holds
        // the targets key; the list on the page is live
        c.find(Locator::Css("#ask-signature"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&c, "#pending tr.pending td.state", 20, |t| t == "awaiting").await;
        let request = c
            .find(Locator::Css("#pending tr.pending"))
            .await
            .unwrap()
            .attr("data-id")
            .await
            .unwrap()
            .unwrap();
        let sign = text(&c, "#pending tr.pending code").await;
        assert_eq!(sign, format!("semithin rollout sign {request}"));
        shots.take(&c, "rollout-awaiting-signature").await;
        let (_, p) =
            tokio::task::block_in_place(|| s.get(&format!("/api/v1/admin/pending/{request}")));
        assert_eq!(p["request"]["release"], json!(v2), "{p}");
        assert_eq!(p["request"]["soak"], "1h", "{p}");
        // signed where the keys are, with the command the page shows: the server starts it,
        // and the page (not reloaded) shows it started
        let started =
            tokio::task::block_in_place(|| s.ok(&["rollout", "sign", &request, "--yes", "--json"]));
        let id = serde_json::from_str::<Value>(&started).unwrap()["id"]
            .as_i64()
            .unwrap();
        wait_text(&c, "#pending tr.pending td.state", 20, |t| {
            t == format!("started rollout {id}")
        })
        .await;
        shots.take(&c, "rollout-signed").await;
        c.find(Locator::Css("#pending a.started"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_path(&c, &format!("/rollouts/{id}")).await;
        // live: the canary updates and soaks while the page stays open
        wait_text(&c, "#waves tr.wave-0 td.updated", 90, |t| t == "1").await;
        assert_eq!(text(&c, "#waves tr.wave-0 td.failed").await, "0");
        assert_eq!(text(&c, "#waves tr.wave-1 td.admitted").await, "0");
        assert_eq!(text(&c, "#rollout-state").await, "running");
        shots.take(&c, "rollout-canary-updated").await;
        c.find(Locator::Css("#abort"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        c.accept_alert().await.unwrap();
        wait_text(&c, "#rollout-state", 20, |t| t == "aborted").await;
        let back = text(&c, "#sign-back").await;
        assert!(
            back.contains(&format!("semithin rollout abort {id}")),
            "{back}"
        );
        shots.take(&c, "rollout-aborted").await;
        let (_, r) = tokio::task::block_in_place(|| s.get(&format!("/api/v1/admin/rollouts/{id}")));
        assert_eq!(r["state"], "aborted", "{r}");
        // the page's abort is in the audit log as the session's token, told by the page
        let (_, audit) = tokio::task::block_in_place(|| s.get("/api/v1/admin/audit"));
        let abort = audit
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == json!(format!("/api/v1/admin/rollouts/{id}/abort")))
            .unwrap_or_else(|| panic!("no abort in {audit}"))
            .clone();
        let fp = blake3::hash(s.token.as_bytes());
        assert_eq!(
            abort["actor"],
            json!(format!("admin:{}", hex::encode(&fp.as_bytes()[..8]))),
            "{abort}"
        );
        assert_eq!(abort["user"], "dashboard");
        assert_eq!(abort["status"], 200);

        // An apt job made on the page, and its result.
        c.goto(&url("/jobs")).await.unwrap();
        c.find(Locator::Css("#job-selector"))
            .await
            .unwrap()
            .send_keys("deb1")
            .await
            .unwrap();
        c.find(Locator::Css("#job-packages"))
            .await
            .unwrap()
            .send_keys("stone")
            .await
            .unwrap();
        c.find(Locator::Css("#job-create"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        c.accept_alert().await.unwrap();
        wait_text(&c, "#job-what", 20, |t| t == "apt install stone").await;
        wait_text(&c, ".run-state", 300, |t| t == "succeeded").await;
        shots.take(&c, "apt-job-succeeded").await;
        assert_eq!(installed(&f.apt_root, "stone").as_deref(), Some("1.0"));
        let (_, jobs) = tokio::task::block_in_place(|| s.get("/api/v1/admin/jobs"));
        assert_eq!(
            jobs[0]["spec"]["action"],
            json!({"type": "apt_install", "packages": ["stone"]})
        );

        // Logout: the pages are closed again.
        c.find(Locator::Css("#logout"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_path(&c, "/login").await;
        c.goto(&url("/jobs")).await.unwrap();
        wait_path(&c, "/login").await;
        shots.take(&c, "logged-out").await;
        c.close().await.unwrap();
    });
    let taken = std::fs::read_dir(&shots).unwrap().count();
    assert_eq!(taken, 11, "screenshots in {}", shots.display());
}
