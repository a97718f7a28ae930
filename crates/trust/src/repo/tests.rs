use super::config::DAY;
use super::*;
use crate::client::{self, Client, Fetcher, Limits};

const NOW: i64 = 1_800_000_000;

struct Files;

impl Fetcher for Files {
    fn fetch(&self, url: &str, _max: u64) -> Result<Option<Vec<u8>>> {
        let p = url.strip_prefix("file://").unwrap();
        Ok(std::fs::read(p).ok())
    }
}

/// A trust directory with one published target, and a client trusting its first root.
fn setup() -> (tempfile::TempDir, TrustRepo, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("trust");
    init(&dir, &[d.path().join("root.key")], 1, NOW).unwrap();
    let mut t = TrustRepo::open(&dir).unwrap();
    t.publish("channels/a", b"one", serde_json::json!({"n": 1}), NOW)
        .unwrap();
    let cdir = d.path().join("client");
    client::init(
        &cdir,
        &std::fs::read(dir.join("metadata/1.root.json")).unwrap(),
    )
    .unwrap();
    (d, t, cdir)
}

/// What a client finds as target `channels/a`, at time `now`.
fn client_sees(t: &TrustRepo, cdir: &Path, now: i64) -> Result<Vec<u8>> {
    let m = format!("file://{}", t.dir().join("metadata").display());
    let mut c = Client::new(cdir, &m, &Files, Limits::default(), now)?;
    c.refresh()?;
    let info = c.find_target("channels/a")?.expect("published");
    let base = format!("file://{}", t.dir().join("targets").display());
    let p = c.download_target("channels/a", &info, &base, &cdir.join("out"))?;
    Ok(std::fs::read(p).unwrap())
}

#[test]
fn durations() {
    assert_eq!(parse_duration("90d"), Some(90 * DAY));
    assert_eq!(parse_duration("12h"), Some(12 * 3600));
    assert_eq!(parse_duration("45s"), Some(45));
    for bad in ["", "d", "0d", "-1d", "1.5d", "1w", "12", "99999999999999d"] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
    assert_eq!(format_duration(DAY), "1d");
    assert_eq!(format_duration(90 * 60), "90m");
    assert_eq!(parse_duration(&format_duration(3601)), Some(3601));
}

#[test]
fn consistent_target_paths() {
    assert_eq!(
        target_file_path("channels/lab/stable", "ab"),
        "channels/lab/ab.stable"
    );
    assert_eq!(target_file_path("x", "ab"), "ab.x");
}

#[test]
fn versions_skip_files_a_crash_left_behind() {
    let (_d, mut t, cdir) = setup();
    // An interrupted publish wrote targets and snapshot but no timestamp.
    let m = t.dir().join("metadata");
    std::fs::write(m.join("7.targets.json"), b"partial").unwrap();
    std::fs::write(m.join("5.snapshot.json"), b"partial").unwrap();
    let timestamp = t.timestamp().signed.version;
    let r = t
        .publish("channels/a", b"two", serde_json::json!({"n": 2}), NOW)
        .unwrap();
    let versions: Vec<(String, u64)> = r
        .written
        .iter()
        .map(|w| (w.role.clone(), w.version))
        .collect();
    assert_eq!(
        versions,
        [
            ("targets".into(), 8),
            ("snapshot".into(), 6),
            ("timestamp".into(), timestamp + 1)
        ]
    );
    assert_eq!(client_sees(&t, &cdir, NOW).unwrap(), b"two");
}

