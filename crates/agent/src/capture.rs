//! `semithin agent capture` and the capture job: the machine's writable layer as a tar.zst,
//! sent to the server (docs/PROTOCOL.md, "Captures"; docs/IMAGES.md, "Client changes baked
//! into layers").
//!
//! The archive holds the `/etc` overlay's upper directory as `etc/...`, as overlayfs keeps it:
//! a whiteout (a character device 0/0) stays one, an opaque directory keeps its
//! `trusted.overlay.opaque` or `user.overlay.opaque` xattr; overlayfs's other private xattrs
//! (`origin`, `impure`, ...) name inodes of this machine and are left out. An entry that
//! overlayfs keeps only as a reference to the layer below (a `metacopy` file, whose content is
//! below, or a `redirect` directory, renamed from below) cannot stand alone in a layer: it is
//! skipped and named. Then each extra path (`capture_paths`, `--path`, the job's), read below
//! the sysroot, with its parent directories. Regular files count against `capture_max_bytes`;
//! past it the capture stops with an error naming the path, and nothing is sent.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use semithin_protocol::capture::{self, CaptureInfo};
use semithin_protocol::path::ApiPath;
use semithin_protocol::sign::MachineKey;
use serde::Serialize;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::http::Api;
use crate::state::{Layout, State};

/// What goes into a capture.
pub struct Options<'a> {
    /// The `/etc` overlay's upper directory (absent: `/etc` has no local change).
    pub etc_upper: &'a Path,
    /// Where the extra paths are read from (the sysroot, or `/`).
    pub root: &'a Path,
    /// Extra absolute paths (checked with [`capture::check_path`]).
    pub paths: &'a [String],
    /// The most bytes of file content the capture may hold.
    pub max_bytes: u64,
}

/// What a capture holds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub entries: u64,
    /// Bytes of file content.
    pub bytes: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    /// Entries left out, each with the reason.
    pub skipped: Vec<String>,
}

