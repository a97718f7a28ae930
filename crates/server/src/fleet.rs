//! The fleet in memory: every enrolled machine with its key, admin-set fields and last report,
//! loaded from the database at start and written through on every change. Check-ins read it
//! without touching the database; a check-in whose report did not change only moves the
//! machine's last-seen time, which is written in batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use semithin_protocol::api::{FleetState, MachineInfo, MachineStatus, Report};
use semithin_protocol::selector::Selector;
use tokio::sync::Notify;

use crate::db::MachineRow;

pub struct Machine {
    pub id: String,
    pub public_key: [u8; 32],
    /// The key decoded once, for every signed request (`None`: not a valid ed25519 point).
    pub key: Option<semithin_protocol::sign::PublicKey>,
    pub row: Mutex<MachineRow>,
    /// Unix seconds of the last check-in (0: never); written to the database in batches.
    pub last_seen: AtomicI64,
    /// The last-seen time last written to the database.
    pub last_seen_stored: AtomicI64,
    /// Wakes this machine's long poll (a permit is kept when it is not waiting).
    pub wake: Notify,
}

impl Machine {
    pub fn new(row: MachineRow) -> Self {
        let seen = row.last_seen.unwrap_or(0);
        Self {
            id: row.id.clone(),
            public_key: row.public_key,
            key: semithin_protocol::sign::PublicKey::from_bytes(&row.public_key).ok(),
            row: Mutex::new(row),
            last_seen: AtomicI64::new(seen),
            last_seen_stored: AtomicI64::new(seen),
            wake: Notify::new(),
        }
    }

    pub fn snapshot(&self) -> MachineRow {
        self.row.lock().expect("lock").clone()
    }
}

#[derive(Default)]
pub struct Fleet {
    by_id: RwLock<HashMap<String, Arc<Machine>>>,
    by_name: RwLock<HashMap<String, String>>,
}

impl Fleet {
    pub fn load(rows: Vec<MachineRow>) -> Self {
        let f = Fleet::default();
        for r in rows {
            f.insert(Arc::new(Machine::new(r)));
        }
        f
    }

    pub fn insert(&self, m: Arc<Machine>) {
        let name = m.row.lock().expect("lock").name.clone();
        self.by_name
            .write()
            .expect("lock")
            .insert(name, m.id.clone());
        self.by_id.write().expect("lock").insert(m.id.clone(), m);
    }

    pub fn get(&self, id: &str) -> Option<Arc<Machine>> {
        self.by_id.read().expect("lock").get(id).cloned()
    }

    pub fn by_name(&self, name: &str) -> Option<Arc<Machine>> {
        let id = self.by_name.read().expect("lock").get(name).cloned()?;
        self.get(&id)
    }

