//! Committing a root filesystem: read a source (a directory or a tar archive), store its content
//! and trees, write the commit, move the channel.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use serde::Serialize;

use crate::chunker::{self, ContentStats};
use crate::error::{Error, Result};
use crate::id::CommitId;
use crate::memtree::{self, Node, WriteStats};
use crate::object::{Commit, FileContent, Meta};
use crate::objects::Put;
use crate::progress::Progress;
use crate::repo::Repo;
use crate::{channel, scan_dir, scan_tar};

/// Files up to this size are read whole; larger ones are streamed through the chunker.
const READ_WHOLE: u64 = 32 << 20;
/// Archive content buffered before a batch is stored in parallel.
const BATCH_BYTES: u64 = 48 << 20;

pub struct CommitOptions<'a> {
    pub channel: &'a str,
    pub message: &'a str,
    /// Commit time; now when None.
    pub time: Option<i64>,
}

/// What a commit stored.
#[derive(Clone, Debug, Serialize)]
pub struct CommitStats {
    pub commit: String,
    pub channel: String,
    pub parent: Option<String>,
    /// Entries of every kind, and of each kind.
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub others: u64,
    pub hardlinks: u64,
    /// Bytes of regular-file content in this version.
    pub bytes: u64,
    /// Content bytes stored for the first time.
    pub new_bytes: u64,
    /// Content bytes that were already stored, by an earlier version or earlier in this one.
    pub shared_bytes: u64,
    /// What the repository grew by on disk (compressed chunks, trees and the commit).
    pub stored_bytes: u64,
    pub new_chunks: u64,
    pub new_trees: u64,
    pub warnings: Vec<String>,
}

/// Content waiting to be chunked and stored.
enum Pending {
    Bytes(Vec<u8>),
    Path(PathBuf, u64),
}

/// The state of one import: the tree so far and the content list its files point into.
pub(crate) struct Importer<'a> {
    repo: &'a Repo,
    progress: &'a dyn Progress,
    pub root: Node,
    contents: Vec<Option<FileContent>>,
    pending: Vec<(usize, Pending)>,
    pending_bytes: u64,
    pub stats: ContentStats,
    /// Hardlink groups by the path that came first.
    pub links: BTreeMap<Vec<u8>, Vec<Vec<u8>>>,
    pub warnings: Vec<String>,
    pub counts: Counts,
}

#[derive(Default, Clone, Copy)]
pub(crate) struct Counts {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub others: u64,
}

impl<'a> Importer<'a> {
    fn new(repo: &'a Repo, progress: &'a dyn Progress) -> Self {
        Self {
            repo,
            progress,
            root: Node::empty_dir(memtree::implied_dir_meta()),
            contents: Vec::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            stats: ContentStats::default(),
            links: BTreeMap::new(),
            warnings: Vec::new(),
            counts: Counts::default(),
        }
    }

    pub fn warn(&mut self, message: String) {
        self.progress.warn(&message);
        self.warnings.push(message);
    }

    pub fn progress_phase(&self, name: &str, total: Option<u64>) {
        self.progress.phase(name, total);
    }

    pub fn set_root_meta(&mut self, meta: Meta) {
        if let Node::Dir { meta: m, .. } = &mut self.root {
            *m = meta;
        }
    }

    /// Queues a file's content held in memory; returns its content number.
    pub fn add_bytes(&mut self, data: Vec<u8>) -> Result<usize> {
        let n = self.contents.len();
        self.contents.push(None);
        self.pending_bytes += data.len() as u64;
        self.pending.push((n, Pending::Bytes(data)));
        if self.pending_bytes >= BATCH_BYTES {
            self.store_pending()?;
        }
        Ok(n)
    }

    /// Queues a file on disk; it is read when the batch is stored.
    pub fn add_path(&mut self, path: PathBuf, size: u64) -> usize {
        let n = self.contents.len();
        self.contents.push(None);
        self.pending.push((n, Pending::Path(path, size)));
        n
    }

    /// Stores a large stream right away, chunk by chunk.
    pub fn add_stream(&mut self, reader: impl Read, what: &Path) -> Result<usize> {
        let cfg = self.repo.config.chunker;
        let (content, stats) = chunker::store_stream(&self.repo.objects, &cfg, reader, what)?;
        self.progress.advance(content.size);
        self.stats.add(&stats);
        self.contents.push(Some(content));
        Ok(self.contents.len() - 1)
    }

