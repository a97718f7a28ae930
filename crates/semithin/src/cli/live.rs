//! `semithin live fetch`: what the initrd of a live (diskless) boot runs to get the squashfs it
//! mounts (docs/BOOT.md, "Live and network boot"). The trust root is the initrd's own
//! `/etc/semithin/root.json`; the signed metadata comes from the server's public `/boot/`
//! namespace (`serve --netboot`), verified by TUF's client workflow; the release is the
//! channel's signed release (or one its target permits); the squashfs is its signed target
//! `boot/RELEASE/root.squashfs`, kept in the cache directory by its SHA-256, downloaded with
//! Range resume and checked for length and hash before its path is printed. Nothing unverified
//! is ever printed: a failure exits non-zero with the reason.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use semithin_protocol::boot;
use semithin_protocol::ids::ReleaseId;
use semithin_trust::client::{self, Client, Limits};
use semithin_trust::clock;
use semithin_trust::metadata::TargetFile;
use semithin_trust::release::ChannelRelease;

use super::tuf_client::Http;

#[derive(Subcommand)]
pub enum LiveCmd {
    /// Verify and fetch the squashfs of a channel's release into a cache directory; prints its
    /// path. A cached copy that does not verify is fetched again.
    Fetch(FetchArgs),
}

#[derive(clap::Args)]
pub struct FetchArgs {
    /// The server, as `http://HOST:PORT` (its `/boot/` namespace: `serve --netboot`). Without
    /// it, or when it cannot be reached or its metadata does not verify, the squashfs cached by
    /// an earlier boot is verified against the metadata that boot verified (offline).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The channel whose release to boot.
    #[arg(long)]
    channel: String,
    /// The release to boot (default: the channel's); it must be one the channel's signed
    /// target permits.
    #[arg(long, value_name = "ID")]
    release: Option<String>,
    /// The root of trust.
    #[arg(long, value_name = "FILE", default_value = "/etc/semithin/root.json")]
    trusted_root: PathBuf,
    /// Where the trusted metadata (`trust/`) and the squashfs (`squashfs/SHA256`) are kept: a
    /// tmpfs, or a persistent partition so the next boot fetches only what changed.
    #[arg(long, value_name = "DIR")]
    cache: PathBuf,
    /// CA certificates (PEM) for an https:// server; an initrd has no system roots.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Write the verified release's id into this file (the boot script's
    /// `/run/semithin/booted`).
    #[arg(long, value_name = "FILE")]
    release_file: Option<PathBuf>,
}