    pub fn len(&self) -> usize {
        self.by_id.read().expect("lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The machines a selector picks, sorted by name.
    pub fn select(&self, sel: &Selector) -> Vec<Arc<Machine>> {
        let mut out: Vec<(String, Arc<Machine>)> = match sel {
            Selector::Name(n) => self
                .by_name(n)
                .map(|m| (n.clone(), m))
                .into_iter()
                .collect(),
            _ => self
                .by_id
                .read()
                .expect("lock")
                .values()
                .filter_map(|m| {
                    let r = m.row.lock().expect("lock");
                    sel.matches(&r.name, &r.labels)
                        .then(|| (r.name.clone(), m.clone()))
                })
                .collect(),
        };
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.into_iter().map(|(_, m)| m).collect()
    }

    /// Machines whose last-seen time moved since it was last stored.
    pub fn unsaved_last_seen(&self) -> Vec<(Arc<Machine>, i64)> {
        self.by_id
            .read()
            .expect("lock")
            .values()
            .filter_map(|m| {
                let seen = m.last_seen.load(Ordering::Relaxed);
                (seen != m.last_seen_stored.load(Ordering::Relaxed)).then(|| (m.clone(), seen))
            })
            .collect()
    }
}

/// Whether the machine runs its target release and passed its health checks there.
pub fn updated(report: &Report, target: Option<&str>) -> bool {
    target.is_some_and(|t| report.current.as_deref() == Some(t))
        && report.health == semithin_protocol::api::Health::Healthy
}

/// What the server tells about a machine besides its row: the release it is told to run, its
/// channel's release, and, when a rollout holds it on another one, why.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub target: Option<String>,
    pub channel_release: Option<String>,
    /// Why the target is not the channel's release (a rollout that governs the channel).
    pub held: Option<String>,
}

/// The view of a machine: what the rollout that governs its channel tells it, else its channel's
/// release.
pub fn view(app: &crate::App, r: &MachineRow) -> View {
    let Some(channel) = r.channel.as_deref() else {
        return View::default();
    };
    let p = app.published();
    let channel_release = p.releases.get(channel).map(|c| c.to_hex());
    if r.status != MachineStatus::Accepted {
        return View {
            channel_release,
            ..View::default()
        };
    }
    View {
        target: app.target(r).map(|c| c.to_hex()),
        held: app.rollouts.hold_reason(&p, r, channel),
        channel_release,
    }
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

/// Where a machine stands, and why (for the states that need a reason): a pure function of its
/// row, when it was last seen and its [`View`].
pub fn state(r: &MachineRow, last_seen: Option<i64>, v: &View) -> (FleetState, Option<String>) {
    use semithin_protocol::api::Health;
    match r.status {
        MachineStatus::Pending => return (FleetState::Pending, None),
        MachineStatus::Rejected => return (FleetState::Rejected, None),
        MachineStatus::Accepted => {}
    }
    let Some(channel) = r.channel.as_deref() else {
        return (FleetState::Unassigned, None);
    };
    let rep = &r.report;
    let held = || {
        v.held.clone().or_else(|| {
            v.channel_release
                .as_deref()
                .map(|c| format!("its channel {channel} is at {}", short(c)))
        })
    };
    let Some(target) = v.target.as_deref() else {
        return match v.channel_release {
            None => (
                FleetState::Unpublished,
                Some(format!("channel {channel} has no published release")),
            ),
            Some(_) => (FleetState::Held, held()),
        };
    };
    if last_seen.is_none() {
        return (FleetState::NeverSeen, None);
    }
    if let Some(f) = &rep.failing {
        let what = match &f.release {
            Some(rel) => format!("{} release {}", f.phase.as_str(), short(rel)),
            None => f.phase.as_str().to_owned(),
        };
        return (FleetState::Failing, Some(format!("{what}: {}", f.reason)));
    }
    let runs_target = rep.current.as_deref() == Some(target);
    let reason = || {
        rep.last_error
            .clone()
            .or_else(|| Some("no reason given".into()))
    };
    if !runs_target && rep.failed_release.as_deref() == Some(target) {
        return (FleetState::Failed, reason());
    }
    if rep.health == Health::Checking {
        return (FleetState::Checking, None);
    }
    if runs_target {
        match rep.health {
            Health::Healthy if v.channel_release.as_deref() == Some(target) => {
                return (FleetState::Updated, None);
            }
            Health::Healthy => return (FleetState::Held, held()),
            // the agent runs the checks on the release it runs when a rollback left it there:
            // failed is their verdict (for a moment after the server told it this release, the
            // verdict on the release it rolled back from)
            Health::Failed => return (FleetState::Failed, reason()),
            Health::Unknown | Health::Checking => {}
        }
    }
    (FleetState::Updating, None)
}

pub fn info(m: &Machine, view: View) -> MachineInfo {
    let r = m.snapshot();
    let seen = m.last_seen.load(Ordering::Relaxed);
    let last_seen = (seen != 0).then_some(seen);
    let (state, state_reason) = state(&r, last_seen, &view);
    MachineInfo {
        updated: updated(&r.report, view.target.as_deref()),
        id: r.id,
        name: r.name,
        labels: r.labels,
        status: r.status,
        channel: r.channel,
        target: view.target,
        report: r.report,
        enrolled_at: r.enrolled_at,
        last_seen,
        state,
        state_reason,
        channel_release: view.channel_release,
    }
}

#[cfg(test)]
mod tests {
    use semithin_protocol::api::{Failure, FleetState as S, Health, MachineStatus, Phase, Report};

    use super::{View, state};
    use crate::db::MachineRow;

    const V1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const V2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn row(current: Option<&str>, health: Health) -> MachineRow {
        MachineRow {
            id: "m".into(),
            name: "m".into(),
            public_key: [0; 32],
            status: MachineStatus::Accepted,
            labels: Default::default(),
            channel: Some("lab/stable".into()),
            report: Report {
                current: current.map(str::to_owned),
                health,
                ..Report::default()
            },
            enrolled_at: 0,
            last_seen: Some(1),
        }
    }

    fn view(target: Option<&str>, channel: Option<&str>) -> View {
        View {
            target: target.map(str::to_owned),
            channel_release: channel.map(str::to_owned),
            held: None,
        }
    }

    #[test]
    fn states_tell_the_truth() {
        let seen = Some(1);
        let on_v2 = view(Some(V2), Some(V2));
        // updated only on its channel's release
        let r = row(Some(V2), Health::Healthy);
        assert_eq!(state(&r, seen, &on_v2), (S::Updated, None));
        // held by a rollout on v1 while the channel is at v2: not "updated"
        let mut held = view(Some(V1), Some(V2));
        let r = row(Some(V1), Health::Healthy);
        let (s, why) = state(&r, seen, &held);
        assert_eq!(s, S::Held);
        assert!(why.unwrap().contains("is at 222222222222"));
        held.held =
            Some("rollout 3 (running) of release 222222222222: outside its selector".into());
        assert!(
            state(&r, seen, &held)
                .1
                .unwrap()
                .contains("outside its selector")
        );

        // cannot verify: failing, with the reason, not "updating (verifying)"
        let mut r = row(Some(V1), Health::Healthy);
        r.report.phase = Phase::Verifying;
        r.report.failing = Some(Failure {
            phase: Phase::Verifying,
            release: Some(V2.into()),
            reason: "timestamp: expired at 2026-12-01T00:00:00Z".into(),
            since: 1,
        });
        let (s, why) = state(&r, seen, &on_v2);
        assert_eq!(s, S::Failing);
        let why = why.unwrap();
        assert!(
            why.starts_with("verifying release 222222222222: timestamp: expired"),
            "{why}"
        );

        // its target failed here and was rolled back
        let mut r = row(Some(V1), Health::Failed);
        r.report.failed_release = Some(V2.into());
        r.report.last_error = Some("health check failed".into());
        assert_eq!(
            state(&r, seen, &on_v2),
            (S::Failed, Some("health check failed".into()))
        );
        // rolled back, then told the release it runs (reassigned, aborted): once the checks
        // pass there it is updated, though the other release stays failed
        let on_v1 = view(Some(V1), Some(V1));
        r.report.health = Health::Healthy;
        assert_eq!(state(&r, seen, &on_v1), (S::Updated, None));
        // and while the checks fail on the release it runs: failed, not "updating (idle)"
        r.report.health = Health::Failed;
        assert_eq!(state(&r, seen, &on_v1).0, S::Failed);

        // on its way; checking
        let r = row(Some(V1), Health::Healthy);
        assert_eq!(state(&r, seen, &on_v2).0, S::Updating);
        let r = row(Some(V2), Health::Checking);
        assert_eq!(state(&r, seen, &on_v2).0, S::Checking);
        assert_eq!(state(&r, None, &on_v2).0, S::NeverSeen);

        // no channel, nothing published, not accepted
        let mut r = row(None, Health::Unknown);
        assert_eq!(state(&r, seen, &view(None, None)).0, S::Unpublished);
        r.channel = None;
        assert_eq!(state(&r, seen, &view(None, None)).0, S::Unassigned);
        r.status = MachineStatus::Pending;
        assert_eq!(state(&r, seen, &view(None, None)).0, S::Pending);
    }
}
