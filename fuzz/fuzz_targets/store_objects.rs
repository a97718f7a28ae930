//! Tree and commit objects as they arrive from elsewhere (a server's object stream, a delta
//! pack, a damaged pack): decoding never panics, what decodes encodes to something that decodes
//! to the same value, and every tree a writer can make (plain names, sorted, unique, chunk
//! lengths adding up) decodes to itself while every other is refused.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use semithin_fuzz::write_seeds;
use semithin_store::object::{
    ChunkRef, Commit, DeviceKind, Entry, EntryKind, FileContent, Meta, Tree, Xattr, check_name,
};
use semithin_store::{ChunkId, CommitId, FileHash, TreeId};

fn id(u: &mut Unstructured) -> Result<[u8; 32]> {
    u.arbitrary()
}

fn meta(u: &mut Unstructured) -> Result<Meta> {
    let n = u.int_in_range(0..=2)?;
    let mut xattrs = Vec::new();
    for _ in 0..n {
        xattrs.push(Xattr {
            name: u.arbitrary()?,
            value: u.arbitrary()?,
        });
    }
    Ok(Meta {
        mode: u.arbitrary()?,
        uid: u.arbitrary()?,
        gid: u.arbitrary()?,
        mtime: u.arbitrary()?,
        mtime_nsec: u.arbitrary()?,
        xattrs,
    })
}

fn kind(u: &mut Unstructured) -> Result<EntryKind> {
    Ok(match u.int_in_range(0..=5)? {
        0 => EntryKind::Dir(TreeId::from_bytes(id(u)?)),
        1 => {
            let n = u.int_in_range(0..=3)?;
            let mut chunks = Vec::new();
            for _ in 0..n {
                chunks.push(ChunkRef {
                    id: ChunkId::from_bytes(id(u)?),
                    len: u.arbitrary()?,
                });
            }
            let sum: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
            // Mostly consistent sizes, sometimes not.
            let size = if u.ratio(1, 8)? { u.arbitrary()? } else { sum };
            EntryKind::File(FileContent {
                size,
                hash: FileHash::from_bytes(id(u)?),
                chunks,
            })
        }
        2 => EntryKind::Symlink(u.arbitrary()?),
        3 => EntryKind::Device {
            kind: if u.arbitrary()? {
                DeviceKind::Char
            } else {
                DeviceKind::Block
            },
            major: u.arbitrary()?,
            minor: u.arbitrary()?,
        },
        _ => EntryKind::Fifo,
    })
}

fn tree(u: &mut Unstructured) -> Result<Tree> {
    let n = u.int_in_range(0..=6)?;
    let mut entries = Vec::new();
    for _ in 0..n {
        entries.push(Entry {
            name: u.arbitrary()?,
            meta: meta(u)?,
            kind: kind(u)?,
        });
    }
    if u.arbitrary()? {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(Tree { entries })
}

/// What `Tree::decode` must accept: the invariants, checked here independently.
fn well_formed(t: &Tree) -> bool {
    t.entries.iter().all(|e| check_name(&e.name).is_ok())
        && t.entries.windows(2).all(|w| w[0].name < w[1].name)
        && t.entries.iter().all(|e| match &e.kind {
            EntryKind::File(c) => c.chunks.iter().map(|c| u64::from(c.len)).sum::<u64>() == c.size,
            _ => true,
        })
}

fn commit(u: &mut Unstructured) -> Result<Commit> {
    let groups = u.int_in_range(0..=2)?;
    let mut hardlinks = Vec::new();
    for _ in 0..groups {
        hardlinks.push(u.arbitrary()?);
    }
    Ok(Commit {
        tree: TreeId::from_bytes(id(u)?),
        root_meta: meta(u)?,
        parent: if u.arbitrary()? {
            Some(CommitId::from_bytes(id(u)?))
        } else {
            None
        },
        time: u.arbitrary()?,
        message: u.arbitrary()?,
        hardlinks,
        entries: u.arbitrary()?,
        bytes: u.arbitrary()?,
    })
}

fn raw(data: &[u8]) {
    if let Ok(t) = Tree::decode(TreeId::of(data), data) {
        assert!(
            well_formed(&t),
            "a decoded tree breaks the invariants: {t:?}"
        );
        let again = t.encode();
        assert_eq!(
            Tree::decode(TreeId::of(&again), &again).expect("re-encoded tree decodes"),
            t
        );
    }
    if let Ok(c) = Commit::decode(CommitId::of(data), data) {
        let again = c.encode();
        assert_eq!(
            Commit::decode(CommitId::of(&again), &again).expect("re-encoded commit"),
            c
        );
    }
}

fn structured(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let t = tree(&mut u)?;
    let bytes = t.encode();
    match Tree::decode(TreeId::of(&bytes), &bytes) {
        Ok(back) => {
            assert!(well_formed(&t), "a malformed tree was accepted: {t:?}");
            assert_eq!(back, t);
        }
        Err(e) => assert!(
            !well_formed(&t),
            "a well-formed tree was refused ({e}): {t:?}"
        ),
    }
    let c = commit(&mut u)?;
    let bytes = c.encode();
    assert_eq!(
        Commit::decode(CommitId::of(&bytes), &bytes).expect("any commit decodes"),
        c
    );
    Ok(())
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let tree = Tree {
        entries: vec![
            Entry {
                name: b"bin".to_vec(),
                meta: Meta {
                    mode: 0o755,
                    ..Meta::default()
                },
                kind: EntryKind::Dir(TreeId::of(b"x")),
            },
            Entry {
                name: b"f".to_vec(),
                meta: Meta {
                    mode: 0o644,
                    xattrs: vec![Xattr {
                        name: b"user.a".to_vec(),
                        value: b"1".to_vec(),
                    }],
                    ..Meta::default()
                },
                kind: EntryKind::File(FileContent {
                    size: 3,
                    hash: FileHash::of(b"abc"),
                    chunks: vec![ChunkRef {
                        id: ChunkId::of(b"abc"),
                        len: 3,
                    }],
                }),
            },
            Entry {
                name: b"l".to_vec(),
                meta: Meta::default(),
                kind: EntryKind::Symlink(b"f".to_vec()),
            },
        ],
    };
    let commit = Commit {
        tree: TreeId::of(b"x"),
        root_meta: Meta::default(),
        parent: Some(CommitId::of(b"p")),
        time: 1_700_000_000,
        message: "release".into(),
        hardlinks: vec![vec![b"a".to_vec(), b"b".to_vec()]],
        entries: 3,
        bytes: 3,
    };
    let mut t = vec![0u8];
    t.extend(tree.encode());
    let mut c = vec![0u8];
    c.extend(commit.encode());
    vec![
        ("tree".into(), t),
        ("commit".into(), c),
        ("structured".into(), vec![1u8; 200]),
    ]
}

fuzz_target!(init: write_seeds(seeds()), |data: &[u8]| {
    // The first byte chooses: raw bytes as objects, or objects built from the bytes.
    match data.split_first() {
        Some((m, rest)) if m % 2 == 0 => raw(rest),
        Some((_, rest)) => {
            let _ = structured(rest);
        }
        None => {}
    }
});
