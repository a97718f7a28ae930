//! `semithin relay`: a site's pull-through cache and forwarder (docs/RELAY.md). It is a machine
//! of its upstream (its own key, enrolled with a token), so it reads releases with its own
//! signed requests and never holds the admin token.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use semithin_protocol::api::EnrollRequest;
use semithin_protocol::sign::MachineKey;

#[derive(clap::Args)]
pub struct Args {
    /// The upstream: the root server or another relay (repeatable: tried in order).
    #[arg(long = "upstream", value_name = "URL", required = true)]
    upstreams: Vec<String>,
    /// The relay's cache and key.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// The address to serve children on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8471")]
    listen: String,
    /// The cache's bound in bytes (least recently used items go first).
    #[arg(long, value_name = "BYTES", default_value_t = 10 << 30)]
    cache_size: u64,
    /// PEM certificates of the CA of an https:// upstream.
    #[arg(long, env = "SEMITHIN_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// The relay's machine name upstream, and the name it adds to `X-Semithin-Relay`
    /// [default: the host name].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// An enrollment token of the root, for the first start (a pre-authorised one, or accept
    /// the relay with `fleet accept NAME`).
    #[arg(long, env = "SEMITHIN_TOKEN", value_name = "TOKEN")]
    token: Option<String>,
    /// At most this many open connections from children (each waiting machine holds one).
    #[arg(long, value_name = "N", default_value_t = 4096)]
    max_connections: usize,
    /// The URL children reach this relay at, reported upstream: `fleet move --relay NAME`
    /// places machines under it by name.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Children's check-ins arriving within this many milliseconds go upstream as one batch
    /// (0: each alone).
    #[arg(long, value_name = "MS", default_value_t = 200)]
    batch_window_ms: u64,
    /// Report the relay's health upstream this often, in seconds (and with every batch).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    status_interval: u64,
    /// PEM certificate chain: serve children over HTTPS (with --tls-key), as `serve` does.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// The key of a relay (or agent) in `path`, made on first use.
pub fn key_at(path: &std::path::Path) -> Result<MachineKey> {
    if path.exists() {
        return MachineKey::load(path).with_context(|| format!("reading {}", path.display()));
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = MachineKey::generate()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(key.file_text().as_bytes())?;
    f.sync_all()?;
    Ok(key)
}

pub fn run(a: Args) -> Result<ExitCode> {
    std::fs::create_dir_all(&a.data).with_context(|| format!("creating {}", a.data.display()))?;
    let name = match a.name.clone() {
        Some(n) => n,
        None => rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned(),
    };
    let key = key_at(&a.data.join("relay.key"))?;
    let enrolled = a.data.join("enrolled");
    if !enrolled.exists() {
        let Some(token) = &a.token else {
            bail!(
                "this relay is not enrolled yet: give --token with an enrollment token of the root"
            )
        };
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("role".to_owned(), "relay".to_owned());
        let pubkey = hex::encode(key.public());
        let api = semithin_agent::http::Api::new(
            &a.upstreams[0],
            MachineKey::load(&a.data.join("relay.key"))?,
            a.ca.as_deref(),
        )?;
        let r = api
            .enroll(&EnrollRequest {
                token: token.clone(),
                name: name.clone(),
                public_key: pubkey,
                labels: labels.into_iter().collect(),
            })
            .map_err(|e| anyhow::anyhow!(semithin_agent::error::render(&e)))
            .context("enrolling the relay")?;
        note!("semithin-relay: enrolled as {name} ({:?})", r.status);
        std::fs::write(&enrolled, format!("{}\n", r.machine_id))
            .with_context(|| format!("writing {}", enrolled.display()))?;
    }
    let mut cfg = semithin_relay::Config::new(a.upstreams.clone(), a.data.clone(), &name);
    cfg.cache_size = a.cache_size;
    cfg.ca = a.ca.clone();
    cfg.url = a.url.clone();
    cfg.batch_window = std::time::Duration::from_millis(a.batch_window_ms.min(10_000));
    cfg.status_interval = std::time::Duration::from_secs(a.status_interval.max(1));
    super::serve::init_logs("text")?;
    let tls = a.tls_cert.clone().zip(a.tls_key.clone());
    serve(
        cfg,
        Arc::new(key),
        &a.listen,
        a.max_connections,
        tls,
        super::serve::shutdown_signal(),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Runs a relay on `listen` (over HTTPS with `tls`) until `shutdown`, on a runtime of its own
/// (the agent's relay runs this in a thread beside its synchronous loop).
pub fn serve(
    cfg: semithin_relay::Config,
    key: Arc<MachineKey>,
    listen: &str,
    max_connections: usize,
    tls: Option<(PathBuf, PathBuf)>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let tls = match tls {
        Some((cert, key)) => Some(semithin_server::http::tls::acceptor(
            semithin_server::http::tls::server_config(&cert, &key)?,
        )),
        None => None,
    };
    let relay = semithin_relay::Relay::open(cfg, key)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        relay.start_reporting();
        note!(
            "semithin-relay: serving on {}",
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        // The server's own accept loop: a cap on connections, a header timeout, a stall
        // timeout on answers nobody reads.
        let limits = semithin_server::http::serve::Limits {
            header_timeout: std::time::Duration::from_secs(15),
            idle_timeout: std::time::Duration::from_secs(60),
            max_connections,
        };
        semithin_server::http::serve::serve(listener, relay.router(), tls, limits, shutdown)
            .await?;
        anyhow::Ok(())
    })
}
