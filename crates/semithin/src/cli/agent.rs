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
use super::safe::{safe, safe_or_dash};

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
    /// Enrollment token, needed only for the first run. A command line is visible to every
    /// user of the machine (`ps`): prefer --token-file or the environment.
    #[arg(
        long,
        env = "SEMITHIN_ENROLL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// A file holding the enrollment token (mode 0600); needed only until the machine is
    /// enrolled, after which it may be deleted. Also `token_file` in the settings.
    #[arg(
        long,
        env = "SEMITHIN_ENROLL_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "token"
    )]
    token_file: Option<PathBuf>,
    /// This machine's name [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// A label asked for at enrollment (repeatable `k=v`).
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// The server's TUF root.json, trusted at first (shipped in the image).
    #[arg(long, value_name = "FILE")]
    trusted_root: Option<PathBuf>,
    /// The channel this machine follows: a server answer naming another is refused and
    /// reported [default: the first channel the server names].
    #[arg(long, value_name = "NAME")]
    channel: Option<String>,
    /// Run once (enroll, check in, update, report) and exit: for a systemd timer.
    #[arg(long)]
    once: bool,
    /// Time between check-ins when nothing wakes the agent (`300`, `5m`) [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = super::duration)]
    interval: Option<u64>,
    /// A shell command that must exit 0 after a switch (repeatable); it sees
    /// SEMITHIN_DEPLOYMENT and SEMITHIN_RELEASE.
    #[arg(long = "health-check", value_name = "CMD")]
    health_checks: Vec<String>,
    /// Roll back a switched release not confirmed healthy within this time [default: 15m].
    #[arg(long, value_name = "DURATION", value_parser = super::duration)]
    health_deadline: Option<u64>,
    /// Deployments kept besides the current one [default: 1].
    #[arg(long)]
    keep: Option<usize>,
    /// Time between verifications of the running deployment against its release (also after
    /// every boot); 0 turns them off [default: 1d].
    #[arg(long, value_name = "DURATION", value_parser = super::duration)]
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
    /// Time between readings of the package inventory; 0 turns it off [default: 1h].
    #[arg(long, value_name = "DURATION", value_parser = super::duration)]
    inventory_interval: Option<u64>,
    /// The upper directory of the /etc overlay [default: STATE/overlay/etc/upper].
    #[arg(long, value_name = "DIR")]
    etc_upper: Option<PathBuf>,
    /// Fetch delta packs from the site's machines over BitTorrent first, and seed them after
    /// an update (docs/TORRENT.md); HTTP when no peer sends anything.
    #[arg(long)]
    torrent: bool,
    /// The TCP port peers reach this machine on [default: a free one].
    #[arg(long, value_name = "PORT")]
    torrent_port: Option<u16>,
    /// How long a pack is seeded after an update [default: 1h].
    #[arg(long, value_name = "DURATION", value_parser = super::duration)]
    torrent_seed_time: Option<u64>,
    /// Seeding stops once this many times the pack was uploaded; 0: no ratio [default: 3].
    #[arg(long, value_name = "RATIO")]
    torrent_seed_ratio: Option<f64>,
    /// How long without a byte from peers before the pack comes over HTTP [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = super::duration)]
    torrent_patience: Option<u64>,
    /// What verification does with local changes in /etc: `report` them, or `restore` the
    /// paths given with --etc-restore [default: report].
    #[arg(long, value_name = "POLICY")]
    etc_policy: Option<semithin_agent::config::EtcPolicy>,
    /// A path or glob in /etc put back to the release's version when changed locally, with
    /// `--etc-policy restore` (repeatable; `cron.d/*`, `sudoers`; a directory covers all below).
    #[arg(long = "etc-restore", value_name = "GLOB")]
    etc_restore: Vec<String>,
    /// Keep a copy of the kept deployments' releases and their signed metadata here, for
    /// `agent restore`: the mount point of a disk of its own (a directory that is not a mount
    /// point, or is on the state directory's file system, is not used; docs/BOOT.md).
    #[arg(long, value_name = "DIR")]
    backup_dir: Option<PathBuf>,
    /// Also relay for other machines on this address (docs/RELAY.md): a cache of releases
    /// under STATE/relay and a forwarder of their requests to this agent's own servers.
    #[arg(long, value_name = "ADDR")]
    relay_listen: Option<String>,
    /// Use the relays the server places this machine under (`fleet move --relay`) before the
    /// configured servers (`follow_placement` in the config file).
    #[arg(long)]
    follow_placement: bool,
    /// The relay's cache bound in bytes, with --relay-listen.
    #[arg(long, value_name = "BYTES", default_value_t = 2 << 30)]
    relay_cache_size: u64,
    #[command(subcommand)]
    command: Option<AgentCmd>,
}

