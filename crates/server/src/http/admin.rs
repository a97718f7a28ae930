//! The admin API: the fleet, enrollment tokens, assignments, pushes, publish notices, stats.
//! Every route needs the admin token.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{delete, get, post};
use semithin_protocol::api::{
    Affected, AssignRequest, LabelRequest, MachineInfo, MachineStatus, SelectorRequest, Stats,
    TokenInfo, TokenRequest,
};
use semithin_protocol::selector::{self, Selector};
use serde::Deserialize;

use super::{ApiErr, ApiResult, admin, parse};
use crate::db::{self, TokenRow};
use crate::fleet::{self, Machine};
use crate::{App, now};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/admin/machines", get(list))
        .route("/api/v1/admin/machines/{name}", get(show))
        .route("/api/v1/admin/machines/{name}/labels", post(label))
        .route("/api/v1/admin/accept", post(accept))
        .route("/api/v1/admin/reject", post(reject))
        .route("/api/v1/admin/assign", post(assign))
        .route("/api/v1/admin/remove", post(remove))
        .route("/api/v1/admin/push", post(push))
        .route("/api/v1/admin/tokens", get(tokens).post(new_token))
        .route("/api/v1/admin/tokens/{id}", delete(revoke_token))
        .route("/api/v1/admin/published", post(published))
        .route("/api/v1/admin/stats", get(stats))
}

fn selector(s: &str) -> ApiResult<Selector> {
    Selector::parse(s).map_err(|e| ApiErr::bad(e.to_string()))
}

fn info(app: &App, m: &Machine) -> MachineInfo {
    fleet::info(m, fleet::view(app, &m.snapshot()))
}

#[derive(Deserialize)]
pub struct ListQuery {
    selector: Option<String>,
}

