//! `semithin rollout`: move a channel's machines to a release wave by wave (start, status,
//! pause, resume, abort, rollback). `start` signs the release the way `publish` does, allowing
//! the releases the machines run now, so it runs where the repository and its keys are.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use semithin_protocol::rollout::{RolloutInfo, RolloutState, StartRequest, WaveInfo};
use semithin_protocol::selector::Selector;
use semithin_store::{Access, channel, refs};
use semithin_trust::release::ChannelRelease;
use serde_json::json;

use super::admin::{AdminClient, ServerArgs};
use super::fleet::ago;
use super::{print_json, time};

#[derive(Subcommand)]
pub enum RolloutCmd {
    /// Roll REF out to the machines of CHANNEL that SELECTOR picks: canary machines first, then
    /// waves, each once the one before is healthy and has soaked; halts by itself when failures
    /// pass --max-failures. Signs REF as the channel's release (like `publish`), allowing the
    /// releases the machines run now, so that those not admitted yet keep theirs and abort or
    /// rollback can send them back. Machines of the channel outside SELECTOR keep their release.
    Start(Box<StartArgs>),
    /// Where rollouts are: per wave and per machine. Without ID, every active rollout (and a
    /// list of the recent ones).
    Status {
        /// The rollout's id (as `start` printed it).
        id: Option<i64>,
        /// Print JSON (for scripts): one rollout, or the list without ID.
        #[arg(long)]
        json: bool,
    },
    /// Stop admitting machines; admitted machines that have not switched yet stay where they
    /// are.
    Pause {
        /// The rollout's id.
        id: i64,
        /// Print the rollout as JSON afterwards.
        #[arg(long)]
        json: bool,
    },
    /// Go on after a pause or a halt; the failures so far are accepted (they stop counting
    /// against --max-failures; a failed machine tries the release again only after `semithin
    /// agent retry` on it).
    Resume {
        /// The rollout's id.
        id: i64,
        /// Print the rollout as JSON afterwards.
        #[arg(long)]
        json: bool,
    },
    /// Stop the rollout: the machines it admitted go back to the release they ran when it
    /// started; the others stay there. The channel's release is signed back to the one it had
    /// before the rollout (so it needs the repository and its keys, like `start`): machines
    /// that join the channel afterwards get that one. Run it again to finish a signature that
    /// failed.
    Abort {
        /// The rollout's id.
        id: i64,
        /// Print the rollout as JSON afterwards.
        #[arg(long)]
        json: bool,
    },
    /// Send every machine of the rollout back to the release it ran when the rollout started,
    /// also after it completed; the channel's release is signed back to the one it had before
    /// the rollout, as for abort.
    Rollback {
        /// The rollout's id.
        id: i64,
        /// Print the rollout as JSON afterwards.
        #[arg(long)]
        json: bool,
    },
    /// Rollouts and publishes planned on the dashboard (or through the API) that await the
    /// signature of an admin who holds the targets key, and those signed since: newest first.
    Pending {
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Sign a planned rollout: shows what it starts and asks, then the server starts it (if
    /// nothing started it yet and its channel's release has not moved since it was planned) and
    /// its release is signed as by `start`, so it runs where the repository and its keys are.
    Sign {
        /// The request's id (as the dashboard and `rollout pending` show it).
        id: i64,
        /// Sign without asking.
        #[arg(long)]
        yes: bool,
        /// Print the rollout as JSON afterwards.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct StartArgs {
    /// The channel whose machines move, e.g. `lab/stable`.
    channel: String,
    /// The version to roll out: it must be one the channel has pointed at (or an ancestor of
    /// one), as for `publish`.
    reference: String,
    /// The machines to move, among the accepted machines that follow CHANNEL: a name,
    /// `key=value[,key=value...]` or `*`.
    #[arg(long, value_name = "SELECTOR")]
    to: String,
    /// Canary machines, updated first: a count (chosen by a stable hash of the release and the
    /// names) or comma-separated names.
    #[arg(long, value_name = "N|NAMES", default_value = "1")]
    canary: String,
    /// Cumulative percentages of the other machines, one per wave; the last must be 100%.
    #[arg(long, value_name = "PERCENTS", default_value = "100%")]
    waves: String,
    /// How long a wave must stay healthy before the next one starts (and before the rollout
    /// completes): 90s, 30m, 2h, 1h30m.
    #[arg(long, value_name = "DURATION", default_value = "0s")]
    soak: String,
    /// The rollout halts when more machines fail than this: a percentage of the machines
    /// admitted so far (5%) or a count (3). 0: the first failure halts it.
    #[arg(long, value_name = "N|PERCENT", default_value = "0")]
    max_failures: String,
    /// Admit machines (and let them start) only inside this window, e.g. "Mon-Fri
    /// 18:00-06:00"; a span that ends before it starts crosses midnight and belongs to the day
    /// it starts; several spans separated by `;` [default: always].
    #[arg(long, value_name = "DAYS HH:MM-HH:MM")]
    window: Option<String>,
    /// The time zone of --window, an IANA name such as Europe/Madrid [default: UTC].
    #[arg(long, value_name = "ZONE")]
    tz: Option<String>,
    /// Admit at most N machines in any hour (rolling) [default: no limit].
    #[arg(long, value_name = "N")]
    max_per_hour: Option<u32>,
    /// Show the plan (waves and machines) and change nothing: nothing is signed or stored.
    #[arg(long)]
    dry_run: bool,
    /// Print the rollout as JSON (for scripts).
    #[arg(long)]
    json: bool,
}

mod sign;
pub(super) use sign::ask;

use super::safe::safe;
use semithin_protocol::ids::short_str as short;

fn opt_short(s: &Option<String>) -> String {
    s.as_deref()
        .map(|s| short(s).to_owned())
        .unwrap_or_else(|| "-".into())
}

fn percent(v: u32) -> String {
    semithin_server::rollout::spec::format_percent(v)
}

pub fn run(repo: Option<PathBuf>, server: &ServerArgs, cmd: RolloutCmd) -> Result<ExitCode> {
    match cmd {
        RolloutCmd::Start(a) => start(repo, server, *a),
        RolloutCmd::Status { id, json } => status(&server.client()?, id, json),
        RolloutCmd::Pause { id, json } => command(server, id, "pause", json),
        RolloutCmd::Resume { id, json } => command(server, id, "resume", json),
        RolloutCmd::Abort { id, json } => undo(repo, server, id, "abort", json),
        RolloutCmd::Rollback { id, json } => undo(repo, server, id, "rollback", json),
        RolloutCmd::Pending { json } => sign::pending(server, json),
        RolloutCmd::Sign { id, yes, json } => sign::sign(repo, server, id, yes, json),
    }
}

fn start(repo: Option<PathBuf>, server: &ServerArgs, a: StartArgs) -> Result<ExitCode> {
    let name = &a.channel;
    Selector::parse(&a.to)?;
    let id = release_on_channel(repo.clone(), name, &a.reference)?;
    let client = server.client()?;
    let req = StartRequest {
        channel: name.clone(),
        release: id.to_hex(),
        selector: a.to.clone(),
        canary: Some(a.canary.clone()),
        waves: Some(a.waves.clone()),
        soak: Some(a.soak.clone()),
        max_failures: Some(a.max_failures.clone()),
        window: a.window.clone(),
        tz: a.tz.clone(),
        max_per_hour: a.max_per_hour,
        dry_run: a.dry_run,
    };
    let made: RolloutInfo = client.post("starting the rollout", "/api/v1/admin/rollouts", &req)?;
    if a.dry_run {
        if a.json {
            print_json(&made)?;
        } else {
            outln!("dry run: nothing signed, nothing stored");
            print_info(&made)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    sign_started(repo, server, made, a.json)
}

/// The commit REF names, checked to be one CHANNEL has pointed at (as `publish` wants).
fn release_on_channel(
    repo: Option<PathBuf>,
    name: &str,
    reference: &str,
) -> Result<semithin_store::CommitId> {
    channel::check_name(name)?;
    // Read under a shared lock, let go before the server is asked (it reads the repository
    // too when the version is new to it); the write lock is taken for signing only.
    let read = super::open(repo.clone(), Access::Read)?;
    if channel::head(&read, name)?.is_none() {
        let names = channel::list(&read)?;
        let hint = semithin_protocol::near::did_you_mean(name, names.iter().map(String::as_str));
        bail!(
            "no channel named {name:?}{hint}; the channels are: {}",
            if names.is_empty() {
                "none yet".to_owned()
            } else {
                names.join(", ")
            }
        );
    }
    let id = refs::resolve(&read, reference)?;
    if !super::publish::on_channel(&read, name, id)? {
        // A version that is on a channel with a near name: the channel is probably misspelt.
        let mut meant = Vec::new();
        for other in channel::list(&read)? {
            if other != name && super::publish::on_channel(&read, &other, id)? {
                meant.push(other);
            }
        }
        let near = semithin_protocol::near::near(name, meant.iter().map(String::as_str));
        if !near.is_empty() {
            bail!(
                "{} ({}) has never been on channel {name}, but it is on {}: did you mean {}?",
                reference,
                id.short(),
                near.join(", "),
                near.join(" or ")
            );
        }
        bail!(
            "{} ({}) has never been on channel {name}: move the channel there first \
             (`semithin channel set {name} {}`)",
            reference,
            id.short(),
            reference
        );
    }
    Ok(id)
}

/// Signs the release of rollout `made`, which the server started and keeps `publishing` until
/// the signature is there, and tells the server; aborts it when signing fails.
fn sign_started(
    repo: Option<PathBuf>,
    server: &ServerArgs,
    made: RolloutInfo,
    json: bool,
) -> Result<ExitCode> {
    let client = server.client()?;
    let name = &made.channel.clone();
    let to = made.selector.clone();
    let id: semithin_store::CommitId = made
        .release
        .parse()
        .with_context(|| format!("the server named release {:?}", made.release))?;
    let rid = made.id;
    let repo = super::open(repo, Access::Write)?;
    let release = ChannelRelease {
        commit: id.to_hex(),
        allowed: made.allowed.clone(),
        rollout: Some(made.uid.clone()),
    };
    if let Err(e) = super::publish::sign_release(&repo, name, id, &release) {
        let undone = client
            .post::<RolloutInfo>(
                "aborting the rollout",
                &format!("/api/v1/admin/rollouts/{rid}/abort"),
                &json!({}),
            )
            .map(|_| format!("rollout {rid} was aborted"))
            .unwrap_or_else(|e2| format!("aborting rollout {rid} failed too: {e2:#}"));
        return Err(e.context(format!(
            "signing release {} for rollout {rid} failed; nothing was published ({undone})",
            id.short()
        )));
    }
    // The server reads the repository under a shared lock: ours goes first.
    drop(repo);
    super::publish::tell_server(server, true)?;
    let info: RolloutInfo = client
        .get(
            "reading the rollout",
            &format!("/api/v1/admin/rollouts/{rid}"),
        )
        .unwrap_or(made);
    if json {
        print_json(&info)?;
    } else {
        outln!(
            "rollout {rid}: {name} to {} for {to} (signed, allowing {} earlier release(s))",
            id.short(),
            info.allowed.len()
        );
        print_info(&info)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn command(server: &ServerArgs, id: i64, verb: &str, json: bool) -> Result<ExitCode> {
    let c = server.client()?;
    let info: RolloutInfo = c.post(
        &format!("rollout {verb}"),
        &format!("/api/v1/admin/rollouts/{id}/{verb}"),
        &json!({}),
    )?;
    if json {
        print_json(&info)?;
    } else {
        outln!("rollout {id} is {} now", info.state.as_str());
        print_info(&info)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Abort or rollback: the server sends the machines back, then the channel's release is signed
/// back to what it was before the rollout ([`restore`]), so that machines that join the
/// channel later do not get the release given up. A rollout the server has aborted (rolled
/// back) already is only restored: running the command again finishes a restore that failed.
fn undo(
    repo: Option<PathBuf>,
    server: &ServerArgs,
    id: i64,
    verb: &str,
    json: bool,
) -> Result<ExitCode> {
    let c = server.client()?;
    let done = if verb == "abort" {
        RolloutState::Aborted
    } else {
        RolloutState::RolledBack
    };
    let now: RolloutInfo = c.get(
        "reading the rollout",
        &format!("/api/v1/admin/rollouts/{id}"),
    )?;
    let info: RolloutInfo = if now.state == done {
        now
    } else {
        c.post(
            &format!("rollout {verb}"),
            &format!("/api/v1/admin/rollouts/{id}/{verb}"),
            &json!({}),
        )?
    };
    let restored = restore(repo, &info);
    if let Ok(Restored::Signed(_)) = &restored {
        super::publish::tell_server(server, true)?;
    }
    let info: RolloutInfo = c
        .get(
            "reading the rollout",
            &format!("/api/v1/admin/rollouts/{id}"),
        )
        .unwrap_or(info);
    if json {
        print_json(&info)?;
    } else {
        outln!("rollout {id} is {} now", info.state.as_str());
    }
    let ch = &info.channel;
    let said = match restored {
        Ok(Restored::Signed(r)) => format!(
            "channel {ch} is signed at {} again, its release before rollout {id}",
            short(&r)
        ),
        Ok(Restored::Already(r)) => format!(
            "channel {ch} is signed at {} already (its release before rollout {id})",
            short(&r)
        ),
        Ok(Restored::Moved) => format!(
            "channel {ch} was signed again since rollout {id} (or its release never was): \
             its signed release stays"
        ),
        Ok(Restored::NoEarlier) => {
            note!(
                "warning: channel {ch} had no release before rollout {id}: its signed release \
                 stays {}, which machines that join it get; publish the one they should get \
                 (`semithin publish {ch} REF`)",
                short(&info.release)
            );
            String::new()
        }
        Err(e) => {
            if !json {
                print_info(&info)?;
            }
            return Err(e.context(format!(
                "rollout {id} is {}, but channel {ch} still signs release {}: machines assigned \
                 to it get that release at once. Run `semithin rollout {verb} {id}` again where \
                 the repository and its keys are (--repo) to sign its earlier release back",
                info.state.as_str(),
                short(&info.release)
            )));
        }
    };
    if json {
        if !said.is_empty() {
            note!("{said}");
        }
    } else {
        if !said.is_empty() {
            outln!("{said}");
        }
        print_info(&info)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What [`restore`] did.
enum Restored {
    /// The channel's earlier release was signed (it is this one).
    Signed(String),
    /// The channel's signature already names its earlier release (this one).
    Already(String),
    /// The channel's signature does not name the rollout (a publish or another rollout since,
    /// or the rollout was never signed): nothing to restore.
    Moved,
    /// The channel had no release before the rollout.
    NoEarlier,
}

/// Signs channel `info.channel` back to the release it had before rollout `info`, while the
/// rollout's signature is the channel's: with the rollout's uid (it still governs the
/// channel, so its machines are told what abort and rollback say) and every release its
/// machines ran (`from`), allowed.
fn restore(repo: Option<PathBuf>, info: &RolloutInfo) -> Result<Restored> {
    let repo = super::open(repo, Access::Write)?;
    let dir = super::trust::dir(&repo);
    let t = semithin_trust::repo::TrustRepo::open(&dir)?;
    let target = format!("channels/{}", info.channel);
    let signed = match t.targets().signed.targets.get(&target) {
        Some(i) => ChannelRelease::from_custom(i.custom.as_ref())
            .map_err(|e| anyhow::anyhow!("the signed target {target}: {e}"))?,
        None => return Ok(Restored::Moved),
    };
    if signed.rollout.as_deref() != Some(info.uid.as_str()) {
        return Ok(Restored::Moved);
    }
    if signed.commit != info.release {
        return Ok(Restored::Already(signed.commit));
    }
    let Some(before) = release_before(&dir, &info.channel, &info.uid)? else {
        return Ok(Restored::NoEarlier);
    };
    drop(t);
    let id = before
        .parse()
        .map_err(|_| anyhow::anyhow!("{before:?} in the signed history is not a commit id"))?;
    let release = ChannelRelease {
        commit: before.clone(),
        allowed: info
            .machines
            .iter()
            .filter_map(|m| m.from.clone())
            .collect(),
        rollout: Some(info.uid.clone()),
    };
    super::publish::sign_release(&repo, &info.channel, id, &release)?;
    Ok(Restored::Signed(before))
}

/// The release channel `channel` had before rollout `uid` was signed: the newest targets
/// version on disk whose target of the channel does not name the rollout (`None`: the channel
/// had no target then).
fn release_before(dir: &std::path::Path, channel: &str, uid: &str) -> Result<Option<String>> {
    let meta = dir.join("metadata");
    let mut versions = Vec::new();
    for e in std::fs::read_dir(&meta).with_context(|| format!("listing {}", meta.display()))? {
        let e = e.with_context(|| format!("listing {}", meta.display()))?;
        let name = e.file_name();
        if let Some(v) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".targets.json"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            versions.push(v);
        }
    }
    versions.sort_unstable_by(|a, b| b.cmp(a));
    let target = format!("channels/{channel}");
    for v in versions {
        let path = meta.join(format!("{v}.targets.json"));
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let doc: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let Some(custom) = doc["signed"]["targets"].get(&target).map(|t| &t["custom"]) else {
            return Ok(None);
        };
        let r = ChannelRelease::from_custom(Some(custom))
            .map_err(|e| anyhow::anyhow!("{target} in {}: {e}", path.display()))?;
        if r.rollout.as_deref() != Some(uid) {
            return Ok(Some(r.commit));
        }
    }
    Ok(None)
}

fn status(c: &AdminClient, id: Option<i64>, json: bool) -> Result<ExitCode> {
    if let Some(id) = id {
        let info: RolloutInfo = c.get(
            "reading the rollout",
            &format!("/api/v1/admin/rollouts/{id}"),
        )?;
        if json {
            print_json(&info)?;
        } else {
            print_info(&info)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let list: Vec<RolloutInfo> = c.get("listing rollouts", "/api/v1/admin/rollouts")?;
    if json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        outln!("no rollouts yet: `semithin rollout start CHANNEL REF --to SELECTOR`");
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<5} {:<16} {:<12} {:<12} {:<20} STARTED",
        "ID",
        "CHANNEL",
        "RELEASE",
        "STATE",
        "SELECTOR"
    );
    for r in &list {
        outln!(
            "{:<5} {:<16} {:<12} {:<12} {:<20} {}",
            r.id,
            safe(&r.channel),
            short(&r.release),
            r.state.as_str(),
            safe(&r.selector),
            time(r.created_at)
        );
    }
    for r in list.iter().filter(|r| r.state.is_active()) {
        let info: RolloutInfo = c.get(
            "reading the rollout",
            &format!("/api/v1/admin/rollouts/{}", r.id),
        )?;
        outln!();
        print_info(&info)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A wave's state in words: never "healthy" when a machine of it failed.
fn wave_state(w: &WaveInfo, now: i64) -> String {
    if w.machines == 0 {
        return "empty".into();
    }
    let failed = match w.failed {
        0 => None,
        n if n == w.machines => Some("failed".to_owned()),
        n => Some(format!("{n} failed")),
    };
    match (w.soak_until, failed) {
        (Some(_), Some(f)) if w.failed == w.machines => f,
        (Some(until), f) => {
            let how = f.unwrap_or_else(|| "healthy".into());
            if until > now {
                format!("{how}, soaking {} s more", until - now)
            } else {
                format!("{how}, soaked")
            }
        }
        (None, _) if w.admitted == 0 => "waiting".into(),
        (None, Some(f)) => format!("updating, {f}"),
        (None, None) => "updating".into(),
    }
}

fn print_info(r: &RolloutInfo) -> Result<()> {
    let title = if r.id == 0 {
        "rollout (plan)".to_owned()
    } else {
        format!("rollout {}", r.id)
    };
    outln!(
        "{title} on {}: {}",
        r.channel,
        match r.state {
            RolloutState::Publishing if r.id == 0 => "not made",
            s => s.as_str(),
        }
    );
    outln!("  release    {}", r.release);
    outln!("  selector   {}", r.selector);
    let p = &r.plan;
    let mut plan = format!(
        "canary {}, waves {}, soak {} s, max failures {}",
        p.canary,
        p.waves
            .iter()
            .map(|w| percent(*w))
            .collect::<Vec<_>>()
            .join(","),
        p.soak_secs,
        p.max_failures
    );
    if let Some(w) = &p.window {
        plan.push_str(&format!(
            ", window {w:?} {}",
            p.tz.as_deref().unwrap_or("UTC")
        ));
    }
    if let Some(n) = p.max_per_hour {
        plan.push_str(&format!(", at most {n} an hour"));
    }
    outln!("  plan       {plan}");
    if !r.allowed.is_empty() {
        let list: Vec<&str> = r.allowed.iter().map(|a| short(a)).collect();
        outln!("  allowed    {}", list.join(", "));
    }
    if let Some(w) = &r.waiting {
        outln!("  now        {}", safe(w));
    }
    if let Some(why) = &r.reason {
        outln!("  reason     {}", safe(why));
    }
    let counts: Vec<String> = r.counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    if !counts.is_empty() {
        outln!("  machines   {}", counts.join(", "));
    }
    outln!(
        "  {:<8} {:>8} {:>8} {:>8} {:>7}  STATE",
        "WAVE",
        "MACHINES",
        "ADMITTED",
        "UPDATED",
        "FAILED"
    );
    let now = semithin_server::now();
    for w in &r.waves {
        let state = wave_state(w, now);
        let name = match w.percent {
            Some(p) => format!("{} ({})", w.name, percent(p)),
            None => w.name.clone(),
        };
        outln!(
            "  {:<8} {:>8} {:>8} {:>8} {:>7}  {state}",
            name,
            w.machines,
            w.admitted,
            w.updated,
            w.failed
        );
    }
    if r.machines.is_empty() {
        return Ok(());
    }
    outln!(
        "  {:<16} {:<7} {:<17} {:<12} {:<12} {:<12} {:<9} {:<9} LAST ERROR",
        "NAME",
        "WAVE",
        "STATE",
        "FROM",
        "TOLD",
        "CURRENT",
        "HEALTH",
        "SEEN"
    );
    for m in &r.machines {
        let wave = match m.wave {
            None => "-".to_owned(),
            Some(0) => "canary".to_owned(),
            Some(w) => w.to_string(),
        };
        let seen = if m.offline {
            format!("{} (offline)", ago(m.last_seen))
        } else {
            ago(m.last_seen)
        };
        let err: String = m
            .last_error
            .as_deref()
            .unwrap_or("")
            .chars()
            .take(80)
            .collect();
        let err = safe(&err);
        outln!(
            "  {:<16} {:<7} {:<17} {:<12} {:<12} {:<12} {:<9} {:<9} {err}",
            safe(&m.name),
            wave,
            m.state.as_str(),
            opt_short(&m.from),
            opt_short(&m.told),
            opt_short(&m.current),
            format!("{:?}", m.health).to_lowercase(),
            seen
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_rollout_command_and_flag_says_what_it_does() {
        use clap::CommandFactory;
        let cli = super::super::Cli::command();
        let r = cli.find_subcommand("rollout").expect("rollout");
        assert!(r.get_about().is_some());
        let subs: Vec<&str> = r.get_subcommands().map(|s| s.get_name()).collect();
        assert_eq!(
            subs,
            [
                "start", "status", "pause", "resume", "abort", "rollback", "pending", "sign"
            ]
        );
        for sub in r.get_subcommands() {
            assert!(sub.get_about().is_some(), "{}", sub.get_name());
            for a in sub.get_arguments() {
                assert!(
                    a.get_help().is_some(),
                    "rollout {} {} has no help",
                    sub.get_name(),
                    a.get_id()
                );
            }
        }
        assert_eq!(super::percent(250), "2.5%");
        assert_eq!(super::percent(5000), "50%");
    }

    #[test]
    fn a_wave_with_a_failure_is_never_called_healthy() {
        let wave = |machines, admitted, updated, failed, soak_until| super::WaveInfo {
            index: 0,
            name: "canary".into(),
            percent: None,
            machines,
            admitted,
            updated,
            failed,
            healthy_at: soak_until,
            soak_until,
        };
        let st = |w| super::wave_state(&w, 1000);
        assert_eq!(st(wave(0, 0, 0, 0, None)), "empty");
        assert_eq!(st(wave(2, 0, 0, 0, None)), "waiting");
        assert_eq!(st(wave(2, 2, 1, 0, None)), "updating");
        assert_eq!(st(wave(2, 2, 0, 1, None)), "updating, 1 failed");
        assert_eq!(
            st(wave(2, 2, 2, 0, Some(1030))),
            "healthy, soaking 30 s more"
        );
        assert_eq!(st(wave(2, 2, 2, 0, Some(900))), "healthy, soaked");
        // a canary that failed within --max-failures: its soak passed, but it failed
        assert_eq!(st(wave(1, 1, 0, 1, Some(900))), "failed");
        assert_eq!(st(wave(1, 1, 0, 1, Some(1030))), "failed");
        assert_eq!(st(wave(3, 3, 2, 1, Some(900))), "1 failed, soaked");
        assert_eq!(
            st(wave(3, 3, 2, 1, Some(1030))),
            "1 failed, soaking 30 s more"
        );
    }
}
