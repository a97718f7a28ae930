//! Boot artifacts and network boot (docs/PROTOCOL.md, "Boot artifacts and network boot"):
//!
//! - `GET /api/v1/boot/RELEASE/NAME`: a signed artifact, to accepted machines and the admin;
//! - with `serve --netboot`, to anyone: `GET /boot/RELEASE/NAME`, the trust metadata at
//!   `GET /boot/metadata/FILE` (a booting initrd verifies the artifacts with it), and iPXE
//!   scripts: `GET /boot/ipxe` chains to `GET /boot/ipxe/mac/MAC`, which boots the release of
//!   the machine's channel, the default channel, or offers a menu of the channels.
//!
//! Artifacts are what publish signed (`boot/RELEASE/NAME` targets), read from
//! `REPO/boot/SHA256`; answers resume with `Range` (crate::http::range).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use semithin_protocol::api::ApiError;
use semithin_protocol::boot::{self, Mac};
use semithin_protocol::ids::ReleaseId;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiErr, ApiResult, reader};
use crate::App;

/// The routes that stream files (the long deadline).
pub fn file_routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(signed_artifact))
        .routes(routes!(public_artifact))
}

/// The routes that answer at once.
pub fn quick_routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(ipxe))
        .routes(routes!(ipxe_mac))
        .routes(routes!(public_metadata))
}

fn netboot_on(app: &App) -> ApiResult<()> {
    if app.cfg.netboot {
        Ok(())
    } else {
        Err(ApiErr::not_found(
            "network boot is off on this server (start it with `semithin serve --netboot`)",
        ))
    }
}

