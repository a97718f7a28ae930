//! Rollouts awaiting a signature: planned on the dashboard (or through the API), stored here,
//! started when an admin who holds the targets key signs them (`semithin rollout sign ID`).
//! The server never holds that key, so it cannot start them itself; what it can do is keep the
//! request, check it again when it is signed (the channel must not have moved since it was
//! planned, nothing may have started it already) and start it then, exactly as
//! `POST /api/v1/admin/rollouts` does.

use std::sync::Arc;

use semithin_protocol::rollout::{PendingInfo, PublishPlan, RolloutInfo, StartRequest};
use semithin_store::CommitId;
use semithin_store::pack::ObjKind;
use sqlx::Row as _;

use super::{Problem, Res};
use crate::{App, Error, now};

/// The most requests one listing returns, newest first.
const MAX_LIST: i64 = 200;

fn info(app: &App, r: &sqlx::sqlite::SqliteRow) -> Res<PendingInfo> {
    let id: i64 = r.get("id");
    let request: StartRequest = serde_json::from_str(&r.get::<String, _>("request"))
        .map_err(|e| Problem::Server(Error::Config(format!("pending request {id}: {e}"))))?;
    let state: String = r.get("state");
    let base: Option<String> = r.get("base");
    let stale = (state == "awaiting")
        .then(|| moved(app, id, &request.channel, base.as_deref()))
        .flatten();
    Ok(PendingInfo {
        id,
        kind: r.get("kind"),
        state,
        request,
        base,
        stale,
        rollout: r.get("rollout"),
        created_at: r.get("created_at"),
        started_at: r.get("started_at"),
    })
}

/// Why request `id` can no longer be signed: its channel's published release is not the one it
/// was planned against.
fn moved(app: &App, id: i64, channel: &str, base: Option<&str>) -> Option<String> {
    let now = app.release(channel).map(|c| c.to_hex());
    let short = |s: Option<&str>| {
        s.map(|s| semithin_protocol::ids::short_str(s).to_owned())
            .unwrap_or_else(|| "nothing".into())
    };
    (now.as_deref() != base).then(|| {
        format!(
            "stale: channel {channel} was at {} when request {id} was planned and is at {} now; \
             plan it again",
            short(base),
            short(now.as_deref())
        )
    })
}

/// Checks `req` as a dry run (the checks of a start, nothing stored) and stores it, awaiting a
/// signature.
pub async fn plan(app: &Arc<App>, req: &StartRequest) -> Res<PendingInfo> {
    let mut dry = req.clone();
    dry.dry_run = true;
    app.rollouts.start(app, &dry).await?;
    let mut req = req.clone();
    req.dry_run = false;
    let base = app.release(&req.channel).map(|c| c.to_hex());
    let id: i64 = sqlx::query(
        "INSERT INTO pending (kind, state, request, channel, base, created_at) \
         VALUES ('rollout', 'awaiting', $1, $2, $3, $4) RETURNING id",
    )
    .bind(serde_json::to_string(&req).expect("serialises"))
    .bind(&req.channel)
    .bind(&base)
    .bind(now())
    .fetch_one(&app.db)
    .await
    .map_err(|e| Error::db("storing a pending rollout", e))?
    .get(0);
    get(app, id).await
}

pub async fn list(app: &App) -> Res<Vec<PendingInfo>> {
    let rows = sqlx::query("SELECT * FROM pending ORDER BY id DESC LIMIT $1")
        .bind(MAX_LIST)
        .fetch_all(&app.db)
        .await
        .map_err(|e| Error::db("listing pending rollouts", e))?;
    rows.iter().map(|r| info(app, r)).collect()
}

pub async fn get(app: &App, id: i64) -> Res<PendingInfo> {
    let row = sqlx::query("SELECT * FROM pending WHERE id = $1")
        .bind(id)
        .fetch_optional(&app.db)
        .await
        .map_err(|e| Error::db("reading a pending rollout", e))?
        .ok_or_else(|| Problem::NotFound(format!("no rollout request {id} awaits a signature")))?;
    info(app, &row)
}