pub fn run(cmd: LiveCmd) -> Result<ExitCode> {
    match cmd {
        LiveCmd::Fetch(a) => {
            let (path, release) = fetch(&a)?;
            if let Some(f) = &a.release_file {
                std::fs::write(f, format!("{release}\n"))
                    .with_context(|| format!("writing {}", f.display()))?;
            }
            outln!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn say(msg: std::fmt::Arguments) {
    note!("semithin: {msg}");
}

use semithin_trust::digest::sha256_file;

/// Whether the file at `path` is the target `info` describes: `Ok` or the reason it is not.
fn verify(path: &Path, info: &TargetFile, sha: &str) -> std::result::Result<(), String> {
    match sha256_file(path) {
        Ok((len, _)) if len != info.length => Err(format!(
            "{len} bytes, the signed target has {}",
            info.length
        )),
        Ok((_, h)) if h != sha => Err(format!("sha256 {h}, the signed target has {sha}")),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// The signed squashfs of the release to boot: (release, its target, the target's SHA-256).
fn signed_squashfs(
    c: &mut Client,
    a: &FetchArgs,
    wanted: Option<ReleaseId>,
) -> Result<(ReleaseId, TargetFile, String)> {
    let ct = format!("channels/{}", a.channel);
    let info = c
        .find_target(&ct)?
        .with_context(|| format!("the signed metadata has no channel {}", a.channel))?;
    let signed = ChannelRelease::from_custom(info.custom.as_ref())
        .map_err(|e| anyhow::anyhow!("the signed target of channel {}: {e}", a.channel))?;
    let release: ReleaseId = match wanted {
        Some(r) => {
            if !signed.permits(&r.to_string()) {
                bail!(
                    "release {} is not one the signed target of channel {} permits (it names {})",
                    r.short(),
                    a.channel,
                    semithin_protocol::ids::short_str(&signed.commit)
                );
            }
            r
        }
        None => signed.commit.parse().map_err(|_| {
            anyhow::anyhow!(
                "the signed target of channel {} names no release",
                a.channel
            )
        })?,
    };
    let name = boot::target(&release, boot::SQUASHFS);
    let info = c.find_target(&name)?.with_context(|| {
        format!(
            "release {} of channel {} has no signed squashfs ({name}): publish it with its boot artifacts",
            release.short(),
            a.channel
        )
    })?;
    let sha = info
        .hashes
        .get("sha256")
        .filter(|h| boot::is_sha256_hex(h))
        .with_context(|| format!("the signed target {name} has no sha256"))?
        .clone();
    Ok((release, info, sha))
}

fn fetch(a: &FetchArgs) -> Result<(PathBuf, ReleaseId)> {
    semithin_store::channel::check_name(&a.channel).context("--channel")?;
    let wanted: Option<ReleaseId> = a
        .release
        .as_deref()
        .map(|r| {
            r.parse()
                .map_err(|_| anyhow::anyhow!("--release {r:?} is not a release id"))
        })
        .transpose()?;
    let root = std::fs::read(&a.trusted_root).with_context(|| {
        format!(
            "reading the trust root {} (the initrd's hook copies /etc/semithin/root.json)",
            a.trusted_root.display()
        )
    })?;
    // The trusted metadata: kept in the cache (trust never goes down), started from the root.
    let trust = a.cache.join("trust");
    if !trust.join("root.json").is_file() {
        client::init(&trust, &root).context("starting the trusted metadata")?;
    }
    let online = match &a.server {
        Some(server) => online(a, server, &trust, wanted),
        None => Err(anyhow::anyhow!("no server given")),
    };
    let why = match online {
        Ok(found) => return Ok(found),
        Err(e) => e,
    };
    // Offline: the metadata an earlier boot verified, verified again from the trust root.
    if !trust.join("timestamp.json").is_file() {
        return Err(why);
    }
    say(format_args!(
        "{why:#}: verifying the cached squashfs against the metadata an earlier boot verified"
    ));
    offline(a, &root, &trust, wanted).map_err(|e| e.context(format!("{why:#}")))
}

/// Verifies the metadata from the server, then the cached squashfs, fetching it when it does not
/// verify.
fn online(
    a: &FetchArgs,
    server: &str,
    trust: &Path,
    wanted: Option<ReleaseId>,
) -> Result<(PathBuf, ReleaseId)> {
    let server = server.trim_end_matches('/');
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        bail!("--server {server:?}: an http:// or https:// URL");
    }
    let client = client(a.ca.as_deref(), Duration::from_secs(300))?;
    let http = Http::with(client);
    let url = format!("{server}/boot/metadata/");
    let mut c = Client::new(trust, &url, &http, Limits::default(), clock::now())?;
    c.refresh()
        .with_context(|| format!("verifying the signed metadata from {url}"))?;
    let (release, info, sha) = signed_squashfs(&mut c, a, wanted)?;
    say(format_args!(
        "channel {} release {}: the signed squashfs has {} bytes, sha256 {sha}",
        a.channel,
        release.short(),
        info.length
    ));

    let dir = a.cache.join("squashfs");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(&sha);
    if path.exists() {
        match verify(&path, &info, &sha) {
            Ok(()) => {
                say(format_args!(
                    "the cached squashfs verifies (length and sha256): not fetched again"
                ));
                prune(&dir, &sha);
                return Ok((path, release));
            }
            Err(why) => {
                say(format_args!(
                    "the cached squashfs does not verify ({why}): fetching it again"
                ));
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    let url = format!("{server}/boot/{release}/{}", boot::SQUASHFS);
    let part = dir.join(format!("{sha}.part"));
    for attempt in 0..3 {
        match download(a.ca.as_deref(), &url, &part, &info, &sha) {
            Ok(()) => {}
            Err(e) if attempt < 2 => {
                say(format_args!("fetching {url}: {e:#}; trying again"));
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
            Err(e) => return Err(e.context(format!("fetching {url}"))),
        }
        match verify(&part, &info, &sha) {
            Ok(()) => {
                std::fs::rename(&part, &path)
                    .with_context(|| format!("renaming into {}", path.display()))?;
                sync_dir(&dir);
                say(format_args!(
                    "squashfs of release {} verified: {} bytes, sha256 {sha}",
                    release.short(),
                    info.length
                ));
                prune(&dir, &sha);
                return Ok((path, release));
            }
            Err(why) => {
                let _ = std::fs::remove_file(&part);
                say(format_args!(
                    "the fetched squashfs does not verify ({why}): fetching it again"
                ));
            }
        }
    }
    bail!("the squashfs of release {} never verified", release.short())
}

/// The cache's trusted metadata served as a repository with consistent snapshots serves it:
/// each role by its name, a versioned name only by the file of exactly that version.
struct Cached(PathBuf);

const CACHED: &str = "cache:/";

impl semithin_trust::client::Fetcher for Cached {
    fn fetch(&self, url: &str, max_len: u64) -> semithin_trust::Result<Option<Vec<u8>>> {
        let Some(name) = url.strip_prefix(CACHED) else {
            return Ok(None);
        };
        let (version, role) = match name.split_once('.') {
            Some((v, rest)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                (v.parse::<u64>().ok(), rest)
            }
            _ => (None, name),
        };
        if !matches!(
            role,
            "root.json" | "timestamp.json" | "snapshot.json" | "targets.json"
        ) {
            return Ok(None);
        }
        let Ok(bytes) = std::fs::read(self.0.join(role)) else {
            return Ok(None);
        };
        if bytes.len() as u64 > max_len {
            return Ok(None);
        }
        let v: Option<u64> = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|j| j.get("signed")?.get("version")?.as_u64());
        if version.is_some() && v != version {
            return Ok(None);
        }
        Ok(Some(bytes))
    }
}

/// Verifies the cached metadata again from `root` (TUF's workflow over the copy, expiry judged
/// at the time it was last verified), then the cached squashfs; fetches nothing.
fn offline(
    a: &FetchArgs,
    root: &[u8],
    trust: &Path,
    wanted: Option<ReleaseId>,
) -> Result<(PathBuf, ReleaseId)> {
    let at = semithin_trust::trusted::TrustedDir::new(trust)
        .state()?
        .latest_time;
    let work = a.cache.join(".offline-trust");
    let _ = std::fs::remove_dir_all(&work);
    client::init(&work, root)?;
    let copy = Cached(trust.to_owned());
    let found = (|| {
        let mut c = Client::new(&work, CACHED, &copy, Limits::default(), at)?;
        c.refresh()
            .context("the cached metadata does not verify against the trust root")?;
        signed_squashfs(&mut c, a, wanted)
    })();
    let _ = std::fs::remove_dir_all(&work);
    let (release, info, sha) = found?;
    let path = a.cache.join("squashfs").join(&sha);
    verify(&path, &info, &sha).map_err(|why| {
        anyhow::anyhow!(
            "the cached squashfs of release {} does not verify ({why}), and it cannot be fetched",
            release.short()
        )
    })?;
    say(format_args!(
        "squashfs of release {} verified offline against the metadata verified at {}: {} bytes, sha256 {sha}",
        release.short(),
        clock::format(at),
        info.length
    ));
    Ok((path, release))
}

/// Downloads `url` into `part`, resuming from what `part` holds (`Range`, `If-Range` with the
/// SHA-256 the server names the artifact by), never past the signed length.
fn download(ca: Option<&Path>, url: &str, part: &Path, info: &TargetFile, sha: &str) -> Result<()> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let have = if have > info.length { 0 } else { have };
    if have == info.length {
        return Ok(());
    }
    let client = client(ca, Duration::from_secs(3600))?;
    let mut req = client.get(url);
    if have > 0 {
        req = req
            .header("Range", format!("bytes={have}-"))
            .header("If-Range", format!("\"{sha}\""));
        say(format_args!("resuming at byte {have} of {}", info.length));
    }
    let resp = req.send().context("sending the request")?;
    let status = resp.status();
    let (mut f, from) = match status.as_u16() {
        206 if have > 0 => (std::fs::OpenOptions::new().append(true).open(part)?, have),
        200 => (std::fs::File::create(part)?, 0),
        _ => {
            let text = resp.text().unwrap_or_default();
            bail!(
                "HTTP {status}: {}",
                super::safe::safe(text.chars().take(300).collect::<String>().trim())
            );
        }
    };
    let mut body = resp.take(info.length - from);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = body.read(&mut buf).context("reading the answer")?;
        if n == 0 {
            break;
        }
        f.write_all(&buf[..n])
            .with_context(|| format!("writing {}", part.display()))?;
    }
    f.sync_all()
        .with_context(|| format!("syncing {}", part.display()))?;
    Ok(())
}

/// An HTTP client that needs no system certificates (an initrd has none): with `--ca`, only
/// those; without, none at all (plain http; trust comes from the signed metadata).
fn client(ca: Option<&Path>, timeout: Duration) -> Result<reqwest::blocking::Client> {
    let mut b = semithin_agent::http::client_builder(ca)?
        .connect_timeout(Duration::from_secs(15))
        .timeout(timeout);
    if ca.is_none() {
        b = b.tls_certs_only(Vec::new());
    }
    Ok(b.build()?)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes every other squashfs from the cache (older releases, partial downloads of them).
fn prune(dir: &Path, keep: &str) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name != keep && name != format!("{keep}.part") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
