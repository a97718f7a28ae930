//! Jobs on the server: made by the admin, kept in SQLite (migration 3), given to machines in
//! their check-in answers and woken by a push; each machine's result stored once. Also the
//! package inventories machines report.
//!
//! Which occurrence of a job machines may be given is decided by
//! [`semithin_protocol::job::Schedule::occurrence`], a pure function of the job and the time.
//! In memory: the jobs still open (not cancelled, and either recurring or not finished on every
//! machine), with the state of each machine's run of the current occurrence, so that a check-in
//! looks at the database only when something is delivered or reported.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use semithin_protocol::api::MachineStatus;
use semithin_protocol::inventory::{Inventory, Outdated};
use semithin_protocol::job::{
    self, Delivery, JobInfo, JobResult, JobSignature, JobStatus, MachineRun, SpecJson,
};
use semithin_protocol::selector::Selector;
use sqlx::Row;
use sqlx::sqlite::SqlitePool;

use crate::error::{Error, Result};
use crate::fleet::{Fleet, Machine};

/// At most this many jobs are given to a machine in one answer.
const MAX_PER_ANSWER: usize = 16;

/// A run's state as stored: `delivered`, `running`, or an outcome.
fn is_final(state: &str) -> bool {
    job::Outcome::parse(state).is_some()
}

/// A job that machines may still be given.
pub struct Open {
    /// As the admin sent it: what its signature covers.
    pub spec: SpecJson,
    pub signature: Option<JobSignature>,
    pub targets: HashSet<String>,
    /// delivery → machine → state, for the current occurrence only.
    runs: Mutex<HashMap<String, HashMap<String, String>>>,
}

impl Open {
    fn state(&self, delivery: &str, machine: &str) -> Option<String> {
        self.runs
            .lock()
            .expect("lock")
            .get(delivery)
            .and_then(|m| m.get(machine).cloned())
    }

    fn set_state(&self, delivery: &str, machine: &str, state: &str) {
        let mut runs = self.runs.lock().expect("lock");
        // Only the current occurrence is kept: an older one can no longer be delivered.
        runs.retain(|d, _| d == delivery);
        runs.entry(delivery.to_owned())
            .or_default()
            .insert(machine.to_owned(), state.to_owned());
    }

    /// A single job that every target finished.
    fn finished(&self) -> bool {
        if self.spec.schedule.recurring() {
            return false;
        }
        let runs = self.runs.lock().expect("lock");
        let Some(m) = runs.get(&self.spec.id) else {
            return self.targets.is_empty();
        };
        self.targets
            .iter()
            .all(|t| m.get(t).is_some_and(|s| is_final(s)))
    }
}

