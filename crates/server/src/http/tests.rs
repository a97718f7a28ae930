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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_paths_that_are_no_file_are_4xx_and_no_answer_names_a_server_path() {
    let s = TestServer::start(|_| {}).await;
    let targets = crate::releases::trust_dir(&s.data.join("repo")).join("targets");
    std::fs::create_dir_all(targets.join("channels/sub")).unwrap();
    std::fs::write(targets.join("channels/stable"), b"x").unwrap();
    let data = s.data.display().to_string();
    let get = |path: String| {
        let c = s.client.clone();
        let url = s.at(&path);
        async move {
            let r = c
                .get(url)
                .bearer_auth(crate::testkit::ADMIN)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    for (path, want) in [
        ("/api/v1/trust/targets/channels", 404),
        ("/api/v1/trust/targets/channels/sub", 404),
        ("/api/v1/trust/targets/channels/missing", 404),
        ("/api/v1/trust/targets/channels/stable/below-a-file", 404),
        ("/api/v1/trust/targets/channels/a%5C..", 400),
        ("/api/v1/trust/targets/channels/.hidden", 400),
        ("/api/v1/trust/targets/channels/a%2F..%2F..", 400),
        ("/api/v1/trust/metadata/missing.json", 404),
        ("/api/v1/trust/metadata/..%2Froot-key.json", 400),
    ] {
        let (st, body) = get(path.to_owned()).await;
        assert_eq!(st, want, "{path}: {body}");
        let msg = error_of(&body);
        assert!(!msg.contains(&data), "{path}: {msg}");
    }
    let (st, body) = get("/api/v1/trust/targets/channels/stable".into()).await;
    assert_eq!((st, body.as_str()), (200, "x"));
    // A failure of the server's own: an incident number, not the reason.
    let t = s.token(true).await;
    s.enroll(&t, "m1").await;
    let db = s.data.join("fleet.db");
    let pool = sqlx::sqlite::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TRIGGER refuse BEFORE UPDATE ON machines \
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (st, v) = s
        .admin(
            "POST",
            "/api/v1/admin/assign",
            Some(json!({"selector": "m1", "channel": "stable", "unpublished": true})),
        )
        .await;
    assert_eq!(st, 500, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("incident"), "{msg}");
    assert!(
        !msg.contains("refused by the test") && !msg.contains(&data),
        "{msg}"
    );
    pool.close().await;
    s.stop().await;
}

/// Enrolls by hand from `from`: status, `Retry-After`, error message.
async fn enroll_from(
    s: &TestServer,
    from: &str,
    token: &str,
    name: &str,
) -> (u16, Option<String>, String) {
    let client = reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let key = semithin_protocol::sign::MachineKey::generate().unwrap();
    let body = json!({"token": token, "name": name, "public_key": hex::encode(key.public())});
    let r = client
        .post(s.at("/api/v1/enroll"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    (st, retry, v["error"].as_str().unwrap_or("").to_owned())
}

/// Behind a reverse proxy (`--trusted-proxy`), failed enrollments are throttled per client it
/// names, not for everyone behind it; without the setting the header changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_failed_enrollments_are_throttled_per_forwarded_client() {
    use super::throttle::MAX_FAILURES;
    let enroll = |s: &TestServer, forwarded: &str, token: &str| {
        let (url, forwarded, token) = (
            s.at("/api/v1/enroll"),
            forwarded.to_owned(),
            token.to_owned(),
        );
        async move {
            let key = semithin_protocol::sign::MachineKey::generate().unwrap();
            let body =
                json!({"token": token, "name": "m", "public_key": hex::encode(key.public())});
            reqwest::Client::new()
                .post(url)
                .header("x-forwarded-for", forwarded)
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let s = TestServer::start(|c| c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()]).await;
    for i in 0..MAX_FAILURES {
        assert_eq!(enroll(&s, "203.0.113.1", &format!("guess-{i}")).await, 403);
    }
    assert_eq!(enroll(&s, "203.0.113.1", "bad").await, 429);
    // another client behind the same proxy is not throttled
    assert_eq!(enroll(&s, "203.0.113.2", "bad").await, 403);
    s.stop().await;

    // Without the setting, a client cannot escape the throttle by naming other addresses.
    let s = TestServer::start(|_| {}).await;
    for i in 0..MAX_FAILURES {
        assert_eq!(enroll(&s, &format!("203.0.113.{i}"), "bad").await, 403);
    }
    assert_eq!(enroll(&s, "203.0.113.200", "bad").await, 429);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_enrollments_are_throttled_per_source_address() {
    use super::throttle::{MAX_FAILURES, WINDOW_SECS};
    let s = TestServer::start(|_| {}).await;
    let good = s.token(false).await;
    for i in 0..MAX_FAILURES {
        let (st, _, msg) = enroll_from(&s, "127.0.0.1", &format!("guess-{i}"), "m").await;
        assert_eq!(st, 403, "{msg}");
    }
    // refused now, even with a good token, and told when to come back
    let (st, retry, msg) = enroll_from(&s, "127.0.0.1", &good, "m1").await;
    assert_eq!(st, 429, "{msg}");
    assert!(
        msg.contains("too many failed enrollments from 127.0.0.1"),
        "{msg}"
    );
    let retry: i64 = retry.expect("Retry-After").parse().unwrap();
    assert!(retry > 0 && retry <= WINDOW_SECS, "{retry}");
    // another address is not
    let (st, _, msg) = enroll_from(&s, "127.0.0.2", &good, "m2").await;
    assert_eq!(st, 200, "{msg}");
    let (st, _, msg) = enroll_from(&s, "127.0.0.2", "bad", "m3").await;
    assert_eq!(st, 403, "{msg}");
    // nothing was enrolled from the throttled address
    let (_, list) = s.admin("GET", "/api/v1/admin/machines", None).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["m2"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_reads_only_its_own_jobs_and_cannot_speak_for_another() {
    let s = TestServer::start(|_| {}).await;
    let t = s.token(true).await;
    let a = s.enroll(&t, "a").await;
    let b = s.enroll(&t, "b").await;
    let spec = json!({"id": "0123456789abcdef0123456789abcdef", "action": {"type": "apt_update"},
        "timeout_secs": 60, "created_at": 1});
    let (st, job) = s
        .admin(
            "POST",
            "/api/v1/admin/jobs",
            Some(json!({"selector": "b", "spec": spec})),
        )
        .await;
    assert_eq!(st, 200, "{job}");
    let body = json!({"report": report(json!({})), "accepts_jobs": true}).to_string();
    // b is given the delivery; a is not, and learns nothing of it
    let (st, ans) = s
        .signed(&b, "POST", "/api/v1/checkin", body.as_bytes())
        .await;
    assert_eq!(st, 200, "{ans}");
    let ans: Value = serde_json::from_str(&ans).unwrap();
    let delivery = ans["jobs"][0]["delivery"].as_str().unwrap().to_owned();
    let (st, ans_a) = s
        .signed(&a, "POST", "/api/v1/checkin", body.as_bytes())
        .await;
    assert_eq!(st, 200, "{ans_a}");
    assert!(!ans_a.contains(&delivery), "{ans_a}");
    assert!(!ans_a.contains("apt_update"), "{ans_a}");
    // a cannot report on b's delivery, nor read whether it was cancelled
    let progress = format!("/api/v1/jobs/{delivery}/progress");
    let (st, err) = s.signed(&a, "POST", &progress, b"").await;
    assert_eq!(st, 404, "{err}");
    assert!(error_of(&err).contains("for this machine"), "{err}");
    let (st, ok) = s.signed(&b, "POST", &progress, b"").await;
    assert_eq!(st, 200, "{ok}");
    // a's key signing a request that names b is refused: the signature is checked against
    // the key b enrolled with
    let mut rb = reqwest::Client::new()
        .post(s.at("/api/v1/checkin"))
        .body(body.clone());
    let b_id = b.id();
    let counter = semithin_protocol::sign::Counter::default().next_now();
    for (k, v) in a.sign("POST", "/api/v1/checkin", counter, body.as_bytes()) {
        let v = if k == semithin_protocol::sign::HEADER_MACHINE {
            b_id.clone()
        } else {
            v
        };
        rb = rb.header(k, v);
    }
    let r = rb.send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let err = error_of(&r.text().await.unwrap());
    assert!(err.contains("signature"), "{err}");
    s.stop().await;
}
