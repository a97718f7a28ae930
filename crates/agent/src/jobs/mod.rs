//! Jobs on the machine: each delivery the server gives is run at most once, even across crashes
//! and retries. Before anything runs, `STATE/jobs/DELIVERY.json` records that it started
//! (written to a temporary name, synced, renamed, the directory synced); a delivery that has a
//! record is never run again. A record without a result at start means the agent stopped while
//! the job ran: it is reported as interrupted. Results are sent with every check-in until one
//! succeeds. See STATE.md, "Jobs".

pub mod apt;
pub mod exec;
pub mod inventory;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use semithin_protocol::inventory::Inventory;
use semithin_protocol::job::{self, Action, Delivery, JobResult, Outcome};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use exec::{End, Output, Runner};

/// Results sent in one check-in at most.
const MAX_RESULTS_PER_CHECKIN: usize = 64;
/// Reported records are kept this long (a re-delivery within it is recognised and ignored).
const KEEP_SECS: i64 = 90 * 86_400;

/// What the agent keeps of one delivery.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub delivery: semithin_protocol::ids::DeliveryId,
    pub kind: String,
    pub started_at: i64,
    #[serde(default)]
    pub result: Option<JobResult>,
    /// The server has the result.
    #[serde(default)]
    pub reported: bool,
}

/// `STATE/jobs/`: one record per delivery.
pub struct Store {
    dir: PathBuf,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// When the running system booted (`btime` of /proc/stat).
pub(crate) fn boot_time() -> Option<i64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

impl Store {
    /// Opens the directory and finishes the records of jobs that were running when the agent
    /// stopped: interrupted (a reboot job that was followed by a boot: succeeded).
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        let s = Store {
            dir: dir.to_owned(),
        };
        let booted = boot_time();
        for mut r in s.records()? {
            if r.result.is_some() {
                if r.reported && now() - r.started_at > KEEP_SECS {
                    let p = s.path(r.delivery.as_ref());
                    std::fs::remove_file(&p).map_err(Error::io("removing", &p))?;
                }
                continue;
            }
            let rebooted = r.kind == "reboot" && booted.is_some_and(|b| b > r.started_at);
            r.result = Some(JobResult {
                delivery: r.delivery.clone(),
                outcome: if rebooted {
                    Outcome::Succeeded
                } else {
                    Outcome::Interrupted
                },
                exit_code: None,
                output: if rebooted {
                    "the machine rebooted".into()
                } else {
                    "the agent stopped while this job ran (killed, crashed, or the machine went \
                     down); it is not run again"
                        .into()
                },
                started_at: r.started_at,
                duration_ms: 0,
            });
            s.write(&r)?;
        }
        Ok(s)
    }

    fn path(&self, delivery: &str) -> PathBuf {
        self.dir.join(format!("{delivery}.json"))
    }

