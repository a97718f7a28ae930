//! `semithin demo`, the main job: a fleet converges twice and everything it started is gone
//! afterwards; a fleet that cannot converge in time is a failure with the reason.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::BIN;

/// Processes whose command line mentions `dir`.
fn processes_in(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) {
                found.push(cmd);
            }
        }
    }
    found
}

#[test]
fn the_demo_converges_twice_reports_the_bytes_and_leaves_nothing_running() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let out = Command::new(BIN)
        .args(["demo", "--machines", "4", "--timeout", "120", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Summary: 4/4 machines updated"), "{text}");
    // the check at boot put m01's tampered deployment back: both paths named, both put back
    let step7 = text.split("7. ").nth(1).unwrap_or_default();
    assert!(
        step7.contains("usr/bin/tool1") && step7.contains("usr/bin/helper"),
        "{text}"
    );
    assert!(step7.contains("2 path(s) differed, 2 put back"), "{text}");
    // what monitoring sees: all updated, the metrics agree, the dashboard's address
    let step8 = text.split("8. ").nth(1).unwrap_or_default();
    // the 4 machines and the relay, which is a machine of the fleet with no channel
    assert!(
        step8.contains("SEMITHIN OK - 5 machines, 4 updated"),
        "{text}"
    );
    // the relay fetched from the server and served its two machines more than that
    let relay = text.lines().find(|l| l.contains("the relay:")).unwrap();
    assert!(
        relay.contains("fetched ") && relay.contains("to its 2 machines"),
        "{relay}"
    );
    // the other two share packs over BitTorrent, the server seeding
    let swarm = text.lines().find(|l| l.contains("BitTorrent:")).unwrap();
    assert!(
        swarm.contains("the server seeded ") && swarm.contains("its 2 machines sent"),
        "{swarm}"
    );
    assert!(
        step8.contains("semithin_machines{state=\"updated\"} "),
        "{text}"
    );
    assert!(step8.contains("the dashboard is at http://"), "{text}");
    // the update costs a small part of the full install
    let per_machine = |label: &str| -> f64 {
        let line = text.lines().find(|l| l.contains(label)).unwrap();
        let (before, _) = line.split_once("% of the image").unwrap();
        let (_, n) = before.rsplit_once('(').unwrap();
        n.trim().parse().unwrap()
    };
    let (full, update) = (per_machine("v1 (full install)"), per_machine("v2 (update)"));
    assert!(full > 20.0 && update < full / 10.0, "{full}% vs {update}%");
    // every agent ran the release it was given: each state directory points at v2
    let agents: Vec<_> = std::fs::read_dir(dir.join("agents"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(agents.len(), 4);
    let currents: std::collections::HashSet<_> = agents
        .iter()
        .map(|e| std::fs::read_link(e.path().join("current")).unwrap())
        .collect();
    assert_eq!(currents.len(), 1, "all on one release: {currents:?}");
    assert_eq!(processes_in(&dir), Vec::<String>::new());
}

#[test]
fn a_demo_that_cannot_converge_in_time_fails_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let out = Command::new(BIN)
        .args(["demo", "--machines", "2", "--timeout", "0", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not converge"), "{err}");
    assert!(err.contains("the demo's files (and logs) are in"), "{err}");
    assert_eq!(processes_in(&dir), Vec::<String>::new());
}

/// `demo --keep` prints commands to try while the fleet runs: every one of them works, and the
/// agents got their token from a file, never on a command line.
#[test]
fn the_commands_a_kept_demo_prints_work() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--machines",
            "2",
            "--timeout",
            "2m",
            "--keep",
            "--dir",
        ])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut commands = Vec::new();
    let mut reading = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.starts_with("The fleet keeps running") {
            reading = true;
            continue;
        }
        if reading {
            commands.push(line.trim().to_owned());
            if line.contains("agent --state") {
                break;
            }
        }
    }
    // the agents' command lines hold no token
    let agents = processes_in(&dir)
        .into_iter()
        .filter(|c| c.contains(" agent "))
        .collect::<Vec<_>>();
    assert_eq!(agents.len(), 2, "{agents:?}");
    for a in &agents {
        assert!(a.contains("--token-file") && !a.contains("--token "), "{a}");
    }
    assert!(
        commands.iter().any(|c| c.contains("agent --state")),
        "{commands:?}"
    );
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = format!("set -e\n{}\n", commands.join("\n"));
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("PATH", path)
        .env_remove("SEMITHIN_REPO")
        .output()
        .unwrap();
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("m01") && text.contains("health:"), "{text}");
    assert!(
        status.success(),
        "the demo ends cleanly on Ctrl-C: {status}"
    );
    assert_eq!(processes_in(&dir), Vec::<String>::new());
}
