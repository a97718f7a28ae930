//! The plan of a delta, as a pure function of the two releases' listings: which trees and files
//! the machine lacks (in [`crate::order`]'s canonical order), and for each the old content of the
//! machine it is patched against, if any.
//!
//! A file's base is the old file at the same path; failing that, the old file that is the same
//! file renamed: the same path once every run of digits is read as one number
//! (`libfoo.so.1.2` → `libfoo.so.1.3`, `python3.11/x.py` → `python3.12/x.py`), of a size within
//! a factor of eight, and gone from the new release. A tree's base is the old tree at its path.

use std::collections::HashMap;

use semithin_store::TreeId;
use semithin_store::object::{FileContent, Tree};

use crate::listing::Listing;
use crate::order::{MissingTrees, missing_files};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeItem {
    pub path: Vec<u8>,
    pub id: TreeId,
    /// A directory path in the old release.
    pub base: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileItem {
    pub path: Vec<u8>,
    pub content: FileContent,
    /// A regular file's path in the old release.
    pub base: Option<Vec<u8>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub trees: Vec<TreeItem>,
    pub files: Vec<FileItem>,
}

impl Plan {
    /// Bytes of file content the machine lacks.
    pub fn file_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.content.size).sum()
    }
}

/// A path with every run of digits replaced by `#`: the key under which renamed versions of a
/// file meet.
pub fn version_key(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut in_digits = false;
    for &b in path {
        if b.is_ascii_digit() {
            if !in_digits {
                out.push(b'#');
            }
            in_digits = true;
        } else {
            out.push(b);
            in_digits = false;
        }
    }
    out
}

/// What a machine running `old` needs to reach `new` (both listings complete).
pub fn plan(old: &Listing, new: &Listing) -> Plan {
    let Some(root) = new.root else {
        return Plan::default();
    };
    let mut walk = MissingTrees::new(root, old.tree_ids());
    let mut trees: Vec<(Vec<u8>, &Tree)> = Vec::new();
    let mut items = Vec::new();
    while let Some((path, id)) = walk.next_tree() {
        let tree = &new.trees[&id];
        walk.expand(&path, tree);
        let base = old.dirs.contains_key(&path).then(|| path.clone());
        items.push(TreeItem {
            path: path.clone(),
            id,
            base,
        });
        trees.push((path, tree));
    }

    // Old files that the new release no longer has at their path, by version key.
    let mut renamed: HashMap<Vec<u8>, Vec<&Vec<u8>>> = HashMap::new();
    for p in old.files.keys() {
        if !new.files.contains_key(p) {
            renamed.entry(version_key(p)).or_default().push(p);
        }
    }
    for v in renamed.values_mut() {
        v.sort();
    }
    let old_hashes = old.file_hashes();
    let files = missing_files(&trees, &old_hashes)
        .into_iter()
        .map(|(path, content)| {
            let base = match old.files.get(&path) {
                Some(_) => Some(path.clone()),
                None => renamed.get(&version_key(&path)).and_then(|cands| {
                    let size = content.size.max(1);
                    cands
                        .iter()
                        .filter(|c| {
                            let s = old.files[**c].size.max(1);
                            s <= size * 8 && size <= s * 8
                        })
                        .min_by_key(|c| old.files[**c].size.abs_diff(content.size))
                        .map(|c| (*c).clone())
                }),
            };
            FileItem {
                path,
                content,
                base,
            }
        })
        .collect();
    Plan {
        trees: items,
        files,
    }
}

#[cfg(test)]
mod tests {
    use semithin_store::FileHash;
    use semithin_store::object::{ChunkRef, Entry, EntryKind, Meta};

    use super::*;

