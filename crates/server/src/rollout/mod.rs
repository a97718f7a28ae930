//! Rollouts: a release moved to the machines of a channel wave by wave (STATE.md beside this
//! file). The decisions are pure ([`plan`]); this shell keeps the live rollouts in memory (so a
//! check-in asks them without the database), runs the planner on the check-ins of their machines,
//! on a timer and after every admin command, writes each step to the database before memory
//! follows it, and wakes the machines whose answer changed.

pub mod pending;
pub mod plan;
pub mod spec;
mod store;
mod view;
pub mod window;

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use semithin_protocol::api::MachineStatus;
use semithin_protocol::rollout::{RolloutInfo, RolloutState, StartRequest};
use semithin_protocol::selector::Selector;
use semithin_store::CommitId;
use semithin_store::pack::ObjKind;
use tokio::sync::{Mutex, Notify};

use crate::releases::Published;
use crate::{App, Error, now};
use plan::{Plan, Row, Seen, Signed};
use spec::Spec;
use store::{Change, Record};

/// How often the planner runs when nothing pokes it (windows opening, soaks ending).
const TICK: Duration = Duration::from_secs(3);

/// Why a rollout command was refused; the HTTP layer turns it into a status.
#[derive(Debug)]
pub enum Problem {
    Bad(String),
    NotFound(String),
    Conflict(String),
    Server(Error),
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        Problem::Server(e)
    }
}

type Res<T> = std::result::Result<T, Problem>;

/// A rollout in memory.
struct Live {
    rec: Record,
    plan: Plan,
    rows: Vec<Row>,
    index: HashMap<String, usize>,
    /// What each machine was last told (`None`: the rollout did not govern it), so that the
    /// machines whose answer changes are woken.
    told: Vec<Option<Option<String>>>,
}

impl Live {
    fn new(rec: Record, rows: Vec<Row>, offline_after: i64) -> Res<Self> {
        let plan = plan_of(&rec, offline_after)?;
        let index = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r.machine.clone(), i))
            .collect();
        let told = vec![None; rows.len()];
        Ok(Live {
            rec,
            plan,
            rows,
            index,
            told,
        })
    }
}

fn plan_of(rec: &Record, offline_after: i64) -> Res<Plan> {
    let window = match &rec.spec.window {
        Some(w) => Some(
            window::Window::parse(w, rec.spec.tz.as_deref())
                .map_err(|e| Problem::Server(Error::Config(format!("rollout {}: {e}", rec.id))))?,
        ),
        None => None,
    };
    Ok(Plan {
        release: rec.release.clone(),
        waves: 1 + rec.spec.waves.len() as u32,
        soak_secs: rec.spec.soak_secs,
        max_failures: rec.spec.max_failures,
        window,
        max_per_hour: rec.spec.max_per_hour,
        offline_after,
    })
}

/// A rollout copied out of `live` (or read from the database), to look at without a lock.
struct Snapshot {
    rec: Record,
    plan: Plan,
    rows: Vec<Row>,
}

/// Every live rollout: those not superseded (one per channel governs it: the one its signed
/// target names).
pub struct Rollouts {
    live: RwLock<BTreeMap<i64, Live>>,
    /// Serialises steps and admin commands: one writer at a time, across the database writes.
    work: Mutex<()>,
    poke: Notify,
    offline_after: i64,
}

/// What the fleet knows of a machine now, for the planner.
fn seen_of(app: &App, machine: &str, channel: &str) -> Seen {
    let Some(m) = app.fleet.get(machine) else {
        return Seen::default();
    };
    let r = m.row.lock().expect("lock");
    let seen = m.last_seen.load(Ordering::Relaxed);
    Seen {
        on_channel: r.status == MachineStatus::Accepted && r.channel.as_deref() == Some(channel),
        current: r.report.current.map(|c| c.to_string()),
        health: r.report.health,
        failed_release: r.report.failed_release.map(|c| c.to_string()),
        last_error: r.report.last_error.clone(),
        last_seen: (seen != 0).then_some(seen),
        failing: r.report.failing.as_ref().map(|f| f.phase),
    }
}

fn signed(published: &Published, rec: &Record) -> Signed {
    let ours = published
        .targets
        .get(&rec.channel)
        .and_then(|t| t.rollout.as_deref())
        == Some(rec.uid.as_str());
    if ours { Signed::Ours } else { Signed::Other }
}

