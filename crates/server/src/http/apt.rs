//! `GET /apt/{upstream}/{path}`: the apt caching proxy ([`crate::aptcache`]). Unauthenticated,
//! like any apt mirror: machines' apt cannot sign requests, and everything it serves is public
//! and checked by apt against the repository's signed Release.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{ApiErr, ApiResult};
use crate::App;
use crate::aptcache::Answer;

pub async fn get(
    State(app): State<Arc<App>>,
    Path((name, path)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (file, size) = match app.apt.get(&name, &path).await {
        Answer::File(f, n) => (f, n),
        Answer::NotFound(e) => return Err(ApiErr::not_found(e)),
        Answer::Failed(e) => {
            return Err(ApiErr(axum::http::StatusCode::BAD_GATEWAY, e));
        }
    };
    let body = super::file_body(file, |_| {});
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        body,
    )
        .into_response())
}
