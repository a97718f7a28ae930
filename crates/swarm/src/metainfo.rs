//! Torrent files of our own making (BEP 3, BEP 27 private): one file per torrent, an info
//! dictionary that depends only on the file's name and bytes, so the server, an agent and a
//! test derive the same info hash. No creation date, no `created by`, no comment.

use std::io::Read;

use sha1::{Digest, Sha1};

use crate::bencode::{self, Value};

/// The smallest piece (BitTorrent's block size) and the largest we make.
pub const MIN_PIECE: u64 = 16 << 10;
pub const MAX_PIECE: u64 = 4 << 20;
/// Pieces are made smaller until a file has about this many (more pieces: peers share sooner).
pub const TARGET_PIECES: u64 = 1024;

/// The piece length for a file of `size` bytes: a power of two between [`MIN_PIECE`] and
/// [`MAX_PIECE`], the smallest giving at most [`TARGET_PIECES`] pieces.
pub fn piece_length_for(size: u64) -> u64 {
    let mut p = MIN_PIECE;
    while p < MAX_PIECE && size.div_ceil(p) > TARGET_PIECES {
        p *= 2;
    }
    p
}

/// What a torrent says of its one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metainfo {
    pub name: String,
    pub length: u64,
    pub piece_length: u64,
    /// SHA-1 of each piece, in order.
    pub pieces: Vec<[u8; 20]>,
    pub private: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MetainfoError {
    #[error("reading the file to hash: {0}")]
    Io(#[from] std::io::Error),
    #[error("the torrent file is not bencode: {0}")]
    Bencode(#[from] bencode::DecodeError),
    #[error("the torrent file's {0}")]
    Invalid(&'static str),
}

/// A file name a torrent may carry: one plain path component we could write.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control)
}

impl Metainfo {
    /// Hashes `reader` (exactly `length` bytes) into a private single-file torrent.
    pub fn hash(name: &str, length: u64, mut reader: impl Read) -> Result<Self, MetainfoError> {
        if !plain_name(name) {
            return Err(MetainfoError::Invalid("name is not one plain file name"));
        }
        let piece_length = piece_length_for(length);
        let mut pieces = Vec::with_capacity(length.div_ceil(piece_length) as usize);
        let mut buf = vec![0u8; piece_length as usize];
        let mut left = length;
        while left > 0 {
            let n = left.min(piece_length) as usize;
            reader.read_exact(&mut buf[..n])?;
            pieces.push(Sha1::digest(&buf[..n]).into());
            left -= n as u64;
        }
        Ok(Self {
            name: name.to_owned(),
            length,
            piece_length,
            pieces,
            private: true,
        })
    }

    fn info(&self) -> Value {
        let mut pieces = Vec::with_capacity(self.pieces.len() * 20);
        for p in &self.pieces {
            pieces.extend_from_slice(p);
        }
        let mut d = Value::dict([
            ("length", Value::Int(self.length as i64)),
            ("name", Value::str(&self.name)),
            ("piece length", Value::Int(self.piece_length as i64)),
            ("pieces", Value::Bytes(pieces)),
        ]);
        if self.private
            && let Value::Dict(m) = &mut d
        {
            m.insert(b"private".to_vec(), Value::Int(1));
        }
        d
    }

    /// The bencoded info dictionary, whose SHA-1 is the info hash.
    pub fn info_bytes(&self) -> Vec<u8> {
        self.info().encode()
    }

    pub fn info_hash(&self) -> [u8; 20] {
        Sha1::digest(self.info_bytes()).into()
    }

    /// The whole torrent file, announcing to `announce` (a tracker URL with its passkey).
    pub fn torrent(&self, announce: &str) -> Vec<u8> {
        Value::dict([("announce", Value::str(announce)), ("info", self.info())]).encode()
    }

    /// Reads a single-file torrent, checking that its parts agree (the pieces cover the
    /// length); the announce URL if it has one.
    pub fn parse(torrent: &[u8]) -> Result<(Self, Option<String>), MetainfoError> {
        use MetainfoError::Invalid;
        let (v, _) = bencode::decode(torrent)?;
        let announce = v
            .get("announce")
            .and_then(Value::as_bytes)
            .map(|b| String::from_utf8_lossy(b).into_owned());
        let info = v.get("info").ok_or(Invalid("info is missing"))?;
        let name = info
            .get("name")
            .and_then(Value::as_bytes)
            .and_then(|b| std::str::from_utf8(b).ok())
            .filter(|n| plain_name(n))
            .ok_or(Invalid("name is missing or not one plain file name"))?;
        if info.get("files").is_some() {
            return Err(Invalid(
                "has several files (only single-file torrents are ours)",
            ));
        }
        let length = info
            .get("length")
            .and_then(Value::as_int)
            .and_then(|l| u64::try_from(l).ok())
            .ok_or(Invalid("length is missing or negative"))?;
        let piece_length = info
            .get("piece length")
            .and_then(Value::as_int)
            .and_then(|l| u64::try_from(l).ok())
            .filter(|l| (MIN_PIECE..=MAX_PIECE).contains(l) && l.is_power_of_two())
            .ok_or(Invalid("piece length is missing or out of range"))?;
        let raw = info
            .get("pieces")
            .and_then(Value::as_bytes)
            .ok_or(Invalid("pieces are missing"))?;
        if raw.len() % 20 != 0 || (raw.len() / 20) as u64 != length.div_ceil(piece_length) {
            return Err(Invalid("pieces do not cover its length"));
        }
        let pieces = raw
            .chunks_exact(20)
            .map(|c| c.try_into().expect("20 bytes"))
            .collect();
        let private = info.get("private").and_then(Value::as_int) == Some(1);
        let m = Self {
            name: name.to_owned(),
            length,
            piece_length,
            pieces,
            private,
        };
        // our info dicts are canonical: what was read encodes to the same bytes
        let (_, spans) = bencode::decode(torrent)?;
        let (a, b) = spans[b"info".as_slice()];
        if torrent[a..b] != m.info_bytes() {
            return Err(Invalid("info dictionary has keys we do not make"));
        }
        Ok((m, announce))
    }
}

/// Hex of an info hash (lowercase), as the routes and logs name torrents.
pub fn hex(hash: &[u8; 20]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_lengths() {
        assert_eq!(piece_length_for(0), MIN_PIECE);
        assert_eq!(piece_length_for(16 << 20), MIN_PIECE);
        assert_eq!(piece_length_for((16 << 20) + 1), 32 << 10);
        assert_eq!(piece_length_for(1 << 40), MAX_PIECE);
    }

    #[test]
    fn deterministic_private_single_file() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let a = Metainfo::hash("a-b.pack", data.len() as u64, &data[..]).unwrap();
        let b = Metainfo::hash("a-b.pack", data.len() as u64, &data[..]).unwrap();
        assert_eq!(a.info_hash(), b.info_hash());
        assert_eq!(a.pieces.len(), 7);
        // the announce URL (the passkey) is outside the info dict
        let t1 = a.torrent("http://s/announce/k1");
        let t2 = a.torrent("http://s/announce/k2");
        assert_ne!(t1, t2);
        let (p1, ann) = Metainfo::parse(&t1).unwrap();
        let (p2, _) = Metainfo::parse(&t2).unwrap();
        assert_eq!(p1.info_hash(), p2.info_hash());
        assert_eq!(p1, a);
        assert!(p1.private);
        assert_eq!(ann.as_deref(), Some("http://s/announce/k1"));
        assert!(a.info_bytes().ends_with(b"7:privatei1ee"));
        // a different byte is a different info hash
        let mut other = data.clone();
        other[99_999] ^= 1;
        let c = Metainfo::hash("a-b.pack", other.len() as u64, &other[..]).unwrap();
        assert_ne!(a.info_hash(), c.info_hash());
        // a reader shorter than the length is an error
        assert!(Metainfo::hash("x", 10, &b"short"[..]).is_err());
    }

    #[test]
    fn torrents_we_do_not_make_are_refused() {
        let m = Metainfo::hash("x.pack", 3, &b"abc"[..]).unwrap();
        let good = m.torrent("http://t/a");
        assert!(Metainfo::parse(&good).is_ok());
        for (bad, what) in [
            (b"d4:infod6:lengthi3e4:name3:../ee".to_vec(), "name"),
            (b"le".to_vec(), "info is missing"),
            (
                Metainfo {
                    length: 99_999,
                    ..m.clone()
                }
                .torrent("http://t/a"),
                "pieces do not cover",
            ),
        ] {
            let e = Metainfo::parse(&bad).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        assert!(Metainfo::hash("a/b", 0, &b""[..]).is_err());
    }
}
