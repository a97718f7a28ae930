//! The JSON bodies of `/api/v1`. Unknown fields are ignored on both sides, so either end can be
//! newer than the other within one protocol version.

use serde::{Deserialize, Serialize};

use crate::ids::ReleaseId;
use crate::path::ApiPath;
use crate::selector::Labels;

mod admin;
pub use admin::*;

/// Every error response: the HTTP status says what kind, `error` says what exactly.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiError {
    pub error: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnrollRequest {
    pub token: String,
    pub name: String,
    /// The machine's ed25519 public key, hex.
    pub public_key: String,
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnrollResponse {
    pub machine_id: crate::ids::MachineId,
    pub status: MachineStatus,
}

/// How the machine's running release is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Report {
    /// The release (commit id) the current deployment holds.
    pub current: Option<ReleaseId>,
    /// A release staged beside it, not yet switched to.
    pub staged: Option<ReleaseId>,
    /// The deployment kept for rollback.
    pub previous: Option<ReleaseId>,
    pub health: Health,
    pub phase: Phase,
    /// A release that failed its health checks and is not tried again.
    pub failed_release: Option<ReleaseId>,
    pub last_error: Option<String>,
    /// Bytes free on the deployments' file system.
    pub disk_free: u64,
    pub uptime_secs: u64,
    pub agent_version: String,
    /// Bytes of objects and metadata this agent has fetched from the server in all.
    pub fetched_bytes: u64,
    /// What the last verification of the running deployment found (absent: not verified
    /// since the machine runs it, or an agent that does not report it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity: Option<Integrity>,
    /// The agent's last attempt failed and it has not succeeded since: what it was doing and
    /// why (a release that does not verify, a store error). `None` once an attempt succeeds.
    /// An error reaching the server is not reported here: it could not be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing: Option<Failure>,
    /// The machine's rendered configuration: the variables it holds, the last rendering's
    /// error (docs/CONFIG.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<crate::vars::ConfigReport>,
    /// The agent's backup (`backup_dir`) cannot be made (its disk is missing, not mounted,
    /// read-only or full): `None` once it is made again, or when the agent keeps none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupWarning>,
    /// What the agent's BitTorrent client exchanged with the site's peers since the agent
    /// started (absent: the agent does not share through BitTorrent, or has not yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm: Option<SwarmBytes>,
}

/// Bytes a machine's BitTorrent client received from and sent to peers (`Report::swarm`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SwarmBytes {
    pub received: u64,
    pub sent: u64,
}

/// Why an agent's backup cannot be made (`Report::backup`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupWarning {
    /// `missing`, `unmounted`, `same-disk`, `read-only`, `full` or `failed`.
    pub kind: String,
    /// In words.
    pub reason: String,
    /// Unix seconds since which it is so.
    pub since: i64,
}

/// At most this many paths in each list of an [`Integrity`]; `count` says how many in all.
pub const MAX_INTEGRITY_PATHS: usize = 50;
/// A reported path longer than this many bytes is cut (at a character boundary) and ends in `…`.
pub const MAX_INTEGRITY_PATH_LEN: usize = 512;

/// Paths (at most [`MAX_INTEGRITY_PATHS`], the first ones found) and how many there were.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PathList {
    pub count: u64,
    #[serde(default)]
    pub paths: Vec<String>,
}

impl PathList {
    /// Counts `path` and keeps it while there is room, cut to [`MAX_INTEGRITY_PATH_LEN`].
    pub fn push(&mut self, path: &str) {
        self.count += 1;
        if self.paths.len() < MAX_INTEGRITY_PATHS {
            let mut p = path.to_owned();
            if p.len() > MAX_INTEGRITY_PATH_LEN {
                let mut end = MAX_INTEGRITY_PATH_LEN;
                while !p.is_char_boundary(end) {
                    end -= 1;
                }
                p.truncate(end);
                p.push('…');
            }
            self.paths.push(p);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// What a verification of the running deployment against its release found
/// (docs/PROTOCOL.md, "Integrity"). Paths are as the booted system sees them (`/usr/bin/x`,
/// `/etc/cron.d/y`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Integrity {
    /// The release the deployment was checked against.
    pub release: ReleaseId,
    /// Unix seconds of the check.
    pub checked_at: i64,
    /// Paths that differ from the release and were not put back: the machine is tampered.
    #[serde(default)]
    pub tampered: PathList,
    /// Paths that differed and were put back by this check.
    #[serde(default)]
    pub repaired: PathList,
    /// Local changes in the `/etc` overlay that the machine's policy only reports.
    #[serde(default)]
    pub etc_drift: PathList,
    /// Found by the check at boot, before the deployment was mounted (docs/BOOT.md): it looks
    /// at the deployment alone, not at the `/etc` overlay.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub at_boot: bool,
    /// How the check at boot went about it: `quick` (the deployment's metadata matched the seal
    /// its last full verification left, no file was read) or `full`. Absent from a verification
    /// by the running agent, and from agents that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_check: Option<BootCheck>,
}

/// How the check at boot verified the deployment (docs/BOOT.md, "Verification at boot").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BootCheck {
    /// Unchanged since its seal: nothing read.
    Quick,
    /// Every file read and hashed against the release.
    Full,
}

impl Integrity {
    /// Nothing found yet: a verification against `release` at `checked_at`.
    pub fn new(release: ReleaseId, checked_at: i64) -> Self {
        Self {
            release,
            checked_at,
            tampered: PathList::default(),
            repaired: PathList::default(),
            etc_drift: PathList::default(),
            at_boot: false,
            boot_check: None,
        }
    }

