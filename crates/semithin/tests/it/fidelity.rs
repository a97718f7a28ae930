//! A version checked out is the tree that was committed: content and every metadata field.

use crate::common::*;

#[test]
fn directory_round_trip_keeps_everything() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    // A socket is skipped with a warning naming it (tmp's mtime is put back after it goes).
    let stamp = env.path("stamp");
    sh(&format!("touch -r {} {}", q(&src.join("tmp")), q(&stamp)));
    sh(&format!(
        "python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' {}",
        q(&src.join("tmp/sock"))
    ));
    sh(&format!("touch -r {} {}", q(&stamp), q(&src.join("tmp"))));
    let out = env.run(&["commit", "-c", "test", src.to_str().unwrap()]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("skipped socket tmp/sock"), "{err}");
    std::fs::remove_file(src.join("tmp/sock")).unwrap();
    sh(&format!("touch -r {} {}", q(&stamp), q(&src.join("tmp"))));
    let dest = env.path("out");
    env.ok(&["checkout", "test", dest.to_str().unwrap()]);
    assert_same_tree(&src, &dest);
    // The three names of usr/lib/a are one inode again.
    let ino = |p: &str| sh(&format!("stat -c %i {}", q(&dest.join(p))));
    assert_eq!(ino("usr/lib/a"), ino("etc/c"));
    assert_eq!(ino("usr/lib/a"), ino("usr/lib/b"));
    assert!(sh(&format!("getcap {}", q(&dest.join("usr/bin/ping")))).contains("cap_net_raw=ep"));
    env.fsck_ok();
}

#[test]
fn tar_sources_round_trip_through_export() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    let a = env.commit("dir", &src);
    // Our own export, and GNU tar's pax archive compressed two ways, all commit to the same tree.
    let exported = env.path("export.tar");
    env.ok(&["export", &a, "--format", "tar", exported.to_str().unwrap()]);
    let gnu = env.path("gnu.tar");
    sh(&format!(
        "tar --format=pax --xattrs --xattrs-include='*' -C {} -cf {} . && gzip -k {} && zstd -q {}",
        q(&src),
        q(&gnu),
        q(&gnu),
        q(&gnu)
    ));
    for archive in [
        exported.clone(),
        gnu.clone(),
        env.path("gnu.tar.gz"),
        env.path("gnu.tar.zst"),
    ] {
        let id = env.commit("tar", &archive);
        let dest = env.path(&format!(
            "out-{}",
            archive.file_name().unwrap().to_str().unwrap()
        ));
        env.ok(&["checkout", &id, dest.to_str().unwrap()]);
        assert_same_tree(&src, &dest);
        let diff = env.json(&["diff", &a, &id]);
        assert_eq!(
            diff,
            serde_json::json!([]),
            "{} differs from the directory commit",
            archive.display()
        );
    }
    env.fsck_ok();
}

#[test]
fn squashfs_export_is_read_by_unsquashfs() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    // squashfs keeps whole seconds only, and has no POSIX ACLs: the export warns and leaves
    // them out, so the source is compared without them.
    sh(&format!(
        "cd {} && find . -exec touch -h -d @1700000000 {{}} +",
        q(&src)
    ));
    env.commit("c", &src);
    let img = env.path("root.squashfs");
    let out = env.run(&["export", "c", "--format", "squashfs", img.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("left out on 2 entries"));
    sh(&format!(
        "cd {} && setfacl -R -b -k srv && chmod 664 srv/shared/file && find srv -exec touch -h -d @1700000000 {{}} +",
        q(&src)
    ));
    // The squashfs superblock magic.
    assert!(std::fs::read(&img).unwrap().starts_with(b"hsqs"));
    let dest = env.path("unsquashed");
    sh(&format!("unsquashfs -q -n -d {} {}", q(&dest), q(&img)));
    assert_same_tree(&src, &dest);
}

