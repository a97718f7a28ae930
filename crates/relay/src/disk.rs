//! The cache on disk: one file per content-addressed item under `DATA/cache/KEY`, written under
//! `DATA/tmp/` and renamed into place whole, so a killed relay leaves only temporary files
//! (removed at start) and a restart keeps every whole item. The [`Lru`] index is rebuilt at
//! start from the files, oldest modification first.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::lru::Lru;

pub struct Disk {
    cache: PathBuf,
    tmp: PathBuf,
    lru: Mutex<Lru>,
    next_tmp: AtomicU64,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> Error + 'a {
    move |e| Error::Internal(format!("{what} {}: {e}", path.display()))
}

impl Disk {
    pub fn open(data: &Path, limit: u64) -> Result<Self> {
        let cache = data.join("cache");
        let tmp = data.join("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        for d in [&cache, &tmp] {
            std::fs::create_dir_all(d).map_err(io("creating", d))?;
        }
        let mut found = Vec::new();
        let mut stack = vec![cache.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).map_err(io("reading", &dir))? {
                let e = e.map_err(io("reading", &dir))?;
                let md = e.metadata().map_err(io("reading", &e.path()))?;
                if md.is_dir() {
                    stack.push(e.path());
                } else if let Ok(rel) = e.path().strip_prefix(&cache) {
                    let key = rel.to_string_lossy().into_owned();
                    found.push((md.modified().ok(), key, md.len()));
                }
            }
        }
        found.sort();
        let mut lru = Lru::new(limit);
        let mut drop = Vec::new();
        for (_, key, size) in found {
            drop.extend(lru.insert(&key, size));
        }
        let disk = Self {
            cache,
            tmp,
            lru: Mutex::new(lru),
            next_tmp: AtomicU64::new(0),
        };
        disk.unlink(drop);
        Ok(disk)
    }

    /// The cached file of `key`, opened (so an eviction meanwhile does not cut a download).
    pub fn get(&self, key: &str) -> Option<(std::fs::File, u64)> {
        if !self.lru.lock().expect("lock").touch(key) {
            return None;
        }
        let f = std::fs::File::open(self.cache.join(key)).ok()?;
        let len = f.metadata().ok()?.len();
        Some((f, len))
    }

    pub fn contains(&self, key: &str) -> bool {
        self.lru.lock().expect("lock").contains(key)
    }

    /// A fresh temporary path for an item being written.
    pub fn temp(&self) -> PathBuf {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("{}-{n}", std::process::id()))
    }

    /// Moves a whole temporary file into the cache as `key` and drops what no longer fits.
    pub fn commit(&self, tmp: &Path, key: &str) -> Result<()> {
        let size = std::fs::metadata(tmp).map_err(io("reading", tmp))?.len();
        let dest = self.cache.join(key);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        std::fs::rename(tmp, &dest).map_err(io("renaming into", &dest))?;
        let drop = self.lru.lock().expect("lock").insert(key, size);
        self.unlink(drop);
        Ok(())
    }

    fn unlink(&self, keys: Vec<String>) {
        for k in keys {
            let _ = std::fs::remove_file(self.cache.join(&k));
        }
    }

    /// Bytes and entries held.
    pub fn usage(&self) -> (u64, usize) {
        let l = self.lru.lock().expect("lock");
        (l.total(), l.len())
    }
}
