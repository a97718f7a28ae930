//! `semithin agent`: the daemon on every machine (or one run with --once, for a timer).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use clap::Subcommand;
use semithin_agent::plan::WaitFor;
use semithin_agent::{Agent, Config};
use semithin_protocol::selector::parse_label;

use super::print_json;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = false)]
pub struct Args {
    /// The agent's state directory: key, local repository, trust metadata, deployments and the
    /// `current` link (see docs/BOOT.md for where it lives on a real machine).
    #[arg(long, env = "SEMITHIN_STATE", value_name = "DIR")]
    state: PathBuf,
    /// Settings file (TOML; default STATE/agent.toml when it exists). Flags win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The server's URL (remembered after enrollment).
    #[arg(long, env = "SEMITHIN_SERVER", value_name = "URL")]
    server: Option<String>,
    /// PEM certificates of the CA that signed an https:// server's certificate; only these are
    /// trusted then [default: the system's roots].
    #[arg(long, env = "SEMITHIN_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Enrollment token, needed only for the first run.
    #[arg(
        long,
        env = "SEMITHIN_ENROLL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// This machine's name [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// A label asked for at enrollment (repeatable `k=v`).
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// The server's TUF root.json, trusted at first (shipped in the image).
    #[arg(long, value_name = "FILE")]
    trusted_root: Option<PathBuf>,
    /// Run once (enroll, check in, update, report) and exit: for a systemd timer.
    #[arg(long)]
    once: bool,
    /// Seconds between check-ins when nothing wakes the agent [default: 300].
    #[arg(long, value_name = "SECS")]
    interval: Option<u32>,
    /// A shell command that must exit 0 after a switch (repeatable); it sees
    /// SEMITHIN_DEPLOYMENT and SEMITHIN_RELEASE.
    #[arg(long = "health-check", value_name = "CMD")]
    health_checks: Vec<String>,
    /// Roll back a switched release not confirmed healthy within this many seconds
    /// [default: 900].
    #[arg(long, value_name = "SECS")]
    health_deadline: Option<u64>,
    /// Deployments kept besides the current one [default: 1].
    #[arg(long)]
    keep: Option<usize>,
    /// Seconds between re-hashes of the running deployment; 0 turns it off [default: 86400].
    #[arg(long, value_name = "SECS")]
    verify_interval: Option<u64>,
    /// The root file system jobs act on: apt and dpkg run chrooted into it (so do commands),
    /// and the package inventory is read from it [default: the running system].
    #[arg(long, value_name = "DIR")]
    sysroot: Option<PathBuf>,
    /// Run free-form commands (`semithin job run`) signed by a trusted admin key.
    #[arg(long)]
    allow_commands: bool,
    /// The public key (64 hex digits, `semithin job keygen` prints it) of an admin whose
    /// signed commands this machine runs (repeatable).
    #[arg(long = "admin-key", value_name = "HEX")]
    admin_keys: Vec<String>,
    /// Seconds between readings of the package inventory; 0 turns it off [default: 3600].
    #[arg(long, value_name = "SECS")]
    inventory_interval: Option<u64>,
    #[command(subcommand)]
    command: Option<AgentCmd>,
}

#[derive(Subcommand)]
enum AgentCmd {
    /// Re-hash the running deployment against its release; restore what changed (from the local
    /// store, or from the server when the store is damaged). Exit 1 when something was wrong and
    /// could not be restored.
    Verify {
        /// Only report; change nothing.
        #[arg(long)]
        no_fix: bool,
        #[arg(long)]
        json: bool,
    },
    /// What this machine runs and knows, from its state directory.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Forget the release that failed here, so that the next run tries the server's release
    /// again (refused while another agent works on the state directory: stop the daemon first).
    Retry,
}

fn config(a: &Args) -> Result<Config> {
    let path = a.config.clone().or_else(|| {
        let p = a.state.join("agent.toml");
        p.exists().then_some(p)
    });
    let mut c = match path {
        Some(p) => Config::load(&p)?,
        None => Config::default(),
    };
    if a.server.is_some() {
        c.server = a.server.clone();
    }
    if a.ca.is_some() {
        c.ca = a.ca.clone();
    }
    if a.token.is_some() {
        c.token = a.token.clone();
    }
    if a.name.is_some() {
        c.name = a.name.clone();
    }
    for l in &a.labels {
        let (k, v) = parse_label(l)?;
        c.labels.insert(k, v);
    }
    if a.trusted_root.is_some() {
        c.trusted_root = a.trusted_root.clone();
    }
    if let Some(v) = a.interval {
        anyhow::ensure!(v >= 1, "the interval must be at least 1 s");
        c.interval_secs = v;
    }
    if !a.health_checks.is_empty() {
        c.health_checks = a.health_checks.clone();
    }
    if let Some(v) = a.health_deadline {
        c.health_deadline_secs = v;
    }
    if let Some(v) = a.keep {
        c.keep = v;
    }
    if let Some(v) = a.verify_interval {
        c.verify_interval_secs = v;
    }
    if a.sysroot.is_some() {
        c.sysroot = a.sysroot.clone();
    }
    if let Some(root) = &c.sysroot {
        anyhow::ensure!(
            root.is_dir(),
            "the sysroot {} is not a directory",
            root.display()
        );
    }
    if a.allow_commands {
        c.allow_commands = true;
    }
    c.admin_keys.extend(a.admin_keys.iter().cloned());
    if let Some(v) = a.inventory_interval {
        c.inventory_interval_secs = v;
    }
    Ok(c)
}

