//! Which machine moves next, as a pure function of (plan, machine states, now). STATE.md beside
//! this file draws it. The shell (`rollout/mod.rs`) gathers [`Seen`] from the fleet, calls
//! [`step`], stores the [`Decision`] and wakes the machines whose answer ([`told`]) changed.

use semithin_protocol::api::{Health, Phase};
use semithin_protocol::rollout::{MachineState, RolloutState};

use super::spec::{Canary, Threshold};
use super::window::Window;

/// A rollout's plan, fixed at its start.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The release rolled out (commit id, hex).
    pub release: String,
    /// How many waves, the canary wave (0) included.
    pub waves: u32,
    pub soak_secs: i64,
    pub max_failures: Threshold,
    pub window: Option<Window>,
    pub max_per_hour: Option<u32>,
    /// A machine not seen for this long is offline: still pending, never failed.
    pub offline_after: i64,
}

/// One machine of a rollout, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    /// The machine id.
    pub machine: String,
    pub name: String,
    /// 0: canary; 1..: the waves; `None`: follows the channel but is not selected (held).
    pub wave: Option<u32>,
    /// What it ran at the start, if that was a release signed here: where abort and rollback
    /// send it back to, and where it is kept until admitted.
    pub from: Option<String>,
    pub admitted_at: Option<i64>,
    /// When it was first seen updated or failed.
    pub settled_at: Option<i64>,
    /// Its failure was accepted by a resume: no longer counted against the threshold.
    pub acknowledged: bool,
}

/// What the server knows of a machine now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// Accepted, and still following the rollout's channel.
    pub on_channel: bool,
    pub current: Option<String>,
    pub health: Health,
    pub failed_release: Option<String>,
    pub last_error: Option<String>,
    pub last_seen: Option<i64>,
    /// Its agent reports it cannot do what it is told (`report.failing`): in what phase.
    pub failing: Option<Phase>,
}

/// Whom the channel's signed target names (`custom.rollout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signed {
    /// This rollout: its release is signed, with the releases its machines are kept on.
    Ours,
    /// Nobody, or another rollout.
    Other,
}

/// What a rollout waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// Its release to be signed with its id.
    Publish,
    Paused,
    Halted,
    /// The window to open (at that time).
    Window {
        opens_at: Option<i64>,
    },
    /// The rate limit: the next admission is possible then.
    Rate {
        until: i64,
    },
    /// Machines of a wave to settle (names; offline ones marked).
    Machines {
        wave: u32,
        names: Vec<String>,
    },
    /// A healthy wave's soak to end.
    Soak {
        wave: u32,
        until: i64,
    },
}

/// What [`step`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The state after this step.
    pub state: RolloutState,
    /// Why it changed to that state, when it did and there is something to say.
    pub reason: Option<String>,
    /// Rows to admit now.
    pub admit: Vec<usize>,
    /// Rows first seen settled now (their `settled_at` becomes now).
    pub stamp: Vec<usize>,
    /// The wave in progress.
    pub wave: Option<u32>,
    pub waiting: Option<Waiting>,
}

fn offline(p: &Plan, s: &Seen, now: i64) -> bool {
    s.last_seen.is_none_or(|t| now - t > p.offline_after)
}

/// Where a machine stands in the rollout.
pub fn classify(p: &Plan, state: RolloutState, row: &Row, seen: &Seen) -> MachineState {
    if !seen.on_channel {
        return MachineState::Left;
    }
    if matches!(state, RolloutState::Aborted | RolloutState::RolledBack) {
        return if row.from.is_none() || seen.current == row.from {
            MachineState::Back
        } else {
            MachineState::Returning
        };
    }
    if row.wave.is_none() {
        return MachineState::Held;
    }
    if row.admitted_at.is_none() {
        return MachineState::Waiting;
    }
    if seen.current.as_deref() == Some(p.release.as_str()) && seen.health == Health::Healthy {
        return MachineState::Updated;
    }
    if seen.failed_release.as_deref() == Some(p.release.as_str()) {
        return if row.acknowledged {
            MachineState::FailureAccepted
        } else {
            MachineState::Failed
        };
    }
    MachineState::Updating
}

/// Updated, or failed: the machine has done what it will do in this rollout. Failures within
/// the threshold do not hold a wave up (passing it halts the rollout first).
fn settled(s: MachineState) -> bool {
    matches!(
        s,
        MachineState::Updated | MachineState::Failed | MachineState::FailureAccepted
    )
}

