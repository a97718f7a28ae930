//! What a request to the relay is, from its method and path alone: pure, so every rule of
//! which requests are cached, revalidated or forwarded is tested without a network.

use semithin_store::pack::ObjKind;

/// What the relay does with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /api/v1/health`: the relay's own liveness.
    Health,
    /// `GET /api/v1/trust/metadata/FILE`: short-lived, revalidated from upstream.
    Metadata(String),
    /// `GET /api/v1/trust/targets/HASH.PATH`: named by its hash (consistent snapshots), cached.
    Target(String),
    /// `GET /api/v1/objects/KIND/ID`: one object, cached by its content address.
    Object(ObjKind, [u8; 32]),
    /// `POST /api/v1/objects`: a batch, answered from the per-object cache.
    Objects,
    /// `GET /api/v1/deltas/FROM/TO`: a delta pack between two releases (immutable), cached.
    Delta(String, String),
    /// `GET /api/v1/boot/RELEASE/NAME`: a boot artifact of a release (immutable), cached.
    Boot(String, String),
    /// `GET /apt/NAME/PATH`: apt's proxy; `true` when the file is immutable (`pool/`), cached.
    Apt(String, bool),
    /// `POST /api/v1/checkin`: sent upstream in a batch with the other children's (a batch
    /// from a relay below, `POST /api/v1/relay/checkins`, is forwarded as it came).
    CheckIn,
    /// Everything else under `/api/v1/` (enrollment, job progress, captures, admin requests):
    /// forwarded upstream as it came, signature intact.
    Forward,
}

impl Route {
    /// The file under the cache directory that holds this route's content, for cached routes.
    pub fn cache_key(&self) -> Option<String> {
        Some(match self {
            Route::Target(p) => format!("targets/{p}"),
            Route::Object(k, id) => format!("objects/{}/{}", k.name(), hex::encode(id)),
            Route::Delta(a, b) => format!("deltas/{a}/{b}"),
            Route::Boot(r, n) => format!("boot/{r}/{n}"),
            Route::Apt(p, true) => format!("apt/{p}"),
            _ => return None,
        })
    }
}

/// A name the relay takes as one part of a path, and so as a file name: letters, digits,
/// `. _ - + ~`, not starting with `.`, at most 200 bytes.
pub fn safe_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+~".contains(&b))
}

fn hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn parts(rest: &str, max: usize, what: &str) -> Result<Vec<String>, String> {
    let p: Vec<&str> = rest.split('/').collect();
    if p.len() > max || !p.iter().all(|s| safe_part(s)) {
        return Err(format!(
            "bad {what} path {rest:?}: at most {max} parts of letters, digits and . _ - + ~"
        ));
    }
    Ok(p.into_iter().map(str::to_owned).collect())
}

/// The object kind of its name on the wire.
pub fn kind(name: &str) -> Option<ObjKind> {
    match name {
        "chunk" => Some(ObjKind::Chunk),
        "tree" => Some(ObjKind::Tree),
        "commit" => Some(ObjKind::Commit),
        _ => None,
    }
}

/// `chunk/ID`, `tree/ID` or `commit/ID` as the objects routes name an object.
pub fn object_ref(s: &str) -> Result<(ObjKind, [u8; 32]), String> {
    let bad = || format!("bad object {s:?}: expected chunk/ID, tree/ID or commit/ID");
    let (k, id) = s.split_once('/').ok_or_else(bad)?;
    let kind = kind(k).ok_or_else(bad)?;
    if !hex64(id) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(id, &mut out).map_err(|_| bad())?;
    Ok((kind, out))
}

