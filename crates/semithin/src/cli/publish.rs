//! `semithin publish CHANNEL [REF]`: release a version of a channel as a signed TUF target.

use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use semithin_store::pack::ObjKind;
use semithin_store::{CommitId, Repo, channel, refs};
use semithin_trust::clock;
use semithin_trust::metadata::TargetFile;
use semithin_trust::release::ChannelRelease;
use semithin_trust::repo::TrustRepo;
use serde_json::json;

use semithin_protocol::api::Affected;
use semithin_protocol::rollout::RolloutInfo;
use semithin_trust::repo::PublishReport;

use super::admin::ServerArgs;
use super::print_json;
use super::publish_boot::{self, BootMode};

#[derive(clap::Args)]
pub struct Args {
    /// The channel to release, e.g. `lab/stable`. Its release is the TUF target
    /// `channels/CHANNEL`.
    #[arg(required_unless_present = "request")]
    channel: Option<String>,
    /// The version to release (default: the channel's head). It must be one the channel has
    /// pointed at, or an ancestor of one, so that gc keeps it; publishing an older version is a
    /// rollback.
    reference: Option<String>,
    /// Sign a publish planned on the dashboard (or through the API) instead: shows what it
    /// publishes and asks, then publishes it if the channel has not moved since it was planned
    /// (`semithin rollout pending` lists the requests).
    #[arg(long, value_name = "ID", conflicts_with_all = ["channel", "reference"])]
    request: Option<i64>,
    /// With --request: sign without asking.
    #[arg(long, requires = "request")]
    yes: bool,
    /// Print the result as JSON (for scripts).
    #[arg(long)]
    json: bool,
    /// Publish even while a rollout is active on the channel (the publish ends it: every
    /// machine of the channel follows the new release at once).
    #[arg(long)]
    force: bool,
    /// Make the release's boot artifacts (kernel, initrd, squashfs: docs/BOOT.md) and sign them
    /// as the targets `boot/RELEASE/NAME`: `auto` when the release has a kernel, `always`
    /// (a release without one is refused), or `never`. Made once per release.
    #[arg(long, value_enum, default_value_t = BootMode::Auto)]
    boot: BootMode,
    #[command(flatten)]
    server: ServerArgs,
}

/// Refuses to publish over an active rollout of the channel, when the server says there is one
/// (a server that cannot be asked does not stop the publish).
fn check_rollouts(a: &Args, name: &str) -> Result<()> {
    if a.force || !a.server.configured() {
        return Ok(());
    }
    let Ok(c) = a.server.client() else {
        return Ok(());
    };
    let path = format!(
        "/api/v1/admin/rollouts?channel={}",
        super::fleet::urlencode(name)
    );
    let Ok(list) = c.get::<Vec<RolloutInfo>>("listing rollouts", &path) else {
        return Ok(());
    };
    if let Some(r) = list.iter().find(|r| r.state.is_active()) {
        bail!(
            "rollout {} is {} on channel {}: publishing now would move every machine of the \
             channel at once; `semithin rollout abort {}` first, or pass --force",
            r.id,
            r.state.as_str(),
            name,
            r.id
        );
    }
    Ok(())
}

/// Whether `id` is a version `name` pointed at or an ancestor of one.
pub(crate) fn on_channel(repo: &Repo, name: &str, id: CommitId) -> Result<bool> {
    let mut seen = HashSet::new();
    for m in channel::history(repo, name)? {
        let mut next = Some(m.commit.0);
        while let Some(c) = next {
            if c == id {
                return Ok(true);
            }
            if !seen.insert(c) {
                break;
            }
            next = repo.objects.get_commit(&c)?.parent;
        }
    }
    Ok(false)
}

/// Signs `id` as the release of channel `name`.
pub fn sign(repo: &Repo, name: &str, id: CommitId) -> Result<PublishReport> {
    sign_release(repo, name, id, &ChannelRelease::new(&id.to_hex()))
}

/// Signs `id` as the release of channel `name`, with its boot artifacts (`boot`: the targets
/// [`publish_boot::artifacts`] gives) in the same targets version.
pub fn sign_with_boot(
    repo: &Repo,
    name: &str,
    id: CommitId,
    boot: BTreeMap<String, TargetFile>,
) -> Result<PublishReport> {
    let bytes = repo
        .objects
        .get(ObjKind::Commit, id.as_bytes())
        .with_context(|| format!("reading commit {id}"))?;
    let now = clock::now();
    let mut t = TrustRepo::open(&super::trust::dir(repo))?;
    Ok(t.publish_release_with(name, &bytes, &ChannelRelease::new(&id.to_hex()), boot, now)?)
}

