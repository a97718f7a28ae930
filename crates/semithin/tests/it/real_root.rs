//! Real Debian root filesystems: a debootstrap minbase tree round-trips exactly, and a security
//! upgrade of it stores only the content that changed and reaches a machine as a small delta.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/debian-root.sh")
}

/// The cached `debootstrap --variant=minbase bookworm` tree (built on first use).
fn base_root() -> PathBuf {
    let out = sh(&format!("{} base", q(&fixture())));
    PathBuf::from(out.trim())
}

/// A private copy of the base root, with a file capability and ACLs added so that both kinds of
/// xattr are exercised on a real tree.
fn copy_of_base(env: &Env, name: &str) -> PathBuf {
    let dest = env.path(name);
    sh(&format!("cp -a {} {}", q(&base_root()), q(&dest)));
    dest
}

#[test]
fn debootstrap_root_round_trips_exactly() {
    let env = Env::new();
    let root = copy_of_base(&env, "root");
    sh(&format!(
        "cd {} && setcap cap_net_raw+ep usr/bin/dpkg && setfacl -m u:100:r etc/hostname && setfacl -d -m g:50:rwx srv",
        q(&root)
    ));
    let v = env.json(&["commit", "-c", "debian", root.to_str().unwrap()]);
    assert!(v["files"].as_u64().unwrap() > 4000, "{v:#}");
    assert!(v["hardlinks"].as_u64().unwrap() >= 1, "{v:#}");
    let out = env.path("checkout");
    env.ok(&["checkout", "debian", out.to_str().unwrap()]);
    assert_same_tree(&root, &out);
    env.fsck_ok();
}

/// sha256 of every regular file below `dir`, by relative path.
fn file_hashes(dir: &Path) -> HashMap<String, (String, u64)> {
    let out = sh(&format!(
        "cd {} && find . -type f -print0 | xargs -0 sha256sum",
        q(dir)
    ));
    let sizes = sh(&format!(
        "cd {} && find . -type f -printf '%s %p\\n'",
        q(dir)
    ));
    let sizes: HashMap<&str, u64> = sizes
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(s, p)| (p, s.parse().unwrap())))
        .collect();
    out.lines()
        .map(|l| {
            let (h, p) = l.split_once("  ").unwrap();
            (
                p.trim_start_matches("./").to_owned(),
                (h.to_owned(), sizes[p]),
            )
        })
        .collect()
}

