//! The semithin agent: runs on every machine, pulls (it never opens a port), verifies the
//! release against the signed channel, fetches only the objects it lacks, stages a deployment
//! beside the running one, switches atomically, checks health, rolls back by itself, reports.
//!
//! The decision of what to do next is a pure function ([`plan::next`], STATE.md); this module
//! gathers the facts and performs the steps. Everything it does survives being killed at any
//! moment: the next run starts from what is on disk and continues.

mod assignment;
pub mod backup;
pub mod bootloader;
pub mod capture;
mod checkin;
pub mod config;
mod configure;
mod delta;
pub mod deploy;
pub mod error;
mod facts;
pub mod failover;
pub mod http;
pub mod jobs;
mod live;
pub mod neterr;
pub mod plan;
mod release;
pub mod repair;
mod report;
pub mod state;
mod swarm;
mod switching;
mod templates;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use semithin_protocol::api::{CheckInResponse, Failure, Health, Phase, Report};
use semithin_protocol::path::ApiPath;
use semithin_protocol::sign::MachineKey;
use semithin_store::pack::ObjKind;
use semithin_store::repo::Config as RepoConfig;
use semithin_store::{Access, CommitId, NoProgress, Repo, VerifiedObject, transfer};
use semithin_trust::client::{Client, Limits};
use semithin_trust::release::ChannelRelease;

pub use crate::config::Config;
pub use crate::error::{Error, Result};
use crate::http::Api;
use crate::plan::{Facts, Step, WaitFor};
use crate::report::report_of;
pub use crate::report::status;
use crate::state::{BootFailure, Layout, State};

/// What a run of [`Agent::cycle`] ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub wait: WaitFor,
    /// Something changed on disk (fetched, staged, switched, rolled back).
    pub worked: bool,
}

