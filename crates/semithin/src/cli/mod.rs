//! The command line: one module per subcommand.
//!
//! Output goes through [`outln!`] (stdout; a reader that went away, as in `semithin log | head`,
//! ends the command quietly: the error travels up and `main` exits 0 without a word) and
//! [`note!`] (stderr, for people; never fails the command).

include!("macros.rs");

mod admin;
mod agent;
mod audit;
mod boot_artifacts;
mod boot_verify;
mod bundle;
mod channel;
mod checkout;
mod cherry_pick;
mod commit;
mod completions;
mod delta;
mod demo;
mod diff;
mod export;
mod fleet;
mod fleet_check;
mod fleet_tree;
mod fsck;
mod gc;
mod grow;
mod history;
mod image;
mod init;
mod job;
mod live;
mod overlay;
mod profile;
mod progress;
mod publish;
mod publish_boot;
mod relay;
mod repo;
mod rollout;
mod safe;
mod serve;
mod trust;
mod tuf_client;
mod var;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use semithin_store::{Access, Repo};

/// Keep a fleet of Linux machines on golden images.
///
/// semithin stores versions of root filesystems in a content-addressed repository: every file
/// is split into chunks named by their BLAKE3 hash, so content shared between versions and
/// channels is stored once, and every read is verified.
#[derive(Parser)]
#[command(
    name = "semithin",
    version,
    propagate_version = true,
    max_term_width = 100,
    after_help = ADMIN_HELP
)]
pub struct Cli {
    /// The repository to work on [env: SEMITHIN_REPO].
    #[arg(long, global = true, value_name = "PATH")]
    repo: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// How the admin commands find the server: shown under `--help`.
const ADMIN_HELP: &str = "\
The admin commands (fleet, job, rollout, push, publish) reach the server named by --server,
--admin-token and --ca, else SEMITHIN_SERVER, SEMITHIN_ADMIN_TOKEN and SEMITHIN_CA, else the admin
config file: SEMITHIN_ADMIN_CONFIG, or ~/.config/semithin/admin.toml when it exists. It is TOML:

