//! Channels: named lines of commits with a history of every move.
//!
//! `channels/NAME.log` holds one JSON object per line, oldest first; the last line is the head.
//! The file is replaced atomically on every move, so it is always whole. Moves are only ever
//! appended: a rollback is a new line pointing back, never a rewrite.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::id::CommitId;
use crate::repo::Repo;

/// Why a channel moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MoveKind {
    Commit,
    Set,
    CherryPick,
    /// A composition of layers (`compose::commit`).
    Compose,
}

/// One move of a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub time: i64,
    pub kind: MoveKind,
    pub commit: CommitIdHex,
    pub previous: Option<CommitIdHex>,
    #[serde(default)]
    pub note: String,
}

/// A commit id written as hex in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitIdHex(pub CommitId);

impl Serialize for CommitIdHex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_hex())
    }
}

impl<'de> Deserialize<'de> for CommitIdHex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(CommitIdHex).map_err(serde::de::Error::custom)
    }
}

/// Checks a channel name: parts of `[A-Za-z0-9._-]` separated by `/`, no part `.` or `..`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && !part.starts_with('.')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
        && !name.contains('~');
    if ok {
        Ok(())
    } else {
        Err(Error::BadChannelName(name.to_owned()))
    }
}

fn log_path(repo: &Repo, name: &str) -> Result<PathBuf> {
    check_name(name)?;
    Ok(repo.channels_dir().join(format!("{name}.log")))
}

/// The moves of a channel, oldest first. A missing channel is an error.
pub fn history(repo: &Repo, name: &str) -> Result<Vec<Move>> {
    let path = log_path(repo, name)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NoSuchChannel(name.to_owned()));
        }
        Err(e) => return Err(Error::io("reading", &path)(e)),
    };
    parse_log(&path, &text)
}

fn parse_log(path: &Path, text: &str) -> Result<Vec<Move>> {
    let moves = text
        .lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| Error::BadChannelLog {
                path: path.to_owned(),
                reason: format!("line {}: {e}", i + 1),
            })
        })
        .collect::<Result<Vec<Move>>>()?;
    if moves.is_empty() {
        return Err(Error::BadChannelLog {
            path: path.to_owned(),
            reason: "empty".into(),
        });
    }
    Ok(moves)
}

/// The head of a channel, or None when it does not exist.
pub fn head(repo: &Repo, name: &str) -> Result<Option<CommitId>> {
    match history(repo, name) {
        Ok(h) => Ok(h.last().map(|m| m.commit.0)),
        Err(Error::NoSuchChannel(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Moves a channel (creating it) to `commit`, recording the move. The caller holds the write lock.
pub fn move_to(
    repo: &Repo,
    name: &str,
    commit: CommitId,
    kind: MoveKind,
    note: &str,
) -> Result<Move> {
    let path = log_path(repo, name)?;
    let mut moves = match history(repo, name) {
        Ok(m) => m,
        Err(Error::NoSuchChannel(_)) => Vec::new(),
        Err(e) => return Err(e),
    };
    let m = Move {
        time: crate::now(),
        kind,
        commit: CommitIdHex(commit),
        previous: moves.last().map(|m| m.commit),
        note: note.to_owned(),
    };
    moves.push(m.clone());
    let mut text = String::new();
    for m in &moves {
        text.push_str(&serde_json::to_string(m).expect("move serialises"));
        text.push('\n');
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    }
    fsutil::replace_atomic(&path, &repo.tmp_dir(), text.as_bytes())?;
    Ok(m)
}

/// Removes a channel and its history. What only it reached becomes garbage for gc. The caller
/// holds the write lock.
pub fn remove(repo: &Repo, name: &str) -> Result<()> {
    let path = log_path(repo, name)?;
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NoSuchChannel(name.to_owned()));
        }
        Err(e) => return Err(Error::io("removing", &path)(e)),
    }
    // Parent directories of a nested name go when they become empty.
    let top = repo.channels_dir();
    let mut dir = path.parent().map(Path::to_owned);
    while let Some(d) = dir {
        if d == top || std::fs::remove_dir(&d).is_err() {
            break;
        }
        dir = d.parent().map(Path::to_owned);
    }
    fsutil::sync_dir(&top)
}

/// Every channel name, sorted.
pub fn list(repo: &Repo) -> Result<Vec<String>> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
        for de in std::fs::read_dir(dir).map_err(Error::io("listing", dir))? {
            let de = de.map_err(Error::io("listing", dir))?;
            let name = de.file_name().to_string_lossy().into_owned();
            let ft = de.file_type().map_err(Error::io("reading", de.path()))?;
            if ft.is_dir() {
                walk(&de.path(), &format!("{prefix}{name}/"), out)?;
            } else if let Some(stem) = name.strip_suffix(".log") {
                out.push(format!("{prefix}{stem}"));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(&repo.channels_dir(), "", &mut out)?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        for ok in ["stable", "lab/stable", "school-12/lab_2.x"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/x", "x/", "a//b", "..", "a/../b", ".hidden", "a b", "a~1", "é",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