#[utoipa::path(get, path = "/api/v1/boot/{release}/{name}", tag = "boot", summary = "A boot artifact of a release (signed as target boot/RELEASE/NAME); ranges resume", params(("release" = String, Path, description = "The release (64 hex digits)"), ("name" = String, Path, description = "`vmlinuz`, `initrd.img` or `root.squashfs`"), ("Range" = Option<String>, Header, description = "`bytes=N-` to resume")), responses((status = 200, description = "The artifact", content_type = "application/octet-stream", body = Vec<u8>), (status = 206, description = "The part of it the range asked", content_type = "application/octet-stream", body = Vec<u8>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("machine_signature" = []), ("admin_token" = [])))]
async fn signed_artifact(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path((release, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    reader(&app, &method, &uri, &headers, b"")?;
    artifact(&app, &headers, &release, &name)
}

#[utoipa::path(get, path = "/boot/{release}/{name}", tag = "boot", summary = "A boot artifact, to anyone (serve --netboot)", params(("release" = String, Path, description = "The release (64 hex digits)"), ("name" = String, Path, description = "`vmlinuz`, `initrd.img` or `root.squashfs`"), ("Range" = Option<String>, Header, description = "`bytes=N-` to resume")), responses((status = 200, description = "The artifact", content_type = "application/octet-stream", body = Vec<u8>), (status = 206, description = "The part of it the range asked", content_type = "application/octet-stream", body = Vec<u8>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)))]
async fn public_artifact(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((release, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    netboot_on(&app)?;
    artifact(&app, &headers, &release, &name)
}

fn parse_release(s: &str) -> ApiResult<ReleaseId> {
    s.parse().map_err(|_| {
        ApiErr::bad(format!(
            "{:?} is not a release (64 lower-case hex digits of a commit)",
            semithin_protocol::ids::short_str(s)
        ))
    })
}

/// A signed artifact of `release`, whole or from the offset the request's `Range` names.
fn artifact(app: &Arc<App>, headers: &HeaderMap, release: &str, name: &str) -> ApiResult<Response> {
    let release = parse_release(release)?;
    let name = boot::check_name(name).map_err(ApiErr::bad)?;
    let f = app
        .published()
        .boot
        .get(&release.commit())
        .and_then(|m| m.get(name))
        .cloned()
        .ok_or_else(|| {
            ApiErr::not_found(format!(
                "release {} has no signed boot artifact {name} (`semithin publish` makes them for a release with a kernel)",
                release.short()
            ))
        })?;
    let path = app.cfg.repo().join(boot::REPO_DIR).join(&f.sha256);
    let file = std::fs::File::open(&path)
        .map_err(|e| ApiErr::internal(format!("boot artifact {}: {e}", path.display())))?;
    let size = file
        .metadata()
        .map_err(|e| ApiErr::internal(format!("boot artifact {}: {e}", path.display())))?
        .len();
    if size != f.length {
        // Damaged on the server: a machine would refuse it anyway.
        return Err(ApiErr::internal(format!(
            "boot artifact {} has {size} bytes, its target says {}",
            path.display(),
            f.length
        )));
    }
    let counters = app.clone();
    super::range::answer(
        headers,
        super::range::Served {
            file,
            size,
            etag: format!("\"{}\"", f.sha256),
            content_type: "application/octet-stream",
            what: "the artifact",
        },
        move |n| {
            counters
                .counters
                .boot_bytes_sent
                .fetch_add(n, Ordering::Relaxed);
        },
    )
}

#[utoipa::path(get, path = "/boot/metadata/{file}", tag = "boot", summary = "TUF metadata, to anyone (serve --netboot): what a booting initrd verifies artifacts with", params(("file" = String, Path, description = "A metadata file name")), responses((status = 200, description = "The signed metadata, byte for byte", content_type = "application/octet-stream", body = Vec<u8>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)))]
async fn public_metadata(
    State(app): State<Arc<App>>,
    Path(file): Path<String>,
) -> ApiResult<Response> {
    netboot_on(&app)?;
    if !super::agent::safe_name(&file) || !file.ends_with(".json") {
        return Err(ApiErr::bad(format!(
            "bad metadata file name {:?}",
            semithin_protocol::ids::short_str(&file)
        )));
    }
    super::agent::send_file(
        &app,
        crate::releases::trust_dir(&app.cfg.repo())
            .join("metadata")
            .join(file),
    )
    .await
}

fn script(text: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// `http://HOST` (or `https://`) as the client named the server, for the URLs of a script.
fn base_url(app: &App, headers: &HeaderMap) -> ApiResult<String> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| ApiErr::bad("a network boot script needs the Host header"))?;
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if !ok {
        return Err(ApiErr::bad(
            "the Host header is not a host name or address with a port",
        ));
    }
    let scheme = if app.cfg.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    Ok(format!("{scheme}://{host}"))
}

/// `GET /boot/ipxe`: chains to the script for this machine's MAC address.
#[utoipa::path(get, path = "/boot/ipxe", tag = "boot", summary = "The iPXE script every machine starts with (serve --netboot)", responses((status = 200, description = "An iPXE script chaining to the machine's own", content_type = "text/plain", body = String), (status = "4XX", description = "Refused: `error` says why", body = ApiError)))]
async fn ipxe(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Response> {
    netboot_on(&app)?;
    let base = base_url(&app, &headers)?;
    Ok(script(format!(
        "#!ipxe\nchain {base}/boot/ipxe/mac/${{net0/mac}}\n"
    )))
}

/// What a channel boots: its release and kernel, when the release has its artifacts.
struct Bootable {
    channel: String,
    release: ReleaseId,
    kernel: String,
}

fn bootable(
    app: &App,
    channel: &str,
    release: Option<semithin_store::CommitId>,
) -> Result<Bootable, String> {
    let Some(release) = release else {
        return Err(format!("channel {channel} has no published release"));
    };
    let p = app.published();
    let files = p.boot.get(&release);
    let missing: Vec<&str> = boot::NAMES
        .iter()
        .copied()
        .filter(|n| files.is_none_or(|f| !f.contains_key(n)))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "release {} of channel {channel} has no signed {} (publish a release with a kernel)",
            release.short(),
            missing.join(", ")
        ));
    }
    let kernel = files
        .and_then(|f| f.get(boot::KERNEL))
        .and_then(|k| k.kernel_version.clone())
        .unwrap_or_default();
    Ok(Bootable {
        channel: channel.to_owned(),
        release: release.into(),
        kernel,
    })
}

/// The iPXE lines that boot `b` live from this server.
fn boot_lines(base: &str, b: &Bootable, extra: &str) -> String {
    let r = &b.release;
    let a = format!("{base}/boot/{r}");
    let mut cmdline = format!(
        "initrd={} boot=semithin-live semithin.live={base} semithin.channel={} semithin.release={r} ip=dhcp",
        boot::INITRD,
        b.channel
    );
    if !extra.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    format!(
        "echo semithin: booting channel {c} release {s} (kernel {k})\n\
         kernel {a}/{kn} {cmdline} || goto failed\n\
         initrd --name {i} {a}/{i} || goto failed\n\
         boot || goto failed\n",
        c = b.channel,
        s = r.short(),
        k = b.kernel,
        kn = boot::KERNEL,
        i = boot::INITRD,
    )
}

const FAILED: &str = ":failed\necho semithin: the boot failed; trying again in 10 s\nsleep 10\nchain ${cwuri} || exit\n";

/// `GET /boot/ipxe/mac/MAC`: the machine's channel when the fleet knows the MAC, else the
/// default channel, else a menu.
#[utoipa::path(get, path = "/boot/ipxe/mac/{mac}", tag = "boot", summary = "The iPXE script of a machine by its MAC address (serve --netboot)", params(("mac" = String, Path, description = "The MAC address, `aa:bb:cc:dd:ee:ff`")), responses((status = 200, description = "An iPXE script: its channel's release, the default, or a menu", content_type = "text/plain", body = String), (status = "4XX", description = "Refused: `error` says why", body = ApiError)))]
async fn ipxe_mac(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(mac): Path<String>,
) -> ApiResult<Response> {
    netboot_on(&app)?;
    let mac: Mac = mac.parse().map_err(ApiErr::bad)?;
    let base = base_url(&app, &headers)?;
    let extra = &app.cfg.netboot_cmdline;
    let mut out = String::from("#!ipxe\n");
    if let Some(m) = app.fleet.by_mac(&mac) {
        let row = m.snapshot();
        match &row.channel {
            Some(c) => match bootable(&app, c, app.target(&row)) {
                Ok(b) => {
                    out.push_str(&format!("echo semithin: {mac} is machine {}\n", row.name));
                    out.push_str(&boot_lines(&base, &b, extra));
                    out.push_str(FAILED);
                    return Ok(script(out));
                }
                Err(why) => out.push_str(&format!(
                    "echo semithin: {mac} is machine {}, but {why}\n",
                    row.name
                )),
            },
            None => out.push_str(&format!(
                "echo semithin: {mac} is machine {}, which has no channel\n",
                row.name
            )),
        }
    } else {
        out.push_str(&format!(
            "echo semithin: {mac} is not a machine of the fleet\n"
        ));
    }
    if let Some(c) = &app.cfg.netboot_default {
        match bootable(&app, c, app.release(c)) {
            Ok(b) => {
                out.push_str("echo semithin: booting the default channel\n");
                out.push_str(&boot_lines(&base, &b, extra));
                out.push_str(FAILED);
                return Ok(script(out));
            }
            Err(why) => out.push_str(&format!("echo semithin: the default channel: {why}\n")),
        }
    }
    let p = app.published();
    let choices: Vec<Bootable> = p
        .releases
        .iter()
        .filter_map(|(c, r)| bootable(&app, c, Some(*r)).ok())
        .collect();
    out.push_str(&menu(
        &base,
        &choices,
        extra,
        app.cfg.netboot_menu_timeout_secs,
    ));
    Ok(script(out))
}

/// A menu of the channels that can be booted.
/// After `timeout` seconds (not 0) without a key, the first channel boots.
fn menu(base: &str, choices: &[Bootable], extra: &str, timeout: u32) -> String {
    if choices.is_empty() {
        return "echo semithin: no published channel has a kernel to boot\nsleep 30\nexit 1\n"
            .to_owned();
    }
    let mut out = String::from("menu semithin: choose a channel to boot\n");
    for (i, b) in choices.iter().enumerate() {
        out.push_str(&format!(
            "item c{i} {} (release {}, kernel {})\n",
            b.channel,
            b.release.short(),
            b.kernel
        ));
    }
    if timeout > 0 {
        out.push_str(&format!(
            "choose --timeout {} --default c0 target || exit 1\n",
            u64::from(timeout) * 1000
        ));
    } else {
        out.push_str("choose target || exit 1\n");
    }
    out.push_str("echo semithin: booting ${target}\ngoto ${target}\n");
    for (i, b) in choices.iter().enumerate() {
        out.push_str(&format!(":c{i}\n"));
        out.push_str(&boot_lines(base, b, extra));
    }
    out.push_str(FAILED);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(c: &str, n: u8) -> Bootable {
        Bootable {
            channel: c.into(),
            release: format!("{n:02x}").repeat(32).parse().unwrap(),
            kernel: "6.1.0-9-amd64".into(),
        }
    }

    #[test]
    fn a_boot_entry_fetches_kernel_and_initrd_of_the_release_and_names_the_channel() {
        let t = boot_lines("http://10.0.2.2:8470", &b("lab/a", 1), "console=ttyS0");
        let r = "01".repeat(32);
        assert!(
            t.contains(&format!(
                "kernel http://10.0.2.2:8470/boot/{r}/vmlinuz initrd=initrd.img boot=semithin-live \
                 semithin.live=http://10.0.2.2:8470 semithin.channel=lab/a semithin.release={r} \
                 ip=dhcp console=ttyS0 || goto failed"
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "initrd --name initrd.img http://10.0.2.2:8470/boot/{r}/initrd.img"
            )),
            "{t}"
        );
    }

    #[test]
    fn the_menu_lists_every_channel_and_jumps_to_its_entry() {
        let m = menu("http://h", &[b("a", 1), b("b/c", 2)], "", 0);
        assert!(m.contains("item c0 a (release 010101010101"), "{m}");
        assert!(m.contains("item c1 b/c (release 020202020202"), "{m}");
        assert!(m.contains(":c1\necho semithin: booting channel b/c"), "{m}");
        assert!(menu("http://h", &[], "", 30).contains("no published channel has a kernel"));
        let m = menu("http://h", &[b("a", 1)], "", 5);
        assert!(
            m.contains("choose --timeout 5000 --default c0 target || exit 1\n"),
            "{m}"
        );
    }
}
