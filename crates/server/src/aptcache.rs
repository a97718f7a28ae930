//! The apt caching proxy: `GET /apt/{upstream}/{path}` serves `{url of upstream}/{path}` from
//! DATA/apt-cache/, fetching it (reqwest) on a miss, so each package crosses the upstream link
//! once for the whole fleet. Packages and by-hash files never change under their name and are
//! kept until evicted; indexes (Release, InRelease, Packages, ...) are fresh for `fresh_secs`
//! and fetched again after that (a stale copy is served when the upstream cannot be reached).
//! The cache is bounded: the least recently used files are removed first.
//!
//! apt checks what it downloads against the signed Release of the repository, so the cache
//! needs no trust of its own: a damaged file is refused by apt, not installed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::AsyncWriteExt;

/// The files of the cache by recency of use, with their sizes.
#[derive(Default)]
pub struct Lru {
    entries: HashMap<PathBuf, (u64, u64)>,
    total: u64,
    tick: u64,
}

impl Lru {
    /// Marks a file used now.
    pub fn touch(&mut self, p: &Path) {
        self.tick += 1;
        if let Some(e) = self.entries.get_mut(p) {
            e.1 = self.tick;
        }
    }

    /// Adds (or replaces) a file; returns the files to remove so that at most `max` bytes stay,
    /// least recently used first, never the one just added.
    pub fn insert(&mut self, p: PathBuf, size: u64, max: u64) -> Vec<PathBuf> {
        self.tick += 1;
        if let Some((old, _)) = self.entries.insert(p.clone(), (size, self.tick)) {
            self.total -= old;
        }
        self.total += size;
        let mut out = Vec::new();
        while self.total > max {
            let Some(victim) = self
                .entries
                .iter()
                .filter(|(k, _)| **k != p)
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            let (s, _) = self.entries.remove(&victim).expect("present");
            self.total -= s;
            out.push(victim);
        }
        out
    }

    pub fn remove(&mut self, p: &Path) {
        if let Some((s, _)) = self.entries.remove(p) {
            self.total -= s;
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }
}

/// What a request gets.
pub enum Answer {
    File(std::fs::File, u64),
    NotFound(String),
    Failed(String),
}

pub struct AptCache {
    dir: PathBuf,
    upstreams: BTreeMap<String, String>,
    max_bytes: u64,
    fresh: Duration,
    client: reqwest::Client,
    lru: Mutex<Lru>,
    inflight: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
    /// Requests sent upstream, and answers from the cache.
    pub upstream_requests: AtomicU64,
    pub hits: AtomicU64,
}

/// Files that never change under their name.
fn immutable(path: &str) -> bool {
    path.contains("/by-hash/")
        || [
            ".deb", ".udeb", ".ddeb", ".dsc", ".tar.gz", ".tar.xz", ".tar.bz2", ".diff.gz",
        ]
        .iter()
        .any(|s| path.ends_with(s))
}

/// A path of an apt repository: plain segments only. Public for the fuzz targets.
pub fn check_path(path: &str) -> Result<(), String> {
    let segs: Vec<&str> = path.split('/').collect();
    if path.is_empty() || segs.len() > 16 || path.len() > 1024 {
        return Err(format!("bad repository path {path:?}"));
    }
    for s in segs {
        if s.is_empty()
            || s == "."
            || s == ".."
            || s.starts_with('.')
            || !s.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'.' | b'_' | b'-' | b'+' | b'~' | b':' | b'%' | b'=' | b'@'
                    )
            })
        {
            return Err(format!("bad repository path {path:?}"));
        }
    }
    Ok(())
}

