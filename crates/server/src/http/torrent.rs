//! Torrents and the tracker (docs/TORRENT.md, docs/PROTOCOL.md "BitTorrent"):
//! `GET /api/v1/torrents/delta/{from}/{to}` and `/api/v1/torrents/boot/{release}/{name}` give
//! a private torrent of a delta pack or boot artifact announcing to this server's tracker with
//! the asker's passkey; `GET /announce/{passkey}` is the tracker (BEP 3, BEP 23 compact),
//! answering bencode, failures included, always with 200 as trackers do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use semithin_protocol::api::ApiError;
use semithin_protocol::ids::ReleaseId;
use semithin_protocol::torrent::TorrentInfo;
use semithin_swarm::bencode::failure;
use semithin_swarm::tracker::Announce;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiErr, ApiResult, admin, reader};
use crate::App;
use crate::torrents::Made;
use semithin_delta::build::Effort;
use semithin_delta::listing::NOTHING;

/// The response header of a torrent file that says how many whole copies its swarm has.
use semithin_protocol::torrent::SWARM_COMPLETE;

/// The address the asking peer reached the server on (set by `http::serve`).
#[derive(Clone, Copy, Debug)]
pub struct LocalAddr(pub SocketAddr);

pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(delta_torrent))
        .routes(routes!(full_torrent))
        .routes(routes!(boot_torrent))
        .routes(routes!(announce))
        .routes(routes!(list))
}

fn enabled(app: &App) -> ApiResult<()> {
    if app.torrents.cfg.enabled {
        Ok(())
    } else {
        Err(ApiErr::not_found(
            "torrents are off on this server (start it with `semithin serve --torrent`)",
        ))
    }
}

/// The torrent file announcing to this server with the passkey of `owner`.
fn answer(app: &App, headers: &HeaderMap, made: &Made, owner: &str) -> ApiResult<Response> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['/', '@', ' ', '?', '#']))
        .ok_or_else(|| ApiErr::bad("the Host header is missing or not a host: the torrent's tracker URL is made from it"))?;
    let scheme = if app.cfg.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let announce = format!("{scheme}://{host}/announce/{}", app.torrents.passkey(owner));
    // whole copies in the swarm (the server's seeder and peers that have all of it): with none,
    // the machine goes to HTTP at once instead of waiting for peers that have nothing to send
    let complete = app
        .torrents
        .tracker
        .lock()
        .expect("lock")
        .count(&made.info_hash)
        .seeders
        + usize::from(app.torrents.seeder_port().is_some());
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-bittorrent".to_owned()),
            (
                header::HeaderName::from_static(SWARM_COMPLETE),
                complete.to_string(),
            ),
        ],
        made.meta.torrent(&announce),
    )
        .into_response())
}

/// `GET /api/v1/torrents/delta/{from}/{to}`: the torrent of the delta pack (built now if needed).
#[utoipa::path(get, path = "/api/v1/torrents/delta/{from}/{to}", tag = "machines", summary = "A private torrent of the delta pack from one release to another (serve --torrent)", params(("from" = String, Path, description = "The release the machine runs"), ("to" = String, Path, description = "The release it goes to")), responses((status = 200, description = "The torrent file, announcing with the asker's passkey", content_type = "application/x-bittorrent", body = Vec<u8>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("machine_signature" = []), ("admin_token" = [])))]
async fn delta_torrent(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path((from, to)): Path<(String, String)>,
) -> ApiResult<Response> {
    let machine = reader(&app, &method, &uri, &headers, b"")?;
    enabled(&app)?;
    let parse = |s: &str| {
        s.parse::<semithin_store::CommitId>()
            .map_err(|_| ApiErr::bad(format!("{s:?} is not a release (a commit id)")))
    };
    let (from, to) = (parse(&from)?, parse(&to)?);
    if let Some(m) = &machine {
        app.delta_allowed(&m.snapshot(), &from, &to).map_err(|e| {
            ApiErr::not_found(format!(
                "no delta pack from {} to {} for this machine: {e}",
                from.short(),
                to.short()
            ))
        })?;
    }
    let store = app.published().store.clone();
    let effort = app.delta_effort(&from, &to);
    let built = app
        .deltas
        .ensure(store, from, to, effort, crate::deltas::Why::Demand)
        .await
        .map_err(|e| {
            tracing::warn!(from = %from.short(), to = %to.short(), error = %e, "no delta pack");
            ApiErr::not_found("no delta pack could be made (the server's log says why)")
        })?
        .ok_or_else(|| {
            ApiErr::not_found(format!(
                "no delta from {} to {}: the server does not hold both releases",
                from.short(),
                to.short()
            ))
        })?;
    let name = format!("{}-{}.pack", from.to_hex(), to.to_hex());
    let made = app
        .torrents
        .of("delta", built.path.clone(), name)
        .await
        .map_err(ApiErr::internal)?;
    let owner = machine.map_or_else(|| "admin".to_owned(), |m| m.id.clone());
    answer(&app, &headers, &made, &owner)
}