    /// Something differs from the release and is still there.
    pub fn is_tampered(&self) -> bool {
        !self.tampered.is_empty()
    }
}

/// The most a machine may put in one check-in (docs/PROTOCOL.md, "Limits"); the server refuses
/// a check-in past any of them with 400 naming the field, before anything of it is kept.
pub mod limits {
    /// Bytes of `report.last_error` (the agent cuts its error to this with [`super::bound_error`]).
    pub const ERROR_BYTES: usize = 4096;
    /// Bytes of `report.agent_version`.
    pub const VERSION_BYTES: usize = 64;
    /// Job results in one check-in.
    pub const JOB_RESULTS: usize = 64;
    /// Bytes of a job result's delivery id.
    pub const DELIVERY_BYTES: usize = crate::ids::DeliveryId::MAX;
    /// Installed packages, and upgrades, in an inventory.
    pub const INVENTORY_PACKAGES: usize = 50_000;
    /// Bytes of each text field of an inventory entry.
    pub const INVENTORY_FIELD_BYTES: usize = 1024;
    /// Labels a machine may give itself when it enrolls.
    pub const ENROLL_LABELS: usize = 64;
    /// Bytes of an enrollment token.
    pub const TOKEN_BYTES: usize = 256;
}

/// A field of a request that is out of bounds or malformed, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct BadField {
    /// The field as a JSON path (`report.last_error`, `inventory.packages[3].name`).
    pub field: String,
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> BadField {
    BadField {
        field: field.into(),
        reason: reason.into(),
    }
}

fn check_len(field: &str, s: &str, max: usize) -> Result<(), BadField> {
    if s.len() > max {
        return Err(bad(
            field,
            format!("{} bytes; at most {max} are accepted", s.len()),
        ));
    }
    Ok(())
}

/// Cuts an error message to [`limits::ERROR_BYTES`] on a character boundary, marking the cut.
pub fn bound_error(s: &str) -> String {
    if s.len() <= limits::ERROR_BYTES {
        return s.to_owned();
    }
    const MARK: &str = " [...]";
    let mut end = limits::ERROR_BYTES - MARK.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", s.get(..end).unwrap_or_default())
}

impl Report {
    /// Every field within its bounds ([`limits`]). Releases are [`ReleaseId`]s, refused when
    /// malformed as the report is parsed.
    pub fn check(&self) -> Result<(), BadField> {
        if let Some(e) = &self.last_error {
            check_len("report.last_error", e, limits::ERROR_BYTES)?;
        }
        check_len(
            "report.agent_version",
            &self.agent_version,
            limits::VERSION_BYTES,
        )?;
        if let Some(i) = &self.integrity {
            i.check()?;
        }
        if let Some(f) = &self.failing {
            check_len("report.failing.reason", &f.reason, limits::ERROR_BYTES)?;
        }
        if let Some(b) = &self.backup {
            check_len("report.backup.kind", &b.kind, 32)?;
            check_len("report.backup.reason", &b.reason, limits::ERROR_BYTES)?;
        }
        if let Some(c) = &self.config {
            if let Some(e) = &c.error {
                check_len("report.config.error", e, limits::ERROR_BYTES)?;
            }
            if let Some(d) = &c.vars_digest {
                check_len("report.config.vars_digest", d, 64)?;
            }
        }
        Ok(())
    }
}

impl Integrity {
    /// Each list at most [`MAX_INTEGRITY_PATHS`] paths of at most
    /// [`MAX_INTEGRITY_PATH_LEN`] bytes (and the `…` the agent ends a cut one with).
    pub fn check(&self) -> Result<(), BadField> {
        for (name, l) in [
            ("tampered", &self.tampered),
            ("repaired", &self.repaired),
            ("etc_drift", &self.etc_drift),
        ] {
            if l.paths.len() > MAX_INTEGRITY_PATHS {
                return Err(bad(
                    format!("report.integrity.{name}.paths"),
                    format!("{} paths; at most {MAX_INTEGRITY_PATHS}", l.paths.len()),
                ));
            }
            for (n, p) in l.paths.iter().enumerate() {
                check_len(
                    &format!("report.integrity.{name}.paths[{n}]"),
                    p,
                    MAX_INTEGRITY_PATH_LEN + '…'.len_utf8(),
                )?;
            }
        }
        Ok(())
    }
}

impl CheckInRequest {
    /// The report, job results and inventory within their bounds ([`limits`]). Job output is
    /// not refused for its size: the server keeps its start and end (`job::bound_output`).
    pub fn check(&self) -> Result<(), BadField> {
        self.report.check()?;
        if self.job_results.len() > limits::JOB_RESULTS {
            return Err(bad(
                "job_results",
                format!(
                    "{} results; at most {} per check-in",
                    self.job_results.len(),
                    limits::JOB_RESULTS
                ),
            ));
        }
        if let Some(inv) = &self.inventory {
            inv.check()?;
        }
        if let Some(f) = &self.facts {
            f.check()?;
        }
        if self.bad_upstreams.len() > MAX_BAD_UPSTREAMS {
            return Err(bad(
                "bad_upstreams",
                format!(
                    "{} entries; at most {MAX_BAD_UPSTREAMS} per check-in",
                    self.bad_upstreams.len()
                ),
            ));
        }
        for b in &self.bad_upstreams {
            check_len("bad_upstreams.url", &b.url, 512)?;
            check_len("bad_upstreams.reason", &b.reason, limits::ERROR_BYTES)?;
        }
        Ok(())
    }
}

impl crate::inventory::Inventory {
    /// At most [`limits::INVENTORY_PACKAGES`] entries of each kind, each field at most
    /// [`limits::INVENTORY_FIELD_BYTES`].
    pub fn check(&self) -> Result<(), BadField> {
        let max = limits::INVENTORY_PACKAGES;
        for (field, n) in [
            ("inventory.packages", self.packages.len()),
            ("inventory.upgradable", self.upgradable.len()),
        ] {
            if n > max {
                return Err(bad(field, format!("{n} entries; at most {max}")));
            }
        }
        let f = limits::INVENTORY_FIELD_BYTES;
        for (i, p) in self.packages.iter().enumerate() {
            for (name, v) in [
                ("name", &p.name),
                ("version", &p.version),
                ("arch", &p.arch),
            ] {
                check_len(&format!("inventory.packages[{i}].{name}"), v, f)?;
            }
        }
        for (i, u) in self.upgradable.iter().enumerate() {
            for (name, v) in [
                ("name", &u.name),
                ("from", &u.from),
                ("to", &u.to),
                ("origin", &u.origin),
            ] {
                check_len(&format!("inventory.upgradable[{i}].{name}"), v, f)?;
            }
        }
        Ok(())
    }
}

/// What keeps an agent from doing what it is told (`Report::failing`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Failure {
    /// What it was doing: `verifying`, `fetching`, `staging`, ... (`idle`: before any step).
    pub phase: Phase,
    /// The release it was working on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseId>,
    /// The error, in words.
    pub reason: String,
    /// Unix seconds of the first failure of this kind in a row (same phase and release).
    pub since: i64,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Verifying => "verifying",
            Phase::Fetching => "fetching",
            Phase::Staging => "staging",
            Phase::Checking => "checking",
            Phase::Waiting => "waiting",
        }
    }
}

