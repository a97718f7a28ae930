//! What relays send their upstream of their own (docs/RELAY.md): their children's check-ins in
//! batches (`POST /api/v1/relay/checkins`), and their own health with every batch and on their
//! own (`POST /api/v1/relay/status`).
//!
//! A batch carries each child's check-in exactly as the child signed it (its four signature
//! headers and its body, byte for byte), so the server verifies each as if it had come straight
//! from the machine; the batch itself is signed by the relay.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a relay sends its batches of check-ins.
pub const CHECKINS_PATH: &str = "/api/v1/relay/checkins";

/// Where a relay reports its own health.
pub const STATUS_PATH: &str = "/api/v1/relay/status";

/// At most this many check-ins in one batch.
pub const MAX_BATCH: usize = 500;

/// At most this many bytes of check-in bodies in one batch (the server takes 8 MiB bodies; a
/// body grows a little as a JSON string).
pub const MAX_BATCH_BYTES: usize = 2 << 20;

/// `POST /api/v1/relay/checkins` (signed by the relay): its children's check-ins.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckInBatch {
    pub checkins: Vec<BatchedCheckIn>,
    /// The relay's own health, sent with each batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RelayStatus>,
}

/// One machine's `POST /api/v1/checkin` as it reached the relay.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchedCheckIn {
    /// The signature headers by name (`semithin-machine`, `semithin-date`, `semithin-counter`,
    /// `semithin-signature`).
    pub headers: BTreeMap<String, String>,
    /// The body exactly as signed (a `CheckInRequest`).
    pub body: String,
    /// The relays the request came through before this one, nearest the machine first (the
    /// `X-Semithin-Relay` it arrived with); the batch's own header adds the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<String>,
}

/// The answer to a batch: one per check-in, in the order sent.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckInBatchAnswer {
    pub answers: Vec<BatchedAnswer>,
}

/// What the server would have answered the machine: its status and JSON body (a
/// `CheckInResponse`, or `{"error": ...}`).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchedAnswer {
    pub status: u16,
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
}

/// A relay's health as it reports it (`POST /api/v1/relay/status`, and with each batch).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RelayStatus {
    /// The semithin version the relay runs.
    pub version: String,
    /// The URL its children reach it at, as it was told (`semithin relay --url`); what `fleet
    /// move --relay NAME` places machines under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The upstream it used last.
    #[serde(default)]
    pub upstream: String,
    pub cache_bytes: u64,
    pub cache_items: u64,
    pub cache_limit: u64,
    /// Bytes fetched from upstream into the cache since the relay started.
    pub fetched_bytes: u64,
    /// Bytes answered to children from the cache since the relay started.
    pub served_bytes: u64,
    /// Requests forwarded upstream one by one since the relay started.
    pub forwarded: u64,
    /// Batches of check-ins sent upstream, and the check-ins in them, since the relay started.
    #[serde(default)]
    pub batches: u64,
    #[serde(default)]
    pub batched: u64,
    /// How often the relay reports on its own (seconds; 0: not said): a report older than
    /// twice this and a minute is late.
    #[serde(default)]
    pub interval_secs: u64,
}

impl RelayStatus {
    /// Refuses what no relay sends: a version or upstream over 200 bytes, a URL that is not
    /// http(s) or over 512 bytes, control characters.
    pub fn check(&self) -> Result<(), String> {
        let plain = |s: &str| !s.chars().any(char::is_control);
        if self.version.len() > 200 || !plain(&self.version) {
            return Err("status.version: at most 200 plain characters".into());
        }
        if self.upstream.len() > 512 || !plain(&self.upstream) {
            return Err("status.upstream: at most 512 plain characters".into());
        }
        if let Some(u) = &self.url
            && (u.len() > 512
                || !plain(u)
                || u.contains(',')
                || !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return Err(format!(
                "status.url {u:?}: expected http(s)://HOST[:PORT], at most 512 characters, no comma"
            ));
        }
        Ok(())
    }
}

impl RelayHealth {
    /// Whether the report is late at `now` (Unix seconds): the relay stopped, or lost its
    /// upstream.
    pub fn late(&self, now: i64) -> bool {
        let every = if self.status.interval_secs == 0 {
            60
        } else {
            self.status.interval_secs
        };
        now - self.at > (2 * every + 60) as i64
    }
}

/// What the server keeps of a relay's last report, for the admin (`MachineInfo::relay`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RelayHealth {
    /// When the relay last reported (Unix seconds).
    pub at: i64,
    #[serde(flatten)]
    pub status: RelayStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_round_trips_with_bodies_byte_for_byte() {
        let body = r#"{"report":{"x":"\"quoted\" \u00e9"},"wait_secs":30}"#;
        let b = CheckInBatch {
            checkins: vec![BatchedCheckIn {
                headers: [("semithin-machine".to_owned(), "ab".to_owned())].into(),
                body: body.into(),
                relays: vec!["r1".into()],
            }],
            status: None,
        };
        let text = serde_json::to_string(&b).unwrap();
        let back: CheckInBatch = serde_json::from_str(&text).unwrap();
        assert_eq!(back.checkins[0].body, body);
    }

    #[test]
    fn a_status_with_a_bad_url_or_control_characters_is_refused() {
        let ok = RelayStatus {
            version: "0.1".into(),
            url: Some("http://relay:8471".into()),
            ..RelayStatus::default()
        };
        assert!(ok.check().is_ok());
        let h = RelayHealth {
            at: 1000,
            status: RelayStatus {
                interval_secs: 10,
                ..ok.clone()
            },
        };
        assert!(!h.late(1080) && h.late(1081));
        for bad in [
            RelayStatus {
                url: Some("ftp://x".into()),
                ..ok.clone()
            },
            RelayStatus {
                version: "a\u{1b}[2J".into(),
                ..ok.clone()
            },
            RelayStatus {
                url: Some("http://a,http://b".into()),
                ..ok.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