#[test]
fn an_interrupted_rotation_is_finished_by_the_next_command() {
    let (d, mut t, cdir) = setup();
    let root_key = [d.path().join("root.key")];
    let keys = t.dir().join("keys");
    let old_key = std::fs::read(keys.join("timestamp.key")).unwrap();
    let old_ts = std::fs::read(t.dir().join("metadata/timestamp.json")).unwrap();
    let old_version = t.timestamp().signed.version;
    t.rotate(Role::Timestamp, &root_key, &[], None, NOW)
        .unwrap();
    // Put back what a crash right after writing the new root would have left: the new key
    // still pending, the old key and the timestamp it signed.
    std::fs::rename(keys.join("timestamp.key"), keys.join("timestamp.key.new")).unwrap();
    std::fs::write(keys.join("timestamp.key"), &old_key).unwrap();
    std::fs::write(t.dir().join("metadata/timestamp.json"), &old_ts).unwrap();
    let mut t = TrustRepo::open(t.dir()).unwrap();
    let s = t.status(NOW);
    assert!(!s.roles["timestamp"].signed);
    assert!(s.warnings.iter().any(|w| w.contains("timestamp")), "{s:?}");
    assert!(client_sees(&t, &cdir, NOW).is_err());
    // refresh notices, takes the pending key and re-signs.
    let r = t.refresh(false, NOW).unwrap();
    assert!(r.reasons["timestamp"].contains("not signed"), "{r:?}");
    assert!(!keys.join("timestamp.key.new").exists());
    assert!(t.status(NOW).roles["timestamp"].signed);
    assert_eq!(client_sees(&t, &cdir, NOW).unwrap(), b"one");
    // The crashed rotation never wrote its new timestamp: the repair has that version.
    assert_eq!(t.timestamp().signed.version, old_version + 1);
}

#[test]
fn clients_follow_every_rotation() {
    let (d, mut t, cdir) = setup();
    // The client trusts metadata signed with the keys about to be replaced.
    assert_eq!(client_sees(&t, &cdir, NOW).unwrap(), b"one");
    let mut root_key = d.path().join("root.key");
    for (n, role) in [Role::Targets, Role::Snapshot, Role::Timestamp, Role::Root]
        .into_iter()
        .enumerate()
    {
        let new_key = d.path().join(format!("root{n}.key"));
        let new: &[PathBuf] = if role == Role::Root {
            std::slice::from_ref(&new_key)
        } else {
            &[]
        };
        let r = t
            .rotate(role, std::slice::from_ref(&root_key), new, None, NOW)
            .unwrap();
        assert_ne!(r.old_keyids, [r.new_keys[0].keyid.clone()]);
        assert_eq!(client_sees(&t, &cdir, NOW).unwrap(), b"one", "after {role}");
        if role == Role::Root {
            root_key = new_key;
        }
    }
    assert_eq!(t.root().signed.version, 5);
    // The old root key no longer signs; the new one does.
    let old = [d.path().join("root.key")];
    assert!(matches!(
        t.rotate(Role::Timestamp, &old, &[], None, NOW),
        Err(Error::KeyFile { .. })
    ));
    t.rotate(Role::Timestamp, &[root_key], &[], None, NOW)
        .unwrap();
    assert_eq!(client_sees(&t, &cdir, NOW).unwrap(), b"one");
}

