//! Errors of the delta crate. A pack that is malformed, does not fit the releases it claims, or
//! yields content that does not hash to what the release names is [`Error::BadPack`], with the
//! item it concerns; the caller discards the pack and fetches objects instead.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("delta pack: {0}")]
    BadPack(String),
    #[error("release {release}: {reason}")]
    Release { release: String, reason: String },
    #[error("delta pack: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] semithin_store::Error),
}

impl Error {
    pub fn bad(reason: impl Into<String>) -> Self {
        Error::BadPack(reason.into())
    }

    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
