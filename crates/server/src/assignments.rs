//! Signing the fleet's channel assignments (docs/TRUST.md, "Channel assignment"): the database
//! says which channel each machine is on; the trust metadata says it with a signature the
//! machines check (`semithin_trust::repo::assign`). The server brings the signed assignments in
//! line with the database after every `fleet assign` and `fleet remove`, at start, and at every
//! trust look (so one that failed, say on a busy repository, is done later).
//!
//! Signing is a writer of the repository: it takes the repository's lock, waiting a little for
//! a command that holds it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use semithin_protocol::selector::Selector;
use semithin_store::{Access, Repo};
use semithin_trust::repo::TrustRepo;

use crate::{App, Error, Result};

/// How long signing waits for a command that holds the repository's lock.
const LOCK_WAIT: Duration = Duration::from_secs(20);

/// What is signed, as far as this server knows (`None`: not read yet).
#[derive(Default)]
pub struct SignedAssignments {
    known: Mutex<Option<BTreeMap<String, String>>>,
    /// One signing at a time.
    busy: tokio::sync::Mutex<()>,
}

/// What a signing did.
#[derive(Debug, Default, PartialEq, Eq)]
pub enum Signed {
    /// The repository does not sign assignments (a publish with the targets key sets it up).
    #[default]
    NotSet,
    /// The signed assignments say what the database says; `changed` machines were signed.
    Done { changed: usize },
}

/// Every machine's channel, from the fleet in memory (which follows the database).
fn desired(app: &App) -> BTreeMap<String, String> {
    app.fleet
        .select(&Selector::All)
        .into_iter()
        .filter_map(|m| {
            let channel = m.row.lock().expect("lock").channel.clone()?;
            Some((m.id.clone(), channel))
        })
        .collect()
}

/// The changes that make `signed` say `desired`.
fn changes(
    signed: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
) -> BTreeMap<String, Option<String>> {
    let mut out: BTreeMap<String, Option<String>> = desired
        .iter()
        .filter(|(m, c)| signed.get(*m) != Some(*c))
        .map(|(m, c)| (m.clone(), Some(c.clone())))
        .collect();
    out.extend(
        signed
            .keys()
            .filter(|m| !desired.contains_key(*m))
            .map(|m| (m.clone(), None)),
    );
    out
}

/// Signs what differs (blocking). `known`: what is signed, if known; else it is read.
fn sign_blocking(
    repo: &Path,
    desired: &BTreeMap<String, String>,
    known: Option<BTreeMap<String, String>>,
    now: i64,
) -> Result<(Signed, Option<BTreeMap<String, String>>)> {
    let dir = crate::releases::trust_dir(repo);
    if let Some(k) = &known
        && changes(k, desired).is_empty()
    {
        return Ok((Signed::Done { changed: 0 }, known));
    }
    let deadline = Instant::now() + LOCK_WAIT;
    let _lock = loop {
        if let Some(l) = Repo::try_open(repo, Access::Write)? {
            break l;
        }
        if Instant::now() >= deadline {
            return Err(Error::Busy(
                "the repository is locked by a command (a commit or publish): the channel \
                 assignment is stored and will be signed within a minute"
                    .into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut t = TrustRepo::open(&dir)?;
    if !t.assignments_enabled() {
        return Ok((Signed::NotSet, None));
    }
    let signed = t.assignments()?;
    let todo = changes(&signed, desired);
    if todo.is_empty() {
        return Ok((Signed::Done { changed: 0 }, Some(signed)));
    }
    let r = t.sign_assignments(&todo, now)?;
    tracing::info!(
        machines = r.changed,
        bins = r.bins,
        "channel assignments signed"
    );
    Ok((Signed::Done { changed: r.changed }, Some(desired.clone())))
}

/// Brings the signed assignments in line with the fleet.
pub async fn sign(app: &App) -> Result<Signed> {
    let _one = app.assignments.busy.lock().await;
    let desired = desired(app);
    let known = app.assignments.known.lock().expect("lock").clone();
    let repo = app.cfg.repo();
    let now = crate::now();
    let (signed, known) =
        tokio::task::spawn_blocking(move || sign_blocking(&repo, &desired, known, now))
            .await
            .expect("signing task")
            .inspect_err(|_| {
                // read again next time: a failure may have left anything
                *app.assignments.known.lock().expect("lock") = None;
            })?;
    *app.assignments.known.lock().expect("lock") = known;
    Ok(signed)
}

/// [`sign`] for background callers: logs what fails.
pub async fn sign_logged(app: &App) {
    match sign(app).await {
        Ok(Signed::NotSet) => {
            tracing::debug!(
                "channel assignments are not signed in this repository: a publish or `trust \
                 refresh` with the targets key sets them up"
            )
        }
        Ok(Signed::Done { .. }) => {}
        Err(e) => {
            tracing::warn!(error = %e, "signing the channel assignments: retried at the next look")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_move_add_and_drop() {
        let m = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let signed = m(&[("a", "x"), ("b", "x"), ("gone", "x")]);
        let desired = m(&[("a", "x"), ("b", "y"), ("new", "z")]);
        let c = changes(&signed, &desired);
        assert_eq!(
            c,
            BTreeMap::from([
                ("b".to_owned(), Some("y".to_owned())),
                ("gone".to_owned(), None),
                ("new".to_owned(), Some("z".to_owned())),
            ])
        );
        assert!(changes(&desired, &desired).is_empty());
    }
}
