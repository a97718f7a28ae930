//! Check-ins sent upstream in batches (docs/RELAY.md): the check-ins arriving within
//! [`crate::Config::batch_window`] (at most [`MAX_BATCH`] of them, [`MAX_BATCH_BYTES`] of
//! bodies) go up as one `POST /api/v1/relay/checkins`, each exactly as its machine signed it,
//! and each child gets its own answer back. Long polls and check-ins that want an answer at once
//! go in separate batches, so one machine's quick check-in does not cut the others' long poll.
//!
//! A batch is held upstream as long as its shortest long poll, and the server ends a relay's
//! batch sent while another is held together with that one, so the machines poll again
//! together and the relay keeps about one long poll upstream whatever the number of its
//! machines.
//!
//! An upstream that does not take batches (an older server: 404 or 405), or refuses this relay
//! (not accepted yet), gets the check-ins one by one, as before, for a minute or until a report
//! of the relay's own goes through.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use semithin_protocol::relay::{
    BatchedCheckIn, CHECKINS_PATH, CheckInBatch, CheckInBatchAnswer, MAX_BATCH, MAX_BATCH_BYTES,
};
use semithin_protocol::sign;
use tokio::sync::oneshot;

use crate::Relay;
use crate::error::{Error, Result};
use crate::upstream::HEADER_RELAY;

/// A check-in larger than this goes up alone.
const MAX_ONE: usize = 512 << 10;

/// The largest answer to a batch read (500 answers of a few kB, with jobs and variables).
const MAX_ANSWER: usize = 64 << 20;

/// A child's check-in waiting for its batch.
struct Pending {
    entry: BatchedCheckIn,
    wait: u32,
    headers: HeaderMap,
    body: Bytes,
    reply: oneshot::Sender<Result<(u16, serde_json::Value)>>,
}

#[derive(Default)]
struct Queue {
    /// Long polls (`wait_secs` > 0) and the rest.
    long: Vec<Pending>,
    quick: Vec<Pending>,
    bytes: usize,
    /// A flush is due at the end of the window.
    scheduled: bool,
}

/// The check-ins waiting for the relay's next batch, and until when the upstream is taken to
/// refuse batches.
#[derive(Default)]
pub struct Batches {
    queue: Mutex<Queue>,
    refused_until: Mutex<Option<Instant>>,
}

/// How long check-ins go up one by one after the upstream refused a batch (unless a report of
/// the relay's own goes through first: it was accepted meanwhile).
const REFUSED_FOR: Duration = Duration::from_secs(60);

impl Batches {
    /// The upstream took a request of the relay's own: try batches again.
    pub fn accepted(&self) {
        *self.refused_until.lock().expect("lock") = None;
    }

    fn refused(&self) -> bool {
        self.refused_until
            .lock()
            .expect("lock")
            .is_some_and(|t| Instant::now() < t)
    }
}

/// What of a child's body the relay reads to put it in the right batch.
#[derive(serde::Deserialize)]
struct Wait {
    #[serde(default)]
    wait_secs: u32,
}

/// A child's `POST /api/v1/checkin`, answered through a batch; `None` when it goes up alone
/// (batching off, a body that is not UTF-8 JSON or is large, a query).
pub async fn checkin(
    relay: &Arc<Relay>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Result<Response>> {
    if relay.cfg.batch_window.is_zero() || body.len() > MAX_ONE || relay.batches.refused() {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    let wait = serde_json::from_str::<Wait>(text).ok()?.wait_secs;
    let mut signed = BTreeMap::new();
    for name in [
        sign::HEADER_MACHINE,
        sign::HEADER_DATE,
        sign::HEADER_COUNTER,
        sign::HEADER_SIGNATURE,
    ] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            signed.insert(name.to_owned(), v.to_owned());
        }
    }
    let relays = match headers.get(HEADER_RELAY).map(|v| v.to_str()) {
        None => Vec::new(),
        // as the root reads the header: a malformed name is refused there, for this entry
        Some(Ok(v)) => v.split(',').map(|s| s.trim().to_owned()).collect(),
        // the upstream's refusal of the header, as for a forwarded request
        Some(Err(_)) => return None,
    };
    let (tx, rx) = oneshot::channel();
    let p = Pending {
        entry: BatchedCheckIn {
            headers: signed,
            body: text.to_owned(),
            relays,
        },
        wait,
        headers: headers.clone(),
        body: body.clone(),
        reply: tx,
    };
    enqueue(relay, p);
    Some(match rx.await {
        Ok(Ok((status, body))) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            Ok((
                status,
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::to_vec(&body).unwrap_or_default(),
            )
                .into_response())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::Internal("a batch of check-ins was lost".into())),
    })
}

