//! Jobs: commands for machines, as the admin writes them, the server delivers them and the agent
//! runs them (docs/PROTOCOL.md, "Jobs"). Pure: validation, signatures and the schedule's
//! occurrences as functions of the job and a time.
//!
//! A job is a [`JobSpec`]: an id, an [`Action`], a timeout and a [`Schedule`]. Typed actions
//! (apt, reboot) are checked against a schema here, on the server and again on the agent; no
//! field is ever given to a shell. A free-form [`Action::Command`] runs only on machines whose
//! agent allows commands, and only when an admin key the agent trusts signed the spec.
//!
//! Each occurrence of a job has its own delivery id: the job id for a job that runs once,
//! `ID.UNIX` for the occurrence of an `every` job that starts at UNIX seconds. A machine runs a
//! delivery at most once.

use serde::{Deserialize, Serialize};

mod schedule;
mod signature;
pub use signature::{AdminKey, SpecJson, parse_public_key, signing_input, verify, verify_input};

/// At most this much output of a job is kept (its start and its end, with a marker between).
pub const MAX_OUTPUT: usize = 64 << 10;
/// The longest timeout a job may have: a week.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 86_400;
/// The timeout of a job that names none: an hour.
pub const DEFAULT_TIMEOUT_SECS: u64 = 3600;
const MAX_PACKAGES: usize = 1000;
const MAX_ARGS: usize = 1024;
const MAX_KEY: usize = 64 << 10;

/// What a job does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// A program and its arguments, executed directly (no shell), chrooted into the agent's
    /// sysroot when it has one. Needs a signature by a trusted admin key.
    Command { argv: Vec<String> },
    /// `apt-get install PKG...`
    AptInstall { packages: Vec<String> },
    /// `apt-get remove PKG...`
    AptRemove { packages: Vec<String> },
    /// `apt-get update`
    AptUpdate,
    /// `apt-get upgrade` (`dist`: `dist-upgrade`); `security_only`: only the packages whose
    /// candidate comes from a `-security` suite.
    AptUpgrade {
        #[serde(default)]
        dist: bool,
        #[serde(default)]
        security_only: bool,
    },
    /// `/etc/apt/sources.list.d/NAME.sources` (deb822) with its key in
    /// `/etc/apt/keyrings/NAME.asc` (or `.gpg`).
    AptSourceAdd(AptSource),
    /// Removes `NAME.sources` and its key; one-line `.list` files are left intact.
    AptSourceRemove { name: String },
    /// Reboot the machine.
    Reboot,
    /// Send the machine's writable layer to the server (`semithin agent capture`): the `/etc`
    /// overlay's upper directory, the paths of the agent's `capture_paths` and these.
    Capture {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        paths: Vec<String>,
    },
}

/// A deb822 apt source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AptSource {
    pub name: String,
    pub uri: String,
    pub suite: String,
    pub components: Vec<String>,
    /// The OpenPGP public key the repository's Release is signed with.
    pub key: SourceKey,
}

/// An OpenPGP public key, as the admin's key file held it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceKey {
    /// ASCII armored (`-----BEGIN PGP PUBLIC KEY BLOCK-----`), written as NAME.asc.
    Armored(String),
    /// A binary keyring in hex, written as NAME.gpg.
    Binary(String),
}

impl SourceKey {
    /// The file name extension apt expects and the key file's bytes.
    pub fn file(&self) -> (&'static str, Vec<u8>) {
        match self {
            SourceKey::Armored(t) => ("asc", t.as_bytes().to_vec()),
            SourceKey::Binary(h) => ("gpg", hex::decode(h).unwrap_or_default()),
        }
    }

    /// Reads a key file's bytes: armored text, or a binary OpenPGP public key.
    pub fn from_file_bytes(b: &[u8]) -> Result<Self, String> {
        let k = if b.starts_with(b"-----BEGIN PGP PUBLIC KEY BLOCK-----") {
            SourceKey::Armored(String::from_utf8(b.to_vec()).map_err(|_| "not UTF-8")?)
        } else {
            SourceKey::Binary(hex::encode(b))
        };
        k.validate()?;
        Ok(k)
    }