#[test]
fn a_root_threshold_of_two_needs_both_keys() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("trust");
    let keys = [d.path().join("a.key"), d.path().join("b.key")];
    assert!(init(&dir, &keys, 3, NOW).is_err());
    assert!(!dir.exists() && !keys[0].exists());
    init(&dir, &keys, 2, NOW).unwrap();
    let mut t = TrustRepo::open(&dir).unwrap();
    t.publish("channels/a", b"one", serde_json::json!({}), NOW)
        .unwrap();
    let cdir = d.path().join("client");
    client::init(
        &cdir,
        &std::fs::read(dir.join("metadata/1.root.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(client_sees(&t, &cdir, NOW).unwrap(), b"one");
    let err = t
        .rotate(Role::Timestamp, &keys[..1], &[], None, NOW)
        .unwrap_err();
    assert!(err.to_string().contains("threshold is 2"), "{err}");
    // The same key twice is still one key.
    let twice = [keys[0].clone(), keys[0].clone()];
    assert!(t.rotate(Role::Timestamp, &twice, &[], None, NOW).is_err());
    assert_eq!(t.root().signed.version, 1);
    t.rotate(Role::Timestamp, &keys, &[], None, NOW).unwrap();
    // Down to one new root key: signed by both old keys and the new one.
    let c = d.path().join("c.key");
    t.rotate(Role::Root, &keys, std::slice::from_ref(&c), Some(1), NOW)
        .unwrap();
    assert_eq!(t.root().signed.roles["root"].threshold, 1);
    assert_eq!(t.root().signed.version, 3);
    assert_eq!(client_sees(&t, &cdir, NOW).unwrap(), b"one");
    t.rotate(Role::Snapshot, &[c], &[], None, NOW).unwrap();
    assert_eq!(client_sees(&t, &cdir, NOW).unwrap(), b"one");
}

#[test]
fn refresh_follows_half_lifetimes() {
    let (_d, mut t, cdir) = setup();
    assert!(t.refresh(false, NOW).unwrap().written.is_empty());
    // 13 hours later, less than half a day is left on the timestamp.
    let later = NOW + 13 * 3600;
    let r = t.refresh(false, later).unwrap();
    assert_eq!(r.written.len(), 1);
    assert_eq!(r.written[0].role, "timestamp");
    // 16 days later the snapshot too; 46 the targets; the root warns after half a year.
    // (the channel assignments live as long as the snapshot and are renewed with it)
    let r = t.refresh(false, NOW + 16 * DAY).unwrap();
    let roles: Vec<&str> = r.written.iter().map(|w| w.role.as_str()).collect();
    assert_eq!(roles, ["assignments", "snapshot", "timestamp"]);
    let r = t.refresh(false, NOW + 46 * DAY).unwrap();
    let roles: Vec<&str> = r.written.iter().map(|w| w.role.as_str()).collect();
    assert_eq!(roles, ["assignments", "targets", "snapshot", "timestamp"]);
    assert!(r.warnings.is_empty());
    assert_eq!(client_sees(&t, &cdir, NOW + 46 * DAY).unwrap(), b"one");
    let r = t.refresh(false, NOW + 200 * DAY).unwrap();
    assert!(r.warnings[0].contains("root expires"), "{r:?}");
}

/// What `semithin serve` does: snapshot and timestamp only, at its own margin, never targets
/// (whose key it does not even read), also long after everything expired.
#[test]
fn refresh_roles_renews_only_the_roles_given() {
    let (_d, mut t, cdir) = setup();
    let server = [Role::Snapshot, Role::Timestamp];
    // a quarter of a day left on the timestamp is not yet due at a margin of 0.2 ...
    let r = t
        .refresh_roles(&server, 0.2, false, NOW + 18 * 3600)
        .unwrap();
    assert!(r.written.is_empty(), "{r:?}");
    // ... at 20 hours it is
    let r = t
        .refresh_roles(&server, 0.2, false, NOW + 20 * 3600)
        .unwrap();
    assert_eq!(r.written.len(), 1);
    assert!(r.reasons["timestamp"].contains("less than 20%"), "{r:?}");
    // 100 days later, all three expired: snapshot and timestamp renewed, targets left, and
    // without its key
    std::fs::remove_file(t.dir().join("keys/targets.key")).unwrap();
    let later = NOW + 100 * DAY;
    let r = t.refresh_roles(&server, 0.5, false, later).unwrap();
    let roles: Vec<&str> = r.written.iter().map(|w| w.role.as_str()).collect();
    assert_eq!(roles, ["assignments", "snapshot", "timestamp"]);
    assert!(r.reasons["snapshot"].contains("expired"), "{r:?}");
    let e = client_sees(&t, &cdir, later).unwrap_err().to_string();
    assert!(e.contains("targets: expired"), "{e}");
    let s = t.status(later);
    assert!(s.roles["targets"].expires_in < 0);
    assert!(s.roles["timestamp"].expires_in > 0);
    // a set of roles that would leave a dependent one stale, or a margin out of range, is refused
    for (roles, left) in [
        (&[Role::Snapshot][..], 0.5),
        (&server[..], 1.0),
        (&server[..], 0.0),
    ] {
        assert!(t.refresh_roles(roles, left, false, later).is_err());
    }
    // without the timestamp key: an error naming the file
    std::fs::remove_file(t.dir().join("keys/timestamp.key")).unwrap();
    let e = t
        .refresh_roles(&server, 0.5, false, later + DAY)
        .unwrap_err()
        .to_string();
    assert!(e.contains("timestamp.key"), "{e}");
}

#[test]
fn a_release_allows_only_releases_signed_before_and_a_client_sees_them() {
    let (_d, mut t, cdir) = setup();
    let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
    t.publish_release("lab", b"first", &ChannelRelease::new(&a), NOW)
        .unwrap();
    // b was never a release: allowing it is refused, and nothing is written
    let version = t.targets().signed.version;
    let r = ChannelRelease {
        commit: c.clone(),
        allowed: vec![b.clone()],
        rollout: Some("r1".into()),
    };
    let e = t.publish_release("lab", b"third", &r, NOW).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("release {b} was never signed")),
        "{e}"
    );
    assert_eq!(t.targets().signed.version, version);
    t.publish_release("lab", b"second", &ChannelRelease::new(&b), NOW)
        .unwrap();
    assert_eq!(
        t.signed_releases().unwrap(),
        BTreeSet::from([a.clone(), b.clone()])
    );
    let r = ChannelRelease {
        commit: c.clone(),
        allowed: vec![b.clone(), a.clone(), c.clone()],
        rollout: Some("r1".into()),
    };
    let rep = t.publish_release("lab", b"third", &r, NOW).unwrap();
    assert_eq!(rep.custom["allowed"], serde_json::json!([a, b]));
    // the client reads the same from what it verified
    let m = format!("file://{}", t.dir().join("metadata").display());
    let mut cl = Client::new(&cdir, &m, &Files, Limits::default(), NOW).unwrap();
    cl.refresh().unwrap();
    let info = cl.find_target("channels/lab").unwrap().unwrap();
    let seen = ChannelRelease::from_custom(info.custom.as_ref()).unwrap();
    assert_eq!(seen.commit, c);
    assert!(seen.permits(&a) && seen.permits(&b) && !seen.permits(&"d".repeat(64)));
    assert_eq!(seen.rollout.as_deref(), Some("r1"));
    // a plain release afterwards allows nothing else
    t.publish_release("lab", b"third", &ChannelRelease::new(&c), NOW)
        .unwrap();
    let mut cl = Client::new(&cdir, &m, &Files, Limits::default(), NOW).unwrap();
    cl.refresh().unwrap();
    let info = cl.find_target("channels/lab").unwrap().unwrap();
    let seen = ChannelRelease::from_custom(info.custom.as_ref()).unwrap();
    assert!(!seen.permits(&a) && seen.rollout.is_none());
}

