//! Signed requests: how a machine proves who it is on every request after enrollment.
//!
//! A machine holds an ed25519 key it made itself; the server learns the public half at
//! enrollment. Each request carries four headers:
//!
//! - `semithin-machine`: the machine id, the first 16 bytes of BLAKE3(public key) in hex;
//! - `semithin-date`: the request time in Unix seconds;
//! - `semithin-counter`: the request's counter, strictly increasing per machine: the request
//!   time in microseconds, raised when needed to stay above the one before (so its seconds are
//!   the date);
//! - `semithin-signature`: hex ed25519 over [`signing_input`]: a fixed context, the method, the
//!   path with its query, the date, the counter and BLAKE3 of the body.
//!
//! The server accepts a date within [`MAX_SKEW`] of its own clock, and each counter once: one
//! above every counter it accepted from the machine, or one of the last few below the highest
//! that it has not seen (requests sent at once may arrive out of order). Signing the body's hash
//! binds the report to the request; signing the path binds it to the endpoint; the counter
//! makes every request usable once, so a captured request cannot be replayed at all.
//! Signed requests (rather than client certificates) keep working through relays and
//! TLS-terminating proxies and need no certificate authority on the server.

use std::path::Path;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::{Error, Result};

pub const HEADER_MACHINE: &str = "semithin-machine";
pub const HEADER_DATE: &str = "semithin-date";
pub const HEADER_COUNTER: &str = "semithin-counter";
pub const HEADER_SIGNATURE: &str = "semithin-signature";

/// How far a request's date may be from the server's clock, in seconds.
pub const MAX_SKEW: i64 = 300;

/// Counter units per second of the date: a counter is the request time in microseconds.
pub const COUNTER_PER_SECOND: u64 = 1_000_000;

const CONTEXT: &[u8] = b"semithin-request-v2";

/// The machine id of a public key.
pub fn machine_id(public: &[u8; 32]) -> String {
    hex::encode(&blake3::hash(public).as_bytes()[..16])
}

/// The bytes a request signature covers.
pub fn signing_input(
    method: &str,
    path_and_query: &str,
    date: i64,
    counter: u64,
    body: &[u8],
) -> Vec<u8> {
    signing_input_hashed(
        method,
        path_and_query,
        date,
        counter,
        blake3::hash(body).as_bytes(),
    )
}

/// [`signing_input`] of a body known by its BLAKE3 hash (a large upload, hashed as it is
/// written or read).
pub fn signing_input_hashed(
    method: &str,
    path_and_query: &str,
    date: i64,
    counter: u64,
    body_hash: &[u8; 32],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(CONTEXT.len() + path_and_query.len() + 96);
    for part in [
        CONTEXT,
        method.as_bytes(),
        path_and_query.as_bytes(),
        date.to_string().as_bytes(),
        counter.to_string().as_bytes(),
    ] {
        out.extend_from_slice(part);
        out.push(0);
    }
    out.extend_from_slice(body_hash);
    out
}

/// A machine's own key.
pub struct MachineKey {
    key: SigningKey,
}

/// Shows the machine id only, never the secret.
impl std::fmt::Debug for MachineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MachineKey({})", self.id())
    }
}

