//! `semithin job`: commands for machines. Typed jobs (apt, reboot) and free-form commands signed
//! by an admin key; each runs on every machine the selector matches at most once, now, at a
//! time, or at every occurrence of a cron expression; `status` shows every machine's result.
//! Also `semithin fleet outdated`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use semithin_protocol::inventory::Outdated;
use semithin_protocol::job::{
    self, Action, AdminKey, AptSource, JobInfo, JobRequest, JobSpec, JobStatus, Schedule,
    SourceKey, SpecJson,
};
use semithin_protocol::selector::Selector;

use super::admin::{AdminClient, ServerArgs};
use super::fleet::urlencode;
use super::safe::{safe, safe_or_dash};
use super::{print_json, time};

#[derive(Subcommand)]
pub enum JobCmd {
    /// Run a program on machines (no shell: the words after `--` are its argv), chrooted into
    /// the agent's sysroot when it has one. Machines run it only when their agent allows
    /// commands and trusts the key that signed it.
    Run {
        /// The machines: a name, `key=value[,key=value...]` or `*`.
        selector: String,
        /// The admin's job-signing key (made by `semithin job keygen`).
        #[arg(long, value_name = "FILE")]
        sign_key: PathBuf,
        #[command(flatten)]
        when: When,
        /// The program and its arguments, after `--` (run as argv, no shell).
        #[arg(last = true, required = true, value_name = "COMMAND")]
        argv: Vec<String>,
    },
    /// apt on package-based machines: install, remove, update, upgrade, sources.
    #[command(subcommand)]
    Apt(AptCmd),
    /// Reboot machines.
    Reboot {
        /// The machines: a name, `key=value[,key=value...]` or `*`.
        selector: String,
        #[command(flatten)]
        when: When,
    },
    /// Machines send their writable layer (the /etc overlay and their `capture_paths`) to the
    /// server, for `semithin overlay bake`.
    Capture {
        /// The machines: a name, `key=value[,key=value...]` or `*`.
        selector: String,
        /// An absolute path captured too (repeatable; `/var/lib/foo`).
        #[arg(long = "path", value_name = "PATH")]
        paths: Vec<String>,
        #[command(flatten)]
        when: When,
    },
    /// Every machine's result of a job.
    Status {
        /// The job's id (as the job's command printed it).
        id: String,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Jobs, newest first.
    List {
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: no machine is given it from now on, and machines running it stop it.
    Cancel {
        /// The job's id.
        id: String,
    },
    /// Make a job-signing key in FILE (mode 0600) and print its public key, for the agents'
    /// `admin_keys`.
    Keygen {
        /// Where the key is written (it must not exist yet).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum AptCmd {
    /// apt-get install PKG... (Debian package names, optionally `:ARCH` and `=VERSION`).
    Install {
        /// The machines: a name, `key=value[,key=value...]` or `*`.
        selector: String,
        /// Debian package names (`PKG`, `PKG:ARCH`, `PKG=VERSION`).
        #[arg(required = true)]
        packages: Vec<String>,
        #[command(flatten)]
        when: When,
    },
    /// apt-get remove PKG...
    Remove {
        /// The machines: a name, `key=value[,key=value...]` or `*`.
        selector: String,
        /// Debian package names (`PKG`, `PKG:ARCH`, `PKG=VERSION`).
        #[arg(required = true)]
        packages: Vec<String>,
        #[command(flatten)]
        when: When,
    },
    /// apt-get update
    Update {
        /// The machines: a name, `key=value[,key=value...]` or `*`.
        selector: String,
        #[command(flatten)]
        when: When,
    },
    /// apt-get upgrade (or dist-upgrade).
    Upgrade {
        /// The machines: a name, `key=value[,key=value...]` or `*`.
        selector: String,
        /// dist-upgrade: also install and remove packages to upgrade.
        #[arg(long)]
        dist: bool,
        /// Only the packages whose new version comes from a -security suite.
        #[arg(long)]
        security_only: bool,
        #[command(flatten)]
        when: When,
    },
    /// Apt sources (deb822 files in /etc/apt/sources.list.d).
    #[command(subcommand)]
    Source(SourceCmd),
}

#[derive(Subcommand)]
pub enum SourceCmd {
    /// Write /etc/apt/sources.list.d/NAME.sources, signed by the key in KEYFILE.
    Add {
        /// The machines: a name, `key=value[,key=value...]` or `*`.
        selector: String,
        /// The source's name: the file is /etc/apt/sources.list.d/NAME.sources.
        name: String,
        /// The repository's URI (`http://deb.example/debian`).
        #[arg(long)]
        uri: String,
        /// The suite (`bookworm`, `bookworm-security`).
        #[arg(long)]
        suite: String,
        /// Components, separated by spaces or commas (`main contrib`).
        #[arg(long, required = true, num_args = 1..)]
        components: Vec<String>,
        /// The repository's OpenPGP public key (armored or binary); copied to
        /// /etc/apt/keyrings/NAME.asc (or .gpg) on the machines.
        #[arg(long, value_name = "KEYFILE")]
        signed_by: PathBuf,
        #[command(flatten)]
        when: When,
    },
    /// Remove NAME.sources and its key (one-line .list files are left intact).
    Remove {
        /// The machines: a name, `key=value[,key=value...]` or `*`.
        selector: String,
        /// The source's name (as given to `source add`).
        name: String,
        #[command(flatten)]
        when: When,
    },
}

/// When and how long: shared by every job.
#[derive(clap::Args, Clone, Default)]
pub struct When {
    /// Not before this time: RFC 3339 (`2026-12-01T03:00:00Z`), `@UNIX_SECONDS`, or `+30m`
    /// from now; a time in the past is refused, but with --every (the occurrences from then on,
    /// the one open now included; missed ones are not made up).
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// At every occurrence of a cron expression: 5 fields (minute hour day month weekday, e.g.
    /// `0 3 * * *`) or @hourly, @daily, @weekly, @monthly, @yearly; in --tz.
    #[arg(long, value_name = "CRON")]
    every: Option<String>,
    /// The time zone --every is read in, an IANA name such as Europe/Madrid (daylight saving
    /// time included) [default: UTC].
    #[arg(long, value_name = "ZONE", requires = "every")]
    tz: Option<String>,
    /// Machines that check in later than this after a start do not run it (`90s`, `30m`, `2h`).
    #[arg(long, value_name = "DURATION", value_parser = super::duration)]
    window: Option<u64>,
    /// The longest the job may run on a machine [default: 1h].
    #[arg(long, value_name = "DURATION", value_parser = super::duration)]
    timeout: Option<u64>,
    /// Wait until every machine has a result, print them; exit 1 unless all succeeded.
    #[arg(long)]
    wait: bool,
    /// Print the job (or with --wait, every machine's result) as JSON.
    #[arg(long)]
    json: bool,
}

/// RFC 3339, `@UNIX`, or `+DURATION` from now.
pub fn parse_time(s: &str, now: i64) -> Result<i64> {
    if let Some(u) = s.strip_prefix('@') {
        return u
            .parse()
            .with_context(|| format!("bad time {s:?}: @ and Unix seconds"));
    }
    if let Some(d) = s.strip_prefix('+') {
        let secs = semithin_protocol::duration::parse(d)?;
        return Ok(now.saturating_add(secs as i64));
    }
    s.parse::<jiff::Timestamp>()
        .map(|t| t.as_second())
        .with_context(|| {
            format!("bad time {s:?}: RFC 3339 (2026-12-01T03:00:00Z), @UNIX_SECONDS or +30m")
        })
}

fn spec(action: Action, when: &When) -> Result<JobSpec> {
    let now = semithin_server::now();
    let at = when.at.as_deref().map(|t| parse_time(t, now)).transpose()?;
    if let (Some(at), Some(text)) = (at, &when.at)
        && at < now
        && when.every.is_none()
    {
        bail!(
            "--at {text} is in the past ({}; it is {} now): give a later time, `+10m`, or \
             leave --at out to start now",
            time(at),
            time(now)
        );
    }
    let schedule = Schedule {
        at,
        every: when.every.clone(),
        tz: when.tz.clone(),
        window_secs: when.window,
    };
    let spec = JobSpec {
        id: job::new_id().map_err(anyhow::Error::msg)?,
        action,
        timeout_secs: when.timeout.unwrap_or(job::DEFAULT_TIMEOUT_SECS),
        schedule,
        created_at: now,
    };
    spec.validate().map_err(anyhow::Error::msg)?;
    if when.wait && spec.schedule.recurring() {
        bail!("--wait is for jobs that run once, not with --every");
    }
    Ok(spec)
}

fn submit(
    c: &AdminClient,
    selector: String,
    action: Action,
    when: When,
    key: Option<&AdminKey>,
) -> Result<ExitCode> {
    Selector::parse(&selector)?;
    let spec = SpecJson::new(spec(action, &when)?);
    let signature = key
        .map(|k| k.sign(&spec))
        .transpose()
        .map_err(|e| anyhow::anyhow!("signing the job: {e}"))?;
    let timeout = spec.timeout_secs;
    let info: JobInfo = c.post(
        "making the job",
        "/api/v1/admin/jobs",
        &JobRequest {
            selector,
            spec,
            signature,
        },
    )?;
    if !when.wait {
        if when.json {
            print_json(&info)?;
        } else {
            outln!("{}", info.id);
            note!(
                "job {}: {} on {} machine(s): {}{}",
                info.id,
                info.spec.action.describe(),
                info.machines.len(),
                info.machines.join(", "),
                info.next_start
                    .map(|t| format!("; starts {}", time(t)))
                    .unwrap_or_default()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let window = info.spec.schedule.window_secs.unwrap_or(0);
    let start_in = (info.next_start.unwrap_or(0) - semithin_server::now()).max(0) as u64;
    let limit = Duration::from_secs(start_in + timeout + window + 120);
    let begun = Instant::now();
    let status = loop {
        let s: JobStatus = c.get(
            "reading the job",
            &format!("/api/v1/admin/jobs/{}", info.id),
        )?;
        let open = s
            .runs
            .iter()
            .any(|r| matches!(r.state.as_str(), "pending" | "delivered" | "running"));
        if !open {
            break s;
        }
        if begun.elapsed() > limit {
            print_status(&s, when.json)?;
            bail!(
                "not every machine has a result after {} s (see `semithin job status {}`)",
                limit.as_secs(),
                info.id
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    print_status(&status, when.json)?;
    Ok(if status.runs.iter().all(|r| r.state == "succeeded") {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn components(c: &[String]) -> Vec<String> {
    c.iter()
        .flat_map(|s| s.split([' ', ',']))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn read_key(path: &PathBuf) -> Result<AdminKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the job-signing key {}", path.display()))?;
    AdminKey::from_file_text(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub fn run(server: &ServerArgs, cmd: JobCmd) -> Result<ExitCode> {
    if let JobCmd::Keygen { file } = &cmd {
        return keygen(file);
    }
    let c = server.client()?;
    match cmd {
        JobCmd::Keygen { .. } => unreachable!("answered above"),
        JobCmd::Run {
            selector,
            sign_key,
            when,
            argv,
        } => {
            let key = read_key(&sign_key)?;
            submit(&c, selector, Action::Command { argv }, when, Some(&key))
        }
        JobCmd::Reboot { selector, when } => submit(&c, selector, Action::Reboot, when, None),
        JobCmd::Capture {
            selector,
            paths,
            when,
        } => submit(&c, selector, Action::Capture { paths }, when, None),
        JobCmd::Apt(a) => {
            let (selector, action, when) = match a {
                AptCmd::Install {
                    selector,
                    packages,
                    when,
                } => (selector, Action::AptInstall { packages }, when),
                AptCmd::Remove {
                    selector,
                    packages,
                    when,
                } => (selector, Action::AptRemove { packages }, when),
                AptCmd::Update { selector, when } => (selector, Action::AptUpdate, when),
                AptCmd::Upgrade {
                    selector,
                    dist,
                    security_only,
                    when,
                } => (
                    selector,
                    Action::AptUpgrade {
                        dist,
                        security_only,
                    },
                    when,
                ),
                AptCmd::Source(SourceCmd::Add {
                    selector,
                    name,
                    uri,
                    suite,
                    components: comps,
                    signed_by,
                    when,
                }) => {
                    let bytes = std::fs::read(&signed_by)
                        .with_context(|| format!("reading the key {}", signed_by.display()))?;
                    let key = SourceKey::from_file_bytes(&bytes)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", signed_by.display()))?;
                    let src = AptSource {
                        name,
                        uri,
                        suite,
                        components: components(&comps),
                        key,
                    };
                    (selector, Action::AptSourceAdd(src), when)
                }
                AptCmd::Source(SourceCmd::Remove {
                    selector,
                    name,
                    when,
                }) => (selector, Action::AptSourceRemove { name }, when),
            };
            submit(&c, selector, action, when, None)
        }
        JobCmd::Status { id, json } => {
            let s: JobStatus = c.get(
                "reading the job",
                &format!("/api/v1/admin/jobs/{}", urlencode(&id)),
            )?;
            print_status(&s, json)?;
            Ok(ExitCode::SUCCESS)
        }
        JobCmd::List { json } => {
            let js: Vec<JobInfo> = c.get("listing jobs", "/api/v1/admin/jobs")?;
            if json {
                print_json(&js)?;
            } else {
                outln!(
                    "{:<32} {:<24} {:<16} {:<30} WHAT",
                    "ID",
                    "CREATED",
                    "SELECTOR",
                    "STATES"
                );
                for j in js {
                    outln!(
                        "{:<32} {:<24} {:<16} {:<30} {}",
                        j.id,
                        time(j.spec.created_at),
                        safe(&j.selector),
                        states_text(&j),
                        j.spec.action.describe()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCmd::Cancel { id } => {
            let j: JobInfo = c.post(
                "cancelling the job",
                &format!("/api/v1/admin/jobs/{}/cancel", urlencode(&id)),
                &serde_json::json!({}),
            )?;
            outln!("job {} cancelled ({})", j.id, states_text(&j));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn states_text(j: &JobInfo) -> String {
    let s: Vec<String> = j.states.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if s.is_empty() {
        "-".into()
    } else {
        s.join(",")
    }
}

fn print_status(s: &JobStatus, json: bool) -> Result<()> {
    if json {
        return print_json(s);
    }
    let j = &s.job;
    outln!("job:       {}", j.id);
    outln!("what:      {}", j.spec.action.describe());
    outln!(
        "selector:  {} ({} machine(s))",
        j.selector,
        j.machines.len()
    );
    outln!("created:   {}", time(j.spec.created_at));
    if let Some(k) = &j.signed_by {
        outln!("signed by: {k}");
    }
    if let Some(e) = &j.spec.schedule.every {
        outln!(
            "every:     {e} ({})",
            j.spec.schedule.tz.as_deref().unwrap_or("UTC")
        );
    }
    if let Some(t) = j.next_start {
        outln!("next:      {}", time(t));
    }
    if let Some(t) = j.cancelled_at {
        outln!("cancelled: {}", time(t));
    }
    outln!();
    outln!(
        "{:<20} {:<12} {:<6} {:<10} DELIVERY",
        "MACHINE",
        "STATE",
        "EXIT",
        "DURATION"
    );
    for r in &s.runs {
        outln!(
            "{:<20} {:<12} {:<6} {:<10} {}",
            safe(&r.machine),
            safe(&r.state),
            r.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            r.duration_ms
                .map(|d| format!("{:.1} s", d as f64 / 1000.0))
                .unwrap_or_else(|| "-".into()),
            safe_or_dash(r.delivery.as_ref().map(AsRef::as_ref))
        );
        if let Some(o) = r.output.as_deref().filter(|o| !o.trim().is_empty()) {
            for line in o.trim_end().lines() {
                outln!("    | {}", safe(line));
            }
        }
    }
    Ok(())
}

fn keygen(file: &PathBuf) -> Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = AdminKey::generate().map_err(anyhow::Error::msg)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("creating {} (it must not exist yet)", file.display()))?;
    f.write_all(key.file_text().as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", file.display()))?;
    outln!("{}", key.public_hex());
    note!(
        "job-signing key written to {}; give the line above to the agents (`admin_keys` or \
         --admin-key) and keep the file secret",
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `semithin fleet outdated [SELECTOR]`: machines with pending updates.
pub fn outdated(
    c: &AdminClient,
    selector: Option<String>,
    security: bool,
    json: bool,
) -> Result<()> {
    let path = match &selector {
        Some(s) => {
            Selector::parse(s)?;
            format!("/api/v1/admin/outdated?selector={}", urlencode(s))
        }
        None => "/api/v1/admin/outdated".into(),
    };
    let mut ms: Vec<Outdated> = c.get("listing outdated machines", &path)?;
    if security {
        ms.retain(|m| m.security > 0);
        for m in &mut ms {
            m.packages.retain(|p| p.security);
        }
    }
    if json {
        return print_json(&ms);
    }
    if ms.is_empty() {
        outln!(
            "no machine has pending {}updates",
            if security { "security " } else { "" }
        );
        return Ok(());
    }
    outln!(
        "{:<20} {:<9} {:<9} {:<24} PACKAGES",
        "MACHINE",
        "UPDATES",
        "SECURITY",
        "READ"
    );
    for m in ms {
        let names: Vec<String> = m
            .packages
            .iter()
            .map(|p| format!("{}{}", safe(&p.name), if p.security { "*" } else { "" }))
            .collect();
        outln!(
            "{:<20} {:<9} {:<9} {:<24} {}",
            safe(&m.machine),
            m.upgradable,
            m.security,
            time(m.collected_at),
            names.join(" ")
        );
    }
    outln!("(* security update)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("@1700000000", 0).unwrap(), 1_700_000_000);
        assert_eq!(parse_time("+10m", 100).unwrap(), 700);
        assert_eq!(parse_time("+1h 30m", 0).unwrap(), 5400);
        assert_eq!(
            parse_time("2026-11-22T00:00:00Z", 0).unwrap(),
            1_795_305_600
        );
        assert!(parse_time("tomorrow", 0).is_err());
        assert!(parse_time("+soon", 0).is_err());
    }
}