/// Starts request `id` for the admin who signs it: refused, with nothing changed, when it is
/// unknown, started already or stale, or when the start is refused (another rollout active on
/// the channel). The rollout is then `publishing` until the release it names is signed, as one
/// `POST /api/v1/admin/rollouts` makes.
pub async fn start(app: &Arc<App>, id: i64) -> Res<RolloutInfo> {
    let p = get(app, id).await?;
    if p.kind != "rollout" {
        return Err(Problem::Conflict(format!(
            "request {id} is a publish: `semithin publish --request {id}` signs it"
        )));
    }
    if p.state != "awaiting" {
        return Err(Problem::Conflict(format!(
            "request {id} was signed already: it started rollout {}",
            p.rollout.map_or_else(|| "-".into(), |r| r.to_string())
        )));
    }
    if let Some(why) = p.stale {
        return Err(Problem::Conflict(why));
    }
    // Claimed first, so that two admins signing at once start it once.
    let claimed = sqlx::query(
        "UPDATE pending SET state = 'started', started_at = $2 WHERE id = $1 AND state = 'awaiting'",
    )
    .bind(id)
    .bind(now())
    .execute(&app.db)
    .await
    .map_err(|e| Error::db("claiming a pending rollout", e))?;
    if claimed.rows_affected() != 1 {
        return Err(Problem::Conflict(format!(
            "request {id} was signed already"
        )));
    }
    match app.rollouts.start(app, &p.request).await {
        Ok(r) => {
            sqlx::query("UPDATE pending SET rollout = $2 WHERE id = $1")
                .bind(id)
                .bind(r.id)
                .execute(&app.db)
                .await
                .map_err(|e| Error::db("recording a pending rollout's start", e))?;
            Ok(r)
        }
        Err(e) => {
            sqlx::query("UPDATE pending SET state = 'awaiting', started_at = NULL WHERE id = $1")
                .bind(id)
                .execute(&app.db)
                .await
                .map_err(|e| Error::db("giving a pending rollout back", e))?;
            Err(e)
        }
    }
}

/// Checks a publish (the channel's name, a commit the server holds that is not its release
/// already) and stores it, awaiting a signature.
pub async fn plan_publish(app: &Arc<App>, req: &PublishPlan) -> Res<PendingInfo> {
    semithin_store::channel::check_name(&req.channel).map_err(|e| Problem::Bad(e.to_string()))?;
    let release: CommitId = req.release.parse().map_err(|_| {
        Problem::Bad(format!(
            "{:?} is not a release (a commit id, 64 hex digits)",
            req.release
        ))
    })?;
    let held = |app: &App| {
        app.published()
            .store
            .contains(ObjKind::Commit, release.as_bytes())
    };
    if !held(app) {
        app.reload().await?;
    }
    if !held(app) {
        return Err(Problem::NotFound(format!(
            "the server's repository has no commit {}: commit it there first",
            release.to_hex()
        )));
    }
    let base = app.release(&req.channel);
    if base == Some(release) {
        return Err(Problem::Conflict(format!(
            "{} is channel {}'s release already",
            release.short(),
            req.channel
        )));
    }
    let request = StartRequest {
        channel: req.channel.clone(),
        release: release.to_hex(),
        ..StartRequest::default()
    };
    let id: i64 = sqlx::query(
        "INSERT INTO pending (kind, state, request, channel, base, created_at) \
         VALUES ('publish', 'awaiting', $1, $2, $3, $4) RETURNING id",
    )
    .bind(serde_json::to_string(&request).expect("serialises"))
    .bind(&req.channel)
    .bind(base.map(|c| c.to_hex()))
    .bind(now())
    .fetch_one(&app.db)
    .await
    .map_err(|e| Error::db("storing a pending publish", e))?
    .get(0);
    get(app, id).await
}

/// Records that publish request `id` was signed: its channel's release is now the one it asked
/// for (the signer published it, then tells the server). Refused when it is not a publish, was
/// recorded already, or the channel is not at its release.
pub async fn published(app: &Arc<App>, id: i64) -> Res<PendingInfo> {
    let p = get(app, id).await?;
    if p.kind != "publish" {
        return Err(Problem::Conflict(format!(
            "request {id} is a rollout: `semithin rollout sign {id}` signs it"
        )));
    }
    if p.state != "awaiting" {
        return Err(Problem::Conflict(format!(
            "request {id} was signed already"
        )));
    }
    let channel = &p.request.channel;
    if app.release(channel).map(|c| c.to_hex()).as_deref() != Some(p.request.release.as_str()) {
        // published since the server last read the repository?
        app.reload().await?;
    }
    let now_at = app.release(channel).map(|c| c.to_hex());
    if now_at.as_deref() != Some(p.request.release.as_str()) {
        return Err(Problem::Conflict(format!(
            "channel {channel} is at {}, not at {} which request {id} asks for: \
             `semithin publish --request {id}` signs it",
            now_at
                .as_deref()
                .map(semithin_protocol::ids::short_str)
                .unwrap_or("nothing"),
            semithin_protocol::ids::short_str(&p.request.release)
        )));
    }
    sqlx::query(
        "UPDATE pending SET state = 'started', started_at = $2 WHERE id = $1 AND state = 'awaiting'",
    )
    .bind(id)
    .bind(now())
    .execute(&app.db)
    .await
    .map_err(|e| Error::db("recording a publish", e))?;
    get(app, id).await
}