    pub fn validate(&self) -> Result<(), String> {
        match self {
            SourceKey::Armored(t) => {
                if t.len() > MAX_KEY {
                    return Err(format!("the key is larger than {MAX_KEY} bytes"));
                }
                let t = t.trim();
                if !t.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----")
                    || !t.ends_with("-----END PGP PUBLIC KEY BLOCK-----")
                {
                    return Err("the key is not an ASCII armored OpenPGP public key block".into());
                }
                if !t
                    .bytes()
                    .all(|b| b == b'\n' || b == b'\r' || (0x20..0x7f).contains(&b))
                {
                    return Err(
                        "the armored key holds characters that are not printable ASCII".into(),
                    );
                }
            }
            SourceKey::Binary(h) => {
                let b = hex::decode(h).map_err(|_| "the binary key is not hex".to_owned())?;
                if b.is_empty() || b.len() > MAX_KEY {
                    return Err(format!("the key must be 1 to {MAX_KEY} bytes"));
                }
                // An OpenPGP public-key packet: old format tag 6 (0x98..0x9b), new format 0xc6.
                if !matches!(b[0], 0x98..=0x9b | 0xc6) {
                    return Err(
                        "the key is neither ASCII armored nor a binary OpenPGP public key".into(),
                    );
                }
            }
        }
        Ok(())
    }
}

/// When a job runs. Times are Unix seconds; cron expressions are 5 fields (or `@hourly`,
/// `@daily`, `@weekly`, `@monthly`, `@yearly`), read in `tz` (UTC without one).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Schedule {
    /// Not before this time (and for `every`, the first occurrence at or after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<i64>,
    /// A cron expression: the job runs at each occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// The IANA time zone `every` is read in (`Europe/Madrid`): `0 3 * * *` is 03:00 there,
    /// daylight saving time included. Absent: UTC. Only with `every`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
    /// A machine that checks in later than this long after an occurrence's start does not run
    /// it. Without one, a single job waits for its machines for ever, and an occurrence of an
    /// `every` job until the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<u64>,
}

/// One run of a job that machines may be given now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Occurrence {
    pub delivery: String,
    pub start: i64,
    /// Machines checking in at or after this time do not get it (`None`: no end).
    pub end: Option<i64>,
}

/// A job as the admin made it; this is what a signature covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobSpec {
    /// 32 lowercase hex digits, made by the admin's tool.
    pub id: String,
    pub action: Action,
    pub timeout_secs: u64,
    #[serde(default)]
    pub schedule: Schedule,
    /// Unix seconds; a job without `at` starts then.
    pub created_at: i64,
}

/// An admin's ed25519 signature of a [`JobSpec`] as sent ([`SpecJson`], [`signing_input`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobSignature {
    /// The public key, 64 hex digits.
    pub key: String,
    /// 128 hex digits over [`signing_input`].
    pub signature: String,
}

/// What the server gives a machine to run (in the check-in answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivery {
    pub delivery: crate::ids::DeliveryId,
    /// The spec as the admin sent it, which is what the signature covers.
    pub spec: SpecJson,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<JobSignature>,
}

/// How a delivery ended on a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Exit code 0.
    Succeeded,
    /// Another exit code, a signal, or a step that could not be done.
    Failed,
    TimedOut,
    Cancelled,
    /// The agent stopped (killed, crashed, the machine went down) while the job ran; it is not
    /// run again.
    Interrupted,
    /// The agent refused to run it (commands not allowed, no trusted signature, invalid).
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Cancelled => "cancelled",
            Outcome::Interrupted => "interrupted",
            Outcome::Refused => "refused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Outcome::Succeeded,
            Outcome::Failed,
            Outcome::TimedOut,
            Outcome::Cancelled,
            Outcome::Interrupted,
            Outcome::Refused,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

/// A machine's result of one delivery (in the check-in request, until the server has it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobResult {
    pub delivery: crate::ids::DeliveryId,
    pub outcome: Outcome,
    /// The exit code, when the program exited.
    pub exit_code: Option<i32>,
    /// stdout and stderr, at most [`MAX_OUTPUT`] bytes (or the reason of a refusal).
    pub output: String,
    pub started_at: i64,
    pub duration_ms: u64,
}

/// `POST /api/v1/jobs/{delivery}/progress`: the machine runs it; the answer says whether the job
/// was cancelled meanwhile.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Progress {
    pub cancelled: bool,
}

