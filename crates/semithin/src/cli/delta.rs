//! `semithin delta A B`: what a machine running A downloads to reach B, by kind; `--out` keeps
//! the pack. `semithin apply-delta PACK`: apply a pack to this repository, which holds A.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use semithin_delta::build::{Effort, Stats, build, build_in};
use semithin_store::pack::ObjKind;
use semithin_store::{Repo, refs};
use serde::Serialize;

use super::{human, print_json};

#[derive(clap::Args)]
pub struct Args {
    /// The release the machine runs.
    from: String,
    /// The release it goes to.
    to: String,
    /// Print one JSON object: `total_bytes` is the whole download; `metadata_bytes`,
    /// `patch_bytes` and `new_bytes` split it by kind; `build_secs` is the time to build it.
    #[arg(long)]
    json: bool,
    /// Write the pack to this file, as the server would serve it.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Build as fast as the server does on demand (for starting points without a prepared pack),
    /// not as small as at publish.
    #[arg(long)]
    quick: bool,
}

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    stats: Stats,
    build_secs: f64,
}

pub fn run(repo: &Repo, a: Args) -> Result<ExitCode> {
    let from = refs::resolve(repo, &a.from)?;
    let to = refs::resolve(repo, &a.to)?;
    let effort = if a.quick { Effort::Quick } else { Effort::Full };
    let start = Instant::now();
    let stats = match &a.out {
        Some(path) => {
            let tmp = path.with_extension("part");
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?,
            );
            // temporary files beside the pack: the system's may be small or in memory
            let scratch = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => std::path::PathBuf::from("."),
            };
            let s = build_in(&repo.objects, from, to, effort, &scratch, &mut f)?;
            f.flush()?;
            f.into_inner()?.sync_all()?;
            std::fs::rename(&tmp, path)
                .with_context(|| format!("renaming into {}", path.display()))?;
            s
        }
        None => build(&repo.objects, from, to, effort, &mut std::io::sink())?,
    };
    let r = Report {
        stats,
        build_secs: start.elapsed().as_secs_f64(),
    };
    if a.json {
        print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    let s = &r.stats;
    outln!(
        "{} -> {}: a machine downloads {} ({} bytes)",
        from.short(),
        to.short(),
        human(s.total_bytes),
        s.total_bytes
    );
    outln!(
        "  metadata     {:>12}  header and {} trees",
        human(s.metadata_bytes),
        s.trees
    );
    outln!(
        "  patches      {:>12}  {} changed files ({} against their old version by zstd, {} by \
         bsdiff, {} gzip files as their content)",
        human(s.patch_bytes),
        s.files_prefixed + s.files_bsdiff + s.files_gzip,
        s.files_prefixed,
        s.files_bsdiff,
        s.files_gzip
    );
    outln!(
        "  new content  {:>12}  {} files",
        human(s.new_bytes),
        s.files_new
    );
    outln!(
        "  rebuilds {} of file content; built in {:.1} s",
        human(s.content_bytes),
        r.build_secs
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct ApplyArgs {
    /// The pack (from `semithin delta --out`, or a server's deltas/ directory).
    pack: PathBuf,
    /// Print the result as JSON (for scripts).
    #[arg(long)]
    json: bool,
}

pub fn apply(repo: &Repo, a: ApplyArgs) -> Result<ExitCode> {
    let mut f =
        std::fs::File::open(&a.pack).with_context(|| format!("opening {}", a.pack.display()))?;
    let (from, to, _, _) = semithin_delta::pack::read_start(&mut f)
        .with_context(|| format!("reading {}", a.pack.display()))?;
    let (from, to) = (
        semithin_store::CommitId::from_bytes(from),
        semithin_store::CommitId::from_bytes(to),
    );
    if !repo.objects.contains(ObjKind::Commit, to.as_bytes()) {
        bail!(
            "this repository lacks the commit object of {} (the target release): fetch or \
             receive it first",
            to.short()
        );
    }
    let start = Instant::now();
    let f = std::fs::File::open(&a.pack)?;
    let applied = semithin_delta::apply::apply(&repo.objects, from, to, f)
        .with_context(|| format!("applying {}", a.pack.display()))?;
    let missing = semithin_store::transfer::missing(&repo.objects, to)?.len();
    let secs = start.elapsed().as_secs_f64();
    if a.json {
        print_json(&serde_json::json!({
            "from": from.to_hex(), "to": to.to_hex(), "applied": applied,
            "still_missing": missing, "apply_secs": secs,
        }))?;
    } else {
        outln!(
            "{} -> {}: {} trees and {} files rebuilt and verified, {} stored, in {:.2} s; {}",
            from.short(),
            to.short(),
            applied.trees,
            applied.files,
            human(applied.stored_bytes),
            secs,
            if missing == 0 {
                "the release is complete".to_owned()
            } else {
                format!("{missing} objects still missing")
            }
        );
    }
    Ok(if missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
