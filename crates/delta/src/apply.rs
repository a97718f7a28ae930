//! Applying a delta pack to a store that holds the release it starts from.
//!
//! Items are taken in the pack's order; each tree is checked against the id its parent (or the
//! commit) names, each file's content against the chunk ids and file hash its tree entry names,
//! before anything is stored. A file's content is read and stored chunk by chunk, so memory stays
//! bounded by one chunk, a segment's prefix and the decoders' windows, whatever the file size.

use std::io::{BufReader, Read};

use semithin_store::object::{FileContent, Tree};
use semithin_store::objects::ObjectStore;
use semithin_store::pack::ObjKind;
use semithin_store::{ChunkId, CommitId, FileHash, TreeId, VerifiedObject};
use serde::Serialize;

use crate::build::{read_file, read_tree};
use crate::error::{Error, Result};
use crate::listing::Listing;
use crate::order::{MissingTrees, missing_files};
use crate::pack::{
    Codec, Item, MAX_BSDIFF, Method, Target, XZ_MEMLIMIT, ZSTD_WINDOW_LOG, read_start,
};

/// Largest tree object a pack may carry.
const MAX_TREE: u64 = 64 << 20;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub trees: u64,
    pub files: u64,
    /// Bytes of new objects stored.
    pub stored_bytes: u64,
    /// Bytes of the pack read.
    pub pack_bytes: u64,
}

/// Counts what passes through.
struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

fn name(p: &[u8]) -> String {
    if p.is_empty() {
        "/".into()
    } else {
        String::from_utf8_lossy(p).into_owned()
    }
}

fn read_body(r: &mut impl Read, len: u64, limit: u64, what: &str) -> Result<Vec<u8>> {
    if len > limit {
        return Err(Error::bad(format!(
            "{what}: {len} bytes, over the limit of {limit}"
        )));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)
        .map_err(|e| Error::bad(format!("{what}: cut short ({e})")))?;
    Ok(buf)
}

struct State<'a> {
    store: &'a ObjectStore,
    old: Listing,
    walk: MissingTrees,
    /// The missing trees rebuilt so far, in canonical order.
    trees: Vec<(Vec<u8>, Tree)>,
    /// The missing files, known once every tree is in.
    files: Option<Vec<(Vec<u8>, FileContent)>>,
    applied: Applied,
}

