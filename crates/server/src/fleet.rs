//! The fleet in memory: every enrolled machine with its key, admin-set fields and last report,
//! loaded from the database at start and written through on every change: the database first
//! (one transaction per change), then memory, so a failed write leaves both as they were.
//! Check-ins read it without touching the database; a check-in whose report did not change only
//! moves the machine's last-seen time, which is written in batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use semithin_protocol::api::{FleetState, MachineInfo, MachineStatus, Report};
use semithin_protocol::ids::ReleaseId;
use semithin_protocol::selector::Selector;
use tokio::sync::Notify;

use crate::db::{self, MachineRow};
use crate::error::Result;

/// Events a machine may cause in a burst, and the seconds after which it may cause one more
/// (a token bucket): a machine that changes its report on every check-in cannot grow the
/// events table faster than this.
pub const EVENT_BURST: u32 = 20;
pub const EVENT_REFILL_SECS: i64 = 60;
/// The most events kept of one machine (its enrollment aside); older ones go first.
pub const MAX_EVENTS_PER_MACHINE: i64 = 500;

/// A machine's allowance of events ([`EVENT_BURST`], [`EVENT_REFILL_SECS`]); `now` is passed in.
#[derive(Debug)]
pub struct EventBudget {
    left: u32,
    /// When the allowance was last refilled (unix seconds).
    at: i64,
    /// Events refused since the last one allowed (logged once per run of refusals).
    pub refused: u64,
}

impl Default for EventBudget {
    fn default() -> Self {
        Self {
            left: EVENT_BURST,
            at: i64::MIN,
            refused: 0,
        }
    }
}