#[derive(Default)]
pub struct Jobs {
    open: RwLock<HashMap<String, Arc<Open>>>,
    /// machine id → digest of the inventory stored for it.
    digests: Mutex<HashMap<String, String>>,
    /// Deliveries whose start already woke their machines.
    woken: Mutex<HashSet<String>>,
    /// Results stored since the server started, by outcome (`/metrics`).
    pub results: prometheus_client::metrics::family::Family<
        crate::metrics::OutcomeLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

fn parse_spec(id: &str, text: &str) -> Result<SpecJson> {
    serde_json::from_str(text)
        .map_err(|e| Error::Config(format!("job {id} in the database: bad spec: {e}")))
}

impl Jobs {
    /// The open jobs and the inventory digests, from the database.
    pub async fn load(pool: &SqlitePool, now: i64) -> Result<Self> {
        let jobs = Jobs::default();
        let rows = sqlx::query("SELECT id, spec, signature FROM jobs WHERE cancelled_at IS NULL")
            .fetch_all(pool)
            .await
            .map_err(|e| Error::db("loading jobs", e))?;
        for r in rows {
            let id: String = r.get(0);
            let spec = parse_spec(&id, r.get(1))?;
            let sig: Option<String> = r.get(2);
            let signature = sig.and_then(|s| serde_json::from_str(&s).ok());
            if spec.schedule.over(spec.created_at, now) {
                continue;
            }
            let targets: Vec<String> =
                sqlx::query_scalar("SELECT machine FROM job_targets WHERE job = $1")
                    .bind(&id)
                    .fetch_all(pool)
                    .await
                    .map_err(|e| Error::db("loading jobs", e))?;
            let open = Open {
                targets: targets.into_iter().collect(),
                runs: Mutex::new(HashMap::new()),
                spec,
                signature,
            };
            if let Some(o) = open.spec.occurrence(now) {
                let runs = sqlx::query("SELECT machine, state FROM job_runs WHERE delivery = $1")
                    .bind(&o.delivery)
                    .fetch_all(pool)
                    .await
                    .map_err(|e| Error::db("loading jobs", e))?;
                for r in runs {
                    open.set_state(&o.delivery, r.get(0), r.get(1));
                }
                // Machines were woken for it before the restart.
                jobs.woken.lock().expect("lock").insert(o.delivery);
            }
            if !open.finished() {
                jobs.open.write().expect("lock").insert(id, Arc::new(open));
            }
        }
        let digests = sqlx::query("SELECT machine, digest FROM inventory")
            .fetch_all(pool)
            .await
            .map_err(|e| Error::db("loading inventories", e))?;
        {
            let mut d = jobs.digests.lock().expect("lock");
            for r in digests {
                d.insert(r.get(0), r.get(1));
            }
        }
        Ok(jobs)
    }

    fn open(&self) -> Vec<Arc<Open>> {
        self.open.read().expect("lock").values().cloned().collect()
    }

    /// The deliveries a machine may be given at `now` that it has not finished.
    fn due(&self, machine: &str, now: i64) -> Vec<(Arc<Open>, String)> {
        let mut out: Vec<(Arc<Open>, String)> = self
            .open()
            .into_iter()
            .filter(|j| j.targets.contains(machine))
            .filter_map(|j| {
                let o = j.spec.occurrence(now)?;
                let done = j.state(&o.delivery, machine).is_some_and(|s| is_final(&s));
                (!done).then_some((j, o.delivery))
            })
            .collect();
        out.sort_by_key(|(j, _)| (j.spec.created_at, j.spec.id.clone()));
        out.truncate(MAX_PER_ANSWER);
        out
    }

    /// The inventory digest the server holds for a machine.
    pub fn digest(&self, machine: &str) -> Option<String> {
        self.digests.lock().expect("lock").get(machine).cloned()
    }

