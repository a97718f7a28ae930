//! The rollout admin API, `/api/v1/admin/rollouts` (docs/PROTOCOL.md, "Rollouts"): one line of
//! HTTP around each command of [`crate::rollout::Rollouts`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use semithin_protocol::rollout::{RolloutInfo, StartRequest};
use serde::Deserialize;

use super::{ApiErr, ApiResult, admin, parse};
use crate::App;
use crate::rollout::Problem;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/admin/rollouts", get(list).post(start))
        .route("/api/v1/admin/rollouts/{id}", get(show))
        .route("/api/v1/admin/rollouts/{id}/pause", post(pause))
        .route("/api/v1/admin/rollouts/{id}/resume", post(resume))
        .route("/api/v1/admin/rollouts/{id}/abort", post(abort))
        .route("/api/v1/admin/rollouts/{id}/rollback", post(rollback))
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

#[derive(Deserialize)]
struct ListQuery {
    channel: Option<String>,
}

async fn list(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<RolloutInfo>>> {
    admin(&app, &headers)?;
    Ok(Json(app.rollouts.list(&app, q.channel.as_deref()).await?))
}

async fn start(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<RolloutInfo>> {
    admin(&app, &headers)?;
    let req: StartRequest = parse(&body)?;
    Ok(Json(app.rollouts.start(&app, &req).await?))
}

async fn show(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(n): Path<String>,
) -> ApiResult<Json<RolloutInfo>> {
    admin(&app, &headers)?;
    Ok(Json(app.rollouts.info(&app, id(&n)?).await?))
}

async fn pause(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(n): Path<String>,
) -> ApiResult<Json<RolloutInfo>> {
    admin(&app, &headers)?;
    Ok(Json(app.rollouts.pause(&app, id(&n)?).await?))
}

async fn resume(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(n): Path<String>,
) -> ApiResult<Json<RolloutInfo>> {
    admin(&app, &headers)?;
    Ok(Json(app.rollouts.resume(&app, id(&n)?).await?))
}

async fn abort(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(n): Path<String>,
) -> ApiResult<Json<RolloutInfo>> {
    admin(&app, &headers)?;
    Ok(Json(app.rollouts.abort(&app, id(&n)?).await?))
}

async fn rollback(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(n): Path<String>,
) -> ApiResult<Json<RolloutInfo>> {
    admin(&app, &headers)?;
    Ok(Json(app.rollouts.rollback(&app, id(&n)?).await?))
}
