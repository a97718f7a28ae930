//! `semithin boot-artifacts`: the kernel, an initrd made by the image's own initramfs-tools with
//! semithin's boot script, and a squashfs of a release, with their hashes in a manifest.

use std::path::{Path, PathBuf};

use crate::common::{BIN, Env, q, sh};

fn boot_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    PathBuf::from(sh(&format!("{}/debian-root.sh boot", q(&dir))).trim())
}

/// Runs `CMD` (a shell command) in a chroot of the read-only `root`, in a private mount namespace
/// with a tmpfs on its /tmp holding `file` as /tmp/FILE_NAME, so nothing of `root` changes.
fn in_root(root: &Path, file: &Path, cmd: &str) -> String {
    sh(&format!(
        "unshare --mount --propagation private /bin/sh -c 'set -e; \
         mount -t tmpfs tmpfs \"$1/tmp\"; cp \"$2\" \"$1/tmp/\"; \
         chroot \"$1\" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /bin/sh -c \"$3\"' \
         sh {} {} {}",
        q(root),
        q(file),
        q(Path::new(cmd))
    ))
}

fn sha256(p: &Path) -> String {
    sh(&format!("sha256sum {}", q(p)))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_owned).collect();
    v.sort();
    v
}

#[test]
fn slow_boot_artifacts_of_a_debian_release_are_its_kernel_an_initrd_with_semithin_and_a_squashfs() {
    let root = boot_root();
    let env = Env::new();
    // Listed just before it is committed (tests/fixtures/boot-root.sh adds files to it once).
    let tree = sh(&format!(
        "cd {} && find . -mindepth 1 | sed 's|^\\./||'",
        q(&root)
    ));
    let id = env.commit("boot", &root);
    let out = env.path("art");
    let t = std::time::Instant::now();
    let m = env.json(&[
        "boot-artifacts",
        "boot",
        "--out",
        out.to_str().unwrap(),
        // As tests/fixtures/boot-root.sh: only what a qemu disk boot needs, so it is quick.
        "--initrd-modules",
        "virtio_pci,virtio_blk,ext4,crc32c_generic",
    ]);
    eprintln!("boot-artifacts took {:?}", t.elapsed());
    assert_eq!(m["commit"], id.as_str());
    let kver = sh(&format!(
        "ls {}/usr/lib/modules | sort -V | tail -1",
        q(&root)
    ));
    let kver = kver.trim();
    assert_eq!(m["kernel_version"], kver);
    assert_eq!(m["kernel_path"], format!("boot/vmlinuz-{kver}"));
    assert!(m.get("initrd_missing").is_none(), "{m:#}");

    // The kernel is the tree's, byte for byte.
    let kernel = std::fs::read(out.join("vmlinuz")).unwrap();
    assert_eq!(
        kernel,
        std::fs::read(root.join(format!("boot/vmlinuz-{kver}"))).unwrap()
    );

    // The manifest lists the three files with their true lengths and hashes, and is the file's.
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(on_disk, m);
    let files = m["files"].as_object().unwrap();
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["initrd.img", "root.squashfs", "vmlinuz"]
    );
    for (name, f) in files {
        let p = out.join(name);
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(f["length"], bytes.len() as u64, "{name}");
        assert_eq!(
            f["blake3"],
            blake3::hash(&bytes).to_hex().as_str(),
            "{name}"
        );
        assert_eq!(f["sha256"], sha256(&p), "{name}");
    }
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["initrd.img", "manifest.json", "root.squashfs", "vmlinuz"]
    );

    // The initrd, as the image's own lsinitramfs lists it: semithin's boot script, its mount
    // functions, the binary, busybox and the image's own modules for its kernel.
    let initrd = out.join("initrd.img");
    let list = in_root(&root, &initrd, "lsinitramfs /tmp/initrd.img");
    let list: Vec<&str> = list.lines().collect();
    for want in [
        "scripts/local-bottom/semithin".to_owned(),
        "usr/lib/semithin/semithin-mount.sh".to_owned(),
        "usr/lib/semithin/semithin".to_owned(),
        "usr/bin/busybox".to_owned(),
        format!("usr/lib/modules/{kver}/kernel/fs/overlayfs/overlay.ko"),
        format!("usr/lib/modules/{kver}/kernel/fs/ext4/ext4.ko"),
    ] {
        // With or without usr/ (the image's initramfs-tools decides on the merged /usr).
        let alt = want.strip_prefix("usr/").unwrap_or(&want).to_owned();
        assert!(
            list.iter()
                .map(|l| l.trim_start_matches("./"))
                .any(|l| l == want || l == alt),
            "{want} is not in the initrd: {list:?}"
        );
    }
    // The boot script in it is packaging/'s, and the binary is this build's: it runs there and
    // says the same version as the binary under test.
    let unpacked = in_root(
        &root,
        &initrd,
        "cd /tmp && unmkinitramfs initrd.img x && cat x/main/scripts/local-bottom/semithin 2>/dev/null \
         || cat x/scripts/local-bottom/semithin; echo ===; \
         b=x/main/usr/lib/semithin/semithin; [ -e $b ] || b=x/usr/lib/semithin/semithin; $b --version",
    );
    let (script, version) = unpacked.split_once("===\n").unwrap();
    let packaged = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../packaging/initramfs-tools/scripts/local-bottom/semithin"),
    )
    .unwrap();
    assert_eq!(script, packaged);
    // the small binary that sits beside semithin (semithin-initrd), of the same version
    assert_eq!(
        version,
        sh(&format!("{} --version", q(Path::new(BIN)))).replace("semithin ", "semithin-initrd ")
    );

    // The squashfs holds the tree's entries, every one.
    let sq = sh(&format!(
        "unsquashfs -no-progress -l -d R {} | grep '^R/' | sed 's|^R/||'",
        q(&out.join("root.squashfs"))
    ));
    assert_eq!(sorted_lines(&sq), sorted_lines(&tree));
    assert!(sq.lines().any(|l| l == format!("boot/vmlinuz-{kver}")));

    // Made again, every artifact is the same byte for byte (mkinitramfs with SOURCE_DATE_EPOCH
    // at the commit's time; tar2sqfs from the same tar stream).
    let again = env.json(&[
        "boot-artifacts",
        id.as_str(),
        "--out",
        env.path("again").to_str().unwrap(),
        "--initrd-modules",
        "virtio_pci,virtio_blk,ext4,crc32c_generic",
    ]);
    assert_eq!(again, m);

    // The same command again refuses to overwrite the artifacts.
    let err = env.fails(&["boot-artifacts", "boot", "--out", out.to_str().unwrap()]);
    assert!(err.contains("is not an empty directory"), "{err}");
    assert_eq!(std::fs::read(out.join("vmlinuz")).unwrap(), kernel);
}

