//! Baking a capture into a layer channel (docs/IMAGES.md, "Client changes baked into layers"):
//! the capture's tar.zst is imported as a commit on no channel, laid over the layer's head with
//! overlay semantics keeping whiteouts and opaque directories (`compose::apply` in
//! `Mode::Layer`), and the result committed on the layer channel. A channel with no head yet
//! takes the capture itself. Plain synchronous store work: `semithin overlay bake` runs it on
//! the repository, `serve --auto-bake` in a blocking task; the caller holds the write lock.

use std::path::Path;

use semithin_store::compose::{self, Composed, Mode};
use semithin_store::diff::{self, Change, ChangeKind};
use semithin_store::import;
use semithin_store::object::{Commit, EntryKind};
use semithin_store::{CommitId, NoProgress, Repo, channel, walk};
use serde::Serialize;

use crate::error::Result;

/// What a bake would do, before anything moves.
pub struct Plan {
    /// The capture as a commit on no channel.
    pub capture: CommitId,
    /// The layer channel's head (`None`: the capture becomes the layer).
    pub head: Option<CommitId>,
    composed: Option<Composed>,
    /// What the layer's head becomes, path by path.
    pub changes: Vec<Change>,
}

/// What a capture holds, for `overlay show`.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    pub path: String,
    /// `whiteout`, `opaque` (a directory hiding what is below), or the entry's type.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub size: u64,
    /// Against the release the machine runs (when known): `added` (not in it) or `changed`
    /// (there, and copied up or replaced); whiteouts and opaque directories say what they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<&'static str>,
}

/// Imports a capture's tar.zst as a commit without parent on no channel.
pub fn import(repo: &Repo, archive: &Path, message: &str) -> Result<CommitId> {
    let stats = import::store_detached(repo, archive, message, &NoProgress)?;
    stats
        .commit
        .parse()
        .map_err(|_| crate::Error::Config(format!("bad commit id {}", stats.commit)))
}

/// Every path of a commit with its kind (whiteouts and opaque directories named so).
pub fn list(repo: &Repo, commit: CommitId) -> Result<Vec<Listed>> {
    let c = repo.objects.get_commit(&commit)?;
    let mut out = Vec::new();
    walk::walk(&repo.objects, c.tree, &mut |p, e| {
        let (kind, size) = match &e.kind {
            _ if compose::is_whiteout(e) => ("whiteout", 0),
            EntryKind::Dir(_) if compose::is_opaque(&e.meta) => ("opaque", 0),
            EntryKind::Dir(_) => ("dir", 0),
            EntryKind::File(f) => ("file", f.size),
            EntryKind::Symlink(_) => ("symlink", 0),
            _ => ("other", 0),
        };
        out.push(Listed {
            path: walk::lossy(p),
            kind,
            size,
            change: None,
        });
        Ok(())
    })?;
    Ok(out)
}

/// What a capture's tar.zst holds, in archive order, read without a repository.
pub fn list_archive(archive: &Path) -> std::result::Result<Vec<Listed>, String> {
    let f = std::fs::File::open(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    let dec = zstd::Decoder::new(f).map_err(|e| format!("zstd: {e}"))?;
    let mut ar = tar::Archive::new(dec);
    let mut out = Vec::new();
    for e in ar.entries().map_err(|e| e.to_string())? {
        let mut e = e.map_err(|e| e.to_string())?;
        let path = String::from_utf8_lossy(&e.path_bytes())
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        let h = e.header();
        let size = h.size().unwrap_or(0);
        let ty = h.entry_type();
        let dev = (
            h.device_major().ok().flatten(),
            h.device_minor().ok().flatten(),
        );
        let opaque = ty == tar::EntryType::Directory
            && e.pax_extensions().ok().flatten().is_some_and(|mut x| {
                x.any(|r| {
                    r.ok().is_some_and(|r| {
                        compose::OPAQUE_XATTRS
                            .iter()
                            .any(|n| r.key_bytes().strip_prefix(b"SCHILY.xattr.") == Some(*n))
                            && r.value_bytes() == b"y"
                    })
                })
            });
        let kind = match ty {
            tar::EntryType::Char if dev == (Some(0), Some(0)) => "whiteout",
            tar::EntryType::Directory if opaque => "opaque",
            tar::EntryType::Directory => "dir",
            tar::EntryType::Regular | tar::EntryType::Continuous => "file",
            tar::EntryType::Symlink => "symlink",
            tar::EntryType::Link => "hardlink",
            _ => "other",
        };
        out.push(Listed {
            path,
            kind,
            size: if kind == "file" { size } else { 0 },
            change: None,
        });
    }
    Ok(out)
}

/// Says of each entry whether `release` (the machine's running release) has its path:
/// `added` or `changed`. Whiteouts and opaque directories are left as they are.
pub fn against_release(repo: &Repo, release: CommitId, entries: &mut [Listed]) -> Result<()> {
    let tree = repo.objects.get_commit(&release)?.tree;
    for e in entries.iter_mut() {
        if matches!(e.kind, "whiteout" | "opaque") {
            continue;
        }
        let there = walk::lookup(&repo.objects, tree, e.path.as_bytes())?.is_some();
        e.change = Some(if there { "changed" } else { "added" });
    }
    Ok(())
}

/// What baking `capture` into `layer` changes in the layer (objects of the composed tree are
/// stored, nothing refers to them until [`bake`]).
pub fn plan(repo: &Repo, layer: &str, capture: CommitId) -> Result<Plan> {
    channel::check_name(layer)?;
    let head = channel::head(repo, layer)?;
    let upper = repo.objects.get_commit(&capture)?;
    let Some(head) = head else {
        let changes = list(repo, capture)?
            .into_iter()
            .map(|l| Change {
                path: l.path,
                change: ChangeKind::Added,
                entry_type: l.kind,
                fields: Vec::new(),
            })
            .collect();
        return Ok(Plan {
            capture,
            head: None,
            composed: None,
            changes,
        });
    };
    let lower = repo.objects.get_commit(&head)?;
    let composed = compose::apply(&repo.objects, &lower, &upper, Mode::Layer)?;
    // a commit of the result, only to compare it with the head (the bake makes its own)
    let probe = Commit {
        tree: composed.tree,
        root_meta: composed.root_meta.clone(),
        parent: Some(head),
        time: lower.time,
        message: String::new(),
        hardlinks: composed.hardlinks.clone(),
        entries: composed.entries,
        bytes: composed.bytes,
    };
    let (probe, _) = repo.objects.put_commit(&probe)?;
    repo.objects.flush()?;
    let changes = diff::diff_commits(&repo.objects, head, probe)?;
    Ok(Plan {
        capture,
        head: Some(head),
        composed: Some(composed),
        changes,
    })
}

/// Records a plan on the layer channel: the new head (the capture itself for a new layer).
/// The head must still be the plan's, or nothing moves.
pub fn bake(repo: &Repo, layer: &str, plan: &Plan, message: &str) -> Result<CommitId> {
    let now = channel::head(repo, layer)?;
    if now != plan.head {
        return Err(crate::Error::Busy(format!(
            "the layer channel {layer} moved while the bake was prepared: bake again"
        )));
    }
    match &plan.composed {
        Some(c) => Ok(compose::commit(repo, layer, c, message)?),
        None => {
            channel::move_to(
                repo,
                layer,
                plan.capture,
                channel::MoveKind::Commit,
                message,
            )?;
            Ok(plan.capture)
        }
    }
}
