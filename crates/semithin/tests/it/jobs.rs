//! Jobs on real server and agent processes: delivery on check-in woken by push, every machine's
//! result, signed commands only where allowed and trusted, timeouts, cancel, schedules, and a
//! machine that crashes mid-job running it at most once.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fleet::{Agent, Server, wait_until};

/// A job-signing key made by `semithin job keygen`: (file, public key).
fn keygen(s: &Server, name: &str) -> (String, String) {
    let file = s.path(name);
    let public = s.ok(&["job", "keygen", file.to_str().unwrap()]);
    (file.display().to_string(), public.trim().to_owned())
}

/// A machine whose agent runs as a daemon, with these settings in STATE/agent.toml.
fn machine(s: &Server, token: &str, name: &str, toml: &str) -> Agent {
    let mut a = Agent::new(s, name, token);
    std::fs::create_dir_all(&a.state).unwrap();
    std::fs::write(
        a.state.join("agent.toml"),
        format!("job_progress_secs = 1\n{toml}"),
    )
    .unwrap();
    a.spawn();
    a
}

fn wait_seen(s: &Server, names: &[&str]) {
    for n in names {
        wait_until(&format!("{n} checked in"), 60, || {
            s.get(&format!("/api/v1/admin/machines/{n}")).1["last_seen"].is_i64()
        });
    }
}

fn status(s: &Server, id: &str) -> Value {
    serde_json::from_str(&s.ok(&["job", "status", id, "--json"])).unwrap()
}

fn run_of<'a>(st: &'a Value, machine: &str) -> &'a Value {
    st["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["machine"] == machine)
        .unwrap_or_else(|| panic!("no run of {machine}: {st:#}"))
}

/// Waits until every run of the job has a final state; the status.
fn wait_done(s: &Server, id: &str, secs: u64) -> Value {
    let mut last = Value::Null;
    wait_until(&format!("job {id} done"), secs, || {
        last = status(s, id);
        last["runs"].as_array().unwrap().iter().all(|r| {
            !matches!(
                r["state"].as_str().unwrap(),
                "pending" | "delivered" | "running"
            )
        })
    });
    last
}

