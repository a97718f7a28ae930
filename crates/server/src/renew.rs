//! Keeping the signed metadata fresh: the server signs a new snapshot and timestamp, with the
//! online keys in REPO/trust/keys/, well before they expire (when less than
//! `Config::trust_renew_left` of their lifetime is left), at start and then every
//! `Config::trust_check_secs`. Machines reject an expired timestamp, so without this a fleet
//! stops a day after the last publish.
//!
//! The targets role is never signed here: it vouches for the releases, its expiry is the admin's
//! (`semithin trust refresh` or a publish signs it again), and the server only says when it
//! expires soon or has. Nor is the root, whose key is offline. What the server cannot do is
//! logged and kept in a [`TrustHealth`] (`GET /api/v1/admin/trust`, `semithin trust status`),
//! each problem with what the admin must do.
//!
//! A renewal is a writer of the repository: it takes the repository's lock without waiting, and
//! when a command holds it (a commit, a publish), it tries again at the next look.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use semithin_protocol::api::ApiError;
use semithin_protocol::trust::{RoleExpiry, TrustHealth};
use semithin_store::{Access, Repo};
use semithin_trust::repo::{RefreshReport, Role, Status, TrustRepo};

use crate::App;
use crate::http::{ApiResult, admin};

/// The roles the server signs.
const RENEWED: [Role; 2] = [Role::Snapshot, Role::Timestamp];

/// How often the same problem is logged again while it lasts.
const LOG_AGAIN_SECS: i64 = 3600;

/// The renewal's state, shared with the admin route.
pub struct Renewal {
    health: Mutex<TrustHealth>,
    /// When the current problems were last logged.
    logged_at: Mutex<i64>,
}

impl Renewal {
    pub fn new(renew_left: f64, check_interval_secs: u64) -> Self {
        Self {
            health: Mutex::new(TrustHealth {
                renew_left,
                check_interval_secs,
                ..Default::default()
            }),
            logged_at: Mutex::new(i64::MIN),
        }
    }

    pub fn health(&self) -> TrustHealth {
        self.health.lock().expect("lock").clone()
    }
}

/// What one look found.
pub enum Looked {
    /// Another process holds the repository's lock.
    Busy,
    /// `renewal`: what was signed, or why it could not be; `status`: the metadata afterwards.
    Done {
        renewal: Result<RefreshReport, String>,
        status: Box<Status>,
    },
}

