//! Typed apt jobs: apt-get run non-interactively (chrooted into the sysroot when there is one)
//! with a lock timeout and the configuration files kept (`--force-confdef --force-confold`),
//! and deb822 source files written in `etc/apt/sources.list.d/NAME.sources` with their key in
//! `etc/apt/keyrings/`. One-line `.list` files are read (to say when a source is configured
//! twice) and never changed.

use std::path::{Path, PathBuf};

use semithin_protocol::job::{AptSource, check_package};

use super::exec::{End, Output, Runner};

/// The environment of every apt run.
pub const ENV: &[(&str, &str)] = &[
    ("DEBIAN_FRONTEND", "noninteractive"),
    ("APT_LISTCHANGES_FRONTEND", "none"),
];

/// Options of every apt-get run that changes packages.
fn changing(verb: &str) -> Vec<String> {
    [
        "apt-get",
        "-q",
        "-y",
        "-o",
        "DPkg::Lock::Timeout=300",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
        verb,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub fn update() -> Vec<String> {
    [
        "apt-get",
        "-q",
        "-o",
        "DPkg::Lock::Timeout=300",
        "-o",
        "Acquire::Languages=none",
        "--error-on=any",
        "update",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub fn install(packages: &[String]) -> Vec<String> {
    let mut a = changing("install");
    a.extend(packages.iter().cloned());
    a
}

pub fn remove(packages: &[String]) -> Vec<String> {
    let mut a = changing("remove");
    a.extend(packages.iter().cloned());
    a
}

pub fn upgrade(dist: bool) -> Vec<String> {
    changing(if dist { "dist-upgrade" } else { "upgrade" })
}

/// `apt-get install --only-upgrade` of the packages named; each name is checked again, since it
/// comes from apt's output.
pub fn only_upgrade(names: &[String]) -> Result<Vec<String>, String> {
    names.iter().try_for_each(|n| check_package(n))?;
    let mut a = changing("install");
    a.push("--only-upgrade".into());
    a.extend(names.iter().cloned());
    Ok(a)
}

/// Runs one apt command; an exit code other than 0 ends the job.
pub fn run(runner: &mut Runner, argv: &[String], out: &mut Output) -> Result<End, String> {
    out.line(&format!("$ {}", argv.join(" ")));
    runner.run(argv, ENV, out, true)
}

fn root_path(root: Option<&Path>, rel: &str) -> PathBuf {
    root.unwrap_or(Path::new("/")).join(rel)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let dir = path.parent().expect("a parent");
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.semithin-tmp",
        path.file_name().expect("a name").to_string_lossy()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming to {}: {e}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("syncing {}: {e}", dir.display()))
}

fn remove_file(path: &Path) -> Result<bool, String> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("removing {}: {e}", path.display())),
    }
}

/// The deb822 text of a source.
pub fn sources_text(s: &AptSource, key_path: &str, delivery: &str) -> String {
    format!(
        "# Written by semithin (job {delivery}); `semithin job apt source remove {name}` removes it.\n\
         Types: deb\nURIs: {uri}\nSuites: {suite}\nComponents: {components}\nSigned-By: {key_path}\n",
        name = s.name,
        uri = s.uri,
        suite = s.suite,
        components = s.components.join(" "),
    )
}

/// One-line sources (`deb URI SUITE COMPONENTS`, options in brackets skipped) of sources.list
/// and sources.list.d/*.list, with the file each is in.
pub fn one_line_sources(root: Option<&Path>) -> Vec<(PathBuf, String, String)> {
    let mut files = vec![root_path(root, "etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir(root_path(root, "etc/apt/sources.list.d")) {
        let mut more: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "list"))
            .collect();
        more.sort();
        files.extend(more);
    }
    let mut out = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let mut words = line.split_whitespace().peekable();
            if words.next() != Some("deb") {
                continue;
            }
            if words.peek().is_some_and(|w| w.starts_with('[')) {
                for w in words.by_ref() {
                    if w.ends_with(']') {
                        break;
                    }
                }
            }
            if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
                out.push((f.clone(), uri.to_owned(), suite.to_owned()));
            }
        }
    }
    out
}

