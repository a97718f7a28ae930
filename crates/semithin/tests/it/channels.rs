//! Channels and their history: versions newest first, references, rollbacks that are recorded
//! and never rewrite history, diffs, cherry-picks, and what a commit reports.

use std::path::Path;

use serde_json::{Value, json};

use crate::common::*;

/// Commits SOURCE to CHANNEL with a message; returns the commit id.
fn commit_msg(env: &Env, channel: &str, source: &Path, message: &str) -> String {
    let v = env.json(&[
        "commit",
        "-c",
        channel,
        "-m",
        message,
        source.to_str().unwrap(),
    ]);
    v["commit"].as_str().unwrap().to_owned()
}

/// Sets every mtime below DIR (and its own) to one fixed time, so only the changes a test makes
/// on purpose show up.
fn fixed_times(dir: &Path) {
    sh(&format!(
        "find {} -exec touch -h -d @1700000000 {{}} +",
        q(dir)
    ));
}

fn write(dir: &Path, rel: &str, text: &str) {
    std::fs::write(dir.join(rel), text).unwrap();
}

/// Three versions on `lab/stable`, each changing files; returns their ids, oldest first.
fn three_versions(env: &Env) -> [String; 3] {
    let src = env.path("src");
    sh(&format!(
        "mkdir -p {0}/etc && echo 1 > {0}/etc/version && echo keep > {0}/etc/keep",
        q(&src)
    ));
    let c1 = commit_msg(env, "lab/stable", &src, "first");
    write(&src, "etc/version", "2\n");
    write(&src, "etc/added", "new in 2\n");
    let c2 = commit_msg(env, "lab/stable", &src, "second");
    write(&src, "etc/version", "3\n");
    std::fs::remove_file(src.join("etc/keep")).unwrap();
    let c3 = commit_msg(env, "lab/stable", &src, "third");
    [c1, c2, c3]
}

fn commit_of(env: &Env, reference: &str) -> String {
    env.json(&["show", reference])["commit"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn strs(v: &Value, key: &str) -> Vec<Value> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x[key].clone())
        .collect()
}

#[test]
fn log_lists_versions_newest_first_and_references_resolve() {
    let env = Env::new();
    let [c1, c2, c3] = three_versions(&env);
    assert!(c1 != c2 && c2 != c3 && c1 != c3);
    let log = env.json(&["log", "--channel", "lab/stable"]);
    assert_eq!(log.as_array().unwrap().len(), 1, "{log:#}");
    assert_eq!(log[0]["channel"], "lab/stable");
    let versions = &log[0]["versions"];
    assert_eq!(
        strs(versions, "commit"),
        [json!(c3), json!(c2), json!(c1)],
        "{log:#}"
    );
    assert_eq!(
        strs(versions, "parent"),
        [json!(c2), json!(c1), Value::Null]
    );
    assert_eq!(
        strs(versions, "message"),
        [json!("third"), json!("second"), json!("first")]
    );
    assert_eq!(
        env.json(&["log", "-c", "lab/stable", "-n", "1"])[0]["versions"][0]["commit"],
        json!(c3)
    );

    assert_eq!(commit_of(&env, "lab/stable"), c3);
    assert_eq!(commit_of(&env, "lab/stable~"), c2);
    assert_eq!(commit_of(&env, "lab/stable~1"), c2);
    assert_eq!(commit_of(&env, "lab/stable~2"), c1);
    let first = env.json(&["show", "lab/stable~2"]);
    assert_eq!(first["message"], "first");
    assert_eq!(first["parent"], Value::Null);
    // A unique prefix of an id, in either case, and a whole id; ~N works after an id too.
    assert_eq!(commit_of(&env, c1.get(..8).unwrap()), c1);
    assert_eq!(commit_of(&env, &c1.get(..8).unwrap().to_uppercase()), c1);
    assert_eq!(commit_of(&env, &c1), c1);
    assert_eq!(commit_of(&env, &format!("{}~2", c3.get(..10).unwrap())), c1);
    // Text output names the commit and its parent.
    let text = env.ok(&["show", "lab/stable~1"]);
    assert!(
        text.starts_with(&format!("commit {c2}\nparent {c1}\n")) && text.contains("second"),
        "{text}"
    );
}

