//! A capture as a machine uploads it (`captures::check_archive`, with a small unpacked bound),
//! then read as `overlay show` reads it (`bake::list_archive`) and imported as `overlay bake`
//! imports it (`bake::import`). Whatever the bytes, the check refuses them with a reason or
//! accepts an archive that lists with as many entries as it counted; an accepted archive either
//! imports as a commit that reads back whole or is refused by the import.
#![no_main]

use libfuzzer_sys::fuzz_target;
use semithin_fuzz::{check_commit, new_repo, scratch, write_seeds};
use semithin_server::bake;
use semithin_server::captures::check_archive;

fn entry(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_size(data.len() as u64);
    if matches!(kind, tar::EntryType::Char) {
        h.set_device_major(0).unwrap();
        h.set_device_minor(0).unwrap();
    }
    b.append_data(&mut h, path, data).unwrap();
}

/// What an agent sends: /etc with a file, a whiteout and an opaque directory, and a path.
fn capture() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    entry(&mut b, "etc", tar::EntryType::Directory, b"");
    entry(&mut b, "etc/hostname", tar::EntryType::Regular, b"lab-01\n");
    entry(&mut b, "etc/motd", tar::EntryType::Char, b"");
    b.append_pax_extensions([("SCHILY.xattr.trusted.overlay.opaque", b"y".as_slice())])
        .unwrap();
    entry(&mut b, "etc/cron.d", tar::EntryType::Directory, b"");
    entry(
        &mut b,
        "etc/cron.d/backup",
        tar::EntryType::Regular,
        b"0 3 * * * root true\n",
    );
    entry(&mut b, "var/lib/foo/state", tar::EntryType::Regular, b"42");
    b.into_inner().unwrap()
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    vec![(
        "capture.tar.zst".into(),
        zstd::bulk::compress(&capture(), 3).unwrap(),
    )]
}

fuzz_target!(init: write_seeds(seeds()), |data: &[u8]| {
    let dir = scratch();
    let path = dir.path().join("capture.tar.zst");
    std::fs::write(&path, data).unwrap();
    let Ok(checked) = check_archive(&path, 1 << 20) else {
        return;
    };
    let listed = bake::list_archive(&path).expect("an accepted capture lists");
    assert_eq!(listed.len() as u64, checked.entries);
    let repo = new_repo(&dir.path().join("repo"));
    if let Ok(id) = bake::import(&repo, &path, "fuzz") {
        check_commit(&repo.objects, id);
    }
});