fn wave_name(w: u32) -> String {
    if w == 0 {
        "canary".into()
    } else {
        format!("wave {w}")
    }
}

use semithin_protocol::ids::short_str as short;

impl Rollouts {
    /// Loads the live rollouts from the database.
    pub async fn load(db: &sqlx::SqlitePool, offline_after: i64) -> crate::Result<Self> {
        let mut live = BTreeMap::new();
        for (rec, rows) in store::load_live(db).await? {
            let id = rec.id;
            let l = Live::new(rec, rows, offline_after).map_err(|p| match p {
                Problem::Server(e) => e,
                other => Error::Config(format!("rollout {id}: {other:?}")),
            })?;
            live.insert(id, l);
        }
        Ok(Self {
            live: RwLock::new(live),
            work: Mutex::new(()),
            poke: Notify::new(),
            offline_after,
        })
    }

    pub fn len(&self) -> usize {
        self.live.read().expect("lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs the planner soon.
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// Runs the planner soon if the machine belongs to a live rollout (its report changed).
    pub fn poke_for(&self, machine: &str) {
        let member = self
            .live
            .read()
            .expect("lock")
            .values()
            .any(|l| l.index.contains_key(machine));
        if member {
            self.poke();
        }
    }

    /// What a machine of `channel` is told while a rollout governs the channel (its signed
    /// target names the rollout): `Some(release)`, `Some(None)` for no release (it stays where
    /// it is); `None` when no rollout governs it, so the channel's release applies.
    pub fn told(
        &self,
        published: &Published,
        machine: &str,
        channel: &str,
        current: Option<&str>,
        now: i64,
    ) -> Option<Option<CommitId>> {
        let uid = published.targets.get(channel)?.rollout.as_deref()?;
        let live = self.live.read().expect("lock");
        let l = live
            .values()
            .find(|l| l.rec.uid == uid && l.rec.channel == channel)?;
        if l.rec.state == RolloutState::Superseded {
            return None;
        }
        let i = *l.index.get(machine)?;
        let t = plan::told(&l.plan, l.rec.state, &l.rows[i], current, now);
        Some(t.and_then(|s| s.parse().ok()))
    }

    /// Steps every live rollout.
    pub async fn step_all(&self, app: &App) -> crate::Result<()> {
        let _g = self.work.lock().await;
        let ids: Vec<i64> = self.live.read().expect("lock").keys().copied().collect();
        for id in ids {
            self.step_locked(app, id).await?;
        }
        Ok(())
    }

    /// One step of rollout `id` (the caller holds `work`): plan, store, apply, wake.
    async fn step_locked(&self, app: &App, id: i64) -> crate::Result<()> {
        let published = app.published();
        let (rec, plan, rows) = {
            let live = self.live.read().expect("lock");
            let Some(l) = live.get(&id) else {
                return Ok(());
            };
            (l.rec.clone(), l.plan.clone(), l.rows.clone())
        };
        let seen: Vec<Seen> = rows
            .iter()
            .map(|r| seen_of(app, &r.machine, &rec.channel))
            .collect();
        let t = now();
        let sig = signed(&published, &rec);
        let d = plan::step(&plan, rec.state, sig, &rows, &seen, t);
        let mut c = Change::default();
        if d.state != rec.state {
            let reason = d.reason.clone().or_else(|| match d.state {
                // keep why it was aborted or rolled back when it is superseded later
                RolloutState::Superseded => rec.reason.clone(),
                _ => None,
            });
            c.state = Some((d.state, reason));
        }
        c.admitted = d.admit.iter().map(|&i| rows[i].machine.clone()).collect();
        c.settled = d.stamp.iter().map(|&i| rows[i].machine.clone()).collect();
        for &i in &d.admit {
            c.events.push((
                rows[i].machine.clone(),
                "rollout".into(),
                format!(
                    "admitted by rollout {id} ({}) to release {}",
                    wave_name(rows[i].wave.unwrap_or(0)),
                    short(&rec.release)
                ),
            ));
        }
        store::save(&app.db, id, &c, t).await?;
        match &c.state {
            Some((RolloutState::Halted, Some(why))) => {
                tracing::warn!(rollout = id, channel = %rec.channel, reason = %why, "rollout halted")
            }
            Some((s, _)) => {
                tracing::info!(rollout = id, channel = %rec.channel, state = s.as_str(), "rollout")
            }
            None => {}
        }
        if !d.admit.is_empty() {
            tracing::info!(rollout = id, admitted = d.admit.len(), wave = ?d.wave, "machines admitted");
        }
        // memory follows what is stored; then everyone whose answer changed is woken
        let mut wake = Vec::new();
        {
            let mut live = self.live.write().expect("lock");
            let Some(l) = live.get_mut(&id) else {
                return Ok(());
            };
            for &i in &d.admit {
                l.rows[i].admitted_at = Some(t);
            }
            for &i in &d.stamp {
                l.rows[i].settled_at = Some(t);
            }
            if let Some((s, r)) = &c.state {
                l.rec.state = *s;
                l.rec.reason = r.clone();
                l.rec.updated_at = t;
            }
            let governs = sig == Signed::Ours && l.rec.state != RolloutState::Superseded;
            for (i, row) in l.rows.iter().enumerate() {
                let now_told = governs
                    .then(|| plan::told(&l.plan, l.rec.state, row, seen[i].current.as_deref(), t));
                if now_told != l.told[i] {
                    l.told[i] = now_told;
                    wake.push(row.machine.clone());
                }
            }
            if l.rec.state == RolloutState::Superseded {
                live.remove(&id);
            }
        }
        for m in wake {
            if let Some(m) = app.fleet.get(&m) {
                m.wake.notify_one();
            }
        }
        Ok(())
    }

    /// Makes a rollout (or, with `dry_run`, only computes it).
    pub async fn start(&self, app: &std::sync::Arc<App>, req: &StartRequest) -> Res<RolloutInfo> {
        let spec = Spec::parse(req).map_err(Problem::Bad)?;
        semithin_store::channel::check_name(&req.channel)
            .map_err(|e| Problem::Bad(e.to_string()))?;
        let release: CommitId = req.release.parse().map_err(|_| {
            Problem::Bad(format!(
                "{:?} is not a release (a commit id, 64 hex digits)",
                req.release
            ))
        })?;
        let held = |app: &App| {
            app.published()
                .store
                .contains(ObjKind::Commit, release.as_bytes())
        };
        if !held(app) {
            // committed since the server last read the repository
            app.reload().await?;
        }
        if !held(app) {
            return Err(Problem::NotFound(format!(
                "the server's repository has no commit {}: commit it there first",
                release.to_hex()
            )));
        }
        let sel = Selector::parse(&req.selector).map_err(|e| Problem::Bad(e.to_string()))?;
        let trust = crate::releases::trust_dir(&app.cfg.repo());
        let signed_before = tokio::task::spawn_blocking(move || {
            semithin_trust::repo::TrustRepo::open(&trust).and_then(|t| t.signed_releases())
        })
        .await
        .expect("reading trust metadata")
        .map_err(Error::from)?;
        let rel = release.to_hex();
        // what the channel's machines were told until now
        let before = app.release(&req.channel).map(|c| c.to_hex());
        let mut cands = Vec::new();
        for m in app.fleet.select(&Selector::All) {
            let r = m.snapshot();
            if r.status != MachineStatus::Accepted || r.channel.as_deref() != Some(&req.channel) {
                continue;
            }
            // What it runs, if that was signed here; a machine that runs nothing yet keeps what
            // it was getting, the channel's release until now. A machine on a version never
            // signed here has nothing it could be told: it is left where it is.
            let from = match r.report.current {
                Some(c) => Some(c.to_string()).filter(|c| *c == rel || signed_before.contains(c)),
                None => before.clone(),
            };
            cands.push(plan::Candidate {
                machine: r.id,
                selected: sel.matches_facts(&r.name, &r.labels, m.facts().as_deref()),
                name: r.name,
                from,
            });
        }
        if cands.is_empty() {
            return Err(Problem::NotFound(format!(
                "no machines selected: no accepted machine follows channel {} (`semithin fleet \
                 assign`)",
                req.channel
            )));
        }
        if !cands.iter().any(|c| c.selected) {
            return Err(Problem::NotFound(format!(
                "no machines selected: {sel} matches none of the {} accepted machine(s) that \
                 follow channel {}",
                cands.len(),
                req.channel
            )));
        }
        let rows = plan::assign(&rel, &cands, &spec.canary, &spec.waves).map_err(Problem::Bad)?;
        let _g = self.work.lock().await;
        if let Some(l) = self
            .live
            .read()
            .expect("lock")
            .values()
            .find(|l| l.rec.channel == req.channel && l.rec.state.is_active())
        {
            return Err(Problem::Conflict(format!(
                "rollout {} on channel {} is {}: abort it first, or let it complete",
                l.rec.id,
                req.channel,
                l.rec.state.as_str()
            )));
        }
        let t = now();
        let mut rec = Record {
            id: 0,
            uid: crate::random_token_id()?,
            channel: req.channel.clone(),
            release: rel,
            selector: sel.to_string(),
            spec,
            state: RolloutState::Publishing,
            reason: None,
            created_at: t,
            updated_at: t,
        };
        if req.dry_run {
            return Ok(self.info_of(app, &self.stored(rec, rows)?, true));
        }
        rec.id = match store::insert(&app.db, &rec, &rows).await? {
            Ok(id) => id,
            Err(store::Taken) => {
                return Err(Problem::Conflict(format!(
                    "another rollout on channel {} is active: abort it first, or let it complete",
                    req.channel
                )));
            }
        };
        let id = rec.id;
        tracing::info!(rollout = id, channel = %rec.channel, release = %rec.release, machines = rows.len(), "rollout made");
        let l = Live::new(rec.clone(), rows.clone(), self.offline_after)?;
        self.live.write().expect("lock").insert(id, l);
        // its packs are built while the release is being signed, not when the canary asks
        app.prepare_release(&req.channel, release);
        Ok(self.info_of(app, &self.stored(rec, rows)?, true))
    }

    /// Changes the state of a live rollout by an admin command, then steps it.
    async fn command(
        &self,
        app: &App,
        id: i64,
        verb: &str,
        allowed: &[RolloutState],
        to: RolloutState,
        reason: Option<String>,
    ) -> Res<RolloutInfo> {
        let _g = self.work.lock().await;
        let Some(Snapshot { rec, plan, rows }) = self.snapshot(id) else {
            return Err(match store::get(&app.db, id).await? {
                Some((r, _)) => Problem::Conflict(format!(
                    "rollout {id} is {}: it tells no machine anything any more",
                    r.state.as_str()
                )),
                None => Problem::NotFound(format!("no rollout has the id {id}")),
            });
        };
        if !allowed.contains(&rec.state) {
            let hint = match (verb, rec.state) {
                ("abort", RolloutState::Completed) => {
                    format!(" (`semithin rollout rollback {id}` sends every machine back)")
                }
                ("rollback", RolloutState::Publishing) => {
                    format!(" (its release is not signed yet: `semithin rollout abort {id}`)")
                }
                _ => String::new(),
            };
            return Err(Problem::Conflict(format!(
                "rollout {id} is {}: it cannot be {}{hint}",
                rec.state.as_str(),
                match verb {
                    "pause" => "paused",
                    "resume" => "resumed",
                    "abort" => "aborted",
                    _ => "rolled back",
                }
            )));
        }
        let mut c = Change {
            state: Some((to, reason)),
            ..Change::default()
        };
        if verb == "resume" {
            let seen: Vec<Seen> = rows
                .iter()
                .map(|r| seen_of(app, &r.machine, &rec.channel))
                .collect();
            for i in plan::resume_accepts(&plan, rec.state, &rows, &seen) {
                c.acknowledged.push(rows[i].machine.clone());
                c.events.push((
                    rows[i].machine.clone(),
                    "rollout".into(),
                    format!(
                        "failure of release {} accepted by resuming rollout {id}",
                        short(&rec.release)
                    ),
                ));
            }
        }
        if matches!(to, RolloutState::Aborted | RolloutState::RolledBack) {
            for r in rows.iter().filter(|r| {
                r.from.is_some() && (to == RolloutState::RolledBack || r.admitted_at.is_some())
            }) {
                c.events.push((
                    r.machine.clone(),
                    "rollout".into(),
                    format!(
                        "sent back to release {} by {} rollout {id}",
                        short(r.from.as_deref().unwrap_or("")),
                        if to == RolloutState::Aborted {
                            "aborting"
                        } else {
                            "rolling back"
                        }
                    ),
                ));
            }
        }
        let t = now();
        store::save(&app.db, id, &c, t).await?;
        tracing::info!(
            rollout = id,
            from = rec.state.as_str(),
            to = to.as_str(),
            "rollout {verb}"
        );
        {
            let mut live = self.live.write().expect("lock");
            if let Some(l) = live.get_mut(&id) {
                l.rec.state = to;
                l.rec.reason = c.state.as_ref().and_then(|s| s.1.clone());
                l.rec.updated_at = t;
                for m in &c.acknowledged {
                    if let Some(&i) = l.index.get(m) {
                        l.rows[i].acknowledged = true;
                    }
                }
            }
        }
        self.step_locked(app, id).await?;
        self.info(app, id).await
    }

    pub async fn pause(&self, app: &App, id: i64) -> Res<RolloutInfo> {
        use RolloutState::*;
        self.command(
            app,
            id,
            "pause",
            &[Running],
            Paused,
            Some("paused by the admin".into()),
        )
        .await
    }

    pub async fn resume(&self, app: &App, id: i64) -> Res<RolloutInfo> {
        use RolloutState::*;
        self.command(app, id, "resume", &[Paused, Halted], Running, None)
            .await
    }

    pub async fn abort(&self, app: &App, id: i64) -> Res<RolloutInfo> {
        use RolloutState::*;
        self.command(
            app,
            id,
            "abort",
            &[Publishing, Running, Paused, Halted],
            Aborted,
            Some("aborted by the admin: the machines it admitted go back to their release".into()),
        )
        .await
    }

    pub async fn rollback(&self, app: &App, id: i64) -> Res<RolloutInfo> {
        use RolloutState::*;
        self.command(
            app,
            id,
            "rollback",
            &[Running, Paused, Halted, Completed, Aborted],
            RolledBack,
            Some("rolled back by the admin: every machine goes back to its release".into()),
        )
        .await
    }

    fn snapshot(&self, id: i64) -> Option<Snapshot> {
        self.live.read().expect("lock").get(&id).map(|l| Snapshot {
            rec: l.rec.clone(),
            plan: l.plan.clone(),
            rows: l.rows.clone(),
        })
    }

    fn stored(&self, rec: Record, rows: Vec<Row>) -> Res<Snapshot> {
        let plan = plan_of(&rec, self.offline_after)?;
        Ok(Snapshot { rec, plan, rows })
    }

    /// Every active rollout's progress, for `/metrics`.
    pub fn progress(&self) -> Vec<Progress> {
        self.live
            .read()
            .expect("lock")
            .values()
            .filter(|l| l.rec.state.is_active())
            .map(|l| {
                let selected = l.rows.iter().filter(|r| r.wave.is_some());
                let (mut waiting, mut admitted, mut settled, mut wave) = (0, 0, 0, 0);
                for r in selected {
                    match (r.admitted_at, r.settled_at) {
                        (None, _) => waiting += 1,
                        (Some(_), None) => admitted += 1,
                        (Some(_), Some(_)) => settled += 1,
                    }
                    if r.admitted_at.is_some() {
                        wave = wave.max(r.wave.unwrap_or(0));
                    }
                }
                Progress {
                    id: l.rec.id,
                    channel: l.rec.channel.clone(),
                    state: l.rec.state,
                    wave,
                    waiting,
                    admitted,
                    settled,
                }
            })
            .collect()
    }

    /// Whether a live rollout of `channel` is active (publishing, running, paused, halted).
    pub fn active_on(&self, channel: &str) -> Option<(i64, RolloutState)> {
        self.live
            .read()
            .expect("lock")
            .values()
            .find(|l| l.rec.channel == channel && l.rec.state.is_active())
            .map(|l| (l.rec.id, l.rec.state))
    }
}

/// Where an active rollout stands: its machines counted by phase.
#[derive(Clone, Debug)]
pub struct Progress {
    pub id: i64,
    pub channel: String,
    pub state: RolloutState,
    /// The highest wave admitted so far (0: the canary).
    pub wave: u32,
    pub waiting: usize,
    pub admitted: usize,
    pub settled: usize,
}

/// The planner's own task: steps every live rollout when poked (a report of one of their
/// machines changed, a publish was noticed) and every few seconds, until the server stops.
pub async fn run(app: std::sync::Arc<App>) {
    let mut stop = app.shutdown.clone();
    loop {
        if let Err(e) = app.rollouts.step_all(&app).await {
            tracing::warn!(error = %e, "stepping rollouts");
        }
        tokio::select! {
            _ = app.rollouts.poke.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
