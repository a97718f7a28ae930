//! The OpenAPI 3.1 description the server makes from its code (`GET /api/v1/openapi.json`),
//! and schemathesis (PyPI, tests/fixtures/schemathesis.sh) fuzzing a real server on loopback
//! against it: no answer is a server error, none is outside the description (status, content
//! type, body), invalid input is refused, and without a machine's signature or the admin token
//! nothing is served.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::common::sh;
use crate::fleet::{Agent, Server, image, wait_updated};

fn schemathesis() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    sh(&format!("{}/schemathesis.sh", dir.display()))
        .trim()
        .to_owned()
}

/// Runs schemathesis on the operations with these tags; its whole output.
fn fuzz(s: &Server, tags: &[&str], token: bool, exclude: &str) -> (bool, String) {
    let mut c = Command::new("timeout");
    c.arg("600")
        .arg(schemathesis())
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", s.url))
        .args(["--checks", "all", "--exclude-checks", exclude])
        .args(["--max-examples", "15", "--workers", "2"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--seed", "20261202"])
        .current_dir(s.path(""))
        .env("NO_COLOR", "1");
    for t in tags {
        c.args(["--include-tag", t]);
    }
    if token {
        c.args(["-H", &format!("Authorization: Bearer {}", s.token)]);
    }
    let out = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn slow_openapi_describes_every_route_and_schemathesis_finds_no_fault() {
    let s = Server::start();
    let t = s.enroll_token(true);
    let src = s.path("img");
    image(&src, 1, 5);
    let v1 = s.release(&src, "lab/stable");
    let a = Agent::new(&s, "m1", &t);
    assert!(a.once().success(), "{}", a.log());
    s.ok(&["fleet", "assign", "m1", "lab/stable"]);
    assert!(a.once().success(), "{}", a.log());
    wait_updated(&s, "m1", &v1, 30);

    let spec: Value = serde_json::from_str(
        &reqwest::blocking::get(format!("{}/api/v1/openapi.json", s.url))
            .unwrap()
            .text()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    let paths: BTreeSet<&str> = spec["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    // the routes docs/PROTOCOL.md lists, each described
    for p in [
        "/api/v1/health",
        "/api/v1/ready",
        "/metrics",
        "/api/v1/enroll",
        "/api/v1/checkin",
        "/api/v1/relay/checkins",
        "/api/v1/relay/status",
        "/api/v1/trust/metadata/{file}",
        "/api/v1/trust/targets/{path}",
        "/api/v1/objects",
        "/api/v1/objects/{kind}/{id}",
        "/api/v1/deltas/{from}/{to}",
        "/api/v1/jobs/{delivery}/progress",
        "/api/v1/machines/capture",
        "/api/v1/admin/machines",
        "/api/v1/admin/machines/{name}/labels",
        "/api/v1/admin/assign",
        "/api/v1/admin/tokens/{id}",
        "/api/v1/admin/jobs/{id}/cancel",
        "/api/v1/admin/rollouts/{id}/abort",
        "/api/v1/admin/vars/order",
        "/api/v1/admin/captures/{id}/archive",
        "/api/v1/admin/audit",
        "/api/v1/admin/trust",
        "/apt/{name}/{path}",
    ] {
        assert!(paths.contains(p), "{p} is not described: {paths:?}");
    }
    // the wire types, with the admin's and the machines' ways to authenticate
    let schemas = spec["components"]["schemas"].as_object().unwrap();
    for t in [
        "MachineInfo",
        "CheckInRequest",
        "CheckInResponse",
        "CheckInBatch",
        "CheckInBatchAnswer",
        "RelayStatus",
        "JobRequest",
        "RolloutInfo",
    ] {
        assert!(schemas.contains_key(t), "no schema {t}");
    }
    assert_eq!(
        schemas["ReleaseId"]["pattern"], "^[0-9a-f]{64}$",
        "ids carry their syntax"
    );
    let assign = &spec["paths"]["/api/v1/admin/assign"]["post"];
    assert_eq!(assign["security"][0]["admin_token"], serde_json::json!([]));
    assert!(assign["requestBody"]["content"]["application/json"].is_object());
    let checkin = &spec["paths"]["/api/v1/checkin"]["post"];
    assert!(checkin["security"][0]["machine_signature"].is_array());

    // The admin's operations, with the token. `positive_data_acceptance` is left out: a request
    // can fit the description and still mean nothing (a selector matching no machine, a
    // channel never published, an id that does not exist), and those are refused by design.
    let (ok, out) = fuzz(
        &s,
        &[
            "admin",
            "jobs",
            "rollouts",
            "vars",
            "captures",
            "monitoring",
        ],
        true,
        "positive_data_acceptance",
    );
    assert!(ok, "schemathesis on the admin API:\n{out}");
    assert!(out.contains("passed"), "{out}");
    assert!(
        !out.contains("ST100") && !out.contains("Server error"),
        "{out}"
    );
    // What machines call, without a signature (and without the admin token): refused, never a
    // server error, never an answer outside the description.
    let (ok, out) = fuzz(&s, &["machines", "apt"], false, "positive_data_acceptance");
    assert!(ok, "schemathesis on the machines' API:\n{out}");
    let log = std::fs::read_to_string(s.path("server.log")).unwrap();
    assert!(
        !log.contains("incident"),
        "a request failed inside the server:\n{log}"
    );
}
