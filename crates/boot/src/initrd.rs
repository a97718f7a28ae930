//! The initrd: made by the image's own initramfs-tools (`mkinitramfs`) in a chroot of a checkout
//! of the release, with semithin's hook, boot script and binary installed where docs/BOOT.md puts
//! them. The initrd then holds the release's own modules for its own kernel, busybox and the
//! semithin boot script, exactly as `update-initramfs` on a machine running the release would.

use std::path::{Path, PathBuf};
use std::process::Command;

use semithin_store::object::EntryKind;
use semithin_store::objects::ObjectStore;
use semithin_store::walk::lookup;
use semithin_store::{CommitId, NoProgress, Repo, TreeId};

use crate::error::{Error, Result};

/// semithin's initramfs-tools files (packaging/initramfs-tools), as the hook installs them.
const HOOK: &str = include_str!("../../../packaging/initramfs-tools/hooks/semithin");
const SCRIPT: &str =
    include_str!("../../../packaging/initramfs-tools/scripts/local-bottom/semithin");
const GROW: &str =
    include_str!("../../../packaging/initramfs-tools/scripts/local-premount/semithin-grow");
const MOUNT: &str = include_str!("../../../packaging/initramfs-tools/semithin-mount.sh");
const LIVE: &str = include_str!("../../../packaging/initramfs-tools/scripts/semithin-live");

/// How the initrd is made.
#[derive(Clone, Debug)]
pub struct InitrdOptions {
    /// The semithin binary that goes into the initrd (it verifies the deployment at boot).
    pub binary: PathBuf,
    /// `MODULES=list` with these modules, instead of the image's own initramfs-tools
    /// configuration (Debian's default is `MODULES=most`: every storage and file system driver).
    pub modules: Option<Vec<String>>,
    /// Where the initrd comes from.
    pub source: InitrdSource,
}

/// Where the initrd comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InitrdSource {
    /// The image's own `boot/initrd.img-VERSION` when the image carries semithin's hook
    /// (`etc/initramfs-tools/hooks/semithin`) and no modules are asked for; otherwise made.
    #[default]
    Auto,
    /// The image's own `boot/initrd.img-VERSION`, which must exist beside semithin's hook.
    Image,
    /// Always made by the image's `mkinitramfs`.
    Build,
}

/// Where semithin's hook is in an image that carries it.
pub const IMAGE_HOOK: &str = "etc/initramfs-tools/hooks/semithin";

/// The image's own initrd for kernel `version`, when the image carries semithin's hook and the
/// file `boot/initrd.img-VERSION` (symlinks followed inside the tree); `Err` with the reason
/// otherwise.
pub fn image_initrd(
    store: &ObjectStore,
    root: TreeId,
    version: &str,
) -> Result<std::result::Result<semithin_store::object::FileContent, String>> {
    if !exists_as_file(store, root, &[IMAGE_HOOK])? {
        return Ok(Err(format!(
            "the image does not carry semithin's initramfs hook ({IMAGE_HOOK})"
        )));
    }
    let path = format!("boot/initrd.img-{version}");
    match crate::kernel::regular_file(store, root, &path)? {
        Some(c) => Ok(Ok(c)),
        None => Ok(Err(format!("the image has no {path}"))),
    }
}

/// Checks a kernel module name.
pub fn check_module(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::BadModule(name.to_owned()))
    }
}

