//! How the admin commands (`fleet`, `push`, `publish`) reach the server: `--server` and
//! `--admin-token` (or SEMITHIN_SERVER, SEMITHIN_ADMIN_TOKEN), else the file in
//! SEMITHIN_ADMIN_CONFIG or ~/.config/semithin/admin.toml:
//!
//! ```toml
//! server = "http://updates.example:8470"
//! admin_token_file = "/var/lib/semithin/admin-token"   # or admin_token = "..."
//! ca = "/etc/semithin/ca.pem"   # for an https:// server with a certificate of your own CA
//! ```

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use semithin_protocol::api::ApiError;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The global flags of the admin commands. Their environment variables are read here, not by
/// clap, so that a usage line never shows a flag set in the environment as if it were required.
#[derive(clap::Args, Clone, Default)]
pub struct ServerArgs {
    /// The server's URL, `http://HOST:PORT` or `https://HOST:PORT` [env: SEMITHIN_SERVER]
    /// (see also SEMITHIN_ADMIN_CONFIG).
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    /// The admin token [env: SEMITHIN_ADMIN_TOKEN] (see also SEMITHIN_ADMIN_CONFIG).
    #[arg(long, global = true, value_name = "TOKEN")]
    pub admin_token: Option<String>,
    /// PEM certificates of the CA that signed an https:// server's certificate; only these are
    /// trusted then [env: SEMITHIN_CA] [default: the system's roots].
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

/// A variable of the environment, unset when empty.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    server: Option<String>,
    ca: Option<PathBuf>,
    admin_token: Option<String>,
    admin_token_file: Option<PathBuf>,
}

fn config_path() -> Option<PathBuf> {
    if let Some(p) = env("SEMITHIN_ADMIN_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".config/semithin/admin.toml");
    p.exists().then_some(p)
}

pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl ServerArgs {
    /// Whether a server is configured at all (publish tells it when it is).
    pub fn configured(&self) -> bool {
        self.server.is_some() || env("SEMITHIN_SERVER").is_some() || config_path().is_some()
    }

    pub fn client(&self) -> Result<AdminClient> {
        let flags = ServerArgs {
            server: self.server.clone().or_else(|| env("SEMITHIN_SERVER")),
            admin_token: self
                .admin_token
                .clone()
                .or_else(|| env("SEMITHIN_ADMIN_TOKEN")),
            ca: self
                .ca
                .clone()
                .or_else(|| env("SEMITHIN_CA").map(PathBuf::from)),
        };
        flags.client_from_flags()
    }

    fn client_from_flags(&self) -> Result<AdminClient> {
        let file = match config_path() {
            Some(p) => {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("admin config {}", p.display()))?
            }
            None => File::default(),
        };
        let base = self.server.clone().or(file.server).context(
            "no server given: pass --server URL, set SEMITHIN_SERVER, or write \
             ~/.config/semithin/admin.toml",
        )?;
        let token = match (&self.admin_token, file.admin_token, file.admin_token_file) {
            (Some(t), _, _) => t.clone(),
            (None, Some(t), _) => t,
            (None, None, Some(p)) => std::fs::read_to_string(&p)
                .with_context(|| format!("reading the admin token from {}", p.display()))?
                .trim()
                .to_owned(),
            (None, None, None) => bail!(
                "no admin token: pass --admin-token, set SEMITHIN_ADMIN_TOKEN, or name \
                 admin_token_file in the admin config (the server writes DATA/admin-token)"
            ),
        };
        semithin_agent::neterr::check_url(&base).map_err(anyhow::Error::msg)?;
        let ca = self.ca.clone().or(file.ca);
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: semithin_agent::http::client_builder(ca.as_deref())?
                .default_headers(user_header())
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(60))
                .build()?,
        })
    }
}

/// Who runs this command, for the server's audit log (told, not proven: the token is what is
/// checked): the login name, else the uid.
fn user_header() -> reqwest::header::HeaderMap {
    let name = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| env(v))
        .unwrap_or_else(|| format!("uid {}", rustix::process::getuid().as_raw()));
    let mut h = reqwest::header::HeaderMap::new();
    if let Ok(v) = reqwest::header::HeaderValue::from_str(&name) {
        h.insert(semithin_protocol::audit::USER_HEADER, v);
    }
    h
}

impl AdminClient {
    fn finish<T: DeserializeOwned>(
        &self,
        what: &str,
        r: reqwest::Result<reqwest::blocking::Response>,
    ) -> Result<T> {
        let resp = match r {
            Ok(resp) => resp,
            Err(e) => match semithin_agent::neterr::explain(&self.base, &e) {
                Some(why) => bail!("{what}: {why}"),
                None => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("{what}: cannot reach the server at {}", self.base)));
                }
            },
        };
        let status = resp.status();
        let mut body = Vec::new();
        resp.take(64 << 20).read_to_end(&mut body)?;
        if !status.is_success() {
            let reason = serde_json::from_slice::<ApiError>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            bail!("{what}: the server answered {status}: {reason}");
        }
        serde_json::from_slice(&body).with_context(|| format!("{what}: unexpected answer"))
    }

    pub fn get<T: DeserializeOwned>(&self, what: &str, path: &str) -> Result<T> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send();
        self.finish(what, r)
    }

    pub fn delete<T: DeserializeOwned>(&self, what: &str, path: &str) -> Result<T> {
        let r = self
            .http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send();
        self.finish(what, r)
    }

    /// Writes the body of `GET path` into `dest` (at most `max` bytes); the bytes written.
    pub fn download(
        &self,
        what: &str,
        path: &str,
        dest: &mut impl std::io::Write,
        max: u64,
    ) -> Result<u64> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(3600))
            .send();
        let resp = match r {
            Ok(resp) => resp,
            Err(e) => match semithin_agent::neterr::explain(&self.base, &e) {
                Some(why) => bail!("{what}: {why}"),
                None => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("{what}: cannot reach the server at {}", self.base)));
                }
            },
        };
        if !resp.status().is_success() {
            return self.finish::<serde_json::Value>(what, Ok(resp)).map(|_| 0);
        }
        let n = std::io::copy(&mut resp.take(max.saturating_add(1)), dest)
            .with_context(|| format!("{what}: reading the answer"))?;
        if n > max {
            bail!("{what}: the answer is longer than the {max} bytes expected");
        }
        Ok(n)
    }

    pub fn put<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T> {
        let r = self
            .http
            .put(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body)?)
            .send();
        self.finish(what, r)
    }

    pub fn post<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body)?)
            .send();
        self.finish(what, r)
    }
}