    /// Chunks, compresses and stores every queued file, on all cores.
    pub fn store_pending(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let store = &self.repo.objects;
        let cfg = self.repo.config.chunker;
        let progress = self.progress;
        let total = Mutex::new(ContentStats::default());
        let done: Vec<(usize, FileContent)> = pending
            .into_par_iter()
            .map(|(n, p)| {
                let (content, stats) = match p {
                    Pending::Bytes(data) => chunker::store_bytes(store, &cfg, &data)?,
                    Pending::Path(path, size) if size <= READ_WHOLE => {
                        let data = std::fs::read(&path).map_err(Error::io("reading", &path))?;
                        chunker::store_bytes(store, &cfg, &data)?
                    }
                    Pending::Path(path, _) => {
                        let f = std::fs::File::open(&path).map_err(Error::io("opening", &path))?;
                        chunker::store_stream(store, &cfg, std::io::BufReader::new(f), &path)?
                    }
                };
                progress.advance(content.size);
                total.lock().expect("lock").add(&stats);
                Ok((n, content))
            })
            .collect::<Result<_>>()?;
        self.stats.add(&total.into_inner().expect("lock"));
        for (n, c) in done {
            self.contents[n] = Some(c);
        }
        Ok(())
    }
}

/// What kind of source a path is.
enum SourceKind {
    Dir,
    Tar(Compression),
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

fn source_kind(path: &Path) -> Result<SourceKind> {
    let md = std::fs::metadata(path).map_err(Error::io("reading source", path))?;
    if md.is_dir() {
        return Ok(SourceKind::Dir);
    }
    if !md.is_file() {
        return Err(Error::BadSource {
            path: path.to_owned(),
            reason: "neither a directory nor an archive file".into(),
        });
    }
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(Error::io("opening", path))?;
    let n = f.read(&mut magic).map_err(Error::io("reading", path))?;
    Ok(SourceKind::Tar(match &magic[..n] {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
        _ => Compression::None,
    }))
}

/// Stores `source` as a new commit on a channel; the channel's head becomes its parent.
pub fn commit(
    repo: &Repo,
    source: &Path,
    opts: &CommitOptions,
    progress: &dyn Progress,
) -> Result<CommitStats> {
    channel::check_name(opts.channel)?;
    store(
        repo,
        source,
        Some(opts.channel),
        opts.message,
        opts.time,
        progress,
    )
}

/// Stores `source` as a commit on no channel and without a parent (a step of a composition,
/// which the caller keeps reachable); its stats name no channel.
pub fn store_detached(
    repo: &Repo,
    source: &Path,
    message: &str,
    progress: &dyn Progress,
) -> Result<CommitStats> {
    store(repo, source, None, message, None, progress)
}

fn store(
    repo: &Repo,
    source: &Path,
    on: Option<&str>,
    message: &str,
    time: Option<i64>,
    progress: &dyn Progress,
) -> Result<CommitStats> {
    let parent = match on {
        Some(c) => channel::head(repo, c)?,
        None => None,
    };
    let mut imp = Importer::new(repo, progress);
    match source_kind(source)? {
        SourceKind::Dir => scan_dir::scan(&mut imp, source)?,
        SourceKind::Tar(c) => scan_tar::scan(&mut imp, source, c)?,
    }
    imp.store_pending()?;
    let contents: Vec<FileContent> = imp
        .contents
        .into_iter()
        .map(|c| c.expect("every queued content was stored"))
        .collect();
    let hardlinks: Vec<Vec<Vec<u8>>> = imp
        .links
        .into_iter()
        .map(|(first, rest)| {
            let mut g = vec![first];
            g.extend(rest);
            g.sort();
            g
        })
        .filter(|g| g.len() > 1)
        .collect();
    let root_meta = imp.root.meta().clone();
    let mut ws = WriteStats::default();
    let tree = memtree::write(&repo.objects, imp.root, &contents, &mut ws)?;
    let commit = Commit {
        tree,
        root_meta,
        parent,
        time: time.unwrap_or_else(crate::now),
        message: message.to_owned(),
        hardlinks,
        entries: ws.entries,
        bytes: ws.bytes,
    };
    let (id, put) = repo.objects.put_commit(&commit)?;
    repo.objects.flush()?;
    if let Some(c) = on {
        channel::move_to(repo, c, id, channel::MoveKind::Commit, message)?;
    }
    let commit_stored = match put {
        Put::New { stored } => stored,
        Put::Existing => 0,
    };
    let c = imp.counts;
    Ok(CommitStats {
        commit: id.to_hex(),
        channel: on.unwrap_or_default().to_owned(),
        parent: parent.map(|p: CommitId| p.to_hex()),
        entries: ws.entries,
        files: c.files,
        dirs: c.dirs,
        symlinks: c.symlinks,
        others: c.others,
        hardlinks: commit.hardlinks.iter().map(|g| g.len() as u64 - 1).sum(),
        bytes: ws.bytes,
        new_bytes: imp.stats.new_bytes,
        shared_bytes: imp.stats.shared_bytes,
        stored_bytes: imp.stats.stored_bytes + ws.stored_bytes + commit_stored,
        new_chunks: imp.stats.new_chunks,
        new_trees: ws.new_trees,
        warnings: imp.warnings,
    })
}
