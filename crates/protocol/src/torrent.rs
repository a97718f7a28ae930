//! Torrents on the wire (docs/TORRENT.md): what the admin reads of the server's torrents.

use serde::{Deserialize, Serialize};

/// Response header of a torrent file (`GET /api/v1/torrents/...`): how many whole copies its
/// swarm has (the server's seeder and the peers that finished). `0`: nobody can send it all, so
/// the machine fetches over HTTP at once.
pub const SWARM_COMPLETE: &str = "x-semithin-swarm-complete";

/// One torrent the server made, as `GET /api/v1/admin/torrents` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TorrentInfo {
    /// `delta`, `full` (a full-release pack) or `boot`.
    pub kind: String,
    /// The file's name in the torrent (`FROM-TO.pack`, FROM all zeros for a full-release pack; `SHA256-NAME`).
    pub name: String,
    /// The info hash, 40 lower-case hex digits.
    pub info_hash: String,
    pub length: u64,
    pub piece_length: u64,
    /// Bytes the server's seeder uploaded for it (absent when the server does not seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded: Option<u64>,
    /// Peers the tracker knows: with the whole file, and still downloading.
    pub seeders: u64,
    pub leechers: u64,
}
