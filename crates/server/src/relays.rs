//! Relays as the server sees them (docs/RELAY.md): the path of relays each machine's check-in
//! came through (the `X-Semithin-Relay` header each relay appends its name to), and the
//! upstreams machines report as bad. The header is not signed (relays add to it): it says where
//! a machine's requests came from, for the admin's view, and decides nothing. And where the
//! admin places machines (`POST /api/v1/admin/placement`, `fleet move --relay`).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use semithin_protocol::api::{Affected, ApiError, BadUpstream, MAX_PLACEMENT, PlacementRequest};
use semithin_protocol::relay::{RelayHealth, RelayStatus};
use semithin_protocol::selector::Selector;
use sqlx::{Row, SqlitePool};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::App;
use crate::error::{Error, Result};
use crate::fleet::{Fleet, Machine};
use crate::http::{ApiErr, ApiResult, admin, parse};

pub const HEADER: &str = "x-semithin-relay";

/// At most this many relays between a machine and the server.
pub const MAX_HOPS: usize = 16;

/// The relay path a request names: names separated by commas, nearest the machine first.
pub fn header_path(headers: &HeaderMap) -> std::result::Result<Vec<String>, String> {
    let Some(v) = headers.get(HEADER) else {
        return Ok(Vec::new());
    };
    let v = v
        .to_str()
        .map_err(|_| format!("{HEADER}: not ASCII text"))?;
    check_path(v.split(',').map(|s| s.trim().to_owned()).collect())
}

/// A relay path as received (a header, or a batch's entry and its header): at most
/// [`MAX_HOPS`] names, each a machine name.
pub fn check_path(names: Vec<String>) -> std::result::Result<Vec<String>, String> {
    if names.len() > MAX_HOPS {
        return Err(format!(
            "{HEADER}: {} relays; at most {MAX_HOPS}",
            names.len()
        ));
    }
    for n in &names {
        semithin_protocol::selector::check_name(n)
            .map_err(|e| format!("{HEADER}: relay name {n:?}: {e}"))?;
    }
    Ok(names)
}

pub async fn load(pool: &SqlitePool, fleet: &Fleet) -> Result<()> {
    let rows = sqlx::query("SELECT machine, path FROM machine_relays")
        .fetch_all(pool)
        .await
        .map_err(|e| Error::db("loading relay paths", e))?;
    for r in rows {
        let id: String = r.get(0);
        let path: String = r.get(1);
        if let Some(m) = fleet.get(&id) {
            *m.relay_path.lock().expect("lock") = split(&path);
        }
    }
    let rows = sqlx::query("SELECT machine, upstreams FROM machine_placement")
        .fetch_all(pool)
        .await
        .map_err(|e| Error::db("loading placements", e))?;
    for r in rows {
        let id: String = r.get(0);
        let urls: String = r.get(1);
        if let Some(m) = fleet.get(&id) {
            *m.placement.lock().expect("lock") = split(&urls);
        }
    }
    let rows = sqlx::query("SELECT machine, at, status FROM relay_status")
        .fetch_all(pool)
        .await
        .map_err(|e| Error::db("loading relays' health", e))?;
    for r in rows {
        let id: String = r.get(0);
        let at: i64 = r.get(1);
        let status: String = r.get(2);
        if let Some(m) = fleet.get(&id)
            && let Ok(status) = serde_json::from_str::<RelayStatus>(&status)
        {
            *m.relay_health.lock().expect("lock") = Some(RelayHealth { at, status });
        }
    }
    Ok(())
}

/// Stores a relay's report of its own health (the database first), at time `t`. The relay's
/// signature was checked: it is the machine `m`.
pub async fn record_status(app: &App, m: &Machine, s: &RelayStatus, t: i64) -> Result<()> {
    let text = serde_json::to_string(s).expect("serialises");
    sqlx::query(
        "INSERT INTO relay_status (machine, at, status) VALUES ($1, $2, $3) \
         ON CONFLICT (machine) DO UPDATE SET at = $2, status = $3",
    )
    .bind(&m.id)
    .bind(t)
    .bind(text)
    .execute(&app.db)
    .await
    .map_err(|e| Error::db("storing a relay's health", e))?;
    *m.relay_health.lock().expect("lock") = Some(RelayHealth {
        at: t,
        status: s.clone(),
    });
    Ok(())
}

