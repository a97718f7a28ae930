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

fn xz_encode(parts: &[&[u8]], x86: bool, preset: u32) -> Result<Vec<u8>> {
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
    let mut enc = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
    for p in parts {
        enc.write_all(p).map_err(Error::io("xz"))?;
    }
    enc.finish().map_err(Error::io("xz"))
}

fn is_program(data: &[u8]) -> bool {
    data.starts_with(b"\x7fELF")
}

/// Where similar new files meet: programs first, then by extension, then by name.
type SimilarityKey = (bool, Vec<u8>, Vec<u8>, Vec<u8>);

/// A new file: its index among the missing files, its body, how it is made, where it sorts.
struct Fresh {
    index: u32,
    data: Vec<u8>,
    method: Method,
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

/// Builds the pack from `from` to `to` (both in `store`) into `out`.
pub fn build(
    store: &ObjectStore,
    from: CommitId,
    to: CommitId,
    effort: Effort,
    out: &mut impl Write,
) -> Result<Stats> {
    let old = Listing::read(store, from)?;
    let new = Listing::read(store, to)?;
    let p = plan(&old, &new);
    build_plan(store, &old, &p, from, to, effort, out)
}

struct Decided {
    index: u32,
    method: Method,
    body: Vec<u8>,
    /// What the item adds to its segment's prefix.
    prefix: Vec<u8>,
}

/// Builds a pack from a plan computed against `old`.
pub fn build_plan(
    store: &ObjectStore,
    old: &Listing,
    plan: &Plan,
    from: CommitId,
    to: CommitId,
    effort: Effort,
    out: &mut impl Write,
) -> Result<Stats> {
    build_segmented(store, old, plan, (from, to), effort, SEGMENT, out)
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
    build_segmented(store, &old, &p, (from, to), Effort::Quick, segment, out)
}

fn build_segmented(
    store: &ObjectStore,
    old: &Listing,
    plan: &Plan,
    (from, to): (CommitId, CommitId),
    effort: Effort,
    segment: u64,
    out: &mut impl Write,
) -> Result<Stats> {
    let level = effort.zstd_level();
    let mut stats = Stats {
        from: from.to_hex(),
        to: to.to_hex(),
        trees: plan.trees.len() as u64,
        content_bytes: plan.file_bytes(),
        ..Default::default()
    };
    let mut segments: Vec<(Segment, Vec<u8>)> = Vec::new();

    // Trees, against the old trees at their paths.
    if !plan.trees.is_empty() {
        let mut prefix = Vec::new();
        let mut body = Vec::new();
        let mut items = Vec::new();
        for (i, t) in plan.trees.iter().enumerate() {
            let bytes = read_tree(store, &t.id)?;
            let method = match t
                .base
                .as_ref()
                .and_then(|b| old.dirs.get(b).map(|id| (b, id)))
            {
                Some((b, id)) => {
                    prefix.extend_from_slice(&read_tree(store, id)?);
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
        let data = zstd_encode(&prefix, &body, level)?;
        segments.push((
            Segment {
                kind: Kind::Metadata,
                codec: Codec::Zstd,
                items,
                compressed_len: data.len() as u64,
            },
            data,
        ));
    }

    // Changed files: each tried as prefixed zstd and as bsdiff, alone; the smaller wins.
    let with_base: Vec<(u32, &crate::plan::FileItem, &FileContent)> = plan
        .files
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let b = f.base.as_ref()?;
            old.files.get(b).map(|bc| (i as u32, f, bc))
        })
        .collect();
    let decided: Vec<Decided> = with_base
        .par_iter()
        .map(|(i, f, bc)| -> Result<Decided> {
            let base = read_file(store, bc)?;
            let data = read_file(store, &f.content)?;
            let base_path = f.base.clone().expect("has a base");
            let mut best = Decided {
                index: *i,
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
            let limit = effort.bsdiff_limit();
            if bc.size <= limit && f.content.size <= limit && !data.is_empty() {
                let patch = bsdiff_patch(&base, &data)?;
                if zstd_encode(&[], &patch, level)?.len() < best_len {
                    best.method = Method::Bsdiff(base_path);
                    best.body = patch;
                    best.prefix = Vec::new();
                }
            }
            if best.method == Method::Prefixed(f.base.clone().expect("has a base")) {
                best.body = data;
                best.prefix = base;
            }
            Ok(best)
        })
        .collect::<Result<_>>()?;
    // Cut into segments in plan order; compress them in parallel.
    let mut groups: Vec<Vec<&Decided>> = Vec::new();
    let (mut body_len, mut prefix_len) = (u64::MAX, u64::MAX);
    for d in &decided {
        let b = d.body.len() as u64;
        let p = d.prefix.len() as u64;
        if groups.is_empty() || body_len + b > segment || prefix_len + p > segment {
            groups.push(Vec::new());
            (body_len, prefix_len) = (0, 0);
        }
        body_len += b;
        prefix_len += p;
        groups.last_mut().expect("a group").push(d);
    }
    let patch_segments: Vec<(Segment, Vec<u8>)> = groups
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
            let data = zstd_encode(&prefix, &body, level)?;
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
    for d in &decided {
        match d.method {
            Method::Bsdiff(_) => stats.files_bsdiff += 1,
            Method::Gzip { .. } => stats.files_gzip += 1,
            _ => stats.files_prefixed += 1,
        }
    }
    segments.extend(patch_segments);

    // New files: sorted by similarity, programs and the rest in two xz streams.
    let mut fresh: Vec<Fresh> = Vec::new();
    for (i, f) in plan.files.iter().enumerate() {
        if f.base.as_ref().is_some_and(|b| old.files.contains_key(b)) {
            continue;
        }
        let data = read_file(store, &f.content)?;
        let key = similarity_key(&f.path, &data);
        let (data, method) = match crate::gz::open(&data) {
            Some(g) => (
                g.raw,
                Method::Gzip {
                    base: None,
                    level: g.level,
                    header: g.header,
                },
            ),
            None => (data, Method::Plain),
        };
        fresh.push(Fresh {
            index: i as u32,
            data,
            method,
            key,
        });
    }
    stats.files_new = fresh.len() as u64;
    fresh.sort_by(|a, b| a.key.cmp(&b.key));
    let (programs, rest): (Vec<&Fresh>, Vec<&Fresh>) = fresh.iter().partition(|f| !f.key.0);
    let preset = effort.xz_preset();
    let encode = |group: &[&Fresh], codec: Codec| -> Result<Option<(Segment, Vec<u8>)>> {
        if group.is_empty() {
            return Ok(None);
        }
        let parts: Vec<&[u8]> = group.iter().map(|f| f.data.as_slice()).collect();
        let data = xz_encode(&parts, codec == Codec::XzX86, preset)?;
        let items = group
            .iter()
            .map(|f| Item {
                target: Target::File(f.index),
                method: f.method.clone(),
                len: f.data.len() as u64,
            })
            .collect();
        Ok(Some((
            Segment {
                kind: Kind::New,
                codec,
                items,
                compressed_len: data.len() as u64,
            },
            data,
        )))
    };
    let (a, b) = rayon::join(
        || encode(&programs, Codec::XzX86),
        || encode(&rest, Codec::Xz),
    );
    segments.extend(a?.into_iter().chain(b?));

    let header = Header {
        segments: segments.iter().map(|(s, _)| s.clone()).collect(),
    };
    let start = write_start(from.as_bytes(), to.as_bytes(), &header)?;
    stats.metadata_bytes = start.len() as u64;
    out.write_all(&start)
        .map_err(Error::io("writing the pack"))?;
    for (s, data) in &segments {
        let n = data.len() as u64;
        match s.kind {
            Kind::Metadata => stats.metadata_bytes += n,
            Kind::Patches => stats.patch_bytes += n,
            Kind::New => stats.new_bytes += n,
        }
        out.write_all(data).map_err(Error::io("writing the pack"))?;
    }
    stats.total_bytes = stats.metadata_bytes + stats.patch_bytes + stats.new_bytes;
    Ok(stats)
}
