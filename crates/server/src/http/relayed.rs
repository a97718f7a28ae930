//! What relays send of their own (docs/RELAY.md): their children's check-ins in one batch
//! (`POST /api/v1/relay/checkins`), held as one long poll, and their health
//! (`POST /api/v1/relay/status`, and with each batch).
//!
//! A batch is held as long as the shortest wait its check-ins ask, and ends with the batch the
//! same relay has held already, if any; it is answered whole as soon as one of its machines
//! has something new (the others get their answer of the moment, and poll again).
//!
//! Each check-in of a batch is verified as if it had come straight from its machine
//! ([`agent::begin_checkin`]: its own signature, counter, body and limits); one that fails is
//! answered with its own error, the others are not affected. The batch itself is signed by the
//! relay, an accepted machine.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use semithin_protocol::api::{ApiError, MachineStatus};
use semithin_protocol::relay::{
    BatchedAnswer, BatchedCheckIn, CheckInBatch, CheckInBatchAnswer, MAX_BATCH, RelayStatus,
};
use semithin_protocol::sign;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::agent::{Begun, begin_checkin, end_checkin};
use super::{ApiErr, ApiResult, machine, parse};
use crate::fleet::Machine;
use crate::{App, now};

/// The batch route: a long poll (the router's long deadline).
pub fn batch_routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(checkins))
}

pub fn status_routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(status))
}

