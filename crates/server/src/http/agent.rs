//! What machines call: enroll, check in (with long poll), fetch metadata and objects.

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use semithin_protocol::api::{
    ApiError, CheckInRequest, CheckInResponse, Desired, EnrollRequest, EnrollResponse, Health,
    MAX_OBJECTS_PER_REQUEST, MachineStatus, ObjectsRequest, Report, limits,
};
use semithin_protocol::path::ApiPath;
use semithin_protocol::{selector, sign};
use semithin_store::pack::ObjKind;
use semithin_store::transfer;
use tokio::sync::mpsc;

use super::{ApiErr, ApiResult, machine, parse, reader};
use crate::db::{self, MachineRow};
use crate::fleet::Machine;
use crate::{App, now};

/// `POST /api/v1/enroll`, throttled per source address: after too many unknown, expired or used
/// up tokens the address is refused for a while (429 with `Retry-After`), and each refusal is
/// logged with the address.
#[utoipa::path(post, path = "/api/v1/enroll", tag = "machines", summary = "Register a machine's public key with an enrollment token", request_body = EnrollRequest, responses((status = 200, description = "The machine's id and status", body = EnrollResponse), (status = "4XX", description = "Refused: `error` says why", body = ApiError)))]
pub async fn enroll(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    use super::throttle::{Failed, MAX_FAILURES, WINDOW_SECS};
    let ip = super::throttle::client_ip(peer.ip(), &headers, &app.cfg.trusted_proxies);
    if let Err(wait) = app.enroll_failures.check(ip, now()) {
        tracing::debug!(%ip, "enrollment refused: throttled");
        let mut r = ApiErr(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many failed enrollments from {ip}: try again in {wait} s (at most \
                 {MAX_FAILURES} refused tokens in {WINDOW_SECS} s)"
            ),
        )
        .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return r;
    }
    match enroll_with_token(&app, &body).await {
        Ok(answer) => answer.into_response(),
        // FORBIDDEN is only ever the token refused.
        Err(e) if e.0 == StatusCode::FORBIDDEN => {
            match app.enroll_failures.failed(ip, now()) {
                Failed::Counted(n) => {
                    tracing::warn!(%ip, failures = n, "enrollment refused: {}", e.1);
                }
                Failed::Blocked => tracing::warn!(
                    %ip,
                    "enrollment refused: {}; {MAX_FAILURES} refusals, the address is throttled \
                     for {WINDOW_SECS} s",
                    e.1
                ),
            }
            e.into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn enroll_with_token(app: &App, body: &[u8]) -> ApiResult<Json<EnrollResponse>> {
    let req: EnrollRequest = parse(body)?;
    if req.token.len() > limits::TOKEN_BYTES {
        return Err(ApiErr::bad(format!(
            "token: {} bytes; at most {} are accepted",
            req.token.len(),
            limits::TOKEN_BYTES
        )));
    }
    if req.labels.len() > limits::ENROLL_LABELS {
        return Err(ApiErr::bad(format!(
            "labels: {} labels; at most {} are accepted",
            req.labels.len(),
            limits::ENROLL_LABELS
        )));
    }
    let t = now();
    let refused = || ApiErr::forbidden("enrollment token unknown, expired or used up");
    // The token first: without one, nothing is said about names, keys or labels. A known key
    // may also give the token it enrolled with, used up or expired since (it crashed before
    // saving the answer, or moved its state aside); not a revoked one.
    let hash = blake3::hash(req.token.as_bytes()).to_hex().to_string();
    let token = db::find_token(&app.db, &hash).await?.ok_or_else(refused)?;
    let public: Option<[u8; 32]> = hex::decode(&req.public_key)
        .ok()
        .and_then(|b| b.try_into().ok());
    let known = public.and_then(|p| app.fleet.get(&sign::machine_id(&p)));
    if !db::token_usable(&token, t) {
        let own = match &known {
            Some(m) => db::enrolled_with(&app.db, &m.id).await?.as_deref() == Some(&token.id),
            None => false,
        };
        if !own {
            return Err(refused());
        }
    }
    selector::check_name(&req.name).map_err(|e| ApiErr::bad(e.to_string()))?;
    for (k, v) in &req.labels {
        selector::parse_label(&format!("{k}={v}")).map_err(|e| ApiErr::bad(e.to_string()))?;
    }
    let public =
        public.ok_or_else(|| ApiErr::bad("public_key must be 32 bytes of hex (an ed25519 key)"))?;
    let id = sign::machine_id(&public);
    if let Some(m) = known {
        // The same machine enrolling again: its enrollment stands, no use of the token is taken.
        let r = m.snapshot();
        if r.name != req.name {
            return Err(ApiErr(
                StatusCode::CONFLICT,
                format!("this key is already enrolled as {:?}", r.name),
            ));
        }
        return Ok(Json(EnrollResponse {
            machine_id: id.parse().map_err(ApiErr::internal)?,
            status: r.status,
        }));
    }
    let taken = || {
        ApiErr(
            StatusCode::CONFLICT,
            format!(
                "the name {:?} is taken by another machine (remove it first, or enroll under \
                 another name)",
                req.name
            ),
        )
    };
    if app.fleet.by_name(&req.name).is_some() {
        return Err(taken());
    }
    let make = |token: &db::TokenRow| {
        let mut labels = req.labels.clone();
        labels.extend(token.labels.clone());
        MachineRow {
            id: id.clone(),
            name: req.name.clone(),
            public_key: public,
            status: if token.preauthorized {
                MachineStatus::Accepted
            } else {
                MachineStatus::Pending
            },
            labels,
            channel: token.channel.clone(),
            report: Report::default(),
            enrolled_at: t,
            last_seen: None,
        }
    };
    let row = match db::enroll_machine(&app.db, &hash, t, make).await? {
        Ok((_, row)) => row,
        Err(db::EnrollRefused::Token) => return Err(refused()),
        Err(db::EnrollRefused::Taken) => return Err(taken()),
    };
    let status = row.status;
    tracing::info!(machine = %row.name, %id, status = status.as_str(), "enrolled");
    let counter = db::load_counter(&app.db, &row.id).await?;
    let assigned = row.channel.is_some();
    let machine = Machine::new(row);
    machine.set_stored_counter(counter);
    app.fleet.insert(Arc::new(machine));
    if assigned {
        // the token's channel, signed as the machine's assignment before it first checks in
        crate::assignments::sign(app).await?;
    }
    Ok(Json(EnrollResponse {
        machine_id: id.parse().map_err(ApiErr::internal)?,
        status,
    }))
}

/// The desired state of a machine, and whether it has something to do.
fn answer(app: &App, m: &Machine, woken: bool) -> (CheckInResponse, bool) {
    let r = m.row.lock().expect("lock");
    let desired = match (r.status, &r.channel) {
        (MachineStatus::Accepted, Some(c)) => app.target(&r).map(|rel| {
            // a pack from what the machine runs, when the server holds that release too
            let from = r
                .report
                .current
                .map(semithin_store::CommitId::from)
                .filter(|cur| {
                    *cur != rel
                        && app
                            .published()
                            .store
                            .contains(ObjKind::Commit, cur.as_bytes())
                });
            let delta_path = from.and_then(|cur| {
                ApiPath::new(format!("/api/v1/deltas/{}/{}", cur.to_hex(), rel.to_hex())).ok()
            });
            let delta_size = from.and_then(|cur| app.deltas.size(&cur, &rel));
            // its pack is being prepared: it stays where it is until the pack is ready
            if let Some(cur) = from
                && let Some(why) = app.delta_hold(&cur, &rel)
            {
                return Desired {
                    channel: c.clone(),
                    release: cur.into(),
                    metadata_path: ApiPath::trust_metadata(),
                    objects_path: ApiPath::objects(),
                    delta_path: None,
                    delta_size: None,
                    waiting: Some(why),
                };
            }
            Desired {
                channel: c.clone(),
                release: rel.into(),
                metadata_path: ApiPath::trust_metadata(),
                objects_path: ApiPath::objects(),
                delta_path,
                delta_size,
                waiting: None,
            }
        }),
        _ => None,
    };
    let actionable = desired.as_ref().is_some_and(|d| {
        r.report.current != Some(d.release) && r.report.failed_release != Some(d.release)
    });
    let resp = CheckInResponse {
        status: r.status,
        desired,
        next_checkin_secs: app.cfg.checkin_interval_secs,
        woken,
        jobs: Vec::new(),
        inventory_digest: None,
        facts_digest: None,
        vars: None,
        upstreams: m.placement.lock().expect("lock").clone(),
    };
    (resp, actionable)
}

#[utoipa::path(post, path = "/api/v1/checkin", tag = "machines", summary = "Report, learn what to run; a long poll", request_body = CheckInRequest, responses((status = 200, description = "What the machine is to run", body = CheckInResponse), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("machine_signature" = [])))]
pub async fn checkin(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<CheckInResponse>> {
    let relay_path = crate::relays::header_path(&headers);
    let (m, req, wait) =
        match begin_checkin(&app, &method, &uri, &headers, &body, relay_path).await? {
            Begun::Now(resp) => return Ok(Json(*resp)),
            Begun::Hold { m, req, wait } => (m, req, wait),
        };
    let held = crate::PollHeld::new(&app.counters.polls_held);
    let mut stop = app.shutdown.clone();
    let woken = tokio::select! {
        _ = m.wake.notified() => true,
        _ = tokio::time::sleep(Duration::from_secs(wait as u64)) => false,
        _ = stop.wait_for(|s| *s) => false,
    };
    drop(held);
    Ok(Json(end_checkin(&app, &m, &req, woken).await?))
}

/// A check-in verified and stored: answered at once, or to be held (a long poll with nothing
/// new) up to `wait` seconds.
pub(crate) enum Begun {
    Now(Box<CheckInResponse>),
    Hold {
        m: Arc<Machine>,
        req: Box<CheckInRequest>,
        wait: u32,
    },
}

/// The part of a check-in before its long poll, shared by `POST /api/v1/checkin` and the
/// batches of relays (`POST /api/v1/relay/checkins`, each check-in verified here as if it had
/// come straight from its machine): the signature, the body, what it stores, the answer when
/// there is something to say at once. `relay_path` is what `X-Semithin-Relay` said.
pub(crate) async fn begin_checkin(
    app: &App,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    relay_path: std::result::Result<Vec<String>, String>,
) -> ApiResult<Begun> {
    let m = machine(app, method, uri, headers, body)?;
    // A rejected machine is refused before anything of its request is looked at or kept.
    if m.row.lock().expect("lock").status == MachineStatus::Rejected {
        return Err(ApiErr::forbidden("this machine was rejected by the admin"));
    }
    let req: CheckInRequest = parse(body)?;
    req.check()
        .map_err(|e| ApiErr::bad(format!("check-in refused: {e}")))?;
    let relay_path = relay_path.map_err(|e| ApiErr::bad(format!("check-in refused: {e}")))?;
    let t = now();
    app.counters.checkins.fetch_add(1, Ordering::Relaxed);
    m.last_seen.store(t, Ordering::Relaxed);
    store_checkin(app, &m, &req, t).await?;
    crate::relays::record(app, &m, relay_path, &req.bad_upstreams, t).await?;
    let (mut resp, actionable) = answer(app, &m, false);
    with_jobs(app, &m, &req, &mut resp).await?;
    with_config(app, &m, &req, &mut resp);
    let wait = req.wait_secs.min(app.cfg.max_wait_secs);
    if actionable || wait == 0 || !resp.jobs.is_empty() || resp.vars.is_some() {
        return Ok(Begun::Now(Box::new(resp)));
    }
    Ok(Begun::Hold {
        m,
        req: Box::new(req),
        wait,
    })
}

/// The answer to a held check-in once its wait is over (`woken`: by a push or a publish).
pub(crate) async fn end_checkin(
    app: &App,
    m: &Machine,
    req: &CheckInRequest,
    woken: bool,
) -> ApiResult<CheckInResponse> {
    let mut resp = answer(app, m, woken).0;
    with_jobs(app, m, req, &mut resp).await?;
    with_config(app, m, req, &mut resp);
    Ok(resp)
}

/// What a check-in stores, at time `t`: shared by `POST /api/v1/checkin` and the reports of an
/// offline site (`POST /api/v1/admin/offline-reports`), whose signatures are checked before.
pub(crate) async fn store_checkin(
    app: &App,
    m: &Machine,
    req: &CheckInRequest,
    t: i64,
) -> crate::Result<()> {
    // A pending machine stores nothing but its enrollment (and when it was last seen): its
    // report, job results and inventory count from its first check-in once accepted (accepting
    // it wakes it, so that comes at once).
    let pending = m.row.lock().expect("lock").status == MachineStatus::Pending;
    // What this request changes is written only once its counter is stored: replayed after a
    // restart, it is refused. A pending machine's check-ins change nothing.
    let writes = !pending
        && (!req.job_results.is_empty()
            || req.inventory.is_some()
            || req.facts.is_some()
            || m.row.lock().expect("lock").report != req.report);
    if writes {
        m.store_counter(&app.db).await?;
    }
    if !pending {
        if let Some(old) = m.store_report(&app.db, &req.report, t).await? {
            record_events(app, m, old, &req.report).await?;
            app.rollouts.poke_for(&m.id);
        }
        crate::jobs::receive(
            &app.db,
            &app.jobs,
            m,
            &req.job_results,
            req.inventory.as_ref(),
            t,
        )
        .await?;
        if let Some(f) = &req.facts {
            crate::vars::store_facts(&app.db, m, f, t).await?;
        }
    }
    Ok(())
}

/// The digest of the facts the server holds, and for an accepted machine whose agent renders
/// templates its variable sets when it does not hold them yet (docs/CONFIG.md).
fn with_config(app: &App, m: &Machine, req: &CheckInRequest, resp: &mut CheckInResponse) {
    resp.facts_digest = m.facts().map(|f| f.digest());
    if req.accepts_vars && resp.status == MachineStatus::Accepted {
        resp.vars = app.vars.bundle(&m.row.lock().expect("lock"));
    }
}

/// The jobs due for an agent that runs them, and the inventory digest the server holds.
async fn with_jobs(
    app: &App,
    m: &Machine,
    req: &CheckInRequest,
    resp: &mut CheckInResponse,
) -> crate::Result<()> {
    if req.accepts_jobs {
        resp.jobs = crate::jobs::deliveries(&app.db, &app.jobs, m, now()).await?;
        resp.inventory_digest = app.jobs.digest(&m.id);
    }
    Ok(())
}

/// Notes what changed in a machine's report worth keeping: updates, failures, rollbacks.
async fn record_events(app: &App, m: &Machine, old: Report, new: &Report) -> crate::Result<()> {
    let t = now();
    if new.health == Health::Healthy
        && (old.current != new.current || old.health != Health::Healthy)
        && let Some(c) = &new.current
    {
        add_event(app, m, t, "healthy", &c.to_string()).await?;
    }
    if new.failed_release.is_some() && new.failed_release != old.failed_release {
        let detail = format!(
            "{}: {}",
            new.failed_release
                .map(|r| r.to_string())
                .unwrap_or_default(),
            new.last_error.as_deref().unwrap_or("no reason given")
        );
        tracing::warn!(machine = %m.id, %detail, "release failed on machine");
        add_event(app, m, t, "failed", &detail).await?;
    }
    // one event per failure (a new `since`), not per retry: a reason may name the time
    if let Some(f) = &new.failing
        && old.failing.as_ref().map(|o| (o.phase, &o.release, o.since))
            != Some((f.phase, &f.release, f.since))
    {
        let detail = format!("{}: {}", f.phase.as_str(), f.reason);
        tracing::warn!(machine = %m.id, %detail, "machine failing");
        add_event(app, m, t, "failing", &detail).await?;
    }
    // The agent's backup: once per change of what keeps it from being made.
    let kind = |r: &Report| r.backup.as_ref().map(|b| b.kind.clone());
    if kind(new) != kind(&old) {
        let detail = match &new.backup {
            Some(b) => format!("{}: {}", b.kind, b.reason),
            None => "made again".to_owned(),
        };
        tracing::warn!(machine = %m.id, %detail, "machine's backup");
        add_event(app, m, t, "backup", &detail).await?;
    }
    // A verification's findings: once per report of a check that found something.
    if let Some(i) = &new.integrity
        && old.integrity.as_ref() != Some(i)
    {
        let paths = |l: &semithin_protocol::api::PathList| {
            let shown: Vec<&str> = l.paths.iter().take(5).map(String::as_str).collect();
            format!("{} path(s): {}", l.count, shown.join(", "))
        };
        let when = if i.at_boot { " (at boot)" } else { "" };
        if i.is_tampered() {
            let detail = format!("{}{when}: {}", i.release, paths(&i.tampered));
            tracing::warn!(machine = %m.id, %detail, "machine differs from its release");
            add_event(app, m, t, "tampered", &detail).await?;
        }
        if !i.repaired.is_empty() {
            let detail = format!("{}{when}: {}", i.release, paths(&i.repaired));
            tracing::warn!(machine = %m.id, %detail, "machine put back parts of its release");
            add_event(app, m, t, "repaired", &detail).await?;
        }
    }
    Ok(())
}

/// Stores an event of a machine within its allowance ([`crate::fleet::EventBudget`]), and keeps
/// only its newest [`crate::fleet::MAX_EVENTS_PER_MACHINE`].
pub(crate) async fn add_event(
    app: &App,
    m: &Machine,
    t: i64,
    kind: &str,
    detail: &str,
) -> crate::Result<()> {
    let allowed = {
        let mut budget = m.events.lock().expect("lock");
        let ok = budget.take(t);
        if !ok && budget.refused == 1 {
            tracing::warn!(
                machine = %m.id,
                "this machine causes events faster than it may: they are not kept until it slows down"
            );
        }
        ok
    };
    if allowed {
        db::add_event(&app.db, &m.id, t, kind, detail).await?;
        db::cap_events(&app.db, &m.id, crate::fleet::MAX_EVENTS_PER_MACHINE).await?;
    }
    Ok(())
}

pub(super) fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '%' | '+'))
}