/// A capture made and sent: what it held and how the server keeps it.
#[derive(Clone, Debug, Serialize)]
pub struct Sent {
    #[serde(flatten)]
    pub summary: Summary,
    pub capture: CaptureInfo,
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hash: blake3::Hasher,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The overlayfs xattr namespaces (`trusted.` for the kernel's, `user.` with `userxattr`).
const OVERLAY_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

/// What an overlayfs-private xattr means for the entry that has it.
enum OverlayXattr {
    /// Not overlayfs's: kept.
    Keep,
    /// `opaque`: kept (it is what the layer says).
    Opaque,
    /// Overlayfs's bookkeeping of this machine's inodes: left out.
    Drop,
    /// The entry only refers to the layer below: it cannot be captured (the reason).
    Refuse(&'static str),
}

fn overlay_xattr(name: &[u8]) -> OverlayXattr {
    let Some(rest) = OVERLAY_PREFIXES.iter().find_map(|p| name.strip_prefix(*p)) else {
        return OverlayXattr::Keep;
    };
    match rest {
        b"opaque" => OverlayXattr::Opaque,
        b"metacopy" => OverlayXattr::Refuse(
            "an overlayfs metacopy entry (its content is in the layer below): copy the file \
             up whole (e.g. rewrite it) or mount the overlay without metacopy",
        ),
        b"redirect" => OverlayXattr::Refuse(
            "an overlayfs redirect directory (renamed from the layer below): it cannot stand \
             alone in a layer; mount the overlay with redirect_dir=off",
        ),
        b"whiteout" => OverlayXattr::Refuse(
            "an overlayfs xattr whiteout (not a 0/0 character device): not supported",
        ),
        _ => OverlayXattr::Drop,
    }
}

struct Writer<W: Write> {
    tar: tar::Builder<W>,
    summary: Summary,
    max_bytes: u64,
}

impl<W: Write> Writer<W> {
    /// Adds `src` as `name` (and, for a directory, everything below it, depth first by an
    /// explicit stack, names sorted). `overlay`: read as an overlayfs upper directory.
    fn add_tree(&mut self, src: &Path, name: &[u8], overlay: bool) -> Result<()> {
        let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(src.to_owned(), name.to_owned())];
        while let Some((path, name)) = stack.pop() {
            let md = std::fs::symlink_metadata(&path).map_err(Error::io("reading", &path))?;
            if !self.add_entry(&path, &name, &md, overlay)? || !md.is_dir() {
                continue;
            }
            let mut children: Vec<_> = std::fs::read_dir(&path)
                .map_err(Error::io("reading", &path))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()
                .map_err(Error::io("reading", &path))?;
            children.sort();
            // reversed onto the stack, so they come off in order
            for c in children.into_iter().rev() {
                let mut n = name.clone();
                n.push(b'/');
                n.extend_from_slice(c.as_bytes());
                stack.push((path.join(&c), n));
            }
        }
        Ok(())
    }

    /// One entry; false when it was skipped (a directory's content is skipped with it).
    fn add_entry(
        &mut self,
        path: &Path,
        name: &[u8],
        md: &std::fs::Metadata,
        overlay: bool,
    ) -> Result<bool> {
        let shown = String::from_utf8_lossy(name).into_owned();
        let ft = md.file_type();
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let names = xattr::list(path).map_err(Error::io("listing the xattrs of", path))?;
        let mut opaque = false;
        for x in names {
            let xn = x.as_bytes().to_vec();
            if overlay {
                match overlay_xattr(&xn) {
                    OverlayXattr::Keep => {}
                    OverlayXattr::Opaque => opaque = true,
                    OverlayXattr::Drop => continue,
                    OverlayXattr::Refuse(why) => {
                        self.summary.skipped.push(format!("{shown}: {why}"));
                        return Ok(false);
                    }
                }
            }
            let Some(v) = xattr::get(path, &x).map_err(Error::io("reading the xattrs of", path))?
            else {
                continue;
            };
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(&xn);
            pax.push((key, v));
        }
        let mut h = tar::Header::new_gnu();
        let kind = if ft.is_dir() {
            tar::EntryType::Directory
        } else if ft.is_file() {
            tar::EntryType::Regular
        } else if ft.is_symlink() {
            tar::EntryType::Symlink
        } else if ft.is_char_device() {
            tar::EntryType::Char
        } else if ft.is_block_device() {
            tar::EntryType::Block
        } else if ft.is_fifo() {
            tar::EntryType::Fifo
        } else {
            self.summary
                .skipped
                .push(format!("{shown}: a socket cannot be kept in an image"));
            return Ok(false);
        };
        h.set_entry_type(kind);
        h.set_mode(md.mode() & 0o7777);
        h.set_uid(u64::from(md.uid()));
        h.set_gid(u64::from(md.gid()));
        h.set_mtime(u64::try_from(md.mtime()).unwrap_or(0));
        h.set_size(0);
        pax.push((
            b"mtime".to_vec(),
            format!("{}.{:09}", md.mtime(), md.mtime_nsec()).into_bytes(),
        ));
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            let (major, minor) = (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()));
            h.set_device_major(major)
                .and_then(|_| h.set_device_minor(minor))
                .map_err(Error::io("writing the capture entry of", path))?;
            if kind == tar::EntryType::Char && major == 0 && minor == 0 {
                self.summary.whiteouts += 1;
            }
        }
        if opaque && ft.is_dir() {
            self.summary.opaque_dirs += 1;
        }
        let fail = Error::io("writing the capture entry of", path);
        self.pax(&pax)
            .map_err(Error::io("writing the capture entry of", path))?;
        let rel = Path::new(std::ffi::OsStr::from_bytes(name));
        if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(Error::io("reading", path))?;
            self.tar.append_link(&mut h, rel, &target).map_err(fail)?;
        } else if ft.is_file() {
            let size = md.len();
            self.summary.bytes += size;
            if self.summary.bytes > self.max_bytes {
                return Err(Error::Config(format!(
                    "the capture holds more than the {} bytes of files it may (capture_max_bytes): \
                     {} bytes with {shown}; capture fewer paths, or raise capture_max_bytes \
                     (--max-bytes)",
                    self.max_bytes, self.summary.bytes
                )));
            }
            h.set_size(size);
            let f = File::open(path).map_err(Error::io("opening", path))?;
            // a file that changes size while it is read would break the archive: exactly `size`
            let body = Exact {
                inner: f.take(size),
                left: size,
            };
            self.tar.append_data(&mut h, rel, body).map_err(fail)?;
        } else {
            self.tar
                .append_data(&mut h, rel, io::empty())
                .map_err(fail)?;
        }
        self.summary.entries += 1;
        Ok(true)
    }

    /// A pax extended header with these records (length-prefixed, binary values allowed).
    fn pax(&mut self, records: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut data = Vec::new();
        for (k, v) in records {
            let rest = k.len() + v.len() + 3; // ' ', '=', '\n'
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            data.extend_from_slice(len.to_string().as_bytes());
            data.push(b' ');
            data.extend_from_slice(k);
            data.push(b'=');
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_path("PaxHeader")?;
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.tar.append(&h, &data[..])
    }
}

