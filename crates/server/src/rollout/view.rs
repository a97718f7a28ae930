//! What the admin reads about rollouts: a rollout per wave and per machine (`info`, `list`),
//! what it waits for in words, and why it holds a machine (`hold_reason`, for `fleet list`).

use std::collections::BTreeMap;

use semithin_protocol::api::MachineStatus;
use semithin_protocol::rollout::{
    MachineState, PlanInfo, RolloutInfo, RolloutMachine, RolloutState, WaveInfo,
};

use super::plan::{self, Plan, Seen, Signed, Waiting};
use super::{Problem, Res, Rollouts, Snapshot, seen_of, short, signed, store, wave_name};
use crate::releases::Published;
use crate::{App, now};

fn utc(t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|ts| ts.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| t.to_string())
}

/// What a rollout waits for, in words (`waves`: the figures of each wave, so that a wave with
/// failures is not called healthy).
fn describe(w: &Waiting, p: &Plan, id: i64, now: i64, waves: &[WaveInfo]) -> String {
    match w {
        Waiting::Publish => {
            "waiting for its release to be signed for it (`semithin rollout start` \
             does that right after making it)"
                .into()
        }
        Waiting::Paused => format!("paused: `semithin rollout resume {id}` goes on"),
        Waiting::Halted => format!(
            "halted: fix the cause, then `semithin rollout resume {id}` (the failures so far are \
             accepted) or `semithin rollout abort {id}`"
        ),
        Waiting::Window { opens_at } => {
            let win = p.window.as_ref().expect("a window");
            match opens_at {
                Some(t) => format!(
                    "outside the window {:?} ({}): it opens at {}",
                    win.text(),
                    win.tz_name(),
                    win.local_text(*t)
                ),
                None => format!("outside the window {:?} ({})", win.text(), win.tz_name()),
            }
        }
        Waiting::Rate { until } => format!(
            "at most {} machine(s) admitted an hour: the next at {}",
            p.max_per_hour.unwrap_or(0),
            utc(*until)
        ),
        Waiting::Machines { wave, names } => {
            let mut list: Vec<&str> = names.iter().take(10).map(String::as_str).collect();
            let more = names.len().saturating_sub(10);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            list.sort();
            format!(
                "{}: waiting for {} machine(s) to update: {}{more}",
                wave_name(*wave),
                names.len(),
                list.join(", ")
            )
        }
        Waiting::Soak { wave, until } => {
            let how = match waves.get(*wave as usize).map_or(0, |f| f.failed) {
                0 => "is healthy".to_owned(),
                n => format!(
                    "settled with {n} failed (within --max-failures {})",
                    p.max_failures
                ),
            };
            format!(
                "{} {how}; soaking until {} ({} s left)",
                wave_name(*wave),
                utc(*until),
                (until - now).max(0)
            )
        }
    }
}

impl Rollouts {
    /// Why the rollout that governs `channel` tells machine `r` what it tells it, for the admin:
    /// the rollout, its state and where the machine stands in it. `None` when no rollout
    /// governs the channel or the machine has no row in it (it follows the channel).
    pub fn hold_reason(
        &self,
        published: &Published,
        r: &crate::db::MachineRow,
        channel: &str,
    ) -> Option<String> {
        let uid = published.targets.get(channel)?.rollout.as_deref()?;
        let live = self.live.read().expect("lock");
        let l = live
            .values()
            .find(|l| l.rec.uid == uid && l.rec.channel == channel)?;
        if l.rec.state == RolloutState::Superseded {
            return None;
        }
        let row = &l.rows[*l.index.get(&r.id)?];
        let seen = Seen {
            on_channel: r.status == MachineStatus::Accepted
                && r.channel.as_deref() == Some(channel),
            current: r.report.current.map(|c| c.to_string()),
            health: r.report.health,
            failed_release: r.report.failed_release.map(|c| c.to_string()),
            last_error: r.report.last_error.clone(),
            last_seen: None,
            failing: r.report.failing.as_ref().map(|f| f.phase),
        };
        let state = l.rec.state.as_str();
        let why = match plan::classify(&l.plan, l.rec.state, row, &seen) {
            MachineState::Held => format!("outside its selector {}", l.rec.selector),
            MachineState::Waiting => format!(
                "not admitted yet ({})",
                wave_name(row.wave.unwrap_or_default())
            ),
            MachineState::Back | MachineState::Returning => {
                "sent back to the release it ran before".into()
            }
            MachineState::Failed | MachineState::FailureAccepted => "it failed the release".into(),
            MachineState::Updating | MachineState::Updated | MachineState::Left => {
                format!("admitted while the rollout is {state}")
            }
        };
        Some(format!(
            "rollout {} ({state}) of release {}: {why}",
            l.rec.id,
            short(&l.rec.release)
        ))
    }

