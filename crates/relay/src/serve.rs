//! The relay's one handler: a request is classified ([`crate::route`]) and answered from the
//! cache (filled from upstream once), from fresh metadata, or by forwarding it upstream.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use crate::Relay;
use crate::error::{Error, Result};
use crate::route::{self, Route};

/// Metadata files larger than this are refused (TUF's own limits are smaller).
const MAX_METADATA: usize = 64 << 20;

pub fn router(relay: Arc<Relay>) -> axum::Router {
    axum::Router::new()
        .route("/api/v1/relay", axum::routing::get(info))
        .fallback(handle)
        .with_state(relay)
}

async fn info(State(relay): State<Arc<Relay>>) -> Response {
    let mut v = serde_json::to_value(relay.status()).expect("serialises");
    v["name"] = relay.cfg.name.clone().into();
    axum::Json(v).into_response()
}

async fn handle(State(relay): State<Arc<Relay>>, req: Request) -> Response {
    match answer(&relay, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn answer(relay: &Arc<Relay>, req: Request) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let method = parts.method.clone();
    let path = parts.uri.path().to_owned();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| path.clone());
    let route = route::classify(method.as_str(), &path).map_err(|e| {
        if e.contains("is not allowed") {
            Error::NotAllowed(e)
        } else {
            Error::Bad(e)
        }
    })?;
    let body = axum::body::to_bytes(body, relay.cfg.max_body)
        .await
        .map_err(|_| Error::TooLarge(relay.cfg.max_body))?;
    let headers = &parts.headers;
    match route {
        Route::Health => Ok("ok\n".into_response()),
        Route::CheckIn => {
            // a query is signed too: such a check-in goes up alone
            let batched = if pq == path {
                crate::batch::checkin(relay, headers, &body).await
            } else {
                None
            };
            match batched {
                Some(answer) => answer,
                None => forward(relay, parts.method, &pq, headers, body).await,
            }
        }
        Route::Forward | Route::Apt(_, false) => {
            forward(relay, parts.method, &pq, headers, body).await
        }
        Route::Metadata(file) => metadata(relay, &file, &pq).await,
        Route::Objects => crate::objects::batch(relay, &body).await,
        Route::Object(kind, id) => crate::objects::answer(relay, vec![(kind, id)]).await,
        r @ (Route::Target(_) | Route::Delta(..) | Route::Boot(..) | Route::Apt(_, true)) => {
            let key = r.cache_key().expect("a cached route");
            let content_type = match r {
                Route::Delta(..) => "application/x-semithin-delta",
                _ => "application/octet-stream",
            };
            cached_file(relay, &key, &pq, headers, content_type).await
        }
    }
}