/// The relay a placement names: a URL as it is, or the name of a relay that reported the URL
/// its children reach it at. An unknown name is refused with the relays the server knows.
pub fn resolve(fleet: &Fleet, s: &str) -> std::result::Result<String, String> {
    if s.contains("://") {
        check_url(s)?;
        return Ok(s.to_owned());
    }
    let known = || {
        let mut names: Vec<String> = fleet
            .all()
            .iter()
            .filter_map(|m| {
                let h = m.relay_health.lock().expect("lock");
                let url = h.as_ref()?.status.url.clone()?;
                Some(format!("{} ({url})", m.row.lock().expect("lock").name))
            })
            .collect();
        names.sort();
        if names.is_empty() {
            "none has reported its URL (`semithin relay --url`)".to_owned()
        } else {
            names.join(", ")
        }
    };
    let m = fleet
        .by_name(s)
        .ok_or_else(|| format!("no relay {s:?}; the relays known: {}", known()))?;
    let url = m
        .relay_health
        .lock()
        .expect("lock")
        .as_ref()
        .and_then(|h| h.status.url.clone());
    let url = url.ok_or_else(|| {
        format!(
            "{s:?} has not reported a URL as a relay (started with `semithin relay --url`?); the \
             relays known: {}",
            known()
        )
    })?;
    check_url(&url)?;
    Ok(url)
}

pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(place))
}

/// A relay URL a placement may name: http(s), a host, no query, fragment or credentials, no
/// comma (the stored form is a list).
fn check_url(u: &str) -> std::result::Result<(), String> {
    let url = url::Url::parse(u).map_err(|e| format!("relay URL {u:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https")
        || url.host().is_none()
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
        || u.contains(',')
        || u.len() > 512
    {
        return Err(format!(
            "relay URL {u:?}: expected http(s)://HOST[:PORT][/PREFIX], no query, credentials or comma"
        ));
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/admin/placement", tag = "admin", summary = "Place machines under relays (tried in order before their configured servers)", request_body = PlacementRequest, responses((status = 200, description = "The machines placed", body = Affected), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn place(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Affected>> {
    admin(&app, &headers)?;
    let req: PlacementRequest = parse(&body)?;
    if req.upstreams.len() > MAX_PLACEMENT {
        return Err(ApiErr::bad(format!(
            "{} relays; at most {MAX_PLACEMENT}",
            req.upstreams.len()
        )));
    }
    let mut upstreams = Vec::with_capacity(req.upstreams.len());
    for u in &req.upstreams {
        upstreams.push(resolve(&app.fleet, u).map_err(ApiErr::bad)?);
    }
    let req = PlacementRequest { upstreams, ..req };
    let sel = Selector::parse(&req.selector).map_err(|e| ApiErr::bad(e.to_string()))?;
    let machines = app.fleet.select(&sel);
    if machines.is_empty() {
        return Err(ApiErr::not_found(format!("no machine matches {sel}")));
    }
    let mut names = Vec::new();
    for m in machines {
        if *m.placement.lock().expect("lock") == req.upstreams {
            continue;
        }
        let q = if req.upstreams.is_empty() {
            sqlx::query("DELETE FROM machine_placement WHERE machine = $1").bind(&m.id)
        } else {
            sqlx::query(
                "INSERT INTO machine_placement (machine, upstreams) VALUES ($1, $2) \
                 ON CONFLICT (machine) DO UPDATE SET upstreams = $2",
            )
            .bind(&m.id)
            .bind(req.upstreams.join(","))
        };
        q.execute(&app.db)
            .await
            .map_err(|e| ApiErr::internal(Error::db("storing a placement", e)))?;
        *m.placement.lock().expect("lock") = req.upstreams.clone();
        m.wake.notify_one();
        names.push(m.row.lock().expect("lock").name.clone());
    }
    Ok(Json(Affected { machines: names }))
}

fn split(path: &str) -> Vec<String> {
    path.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Stores a check-in's relay path when it changed (the database first), and the bad upstreams
/// it reports as events.
pub async fn record(
    app: &App,
    m: &Machine,
    path: Vec<String>,
    bad: &[BadUpstream],
    t: i64,
) -> Result<()> {
    let changed = *m.relay_path.lock().expect("lock") != path;
    if changed {
        let fail = |e| Error::db("storing the relay path", e);
        if path.is_empty() {
            sqlx::query("DELETE FROM machine_relays WHERE machine = $1")
                .bind(&m.id)
                .execute(&app.db)
                .await
                .map_err(fail)?;
        } else {
            sqlx::query(
                "INSERT INTO machine_relays (machine, path, seen_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (machine) DO UPDATE SET path = $2, seen_at = $3",
            )
            .bind(&m.id)
            .bind(path.join(","))
            .bind(t)
            .execute(&app.db)
            .await
            .map_err(fail)?;
        }
        *m.relay_path.lock().expect("lock") = path;
    }
    for b in bad {
        let detail = format!("{}: {}", b.url, b.reason);
        tracing::warn!(machine = %m.id, %detail, "machine left a bad upstream");
        crate::http::agent::add_event(app, m, t, "bad-upstream", &detail).await?;
    }
    Ok(())
}