impl State<'_> {
    /// The next tree of the canonical order.
    fn expected_tree(&mut self, index: u32) -> Result<(Vec<u8>, TreeId)> {
        if index as usize != self.trees.len() {
            return Err(Error::bad(format!(
                "tree item {index} out of order (expected {})",
                self.trees.len()
            )));
        }
        self.walk.next_tree().ok_or_else(|| {
            Error::bad(format!(
                "tree item {index}: the release lacks only {} trees",
                self.trees.len()
            ))
        })
    }

    fn base_bytes(&self, target: Target, base: &[u8]) -> Result<Vec<u8>> {
        let missing = || Error::bad(format!("base {} is not in the old release", name(base)));
        match target {
            Target::Tree(_) => read_tree(self.store, self.old.dirs.get(base).ok_or_else(missing)?),
            Target::File(_) => {
                let c = self.old.files.get(base).ok_or_else(missing)?;
                read_file(self.store, c)
            }
        }
    }

    fn files(&mut self) -> Result<&[(Vec<u8>, FileContent)]> {
        if self.files.is_none() {
            if let Some((p, id)) = self.walk.next_tree() {
                return Err(Error::bad(format!(
                    "files come before tree {} ({id}) the release lacks",
                    name(&p)
                )));
            }
            let refs: Vec<(Vec<u8>, &Tree)> =
                self.trees.iter().map(|(p, t)| (p.clone(), t)).collect();
            self.files = Some(missing_files(&refs, &self.old.file_hashes()));
        }
        Ok(self.files.as_deref().expect("just computed"))
    }

    fn tree_item(&mut self, r: &mut impl Read, item: &Item, index: u32) -> Result<()> {
        let (path, id) = self.expected_tree(index)?;
        let what = format!("tree {}", name(&path));
        let bytes = match &item.method {
            Method::Plain | Method::Prefixed(_) => read_body(r, item.len, MAX_TREE, &what)?,
            Method::Gzip { .. } => {
                return Err(Error::bad(format!("{what}: a tree cannot be gzip'ed")));
            }
            Method::Bsdiff(base) => {
                let patch = crate::bspatch::join(&read_body(r, item.len, MAX_TREE, &what)?)?;
                let base = self.base_bytes(item.target, base)?;
                let mut out = Vec::new();
                bsdiff::patch(&base, &mut patch.as_slice(), &mut out)
                    .map_err(|e| Error::bad(format!("{what}: bad patch ({e})")))?;
                out
            }
        };
        let obj = VerifiedObject::from_raw(ObjKind::Tree, &bytes[..])?;
        if obj.id() != id.as_bytes() {
            return Err(Error::bad(format!(
                "{what} does not hash to {id}: the pack does not fit this release"
            )));
        }
        let tree = Tree::decode(id, &bytes)?;
        self.walk.expand(&path, &tree);
        if let semithin_store::objects::Put::New { stored } = self.store.put(&obj)? {
            self.applied.stored_bytes += stored;
        }
        self.trees.push((path, tree));
        self.applied.trees += 1;
        Ok(())
    }

    fn store_chunk(&mut self, id: &ChunkId, data: &[u8], what: &str) -> Result<()> {
        let obj = VerifiedObject::from_raw(ObjKind::Chunk, data)?;
        if obj.id() != id.as_bytes() {
            return Err(Error::bad(format!(
                "{what}: a chunk does not hash to {id}: the pack does not fit this release"
            )));
        }
        if let semithin_store::objects::Put::New { stored } = self.store.put(&obj)? {
            self.applied.stored_bytes += stored;
        }
        Ok(())
    }

    /// Stores a whole file's content, cut where its release says.
    fn store_content(&mut self, content: &FileContent, out: &[u8], what: &str) -> Result<()> {
        if out.len() as u64 != content.size {
            return Err(Error::bad(format!(
                "{what}: rebuilt as {} bytes, the release says {}",
                out.len(),
                content.size
            )));
        }
        let mut at = 0usize;
        for ch in &content.chunks {
            let end = at + ch.len as usize;
            self.store_chunk(&ch.id, &out[at..end], what)?;
            at = end;
        }
        Ok(())
    }

    fn file_item(&mut self, r: &mut impl Read, item: &Item, index: u32) -> Result<()> {
        let (path, content) = self
            .files()?
            .get(index as usize)
            .cloned()
            .ok_or_else(|| Error::bad(format!("file item {index}: no such missing file")))?;
        let what = format!("file {}", name(&path));
        let mut hash = FileHash::hasher();
        match &item.method {
            Method::Plain | Method::Prefixed(_) => {
                if item.len != content.size {
                    return Err(Error::bad(format!(
                        "{what}: {} bytes in the pack, the release says {}",
                        item.len, content.size
                    )));
                }
                let mut buf = Vec::new();
                for ch in &content.chunks {
                    buf.resize(ch.len as usize, 0);
                    r.read_exact(&mut buf)
                        .map_err(|e| Error::bad(format!("{what}: cut short ({e})")))?;
                    hash.update(&buf);
                    self.store_chunk(&ch.id, &buf, &what)?;
                }
            }
            Method::Gzip { level, header, .. } => {
                let raw = read_body(r, item.len, crate::gz::MAX_RAW as u64, &what)?;
                let out = crate::gz::compress(header, *level, &raw);
                self.store_content(&content, &out, &what)?;
                hash.update(&out);
            }
            Method::Bsdiff(base) => {
                if content.size > MAX_BSDIFF {
                    return Err(Error::bad(format!("{what}: too large for a bsdiff patch")));
                }
                let patch = crate::bspatch::join(&read_body(r, item.len, 2 * MAX_BSDIFF, &what)?)?;
                let base = self.base_bytes(item.target, base)?;
                let mut out = Vec::with_capacity(content.size as usize);
                bsdiff::patch(&base, &mut patch.as_slice(), &mut out)
                    .map_err(|e| Error::bad(format!("{what}: bad patch ({e})")))?;
                if out.len() as u64 != content.size {
                    return Err(Error::bad(format!(
                        "{what}: the patch makes {} bytes, the release says {}",
                        out.len(),
                        content.size
                    )));
                }
                hash.update(&out);
                self.store_content(&content, &out, &what)?;
            }
        }
        if FileHash::from_hasher(&hash) != content.hash {
            return Err(Error::bad(format!(
                "{what} does not hash to {}",
                content.hash
            )));
        }
        self.applied.files += 1;
        Ok(())
    }
}

