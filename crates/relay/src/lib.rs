//! The relay (docs/RELAY.md): a pull-through cache of what machines read (TUF metadata, target
//! files, objects, delta packs, boot artifacts, apt's pool) and a forwarder of what they send
//! (enrollment, check-ins with their long polls, job progress, captures), for a site under a
//! root server or under another relay, to any depth.
//!
//! A relay is untrusted transport: machines verify everything it serves against the signed
//! release (TUF and content addresses), and everything it forwards keeps the machine's
//! signature. What it caches is named by content (objects, packs from one release to another,
//! targets named by their hash, boot artifacts of a release), so a cached item never goes stale;
//! only metadata is short-lived and revalidated. The pure parts are [`route`] (what a request
//! is) and [`lru`] (what to evict); [`disk`] keeps the cache across restarts, [`flight`] makes
//! each item one upstream fetch however many children ask at once.

pub mod batch;
pub mod disk;
pub mod error;
pub mod flight;
pub mod lru;
mod objects;
pub mod route;
mod serve;
pub mod upstream;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use semithin_protocol::relay::RelayStatus;
use semithin_protocol::sign::MachineKey;

pub use crate::error::{Error, Result};
pub use crate::upstream::HEADER_RELAY;

/// What a relay is told at start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Upstream URLs (the root server or another relay), tried in order.
    pub upstreams: Vec<String>,
    /// The cache and the relay's own files.
    pub data: PathBuf,
    /// The cache's bound in bytes (least recently used items go first).
    pub cache_size: u64,
    /// The name appended to `X-Semithin-Relay` (the machine name of the relay).
    pub name: String,
    /// PEM certificates of the CA of https:// upstreams.
    pub ca: Option<PathBuf>,
    /// The largest request body forwarded.
    pub max_body: usize,
    /// How long fetched metadata is served without asking upstream again.
    pub metadata_ttl: Duration,
    /// Children's check-ins arriving within this window go upstream as one batch (zero: each
    /// alone).
    pub batch_window: Duration,
    /// The URL children reach the relay at, reported upstream (`fleet move --relay NAME`).
    pub url: Option<String>,
    /// How often the relay reports its own health upstream (besides with each batch).
    pub status_interval: Duration,
}

impl Config {
    pub fn new(upstreams: Vec<String>, data: PathBuf, name: &str) -> Self {
        Self {
            upstreams,
            data,
            cache_size: 10 << 30,
            name: name.to_owned(),
            ca: None,
            max_body: 300 << 20,
            metadata_ttl: Duration::from_secs(2),
            batch_window: Duration::from_millis(200),
            url: None,
            status_interval: Duration::from_secs(60),
        }
    }
}

/// Counters of what went through a relay (`GET /api/v1/relay`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes of content fetched from upstream into the cache.
    pub fetched: AtomicU64,
    /// Bytes answered to children from the cache.
    pub served: AtomicU64,
    /// Requests forwarded upstream.
    pub forwarded: AtomicU64,
    /// Batches of check-ins sent upstream, and the check-ins in them.
    pub batches: AtomicU64,
    pub batched: AtomicU64,
}

pub struct Relay {
    cfg: Config,
    up: upstream::Upstreams,
    disk: disk::Disk,
    flights: Arc<flight::Flights>,
    /// Metadata files by name: when fetched, and their bytes.
    meta: Mutex<HashMap<String, (Instant, Bytes)>>,
    pub counters: Counters,
    batches: batch::Batches,
}

impl Relay {
    pub fn open(cfg: Config, key: Arc<MachineKey>) -> Result<Arc<Self>> {
        if !route::safe_part(&cfg.name) {
            return Err(Error::Bad(format!(
                "relay name {:?}: letters, digits and . _ - + ~ only",
                cfg.name
            )));
        }
        let up = upstream::Upstreams::new(&cfg.upstreams, key, &cfg.name, cfg.ca.as_deref())?;
        let disk = disk::Disk::open(&cfg.data, cfg.cache_size)?;
        let meta_dir = cfg.data.join("meta");
        std::fs::create_dir_all(&meta_dir)
            .map_err(|e| Error::Internal(format!("creating {}: {e}", meta_dir.display())))?;
        Ok(Arc::new(Self {
            cfg,
            up,
            disk,
            flights: Arc::default(),
            meta: Mutex::default(),
            counters: Counters::default(),
            batches: batch::Batches::default(),
        }))
    }

    /// The relay's health as it reports it upstream.
    pub fn status(&self) -> RelayStatus {
        let (bytes, items) = self.disk.usage();
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RelayStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            url: self.cfg.url.clone(),
            upstream: self.up.current().trim_end_matches('/').to_owned(),
            cache_bytes: bytes,
            cache_items: items as u64,
            cache_limit: self.cfg.cache_size,
            fetched_bytes: n(&self.counters.fetched),
            served_bytes: n(&self.counters.served),
            forwarded: n(&self.counters.forwarded),
            batches: n(&self.counters.batches),
            batched: n(&self.counters.batched),
            interval_secs: self.cfg.status_interval.as_secs(),
        }
    }

    /// Reports the relay's health upstream now (`POST /api/v1/relay/status`, signed).
    pub async fn report(&self) -> Result<()> {
        let body = serde_json::to_vec(&self.status()).expect("serialises");
        self.up
            .fetch("POST", semithin_protocol::relay::STATUS_PATH, body.into())
            .await?;
        self.batches.accepted();
        Ok(())
    }

    /// Reports the relay's health at once and then every `status_interval`, in a task of its
    /// own (a failure is logged and tried again at the next turn).
    pub fn start_reporting(self: &Arc<Self>) {
        let r = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = r.report().await {
                    tracing::warn!("reporting the relay's health upstream: {e}");
                }
                tokio::time::sleep(r.cfg.status_interval).await;
            }
        });
    }

    pub fn disk(&self) -> &disk::Disk {
        &self.disk
    }

    pub fn router(self: &Arc<Self>) -> axum::Router {
        serve::router(self.clone())
    }
}

/// Serves `relay` on `listener` until `shutdown` completes.
pub async fn run_on(
    listener: tokio::net::TcpListener,
    relay: Arc<Relay>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = relay.router();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::Internal(format!("serving: {e}")))
}
