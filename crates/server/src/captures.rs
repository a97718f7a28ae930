//! Captures: machines' writable layers, kept for the admin to bake into layers
//! (docs/PROTOCOL.md, "Captures"). Each is a tar.zst checked whole on arrival (zstd frames,
//! tar headers, plain relative paths, a bound on its unpacked size), stored once under
//! DATA/captures/HASH.tar.zst (HASH: BLAKE3 of the file) and recorded in the `captures` table
//! (migration 14). A machine keeps its last `captures_keep`; a file goes when no row names it.
//! With `auto_bake`, each new capture is baked into the layer channel `machines/NAME`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use semithin_protocol::capture::{self, Baked, CaptureInfo};
use semithin_store::{Access, Repo};
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use crate::error::{Error, Result};
use crate::{App, now};

/// What the server keeps of captures.
pub struct Captures {
    dir: PathBuf,
    /// Captures kept per machine (the oldest go first).
    pub keep: usize,
    /// The largest upload accepted (bytes of tar.zst).
    pub max_bytes: u64,
    /// The largest tar inside it.
    pub max_unpacked: u64,
    /// One automatic bake at a time.
    bake: tokio::sync::Mutex<()>,
}

/// What the check of an archive counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checked {
    pub unpacked: u64,
    pub entries: u64,
}

/// Reads a capture through: every zstd frame, every tar header and its content, every path
/// plain and relative, entry types a layer can hold; at most `max_unpacked` bytes of tar.
pub fn check_archive(path: &Path, max_unpacked: u64) -> std::result::Result<Checked, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let dec = zstd::Decoder::new(f).map_err(|e| format!("zstd: {e}"))?;
    // one byte over the bound is enough to know it is over
    let mut limited = dec.take(max_unpacked.saturating_add(1));
    let mut entries = 0u64;
    let over = || {
        format!(
            "it unpacks to more than the {max_unpacked} bytes accepted (capture_max_unpacked_bytes)"
        )
    };
    let read = (|| -> std::result::Result<(), String> {
        {
            let mut ar = tar::Archive::new(&mut limited);
            for e in ar.entries().map_err(|e| e.to_string())? {
                let mut e = e.map_err(|e| format!("entry {}: {e}", entries + 1))?;
                entries += 1;
                let raw = e.path_bytes().into_owned();
                let shown = String::from_utf8_lossy(&raw).into_owned();
                plain_path(&raw).map_err(|why| format!("entry {shown:?}: {why}"))?;
                use tar::EntryType as T;
                match e.header().entry_type() {
                    T::Regular
                    | T::Continuous
                    | T::Directory
                    | T::Symlink
                    | T::Char
                    | T::Block
                    | T::Fifo
                    | T::Link => {}
                    other => {
                        return Err(format!(
                            "entry {shown:?}: a {other:?} entry has no place in a layer"
                        ));
                    }
                }
                std::io::copy(&mut e, &mut std::io::sink())
                    .map_err(|err| format!("entry {shown:?}: {err}"))?;
            }
        }
        // what follows the tar's end must still be whole zstd
        std::io::copy(&mut limited, &mut std::io::sink()).map_err(|e| format!("zstd: {e}"))?;
        Ok(())
    })();
    // cut at the bound, the tar ends early: the bound is the reason
    if limited.limit() == 0 {
        return Err(over());
    }
    read?;
    let unpacked = max_unpacked.saturating_add(1) - limited.limit();
    if entries == 0 {
        return Err("it holds no entry".into());
    }
    Ok(Checked { unpacked, entries })
}

/// A path a layer may hold: relative, no `..`, no NUL, at most 4,094 bytes (`./` and a
/// trailing `/` allowed, as tar writes them).
fn plain_path(raw: &[u8]) -> std::result::Result<(), &'static str> {
    let p = raw.strip_prefix(b"./").unwrap_or(raw);
    if p.starts_with(b"/") {
        return Err("an absolute path");
    }
    if p.len() > 4094 || p.contains(&0) {
        return Err("longer than 4,094 bytes, or holding a NUL byte");
    }
    if p.split(|b| *b == b'/').any(|c| c == b"..") {
        return Err("a `..` component");
    }
    Ok(())
}

fn row(r: &SqliteRow) -> CaptureInfo {
    let channel: Option<String> = r.get("baked_channel");
    let commit: Option<String> = r.get("baked_commit");
    CaptureInfo {
        id: r.get::<i64, _>("id") as u64,
        machine: r.get("machine_name"),
        machine_id: r.get("machine"),
        created_at: r.get("created_at"),
        size: r.get::<i64, _>("size") as u64,
        unpacked: r.get::<i64, _>("unpacked") as u64,
        entries: r.get::<i64, _>("entries") as u64,
        hash: r.get("hash"),
        baked: channel
            .zip(commit)
            .map(|(channel, commit)| Baked { channel, commit }),
    }
}

const COLUMNS: &str = "id, machine, machine_name, created_at, size, unpacked, entries, hash, \
                       baked_channel, baked_commit";

