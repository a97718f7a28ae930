//! Durable writes: a file replaced atomically (temporary file, fsync, rename, fsync of the
//! directory), shared by the client's trusted directory and the publisher.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Syncs a directory so that renames and new entries in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("syncing directory", dir))
}

/// Writes `bytes` to `path` atomically: a temporary file in `tmp`, fsync, rename, fsync of
/// the directory. The file gets `mode`.
pub fn write_atomic(tmp: &Path, path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let t = tmp.join(format!("{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&t);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&t)
        .map_err(Error::io("creating", &t))?;
    f.write_all(bytes).map_err(Error::io("writing", &t))?;
    f.sync_all().map_err(Error::io("syncing", &t))?;
    drop(f);
    std::fs::rename(&t, path).map_err(Error::io("renaming into", path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}
