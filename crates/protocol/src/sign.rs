//! Signed requests: how a machine proves who it is on every request after enrollment.
//!
//! A machine holds an ed25519 key it made itself; the server learns the public half at
//! enrollment. Each request carries three headers:
//!
//! - `semithin-machine`: the machine id, the first 16 bytes of BLAKE3(public key) in hex;
//! - `semithin-date`: the request time in Unix seconds;
//! - `semithin-signature`: hex ed25519 over [`signing_input`]: a fixed context, the method, the
//!   path with its query, the date and BLAKE3 of the body.
//!
//! The server accepts a date within [`MAX_SKEW`] of its own clock. Signing the body's hash binds
//! the report to the request; signing the path binds it to the endpoint, so a captured request
//! cannot be replayed against another endpoint or with another body, nor after five minutes.
//! Signed requests (rather than client certificates) keep working through relays and
//! TLS-terminating proxies and need no certificate authority on the server.

use std::path::Path;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::{Error, Result};

pub const HEADER_MACHINE: &str = "semithin-machine";
pub const HEADER_DATE: &str = "semithin-date";
pub const HEADER_SIGNATURE: &str = "semithin-signature";

/// How far a request's date may be from the server's clock, in seconds.
pub const MAX_SKEW: i64 = 300;

const CONTEXT: &[u8] = b"semithin-request-v1";

/// The machine id of a public key.
pub fn machine_id(public: &[u8; 32]) -> String {
    hex::encode(&blake3::hash(public).as_bytes()[..16])
}

/// The bytes a request signature covers.
pub fn signing_input(method: &str, path_and_query: &str, date: i64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CONTEXT.len() + path_and_query.len() + 64);
    for part in [
        CONTEXT,
        method.as_bytes(),
        path_and_query.as_bytes(),
        date.to_string().as_bytes(),
    ] {
        out.extend_from_slice(part);
        out.push(0);
    }
    out.extend_from_slice(blake3::hash(body).as_bytes());
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

    /// The three headers of a signed request.
    pub fn sign(
        &self,
        method: &str,
        path_and_query: &str,
        date: i64,
        body: &[u8],
    ) -> [(&'static str, String); 3] {
        let sig = self
            .key
            .sign(&signing_input(method, path_and_query, date, body));
        [
            (HEADER_MACHINE, self.id()),
            (HEADER_DATE, date.to_string()),
            (HEADER_SIGNATURE, hex::encode(sig.to_bytes())),
        ]
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

/// Checks a request's signature and date against the machine's public key.
pub fn verify(
    public: &[u8; 32],
    method: &str,
    path_and_query: &str,
    date: &str,
    body: &[u8],
    signature: &str,
    now: i64,
) -> Result<()> {
    verify_key(
        &PublicKey::from_bytes(public)?,
        method,
        path_and_query,
        date,
        body,
        signature,
        now,
    )
}

/// [`verify`] with a key decoded before.
pub fn verify_key(
    key: &PublicKey,
    method: &str,
    path_and_query: &str,
    date: &str,
    body: &[u8],
    signature: &str,
    now: i64,
) -> Result<()> {
    let bad = |r: &str| Err(Error::Signature(r.into()));
    let Ok(date) = date.parse::<i64>() else {
        return bad("the date is not a number of seconds");
    };
    // `abs_diff` cannot overflow, whatever the two dates (`i64::MIN - now` would).
    if date.abs_diff(now) > MAX_SKEW.unsigned_abs() {
        return Err(Error::Signature(format!(
            "the request is dated {date}, more than {MAX_SKEW} s from the server's clock ({now})"
        )));
    }
    let Some(sig) = hex::decode(signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
    else {
        return bad("the signature is not 64 bytes of hex");
    };
    key.0
        .verify_strict(
            &signing_input(method, path_and_query, date, body),
            &ed25519_dalek::Signature::from_bytes(&sig),
        )
        .or_else(|_| bad("the signature does not verify"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_binds_method_path_date_and_body() {
        let k = MachineKey::from_seed([7; 32]);
        let [(_, id), (_, date), (_, sig)] = k.sign("POST", "/api/v1/checkin", 1000, b"{}");
        assert_eq!(id, machine_id(&k.public()));
        assert_eq!(id.len(), 32);
        let pk = k.public();
        verify(&pk, "POST", "/api/v1/checkin", &date, b"{}", &sig, 1000).unwrap();
        verify(&pk, "POST", "/api/v1/checkin", &date, b"{}", &sig, 1200).unwrap();
        for (m, p, d, b, now, want) in [
            (
                "GET",
                "/api/v1/checkin",
                "1000",
                &b"{}"[..],
                1000,
                "does not verify",
            ),
            (
                "POST",
                "/api/v1/checkin?x",
                "1000",
                b"{}",
                1000,
                "does not verify",
            ),
            (
                "POST",
                "/api/v1/checkin",
                "1001",
                b"{}",
                1000,
                "does not verify",
            ),
            (
                "POST",
                "/api/v1/checkin",
                "1000",
                b"{ }",
                1000,
                "does not verify",
            ),
            (
                "POST",
                "/api/v1/checkin",
                "1000",
                b"{}",
                1301,
                "more than 300 s",
            ),
            ("POST", "/api/v1/checkin", "x", b"{}", 1000, "not a number"),
        ] {
            let e = verify(&pk, m, p, d, b, &sig, now).unwrap_err().to_string();
            assert!(e.contains(want), "{m} {p} {d}: {e}");
        }
        let other = MachineKey::from_seed([8; 32]);
        let e = verify(
            &other.public(),
            "POST",
            "/api/v1/checkin",
            &date,
            b"{}",
            &sig,
            1000,
        );
        assert!(e.is_err());
        assert!(verify(&pk, "POST", "/api/v1/checkin", &date, b"{}", "zz", 1000).is_err());
    }

    #[test]
    fn dates_at_the_ends_of_i64_are_refused_without_overflow() {
        let k = MachineKey::from_seed([7; 32]);
        let pk = k.public();
        for (date, now) in [
            (i64::MIN, 1000),
            (i64::MAX, 1000),
            (i64::MIN, i64::MAX),
            (i64::MAX, i64::MIN),
            (i64::MIN, -1),
            (1000, i64::MIN),
        ] {
            let [_, _, (_, sig)] = k.sign("POST", "/api/v1/checkin", date, b"{}");
            let e = verify(
                &pk,
                "POST",
                "/api/v1/checkin",
                &date.to_string(),
                b"{}",
                &sig,
                now,
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("more than 300 s"), "date {date}, now {now}: {e}");
        }
        // at the ends of the range, a date within the window still passes
        for (date, now) in [(i64::MAX, i64::MAX - 300), (i64::MIN, i64::MIN + 300)] {
            let [_, _, (_, sig)] = k.sign("POST", "/api/v1/checkin", date, b"{}");
            verify(
                &pk,
                "POST",
                "/api/v1/checkin",
                &date.to_string(),
                b"{}",
                &sig,
                now,
            )
            .unwrap();
        }
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
