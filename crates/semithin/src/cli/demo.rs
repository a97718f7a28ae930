//! `semithin demo`: the whole story on one machine, with real processes on loopback.
//!
//! A server in a temporary directory, a small sample root filesystem committed as v1, N agents
//! (each its own process and state directory) that enroll and wait, the admin accepting and
//! assigning them, v1 published and rolled out, then v2 (a few changed files) committed and
//! published — with live progress, and a summary of what crossed the network.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use semithin_protocol::api::{
    AssignRequest, MachineInfo, SelectorRequest, Stats, TokenInfo, TokenRequest,
};
use semithin_store::import::{CommitOptions, commit};
use semithin_store::{Access, CommitId, NoProgress, Repo};
use serde_json::json;

use super::admin::{AdminClient, ServerArgs};
use super::human;

#[derive(clap::Args)]
pub struct Args {
    /// How many machines to simulate (each agent is its own process).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
    machines: u32,
    /// Keep the fleet running after the summary, and print commands to try; Ctrl-C ends it.
    #[arg(long)]
    keep: bool,
    /// Work in this (new or empty) directory and leave it behind, instead of a temporary one.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Give up when the fleet has not converged within this time, per release (`180`, `3m`).
    #[arg(long, default_value = "3m", value_name = "DURATION", value_parser = super::duration)]
    timeout: u64,
}

const CHANNEL: &str = "demo/stable";