/// `POST /api/v1/admin/jobs`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobRequest {
    pub selector: String,
    pub spec: SpecJson,
    #[serde(default)]
    pub signature: Option<JobSignature>,
}

/// A job as the admin sees it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobInfo {
    pub id: String,
    pub selector: String,
    pub spec: JobSpec,
    /// The admin key that signed it, if any.
    pub signed_by: Option<String>,
    /// Names of the machines it was given to (those the selector matched when it was made).
    pub machines: Vec<String>,
    pub cancelled_at: Option<i64>,
    /// How many machine runs are in each state.
    pub states: std::collections::BTreeMap<String, u64>,
    /// The next time an occurrence starts, for scheduled jobs.
    pub next_start: Option<i64>,
}

/// One machine's run of a job (`GET /api/v1/admin/jobs/{id}`).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineRun {
    pub machine: String,
    pub delivery: Option<crate::ids::DeliveryId>,
    /// `pending` (not yet given to it), `delivered`, `running`, one of [`Outcome`]'s values, or
    /// `expired` (its window passed before it checked in) or `cancelled` before it ran.
    pub state: String,
    pub exit_code: Option<i32>,
    pub output: Option<String>,
    pub delivered_at: Option<i64>,
    pub started_at: Option<i64>,
    pub duration_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobStatus {
    pub job: JobInfo,
    pub runs: Vec<MachineRun>,
}

/// A new job id: 32 random hex digits.
pub fn new_id() -> Result<String, String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness: {e}"))?;
    Ok(hex::encode(b))
}

pub fn check_id(id: &str) -> Result<(), String> {
    if id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(format!(
            "bad job id {id:?}: expected 32 lowercase hex digits"
        ))
    }
}

/// The job id of a delivery id (`ID` or `ID.UNIX`), checking its form.
pub fn job_of_delivery(delivery: &str) -> Result<&str, String> {
    let (id, occ) = match delivery.split_once('.') {
        Some((id, t)) => (id, Some(t)),
        None => (delivery, None),
    };
    check_id(id).map_err(|_| format!("bad delivery id {delivery:?}"))?;
    if let Some(t) = occ
        && (t.is_empty() || t.len() > 12 || !t.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("bad delivery id {delivery:?}"));
    }
    Ok(id)
}

/// Debian package names (policy 5.6.1), optionally `:ARCH` and `=VERSION`.
pub fn check_package(p: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("bad package {p:?}: {why}"));
    if p.len() > 200 {
        return bad("longer than 200 characters");
    }
    let (rest, version) = match p.split_once('=') {
        Some((r, v)) => (r, Some(v)),
        None => (p, None),
    };
    let (name, arch) = match rest.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (rest, None),
    };
    let nb = name.as_bytes();
    if nb.len() < 2
        || !matches!(nb[0], b'a'..=b'z' | b'0'..=b'9')
        || !nb
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'+' | b'.' | b'-'))
    {
        return bad(
            "a name is two or more of a-z 0-9 + . -, starting with a letter or digit (Debian policy 5.6.1)",
        );
    }
    if let Some(a) = arch
        && (a.is_empty()
            || !a
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-')))
    {
        return bad("an architecture is a-z 0-9 -");
    }
    if let Some(v) = version
        && (v.is_empty()
            || !v.as_bytes()[0].is_ascii_digit()
            || !v.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'~' | b'-' | b':')
            }))
    {
        return bad("a version starts with a digit and has only A-Z a-z 0-9 . + ~ - :");
    }
    Ok(())
}

/// Names of apt sources: the file `NAME.sources`.
pub fn check_source_name(n: &str) -> Result<(), String> {
    let b = n.as_bytes();
    if b.is_empty()
        || b.len() > 64
        || !matches!(b[0], b'a'..=b'z' | b'0'..=b'9')
        || !b
            .iter()
            .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-'))
    {
        return Err(format!(
            "bad source name {n:?}: 1 to 64 of a-z 0-9 . -, starting with a letter or digit"
        ));
    }
    Ok(())
}

