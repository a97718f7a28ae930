//! `semithin serve`: the server, with embedded defaults (SQLite, a repository and trust metadata
//! under --data). Settings come from flags, then the environment, then the TOML file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
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
    /// TOML file with any of these settings (the flag names with `_`: data, listen,
    /// checkin_interval, max_wait, request_deadline, max_body, delta_sources, delta_cache_size,
    /// tls_cert, tls_key, admin_token, log_format, apt_cache_size, apt_fresh, and the table
    /// apt_upstreams of NAME = URL). Flags and environment win over it.
    #[arg(long, env = "SEMITHIN_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Seconds between check-ins of a machine that nothing wakes [default: 300].
    #[arg(long, env = "SEMITHIN_CHECKIN_INTERVAL", value_name = "SECS")]
    checkin_interval: Option<u32>,
    /// Longest a machine's long poll is held, in seconds [default: 300].
    #[arg(long, env = "SEMITHIN_MAX_WAIT", value_name = "SECS")]
    max_wait: Option<u32>,
    /// Deadline of every request except long polls and object streams, in seconds
    /// [default: 30].
    #[arg(long, env = "SEMITHIN_REQUEST_DEADLINE", value_name = "SECS")]
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
    /// Seconds a cached apt index (Release, Packages, ...) is served before it is fetched
    /// again [default: 60].
    #[arg(long, value_name = "SECS")]
    apt_fresh: Option<u64>,
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
    cfg.admin_token = std::env::var("SEMITHIN_ADMIN_TOKEN").ok().or(f.admin_token);
    init_logs(a.log_format.or(f.log_format).as_deref().unwrap_or("text"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(semithin_server::run(cfg, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
