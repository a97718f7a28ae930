//! `GET /api/v1/admin/trust`: whether the server keeps the signed TUF metadata fresh, and what
//! the admin must do when it cannot (docs/TRUST.md, "Keeping metadata fresh").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The server's view of the trust metadata it serves.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrustHealth {
    /// False while machines cannot verify releases (something expired) or soon will not
    /// without the admin: then `problems` says what to do.
    pub ok: bool,
    /// When the server last looked (Unix seconds); `None` before its first look.
    pub checked_at: Option<i64>,
    /// When the server last signed a new snapshot or timestamp, and what it signed
    /// (`timestamp version 7, expires ...`).
    pub renewed_at: Option<i64>,
    #[serde(default)]
    pub renewed: Vec<String>,
    /// Each top-level role's current metadata.
    #[serde(default)]
    pub roles: BTreeMap<String, RoleExpiry>,
    /// What the admin must do, one sentence each.
    #[serde(default)]
    pub problems: Vec<String>,
    /// The server renews snapshot and timestamp when less than this part of their lifetime is
    /// left.
    pub renew_left: f64,
    /// Seconds between its looks.
    pub check_interval_secs: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoleExpiry {
    pub version: u64,
    /// TUF time (`2026-12-03T07:00:00Z`).
    pub expires: String,
    /// Seconds left; zero or less when expired.
    pub expires_in: i64,
}