fn check_uri(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
        .ok_or_else(|| format!("bad URI {u:?}: only http:// and https:// are allowed"))?;
    if rest.is_empty() || u.len() > 2048 {
        return Err(format!(
            "bad URI {u:?}: empty or longer than 2048 characters"
        ));
    }
    if let Some(c) = u.chars().find(|c| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c, '[' | ']' | '"' | '\'' | '`' | '\\' | '$')
    }) {
        return Err(format!("bad URI {u:?}: it contains {c:?}"));
    }
    Ok(())
}

fn check_word(what: &str, w: &str) -> Result<(), String> {
    let b = w.as_bytes();
    if b.is_empty()
        || b.len() > 100
        || !b[0].is_ascii_alphanumeric()
        || !b
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'/' | b'+'))
    {
        return Err(format!(
            "bad {what} {w:?}: 1 to 100 of A-Z a-z 0-9 . _ - / +, starting with a letter or digit"
        ));
    }
    Ok(())
}

impl Action {
    /// The name used in listings: `command`, `apt_install`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Command { .. } => "command",
            Action::AptInstall { .. } => "apt_install",
            Action::AptRemove { .. } => "apt_remove",
            Action::AptUpdate => "apt_update",
            Action::AptUpgrade { .. } => "apt_upgrade",
            Action::AptSourceAdd(_) => "apt_source_add",
            Action::AptSourceRemove { .. } => "apt_source_remove",
            Action::Reboot => "reboot",
            Action::Capture { .. } => "capture",
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        match self {
            Action::Command { argv } => format!("run {argv:?}"),
            Action::AptInstall { packages } => format!("apt install {}", packages.join(" ")),
            Action::AptRemove { packages } => format!("apt remove {}", packages.join(" ")),
            Action::AptUpdate => "apt update".into(),
            Action::AptUpgrade {
                dist,
                security_only,
            } => format!(
                "apt {}upgrade{}",
                if *dist { "dist-" } else { "" },
                if *security_only {
                    " (security only)"
                } else {
                    ""
                }
            ),
            Action::AptSourceAdd(s) => format!(
                "apt source add {} ({} {} {})",
                s.name,
                s.uri,
                s.suite,
                s.components.join(" ")
            ),
            Action::AptSourceRemove { name } => format!("apt source remove {name}"),
            Action::Reboot => "reboot".into(),
            Action::Capture { paths } if paths.is_empty() => "capture".into(),
            Action::Capture { paths } => format!("capture /etc {}", paths.join(" ")),
        }
    }

    /// The schema: every field of a typed action, and the shape of a command.
    pub fn validate(&self) -> Result<(), String> {
        let packages = |ps: &[String]| {
            if ps.is_empty() || ps.len() > MAX_PACKAGES {
                return Err(format!("name 1 to {MAX_PACKAGES} packages"));
            }
            ps.iter().try_for_each(|p| check_package(p))
        };
        match self {
            Action::Command { argv } => {
                if argv.is_empty() || argv[0].is_empty() {
                    return Err("a command needs a program to run".into());
                }
                if argv.len() > MAX_ARGS {
                    return Err(format!("a command has at most {MAX_ARGS} arguments"));
                }
                if argv.iter().map(|a| a.len() + 1).sum::<usize>() > 128 << 10 {
                    return Err("a command's arguments are at most 128 KiB in all".into());
                }
                if argv.iter().any(|a| a.contains('\0')) {
                    return Err("a command's arguments cannot hold NUL bytes".into());
                }
                Ok(())
            }
            Action::AptInstall { packages: p } | Action::AptRemove { packages: p } => packages(p),
            Action::AptUpdate | Action::Reboot => Ok(()),
            Action::AptUpgrade { .. } => Ok(()),
            Action::AptSourceAdd(s) => {
                check_source_name(&s.name)?;
                check_uri(&s.uri)?;
                check_word("suite", &s.suite)?;
                if s.components.is_empty() || s.components.len() > 16 {
                    return Err("name 1 to 16 components".into());
                }
                s.components
                    .iter()
                    .try_for_each(|c| check_word("component", c))?;
                s.key.validate()
            }
            Action::AptSourceRemove { name } => check_source_name(name),
            Action::Capture { paths } => crate::capture::check_paths(paths),
        }
    }
}

