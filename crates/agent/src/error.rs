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
    /// The cause is not part of the message: [`render`] writes the whole chain.
    #[error("{what} {path}")]
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

/// An error with every cause behind it, as the admin reads it (the agent's report, its log, the
/// command line). A full disk is named as such, with what to do.
pub fn render(e: &(dyn std::error::Error + 'static)) -> String {
    let is_full = |x: &(dyn std::error::Error + 'static)| {
        x.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
    };
    let mut s = e.to_string();
    let mut full = is_full(e);
    let mut src = e.source();
    while let Some(x) = src {
        full |= is_full(x);
        let t = x.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = x.source();
    }
    if full {
        s = format!(
            "the disk is full: {s} (free space on the machine; what this try left is removed, \
             and the next one starts again)"
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_is_rendered_once_and_a_full_disk_is_named() {
        let full =
            Error::io("writing", "/state/tmp/a-b.pack.part")(std::io::Error::from_raw_os_error(28));
        assert_eq!(full.to_string(), "writing /state/tmp/a-b.pack.part");
        let r = render(&full);
        assert!(
            r.starts_with("the disk is full: writing /state/tmp/a-b.pack.part: "),
            "{r}"
        );
        assert!(r.contains("No space left on device"), "{r}");
        let denied = Error::io("writing", "/x")(std::io::Error::from_raw_os_error(13));
        let r = render(&denied);
        assert_eq!(r, "writing /x: Permission denied (os error 13)");
    }
}
