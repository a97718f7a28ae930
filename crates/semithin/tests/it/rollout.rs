//! Rollouts with real agents on loopback (the harness of `fleet.rs`): canary, waves, soak, a
//! health check that fails on purpose halts the rollout, resume, abort and rollback send the
//! machines back, a server restart in the middle, and input refused before anything is signed.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::common::q;
use crate::fleet::{Agent, Server, image, wait_until, wait_updated};

/// Agents m1..mN on `lab/stable`, updated to a first release; each with a health check that
/// fails while `DIR/fail-NAME` exists. Returns (agents, image source, v1).
fn fleet_on_v1(
    s: &Server,
    n: usize,
    label: impl Fn(usize) -> &'static str,
) -> (Vec<Agent>, std::path::PathBuf, String) {
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 20);
    let v1 = s.release(&src, "lab/stable");
    let flags = s.path("flags");
    std::fs::create_dir_all(&flags).unwrap();
    // (the tests move machines between channels with `fleet assign`: they follow the signed
    // assignments, with no setting of their own)
    let mut agents: Vec<Agent> = (1..=n)
        .map(|i| {
            let name = format!("m{i}");
            let flag = flags.join(format!("fail-{name}"));
            let check = format!(
                "test ! -e {} || {{ echo 'fail marker for {name}'; exit 1; }}",
                q(&flag)
            );
            Agent::new(s, &name, &t)
                .arg("--health-check")
                .arg(&check)
                .arg("--label")
                .arg(label(i))
        })
        .collect();
    for a in &mut agents {
        a.spawn();
    }
    wait_until("the machines enrolled", 60, || s.machines().len() == n);
    s.ok(&["fleet", "assign", "*", "lab/stable"]);
    for a in &agents {
        wait_updated(s, &a.name, &v1, 60);
    }
    (agents, src, v1)
}

fn fail_flag(s: &Server, name: &str) -> std::path::PathBuf {
    s.path("flags").join(format!("fail-{name}"))
}