impl EventBudget {
    /// Takes one event from the allowance; false when none is left.
    pub fn take(&mut self, now: i64) -> bool {
        if self.at == i64::MIN {
            self.at = now;
        }
        let gained = now.saturating_sub(self.at) / EVENT_REFILL_SECS;
        if gained > 0 {
            self.left = self
                .left
                .saturating_add(u32::try_from(gained).unwrap_or(u32::MAX))
                .min(EVENT_BURST);
            // Time not yet worth an event counts towards the next, unless the allowance is full.
            self.at = if self.left == EVENT_BURST {
                now
            } else {
                self.at + gained * EVENT_REFILL_SECS
            };
        }
        if self.left == 0 {
            self.refused += 1;
            return false;
        }
        self.left -= 1;
        self.refused = 0;
        true
    }
}
use crate::replay::Window;

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
    /// Held while the machine's report is written (database, then memory).
    reporting: tokio::sync::Mutex<()>,
    /// How many more events this machine may cause now.
    pub events: Mutex<EventBudget>,
    /// The counters of its signed requests: each is accepted once.
    pub replay: Mutex<Window>,
    /// The highest counter stored in the database.
    pub counter_stored: AtomicU64,
    /// What the machine last reported about itself (`vars::store_facts`).
    facts: Mutex<Option<Arc<semithin_protocol::vars::Facts>>>,
    /// The relays its last check-in came through (`relays`), nearest the machine first.
    pub relay_path: Mutex<Vec<String>>,
    /// The relays the admin placed it under (`relays::place`), told in check-in answers.
    pub placement: Mutex<Vec<String>>,
    /// For a relay: its last report of its own health (`relays::record_status`).
    pub relay_health: Mutex<Option<semithin_protocol::relay::RelayHealth>>,
    /// For a relay: when the batch of check-ins it has held ends at the latest; a batch it
    /// sends meanwhile ends with it (`http::relayed`), so its machines poll again together.
    pub batch_until: Mutex<Option<tokio::time::Instant>>,
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
            reporting: tokio::sync::Mutex::new(()),
            events: Mutex::new(EventBudget::default()),
            replay: Mutex::new(Window::default()),
            counter_stored: AtomicU64::new(0),
            facts: Mutex::new(None),
            relay_path: Mutex::default(),
            placement: Mutex::default(),
            relay_health: Mutex::default(),
            batch_until: Mutex::default(),
        }
    }

    pub fn facts(&self) -> Option<Arc<semithin_protocol::vars::Facts>> {
        self.facts.lock().expect("lock").clone()
    }

    pub fn set_facts(&self, f: semithin_protocol::vars::Facts) {
        *self.facts.lock().expect("lock") = Some(Arc::new(f));
    }

    /// Sets the highest counter stored (at start): everything up to it is refused.
    pub fn set_stored_counter(&self, counter: u64) {
        *self.replay.lock().expect("lock") = Window::from_stored(counter);
        self.counter_stored.store(counter, Ordering::Relaxed);
    }

    /// Stores the highest counter accepted from this machine, when it is not stored yet: a
    /// request that changes something calls this before it writes, so that after a restart it
    /// cannot be replayed.
    pub async fn store_counter(&self, db: &sqlx::SqlitePool) -> crate::Result<()> {
        let high = self.replay.lock().expect("lock").highest();
        if high > self.counter_stored.load(Ordering::Relaxed) {
            crate::db::store_counters(db, &[(self.id.clone(), high)]).await?;
            self.counter_stored.fetch_max(high, Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn snapshot(&self) -> MachineRow {
        self.row.lock().expect("lock").clone()
    }
}

#[derive(Default)]
pub struct Fleet {
    by_id: RwLock<HashMap<String, Arc<Machine>>>,
    by_name: RwLock<HashMap<String, String>>,
    /// Held by an admin change from reading the machines to updating memory, so two changes
    /// never interleave.
    admin: tokio::sync::Mutex<()>,
    /// Moves with every machine added or removed and every admin change (`generation`).
    generation: AtomicU64,
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
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// A number that moves when a machine is added or removed and after every admin change of
    /// machines (`change`), not with check-ins: the dashboard's index of the fleet is made again
    /// when it moved (`web::index`).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Forgets a machine (its name is free again).
    pub fn remove(&self, id: &str) -> Option<Arc<Machine>> {
        let m = self.by_id.write().expect("lock").remove(id)?;
        self.generation.fetch_add(1, Ordering::Release);
        let name = m.row.lock().expect("lock").name.clone();
        let mut by_name = self.by_name.write().expect("lock");
        if by_name.get(&name).is_some_and(|i| i == id) {
            by_name.remove(&name);
        }
        Some(m)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Machine>> {
        self.by_id.read().expect("lock").get(id).cloned()
    }

    pub fn by_name(&self, name: &str) -> Option<Arc<Machine>> {
        let id = self.by_name.read().expect("lock").get(name).cloned()?;
        self.get(&id)
    }

    /// Every machine, in no particular order.
    pub fn all(&self) -> Vec<Arc<Machine>> {
        self.by_id.read().expect("lock").values().cloned().collect()
    }

    /// The accepted machine whose reported facts name `mac` on one of its interfaces (the first
    /// by name when several do).
    pub fn by_mac(&self, mac: &semithin_protocol::boot::Mac) -> Option<Arc<Machine>> {
        let mut found: Vec<(String, Arc<Machine>)> = self
            .by_id
            .read()
            .expect("lock")
            .values()
            .filter(|m| {
                m.facts().is_some_and(|f| {
                    f.interfaces.iter().any(|i| {
                        i.mac
                            .as_deref()
                            .and_then(|s| s.parse::<semithin_protocol::boot::Mac>().ok())
                            .is_some_and(|x| x == *mac)
                    })
                })
            })
            .filter_map(|m| {
                let r = m.row.lock().expect("lock");
                (r.status == semithin_protocol::api::MachineStatus::Accepted)
                    .then(|| (r.name.clone(), m.clone()))
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found.into_iter().next().map(|(_, m)| m)
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
                    let facts = m.facts();
                    let r = m.row.lock().expect("lock");
                    sel.matches_facts(&r.name, &r.labels, facts.as_deref())
                        .then(|| (r.name.clone(), m.clone()))
                })
                .collect(),
        };
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.into_iter().map(|(_, m)| m).collect()
    }

    /// Machines whose highest request counter is above the one stored.
    pub fn unsaved_counters(&self) -> Vec<(Arc<Machine>, u64)> {
        self.by_id
            .read()
            .expect("lock")
            .values()
            .filter_map(|m| {
                let high = m.replay.lock().expect("lock").highest();
                (high > m.counter_stored.load(Ordering::Relaxed)).then(|| (m.clone(), high))
            })
            .collect()
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

impl Fleet {
    /// Applies `f` to copies of these machines' rows and stores the ones it changed (their
    /// status, labels and channel) in one transaction, then puts them in memory. A failed write
    /// changes nothing anywhere. Returns the machines changed.
    pub async fn change(
        &self,
        pool: &sqlx::SqlitePool,
        machines: Vec<Arc<Machine>>,
        f: impl Fn(&mut MachineRow) -> bool,
    ) -> Result<Vec<Arc<Machine>>> {
        let _one_at_a_time = self.admin.lock().await;
        let mut changed = Vec::new();
        let mut rows = Vec::new();
        for m in machines {
            let mut row = m.snapshot();
            if f(&mut row) {
                rows.push(row);
                changed.push(m);
            }
        }
        if rows.is_empty() {
            return Ok(changed);
        }
        db::update_machines(pool, &rows).await?;
        for (m, new) in changed.iter().zip(rows) {
            let mut r = m.row.lock().expect("lock");
            r.status = new.status;
            r.labels = new.labels;
            r.channel = new.channel;
        }
        self.generation.fetch_add(1, Ordering::Release);
        Ok(changed)
    }
}

impl Machine {
    /// Stores a new report (with the time it came) when it differs from the one held: the
    /// database first, then memory. Returns the report it replaced, `None` when the same.
    pub async fn store_report(
        &self,
        pool: &sqlx::SqlitePool,
        report: &Report,
        seen: i64,
    ) -> Result<Option<Report>> {
        let _one_at_a_time = self.reporting.lock().await;
        if self.row.lock().expect("lock").report == *report {
            return Ok(None);
        }
        db::update_report(pool, &self.id, report, seen).await?;
        self.last_seen_stored.store(seen, Ordering::Relaxed);
        let old = std::mem::replace(&mut self.row.lock().expect("lock").report, report.clone());
        Ok(Some(old))
    }
}

/// Whether the machine runs its target release and passed its health checks there.
pub fn updated(report: &Report, target: Option<ReleaseId>) -> bool {
    target.is_some_and(|t| report.current == Some(t))
        && report.health == semithin_protocol::api::Health::Healthy
}

/// What the server tells about a machine besides its row: the release it is told to run, its
/// channel's release, and, when a rollout holds it on another one, why.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub target: Option<ReleaseId>,
    pub channel_release: Option<ReleaseId>,
    /// Why the target is not the channel's release (a rollout that governs the channel).
    pub held: Option<String>,
}

/// The view of a machine: what the rollout that governs its channel tells it, else its channel's
/// release.
pub fn view(app: &crate::App, r: &MachineRow) -> View {
    let p = app.published();
    if let Some(v) = plain_view(&p, r) {
        return v;
    }
    let channel = r.channel.as_deref().unwrap_or_default();
    View {
        target: app.target(r).map(ReleaseId::from),
        held: app.rollouts.hold_reason(&p, r, channel),
        channel_release: p.releases.get(channel).map(|&c| ReleaseId::from(c)),
    }
}

/// The view of a machine when no rollout governs its channel (`None` when one does): known from
/// what is published alone, without asking the rollouts, so it can be taken under the machine's
/// lock; the dashboard and /metrics take this for almost every machine.
pub fn plain_view(p: &crate::releases::Published, r: &MachineRow) -> Option<View> {
    let Some(channel) = r.channel.as_deref() else {
        return Some(View::default());
    };
    let channel_release = p.releases.get(channel).map(|&c| ReleaseId::from(c));
    if r.status != MachineStatus::Accepted {
        return Some(View {
            channel_release,
            ..View::default()
        });
    }
    // No rollout governs the channel (its signed target names none): the machine is told the
    // channel's release and nothing holds it (`App::target`, `Rollouts::hold_reason`).
    p.targets
        .get(channel)
        .is_none_or(|t| t.rollout.is_none())
        .then_some(View {
            target: channel_release,
            channel_release,
            held: None,
        })
}

/// `f` of a machine's row and its state (without the reason), computed under its lock without
/// copying the row when no rollout governs its channel; else from a copy, as [`view`] asks the
/// rollouts, which must not be asked under a machine's lock. `p` is `App::published`, taken once
/// for a pass over the fleet (the census, the dashboard's machines list).
pub fn with_state<T>(
    app: &crate::App,
    p: &crate::releases::Published,
    m: &Machine,
    f: impl FnOnce(&MachineRow, FleetState) -> T,
) -> T {
    let seen = m.last_seen.load(Ordering::Relaxed);
    let seen = (seen != 0).then_some(seen);
    {
        let r = m.row.lock().expect("lock");
        if let Some(v) = plain_view(p, &r) {
            let state = classify(&r, seen, &v, false).0;
            return f(&r, state);
        }
    }
    let r = m.snapshot();
    let state = classify(&r, seen, &view(app, &r), false).0;
    f(&r, state)
}

/// Where a machine stands, and why (for the states that need a reason): a pure function of its
/// row, when it was last seen and its [`View`].
pub fn state(r: &MachineRow, last_seen: Option<i64>, v: &View) -> (FleetState, Option<String>) {
    classify(r, last_seen, v, true)
}

/// [`state`], its reason made only when `why` (a list of 100,000 states needs none).
fn classify(
    r: &MachineRow,
    last_seen: Option<i64>,
    v: &View,
    why: bool,
) -> (FleetState, Option<String>) {
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
        if !why {
            return None;
        }
        v.held.clone().or_else(|| {
            v.channel_release
                .map(|c| format!("its channel {channel} is at {}", c.short()))
        })
    };
    let Some(target) = v.target else {
        return match v.channel_release {
            None => (
                FleetState::Unpublished,
                why.then(|| format!("channel {channel} has no published release")),
            ),
            Some(_) => (FleetState::Held, held()),
        };
    };
    if last_seen.is_none() {
        return (FleetState::NeverSeen, None);
    }
    if let Some(i) = &rep.integrity
        && i.is_tampered()
        && rep.current == Some(i.release)
    {
        if !why {
            return (FleetState::Tampered, None);
        }
        let shown: Vec<&str> = i
            .tampered
            .paths
            .iter()
            .take(3)
            .map(String::as_str)
            .collect();
        let more = i.tampered.count.saturating_sub(shown.len() as u64);
        return (
            FleetState::Tampered,
            Some(format!(
                "{} path(s) differ from release {}: {}{}",
                i.tampered.count,
                i.release.short(),
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )),
        );
    }
    if let Some(f) = &rep.failing {
        if !why {
            return (FleetState::Failing, None);
        }
        let what = match &f.release {
            Some(rel) => format!("{} release {}", f.phase.as_str(), rel.short()),
            None => f.phase.as_str().to_owned(),
        };
        return (FleetState::Failing, Some(format!("{what}: {}", f.reason)));
    }
    let runs_target = rep.current == Some(target);
    let reason = || {
        if !why {
            return None;
        }
        rep.last_error
            .clone()
            .or_else(|| Some("no reason given".into()))
    };
    if !runs_target && rep.failed_release == Some(target) {
        return (FleetState::Failed, reason());
    }
    if rep.health == Health::Checking {
        return (FleetState::Checking, None);
    }
    if runs_target {
        match rep.health {
            Health::Healthy if v.channel_release == Some(target) => {
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
        updated: updated(&r.report, view.target),
        id: r.id.parse().expect("machine ids are hex digests of keys"),
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
        facts: m.facts().map(|f| (*f).clone()),
        relay_path: m.relay_path.lock().expect("lock").clone(),
        placement: m.placement.lock().expect("lock").clone(),
        relay: m.relay_health.lock().expect("lock").clone(),
    }
}

#[cfg(test)]
mod state_tests {
    use semithin_protocol::api::{Failure, FleetState as S, Health, MachineStatus, Phase, Report};

    use super::{ReleaseId, View, state};
    use crate::db::MachineRow;

    const V1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const V2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn rel(s: &str) -> ReleaseId {
        s.parse().unwrap()
    }

    fn row(current: Option<&str>, health: Health) -> MachineRow {
        MachineRow {
            id: "m".into(),
            name: "m".into(),
            public_key: [0; 32],
            status: MachineStatus::Accepted,
            labels: Default::default(),
            channel: Some("lab/stable".into()),
            report: Report {
                current: current.map(rel),
                health,
                ..Report::default()
            },
            enrolled_at: 0,
            last_seen: Some(1),
        }
    }

    fn view(target: Option<&str>, channel: Option<&str>) -> View {
        View {
            target: target.map(rel),
            channel_release: channel.map(rel),
            held: None,
        }
    }

    #[test]
    fn a_machine_whose_release_was_changed_is_tampered_until_it_is_put_back() {
        use semithin_protocol::api::Integrity;
        let seen = Some(1);
        let on_v2 = view(Some(V2), Some(V2));
        let mut r = row(Some(V2), Health::Healthy);
        let mut i = Integrity::new(rel(V2), 0);
        for p in ["/etc/cron.d/evil", "/usr/bin/x", "/usr/bin/y", "/usr/bin/z"] {
            i.tampered.push(p);
        }
        r.report.integrity = Some(i.clone());
        let (st, why) = state(&r, seen, &on_v2);
        assert_eq!(st, S::Tampered);
        let why = why.unwrap();
        assert!(
            why.starts_with("4 path(s) differ from release 222222222222: /etc/cron.d/evil"),
            "{why}"
        );
        assert!(why.ends_with("and 1 more"), "{why}");
        // a finding about another release than the one it runs is no longer true
        r.report.integrity = Some(Integrity {
            release: rel(V1),
            ..i
        });
        assert_eq!(state(&r, seen, &on_v2).0, S::Updated);
        // repaired: nothing tampered
        r.report.integrity = Some(Integrity::new(rel(V2), 0));
        assert_eq!(state(&r, seen, &on_v2).0, S::Updated);
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
            release: Some(rel(V2)),
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
        r.report.failed_release = Some(rel(V2));
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

#[cfg(test)]
mod tests {
    use semithin_protocol::selector::Selector;
    use sqlx::SqlitePool;

    use super::*;

    async fn pool() -> (tempfile::TempDir, SqlitePool) {
        let dir = tempfile::tempdir().unwrap();
        let pool = db::open(&dir.path().join("fleet.db")).await.unwrap();
        (dir, pool)
    }

    fn row(name: &str, n: u8) -> MachineRow {
        MachineRow {
            id: format!("id-{name}"),
            name: name.into(),
            public_key: [n; 32],
            status: MachineStatus::Accepted,
            labels: Default::default(),
            channel: None,
            report: Report::default(),
            enrolled_at: 1,
            last_seen: None,
        }
    }

    async fn fleet_of(pool: &SqlitePool, names: &[&str]) -> Fleet {
        for (i, n) in names.iter().enumerate() {
            db::insert_machine(pool, &row(n, i as u8)).await.unwrap();
        }
        Fleet::load(db::load_machines(pool).await.unwrap())
    }

    async fn exec(pool: &SqlitePool, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(pool)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_change_the_database_refuses_leaves_memory_and_every_row_as_they_were() {
        let (_dir, pool) = pool().await;
        let fleet = fleet_of(&pool, &["a", "b", "c"]).await;
        exec(
            &pool,
            "CREATE TRIGGER no_b BEFORE UPDATE ON machines WHEN NEW.name = 'b' \
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
        )
        .await;
        let assign = |r: &mut MachineRow| {
            r.channel = Some("x".into());
            true
        };
        let res = fleet
            .change(&pool, fleet.select(&Selector::All), assign)
            .await;
        assert!(res.is_err(), "the trigger should refuse b");
        for m in fleet.select(&Selector::All) {
            assert_eq!(m.snapshot().channel, None, "{} changed in memory", m.id);
        }
        for r in db::load_machines(&pool).await.unwrap() {
            assert_eq!(r.channel, None, "{} changed in the database", r.name);
        }
        exec(&pool, "DROP TRIGGER no_b").await;
        let changed = fleet
            .change(&pool, fleet.select(&Selector::All), assign)
            .await
            .unwrap();
        assert_eq!(changed.len(), 3);
        for m in fleet.select(&Selector::All) {
            assert_eq!(m.snapshot().channel.as_deref(), Some("x"));
        }
        for r in db::load_machines(&pool).await.unwrap() {
            assert_eq!(r.channel.as_deref(), Some("x"));
        }
    }

    #[tokio::test]
    async fn a_report_the_database_refuses_is_not_taken_in_memory() {
        let (_dir, pool) = pool().await;
        let fleet = fleet_of(&pool, &["a"]).await;
        let m = fleet.by_name("a").unwrap();
        exec(
            &pool,
            "CREATE TRIGGER no_report BEFORE UPDATE OF report ON machines \
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
        )
        .await;
        let new = Report {
            agent_version: "2".into(),
            ..Report::default()
        };
        assert!(m.store_report(&pool, &new, 5).await.is_err());
        assert_eq!(m.snapshot().report, Report::default());
        exec(&pool, "DROP TRIGGER no_report").await;
        let old = m.store_report(&pool, &new, 5).await.unwrap();
        assert_eq!(old, Some(Report::default()));
        assert_eq!(m.snapshot().report, new);
        assert_eq!(m.store_report(&pool, &new, 6).await.unwrap(), None);
        assert_eq!(db::load_machines(&pool).await.unwrap()[0].report, new);
    }

    #[test]
    fn the_event_budget_allows_a_burst_then_one_per_interval() {
        let mut b = EventBudget::default();
        let t = 1_000_000;
        for _ in 0..EVENT_BURST {
            assert!(b.take(t));
        }
        assert!(!b.take(t));
        assert!(!b.take(t + EVENT_REFILL_SECS - 1));
        assert_eq!(b.refused, 2);
        assert!(b.take(t + EVENT_REFILL_SECS + 30));
        assert!(!b.take(t + EVENT_REFILL_SECS + 30));
        // the 30 s past the refill count towards the next event
        assert!(b.take(t + 2 * EVENT_REFILL_SECS));
        // a long quiet time gives back the burst, no more
        let later = t + 1000 * EVENT_REFILL_SECS;
        for _ in 0..EVENT_BURST {
            assert!(b.take(later));
        }
        assert!(!b.take(later));
    }

    #[tokio::test]
    async fn events_are_pruned_by_age_and_count_and_enrollments_stay() {
        let (_dir, pool) = pool().await;
        db::add_event(&pool, "a", 1, "enrolled", "token t1")
            .await
            .unwrap();
        db::add_event(&pool, "b", 1, "enrolled", "token t2")
            .await
            .unwrap();
        for i in 0..50 {
            db::add_event(&pool, "a", 100 + i, "failed", "x")
                .await
                .unwrap();
            db::add_event(&pool, "b", 100 + i, "failed", "y")
                .await
                .unwrap();
        }
        assert_eq!(db::cap_events(&pool, "a", 10).await.unwrap(), 40);
        let a = db::events(&pool, "a", 100).await.unwrap();
        assert_eq!(a.len(), 11);
        assert_eq!(a[0].at, 149, "the newest stay");
        assert!(a.iter().any(|e| e.kind == "enrolled"));
        // by age: before 140; by count: 5 per machine
        let gone = db::prune_events(&pool, 140, 5).await.unwrap();
        assert_eq!(gone, 40 + 10);
        for m in ["a", "b"] {
            let ev = db::events(&pool, m, 100).await.unwrap();
            assert_eq!(ev.len(), 6, "{m}: {ev:?}");
            assert!(
                ev.iter()
                    .filter(|e| e.kind != "enrolled")
                    .all(|e| e.at >= 145)
            );
        }
        assert_eq!(
            db::enrolled_with(&pool, "a").await.unwrap().as_deref(),
            Some("t1")
        );
    }
}
