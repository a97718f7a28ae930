//! The web dashboard at `/` (docs/DASHBOARD.md): pages rendered on the server from the fleet in
//! memory with askama templates (`crates/server/templates/`, compiled into the binary), a
//! little JavaScript (htmx, vendored in `assets/`, and `dashboard.js`) for live parts and for
//! actions. Pages only read; every action a page offers is a request of the admin API made by
//! the page's JavaScript with the session cookie and the CSRF token ([`session`]), so it passes
//! the same checks as the CLI's and the audit log records it with the token's fingerprint.

mod assets;
mod chart;
pub mod index;
mod machine;
mod ops;
pub mod session;
#[cfg(test)]
mod tests;
mod views;

use std::net::SocketAddr;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::App;
use crate::http::throttle::{self, Failed, Throttle};
use session::Sessions;

/// The dashboard's state in [`App`].
#[derive(Default)]
pub struct Web {
    pub sessions: Sessions,
    /// Wrong admin tokens given at the login page, per address.
    pub login_failures: Throttle,
    /// The fleet as the machines list and the overview read it.
    pub index: index::Cache,
}

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(views::overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/machines", get(views::machines))
        .route("/machines/{name}", get(machine::machine))
        .route("/machines/{name}/packages", get(machine::machine_packages))
        .route("/channels", get(ops::channels))
        .route("/rollouts", get(ops::rollouts))
        .route("/rollouts/{id}", get(ops::rollout))
        .route("/jobs", get(ops::jobs))
        .route("/jobs/{id}", get(ops::job))
        .route("/audit", get(ops::audit))
        .route("/assets/{file}", get(assets::get))
}

/// What every page's frame shows: the navigation and the session's CSRF token.
pub struct Nav {
    pub active: &'static str,
    pub csrf: String,
    pub actor: String,
}

impl Nav {
    /// Names the assets in their URLs, so a new binary's are fetched anew.
    pub fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }
}

/// A page's request: a live session, or the answer that sends the browser to the login page.
pub fn page(
    app: &App,
    headers: &HeaderMap,
    uri: &Uri,
    active: &'static str,
) -> Result<Nav, Box<Response>> {
    match session::current(app, headers) {
        Some((_, s)) => Ok(Nav {
            active,
            csrf: s.csrf,
            actor: s.actor,
        }),
        None => {
            let next = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let to = format!(
                "/login?next={}",
                url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
            );
            let mut resp = if headers.contains_key("hx-request") {
                // htmx follows HX-Redirect instead of swapping the answer in
                let mut r = StatusCode::UNAUTHORIZED.into_response();
                r.headers_mut()
                    .insert("hx-redirect", HeaderValue::from_static("/login"));
                r
            } else {
                let mut r = StatusCode::SEE_OTHER.into_response();
                r.headers_mut().insert(
                    header::LOCATION,
                    HeaderValue::from_str(&to).unwrap_or(HeaderValue::from_static("/login")),
                );
                r
            };
            secure(resp.headers_mut());
            Err(Box::new(resp))
        }
    }
}

/// Whether htmx asks for the live part of a page only.
pub fn fragment(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request")
}

/// The headers every dashboard answer carries: nothing cached, no framing, scripts and styles
/// only from the server itself.
fn secure(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

/// A rendered template as an HTML answer.
pub fn html(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => {
            let mut r = (
                status,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                body,
            )
                .into_response();
            secure(r.headers_mut());
            r
        }
        Err(e) => crate::http::ApiErr::internal(format!("rendering a page: {e}")).into_response(),
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    nav: Nav,
    title: String,
    message: String,
}

/// A page that cannot be shown (no such machine, a bad filter): the message, in the frame.
pub fn error(status: StatusCode, nav: Nav, message: impl Into<String>) -> Response {
    let title = status.canonical_reason().unwrap_or("Error").to_owned();
    html(
        status,
        &ErrorPage {
            nav,
            title,
            message: message.into(),
        },
    )
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    next: String,
    message: String,
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Where a login may send the browser: a path of this server only (`/x`, never `//host`).
fn local(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/".to_owned(),
    }
}

fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/")),
    );
    secure(r.headers_mut());
    r
}

