//! Delta packs and full-release packs (first installs) from the site's machines
//! (docs/TORRENT.md), with `torrent = true`: the server's private torrent of the pack (a
//! signed GET), fetched through the [`Swarm`] trait into STATE/swarm/, then seeded for
//! `torrent_seed_secs` or until `torrent_seed_ratio`. Anything that goes wrong — no torrent, a
//! swarm with no whole copy (the server's `x-semithin-swarm-complete: 0`), no peer sending
//! within `torrent_patience_secs`, a torrent whose file is not the pack announced — leaves the
//! pack to HTTP. The swarm is transport only: the pack is applied like one from HTTP, every
//! object checked.
//!
//! The client lives as long as the agent process (seeding goes on between cycles) and is made
//! on first use.

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use semithin_protocol::path::ApiPath;
use semithin_protocol::torrent::SWARM_COMPLETE;
use semithin_swarm::rqbit::{Options, Rqbit};
use semithin_swarm::{SeedUntil, Swarm, Torrent};

use crate::{Agent, short};

/// The largest torrent file read: 16 GiB in 4 MiB pieces is 80 KiB of piece hashes.
const MAX_TORRENT_BYTES: u64 = 1 << 20;

fn client() -> &'static Mutex<Option<Arc<Rqbit>>> {
    static C: OnceLock<Mutex<Option<Arc<Rqbit>>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

/// Whether the certificates in `ca` are in the file SSL_CERT_FILE names (which the BitTorrent
/// client's HTTPS trusts instead of the system's roots).
fn trusted_by_env(ca: &std::path::Path) -> bool {
    let Some(file) = std::env::var_os("SSL_CERT_FILE") else {
        return false;
    };
    match (std::fs::read_to_string(file), std::fs::read_to_string(ca)) {
        (Ok(bundle), Ok(ca)) => !ca.trim().is_empty() && bundle.contains(ca.trim()),
        _ => false,
    }
}

/// What this process's BitTorrent client exchanged with peers, once it has started.
pub(crate) fn totals() -> Option<semithin_protocol::api::SwarmBytes> {
    let c = client().lock().expect("lock").clone()?;
    let t = c.totals();
    Some(semithin_protocol::api::SwarmBytes {
        received: t.received,
        sent: t.sent,
    })
}

/// A pack the swarm delivered, to apply and then seed.
pub(crate) struct FromSwarm {
    pub path: PathBuf,
    torrent: Torrent,
    swarm: Arc<Rqbit>,
}

impl Agent {
    fn swarm(&self) -> Result<Arc<Rqbit>, String> {
        let mut c = client().lock().expect("lock");
        if let Some(s) = &*c {
            return Ok(s.clone());
        }
        let s = Rqbit::start(Options {
            dir: self.layout.dir.join("swarm"),
            port: self.cfg.torrent_port,
            ..Default::default()
        })
        .map_err(|e| format!("starting the BitTorrent client: {e}"))?;
        let s = Arc::new(s);
        self.say(&format!(
            "sharing delta packs with peers on port {}",
            s.port()
        ));
        // the BitTorrent client announces with its own HTTPS client, which trusts the system's
        // roots or SSL_CERT_FILE, never `ca` (docs/TORRENT.md, "Ports and firewalls")
        if let Some(ca) = &self.cfg.ca
            && !trusted_by_env(ca)
            && self
                .cfg
                .server
                .as_deref()
                .is_some_and(|u| u.contains("https:"))
        {
            self.say(&format!(
                "warning: announces to an HTTPS tracker will not trust {} unless the agent runs \
                 with SSL_CERT_FILE={} in its environment; without, packs come over HTTP",
                ca.display(),
                ca.display()
            ));
        }
        *c = Some(s.clone());
        Ok(s)
    }

    /// The pack from `from` to `to` through the swarm, or why not (the caller uses HTTP).
    pub(crate) fn swarm_delta(
        &self,
        from: &str,
        to: &str,
        announced: Option<u64>,
    ) -> Result<FromSwarm, String> {
        let got = self.swarm_pack(
            &format!("/api/v1/torrents/delta/{from}/{to}"),
            &format!("{from}-{to}.pack"),
            announced,
        )?;
        self.say(&format!(
            "fetched the delta pack {} -> {} from the swarm: {} bytes from peers in {:.2} s",
            short(from),
            short(to),
            got.1.bytes,
            got.1.secs
        ));
        Ok(got.0)
    }

