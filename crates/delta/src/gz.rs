//! gzip files as their uncompressed content. Man pages, changelogs and the like are gzip'ed,
//! and a small change to the text changes most of the compressed bytes, so patches against the
//! old compressed file gain nothing. When zlib reproduces a file byte for byte from its content
//! (Debian compresses with `gzip -9n`, which zlib matches), a pack carries the patch between the
//! uncompressed contents and the machine compresses the result again; the file hash the release
//! names still decides whether that worked.

use std::io::Read;

use flate2::Compression;
use flate2::write::DeflateEncoder;

/// Largest uncompressed content handled this way.
pub const MAX_RAW: usize = 64 << 20;

/// A gzip file taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gz {
    /// The header bytes, kept as they are (name, flags, time).
    pub header: Vec<u8>,
    /// The zlib level that reproduces the deflate stream.
    pub level: u8,
    pub raw: Vec<u8>,
}

/// The length of a gzip header (RFC 1952), if `data` starts with one.
fn header_len(data: &[u8]) -> Option<usize> {
    if data.len() < 18 || data[..3] != [0x1f, 0x8b, 8] {
        return None;
    }
    let flags = data[3];
    if flags & 0xe0 != 0 {
        return None;
    }
    let mut at = 10usize;
    if flags & 4 != 0 {
        let x = u16::from_le_bytes([*data.get(at)?, *data.get(at + 1)?]) as usize;
        at += 2 + x;
    }
    for bit in [8u8, 16] {
        if flags & bit != 0 {
            at += data.get(at..)?.iter().position(|b| *b == 0)? + 1;
        }
    }
    if flags & 2 != 0 {
        at += 2;
    }
    (at + 8 <= data.len()).then_some(at)
}

/// The uncompressed content of a one-member gzip file (no check of how it was compressed).
pub fn decompress(data: &[u8]) -> Option<Vec<u8>> {
    let h = header_len(data)?;
    let mut raw = Vec::new();
    flate2::read::DeflateDecoder::new(&data[h..data.len() - 8])
        .take(MAX_RAW as u64 + 1)
        .read_to_end(&mut raw)
        .ok()?;
    (raw.len() <= MAX_RAW).then_some(raw)
}

/// A gzip file from its parts.
pub fn compress(header: &[u8], level: u8, raw: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut out = header.to_vec();
    let mut enc = DeflateEncoder::new(out, Compression::new(u32::from(level.min(9))));
    enc.write_all(raw).expect("writing into a Vec");
    out = enc.finish().expect("writing into a Vec");
    let mut crc = flate2::Crc::new();
    crc.update(raw);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out
}

/// `data` taken apart, if it is a gzip file that zlib reproduces exactly.
pub fn open(data: &[u8]) -> Option<Gz> {
    let h = header_len(data)?;
    let raw = decompress(data)?;
    for level in [9u8, 6] {
        if compress(&data[..h], level, &raw) == data {
            return Some(Gz {
                header: data[..h].to_vec(),
                level,
                raw,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gzip_file_comes_apart_and_back_together() {
        let text = "a man page line\n".repeat(500);
        let file = compress(
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03",
            9,
            text.as_bytes(),
        );
        let gz = open(&file).unwrap();
        assert_eq!(gz.raw, text.as_bytes());
        assert_eq!(gz.level, 9);
        assert_eq!(compress(&gz.header, gz.level, &gz.raw), file);
        assert_eq!(decompress(&file).unwrap(), text.as_bytes());
        assert_eq!(open(b"not gzip at all, just some text"), None);
        assert_eq!(decompress(&file[..file.len() / 2]), None);
    }
}