async fn login_page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let next = local(q.next.as_deref());
    if session::current(&app, &headers).is_some() {
        return see_other(&next);
    }
    html(
        StatusCode::OK,
        &LoginPage {
            next,
            message: String::new(),
        },
    )
}

/// A form's fields (`application/x-www-form-urlencoded`).
fn form(body: &[u8]) -> std::collections::HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// A form posted from another site is refused: browsers send `Origin` (and `Sec-Fetch-Site`)
/// with a POST, and it must be this server.
fn same_origin(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site" || v == "same-site")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, h)| !host.is_empty() && h == host)
}

async fn login(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let next = local(f.get("next").map(String::as_str));
    let refuse = |status: StatusCode, message: String| {
        html(
            status,
            &LoginPage {
                next: next.clone(),
                message,
            },
        )
    };
    if !same_origin(&headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            "a login form sent from another site is refused".into(),
        );
    }
    let ip = throttle::client_ip(peer.ip(), &headers, &app.cfg.trusted_proxies);
    let now = crate::now();
    if let Err(wait) = app.web.login_failures.check(ip, now) {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many wrong tokens from your address: try again in {wait} s"),
        );
    }
    let token = f.get("token").map(|t| t.trim()).unwrap_or("");
    if token.is_empty() || !app.is_admin_token(token) {
        let said = match app.web.login_failures.failed(ip, now) {
            Failed::Blocked => format!(
                "wrong admin token; too many from your address: refused for {} s",
                throttle::WINDOW_SECS
            ),
            Failed::Counted(_) => "wrong admin token: give the token of `semithin serve` \
                                   (its --admin-token, or DATA/admin-token)"
                .into(),
        };
        tracing::warn!(%ip, "dashboard login refused: wrong admin token");
        return refuse(StatusCode::UNAUTHORIZED, said);
    }
    let (id, _) = match app.web.sessions.create(&app.admin_token_hash, now) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    tracing::info!(%ip, "dashboard login");
    let mut r = see_other(&next);
    let cookie = session::set_cookie(&id, app.cfg.tls_cert.is_some());
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// Ends the session: the form carries its CSRF token.
async fn logout(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some((id, s)) = session::current(&app, &headers) else {
        return see_other("/login");
    };
    let f = form(&body);
    let ok = f.get("csrf").is_some_and(|t| session::same(t, &s.csrf));
    if !ok || !same_origin(&headers) {
        let mut r = (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "logout refused: the form lacks the session's CSRF token (reload the page)\n",
        )
            .into_response();
        secure(r.headers_mut());
        return r;
    }
    app.web.sessions.remove(&id);
    let mut r = see_other("/login");
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(app.cfg.tls_cert.is_some())) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// Seconds ago, as `fleet list` says it.
pub fn ago(t: Option<i64>) -> String {
    let Some(t) = t else {
        return "never".into();
    };
    let d = (crate::now() - t).max(0);
    match d {
        0..60 => format!("{d}s ago"),
        60..3600 => format!("{}m ago", d / 60),
        3600..86400 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

/// A time as UTC text.
pub fn time(t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| t.to_string())
}

pub fn short(id: Option<&str>) -> String {
    id.map(semithin_protocol::ids::short_str)
        .map(str::to_owned)
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod rules {
    use super::*;

    #[test]
    fn a_login_only_sends_the_browser_to_this_server() {
        assert_eq!(local(Some("/machines?q=a")), "/machines?q=a");
        assert_eq!(local(Some("//evil.example/")), "/");
        assert_eq!(local(Some("https://evil.example/")), "/");
        assert_eq!(local(Some("/\\evil.example")), "/");
        assert_eq!(local(None), "/");
    }

    #[test]
    fn forms_from_other_sites_are_refused() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h), "no Origin: a non-browser client");
        h.insert(header::HOST, "127.0.0.1:8470".parse().unwrap());
        h.insert(header::ORIGIN, "http://127.0.0.1:8470".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, "http://127.0.0.1:8470".parse().unwrap());
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(!same_origin(&h));
    }
}
