//! gc removes what no channel reaches, keeps everything else, and survives being killed.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn pack_bytes(env: &Env) -> u64 {
    sh(&format!(
        "du -sb {} | cut -f1",
        q(&env.repo.join("objects/packs"))
    ))
    .trim()
    .parse()
    .unwrap()
}

#[test]
fn gc_frees_a_removed_channel_and_keeps_the_rest() {
    let env = Env::new();
    let keep = env.path("keep");
    sample_tree(&keep);
    env.commit("keep", &keep);
    let scratch = env.path("scratch");
    sh(&format!(
        "mkdir -p {s} && head -c 4000000 /dev/urandom > {s}/only-here",
        s = q(&scratch)
    ));
    env.commit("scratch", &scratch);
    // Nothing is garbage while the channel exists.
    let gc = env.json(&["gc"]);
    assert_eq!(gc["removed_objects"], 0, "{gc:#}");
    let err = env.fails(&["channel", "remove", "scratch"]);
    assert!(err.contains("--yes"), "{err}");
    env.ok(&["channel", "remove", "scratch", "--yes"]);
    let before = pack_bytes(&env);
    let gc = env.json(&["gc"]);
    assert!(gc["removed_objects"].as_u64().unwrap() >= 3, "{gc:#}");
    assert!(
        pack_bytes(&env) + 3_900_000 < before,
        "gc did not free the 4 MB only the removed channel used"
    );
    env.fsck_ok();
    let out = env.path("out");
    env.ok(&["checkout", "keep", out.to_str().unwrap()]);
    assert_same_tree(&keep, &out);
}

#[test]
fn gc_killed_at_any_moment_leaves_a_valid_repository() {
    let env = Env::new();
    let keep = env.path("keep");
    sample_tree(&keep);
    // Several packs with live and dead objects mixed, so gc has packs to rewrite.
    for i in 0..4 {
        sh(&format!(
            "head -c 3000000 /dev/urandom > {}",
            q(&keep.join(format!("var-{i}")))
        ));
        env.commit("keep", &keep);
        let scratch = env.path(&format!("scratch{i}"));
        sh(&format!(
            "mkdir -p {s} && head -c 3000000 /dev/urandom > {s}/f",
            s = q(&scratch)
        ));
        env.commit(&format!("scratch/{i}"), &scratch);
        env.ok(&["channel", "remove", &format!("scratch/{i}"), "--yes"]);
    }
    for delay_ms in [1u64, 5, 15, 40] {
        let mut child = Command::new(BIN)
            .arg("--repo")
            .arg(&env.repo)
            .arg("gc")
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
        env.fsck_ok();
    }
    env.json(&["gc"]);
    env.fsck_ok();
    let out = env.path("out");
    env.ok(&["checkout", "keep", out.to_str().unwrap()]);
    assert_same_tree(&keep, &out);
    // Every version of the kept channel is still whole.
    for back in 1..4 {
        let dest = env.path(&format!("back{back}"));
        env.ok(&["checkout", &format!("keep~{back}"), dest.to_str().unwrap()]);
    }
}

#[test]
fn a_published_channel_cannot_be_removed() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    env.commit("lab/stable", &src);
    let key = env.path("root.key");
    env.ok(&["trust", "init", "--root-key", key.to_str().unwrap()]);
    env.ok(&["publish", "lab/stable"]);
    let err = env.fails(&["channel", "remove", "lab/stable", "--yes"]);
    assert!(err.contains("published as a release"), "{err}");
    assert!(env.ok(&["channel", "list"]).contains("lab/stable"));
    env.fsck_ok();
}

/// Regression: a running agent's gc removed packs from the disk but not from its store's index,
/// so a release it got again later (published V1, V2, V3, then V1 once more) was "already there"
/// and never stored: its commit and trees were missing once the agent restarted, which then
/// refused delta packs and failed `agent verify`.
#[test]
fn a_running_agent_stores_whole_a_release_it_gets_again_after_gc() {
    use crate::fleet::{Agent, Server, image, wait_until, wait_updated};
    let s = Server::start();
    let t = s.enroll_token(true);
    let src = s.path("img");
    let mut a = Agent::new(&s, "m1", &t);
    a.spawn();
    wait_until("m1 enrolled", 30, || s.machines().len() == 1);
    s.ok(&["fleet", "assign", "--unpublished", "m1", "lab/stable"]);
    let mut releases = Vec::new();
    for v in 1..=3 {
        image(&src, v, 20);
        let id = s.release(&src, "lab/stable");
        wait_updated(&s, "m1", &id, 60);
        releases.push(id);
    }
    let v1 = releases[0].clone();
    // Keeping one deployment besides the current, the machine dropped v1 and what only it had.
    wait_until("v1's objects collected", 30, || {
        a.log()
            .contains(&format!("removed deployment {}", v1.get(..12).unwrap()))
            && a.log().contains("freed")
    });
    // The same process gets v1 once more.
    s.ok(&["channel", "set", "lab/stable", &v1]);
    s.ok(&["publish", "lab/stable"]);
    wait_updated(&s, "m1", &v1, 60);
    a.stop();
    let repo = a.state.join("repo");
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("--repo")
            .arg(&repo)
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "semithin {args:?}: {text}");
    };
    run(&["show", &v1]);
    run(&["fsck"]);
    let out = a.run(&["verify", "--no-fix"]);
    assert!(
        out.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Restarted, the machine takes the next release as a delta pack again.
    let deltas = |a: &Agent| a.log().matches("applied the delta pack").count();
    let before = deltas(&a);
    a.spawn();
    image(&src, 4, 20);
    let v4 = s.release(&src, "lab/stable");
    wait_updated(&s, "m1", &v4, 60);
    assert!(deltas(&a) > before, "{}", a.log());
}
