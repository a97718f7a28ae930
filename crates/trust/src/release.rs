//! What the signed target of a channel says: the channel's release, and the other releases the
//! same signature lets its machines run while a rollout holds them back or sends them back.
//!
//! The target `channels/CHANNEL` carries, in its `custom` object:
//!
//! ```json
//! {"commit": "<64 hex>", "channel": "lab/stable", "published": 1796159678,
//!  "allowed": ["<64 hex>", ...], "rollout": "<16 hex>"}
//! ```
//!
//! `allowed` and `rollout` are written by `semithin rollout start` only. `allowed` lists the
//! releases the rollout's machines ran when it started (each one signed as a channel's release
//! before, which the publisher checks); `rollout` names the rollout the signature was made for, so
//! that the server knows which rollout (if any) governs the channel. A plain `semithin publish`
//! writes neither, so it ends whatever a rollout allowed. A client accepts a release for a channel
//! when it is `commit` or one of `allowed`, and nothing else (docs/TRUST.md, "Rollouts").

use serde_json::{Value, json};

/// At most this many allowed releases in one signed target (the distinct releases a fleet runs
/// are few; the limit keeps the targets metadata small).
pub const MAX_ALLOWED: usize = 256;

/// The release part of a channel target's `custom` field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelRelease {
    /// The channel's release: a commit id, 64 lowercase hex digits.
    pub commit: String,
    /// Earlier releases the channel's machines may also be told to run, sorted, each once.
    pub allowed: Vec<String>,
    /// The rollout this signature was made for.
    pub rollout: Option<String>,
}

/// Whether `s` is a commit id as the targets write them.
pub fn is_commit_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl ChannelRelease {
    /// A plain release: no rollout, nothing else allowed.
    pub fn new(commit: &str) -> Self {
        Self {
            commit: commit.to_owned(),
            ..Self::default()
        }
    }

    /// Reads a target's `custom` field; an error says what is wrong with it.
    pub fn from_custom(custom: Option<&Value>) -> Result<Self, String> {
        let c = custom.ok_or("it has no custom field")?;
        let commit = c
            .get("commit")
            .and_then(Value::as_str)
            .filter(|s| is_commit_id(s))
            .ok_or("its custom.commit is not a commit id")?
            .to_owned();
        let mut allowed = Vec::new();
        match c.get("allowed") {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) => {
                for v in a {
                    let s = v
                        .as_str()
                        .filter(|s| is_commit_id(s))
                        .ok_or("its custom.allowed holds something that is not a commit id")?;
                    allowed.push(s.to_owned());
                }
            }
            Some(_) => return Err("its custom.allowed is not a list".into()),
        }
        allowed.sort();
        allowed.dedup();
        let rollout = match c.get("rollout") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err("its custom.rollout is not a string".into()),
        };
        Ok(Self {
            commit,
            allowed,
            rollout,
        })
    }

    /// The `custom` field of the target, as `semithin publish` writes it (with `allowed` and
    /// `rollout` only when there are any).
    pub fn to_custom(&self, channel: &str, published: i64) -> Value {
        let mut v = json!({"commit": self.commit, "channel": channel, "published": published});
        if !self.allowed.is_empty() {
            v["allowed"] = json!(self.allowed);
        }
        if let Some(r) = &self.rollout {
            v["rollout"] = json!(r);
        }
        v
    }

    /// Whether a machine of the channel may run `release` under this signature.
    pub fn permits(&self, release: &str) -> bool {
        self.commit == release || self.allowed.iter().any(|a| a == release)
    }

    /// Checks what the publisher is asked to sign: ids well formed, the release not also in
    /// `allowed`, not too many. Puts `allowed` in order.
    pub fn check(&mut self) -> Result<(), String> {
        if !is_commit_id(&self.commit) {
            return Err(format!("{:?} is not a commit id", self.commit));
        }
        if let Some(bad) = self.allowed.iter().find(|a| !is_commit_id(a)) {
            return Err(format!("allowed release {bad:?} is not a commit id"));
        }
        self.allowed.sort();
        self.allowed.dedup();
        self.allowed.retain(|a| *a != self.commit);
        if self.allowed.len() > MAX_ALLOWED {
            return Err(format!(
                "{} releases to allow besides the new one; at most {MAX_ALLOWED}",
                self.allowed.len()
            ));
        }
        if let Some(r) = &self.rollout
            && (r.is_empty()
                || r.len() > 64
                || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(format!(
                "rollout id {r:?} is not 1 to 64 letters, digits or '-'"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    #[test]
    fn a_plain_release_permits_only_its_commit() {
        let r = ChannelRelease::from_custom(Some(&json!({"commit": A, "channel": "x"}))).unwrap();
        assert_eq!(r, ChannelRelease::new(A));
        assert!(r.permits(A));
        assert!(!r.permits(B));
        // what publish writes has no allowed nor rollout
        let v = r.to_custom("lab/stable", 5);
        assert_eq!(
            v,
            json!({"commit": A, "channel": "lab/stable", "published": 5})
        );
    }

    #[test]
    fn allowed_releases_round_trip_and_are_permitted() {
        let mut r = ChannelRelease {
            commit: A.into(),
            allowed: vec![C.into(), B.into(), C.into(), A.into()],
            rollout: Some("0123abcd".into()),
        };
        r.check().unwrap();
        assert_eq!(r.allowed, vec![B.to_owned(), C.to_owned()]);
        let back = ChannelRelease::from_custom(Some(&r.to_custom("x", 1))).unwrap();
        assert_eq!(back, r);
        assert!(back.permits(A) && back.permits(B) && back.permits(C));
        assert!(!back.permits(&"d".repeat(64)));
    }

    #[test]
    fn malformed_fields_are_refused() {
        for (v, want) in [
            (json!({}), "custom.commit"),
            (json!({"commit": "abc"}), "custom.commit"),
            (json!({"commit": A, "allowed": B}), "not a list"),
            (json!({"commit": A, "allowed": ["x"]}), "not a commit id"),
            (json!({"commit": A, "rollout": 3}), "not a string"),
        ] {
            let e = ChannelRelease::from_custom(Some(&v)).unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        }
        assert!(ChannelRelease::from_custom(None).is_err());
        let mut r = ChannelRelease {
            commit: A.into(),
            allowed: vec!["nope".into()],
            rollout: None,
        };
        assert!(r.check().unwrap_err().contains("nope"));
        let mut r = ChannelRelease {
            commit: A.into(),
            allowed: (0..=MAX_ALLOWED).map(|i| format!("{i:064x}")).collect(),
            rollout: None,
        };
        assert!(r.check().unwrap_err().contains("at most"));
    }
}
