//! Moving objects between repositories as one stream: what a server sends when a machine posts
//! the ids it lacks, and what the machine stores from it.
//!
//! The stream is a sequence of records exactly as packs hold them (`kind u8 | id [32] |
//! stored_len u32le | raw_len u32le | zstd frame`), so a sender copies frames without
//! recompressing, ended by one zero byte. The receiver decompresses and re-hashes every object
//! against its id before it is stored: nothing unverified reaches the repository. Objects that
//! arrived whole before a stream broke off are kept, so a retry asks only for the rest.

use std::collections::HashSet;
use std::io::{Read, Write};

use crate::error::{Error, Result};
use crate::id::{ChunkId, CommitId, TreeId};
use crate::object::EntryKind;
use crate::objects::{ObjectStore, Put};
use crate::pack::ObjKind;
use crate::verified::VerifiedObject;

/// No single object in a stream may claim more than this, stored or raw.
pub const MAX_OBJECT: u32 = 64 << 20;

/// Writes the requested objects of `store` to `out`; returns the bytes written. A requested
/// object the store does not have is an error naming it.
pub fn send(
    store: &ObjectStore,
    wanted: &[(ObjKind, [u8; 32])],
    mut out: impl Write,
) -> Result<u64> {
    let werr = |e: std::io::Error| Error::Tool {
        tool: "transfer",
        reason: format!("writing the object stream: {e}"),
    };
    let mut written = 0u64;
    for (kind, id) in wanted {
        let (frame, raw_len) = store.get_frame(*kind, id)?;
        out.write_all(&[*kind as u8]).map_err(werr)?;
        out.write_all(id).map_err(werr)?;
        out.write_all(&(frame.len() as u32).to_le_bytes())
            .map_err(werr)?;
        out.write_all(&raw_len.to_le_bytes()).map_err(werr)?;
        out.write_all(&frame).map_err(werr)?;
        written += 41 + frame.len() as u64;
    }
    out.write_all(&[0]).map_err(werr)?;
    out.flush().map_err(werr)?;
    Ok(written + 1)
}

/// What a received stream brought.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    pub objects: u64,
    /// Objects the store already had (not stored again).
    pub duplicates: u64,
    pub stored_bytes: u64,
}

/// Reads an object stream into `store`, verifying each object before storing it. Only objects
/// listed in `expected` are accepted. Whatever arrived verified is made durable even when the
/// stream fails later, so a retry asks only for what is still missing.
pub fn receive(
    store: &ObjectStore,
    expected: &HashSet<(ObjKind, [u8; 32])>,
    input: impl Read,
) -> Result<Received> {
    let result = receive_records(store, expected, input);
    store.flush()?;
    result
}

fn receive_records(
    store: &ObjectStore,
    expected: &HashSet<(ObjKind, [u8; 32])>,
    input: impl Read,
) -> Result<Received> {
    let mut got = Received::default();
    read_stream(expected, input, |obj, _raw| {
        got.objects += 1;
        match store.put(&obj)? {
            Put::New { stored } => got.stored_bytes += stored,
            Put::Existing => got.duplicates += 1,
        }
        Ok(())
    })?;
    Ok(got)
}

