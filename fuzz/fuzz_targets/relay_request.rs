//! What a relay makes of a request's method and path (`semithin_relay::route::classify`), and
//! what the root makes of the relay chain header (`semithin_server::relays::header_path`):
//! never a panic; a cached route's file stays below the cache directory (plain, non-hidden
//! components); a relay path has at most 16 names, each a valid machine name.
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
    ]
    .into_iter()
    .enumerate()
    .map(|(i, s)| (format!("request-{i}"), s.into_bytes()))
    .collect()
}

fuzz_target!(init: write_seeds(seeds()), |data: &[u8]| {
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
            assert!(names.len() <= semithin_server::relays::MAX_HOPS);
            for n in names {
                assert!(semithin_protocol::selector::check_name(&n).is_ok(), "{n:?}");
            }
        }
    }
});
