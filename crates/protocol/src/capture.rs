//! Captures: a machine's writable layer (its `/etc` overlay's upper directory and chosen paths)
//! sent to the server as a tar.zst (docs/PROTOCOL.md, "Captures"), and what the admin reads of
//! them. Pure: the bounds, the paths a capture may name, the wire bodies.

use serde::{Deserialize, Serialize};

/// The endpoint a machine uploads a capture to (signed, the body is the tar.zst).
pub const UPLOAD_PATH: &str = "/api/v1/machines/capture";

/// Extra paths (besides `/etc`) one capture may name.
pub const MAX_PATHS: usize = 64;

/// A capture as the server keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CaptureInfo {
    /// The capture's number, given by the server.
    pub id: u64,
    /// The machine's name (when it was captured).
    pub machine: String,
    pub machine_id: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Bytes of the tar.zst.
    pub size: u64,
    /// Bytes of the tar inside it.
    pub unpacked: u64,
    /// Entries of the archive.
    pub entries: u64,
    /// BLAKE3 of the tar.zst, 64 hex digits (the file's name under DATA/captures/).
    pub hash: String,
    /// The layer commit an automatic bake made of it (`serve --auto-bake`), and its channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baked: Option<Baked>,
}

/// Where a capture was baked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Baked {
    pub channel: String,
    pub commit: String,
}

/// The layer channel `serve --auto-bake` bakes a machine's captures into.
pub fn machine_layer(machine: &str) -> String {
    format!("machines/{machine}")
}

/// Checks an extra path a capture names: absolute, plain components (no `.`, `..`, empty),
/// at most 4,095 bytes, not `/` itself nor in `/etc` (whose changes are the overlay's, captured
/// always), no control characters.
pub fn check_path(p: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("capture path {p:?}: {why}"));
    let Some(rest) = p.strip_prefix('/') else {
        return bad("not absolute (it starts with /)");
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return bad("the whole file system is not a capture path");
    }
    if p.len() > 4095 {
        return bad("longer than 4,095 bytes");
    }
    if p.chars().any(|c| c.is_control()) {
        return bad("it holds control characters");
    }
    if rest
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad("an empty, `.` or `..` component");
    }
    if rest == "etc" || rest.starts_with("etc/") {
        return bad("/etc is captured from its overlay's upper directory already");
    }
    Ok(())
}

/// Checks the extra paths of a capture (the job's and the command line's).
pub fn check_paths(paths: &[String]) -> Result<(), String> {
    if paths.len() > MAX_PATHS {
        return Err(format!(
            "{} capture paths; at most {MAX_PATHS} are accepted",
            paths.len()
        ));
    }
    paths.iter().try_for_each(|p| check_path(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_paths_are_absolute_plain_and_outside_etc() {
        for ok in ["/var/lib/foo", "/srv/", "/opt/app/data"] {
            check_path(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            ("var/lib", "not absolute"),
            ("/", "whole file system"),
            ("/var/../etc", "`..`"),
            ("/var//lib", "empty"),
            ("/etc/ssh", "/etc is captured"),
            ("/etc", "/etc is captured"),
            ("/var/\n", "control"),
        ] {
            let e = check_path(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("/srv/{i}")).collect();
        assert!(check_paths(&many).unwrap_err().contains("at most 64"));
    }
}