    /// One rollout, live or stored.
    pub async fn info(&self, app: &App, id: i64) -> Res<RolloutInfo> {
        if let Some(s) = self.snapshot(id) {
            return Ok(self.info_of(app, &s, true));
        }
        let (rec, rows) = store::get(&app.db, id)
            .await?
            .ok_or_else(|| Problem::NotFound(format!("no rollout has the id {id}")))?;
        Ok(self.info_of(app, &self.stored(rec, rows)?, true))
    }

    /// The newest rollouts (of a channel), without their machines.
    pub async fn list(&self, app: &App, channel: Option<&str>) -> Res<Vec<RolloutInfo>> {
        let recs = store::list(&app.db, channel, 50).await?;
        let mut out = Vec::new();
        for rec in recs {
            let s = match self.snapshot(rec.id) {
                Some(s) => s,
                None => {
                    let rows = match store::get(&app.db, rec.id).await? {
                        Some((_, rows)) => rows,
                        None => Vec::new(),
                    };
                    self.stored(rec, rows)?
                }
            };
            out.push(self.info_of(app, &s, false));
        }
        Ok(out)
    }

    /// Never called with `live` locked: it reads the machines (lock order: a machine, then
    /// `live`, as a check-in does).
    pub(super) fn info_of(&self, app: &App, l: &Snapshot, machines: bool) -> RolloutInfo {
        let published = app.published();
        let t = now();
        let seen: Vec<Seen> = l
            .rows
            .iter()
            .map(|r| seen_of(app, &r.machine, &l.rec.channel))
            .collect();
        let sig = signed(&published, &l.rec);
        // what the next step would say, without doing it
        let d = plan::step(&l.plan, l.rec.state, sig, &l.rows, &seen, t);
        let live_state = l.rec.state;
        let spec = &l.rec.spec;
        let mut waves = Vec::new();
        for w in 0..l.plan.waves {
            let f = plan::wave_figures(&l.plan, live_state, &l.rows, &seen, w);
            waves.push(WaveInfo {
                index: w,
                name: wave_name(w),
                percent: (w > 0).then(|| spec.waves[w as usize - 1]),
                machines: f.machines,
                admitted: f.admitted,
                updated: f.updated,
                failed: f.failed,
                healthy_at: f.healthy_at,
                soak_until: f.soak_until,
            });
        }
        let governs = sig == Signed::Ours && live_state != RolloutState::Superseded;
        let mut counts = BTreeMap::new();
        let mut list = Vec::new();
        for (row, s) in l.rows.iter().zip(&seen) {
            let st = plan::classify(&l.plan, live_state, row, s);
            *counts.entry(st.as_str().to_owned()).or_insert(0) += 1;
            if !machines {
                continue;
            }
            let told = if governs {
                plan::told(&l.plan, live_state, row, s.current.as_deref(), t)
            } else {
                published.releases.get(&l.rec.channel).map(|c| c.to_hex())
            };
            list.push(RolloutMachine {
                name: row.name.clone(),
                id: row.machine.clone(),
                wave: row.wave,
                from: row.from.clone(),
                state: st,
                told,
                admitted_at: row.admitted_at,
                settled_at: row.settled_at,
                current: s.current.clone(),
                health: s.health,
                last_error: s.last_error.clone(),
                last_seen: s.last_seen,
                offline: st != MachineState::Left
                    && s.last_seen.is_none_or(|x| t - x > self.offline_after),
            });
        }
        let mut allowed: Vec<String> = l
            .rows
            .iter()
            .filter_map(|r| r.from.clone())
            .filter(|f| *f != l.rec.release)
            .collect();
        allowed.sort();
        allowed.dedup();
        let waiting = d
            .waiting
            .as_ref()
            .filter(|_| live_state != RolloutState::Superseded)
            .map(|w| describe(w, &l.plan, l.rec.id, t, &waves));
        let froms = l.rows.iter().filter_map(|r| r.from.as_deref());
        let waiting = match (waiting, app.building_note(&l.rec.release, froms)) {
            (Some(w), Some(b)) => Some(format!("{w}; {b}")),
            (w, b) => w.or(b),
        };
        RolloutInfo {
            id: l.rec.id,
            channel: l.rec.channel.clone(),
            release: l.rec.release.clone(),
            selector: l.rec.selector.clone(),
            state: live_state,
            reason: l.rec.reason.clone(),
            plan: PlanInfo {
                canary: spec.canary.to_string(),
                waves: spec.waves.clone(),
                soak_secs: spec.soak_secs,
                max_failures: spec.max_failures.to_string(),
                window: spec.window.clone(),
                tz: spec
                    .window
                    .as_ref()
                    .map(|_| spec.tz.clone().unwrap_or_else(|| "UTC".into())),
                max_per_hour: spec.max_per_hour,
            },
            created_at: l.rec.created_at,
            updated_at: l.rec.updated_at,
            uid: l.rec.uid.clone(),
            allowed,
            wave: d.wave,
            waiting,
            waves,
            machines: list,
            counts,
        }
    }
}
