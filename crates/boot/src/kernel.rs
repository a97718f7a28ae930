//! Finding a release's kernel in its stored tree, without a checkout.
//!
//! A kernel counts when its modules are in the tree: `boot/vmlinuz-VERSION` (Debian's layout) or
//! `usr/lib/modules/VERSION/vmlinuz` (the layout of newer distributions), with
//! `usr/lib/modules/VERSION/` or `lib/modules/VERSION/` a directory. Of several, the highest
//! version (compared as `sort -V` does) is the release's kernel.

use std::cmp::Ordering;
use std::io::Write;

use semithin_store::TreeId;
use semithin_store::object::{EntryKind, FileContent};
use semithin_store::objects::ObjectStore;
use semithin_store::walk::lookup;

use crate::error::{Error, Result};

/// Where the module trees may be, relative to the root.
const MODULE_DIRS: [&str; 2] = ["usr/lib/modules", "lib/modules"];

/// The kernel of a tree.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// The kernel's release (`uname -r`), the name of its modules directory.
    pub version: String,
    /// The image's path, relative to the root.
    pub path: String,
    pub content: FileContent,
}

/// A kernel image found in the tree, before its modules are looked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub version: String,
    pub path: String,
    pub has_modules: bool,
}

/// Compares two version strings as `sort -V` does for kernel releases: runs of digits as
/// numbers, everything else byte by byte.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (da, db) = (trim_zeros(&a[..na]), trim_zeros(&b[..nb]));
                let o = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
                if o != Ordering::Equal {
                    return o;
                }
                (a, b) = (&a[na..], &b[nb..]);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                (a, b) = (&a[1..], &b[1..]);
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|c| **c == b'0').count();
    &d[n..]
}

/// A version that can be a kernel release: not empty, no `/`, not `.` or `..`.
fn plausible(version: &str) -> bool {
    !version.is_empty() && version != "." && version != ".." && !version.contains('/')
}

/// The candidate to boot: the highest version whose modules are there; `None` when none has.
pub fn choose(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates
        .iter()
        .filter(|c| c.has_modules)
        .max_by(|a, b| version_cmp(&a.version, &b.version).then_with(|| b.path.cmp(&a.path)))
}

fn is_dir(store: &ObjectStore, root: TreeId, path: &str) -> Result<bool> {
    Ok(matches!(
        lookup(store, root, path.as_bytes())?,
        Some(e) if matches!(e.kind, EntryKind::Dir(_))
    ))
}

fn names(store: &ObjectStore, root: TreeId, dir: &str) -> Result<Vec<(String, EntryKind)>> {
    let Some(e) = lookup(store, root, dir.as_bytes())? else {
        return Ok(Vec::new());
    };
    let EntryKind::Dir(t) = e.kind else {
        return Ok(Vec::new());
    };
    Ok(store
        .get_tree(&t)?
        .entries
        .into_iter()
        .filter_map(|e| String::from_utf8(e.name).ok().map(|n| (n, e.kind)))
        .collect())
}

