//! `semithin serve`: the server, with embedded defaults (SQLite, a repository and trust metadata
//! under --data). Settings come from flags, then the environment, then the TOML file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use semithin_server::Config;
use serde::Deserialize;

#[derive(clap::Args)]
pub struct Args {
    /// Where the server keeps everything: fleet.db (SQLite), repo/ (images and trust/ metadata),
    /// admin-token, root-key.json (move it offline). Made on first start.
    #[arg(long, env = "SEMITHIN_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8470].
    #[arg(long, env = "SEMITHIN_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// TOML file with any of these settings (durations in seconds; the flag names with `_`:
    /// data, listen, checkin_interval, max_wait, request_deadline, max_body, delta_sources,
    /// delta_cache_size, tls_cert, tls_key, admin_token, log_format, apt_cache_size, apt_fresh,
    /// trust_renew_left, trust_check_interval, header_timeout, idle_timeout, max_connections,
    /// trusted_proxies (a list), event_retention, auto_bake, captures_keep, capture_max_bytes,
    /// netboot, netboot_default, netboot_cmdline, torrent, torrent_seed, torrent_port,
    /// torrent_upload_limit, torrent_peers, and the table
    /// apt_upstreams of NAME = URL). Flags and environment win over it.
    #[arg(long, env = "SEMITHIN_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Time between check-ins of a machine that nothing wakes (`300`, `5m`) [default: 5m].
    #[arg(long, env = "SEMITHIN_CHECKIN_INTERVAL", value_name = "DURATION", value_parser = super::duration_u32)]
    checkin_interval: Option<u32>,
    /// Longest a machine's long poll is held [default: 5m].
    #[arg(long, env = "SEMITHIN_MAX_WAIT", value_name = "DURATION", value_parser = super::duration_u32)]
    max_wait: Option<u32>,
    /// Deadline of every request except long polls and object streams [default: 30s].
    #[arg(long, env = "SEMITHIN_REQUEST_DEADLINE", value_name = "DURATION", value_parser = super::duration)]
    request_deadline: Option<u64>,
    /// Largest request body, in bytes [default: 8388608].
    #[arg(long, env = "SEMITHIN_MAX_BODY", value_name = "BYTES")]
    max_body: Option<usize>,
    /// How many earlier releases of a channel get a delta pack to each new release, built when
    /// it is published; machines on other releases get one built on first request [default: 3].
    #[arg(long, env = "SEMITHIN_DELTA_SOURCES", value_name = "N")]
    delta_sources: Option<usize>,
    /// The most the delta packs kept may take, in bytes (least recently used packs go first,
    /// never one being sent) [default: 8589934592].
    #[arg(long, env = "SEMITHIN_DELTA_CACHE_SIZE", value_name = "BYTES")]
    delta_cache_size: Option<u64>,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(
        long,
        env = "SEMITHIN_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(
        long,
        env = "SEMITHIN_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// An apt upstream of the caching proxy, `NAME=URL` (repeatable): machines point apt at
    /// SERVER/apt/NAME/ and get URL's files, each fetched once for the fleet.
    #[arg(long = "apt-upstream", value_name = "NAME=URL")]
    apt_upstreams: Vec<String>,
    /// The most the apt cache keeps, in bytes (least recently used files go first)
    /// [default: 4294967296].
    #[arg(long, env = "SEMITHIN_APT_CACHE_SIZE", value_name = "BYTES")]
    apt_cache_size: Option<u64>,
    /// How long a cached apt index (Release, Packages, ...) is served before it is fetched
    /// again [default: 1m].
    #[arg(long, value_name = "DURATION", value_parser = super::duration)]
    apt_fresh: Option<u64>,
    /// Sign a new TUF snapshot and timestamp when less than this part of their lifetime is
    /// left, with the online keys in REPO/trust/keys (machines refuse expired metadata)
    /// [default: 0.5, i.e. 12 h before a one-day timestamp expires].
    #[arg(long, env = "SEMITHIN_TRUST_RENEW_LEFT", value_name = "FRACTION")]
    trust_renew_left: Option<f64>,
    /// Seconds between the server's looks at the trust metadata's expiry; it also looks at
    /// start [default: 60].
    #[arg(long, env = "SEMITHIN_TRUST_CHECK_INTERVAL", value_name = "SECS")]
    trust_check_interval: Option<u64>,
    /// Seconds a connection has to send a whole request header (and finish its TLS handshake)
    /// after opening or after its previous answer; idle connections close after it
    /// [default: 15].
    #[arg(long, env = "SEMITHIN_HEADER_TIMEOUT", value_name = "SECS")]
    header_timeout: Option<u64>,
    /// Seconds a client may take nothing of an answer before its connection is closed
    /// [default: 60].
    #[arg(long, env = "SEMITHIN_IDLE_TIMEOUT", value_name = "SECS")]
    idle_timeout: Option<u64>,
    /// The most connections open at once; more wait until one closes [default: 512]. Keep it
    /// well under the process's file descriptor limit (`ulimit -n`).
    #[arg(long, env = "SEMITHIN_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,
    /// The address of a reverse proxy in front of the server (repeat, or comma-separated in
    /// the environment): from it, the client's address is taken from `X-Forwarded-For`, so
    /// that failed enrollments are throttled per client, not for everyone behind the proxy.
    /// Never name an address whose clients could reach the server directly.
    #[arg(
        long = "trusted-proxy",
        env = "SEMITHIN_TRUSTED_PROXIES",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<std::net::IpAddr>,
    /// Days machine events are kept (enrollments are kept for good) [default: 90].
    #[arg(long, env = "SEMITHIN_EVENT_RETENTION", value_name = "DAYS")]
    event_retention: Option<u32>,
    /// Bake each new capture of a machine into the layer channel `machines/NAME` of the
    /// repository (made by its first capture).
    #[arg(long, env = "SEMITHIN_AUTO_BAKE")]
    auto_bake: bool,
    /// Serve boot artifacts, the trust metadata and iPXE scripts to anyone under /boot/ for
    /// network and live boots (docs/BOOT.md, "Network boot"): iPXE cannot sign requests.
    #[arg(long, env = "SEMITHIN_NETBOOT")]
    netboot: bool,
    /// The channel a machine whose MAC address the fleet does not know boots over the network
    /// (default: a menu of the published channels that have a kernel).
    #[arg(long, env = "SEMITHIN_NETBOOT_DEFAULT", value_name = "CHANNEL")]
    netboot_default: Option<String>,
    /// Kernel parameters added to every network boot (e.g. `console=ttyS0`).
    #[arg(
        long,
        env = "SEMITHIN_NETBOOT_CMDLINE",
        value_name = "PARAMS",
        allow_hyphen_values = true
    )]
    netboot_cmdline: Option<String>,
    /// Seconds the network boot's menu of channels (for a MAC address the fleet does not know,
    /// without --netboot-default) waits before it boots the first channel; 0 waits for a key
    /// [default: 30].
    #[arg(long, env = "SEMITHIN_NETBOOT_MENU_TIMEOUT", value_name = "SECS")]
    netboot_menu_timeout: Option<u32>,
    /// Captures kept per machine, the oldest removed first [default: 10].
    #[arg(long, env = "SEMITHIN_CAPTURES_KEEP", value_name = "N")]
    captures_keep: Option<usize>,
    /// The largest capture accepted, in bytes of tar.zst [default: 268435456].
    #[arg(long, env = "SEMITHIN_CAPTURE_MAX_BYTES", value_name = "BYTES")]
    capture_max_bytes: Option<u64>,
    /// BitTorrent (docs/TORRENT.md): a private torrent of every delta pack and boot artifact
    /// asked for, the tracker at /announce/PASSKEY, and the server seeding them.
    #[arg(long, env = "SEMITHIN_TORRENT")]
    torrent: bool,
    /// With --torrent: serve torrents and the tracker but do not seed (machines share alone).
    #[arg(long, env = "SEMITHIN_TORRENT_NO_SEED")]
    torrent_no_seed: bool,
    /// The seeder's TCP port [default: a free one].
    #[arg(long, env = "SEMITHIN_TORRENT_PORT", value_name = "PORT")]
    torrent_port: Option<u16>,
    /// The seeder's upload limit in bytes per second [default: none].
    #[arg(long, env = "SEMITHIN_TORRENT_UPLOAD_LIMIT", value_name = "BYTES")]
    torrent_upload_limit: Option<u32>,
    /// The tracker gives the server's seeder to at most N downloading machines at a time,
    /// while no machine has the whole file [default: 1]: they take a pack from the server,
    /// the rest from them.
    #[arg(long, env = "SEMITHIN_TORRENT_PEERS", value_name = "N")]
    torrent_peers: Option<usize>,
    /// Log lines as `text` or `json` [default: text]. The level comes from SEMITHIN_LOG
    /// (e.g. `info`, `semithin_server=debug`).
    #[arg(long, env = "SEMITHIN_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<String>,
}

