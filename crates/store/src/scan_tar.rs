//! Reading a tar archive (plain, gzip or zstd) into an import.
//!
//! Every path is checked before it is placed: absolute paths, `..`, entries under a symlink and
//! hardlinks to anything but an earlier file of the same archive are refused with the entry named.
//! Nothing is written to disk but content-addressed objects, so a bad archive cannot escape.

use std::cell::Cell;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use tar::EntryType;

use crate::acl;
use crate::error::{Error, Result};
use crate::import::{Compression, Importer};
use crate::memtree::{self, Node};
use crate::object::{DeviceKind, EntryKind, Meta, Xattr};

/// Entries larger than this are streamed instead of buffered.
const STREAM_OVER: u64 = 16 << 20;

/// Counts what passes through and remembers whether the end of the stream was reached.
/// Errors of the decompressor are named as such.
struct Tracking<R> {
    inner: R,
    bytes: u64,
    hit_eof: Rc<Cell<bool>>,
    compression: Compression,
}

impl<R: Read> Read for Tracking<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).map_err(|e| match self.compression {
            Compression::None => e,
            c => io::Error::new(
                e.kind(),
                format!("the {c:?} stream is damaged or truncated ({e})"),
            ),
        })?;
        if n == 0 && !buf.is_empty() {
            self.hit_eof.set(true);
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Splits an archive path into checked components. Returns an empty list for the root itself.
pub fn split_path(raw: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path".into());
    }
    if raw.contains(&0) {
        return Err("path contains NUL".into());
    }
    let mut out = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("path contains ..".into()),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// A path as an error shows it: whole up to a few hundred bytes, else its start and end.
fn shorten(path: &[u8]) -> String {
    const KEEP: usize = 120;
    if path.len() <= 3 * KEEP {
        return String::from_utf8_lossy(path).into_owned();
    }
    format!(
        "{}...({} bytes)...{}",
        String::from_utf8_lossy(&path[..KEEP]),
        path.len(),
        String::from_utf8_lossy(&path[path.len() - KEEP..])
    )
}

/// Parses pax extended header records (`LEN KEY=VALUE\n`, LEN counting the whole record).
/// Values are binary (xattr values may hold newlines), so records are cut by their length, not
/// at newlines.
/// One pax record: key and value bytes.
pub type PaxRecord = (Vec<u8>, Vec<u8>);

pub fn parse_pax(mut data: &[u8]) -> std::result::Result<Vec<PaxRecord>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|b| *b == 0) {
            break;
        }
        let sp = data
            .iter()
            .position(|b| *b == b' ')
            .ok_or("pax record without a length")?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("pax record length is not a number")?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(format!("pax record length {len} does not fit the header"));
        }
        let rec = &data[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|b| *b == b'=')
            .ok_or("pax record without '='")?;
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

fn pax_mtime(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().ok()?;
    // A negative time with a fraction counts the fraction towards zero.
    if secs < 0 && nsec > 0 {
        Some((secs - 1, 1_000_000_000 - nsec))
    } else {
        Some((secs, nsec))
    }
}

