use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use semithin_protocol::near;
use semithin_store::import::{self, CommitOptions};
use semithin_store::{Repo, channel};

use super::progress::Bar;
use super::{human, print_json};

#[derive(clap::Args)]
pub struct Args {
    /// The channel the new version goes on; its current head becomes the parent. A channel that
    /// does not exist yet is made (see --new-channel).
    #[arg(long, short)]
    channel: String,
    /// Make the channel even though its name is a few letters from an existing one (without
    /// it, such a name is refused as a probable misspelling).
    #[arg(long)]
    new_channel: bool,
    /// What changed in this version.
    #[arg(long, short, default_value = "")]
    message: String,
    /// Print the result as JSON (for scripts).
    #[arg(long)]
    json: bool,
    /// A directory, or a tar archive (plain, gzip or zstd, recognised by content).
    source: PathBuf,
}

pub fn run(owned: Repo, a: Args) -> Result<ExitCode> {
    let repo = &owned;
    let new = channel::head(repo, &a.channel)?.is_none();
    if new && !a.new_channel {
        let names = channel::list(repo)?;
        let near = near::near(&a.channel, names.iter().map(String::as_str));
        if !near.is_empty() {
            bail!(
                "there is no channel {:?}, but there is {}: did you mean {}? (pass \
                 --new-channel to make {0:?} all the same)",
                a.channel,
                near.join(", "),
                near.join(" or ")
            );
        }
    }
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
        outln!("{}", stats.commit);
        if new {
            note!("made the new channel {}", stats.channel);
        }
        outln!(
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
        outln!(
            "stored {} new ({} on disk after compression), {} already stored; {} new chunks, {} new trees",
            human(stats.new_bytes),
            human(stats.stored_bytes),
            human(stats.shared_bytes),
            stats.new_chunks,
            stats.new_trees
        );
    }
    let o = super::profile::after_move(repo, &a.channel, std::path::Path::new("/var/tmp"), a.json);
    drop(owned);
    super::profile::tell_if_published(&o, a.json)?;
    Ok(ExitCode::SUCCESS)
}