/// Child processes, stopped when dropped.
struct Fleet {
    server: Option<Child>,
    relay: Option<Child>,
    agents: Vec<Child>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let all = self
            .agents
            .iter_mut()
            .chain(self.relay.as_mut())
            .chain(self.server.as_mut());
        let mut children: Vec<&mut Child> = all.collect();
        for c in &children {
            if let Ok(pid) = i32::try_from(c.id())
                && let Some(p) = rustix::process::Pid::from_raw(pid)
            {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
            }
        }
        let end = Instant::now() + Duration::from_secs(10);
        for c in children.iter_mut() {
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Deterministic bytes: machine-code-like (compressible, not trivially).
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    let words: Vec<u32> = (0..64)
        .map(|i| {
            let v = seed.wrapping_add(i).wrapping_mul(0x2545_F491_4F6C_DD1D);
            (v >> 17) as u32
        })
        .collect();
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(3) {
            out.extend_from_slice(&(x as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&words[(x % 64) as usize].to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

fn write(root: &Path, rel: &str, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let p = root.join(rel);
    if std::fs::read(&p).is_ok_and(|old| old == data) {
        // Unchanged files keep their mtime, as in a real image build.
        return Ok(());
    }
    std::fs::create_dir_all(p.parent().expect("parent"))?;
    std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// A small root filesystem: programs, libraries, documentation, /etc. v2 differs in a few files.
fn sample_root(root: &Path, version: u32) -> Result<()> {
    write(
        root,
        "etc/os-release",
        format!("NAME=\"semithin demo\"\nVERSION_ID=\"{version}\"\nID=semithin-demo\n").as_bytes(),
        0o644,
    )?;
    write(root, "etc/hostname", b"demo\n", 0o644)?;
    write(
        root,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    )?;
    write(root, "etc/group", b"root:x:0:\n", 0o644)?;
    let motd = if version == 1 {
        "Welcome.\n"
    } else {
        "Welcome. Updated by semithin.\n"
    };
    write(root, "etc/motd", motd.as_bytes(), 0o644)?;
    for i in 0..40u64 {
        let mut data = bytes(i, 20_000 + (i as usize * 4_517) % 180_000);
        if version >= 2 && i == 3 {
            // a security fix: a few kilobytes in the middle change
            let mid = data.len() / 2;
            data[mid..mid + 3000].copy_from_slice(&bytes(1000 + i, 3000));
        }
        write(root, &format!("usr/bin/tool{i}"), &data, 0o755)?;
    }
    for i in 0..10u64 {
        let mut data = bytes(100 + i, 300_000);
        if version >= 2 && i == 2 {
            data.extend_from_slice(&bytes(2000, 8_000));
        }
        write(root, &format!("usr/lib/libdemo{i}.so.1"), &data, 0o644)?;
    }
    for i in 0..100u64 {
        if version >= 2 && i == 7 {
            continue;
        }
        let text = format!(
            "Package {i}\n{}",
            "This is documentation. ".repeat(50 + i as usize * 3)
        );
        write(
            root,
            &format!("usr/share/doc/pkg{i}/README"),
            text.as_bytes(),
            0o644,
        )?;
    }
    if version >= 2 {
        write(root, "usr/bin/newtool", &bytes(5000, 40_000), 0o755)?;
    }
    let sh = root.join("usr/bin/sh");
    if !sh.exists() {
        std::os::unix::fs::symlink("tool0", sh)?;
    }
    Ok(())
}

fn dir_bytes(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn commit_and_publish(repo_path: &Path, src: &Path, message: &str) -> Result<CommitId> {
    let repo = Repo::open(repo_path, Access::Write)?;
    let opts = CommitOptions {
        channel: CHANNEL,
        message,
        time: None,
    };
    let stats = commit(&repo, src, &opts, &NoProgress)?;
    let id: CommitId = stats.commit.parse()?;
    super::publish::sign(&repo, CHANNEL, id)?;
    Ok(id)
}

/// Polls the fleet until every machine runs `release` healthy, showing progress.
fn converge(c: &AdminClient, n: u32, release: &str, label: &str, timeout: u64) -> Result<Duration> {
    let start = Instant::now();
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("  {prefix:>4} [{bar:30}] {pos}/{len} updated  {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    loop {
        let ms: Vec<MachineInfo> = c.get("listing machines", "/api/v1/admin/machines")?;
        let updated = ms
            .iter()
            .filter(|m| m.report.current.is_some_and(|c| c.to_string() == release) && m.updated)
            .count();
        let failed: Vec<&MachineInfo> = ms
            .iter()
            .filter(|m| {
                m.report
                    .failed_release
                    .is_some_and(|c| c.to_string() == release)
            })
            .collect();
        let stats: Stats = c.get("reading stats", "/api/v1/admin/stats")?;
        bar.set_position(updated as u64);
        bar.set_message(format!(
            "{} sent by the server so far, {:.1} s",
            human(stats.object_bytes_sent + stats.metadata_bytes_sent + stats.delta_bytes_sent),
            start.elapsed().as_secs_f64()
        ));
        if updated as u32 == n {
            bar.finish();
            return Ok(start.elapsed());
        }
        if !failed.is_empty() {
            bar.abandon();
            bail!(
                "release {} failed on {}: {}",
                semithin_protocol::ids::short_str(release),
                failed[0].name,
                failed[0]
                    .report
                    .last_error
                    .as_deref()
                    .unwrap_or("no reason given")
            );
        }
        if start.elapsed() > Duration::from_secs(timeout) {
            bar.abandon();
            let lagging: Vec<String> = ms
                .iter()
                .filter(|m| !m.updated)
                .take(5)
                .map(|m| {
                    format!(
                        "{} ({})",
                        m.name,
                        m.report
                            .last_error
                            .as_deref()
                            .unwrap_or("no error reported")
                    )
                })
                .collect();
            bail!(
                "the fleet did not converge on {} within {timeout} s: {updated}/{n} updated; \
                 behind: {}",
                semithin_protocol::ids::short_str(release),
                lagging.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Step 7: m01 is stopped (as at shutdown), its deployment tampered with, and the check the
/// initramfs runs before it mounts the deployment (docs/BOOT.md, "Verification at boot") puts it
/// back from the machine's own store; then m01 runs again.
fn boot_check(
    exe: &Path,
    agents: &Path,
    m01: &mut Child,
    spawn: impl Fn() -> Result<Child>,
) -> Result<()> {
    let _ = m01.kill();
    let _ = m01.wait();
    let state = agents.join("m01");
    let current = std::fs::canonicalize(state.join("current")).context("reading m01's current")?;
    std::fs::write(current.join("usr/bin/tool1"), b"#!/bin/sh\necho owned\n")?;
    write(&current, "usr/bin/helper", b"#!/bin/sh\nexec sh\n", 0o4755)?;
    let out = Command::new(exe)
        .arg("agent")
        .arg("--state")
        .arg(&state)
        .arg("boot-verify")
        .output()
        .context("running the check at boot")?;
    outln!(
        "7. m01 tampered with (usr/bin/tool1 changed, a setuid usr/bin/helper added); the check \
         its initramfs runs at the next boot (`agent boot-verify`) puts it back:"
    );
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        outln!("   {line}");
    }
    if !out.status.success() {
        bail!("the check at boot failed on m01 (see above)");
    }
    // m01 runs again: it takes the check's record at start (and reports it at its next
    // check-in); a stopped agent is said
    *m01 = spawn()?;
    let record = state.join("boot-verify.json");
    wait_for(
        "m01 starting again (see agents/m01.log)",
        Duration::from_secs(60),
        || {
            if let Some(status) = m01.try_wait()? {
                bail!("m01's agent stopped ({status}): see agents/m01.log");
            }
            Ok(!record.exists())
        },
    )?;
    std::thread::sleep(Duration::from_millis(500));
    if let Some(status) = m01.try_wait()? {
        bail!("m01's agent stopped ({status}): see agents/m01.log");
    }
    Ok(())
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    loop {
        if f()? {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("{what}: not done within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn run(a: Args) -> Result<ExitCode> {
    let (dir, temporary) = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            anyhow::ensure!(
                std::fs::read_dir(d)?.next().is_none(),
                "{} is not empty",
                d.display()
            );
            (d.clone(), false)
        }
        None => {
            let d = std::env::temp_dir().join(format!("semithin-demo-{}", std::process::id()));
            std::fs::create_dir_all(&d)?;
            (d, true)
        }
    };
    let res = demo(&a, &dir);
    if temporary && !(a.keep && res.is_ok()) {
        let _ = semithin_agent::deploy::remove_dir(&dir);
    } else if res.is_err() {
        note!("the demo's files (and logs) are in {}", dir.display());
    }
    res
}

fn demo(a: &Args, dir: &Path) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("finding this program")?;
    let data = dir.join("server");
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let n = a.machines;
    outln!(
        "semithin demo: {n} machines, a server on {url}, files in {}",
        dir.display()
    );

    let mut fleet = Fleet {
        server: None,
        relay: None,
        agents: Vec::new(),
    };
    let log = std::fs::File::create(dir.join("server.log"))?;
    fleet.server = Some(
        Command::new(&exe)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data")
            .arg(&data)
            .args(["--checkin-interval", "30", "--max-wait", "30"])
            // packs shared among the machines over BitTorrent, the server seeding
            .arg("--torrent")
            .env_remove("SEMITHIN_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the server")?,
    );
    let health = format!("{url}/api/v1/health");
    let http = semithin_agent::http::client_builder(None)?
        .timeout(Duration::from_secs(5))
        .build()?;
    wait_for(
        "the server starting (see server.log)",
        Duration::from_secs(30),
        || {
            if let Some(s) = fleet.server.as_mut()
                && let Some(st) = s.try_wait()?
            {
                bail!(
                    "the server exited ({st}); see {}",
                    dir.join("server.log").display()
                );
            }
            Ok(http
                .get(&health)
                .send()
                .is_ok_and(|r| r.status().is_success()))
        },
    )?;
    let token = std::fs::read_to_string(data.join("admin-token"))?
        .trim()
        .to_owned();
    let c = ServerArgs {
        server: Some(url.clone()),
        admin_token: Some(token.clone()),
        ca: None,
    }
    .client()?;
    outln!(
        "1. server started (SQLite fleet database, repository and TUF metadata in {})",
        data.display()
    );

    let v1_src = dir.join("rootfs");
    sample_root(&v1_src, 1)?;
    let image = dir_bytes(&v1_src);
    let repo_path = data.join("repo");
    let v1 = {
        let repo = Repo::open(&repo_path, Access::Write)?;
        let opts = CommitOptions {
            channel: CHANNEL,
            message: "v1",
            time: None,
        };
        commit(&repo, &v1_src, &opts, &NoProgress)?
            .commit
            .parse::<CommitId>()?
    };
    outln!(
        "2. sample root filesystem ({}) committed as v1 {}",
        human(image),
        v1.short()
    );

    let t: TokenInfo = c.post(
        "making an enrollment token",
        "/api/v1/admin/tokens",
        &TokenRequest {
            labels: [("demo".to_owned(), "yes".to_owned())].into(),
            ..Default::default()
        },
    )?;
    let secret = t.token.context("the server returned no token secret")?;
    // The token goes to the agents in a file (mode 0600), never on a command line, where every
    // user of the machine could read it (`ps`).
    let token_file = dir.join("enroll-token");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token_file)?;
        f.write_all(secret.as_bytes())?;
    }
    // A relay (a site's staging server) between the server and half the machines: it enrolls
    // as a machine of its own with a pre-authorised token, caches what its machines fetch and
    // passes their check-ins up with their signatures (docs/RELAY.md).
    let relay_port = free_port()?;
    let relay_url = format!("http://127.0.0.1:{relay_port}");
    let rt: TokenInfo = c.post(
        "making the relay's enrollment token",
        "/api/v1/admin/tokens",
        &TokenRequest {
            preauthorized: true,
            uses: Some(1),
            labels: [("role".to_owned(), "relay".to_owned())].into(),
            ..Default::default()
        },
    )?;
    let relay_log = std::fs::File::create(dir.join("relay.log"))?;
    fleet.relay = Some(
        Command::new(&exe)
            .args(["relay", "--upstream", &url, "--name", "site-relay"])
            .arg("--data")
            .arg(dir.join("relay"))
            .args(["--listen", &format!("127.0.0.1:{relay_port}")])
            .env(
                "SEMITHIN_TOKEN",
                rt.token.context("the server returned no token secret")?,
            )
            .stdin(Stdio::null())
            .stdout(relay_log.try_clone()?)
            .stderr(relay_log)
            .spawn()
            .context("starting the relay")?,
    );
    let relay_info = format!("{relay_url}/api/v1/relay");
    wait_for(
        "the relay starting (see relay.log)",
        Duration::from_secs(30),
        || {
            Ok(http
                .get(&relay_info)
                .send()
                .is_ok_and(|r| r.status().is_success()))
        },
    )?;
    let root = repo_path.join("trust/metadata/1.root.json");
    let agents = dir.join("agents");
    std::fs::create_dir_all(&agents)?;
    let spawn_agent = |name: &str| -> Result<Child> {
        let state = agents.join(name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(agents.join(format!("{name}.log")))?;
        // every other machine behind the relay, with the server to fall back on; the others
        // share packs with each other over BitTorrent
        let n: u32 = name.trim_start_matches('m').parse().unwrap_or(1);
        let relayed = n.is_multiple_of(2);
        let servers = if relayed {
            format!("{relay_url},{url}")
        } else {
            url.clone()
        };
        let torrent: &[&str] = if relayed {
            &[]
        } else {
            &["--torrent", "--torrent-seed-time", "600"]
        };
        Command::new(&exe)
            .arg("agent")
            .args(torrent)
            .arg("--state")
            .arg(&state)
            .args(["--server", &servers, "--name", name])
            .arg("--token-file")
            .arg(&token_file)
            .arg("--trusted-root")
            .arg(&root)
            .args(["--interval", "30", "--inventory-interval", "0"])
            .arg("--health-check")
            .arg("test -s \"$SEMITHIN_DEPLOYMENT/etc/os-release\"")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting an agent")
    };
    for i in 1..=n {
        fleet.agents.push(spawn_agent(&format!("m{i:02}"))?);
    }
    wait_for(
        "the agents enrolling (see agents/*.log)",
        Duration::from_secs(60),
        || {
            let ms: Vec<MachineInfo> = c.get(
                "listing machines",
                "/api/v1/admin/machines?selector=demo%3Dyes",
            )?;
            Ok(ms.len() as u32 == n)
        },
    )?;
    outln!(
        "3. {n} agents started; each made its own key and enrolled: pending ({} of them behind \
         a relay, `semithin relay` on {relay_url}; the other {} share packs over BitTorrent)",
        n / 2,
        n - n / 2
    );
    let acc: semithin_protocol::api::Affected = c.post(
        "accepting",
        "/api/v1/admin/accept",
        &SelectorRequest {
            selector: "demo=yes".into(),
        },
    )?;
    let _: semithin_protocol::api::Affected = c.post(
        "assigning",
        "/api/v1/admin/assign",
        &AssignRequest {
            selector: "demo=yes".into(),
            channel: CHANNEL.into(),
            // published in the next step: the publish is what wakes the machines
            unpublished: true,
        },
    )?;
    outln!(
        "4. admin: `fleet accept demo=yes` ({} machines), \
         `fleet assign --unpublished demo=yes {CHANNEL}`",
        acc.machines.len()
    );

    {
        let repo = Repo::open(&repo_path, Access::Write)?;
        super::publish::sign(&repo, CHANNEL, v1)?;
    }
    let _: serde_json::Value = c.post("publishing", "/api/v1/admin/published", &json!({}))?;
    outln!("5. v1 signed and published; the server wakes the machines (long poll):");
    let before = (
        c.get::<Stats>("reading stats", "/api/v1/admin/stats")?,
        seeded(&c)?,
    );
    let t1 = converge(&c, n, &v1.to_hex(), "v1", a.timeout)?;
    let mid = (
        c.get::<Stats>("reading stats", "/api/v1/admin/stats")?,
        seeded(&c)?,
    );

    sample_root(&v1_src, 2)?;
    std::fs::remove_dir_all(v1_src.join("usr/share/doc/pkg7"))?;
    let v2 = commit_and_publish(
        &repo_path,
        &v1_src,
        "v2: a fixed tool, a larger library, a new tool, new motd",
    )?;
    let _: serde_json::Value = c.post("publishing", "/api/v1/admin/published", &json!({}))?;
    outln!(
        "6. v2 {} (5 files changed, 1 added, 1 removed) committed and published:",
        v2.short()
    );
    let t2 = converge(&c, n, &v2.to_hex(), "v2", a.timeout)?;
    let end = (
        c.get::<Stats>("reading stats", "/api/v1/admin/stats")?,
        seeded(&c)?,
    );

    boot_check(&exe, &agents, &mut fleet.agents[0], || spawn_agent("m01"))?;
    monitoring(&c, &url)?;

    // over HTTP, and by the server's BitTorrent seeder
    let sent = |(s, seeded): &(Stats, u64)| {
        s.object_bytes_sent + s.metadata_bytes_sent + s.delta_bytes_sent + seeded
    };
    let sent1 = sent(&mid) - sent(&before);
    let sent2 = sent(&end) - sent(&mid);
    let pct = |x: u64| 100.0 * x as f64 / image as f64;
    let relayed: serde_json::Value = http
        .get(&relay_info)
        .send()
        .and_then(|r| r.json())
        .context("reading the relay's counters")?;
    outln!();
    outln!("Summary: {n}/{n} machines updated to v1, then v2; every one verified and healthy.");
    outln!("  image size:                       {}", human(image));
    outln!(
        "  v1 (full install): server sent    {} in all, {} per machine ({:.0}% of the image), converged in {:.1} s",
        human(sent1),
        human(sent1 / n as u64),
        pct(sent1 / n as u64),
        t1.as_secs_f64()
    );
    outln!(
        "  v2 (update):       server sent    {} in all, {} per machine ({:.1}% of the image), converged in {:.1} s",
        human(sent2),
        human(sent2 / n as u64),
        pct(sent2 / n as u64),
        t2.as_secs_f64()
    );
    outln!(
        "  the relay:                        fetched {} from the server once, served {} to its {} machines",
        human(relayed["fetched_bytes"].as_u64().unwrap_or(0)),
        human(relayed["served_bytes"].as_u64().unwrap_or(0)),
        n / 2
    );
    let ms: Vec<MachineInfo> = c.get(
        "listing machines",
        "/api/v1/admin/machines?selector=demo%3Dyes",
    )?;
    let peers: u64 = ms
        .iter()
        .filter_map(|m| m.report.swarm)
        .map(|s| s.sent)
        .sum();
    outln!(
        "  BitTorrent:                       the server seeded {} in all, its {} machines sent \
         each other {} (full-release and delta packs)",
        human(end.1),
        n - n / 2,
        human(peers)
    );
    if a.keep {
        outln!();
        outln!("The fleet keeps running; try (Ctrl-C here ends the demo):");
        outln!("  export SEMITHIN_SERVER={url}");
        outln!("  export SEMITHIN_ADMIN_TOKEN={token}");
        outln!("  semithin fleet list");
        outln!("  semithin fleet show m01");
        outln!("  semithin fleet check; semithin audit; semithin fleet tree");
        outln!("  # the dashboard: open {url}/ in a browser and log in with the admin token");
        outln!("  semithin --repo {} log", repo_path.display());
        outln!(
            "  semithin --repo {} publish {CHANNEL} {}   # roll back to v1",
            repo_path.display(),
            v1.short()
        );
        outln!(
            "  semithin agent --state {} status",
            agents.join("m01").display()
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
    }
    drop(fleet);
    Ok(ExitCode::SUCCESS)
}

/// What the server's BitTorrent seeder uploaded so far, all torrents.
fn seeded(c: &AdminClient) -> Result<u64> {
    let ts: Vec<semithin_protocol::torrent::TorrentInfo> =
        c.get("listing the server's torrents", "/api/v1/admin/torrents")?;
    Ok(ts.iter().filter_map(|t| t.uploaded).sum())
}

/// Step 8: what the admin's monitoring sees: `fleet check`'s line, a few `/metrics` samples, the
/// audit log's count, and where the dashboard is.
fn monitoring(c: &AdminClient, url: &str) -> Result<()> {
    use super::fleet_check::{Threshold, verdict};
    let ms: Vec<semithin_protocol::api::MachineInfo> =
        c.get("listing machines", "/api/v1/admin/machines")?;
    let now = jiff::Timestamp::now().as_second();
    let v = verdict(
        &ms,
        now,
        Threshold::Count(1),
        Threshold::Percent(10.0),
        3600,
    );
    let mut metrics = Vec::new();
    c.download("reading /metrics", "/metrics", &mut metrics, 16 << 20)?;
    let metrics = String::from_utf8_lossy(&metrics);
    let audit: Vec<semithin_protocol::audit::AuditEntry> =
        c.get("reading the audit log", "/api/v1/admin/audit?limit=1000")?;
    outln!("8. What monitoring sees: `semithin fleet check` says");
    outln!("     {}", v.line);
    outln!("   /metrics (Prometheus) says, among others:");
    for l in metrics.lines().filter(|l| {
        l.starts_with("semithin_machines{state=\"updated\"}")
            || l.starts_with("semithin_checkins_total")
            || l.starts_with("semithin_sent_bytes_total{kind=\"delta\"}")
    }) {
        outln!("     {l}");
    }
    outln!(
        "   the audit log holds {} admin change(s) (`semithin audit`); the dashboard is at {url}/ \
         (log in with the admin token)",
        audit.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sample_bytes_are_deterministic_and_differ_by_seed() {
        assert_eq!(super::bytes(1, 1000), super::bytes(1, 1000));
        assert_ne!(super::bytes(1, 1000), super::bytes(2, 1000));
        assert_eq!(super::bytes(3, 1001).len(), 1001);
    }
}
