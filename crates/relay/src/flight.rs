//! Single flight: one upstream fetch per cache key however many children ask at once. The
//! fetch runs in a task of its own, so a child that hangs up does not cancel it for the others.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::error::{Error, Result};

/// How a fetch ended, as every waiter sees it.
type Outcome = Option<std::result::Result<(), (u16, String)>>;

#[derive(Default)]
pub struct Flights {
    running: Mutex<HashMap<String, watch::Receiver<Outcome>>>,
}

/// A fetch this caller started, to be ended with [`Flights::finish`].
pub struct Claim {
    pub key: String,
    tx: watch::Sender<Outcome>,
}

pub fn to_outcome(e: &Error) -> (u16, String) {
    (e.status().as_u16(), e.to_string())
}

fn from_outcome((status, reason): (u16, String)) -> Error {
    Error::Upstream { status, reason }
}

impl Flights {
    /// Claims `key` unless a fetch of it runs already: `Ok(claim)` to fetch it, `Err(receiver)`
    /// to wait for the one running. `have` is asked under the lock, so an item that arrived
    /// meanwhile is not fetched again (`None`).
    pub fn claim(
        &self,
        key: &str,
        have: impl Fn() -> bool,
    ) -> Option<std::result::Result<Claim, watch::Receiver<Outcome>>> {
        let mut m = self.running.lock().expect("lock");
        if let Some(rx) = m.get(key) {
            return Some(Err(rx.clone()));
        }
        if have() {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        m.insert(key.to_owned(), rx);
        Some(Ok(Claim {
            key: key.to_owned(),
            tx,
        }))
    }

    /// Ends a claimed fetch: every waiter learns how it went.
    pub fn finish(&self, claim: Claim, outcome: std::result::Result<(), (u16, String)>) {
        self.running.lock().expect("lock").remove(&claim.key);
        let _ = claim.tx.send(Some(outcome));
    }

    /// Runs `fetch` once for `key` (unless `have()`), in its own task; waits for whichever
    /// fetch of `key` runs.
    pub async fn once<F>(
        self: &std::sync::Arc<Self>,
        key: &str,
        have: impl Fn() -> bool,
        fetch: F,
    ) -> Result<()>
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        match self.claim(key, have) {
            None => Ok(()),
            Some(Err(rx)) => wait(rx).await,
            Some(Ok(claim)) => {
                let mut rx = claim.tx.subscribe();
                let me = self.clone();
                tokio::spawn(async move {
                    let r = fetch.await.map_err(|e| to_outcome(&e));
                    me.finish(claim, r);
                });
                rx.wait_for(Option::is_some)
                    .await
                    .map_err(|_| Error::Internal("a fetch task ended early".into()))?
                    .clone()
                    .expect("some")
                    .map_err(from_outcome)
            }
        }
    }
}

/// Waits for a fetch another request started.
pub async fn wait(mut rx: watch::Receiver<Outcome>) -> Result<()> {
    let r = rx
        .wait_for(Option::is_some)
        .await
        .map_err(|_| Error::Internal("a fetch task ended early".into()))?
        .clone()
        .expect("some");
    r.map_err(from_outcome)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_askers_one_fetch_and_all_see_its_outcome() {
        let flights = Arc::new(Flights::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (f, n) = (flights.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                f.once("objects/chunk/x", || false, async move {
                    n.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    Err(Error::Upstream {
                        status: 404,
                        reason: "not there".into(),
                    })
                })
                .await
            }));
        }
        for t in tasks {
            let e = t.await.unwrap().unwrap_err();
            assert_eq!(e.status().as_u16(), 404, "{e}");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        // done: the next ask fetches again (a failure is not kept)
        let n = fetches.clone();
        flights
            .once("objects/chunk/x", || false, async move {
                n.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        // an item held is not fetched at all
        flights
            .once("objects/chunk/x", || true, async { panic!("fetched") })
            .await
            .unwrap();
    }
}
