//! The object stream a machine receives from a server (`transfer::receive`): records of
//! `kind | id | stored_len | raw_len | zstd frame`, ended by a zero byte. Whatever arrives, only
//! objects that were asked for and hash to their id are stored, and a whole, honest stream is
//! stored whole.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use semithin_fuzz::{open_store, scratch, write_seeds};
use semithin_store::objects::ObjectStore;
use semithin_store::pack::ObjKind;
use semithin_store::transfer::receive;
use semithin_store::{ChunkId, CommitId, TreeId};

fn id_of(kind: ObjKind, raw: &[u8]) -> [u8; 32] {
    match kind {
        ObjKind::Chunk => *ChunkId::of(raw).as_bytes(),
        ObjKind::Tree => *TreeId::of(raw).as_bytes(),
        ObjKind::Commit => *CommitId::of(raw).as_bytes(),
    }
}

fn record(out: &mut Vec<u8>, kind: ObjKind, raw: &[u8]) -> (ObjKind, [u8; 32]) {
    let id = id_of(kind, raw);
    let frame = zstd::bulk::compress(raw, 1).unwrap();
    out.push(kind as u8);
    out.extend_from_slice(&id);
    out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out.extend_from_slice(&frame);
    (kind, id)
}

/// The (kind, id) pairs a stream's record headers claim, read as the receiver would.
fn claimed(mut data: &[u8]) -> HashSet<(ObjKind, [u8; 32])> {
    let mut out = HashSet::new();
    while let Some((&k, rest)) = data.split_first() {
        let (Some(kind), Some(h)) = (ObjKind::from_u8(k), rest.get(..40)) else {
            break;
        };
        out.insert((kind, h[..32].try_into().unwrap()));
        let stored = u32::from_le_bytes(h[32..36].try_into().unwrap()) as usize;
        data = rest.get(40 + stored..).unwrap_or_default();
    }
    out
}

/// Every object the store holds was expected and reads back as the bytes that hash to its id.
fn check_store(store: &ObjectStore, expected: &HashSet<(ObjKind, [u8; 32])>) -> usize {
    let listed = store.list();
    for (kind, id, _) in &listed {
        assert!(
            expected.contains(&(*kind, *id)),
            "an object nobody asked for was stored"
        );
        let raw = store.get(*kind, id).expect("a stored object reads back");
        assert_eq!(
            &id_of(*kind, &raw),
            id,
            "a stored object does not hash to its id"
        );
    }
    listed.len()
}

fn raw(data: &[u8]) {
    let expected = claimed(data);
    let dir = scratch();
    let store = open_store(dir.path());
    let _ = receive(&store, &expected, data);
    check_store(&store, &expected);
}

fn structured(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let n = u.int_in_range(0..=5)?;
    let mut stream = Vec::new();
    let mut objects = Vec::new();
    for _ in 0..n {
        let kind = *u.choose(&[ObjKind::Chunk, ObjKind::Tree, ObjKind::Commit])?;
        let raw: Vec<u8> = u.arbitrary()?;
        let key = record(&mut stream, kind, &raw);
        objects.push((key, raw));
    }
    stream.push(0);
    let expected: HashSet<_> = objects.iter().map(|(k, _)| *k).collect();
    // An honest stream, or one with a byte changed, cut short, or not asked for in part.
    let damage = u.int_in_range(0..=3)?;
    let mut asked = expected.clone();
    match damage {
        1 if !stream.is_empty() => {
            let at = u.choose_index(stream.len())?;
            stream[at] ^= u.int_in_range(1..=255)?;
        }
        2 => {
            let at = u.choose_index(stream.len())?;
            stream.truncate(at);
        }
        3 if !objects.is_empty() => {
            let k = objects[u.choose_index(objects.len())?].0;
            asked.remove(&k);
        }
        _ => {}
    }
    let dir = scratch();
    let store = open_store(dir.path());
    let res = receive(&store, &asked, stream.as_slice());
    let stored = check_store(&store, &asked);
    if damage == 0 {
        let got = res.expect("an honest stream is received");
        assert_eq!(got.objects as usize, objects.len());
        assert_eq!(stored, expected.len());
        for ((kind, id), raw) in &objects {
            assert_eq!(&store.get(*kind, id).unwrap(), raw);
        }
    }
    Ok(())
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut s = vec![0u8];
    record(&mut s, ObjKind::Chunk, b"hello chunk");
    record(&mut s, ObjKind::Tree, &[1, 0]);
    record(&mut s, ObjKind::Commit, b"not really a commit");
    s.push(0);
    vec![("raw".into(), s), ("structured".into(), vec![1u8; 120])]
}

fuzz_target!(init: write_seeds(seeds()), |data: &[u8]| {
    match data.split_first() {
        Some((m, rest)) if m % 2 == 0 => raw(rest),
        Some((_, rest)) => {
            let _ = structured(rest);
        }
        None => {}
    }
});
