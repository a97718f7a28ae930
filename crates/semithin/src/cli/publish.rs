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
    channel: String,
    /// The version to release (default: the channel's head). It must be one the channel has
    /// pointed at, or an ancestor of one, so that gc keeps it; publishing an older version is a
    /// rollback.
    reference: Option<String>,
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
fn check_rollouts(a: &Args) -> Result<()> {
    if a.force || !a.server.configured() {
        return Ok(());
    }
    let Ok(c) = a.server.client() else {
        return Ok(());
    };
    let path = format!(
        "/api/v1/admin/rollouts?channel={}",
        super::fleet::urlencode(&a.channel)
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
            a.channel,
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
    check_rollouts(&a)?;
    publish(&repo, &a)?;
    // The server reads the repository under a shared lock: ours goes first.
    drop(repo);
    tell_server(&a.server, a.json)?;
    Ok(ExitCode::SUCCESS)
}

fn publish(repo: &Repo, a: &Args) -> Result<()> {
    let name = &a.channel;
    channel::check_name(name)?;
    let head = channel::head(repo, name)?
        .with_context(|| format!("no channel named {name:?}: nothing to publish"))?;
    let id = match &a.reference {
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
