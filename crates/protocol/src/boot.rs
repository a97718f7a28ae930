//! Boot artifacts on the wire (docs/BOOT.md, "Boot artifacts"; docs/PROTOCOL.md, "Boot
//! artifacts and network boot"): their names, the TUF target each is signed as
//! (`boot/RELEASE/NAME`), and the MAC addresses a network boot names a machine by.

use std::fmt;
use std::str::FromStr;

use crate::ids::ReleaseId;

/// The kernel.
pub const KERNEL: &str = "vmlinuz";
/// The initrd, which holds the trust root and semithin's boot scripts.
pub const INITRD: &str = "initrd.img";
/// The whole release as a squashfs, for a live boot.
pub const SQUASHFS: &str = "root.squashfs";
/// Every artifact name.
pub const NAMES: [&str; 3] = [KERNEL, INITRD, SQUASHFS];

/// The directory of the repository where publish keeps the artifacts, each as a file named by
/// the SHA-256 of its content (lower-case hex).
pub const REPO_DIR: &str = "boot";

/// The artifact name `s`, or why it is none.
pub fn check_name(s: &str) -> Result<&'static str, String> {
    NAMES.iter().copied().find(|n| *n == s).ok_or_else(|| {
        format!(
            "{:?} is not a boot artifact (one of {})",
            crate::ids::short_str(s),
            NAMES.join(", ")
        )
    })
}

/// The TUF target an artifact of `release` is signed as.
pub fn target(release: &ReleaseId, name: &str) -> String {
    format!("boot/{release}/{name}")
}

/// A target path `boot/RELEASE/NAME` taken apart; `None` for any other path.
pub fn parse_target(path: &str) -> Option<(ReleaseId, &'static str)> {
    let rest = path.strip_prefix("boot/")?;
    let (release, name) = rest.split_once('/')?;
    Some((release.parse().ok()?, check_name(name).ok()?))
}

/// Whether `s` is 64 lower-case hex digits (a SHA-256 as a file name under [`REPO_DIR`]).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An Ethernet MAC address, six bytes, written `52:54:00:12:34:56` (lower case, as iPXE's
/// `${net0/mac}` and Linux's `/sys/class/net/*/address` write it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;

    /// Six pairs of hex digits separated by `:` or `-` (either case).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{:?} is not a MAC address (six pairs of hex digits separated by ':', as 52:54:00:12:34:56)",
                crate::ids::short_str(s)
            )
        };
        let sep = if s.contains('-') { '-' } else { ':' };
        let parts: Vec<&str> = s.split(sep).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(&parts) {
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_in_both_forms_and_print_lower_case() {
        let m: Mac = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!("52-54-00-ab-cd-0f".parse::<Mac>().unwrap(), m);
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "52:54:00:ab:cd:0g",
            "5:254:00:ab:cd:0f",
            "52:54-00:ab:cd:0f",
            "525400abcd0f",
            "../etc/passwd",
        ] {
            let e = bad.parse::<Mac>().unwrap_err();
            assert!(e.contains("is not a MAC address"), "{bad}: {e}");
        }
    }

    #[test]
    fn targets_round_trip_and_other_paths_are_none() {
        let r: ReleaseId = "ab".repeat(32).parse().unwrap();
        for n in NAMES {
            assert_eq!(parse_target(&target(&r, n)), Some((r, n)));
        }
        assert_eq!(parse_target(&format!("boot/{r}/passwd")), None);
        assert_eq!(parse_target("boot/abc/vmlinuz"), None);
        assert_eq!(parse_target(&format!("channels/{r}/vmlinuz")), None);
        assert!(
            check_name("../vmlinuz")
                .unwrap_err()
                .contains("not a boot artifact")
        );
        assert!(is_sha256_hex(&"0f".repeat(32)));
        assert!(!is_sha256_hex(&"0F".repeat(32)));
    }
}
