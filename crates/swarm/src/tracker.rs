//! The tracker's pure parts (BEP 3 announces, BEP 23 compact answers): the query read from its
//! raw text (the info hash is 20 binary bytes percent-encoded), the peers of each torrent in
//! memory, bounded and expiring. The server's route checks the passkey and calls this.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::bencode::{Value, failure};

/// Seconds between a peer's announces that the tracker asks for, and the least.
pub const INTERVAL: Duration = Duration::from_secs(60);
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);

/// The least interval asked of a peer still downloading, with `leechers` downloading: a peer
/// learns of the peers that finished (and can send it everything) only at its next announce,
/// and clients (librqbit among them) announce again after `min interval`. One second per ten
/// leechers, from 1 to [`MIN_INTERVAL`]: 20 machines updating ask 2 each second; 1,000 ask 100.
pub fn leecher_interval(leechers: usize) -> Duration {
    Duration::from_secs((leechers as u64 / 10).clamp(1, MIN_INTERVAL.as_secs()))
}
/// A peer not heard from for this long is forgotten.
pub const EXPIRE: Duration = Duration::from_secs(180);
/// The most peers one answer lists, and the most one torrent keeps.
pub const MAX_NUMWANT: usize = 50;
pub const MAX_PEERS: usize = 5000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    None,
    Started,
    Completed,
    Stopped,
}

/// One announce as the client sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announce {
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub event: Event,
    pub compact: bool,
    pub numwant: usize,
}

/// Percent-decodes one query value into bytes (`+` is a space).
fn unescape(v: &str) -> Result<Vec<u8>, String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| "a bad percent escape".to_owned())?;
                out.push(h);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

impl Announce {
    /// Reads an announce's query string (without the `?`). The error is the failure reason
    /// the client is told.
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut fields: HashMap<&str, Vec<u8>> = HashMap::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            if fields.len() > 32 {
                return Err("too many parameters".into());
            }
            let v = unescape(v).map_err(|e| format!("{k}: {e}"))?;
            fields.insert(k, v);
        }
        let twenty = |k: &str| -> Result<[u8; 20], String> {
            let v = fields.get(k).ok_or_else(|| format!("{k} is missing"))?;
            v.as_slice()
                .try_into()
                .map_err(|_| format!("{k} must be 20 bytes, not {}", v.len()))
        };
        let text = |k: &str| {
            fields
                .get(k)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let number = |k: &str, required: bool| -> Result<Option<u64>, String> {
            match text(k) {
                None if required => Err(format!("{k} is missing")),
                None => Ok(None),
                Some(t) => t
                    .parse::<u64>()
                    .map(Some)
                    .map_err(|_| format!("{k} is not a number: {t:?}")),
            }
        };
        let info_hash = twenty("info_hash")?;
        let peer_id = twenty("peer_id")?;
        let port = number("port", true)?.expect("required");
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port {port} is not a port"))?;
        let event = match text("event").as_deref() {
            None | Some("") | Some("empty") => Event::None,
            Some("started") => Event::Started,
            Some("completed") => Event::Completed,
            Some("stopped") => Event::Stopped,
            Some(o) => return Err(format!("event {o:?} is not started, completed or stopped")),
        };
        Ok(Self {
            info_hash,
            peer_id,
            port,
            uploaded: number("uploaded", false)?.unwrap_or(0),
            downloaded: number("downloaded", false)?.unwrap_or(0),
            left: number("left", false)?.unwrap_or(0),
            event,
            compact: text("compact").as_deref() != Some("0"),
            numwant: number("numwant", false)?
                .map_or(MAX_NUMWANT, |n| n.min(MAX_NUMWANT as u64) as usize),
        })
    }
}

struct Peer {
    addr: SocketAddr,
    /// Who the passkey named (a machine id, or the server's own seeder).
    owner: String,
    left: u64,
    uploaded: u64,
    seen: Instant,
}

/// One torrent's peers.
#[derive(Default)]
struct Peers {
    peers: HashMap<[u8; 20], Peer>,
    /// The downloading peers the seeder that does not announce (the server's) was given to.
    fed: Vec<[u8; 20]>,
}