/// `GET /api/v1/torrents/full/{to}`: the torrent of the full-release pack of `to` (a pack from
/// no release: what a first install needs), built now if needed.
#[utoipa::path(get, path = "/api/v1/torrents/full/{to}", tag = "machines", summary = "A private torrent of the full-release pack of a release, for first installs (serve --torrent)", params(("to" = String, Path, description = "The release the machine installs")), responses((status = 200, description = "The torrent file, announcing with the asker's passkey", content_type = "application/x-bittorrent", body = Vec<u8>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("machine_signature" = []), ("admin_token" = [])))]
async fn full_torrent(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(to): Path<String>,
) -> ApiResult<Response> {
    let machine = reader(&app, &method, &uri, &headers, b"")?;
    enabled(&app)?;
    let to = to
        .parse::<semithin_store::CommitId>()
        .map_err(|_| ApiErr::bad(format!("{to:?} is not a release (a commit id)")))?;
    if let Some(m) = &machine {
        app.install_allowed(&m.snapshot(), &to).map_err(|e| {
            ApiErr::not_found(format!(
                "no full-release pack of {} for this machine: {e}",
                to.short()
            ))
        })?;
    }
    let store = app.published().store.clone();
    let built = app
        .deltas
        .ensure(store, NOTHING, to, Effort::Full, crate::deltas::Why::Demand)
        .await
        .map_err(|e| {
            tracing::warn!(to = %to.short(), error = %e, "no full-release pack");
            ApiErr::not_found("no full-release pack could be made (the server's log says why)")
        })?
        .ok_or_else(|| {
            ApiErr::not_found(format!(
                "no full-release pack of {}: the server does not hold it",
                to.short()
            ))
        })?;
    let made = app
        .torrents
        .of(
            "full",
            built.path.clone(),
            format!("{}-{}.pack", NOTHING.to_hex(), to.to_hex()),
        )
        .await
        .map_err(ApiErr::internal)?;
    let owner = machine.map_or_else(|| "admin".to_owned(), |m| m.id.clone());
    answer(&app, &headers, &made, &owner)
}