fn exists_as_file(store: &ObjectStore, root: TreeId, paths: &[&str]) -> Result<bool> {
    for p in paths {
        if let Some(e) = lookup(store, root, p.as_bytes())?
            && matches!(e.kind, EntryKind::File(_))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Why no initrd can be made for the tree `root`, or `None` when it has what is needed:
/// initramfs-tools (`mkinitramfs`) and busybox (the boot script needs its `mv -T`).
pub fn missing(store: &ObjectStore, root: TreeId) -> Result<Option<String>> {
    if !exists_as_file(store, root, &["usr/sbin/mkinitramfs", "sbin/mkinitramfs"])? {
        return Ok(Some(
            "the image has no initramfs-tools (no usr/sbin/mkinitramfs): install initramfs-tools in it to get an initrd"
                .to_owned(),
        ));
    }
    if !exists_as_file(store, root, &["usr/bin/busybox", "bin/busybox"])? {
        return Ok(Some(
            "the image has no busybox (no usr/bin/busybox), which semithin's boot script needs: install busybox in it to get an initrd"
                .to_owned(),
        ));
    }
    Ok(None)
}

/// Writes `rel` below the checkout `root`, making its directories. A symlink on the way (the
/// image's, perhaps absolute) is refused rather than followed out of the checkout.
fn write(root: &Path, rel: &str, text: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut dir = root.to_owned();
    let parts: Vec<&str> = rel.split('/').collect();
    let (name, dirs) = parts.split_last().expect("a path");
    for part in dirs {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(Error::Tool {
                    tool: "initrd",
                    reason: format!(
                        "the image's {} is not a directory (a symlink?): semithin's files cannot be installed below it",
                        dir.strip_prefix(root).unwrap_or(&dir).display()
                    ),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&dir).map_err(Error::io("creating", &dir))?;
            }
            Err(e) => return Err(Error::io("reading", &dir)(e)),
        }
    }
    let path = dir.join(name);
    // An entry of the image there (a symlink, say) is replaced, never written through.
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, text).map_err(Error::io("writing", &path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .map_err(Error::io("setting the mode of", &path))
}

/// Installs semithin's hook, boot script and binary into the checkout `root`, as docs/BOOT.md
/// installs them on a machine.
fn install(root: &Path, opts: &InitrdOptions) -> Result<()> {
    let bin = std::fs::read(&opts.binary).map_err(|source| Error::Binary {
        path: opts.binary.clone(),
        source,
    })?;
    write(root, "usr/local/bin/semithin", &bin, 0o755)?;
    strip_debug(&root.join("usr/local/bin/semithin"));
    // `semithin-initrd` beside the binary (cargo and the package install both): the part the
    // boot runs, which the hook puts into the initrd instead of the whole binary.
    let small = opts.binary.with_file_name("semithin-initrd");
    if let Ok(b) = std::fs::read(&small) {
        write(root, "usr/local/lib/semithin/semithin-initrd", &b, 0o755)?;
        strip_debug(&root.join("usr/local/lib/semithin/semithin-initrd"));
    }
    write(
        root,
        "usr/local/lib/semithin/semithin-mount.sh",
        MOUNT.as_bytes(),
        0o644,
    )?;
    let it = "etc/initramfs-tools";
    write(
        root,
        &format!("{it}/hooks/semithin"),
        HOOK.as_bytes(),
        0o755,
    )?;
    write(
        root,
        &format!("{it}/scripts/local-bottom/semithin"),
        SCRIPT.as_bytes(),
        0o755,
    )?;
    write(
        root,
        &format!("{it}/scripts/semithin-live"),
        LIVE.as_bytes(),
        0o644,
    )?;
    write(
        root,
        &format!("{it}/scripts/local-premount/semithin-grow"),
        GROW.as_bytes(),
        0o755,
    )?;
    if let Some(modules) = &opts.modules {
        for m in modules {
            check_module(m)?;
        }
        write(
            root,
            &format!("{it}/conf.d/zz-semithin-boot-artifacts"),
            b"MODULES=list\n",
            0o644,
        )?;
        let mut list = modules.join("\n");
        list.push('\n');
        write(root, &format!("{it}/modules"), list.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// Leaves the debug information out of the binary at `path` with the host's `objcopy`, as the
/// hook does with the image's when it has one: a build's line tables are most of its size, and the
/// initrd is read into memory at every boot. Without `objcopy` the binary stays as it is.
fn strip_debug(path: &Path) {
    let _ = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(path)
        .status();
}

/// Makes the initrd of `commit` for kernel `version` at `out`: checks the release out into
/// `work` (a new directory, removed by the caller), installs semithin's files there and runs
/// `mkinitramfs` in a chroot of it, in a private mount namespace with `/proc` mounted.
/// `SOURCE_DATE_EPOCH` is `epoch` (the commit's time), which makes initramfs-tools build the same
/// bytes again from the same release and binary.
pub fn build(
    repo: &Repo,
    commit: CommitId,
    version: &str,
    epoch: i64,
    work: &Path,
    out: &Path,
    opts: &InitrdOptions,
) -> Result<()> {
    let root = work.join("root");
    semithin_store::checkout::checkout(
        repo,
        commit,
        &root,
        &semithin_store::checkout::CheckoutOptions::default(),
        &NoProgress,
    )?;
    install(&root, opts)?;
    let inside = "tmp/semithin-boot-artifacts-initrd.img";
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "/bin/sh", "-c"])
        .arg(
            "set -e; mount -t proc proc \"$1/proc\"; \
             exec chroot \"$1\" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
             SOURCE_DATE_EPOCH=\"$4\" mkinitramfs -o \"/$3\" \"$2\" 2>&1",
        )
        .arg("sh")
        .arg(&root)
        .arg(version)
        .arg(inside)
        .arg(epoch.to_string())
        .output()
        .map_err(|e| Error::Tool {
            tool: "unshare",
            reason: format!("cannot run it ({e}); it is in util-linux"),
        })?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(Error::Initrd {
            status: output.status.to_string(),
            output: text.trim().to_owned(),
        });
    }
    let made = root.join(inside);
    std::fs::rename(&made, out)
        .or_else(|_| std::fs::copy(&made, out).map(|_| ()))
        .map_err(Error::io("moving the initrd to", out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_installed_below_the_checkout_never_through_its_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("usr")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("usr/local")).unwrap();
        let e = write(&root, "usr/local/bin/semithin", b"x", 0o755).unwrap_err();
        assert!(
            e.to_string()
                .contains("the image's usr/local is not a directory"),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // A symlink in the file's place is replaced, not written through.
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), root.join("etc/f")).unwrap();
        write(&root, "etc/f", b"y", 0o644).unwrap();
        assert_eq!(std::fs::read(root.join("etc/f")).unwrap(), b"y");
        assert!(!outside.join("f").exists());
        write(&root, "a/b/c", b"z", 0o600).unwrap();
        assert_eq!(std::fs::read(root.join("a/b/c")).unwrap(), b"z");
    }

    #[test]
    fn module_names_are_checked() {
        check_module("virtio_blk").unwrap();
        check_module("crc32c-generic").unwrap();
        for bad in ["", "../x", "a b", "a\nb", &"m".repeat(65)] {
            assert!(check_module(bad).is_err(), "{bad:?}");
        }
    }
}