impl MachineKey {
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Key {
            path: "(new)".into(),
            reason: format!("no randomness: {e}"),
        })?;
        Ok(Self::from_seed(seed))
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Loads a key file: the 32-byte seed in hex, one line.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Key {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let seed: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("not a 32-byte hex seed".into()))?;
        Ok(Self::from_seed(seed))
    }

    /// The key file's text.
    pub fn file_text(&self) -> String {
        format!("{}\n", hex::encode(self.key.to_bytes()))
    }

    pub fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn id(&self) -> String {
        machine_id(&self.public())
    }

    /// The four headers of a signed request with this counter (its date is the counter's
    /// seconds: [`date_of`]). Each counter may be used once ([`Counter`] makes them).
    pub fn sign(
        &self,
        method: &str,
        path_and_query: &str,
        counter: u64,
        body: &[u8],
    ) -> [(&'static str, String); 4] {
        self.sign_hashed(
            method,
            path_and_query,
            counter,
            blake3::hash(body).as_bytes(),
        )
    }

    /// [`MachineKey::sign`] for a body known by its BLAKE3 hash.
    pub fn sign_hashed(
        &self,
        method: &str,
        path_and_query: &str,
        counter: u64,
        body_hash: &[u8; 32],
    ) -> [(&'static str, String); 4] {
        let date = date_of(counter);
        let sig = self.key.sign(&signing_input_hashed(
            method,
            path_and_query,
            date,
            counter,
            body_hash,
        ));
        [
            (HEADER_MACHINE, self.id()),
            (HEADER_DATE, date.to_string()),
            (HEADER_COUNTER, counter.to_string()),
            (HEADER_SIGNATURE, hex::encode(sig.to_bytes())),
        ]
    }
}

/// The date (Unix seconds) of a counter.
pub fn date_of(counter: u64) -> i64 {
    i64::try_from(counter / COUNTER_PER_SECOND).unwrap_or(i64::MAX)
}

/// The counter of every request this process signs, whatever the client: an agent that also
/// relays signs with one key from two clients (its own and the relay's), and no two of their
/// requests may share a counter.
pub static PROCESS_COUNTER: Counter = Counter::new();

/// A machine's source of request counters: the time in microseconds, but always above the last
/// one it gave (a clock that steps back does not repeat a counter). Shared by every request of
/// a client, also when they are sent from several threads at once.
#[derive(Debug, Default)]
pub struct Counter(std::sync::atomic::AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(std::sync::atomic::AtomicU64::new(0))
    }

    /// The next counter at `now_micros`.
    pub fn next(&self, now_micros: u64) -> u64 {
        use std::sync::atomic::Ordering;
        let mut prev = self.0.load(Ordering::Relaxed);
        loop {
            let next = now_micros.max(prev.saturating_add(1));
            match self
                .0
                .compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }

    /// The next counter at the system's time.
    pub fn next_now(&self) -> u64 {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.next(micros)
    }
}

/// A machine's public key, decoded once (a server keeps it for every request of the machine).
#[derive(Clone, Copy, Debug)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn from_bytes(public: &[u8; 32]) -> Result<Self> {
        VerifyingKey::from_bytes(public)
            .map(PublicKey)
            .map_err(|_| {
                Error::Signature("the enrolled public key is not a valid ed25519 point".into())
            })
    }
}

/// What a signed request says about itself: the headers [`MachineKey::sign`] makes, as
/// received.
#[derive(Clone, Copy, Debug)]
pub struct Headers<'a> {
    pub date: &'a str,
    pub counter: &'a str,
    pub signature: &'a str,
}

/// Checks a request's signature, date and counter against the machine's public key; returns
/// the counter (whether it was used before is for the caller to check).
pub fn verify(
    public: &[u8; 32],
    method: &str,
    path_and_query: &str,
    headers: Headers<'_>,
    body: &[u8],
    now: i64,
) -> Result<u64> {
    verify_key(
        &PublicKey::from_bytes(public)?,
        method,
        path_and_query,
        headers,
        body,
        now,
    )
}

/// [`verify`] with a key decoded before.
pub fn verify_key(
    key: &PublicKey,
    method: &str,
    path_and_query: &str,
    headers: Headers<'_>,
    body: &[u8],
    now: i64,
) -> Result<u64> {
    verify_key_hashed(
        key,
        method,
        path_and_query,
        headers,
        blake3::hash(body).as_bytes(),
        now,
    )
}

