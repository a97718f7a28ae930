//! Channel assignments signed end to end (docs/TRUST.md, "Channel assignment"): a machine moves
//! to the channel `fleet assign` gives it once the move is signed, without any setting of its
//! own, and never to a channel a server or a man in the middle names without that signature.

use std::time::{Duration, Instant};

use crate::fleet::{Agent, Server, image};

#[test]
fn a_machine_follows_signed_moves_and_refuses_a_channel_named_without_a_signature() {
    let s = Server::start_args(&["--trust-check-interval", "1"]);
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 3);
    let va = s.release(&src, "lab/a");
    image(&src, 2, 3);
    let src_arg = src.to_str().unwrap();
    s.ok(&["commit", src_arg, "--channel", "lab/b", "--new-channel"]);
    let vb = s.release(&src, "lab/b");
    let a = Agent::new(&s, "m1", &t);
    assert!(a.once().success(), "{}", a.log());
    s.ok(&["fleet", "assign", "m1", "lab/a"]);
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(a.current().as_deref(), Some(va.as_str()));
    assert!(
        a.log().contains("as signed for this machine"),
        "{}",
        a.log()
    );

    // The admin moves it: followed, with no follow_channel_changes in its config.
    s.ok(&["fleet", "assign", "m1", "lab/b"]);
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(a.current().as_deref(), Some(vb.as_str()));
    assert!(
        a.log()
            .contains("following the signed assignment from channel lab/a to lab/b"),
        "{}",
        a.log()
    );

    // A server that names a channel without signing it (its assignments key is gone; a man in
    // the middle is in the same place): the machine refuses, says why, and stays.
    let key = s.repo().join("trust/keys/assignments.key");
    let away = s.path("assignments.key.away");
    std::fs::rename(&key, &away).unwrap();
    let out = s.cli(&["fleet", "assign", "m1", "lab/a"]);
    assert!(!out.status.success(), "the assignment could not be signed");
    assert!(!a.once().success());
    let log = a.log();
    assert!(
        log.contains("names channel \"lab/a\"") && log.contains("signed assignment says \"lab/b\""),
        "{log}"
    );
    assert_eq!(a.current().as_deref(), Some(vb.as_str()));
    let m = s.machine("m1");
    assert!(
        m["report"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("signed assignment says")),
        "{m}"
    );

    // The key back: the server signs what its database says at its next look, and the
    // machine moves.
    std::fs::rename(&away, &key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.current().as_deref() != Some(va.as_str()) {
        assert!(Instant::now() < deadline, "never moved back: {}", a.log());
        std::thread::sleep(Duration::from_millis(500));
        let _ = a.once();
    }

    // The assignments key replaced (targets key only): the server signs with the new one, the
    // machine follows the new delegation and the next move.
    let old = std::fs::read(&key).unwrap();
    let out = s.ok(&["trust", "rotate-assignments"]);
    assert!(out.contains("assignments key rotated"), "{out}");
    assert_ne!(std::fs::read(&key).unwrap(), old);
    s.ok(&["fleet", "assign", "m1", "lab/b"]);
    assert!(a.once().success(), "{}", a.log());
    assert_eq!(a.current().as_deref(), Some(vb.as_str()));
}
