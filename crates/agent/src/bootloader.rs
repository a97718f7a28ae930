//! Boot loader entries per deployment (docs/BOOT.md, "Kernels, initramfs and the boot loader"):
//! with `boot_loader = "systemd-boot"`, the EFI system partition holds, for each kept
//! deployment, its own kernel and initrd (from the release's tree, read from the store so each
//! chunk is verified) and a Boot Loader Specification type #1 entry
//! `loader/entries/semithin-ID.conf` whose options say `semithin.deployment=ID`. The default
//! entry (`default` in `loader/loader.conf`) follows `current`; a release under trial is booted
//! once through systemd-boot's `LoaderEntryOneShot` EFI variable, which the boot loader deletes
//! as it reads it, so a trial boot that never confirms is followed by the previous default.
//!
//! Every file is written under a temporary name, synced and renamed over the old one (as
//! atomic as FAT allows); entries are written after their kernel and initrd, removed before.

use std::io::Write;
use std::path::{Path, PathBuf};

use semithin_store::CommitId;
use semithin_store::objects::ObjectStore;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// systemd-boot's vendor GUID for its variables (the Boot Loader Interface).
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// EFI_VARIABLE_NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
const EFI_ATTRS: u32 = 0x7;
/// Where the kernels live on the ESP: `semithin/ID/{vmlinuz,initrd.img}`.
const DIR: &str = "semithin";

/// Which boot loader the agent keeps entries for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// None: the base system's boot loader and kernel boot every deployment.
    #[default]
    None,
    /// systemd-boot, with Boot Loader Specification type #1 entries on the ESP.
    SystemdBoot,
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Kind::None),
            "systemd-boot" => Ok(Kind::SystemdBoot),
            _ => Err(format!(
                "unknown boot loader {s:?}: it is `systemd-boot` or `none`"
            )),
        }
    }
}

/// The ESP and how entries are written.
#[derive(Clone, Debug)]
pub struct Loader {
    pub esp: PathBuf,
    /// efivarfs (`/sys/firmware/efi/efivars`).
    pub efivars: PathBuf,
    /// The kernel command line of every entry, before `semithin.deployment=ID`.
    pub options: String,
}

/// The entry's id (its file name), as `LoaderEntryOneShot` and `default` name it.
pub fn entry_id(release: &str) -> String {
    format!("semithin-{release}.conf")
}

