//! What packages a root filesystem holds, from its `var/lib/dpkg/status` (no chroot, no dpkg),
//! and what changed between two of them: pure functions over text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// Where dpkg keeps its database of installed packages, relative to the root.
pub const STATUS: &str = "var/lib/dpkg/status";

/// Installed packages: name (with `:ARCH` when the same name is installed for two
/// architectures) → version.
pub type Packages = BTreeMap<String, String>;

/// The installed packages of a dpkg status file (`Status: install ok installed`).
pub fn parse_status(text: &str) -> Packages {
    let mut out = Packages::new();
    for stanza in text.split("\n\n") {
        let (mut name, mut version, mut arch, mut installed) = (None, None, None, false);
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Architecture: ") {
                arch = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                installed = v.trim() == "install ok installed";
            }
        }
        if let (Some(n), Some(v), true) = (name, version, installed) {
            let key = if out.contains_key(n) {
                format!("{n}:{}", arch.unwrap_or("?"))
            } else {
                n.to_owned()
            };
            out.insert(key, v.to_owned());
        }
    }
    out
}

/// A package whose version changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Changed {
    pub name: String,
    pub old: String,
    pub new: String,
}

/// A package added or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Package {
    pub name: String,
    pub version: String,
}

/// What changed between two package lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    pub added: Vec<Package>,
    pub removed: Vec<Package>,
    pub changed: Vec<Changed>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// "2 added, 1 removed, 3 changed".
    pub fn summary(&self) -> String {
        format!(
            "{} added, {} removed, {} changed",
            self.added.len(),
            self.removed.len(),
            self.changed.len()
        )
    }

    /// One line per package: `+ name version`, `- name version`, `~ name old -> new`.
    pub fn lines(&self) -> String {
        let mut s = String::new();
        for p in &self.added {
            let _ = writeln!(s, "+ {} {}", p.name, p.version);
        }
        for p in &self.removed {
            let _ = writeln!(s, "- {} {}", p.name, p.version);
        }
        for c in &self.changed {
            let _ = writeln!(s, "~ {} {} -> {}", c.name, c.old, c.new);
        }
        s
    }
}

/// What changed from `old` to `new`, each list sorted by name.
pub fn diff(old: &Packages, new: &Packages) -> Changes {
    let mut c = Changes::default();
    for (n, v) in new {
        match old.get(n) {
            None => c.added.push(Package {
                name: n.clone(),
                version: v.clone(),
            }),
            Some(o) if o != v => c.changed.push(Changed {
                name: n.clone(),
                old: o.clone(),
                new: v.clone(),
            }),
            Some(_) => {}
        }
    }
    for (n, v) in old {
        if !new.contains_key(n) {
            c.removed.push(Package {
                name: n.clone(),
                version: v.clone(),
            });
        }
    }
    c
}

/// A commit message: the title, then the package changes (`packages: 1 added, ...` and one
/// line per package).
pub fn message(title: &str, changes: &Changes) -> String {
    let mut m = format!("{title}\n\npackages: {}\n", changes.summary());
    m.push_str(&changes.lines());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS_TEXT: &str = "Package: hello\nStatus: install ok installed\nArchitecture: amd64\n\
Version: 2.10-3\nDescription: hi\n there\n\nPackage: gone\nStatus: deinstall ok config-files\n\
Version: 1.0\n\nPackage: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9\n\n\
Package: libc6\nStatus: install ok installed\nArchitecture: i386\nVersion: 2.36-9\n";

    #[test]
    fn installed_packages_are_read_from_the_status_file() {
        let p = parse_status(STATUS_TEXT);
        assert_eq!(
            p.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
            ["hello=2.10-3", "libc6=2.36-9", "libc6:i386=2.36-9"]
        );
    }

    #[test]
    fn changes_and_their_message() {
        let old: Packages = [("a", "1"), ("b", "1"), ("c", "1")]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .into();
        let new: Packages = [("b", "2"), ("c", "1"), ("d", "1")]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .into();
        let c = diff(&old, &new);
        assert_eq!(c.summary(), "1 added, 1 removed, 1 changed");
        assert_eq!(
            message("image add", &c),
            "image add\n\npackages: 1 added, 1 removed, 1 changed\n+ d 1\n- a 1\n~ b 1 -> 2\n"
        );
        assert!(diff(&new, &new).is_empty());
    }
}
