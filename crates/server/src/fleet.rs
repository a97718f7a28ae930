//! The fleet in memory: every enrolled machine with its key, admin-set fields and last report,
//! loaded from the database at start and written through on every change: the database first
//! (one transaction per change), then memory, so a failed write leaves both as they were.
//! Check-ins read it without touching the database; a check-in whose report did not change only
//! moves the machine's last-seen time, which is written in batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use semithin_protocol::api::{MachineInfo, MachineStatus, Report};
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
    /// Held by an admin change from reading the machines to updating memory, so two changes
    /// never interleave.
    admin: tokio::sync::Mutex<()>,
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
pub fn updated(report: &Report, target: Option<&str>) -> bool {
    target.is_some_and(|t| report.current.as_deref() == Some(t))
        && report.health == semithin_protocol::api::Health::Healthy
}

pub fn info(m: &Machine, target: Option<String>) -> MachineInfo {
    let r = m.snapshot();
    let seen = m.last_seen.load(Ordering::Relaxed);
    let target = if r.status == MachineStatus::Accepted {
        target
    } else {
        None
    };
    MachineInfo {
        updated: updated(&r.report, target.as_deref()),
        id: r.id,
        name: r.name,
        labels: r.labels,
        status: r.status,
        channel: r.channel,
        target,
        report: r.report,
        enrolled_at: r.enrolled_at,
        last_seen: (seen != 0).then_some(seen),
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
