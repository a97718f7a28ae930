//! Captures (docs/PROTOCOL.md, "Captures"): a machine uploads its writable layer, signed; the
//! admin lists, fetches and deletes them.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use semithin_protocol::api::ApiError;
use semithin_protocol::api::MachineStatus;
use semithin_protocol::capture::CaptureInfo;
use tokio_stream::StreamExt;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiErr, ApiResult, admin, claimed, file_body, machine_hashed};
use crate::App;
use crate::captures::check_archive;

/// How long an upload may take, to the end of its answer.
pub const UPLOAD_DEADLINE_SECS: u64 = 3600;

pub fn upload_routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(upload))
}

pub fn admin_routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(one, remove))
        .routes(routes!(archive))
}

/// An upload's file, removed unless it was stored.
struct Upload(Option<std::path::PathBuf>);

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn too_large(max: u64) -> ApiErr {
    ApiErr(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the capture is larger than the {max} bytes the server accepts (capture_max_bytes): \
             capture fewer paths"
        ),
    )
}

/// `POST /api/v1/machines/capture`: the body (a tar.zst) is written to a file as it arrives,
/// hashed and bounded; the signature is checked over its hash, then the archive is read
/// through; only then is it stored and recorded.
#[utoipa::path(post, path = "/api/v1/machines/capture", tag = "captures", summary = "A machine sends its capture (tar.zst, signed over its hash)", request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The capture: a tar archive compressed with zstd"), responses((status = 200, description = "The capture as kept", body = CaptureInfo), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("machine_signature" = [])))]
async fn upload(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<CaptureInfo>> {
    let max = app.captures.max_bytes;
    // who it claims to be, before a byte is written
    let who = claimed(&app, &headers)?;
    if who.row.lock().expect("lock").status != MachineStatus::Accepted {
        return Err(ApiErr::forbidden(
            "only accepted machines send captures".to_owned(),
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    let path = app.captures.upload_path()?;
    let mut upload = Upload(Some(path.clone()));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let p = path.clone();
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&p)?;
        while let Some(b) = rx.blocking_recv() {
            f.write_all(&b)?;
        }
        f.sync_all()
    });
    let mut hash = blake3::Hasher::new();
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    let mut failed = None;
    while let Some(piece) = stream.next().await {
        let piece = match piece {
            Ok(p) => p,
            Err(e) => {
                failed = Some(ApiErr::bad(format!("reading the capture: {e}")));
                break;
            }
        };
        size += piece.len() as u64;
        if size > max {
            failed = Some(too_large(max));
            break;
        }
        hash.update(&piece);
        if tx.send(piece).await.is_err() {
            break;
        }
    }
    drop(tx);
    let written = writer.await.map_err(ApiErr::internal)?;
    if let Some(e) = failed {
        return Err(e);
    }
    written.map_err(ApiErr::internal)?;
    let hash = hash.finalize();
    let m = machine_hashed(&app, &method, &uri, &headers, hash.as_bytes())?;
    let max_unpacked = app.captures.max_unpacked;
    let p = path.clone();
    let checked = tokio::task::spawn_blocking(move || check_archive(&p, max_unpacked))
        .await
        .map_err(ApiErr::internal)?
        .map_err(|e| ApiErr::bad(format!("the capture is not a valid tar.zst: {e}")))?;
    m.store_counter(&app.db).await?;
    let name = m.row.lock().expect("lock").name.clone();
    let hex = hash.to_hex().to_string();
    let info = app
        .captures
        .add(&app.db, (&m.id, &name), &path, &hex, size, checked)
        .await?;
    upload.0 = None;
    tracing::info!(capture = info.id, machine = %name, bytes = size, "capture stored");
    if app.cfg.auto_bake {
        tokio::spawn(crate::captures::auto_bake(app.clone(), info.clone()));
    }
    Ok(Json(info))
}

#[utoipa::path(get, path = "/api/v1/admin/captures", tag = "captures", summary = "List captures", params(("machine" = Option<String>, Query, description = "Only this machine's captures")), responses((status = 200, description = "Captures, newest first", body = Vec<CaptureInfo>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn list(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult<Json<Vec<CaptureInfo>>> {
    admin(&app, &headers)?;
    let machine = q.get("machine").map(String::as_str);
    if let Some(m) = machine
        && app.fleet.by_name(m).is_none()
        && app.fleet.get(m).is_none()
        && app.captures.list(&app.db, Some(m)).await?.is_empty()
    {
        return Err(ApiErr::not_found(format!("no machine {m:?} is known here")));
    }
    Ok(Json(app.captures.list(&app.db, machine).await?))
}

fn capture_id(id: &str) -> ApiResult<u64> {
    id.parse()
        .map_err(|_| ApiErr::bad(format!("bad capture id {id:?}: a capture id is a number")))
}

async fn found(app: &App, id: &str) -> ApiResult<CaptureInfo> {
    let n = capture_id(id)?;
    app.captures
        .get(&app.db, n)
        .await?
        .ok_or_else(|| ApiErr::not_found(format!("no capture {n}")))
}

#[utoipa::path(get, path = "/api/v1/admin/captures/{id}", tag = "captures", summary = "One capture", params(("id" = String, Path, description = "The capture's number")), responses((status = 200, description = "The capture", body = CaptureInfo), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn one(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<CaptureInfo>> {
    admin(&app, &headers)?;
    Ok(Json(found(&app, &id).await?))
}

#[utoipa::path(delete, path = "/api/v1/admin/captures/{id}", tag = "captures", summary = "Delete a capture", params(("id" = String, Path, description = "The capture's number")), responses((status = 200, description = "The capture deleted", body = CaptureInfo), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn remove(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<CaptureInfo>> {
    admin(&app, &headers)?;
    let n = capture_id(&id)?;
    app.captures
        .delete(&app.db, n)
        .await?
        .map(Json)
        .ok_or_else(|| ApiErr::not_found(format!("no capture {n}")))
}

/// The tar.zst as the machine sent it.
#[utoipa::path(get, path = "/api/v1/admin/captures/{id}/archive", tag = "captures", summary = "A capture's archive", params(("id" = String, Path, description = "The capture's number")), responses((status = 200, description = "The tar.zst", content_type = "application/zstd", body = Vec<u8>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn archive(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    admin(&app, &headers)?;
    let info = found(&app, &id).await?;
    let f = std::fs::File::open(app.captures.file(&info.hash)).map_err(ApiErr::internal)?;
    let mut r = file_body(f, |_| {}).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zstd"),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(info.size));
    Ok(r)
}
