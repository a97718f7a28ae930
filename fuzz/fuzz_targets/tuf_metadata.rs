//! TUF metadata as any server or man in the middle can send it (`Signed::<ROLE>::parse`), and the
//! `custom` field of a channel's target (`ChannelRelease::from_custom`). Parsing never panics;
//! what parses is written back (the envelope a publisher writes) and parses to the same role,
//! whose signed (canonical) bytes are then stable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use semithin_fuzz::write_seeds;
use semithin_trust::metadata::{RoleMeta, Root, Signed, Snapshot, Targets, Timestamp, envelope};
use semithin_trust::release::ChannelRelease;

fn round_trip<T: RoleMeta + PartialEq>(role: &str, data: &[u8]) {
    let Ok(s) = Signed::<T>::parse(role, data) else {
        return;
    };
    let again = envelope(&s.signed, &s.signatures).expect("parsed metadata is written back");
    let back = Signed::<T>::parse(role, &again).expect("written metadata parses");
    assert!(back.signed == s.signed, "the role changed on a round trip");
    assert_eq!(back.signatures.len(), s.signatures.len());
    // Written once, the signed bytes are stable. (Not always the received ones: a field left
    // out takes its default, as a root's `consistent_snapshot`, and is then written; signatures
    // are checked over the bytes received, never over a re-serialisation.)
    let twice = envelope(&back.signed, &back.signatures).expect("written again");
    let third = Signed::<T>::parse(role, &twice).expect("parses again");
    assert_eq!(
        third.canonical, back.canonical,
        "the signed bytes are not stable"
    );
}

fn custom(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(r) = ChannelRelease::from_custom(Some(&v)) else {
        return;
    };
    assert!(r.permits(&r.commit));
    let back = ChannelRelease::from_custom(Some(&r.to_custom("c", 1))).expect("written back");
    assert_eq!(back, r);
}

/// Metadata of every role, as a fresh trust directory holds it.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = semithin_fuzz::scratch();
    let t = dir.path().join("trust");
    semithin_trust::repo::init(&t, &[dir.path().join("root.key")], 1, 1_800_000_000).unwrap();
    let mut out = Vec::new();
    for (sel, name) in [
        (0u8, "1.root.json"),
        (1, "timestamp.json"),
        (2, "1.snapshot.json"),
        (3, "1.targets.json"),
    ] {
        let mut s = vec![sel];
        s.extend(std::fs::read(t.join("metadata").join(name)).unwrap());
        out.push((name.to_owned(), s));
    }
    let mut c = vec![4u8];
    c.extend(br#"{"commit":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","channel":"x","published":1,"allowed":["bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"],"rollout":"r-1"}"#);
    out.push(("custom".into(), c));
    out
}

fuzz_target!(init: write_seeds(seeds()), |data: &[u8]| {
    let Some((m, rest)) = data.split_first() else { return };
    match m % 5 {
        0 => round_trip::<Root>("root", rest),
        1 => round_trip::<Timestamp>("timestamp", rest),
        2 => round_trip::<Snapshot>("snapshot", rest),
        3 => round_trip::<Targets>("targets", rest),
        _ => custom(rest),
    }
});
