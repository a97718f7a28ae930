//! Booting machines under qemu (TCG, no KVM): the kernel and an initramfs made by Debian's
//! initramfs-tools with semithin's hook (tests/fixtures/boot-root.sh), disk images made from a
//! directory without mounting anything (`mkfs.ext4 -d`), the serial console captured to a file.
//! A [`Vm`] is killed when dropped; everything it makes lives in the caller's directory.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{BIN, q, sh};

fn fixture(args: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    sh(&format!("{}/{args}", q(&dir))).trim().to_owned()
}

/// What a boot needs from the host: qemu, a kernel and an initramfs with this build's binary.
pub(crate) struct Kit {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The Debian root the kernel came from (busybox and its libraries for images).
    pub root: PathBuf,
}

impl Kit {
    /// Made once per binary (cached by the fixture); a few seconds when it has to be made.
    pub fn get() -> Kit {
        let qemu = PathBuf::from(fixture("qemu.sh"));
        let root = PathBuf::from(fixture("boot-root.sh root"));
        let out = PathBuf::from(fixture(&format!(
            "boot-root.sh initrd {}",
            q(Path::new(BIN))
        )));
        Kit {
            qemu,
            kernel: out.join("vmlinuz"),
            initrd: out.join("initrd.img"),
            root,
        }
    }
}

/// A kernel with an initramfs made by initramfs-tools with semithin's hook and this build's
/// binary, and its modules directory.
pub(crate) struct KernelFiles {
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    /// The kernel's release (`uname -r`).
    pub version: String,
    pub modules: PathBuf,
}

impl KernelFiles {
    fn from(dir: &Path) -> KernelFiles {
        KernelFiles {
            vmlinuz: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            version: std::fs::read_to_string(dir.join("version"))
                .unwrap()
                .trim()
                .to_owned(),
            modules: std::fs::canonicalize(dir.join("modules")).unwrap(),
        }
    }

    /// The kit's kernel (bookworm's).
    pub fn kit() -> KernelFiles {
        KernelFiles::from(Path::new(&fixture(&format!(
            "boot-root.sh initrd {}",
            q(Path::new(BIN))
        ))))
    }

    /// bookworm-backports' kernel, newer than the kit's.
    pub fn newer() -> KernelFiles {
        KernelFiles::from(Path::new(&fixture(&format!(
            "boot-root.sh newer-initrd {}",
            q(Path::new(BIN))
        ))))
    }
}

/// Debian's OVMF (UEFI for qemu; the ovmf package, which tests/test.sh installs): the firmware
/// code, and a fresh copy of its variable store at `vars`, which keeps the EFI variables of one
/// machine across its boots.
pub(crate) fn ovmf(vars: &Path) -> PathBuf {
    let code = PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.fd");
    let tmpl = Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd");
    assert!(
        code.is_file() && tmpl.is_file(),
        "no OVMF firmware in /usr/share/OVMF: install Debian's ovmf package (tests/test.sh does)"
    );
    std::fs::copy(tmpl, vars).unwrap();
    code
}

/// Makes `dir` (new, or without libraries) a tiny system: busybox (with `/bin/sh`) and the
/// libraries it needs, copied from the kit's root (never through its absolute symlinks), and the
/// directories a root has, with `/sbin/init` running `init` (a shell script's body), then
/// powering off.
pub(crate) fn busybox_root(kit: &Kit, dir: &Path, init: &str) {
    sh(&format!(
        "set -e; R={r}; D={d}; mkdir -p $D; cd $D; \
         mkdir -p bin sbin lib/x86_64-linux-gnu lib64 etc var dev proc sys run tmp; \
         chmod 1777 tmp; cp $R/usr/bin/busybox bin/busybox; ln -sf busybox bin/sh; \
         for l in libc.so.6 libresolv.so.2; do cp $R/usr/lib/x86_64-linux-gnu/$l lib/x86_64-linux-gnu/; done; \
         cp $R/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 lib64/",
        r = q(&kit.root),
        d = q(dir)
    ));
    let script = format!(
        "#!/bin/sh\nPATH=/bin:/sbin\nalias b=/bin/busybox\n{init}\n/bin/busybox sync\n\
         /bin/busybox poweroff -f\n"
    );
    let p = dir.join("sbin/init");
    std::fs::write(&p, script).unwrap();
    sh(&format!("chmod 0755 {}", q(&p)));
}

