//! Ids that cross the network, validated when they are parsed: a malformed id in a request or
//! an answer is a deserialization error naming what was expected, never a string that later
//! code slices or parses. Each has one [`ReleaseId::short`]-style display that cannot panic.

use std::fmt;
use std::str::FromStr;

use semithin_store::CommitId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A string that is not the id it should be.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not {what}")]
pub struct BadId {
    /// What was expected (`a release id (64 lowercase hex digits of a commit)`).
    pub what: &'static str,
    /// The value, cut to 80 characters.
    pub value: String,
}

fn bad(what: &'static str, s: &str) -> BadId {
    BadId {
        what,
        value: s.chars().take(80).collect(),
    }
}

/// The first 12 characters of an id held as text (an agent's state, a database row), cut on a
/// character boundary: for display, whatever the text holds.
pub fn short_str(s: &str) -> &str {
    match s.char_indices().nth(12) {
        Some((i, _)) => s.get(..i).unwrap_or(s),
        None => s,
    }
}

/// A release: the id of a commit, on the wire as 64 lowercase hex digits (the only spelling the
/// server and agent write, so two spellings of one release never compare unequal).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReleaseId(CommitId);

impl ReleaseId {
    const WHAT: &'static str = "a release id (64 lowercase hex digits of a commit)";

    pub fn commit(&self) -> CommitId {
        self.0
    }

    /// The first 12 hex digits, for display.
    pub fn short(&self) -> String {
        self.0.short()
    }
}

impl From<CommitId> for ReleaseId {
    fn from(c: CommitId) -> Self {
        Self(c)
    }
}

impl From<ReleaseId> for CommitId {
    fn from(r: ReleaseId) -> Self {
        r.0
    }
}

impl FromStr for ReleaseId {
    type Err = BadId;
    fn from_str(s: &str) -> Result<Self, BadId> {
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad(Self::WHAT, s));
        }
        s.parse::<CommitId>()
            .map(Self)
            .map_err(|_| bad(Self::WHAT, s))
    }
}

impl fmt::Display for ReleaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for ReleaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReleaseId({})", self.short())
    }
}

impl PartialEq<CommitId> for ReleaseId {
    fn eq(&self, other: &CommitId) -> bool {
        self.0 == *other
    }
}

/// Ids the server makes from a small alphabet (letters, digits, `-`, `_`, `.`), at most
/// `MAX` bytes: machines, job deliveries, enrollment tokens.
macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            const WHAT: &'static str = $what;
            /// The most bytes an id of this kind has.
            pub const MAX: usize = $max;

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// At most the first 12 characters, for display.
            pub fn short(&self) -> &str {
                // ASCII by construction; `get` keeps this total all the same
                self.0.get(..self.0.len().min(12)).unwrap_or(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = BadId;
            fn from_str(s: &str) -> Result<Self, BadId> {
                let ok = !s.is_empty()
                    && s.len() <= Self::MAX
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                if ok {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(bad(Self::WHAT, s))
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:?})"), self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        serde_as_str!($name);

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                string_schema($what, "^[A-Za-z0-9._-]+$", $max)
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

/// Serialized as its string; parsed through `FromStr`, so a malformed value is refused by the
/// deserializer with what was expected.
/// The OpenAPI schema of an id: a string of its pattern and length.
pub(crate) fn string_schema(
    description: &str,
    pattern: &str,
    max: usize,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(Some(pattern))
        .min_length(Some(1))
        .max_length(Some(max))
        .build()
        .into()
}

macro_rules! serde_as_str {
    ($name:ident) => {
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($name::WHAT)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        v.parse().map_err(|e: BadId| {
                            E::invalid_value(serde::de::Unexpected::Str(&e.value), &self)
                        })
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

serde_as_str!(ReleaseId);

impl utoipa::PartialSchema for ReleaseId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema(ReleaseId::WHAT, "^[0-9a-f]{64}$", 64)
    }
}

impl utoipa::ToSchema for ReleaseId {}

text_id!(
    /// An enrolled machine, as the server names it (`MachineInfo::id`).
    MachineId,
    "a machine id (letters, digits, '-', '_', '.')",
    64
);
text_id!(
    /// One delivery of a job to machines (`JOB.OCCURRENCE`).
    DeliveryId,
    "a delivery id (letters, digits, '-', '_', '.')",
    256
);
text_id!(
    /// An enrollment token's id (not its secret).
    TokenId,
    "a token id (letters, digits, '-', '_', '.')",
    64
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_id_is_64_lowercase_hex_and_anything_else_is_refused_at_parse() {
        let c = CommitId::of(b"x");
        let r = ReleaseId::from(c);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, format!("\"{}\"", c.to_hex()));
        let back: ReleaseId = serde_json::from_str(&json).unwrap();
        assert_eq!((back, CommitId::from(back)), (r, c));
        assert_eq!(r.short(), c.to_hex().get(..12).unwrap());
        for bad in [
            "é".repeat(32),
            "é".repeat(40),
            "A".repeat(64),
            "a".repeat(63),
            "a".repeat(65),
            "g".repeat(64),
            String::new(),
        ] {
            let e = serde_json::from_value::<ReleaseId>(serde_json::Value::String(bad.clone()))
                .unwrap_err()
                .to_string();
            assert!(e.contains("release id"), "{bad:?}: {e}");
            assert!(bad.parse::<ReleaseId>().is_err());
        }
        assert!(serde_json::from_str::<ReleaseId>("12").is_err());
    }

    #[test]
    fn short_str_cuts_any_text_without_panicking() {
        assert_eq!(short_str(&"a".repeat(64)), "a".repeat(12));
        assert_eq!(short_str("abc"), "abc");
        assert_eq!(short_str(&"é".repeat(40)), "é".repeat(12));
        assert_eq!(short_str(""), "");
    }

    #[test]
    fn text_ids_refuse_what_could_not_be_printed_or_cut_safely() {
        let m: MachineId = serde_json::from_str("\"m-1_a.b\"").unwrap();
        assert_eq!(m.short(), "m-1_a.b");
        let long: DeliveryId = "d".repeat(200).parse().unwrap();
        assert_eq!(long.short().len(), 12);
        for bad in ["", "é", "a b", "\u{1b}[2J", "a/b"] {
            assert!(bad.parse::<MachineId>().is_err(), "{bad:?}");
            let e = serde_json::from_value::<TokenId>(serde_json::Value::String(bad.into()))
                .unwrap_err();
            assert!(e.to_string().contains("token id"), "{e}");
        }
        assert!("x".repeat(MachineId::MAX + 1).parse::<MachineId>().is_err());
    }
}
