//! `semithin publish CHANNEL [REF]`: release a version of a channel as a signed TUF target.

use std::collections::HashSet;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use semithin_store::pack::ObjKind;
use semithin_store::{CommitId, Repo, channel, refs};
use semithin_trust::clock;
use semithin_trust::repo::TrustRepo;
use serde_json::json;

use super::print_json;

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
}

/// Whether `id` is a version `name` pointed at or an ancestor of one.
fn on_channel(repo: &Repo, name: &str, id: CommitId) -> Result<bool> {
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

pub fn run(repo: &Repo, a: Args) -> Result<ExitCode> {
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
    let bytes = repo
        .objects
        .get(ObjKind::Commit, id.as_bytes())
        .with_context(|| format!("reading commit {id}"))?;
    let now = clock::now();
    let mut t = TrustRepo::open(&super::trust::dir(repo))?;
    let target = format!("channels/{name}");
    let custom = json!({"commit": id.to_hex(), "channel": name, "published": now});
    let r = t.publish(&target, &bytes, custom, now)?;
    if a.json {
        print_json(&r)?;
    } else {
        println!("published {name} at {}{}", id.short(), {
            if id == head { "" } else { " (not the head)" }
        });
        for w in &r.written {
            println!(
                "  {:<20} {:<9} version {:<5} expires {}",
                w.file, w.role, w.version, w.expires
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
