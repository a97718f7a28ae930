//! Fetching a release as a delta pack from the release this machine runs (docs/PROTOCOL.md,
//! "Delta packs"). The pack is downloaded into STATE/tmp/FROM-TO.pack.part; a broken download
//! resumes with a range request (`If-Range` with the pack's ETag, so a pack that changed is sent
//! whole). The pack is then applied: every tree and file it rebuilds is checked against the
//! release before it is stored. A pack that does not fit is dropped, and the objects still
//! missing are fetched one by one as without a pack.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use semithin_delta::listing::NOTHING;
use semithin_protocol::path::ApiPath;
use semithin_store::CommitId;

use crate::error::{Error, Result};
use crate::http::{Api, Counted};
use crate::{Agent, crash_point, short};

/// The largest delta pack downloaded, whatever a server announces: larger than any release a
/// machine should get as one pack; anything past it is refused.
pub const MAX_DELTA_BYTES: u64 = 16 << 30;

fn parse(release: &str) -> Result<CommitId> {
    release.parse().map_err(|_| Error::Release {
        release: release.to_owned(),
        reason: "not a commit id".into(),
    })
}

impl Agent {
    fn delta_files(&self, from: &str, to: &str) -> (PathBuf, PathBuf) {
        let dir = self.layout.dir.join("tmp");
        let part = dir.join(format!("{from}-{to}.pack.part"));
        let etag = dir.join(format!("{from}-{to}.pack.etag"));
        (part, etag)
    }

    /// Forgets downloads of other packs (an earlier update that went another way).
    fn clear_other_deltas(&self, keep: &Path) {
        let dir = self.layout.dir.join("tmp");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return;
        };
        let stem = keep.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let stem = stem.trim_end_matches(".part");
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if (n.ends_with(".pack.part") || n.ends_with(".pack.etag")) && !n.starts_with(stem) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Fetches `to` as a delta from `from` (the running release). `Ok(false)`: no usable pack;
    /// the caller fetches objects. Network errors are errors (the next run resumes).
    pub(crate) fn fetch_delta(&mut self, path: &ApiPath, from: &str, to: &str) -> Result<bool> {
        let (part, etag) = self.delta_files(from, to);
        self.clear_other_deltas(&part);
        let announced = self
            .answer
            .as_ref()
            .and_then(|a| a.desired.as_ref())
            .and_then(|d| d.delta_size);
        // with `torrent = true`, the site's machines first (crate::swarm); HTTP at once when not
        let swarm = if self.cfg.torrent {
            self.swarm_delta(from, to, announced)
                .map_err(|e| {
                    self.say(&format!(
                        "the delta pack over HTTP: not from the swarm ({e})"
                    ))
                })
                .ok()
        } else {
            None
        };
        if let Some(s) = swarm {
            let applied = self.apply_delta(&s.path, from, to, false)?;
            self.swarm_done(s, applied);
            return Ok(applied);
        }
        let got = download(self.api(), path, &part, &etag, announced, |m| self.say(m));
        if got.is_err() {
            // a pack that cannot be stored whole (a full disk, a server sending too much) is
            // not kept to fill the disk: the next try starts again
            if !matches!(&got, Err(e) if e.is_transient()) {
                let _ = std::fs::remove_file(&part);
                let _ = std::fs::remove_file(&etag);
            }
        }
        if !got? {
            return Ok(false);
        }
        let applied = self.apply_delta(&part, from, to, true);
        let _ = std::fs::remove_file(&part);
        let _ = std::fs::remove_file(&etag);
        applied
    }

    /// A first install with `torrent = true`: the full-release pack of `to` from the swarm,
    /// applied like a delta pack from no release. `false` when it could not be had or was
    /// refused: the objects then come over HTTP as without the swarm.
    pub(crate) fn fetch_full(&mut self, to: &str) -> Result<bool> {
        let s = match self.swarm_full(to) {
            Ok(s) => s,
            Err(e) => {
                self.say(&format!(
                    "the release's objects over HTTP: not from the swarm ({e})"
                ));
                return Ok(false);
            }
        };
        let applied = self.apply_delta(&s.path, &NOTHING.to_hex(), to, false)?;
        self.swarm_done(s, applied);
        Ok(applied)
    }

    /// Applies the pack in `part`; `Ok(false)` when it was refused. A refused pack that came
    /// from the upstream (`from_upstream`, not the swarm) is reported against it.
    fn apply_delta(
        &mut self,
        part: &Path,
        from: &str,
        to: &str,
        from_upstream: bool,
    ) -> Result<bool> {
        let f = std::fs::File::open(part).map_err(Error::io("opening", part))?;
        let start = std::time::Instant::now();
        let res = semithin_delta::apply::apply(&self.repo.objects, parse(from)?, parse(to)?, f);
        let secs = start.elapsed().as_secs_f64();
        match res {
            Ok(a) => {
                let what = if from == NOTHING.to_hex() {
                    format!("the full-release pack of {}", short(to))
                } else {
                    format!("the delta pack {} -> {}", short(from), short(to))
                };
                self.say(&format!(
                    "applied {what} ({} bytes) in {secs:.2} s: {} trees and {} files rebuilt and \
                     verified",
                    a.pack_bytes, a.trees, a.files
                ));
                Ok(true)
            }
            Err(e) => {
                self.say(&format!(
                    "the delta pack was refused ({e}); fetching the objects instead"
                ));
                // The upstream that served it is reported, and left when there is another.
                if from_upstream {
                    let reason = format!(
                        "the delta pack {} -> {} did not verify: {e}",
                        short(from),
                        short(to)
                    );
                    self.leave_upstream(&reason)?;
                }
                Ok(false)
            }
        }
    }
}

