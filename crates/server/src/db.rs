//! The fleet database (SQLite): machines, enrollment tokens, events. Schema changes are numbered
//! files under `migrations/`, applied once each in order and recorded in `schema_version`.

use std::path::Path;
use std::str::FromStr;

use semithin_protocol::api::{MachineStatus, Report};
use semithin_protocol::selector::Labels;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::error::{Error, Result};

/// Numbered schema changes. Numbers need not be consecutive (features on parallel branches own
/// their numbers): every migration not yet recorded in `schema_version` is applied, in order.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_fleet.sql")),
    (2, include_str!("../migrations/0002_rollouts.sql")),
    (3, include_str!("../migrations/0003_jobs.sql")),
    (5, include_str!("../migrations/0005_request_counters.sql")),
    (12, include_str!("../migrations/0012_vars.sql")),
    (14, include_str!("../migrations/0014_captures.sql")),
    (15, include_str!("../migrations/0015_audit.sql")),
    (20, include_str!("../migrations/0020_token_channel.sql")),
    (21, include_str!("../migrations/0021_pending.sql")),
    (22, include_str!("../migrations/0022_relays.sql")),
    (23, include_str!("../migrations/0023_relay_status.sql")),
];

pub async fn open(path: &Path) -> Result<SqlitePool> {
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
        .map_err(|e| Error::db("opening the database", e))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(std::time::Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await
        .map_err(|e| Error::db(&format!("opening {}", path.display()), e))?;
    migrate(&pool).await?;
    Ok(pool)
}

async fn migrate(pool: &SqlitePool) -> Result<()> {
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        .execute(pool)
        .await
        .map_err(|e| Error::db("creating schema_version", e))?;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_version")
        .fetch_all(pool)
        .await
        .map_err(|e| Error::db("reading schema_version", e))?;
    if let Some(unknown) = applied
        .iter()
        .find(|v| !MIGRATIONS.iter().any(|m| m.0 == **v))
    {
        let known: Vec<String> = MIGRATIONS.iter().map(|m| m.0.to_string()).collect();
        return Err(Error::Config(format!(
            "the database has schema version {unknown}, which this server does not know (it \
             knows {}): run a newer semithin",
            known.join(", ")
        )));
    }
    for (v, sql) in MIGRATIONS.iter().filter(|m| !applied.contains(&m.0)) {
        let mut tx = pool.begin().await.map_err(|e| Error::db("migrating", e))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::db(&format!("applying migration {v}"), e))?;
        sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
            .bind(v)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::db("recording the migration", e))?;
        tx.commit().await.map_err(|e| Error::db("migrating", e))?;
    }
    Ok(())
}

/// One machine as stored.
#[derive(Clone, Debug)]
pub struct MachineRow {
    pub id: String,
    pub name: String,
    pub public_key: [u8; 32],
    pub status: MachineStatus,
    pub labels: Labels,
    pub channel: Option<String>,
    pub report: Report,
    pub enrolled_at: i64,
    pub last_seen: Option<i64>,
}

pub async fn load_machines(pool: &SqlitePool) -> Result<Vec<MachineRow>> {
    let rows = sqlx::query(
        "SELECT id, name, public_key, status, labels, channel, report, enrolled_at, last_seen \
         FROM machines",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| Error::db("loading machines", e))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: String = r.get(0);
        let bad = |what: &str| Error::Config(format!("machine {id} in the database: bad {what}"));
        let key: Vec<u8> = r.get(2);
        let status: String = r.get(3);
        let labels: String = r.get(4);
        let report: String = r.get(6);
        out.push(MachineRow {
            name: r.get(1),
            public_key: key.try_into().map_err(|_| bad("public key"))?,
            status: MachineStatus::parse(&status).ok_or_else(|| bad("status"))?,
            labels: serde_json::from_str(&labels).map_err(|_| bad("labels"))?,
            channel: r.get(5),
            report: serde_json::from_str(&report).map_err(|_| bad("report"))?,
            enrolled_at: r.get(7),
            last_seen: r.get(8),
            id,
        });
    }
    Ok(out)
}

/// The statement that stores a new machine.
fn machine_insert(
    m: &MachineRow,
) -> sqlx::query::Query<'_, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    sqlx::query(
        "INSERT INTO machines (id, name, public_key, status, labels, channel, report, \
         enrolled_at, last_seen) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&m.id)
    .bind(&m.name)
    .bind(&m.public_key[..])
    .bind(m.status.as_str())
    .bind(json(&m.labels))
    .bind(&m.channel)
    .bind(json(&m.report))
    .bind(m.enrolled_at)
    .bind(m.last_seen)
}