/// The release a machine of the rollout is told to run (`None`: none, so it stays where it is).
/// Only asked while the rollout governs the channel (its signed target names the rollout).
pub fn told(
    p: &Plan,
    state: RolloutState,
    row: &Row,
    current: Option<&str>,
    now: i64,
) -> Option<String> {
    let release = Some(p.release.clone());
    match state {
        RolloutState::Aborted | RolloutState::RolledBack | RolloutState::Superseded => {
            return row.from.clone();
        }
        _ => {}
    }
    if row.wave.is_none() || row.admitted_at.is_none() {
        return row.from.clone();
    }
    // Already switched (healthy or under its checks): stay; never yanked back by a pause.
    if current == Some(p.release.as_str()) || state == RolloutState::Completed {
        return release;
    }
    // Admitted machines start only while the rollout runs and its window is open.
    let moving =
        state == RolloutState::Running && p.window.as_ref().is_none_or(|w| w.contains(now));
    if moving { release } else { row.from.clone() }
}

/// The rows whose failures a resume accepts (they stop counting against the threshold).
pub fn resume_accepts(p: &Plan, state: RolloutState, rows: &[Row], seen: &[Seen]) -> Vec<usize> {
    rows.iter()
        .zip(seen)
        .enumerate()
        .filter(|(_, (r, s))| classify(p, state, r, s) == MachineState::Failed)
        .map(|(i, _)| i)
        .collect()
}

use semithin_protocol::ids::short_str as short;

fn halt_reason(p: &Plan, rows: &[Row], seen: &[Seen], failed: &[usize], admitted: usize) -> String {
    let mut parts: Vec<String> = failed
        .iter()
        .take(10)
        .map(|&i| {
            let e = seen[i].last_error.as_deref().unwrap_or("no error reported");
            let e: String = e.chars().take(300).collect();
            format!("{}: {e}", rows[i].name)
        })
        .collect();
    if failed.len() > 10 {
        parts.push(format!("and {} more", failed.len() - 10));
    }
    format!(
        "{} of {admitted} machine(s) admitted failed release {} (more than --max-failures {}): {}",
        failed.len(),
        short(&p.release),
        p.max_failures,
        parts.join("; ")
    )
}

