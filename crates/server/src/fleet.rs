//! The fleet in memory: every enrolled machine with its key, admin-set fields and last report,
//! loaded from the database at start and written through on every change. Check-ins read it
//! without touching the database; a check-in whose report did not change only moves the
//! machine's last-seen time, which is written in batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use semithin_protocol::api::{MachineInfo, MachineStatus, Report};
use semithin_protocol::selector::Selector;
use tokio::sync::Notify;

use crate::db::MachineRow;
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
    /// The counters of its signed requests: each is accepted once.
    pub replay: Mutex<Window>,
    /// The highest counter stored in the database.
    pub counter_stored: AtomicU64,
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
            replay: Mutex::new(Window::default()),
            counter_stored: AtomicU64::new(0),
        }
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
