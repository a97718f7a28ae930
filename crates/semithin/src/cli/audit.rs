//! `semithin audit`: the server's log of admin requests that asked for a change (who — which
//! admin token and the user the client named —, what, when, on which machines, the answer).

use std::process::ExitCode;

use anyhow::Result;
use semithin_protocol::audit::AuditEntry;

use super::admin::ServerArgs;
use super::safe::safe;
use super::{print_json, time};

#[derive(clap::Args)]
pub struct Args {
    /// The newest this many entries (1 to 10000).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Only entries of the last DURATION (`90m`, `2d`, or seconds).
    #[arg(long, value_parser = super::duration)]
    since: Option<u64>,
    /// Only entries naming this machine.
    #[arg(long)]
    machine: Option<String>,
    /// Print the entries as JSON (for scripts).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let c = a.server.client()?;
    let mut path = format!("/api/v1/admin/audit?limit={}", a.limit);
    if let Some(s) = a.since {
        let from = jiff::Timestamp::now().as_second() - s as i64;
        path.push_str(&format!("&since={from}"));
    }
    if let Some(m) = &a.machine {
        path.push_str(&format!("&machine={}", super::fleet::urlencode(m)));
    }
    let entries: Vec<AuditEntry> = c.get("reading the audit log", &path)?;
    if a.json {
        print_json(&entries)?;
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        outln!("no admin request in the audit log matches");
        return Ok(ExitCode::SUCCESS);
    }
    // Oldest first, as a log reads.
    for e in entries.iter().rev() {
        let who = match &e.user {
            Some(u) => format!("{} ({})", e.actor, safe(u)),
            None => e.actor.clone(),
        };
        let machines = match e.machines.len() {
            0 => String::new(),
            n if n <= 5 => format!(" machines: {}", safe(&e.machines.join(", "))),
            n => format!(
                " machines: {} and {} more",
                safe(&e.machines[..5].join(", ")),
                n - 5
            ),
        };
        outln!(
            "{}  {who} from {}  {} {} -> {}{machines}",
            time(e.at),
            e.ip,
            e.method,
            safe(&e.path),
            e.status
        );
        if !e.request.is_empty() {
            outln!("    request: {}", safe(&e.request));
        }
        if let Some(err) = &e.error {
            outln!("    error: {}", safe(err));
        }
    }
    Ok(ExitCode::SUCCESS)
}
