//! Building a delta pack from a plan.
//!
//! - Trees go first, in one zstd segment whose prefix is the old trees at the same paths: an
//!   entry that did not change costs almost nothing.
//! - A changed file with a base is tried two ways, each compressed alone: zstd with the base as
//!   prefix, and a bsdiff patch (for files up to [`MAX_BSDIFF`]); the smaller wins. The winners
//!   are then packed into zstd segments of up to 16 MiB, each compressed against the bases of its
//!   prefixed items, so files also share matches with each other.
//! - New files (no base) are sorted so similar files sit together (programs first, then by
//!   extension and name) and compressed as two xz streams: programs with the x86 branch filter,
//!   everything else without.

use std::io::Write;
use std::path::Path;

use rayon::prelude::*;
use semithin_store::object::FileContent;
use semithin_store::objects::ObjectStore;
use semithin_store::pack::ObjKind;
use semithin_store::{CommitId, TreeId};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::listing::Listing;
use crate::pack::{
    Codec, Header, Item, Kind, MAX_BSDIFF, Method, Segment, Target, ZSTD_WINDOW_LOG, write_start,
};
use crate::plan::{Plan, plan};

/// How hard to work: `Full` for packs made once at publish, `Quick` for packs made on demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effort {
    Full,
    Quick,
}

impl Effort {
    fn zstd_level(self) -> i32 {
        match self {
            Effort::Full => 19,
            Effort::Quick => 15,
        }
    }
    fn xz_preset(self) -> u32 {
        match self {
            Effort::Full => 9 | liblzma::stream::PRESET_EXTREME,
            Effort::Quick => 6,
        }
    }
    fn bsdiff_limit(self) -> u64 {
        match self {
            Effort::Full => MAX_BSDIFF,
            Effort::Quick => 1 << 20,
        }
    }
}

/// Segments of patches hold at most this much body, and as much prefix.
const SEGMENT: u64 = 16 << 20;
/// The xz dictionary: decoders need this much memory.
const XZ_DICT: u32 = 16 << 20;

/// What a pack holds, in bytes as it crosses the network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub from: String,
    pub to: String,
    /// The pack's start (header) and its trees.
    pub metadata_bytes: u64,
    /// Changed files, as patches against their old versions.
    pub patch_bytes: u64,
    /// Files with no old version, compressed together.
    pub new_bytes: u64,
    /// The whole pack.
    pub total_bytes: u64,
    pub trees: u64,
    pub files_prefixed: u64,
    pub files_bsdiff: u64,
    /// Changed gzip files patched as their uncompressed contents.
    pub files_gzip: u64,
    pub files_new: u64,
    /// Bytes of file content the pack rebuilds.
    pub content_bytes: u64,
}

/// A file's content, read from its verified chunks.
pub fn read_file(store: &ObjectStore, c: &FileContent) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(c.size as usize);
    for ch in &c.chunks {
        out.extend_from_slice(&store.get_chunk(&ch.id)?);
    }
    Ok(out)
}

/// A tree's encoded bytes.
pub fn read_tree(store: &ObjectStore, id: &TreeId) -> Result<Vec<u8>> {
    Ok(store.get(ObjKind::Tree, id.as_bytes())?)
}

fn window_log(bytes: usize) -> u32 {
    let need = usize::BITS - bytes.max(1).leading_zeros();
    need.clamp(20, ZSTD_WINDOW_LOG)
}

/// zstd of `data` against `prefix`.
pub fn zstd_encode(prefix: &[u8], data: &[u8], level: i32) -> Result<Vec<u8>> {
    let err = Error::io("zstd");
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), level, prefix)
        .map_err(Error::io("zstd"))?;
    let wl = window_log(prefix.len() + data.len());
    enc.window_log(wl).map_err(Error::io("zstd"))?;
    if wl > 23 {
        enc.long_distance_matching(true)
            .map_err(Error::io("zstd"))?;
    }
    enc.include_checksum(false).map_err(Error::io("zstd"))?;
    enc.set_pledged_src_size(Some(data.len() as u64))
        .map_err(Error::io("zstd"))?;
    enc.write_all(data).map_err(Error::io("zstd"))?;
    enc.finish().map_err(err)
}

