use std::process::ExitCode;

use anyhow::{Context, Result};
use semithin_store::{CommitId, Repo, fsck};

use super::progress::Bar;
use super::{human, print_json};

#[derive(clap::Args)]
pub struct Args {
    /// Print the result as JSON (for scripts).
    #[arg(long)]
    json: bool,
    /// Check exactly this commit (a commit id, repeatable) instead of every channel's history:
    /// for a machine's store (`--repo STATE/repo`), which keeps releases, not channels.
    #[arg(long = "release", value_name = "COMMIT")]
    releases: Vec<String>,
}

/// Exit status 0 when the repository is sound, 1 when anything is damaged.
pub fn run(repo: &Repo, a: Args) -> Result<ExitCode> {
    let bar = Bar::new(a.json);
    let r = if a.releases.is_empty() {
        fsck::fsck(repo, &bar)?
    } else {
        let ids = a
            .releases
            .iter()
            .map(|r| {
                r.parse()
                    .with_context(|| format!("--release {r}: not a commit id"))
            })
            .collect::<Result<Vec<CommitId>>>()?;
        fsck::fsck_releases(repo, &ids, &bar)?
    };
    bar.finish();
    if a.json {
        print_json(&r)?;
    } else {
        for p in &r.problems {
            let id = if p.id.is_empty() {
                "-"
            } else {
                semithin_protocol::ids::short_str(&p.id)
            };
            outln!("{} {id} damaged: {}", p.kind, p.error);
            for u in &p.used_by {
                outln!("    used by {u}");
            }
        }
        outln!(
            "checked {} channels, {} commits, {} trees, {} chunks ({}): {}",
            r.channels,
            r.commits,
            r.trees,
            r.chunks,
            human(r.chunk_bytes),
            if r.problems.is_empty() {
                "no problems".to_owned()
            } else {
                format!("{} PROBLEMS", r.problems.len())
            }
        );
    }
    Ok(if r.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