#[test]
fn security_upgrade_stores_only_changed_content_and_travels_as_a_small_delta() {
    let env = Env::new();
    let v1 = copy_of_base(&env, "v1");
    let first = env.json(&["commit", "-c", "debian", v1.to_str().unwrap()]);
    let v2 = env.path("v2");
    sh(&format!("cp -a {} {}", q(&v1), q(&v2)));
    let upgraded: u32 = sh(&format!("{} upgrade {}", q(&fixture()), q(&v2)))
        .trim()
        .parse()
        .unwrap();
    assert!(upgraded > 0, "the upgrade changed no package");
    let second = env.json(&["commit", "-c", "debian", v2.to_str().unwrap()]);

    // Content of v2 that v1 does not have anywhere: the only content the second commit may store.
    let (h1, h2) = (file_hashes(&v1), file_hashes(&v2));
    let old: HashSet<&String> = h1.values().map(|(h, _)| h).collect();
    let mut new_content: HashMap<&String, u64> = HashMap::new();
    for (h, size) in h2.values() {
        if !old.contains(h) {
            new_content.insert(h, *size);
        }
    }
    let new_bytes_max: u64 = new_content.values().sum();
    let stored = second["new_bytes"].as_u64().unwrap();
    assert!(stored > 0, "{second:#}");
    assert!(
        stored <= new_bytes_max,
        "stored {stored} new bytes, but only {new_bytes_max} bytes of content are new: {second:#}"
    );
    // Most of the tree was shared, and the whole of it is accounted for.
    assert!(second["shared_bytes"].as_u64().unwrap() > first["bytes"].as_u64().unwrap() / 2);
    assert_eq!(
        second["new_bytes"].as_u64().unwrap() + second["shared_bytes"].as_u64().unwrap(),
        h2.iter()
            .filter(|(p, _)| !is_hardlink_copy(&v2, p))
            .map(|(_, (_, s))| s)
            .sum::<u64>()
    );

    // diff lists exactly the files whose content changed or that are new.
    let changes = env.json(&["diff", "debian~1", "debian"]);
    let listed: HashSet<String> = changes
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["type"] == "file"
                && (c["change"] == "added"
                    || c["fields"]
                        .as_array()
                        .is_some_and(|f| f.iter().any(|x| x == "content")))
        })
        .map(|c| c["path"].as_str().unwrap().to_owned())
        .collect();
    let expected: HashSet<String> = h2
        .iter()
        .filter(|(p, (h, _))| h1.get(*p).is_none_or(|(h1, _)| h1 != h))
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(listed, expected);
    let out = env.path("checkout");
    env.ok(&["checkout", "debian", out.to_str().unwrap()]);
    assert_same_tree(&v2, &out);
    env.fsck_ok();

    // The delta a machine on v1 downloads: a small part of the new content, by kind.
    let pack = env.path("v1-v2.pack");
    let d = env.json(&[
        "delta",
        "debian~1",
        "debian",
        "--out",
        pack.to_str().unwrap(),
    ]);
    let total = d["total_bytes"].as_u64().unwrap();
    assert_eq!(total, std::fs::metadata(&pack).unwrap().len(), "{d:#}");
    assert_eq!(
        total,
        d["metadata_bytes"].as_u64().unwrap()
            + d["patch_bytes"].as_u64().unwrap()
            + d["new_bytes"].as_u64().unwrap()
    );
    assert!(d["patch_bytes"].as_u64().unwrap() > 0, "{d:#}");
    assert!(
        total * 8 < new_bytes_max,
        "{total} of {new_bytes_max}: {d:#}"
    );

    // A machine's repository with v1 and the commit of v2 only: the pack makes v2 whole.
    let (c1, c2): (semithin_store::CommitId, semithin_store::CommitId) = (
        first["commit"].as_str().unwrap().parse().unwrap(),
        second["commit"].as_str().unwrap().parse().unwrap(),
    );
    let machine = env.path("machine");
    {
        use semithin_store::{Access, Repo, pack::ObjKind, transfer};
        let server = Repo::open(&env.repo, Access::Read).unwrap();
        Repo::init(&machine, Default::default()).unwrap();
        let m = Repo::open(&machine, Access::Write).unwrap();
        loop {
            let want = transfer::missing(&m.objects, c1).unwrap();
            if want.is_empty() {
                break;
            }
            let mut buf = Vec::new();
            transfer::send(&server.objects, &want, &mut buf).unwrap();
            transfer::receive(&m.objects, &want.iter().copied().collect(), buf.as_slice()).unwrap();
        }
        let commit = server
            .objects
            .get_verified(ObjKind::Commit, c2.as_bytes())
            .unwrap();
        m.objects.put(&commit).unwrap();
        m.objects.flush().unwrap();
    }
    let applied = Command::new(BIN)
        .arg("--repo")
        .arg(&machine)
        .args(["apply-delta", pack.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let a: serde_json::Value = serde_json::from_slice(&applied.stdout).unwrap();
    assert_eq!(a["still_missing"], 0, "{a:#}");
    let out2 = env.path("machine-checkout");
    let co = Command::new(BIN)
        .arg("--repo")
        .arg(&machine)
        .args(["checkout", &c2.to_hex(), out2.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        co.status.success(),
        "{}",
        String::from_utf8_lossy(&co.stderr)
    );
    assert_same_tree(&v2, &out2);
}

/// True for every name of a hardlinked file but the first (by path order): its content is
/// counted once.
fn is_hardlink_copy(root: &Path, rel: &str) -> bool {
    let out = sh(&format!(
        "cd {} && n=$(stat -c %h './{rel}'); if [ \"$n\" -gt 1 ]; then i=$(stat -c %i './{rel}'); \
         first=$(find . -inum $i | LC_ALL=C sort | head -1); [ \"$first\" != './{rel}' ] && echo copy; fi; true",
        q(root)
    ));
    out.trim() == "copy"
}
