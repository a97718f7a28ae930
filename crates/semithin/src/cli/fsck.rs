use std::process::ExitCode;

use anyhow::Result;
use semithin_store::{Repo, fsck};

use super::progress::Bar;
use super::{human, print_json};

#[derive(clap::Args)]
pub struct Args {
    /// Print the result as JSON (for scripts).
    #[arg(long)]
    json: bool,
}

/// Exit status 0 when the repository is sound, 1 when anything is damaged.
pub fn run(repo: &Repo, a: Args) -> Result<ExitCode> {
    let bar = Bar::new(a.json);
    let r = fsck::fsck(repo, &bar)?;
    bar.finish();
    if a.json {
        print_json(&r)?;
    } else {
        for p in &r.problems {
            let id = if p.id.is_empty() { "-" } else { &p.id[..12] };
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