/// Stores a new machine; `ex` is the pool or a transaction (many rows in one).
pub async fn insert_machine<'e, E>(ex: E, m: &MachineRow) -> Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    machine_insert(m)
        .execute(ex)
        .await
        .map_err(|e| Error::db("enrolling the machine", e))?;
    Ok(())
}

/// Writes the admin-controlled fields (status, labels, channel) of these machines, all or none:
/// one transaction.
pub async fn update_machines(pool: &SqlitePool, rows: &[MachineRow]) -> Result<()> {
    let err = |e| Error::db("updating machines", e);
    let mut tx = pool.begin().await.map_err(err)?;
    for m in rows {
        sqlx::query("UPDATE machines SET status = $1, labels = $2, channel = $3 WHERE id = $4")
            .bind(m.status.as_str())
            .bind(json(&m.labels))
            .bind(&m.channel)
            .bind(&m.id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    tx.commit().await.map_err(err)?;
    Ok(())
}

/// Deletes a machine, its events, its inventory and its facts, in one transaction.
pub async fn delete_machine(pool: &SqlitePool, id: &str) -> Result<()> {
    let fail = |e: sqlx::Error| Error::db("removing the machine", e);
    let mut tx = pool.begin().await.map_err(fail)?;
    for sql in [
        "DELETE FROM machines WHERE id = $1",
        "DELETE FROM events WHERE machine = $1",
        "DELETE FROM inventory WHERE machine = $1",
        "DELETE FROM machine_facts WHERE machine = $1",
        "DELETE FROM machine_relays WHERE machine = $1",
        "DELETE FROM machine_placement WHERE machine = $1",
        "DELETE FROM relay_status WHERE machine = $1",
    ] {
        sqlx::query(sql)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
    }
    tx.commit().await.map_err(fail)?;
    Ok(())
}

pub async fn update_report(pool: &SqlitePool, id: &str, report: &Report, seen: i64) -> Result<()> {
    sqlx::query("UPDATE machines SET report = $1, last_seen = $2 WHERE id = $3")
        .bind(json(report))
        .bind(seen)
        .bind(id)
        .execute(pool)
        .await
        .map_err(|e| Error::db("storing the report", e))?;
    Ok(())
}

/// The highest request counter stored for each machine (crate::replay).
pub async fn load_counters(pool: &SqlitePool) -> Result<Vec<(String, u64)>> {
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT machine, counter FROM request_counters")
        .fetch_all(pool)
        .await
        .map_err(|e| Error::db("loading request counters", e))?;
    Ok(rows
        .into_iter()
        .map(|(m, c)| (m, u64::try_from(c).unwrap_or(0)))
        .collect())
}

/// The highest request counter stored for one machine (0: none): it outlives the machine's
/// removal, so a key that enrolls again cannot have its earlier requests replayed.
pub async fn load_counter(pool: &SqlitePool, machine: &str) -> Result<u64> {
    let c: Option<(i64,)> =
        sqlx::query_as("SELECT counter FROM request_counters WHERE machine = $1")
            .bind(machine)
            .fetch_optional(pool)
            .await
            .map_err(|e| Error::db("loading a request counter", e))?;
    Ok(c.map_or(0, |(c,)| c.max(0) as u64))
}

/// Raises the stored request counters of machines (never lowers one), in one transaction.
pub async fn store_counters(pool: &SqlitePool, counters: &[(String, u64)]) -> Result<()> {
    let err = |e| Error::db("storing request counters", e);
    let mut tx = pool.begin().await.map_err(err)?;
    for (id, c) in counters {
        sqlx::query(
            "INSERT INTO request_counters (machine, counter) VALUES ($1, $2) \
             ON CONFLICT (machine) DO UPDATE SET counter = MAX(counter, excluded.counter)",
        )
        .bind(id)
        .bind(i64::try_from(*c).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    }
    tx.commit().await.map_err(err)?;
    Ok(())
}

/// Writes many last-seen times in one transaction.
pub async fn update_last_seen(pool: &SqlitePool, seen: &[(String, i64)]) -> Result<()> {
    let mut tx = pool.begin().await.map_err(|e| Error::db("last seen", e))?;
    for (id, at) in seen {
        sqlx::query("UPDATE machines SET last_seen = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::db("last seen", e))?;
    }
    tx.commit().await.map_err(|e| Error::db("last seen", e))?;
    Ok(())
}

pub async fn add_event(
    pool: &SqlitePool,
    machine: &str,
    at: i64,
    kind: &str,
    detail: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO events (machine, at, kind, detail) VALUES ($1, $2, $3, $4)")
        .bind(machine)
        .bind(at)
        .bind(kind)
        .bind(detail)
        .execute(pool)
        .await
        .map_err(|e| Error::db("recording an event", e))?;
    Ok(())
}

#[derive(Clone, Debug)]
pub struct Event {
    pub at: i64,
    pub kind: String,
    pub detail: String,
}

/// Keeps the newest `keep` events of a machine (its `enrolled` event always stays).
pub async fn cap_events(pool: &SqlitePool, machine: &str, keep: i64) -> Result<u64> {
    let r = sqlx::query(
        "DELETE FROM events WHERE machine = $1 AND kind != 'enrolled' AND id NOT IN \
         (SELECT id FROM events WHERE machine = $1 AND kind != 'enrolled' \
          ORDER BY id DESC LIMIT $2)",
    )
    .bind(machine)
    .bind(keep)
    .execute(pool)
    .await
    .map_err(|e| Error::db("pruning a machine's events", e))?;
    Ok(r.rows_affected())
}

/// Removes events older than `before` and all but the newest `keep` of every machine (the
/// `enrolled` events always stay: they name the token a machine enrolled with). Returns how
/// many went.
pub async fn prune_events(pool: &SqlitePool, before: i64, keep: i64) -> Result<u64> {
    let err = |e| Error::db("pruning events", e);
    let old = sqlx::query("DELETE FROM events WHERE at < $1 AND kind != 'enrolled'")
        .bind(before)
        .execute(pool)
        .await
        .map_err(err)?;
    let over = sqlx::query(
        "DELETE FROM events WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER \
         (PARTITION BY machine ORDER BY id DESC) AS n FROM events WHERE kind != 'enrolled') \
         AS ranked WHERE n > $1)",
    )
    .bind(keep)
    .execute(pool)
    .await
    .map_err(err)?;
    Ok(old.rows_affected() + over.rows_affected())
}

pub async fn events(pool: &SqlitePool, machine: &str, limit: i64) -> Result<Vec<Event>> {
    let rows = sqlx::query(
        "SELECT at, kind, detail FROM events WHERE machine = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(machine)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(|e| Error::db("reading events", e))?;
    Ok(rows
        .into_iter()
        .map(|r| Event {
            at: r.get(0),
            kind: r.get(1),
            detail: r.get(2),
        })
        .collect())
}

#[derive(Clone, Debug)]
pub struct TokenRow {
    pub id: String,
    pub preauthorized: bool,
    pub labels: Labels,
    pub uses_left: Option<i64>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    /// The channel machines enrolling with it follow at once.
    pub channel: Option<String>,
}

pub async fn insert_token(pool: &SqlitePool, t: &TokenRow, secret_hash: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO tokens (id, secret_hash, preauthorized, labels, uses_left, expires_at, \
         created_at, channel) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&t.id)
    .bind(secret_hash)
    .bind(t.preauthorized as i64)
    .bind(json(&t.labels))
    .bind(t.uses_left)
    .bind(t.expires_at)
    .bind(t.created_at)
    .bind(&t.channel)
    .execute(pool)
    .await
    .map_err(|e| Error::db("storing the token", e))?;
    Ok(())
}

fn token_row(r: &sqlx::sqlite::SqliteRow) -> TokenRow {
    let labels: String = r.get(3);
    let pre: i64 = r.get(2);
    TokenRow {
        id: r.get(0),
        preauthorized: pre != 0,
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        uses_left: r.get(4),
        expires_at: r.get(5),
        created_at: r.get(6),
        channel: r.get(7),
    }
}

pub async fn tokens(pool: &SqlitePool) -> Result<Vec<TokenRow>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{TOKEN_SELECT} ORDER BY created_at"
    )))
    .fetch_all(pool)
    .await
    .map_err(|e| Error::db("listing tokens", e))?;
    Ok(rows.iter().map(token_row).collect())
}