    fn file(name: &str, data: &[u8]) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            meta: Meta::default(),
            kind: EntryKind::File(FileContent {
                size: data.len() as u64,
                hash: FileHash::of(data),
                chunks: vec![ChunkRef {
                    id: semithin_store::ChunkId::of(data),
                    len: data.len() as u32,
                }],
            }),
        }
    }

    fn dir(name: &str, t: &Tree) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            meta: Meta::default(),
            kind: EntryKind::Dir(TreeId::of(&t.encode())),
        }
    }

    /// A listing from nested trees given as (path, tree), root first.
    fn listing(trees: Vec<(&str, Tree)>) -> Listing {
        let mut l = Listing::default();
        for (path, t) in trees {
            let id = TreeId::of(&t.encode());
            if path.is_empty() {
                l.root = Some(id);
            }
            for e in &t.entries {
                if let EntryKind::File(c) = &e.kind {
                    let p = crate::listing::join(path.as_bytes(), &e.name);
                    l.files.insert(p, c.clone());
                }
            }
            l.dirs.insert(path.as_bytes().to_vec(), id);
            l.trees.insert(id, t);
        }
        l
    }

    fn tree(mut entries: Vec<Entry>) -> Tree {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Tree { entries }
    }

    #[test]
    fn changed_and_renamed_files_are_patched_against_their_old_versions() {
        let lib_old = tree(vec![
            file("libfoo.so.1.2", &[1; 1000]),
            file("same", b"unchanged"),
        ]);
        let etc_old = tree(vec![file("motd", b"hello")]);
        let old = listing(vec![
            ("", tree(vec![dir("lib", &lib_old), dir("etc", &etc_old)])),
            ("lib", lib_old),
            ("etc", etc_old.clone()),
        ]);
        let lib_new = tree(vec![
            file("libfoo.so.1.3", &[2; 1100]),
            file("same", b"unchanged"),
            file("brand-new", b"new"),
            file("copy", b"hello"),
        ]);
        let new = listing(vec![
            ("", tree(vec![dir("lib", &lib_new), dir("etc", &etc_old)])),
            ("lib", lib_new),
            ("etc", etc_old),
        ]);
        let p = plan(&old, &new);
        // the root and lib changed; etc did not, so it is not even walked
        let paths: Vec<&[u8]> = p.trees.iter().map(|t| t.path.as_slice()).collect();
        assert_eq!(paths, vec![&b""[..], b"lib"]);
        assert!(p.trees.iter().all(|t| t.base.as_ref() == Some(&t.path)));
        // "copy" has content the old release has (etc/motd): not sent at all
        let files: Vec<(String, Option<String>)> = p
            .files
            .iter()
            .map(|f| {
                (
                    String::from_utf8_lossy(&f.path).into_owned(),
                    f.base
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).into_owned()),
                )
            })
            .collect();
        assert_eq!(
            files,
            vec![
                ("lib/brand-new".to_owned(), None),
                (
                    "lib/libfoo.so.1.3".to_owned(),
                    Some("lib/libfoo.so.1.2".to_owned())
                ),
            ]
        );
        assert_eq!(p.file_bytes(), 1103);
    }

    #[test]
    fn a_rename_needs_a_similar_size_and_the_old_path_gone() {
        let old_root = tree(vec![
            file("tool-1", &[1; 100]),
            file("data-1", &[1; 100_000]),
        ]);
        let old = listing(vec![("", old_root)]);
        let new_root = tree(vec![
            file("tool-1", &[3; 100]),
            file("tool-2", &[2; 120]),
            file("data-2", &[2; 10]),
        ]);
        let new = listing(vec![("", new_root)]);
        let p = plan(&old, &new);
        let base = |name: &str| {
            p.files
                .iter()
                .find(|f| f.path == name.as_bytes())
                .unwrap()
                .base
                .clone()
        };
        assert_eq!(base("tool-1"), Some(b"tool-1".to_vec()), "same path");
        // tool-1 is still there, so tool-2 is new; data-2 is 10,000 times smaller than data-1
        assert_eq!(base("tool-2"), None);
        assert_eq!(base("data-2"), None);
    }

    #[test]
    fn version_keys() {
        assert_eq!(
            version_key(b"libssl.so.3.0.11"),
            b"libssl.so.#.#.#".to_vec()
        );
        assert_eq!(
            version_key(b"python3.11/os.py"),
            b"python#.#/os.py".to_vec()
        );
        assert_eq!(version_key(b"plain"), b"plain".to_vec());
    }

    #[test]
    fn identical_releases_need_nothing() {
        let t = tree(vec![file("a", b"a")]);
        let l = listing(vec![("", t)]);
        assert_eq!(plan(&l, &l), Plan::default());
    }
}
