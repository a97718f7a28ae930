//! The audit log: every request of the admin API that asks for a change (a method other than
//! GET or HEAD under `/api/v1/admin/`), allowed or refused, is stored with which token sent it,
//! the user the client names, its address, the request, the status and the machines the answer
//! names, before the answer leaves (docs/PROTOCOL.md, "Audit log"). `GET /api/v1/admin/audit`
//! lists it (`semithin audit`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use semithin_protocol::api::ApiError;
use semithin_protocol::audit::{AuditEntry, USER_HEADER};
use serde::Deserialize;
use sqlx::Row;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::http::{ApiErr, ApiResult, admin};
use crate::{App, now};

/// The most of a request body kept.
const MAX_REQUEST: usize = 4096;
/// Answers larger than this are not read for machine names.
const MAX_ANSWER: usize = 1 << 20;
/// The most entries one listing returns.
const MAX_LIST: u32 = 10_000;

fn audited(method: &Method, path: &str) -> bool {
    path.starts_with("/api/v1/admin/") && method != Method::GET && method != Method::HEAD
}

/// Which admin token: 16 hex digits of its BLAKE3, never the token.
fn actor(app: &App, headers: &HeaderMap) -> String {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token {
        Some(t) if app.is_admin_token(t) => {
            crate::web::session::actor_of(&blake3::hash(t.as_bytes()))
        }
        // the dashboard: the session's token (crate::web::session), with its CSRF token
        None if !headers.contains_key(header::AUTHORIZATION) => {
            match crate::web::session::admin(app, headers) {
                Some(Ok(s)) => s.actor,
                _ => "refused".into(),
            }
        }
        _ => "refused".into(),
    }
}

/// Printable, bounded text of a header or a body, for the log.
fn clip(s: &str, max: usize) -> String {
    let mut used = 0;
    s.chars()
        .take_while(|c| {
            used += c.len_utf8();
            used <= max
        })
        .filter(|c| !c.is_control())
        .collect()
}

/// The middleware: records audited requests, passes every other one through untouched.
pub async fn record(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if !audited(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let ip = crate::http::throttle::client_ip(peer, &parts.headers, &app.cfg.trusted_proxies);
    let actor = actor(&app, &parts.headers);
    let user = parts
        .headers
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| clip(v, 64))
        .filter(|v| !v.is_empty());
    let method = parts.method.to_string();
    let path = parts.uri.path().to_owned();
    // The body is read here within the server's limit; the handler gets the same bytes.
    let bytes = match axum::body::to_bytes(body, app.cfg.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return ApiErr(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than the {} bytes the server accepts",
                    app.cfg.max_body_bytes
                ),
            )
            .into_response();
        }
    };
    let request = if bytes.is_empty() {
        String::new()
    } else if serde_json::from_slice::<serde_json::Value>(&bytes).is_ok() {
        clip(&String::from_utf8_lossy(&bytes), MAX_REQUEST)
    } else {
        format!("({} bytes, not JSON)", bytes.len())
    };
    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let status = resp.status();
    let (rparts, rbody) = resp.into_parts();
    let answer = axum::body::to_bytes(rbody, MAX_ANSWER)
        .await
        .unwrap_or_default();
    let json: Option<serde_json::Value> = serde_json::from_slice(&answer).ok();
    let machines: Vec<String> = json
        .as_ref()
        .and_then(|v| v.get("machines"))
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    // A request on one machine (`/api/v1/admin/machines/NAME/labels`) names it in its path.
    let machines = if machines.is_empty() {
        path.strip_prefix("/api/v1/admin/machines/")
            .and_then(|rest| rest.split('/').next())
            .filter(|n| !n.is_empty())
            .map(|n| vec![n.to_owned()])
            .unwrap_or_default()
    } else {
        machines
    };
    let error = json
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|v| v.as_str())
        .map(|e| clip(e, 1024));
    let stored = sqlx::query(
        "INSERT INTO audit (at, actor, user_name, ip, method, path, request, status, machines, \
         error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(now())
    .bind(&actor)
    .bind(&user)
    .bind(ip.to_string())
    .bind(&method)
    .bind(&path)
    .bind(&request)
    .bind(i64::from(status.as_u16()))
    .bind(serde_json::to_string(&machines).expect("strings serialise"))
    .bind(&error)
    .execute(&app.db)
    .await;
    if let Err(e) = stored {
        // The change is made; that it could not be recorded is said loudly.
        tracing::error!(error = %e, %method, %path, %actor, "recording an admin request in the audit log");
    }
    tracing::info!(target: "semithin::audit", %actor, user = user.as_deref().unwrap_or("-"), %ip, %method, %path, status = status.as_u16(), machines = machines.len(), "admin request");
    Response::from_parts(rparts, Body::from(answer))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct ListQuery {
    /// The newest this many (default 100).
    limit: Option<u32>,
    /// Only entries at or after this time (seconds since the epoch).
    since: Option<i64>,
    /// Only entries naming this machine.
    machine: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "admin", summary = "The audit log of admin changes", params(ListQuery), responses((status = 200, description = "Entries, newest first", body = Vec<AuditEntry>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn list(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    admin(&app, &headers)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIST {
        return Err(ApiErr::bad(format!(
            "limit {limit}: between 1 and {MAX_LIST}"
        )));
    }
    let out = entries(&app.db, limit, q.since.unwrap_or(0), q.machine.as_deref())
        .await
        .map_err(|e| ApiErr::internal(format!("reading the audit log: {e}")))?;
    Ok(Json(out))
}

/// The newest `limit` entries at or after `since`, only those naming `machine` when given
/// (the API and the dashboard's page).
pub async fn entries(
    db: &sqlx::SqlitePool,
    limit: u32,
    since: i64,
    machine: Option<&str>,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, at, actor, user_name, ip, method, path, request, status, machines, error \
         FROM audit WHERE at >= $1 AND ($2 IS NULL OR EXISTS (SELECT 1 FROM json_each(machines) \
         WHERE value = $2)) ORDER BY id DESC LIMIT $3",
    )
    .bind(since)
    .bind(machine)
    .bind(i64::from(limit))
    .fetch_all(db)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let machines: String = r.get("machines");
        out.push(AuditEntry {
            id: r.get("id"),
            at: r.get("at"),
            actor: r.get("actor"),
            user: r.get("user_name"),
            ip: r.get("ip"),
            method: r.get("method"),
            path: r.get("path"),
            request: r.get("request"),
            status: u16::try_from(r.get::<i64, _>("status")).unwrap_or(0),
            machines: serde_json::from_str(&machines).unwrap_or_default(),
            error: r.get("error"),
        });
    }
    Ok(out)
}

pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(list))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_admin_changes_are_audited_and_text_is_bounded() {
        assert!(audited(&Method::POST, "/api/v1/admin/assign"));
        assert!(audited(&Method::DELETE, "/api/v1/admin/tokens/3"));
        assert!(audited(&Method::PUT, "/api/v1/admin/vars"));
        assert!(!audited(&Method::GET, "/api/v1/admin/machines"));
        assert!(!audited(&Method::POST, "/api/v1/checkin"));
        assert!(!audited(&Method::POST, "/api/v1/objects"));
        assert_eq!(clip("héllo\u{7}", 2), "h");
        assert_eq!(clip("ab\ncd", 10), "abcd");
    }
}
