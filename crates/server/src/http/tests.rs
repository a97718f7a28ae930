//! The API as machines and strangers meet it, on an in-process server over loopback: bounds of
//! reports, events, pending machines, error answers, enrollment throttling.

use serde_json::{Value, json};

use crate::testkit::{TestServer, release, report};

fn error_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["error"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_out_of_bounds_is_refused_naming_the_field_and_nothing_is_kept() {
    let s = TestServer::start(|_| {}).await;
    let t = s.token(true).await;
    let key = s.enroll(&t, "m1").await;
    let huge = "e".repeat(7 << 20);
    let (st, body) = s.checkin(&key, report(json!({"last_error": huge}))).await;
    assert_eq!(st, 400, "{body}");
    let msg = error_of(&body);
    assert!(msg.contains("report.last_error"), "{msg}");
    assert!(msg.contains("at most 4096"), "{msg}");
    let (st, body) = s
        .checkin(&key, report(json!({"failed_release": "not-a-release"})))
        .await;
    assert_eq!(st, 400, "{body}");
    assert!(error_of(&body).contains("report.failed_release"), "{body}");
    let (st, body) = s
        .checkin(&key, report(json!({"agent_version": "v".repeat(100)})))
        .await;
    assert_eq!(st, 400, "{body}");
    assert!(error_of(&body).contains("report.agent_version"), "{body}");
    // nothing of the refused reports was kept
    let (_, m) = s.admin("GET", "/api/v1/admin/machines/m1", None).await;
    assert_eq!(m["report"]["last_error"], Value::Null, "{m}");
    assert_eq!(m["report"]["agent_version"], json!(""), "{m}");
    // a report within bounds is kept
    let (st, body) = s
        .checkin(
            &key,
            report(json!({"current": release(1), "health": "healthy"})),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let (_, m) = s.admin("GET", "/api/v1/admin/machines/m1", None).await;
    assert_eq!(m["report"]["current"], json!(release(1)), "{m}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_machine_stores_nothing_but_its_enrollment() {
    let s = TestServer::start(|_| {}).await;
    let t = s.token(false).await;
    let key = s.enroll(&t, "pending").await;
    let db_size = || {
        let d = s.data.clone();
        move || {
            ["fleet.db", "fleet.db-wal"]
                .iter()
                .map(|f| std::fs::metadata(d.join(f)).map(|m| m.len()).unwrap_or(0))
                .sum::<u64>()
        }
    };
    let size = db_size();
    let before = size();
    for i in 0..200u64 {
        let r = report(
            json!({"failed_release": release(i), "last_error": "x".repeat(4000),
            "current": release(i + 1000), "health": "healthy"}),
        );
        let (st, body) = s.checkin(&key, r).await;
        assert_eq!(st, 200, "{body}");
    }
    let events = s
        .count("SELECT COUNT(*) FROM events WHERE kind != 'enrolled'")
        .await;
    assert_eq!(events, 0, "a pending machine's reports made events");
    let stored = s
        .count("SELECT COUNT(*) FROM machines WHERE report LIKE '%xxxx%'")
        .await;
    assert_eq!(stored, 0, "a pending machine's report was stored");
    let (_, m) = s.admin("GET", "/api/v1/admin/machines/pending", None).await;
    assert_eq!(m["report"]["current"], Value::Null, "{m}");
    // 200 reports of 4 KiB each would be 800 KiB of events and reports
    let grown = size().saturating_sub(before);
    assert!(grown < 256 << 10, "the database grew by {grown} bytes");
    // accepted, its next report counts
    let (st, v) = s
        .admin(
            "POST",
            "/api/v1/admin/accept",
            Some(json!({"selector": "pending"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, _) = s
        .checkin(
            &key,
            report(json!({"current": release(7), "health": "healthy"})),
        )
        .await;
    assert_eq!(st, 200);
    let (_, m) = s.admin("GET", "/api/v1/admin/machines/pending", None).await;
    assert_eq!(m["report"]["current"], json!(release(7)), "{m}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_s_events_are_rate_limited() {
    let s = TestServer::start(|_| {}).await;
    let t = s.token(true).await;
    let key = s.enroll(&t, "noisy").await;
    for i in 0..100u64 {
        let r = report(json!({"failed_release": release(i), "last_error": "boom"}));
        let (st, body) = s.checkin(&key, r).await;
        assert_eq!(st, 200, "{body}");
    }
    let events = s
        .count("SELECT COUNT(*) FROM events WHERE kind = 'failed'")
        .await;
    assert_eq!(
        events,
        i64::from(crate::fleet::EVENT_BURST),
        "100 failures in a burst"
    );
    // the report itself is current: the rollout planner and the admin see the last failure
    let (_, m) = s.admin("GET", "/api/v1/admin/machines/noisy", None).await;
    assert_eq!(m["report"]["failed_release"], json!(release(99)), "{m}");
    s.stop().await;
}
