//! The semithin server: a thin async shell (axum, SQLite through sqlx) around the repository
//! and trust crates. It serves TUF metadata and objects to machines, enrolls them, keeps their
//! reported state and tells each one what it should run. See docs/PROTOCOL.md.

pub mod aptcache;
pub mod assignments;
pub mod audit;
pub mod bake;
pub mod captures;
pub mod db;
pub mod deltas;
pub mod error;
pub mod fleet;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod relays;
pub mod releases;
pub mod renew;
pub mod replay;
pub mod rollout;
#[cfg(test)]
mod testkit;
pub mod torrents;
pub mod vars;
pub mod web;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use semithin_store::repo::Config as RepoConfig;
use semithin_store::{CommitId, Repo};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqlitePool;
use tokio::sync::watch;

pub use error::{Error, Result};

use crate::fleet::Fleet;
use crate::releases::Published;

/// Everything the server can be told; the binary fills it from flags, environment and the TOML
/// file, in that order of precedence.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub data: PathBuf,
    pub listen: SocketAddr,
    /// The admin token; when absent, the one in DATA/admin-token (made on first start).
    pub admin_token: Option<String>,
    /// How often machines check in when nothing wakes them.
    pub checkin_interval_secs: u32,
    /// The longest a machine's long poll is held.
    pub max_wait_secs: u32,
    /// Deadline for every request but long polls and object streams.
    pub request_deadline_secs: u64,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// How many earlier releases of a channel get a delta pack to each new release, built at
    /// publish (other starting points get one built on their first request).
    pub delta_sources: usize,
    /// The most the delta packs kept (DATA/deltas) may take, in bytes; the least recently used
    /// go first.
    #[serde(default = "default_delta_cache_bytes")]
    pub delta_cache_bytes: u64,
    /// PEM certificate chain and key: serve HTTPS instead of HTTP.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The apt caching proxy: `GET /apt/NAME/PATH` serves `URL/PATH` of the upstream NAME.
    #[serde(default)]
    pub apt_upstreams: std::collections::BTreeMap<String, String>,
    /// The most the apt cache (DATA/apt-cache) keeps, in bytes.
    pub apt_cache_bytes: u64,
    /// How long a cached apt index (Release, Packages, ...) is served before it is fetched
    /// again, in seconds.
    pub apt_fresh_secs: u64,
    /// The server signs a new snapshot and timestamp when less than this part (0 to 1) of
    /// their lifetime is left (`renew`).
    #[serde(default = "default_renew_left")]
    pub trust_renew_left: f64,
    /// Seconds between the server's looks at the trust metadata's expiry.
    #[serde(default = "default_trust_check")]
    pub trust_check_secs: u64,
    /// A connection must send a whole request header (and finish its TLS handshake) within
    /// this many seconds of opening or of its previous answer; idle ones close after it.
    pub header_timeout_secs: u64,
    /// A connection whose client takes nothing of an answer for this many seconds is closed.
    pub idle_timeout_secs: u64,
    /// The most connections open at once; more wait until one closes.
    pub max_connections: usize,
    /// Reverse proxies whose `X-Forwarded-For` names the client (for the enrollment throttle).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Events older than this many days are removed (enrollments are kept).
    pub event_retention_days: u32,
    /// Captures kept per machine (DATA/captures), the oldest removed first.
    #[serde(default = "default_captures_keep")]
    pub captures_keep: usize,
    /// The largest capture accepted, in bytes of tar.zst.
    #[serde(default = "default_capture_max_bytes")]
    pub capture_max_bytes: u64,
    /// The largest tar a capture may unpack to.
    #[serde(default = "default_capture_max_unpacked")]
    pub capture_max_unpacked_bytes: u64,
    /// Bake each new capture into the layer channel `machines/NAME`.
    #[serde(default)]
    pub auto_bake: bool,
    /// Serve boot artifacts, the trust metadata and iPXE scripts to anyone under `/boot/`
    /// (docs/BOOT.md, "Network boot"): iPXE and a booting initrd cannot sign requests.
    #[serde(default)]
    pub netboot: bool,
    /// The channel an unknown MAC address boots; `None`: a menu of the channels with kernels.
    #[serde(default)]
    pub netboot_default: Option<String>,
    /// Kernel parameters added to every network boot (`console=ttyS0`, say).
    #[serde(default)]
    pub netboot_cmdline: String,
    /// Seconds the menu of channels waits for a choice before it boots the first one (0: it
    /// waits for a key).
    #[serde(default = "default_menu_timeout")]
    pub netboot_menu_timeout_secs: u32,
    /// BitTorrent: torrents, the tracker and the seeder (docs/TORRENT.md).
    #[serde(default)]
    pub torrent: torrents::TorrentConfig,
}

