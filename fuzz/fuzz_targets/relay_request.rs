//! What a relay makes of a request's method and path (`semithin_relay::route::classify`), and
//! what the root makes of the relay chain header (`semithin_server::relays::header_path`) and
//! of a relay's batch of check-ins and status (`CheckInBatch`, `RelayStatus::check`, the
//! entries' relay paths), and a relay of the answer to a batch: never a panic; a cached
//! route's file stays below the cache directory (plain, non-hidden components); a relay path
//! has at most 16 names, each a valid machine name; an accepted status has no control
//! characters.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use semithin_fuzz::write_seeds;
use semithin_relay::route::classify;

fn seeds() -> Vec<(String, Vec<u8>)> {
    let h = "0123456789abcdef".repeat(4);
    [
        format!("GET\n/api/v1/objects/chunk/{h}\nrelay-b, relay-a"),
        format!("GET\n/api/v1/deltas/{h}/{h}\nschool"),
        format!("GET\n/api/v1/trust/targets/channels/{h}.lab\n"),
        "GET\n/api/v1/trust/metadata/timestamp.json\n".to_owned(),
        "GET\n/apt/debian/pool/main/h/hello/hello_2.10-3_amd64.deb\n".to_owned(),
        "POST\n/api/v1/checkin\nx,,y".to_owned(),
        r#"{"checkins": [{"headers": {"semithin-machine": "ab"}, "body": "{}", "relays": ["r1"]}],
            "status": {"version": "0.1", "url": "http://r:8471", "upstream": "http://root",
            "cache_bytes": 1, "cache_items": 1, "cache_limit": 2, "fetched_bytes": 0,
            "served_bytes": 0, "forwarded": 0}}"#
            .to_owned(),
        r#"{"answers": [{"status": 200, "body": {"status": "accepted"}}]}"#.to_owned(),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, s)| (format!("request-{i}"), s.into_bytes()))
    .collect()
}

/// A relay path the root accepts: at most 16 valid machine names.
fn valid_path(names: &[String]) {
    assert!(names.len() <= semithin_server::relays::MAX_HOPS);
    for n in names {
        assert!(semithin_protocol::selector::check_name(n).is_ok(), "{n:?}");
    }
}

fuzz_target!(init: write_seeds(seeds()), |data: &[u8]| {
    if data.first() == Some(&b'{') {
        use semithin_protocol::relay::{CheckInBatch, CheckInBatchAnswer};
        if let Ok(b) = semithin_protocol::json::from_slice::<CheckInBatch>(data) {
            for c in b.checkins {
                if let Ok(p) = semithin_server::relays::check_path(c.relays) {
                    valid_path(&p);
                }
            }
            if let Some(s) = b.status
                && s.check().is_ok()
            {
                assert!(!s.version.chars().any(char::is_control), "{s:?}");
            }
        }
        let _ = semithin_protocol::json::from_slice::<CheckInBatchAnswer>(data);
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.splitn(3, '\n');
    let (method, path, chain) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    if let Ok(route) = classify(method, path)
        && let Some(key) = route.cache_key()
    {
        let base = Path::new("/cache");
        assert!(base.join(&key).starts_with(base), "{key:?} leaves the cache");
        for c in Path::new(&key).components() {
            match c {
                Component::Normal(n) => {
                    assert!(!n.to_string_lossy().starts_with('.'), "{key:?}")
                }
                other => panic!("{key:?} has a component {other:?}"),
            }
        }
    }
    let mut headers = axum::http::HeaderMap::new();
    if let Ok(v) = axum::http::HeaderValue::from_str(chain) {
        headers.insert(semithin_server::relays::HEADER, v);
        if let Ok(names) = semithin_server::relays::header_path(&headers) {
            valid_path(&names);
        }
    }
});
