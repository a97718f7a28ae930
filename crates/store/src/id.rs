//! Typed content ids. Every id is a BLAKE3 hash, but of different things, so each gets its own
//! type: a chunk id can never be passed where a tree id is expected.
//!
//! Chunk ids and file hashes are the plain BLAKE3 of the bytes (checkable with `b3sum`). Trees and
//! commits are hashed in their own BLAKE3 key-derivation contexts, so no object of one kind can
//! ever have the id of an object of another kind.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Length of every id in bytes.
pub const ID_LEN: usize = 32;

/// An id string that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an object id (64 hex digits)")]
pub struct BadId(pub String);

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $hasher:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name([u8; ID_LEN]);

        impl $name {
            /// The id of `bytes`.
            pub fn of(bytes: &[u8]) -> Self {
                let mut h: blake3::Hasher = $hasher;
                h.update(bytes);
                Self(*h.finalize().as_bytes())
            }
            /// A hasher for content arriving in pieces; finish it with [`Self::from_hasher`].
            pub fn hasher() -> blake3::Hasher {
                $hasher
            }
            pub fn from_hasher(h: &blake3::Hasher) -> Self {
                Self(*h.finalize().as_bytes())
            }
            pub const fn from_bytes(b: [u8; ID_LEN]) -> Self {
                Self(b)
            }
            pub const fn as_bytes(&self) -> &[u8; ID_LEN] {
                &self.0
            }
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// The first 12 hex digits, for display.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..6])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.short())
            }
        }

        impl FromStr for $name {
            type Err = BadId;
            fn from_str(s: &str) -> Result<Self, BadId> {
                let mut b = [0u8; ID_LEN];
                hex::decode_to_slice(s, &mut b).map_err(|_| BadId(s.to_owned()))?;
                Ok(Self(b))
            }
        }
    };
}

define_id!(
    /// A chunk of file content: BLAKE3 of the chunk's bytes.
    ChunkId,
    blake3::Hasher::new()
);
define_id!(
    /// A whole file's content: BLAKE3 of all its bytes. Not an object, but a checksum that a
    /// machine can compare against a file on disk.
    FileHash,
    blake3::Hasher::new()
);
define_id!(
    /// A directory listing (tree object).
    TreeId,
    blake3::Hasher::new_derive_key("semithin 2026-11 tree object v1")
);
define_id!(
    /// A commit object.
    CommitId,
    blake3::Hasher::new_derive_key("semithin 2026-11 commit object v1")
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_hash_the_same_bytes_differently() {
        let b = b"same bytes";
        assert_eq!(ChunkId::of(b).as_bytes(), FileHash::of(b).as_bytes());
        assert_ne!(ChunkId::of(b).as_bytes(), TreeId::of(b).as_bytes());
        assert_ne!(TreeId::of(b).as_bytes(), CommitId::of(b).as_bytes());
    }

    #[test]
    fn hex_round_trip_and_rejects_garbage() {
        let id = TreeId::of(b"x");
        assert_eq!(id.to_hex().parse::<TreeId>().unwrap(), id);
        assert!("abc".parse::<TreeId>().is_err());
        assert!("zz".repeat(32).parse::<TreeId>().is_err());
    }

    #[test]
    fn chunk_id_is_plain_blake3() {
        assert_eq!(
            ChunkId::of(b"abc").to_hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }
}
