//! The agent's next step as a pure function of what it knows (see STATE.md beside this crate).
//! The executor gathers [`Facts`], performs the [`Step`], gathers facts again, and so on until
//! the step is to wait; an interrupted run starts over from the facts and continues.

use semithin_protocol::api::{Health, MachineStatus};

use crate::state::{BootFailure, Trial};

/// Everything the decision depends on.
#[derive(Clone, Debug, Default)]
pub struct Facts<'a> {
    pub enrolled: bool,
    /// From the last answer of the server (`None`: not asked yet).
    pub status: Option<MachineStatus>,
    /// The release the server wants, if any.
    pub desired: Option<&'a str>,
    /// What the `current` link points at.
    pub current: Option<&'a str>,
    pub trial: Option<&'a Trial>,
    /// `STATE/trial-failed`: the boot script switched `current` back at boot (docs/BOOT.md).
    pub boot_failed: Option<&'a BootFailure>,
    pub failed_release: Option<&'a str>,
    /// `state.json`: how the current deployment is doing.
    pub health: Health,
    /// The health checks already ran again on the current deployment since the server last
    /// told a new release (they failed: running them again changes nothing until then).
    pub rechecked: bool,
    /// The desired release was checked against the signed channel in this run.
    pub verified: bool,
    /// Objects the local store still lacks for the desired release (`None`: not counted yet).
    pub missing: Option<usize>,
    /// The desired release's deployment directory is complete.
    pub staged: bool,
    /// A live machine: the running release is the one booted, an update is the next boot's.
    pub live: bool,
    /// Live: the desired release's squashfs is verified in the live cache and named there as
    /// the next boot's.
    pub live_staged: bool,
    pub now: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Make a key and enroll.
    Enroll,
    /// Ask the server what to run (check in without waiting).
    CheckIn,
    /// A trial was recorded but the switch never happened: forget it.
    AbandonTrial,
    /// Run the health checks of the trial release.
    CheckHealth,
    /// Switch back to the trial's previous deployment (again, if the boot script or an
    /// interrupted rollback already did), record the failure, for this reason.
    RollBack(String),
    /// The boot script rolled back a release the state does not hold a trial for (state.json
    /// was moved aside): record it as failed.
    RecordBootFailure,
    /// The server asks for the release that runs, and its health is not known to be good (a
    /// rollback left it here, or `agent retry` cleared a failure): run the health checks on it.
    RecheckHealth,
    /// Refresh the TUF metadata and check the desired release is the channel's signed release.
    Verify,
    /// Count what the store lacks.
    Count,
    Fetch,
    Stage,
    Switch,
    /// Live: fetch the desired release's signed squashfs into the live cache and name it as
    /// the next boot's.
    StageLive,
    /// Nothing to do until the server says otherwise.
    Wait(WaitFor),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitFor {
    Acceptance,
    Rejected,
    Assignment,
    UpToDate,
    /// The desired release failed here before; a new release will be tried.
    FailedRelease,
    /// Live: the desired release is staged for the next boot.
    NextBoot,
}

pub fn next(f: &Facts) -> Step {
    if !f.enrolled {
        return Step::Enroll;
    }
    // A switch under trial comes first: it must be confirmed or undone, even with the server
    // away.
    if let Some(t) = f.trial {
        // A rollback once begun is finished, wherever `current` points now: the link may have
        // been moved back before the agent was killed.
        if let Some(reason) = &t.rolling_back {
            return Step::RollBack(reason.clone());
        }
        // The boot script gave up on the release and switched back at boot.
        if let Some(b) = f.boot_failed.filter(|b| b.release == t.release) {
            return Step::RollBack(format!(
                "release {} was rolled back at boot: {}",
                short(&t.release),
                b.reason
            ));
        }
        if f.current != Some(t.release.as_str()) {
            return Step::AbandonTrial;
        }
        if f.now > t.deadline {
            return Step::RollBack(format!(
                "release {} was not confirmed healthy within {} s of the switch",
                short(&t.release),
                t.deadline - t.switched_at
            ));
        }
        return Step::CheckHealth;
    }
    if f.boot_failed.is_some() {
        return Step::RecordBootFailure;
    }
    match f.status {
        None => return Step::CheckIn,
        Some(MachineStatus::Pending) => return Step::Wait(WaitFor::Acceptance),
        Some(MachineStatus::Rejected) => return Step::Wait(WaitFor::Rejected),
        Some(MachineStatus::Accepted) => {}
    }
    let Some(desired) = f.desired else {
        return Step::Wait(WaitFor::Assignment);
    };
    if f.current == Some(desired) {
        // Running what the server asks for: health `failed` there is about the release that
        // was rolled back from (or about an earlier run of the checks), not a verdict on this
        // one. The checks say, once per release told.
        if matches!(f.health, Health::Failed | Health::Unknown) && !f.rechecked {
            return Step::RecheckHealth;
        }
        return Step::Wait(WaitFor::UpToDate);
    }
    if f.failed_release == Some(desired) {
        return Step::Wait(WaitFor::FailedRelease);
    }
    if !f.verified {
        return Step::Verify;
    }
    if f.live {
        return if f.live_staged {
            Step::Wait(WaitFor::NextBoot)
        } else {
            Step::StageLive
        };
    }
    if f.staged {
        return Step::Switch;
    }
    match f.missing {
        None => Step::Count,
        Some(0) => Step::Stage,
        Some(_) => Step::Fetch,
    }
}