/// Writes the source and its key; returns what was done.
pub fn add_source(root: Option<&Path>, s: &AptSource, delivery: &str) -> Result<String, String> {
    let mut said = Vec::new();
    let (ext, key) = s.key.file();
    let key_rel = format!("etc/apt/keyrings/{}.{ext}", s.name);
    let other = format!(
        "etc/apt/keyrings/{}.{}",
        s.name,
        if ext == "asc" { "gpg" } else { "asc" }
    );
    write_file(&root_path(root, &key_rel), &key)?;
    remove_file(&root_path(root, &other))?;
    said.push(format!("wrote /{key_rel}"));
    let path = root_path(root, &format!("etc/apt/sources.list.d/{}.sources", s.name));
    let existed = path.exists();
    write_file(
        &path,
        sources_text(s, &format!("/{key_rel}"), delivery).as_bytes(),
    )?;
    said.push(format!(
        "{} /etc/apt/sources.list.d/{}.sources",
        if existed { "replaced" } else { "wrote" },
        s.name
    ));
    let uri = s.uri.trim_end_matches('/');
    for (file, u, suite) in one_line_sources(root) {
        if u.trim_end_matches('/') == uri && suite == s.suite {
            said.push(format!(
                "note: {} configures {u} {suite} too (a one-line file, left intact)",
                file.strip_prefix(root.unwrap_or(Path::new("/")))
                    .map(|p| format!("/{}", p.display()))
                    .unwrap_or_else(|_| file.display().to_string())
            ));
        }
    }
    Ok(said.join("\n"))
}

/// Removes NAME.sources and its key. A one-line NAME.list is not semithin's to remove.
pub fn remove_source(root: Option<&Path>, name: &str) -> Result<String, String> {
    let path = root_path(root, &format!("etc/apt/sources.list.d/{name}.sources"));
    let list = root_path(root, &format!("etc/apt/sources.list.d/{name}.list"));
    let removed = remove_file(&path)?;
    let mut said = Vec::new();
    for ext in ["asc", "gpg"] {
        if remove_file(&root_path(root, &format!("etc/apt/keyrings/{name}.{ext}")))? {
            said.push(format!("removed /etc/apt/keyrings/{name}.{ext}"));
        }
    }
    if removed {
        said.insert(0, format!("removed /etc/apt/sources.list.d/{name}.sources"));
    } else if list.exists() {
        return Err(format!(
            "there is no /etc/apt/sources.list.d/{name}.sources; {name}.list is a one-line \
             source file, which semithin leaves intact (remove it by hand)"
        ));
    } else {
        said.insert(0, format!("no source {name}: nothing to remove"));
    }
    Ok(said.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use semithin_protocol::job::SourceKey;

    fn src() -> AptSource {
        AptSource {
            name: "test".into(),
            uri: "http://127.0.0.1:9/repo/".into(),
            suite: "testing".into(),
            components: vec!["main".into(), "extra".into()],
            key: SourceKey::Armored(
                "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nx\n-----END PGP PUBLIC KEY BLOCK-----\n"
                    .into(),
            ),
        }
    }

    #[test]
    fn sources_are_deb822_and_one_line_files_stay() {
        let d = tempfile::tempdir().unwrap();
        let root = Some(d.path());
        std::fs::create_dir_all(d.path().join("etc/apt/sources.list.d")).unwrap();
        let old = "deb [arch=amd64 signed-by=/k.gpg] http://127.0.0.1:9/repo testing main\n";
        std::fs::write(d.path().join("etc/apt/sources.list.d/test.list"), old).unwrap();
        let said = add_source(root, &src(), "d1").unwrap();
        assert!(said.contains("one-line file, left intact"), "{said}");
        let text =
            std::fs::read_to_string(d.path().join("etc/apt/sources.list.d/test.sources")).unwrap();
        assert!(text.contains(
            "Types: deb\nURIs: http://127.0.0.1:9/repo/\nSuites: testing\nComponents: main extra\nSigned-By: /etc/apt/keyrings/test.asc\n"
        ), "{text}");
        assert!(!text.to_lowercase().contains("trusted"));
        assert!(d.path().join("etc/apt/keyrings/test.asc").is_file());
        let said = remove_source(root, "test").unwrap();
        assert!(
            said.contains("removed /etc/apt/sources.list.d/test.sources"),
            "{said}"
        );
        assert!(!d.path().join("etc/apt/keyrings/test.asc").exists());
        assert_eq!(
            std::fs::read_to_string(d.path().join("etc/apt/sources.list.d/test.list")).unwrap(),
            old
        );
        let e = remove_source(root, "test").unwrap_err();
        assert!(e.contains("one-line"), "{e}");
        assert!(
            remove_source(root, "other")
                .unwrap()
                .contains("nothing to remove")
        );
    }

    #[test]
    fn apt_argv_has_the_options_and_no_shell() {
        let a = install(&["hello".into()]);
        assert_eq!(a[0], "apt-get");
        assert!(a.contains(&"Dpkg::Options::=--force-confold".to_owned()));
        assert!(a.contains(&"DPkg::Lock::Timeout=300".to_owned()));
        assert_eq!(a.last().unwrap(), "hello");
        assert!(only_upgrade(&["-oAPT::x=1".into()]).is_err());
    }
}
