use std::process::ExitCode;

use anyhow::Result;
use semithin_store::{Repo, diff, refs};

use super::print_json;

#[derive(clap::Args)]
pub struct Args {
    /// The older version.
    from: String,
    /// The newer version.
    to: String,
    /// Print a JSON list of changes: path, change (added, removed, modified, type-changed),
    /// type, and the fields that changed.
    #[arg(long)]
    json: bool,
    /// Print only the counts.
    #[arg(long)]
    stat: bool,
}

impl Args {
    /// The file diff of `from` and `to` (for `image diff` without --packages).
    pub fn new(from: String, to: String, json: bool) -> Self {
        Self {
            from,
            to,
            json,
            stat: false,
        }
    }
}

pub fn run(repo: &Repo, a: Args) -> Result<ExitCode> {
    let from = refs::resolve(repo, &a.from)?;
    let to = refs::resolve(repo, &a.to)?;
    let changes = diff::diff_commits(&repo.objects, from, to)?;
    if a.json {
        print_json(&changes)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !a.stat {
        for c in &changes {
            if c.fields.is_empty() {
                outln!("{} {}", c.change.letter(), c.path);
            } else {
                outln!("{} {} ({})", c.change.letter(), c.path, c.fields.join(", "));
            }
        }
    }
    let count = |k| changes.iter().filter(|c| c.change == k).count();
    outln!(
        "{} added, {} removed, {} modified, {} changed type",
        count(diff::ChangeKind::Added),
        count(diff::ChangeKind::Removed),
        count(diff::ChangeKind::Modified),
        count(diff::ChangeKind::TypeChanged)
    );
    Ok(ExitCode::SUCCESS)
}