fn default_menu_timeout() -> u32 {
    30
}

fn default_captures_keep() -> usize {
    10
}

fn default_capture_max_bytes() -> u64 {
    256 << 20
}

fn default_capture_max_unpacked() -> u64 {
    4 << 30
}

fn default_renew_left() -> f64 {
    0.5
}

fn default_trust_check() -> u64 {
    60
}

fn default_delta_cache_bytes() -> u64 {
    8 << 30
}

impl Config {
    pub fn new(data: PathBuf) -> Self {
        Self {
            data,
            listen: "127.0.0.1:8470".parse().expect("address"),
            admin_token: None,
            checkin_interval_secs: 300,
            max_wait_secs: 300,
            request_deadline_secs: 30,
            max_body_bytes: 8 << 20,
            delta_sources: 3,
            delta_cache_bytes: default_delta_cache_bytes(),
            tls_cert: None,
            tls_key: None,
            apt_upstreams: Default::default(),
            apt_cache_bytes: 4 << 30,
            apt_fresh_secs: 60,
            trust_renew_left: default_renew_left(),
            trust_check_secs: default_trust_check(),
            header_timeout_secs: 15,
            idle_timeout_secs: 60,
            max_connections: 512,
            trusted_proxies: Vec::new(),
            event_retention_days: 90,
            captures_keep: default_captures_keep(),
            capture_max_bytes: default_capture_max_bytes(),
            capture_max_unpacked_bytes: default_capture_max_unpacked(),
            auto_bake: false,
            netboot: false,
            netboot_default: None,
            netboot_menu_timeout_secs: default_menu_timeout(),
            netboot_cmdline: String::new(),
            torrent: Default::default(),
        }
    }

    pub fn repo(&self) -> PathBuf {
        self.data.join("repo")
    }

    /// The bounds of connections.
    pub fn limits(&self) -> http::serve::Limits {
        http::serve::Limits {
            header_timeout: Duration::from_secs(self.header_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs.max(1)),
            max_connections: self.max_connections.max(1),
        }
    }
}

#[derive(Default)]
pub struct Counters {
    pub object_bytes_sent: AtomicU64,
    pub objects_sent: AtomicU64,
    pub metadata_bytes_sent: AtomicU64,
    pub delta_bytes_sent: AtomicU64,
    /// Bytes of boot artifacts sent (`/api/v1/boot`, `/boot`).
    pub boot_bytes_sent: AtomicU64,
    pub checkins: AtomicU64,
    /// Check-ins that came in relays' batches (also counted in `checkins`), and the batches.
    pub checkins_batched: AtomicU64,
    pub checkin_batches: AtomicU64,
    /// Long polls held now: a machine's own check-in, or a relay's batch, each counts one.
    pub polls_held: AtomicU64,
}

/// Counts one held long poll in [`Counters::polls_held`] for as long as it lives (a client that
/// hangs up drops it too).
pub struct PollHeld<'a>(&'a AtomicU64);

impl<'a> PollHeld<'a> {
    pub fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for PollHeld<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The server's shared state.
pub struct App {
    pub cfg: Config,
    pub db: SqlitePool,
    pub fleet: Fleet,
    pub published: RwLock<Arc<Published>>,
    admin_token_hash: blake3::Hash,
    pub counters: Counters,
    /// Request latency and other running counters for `/metrics`.
    pub metrics: metrics::Metrics,
    pub deltas: deltas::Deltas,
    pub jobs: jobs::Jobs,
    /// Variable sets and their order (per-machine configuration).
    pub vars: vars::Vars,
    pub apt: aptcache::AptCache,
    /// Machines' captures (DATA/captures and their rows).
    pub captures: captures::Captures,
    pub rollouts: rollout::Rollouts,
    /// The renewal of snapshot and timestamp, and what the admin must do.
    pub renewal: renew::Renewal,
    /// The channel assignments signed in the trust metadata.
    pub assignments: assignments::SignedAssignments,
    pub shutdown: watch::Receiver<bool>,
    /// Failed enrollments per source address.
    pub enroll_failures: http::throttle::Throttle,
    /// The web dashboard's sessions and failed logins.
    pub web: web::Web,
    /// Torrents, the tracker and the seeder (`serve --torrent`).
    pub torrents: torrents::Torrents,
}

impl App {
    pub fn published(&self) -> Arc<Published> {
        self.published.read().expect("lock").clone()
    }