impl Captures {
    /// DATA/captures/, with uploads a stop interrupted removed.
    pub fn open(dir: PathBuf, keep: usize, max_bytes: u64, max_unpacked: u64) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        for e in std::fs::read_dir(&dir)
            .map_err(Error::io("reading", &dir))?
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with(".upload-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Self {
            dir,
            keep: keep.max(1),
            max_bytes,
            max_unpacked,
            bake: tokio::sync::Mutex::new(()),
        })
    }

    /// The file of a capture's hash.
    pub fn file(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.tar.zst"))
    }

    /// A new name for an upload in progress.
    pub fn upload_path(&self) -> Result<PathBuf> {
        Ok(self
            .dir
            .join(format!(".upload-{}", crate::random_token_id()?)))
    }

    /// Records an upload that passed its checks: the file under its hash, the row, then the
    /// machine's oldest captures beyond `keep` removed.
    pub async fn add(
        &self,
        db: &SqlitePool,
        machine: (&str, &str),
        upload: &Path,
        hash: &str,
        size: u64,
        checked: Checked,
    ) -> Result<CaptureInfo> {
        let dest = self.file(hash);
        // the same content again: one file
        std::fs::rename(upload, &dest).map_err(Error::io("storing", &dest))?;
        semithin_store::fsutil::sync_dir(&self.dir)?;
        let (id, name) = machine;
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO captures (machine, machine_name, created_at, size, unpacked, entries, \
             hash) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
        )))
        .bind(id)
        .bind(name)
        .bind(now())
        .bind(size as i64)
        .bind(checked.unpacked as i64)
        .bind(checked.entries as i64)
        .bind(hash)
        .fetch_one(db)
        .await
        .map_err(|e| Error::db("recording a capture", e))?;
        let info = row(&r);
        let old: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM captures WHERE machine = $1 ORDER BY id DESC LIMIT -1 OFFSET $2",
        )
        .bind(id)
        .bind(self.keep as i64)
        .fetch_all(db)
        .await
        .map_err(|e| Error::db("listing old captures", e))?;
        for o in old {
            self.delete(db, o as u64).await?;
        }
        Ok(info)
    }

    /// Every capture (of one machine, by name or id), newest first.
    pub async fn list(&self, db: &SqlitePool, machine: Option<&str>) -> Result<Vec<CaptureInfo>> {
        let rows = match machine {
            Some(m) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM captures WHERE machine_name = $1 OR machine = $1 \
                 ORDER BY id DESC"
                )))
                .bind(m)
                .fetch_all(db)
                .await
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM captures ORDER BY id DESC"
                )))
                .fetch_all(db)
                .await
            }
        }
        .map_err(|e| Error::db("listing captures", e))?;
        Ok(rows.iter().map(row).collect())
    }

    pub async fn get(&self, db: &SqlitePool, id: u64) -> Result<Option<CaptureInfo>> {
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM captures WHERE id = $1"
        )))
        .bind(id as i64)
        .fetch_optional(db)
        .await
        .map_err(|e| Error::db("reading a capture", e))?;
        Ok(r.as_ref().map(row))
    }

    /// Removes a capture's row, and its file when no other row names it.
    pub async fn delete(&self, db: &SqlitePool, id: u64) -> Result<Option<CaptureInfo>> {
        let Some(info) = self.get(db, id).await? else {
            return Ok(None);
        };
        sqlx::query("DELETE FROM captures WHERE id = $1")
            .bind(id as i64)
            .execute(db)
            .await
            .map_err(|e| Error::db("removing a capture", e))?;
        let others: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM captures WHERE hash = $1")
            .bind(&info.hash)
            .fetch_one(db)
            .await
            .map_err(|e| Error::db("counting captures", e))?;
        if others == 0 {
            let f = self.file(&info.hash);
            match std::fs::remove_file(&f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("removing", &f)(e)),
            }
        }
        Ok(Some(info))
    }

    async fn set_baked(&self, db: &SqlitePool, id: u64, b: &Baked) -> Result<()> {
        sqlx::query("UPDATE captures SET baked_channel = $1, baked_commit = $2 WHERE id = $3")
            .bind(&b.channel)
            .bind(&b.commit)
            .bind(id as i64)
            .execute(db)
            .await
            .map_err(|e| Error::db("recording a bake", e))?;
        Ok(())
    }
}

/// `serve --auto-bake`: bakes a new capture into `machines/NAME` (made on its first capture),
/// logging what it did or why it could not.
pub async fn auto_bake(app: Arc<App>, info: CaptureInfo) {
    let _one = app.captures.bake.lock().await;
    let layer = capture::machine_layer(&info.machine);
    let repo = app.cfg.repo();
    let file = app.captures.file(&info.hash);
    let message = format!("capture {} of {}", info.id, info.machine);
    let l = layer.clone();
    let done = tokio::task::spawn_blocking(move || -> Result<String> {
        let repo = Repo::open(&repo, Access::Write)?;
        let commit = crate::bake::import(&repo, &file, &message)?;
        let plan = crate::bake::plan(&repo, &l, commit)?;
        Ok(crate::bake::bake(&repo, &l, &plan, &message)?.to_hex())
    })
    .await;
    match done {
        Ok(Ok(commit)) => {
            tracing::info!(capture = info.id, machine = %info.machine, %layer, %commit, "capture baked");
            let b = Baked {
                channel: layer,
                commit,
            };
            if let Err(e) = app.captures.set_baked(&app.db, info.id, &b).await {
                tracing::warn!(capture = info.id, error = %e, "recording a bake");
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(capture = info.id, machine = %info.machine, %layer, error = %e, "automatic bake failed")
        }
        Err(e) => tracing::warn!(capture = info.id, error = %e, "automatic bake failed"),
    }
}

#[cfg(test)]
mod tests;
