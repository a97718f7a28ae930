//! Removing what no channel reaches.
//!
//! Safe to interrupt at any point: a pack is only removed after every live object in it has been
//! copied into a new pack that is complete, synced and indexed. An interrupted gc leaves at worst
//! an object in two packs, or a pack without an index, which the next gc removes. Packs leave
//! the store's in-memory index with their files (`ObjectStore::remove_packs`), so the process
//! that ran gc (a long-running agent) stores a removed object again when it gets it again.

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
                // Verified on the way: gc never copies a damaged object as if it were whole.
                store.append(&store.get_verified(key.0, &key.1)?, false)?;
            }
        }
        to_remove.push(name);
        progress.advance(1);
    }
    // The copies are durable (and in the index) before any original goes; the originals
    // leave the index with their files.
    store.flush()?;
    store.remove_packs(&to_remove)?;
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::import::{CommitOptions, commit};
    use crate::repo::{Access, Config};
    use crate::{NoProgress, fsck, transfer};

    fn open(dir: &Path) -> Repo {
        Repo::open(dir, Access::Write).unwrap()
    }

    /// Commits a small tree whose every file says `version` (a file of several chunks among
    /// them), on channel `c`.
    fn commit_version(repo: &Repo, src: &Path, version: u32) -> CommitId {
        let _ = std::fs::remove_dir_all(src);
        std::fs::create_dir_all(src.join("etc/deep/er")).unwrap();
        std::fs::write(src.join("etc/version"), format!("{version}\n")).unwrap();
        std::fs::write(
            src.join("etc/deep/er/file"),
            format!("v{version}").repeat(9),
        )
        .unwrap();
        let mut x = u64::from(version) + 1;
        let big: Vec<u8> = (0..600_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(src.join("big"), big).unwrap();
        let opts = CommitOptions {
            channel: "c",
            message: "",
            time: Some(0),
        };
        commit(repo, src, &opts, &NoProgress)
            .unwrap()
            .commit
            .parse()
            .unwrap()
    }

    fn fsck_clean(repo: &Repo) {
        let r = fsck::fsck(repo, &NoProgress).unwrap();
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
    }

    /// Every object of `commit` is there and reads back verified.
    fn assert_whole(repo: &Repo, commit: CommitId) {
        assert_eq!(transfer::missing(&repo.objects, commit).unwrap(), vec![]);
        let tree = repo.objects.get_commit(&commit).unwrap().tree;
        let below = reach::below(repo, &[(tree, String::new())], 0);
        assert!(below.bad_trees.is_empty(), "{:?}", below.bad_trees);
        assert!(below.chunks.len() > 3);
        for c in below.chunks.keys() {
            repo.objects.get_chunk(c).unwrap();
        }
    }

    /// Regression: gc removed packs from the disk but not from the store's index, so in the
    /// same process an object of a removed pack still counted as present: storing it again was
    /// skipped, and after a restart it was missing.
    #[test]
    fn what_gc_removed_can_be_stored_again_in_the_same_process() {
        let d = tempfile::tempdir().unwrap();
        let (dir, src) = (d.path().join("repo"), d.path().join("src"));
        Repo::init(&dir, Config::default()).unwrap();
        let repo = open(&dir);
        let v1 = commit_version(&repo, &src, 1);
        let v2 = commit_version(&repo, &src, 2);
        let v3 = commit_version(&repo, &src, 3);
        // A machine keeping its last two releases: what only v1 had goes.
        let r = gc_releases(&repo, &[v2, v3], 0.0, &NoProgress).unwrap();
        assert!(
            r.removed_objects > 0 && r.removed_packs + r.rewritten_packs > 0,
            "{r:?}"
        );
        assert!(!repo.objects.contains(ObjKind::Commit, v1.as_bytes()));
        // What stays is readable at once, from the packs that hold it now.
        for id in [v2, v3] {
            assert_whole(&repo, id);
        }
        // v1's content again, in the same process: every object is stored again, and is on
        // the disk when the repository is opened anew.
        let v1_again = commit_version(&repo, &src, 1);
        assert_whole(&repo, v1_again);
        drop(repo);
        let repo = open(&dir);
        for id in [v1_again, v2, v3] {
            assert_whole(&repo, id);
        }
    }

    /// gc verifies what it copies: a damaged live object stops it with the object named, and
    /// no pack is removed.
    #[test]
    fn a_damaged_live_object_stops_gc_before_anything_is_removed() {
        use std::os::unix::fs::FileExt;
        let d = tempfile::tempdir().unwrap();
        let (dir, src) = (d.path().join("repo"), d.path().join("src"));
        Repo::init(&dir, Config::default()).unwrap();
        let repo = open(&dir);
        let opts = CommitOptions {
            channel: "c",
            message: "",
            time: Some(0),
        };
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("shared"), b"in both versions").unwrap();
        std::fs::write(src.join("old"), b"only in v1").unwrap();
        commit(&repo, &src, &opts, &NoProgress).unwrap();
        let first = repo.objects.pack_names().unwrap();
        std::fs::remove_file(src.join("old")).unwrap();
        let v2: CommitId = commit(&repo, &src, &opts, &NoProgress)
            .unwrap()
            .commit
            .parse()
            .unwrap();
        // Flip a byte of the shared chunk's frame in the first pack, which gc rewrites.
        let shared = crate::ChunkId::of(b"in both versions");
        let (_, _, e) = repo
            .objects
            .list()
            .into_iter()
            .find(|(k, id, _)| *k == ObjKind::Chunk && id == shared.as_bytes())
            .unwrap();
        let pack = dir.join(format!("objects/packs/{}.pack", first[0]));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&pack)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, e.offset + u64::from(e.stored_len) - 1)
            .unwrap();
        f.write_all_at(&[b[0] ^ 0xff], e.offset + u64::from(e.stored_len) - 1)
            .unwrap();
        let before = repo.objects.pack_names().unwrap();
        let err = gc_releases(&repo, &[v2], 0.0, &NoProgress).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("chunk object {shared} is corrupt")),
            "{err}"
        );
        assert!(
            before
                .iter()
                .all(|p| repo.objects.pack_names().unwrap().contains(p))
        );
        assert!(repo.objects.contains(ObjKind::Chunk, shared.as_bytes()));
    }

    /// The same through an object stream, as an agent receives a release it ran before.
    #[test]
    fn a_release_received_again_after_gc_is_stored_whole() {
        let d = tempfile::tempdir().unwrap();
        let (sdir, mdir, src) = (
            d.path().join("server"),
            d.path().join("machine"),
            d.path().join("src"),
        );
        Repo::init(&sdir, Config::default()).unwrap();
        Repo::init(&mdir, Config::default()).unwrap();
        let server = open(&sdir);
        let machine = open(&mdir);
        let fetch = |id: CommitId| loop {
            let want = transfer::missing(&machine.objects, id).unwrap();
            if want.is_empty() {
                break;
            }
            let mut buf = Vec::new();
            transfer::send(&server.objects, &want, &mut buf).unwrap();
            transfer::receive(&machine.objects, &want.iter().copied().collect(), &buf[..]).unwrap();
        };
        let v: Vec<CommitId> = (1..=3).map(|i| commit_version(&server, &src, i)).collect();
        for (i, id) in v.iter().enumerate() {
            fetch(*id);
            let keep = &v[i.saturating_sub(1)..=i];
            gc_releases(&machine, keep, 0.5, &NoProgress).unwrap();
        }
        // v1 once more (a rollback, or a rollout sending the machine back)
        fetch(v[0]);
        crate::channel::move_to(&machine, "c", v[0], crate::channel::MoveKind::Set, "").unwrap();
        drop(machine);
        let machine = open(&mdir);
        assert!(
            transfer::missing(&machine.objects, v[0])
                .unwrap()
                .is_empty()
        );
        fsck_clean(&machine);
    }
}
