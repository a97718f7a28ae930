//! A whole server in the test's process, on a loopback port of its own, with helpers to speak
//! to it as the admin, as an enrolled machine, or as raw TCP.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use semithin_protocol::sign::MachineKey;
use serde_json::{Value, json};

use crate::Config;

pub const ADMIN: &str = "admin-token-of-the-tests-0123456789";

pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    /// Removed when the server is dropped.
    _dir: tempfile::TempDir,
    pub data: std::path::PathBuf,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<crate::Result<()>>>,
}

impl TestServer {
    /// A server with the test's settings applied to the defaults.
    pub async fn start(tune: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_tls(None, tune).await
    }

    /// With `tls = Some((cert, key, ca))`, HTTPS with that certificate; the client trusts `ca`.
    pub async fn start_tls(
        tls: Option<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)>,
        tune: impl FnOnce(&mut Config),
    ) -> TestServer {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::Builder::new()
            .prefix("semithin-server")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let mut cfg = Config::new(data.clone());
        cfg.admin_token = Some(ADMIN.into());
        // No pooled connections: a server with a short header timeout closes idle keep-alive
        // connections, and a request sent on one just as it closes fails.
        let mut client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(0);
        if let Some((cert, key, ca)) = &tls {
            cfg.tls_cert = Some(cert.clone());
            cfg.tls_key = Some(key.clone());
            let pem = std::fs::read(ca).unwrap();
            client = client.tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap());
        }
        tune(&mut cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(crate::run_on(cfg, listener, async move {
            let _ = rx.await;
        }));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let s = TestServer {
            addr,
            url: format!("{scheme}://127.0.0.1:{}", addr.port()),
            _dir: dir,
            data,
            client: client.build().unwrap(),
            stop: Some(tx),
            task: Some(task),
        };
        let start = Instant::now();
        loop {
            if let Ok(r) = s.client.get(s.at("/api/v1/health")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the server did not answer within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        s
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("the server stops within 30 s")
                .unwrap()
                .unwrap();
        }
    }

    /// Status and JSON body (Null when not JSON) of an admin request.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut rb = self
            .client
            .request(method.parse().unwrap(), self.at(path))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = rb.send().await.unwrap();
        let st = r.status().as_u16();
        let text = r.text().await.unwrap();
        (st, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A new enrollment token's secret.
    pub async fn token(&self, preauthorized: bool) -> String {
        let (st, v) = self
            .admin(
                "POST",
                "/api/v1/admin/tokens",
                Some(json!({"preauthorized": preauthorized})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }

    /// Enrolls a new machine named `name`; its key.
    pub async fn enroll(&self, token: &str, name: &str) -> MachineKey {
        let key = MachineKey::generate().unwrap();
        let body = json!({"token": token, "name": name, "public_key": hex::encode(key.public())});
        let r = self
            .client
            .post(self.at("/api/v1/enroll"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        key
    }

    /// A request signed by `key`: status and body text.
    pub async fn signed(
        &self,
        key: &MachineKey,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> (u16, String) {
        let mut rb = self
            .client
            .request(method.parse().unwrap(), self.at(path))
            .body(body.to_vec());
        static COUNTER: std::sync::LazyLock<semithin_protocol::sign::Counter> =
            std::sync::LazyLock::new(Default::default);
        for (k, v) in key.sign(method, path, COUNTER.next_now(), body) {
            rb = rb.header(k, v);
        }
        let r = rb.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// A check-in with this report (no long poll): status and body text.
    pub async fn checkin(&self, key: &MachineKey, report: Value) -> (u16, String) {
        let body = json!({"report": report}).to_string();
        self.signed(key, "POST", "/api/v1/checkin", body.as_bytes())
            .await
    }

    /// Runs an SQL query returning one integer on the server's database.
    pub async fn count(&self, sql: &str) -> i64 {
        let pool = sqlx::sqlite::SqlitePool::connect(&format!(
            "sqlite://{}",
            self.data.join("fleet.db").display()
        ))
        .await
        .unwrap();
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        n
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A report as an agent sends it, with the given fields changed.
pub fn report(extra: Value) -> Value {
    let mut r = json!({"current": null, "staged": null, "previous": null, "health": "unknown",
        "phase": "idle", "failed_release": null, "last_error": null, "disk_free": 1,
        "uptime_secs": 1, "agent_version": "test", "fetched_bytes": 0});
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    r
}

/// A release id made of one repeated hex digit pattern from `n`.
pub fn release(n: u64) -> String {
    format!("{n:064x}")
}
