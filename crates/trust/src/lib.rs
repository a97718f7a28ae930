//! semithin's trust: releases signed as The Update Framework (TUF, specification 1.0) metadata,
//! and a client that verifies them as the specification's client workflow requires.
//! No network I/O: the client fetches through the [`client::Fetcher`] trait, and the publisher
//! ([`repo`]) writes a directory that any static file server can serve.

pub mod cjson;
pub mod client;
pub mod clock;
pub mod digest;
pub mod error;
mod fsutil;
pub mod keys;
pub mod metadata;
pub mod release;
pub mod repo;
pub mod trusted;

pub use clock::now;

pub use error::{Error, Result};
