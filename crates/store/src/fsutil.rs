//! Small filesystem helpers: durable writes and temporary names.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// A fresh name in `dir` that no other writer of this process or another one uses.
pub fn unique_tmp(dir: &Path, what: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    dir.join(format!("{what}-{}-{n}-{nanos}.tmp", std::process::id()))
}

/// Writes `bytes` to a new file at `path` and syncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(Error::io("creating", path))?;
    f.write_all(bytes).map_err(Error::io("writing", path))?;
    f.sync_all().map_err(Error::io("syncing", path))
}

/// Syncs a directory, so renames inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(Error::io("syncing directory", dir))
}

/// Replaces `path` atomically with `bytes`: temporary file, fsync, rename, fsync of the directory.
pub fn replace_atomic(path: &Path, tmp_dir: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = unique_tmp(tmp_dir, "replace");
    write_synced(&tmp, bytes)?;
    std::fs::rename(&tmp, path).map_err(Error::io("renaming into", path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}
