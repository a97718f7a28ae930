//! Building a root filesystem from a [`Profile`]: mmdebstrap (minbase) into a build directory,
//! then in a [`Chroot`]: the apt sources as deb822 files with their keys, the packages, the
//! overlays, the scripts; then apt's lists, caches and logs removed and every time after
//! `SOURCE_DATE_EPOCH` clamped to it, so the same inputs give the same tree.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::chroot::{Chroot, apt_env, run_logged, unmount_all};
use crate::profile::{Profile, Source};
use crate::{Error, Event};

/// A directory for one build (or one wizard's checkout), removed with everything below it when
/// dropped: mounts first, never across a mount that stayed.
pub struct BuildDir {
    path: PathBuf,
}

impl BuildDir {
    /// A new directory `semithin-image-*` in `parent`.
    pub fn new(parent: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(parent).map_err(Error::io("making", parent))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = parent.join(format!("semithin-image-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).map_err(Error::io("making", &path))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the root filesystem is built.
    pub fn root(&self) -> PathBuf {
        self.path.join("root")
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        if unmount_all(&self.path) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The time of every file the build makes: the profile's `source_date_epoch`, else the
/// caller's (the environment's, or the mirror's Release date).
pub fn build(p: &Profile, sde: i64, dir: &BuildDir, report: &dyn Fn(Event)) -> Result<(), Error> {
    let root = dir.root();
    let step = |s: &str| {
        if crate::interrupted() {
            return Err(Error::Interrupted);
        }
        report(Event::Step(s));
        Ok(())
    };
    step(&format!(
        "mmdebstrap --variant=minbase {} from {}",
        p.suite, p.mirror
    ))?;
    mmdebstrap(p, &root, sde, report)?;
    let mut c = Chroot::enter(&root)?;
    c.set_env("SOURCE_DATE_EPOCH", &sde.to_string());
    step("writing the apt sources")?;
    write_sources(&root, p)?;
    if !p.packages.is_empty() || !p.sources.is_empty() {
        step("apt-get update")?;
        c.run("apt-get update", &["apt-get", "update"], report)?;
    }
    if !p.packages.is_empty() {
        step(&format!(
            "installing {} package(s): {}",
            p.packages.len(),
            p.packages.join(" ")
        ))?;
        install(&c, &p.packages, report)?;
    }
    for o in &p.overlays {
        step(&format!("laying over {}", o.display()))?;
        overlay(&root, o)?;
    }
    for s in &p.scripts {
        step(&format!("running {}", s.display()))?;
        script(&c, s, report)?;
    }
    drop(c);
    step("cleaning apt lists, caches and logs")?;
    clean(&root)?;
    clamp_times(&root, sde)?;
    Ok(())
}

fn mmdebstrap(p: &Profile, root: &Path, sde: i64, report: &dyn Fn(Event)) -> Result<(), Error> {
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--mode=root", "--format=directory", "--variant=minbase"])
        .arg(format!("--components={}", p.components.join(",")));
    if let Some(a) = &p.arch {
        cmd.arg(format!("--architectures={a}"));
    }
    let signed_by = p
        .mirror_key
        .as_ref()
        .map(|k| format!("[signed-by={}] ", k.display()))
        .unwrap_or_default();
    cmd.arg(&p.suite).arg(root).arg(format!(
        "deb {signed_by}{} {} {}",
        p.mirror,
        p.suite,
        p.components.join(" ")
    ));
    apt_env(&mut cmd);
    cmd.env("SOURCE_DATE_EPOCH", sde.to_string());
    run_logged(
        cmd,
        &format!("mmdebstrap of {} from {}", p.suite, p.mirror),
        report,
    )
    .map(|_| ())
}

/// A key file's name in the image: apt reads `.asc` as armored and `.gpg` as binary.
fn key_name(name: &str, key: &[u8]) -> String {
    if key.starts_with(b"-----BEGIN PGP") {
        format!("semithin-{name}.asc")
    } else {
        format!("semithin-{name}.gpg")
    }
}

/// The image's apt sources as deb822 files in `etc/apt/sources.list.d` (`debian.sources` for
/// the mirror, `NAME.sources` for each extra source), keys in `etc/apt/keyrings`; the one-line
/// `sources.list` mmdebstrap wrote (naming a key on the building machine) is removed.
pub fn write_sources(root: &Path, p: &Profile) -> Result<(), Error> {
    let keyrings = root.join("etc/apt/keyrings");
    let lists = root.join("etc/apt/sources.list.d");
    for d in [&keyrings, &lists] {
        std::fs::create_dir_all(d).map_err(Error::io("making", d))?;
    }
    let put_key = |name: &str, key: &Path| -> Result<String, Error> {
        let bytes = std::fs::read(key).map_err(Error::io("reading", key))?;
        let file = key_name(name, &bytes);
        let dest = keyrings.join(&file);
        std::fs::write(&dest, bytes).map_err(Error::io("writing", &dest))?;
        Ok(format!("/etc/apt/keyrings/{file}"))
    };
    let main = Source {
        name: "debian".to_owned(),
        uri: p.mirror.clone(),
        suite: p.suite.clone(),
        components: p.components.clone(),
        key: p.mirror_key.clone().unwrap_or_default(),
    };
    for s in std::iter::once(&main).chain(&p.sources) {
        let signed = if s.key.as_os_str().is_empty() {
            String::new()
        } else {
            format!("Signed-By: {}\n", put_key(&s.name, &s.key)?)
        };
        let text = format!(
            "Types: deb\nURIs: {}\nSuites: {}\nComponents: {}\n{signed}",
            s.uri,
            s.suite,
            s.components.join(" ")
        );
        let dest = lists.join(format!("{}.sources", s.name));
        std::fs::write(&dest, text).map_err(Error::io("writing", &dest))?;
    }
    let old = root.join("etc/apt/sources.list");
    if old.exists() {
        std::fs::remove_file(&old).map_err(Error::io("removing", &old))?;
    }
    Ok(())
}

/// apt-get install of `packages` (no recommends).
pub fn install(c: &Chroot, packages: &[String], report: &dyn Fn(Event)) -> Result<(), Error> {
    let mut argv = vec![
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
        "--",
    ];
    argv.extend(packages.iter().map(String::as_str));
    c.run("apt-get install", &argv, report).map(|_| ())
}

/// apt-get purge of `packages`, and of what only they needed.
pub fn purge(c: &Chroot, packages: &[&str], report: &dyn Fn(Event)) -> Result<(), Error> {
    let mut argv = vec!["apt-get", "purge", "-y", "--auto-remove", "--"];
    argv.extend(packages);
    c.run("apt-get purge", &argv, report).map(|_| ())
}

/// Copies `dir` over the root, inside the chroot's own view (so no symlink of the image can
/// point a write outside it): files owned by root, modes kept.
pub fn overlay(root: &Path, dir: &Path) -> Result<(), Error> {
    let what = format!("laying {} over the image", dir.display());
    let pack = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["--owner=0", "--group=0", "--numeric-owner", "-cf", "-", "."])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(Error::io("running tar on", dir))?;
    let Some(stdout) = pack.stdout else {
        return Err(Error::Invalid(format!("{what}: no pipe from tar")));
    };
    let out = Command::new("chroot")
        .arg(root)
        .args(["tar", "-xpf", "-", "-C", "/", "--no-overwrite-dir"])
        .stdin(stdout)
        .output()
        .map_err(Error::io("running tar in", root))?;
    if !out.status.success() {
        return Err(Error::Failed {
            what,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Runs a script of the profile chrooted (copied to /tmp, run by its `#!` line, removed).
pub fn script(c: &Chroot, file: &Path, report: &dyn Fn(Event)) -> Result<(), Error> {
    let inside = "/tmp/semithin-image-script";
    let dest = c.root().join(inside.trim_start_matches('/'));
    std::fs::copy(file, &dest).map_err(Error::io("copying", file))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
        .map_err(Error::io("writing", &dest))?;
    let r = c.run(&format!("script {}", file.display()), &[inside], report);
    let _ = std::fs::remove_file(&dest);
    r.map(|_| ())
}

/// Removes what differs between two builds of the same inputs and what a machine does not need:
/// apt's lists and caches, the logs of apt, dpkg and ldconfig, /tmp.
pub fn clean(root: &Path) -> Result<(), Error> {
    let empty = |dir: &str, keep: &[&str]| -> Result<(), Error> {
        let d = root.join(dir);
        let Ok(rd) = std::fs::read_dir(&d) else {
            return Ok(());
        };
        for e in rd {
            let e = e.map_err(Error::io("reading", &d))?;
            let name = e.file_name();
            if keep.iter().any(|k| name == **k) {
                continue;
            }
            let p = e.path();
            let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(Error::io("removing", &p))?;
        }
        Ok(())
    };
    empty("var/lib/apt/lists", &["partial", "lock"])?;
    empty("var/lib/apt/lists/partial", &[])?;
    empty("var/cache/apt/archives", &["partial", "lock"])?;
    empty("var/cache/apt/archives/partial", &[])?;
    empty("tmp", &[])?;
    for f in [
        "var/cache/apt/pkgcache.bin",
        "var/cache/apt/srcpkgcache.bin",
        "var/log/apt/history.log",
        "var/log/apt/term.log",
        "var/log/apt/eipp.log.xz",
        "var/log/dpkg.log",
        "var/log/alternatives.log",
        "var/cache/ldconfig/aux-cache",
    ] {
        let p = root.join(f);
        if std::fs::symlink_metadata(&p).is_ok() {
            std::fs::remove_file(&p).map_err(Error::io("removing", &p))?;
        }
    }
    Ok(())
}

/// Sets the times of every entry newer than `sde` to `sde` (symlinks themselves, never their
/// targets); an explicit stack, never recursion on depth, never across a mount.
pub fn clamp_times(root: &Path, sde: i64) -> Result<(), Error> {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, utimensat};
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::symlink_metadata(root)
        .map_err(Error::io("reading", root))?
        .dev();
    let t = Timespec {
        tv_sec: sde,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).map_err(Error::io("reading", &p))?;
        if m.is_dir() && m.dev() == dev {
            for e in std::fs::read_dir(&p).map_err(Error::io("reading", &p))? {
                stack.push(e.map_err(Error::io("reading", &p))?.path());
            }
        }
        if m.mtime() > sde || m.atime() > sde {
            utimensat(CWD, &p, &times, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| Error::io("setting the time of", &p)(e.into()))?;
        }
    }
    // Directories were read after their entries' times were set: nothing changed them since.
    Ok(())
}

/// The `Date:` of a Release or InRelease file, in seconds since the epoch: the default
/// `SOURCE_DATE_EPOCH` of a build (the same mirror state gives the same time).
pub fn release_date(text: &str) -> Option<i64> {
    let line = text.lines().find_map(|l| l.strip_prefix("Date: "))?;
    jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(line.trim())
        .ok()
        .map(|t| t.as_second())
}

/// The packages installed in the root filesystem at `root`.
pub fn packages_of(root: &Path) -> Result<crate::dpkg::Packages, Error> {
    let f = root.join(crate::dpkg::STATUS);
    let text = std::fs::read_to_string(&f).map_err(Error::io("reading", &f))?;
    Ok(crate::dpkg::parse_status(&text))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_release_date_is_the_default_time() {
        let t = "Origin: Debian\nDate: Sat, 10 May 2025 09:01:02 UTC\nSuite: bookworm\n";
        assert_eq!(super::release_date(t), Some(1_746_867_662));
        assert_eq!(super::release_date("Suite: x\n"), None);
    }

    #[test]
    fn times_are_clamped_and_cleaning_removes_logs() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("var/log/apt")).unwrap();
        std::fs::create_dir_all(r.join("var/lib/apt/lists/partial")).unwrap();
        std::fs::write(r.join("var/log/dpkg.log"), "x").unwrap();
        std::fs::write(r.join("var/lib/apt/lists/x_Packages"), "x").unwrap();
        std::fs::write(r.join("keep"), "x").unwrap();
        std::os::unix::fs::symlink("/nowhere", r.join("link")).unwrap();
        super::clean(r).unwrap();
        assert!(!r.join("var/log/dpkg.log").exists());
        assert!(!r.join("var/lib/apt/lists/x_Packages").exists());
        assert!(r.join("var/lib/apt/lists/partial").is_dir());
        super::clamp_times(r, 1_000).unwrap();
        use std::os::unix::fs::MetadataExt;
        for p in ["keep", "link", "var/log", ""] {
            let m = std::fs::symlink_metadata(r.join(p)).unwrap();
            assert_eq!(m.mtime(), 1_000, "{p}");
        }
    }
}
