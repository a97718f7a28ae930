use std::process::ExitCode;

use anyhow::Result;
use semithin_store::{Repo, gc};

use super::progress::Bar;
use super::{human, print_json};

#[derive(clap::Args)]
pub struct Args {
    /// Print the result as JSON (for scripts).
    #[arg(long)]
    json: bool,
}

pub fn run(repo: &Repo, a: Args) -> Result<ExitCode> {
    let bar = Bar::new(a.json);
    // Published releases stay, whatever happens to their channels, and so do the earlier
    // releases a rollout allows (machines are kept on them or sent back to them).
    let keep = super::trust::signed_commits(repo)?;
    let r = gc::gc(repo, &keep, &bar)?;
    bar.finish();
    let boot = super::publish_boot::gc(repo)?;
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["removed_boot_files"] = boot.files.into();
        v["removed_boot_bytes"] = boot.bytes.into();
        print_json(&v)?;
    } else {
        outln!(
            "removed {} unreachable objects ({} packs removed, {} rewritten), freed {}; {} objects kept; {} unused cache files removed",
            r.removed_objects,
            r.removed_packs,
            r.rewritten_packs,
            human(r.freed_bytes),
            r.live_objects,
            r.removed_cache_files
        );
        if boot.files > 0 {
            outln!(
                "removed {} boot artifact file(s) no signed target names, freed {}",
                boot.files,
                human(boot.bytes)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