/// The channel a client finds signed for `machine`, at time `now`.
fn client_assignment(
    t: &TrustRepo,
    cdir: &Path,
    machine: &str,
    now: i64,
) -> Result<Option<String>> {
    let m = format!("file://{}", t.dir().join("metadata").display());
    let mut c = Client::new(cdir, &m, &Files, Limits::default(), now)?;
    c.refresh()?;
    Ok(c.find_target(&assign::target_path(machine))?
        .map(|info| assign::channel_of(&info).unwrap()))
}

#[test]
fn signed_assignments_move_machines_and_touch_only_their_bins() {
    let (_d, mut t, cdir) = setup();
    assert!(t.assignments_enabled(), "trust init sets them up");
    assert_eq!(client_assignment(&t, &cdir, "m1", NOW).unwrap(), None);
    let changes = BTreeMap::from([
        ("m1".to_owned(), Some("lab/a".to_owned())),
        ("m2".to_owned(), Some("lab/b".to_owned())),
    ]);
    let r = t.sign_assignments(&changes, NOW).unwrap();
    assert_eq!((r.changed, r.bins), (2, 2));
    assert_eq!(
        client_assignment(&t, &cdir, "m1", NOW).unwrap().as_deref(),
        Some("lab/a")
    );
    assert_eq!(
        client_assignment(&t, &cdir, "m2", NOW).unwrap().as_deref(),
        Some("lab/b")
    );
    assert_eq!(client_assignment(&t, &cdir, "m3", NOW).unwrap(), None);
    // the same again signs nothing
    let before = t.timestamp().signed.version;
    assert_eq!(t.sign_assignments(&changes, NOW).unwrap().changed, 0);
    assert_eq!(t.timestamp().signed.version, before);
    // a move and a removal
    let r = t
        .sign_assignments(
            &BTreeMap::from([
                ("m1".to_owned(), Some("lab/b".to_owned())),
                ("m2".to_owned(), None),
            ]),
            NOW + 10,
        )
        .unwrap();
    assert_eq!(r.changed, 2);
    assert_eq!(
        client_assignment(&t, &cdir, "m1", NOW + 10)
            .unwrap()
            .as_deref(),
        Some("lab/b")
    );
    assert_eq!(client_assignment(&t, &cdir, "m2", NOW + 10).unwrap(), None);
    assert_eq!(
        t.assignments().unwrap(),
        BTreeMap::from([("m1".into(), "lab/b".into())])
    );
    // a publish keeps them, and the channel's release is found as before
    t.publish("channels/a", b"two", serde_json::json!({"n": 2}), NOW + 20)
        .unwrap();
    assert_eq!(client_sees(&t, &cdir, NOW + 20).unwrap(), b"two");
    assert_eq!(
        client_assignment(&t, &cdir, "m1", NOW + 20)
            .unwrap()
            .as_deref(),
        Some("lab/b")
    );
    // old versions of a bin go, the one before the current stays for clients in the middle
    let bin = crate::metadata::SuccinctRoles {
        keyids: vec![],
        threshold: 1,
        bit_length: 8,
        name_prefix: assign::ROLE.into(),
        extra: Default::default(),
    }
    .role_for(&assign::target_path("m1"));
    let versions = files::versions_of(&t.dir().join("metadata"), &bin).unwrap();
    assert_eq!(versions.len(), 2, "{bin}: {versions:?}");
    // the server renews them with the snapshot; 40 days on, the client still finds them
    t.refresh_roles(
        &[Role::Snapshot, Role::Timestamp],
        0.5,
        false,
        NOW + 16 * DAY,
    )
    .unwrap();
    t.refresh_roles(
        &[Role::Snapshot, Role::Timestamp],
        0.5,
        false,
        NOW + 32 * DAY,
    )
    .unwrap();
    let r = t
        .refresh_roles(
            &[Role::Snapshot, Role::Timestamp],
            0.5,
            false,
            NOW + 40 * DAY,
        )
        .unwrap();
    assert!(!r.reasons.contains_key(assign::ROLE), "{r:?}");
    assert_eq!(
        client_assignment(&t, &cdir, "m1", NOW + 40 * DAY)
            .unwrap()
            .as_deref(),
        Some("lab/b")
    );
}

