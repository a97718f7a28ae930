use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("server {url}: {reason}")]
    Server { url: String, reason: String },
    /// The server answered with an error status and a reason.
    #[error("server refused {what} (HTTP {status}): {reason}")]
    Refused {
        what: String,
        status: u16,
        reason: String,
    },
    #[error("{0}")]
    Config(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another semithin agent is working on {dir} (the daemon verifies and repairs its \
         deployment by itself; stop it first to do this by hand)"
    )]
    Busy { dir: PathBuf },
    #[error("release {release}: {reason}")]
    Release { release: String, reason: String },
    /// The server names a channel this machine does not follow.
    #[error("channel refused: {0}")]
    Channel(String),
    #[error(transparent)]
    Store(#[from] semithin_store::Error),
    #[error(transparent)]
    Trust(#[from] semithin_trust::Error),
    #[error(transparent)]
    Protocol(#[from] semithin_protocol::Error),
    /// A path the server named that could leave it (another host, outside `/api/v1/`).
    #[error("refused a path the server named: {0}")]
    BadPath(#[from] semithin_protocol::path::BadPath),
}

impl Error {
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }

    /// Whether trying again later may help (the server is away or overloaded).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Server { .. } => true,
            Error::Refused { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
