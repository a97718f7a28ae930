//! The pages of what the admin does to the fleet: channels and releases, rollouts, jobs. What
//! needs the admin's signing keys (publishing, starting a rollout, signing a channel back after
//! an abort, signed commands) is shown as the exact command to run where the repository and its
//! keys are: the server holds no targets key, so it cannot sign, and does not pretend to.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use semithin_protocol::rollout::{RolloutInfo, StartRequest};
use semithin_store::{Access, CommitId, Repo};
use serde::Deserialize;

use super::views::{RolloutLine, rollout_line};
use super::{Nav, ago, error, fragment, html, page, short, time};
use crate::App;

/// A word of the shell, quoted when it needs to be.
fn sh(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=,:%@+".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A release of a channel, with what its commit says.
pub struct Release {
    pub id: String,
    pub short: String,
    pub time: String,
    pub message: String,
    pub rollback: String,
    /// The body that asks for it to be published, awaiting a signature
    /// (`POST /api/v1/admin/pending/publish`).
    pub ask: String,
}

pub struct ChannelView {
    pub name: String,
    pub release: Option<Release>,
    pub head_unpublished: Option<Release>,
    pub machines: usize,
    pub earlier: Vec<Release>,
    pub moves: Vec<(String, String, String, String)>,
    pub publish: String,
    pub rollout: String,
}

#[derive(Template)]
#[template(path = "channels.html")]
struct Channels {
    nav: Nav,
    channels: Vec<ChannelView>,
}

fn release(app: &App, channel: &str, id: &CommitId) -> Release {
    let c = app.published().store.get_commit(id).ok();
    Release {
        id: id.to_hex(),
        short: id.short().to_string(),
        time: c.as_ref().map(|c| time(c.time)).unwrap_or_default(),
        message: c.map(|c| c.message).unwrap_or_default(),
        rollback: format!("semithin publish {} {}", sh(channel), id.short()),
        ask: serde_json::json!({"channel": channel, "release": id.to_hex()}).to_string(),
    }
}

fn channels_view(app: &App) -> crate::Result<Vec<ChannelView>> {
    let p = app.published();
    let repo = Repo::open(&app.cfg.repo(), Access::Read)?;
    let mut names = semithin_store::channel::list(&repo)?;
    for c in p.releases.keys() {
        if !names.contains(c) {
            names.push(c.clone());
        }
    }
    names.sort();
    let mut per_channel = std::collections::HashMap::<String, usize>::new();
    for m in app.fleet.all() {
        if let Some(c) = m.row.lock().expect("lock").channel.clone() {
            *per_channel.entry(c).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for name in names {
        let moves = semithin_store::channel::history(&repo, &name).unwrap_or_default();
        let head = moves.last().map(|m| m.commit.0);
        let published = p.releases.get(&name).copied();
        let earlier = p
            .earlier
            .get(&name)
            .map(|e| e.iter().take(10).map(|c| release(app, &name, c)).collect())
            .unwrap_or_default();
        out.push(ChannelView {
            release: published.map(|r| release(app, &name, &r)),
            head_unpublished: head
                .filter(|h| Some(*h) != published)
                .map(|h| release(app, &name, &h)),
            machines: per_channel.get(&name).copied().unwrap_or(0),
            earlier,
            moves: moves
                .iter()
                .rev()
                .take(20)
                .map(|m| {
                    (
                        time(m.time),
                        format!("{:?}", m.kind).to_lowercase(),
                        m.commit.0.short().to_string(),
                        m.note.clone(),
                    )
                })
                .collect(),
            publish: format!("semithin publish {}", sh(&name)),
            rollout: format!(
                "semithin rollout start {} {} --to '*' --canary 1 --waves 25%,100% --soak 30m",
                sh(&name),
                head.map(|h| h.short().to_string())
                    .unwrap_or_else(|| "REF".into())
            ),
            name,
        });
    }
    Ok(out)
}

pub async fn channels(State(app): State<Arc<App>>, headers: HeaderMap, uri: Uri) -> Response {
    let nav = match page(&app, &headers, &uri, "channels") {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let app2 = app.clone();
    match tokio::task::spawn_blocking(move || channels_view(&app2)).await {
        Ok(Ok(channels)) => html(StatusCode::OK, &Channels { nav, channels }),
        Ok(Err(e)) => crate::http::ApiErr::from(e).into_response_page(nav),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, nav, e.to_string()),
    }
}

#[derive(Deserialize, Default)]
pub struct PlanQuery {
    channel: Option<String>,
    release: Option<String>,
    to: Option<String>,
    canary: Option<String>,
    waves: Option<String>,
    soak: Option<String>,
    max_failures: Option<String>,
}

fn field(s: &Option<String>, default: &str) -> String {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(default)
        .to_owned()
}

/// A rollout's plan, made by the server as a dry run (nothing stored or signed).
pub struct Plan {
    pub command: String,
    pub waves: Vec<(String, u32)>,
    pub held: usize,
    /// The request to store awaiting a signature (`POST /api/v1/admin/pending`), as JSON.
    pub request: String,
}

/// A rollout or a publish planned here, awaiting a signature or signed.
pub struct PendingLine {
    pub id: i64,
    /// `rollout` or `publish`.
    pub kind: String,
    pub channel: String,
    pub release: String,
    pub selector: String,
    /// `awaiting`, `stale` or `started`.
    pub state: String,
    pub why: String,
    pub rollout: Option<i64>,
    pub command: String,
}

/// The rollouts and the requests awaiting a signature: refreshed every 2 s.
#[derive(Template)]
#[template(path = "rollouts_live.html")]
struct RolloutsLive {
    list: Vec<RolloutLine>,
    pending: Vec<PendingLine>,
}

#[derive(Template)]
#[template(path = "rollouts.html")]
struct Rollouts {
    nav: Nav,
    live: String,
    channel: String,
    release: String,
    to: String,
    canary: String,
    waves: String,
    soak: String,
    max_failures: String,
    plan: Option<Plan>,
    problem: String,
}

/// The commit a release field names, as the CLI reads a REF: a commit id or a unique prefix of
/// one, a channel name, `CHANNEL~N`.
async fn commit(app: &Arc<App>, s: &str) -> Result<String, String> {
    let path = app.cfg.repo();
    let s = s.to_owned();
    tokio::task::spawn_blocking(move || {
        let repo = Repo::open(&path, Access::Read).map_err(|e| e.to_string())?;
        semithin_store::refs::resolve(&repo, &s)
            .map(|c| c.to_hex())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

pub async fn rollouts(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
    Query(pq): Query<PlanQuery>,
) -> Response {
    let nav = match page(&app, &headers, &uri, "rollouts") {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let list = match app.rollouts.list(&app, None).await {
        Ok(l) => l.iter().map(rollout_line).collect(),
        Err(e) => return crate::http::ApiErr::from(e).into_response_page(nav),
    };
    let pending = match crate::rollout::pending::list(&app).await {
        Ok(l) => l
            .into_iter()
            .map(|p| PendingLine {
                id: p.id,
                channel: p.request.channel.clone(),
                release: short(Some(&p.request.release)),
                selector: if p.kind == "publish" {
                    "(every machine of the channel)".into()
                } else {
                    p.request.selector.clone()
                },
                kind: p.kind.clone(),
                state: if p.stale.is_some() {
                    "stale".into()
                } else {
                    p.state.clone()
                },
                why: p.stale.clone().unwrap_or_default(),
                rollout: p.rollout,
                command: if p.kind == "publish" {
                    format!("semithin publish --request {}", p.id)
                } else {
                    format!("semithin rollout sign {}", p.id)
                },
            })
            .collect(),
        Err(e) => return crate::http::ApiErr::from(e).into_response_page(nav),
    };
    let live = RolloutsLive { list, pending };
    if fragment(&headers) {
        return html(StatusCode::OK, &live);
    }
    let live = match live.render() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, nav, e.to_string()),
    };
    let mut t = Rollouts {
        nav,
        live,
        channel: field(&pq.channel, ""),
        release: field(&pq.release, ""),
        to: field(&pq.to, "*"),
        canary: field(&pq.canary, "1"),
        waves: field(&pq.waves, "100%"),
        soak: field(&pq.soak, "0s"),
        max_failures: field(&pq.max_failures, "0"),
        plan: None,
        problem: String::new(),
    };
    if !t.channel.is_empty() && !t.release.is_empty() {
        let made = match commit(&app, &t.release).await {
            Ok(release) => {
                let req = StartRequest {
                    channel: t.channel.clone(),
                    release,
                    selector: t.to.clone(),
                    canary: Some(t.canary.clone()),
                    waves: Some(t.waves.clone()),
                    soak: Some(t.soak.clone()),
                    max_failures: Some(t.max_failures.clone()),
                    window: None,
                    tz: None,
                    max_per_hour: None,
                    dry_run: true,
                };
                app.rollouts
                    .start(&app, &req)
                    .await
                    .map(|info| {
                        let mut req = req;
                        req.dry_run = false;
                        (info, serde_json::to_string(&req).expect("serialises"))
                    })
                    .map_err(|e| crate::http::ApiErr::from(e).1)
            }
            Err(e) => Err(e),
        };
        match made {
            Ok((info, request)) => {
                t.plan = Some(Plan {
                    request,
                    command: format!(
                        "semithin rollout start {} {} --to {} --canary {} --waves {} --soak {} \
                         --max-failures {}",
                        sh(&t.channel),
                        sh(&t.release),
                        sh(&t.to),
                        sh(&t.canary),
                        sh(&t.waves),
                        sh(&t.soak),
                        sh(&t.max_failures)
                    ),
                    waves: info
                        .waves
                        .iter()
                        .map(|w| (w.name.clone(), w.machines))
                        .collect(),
                    held: info.machines.iter().filter(|m| m.wave.is_none()).count(),
                });
            }
            Err(e) => t.problem = e,
        }
    }
    let status = if t.problem.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    html(status, &t)
}

pub struct MachineLine {
    pub name: String,
    pub href: String,
    pub wave: String,
    pub state: String,
    pub from: String,
    pub told: String,
    pub current: String,
    pub health: String,
    pub last_error: String,
    pub seen: String,
}

#[derive(Template)]
#[template(path = "rollout_live.html")]
struct RolloutLive {
    r: RolloutInfo,
    release: String,
    machines: Vec<MachineLine>,
    can_pause: bool,
    can_resume: bool,
    can_abort: bool,
    can_rollback: bool,
    sign_back: String,
}

#[derive(Template)]
#[template(path = "rollout.html")]
struct RolloutPage {
    nav: Nav,
    id: i64,
    live: String,
}

pub async fn rollout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Response {
    let nav = match page(&app, &headers, &uri, "rollouts") {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let Some(id) = id.parse::<i64>().ok().filter(|n| *n > 0) else {
        return error(
            StatusCode::BAD_REQUEST,
            nav,
            format!("{id:?} is not a rollout id (a number)"),
        );
    };
    let r = match app.rollouts.info(&app, id).await {
        Ok(r) => r,
        Err(e) => return crate::http::ApiErr::from(e).into_response_page(nav),
    };
    let st = r.state.as_str();
    let machines = r
        .machines
        .iter()
        .map(|m| MachineLine {
            href: format!("/machines/{}", m.name),
            name: m.name.clone(),
            wave: m
                .wave
                .map(|w| {
                    if w == 0 {
                        "canary".into()
                    } else {
                        w.to_string()
                    }
                })
                .unwrap_or_else(|| "held".into()),
            state: format!("{:?}", m.state).to_lowercase(),
            from: short(m.from.as_deref()),
            told: short(m.told.as_deref()),
            current: short(m.current.as_deref()),
            health: format!("{:?}", m.health).to_lowercase(),
            last_error: m.last_error.clone().unwrap_or_default(),
            seen: if m.offline {
                format!("{} (offline)", ago(m.last_seen))
            } else {
                ago(m.last_seen)
            },
        })
        .collect();
    let live = RolloutLive {
        release: short(Some(&r.release)),
        machines,
        can_pause: st == "running",
        can_resume: matches!(st, "paused" | "halted"),
        can_abort: matches!(st, "publishing" | "running" | "paused" | "halted"),
        can_rollback: matches!(
            st,
            "running" | "paused" | "halted" | "completed" | "aborted"
        ),
        sign_back: match st {
            "aborted" => format!("semithin rollout abort {id}"),
            "rolled_back" => format!("semithin rollout rollback {id}"),
            _ => String::new(),
        },
        r,
    };
    if fragment(&headers) {
        return html(StatusCode::OK, &live);
    }
    match live.render() {
        Ok(live) => html(StatusCode::OK, &RolloutPage { nav, id, live }),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, nav, e.to_string()),
    }
}

pub struct JobLine {
    pub id: String,
    pub short: String,
    pub selector: String,
    pub action: String,
    pub machines: usize,
    pub states: String,
    pub cancelled: bool,
}

fn job_line(j: &semithin_protocol::job::JobInfo) -> JobLine {
    JobLine {
        id: j.id.clone(),
        short: semithin_protocol::ids::short_str(&j.id).to_owned(),
        selector: j.selector.clone(),
        action: j.spec.action.describe(),
        machines: j.machines.len(),
        states: j
            .states
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        cancelled: j.cancelled_at.is_some(),
    }
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct Jobs {
    nav: Nav,
    jobs: Vec<JobLine>,
}

pub async fn jobs(State(app): State<Arc<App>>, headers: HeaderMap, uri: Uri) -> Response {
    let nav = match page(&app, &headers, &uri, "jobs") {
        Ok(n) => n,
        Err(r) => return *r,
    };
    match crate::jobs::list(&app.db, &app.jobs, &app.fleet, 200, crate::now()).await {
        Ok(list) => html(
            StatusCode::OK,
            &Jobs {
                nav,
                jobs: list.iter().map(job_line).collect(),
            },
        ),
        Err(e) => crate::http::ApiErr::from(e).into_response_page(nav),
    }
}

pub struct RunLine {
    pub machine: String,
    pub href: String,
    pub state: String,
    pub exit_code: String,
    pub started: String,
    pub duration: String,
    pub output: String,
}

#[derive(Template)]
#[template(path = "job_live.html")]
struct JobLive {
    job: JobLine,
    runs: Vec<RunLine>,
    open: bool,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    nav: Nav,
    id: String,
    live: String,
}

pub async fn job(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Response {
    let nav = match page(&app, &headers, &uri, "jobs") {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let status = match crate::jobs::info(&app.db, &app.jobs, &app.fleet, &id, crate::now()).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                nav,
                format!("no job has the id {id:?}"),
            );
        }
        Err(e) => return crate::http::ApiErr::from(e).into_response_page(nav),
    };
    let runs = status
        .runs
        .iter()
        .map(|r| RunLine {
            href: format!("/machines/{}", r.machine),
            machine: r.machine.clone(),
            state: r.state.clone(),
            exit_code: r.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            started: r.started_at.map(time).unwrap_or_default(),
            duration: r
                .duration_ms
                .map(|d| format!("{:.1} s", d as f64 / 1000.0))
                .unwrap_or_default(),
            output: r.output.clone().unwrap_or_default(),
        })
        .collect();
    let live = JobLive {
        open: status.job.cancelled_at.is_none()
            && status
                .runs
                .iter()
                .any(|r| matches!(r.state.as_str(), "pending" | "delivered" | "running")),
        job: job_line(&status.job),
        runs,
    };
    if fragment(&headers) {
        return html(StatusCode::OK, &live);
    }
    match live.render() {
        Ok(live) => html(StatusCode::OK, &JobPage { nav, id, live }),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, nav, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shell_words_are_quoted_when_they_need_it() {
        assert_eq!(super::sh("lab/stable"), "lab/stable");
        assert_eq!(super::sh("*"), "'*'");
        assert_eq!(super::sh("a b'c"), "'a b'\\''c'");
        assert_eq!(super::sh(""), "''");
    }
}

/// One line of the audit page.
pub struct AuditLine {
    pub at: String,
    pub who: String,
    pub ip: String,
    pub what: String,
    pub status: u16,
    pub machines: Vec<(String, String)>,
    pub more: usize,
    pub request: String,
    pub error: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    nav: Nav,
    machine: String,
    lines: Vec<AuditLine>,
}

#[derive(Deserialize)]
pub struct AuditQuery {
    machine: Option<String>,
}

/// `GET /audit`: the newest admin changes (the audit log, as `semithin audit` reads it).
pub async fn audit(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<AuditQuery>,
) -> Response {
    let nav = match page(&app, &headers, &uri, "audit") {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let machine = q.machine.filter(|m| !m.trim().is_empty());
    match crate::audit::entries(&app.db, 200, 0, machine.as_deref()).await {
        Ok(list) => {
            let lines = list
                .into_iter()
                .map(|e| AuditLine {
                    at: time(e.at),
                    who: match &e.user {
                        Some(u) => format!("{} ({u})", e.actor),
                        None => e.actor.clone(),
                    },
                    ip: e.ip,
                    what: format!("{} {}", e.method, e.path),
                    status: e.status,
                    more: e.machines.len().saturating_sub(10),
                    machines: e
                        .machines
                        .iter()
                        .take(10)
                        .map(|m| (m.clone(), format!("/machines/{}", super::views::q(m))))
                        .collect(),
                    request: e.request,
                    error: e.error.unwrap_or_default(),
                })
                .collect();
            html(
                StatusCode::OK,
                &AuditPage {
                    nav,
                    machine: machine.unwrap_or_default(),
                    lines,
                },
            )
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            nav,
            format!("reading the audit log: {e}"),
        ),
    }
}