/// One step of the rollout at `now`: what changes, whom to admit, what it waits for.
pub fn step(
    p: &Plan,
    state: RolloutState,
    signed: Signed,
    rows: &[Row],
    seen: &[Seen],
    now: i64,
) -> Decision {
    let mut d = Decision {
        state,
        reason: None,
        admit: Vec::new(),
        stamp: Vec::new(),
        wave: None,
        waiting: None,
    };
    match (state, signed) {
        (RolloutState::Superseded, _) => return d,
        (RolloutState::Publishing, Signed::Other) => {
            d.waiting = Some(Waiting::Publish);
            return d;
        }
        (RolloutState::Publishing, Signed::Ours) => d.state = RolloutState::Running,
        (_, Signed::Other) => {
            d.state = RolloutState::Superseded;
            d.reason = Some(
                "the channel was signed again without this rollout (a publish or a newer \
                 rollout): its machines follow the channel's release now"
                    .into(),
            );
            return d;
        }
        (_, Signed::Ours) => {}
    }
    if matches!(d.state, RolloutState::Aborted | RolloutState::RolledBack) {
        return d;
    }
    let states: Vec<MachineState> = rows
        .iter()
        .zip(seen)
        .map(|(r, s)| classify(p, d.state, r, s))
        .collect();
    let settled_at: Vec<Option<i64>> = rows
        .iter()
        .zip(&states)
        .map(|(r, s)| match r.settled_at {
            Some(t) => Some(t),
            None if settled(*s) => Some(now),
            None => None,
        })
        .collect();
    d.stamp = (0..rows.len())
        .filter(|&i| rows[i].settled_at.is_none() && settled_at[i].is_some())
        .collect();
    match d.state {
        RolloutState::Paused => {
            d.waiting = Some(Waiting::Paused);
            return d;
        }
        RolloutState::Halted => {
            d.waiting = Some(Waiting::Halted);
            return d;
        }
        RolloutState::Completed => return d,
        _ => {}
    }

    let admitted = (0..rows.len())
        .filter(|&i| rows[i].admitted_at.is_some() && states[i] != MachineState::Left)
        .count();
    let failed: Vec<usize> = (0..rows.len())
        .filter(|&i| states[i] == MachineState::Failed)
        .collect();
    if p.max_failures.exceeded(failed.len(), admitted) {
        d.state = RolloutState::Halted;
        d.reason = Some(halt_reason(p, rows, seen, &failed, admitted));
        d.waiting = Some(Waiting::Halted);
        return d;
    }

    let window_closed = p.window.as_ref().is_some_and(|w| !w.contains(now));
    let window_wait = || Waiting::Window {
        opens_at: p.window.as_ref().and_then(|w| w.next_open(now)),
    };
    for w in 0..p.waves {
        let members: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i].wave == Some(w) && states[i] != MachineState::Left)
            .collect();
        if members.is_empty() {
            continue;
        }
        d.wave = Some(w);
        let pending = |d: &mut Decision| {
            let names = members
                .iter()
                .filter(|&&i| !settled(states[i]))
                .map(|&i| {
                    if offline(p, &seen[i], now) {
                        format!("{} (offline)", rows[i].name)
                    } else if let Some(phase) = seen[i].failing {
                        format!("{} (failing: {})", rows[i].name, phase.as_str())
                    } else {
                        rows[i].name.clone()
                    }
                })
                .collect();
            d.waiting = Some(Waiting::Machines { wave: w, names });
        };
        let unadmitted: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&i| rows[i].admitted_at.is_none())
            .collect();
        let unsettled = members.iter().any(|&i| !settled(states[i]));
        if window_closed && (unsettled || !unadmitted.is_empty()) {
            d.waiting = Some(window_wait());
            return d;
        }
        if !unadmitted.is_empty() {
            let recent: Vec<i64> = rows
                .iter()
                .filter_map(|r| r.admitted_at)
                .filter(|t| *t > now - 3600)
                .collect();
            let budget = match p.max_per_hour {
                None => usize::MAX,
                Some(n) => (n as usize).saturating_sub(recent.len()),
            };
            d.admit = unadmitted.iter().copied().take(budget).collect();
            if d.admit.len() < unadmitted.len() {
                // the next slot frees an hour after the oldest admission of the last hour
                let oldest = recent
                    .iter()
                    .copied()
                    .chain((!d.admit.is_empty()).then_some(now))
                    .min()
                    .unwrap_or(now);
                d.waiting = Some(Waiting::Rate {
                    until: oldest + 3600,
                });
            } else {
                pending(&mut d);
            }
            return d;
        }
        if unsettled {
            pending(&mut d);
            return d;
        }
        let healthy_at = members
            .iter()
            .filter_map(|&i| settled_at[i])
            .max()
            .unwrap_or(now);
        if now < healthy_at + p.soak_secs {
            d.waiting = Some(Waiting::Soak {
                wave: w,
                until: healthy_at + p.soak_secs,
            });
            return d;
        }
    }
    d.state = RolloutState::Completed;
    d.wave = None;
    d
}

/// A wave's figures, for status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WaveFigures {
    pub machines: u32,
    pub admitted: u32,
    pub updated: u32,
    pub failed: u32,
    pub healthy_at: Option<i64>,
    pub soak_until: Option<i64>,
}

pub fn wave_figures(
    p: &Plan,
    state: RolloutState,
    rows: &[Row],
    seen: &[Seen],
    w: u32,
) -> WaveFigures {
    let mut f = WaveFigures::default();
    let mut all_settled = true;
    let mut latest: Option<i64> = None;
    for (r, s) in rows.iter().zip(seen).filter(|(r, _)| r.wave == Some(w)) {
        let st = classify(p, state, r, s);
        if st == MachineState::Left {
            continue;
        }
        f.machines += 1;
        f.admitted += u32::from(r.admitted_at.is_some());
        f.updated += u32::from(st == MachineState::Updated);
        f.failed += u32::from(matches!(
            st,
            MachineState::Failed | MachineState::FailureAccepted
        ));
        all_settled &= settled(st) && r.settled_at.is_some();
        latest = latest.max(r.settled_at);
    }
    if f.machines > 0 && all_settled {
        f.healthy_at = latest;
        f.soak_until = latest.map(|t| t + p.soak_secs);
    }
    f
}

/// A machine that may take part in a rollout: accepted and following its channel.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub machine: String,
    pub name: String,
    /// The release it runs, when that is a release signed here.
    pub from: Option<String>,
    /// Matched by the rollout's selector.
    pub selected: bool,
}

/// The order machines are chosen in: a hash of the release and the name, so that it is the
/// same every time for a release (a dry run shows the real plan) but another release picks
/// other canaries, and a wave is not one end of an alphabet (one site, one room).
fn order_key(release: &str, name: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("semithin 2026-11 rollout order v1");
    h.update(release.as_bytes());
    h.update(&[0]);
    h.update(name.as_bytes());
    *h.finalize().as_bytes()
}

