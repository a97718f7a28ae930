//! Files answered whole or from an offset (`Range: bytes=N-`, the one form an interrupted
//! download needs), with an `ETag` that `If-Range` must name: delta packs and boot artifacts.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiErr, ApiResult};

/// `Range: bytes=N-`; `None` for no range or any other form, which gets the whole file.
pub fn range_start(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(header::RANGE)?.to_str().ok()?;
    let n = v.strip_prefix("bytes=")?.strip_suffix('-')?;
    n.parse().ok()
}

/// What is sent.
pub struct Served {
    pub file: std::fs::File,
    pub size: u64,
    /// The quoted entity tag that names this content.
    pub etag: String,
    pub content_type: &'static str,
    /// What the file is, for the error past its end (`the pack`).
    pub what: &'static str,
}

/// Answers `s` from the start the request's range names (when its `If-Range`, if any, is this
/// `ETag`): 200 with the whole file, 206 with `Content-Range` from an offset, 416 past the end.
/// `sent` is told the size of every piece as it goes.
pub fn answer(
    headers: &HeaderMap,
    s: Served,
    sent: impl Fn(u64) + Send + 'static,
) -> ApiResult<Response> {
    let Served {
        mut file,
        size,
        etag,
        content_type,
        what,
    } = s;
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.to_str().ok() == Some(etag.as_str()));
    let start = range_start(headers).filter(|_| if_range_ok).unwrap_or(0);
    if start > size {
        return Err(ApiErr(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("{what} has {size} bytes; a range from {start} is past its end"),
        ));
    }
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start))
        .map_err(|e| ApiErr::internal(format!("{e}")))?;
    let body = super::file_body(file, sent);
    let mut resp = (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::ETAG, etag),
            (header::ACCEPT_RANGES, "bytes".to_owned()),
            (header::CONTENT_LENGTH, (size - start).to_string()),
        ],
        body,
    )
        .into_response();
    if start > 0 {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        resp.headers_mut().insert(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", size.saturating_sub(1))
                .parse()
                .expect("a header value"),
        );
    }
    Ok(resp)
}