fn enqueue(relay: &Arc<Relay>, p: Pending) {
    let mut q = relay.batches.queue.lock().expect("lock");
    q.bytes += p.entry.body.len();
    if p.wait > 0 {
        q.long.push(p);
    } else {
        q.quick.push(p);
    }
    let full =
        q.long.len() >= MAX_BATCH || q.quick.len() >= MAX_BATCH || q.bytes >= MAX_BATCH_BYTES;
    if full {
        let (long, quick) = take(&mut q);
        drop(q);
        send_all(relay, long, quick);
    } else if !q.scheduled {
        q.scheduled = true;
        let r = relay.clone();
        tokio::spawn(async move {
            tokio::time::sleep(r.cfg.batch_window).await;
            let (long, quick) = {
                let mut q = r.batches.queue.lock().expect("lock");
                q.scheduled = false;
                take(&mut q)
            };
            send_all(&r, long, quick);
        });
    }
}

fn take(q: &mut Queue) -> (Vec<Pending>, Vec<Pending>) {
    q.bytes = 0;
    (std::mem::take(&mut q.long), std::mem::take(&mut q.quick))
}

fn send_all(relay: &Arc<Relay>, long: Vec<Pending>, quick: Vec<Pending>) {
    for group in [long, quick] {
        if !group.is_empty() {
            tokio::spawn(send(relay.clone(), group));
        }
    }
}

async fn send(relay: Arc<Relay>, ps: Vec<Pending>) {
    let batch = CheckInBatch {
        checkins: ps.iter().map(|p| p.entry.clone()).collect(),
        status: Some(relay.status()),
    };
    let body = Bytes::from(serde_json::to_vec(&batch).expect("serialises"));
    // held upstream as long as the longest wait asked at most, then given up (the children
    // have given up by then too, and poll again)
    let longest = ps.iter().map(|p| p.wait).max().unwrap_or(0) as u64;
    let answer = async {
        let resp = relay.up.fetch("POST", CHECKINS_PATH, body);
        let resp = tokio::time::timeout(Duration::from_secs(longest + 60), resp)
            .await
            .map_err(|_| {
                Error::Unreachable(format!(
                    "a batch of check-ins unanswered after {} s",
                    longest + 60
                ))
            })??;
        let b = crate::serve::read_limited(resp, MAX_ANSWER).await?;
        let a: CheckInBatchAnswer = serde_json::from_slice(&b)
            .map_err(|e| Error::Damaged(format!("an answer to a batch of check-ins: {e}")))?;
        if a.answers.len() != ps.len() {
            return Err(Error::Damaged(format!(
                "{} answers to a batch of {} check-ins",
                a.answers.len(),
                ps.len()
            )));
        }
        Ok(a)
    }
    .await;
    match answer {
        Ok(a) => {
            relay.counters.batches.fetch_add(1, Ordering::Relaxed);
            relay
                .counters
                .batched
                .fetch_add(ps.len() as u64, Ordering::Relaxed);
            for (p, a) in ps.into_iter().zip(a.answers) {
                let _ = p.reply.send(Ok((a.status, a.body)));
            }
        }
        // not taken as a batch: one by one, as the children sent them
        Err(Error::Upstream { status, reason }) if (400..500).contains(&status) => {
            *relay.batches.refused_until.lock().expect("lock") = Some(Instant::now() + REFUSED_FOR);
            tracing::warn!(
                "upstream refused a batch of check-ins ({status}: {reason}): check-ins go up one \
                 by one for {} s, or until a report of the relay's own is taken",
                REFUSED_FOR.as_secs()
            );
            for p in ps {
                let r = relay.clone();
                tokio::spawn(async move {
                    let out = alone(&r, &p.headers, p.body.clone()).await;
                    let _ = p.reply.send(out);
                });
            }
        }
        Err(e) => {
            let msg = match e {
                Error::Unreachable(s) => s,
                e => e.to_string(),
            };
            for p in ps {
                let _ = p.reply.send(Err(Error::Unreachable(msg.clone())));
            }
        }
    }
}

/// One check-in forwarded alone, its answer read whole.
async fn alone(
    relay: &Arc<Relay>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(u16, serde_json::Value)> {
    relay.counters.forwarded.fetch_add(1, Ordering::Relaxed);
    let resp = relay
        .up
        .forward(Method::POST, "/api/v1/checkin", headers, body)
        .await?;
    let status = resp.status().as_u16();
    let b = crate::serve::read_limited(resp, MAX_ANSWER).await?;
    let v = serde_json::from_slice(&b).unwrap_or_else(
        |_| serde_json::json!({ "error": String::from_utf8_lossy(&b).into_owned() }),
    );
    Ok((status, v))
}
