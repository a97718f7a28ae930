//! `GET /apt/{upstream}/{path}`: the apt caching proxy ([`crate::aptcache`]). Unauthenticated,
//! like any apt mirror: machines' apt cannot sign requests, and everything it serves is public
//! and checked by apt against the repository's signed Release.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use semithin_protocol::api::ApiError;

use super::{ApiErr, ApiResult};
use crate::App;
use crate::aptcache::Answer;

#[utoipa::path(get, path = "/apt/{name}/{path}", tag = "apt", summary = "A file of an apt upstream, through the caching proxy", params(("name" = String, Path, description = "The upstream's name"), ("path" = String, Path, description = "The file below the upstream's base")), responses((status = 200, description = "The file", content_type = "application/octet-stream", body = Vec<u8>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)))]
pub async fn get(
    State(app): State<Arc<App>>,
    Path((name, path)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (body, size) = match app.apt.get(&name, &path).await {
        Answer::File(f, n) => (super::file_body(f, |_| {}), Some(n)),
        Answer::Stream(rx, n) => (
            Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
            n,
        ),
        Answer::Bad(e) => return Err(ApiErr::bad(e)),
        Answer::NotFound(e) => return Err(ApiErr::not_found(e)),
        Answer::Failed(e) => {
            return Err(ApiErr(axum::http::StatusCode::BAD_GATEWAY, e));
        }
    };
    let mut resp = ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response();
    if let Some(n) = size {
        resp.headers_mut().insert(header::CONTENT_LENGTH, n.into());
    }
    Ok(resp)
}
