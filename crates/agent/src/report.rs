//! What the agent reports: from its state directory (`agent status`, read without the lock)
//! and at every check-in.

use std::path::Path;

use semithin_protocol::api::{Phase, Report};
use semithin_protocol::ids::ReleaseId;

use crate::error::{Error, Result};
use crate::state::{Layout, State};
use crate::templates;

/// What a machine's state directory says, read without taking its lock, so it works while the
/// agent runs: (state, report).
pub fn status(dir: &Path) -> Result<(State, Report)> {
    let layout = Layout::new(dir);
    if !layout.dir.is_dir() {
        return Err(Error::Config(format!(
            "{} is not an agent state directory",
            dir.display()
        )));
    }
    let state = State::load(&layout.state())?;
    let report = report_of(&layout, &state, None, 0, Phase::Idle)?;
    Ok((state, report))
}

/// The report of a state directory; `verified` is the release checked in this run (a staged
/// deployment counts only for it), `unsaved_fetched` what was fetched but not yet saved.
pub(crate) fn report_of(
    layout: &Layout,
    state: &State,
    verified: Option<&str>,
    unsaved_fetched: u64,
    phase: Phase,
) -> Result<Report> {
    // every release the agent holds came to it as a ReleaseId; one that does not parse back
    // (a state file edited by hand) is not reported
    let rel = |s: &str| s.parse::<ReleaseId>().ok();
    let current = layout.current()?;
    let staged = verified
        .filter(|r| Some(*r) != current.as_deref() && layout.deployment(r).exists())
        .and_then(rel);
    let integrity = state
        .integrity
        .clone()
        .filter(|i| current.as_deref() == Some(i.release.to_string().as_str()));
    Ok(Report {
        previous: state
            .history
            .iter()
            .find(|h| Some(*h) != current.as_ref())
            .and_then(|h| rel(h)),
        current: current.as_deref().and_then(rel),
        staged,
        health: state.health,
        phase,
        failed_release: state.failed_release.as_deref().and_then(rel),
        last_error: state
            .last_error
            .as_deref()
            .map(semithin_protocol::api::bound_error),
        failing: state.failing.clone(),
        disk_free: disk_free(&layout.dir),
        uptime_secs: uptime(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        fetched_bytes: state.fetched_bytes + unsaved_fetched,
        integrity,
        config: templates::Rendering::load(&templates::path(layout))
            .ok()
            .map(|r| r.report()),
        backup: state.backup.clone(),
        swarm: crate::swarm::totals(),
    })
}

fn disk_free(dir: &Path) -> u64 {
    rustix::fs::statvfs(dir)
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
        .unwrap_or(0)
}

fn uptime() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| s as u64)
        .unwrap_or(0)
}