#[test]
fn the_assignments_key_signs_nothing_but_assignments() {
    let (_d, mut t, cdir) = setup();
    // Whoever holds the assignments key (the server) puts a channel's release in a bin, with a
    // snapshot and timestamp that list it: a client looking for that channel never sees it.
    let bin_name = format!("{}-00", assign::ROLE);
    let mut bin = t.read_delegated(&bin_name).unwrap().signed;
    bin.version += 1;
    bin.targets.insert(
        "channels/evil".into(),
        crate::metadata::TargetFile {
            length: 3,
            hashes: BTreeMap::from([("sha256".into(), sha256_hex(b"bad"))]),
            custom: None,
            extra: Default::default(),
        },
    );
    let akey = KeyPair::load(&t.dir().join("keys/assignments.key")).unwrap();
    let signed = sign_as(&bin_name, &bin, &[&akey]).unwrap();
    let delegated = vec![(bin_name, signed)];
    let keys = t.online_keys(&[Role::Snapshot, Role::Timestamp]).unwrap();
    let pending = t
        .seal(
            None,
            delegated,
            &keys[&Role::Snapshot],
            &keys[&Role::Timestamp],
            NOW,
        )
        .unwrap();
    t.write_delegated(pending).unwrap();
    let m = format!("file://{}", t.dir().join("metadata").display());
    let mut c = Client::new(&cdir, &m, &Files, Limits::default(), NOW).unwrap();
    c.refresh().unwrap();
    assert_eq!(c.find_target("channels/evil").unwrap(), None);
    assert!(c.find_target("channels/a").unwrap().is_some());
}