pub fn scan(imp: &mut Importer, archive: &Path, compression: Compression) -> Result<()> {
    let bad = |reason: String| Error::BadArchive {
        archive: archive.to_owned(),
        reason,
    };
    let file = std::fs::File::open(archive).map_err(Error::io("opening", archive))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let file = BufReader::with_capacity(1 << 20, file);
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(file)
                .and_then(|mut d| {
                    d.window_log_max(31)?;
                    Ok(d)
                })
                .map_err(|e| bad(format!("zstd: {e}")))?,
        ),
    };
    imp.progress_phase(
        "storing",
        matches!(compression, Compression::None).then_some(size),
    );
    let hit_eof = Rc::new(Cell::new(false));
    let mut ar = tar::Archive::new(Tracking {
        inner: reader,
        bytes: 0,
        hit_eof: hit_eof.clone(),
        compression,
    });
    // Raw entries: pax and GNU long-name headers are read here, because tar-rs cuts pax
    // records at newlines and binary xattr values (ACLs, capabilities) can contain them.
    let entries = ar.entries().map_err(|e| bad(e.to_string()))?.raw(true);
    let mut pax: Vec<PaxRecord> = Vec::new();
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    // ACLs in text form wait for the image's own user and group databases.
    let mut text_acls: Vec<(Vec<Vec<u8>>, String, &'static str, String)> = Vec::new();
    let mut passwd: Vec<u8> = Vec::new();
    let mut group: Vec<u8> = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            if hit_eof.get() {
                bad(format!(
                    "truncated: the archive ends inside an entry header ({e})"
                ))
            } else {
                bad(format!("reading entry: {e}"))
            }
        })?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        let read_all = |entry: &mut tar::Entry<_>, what: &str| -> Result<Vec<u8>> {
            if entry.size() > 1 << 20 {
                return Err(bad(format!(
                    "{what} header of {} bytes is too large",
                    entry.size()
                )));
            }
            let mut v = Vec::new();
            entry
                .read_to_end(&mut v)
                .map_err(|e| bad(format!("reading {what} header: {e}")))?;
            if v.len() as u64 != entry.size() {
                return Err(bad(format!(
                    "truncated: the archive ends inside a {what} header ({} of {} bytes)",
                    v.len(),
                    entry.size()
                )));
            }
            Ok(v)
        };
        match kind {
            EntryType::XHeader => {
                let data = read_all(&mut entry, "pax")?;
                pax = parse_pax(&data).map_err(|r| bad(format!("pax header: {r}")))?;
                continue;
            }
            EntryType::XGlobalHeader => continue,
            EntryType::GNULongName => {
                let mut v = read_all(&mut entry, "long name")?;
                while v.last() == Some(&0) {
                    v.pop();
                }
                long_name = Some(v);
                continue;
            }
            EntryType::GNULongLink => {
                let mut v = read_all(&mut entry, "long link")?;
                while v.last() == Some(&0) {
                    v.pop();
                }
                long_link = Some(v);
                continue;
            }
            _ => {}
        }
        let records = std::mem::take(&mut pax);
        let pax_get = |k: &[u8]| {
            records
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let raw_path = pax_get(b"path")
            .or(long_name.take())
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let link_name = pax_get(b"linkpath")
            .or(long_link.take())
            .or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
        let shown = shorten(&raw_path);
        let bad_entry = |reason: String| bad(format!("entry {shown:?}: {reason}"));
        let rel = split_path(&raw_path).map_err(&bad_entry)?;
        let number = |k: &[u8], header_value: std::io::Result<u64>| -> Result<u64> {
            match pax_get(k) {
                Some(v) => std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| {
                        bad_entry(format!(
                            "pax {} is not a number",
                            String::from_utf8_lossy(k)
                        ))
                    }),
                None => header_value.map_err(|e| bad_entry(e.to_string())),
            }
        };
        if let Some(size) = pax_get(b"size")
            && std::str::from_utf8(&size)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                != Some(entry.size())
        {
            return Err(bad_entry(
                "pax size records larger than the header size are not supported".into(),
            ));
        }
        let uid = number(b"uid", header.uid())?;
        let gid = number(b"gid", header.gid())?;
        let mut meta = Meta {
            mode: header.mode().map_err(|e| bad_entry(e.to_string()))? & 0o7777,
            uid: u32::try_from(uid).map_err(|_| bad_entry(format!("uid {uid} out of range")))?,
            gid: u32::try_from(gid).map_err(|_| bad_entry(format!("gid {gid} out of range")))?,
            mtime: header.mtime().map_err(|e| bad_entry(e.to_string()))? as i64,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        };
        for (key, value) in &records {
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                meta.xattrs.push(Xattr {
                    name: name.to_vec(),
                    value: value.clone(),
                });
            } else if let Some(which) = key.strip_prefix(b"SCHILY.acl.") {
                let name = match which {
                    b"access" => "system.posix_acl_access",
                    b"default" => "system.posix_acl_default",
                    _ => continue,
                };
                let text = String::from_utf8(value.clone())
                    .map_err(|_| bad_entry("ACL text is not UTF-8".into()))?;
                text_acls.push((rel.clone(), shown.clone(), name, text));
            } else if key == b"mtime" {
                let (s, ns) = pax_mtime(value)
                    .ok_or_else(|| bad_entry("pax mtime is not a number".into()))?;
                meta.mtime = s;
                meta.mtime_nsec = ns;
            }
        }
        meta.xattrs.sort();
        meta.xattrs.dedup_by(|a, b| a.name == b.name);
        if rel.is_empty() {
            if kind.is_dir() {
                imp.set_root_meta(meta);
                continue;
            }
            return Err(bad_entry("the archive root is not a directory".into()));
        }
        let node = match kind {
            EntryType::Regular | EntryType::Continuous => {
                imp.counts.files += 1;
                let size = entry.size();
                // A tar entry reader stops quietly where the archive ends: a short read is a
                // truncated archive, never a shorter file.
                let short = |got: u64| {
                    bad_entry(format!(
                        "truncated: the archive ends inside this file ({got} of {size} bytes)"
                    ))
                };
                let content = if size > STREAM_OVER {
                    let mut counted = Tracking {
                        inner: &mut entry,
                        bytes: 0,
                        hit_eof: Rc::default(),
                        compression: Compression::None,
                    };
                    let content = imp.add_stream(&mut counted, archive)?;
                    if counted.bytes != size {
                        return Err(short(counted.bytes));
                    }
                    content
                } else {
                    let mut data = Vec::with_capacity(size as usize);
                    entry
                        .read_to_end(&mut data)
                        .map_err(|e| bad_entry(format!("reading content: {e}")))?;
                    if data.len() as u64 != size {
                        return Err(short(data.len() as u64));
                    }
                    if rel == [b"etc".to_vec(), b"passwd".to_vec()] {
                        passwd = data.clone();
                    } else if rel == [b"etc".to_vec(), b"group".to_vec()] {
                        group = data.clone();
                    }
                    imp.add_bytes(data)?
                };
                Node::PendingFile { meta, content }
            }
            EntryType::Directory => {
                imp.counts.dirs += 1;
                Node::empty_dir(meta)
            }
            EntryType::Symlink => {
                imp.counts.symlinks += 1;
                let target = link_name
                    .clone()
                    .ok_or_else(|| bad_entry("symlink without a target".into()))?;
                Node::Done {
                    meta,
                    kind: EntryKind::Symlink(target),
                }
            }
            EntryType::Link => {
                let target = link_name
                    .clone()
                    .ok_or_else(|| bad_entry("hardlink without a target".into()))?;
                let target_shown = shorten(&target);
                let target_rel = split_path(&target)
                    .map_err(|r| bad_entry(format!("hardlink target {target_shown:?}: {r}")))?;
                let Some(Node::PendingFile { meta, content }) =
                    memtree::lookup(&imp.root, &target_rel)
                else {
                    return Err(bad_entry(format!(
                        "hardlink to {target_shown:?}, which is not a file earlier in this archive"
                    )));
                };
                let node = Node::PendingFile {
                    meta: meta.clone(),
                    content: *content,
                };
                imp.counts.files += 1;
                imp.links
                    .entry(target_rel.join(&b'/'))
                    .or_default()
                    .push(rel.join(&b'/'));
                node
            }
            EntryType::Char | EntryType::Block => {
                imp.counts.others += 1;
                let major = header
                    .device_major()
                    .map_err(|e| bad_entry(e.to_string()))?;
                let minor = header
                    .device_minor()
                    .map_err(|e| bad_entry(e.to_string()))?;
                Node::Done {
                    meta,
                    kind: EntryKind::Device {
                        kind: if kind == EntryType::Char {
                            DeviceKind::Char
                        } else {
                            DeviceKind::Block
                        },
                        major: major.unwrap_or(0),
                        minor: minor.unwrap_or(0),
                    },
                }
            }
            EntryType::Fifo => {
                imp.counts.others += 1;
                Node::Done {
                    meta,
                    kind: EntryKind::Fifo,
                }
            }
            other => return Err(bad_entry(format!("unsupported entry type {other:?}"))),
        };
        memtree::place(&mut imp.root, &rel, node).map_err(|e| bad_entry(e.to_string()))?;
    }
    for (rel, shown, name, text) in text_acls {
        let user = |n: &str| acl::lookup_id(&passwd, n);
        let grp = |n: &str| acl::lookup_id(&group, n);
        let value = acl::text_to_xattr(&text, &user, &grp)
            .map_err(|r| bad(format!("entry {shown:?}: {r}")))?;
        let mut paths = vec![rel.clone()];
        if let Some(others) = imp.links.get(&rel.join(&b'/')) {
            paths.extend(
                others
                    .iter()
                    .map(|p| p.split(|b| *b == b'/').map(<[u8]>::to_vec).collect()),
            );
        }
        for path in paths {
            let Some(meta) = memtree::meta_mut(&mut imp.root, &path) else {
                continue;
            };
            // A binary xattr of the same ACL, if the archive has both, wins.
            if !meta.xattrs.iter().any(|x| x.name == name.as_bytes()) {
                meta.xattrs.push(Xattr {
                    name: name.as_bytes().to_vec(),
                    value: value.clone(),
                });
                meta.xattrs.sort();
            }
        }
    }
    let mut tracking = ar.into_inner();
    if tracking.hit_eof.get() {
        return Err(bad(
            "truncated: the archive ends without its end-of-archive marker".into(),
        ));
    }
    // Read what follows the end marker, so a damaged compressed stream is noticed.
    io::copy(&mut tracking, &mut io::sink())
        .map_err(|e| bad(format!("after the last entry: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            split_path(b"./a//b/").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert!(split_path(b"./").unwrap().is_empty());
        assert!(split_path(b"/etc/passwd").is_err());
        assert!(split_path(b"a/../../x").is_err());
    }

    #[test]
    fn pax_records_may_hold_newlines() {
        let value = b"a\nb";
        let rec = format!("{} SCHILY.xattr.user.x=", 2 + 1 + 19 + 1 + 3 + 1);
        let mut data = rec.into_bytes();
        data.extend_from_slice(value);
        data.push(b'\n');
        data.extend_from_slice(b"12 mtime=12\n");
        let r = parse_pax(&data).unwrap();
        assert_eq!(r[0], (b"SCHILY.xattr.user.x".to_vec(), value.to_vec()));
        assert_eq!(r[1], (b"mtime".to_vec(), b"12".to_vec()));
        assert!(parse_pax(b"99 x=y\n").is_err());
        assert!(parse_pax(b"zz x=y\n").is_err());
    }

    #[test]
    fn a_file_cut_short_is_a_truncated_archive() {
        use crate::import::{CommitOptions, commit};
        use crate::repo::{Access, Config, Repo};
        let d = tempfile::tempdir().unwrap();
        let repo_path = d.path().join("repo");
        Repo::init(&repo_path, Config::default()).unwrap();
        let repo = Repo::open(&repo_path, Access::Write).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3000);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, "a", &[7u8; 3000][..]).unwrap();
        let full = b.into_inner().unwrap();
        let opts = CommitOptions {
            channel: "c",
            message: "",
            time: None,
        };
        for (cut, got) in [(512 + 1000, 1000), (512, 0)] {
            let archive = d.path().join(format!("cut-{cut}.tar"));
            std::fs::write(&archive, &full[..cut]).unwrap();
            let e = commit(&repo, &archive, &opts, &crate::NoProgress)
                .err()
                .unwrap()
                .to_string();
            assert!(
                e.contains(&format!(
                    "entry \"a\": truncated: the archive ends inside this file ({got} of 3000 bytes)"
                )),
                "{e}"
            );
        }
    }

    /// Commits a tar archive of the entries `add` appends; the error, if any.
    fn commit_tar(add: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Option<String> {
        use crate::import::{CommitOptions, commit};
        use crate::repo::{Access, Config, Repo};
        let d = tempfile::tempdir().unwrap();
        let repo_path = d.path().join("repo");
        Repo::init(&repo_path, Config::default()).unwrap();
        let repo = Repo::open(&repo_path, Access::Write).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        add(&mut b);
        let archive = d.path().join("a.tar");
        std::fs::write(&archive, b.into_inner().unwrap()).unwrap();
        let opts = CommitOptions {
            channel: "c",
            message: "",
            time: Some(0),
        };
        let r = commit(&repo, &archive, &opts, &crate::NoProgress);
        let head = crate::channel::head(&repo, "c").unwrap();
        assert_eq!(head.is_some(), r.is_ok());
        r.err().map(|e| e.to_string())
    }

    fn header(kind: EntryType) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str) {
        b.append_data(&mut header(EntryType::Regular), path, &[][..])
            .unwrap();
    }

    /// Regression: a path 12,000 directories deep overflowed the stack, and names over 255
    /// bytes, paths over 4,096 and such symlink targets were committed though no checkout could
    /// make them.
    #[test]
    fn names_paths_and_targets_no_checkout_could_make_are_refused() {
        let e = commit_tar(|b| file(b, &format!("d/{}", "n".repeat(256)))).unwrap();
        assert!(
            e.contains(&format!("entry \"d/{}\"", "n".repeat(256)))
                && e.contains("is 256 bytes long, over the 255 a file name may have"),
            "{e}"
        );
        let deep = "a/".repeat(12_000) + "f";
        let e = commit_tar(|b| file(b, &deep)).unwrap();
        assert!(
            e.contains(&format!("entry \"{}...(24001 bytes)...", "a/".repeat(60)))
                && e.contains("the path is 24001 bytes long, over the 4094 a path may have"),
            "{e}"
        );
        let e = commit_tar(|b| {
            let mut h = header(EntryType::Symlink);
            b.append_link(&mut h, "l", "t".repeat(5000)).unwrap();
        })
        .unwrap();
        assert!(
            e.contains("entry \"l\": the symlink target is 5000 bytes long"),
            "{e}"
        );
        // At the limits: 4094 bytes, names of 255.
        let name = "n".repeat(255);
        let at_limit = format!(
            "{}{}",
            format!("{name}/").repeat(15),
            "x".repeat(4094 - 15 * 256)
        );
        assert_eq!(at_limit.len(), 4094);
        assert_eq!(commit_tar(|b| file(b, &at_limit)), None);
        let e = commit_tar(|b| file(b, &format!("{at_limit}x"))).unwrap();
        assert!(e.contains("the path is 4095 bytes long"), "{e}");
    }

    #[test]
    fn pax_mtimes() {
        assert_eq!(
            pax_mtime(b"1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(pax_mtime(b"12"), Some((12, 0)));
        assert_eq!(pax_mtime(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(pax_mtime(b"x"), None);
    }
}