fn new_job(s: &Server, args: &[&str]) -> String {
    let mut a = vec!["job"];
    a.extend_from_slice(args);
    s.ok(&a).trim().to_owned()
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn jobs_reach_machines_at_once_and_signed_commands_run_only_where_allowed_and_trusted() {
    let s = Server::start();
    let t = s.enroll_token(true);
    let (key, public) = keygen(&s, "admin.key");
    let (other_key, other_public) = keygen(&s, "other.key");
    let _m1 = machine(
        &s,
        &t,
        "m1",
        &format!("allow_commands = true\nadmin_keys = [\"{public}\"]\n"),
    );
    let _m2 = machine(&s, &t, "m2", &format!("admin_keys = [\"{public}\"]\n"));
    let _m3 = machine(
        &s,
        &t,
        "m3",
        &format!("allow_commands = true\nadmin_keys = [\"{other_public}\"]\n"),
    );
    wait_seen(&s, &["m1", "m2", "m3"]);

    // The agents wait in their long polls (300 s): the job reaches them by push, at once.
    let start = Instant::now();
    let id = new_job(
        &s,
        &[
            "run",
            "*",
            "--sign-key",
            &key,
            "--",
            "sh",
            "-c",
            "echo to-stdout; echo to-stderr >&2; exit 3",
        ],
    );
    let st = wait_done(&s, &id, 60);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    let m1 = run_of(&st, "m1");
    assert_eq!(m1["state"], "failed", "{st:#}");
    assert_eq!(m1["exit_code"], 3);
    let out = m1["output"].as_str().unwrap();
    assert!(
        out.contains("to-stdout") && out.contains("to-stderr"),
        "{out}"
    );
    assert!(m1["duration_ms"].is_u64());
    let m2 = run_of(&st, "m2");
    assert_eq!(m2["state"], "refused");
    assert!(
        m2["output"].as_str().unwrap().contains("allow_commands"),
        "{m2}"
    );
    let m3 = run_of(&st, "m3");
    assert_eq!(m3["state"], "refused");
    assert!(
        m3["output"].as_str().unwrap().contains("does not trust"),
        "{m3}"
    );
    assert_eq!(st["job"]["signed_by"], public.as_str());
    // The text form names every machine.
    let text = s.ok(&["job", "status", &id]);
    for n in ["m1", "m2", "m3", "to-stderr"] {
        assert!(text.contains(n), "{text}");
    }

    // A command runs once, however often the machine checks in; argv is not a shell line.
    let marks = s.path("marks");
    let id = new_job(
        &s,
        &[
            "run",
            "m1",
            "--sign-key",
            &key,
            "--",
            "sh",
            "-c",
            &format!("echo ran >> {}", marks.display()),
        ],
    );
    let st = wait_done(&s, &id, 60);
    assert_eq!(run_of(&st, "m1")["state"], "succeeded", "{st:#}");
    for _ in 0..3 {
        s.ok(&["push", "m1"]);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(lines(&marks), 1);
    let id = new_job(
        &s,
        &["run", "m1", "--sign-key", &key, "--", "echo", "$HOME; id"],
    );
    let st = wait_done(&s, &id, 60);
    assert_eq!(run_of(&st, "m1")["output"], "$HOME; id\n");

    // Unsigned commands are refused by the server; a signature of another spec too.
    let (code, v) = s.post(
        "/api/v1/admin/jobs",
        &json!({"selector": "m1", "spec": {"id": "0123456789abcdef0123456789abcdef",
            "action": {"type": "command", "argv": ["true"]}, "timeout_secs": 60,
            "created_at": 1}}),
    );
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("must be signed"),
        "{v}"
    );
    // Signed by the other key: m1 refuses it, m3 runs it.
    let id = new_job(&s, &["run", "*", "--sign-key", &other_key, "--", "true"]);
    let st = wait_done(&s, &id, 60);
    assert_eq!(run_of(&st, "m1")["state"], "refused");
    assert_eq!(run_of(&st, "m3")["state"], "succeeded", "{st:#}");

    // A timeout ends the program and everything it started.
    let start = Instant::now();
    let id = new_job(
        &s,
        &[
            "run",
            "m1",
            "--sign-key",
            &key,
            "--timeout",
            "2s",
            "--",
            "sh",
            "-c",
            "sleep 60 & sleep 60",
        ],
    );
    let st = wait_done(&s, &id, 60);
    assert_eq!(run_of(&st, "m1")["state"], "timed_out", "{st:#}");
    assert!(start.elapsed() < Duration::from_secs(30));

    // Cancel: a running job is stopped at its next progress report; others never start.
    let id = new_job(&s, &["run", "m1", "--sign-key", &key, "--", "sleep", "60"]);
    wait_until("the job running", 30, || {
        run_of(&status(&s, &id), "m1")["state"] == "running"
    });
    let out = s.ok(&["job", "cancel", &id]);
    assert!(out.contains("cancelled"), "{out}");
    let st = wait_done(&s, &id, 30);
    assert_eq!(run_of(&st, "m1")["state"], "cancelled", "{st:#}");

    // Listing, a job id that does not exist, a selector that matches nothing.
    let list: Value = serde_json::from_str(&s.ok(&["job", "list", "--json"])).unwrap();
    assert!(list.as_array().unwrap().len() >= 6);
    let out = s.cli(&["job", "status", "ffffffffffffffffffffffffffffffff"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no job has the id"));
    let out = s.cli(&["job", "apt", "update", "site=nowhere"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no machine matches"));
}

#[test]
fn a_job_delivered_to_a_machine_that_crashes_mid_job_runs_at_most_once() {
    let s = Server::start();
    let t = s.enroll_token(true);
    let (key, public) = keygen(&s, "admin.key");
    let settings =
        format!("job_progress_secs = 1\nallow_commands = true\nadmin_keys = [\"{public}\"]\n");
    // Killed right after the record, before the program starts; and while it runs.
    for (point, runs) in [("job-started", 0), ("job-running", 1)] {
        let name = format!("m-{point}");
        let mut a = Agent::new(&s, &name, &t).env("SEMITHIN_AGENT_CRASH_AT", point);
        std::fs::create_dir_all(&a.state).unwrap();
        std::fs::write(a.state.join("agent.toml"), &settings).unwrap();
        a.spawn();
        wait_seen(&s, &[&name]);
        let marks = s.path(&format!("marks-{point}"));
        let id = new_job(
            &s,
            &[
                "run",
                &name,
                "--sign-key",
                &key,
                "--",
                "sh",
                "-c",
                &format!("echo ran >> {}", marks.display()),
            ],
        );
        assert!(
            !a.wait_exit(60).success(),
            "the agent was to be killed at {point}"
        );
        // Killed: the server still waits for the result, and delivers the job again.
        let state = run_of(&status(&s, &id), &name)["state"].clone();
        assert!(state == "delivered" || state == "running", "{state}");
        std::thread::sleep(Duration::from_millis(500));
        let mut again = Agent::new(&s, &name, &t);
        again.spawn();
        let st = wait_done(&s, &id, 60);
        let r = run_of(&st, &name);
        assert_eq!(r["state"], "interrupted", "{st:#}");
        assert!(
            r["output"].as_str().unwrap().contains("not run again"),
            "{r}"
        );
        // Delivered again and again: never run again.
        for _ in 0..3 {
            s.ok(&["push", &name]);
            std::thread::sleep(Duration::from_millis(300));
        }
        again.stop();
        again.spawn();
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(lines(&marks), runs, "{point}");
        assert_eq!(run_of(&status(&s, &id), &name)["state"], "interrupted");
        let log = again.log();
        // started once at most: the log says so once, or not at all when killed before it
        assert_eq!(
            log.matches(&format!("running job {id}")).count(),
            runs,
            "{log}"
        );
    }
}

#[test]
fn scheduled_jobs_wait_for_their_time_and_a_passed_window_expires_them() {
    let s = Server::start();
    let t = s.enroll_token(true);
    let (key, public) = keygen(&s, "admin.key");
    let _m1 = machine(
        &s,
        &t,
        "m1",
        &format!("allow_commands = true\nadmin_keys = [\"{public}\"]\n"),
    );
    wait_seen(&s, &["m1"]);
    let id = new_job(
        &s,
        &["run", "m1", "--sign-key", &key, "--at", "+4s", "--", "true"],
    );
    let st = status(&s, &id);
    assert_eq!(run_of(&st, "m1")["state"], "pending", "{st:#}");
    assert!(st["job"]["next_start"].is_i64());
    // The server's background task wakes the machine when the time comes.
    let st = wait_done(&s, &id, 30);
    assert_eq!(run_of(&st, "m1")["state"], "succeeded", "{st:#}");
    let started = run_of(&st, "m1")["started_at"].as_i64().unwrap();
    assert!(started >= st["job"]["spec"]["schedule"]["at"].as_i64().unwrap());

    // Its window ended before any machine checked in: expired, never delivered. The command
    // line refuses a start in the past; the API takes it (a job made by another tool).
    let past = semithin_server::now() - 100;
    let out = s.cli(&[
        "job",
        "run",
        "m1",
        "--sign-key",
        &key,
        "--at",
        &format!("@{past}"),
        "--",
        "true",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is in the past"), "{err}");
    use semithin_protocol::job::{self, Action, JobRequest, JobSpec, Schedule, SpecJson};
    let req = JobRequest {
        selector: "m1".into(),
        spec: SpecJson::new(JobSpec {
            id: job::new_id().unwrap(),
            action: Action::AptUpdate,
            timeout_secs: 60,
            schedule: Schedule {
                at: Some(past),
                window_secs: Some(10),
                ..Schedule::default()
            },
            created_at: semithin_server::now(),
        }),
        signature: None,
    };
    let (code, v) = s.post("/api/v1/admin/jobs", &serde_json::to_value(&req).unwrap());
    assert_eq!(code, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    s.ok(&["push", "m1"]);
    std::thread::sleep(Duration::from_secs(1));
    let st = status(&s, &id);
    assert_eq!(run_of(&st, "m1")["state"], "expired", "{st:#}");

    // Every minute from a minute ago: the occurrence of this minute now, with its own
    // delivery id.
    let since = format!("@{}", semithin_server::now() - 60);
    let id = new_job(
        &s,
        &[
            "run",
            "m1",
            "--sign-key",
            &key,
            "--every",
            "* * * * *",
            "--at",
            &since,
            "--",
            "true",
        ],
    );
    let st = wait_done(&s, &id, 30);
    let r = run_of(&st, "m1");
    assert_eq!(r["state"], "succeeded", "{st:#}");
    assert!(
        r["delivery"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{id}.")),
        "{r}"
    );
    let out = s.cli(&[
        "job",
        "run",
        "m1",
        "--sign-key",
        &key,
        "--every",
        "61 * * * *",
        "--",
        "true",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad cron expression"));
}