/// Classifies a request by method and path (the path as received, still percent-encoded; the
/// query is not part of it). An error names what is wrong with the path.
pub fn classify(method: &str, path: &str) -> Result<Route, String> {
    if path.bytes().any(|b| b.is_ascii_control() || b == b'\\') {
        return Err(format!("bad path {path:?}: control characters or `\\`"));
    }
    if path.split('/').any(|s| s == ".." || s == ".") {
        return Err(format!("bad path {path:?}: `.` or `..` segments"));
    }
    let get = method == "GET" || method == "HEAD";
    if let Some(rest) = path.strip_prefix("/apt/") {
        if !get {
            return Err(format!("{method} is not allowed on {path} (it takes GET)"));
        }
        let p = parts(rest, 16, "apt")?;
        if p.len() < 2 {
            return Err(format!("bad apt path {rest:?}: expected NAME/PATH"));
        }
        let immutable = p.get(1).map(String::as_str) == Some("pool") && !path.ends_with('/');
        return Ok(Route::Apt(p.join("/"), immutable));
    }
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return Err(format!(
            "no such endpoint: {path} (a relay answers /api/v1/ and /apt/)"
        ));
    };
    if rest == "health" && get {
        return Ok(Route::Health);
    }
    if rest == "checkin" && method == "POST" {
        return Ok(Route::CheckIn);
    }
    if let Some(file) = rest.strip_prefix("trust/metadata/") {
        let p = parts(file, 1, "metadata")?;
        if !get {
            return Err(format!("{method} is not allowed on {path} (it takes GET)"));
        }
        return Ok(Route::Metadata(p.join("/")));
    }
    if let Some(t) = rest.strip_prefix("trust/targets/") {
        let p = parts(t, 8, "target")?;
        if !get {
            return Err(format!("{method} is not allowed on {path} (it takes GET)"));
        }
        // A consistent target path starts with the hash of its content: cacheable for ever.
        let hashed = p
            .last()
            .and_then(|l| l.split_once('.'))
            .is_some_and(|(h, _)| h.len() >= 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        return Ok(if hashed {
            Route::Target(p.join("/"))
        } else {
            Route::Forward
        });
    }
    if rest == "objects" {
        if method != "POST" {
            return Err(format!("{method} is not allowed on {path} (it takes POST)"));
        }
        return Ok(Route::Objects);
    }
    if let Some(o) = rest.strip_prefix("objects/") {
        if !get {
            return Err(format!("{method} is not allowed on {path} (it takes GET)"));
        }
        let (k, id) = object_ref(o)?;
        return Ok(Route::Object(k, id));
    }
    for (prefix, delta) in [("deltas/", true), ("boot/", false)] {
        if let Some(r) = rest.strip_prefix(prefix) {
            if !get {
                return Err(format!("{method} is not allowed on {path} (it takes GET)"));
            }
            let p = parts(r, 2, prefix.trim_end_matches('/'))?;
            let [a, b] = <[String; 2]>::try_from(p)
                .map_err(|_| format!("bad path {path:?}: expected {prefix}RELEASE/NAME"))?;
            if !hex64(&a) || (delta && !hex64(&b)) {
                return Err(format!("bad path {path:?}: releases are 64 hex digits"));
            }
            return Ok(if delta {
                Route::Delta(a, b)
            } else {
                Route::Boot(a, b)
            });
        }
    }
    Ok(Route::Forward)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn cached_routes_have_keys_inside_the_cache() {
        let r = classify("GET", &format!("/api/v1/objects/chunk/{H}")).unwrap();
        assert_eq!(r.cache_key().unwrap(), format!("objects/chunk/{H}"));
        let r = classify("GET", &format!("/api/v1/deltas/{H}/{H}")).unwrap();
        assert_eq!(r, Route::Delta(H.into(), H.into()));
        let r = classify("GET", &format!("/api/v1/boot/{H}/vmlinuz")).unwrap();
        assert_eq!(r.cache_key().unwrap(), format!("boot/{H}/vmlinuz"));
        let r = classify("GET", &format!("/api/v1/trust/targets/channels/{H}.lab")).unwrap();
        assert_eq!(r.cache_key().unwrap(), format!("targets/channels/{H}.lab"));
        let r = classify(
            "GET",
            "/apt/debian/pool/main/h/hello/hello_2.10-3_amd64.deb",
        )
        .unwrap();
        assert!(r.cache_key().is_some());
        let r = classify("GET", "/apt/debian/dists/bookworm/InRelease").unwrap();
        assert_eq!(r.cache_key(), None, "indexes change: not cached");
    }

    #[test]
    fn metadata_is_never_cached_by_key() {
        let r = classify("GET", "/api/v1/trust/metadata/timestamp.json").unwrap();
        assert_eq!(r, Route::Metadata("timestamp.json".into()));
        assert_eq!(r.cache_key(), None);
    }

    #[test]
    fn the_rest_is_forwarded() {
        assert_eq!(classify("POST", "/api/v1/checkin").unwrap(), Route::CheckIn);
        for p in [
            "/api/v1/relay/checkins",
            "/api/v1/relay/status",
            "/api/v1/enroll",
            "/api/v1/jobs/x/progress",
        ] {
            assert_eq!(classify("POST", p).unwrap(), Route::Forward, "{p}");
        }
        assert_eq!(
            classify("GET", "/api/v1/admin/stats").unwrap(),
            Route::Forward
        );
    }

    #[test]
    fn bad_paths_are_refused_with_a_reason() {
        for (m, p, want) in [
            ("GET", "/api/v1/objects/chunk/zz", "bad object"),
            ("GET", "/api/v1/objects/blob/00", "bad object"),
            ("POST", &format!("/api/v1/objects/chunk/{H}"), "not allowed"),
            ("GET", "/api/v1/objects", "not allowed"),
            ("GET", "/api/v1/deltas/abc/def", "64 hex digits"),
            ("GET", "/api/v1/deltas/a/b/c", "at most 2 parts"),
            ("GET", "/api/v1/trust/metadata/../x", "`..`"),
            ("GET", "/api/v1/trust/metadata/.hidden", "bad metadata path"),
            ("GET", "/etc/passwd", "no such endpoint"),
            ("GET", "/apt/debian", "NAME/PATH"),
            ("GET", "/apt/x\u{1}/y", "control"),
            ("PUT", "/apt/debian/pool/x.deb", "not allowed"),
        ] {
            let e = classify(m, p).unwrap_err();
            assert!(e.contains(want), "{m} {p}: {e}");
        }
    }
}