/// The settings file: every field optional, unknown fields refused.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    data: Option<PathBuf>,
    listen: Option<SocketAddr>,
    checkin_interval: Option<u32>,
    max_wait: Option<u32>,
    request_deadline: Option<u64>,
    max_body: Option<usize>,
    delta_sources: Option<usize>,
    delta_cache_size: Option<u64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    admin_token: Option<String>,
    log_format: Option<String>,
    apt_upstreams: Option<std::collections::BTreeMap<String, String>>,
    apt_cache_size: Option<u64>,
    apt_fresh: Option<u64>,
    trust_renew_left: Option<f64>,
    trust_check_interval: Option<u64>,
    header_timeout: Option<u64>,
    idle_timeout: Option<u64>,
    max_connections: Option<usize>,
    trusted_proxies: Option<Vec<std::net::IpAddr>>,
    event_retention: Option<u32>,
    auto_bake: Option<bool>,
    netboot: Option<bool>,
    netboot_default: Option<String>,
    netboot_cmdline: Option<String>,
    netboot_menu_timeout: Option<u32>,
    captures_keep: Option<usize>,
    capture_max_bytes: Option<u64>,
    torrent: Option<bool>,
    torrent_seed: Option<bool>,
    torrent_port: Option<u16>,
    torrent_upload_limit: Option<u32>,
    torrent_peers: Option<usize>,
}