fn bsdiff_patch(base: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    let mut patch = Vec::new();
    bsdiff::diff(base, data, &mut patch).map_err(Error::io("bsdiff"))?;
    crate::bspatch::split(&patch)
}

fn xz_encoder<W: Write>(out: W, x86: bool, preset: u32) -> Result<liblzma::write::XzEncoder<W>> {
    use liblzma::stream::{Check, Filters, LzmaOptions, Stream};
    let mut opts = LzmaOptions::new_preset(preset).map_err(|e| Error::bad(format!("xz: {e}")))?;
    opts.dict_size(XZ_DICT);
    let mut filters = Filters::new();
    if x86 {
        filters.x86();
    }
    filters.lzma2(&opts);
    let stream = Stream::new_stream_encoder(&filters, Check::None)
        .map_err(|e| Error::bad(format!("xz: {e}")))?;
    Ok(liblzma::write::XzEncoder::new_stream(out, stream))
}

fn is_program(data: &[u8]) -> bool {
    data.starts_with(b"\x7fELF")
}

/// Where similar new files meet: programs first, then by extension, then by name.
type SimilarityKey = (bool, Vec<u8>, Vec<u8>, Vec<u8>);

/// A new file, looked at once: its index among the missing files, its content, how it is made,
/// its body's length and where it sorts. Its body is read again when it is compressed.
struct Fresh<'a> {
    index: u32,
    content: &'a FileContent,
    method: Method,
    len: u64,
    key: SimilarityKey,
}

fn similarity_key(path: &[u8], data: &[u8]) -> SimilarityKey {
    let name = path.rsplit(|b| *b == b'/').next().unwrap_or(path);
    let ext = name
        .iter()
        .rposition(|b| *b == b'.')
        .map(|i| name[i..].to_vec())
        .unwrap_or_default();
    (!is_program(data), ext, name.to_vec(), path.to_vec())
}

/// Builds the pack from `from` to `to` (both in `store`) into `out`, with temporary files in
/// the system's temporary directory.
pub fn build(
    store: &ObjectStore,
    from: CommitId,
    to: CommitId,
    effort: Effort,
    out: &mut impl Write,
) -> Result<Stats> {
    build_in(store, from, to, effort, &std::env::temp_dir(), out)
}

/// [`build`] with its temporary files in `scratch` (they hold the compressed segments until the
/// header is known; they have no name and vanish with the process).
pub fn build_in(
    store: &ObjectStore,
    from: CommitId,
    to: CommitId,
    effort: Effort,
    scratch: &Path,
    out: &mut impl Write,
) -> Result<Stats> {
    let old = Listing::read(store, from)?;
    let new = Listing::read(store, to)?;
    let p = plan(&old, &new);
    build_plan(store, &old, &p, (from, to), effort, scratch, out)
}

/// [`build`] with patch segments of at most `segment` bytes (tests use small ones to cut many).
#[doc(hidden)]
pub fn build_small_segments(
    store: &ObjectStore,
    from: CommitId,
    to: CommitId,
    segment: u64,
    out: &mut impl Write,
) -> Result<Stats> {
    let old = Listing::read(store, from)?;
    let new = Listing::read(store, to)?;
    let p = plan(&old, &new);
    let b = Builder {
        store,
        old: &old,
        plan: &p,
        level: Effort::Quick.zstd_level(),
        effort: Effort::Quick,
        segment,
        scratch: &std::env::temp_dir(),
    };
    b.build((from, to), out)
}

struct Decided {
    index: u32,
    method: Method,
    body: Vec<u8>,
    /// What the item adds to its segment's prefix.
    prefix: Vec<u8>,
}

/// Changed files are decided in batches of about this many bytes of old and new content, so a
/// large update never has all its files in memory.
const BATCH: u64 = 64 << 20;

/// Builds a pack from a plan computed against `old`.
///
/// Memory stays bounded whatever the size of the update: changed files are read and decided in
/// batches, their segments compressed as they fill and written to a temporary file in `scratch`;
/// new files are looked at one at a time, then read again into the xz streams, which also go to
/// temporary files. `out` gets the header, then the segments copied from those files.
pub fn build_plan(
    store: &ObjectStore,
    old: &Listing,
    plan: &Plan,
    (from, to): (CommitId, CommitId),
    effort: Effort,
    scratch: &Path,
    out: &mut impl Write,
) -> Result<Stats> {
    let b = Builder {
        store,
        old,
        plan,
        level: effort.zstd_level(),
        effort,
        segment: SEGMENT,
        scratch,
    };
    b.build((from, to), out)
}

