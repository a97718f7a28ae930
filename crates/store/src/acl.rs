//! POSIX ACLs in text form (as GNU tar's `--acls` stores them in `SCHILY.acl.access` and
//! `SCHILY.acl.default`) turned into the binary `system.posix_acl_*` xattr value the kernel uses.

/// Kernel ACL tags (linux/posix_acl.h).
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;
const XATTR_VERSION: u32 = 2;

/// Converts ACL text (`user::rw-\nuser:bob:r--\n...`, entries separated by newlines or commas,
/// `#` comments allowed) to the xattr value. Named qualifiers go through `user` and `group`.
pub fn text_to_xattr(
    text: &str,
    user: &dyn Fn(&str) -> Option<u32>,
    group: &dyn Fn(&str) -> Option<u32>,
) -> Result<Vec<u8>, String> {
    let mut entries: Vec<(u16, u32, u16)> = Vec::new();
    for raw in text.split(['\n', ',']) {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ':');
        let (tag, qual, perms) = match (parts.next(), parts.next(), parts.next()) {
            (Some(t), Some(q), Some(p)) => (t, q, p),
            _ => return Err(format!("ACL entry {line:?} is not TAG:QUALIFIER:PERMS")),
        };
        let mut perm = 0u16;
        for c in perms.trim().chars() {
            perm |= match c {
                'r' => 4,
                'w' => 2,
                'x' => 1,
                '-' => 0,
                _ => return Err(format!("ACL entry {line:?} has a bad permission {c:?}")),
            };
        }
        let id = |resolve: &dyn Fn(&str) -> Option<u32>, kind: &str| -> Result<u32, String> {
            match qual.parse::<u32>() {
                Ok(n) => Ok(n),
                Err(_) => resolve(qual).ok_or_else(|| {
                    format!("ACL names {kind} {qual:?}, which the image does not define")
                }),
            }
        };
        let entry = match (tag, qual.is_empty()) {
            ("user" | "u", true) => (USER_OBJ, UNDEFINED_ID, perm),
            ("user" | "u", false) => (USER, id(user, "user")?, perm),
            ("group" | "g", true) => (GROUP_OBJ, UNDEFINED_ID, perm),
            ("group" | "g", false) => (GROUP, id(group, "group")?, perm),
            ("mask" | "m", true) => (MASK, UNDEFINED_ID, perm),
            ("other" | "o", true) => (OTHER, UNDEFINED_ID, perm),
            _ => return Err(format!("ACL entry {line:?} has an unknown tag")),
        };
        entries.push(entry);
    }
    entries.sort();
    entries.dedup_by(|a, b| (a.0, a.1) == (b.0, b.1));
    let mut out = XATTR_VERSION.to_le_bytes().to_vec();
    for (tag, id, perm) in entries {
        out.extend(tag.to_le_bytes());
        out.extend(perm.to_le_bytes());
        out.extend(id.to_le_bytes());
    }
    Ok(out)
}

/// Looks a name up in passwd or group file content (`name:x:ID:...`).
pub fn lookup_id(db: &[u8], name: &str) -> Option<u32> {
    String::from_utf8_lossy(db).lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.next()?;
        f.next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_kernel_encoding() {
        // What `setfacl -m u:1000:rw` leaves on a 0644 file, as getfattr prints it.
        let expected = hex::decode(concat!(
            "02000000",
            "01000600ffffffff",
            "02000600e8030000",
            "04000400ffffffff",
            "10000600ffffffff",
            "20000400ffffffff"
        ))
        .unwrap();
        let none = |_: &str| None;
        let text = "user::rw-\nuser:1000:rw-\ngroup::r--\nmask::rw-\nother::r--\n";
        assert_eq!(text_to_xattr(text, &none, &none).unwrap(), expected);
        // Order, commas, comments and names do not matter.
        let passwd = b"root:x:0:0::/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\n";
        let user = |n: &str| lookup_id(passwd, n);
        let text = "other::r--,mask::rw-,user:bob:rw-\t#effective:rw-\ngroup::r--\nuser::rw-";
        assert_eq!(text_to_xattr(text, &user, &none).unwrap(), expected);
    }

    #[test]
    fn unknown_names_and_bad_entries_are_named() {
        let none = |_: &str| None;
        let e = text_to_xattr("user:nobody-here:r--", &none, &none).unwrap_err();
        assert!(e.contains("nobody-here"), "{e}");
        assert!(text_to_xattr("user::rwz", &none, &none).is_err());
        assert!(text_to_xattr("weird::r--", &none, &none).is_err());
        assert!(text_to_xattr("user", &none, &none).is_err());
    }
}
