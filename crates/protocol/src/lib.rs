//! What the semithin server and agent say to each other (docs/PROTOCOL.md), in one place.
//!
//! - [`api`]: the JSON bodies of `/api/v1`, for agents and for the admin;
//! - [`boot`]: boot artifacts (their names and TUF targets) and MAC addresses for network boot;
//! - [`capture`]: a machine's writable layer sent to the server, and its listing;
//! - [`ids`]: the ids that cross the network (`ReleaseId`, `MachineId`, ...), validated at parse;
//! - [`rollout`]: the bodies of the rollout admin API;
//! - [`sign`]: how an enrolled machine signs its requests with its own ed25519 key;
//! - [`path`]: server-relative paths a check-in answer names, checked so they stay on the server;
//! - [`relay`]: what relays send of their own: batches of their children's check-ins, their health;
//! - [`selector`]: label selectors (`site=school-12,class=lab`) and label syntax;
//! - [`job`]: jobs for machines, their schema, signatures and schedules (cron in a time zone);
//! - [`duration`]: the one syntax of durations (`30m`, `1h30m`, `2d 3h`);
//! - [`json`]: parsing outside JSON with errors that name the field;
//! - [`inventory`]: the packages a machine has and the updates it lacks;
//! - [`near`]: names near a misspelt one, for errors that suggest what was meant;
//! - [`trust`]: the server's renewal of the signed metadata, for the admin;
//! - [`vars`]: signed variable sets, their scopes, machine facts (per-machine configuration).
//!
//! Plain synchronous Rust with no network: the server and the agent are the shells around it.

pub mod api;
pub mod audit;
pub mod boot;
pub mod capture;
pub mod duration;
pub mod ids;
pub mod inventory;
pub mod job;
pub mod json;
pub mod near;
pub mod path;
pub mod relay;
pub mod rollout;
pub mod selector;
pub mod sign;
pub mod torrent;
pub mod trust;
pub mod vars;

/// The version of the protocol, the `v1` in `/api/v1`.
pub const API: &str = "/api/v1";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad label selector {selector:?}: {reason}")]
    Selector { selector: String, reason: String },
    #[error("bad label {label:?}: {reason}")]
    Label { label: String, reason: String },
    #[error("bad machine name {name:?}: {reason}")]
    Name { name: String, reason: String },
    #[error("request signature refused: {0}")]
    Signature(String),
    #[error("machine key {path}: {reason}")]
    Key { path: String, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;
