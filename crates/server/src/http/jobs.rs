//! Job routes: the admin makes, lists, shows and cancels jobs and lists outdated machines; a
//! machine says it runs a delivery (and learns whether it was cancelled).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::routing::{get, post};
use semithin_protocol::api::MachineStatus;
use semithin_protocol::inventory::Outdated;
use semithin_protocol::job::{JobInfo, JobRequest, JobStatus, Progress};
use semithin_protocol::selector::Selector;
use serde::Deserialize;

use super::{ApiErr, ApiResult, admin, machine, parse};
use crate::jobs::{self, Refused};
use crate::{App, now};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/admin/jobs", get(list).post(create))
        .route("/api/v1/admin/jobs/{id}", get(show))
        .route("/api/v1/admin/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/admin/outdated", get(outdated))
        .route("/api/v1/jobs/{delivery}/progress", post(progress))
}

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

async fn list(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Json<Vec<JobInfo>>> {
    admin(&app, &headers)?;
    Ok(Json(
        jobs::list(&app.db, &app.jobs, &app.fleet, 200, now()).await?,
    ))
}

fn no_job(id: &str) -> ApiErr {
    ApiErr::not_found(format!("no job has the id {id:?}"))
}

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

#[derive(Deserialize)]
struct OutdatedQuery {
    selector: Option<String>,
}

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
