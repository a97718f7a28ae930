use std::collections::BTreeMap;
use std::io::Read;

use super::*;

/// What an archive holds: path → (type, device numbers, xattrs, content).
type Listing = BTreeMap<
    String,
    (
        tar::EntryType,
        Option<(u32, u32)>,
        Vec<(String, Vec<u8>)>,
        Vec<u8>,
    ),
>;

fn read(archive: &[u8]) -> Listing {
    let dec = zstd::Decoder::new(archive).unwrap();
    let mut ar = tar::Archive::new(dec);
    let mut out = BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let mut xattrs = Vec::new();
        if let Some(x) = e.pax_extensions().unwrap() {
            for r in x {
                let r = r.unwrap();
                if let Some(n) = r.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.push((n.to_owned(), r.value_bytes().to_vec()));
                }
            }
        }
        let h = e.header().clone();
        let dev = match h.entry_type() {
            tar::EntryType::Char | tar::EntryType::Block => Some((
                h.device_major().unwrap().unwrap(),
                h.device_minor().unwrap().unwrap(),
            )),
            _ => None,
        };
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(path, (h.entry_type(), dev, xattrs, data));
    }
    out
}

fn mknod_whiteout(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o000),
        rustix::fs::makedev(0, 0),
    )
    .unwrap();
}

/// An upper directory as overlayfs leaves it: a changed file, a whiteout, an opaque directory,
/// a file with overlayfs's own `origin` xattr, a metacopy file; and an extra path below a
/// sysroot.
fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let upper = dir.join("upper");
    let root = dir.join("root");
    std::fs::create_dir_all(upper.join("ssh")).unwrap();
    std::fs::write(upper.join("hostname"), "lab-01\n").unwrap();
    std::fs::write(upper.join("ssh/sshd_config"), "PermitRootLogin no\n").unwrap();
    mknod_whiteout(&upper.join("motd"));
    std::fs::create_dir(upper.join("cron.d")).unwrap();
    xattr::set(upper.join("cron.d"), "trusted.overlay.opaque", b"y").unwrap();
    std::fs::write(upper.join("cron.d/backup"), "0 3 * * * root true\n").unwrap();
    xattr::set(
        upper.join("hostname"),
        "trusted.overlay.origin",
        b"\x00\x01",
    )
    .unwrap();
    xattr::set(upper.join("hostname"), "user.note", b"kept").unwrap();
    std::fs::write(upper.join("big.conf"), "").unwrap();
    xattr::set(upper.join("big.conf"), "trusted.overlay.metacopy", b"").unwrap();
    std::os::unix::fs::symlink("../usr/share/zoneinfo/UTC", upper.join("localtime")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/foo/sub")).unwrap();
    std::fs::write(root.join("var/lib/foo/sub/state"), "42").unwrap();
    (upper, root)
}

#[test]
fn a_capture_keeps_whiteouts_opaque_dirs_and_extra_paths_and_skips_metacopy() {
    let dir = tempfile::tempdir().unwrap();
    let (upper, root) = fixture(dir.path());
    // a path below another is captured once
    let paths = vec!["/var/lib/foo".to_owned(), "/var/lib/foo/sub".to_owned()];
    let mut out = Vec::new();
    let (s, hash, len) = write(
        &Options {
            etc_upper: &upper,
            root: &root,
            paths: &paths,
            max_bytes: 1 << 20,
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(len as usize, out.len());
    assert_eq!(&hash, blake3::hash(&out).as_bytes());
    let l = read(&out);
    let names: Vec<&str> = l.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "etc",
            "etc/cron.d",
            "etc/cron.d/backup",
            "etc/hostname",
            "etc/localtime",
            "etc/motd",
            "etc/ssh",
            "etc/ssh/sshd_config",
            "var",
            "var/lib",
            "var/lib/foo",
            "var/lib/foo/sub",
            "var/lib/foo/sub/state",
        ]
    );
    let motd = &l["etc/motd"];
    assert_eq!((motd.0, motd.1), (tar::EntryType::Char, Some((0, 0))));
    assert_eq!(
        l["etc/cron.d"].2,
        [("trusted.overlay.opaque".to_owned(), b"y".to_vec())]
    );
    // overlayfs's own bookkeeping is left out, other xattrs kept
    assert_eq!(
        l["etc/hostname"].2,
        [("user.note".to_owned(), b"kept".to_vec())]
    );
    assert_eq!(l["etc/hostname"].3, b"lab-01\n");
    assert_eq!(l["etc/localtime"].0, tar::EntryType::Symlink);
    assert_eq!(l["var/lib/foo/sub/state"].3, b"42");
    assert_eq!((s.whiteouts, s.opaque_dirs), (1, 1));
    assert_eq!(s.entries, 13);
    assert_eq!(s.skipped.len(), 1, "{:?}", s.skipped);
    assert!(
        s.skipped[0].starts_with("etc/big.conf: an overlayfs metacopy entry"),
        "{:?}",
        s.skipped
    );
}

#[test]
fn a_capture_over_its_bound_stops_naming_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (upper, root) = fixture(dir.path());
    std::fs::write(root.join("var/lib/foo/large"), vec![7u8; 4096]).unwrap();
    let paths = vec!["/var/lib/foo".to_owned()];
    let e = write(
        &Options {
            etc_upper: &upper,
            root: &root,
            paths: &paths,
            max_bytes: 1000,
        },
        &mut Vec::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("more than the 1000 bytes"), "{e}");
    assert!(e.contains("capture_max_bytes"), "{e}");
    assert!(e.contains("var/lib/foo/large"), "{e}");
}

#[test]
fn bad_capture_paths_are_refused_before_anything_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let (upper, root) = fixture(dir.path());
    for (p, want) in [
        ("/etc/ssh", "/etc is captured"),
        ("var/lib", "not absolute"),
        ("/var/lib/missing", "does not exist"),
    ] {
        let paths = vec![p.to_owned()];
        let e = write(
            &Options {
                etc_upper: &upper,
                root: &root,
                paths: &paths,
                max_bytes: 1 << 20,
            },
            &mut Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(want), "{p}: {e}");
    }
}

#[test]
fn no_upper_directory_is_no_change_to_etc() {
    let dir = tempfile::tempdir().unwrap();
    let (_, root) = fixture(dir.path());
    let paths = vec!["/var/lib/foo".to_owned()];
    let mut out = Vec::new();
    let (s, _, _) = write(
        &Options {
            etc_upper: &dir.path().join("none"),
            root: &root,
            paths: &paths,
            max_bytes: 1 << 20,
        },
        &mut out,
    )
    .unwrap();
    assert!(!read(&out).keys().any(|k| k.starts_with("etc")));
    assert!(
        s.skipped[0].contains("no local change to /etc"),
        "{:?}",
        s.skipped
    );
}

/// A capture killed on the way left its temporary file: the next capture removes it, and
/// never the file of a capture still running.
#[test]
fn leftovers_of_killed_captures_are_removed() {
    let d = tempfile::tempdir().unwrap();
    // A pid above the kernel's pid_max cannot be running.
    let gone = d.path().join(".capture-4194399.tar.zst");
    let running = d
        .path()
        .join(format!(".capture-{}.tar.zst", std::process::id()));
    let parent = d.path().join(format!(
        ".capture-{}.tar.zst",
        std::os::unix::process::parent_id()
    ));
    let other = d.path().join("state.json");
    for f in [&gone, &running, &parent, &other] {
        std::fs::write(f, b"x").unwrap();
    }
    remove_leftovers(d.path());
    assert!(!gone.exists());
    assert!(running.exists() && parent.exists() && other.exists());
}
