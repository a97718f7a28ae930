//! The JSON bodies of `/api/v1`. Unknown fields are ignored on both sides, so either end can be
//! newer than the other within one protocol version.

use serde::{Deserialize, Serialize};

use crate::selector::Labels;

/// Every error response: the HTTP status says what kind, `error` says what exactly.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineStatus {
    /// Enrolled, waiting for the admin to accept it.
    Pending,
    Accepted,
    /// Refused by the admin: every request of this machine is refused.
    Rejected,
}

impl MachineStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MachineStatus::Pending => "pending",
            MachineStatus::Accepted => "accepted",
            MachineStatus::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(MachineStatus::Pending),
            "accepted" => Some(MachineStatus::Accepted),
            "rejected" => Some(MachineStatus::Rejected),
            _ => None,
        }
    }
}

/// `POST /api/v1/enroll` (unsigned: the token is the credential).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub token: String,
    pub name: String,
    /// The machine's ed25519 public key, hex.
    pub public_key: String,
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub machine_id: String,
    pub status: MachineStatus,
}

/// How the machine's running release is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Unknown,
    /// The health checks are running on a release just switched to.
    Checking,
    Healthy,
    /// The last release tried failed its health checks and was rolled back.
    Failed,
}

/// What the agent is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    #[default]
    Idle,
    Verifying,
    Fetching,
    Staging,
    Checking,
    Waiting,
}

/// What a machine reports on every check-in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The release (commit id) the current deployment holds.
    pub current: Option<String>,
    /// A release staged beside it, not yet switched to.
    pub staged: Option<String>,
    /// The deployment kept for rollback.
    pub previous: Option<String>,
    pub health: Health,
    pub phase: Phase,
    /// A release that failed its health checks and is not tried again.
    pub failed_release: Option<String>,
    pub last_error: Option<String>,
    /// Bytes free on the deployments' file system.
    pub disk_free: u64,
    pub uptime_secs: u64,
    pub agent_version: String,
    /// Bytes of objects and metadata this agent has fetched from the server in all.
    pub fetched_bytes: u64,
}

/// `POST /api/v1/checkin` (signed).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckInRequest {
    pub report: Report,
    /// Hold the request up to this many seconds while there is nothing new (long poll); the
    /// answer comes at once when the machine is woken by a push or a publish.
    #[serde(default)]
    pub wait_secs: u32,
    /// The agent runs jobs: the server may give it some (and answers at once when it has).
    #[serde(default)]
    pub accepts_jobs: bool,
    /// Results of jobs the server may not have yet; sent again until a check-in succeeds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub job_results: Vec<crate::job::JobResult>,
    /// The machine's packages, sent when they differ from what the server holds
    /// (`CheckInResponse::inventory_digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<crate::inventory::Inventory>,
}

/// Where a machine fetches from; paths are relative to the server URL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub channel: String,
    /// The release the machine should run: a commit id, signed as the channel's target.
    pub release: String,
    pub metadata_path: String,
    pub objects_path: String,
    /// A delta pack from the machine's current release to this one (docs/FORMAT.md, "Delta
    /// packs"), when the server holds both: GET it (ranges resume a broken download), apply it,
    /// then fetch whatever is still missing from `objects_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_path: Option<String>,
    /// The size of that pack in bytes, when the server has built it: the agent downloads no
    /// more than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_size: Option<u64>,
    /// Why `release` is the one the machine runs, not yet its new one: the server is building
    /// the delta pack to it, and wakes the machine when it is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckInResponse {
    pub status: MachineStatus,
    /// `None`: no channel assigned yet, or nothing published on it.
    pub desired: Option<Desired>,
    /// When to check in again at the latest.
    pub next_checkin_secs: u32,
    /// The request was answered because the machine was woken.
    #[serde(default)]
    pub woken: bool,
    /// Jobs to run (only for agents that accept jobs): each delivery at most once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<crate::job::Delivery>,
    /// The digest of the inventory the server holds for this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory_digest: Option<String>,
}

/// `POST /api/v1/objects` (signed): the objects the machine lacks, answered as one object stream
/// (docs/FORMAT.md). Each entry is `KIND/ID` with KIND `chunk`, `tree` or `commit`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ObjectsRequest {
    pub objects: Vec<String>,
}

/// At most this many objects in one request.
pub const MAX_OBJECTS_PER_REQUEST: usize = 20_000;

/// One machine as the admin sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MachineInfo {
    pub id: String,
    pub name: String,
    pub labels: Labels,
    pub status: MachineStatus,
    pub channel: Option<String>,
    /// The release the machine should run (the channel's release).
    pub target: Option<String>,
    /// True when the machine runs its target and its health checks passed.
    pub updated: bool,
    pub report: Report,
    pub enrolled_at: i64,
    /// Unix seconds of the last check-in, if any.
    pub last_seen: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SelectorRequest {
    pub selector: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AssignRequest {
    pub selector: String,
    pub channel: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LabelRequest {
    #[serde(default)]
    pub set: Labels,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The names of the machines a command changed or woke.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Affected {
    pub machines: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The secret, shown only when the token is made.
    pub token: Option<String>,
    pub id: String,
    pub preauthorized: bool,
    pub labels: Labels,
    pub uses_left: Option<u32>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
}

/// What the server has sent, for the admin (and the demo's summary).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    pub machines: u64,
    pub object_bytes_sent: u64,
    pub objects_sent: u64,
    pub metadata_bytes_sent: u64,
    /// Bytes of delta packs sent.
    #[serde(default)]
    pub delta_bytes_sent: u64,
    pub checkins: u64,
    /// channel → release
    pub releases: std::collections::BTreeMap<String, String>,
}
