//! The rollout admin API, `/api/v1/admin/rollouts` (docs/PROTOCOL.md, "Rollouts"): one line of
//! HTTP around each command of [`crate::rollout::Rollouts`].

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use semithin_protocol::api::ApiError;
use semithin_protocol::rollout::{PendingInfo, PublishPlan, RolloutInfo, StartRequest};
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiErr, ApiResult, admin, parse};
use crate::App;
use crate::rollout::{Problem, pending};

pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(list, start))
        .routes(routes!(show))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(abort))
        .routes(routes!(rollback))
        .routes(routes!(pending_list, pending_plan))
        .routes(routes!(pending_show))
        .routes(routes!(pending_start))
        .routes(routes!(pending_publish))
        .routes(routes!(pending_published))
}

impl From<Problem> for ApiErr {
    fn from(p: Problem) -> Self {
        match p {
            Problem::Bad(m) => ApiErr::bad(m),
            Problem::NotFound(m) => ApiErr::not_found(m),
            Problem::Conflict(m) => ApiErr(StatusCode::CONFLICT, m),
            Problem::Server(e) => ApiErr::internal(e),
        }
    }
}

fn id(s: &str) -> ApiResult<i64> {
    s.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiErr::bad(format!("{s:?} is not a rollout id (a number)")))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct ListQuery {
    /// Only the rollouts of this channel.
    channel: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/admin/rollouts", tag = "rollouts", summary = "List rollouts", params(ListQuery), responses((status = 200, description = "Rollouts, newest first", body = Vec<RolloutInfo>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn list(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<RolloutInfo>>> {
    admin(&app, &headers)?;
    Ok(Json(app.rollouts.list(&app, q.channel.as_deref()).await?))
}

#[utoipa::path(post, path = "/api/v1/admin/rollouts", tag = "rollouts", summary = "Start a rollout", request_body = StartRequest, responses((status = 200, description = "The rollout", body = RolloutInfo), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn start(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<RolloutInfo>> {
    admin(&app, &headers)?;
    let req: StartRequest = parse(&body)?;
    Ok(Json(app.rollouts.start(&app, &req).await?))
}

#[utoipa::path(get, path = "/api/v1/admin/rollouts/{id}", tag = "rollouts", summary = "One rollout by wave and machine", params(("id" = String, Path, description = "The rollout's number")), responses((status = 200, description = "The rollout", body = RolloutInfo), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn show(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(n): Path<String>,
) -> ApiResult<Json<RolloutInfo>> {
    admin(&app, &headers)?;
    Ok(Json(app.rollouts.info(&app, id(&n)?).await?))
}

#[utoipa::path(post, path = "/api/v1/admin/rollouts/{id}/pause", tag = "rollouts", summary = "Pause a rollout", params(("id" = String, Path, description = "The rollout's number")), responses((status = 200, description = "The rollout", body = RolloutInfo), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn pause(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(n): Path<String>,
) -> ApiResult<Json<RolloutInfo>> {
    admin(&app, &headers)?;
    Ok(Json(app.rollouts.pause(&app, id(&n)?).await?))
}

#[utoipa::path(post, path = "/api/v1/admin/rollouts/{id}/resume", tag = "rollouts", summary = "Resume a rollout", params(("id" = String, Path, description = "The rollout's number")), responses((status = 200, description = "The rollout", body = RolloutInfo), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn resume(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(n): Path<String>,
) -> ApiResult<Json<RolloutInfo>> {
    admin(&app, &headers)?;
    Ok(Json(app.rollouts.resume(&app, id(&n)?).await?))
}

#[utoipa::path(post, path = "/api/v1/admin/rollouts/{id}/abort", tag = "rollouts", summary = "Abort a rollout", params(("id" = String, Path, description = "The rollout's number")), responses((status = 200, description = "The rollout", body = RolloutInfo), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn abort(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(n): Path<String>,
) -> ApiResult<Json<RolloutInfo>> {
    admin(&app, &headers)?;
    Ok(Json(app.rollouts.abort(&app, id(&n)?).await?))
}

#[utoipa::path(post, path = "/api/v1/admin/rollouts/{id}/rollback", tag = "rollouts", summary = "Send a rollout's machines back", params(("id" = String, Path, description = "The rollout's number")), responses((status = 200, description = "The rollout", body = RolloutInfo), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn rollback(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(n): Path<String>,
) -> ApiResult<Json<RolloutInfo>> {
    admin(&app, &headers)?;
    Ok(Json(app.rollouts.rollback(&app, id(&n)?).await?))
}

fn pending_id(s: &str) -> ApiResult<i64> {
    s.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiErr::bad(format!("{s:?} is not a request id (a number)")))
}

#[utoipa::path(get, path = "/api/v1/admin/pending", tag = "rollouts", summary = "Rollouts awaiting a signature", responses((status = 200, description = "Rollout requests, newest first (200 at most)", body = Vec<PendingInfo>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn pending_list(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<PendingInfo>>> {
    admin(&app, &headers)?;
    Ok(Json(pending::list(&app).await?))
}

#[utoipa::path(post, path = "/api/v1/admin/pending", tag = "rollouts", summary = "Plan a rollout to be signed by an admin who holds the targets key", request_body = StartRequest, responses((status = 200, description = "The request, awaiting a signature", body = PendingInfo), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn pending_plan(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<PendingInfo>> {
    admin(&app, &headers)?;
    let req: StartRequest = parse(&body)?;
    Ok(Json(pending::plan(&app, &req).await?))
}

#[utoipa::path(get, path = "/api/v1/admin/pending/{id}", tag = "rollouts", summary = "One rollout request", params(("id" = String, Path, description = "The request's number")), responses((status = 200, description = "The request", body = PendingInfo), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn pending_show(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(n): Path<String>,
) -> ApiResult<Json<PendingInfo>> {
    admin(&app, &headers)?;
    Ok(Json(pending::get(&app, pending_id(&n)?).await?))
}

#[utoipa::path(post, path = "/api/v1/admin/pending/{id}/start", tag = "rollouts", summary = "Start a rollout request (its signer's step: the release is signed next)", params(("id" = String, Path, description = "The request's number")), responses((status = 200, description = "The rollout started, publishing until its release is signed", body = RolloutInfo), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn pending_start(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(n): Path<String>,
) -> ApiResult<Json<RolloutInfo>> {
    admin(&app, &headers)?;
    Ok(Json(pending::start(&app, pending_id(&n)?).await?))
}

#[utoipa::path(post, path = "/api/v1/admin/pending/publish", tag = "rollouts", summary = "Plan a publish to be signed by an admin who holds the targets key", request_body = PublishPlan, responses((status = 200, description = "The request, awaiting a signature", body = PendingInfo), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn pending_publish(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<PendingInfo>> {
    admin(&app, &headers)?;
    let req: PublishPlan = parse(&body)?;
    Ok(Json(pending::plan_publish(&app, &req).await?))
}

#[utoipa::path(post, path = "/api/v1/admin/pending/{id}/published", tag = "rollouts", summary = "Record that a publish request was signed (its channel is at its release)", params(("id" = String, Path, description = "The request's number")), responses((status = 200, description = "The request", body = PendingInfo), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn pending_published(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(n): Path<String>,
) -> ApiResult<Json<PendingInfo>> {
    admin(&app, &headers)?;
    Ok(Json(pending::published(&app, pending_id(&n)?).await?))
}
