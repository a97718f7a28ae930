//! Removing what no channel reaches.
//!
//! Safe to interrupt at any point: a pack is only removed after every live object in it has been
//! copied into a new pack that is complete, synced and indexed. An interrupted gc leaves at worst
//! an object in two packs, or a pack without an index, which the next gc removes.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::CommitId;
use crate::pack::ObjKind;
use crate::progress::Progress;
use crate::reach;
use crate::repo::Repo;

#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    pub live_objects: u64,
    pub removed_objects: u64,
    pub removed_packs: u64,
    pub rewritten_packs: u64,
    /// Bytes of pack files freed (after the rewritten packs are counted).
    pub freed_bytes: u64,
    pub removed_cache_files: u64,
}

/// Removes objects that neither a channel nor one of `also_keep` (commits a layer above the
/// store still needs, such as published releases) reaches. The caller holds the repository for
/// writing.
pub fn gc(repo: &Repo, also_keep: &[CommitId], progress: &dyn Progress) -> Result<GcReport> {
    collect(repo, reach::commits_and(repo, also_keep)?, 0.0, progress)
}

/// gc for a machine's store: keeps exactly the `releases` given (not channels, not their
/// ancestors), and rewrites a pack that still holds live objects only when more than
/// `min_dead` (0.0 to 1.0) of its objects are dead, so content that did not change is not
/// copied again at every update.
pub fn gc_releases(
    repo: &Repo,
    releases: &[CommitId],
    min_dead: f64,
    progress: &dyn Progress,
) -> Result<GcReport> {
    let commits = releases.iter().map(|c| (*c, "kept".to_owned())).collect();
    collect(repo, commits, min_dead, progress)
}

fn collect(
    repo: &Repo,
    commits: Vec<(CommitId, String)>,
    min_dead: f64,
    progress: &dyn Progress,
) -> Result<GcReport> {
    let store = &repo.objects;
    if let Some(e) = store.damaged_packs().first() {
        return Err(Error::Tool {
            tool: "gc",
            reason: format!(
                "refusing to collect garbage in a damaged repository ({e}); run `semithin fsck`"
            ),
        });
    }
    // Everything reachable; a reachable object that cannot be read stops gc, since what it
    // reaches is unknown.
    let mut live: HashSet<(ObjKind, [u8; 32])> = HashSet::new();
    let mut roots = Vec::new();
    for (id, _) in &commits {
        let c = store.get_commit(id)?;
        live.insert((ObjKind::Commit, *id.as_bytes()));
        roots.push((c.tree, String::new()));
    }
    let below = reach::below(repo, &roots, 0);
    if let Some((_, e, _)) = below.bad_trees.into_iter().next() {
        return Err(e);
    }
    live.extend(below.trees.keys().map(|t| (ObjKind::Tree, *t.as_bytes())));
    live.extend(below.chunks.keys().map(|c| (ObjKind::Chunk, *c.as_bytes())));

    let mut report = GcReport {
        live_objects: live.len() as u64,
        ..GcReport::default()
    };
    let packs = store.packs()?;
    progress.phase("collecting", Some(packs.len() as u64));
    // Objects already safe in a pack that stays.
    let mut kept: HashSet<(ObjKind, [u8; 32])> = HashSet::new();
    let mut rewrite = Vec::new();
    for (name, entries) in packs {
        let n_live = entries
            .iter()
            .filter(|e| live.contains(&(e.kind(), e.id)))
            .count();
        let dead = (entries.len() - n_live) as f64 / entries.len().max(1) as f64;
        if n_live == entries.len() || (n_live > 0 && dead <= min_dead) {
            kept.extend(entries.iter().map(|e| (e.kind(), e.id)));
        } else {
            rewrite.push((name, entries, n_live));
        }
    }
    let dir = store.packs_dir().to_owned();
    // Measured before the live objects are copied, so the copies count against what is freed.
    let before = dir_bytes(&dir)?;
    let mut to_remove = Vec::new();
    for (name, entries, n_live) in rewrite {
        report.removed_objects += (entries.len() - n_live) as u64;
        if n_live > 0 {
            report.rewritten_packs += 1;
        } else {
            report.removed_packs += 1;
        }
        for e in entries {
            let key = (e.kind(), e.id);
            if live.contains(&key) && kept.insert(key) {
                let (frame, raw_len) = store.get_frame(key.0, &key.1)?;
                store.put_frame(key.0, key.1, &frame, raw_len)?;
            }
        }
        to_remove.push(name);
        progress.advance(1);
    }
    // The copies are durable before any original goes.
    store.flush()?;
    for name in to_remove {
        remove(&dir.join(format!("{name}.idx")))?;
        remove(&dir.join(format!("{name}.pack")))?;
    }
    // Packs whose index never got written (an interrupted writer or gc).
    let indexed: HashSet<String> = store.pack_names()?.into_iter().collect();
    for de in std::fs::read_dir(&dir).map_err(Error::io("listing", &dir))? {
        let p = de.map_err(Error::io("listing", &dir))?.path();
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if p.extension().is_some_and(|x| x == "pack") && !indexed.contains(&stem) {
            remove(&p)?;
        }
    }
    crate::fsutil::sync_dir(&dir)?;
    report.freed_bytes = before.saturating_sub(dir_bytes(&dir)?);
    report.removed_cache_files = prune_cache(&repo.cache_dir())?;
    Ok(report)
}

fn remove(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing", p)(e)),
    }
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for de in std::fs::read_dir(dir).map_err(Error::io("listing", dir))? {
        let de = de.map_err(Error::io("listing", dir))?;
        total += de
            .metadata()
            .map_err(Error::io("reading", de.path()))?
            .len();
    }
    Ok(total)
}

/// Removes cached checkout files that no checkout links to any more.
fn prune_cache(cache: &Path) -> Result<u64> {
    let mut removed = 0;
    let Ok(rd) = std::fs::read_dir(cache) else {
        return Ok(0);
    };
    for sub in rd {
        let sub = sub.map_err(Error::io("listing", cache))?.path();
        if !sub.is_dir() {
            // A temporary file of an interrupted checkout.
            remove(&sub)?;
            continue;
        }
        for de in std::fs::read_dir(&sub).map_err(Error::io("listing", &sub))? {
            let de = de.map_err(Error::io("listing", &sub))?;
            let md = de.metadata().map_err(Error::io("reading", de.path()))?;
            if md.nlink() <= 1 {
                remove(&de.path())?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}
