//! `semithin commit` of a tar archive (plain, gzip or zstd: detected by magic, as for a file on
//! disk). Whatever the archive holds, the commit either fails with an error or stores a commit
//! that reads back whole (`check_commit`), with as many entries and bytes as it says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use semithin_fuzz::{Whole, check_commit, new_repo, scratch, write_seeds};
use semithin_store::import::{CommitOptions, commit};

fn entry(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, data: &[u8], link: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o755);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_700_000_000);
    h.set_size(data.len() as u64);
    if !link.is_empty() {
        h.set_link_name(link).unwrap();
    }
    b.append_data(&mut h, path, data).unwrap();
}

fn archive(pax: bool, long: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    entry(&mut b, "etc/", tar::EntryType::Directory, b"", "");
    entry(
        &mut b,
        "etc/hostname",
        tar::EntryType::Regular,
        b"machine\n",
        "",
    );
    entry(&mut b, "etc/empty", tar::EntryType::Regular, b"", "");
    entry(&mut b, "etc/motd", tar::EntryType::Symlink, b"", "hostname");
    entry(
        &mut b,
        "etc/hosts2",
        tar::EntryType::Link,
        b"",
        "etc/hostname",
    );
    entry(&mut b, "dev/null", tar::EntryType::Char, b"", "");
    entry(&mut b, "run/fifo", tar::EntryType::Fifo, b"", "");
    entry(
        &mut b,
        "usr/bin/big",
        tar::EntryType::Regular,
        &vec![7u8; 70_000],
        "",
    );
    if pax {
        b.append_pax_extensions([
            ("SCHILY.xattr.user.k", b"v\nw".as_slice()),
            ("mtime", b"1700000000.5"),
            (
                "SCHILY.acl.access",
                b"user::rwx,user:1000:r-x,group::r-x,mask::r-x,other::r-x",
            ),
        ])
        .unwrap();
        entry(&mut b, "etc/pax", tar::EntryType::Regular, b"pax", "");
    }
    if long {
        let name = format!("{}/file", "d".repeat(150));
        entry(&mut b, &name, tar::EntryType::Regular, b"long", "");
    }
    b.into_inner().unwrap()
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let plain = archive(true, true);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &archive(false, false)).unwrap();
    let zst = zstd::bulk::compress(&archive(true, false), 3).unwrap();
    vec![
        ("plain.tar".into(), plain),
        ("small.tar".into(), archive(false, false)),
        ("gz.tar.gz".into(), gz.finish().unwrap()),
        ("zst.tar.zst".into(), zst),
    ]
}

fuzz_target!(init: write_seeds(seeds()), |data: &[u8]| {
    let dir = scratch();
    let archive = dir.path().join("in.tar");
    std::fs::write(&archive, data).unwrap();
    let repo = new_repo(&dir.path().join("repo"));
    let opts = CommitOptions { channel: "fuzz", message: "fuzz", time: Some(0) };
    if let Ok(stats) = commit(&repo, &archive, &opts, &semithin_store::NoProgress) {
        let id = stats.commit.parse().expect("the commit id is hex");
        let whole = check_commit(&repo.objects, id);
        assert_eq!(whole, Whole { entries: stats.entries, bytes: stats.bytes });
    }
});
