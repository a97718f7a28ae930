//! The publisher's settings: the top-level roles and how long each role's metadata lives
//! (`config.toml` in the trust directory).

use std::path::Path;

use serde::Deserialize;

use super::CONFIG_FILE;
use crate::error::{Error, Result};

/// The four top-level roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Root,
    Targets,
    Snapshot,
    Timestamp,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Root, Role::Targets, Role::Snapshot, Role::Timestamp];
    /// The roles whose keys live in the repository, in the order their metadata is written.
    pub const ONLINE: [Role; 3] = [Role::Targets, Role::Snapshot, Role::Timestamp];

    pub fn name(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Targets => "targets",
            Role::Snapshot => "snapshot",
            Role::Timestamp => "timestamp",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How long each role's metadata is valid after it is signed, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    pub root: i64,
    pub targets: i64,
    pub snapshot: i64,
    pub timestamp: i64,
}

pub(super) const DAY: i64 = 86_400;

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            root: 365 * DAY,
            targets: 90 * DAY,
            snapshot: 30 * DAY,
            timestamp: DAY,
        }
    }
}

impl Lifetimes {
    pub fn of(&self, role: Role) -> i64 {
        match role {
            Role::Root => self.root,
            Role::Targets => self.targets,
            Role::Snapshot => self.snapshot,
            Role::Timestamp => self.timestamp,
        }
    }
}

/// Parses a duration: a whole number and a unit, `s`, `m`, `h` or `d` (`90d`, `12h`).
pub fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    let unit = match s.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => DAY,
        _ => return None,
    };
    // the unit is one ASCII byte
    let digits = s.get(..s.len() - 1)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = digits.parse().ok()?;
    let secs = n.checked_mul(unit)?;
    // Up to a hundred years: beyond that, an expiry is not an expiry.
    (secs > 0 && secs <= 100 * 366 * DAY).then_some(secs)
}

/// Formats seconds the way [`parse_duration`] reads them, in the largest exact unit.
pub fn format_duration(secs: i64) -> String {
    for (unit, n) in [("d", DAY), ("h", 3600), ("m", 60)] {
        if secs % n == 0 {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// Seconds for people, roughly: `89d`, `23h`, `5m`, `40s`.
pub fn format_duration_rounded(secs: i64) -> String {
    for (unit, n) in [("d", DAY), ("h", 3600), ("m", 60)] {
        if secs >= 2 * n {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// `config.toml` of the trust directory.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    expires: ExpiresFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpiresFile {
    root: Option<String>,
    targets: Option<String>,
    snapshot: Option<String>,
    timestamp: Option<String>,
}

/// The settings of a trust directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub expires: Lifetimes,
}

impl Config {
    /// Reads `config.toml` of `dir`; a missing file means the defaults.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(Error::io("reading", &path)(e)),
        };
        let bad = |reason: String| Error::TrustRepo {
            path: path.clone(),
            reason,
        };
        let f: ConfigFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut expires = Lifetimes::default();
        for (role, value, slot) in [
            ("root", &f.expires.root, &mut expires.root),
            ("targets", &f.expires.targets, &mut expires.targets),
            ("snapshot", &f.expires.snapshot, &mut expires.snapshot),
            ("timestamp", &f.expires.timestamp, &mut expires.timestamp),
        ] {
            if let Some(v) = value {
                *slot = parse_duration(v).ok_or_else(|| {
                    bad(format!(
                        "expires.{role} = {v:?} is not a duration like \"90d\", \"12h\", \"30m\" \
                         or \"45s\" (at most 100 years)"
                    ))
                })?;
            }
        }
        Ok(Self { expires })
    }

    /// The text `init` writes: the defaults, explained.
    pub(super) fn default_text() -> String {
        let d = Lifetimes::default();
        format!(
            "# semithin trust settings (docs/FORMAT.md, \"Trust metadata\").\n\
             # How long each role's metadata is valid after it is signed: a whole number and a\n\
             # unit, s, m, h or d. `semithin trust refresh` renews online roles when less than\n\
             # half of this is left.\n\
             [expires]\n\
             root = \"{}\"\n\
             targets = \"{}\"\n\
             snapshot = \"{}\"\n\
             timestamp = \"{}\"\n",
            format_duration(d.root),
            format_duration(d.targets),
            format_duration(d.snapshot),
            format_duration(d.timestamp),
        )
    }
}
