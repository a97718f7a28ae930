//! Packs built from one real repository and applied to another that holds only the old release:
//! the new release arrives whole and verified; a damaged or misdirected pack stores nothing wrong.

use std::collections::HashSet;
use std::path::Path;

use semithin_delta::apply::apply;
use semithin_delta::build::{Effort, build};
use semithin_delta::listing::NOTHING;
use semithin_store::import::{CommitOptions, commit};
use semithin_store::pack::ObjKind;
use semithin_store::repo::Config;
use semithin_store::{Access, CommitId, NoProgress, Repo, transfer};

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// Deterministic, compressible-but-not-trivially bytes, like machine code.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&((x % 97) as u32 * 3).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn program(seed: u64, len: usize) -> Vec<u8> {
    let mut b = b"\x7fELF".to_vec();
    b.extend(bytes(seed, len));
    b
}

fn repo(dir: &Path) -> Repo {
    Repo::init(dir, Config::default()).unwrap();
    Repo::open(dir, Access::Write).unwrap()
}

/// Gives everything under `dir` one modification time, so a commit of it has the same id on
/// every run.
fn settle(dir: &Path) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            settle(&p);
        }
        std::fs::File::open(&p).unwrap().set_modified(t).unwrap();
    }
    std::fs::File::open(dir).unwrap().set_modified(t).unwrap();
}

fn commit_dir(r: &Repo, src: &Path, msg: &str) -> CommitId {
    settle(src);
    let opts = CommitOptions {
        channel: "lab/stable",
        message: msg,
        time: Some(1_700_000_000),
    };
    commit(r, src, &opts, &NoProgress)
        .unwrap()
        .commit
        .parse()
        .unwrap()
}

