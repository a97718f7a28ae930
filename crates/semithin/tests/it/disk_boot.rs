//! Installed machines under qemu (TCG, UEFI with OVMF): a disk made by `semithin image disk`
//! boots systemd-boot, the first deployment's own kernel, enrolls with its pre-authorised token;
//! a release with a newer kernel is staged, booted once from its own entry and confirmed; a
//! release whose init fails is booted once and the next boot is back on the previous entry and
//! kernel by itself, the failure reported to the server (docs/BOOT.md, "Kernels, initramfs and
//! the boot loader").

use std::path::Path;

use serde_json::Value;

use crate::common::{BIN, q, sh};
use crate::fleet::Server;
use crate::qemu::{KernelFiles, Kit, Vm, busybox_root, ovmf};

/// The guest's init: modules, the ESP, efivarfs and the network (the host's loopback is
/// 10.0.2.2), what booted, one run of the agent; a reboot when the agent switched `current`
/// away from what booted, a power-off otherwise (busybox_root adds it).
const GUEST_INIT: &str = r#"B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev 2>/dev/null
$B mount -t tmpfs tmp /tmp
K=/lib/modules/$($B uname -r)/t
for m in $($B cat $K/order); do $B insmod $K/$m.ko 2>/dev/null; done
$B mount -t efivarfs efivarfs /sys/firmware/efi/efivars
$B mount -t vfat /dev/vda1 /boot/efi || echo "SEMITHIN-TEST no ESP"
$B hostname m1
$B ip link set lo up
# the NIC: eth0, or the name udev in the initramfs gave it (ens3) when it loaded the driver
IF=$($B ls /sys/class/net | $B grep -v '^lo$' | $B head -n 1)
$B ip link set "$IF" up
$B ip addr add 10.0.2.15/24 dev "$IF"
$B ip route add default via 10.0.2.2
echo "SEMITHIN-TEST kernel $($B uname -r)"
echo "SEMITHIN-TEST cmdline $($B cat /proc/cmdline)"
echo "SEMITHIN-TEST booted $($B cat /run/semithin/booted)"
echo "SEMITHIN-TEST release MARKER"
echo "SEMITHIN-TEST root $($B df -m / | $B tail -1)"
/usr/bin/semithin agent --state /var/lib/semithin --config /etc/semithin/agent.toml --once 2>&1 | $B sed 's/^/agent: /'
cur=$($B readlink /var/lib/semithin/current)
$B sync
if [ "$cur" != "deployments/$($B cat /run/semithin/booted)" ]; then
  echo "SEMITHIN-TEST reboot"
  $B umount /boot/efi
  $B reboot -f
  $B sleep 60
fi
echo "SEMITHIN-TEST poweroff"
$B umount /boot/efi"#;

/// The agent's settings in the release: a health check that reboots into the release under
/// trial (docs/BOOT.md's recipe), and that passes once it is what booted.
const AGENT_TOML: &str = r#"verify_interval_secs = 0
health_timeout_secs = 600
health_checks = ['''
B=/bin/busybox
[ "$($B cat /run/semithin/booted)" = "$SEMITHIN_RELEASE" ] && exit 0
echo "SEMITHIN-TEST health check: rebooting into $SEMITHIN_RELEASE" > /dev/console
$B sync; $B umount /boot/efi; $B reboot -f; $B sleep 600
''']
"#;

/// The modules the guest loads (with what they need, in order), from the kernel's
/// modules.dep; compressed ones are unpacked.
const MODULES: [&str; 6] = [
    "virtio_net",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "efivarfs",
];

