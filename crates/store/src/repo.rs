//! A repository on disk: its config, its lock, its objects and its channels.
//!
//! Layout (docs/FORMAT.md): `config` (TOML, with the format version), `lock`, `objects/packs/`,
//! `objects/tmp/`, `channels/NAME.log`, `cache/files/`.

use std::fs::File;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::objects::ObjectStore;

/// The repository format this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Content-defined chunking parameters. They decide the cut points, so they are part of the
/// format: recorded in the config when the repository is made, and never changed afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerConfig {
    /// The algorithm; only "fastcdc-2020" (the fastcdc crate 5.0.0, normalisation level 1).
    pub algorithm: Algorithm,
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Algorithm {
    #[serde(rename = "fastcdc-2020")]
    FastCdc2020,
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::FastCdc2020,
            min: 16 * 1024,
            avg: 64 * 1024,
            max: 256 * 1024,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub format: u32,
    pub chunker: ChunkerConfig,
    /// zstd level for new objects.
    pub compression_level: i32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            format: FORMAT_VERSION,
            chunker: ChunkerConfig::default(),
            compression_level: 3,
        }
    }
}

/// How a command holds the repository: readers share it, writers (commit, channel moves, gc)
/// hold it alone. The lock is an `flock`, released by the kernel even when a process is killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

pub struct Repo {
    path: PathBuf,
    pub config: Config,
    pub objects: ObjectStore,
    _lock: File,
}

impl Repo {
    /// Makes a new repository at `path` (missing or an empty directory).
    pub fn init(path: &Path, config: Config) -> Result<()> {
        if path.exists() {
            let mut rd = std::fs::read_dir(path).map_err(Error::io("reading", path))?;
            if rd.next().is_some() {
                return Err(Error::RepoExists {
                    path: path.to_owned(),
                });
            }
        }
        for d in [
            "objects/packs",
            "objects/tmp",
            "channels",
            "cache/files",
            "tmp",
        ] {
            let p = path.join(d);
            std::fs::create_dir_all(&p).map_err(Error::io("creating", &p))?;
        }
        File::create(path.join("lock")).map_err(Error::io("creating", path.join("lock")))?;
        let text = toml::to_string(&config).expect("config serialises");
        let text = format!("# semithin repository; see docs/FORMAT.md\n{text}");
        // The config is written last: a directory without it is not a repository.
        fsutil::replace_atomic(&path.join("config"), &path.join("tmp"), text.as_bytes())
    }

    /// Opens a repository, checking its format version, and takes its lock.
    pub fn open(path: &Path, access: Access) -> Result<Self> {
        Self::open_waiting(path, access, &mut || {})
    }

    /// [`Repo::open`], calling `waiting` once when the lock is held by another process, before
    /// waiting for it (a command can say why it does not go on).
    pub fn open_waiting(path: &Path, access: Access, waiting: &mut dyn FnMut()) -> Result<Self> {
        match Self::open_with(path, access, Some(waiting))? {
            Some(repo) => Ok(repo),
            None => unreachable!("open_with waits for the lock when given a callback"),
        }
    }

    /// [`Repo::open`] without waiting: `None` when another process holds the lock (a background
    /// task tries again later instead of blocking).
    pub fn try_open(path: &Path, access: Access) -> Result<Option<Self>> {
        Self::open_with(path, access, None)
    }

    fn open_with(
        path: &Path,
        access: Access,
        waiting: Option<&mut dyn FnMut()>,
    ) -> Result<Option<Self>> {
        let config_path = path.join("config");
        let text = match std::fs::read_to_string(&config_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotARepo {
                    path: path.to_owned(),
                });
            }
            Err(e) => return Err(Error::io("reading", &config_path)(e)),
        };
        // Read the version alone first, so a newer repository is named as such even when the
        // rest of its config has fields this version does not know.
        #[derive(Deserialize)]
        struct Version {
            format: u32,
        }
        let bad = |reason: String| Error::BadConfig {
            path: config_path.clone(),
            reason,
        };
        let v: Version = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if v.format > FORMAT_VERSION {
            return Err(Error::NewerFormat {
                path: path.to_owned(),
                found: v.format,
                supported: FORMAT_VERSION,
            });
        }
        let config: Config = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let c = config.chunker;
        let powers = c.min.is_power_of_two() && c.avg.is_power_of_two() && c.max.is_power_of_two();
        if !(powers && c.min < c.avg && c.avg < c.max) || c.min < 64 || c.max > 16 << 20 {
            return Err(bad(
                "chunker sizes must be powers of two with min < avg < max, 64 B..16 MiB".into(),
            ));
        }
        let lock_path = path.join("lock");
        let lock = match File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
        {
            // A reader of a repository on a read-only file system (a backup disk mounted
            // read-only) takes its shared lock through a read-only descriptor.
            Err(e)
                if access == Access::Read && e.kind() == std::io::ErrorKind::ReadOnlyFilesystem =>
            {
                File::open(&lock_path)
            }
            r => r,
        }
        .map_err(Error::io("opening", &lock_path))?;
        let (op, try_op) = match access {
            Access::Read => (
                FlockOperation::LockShared,
                FlockOperation::NonBlockingLockShared,
            ),
            Access::Write => (
                FlockOperation::LockExclusive,
                FlockOperation::NonBlockingLockExclusive,
            ),
        };
        match rustix::fs::flock(&lock, try_op) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let Some(waiting) = waiting else {
                    return Ok(None);
                };
                waiting();
                rustix::fs::flock(&lock, op)
                    .map_err(|e| Error::io("locking", &lock_path)(e.into()))?;
            }
            Err(e) => return Err(Error::io("locking", &lock_path)(e.into())),
        }
        let tmp = path.join("objects/tmp");
        if access == Access::Write {
            // Only a writer makes temporary files, and we are the only writer now: whatever is
            // left there is from an interrupted run.
            clear_dir(&tmp)?;
            clear_dir(&path.join("tmp"))?;
        }
        let objects = ObjectStore::open(path.join("objects/packs"), tmp, config.compression_level)?;
        Ok(Some(Self {
            path: path.to_owned(),
            config,
            objects,
            _lock: lock,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.path.join("tmp")
    }

    pub fn channels_dir(&self) -> PathBuf {
        self.path.join("channels")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.path.join("cache/files")
    }
}

fn clear_dir(dir: &Path) -> Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return std::fs::create_dir_all(dir).map_err(Error::io("creating", dir));
        }
        Err(e) => return Err(Error::io("listing", dir)(e)),
    };
    for de in rd {
        let p = de.map_err(Error::io("listing", dir))?.path();
        std::fs::remove_file(&p).map_err(Error::io("removing leftover", &p))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_format_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        Repo::init(d.path(), Config::default()).unwrap();
        let cfg = d.path().join("config");
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("format = 1", "format = 2");
        std::fs::write(&cfg, text + "\nnew_field = true\n").unwrap();
        let e = Repo::open(d.path(), Access::Read)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("format version 2") && e.contains("upgrade semithin"),
            "{e}"
        );
    }

    #[test]
    fn not_a_repo_is_named() {
        let d = tempfile::tempdir().unwrap();
        let e = Repo::open(d.path(), Access::Read)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a semithin repository"), "{e}");
    }
}