fn read_file(path: &Path) -> Result<File> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("settings file {}", path.display()))
}

pub fn init_logs(format: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEMITHIN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        "text" => b.init(),
        "json" => b.json().init(),
        f => anyhow::bail!("unknown log format {f:?}: use text or json"),
    }
    Ok(())
}

pub fn run(a: Args) -> Result<ExitCode> {
    let f = match &a.config {
        Some(p) => read_file(p)?,
        None => File::default(),
    };
    let data = a.data.or(f.data).context(
        "no data directory: give --data DIR (or SEMITHIN_DATA, or `data` in the settings file)",
    )?;
    let mut cfg = Config::new(data);
    if let Some(v) = a.listen.or(f.listen) {
        cfg.listen = v;
    }
    if let Some(v) = a.checkin_interval.or(f.checkin_interval) {
        anyhow::ensure!(v >= 1, "the check-in interval must be at least 1 s");
        cfg.checkin_interval_secs = v;
    }
    if let Some(v) = a.max_wait.or(f.max_wait) {
        cfg.max_wait_secs = v.min(3600);
    }
    if let Some(v) = a.request_deadline.or(f.request_deadline) {
        anyhow::ensure!(v >= 1, "the request deadline must be at least 1 s");
        cfg.request_deadline_secs = v;
    }
    if let Some(v) = a.max_body.or(f.max_body) {
        anyhow::ensure!(v >= 4096, "the body limit must be at least 4096 bytes");
        cfg.max_body_bytes = v;
    }
    if let Some(v) = a.delta_sources.or(f.delta_sources) {
        anyhow::ensure!(v <= 64, "at most 64 delta sources per release");
        cfg.delta_sources = v;
    }
    if let Some(v) = a.delta_cache_size.or(f.delta_cache_size) {
        cfg.delta_cache_bytes = v;
    }
    cfg.tls_cert = a.tls_cert.or(f.tls_cert);
    cfg.tls_key = a.tls_key.or(f.tls_key);
    anyhow::ensure!(
        cfg.tls_cert.is_some() == cfg.tls_key.is_some(),
        "TLS needs both a certificate and a key"
    );
    cfg.apt_upstreams = f.apt_upstreams.unwrap_or_default();
    for u in &a.apt_upstreams {
        let (name, url) = u
            .split_once('=')
            .with_context(|| format!("--apt-upstream {u:?}: expected NAME=URL"))?;
        cfg.apt_upstreams.insert(name.to_owned(), url.to_owned());
    }
    if let Some(v) = a.apt_cache_size.or(f.apt_cache_size) {
        cfg.apt_cache_bytes = v;
    }
    if let Some(v) = a.apt_fresh.or(f.apt_fresh) {
        cfg.apt_fresh_secs = v;
    }
    if let Some(v) = a.trust_renew_left.or(f.trust_renew_left) {
        anyhow::ensure!(
            v > 0.0 && v < 1.0,
            "--trust-renew-left {v}: a part of the lifetime between 0 and 1 (e.g. 0.5)"
        );
        cfg.trust_renew_left = v;
    }
    if let Some(v) = a.trust_check_interval.or(f.trust_check_interval) {
        anyhow::ensure!(
            (1..=86_400).contains(&v),
            "--trust-check-interval {v}: 1 to 86400 seconds"
        );
        cfg.trust_check_secs = v;
    }
    if let Some(v) = a.header_timeout.or(f.header_timeout) {
        anyhow::ensure!(v >= 1, "the header timeout must be at least 1 s");
        cfg.header_timeout_secs = v;
    }
    if let Some(v) = a.idle_timeout.or(f.idle_timeout) {
        anyhow::ensure!(v >= 1, "the idle timeout must be at least 1 s");
        cfg.idle_timeout_secs = v;
    }
    if let Some(v) = a.max_connections.or(f.max_connections) {
        anyhow::ensure!(v >= 1, "at least 1 connection must be allowed");
        cfg.max_connections = v;
    }
    cfg.trusted_proxies = if a.trusted_proxies.is_empty() {
        f.trusted_proxies.clone().unwrap_or_default()
    } else {
        a.trusted_proxies.clone()
    };
    if let Some(v) = a.event_retention.or(f.event_retention) {
        anyhow::ensure!(v >= 1, "events must be kept at least 1 day");
        cfg.event_retention_days = v;
    }
    cfg.auto_bake = a.auto_bake || f.auto_bake.unwrap_or(false);
    cfg.netboot = a.netboot || f.netboot.unwrap_or(false);
    cfg.netboot_default = a.netboot_default.or(f.netboot_default);
    if let Some(c) = &cfg.netboot_default {
        semithin_store::channel::check_name(c).context("--netboot-default")?;
    }
    cfg.netboot_cmdline = a.netboot_cmdline.or(f.netboot_cmdline).unwrap_or_default();
    if let Some(t) = a.netboot_menu_timeout.or(f.netboot_menu_timeout) {
        anyhow::ensure!(
            t <= 3600,
            "--netboot-menu-timeout: {t} s is more than an hour; 0 waits for a key"
        );
        cfg.netboot_menu_timeout_secs = t;
    }
    if let Some(bad) = cfg
        .netboot_cmdline
        .chars()
        .find(|c| c.is_control() || matches!(c, '$' | '\\' | '"' | '\'' | '`' | ';' | '&' | '|'))
    {
        bail!(
            "--netboot-cmdline: {bad:?} cannot be in a kernel command line written into an iPXE script"
        );
    }
    cfg.torrent.enabled = a.torrent || f.torrent.unwrap_or(false);
    cfg.torrent.seed = !a.torrent_no_seed && f.torrent_seed.unwrap_or(true);
    cfg.torrent.port = a.torrent_port.or(f.torrent_port).unwrap_or(0);
    cfg.torrent.upload_bps = a.torrent_upload_limit.or(f.torrent_upload_limit);
    let peers = a.torrent_peers.or(f.torrent_peers).unwrap_or(1);
    anyhow::ensure!(
        peers >= 1,
        "--torrent-peers: the seeder serves at least 1 peer"
    );
    cfg.torrent.feeds = peers;
    if let Some(v) = a.captures_keep.or(f.captures_keep) {
        anyhow::ensure!(v >= 1, "at least 1 capture per machine must be kept");
        cfg.captures_keep = v;
    }
    if let Some(v) = a.capture_max_bytes.or(f.capture_max_bytes) {
        cfg.capture_max_bytes = v;
    }
    cfg.admin_token = std::env::var("SEMITHIN_ADMIN_TOKEN").ok().or(f.admin_token);
    init_logs(a.log_format.or(f.log_format).as_deref().unwrap_or("text"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(semithin_server::run(cfg, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