/// What pruning keeps: `history` put in order (the current deployment first, each entry once)
/// and cut to `n` entries, and the set of deployment names that must stay, which adds to that
/// history whatever `current` points at and, while a trial runs, its release and its previous
/// deployment. So a history that lost an entry (a kill between two saves, a state.json moved
/// aside) never costs the running deployment or the rollback target.
pub fn keep(
    history: &[String],
    current: Option<&str>,
    trial: Option<&Trial>,
    n: usize,
) -> (Vec<String>, Vec<String>) {
    let mut hist: Vec<String> = Vec::new();
    for h in current
        .into_iter()
        .chain(history.iter().map(String::as_str))
    {
        if !hist.iter().any(|x| x == h) {
            hist.push(h.to_owned());
        }
    }
    hist.truncate(n.max(1));
    let mut keep = hist.clone();
    let extra = current
        .into_iter()
        .chain(trial.map(|t| t.release.as_str()))
        .chain(trial.and_then(|t| t.previous.as_deref()));
    for e in extra {
        if !keep.iter().any(|x| x == e) {
            keep.push(e.to_owned());
        }
    }
    (hist, keep)
}

use semithin_protocol::ids::short_str as short;

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn accepted<'a>() -> Facts<'a> {
        Facts {
            enrolled: true,
            status: Some(MachineStatus::Accepted),
            now: 1000,
            ..Facts::default()
        }
    }

    #[test]
    fn an_update_goes_verify_count_fetch_stage_switch() {
        let mut f = accepted();
        f.desired = Some(B);
        f.current = Some(A);
        assert_eq!(next(&f), Step::Verify);
        f.verified = true;
        assert_eq!(next(&f), Step::Count);
        f.missing = Some(12);
        assert_eq!(next(&f), Step::Fetch);
        f.missing = Some(0);
        assert_eq!(next(&f), Step::Stage);
        f.staged = true;
        assert_eq!(next(&f), Step::Switch);
        // (the trial confirmed)
        f.current = Some(B);
        f.health = Health::Healthy;
        assert_eq!(next(&f), Step::Wait(WaitFor::UpToDate));
    }

    #[test]
    fn a_live_update_is_staged_for_the_next_boot_and_the_boot_runs_it() {
        let mut f = accepted();
        f.live = true;
        f.desired = Some(B);
        f.current = Some(A);
        assert_eq!(next(&f), Step::Verify);
        f.verified = true;
        // nothing is fetched into the store nor staged as a deployment: the squashfs
        assert_eq!(next(&f), Step::StageLive);
        f.live_staged = true;
        assert_eq!(next(&f), Step::Wait(WaitFor::NextBoot));
        // the next boot booted it: its health checks say, once
        f.current = Some(B);
        f.live_staged = false;
        assert_eq!(next(&f), Step::RecheckHealth);
        f.health = Health::Healthy;
        assert_eq!(next(&f), Step::Wait(WaitFor::UpToDate));
    }

    #[test]
    fn a_trial_is_checked_rolled_back_or_abandoned_before_anything_else() {
        let t = trial();
        let mut f = accepted();
        f.trial = Some(&t);
        f.current = Some(B);
        f.status = None; // the server has not answered yet
        assert_eq!(next(&f), Step::CheckHealth);
        f.now = 1501;
        match next(&f) {
            Step::RollBack(r) => assert!(r.contains("within 600 s"), "{r}"),
            s => panic!("{s:?}"),
        }
        // killed between recording the trial and the switch
        f.current = Some(A);
        assert_eq!(next(&f), Step::AbandonTrial);
    }

    fn trial() -> Trial {
        Trial {
            release: B.into(),
            previous: Some(A.into()),
            switched_at: 900,
            deadline: 1500,
            ..Trial::default()
        }
    }

    #[test]
    fn a_rollback_begun_is_finished_wherever_current_points() {
        let mut t = trial();
        t.rolling_back = Some("health check \"x\" failed".into());
        let mut f = accepted();
        f.trial = Some(&t);
        // killed after the link moved back, before the failure was saved
        f.current = Some(A);
        assert_eq!(next(&f), Step::RollBack("health check \"x\" failed".into()));
        // killed before the link moved
        f.current = Some(B);
        assert_eq!(next(&f), Step::RollBack("health check \"x\" failed".into()));
        // and not an abandoned switch without the mark
        t.rolling_back = None;
        let mut f = accepted();
        f.trial = Some(&t);
        f.current = Some(A);
        assert_eq!(next(&f), Step::AbandonTrial);
    }

    #[test]
    fn a_rollback_at_boot_is_a_failure_of_the_trial_release() {
        let t = trial();
        let b = BootFailure {
            release: B.into(),
            reason: "booted 1 time(s) without being confirmed healthy".into(),
        };
        let mut f = accepted();
        f.status = None;
        f.trial = Some(&t);
        f.current = Some(A); // the boot script switched back to the previous release
        f.boot_failed = Some(&b);
        match next(&f) {
            Step::RollBack(r) => {
                assert!(r.contains("rolled back at boot"), "{r}");
                assert!(r.contains("booted 1 time(s)"), "{r}");
            }
            s => panic!("{s:?}"),
        }
        // a marker for another release than the trial's does not end the trial
        let other = BootFailure {
            release: A.into(),
            reason: "x".into(),
        };
        f.boot_failed = Some(&other);
        assert_eq!(next(&f), Step::AbandonTrial);
        // a marker without a trial (state.json moved aside) is recorded
        f.trial = None;
        f.boot_failed = Some(&b);
        assert_eq!(next(&f), Step::RecordBootFailure);
    }

    #[test]
    fn a_failed_release_is_not_tried_again_and_the_release_rolled_back_to_is_checked() {
        let mut f = accepted();
        f.failed_release = Some(B);
        f.current = Some(A);
        f.desired = Some(B);
        f.health = Health::Failed;
        assert_eq!(next(&f), Step::Wait(WaitFor::FailedRelease));
        // still asked for: not tried, also once A is known healthy again
        f.health = Health::Healthy;
        assert_eq!(next(&f), Step::Wait(WaitFor::FailedRelease));
        // the server asks for A, which runs (an abort, a reassignment): its checks run, once
        f.health = Health::Failed;
        f.desired = Some(A);
        assert_eq!(next(&f), Step::RecheckHealth);
        f.rechecked = true;
        assert_eq!(next(&f), Step::Wait(WaitFor::UpToDate));
        // passed: up to date, and B stays failed (only a confirmed switch forgets it)
        f.rechecked = false;
        f.health = Health::Healthy;
        assert_eq!(next(&f), Step::Wait(WaitFor::UpToDate));
        // health unknown (`agent retry` on the release that runs): checked too
        f.failed_release = None;
        f.health = Health::Unknown;
        assert_eq!(next(&f), Step::RecheckHealth);
        // a release that is not the running one is fetched, whatever the health
        f.health = Health::Failed;
        f.current = Some(B);
        assert_eq!(next(&f), Step::Verify);
    }

    #[test]
    fn pruning_keeps_current_and_the_trial_whatever_history_says() {
        let c = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
        let d = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";
        // killed between the link and the history save: history lacks the running B
        let hist = vec![A.to_owned(), c.to_owned(), d.to_owned()];
        let (h, k) = keep(&hist, Some(B), None, 2);
        assert_eq!(h, vec![B.to_owned(), A.to_owned()]);
        assert_eq!(k, h);
        // state.json moved aside: no history at all
        let (h, k) = keep(&[], Some(A), None, 2);
        assert_eq!(h, vec![A.to_owned()]);
        assert_eq!(k, vec![A.to_owned()]);
        // during a trial its release and previous stay even when history is cut short
        let t = Trial {
            release: B.into(),
            previous: Some(d.into()),
            ..Trial::default()
        };
        let (h, k) = keep(&hist, Some(B), Some(&t), 1);
        assert_eq!(h, vec![B.to_owned()]);
        assert_eq!(k, vec![B.to_owned(), d.to_owned()]);
        // duplicates are dropped, order kept
        let dup = vec![A.to_owned(), A.to_owned(), c.to_owned()];
        assert_eq!(
            keep(&dup, Some(A), None, 3).0,
            vec![A.to_owned(), c.to_owned()]
        );
    }

    #[test]
    fn waiting_states() {
        let mut f = Facts {
            now: 1,
            ..Facts::default()
        };
        assert_eq!(next(&f), Step::Enroll);
        f.enrolled = true;
        assert_eq!(next(&f), Step::CheckIn);
        f.status = Some(MachineStatus::Pending);
        assert_eq!(next(&f), Step::Wait(WaitFor::Acceptance));
        f.status = Some(MachineStatus::Rejected);
        assert_eq!(next(&f), Step::Wait(WaitFor::Rejected));
        f.status = Some(MachineStatus::Accepted);
        assert_eq!(next(&f), Step::Wait(WaitFor::Assignment));
        f.desired = Some(B);
        f.failed_release = Some(B);
        assert_eq!(next(&f), Step::Wait(WaitFor::FailedRelease));
        // a release published after the failed one is tried
        f.desired = Some(A);
        assert_eq!(next(&f), Step::Verify);
    }
}