/// `POST /api/v1/checkin` (signed).
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The agent renders configuration templates: the server may give it its variable sets
    /// (`CheckInResponse::vars`), and answers at once when it does.
    #[serde(default)]
    pub accepts_vars: bool,
    /// What the machine is (host name, addresses, hardware), sent when it differs from what the
    /// server holds (`CheckInResponse::facts_digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<crate::vars::Facts>,
    /// Upstreams (servers or relays) that failed this machine since its last check-in, and
    /// why: unreachable, 5xx, or data that did not verify (docs/RELAY.md). The server records
    /// each as an event of the machine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_upstreams: Vec<BadUpstream>,
}

/// An upstream a machine left, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BadUpstream {
    pub url: String,
    pub reason: String,
}

/// At most this many bad upstreams in one check-in.
pub const MAX_BAD_UPSTREAMS: usize = 8;

/// Where a machine fetches from; paths are relative to the server URL and checked when read
/// ([`ApiPath`]: they stay below `/api/v1/` on the server the machine was configured with).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Desired {
    pub channel: String,
    /// The release the machine should run: a commit id, signed as the channel's target.
    pub release: ReleaseId,
    pub metadata_path: ApiPath,
    pub objects_path: ApiPath,
    /// A delta pack from the machine's current release to this one (docs/FORMAT.md, "Delta
    /// packs"), when the server holds both: GET it (ranges resume a broken download), apply it,
    /// then fetch whatever is still missing from `objects_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_path: Option<ApiPath>,
    /// The size of that pack in bytes, when the server has built it: the agent downloads no
    /// more than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_size: Option<u64>,
    /// Why `release` is the one the machine runs, not yet its new one: the server is building
    /// the delta pack to it, and wakes the machine when it is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The digest of the facts the server holds for this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts_digest: Option<String>,
    /// The machine's variable sets, when they differ from the ones it reported holding
    /// (`Report::config`); each signed by an admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vars: Option<crate::vars::Bundle>,
    /// The relays the admin placed this machine under (`fleet move --relay`), to try in this
    /// order before the servers it is configured with; empty: none. An agent follows it only
    /// with `follow_placement` (docs/RELAY.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<String>,
}

