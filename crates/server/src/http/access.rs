//! The access log: one line per request, whatever became of it (404s of probes included), at
//! level info under the target `semithin::access` (`SEMITHIN_LOG=info,semithin::access=off`
//! silences it; `log_format = "json"` makes it JSON like every other line).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::App;

pub async fn log(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let ip = super::throttle::client_ip(peer, req.headers(), &app.cfg.trusted_proxies);
    let start = Instant::now();
    let resp = next.run(req).await;
    tracing::info!(
        target: "semithin::access",
        %ip,
        %method,
        %path,
        status = resp.status().as_u16(),
        ms = start.elapsed().as_millis() as u64,
        "request"
    );
    resp
}
