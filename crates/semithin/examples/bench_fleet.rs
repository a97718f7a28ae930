//! Helper of `bench/fleet.sh`: a fleet of many machines for the check-in benchmark.
//!
//! ```text
//! bench_fleet init DATA                        make a server data directory (repo, trust, token)
//! bench_fleet populate DATA N CHANNEL RELEASE  enroll N accepted machines on CHANNEL, in one
//!                                              transaction, each reporting RELEASE as current
//! bench_fleet sign N RELEASE OUT [ROUNDS [FIRST]]  pre-sign ROUNDS (default 1) "nothing new"
//!                                              check-ins per machine, counters from FIRST on
//! bench_fleet check DATA N CHANNEL RELEASE     count the machines whose stored report is still
//!                                              the one `sign` sends, and those seen
//! bench_fleet free-port                        a free TCP port on 127.0.0.1
//! ```
//!
//! Machine `i` has the ed25519 key of seed `i` (little endian, padded), so `populate` and `sign`
//! agree without keeping 100,000 key files. `populate` writes rows through the server's own
//! schema and insert function (`semithin_server::db`); the server then starts from the database
//! as usual and verifies every signed check-in.
//!
//! `sign` writes OUT as: the date (Unix seconds), the request body (one JSON line, the same for
//! every machine: the report `populate` stored and `wait_secs` 0), N, then one line per machine
//! and round, round by round: `MACHINE-ID COUNTER SIGNATURE` (hex, decimal, hex). The signatures
//! cover `POST /api/v1/checkin`, the date, the counter (the date's first microseconds, one per
//! round, from FIRST on) and the body; each is accepted once, within 300 s of the date.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use semithin_protocol::api::{CheckInRequest, Health, MachineStatus, Phase, Report};
use semithin_protocol::selector::Labels;
use semithin_protocol::sign::MachineKey;
use semithin_server::db::{self, MachineRow};

const CHECKIN_PATH: &str = "/api/v1/checkin";

fn key(i: u64) -> MachineKey {
    let mut seed = [0x5e_u8; 32];
    seed[..8].copy_from_slice(&i.to_le_bytes());
    MachineKey::from_seed(seed)
}

fn name(i: u64) -> String {
    format!("bench-{i:06}")
}

/// What every benchmark machine reports: up to date and healthy on `release`, nothing staged.
fn report(release: &str) -> Report {
    Report {
        current: Some(release.parse().expect("a release id")),
        staged: None,
        previous: None,
        health: Health::Healthy,
        phase: Phase::Idle,
        failed_release: None,
        last_error: None,
        disk_free: 12 << 30,
        uptime_secs: 86_400,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        fetched_bytes: 52_118_996,
        integrity: None,
        failing: None,
        config: None,
        backup: None,
        swarm: None,
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn count(s: &str) -> Result<u64> {
    s.parse()
        .with_context(|| format!("{s:?} is not a number of machines"))
}

fn init(data: &Path) -> Result<()> {
    semithin_server::prepare(&semithin_server::Config::new(data.to_owned()))?;
    Ok(())
}

fn populate(data: &Path, n: u64, channel: &str, release: &str) -> Result<()> {
    semithin_store::channel::check_name(channel)?;
    let report = report(release);
    let labels: Labels = [("site".to_owned(), "bench".to_owned())].into();
    let now = semithin_server::now();
    runtime()?.block_on(async {
        let pool = db::open(&data.join("fleet.db")).await?;
        let have = db::load_machines(&pool).await?.len();
        if have > 0 {
            bail!("{} already holds {have} machines", data.display());
        }
        let mut tx = pool.begin().await.context("starting the transaction")?;
        for i in 0..n {
            let k = key(i);
            let row = MachineRow {
                id: k.id(),
                name: name(i),
                public_key: k.public(),
                status: MachineStatus::Accepted,
                labels: labels.clone(),
                channel: Some(channel.to_owned()),
                report: report.clone(),
                enrolled_at: now,
                last_seen: None,
            };
            db::insert_machine(&mut *tx, &row).await?;
        }
        tx.commit().await.context("committing the machines")?;
        pool.close().await;
        Ok(())
    })
}

fn sign(n: u64, rounds: u64, first_round: u64, release: &str, out: &Path) -> Result<()> {
    let body = serde_json::to_vec(&CheckInRequest {
        report: report(release),
        wait_secs: 0,
        ..Default::default()
    })?;
    let date = semithin_server::now();
    let f = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = std::io::BufWriter::new(f);
    writeln!(w, "{date}")?;
    w.write_all(&body)?;
    writeln!(w)?;
    writeln!(w, "{n}")?;
    let first = u64::try_from(date)? * semithin_protocol::sign::COUNTER_PER_SECOND;
    for round in 0..rounds {
        for i in 0..n {
            let counter = first + first_round + round;
            let [(_, id), _, _, (_, sig)] = key(i).sign("POST", CHECKIN_PATH, counter, &body);
            writeln!(w, "{id} {counter} {sig}")?;
        }
    }
    w.flush()?;
    Ok(())
}

fn check(data: &Path, n: u64, channel: &str, release: &str) -> Result<()> {
    let want = report(release);
    let rows = runtime()?.block_on(async {
        let pool = db::open(&data.join("fleet.db")).await?;
        let rows = db::load_machines(&pool).await?;
        pool.close().await;
        Ok::<_, anyhow::Error>(rows)
    })?;
    let on_channel = rows
        .iter()
        .filter(|r| r.status == MachineStatus::Accepted && r.channel.as_deref() == Some(channel))
        .count();
    let same = rows.iter().filter(|r| r.report == want).count();
    let seen = rows.iter().filter(|r| r.last_seen.is_some()).count();
    println!(
        "machines={} expected={n} accepted_on_channel={on_channel} report_unchanged={same} seen={seen}",
        rows.len()
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    match a.as_slice() {
        ["init", data] => init(&PathBuf::from(data)),
        ["populate", data, n, channel, release] => {
            populate(&PathBuf::from(data), count(n)?, channel, release)
        }
        ["sign", n, release, out] => sign(count(n)?, 1, 0, release, &PathBuf::from(out)),
        ["sign", n, release, out, rounds] => {
            sign(count(n)?, count(rounds)?, 0, release, &PathBuf::from(out))
        }
        ["sign", n, release, out, rounds, first] => sign(
            count(n)?,
            count(rounds)?,
            first.parse().context("FIRST")?,
            release,
            &PathBuf::from(out),
        ),
        ["check", data, n, channel, release] => {
            check(&PathBuf::from(data), count(n)?, channel, release)
        }
        ["free-port"] => {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            println!("{}", l.local_addr()?.port());
            Ok(())
        }
        _ => bail!(
            "usage: bench_fleet init DATA | populate DATA N CHANNEL RELEASE | sign N RELEASE OUT \
             | check DATA N CHANNEL RELEASE | free-port"
        ),
    }
}
