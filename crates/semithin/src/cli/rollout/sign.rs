//! `semithin rollout pending` and `semithin rollout sign ID`: rollouts (and publishes, which
//! `semithin publish --request ID` signs) planned on the dashboard (or through the API) wait on
//! the server for an admin who holds the targets key; signing one
//! shows what it starts, asks, has the server start it (the server checks again that nothing
//! started it and that the channel has not moved since it was planned) and signs its release as
//! `rollout start` does.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use semithin_protocol::rollout::{PendingInfo, RolloutInfo};

use super::super::admin::ServerArgs;
use super::super::{print_json, time};
use super::safe;
use semithin_protocol::ids::short_str as short;

fn describe(p: &PendingInfo) -> String {
    let r = &p.request;
    if p.kind == "publish" {
        return format!(
            "request {}: publish {} as channel {}'s release, planned {} against its release {}",
            p.id,
            short(&r.release),
            safe(&r.channel),
            time(p.created_at),
            p.base.as_deref().map(short).unwrap_or("(none)")
        );
    }
    let opt = |v: &Option<String>, d: &str| v.clone().unwrap_or_else(|| d.to_owned());
    let mut s = format!(
        "request {}: roll {} out on channel {} to {} (canary {}, waves {}, soak {}, max failures {}",
        p.id,
        short(&r.release),
        safe(&r.channel),
        safe(&r.selector),
        safe(&opt(&r.canary, "1")),
        safe(&opt(&r.waves, "100%")),
        safe(&opt(&r.soak, "0s")),
        safe(&opt(&r.max_failures, "0")),
    );
    if let Some(w) = &r.window {
        s.push_str(&format!(
            ", window {} {}",
            safe(w),
            safe(r.tz.as_deref().unwrap_or("UTC"))
        ));
    }
    if let Some(n) = r.max_per_hour {
        s.push_str(&format!(", at most {n} an hour"));
    }
    s.push_str(&format!(
        "), planned {} against the channel's release {}",
        time(p.created_at),
        p.base.as_deref().map(short).unwrap_or("(none)")
    ));
    s
}

/// `rollout pending`: the requests, newest first.
pub fn pending(server: &ServerArgs, json: bool) -> Result<ExitCode> {
    let list: Vec<PendingInfo> = server
        .client()?
        .get("listing rollout requests", "/api/v1/admin/pending")?;
    if json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        outln!("no rollout request");
    }
    for p in &list {
        let state = match (&p.stale, p.rollout) {
            (Some(_), _) => "stale".to_owned(),
            (None, Some(r)) => format!("started rollout {r}"),
            (None, None) if p.kind == "publish" && p.state == "started" => "published".into(),
            (None, None) => p.state.clone(),
        };
        outln!("{} [{state}]", describe(p));
        if let Some(why) = &p.stale {
            outln!("  {}", safe(why));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `rollout sign ID`.
pub fn sign(
    repo: Option<PathBuf>,
    server: &ServerArgs,
    id: i64,
    yes: bool,
    json: bool,
) -> Result<ExitCode> {
    let client = server.client()?;
    let p: PendingInfo = client.get(
        "reading the rollout request",
        &format!("/api/v1/admin/pending/{id}"),
    )?;
    if p.kind != "rollout" {
        bail!("request {id} is a publish: `semithin publish --request {id}` signs it");
    }
    if p.state != "awaiting" {
        bail!(
            "request {id} was signed already: it started rollout {}",
            p.rollout.map_or_else(|| "-".into(), |r| r.to_string())
        );
    }
    if let Some(why) = &p.stale {
        bail!("{}", safe(why));
    }
    // The release must be one the channel has pointed at here too, as for `rollout start`.
    super::release_on_channel(repo.clone(), &p.request.channel, &p.request.release)?;
    note!("{}", describe(&p));
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!("not asking without a terminal: pass --yes to sign request {id}");
        }
        if !ask("sign it and start the rollout? [y/N] ")? {
            bail!("not signed: nothing changed");
        }
    }
    let made: RolloutInfo = client.post(
        "starting the requested rollout",
        &format!("/api/v1/admin/pending/{id}/start"),
        &serde_json::json!({}),
    )?;
    super::sign_started(repo, server, made, json)
}

/// A yes/no question on the terminal.
pub(crate) fn ask(q: &str) -> Result<bool> {
    use std::io::Write;
    let mut err = std::io::stderr();
    let _ = write!(err, "{q}");
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "Yes"))
}