/// One look (blocking): renews snapshot and timestamp when due.
pub fn look(repo: &Path, left: f64, now: i64) -> crate::Result<Looked> {
    let dir = crate::releases::trust_dir(repo);
    // Reading needs no lock (files are replaced atomically, timestamp last); only a renewal
    // takes the repository's, and opens it again under the lock.
    let t = TrustRepo::open(&dir)?;
    if t.due_roles(&RENEWED, left, now).is_empty() && !t.assignments_due(left, now).unwrap_or(false)
    {
        return Ok(Looked::Done {
            renewal: Ok(RefreshReport {
                written: Vec::new(),
                reasons: Default::default(),
                warnings: t.warnings(now),
            }),
            status: Box::new(t.status(now)),
        });
    }
    let Some(_lock) = Repo::try_open(repo, Access::Write)? else {
        return Ok(Looked::Busy);
    };
    let mut t = TrustRepo::open(&dir)?;
    let renewal = t
        .refresh_roles(&RENEWED, left, false, now)
        .map_err(|e| error_chain(&e));
    Ok(Looked::Done {
        renewal,
        status: Box::new(t.status(now)),
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What the admin must do, from what a look found.
pub fn problems(
    renewal: &Result<RefreshReport, String>,
    status: &Status,
    left: f64,
) -> Vec<String> {
    let mut out = Vec::new();
    match renewal {
        Ok(r) => out.extend(r.warnings.iter().cloned()),
        Err(e) => out.push(format!(
            "the server cannot sign a new snapshot and timestamp: {e}. It needs the online keys \
             REPO/trust/keys/snapshot.key and timestamp.key, named by the current root: restore \
             them, or make new ones with `semithin trust rotate snapshot|timestamp --root-key \
             FILE` (needs the offline root key)"
        )),
    }
    for (name, r) in &status.roles {
        let what = match Role::parse(name) {
            Some(Role::Root) => {
                // the refresh warnings say it, with what to do, when the root is near its end
                if r.expires_in <= 0 && renewal.is_err() {
                    out.push(format!(
                        "the root expired at {}: sign a new root with `semithin trust rotate` \
                         (needs the offline root key)",
                        r.expires
                    ));
                }
                continue;
            }
            Some(Role::Targets) => {
                "sign it again with `semithin trust refresh` (the targets key) or publish"
            }
            _ => "see the renewal error",
        };
        if !r.signed {
            out.push(format!(
                "{name} is not signed by the key the current root names (an unfinished key \
                 rotation?): run `semithin trust refresh`"
            ));
        } else if r.expires_in <= 0 {
            out.push(format!(
                "{name} expired at {}: machines verify no release until it is signed again; {what}",
                r.expires
            ));
        } else if name == "targets" {
            let lifetime = status
                .lifetimes
                .get(name)
                .and_then(|l| semithin_trust::repo::parse_duration(l))
                .unwrap_or(i64::MAX);
            if (r.expires_in as f64) < lifetime as f64 * left {
                out.push(format!(
                    "targets expires at {} (in {}); the server does not sign targets: {what} \
                     before then",
                    r.expires,
                    semithin_trust::repo::format_duration_rounded(r.expires_in)
                ));
            }
        }
    }
    out
}

/// Looks once and records what it found; logs renewals, and problems when they change (and
/// hourly while they last).
pub async fn check(app: &Arc<App>) {
    let (left, repo) = (app.cfg.trust_renew_left, app.cfg.repo());
    let now = crate::now();
    let looked = tokio::task::spawn_blocking(move || look(&repo, left, now)).await;
    let looked = match looked {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            record_problems(app, now, vec![format!("reading the trust metadata: {e}")]);
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "the trust renewal task failed");
            return;
        }
    };
    let (renewal, status) = match looked {
        Looked::Busy => {
            tracing::debug!(
                "the repository is locked by a command: trust renewal at the next look"
            );
            return;
        }
        Looked::Done { renewal, status } => (renewal, status),
    };
    let problems = problems(&renewal, &status, left);
    {
        let mut h = app.renewal.health.lock().expect("lock");
        h.checked_at = Some(now);
        h.roles = status
            .roles
            .iter()
            .map(|(name, r)| {
                let e = RoleExpiry {
                    version: r.version,
                    expires: r.expires.clone(),
                    expires_in: r.expires_in,
                };
                (name.clone(), e)
            })
            .collect();
        if let Ok(r) = &renewal
            && !r.written.is_empty()
        {
            h.renewed_at = Some(now);
            h.renewed = r
                .written
                .iter()
                .map(|w| format!("{} version {}, expires {}", w.role, w.version, w.expires))
                .collect();
            for w in &r.written {
                let why = r.reasons.get(&w.role).map(String::as_str).unwrap_or("");
                tracing::info!(
                    role = %w.role,
                    version = w.version,
                    expires = %w.expires,
                    reason = %why,
                    "trust metadata renewed"
                );
            }
        }
    }
    record_problems(app, now, problems);
}

fn record_problems(app: &App, now: i64, problems: Vec<String>) {
    let mut h = app.renewal.health.lock().expect("lock");
    let mut logged = app.renewal.logged_at.lock().expect("lock");
    let changed = h.problems != problems;
    if !problems.is_empty() && (changed || now.saturating_sub(*logged) >= LOG_AGAIN_SECS) {
        for p in &problems {
            tracing::error!(problem = %p, "trust metadata: the admin must act");
        }
        *logged = now;
    } else if changed && problems.is_empty() {
        tracing::info!("trust metadata: no problem left");
    }
    h.ok = problems.is_empty();
    h.problems = problems;
}

/// Looks every `trust_check_secs` until the server stops (the first look is made at start).
pub async fn run(app: Arc<App>) {
    let every = Duration::from_secs(app.cfg.trust_check_secs.max(1));
    let mut shutdown = app.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        check(&app).await;
        crate::assignments::sign_logged(&app).await;
    }
}

pub fn routes() -> utoipa_axum::router::OpenApiRouter<Arc<App>> {
    utoipa_axum::router::OpenApiRouter::new().routes(utoipa_axum::routes!(health))
}

