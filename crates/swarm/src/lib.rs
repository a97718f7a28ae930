//! BitTorrent among a site's machines (docs/TORRENT.md). The pure parts — bencode, the
//! torrent files we make (private, deterministic info dicts), the tracker's announce parsing
//! and peer table — are apart from I/O; [`Swarm`] is the one door to a BitTorrent client, and
//! [`rqbit::Rqbit`] implements it with librqbit.
//!
//! The torrent is transport only: what a swarm delivers is checked by the caller against what
//! the server announced (length, then every object against the signed release).

pub mod bencode;
pub mod metainfo;
pub mod rqbit;
pub mod tracker;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use metainfo::Metainfo;

/// A torrent file as the server served it, and what it says.
#[derive(Clone, Debug)]
pub struct Torrent {
    pub bytes: Vec<u8>,
    pub meta: Metainfo,
    pub info_hash: [u8; 20],
}

impl Torrent {
    /// Reads a torrent file of ours (see [`Metainfo::parse`]).
    pub fn parse(bytes: Vec<u8>) -> Result<Self, metainfo::MetainfoError> {
        let (meta, _) = Metainfo::parse(&bytes)?;
        let info_hash = meta.info_hash();
        Ok(Self {
            bytes,
            meta,
            info_hash,
        })
    }
}

/// How long to seed a torrent: until `time` has passed or `ratio` × its length was uploaded,
/// whichever comes first; `None` for both is for as long as the process runs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SeedUntil {
    pub time: Option<Duration>,
    pub ratio: Option<f64>,
}

/// What a client exchanged with peers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub received: u64,
    pub sent: u64,
}

/// A download the swarm finished: the file, verified piece by piece against the torrent.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub path: PathBuf,
    /// Bytes received from peers (what was already on disk not counted).
    pub bytes: u64,
    pub secs: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("no peer sent anything for {0:?}")]
    NoProgress(Duration),
    #[error("the swarm did not finish within {0:?}")]
    Deadline(Duration),
    #[error("BitTorrent client: {0}")]
    Client(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A BitTorrent client as semithin uses one.
pub trait Swarm: Send + Sync {
    /// Downloads the torrent's file into `dir` (as `dir/NAME`), seeding what it has meanwhile.
    /// Gives up when no byte arrives for `patience`, or after `deadline` in all, removing
    /// what it wrote; on success the torrent stays in the session (see [`Swarm::seed`]).
    fn fetch(
        &self,
        torrent: &Torrent,
        dir: &Path,
        patience: Duration,
        deadline: Duration,
    ) -> Result<Fetched, SwarmError>;

    /// Seeds `file` (whose name must be the torrent's) until `until`; then the torrent is
    /// removed from the session, and the file too when `remove_file`.
    fn seed(
        &self,
        torrent: &Torrent,
        file: &Path,
        until: SeedUntil,
        remove_file: bool,
    ) -> Result<(), SwarmError>;

    /// Stops sharing a torrent (and removes its file when `remove_file`).
    fn stop(&self, info_hash: &[u8; 20], remove_file: bool);

    /// Bytes uploaded for a torrent in this session, while it is in the session.
    fn uploaded(&self, info_hash: &[u8; 20]) -> Option<u64>;

    /// Bytes received from and sent to peers by this client since it started, all torrents.
    fn totals(&self) -> Totals;

    /// The port peers reach this client on.
    fn port(&self) -> u16;
}
