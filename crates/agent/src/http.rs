//! The agent's side of the protocol: every request after enrollment is signed with the
//! machine's key (docs/PROTOCOL.md); every response is size-limited and time-bounded.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::Url;
use reqwest::blocking::{Client, ClientBuilder, RequestBuilder, Response};
use semithin_protocol::api::{
    ApiError, CheckInRequest, CheckInResponse, EnrollRequest, EnrollResponse, ObjectsRequest,
};
use semithin_protocol::path::ApiPath;
use semithin_protocol::sign::MachineKey;
use semithin_trust::client::Fetcher;

use crate::error::{Error, Result};

pub struct Api {
    /// The server URL as configured, without a trailing `/`.
    base: String,
    /// The same, parsed: every request URL is this with an [`ApiPath`] appended to its path
    /// ([`Api::url`]), so no answer of the server can change the scheme, host or port.
    base_url: Url,
    client: Client,
    key: MachineKey,
    /// Bytes received from the server (objects and metadata).
    pub received: AtomicU64,
}

/// An HTTP client builder for talking to a semithin server. HTTPS is rustls with the ring
/// provider; with `ca` (a PEM file of one or more certificates) only those are trusted, as fits a
/// fleet's own certificate authority; without it, the system's roots.
pub fn client_builder(ca: Option<&Path>) -> Result<ClientBuilder> {
    // reqwest is built without a provider of its own; a second install is a harmless no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // An idle connection is dropped before the server's header timeout (15 s by default) closes
    // it, so a request is never sent on a connection the server is closing.
    let b = Client::builder().pool_idle_timeout(std::time::Duration::from_secs(10));
    let Some(ca) = ca else { return Ok(b) };
    let pem = std::fs::read(ca).map_err(Error::io("reading the CA certificates", ca))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| Error::Config(format!("CA certificates {}: {e}", ca.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "CA certificates {}: no PEM certificate in it",
            ca.display()
        )));
    }
    Ok(b.tls_certs_only(certs))
}

impl Api {
    pub fn new(base: &str, key: MachineKey, ca: Option<&Path>) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        crate::neterr::check_url(&base).map_err(Error::Config)?;
        let base_url =
            Url::parse(&base).map_err(|e| Error::Config(format!("server URL {base:?}: {e}")))?;
        if base_url.query().is_some() || base_url.fragment().is_some() {
            return Err(Error::Config(format!(
                "server URL {base:?}: a query or fragment is not accepted"
            )));
        }
        if base_url.host().is_none() {
            return Err(Error::Config(format!("server URL {base:?} names no host")));
        }
        let mut builder = client_builder(ca)?;
        let https = base_url.scheme() == "https";
        if !https && ca.is_none() {
            // Plain HTTP needs no certificate: the system's are not even read, so a machine
            // without ca-certificates works.
            builder = builder.tls_certs_only(Vec::new());
        }
        let client = builder
            .connect_timeout(Duration::from_secs(10))
            .timeout(None)
            .build()
            .map_err(|e| {
                Error::Config(if https && ca.is_none() {
                    format!(
                        "HTTP client: {e}: the system's CA certificates cannot be loaded for \
                         {base}: install ca-certificates, or give --ca with the certificate of \
                         the fleet's CA"
                    )
                } else {
                    format!("HTTP client: {e}")
                })
            })?;
        Ok(Self {
            base,
            base_url,
            client,
            key,
            received: AtomicU64::new(0),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn key(&self) -> &MachineKey {
        &self.key
    }

    /// The URL of `path` on the server: the configured URL with `path` appended to its path
    /// (a prefix such as `/semithin` is kept). An [`ApiPath`] holds no `@`, `:`, `//`, `..`,
    /// `%`, `?` or `#`, so the scheme, host and port stay the configured ones; this is checked
    /// again here.
    pub fn url(&self, path: &ApiPath) -> Result<Url> {
        let mut url = self.base_url.clone();
        let joined = format!("{}{}", self.base_url.path().trim_end_matches('/'), path);
        url.set_path(&joined);
        let same = url.scheme() == self.base_url.scheme()
            && url.host() == self.base_url.host()
            && url.port_or_known_default() == self.base_url.port_or_known_default()
            && url.path() == joined;
        if !same {
            return Err(Error::Config(format!(
                "the path {path} does not stay on the server {}",
                self.base
            )));
        }
        Ok(url)
    }

    fn fail(&self, path: &ApiPath) -> impl Fn(reqwest::Error) -> Error + '_ {
        let url = format!("{}{path}", self.base);
        move |e| Error::Server {
            url: url.clone(),
            reason: crate::neterr::explain(&self.base, &e).unwrap_or_else(|| error_chain(&e)),
        }
    }

    /// A request signed for `path` (docs/PROTOCOL.md, "Signed requests").
    pub(crate) fn signed(
        &self,
        method: &str,
        path: &ApiPath,
        body: Vec<u8>,
    ) -> Result<RequestBuilder> {
        let url = self.url(path)?;
        let mut rb = match method {
            "GET" => self.client.get(url),
            _ => self.client.post(url).body(body.clone()),
        };
        // One counter per process: an agent that also relays signs with the same key there.
        let counter = semithin_protocol::sign::PROCESS_COUNTER.next_now();
        for (k, v) in self.key.sign(method, path.as_str(), counter, &body) {
            rb = rb.header(k, v);
        }
        Ok(rb)
    }

    /// Sends and turns an error status into [`Error::Refused`] with the server's reason.
    pub(crate) fn send(&self, what: &str, path: &ApiPath, rb: RequestBuilder) -> Result<Response> {
        let resp = rb.send().map_err(self.fail(path))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let mut text = String::new();
        let _ = resp.take(64 << 10).read_to_string(&mut text);
        let reason = serde_json::from_str::<ApiError>(&text)
            .map(|e| e.error)
            .unwrap_or(text);
        Err(Error::Refused {
            what: what.to_owned(),
            status: status.as_u16(),
            reason,
        })
    }

    fn json<T: serde::de::DeserializeOwned>(&self, path: &ApiPath, resp: Response) -> Result<T> {
        let mut buf = Vec::new();
        resp.take(1 << 20)
            .read_to_end(&mut buf)
            .map_err(|e| Error::Server {
                url: format!("{}{path}", self.base),
                reason: format!("reading the answer: {e}"),
            })?;
        // a malformed answer names its field (`desired.release: ...`)
        semithin_protocol::json::from_slice(&buf).map_err(|e| Error::Server {
            url: format!("{}{path}", self.base),
            reason: format!("bad answer: {e}"),
        })
    }

    pub fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse> {
        let path = &ApiPath::enroll();
        let rb = self
            .client
            .post(self.url(path)?)
            .timeout(Duration::from_secs(30))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(req).expect("serialises"));
        let resp = self.send("the enrollment", path, rb)?;
        self.json(path, resp)
    }

