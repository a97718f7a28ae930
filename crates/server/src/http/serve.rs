//! The accept loop, for plain HTTP and HTTPS alike, with the bounds that keep idle or slow
//! clients from exhausting the server (docs/PROTOCOL.md, "Limits"):
//!
//! - at most `max_connections` connections are open (TLS handshakes included); at the cap the
//!   server accepts no more until one closes, so it never runs out of file descriptors;
//! - a connection must deliver a whole request header within `header_timeout` of opening (or
//!   of its previous answer: idle keep-alive connections close after it), and finish its TLS
//!   handshake within the same time;
//! - a connection whose client takes nothing of an answer for `idle_timeout` is closed.
//!
//! Request bodies and handlers are bounded by the router's deadlines ([`super::router`]).
//! Each request carries the peer's address as [`axum::extract::ConnectInfo`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::error::{Error, Result};

/// The bounds of connections (see the module's documentation).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until `shutdown` resolves; then
/// accepts nothing more, lets open requests finish and returns when every connection closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map_err(Error::io("listening on", "the socket"))?;
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    // Tells handshakes still running that the server stops (they are dropped).
    let (stopping, stop_rx) = tokio::sync::watch::channel(false);
    let mut at_cap = false;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => {
                at_cap = false;
                p
            }
            Err(_) => {
                if !at_cap {
                    at_cap = true;
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "at the connection cap: new connections wait until one closes"
                    );
                }
                tokio::select! {
                    p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                    _ = &mut shutdown => break,
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            c = listener.accept() => match c {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok();
        let io = Guarded::new(tcp, limits.idle_timeout);
        let conn = Connection {
            router: router.clone(),
            http: http.clone(),
            tls: tls.clone(),
            peer,
            local,
            handshake_timeout: limits.header_timeout,
            stopping: stop_rx.clone(),
        };
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            conn.serve(io, watcher).await;
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    tracing::debug!(%addr, "no longer accepting; finishing open requests");
    graceful.shutdown().await;
    Ok(())
}

/// What one connection's task needs.
struct Connection {
    router: Router,
    http: hyper::server::conn::http1::Builder,
    tls: Option<TlsAcceptor>,
    peer: SocketAddr,
    /// The address the peer reached (the tracker tells peers the server's seeder on it).
    local: Option<SocketAddr>,
    handshake_timeout: Duration,
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl Connection {
    /// Serves the connection to its end (the TLS handshake first, if any; it is dropped when
    /// the server stops meanwhile). Each request carries the peer's address.
    async fn serve(mut self, io: Guarded<TcpStream>, watcher: Watcher) {
        let peer = self.peer;
        let local = self.local;
        let router = self.router;
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            if let Some(l) = local {
                req.extensions_mut().insert(super::torrent::LocalAddr(l));
            }
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
        let served = match self.tls {
            None => {
                let conn = self.http.serve_connection(TokioIo::new(io), svc);
                watcher.watch(conn).await
            }
            Some(acceptor) => {
                let handshake = tokio::time::timeout(self.handshake_timeout, acceptor.accept(io));
                let done = tokio::select! {
                    d = handshake => d,
                    _ = self.stopping.wait_for(|s| *s) => return,
                };
                let stream = match done {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let conn = self.http.serve_connection(TokioIo::new(stream), svc);
                watcher.watch(conn).await
            }
        };
        if let Err(e) = served {
            tracing::debug!(%peer, error = %e, "connection closed");
        }
    }
}

/// A connection whose writes fail once the client has taken nothing for `limit`.
struct Guarded<S> {
    inner: S,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Guarded<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    /// A write made progress (`Ready`) or is waiting: the stall timer is cleared, or started
    /// and checked.
    fn watch<T>(&mut self, cx: &mut Context<'_>, p: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if p.is_ready() {
            self.stalled = None;
            return p;
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client took nothing of the answer for {} s",
                    limit.as_secs()
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, p)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, p)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, p)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, p)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::testkit::TestServer;

    /// A CA and a certificate it signed for 127.0.0.1, made with openssl: (cert, key, CA).
    fn certs(
        dir: &std::path::Path,
    ) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(
                "set -e; \
                 openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
                   -subj '/CN=semithin test CA' -keyout ca.key -out ca.pem 2>/dev/null; \
                 openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                   -subj '/CN=127.0.0.1' -keyout server.key -out server.csr 2>/dev/null; \
                 printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > ext; \
                 openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                   -days 2 -extfile ext -out server.pem 2>/dev/null",
            )
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            dir.join("server.pem"),
            dir.join("server.key"),
            dir.join("ca.pem"),
        )
    }

    const IDLE: usize = 300;

    async fn idle_connections_are_dropped(s: TestServer) {
        let mut idle = Vec::with_capacity(IDLE);
        for _ in 0..IDLE {
            idle.push(tokio::net::TcpStream::connect(s.addr).await.unwrap());
        }
        // The server still answers, on a connection queued behind all the idle ones.
        let start = Instant::now();
        let r = s.client.get(s.at("/api/v1/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let waited = start.elapsed();
        assert!(
            waited < Duration::from_secs(20),
            "health answered after {waited:?}"
        );
        // Every idle connection is closed by the server.
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, mut c) in idle.into_iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut buf = [0u8; 64];
            match tokio::time::timeout(left, c.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {}
                Ok(Ok(n)) => panic!("idle connection {i} got {n} bytes"),
                Err(_) => panic!("idle connection {i} still open after 30 s"),
            }
        }
        // ...and it keeps answering.
        let r = s.client.get(s.at("/api/v1/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        s.stop().await;
    }

    fn tight(cfg: &mut crate::Config) {
        cfg.header_timeout_secs = 1;
        cfg.max_connections = 64;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_are_dropped_and_the_server_keeps_answering_over_http() {
        idle_connections_are_dropped(TestServer::start(tight).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_are_dropped_and_the_server_keeps_answering_over_https() {
        let dir = tempfile::tempdir().unwrap();
        let tls = certs(dir.path());
        idle_connections_are_dropped(TestServer::start_tls(Some(tls), tight).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_that_sends_half_a_header_is_closed() {
        let s = TestServer::start(tight).await;
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        c.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let start = Instant::now();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "still open after 20 s");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        s.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_waits_neither_for_idle_connections_nor_for_handshakes() {
        let dir = tempfile::tempdir().unwrap();
        let s =
            TestServer::start_tls(Some(certs(dir.path())), |c| c.header_timeout_secs = 60).await;
        let _silent = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = Instant::now();
        s.stop().await;
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn a_write_the_client_never_takes_fails_after_the_idle_timeout() {
        let (a, _b) = tokio::io::duplex(64);
        let mut g = Guarded::new(a, Duration::from_millis(300));
        let start = Instant::now();
        let err = loop {
            match g.write(&[0u8; 64]).await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }
}
