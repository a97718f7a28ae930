//! Dashboard sessions (docs/DASHBOARD.md, "Sessions"): a login with the admin token makes a
//! random session id, sent as an HttpOnly, SameSite=Strict cookie (Secure over TLS) and kept
//! here in memory only as its BLAKE3, with a CSRF token, the fingerprint of the admin token it
//! was made with, and its expiry. Every request of the admin API that a page's JavaScript makes
//! carries the cookie and the CSRF token in [`CSRF_HEADER`]; [`crate::http::admin`] accepts
//! that as it accepts the bearer token. `now` is passed in.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{HeaderMap, StatusCode, header};

use crate::App;
use crate::http::{ApiErr, ApiResult};

/// The cookie that carries the session id.
pub const COOKIE: &str = "semithin_session";
/// The header that carries the session's CSRF token on API requests (and the form field
/// `csrf` on the dashboard's own forms).
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session unused this long ends.
pub const IDLE_SECS: i64 = 2 * 3600;
/// A session ends this long after its login, used or not.
pub const MAX_SECS: i64 = 12 * 3600;
/// The most sessions kept; a login past it ends the oldest.
pub const MAX_SESSIONS: usize = 256;

/// What the server keeps of a session.
#[derive(Clone, Debug)]
pub struct Session {
    /// The per-session CSRF token (32 random bytes, hex).
    pub csrf: String,
    /// `admin:` and 16 hex digits of the admin token's BLAKE3, as the audit log names it.
    pub actor: String,
    pub created: i64,
    pub used: i64,
}

impl Session {
    fn live(&self, now: i64) -> bool {
        now < self.created.saturating_add(MAX_SECS) && now < self.used.saturating_add(IDLE_SECS)
    }
}

/// The sessions of the dashboard, keyed by the BLAKE3 of their id (the id itself is never
/// kept, so looking one up tells nothing about another).
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<[u8; 32], Session>>,
}

fn random_hex() -> ApiResult<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| ApiErr::internal(format!("no randomness: {e}")))?;
    Ok(hex::encode(b))
}

fn key(id: &str) -> [u8; 32] {
    *blake3::hash(id.as_bytes()).as_bytes()
}

/// The audit log's name of an admin token: `admin:` and 16 hex digits of its BLAKE3.
pub fn actor_of(token_hash: &blake3::Hash) -> String {
    format!("admin:{}", hex::encode(&token_hash.as_bytes()[..8]))
}

/// Equal in constant time (as BLAKE3 hashes: `blake3::Hash` compares in constant time).
pub fn same(a: &str, b: &str) -> bool {
    blake3::hash(a.as_bytes()) == blake3::hash(b.as_bytes())
}

impl Sessions {
    /// A new session for a login with the token whose hash is `token_hash`: its id (for the
    /// cookie) and what is kept.
    pub fn create(&self, token_hash: &blake3::Hash, now: i64) -> ApiResult<(String, Session)> {
        let id = random_hex()?;
        let s = Session {
            csrf: random_hex()?,
            actor: actor_of(token_hash),
            created: now,
            used: now,
        };
        let mut map = self.by_id.lock().expect("lock");
        map.retain(|_, s| s.live(now));
        while map.len() >= MAX_SESSIONS {
            let Some(oldest) = map.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k) else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(key(&id), s.clone());
        Ok((id, s))
    }

    /// The live session of this id, its use noted; an expired one is removed. `actor` is the
    /// admin token's name now: a session made with another token is over.
    pub fn get(&self, id: &str, actor: &str, now: i64) -> Option<Session> {
        let mut map = self.by_id.lock().expect("lock");
        let k = key(id);
        let s = map.get_mut(&k)?;
        if !s.live(now) || !same(&s.actor, actor) {
            map.remove(&k);
            return None;
        }
        s.used = now;
        Some(s.clone())
    }

    pub fn remove(&self, id: &str) {
        self.by_id.lock().expect("lock").remove(&key(id));
    }