#[test]
fn a_rollback_is_a_recorded_move_and_history_is_never_rewritten() {
    let env = Env::new();
    let [c1, c2, c3] = three_versions(&env);
    let before = env.json(&["channel", "log", "lab/stable"]);
    assert_eq!(before.as_array().unwrap().len(), 3, "{before:#}");

    let out = env.ok(&[
        "channel",
        "set",
        "lab/stable",
        "lab/stable~2",
        "-m",
        "bad update",
    ]);
    assert_eq!(
        out,
        format!(
            "lab/stable: {} -> {}\n",
            c3.get(..12).unwrap(),
            c1.get(..12).unwrap()
        )
    );
    let moves = env.json(&["channel", "log", "lab/stable"]);
    let m = moves.as_array().unwrap();
    assert_eq!(m.len(), 4, "{moves:#}");
    assert_eq!(
        strs(&moves, "kind"),
        [
            json!("commit"),
            json!("commit"),
            json!("commit"),
            json!("set")
        ]
    );
    assert_eq!(
        strs(&moves, "commit"),
        [json!(c1), json!(c2), json!(c3), json!(c1)]
    );
    assert_eq!(
        strs(&moves, "previous"),
        [Value::Null, json!(c1), json!(c2), json!(c3)]
    );
    assert_eq!(m[3]["note"], "bad update");
    // The earlier moves are untouched, times included, in the same order.
    assert_eq!(m.get(..3).unwrap(), before.as_array().unwrap().as_slice());
    assert_eq!(commit_of(&env, "lab/stable"), c1);
    let log = env.json(&["log", "--channel", "lab/stable"]);
    assert_eq!(strs(&log[0]["versions"], "commit"), [json!(c1)]);
    // Versions after the rollback build on the version rolled back to; c2 and c3 stay readable.
    let src = env.path("src2");
    sh(&format!("mkdir -p {0} && echo 4 > {0}/v", q(&src)));
    let c4 = commit_msg(&env, "lab/stable", &src, "fourth");
    assert_eq!(env.json(&["show", &c4])["parent"], json!(c1));
    let moves = env.json(&["channel", "log", "lab/stable"]);
    assert_eq!(moves.as_array().unwrap().len(), 5);
    assert_eq!(&moves.as_array().unwrap()[..4], m);
    assert_eq!(commit_of(&env, &c3), c3);
    let out = env.path("out");
    env.ok(&["checkout", &c3, out.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(out.join("etc/version")).unwrap(),
        "3\n"
    );
    env.fsck_ok();
}

#[test]
fn diff_lists_exactly_what_changed() {
    let env = Env::new();
    let src = env.path("src");
    sh(&format!(
        "set -e; mkdir -p {0} && cd {0} && for f in chmod chown content removed replaced same xattr; \
         do echo $f > $f; done",
        q(&src)
    ));
    fixed_times(&src);
    let a = env.commit("os", &src);
    sh(&format!(
        "set -e; cd {} && echo added > added && chmod 600 chmod && chown 1000:1000 chown \
         && echo 'other content' > content && rm removed \
         && rm replaced && mkdir replaced && echo 1 > replaced/one && echo 2 > replaced/two \
         && setfattr -n user.note -v hi xattr",
        q(&src)
    ));
    fixed_times(&src);
    let b = env.commit("os", &src);
    let diff = env.json(&["diff", &a, &b]);
    assert_eq!(
        diff,
        json!([
            {"path": "added", "change": "added", "type": "file"},
            {"path": "chmod", "change": "modified", "type": "file", "fields": ["mode"]},
            {"path": "chown", "change": "modified", "type": "file", "fields": ["uid", "gid"]},
            {"path": "content", "change": "modified", "type": "file", "fields": ["content"]},
            {"path": "removed", "change": "removed", "type": "file"},
            {"path": "replaced", "change": "type-changed", "type": "dir"},
            {"path": "replaced/one", "change": "added", "type": "file"},
            {"path": "replaced/two", "change": "added", "type": "file"},
            {"path": "xattr", "change": "modified", "type": "file", "fields": ["xattrs"]},
        ]),
        "{diff:#}"
    );
    // The other way round, and the text summary.
    let back = env.json(&["diff", &b, &a]);
    assert_eq!(
        back[0],
        json!({"path": "added", "change": "removed", "type": "file"})
    );
    assert_eq!(
        back[5],
        json!({"path": "replaced", "change": "type-changed", "type": "file"})
    );
    let text = env.ok(&["diff", &a, &b]);
    assert!(text.contains("M chown (uid, gid)\n"), "{text}");
    assert!(
        text.ends_with("3 added, 1 removed, 4 modified, 1 changed type\n"),
        "{text}"
    );
    assert_eq!(env.json(&["diff", &b, &b]), json!([]));
}

#[test]
fn cherry_pick_applies_one_change_and_refuses_conflicts() {
    let env = Env::new();
    let base = env.path("base");
    sh(&format!(
        "mkdir -p {0} && echo 'x base' > {0}/x && echo 'y base' > {0}/y && echo z > {0}/z",
        q(&base)
    ));
    fixed_times(&base);
    let b0 = commit_msg(&env, "a", &base, "base");
    env.ok(&["channel", "set", "b", &b0]);
    // On a: change x.
    let on_a = env.path("on-a");
    sh(&format!("cp -a {} {}", q(&base), q(&on_a)));
    write(&on_a, "x", "x from a\n");
    fixed_times(&on_a);
    let c1 = commit_msg(&env, "a", &on_a, "fix x");
    // On b: change y.
    let on_b = env.path("on-b");
    sh(&format!("cp -a {} {}", q(&base), q(&on_b)));
    write(&on_b, "y", "y from b\n");
    fixed_times(&on_b);
    let c2 = commit_msg(&env, "b", &on_b, "tune y");

    let r = env.json(&["cherry-pick", &c1, "--onto", "b"]);
    assert_eq!(r["channel"], "b");
    assert_eq!(r["parent"], json!(c2));
    assert_eq!(r["picked"], json!(c1));
    let picked = r["commit"].as_str().unwrap().to_owned();
    let show = env.json(&["show", "b"]);
    assert_eq!(show["commit"], json!(picked));
    assert_eq!(show["parent"], json!(c2));
    assert_eq!(
        show["message"],
        format!("cherry-pick {}: fix x", c1.get(..12).unwrap())
    );
    let moves = env.json(&["channel", "log", "b"]);
    assert_eq!(
        strs(&moves, "kind"),
        [json!("set"), json!("commit"), json!("cherry-pick")]
    );
    assert_eq!(moves[2]["previous"], json!(c2));
    assert_eq!(moves[2]["commit"], json!(picked));
    // Both changes are there, and nothing else changed.
    let expected = env.path("expected");
    sh(&format!("cp -a {} {}", q(&on_b), q(&expected)));
    write(&expected, "x", "x from a\n");
    fixed_times(&expected);
    let out = env.path("out");
    env.ok(&["checkout", "b", out.to_str().unwrap()]);
    assert_same_tree(&expected, &out);
    assert_eq!(
        env.json(&["diff", &c2, "b"]),
        json!([{"path": "x", "change": "modified", "type": "file", "fields": ["content"]}])
    );
    // Channel a is untouched.
    assert_eq!(commit_of(&env, "a"), c1);

    // b changes x its own way; picking c1 again conflicts on x and moves nothing.
    write(&expected, "x", "x from b\n");
    fixed_times(&expected);
    let c3 = commit_msg(&env, "b", &expected, "x for b");
    let moves = env.json(&["channel", "log", "b"]);
    let err = env.fails(&["cherry-pick", &c1, "--onto", "b"]);
    assert!(
        err.contains(
            "cherry-pick conflicts on 1 path(s):\n  x (changed differently on both sides)"
        ),
        "{err}"
    );
    assert_eq!(env.json(&["channel", "log", "b"]), moves, "b moved");
    assert_eq!(commit_of(&env, "b"), c3);
    env.fsck_ok();
}

/// Bytes of regular-file content below DIR, each inode once.
fn content_bytes(dir: &Path) -> u64 {
    sh(&format!(
        "find {} -type f -printf '%i %s\\n' | sort -u | awk '{{s += $2}} END {{print s}}'",
        q(dir)
    ))
    .trim()
    .parse()
    .unwrap()
}

#[test]
fn commit_reports_what_it_stored() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    let total = content_bytes(&src);
    let files: u64 = sh(&format!("find {} -type f | wc -l", q(&src)))
        .trim()
        .parse()
        .unwrap();

    let first = env.json(&["commit", "-c", "os", src.to_str().unwrap()]);
    for field in [
        "commit",
        "files",
        "new_bytes",
        "shared_bytes",
        "stored_bytes",
    ] {
        assert!(!first[field].is_null(), "{field} missing: {first:#}");
    }
    assert_eq!(first["commit"].as_str().unwrap().len(), 64);
    assert_eq!(first["files"], files, "{first:#}");
    assert_eq!(first["parent"], Value::Null);
    let new = first["new_bytes"].as_u64().unwrap();
    let shared = first["shared_bytes"].as_u64().unwrap();
    // Within one version, identical files are stored once: the four copies of usr/bin/tool.
    assert!(new > 3_000_000 && shared > 0, "{first:#}");
    assert_eq!(new + shared, total, "{first:#}");
    assert!(first["stored_bytes"].as_u64().unwrap() > 0);

    // Without --json: the id alone on the first line, then the summary.
    let text = env.ok(&["commit", "-c", "os", src.to_str().unwrap()]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let id = lines[0];
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{text}"
    );
    assert_eq!(commit_of(&env, "os"), id);
    assert!(lines[1].starts_with("new version on os: "), "{text}");
    assert!(
        lines[2].starts_with("stored 0 B new (")
            && lines[2].contains(" on disk after compression), ")
            && lines[2].ends_with(" already stored; 0 new chunks, 0 new trees"),
        "{text}"
    );

    // The identical tree again: nothing new but the commit itself.
    let again = env.json(&["commit", "-c", "os", src.to_str().unwrap()]);
    assert_eq!(again["new_bytes"], 0, "{again:#}");
    assert_eq!(again["new_chunks"], 0, "{again:#}");
    assert_eq!(again["new_trees"], 0, "{again:#}");
    assert_eq!(again["shared_bytes"], total, "{again:#}");
    assert_eq!(again["parent"], json!(id));
    assert_eq!(again["files"], files);
    let stored = again["stored_bytes"].as_u64().unwrap();
    assert!(
        stored > 0 && stored < 4096,
        "only the commit object: {again:#}"
    );
    env.fsck_ok();
}

#[test]
fn diff_reports_hardlink_changes() {
    let env = Env::new();
    let src = env.path("src");
    sh(&format!(
        "mkdir -p {s} && cd {s} && echo x > a && echo x > b && touch -d @1600000000 a b && echo y > c && ln c d",
        s = q(&src)
    ));
    env.commit("h", &src);
    // b becomes a second name of a; d stops being one of c's.
    sh(&format!(
        "cd {} && rm b && ln a b && rm d && cp -p c d && touch -d @1600000000 . ",
        q(&src)
    ));
    env.commit("h", &src);
    let diff = env.json(&["diff", "h~1", "h"]);
    let with_links: Vec<&str> = diff
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["fields"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "hardlinks"))
        })
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(with_links, ["a", "b", "c", "d"], "{diff:#}");
}
