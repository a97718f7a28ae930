//! Rollouts in the fleet database (migration 0002): one row per rollout, one per machine of it.
//! Every change of a step is written in one transaction before memory follows it.

use semithin_protocol::rollout::RolloutState;
use sqlx::Row as _;
use sqlx::sqlite::SqlitePool;

use super::plan::Row;
use super::spec::Spec;
use crate::error::{Error, Result};

/// A rollout as stored, without its machines.
#[derive(Clone, Debug)]
pub struct Record {
    pub id: i64,
    pub uid: String,
    pub channel: String,
    pub release: String,
    pub selector: String,
    pub spec: Spec,
    pub state: RolloutState,
    pub reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What one step or admin command changes.
#[derive(Clone, Debug, Default)]
pub struct Change {
    pub state: Option<(RolloutState, Option<String>)>,
    pub admitted: Vec<String>,
    pub settled: Vec<String>,
    pub acknowledged: Vec<String>,
    /// Events for the machines' histories: (machine id, kind, detail).
    pub events: Vec<(String, String, String)>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.state.is_none()
            && self.admitted.is_empty()
            && self.settled.is_empty()
            && self.acknowledged.is_empty()
            && self.events.is_empty()
    }
}

/// Another rollout of the channel is active (the database's unique index said so).
pub struct Taken;

pub async fn insert(
    pool: &SqlitePool,
    r: &Record,
    rows: &[Row],
) -> Result<std::result::Result<i64, Taken>> {
    let err = |e| Error::db("storing the rollout", e);
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
    let inserted = sqlx::query(
        "INSERT INTO rollouts (uid, channel, release, selector, spec, state, reason, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&r.uid)
    .bind(&r.channel)
    .bind(&r.release)
    .bind(&r.selector)
    .bind(serde_json::to_string(&r.spec).expect("serialises"))
    .bind(r.state.as_str())
    .bind(&r.reason)
    .bind(r.created_at)
    .bind(r.updated_at)
    .execute(&mut *tx)
    .await;
    let id = match inserted {
        Ok(done) => done.last_insert_rowid(),
        Err(e)
            if e.as_database_error()
                .is_some_and(|d| d.is_unique_violation()) =>
        {
            return Ok(Err(Taken));
        }
        Err(e) => return Err(err(e)),
    };
    for (pos, row) in rows.iter().enumerate() {
        sqlx::query(
            "INSERT INTO rollout_machines (rollout, machine, name, position, wave, from_release, \
             admitted_at, settled_at, acknowledged) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id)
        .bind(&row.machine)
        .bind(&row.name)
        .bind(pos as i64)
        .bind(row.wave.map(i64::from))
        .bind(&row.from)
        .bind(row.admitted_at)
        .bind(row.settled_at)
        .bind(row.acknowledged as i64)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    }
    tx.commit().await.map_err(err)?;
    Ok(Ok(id))
}

/// Writes a change of rollout `id` at `now` in one transaction.
pub async fn save(pool: &SqlitePool, id: i64, c: &Change, now: i64) -> Result<()> {
    if c.is_empty() {
        return Ok(());
    }
    let err = |e| Error::db("updating the rollout", e);
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
    if let Some((state, reason)) = &c.state {
        sqlx::query("UPDATE rollouts SET state = $1, reason = $2, updated_at = $3 WHERE id = $4")
            .bind(state.as_str())
            .bind(reason)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    for (col, machines) in [("admitted_at", &c.admitted), ("settled_at", &c.settled)] {
        for m in machines {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE rollout_machines SET {col} = $1 WHERE rollout = $2 AND machine = $3"
            )))
            .bind(now)
            .bind(id)
            .bind(m)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        }
    }
    for m in &c.acknowledged {
        sqlx::query(
            "UPDATE rollout_machines SET acknowledged = 1 WHERE rollout = $1 AND machine = $2",
        )
        .bind(id)
        .bind(m)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    }
    for (machine, kind, detail) in &c.events {
        sqlx::query("INSERT INTO events (machine, at, kind, detail) VALUES ($1, $2, $3, $4)")
            .bind(machine)
            .bind(now)
            .bind(kind)
            .bind(detail)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    tx.commit().await.map_err(err)
}

fn record(r: &sqlx::sqlite::SqliteRow) -> Result<Record> {
    let id: i64 = r.get(0);
    let bad = |what: &str| Error::Config(format!("rollout {id} in the database: bad {what}"));
    let spec: String = r.get(5);
    let state: String = r.get(6);
    Ok(Record {
        id,
        uid: r.get(1),
        channel: r.get(2),
        release: r.get(3),
        selector: r.get(4),
        spec: serde_json::from_str(&spec).map_err(|_| bad("spec"))?,
        state: RolloutState::parse(&state).ok_or_else(|| bad("state"))?,
        reason: r.get(7),
        created_at: r.get(8),
        updated_at: r.get(9),
    })
}

const COLUMNS: &str =
    "id, uid, channel, release, selector, spec, state, reason, created_at, updated_at";

async fn rows_of(pool: &SqlitePool, id: i64) -> Result<Vec<Row>> {
    let rows = sqlx::query(
        "SELECT machine, name, wave, from_release, admitted_at, settled_at, acknowledged \
         FROM rollout_machines WHERE rollout = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .map_err(|e| Error::db("loading the rollout's machines", e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let wave: Option<i64> = r.get(2);
            let ack: i64 = r.get(6);
            Row {
                machine: r.get(0),
                name: r.get(1),
                wave: wave.map(|w| w as u32),
                from: r.get(3),
                admitted_at: r.get(4),
                settled_at: r.get(5),
                acknowledged: ack != 0,
            }
        })
        .collect())
}

/// Every rollout that may still tell machines something (not superseded), with its machines.
pub async fn load_live(pool: &SqlitePool) -> Result<Vec<(Record, Vec<Row>)>> {
    let rs = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM rollouts WHERE state != 'superseded' ORDER BY id"
    )))
    .fetch_all(pool)
    .await
    .map_err(|e| Error::db("loading rollouts", e))?;
    let mut out = Vec::new();
    for r in &rs {
        let rec = record(r)?;
        let rows = rows_of(pool, rec.id).await?;
        out.push((rec, rows));
    }
    Ok(out)
}

pub async fn get(pool: &SqlitePool, id: i64) -> Result<Option<(Record, Vec<Row>)>> {
    let r = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM rollouts WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(|e| Error::db("reading the rollout", e))?;
    match r {
        None => Ok(None),
        Some(r) => {
            let rec = record(&r)?;
            let rows = rows_of(pool, rec.id).await?;
            Ok(Some((rec, rows)))
        }
    }
}

/// The newest rollouts first, without their machines.
pub async fn list(pool: &SqlitePool, channel: Option<&str>, limit: i64) -> Result<Vec<Record>> {
    let rs = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM rollouts WHERE ($1 IS NULL OR channel = $1) \
         ORDER BY id DESC LIMIT $2"
    )))
    .bind(channel)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(|e| Error::db("listing rollouts", e))?;
    rs.iter().map(record).collect()
}