    /// The full-release pack of `to` (every object of it, for a first install) through the
    /// swarm, or why not (the caller fetches objects over HTTP).
    pub(crate) fn swarm_full(&self, to: &str) -> Result<FromSwarm, String> {
        let got = self.swarm_pack(
            &format!("/api/v1/torrents/full/{to}"),
            &format!("{}-{to}.pack", semithin_delta::listing::NOTHING.to_hex()),
            None,
        )?;
        self.say(&format!(
            "fetched the full-release pack of {} from the swarm: {} bytes from peers in {:.2} s",
            short(to),
            got.1.bytes,
            got.1.secs
        ));
        Ok(got.0)
    }

    /// The private torrent at `path` (a signed GET), checked to be of the file `name` (and of
    /// `announced` bytes), fetched from the swarm.
    fn swarm_pack(
        &self,
        path: &str,
        name: &str,
        announced: Option<u64>,
    ) -> Result<(FromSwarm, semithin_swarm::Fetched), String> {
        let path = ApiPath::new(path.to_owned()).map_err(|e| e.to_string())?;
        let api = self.api();
        let rb = api
            .signed("GET", &path, Vec::new())
            .map_err(|e| e.to_string())?;
        let resp = api
            .send("the pack's torrent", &path, rb)
            .map_err(|e| e.to_string())?;
        let complete = resp
            .headers()
            .get(SWARM_COMPLETE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut bytes = Vec::new();
        resp.take(MAX_TORRENT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading the torrent: {e}"))?;
        if bytes.len() as u64 > MAX_TORRENT_BYTES {
            return Err(format!(
                "the torrent is larger than {MAX_TORRENT_BYTES} bytes"
            ));
        }
        let torrent = Torrent::parse(bytes).map_err(|e| e.to_string())?;
        if torrent.meta.name != name || !torrent.meta.private {
            return Err(format!(
                "the torrent is of {:?}, not of the private {name}",
                torrent.meta.name
            ));
        }
        if let Some(n) = announced
            && torrent.meta.length != n
        {
            return Err(format!(
                "the torrent's file has {} bytes, the pack announced {n}",
                torrent.meta.length
            ));
        }
        if torrent.meta.length > crate::delta::MAX_DELTA_BYTES {
            return Err("the torrent's file is larger than any pack taken".into());
        }
        // nobody holds all of it (the server does not seed, no peer finished): HTTP at once
        if complete == Some(0) {
            return Err("no peer has all of it and the server does not seed it".into());
        }
        let swarm = self.swarm()?;
        let dir = self.layout.dir.join("swarm");
        let patience = Duration::from_secs(self.cfg.torrent_patience_secs.max(1));
        let got = swarm
            .fetch(&torrent, &dir, patience, Duration::from_secs(1800))
            .map_err(|e| e.to_string())?;
        let len = std::fs::metadata(&got.path).map(|m| m.len()).unwrap_or(0);
        if len != torrent.meta.length {
            swarm.stop(&torrent.info_hash, true);
            return Err(format!(
                "the swarm's file has {len} bytes, not {}",
                torrent.meta.length
            ));
        }
        Ok((
            FromSwarm {
                path: got.path.clone(),
                torrent,
                swarm,
            },
            got,
        ))
    }

    /// After the pack was applied (`ok`): seed it as configured, then remove it; a pack that
    /// was refused is removed now.
    pub(crate) fn swarm_done(&self, f: FromSwarm, ok: bool) {
        if !ok || self.cfg.torrent_seed_secs == 0 {
            f.swarm.stop(&f.torrent.info_hash, true);
            return;
        }
        let until = SeedUntil {
            time: Some(Duration::from_secs(self.cfg.torrent_seed_secs)),
            ratio: (self.cfg.torrent_seed_ratio > 0.0).then_some(self.cfg.torrent_seed_ratio),
        };
        if let Err(e) = f.swarm.seed(&f.torrent, &f.path, until, true) {
            self.say(&format!("not seeding the delta pack: {e}"));
            f.swarm.stop(&f.torrent.info_hash, true);
        }
    }
}
