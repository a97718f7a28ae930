//! A delta pack as a machine receives it (`delta::apply::apply`) into a store holding the old
//! release: whatever the pack holds, nothing is stored that is not an object of the new release
//! (every tree and file is checked against the ids the release names), everything stored reads
//! back verified, and an applied pack that leaves nothing missing leaves the release whole.
//! The pack's `from`/`to` ids are set to the fixture's, so the fuzzer works on what follows.
#![no_main]

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use semithin_delta::build::{Effort, build};
use semithin_fuzz::{
    check_commit, commit_dir, copy_objects, new_repo, open_store, reachable, scratch, write_seeds,
    write_tree,
};
use semithin_store::CommitId;
use semithin_store::pack::ObjKind;
use semithin_store::transfer::missing;

struct Fixture {
    _dir: tempfile::TempDir,
    /// Pack files of a machine's store holding the old release and the new commit object.
    base: PathBuf,
    from: CommitId,
    to: CommitId,
    /// Objects the new release reaches.
    new_objects: HashSet<(ObjKind, [u8; 32])>,
    packs: Vec<(String, Vec<u8>)>,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn text(n: usize, salt: u32) -> Vec<u8> {
    (0..n as u32)
        .flat_map(|i| format!("line {i} of the file {}\n", (i * 7 + salt) % 13).into_bytes())
        .collect()
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut e, data).unwrap();
    e.finish().unwrap()
}

fn fixture() -> Fixture {
    let dir = scratch();
    let repo = new_repo(&dir.path().join("repo"));
    let big_old = text(4000, 0);
    let mut big_new = big_old.clone();
    big_new[1000..1010].copy_from_slice(b"CHANGED!!!");
    let prog_old: Vec<u8> = (0..30_000u32).map(|i| (i * 31 % 256) as u8).collect();
    let mut prog_new = prog_old.clone();
    prog_new[500] ^= 0xff;
    let (gz_old, gz_new) = (gz(&text(300, 1)), gz(&text(300, 2)));
    let old = dir.path().join("old");
    write_tree(
        &old,
        &[
            ("etc/hostname", Some(&b"old\n"[..])),
            ("usr/share/big.txt", Some(&big_old[..])),
            ("usr/bin/prog", Some(&prog_old[..])),
            ("usr/lib/libx.so.1.2", Some(&b"library one two"[..])),
            ("usr/share/doc/changelog.gz", Some(&gz_old[..])),
            ("var/empty", None),
        ],
    );
    let new = dir.path().join("new");
    write_tree(
        &new,
        &[
            ("etc/hostname", Some(&b"new\n"[..])),
            ("etc/added", Some(&b"a new file"[..])),
            ("usr/share/big.txt", Some(&big_new[..])),
            ("usr/bin/prog", Some(&prog_new[..])),
            ("usr/lib/libx.so.1.3", Some(&b"library one two three"[..])),
            ("usr/share/doc/changelog.gz", Some(&gz_new[..])),
            ("var/empty", None),
            ("var/new/dir/deep", Some(&b"deep"[..])),
        ],
    );
    let from = commit_dir(&repo, &old, "fixture", 1);
    let to = commit_dir(&repo, &new, "fixture", 2);
    let mut packs = Vec::new();
    for (name, effort) in [("quick", Effort::Quick), ("full", Effort::Full)] {
        let mut out = Vec::new();
        build(&repo.objects, from, to, effort, &mut out).expect("build a delta pack");
        packs.push((name.to_owned(), out));
    }
    let machine = dir.path().join("machine");
    let store = open_store(&machine);
    loop {
        let m = missing(&store, from).expect("missing");
        if m.is_empty() {
            break;
        }
        copy_objects(&repo.objects, &store, &m);
    }
    copy_objects(&repo.objects, &store, &[(ObjKind::Commit, *to.as_bytes())]);
    store.flush().unwrap();
    let new_objects = reachable(&repo.objects, to);
    drop(store);
    Fixture {
        base: machine.join("packs"),
        _dir: dir,
        from,
        to,
        new_objects,
        packs,
    }
}

fuzz_target!(
    init: {
        let f = FIXTURE.get_or_init(fixture);
        write_seeds(f.packs.clone());
    },
    |data: &[u8]| {
        let f = FIXTURE.get_or_init(fixture);
        let mut pack = data.to_vec();
        if pack.len() >= 73 {
            pack[9..41].copy_from_slice(f.from.as_bytes());
            pack[41..73].copy_from_slice(f.to.as_bytes());
        }
        let dir = scratch();
        let packs = dir.path().join("packs");
        std::fs::create_dir_all(&packs).unwrap();
        let mut before = 0;
        for e in std::fs::read_dir(&f.base).unwrap() {
            let e = e.unwrap();
            std::fs::hard_link(e.path(), packs.join(e.file_name())).unwrap();
            before += 1;
        }
        assert!(before > 0);
        let store = open_store(dir.path());
        let had: HashSet<_> = store.list().into_iter().map(|(k, id, _)| (k, id)).collect();
        let res = semithin_delta::apply::apply(&store, f.from, f.to, pack.as_slice());
        for (kind, id, _) in store.list() {
            if had.contains(&(kind, id)) {
                continue;
            }
            assert!(
                f.new_objects.contains(&(kind, id)),
                "{} {} stored by a delta pack is not an object of the new release",
                kind.name(),
                hex::encode(id)
            );
            store.get(kind, &id).expect("a stored object reads back verified");
        }
        if res.is_ok() && missing(&store, f.to).expect("missing").is_empty() {
            check_commit(&store, f.to);
        }
        if f.packs.iter().any(|(_, p)| *p == pack) {
            res.expect("a genuine pack applies");
            assert!(missing(&store, f.to).unwrap().is_empty(), "a genuine pack is complete");
        }
    }
);
