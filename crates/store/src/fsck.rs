//! Checking a repository: every object reachable from every channel is read and re-hashed; each
//! missing or corrupt one is reported with the paths that use it.

use rayon::prelude::*;
use serde::Serialize;

use crate::error::Result;
use crate::id::CommitId;
use crate::pack::ObjKind;
use crate::progress::Progress;
use crate::reach;
use crate::repo::Repo;

/// Paths listed per damaged object.
const USERS: usize = 5;

#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// `chunk`, `tree`, `commit` or `pack`.
    pub kind: &'static str,
    pub id: String,
    pub error: String,
    /// Where it is used: `COMMIT:/path` (at most a few).
    pub used_by: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FsckReport {
    pub channels: u64,
    pub commits: u64,
    pub trees: u64,
    pub chunks: u64,
    pub chunk_bytes: u64,
    pub problems: Vec<Problem>,
}

pub fn fsck(repo: &Repo, progress: &dyn Progress) -> Result<FsckReport> {
    check(repo, reach::commits(repo)?, progress)
}

/// fsck of a machine's store: exactly the `releases` given (a machine keeps no channels and
/// no ancestors), and every pack's headers.
pub fn fsck_releases(
    repo: &Repo,
    releases: &[CommitId],
    progress: &dyn Progress,
) -> Result<FsckReport> {
    let commits = releases.iter().map(|c| (*c, "kept".to_owned())).collect();
    check(repo, commits, progress)
}

fn check(
    repo: &Repo,
    commits: Vec<(CommitId, String)>,
    progress: &dyn Progress,
) -> Result<FsckReport> {
    let mut report = FsckReport {
        channels: crate::channel::list(repo)?.len() as u64,
        ..FsckReport::default()
    };
    for e in repo.objects.damaged_packs() {
        report.problems.push(Problem {
            kind: "pack",
            id: String::new(),
            error: e.to_string(),
            used_by: Vec::new(),
        });
    }
    // Every record header must repeat its index entry.
    for (pack, problem) in repo.objects.check_pack_headers()? {
        report.problems.push(Problem {
            kind: "pack",
            id: pack,
            error: problem,
            used_by: Vec::new(),
        });
    }
    report.commits = commits.len() as u64;
    let mut roots = Vec::new();
    for (id, channel) in &commits {
        match repo.objects.get_commit(id) {
            Ok(c) => roots.push((c.tree, format!("{}:", id.short()))),
            Err(e) => report.problems.push(Problem {
                kind: "commit",
                id: id.to_hex(),
                error: e.to_string(),
                used_by: vec![format!("channel {channel}")],
            }),
        }
    }
    let below = reach::below(repo, &roots, USERS);
    report.trees = below.trees.len() as u64;
    for (id, e, users) in below.bad_trees {
        report.problems.push(Problem {
            kind: "tree",
            id: id.to_hex(),
            error: e.to_string(),
            used_by: users,
        });
    }
    let chunks: Vec<_> = below.chunks.into_iter().collect();
    report.chunks = chunks.len() as u64;
    progress.phase("verifying", Some(chunks.len() as u64));
    let results: Vec<(u64, Option<Problem>)> = chunks
        .into_par_iter()
        .map(|(id, users)| {
            let r = match repo.objects.get(ObjKind::Chunk, id.as_bytes()) {
                Ok(data) => (data.len() as u64, None),
                Err(e) => (
                    0,
                    Some(Problem {
                        kind: "chunk",
                        id: id.to_hex(),
                        error: e.to_string(),
                        used_by: users,
                    }),
                ),
            };
            progress.advance(1);
            r
        })
        .collect();
    for (bytes, p) in results {
        report.chunk_bytes += bytes;
        report.problems.extend(p);
    }
    report
        .problems
        .sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
    Ok(report)
}