/// A file of the trust metadata or targets. What is not a regular file there (missing, a
/// directory, below a file) is not found; answers never name the server's paths.
pub(super) async fn send_file(app: &App, path: std::path::PathBuf) -> ApiResult<Response> {
    use std::io::ErrorKind;
    let not_found = || ApiErr::not_found("no such file");
    let read = async {
        let md = tokio::fs::metadata(&path).await?;
        if !md.is_file() {
            return Ok(None);
        }
        tokio::fs::read(&path).await.map(Some)
    };
    match read.await {
        Ok(Some(b)) => {
            app.counters
                .metadata_bytes_sent
                .fetch_add(b.len() as u64, Ordering::Relaxed);
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], b).into_response())
        }
        Ok(None) => Err(not_found()),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::IsADirectory
            ) =>
        {
            Err(not_found())
        }
        Err(e) => Err(ApiErr::internal(format!("reading {}: {e}", path.display()))),
    }
}

#[utoipa::path(get, path = "/api/v1/trust/metadata/{file}", tag = "machines", summary = "A TUF metadata file", params(("file" = String, Path, description = "`root.json`, `N.root.json`, `timestamp.json`, `N.snapshot.json`, `N.targets.json`, ...")), responses((status = 200, description = "The signed metadata (JSON), byte for byte as stored", content_type = "application/octet-stream", body = Vec<u8>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("machine_signature" = []), ("admin_token" = [])))]
pub async fn metadata(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(file): Path<String>,
) -> ApiResult<Response> {
    reader(&app, &method, &uri, &headers, b"")?;
    if !safe_name(&file) || !file.ends_with(".json") {
        return Err(ApiErr::bad(format!("bad metadata file name {file:?}")));
    }
    send_file(
        &app,
        crate::releases::trust_dir(&app.cfg.repo())
            .join("metadata")
            .join(file),
    )
    .await
}

