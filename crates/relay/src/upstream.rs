//! The relay's upstreams, tried in order: the relay's own reads are signed with its own machine
//! key (it is an enrolled machine of the root), forwarded requests go up as they came, with the
//! relay's name appended to `X-Semithin-Relay`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use bytes::Bytes;
use reqwest::Url;
use semithin_protocol::sign::{self, MachineKey};

use crate::error::{Error, Result};

/// The header a relay appends its name to on every request it forwards.
pub const HEADER_RELAY: &str = "x-semithin-relay";

/// Headers a forwarded request keeps (the signature's, the body's type, the admin's token, a
/// range): nothing about the connection itself.
const KEPT: &[&str] = &[
    sign::HEADER_MACHINE,
    sign::HEADER_DATE,
    sign::HEADER_COUNTER,
    sign::HEADER_SIGNATURE,
    "content-type",
    "authorization",
    "range",
    "if-range",
    HEADER_RELAY,
];

pub struct Upstreams {
    bases: Vec<Url>,
    client: reqwest::Client,
    key: Arc<MachineKey>,
    name: String,
    /// The upstream that answered last: tried first.
    current: AtomicUsize,
}

/// Whether an answer's status means "try the next upstream".
fn failing(status: u16) -> bool {
    status >= 500
}

impl Upstreams {
    pub fn new(
        urls: &[String],
        key: Arc<MachineKey>,
        name: &str,
        ca: Option<&std::path::Path>,
    ) -> Result<Self> {
        if urls.is_empty() {
            return Err(Error::Bad(
                "a relay needs at least one --upstream URL".into(),
            ));
        }
        let mut bases = Vec::new();
        for u in urls {
            let url = Url::parse(u.trim_end_matches('/'))
                .map_err(|e| Error::Bad(format!("upstream URL {u:?}: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(Error::Bad(format!(
                    "upstream URL {u:?}: expected http:// or https:// and a host"
                )));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(Error::Bad(format!(
                    "upstream URL {u:?}: a query or fragment is not accepted"
                )));
            }
            bases.push(url);
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(10));
        if let Some(ca) = ca {
            let pem = std::fs::read(ca)
                .map_err(|e| Error::Bad(format!("CA certificates {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Bad(format!("CA certificates {}: {e}", ca.display())))?;
            b = b.tls_certs_only(certs);
        } else if bases.iter().all(|u| u.scheme() == "http") {
            b = b.tls_certs_only(Vec::new());
        }
        let client = b
            .build()
            .map_err(|e| Error::Bad(format!("HTTP client: {e}")))?;
        Ok(Self {
            bases,
            client,
            key,
            name: name.to_owned(),
            current: AtomicUsize::new(0),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The upstream that answered last (tried first).
    pub fn current(&self) -> &str {
        self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()].as_str()
    }

    fn url(&self, i: usize, path_and_query: &str) -> Url {
        let base = &self.bases[i];
        let mut s = base.as_str().trim_end_matches('/').to_owned();
        s.push_str(path_and_query);
        Url::parse(&s).unwrap_or_else(|_| base.clone())
    }

    /// Sends `build(url)` to each upstream in turn, starting with the one that answered last,
    /// until one answers with less than 500. A refusal (4xx) is returned as the answer.
    async fn each(
        &self,
        what: &str,
        path_and_query: &str,
        build: impl Fn(Url) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let n = self.bases.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut errors = Vec::new();
        for step in 0..n {
            let i = (first + step) % n;
            match build(self.url(i, path_and_query)).send().await {
                Ok(r) if !failing(r.status().as_u16()) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(r);
                }
                Ok(r) => errors.push(format!("{}: {}", self.bases[i], r.status())),
                Err(e) => errors.push(format!("{}: {}", self.bases[i], chain(&e))),
            }
        }
        Err(Error::Unreachable(format!("{what}: {}", errors.join("; "))))
    }

    /// The relay's own signed read (a cache miss or a metadata refresh).
    pub async fn fetch(
        &self,
        method: &str,
        path_and_query: &str,
        body: Bytes,
    ) -> Result<reqwest::Response> {
        let resp = self
            .each(path_and_query, path_and_query, |url| {
                let counter = sign::PROCESS_COUNTER.next_now();
                let mut rb = if method == "POST" {
                    self.client
                        .post(url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                } else {
                    self.client.get(url)
                };
                for (k, v) in self.key.sign(method, path_and_query, counter, &body) {
                    rb = rb.header(k, v);
                }
                rb.header(HEADER_RELAY, self.name.as_str())
            })
            .await?;
        refused(resp).await
    }

    /// A child's request sent upstream as it came (signature intact: the path from `/api/v1`
    /// on, the body and the signed headers are unchanged), the relay's name appended to the
    /// relay chain. The answer is returned whatever its status.
    pub async fn forward(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<reqwest::Response> {
        let chain = match headers.get(HEADER_RELAY).and_then(|v| v.to_str().ok()) {
            Some(c) if !c.trim().is_empty() => format!("{}, {}", c.trim(), self.name),
            _ => self.name.clone(),
        };
        let chain = HeaderValue::from_str(&chain)
            .map_err(|_| Error::Bad(format!("bad {HEADER_RELAY} header")))?;
        self.each(path_and_query, path_and_query, |url| {
            let mut rb = self.client.request(method.clone(), url);
            for k in KEPT {
                if *k == HEADER_RELAY {
                    continue;
                }
                if let Some(v) = headers.get(HeaderName::from_static(k)) {
                    rb = rb.header(*k, v.clone());
                }
            }
            rb.header(HEADER_RELAY, chain.clone()).body(body.clone())
        })
        .await
    }
}

/// An answer of 4xx as [`Error::Upstream`] with its reason; others as they are.
pub async fn refused(resp: reqwest::Response) -> Result<reqwest::Response> {
    let status = resp.status().as_u16();
    if status < 400 {
        return Ok(resp);
    }
    let text = resp.text().await.unwrap_or_default();
    let reason = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or(text);
    Err(Error::Upstream {
        status,
        reason: format!("upstream: {reason}"),
    })
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
