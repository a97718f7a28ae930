//! The bodies of the admin's side of `/api/v1` (`/api/v1/admin/...`): machines as the fleet
//! commands list them, selections, labels, enrollment tokens, statistics and the reports
//! offline machines left in a bundle. Re-exported by [`crate::api`].

use serde::{Deserialize, Serialize};

use super::{MachineStatus, Report};
use crate::ids::ReleaseId;
use crate::selector::Labels;

/// One machine as the admin sees it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineInfo {
    pub id: crate::ids::MachineId,
    pub name: String,
    pub labels: Labels,
    pub status: MachineStatus,
    pub channel: Option<String>,
    /// The release the machine should run: its channel's release, or what the rollout that
    /// governs the channel tells it.
    pub target: Option<ReleaseId>,
    /// True when the machine runs its target and its health checks passed.
    pub updated: bool,
    pub report: Report,
    pub enrolled_at: i64,
    /// Unix seconds of the last check-in, if any.
    pub last_seen: Option<i64>,
    /// Where the machine stands, as the admin is told it (`fleet list`).
    #[serde(default)]
    pub state: FleetState,
    /// Why, for the states that need a reason: the error of a failed or failing machine, the
    /// rollout that holds one back, the release its channel is at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    /// The channel's signed release (`None`: no channel, or nothing published on it). It differs
    /// from `target` while a rollout holds the machine on another release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_release: Option<ReleaseId>,
    /// What the machine last reported about itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<crate::vars::Facts>,
    /// The relays its last check-in came through, nearest the machine first (the
    /// `X-Semithin-Relay` header; empty: straight to the server).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relay_path: Vec<String>,
    /// The relays the admin placed it under (`fleet move --relay`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<String>,
    /// For a relay: its last report of its own health (docs/RELAY.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<crate::relay::RelayHealth>,
}

/// Where a machine stands (`MachineInfo::state`), computed by the server from its status,
/// channel, target and last report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FleetState {
    /// Not told by the server (an older server).
    #[default]
    Unknown,
    /// Enrolled, waiting for the admin.
    Pending,
    Rejected,
    /// No channel assigned.
    Unassigned,
    /// Its channel has no published release.
    Unpublished,
    /// Accepted with a release to run, never checked in since.
    NeverSeen,
    /// Runs its target, healthy, and the target is its channel's release.
    Updated,
    /// Runs what it is told and is healthy, but its channel is at another release: a rollout
    /// holds it back (outside its selector, not admitted yet, paused, halted, sent back).
    Held,
    /// On its way to its target (`report.phase` says where).
    Updating,
    /// Its health checks run on a release it just switched to.
    Checking,
    /// Its target failed here (health checks, deadline, boots) and was rolled back, or the
    /// release it runs fails its health checks.
    Failed,
    /// The agent cannot do what it is told: `report.failing` says what and why (a release
    /// that does not verify: a wrong trusted root, expired metadata).
    Failing,
    /// Its last verification found paths of the release it runs changed and not put back
    /// (`report.integrity.tampered`).
    Tampered,
}

impl FleetState {
    pub fn as_str(self) -> &'static str {
        match self {
            FleetState::Unknown => "unknown",
            FleetState::Pending => "pending",
            FleetState::Rejected => "rejected",
            FleetState::Unassigned => "unassigned",
            FleetState::Unpublished => "unpublished",
            FleetState::NeverSeen => "never_seen",
            FleetState::Updated => "updated",
            FleetState::Held => "held",
            FleetState::Updating => "updating",
            FleetState::Checking => "checking",
            FleetState::Failed => "failed",
            FleetState::Failing => "failing",
            FleetState::Tampered => "tampered",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SelectorRequest {
    pub selector: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssignRequest {
    pub selector: String,
    pub channel: String,
    /// Assign a channel nothing is published on yet (its machines wait for its first release);
    /// without it, such a channel is refused as a probable misspelling.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unpublished: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LabelRequest {
    #[serde(default)]
    pub set: Labels,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The names of the machines a command changed or woke.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Affected {
    pub machines: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenRequest {
    /// Machines enrolling with this token are accepted at once (factory images).
    #[serde(default)]
    pub preauthorized: bool,
    /// Labels given to machines enrolling with this token.
    #[serde(default)]
    pub labels: Labels,
    /// How many machines may enroll with it; unlimited when absent.
    pub uses: Option<u32>,
    /// Seconds until it expires; never when absent.
    pub expires_in_secs: Option<u64>,
    /// The channel machines enrolling with it follow from their enrollment (signed as their
    /// assignment at once); it must be published. None: none until `fleet assign`.
    #[serde(default)]
    pub channel: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    /// The secret, shown only when the token is made.
    pub token: Option<String>,
    pub id: crate::ids::TokenId,
    pub preauthorized: bool,
    pub labels: Labels,
    pub uses_left: Option<u32>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    /// The channel machines enrolling with it follow.
    #[serde(default)]
    pub channel: Option<String>,
}

/// What the server has sent, for the admin (and the demo's summary).
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stats {
    pub machines: u64,
    pub object_bytes_sent: u64,
    pub objects_sent: u64,
    pub metadata_bytes_sent: u64,
    /// Bytes of delta packs sent.
    #[serde(default)]
    pub delta_bytes_sent: u64,
    /// Bytes of boot artifacts sent (`/api/v1/boot`, `/boot`).
    #[serde(default)]
    pub boot_bytes_sent: u64,
    pub checkins: u64,
    /// Of `checkins`, those that came in relays' batches (docs/RELAY.md); the rest came one by
    /// one (`POST /api/v1/checkin`).
    #[serde(default)]
    pub checkins_batched: u64,
    /// Relays' batches of check-ins received.
    #[serde(default)]
    pub checkin_batches: u64,
    /// Long polls held now: a machine's own check-in, or a relay's batch, each counts one.
    #[serde(default)]
    pub polls_held: u64,
    /// channel → release
    pub releases: std::collections::BTreeMap<String, String>,
}

/// `POST /api/v1/admin/offline-reports`: the reports machines left in a bundle
/// (`semithin agent import`), each a check-in request signed as one.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OfflineReports {
    pub reports: Vec<OfflineReport>,
}

/// One machine's report: the four signature headers of `POST /api/v1/checkin` by name, and the
/// body they sign (a `CheckInRequest`, exactly as signed).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OfflineReport {
    pub machine: String,
    pub headers: std::collections::BTreeMap<String, String>,
    pub body: String,
}

/// Which reports were stored and which refused, and why.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OfflineReportsAnswer {
    pub stored: Vec<OfflineStored>,
    pub refused: Vec<OfflineRefused>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OfflineStored {
    pub machine: String,
    pub name: String,
    /// The report's time (its date, Unix seconds): the machine's last-seen time when newer.
    pub at: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OfflineRefused {
    /// The machine id the report claims (or its file's name when unreadable).
    pub machine: String,
    pub reason: String,
}
