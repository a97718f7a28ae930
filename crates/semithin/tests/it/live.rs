//! Live and network boots under qemu (TCG) against a real server on the host's loopback, which
//! qemu's user networking shows the guest as 10.0.2.2 (docs/BOOT.md, "Live and network boot").
//!
//! The releases are busybox systems (as in qemu.rs) carrying the boot fixture's kernel and, as
//! their own `boot/initrd.img-VERSION`, its initramfs (made by initramfs-tools with semithin's
//! hook and scripts/semithin-live) with the server's root.json appended: `publish` signs that
//! initrd as it is, so the trust root of the boot is in the signed release.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::q;
use crate::common::sh;
use crate::fleet::{Agent, Server};
use crate::netboot::{artifact, targets};
use crate::qemu::{Boot, Kit, Vm, busybox_root, ext4_image, image_file};

fn kernel_version(kit: &Kit) -> String {
    sh(&format!(
        "ls {}/usr/lib/modules | sort -V | tail -1",
        q(&kit.root)
    ))
    .trim()
    .to_owned()
}

/// The fixture's initramfs with `root_json` as /etc/semithin/root.json: a cpio archive appended
/// (the kernel unpacks each in turn) after padding, as a site can do to its own initrd.
fn initrd_with_root(kit: &Kit, root_json: &Path, out: &Path) {
    let d = out.with_extension("extra");
    sh(&format!(
        "set -e; rm -rf {d}; mkdir -p {d}/etc/semithin; cp {root} {d}/etc/semithin/root.json; \
         cp {initrd} {out}; truncate -s %512 {out}; \
         (cd {d} && find etc | {bb} cpio -o -H newc 2>/dev/null) >> {out}",
        d = q(&d),
        root = q(root_json),
        initrd = q(&kit.initrd),
        out = q(out),
        bb = q(&kit.root.join("usr/bin/busybox")),
    ));
}

/// A live release: a busybox system whose init says which release it booted from where, with
/// the kit's kernel, `initrd` as the image's own, semithin's hook and the trust root.
fn live_tree(kit: &Kit, dir: &Path, initrd: &Path, root_json: &Path, tag: &str) {
    let init = format!(
        "B=/bin/busybox\n\
         echo \"LIVE-BOOTED tag={tag} release=$($B cat /run/semithin/booted) \
         root=$($B awk '$2 == \"/\" {{print $3}}' /proc/mounts | $B tail -1)\"\n\
         echo LIVE-WRITABLE > /written && echo \"LIVE-WROTE $($B cat /written)\""
    );
    busybox_root(kit, dir, &init);
    let v = kernel_version(kit);
    let hook = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging/initramfs-tools/hooks/semithin");
    sh(&format!(
        "set -e; cd {d}; mkdir -p boot usr/lib/modules/{v} etc/initramfs-tools/hooks etc/semithin; \
         cp {k} boot/vmlinuz-{v}; cp {i} boot/initrd.img-{v}; \
         cp {h} etc/initramfs-tools/hooks/semithin; cp {r} etc/semithin/root.json",
        d = q(dir),
        k = q(&kit.kernel),
        i = q(initrd),
        h = q(&hook),
        r = q(root_json),
    ));
}

