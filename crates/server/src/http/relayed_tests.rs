//! Relays' batches of check-ins and their reports, on an in-process server over loopback: each
//! check-in verified as its machine signed it, one bad entry failing alone, bad batches refused
//! naming the problem, a held batch answered when one of its machines is woken.

use std::time::{Duration, Instant};

use semithin_protocol::sign::{Counter, MachineKey};
use serde_json::{Value, json};

use crate::testkit::{TestServer, report};

static COUNTER: std::sync::LazyLock<Counter> = std::sync::LazyLock::new(Default::default);

/// A check-in of `key` as a relay puts it in a batch.
fn entry(key: &MachineKey, wait: u32) -> Value {
    let body = json!({"report": report(json!({})), "wait_secs": wait}).to_string();
    let headers: serde_json::Map<String, Value> = key
        .sign(
            "POST",
            "/api/v1/checkin",
            COUNTER.next_now(),
            body.as_bytes(),
        )
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::String(v)))
        .collect();
    json!({"headers": headers, "body": body})
}

async fn batch(s: &TestServer, relay: &MachineKey, b: &Value) -> (u16, Value) {
    let (st, text) = s
        .signed(
            relay,
            "POST",
            "/api/v1/relay/checkins",
            b.to_string().as_bytes(),
        )
        .await;
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn stats(s: &TestServer) -> Value {
    s.admin("GET", "/api/v1/admin/stats", None).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_verified_entry_by_entry_and_a_bad_one_fails_alone() {
    let s = TestServer::start(|c| c.max_wait_secs = 20).await;
    let t = s.token(true).await;
    let relay = s.enroll(&t, "relay-1").await;
    let m1 = s.enroll(&t, "m1").await;
    let m2 = s.enroll(&t, "m2").await;
    let stranger = MachineKey::generate().unwrap();
    // m2's entry with a body changed after signing
    let mut forged = entry(&m2, 0);
    forged["body"] =
        json!(json!({"report": report(json!({"agent_version": "forged"}))}).to_string());
    let mut e1 = entry(&m1, 0);
    e1["relays"] = json!(["site-relay"]);
    let b = json!({"checkins": [e1, forged, entry(&stranger, 0), entry(&m2, 0)],
        "status": {"version": "9.9", "url": "http://relay-1:8471", "upstream": "http://root",
                   "cache_bytes": 5, "cache_items": 1, "cache_limit": 10,
                   "fetched_bytes": 1, "served_bytes": 2, "forwarded": 3}});
    let (st, v) = batch(&s, &relay, &b).await;
    assert_eq!(st, 200, "{v}");
    let a = v["answers"].as_array().unwrap();
    assert_eq!(a.len(), 4, "{v}");
    assert_eq!(a[0]["status"], 200, "{v}");
    assert_eq!(a[0]["body"]["status"], "accepted", "{v}");
    assert_eq!(a[1]["status"], 401, "{v}");
    assert!(
        a[1]["body"]["error"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{v}"
    );
    assert_eq!(a[2]["status"], 401, "{v}");
    assert!(
        a[2]["body"]["error"]
            .as_str()
            .unwrap()
            .contains("no machine"),
        "{v}"
    );
    assert_eq!(a[3]["status"], 200, "{v}");
    // recorded as check-ins of their machines, with the relays they came through
    let (_, m) = s.admin("GET", "/api/v1/admin/machines/m1", None).await;
    assert_eq!(m["relay_path"], json!(["site-relay"]), "{m}");
    assert!(m["last_seen"].as_i64().is_some(), "{m}");
    let (_, m) = s.admin("GET", "/api/v1/admin/machines/m2", None).await;
    assert_eq!(m["report"]["agent_version"], "test", "{m}");
    // the relay's own report, kept
    let (_, r) = s.admin("GET", "/api/v1/admin/machines/relay-1", None).await;
    assert_eq!(r["relay"]["version"], "9.9", "{r}");
    assert_eq!(r["relay"]["url"], "http://relay-1:8471", "{r}");
    let st = stats(&s).await;
    assert_eq!(st["checkin_batches"], 1, "{st}");
    assert_eq!(st["checkins_batched"], 4, "{st}");
    // an entry sent again (a replay) is refused alone; the batch's own signature is new
    let again = entry(&m1, 0);
    let (st, v) = batch(&s, &relay, &json!({"checkins": [again.clone()]})).await;
    assert_eq!(
        (st, v["answers"][0]["status"].clone()),
        (200, json!(200)),
        "{v}"
    );
    let (st, v) = batch(&s, &relay, &json!({"checkins": [again]})).await;
    assert_eq!(
        (st, v["answers"][0]["status"].clone()),
        (200, json!(409)),
        "{v}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_batches_are_refused_naming_the_problem() {
    let s = TestServer::start(|_| {}).await;
    let t = s.token(true).await;
    let relay = s.enroll(&t, "relay-1").await;
    let m1 = s.enroll(&t, "m1").await;
    for (b, want) in [
        (json!({"checkins": []}), "empty batch"),
        (json!({"checkins": [{"headers": {}}]}), "checkins[0]"),
        (json!({"check": 1}), "checkins"),
        (
            json!({"checkins": (0..501).map(|_| json!({"headers": {}, "body": ""})).collect::<Vec<_>>()}),
            "at most 500",
        ),
        (
            json!({"checkins": [entry(&m1, 0)], "status": {"version": "x", "url": "ftp://x",
                "cache_bytes": 0, "cache_items": 0, "cache_limit": 0, "fetched_bytes": 0,
                "served_bytes": 0, "forwarded": 0}}),
            "status.url",
        ),
    ] {
        let (st, v) = batch(&s, &relay, &b).await;
        assert_eq!(st, 400, "{b}: {v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{want}: {v}");
    }
    // an entry whose relay path is no list of names fails alone
    let mut e = entry(&m1, 0);
    e["relays"] = json!(["bad name!"]);
    let (st, v) = batch(&s, &relay, &json!({"checkins": [e]})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["answers"][0]["status"], 400, "{v}");
    // unsigned, or from a relay not accepted
    let r = reqwest::Client::new()
        .post(s.at("/api/v1/relay/checkins"))
        .body(json!({"checkins": [entry(&m1, 0)]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let pending = s.enroll(&s.token(false).await, "relay-2").await;
    let (st, v) = batch(&s, &pending, &json!({"checkins": [entry(&m1, 0)]})).await;
    assert_eq!(st, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("pending"), "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_batch_is_answered_when_one_of_its_machines_is_woken() {
    let s = TestServer::start(|c| c.max_wait_secs = 20).await;
    let t = s.token(true).await;
    let relay = s.enroll(&t, "relay-1").await;
    let m1 = s.enroll(&t, "m1").await;
    let m2 = s.enroll(&t, "m2").await;
    // both held (nothing new, long polls); m2 pushed after a moment
    let b = json!({"checkins": [entry(&m1, 15), entry(&m2, 15)]});
    let start = Instant::now();
    let (answer, _) = tokio::join!(batch(&s, &relay, &b), async {
        let mut held = 0;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            held = stats(&s).await["polls_held"].as_u64().unwrap();
            if held == 1 {
                break;
            }
        }
        assert_eq!(held, 1, "the batch is one long poll");
        let (st, v) = s
            .admin(
                "POST",
                "/api/v1/admin/push",
                Some(json!({"selector": "m2"})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    });
    let (st, v) = answer;
    assert_eq!(st, 200, "{v}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(v["answers"][0]["body"]["woken"], false, "{v}");
    assert_eq!(v["answers"][1]["body"]["woken"], true, "{v}");
    assert_eq!(stats(&s).await["polls_held"], 0);
    // a batch that is not a long poll is answered at once
    let start = Instant::now();
    let (st, v) = batch(
        &s,
        &relay,
        &json!({"checkins": [entry(&m1, 0), entry(&m2, 15)]}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert!(start.elapsed() < Duration::from_secs(5));
    s.stop().await;
}