#[test]
fn assignments_without_their_key_are_refused_naming_the_file() {
    let (_d, mut t, _cdir) = setup();
    std::fs::remove_file(t.dir().join("keys/assignments.key")).unwrap();
    let e = t
        .sign_assignments(
            &BTreeMap::from([("m1".to_owned(), Some("lab/a".to_owned()))]),
            NOW,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("assignments.key"), "{e}");
    // bad names are refused before anything is signed
    let key = KeyPair::generate().unwrap();
    key.save(&t.dir().join("keys/assignments.key")).unwrap();
    let e = t
        .sign_assignments(
            &BTreeMap::from([("m1".to_owned(), Some("lab/a".to_owned()))]),
            NOW,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("not the key the targets role delegates"), "{e}");
}

#[test]
fn the_assignments_key_rotates_and_clients_follow() {
    let (_d, mut t, cdir) = setup();
    let m1 = BTreeMap::from([("m1".to_owned(), Some("lab/a".to_owned()))]);
    t.sign_assignments(&m1, NOW).unwrap();
    assert_eq!(
        client_assignment(&t, &cdir, "m1", NOW).unwrap().as_deref(),
        Some("lab/a")
    );
    let key = t.dir().join("keys/assignments.key");
    let old = std::fs::read(&key).unwrap();
    t.rotate_assignments_key(NOW + 10).unwrap();
    let first = std::fs::read(&key).unwrap();
    assert_ne!(first, old, "a new key");
    assert!(!t.dir().join("keys/assignments.key.new").exists());
    // the client, which trusted the old delegation, follows and still finds the assignment
    assert_eq!(
        client_assignment(&t, &cdir, "m1", NOW + 10)
            .unwrap()
            .as_deref(),
        Some("lab/a")
    );
    // the old key signs nothing any more
    std::fs::write(&key, &old).unwrap();
    let e = t.sign_assignments(&m1, NOW + 20).unwrap_err().to_string();
    assert!(e.contains("not the key the targets role delegates"), "{e}");

    // a rotation cut short after its metadata, before the key was renamed into place: the next
    // signing takes the pending key the delegation names
    let mut t = TrustRepo::open(t.dir()).unwrap();
    std::fs::write(&key, &first).unwrap();
    t.rotate_assignments_key(NOW + 30).unwrap();
    let rotated = std::fs::read(&key).unwrap();
    std::fs::rename(&key, t.dir().join("keys/assignments.key.new")).unwrap();
    std::fs::write(&key, &old).unwrap();
    let moved = BTreeMap::from([("m1".to_owned(), Some("lab/b".to_owned()))]);
    assert_eq!(t.sign_assignments(&moved, NOW + 40).unwrap().changed, 1);
    assert_eq!(std::fs::read(&key).unwrap(), rotated);
    assert_eq!(
        client_assignment(&t, &cdir, "m1", NOW + 40)
            .unwrap()
            .as_deref(),
        Some("lab/b")
    );
}
