//! Resolving what the admin types into a commit id: a full id, a unique prefix of one (at least
//! 4 hex digits), a channel name, each optionally followed by `~N` (N parents back).

use crate::channel;
use crate::error::{Error, Result};
use crate::id::CommitId;
use crate::pack::ObjKind;
use crate::repo::Repo;

pub fn resolve(repo: &Repo, reference: &str) -> Result<CommitId> {
    let (base, back) = match reference.rsplit_once('~') {
        Some((base, n)) => {
            let n: usize = if n.is_empty() {
                1
            } else {
                n.parse().map_err(|_| Error::BadRef {
                    reference: reference.to_owned(),
                    reason: format!("{n:?} after ~ is not a number"),
                })?
            };
            (base, n)
        }
        None => (reference, 0),
    };
    let mut id = resolve_base(repo, base)?;
    for step in 0..back {
        let commit = repo.objects.get_commit(&id)?;
        id = commit.parent.ok_or_else(|| Error::BadRef {
            reference: reference.to_owned(),
            reason: format!("history ends after {step} version(s) back"),
        })?;
    }
    Ok(id)
}

fn resolve_base(repo: &Repo, base: &str) -> Result<CommitId> {
    if channel::check_name(base).is_ok()
        && let Some(head) = channel::head(repo, base)?
    {
        return Ok(head);
    }
    let is_hex = base.len() >= 4 && base.len() <= 64 && base.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_hex {
        return Err(Error::UnknownRef(base.to_owned()));
    }
    let prefix = base.to_ascii_lowercase();
    if prefix.len() == 64 {
        let id: CommitId = prefix
            .parse()
            .map_err(|_| Error::UnknownRef(base.to_owned()))?;
        if repo.objects.contains(ObjKind::Commit, id.as_bytes()) {
            return Ok(id);
        }
        return Err(Error::UnknownRef(base.to_owned()));
    }
    let found = repo.objects.commits_with_prefix(&prefix);
    match found.len() {
        0 => Err(Error::UnknownRef(base.to_owned())),
        1 => Ok(found[0]),
        count => Err(Error::AmbiguousRef {
            prefix: base.to_owned(),
            count,
        }),
    }
}