/// `GET /api/v1/torrents/boot/{release}/{name}`: the torrent of a signed boot artifact.
#[utoipa::path(get, path = "/api/v1/torrents/boot/{release}/{name}", tag = "boot", summary = "A private torrent of a boot artifact (serve --torrent)", params(("release" = String, Path, description = "The release (64 hex digits)"), ("name" = String, Path, description = "`vmlinuz`, `initrd.img` or `root.squashfs`")), responses((status = 200, description = "The torrent file, announcing with the asker's passkey", content_type = "application/x-bittorrent", body = Vec<u8>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("machine_signature" = []), ("admin_token" = [])))]
async fn boot_torrent(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path((release, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let machine = reader(&app, &method, &uri, &headers, b"")?;
    enabled(&app)?;
    let release: ReleaseId = release.parse().map_err(|_| {
        ApiErr::bad(format!(
            "{:?} is not a release (64 lower-case hex digits of a commit)",
            semithin_protocol::ids::short_str(&release)
        ))
    })?;
    let name = semithin_protocol::boot::check_name(&name).map_err(ApiErr::bad)?;
    let f = app
        .published()
        .boot
        .get(&release.commit())
        .and_then(|m| m.get(name))
        .cloned()
        .ok_or_else(|| {
            ApiErr::not_found(format!(
                "release {} has no signed boot artifact {name}",
                release.short()
            ))
        })?;
    let path = app
        .cfg
        .repo()
        .join(semithin_protocol::boot::REPO_DIR)
        .join(&f.sha256);
    let made = app
        .torrents
        .of("boot", path, format!("{}-{name}", f.sha256))
        .await
        .map_err(ApiErr::internal)?;
    if made.meta.length != f.length {
        return Err(ApiErr::internal(format!(
            "boot artifact {} has {} bytes, its target says {}",
            f.sha256, made.meta.length, f.length
        )));
    }
    let owner = machine.map_or_else(|| "admin".to_owned(), |m| m.id.clone());
    answer(&app, &headers, &made, &owner)
}

fn bencoded(body: Vec<u8>) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// `GET /announce/{passkey}?info_hash=...`: the tracker. Every answer is bencode with 200.
#[utoipa::path(get, path = "/announce/{passkey}", tag = "machines", summary = "The BitTorrent tracker (BEP 3, BEP 23 compact) for the server's private torrents", description = "Any query is answered with 200 and bencode, as trackers do: what is missing or malformed is named in a `failure reason`. The parameters are BEP 3's, all as text.", params(("passkey" = String, Path, description = "The passkey in the torrent's announce URL"), ("info_hash" = Option<String>, Query, description = "20 bytes, percent-encoded (required)"), ("peer_id" = Option<String>, Query, description = "20 bytes, percent-encoded (required)"), ("port" = Option<String>, Query, description = "The peer's port, 1 to 65535 (required)"), ("left" = Option<String>, Query, description = "Bytes the peer still lacks"), ("uploaded" = Option<String>, Query, description = "Bytes uploaded"), ("downloaded" = Option<String>, Query, description = "Bytes downloaded"), ("event" = Option<String>, Query, description = "`started`, `completed` or `stopped`"), ("compact" = Option<String>, Query, description = "`0` for the dictionary model"), ("numwant" = Option<String>, Query, description = "Peers wanted (at most 50)")), responses((status = 200, description = "A bencoded answer: peers, or `failure reason`", content_type = "text/plain", body = Vec<u8>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)))]
async fn announce(
    State(app): State<Arc<App>>,
    Path(passkey): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    local: Option<axum::Extension<LocalAddr>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let _ = headers;
    let t = &app.torrents;
    if !t.cfg.enabled {
        return bencoded(failure("this server runs no tracker (serve --torrent)"));
    }
    let Some(owner) = t.owner(&passkey) else {
        return bencoded(failure("unknown passkey"));
    };
    if owner != "admin" && owner != "server" {
        let accepted = app.fleet.get(owner).is_some_and(|m| {
            m.row.lock().expect("lock").status == semithin_protocol::api::MachineStatus::Accepted
        });
        if !accepted {
            return bencoded(failure(
                "this passkey's machine is not an accepted machine of this server",
            ));
        }
    }
    let a = match Announce::parse(query.as_deref().unwrap_or("")) {
        Ok(a) => a,
        Err(e) => return bencoded(failure(&e)),
    };
    let seed = t.server_peer(local.map(|l| l.0.0));
    let body = t
        .tracker
        .lock()
        .expect("lock")
        .announce(owner, peer.ip(), &a, seed, Instant::now());
    bencoded(body)
}

/// `GET /api/v1/admin/torrents`: the torrents made, their peers and the seeder's upload.
#[utoipa::path(get, path = "/api/v1/admin/torrents", tag = "admin", summary = "The server's torrents: peers and the seeder's upload", responses((status = 200, description = "Every torrent made since the server started", body = Vec<TorrentInfo>), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn list(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<axum::Json<Vec<TorrentInfo>>> {
    admin(&app, &headers)?;
    let t = &app.torrents;
    let out = t
        .list()
        .iter()
        .map(|m| {
            let c = t.tracker.lock().expect("lock").count(&m.info_hash);
            TorrentInfo {
                kind: m.kind.to_owned(),
                name: m.meta.name.clone(),
                info_hash: semithin_swarm::metainfo::hex(&m.info_hash),
                length: m.meta.length,
                piece_length: m.meta.piece_length,
                uploaded: t.uploaded(&m.info_hash),
                seeders: c.seeders as u64,
                leechers: c.leechers as u64,
            }
        })
        .collect();
    Ok(axum::Json(out))
}