/// The rows of a new rollout: the canaries (wave 0), then the waves, each a slice of the other
/// selected machines in [`order_key`] order (the cumulative percentages rounded up), then the
/// machines of the channel the selector leaves out (held). Sorted in the order of admission.
pub fn assign(
    release: &str,
    candidates: &[Candidate],
    canary: &Canary,
    waves: &[u32],
) -> Result<Vec<Row>, String> {
    let mut selected: Vec<&Candidate> = candidates.iter().filter(|c| c.selected).collect();
    if selected.is_empty() {
        return Err("no machines selected".into());
    }
    selected.sort_by_key(|c| order_key(release, &c.name));
    let (canaries, rest): (Vec<&Candidate>, Vec<&Candidate>) = match canary {
        Canary::Count(n) => {
            let n = *n as usize;
            if n > selected.len() {
                return Err(format!(
                    "--canary {n}: only {} machine(s) are selected",
                    selected.len()
                ));
            }
            (selected[..n].to_vec(), selected[n..].to_vec())
        }
        Canary::Names(names) => {
            for n in names {
                if !selected.iter().any(|c| &c.name == n) {
                    return Err(format!(
                        "canary {n:?} is not among the selected machines that follow the channel"
                    ));
                }
            }
            selected.iter().partition(|c| names.contains(&c.name))
        }
    };
    let row = |c: &Candidate, wave: Option<u32>| Row {
        machine: c.machine.clone(),
        name: c.name.clone(),
        wave,
        from: c.from.clone(),
        ..Row::default()
    };
    let mut rows: Vec<Row> = canaries.iter().map(|c| row(c, Some(0))).collect();
    let total = rest.len() as u64;
    let mut done = 0usize;
    for (i, pct) in waves.iter().enumerate() {
        let upto = (total * *pct as u64).div_ceil(10_000) as usize;
        for c in &rest[done..upto.max(done)] {
            rows.push(row(c, Some(i as u32 + 1)));
        }
        done = done.max(upto);
    }
    let mut held: Vec<&Candidate> = candidates.iter().filter(|c| !c.selected).collect();
    held.sort_by(|a, b| a.name.cmp(&b.name));
    rows.extend(held.into_iter().map(|c| row(c, None)));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RolloutState::*;

    const NEW: &str = "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn";
    const OLD: &str = "oooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooo";
    const T0: i64 = 1_800_000_000;

    fn plan(waves: u32) -> Plan {
        Plan {
            release: NEW.into(),
            waves,
            soak_secs: 600,
            max_failures: Threshold::Count(0),
            window: None,
            max_per_hour: None,
            offline_after: 900,
        }
    }

    /// A fake fleet: rows, what each machine reports, and a clock; `run` steps the planner and
    /// applies its decision the way the shell does.
    struct Sim {
        p: Plan,
        state: RolloutState,
        rows: Vec<Row>,
        seen: Vec<Seen>,
        now: i64,
        reason: Option<String>,
        last: Option<Decision>,
    }

    impl Sim {
        fn new(p: Plan, waves: &[u32], canary: Canary, n: usize) -> Sim {
            let cands: Vec<Candidate> = (0..n)
                .map(|i| Candidate {
                    machine: format!("id{i:02}"),
                    name: format!("m{i:02}"),
                    from: Some(OLD.into()),
                    selected: true,
                })
                .collect();
            let rows = assign(NEW, &cands, &canary, waves).unwrap();
            let seen = rows
                .iter()
                .map(|_| Seen {
                    on_channel: true,
                    current: Some(OLD.into()),
                    health: Health::Healthy,
                    last_seen: Some(T0),
                    ..Seen::default()
                })
                .collect();
            Sim {
                p,
                state: Publishing,
                rows,
                seen,
                now: T0,
                reason: None,
                last: None,
            }
        }

        fn run(&mut self) -> &Decision {
            let d = step(
                &self.p,
                self.state,
                Signed::Ours,
                &self.rows,
                &self.seen,
                self.now,
            );
            for &i in &d.admit {
                self.rows[i].admitted_at = Some(self.now);
            }
            for &i in &d.stamp {
                self.rows[i].settled_at = Some(self.now);
            }
            if d.state != self.state {
                self.state = d.state;
                self.reason = d.reason.clone();
            }
            self.last = Some(d);
            self.last.as_ref().unwrap()
        }

        fn i(&self, name: &str) -> usize {
            self.rows.iter().position(|r| r.name == name).unwrap()
        }

        fn wave(&self, w: u32) -> Vec<String> {
            self.rows
                .iter()
                .filter(|r| r.wave == Some(w))
                .map(|r| r.name.clone())
                .collect()
        }

        fn admitted(&self) -> Vec<String> {
            self.rows
                .iter()
                .filter(|r| r.admitted_at.is_some())
                .map(|r| r.name.clone())
                .collect()
        }

        /// The machines do what they are told: those told the new release update.
        fn machines_obey(&mut self) {
            for i in 0..self.rows.len() {
                let t = told(
                    &self.p,
                    self.state,
                    &self.rows[i],
                    self.seen[i].current.as_deref(),
                    self.now,
                );
                if t.is_some() && self.seen[i].failed_release != t {
                    self.seen[i].current = t;
                    self.seen[i].health = Health::Healthy;
                }
            }
        }

        fn fail(&mut self, name: &str) {
            let i = self.i(name);
            self.seen[i].failed_release = Some(NEW.into());
            self.seen[i].current = Some(OLD.into());
            self.seen[i].health = Health::Failed;
            self.seen[i].last_error = Some(format!("{name}: health check failed"));
        }

        fn told_of(&self, name: &str) -> Option<String> {
            let i = self.i(name);
            told(
                &self.p,
                self.state,
                &self.rows[i],
                self.seen[i].current.as_deref(),
                self.now,
            )
        }
    }

    #[test]
    fn waves_are_cumulative_slices_after_the_canary_and_deterministic() {
        let cands: Vec<Candidate> = (0..21)
            .map(|i| Candidate {
                machine: format!("id{i}"),
                name: format!("m{i:02}"),
                from: None,
                selected: i != 20,
            })
            .collect();
        let rows = assign(NEW, &cands, &Canary::Count(2), &[500, 2500, 10_000]).unwrap();
        let count = |w: Option<u32>| rows.iter().filter(|r| r.wave == w).count();
        // 18 after the canaries: 5% -> 1 (rounded up), 25% -> 5 in all, 100% -> 18
        assert_eq!(
            [
                count(Some(0)),
                count(Some(1)),
                count(Some(2)),
                count(Some(3))
            ],
            [2, 1, 4, 13]
        );
        assert_eq!(rows.last().unwrap().name, "m20");
        assert_eq!(rows.last().unwrap().wave, None, "not selected: held");
        // the same inputs, the same plan; another release, other canaries
        assert_eq!(
            assign(NEW, &cands, &Canary::Count(2), &[500, 2500, 10_000]).unwrap(),
            rows
        );
        let other = assign(OLD, &cands, &Canary::Count(2), &[500, 2500, 10_000]).unwrap();
        assert_ne!(other[..2], rows[..2]);
        // names as canaries
        let rows = assign(
            NEW,
            &cands,
            &Canary::Names(vec!["m07".into(), "m03".into()]),
            &[10_000],
        )
        .unwrap();
        let mut canaries: Vec<&str> = rows
            .iter()
            .filter(|r| r.wave == Some(0))
            .map(|r| r.name.as_str())
            .collect();
        canaries.sort();
        assert_eq!(canaries, ["m03", "m07"]);
        let e = assign(NEW, &cands, &Canary::Names(vec!["m20".into()]), &[10_000]).unwrap_err();
        assert!(e.contains("not among the selected"), "{e}");
        let e = assign(NEW, &cands, &Canary::Count(30), &[10_000]).unwrap_err();
        assert!(e.contains("only 20"), "{e}");
        let none: Vec<Candidate> = cands
            .iter()
            .cloned()
            .map(|mut c| {
                c.selected = false;
                c
            })
            .collect();
        assert!(assign(NEW, &none, &Canary::Count(1), &[10_000]).is_err());
    }

    #[test]
    fn canary_then_waves_each_after_the_last_is_healthy_and_soaked() {
        let mut s = Sim::new(plan(3), &[5000, 10_000], Canary::Count(1), 9);
        let canary = s.wave(0);
        assert_eq!(canary.len(), 1);
        // before the signature names it, the rollout waits and tells everyone their old release
        let d = step(&s.p, Publishing, Signed::Other, &s.rows, &s.seen, s.now);
        assert_eq!(d.state, Publishing);
        assert_eq!(d.waiting, Some(Waiting::Publish));
        assert_eq!(s.told_of(&canary[0]).as_deref(), Some(OLD));
        // signed: the canary is admitted, nobody else
        let d = s.run().clone();
        assert_eq!(d.state, Running);
        assert_eq!(s.admitted(), canary);
        assert_eq!(s.told_of(&canary[0]).as_deref(), Some(NEW));
        assert_eq!(s.told_of(&s.wave(1)[0]).as_deref(), Some(OLD));
        // nothing moves while the canary updates
        s.now += 60;
        s.run();
        assert_eq!(s.admitted(), canary);
        assert!(
            matches!(&s.last.as_ref().unwrap().waiting, Some(Waiting::Machines { wave: 0, names }) if *names == canary)
        );
        s.machines_obey();
        s.now += 60;
        let d = s.run().clone();
        assert_eq!(d.stamp, vec![0], "settled now");
        assert_eq!(
            d.waiting,
            Some(Waiting::Soak {
                wave: 0,
                until: s.now + 600
            })
        );
        assert_eq!(s.admitted(), canary, "the canary soaks first");
        s.now += 599;
        s.run();
        assert_eq!(s.admitted().len(), 1);
        s.now += 1;
        s.run();
        // 8 after the canary: 50% is 4
        assert_eq!(s.admitted().len(), 5);
        assert!(s.wave(1).iter().all(|n| s.admitted().contains(n)));
        s.machines_obey();
        s.now += 10;
        s.run();
        s.now += 600;
        s.run();
        assert_eq!(s.admitted().len(), 9);
        s.machines_obey();
        s.now += 10;
        s.run();
        assert_eq!(s.state, Running, "the last wave soaks too");
        s.now += 600;
        let d = s.run().clone();
        assert_eq!(d.state, Completed);
        assert_eq!(s.state, Completed);
        // completed: everyone stays on the new release
        assert!(
            s.rows
                .iter()
                .all(|r| s.told_of(&r.name).as_deref() == Some(NEW))
        );
    }

    #[test]
    fn a_failure_past_the_threshold_halts_with_the_machines_and_their_errors() {
        let mut p = plan(2);
        p.soak_secs = 0;
        p.max_failures = Threshold::Percent(2000); // 20%
        let mut s = Sim::new(p, &[10_000], Canary::Count(1), 11);
        s.run();
        s.machines_obey();
        s.run();
        s.run();
        assert_eq!(s.admitted().len(), 11);
        let w1 = s.wave(1);
        // 2 of 11 is under 20%: tolerated, the failed machines count as settled
        s.fail(&w1[0]);
        s.fail(&w1[1]);
        s.now += 5;
        s.run();
        assert_eq!(s.state, Running);
        // a third passes it (3 of 11 is 27%)
        s.fail(&w1[2]);
        s.now += 5;
        let d = s.run().clone();
        assert_eq!(d.state, Halted);
        let why = s.reason.clone().unwrap();
        assert!(
            why.starts_with("3 of 11 machine(s) admitted failed release nnnnnnnnnnnn"),
            "{why}"
        );
        assert!(why.contains("more than --max-failures 20%"), "{why}");
        for n in &w1[..3] {
            assert!(
                why.contains(&format!("{n}: {n}: health check failed")),
                "{why}"
            );
        }
        // halted: machines admitted but not yet switched are held on their old release; those on
        // the new one stay there
        let running_new = &w1[4];
        let i = s.i(running_new);
        s.seen[i].current = Some(NEW.into());
        assert_eq!(s.told_of(running_new).as_deref(), Some(NEW));
        assert_eq!(s.told_of(&w1[5]).as_deref(), Some(OLD));
        s.now += 3600;
        s.run();
        assert_eq!(s.state, Halted, "it stays halted by itself");
    }

    #[test]
    fn halted_then_resumed_accepts_the_failures_so_far_and_goes_on() {
        let mut p = plan(3);
        p.soak_secs = 0;
        p.max_failures = Threshold::Count(1);
        let mut s = Sim::new(p, &[5000, 10_000], Canary::Count(1), 9);
        s.run();
        s.machines_obey();
        s.run();
        let w1 = s.wave(1);
        assert!(w1.iter().all(|n| s.admitted().contains(n)));
        s.fail(&w1[0]);
        s.fail(&w1[1]);
        s.run();
        assert_eq!(s.state, Halted);
        assert!(s.admitted().iter().all(|n| !s.wave(2).contains(n)));
        // resume: the two failures are accepted, not counted again
        let acks = resume_accepts(&s.p, s.state, &s.rows, &s.seen);
        assert_eq!(acks.len(), 2);
        for i in acks {
            s.rows[i].acknowledged = true;
        }
        s.state = Running;
        s.machines_obey();
        s.run();
        assert_eq!(s.state, Running);
        let st = classify(&s.p, s.state, &s.rows[s.i(&w1[0])], &s.seen[s.i(&w1[0])]);
        assert_eq!(st, MachineState::FailureAccepted);
        s.run();
        assert_eq!(s.admitted().len(), 9, "wave 2 admitted");
        // one new failure is within the count of 1; a second one halts again
        let w2 = s.wave(2);
        s.fail(&w2[0]);
        s.run();
        assert_eq!(s.state, Running);
        s.fail(&w2[1]);
        s.run();
        assert_eq!(s.state, Halted);
        assert!(
            s.reason.as_ref().unwrap().starts_with("2 of 9"),
            "{:?}",
            s.reason
        );
    }

    #[test]
    fn paused_admits_nobody_and_holds_the_admitted_that_have_not_switched() {
        let mut p = plan(2);
        p.soak_secs = 0;
        let mut s = Sim::new(p, &[10_000], Canary::Count(1), 4);
        s.run();
        s.machines_obey();
        s.state = Paused;
        s.run();
        assert_eq!(s.admitted().len(), 1, "nobody admitted while paused");
        assert_eq!(s.last.as_ref().unwrap().waiting, Some(Waiting::Paused));
        // the canary, settled while paused, is stamped all the same
        assert!(s.rows[0].settled_at.is_some());
        s.state = Running;
        s.run();
        assert_eq!(s.admitted().len(), 4);
        s.state = Paused;
        let w1 = s.wave(1);
        assert_eq!(s.told_of(&w1[0]).as_deref(), Some(OLD));
        s.state = Running;
        assert_eq!(s.told_of(&w1[0]).as_deref(), Some(NEW));
    }

    #[test]
    fn abort_sends_the_admitted_back_and_rollback_sends_everyone_back() {
        let mut p = plan(2);
        p.soak_secs = 0;
        let mut s = Sim::new(p, &[5000, 10_000], Canary::Count(1), 5);
        s.rows[4].from = None; // ran nothing signed here
        s.run();
        s.machines_obey();
        s.run();
        s.machines_obey();
        s.run();
        let admitted = s.admitted();
        assert!(admitted.len() >= 3 && admitted.len() < 5, "{admitted:?}");
        s.state = Aborted;
        let d = s.run().clone();
        assert_eq!(d.state, Aborted);
        assert!(d.admit.is_empty());
        for r in s.rows.clone() {
            let want = r.from.clone();
            assert_eq!(s.told_of(&r.name), want, "{}", r.name);
        }
        let back = |s: &Sim, n: &str| classify(&s.p, s.state, &s.rows[s.i(n)], &s.seen[s.i(n)]);
        assert_eq!(back(&s, &admitted[0]), MachineState::Returning);
        s.machines_obey();
        assert!(
            s.rows
                .iter()
                .all(|r| back(&s, &r.name) == MachineState::Back)
        );
        // a completed rollout rolled back: every machine back to what it ran
        let mut p = plan(2);
        p.soak_secs = 0;
        let mut s = Sim::new(p, &[10_000], Canary::Count(1), 4);
        for _ in 0..4 {
            s.run();
            s.machines_obey();
        }
        s.run();
        assert_eq!(s.state, Completed);
        s.state = RolledBack;
        s.run();
        assert!(
            s.rows
                .iter()
                .all(|r| s.told_of(&r.name).as_deref() == Some(OLD))
        );
        s.machines_obey();
        assert!(s.seen.iter().all(|x| x.current.as_deref() == Some(OLD)));
    }

    #[test]
    fn a_window_across_midnight_in_a_time_zone_gates_admissions_and_starts() {
        let mut p = plan(2);
        p.soak_secs = 0;
        p.window = Some(Window::parse("Mon-Fri 18:00-06:00", Some("Europe/Madrid")).unwrap());
        let madrid = |d: i8, h: i8, m: i8| {
            jiff::civil::date(2026, 11, d)
                .at(h, m, 0, 0)
                .to_zoned_datetime(jiff::tz::TimeZone::get("Europe/Madrid").unwrap())
                .unwrap()
                .timestamp()
                .as_second()
        };
        let mut s = Sim::new(p, &[10_000], Canary::Count(1), 4);
        // Saturday 2026-11-21 12:00: closed until Monday 18:00
        s.now = madrid(21, 12, 0);
        let d = s.run().clone();
        assert!(d.admit.is_empty());
        assert_eq!(
            d.waiting,
            Some(Waiting::Window {
                opens_at: Some(madrid(23, 18, 0))
            })
        );
        // Monday 17:59 UTC+1 is still closed; 18:00 opens it
        s.now = madrid(23, 17, 59);
        assert!(s.run().admit.is_empty());
        s.now = madrid(23, 18, 0);
        assert_eq!(s.run().admit.len(), 1);
        s.machines_obey();
        // Tuesday 05:59 belongs to Monday's window: the rest is admitted
        s.now = madrid(24, 5, 59);
        s.run();
        assert_eq!(s.admitted().len(), 4);
        // at 06:00 the window closes before they switched: they are told to stay where they are
        s.now = madrid(24, 6, 0);
        let w1 = s.wave(1);
        assert_eq!(s.told_of(&w1[0]).as_deref(), Some(OLD));
        assert!(matches!(s.run().waiting, Some(Waiting::Window { .. })));
        s.now = madrid(24, 18, 0);
        assert_eq!(s.told_of(&w1[0]).as_deref(), Some(NEW));
    }

    #[test]
    fn the_rate_limit_counts_admissions_in_a_rolling_hour() {
        let mut p = plan(2);
        p.soak_secs = 0;
        p.max_per_hour = Some(3);
        let mut s = Sim::new(p, &[10_000], Canary::Count(1), 8);
        s.run();
        s.machines_obey();
        s.now += 60;
        let d = s.run().clone();
        // the canary took one of the 3 slots of this hour
        assert_eq!(d.admit.len(), 2);
        assert_eq!(d.waiting, Some(Waiting::Rate { until: T0 + 3600 }));
        s.now = T0 + 3599;
        assert!(s.run().admit.is_empty());
        s.now = T0 + 3600;
        assert_eq!(s.run().admit.len(), 1, "the canary's slot is free again");
        s.now = T0 + 60 + 3600;
        assert_eq!(s.run().admit.len(), 2);
        s.now += 3600;
        s.run();
        assert_eq!(s.admitted().len(), 8);
    }

    #[test]
    fn offline_machines_are_pending_not_failed_and_leavers_drop_out() {
        let mut p = plan(2);
        p.soak_secs = 0;
        let mut s = Sim::new(p, &[10_000], Canary::Count(1), 3);
        s.run();
        s.machines_obey();
        s.run();
        let w1 = s.wave(1);
        // one machine of wave 1 is never seen again; the other is reassigned elsewhere
        let off = s.i(&w1[0]);
        s.seen[off].last_seen = Some(T0 - 10_000);
        let gone = s.i(&w1[1]);
        s.seen[gone].on_channel = false;
        s.now += 10;
        let d = s.run().clone();
        assert_eq!(s.state, Running, "offline is not a failure");
        assert_eq!(
            d.waiting,
            Some(Waiting::Machines {
                wave: 1,
                names: vec![format!("{} (offline)", w1[0])]
            })
        );
        assert_eq!(
            classify(&s.p, s.state, &s.rows[gone], &s.seen[gone]),
            MachineState::Left
        );
        // back, but it cannot verify the release: still pending, and said so
        s.seen[off].last_seen = Some(s.now);
        s.seen[off].failing = Some(Phase::Verifying);
        let d = s.run().clone();
        assert_eq!(s.state, Running, "failing is not failed: it may be fixed");
        assert_eq!(
            d.waiting,
            Some(Waiting::Machines {
                wave: 1,
                names: vec![format!("{} (failing: verifying)", w1[0])]
            })
        );
        // fixed, it updates: done
        s.seen[off].failing = None;
        s.machines_obey();
        s.run();
        assert_eq!(s.run().state, Completed);
    }

    #[test]
    fn a_new_signature_without_the_rollout_supersedes_it() {
        let mut s = Sim::new(plan(2), &[10_000], Canary::Count(0), 2);
        s.run();
        assert_eq!(s.state, Running);
        let d = step(&s.p, Running, Signed::Other, &s.rows, &s.seen, s.now);
        assert_eq!(d.state, Superseded);
        assert!(d.reason.unwrap().contains("signed again"));
        // an aborted rollout is superseded the same way
        let d = step(&s.p, Aborted, Signed::Other, &s.rows, &s.seen, s.now);
        assert_eq!(d.state, Superseded);
    }
}
