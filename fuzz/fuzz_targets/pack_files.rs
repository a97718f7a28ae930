//! A store's pack files and their indexes as found on disk (damaged by a bad disk, a crash or
//! a hand): opening the store never panics, a damaged index is reported, and a read either fails
//! or returns bytes that hash to the id asked for. The index checksum is fixed up here so the
//! fuzzer reaches what lies behind it.
//!
//! Input: `idx_len u16le | index body (after the magic, before the checksum) | pack bytes`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use semithin_fuzz::{open_store, scratch, write_seeds};
use semithin_store::pack::{IDX_MAGIC, ObjKind};
use semithin_store::{ChunkId, CommitId, TreeId};

fn id_of(kind: ObjKind, raw: &[u8]) -> [u8; 32] {
    match kind {
        ObjKind::Chunk => *ChunkId::of(raw).as_bytes(),
        ObjKind::Tree => *TreeId::of(raw).as_bytes(),
        ObjKind::Commit => *CommitId::of(raw).as_bytes(),
    }
}

/// A real pack of a few objects, as the fuzz input's layout.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = scratch();
    let store = open_store(dir.path());
    for (kind, raw) in [
        (ObjKind::Chunk, b"some file content".as_slice()),
        (ObjKind::Chunk, &[0u8; 3000]),
        (ObjKind::Tree, &[1, 0]),
        (ObjKind::Commit, b"commit bytes"),
    ] {
        let obj = semithin_store::VerifiedObject::from_raw(kind, raw).unwrap();
        store.put(&obj).unwrap();
    }
    store.flush().unwrap();
    let name = &store.pack_names().unwrap()[0];
    let idx = std::fs::read(dir.path().join(format!("packs/{name}.idx"))).unwrap();
    let pack = std::fs::read(dir.path().join(format!("packs/{name}.pack"))).unwrap();
    let body = &idx[8..idx.len() - 32];
    let mut seed = (body.len() as u16).to_le_bytes().to_vec();
    seed.extend_from_slice(body);
    seed.extend_from_slice(&pack);
    vec![("pack".into(), seed)]
}

fuzz_target!(init: write_seeds(seeds()), |data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (body, pack) = data[2..].split_at(n);
    let mut idx = IDX_MAGIC.to_vec();
    idx.extend_from_slice(body);
    let sum = *blake3::hash(&idx).as_bytes();
    idx.extend_from_slice(&sum);

    let dir = scratch();
    let packs = dir.path().join("packs");
    std::fs::create_dir_all(&packs).unwrap();
    std::fs::write(packs.join("p.idx"), &idx).unwrap();
    std::fs::write(packs.join("p.pack"), pack).unwrap();
    let store = open_store(dir.path());
    let _ = store.check_pack_headers();
    for (kind, id, _) in store.list() {
        if let Ok(raw) = store.get(kind, &id) {
            assert_eq!(id_of(kind, &raw), id, "a read returned bytes of another id");
        }
    }
});
