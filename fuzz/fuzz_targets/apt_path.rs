//! The path a machine asks the apt proxy for (`aptcache::check_path`, before anything is read,
//! written or fetched): never a panic, and an accepted path, joined under the cache directory or
//! appended to the upstream's base, stays below it: only plain, non-hidden components.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use semithin_fuzz::write_seeds;
use semithin_server::aptcache::check_path;

fn seeds() -> Vec<(String, Vec<u8>)> {
    [
        "dists/bookworm/InRelease",
        "dists/bookworm/main/binary-amd64/by-hash/SHA256/0123abcd",
        "pool/main/libc/glibc/libc6_2.36-9+deb12u4_amd64.deb",
        "pool/main/v/vim/vim_2%3a9.0.1378-2_amd64.deb",
        "dists/bookworm-updates/main/i18n/Translation-en.xz",
    ]
    .iter()
    .enumerate()
    .map(|(i, p)| (format!("path-{i}"), p.as_bytes().to_vec()))
    .collect()
}

fuzz_target!(init: write_seeds(seeds()), |data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    if check_path(path).is_err() {
        return;
    }
    assert!(!path.is_empty() && !path.starts_with('/'), "{path:?}");
    assert!(!path.contains(['\\', '\0', '?', '#', '\n']), "{path:?}");
    // decoded once by the router: a `%` left is an encoded encoding an upstream could decode
    assert!(!path.contains('%'), "{path:?}");
    let base = Path::new("/cache/upstream");
    let joined = base.join(path);
    assert!(joined.starts_with(base), "{path:?} leaves the cache");
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => assert!(!n.to_string_lossy().starts_with('.'), "{path:?}"),
            other => panic!("{path:?} has a component {other:?}"),
        }
    }
    assert_eq!(Path::new(path).components().count(), path.split('/').count(), "{path:?}");
});