/// Downloads (or finishes downloading) the pack at `path` into `part`: no more than
/// `announced` bytes (the size the check-in answer gave) when it is known, no more than the
/// response's own length, never more than [`MAX_DELTA_BYTES`]. `Ok(false)`: the server has no
/// pack for this pair.
pub(crate) fn download(
    api: &Api,
    path: &ApiPath,
    part: &Path,
    etag_file: &Path,
    announced: Option<u64>,
    say: impl Fn(&str),
) -> Result<bool> {
    let dir = part.parent().expect("a parent");
    std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let etag = std::fs::read_to_string(etag_file).ok();
    let too_much = |reason: String| Error::Server {
        url: format!("{}{path}", api.base()),
        reason,
    };
    let cap = announced.unwrap_or(MAX_DELTA_BYTES).min(MAX_DELTA_BYTES);
    let mut rb = api
        .signed("GET", path, Vec::new())?
        .timeout(std::time::Duration::from_secs(1800));
    if have > 0
        && have < cap
        && let Some(t) = &etag
    {
        rb = rb
            .header("range", format!("bytes={have}-"))
            .header("if-range", t.trim());
    }
    let resp = match api.send("the delta pack", path, rb) {
        Ok(r) => r,
        // no pack for this pair: fetch objects
        Err(Error::Refused { status: 404, .. }) => return Ok(false),
        Err(e) => return Err(e),
    };
    let resumed = resp.status().as_u16() == 206;
    let already = if resumed { have } else { 0 };
    let total = resp.content_length().map(|l| l.saturating_add(already));
    let drop_part = || {
        let _ = std::fs::remove_file(part);
        let _ = std::fs::remove_file(etag_file);
    };
    if let Some(t) = total
        && t > cap
    {
        drop_part();
        return Err(too_much(format!(
            "the delta pack has {t} bytes, more than the {cap} announced"
        )));
    }
    let limit = total.unwrap_or(cap);
    if let Some(t) = resp.headers().get("etag").and_then(|v| v.to_str().ok()) {
        std::fs::write(etag_file, t).map_err(Error::io("writing", etag_file))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(part)
        .map_err(Error::io("opening", part))?;
    if resumed {
        f.seek(std::io::SeekFrom::End(0))
            .map_err(Error::io("seeking in", part))?;
        say(&format!("resuming the delta pack at byte {have}"));
    } else {
        f.set_len(0).map_err(Error::io("truncating", part))?;
    }
    let mut body = Counted {
        inner: resp,
        count: &api.received,
    }
    // one byte past the limit tells a server that sends too much
    .take(limit - already + 1);
    let mut buf = vec![0u8; 64 << 10];
    let mut written = already;
    loop {
        let n = body.read(&mut buf).map_err(|e| Error::Server {
            url: format!("{}{path}", api.base()),
            reason: format!("reading the delta pack: {e}"),
        })?;
        if n == 0 {
            break;
        }
        if written + n as u64 > limit {
            drop(f);
            drop_part();
            return Err(too_much(format!(
                "the server sent more than the {limit} bytes of the delta pack it announced"
            )));
        }
        f.write_all(&buf[..n]).map_err(Error::io("writing", part))?;
        written += n as u64;
        if total.is_some_and(|t| written * 2 >= t) {
            f.flush().map_err(Error::io("writing", part))?;
            crash_point("delta");
        }
    }
    if let Some(t) = total
        && written != t
    {
        return Err(Error::Server {
            url: format!("{}{path}", api.base()),
            reason: format!("the delta pack ended after {written} of {t} bytes"),
        });
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    /// A server on loopback that answers one request with `head` and then `body`.
    fn answer_once(head: String, body: Vec<u8>) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        std::thread::spawn(move || {
            let (c, _) = l.accept().unwrap();
            let mut r = std::io::BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let mut c = c;
            let _ = c.write_all(head.as_bytes());
            let _ = c.write_all(&body);
        });
        url
    }

    fn chunked(n: usize) -> (String, Vec<u8>) {
        let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_owned();
        let mut body = format!("{n:x}\r\n").into_bytes();
        body.extend(std::iter::repeat_n(b'x', n));
        body.extend_from_slice(b"\r\n0\r\n\r\n");
        (head, body)
    }

    fn get(
        url: &str,
        announced: Option<u64>,
    ) -> (Result<bool>, std::path::PathBuf, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let key = semithin_protocol::sign::MachineKey::generate().unwrap();
        let api = Api::new(url, key, None).unwrap();
        let part = dir.path().join("tmp/a-b.pack.part");
        let etag = dir.path().join("tmp/a-b.pack.etag");
        let path = ApiPath::new("/api/v1/deltas/a/b").unwrap();
        let r = download(&api, &path, &part, &etag, announced, |_| {});
        (r, part, dir)
    }

    #[test]
    fn a_server_sending_more_than_it_announced_is_cut_off_and_nothing_is_kept() {
        // a stream with no length of its own, longer than the check-in answer announced
        let (head, body) = chunked(300_000);
        let (r, part, _d) = get(&answer_once(head, body), Some(1000));
        let e = r.unwrap_err().to_string();
        assert!(e.contains("more than the 1000 bytes"), "{e}");
        assert!(!part.exists(), "nothing of it is kept");
        // a length over the announced size is refused before anything is read
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n".to_owned();
        let (r, part, _d) = get(&answer_once(head, vec![b'y'; 5000]), Some(1000));
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("5000 bytes, more than the 1000 announced"),
            "{e}"
        );
        assert!(!part.exists());
        // exactly what was announced is taken
        let (head, body) = chunked(1000);
        let (r, part, _d) = get(&answer_once(head, body), Some(1000));
        assert!(r.unwrap());
        assert_eq!(std::fs::metadata(&part).unwrap().len(), 1000);
    }
}
