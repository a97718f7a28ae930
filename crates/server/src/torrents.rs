//! BitTorrent on the server (docs/TORRENT.md): a private torrent for each delta pack and boot
//! artifact a machine asks one of, made on its first request (SHA-1 pieces over the file) and
//! kept in memory; the tracker (`GET /announce/PASSKEY`, crates/swarm's pure tracker behind a
//! passkey check); and, with `torrent.seed`, the server's own seeder (librqbit through the
//! `Swarm` trait) sharing every torrent it made.
//!
//! Passkeys: `MAC.OWNER`, OWNER a machine id (or `admin`, `server`), MAC the first 16 bytes
//! of BLAKE3 keyed with DATA/torrent-secret over the owner, in hex. Nothing is stored per
//! machine: a removed machine's passkey is refused because the machine is gone.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use semithin_swarm::rqbit::{Options, Rqbit};
use semithin_swarm::tracker::Tracker;
use semithin_swarm::{Metainfo, SeedUntil, Swarm, Torrent};

use crate::error::{Error, Result};

/// `[torrent]` in the server's configuration.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TorrentConfig {
    /// Serve torrent files and run the tracker.
    pub enabled: bool,
    /// Seed every torrent made (the server is the swarm's first seeder).
    pub seed: bool,
    /// TCP port the seeder listens on; 0 picks a free one at start.
    pub port: u16,
    /// The seeder's upload limit in bytes per second (none by default).
    pub upload_bps: Option<u32>,
    /// The most downloading peers the tracker gives the seeder to at a time, while no peer
    /// has the whole file (they share with the rest); 0: 2.
    pub feeds: usize,
}

/// A torrent the server made.
pub struct Made {
    pub kind: &'static str,
    pub meta: Metainfo,
    pub info_hash: [u8; 20],
    pub file: PathBuf,
    /// The file's modification time when it was hashed: a pack built again is another file.
    modified: Option<std::time::SystemTime>,
}

pub struct Torrents {
    pub cfg: TorrentConfig,
    secret: [u8; 32],
    pub tracker: Mutex<Tracker>,
    made: Mutex<HashMap<PathBuf, Arc<Made>>>,
    /// One file hashed at a time.
    making: tokio::sync::Mutex<()>,
    seeder: Option<Arc<Rqbit>>,
}

impl Torrents {
    /// Reads (or makes, on first start) DATA/torrent-secret; starts the seeder when asked.
    pub fn new(data: &Path, cfg: TorrentConfig) -> Result<Self> {
        let path = data.join("torrent-secret");
        let mut secret = [0u8; 32];
        if cfg.enabled {
            match std::fs::read(&path) {
                Ok(b) if b.len() == 32 => secret.copy_from_slice(&b),
                _ => {
                    getrandom::fill(&mut secret)
                        .map_err(|e| Error::Config(format!("random bytes: {e}")))?;
                    semithin_store::fsutil::replace_atomic(&path, data, &secret)?;
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                        .map_err(Error::io("protecting", &path))?;
                }
            }
        }
        let seeder = if cfg.enabled && cfg.seed {
            let r = Rqbit::start(Options {
                dir: data.join("torrent-session"),
                port: cfg.port,
                listen_ip: None,
                upload_bps: cfg.upload_bps,
                peer_limit: None,
                no_trackers: true,
            })
            .map_err(|e| Error::Config(format!("starting the torrent seeder: {e}")))?;
            tracing::info!(port = r.port(), "seeding torrents");
            Some(Arc::new(r))
        } else {
            None
        };
        let mut tracker = Tracker::default();
        if cfg.feeds > 0 {
            tracker.feeds = cfg.feeds;
        }
        Ok(Self {
            cfg,
            secret,
            tracker: Mutex::new(tracker),
            made: Default::default(),
            making: Default::default(),
            seeder,
        })
    }

    fn mac(&self, owner: &str) -> String {
        let h = blake3::keyed_hash(&self.secret, owner.as_bytes());
        hex::encode(&h.as_bytes()[..16])
    }