/// Copies everything of `c` from one store to another, as a plain object fetch would.
fn copy_release(from: &Repo, to: &Repo, c: CommitId) {
    loop {
        let want = transfer::missing(&to.objects, c).unwrap();
        if want.is_empty() {
            return;
        }
        let mut buf = Vec::new();
        transfer::send(&from.objects, &want, &mut buf).unwrap();
        let expected: HashSet<_> = want.iter().copied().collect();
        transfer::receive(&to.objects, &expected, buf.as_slice()).unwrap();
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    server: Repo,
    machine: Repo,
    v1: CommitId,
    v2: CommitId,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let big = bytes(1, 3_000_000);
    write(&src, "usr/lib/libfoo.so.1.2", &program(2, 400_000));
    write(&src, "usr/lib/big.bin", &big);
    write(&src, "usr/bin/tool", &program(3, 200_000));
    for i in 0..50 {
        let text = format!("module {i}\n{}", "sub thing { return 1; }\n".repeat(40 + i));
        write(&src, &format!("usr/share/perl/M{i}.pm"), text.as_bytes());
    }
    write(&src, "etc/motd", b"hello\n");
    write(&src, "etc/gone", b"removed in v2\n");
    let page = |v: &str| {
        let text = format!("tool {v}\n{}", ".TH a line of a man page\n".repeat(300));
        semithin_delta::gz::compress(
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03",
            9,
            text.as_bytes(),
        )
    };
    write(&src, "usr/share/man/man1/tool.1.gz", &page("1"));
    let server = repo(&dir.path().join("server"));
    let v1 = commit_dir(&server, &src, "v1");

    // v2: a patched program, a renamed and patched library, a few changed modules, a 3 MB
    // file with a small change, new programs and text, a removed file.
    let mut tool = program(3, 200_000);
    for at in (1000..190_000).step_by(20_000) {
        tool[at..at + 4].copy_from_slice(&[9, 9, 9, 9]);
    }
    write(&src, "usr/bin/tool", &tool);
    let mut lib = program(2, 400_000);
    lib[300_000..300_100].copy_from_slice(&bytes(77, 100));
    std::fs::remove_file(src.join("usr/lib/libfoo.so.1.2")).unwrap();
    write(&src, "usr/lib/libfoo.so.1.3", &lib);
    for i in [3, 17, 42] {
        let text = format!(
            "module {i} v2\n{}",
            "sub thing { return 2; }\n".repeat(40 + i)
        );
        write(&src, &format!("usr/share/perl/M{i}.pm"), text.as_bytes());
    }
    let mut big2 = big.clone();
    big2[2_000_000..2_000_010].copy_from_slice(b"0123456789");
    write(&src, "usr/lib/big.bin", &big2);
    write(&src, "usr/bin/newprog", &program(5, 300_000));
    write(
        &src,
        "usr/share/doc/new/README",
        &"new docs\n".repeat(500).into_bytes(),
    );
    write(&src, "etc/empty", b"");
    std::fs::remove_file(src.join("etc/gone")).unwrap();
    write(&src, "usr/share/man/man1/tool.1.gz", &page("2"));
    write(
        &src,
        "usr/share/doc/new/changelog.gz",
        &semithin_delta::gz::compress(
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03",
            9,
            "a change\n".repeat(300).as_bytes(),
        ),
    );
    let v2 = commit_dir(&server, &src, "v2");

    let machine = repo(&dir.path().join("machine"));
    copy_release(&server, &machine, v1);
    // the agent stores the commit object from the signed release before it fetches
    let c = server
        .objects
        .get_verified(ObjKind::Commit, v2.as_bytes())
        .unwrap();
    machine.objects.put(&c).unwrap();
    machine.objects.flush().unwrap();
    Fixture {
        _dir: dir,
        server,
        machine,
        v1,
        v2,
    }
}

#[test]
fn a_pack_brings_the_machine_the_whole_release_for_a_fraction_of_its_changes() {
    let f = fixture();
    let mut pack = Vec::new();
    let stats = build(&f.server.objects, f.v1, f.v2, Effort::Full, &mut pack).unwrap();
    assert_eq!(stats.total_bytes, pack.len() as u64);
    assert_eq!(
        stats.total_bytes,
        stats.metadata_bytes + stats.patch_bytes + stats.new_bytes
    );
    // tool, libfoo (renamed), three modules and big.bin are patched, the man page as its text;
    // newprog, README, the changelog and the empty file are new
    assert_eq!(stats.files_prefixed + stats.files_bsdiff, 6, "{stats:?}");
    assert_eq!(stats.files_gzip, 1, "{stats:?}");
    assert_eq!(stats.files_new, 4, "{stats:?}");
    // the changed files hold 3.6 MB; their patches cost a few kilobytes
    assert!(stats.patch_bytes < 20_000, "{stats:?}");
    assert!(stats.content_bytes > 3_900_000, "{stats:?}");

    assert!(
        !transfer::missing(&f.machine.objects, f.v2)
            .unwrap()
            .is_empty()
    );
    let applied = apply(&f.machine.objects, f.v1, f.v2, pack.as_slice()).unwrap();
    assert_eq!(applied.files, 11);
    assert_eq!(applied.pack_bytes, pack.len() as u64);
    assert_eq!(
        transfer::missing(&f.machine.objects, f.v2).unwrap(),
        vec![],
        "the pack brought every object of v2"
    );
    let report = semithin_store::fsck::fsck(&f.machine, &NoProgress).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // applying again changes nothing and still verifies
    let again = apply(&f.machine.objects, f.v1, f.v2, pack.as_slice()).unwrap();
    assert_eq!(again.stored_bytes, 0);
}

#[test]
fn damaged_or_misdirected_packs_are_refused_and_store_nothing_wrong() {
    let f = fixture();
    let mut pack = Vec::new();
    build(&f.server.objects, f.v1, f.v2, Effort::Quick, &mut pack).unwrap();

    // the wrong direction
    let e = apply(&f.machine.objects, f.v2, f.v1, pack.as_slice()).unwrap_err();
    assert!(e.to_string().contains("leads from"), "{e}");
    // cut short
    let e = apply(&f.machine.objects, f.v1, f.v2, &pack[..pack.len() - 100]).unwrap_err();
    assert!(e.to_string().contains("delta pack"), "{e}");
    // bytes flipped all over the segments: every attempt fails, none stores a wrong object
    for at in (200..pack.len()).step_by(pack.len() / 7) {
        let mut bad = pack.clone();
        bad[at] ^= 0x5a;
        let r = apply(&f.machine.objects, f.v1, f.v2, bad.as_slice());
        assert!(r.is_err(), "a flipped byte at {at} went unnoticed");
    }
    let report = semithin_store::fsck::fsck(&f.machine, &NoProgress).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // the good pack still applies afterwards
    apply(&f.machine.objects, f.v1, f.v2, pack.as_slice()).unwrap();
    assert!(
        transfer::missing(&f.machine.objects, f.v2)
            .unwrap()
            .is_empty()
    );
}

/// A new repository at `dir` holding v2's commit object alone, as the agent stores it from the
/// signed release before it fetches.
fn with_commit_only(f: &Fixture, dir: &Path) -> Repo {
    let r = repo(dir);
    let c = f
        .server
        .objects
        .get_verified(ObjKind::Commit, f.v2.as_bytes())
        .unwrap();
    r.objects.put(&c).unwrap();
    r.objects.flush().unwrap();
    r
}

#[test]
fn a_machine_without_the_old_release_gets_a_clear_error() {
    let f = fixture();
    let mut pack = Vec::new();
    build(&f.server.objects, f.v1, f.v2, Effort::Quick, &mut pack).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let empty = with_commit_only(&f, &dir.path().join("r"));
    let e = apply(&empty.objects, f.v1, f.v2, pack.as_slice()).unwrap_err();
    assert!(e.to_string().contains("does not hold all of it"), "{e}");
}

/// A full-release pack (from [`NOTHING`]) brings a machine with an empty store the whole
/// release, verified; a damaged one stores nothing wrong.
#[test]
fn a_full_release_pack_installs_a_machine_from_nothing() {
    let f = fixture();
    let mut pack = Vec::new();
    let stats = build(&f.server.objects, NOTHING, f.v2, Effort::Quick, &mut pack).unwrap();
    assert_eq!(stats.files_prefixed + stats.files_bsdiff, 0, "{stats:?}");
    assert!(stats.files_new > 50, "{stats:?}");
    let dir = tempfile::tempdir().unwrap();
    let empty = with_commit_only(&f, &dir.path().join("r"));
    // not a pack from v1
    let e = apply(&empty.objects, f.v1, f.v2, pack.as_slice()).unwrap_err();
    assert!(e.to_string().contains("leads from"), "{e}");
    let mut bad = pack.clone();
    let at = bad.len() - 1000;
    bad[at] ^= 0x5a;
    assert!(apply(&empty.objects, NOTHING, f.v2, bad.as_slice()).is_err());
    let applied = apply(&empty.objects, NOTHING, f.v2, pack.as_slice()).unwrap();
    assert_eq!(applied.pack_bytes, pack.len() as u64);
    assert_eq!(
        transfer::missing(&empty.objects, f.v2).unwrap(),
        vec![],
        "the pack brought every object of v2"
    );
    let report = semithin_store::fsck::fsck(&empty, &NoProgress).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// The pack format is fixed: the same releases give the same bytes as they did before packs
/// were built through temporary files (hashes taken from the in-memory builder), with one patch
/// segment and with many.
#[test]
fn golden_packs_keep_their_bytes() {
    let f = fixture();
    let hash = |p: &[u8]| blake3::hash(p).to_hex().to_string();
    let mut full = Vec::new();
    build(&f.server.objects, f.v1, f.v2, Effort::Full, &mut full).unwrap();
    let mut quick = Vec::new();
    build(&f.server.objects, f.v1, f.v2, Effort::Quick, &mut quick).unwrap();
    let mut cut = Vec::new();
    let stats = semithin_delta::build::build_small_segments(
        &f.server.objects,
        f.v1,
        f.v2,
        300_000,
        &mut cut,
    )
    .unwrap();
    let (_, _, header, _) = semithin_delta::pack::read_start(&mut cut.as_slice()).unwrap();
    let patch_segments = header
        .segments
        .iter()
        .filter(|s| s.kind == semithin_delta::pack::Kind::Patches)
        .count();
    assert!(patch_segments >= 3, "{stats:?}");
    assert_eq!(stats.total_bytes, cut.len() as u64);
    apply(&f.machine.objects, f.v1, f.v2, cut.as_slice()).unwrap();
    assert!(
        transfer::missing(&f.machine.objects, f.v2)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        [hash(&full), hash(&quick), hash(&cut)],
        [
            "2575dbc614c15a2c1512e2e781701b4db613750ec0d4c01cf32e9ed375268e53",
            "992425679bfec024f9d0a04eda32052a2113724481246f595e3000f1916fc027",
            "b8ba27b9faad2a347964ebce40db1b33c381f3c819c5df35b10aed8e4542abdb",
        ],
        "the pack bytes changed"
    );
}