#[utoipa::path(get, path = "/api/v1/admin/trust", tag = "admin", summary = "Whether the server keeps the signed metadata fresh", responses((status = 200, description = "The roles' expiry and what to do", body = TrustHealth), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn health(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Json<TrustHealth>> {
    admin(&app, &headers)?;
    Ok(Json(app.renewal.health()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use semithin_store::repo::Config as RepoConfig;

    const DAY: i64 = 86_400;

    /// A repository with trust metadata signed at `t0`.
    fn repo(t0: i64) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("repo");
        Repo::init(&repo, RepoConfig::default()).unwrap();
        semithin_trust::repo::init(
            &crate::releases::trust_dir(&repo),
            &[d.path().join("root.key")],
            1,
            t0,
        )
        .unwrap();
        (d, repo)
    }

    fn done(l: Looked) -> (Result<RefreshReport, String>, Status) {
        match l {
            Looked::Done { renewal, status } => (renewal, *status),
            Looked::Busy => panic!("busy"),
        }
    }

    fn written(r: &Result<RefreshReport, String>) -> Vec<String> {
        r.as_ref()
            .unwrap()
            .written
            .iter()
            .map(|w| w.role.clone())
            .collect()
    }

    #[test]
    fn snapshot_and_timestamp_are_renewed_before_they_expire_and_after() {
        let t0 = 1_800_000_000;
        let (_d, repo) = repo(t0);
        // fresh: nothing to do, no problem
        let (r, s) = done(look(&repo, 0.5, t0 + 3600).unwrap());
        assert!(written(&r).is_empty());
        assert!(problems(&r, &s, 0.5).is_empty());
        // 13 h later, 11 h left of 24: the timestamp is renewed, well before it expires
        let (r, s) = done(look(&repo, 0.5, t0 + 13 * 3600).unwrap());
        assert_eq!(written(&r), ["timestamp"]);
        assert_eq!(s.roles["timestamp"].expires_in, DAY);
        // with a smaller margin nothing is due 13 h after that
        let (r, _) = done(look(&repo, 0.25, t0 + 26 * 3600).unwrap());
        assert!(written(&r).is_empty());
        // long after everything but the root expired (a server down for 100 days): snapshot and
        // timestamp renewed; the expired targets is a problem for the admin, with what to do
        let late = t0 + 100 * DAY;
        let (r, s) = done(look(&repo, 0.5, late).unwrap());
        assert_eq!(written(&r), ["assignments", "snapshot", "timestamp"]);
        assert!(s.roles["timestamp"].expires_in > 0 && s.roles["snapshot"].expires_in > 0);
        let p = problems(&r, &s, 0.5);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("targets expired at"), "{p:?}");
        assert!(p[0].contains("semithin trust refresh"), "{p:?}");
    }

    #[test]
    fn what_the_server_cannot_do_is_said_with_what_to_do() {
        let t0 = 1_800_000_000;
        let (_d, repo) = repo(t0);
        let keys = crate::releases::trust_dir(&repo).join("keys");
        // targets close to its end: said before it expires
        let (r, s) = done(look(&repo, 0.5, t0 + 80 * DAY).unwrap());
        let p = problems(&r, &s, 0.5);
        assert!(
            p.iter()
                .any(|p| p.starts_with("targets expires at") && p.contains("publish")),
            "{p:?}"
        );
        // the timestamp key is missing: the error names it and says what to do
        std::fs::remove_file(keys.join("timestamp.key")).unwrap();
        let (r, s) = done(look(&repo, 0.5, t0 + 82 * DAY).unwrap());
        let e = r.as_ref().err().unwrap();
        assert!(e.contains("timestamp.key"), "{e}");
        let p = problems(&r, &s, 0.5);
        assert!(
            p.iter()
                .any(|p| p.contains("cannot sign") && p.contains("trust rotate")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|p| p.starts_with("timestamp expired at")),
            "{p:?}"
        );
    }

    #[test]
    fn a_locked_repository_is_left_for_the_next_look() {
        let t0 = 1_800_000_000;
        let (_d, repo) = repo(t0);
        let held = Repo::open(&repo, Access::Read).unwrap();
        assert!(matches!(
            look(&repo, 0.5, t0 + 20 * 3600).unwrap(),
            Looked::Busy
        ));
        drop(held);
        let (r, _) = done(look(&repo, 0.5, t0 + 20 * 3600).unwrap());
        assert_eq!(written(&r), ["timestamp"]);
    }
}