#[derive(Subcommand)]
enum AgentCmd {
    /// Compare the whole running deployment with its release (added entries, content, modes,
    /// owners, link targets, devices, xattrs) and the /etc overlay with the release's /etc (by
    /// --etc-policy); put back what differs, from the local store or the server, moving what is
    /// not the release's into STATE/quarantine/; report the findings to the server. Exit 1 when
    /// something still differs or could not be verified.
    Verify {
        /// Only report; change nothing.
        #[arg(long)]
        no_fix: bool,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// The check at boot, which the initramfs runs before it mounts the deployment
    /// (docs/BOOT.md): verify the current deployment against its release and put back what
    /// differs from the local store alone (no network), moving what is not the release's into
    /// STATE/quarantine/; what it found goes to STATE/boot-verify.json, which the agent
    /// reports. Says what it does on stderr, prefixed `semithin:`. Exit 1 when the deployment
    /// could not be verified or put right: it must not be booted then. A full verification that
    /// leaves the deployment as released seals it (STATE/seals/ID).
    BootVerify {
        /// `semithin.verify=quick`: when the deployment's metadata (every entry's inode, mode,
        /// owner, size, mtime and ctime) matches its seal, boot it without reading any file;
        /// otherwise verify in full.
        #[arg(long)]
        quick: bool,
    },
    /// What this machine runs and knows, from its state directory.
    Status {
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Forget the release that failed here, so that the next run tries the server's release
    /// again (refused while another agent works on the state directory: stop the daemon first).
    Retry,
    /// Send this machine's writable layer to the server as a tar.zst: the /etc overlay's upper
    /// directory (whiteouts and opaque directories kept) and the paths of `capture_paths` and
    /// --path; the admin turns it into a layer with `semithin overlay bake`. Works beside the
    /// running daemon.
    Capture {
        /// An absolute path captured too, read below the sysroot (repeatable; `/var/lib/foo`).
        #[arg(long = "path", value_name = "PATH")]
        paths: Vec<String>,
        /// The most bytes of file content the capture may hold [default: 256 MiB, or
        /// `capture_max_bytes`].
        #[arg(long, value_name = "BYTES")]
        max_bytes: Option<u64>,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Deploy a release from a backup made with --backup-dir, without a server: its signed
    /// metadata is verified against the root this machine trusts (STATE/trust, else
    /// --trusted-root) and every object against its id before anything changes; then it is
    /// staged (or its deployment put right) and switched to with the health checks, as an
    /// update is. Stop the agent first (docs/BOOT.md).
    Restore {
        /// The backup's directory (where the backup disk is mounted; read-only is enough).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The release to restore [default: the one current when the backup was made].
        #[arg(long, value_name = "ID")]
        release: Option<String>,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Deploy the release of a bundle made by `semithin bundle create`, without a network: its
    /// signed metadata is verified from this machine's trusted state (an older or expired bundle
    /// is refused), every object against its id, then it is staged and switched to with the
    /// health checks; the machine's signed report is left in DIR/results/ for `bundle sync`.
    /// Stop the agent first (docs/OFFLINE.md).
    Import {
        /// The bundle's directory (where the removable medium is mounted, read-write).
        dir: PathBuf,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
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
    if a.follow_placement {
        c.follow_placement = true;
    }
    if a.token.is_some() {
        c.token = a.token.clone();
    }
    if a.token_file.is_some() {
        c.token_file = a.token_file.clone();
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
    if a.channel.is_some() {
        c.channel = a.channel.clone();
    }
    if let Some(v) = a.interval {
        anyhow::ensure!(v >= 1, "the interval must be at least 1 s");
        c.interval_secs = u32::try_from(v).context("the interval is too long")?;
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
    if a.etc_upper.is_some() {
        c.etc_upper = a.etc_upper.clone();
    }
    c.torrent |= a.torrent;
    if let Some(v) = a.torrent_port {
        c.torrent_port = v;
    }
    if let Some(v) = a.torrent_seed_time {
        c.torrent_seed_secs = v;
    }
    if let Some(v) = a.torrent_seed_ratio {
        anyhow::ensure!(
            v >= 0.0 && v.is_finite(),
            "--torrent-seed-ratio: {v} is not a ratio"
        );
        c.torrent_seed_ratio = v;
    }
    if let Some(v) = a.torrent_patience {
        c.torrent_patience_secs = v;
    }
    if let Some(p) = a.etc_policy {
        c.etc_policy = p;
    }
    if !a.etc_restore.is_empty() {
        c.etc_restore = a.etc_restore.clone();
    }
    if a.backup_dir.is_some() {
        c.backup_dir = a.backup_dir.clone();
    }
    Ok(c)
}

/// The enrollment token in `path`. A file that is gone once the machine is enrolled is no
/// error: the token is not needed any more.
fn read_token(path: &std::path::Path, state: &std::path::Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => {
            let t = t.trim();
            anyhow::ensure!(
                !t.is_empty(),
                "the enrollment token file {} is empty",
                path.display()
            );
            Ok(Some(t.to_owned()))
        }
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && semithin_agent::status(state).is_ok_and(|(s, _)| s.machine_id.is_some()) =>
        {
            Ok(None)
        }
        Err(e) => {
            Err(e).with_context(|| format!("reading the enrollment token file {}", path.display()))
        }
    }
}

pub fn run(a: Args) -> Result<ExitCode> {
    if let Some(AgentCmd::BootVerify { quick }) = a.command {
        return Ok(super::boot_verify::run(&a.state, quick));
    }
    let mut cfg = config(&a)?;
    let quiet = matches!(
        a.command,
        Some(AgentCmd::Verify { json: true, .. })
            | Some(AgentCmd::Status { json: true })
            | Some(AgentCmd::Restore { json: true, .. })
            | Some(AgentCmd::Import { json: true, .. })
    );
    let log: Box<dyn Fn(&str) + Send> = if quiet {
        Box::new(|_| {})
    } else {
        Box::new(|s: &str| note!("semithin-agent: {s}"))
    };
    if let Some(AgentCmd::Status { json }) = a.command {
        return status(&a.state, json);
    }
    if let Some(AgentCmd::Retry) = a.command {
        match semithin_agent::retry(&a.state)
            .with_context(|| format!("retrying in {}", a.state.display()))?
        {
            Some(f) => outln!(
                "release {f} will be tried again at the next run (if the server still asks for it)"
            ),
            None => outln!("no release failed here: nothing to retry"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(AgentCmd::Capture {
        paths,
        max_bytes,
        json,
    }) = &a.command
    {
        if let Some(m) = max_bytes {
            cfg.capture_max_bytes = *m;
        }
        let sent = semithin_agent::capture::capture(&a.state, &cfg, paths)
            .map_err(|e| anyhow::anyhow!(semithin_agent::error::render(&e)))
            .context("capture")?;
        if *json {
            print_json(&sent)?;
        } else {
            for line in semithin_agent::capture::describe(&sent).lines() {
                outln!("{}", safe(line));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if cfg.token.is_none()
        && let Some(p) = &cfg.token_file
    {
        cfg.token = read_token(p, &a.state)?;
    }
    let mut agent = Agent::open(&a.state, cfg, log)
        .with_context(|| format!("opening the agent state in {}", a.state.display()))?;
    match a.command {
        Some(AgentCmd::Verify { no_fix, json }) => {
            let r = agent.verify(!no_fix)?;
            if json {
                print_json(&r)?;
            } else {
                print_verify(&r)?;
            }
            return Ok(if r.unresolved() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
        Some(AgentCmd::Restore {
            from,
            release,
            json,
        }) => {
            let r = agent
                .restore(&from, release.as_deref())
                .with_context(|| format!("restoring from {}", from.display()))?;
            if json {
                print_json(&r)?;
            } else {
                outln!(
                    "release {} of channel {} restored from {}: {} objects verified, {} copied \
                     into the local store; {}{}",
                    r.release,
                    safe(&r.channel),
                    from.display(),
                    r.objects_verified,
                    r.objects_copied,
                    if r.staged {
                        "deployment staged".to_owned()
                    } else {
                        format!("deployment verified, {} path(s) put back", r.repaired)
                    },
                    if r.switched {
                        ", switched to and healthy (boot it to run it)"
                    } else {
                        ", already current"
                    }
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        Some(AgentCmd::Import { dir, json }) => {
            let r = agent
                .import(&dir)
                .with_context(|| format!("importing the bundle in {}", dir.display()))?;
            if json {
                print_json(&r)?;
            } else {
                outln!(
                    "release {} of channel {} imported from {}{}: {}; the report is in {}",
                    r.release,
                    safe(&r.channel),
                    dir.display(),
                    if r.delta_applied {
                        " (through its delta pack)"
                    } else {
                        ""
                    },
                    if r.switched {
                        "switched to and healthy"
                    } else {
                        "already current"
                    },
                    r.result.display()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        Some(
            AgentCmd::Status { .. }
            | AgentCmd::Retry
            | AgentCmd::BootVerify { .. }
            | AgentCmd::Capture { .. },
        ) => {
            unreachable!("answered above")
        }
        None => {}
    }
    if a.once {
        let o = agent.cycle(0)?;
        // A timer's run verifies too, when it is due (after a boot, or every verify interval).
        if let Err(e) = agent.verify_when_due() {
            note!("semithin-agent: verify failed: {e:#}");
        }
        let what = match o.wait {
            WaitFor::Acceptance => "waiting for the admin to accept this machine",
            WaitFor::Rejected => "this machine was rejected by the admin",
            WaitFor::Assignment => "no release assigned yet",
            WaitFor::UpToDate => "up to date",
            WaitFor::FailedRelease => "the assigned release failed here; waiting for a new one",
            WaitFor::NextBoot => "the assigned release is staged for the next boot (live)",
        };
        note!("semithin-agent: {what}");
        return Ok(if o.wait == WaitFor::Rejected {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    exit_on_signal()?;
    if let Some(listen) = &a.relay_listen {
        relay_beside(&agent, &a.state, listen, a.relay_cache_size)?;
    }
    let never = AtomicBool::new(false);
    agent.run(&never)?;
    Ok(ExitCode::SUCCESS)
}

fn print_verify(r: &semithin_agent::repair::VerifyReport) -> Result<()> {
    let Some(rel) = &r.release else {
        outln!("no deployment is current: nothing to verify");
        return Ok(());
    };
    outln!(
        "release {rel}: {} files, {} bytes checked",
        r.files,
        r.bytes
    );
    for p in &r.problems {
        outln!("  {p}");
    }
    if !r.problems.is_empty() {
        let f = r.refetched;
        let fetched = f.chunks + f.trees + f.commits;
        outln!(
            "{} problem(s), {} put back{}",
            r.problems.len(),
            r.repaired,
            if fetched > 0 {
                format!(
                    ", {fetched} object(s) fetched again from the server ({} chunks, {} trees, {} commits)",
                    f.chunks, f.trees, f.commits
                )
            } else {
                String::new()
            }
        );
    }
    if let Some(q) = &r.quarantine {
        outln!("what was not the release's was moved to {}", q.display());
    }
    if !r.etc_drift.is_empty() {
        outln!("local changes in /etc (reported only, etc_policy):");
        for d in &r.etc_drift {
            outln!("  {d}");
        }
    }
    for e in &r.errors {
        outln!("error: {e}");
    }
    Ok(())
}

/// `agent status`: read from the state directory without its lock (works beside the daemon).
fn status(dir: &std::path::Path, json: bool) -> Result<ExitCode> {
    let (state, report) = semithin_agent::status(dir)?;
    if json {
        print_json(&serde_json::json!({"state": state, "report": report}))?;
    } else {
        let s = &state;
        outln!(
            "name:      {}",
            safe(s.name.as_deref().unwrap_or("(not enrolled)"))
        );
        outln!("machine:   {}", safe_or_dash(s.machine_id.as_deref()));
        outln!("server:    {}", safe_or_dash(s.server.as_deref()));
        outln!("status:    {}", s.status.map(|x| x.as_str()).unwrap_or("-"));
        let or_dash = |r: Option<semithin_protocol::ids::ReleaseId>| {
            r.map(|r| r.to_string()).unwrap_or_else(|| "-".into())
        };
        outln!("current:   {}", or_dash(report.current));
        outln!("previous:  {}", or_dash(report.previous));
        outln!("health:    {:?}", report.health);
        if let Some(f) = &report.failed_release {
            outln!("failed:    {f}");
        }
        if let Some(e) = &report.last_error {
            outln!("error:     {}", safe(e));
        }
        if let Some(i) = &report.integrity {
            outln!("verified:  {}", super::fleet::integrity_text(i));
        }
        if let Some(f) = &report.failing {
            outln!(
                "failing:   {} since {}: {}",
                f.phase.as_str(),
                super::time(f.since),
                safe(&f.reason)
            );
        }
        if let Some(w) = &s.waiting {
            println!("waiting:   {w}");
        }
        if let Some(b) = &s.backup {
            outln!(
                "backup:    {} since {}: {}",
                b.kind,
                super::time(b.since),
                safe(&b.reason)
            );
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
        note!("semithin-agent: stopped");
        std::process::exit(0);
    });
    Ok(())
}

/// Runs a relay in a thread beside the agent's loop, with the machine's own key (once it has
/// one: a first run makes it when it enrolls) and the agent's servers as its upstreams.
fn relay_beside(agent: &Agent, state: &std::path::Path, listen: &str, cache: u64) -> Result<()> {
    let upstreams = semithin_agent::failover::split(agent.cfg.server()?);
    let name = agent.cfg.name.clone().unwrap_or_else(|| {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    });
    let mut cfg = semithin_relay::Config::new(upstreams, state.join("relay"), &name);
    cfg.cache_size = cache;
    cfg.ca = agent.cfg.ca.clone();
    let key_path = agent.layout.key();
    let listen = listen.to_owned();
    std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || {
            while !key_path.exists() {
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            let r = semithin_protocol::sign::MachineKey::load(&key_path)
                .map_err(anyhow::Error::from)
                .and_then(|key| {
                    super::relay::serve(
                        cfg,
                        std::sync::Arc::new(key),
                        &listen,
                        1024,
                        None,
                        std::future::pending(),
                    )
                });
            if let Err(e) = r {
                note!("semithin-agent: the relay stopped: {e:#}");
            }
        })
        .context("starting the relay's thread")?;
    Ok(())
}