fn commit(s: &Server, src: &Path, channel: &str) -> String {
    let out = s.ok(&[
        "commit",
        src.to_str().unwrap(),
        "--channel",
        channel,
        "--new-channel",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["commit"].as_str().unwrap().to_owned()
}

/// Two things every live boot says: the squashfs verified, and the root it booted.
fn assert_booted(console: &str, release: &str, tag: &str) {
    assert!(
        console.contains(&format!(
            "semithin: squashfs of release {} verified",
            release.get(..12).unwrap()
        )),
        "{console}"
    );
    assert!(
        console.contains(&format!(
            "LIVE-BOOTED tag={tag} release={release} root=overlay"
        )),
        "{console}"
    );
    assert!(console.contains("LIVE-WROTE LIVE-WRITABLE"), "{console}");
}

#[test]
fn slow_boot_live_a_corrupted_cached_squashfs_is_fetched_again_and_booted() {
    let kit = Kit::get();
    let s = Server::start_args(&["--netboot"]);
    let initrd = s.path("initrd.img");
    initrd_with_root(&kit, &s.root_json(), &initrd);
    let src = s.path("src");
    live_tree(&kit, &src, &initrd, &s.root_json(), "live-a");
    let id = commit(&s, &src, "live/a");
    s.ok(&["publish", "live/a"]);
    // The image's own initrd, signed as it is.
    let (i, it) = artifact(&s, &id, "initrd.img");
    assert_eq!(it["custom"]["initrd_source"], "image");
    assert_eq!(std::fs::read(&i).unwrap(), std::fs::read(&initrd).unwrap());
    let (k, _) = artifact(&s, &id, "vmlinuz");
    let (sq, st) = artifact(&s, &id, "root.squashfs");
    let sha = st["hashes"]["sha256"].as_str().unwrap().to_owned();
    let good = std::fs::read(&sq).unwrap();

    // The cache partition holds the release's squashfs, damaged.
    let tree = s.path("cache-tree");
    let cached = tree.join("semithin-live/squashfs").join(&sha);
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    let mut bad = good.clone();
    for b in &mut bad[good.len() / 2..good.len() / 2 + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&cached, &bad).unwrap();
    let disk = s.path("cache.img");
    ext4_image(&tree, &disk, (good.len() as u64 >> 20) * 2 + 64);

    let boot_kit = Kit {
        qemu: kit.qemu.clone(),
        kernel: k,
        initrd: i,
        root: kit.root.clone(),
    };
    let mut vm = Vm::start(&Boot {
        kit: &boot_kit,
        disks: vec![disk.clone()],
        append: format!(
            "boot=semithin-live semithin.live=http://10.0.2.2:{} semithin.channel=live/a \
             semithin.cache=/dev/vda ip=dhcp",
            s.port
        ),
        memory_mb: 768,
        console: s.path("console-live.txt"),
        extra: [
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0,romfile=",
        ]
        .map(String::from)
        .to_vec(),
    });
    vm.wait_for("LIVE-BOOTED", 240);
    let console = vm.wait_off(60);
    eprintln!("live boot: {:.0} s", vm.elapsed());
    assert!(
        console.contains("semithin: the cached squashfs does not verify (sha256"),
        "{console}"
    );
    assert_booted(&console, &id, "live-a");
    assert!(console.contains("writable layer: tmpfs"), "{console}");
    // The partition now holds the good squashfs, for the next boot.
    assert_eq!(
        image_file(&disk, &format!("semithin-live/squashfs/{sha}")).unwrap(),
        good
    );
    assert!(image_file(&disk, "semithin-live/trust/root.json").is_some());

    // Again without a network: the cached squashfs, verified against the cached metadata.
    let offline = |disk: &Path, console: &str| {
        Vm::start(&Boot {
            kit: &boot_kit,
            disks: vec![disk.to_owned()],
            append: "boot=semithin-live semithin.channel=live/a semithin.cache=/dev/vda".into(),
            memory_mb: 768,
            console: s.path(console),
            extra: Vec::new(),
        })
    };
    let mut vm = offline(&disk, "console-offline.txt");
    let console = vm.wait_off(180);
    assert!(
        console.contains(&format!(
            "semithin: squashfs of release {} verified offline against the metadata verified at",
            id.get(..12).unwrap()
        )),
        "{console}"
    );
    assert!(
        console.contains(&format!("LIVE-BOOTED tag=live-a release={id} root=overlay")),
        "{console}"
    );

    // A new release of the channel: the next boot fetches and boots it (the kernel and initrd
    // are the same bytes, kept once).
    let src2 = s.path("src2");
    live_tree(&kit, &src2, &initrd, &s.root_json(), "live-a2");
    let id2 = commit(&s, &src2, "live/a");
    s.ok(&["publish", "live/a"]);
    assert_eq!(artifact(&s, &id2, "vmlinuz").0, boot_kit.kernel);
    let mut vm = Vm::start(&Boot {
        kit: &boot_kit,
        disks: vec![disk.clone()],
        append: format!(
            "boot=semithin-live semithin.live=http://10.0.2.2:{} semithin.channel=live/a \
             semithin.cache=/dev/vda ip=dhcp",
            s.port
        ),
        memory_mb: 768,
        console: s.path("console-v2.txt"),
        extra: [
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0,romfile=",
        ]
        .map(String::from)
        .to_vec(),
    });
    let console = vm.wait_off(240);
    assert_booted(&console, &id2, "live-a2");
    let sha2 = artifact(&s, &id2, "root.squashfs").1["hashes"]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(image_file(&disk, &format!("semithin-live/squashfs/{sha2}")).is_some());
    // the squashfs of the release before is not kept
    assert!(image_file(&disk, &format!("semithin-live/squashfs/{sha}")).is_none());

    // A machine with nothing verified and no server does not boot, and says why.
    let empty = s.path("empty-tree");
    std::fs::create_dir_all(&empty).unwrap();
    let disk = s.path("empty.img");
    ext4_image(&empty, &disk, 32);
    let mut vm = offline(&disk, "console-nothing.txt");
    let console = vm.wait_off(180);
    assert!(!console.contains("LIVE-BOOTED"), "{console}");
    assert!(
        console.contains("semithin: not booting: no verified image"),
        "{console}"
    );
    assert!(console.contains("no server given"), "{console}");
}

/// The directory of qemu's iPXE ROMs: the unpacked qemu's (tests/fixtures/qemu.sh) or the
/// system's.
fn ipxe_roms(kit: &Kit) -> PathBuf {
    let unpacked = kit.qemu.parent().unwrap().join("root/usr/lib/ipxe/qemu");
    if unpacked.is_dir() {
        unpacked
    } else {
        PathBuf::from("/usr/lib/ipxe/qemu")
    }
}

/// Boots a machine with MAC `mac` from the network: qemu's iPXE ROM gets `bootfile` from qemu's
/// DHCP server and chains to the server's `/boot/ipxe`. An e1000: SeaBIOS does not boot from
/// the virtio ROM of the qemu packaged for bookworm.
fn netboot(kit: &Kit, s: &Server, mac: &str, console: &Path) -> Vm {
    let _ = std::fs::remove_file(console);
    let rom = ipxe_roms(kit).join("pxe-e1000.rom");
    assert!(rom.is_file(), "no iPXE ROM {}", rom.display());
    let log = console.with_extension("qemu.log");
    let child = Command::new(&kit.qemu)
        .args(["-nographic", "-no-reboot", "-monitor", "none", "-m", "768"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(["-boot", "n", "-netdev"])
        .arg(format!(
            "user,id=n0,bootfile=http://10.0.2.2:{}/boot/ipxe",
            s.port
        ))
        .arg("-device")
        .arg(format!(
            "e1000,netdev=n0,mac={mac},romfile={}",
            rom.display()
        ))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
        .spawn()
        .unwrap();
    Vm::from_child(child, console)
}

#[test]
fn slow_boot_netboot_two_channels_by_mac_and_the_default_for_an_unknown_one() {
    let kit = Kit::get();
    let s = Server::start_args(&[
        "--netboot",
        "--netboot-default",
        "net/b",
        "--netboot-cmdline",
        "console=ttyS0 panic=-1",
        "--netboot-menu-timeout",
        "2",
    ]);
    let initrd = s.path("initrd.img");
    initrd_with_root(&kit, &s.root_json(), &initrd);
    let publish = |tag: &str| {
        let src = s.path(&format!("src-{tag}"));
        live_tree(&kit, &src, &initrd, &s.root_json(), &format!("net-{tag}"));
        let id = commit(&s, &src, &format!("net/{tag}"));
        s.ok(&["publish", &format!("net/{tag}")]);
        id
    };
    let mut ids = vec![publish("a")];

    // The default channel has nothing to boot yet: an unknown MAC gets the menu of the
    // channels, which boots the first after its timeout.
    let unknown = "52:54:00:5e:00:0c";
    let (st, _, body) = crate::netboot::get(
        &format!("http://127.0.0.1:{}/boot/ipxe/mac/{unknown}", s.port),
        &[],
    );
    assert_eq!(st, 200);
    let script = String::from_utf8(body).unwrap();
    assert!(script.contains("the default channel: "), "{script}");
    assert!(
        script.contains("menu semithin: choose a channel to boot"),
        "{script}"
    );
    assert!(script.contains("item c0 net/a"), "{script}");
    assert!(
        script.contains("choose --timeout 2000 --default c0 target"),
        "{script}"
    );
    let console = s.path("console-menu.txt");
    let mut vm = netboot(&kit, &s, unknown, &console);
    vm.wait_for("LIVE-BOOTED", 200);
    let text = vm.wait_off(60);
    eprintln!("netboot through the menu: {:.0} s", vm.elapsed());
    assert_booted(&text, &ids[0], "net-a");
    assert!(text.contains("semithin.channel=net/a"), "{text}");

    ids.push(publish("b"));
    // Both releases carry the same kernel and initrd: kept once.
    let t = targets(&s);
    assert_eq!(
        t[format!("boot/{}/vmlinuz", ids[0])]["hashes"],
        t[format!("boot/{}/vmlinuz", ids[1])]["hashes"]
    );

    // A machine of the fleet on net/a, whose facts name its MAC address.
    let known = "52:54:00:5e:00:0a";
    let token = s.enroll_token(true);
    let a = Agent::new(&s, "m1", &token);
    let facts = s.path("facts/m1");
    std::fs::create_dir_all(facts.join("sys/class/net/eth0")).unwrap();
    std::fs::write(
        facts.join("sys/class/net/eth0/address"),
        format!("{known}\n"),
    )
    .unwrap();
    std::fs::create_dir_all(&a.state).unwrap();
    std::fs::write(
        a.state.join("agent.toml"),
        format!("facts_root = \"{}\"\n", facts.display()),
    )
    .unwrap();
    assert!(a.once().success(), "{}", a.log());
    s.ok(&["fleet", "assign", "m1", "net/a"]);
    assert!(a.once().success(), "{}", a.log());

    let bytes = |s: &Server| s.stats()["boot_bytes_sent"].as_u64().unwrap();
    let len = |id: &str, n: &str| artifact(&s, id, n).1["length"].as_u64().unwrap();
    for (mac, i, tag, channel) in [
        (known, 0, "net-a", "net/a"),
        ("52:54:00:5e:00:0b", 1, "net-b", "net/b"),
    ] {
        let before = bytes(&s);
        let console = s.path(&format!("console-{tag}.txt"));
        let mut vm = netboot(&kit, &s, mac, &console);
        vm.wait_for("LIVE-BOOTED", 200);
        let text = vm.wait_off(60);
        eprintln!("netboot of {mac}: {:.0} s", vm.elapsed());
        assert_booted(&text, &ids[i], tag);
        assert!(
            text.contains(&format!("semithin.channel={channel}")),
            "{text}"
        );
        // kernel, initrd and squashfs, each once
        let sent = bytes(&s) - before;
        let want =
            len(&ids[i], "vmlinuz") + len(&ids[i], "initrd.img") + len(&ids[i], "root.squashfs");
        eprintln!("netboot of {mac}: {sent} bytes of boot artifacts sent, {want} the three files");
        assert_eq!(sent, want);
    }
}

/// A live release with the agent: its init says what booted and what the persistent layer
/// kept from the boot before, writes its tag there, and runs the agent once (the live boot's
/// `ip=dhcp` left the network up; the host's loopback is 10.0.2.2).
fn live_agent_tree(kit: &Kit, s: &Server, dir: &Path, initrd: &Path, agent: &Path, tag: &str) {
    live_tree(kit, dir, initrd, &s.root_json(), tag);
    let init = format!(
        "#!/bin/sh\nPATH=/bin:/sbin\nB=/bin/busybox\n\
         echo \"LIVE-BOOTED tag={tag} release=$($B cat /run/semithin/booted) \
         root=$($B awk '$2 == \"/\" {{print $3}}' /proc/mounts | $B tail -1)\"\n\
         echo \"LIVE-KEPT $($B cat /kept 2>/dev/null || echo nothing)\"\n\
         echo {tag} > /kept\n\
         n=0\n\
         while :; do\n\
         /usr/bin/semithin agent --state /var/lib/semithin --config /etc/semithin/agent.toml \
         --once 2>&1 | $B sed 's/^/agent: /'\n\
         n=$((n + 1))\n\
         $B grep -q livetest.wait-stage /proc/cmdline || break\n\
         [ -f /run/semithin/live/cache-disk/semithin-live/next ] && break\n\
         [ $n -ge 60 ] && break\n\
         $B sleep 2\n\
         done\n\
         echo LIVE-AGENT-DONE\n$B sync\n$B poweroff -f\n"
    );
    std::fs::write(dir.join("sbin/init"), init).unwrap();
    let token = s.enroll_token(true);
    std::fs::write(
        dir.join("etc/semithin/agent.toml"),
        format!(
            "server = \"http://10.0.2.2:{}\"\ntoken = \"{token}\"\nname = \"live1\"\n\
             trusted_root = \"/etc/semithin/root.json\"\nlive = true\n\
             verify_interval_secs = 0\ninventory_interval_secs = 0\n",
            s.port
        ),
    )
    .unwrap();
    sh(&format!(
        "set -e; R={r}; cd {d}; mkdir -p usr/bin var/lib; \
         for l in libgcc_s.so.1 libm.so.6; do cp $R/usr/lib/x86_64-linux-gnu/$l lib/x86_64-linux-gnu/; done; \
         cp {a} usr/bin/semithin",
        r = q(&kit.root),
        d = q(dir),
        a = q(agent),
    ));
}

#[test]
fn slow_boot_live_machine_runs_the_agent_keeps_its_layer_and_boots_the_release_it_staged() {
    let kit = Kit::get();
    let s = Server::start_args(&["--netboot"]);
    let initrd = s.path("initrd.img");
    initrd_with_root(&kit, &s.root_json(), &initrd);
    let agent = s.path("semithin");
    sh(&format!(
        "objcopy --strip-debug {} {}",
        q(Path::new(crate::common::BIN)),
        q(&agent)
    ));
    let src = s.path("src1");
    live_agent_tree(&kit, &s, &src, &initrd, &agent, "live-1");
    let v1 = commit(&s, &src, "live/a");
    s.ok(&["publish", "live/a"]);
    let (k, _) = artifact(&s, &v1, "vmlinuz");
    let (i, _) = artifact(&s, &v1, "initrd.img");
    let boot_kit = Kit {
        qemu: kit.qemu.clone(),
        kernel: k,
        initrd: i,
        root: kit.root.clone(),
    };
    // One partition for the cache and the persistent writable layer.
    let empty = s.path("disk-tree");
    std::fs::create_dir_all(&empty).unwrap();
    let disk = s.path("live.img");
    ext4_image(&empty, &disk, 512);
    let start = |n: u32, extra: &str| {
        Vm::start(&Boot {
            kit: &boot_kit,
            disks: vec![disk.clone()],
            append: format!(
                "boot=semithin-live semithin.live=http://10.0.2.2:{} semithin.channel=live/a \
                 semithin.cache=/dev/vda semithin.overlay=/dev/vda ip=dhcp{extra}",
                s.port
            ),
            memory_mb: 768,
            console: s.path(&format!("console-agent-{n}.txt")),
            extra: [
                "-netdev",
                "user,id=n0",
                "-device",
                "virtio-net-pci,netdev=n0,romfile=",
            ]
            .map(String::from)
            .to_vec(),
        })
    };
    let finish = |n: u32, mut vm: Vm| {
        let text = vm.wait_off(300).replace('\r', "");
        eprintln!("live boot {n}: {:.0} s", vm.elapsed());
        for l in text.lines().filter(|l| {
            l.starts_with("LIVE-") || l.contains("semithin:") || l.starts_with("agent: ")
        }) {
            eprintln!("  {l}");
        }
        assert!(text.contains("LIVE-AGENT-DONE"), "{text}");
        text
    };
    let boot = |n: u32| finish(n, start(n, ""));

    // 1: the machine enrolls from the live system and reports the release it booted.
    let c = boot(1);
    assert!(
        c.contains(&format!("LIVE-BOOTED tag=live-1 release={v1}")),
        "{c}"
    );
    assert!(c.contains("writable layer: /dev/vda"), "{c}");
    assert!(c.contains("LIVE-KEPT nothing"), "{c}");
    assert!(c.contains("agent: enrolled as live1"), "{c}");
    let m = s.machine("live1");
    assert_eq!(m["report"]["current"], v1.as_str(), "{m}");
    let id = m["id"].clone();
    s.ok(&["fleet", "assign", "live1", "live/a"]);

    // 2: the machine boots v1 again; while it runs, v2 is published, and the agent stages v2
    // for the next boot: its squashfs fetched and verified into the cache.
    let mut vm = start(2, " livetest.wait-stage");
    vm.wait_for("LIVE-BOOTED", 240);
    let src2 = s.path("src2");
    live_agent_tree(&kit, &s, &src2, &initrd, &agent, "live-2");
    let v2 = commit(&s, &src2, "live/a");
    s.ok(&["publish", "live/a"]);
    let sha2 = artifact(&s, &v2, "root.squashfs").1["hashes"]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = finish(2, vm);
    assert!(
        c.contains(&format!("LIVE-BOOTED tag=live-1 release={v1}")),
        "{c}"
    );
    // the writable layer kept what the first boot wrote, and the machine its identity
    assert!(c.contains("LIVE-KEPT live-1"), "{c}");
    assert!(!c.contains("agent: enrolled"), "{c}");
    assert!(
        c.contains(&format!(
            "staged for the next boot: its squashfs ({} bytes, sha256 {}) verified",
            artifact(&s, &v2, "root.squashfs").1["length"],
            sha2.get(..12).unwrap()
        )),
        "{c}"
    );
    let next = image_file(&disk, "semithin-live/next").expect("the agent named the next boot");
    assert_eq!(String::from_utf8(next).unwrap(), format!("{v2} {sha2}\n"));
    let m = s.machine("live1");
    assert_eq!(m["id"], id);
    assert_eq!(m["report"]["current"], v1.as_str(), "{m}");

    // 3: the boot takes the staged release from the cache (nothing of it fetched again) and
    // the agent reports it running and healthy.
    let sent = s.stats()["boot_bytes_sent"].as_u64().unwrap();
    let c = boot(3);
    assert!(
        c.contains(&format!(
            "release {v2} was staged for this boot by the agent"
        )),
        "{c}"
    );
    assert!(
        c.contains(&format!("LIVE-BOOTED tag=live-2 release={v2}")),
        "{c}"
    );
    assert!(c.contains("LIVE-KEPT live-1"), "{c}");
    // a new release booted: its health is checked again
    assert!(
        c.contains(&format!(
            "release {} (running) passed its health checks",
            v2.get(..12).unwrap()
        )),
        "{c}"
    );
    assert_eq!(
        s.stats()["boot_bytes_sent"].as_u64().unwrap(),
        sent,
        "the staged squashfs was fetched again"
    );
    let m = s.machine("live1");
    assert_eq!(m["id"], id);
    assert_eq!(m["report"]["current"], v2.as_str(), "{m}");
    assert_eq!(m["report"]["health"], "healthy", "{m}");
    let list: Value = serde_json::from_str(&s.ok(&["fleet", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
}