/// An ext4 disk image of `mb` MiB holding the tree at `dir` (owners, modes, hardlinks, xattrs,
/// device nodes as they are), made without mounting.
pub(crate) fn ext4_image(dir: &Path, img: &Path, mb: u64) {
    sh(&format!(
        "mkfs.ext4 -q -F -L root -d {} {} {mb}M",
        q(dir),
        q(img)
    ));
}

/// A file of an ext4 image, read with debugfs (None when it is not there).
pub(crate) fn image_file(img: &Path, path: &str) -> Option<Vec<u8>> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(img)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    (out.status.success() && !err.contains("File not found")).then_some(out.stdout)
}

/// How to boot.
pub(crate) struct Boot<'a> {
    pub kit: &'a Kit,
    /// Disk images, attached as virtio disks in order (/dev/vda, /dev/vdb, ...).
    pub disks: Vec<PathBuf>,
    /// Kernel parameters after `console=ttyS0 panic=-1`.
    pub append: String,
    pub memory_mb: u32,
    /// Where the serial console goes.
    pub console: PathBuf,
    /// More qemu arguments (a network, another drive).
    pub extra: Vec<String>,
}

/// A running qemu; killed when dropped.
pub(crate) struct Vm {
    child: Option<Child>,
    pub console: PathBuf,
    started: Instant,
}

impl Vm {
    /// Starts a UEFI machine (OVMF; its variables in `vars`, see [`ovmf`]) booting `disk` the
    /// way the firmware finds it, with user networking (the host's loopback is 10.0.2.2 for the
    /// guest), `-no-reboot`: a reboot, power-off or panic ends qemu.
    pub fn start_uefi(kit: &Kit, code: &Path, vars: &Path, disk: &Path, console: &Path) -> Vm {
        let mut c = Command::new(&kit.qemu);
        c.args(["-machine", "q35", "-m", "1024"])
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                code.display()
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=none,id=d0", disk.display()))
            .args(["-device", "virtio-blk-pci,drive=d0,bootindex=0"])
            .args([
                "-netdev",
                "user,id=n0",
                "-device",
                "virtio-net-pci,netdev=n0,romfile=",
            ]);
        Self::spawn(c, console)
    }

    fn spawn(mut c: Command, console: &Path) -> Vm {
        let _ = std::fs::remove_file(console);
        c.args(["-nographic", "-no-reboot", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()));
        let log = console.with_extension("qemu.log");
        let child = c
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .unwrap();
        Vm {
            child: Some(child),
            console: console.to_owned(),
            started: Instant::now(),
        }
    }

    /// Starts qemu: `-nographic -no-reboot`, the kernel and initramfs, the serial console into
    /// a file. With `panic=-1` and `-no-reboot`, a panic or a power-off ends qemu.
    pub fn start(b: &Boot) -> Vm {
        let mut c = Command::new(&b.kit.qemu);
        c.args(["-m", &b.memory_mb.to_string()])
            .arg("-kernel")
            .arg(&b.kit.kernel)
            .arg("-initrd")
            .arg(&b.kit.initrd)
            .arg("-append")
            .arg(format!("console=ttyS0 panic=-1 {}", b.append));
        for d in &b.disks {
            c.arg("-drive")
                .arg(format!("file={},format=raw,if=virtio", d.display()));
        }
        c.args(&b.extra);
        Self::spawn(c, &b.console)
    }

    /// A qemu started by the caller (a network boot without `-kernel`), killed when dropped.
    pub fn from_child(child: Child, console: &Path) -> Vm {
        Vm {
            child: Some(child),
            console: console.to_owned(),
            started: Instant::now(),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    fn tail(&self) -> String {
        let t = self.text();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Waits until the console shows `marker`; the console so far.
    pub fn wait_for(&mut self, marker: &str, secs: u64) -> String {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let t = self.text();
            if t.contains(marker) {
                return t;
            }
            if let Some(s) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "qemu ended ({s}) before {marker:?}; console:\n{}",
                    self.tail()
                );
            }
            assert!(
                Instant::now() < end,
                "no {marker:?} on the console within {secs} s; console:\n{}",
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the machine powers off (qemu ends); the whole console.
    pub fn wait_off(&mut self, secs: u64) -> String {
        let end = Instant::now() + Duration::from_secs(secs);
        let c = self.child.as_mut().expect("running");
        loop {
            if c.try_wait().unwrap().is_some() {
                self.child = None;
                return self.text();
            }
            assert!(
                Instant::now() < end,
                "the machine did not power off within {secs} s; console:\n{}",
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Seconds since qemu was started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