/// Signs `release` (whose commit is `id`) as the target of channel `name`: with a rollout, the
/// releases it allows besides `id` (docs/TRUST.md, "Rollouts").
pub fn sign_release(
    repo: &Repo,
    name: &str,
    id: CommitId,
    release: &ChannelRelease,
) -> Result<PublishReport> {
    let bytes = repo
        .objects
        .get(ObjKind::Commit, id.as_bytes())
        .with_context(|| format!("reading commit {id}"))?;
    let now = clock::now();
    let mut t = TrustRepo::open(&super::trust::dir(repo))?;
    Ok(t.publish_release(name, &bytes, release, now)?)
}

/// Tells the server (when one is configured) so it wakes the channel's machines at once.
pub(crate) fn tell_server(server: &ServerArgs, json: bool) -> Result<()> {
    if !server.configured() {
        if !json {
            note!(
                "no server configured (--server, SEMITHIN_SERVER): a server on this repository \
                 notices the release within seconds by itself"
            );
        }
        return Ok(());
    }
    match server.client().and_then(|c| {
        c.post::<Affected>("telling the server", "/api/v1/admin/published", &json!({}))
    }) {
        Ok(a) if !json => note!("the server woke {} machine(s)", a.machines.len()),
        Ok(_) => {}
        Err(e) => {
            note!("warning: published, but {e:#}; the server notices within seconds by itself")
        }
    }
    Ok(())
}

pub fn run(repo: Repo, a: Args) -> Result<ExitCode> {
    if let Some(id) = a.request {
        return from_request(repo, &a, id);
    }
    let name = a.channel.clone().context("name the channel to publish")?;
    check_rollouts(&a, &name)?;
    publish(&repo, &a, &name, a.reference.as_deref())?;
    // The server reads the repository under a shared lock: ours goes first.
    drop(repo);
    tell_server(&a.server, a.json)?;
    Ok(ExitCode::SUCCESS)
}

/// `publish --request ID`: a publish planned on the dashboard, signed here.
fn from_request(repo: Repo, a: &Args, id: i64) -> Result<ExitCode> {
    use semithin_protocol::rollout::PendingInfo;
    use std::io::IsTerminal;
    let c = a.server.client()?;
    let p: PendingInfo = c.get(
        "reading the publish request",
        &format!("/api/v1/admin/pending/{id}"),
    )?;
    if p.kind != "publish" {
        bail!("request {id} is a rollout: `semithin rollout sign {id}` signs it");
    }
    if p.state != "awaiting" {
        bail!("request {id} was signed already");
    }
    if let Some(why) = &p.stale {
        bail!("{}", super::safe::safe(why));
    }
    let name = p.request.channel.clone();
    note!(
        "request {id}: publish {} as channel {}'s release (it is at {} now), planned {}",
        semithin_protocol::ids::short_str(&p.request.release),
        super::safe::safe(&name),
        p.base
            .as_deref()
            .map(semithin_protocol::ids::short_str)
            .unwrap_or("nothing"),
        super::time(p.created_at)
    );
    if !a.yes {
        if !std::io::stdin().is_terminal() {
            bail!("not asking without a terminal: pass --yes to sign request {id}");
        }
        if !super::rollout::ask("sign it and publish? [y/N] ")? {
            bail!("not signed: nothing changed");
        }
    }
    check_rollouts(a, &name)?;
    publish(&repo, a, &name, Some(&p.request.release))?;
    drop(repo);
    tell_server(&a.server, a.json)?;
    c.post::<PendingInfo>(
        "recording the publish",
        &format!("/api/v1/admin/pending/{id}/published"),
        &json!({}),
    )?;
    Ok(ExitCode::SUCCESS)
}

fn publish(repo: &Repo, a: &Args, name: &str, reference: Option<&str>) -> Result<()> {
    channel::check_name(name)?;
    let head = channel::head(repo, name)?
        .with_context(|| format!("no channel named {name:?}: nothing to publish"))?;
    let id = match reference {
        None => head,
        Some(r) => {
            let id = refs::resolve(repo, r)?;
            if !on_channel(repo, name, id)? {
                bail!(
                    "{r} ({}) has never been on channel {name}: move the channel there first \
                     (`semithin channel set {name} {r}`)",
                    id.short()
                );
            }
            id
        }
    };
    let boot = publish_boot::artifacts(repo, id, a.boot, a.json)?;
    let booted = boot.len();
    let r = sign_with_boot(repo, name, id, boot)?;
    if a.json {
        print_json(&r)?;
    } else {
        outln!("published {name} at {}{}", id.short(), {
            if id == head { "" } else { " (not the head)" }
        });
        if booted > 0 {
            outln!(
                "  with {booted} boot artifacts signed as boot/{}/*",
                id.to_hex()
            );
        }
        for w in &r.written {
            outln!(
                "  {:<20} {:<9} version {:<5} expires {}",
                w.file,
                w.role,
                w.version,
                w.expires
            );
        }
    }
    Ok(())
}
