use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {what}: {source}")]
    Db {
        what: String,
        #[source]
        source: sqlx::Error,
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
    #[error(transparent)]
    Store(#[from] semithin_store::Error),
    #[error(transparent)]
    Trust(#[from] semithin_trust::Error),
    /// Something another process holds: try again later (503).
    #[error("{0}")]
    Busy(String),
}

impl Error {
    pub fn db(what: &str, source: sqlx::Error) -> Self {
        Error::Db {
            what: what.to_owned(),
            source,
        }
    }

    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
