//! What the fuzz targets share: scratch directories in memory, seed corpora written on request,
//! small builders of real repositories, and checks that a stored commit is whole.
//!
//! Seeds: when `SEMITHIN_FUZZ_SEEDS` names a directory, a target's `init` writes its generated
//! seed inputs there before libFuzzer reads its corpus (`fuzz/run.sh` points it at the corpus).

use std::path::{Path, PathBuf};

use semithin_store::object::EntryKind;
use semithin_store::objects::ObjectStore;
use semithin_store::repo::Config;
use semithin_store::{Access, CommitId, FileHash, Repo, TreeId};

/// A scratch directory under `$SEMITHIN_FUZZ_SCRATCH` (`run.sh` makes one per run and removes
/// it, with what a crash or a fixture held for the whole run left there), else in `/dev/shm`
/// when there is one (the targets write small repositories at every run, and fsync there costs
/// nothing).
pub fn scratch() -> tempfile::TempDir {
    if let Some(dir) = std::env::var_os("SEMITHIN_FUZZ_SCRATCH") {
        return tempfile::Builder::new()
            .prefix("semithin-fuzz-")
            .tempdir_in(dir)
            .expect("a scratch directory");
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("semithin-fuzz-")
            .tempdir_in(shm)
        {
            return d;
        }
    }
    tempfile::Builder::new()
        .prefix("semithin-fuzz-")
        .tempdir()
        .expect("a scratch directory")
}

/// Writes seed inputs into `$SEMITHIN_FUZZ_SEEDS` when it is set.
pub fn write_seeds(seeds: impl IntoIterator<Item = (String, Vec<u8>)>) {
    let Some(dir) = std::env::var_os("SEMITHIN_FUZZ_SEEDS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("seed directory");
    for (name, bytes) in seeds {
        std::fs::write(dir.join(format!("gen-{name}")), bytes).expect("writing a seed");
    }
}

/// A new, empty repository at `path`, opened for writing.
pub fn new_repo(path: &Path) -> Repo {
    Repo::init(path, Config::default()).expect("init a repository");
    Repo::open(path, Access::Write).expect("open the repository")
}

/// A directory tree described by (relative path, content) pairs; `None` makes a directory.
pub fn write_tree(root: &Path, files: &[(&str, Option<&[u8]>)]) {
    std::fs::create_dir_all(root).expect("root");
    for (p, content) in files {
        let path = root.join(p);
        match content {
            None => std::fs::create_dir_all(&path).expect("dir"),
            Some(c) => {
                std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
                std::fs::write(&path, c).expect("file");
            }
        }
    }
}

/// Commits the directory `src` to `channel`; returns the commit.
pub fn commit_dir(repo: &Repo, src: &Path, channel: &str, time: i64) -> CommitId {
    let stats = semithin_store::import::commit(
        repo,
        src,
        &semithin_store::import::CommitOptions {
            channel,
            message: "fuzz fixture",
            time: Some(time),
        },
        &semithin_store::NoProgress,
    )
    .expect("commit a fixture");
    stats.commit.parse().expect("a commit id")
}

/// What [`check_commit`] counted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Whole {
    pub entries: u64,
    pub bytes: u64,
}

/// Reads a commit and everything it reaches, and checks what a stored commit promises: every
/// tree decodes (names plain, sorted, unique), every file's chunks are there with the lengths
/// its entry names and add up to the file hash, and every hardlink path is a regular file.
/// Panics (a fuzzing failure) otherwise.
pub fn check_commit(store: &ObjectStore, id: CommitId) -> Whole {
    let commit = store.get_commit(&id).expect("a stored commit reads back");
    let mut whole = Whole::default();
    let mut stack: Vec<(Vec<u8>, TreeId)> = vec![(Vec::new(), commit.tree)];
    let mut files: Vec<Vec<u8>> = Vec::new();
    while let Some((path, tree_id)) = stack.pop() {
        let tree = store
            .get_tree(&tree_id)
            .expect("a reachable tree reads back");
        for e in tree.entries {
            whole.entries += 1;
            let mut p = path.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(&e.name);
            match e.kind {
                EntryKind::Dir(t) => stack.push((p, t)),
                EntryKind::File(c) => {
                    let mut h = blake3::Hasher::new();
                    for chunk in &c.chunks {
                        let data = store.get_chunk(&chunk.id).expect("a chunk reads back");
                        assert_eq!(data.len() as u64, u64::from(chunk.len), "chunk length");
                        h.update(&data);
                    }
                    assert_eq!(
                        FileHash::from_hasher(&h),
                        c.hash,
                        "file hash of {}",
                        String::from_utf8_lossy(&p)
                    );
                    whole.bytes += c.size;
                    files.push(p);
                }
                _ => {}
            }
        }
    }
    files.sort();
    for group in &commit.hardlinks {
        assert!(group.len() >= 2, "a hardlink group of one");
        for p in group {
            assert!(
                files.binary_search(p).is_ok(),
                "hardlink {} is not a regular file of the tree",
                String::from_utf8_lossy(p)
            );
        }
    }
    whole
}

/// Every object a commit reaches, as (kind, id).
pub fn reachable(
    store: &ObjectStore,
    id: CommitId,
) -> std::collections::HashSet<(semithin_store::pack::ObjKind, [u8; 32])> {
    use semithin_store::pack::ObjKind;
    let mut out = std::collections::HashSet::new();
    out.insert((ObjKind::Commit, *id.as_bytes()));
    let commit = store.get_commit(&id).expect("commit");
    let mut stack = vec![commit.tree];
    while let Some(t) = stack.pop() {
        if !out.insert((ObjKind::Tree, *t.as_bytes())) {
            continue;
        }
        for e in store.get_tree(&t).expect("tree").entries {
            match e.kind {
                EntryKind::Dir(d) => stack.push(d),
                EntryKind::File(c) => {
                    for ch in c.chunks {
                        out.insert((ObjKind::Chunk, *ch.id.as_bytes()));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// Copies `wanted` objects from one store to another through an object stream.
pub fn copy_objects(
    from: &ObjectStore,
    to: &ObjectStore,
    wanted: &[(semithin_store::pack::ObjKind, [u8; 32])],
) {
    let mut buf = Vec::new();
    semithin_store::transfer::send(from, wanted, &mut buf).expect("send");
    let expected = wanted.iter().copied().collect();
    semithin_store::transfer::receive(to, &expected, buf.as_slice()).expect("receive");
}

/// An object store in `dir` (`packs/`, `tmp/`), made if missing.
pub fn open_store(dir: &Path) -> ObjectStore {
    let (packs, tmp) = (dir.join("packs"), dir.join("tmp"));
    std::fs::create_dir_all(&packs).expect("packs dir");
    std::fs::create_dir_all(&tmp).expect("tmp dir");
    ObjectStore::open(packs, tmp, 1).expect("open a store")
}