pub struct Agent {
    pub cfg: Config,
    pub layout: Layout,
    pub state: State,
    repo: Repo,
    api: Option<Api>,
    answer: Option<CheckInResponse>,
    verified: Option<String>,
    missing: Option<usize>,
    phase: Phase,
    /// The release the server told in its last answer (`None`: none), across cycles.
    told: Option<String>,
    /// The running release whose health checks ran again (RecheckHealth) since the server told
    /// it: not run again until the server tells another release.
    rechecked: Option<String>,
    /// Job records, the jobs of the last answer, the package inventory.
    jobs: jobs::Jobs,
    /// Variable sets and rendered templates (STATE/config.json).
    rendering: templates::Rendering,
    /// The upstreams in order, the one in use, the bad ones not reported yet.
    failover: failover::Failover,
    /// The facts last read (when) and the digest of those the server holds.
    facts: Option<(i64, semithin_protocol::vars::Facts)>,
    facts_digest: Option<String>,
    backup: backup::Tracker,
    /// Live: the release staged for the next boot in this run.
    live_staged: Option<String>,
    /// Called with a line for each thing the agent does.
    log: Box<dyn Fn(&str) + Send>,
    /// STATE/lock, held exclusively while this agent lives (released by the kernel on a kill).
    _lock: std::fs::File,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Agent {
    /// Opens (or makes) the state directory.
    pub fn open(dir: &Path, cfg: Config, log: Box<dyn Fn(&str) + Send>) -> Result<Self> {
        let mut layout = Layout::new(dir);
        if cfg.live {
            layout.live_booted = Some(cfg.live_booted.clone());
        }
        for d in [layout.dir.clone(), layout.deployments()] {
            std::fs::create_dir_all(&d).map_err(Error::io("creating", &d))?;
        }
        let lock = lock_state(&layout)?;
        let rp = layout.repo();
        if !rp.join("config").exists() {
            if rp.exists() {
                deploy::remove_dir(&rp)?;
            }
            Repo::init(&rp, RepoConfig::default())?;
        }
        // The agent is the only writer of its repository; an interrupted fetch leaves only
        // temporary files, which opening for writing clears.
        let repo = Repo::open(&rp, Access::Write)?;
        let mut state = State::load(&layout.state())?;
        if cfg.live {
            live::booted_into(&layout, &mut state)?;
        }
        // What the check at boot found (docs/BOOT.md), reported at the next check-in.
        let at_boot = repair::boot::take_at_start(&layout, &mut state)?;
        cfg.admin_keys()?;
        cfg.etc_restore()?;
        let jobs = jobs::Jobs::open(&layout.jobs())?;
        let rendering = templates::Rendering::load(&templates::path(&layout))?;
        if state.trial.is_none() {
            deploy::tidy_boot_trial(&layout)?;
        }
        // Leftover staging directories are from an interrupted run.
        if let Ok(rd) = std::fs::read_dir(layout.deployments()) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(".staging-") {
                    deploy::remove_dir(&e.path())?;
                }
            }
        }
        let mut agent = Self {
            cfg,
            layout,
            state,
            repo,
            api: None,
            answer: None,
            verified: None,
            missing: None,
            phase: Phase::Idle,
            told: None,
            rechecked: None,
            jobs,
            rendering,
            failover: failover::Failover::default(),
            facts: None,
            facts_digest: None,
            backup: backup::Tracker::default(),
            live_staged: None,
            log,
            _lock: lock,
        };
        if let Some(line) = at_boot {
            agent.say(&line);
        }
        if agent.layout.key().exists() {
            agent.connect()?;
        }
        Ok(agent)
    }

    fn connect(&mut self) -> Result<()> {
        let key = MachineKey::load(&self.layout.key())?;
        if self.failover.current().is_none() {
            let list = match &self.cfg.server {
                Some(s) => s.clone(),
                None => self.state.server.clone().ok_or_else(|| {
                    Error::Config("no server URL: give --server (or `server` in the config)".into())
                })?,
            };
            self.failover = failover::Failover::new(failover::split(&list));
        }
        let server = self.failover.current().unwrap_or_default().to_owned();
        self.api = Some(Api::new(&server, key, self.cfg.ca.as_deref())?);
        Ok(())
    }

    fn api(&self) -> &Api {
        self.api.as_ref().expect("connected after enrollment")
    }

    fn say(&self, s: &str) {
        (self.log)(s);
    }

    fn save(&self) -> Result<()> {
        self.state.save(&self.layout.state())
    }

    pub fn report(&self) -> Result<Report> {
        let fetched = self
            .api
            .as_ref()
            .map(|a| a.received.load(Ordering::Relaxed))
            .unwrap_or(0);
        report_of(
            &self.layout,
            &self.state,
            self.verified.as_deref(),
            fetched,
            self.phase,
        )
    }

    /// Performs steps until the plan says to wait. The first check-in holds up to `wait`
    /// seconds (long poll) when nothing has been done yet.
    pub fn reconcile(&mut self, wait: u32) -> Result<Outcome> {
        let mut worked = false;
        let mut held = 0;
        for _ in 0..64 {
            let (current, desired) = self.facts()?;
            let staged = desired
                .as_ref()
                .is_some_and(|d| self.layout.deployment(d).exists());
            let boot_failed = deploy::boot_failure(&self.layout)?;
            let f = Facts {
                enrolled: self.state.machine_id.is_some() && self.api.is_some(),
                status: self.answer.as_ref().map(|a| a.status),
                desired: desired.as_deref(),
                current: current.as_deref(),
                trial: self.state.trial.as_ref(),
                boot_failed: boot_failed.as_ref(),
                failed_release: self.state.failed_release.as_deref(),
                health: self.state.health,
                rechecked: current.is_some() && self.rechecked == current,
                verified: self.verified.is_some() && self.verified == desired,
                missing: self.missing,
                staged,
                live: self.cfg.live,
                live_staged: match desired.as_deref() {
                    Some(d) if self.cfg.live => {
                        self.live_staged.as_deref() == Some(d)
                            || live::staged(&self.cfg.live_cache, d)
                    }
                    _ => false,
                },
                now: now(),
            };
            let step = plan::next(&f);
            match step {
                // The server keeps this machine on its release while the pack to its new one is
                // built: a long poll ends when the pack is ready (the server wakes it).
                Step::Wait(WaitFor::UpToDate) if self.state.waiting.is_some() && held < 3 => {
                    held += 1;
                    self.phase = Phase::Waiting;
                    self.checkin(HELD_POLL_SECS)?;
                }
                Step::Wait(w) => {
                    self.phase = Phase::Idle;
                    return Ok(Outcome { wait: w, worked });
                }
                Step::Enroll => self.enroll()?,
                Step::CheckIn => {
                    self.checkin(if worked { 0 } else { wait })?;
                }
                Step::AbandonTrial => {
                    self.say("the last switch did not happen; carrying on");
                    deploy::close_boot_trial(&self.layout)?;
                    self.state.abandon_trial();
                    self.save()?;
                }
                Step::RecordBootFailure => {
                    let b = boot_failed.expect("a boot failure to record");
                    self.record_boot_failure(&b)?;
                    worked = true;
                }
                Step::RecheckHealth => {
                    let c = current.expect("a current release to check");
                    self.recheck_health(&c)?;
                    worked = true;
                }
                Step::CheckHealth => {
                    self.check_health()?;
                    worked = true;
                }
                Step::RollBack(reason) => {
                    self.roll_back(&reason)?;
                    worked = true;
                }
                Step::Verify => {
                    let d = self
                        .answer
                        .as_ref()
                        .and_then(|a| a.desired.clone())
                        .expect("verify needs a desired release");
                    self.say(&format!(
                        "verifying release {} of {}",
                        d.release.short(),
                        d.channel
                    ));
                    self.verify_release(&d.channel, &d.release.to_string())?;
                }
                Step::Count => {
                    let d = desired.expect("count needs a desired release");
                    let id: CommitId = d.parse().map_err(|_| Error::Release {
                        release: d.clone(),
                        reason: "not a commit id".into(),
                    })?;
                    self.missing = Some(transfer::missing(&self.repo.objects, id)?.len());
                }
                Step::Fetch => {
                    let d = self
                        .answer
                        .as_ref()
                        .and_then(|a| a.desired.clone())
                        .expect("fetch needs a desired release");
                    let before = self.api().received.load(Ordering::Relaxed);
                    self.fetch(&d.release.to_string(), &d.objects_path)?;
                    let got = self.api().received.load(Ordering::Relaxed) - before;
                    self.say(&format!(
                        "fetched release {} ({got} bytes)",
                        d.release.short()
                    ));
                    self.missing = Some(0);
                    worked = true;
                }
                Step::Stage => {
                    let d = desired.expect("stage needs a desired release");
                    self.phase = Phase::Staging;
                    let written = deploy::stage(&self.repo, &self.layout, &d)?;
                    self.say(&format!(
                        "staged release {} ({written} bytes written, the rest linked)",
                        short(&d)
                    ));
                    self.seal_staged(&d);
                    worked = true;
                }
                Step::StageLive => {
                    let d = desired.expect("stage needs a desired release");
                    self.phase = Phase::Staging;
                    self.stage_live(&d)?;
                    worked = true;
                }
                Step::Switch => {
                    let d = desired.expect("switch needs a desired release");
                    self.switch(&d, current)?;
                    // the new release's configuration before its health checks
                    self.configure()?;
                    worked = true;
                }
            }
        }
        Err(Error::Config(
            "the agent went round 64 steps without settling".into(),
        ))
    }

    /// One round: reconcile (holding the first check-in up to `wait` seconds), and when
    /// something changed, report at once. An error is recorded and reported when possible.
    pub fn cycle(&mut self, wait: u32) -> Result<Outcome> {
        self.answer = None;
        // what a failed cycle was doing is in `failing`, not in the phase the next one reports
        self.phase = Phase::Idle;
        self.jobs.pending.clear();
        let sysroot = self.cfg.sysroot.clone();
        let log = &self.log;
        self.jobs.refresh_inventory(
            sysroot.as_deref(),
            self.cfg.inventory_interval_secs,
            now(),
            &|s| log(s),
        );
        self.read_facts();
        let mut res = self.reconcile(wait);
        self.note_failure(&res)?;
        // The configuration follows the release running and the variables held.
        if self.configure()?
            && let Ok(o) = &mut res
        {
            o.worked = true;
        }
        // Jobs run once the release is settled (never during a trial), also when the update
        // failed: a job may be what repairs the machine.
        let ran = self.run_jobs()?;
        if ran && let Ok(o) = &mut res {
            o.worked = true;
        }
        if self.backup_when_due()?
            && let Ok(o) = &mut res
        {
            o.worked = true;
        }
        match &res {
            Ok(o) if o.worked => {
                self.checkin(0)?;
            }
            Ok(_) => {}
            Err(e) => {
                self.state.last_error = Some(error::render(e));
                if let Some(api) = &self.api {
                    self.state.fetched_bytes += api.received.swap(0, Ordering::Relaxed);
                }
                let _ = self.save();
                if self.api.is_some() && !e.is_transient() {
                    let _ = self.checkin(0);
                }
            }
        }
        if let Some(api) = &self.api {
            let got = api.received.swap(0, Ordering::Relaxed);
            if got > 0 {
                self.state.fetched_bytes += got;
                self.save()?;
            }
        }
        // An error is kept until the machine is up to date and healthy again.
        if res.as_ref().is_ok_and(|o| o.wait == WaitFor::UpToDate)
            && self.state.health == Health::Healthy
            && self.state.last_error.is_some()
        {
            self.state.last_error = None;
            self.save()?;
        }
        res
    }

    /// Keeps what the last cycle failed at (reported as `failing`), or forgets it once a cycle
    /// succeeds. An error reaching the server changes nothing: it cannot be reported, and what
    /// failed before is still what the server should know when it is back.
    fn note_failure(&mut self, res: &Result<Outcome>) -> Result<()> {
        match res {
            Ok(_) if self.state.failing.is_some() => {
                self.state.failing = None;
                self.save()?;
            }
            Ok(_) => {}
            Err(e) if !e.is_transient() => {
                let release = self
                    .answer
                    .as_ref()
                    .and_then(|a| a.desired.as_ref())
                    .map(|d| d.release);
                let since = match &self.state.failing {
                    Some(f) if f.phase == self.phase && f.release == release => f.since,
                    _ => now(),
                };
                self.state.failing = Some(Failure {
                    phase: self.phase,
                    release,
                    reason: e.to_string(),
                    since,
                });
                // saved with the error below
            }
            Err(_) => {}
        }
        Ok(())
    }

    /// Runs the jobs of the last answer that have not run here; true when any did (or was
    /// refused), so that the results are reported at once.
    fn run_jobs(&mut self) -> Result<bool> {
        if self.state.trial.is_some()
            || self.answer.as_ref().map(|a| a.status)
                != Some(semithin_protocol::api::MachineStatus::Accepted)
        {
            return Ok(false);
        }
        let pending = std::mem::take(&mut self.jobs.pending);
        if pending.is_empty() {
            return Ok(false);
        }
        let keys = self.cfg.admin_keys()?;
        let (api, layout, cfg) = (self.api.as_ref(), &self.layout, &self.cfg);
        let capture = |paths: &[String]| capture::for_job(api, layout, cfg, paths);
        let settings = jobs::Settings {
            capture: Some(&capture),
            sysroot: self.cfg.sysroot.as_deref(),
            allow_commands: self.cfg.allow_commands,
            admin_keys: &keys,
            reboot_command: &self.cfg.reboot_command,
            progress_every: Duration::from_secs(self.cfg.job_progress_secs.max(1)),
        };
        let mut ran = false;
        let mut packages = false;
        for d in &pending {
            let api = self.api.as_ref().expect("an answer means connected");
            let log = &self.log;
            let mut progress = || match api.job_progress(d.delivery.as_ref()) {
                Ok(cancelled) => cancelled,
                Err(e) => {
                    log(&format!("job {}: progress report failed: {e}", d.delivery));
                    false
                }
            };
            let r = jobs::run(&self.jobs.store, d, &settings, &mut progress, &|s| log(s))?;
            if r.is_some() {
                ran = true;
                packages |= jobs::touches_packages(&d.spec.action);
            }
        }
        if packages {
            self.jobs.inventory_stale = true;
            let log = &self.log;
            self.jobs.refresh_inventory(
                settings.sysroot,
                self.cfg.inventory_interval_secs,
                now(),
                &|s| log(s),
            );
        }
        Ok(ran)
    }

    /// Runs until `stop` is set: long polls, reconciles, backs off when the server is away,
    /// and verifies the running deployment when it is due ([`Agent::verify_when_due`]).
    pub fn run(&mut self, stop: &std::sync::atomic::AtomicBool) -> Result<()> {
        let mut failures = 0u32;
        let mut wait = 0u32;
        while !stop.load(Ordering::Relaxed) {
            if self.api.is_some() && self.failover.back_to_preferred() {
                self.say("trying the preferred upstream again");
                self.connect()?;
            }
            match self.cycle(wait) {
                Ok(o) => {
                    failures = 0;
                    self.failover.worked();
                    wait = if o.worked {
                        0
                    } else {
                        let next = self
                            .answer
                            .as_ref()
                            .map(|a| a.next_checkin_secs)
                            .unwrap_or(self.cfg.interval_secs)
                            .clamp(1, self.cfg.interval_secs.max(1));
                        jitter(next)
                    };
                    if o.wait == WaitFor::Acceptance || o.wait == WaitFor::Rejected {
                        // The server holds long polls for accepted machines only as long as
                        // it likes; a pending machine asks again after the wait.
                        wait = wait.max(1);
                    }
                }
                Err(e) if self.api.is_some() && self.upstream_failed(&e) => {
                    wait = 0;
                }
                Err(e) => {
                    failures += 1;
                    let base = 1u64 << failures.min(9);
                    let delay = base.min(self.cfg.max_backoff_secs.max(1));
                    let delay = jitter(delay as u32).max(1);
                    self.say(&format!(
                        "error: {}; retrying in {delay} s",
                        error::render(&e)
                    ));
                    sleep_unless(stop, Duration::from_secs(delay as u64));
                    wait = 0;
                    if matches!(e, Error::Config(_)) && self.state.machine_id.is_none() {
                        return Err(e);
                    }
                }
            }
            if let Err(e) = self.verify_when_due() {
                self.say(&format!("verify failed: {}", error::render(&e)));
            }
        }
        Ok(())
    }

    pub fn repo(&self) -> &Repo {
        &self.repo
    }
}