/// The relay that signed a request: an accepted machine.
async fn relay(
    app: &App,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<Arc<Machine>> {
    let r = machine(app, method, uri, headers, body)?;
    let status = r.row.lock().expect("lock").status;
    if status != MachineStatus::Accepted {
        return Err(ApiErr::forbidden(format!(
            "this relay is {}: only an accepted machine reports as a relay or sends batches",
            status.as_str()
        )));
    }
    // what it writes (its path, its status) is written once its counter is stored: replayed
    // after a restart, it is refused
    r.store_counter(&app.db).await?;
    let t = now();
    r.last_seen.store(t, Ordering::Relaxed);
    // the relays above it: the path its own request came through, less its own name
    if let Ok(mut path) = crate::relays::header_path(headers) {
        let name = r.row.lock().expect("lock").name.clone();
        if path.first() == Some(&name) {
            path.remove(0);
        }
        crate::relays::record(app, &r, path, &[], t).await?;
    }
    Ok(r)
}

async fn record(app: &App, r: &Machine, s: &RelayStatus) -> ApiResult<()> {
    s.check()
        .map_err(|e| ApiErr::bad(format!("relay status refused: {e}")))?;
    crate::relays::record_status(app, r, s, now()).await?;
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/relay/status", tag = "machines", summary = "A relay's report of its own health", request_body = RelayStatus, responses((status = 200, description = "Stored", body = String), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("machine_signature" = [])))]
async fn status(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<&'static str> {
    let r = relay(&app, &method, &uri, &headers, &body).await?;
    let s: RelayStatus = parse(&body)?;
    record(&app, &r, &s).await?;
    Ok("ok\n")
}

/// One check-in of a batch, verified and stored as `POST /api/v1/checkin` would.
async fn begin_one(app: &App, c: &BatchedCheckIn, via: &[String]) -> ApiResult<Begun> {
    let mut headers = HeaderMap::new();
    for name in [
        sign::HEADER_MACHINE,
        sign::HEADER_DATE,
        sign::HEADER_COUNTER,
        sign::HEADER_SIGNATURE,
    ] {
        if let Some(v) = c.headers.get(name) {
            let v = HeaderValue::from_str(v).map_err(|_| {
                ApiErr(
                    StatusCode::UNAUTHORIZED,
                    format!("the {name} header is not a header value"),
                )
            })?;
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    let mut path = c.relays.clone();
    path.extend(via.iter().cloned());
    let path = crate::relays::check_path(path);
    let uri = Uri::from_static("/api/v1/checkin");
    begin_checkin(app, &Method::POST, &uri, &headers, c.body.as_bytes(), path).await
}

fn error_answer(e: ApiErr) -> BatchedAnswer {
    BatchedAnswer {
        status: e.0.as_u16(),
        body: serde_json::to_value(ApiError { error: e.1 }).expect("serialises"),
    }
}

/// Resolves with the index of the first machine woken among `ms`.
async fn any_woken(ms: &[(usize, &Machine)]) -> usize {
    let mut waits: Vec<(usize, Pin<Box<tokio::sync::futures::Notified<'_>>>)> = ms
        .iter()
        .map(|(i, m)| (*i, Box::pin(m.wake.notified())))
        .collect();
    std::future::poll_fn(|cx| {
        for (i, w) in waits.iter_mut() {
            if w.as_mut().poll(cx).is_ready() {
                return Poll::Ready(*i);
            }
        }
        Poll::Pending
    })
    .await
}

#[utoipa::path(post, path = "/api/v1/relay/checkins", tag = "machines", summary = "A relay's batch of its machines' check-ins, each as its machine signed it; one long poll for all", request_body = CheckInBatch, responses((status = 200, description = "One answer per check-in, in the order sent", body = CheckInBatchAnswer), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("machine_signature" = [])))]
async fn checkins(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<CheckInBatchAnswer>> {
    let r = relay(&app, &method, &uri, &headers, &body).await?;
    let batch: CheckInBatch = parse(&body)?;
    if batch.checkins.is_empty() {
        return Err(ApiErr::bad("checkins: an empty batch"));
    }
    if batch.checkins.len() > MAX_BATCH {
        return Err(ApiErr::bad(format!(
            "checkins: {} check-ins in one batch; at most {MAX_BATCH}",
            batch.checkins.len()
        )));
    }
    let via = crate::relays::header_path(&headers)
        .map_err(|e| ApiErr::bad(format!("batch refused: {e}")))?;
    if let Some(s) = &batch.status {
        record(&app, &r, s).await?;
    }
    app.counters.checkin_batches.fetch_add(1, Ordering::Relaxed);
    app.counters
        .checkins_batched
        .fetch_add(batch.checkins.len() as u64, Ordering::Relaxed);
    let mut begun = Vec::with_capacity(batch.checkins.len());
    for c in &batch.checkins {
        begun.push(begin_one(&app, c, &via).await);
    }
    // Held as long as the shortest wait asked, and answered whole as soon as one of its
    // machines has something new: the others get their answer of the moment, and poll again.
    let held: Vec<(usize, &Machine)> = begun
        .iter()
        .enumerate()
        .filter_map(|(i, b)| match b {
            Ok(Begun::Hold { m, .. }) => Some((i, m.as_ref())),
            _ => None,
        })
        .collect();
    let something_new = begun.iter().any(|b| matches!(b, Ok(Begun::Now(_))));
    let wait = begun
        .iter()
        .filter_map(|b| match b {
            Ok(Begun::Hold { wait, .. }) => Some(*wait),
            _ => None,
        })
        .min()
        .unwrap_or(0);
    let mut woken = None;
    if !something_new && !held.is_empty() && wait > 0 {
        // A batch sent while another of this relay's is held ends with that one: its machines
        // then poll again together, in one batch.
        let now = tokio::time::Instant::now();
        let own = now + Duration::from_secs(wait as u64);
        let until = {
            let mut u = r.batch_until.lock().expect("lock");
            match *u {
                Some(t) if t > now => t.min(own),
                _ => {
                    *u = Some(own);
                    own
                }
            }
        };
        let _held = crate::PollHeld::new(&app.counters.polls_held);
        let mut stop = app.shutdown.clone();
        woken = tokio::select! {
            i = any_woken(&held) => Some(i),
            _ = tokio::time::sleep_until(until) => None,
            _ = stop.wait_for(|s| *s) => None,
        };
    }
    drop(held);
    let mut answers = Vec::with_capacity(begun.len());
    for (i, b) in begun.into_iter().enumerate() {
        let resp = match b {
            Ok(Begun::Now(resp)) => Ok(*resp),
            Ok(Begun::Hold { m, req, .. }) => end_checkin(&app, &m, &req, woken == Some(i)).await,
            Err(e) => Err(e),
        };
        answers.push(match resp {
            Ok(resp) => BatchedAnswer {
                status: 200,
                body: serde_json::to_value(resp).expect("serialises"),
            },
            Err(e) => error_answer(e),
        });
    }
    Ok(Json(CheckInBatchAnswer { answers }))
}
