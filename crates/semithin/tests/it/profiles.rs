//! Layered profiles: stacks of layers (channels) composed with overlayfs semantics into the
//! profile's channel, recomposed when a layer moves; package layers made by `image add` and
//! replayed with real apt over a new base (the slow test, against the local mirror on
//! loopback).

use std::path::Path;

use serde_json::Value;

use crate::common::{Env, q, sh};

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// An overlayfs whiteout (a character device 0/0).
fn whiteout(root: &Path, rel: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    sh(&format!("mknod {} c 0 0", q(&p)));
}

fn head(env: &Env, channel: &str) -> Option<String> {
    let v = env.json(&["channel", "list"]);
    v.as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == channel)
        .map(|c| c["head"].as_str().unwrap().to_owned())
}

/// Every path of a checkout (relative), sorted.
fn paths(root: &Path) -> Vec<String> {
    let out = sh(&format!("cd {} && find . -mindepth 1 | sort", q(root)));
    out.lines()
        .map(|l| l.trim_start_matches("./").to_owned())
        .collect()
}

/// A base and file layers: whiteouts remove, an opaque directory hides what is below it, the
/// upper layer wins and the paths two layers provide are listed (or refused by the profile);
/// a layer that moves recomposes the profiles above it; a file layer that changes dpkg's
/// database, an unknown or cyclic stack and a damaged definition are refused, changing nothing.
#[test]
fn file_layers_compose_as_overlayfs_and_follow_their_layers() {
    let env = Env::new();
    let base = env.path("base");
    write(&base, "etc/hostname", "template\n");
    write(&base, "etc/motd", "base motd\n");
    write(&base, "usr/bin/tool", "v1\n");
    write(&base, "opt/app/a", "a\n");
    write(&base, "opt/app/b", "b\n");
    write(&base, "var/lib/dpkg/status", "Package: base-files\n");
    env.commit("os/base", &base);

    let files = env.path("files");
    write(&files, "etc/motd", "lab motd\n");
    whiteout(&files, "etc/hostname");
    write(&files, "opt/app/c", "c\n");
    sh(&format!(
        "setfattr -n trusted.overlay.opaque -v y {}",
        q(&files.join("opt/app"))
    ));
    write(&files, "srv/x/readme", "x\n");
    env.commit("lab/files", &files);

    env.ok(&["profile", "set", "lab", "--layers", "os/base,lab/files"]);
    let out = env.run(&[
        "profile",
        "set",
        "room",
        "--extends",
        "lab",
        "--layers",
        "room/203",
        "--conflicts",
        "refuse",
    ]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the layer room/203 has no version yet"),
        "{err}"
    );
    let e = env.fails(&["profile", "compose", "room"]);
    assert!(
        e.contains("the layer \"room/203\" has no version yet"),
        "{e}"
    );
    assert_eq!(head(&env, "profiles/room"), None);

    // lab alone.
    let v = env.json(&["profile", "compose", "lab"]);
    let o = &v[0]["outcome"];
    assert_eq!(o["channel"], "profiles/lab");
    assert!(o["commit"].is_string(), "{v:#}");
    let kinds: Vec<&str> = o["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["base", "files"]);
    let co = env.path("co-lab");
    env.ok(&["checkout", "profiles/lab", co.to_str().unwrap()]);
    assert_eq!(
        paths(&co),
        [
            "etc",
            "etc/motd",
            "opt",
            "opt/app",
            "opt/app/c",
            "srv",
            "srv/x",
            "srv/x/readme",
            "usr",
            "usr/bin",
            "usr/bin/tool",
            "var",
            "var/lib",
            "var/lib/dpkg",
            "var/lib/dpkg/status"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(co.join("etc/motd")).unwrap(),
        "lab motd\n"
    );
    let xattrs = sh(&format!("getfattr -d -m - {} 2>&1", q(&co.join("opt/app"))));
    assert!(
        !xattrs.contains("overlay"),
        "the opaque mark stayed: {xattrs}"
    );

    // room: a path lab/files provides too, refused by the profile, then listed.
    let room = env.path("room");
    write(&room, "etc/motd", "room 203\n");
    write(&room, "etc/room", "203\n");
    let out = env.run(&["commit", "--channel", "room/203", room.to_str().unwrap()]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("profile room was not composed again")
            && err.contains("/etc/motd: room/203 hides lab/files"),
        "{err}"
    );
    let e = env.fails(&["profile", "compose", "room"]);
    assert!(
        e.contains("1 path(s) provided by two layers")
            && e.contains("/etc/motd: room/203 hides lab/files"),
        "{e}"
    );
    assert_eq!(head(&env, "profiles/room"), None);
    env.ok(&["profile", "set", "room", "--conflicts", "list"]);
    let v = env.json(&["profile", "compose", "room"]);
    let c = &v[0]["outcome"]["conflicts"];
    assert_eq!(
        c,
        &serde_json::json!([{"path": "etc/motd", "lower": "lab/files", "upper": "room/203"}])
    );
    let co = env.path("co-room");
    env.ok(&["checkout", "profiles/room", co.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(co.join("etc/motd")).unwrap(),
        "room 203\n"
    );
    assert!(co.join("etc/room").is_file() && co.join("srv/x/readme").is_file());

    let list = env.json(&["profile", "list"]);
    let states: Vec<(&str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("lab", "up-to-date"), ("room", "up-to-date")]);

    // The base moves: both profiles are composed again by the commit itself.
    let (lab_before, room_before) = (
        head(&env, "profiles/lab").unwrap(),
        head(&env, "profiles/room").unwrap(),
    );
    write(&base, "usr/bin/tool", "v2\n");
    let new_base = env.commit("os/base", &base);
    let lab_after = head(&env, "profiles/lab").unwrap();
    let room_after = head(&env, "profiles/room").unwrap();
    assert_ne!(lab_after, lab_before);
    assert_ne!(room_after, room_before);
    let show: Value = env.json(&["show", &lab_after]);
    assert_eq!(show["parent"], lab_before.as_str());
    assert!(
        show["message"]
            .as_str()
            .unwrap()
            .contains(&format!("Layer: os/base {new_base}")),
        "{show:#}"
    );
    let co = env.path("co-room2");
    env.ok(&["checkout", "profiles/room", co.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(co.join("usr/bin/tool")).unwrap(),
        "v2\n"
    );
    // Nothing moved since: nothing to commit.
    let out = env.ok(&["profile", "compose"]);
    assert!(
        out.contains("lab: up to date") && out.contains("room: up to date"),
        "{out}"
    );
    assert_eq!(head(&env, "profiles/lab").unwrap(), lab_after);

    let tree = env.ok(&["profile", "tree"]);
    assert_eq!(
        tree,
        "os/base\n└─ lab/files\n   ├─ => profile lab (profiles/lab)\n   └─ room/203\n      └─ => profile room (profiles/room)\n"
    );
    let show = env.json(&["profile", "show", "room"]);
    let layers: Vec<(&str, &str)> = show["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["channel"].as_str().unwrap(), l["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        layers,
        [
            ("os/base", "base"),
            ("lab/files", "files"),
            ("room/203", "files")
        ]
    );

    // A profile's channel as the base of another: a move below composes both, in turn.
    env.ok(&[
        "profile",
        "set",
        "kiosk",
        "--layers",
        "profiles/lab,room/203",
    ]);
    env.ok(&["profile", "compose", "kiosk"]);
    let kiosk_before = head(&env, "profiles/kiosk").unwrap();
    write(&base, "usr/bin/tool", "v3\n");
    env.commit("os/base", &base);
    let kiosk_after = head(&env, "profiles/kiosk").unwrap();
    assert_ne!(kiosk_after, kiosk_before);
    let co = env.path("co-kiosk");
    env.ok(&["checkout", "profiles/kiosk", co.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(co.join("usr/bin/tool")).unwrap(),
        "v3\n"
    );
    env.ok(&["profile", "remove", "kiosk"]);

    // A file layer that changes dpkg's database is refused, naming the path.
    let bad = env.path("bad");
    write(&bad, "var/lib/dpkg/status", "Package: fake\n");
    env.commit("bad/dpkg", &bad);
    env.ok(&["profile", "set", "bad", "--layers", "os/base,bad/dpkg"]);
    let e = env.fails(&["profile", "compose", "bad"]);
    assert!(
        e.contains("the file layer \"bad/dpkg\" changes /var/lib/dpkg/status"),
        "{e}"
    );
    assert_eq!(head(&env, "profiles/bad"), None);
    env.ok(&["profile", "remove", "bad"]);

    // Stacks that cannot be: nothing stored changes.
    let before = std::fs::read_to_string(env.repo.join("profiles/lab.toml")).unwrap();
    let e = env.fails(&["profile", "set", "lab", "--extends", "room"]);
    assert!(
        e.contains("`extends` makes a cycle: lab -> room -> lab"),
        "{e}"
    );
    let e = env.fails(&[
        "profile",
        "set",
        "x",
        "--extends",
        "nope",
        "--layers",
        "a/b",
    ]);
    assert!(e.contains("no profile named \"nope\""), "{e}");
    let e = env.fails(&["profile", "set", "Lab", "--layers", "os/base"]);
    assert!(e.contains("not a profile name"), "{e}");
    let e = env.fails(&["profile", "set", "y", "--layers", "os/base,os/base"]);
    assert!(e.contains("\"os/base\" is named twice"), "{e}");
    let e = env.fails(&[
        "profile",
        "set",
        "z",
        "--layers",
        "os/base",
        "--machines",
        "a=b=c",
    ]);
    assert!(e.contains("--machines"), "{e}");
    let e = env.fails(&["profile", "compose", "rooom"]);
    assert!(
        e.contains("no profile named \"rooom\" (did you mean room?)"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(env.repo.join("profiles/lab.toml")).unwrap(),
        before
    );
    assert!(!env.repo.join("profiles/x.toml").exists());
    std::fs::write(env.repo.join("profiles/broken.toml"), "layers = 3\n").unwrap();
    let e = env.fails(&["profile", "list"]);
    assert!(
        e.contains("broken.toml") && e.contains("profile \"broken\""),
        "{e}"
    );
    std::fs::remove_file(env.repo.join("profiles/broken.toml")).unwrap();
    env.fsck_ok();
}

/// Several profiles on one server, machines mapped to them by label selectors: `profile
/// assign` moves each profile's machines to its channel (they update to its composition), and
/// selectors that would give a machine two profiles are refused before anything changes.
#[test]
fn machines_are_mapped_to_profiles_by_selectors() {
    use crate::fleet::{Agent, Server, image, wait_updated};
    let s = Server::start();
    let base = s.path("base");
    image(&base, 1, 3);
    s.ok(&["commit", "-c", "os/base", base.to_str().unwrap()]);
    for room in ["203", "204"] {
        let d = s.path(&format!("room{room}"));
        write(&d, "etc/room", &format!("{room}\n"));
        s.ok(&[
            "commit",
            "-c",
            &format!("rooms/{room}"),
            d.to_str().unwrap(),
        ]);
        s.ok(&[
            "profile",
            "set",
            &format!("room-{room}"),
            "--layers",
            &format!("os/base,rooms/{room}"),
            "--machines",
            &format!("room={room}"),
            "--publish",
            "auto",
        ]);
    }
    let v: Value = serde_json::from_str(&s.ok(&["profile", "compose", "--json"])).unwrap();
    let releases: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            assert_eq!(o["published"], true, "{o:#}");
            o["outcome"]["commit"].as_str().unwrap().to_owned()
        })
        .collect();
    let mut agents = Vec::new();
    for (name, room) in [("pc-1", "203"), ("pc-2", "203"), ("pc-3", "204")] {
        let (st, t) = s.post(
            "/api/v1/admin/tokens",
            &serde_json::json!({"preauthorized": true, "labels": {"room": room}, "uses": 1}),
        );
        assert_eq!(st, 200, "{t}");
        let a = Agent::new(&s, name, t["token"].as_str().unwrap());
        assert!(a.once().success(), "{}", a.log());
        agents.push(a);
    }

    // A selector that takes every machine overlaps the other profile: nothing is assigned.
    s.ok(&["profile", "set", "room-204", "--machines", "*"]);
    let out = s.cli(&["profile", "assign"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("is selected by profile \"room-203\" and by profile \"room-204\""),
        "{e}"
    );
    assert!(s.machines().iter().all(|m| m["channel"].is_null()));

    s.ok(&["profile", "set", "room-204", "--machines", "room=204"]);
    let out = s.ok(&["profile", "assign"]);
    assert!(
        out.contains("profile room-203 (room=203) -> profiles/room-203: 2 machine(s) moved"),
        "{out}"
    );
    for (a, release) in agents
        .iter()
        .zip([&releases[0], &releases[0], &releases[1]])
    {
        assert!(a.once().success(), "{}", a.log());
        wait_updated(&s, &a.name, release, 20);
    }
    assert_eq!(s.machine("pc-3")["channel"], "profiles/room-204");

    // The base moves (an update of its tool): both profiles are composed again and published
    // by their policy, and their machines update to the new composition, sent as little.
    let before = s.stats();
    write(&base, "usr/bin/tool", "#!/bin/sh\necho v2, with a fix\n");
    let out = s.ok(&["commit", "-c", "os/base", base.to_str().unwrap()]);
    assert!(
        out.contains("published as the release of profiles/room-203"),
        "{out}"
    );
    let v: Value = serde_json::from_str(&s.ok(&["profile", "list", "--json"])).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|p| p["state"] == "up-to-date"),
        "{v:#}"
    );
    for a in &agents {
        let channel = s.machine(&a.name)["channel"].as_str().unwrap().to_owned();
        let head: Value = serde_json::from_str(&s.ok(&["show", &channel, "--json"])).unwrap();
        let release = head["commit"].as_str().unwrap().to_owned();
        assert!(!releases.contains(&release));
        assert!(a.once().success(), "{}", a.log());
        wait_updated(&s, &a.name, &release, 20);
    }
    let after = s.stats();
    let sent = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    let size = base_size(&base);
    assert!(
        sent("object_bytes_sent") + sent("delta_bytes_sent") < size / 4,
        "3 machines were sent {} + {} bytes for an update of a {size}-byte image",
        sent("object_bytes_sent"),
        sent("delta_bytes_sent")
    );
}

/// The bytes of the regular files below `root`.
fn base_size(root: &Path) -> u64 {
    sh(&format!("du -sb --apparent-size {} | cut -f1", q(root)))
        .trim()
        .parse()
        .unwrap()
}