impl JobSpec {
    pub fn validate(&self) -> Result<(), String> {
        check_id(&self.id)?;
        if !(0..=253_402_300_799).contains(&self.created_at) {
            return Err(format!("bad creation time {}", self.created_at));
        }
        if self.timeout_secs == 0 || self.timeout_secs > MAX_TIMEOUT_SECS {
            return Err(format!(
                "the timeout must be 1 to {MAX_TIMEOUT_SECS} s, not {}",
                self.timeout_secs
            ));
        }
        self.schedule.validate()?;
        self.action.validate()
    }

    pub fn occurrence(&self, now: i64) -> Option<Occurrence> {
        self.schedule.occurrence(&self.id, self.created_at, now)
    }

    /// Whether `delivery` is what the schedule gives at about `now` (a few minutes either way,
    /// for clocks that differ): how an agent checks that a signed job is run when it was meant
    /// to, and only once per occurrence.
    pub fn delivery_is_due(&self, delivery: &str, now: i64) -> bool {
        [now, now - 300, now + 300]
            .iter()
            .any(|t| self.occurrence(*t).is_some_and(|o| o.delivery == delivery))
    }
}

/// Cuts output to [`MAX_OUTPUT`] bytes: its start and its end, with a line saying what is left
/// out, on character boundaries.
pub fn bound_output(s: &str) -> String {
    if s.len() <= MAX_OUTPUT {
        return s.to_owned();
    }
    let head = floor(s, MAX_OUTPUT / 4);
    let mut tail_start = s.len() - (MAX_OUTPUT - MAX_OUTPUT / 4 - 64);
    while !s.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    format!(
        "{}\n[... {} bytes left out ...]\n{}",
        s.get(..head).unwrap_or_default(),
        tail_start - head,
        s.get(tail_start..).unwrap_or_default()
    )
}

