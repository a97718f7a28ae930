//! `semithin tuf-client`: a TUF client with the command line of the tuf-conformance test suite
//! (its CLIENT-CLI.md), so semithin's client can be checked against TUF's own tests.
//! Exit code 0 on success, 1 on any failure.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use semithin_trust::client::{self, Client, Fetcher, Limits};
use semithin_trust::{Error, clock};

#[derive(clap::Args)]
pub struct Args {
    /// Directory of the metadata this client trusts.
    #[arg(long, value_name = "DIR")]
    metadata_dir: PathBuf,
    /// URL of the repository's metadata.
    #[arg(long, value_name = "URL")]
    metadata_url: Option<String>,
    /// Target path to download (repeatable).
    #[arg(long, value_name = "PATH")]
    target_name: Vec<String>,
    /// Base URL of the repository's targets.
    #[arg(long, value_name = "URL")]
    target_base_url: Option<String>,
    /// Where downloaded targets go.
    #[arg(long, value_name = "DIR")]
    target_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Trust TRUSTED_ROOT (a root.json) from now on. Makes no request.
    Init {
        /// The root.json to trust.
        trusted_root: PathBuf,
    },
    /// Update the trusted metadata following the TUF client workflow.
    Refresh,
    /// Refresh, then download and verify every --target-name into --target-dir.
    Download,
}

/// HTTP with a size limit on every response and timeouts on every request.
pub struct Http {
    client: reqwest::blocking::Client,
}

impl Http {
    /// Over a client made by the caller.
    pub fn with(client: reqwest::blocking::Client) -> Self {
        Self { client }
    }

    pub fn new() -> Result<Self> {
        Ok(Self {
            client: semithin_agent::http::client_builder(None)?
                .connect_timeout(Duration::from_secs(15))
                .timeout(Duration::from_secs(300))
                .build()?,
        })
    }
}

impl Fetcher for Http {
    fn fetch(&self, url: &str, max_len: u64) -> semithin_trust::Result<Option<Vec<u8>>> {
        let fail = |reason: String| Error::Fetch {
            url: url.to_owned(),
            reason,
        };
        let resp = self
            .client
            .get(url)
            .send()
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::FORBIDDEN {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(fail(format!("HTTP {status}")));
        }
        if resp.content_length().is_some_and(|l| l > max_len) {
            return Err(Error::TooLarge {
                url: url.to_owned(),
                limit: max_len,
            });
        }
        // Never read more than the limit, whatever the server claims.
        let mut body = Vec::new();
        resp.take(max_len + 1)
            .read_to_end(&mut body)
            .map_err(|e| fail(e.to_string()))?;
        if body.len() as u64 > max_len {
            return Err(Error::TooLarge {
                url: url.to_owned(),
                limit: max_len,
            });
        }
        Ok(Some(body))
    }
}

/// Refreshes the trusted metadata in `dir` from `url` and hands back the client.
fn refreshed<'a>(dir: &Path, url: Option<&str>, http: &'a Http) -> Result<Client<'a>> {
    let url = url.context("this command needs --metadata-url")?;
    let mut c = Client::new(dir, url, http, Limits::default(), clock::now())?;
    c.refresh()?;
    Ok(c)
}

pub fn run(a: Args) -> Result<ExitCode> {
    match a.command {
        Cmd::Init { trusted_root } => {
            let root = std::fs::read(&trusted_root)
                .with_context(|| format!("reading {}", trusted_root.display()))?;
            client::init(&a.metadata_dir, &root)?;
        }
        Cmd::Refresh => {
            refreshed(&a.metadata_dir, a.metadata_url.as_deref(), &Http::new()?)?;
        }
        Cmd::Download => {
            let base = a
                .target_base_url
                .context("download needs --target-base-url")?;
            let dir = a.target_dir.context("download needs --target-dir")?;
            if a.target_name.is_empty() {
                bail!("download needs at least one --target-name");
            }
            let http = Http::new()?;
            let mut c = refreshed(&a.metadata_dir, a.metadata_url.as_deref(), &http)?;
            for name in &a.target_name {
                client::check_target_name(name)?;
                let info = c
                    .find_target(name)?
                    .ok_or_else(|| Error::UnknownTarget(name.clone()))?;
                let path = c.download_target(name, &info, &base, &dir)?;
                outln!("{}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
