//! [`Swarm`](crate::Swarm) with librqbit: a session on its own tokio runtime (the agent is
//! synchronous; the server's runtime is left to HTTP), TCP only, IPv4, no DHT, no local
//! service discovery, no UPnP. Our torrents are private (BEP 27), which librqbit honours: no
//! PEX, no DHT, only the torrent's own tracker.
//!
//! Traps (docs/TORRENT.md): the session announces port 4240 unless `announce_port` is set, so
//! a free port is chosen here when none is given; `create_torrent` cannot make private
//! torrents (we make them in [`crate::metainfo`]); a file to seed must sit at
//! `output_folder/NAME` and be added with `overwrite` (librqbit checks its pieces first).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use librqbit::{
    AddTorrent, AddTorrentOptions, ListenerMode, ListenerOptions, ManagedTorrent, Session,
    SessionOptions, api::TorrentIdOrHash, limits::LimitsConfig,
};

type ManagedTorrentHandle = Arc<ManagedTorrent>;

use crate::{Fetched, SeedUntil, Swarm, SwarmError, Torrent, Totals};

/// How a client is set up.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Where the session keeps what it needs (nothing persistent: no resume files).
    pub dir: PathBuf,
    /// TCP port for peers; 0 picks a free one.
    pub port: u16,
    /// Address to listen on (all IPv4 addresses by default).
    pub listen_ip: Option<Ipv4Addr>,
    /// Upload rate limit, bytes per second.
    pub upload_bps: Option<u32>,
    /// Most peers per torrent at once.
    pub peer_limit: Option<usize>,
    /// Announce to no tracker (a seeder the tracker lists by itself, as the server's is).
    pub no_trackers: bool,
}

struct Entry {
    handle: ManagedTorrentHandle,
    /// The task that ends its seeding, if any.
    until: Option<tokio::task::JoinHandle<()>>,
}

pub struct Rqbit {
    rt: Option<tokio::runtime::Runtime>,
    session: Arc<Session>,
    port: u16,
    torrents: Arc<Mutex<HashMap<[u8; 20], Entry>>>,
}

fn client(e: impl std::fmt::Display) -> SwarmError {
    SwarmError::Client(format!("{e:#}"))
}

/// A free TCP port on the address (bound, then released for the session to bind).
fn free_port(ip: Ipv4Addr) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

impl Rqbit {
    pub fn start(opts: Options) -> Result<Self, SwarmError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("swarm")
            .enable_all()
            .build()?;
        std::fs::create_dir_all(&opts.dir)?;
        let ip = opts.listen_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let port = if opts.port == 0 {
            free_port(ip)?
        } else {
            opts.port
        };
        let session_opts = SessionOptions {
            dht: None,
            disable_trackers: opts.no_trackers,
            disable_local_service_discovery: true,
            fastresume: false,
            persistence: None,
            ipv4_only: true,
            listen: Some(ListenerOptions {
                mode: ListenerMode::TcpOnly,
                listen_addr: SocketAddr::from((ip, port)),
                enable_upnp_port_forwarding: false,
                announce_port: Some(port),
                ipv4_only: true,
                ..Default::default()
            }),
            ratelimits: LimitsConfig {
                upload_bps: opts.upload_bps.and_then(NonZeroU32::new),
                download_bps: None,
            },
            peer_limit: opts.peer_limit,
            client_name_and_version: Some(format!("semithin {}", env!("CARGO_PKG_VERSION"))),
            ..Default::default()
        };
        let dir = opts.dir.clone();
        let session = rt
            .block_on(Session::new_with_opts(dir, session_opts))
            .map_err(client)?;
        Ok(Self {
            rt: Some(rt),
            session,
            port,
            torrents: Default::default(),
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("running until dropped")
    }

    /// Adds a torrent with its file in `dir` (or gives the one already there).
    async fn add(
        session: &Arc<Session>,
        t: &Torrent,
        dir: &Path,
    ) -> Result<ManagedTorrentHandle, SwarmError> {
        let opts = AddTorrentOptions {
            output_folder: Some(dir.to_string_lossy().into_owned()),
            overwrite: true,
            ..Default::default()
        };
        let added = session
            .add_torrent(
                AddTorrent::TorrentFileBytes(t.bytes.clone().into()),
                Some(opts),
            )
            .await
            .map_err(client)?;
        let h = added
            .into_handle()
            .ok_or_else(|| client("the torrent was only listed"))?;
        h.wait_until_initialized().await.map_err(client)?;
        Ok(h)
    }

    fn remove(&self, info_hash: &[u8; 20], remove_file: bool) {
        let Some(e) = self.torrents.lock().expect("lock").remove(info_hash) else {
            return;
        };
        if let Some(t) = e.until {
            t.abort();
        }
        let session = self.session.clone();
        let id = TorrentIdOrHash::Id(e.handle.id());
        let _ = self.rt().block_on(session.delete(id, remove_file));
    }
}

impl Drop for Rqbit {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            // within another runtime (a server stopping) it cannot be waited for
            if tokio::runtime::Handle::try_current().is_err() {
                let s = self.session.clone();
                rt.block_on(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(2), s.stop()).await;
                });
            }
            rt.shutdown_background();
        }
    }
}

