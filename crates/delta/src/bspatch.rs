//! bsdiff patches in the layout that compresses: the `bsdiff` crate writes each control triple
//! followed by its diff and extra bytes; a pack stores all controls, then all diff bytes (mostly
//! zeros where the files agree), then all extra bytes, as bsdiff 4's own file format does, so the
//! compressor sees three uniform streams.
//!
//! ```text
//! count   u32 LE            number of control triples
//! control count × 24 bytes  (diff length u64, extra length u64, seek i64) as the crate writes them
//! diff    the diff bytes of every triple, in order
//! extra   the extra bytes of every triple, in order
//! ```

use crate::error::{Error, Result};

/// A patch in the crate's layout, rearranged.
pub fn split(patch: &[u8]) -> Result<Vec<u8>> {
    let bad = || Error::bad("bsdiff produced a patch it cannot read back");
    let mut controls = Vec::new();
    let mut diff = Vec::new();
    let mut extra = Vec::new();
    let mut at = 0usize;
    while at < patch.len() {
        let c = patch.get(at..at + 24).ok_or_else(bad)?;
        let mix = u64::from_le_bytes(c[0..8].try_into().expect("8 bytes")) as usize;
        let copy = u64::from_le_bytes(c[8..16].try_into().expect("8 bytes")) as usize;
        controls.extend_from_slice(c);
        at += 24;
        diff.extend_from_slice(patch.get(at..at + mix).ok_or_else(bad)?);
        at += mix;
        extra.extend_from_slice(patch.get(at..at + copy).ok_or_else(bad)?);
        at += copy;
    }
    let count = u32::try_from(controls.len() / 24).map_err(|_| bad())?;
    let mut out = Vec::with_capacity(4 + patch.len());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&controls);
    out.extend_from_slice(&diff);
    out.extend_from_slice(&extra);
    Ok(out)
}

/// The crate's layout back from a pack's, checking every length against what is there.
pub fn join(body: &[u8]) -> Result<Vec<u8>> {
    let bad = |why: &str| Error::bad(format!("bsdiff patch: {why}"));
    let count = u32::from_le_bytes(
        body.get(..4)
            .ok_or_else(|| bad("no control count"))?
            .try_into()
            .expect("4 bytes"),
    ) as usize;
    let controls = body
        .get(
            4..4 + count
                .checked_mul(24)
                .ok_or_else(|| bad("too many controls"))?,
        )
        .ok_or_else(|| bad("cut inside the controls"))?;
    let mut rest = &body[4 + controls.len()..];
    let mut lens = Vec::with_capacity(count);
    let mut diff_total = 0usize;
    for c in controls.chunks_exact(24) {
        let mix = usize::try_from(u64::from_le_bytes(c[0..8].try_into().expect("8")))
            .map_err(|_| bad("a diff length overflows"))?;
        let copy = usize::try_from(u64::from_le_bytes(c[8..16].try_into().expect("8")))
            .map_err(|_| bad("an extra length overflows"))?;
        diff_total = diff_total
            .checked_add(mix)
            .ok_or_else(|| bad("diff lengths overflow"))?;
        lens.push((mix, copy));
    }
    if diff_total > rest.len() {
        return Err(bad("cut inside the diff bytes"));
    }
    let (mut diff, extra) = rest.split_at(diff_total);
    rest = extra;
    let mut out = Vec::with_capacity(body.len());
    for (c, (mix, copy)) in controls.chunks_exact(24).zip(lens) {
        out.extend_from_slice(c);
        out.extend_from_slice(&diff[..mix]);
        diff = &diff[mix..];
        let e = rest
            .get(..copy)
            .ok_or_else(|| bad("cut inside the extra bytes"))?;
        out.extend_from_slice(e);
        rest = &rest[copy..];
    }
    if !rest.is_empty() {
        return Err(bad("bytes after the last extra block"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_join_round_trip_and_a_patch_still_applies() {
        let old: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let mut new = old.clone();
        new[5000..5010].copy_from_slice(b"0123456789");
        new.extend_from_slice(b"and a tail that is new");
        let mut patch = Vec::new();
        bsdiff::diff(&old, &new, &mut patch).unwrap();
        let s = split(&patch).unwrap();
        assert_eq!(join(&s).unwrap(), patch);
        let mut out = Vec::new();
        bsdiff::patch(&old, &mut join(&s).unwrap().as_slice(), &mut out).unwrap();
        assert_eq!(out, new);
        // damage is named, never a panic
        for cut in [0, 3, 10, s.len() - 1] {
            assert!(join(&s[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = s.clone();
        longer.push(0);
        assert!(join(&longer).is_err());
    }
}
