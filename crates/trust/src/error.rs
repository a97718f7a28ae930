//! Errors of the trust library. Every verification failure names the role (and the file or URL)
//! it is about, so an admin reading one line knows which metadata to look at.

use std::path::PathBuf;

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
    #[error("{role}: cannot parse metadata: {reason}")]
    Parse { role: String, reason: String },
    #[error("{role}: {reason}")]
    Invalid { role: String, reason: String },
    #[error("{role}: {valid} valid signature(s) from authorised keys, threshold is {threshold}")]
    Threshold {
        role: String,
        valid: usize,
        threshold: u64,
    },
    #[error(
        "{role}: version {found} is older than the trusted version {trusted} (rollback attack?)"
    )]
    Rollback {
        role: String,
        found: u64,
        trusted: u64,
    },
    #[error("{role}: expected version {expected}, got {found}")]
    WrongVersion {
        role: String,
        expected: u64,
        found: u64,
    },
    #[error("{role}: expired at {expires} (reference time {now})")]
    Expired {
        role: String,
        expires: String,
        now: String,
    },
    #[error("{what}: length or hash does not match the signed metadata ({reason})")]
    Mismatch { what: String, reason: String },
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("fetching {url}: more than {limit} bytes, the limit for this file")]
    TooLarge { url: String, limit: u64 },
    #[error("the trusted metadata in {path} is damaged ({reason}); refusing to go on without it")]
    TrustedDamaged { path: PathBuf, reason: String },
    #[error("target {0:?} is not a safe name (absolute, '..', empty part or control character)")]
    UnsafeTargetName(String),
    #[error("target {0:?} is not listed by any trusted targets role")]
    UnknownTarget(String),
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("trust repository {path}: {reason}")]
    TrustRepo { path: PathBuf, reason: String },
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }

    pub(crate) fn invalid(role: &str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            role: role.to_owned(),
            reason: reason.into(),
        }
    }
}
