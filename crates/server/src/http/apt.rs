//! `GET /apt/{upstream}/{path}`: the apt caching proxy ([`crate::aptcache`]). Unauthenticated,
//! like any apt mirror: machines' apt cannot sign requests, and everything it serves is public
//! and checked by apt against the repository's signed Release.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

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
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = file;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match f.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx
                        .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
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
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        body,
    )
        .into_response())
}
