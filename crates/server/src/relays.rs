//! Relays as the server sees them (docs/RELAY.md): the path of relays each machine's check-in
//! came through (the `X-Semithin-Relay` header each relay appends its name to), and the
//! upstreams machines report as bad. The header is not signed (relays add to it): it says where
//! a machine's requests came from, for the admin's view, and decides nothing.

use axum::http::HeaderMap;
use semithin_protocol::api::BadUpstream;
use sqlx::{Row, SqlitePool};

use crate::App;
use crate::error::{Error, Result};
use crate::fleet::{Fleet, Machine};

pub const HEADER: &str = "x-semithin-relay";

/// At most this many relays between a machine and the server.
pub const MAX_HOPS: usize = 16;

/// The relay path a request names: names separated by commas, nearest the machine first.
pub fn header_path(headers: &HeaderMap) -> std::result::Result<Vec<String>, String> {
    let Some(v) = headers.get(HEADER) else {
        return Ok(Vec::new());
    };
    let v = v
        .to_str()
        .map_err(|_| format!("{HEADER}: not ASCII text"))?;
    let names: Vec<String> = v.split(',').map(|s| s.trim().to_owned()).collect();
    if names.len() > MAX_HOPS {
        return Err(format!(
            "{HEADER}: {} relays; at most {MAX_HOPS}",
            names.len()
        ));
    }
    for n in &names {
        semithin_protocol::selector::check_name(n)
            .map_err(|e| format!("{HEADER}: relay name {n:?}: {e}"))?;
    }
    Ok(names)
}

pub async fn load(pool: &SqlitePool, fleet: &Fleet) -> Result<()> {
    let rows = sqlx::query("SELECT machine, path FROM machine_relays")
        .fetch_all(pool)
        .await
        .map_err(|e| Error::db("loading relay paths", e))?;
    for r in rows {
        let id: String = r.get(0);
        let path: String = r.get(1);
        if let Some(m) = fleet.get(&id) {
            *m.relay_path.lock().expect("lock") = split(&path);
        }
    }
    Ok(())
}

fn split(path: &str) -> Vec<String> {
    path.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Stores a check-in's relay path when it changed (the database first), and the bad upstreams
/// it reports as events.
pub async fn record(
    app: &App,
    m: &Machine,
    path: Vec<String>,
    bad: &[BadUpstream],
    t: i64,
) -> Result<()> {
    let changed = *m.relay_path.lock().expect("lock") != path;
    if changed {
        let fail = |e| Error::db("storing the relay path", e);
        if path.is_empty() {
            sqlx::query("DELETE FROM machine_relays WHERE machine = $1")
                .bind(&m.id)
                .execute(&app.db)
                .await
                .map_err(fail)?;
        } else {
            sqlx::query(
                "INSERT INTO machine_relays (machine, path, seen_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (machine) DO UPDATE SET path = $2, seen_at = $3",
            )
            .bind(&m.id)
            .bind(path.join(","))
            .bind(t)
            .execute(&app.db)
            .await
            .map_err(fail)?;
        }
        *m.relay_path.lock().expect("lock") = path;
    }
    for b in bad {
        let detail = format!("{}: {}", b.url, b.reason);
        tracing::warn!(machine = %m.id, %detail, "machine left a bad upstream");
        crate::http::agent::add_event(app, m, t, "bad-upstream", &detail).await?;
    }
    Ok(())
}
