//! The JSON bodies of the rollout admin API (`/api/v1/admin/rollouts`, docs/PROTOCOL.md,
//! "Rollouts").

use serde::{Deserialize, Serialize};

/// Where a rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Made, waiting for its release to be signed with its id (`semithin rollout start` signs
    /// it right after): nobody is told anything new yet.
    Publishing,
    /// Admitting machines wave by wave.
    Running,
    /// Stopped by the admin: nobody else is admitted, admitted machines that have not switched
    /// yet are held where they are.
    Paused,
    /// Stopped by itself: more failures than `max_failures` (see `reason`). Held like paused.
    Halted,
    /// Every wave is updated (failures within the threshold aside) and soaked.
    Completed,
    /// Stopped by the admin; the machines it admitted are sent back to their release.
    Aborted,
    /// Every machine of the rollout is sent back to the release it ran at the start.
    RolledBack,
    /// The channel was published again (a plain publish or another rollout): this rollout no
    /// longer tells machines anything.
    Superseded,
}

impl RolloutState {
    pub const ALL: [RolloutState; 8] = [
        RolloutState::Publishing,
        RolloutState::Running,
        RolloutState::Paused,
        RolloutState::Halted,
        RolloutState::Completed,
        RolloutState::Aborted,
        RolloutState::RolledBack,
        RolloutState::Superseded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Publishing => "publishing",
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
            RolloutState::Completed => "completed",
            RolloutState::Aborted => "aborted",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Superseded => "superseded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Still moving or able to move on: at most one such rollout per channel.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RolloutState::Publishing
                | RolloutState::Running
                | RolloutState::Paused
                | RolloutState::Halted
        )
    }
}

/// `POST /api/v1/admin/rollouts`. The text fields take the command line's syntax
/// (`semithin rollout start --help`); absent ones take the defaults.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StartRequest {
    pub channel: String,
    /// The release to roll out: a commit id the server's repository holds.
    pub release: String,
    /// The machines to move (a name, `key=value[,...]` or `*`), among those that follow the
    /// channel.
    pub selector: String,
    /// Canary machines: a count (`2`) or names (`lab-01,lab-07`). Default `1`.
    #[serde(default)]
    pub canary: Option<String>,
    /// Cumulative percentages of the machines after the canaries: `5%,25%,100%`. Default `100%`.
    #[serde(default)]
    pub waves: Option<String>,
    /// How long a wave must stay healthy before the next one starts: `30m`, `90s`, `1h30m`.
    /// Default `0s`.
    #[serde(default)]
    pub soak: Option<String>,
    /// More failures than this halt the rollout: a percentage of the machines admitted so far
    /// (`5%`) or a count (`3`). Default `0`: the first failure halts.
    #[serde(default)]
    pub max_failures: Option<String>,
    /// When machines may be admitted and start updating: `Mon-Fri 18:00-06:00` (a span that
    /// ends before it starts crosses midnight and belongs to the day it starts); several spans
    /// separated by `;`. Default: always.
    #[serde(default)]
    pub window: Option<String>,
    /// The time zone of the window (IANA name, `Europe/Madrid`). Default `UTC`.
    #[serde(default)]
    pub tz: Option<String>,
    /// At most this many machines admitted in any hour (rolling). Default: no limit.
    #[serde(default)]
    pub max_per_hour: Option<u32>,
    /// Only compute the plan (waves and machines) and answer it; store nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// How a rollout was asked to proceed, as it was understood.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlanInfo {
    /// `2`, or the names given.
    pub canary: String,
    /// Cumulative percentages of the waves after the canary, in hundredths of a percent
    /// (`2500` is 25%).
    pub waves: Vec<u32>,
    pub soak_secs: i64,
    /// `5%` or `3`.
    pub max_failures: String,
    pub window: Option<String>,
    pub tz: Option<String>,
    pub max_per_hour: Option<u32>,
}

/// A machine of a rollout, as the rollout sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    /// Follows the channel but is not selected: kept on the release it ran at the start.
    Held,
    /// Not admitted yet: kept on the release it ran at the start.
    Waiting,
    /// Admitted, not yet running the release healthy.
    Updating,
    /// Runs the release and reported health `healthy` there.
    Updated,
    /// Reported the release as its `failed_release`.
    Failed,
    /// Failed, and the admin accepted the failure by resuming.
    FailureAccepted,
    /// Told to go back to its release (abort, rollback), not there yet.
    Returning,
    /// Back on the release it ran at the start.
    Back,
    /// No longer follows the channel (reassigned, rejected): out of the rollout.
    Left,
}

