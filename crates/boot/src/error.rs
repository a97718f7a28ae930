//! Errors of building boot artifacts. Each names what it is about, so a message read alone tells
//! the admin what to do.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] semithin_store::Error),
    #[error("the release has no kernel to boot: {reason}")]
    NoKernel { reason: String },
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {what}")]
    Write {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0:?} is not a kernel module name (letters, digits, '_' and '-', at most 64 characters)"
    )]
    BadModule(String),
    #[error(
        "{path} exists and is not an empty directory; boot artifacts are written into a new or empty one"
    )]
    OutNotEmpty { path: PathBuf },
    #[error("the semithin binary {path} for the initrd cannot be read: {source}")]
    Binary {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mkinitramfs failed in a checkout of the release ({status}):\n{output}")]
    Initrd { status: String, output: String },
    #[error("the image's own initrd cannot be used: {reason}")]
    ImageInitrd { reason: String },
    #[error("{tool}: {reason}")]
    Tool { tool: &'static str, reason: String },
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
}
