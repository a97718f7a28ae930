//! `GET /api/v1/admin/audit`: the audit log of admin requests that ask for a change.

use serde::{Deserialize, Serialize};

/// One admin request that asked for a change, allowed or refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// Seconds since the Unix epoch.
    pub at: i64,
    /// `admin:FINGERPRINT` (16 hex digits of the token's BLAKE3: which admin token) or
    /// `refused` (a wrong or missing token).
    pub actor: String,
    /// The user the client says sent it (`X-Semithin-User`; the CLI sends the login name):
    /// told, not proven.
    pub user: Option<String>,
    /// The client's address (the first untrusted hop behind trusted proxies).
    pub ip: String,
    pub method: String,
    pub path: String,
    /// The request body when it was JSON (at most 4 KiB of it), else its size.
    pub request: String,
    pub status: u16,
    /// The machines the answer names (accepted, assigned, removed, woken, ...).
    pub machines: Vec<String>,
    pub error: Option<String>,
}

/// The header the CLI sends with the name of the user running it.
pub const USER_HEADER: &str = "x-semithin-user";
