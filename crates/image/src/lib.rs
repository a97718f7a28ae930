//! Root filesystems from a package list.
//!
//! - [`profile`]: the profile file format, parsed and validated without touching anything;
//! - [`dpkg`], [`apt`]: pure readers of dpkg's status file and of apt's output;
//! - [`chroot`], [`build`]: the I/O: mmdebstrap into a build directory, apt and scripts in a
//!   chroot whose mounts never outlive it, the tree cleaned and its times clamped.
//!
//! The crate knows nothing of the repository: the binary commits what it builds.

pub mod apt;
pub mod build;
pub mod chroot;
pub mod dpkg;
pub mod profile;
pub mod stack;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set when the user interrupted (ctrl-c): a failing step then says so instead of explaining.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Records an interrupt (the binary's signal handler calls it).
pub fn set_interrupted() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// What a long step reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A new step begins.
    Step(&'a str),
    /// A line of a program's output.
    Line(&'a str),
}

/// A failure of a build or a chroot step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {detail}")]
    Failed { what: String, detail: String },
    #[error("{0}")]
    Invalid(String),
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    pub(crate) fn io(
        what: &'static str,
        path: impl AsRef<Path>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.as_ref().to_owned();
        move |source| Error::Io { what, path, source }
    }
}