impl AptCache {
    /// The cache under `dir`: leftovers of interrupted downloads removed, the files there counted
    /// (oldest first by their modification time), trimmed to `max_bytes`.
    pub fn open(
        dir: PathBuf,
        upstreams: BTreeMap<String, String>,
        max_bytes: u64,
        fresh_secs: u64,
    ) -> crate::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| crate::Error::Config(format!("the apt proxy's HTTP client: {e}")))?;
        let mut files = Vec::new();
        scan(&dir, &mut files);
        files.sort_by_key(|(_, _, t)| *t);
        let mut lru = Lru::default();
        for (p, size, _) in files {
            for gone in lru.insert(p, size, max_bytes) {
                let _ = std::fs::remove_file(gone);
            }
        }
        Ok(Self {
            dir,
            upstreams,
            max_bytes,
            fresh: Duration::from_secs(fresh_secs),
            client,
            lru: Mutex::new(lru),
            inflight: Mutex::new(HashMap::new()),
            upstream_requests: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        })
    }

    pub fn cached_bytes(&self) -> u64 {
        self.lru.lock().expect("lock").total()
    }

    fn fresh_copy(&self, local: &Path, path: &str) -> Option<(std::fs::File, u64)> {
        let f = std::fs::File::open(local).ok()?;
        let md = f.metadata().ok()?;
        let age = md
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .unwrap_or(Duration::MAX);
        (immutable(path) || age < self.fresh).then_some((f, md.len()))
    }

    /// `path` of the upstream `name`, from the cache or fetched now.
    pub async fn get(&self, name: &str, path: &str) -> Answer {
        let Some(base) = self.upstreams.get(name) else {
            return Answer::NotFound(format!(
                "no apt upstream is named {name:?} (the server's apt_upstreams: {})",
                self.upstreams
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        if let Err(e) = check_path(path) {
            return Answer::NotFound(e);
        }
        let local = self.dir.join(name).join(path);
        if let Some((f, n)) = self.fresh_copy(&local, path) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            self.lru.lock().expect("lock").touch(&local);
            return Answer::File(f, n);
        }
        // One download per file at a time; the others wait for it and take the copy.
        let gate = self
            .inflight
            .lock()
            .expect("lock")
            .entry(local.clone())
            .or_default()
            .clone();
        let _held = gate.lock().await;
        if let Some((f, n)) = self.fresh_copy(&local, path) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            self.lru.lock().expect("lock").touch(&local);
            return Answer::File(f, n);
        }
        let url = format!("{}/{path}", base.trim_end_matches('/'));
        let answer = match self.fetch(&url, &local).await {
            Ok(Some(size)) => self.stored(&local, size),
            Ok(None) => Answer::NotFound(format!("{url}: not found upstream")),
            Err(e) => match std::fs::File::open(&local) {
                // An index fetched before is better than none while the upstream is away.
                Ok(f) => {
                    tracing::warn!(%url, error = %e, "apt upstream failed; serving the cached copy");
                    let n = f.metadata().map(|m| m.len()).unwrap_or(0);
                    Answer::File(f, n)
                }
                Err(_) => Answer::Failed(format!("{url}: {e}")),
            },
        };
        self.inflight.lock().expect("lock").remove(&local);
        answer
    }

    fn stored(&self, local: &Path, size: u64) -> Answer {
        let f = match std::fs::File::open(local) {
            Ok(f) => f,
            Err(e) => return Answer::Failed(format!("{}: {e}", local.display())),
        };
        if size > self.max_bytes {
            // Larger than the whole cache: served from the open file, not kept.
            let _ = std::fs::remove_file(local);
            return Answer::File(f, size);
        }
        let gone = self
            .lru
            .lock()
            .expect("lock")
            .insert(local.to_owned(), size, self.max_bytes);
        for g in gone {
            let _ = std::fs::remove_file(&g);
        }
        Answer::File(f, size)
    }

    /// Downloads `url` into `local` (a temporary name, renamed when whole). `None`: 404.
    async fn fetch(&self, url: &str, local: &Path) -> Result<Option<u64>, String> {
        self.upstream_requests.fetch_add(1, Ordering::Relaxed);
        let mut resp = self
            .client
            .get(url)
            .timeout(Duration::from_secs(1800))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(format!("the upstream answered {status}"));
        }
        let dir = local.parent().expect("a parent");
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let tmp = dir.join(format!(
            ".{}.part",
            local.file_name().expect("a name").to_string_lossy()
        ));
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut size = 0u64;
        // Read before the body: the hint shrinks as the body is consumed.
        let expected = resp.content_length();
        let res: Result<(), String> = async {
            while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
                size += chunk.len() as u64;
                f.write_all(&chunk)
                    .await
                    .map_err(|e| format!("{}: {e}", tmp.display()))?;
            }
            if let Some(len) = expected.filter(|l| *l != size) {
                return Err(format!("the upstream sent {size} of {len} bytes"));
            }
            f.flush().await.map_err(|e| e.to_string())?;
            Ok(())
        }
        .await;
        drop(f);
        if let Err(e) = res {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        tokio::fs::rename(&tmp, local)
            .await
            .map_err(|e| format!("{}: {e}", local.display()))?;
        Ok(Some(size))
    }
}

/// Every cached file below `dir` with its size and modification time; leftovers of interrupted
/// downloads (`.NAME.part`) are removed.
fn scan(dir: &Path, out: &mut Vec<(PathBuf, u64, SystemTime)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(md) = e.metadata() else { continue };
        if md.is_dir() {
            scan(&p, out);
        } else if e.file_name().to_string_lossy().starts_with('.') {
            let _ = std::fs::remove_file(&p);
        } else {
            out.push((p, md.len(), md.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_files_go_first_and_the_bound_holds() {
        let mut l = Lru::default();
        let p = |s: &str| PathBuf::from(s);
        assert!(l.insert(p("a"), 40, 100).is_empty());
        assert!(l.insert(p("b"), 40, 100).is_empty());
        l.touch(&p("a"));
        assert_eq!(l.insert(p("c"), 40, 100), vec![p("b")]);
        assert_eq!(l.total(), 80);
        // larger than everything else together: all others go, never the new one
        let gone = l.insert(p("d"), 150, 100);
        assert_eq!(gone.len(), 2);
        assert_eq!(l.total(), 150);
        l.remove(&p("d"));
        assert_eq!(l.total(), 0);
    }

    #[test]
    fn paths_are_plain_and_packages_are_immutable() {
        check_path("dists/bookworm/InRelease").unwrap();
        check_path("pool/main/g/glibc/libc6_2.36-9+deb12u4_amd64.deb").unwrap();
        check_path("pool/main/e/epoch/x_1%3a2.0_all.deb").unwrap();
        for bad in [
            "",
            "../etc/passwd",
            "a//b",
            "a/./b",
            "a/.hidden",
            "a b",
            "a?b",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        assert!(immutable("pool/main/h/hello/hello_2.10_amd64.deb"));
        assert!(immutable(
            "dists/bookworm/main/binary-amd64/by-hash/SHA256/ab12"
        ));
        assert!(!immutable("dists/bookworm/InRelease"));
        assert!(!immutable("dists/bookworm/main/binary-amd64/Packages.xz"));
    }
}
