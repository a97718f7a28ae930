//! Property: for random old and new releases (files changed a little, renamed, removed, added,
//! programs and text, nested directories), the pack built from the server's store, applied to a
//! store that holds only the old release, leaves that store holding exactly the objects of both
//! releases: the whole new release, verified, and nothing else.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use semithin_delta::apply::apply;
use semithin_delta::build::{Effort, build};
use semithin_store::import::{CommitOptions, commit};
use semithin_store::pack::ObjKind;
use semithin_store::repo::Config as RepoConfig;
use semithin_store::{Access, CommitId, NoProgress, Repo, reach, transfer};

/// Leaf paths (none is a prefix of another), with a library renamed between versions.
const PATHS: &[&str] = &[
    "etc/motd",
    "etc/conf.d/net",
    "usr/bin/tool",
    "usr/bin/other",
    "usr/lib/libfoo.so.1",
    "usr/lib/libfoo.so.2",
    "usr/share/doc/README",
    "usr/share/doc/a/b/c/deep",
    "var/lib/state",
];

#[derive(Clone, Debug, PartialEq)]
enum Item {
    /// Content from a seed, `len` bytes, an ELF header in front when a program, bytes flipped at
    /// the offsets given (modulo its length).
    File {
        seed: u64,
        len: usize,
        program: bool,
        flips: Vec<usize>,
    },
    Symlink(String),
}

type Release = BTreeMap<&'static str, Item>;

fn content(seed: u64, len: usize, program: bool, flips: &[usize]) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = if program {
        b"\x7fELF".to_vec()
    } else {
        Vec::new()
    };
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&((x % 97) as u32 * 3).to_le_bytes());
    }
    out.truncate(len);
    for f in flips {
        if !out.is_empty() {
            let at = f % out.len();
            out[at] = out[at].wrapping_add(1);
        }
    }
    out
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        4 => (0u64..5, 0usize..60_000, any::<bool>()).prop_map(|(seed, len, program)| {
            Item::File { seed, len, program, flips: Vec::new() }
        }),
        1 => "[a-z]{1,12}".prop_map(Item::Symlink),
    ]
}

#[derive(Clone, Debug)]
enum Edit {
    Set(Item),
    /// A few bytes of a file changed.
    Patch(Vec<usize>),
    Remove,
    /// Moved to another path.
    Move(&'static str),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        item().prop_map(Edit::Set),
        prop::collection::vec(any::<usize>(), 1..4).prop_map(Edit::Patch),
        Just(Edit::Remove),
        prop::sample::select(PATHS).prop_map(Edit::Move),
    ]
}

fn releases() -> impl Strategy<Value = (Release, Release)> {
    let old = prop::collection::btree_map(prop::sample::select(PATHS), item(), 1..PATHS.len());
    let edits = prop::collection::vec((prop::sample::select(PATHS), edit()), 1..6);
    (old, edits).prop_map(|(old, edits)| {
        let mut new = old.clone();
        for (path, e) in edits {
            match e {
                Edit::Set(i) => {
                    new.insert(path, i);
                }
                Edit::Patch(more) => {
                    if let Some(Item::File { flips, .. }) = new.get_mut(path) {
                        flips.extend(more);
                    }
                }
                Edit::Remove => {
                    new.remove(path);
                }
                Edit::Move(to) => {
                    if let Some(i) = new.remove(path) {
                        new.insert(to, i);
                    }
                }
            }
        }
        (old, new)
    })
}

fn write_release(src: &Path, r: &Release) {
    let _ = std::fs::remove_dir_all(src);
    std::fs::create_dir_all(src).unwrap();
    for (path, item) in r {
        let p = src.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        match item {
            Item::File {
                seed,
                len,
                program,
                flips,
            } => std::fs::write(&p, content(*seed, *len, *program, flips)).unwrap(),
            Item::Symlink(t) => std::os::unix::fs::symlink(t, &p).unwrap(),
        }
    }
}

fn commit_release(repo: &Repo, src: &Path, r: &Release) -> CommitId {
    write_release(src, r);
    let opts = CommitOptions {
        channel: "c",
        message: "",
        time: Some(1_700_000_000),
    };
    commit(repo, src, &opts, &NoProgress)
        .unwrap()
        .commit
        .parse()
        .unwrap()
}

/// Every object of the given commits, read from `repo`.
fn objects_of(repo: &Repo, commits: &[CommitId]) -> BTreeSet<(ObjKind, [u8; 32])> {
    let mut out = BTreeSet::new();
    let mut roots = Vec::new();
    for c in commits {
        out.insert((ObjKind::Commit, *c.as_bytes()));
        roots.push((repo.objects.get_commit(c).unwrap().tree, String::new()));
    }
    let below = reach::below(repo, &roots, 0);
    assert!(below.bad_trees.is_empty());
    out.extend(below.trees.keys().map(|t| (ObjKind::Tree, *t.as_bytes())));
    out.extend(below.chunks.keys().map(|c| (ObjKind::Chunk, *c.as_bytes())));
    out
}

fn repo(dir: &Path) -> Repo {
    Repo::init(dir, RepoConfig::default()).unwrap();
    Repo::open(dir, Access::Write).unwrap()
}

#[test]
fn a_pack_between_any_two_releases_brings_exactly_the_new_one() {
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&releases(), |(old, new)| {
            let d = tempfile::tempdir().unwrap();
            let server = repo(&d.path().join("server"));
            let src = d.path().join("src");
            let v1 = commit_release(&server, &src, &old);
            let v2 = commit_release(&server, &src, &new);
            // The machine holds v1 and the signed commit object of v2.
            let machine = repo(&d.path().join("machine"));
            loop {
                let want = transfer::missing(&machine.objects, v1).unwrap();
                if want.is_empty() {
                    break;
                }
                let mut buf = Vec::new();
                transfer::send(&server.objects, &want, &mut buf).unwrap();
                let expected: HashSet<_> = want.iter().copied().collect();
                transfer::receive(&machine.objects, &expected, buf.as_slice()).unwrap();
            }
            let c = server
                .objects
                .get_verified(ObjKind::Commit, v2.as_bytes())
                .unwrap();
            machine.objects.put(&c).unwrap();
            machine.objects.flush().unwrap();

            let mut pack = Vec::new();
            build(&server.objects, v1, v2, Effort::Quick, &mut pack).unwrap();
            apply(&machine.objects, v1, v2, pack.as_slice()).unwrap();

            prop_assert_eq!(transfer::missing(&machine.objects, v2).unwrap(), vec![]);
            let held: BTreeSet<_> = machine
                .objects
                .list()
                .into_iter()
                .map(|(k, id, _)| (k, id))
                .collect();
            prop_assert_eq!(&held, &objects_of(&server, &[v1, v2]));
            // ... each of them whole.
            for (kind, id) in &held {
                machine.objects.get(*kind, id).unwrap();
            }
            Ok(())
        })
        .unwrap();
}