/// Applies the pack read from `input`, which must lead from `from` (all of whose objects `store`
/// holds) to `to` (whose commit object `store` holds). Objects still missing afterwards (none for
/// a complete pack) are the caller's to fetch. What was verified and stored before a failure is
/// made durable all the same, so a retry fetches only the rest.
pub fn apply(
    store: &ObjectStore,
    from: CommitId,
    to: CommitId,
    input: impl Read,
) -> Result<Applied> {
    let res = apply_items(store, from, to, input);
    store.flush()?;
    res
}

fn apply_items(
    store: &ObjectStore,
    from: CommitId,
    to: CommitId,
    input: impl Read,
) -> Result<Applied> {
    let mut input = Counting {
        inner: BufReader::with_capacity(256 << 10, input),
        n: 0,
    };
    let (f, t, header, _) = read_start(&mut input)?;
    if f != *from.as_bytes() || t != *to.as_bytes() {
        return Err(Error::bad(format!(
            "it leads from {} to {}, not from {} to {}",
            hex::encode(&f[..6]),
            hex::encode(&t[..6]),
            from.short(),
            to.short()
        )));
    }
    let commit = store.get_commit(&to)?;
    let old = Listing::read(store, from).map_err(|e| Error::Release {
        release: from.to_hex(),
        reason: format!("this machine does not hold all of it: {e}"),
    })?;
    let mut st = State {
        store,
        walk: MissingTrees::new(commit.tree, old.tree_ids()),
        old,
        trees: Vec::new(),
        files: None,
        applied: Applied::default(),
    };
    for (n, seg) in header.segments.iter().enumerate() {
        let mut raw = (&mut input).take(seg.compressed_len);
        {
            let mut prefix = Vec::new();
            if seg.codec == Codec::Zstd {
                for it in &seg.items {
                    match &it.method {
                        Method::Prefixed(b) => {
                            prefix.extend_from_slice(&st.base_bytes(it.target, b)?)
                        }
                        Method::Gzip { base: Some(b), .. } => {
                            let old = st.base_bytes(it.target, b)?;
                            let raw = crate::gz::decompress(&old).ok_or_else(|| {
                                Error::bad(format!("base {} is not a gzip file", name(b)))
                            })?;
                            prefix.extend_from_slice(&raw);
                        }
                        _ => {}
                    }
                }
            }
            let mut dec: Box<dyn Read + '_> = match seg.codec {
                Codec::Zstd => {
                    let mut d = zstd::stream::read::Decoder::with_ref_prefix(
                        BufReader::new(&mut raw),
                        &prefix,
                    )
                    .map_err(Error::io("zstd"))?;
                    d.window_log_max(ZSTD_WINDOW_LOG)
                        .map_err(Error::io("zstd"))?;
                    Box::new(d)
                }
                Codec::Xz | Codec::XzX86 => {
                    let s = liblzma::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, 0)
                        .map_err(|e| Error::bad(format!("xz: {e}")))?;
                    Box::new(liblzma::read::XzDecoder::new_stream(&mut raw, s))
                }
            };
            for (i, item) in seg.items.iter().enumerate() {
                match (item.target, &item.method, seg.codec) {
                    (_, m, Codec::Xz | Codec::XzX86) if m.uses_prefix() => {
                        return Err(Error::bad(format!(
                            "segment {n} item {i}: a prefixed item in an xz segment"
                        )));
                    }
                    (Target::Tree(t), _, _) => st.tree_item(&mut dec, item, t)?,
                    (Target::File(f), _, _) => st.file_item(&mut dec, item, f)?,
                }
            }
        }
        std::io::copy(&mut raw, &mut std::io::sink())
            .map_err(|e| Error::bad(format!("segment {n}: {e}")))?;
    }
    st.applied.pack_bytes = input.n;
    Ok(st.applied)
}
