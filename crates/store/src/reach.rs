//! What the channels reach: every commit any channel ever pointed at, their ancestors, and the
//! trees and chunks below them.

use std::collections::{HashMap, HashSet};

use crate::channel;
use crate::error::Result;
use crate::id::{ChunkId, CommitId, TreeId};
use crate::object::EntryKind;
use crate::repo::Repo;

/// Every commit named by a channel move, and the ancestors of those.
pub fn commits(repo: &Repo) -> Result<Vec<(CommitId, String)>> {
    commits_and(repo, &[])
}

/// [`commits`], plus `extra` commits (labelled "kept") and their ancestors.
pub fn commits_and(repo: &Repo, extra: &[CommitId]) -> Result<Vec<(CommitId, String)>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut starts: Vec<(CommitId, String)> = Vec::new();
    for name in channel::list(repo)? {
        for m in channel::history(repo, &name)? {
            starts.push((m.commit.0, name.clone()));
        }
    }
    starts.extend(extra.iter().map(|c| (*c, "kept".to_owned())));
    for (start, name) in starts {
        let mut next = Some(start);
        while let Some(id) = next {
            if !seen.insert(id) {
                break;
            }
            out.push((id, name.clone()));
            next = match repo.objects.get_commit(&id) {
                Ok(c) => c.parent,
                // The caller reads the commit again and reports it.
                Err(_) => None,
            };
        }
    }
    Ok(out)
}

/// Trees and chunks below a set of root trees; for each, up to `max_users` paths that use it.
#[derive(Default)]
pub struct Below {
    pub trees: HashMap<TreeId, Vec<String>>,
    pub chunks: HashMap<ChunkId, Vec<String>>,
    /// Trees that could not be read, with the error, and who uses them.
    pub bad_trees: Vec<(TreeId, crate::Error, Vec<String>)>,
}

pub fn below(repo: &Repo, roots: &[(TreeId, String)], max_users: usize) -> Below {
    let mut b = Below::default();
    let mut stack: Vec<(TreeId, String)> = roots.to_vec();
    let note = |v: &mut Vec<String>, who: &str| {
        if v.len() < max_users {
            v.push(who.to_owned());
        }
    };
    while let Some((tree, who)) = stack.pop() {
        if let Some(users) = b.trees.get_mut(&tree) {
            note(users, &who);
            continue;
        }
        b.trees.insert(tree, vec![who.clone()]);
        let t = match repo.objects.get_tree(&tree) {
            Ok(t) => t,
            Err(e) => {
                b.bad_trees.push((tree, e, vec![who]));
                continue;
            }
        };
        for e in t.entries {
            let path = format!(
                "{}/{}",
                who.trim_end_matches('/'),
                String::from_utf8_lossy(&e.name)
            );
            match e.kind {
                EntryKind::Dir(sub) => stack.push((sub, path)),
                EntryKind::File(c) => {
                    for ch in c.chunks {
                        note(b.chunks.entry(ch.id).or_default(), &path);
                    }
                }
                _ => {}
            }
        }
    }
    b
}