impl Swarm for Rqbit {
    fn fetch(
        &self,
        torrent: &Torrent,
        dir: &Path,
        patience: Duration,
        deadline: Duration,
    ) -> Result<Fetched, SwarmError> {
        std::fs::create_dir_all(dir)?;
        let start = Instant::now();
        let session = self.session.clone();
        let got = self.rt().block_on(async {
            let h = tokio::time::timeout(deadline, Self::add(&session, torrent, dir))
                .await
                .map_err(|_| (SwarmError::Deadline(deadline), None))?
                .map_err(|e| (e, None))?;
            let initial = h.stats().progress_bytes;
            let mut last = initial;
            let mut moved = Instant::now();
            loop {
                let s = h.stats();
                if let Some(e) = s.error {
                    return Err((client(e), Some(h)));
                }
                if s.finished {
                    return Ok((h, s.progress_bytes.saturating_sub(initial)));
                }
                // blocks received count as progress, not only whole checked pieces
                let live = s.live.as_ref();
                let got = s
                    .progress_bytes
                    .max(live.map_or(0, |l| l.snapshot.fetched_bytes));
                if got > last {
                    last = got;
                    moved = Instant::now();
                }
                // connected to peers that have nothing yet (the swarm starting): a while longer
                let peers = live.map_or(0, |l| l.snapshot.peer_stats.live);
                let wait = if peers > 0 { patience * 3 } else { patience };
                if moved.elapsed() >= wait {
                    return Err((SwarmError::NoProgress(patience), Some(h)));
                }
                if start.elapsed() >= deadline {
                    return Err((SwarmError::Deadline(deadline), Some(h)));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        match got {
            Ok((handle, bytes)) => {
                self.torrents.lock().expect("lock").insert(
                    torrent.info_hash,
                    Entry {
                        handle,
                        until: None,
                    },
                );
                Ok(Fetched {
                    path: dir.join(&torrent.meta.name),
                    bytes,
                    secs: start.elapsed().as_secs_f64(),
                })
            }
            Err((e, h)) => {
                if let Some(h) = h {
                    let id = TorrentIdOrHash::Id(h.id());
                    let _ = self.rt().block_on(session.delete(id, true));
                }
                Err(e)
            }
        }
    }

    fn seed(
        &self,
        torrent: &Torrent,
        file: &Path,
        until: SeedUntil,
        remove_file: bool,
    ) -> Result<(), SwarmError> {
        if file.file_name().and_then(|n| n.to_str()) != Some(torrent.meta.name.as_str()) {
            return Err(client(format!(
                "{} is not named {} as the torrent's file",
                file.display(),
                torrent.meta.name
            )));
        }
        let dir = file.parent().unwrap_or(Path::new("."));
        let known = self
            .torrents
            .lock()
            .expect("lock")
            .get(&torrent.info_hash)
            .map(|e| e.handle.clone());
        let session = self.session.clone();
        let handle = match known {
            Some(h) => h,
            None => self.rt().block_on(Self::add(&session, torrent, dir))?,
        };
        if until == SeedUntil::default() {
            let mut m = self.torrents.lock().expect("lock");
            m.insert(
                torrent.info_hash,
                Entry {
                    handle,
                    until: None,
                },
            );
            return Ok(());
        }
        let length = torrent.meta.length.max(1) as f64;
        let hash = torrent.info_hash;
        let map = self.torrents.clone();
        let h = handle.clone();
        let task = self.rt().spawn(async move {
            let start = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let up = h.stats().uploaded_bytes as f64;
                let timed = until.time.is_some_and(|t| start.elapsed() >= t);
                let ratio = until.ratio.is_some_and(|r| up >= r * length);
                if timed || ratio {
                    break;
                }
            }
            map.lock().expect("lock").remove(&hash);
            let _ = session
                .delete(TorrentIdOrHash::Id(h.id()), remove_file)
                .await;
        });
        let old = self.torrents.lock().expect("lock").insert(
            torrent.info_hash,
            Entry {
                handle,
                until: Some(task),
            },
        );
        if let Some(t) = old.and_then(|e| e.until) {
            t.abort();
        }
        Ok(())
    }

    fn stop(&self, info_hash: &[u8; 20], remove_file: bool) {
        self.remove(info_hash, remove_file);
    }

    fn uploaded(&self, info_hash: &[u8; 20]) -> Option<u64> {
        let m = self.torrents.lock().expect("lock");
        m.get(info_hash).map(|e| e.handle.stats().uploaded_bytes)
    }

    fn totals(&self) -> Totals {
        let c = self.session.stats_snapshot().counters;
        Totals {
            received: c.fetched_bytes,
            sent: c.uploaded_bytes,
        }
    }

    fn port(&self) -> u16 {
        self.port
    }
}
