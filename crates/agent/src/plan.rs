//! The agent's next step as a pure function of what it knows (see STATE.md beside this crate).
//! The executor gathers [`Facts`], performs the [`Step`], gathers facts again, and so on until
//! the step is to wait; an interrupted run starts over from the facts and continues.

use semithin_protocol::api::MachineStatus;

use crate::state::Trial;

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
    pub failed_release: Option<&'a str>,
    /// The desired release was checked against the signed channel in this run.
    pub verified: bool,
    /// Objects the local store still lacks for the desired release (`None`: not counted yet).
    pub missing: Option<usize>,
    /// The desired release's deployment directory is complete.
    pub staged: bool,
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
    /// Switch back to the trial's previous deployment, for this reason.
    RollBack(String),
    /// Refresh the TUF metadata and check the desired release is the channel's signed release.
    Verify,
    /// Count what the store lacks.
    Count,
    Fetch,
    Stage,
    Switch,
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
}

pub fn next(f: &Facts) -> Step {
    if !f.enrolled {
        return Step::Enroll;
    }
    // A switch under trial comes first: it must be confirmed or undone, even with the server
    // away.
    if let Some(t) = f.trial {
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
        return Step::Wait(WaitFor::UpToDate);
    }
    if f.failed_release == Some(desired) {
        return Step::Wait(WaitFor::FailedRelease);
    }
    if !f.verified {
        return Step::Verify;
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

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

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
        f.current = Some(B);
        assert_eq!(next(&f), Step::Wait(WaitFor::UpToDate));
    }

    #[test]
    fn a_trial_is_checked_rolled_back_or_abandoned_before_anything_else() {
        let t = Trial {
            release: B.into(),
            previous: Some(A.into()),
            switched_at: 900,
            deadline: 1500,
        };
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
