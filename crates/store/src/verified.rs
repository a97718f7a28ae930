//! Objects whose id was established here, by hashing their content: the only thing a store takes
//! (`ObjectStore::put`). As bitar's `VerifiedChunk`, two constructors make one: raw content is
//! hashed into its id, and a compressed frame from elsewhere (another store, the network, a pack
//! gc rewrites) is decompressed and hashed against the id it claims. A caller's id alone never
//! makes one, so nothing stored can be under an id its content does not have.

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::id::{ChunkId, CommitId, TreeId};
use crate::pack::ObjKind;

/// An object checked to have its id. See the module documentation.
#[derive(Clone, Debug)]
pub struct VerifiedObject<'a> {
    kind: ObjKind,
    id: [u8; 32],
    raw_len: u32,
    body: Body<'a>,
}

#[derive(Clone, Debug)]
enum Body<'a> {
    /// Raw content, compressed when it is stored.
    Raw(Cow<'a, [u8]>),
    /// A zstd frame checked to decompress to the content, stored as it is.
    Frame(Cow<'a, [u8]>),
}

/// The id of `raw` as an object of `kind` (each kind hashes in its own context).
pub fn id_of(kind: ObjKind, raw: &[u8]) -> [u8; 32] {
    match kind {
        ObjKind::Chunk => *ChunkId::of(raw).as_bytes(),
        ObjKind::Tree => *TreeId::of(raw).as_bytes(),
        ObjKind::Commit => *CommitId::of(raw).as_bytes(),
    }
}

fn too_large(kind: ObjKind, id: &[u8; 32]) -> Error {
    Error::BadObject {
        kind: kind.name(),
        id: hex::encode(id),
        reason: "larger than 4 GiB".into(),
    }
}

impl<'a> VerifiedObject<'a> {
    /// Raw content, hashed into its id.
    pub fn from_raw(kind: ObjKind, raw: impl Into<Cow<'a, [u8]>>) -> Result<Self> {
        let raw = raw.into();
        let id = id_of(kind, &raw);
        let raw_len = u32::try_from(raw.len()).map_err(|_| too_large(kind, &id))?;
        Ok(Self {
            kind,
            id,
            raw_len,
            body: Body::Raw(raw),
        })
    }

    /// A stored (compressed) frame said to be the object `id`: decompressed and hashed, and
    /// refused unless it is. Gives back the raw content with it.
    pub fn from_frame(
        kind: ObjKind,
        id: [u8; 32],
        frame: impl Into<Cow<'a, [u8]>>,
        raw_len: u32,
    ) -> Result<(Self, Vec<u8>)> {
        let frame = frame.into();
        u32::try_from(frame.len()).map_err(|_| too_large(kind, &id))?;
        let raw = verify_frame(kind, &id, &frame, raw_len)?;
        let obj = Self {
            kind,
            id,
            raw_len,
            body: Body::Frame(frame),
        };
        Ok((obj, raw))
    }

    pub fn kind(&self) -> ObjKind {
        self.kind
    }

    pub fn id(&self) -> &[u8; 32] {
        &self.id
    }

    /// Bytes of the content, uncompressed.
    pub fn raw_len(&self) -> u32 {
        self.raw_len
    }

    /// The frame to store: the one received, or the content compressed at `level`.
    pub(crate) fn frame(&self, level: i32) -> Result<Cow<'_, [u8]>> {
        match &self.body {
            Body::Frame(f) => Ok(Cow::Borrowed(f)),
            Body::Raw(raw) => {
                let frame = zstd::bulk::compress(raw, level).map_err(|e| Error::Tool {
                    tool: "zstd",
                    reason: e.to_string(),
                })?;
                if u32::try_from(frame.len()).is_err() {
                    return Err(too_large(self.kind, &self.id));
                }
                Ok(Cow::Owned(frame))
            }
        }
    }
}

/// Decompresses a stored frame and checks that its content is the object `id` of `kind`: the
/// one gate every object passes, read from a pack or received from elsewhere.
pub fn verify_frame(kind: ObjKind, id: &[u8; 32], frame: &[u8], raw_len: u32) -> Result<Vec<u8>> {
    let corrupt = |reason: String| Error::Corrupt {
        kind: kind.name(),
        id: hex::encode(id),
        reason,
    };
    let raw = zstd::bulk::decompress(frame, raw_len as usize)
        .map_err(|e| corrupt(format!("cannot decompress: {e}")))?;
    if raw.len() != raw_len as usize {
        return Err(corrupt(format!("{} bytes, expected {raw_len}", raw.len())));
    }
    let actual = id_of(kind, &raw);
    if &actual != id {
        return Err(corrupt(format!(
            "content hashes to {}",
            hex::encode(actual)
        )));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_is_made_only_by_hashing_its_content() {
        let obj = VerifiedObject::from_raw(ObjKind::Chunk, &b"hello"[..]).unwrap();
        assert_eq!(obj.id(), ChunkId::of(b"hello").as_bytes());
        assert_eq!(obj.raw_len(), 5);
        // The same bytes are another id as another kind.
        let tree = VerifiedObject::from_raw(ObjKind::Tree, &b"hello"[..]).unwrap();
        assert_ne!(tree.id(), obj.id());

        let frame = obj.frame(3).unwrap().into_owned();
        let (again, raw) =
            VerifiedObject::from_frame(ObjKind::Chunk, *obj.id(), &frame[..], 5).unwrap();
        assert_eq!((again.id(), &raw[..]), (obj.id(), &b"hello"[..]));
        // A frame under another id, kind or length, or damaged, makes none.
        let other = *ChunkId::of(b"other").as_bytes();
        for (kind, id, len) in [
            (ObjKind::Chunk, other, 5),
            (ObjKind::Tree, *obj.id(), 5),
            (ObjKind::Chunk, *obj.id(), 4),
        ] {
            let e = VerifiedObject::from_frame(kind, id, &frame[..], len).unwrap_err();
            assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        }
        let mut bad = frame.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(VerifiedObject::from_frame(ObjKind::Chunk, *obj.id(), bad, 5).is_err());
    }
}
