//! The dashboard's static files, compiled into the binary (`crates/server/assets/`): htmx as
//! published on npm (`htmx.org` 2.0.11, Zero-Clause BSD: `htmx-LICENSE`), the dashboard's own
//! script and style sheet. Served without a session (the login page uses them).

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// `(name, content type, bytes)` of every file.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "htmx.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/htmx-2.0.11.min.js"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/dashboard.css"),
    ),
];

pub async fn get(Path(file): Path<String>) -> Response {
    let Some((_, kind, bytes)) = FILES.iter().find(|(n, _, _)| *n == file) else {
        return crate::http::ApiErr::not_found(format!("no dashboard file {file:?}"))
            .into_response();
    };
    let mut r = (StatusCode::OK, *bytes).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // The pages name them with the server's version (`?v=`), so a new binary is fetched anew.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}