/// A reader that gives exactly `left` bytes: what the file holds, padded with zeros when it
/// shrank meanwhile.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let mut n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            buf[..want].fill(0);
            n = want;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Writes the capture as tar.zst into `out`; what it holds, the archive's BLAKE3 and length.
pub fn write(opts: &Options, out: impl Write) -> Result<(Summary, [u8; 32], u64)> {
    capture::check_paths(opts.paths).map_err(Error::Config)?;
    let hashing = Hashing {
        inner: out,
        hash: blake3::Hasher::new(),
        len: 0,
    };
    let zstd = zstd::Encoder::new(hashing, 9).map_err(Error::io("compressing", opts.etc_upper))?;
    let mut tar = tar::Builder::new(zstd);
    tar.mode(tar::HeaderMode::Complete);
    let mut w = Writer {
        tar,
        summary: Summary::default(),
        max_bytes: opts.max_bytes,
    };
    match std::fs::symlink_metadata(opts.etc_upper) {
        Ok(md) if md.is_dir() => w.add_tree(opts.etc_upper, b"etc", true)?,
        Ok(_) => {
            return Err(Error::Config(format!(
                "the /etc overlay's upper directory {} is not a directory",
                opts.etc_upper.display()
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => w.summary.skipped.push(format!(
            "etc: no overlay upper directory at {} (no local change to /etc)",
            opts.etc_upper.display()
        )),
        Err(e) => return Err(Error::io("reading", opts.etc_upper)(e)),
    }
    let mut parents_done: Vec<Vec<u8>> = Vec::new();
    let mut trees: Vec<&str> = Vec::new();
    for p in opts.paths {
        let rel = p.trim_matches('/');
        // a path below one captured whole is in the archive already
        if trees
            .iter()
            .any(|t| rel == *t || rel.strip_prefix(*t).is_some_and(|r| r.starts_with('/')))
        {
            continue;
        }
        trees.push(rel);
        let src = opts.root.join(rel);
        if std::fs::symlink_metadata(&src).is_err() {
            return Err(Error::Config(format!(
                "capture path {p}: {} does not exist",
                src.display()
            )));
        }
        // the parent directories, with their own metadata, once each
        let comps: Vec<&str> = rel.split('/').collect();
        for i in 1..comps.len() {
            let parent = comps[..i].join("/");
            if parents_done.contains(&parent.as_bytes().to_vec()) {
                continue;
            }
            let ps = opts.root.join(&parent);
            let md = std::fs::symlink_metadata(&ps).map_err(Error::io("reading", &ps))?;
            if !md.is_dir() {
                return Err(Error::Config(format!(
                    "capture path {p}: {} is not a directory",
                    ps.display()
                )));
            }
            w.add_entry(&ps, parent.as_bytes(), &md, false)?;
            parents_done.push(parent.into_bytes());
        }
        w.add_tree(&src, rel.as_bytes(), false)?;
        parents_done.push(rel.as_bytes().to_vec());
    }
    let zstd = w
        .tar
        .into_inner()
        .map_err(Error::io("writing the capture", opts.etc_upper))?;
    let mut hashing = zstd
        .finish()
        .map_err(Error::io("writing the capture", opts.etc_upper))?;
    hashing
        .flush()
        .map_err(Error::io("writing the capture", opts.etc_upper))?;
    Ok((w.summary, *hashing.hash.finalize().as_bytes(), hashing.len))
}

/// What a capture reads on this machine, from the agent's settings and the extra paths.
fn options<'a>(
    cfg: &'a Config,
    layout: &Layout,
    extra: &[String],
    upper: &'a mut PathBuf,
    paths: &'a mut Vec<String>,
) -> Options<'a> {
    *upper = cfg.etc_upper.clone().unwrap_or_else(|| layout.etc_upper());
    *paths = cfg
        .capture_paths
        .iter()
        .map(|p| p.display().to_string())
        .chain(extra.iter().cloned())
        .collect();
    paths.sort();
    paths.dedup();
    Options {
        etc_upper: upper,
        root: cfg.sysroot.as_deref().unwrap_or(Path::new("/")),
        paths,
        max_bytes: cfg.capture_max_bytes,
    }
}

/// Removes what captures killed on the way left in the state directory: `.capture-PID.tar.zst`
/// files whose process is gone (a capture running beside this one keeps its file).
fn remove_leftovers(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(".capture-"))
            .and_then(|n| n.strip_suffix(".tar.zst"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Makes the capture in a temporary file of the state directory and uploads it with `api`.
pub fn capture_with(api: &Api, layout: &Layout, cfg: &Config, extra: &[String]) -> Result<Sent> {
    remove_leftovers(&layout.dir);
    let (mut upper, mut paths) = (PathBuf::new(), Vec::new());
    let opts = options(cfg, layout, extra, &mut upper, &mut paths);
    let tmp = layout
        .dir
        .join(format!(".capture-{}.tar.zst", std::process::id()));
    let res = (|| {
        let f = File::create(&tmp).map_err(Error::io("creating", &tmp))?;
        let (summary, hash, len) = write(&opts, BufWriter::new(f))?;
        let f = File::open(&tmp).map_err(Error::io("opening", &tmp))?;
        let capture = api.upload_capture(f, len, hash)?;
        Ok(Sent { summary, capture })
    })();
    let _ = std::fs::remove_file(&tmp);
    res
}

/// `semithin agent capture`: works beside a running daemon (it takes no lock: it only reads
/// the state directory and signs with the machine's key, whose counters are times).
pub fn capture(dir: &Path, cfg: &Config, extra: &[String]) -> Result<Sent> {
    let layout = Layout::new(dir);
    let key_path = layout.key();
    if !key_path.exists() {
        return Err(Error::Config(format!(
            "{} holds no machine key: enroll this machine first (run the agent)",
            dir.display()
        )));
    }
    let key = MachineKey::load(&key_path)?;
    let state = State::load(&layout.state())?;
    let server = cfg.server.clone().or(state.server).ok_or_else(|| {
        Error::Config("no server URL: give --server (or `server` in the config)".into())
    })?;
    let api = Api::new(&server, key, cfg.ca.as_deref())?;
    capture_with(&api, &layout, cfg, extra)
}

/// The capture job: a capture made and sent with the agent's connection; a line for the job's
/// output, or the error as the admin reads it.
pub fn for_job(
    api: Option<&Api>,
    layout: &Layout,
    cfg: &Config,
    extra: &[String],
) -> std::result::Result<String, String> {
    let api = api.ok_or("not connected to the server")?;
    let sent = capture_with(api, layout, cfg, extra).map_err(|e| crate::error::render(&e))?;
    Ok(describe(&sent))
}

/// One paragraph for people: the capture's number, what it holds, what was left out.
pub fn describe(s: &Sent) -> String {
    let mut out = format!(
        "capture {} sent: {} entries, {} bytes of files, {} whiteouts, {} opaque directories \
         ({} bytes compressed)",
        s.capture.id,
        s.summary.entries,
        s.summary.bytes,
        s.summary.whiteouts,
        s.summary.opaque_dirs,
        s.capture.size
    );
    for k in &s.summary.skipped {
        out.push_str("\nskipped ");
        out.push_str(k);
    }
    out
}

/// The upload's path.
pub fn upload_path() -> ApiPath {
    ApiPath::new(capture::UPLOAD_PATH).expect("a valid path")
}

#[cfg(test)]
mod tests;