/// A new version committed on the channel, not published.
fn commit(s: &Server, src: &Path, version: u32) -> String {
    std::fs::write(
        src.join("etc/os-release"),
        format!("VERSION_ID={version}\n"),
    )
    .unwrap();
    std::fs::write(src.join(format!("usr/lib/x/v{version}")), "new\n").unwrap();
    let out = s.ok(&[
        "commit",
        src.to_str().unwrap(),
        "--channel",
        "lab/stable",
        "--json",
    ]);
    serde_json::from_str::<Value>(&out).unwrap()["commit"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn rollout(s: &Server, id: i64) -> Value {
    let (st, v) = s.get(&format!("/api/v1/admin/rollouts/{id}"));
    assert_eq!(st, 200, "{v}");
    v
}

/// name → the machine's entry in the rollout's status.
fn machines(r: &Value) -> BTreeMap<String, Value> {
    r["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_owned(), m.clone()))
        .collect()
}

fn in_wave(r: &Value, w: u64) -> Vec<String> {
    machines(r)
        .into_iter()
        .filter(|(_, m)| m["wave"] == json!(w))
        .map(|(n, _)| n)
        .collect()
}

fn wait_state(s: &Server, id: i64, state: &str, secs: u64) -> Value {
    let mut last = Value::Null;
    wait_until(&format!("rollout {id} {state}"), secs, || {
        last = rollout(s, id);
        last["state"] == json!(state)
    });
    last
}

/// The version of the signed targets metadata: it moves with every signature.
/// The version of the targets role the current snapshot names.
fn targets_version(s: &Server) -> u64 {
    let read = |name: &str| -> Value {
        serde_json::from_slice(&std::fs::read(s.repo().join("trust/metadata").join(name)).unwrap())
            .unwrap()
    };
    let snapshot = read("timestamp.json")["signed"]["meta"]["snapshot.json"]["version"]
        .as_u64()
        .unwrap();
    read(&format!("{snapshot}.snapshot.json"))["signed"]["meta"]["targets.json"]["version"]
        .as_u64()
        .unwrap()
}

#[test]
fn canary_waves_a_failing_health_check_halts_resume_then_abort_sends_everyone_back() {
    let s = Server::start();
    let (agents, src, v1) = fleet_on_v1(&s, 8, |_| "room=lab");
    let v2 = commit(&s, &src, 2);
    let args = [
        "rollout",
        "start",
        "lab/stable",
        &v2,
        "--to",
        "room=lab",
        "--canary",
        "1",
        "--waves",
        "50%,100%",
        "--soak",
        "4s",
        "--max-failures",
        "1",
    ];

    // A dry run shows the plan and signs nothing; the real start makes the same plan.
    let before = targets_version(&s);
    let plan: Value =
        serde_json::from_str(&s.ok(&[&args[..], &["--dry-run", "--json"]].concat())).unwrap();
    assert_eq!(targets_version(&s), before, "a dry run signs nothing");
    assert_eq!(plan["id"], 0);
    let canary = in_wave(&plan, 0);
    let wave1 = in_wave(&plan, 1);
    let wave2 = in_wave(&plan, 2);
    // 7 machines after the canary: 50% is 4 (rounded up), the rest 3
    assert_eq!(
        (canary.len(), wave1.len(), wave2.len()),
        (1, 4, 3),
        "{plan:#}"
    );
    assert_eq!(
        plan["allowed"],
        json!([v1]),
        "the machines run v1: it stays allowed"
    );
    let (st, v) = s.get("/api/v1/admin/rollouts");
    assert_eq!(
        (st, v.as_array().unwrap().len()),
        (200, 0),
        "a dry run stores nothing"
    );

    // Two machines of wave 1 will fail their health check on v2.
    let failing = [wave1[0].clone(), wave1[2].clone()];
    for n in &failing {
        std::fs::write(fail_flag(&s, n), "").unwrap();
    }

    let started: Value = serde_json::from_str(&s.ok(&[&args[..], &["--json"]].concat())).unwrap();
    let id = started["id"].as_i64().unwrap();
    assert!(id > 0);
    assert_eq!(in_wave(&started, 0), canary);
    assert_eq!(in_wave(&started, 1), wave1);
    assert!(targets_version(&s) > before, "the release is signed");
    // the signed target names the rollout and allows v1
    let status = s.ok(&["trust", "status", "--json"]);
    let status: Value = serde_json::from_str(&status).unwrap();
    let target = status["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "channels/lab/stable")
        .unwrap()
        .clone();
    assert_eq!(target["custom"]["commit"], json!(v2));
    assert_eq!(target["custom"]["allowed"], json!([v1]));
    assert_eq!(target["custom"]["rollout"], started["uid"]);

    // The canary first; nobody else moves while it updates and soaks.
    wait_updated(&s, &canary[0], &v2, 60);
    let r = rollout(&s, id);
    assert_eq!(r["state"], "running", "{r:#}");
    for n in wave1.iter().chain(&wave2) {
        let m = &machines(&r)[n];
        assert_eq!(
            m["admitted_at"],
            Value::Null,
            "{n} admitted too early: {r:#}"
        );
        assert_eq!(m["told"], json!(v1), "{n} is kept on v1");
    }
    for a in agents.iter().filter(|a| !canary.contains(&a.name)) {
        assert_eq!(a.current().as_deref(), Some(v1.as_str()), "{}", a.name);
    }

    // Wave 1 goes; two of its machines fail and roll back: more than --max-failures 1 halts it.
    let r = wait_state(&s, id, "halted", 120);
    let why = r["reason"].as_str().unwrap();
    assert!(
        why.starts_with("2 of 5 machine(s) admitted failed release"),
        "{why}"
    );
    for n in &failing {
        assert!(why.contains(&format!("fail marker for {n}")), "{why}");
    }
    let ms = machines(&r);
    for n in &failing {
        assert_eq!(ms[n]["state"], "failed", "{r:#}");
    }
    // wave 2 was never admitted: still on v1
    for n in &wave2 {
        assert_eq!(ms[n]["admitted_at"], Value::Null, "{r:#}");
    }
    // the canary stays on v2, the failed machines rolled back to v1, wave 2 never left it;
    // the rest of wave 1 is on v2, or, admitted but not switched yet when it halted, held on v1
    for a in &agents {
        let cur = a.current();
        if canary.contains(&a.name) {
            assert_eq!(cur.as_deref(), Some(v2.as_str()), "{}", a.name);
        } else if failing.contains(&a.name) || wave2.contains(&a.name) {
            assert_eq!(cur.as_deref(), Some(v1.as_str()), "{}", a.name);
            assert_eq!(ms[&a.name]["told"], json!(v1), "{r:#}");
        } else {
            let told = &ms[&a.name]["told"];
            assert!(
                cur.is_some_and(|c| json!(c) == *told || c == v2),
                "{}: {r:#}",
                a.name
            );
        }
    }
    let text = s.ok(&["rollout", "status", &id.to_string()]);
    assert!(
        text.contains("halted") && text.contains("canary") && text.contains("wave 2"),
        "{text}"
    );
    assert!(
        text.contains(&failing[0]) && text.contains("fail marker"),
        "{text}"
    );
    // a halted rollout stays halted
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(rollout(&s, id)["state"], "halted");

    // a plain publish would move everyone at once: refused while the rollout is active
    let out = s.cli(&["publish", "lab/stable"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("rollout {id} is halted")) && err.contains("--force"),
        "{err}"
    );

    // Fixed; resumed: the two failures are accepted and wave 2 is admitted.
    for n in &failing {
        std::fs::remove_file(fail_flag(&s, n)).unwrap();
    }
    let out = s.ok(&["rollout", "resume", &id.to_string()]);
    assert!(out.contains("running"), "{out}");
    for n in &wave2 {
        wait_updated(&s, n, &v2, 60);
    }
    let r = rollout(&s, id);
    assert_eq!(r["state"], "running", "still soaking its last wave: {r:#}");
    let ms = machines(&r);
    for n in &failing {
        assert_eq!(ms[n]["state"], "failure_accepted", "{r:#}");
    }

    // Abort: every machine it admitted goes back to v1; the failed ones are there already.
    let out = s.ok(&["rollout", "abort", &id.to_string(), "--json"]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["state"], "aborted");
    for a in &agents {
        wait_until(&format!("{} back on v1", a.name), 60, || {
            let m = s.machine(&a.name);
            m["report"]["current"] == json!(v1) && a.current().as_deref() == Some(v1.as_str())
        });
    }
    wait_until("the rollout sees everyone back", 30, || {
        machines(&rollout(&s, id))
            .values()
            .all(|m| m["state"] == "back" && m["told"] == json!(v1))
    });
    for m in s.machines() {
        assert_eq!(
            m["target"],
            json!(v1),
            "the server tells {} v1: {m:#}",
            m["name"]
        );
        assert_eq!(m["report"]["current"], json!(v1));
    }
    let shown = s.machine(&canary[0]);
    let events = shown["events"].to_string();
    assert!(
        events.contains("admitted by rollout") && events.contains("sent back"),
        "{events}"
    );
    // abort signed the channel's release before the rollout, v1, again, still naming the
    // rollout; no machine was ever asked for a release its channel's signature did not allow
    let t = signed_target(&s, "lab/stable");
    assert_eq!(t["custom"]["commit"], json!(v1), "{t:#}");
    assert_eq!(t["custom"]["rollout"], started["uid"], "{t:#}");
    for a in &agents {
        assert!(
            !a.log().contains("signed release of channel"),
            "{}",
            a.log()
        );
    }
}

#[test]
fn a_rollout_survives_a_server_restart_holds_the_unselected_and_rollback_sends_everyone_back() {
    let mut s = Server::start();
    let (agents, src, v1) = fleet_on_v1(&s, 6, |i| if i <= 4 { "site=a" } else { "site=b" });
    // a new machine of site b, assigned but not updated yet when the rollout starts: it is held
    // on the channel's release until then, v1, which it has never run
    let t = s.enroll_token(true);
    let mut fresh = Agent::new(&s, "m7", &t).arg("--label").arg("site=b");
    assert!(fresh.once().success(), "{}", fresh.log());
    s.ok(&["fleet", "assign", "m7", "lab/stable"]);
    let v2 = commit(&s, &src, 2);
    let out = s.ok(&[
        "rollout",
        "start",
        "lab/stable",
        &v2,
        "--to",
        "site=a",
        "--canary",
        "1",
        "--waves",
        "100%",
        "--soak",
        "3s",
        "--json",
    ]);
    let r: Value = serde_json::from_str(&out).unwrap();
    let id = r["id"].as_i64().unwrap();
    let held: Vec<String> = machines(&r)
        .into_iter()
        .filter(|(_, m)| m["wave"].is_null())
        .map(|(n, _)| n)
        .collect();
    assert_eq!(held, ["m5", "m6", "m7"]);
    assert_eq!(machines(&r)["m7"]["from"], json!(v1), "{r:#}");
    // it fetches v1 under the rollout's signature (v1's commit object is no target any more)
    fresh.spawn();
    wait_updated(&s, "m7", &v1, 60);
    assert_eq!(fresh.current().as_deref(), Some(v1.as_str()));

    // one active rollout per channel
    let out = s.cli(&["rollout", "start", "lab/stable", &v2, "--to", "site=b"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("rollout {id} on channel lab/stable is running")),
        "{err}"
    );

    // The server is killed once the canary is updated, and started again: the rollout goes on
    // from what it stored.
    let canary = in_wave(&r, 0);
    wait_updated(&s, &canary[0], &v2, 60);
    s.restart();
    for n in ["m1", "m2", "m3", "m4"] {
        wait_updated(&s, n, &v2, 90);
    }
    let r = wait_state(&s, id, "completed", 60);
    let ms = machines(&r);
    for n in &held {
        assert_eq!(ms[n]["state"], "held", "{r:#}");
        assert_eq!(ms[n]["told"], json!(v1));
        assert_eq!(s.machine(n)["target"], json!(v1));
    }
    for a in agents
        .iter()
        .chain([&fresh])
        .filter(|a| held.contains(&a.name))
    {
        assert_eq!(a.current().as_deref(), Some(v1.as_str()));
    }
    let out = s.cli(&["rollout", "abort", &id.to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rollout rollback"));

    // Rollback: the whole selector back to v1.
    let out = s.ok(&["rollout", "rollback", &id.to_string()]);
    assert!(out.contains("rolled_back"), "{out}");
    // the channel is signed at v1 again: a machine that joins it now gets v1
    assert!(
        out.contains(&format!("is signed at {} again", v1.get(..12).unwrap())),
        "{out}"
    );
    assert_eq!(
        signed_target(&s, "lab/stable")["custom"]["commit"],
        json!(v1)
    );
    for a in &agents {
        wait_until(&format!("{} on v1", a.name), 60, || {
            s.machine(&a.name)["report"]["current"] == json!(v1)
                && a.current().as_deref() == Some(v1.as_str())
        });
    }
    // A plain publish afterwards ends the rollout: everyone follows the channel again.
    s.ok(&["publish", "lab/stable", &v2]);
    for a in agents.iter().chain([&fresh]) {
        wait_updated(&s, &a.name, &v2, 60);
    }
    wait_state(&s, id, "superseded", 30);
    let list = s.ok(&["rollout", "status"]);
    assert!(list.contains("superseded"), "{list}");
}

#[test]
fn bad_rollouts_are_refused_with_the_reason_before_anything_is_signed() {
    let s = Server::start();
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 3);
    let v1 = s.release(&src, "lab/stable");
    let before = targets_version(&s);
    let refused = |args: &[&str], want: &str| {
        let out = s.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
    };
    let start = |extra: &[&str]| -> Vec<String> {
        ["rollout", "start", "lab/stable", "lab/stable", "--to", "*"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    // no machine follows the channel yet
    refused(&strs(&start(&[])), "no machines selected");
    let a = Agent::new(&s, "m1", &t);
    assert!(a.once().success(), "{}", a.log());
    s.ok(&["fleet", "assign", "m1", "lab/stable"]);
    for (extra, want) in [
        (&["--waves", "50%,25%,100%"][..], "cumulative"),
        (&["--waves", "50%"], "the last wave must be 100%"),
        (&["--waves", "5%,lots,100%"], "bad percentage"),
        (&["--window", "Mon-Fri 18:00-30:00"], "not a time of day"),
        (&["--window", "Someday 18:00-06:00"], "is not a day"),
        (
            &["--window", "Mon-Fri 18:00-06:00", "--tz", "Europe/Atlantis"],
            "unknown time zone",
        ),
        (&["--tz", "Europe/Madrid"], "give a window too"),
        (&["--max-failures", "many"], "bad --max-failures"),
        (&["--soak", "a while"], "bad --soak"),
        (&["--canary", "nobody"], "canary \"nobody\" is not among"),
        (&["--canary", "5"], "only 1 machine(s) are selected"),
        (&["--max-per-hour", "0"], "admit no machine"),
    ] {
        refused(&strs(&start(extra)), want);
    }
    refused(
        &[
            "rollout",
            "start",
            "lab/stable",
            "lab/stable",
            "--to",
            "site=",
        ],
        "bad label selector",
    );
    refused(
        &[
            "rollout",
            "start",
            "lab/stable",
            "lab/stable",
            "--to",
            "site=nowhere",
        ],
        "no machines selected: site=nowhere matches none of the 1",
    );
    refused(
        &["rollout", "start", "lab/nothing", "lab/stable", "--to", "*"],
        "no channel named \"lab/nothing\"",
    );
    refused(
        &["rollout", "start", "lab/stable", "nosuchref", "--to", "*"],
        "nosuchref",
    );
    // a version of another channel
    std::fs::write(src.join("etc/other"), "other\n").unwrap();
    let out = s.ok(&[
        "commit",
        src.to_str().unwrap(),
        "--channel",
        "lab/other",
        "--json",
    ]);
    let other = serde_json::from_str::<Value>(&out).unwrap()["commit"]
        .as_str()
        .unwrap()
        .to_owned();
    refused(
        &["rollout", "start", "lab/stable", &other, "--to", "*"],
        "has never been on channel lab/stable",
    );
    assert_eq!(targets_version(&s), before, "nothing was signed");
    let (st, v) = s.get("/api/v1/admin/rollouts");
    assert_eq!(
        (st, v.as_array().unwrap().len()),
        (200, 0),
        "nothing was stored: {v}"
    );
    // unknown ids and commands in the wrong state
    refused(&["rollout", "status", "7"], "no rollout has the id 7");
    refused(&["rollout", "pause", "7"], "no rollout has the id 7");
    let (st, v) = s.post("/api/v1/admin/rollouts/x/pause", &json!({}));
    assert_eq!(st, 400, "{v}");
    let (st, v) = s.post(
        "/api/v1/admin/rollouts",
        &json!({"channel": "lab/stable", "release": "abc", "selector": "*"}),
    );
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("not a release"),
        "{v}"
    );
    let (st, v) = s.post(
        "/api/v1/admin/rollouts",
        &json!({"channel": "lab/stable", "release": "0".repeat(64), "selector": "*"}),
    );
    assert_eq!(st, 404, "{v}");
    // a rollout of the release the machine runs: it just completes, and resume is refused
    assert!(a.once().success(), "{}", a.log());
    wait_updated(&s, "m1", &v1, 30);
    let out = s.ok(&["rollout", "start", "lab/stable", &v1, "--to", "*", "--json"]);
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_i64()
        .unwrap();
    wait_state(&s, id, "completed", 30);
    refused(&["rollout", "resume", &id.to_string()], "cannot be resumed");
    refused(&["rollout", "pause", &id.to_string()], "cannot be paused");
}

/// The signed target of a channel, as `trust status` shows it.
fn signed_target(s: &Server, channel: &str) -> Value {
    let status: Value = serde_json::from_str(&s.ok(&["trust", "status", "--json"])).unwrap();
    status["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == json!(format!("channels/{channel}")))
        .unwrap()
        .clone()
}

/// The row of a wave in `rollout status`.
fn wave_row<'a>(text: &'a str, wave: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(wave) && l.starts_with("  "))
        .unwrap_or_else(|| panic!("no row for {wave}: {text}"))
}

#[test]
fn abort_signs_the_earlier_release_back_and_fleet_states_are_true() {
    let s = Server::start();
    let (_agents, src, v1) = fleet_on_v1(&s, 3, |i| if i <= 2 { "site=a" } else { "site=b" });
    let v2 = commit(&s, &src, 2);
    // the canary fails v2, within --max-failures 1; the soak keeps the rollout running
    std::fs::write(fail_flag(&s, "m1"), "").unwrap();
    let out = s.ok(&[
        "rollout",
        "start",
        "lab/stable",
        &v2,
        "--to",
        "site=a",
        "--canary",
        "m1",
        "--soak",
        "1h",
        "--max-failures",
        "1",
        "--json",
    ]);
    let started: Value = serde_json::from_str(&out).unwrap();
    let id = started["id"].as_i64().unwrap();
    let uid = started["uid"].clone();
    wait_until("the canary failed", 90, || {
        machines(&rollout(&s, id))["m1"]["state"] == "failed"
            && s.machine("m1")["report"]["health"] == "failed"
    });

    // The canary row says failed, never "healthy, soak...".
    let text = s.ok(&["rollout", "status", &id.to_string()]);
    let row = wave_row(&text, "canary");
    assert!(
        row.ends_with("failed") && !row.contains("healthy"),
        "{text}"
    );
    assert!(
        text.contains("canary settled with 1 failed (within --max-failures 1); soaking until"),
        "{text}"
    );

    // fleet list: m1 failed with its reason; m3 (outside --to) and m2 (not admitted) are held
    // on v1 while the channel signs v2, not "updated".
    let m = s.machine("m1");
    assert_eq!(m["state"], "failed", "{m:#}");
    assert!(
        m["state_reason"]
            .as_str()
            .unwrap()
            .contains("fail marker for m1"),
        "{m:#}"
    );
    for (n, why) in [
        ("m3", "outside its selector site=a"),
        ("m2", "not admitted yet (wave 1)"),
    ] {
        let m = s.machine(n);
        assert_eq!(m["state"], "held", "{m:#}");
        assert_eq!(m["channel_release"], json!(v2));
        assert_eq!(m["target"], json!(v1));
        let reason = m["state_reason"].as_str().unwrap();
        assert!(
            reason.contains(&format!("rollout {id} (running)")) && reason.contains(why),
            "{m:#}"
        );
    }
    let list = s.ok(&["fleet", "list"]);
    let line = |n: &str| {
        list.lines()
            .find(|l| l.starts_with(&format!("{n} ")))
            .unwrap_or_else(|| panic!("{n}: {list}"))
            .to_owned()
    };
    assert!(line("m1").contains(" failed "), "{list}");
    assert!(
        line("m3").contains(" held ") && !line("m3").contains("updated"),
        "{list}"
    );
    assert!(list.contains("m3: held: rollout"), "{list}");
    assert!(list.contains("m1: failed: "), "{list}");

    // m1, fixed and reassigned to a channel at v1, which it runs since its rollback: its
    // checks run there and pass; it is updated, not "updating (idle)" with health failed.
    std::fs::remove_file(fail_flag(&s, "m1")).unwrap();
    s.ok(&["channel", "set", "lab/other", &v1]);
    s.ok(&["publish", "lab/other"]);
    s.ok(&["fleet", "assign", "m1", "lab/other"]);
    wait_until("m1 healthy on v1", 60, || {
        let m = s.machine("m1");
        m["state"] == "updated" && m["updated"] == json!(true)
    });
    let m = s.machine("m1");
    assert_eq!(m["report"]["health"], "healthy", "{m:#}");
    assert_eq!(m["report"]["current"], json!(v1));
    assert_eq!(
        m["report"]["failed_release"],
        json!(v2),
        "v2 stays failed there: {m:#}"
    );

    // Abort: the channel is signed at v1 again (with the rollout's id, so it still tells its
    // machines where to be), and a machine assigned afterwards gets v1, not v2.
    // Without the repository, the server aborts, and the command fails saying what is left.
    let out = std::process::Command::new(crate::common::BIN)
        .args(["rollout", "abort", &id.to_string()])
        .env("SEMITHIN_SERVER", &s.url)
        .env("SEMITHIN_ADMIN_TOKEN", &s.token)
        .env("HOME", s.path(""))
        .env_remove("SEMITHIN_REPO")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("still signs release {}", v2.get(..12).unwrap()))
            && err.contains(&format!("`semithin rollout abort {id}` again"))
            && err.contains("--repo"),
        "{err}"
    );
    assert_eq!(rollout(&s, id)["state"], "aborted");
    assert_eq!(
        signed_target(&s, "lab/stable")["custom"]["commit"],
        json!(v2)
    );
    // Again where the repository is: the signature is what is left to do.
    let out = s.ok(&["rollout", "abort", &id.to_string()]);
    assert!(out.contains("is aborted now"), "{out}");
    assert!(
        out.contains(&format!("is signed at {} again", v1.get(..12).unwrap())),
        "{out}"
    );
    let t = signed_target(&s, "lab/stable");
    assert_eq!(t["custom"]["commit"], json!(v1), "{t:#}");
    assert_eq!(t["custom"]["rollout"], uid, "{t:#}");
    wait_until("the server reads the new signature", 30, || {
        s.stats()["releases"]["lab/stable"] == json!(v1)
    });
    let tok = s.enroll_token(true);
    let mut late = Agent::new(&s, "m4", &tok);
    assert!(late.once().success(), "{}", late.log());
    s.ok(&["fleet", "assign", "m4", "lab/stable"]);
    late.spawn();
    wait_updated(&s, "m4", &v1, 60);
    assert_eq!(late.current().as_deref(), Some(v1.as_str()));
    for n in ["m2", "m3", "m4"] {
        let m = s.machine(n);
        assert_eq!(m["state"], "updated", "{m:#}");
        assert_eq!(m["report"]["current"], json!(v1), "{m:#}");
    }
    // Again: nothing more to sign.
    let before = signed_target(&s, "lab/stable");
    let out = s.ok(&["rollout", "abort", &id.to_string()]);
    assert!(out.contains("already"), "{out}");
    assert_eq!(signed_target(&s, "lab/stable"), before);
}

#[test]
fn a_rollout_builds_its_packs_before_the_canary_asks_and_its_status_says_so() {
    let s = Server::start();
    let (mut agents, src, v1) = fleet_on_v1(&s, 2, |_| "room=lab");
    // new content that does not compress: its pack takes the server a few seconds
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let big: Vec<u8> = (0..6_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    std::fs::write(src.join("usr/lib/new.bin"), &big).unwrap();
    let v2 = commit(&s, &src, 2);
    let before = s.stats();
    let started: Value = serde_json::from_str(&s.ok(&[
        "rollout",
        "start",
        "lab/stable",
        &v2,
        "--to",
        "room=lab",
        "--canary",
        "1",
        "--waves",
        "100%",
        "--soak",
        "1s",
        "--json",
    ]))
    .unwrap();
    let id = started["id"].as_i64().unwrap();
    let r = rollout(&s, id);
    let waiting = r["waiting"].as_str().unwrap_or("");
    assert!(
        waiting.contains(&format!(
            "the server is building the delta pack(s) from {}",
            v1.get(..12).unwrap()
        )),
        "{r:#}"
    );
    let text = s.ok(&["rollout", "status", &id.to_string()]);
    assert!(text.contains("building the delta pack"), "{text}");
    let r = wait_state(&s, id, "completed", 180);
    assert!(
        !r["waiting"]
            .as_str()
            .unwrap_or("")
            .contains("building the delta pack"),
        "{r:#}"
    );
    for a in &agents {
        assert_eq!(a.current().as_deref(), Some(v2.as_str()), "{}", a.name);
        assert!(a.log().contains("applied the delta pack"), "{}", a.log());
    }
    // every machine got the prepared pack: no object was sent for v2
    let after = s.stats();
    assert_eq!(
        after["object_bytes_sent"], before["object_bytes_sent"],
        "{after}"
    );
    for a in &mut agents {
        a.stop();
    }
}

#[test]
fn rollouts_and_publishes_planned_through_the_api_start_when_the_cli_signs_them_once_never_stale() {
    let s = Server::start();
    let (_agents, src, v1) = fleet_on_v1(&s, 2, |_| "room=lab");
    let v2 = commit(&s, &src, 2);
    let (v1s, v2s) = (v1.get(..12).unwrap(), v2.get(..12).unwrap());
    let before = targets_version(&s);
    let pending = |s: &Server| -> Vec<Value> {
        let (st, v) = s.get("/api/v1/admin/pending");
        assert_eq!(st, 200, "{v}");
        v.as_array().unwrap().clone()
    };
    // bad input: refused with the reason, nothing stored
    for (body, want) in [
        (
            json!({"channel": "lab/stable", "release": v2, "selector": "*", "waves": "50%"}),
            "the last wave must be 100%",
        ),
        (
            json!({"channel": "lab/stable", "release": "f00d", "selector": "*"}),
            "is not a release",
        ),
        (
            json!({"channel": "lab/stable", "release": v2, "selector": "site=nowhere"}),
            "no machines selected",
        ),
    ] {
        let (st, v) = s.post("/api/v1/admin/pending", &body);
        assert!(st == 400 || st == 404, "{body}: {st} {v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{body}: {v}");
    }
    assert!(pending(&s).is_empty());
    // planned: stored awaiting a signature, nothing signed or started
    let (st, p) = s.post(
        "/api/v1/admin/pending",
        &json!({"channel": "lab/stable", "release": v2, "selector": "room=lab",
                "canary": "1", "soak": "1h"}),
    );
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["state"], "awaiting", "{p}");
    assert_eq!(p["base"], json!(v1), "{p}");
    assert_eq!(p["stale"], Value::Null, "{p}");
    let id = p["id"].as_i64().unwrap();
    assert_eq!(targets_version(&s), before, "planning signs nothing");
    assert!(
        s.get("/api/v1/admin/rollouts")
            .1
            .as_array()
            .unwrap()
            .is_empty()
    );
    let listed = s.ok(&["rollout", "pending"]);
    assert!(
        listed.contains(&format!("request {id}: roll {}", v2s)) && listed.contains("[awaiting]"),
        "{listed}"
    );
    // refused: an unknown request, a bad id, no terminal to ask on and no --yes
    let refused = |args: &[&str], want: &str| {
        let out = s.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
    };
    refused(&["rollout", "sign", "999"], "no rollout request 999");
    refused(&["rollout", "sign", &id.to_string()], "pass --yes");
    let (st, v) = s.post("/api/v1/admin/pending/x1/start", &json!({}));
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("not a request id"),
        "{v}"
    );
    assert_eq!(pending(&s)[0]["state"], "awaiting");
    assert_eq!(targets_version(&s), before);
    // signed: shows what it signs, the server starts it, the release is signed
    let out = s.cli(&["rollout", "sign", &id.to_string(), "--yes", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "request {id}: roll {} out on channel lab/stable to room=lab",
            v2s
        )),
        "{err}"
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rid = r["id"].as_i64().unwrap();
    assert_eq!(r["release"], json!(v2));
    assert!(targets_version(&s) > before, "the release was signed");
    let r = wait_state(&s, rid, "running", 30);
    assert_eq!(in_wave(&r, 0).len(), 1, "{r}");
    let p = &pending(&s)[0];
    assert_eq!(p["state"], "started", "{p}");
    assert_eq!(p["rollout"], json!(rid), "{p}");
    // once only
    refused(
        &["rollout", "sign", &id.to_string(), "--yes"],
        &format!("request {id} was signed already: it started rollout {rid}"),
    );
    let (st, v) = s.post(&format!("/api/v1/admin/pending/{id}/start"), &json!({}));
    assert_eq!(st, 409, "{v}");
    s.ok(&["rollout", "abort", &rid.to_string()]);
    wait_state(&s, rid, "aborted", 30);
    // stale: the channel's release moved after it was planned
    let (st, p) = s.post(
        "/api/v1/admin/pending",
        &json!({"channel": "lab/stable", "release": v2, "selector": "*"}),
    );
    assert_eq!(st, 200, "{p}");
    let id2 = p["id"].as_i64().unwrap();
    s.ok(&["publish", "lab/stable"]);
    let (_, p) = s.get(&format!("/api/v1/admin/pending/{id2}"));
    let why = p["stale"].as_str().unwrap_or_default().to_owned();
    assert!(
        why.contains(&format!("channel lab/stable was at {}", v1s))
            && why.contains(&format!("is at {} now", v2s)),
        "{p}"
    );
    let signed = targets_version(&s);
    refused(
        &["rollout", "sign", &id2.to_string(), "--yes"],
        "stale: channel lab/stable",
    );
    let (st, v) = s.post(&format!("/api/v1/admin/pending/{id2}/start"), &json!({}));
    assert_eq!(st, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("plan it again"),
        "{v}"
    );
    assert_eq!(targets_version(&s), signed, "nothing signed");
    assert_eq!(
        s.get("/api/v1/admin/rollouts").1.as_array().unwrap().len(),
        1
    );
    assert_eq!(pending(&s)[0]["state"], "awaiting");
    // the plans and the signature are in the audit log
    let (_, audit) = s.get("/api/v1/admin/audit");
    let paths: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert!(paths.contains(&"/api/v1/admin/pending"), "{audit}");
    assert!(
        paths.contains(&format!("/api/v1/admin/pending/{id}/start").as_str()),
        "{audit}"
    );

    // A publish asked for through the API (the channels page's button), signed by the CLI.
    let v3 = commit(&s, &src, 3);
    let v3s = v3.get(..12).unwrap();
    for (body, status, want) in [
        (
            json!({"channel": "lab/stable", "release": "zz"}),
            400,
            "is not a release",
        ),
        (
            json!({"channel": "Bad Name", "release": v3}),
            400,
            "Bad Name",
        ),
        (
            json!({"channel": "lab/stable", "release": v2}),
            409,
            "channel lab/stable's release already",
        ),
    ] {
        let (st, v) = s.post("/api/v1/admin/pending/publish", &body);
        assert_eq!(st, status, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{body}: {v}");
    }
    let (st, p) = s.post(
        "/api/v1/admin/pending/publish",
        &json!({"channel": "lab/stable", "release": v3}),
    );
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["kind"], "publish", "{p}");
    assert_eq!(p["base"], json!(v2), "{p}");
    let id3 = p["id"].as_i64().unwrap().to_string();
    let listed = s.ok(&["rollout", "pending"]);
    assert!(
        listed.contains(&format!(
            "request {id3}: publish {v3s} as channel lab/stable's release"
        )),
        "{listed}"
    );
    let signed = targets_version(&s);
    refused(&["rollout", "sign", &id3, "--yes"], "is a publish");
    refused(&["publish", "--request", &id3], "pass --yes");
    let (st, v) = s.post(
        &format!("/api/v1/admin/pending/{id3}/published"),
        &json!({}),
    );
    assert_eq!(st, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("channel lab/stable is at"),
        "{v}"
    );
    assert_eq!(targets_version(&s), signed, "nothing signed");
    let out = s.cli(&["publish", "--request", &id3, "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("request {id3}: publish {v3s}")),
        "{err}"
    );
    assert!(targets_version(&s) > signed);
    let (_, p) = s.get(&format!("/api/v1/admin/pending/{id3}"));
    assert_eq!(p["state"], "started", "{p}");
    refused(
        &["publish", "--request", &id3, "--yes"],
        "was signed already",
    );
    // stale: asked to go back to v2, then the channel moved elsewhere first
    let (_, p) = s.post(
        "/api/v1/admin/pending/publish",
        &json!({"channel": "lab/stable", "release": v2}),
    );
    let id4 = p["id"].as_i64().unwrap().to_string();
    s.ok(&["publish", "lab/stable", &v1]);
    let signed = targets_version(&s);
    refused(
        &["publish", "--request", &id4, "--yes"],
        "stale: channel lab/stable",
    );
    assert_eq!(targets_version(&s), signed, "nothing signed");
}
