//! `semithin fleet check`: one line and an exit code for monitoring systems (the Nagios plugin
//! convention: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN), with performance data after `|`.
//! The verdict is a pure function of the machines the server lists ([`verdict`]).

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Result, bail};
use semithin_protocol::api::{FleetState, MachineInfo, MachineStatus};
use serde::Serialize;

use super::admin::ServerArgs;

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Only the machines matching this selector (a name, `key=value[,...]`, `*`).
    selector: Option<String>,
    /// WARNING from this many machines needing attention (failed, failing, tampered or
    /// offline): a count, or a percentage of the machines checked (`5%`).
    #[arg(long, short, default_value = "1", value_parser = threshold)]
    warning: Threshold,
    /// CRITICAL from this many machines needing attention: a count or a percentage.
    #[arg(long, short, default_value = "10%", value_parser = threshold)]
    critical: Threshold,
    /// An accepted machine with a channel that has not checked in for this long is offline
    /// (`90s`, `30m`, `2h`, or seconds).
    #[arg(long, default_value = "1h", value_parser = super::duration)]
    offline_after: u64,
    /// Print the verdict as JSON (the exit code is the same).
    #[arg(long)]
    json: bool,
}

/// A number of machines, or a share of those checked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    Count(u64),
    Percent(f64),
}

fn threshold(s: &str) -> std::result::Result<Threshold, String> {
    let bad = || format!("{s:?} is neither a count of machines (3) nor a percentage (5%)");
    match s.strip_suffix('%') {
        Some(p) => {
            let v: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("{s:?}: a percentage is between 0% and 100%"));
            }
            Ok(Threshold::Percent(v))
        }
        None => s.trim().parse().map(Threshold::Count).map_err(|_| bad()),
    }
}