/// The peers of the torrents the tracker knows, in memory.
pub struct Tracker {
    torrents: HashMap<[u8; 20], Peers>,
    /// Answers given, to rotate which peers a long list starts with.
    turn: usize,
    /// The most downloading peers the server's seeder is given to at a time, while no peer
    /// has the whole file: they take the pack from the server, the rest from them.
    pub feeds: usize,
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            torrents: HashMap::new(),
            turn: 0,
            feeds: 2,
        }
    }
}

/// How a torrent stands, as the tracker sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwarmCount {
    pub seeders: usize,
    pub leechers: usize,
}

impl Tracker {
    /// Makes a torrent known: announces for other info hashes are refused.
    pub fn register(&mut self, info_hash: [u8; 20]) {
        self.torrents.entry(info_hash).or_default();
    }

    pub fn forget(&mut self, info_hash: &[u8; 20]) {
        self.torrents.remove(info_hash);
    }

    pub fn knows(&self, info_hash: &[u8; 20]) -> bool {
        self.torrents.contains_key(info_hash)
    }

    /// Records an announce from `ip` by `owner` and answers it (bencoded, a failure reason
    /// for a torrent it does not know). `seed`: a seeder that does not announce (the server's
    /// own), listed first to at most [`Tracker::feeds`] peers still downloading at a time, and
    /// only while no other peer has the whole file (so the server sends a pack about `feeds`
    /// times, whatever the number of peers).
    pub fn announce(
        &mut self,
        owner: &str,
        ip: IpAddr,
        a: &Announce,
        seed: Option<SocketAddr>,
        now: Instant,
    ) -> Vec<u8> {
        let turn = self.turn;
        self.turn = self.turn.wrapping_add(1);
        let feeds = self.feeds;
        let Some(torrent) = self.torrents.get_mut(&a.info_hash) else {
            return failure("unknown torrent: this tracker serves only the server's torrents");
        };
        let peers = &mut torrent.peers;
        peers.retain(|_, p| now.duration_since(p.seen) < EXPIRE);
        if a.event == Event::Stopped {
            peers.remove(&a.peer_id);
        } else {
            if !peers.contains_key(&a.peer_id) && peers.len() >= MAX_PEERS {
                // the least recently heard from makes room
                if let Some(old) = peers.iter().min_by_key(|(_, p)| p.seen).map(|(k, _)| *k) {
                    peers.remove(&old);
                }
            }
            peers.insert(
                a.peer_id,
                Peer {
                    addr: SocketAddr::new(ip, a.port),
                    owner: owner.to_owned(),
                    left: a.left,
                    uploaded: a.uploaded,
                    seen: now,
                },
            );
        }
        // the peers fed by the server's seeder: those still downloading keep their place
        torrent
            .fed
            .retain(|id| peers.get(id).is_some_and(|p| p.left > 0));
        let seeded = peers.values().any(|p| p.left == 0);
        let fed = &mut torrent.fed;
        let feed = a.left > 0
            && a.event != Event::Stopped
            && (fed.contains(&a.peer_id)
                || (!seeded && fed.len() < feeds && {
                    fed.push(a.peer_id);
                    true
                }));
        let count = count(peers);
        let mut others: Vec<&Peer> = peers
            .iter()
            .filter(|(id, p)| **id != a.peer_id && p.addr != SocketAddr::new(ip, a.port))
            // a seed needs only leechers
            .filter(|(_, p)| a.left > 0 || p.left > 0)
            .map(|(_, p)| p)
            .collect();
        others.sort_by_key(|p| p.addr);
        if !others.is_empty() {
            let k = turn % others.len();
            others.rotate_left(k);
        }
        others.truncate(a.numwant);
        let seed = seed.filter(|_| feed).map(|addr| Peer {
            addr,
            owner: String::new(),
            left: 0,
            uploaded: 0,
            seen: now,
        });
        let others: Vec<&Peer> = seed.iter().chain(others).collect();
        let peers = if a.compact {
            let mut v4 = Vec::new();
            let mut v6 = Vec::new();
            for p in &others {
                match p.addr {
                    SocketAddr::V4(s) => {
                        v4.extend_from_slice(&s.ip().octets());
                        v4.extend_from_slice(&s.port().to_be_bytes());
                    }
                    SocketAddr::V6(s) => {
                        v6.extend_from_slice(&s.ip().octets());
                        v6.extend_from_slice(&s.port().to_be_bytes());
                    }
                }
            }
            (Value::Bytes(v4), Some(Value::Bytes(v6)))
        } else {
            let list = others
                .iter()
                .map(|p| {
                    Value::dict([
                        ("ip", Value::str(&p.addr.ip().to_string())),
                        ("port", Value::Int(i64::from(p.addr.port()))),
                    ])
                })
                .collect();
            (Value::List(list), None)
        };
        let mut answer = Value::dict([
            ("interval", Value::Int(INTERVAL.as_secs() as i64)),
            (
                "min interval",
                Value::Int(if a.left > 0 {
                    leecher_interval(count.leechers).as_secs() as i64
                } else {
                    MIN_INTERVAL.as_secs() as i64
                }),
            ),
            ("complete", Value::Int(count.seeders as i64)),
            ("incomplete", Value::Int(count.leechers as i64)),
            ("peers", peers.0),
        ]);
        if let (Some(v6), Value::Dict(m)) = (peers.1, &mut answer)
            && v6.as_bytes().is_some_and(|b| !b.is_empty())
        {
            m.insert(b"peers6".to_vec(), v6);
        }
        answer.encode()
    }