/// `POST /api/v1/admin/placement`: the relays machines use, in order (empty: straight to the
/// servers they are configured with).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlacementRequest {
    pub selector: String,
    pub upstreams: Vec<String>,
}

/// At most this many relays in a placement.
pub const MAX_PLACEMENT: usize = 8;

/// `POST /api/v1/objects` (signed): the objects the machine lacks, answered as one object stream
/// (docs/FORMAT.md). Each entry is `KIND/ID` with KIND `chunk`, `tree` or `commit`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ObjectsRequest {
    pub objects: Vec<String>,
}

/// At most this many objects in one request.
pub const MAX_OBJECTS_PER_REQUEST: usize = 20_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_without_integrity_is_read_and_none_is_not_sent() {
        let old = r#"{"current":null,"staged":null,"previous":null,"health":"healthy",
            "phase":"idle","failed_release":null,"last_error":null,"disk_free":1,
            "uptime_secs":2,"agent_version":"0.1.0","fetched_bytes":3}"#;
        let r: Report = serde_json::from_str(old).unwrap();
        assert_eq!(r.integrity, None);
        assert!(!serde_json::to_string(&r).unwrap().contains("integrity"));
        let with = serde_json::json!({"release": "ab".repeat(32), "checked_at": 5,
            "tampered": {"count": 1, "paths": ["/usr/bin/x"]}});
        let i: Integrity = serde_json::from_value(with).unwrap();
        assert!(i.is_tampered());
        assert!(i.repaired.is_empty() && i.etc_drift.is_empty());
    }

    #[test]
    fn path_lists_are_bounded_and_count_everything() {
        let mut l = PathList::default();
        for n in 0..(MAX_INTEGRITY_PATHS + 7) {
            l.push(&format!("/etc/{n}"));
        }
        assert_eq!(l.count, (MAX_INTEGRITY_PATHS + 7) as u64);
        assert_eq!(l.paths.len(), MAX_INTEGRITY_PATHS);
        let mut l = PathList::default();
        l.push(&format!("/{}", "é".repeat(MAX_INTEGRITY_PATH_LEN)));
        assert!(l.paths[0].len() <= MAX_INTEGRITY_PATH_LEN + '…'.len_utf8());
        assert!(l.paths[0].ends_with('…'));
    }

    #[test]
    fn integrity_out_of_its_bounds_is_refused_naming_the_field() {
        let mut i = Integrity::new(rel('a'), 0);
        for n in 0..MAX_INTEGRITY_PATHS + 3 {
            i.tampered.push(&format!("/etc/{n}"));
        }
        let r = Report {
            integrity: Some(i.clone()),
            ..Report::default()
        };
        r.check().unwrap();
        let mut long = i.clone();
        long.repaired
            .paths
            .push("x".repeat(MAX_INTEGRITY_PATH_LEN + 10));
        let e = Report {
            integrity: Some(long),
            ..Report::default()
        }
        .check()
        .unwrap_err();
        assert!(
            e.to_string().contains("report.integrity.repaired.paths[0]"),
            "{e}"
        );
        let mut many = i.clone();
        many.etc_drift.paths = vec!["/etc/x".into(); MAX_INTEGRITY_PATHS + 1];
        let e = Report {
            integrity: Some(many),
            ..Report::default()
        }
        .check()
        .unwrap_err();
        assert!(
            e.to_string().contains("report.integrity.etc_drift.paths"),
            "{e}"
        );
        let mut json = serde_json::to_value(Report {
            integrity: Some(i),
            ..Report::default()
        })
        .unwrap();
        json["integrity"]["release"] = "é".into();
        let e = crate::json::from_slice::<Report>(json.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field, "integrity.release", "{e}");
    }

    fn rel(c: char) -> ReleaseId {
        c.to_string().repeat(64).parse().unwrap()
    }

    fn id(c: char) -> Option<ReleaseId> {
        Some(rel(c))
    }

    #[test]
    fn a_report_within_its_bounds_passes_and_each_field_out_of_them_is_named() {
        let ok = Report {
            current: id('a'),
            staged: id('b'),
            previous: id('c'),
            failed_release: id('d'),
            last_error: Some("x".repeat(limits::ERROR_BYTES)),
            agent_version: "0.1.0".into(),
            ..Report::default()
        };
        ok.check().unwrap();
        let cases: Vec<(&str, Report)> = vec![
            (
                "report.last_error",
                Report {
                    last_error: Some("x".repeat(limits::ERROR_BYTES + 1)),
                    ..ok.clone()
                },
            ),
            (
                "report.agent_version",
                Report {
                    agent_version: "v".repeat(65),
                    ..ok.clone()
                },
            ),
        ];
        for (field, r) in cases {
            let e = r.check().unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn a_report_with_a_malformed_release_is_refused_at_parse_naming_the_field() {
        let ok = serde_json::to_value(Report {
            current: id('a'),
            failing: Some(Failure {
                phase: Phase::Fetching,
                release: id('b'),
                reason: "x".into(),
                since: 0,
            }),
            ..Report::default()
        })
        .unwrap();
        crate::json::from_slice::<Report>(ok.to_string().as_bytes()).unwrap();
        for (field, bad) in [
            ("current", "é".repeat(32)),
            ("staged", "A".repeat(64)),
            ("previous", "a".repeat(65)),
            ("failed_release", "x1".into()),
        ] {
            let mut v = ok.clone();
            v[field] = bad.into();
            let e = crate::json::from_slice::<Report>(v.to_string().as_bytes()).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        let mut v = ok.clone();
        v["failing"]["release"] = "\u{1b}[2J".into();
        let e = crate::json::from_slice::<Report>(v.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field, "failing.release", "{e}");
    }

    #[test]
    fn a_check_in_bounds_job_results_and_the_inventory() {
        let mut req = CheckInRequest::default();
        req.check().unwrap();
        let result = crate::job::JobResult {
            delivery: "d".parse().unwrap(),
            outcome: crate::job::Outcome::Succeeded,
            exit_code: Some(0),
            output: String::new(),
            started_at: 0,
            duration_ms: 0,
        };
        // a delivery id too long (or of other characters) is refused as the request is read
        let mut json = serde_json::to_value(CheckInRequest {
            job_results: vec![result.clone()],
            ..Default::default()
        })
        .unwrap();
        json["job_results"][0]["delivery"] = "d".repeat(limits::DELIVERY_BYTES + 1).into();
        let e = crate::json::from_slice::<CheckInRequest>(json.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field, "job_results[0].delivery", "{e}");
        req.job_results = vec![result; limits::JOB_RESULTS + 1];
        assert_eq!(req.check().unwrap_err().field, "job_results");
        req.job_results.clear();
        let pkg = crate::inventory::Package {
            name: "p".into(),
            version: "1".repeat(limits::INVENTORY_FIELD_BYTES + 1),
            arch: "all".into(),
        };
        req.inventory = Some(crate::inventory::Inventory {
            packages: vec![pkg],
            ..Default::default()
        });
        assert_eq!(
            req.check().unwrap_err().field,
            "inventory.packages[0].version"
        );
    }

    #[test]
    fn a_long_error_is_cut_on_a_character_boundary_within_the_bound() {
        let long = "é".repeat(limits::ERROR_BYTES);
        let cut = bound_error(&long);
        assert!(cut.len() <= limits::ERROR_BYTES, "{}", cut.len());
        assert!(cut.ends_with(" [...]"));
        assert_eq!(bound_error("short"), "short");
        let r = Report {
            last_error: Some(cut),
            ..Report::default()
        };
        r.check().unwrap();
    }
}