impl Threshold {
    fn reached(self, n: u64, of: u64) -> bool {
        match self {
            Threshold::Count(c) => n >= c.max(1),
            Threshold::Percent(p) => n > 0 && (n as f64) * 100.0 >= p * of as f64,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl Status {
    fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Warning => 1,
            Status::Critical => 2,
            Status::Unknown => 3,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Verdict {
    pub status: Status,
    pub machines: u64,
    /// Machines needing attention: failed, failing, tampered, offline.
    pub attention: u64,
    /// Machines by state, and `offline`.
    pub counts: BTreeMap<String, u64>,
    /// The machines needing attention, by what is wrong.
    pub problems: BTreeMap<String, Vec<String>>,
    pub line: String,
}

/// What a monitoring system is told about these machines at `now`.
pub fn verdict(
    ms: &[MachineInfo],
    now: i64,
    warning: Threshold,
    critical: Threshold,
    offline_after: u64,
) -> Verdict {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut problems: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in [
        "updated", "updating", "failed", "failing", "tampered", "offline",
    ] {
        counts.insert(key.into(), 0);
    }
    for m in ms {
        *counts.entry(m.state.as_str().into()).or_default() += 1;
        let problem = match m.state {
            FleetState::Failed | FleetState::Failing | FleetState::Tampered => {
                Some(m.state.as_str())
            }
            _ => None,
        };
        let offline = m.status == MachineStatus::Accepted
            && m.channel.is_some()
            && m.last_seen
                .is_some_and(|t| now.saturating_sub(t) > offline_after as i64);
        if offline {
            *counts.entry("offline".into()).or_default() += 1;
        }
        if let Some(p) = problem.or(offline.then_some("offline")) {
            problems.entry(p.into()).or_default().push(m.name.clone());
        }
    }
    let machines = ms.len() as u64;
    let attention: u64 = problems.values().map(|v| v.len() as u64).sum();
    let status = if critical.reached(attention, machines) {
        Status::Critical
    } else if warning.reached(attention, machines) {
        Status::Warning
    } else {
        Status::Ok
    };
    let what = if attention == 0 {
        let updated = counts["updated"];
        format!("{machines} machines, {updated} updated")
    } else {
        let parts: Vec<String> = problems
            .iter()
            .map(|(p, names)| {
                let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
                let more = names.len().saturating_sub(shown.len());
                format!(
                    "{} {p} ({}{})",
                    names.len(),
                    shown.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                )
            })
            .collect();
        format!(
            "{attention} of {machines} machines need attention: {}",
            parts.join(", ")
        )
    };
    let perf: Vec<String> = std::iter::once(format!("machines={machines}"))
        .chain(counts.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
    let line = format!(
        "SEMITHIN {} - {what} | {}",
        serde_json::to_value(status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        perf.join(" ")
    );
    Verdict {
        status,
        machines,
        attention,
        counts,
        problems,
        line,
    }
}

pub fn run(server: &ServerArgs, a: CheckArgs) -> Result<ExitCode> {
    let now = jiff::Timestamp::now().as_second();
    let listed = (|| -> Result<Vec<MachineInfo>> {
        let c = server.client()?;
        let path = match &a.selector {
            Some(s) => {
                if semithin_protocol::selector::Selector::parse(s).is_err() {
                    bail!("{s:?} is not a selector");
                }
                format!(
                    "/api/v1/admin/machines?selector={}",
                    super::fleet::urlencode(s)
                )
            }
            None => "/api/v1/admin/machines".into(),
        };
        c.get("listing machines", &path)
    })();
    let ms = match listed {
        Ok(ms) => ms,
        Err(e) => {
            // A monitoring system shows this line: the cause, on one line.
            let why = format!("{e:#}").replace('\n', " ");
            if a.json {
                outln!(
                    "{}",
                    serde_json::json!({"status": "UNKNOWN", "line": format!("SEMITHIN UNKNOWN - {why}")})
                );
            } else {
                outln!("SEMITHIN UNKNOWN - {why}");
            }
            return Ok(ExitCode::from(Status::Unknown.code()));
        }
    };
    let v = verdict(&ms, now, a.warning, a.critical, a.offline_after);
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        outln!("{}", v.line);
    }
    Ok(ExitCode::from(v.status.code()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(name: &str, state: FleetState, seen: Option<i64>) -> MachineInfo {
        let mut m: MachineInfo = serde_json::from_value(serde_json::json!({
            "id": "00".repeat(32),
            "name": name,
            "labels": {},
            "status": "accepted",
            "channel": "lab/stable",
            "target": null,
            "updated": false,
            "report": semithin_protocol::api::Report::default(),
            "enrolled_at": 0,
            "last_seen": seen,
            "state": "updated",
        }))
        .expect("a machine");
        m.state = state;
        m
    }

    #[test]
    fn thresholds_count_or_share_and_the_worst_wins() {
        assert_eq!(threshold("3"), Ok(Threshold::Count(3)));
        assert_eq!(threshold("5%"), Ok(Threshold::Percent(5.0)));
        assert!(threshold("x").unwrap_err().contains("neither"));
        assert!(threshold("150%").unwrap_err().contains("between"));

        let now = 10_000;
        let mut ms: Vec<MachineInfo> = (0..20)
            .map(|i| machine(&format!("m{i}"), FleetState::Updated, Some(now - 10)))
            .collect();
        let v = verdict(
            &ms,
            now,
            Threshold::Count(1),
            Threshold::Percent(10.0),
            3600,
        );
        assert_eq!(v.status, Status::Ok);
        assert!(
            v.line
                .starts_with("SEMITHIN OK - 20 machines, 20 updated |"),
            "{}",
            v.line
        );
        assert!(v.line.contains("machines=20") && v.line.contains("updated=20"));

        ms[3].state = FleetState::Failed;
        let v = verdict(
            &ms,
            now,
            Threshold::Count(1),
            Threshold::Percent(10.0),
            3600,
        );
        assert_eq!(v.status, Status::Warning);
        assert!(
            v.line
                .contains("1 of 20 machines need attention: 1 failed (m3)"),
            "{}",
            v.line
        );

        // offline: seen two hours ago; never seen is not offline (it is never_seen)
        ms[5].last_seen = Some(now - 7200);
        ms[6].last_seen = None;
        let v = verdict(
            &ms,
            now,
            Threshold::Count(1),
            Threshold::Percent(10.0),
            3600,
        );
        assert_eq!(v.status, Status::Critical, "2 of 20 is 10%");
        assert_eq!(v.problems["offline"], vec!["m5".to_string()]);
        assert_eq!(v.counts["offline"], 1);
        assert_eq!(v.attention, 2);

        // a count threshold higher than the problems
        let v = verdict(&ms, now, Threshold::Count(3), Threshold::Count(5), 3600);
        assert_eq!(v.status, Status::Ok);
        // an empty fleet is OK
        let v = verdict(
            &[],
            now,
            Threshold::Count(1),
            Threshold::Percent(10.0),
            3600,
        );
        assert_eq!(v.status, Status::Ok);
    }
}
