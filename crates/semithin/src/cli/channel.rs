use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use semithin_store::channel::{self, MoveKind};
use semithin_store::{Access, refs};

use super::{open, print_json, time};

#[derive(Subcommand)]
pub enum ChannelCmd {
    /// Move a channel to a version (a rollback moves it back). The move is recorded; history is
    /// never rewritten.
    Set {
        /// The channel, e.g. `lab/stable` (made when it does not exist).
        name: String,
        /// The version it moves to: a commit id (or a unique prefix), a channel, each
        /// optionally with ~N.
        reference: String,
        /// Why (kept in the channel log).
        #[arg(long, short, default_value = "")]
        message: String,
    },
    /// Show every move of a channel, oldest first.
    Log {
        /// The channel.
        name: String,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Delete a channel and its whole history; `gc` then frees what only it reached.
    Remove {
        /// The channel.
        name: String,
        /// Required: the history cannot be recovered.
        #[arg(long)]
        yes: bool,
    },
    /// List channels and their heads.
    List {
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
}

pub fn run(repo: Option<PathBuf>, cmd: ChannelCmd) -> Result<ExitCode> {
    match cmd {
        ChannelCmd::Set {
            name,
            reference,
            message,
        } => {
            let repo = open(repo, Access::Write)?;
            let id = refs::resolve(&repo, &reference)?;
            let m = channel::move_to(&repo, &name, id, MoveKind::Set, &message)?;
            match m.previous {
                Some(p) => outln!("{name}: {} -> {}", p.0.short(), id.short()),
                None => outln!("{name}: created at {}", id.short()),
            }
            let o =
                super::profile::after_move(&repo, &name, std::path::Path::new("/var/tmp"), false);
            drop(repo);
            super::profile::tell_if_published(&o, false)?;
        }
        ChannelCmd::Log { name, json } => {
            let repo = open(repo, Access::Read)?;
            let moves = channel::history(&repo, &name)?;
            if json {
                print_json(&moves)?;
            } else {
                for m in &moves {
                    let kind = serde_json::to_value(m.kind)?;
                    outln!(
                        "{}  {:<11} {} -> {}  {}",
                        time(m.time),
                        kind.as_str().unwrap_or(""),
                        m.previous.map_or("(new)".to_owned(), |p| p.0.short()),
                        m.commit.0.short(),
                        m.note.lines().next().unwrap_or("")
                    );
                }
            }
        }
        ChannelCmd::Remove { name, yes } => {
            anyhow::ensure!(
                yes,
                "removing channel {name:?} deletes its history for good; pass --yes to confirm"
            );
            let repo = open(repo, Access::Write)?;
            if super::trust::published(&repo)?
                .iter()
                .any(|(c, _)| c == &name)
            {
                anyhow::bail!(
                    "channel {name:?} is published as a release that machines may run; it cannot be removed"
                );
            }
            channel::remove(&repo, &name)?;
            outln!("removed channel {name}; run `semithin gc` to free its objects");
        }
        ChannelCmd::List { json } => {
            let repo = open(repo, Access::Read)?;
            let mut out = Vec::new();
            for name in channel::list(&repo)? {
                let head = channel::head(&repo, &name)?.map(|h| h.to_hex());
                out.push(serde_json::json!({"channel": name, "head": head}));
            }
            if json {
                print_json(&out)?;
            } else {
                for c in &out {
                    outln!(
                        "{:<30} {}",
                        c["channel"].as_str().unwrap_or(""),
                        c["head"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