    /// The passkey of `owner` (a machine id, `admin` or `server`).
    pub fn passkey(&self, owner: &str) -> String {
        format!("{}.{owner}", self.mac(owner))
    }

    /// Who a passkey names, if it is one the server made (the caller checks that a machine
    /// still exists).
    pub fn owner<'a>(&self, passkey: &'a str) -> Option<&'a str> {
        let (mac, owner) = passkey.split_once('.')?;
        let want = self.mac(owner);
        // constant time: compare as BLAKE3 hashes of both
        (blake3::hash(mac.as_bytes()) == blake3::hash(want.as_bytes())).then_some(owner)
    }

    /// The seeder's port and upload for a torrent, when it seeds.
    pub fn seeder_port(&self) -> Option<u16> {
        self.seeder.as_ref().map(|s| s.port())
    }

    pub fn uploaded(&self, info_hash: &[u8; 20]) -> Option<u64> {
        self.seeder.as_ref().and_then(|s| s.uploaded(info_hash))
    }

    pub fn list(&self) -> Vec<Arc<Made>> {
        let mut v: Vec<_> = self.made.lock().expect("lock").values().cloned().collect();
        v.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        v
    }

    /// The torrent of `file` (named `name` in the torrent), made now if it is new or its file
    /// changed; registered with the tracker and seeded.
    pub async fn of(&self, kind: &'static str, file: PathBuf, name: String) -> Result<Arc<Made>> {
        let md = std::fs::metadata(&file).map_err(Error::io("reading", &file))?;
        let (len, modified) = (md.len(), md.modified().ok());
        let cached = |this: &Self| {
            this.made
                .lock()
                .expect("lock")
                .get(&file)
                .filter(|m| m.meta.length == len && m.modified == modified)
                .cloned()
        };
        if let Some(m) = cached(self) {
            return Ok(m);
        }
        let _one = self.making.lock().await;
        if let Some(m) = cached(self) {
            return Ok(m);
        }
        let f = file.clone();
        let n = name.clone();
        let meta = tokio::task::spawn_blocking(move || {
            let r = std::fs::File::open(&f).map_err(Error::io("opening", &f))?;
            Metainfo::hash(&n, len, std::io::BufReader::with_capacity(1 << 20, r))
                .map_err(|e| Error::Config(format!("hashing {} for its torrent: {e}", f.display())))
        })
        .await
        .map_err(|e| Error::Config(format!("hashing a torrent: {e}")))??;
        let info_hash = meta.info_hash();
        let made = Arc::new(Made {
            kind,
            meta,
            info_hash,
            file: file.clone(),
            modified,
        });
        self.tracker.lock().expect("lock").register(info_hash);
        if let Some(s) = &self.seeder {
            let bytes = made.meta.torrent("http://127.0.0.1/announce/none");
            let t = Torrent::parse(bytes).map_err(|e| Error::Config(e.to_string()))?;
            let s = s.clone();
            let f = file.clone();
            // the seeder checks the file's pieces before it shares them
            tokio::task::spawn_blocking(move || s.seed(&t, &f, SeedUntil::default(), false))
                .await
                .map_err(|e| Error::Config(format!("seeding: {e}")))?
                .map_err(|e| Error::Config(format!("seeding {}: {e}", file.display())))?;
        }
        tracing::info!(
            kind, name, info_hash = %semithin_swarm::metainfo::hex(&info_hash),
            bytes = len, "torrent made"
        );
        let old = self
            .made
            .lock()
            .expect("lock")
            .insert(file.clone(), made.clone());
        if let Some(old) = old
            && old.info_hash != made.info_hash
        {
            self.tracker.lock().expect("lock").forget(&old.info_hash);
            if let Some(s) = self.seeder.clone() {
                let h = old.info_hash;
                let _ = tokio::task::spawn_blocking(move || s.stop(&h, false)).await;
            }
        }
        Ok(made)
    }

    /// The server's own seeding peer as `ip` (the address the asking peer reached the server
    /// on) sees it.
    pub fn server_peer(&self, local: Option<SocketAddr>) -> Option<SocketAddr> {
        Some(SocketAddr::new(local?.ip(), self.seeder_port()?))
    }
}
