//! Failed attempts per source address: after [`MAX_FAILURES`] within [`WINDOW_SECS`], the address
//! is refused for [`WINDOW_SECS`] (enrollment tokens cannot be guessed at network speed). `now`
//! is passed in; at most [`MAX_ADDRESSES`] addresses are remembered. IPv6 addresses count by
//! their /64 (one host usually holds a whole /64 and could rotate through it).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use axum::http::HeaderMap;

pub const MAX_FAILURES: u32 = 10;

/// The address a request comes from: the peer's, or, when the peer is one of the reverse
/// proxies in `trusted` (`--trusted-proxy`), the one its `X-Forwarded-For` names, read from the
/// right and past other trusted proxies. A header from anyone else is ignored (it would let a
/// client name any address it likes), as is a malformed one.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let mut hops: Vec<&str> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let Ok(v) = v.to_str() else { return peer };
        hops.extend(v.split(',').map(str::trim));
    }
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => continue,
            Ok(ip) => return ip,
            Err(_) => return peer,
        }
    }
    peer
}
pub const WINDOW_SECS: i64 = 60;
pub const MAX_ADDRESSES: usize = 10_000;

#[derive(Clone, Copy, Debug)]
struct Record {
    failures: u32,
    /// Start of the window the failures count in.
    since: i64,
    /// Refused until then, once over the limit.
    blocked_until: Option<i64>,
}

#[derive(Default)]
pub struct Throttle {
    by_addr: Mutex<HashMap<IpAddr, Record>>,
}

/// What a failure did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failed {
    /// Counted: this many in the current window.
    Counted(u32),
    /// The limit is reached: the address is refused from now on, for [`WINDOW_SECS`].
    Blocked,
}

/// The key an address counts under: itself for IPv4, its /64 for IPv6.
fn key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

impl Throttle {
    /// `Err(seconds)`: the address is refused for that long still.
    pub fn check(&self, addr: IpAddr, now: i64) -> Result<(), i64> {
        let addr = key(addr);
        let map = self.by_addr.lock().expect("lock");
        match map.get(&addr).and_then(|r| r.blocked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Notes a failure of `addr` at `now`.
    pub fn failed(&self, addr: IpAddr, now: i64) -> Failed {
        let addr = key(addr);
        let mut map = self.by_addr.lock().expect("lock");
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&addr) {
            map.retain(|_, r| {
                r.since + WINDOW_SECS > now || r.blocked_until.is_some_and(|u| u > now)
            });
            if map.len() >= MAX_ADDRESSES
                && let Some(oldest) = map.iter().min_by_key(|(_, r)| r.since).map(|(a, _)| *a)
            {
                map.remove(&oldest);
            }
        }
        let r = map.entry(addr).or_insert(Record {
            failures: 0,
            since: now,
            blocked_until: None,
        });
        let expired = r.since + WINDOW_SECS <= now && r.blocked_until.is_none_or(|u| u <= now);
        if expired {
            *r = Record {
                failures: 0,
                since: now,
                blocked_until: None,
            };
        }
        r.failures += 1;
        if r.failures >= MAX_FAILURES {
            r.blocked_until = Some(now + WINDOW_SECS);
            return Failed::Blocked;
        }
        Failed::Counted(r.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_taken_from_x_forwarded_for_only_behind_a_trusted_proxy() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let proxy = ip("10.0.0.1");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.0.0.2".parse().unwrap());
        // from anyone else, the header is not believed
        assert_eq!(
            client_ip(ip("198.51.100.1"), &h, &[proxy]),
            ip("198.51.100.1")
        );
        // from the proxy: the rightmost hop that is not a trusted proxy
        assert_eq!(client_ip(proxy, &h, &[proxy]), ip("10.0.0.2"));
        assert_eq!(
            client_ip(proxy, &h, &[proxy, ip("10.0.0.2")]),
            ip("203.0.113.9")
        );
        // several header lines count as one list
        h.append("x-forwarded-for", "2001:db8::1".parse().unwrap());
        assert_eq!(client_ip(proxy, &h, &[proxy]), ip("2001:db8::1"));
        // malformed, or nothing but proxies: the proxy itself
        let mut bad = HeaderMap::new();
        bad.insert("x-forwarded-for", "203.0.113.9, nonsense".parse().unwrap());
        assert_eq!(client_ip(proxy, &bad, &[proxy]), proxy);
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &[proxy]), proxy);
    }

    #[test]
    fn an_address_is_refused_after_its_failures_for_a_while_and_others_are_not() {
        let t = Throttle::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let now = 1000;
        for i in 1..MAX_FAILURES {
            assert_eq!(t.failed(a, now), Failed::Counted(i));
            assert_eq!(t.check(a, now), Ok(()));
        }
        assert_eq!(t.failed(a, now + 1), Failed::Blocked);
        assert_eq!(t.check(a, now + 1), Err(WINDOW_SECS));
        assert_eq!(t.check(a, now + 30), Err(WINDOW_SECS - 29));
        assert_eq!(t.check(b, now + 30), Ok(()));
        // after the block, a fresh window
        let later = now + 1 + WINDOW_SECS;
        assert_eq!(t.check(a, later), Ok(()));
        assert_eq!(t.failed(a, later), Failed::Counted(1));
        // failures spread wider than the window never block
        for i in 0..3 * MAX_FAILURES {
            let r = t.failed(b, 10_000 + i64::from(i) * WINDOW_SECS / 5);
            assert_ne!(r, Failed::Blocked, "failure {i}");
        }
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let t = Throttle::default();
        for i in 0..MAX_FAILURES {
            let a: IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap();
            t.failed(a, 0);
        }
        let same: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(t.check(same, 1).is_err());
        assert_eq!(t.check(other, 1), Ok(()));
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        assert_eq!(key(mapped), "192.0.2.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_addresses_remembered_are_bounded() {
        let t = Throttle::default();
        for i in 0..(MAX_ADDRESSES as u32 + 100) {
            t.failed(IpAddr::from(i.to_be_bytes()), 5);
        }
        assert!(t.by_addr.lock().unwrap().len() <= MAX_ADDRESSES);
    }
}