    pub fn len(&self) -> usize {
        self.by_id.lock().expect("lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The session id of the request's cookie, if it sends one.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value of a new session.
pub fn set_cookie(id: &str, tls: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={MAX_SECS}{}",
        if tls { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends it in the browser.
pub fn clear_cookie(tls: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if tls { "; Secure" } else { "" }
    )
}

/// The request's live session (pages: no CSRF check, they change nothing).
pub fn current(app: &App, headers: &HeaderMap) -> Option<(String, Session)> {
    let id = cookie(headers)?;
    let s = app
        .web
        .sessions
        .get(id, &actor_of(&app.admin_token_hash), crate::now())?;
    Some((id.to_owned(), s))
}

/// The admin API's check of a request without `Authorization`: `None` when it sends no session
/// cookie either; else whether the session is live and the request carries its CSRF token.
pub fn admin(app: &App, headers: &HeaderMap) -> Option<ApiResult<Session>> {
    cookie(headers)?;
    let Some((_, s)) = current(app, headers) else {
        return Some(Err(ApiErr(
            StatusCode::UNAUTHORIZED,
            "the dashboard session has ended (expired, logged out or the server restarted): \
             log in again"
                .into(),
        )));
    };
    let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    Some(match sent {
        Some(t) if same(t, &s.csrf) => Ok(s),
        Some(_) => Err(ApiErr::forbidden(format!(
            "wrong CSRF token in {CSRF_HEADER}: reload the page"
        ))),
        None => Err(ApiErr::forbidden(format!(
            "a request with the dashboard's session cookie must carry its CSRF token in the \
             {CSRF_HEADER} header"
        ))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_idle_and_at_their_age_and_follow_the_token() {
        let s = Sessions::default();
        let h = blake3::hash(b"admin token one");
        let actor = actor_of(&h);
        let t = 1_000_000;
        let (id, made) = s.create(&h, t).unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(made.csrf, id);
        assert_eq!(s.get(&id, &actor, t + 10).unwrap().csrf, made.csrf);
        assert!(s.get("x", &actor, t).is_none());
        // another admin token: over, and forgotten
        assert!(
            s.get(&id, &actor_of(&blake3::hash(b"other")), t + 20)
                .is_none()
        );
        assert!(s.get(&id, &actor, t + 20).is_none());
        // idle
        let (id, _) = s.create(&h, t).unwrap();
        assert!(s.get(&id, &actor, t + IDLE_SECS - 1).is_some());
        assert!(s.get(&id, &actor, t + 2 * IDLE_SECS - 2).is_some());
        assert!(s.get(&id, &actor, t + 3 * IDLE_SECS).is_none());
        // used all along, still ends at its age
        let (id, _) = s.create(&h, t).unwrap();
        let mut now = t;
        while now < t + MAX_SECS - 60 {
            now += 600;
            assert!(s.get(&id, &actor, now.min(t + MAX_SECS - 1)).is_some());
        }
        assert!(s.get(&id, &actor, t + MAX_SECS).is_none());
        s.remove(&id);
    }

    #[test]
    fn the_number_of_sessions_is_bounded() {
        let s = Sessions::default();
        let h = blake3::hash(b"admin token one");
        let (first, _) = s.create(&h, 1).unwrap();
        for i in 0..MAX_SESSIONS {
            s.create(&h, 2 + i as i64).unwrap();
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(
            s.get(&first, &actor_of(&h), 100).is_none(),
            "the oldest went"
        );
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; semithin_session=abc ; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h), Some("abc"));
        h.insert(header::COOKIE, "semithin_sessionx=abc".parse().unwrap());
        assert_eq!(cookie(&h), None);
        assert!(set_cookie("id", true).contains("HttpOnly; SameSite=Strict"));
        assert!(set_cookie("id", true).ends_with("; Secure"));
        assert!(!set_cookie("id", false).contains("Secure"));
        assert!(same("abc", "abc") && !same("abc", "abd"));
    }
}