    pub fn count(&self, info_hash: &[u8; 20]) -> SwarmCount {
        self.torrents
            .get(info_hash)
            .map(|t| count(&t.peers))
            .unwrap_or_default()
    }

    /// What peers of `owner` last reported as uploaded for a torrent, summed.
    pub fn uploaded_by(&self, info_hash: &[u8; 20], owner: &str) -> u64 {
        self.torrents
            .get(info_hash)
            .into_iter()
            .flat_map(|t| t.peers.values())
            .filter(|p| p.owner == owner)
            .map(|p| p.uploaded)
            .sum()
    }
}

fn count(peers: &HashMap<[u8; 20], Peer>) -> SwarmCount {
    let seeders = peers.values().filter(|p| p.left == 0).count();
    SwarmCount {
        seeders,
        leechers: peers.len() - seeders,
    }
}

/// Percent-encodes bytes for a query (what a client sends as `info_hash`).
pub fn escape(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(b) {
                (*b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bencode::decode;

    fn query(hash: [u8; 20], id: u8, port: u16, left: u64) -> String {
        format!(
            "info_hash={}&peer_id={}&port={port}&uploaded=5&downloaded=0&left={left}&compact=1&event=started",
            escape(&hash),
            escape(&[id; 20])
        )
    }

    #[test]
    fn announces_list_other_peers_compactly() {
        let h = [0xabu8; 20];
        let mut t = Tracker::default();
        let now = Instant::now();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = Announce::parse(&query(h, 1, 7000, 0)).unwrap();
        assert_eq!(a.info_hash, h);
        let unknown = t.announce("server", ip, &a, None, now);
        assert!(String::from_utf8_lossy(&unknown).contains("failure reason"));
        t.register(h);
        let first = t.announce("server", ip, &a, None, now);
        let (v, _) = decode(&first).unwrap();
        assert_eq!(v.get("peers").unwrap().as_bytes().unwrap(), b"");
        let b = Announce::parse(&query(h, 2, 7001, 100)).unwrap();
        let second = t.announce("m1", ip, &b, None, now);
        let (v, _) = decode(&second).unwrap();
        assert_eq!(
            v.get("peers").unwrap().as_bytes().unwrap(),
            &[127, 0, 0, 1, 0x1b, 0x58]
        );
        assert_eq!(v.get("complete").unwrap().as_int(), Some(1));
        assert_eq!(v.get("incomplete").unwrap().as_int(), Some(1));
        assert_eq!(t.uploaded_by(&h, "server"), 5);
        // the dictionary model, asked for with compact=0
        let mut d = b.clone();
        d.compact = false;
        let (v, _) = decode(&t.announce("m1", ip, &d, None, now)).unwrap();
        let Some(Value::List(l)) = v.get("peers") else {
            panic!("{v:?}")
        };
        assert_eq!(l[0].get("port").and_then(Value::as_int), Some(7000));
        assert_eq!(
            l[0].get("ip").and_then(Value::as_bytes),
            Some(&b"127.0.0.1"[..])
        );
        // expired peers are gone
        let later = now + EXPIRE + Duration::from_secs(1);
        let c = Announce::parse(&query(h, 3, 7002, 100)).unwrap();
        let (v, _) = decode(&t.announce("m2", ip, &c, None, later)).unwrap();
        assert_eq!(v.get("peers").unwrap().as_bytes().unwrap(), b"");
        // stopped removes
        let mut s = c.clone();
        s.event = Event::Stopped;
        t.announce("m2", ip, &s, None, later);
        assert_eq!(t.count(&h), SwarmCount::default());
    }

    #[test]
    fn the_servers_seeder_is_given_to_a_few_downloaders_until_a_peer_has_it_all() {
        let h = [1u8; 20];
        let mut t = Tracker {
            feeds: 2,
            ..Default::default()
        };
        t.register(h);
        let now = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let server: SocketAddr = "10.0.0.9:7000".parse().unwrap();
        let gets_server = |t: &mut Tracker, id: u8, left: u64| {
            let a = Announce::parse(&query(h, id, 8000 + u16::from(id), left)).unwrap();
            let (v, _) = decode(&t.announce("m", ip, &a, Some(server), now)).unwrap();
            let peers = v.get("peers").unwrap().as_bytes().unwrap().to_vec();
            peers.chunks(6).any(|c| c == [10, 0, 0, 9, 0x1b, 0x58])
        };
        assert!(gets_server(&mut t, 1, 100));
        assert!(gets_server(&mut t, 2, 100));
        assert!(!gets_server(&mut t, 3, 100), "two are fed at a time");
        assert!(gets_server(&mut t, 1, 50), "a fed peer keeps its place");
        // peer 1 has it all: nobody new is fed (they take it from peer 1)
        assert!(!gets_server(&mut t, 1, 0));
        assert!(!gets_server(&mut t, 4, 100));
        assert!(gets_server(&mut t, 2, 10), "still downloading, still fed");
    }

    #[test]
    fn downloaders_are_asked_back_sooner_the_fewer_they_are() {
        assert_eq!(leecher_interval(0), Duration::from_secs(1));
        assert_eq!(leecher_interval(20), Duration::from_secs(2));
        assert_eq!(leecher_interval(1000), MIN_INTERVAL);
        let h = [2u8; 20];
        let mut t = Tracker::default();
        t.register(h);
        let now = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let min = |t: &mut Tracker, id: u8, left: u64| {
            let a = Announce::parse(&query(h, id, 9000 + u16::from(id), left)).unwrap();
            let (v, _) = decode(&t.announce("m", ip, &a, None, now)).unwrap();
            v.get("min interval").and_then(Value::as_int).unwrap()
        };
        for id in 1..=25 {
            min(&mut t, id, 100);
        }
        assert_eq!(min(&mut t, 26, 100), 2, "26 downloading");
        assert_eq!(min(&mut t, 27, 0), 10, "a seed is asked back as usual");
    }

    #[test]
    fn bad_queries_are_named() {
        let h = escape(&[1u8; 20]);
        for (q, want) in [
            ("".to_owned(), "info_hash is missing"),
            (
                format!("info_hash=abc&peer_id={h}&port=1"),
                "info_hash must be 20 bytes, not 3",
            ),
            (format!("info_hash={h}&port=1"), "peer_id is missing"),
            (format!("info_hash={h}&peer_id={h}"), "port is missing"),
            (
                format!("info_hash={h}&peer_id={h}&port=70000"),
                "port 70000 is not a port",
            ),
            (
                format!("info_hash={h}&peer_id={h}&port=x"),
                "port is not a number",
            ),
            (
                format!("info_hash=%zz&peer_id={h}&port=1"),
                "info_hash: a bad percent escape",
            ),
            (
                format!("info_hash={h}&peer_id={h}&port=1&event=x"),
                "event \"x\"",
            ),
        ] {
            let e = Announce::parse(&q).unwrap_err();
            assert!(e.contains(want), "{q}: {e}");
        }
        let ok = Announce::parse(&format!("info_hash={h}&peer_id={h}&port=1&numwant=999")).unwrap();
        assert_eq!(ok.numwant, MAX_NUMWANT);
        assert!(ok.compact);
    }
}