    pub fn checkin(&self, req: &CheckInRequest) -> Result<CheckInResponse> {
        let path = &ApiPath::checkin();
        let body = serde_json::to_vec(req).expect("serialises");
        let rb = self
            .signed("POST", path, body)?
            .timeout(Duration::from_secs(req.wait_secs as u64 + 60));
        let resp = self.send("the check-in", path, rb)?;
        self.json(path, resp)
    }

    /// The object stream for `objects` (`KIND/ID` each).
    pub fn objects(&self, path: &ApiPath, objects: Vec<String>) -> Result<Counted<'_, Response>> {
        let body = serde_json::to_vec(&ObjectsRequest { objects }).expect("serialises");
        // A stalled stream is given up after half an hour; what arrived is kept.
        let rb = self
            .signed("POST", path, body)?
            .timeout(Duration::from_secs(1800));
        let resp = self.send("the object request", path, rb)?;
        Ok(Counted {
            inner: resp,
            count: &self.received,
        })
    }
}

impl Api {
    /// Tells the server a job delivery runs; whether it was cancelled.
    pub fn job_progress(&self, delivery: &str) -> Result<bool> {
        let path = ApiPath::new(format!("/api/v1/jobs/{delivery}/progress"))?;
        let rb = self
            .signed("POST", &path, Vec::new())?
            .timeout(Duration::from_secs(30));
        let resp = self.send("the job progress report", &path, rb)?;
        let p: semithin_protocol::job::Progress = self.json(&path, resp)?;
        Ok(p.cancelled)
    }
}

impl Api {
    /// Uploads a capture (`crate::capture`): a tar.zst of `len` bytes whose BLAKE3 is `hash`,
    /// streamed from `file`; the signature covers the hash.
    pub fn upload_capture(
        &self,
        file: std::fs::File,
        len: u64,
        hash: [u8; 32],
    ) -> Result<semithin_protocol::capture::CaptureInfo> {
        let path = &crate::capture::upload_path();
        let mut rb = self
            .client
            .post(self.url(path)?)
            .header("content-type", "application/zstd")
            .body(reqwest::blocking::Body::sized(file, len))
            .timeout(Duration::from_secs(3600));
        // One counter per process: an agent that also relays signs with the same key there.
        let counter = semithin_protocol::sign::PROCESS_COUNTER.next_now();
        for (k, v) in self.key.sign_hashed("POST", path.as_str(), counter, &hash) {
            rb = rb.header(k, v);
        }
        let resp = self.send("the capture", path, rb)?;
        self.json(path, resp)
    }
}

/// A reader that adds what it reads to a counter.
pub struct Counted<'a, R> {
    pub(crate) inner: R,
    pub(crate) count: &'a AtomicU64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Fetcher for Api {
    /// Signed GET of a metadata or target URL on this server, reading at most `max_len` bytes.
    fn fetch(&self, url: &str, max_len: u64) -> semithin_trust::Result<Option<Vec<u8>>> {
        let fail = |reason: String| semithin_trust::Error::Fetch {
            url: url.to_owned(),
            reason,
        };
        let Some(path) = url.strip_prefix(&self.base) else {
            return Err(fail(format!("not on the server {}", self.base)));
        };
        let path = ApiPath::new(path).map_err(|e| fail(e.to_string()))?;
        let resp = self
            .signed("GET", &path, Vec::new())
            .map_err(|e| fail(e.to_string()))?
            .timeout(Duration::from_secs(300))
            .send()
            .map_err(|e| fail(error_chain(&e)))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let mut text = String::new();
            let _ = resp.take(4096).read_to_string(&mut text);
            return Err(fail(format!("HTTP {status}: {}", text.trim())));
        }
        if resp.content_length().is_some_and(|l| l > max_len) {
            return Err(fail(format!("longer than the {max_len} bytes allowed")));
        }
        let mut buf = Vec::new();
        resp.take(max_len.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| fail(e.to_string()))?;
        self.received.fetch_add(buf.len() as u64, Ordering::Relaxed);
        if buf.len() as u64 > max_len {
            return Err(fail(format!("longer than the {max_len} bytes allowed")));
        }
        Ok(Some(buf))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let t = x.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = x.source();
    }
    s
}

#[cfg(test)]
pub(crate) mod tests;
