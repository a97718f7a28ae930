//! `semithin fleet`: the machines, as the server knows them.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;
use semithin_protocol::api::{
    Affected, AssignRequest, BootCheck, FleetState, Integrity, LabelRequest, MachineInfo, PathList,
    SelectorRequest, TokenInfo, TokenRequest,
};
use semithin_protocol::ids::ReleaseId;
use semithin_protocol::selector::{Selector, parse_label};

use super::admin::ServerArgs;
use super::safe::{safe, safe_or_dash};
use super::{human, print_json, time};

#[derive(Subcommand)]
pub enum FleetCmd {
    /// List machines: name, status, state (updated, held by a rollout, updating, failed,
    /// failing, tampered, ...), channel, current / target release, last seen, labels; then why,
    /// for every machine whose state has a reason, and each tampered machine with its paths.
    List {
        /// Only the machines matching this selector (`site=school-12,class=lab`, a name, `*`).
        selector: Option<String>,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Everything about one machine, with its recent events.
    Show {
        /// The machine's name.
        name: String,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Set labels (`k=v`) or remove them (`k-`).
    Label {
        /// The machine's name.
        name: String,
        /// `key=value` sets a label, `key-` removes one.
        #[arg(required = true, value_name = "K=V|K-")]
        labels: Vec<String>,
    },
    /// Accept pending machines (a name or a selector).
    Accept {
        /// A machine's name, `key=value[,key=value...]` or `*`.
        selector: String,
    },
    /// Refuse machines: every request of theirs is refused from now on.
    Reject {
        /// A machine's name, `key=value[,key=value...]` or `*`.
        selector: String,
    },
    /// Make machines follow a channel (they update to its published release); the channel
    /// must have been published.
    Assign {
        /// The machines: a name, `key=value[,key=value...]` or `*`.
        selector: String,
        /// A published channel, e.g. `lab/stable`.
        channel: String,
        /// Assign a channel nothing is published on yet: its machines wait for its first
        /// release (without it, such a channel is refused as a probable misspelling).
        #[arg(long)]
        unpublished: bool,
    },
    /// Remove machines from the fleet: they are forgotten and their keys open nothing from now
    /// on (a machine comes back only by enrolling again, with a token). Asks first, unless
    /// --yes.
    Remove {
        /// The machines: a name, `key=value[,key=value...]` or `*`.
        selector: String,
        /// Remove without asking (needed when there is no terminal to ask on).
        #[arg(long, short)]
        yes: bool,
    },
    /// Enrollment tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// For monitoring systems (Nagios, Icinga, a cron job): one line with performance data,
    /// exit 0 OK, 1 WARNING, 2 CRITICAL (machines failed, failing, tampered or offline, over
    /// the thresholds), 3 UNKNOWN (the server cannot be asked).
    Check(super::fleet_check::CheckArgs),
    /// Place machines under relays (`--relay URL`, tried in order before their configured
    /// servers; `--direct` drops it) and/or on another channel, without reinstalling them.
    Move(super::fleet_tree::MoveArgs),
    /// The relays, level by level, with the machines under each: counts, states, releases and
    /// when traffic last came through (from the relay paths of the machines' check-ins).
    Tree(super::fleet_tree::TreeArgs),
    /// What a machine's configuration templates render to, with its variables and facts, from
    /// the release it runs: a dry run on the server, nothing reaches the machine.
    Render {
        /// The machine's name.
        machine: String,
        /// Only the template rendering this path (`/etc/motd`).
        path: Option<String>,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Machines with pending package updates (from the inventory their agents report).
    Outdated {
        /// Only the machines matching this selector (a name, `key=value[,...]`, `*`).
        selector: Option<String>,
        /// Only security updates.
        #[arg(long)]
        security: bool,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Make an enrollment token; its secret is shown once.
    Create {
        /// Machines enrolling with it are accepted at once (for factory images).
        #[arg(long)]
        preauthorized: bool,
        /// Labels given to machines that enroll with it (repeatable `k=v`).
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// How many machines may use it.
        #[arg(long)]
        uses: Option<u32>,
        /// How long it can be used (`1h`, `7d`, `3600`) [default: for ever].
        #[arg(long, value_name = "DURATION", value_parser = super::duration)]
        expires_in: Option<u64>,
        /// The channel machines that enroll with it follow at once (a published one; for disks
        /// made by `image disk CHANNEL`) [default: none until `fleet assign`].
        #[arg(long)]
        channel: Option<String>,
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// List tokens (without their secrets).
    List {
        /// Print the result as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token (by the id `token list` shows): it enrolls no machine from now on; the
    /// machines it enrolled stay.
    Revoke {
        /// The token's id (not its secret).
        id: String,
    },
}

fn short(s: &Option<ReleaseId>) -> String {
    s.map(|s| s.short()).unwrap_or_else(|| "-".into())
}

fn release_or_dash(s: &Option<ReleaseId>) -> String {
    s.map(|s| s.to_string()).unwrap_or_else(|| "-".into())
}

/// Names a server sent, each shown safely, joined by `, `.
fn names_text(names: &[String]) -> String {
    names
        .iter()
        .map(|n| safe(n).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn labels_text(l: &BTreeMap<String, String>) -> String {
    if l.is_empty() {
        return "-".into();
    }
    l.iter()
        .map(|(k, v)| format!("{}={}", safe(k), safe(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// The machine's state in a few words: the server's `state` (with the phase of an update or a
/// failure).
fn state_text(m: &MachineInfo) -> String {
    match m.state {
        FleetState::Unknown => legacy_state_text(m),
        FleetState::Updating => format!("updating ({})", m.report.phase.as_str()),
        FleetState::Failing => match &m.report.failing {
            Some(f) => format!("failing ({})", f.phase.as_str()),
            None => "failing".into(),
        },
        FleetState::NeverSeen => "never seen".into(),
        s => s.as_str().into(),
    }
}

/// What an older server that does not say `state` is taken to mean.
fn legacy_state_text(m: &MachineInfo) -> String {
    use semithin_protocol::api::{Health, MachineStatus};
    match m.status {
        MachineStatus::Pending => return "pending".into(),
        MachineStatus::Rejected => return "rejected".into(),
        MachineStatus::Accepted => {}
    }
    if tampered(m).is_some() {
        return "tampered".into();
    }
    if m.updated {
        return "updated".into();
    }
    if m.report.failed_release.is_some() && m.report.failed_release == m.target {
        return "failed".into();
    }
    match (&m.target, m.report.health) {
        (None, _) => "unassigned".into(),
        (Some(_), Health::Checking) => "checking".into(),
        (Some(_), _) if m.last_seen.is_none() => "never seen".into(),
        (Some(_), _) => format!("updating ({:?})", m.report.phase).to_lowercase(),
    }
}

/// What the machine's last verification found still different from its running release.
fn tampered(m: &MachineInfo) -> Option<&Integrity> {
    m.report
        .integrity
        .as_ref()
        .filter(|i| i.is_tampered() && Some(i.release) == m.report.current)
}

/// Up to `n` paths of a list, with how many more there are.
fn paths_text(l: &PathList, n: usize) -> String {
    let mut s = l
        .paths
        .iter()
        .take(n)
        .map(|p| safe(p).to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let more = l.count.saturating_sub(l.paths.len().min(n) as u64);
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

/// One line on a verification: when, and what it found.
pub(crate) fn integrity_text(i: &Integrity) -> String {
    let mut parts = Vec::new();
    if i.is_tampered() {
        parts.push(format!(
            "TAMPERED, {} path(s) differ from the release: {}",
            i.tampered.count,
            paths_text(&i.tampered, 5)
        ));
    } else {
        parts.push("matches the release".to_owned());
    }
    if !i.repaired.is_empty() {
        parts.push(format!(
            "{} put back: {}",
            i.repaired.count,
            paths_text(&i.repaired, 5)
        ));
    }
    if !i.etc_drift.is_empty() {
        parts.push(format!(
            "{} local change(s) in /etc: {}",
            i.etc_drift.count,
            paths_text(&i.etc_drift, 5)
        ));
    }
    let when = match (i.at_boot, i.boot_check) {
        (true, Some(BootCheck::Quick)) => "at boot, quick check: unchanged since verified, ",
        (true, _) => "at boot, ",
        (false, _) => "",
    };
    format!("{} ({when}{})", parts.join("; "), ago(Some(i.checked_at)))
}

pub(crate) fn ago(t: Option<i64>) -> String {
    let Some(t) = t else { return "never".into() };
    let now = semithin_server::now();
    let d = (now - t).max(0);
    match d {
        0..60 => format!("{d}s ago"),
        60..3600 => format!("{}m ago", d / 60),
        3600..86400 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

/// Why machines are held, failed or failing, one line per reason with the machines it
/// concerns.
fn reasons(ms: &[MachineInfo]) -> Vec<String> {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for m in ms {
        let Some(why) = &m.state_reason else { continue };
        let since = match (&m.state, &m.report.failing) {
            (FleetState::Failing, Some(f)) => format!(" (since {})", ago(Some(f.since))),
            _ => String::new(),
        };
        // one line each: a health check's output may have several
        let why = why
            .lines()
            .map(|l| safe(l.trim()).to_string())
            .collect::<Vec<_>>()
            .join(" / ");
        let key = format!("{}{since}: {why}", state_text(m));
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, names)) => names.push(safe(&m.name).to_string()),
            None => groups.push((key, vec![safe(&m.name).to_string()])),
        }
    }
    groups
        .into_iter()
        .map(|(key, names)| {
            let more = names.len().saturating_sub(10);
            let mut list = names
                .get(..names.len().min(10))
                .unwrap_or_default()
                .join(", ");
            if more > 0 {
                list.push_str(&format!(" and {more} more"));
            }
            format!("{list}: {key}")
        })
        .collect()
}

pub fn print_table(ms: &[MachineInfo]) -> Result<()> {
    outln!(
        "{:<16} {:<12} {:<14} {:<12} {:<12} {:<12} {:<10} LABELS",
        "NAME",
        "STATUS",
        "STATE",
        "CHANNEL",
        "CURRENT",
        "TARGET",
        "SEEN"
    );
    for m in ms {
        outln!(
            "{:<16} {:<12} {:<14} {:<12} {:<12} {:<12} {:<10} {}",
            safe(&m.name),
            m.status.as_str(),
            state_text(m),
            safe_or_dash(m.channel.as_deref()),
            short(&m.report.current),
            short(&m.target),
            ago(m.last_seen),
            labels_text(&m.labels)
        );
    }
    let why = reasons(ms);
    if !why.is_empty() {
        outln!();
        for line in why {
            outln!("{line}");
        }
    }
    // an older server says no state: its tampered machines still get their line
    for m in ms.iter().filter(|m| m.state == FleetState::Unknown) {
        if let Some(i) = tampered(m) {
            outln!(
                "{} is tampered: {} path(s) differ from its release: {}",
                safe(&m.name),
                i.tampered.count,
                paths_text(&i.tampered, 3)
            );
        }
    }
    Ok(())
}

fn facts_text(f: &semithin_protocol::vars::Facts) -> Result<()> {
    outln!("facts:");
    outln!("  hostname  {}", safe(&f.hostname));
    outln!("  cpu       {} x {}", f.cpu_count, safe(&f.cpu_model));
    outln!("  memory    {}", human(f.memory_bytes));
    for (what, v) in [
        ("dmi vendor", &f.dmi_vendor),
        ("dmi product", &f.dmi_product),
    ] {
        if let Some(v) = v {
            outln!("  {what:<9} {}", safe(v));
        }
    }
    for i in &f.interfaces {
        outln!(
            "  net       {} {} {}",
            safe(&i.name),
            safe_or_dash(i.mac.as_deref()),
            i.addresses
                .iter()
                .map(|a| safe(a).to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    for d in &f.disks {
        outln!(
            "  disk      {} {} {}",
            safe(&d.name),
            human(d.size_bytes),
            safe_or_dash(d.model.as_deref())
        );
    }
    Ok(())
}

fn print_affected(verb: &str, a: &Affected) -> Result<()> {
    if a.machines.is_empty() {
        outln!("nothing to change: every matching machine was {verb} already");
    } else {
        outln!(
            "{verb} {} machine(s): {}",
            a.machines.len(),
            names_text(&a.machines)
        );
    }
    Ok(())
}

pub fn run(server: &ServerArgs, cmd: FleetCmd) -> Result<ExitCode> {
    let cmd = match cmd {
        FleetCmd::Check(a) => return super::fleet_check::run(server, a),
        FleetCmd::Move(a) => return super::fleet_tree::run_move(server, a),
        FleetCmd::Tree(a) => return super::fleet_tree::run_tree(server, a),
        cmd => cmd,
    };
    let c = server.client()?;
    match cmd {
        FleetCmd::Check(_) | FleetCmd::Move(_) | FleetCmd::Tree(_) => {
            unreachable!("answered above")
        }
        FleetCmd::List { selector, json } => {
            let path = match &selector {
                Some(s) => {
                    Selector::parse(s)?;
                    format!("/api/v1/admin/machines?selector={}", urlencode(s))
                }
                None => "/api/v1/admin/machines".into(),
            };
            let ms: Vec<MachineInfo> = c.get("listing machines", &path)?;
            if json {
                print_json(&ms)?;
            } else {
                print_table(&ms)?;
            }
        }
        FleetCmd::Show { name, json } => {
            let v: serde_json::Value = c.get(
                "showing the machine",
                &format!("/api/v1/admin/machines/{}", urlencode(&name)),
            )?;
            if json {
                print_json(&v)?;
            } else {
                let m: MachineInfo = serde_json::from_value(v.clone())?;
                outln!("name:       {}", safe(&m.name));
                outln!("id:         {}", m.id);
                outln!("status:     {} ({})", m.status.as_str(), state_text(&m));
                if let Some(why) = &m.state_reason {
                    outln!("why:        {}", safe(why));
                }
                if let Some(f) = &m.report.failing {
                    outln!(
                        "failing:    {} since {}: {}",
                        f.phase.as_str(),
                        time(f.since),
                        safe(&f.reason)
                    );
                }
                outln!("labels:     {}", labels_text(&m.labels));
                outln!("channel:    {}", safe_or_dash(m.channel.as_deref()));
                outln!("target:     {}", release_or_dash(&m.target));
                if m.channel_release.is_some() && m.channel_release != m.target {
                    outln!("channel at: {}", release_or_dash(&m.channel_release));
                }
                outln!("current:    {}", release_or_dash(&m.report.current));
                outln!("previous:   {}", release_or_dash(&m.report.previous));
                outln!("health:     {:?}", m.report.health);
                if let Some(i) = &m.report.integrity {
                    outln!("verified:   {}", integrity_text(i));
                    for (what, l) in [
                        ("tampered", &i.tampered),
                        ("put back", &i.repaired),
                        ("/etc drift", &i.etc_drift),
                    ] {
                        for p in &l.paths {
                            outln!("  {what:<10} {}", safe(p));
                        }
                    }
                }
                if let Some(f) = &m.report.failed_release {
                    outln!("failed:     {f}");
                }
                if let Some(b) = &m.report.backup {
                    outln!(
                        "backup:     {} since {}: {}",
                        safe(&b.kind),
                        time(b.since),
                        safe(&b.reason)
                    );
                }
                if let Some(e) = &m.report.last_error {
                    outln!("last error: {}", safe(e));
                }
                if let Some(c) = &m.report.config {
                    outln!(
                        "config:     {} file(s) rendered{}",
                        c.files,
                        c.error
                            .as_ref()
                            .map(|e| format!("; error: {}", safe(e)))
                            .unwrap_or_default()
                    );
                }
                if let Some(f) = &m.facts {
                    facts_text(f)?;
                }
                outln!("disk free:  {}", human(m.report.disk_free));
                outln!("uptime:     {} s", m.report.uptime_secs);
                outln!("fetched:    {}", human(m.report.fetched_bytes));
                outln!("enrolled:   {}", time(m.enrolled_at));
                outln!("last seen:  {}", ago(m.last_seen));
                if !m.relay_path.is_empty() {
                    // nearest the machine first, as the relays appended themselves
                    let path: Vec<String> =
                        m.relay_path.iter().map(|r| safe(r).to_string()).collect();
                    outln!("relays:     {} -> server", path.join(" -> "));
                }
                if let Some(h) = &m.relay {
                    let s = &h.status;
                    outln!(
                        "as a relay: {} at {}, reported {}; upstream {}; cache {} of {}; \
                         fetched {}, served {}, {} forwarded, {} check-ins in {} batches",
                        safe(&s.version),
                        safe(s.url.as_deref().unwrap_or("-")),
                        ago(Some(h.at)),
                        safe(&s.upstream),
                        human(s.cache_bytes),
                        human(s.cache_limit),
                        human(s.fetched_bytes),
                        human(s.served_bytes),
                        s.forwarded,
                        s.batched,
                        s.batches
                    );
                }
                if let Some(ev) = v.get("events").and_then(|e| e.as_array()) {
                    outln!("events:");
                    for e in ev {
                        outln!(
                            "  {}  {:<8} {}",
                            time(e["at"].as_i64().unwrap_or(0)),
                            safe(e["kind"].as_str().unwrap_or("")),
                            safe(e["detail"].as_str().unwrap_or(""))
                        );
                    }
                }
            }
        }
        FleetCmd::Render {
            machine,
            path,
            json,
        } => super::var::render(&c, machine, path, json)?,
        FleetCmd::Label { name, labels } => {
            let mut req = LabelRequest::default();
            for l in labels {
                if let Some(k) = l.strip_suffix('-').filter(|_| !l.contains('=')) {
                    req.remove.push(k.to_owned());
                } else {
                    let (k, v) = parse_label(&l)?;
                    req.set.insert(k, v);
                }
            }
            let m: MachineInfo = c.post(
                "labelling",
                &format!("/api/v1/admin/machines/{}/labels", urlencode(&name)),
                &req,
            )?;
            outln!("{}: {}", safe(&m.name), labels_text(&m.labels));
        }
        FleetCmd::Accept { selector } => {
            Selector::parse(&selector)?;
            let a: Affected = c.post(
                "accepting",
                "/api/v1/admin/accept",
                &SelectorRequest { selector },
            )?;
            print_affected("accepted", &a)?;
        }
        FleetCmd::Reject { selector } => {
            Selector::parse(&selector)?;
            let a: Affected = c.post(
                "rejecting",
                "/api/v1/admin/reject",
                &SelectorRequest { selector },
            )?;
            print_affected("rejected", &a)?;
        }
        FleetCmd::Assign {
            selector,
            channel,
            unpublished,
        } => {
            Selector::parse(&selector)?;
            let a: Affected = c.post(
                "assigning",
                "/api/v1/admin/assign",
                &AssignRequest {
                    selector,
                    channel: channel.clone(),
                    unpublished,
                },
            )?;
            print_affected(&format!("assigned to {channel}"), &a)?;
        }
        FleetCmd::Remove { selector, yes } => {
            Selector::parse(&selector)?;
            let ms: Vec<MachineInfo> = c.get(
                "listing machines",
                &format!("/api/v1/admin/machines?selector={}", urlencode(&selector)),
            )?;
            if ms.is_empty() {
                bail!("no machine matches {selector}: nothing to remove");
            }
            if !yes {
                let names: Vec<String> = ms.iter().map(|m| safe(&m.name).to_string()).collect();
                if !confirm(&format!(
                    "remove {} machine(s) from the fleet: {}? Their keys stop working; each \
                     comes back only by enrolling again. [y/N] ",
                    ms.len(),
                    names.join(", ")
                ))? {
                    bail!("nothing removed");
                }
            }
            let a: Affected = c.post(
                "removing",
                "/api/v1/admin/remove",
                &SelectorRequest { selector },
            )?;
            outln!(
                "removed {} machine(s): {}",
                a.machines.len(),
                names_text(&a.machines)
            );
        }
        FleetCmd::Token(TokenCmd::Create {
            preauthorized,
            labels,
            uses,
            expires_in,
            channel,
            json,
        }) => {
            let mut req = TokenRequest {
                preauthorized,
                uses,
                expires_in_secs: expires_in,
                channel,
                ..Default::default()
            };
            for l in labels {
                let (k, v) = parse_label(&l)?;
                req.labels.insert(k, v);
            }
            let t: TokenInfo = c.post("making a token", "/api/v1/admin/tokens", &req)?;
            if json {
                print_json(&t)?;
            } else {
                outln!("{}", t.token.as_deref().unwrap_or(""));
                note!(
                    "token {} made{}{}; put the line above in a file (mode 0600) for `semithin agent --token-file` (it is not shown again)",
                    t.id,
                    if t.preauthorized {
                        " (pre-authorised)"
                    } else {
                        ""
                    },
                    t.channel
                        .as_deref()
                        .map(|c| format!(", machines follow channel {c}"))
                        .unwrap_or_default()
                );
            }
        }
        FleetCmd::Outdated {
            selector,
            security,
            json,
        } => super::job::outdated(&c, selector, security, json)?,
        FleetCmd::Token(TokenCmd::Revoke { id }) => {
            let t: TokenInfo = c.delete(
                "revoking the token",
                &format!("/api/v1/admin/tokens/{}", urlencode(&id)),
            )?;
            outln!("token {} revoked", t.id);
        }
        FleetCmd::Token(TokenCmd::List { json }) => {
            let ts: Vec<TokenInfo> = c.get("listing tokens", "/api/v1/admin/tokens")?;
            if json {
                print_json(&ts)?;
            } else {
                outln!(
                    "{:<16} {:<6} {:<10} {:<24} {:<16} LABELS",
                    "ID",
                    "PRE",
                    "USES LEFT",
                    "EXPIRES",
                    "CHANNEL"
                );
                for t in ts {
                    outln!(
                        "{:<16} {:<6} {:<10} {:<24} {:<16} {}",
                        t.id,
                        if t.preauthorized { "yes" } else { "no" },
                        t.uses_left
                            .map(|u| u.to_string())
                            .unwrap_or_else(|| "-".into()),
                        t.expires_at.map(time).unwrap_or_else(|| "never".into()),
                        t.channel.as_deref().unwrap_or("-"),
                        labels_text(&t.labels)
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks a yes/no question on the terminal; refuses without one (scripts pass --yes).
fn confirm(question: &str) -> Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        bail!("not asking without a terminal: pass --yes to go ahead");
    }
    let mut err = std::io::stderr();
    err.write_all(question.as_bytes())?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

pub fn push(server: &ServerArgs, selector: String, json: bool) -> Result<ExitCode> {
    Selector::parse(&selector)?;
    let a: Affected = server.client()?.post(
        "pushing",
        "/api/v1/admin/push",
        &SelectorRequest { selector },
    )?;
    if json {
        print_json(&a)?;
    } else if a.machines.is_empty() {
        bail!("no machine woken");
    } else {
        outln!("woke {} machine(s): they check in now", a.machines.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// Percent-encodes a query or path value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
