//! Deltas between releases: what a machine running release A needs to reach release B.
//!
//! - [`listing`]: the trees and files of a release, read from a store;
//! - [`order`]: the canonical order of what B has and A lacks, which the builder and the
//!   applier derive alike, so a pack names its items by position instead of by id;
//! - [`plan`]: the pure decision: for every tree and file B adds, which old content of A (same
//!   path, or the same file renamed) it is patched against;
//! - [`build`]: a pack from a plan: trees and patches compressed with zstd against the old
//!   content, new files compressed together with xz (x86 filter for programs), bsdiff where it
//!   beats both;
//! - [`apply`]: a pack into a store that holds A; every object is verified against its id before
//!   it is stored, so a bad pack is an error, never a broken release.
//!
//! The pack format is in [`pack`] and docs/FORMAT.md ("Delta packs"). No network I/O.

pub mod apply;
pub mod bspatch;
pub mod build;
pub mod error;
pub mod gz;
pub mod listing;
pub mod order;
pub mod pack;
pub mod plan;

pub use error::{Error, Result};
