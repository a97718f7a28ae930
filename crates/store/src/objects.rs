//! The object store: typed get and put over pack files, with an in-memory index of every object.
//!
//! Reads verify: every object is decompressed and re-hashed against its id before it is returned,
//! so a flipped bit on disk is an error naming the object, never wrong data. Writes take only a
//! [`VerifiedObject`], whose id was established by hashing its content.
//!
//! The index and the packs on disk agree at all times: packs are added to it when they are
//! written and leave it, through [`ObjectStore::remove_packs`], before their files are removed,
//! so an object counts as present exactly while a pack that stays holds it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::id::{ChunkId, CommitId, TreeId};
use crate::object::{Commit, Tree};
use crate::pack::{IdxEntry, ObjKind, PackReader, PackWriter, read_index};
use crate::verified::{VerifiedObject, verify_frame};

/// A pack is closed and a new one started past this size.
const PACK_TARGET: u64 = 64 << 20;

type Key = (ObjKind, [u8; 32]);

#[derive(Clone, Copy, Debug)]
struct Loc {
    /// The pack's slot in [`Packs::readers`].
    pack: usize,
    entry: IdxEntry,
}

/// The open packs and where each object is in them, under one lock so the two always agree.
#[derive(Default)]
struct Packs {
    index: HashMap<Key, Loc>,
    /// Open packs by slot; a removed pack leaves its slot empty, so locations never shift.
    readers: Vec<Option<PackReader>>,
}

/// What a put did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// Stored now; the compressed size.
    New { stored: u64 },
    /// Already present.
    Existing,
}

/// The objects of a repository.
pub struct ObjectStore {
    packs_dir: PathBuf,
    tmp_dir: PathBuf,
    level: i32,
    packs: RwLock<Packs>,
    writer: Mutex<Option<PackWriter>>,
    damaged: Vec<Error>,
}

impl ObjectStore {
    /// Opens the store and reads every pack index. A damaged index is an error naming it.
    pub fn open(packs_dir: PathBuf, tmp_dir: PathBuf, level: i32) -> Result<Self> {
        let store = Self {
            packs_dir,
            tmp_dir,
            level,
            packs: RwLock::default(),
            writer: Mutex::default(),
            damaged: Vec::new(),
        };
        let mut damaged = Vec::new();
        for name in store.pack_names()? {
            // A damaged pack must not make the rest unreadable: its objects read as missing,
            // and fsck names the pack.
            if let Err(e) = store.load_pack(&name) {
                damaged.push(e);
            }
        }
        Ok(Self { damaged, ..store })
    }

    /// Packs that could not be opened, with the reason.
    pub fn damaged_packs(&self) -> &[Error] {
        &self.damaged
    }

    pub fn packs_dir(&self) -> &Path {
        &self.packs_dir
    }

