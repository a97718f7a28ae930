use std::process::ExitCode;

use anyhow::Result;
use semithin_store::{Repo, channel, refs};
use serde::Serialize;

use super::{human, print_json, time};

#[derive(clap::Args)]
pub struct LogArgs {
    /// Only this channel (default: every channel).
    #[arg(long, short)]
    channel: Option<String>,
    /// At most this many versions per channel.
    #[arg(long, short = 'n')]
    limit: Option<usize>,
    /// Print the result as JSON (for scripts).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ShowArgs {
    /// A commit id, a unique prefix of one, a channel name, each optionally with ~N (N back).
    reference: String,
    /// Print the result as JSON (for scripts).
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct VersionInfo {
    commit: String,
    parent: Option<String>,
    time: i64,
    message: String,
    entries: u64,
    bytes: u64,
    tree: String,
    hardlink_groups: usize,
}

fn info(repo: &Repo, id: semithin_store::CommitId) -> Result<VersionInfo> {
    let c = repo.objects.get_commit(&id)?;
    Ok(VersionInfo {
        commit: id.to_hex(),
        parent: c.parent.map(|p| p.to_hex()),
        time: c.time,
        message: c.message,
        entries: c.entries,
        bytes: c.bytes,
        tree: c.tree.to_hex(),
        hardlink_groups: c.hardlinks.len(),
    })
}

fn print_info(v: &VersionInfo) -> Result<()> {
    outln!("commit {}", v.commit);
    if let Some(p) = &v.parent {
        outln!("parent {p}");
    }
    outln!("date   {}", time(v.time));
    outln!("size   {} entries, {}", v.entries, human(v.bytes));
    if !v.message.is_empty() {
        outln!("\n    {}", v.message.replace('\n', "\n    "));
    }
    Ok(())
}

pub fn log(repo: &Repo, a: LogArgs) -> Result<ExitCode> {
    let channels = match a.channel {
        Some(c) => vec![c],
        None => channel::list(repo)?,
    };
    let mut all = Vec::new();
    for name in channels {
        let mut versions = Vec::new();
        let mut next = channel::head(repo, &name)?;
        if next.is_none() {
            anyhow::bail!("no channel named {name:?}");
        }
        while let Some(id) = next {
            if a.limit.is_some_and(|l| versions.len() >= l) {
                break;
            }
            let v = info(repo, id)?;
            next = v.parent.as_deref().map(str::parse).transpose()?;
            versions.push(v);
        }
        all.push((name, versions));
    }
    if a.json {
        #[derive(Serialize)]
        struct ChannelLog<'a> {
            channel: &'a str,
            versions: &'a [VersionInfo],
        }
        let out: Vec<_> = all
            .iter()
            .map(|(c, v)| ChannelLog {
                channel: c,
                versions: v,
            })
            .collect();
        return print_json(&out).map(|_| ExitCode::SUCCESS);
    }
    for (name, versions) in &all {
        outln!("== {name}");
        for (i, v) in versions.iter().enumerate() {
            let tag = if i == 0 {
                name.clone()
            } else {
                format!("{name}~{i}")
            };
            outln!(
                "{}  {}  {:<16} {:>10}  {}",
                semithin_protocol::ids::short_str(&v.commit),
                time(v.time),
                tag,
                human(v.bytes),
                v.message.lines().next().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn show(repo: &Repo, a: ShowArgs) -> Result<ExitCode> {
    let id = refs::resolve(repo, &a.reference)?;
    let v = info(repo, id)?;
    if a.json {
        print_json(&v)?;
    } else {
        print_info(&v)?;
    }
    Ok(ExitCode::SUCCESS)
}