    server = \"https://updates.example:8470\"
    admin_token_file = \"/var/lib/semithin-server/admin-token\"   # or admin_token = \"...\"
    ca = \"/etc/semithin/ca.pem\"   # an https:// server with a certificate of your own CA

Keep it readable by you alone when it holds the token.";

#[derive(Subcommand)]
enum Command {
    /// Create a repository.
    #[command(subcommand)]
    Repo(repo::RepoCmd),
    /// Store a root filesystem (a directory or a .tar, .tar.gz, .tar.zst) as a new version.
    Commit(commit::Args),
    /// List the versions of a channel (or of every channel).
    Log(history::LogArgs),
    /// Show one version: its id, parent, message, size and channels.
    Show(history::ShowArgs),
    /// Show what changed between two versions.
    Diff(diff::Args),
    /// What a machine running release A downloads to reach B (a delta pack: patches against
    /// the old files, new content compressed together), by kind; `--out` writes the pack.
    Delta(delta::Args),
    /// Apply a delta pack to this repository, which must hold its starting release and the
    /// target's commit object; every object is verified before it is stored.
    ApplyDelta(delta::ApplyArgs),
    /// Write a version into a new or empty directory, identical in content and metadata.
    Checkout(checkout::Args),
    /// Move channels and read their history.
    #[command(subcommand)]
    Channel(channel::ChannelCmd),
    /// Apply one version's changes (against its parent) to the head of another channel.
    CherryPick(cherry_pick::Args),
    /// Re-hash every object reachable from every channel and report damage.
    Fsck(fsck::Args),
    /// Remove objects no channel reaches. Safe to interrupt.
    Gc(gc::Args),
    /// Write a version as a tar archive or a squashfs image.
    Export(export::Args),
    /// The boot artifacts of a version with a kernel: vmlinuz, an initrd made by the image's own
    /// initramfs-tools with semithin's boot script, root.squashfs, and manifest.json with their
    /// lengths and hashes (docs/BOOT.md, "Boot artifacts").
    BootArtifacts(boot_artifacts::Args),
    /// Live (diskless) boots: `live fetch` verifies and fetches a release's squashfs, as the
    /// initrd does (docs/BOOT.md, "Live and network boot").
    #[command(subcommand)]
    Live(live::LiveCmd),
    /// Grow the last partition of a GPT disk to the disk's end (the initramfs runs it at the
    /// first boot of a disk made by `image disk`; docs/BOOT.md).
    #[command(hide = true)]
    GrowPartition {
        /// The disk's device (`/dev/vda`).
        disk: PathBuf,
        /// The partition's number (1 for the first).
        number: u32,
        /// The disk's logical sector size in bytes.
        #[arg(long, default_value_t = 512)]
        sector_size: u64,
    },
    /// A TUF client with the command line of the tuf-conformance suite (init, refresh,
    /// download); exit code 0 on success, 1 on any failure.
    TufClient(tuf_client::Args),
    /// Keys and signed metadata of releases (The Update Framework): init, rotate, refresh,
    /// status.
    #[command(subcommand)]
    Trust(trust::TrustCmd),
    /// Release a version of a channel: sign it as the TUF target `channels/CHANNEL` (new
    /// targets, snapshot and timestamp metadata). Needs `semithin trust init` first; then
    /// the fleet is told when a server is configured.
    Publish(publish::Args),
    /// Run the server: serves releases and objects to machines, enrolls them, keeps their
    /// state (SQLite, a repository and trust metadata under --data, made on first start).
    Serve(serve::Args),
    /// Run the agent of a machine: enroll, pull the assigned release, verify, stage, switch,
    /// check health, roll back, report. Also `agent verify` and `agent status`.
    Agent(agent::Args),
    /// Run a relay for a site: a pull-through cache of releases (metadata, objects, delta
    /// packs, boot artifacts, apt's pool) for the machines under it, which forwards their
    /// enrollment, check-ins and reports upward; chains to any depth (docs/RELAY.md).
    Relay(relay::Args),
    /// The machines the server knows: list, show, label, accept, reject, assign, tokens.
    #[command(after_help = ADMIN_HELP)]
    Fleet(FleetArgs),
    /// Jobs for machines: apt (install, remove, update, upgrade, sources), reboot, signed
    /// commands; at a time or at every occurrence of a cron expression; every machine's result.
    #[command(after_help = ADMIN_HELP)]
    Job(JobArgs),
    /// Variables of machines' configuration templates, per scope (global, channel, label,
    /// machine), signed with the admin's key: set, unset, list, order.
    #[command(after_help = ADMIN_HELP)]
    Var(VarArgs),
    /// Machines' captures (`semithin agent capture`): list them, show what they hold, bake one
    /// into a layer channel after showing what it changes.
    #[command(after_help = ADMIN_HELP)]
    Overlay(OverlayArgs),
    /// Move a channel's machines to a release in waves: canary machines first, then
    /// percentages, each after the last is healthy and soaked, inside a window and a rate
    /// limit; halts by itself on failures. Also status, pause, resume, abort, rollback.
    #[command(after_help = ADMIN_HELP)]
    Rollout(RolloutArgs),
    /// Offline and air-gapped sites: `create` writes what machines need to reach a channel's
    /// release to removable media (imported with `agent import`), `sync` sends the reports
    /// they left there to the server.
    #[command(after_help = ADMIN_HELP)]
    Bundle(BundleArgs),
    /// Wake machines (a name, a label selector or `*`): they check in at once.
    #[command(after_help = ADMIN_HELP)]
    Push {
        /// The machines: a name, `key=value[,key=value...]` or `*`.
        selector: String,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: admin::ServerArgs,
    },
    /// Root filesystems from a package list: `image build PROFILE.toml` (mmdebstrap, packages,
    /// overlays, scripts; committed with the package changes), wizards that change a channel's
    /// packages (add, remove, upgrade, shell), and its packages (packages, diff --packages).
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Layered profiles: stacks of layers (a base image, then overlays, each a channel),
    /// composed with overlayfs semantics into the profile's channel; package layers are
    /// installed again over a new base. set, list, show, compose, tree, assign.
    #[command(subcommand, after_help = ADMIN_HELP)]
    Profile(profile::ProfileCmd),
    /// The first run of a new site: asks (or takes as flags) the server URL, the suite and the
    /// software, writes a profile, builds, commits and publishes the first release, and says
    /// what to do next.
    Init(init::Args),
    /// The whole story on this machine: a server on loopback, a sample image, N agents (each its
    /// own process) that enroll, get accepted and assigned, update to v1 and then to v2 — with
    /// live progress and a summary of what crossed the network.
    Demo(demo::Args),
    /// The server's audit log: every admin request that asked for a change, allowed or
    /// refused, with which admin token and user sent it, from where, and the machines named.
    #[command(after_help = ADMIN_HELP)]
    Audit(audit::Args),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell (for
    /// example `semithin completions bash > /etc/bash_completion.d/semithin`).
    Completions(completions::CompletionArgs),
    /// Write the manual pages of every command into a directory (the Debian package ships
    /// them).
    Manpages(completions::ManArgs),
}

#[derive(clap::Args)]
struct JobArgs {
    #[command(flatten)]
    server: admin::ServerArgs,
    #[command(subcommand)]
    cmd: job::JobCmd,
}

#[derive(clap::Args)]
struct BundleArgs {
    #[command(flatten)]
    server: admin::ServerArgs,
    #[command(subcommand)]
    cmd: bundle::BundleCmd,
}

#[derive(clap::Args)]
struct OverlayArgs {
    #[command(flatten)]
    server: admin::ServerArgs,
    #[command(subcommand)]
    cmd: overlay::OverlayCmd,
}

#[derive(clap::Args)]
struct VarArgs {
    #[command(flatten)]
    server: admin::ServerArgs,
    #[command(subcommand)]
    cmd: var::VarCmd,
}

#[derive(clap::Args)]
struct RolloutArgs {
    #[command(flatten)]
    server: admin::ServerArgs,
    #[command(subcommand)]
    cmd: rollout::RolloutCmd,
}

#[derive(clap::Args)]
struct FleetArgs {
    #[command(flatten)]
    server: admin::ServerArgs,
    #[command(subcommand)]
    cmd: fleet::FleetCmd,
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    // Read here rather than by clap, so that usage lines never show --repo as required.
    let repo = cli.repo.or_else(|| {
        std::env::var_os("SEMITHIN_REPO")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    match cli.command {
        Command::Repo(c) => repo::run(c),
        Command::Commit(a) => commit::run(open(repo, Access::Write)?, a),
        Command::Log(a) => history::log(&open(repo, Access::Read)?, a),
        Command::Show(a) => history::show(&open(repo, Access::Read)?, a),
        Command::Diff(a) => diff::run(&open(repo, Access::Read)?, a),
        Command::Delta(a) => delta::run(&open(repo, Access::Read)?, a),
        Command::ApplyDelta(a) => delta::apply(&open(repo, Access::Write)?, a),
        Command::Checkout(a) => checkout::run(&open(repo, Access::Read)?, a),
        Command::Channel(c) => channel::run(repo, c),
        Command::CherryPick(a) => cherry_pick::run(open(repo, Access::Write)?, a),
        Command::Fsck(a) => fsck::run(&open(repo, Access::Read)?, a),
        Command::Gc(a) => gc::run(&open(repo, Access::Write)?, a),
        Command::Export(a) => export::run(&open(repo, Access::Read)?, a),
        Command::BootArtifacts(a) => boot_artifacts::run(&open(repo, Access::Read)?, a),
        Command::GrowPartition {
            disk,
            number,
            sector_size,
        } => grow::run(&disk, number, sector_size),
        Command::TufClient(a) => tuf_client::run(a),
        Command::Live(c) => live::run(c),
        Command::Trust(c) => trust::run(repo, c),
        Command::Publish(a) => publish::run(open(repo, Access::Write)?, a),
        Command::Serve(a) => serve::run(a),
        Command::Agent(a) => agent::run(a),
        Command::Relay(a) => relay::run(a),
        Command::Fleet(f) => fleet::run(&f.server, f.cmd),
        Command::Job(j) => job::run(&j.server, j.cmd),
        Command::Var(v) => var::run(&v.server, v.cmd),
        Command::Overlay(o) => overlay::run(repo, &o.server, o.cmd),
        Command::Rollout(r) => rollout::run(repo, &r.server, r.cmd),
        Command::Bundle(b) => bundle::run(repo, &b.server, b.cmd),
        Command::Push {
            selector,
            json,
            server,
        } => fleet::push(&server, selector, json),
        Command::Image(c) => image::run(repo, c),
        Command::Profile(c) => profile::run(repo, c),
        Command::Init(a) => init::run(repo, a),
        Command::Demo(a) => demo::run(a),
        Command::Audit(a) => audit::run(a),
        Command::Completions(a) => completions::completions(a),
        Command::Manpages(a) => completions::manpages(a),
    }
}

fn open(repo: Option<PathBuf>, access: Access) -> Result<Repo> {
    let path = repo.context("no repository given: pass --repo PATH or set SEMITHIN_REPO")?;
    // `semithin serve --data DATA` keeps its repository in DATA/repo.
    if !path.join("config").exists() && path.join("repo/config").is_file() {
        bail!(
            "{} is a server's data directory, not a repository: its repository is {} \
             (pass --repo {0}/repo or set SEMITHIN_REPO to it)",
            path.display(),
            path.join("repo").display()
        );
    }
    let mut say = || {
        note!(
            "semithin: waiting for the repository {}: another process holds it{} \
             (a running agent holds its own store for as long as it runs)",
            path.display(),
            if access == Access::Write {
                ""
            } else {
                " for writing"
            }
        )
    };
    Ok(Repo::open_waiting(&path, access, &mut say)?)
}

/// A duration flag (`90s`, `30m`, `1h30m`, `2d 3h`, or seconds), as seconds: the one syntax of
/// every duration ([`semithin_protocol::duration`]).
fn duration(s: &str) -> std::result::Result<u64, String> {
    semithin_protocol::duration::parse(s).map_err(|e| e.to_string())
}

/// [`duration`] for a setting kept in 32 bits.
fn duration_u32(s: &str) -> std::result::Result<u32, String> {
    u32::try_from(duration(s)?).map_err(|_| format!("duration {s:?} is too long"))
}

/// Writes to stdout.
pub(crate) fn out(args: std::fmt::Arguments) -> std::io::Result<()> {
    use std::io::Write;
    std::io::stdout().lock().write_fmt(args)
}

/// Whether an error is a write into a pipe whose reader is gone (`| head`): the command stops
/// there, quietly, as other Unix tools do.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Prints a value as pretty JSON on stdout.
fn print_json(v: &impl serde::Serialize) -> Result<()> {
    outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Bytes for people: 1.5 MiB.
fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A commit time for people, in UTC.
fn time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_and_sizes() {
        assert_eq!(super::time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::time(1_795_305_600), "2026-11-22 00:00:00 UTC");
        assert_eq!(super::human(1536), "1.5 KiB");
        assert_eq!(super::human(12), "12 B");
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    /// Every command, flag and positional argument says what it is for (`--help` lists nothing
    /// bare), and no usage line shows a global flag as if it were required.
    #[test]
    fn every_command_and_argument_has_help() {
        use clap::CommandFactory;
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", c.get_name());
            if c.get_about().is_none() && !c.is_hide_set() {
                missing.push(format!("{path}: the command"));
            }
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") || a.is_hide_set() {
                    continue;
                }
                if a.get_help().is_none() {
                    missing.push(format!("{path}: {id}"));
                }
            }
            for s in c.get_subcommands() {
                walk(s, &path, missing);
            }
        }
        let mut cli = super::Cli::command();
        cli.build();
        let mut missing = Vec::new();
        walk(&cli, "", &mut missing);
        assert!(missing.is_empty(), "no help text:\n{}", missing.join("\n"));
    }
}