/// The options of the running kernel that an entry keeps: all but those the boot loader and
/// the entry add (`semithin.deployment=`, `initrd=`, `BOOT_IMAGE=`), and `semithin.grow`, which
/// only the first entry of a new disk has.
pub fn options_from_cmdline(cmdline: &str) -> String {
    cmdline
        .split_whitespace()
        .filter(|w| {
            !w.starts_with("semithin.deployment=")
                && *w != "semithin.grow"
                && !w.starts_with("initrd=")
                && !w.starts_with("BOOT_IMAGE=")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The text of a deployment's entry.
pub fn entry_text(release: &str, kernel_version: &str, options: &str) -> String {
    let short = release.get(..12).unwrap_or(release);
    let mut opts = options.trim().to_owned();
    if !opts.is_empty() {
        opts.push(' ');
    }
    format!(
        "# Written by the semithin agent: deployment {release}\n\
         title semithin {short} (kernel {kernel_version})\n\
         version {kernel_version}\n\
         linux /{DIR}/{release}/vmlinuz\n\
         initrd /{DIR}/{release}/initrd.img\n\
         options {opts}semithin.deployment={release}\n"
    )
}

/// `loader.conf` with its `default` line set to `id`, every other line kept.
pub fn with_default(conf: &str, id: &str) -> String {
    let mut out = format!("default {id}\n");
    for l in conf.lines() {
        let key = l.split_whitespace().next().unwrap_or("");
        if key != "default" {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// The `default` of a `loader.conf`.
pub fn default_of(conf: &str) -> Option<&str> {
    conf.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("default")).then(|| w.next()).flatten()
    })
}

/// The release an entry file name is for (`semithin-ID.conf`, also with a boot counter).
fn entry_release(name: &str) -> Option<&str> {
    let id = name.strip_prefix("semithin-")?.strip_suffix(".conf")?;
    let id = id.split('+').next().unwrap_or(id);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

fn io(what: &'static str, p: &Path) -> impl FnOnce(std::io::Error) -> Error {
    Error::io(what, p)
}

/// Writes `bytes` to `path` through a temporary name beside it: synced, renamed, the
/// directory synced.
fn put(path: &Path, write: impl FnOnce(&mut std::fs::File) -> Result<()>) -> Result<()> {
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let name = path.file_name().expect("a file name").to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    write(&mut f)?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("renaming into", path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}

impl Loader {
    fn entries(&self) -> PathBuf {
        self.esp.join("loader/entries")
    }

    fn conf(&self) -> PathBuf {
        self.esp.join("loader/loader.conf")
    }

    fn oneshot_var(&self) -> PathBuf {
        self.efivars
            .join(format!("LoaderEntryOneShot-{LOADER_GUID}"))
    }

    /// Checks that the ESP is there before anything is written to it.
    fn check(&self) -> Result<()> {
        if !self.esp.join("loader").is_dir() {
            return Err(Error::Config(format!(
                "boot_loader = \"systemd-boot\": {} has no loader/ directory: is the EFI system \
                 partition mounted there, with systemd-boot installed (`bootctl install`)?",
                self.esp.display()
            )));
        }
        Ok(())
    }

    /// The releases that have an entry.
    pub fn entry_releases(&self) -> Result<Vec<String>> {
        let dir = self.entries();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("reading", &dir)(e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(io("reading", &dir))?;
            if let Some(r) = entry_release(&e.file_name().to_string_lossy()) {
                out.push(r.to_owned());
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Makes `release`'s kernel, initrd and entry unless its entry is there. The files come from
    /// the store (every chunk verified), as the release's tree has them.
    pub fn ensure(&self, store: &ObjectStore, release: &str) -> Result<bool> {
        self.check()?;
        let entry = self.entries().join(entry_id(release));
        if entry.exists() {
            return Ok(false);
        }
        let commit: CommitId = release.parse().map_err(|_| Error::Release {
            release: release.into(),
            reason: "not a release id".into(),
        })?;
        let tree = store.get_commit(&commit)?.tree;
        let files = semithin_boot::kernel::boot_files(store, tree).map_err(|e| Error::Release {
            release: release.into(),
            reason: format!("no boot loader entry can be made: {e}"),
        })?;
        let dir = self.esp.join(DIR).join(release);
        for (name, content) in [
            ("vmlinuz", &files.kernel.content),
            ("initrd.img", &files.initrd),
        ] {
            let p = dir.join(name);
            put(&p, |f| {
                semithin_boot::kernel::write_content(store, content, f).map_err(|e| {
                    Error::Release {
                        release: release.into(),
                        reason: format!("writing {}: {e}", p.display()),
                    }
                })
            })?;
        }
        let text = entry_text(release, &files.kernel.version, &self.options);
        put(&entry, |f| {
            f.write_all(text.as_bytes()).map_err(io("writing", &entry))
        })?;
        Ok(true)
    }

    /// Points `loader.conf`'s `default` at `release`'s entry (unless it does already).
    pub fn set_default(&self, release: &str) -> Result<()> {
        self.check()?;
        let path = self.conf();
        let conf = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io("reading", &path)(e)),
        };
        let id = entry_id(release);
        if default_of(&conf) == Some(id.as_str()) {
            return Ok(());
        }
        let text = with_default(&conf, &id);
        put(&path, |f| {
            f.write_all(text.as_bytes()).map_err(io("writing", &path))
        })
    }

    /// The release `loader.conf`'s default entry is for.
    pub fn default_release(&self) -> Option<String> {
        let conf = std::fs::read_to_string(self.conf()).ok()?;
        entry_release(default_of(&conf)?).map(str::to_owned)
    }

    /// Removes the entries (entry first, then its kernel and initrd) of releases not in `keep`;
    /// the releases removed.
    pub fn prune(&self, keep: &[&str]) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        let dir = self.entries();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd {
                let e = e.map_err(io("reading", &dir))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(r) = entry_release(&name) else {
                    continue;
                };
                if keep.contains(&r) {
                    continue;
                }
                let p = e.path();
                std::fs::remove_file(&p).map_err(io("removing", &p))?;
                removed.push(r.to_owned());
            }
            sync_dir(&dir)?;
        }
        let files = self.esp.join(DIR);
        if let Ok(rd) = std::fs::read_dir(&files) {
            for e in rd {
                let e = e.map_err(io("reading", &files))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if keep.contains(&name.as_str()) {
                    continue;
                }
                let p = e.path();
                std::fs::remove_dir_all(&p).map_err(io("removing", &p))?;
            }
            sync_dir(&files)?;
        }
        removed.sort();
        removed.dedup();
        Ok(removed)
    }

    /// Asks systemd-boot to boot `release`'s entry once, at the next boot.
    pub fn boot_once(&self, release: &str) -> Result<()> {
        self.clear_once()?;
        let mut value = EFI_ATTRS.to_le_bytes().to_vec();
        for u in entry_id(release).encode_utf16().chain([0]) {
            value.extend_from_slice(&u.to_le_bytes());
        }
        let p = self.oneshot_var();
        // efivarfs takes the whole variable in one write.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .map_err(io("creating the EFI variable", &p))?;
        f.write_all(&value)
            .map_err(io("writing the EFI variable", &p))?;
        Ok(())
    }

    /// The entry `LoaderEntryOneShot` names, if it is set.
    pub fn once(&self) -> Option<String> {
        let b = std::fs::read(self.oneshot_var()).ok()?;
        let units: Vec<u16> = b
            .get(4..)?
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        String::from_utf16(&units).ok()
    }

    /// Removes `LoaderEntryOneShot` when it is set. efivarfs makes the variables it does not
    /// know immutable; the flag is cleared first.
    pub fn clear_once(&self) -> Result<()> {
        let p = self.oneshot_var();
        let f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("opening the EFI variable", &p)(e)),
        };
        if let Ok(flags) = rustix::fs::ioctl_getflags(&f)
            && flags.contains(rustix::fs::IFlags::IMMUTABLE)
        {
            rustix::fs::ioctl_setflags(&f, flags - rustix::fs::IFlags::IMMUTABLE)
                .map_err(|e| io("clearing the immutable flag of", &p)(e.into()))?;
        }
        drop(f);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing the EFI variable", &p)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn loader_conf_keeps_every_line_but_the_default() {
        let c = "timeout 3\ndefault old.conf\neditor no\n";
        let n = with_default(c, "semithin-x.conf");
        assert_eq!(n, "default semithin-x.conf\ntimeout 3\neditor no\n");
        assert_eq!(default_of(&n), Some("semithin-x.conf"));
        assert_eq!(default_of("timeout 0\n"), None);
    }

    #[test]
    fn entries_name_their_deployment_and_the_machine_options() {
        let t = entry_text(A, "6.1.0-50-amd64", "root=UUID=x ro console=ttyS0");
        assert!(t.contains(&format!("linux /semithin/{A}/vmlinuz\n")), "{t}");
        assert!(t.contains(&format!(
            "options root=UUID=x ro console=ttyS0 semithin.deployment={A}\n"
        )));
        assert_eq!(entry_release(&entry_id(A)), Some(A));
        assert_eq!(entry_release(&format!("semithin-{A}+1-0.conf")), Some(A));
        assert_eq!(entry_release("semithin-abc.conf"), None);
        assert_eq!(entry_release("debian.conf"), None);
    }

    #[test]
    fn the_running_options_lose_what_the_entry_adds() {
        assert_eq!(
            options_from_cmdline(&format!(
                "initrd=\\semithin\\{A}\\initrd.img root=/dev/vda2 ro semithin.deployment={A} quiet\n"
            )),
            "root=/dev/vda2 ro quiet"
        );
    }

    #[test]
    fn the_one_shot_variable_is_utf16_after_the_attributes() {
        let d = tempfile::tempdir().unwrap();
        let l = Loader {
            esp: d.path().join("esp"),
            efivars: d.path().to_owned(),
            options: String::new(),
        };
        assert_eq!(l.once(), None);
        l.boot_once(A).unwrap();
        let raw = std::fs::read(l.oneshot_var()).unwrap();
        assert_eq!(&raw[..4], &[7, 0, 0, 0]);
        assert_eq!(raw.len(), 4 + 2 * (entry_id(A).len() + 1));
        assert_eq!(l.once(), Some(entry_id(A)));
        l.boot_once(A).unwrap();
        l.clear_once().unwrap();
        assert_eq!(l.once(), None);
        l.clear_once().unwrap();
    }
}