#[utoipa::path(get, path = "/api/v1/trust/targets/{path}", tag = "machines", summary = "A TUF target file (a release's commit object)", params(("path" = String, Path, description = "The consistent target path (`HASH.channels/NAME`)")), responses((status = 200, description = "The target's bytes", content_type = "application/octet-stream", body = Vec<u8>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("machine_signature" = []), ("admin_token" = [])))]
pub async fn target(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> ApiResult<Response> {
    reader(&app, &method, &uri, &headers, b"")?;
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() > 8 || !parts.iter().all(|p| safe_name(p)) {
        return Err(ApiErr::bad(format!("bad target path {path:?}")));
    }
    let mut p = crate::releases::trust_dir(&app.cfg.repo()).join("targets");
    for part in parts {
        p.push(part);
    }
    send_file(&app, p).await
}

fn parse_ref(s: &str) -> ApiResult<(ObjKind, [u8; 32])> {
    let bad = || {
        ApiErr::bad(format!(
            "bad object {s:?}: expected chunk/ID, tree/ID or commit/ID"
        ))
    };
    let (k, id) = s.split_once('/').ok_or_else(bad)?;
    let kind = match k {
        "chunk" => ObjKind::Chunk,
        "tree" => ObjKind::Tree,
        "commit" => ObjKind::Commit,
        _ => return Err(bad()),
    };
    let id = hex::decode(id)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    Ok((kind, id))
}

/// Collects a stream's bytes into chunks for the response body.
struct ChanWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Write for ChanWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= 256 << 10 {
            self.flush()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

fn stream(app: Arc<App>, wanted: Vec<(ObjKind, [u8; 32])>) -> ApiResult<Response> {
    let store = app.published().store.clone();
    let lacking: Vec<String> = wanted
        .iter()
        .filter(|(k, id)| !store.contains(*k, id))
        .take(5)
        .map(|(k, id)| format!("{}/{}", k.name(), hex::encode(id)))
        .collect();
    if !lacking.is_empty() {
        return Err(ApiErr::not_found(format!(
            "the server does not have {}",
            lacking.join(", ")
        )));
    }
    let (tx, rx) = mpsc::channel(8);
    tokio::task::spawn_blocking(move || {
        let mut w = ChanWriter {
            tx: tx.clone(),
            buf: Vec::new(),
        };
        match transfer::send(&store, &wanted, &mut w) {
            Ok(n) => {
                app.counters
                    .object_bytes_sent
                    .fetch_add(n, Ordering::Relaxed);
                app.counters
                    .objects_sent
                    .fetch_add(wanted.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "object stream broken off");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok((
        [(header::CONTENT_TYPE, "application/x-semithin-objects")],
        body,
    )
        .into_response())
}

#[utoipa::path(post, path = "/api/v1/objects", tag = "machines", summary = "An object stream of the objects asked for", request_body = ObjectsRequest, responses((status = 200, description = "The object stream (docs/FORMAT.md)", content_type = "application/x-semithin-objects", body = Vec<u8>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("machine_signature" = []), ("admin_token" = [])))]
pub async fn objects(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    reader(&app, &method, &uri, &headers, &body)?;
    let req: ObjectsRequest = parse(&body)?;
    if req.objects.len() > MAX_OBJECTS_PER_REQUEST {
        return Err(ApiErr::bad(format!(
            "{} objects asked for; at most {MAX_OBJECTS_PER_REQUEST} per request",
            req.objects.len()
        )));
    }
    let mut seen = HashSet::new();
    let mut wanted = Vec::with_capacity(req.objects.len());
    for s in &req.objects {
        let r = parse_ref(s)?;
        if seen.insert(r) {
            wanted.push(r);
        }
    }
    stream(app, wanted)
}

#[utoipa::path(get, path = "/api/v1/objects/{kind}/{id}", tag = "machines", summary = "An object stream of one object", params(("kind" = String, Path, description = "`chunk`, `tree` or `commit`"), ("id" = String, Path, description = "64 hex digits")), responses((status = 200, description = "The object stream", content_type = "application/x-semithin-objects", body = Vec<u8>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("machine_signature" = []), ("admin_token" = [])))]
pub async fn object(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path((kind, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    reader(&app, &method, &uri, &headers, b"")?;
    let r = parse_ref(&format!("{kind}/{id}"))?;
    stream(app, vec![r])
}

/// `GET /api/v1/deltas/{from}/{to}`: the delta pack, built now if needed; ranges resume.
#[utoipa::path(get, path = "/api/v1/deltas/{from}/{to}", tag = "machines", summary = "The delta pack from one release to another; ranges resume", params(("from" = String, Path, description = "The release the machine runs"), ("to" = String, Path, description = "The release it goes to"), ("Range" = Option<String>, Header, description = "`bytes=N-` to resume")), responses((status = 200, description = "The pack", content_type = "application/x-semithin-delta", body = Vec<u8>), (status = 206, description = "The rest of the pack from the range asked", content_type = "application/x-semithin-delta", body = Vec<u8>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("machine_signature" = []), ("admin_token" = [])))]
pub async fn delta(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path((from, to)): Path<(String, String)>,
) -> ApiResult<Response> {
    let machine = reader(&app, &method, &uri, &headers, b"")?;
    let parse = |s: &str| {
        s.parse::<semithin_store::CommitId>()
            .map_err(|_| ApiErr::bad(format!("{s:?} is not a release (a commit id)")))
    };
    let (from, to) = (parse(&from)?, parse(&to)?);
    if let Some(m) = &machine {
        let row = m.snapshot();
        app.delta_allowed(&row, &from, &to).map_err(|e| {
            ApiErr::not_found(format!(
                "no delta pack from {} to {} for this machine: {e}",
                from.short(),
                to.short()
            ))
        })?;
    }
    let store = app.published().store.clone();
    let effort = app.delta_effort(&from, &to);
    let why = crate::deltas::Why::Demand;
    let built = app.deltas.ensure(store, from, to, effort, why).await;
    // A pack that cannot be made (say, a damaged object on the server) is simply not there:
    // the machine fetches objects, which are checked one by one.
    let built = built.map_err(|e| {
        tracing::warn!(from = %from.short(), to = %to.short(), error = %e, "no delta pack");
        // the reason may name the server's files: it stays in the server's log
        ApiErr::not_found("no delta pack could be made (the server's log says why)")
    })?;
    let served = built.ok_or_else(|| {
        ApiErr::not_found(format!(
            "no delta from {} to {}: the server does not hold both releases",
            from.short(),
            to.short()
        ))
    })?;
    let path = served.path.clone();
    let md = std::fs::metadata(&path).map_err(|e| ApiErr::internal(format!("{e}")))?;
    let size = md.len();
    // The pack for a pair never changes once written; its size and mtime name this copy.
    let etag = format!(
        "\"{size}-{}\"",
        md.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let file = std::fs::File::open(&path).map_err(|e| ApiErr::internal(format!("{e}")))?;
    let counters = app.clone();
    super::range::answer(
        &headers,
        super::range::Served {
            file,
            size,
            etag,
            content_type: "application/x-semithin-delta",
            what: "the pack",
        },
        move |n| {
            // the pack is not deleted to make room while it is being sent
            let _lease = &served;
            counters
                .counters
                .delta_bytes_sent
                .fetch_add(n, Ordering::Relaxed);
        },
    )
}