/// Reads an object stream, verifying each object, and hands each to `f` as a verified object
/// (holding the frame as it came) with its raw content. Only objects in `expected` are
/// accepted.
pub fn read_stream(
    expected: &HashSet<(ObjKind, [u8; 32])>,
    mut input: impl Read,
    mut f: impl FnMut(VerifiedObject<'static>, Vec<u8>) -> Result<()>,
) -> Result<()> {
    let bad = |reason: String| Error::Tool {
        tool: "transfer",
        reason: format!("object stream: {reason}"),
    };
    loop {
        let mut kind = [0u8; 1];
        input
            .read_exact(&mut kind)
            .map_err(|e| bad(format!("ends without its end marker ({e})")))?;
        if kind[0] == 0 {
            return Ok(());
        }
        let kind = ObjKind::from_u8(kind[0])
            .ok_or_else(|| bad(format!("unknown object kind {}", kind[0])))?;
        let mut h = [0u8; 40];
        input
            .read_exact(&mut h)
            .map_err(|e| bad(format!("cut inside a record header ({e})")))?;
        let id: [u8; 32] = h[..32].try_into().expect("32 bytes");
        let stored_len = u32::from_le_bytes(h[32..36].try_into().expect("4 bytes"));
        let raw_len = u32::from_le_bytes(h[36..40].try_into().expect("4 bytes"));
        let name = format!("{} {}", kind.name(), hex::encode(id));
        if !expected.contains(&(kind, id)) {
            return Err(bad(format!("{name} was not asked for")));
        }
        if stored_len > MAX_OBJECT || raw_len > MAX_OBJECT {
            return Err(bad(format!(
                "{name} claims {stored_len} stored / {raw_len} raw bytes, over the limit"
            )));
        }
        let mut frame = vec![0u8; stored_len as usize];
        input
            .read_exact(&mut frame)
            .map_err(|e| bad(format!("cut inside {name} ({e})")))?;
        let (obj, raw) = VerifiedObject::from_frame(kind, id, frame, raw_len)?;
        f(obj, raw)?;
    }
}

/// What a store still lacks to hold a commit whole. Trees can only be looked into once they are
/// there, so a fetch repeats: ask for `missing`, receive, ask again, until it is empty.
pub fn missing(store: &ObjectStore, commit: CommitId) -> Result<Vec<(ObjKind, [u8; 32])>> {
    if !store.contains(ObjKind::Commit, commit.as_bytes()) {
        return Ok(vec![(ObjKind::Commit, *commit.as_bytes())]);
    }
    let c = store.get_commit(&commit)?;
    let mut out = Vec::new();
    let mut seen_trees: HashSet<TreeId> = HashSet::new();
    let mut seen_chunks: HashSet<ChunkId> = HashSet::new();
    let mut stack: Vec<TreeId> = vec![c.tree];
    while let Some(t) = stack.pop() {
        if !seen_trees.insert(t) {
            continue;
        }
        if !store.contains(ObjKind::Tree, t.as_bytes()) {
            out.push((ObjKind::Tree, *t.as_bytes()));
            continue;
        }
        for e in store.get_tree(&t)?.entries {
            match e.kind {
                EntryKind::Dir(sub) => stack.push(sub),
                EntryKind::File(f) => {
                    for ch in f.chunks {
                        if seen_chunks.insert(ch.id)
                            && !store.contains(ObjKind::Chunk, ch.id.as_bytes())
                        {
                            out.push((ObjKind::Chunk, *ch.id.as_bytes()));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::import::{CommitOptions, commit};
    use crate::repo::{Access, Config, Repo};
    use crate::{NoProgress, fsck};

    fn repo(dir: &Path) -> Repo {
        Repo::init(dir, Config::default()).unwrap();
        Repo::open(dir, Access::Write).unwrap()
    }

    /// A source repository with one commit of a small tree: nested directories, small files and
    /// a file of several chunks.
    fn source(dir: &Path) -> (Repo, CommitId) {
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("a/b/c")).unwrap();
        std::fs::write(src.join("a/one"), b"one").unwrap();
        std::fs::write(src.join("a/b/two"), b"two").unwrap();
        let mut x: u64 = 7;
        let big: Vec<u8> = (0..1_500_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(src.join("a/b/c/big"), &big).unwrap();
        let r = repo(&dir.join("a-repo"));
        let opts = CommitOptions {
            channel: "c",
            message: "",
            time: Some(0),
        };
        let id = commit(&r, &src, &opts, &NoProgress)
            .unwrap()
            .commit
            .parse()
            .unwrap();
        (r, id)
    }

    fn stream(from: &Repo, want: &[(ObjKind, [u8; 32])]) -> Vec<u8> {
        let mut buf = Vec::new();
        send(&from.objects, want, &mut buf).unwrap();
        buf
    }

    /// Fetches until nothing is missing; returns the number of rounds.
    fn fetch_all(from: &Repo, to: &Repo, commit: CommitId) -> usize {
        let mut rounds = 0;
        loop {
            let want = missing(&to.objects, commit).unwrap();
            if want.is_empty() {
                return rounds;
            }
            rounds += 1;
            assert!(rounds < 10, "fetch does not converge");
            let expected = want.iter().copied().collect();
            receive(&to.objects, &expected, &stream(from, &want)[..]).unwrap();
        }
    }

    #[test]
    fn a_commit_moves_whole_and_verified() {
        let d = tempfile::tempdir().unwrap();
        let (a, id) = source(d.path());
        let b = repo(&d.path().join("b-repo"));
        // the commit, the root tree, then one round per directory level (a, b, c), each bringing
        // the chunks of the level above, and last the chunks of c
        assert_eq!(fetch_all(&a, &b, id), 6);
        crate::channel::move_to(&b, "c", id, crate::channel::MoveKind::Set, "").unwrap();
        let report = fsck::fsck(&b, &NoProgress).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.chunks, fsck::fsck(&a, &NoProgress).unwrap().chunks);
    }

    #[test]
    fn a_corrupt_object_is_refused_and_a_retry_completes() {
        let d = tempfile::tempdir().unwrap();
        let (a, id) = source(d.path());
        let b = repo(&d.path().join("b-repo"));
        // Get everything but the chunks, then break the first chunk of the stream.
        while missing(&b.objects, id)
            .unwrap()
            .iter()
            .any(|(k, _)| *k != ObjKind::Chunk)
        {
            let want = missing(&b.objects, id).unwrap();
            let trees: Vec<_> = want
                .into_iter()
                .filter(|(k, _)| *k != ObjKind::Chunk)
                .collect();
            receive(
                &b.objects,
                &trees.iter().copied().collect(),
                &stream(&a, &trees)[..],
            )
            .unwrap();
        }
        let want = missing(&b.objects, id).unwrap();
        assert!(want.len() >= 3);
        let expected: HashSet<_> = want.iter().copied().collect();
        let mut s = stream(&a, &want);
        // Flip a byte inside the second record's frame.
        let first_len = 41 + u32::from_le_bytes(s[33..37].try_into().unwrap()) as usize;
        s[first_len + 41 + 3] ^= 0xff;
        let e = receive(&b.objects, &expected, &s[..])
            .unwrap_err()
            .to_string();
        let second = hex::encode(want[1].1);
        assert!(e.contains(&format!("chunk object {second}")), "{e}");
        // The first chunk arrived verified and stays; the broken one was not stored.
        let left = missing(&b.objects, id).unwrap();
        assert_eq!(left.len(), want.len() - 1);
        assert!(left.contains(&want[1]));
        // A cut stream keeps what came whole, and the retry asks only for the rest.
        let s = stream(&a, &left);
        let cut = 41 + u32::from_le_bytes(s[33..37].try_into().unwrap()) as usize + 20;
        let e = receive(&b.objects, &expected, &s[..cut])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cut inside"), "{e}");
        assert_eq!(missing(&b.objects, id).unwrap().len(), left.len() - 1);
        assert_eq!(fetch_all(&a, &b, id), 1);
    }

    #[test]
    fn unasked_and_oversized_objects_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let (a, id) = source(d.path());
        let b = repo(&d.path().join("b-repo"));
        let want = missing(&b.objects, id).unwrap();
        let e = receive(&b.objects, &HashSet::new(), &stream(&a, &want)[..]).unwrap_err();
        assert!(e.to_string().contains("was not asked for"), "{e}");
        // A header claiming 4 GiB is refused before anything is allocated.
        let mut s = stream(&a, &want);
        s[33..37].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = receive(&b.objects, &want.iter().copied().collect(), &s[..]).unwrap_err();
        assert!(e.to_string().contains("over the limit"), "{e}");
        assert!(!b.objects.contains(ObjKind::Commit, id.as_bytes()));
    }
}