/// A child's request sent upstream as it came; the answer streamed back as it comes (a long
/// poll stays open through the relay as long as upstream holds it).
async fn forward(
    relay: &Arc<Relay>,
    method: axum::http::Method,
    pq: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response> {
    relay.counters.forwarded.fetch_add(1, Ordering::Relaxed);
    let resp = relay.up.forward(method, pq, headers, body).await?;
    Ok(stream_back(resp))
}

/// An upstream answer as the relay's answer: status, the headers a client reads, the body
/// streamed through.
fn stream_back(mut resp: reqwest::Response) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out_headers = HeaderMap::new();
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::ETAG,
        header::CONTENT_RANGE,
        header::ACCEPT_RANGES,
        header::RETRY_AFTER,
        header::ALLOW,
    ] {
        if let Some(v) = resp.headers().get(name.as_str())
            && let Ok(v) = HeaderValue::from_bytes(v.as_bytes())
        {
            out_headers.insert(name, v);
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    tokio::spawn(async move {
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    if tx.send(Ok(c)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                    return;
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    (status, out_headers, body).into_response()
}

/// A metadata file: fresh from upstream unless fetched within the last `metadata_ttl`; when no
/// upstream answers, the last copy held (the machine's TUF client judges its freshness).
async fn metadata(relay: &Arc<Relay>, file: &str, pq: &str) -> Result<Response> {
    let fresh = |relay: &Relay| {
        let m = relay.meta.lock().expect("lock");
        m.get(file)
            .filter(|(at, _)| at.elapsed() < relay.cfg.metadata_ttl)
            .map(|(_, b)| b.clone())
    };
    if let Some(b) = fresh(relay) {
        return Ok(bytes_answer(relay, b));
    }
    let key = format!("meta/{file}");
    let (r2, file2, pq2) = (relay.clone(), file.to_owned(), pq.to_owned());
    let fetched = relay
        .flights
        .once(&key, || false, async move {
            let resp = r2.up.fetch("GET", &pq2, Bytes::new()).await?;
            let b = read_limited(resp, MAX_METADATA).await?;
            r2.counters
                .fetched
                .fetch_add(b.len() as u64, Ordering::Relaxed);
            let path = r2.cfg.data.join("meta").join(&file2);
            let tmp = r2.disk.temp();
            if std::fs::write(&tmp, &b).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
            r2.meta
                .lock()
                .expect("lock")
                .insert(file2, (Instant::now(), b));
            Ok(())
        })
        .await;
    match fetched {
        Ok(()) => {
            let b = relay
                .meta
                .lock()
                .expect("lock")
                .get(file)
                .map(|(_, b)| b.clone());
            b.map(|b| bytes_answer(relay, b))
                .ok_or_else(|| Error::Internal(format!("metadata {file} vanished")))
        }
        // Upstream said the file does not exist (a root version not made yet, say): so do we.
        Err(Error::Upstream { status, reason }) if (400..500).contains(&status) => {
            relay.meta.lock().expect("lock").remove(file);
            let _ = std::fs::remove_file(relay.cfg.data.join("meta").join(file));
            Err(Error::Upstream { status, reason })
        }
        Err(e) => {
            let held = relay
                .meta
                .lock()
                .expect("lock")
                .get(file)
                .map(|(_, b)| b.clone());
            let held = held.or_else(|| {
                std::fs::read(relay.cfg.data.join("meta").join(file))
                    .ok()
                    .map(Bytes::from)
            });
            match held {
                Some(b) => {
                    tracing::warn!("serving the metadata {file} held: {e}");
                    Ok(bytes_answer(relay, b))
                }
                None => Err(e),
            }
        }
    }
}

fn bytes_answer(relay: &Relay, b: Bytes) -> Response {
    relay
        .counters
        .served
        .fetch_add(b.len() as u64, Ordering::Relaxed);
    ([(header::CONTENT_TYPE, "application/octet-stream")], b).into_response()
}

/// Reads a whole answer, refusing one over `max` bytes.
pub async fn read_limited(mut resp: reqwest::Response, max: usize) -> Result<Bytes> {
    let mut buf = Vec::new();
    while let Some(c) = resp
        .chunk()
        .await
        .map_err(|e| Error::Unreachable(format!("reading an upstream answer: {e}")))?
    {
        if buf.len() + c.len() > max {
            return Err(Error::Damaged(format!("an answer over {max} bytes")));
        }
        buf.extend_from_slice(&c);
    }
    Ok(buf.into())
}

/// Fetches `pq` from upstream into the cache as `key`, whole, and counts it.
pub async fn fill(relay: &Arc<Relay>, key: &str, pq: &str) -> Result<()> {
    let mut resp = relay.up.fetch("GET", pq, Bytes::new()).await?;
    let tmp = relay.disk.temp();
    let io = |e: std::io::Error| Error::Internal(format!("writing the cache: {e}"));
    let mut f = tokio::fs::File::create(&tmp).await.map_err(io)?;
    let mut n = 0u64;
    let result = async {
        while let Some(c) = resp
            .chunk()
            .await
            .map_err(|e| Error::Unreachable(format!("{pq}: cut off: {e}")))?
        {
            n += c.len() as u64;
            f.write_all(&c).await.map_err(io)?;
        }
        f.sync_all().await.map_err(io)?;
        Ok(())
    }
    .await;
    relay.counters.fetched.fetch_add(n, Ordering::Relaxed);
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    relay.disk.commit(&tmp, key)
}

/// A cached item (fetched once from upstream when missing), whole or from a range.
async fn cached_file(
    relay: &Arc<Relay>,
    key: &str,
    pq: &str,
    headers: &HeaderMap,
    content_type: &'static str,
) -> Result<Response> {
    let got = match relay.disk.get(key) {
        Some(g) => g,
        None => {
            let (r2, k2, pq2) = (relay.clone(), key.to_owned(), pq.to_owned());
            let d = relay.clone();
            let k3 = key.to_owned();
            relay
                .flights
                .once(key, move || d.disk.contains(&k3), async move {
                    fill(&r2, &k2, &pq2).await
                })
                .await?;
            relay.disk.get(key).ok_or_else(|| {
                Error::Internal(format!("{key} was evicted at once: the cache is too small"))
            })?
        }
    };
    range_answer(relay, headers, got, content_type)
}

/// Answers a cached file from `Range: bytes=N-` (when `If-Range`, if any, names its ETag).
fn range_answer(
    relay: &Arc<Relay>,
    headers: &HeaderMap,
    (file, size): (std::fs::File, u64),
    content_type: &'static str,
) -> Result<Response> {
    use std::io::Seek;
    let mtime = file
        .metadata()
        .ok()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let etag = format!("\"relay-{size}-{mtime}\"");
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.to_str().ok() == Some(etag.as_str()));
    let start = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("bytes=")?
                .strip_suffix('-')?
                .parse::<u64>()
                .ok()
        })
        .filter(|_| if_range_ok)
        .unwrap_or(0);
    if start > size {
        return Err(Error::Upstream {
            status: 416,
            reason: format!("the file has {size} bytes; a range from {start} is past its end"),
        });
    }
    let mut file = file;
    file.seek(std::io::SeekFrom::Start(start))
        .map_err(|e| Error::Internal(format!("seeking: {e}")))?;
    let relay2 = relay.clone();
    let body = file_body(file, move |n| {
        relay2.counters.served.fetch_add(n, Ordering::Relaxed);
    });
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
        if let Ok(v) =
            HeaderValue::from_str(&format!("bytes {start}-{}/{size}", size.saturating_sub(1)))
        {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

/// A file's content as a body, read in a blocking task.
pub fn file_body(mut file: std::fs::File, sent: impl Fn(u64) + Send + 'static) -> Body {
    use std::io::Read;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    sent(n as u64);
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
    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
}
