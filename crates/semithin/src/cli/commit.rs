use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use semithin_store::Repo;
use semithin_store::import::{self, CommitOptions};

use super::progress::Bar;
use super::{human, print_json};

#[derive(clap::Args)]
pub struct Args {
    /// The channel the new version goes on; its current head becomes the parent.
    #[arg(long, short)]
    channel: String,
    /// What changed in this version.
    #[arg(long, short, default_value = "")]
    message: String,
    /// Print the result as JSON (for scripts).
    #[arg(long)]
    json: bool,
    /// A directory, or a tar archive (plain, gzip or zstd, recognised by content).
    source: PathBuf,
}

pub fn run(repo: &Repo, a: Args) -> Result<ExitCode> {
    let bar = Bar::new(a.json);
    let opts = CommitOptions {
        channel: &a.channel,
        message: &a.message,
        time: None,
    };
    let stats = import::commit(repo, &a.source, &opts, &bar)
        .with_context(|| format!("committing {}", a.source.display()))?;
    bar.finish();
    if a.json {
        print_json(&stats)?;
    } else {
        println!("{}", stats.commit);
        println!(
            "{} on {}: {} entries ({} files, {} dirs, {} symlinks, {} other, {} hardlinks), {}",
            if stats.parent.is_some() {
                "new version"
            } else {
                "first version"
            },
            stats.channel,
            stats.entries,
            stats.files,
            stats.dirs,
            stats.symlinks,
            stats.others,
            stats.hardlinks,
            human(stats.bytes)
        );
        println!(
            "stored {} new ({} on disk after compression), {} already stored; {} new chunks, {} new trees",
            human(stats.new_bytes),
            human(stats.stored_bytes),
            human(stats.shared_bytes),
            stats.new_chunks,
            stats.new_trees
        );
    }
    Ok(ExitCode::SUCCESS)
}
