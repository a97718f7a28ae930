//! The dashboard over loopback without a browser: no page without a session, the login and its
//! throttle, the cookie's attributes, CSRF on every admin request made with the cookie, the audit
//! log naming the session's token, logout, and the machines page's filters, sorting and paging.

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

use crate::testkit::{ADMIN, TestServer};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// Logs in; the session cookie (`name=value`) and the page's CSRF token.
async fn login(s: &TestServer, c: &reqwest::Client) -> (String, String) {
    let r = c
        .post(s.at("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={ADMIN}&next=%2Fmachines"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/machines");
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    let page = c
        .get(s.at("/"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let text = page.text().await.unwrap();
    let csrf = text
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap()
        .to_owned();
    assert_eq!(csrf.len(), 64, "{text}");
    (cookie, csrf)
}

const PAGES: [&str; 10] = [
    "/",
    "/machines",
    "/machines/m1",
    "/machines/m1/packages",
    "/channels",
    "/rollouts",
    "/rollouts/1",
    "/jobs",
    "/jobs/0123456789abcdef0123456789abcdef",
    "/audit",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_page_without_a_session_and_every_api_change_by_cookie_needs_the_csrf_token() {
    let s = TestServer::start(|_| {}).await;
    let t = s.token(true).await;
    s.enroll(&t, "m1").await;
    let c = client();
    for p in PAGES {
        let r = c.get(s.at(p)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{p}");
        let to = r.headers()[LOCATION].to_str().unwrap().to_owned();
        assert!(to.starts_with("/login?next="), "{p}: {to}");
        // a made-up cookie is no session
        let r = c
            .get(s.at(p))
            .header(COOKIE, "semithin_session=00ff")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{p}");
        // htmx's live refresh is sent to the login page too
        let r = c
            .get(s.at(p))
            .header("hx-request", "true")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{p}");
        assert_eq!(r.headers()["hx-redirect"], "/login");
    }
    // a wrong token: refused with a clear message, no cookie
    let r = c
        .post(s.at("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=wrong-token&next=%2F")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get(SET_COOKIE).is_none());
    assert!(r.text().await.unwrap().contains("wrong admin token"));
    // a login form posted from another site
    let r = c
        .post(s.at("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "http://evil.example")
        .body(format!("token={ADMIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get(SET_COOKIE).is_none());

    let (cookie, csrf) = login(&s, &c).await;
    for p in PAGES {
        let r = c.get(s.at(p)).header(COOKIE, &cookie).send().await.unwrap();
        let st = r.status();
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let body = r.text().await.unwrap();
        if p == "/rollouts/1" || p.starts_with("/jobs/") {
            assert_eq!(st, StatusCode::NOT_FOUND, "{p}: {body}");
            assert!(body.contains("no "), "{p}: {body}");
        } else {
            assert_eq!(st, 200, "{p}: {body}");
        }
    }

    // the admin API with the cookie: without the CSRF token, with a wrong one, with it
    let labels = s.at("/api/v1/admin/machines/m1/labels");
    let body = json!({"set": {"room": "12"}}).to_string();
    let post = |csrf: Option<&str>| {
        let mut r = c
            .post(&labels)
            .header(COOKIE, &cookie)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(t) = csrf {
            r = r.header("x-csrf-token", t);
        }
        r.send()
    };
    let r = post(None).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let e: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert!(e["error"].as_str().unwrap().contains("CSRF"), "{e}");
    let r = post(Some(&"0".repeat(64))).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (_, m) = s.admin("GET", "/api/v1/admin/machines/m1", None).await;
    assert_eq!(m["labels"], json!({}), "nothing changed: {m}");
    let r = post(Some(&csrf)).await.unwrap();
    assert_eq!(r.status(), 200);
    let (_, m) = s.admin("GET", "/api/v1/admin/machines/m1", None).await;
    assert_eq!(m["labels"], json!({"room": "12"}), "{m}");
    // reads need it too (a page's script sends it with every request)
    let r = c
        .get(s.at("/api/v1/admin/machines"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // the audit log: the refused ones as refused, the page's change by the token's fingerprint
    let (_, audit) = s.admin("GET", "/api/v1/admin/audit", None).await;
    let entries = audit.as_array().unwrap();
    let fp = crate::web::session::actor_of(&blake3::hash(ADMIN.as_bytes()));
    let on_m1: Vec<&Value> = entries
        .iter()
        .filter(|e| e["path"] == "/api/v1/admin/machines/m1/labels")
        .collect();
    assert_eq!(on_m1.len(), 3, "{audit}");
    assert_eq!(on_m1[0]["actor"], json!(fp), "{audit}");
    assert_eq!(on_m1[0]["status"], 200);
    assert_eq!(on_m1[1]["actor"], "refused");
    assert_eq!(on_m1[2]["actor"], "refused");
    // and the audit page shows them, filtered by machine
    let r = c
        .get(s.at("/audit?machine=m1"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("/api/v1/admin/machines/m1/labels"), "{page}");
    assert!(
        page.contains(fp.as_str()) && page.contains("refused"),
        "{page}"
    );
    assert!(page.contains("href=\"/machines/m1\""), "{page}");
    let r = c
        .get(s.at("/audit?machine=nobody"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    let page = r.text().await.unwrap();
    assert!(page.contains("Nothing recorded for nobody"), "{page}");
    assert!(!page.contains("/labels"), "{page}");

    // logout needs the CSRF token of the form; then the cookie opens nothing
    let logout = |csrf: &str| {
        c.post(s.at("/logout"))
            .header(COOKIE, &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}"))
            .send()
    };
    assert_eq!(
        logout("nope").await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let r = c
        .get(s.at("/"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a refused logout ends nothing");
    let r = logout(&csrf).await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let r = c
        .get(s.at("/"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = post(Some(&csrf)).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_at_the_login_page_are_throttled() {
    let s = TestServer::start(|_| {}).await;
    let c = client();
    let try_login = |token: &str| {
        c.post(s.at("/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
    };
    for i in 1..crate::http::throttle::MAX_FAILURES {
        let r = try_login("wrong").await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let r = try_login("wrong").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().contains("refused for"));
    // now even the right token waits
    let r = try_login(ADMIN).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get(SET_COOKIE).is_none());
    assert!(r.text().await.unwrap().contains("try again in"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_machines_page_filters_sorts_and_pages_on_the_server() {
    let s = TestServer::start(|_| {}).await;
    let t = s.token(true).await;
    let names: Vec<String> = (0..(super::views::PER_PAGE + 5))
        .map(|i| format!("pc-{i:03}"))
        .collect();
    for n in &names {
        s.enroll(&t, n).await;
    }
    let (st, _) = s
        .admin(
            "POST",
            "/api/v1/admin/machines/pc-007/labels",
            Some(json!({"set": {"room": "lab-b"}})),
        )
        .await;
    assert_eq!(st, 200);
    let c = client();
    let (cookie, _) = login(&s, &c).await;
    let get = |path: &str| {
        let c = c.clone();
        let url = s.at(path);
        let cookie = cookie.clone();
        async move {
            let r = c.get(url).header(COOKIE, cookie).send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    let rows = |body: &str| body.matches("class=\"machine\"").count();
    let (st, body) = get("/machines").await;
    assert_eq!(st, 200);
    assert_eq!(rows(&body), super::views::PER_PAGE);
    assert!(
        body.contains(&format!("<span id=\"count\">{}</span>", names.len())),
        "{body}"
    );
    assert!(body.contains(">pc-000<") && !body.contains(">pc-054<"));
    let (_, body) = get("/machines?page=2").await;
    assert_eq!(rows(&body), 5);
    assert!(body.contains(">pc-054<"));
    let (_, body) = get("/machines?sort=name&desc=1").await;
    assert!(body.contains(">pc-054<") && !body.contains(">pc-000<"));
    let (_, body) = get("/machines?q=lab-b").await;
    assert_eq!(rows(&body), 1);
    assert!(body.contains(">pc-007<"), "{body}");
    let (_, body) = get("/machines?selector=room%3Dlab-b").await;
    assert_eq!(rows(&body), 1);
    let (_, body) = get("/machines?state=unassigned&q=pc-01").await;
    assert_eq!(rows(&body), 10);
    let (_, body) = get("/machines?state=updated").await;
    assert_eq!(rows(&body), 0);
    // an admin change shows at once (the index is made again), in each filter and sort
    let (st, _) = s
        .admin(
            "POST",
            "/api/v1/admin/machines/pc-042/labels",
            Some(json!({"set": {"room": "Lab-B"}})),
        )
        .await;
    assert_eq!(st, 200);
    let (_, body) = get("/machines?q=lab-b").await;
    assert_eq!(rows(&body), 2, "{body}");
    assert!(body.contains(">pc-042<"), "{body}");
    let (_, body) = get("/machines?q=ROOM%3Dlab-b&sort=state&desc=1").await;
    assert_eq!(rows(&body), 2, "{body}");
    let (_, body) = get("/machines?q=pc-0&sort=seen&page=2").await;
    assert_eq!(rows(&body), 5, "{body}");
    let (_, body) = get("/machines?channel=nowhere").await;
    assert_eq!(rows(&body), 0);
    let (st, body) = get("/machines?selector=a%3D%3Db").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("bad selector"), "{body}");
    // htmx's refresh gets the table alone
    let r = c
        .get(s.at("/machines?q=pc-00"))
        .header(COOKIE, &cookie)
        .header("hx-request", "true")
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert!(body.starts_with("<div id=\"live\""), "{body}");
    assert_eq!(rows(&body), 10);
    // one machine, and the overview counts the fleet
    let (st, body) = get("/machines/pc-007").await;
    assert_eq!(st, 200);
    assert!(
        body.contains("lab-b") && body.contains("unassigned"),
        "{body}"
    );
    let (st, body) = get("/machines/nope").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(body.contains("no machine named"));
    let (_, body) = get("/").await;
    assert!(
        body.contains(&format!("<span id=\"total\">{}</span>", names.len())),
        "{body}"
    );
    assert!(body.contains("<svg"), "the chart");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_packages_part_answers_the_inventory_the_machine_sent_last() {
    let s = TestServer::start(|_| {}).await;
    let t = s.token(true).await;
    let key = s.enroll(&t, "pc-1").await;
    let send = |packages: Value| {
        let body = json!({
            "report": crate::testkit::report(json!({})),
            "inventory": {"packages": packages, "upgradable": [], "collected_at": 1_700_000_000},
        })
        .to_string();
        let s = &s;
        let key = &key;
        async move {
            let (st, b) = s
                .signed(key, "POST", "/api/v1/checkin", body.as_bytes())
                .await;
            assert_eq!(st, 200, "{b}");
        }
    };
    let c = client();
    let (cookie, _) = login(&s, &c).await;
    let part = |path: &'static str| {
        let c = c.clone();
        let url = s.at(path);
        let cookie = cookie.clone();
        async move {
            let r = c
                .get(url)
                .header(COOKIE, cookie)
                .header("hx-request", "true")
                .send()
                .await
                .unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    // nothing reported yet: an empty list, polled
    let (st, body) = part("/machines/pc-1/packages").await;
    assert_eq!(st, 200);
    assert!(body.starts_with("<div id=\"packages-live\""), "{body}");
    assert!(
        body.contains("hx-get=\"/machines/pc-1/packages\""),
        "{body}"
    );
    assert!(body.contains("hx-trigger=\"every"), "{body}");
    assert!(!body.contains("<td>bash</td>"), "{body}");
    send(json!([{"name": "bash", "version": "5.2.15-2", "arch": "amd64"}])).await;
    let (_, body) = part("/machines/pc-1/packages").await;
    assert!(
        body.contains("<td>bash</td><td class=\"mono\">5.2.15-2</td>"),
        "{body}"
    );
    assert!(
        body.contains("<span id=\"packages-count\" hx-swap-oob=\"true\">(1), inventory of"),
        "{body}"
    );
    // the machine's page holds the same part, which polls itself
    let (_, page) = part("/machines/pc-1").await;
    assert!(page.contains("<div id=\"packages-live\" hx-get=\"/machines/pc-1/packages\""));
    assert!(page.contains("<td>bash</td>"), "{page}");
    // a newer inventory replaces it
    send(json!([
        {"name": "bash", "version": "5.2.15-3", "arch": "amd64"},
        {"name": "curl", "version": "7.88.1", "arch": "amd64"},
    ]))
    .await;
    let (_, body) = part("/machines/pc-1/packages").await;
    assert!(
        body.contains("5.2.15-3") && !body.contains("5.2.15-2"),
        "{body}"
    );
    assert!(body.contains("<td>curl</td>"), "{body}");
    assert!(body.contains("(2), inventory of"), "{body}");
    // an unknown machine, and no session
    let (st, body) = part("/machines/nope/packages").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(body.contains("no machine named"), "{body}");
    let r = c
        .get(s.at("/machines/pc-1/packages"))
        .header("hx-request", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    s.stop().await;
}