struct Builder<'a> {
    store: &'a ObjectStore,
    old: &'a Listing,
    plan: &'a Plan,
    effort: Effort,
    level: i32,
    segment: u64,
    scratch: &'a Path,
}

/// Segments written to a temporary file, in order.
struct Spill {
    file: std::fs::File,
    segments: Vec<Segment>,
}

impl Spill {
    fn new(scratch: &Path) -> Result<Self> {
        std::fs::create_dir_all(scratch).map_err(Error::io("creating the scratch directory"))?;
        let file =
            tempfile::tempfile_in(scratch).map_err(Error::io("creating a temporary file"))?;
        Ok(Self {
            file,
            segments: Vec::new(),
        })
    }

    fn push(&mut self, segment: Segment, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .map_err(Error::io("writing a temporary file"))?;
        self.segments.push(segment);
        Ok(())
    }

    /// Copies the segments into `out`.
    fn copy_to(mut self, out: &mut impl Write) -> Result<()> {
        use std::io::Seek;
        self.file
            .seek(std::io::SeekFrom::Start(0))
            .map_err(Error::io("reading a temporary file"))?;
        let mut r = std::io::BufReader::with_capacity(1 << 20, self.file);
        std::io::copy(&mut r, out).map_err(Error::io("writing the pack"))?;
        Ok(())
    }
}