    /// Names of the packs whose index exists, sorted.
    pub fn pack_names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let rd =
            std::fs::read_dir(&self.packs_dir).map_err(Error::io("listing", &self.packs_dir))?;
        for de in rd {
            let de = de.map_err(Error::io("listing", &self.packs_dir))?;
            let n = de.file_name();
            let n = n.to_string_lossy();
            if let Some(stem) = n.strip_suffix(".idx") {
                names.push(stem.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn load_pack(&self, name: &str) -> Result<()> {
        let entries = read_index(&self.packs_dir.join(format!("{name}.idx")))?;
        let reader =
            PackReader::open(self.packs_dir.join(format!("{name}.pack")), name.to_owned())?;
        self.add_pack(reader, entries);
        Ok(())
    }

    fn add_pack(&self, reader: PackReader, entries: Vec<IdxEntry>) {
        let mut packs = self.packs.write().expect("lock");
        let pack = packs.readers.len();
        packs.readers.push(Some(reader));
        for entry in entries {
            packs
                .index
                .entry((entry.kind(), entry.id))
                .or_insert(Loc { pack, entry });
        }
    }

    /// Removes packs: first from the index (their objects no longer count as present, so a
    /// later put stores them again, and each object another pack also holds, such as a copy gc
    /// made, is found there), then their files (index first, so a pack without its index is
    /// what an interruption leaves, which gc removes).
    pub(crate) fn remove_packs(&self, names: &[String]) -> Result<()> {
        let names: HashSet<&str> = names.iter().map(String::as_str).collect();
        let mut packs = self.packs.write().expect("lock");
        let Packs { index, readers } = &mut *packs;
        let mut slots = HashSet::new();
        for (slot, r) in readers.iter_mut().enumerate() {
            if r.as_ref().is_some_and(|r| names.contains(r.name.as_str())) {
                *r = None;
                slots.insert(slot);
            }
        }
        let mut orphans = HashSet::new();
        index.retain(|key, loc| {
            let gone = slots.contains(&loc.pack);
            if gone {
                orphans.insert(*key);
            }
            !gone
        });
        for (slot, r) in readers.iter().enumerate() {
            let Some(r) = r else { continue };
            if orphans.is_empty() {
                break;
            }
            for entry in read_index(&self.packs_dir.join(format!("{}.idx", r.name)))? {
                let key = (entry.kind(), entry.id);
                if orphans.remove(&key) {
                    index.insert(key, Loc { pack: slot, entry });
                }
            }
        }
        for name in &names {
            remove_file(&self.packs_dir.join(format!("{name}.idx")))?;
            remove_file(&self.packs_dir.join(format!("{name}.pack")))?;
        }
        Ok(())
    }

    pub fn contains(&self, kind: ObjKind, id: &[u8; 32]) -> bool {
        if self
            .packs
            .read()
            .expect("lock")
            .index
            .contains_key(&(kind, *id))
        {
            return true;
        }
        let w = self.writer.lock().expect("lock");
        w.as_ref().is_some_and(|w| w.contains(kind, id))
    }

    /// Every object in the store, with its sizes.
    pub fn list(&self) -> Vec<(ObjKind, [u8; 32], IdxEntry)> {
        let packs = self.packs.read().expect("lock");
        packs
            .index
            .iter()
            .map(|(k, l)| (k.0, k.1, l.entry))
            .collect()
    }

    /// Stores a verified object unless it is already there: raw content compressed, a received
    /// frame as it came.
    pub fn put(&self, obj: &VerifiedObject) -> Result<Put> {
        if self.indexed(obj) {
            return Ok(Put::Existing);
        }
        self.append(obj, true)
    }

    fn indexed(&self, obj: &VerifiedObject) -> bool {
        let packs = self.packs.read().expect("lock");
        packs.index.contains_key(&(obj.kind(), *obj.id()))
    }

    /// Appends an object to the pack being written unless that pack holds it already, and,
    /// when `unless_indexed`, another pack (looked at again under the writer's lock, since a
    /// pack may have been finished meanwhile). gc copies live objects out of packs it removes
    /// with `unless_indexed` false.
    pub(crate) fn append(&self, obj: &VerifiedObject, unless_indexed: bool) -> Result<Put> {
        let (kind, id) = (obj.kind(), obj.id());
        // Compressed before the lock, so parallel puts compress in parallel.
        let frame = obj.frame(self.level)?;
        let mut guard = self.writer.lock().expect("lock");
        if guard.as_ref().is_some_and(|w| w.contains(kind, id))
            || (unless_indexed && self.indexed(obj))
        {
            return Ok(Put::Existing);
        }
        if guard.is_none() {
            *guard = Some(PackWriter::create(&self.tmp_dir)?);
        }
        let w = guard.as_mut().expect("just set");
        w.append(kind, *id, &frame, obj.raw_len())?;
        if w.len() >= PACK_TARGET {
            let w = guard.take().expect("present");
            self.finish_pack(w)?;
        }
        Ok(Put::New {
            stored: frame.len() as u64,
        })
    }

    fn finish_pack(&self, w: PackWriter) -> Result<()> {
        if w.is_empty() {
            return Ok(());
        }
        let (name, entries) = w.finish(&self.packs_dir, &self.tmp_dir)?;
        let reader = PackReader::open(self.packs_dir.join(format!("{name}.pack")), name)?;
        self.add_pack(reader, entries);
        Ok(())
    }

    /// Makes everything put so far durable and readable.
    pub fn flush(&self) -> Result<()> {
        let w = self.writer.lock().expect("lock").take();
        match w {
            Some(w) => self.finish_pack(w),
            None => Ok(()),
        }
    }

    /// The stored (compressed) frame and raw length of an object, unverified.
    pub fn get_frame(&self, kind: ObjKind, id: &[u8; 32]) -> Result<(Vec<u8>, u32)> {
        let packs = self.packs.read().expect("lock");
        let missing = || Error::Missing {
            kind: kind.name(),
            id: hex::encode(id),
        };
        let loc = packs.index.get(&(kind, *id)).ok_or_else(missing)?;
        let reader = packs
            .readers
            .get(loc.pack)
            .and_then(Option::as_ref)
            .ok_or_else(missing)?;
        Ok((reader.read_frame(&loc.entry)?, loc.entry.raw_len))
    }

    /// Reads, decompresses and verifies an object.
    pub fn get(&self, kind: ObjKind, id: &[u8; 32]) -> Result<Vec<u8>> {
        let (frame, raw_len) = self.get_frame(kind, id)?;
        verify_frame(kind, id, &frame, raw_len)
    }

    /// Reads and verifies an object, keeping its stored frame (to store elsewhere as it is).
    pub fn get_verified(&self, kind: ObjKind, id: &[u8; 32]) -> Result<VerifiedObject<'static>> {
        let (frame, raw_len) = self.get_frame(kind, id)?;
        Ok(VerifiedObject::from_frame(kind, *id, frame, raw_len)?.0)
    }

    pub fn get_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.get(ObjKind::Chunk, id.as_bytes())
    }

    pub fn get_tree(&self, id: &TreeId) -> Result<Tree> {
        Tree::decode(*id, &self.get(ObjKind::Tree, id.as_bytes())?)
    }

    pub fn get_commit(&self, id: &CommitId) -> Result<Commit> {
        Commit::decode(*id, &self.get(ObjKind::Commit, id.as_bytes())?)
    }

    pub fn put_tree(&self, tree: &Tree) -> Result<(TreeId, Put)> {
        let obj = VerifiedObject::from_raw(ObjKind::Tree, tree.encode())?;
        Ok((TreeId::from_bytes(*obj.id()), self.put(&obj)?))
    }

    pub fn put_commit(&self, commit: &Commit) -> Result<(CommitId, Put)> {
        let obj = VerifiedObject::from_raw(ObjKind::Commit, commit.encode())?;
        Ok((CommitId::from_bytes(*obj.id()), self.put(&obj)?))
    }

    /// Commit ids starting with `prefix` (lowercase hex).
    pub fn commits_with_prefix(&self, prefix: &str) -> Vec<CommitId> {
        let packs = self.packs.read().expect("lock");
        packs
            .index
            .keys()
            .filter(|(k, id)| *k == ObjKind::Commit && hex::encode(id).starts_with(prefix))
            .map(|(_, id)| CommitId::from_bytes(*id))
            .collect()
    }

    /// Every problem of every pack's record headers, as (pack name, problem).
    pub fn check_pack_headers(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for name in self.pack_names()? {
            // A damaged index is reported by itself (`damaged_packs`).
            let Ok(entries) = read_index(&self.packs_dir.join(format!("{name}.idx"))) else {
                continue;
            };
            let reader =
                PackReader::open(self.packs_dir.join(format!("{name}.pack")), name.clone())?;
            out.extend(
                reader
                    .check_headers(&entries)?
                    .into_iter()
                    .map(|p| (name.clone(), p)),
            );
        }
        Ok(out)
    }

    /// Per pack: its name and entries, for gc.
    pub fn packs(&self) -> Result<Vec<(String, Vec<IdxEntry>)>> {
        let mut out = Vec::new();
        for name in self.pack_names()? {
            let entries = read_index(&self.packs_dir.join(format!("{name}.idx")))?;
            out.push((name, entries));
        }
        Ok(out)
    }
}

fn remove_file(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing", p)(e)),
    }
}
