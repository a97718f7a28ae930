//! Objects through the relay: cached one per file (`objects/KIND/ID`, the object's record as
//! the object stream carries it), so any batch a child asks for is answered from whatever any
//! child fetched before, and each object is fetched from upstream once. Missing objects of a
//! batch are fetched upstream as one batch; objects another request is fetching already are
//! waited for, not fetched again. Each object is verified against its id before it is cached
//! (a damaged upstream is caught here, and never poisons the cache).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use semithin_protocol::api::{MAX_OBJECTS_PER_REQUEST, ObjectsRequest};
use semithin_store::pack::ObjKind;
use semithin_store::transfer::MAX_OBJECT;
use semithin_store::verified::verify_frame;

use crate::Relay;
use crate::error::{Error, Result};
use crate::flight::{self, to_outcome};
use crate::route::{Route, object_ref};

type Ref = (ObjKind, [u8; 32]);

fn key(r: &Ref) -> String {
    Route::Object(r.0, r.1)
        .cache_key()
        .expect("objects are cached")
}

fn name(r: &Ref) -> String {
    format!("{}/{}", r.0.name(), hex::encode(r.1))
}

/// `POST /api/v1/objects`.
pub async fn batch(relay: &Arc<Relay>, body: &[u8]) -> Result<Response> {
    let req: ObjectsRequest =
        serde_json::from_slice(body).map_err(|e| Error::Bad(format!("bad request body: {e}")))?;
    if req.objects.len() > MAX_OBJECTS_PER_REQUEST {
        return Err(Error::Bad(format!(
            "{} objects asked for; at most {MAX_OBJECTS_PER_REQUEST} per request",
            req.objects.len()
        )));
    }
    let refs = req
        .objects
        .iter()
        .map(|s| object_ref(s))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(Error::Bad)?;
    answer(relay, refs).await
}

/// The object stream of `refs`, fetching what the cache lacks first.
pub async fn answer(relay: &Arc<Relay>, refs: Vec<Ref>) -> Result<Response> {
    let missing: Vec<Ref> = refs
        .iter()
        .filter(|r| !relay.disk.contains(&key(r)))
        .copied()
        .collect();
    if !missing.is_empty() {
        fetch(relay, missing).await?;
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    let relay2 = relay.clone();
    tokio::task::spawn_blocking(move || {
        for r in &refs {
            let Some((mut f, len)) = relay2.disk.get(&key(r)) else {
                let _ = tx.blocking_send(Err(std::io::Error::other(format!(
                    "{} left the relay's cache before it was sent",
                    name(r)
                ))));
                return;
            };
            let mut buf = Vec::with_capacity(len as usize);
            if let Err(e) = f.read_to_end(&mut buf) {
                let _ = tx.blocking_send(Err(e));
                return;
            }
            relay2.counters.served.fetch_add(len, Ordering::Relaxed);
            if tx.blocking_send(Ok(buf.into())).is_err() {
                return;
            }
        }
        let _ = tx.blocking_send(Ok(Bytes::from_static(&[0])));
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok((
        [(header::CONTENT_TYPE, "application/x-semithin-objects")],
        body,
    )
        .into_response())
}

/// Makes every object of `missing` cached: those no other request fetches are fetched upstream
/// as one batch (in a task of its own), the others waited for.
async fn fetch(relay: &Arc<Relay>, missing: Vec<Ref>) -> Result<()> {
    let mut mine = Vec::new();
    let mut waits = Vec::new();
    for r in &missing {
        let k = key(r);
        match relay.flights.claim(&k, || relay.disk.contains(&k)) {
            None => {}
            Some(Ok(claim)) => mine.push((*r, claim)),
            Some(Err(rx)) => waits.push(rx),
        }
    }
    if !mine.is_empty() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let relay2 = relay.clone();
        tokio::spawn(async move {
            let refs: Vec<Ref> = mine.iter().map(|(r, _)| *r).collect();
            let r = fetch_batch(&relay2, &refs).await;
            let outcome = r.as_ref().map(|_| ()).map_err(to_outcome);
            for (r, claim) in mine {
                let o = match &outcome {
                    Ok(()) if relay2.disk.contains(&key(&r)) => Ok(()),
                    Ok(()) => Err((502, format!("upstream did not send {}", name(&r)))),
                    Err(e) => Err(e.clone()),
                };
                relay2.flights.finish(claim, o);
            }
            let _ = done_tx.send(r);
        });
        done_rx
            .await
            .map_err(|_| Error::Internal("an object fetch ended early".into()))??;
    }
    for rx in waits {
        flight::wait(rx).await?;
    }
    Ok(())
}

/// One upstream batch into the cache, each object verified and cached as it is read.
async fn fetch_batch(relay: &Arc<Relay>, refs: &[Ref]) -> Result<()> {
    let body = serde_json::to_vec(&ObjectsRequest {
        objects: refs.iter().map(name).collect(),
    })
    .expect("serialises");
    let mut resp = relay
        .up
        .fetch("POST", "/api/v1/objects", Bytes::from(body))
        .await?;
    // The stream is spooled to a temporary file and read in a blocking task: memory stays
    // bounded whatever the batch.
    let spool = relay.disk.temp();
    let io = |e: std::io::Error| Error::Internal(format!("spooling objects: {e}"));
    {
        use tokio::io::AsyncWriteExt;
        let mut f = tokio::fs::File::create(&spool).await.map_err(io)?;
        while let Some(c) = resp
            .chunk()
            .await
            .map_err(|e| Error::Unreachable(format!("the object stream was cut off: {e}")))?
        {
            relay
                .counters
                .fetched
                .fetch_add(c.len() as u64, Ordering::Relaxed);
            f.write_all(&c).await.map_err(io)?;
        }
        f.flush().await.map_err(io)?;
    }
    let expected: HashSet<Ref> = refs.iter().copied().collect();
    let relay2 = relay.clone();
    let spool2 = spool.clone();
    let r = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&spool2).map_err(io)?;
        read_records(&relay2, &expected, std::io::BufReader::new(f))
    })
    .await
    .map_err(|e| Error::Internal(format!("object task: {e}")))?;
    let _ = std::fs::remove_file(&spool);
    r
}