impl Builder<'_> {
    fn build(&self, (from, to): (CommitId, CommitId), out: &mut impl Write) -> Result<Stats> {
        let mut stats = Stats {
            from: from.to_hex(),
            to: to.to_hex(),
            trees: self.plan.trees.len() as u64,
            content_bytes: self.plan.file_bytes(),
            ..Default::default()
        };
        let trees = self.trees()?;
        let patches = self.patches(&mut stats)?;
        let (programs, rest) = self.new_files(&mut stats)?;

        let mut segments: Vec<Segment> = trees.iter().map(|(s, _)| s.clone()).collect();
        for spill in [&patches, &programs, &rest] {
            segments.extend(spill.segments.iter().cloned());
        }
        for s in &segments {
            let n = s.compressed_len;
            match s.kind {
                Kind::Metadata => stats.metadata_bytes += n,
                Kind::Patches => stats.patch_bytes += n,
                Kind::New => stats.new_bytes += n,
            }
        }
        let start = write_start(from.as_bytes(), to.as_bytes(), &Header { segments })?;
        stats.metadata_bytes += start.len() as u64;
        out.write_all(&start)
            .map_err(Error::io("writing the pack"))?;
        if let Some((_, data)) = &trees {
            out.write_all(data).map_err(Error::io("writing the pack"))?;
        }
        patches.copy_to(out)?;
        programs.copy_to(out)?;
        rest.copy_to(out)?;
        stats.total_bytes = stats.metadata_bytes + stats.patch_bytes + stats.new_bytes;
        Ok(stats)
    }

    /// Trees, in one segment against the old trees at their paths.
    fn trees(&self) -> Result<Option<(Segment, Vec<u8>)>> {
        if self.plan.trees.is_empty() {
            return Ok(None);
        }
        let mut prefix = Vec::new();
        let mut body = Vec::new();
        let mut items = Vec::new();
        for (i, t) in self.plan.trees.iter().enumerate() {
            let bytes = read_tree(self.store, &t.id)?;
            let method = match t
                .base
                .as_ref()
                .and_then(|b| self.old.dirs.get(b).map(|id| (b, id)))
            {
                Some((b, id)) => {
                    prefix.extend_from_slice(&read_tree(self.store, id)?);
                    Method::Prefixed(b.clone())
                }
                None => Method::Plain,
            };
            items.push(Item {
                target: Target::Tree(i as u32),
                method,
                len: bytes.len() as u64,
            });
            body.extend_from_slice(&bytes);
        }
        let data = zstd_encode(&prefix, &body, self.level)?;
        Ok(Some((
            Segment {
                kind: Kind::Metadata,
                codec: Codec::Zstd,
                items,
                compressed_len: data.len() as u64,
            },
            data,
        )))
    }

    /// Changed files: each tried as prefixed zstd and as bsdiff, alone; the smaller wins. The
    /// winners are cut into segments in plan order, each compressed as soon as it is full.
    fn patches(&self, stats: &mut Stats) -> Result<Spill> {
        let with_base: Vec<(u32, &crate::plan::FileItem, &FileContent)> = self
            .plan
            .files
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let b = f.base.as_ref()?;
                self.old.files.get(b).map(|bc| (i as u32, f, bc))
            })
            .collect();
        let mut spill = Spill::new(self.scratch)?;
        let mut group: Vec<Decided> = Vec::new();
        let (mut body_len, mut prefix_len) = (0u64, 0u64);
        let mut full: Vec<Vec<Decided>> = Vec::new();
        let mut rest = with_base.as_slice();
        while !rest.is_empty() {
            // a batch of about BATCH bytes, at least one file
            let mut n = 0;
            let mut bytes = 0u64;
            while n < rest.len() && (n == 0 || bytes < BATCH) {
                bytes += rest[n].1.content.size + rest[n].2.size;
                n += 1;
            }
            let (batch, later) = rest.split_at(n);
            rest = later;
            let decided: Vec<Decided> = batch
                .par_iter()
                .map(|(i, f, bc)| self.decide(*i, f, bc))
                .collect::<Result<_>>()?;
            for d in decided {
                match d.method {
                    Method::Bsdiff(_) => stats.files_bsdiff += 1,
                    Method::Gzip { .. } => stats.files_gzip += 1,
                    _ => stats.files_prefixed += 1,
                }
                let b = d.body.len() as u64;
                let p = d.prefix.len() as u64;
                if !group.is_empty()
                    && (body_len + b > self.segment || prefix_len + p > self.segment)
                {
                    full.push(std::mem::take(&mut group));
                    (body_len, prefix_len) = (0, 0);
                }
                body_len += b;
                prefix_len += p;
                group.push(d);
            }
            self.compress_groups(std::mem::take(&mut full), &mut spill)?;
        }
        if !group.is_empty() {
            self.compress_groups(vec![group], &mut spill)?;
        }
        Ok(spill)
    }

    /// The smaller of prefixed zstd, zstd of the uncompressed gzip content and bsdiff.
    fn decide(&self, index: u32, f: &crate::plan::FileItem, bc: &FileContent) -> Result<Decided> {
        let level = self.level;
        let base = read_file(self.store, bc)?;
        let data = read_file(self.store, &f.content)?;
        let base_path = f.base.clone().expect("has a base");
        let mut best = Decided {
            index,
            method: Method::Prefixed(base_path.clone()),
            body: Vec::new(),
            prefix: Vec::new(),
        };
        let mut best_len = zstd_encode(&base, &data, level)?.len();
        // gzip files: patch the uncompressed contents, compress again on the machine
        if let (Some(g), Some(braw)) = (crate::gz::open(&data), crate::gz::decompress(&base)) {
            let n = zstd_encode(&braw, &g.raw, level)?.len() + g.header.len();
            if n < best_len {
                best_len = n;
                best.method = Method::Gzip {
                    base: Some(base_path.clone()),
                    level: g.level,
                    header: g.header,
                };
                best.body = g.raw;
                best.prefix = braw;
            }
        }
        let limit = self.effort.bsdiff_limit();
        if bc.size <= limit && f.content.size <= limit && !data.is_empty() {
            let patch = bsdiff_patch(&base, &data)?;
            if zstd_encode(&[], &patch, level)?.len() < best_len {
                best.method = Method::Bsdiff(base_path.clone());
                best.body = patch;
                best.prefix = Vec::new();
            }
        }
        if best.method == Method::Prefixed(base_path) {
            best.body = data;
            best.prefix = base;
        }
        Ok(best)
    }

    /// Compresses full groups in parallel and appends them, in order, to `spill`.
    fn compress_groups(&self, groups: Vec<Vec<Decided>>, spill: &mut Spill) -> Result<()> {
        let done: Vec<(Segment, Vec<u8>)> = groups
            .par_iter()
            .map(|g| -> Result<(Segment, Vec<u8>)> {
                let mut prefix = Vec::new();
                let mut body = Vec::new();
                let mut items = Vec::new();
                for d in g {
                    prefix.extend_from_slice(&d.prefix);
                    body.extend_from_slice(&d.body);
                    items.push(Item {
                        target: Target::File(d.index),
                        method: d.method.clone(),
                        len: d.body.len() as u64,
                    });
                }
                let data = zstd_encode(&prefix, &body, self.level)?;
                Ok((
                    Segment {
                        kind: Kind::Patches,
                        codec: Codec::Zstd,
                        items,
                        compressed_len: data.len() as u64,
                    },
                    data,
                ))
            })
            .collect::<Result<_>>()?;
        drop(groups);
        for (s, data) in done {
            spill.push(s, &data)?;
        }
        Ok(())
    }

    /// New files: sorted by similarity, programs and the rest in two xz streams.
    fn new_files(&self, stats: &mut Stats) -> Result<(Spill, Spill)> {
        let mut fresh: Vec<Fresh> = self
            .plan
            .files
            .par_iter()
            .enumerate()
            .filter(|(_, f)| {
                !f.base
                    .as_ref()
                    .is_some_and(|b| self.old.files.contains_key(b))
            })
            .map(|(i, f)| -> Result<Fresh> {
                let data = read_file(self.store, &f.content)?;
                let key = similarity_key(&f.path, &data);
                let (len, method) = match crate::gz::open(&data) {
                    Some(g) => (
                        g.raw.len() as u64,
                        Method::Gzip {
                            base: None,
                            level: g.level,
                            header: g.header,
                        },
                    ),
                    None => (data.len() as u64, Method::Plain),
                };
                Ok(Fresh {
                    index: i as u32,
                    content: &f.content,
                    method,
                    len,
                    key,
                })
            })
            .collect::<Result<_>>()?;
        stats.files_new = fresh.len() as u64;
        fresh.sort_by(|a, b| a.key.cmp(&b.key));
        let (programs, rest): (Vec<&Fresh>, Vec<&Fresh>) = fresh.iter().partition(|f| !f.key.0);
        let (a, b) = rayon::join(
            || self.xz_segment(&programs, Codec::XzX86),
            || self.xz_segment(&rest, Codec::Xz),
        );
        Ok((a?, b?))
    }

    /// One xz stream of these new files' bodies, read again from the store one at a time.
    fn xz_segment(&self, group: &[&Fresh], codec: Codec) -> Result<Spill> {
        let mut spill = Spill::new(self.scratch)?;
        if group.is_empty() {
            return Ok(spill);
        }
        let file = spill
            .file
            .try_clone()
            .map_err(Error::io("opening a temporary file"))?;
        let mut counted = CountingWriter {
            inner: std::io::BufWriter::with_capacity(1 << 20, file),
            count: 0,
        };
        {
            let mut enc = xz_encoder(&mut counted, codec == Codec::XzX86, self.effort.xz_preset())?;
            for f in group {
                match &f.method {
                    Method::Gzip { .. } => {
                        let data = read_file(self.store, f.content)?;
                        let raw = crate::gz::decompress(&data)
                            .ok_or_else(|| Error::bad("a gzip file no longer decompresses"))?;
                        enc.write_all(&raw).map_err(Error::io("xz"))?;
                    }
                    _ => {
                        for ch in &f.content.chunks {
                            let bytes = self.store.get_chunk(&ch.id)?;
                            enc.write_all(&bytes).map_err(Error::io("xz"))?;
                        }
                    }
                }
            }
            enc.finish().map_err(Error::io("xz"))?;
        }
        counted
            .inner
            .flush()
            .map_err(Error::io("writing a temporary file"))?;
        let items = group
            .iter()
            .map(|f| Item {
                target: Target::File(f.index),
                method: f.method.clone(),
                len: f.len,
            })
            .collect();
        spill.segments.push(Segment {
            kind: Kind::New,
            codec,
            items,
            compressed_len: counted.count,
        });
        Ok(spill)
    }
}

/// A writer that counts what passes through it.
struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
