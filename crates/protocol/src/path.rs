//! Server-relative paths that cross the network ([`ApiPath`]): where a check-in answer tells a
//! machine to fetch from. A client joins one to the server URL it was configured with, so it must
//! never be able to change the host, port or scheme, nor leave `/api/v1/`.

use serde::{Deserialize, Serialize};

/// The longest server path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 1024;

/// The prefix every server path starts with: the version of the protocol.
pub const PREFIX: &str = "/api/v1/";

/// A path on the server, such as `/api/v1/objects`: it starts with [`PREFIX`] and is made of
/// segments of `A-Z a-z 0-9 - . _ ~ +`, none empty, `.` or `..`. So it holds no `@`, `:`, `//`,
/// `\`, `%`, `?`, `#`, space or control character, and joined after a server URL's path it can
/// only name a resource below that URL on the same host.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, pattern = "^/api/v1/[A-Za-z0-9._~+/-]+$")]
pub struct ApiPath(String);

/// Why a string is not an [`ApiPath`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path:?} is not a server path: {reason}")]
pub struct BadPath {
    /// The refused text, cut to 200 bytes and with control characters escaped.
    pub path: String,
    pub reason: &'static str,
}

impl ApiPath {
    pub fn new(s: impl Into<String>) -> Result<Self, BadPath> {
        let s = s.into();
        match check(&s) {
            Ok(()) => Ok(ApiPath(s)),
            Err(reason) => Err(BadPath {
                path: shown(&s),
                reason,
            }),
        }
    }

    /// `/api/v1/trust/metadata/`: where the TUF metadata is.
    pub fn trust_metadata() -> Self {
        ApiPath(format!("{PREFIX}trust/metadata/"))
    }

    /// `/api/v1/trust/targets/`: where the TUF target files are.
    pub fn trust_targets() -> Self {
        ApiPath(format!("{PREFIX}trust/targets/"))
    }

    /// `/api/v1/objects`: object requests.
    pub fn objects() -> Self {
        ApiPath(format!("{PREFIX}objects"))
    }

    /// `/api/v1/checkin`.
    pub fn checkin() -> Self {
        ApiPath(format!("{PREFIX}checkin"))
    }

    /// `/api/v1/enroll`.
    pub fn enroll() -> Self {
        ApiPath(format!("{PREFIX}enroll"))
    }

    /// This path with `rest` appended (as it is: `rest` is checked with the whole).
    pub fn join(&self, rest: &str) -> Result<Self, BadPath> {
        ApiPath::new(format!("{}{rest}", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ApiPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ApiPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ApiPath::new(s).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for ApiPath {
    type Err = BadPath;
    fn from_str(s: &str) -> Result<Self, BadPath> {
        ApiPath::new(s)
    }
}

fn check(s: &str) -> Result<(), &'static str> {
    if s.len() > MAX_PATH_LEN {
        return Err("longer than 1024 bytes");
    }
    if s.contains("://") {
        return Err("it has a scheme: only a path on the same server is accepted");
    }
    if s.starts_with("//") {
        return Err("it starts with `//`, which names another host");
    }
    let Some(rest) = s.strip_prefix(PREFIX) else {
        return Err("it does not start with /api/v1/");
    };
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(if c == '\0' {
            "it holds a NUL character"
        } else {
            "it holds a control character"
        });
    }
    for (c, why) in [
        ('@', "it holds `@`, which could name another host"),
        ('\\', "it holds a backslash"),
        ('%', "it holds `%`: escapes are not accepted"),
        ('?', "it holds a query (`?`)"),
        ('#', "it holds a fragment (`#`)"),
        (':', "it holds `:`"),
    ] {
        if s.contains(c) {
            return Err(why);
        }
    }
    // The last segment may be empty (a directory such as `/api/v1/trust/metadata/`).
    let segments: Vec<&str> = rest.split('/').collect();
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            "" if n + 1 == segments.len() => {}
            "" => return Err("it holds `//`"),
            "." | ".." => return Err("it holds a `.` or `..` segment"),
            _ => {}
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+".contains(&b))
        {
            return Err("only A-Z a-z 0-9 - . _ ~ + and / are accepted");
        }
    }
    Ok(())
}

/// The refused text for a message: at most 200 bytes, control characters escaped.
fn shown(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() >= 200 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_paths_are_accepted() {
        for p in [
            "/api/v1/objects",
            "/api/v1/trust/metadata/",
            "/api/v1/trust/targets/channels/lab/stable",
            "/api/v1/deltas/0a1b/2c3d",
            "/api/v1/jobs/d-1_2.x~y+z/progress",
        ] {
            assert_eq!(ApiPath::new(p).unwrap().as_str(), p);
        }
        assert_eq!(
            ApiPath::trust_metadata()
                .join("3.root.json")
                .unwrap()
                .as_str(),
            "/api/v1/trust/metadata/3.root.json"
        );
        for p in [
            ApiPath::trust_metadata(),
            ApiPath::trust_targets(),
            ApiPath::objects(),
            ApiPath::checkin(),
            ApiPath::enroll(),
        ] {
            ApiPath::new(p.as_str()).unwrap();
        }
    }

    #[test]
    fn paths_that_could_leave_the_server_are_refused() {
        for (p, why) in [
            ("@evil/api/v1/objects", "/api/v1/"),
            ("/api/v1/objects@evil", "`@`"),
            ("//evil/x", "`//`"),
            ("//evil/api/v1/objects", "`//`"),
            ("/api/v1//evil", "`//`"),
            ("http://evil/", "scheme"),
            ("https://evil/api/v1/objects", "scheme"),
            ("/api/v1/http://evil/", "scheme"),
            ("/api/v1/../admin", "`..`"),
            ("/api/v1/x/../../apt", "`..`"),
            ("/api/v1/./objects", "`.`"),
            ("/api/v1/%2e%2e/admin", "`%`"),
            ("/api/v1\\..\\admin", "/api/v1/"),
            ("/api/v1/a\\b", "backslash"),
            ("/api/v1/a\nb", "control"),
            ("/api/v1/a\0b", "NUL"),
            ("/api/v1/objects?x=1", "query"),
            ("/api/v1/objects#x", "fragment"),
            ("/api/v1/:8080", "`:`"),
            ("/api/v1/a b", "only A-Z"),
            ("/api/v1/é", "only A-Z"),
            (".evil.example/api/v1/objects", "/api/v1/"),
            (":8080/api/v1/objects", "/api/v1/"),
            ("", "/api/v1/"),
            ("/api/v2/objects", "/api/v1/"),
        ] {
            let e = ApiPath::new(p).unwrap_err().to_string();
            assert!(e.contains(why), "{p:?}: {e}");
            assert!(e.contains("is not a server path"), "{p:?}: {e}");
        }
        let long = format!("/api/v1/{}", "a".repeat(MAX_PATH_LEN));
        assert!(ApiPath::new(long).unwrap_err().to_string().contains("1024"));
        // control characters are never printed raw
        let e = ApiPath::new("/api/v1/\x1b[2J").unwrap_err().to_string();
        assert!(!e.contains('\x1b'), "{e}");
    }

    #[test]
    fn json_is_checked_when_read() {
        let ok: ApiPath = serde_json::from_str("\"/api/v1/objects\"").unwrap();
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"/api/v1/objects\"");
        let e = serde_json::from_str::<ApiPath>("\"@evil/x\"").unwrap_err();
        assert!(e.to_string().contains("not a server path"), "{e}");
    }
}