pub fn run(a: Args) -> Result<ExitCode> {
    let cfg = config(&a)?;
    let quiet = matches!(
        a.command,
        Some(AgentCmd::Verify { json: true, .. }) | Some(AgentCmd::Status { json: true })
    );
    let log: Box<dyn Fn(&str) + Send> = if quiet {
        Box::new(|_| {})
    } else {
        Box::new(|s: &str| eprintln!("semithin-agent: {s}"))
    };
    if let Some(AgentCmd::Status { json }) = a.command {
        return status(&a.state, json);
    }
    if let Some(AgentCmd::Retry) = a.command {
        match semithin_agent::retry(&a.state)
            .with_context(|| format!("retrying in {}", a.state.display()))?
        {
            Some(f) => println!(
                "release {f} will be tried again at the next run (if the server still asks for it)"
            ),
            None => println!("no release failed here: nothing to retry"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut agent = Agent::open(&a.state, cfg, log)
        .with_context(|| format!("opening the agent state in {}", a.state.display()))?;
    match a.command {
        Some(AgentCmd::Verify { no_fix, json }) => {
            let r = agent.verify(!no_fix)?;
            if json {
                print_json(&r)?;
            } else {
                match &r.release {
                    None => println!("no deployment is current: nothing to verify"),
                    Some(rel) => {
                        println!(
                            "release {rel}: {} files, {} bytes checked",
                            r.files, r.bytes
                        );
                        for p in &r.problems {
                            println!("  {p}");
                        }
                        if !r.problems.is_empty() {
                            println!(
                                "{} problem(s), {} file(s) restored{}",
                                r.problems.len(),
                                r.repaired,
                                if r.refetched_chunks > 0 {
                                    format!(
                                        ", {} chunk(s) fetched again from the server",
                                        r.refetched_chunks
                                    )
                                } else {
                                    String::new()
                                }
                            );
                        }
                    }
                }
            }
            let unrepaired = r.problems.len() as u64 > r.repaired;
            return Ok(if unrepaired {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
        Some(AgentCmd::Status { .. } | AgentCmd::Retry) => unreachable!("answered above"),
        None => {}
    }
    if a.once {
        let o = agent.cycle(0)?;
        let what = match o.wait {
            WaitFor::Acceptance => "waiting for the admin to accept this machine",
            WaitFor::Rejected => "this machine was rejected by the admin",
            WaitFor::Assignment => "no release assigned yet",
            WaitFor::UpToDate => "up to date",
            WaitFor::FailedRelease => "the assigned release failed here; waiting for a new one",
        };
        eprintln!("semithin-agent: {what}");
        return Ok(if o.wait == WaitFor::Rejected {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    exit_on_signal()?;
    let never = AtomicBool::new(false);
    agent.run(&never)?;
    Ok(ExitCode::SUCCESS)
}

/// `agent status`: read from the state directory without its lock (works beside the daemon).
fn status(dir: &std::path::Path, json: bool) -> Result<ExitCode> {
    let (state, report) = semithin_agent::status(dir)?;
    if json {
        print_json(&serde_json::json!({"state": state, "report": report}))?;
    } else {
        let s = &state;
        println!(
            "name:      {}",
            s.name.as_deref().unwrap_or("(not enrolled)")
        );
        println!("machine:   {}", s.machine_id.as_deref().unwrap_or("-"));
        println!("server:    {}", s.server.as_deref().unwrap_or("-"));
        println!("status:    {}", s.status.map(|x| x.as_str()).unwrap_or("-"));
        println!("current:   {}", report.current.as_deref().unwrap_or("-"));
        println!("previous:  {}", report.previous.as_deref().unwrap_or("-"));
        println!("health:    {:?}", report.health);
        if let Some(f) = &report.failed_release {
            println!("failed:    {f}");
        }
        if let Some(e) = &report.last_error {
            println!("error:     {e}");
        }
        if let Some(w) = &s.waiting {
            println!("waiting:   {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM and SIGINT end the agent at once: everything it does is safe to interrupt at any
/// moment (the next run continues from what is on disk), so there is nothing to wind down.
fn exit_on_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut term, mut int) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    std::thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        });
        eprintln!("semithin-agent: stopped");
        std::process::exit(0);
    });
    Ok(())
}