#[test]
fn second_checkout_shares_files_through_the_cache() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    // Two separate files with equal content and metadata must stay separate inodes.
    sh(&format!(
        "cd {} && echo same > etc/twin1 && echo same > etc/twin2 && touch -d @1600000000 etc/twin1 etc/twin2",
        q(&src)
    ));
    env.commit("c", &src);
    sh(&format!("echo changed > {}", q(&src.join("etc/motd"))));
    env.commit("c", &src);
    let one = env.path("one");
    let two = env.path("two");
    let first = env.json(&["checkout", "--cache", "c~1", one.to_str().unwrap()]);
    assert_eq!(first["linked_files"], 0);
    let second = env.json(&["checkout", "--cache", "c", two.to_str().unwrap()]);
    let files = second["files"].as_u64().unwrap();
    // Everything came from the cache but the changed file and the second twin.
    assert_eq!(
        second["linked_files"].as_u64().unwrap(),
        files - 2,
        "{second:#}"
    );
    let ino = |d: &std::path::Path, p: &str| sh(&format!("stat -c %i {}", q(&d.join(p))));
    assert_eq!(ino(&one, "usr/lib/big.bin"), ino(&two, "usr/lib/big.bin"));
    assert_ne!(ino(&two, "etc/twin1"), ino(&two, "etc/twin2"));
    // Hardlinks of the tree are still exactly the tree's.
    assert_eq!(ino(&two, "usr/lib/a"), ino(&two, "etc/c"));
    assert_eq!(
        std::fs::read_to_string(two.join("etc/motd")).unwrap(),
        "changed\n"
    );
    // Apart from link counts (the cache holds one more link), the checkout is the tree.
    let strip = |l: String| {
        l.lines()
            .map(|x| {
                let mut f: Vec<&str> = x.split(' ').collect();
                if f.len() == 9 && f[1] == "f" {
                    f[7] = "-";
                }
                f.join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(listing(&src)), strip(listing(&two)));
    // gc keeps cache files that checkouts use, and drops them once no checkout does.
    let gc = env.json(&["gc"]);
    assert_eq!(gc["removed_cache_files"], 0);
    std::fs::remove_dir_all(&one).unwrap();
    let gc = env.json(&["gc"]);
    assert_eq!(gc["removed_cache_files"], 1, "{gc:#}");
}

#[test]
fn gnu_tar_acls_in_text_form_are_kept() {
    let env = Env::new();
    let src = env.path("src");
    // GNU tar --acls writes ACLs as text with user and group names, which are the image's own:
    // `daemon` (1) is looked up in the archive's etc/passwd and etc/group; 4242 stays a number.
    sh(&format!(
        "set -e; mkdir -p {s}/etc {s}/d && cd {s}
         printf 'root:x:0:0::/root:/bin/sh\\ndaemon:x:1:1::/:/bin/false\\n' > etc/passwd
         printf 'root:x:0:\\ndaemon:x:1:\\n' > etc/group
         echo x > d/f && setfacl -m u:daemon:rw,u:4242:r,g:daemon:r,g:4343:rw d/f
         setfacl -d -m u:4242:rx,g:daemon:rwx d && setfacl -m u:daemon:rx d",
        s = q(&src)
    ));
    let archive = env.path("acls.tar");
    sh(&format!(
        "tar --format=pax --acls -C {} -cf {} .",
        q(&src),
        q(&archive)
    ));
    assert!(sh(&format!("grep -c -a SCHILY.acl {}", q(&archive))).trim() != "0");
    let id = env.commit("acl", &archive);
    let out = env.path("out");
    env.ok(&["checkout", &id, out.to_str().unwrap()]);
    assert_same_tree(&src, &out);
    assert!(sh(&format!("getfacl -n {}", q(&out.join("d/f")))).contains("user:4242:r--"));

    // A name the image does not define is refused, naming it.
    sh(&format!(
        "printf 'root:x:0:0::/root:/bin/sh\\n' > {}",
        q(&src.join("etc/passwd"))
    ));
    let bad = env.path("bad.tar");
    sh(&format!(
        "tar --format=pax --acls -C {} -cf {} .",
        q(&src),
        q(&bad)
    ));
    let err = env.fails(&["commit", "-c", "acl", bad.to_str().unwrap()]);
    assert!(
        err.contains("ACL names user \"daemon\", which the image does not define"),
        "{err}"
    );
}
