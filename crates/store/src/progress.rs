//! Progress reporting from long work, without tying the library to a terminal.

/// Receives progress from long operations. Called from several threads.
pub trait Progress: Sync {
    /// A new phase starts; `total` is in the phase's unit (bytes or items) when known.
    fn phase(&self, _name: &str, _total: Option<u64>) {}
    /// `n` more units of the current phase are done.
    fn advance(&self, _n: u64) {}
    /// Something the admin should know that does not stop the work.
    fn warn(&self, _message: &str) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
