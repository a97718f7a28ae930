//! The apt caching proxy: `GET /apt/{upstream}/{path}` serves `{url of upstream}/{path}` from
//! DATA/apt-cache/, fetching it (reqwest) on a miss, so each package crosses the upstream link
//! once for the whole fleet. Packages and by-hash files never change under their name and are
//! kept until evicted; indexes (Release, InRelease, Packages, ...) are fresh for `fresh_secs`
//! and fetched again after that (a stale copy is served when the upstream cannot be reached).
//! The cache is bounded: the least recently used files are removed first.
//!
//! A miss starts a download task of its own, one per file: it runs to its end whether or not
//! the client that started it is still there (a large package on a slow link is fetched once
//! and kept), and every client of the file meanwhile streams it from the growing `.part` file as
//! it comes. Paths are checked before anything is asked upstream ([`check_path`]): what is
//! forwarded cannot leave the upstream's base, however the upstream decodes it.
//!
//! apt checks what it downloads against the signed Release of the repository, so the cache
//! needs no trust of its own: a damaged file is refused by apt, not installed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

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
    /// A whole cached file and its size.
    File(std::fs::File, u64),
    /// A file as it is downloaded (its size when the upstream said it): pieces as they come,
    /// an error if the download breaks off.
    Stream(mpsc::Receiver<std::io::Result<Bytes>>, Option<u64>),
    /// A path that is not a plain path of a repository.
    Bad(String),
    NotFound(String),
    Failed(String),
}

/// Where a download stands; followed through a `watch` channel by every client of the file.
#[derive(Clone)]
enum Progress {
    /// Asking the upstream.
    Asking,
    /// The upstream answered; `have` bytes of it are in `file` (the `.part` file).
    Receiving {
        file: Arc<std::fs::File>,
        len: Option<u64>,
        have: u64,
    },
    /// Whole, `size` bytes, stored in the cache (or only in `file`, when larger than the cache).
    Done {
        file: Arc<std::fs::File>,
        size: u64,
    },
    NotFound,
    Failed(String),
}

