//! The TUF client (`Client::refresh`, `find_target`) fed by a hostile repository or man in the
//! middle: a fixture repository with one published target, of which the fuzzer replaces up to
//! three files (any role, any version, delegated roles too). A replacement is either raw bytes
//! or JSON the harness signs with one of the repository's own keys, so the checks behind the
//! signatures (versions, expiry, hashes, lengths, delegations, rotations) are reached as well.
//!
//! Never a panic. And as long as nothing is signed by a real key, the client either fails or
//! finds exactly the target that was published: unsigned bytes cannot change what it trusts.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use semithin_fuzz::{scratch, write_seeds};
use semithin_trust::client::{self, Client, Fetcher, Limits};
use semithin_trust::keys::KeyPair;
use semithin_trust::metadata::{TargetFile, envelope};

const NOW: i64 = 1_800_000_000;
const TARGET: &str = "channels/a";
/// Files the fuzzer may replace or add; the rest are served as published.
const NAMES: [&str; 10] = [
    "2.root.json",
    "3.root.json",
    "timestamp.json",
    "2.snapshot.json",
    "3.snapshot.json",
    "2.targets.json",
    "3.targets.json",
    "1.lab.json",
    "2.lab.json",
    "1.bins-0.json",
];

struct Fixture {
    _dir: tempfile::TempDir,
    files: BTreeMap<String, Vec<u8>>,
    root: Vec<u8>,
    /// Root, timestamp, snapshot and targets keys.
    keys: Vec<KeyPair>,
    target: TargetFile,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> Fixture {
    let dir = scratch();
    let t = dir.path().join("trust");
    let root_key = dir.path().join("root.key");
    semithin_trust::repo::init(&t, &[root_key.clone()], 1, NOW).unwrap();
    let mut repo = semithin_trust::repo::TrustRepo::open(&t).unwrap();
    repo.publish(TARGET, b"release", serde_json::json!({"n": 1}), NOW)
        .unwrap();
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(t.join("metadata")).unwrap() {
        let e = e.unwrap();
        files.insert(
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read(e.path()).unwrap(),
        );
    }
    let mut keys = vec![KeyPair::load(&root_key).unwrap()];
    for role in ["timestamp", "snapshot", "targets"] {
        keys.push(KeyPair::load(&t.join(format!("keys/{role}.key"))).unwrap());
    }
    let root = files["1.root.json"].clone();
    let target = repo.targets().signed.targets[TARGET].clone();
    Fixture {
        _dir: dir,
        files,
        root,
        keys,
        target,
    }
}

struct Files<'a>(&'a BTreeMap<String, Vec<u8>>);

impl Fetcher for Files<'_> {
    fn fetch(&self, url: &str, max_len: u64) -> semithin_trust::Result<Option<Vec<u8>>> {
        let name = url.rsplit('/').next().unwrap_or_default();
        // As the HTTP fetcher: more than the limit is not read.
        Ok(self
            .0
            .get(name)
            .map(|b| b[..b.len().min(max_len as usize)].to_vec()))
    }
}

/// The served files with the fuzzer's changes (records `name u8 | key u8 | len u16le | bytes`,
/// at most three); whether any change carries a real signature (key 1 to 4: root, timestamp,
/// snapshot, targets; the bytes are then the JSON of the signed part).
fn served(f: &Fixture, mut data: &[u8]) -> (BTreeMap<String, Vec<u8>>, bool) {
    let mut files = f.files.clone();
    let mut signed = false;
    for _ in 0..3 {
        let [name, key, l0, l1, rest @ ..] = data else {
            break;
        };
        let n = (u16::from_le_bytes([*l0, *l1]) as usize).min(rest.len());
        let (bytes, rest) = rest.split_at(n);
        data = rest;
        let name = NAMES[*name as usize % NAMES.len()];
        let body = match (*key as usize % 5).checked_sub(1).map(|k| &f.keys[k]) {
            Some(key) => {
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
                    continue;
                };
                let Ok(canonical) = semithin_trust::cjson::to_vec(&v) else {
                    continue;
                };
                signed = true;
                envelope(&v, &[key.sign(&canonical)]).unwrap()
            }
            None => bytes.to_vec(),
        };
        files.insert(name.to_owned(), body);
    }
    (files, signed)
}

fn run(f: &Fixture, data: &[u8]) {
    let (files, signed) = served(f, data);
    let dir = scratch();
    let cdir = dir.path().join("client");
    client::init(&cdir, &f.root).unwrap();
    let fetcher = Files(&files);
    let found = Client::new(
        &cdir,
        "https://repo.invalid/metadata",
        &fetcher,
        Limits::default(),
        NOW,
    )
    .and_then(|mut c| {
        c.refresh()?;
        // A path no role names walks every delegation the fuzzer made up.
        let _ = c.find_target("channels/other/x");
        c.find_target(TARGET)
    });
    if !signed && let Ok(found) = found {
        assert_eq!(
            found.as_ref(),
            Some(&f.target),
            "unsigned bytes changed what is trusted"
        );
    }
    // What was kept is read again by the next run, served the published files.
    let genuine = Files(&f.files);
    if let Ok(mut c) = Client::new(
        &cdir,
        "https://repo.invalid/metadata",
        &genuine,
        Limits::default(),
        NOW,
    ) {
        let _ = c.refresh().and_then(|()| c.find_target(TARGET));
    }
}

fn record(name: &str, key: u8, bytes: &[u8]) -> Vec<u8> {
    let i = NAMES.iter().position(|n| *n == name).unwrap() as u8;
    let mut r = vec![i, key];
    r.extend((bytes.len() as u16).to_le_bytes());
    r.extend(bytes);
    r
}

/// The published files, as raw replacements and as signed parts signed again.
fn seeds(f: &Fixture) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, key, published) in [
        ("timestamp.json", 2, "timestamp.json"),
        ("2.snapshot.json", 3, "2.snapshot.json"),
        ("2.targets.json", 4, "2.targets.json"),
        ("2.root.json", 1, "1.root.json"),
    ] {
        let bytes = &f.files[published];
        let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let signed = serde_json::to_vec(&v["signed"]).unwrap();
        out.push((format!("signed-{name}"), record(name, key, &signed)));
        out.push((format!("raw-{name}"), record(name, 0, bytes)));
    }
    out
}

fuzz_target!(
    init: {
        let f = FIXTURE.get_or_init(fixture);
        write_seeds(seeds(f));
    },
    |data: &[u8]| {
        run(FIXTURE.get_or_init(fixture), data);
    }
);