/// Reads an object stream, verifying each record and caching it as its own file.
fn read_records(relay: &Relay, expected: &HashSet<Ref>, mut input: impl Read) -> Result<()> {
    let bad = |reason: String| Error::Damaged(format!("object stream: {reason}"));
    loop {
        let mut k = [0u8; 1];
        input
            .read_exact(&mut k)
            .map_err(|e| bad(format!("ends without its end marker ({e})")))?;
        if k[0] == 0 {
            return Ok(());
        }
        let kind =
            ObjKind::from_u8(k[0]).ok_or_else(|| bad(format!("unknown object kind {}", k[0])))?;
        let mut h = [0u8; 40];
        input
            .read_exact(&mut h)
            .map_err(|e| bad(format!("cut inside a record header ({e})")))?;
        let mut id = [0u8; 32];
        id.copy_from_slice(&h[..32]);
        let mut n4 = [0u8; 4];
        n4.copy_from_slice(&h[32..36]);
        let stored = u32::from_le_bytes(n4);
        n4.copy_from_slice(&h[36..40]);
        let raw = u32::from_le_bytes(n4);
        let r = (kind, id);
        if !expected.contains(&r) {
            return Err(bad(format!("{} was not asked for", name(&r))));
        }
        if stored > MAX_OBJECT || raw > MAX_OBJECT {
            return Err(bad(format!("{} is over the size limit", name(&r))));
        }
        let mut frame = vec![0u8; stored as usize];
        input
            .read_exact(&mut frame)
            .map_err(|e| bad(format!("cut inside {} ({e})", name(&r))))?;
        verify_frame(kind, &id, &frame, raw).map_err(|e| Error::Damaged(e.to_string()))?;
        let tmp = relay.disk.temp();
        let io = |e: std::io::Error| Error::Internal(format!("caching an object: {e}"));
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&[k[0]]).map_err(io)?;
        f.write_all(&h).map_err(io)?;
        f.write_all(&frame).map_err(io)?;
        drop(f);
        relay.disk.commit(&tmp, &key(&r))?;
    }
}