impl MachineState {
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Held => "held",
            MachineState::Waiting => "waiting",
            MachineState::Updating => "updating",
            MachineState::Updated => "updated",
            MachineState::Failed => "failed",
            MachineState::FailureAccepted => "failure_accepted",
            MachineState::Returning => "returning",
            MachineState::Back => "back",
            MachineState::Left => "left",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WaveInfo {
    /// 0 is the canary wave.
    pub index: u32,
    /// `canary`, `wave 1`, ...
    pub name: String,
    /// The cumulative percentage it reaches, hundredths of a percent (`null` for the canary).
    pub percent: Option<u32>,
    pub machines: u32,
    pub admitted: u32,
    pub updated: u32,
    pub failed: u32,
    /// When every machine of it was settled (updated, or a failure within the threshold or
    /// accepted by a resume).
    pub healthy_at: Option<i64>,
    /// When its soak ends (the next wave may start).
    pub soak_until: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutMachine {
    pub name: String,
    pub id: String,
    /// The wave it belongs to; `null` when it is held (not selected).
    pub wave: Option<u32>,
    /// The release it ran when the rollout started (what abort and rollback send it back to);
    /// `null` when it ran none, or one never signed here.
    pub from: Option<String>,
    pub state: MachineState,
    /// The release the server tells it to run now (`null`: none).
    pub told: Option<String>,
    pub admitted_at: Option<i64>,
    /// When it was first seen settled: updated, or failed.
    pub settled_at: Option<i64>,
    pub current: Option<String>,
    pub health: crate::api::Health,
    pub last_error: Option<String>,
    pub last_seen: Option<i64>,
    /// Not seen for a long time; it counts as pending, never as failed.
    pub offline: bool,
}

/// `GET /api/v1/admin/rollouts/{id}` and every answer that changes a rollout.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutInfo {
    /// 0 in a dry run.
    pub id: i64,
    pub channel: String,
    pub release: String,
    pub selector: String,
    pub state: RolloutState,
    /// Why it halted, was aborted or superseded.
    pub reason: Option<String>,
    pub plan: PlanInfo,
    pub created_at: i64,
    pub updated_at: i64,
    /// The rollout's id in the signed channel target (`custom.rollout`).
    pub uid: String,
    /// The earlier releases its machines are kept on or sent back to: the signature of the
    /// release allows them (`custom.allowed`).
    pub allowed: Vec<String>,
    /// The wave in progress.
    pub wave: Option<u32>,
    /// What it waits for now, in words (`null` when it waits for nothing).
    pub waiting: Option<String>,
    pub waves: Vec<WaveInfo>,
    /// Every machine of it (empty in listings).
    pub machines: Vec<RolloutMachine>,
    /// Counts of machines by state.
    pub counts: std::collections::BTreeMap<String, u32>,
}

/// A rollout or a publish planned on the dashboard (or through the API) and stored on the server
/// until an admin who holds the targets key signs it (`semithin rollout sign ID`, `semithin
/// publish --request ID`): the server cannot, it never holds that key.
/// `GET /api/v1/admin/pending`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PendingInfo {
    pub id: i64,
    /// `rollout` (`semithin rollout sign ID`) or `publish` (`semithin publish --request ID`).
    pub kind: String,
    /// `awaiting` (a signature), `started` (signed: `rollout` is the rollout it started).
    pub state: String,
    /// The rollout asked for, as `POST /api/v1/admin/rollouts` takes it (`dry_run` false); for a
    /// publish, only its `channel` and `release`.
    pub request: StartRequest,
    /// The channel's published release when it was planned (`None`: none was).
    pub base: Option<String>,
    /// Why it can no longer be signed as it is (the channel's release moved since it was
    /// planned); `None` when it can.
    pub stale: Option<String>,
    /// The rollout signing it started.
    pub rollout: Option<i64>,
    pub created_at: i64,
    /// When it was signed.
    pub started_at: Option<i64>,
}

/// `POST /api/v1/admin/pending/publish`: a channel's release to publish, awaiting a signature.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublishPlan {
    pub channel: String,
    /// A commit id the server's repository holds (64 hex digits).
    pub release: String,
}