    /// Wakes the machines of every occurrence that has started since the last call (the server's
    /// background task calls it every few seconds). Returns how many machines were woken.
    pub fn wake_due(&self, fleet: &Fleet, now: i64) -> usize {
        let mut n = 0;
        for j in self.open() {
            let Some(o) = j.spec.occurrence(now) else {
                continue;
            };
            if !self.woken.lock().expect("lock").insert(o.delivery.clone()) {
                continue;
            }
            for t in &j.targets {
                if let Some(m) = fleet.get(t) {
                    m.wake.notify_one();
                    n += 1;
                }
            }
        }
        // Finished single jobs and windows that passed leave memory.
        self.open
            .write()
            .expect("lock")
            .retain(|_, j| !j.finished() && !j.spec.schedule.over(j.spec.created_at, now));
        n
    }
}

/// What a check-in brings for jobs: stores the results and the inventory. Results for jobs that
/// are not the machine's are ignored.
pub async fn receive(
    pool: &SqlitePool,
    jobs: &Jobs,
    m: &Machine,
    results: &[JobResult],
    inventory: Option<&Inventory>,
    now: i64,
) -> Result<()> {
    for r in results {
        record_result(pool, jobs, m, r, now).await?;
    }
    if let Some(inv) = inventory {
        let digest = inv.digest();
        if jobs.digest(&m.id).as_deref() != Some(digest.as_str()) {
            sqlx::query(
                "INSERT INTO inventory (machine, digest, data, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (machine) DO UPDATE SET digest = excluded.digest, \
                 data = excluded.data, updated_at = excluded.updated_at",
            )
            .bind(&m.id)
            .bind(&digest)
            .bind(serde_json::to_string(inv).expect("serialises"))
            .bind(now)
            .execute(pool)
            .await
            .map_err(|e| Error::db("storing the inventory", e))?;
            jobs.digests
                .lock()
                .expect("lock")
                .insert(m.id.clone(), digest);
        }
    }
    Ok(())
}

async fn targeted(pool: &SqlitePool, jobs: &Jobs, job: &str, machine: &str) -> Result<bool> {
    if let Some(j) = jobs.open.read().expect("lock").get(job) {
        return Ok(j.targets.contains(machine));
    }
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM job_targets WHERE job = $1 AND machine = $2")
            .bind(job)
            .bind(machine)
            .fetch_one(pool)
            .await
            .map_err(|e| Error::db("reading the job's machines", e))?;
    Ok(n > 0)
}

async fn record_result(
    pool: &SqlitePool,
    jobs: &Jobs,
    m: &Machine,
    r: &JobResult,
    now: i64,
) -> Result<()> {
    let Ok(job_id) = job::job_of_delivery(r.delivery.as_ref()) else {
        tracing::warn!(machine = %m.id, delivery = %r.delivery, "result of a malformed delivery id ignored");
        return Ok(());
    };
    if !targeted(pool, jobs, job_id, &m.id).await? {
        tracing::warn!(machine = %m.id, delivery = %r.delivery, "result of a job not given to this machine ignored");
        return Ok(());
    }
    let state = r.outcome.as_str();
    // The first result is the one kept: a machine runs a delivery at most once.
    let done = sqlx::query(
        "INSERT INTO job_runs (delivery, machine, job, state, started_at, finished_at, \
         duration_ms, exit_code, output) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (delivery, machine) DO UPDATE SET state = excluded.state, \
         started_at = excluded.started_at, finished_at = excluded.finished_at, \
         duration_ms = excluded.duration_ms, exit_code = excluded.exit_code, \
         output = excluded.output WHERE job_runs.state IN ('delivered', 'running')",
    )
    .bind(r.delivery.as_ref())
    .bind(&m.id)
    .bind(job_id)
    .bind(state)
    .bind(r.started_at)
    .bind(now)
    .bind(r.duration_ms.min(i64::MAX as u64) as i64)
    .bind(r.exit_code.map(i64::from))
    .bind(job::bound_output(&r.output))
    .execute(pool)
    .await
    .map_err(|e| Error::db("storing a job result", e))?;
    if done.rows_affected() > 0 {
        jobs.results
            .get_or_create(&crate::metrics::OutcomeLabels { outcome: state })
            .inc();
        tracing::info!(machine = %m.id, delivery = %r.delivery, outcome = state, "job result");
        crate::db::add_event(pool, &m.id, now, "job", &format!("{}: {state}", r.delivery)).await?;
    }
    let open = jobs.open.read().expect("lock").get(job_id).cloned();
    if let Some(j) = open {
        j.set_state(r.delivery.as_ref(), &m.id, state);
        if j.finished() {
            jobs.open.write().expect("lock").remove(job_id);
        }
    }
    Ok(())
}

/// The jobs to put in a machine's check-in answer; the first delivery of each is recorded.
pub async fn deliveries(
    pool: &SqlitePool,
    jobs: &Jobs,
    m: &Machine,
    now: i64,
) -> Result<Vec<Delivery>> {
    if m.row.lock().expect("lock").status != MachineStatus::Accepted {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (j, delivery) in jobs.due(&m.id, now) {
        // made here from a checked job id: always a valid delivery id
        let Ok(id) = delivery.parse::<semithin_protocol::ids::DeliveryId>() else {
            tracing::error!(%delivery, "not a delivery id: not given to the machine");
            continue;
        };
        if j.state(&delivery, &m.id).is_none() {
            sqlx::query(
                "INSERT INTO job_runs (delivery, machine, job, state, delivered_at) \
                 VALUES ($1, $2, $3, 'delivered', $4) ON CONFLICT (delivery, machine) DO NOTHING",
            )
            .bind(&delivery)
            .bind(&m.id)
            .bind(&j.spec.id)
            .bind(now)
            .execute(pool)
            .await
            .map_err(|e| Error::db("recording a delivery", e))?;
            j.set_state(&delivery, &m.id, "delivered");
        }
        out.push(Delivery {
            delivery: id,
            spec: j.spec.clone(),
            signature: j.signature.clone(),
        });
    }
    Ok(out)
}

/// Why a job was not made.
#[derive(Debug)]
pub enum Refused {
    Bad(String),
    NoMachine(String),
    Exists(String),
}

/// Makes a job for the machines the selector matches now and wakes those it is due for.
pub async fn create(
    pool: &SqlitePool,
    jobs: &Jobs,
    fleet: &Fleet,
    selector: &str,
    spec: SpecJson,
    signature: Option<JobSignature>,
    now: i64,
) -> Result<std::result::Result<JobInfo, Refused>> {
    if let Err(e) = spec.validate() {
        return Ok(Err(Refused::Bad(e)));
    }
    let sel = match Selector::parse(selector) {
        Ok(s) => s,
        Err(e) => return Ok(Err(Refused::Bad(e.to_string()))),
    };
    if let Some(sig) = &signature {
        // Checked against its own key only: whether a machine trusts that key is the machine's
        // decision. A signature that does not verify is refused here already.
        let key = match job::parse_public_key(&sig.key) {
            Ok(k) => k,
            Err(e) => return Ok(Err(Refused::Bad(e))),
        };
        if let Err(e) = job::verify(&spec, sig, &[key]) {
            return Ok(Err(Refused::Bad(format!("the job's signature: {e}"))));
        }
    } else if matches!(spec.action, job::Action::Command { .. }) {
        return Ok(Err(Refused::Bad(
            "a free-form command must be signed by an admin key (semithin job run --sign-key \
             FILE; machines run it only if they trust that key)"
                .into(),
        )));
    }
    let machines = fleet.select(&sel);
    if machines.is_empty() {
        return Ok(Err(Refused::NoMachine(format!("no machine matches {sel}"))));
    }
    let err = |e| Error::db("storing the job", e);
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
    let inserted = sqlx::query(
        "INSERT INTO jobs (id, selector, spec, signature, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&spec.id)
    .bind(selector)
    .bind(serde_json::to_string(&spec).expect("serialises"))
    .bind(
        signature
            .as_ref()
            .map(|s| serde_json::to_string(s).expect("serialises")),
    )
    .bind(now)
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e)
            if e.as_database_error()
                .is_some_and(|d| d.is_unique_violation()) =>
        {
            return Ok(Err(Refused::Exists(format!(
                "a job with the id {} exists already",
                spec.id
            ))));
        }
        Err(e) => return Err(err(e)),
    }
    for m in &machines {
        sqlx::query("INSERT INTO job_targets (job, machine) VALUES ($1, $2)")
            .bind(&spec.id)
            .bind(&m.id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    tx.commit().await.map_err(err)?;
    let id = spec.id.clone();
    let open = Arc::new(Open {
        targets: machines.iter().map(|m| m.id.clone()).collect(),
        runs: Mutex::new(HashMap::new()),
        spec,
        signature,
    });
    tracing::info!(job = %id, what = %open.spec.action.describe(), machines = machines.len(), "job made");
    jobs.open.write().expect("lock").insert(id.clone(), open);
    jobs.wake_due(fleet, now);
    Ok(Ok(info(pool, jobs, fleet, &id, now)
        .await?
        .expect("just made")
        .job))
}

/// Cancels a job: it is given to no machine from now on, and machines running it stop it at
/// their next progress report. `None` when there is no such job.
pub async fn cancel(
    pool: &SqlitePool,
    jobs: &Jobs,
    fleet: &Fleet,
    id: &str,
    now: i64,
) -> Result<Option<JobInfo>> {
    sqlx::query("UPDATE jobs SET cancelled_at = $1 WHERE id = $2 AND cancelled_at IS NULL")
        .bind(now)
        .bind(id)
        .execute(pool)
        .await
        .map_err(|e| Error::db("cancelling the job", e))?;
    jobs.open.write().expect("lock").remove(id);
    Ok(info(pool, jobs, fleet, id, now).await?.map(|s| s.job))
}

/// A machine reports that it runs a delivery; whether the job was cancelled. `None` when the
/// delivery is not this machine's.
pub async fn progress(
    pool: &SqlitePool,
    jobs: &Jobs,
    m: &Machine,
    delivery: &str,
    now: i64,
) -> Result<Option<bool>> {
    let Ok(job_id) = job::job_of_delivery(delivery) else {
        return Ok(None);
    };
    if !targeted(pool, jobs, job_id, &m.id).await? {
        return Ok(None);
    }
    let r = sqlx::query(
        "UPDATE job_runs SET state = 'running', started_at = $1 \
         WHERE delivery = $2 AND machine = $3 AND state = 'delivered'",
    )
    .bind(now)
    .bind(delivery)
    .bind(&m.id)
    .execute(pool)
    .await
    .map_err(|e| Error::db("recording a job's start", e))?;
    if r.rows_affected() > 0 {
        let open = jobs.open.read().expect("lock").get(job_id).cloned();
        if let Some(j) = open {
            j.set_state(delivery, &m.id, "running");
        }
    }
    let cancelled: Option<i64> = sqlx::query_scalar("SELECT cancelled_at FROM jobs WHERE id = $1")
        .bind(job_id)
        .fetch_optional(pool)
        .await
        .map_err(|e| Error::db("reading the job", e))?
        .flatten();
    Ok(Some(cancelled.is_some()))
}

fn name_of(fleet: &Fleet, id: &str) -> String {
    fleet
        .get(id)
        .map(|m| m.row.lock().expect("lock").name.clone())
        .unwrap_or_else(|| id.to_owned())
}

/// A job with every machine's runs. `None` when there is no such job.
pub async fn info(
    pool: &SqlitePool,
    jobs: &Jobs,
    fleet: &Fleet,
    id: &str,
    now: i64,
) -> Result<Option<JobStatus>> {
    let err = |e| Error::db("reading the job", e);
    let Some(row) =
        sqlx::query("SELECT selector, spec, signature, cancelled_at FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(err)?
    else {
        return Ok(None);
    };
    let spec = parse_spec(id, row.get(1))?;
    let signature: Option<JobSignature> = row
        .get::<Option<String>, _>(2)
        .and_then(|s| serde_json::from_str(&s).ok());
    let cancelled_at: Option<i64> = row.get(3);
    let targets: Vec<String> = sqlx::query_scalar("SELECT machine FROM job_targets WHERE job = $1")
        .bind(id)
        .fetch_all(pool)
        .await
        .map_err(err)?;
    let rows = sqlx::query(
        "SELECT delivery, machine, state, delivered_at, started_at, duration_ms, exit_code, \
         output FROM job_runs WHERE job = $1 ORDER BY delivery DESC, machine",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .map_err(err)?;
    let current = spec.occurrence(now);
    let mut runs = Vec::new();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for r in rows {
        let delivery: String = r.get(0);
        let machine: String = r.get(1);
        let mut state: String = r.get(2);
        if !is_final(&state) {
            // Not finished: it still may be, unless the job was cancelled or its occurrence
            // is over.
            let live = current.as_ref().is_some_and(|o| o.delivery == delivery);
            if cancelled_at.is_some() && state == "delivered" {
                state = "cancelled".into();
            } else if !live && cancelled_at.is_none() && state == "delivered" {
                state = "expired".into();
            }
        }
        seen.insert((delivery.clone(), machine.clone()));
        runs.push(MachineRun {
            machine: name_of(fleet, &machine),
            delivery: delivery.parse().ok(),
            state,
            delivered_at: r.get(3),
            started_at: r.get(4),
            duration_ms: r.get::<Option<i64>, _>(5).map(|d| d.max(0) as u64),
            exit_code: r.get::<Option<i64>, _>(6).map(|c| c as i32),
            output: r.get(7),
        });
    }
    // Machines not given the current (or only) occurrence yet.
    let pending_delivery = current
        .as_ref()
        .map(|o| o.delivery.clone())
        .or_else(|| (!spec.schedule.recurring()).then(|| spec.id.clone()));
    if let Some(d) = pending_delivery {
        for t in &targets {
            if seen.contains(&(d.clone(), t.clone())) {
                continue;
            }
            let state = if cancelled_at.is_some() {
                "cancelled"
            } else if current.is_none() {
                if spec.schedule.over(spec.created_at, now) {
                    "expired"
                } else {
                    "pending"
                }
            } else {
                "pending"
            };
            runs.push(MachineRun {
                machine: name_of(fleet, t),
                delivery: current.as_ref().and_then(|o| o.delivery.parse().ok()),
                state: state.into(),
                exit_code: None,
                output: None,
                delivered_at: None,
                started_at: None,
                duration_ms: None,
            });
        }
    }
    let mut states: BTreeMap<String, u64> = BTreeMap::new();
    for r in &runs {
        *states.entry(r.state.clone()).or_default() += 1;
    }
    let mut machines: Vec<String> = targets.iter().map(|t| name_of(fleet, t)).collect();
    machines.sort();
    let _ = jobs;
    Ok(Some(JobStatus {
        job: JobInfo {
            id: id.to_owned(),
            selector: row.get(0),
            signed_by: signature.map(|s| s.key),
            machines,
            cancelled_at,
            states,
            next_start: if cancelled_at.is_some() {
                None
            } else {
                spec.schedule.next_start(spec.created_at, now)
            },
            spec: spec.spec().clone(),
        },
        runs,
    }))
}

/// Every job, newest first (at most `limit`).
pub async fn list(
    pool: &SqlitePool,
    jobs: &Jobs,
    fleet: &Fleet,
    limit: i64,
    now: i64,
) -> Result<Vec<JobInfo>> {
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT id FROM jobs ORDER BY created_at DESC, id LIMIT $1")
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(|e| Error::db("listing jobs", e))?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(s) = info(pool, jobs, fleet, &id, now).await? {
            out.push(s.job);
        }
    }
    Ok(out)
}

/// The machines matching `sel` that have pending updates, by name.
pub async fn outdated(pool: &SqlitePool, fleet: &Fleet, sel: &Selector) -> Result<Vec<Outdated>> {
    let wanted: HashMap<String, String> = fleet
        .select(sel)
        .iter()
        .map(|m| (m.id.clone(), m.row.lock().expect("lock").name.clone()))
        .collect();
    let rows = sqlx::query("SELECT machine, data FROM inventory")
        .fetch_all(pool)
        .await
        .map_err(|e| Error::db("reading inventories", e))?;
    let mut out = Vec::new();
    for r in rows {
        let id: String = r.get(0);
        let Some(name) = wanted.get(&id) else {
            continue;
        };
        let inv: Inventory = match serde_json::from_str(r.get::<&str, _>(1)) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(machine = %id, error = %e, "a stored inventory does not parse");
                continue;
            }
        };
        if inv.upgradable.is_empty() {
            continue;
        }
        out.push(Outdated {
            machine: name.clone(),
            upgradable: inv.upgradable.len(),
            security: inv.security_updates(),
            packages: inv.upgradable,
            collected_at: inv.collected_at,
        });
    }
    out.sort_by(|a, b| a.machine.cmp(&b.machine));
    Ok(out)
}