    pub fn release(&self, channel: &str) -> Option<CommitId> {
        self.published().releases.get(channel).copied()
    }

    /// The release a machine is told to run: what the rollout that governs its channel tells
    /// it, else its channel's release (`None` without a channel).
    pub fn target(&self, m: &db::MachineRow) -> Option<CommitId> {
        let channel = m.channel.as_deref()?;
        let p = self.published();
        let current = m.report.current.map(|c| c.to_string());
        let current = current.as_deref();
        match self.rollouts.told(&p, &m.id, channel, current, now()) {
            Some(told) => told,
            None => p.releases.get(channel).copied(),
        }
    }

    pub fn is_admin_token(&self, token: &str) -> bool {
        // blake3::Hash compares in constant time.
        blake3::hash(token.as_bytes()) == self.admin_token_hash
    }

    /// Re-reads the store and releases; wakes the machines whose channel's release changed.
    /// Returns the names of the machines woken.
    pub async fn reload(self: &Arc<Self>) -> Result<Vec<String>> {
        let repo = self.cfg.repo();
        let new = tokio::task::spawn_blocking(move || releases::load(&repo))
            .await
            .expect("reload task")?;
        let old = self.published();
        let changed: Vec<String> = new
            .releases
            .iter()
            .filter(|(c, r)| old.releases.get(*c) != Some(r))
            .map(|(c, _)| c.clone())
            .collect();
        for (c, r) in &new.releases {
            if old.releases.get(c) != Some(r) {
                tracing::info!(channel = %c, release = %r.to_hex(), "release published");
            }
        }
        *self.published.write().expect("lock") = Arc::new(new);
        // a rollout's release may have been signed: its planner starts it
        self.rollouts.poke();
        self.prepare_deltas(&changed);
        let mut woken = Vec::new();
        for m in self
            .fleet
            .select(&semithin_protocol::selector::Selector::All)
        {
            let r = m.row.lock().expect("lock");
            if r.channel.as_ref().is_some_and(|c| changed.contains(c)) {
                woken.push(r.name.clone());
                m.wake.notify_one();
            }
        }
        Ok(woken)
    }
}

impl App {
    /// How hard to work on a pack: full for the prepared starting points, quick for the rest.
    pub fn delta_effort(&self, from: &CommitId, to: &CommitId) -> semithin_delta::build::Effort {
        let p = self.published();
        let prepared = p.releases.iter().any(|(c, r)| {
            r == to
                && p.earlier
                    .get(c)
                    .is_some_and(|e| e.iter().take(self.deltas.sources).any(|x| x == from))
        });
        if prepared {
            semithin_delta::build::Effort::Full
        } else {
            semithin_delta::build::Effort::Quick
        }
    }
}

/// Makes what a new data directory needs: the repository, trust metadata (root key in
/// DATA/root-key.json, to be moved offline), the admin token. Existing parts are kept.
pub fn prepare(cfg: &Config) -> Result<String> {
    let data = &cfg.data;
    std::fs::create_dir_all(data).map_err(Error::io("creating", data))?;
    let repo = cfg.repo();
    if !repo.join("config").exists() {
        Repo::init(&repo, RepoConfig::default())?;
        tracing::info!(path = %repo.display(), "repository created");
    }
    let trust = releases::trust_dir(&repo);
    if !trust.exists() {
        let _lock = Repo::open(&repo, semithin_store::Access::Write)?;
        let key = data.join("root-key.json");
        semithin_trust::repo::init(
            &trust,
            std::slice::from_ref(&key),
            1,
            semithin_trust::clock::now(),
        )?;
        tracing::warn!(
            root_key = %key.display(),
            "trust metadata created; keep the root key offline (it is needed only to rotate keys)"
        );
    }
    let token = match &cfg.admin_token {
        Some(t) if t.len() >= 16 => t.clone(),
        Some(_) => {
            return Err(Error::Config(
                "the admin token must be at least 16 characters".into(),
            ));
        }
        None => admin_token_file(data)?,
    };
    Ok(token)
}

fn admin_token_file(data: &Path) -> Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= 16 => return Ok(t.trim().to_owned()),
        Ok(_) => {
            return Err(Error::Config(format!(
                "{} holds no token of at least 16 characters",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("reading", &path)(e)),
    }
    let token = random_token()?;
    let tmp = data.join(".admin-token.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io("creating", &tmp))?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(Error::io("writing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(Error::io("renaming", &path))?;
    tracing::info!(path = %path.display(), "admin token created");
    Ok(token)
}

pub fn random_token() -> Result<String> {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).map_err(|e| Error::Config(format!("no randomness: {e}")))?;
    Ok(hex::encode(b))
}

/// A token's id: 16 random hex digits, independent of its secret.
pub fn random_token_id() -> Result<String> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| Error::Config(format!("no randomness: {e}")))?;
    Ok(hex::encode(b))
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Runs the server until `stop` resolves, then finishes open requests (long polls are answered
/// at once) and writes what is still in memory.
pub async fn run(
    cfg: Config,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(Error::io("listening on", cfg.listen.to_string()))?;
    run_on(cfg, listener, stop).await
}

/// [`run`] on a socket already bound (`cfg.listen` is not used): tests bind port 0 and learn
/// the address before the server starts.
pub async fn run_on(
    cfg: Config,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    // A bad certificate or key stops the start, before anything is made or listens.
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(http::tls::server_config(cert, key)?),
        (None, None) => None,
        _ => {
            return Err(Error::Config(
                "TLS needs both a certificate and its key (tls_cert and tls_key)".into(),
            ));
        }
    };
    if !(cfg.trust_renew_left > 0.0 && cfg.trust_renew_left < 1.0) {
        return Err(Error::Config(format!(
            "trust_renew_left = {}: renew when less than this part of a lifetime is left, \
             between 0 and 1 (e.g. 0.5)",
            cfg.trust_renew_left
        )));
    }
    let token = prepare(&cfg)?;
    let db = db::open(&cfg.data.join("fleet.db")).await?;
    let renumbered = db::renumber_legacy_tokens(&db, random_token_id).await?;
    if renumbered > 0 {
        tracing::warn!(
            tokens = renumbered,
            "enrollment tokens whose id was part of their secret got new ids (see `semithin fleet token list`)"
        );
    }
    let fleet = Fleet::load(db::load_machines(&db).await?);
    for (id, counter) in db::load_counters(&db).await? {
        if let Some(m) = fleet.get(&id) {
            m.set_stored_counter(counter);
        }
    }
    let jobs = jobs::Jobs::load(&db, now()).await?;
    let vars = vars::Vars::load(&db).await?;
    vars::load_facts(&db, &fleet).await?;
    relays::load(&db, &fleet).await?;
    for (name, url) in &cfg.apt_upstreams {
        if semithin_protocol::selector::check_name(name).is_err()
            || !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(Error::Config(format!(
                "apt upstream {name:?} = {url:?}: a name of A-Z a-z 0-9 - _ . and an http(s) URL"
            )));
        }
    }
    let apt = aptcache::AptCache::open(
        cfg.data.join("apt-cache"),
        cfg.apt_upstreams.clone(),
        cfg.apt_cache_bytes,
        cfg.apt_fresh_secs,
    )?;
    let captures = captures::Captures::open(
        cfg.data.join("captures"),
        cfg.captures_keep,
        cfg.capture_max_bytes,
        cfg.capture_max_unpacked_bytes,
    )?;
    // A machine not seen for three check-in intervals (at least ten minutes) is offline.
    let offline_after = (3 * i64::from(cfg.checkin_interval_secs)).max(600);
    let rollouts = rollout::Rollouts::load(&db, offline_after).await?;
    let repo = cfg.repo();
    let published = tokio::task::spawn_blocking(move || releases::load(&repo))
        .await
        .expect("load task")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let deltas_dir = cfg.data.join("deltas");
    let torrents = {
        let (data, tc) = (cfg.data.clone(), cfg.torrent.clone());
        // the seeder runs its own runtime, started off this one's threads
        tokio::task::spawn_blocking(move || torrents::Torrents::new(&data, tc))
            .await
            .expect("torrent task")?
    };
    let app = Arc::new(App {
        torrents,
        deltas: deltas::Deltas::new(deltas_dir, cfg.delta_sources, cfg.delta_cache_bytes),
        jobs,
        vars,
        apt,
        captures,
        db,
        fleet,
        rollouts,
        renewal: renew::Renewal::new(cfg.trust_renew_left, cfg.trust_check_secs),
        assignments: Default::default(),
        published: RwLock::new(Arc::new(published)),
        admin_token_hash: blake3::hash(token.as_bytes()),
        counters: Counters::default(),
        metrics: Default::default(),
        shutdown: stop_rx,
        enroll_failures: Default::default(),
        web: Default::default(),
        cfg,
    });
    // Expired or nearly expired snapshot and timestamp are signed again before anyone is served.
    renew::check(&app).await;
    // What the database assigns is signed before machines ask (after a crash, or an upgrade).
    assignments::sign_logged(&app).await;
    let addr = listener
        .local_addr()
        .map_err(Error::io("listening on", app.cfg.listen.to_string()))?;
    tracing::info!(
        %addr,
        scheme = if tls.is_some() { "https" } else { "http" },
        machines = app.fleet.len(),
        channels = app.published().releases.len(),
        data = %app.cfg.data.display(),
        "serving"
    );
    let background = tokio::spawn(background(app.clone()));
    let planner = tokio::spawn(rollout::run(app.clone()));
    let renewer = tokio::spawn(renew::run(app.clone()));
    let router = http::router(app.clone());
    let stop_tx2 = stop_tx.clone();
    let shutdown = async move {
        stop.await;
        tracing::info!("shutting down");
        let _ = stop_tx2.send(true);
    };
    let tls = tls.map(http::tls::acceptor);
    let served = http::serve::serve(listener, router, tls, app.cfg.limits(), shutdown).await;
    let _ = stop_tx.send(true);
    background.abort();
    planner.abort();
    renewer.abort();
    save_last_seen(&app).await?;
    app.db.close().await;
    tracing::info!("stopped");
    served
}

