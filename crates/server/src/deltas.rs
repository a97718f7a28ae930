//! Delta packs on the server: static files under DATA/deltas/, `FROM-TO.pack`, written whole
//! (temporary name, fsync, rename) so relays and HTTP caches can carry them as they are.
//!
//! When a channel's release changes, packs from its last K releases to the new one are built in
//! the background at full effort. A machine starting from anywhere else gets a pack built on its
//! first request (quick effort) and kept for the next machine. One pair is built once at a time:
//! whoever asks while it is being built waits for it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use semithin_delta::build::{Effort, build};
use semithin_store::CommitId;
use semithin_store::objects::ObjectStore;
use semithin_store::pack::ObjKind;

use crate::error::{Error, Result};

/// One lock per (from, to) pack being built.
type Building = Mutex<HashMap<(CommitId, CommitId), Arc<tokio::sync::Mutex<()>>>>;

pub struct Deltas {
    dir: PathBuf,
    /// How many earlier releases of a channel get a pack to its new release.
    pub sources: usize,
    building: Building,
    /// Builds running at once, all pairs together: packs are CPU-heavy, and check-ins must not
    /// starve behind them.
    permits: tokio::sync::Semaphore,
}

impl Deltas {
    pub fn new(dir: PathBuf, sources: usize) -> Self {
        Self {
            dir,
            sources,
            building: Mutex::new(HashMap::new()),
            permits: tokio::sync::Semaphore::new(1),
        }
    }

    pub fn path(&self, from: &CommitId, to: &CommitId) -> PathBuf {
        self.dir
            .join(format!("{}-{}.pack", from.to_hex(), to.to_hex()))
    }

    /// The pack from `from` to `to`, built now if it is not there yet; `None` when the server
    /// does not hold both releases.
    pub async fn ensure(
        &self,
        store: Arc<ObjectStore>,
        from: CommitId,
        to: CommitId,
        effort: Effort,
    ) -> Result<Option<PathBuf>> {
        if from == to
            || !store.contains(ObjKind::Commit, from.as_bytes())
            || !store.contains(ObjKind::Commit, to.as_bytes())
        {
            return Ok(None);
        }
        let path = self.path(&from, &to);
        if path.exists() {
            return Ok(Some(path));
        }
        let lock = self
            .building
            .lock()
            .expect("lock")
            .entry((from, to))
            .or_default()
            .clone();
        let _held = lock.lock().await;
        if path.exists() {
            return Ok(Some(path));
        }
        let _permit = self.permits.acquire().await.expect("never closed");
        let dir = self.dir.clone();
        let p = path.clone();
        let stats =
            tokio::task::spawn_blocking(move || write_pack(&store, &dir, &p, from, to, effort))
                .await
                .map_err(|e| Error::Config(format!("building a delta: {e}")))??;
        tracing::info!(
            from = %from.short(), to = %to.short(), bytes = stats.0, secs = stats.1,
            ?effort, "delta pack built"
        );
        self.building.lock().expect("lock").remove(&(from, to));
        Ok(Some(path))
    }
}

fn write_pack(
    store: &ObjectStore,
    dir: &Path,
    path: &Path,
    from: CommitId,
    to: CommitId,
    effort: Effort,
) -> Result<(u64, f64)> {
    use std::io::Write;
    let start = Instant::now();
    std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{}-{}.{seq}.tmp", from.short(), to.short()));
    let f = std::fs::File::create(&tmp).map_err(Error::io("creating", &tmp))?;
    let mut w = std::io::BufWriter::new(f);
    let stats = build(store, from, to, effort, &mut w).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::Config(format!(
            "building the delta {} -> {}: {e}",
            from.short(),
            to.short()
        ))
    })?;
    w.flush().map_err(Error::io("writing", &tmp))?;
    let f = w
        .into_inner()
        .map_err(|e| Error::io("writing", &tmp)(e.into_error()))?;
    f.sync_all().map_err(Error::io("syncing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io("renaming into", path))?;
    semithin_store::fsutil::sync_dir(dir)?;
    Ok((stats.total_bytes, start.elapsed().as_secs_f64()))
}

/// Leftover temporary files of builds that did not finish.
pub fn clear_leftovers(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with('.') && n.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
