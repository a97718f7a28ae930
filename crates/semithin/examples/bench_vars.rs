//! The helper of bench/vars.sh: N agents of the agent library, each in its own thread with its
//! own state directory (key, repository, deployment, /etc layer), against a running server;
//! then rounds of variable changes, each signed with the admin key and stored through the
//! admin API, timing how long each agent takes to have its configuration rendered anew.
//!
//! bench_vars URL ADMIN_TOKEN ENROLL_TOKEN ROOT_JSON SIGN_KEY DIR AGENTS ROUNDS
//!
//! Prints one line per round and a JSON summary on the last line. Every agent's rendered
//! /etc/motd is read after each round and must hold the round's value.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use semithin_agent::{Agent, Config};
use semithin_protocol::job::AdminKey;
use semithin_protocol::vars::{SignedSet, VarSet, VarsInfo};

/// Longest wait for all agents' first rendering, and for each round.
const SETUP: Duration = Duration::from_secs(900);
const ROUND: Duration = Duration::from_secs(180);

struct Admin {
    http: reqwest::blocking::Client,
    url: String,
    token: String,
}

impl Admin {
    fn global_version(&self) -> Result<u64> {
        let body = self
            .http
            .get(format!("{}/api/v1/admin/vars", self.url))
            .bearer_auth(&self.token)
            .send()?
            .error_for_status()?
            .bytes()?;
        let info: VarsInfo = serde_json::from_slice(&body)?;
        Ok(info
            .sets
            .iter()
            .find(|s| s.scope == "global")
            .map(|s| s.version)
            .unwrap_or(0))
    }

    fn put(&self, s: &SignedSet) -> Result<()> {
        let r = self
            .http
            .put(format!("{}/api/v1/admin/vars", self.url))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(s)?)
            .send()?;
        if !r.status().is_success() {
            bail!(
                "storing the set: {} {}",
                r.status(),
                r.text().unwrap_or_default()
            );
        }
        Ok(())
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn motd(dir: &Path, i: usize) -> String {
    std::fs::read_to_string(dir.join(format!("{i}/overlay/etc/upper/motd"))).unwrap_or_default()
}

fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [url, admin_token, enroll, root, key_file, dir, n, rounds] = a.as_slice() else {
        bail!(
            "usage: bench_vars URL ADMIN_TOKEN ENROLL_TOKEN ROOT_JSON SIGN_KEY DIR AGENTS ROUNDS"
        );
    };
    let n: usize = n.parse().context("AGENTS")?;
    let rounds: usize = rounds.parse().context("ROUNDS")?;
    let key = AdminKey::from_file_text(&std::fs::read_to_string(key_file)?)
        .map_err(anyhow::Error::msg)?;
    let dir = PathBuf::from(dir);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<(usize, Instant)>();
    let mut threads = Vec::new();
    let started = Instant::now();
    for i in 0..n {
        let cfg = Config {
            server: Some(url.clone()),
            token: Some(enroll.clone()),
            name: Some(format!("vars-{i:04}")),
            trusted_root: Some(PathBuf::from(root)),
            admin_keys: vec![key.public_hex()],
            interval_secs: 300,
            verify_interval_secs: 0,
            inventory_interval_secs: 0,
            facts_interval_secs: 3600,
            restart_command: vec!["true".into()],
            ..Config::default()
        };
        let tx = tx.clone();
        let stop = stop.clone();
        let state = dir.join(i.to_string());
        threads.push(
            std::thread::Builder::new()
                .stack_size(512 << 10)
                .spawn(move || {
                    let log = Box::new(move |line: &str| {
                        if line.starts_with("configuration: rendered /etc/motd") {
                            let _ = tx.send((i, Instant::now()));
                        } else if line.starts_with("error") {
                            eprintln!("agent {i}: {line}");
                        }
                    });
                    match Agent::open(&state, cfg, log) {
                        Ok(mut agent) => {
                            if let Err(e) = agent.run(&stop) {
                                eprintln!("agent {i}: {e}");
                            }
                        }
                        Err(e) => eprintln!("agent {i}: {e}"),
                    }
                })?,
        );
    }
    drop(tx);
    // every agent enrolled, updated and rendered once
    let mut first = vec![false; n];
    let mut left = n;
    while left > 0 {
        let Ok((i, _)) = rx.recv_timeout(SETUP.saturating_sub(started.elapsed())) else {
            bail!(
                "{left} of {n} agents did not render within {} s",
                SETUP.as_secs()
            );
        };
        if !std::mem::replace(&mut first[i], true) {
            left -= 1;
        }
    }
    println!(
        "{n} agents enrolled, updated and rendered in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let admin = Admin {
        http: semithin_agent::http::client_builder(None)?.build()?,
        url: url.clone(),
        token: admin_token.clone(),
    };
    let mut all = Vec::new();
    let mut per_round = Vec::new();
    for r in 0..rounds {
        std::thread::sleep(Duration::from_secs(2));
        while rx.try_recv().is_ok() {}
        let version = admin.global_version()? + 1;
        let set = VarSet {
            scope: "global".into(),
            version,
            vars: [("round".to_owned(), serde_json::json!(format!("r{r}")))].into(),
        };
        let signed = SignedSet::sign(set, &key).map_err(anyhow::Error::msg)?;
        let t0 = Instant::now();
        admin.put(&signed)?;
        let put_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut got = vec![None; n];
        let mut left = n;
        while left > 0 {
            let Ok((i, at)) = rx.recv_timeout(ROUND.saturating_sub(t0.elapsed())) else {
                bail!(
                    "round {r}: {left} of {n} agents did not render within {} s",
                    ROUND.as_secs()
                );
            };
            if got[i].is_none() {
                got[i] = Some(at.duration_since(t0).as_secs_f64() * 1e3);
                left -= 1;
            }
        }
        let want = format!("round r{r}\n");
        let wrong = (0..n).filter(|i| motd(&dir, *i) != want).count();
        if wrong > 0 {
            bail!("round {r}: {wrong} agents' /etc/motd does not hold {want:?}");
        }
        let mut ms: Vec<f64> = got.into_iter().flatten().collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "round {r}: stored in {put_ms:.0} ms; all {n} rendered: median {:.0} ms, p95 {:.0} ms, \
             max {:.0} ms",
            pct(&ms, 0.5),
            pct(&ms, 0.95),
            pct(&ms, 1.0)
        );
        per_round.push(pct(&ms, 1.0));
        all.extend(ms);
    }
    all.sort_by(f64::total_cmp);
    per_round.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "agents": n, "rounds": rounds,
            "median_ms": pct(&all, 0.5), "p95_ms": pct(&all, 0.95), "max_ms": pct(&all, 1.0),
            "all_reached_median_ms": pct(&per_round, 0.5),
        })
    );
    stop.store(true, Ordering::Relaxed);
    // The agents sit in long polls; the script stops the server, which ends them.
    Ok(())
}
