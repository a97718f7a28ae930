//! `semithin trust ...`: the keys and metadata that sign releases, in The Update Framework's
//! format (docs/FORMAT.md, "Trust metadata").

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use semithin_protocol::trust::TrustHealth;
use semithin_store::{Access, Repo};
use semithin_trust::clock;
use semithin_trust::repo::{self as trust_repo, Role, TrustRepo, Written};

use super::admin::ServerArgs;
use super::{open, print_json};

#[derive(Subcommand)]
pub enum TrustCmd {
    /// Start signing releases: make the root key (written to --root-key, to be kept offline),
    /// the online targets, snapshot and timestamp keys (kept in REPO/trust/keys), and version 1
    /// of every role's metadata in REPO/trust/metadata.
    Init {
        /// Where to write the new root key; refused if the file exists. Repeat the option for
        /// several root keys (with --threshold).
        #[arg(long = "root-key", value_name = "FILE", required = true)]
        root_keys: Vec<PathBuf>,
        /// How many root keys must sign a new root.
        #[arg(long, default_value_t = 1)]
        threshold: u64,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Replace the key of a role and sign a new root (version N+1) with the old root key(s)
    /// and, for the root itself, the new one(s). An online role's metadata, and what depends on
    /// it, is signed again with the new key.
    Rotate {
        /// The role whose key is replaced.
        role: RoleArg,
        /// The current root key file (repeat up to the root threshold).
        #[arg(long = "root-key", value_name = "FILE", required = true)]
        root_keys: Vec<PathBuf>,
        /// For `rotate root`: where to write each new root key (refused if the file exists).
        #[arg(long = "new-root-key", value_name = "FILE")]
        new_root_keys: Vec<PathBuf>,
        /// For `rotate root`: how many new root keys must sign the next root (default: as
        /// before).
        #[arg(long)]
        threshold: Option<u64>,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Replace the key the server signs channel assignments with (REPO/trust/keys/
    /// assignments.key, docs/TRUST.md "Channel assignment"): a new key, a targets role that
    /// delegates assignments to it, and every assignment signed again. Needs the targets key,
    /// not the root key. Restart or wait for the server: it reads the key when it signs.
    RotateAssignments {
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Sign the timestamp again when less than half of its lifetime is left (and targets or
    /// snapshot likewise, and any online role not signed by its current key). Clients reject
    /// expired metadata: a running `semithin serve` renews snapshot and timestamp by itself,
    /// but not targets, which this (or a publish) must sign at least every 90 days.
    Refresh {
        /// Sign a new timestamp even if the current one is fresh.
        #[arg(long)]
        force: bool,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Show each role's version, expiry and keys, and the published channels; with a server
    /// configured (--server, SEMITHIN_SERVER, the admin config), also whether it keeps snapshot
    /// and timestamp fresh. Exits 1 when a role has expired (machines then verify no release)
    /// or the server reports a problem, naming it.
    Status {
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Root,
    Targets,
    Snapshot,
    Timestamp,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Root => Role::Root,
            RoleArg::Targets => Role::Targets,
            RoleArg::Snapshot => Role::Snapshot,
            RoleArg::Timestamp => Role::Timestamp,
        }
    }
}

/// The trust directory of a repository.
pub fn dir(repo: &Repo) -> PathBuf {
    repo.path().join(trust_repo::DIR_NAME)
}

/// Channels published as releases, with the commit each release names.
pub fn published(repo: &Repo) -> Result<Vec<(String, semithin_store::CommitId)>> {
    let d = dir(repo);
    if !d.exists() {
        return Ok(Vec::new());
    }
    let t = TrustRepo::open(&d)?;
    let mut out = Vec::new();
    for (target, info) in &t.targets().signed.targets {
        let Some(channel) = target.strip_prefix("channels/") else {
            continue;
        };
        let commit = info
            .custom
            .as_ref()
            .and_then(|c| c.get("commit"))
            .and_then(|c| c.as_str())
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("published target {target} names no commit"))?;
        out.push((channel.to_owned(), commit));
    }
    Ok(out)
}

/// Every release a channel's signed target names: its commit and, while a rollout holds machines
/// on or sends them back to earlier ones, the releases it allows. gc keeps all of them.
pub fn signed_commits(repo: &Repo) -> Result<Vec<semithin_store::CommitId>> {
    let d = dir(repo);
    if !d.exists() {
        return Ok(Vec::new());
    }
    let t = TrustRepo::open(&d)?;
    let mut out = Vec::new();
    for (target, info) in &t.targets().signed.targets {
        if !target.starts_with("channels/") {
            continue;
        }
        let r = semithin_trust::release::ChannelRelease::from_custom(info.custom.as_ref())
            .map_err(|e| anyhow::anyhow!("published target {target}: {e}"))?;
        for c in std::iter::once(&r.commit).chain(&r.allowed) {
            out.push(c.parse()?);
        }
    }
    Ok(out)
}

fn print_written(written: &[Written]) -> Result<()> {
    for w in written {
        outln!(
            "  {:<20} {:<9} version {:<5} expires {}",
            w.file,
            w.role,
            w.version,
            w.expires
        );
    }
    Ok(())
}

pub fn run(repo: Option<PathBuf>, cmd: TrustCmd) -> Result<ExitCode> {
    let now = clock::now();
    match cmd {
        TrustCmd::Init {
            root_keys,
            threshold,
            json,
        } => {
            let repo = open(repo, Access::Write)?;
            let r = trust_repo::init(&dir(&repo), &root_keys, threshold, now)?;
            if json {
                print_json(&r)?;
            } else {
                outln!("trust initialised in {}", r.dir.display());
                for k in &r.root_keys {
                    outln!("root key {} written to {}", k.keyid, k.file.display());
                }
                outln!(
                    "root threshold {}; keep the root key file(s) offline: `semithin trust rotate` \
                     needs them",
                    r.root_threshold
                );
                for k in &r.online_keys {
                    outln!("{} key {} in {}", k.role, k.keyid, k.file.display());
                }
                outln!(
                    "clients start from {}",
                    dir(&repo).join("metadata/1.root.json").display()
                );
            }
        }
        TrustCmd::Rotate {
            role,
            root_keys,
            new_root_keys,
            threshold,
            json,
        } => {
            let repo = open(repo, Access::Write)?;
            let mut t = TrustRepo::open(&dir(&repo))?;
            let r = t.rotate(role.into(), &root_keys, &new_root_keys, threshold, now)?;
            if json {
                print_json(&r)?;
            } else {
                outln!(
                    "{} key rotated: {} -> {} (threshold {})",
                    r.role,
                    r.old_keyids.join(", "),
                    r.new_keys
                        .iter()
                        .map(|k| k.keyid.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    r.threshold
                );
                for k in &r.new_keys {
                    outln!("new {} key in {}", k.role, k.file.display());
                }
                print_written(&r.written)?;
            }
        }
        TrustCmd::RotateAssignments { json } => {
            let repo = open(repo, Access::Write)?;
            let mut t = TrustRepo::open(&dir(&repo))?;
            let r = t.rotate_assignments_key(now)?;
            if json {
                print_json(&r)?;
            } else {
                outln!(
                    "assignments key rotated: {} bins signed again with the new key",
                    r.bins
                );
                print_written(&r.written)?;
            }
        }
        TrustCmd::Refresh { force, json } => {
            let repo = open(repo, Access::Write)?;
            let mut t = TrustRepo::open(&dir(&repo))?;
            let r = t.refresh(force, now)?;
            if json {
                print_json(&r)?;
            } else {
                if r.written.is_empty() {
                    outln!(
                        "nothing to do: timestamp version {} expires {}",
                        t.timestamp().signed.version,
                        t.timestamp().signed.expires
                    );
                } else {
                    for (role, why) in &r.reasons {
                        outln!("{role}: {why}");
                    }
                    outln!("signed:");
                    print_written(&r.written)?;
                }
                for w in &r.warnings {
                    note!("warning: {w}");
                }
            }
        }
        TrustCmd::Status { json, server } => {
            let repo = open(repo, Access::Read)?;
            let t = TrustRepo::open(&dir(&repo))?;
            let s = t.status(now);
            let health = server_health(&server);
            if json {
                // the status as before, with what expired and what the server says added
                let mut v = serde_json::to_value(&s)?;
                v["expired"] = serde_json::to_value(expired(&s))?;
                v["server"] = match &health {
                    Some(Ok(h)) => serde_json::to_value(h)?,
                    Some(Err(e)) => serde_json::json!({ "error": format!("{e:#}") }),
                    None => serde_json::Value::Null,
                };
                print_json(&v)?;
            } else {
                print_status(&dir(&repo), &s)?;
                match &health {
                    Some(Ok(h)) => print_health(h)?,
                    Some(Err(e)) => outln!("server: cannot ask it: {e:#}"),
                    None => {}
                }
            }
            let mut failed = false;
            for (role, expires) in expired(&s) {
                failed = true;
                note!(
                    "error: {role} expired at {expires}: machines verify no release until it is \
                     signed again ({})",
                    what_to_do(&role)
                );
            }
            if let Some(Ok(h)) = &health
                && !h.ok
            {
                failed = true;
                note!("error: the server reports a problem with the trust metadata (above)");
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The roles whose metadata has expired, with their expiry.
fn expired(s: &trust_repo::Status) -> Vec<(String, String)> {
    Role::ALL
        .into_iter()
        .filter_map(|r| s.roles.get(r.name()).map(|st| (r, st)))
        .filter(|(_, st)| st.expires_in <= 0)
        .map(|(r, st)| (r.name().to_owned(), st.expires.clone()))
        .collect()
}

fn what_to_do(role: &str) -> &'static str {
    match role {
        "root" => "sign a new root with `semithin trust rotate` and the offline root key",
        "targets" => "`semithin trust refresh` or a publish signs it with the targets key",
        _ => {
            "a running `semithin serve` renews it within a minute; else run `semithin trust \
             refresh`, and see `semithin serve`'s log for why it could not"
        }
    }
}

/// What the configured server says of its renewals (`None` without a server).
fn server_health(server: &ServerArgs) -> Option<Result<TrustHealth>> {
    if !server.configured() {
        return None;
    }
    Some(
        server
            .client()
            .and_then(|c| c.get("asking the server", "/api/v1/admin/trust")),
    )
}

fn print_health(h: &TrustHealth) -> Result<()> {
    let at = |t: Option<i64>| t.map_or("never".to_owned(), super::time);
    outln!(
        "server: renews snapshot and timestamp with less than {}% of their lifetime left; \
         looked {}, last renewal {}",
        (h.renew_left * 100.0).round(),
        at(h.checked_at),
        at(h.renewed_at)
    );
    for r in &h.renewed {
        outln!("  renewed {r}");
    }
    for p in &h.problems {
        outln!("server problem: {p}");
    }
    Ok(())
}

fn print_status(dir: &Path, s: &trust_repo::Status) -> Result<()> {
    outln!("trust metadata in {}", dir.display());
    for role in Role::ALL {
        let Some(r) = s.roles.get(role.name()) else {
            continue;
        };
        let left = if r.expires_in <= 0 {
            "EXPIRED".to_owned()
        } else {
            format!("in {}", trust_repo::format_duration_rounded(r.expires_in))
        };
        outln!(
            "{:<9} version {:<5} expires {} ({left}){}  keys {} (threshold {})",
            role.name(),
            r.version,
            r.expires,
            if r.signed { "" } else { "  NOT VALIDLY SIGNED" },
            r.keyids
                .iter()
                .map(|k| semithin_protocol::ids::short_str(k))
                .collect::<Vec<_>>()
                .join(", "),
            r.threshold
        );
    }
    if s.targets.is_empty() {
        outln!("no channel published yet: `semithin publish CHANNEL`");
    }
    for t in &s.targets {
        let c = t.custom.as_ref();
        let commit = c
            .and_then(|c| c["commit"].as_str())
            .map_or("-".to_owned(), |h| {
                semithin_protocol::ids::short_str(h).to_owned()
            });
        let published = c
            .and_then(|c| c["published"].as_i64())
            .map_or("-".to_owned(), super::time);
        outln!("{:<30} {commit}  published {published}", t.target);
    }
    for w in &s.warnings {
        outln!("warning: {w}");
    }
    Ok(())
}
