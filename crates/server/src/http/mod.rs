//! The HTTP API (`/api/v1`, docs/PROTOCOL.md): routes, errors as JSON, authentication, limits.

mod access;
mod admin;
pub(crate) mod agent;
mod apt;
mod boot;
mod captures;
mod jobs;
mod offline;
pub mod openapi;
mod range;
mod relayed;
#[cfg(test)]
mod relayed_tests;
mod rollout;
pub mod serve;
#[cfg(test)]
mod tests;
pub mod throttle;
pub mod tls;
pub mod torrent;
mod vars;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use semithin_protocol::api::{ApiError, MachineStatus};
use semithin_protocol::sign;
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::App;
use crate::fleet::Machine;

/// An error answer: a status and a sentence naming the problem.
#[derive(Debug)]
pub struct ApiErr(pub StatusCode, pub String);

impl ApiErr {
    pub fn bad(msg: impl Into<String>) -> Self {
        ApiErr(StatusCode::BAD_REQUEST, msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        ApiErr(StatusCode::NOT_FOUND, msg.into())
    }
    pub fn forbidden(msg: impl Into<String>) -> Self {
        ApiErr(StatusCode::FORBIDDEN, msg.into())
    }
    /// A failure of the server's own: the reason (which may name paths, the database, ...) goes
    /// to the log under an incident number; the answer gives only that number.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        let mut b = [0u8; 4];
        let _ = getrandom::fill(&mut b);
        let incident = hex::encode(b);
        tracing::error!(%incident, error = %e, "request failed");
        ApiErr(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the server failed to answer (incident {incident}: its log has the reason)"),
        )
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        (self.0, axum::Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<crate::Error> for ApiErr {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Busy(m) => ApiErr(StatusCode::SERVICE_UNAVAILABLE, m),
            e => ApiErr::internal(e),
        }
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiErr>;

/// A response body streaming an open file from a blocking task, in 256 KiB pieces; `sent` is
/// told how many bytes each piece held. A read error breaks the body off.
pub fn file_body(mut file: std::fs::File, sent: impl Fn(u64) + Send + 'static) -> axum::body::Body {
    use std::io::Read;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<axum::body::Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    sent(n as u64);
                    let piece = axum::body::Bytes::copy_from_slice(&buf[..n]);
                    if tx.blocking_send(Ok(piece)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Parses a JSON body, naming what is wrong with it.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    semithin_protocol::json::from_slice(body)
        .map_err(|e| ApiErr::bad(format!("bad request body: {e}")))
}

/// The admin token from `Authorization: Bearer TOKEN`, or a dashboard session: its cookie with
/// its CSRF token in `X-CSRF-Token` (crate::web::session).
pub fn admin(app: &App, headers: &HeaderMap) -> ApiResult<()> {
    let Some(v) = headers.get(axum::http::header::AUTHORIZATION) else {
        if let Some(session) = crate::web::session::admin(app, headers) {
            return session.map(|_| ());
        }
        return Err(ApiErr(
            StatusCode::UNAUTHORIZED,
            "this is the admin API: send the admin token as `Authorization: Bearer TOKEN`".into(),
        ));
    };
    let token = v
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if app.is_admin_token(token.trim()) {
        Ok(())
    } else {
        Err(ApiErr(StatusCode::UNAUTHORIZED, "wrong admin token".into()))
    }
}

/// The machine that signed this request (any status: callers decide what a pending machine may
/// do). Each signed request is accepted once (crate::replay): a replay is 409. A handler that
/// changes something calls `Machine::store_counter` before it writes.
pub fn machine(
    app: &App,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<Arc<Machine>> {
    machine_hashed(app, method, uri, headers, blake3::hash(body).as_bytes())
}

/// The machine that signed a request claims to be, before its body is read (the signature is
/// checked once the body is whole, by [`machine_hashed`]): an unknown machine is refused at
/// once.
pub fn claimed(app: &App, headers: &HeaderMap) -> ApiResult<Arc<Machine>> {
    let id = headers
        .get(sign::HEADER_MACHINE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiErr(
                StatusCode::UNAUTHORIZED,
                format!(
                    "unsigned request: the {} header is missing (enroll first)",
                    sign::HEADER_MACHINE
                ),
            )
        })?;
    app.fleet.get(id).ok_or_else(|| {
        ApiErr(
            StatusCode::UNAUTHORIZED,
            format!("no machine {id} is enrolled here"),
        )
    })
}

/// [`machine`] for a body known by its BLAKE3 hash (an upload hashed as it arrived).
pub fn machine_hashed(
    app: &App,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body_hash: &[u8; 32],
) -> ApiResult<Arc<Machine>> {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiErr(
                    StatusCode::UNAUTHORIZED,
                    format!("unsigned request: the {name} header is missing (enroll first)"),
                )
            })
    };
    let id = h(sign::HEADER_MACHINE)?;
    let signed = sign::Headers {
        date: h(sign::HEADER_DATE)?,
        counter: h(sign::HEADER_COUNTER)?,
        signature: h(sign::HEADER_SIGNATURE)?,
    };
    let m = app.fleet.get(id).ok_or_else(|| {
        ApiErr(
            StatusCode::UNAUTHORIZED,
            format!("no machine {id} is enrolled here"),
        )
    })?;
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let key = m.key.as_ref().ok_or_else(|| {
        ApiErr(
            StatusCode::UNAUTHORIZED,
            "request signature refused: the enrolled public key is not a valid ed25519 point"
                .into(),
        )
    })?;
    let counter =
        sign::verify_key_hashed(key, method.as_str(), pq, signed, body_hash, crate::now())
            .map_err(|e| ApiErr(StatusCode::UNAUTHORIZED, e.to_string()))?;
    // Only once the signature holds: an unsigned request cannot use up a counter.
    m.replay
        .lock()
        .expect("lock")
        .accept(counter)
        .map_err(|e| ApiErr(StatusCode::CONFLICT, e.to_string()))?;
    Ok(m)
}

/// A signed request from an accepted machine, or the admin (relays and tools read objects too).
pub fn reader(
    app: &App,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<Option<Arc<Machine>>> {
    if headers.contains_key(axum::http::header::AUTHORIZATION) {
        return admin(app, headers).map(|_| None);
    }
    let m = machine(app, method, uri, headers, body)?;
    let status = m.row.lock().expect("lock").status;
    match status {
        MachineStatus::Accepted => Ok(Some(m)),
        s => Err(ApiErr::forbidden(format!(
            "this machine is {}: only accepted machines fetch releases",
            s.as_str()
        ))),
    }
}

#[utoipa::path(get, path = "/api/v1/health", tag = "monitoring", summary = "Whether the server runs", responses((status = 200, description = "`ok`", content_type = "text/plain", body = String)))]
async fn health() -> &'static str {
    "ok\n"
}

/// `GET /metrics` (admin): the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "monitoring", summary = "The Prometheus text format", responses((status = 200, description = "Metrics (docs/PROTOCOL.md, Monitoring)", content_type = "text/plain", body = String), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Response> {
    admin(&app, &headers)?;
    let app2 = app.clone();
    // Counting 100,000 machines takes a moment: off the async threads.
    let body = tokio::task::spawn_blocking(move || crate::metrics::render(&app2))
        .await
        .map_err(|e| ApiErr::internal(format!("rendering the metrics: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

/// `GET /api/v1/ready`: 200 when the server can serve (its database answers, it is not
/// stopping); 503 naming what is wrong otherwise. `/api/v1/health` only says it runs.
#[utoipa::path(get, path = "/api/v1/ready", tag = "monitoring", summary = "Whether the server can serve", responses((status = 200, description = "`ready`", content_type = "text/plain", body = String), (status = 503, description = "Not ready: `error` says why", body = ApiError), (status = "4XX", description = "Refused: `error` says why", body = ApiError)))]
async fn ready(State(app): State<Arc<App>>) -> ApiResult<&'static str> {
    if *app.shutdown.borrow() {
        return Err(ApiErr(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is stopping".into(),
        ));
    }
    sqlx::query("SELECT 1")
        .execute(&app.db)
        .await
        .map_err(|e| {
            ApiErr(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the database does not answer: {e}"),
            )
        })?;
    Ok("ready\n")
}

pub fn router(app: Arc<App>) -> Router {
    let deadline = Duration::from_secs(app.cfg.request_deadline_secs);
    let long = Duration::from_secs(app.cfg.max_wait_secs as u64 + 30);
    let limit = app.cfg.max_body_bytes;
    let quick = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
        .routes(routes!(agent::enroll))
        .routes(routes!(agent::metadata))
        // the rest of the path: described by hand (openapi::Wildcards)
        .route("/api/v1/trust/targets/{*path}", get(agent::target))
        .merge(boot::quick_routes())
        .merge(admin::routes())
        .merge(crate::relays::routes())
        .merge(relayed::status_routes())
        .merge(offline::routes())
        .merge(jobs::routes())
        .merge(rollout::routes())
        .merge(vars::routes())
        .merge(crate::renew::routes())
        .merge(crate::audit::routes())
        .merge(torrent::routes())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            deadline,
        ));
    // Long polls and object streams: the deadline covers the answer's start; a stream then runs
    // as long as the client reads.
    let slow = OpenApiRouter::new()
        .routes(routes!(agent::checkin))
        .merge(relayed::batch_routes())
        .routes(routes!(agent::objects))
        .routes(routes!(agent::object))
        .routes(routes!(agent::delta))
        .merge(boot::file_routes())
        .merge(captures::admin_routes())
        .route("/apt/{name}/{*path}", get(apt::get))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            long,
        ));
    // A capture's upload: its answer starts once the whole body arrived and was checked.
    let uploads = captures::upload_routes().layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        Duration::from_secs(captures::UPLOAD_DEADLINE_SECS),
    ));
    let (routes, described) = quick.merge(slow).merge(uploads).split_for_parts();
    let spec: Arc<str> = openapi::document(described)
        .to_pretty_json()
        .expect("the OpenAPI description serialises")
        .into();
    // The dashboard's pages are not the API: served beside it, not described.
    let pages = crate::web::routes().layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        deadline,
    ));
    let routes = routes
        .merge(pages)
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let spec = spec.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        spec.to_string(),
                    )
                }
            }),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            crate::audit::record,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            crate::metrics::track,
        ))
        .fallback(|uri: Uri| async move {
            ApiErr::not_found(format!("no such endpoint: {}", uri.path()))
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app.clone());
    // Around the whole router (a layer on `routes` would wrap each route alone, inside the
    // part that answers 405 and adds `Allow`), so that it sees every answer as it leaves.
    Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            json_errors,
        ))
        .layer(axum::middleware::from_fn_with_state(app, access::log))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// Every error answer carries `{"error": ...}`: those that axum and tower make themselves (405
