//! Fetching a release as a delta pack from the release this machine runs (docs/PROTOCOL.md,
//! "Delta packs"). The pack is downloaded into STATE/tmp/FROM-TO.pack.part; a broken download
//! resumes with a range request (`If-Range` with the pack's ETag, so a pack that changed is sent
//! whole). The pack is then applied: every tree and file it rebuilds is checked against the
//! release before it is stored. A pack that does not fit is dropped, and the objects still
//! missing are fetched one by one as without a pack.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use semithin_protocol::path::ApiPath;
use semithin_store::CommitId;

use crate::error::{Error, Result};
use crate::http::Counted;
use crate::{Agent, crash_point, short};

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

    /// Downloads (or finishes downloading) the pack at `path` into `part`.
    fn download_delta(&self, path: &ApiPath, part: &Path, etag_file: &Path) -> Result<bool> {
        let dir = part.parent().expect("a parent");
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        let etag = std::fs::read_to_string(etag_file).ok();
        let api = self.api();
        let mut rb = api
            .signed("GET", path, Vec::new())?
            .timeout(std::time::Duration::from_secs(1800));
        if have > 0
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
        let total = resp
            .content_length()
            .map(|l| l + if resumed { have } else { 0 });
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
            self.say(&format!("resuming the delta pack at byte {have}"));
        } else {
            f.set_len(0).map_err(Error::io("truncating", part))?;
        }
        let mut body = Counted {
            inner: resp,
            count: &api.received,
        };
        let mut buf = vec![0u8; 64 << 10];
        let mut written = if resumed { have } else { 0 };
        loop {
            let n = body.read(&mut buf).map_err(|e| Error::Server {
                url: format!("{}{path}", api.base()),
                reason: format!("reading the delta pack: {e}"),
            })?;
            if n == 0 {
                break;
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

    /// Fetches `to` as a delta from `from` (the running release). `Ok(false)`: no usable pack;
    /// the caller fetches objects. Network errors are errors (the next run resumes).
    pub(crate) fn fetch_delta(&mut self, path: &ApiPath, from: &str, to: &str) -> Result<bool> {
        let (part, etag) = self.delta_files(from, to);
        self.clear_other_deltas(&part);
        if !self.download_delta(path, &part, &etag)? {
            return Ok(false);
        }
        let f = std::fs::File::open(&part).map_err(Error::io("opening", &part))?;
        let start = std::time::Instant::now();
        let res = semithin_delta::apply::apply(&self.repo.objects, parse(from)?, parse(to)?, f);
        let secs = start.elapsed().as_secs_f64();
        let _ = std::fs::remove_file(&part);
        let _ = std::fs::remove_file(&etag);
        match res {
            Ok(a) => {
                self.say(&format!(
                    "applied the delta pack {} -> {} ({} bytes) in {secs:.2} s: {} trees and {} \
                     files rebuilt and verified",
                    short(from),
                    short(to),
                    a.pack_bytes,
                    a.trees,
                    a.files
                ));
                Ok(true)
            }
            Err(e) => {
                self.say(&format!(
                    "the delta pack was refused ({e}); fetching the objects instead"
                ));
                Ok(false)
            }
        }
    }
}
