//! Errors of the store.
//!
//! Rules: one variant per kind of failure a caller may want to tell apart; every variant names
//! what it is about (a path, an object id, a ref); I/O errors always carry the path they happened
//! on, so a message read alone tells the admin where to look.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a semithin repository (no config file); create one with `semithin repo init`"
    )]
    NotARepo { path: PathBuf },
    #[error(
        "{path} already exists and is not empty; a repository is made in a new or empty directory"
    )]
    RepoExists { path: PathBuf },
    #[error(
        "repository {path} has format version {found}, newer than this semithin supports ({supported}); upgrade semithin"
    )]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("repository config {path}: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("{kind} object {id} is missing from the repository")]
    Missing { kind: &'static str, id: String },
    #[error("{kind} object {id} is corrupt: {reason}")]
    Corrupt {
        kind: &'static str,
        id: String,
        reason: String,
    },
    #[error("{kind} object {id} cannot be read: {reason}")]
    BadObject {
        kind: &'static str,
        id: String,
        reason: String,
    },
    #[error("pack index {path} is damaged: {reason}")]
    BadPackIndex { path: PathBuf, reason: String },
    #[error(
        "{0:?} is not a valid channel name (letters, digits, '.', '_', '-', '/' between parts; no '..')"
    )]
    BadChannelName(String),
    #[error("no channel named {0:?}")]
    NoSuchChannel(String),
    #[error("channel log {path} is damaged: {reason}")]
    BadChannelLog { path: PathBuf, reason: String },
    #[error("{0:?} matches no commit or channel")]
    UnknownRef(String),
    #[error("{prefix:?} is ambiguous: it starts {count} commit ids")]
    AmbiguousRef { prefix: String, count: usize },
    #[error("{reference:?}: {reason}")]
    BadRef { reference: String, reason: String },
    #[error("archive {archive}: {reason}")]
    BadArchive { archive: PathBuf, reason: String },
    #[error("source {path}: {reason}")]
    BadSource { path: PathBuf, reason: String },
    #[error(
        "{path} exists and is not empty; checkout writes only into a missing or empty directory"
    )]
    DestNotEmpty { path: PathBuf },
    #[error("path {path:?} not found in {commit}")]
    NoSuchPath { path: String, commit: String },
    #[error("cherry-pick conflicts on {} path(s):\n  {}", .0.len(), .0.join("\n  "))]
    Conflicts(Vec<String>),
    #[error("{tool}: {reason}")]
    Tool { tool: &'static str, reason: String },
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl AsRef<Path>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.as_ref().to_owned();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}
