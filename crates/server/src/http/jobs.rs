//! Job routes: the admin makes, lists, shows and cancels jobs and lists outdated machines; a
//! machine says it runs a delivery (and learns whether it was cancelled).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use semithin_protocol::api::{ApiError, MachineStatus};
use semithin_protocol::inventory::Outdated;
use semithin_protocol::job::{JobInfo, JobRequest, JobStatus, Progress};
use semithin_protocol::selector::Selector;
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiErr, ApiResult, admin, machine, parse};
use crate::jobs::{self, Refused};
use crate::{App, now};

pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show))
        .routes(routes!(cancel))
        .routes(routes!(outdated))
        .routes(routes!(progress))
}

#[utoipa::path(post, path = "/api/v1/admin/jobs", tag = "jobs", summary = "Make a job for the machines a selector matches", request_body = JobRequest, responses((status = 200, description = "The job", body = JobInfo), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn create(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<JobInfo>> {
    admin(&app, &headers)?;
    let req: JobRequest = parse(&body)?;
    match jobs::create(
        &app.db,
        &app.jobs,
        &app.fleet,
        &req.selector,
        req.spec,
        req.signature,
        now(),
    )
    .await?
    {
        Ok(info) => Ok(Json(info)),
        Err(Refused::Bad(e)) => Err(ApiErr::bad(e)),
        Err(Refused::NoMachine(e)) => Err(ApiErr::not_found(e)),
        Err(Refused::Exists(e)) => Err(ApiErr(StatusCode::CONFLICT, e)),
    }
}

#[utoipa::path(get, path = "/api/v1/admin/jobs", tag = "jobs", summary = "The latest jobs", responses((status = 200, description = "Jobs, newest first", body = Vec<JobInfo>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn list(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Json<Vec<JobInfo>>> {
    admin(&app, &headers)?;
    Ok(Json(
        jobs::list(&app.db, &app.jobs, &app.fleet, 200, now()).await?,
    ))
}

fn no_job(id: &str) -> ApiErr {
    ApiErr::not_found(format!("no job has the id {id:?}"))
}

#[utoipa::path(get, path = "/api/v1/admin/jobs/{id}", tag = "jobs", summary = "A job with every machine's result", params(("id" = String, Path, description = "The job's id")), responses((status = 200, description = "The job and its runs", body = JobStatus), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn show(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<JobStatus>> {
    admin(&app, &headers)?;
    jobs::info(&app.db, &app.jobs, &app.fleet, &id, now())
        .await?
        .map(Json)
        .ok_or_else(|| no_job(&id))
}

#[utoipa::path(post, path = "/api/v1/admin/jobs/{id}/cancel", tag = "jobs", summary = "Cancel a job", params(("id" = String, Path, description = "The job's id")), responses((status = 200, description = "The job", body = JobInfo), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn cancel(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<JobInfo>> {
    admin(&app, &headers)?;
    let info = jobs::cancel(&app.db, &app.jobs, &app.fleet, &id, now())
        .await?
        .ok_or_else(|| no_job(&id))?;
    tracing::info!(job = %id, "job cancelled");
    Ok(Json(info))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct OutdatedQuery {
    /// Only the machines this selector matches.
    selector: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/admin/outdated", tag = "jobs", summary = "Machines with pending package updates", params(OutdatedQuery), responses((status = 200, description = "Machines and their upgradable packages", body = Vec<Outdated>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn outdated(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<OutdatedQuery>,
) -> ApiResult<Json<Vec<Outdated>>> {
    admin(&app, &headers)?;
    let sel = match q.selector.as_deref() {
        Some(s) => Selector::parse(s).map_err(|e| ApiErr::bad(e.to_string()))?,
        None => Selector::All,
    };
    Ok(Json(jobs::outdated(&app.db, &app.fleet, &sel).await?))
}

#[utoipa::path(post, path = "/api/v1/jobs/{delivery}/progress", tag = "jobs", summary = "The machine runs a delivery; was it cancelled?", params(("delivery" = String, Path, description = "The delivery id")), request_body(content = String, description = "Empty: the signature covers the method and path"), responses((status = 200, description = "Whether the job was cancelled", body = Progress), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("machine_signature" = [])))]
async fn progress(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(delivery): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Progress>> {
    let m = machine(&app, &method, &uri, &headers, &body)?;
    if m.row.lock().expect("lock").status != MachineStatus::Accepted {
        return Err(ApiErr::forbidden("only accepted machines run jobs"));
    }
    m.store_counter(&app.db).await?;
    let cancelled = jobs::progress(&app.db, &app.jobs, &m, &delivery, now())
        .await?
        .ok_or_else(|| {
            ApiErr::not_found(format!("no job delivery {delivery:?} for this machine"))
        })?;
    Ok(Json(Progress { cancelled }))
}
