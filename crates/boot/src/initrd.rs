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
const MOUNT: &str = include_str!("../../../packaging/initramfs-tools/semithin-mount.sh");

/// How the initrd is made.
#[derive(Clone, Debug)]
pub struct InitrdOptions {
    /// The semithin binary that goes into the initrd (it verifies the deployment at boot).
    pub binary: PathBuf,
    /// `MODULES=list` with these modules, instead of the image's own initramfs-tools
    /// configuration (Debian's default is `MODULES=most`: every storage and file system driver).
    pub modules: Option<Vec<String>>,
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

fn write(path: &Path, text: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    }
    // A symlink in the image must not redirect the write out of the checkout.
    let _ = std::fs::remove_file(path);
    std::fs::write(path, text).map_err(Error::io("writing", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(Error::io("setting the mode of", path))
}

/// Installs semithin's hook, boot script and binary into the checkout `root`, as docs/BOOT.md
/// installs them on a machine.
fn install(root: &Path, opts: &InitrdOptions) -> Result<()> {
    let bin = std::fs::read(&opts.binary).map_err(|source| Error::Binary {
        path: opts.binary.clone(),
        source,
    })?;
    let dest = root.join("usr/local/bin/semithin");
    write(&dest, &bin, 0o755)?;
    strip_debug(&dest);
    write(
        &root.join("usr/local/lib/semithin/semithin-mount.sh"),
        MOUNT.as_bytes(),
        0o644,
    )?;
    let it = root.join("etc/initramfs-tools");
    write(&it.join("hooks/semithin"), HOOK.as_bytes(), 0o755)?;
    write(
        &it.join("scripts/local-bottom/semithin"),
        SCRIPT.as_bytes(),
        0o755,
    )?;
    if let Some(modules) = &opts.modules {
        for m in modules {
            check_module(m)?;
        }
        write(
            &it.join("conf.d/zz-semithin-boot-artifacts"),
            b"MODULES=list\n",
            0o644,
        )?;
        let mut list = modules.join("\n");
        list.push('\n');
        write(&it.join("modules"), list.as_bytes(), 0o644)?;
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
pub fn build(
    repo: &Repo,
    commit: CommitId,
    version: &str,
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
             mkinitramfs -o \"/$3\" \"$2\" 2>&1",
        )
        .arg("sh")
        .arg(&root)
        .arg(version)
        .arg(inside)
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