/// for a known path with the wrong method, 408 past the deadline, 413 over the body limit, 400
/// for a path that is not UTF-8, ...) are given a JSON body with a sentence naming the problem.
/// Handlers' errors are JSON already and pass unchanged, and so do all other answers.
async fn json_errors(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    // JSON already, or a page of the dashboard (crate::web) that says what is wrong.
    let is_json = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/html")
    });
    if is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let slow = path == "/api/v1/checkin"
        || path == semithin_protocol::relay::CHECKINS_PATH
        || path.starts_with("/api/v1/objects");
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(|v| format!(" (it takes {v})"))
                .unwrap_or_default();
            format!("{method} is not allowed on {path}{allowed}")
        }
        StatusCode::REQUEST_TIMEOUT => format!(
            "{method} {path} was not answered within the server's deadline of {} s",
            if path == semithin_protocol::capture::UPLOAD_PATH {
                captures::UPLOAD_DEADLINE_SECS
            } else if slow {
                app.cfg.max_wait_secs as u64 + 30
            } else {
                app.cfg.request_deadline_secs
            }
        ),
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the request body is larger than the {} bytes the server accepts",
            app.cfg.max_body_bytes
        ),
        _ if text.is_empty() => format!(
            "{method} {path}: {}",
            status.canonical_reason().unwrap_or("error")
        ),
        _ => format!("{method} {path}: {text}"),
    };
    let body = serde_json::to_vec(&ApiError { error: message }).expect("serialises");
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}