/// Leftovers of the work directory beside OUT.
fn leftovers(env: &Env) -> Vec<String> {
    std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".semithin-boot-"))
        .collect()
}

#[test]
fn boot_artifacts_without_initramfs_tools_are_a_kernel_and_a_squashfs_and_say_why() {
    let env = Env::new();
    let tree = env.path("tree");
    sh(&format!(
        "set -e; cd {}; mkdir -p tree/boot tree/usr/lib/modules/6.1.0-2/kernel tree/etc; \
         head -c 100000 /dev/urandom > tree/boot/vmlinuz-6.1.0-2; \
         printf old > tree/boot/vmlinuz-5.10.0-1; mkdir tree/usr/lib/modules/5.10.0-1; \
         printf newer-without-modules > tree/boot/vmlinuz-6.2.0-1; echo x > tree/etc/hostname",
        q(env.dir.path())
    ));
    env.commit("nokit", &tree);
    let out = env.path("art");
    let m = env.json(&["boot-artifacts", "nokit", "--out", out.to_str().unwrap()]);
    assert_eq!(m["kernel_version"], "6.1.0-2");
    let why = m["initrd_missing"].as_str().unwrap();
    assert!(why.contains("no initramfs-tools"), "{why}");
    assert_eq!(
        m["files"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["root.squashfs", "vmlinuz"]
    );
    assert_eq!(
        std::fs::read(out.join("vmlinuz")).unwrap(),
        std::fs::read(tree.join("boot/vmlinuz-6.1.0-2")).unwrap()
    );
    assert!(!out.join("initrd.img").exists());
    // Without --json the admin is told too.
    let o = env.run(&[
        "boot-artifacts",
        "nokit",
        "--out",
        env.path("art2").to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: no initrd: the image has no initramfs-tools"),
        "{err}"
    );
    assert!(leftovers(&env).is_empty(), "{:?}", leftovers(&env));
}

#[test]
fn boot_artifacts_of_a_tree_without_a_kernel_or_of_a_bad_ref_are_refused_and_write_nothing() {
    let env = Env::new();
    let tree = env.path("tree");
    sh(&format!(
        "set -e; mkdir -p {t}/etc {t}/boot; echo x > {t}/etc/hostname; \
         printf k > {t}/boot/vmlinuz-6.1.0-3",
        t = q(&tree)
    ));
    env.commit("plain", &tree);
    let out = env.path("art");
    let o = out.to_str().unwrap();
    let err = env.fails(&["boot-artifacts", "plain", "--out", o]);
    assert!(
        err.contains(
            "no kernel to boot: boot/vmlinuz-6.1.0-3 found, but no usr/lib/modules/VERSION/"
        ),
        "{err}"
    );
    std::fs::remove_file(tree.join("boot/vmlinuz-6.1.0-3")).unwrap();
    env.commit("plain", &tree);
    let err = env.fails(&["boot-artifacts", "plain", "--out", o]);
    assert!(
        err.contains(
            "no kernel to boot: no boot/vmlinuz-VERSION nor usr/lib/modules/VERSION/vmlinuz"
        ),
        "{err}"
    );
    let err = env.fails(&["boot-artifacts", "no-such-channel", "--out", o]);
    assert!(
        err.contains("\"no-such-channel\" matches no commit or channel"),
        "{err}"
    );
    let err = env.fails(&["boot-artifacts", "plain~5", "--out", o]);
    assert!(err.contains("history ends after"), "{err}");
    let err = env.fails(&[
        "boot-artifacts",
        "plain",
        "--out",
        o,
        "--initrd-modules",
        "ext4,../evil",
    ]);
    assert!(
        err.contains("\"../evil\" is not a kernel module name"),
        "{err}"
    );
    assert!(!out.exists());
    assert!(leftovers(&env).is_empty(), "{:?}", leftovers(&env));
}