async fn list(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<MachineInfo>>> {
    admin(&app, &headers)?;
    let sel = match q.selector.as_deref() {
        Some(s) => selector(s)?,
        None => Selector::All,
    };
    Ok(Json(
        app.fleet
            .select(&sel)
            .iter()
            .map(|m| info(&app, m))
            .collect(),
    ))
}

#[derive(serde::Serialize)]
struct Shown {
    #[serde(flatten)]
    machine: MachineInfo,
    events: Vec<serde_json::Value>,
}

async fn show(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    admin(&app, &headers)?;
    let m = app
        .fleet
        .by_name(&name)
        .ok_or_else(|| ApiErr::not_found(format!("no machine named {name:?}")))?;
    let events = db::events(&app.db, &m.id, 20)
        .await?
        .into_iter()
        .map(|e| serde_json::json!({"at": e.at, "kind": e.kind, "detail": e.detail}))
        .collect();
    let shown = Shown {
        machine: info(&app, &m),
        events,
    };
    Ok(Json(serde_json::to_value(shown).expect("serialises")))
}

async fn label(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<MachineInfo>> {
    admin(&app, &headers)?;
    let req: LabelRequest = parse(&body)?;
    for (k, v) in &req.set {
        selector::parse_label(&format!("{k}={v}")).map_err(|e| ApiErr::bad(e.to_string()))?;
    }
    let m = app
        .fleet
        .by_name(&name)
        .ok_or_else(|| ApiErr::not_found(format!("no machine named {name:?}")))?;
    app.fleet
        .change(&app.db, vec![m.clone()], |r| {
            let before = r.labels.clone();
            for k in &req.remove {
                r.labels.remove(k);
            }
            r.labels.extend(req.set.clone());
            r.labels != before
        })
        .await?;
    // its variable sets may differ now
    m.wake.notify_one();
    Ok(Json(info(&app, &m)))
}

/// Applies `f` to every selected machine and stores the ones it changed (one transaction, then
/// memory); wakes them.
async fn change(
    app: &App,
    sel: &str,
    f: impl Fn(&mut db::MachineRow) -> bool,
) -> ApiResult<Json<Affected>> {
    let sel = selector(sel)?;
    let machines = app.fleet.select(&sel);
    if machines.is_empty() {
        return Err(ApiErr::not_found(format!("no machine matches {sel}")));
    }
    let changed = app.fleet.change(&app.db, machines, f).await?;
    // A moved machine follows once the move is signed (docs/TRUST.md, "Channel assignment"):
    // signed before the machines are woken.
    crate::assignments::sign(app).await?;
    let names = changed
        .iter()
        .map(|m| {
            m.wake.notify_one();
            m.row.lock().expect("lock").name.clone()
        })
        .collect();
    Ok(Json(Affected { machines: names }))
}

async fn accept(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Affected>> {
    admin(&app, &headers)?;
    let req: SelectorRequest = parse(&body)?;
    change(&app, &req.selector, |r| {
        let was = r.status;
        r.status = MachineStatus::Accepted;
        was != MachineStatus::Accepted
    })
    .await
}

async fn reject(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Affected>> {
    admin(&app, &headers)?;
    let req: SelectorRequest = parse(&body)?;
    change(&app, &req.selector, |r| {
        let was = r.status;
        r.status = MachineStatus::Rejected;
        was != MachineStatus::Rejected
    })
    .await
}

async fn assign(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Affected>> {
    admin(&app, &headers)?;
    let req: AssignRequest = parse(&body)?;
    semithin_store::channel::check_name(&req.channel).map_err(|e| ApiErr::bad(e.to_string()))?;
    selector(&req.selector)?;
    if !req.unpublished {
        let p = app.published();
        if !p.releases.contains_key(&req.channel) {
            let names = p.releases.keys().map(String::as_str);
            let hint = semithin_protocol::near::did_you_mean(&req.channel, names.clone());
            let list: Vec<&str> = names.collect();
            return Err(ApiErr::not_found(format!(
                "nothing is published on channel {:?}{hint}; published channels: {}. Publish \
                 it first, or assign it as unpublished (`fleet assign --unpublished`: its \
                 machines wait for its first release)",
                req.channel,
                if list.is_empty() {
                    "none yet".to_owned()
                } else {
                    list.join(", ")
                }
            )));
        }
    }
    let channel = req.channel.clone();
    let affected = change(&app, &req.selector, move |r| {
        let new = Some(channel.clone());
        let changed = r.channel != new;
        r.channel = new;
        changed
    })
    .await?;
    Ok(affected)
}

/// Forgets machines: their rows (and inventories) go, so their keys open nothing from now on;
/// a long poll they hold ends. Jobs' and rollouts' records of them stay as history.
async fn remove(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Affected>> {
    admin(&app, &headers)?;
    let req: SelectorRequest = parse(&body)?;
    let sel = selector(&req.selector)?;
    let machines = app.fleet.select(&sel);
    if machines.is_empty() {
        return Err(ApiErr::not_found(format!("no machine matches {sel}")));
    }
    let mut names = Vec::new();
    for m in machines {
        db::delete_machine(&app.db, &m.id).await?;
        app.fleet.remove(&m.id);
        m.wake.notify_one();
        names.push(m.row.lock().expect("lock").name.clone());
    }
    crate::assignments::sign(&app).await?;
    Ok(Json(Affected { machines: names }))
}

async fn push(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Affected>> {
    admin(&app, &headers)?;
    let req: SelectorRequest = parse(&body)?;
    let sel = selector(&req.selector)?;
    let machines = app.fleet.select(&sel);
    if machines.is_empty() {
        return Err(ApiErr::not_found(format!("no machine matches {sel}")));
    }
    let names = machines
        .iter()
        .map(|m| {
            m.wake.notify_one();
            m.row.lock().expect("lock").name.clone()
        })
        .collect();
    Ok(Json(Affected { machines: names }))
}

fn token_info(t: &TokenRow, secret: Option<String>) -> TokenInfo {
    TokenInfo {
        token: secret,
        id: t.id.parse().expect("token ids are random hex"),
        preauthorized: t.preauthorized,
        labels: t.labels.clone(),
        uses_left: t.uses_left.map(|u| u.max(0) as u32),
        expires_at: t.expires_at,
        created_at: t.created_at,
    }
}

async fn new_token(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<TokenInfo>> {
    admin(&app, &headers)?;
    let req: TokenRequest = parse(&body)?;
    for (k, v) in &req.labels {
        selector::parse_label(&format!("{k}={v}")).map_err(|e| ApiErr::bad(e.to_string()))?;
    }
    let secret = crate::random_token()?;
    let t = now();
    let row = TokenRow {
        // Random, so that it says nothing about the secret.
        id: crate::random_token_id()?,
        preauthorized: req.preauthorized,
        labels: req.labels,
        uses_left: req.uses.map(i64::from),
        expires_at: req
            .expires_in_secs
            .map(|s| t.saturating_add(s.min(i64::MAX as u64) as i64)),
        created_at: t,
    };
    db::insert_token(&app.db, &row, &blake3::hash(secret.as_bytes()).to_hex()).await?;
    Ok(Json(token_info(&row, Some(secret))))
}

async fn tokens(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<TokenInfo>>> {
    admin(&app, &headers)?;
    Ok(Json(
        db::tokens(&app.db)
            .await?
            .iter()
            .map(|t| token_info(t, None))
            .collect(),
    ))
}

/// Revokes a token: it enrolls nothing from now on (machines it enrolled stay enrolled).
async fn revoke_token(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenInfo>> {
    admin(&app, &headers)?;
    let not_found = || ApiErr::not_found(format!("no enrollment token has the id {id:?}"));
    let row = db::token_by_id(&app.db, &id).await?.ok_or_else(not_found)?;
    if !db::delete_token(&app.db, &id).await? {
        return Err(not_found());
    }
    tracing::info!(token = %id, "enrollment token revoked");
    Ok(Json(token_info(&row, None)))
}

async fn published(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Json<Affected>> {
    admin(&app, &headers)?;
    let woken = app.reload().await?;
    Ok(Json(Affected { machines: woken }))
}

async fn stats(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Json<Stats>> {
    admin(&app, &headers)?;
    let c = &app.counters;
    Ok(Json(Stats {
        machines: app.fleet.len() as u64,
        object_bytes_sent: c.object_bytes_sent.load(Ordering::Relaxed),
        objects_sent: c.objects_sent.load(Ordering::Relaxed),
        metadata_bytes_sent: c.metadata_bytes_sent.load(Ordering::Relaxed),
        delta_bytes_sent: c.delta_bytes_sent.load(Ordering::Relaxed),
        boot_bytes_sent: c.boot_bytes_sent.load(Ordering::Relaxed),
        checkins: c.checkins.load(Ordering::Relaxed),
        releases: app
            .published()
            .releases
            .iter()
            .map(|(c, r)| (c.clone(), r.to_hex()))
            .collect(),
    }))
}