fn modules(k: &KernelFiles, out: &Path) {
    let dep = std::fs::read_to_string(k.modules.join("modules.dep")).unwrap();
    let deps: std::collections::HashMap<String, Vec<String>> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            (
                m.to_owned(),
                d.split_whitespace().map(str::to_owned).collect(),
            )
        })
        .collect();
    let name = |p: &str| {
        let f = p.rsplit('/').next().unwrap();
        f.split(".ko").next().unwrap().to_owned()
    };
    let mut order: Vec<String> = Vec::new();
    fn visit(
        p: &str,
        deps: &std::collections::HashMap<String, Vec<String>>,
        order: &mut Vec<String>,
    ) {
        if order.iter().any(|o| o == p) {
            return;
        }
        for d in deps.get(p).into_iter().flatten() {
            visit(d, deps, order);
        }
        order.push(p.to_owned());
    }
    for m in MODULES {
        let p = deps
            .keys()
            .find(|p| name(p) == m)
            .unwrap_or_else(|| panic!("no module {m} in {}", k.modules.display()));
        visit(p, &deps, &mut order);
    }
    std::fs::create_dir_all(out).unwrap();
    for p in &order {
        let src = k.modules.join(p);
        let dst = out.join(format!("{}.ko", name(p)));
        if p.ends_with(".xz") {
            sh(&format!("xz -dc {} > {}", q(&src), q(&dst)));
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
    let names: Vec<String> = order.iter().map(|p| name(p)).collect();
    std::fs::write(out.join("order"), names.join("\n") + "\n").unwrap();
}

/// A release: the busybox system with `init`, the agent (this build, stripped), the kernel `k`
/// with its initrd and the modules the guest loads, /boot/efi, the agent's settings.
fn release(kit: &Kit, k: &KernelFiles, agent: &Path, dir: &Path, init: &str) {
    busybox_root(kit, dir, init);
    let kv = &k.version;
    sh(&format!(
        "set -e; R={r}; D={d}; cd $D; mkdir -p usr/bin boot/efi etc/semithin lib/modules/{kv}; \
         for l in libgcc_s.so.1 libm.so.6; do cp $R/usr/lib/x86_64-linux-gnu/$l lib/x86_64-linux-gnu/; done; \
         cp {a} usr/bin/semithin; cp {vm} boot/vmlinuz-{kv}; cp {ird} boot/initrd.img-{kv}",
        r = q(&kit.root),
        d = q(dir),
        a = q(agent),
        vm = q(&k.vmlinuz),
        ird = q(&k.initrd),
    ));
    modules(k, &dir.join(format!("lib/modules/{kv}/t")));
    std::fs::write(dir.join("etc/semithin/agent.toml"), AGENT_TOML).unwrap();
}

/// One boot until the machine powers off, reboots or panics (qemu ends: `-no-reboot`).
fn boot(kit: &Kit, code: &Path, vars: &Path, disk: &Path, dir: &Path, n: u32) -> String {
    let console = dir.join(format!("console-{n}.log"));
    let mut vm = Vm::start_uefi(kit, code, vars, disk, &console);
    let t = vm.wait_off(300).replace('\r', "");
    eprintln!("boot {n}: {:.0} s", vm.elapsed());
    for l in t.lines().filter(|l| {
        l.contains("SEMITHIN-TEST") || l.contains("semithin:") || l.starts_with("agent: ")
    }) {
        eprintln!("  {l}");
    }
    t
}

fn field(console: &str, key: &str) -> String {
    console
        .lines()
        .find_map(|l| l.strip_prefix(&format!("SEMITHIN-TEST {key} ")))
        .unwrap_or_else(|| panic!("no {key:?} line in\n{console}"))
        .trim()
        .to_owned()
}

fn machine(s: &Server) -> Value {
    serde_json::from_str(&s.ok(&["fleet", "show", "m1", "--json"])).unwrap()
}

#[test]
fn slow_boot_disk_image_enrolls_updates_its_kernel_and_comes_back_from_a_release_that_does_not_boot()
 {
    let kit = Kit::get();
    let k1 = KernelFiles::kit();
    let k2 = KernelFiles::newer();
    assert_ne!(k1.version, k2.version);
    let s = Server::start();
    let dir = tempfile::Builder::new()
        .prefix("semithin-disk")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let agent = d.join("semithin");
    sh(&format!(
        "objcopy --strip-debug {} {}",
        q(Path::new(BIN)),
        q(&agent)
    ));
    let init = |m: &str| GUEST_INIT.replace("MARKER", m);
    release(&kit, &k1, &agent, &d.join("v1"), &init("v1"));
    let v1 = s.release(&d.join("v1"), "lab/stable");
    let token = s.enroll_token(true);

    // Bad input first: nothing is written.
    let out = s.cli(&[
        "image",
        "disk",
        "lab/stable",
        "--out",
        d.join("small.img").to_str().unwrap(),
        "--size",
        "64M",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is too small: the disk needs at least"),
        "{err}"
    );
    assert!(!d.join("small.img").exists());
    let leftovers = sh(&format!("ls -A {} | grep semithin-disk || true", q(d)));
    assert_eq!(leftovers.trim(), "", "temporary files left behind");

    let disk = d.join("disk.img");
    let guest_url = format!("http://10.0.2.2:{}", s.port);
    let out = s.ok(&[
        "image",
        "disk",
        "lab/stable",
        "--out",
        disk.to_str().unwrap(),
        "--size",
        "1400M",
        "--server",
        &guest_url,
        "--token",
        &token,
        "--kernel-options",
        "console=ttyS0 panic=-1",
        "--json",
    ]);
    let made: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(made["release"], v1.as_str(), "{made}");
    assert_eq!(made["kernel_version"], k1.version.as_str(), "{made}");
    // Written to a larger disk: the first boot grows the root partition to it.
    let before = made["disk"]["root_size"].as_u64().unwrap() >> 20;
    sh(&format!("truncate -s 2000M {}", q(&disk)));
    let vars = d.join("vars.fd");
    let code = ovmf(&vars);

    // 1: systemd-boot boots v1's entry with v1's kernel; the agent enrolls, accepted at once.
    let c = boot(&kit, &code, &vars, &disk, d, 1);
    assert_eq!(field(&c, "kernel"), k1.version, "{c}");
    assert_eq!(field(&c, "booted"), v1, "{c}");
    assert!(
        field(&c, "cmdline").contains(&format!("semithin.deployment={v1}")),
        "{c}"
    );
    assert!(c.contains("SEMITHIN-TEST poweroff"), "{c}");
    assert!(
        c.contains("semithin: the root partition /dev/vda2 grew"),
        "{c}"
    );
    let root_mb = |c: &str| -> u64 {
        field(c, "root")
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(root_mb(&c) > before + 400, "{before} MiB before: {c}");
    // `mkfs.ext4 -d` made every inode anew: the first boot verifies in full, and seals.
    assert!(
        c.contains("semithin: deployment ")
            && c.contains("no seal (not verified in full since it was made)"),
        "{c}"
    );
    assert!(
        c.contains(&format!("semithin: deployment {} sealed (", short(&v1))),
        "{c}"
    );
    let m = machine(&s);
    assert_eq!(m["status"], "accepted", "{m}");
    s.ok(&["fleet", "assign", "m1", "lab/stable"]);

    // 2: up to date: v1 passes its checks and is reported.
    let c = boot(&kit, &code, &vars, &disk, d, 2);
    assert_eq!(field(&c, "booted"), v1, "{c}");
    assert!(!c.contains("grew from"), "grown again: {c}");
    let quick = " entries unchanged since verified (quick check, ";
    assert!(c.contains(quick), "{c}");
    let m = machine(&s);
    assert_eq!(m["report"]["current"], v1.as_str(), "{m}");
    assert_eq!(m["report"]["health"], "healthy", "{m}");

    // v2 has a newer kernel: staged, booted once from its own entry, confirmed.
    release(&kit, &k2, &agent, &d.join("v2"), &init("v2"));
    let v2 = s.release(&d.join("v2"), "lab/stable");
    let c = boot(&kit, &code, &vars, &disk, d, 3);
    assert_eq!(field(&c, "booted"), v1, "{c}");
    assert!(c.contains("LoaderEntryOneShot"), "{c}");
    assert!(
        c.contains(&format!("health check: rebooting into {v2}")),
        "{c}"
    );
    let c = boot(&kit, &code, &vars, &disk, d, 4);
    assert_eq!(field(&c, "kernel"), k2.version, "{c}");
    assert_eq!(field(&c, "booted"), v2, "{c}");
    assert_eq!(field(&c, "release"), "v2", "{c}");
    // sealed by the agent when it staged it: the update's boot reads none of its files
    assert!(
        c.contains(&format!("semithin: deployment {}: ", short(&v2))) && c.contains(quick),
        "{c}"
    );
    assert!(
        field(&c, "cmdline").contains(&format!("semithin.deployment={v2}")),
        "{c}"
    );
    assert!(
        c.contains(&format!("release {} is healthy", v2.get(..12).unwrap())),
        "{c}"
    );
    assert!(c.contains("SEMITHIN-TEST poweroff"), "{c}");
    let m = machine(&s);
    assert_eq!(m["report"]["current"], v2.as_str(), "{m}");
    assert_eq!(m["report"]["health"], "healthy", "{m}");

    // v3's init fails: its one boot panics, and the next boot is v2's entry and kernel again.
    release(
        &kit,
        &k2,
        &agent,
        &d.join("v3"),
        "echo 'SEMITHIN-TEST v3 init fails'\nexit 1",
    );
    let v3 = s.release(&d.join("v3"), "lab/stable");
    let c = boot(&kit, &code, &vars, &disk, d, 5);
    assert_eq!(field(&c, "booted"), v2, "{c}");
    assert!(
        c.contains(&format!("health check: rebooting into {v3}")),
        "{c}"
    );
    let c = boot(&kit, &code, &vars, &disk, d, 6);
    assert!(c.contains("SEMITHIN-TEST v3 init fails"), "{c}");
    let c = boot(&kit, &code, &vars, &disk, d, 7);
    assert_eq!(field(&c, "kernel"), k2.version, "{c}");
    assert_eq!(field(&c, "booted"), v2, "{c}");
    assert!(c.contains("the boot loader booted deployment"), "{c}");
    assert!(c.contains("SEMITHIN-TEST poweroff"), "{c}");
    let m = machine(&s);
    assert_eq!(m["report"]["current"], v2.as_str(), "{m}");
    assert_eq!(m["report"]["failed_release"], v3.as_str(), "{m}");
    let e = m["report"]["last_error"].as_str().unwrap_or_default();
    assert!(
        e.contains("was rolled back at boot") && e.contains("the boot loader booted deployment"),
        "{m}"
    );
}

fn short(release: &str) -> &str {
    release.get(..12).unwrap()
}