pub async fn delete_token(pool: &SqlitePool, id: &str) -> Result<bool> {
    let r = sqlx::query("DELETE FROM tokens WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map_err(|e| Error::db("deleting the token", e))?;
    Ok(r.rows_affected() > 0)
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serialises")
}

/// Every column of a token, as `token_row` reads them.
const TOKEN_SELECT: &str = "SELECT id, secret_hash, preauthorized, labels, uses_left, expires_at, created_at, channel \
     FROM tokens";

/// A token by the hash of its secret, valid or not.
pub async fn find_token(pool: &SqlitePool, secret_hash: &str) -> Result<Option<TokenRow>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{TOKEN_SELECT} WHERE secret_hash = $1"
    )))
    .bind(secret_hash)
    .fetch_optional(pool)
    .await
    .map_err(|e| Error::db("reading the token", e))?;
    Ok(row.as_ref().map(token_row))
}

/// Whether a token can enroll a new machine at `now`: not expired, uses left.
pub fn token_usable(t: &TokenRow, now: i64) -> bool {
    t.expires_at.is_none_or(|e| e > now) && t.uses_left.is_none_or(|u| u > 0)
}

/// The id of the token a machine enrolled with (its `enrolled` event says `token ID`).
pub async fn enrolled_with(pool: &SqlitePool, machine: &str) -> Result<Option<String>> {
    let detail: Option<String> = sqlx::query_scalar(
        "SELECT detail FROM events WHERE machine = $1 AND kind = 'enrolled' ORDER BY id LIMIT 1",
    )
    .bind(machine)
    .fetch_optional(pool)
    .await
    .map_err(|e| Error::db("reading the enrollment", e))?;
    Ok(detail.and_then(|d| d.strip_prefix("token ").map(str::to_owned)))
}

