//! The admin API: the fleet, enrollment tokens, assignments, pushes, publish notices, stats.
//! Every route needs the admin token.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use semithin_protocol::api::{
    Affected, ApiError, AssignRequest, LabelRequest, MachineInfo, MachineStatus, SelectorRequest,
    Stats, TokenInfo, TokenRequest,
};
use semithin_protocol::selector::{self, Selector};
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiErr, ApiResult, admin, parse};
use crate::db::{self, TokenRow};
use crate::fleet::{self, Machine};
use crate::{App, now};

pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show))
        .routes(routes!(label))
        .routes(routes!(accept))
        .routes(routes!(reject))
        .routes(routes!(assign))
        .routes(routes!(remove))
        .routes(routes!(push))
        .routes(routes!(tokens, new_token))
        .routes(routes!(revoke_token))
        .routes(routes!(published))
        .routes(routes!(stats))
}

fn selector(s: &str) -> ApiResult<Selector> {
    Selector::parse(s).map_err(|e| ApiErr::bad(e.to_string()))
}

fn info(app: &App, m: &Machine) -> MachineInfo {
    fleet::info(m, fleet::view(app, &m.snapshot()))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only the machines this selector matches (a name, `key=value[,...]`, `*`).
    selector: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/admin/machines", tag = "admin", summary = "List machines, optionally by selector", params(ListQuery), responses((status = 200, description = "The machines, sorted by name", body = Vec<MachineInfo>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
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

#[utoipa::path(get, path = "/api/v1/admin/machines/{name}", tag = "admin", summary = "One machine with its recent events", params(("name" = String, Path, description = "The machine's name")), responses((status = 200, description = "`MachineInfo` with `events`", body = Object), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
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

#[utoipa::path(post, path = "/api/v1/admin/machines/{name}/labels", tag = "admin", summary = "Set and remove labels", params(("name" = String, Path, description = "The machine's name")), request_body = LabelRequest, responses((status = 200, description = "The machine after the change", body = MachineInfo), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
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

#[utoipa::path(post, path = "/api/v1/admin/accept", tag = "admin", summary = "Accept machines", request_body = SelectorRequest, responses((status = 200, description = "The machines accepted", body = Affected), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
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

#[utoipa::path(post, path = "/api/v1/admin/reject", tag = "admin", summary = "Reject machines", request_body = SelectorRequest, responses((status = 200, description = "The machines rejected", body = Affected), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
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

#[utoipa::path(post, path = "/api/v1/admin/assign", tag = "admin", summary = "Make machines follow a channel", request_body = AssignRequest, responses((status = 200, description = "The machines assigned", body = Affected), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
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
        published_channel(&app, &req.channel).map_err(|e| {
            ApiErr(
                e.0,
                format!(
                    "{}. Publish it first, or assign it as unpublished (`fleet assign \
                     --unpublished`: its machines wait for its first release)",
                    e.1
                ),
            )
        })?;
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

/// 404 naming the published channels (and the one meant) unless `channel` is published.
fn published_channel(app: &App, channel: &str) -> ApiResult<()> {
    let p = app.published();
    if p.releases.contains_key(channel) {
        return Ok(());
    }
    let names = p.releases.keys().map(String::as_str);
    let hint = semithin_protocol::near::did_you_mean(channel, names.clone());
    let list: Vec<&str> = names.collect();
    Err(ApiErr::not_found(format!(
        "nothing is published on channel {channel:?}{hint}; published channels: {}",
        if list.is_empty() {
            "none yet".to_owned()
        } else {
            list.join(", ")
        }
    )))
}

/// Forgets machines: their rows (and inventories) go, so their keys open nothing from now on;
/// a long poll they hold ends. Jobs' and rollouts' records of them stay as history.
#[utoipa::path(post, path = "/api/v1/admin/remove", tag = "admin", summary = "Forget machines", request_body = SelectorRequest, responses((status = 200, description = "The machines removed", body = Affected), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
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

#[utoipa::path(post, path = "/api/v1/admin/push", tag = "admin", summary = "Wake machines", request_body = SelectorRequest, responses((status = 200, description = "The machines woken", body = Affected), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
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
        channel: t.channel.clone(),
    }
}

#[utoipa::path(post, path = "/api/v1/admin/tokens", tag = "admin", summary = "Make an enrollment token", request_body = TokenRequest, responses((status = 200, description = "The token (its secret shown this once)", body = TokenInfo), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
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
    if let Some(c) = &req.channel {
        semithin_store::channel::check_name(c).map_err(|e| ApiErr::bad(format!("channel: {e}")))?;
        published_channel(&app, c)?;
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
        channel: req.channel,
    };
    db::insert_token(&app.db, &row, &blake3::hash(secret.as_bytes()).to_hex()).await?;
    Ok(Json(token_info(&row, Some(secret))))
}

#[utoipa::path(get, path = "/api/v1/admin/tokens", tag = "admin", summary = "List enrollment tokens", responses((status = 200, description = "The tokens, without their secrets", body = Vec<TokenInfo>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
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
#[utoipa::path(delete, path = "/api/v1/admin/tokens/{id}", tag = "admin", summary = "Revoke an enrollment token", params(("id" = String, Path, description = "The token's id")), responses((status = 200, description = "The token revoked", body = TokenInfo), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
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

#[utoipa::path(post, path = "/api/v1/admin/published", tag = "admin", summary = "Re-read the repository after a publish", responses((status = 200, description = "The machines woken", body = Affected), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn published(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Json<Affected>> {
    admin(&app, &headers)?;
    let woken = app.reload().await?;
    Ok(Json(Affected { machines: woken }))
}

#[utoipa::path(get, path = "/api/v1/admin/stats", tag = "admin", summary = "Counters and the published releases", responses((status = 200, description = "Counters", body = Stats), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
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
        checkins_batched: c.checkins_batched.load(Ordering::Relaxed),
        checkin_batches: c.checkin_batches.load(Ordering::Relaxed),
        polls_held: c.polls_held.load(Ordering::Relaxed),
        releases: app
            .published()
            .releases
            .iter()
            .map(|(c, r)| (c.clone(), r.to_hex()))
            .collect(),
    }))
}
