//! semithin's repository of root-filesystem versions: content-addressed, deduplicated,
//! verified on every read. Plain synchronous Rust; no network I/O.
//!
//! The data flows one way: a source (directory or tar) is scanned ([`import`]), its files are
//! split into chunks ([`chunker`]) stored in packs ([`objects`]), directories become tree objects
//! ([`memtree`]), and a commit names the root tree; channels ([`channel`]) name commits.

pub mod acl;
pub mod channel;
pub mod checkout;
pub mod chunker;
pub mod compose;
pub mod diff;
pub mod error;
pub mod export;
pub mod fsck;
pub mod fsutil;
pub mod gc;
pub mod id;
pub mod import;
pub mod memtree;
pub mod merge;
pub mod object;
pub mod objects;
pub mod pack;
pub mod progress;
pub mod reach;
pub mod refs;
pub mod repo;
mod scan_dir;
mod scan_tar;
pub mod transfer;
pub mod verified;
pub mod walk;

pub use error::{Error, Result};
pub use id::{ChunkId, CommitId, FileHash, TreeId};
pub use progress::{NoProgress, Progress};
pub use repo::{Access, Repo};
pub use verified::VerifiedObject;

/// Seconds since the Unix epoch.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