fn floor(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(action: Action) -> JobSpec {
        JobSpec {
            id: "0123456789abcdef0123456789abcdef".into(),
            action,
            timeout_secs: 60,
            schedule: Schedule::default(),
            created_at: 1_000_000,
        }
    }

    /// Found by the job_spec fuzz target: `*/5 , * * *` (a day field that lists nothing) made
    /// every look at the schedule search to the year 5000, 19 s and more each.
    #[test]
    fn a_cron_expression_that_never_matches_is_refused_at_once() {
        for never in ["*/5 , * * *", "0 0 30 2 *", "0 0 31 4,6,9,11 *"] {
            let s = Schedule {
                every: Some(never.into()),
                ..Default::default()
            };
            let t = std::time::Instant::now();
            let e = s.validate().unwrap_err();
            assert!(
                e.contains("names no time that exists") || e.contains("bad cron expression"),
                "{never}: {e}"
            );
            assert_eq!(s.next_start(1_800_000_000, 1_800_000_000), None);
            assert!(s.occurrence("x", 1_800_000_000, 1_800_000_000).is_none());
            assert!(t.elapsed().as_millis() < 500, "{never}: {:?}", t.elapsed());
        }
        // rare but real: a leap day on a Monday (day and weekday both restricted)
        for rare in ["0 0 29 2 *", "0 0 29 2 1", "0 12 * * 1-5", "@yearly"] {
            let s = Schedule {
                every: Some(rare.into()),
                ..Default::default()
            };
            s.validate().unwrap_or_else(|e| panic!("{rare}: {e}"));
        }
    }

    #[test]
    fn a_creation_time_out_of_range_is_refused_and_never_overflows() {
        let mut s = spec(Action::Reboot);
        s.validate().unwrap();
        for bad in [i64::MIN, -1, 253_402_300_800, i64::MAX] {
            s.created_at = bad;
            let e = s.validate().unwrap_err();
            assert!(e.contains("bad creation time"), "{e}");
            // what a server or agent might still compute from it does not panic
            let _ = s.schedule.next_start(bad, 0);
        }
        s.schedule.every = Some("0 3 * * *".into());
        let _ = s.schedule.next_start(i64::MIN, i64::MIN);
    }

    #[test]
    fn package_names_follow_debian_policy() {
        for ok in [
            "hello",
            "libc6",
            "g++",
            "lib32z1-dev",
            "hello=1.0-1",
            "hello:amd64",
            "x2=1:2.3~rc1+b1",
        ] {
            check_package(ok).unwrap();
        }
        for bad in [
            "",
            "a",
            "-y",
            "--force-yes",
            "Hello",
            "hello world",
            "hello;rm",
            "hello=",
            "hello=abc",
            "hello:",
            "$(id)",
            "a`b`",
            "hello\n",
            "hello=1.0 x",
            "../x",
        ] {
            assert!(check_package(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sources_are_checked_and_trusted_yes_cannot_be_written() {
        let key = SourceKey::Armored(
            "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ\n-----END PGP PUBLIC KEY BLOCK-----\n"
                .into(),
        );
        let src = |uri: &str, suite: &str, comps: &[&str]| {
            Action::AptSourceAdd(AptSource {
                name: "test".into(),
                uri: uri.into(),
                suite: suite.into(),
                components: comps.iter().map(|c| c.to_string()).collect(),
                key: key.clone(),
            })
        };
        src(
            "http://deb.example/debian",
            "bookworm-security",
            &["main", "contrib"],
        )
        .validate()
        .unwrap();
        for (u, s, c) in [
            ("ftp://x/debian", "stable", &["main"][..]),
            ("file:///srv", "stable", &["main"]),
            ("http://x/ debian", "stable", &["main"]),
            ("http://x/debian\nTrusted: yes", "stable", &["main"]),
            ("[trusted=yes] http://x/", "stable", &["main"]),
            ("http://x/$(id)", "stable", &["main"]),
            ("http://x/", "stable [trusted=yes]", &["main"]),
            ("http://x/", "stable\nTrusted: yes", &["main"]),
            ("http://x/", "stable", &["main [trusted=yes]"]),
            ("http://x/", "stable", &[]),
            ("http://x/", "", &["main"]),
        ] {
            assert!(
                src(u, s, c).validate().is_err(),
                "{u:?} {s:?} {c:?} accepted"
            );
        }
        for bad in ["", "-x", "Test", "a/b", "a b", "../etc", ".hidden"] {
            assert!(check_source_name(bad).is_err(), "{bad:?}");
        }
        check_source_name("semithin-test.1").unwrap();
        assert!(SourceKey::Armored("not a key".into()).validate().is_err());
        assert!(SourceKey::from_file_bytes(b"\x01\x02garbage").is_err());
        assert!(SourceKey::from_file_bytes(&[0x99, 0, 1]).is_ok());
    }

    #[test]
    fn commands_are_argv_not_shell_text() {
        spec(Action::Command {
            argv: vec!["sh".into(), "-c".into(), "echo $HOME".into()],
        })
        .validate()
        .unwrap();
        assert!(spec(Action::Command { argv: vec![] }).validate().is_err());
        assert!(
            spec(Action::Command {
                argv: vec!["a\0b".into()]
            })
            .validate()
            .is_err()
        );
        let mut s = spec(Action::AptUpdate);
        s.timeout_secs = 0;
        assert!(s.validate().is_err());
        s.timeout_secs = 10;
        s.id = "xyz".into();
        assert!(s.validate().is_err());
    }

    #[test]
    fn signatures_cover_the_whole_spec() {
        let k = AdminKey::generate().unwrap();
        let other = AdminKey::generate().unwrap();
        let trusted = [parse_public_key(&k.public_hex()).unwrap()];
        let s = spec(Action::Command {
            argv: vec!["true".into()],
        });
        let sig = k.sign(&SpecJson::new(s.clone())).unwrap();
        verify(&SpecJson::new(s.clone()), &sig, &trusted).unwrap();
        let by_other = other.sign(&SpecJson::new(s.clone())).unwrap();
        let e = verify(&SpecJson::new(s.clone()), &by_other, &trusted).unwrap_err();
        assert!(e.contains("does not trust"), "{e}");
        for changed in [
            JobSpec {
                action: Action::Command {
                    argv: vec!["false".into()],
                },
                ..s.clone()
            },
            JobSpec {
                timeout_secs: 61,
                ..s.clone()
            },
            JobSpec {
                id: "ffffffffffffffffffffffffffffffff".into(),
                ..s.clone()
            },
            JobSpec {
                schedule: Schedule {
                    every: Some("* * * * *".into()),
                    ..Schedule::default()
                },
                ..s.clone()
            },
        ] {
            let e = verify(&SpecJson::new(changed), &sig, &trusted).unwrap_err();
            assert!(e.contains("does not verify"), "{e}");
        }
        let k2 = AdminKey::from_file_text(&k.file_text()).unwrap();
        assert_eq!(k2.public_hex(), k.public_hex());
    }

    #[test]
    fn delivery_ids() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(job_of_delivery(id).unwrap(), id);
        assert_eq!(job_of_delivery(&format!("{id}.1700000000")).unwrap(), id);
        for bad in [
            "",
            "x",
            &format!("{id}."),
            &format!("{id}.12a"),
            &format!("{id}/../x"),
        ] {
            assert!(job_of_delivery(bad).is_err(), "{bad:?}");
        }
    }

    /// 2026-11-22 00:00:00 UTC, a Sunday.
    const T0: i64 = 1_795_305_600;

    #[test]
    fn a_single_job_runs_from_its_start_until_its_window_ends() {
        let id = "0123456789abcdef0123456789abcdef";
        let now = Schedule::default();
        assert_eq!(
            now.occurrence(id, T0, T0),
            Some(Occurrence {
                delivery: id.into(),
                start: T0,
                end: None
            })
        );
        assert_eq!(now.occurrence(id, T0, T0 + 10 * 86_400).unwrap().start, T0);
        assert!(now.occurrence(id, T0, T0 - 1).is_none());
        assert!(!now.over(T0, T0 + 10 * 86_400));
        let at = Schedule {
            at: Some(T0 + 3600),
            window_secs: Some(600),
            every: None,
            tz: None,
        };
        assert!(at.occurrence(id, T0, T0).is_none());
        assert_eq!(at.next_start(T0, T0), Some(T0 + 3600));
        assert_eq!(
            at.occurrence(id, T0, T0 + 3600).unwrap().end,
            Some(T0 + 4200)
        );
        assert!(at.occurrence(id, T0, T0 + 4199).is_some());
        assert!(
            at.occurrence(id, T0, T0 + 4200).is_none(),
            "the window is over"
        );
        assert!(at.over(T0, T0 + 4200));
        assert_eq!(at.next_start(T0, T0 + 3600), None);
    }

    #[test]
    fn each_occurrence_of_an_every_job_has_its_own_delivery() {
        let id = "0123456789abcdef0123456789abcdef";
        // every day at 03:00, for 30 minutes
        let s = Schedule {
            every: Some("0 3 * * *".into()),
            window_secs: Some(1800),
            at: None,
            tz: None,
        };
        s.validate().unwrap();
        let created = T0 + 5 * 3600; // 05:00, after that day's occurrence
        assert!(
            s.occurrence(id, created, created).is_none(),
            "not before its first occurrence"
        );
        assert_eq!(s.next_start(created, created), Some(T0 + 86_400 + 3 * 3600));
        let day2 = T0 + 86_400 + 3 * 3600;
        let o = s.occurrence(id, created, day2 + 60).unwrap();
        assert_eq!(
            o,
            Occurrence {
                delivery: format!("{id}.{day2}"),
                start: day2,
                end: Some(day2 + 1800)
            }
        );
        assert!(
            s.occurrence(id, created, day2 + 1800).is_none(),
            "missed: the window is over"
        );
        let o3 = s.occurrence(id, created, day2 + 86_400).unwrap();
        assert_ne!(o3.delivery, o.delivery);
        assert!(!s.over(created, day2 + 10 * 86_400));
        // without a window, an occurrence is open until the next one
        let open = Schedule {
            window_secs: None,
            ..s.clone()
        };
        assert_eq!(
            open.occurrence(id, created, day2 + 86_399)
                .unwrap()
                .delivery,
            o.delivery
        );
        assert_eq!(
            open.occurrence(id, created, day2 + 86_400)
                .unwrap()
                .delivery,
            o3.delivery
        );
        // every minute: the latest minute
        let m = Schedule {
            every: Some("* * * * *".into()),
            ..Schedule::default()
        };
        assert_eq!(m.occurrence(id, T0, T0 + 90).unwrap().start, T0 + 60);
        // `at` delays the first occurrence
        let later = Schedule {
            at: Some(T0 + 86_400 * 3),
            ..s.clone()
        };
        assert!(later.occurrence(id, created, day2 + 60).is_none());
        for bad in ["* * * *", "61 * * * *", "0 0 3 * * *", "nonsense"] {
            let s = Schedule {
                every: Some(bad.into()),
                ..Schedule::default()
            };
            assert!(s.validate().is_err(), "{bad:?}");
            assert!(s.occurrence(id, T0, T0).is_none());
        }
    }

    #[test]
    fn cron_is_read_in_its_time_zone_and_takes_the_at_forms() {
        let id = "0123456789abcdef0123456789abcdef";
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap().as_second();
        // 03:00 in Madrid is 02:00 UTC in winter (CET) and 01:00 UTC in summer (CEST).
        let madrid = Schedule {
            every: Some("0 3 * * *".into()),
            tz: Some("Europe/Madrid".into()),
            ..Schedule::default()
        };
        madrid.validate().unwrap();
        let winter = at("2026-12-01T12:00:00Z");
        assert_eq!(
            madrid.next_start(winter, winter),
            Some(at("2026-12-02T02:00:00Z"))
        );
        let summer = at("2026-07-01T12:00:00Z");
        assert_eq!(
            madrid.next_start(summer, summer),
            Some(at("2026-07-02T01:00:00Z"))
        );
        // across the spring change (29 March 2026, 02:00 -> 03:00): still 03:00 local
        let before = at("2026-03-28T12:00:00Z");
        assert_eq!(
            madrid.next_start(before, before),
            Some(at("2026-03-29T01:00:00Z"))
        );
        let o = madrid
            .occurrence(id, winter, at("2026-12-02T02:00:30Z"))
            .unwrap();
        assert_eq!(o.start, at("2026-12-02T02:00:00Z"));
        // the same expression without a zone is UTC
        let utc = Schedule {
            tz: None,
            ..madrid.clone()
        };
        assert_eq!(
            utc.next_start(winter, winter),
            Some(at("2026-12-02T03:00:00Z"))
        );
        // @daily, @hourly, @weekly (Sunday midnight)
        for (e, want) in [
            ("@daily", "2026-12-02T00:00:00Z"),
            ("@hourly", "2026-12-01T13:00:00Z"),
            ("@weekly", "2026-12-06T00:00:00Z"),
        ] {
            let s = Schedule {
                every: Some(e.into()),
                ..Schedule::default()
            };
            s.validate().unwrap_or_else(|err| panic!("{e}: {err}"));
            assert_eq!(s.next_start(winter, winter), Some(at(want)), "{e}");
        }
        // a zone that does not exist, or one without `every`, is refused by name
        let bad = Schedule {
            tz: Some("Mars/Olympus".into()),
            ..madrid.clone()
        };
        let e = bad.validate().unwrap_err();
        assert!(e.contains("unknown time zone \"Mars/Olympus\""), "{e}");
        assert!(bad.occurrence(id, winter, winter + 86_400).is_none());
        let lonely = Schedule {
            tz: Some("Europe/Madrid".into()),
            ..Schedule::default()
        };
        assert!(lonely.validate().unwrap_err().contains("`every`"));
        // signatures of jobs without a zone are unchanged: the field is left out
        let json = serde_json::to_string(&utc).unwrap();
        assert!(!json.contains("tz"), "{json}");
    }

    #[test]
    fn an_agent_checks_the_occurrence_of_a_signed_job() {
        let mut s = spec(Action::AptUpdate);
        s.schedule.every = Some("0 * * * *".into());
        let hour = T0 + 7200;
        assert!(s.delivery_is_due(&format!("{}.{hour}", s.id), hour + 10));
        assert!(!s.delivery_is_due(&format!("{}.{}", s.id, hour - 3600), hour + 3600 + 400));
        assert!(
            !s.delivery_is_due(&s.id, hour + 10),
            "a recurring job is never delivered bare"
        );
        let once = spec(Action::AptUpdate);
        assert!(once.delivery_is_due(&once.id, once.created_at + 5));
        assert!(
            !once.delivery_is_due(&format!("{}.{}", once.id, once.created_at), once.created_at)
        );
    }

    #[test]
    fn output_is_bounded_at_both_ends() {
        let s = format!("{}{}", "a".repeat(100_000), "é".repeat(20_000));
        let b = bound_output(&s);
        assert!(b.len() <= MAX_OUTPUT + 100, "{}", b.len());
        assert!(b.starts_with("aaa") && b.ends_with("é"));
        assert!(b.contains("bytes left out"));
        assert_eq!(bound_output("short"), "short");
    }
}