/// Every few seconds: write last-seen times, and reload when the trust metadata changed on disk
/// (a publish that did not tell the server).
async fn background(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        // Hourly (and at start): events past their retention, and beyond each machine's cap.
        if ticks.is_multiple_of(720) {
            prune_events(&app).await;
        }
        ticks += 1;
        // Scheduled jobs whose occurrence started wake their machines.
        app.jobs.wake_due(&app.fleet, now());
        if let Err(e) = save_last_seen(&app).await {
            tracing::warn!(error = %e, "writing last-seen times");
        }
        let repo = app.cfg.repo();
        let stamp = tokio::task::spawn_blocking(move || releases::stamp(&repo))
            .await
            .ok()
            .flatten();
        if stamp != app.published().stamp {
            match app.reload().await {
                Ok(w) if !w.is_empty() => tracing::info!(woken = w.len(), "trust metadata changed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reloading the repository"),
            }
        }
    }
}

async fn prune_events(app: &App) {
    let before = now().saturating_sub(i64::from(app.cfg.event_retention_days) * 86_400);
    match db::prune_events(&app.db, before, fleet::MAX_EVENTS_PER_MACHINE).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(events = n, "old events removed"),
        Err(e) => tracing::warn!(error = %e, "removing old events"),
    }
}

/// Writes last-seen times, and the request counters not stored yet (crate::replay).
async fn save_last_seen(app: &App) -> Result<()> {
    let counters = app.fleet.unsaved_counters();
    if !counters.is_empty() {
        let rows: Vec<(String, u64)> = counters.iter().map(|(m, c)| (m.id.clone(), *c)).collect();
        db::store_counters(&app.db, &rows).await?;
        for (m, c) in counters {
            m.counter_stored.fetch_max(c, Ordering::Relaxed);
        }
    }
    let dirty = app.fleet.unsaved_last_seen();
    if dirty.is_empty() {
        return Ok(());
    }
    let rows: Vec<(String, i64)> = dirty.iter().map(|(m, s)| (m.id.clone(), *s)).collect();
    db::update_last_seen(&app.db, &rows).await?;
    for (m, s) in dirty {
        m.last_seen_stored.store(s, Ordering::Relaxed);
    }
    Ok(())
}