/// Why [`enroll_machine`] stored nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnrollRefused {
    /// The token is unknown, expired or used up.
    Token,
    /// Another machine has the name or the key.
    Taken,
}

/// Enrolls a machine in one transaction: takes a use of the token with this secret hash if it
/// is valid at `now`, stores the machine `make` builds from the token and its `enrolled` event.
/// Refused, nothing is stored and no use is taken.
pub async fn enroll_machine(
    pool: &SqlitePool,
    secret_hash: &str,
    now: i64,
    make: impl FnOnce(&TokenRow) -> MachineRow,
) -> Result<std::result::Result<(TokenRow, MachineRow), EnrollRefused>> {
    let err = |e| Error::db("enrolling the machine", e);
    // IMMEDIATE: the write lock from the start, so concurrent enrollments queue instead of
    // failing to upgrade a read lock.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{TOKEN_SELECT} WHERE secret_hash = $1"
    )))
    .bind(secret_hash)
    .fetch_optional(&mut *tx)
    .await
    .map_err(err)?;
    let Some(t) = row.as_ref().map(token_row) else {
        return Ok(Err(EnrollRefused::Token));
    };
    if !token_usable(&t, now) {
        return Ok(Err(EnrollRefused::Token));
    }
    let m = make(&t);
    let inserted = machine_insert(&m).execute(&mut *tx).await;
    match inserted {
        Ok(_) => {}
        Err(e)
            if e.as_database_error()
                .is_some_and(|d| d.is_unique_violation()) =>
        {
            return Ok(Err(EnrollRefused::Taken));
        }
        Err(e) => return Err(err(e)),
    }
    if t.uses_left.is_some() {
        sqlx::query("UPDATE tokens SET uses_left = uses_left - 1 WHERE id = $1")
            .bind(&t.id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    sqlx::query("INSERT INTO events (machine, at, kind, detail) VALUES ($1, $2, $3, $4)")
        .bind(&m.id)
        .bind(now)
        .bind("enrolled")
        .bind(format!("token {}", t.id))
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(Ok((t, m)))
}

/// Tokens made before ids were random have the first 8 hex digits of their secret as id: they
/// get a new id from `new_id`, and the `enrolled` events that name them follow. Returns how many.
pub async fn renumber_legacy_tokens(
    pool: &SqlitePool,
    mut new_id: impl FnMut() -> Result<String>,
) -> Result<usize> {
    let err = |e| Error::db("renumbering tokens", e);
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
    let old: Vec<String> = sqlx::query_scalar("SELECT id FROM tokens WHERE length(id) = 8")
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
    for id in &old {
        let new = new_id()?;
        sqlx::query("UPDATE tokens SET id = $1 WHERE id = $2")
            .bind(&new)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        sqlx::query("UPDATE events SET detail = $1 WHERE kind = 'enrolled' AND detail = $2")
            .bind(format!("token {new}"))
            .bind(format!("token {id}"))
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    tx.commit().await.map_err(err)?;
    Ok(old.len())
}

/// One token by id.
pub async fn token_by_id(pool: &SqlitePool, id: &str) -> Result<Option<TokenRow>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("{TOKEN_SELECT} WHERE id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(|e| Error::db("reading the token", e))?;
    Ok(row.as_ref().map(token_row))
}