/// [`verify_key`] for a body known by its BLAKE3 hash (a large upload, hashed as it arrived).
pub fn verify_key_hashed(
    key: &PublicKey,
    method: &str,
    path_and_query: &str,
    headers: Headers<'_>,
    body_hash: &[u8; 32],
    now: i64,
) -> Result<u64> {
    let bad = |r: &str| Err(Error::Signature(r.into()));
    let Ok(date) = headers.date.parse::<i64>() else {
        return bad("the date is not a number of seconds");
    };
    // `abs_diff` cannot overflow, whatever the two dates (`i64::MIN - now` would).
    if date.abs_diff(now) > MAX_SKEW.unsigned_abs() {
        return Err(Error::Signature(format!(
            "the request is dated {date}, more than {MAX_SKEW} s from the server's clock ({now})"
        )));
    }
    let Ok(counter) = headers.counter.parse::<u64>() else {
        return bad("the counter is not a number (an agent older than the server sends none)");
    };
    if date_of(counter) != date {
        return Err(Error::Signature(format!(
            "the counter {counter} is not of the request's date {date} (microseconds)"
        )));
    }
    let signature = headers.signature;
    let Some(sig) = hex::decode(signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
    else {
        return bad("the signature is not 64 bytes of hex");
    };
    key.0
        .verify_strict(
            &signing_input_hashed(method, path_and_query, date, counter, body_hash),
            &ed25519_dalek::Signature::from_bytes(&sig),
        )
        .map_err(|_| Error::Signature("the signature does not verify".into()))?;
    Ok(counter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(date: &'a str, counter: &'a str, signature: &'a str) -> Headers<'a> {
        Headers {
            date,
            counter,
            signature,
        }
    }

    const C: u64 = 1000 * COUNTER_PER_SECOND + 17;

    #[test]
    fn a_signature_binds_method_path_date_counter_and_body() {
        let k = MachineKey::from_seed([7; 32]);
        let [(_, id), (_, date), (_, counter), (_, sig)] =
            k.sign("POST", "/api/v1/checkin", C, b"{}");
        assert_eq!(id, machine_id(&k.public()));
        assert_eq!(id.len(), 32);
        assert_eq!((date.as_str(), counter.as_str()), ("1000", "1000000017"));
        let pk = k.public();
        let ok = h(&date, &counter, &sig);
        assert_eq!(
            verify(&pk, "POST", "/api/v1/checkin", ok, b"{}", 1000).unwrap(),
            C
        );
        verify(&pk, "POST", "/api/v1/checkin", ok, b"{}", 1200).unwrap();
        let other_counter = (C + 1).to_string();
        let other_second = (C + COUNTER_PER_SECOND).to_string();
        for (m, p, d, c, b, now, want) in [
            (
                "GET",
                "/api/v1/checkin",
                "1000",
                counter.as_str(),
                &b"{}"[..],
                1000,
                "does not verify",
            ),
            (
                "POST",
                "/api/v1/checkin?x",
                "1000",
                &counter,
                b"{}",
                1000,
                "does not verify",
            ),
            (
                "POST",
                "/api/v1/checkin",
                "1001",
                &counter,
                b"{}",
                1000,
                "not of the request's date",
            ),
            (
                "POST",
                "/api/v1/checkin",
                "1000",
                &other_counter,
                b"{}",
                1000,
                "does not verify",
            ),
            (
                "POST",
                "/api/v1/checkin",
                "1000",
                &other_second,
                b"{}",
                1000,
                "not of the request's date",
            ),
            (
                "POST",
                "/api/v1/checkin",
                "1000",
                &counter,
                b"{ }",
                1000,
                "does not verify",
            ),
            (
                "POST",
                "/api/v1/checkin",
                "1000",
                &counter,
                b"{}",
                1301,
                "more than 300 s",
            ),
            (
                "POST",
                "/api/v1/checkin",
                "x",
                &counter,
                b"{}",
                1000,
                "not a number",
            ),
            (
                "POST",
                "/api/v1/checkin",
                "1000",
                "",
                b"{}",
                1000,
                "counter is not a number",
            ),
            (
                "POST",
                "/api/v1/checkin",
                "1000",
                "-1",
                b"{}",
                1000,
                "counter is not a number",
            ),
        ] {
            let e = verify(&pk, m, p, h(d, c, &sig), b, now)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{m} {p} {d} {c}: {e}");
        }
        let other = MachineKey::from_seed([8; 32]);
        let e = verify(&other.public(), "POST", "/api/v1/checkin", ok, b"{}", 1000);
        assert!(e.is_err());
        assert!(
            verify(
                &pk,
                "POST",
                "/api/v1/checkin",
                h(&date, &counter, "zz"),
                b"{}",
                1000
            )
            .is_err()
        );
    }

    #[test]
    fn dates_at_the_ends_of_i64_are_refused_without_overflow() {
        let k = MachineKey::from_seed([7; 32]);
        let pk = k.public();
        let [_, _, (_, counter), (_, sig)] = k.sign("POST", "/api/v1/checkin", C, b"{}");
        for (date, now) in [
            (i64::MIN, 1000),
            (i64::MAX, 1000),
            (i64::MIN, i64::MAX),
            (i64::MAX, i64::MIN),
            (1000, i64::MIN),
        ] {
            let d = date.to_string();
            let e = verify(
                &pk,
                "POST",
                "/api/v1/checkin",
                h(&d, &counter, &sig),
                b"{}",
                now,
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("more than 300 s"), "date {date}, now {now}: {e}");
        }
    }

    #[test]
    fn counters_only_go_up() {
        let c = Counter::default();
        assert_eq!(c.next(100), 100);
        assert_eq!(c.next(100), 101, "the same microsecond");
        assert_eq!(c.next(50), 102, "a clock stepped back");
        assert_eq!(c.next(5000), 5000);
        let c = std::sync::Arc::new(Counter::default());
        let got: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let c = c.clone();
                    s.spawn(move || (0..1000).map(|_| c.next(7)).collect::<Vec<_>>())
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let set: std::collections::HashSet<u64> = got.iter().copied().collect();
        assert_eq!(set.len(), 4000, "no counter given twice");
        assert!(c.next_now() > 1_700_000_000 * COUNTER_PER_SECOND);
    }

    #[test]
    fn key_files_round_trip() {
        let d = std::env::temp_dir().join(format!("semithin-key-{}", std::process::id()));
        let k = MachineKey::generate().unwrap();
        std::fs::write(&d, k.file_text()).unwrap();
        assert_eq!(MachineKey::load(&d).unwrap().public(), k.public());
        std::fs::write(&d, "short").unwrap();
        assert!(
            MachineKey::load(&d)
                .unwrap_err()
                .to_string()
                .contains("32-byte")
        );
        std::fs::remove_file(&d).unwrap();
    }
}
