//! The shipped agent unit under a real systemd: a debootstrapped root with systemd
//! (tests/fixtures/debian-root.sh systemd), booted with `systemd-nspawn --boot` (the tree's own
//! nspawn: the host's packages are left alone), the semithin binary and packaging/systemd
//! installed in it. The container shares the host's network, so its agents reach the test's
//! server and apt repository on loopback. apt jobs succeed under the shipped unit and fail under
//! the unit as it was (`ProtectSystem=full`, `ProtectKernelModules=yes`); `systemd-analyze
//! verify` accepts the units. Slow (a boot, real apt and dpkg): nextest runs tests whose names
//! start with `slow_` one at a time (.config/nextest.toml).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::apt::{gpg_key, installed, job, publish_repo, serve};
use crate::common::{BIN, q, sh};
use crate::fleet::{Server, wait_until};

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/systemd")
}

/// A booted container; stopped (SIGTERM asks nspawn for an orderly poweroff) when dropped.
struct Container {
    child: Child,
}

impl Container {
    fn boot(tree: &Path, root: &Path, log: &Path) -> Container {
        let lib = tree.join("usr/lib/x86_64-linux-gnu");
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(tree.join("lib64/ld-linux-x86-64.so.2"))
            .arg("--library-path")
            .arg(format!(
                "{}:{}",
                lib.join("systemd").display(),
                lib.display()
            ))
            .arg(tree.join("usr/bin/systemd-nspawn"))
            // No machined and no system bus on the host: run in this process's cgroup.
            .args(["--boot", "--register=no", "--keep-unit", "--console=pipe"])
            .arg("--directory")
            .arg(root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Container { child }
    }

    /// What `cmd` prints when run inside the container (with nsenter into its init), for the
    /// messages of a failure.
    fn inside(&self, cmd: &str) -> String {
        let children = format!("/proc/{0}/task/{0}/children", self.child.id());
        let init = std::fs::read_to_string(children).unwrap_or_default();
        let Some(init) = init.split_whitespace().next() else {
            return "(the container has no init)".into();
        };
        let out = Command::new("nsenter")
            .args(["-t", init, "-m", "-u", "-i", "-p", "--", "sh", "-c", cmd])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Stops the container within a bound; whether it ended by itself in time.
    fn stop(&mut self) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The agent unit as it was shipped before apt jobs worked, for another state and config.
fn old_unit(shipped: &str) -> String {
    let s = shipped.replace(
        "--config /etc/semithin/agent.toml --state /var/lib/semithin",
        "--config /etc/semithin/agent-old.toml --state /var/lib/semithin-old",
    );
    assert_ne!(s, shipped, "the ExecStart line changed: {shipped}");
    s.replace(
        "UMask=0022\n",
        "UMask=0022\nProtectSystem=full\nProtectKernelModules=yes\n",
    )
}

fn agent_toml(s: &Server, token: &str, name: &str) -> String {
    format!(
        "server = \"{}\"\ntoken = \"{token}\"\nname = \"{name}\"\n\
         trusted_root = \"/etc/semithin/root.json\"\nverify_interval_secs = 0\n\
         inventory_interval_secs = 0\njob_progress_secs = 1\n",
        s.url
    )
}

/// Runs a job with --wait; (succeeded, what it printed).
fn try_job(s: &Server, args: &[&str]) -> (bool, String) {
    let mut a = vec!["job"];
    a.extend_from_slice(args);
    a.extend(["--wait", "--timeout", "2m"]);
    let out = s.cli(&a);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn slow_apt_jobs_work_under_the_shipped_agent_unit_in_a_booted_systemd() {
    let started = Instant::now();
    let s = Server::start();
    let work = s.path("apt");
    std::fs::create_dir_all(&work).unwrap();
    let key = gpg_key(&work);
    publish_repo(
        &work,
        &[("testing", &[("stone", "1.0"), ("pebble", "1.0")])],
    );
    let http = serve(work.join("repo"));
    let uri = format!("http://127.0.0.1:{}/", http.port);

    let tree = sh(&format!(
        "{} systemd",
        q(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/debian-root.sh"))
    ));
    let tree = PathBuf::from(tree.trim());
    let root = s.path("root");
    sh(&format!("cp -a {} {}", q(&tree), q(&root)));

    // Install as packaging/systemd/semithin-agent.service says, plus the old unit and a unit
    // that runs systemd-analyze verify at boot.
    std::fs::copy(BIN, root.join("usr/local/bin/semithin")).unwrap();
    let units = root.join("etc/systemd/system");
    for f in std::fs::read_dir(packaging()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, units.join(f.file_name().unwrap())).unwrap();
    }
    let shipped = std::fs::read_to_string(packaging().join("semithin-agent.service")).unwrap();
    std::fs::write(units.join("semithin-agent-old.service"), old_unit(&shipped)).unwrap();
    std::fs::write(
        units.join("verify-units.service"),
        "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'cd /etc/systemd/system && \
         systemd-analyze verify semithin-agent.service semithin-agent-once.service \
         semithin-agent.timer semithin-server.service > /verify.out 2>&1; echo rc=$? >> /verify.out'\n\
         [Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    let wants = units.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    for u in [
        "semithin-agent.service",
        "semithin-agent-old.service",
        "verify-units.service",
    ] {
        std::os::unix::fs::symlink(format!("/etc/systemd/system/{u}"), wants.join(u)).unwrap();
    }
    // The container's journal on its console, which is the test's log.
    let jd = root.join("etc/systemd/journald.conf.d");
    std::fs::create_dir_all(&jd).unwrap();
    std::fs::write(
        jd.join("console.conf"),
        "[Journal]\nForwardToConsole=yes\nTTYPath=/dev/console\nMaxLevelConsole=info\n",
    )
    .unwrap();
    let etc = root.join("etc/semithin");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::copy(s.root_json(), etc.join("root.json")).unwrap();
    let t = s.enroll_token(true);
    std::fs::write(etc.join("agent.toml"), agent_toml(&s, &t, "sd-new")).unwrap();
    std::fs::write(etc.join("agent-old.toml"), agent_toml(&s, &t, "sd-old")).unwrap();

    let log = s.path("container.log");
    let mut c = Container::boot(&tree, &root, &log);
    let booted = Instant::now();
    let container_log = || std::fs::read_to_string(&log).unwrap_or_default();
    for n in ["sd-new", "sd-old"] {
        let mut seen = false;
        for _ in 0..300 {
            if s.get(&format!("/api/v1/admin/machines/{n}")).1["last_seen"].is_i64() {
                seen = true;
                break;
            }
            assert!(
                c.child.try_wait().unwrap().is_none(),
                "the container ended:\n{}",
                container_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            seen,
            "{n} never checked in:\n{}\n{}",
            container_log(),
            c.inside(
                "systemctl --no-pager status 'semithin*'; journalctl -b --no-pager | tail -60"
            )
        );
    }
    eprintln!("booted and checked in after {:?}", booted.elapsed());

    // The shipped unit: sources written into /etc/apt, packages installed into /usr.
    let key_s = key.to_str().unwrap();
    let source = |m: &str| {
        try_job(
            &s,
            &[
                "apt",
                "source",
                "add",
                m,
                "semithin-test",
                "--uri",
                &uri,
                "--suite",
                "testing",
                "--components",
                "main",
                "--signed-by",
                key_s,
            ],
        )
    };
    let (ok, out) = source("sd-old");
    assert!(
        !ok && out.contains("Read-only file system"),
        "the old unit let the agent write /etc/apt: {out}"
    );
    let (ok, out) = source("sd-new");
    assert!(ok, "{out}");
    job(&s, &["apt", "update", "sd-new"]);
    let (ok, out) = try_job(&s, &["apt", "install", "sd-old", "pebble"]);
    assert!(
        !ok && out.contains("Read-only file system"),
        "the old unit let dpkg write /usr: {out}"
    );
    assert_eq!(installed(&root, "pebble"), None);
    job(&s, &["apt", "install", "sd-new", "stone"]);
    assert_eq!(installed(&root, "stone").as_deref(), Some("1.0"));
    assert_eq!(
        std::fs::read_to_string(root.join("usr/share/stone/version")).unwrap(),
        "1.0\n"
    );

    wait_until("systemd-analyze verify", 60, || {
        std::fs::read_to_string(root.join("verify.out")).is_ok_and(|v| v.contains("rc="))
    });
    let verify = std::fs::read_to_string(root.join("verify.out")).unwrap();
    assert_eq!(verify, "rc=0\n", "systemd-analyze verify");

    assert!(c.stop(), "the container did not power off within 30 s");
    drop(c);
    let left = sh(&format!(
        "awk -v d={} 'index($5, d) == 1 {{print $5}}' /proc/self/mountinfo",
        q(&root)
    ));
    assert!(left.trim().is_empty(), "still mounted: {left}");
    eprintln!("whole test: {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(180));
}