/// `semithin agent retry`: forgets the release that failed here (and the last error), so the
/// next cycle tries the server's release again. Takes STATE/lock, so it is refused while another
/// agent works on the directory. Returns the release forgotten, if any.
pub fn retry(dir: &Path) -> Result<Option<String>> {
    let layout = Layout::new(dir);
    if !layout.dir.is_dir() {
        return Err(Error::Config(format!(
            "{} is not an agent state directory",
            dir.display()
        )));
    }
    let _lock = lock_state(&layout)?;
    let mut state = State::load(&layout.state())?;
    let failed = state.retry();
    state.save(&layout.state())?;
    Ok(failed)
}

/// Takes STATE/lock, so two agents never work on one state directory at once.
pub(crate) fn lock_state(layout: &Layout) -> Result<std::fs::File> {
    let path = layout.dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(Error::io("opening", &path))?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(f),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::Busy {
            dir: layout.dir.clone(),
        }),
        Err(e) => Err(Error::io("locking", &path)(e.into())),
    }
}

/// Ends the process with SIGKILL at a named point when SEMITHIN_AGENT_CRASH_AT names it: the
/// tests use it to show that a kill at the worst moment leaves nothing broken.
pub fn crash_point(name: &str) {
    if std::env::var("SEMITHIN_AGENT_CRASH_AT").as_deref() == Ok(name) {
        eprintln!("semithin-agent: killed at {name} (SEMITHIN_AGENT_CRASH_AT)");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// How long one check-in waits for the server to finish the delta pack it holds this machine
/// for (it is woken as soon as the pack is ready); three such waits at most per run.
const HELD_POLL_SECS: u32 = 60;

/// Objects per request: SEMITHIN_FETCH_BATCH, or the protocol's maximum.
fn fetch_batch() -> usize {
    std::env::var("SEMITHIN_FETCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(semithin_protocol::api::MAX_OBJECTS_PER_REQUEST)
        .min(semithin_protocol::api::MAX_OBJECTS_PER_REQUEST)
}

fn sleep_unless(stop: &std::sync::atomic::AtomicBool, d: Duration) {
    let end = std::time::Instant::now() + d;
    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `secs` minus up to a tenth of it, at random, so a fleet does not check in in lockstep.
fn jitter(secs: u32) -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    let span = (secs / 10).max(1);
    secs.saturating_sub(u32::from_le_bytes(b) % span)
}

pub use semithin_protocol::ids::short_str as short;

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io("creating", &tmp))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(Error::io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io("renaming", path))
}

fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}