/// The regular file at `path`, following symlinks inside the tree (a few, relative or absolute
/// to the tree's root).
pub(crate) fn regular_file(
    store: &ObjectStore,
    root: TreeId,
    path: &str,
) -> Result<Option<FileContent>> {
    let mut path = path.to_owned();
    for _ in 0..8 {
        match lookup(store, root, path.as_bytes())?.map(|e| e.kind) {
            Some(EntryKind::File(c)) => return Ok(Some(c)),
            Some(EntryKind::Symlink(target)) => {
                let target = String::from_utf8_lossy(&target).into_owned();
                let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                path = if let Some(abs) = target.strip_prefix('/') {
                    abs.to_owned()
                } else {
                    normalize(&format!("{dir}/{target}"))
                };
            }
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// `a/./b/../c` → `a/c`, never above the root.
fn normalize(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    out.join("/")
}

/// Every kernel image of the tree whose version is plausible, with whether its modules are there.
pub fn candidates(store: &ObjectStore, root: TreeId) -> Result<Vec<Candidate>> {
    let mut out = Vec::new();
    let has_modules = |v: &str| -> Result<bool> {
        for d in MODULE_DIRS {
            if is_dir(store, root, &format!("{d}/{v}"))? {
                return Ok(true);
            }
        }
        Ok(false)
    };
    for (name, _) in names(store, root, "boot")? {
        if let Some(v) = name.strip_prefix("vmlinuz-").filter(|v| plausible(v)) {
            let path = format!("boot/{name}");
            if regular_file(store, root, &path)?.is_some() {
                out.push(Candidate {
                    version: v.to_owned(),
                    has_modules: has_modules(v)?,
                    path,
                });
            }
        }
    }
    for d in MODULE_DIRS {
        for (v, kind) in names(store, root, d)? {
            if !plausible(&v) || !matches!(kind, EntryKind::Dir(_)) {
                continue;
            }
            let path = format!("{d}/{v}/vmlinuz");
            if regular_file(store, root, &path)?.is_some() {
                out.push(Candidate {
                    version: v,
                    has_modules: true,
                    path,
                });
            }
        }
    }
    Ok(out)
}

/// The kernel of the tree `root`, or [`Error::NoKernel`] saying what was looked for and found.
pub fn find(store: &ObjectStore, root: TreeId) -> Result<Kernel> {
    let all = candidates(store, root)?;
    let Some(c) = choose(&all) else {
        let reason = if all.is_empty() {
            "no boot/vmlinuz-VERSION nor usr/lib/modules/VERSION/vmlinuz".to_owned()
        } else {
            let v: Vec<&str> = all.iter().map(|c| c.path.as_str()).collect();
            format!(
                "{} found, but no usr/lib/modules/VERSION/ for it (the kernel's modules)",
                v.join(", ")
            )
        };
        return Err(Error::NoKernel { reason });
    };
    let content = regular_file(store, root, &c.path)?.expect("a candidate is a regular file");
    Ok(Kernel {
        version: c.version.clone(),
        path: c.path.clone(),
        content,
    })
}

/// What a machine boots a release with from a boot loader: its kernel ([`find`]) and the initrd
/// beside it, `boot/initrd.img-VERSION` as Debian's initramfs-tools names it.
#[derive(Clone, Debug)]
pub struct BootFiles {
    pub kernel: Kernel,
    /// The initrd's path, relative to the root.
    pub initrd_path: String,
    pub initrd: FileContent,
}

/// The kernel and initrd of the tree `root`: [`Error::NoKernel`] without a kernel, and the
/// same error saying so when the kernel has no `boot/initrd.img-VERSION` beside it.
pub fn boot_files(store: &ObjectStore, root: TreeId) -> Result<BootFiles> {
    let kernel = find(store, root)?;
    let initrd_path = format!("boot/initrd.img-{}", kernel.version);
    let Some(initrd) = regular_file(store, root, &initrd_path)? else {
        return Err(Error::NoKernel {
            reason: format!(
                "{} has no initrd: {initrd_path} is not in the release (install \
                 initramfs-tools in the image, with semithin's hook, so the kernel's package makes it)",
                kernel.path
            ),
        });
    };
    Ok(BootFiles {
        kernel,
        initrd_path,
        initrd,
    })
}

/// Writes a stored file's content to `out`, each chunk verified as it is read.
pub fn write_content(
    store: &ObjectStore,
    content: &FileContent,
    out: &mut dyn Write,
) -> Result<()> {
    for c in &content.chunks {
        let bytes = store.get_chunk(&c.id)?;
        out.write_all(&bytes).map_err(|e| Error::Write {
            what: "a boot file".into(),
            source: e,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(v: &str, m: bool) -> Candidate {
        Candidate {
            version: v.into(),
            path: format!("boot/vmlinuz-{v}"),
            has_modules: m,
        }
    }

    #[test]
    fn versions_compare_as_sort_v() {
        assert_eq!(
            version_cmp("6.1.0-9-amd64", "6.1.0-10-amd64"),
            Ordering::Less
        );
        assert_eq!(version_cmp("6.10.0", "6.9.12"), Ordering::Greater);
        assert_eq!(version_cmp("6.1.0", "6.1.0"), Ordering::Equal);
        assert_eq!(version_cmp("6.1.0", "6.1.0-1"), Ordering::Less);
        assert_eq!(version_cmp("6.01", "6.1"), Ordering::Equal);
    }

    #[test]
    fn the_highest_kernel_with_modules_is_chosen() {
        let all = [
            cand("6.1.0-9-amd64", true),
            cand("6.1.0-10-amd64", true),
            cand("6.2.0-1-amd64", false),
        ];
        assert_eq!(choose(&all).unwrap().version, "6.1.0-10-amd64");
        assert!(choose(&[cand("6.2.0", false)]).is_none());
        assert!(choose(&[]).is_none());
    }

    #[test]
    fn paths_are_normalized_inside_the_root() {
        assert_eq!(normalize("boot/../boot/./vmlinuz-1"), "boot/vmlinuz-1");
        assert_eq!(normalize("../../etc"), "etc");
        assert!(!plausible(".."));
        assert!(!plausible(""));
        assert!(plausible("6.1.0-50-amd64"));
    }
}
