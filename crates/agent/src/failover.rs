//! Fail-over between the machine's upstreams (docs/RELAY.md): `server` may name several URLs
//! (relays first, the root last, say), tried in order. The agent stays with the first that
//! works; when one is unreachable, answers 5xx, or serves data that does not verify (an object
//! or a delta pack against its content address, TUF metadata), it is recorded as bad, reported
//! in the next check-in through the next upstream (`bad_upstreams`), and the next one is used.
//! The preferred (first) one is tried again after [`RETRY_PREFERRED`].

use std::time::{Duration, Instant};

use semithin_protocol::api::{BadUpstream, MAX_BAD_UPSTREAMS};

use crate::error::Error;

/// How long the agent stays on a later upstream before it tries the first again.
pub const RETRY_PREFERRED: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
pub struct Failover {
    servers: Vec<String>,
    /// The servers of the machine's configuration: always tried after a placement's relays.
    configured: Vec<String>,
    current: usize,
    since: Option<Instant>,
    bad: Vec<BadUpstream>,
    /// Switches since one worked: a round through all of them is not retried at once.
    switches: usize,
}

/// The URLs of a `server` setting: one URL, or several separated by commas or white space.
pub fn split(list: &str) -> Vec<String> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('/').to_owned())
        .collect()
}

/// Why `e` blames the upstream that served it, if it does: unreachable or 5xx, or data that
/// did not verify.
pub fn blames(e: &Error) -> Option<String> {
    match e {
        Error::Server { .. } | Error::Refused { .. } if e.is_transient() => Some(e.to_string()),
        Error::Store(semithin_store::Error::Corrupt { .. })
        | Error::Store(semithin_store::Error::Tool { .. })
        | Error::Trust(_) => Some(crate::error::render(e)),
        _ => None,
    }
}

impl Failover {
    pub fn new(servers: Vec<String>) -> Self {
        Self {
            configured: servers.clone(),
            servers,
            ..Self::default()
        }
    }

    /// The relays the server placed the machine under first, then the configured servers (each
    /// once); true when the upstream in use changed.
    pub fn place(&mut self, placed: &[String]) -> bool {
        let mut list: Vec<String> = placed
            .iter()
            .map(|u| u.trim_end_matches('/').to_owned())
            .filter(|u| crate::neterr::check_url(u).is_ok())
            .collect();
        for c in &self.configured {
            if !list.contains(c) {
                list.push(c.clone());
            }
        }
        if list == self.servers {
            return false;
        }
        let was = self.current().map(str::to_owned);
        self.servers = list;
        self.current = 0;
        self.since = None;
        self.switches = 0;
        was.as_deref() != self.current()
    }

    pub fn current(&self) -> Option<&str> {
        self.servers.get(self.current).map(String::as_str)
    }

    /// Records the current upstream as bad and moves to the next; false when there is no other
    /// or every one failed in a row (the caller backs off).
    pub fn fail(&mut self, reason: &str) -> bool {
        let Some(url) = self.current().map(str::to_owned) else {
            return false;
        };
        self.note(&url, reason);
        if self.servers.len() < 2 {
            return false;
        }
        self.current = (self.current + 1) % self.servers.len();
        self.since = Some(Instant::now());
        self.switches += 1;
        self.switches < self.servers.len()
    }

    /// Records `url` as bad without moving.
    pub fn note(&mut self, url: &str, reason: &str) {
        let mut reason = reason.to_owned();
        if reason.len() > 1024 {
            let mut end = 1024;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        if self.bad.len() >= MAX_BAD_UPSTREAMS {
            self.bad.remove(0);
        }
        self.bad.push(BadUpstream {
            url: url.to_owned(),
            reason,
        });
    }

    /// A cycle went well.
    pub fn worked(&mut self) {
        self.switches = 0;
    }

    /// Back to the preferred upstream once [`RETRY_PREFERRED`] passed on another; true when it
    /// moved.
    pub fn back_to_preferred(&mut self) -> bool {
        if self.current != 0 && self.since.is_some_and(|t| t.elapsed() >= RETRY_PREFERRED) {
            self.current = 0;
            self.since = None;
            return true;
        }
        false
    }

    /// What the next check-in reports.
    pub fn pending(&self) -> Vec<BadUpstream> {
        self.bad.clone()
    }

    /// The first `n` were reported.
    pub fn reported(&mut self, n: usize) {
        self.bad.drain(..n.min(self.bad.len()));
    }
}

impl crate::Agent {
    /// When `e` blames the upstream in use ([`blames`]), records it and moves to the next
    /// one; true when the next cycle should run at once on another upstream.
    pub(crate) fn upstream_failed(&mut self, e: &Error) -> bool {
        let Some(reason) = blames(e) else {
            return false;
        };
        self.leave_upstream(&reason).unwrap_or(false)
    }

    /// Records the upstream in use as bad for `reason` and connects to the next one, if any;
    /// true when it may be tried at once (not a whole round of failures).
    pub(crate) fn leave_upstream(&mut self, reason: &str) -> crate::Result<bool> {
        let from = self.failover.current().map(str::to_owned);
        let retry_now = self.failover.fail(reason);
        if self.failover.current().map(str::to_owned) != from {
            self.connect()?;
            self.say(&format!(
                "upstream {} failed ({reason}): using {} now",
                from.unwrap_or_default(),
                self.api().base()
            ));
        }
        Ok(retry_now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_on_reports_and_stops_after_a_round() {
        let mut f = Failover::new(split("http://relay-a:1, http://root:2/"));
        assert_eq!(f.current(), Some("http://relay-a:1"));
        assert!(f.fail("connection refused"));
        assert_eq!(f.current(), Some("http://root:2"));
        assert!(!f.fail("503"), "a round through both: back off");
        f.worked();
        let p = f.pending();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].url, "http://relay-a:1");
        f.reported(2);
        assert!(f.pending().is_empty());
        assert!(!f.back_to_preferred(), "not before the delay");
    }

    #[test]
    fn a_placement_goes_first_and_the_configured_servers_stay() {
        let mut f = Failover::new(split("http://root:2"));
        assert!(f.place(&["http://relay-b:3/".to_owned(), "bad url".to_owned()]));
        assert_eq!(f.current(), Some("http://relay-b:3"));
        assert!(!f.place(&["http://relay-b:3".to_owned()]), "unchanged");
        assert!(f.fail("refused"));
        assert_eq!(f.current(), Some("http://root:2"));
        f.place(&[]);
        assert_eq!(
            f.current(),
            Some("http://root:2"),
            "the configured servers only"
        );
    }

    #[test]
    fn one_server_never_moves() {
        let mut f = Failover::new(split("http://root:2"));
        assert!(!f.fail("down"));
        assert_eq!(f.current(), Some("http://root:2"));
    }
}