    fn records(&self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let rd = std::fs::read_dir(&self.dir).map_err(Error::io("reading", &self.dir))?;
        for e in rd {
            let e = e.map_err(Error::io("reading", &self.dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // a record being written when the agent stopped: it never counted
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let Some(delivery) = name.strip_suffix(".json") else {
                continue;
            };
            // A damaged record is left alone: its delivery is never run again.
            if let Ok(Some(r)) = self.read(delivery) {
                out.push(r);
            }
        }
        out.sort_by_key(|r| r.started_at);
        Ok(out)
    }

    pub fn read(&self, delivery: &str) -> Result<Option<Record>> {
        let p = self.path(delivery);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                Error::Config(format!(
                    "{} is damaged ({e}); the job it records is not run again while it is there",
                    p.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading", &p)(e)),
        }
    }

    /// Writes a record durably: temporary file, fsync, rename, fsync of the directory.
    pub fn write(&self, r: &Record) -> Result<()> {
        let tmp = self.dir.join(format!(".{}.tmp", r.delivery));
        let bytes = serde_json::to_vec_pretty(r).expect("serialises");
        semithin_store::fsutil::write_synced(&tmp, &bytes)?;
        let p = self.path(r.delivery.as_ref());
        std::fs::rename(&tmp, &p).map_err(Error::io("renaming", &p))?;
        semithin_store::fsutil::sync_dir(&self.dir)?;
        Ok(())
    }

    /// Results the server may not have.
    pub fn unreported(&self) -> Result<Vec<JobResult>> {
        Ok(self
            .records()?
            .into_iter()
            .filter(|r| !r.reported)
            .filter_map(|r| r.result)
            .take(MAX_RESULTS_PER_CHECKIN)
            .collect())
    }

    pub fn mark_reported(&self, deliveries: &[String]) -> Result<()> {
        for d in deliveries {
            if let Some(mut r) = self.read(d)?
                && !r.reported
            {
                r.reported = true;
                self.write(&r)?;
            }
        }
        Ok(())
    }
}

/// How this machine runs jobs (from the agent's settings).
pub struct Settings<'a> {
    pub sysroot: Option<&'a Path>,
    pub allow_commands: bool,
    pub admin_keys: &'a [[u8; 32]],
    pub reboot_command: &'a [String],
    pub progress_every: Duration,
    /// Makes and sends a capture with these extra paths (the capture job); its summary.
    pub capture: Option<&'a Capture<'a>>,
}

/// Makes and sends a capture with the extra paths given: a line for the job's output, or why
/// not.
pub type Capture<'a> = dyn Fn(&[String]) -> std::result::Result<String, String> + 'a;

/// Why a delivery is refused, or `None` when it may run.
pub fn refusal(d: &Delivery, s: &Settings, now: i64) -> Option<String> {
    if job::job_of_delivery(d.delivery.as_ref()).ok() != Some(d.spec.id.as_str()) {
        return Some(format!(
            "the delivery {} is not of job {}",
            d.delivery, d.spec.id
        ));
    }
    if let Err(e) = d.spec.validate() {
        return Some(format!("the job is invalid: {e}"));
    }
    if let Action::Command { .. } = d.spec.action {
        if !s.allow_commands {
            return Some(
                "this machine does not run free-form commands (allow_commands is off in the \
                 agent's settings)"
                    .into(),
            );
        }
        let Some(sig) = &d.signature else {
            return Some("the command is not signed by an admin key".into());
        };
        if s.admin_keys.is_empty() {
            return Some(
                "this machine trusts no admin key (admin_keys in the agent's settings)".into(),
            );
        }
        if let Err(e) = job::verify(&d.spec, sig, s.admin_keys) {
            return Some(format!("the command is refused: {e}"));
        }
        if !d.spec.delivery_is_due(d.delivery.as_ref(), now) {
            return Some(format!(
                "the delivery {} is not an occurrence the signed schedule has now",
                d.delivery
            ));
        }
    }
    None
}

/// Whether the action changes packages (the inventory is read again after it).
pub fn touches_packages(a: &Action) -> bool {
    matches!(
        a,
        Action::AptInstall { .. }
            | Action::AptRemove { .. }
            | Action::AptUpdate
            | Action::AptUpgrade { .. }
            | Action::AptSourceAdd(_)
            | Action::AptSourceRemove { .. }
            | Action::Command { .. }
    )
}

/// Runs one delivery, unless it has a record already (then `None`: it ran or was refused
/// before; its result is sent again if the server asks for it again). `progress` tells the
/// server it runs and answers whether it was cancelled.
pub fn run(
    store: &Store,
    d: &Delivery,
    s: &Settings,
    progress: &mut dyn FnMut() -> bool,
    log: &dyn Fn(&str),
) -> Result<Option<JobResult>> {
    let Ok(_) = job::job_of_delivery(d.delivery.as_ref()) else {
        log(&format!(
            "ignoring a delivery with a bad id {:?}",
            d.delivery
        ));
        return Ok(None);
    };
    let existing = match store.read(d.delivery.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            log(&format!("not running job {}: {e}", d.delivery));
            return Ok(None);
        }
    };
    if let Some(mut r) = existing {
        // Delivered again: the server lacks the result (or it was never sent). Never run twice.
        if r.result.is_some() && r.reported {
            r.reported = false;
            store.write(&r)?;
        }
        return Ok(None);
    }
    let started = now();
    let mut rec = Record {
        delivery: d.delivery.clone(),
        kind: d.spec.action.kind().into(),
        started_at: started,
        result: None,
        reported: false,
    };
    if let Some(why) = refusal(d, s, started) {
        log(&format!("job {} refused: {why}", d.delivery));
        rec.result = Some(JobResult {
            delivery: d.delivery.clone(),
            outcome: Outcome::Refused,
            exit_code: None,
            output: why,
            started_at: started,
            duration_ms: 0,
        });
        store.write(&rec)?;
        return Ok(rec.result);
    }
    // Durable before anything runs: from here on this delivery is never run again.
    store.write(&rec)?;
    crate::crash_point("job-started");
    log(&format!(
        "running job {}: {}",
        d.delivery,
        d.spec.action.describe()
    ));
    let clock = Instant::now();
    let cancelled_now = progress();
    let (outcome, exit_code, output) = if cancelled_now {
        (
            Outcome::Cancelled,
            None,
            "cancelled before it started".into(),
        )
    } else {
        let mut runner = Runner {
            root: s.sysroot,
            deadline: clock + Duration::from_secs(d.spec.timeout_secs),
            cancelled: progress,
            poll_every: s.progress_every,
        };
        execute(&d.spec.action, d.delivery.as_ref(), s, &mut runner)
    };
    let result = JobResult {
        delivery: d.delivery.clone(),
        outcome,
        exit_code,
        output: job::bound_output(&output),
        started_at: started,
        duration_ms: clock.elapsed().as_millis().min(u64::MAX as u128) as u64,
    };
    log(&format!(
        "job {} {}{}",
        d.delivery,
        outcome.as_str(),
        exit_code
            .map(|c| format!(" (exit {c})"))
            .unwrap_or_default()
    ));
    rec.result = Some(result.clone());
    store.write(&rec)?;
    Ok(Some(result))
}

/// What an end means for the job.
fn outcome_of(end: End) -> (Outcome, Option<i32>) {
    match end {
        End::Exited(Some(0)) => (Outcome::Succeeded, Some(0)),
        End::Exited(c) => (Outcome::Failed, c),
        End::TimedOut => (Outcome::TimedOut, None),
        End::Cancelled => (Outcome::Cancelled, None),
    }
}

fn execute(
    action: &Action,
    delivery: &str,
    s: &Settings,
    runner: &mut Runner,
) -> (Outcome, Option<i32>, String) {
    let mut out = Output::default();
    let res = steps(action, delivery, s, runner, &mut out);
    match res {
        Ok((o, c)) => (o, c, out.text()),
        Err(e) => {
            out.line(&e);
            (Outcome::Failed, None, out.text())
        }
    }
}

fn steps(
    action: &Action,
    delivery: &str,
    s: &Settings,
    runner: &mut Runner,
    out: &mut Output,
) -> std::result::Result<(Outcome, Option<i32>), String> {
    let root = s.sysroot;
    let env = [("SEMITHIN_JOB", delivery)];
    let one = |runner: &mut Runner, argv: Vec<String>, out: &mut Output| {
        apt::run(runner, &argv, out).map(outcome_of)
    };
    match action {
        Action::Command { argv } => runner.run(argv, &env, out, true).map(outcome_of),
        Action::AptUpdate => one(runner, apt::update(), out),
        Action::AptInstall { packages } => one(runner, apt::install(packages), out),
        Action::AptRemove { packages } => one(runner, apt::remove(packages), out),
        Action::AptUpgrade {
            dist,
            security_only: false,
        } => one(runner, apt::upgrade(*dist), out),
        Action::AptUpgrade {
            dist,
            security_only: true,
        } => {
            let ups = inventory::upgrades(root, *dist)?;
            let names: Vec<String> = ups
                .iter()
                .filter(|u| u.security)
                .map(|u| u.name.clone())
                .collect();
            if names.is_empty() {
                out.line("no security updates to install");
                return Ok((Outcome::Succeeded, Some(0)));
            }
            out.line(&format!("security updates: {}", names.join(" ")));
            one(runner, apt::only_upgrade(&names)?, out)
        }
        Action::AptSourceAdd(src) => {
            out.line(&apt::add_source(root, src, delivery)?);
            Ok((Outcome::Succeeded, Some(0)))
        }
        Action::AptSourceRemove { name } => {
            out.line(&apt::remove_source(root, name)?);
            Ok((Outcome::Succeeded, Some(0)))
        }
        Action::Reboot => {
            if s.reboot_command.is_empty() {
                return Err("no reboot_command in the agent's settings".into());
            }
            out.line(&format!("$ {}", s.reboot_command.join(" ")));
            // The machine's own command, not chrooted: a sysroot is not a running system.
            runner
                .run(s.reboot_command, &env, out, false)
                .map(outcome_of)
        }
        Action::Capture { paths } => {
            let capture = s.capture.ok_or("this agent cannot send captures")?;
            out.line(&capture(paths)?);
            Ok((Outcome::Succeeded, Some(0)))
        }
    }
}

/// The agent's side of jobs between check-ins: the store, the jobs of the last answer, and the
/// inventory with the digest the server holds.
pub struct Jobs {
    pub store: Store,
    pub pending: Vec<Delivery>,
    pub inventory: Option<Inventory>,
    pub inventory_at: i64,
    pub inventory_stale: bool,
    pub server_digest: Option<String>,
}

impl Jobs {
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            store: Store::open(dir)?,
            pending: Vec::new(),
            inventory: None,
            inventory_at: 0,
            inventory_stale: true,
            server_digest: None,
        })
    }

    /// Reads the inventory again when it is stale or older than `interval` seconds (0: never;
    /// nor on a root without dpkg). A failure is logged; the last inventory stays.
    pub fn refresh_inventory(
        &mut self,
        root: Option<&Path>,
        interval: u64,
        now: i64,
        log: &dyn Fn(&str),
    ) {
        if interval == 0 || !inventory::has_dpkg(root) {
            return;
        }
        if !self.inventory_stale && now - self.inventory_at < interval as i64 {
            return;
        }
        self.inventory_at = now;
        self.inventory_stale = false;
        match inventory::collect(root, now) {
            Ok(inv) => self.inventory = Some(inv),
            Err(e) => log(&format!("reading the package inventory: {e}")),
        }
    }

    /// The inventory, when the server's digest differs from it.
    pub fn inventory_to_send(&self) -> Option<Inventory> {
        let inv = self.inventory.as_ref()?;
        (self.server_digest.as_deref() != Some(inv.digest().as_str())).then(|| inv.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use semithin_protocol::job::{JobSpec, Schedule, SpecJson};

    fn delivery(action: Action) -> Delivery {
        let id = job::new_id().unwrap();
        Delivery {
            delivery: id.parse().unwrap(),
            spec: SpecJson::new(JobSpec {
                id,
                action,
                timeout_secs: 30,
                schedule: Schedule::default(),
                created_at: now(),
            }),
            signature: None,
        }
    }

    fn settings<'a>(keys: &'a [[u8; 32]], allow: bool) -> Settings<'a> {
        Settings {
            sysroot: None,
            allow_commands: allow,
            admin_keys: keys,
            reboot_command: &[],
            progress_every: Duration::from_secs(1),
            capture: None,
        }
    }

    #[test]
    fn a_delivery_runs_once_and_a_started_one_is_interrupted_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = job::AdminKey::generate().unwrap();
        let keys = [job::parse_public_key(&key.public_hex()).unwrap()];
        let marks = dir.path().join("marks");
        let mut d = delivery(Action::Command {
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!("echo ran >> {}", marks.display()),
            ],
        });
        d.signature = Some(key.sign(&d.spec).unwrap());
        let s = settings(&keys, true);
        let mut never = || false;
        let r = run(&store, &d, &s, &mut never, &|_| {}).unwrap().unwrap();
        assert_eq!(r.outcome, Outcome::Succeeded);
        assert!(run(&store, &d, &s, &mut never, &|_| {}).unwrap().is_none());
        assert_eq!(std::fs::read_to_string(&marks).unwrap(), "ran\n");
        assert_eq!(store.unreported().unwrap().len(), 1);
        store.mark_reported(&[d.delivery.to_string()]).unwrap();
        assert!(store.unreported().unwrap().is_empty());
        // delivered again: not run, reported again
        assert!(run(&store, &d, &s, &mut never, &|_| {}).unwrap().is_none());
        assert_eq!(store.unreported().unwrap().len(), 1);

        // a record that started and has no result: the agent stopped while it ran
        let started = Record {
            delivery: job::new_id().unwrap().parse().unwrap(),
            kind: "command".into(),
            started_at: now(),
            result: None,
            reported: false,
        };
        store.write(&started).unwrap();
        std::fs::write(dir.path().join(".half.tmp"), b"{").unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r = store
            .read(started.delivery.as_ref())
            .unwrap()
            .unwrap()
            .result
            .unwrap();
        assert_eq!(r.outcome, Outcome::Interrupted);
        assert!(!dir.path().join(".half.tmp").exists());
        // a damaged record: its delivery is not run, check-ins go on
        let bad = delivery(Action::AptUpdate);
        std::fs::write(dir.path().join(format!("{}.json", bad.delivery)), b"{").unwrap();
        assert!(
            run(&store, &bad, &s, &mut never, &|_| {})
                .unwrap()
                .is_none()
        );
        assert!(store.unreported().is_ok());
    }

    #[test]
    fn commands_need_permission_and_a_trusted_signature() {
        let key = job::AdminKey::generate().unwrap();
        let keys = [job::parse_public_key(&key.public_hex()).unwrap()];
        let mut d = delivery(Action::Command {
            argv: vec!["true".into()],
        });
        let t = now();
        assert!(
            refusal(&d, &settings(&keys, false), t)
                .unwrap()
                .contains("allow_commands")
        );
        assert!(
            refusal(&d, &settings(&keys, true), t)
                .unwrap()
                .contains("not signed")
        );
        d.signature = Some(key.sign(&d.spec).unwrap());
        assert!(
            refusal(&d, &settings(&[], true), t)
                .unwrap()
                .contains("trusts no admin key")
        );
        assert_eq!(refusal(&d, &settings(&keys, true), t), None);
        // replayed under another delivery id, or at another time than its schedule says
        let mut other = d.clone();
        other.delivery = format!("{}.{t}", d.delivery).parse().unwrap();
        assert!(refusal(&other, &settings(&keys, true), t).is_some());
        let mut late = d.clone();
        let mut spec = late.spec.spec().clone();
        spec.schedule.window_secs = Some(60);
        late.spec = SpecJson::new(spec);
        late.signature = Some(key.sign(&late.spec).unwrap());
        assert!(
            refusal(&late, &settings(&keys, true), t + 3600)
                .unwrap()
                .contains("not an occurrence")
        );
        // what the server sent is verified, not what this agent made of it: a field the admin
        // did not sign (ignored by this version's parser) makes the signature fail
        let mut sent = serde_json::to_value(&d).unwrap();
        sent["spec"]["action"]["shell"] = true.into();
        sent["spec"]["run_as"] = "root".into();
        let tampered: Delivery = serde_json::from_value(sent).unwrap();
        assert_eq!(tampered.spec.spec(), d.spec.spec());
        assert!(
            refusal(&tampered, &settings(&keys, true), t)
                .unwrap()
                .contains("does not verify")
        );
        // typed jobs need no signature, but must fit their schema
        let bad = delivery(Action::AptInstall {
            packages: vec!["--allow-unauthenticated".into()],
        });
        assert!(
            refusal(&bad, &settings(&[], false), t)
                .unwrap()
                .contains("bad package")
        );
    }
}
