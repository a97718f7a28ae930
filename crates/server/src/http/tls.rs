//! HTTPS with rustls, when a certificate and key are configured.

use std::path::Path;

use axum::Router;

use crate::error::{Error, Result};

pub async fn serve(
    _listener: tokio::net::TcpListener,
    _router: Router,
    cert: &Path,
    _key: &Path,
    _shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    Err(Error::Config(format!(
        "TLS ({}) is not available in this build yet",
        cert.display()
    )))
}
