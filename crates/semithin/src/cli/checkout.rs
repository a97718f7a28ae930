use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use semithin_store::checkout::{self, CheckoutOptions};
use semithin_store::{Repo, refs};

use super::progress::Bar;
use super::{human, print_json};

#[derive(clap::Args)]
pub struct Args {
    /// The version to write.
    reference: String,
    /// A missing or empty directory.
    dest: PathBuf,
    /// Share unchanged files with earlier checkouts by hardlinking them from the repository's
    /// file cache (it must be on the same filesystem as DEST). Files of such checkouts share
    /// inodes: replace them, never edit them in place.
    #[arg(long)]
    cache: bool,
    /// Sync everything written before returning.
    #[arg(long)]
    fsync: bool,
    /// Print the result as JSON (for scripts).
    #[arg(long)]
    json: bool,
}

pub fn run(repo: &Repo, a: Args) -> Result<ExitCode> {
    let id = refs::resolve(repo, &a.reference)?;
    let bar = Bar::new(a.json);
    let opts = CheckoutOptions {
        cache: a.cache.then(|| repo.cache_dir()),
        fsync: a.fsync,
    };
    let stats = checkout::checkout(repo, id, &a.dest, &opts, &bar)
        .with_context(|| format!("checking out {} into {}", a.reference, a.dest.display()))?;
    bar.finish();
    for w in &stats.warnings {
        note!("warning: {w}");
    }
    if a.json {
        print_json(&stats)?;
    } else {
        outln!(
            "checked out {} into {}: {} entries, {} files ({}), {} written, {} files linked from the cache",
            semithin_protocol::ids::short_str(&stats.commit),
            a.dest.display(),
            stats.entries,
            stats.files,
            human(stats.bytes),
            human(stats.written_bytes),
            stats.linked_files
        );
    }
    Ok(ExitCode::SUCCESS)
}