pub struct AptCache {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    upstreams: BTreeMap<String, String>,
    max_bytes: u64,
    fresh: Duration,
    client: reqwest::Client,
    lru: Mutex<Lru>,
    /// Downloads running, by the file they make: one per file, however many clients want it.
    inflight: Mutex<HashMap<PathBuf, watch::Receiver<Progress>>>,
    /// Requests sent upstream, and answers from the cache.
    upstream_requests: AtomicU64,
    hits: AtomicU64,
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

/// A path of an apt repository, as the router decoded it (once): plain segments of letters,
/// digits and `. _ - + ~ : = @`, none empty, `.`, `..` or hidden. A `%` left after that one
/// decoding is an encoded encoding (`%252F`), which an upstream that decodes again would turn
/// into `/` or `..`: refused, as are backslashes and NUL. What passes cannot leave the
/// upstream's base, however the upstream decodes it. Public for the fuzz targets.
pub fn check_path(path: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("bad repository path {path:?}: {why}"));
    if path.is_empty() || path.len() > 1024 {
        return bad("it must be 1 to 1024 bytes");
    }
    if path.contains('%') {
        return bad("'%' after decoding (an encoded encoding) is refused");
    }
    if path.contains(['\\', '\0']) {
        return bad("backslashes and NUL are refused");
    }
    let segs: Vec<&str> = path.split('/').collect();
    if segs.len() > 16 {
        return bad("at most 16 segments");
    }
    for s in segs {
        if s.is_empty() || s == "." || s == ".." {
            return bad("empty, '.' and '..' segments are refused");
        }
        if s.starts_with('.') {
            return bad("hidden names are refused");
        }
        let plain = s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'.' | b'_' | b'-' | b'+' | b'~' | b':' | b'=' | b'@')
        });
        if !plain {
            return bad("only letters, digits and . _ - + ~ : = @ are accepted");
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
        // No deadline on a whole download (a large package on a slow link takes what it
        // takes); one that stalls for a minute is broken off.
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
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
            inner: Arc::new(Inner {
                dir,
                upstreams,
                max_bytes,
                fresh: Duration::from_secs(fresh_secs),
                client,
                lru: Mutex::new(lru),
                inflight: Mutex::new(HashMap::new()),
                upstream_requests: AtomicU64::new(0),
                hits: AtomicU64::new(0),
            }),
        })
    }

    pub fn cached_bytes(&self) -> u64 {
        self.inner.lru.lock().expect("lock").total()
    }

    /// Requests sent upstream so far.
    pub fn upstream_requests(&self) -> u64 {
        self.inner.upstream_requests.load(Ordering::Relaxed)
    }

    /// `path` of the upstream `name`: from the cache, or from a download that runs on its own
    /// (it outlives the client that started it; every client of the file follows it).
    pub async fn get(&self, name: &str, path: &str) -> Answer {
        let inner = &self.inner;
        let Some(base) = inner.upstreams.get(name) else {
            return Answer::NotFound(format!(
                "no apt upstream is named {name:?} (the server's apt_upstreams: {})",
                inner
                    .upstreams
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        if let Err(e) = check_path(path) {
            return Answer::Bad(e);
        }
        let local = inner.dir.join(name).join(path);
        if let Some(a) = inner.cached(&local, path) {
            return a;
        }
        let mut rx = {
            let mut inflight = inner.inflight.lock().expect("lock");
            match inflight.get(&local) {
                Some(rx) => rx.clone(),
                None => {
                    // A download may have finished since the look above.
                    if let Some(a) = inner.cached(&local, path) {
                        return a;
                    }
                    let (tx, rx) = watch::channel(Progress::Asking);
                    inflight.insert(local.clone(), rx.clone());
                    let url = format!("{}/{path}", base.trim_end_matches('/'));
                    let what = format!("{name}/{path}");
                    tokio::spawn(download(inner.clone(), url, what, local.clone(), tx));
                    rx
                }
            }
        };
        let state = match rx.wait_for(|p| !matches!(p, Progress::Asking)).await {
            Ok(p) => p.clone(),
            Err(_) => Progress::Failed("the download stopped".into()),
        };
        match state {
            Progress::Asking => unreachable!("waited past it"),
            Progress::Receiving { file, len, .. } => Answer::Stream(follow(file, rx), len),
            Progress::Done { file, size } => Answer::Stream(follow(file, rx), Some(size)),
            Progress::NotFound => Answer::NotFound(format!("{name}/{path}: not found upstream")),
            Progress::Failed(e) => match std::fs::File::open(&local) {
                // An index fetched before is better than none while the upstream is away.
                Ok(f) => {
                    tracing::warn!(upstream = name, path, error = %e, "apt upstream failed; serving the cached copy");
                    let n = f.metadata().map(|m| m.len()).unwrap_or(0);
                    Answer::File(f, n)
                }
                Err(_) => Answer::Failed(format!("{name}/{path}: {e}")),
            },
        }
    }
}

/// The bytes of a download as they come, read from its file at their offsets (clients do not
/// share a file position); ends when it is whole, breaks off when it fails.
fn follow(
    file: Arc<std::fs::File>,
    mut rx: watch::Receiver<Progress>,
) -> mpsc::Receiver<std::io::Result<Bytes>> {
    use std::os::unix::fs::FileExt;
    let (tx, out) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut at = 0u64;
        loop {
            let now: Result<(u64, bool), String> = match &*rx.borrow_and_update() {
                Progress::Receiving { have, .. } => Ok((*have, false)),
                Progress::Done { size, .. } => Ok((*size, true)),
                Progress::Failed(e) => Err(e.clone()),
                Progress::Asking | Progress::NotFound => Err("the download stopped".into()),
            };
            let (have, whole) = match now {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                    return;
                }
            };
            while at < have {
                let n = (have - at).min(256 << 10) as usize;
                let f = file.clone();
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; n];
                    f.read_exact_at(&mut buf, at).map(|_| buf)
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
                match read {
                    Ok(buf) => {
                        at += n as u64;
                        if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                            return; // the client went away; the download goes on
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            if whole {
                return;
            }
            if rx.changed().await.is_err() {
                let _ = tx
                    .send(Err(std::io::Error::other("the download stopped")))
                    .await;
                return;
            }
        }
    });
    out
}

/// Runs one download to its end, whoever still waits for it, then leaves the in-flight table.
async fn download(
    inner: Arc<Inner>,
    url: String,
    what: String,
    local: PathBuf,
    tx: watch::Sender<Progress>,
) {
    let end = match inner.fetch(&url, &local, &tx).await {
        Ok(Some((file, size))) => {
            inner.stored(&local, size);
            Progress::Done { file, size }
        }
        Ok(None) => Progress::NotFound,
        Err(e) => {
            tracing::warn!(path = %what, error = %e, "apt download failed");
            Progress::Failed(e)
        }
    };
    tx.send_replace(end);
    inner.inflight.lock().expect("lock").remove(&local);
}

impl Inner {
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

    /// A fresh cached copy, counted as a hit.
    fn cached(&self, local: &Path, path: &str) -> Option<Answer> {
        let (f, n) = self.fresh_copy(local, path)?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.lru.lock().expect("lock").touch(local);
        Some(Answer::File(f, n))
    }

    /// Counts a whole file in the cache, evicting others; one larger than the whole cache is
    /// removed (its clients read it from the open file).
    fn stored(&self, local: &Path, size: u64) {
        if size > self.max_bytes {
            let _ = std::fs::remove_file(local);
            return;
        }
        let gone = self
            .lru
            .lock()
            .expect("lock")
            .insert(local.to_owned(), size, self.max_bytes);
        for g in gone {
            let _ = std::fs::remove_file(&g);
        }
    }

    /// Downloads `url` into `local` through a temporary `.NAME.part`, renamed when whole,
    /// telling `progress` how far it is. `None`: the upstream has no such file. Errors name no
    /// local path and no upstream URL (they reach clients).
    async fn fetch(
        &self,
        url: &str,
        local: &Path,
        progress: &watch::Sender<Progress>,
    ) -> Result<Option<(Arc<std::fs::File>, u64)>, String> {
        use std::os::unix::fs::FileExt;
        self.upstream_requests.fetch_add(1, Ordering::Relaxed);
        let mut resp = self.client.get(url).send().await.map_err(|e| {
            tracing::warn!(%url, error = %e, "apt upstream unreachable");
            "the upstream could not be reached".to_owned()
        })?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(format!("the upstream answered {status}"));
        }
        let local_err = |what: &str, p: &Path, e: std::io::Error| {
            tracing::error!(path = %p.display(), error = %e, "{what} in the apt cache");
            format!("the server could not {what} (its log has the reason)")
        };
        let dir = local.parent().expect("a parent");
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| local_err("make a directory", dir, e))?;
        let tmp = dir.join(format!(
            ".{}.part",
            local.file_name().expect("a name").to_string_lossy()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map(Arc::new)
            .map_err(|e| local_err("create a file", &tmp, e))?;
        // Read before the body: the hint shrinks as the body is consumed.
        let expected = resp.content_length();
        progress.send_replace(Progress::Receiving {
            file: file.clone(),
            len: expected,
            have: 0,
        });
        let mut size = 0u64;
        let res: Result<(), String> = async {
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| format!("the upstream broke off: {e}"))?
            {
                let f = file.clone();
                let at = size;
                tokio::task::spawn_blocking(move || {
                    f.write_all_at(&chunk, at).map(|_| chunk.len())
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| local_err("write", &tmp, e)))
                .map(|n| size += n as u64)?;
                progress.send_modify(|p| {
                    if let Progress::Receiving { have, .. } = p {
                        *have = size;
                    }
                });
            }
            if let Some(len) = expected.filter(|l| *l != size) {
                return Err(format!("the upstream sent {size} of {len} bytes"));
            }
            Ok(())
        }
        .await;
        if let Err(e) = res {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        tokio::fs::rename(&tmp, local)
            .await
            .map_err(|e| local_err("store a file", local, e))?;
        Ok(Some((file, size)))
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
        // apt asks for `x_1%3a2.0_all.deb`; the router decodes it once
        check_path("pool/main/e/epoch/x_1:2.0_all.deb").unwrap();
        for bad in [
            "",
            "../etc/passwd",
            "a//b",
            "a/./b",
            "a/.hidden",
            "a b",
            "a?b",
            "dists/..%2F..%2Fsecret",
            "pool/x_1%3a2.0_all.deb",
            "%2e%2e/secret",
            "a\\..\\b",
            "a\0b",
            "/abs",
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

    /// An upstream on loopback: `files` under `/base/`, each sent in `piece`-byte pieces with
    /// `pause` between them; every request line's path is noted.
    struct Upstream {
        url: String,
        requests: Arc<Mutex<Vec<String>>>,
    }

    impl Upstream {
        async fn start(files: Vec<(&str, Vec<u8>)>, piece: usize, pause: Duration) -> Upstream {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let files: Arc<HashMap<String, Vec<u8>>> = Arc::new(
                files
                    .into_iter()
                    .map(|(p, b)| (format!("/base/{p}"), b))
                    .collect(),
            );
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/base", l.local_addr().unwrap());
            let requests = Arc::new(Mutex::new(Vec::new()));
            let seen = requests.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut c, _)) = l.accept().await else {
                        return;
                    };
                    let files = files.clone();
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut b = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match c.read(&mut b).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&b[..n]),
                            }
                        }
                        let head = String::from_utf8_lossy(&head).into_owned();
                        let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                        seen.lock().unwrap().push(path.clone());
                        let Some(body) = files.get(&path) else {
                            let _ = c
                                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                                .await;
                            return;
                        };
                        let h = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        if c.write_all(h.as_bytes()).await.is_err() {
                            return;
                        }
                        for p in body.chunks(piece) {
                            if c.write_all(p).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(pause).await;
                        }
                    });
                }
            });
            Upstream { url, requests }
        }

        fn asked(&self) -> Vec<String> {
            self.requests.lock().unwrap().clone()
        }
    }

    /// A request sent as it is (clients normalise `..`): the status.
    async fn raw_get(addr: std::net::SocketAddr, path: &str) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        c.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut got))
            .await
            .expect("answered within 30 s")
            .unwrap();
        let text = String::from_utf8_lossy(&got);
        text.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    async fn server(upstream: &Upstream) -> crate::testkit::TestServer {
        let url = upstream.url.clone();
        crate::testkit::TestServer::start(move |c| {
            c.apt_upstreams.insert("deb".into(), url);
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn paths_that_could_leave_the_upstream_base_are_refused_before_reaching_it() {
        let up = Upstream::start(
            vec![("pool/x_1:2.0_all.deb", b"epoch".to_vec())],
            1 << 20,
            Duration::ZERO,
        )
        .await;
        let s = server(&up).await;
        for path in [
            "dists/..%252F..%252Fsecret",
            "dists/%252e%252e/secret",
            "..%2Fsecret",
            "%2e%2e/secret",
            "pool/%2E%2E/%2e%2e/secret",
            "pool/../../secret",
            "pool/a%5C..%5Csecret",
            "pool/secret%00.deb",
            "pool/%2Fsecret",
        ] {
            let st = raw_get(s.addr, &format!("/apt/deb/{path}")).await;
            assert_eq!(st, 400, "{path}");
        }
        assert_eq!(up.asked(), Vec::<String>::new(), "the upstream was asked");
        // an epoch, as apt asks for it
        let st = raw_get(s.addr, "/apt/deb/pool/x_1%3a2.0_all.deb").await;
        assert_eq!(st, 200);
        assert_eq!(up.asked(), vec!["/base/pool/x_1:2.0_all.deb".to_owned()]);
        s.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_download_outlives_its_client_is_shared_and_is_cached() {
        // 2 MiB in 64 KiB pieces, 60 ms apart: about 2 s upstream
        let big: Vec<u8> = (0..2u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
        let up = Upstream::start(
            vec![("pool/big_1.0_all.deb", big.clone())],
            64 << 10,
            Duration::from_millis(60),
        )
        .await;
        let s = server(&up).await;
        let url = s.at("/apt/deb/pool/big_1.0_all.deb");
        // The first client gives up at once.
        let impatient = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let first = impatient.get(&url).send().await;
        let first = match first {
            Ok(r) => r.bytes().await.map(|b| b.len()),
            Err(e) => Err(e),
        };
        assert!(
            first.is_err(),
            "the first client should have timed out: {first:?}"
        );
        // Two more while it downloads: both stream it from the one download.
        let started = std::time::Instant::now();
        let get = |c: reqwest::Client, u: String| async move {
            let r = c.get(u).send().await.unwrap();
            let status = r.status();
            let at = started.elapsed();
            (status, at, r.bytes().await.unwrap())
        };
        let (a, b) = tokio::join!(
            get(s.client.clone(), url.clone()),
            get(s.client.clone(), url.clone())
        );
        for (status, answered_at, body) in [a, b] {
            assert_eq!(status, 200);
            assert!(body[..] == big[..], "{} bytes", body.len());
            // the answer began before the upstream had sent everything
            assert!(answered_at < Duration::from_millis(1500), "{answered_at:?}");
        }
        // The file is cached: one more client, and still one request upstream.
        let (status, _, body) = get(s.client.clone(), url.clone()).await;
        assert_eq!(status, 200);
        assert!(body[..] == big[..]);
        assert_eq!(up.asked(), vec!["/base/pool/big_1.0_all.deb".to_owned()]);
        s.stop().await;
    }
}
