//! The agent against a hostile server: answers that name paths off the server, channels it does
//! not follow. A second loopback listener plays the other host and notes every connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use semithin_protocol::sign::MachineKey;

use super::*;
use crate::state::{Layout, State};
use crate::{Agent, Config};

/// One request as a fake server saw it.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A loopback HTTP server answering each request with `answer` (status, JSON body) and noting
/// it: (URL, what it saw).
pub(crate) fn serve(
    answer: impl Fn(&Seen) -> (u16, serde_json::Value) + Send + 'static,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut headers = Vec::new();
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.trim().split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    headers.push((k.trim().to_owned(), v.trim().to_owned()));
                }
            }
            let mut body = vec![0u8; len.min(1 << 20)];
            let _ = r.read_exact(&mut body);
            let mut parts = line.split_whitespace();
            let s = Seen {
                method: parts.next().unwrap_or("").to_owned(),
                target: parts.next().unwrap_or("").to_owned(),
                headers,
                body,
            };
            let (status, json) = answer(&s);
            log.lock().unwrap().push(s);
            let b = serde_json::to_vec(&json).unwrap();
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n",
                b.len()
            );
            let _ = conn.write_all(&b);
        }
    });
    (url, seen)
}

/// The other host: answers 404 to anything and notes it.
pub(crate) fn evil() -> (String, Arc<Mutex<Vec<Seen>>>) {
    serve(|_| (404, serde_json::json!({"error": "evil"})))
}

/// An agent enrolled with the server at `url`, in `dir` (with no package inventory: that runs
/// apt on this system).
pub(crate) fn agent_of(dir: &Path, url: &str, cfg: Config) -> Agent {
    let cfg = Config {
        inventory_interval_secs: 0,
        ..cfg
    };
    let layout = Layout::new(dir);
    std::fs::create_dir_all(&layout.dir).unwrap();
    let key = MachineKey::generate().unwrap();
    std::fs::write(layout.key(), key.file_text()).unwrap();
    State {
        machine_id: Some(key.id()),
        server: Some(url.to_owned()),
        ..State::default()
    }
    .save(&layout.state())
    .unwrap();
    Agent::open(dir, cfg, Box::new(|s| eprintln!("agent: {s}"))).unwrap()
}

/// What a hostile server may name instead of a path on itself, given the other host's
/// `host:port`.
fn hostile_paths(evil: &str) -> Vec<String> {
    vec![
        format!("@{evil}/api/v1/objects"),
        format!("//{evil}/api/v1/objects"),
        format!("http://{evil}/api/v1/objects"),
        "/api/v1/../../admin/machines".to_owned(),
        format!("/api/v1/objects@{evil}"),
        format!(":{}/api/v1/objects", evil.rsplit(':').next().unwrap()),
        "/api/v1/%2e%2e/admin".to_owned(),
        "/api/v1\\..\\admin".to_owned(),
    ]
}

#[test]
fn a_check_in_answer_naming_paths_off_the_server_is_refused_and_nothing_leaves_for_them() {
    let (evil_url, evil_seen) = evil();
    let evil_host = evil_url.trim_start_matches("http://").to_owned();
    for field in ["metadata_path", "objects_path", "delta_path"] {
        for bad in hostile_paths(&evil_host) {
            let mut desired = serde_json::json!({
                "channel": "lab/stable",
                "release": "ab".repeat(32),
                "metadata_path": "/api/v1/trust/metadata/",
                "objects_path": "/api/v1/objects",
            });
            desired[field] = serde_json::json!(bad);
            let (url, seen) = serve(move |s| {
                if s.target == "/api/v1/checkin" {
                    let a = serde_json::json!({"status": "accepted", "desired": desired,
                        "next_checkin_secs": 30});
                    (200, a)
                } else {
                    (404, serde_json::json!({"error": "no"}))
                }
            });
            let dir = tempfile::tempdir().unwrap();
            let mut agent = agent_of(dir.path(), &url, Config::default());
            let e = agent.cycle(0).unwrap_err().to_string();
            assert!(e.contains("is not a server path"), "{field} = {bad:?}: {e}");
            // Only check-ins reached the server (the answer was refused as a whole).
            for s in seen.lock().unwrap().iter() {
                assert_eq!(
                    (s.method.as_str(), s.target.as_str()),
                    ("POST", "/api/v1/checkin"),
                    "{field} = {bad:?}"
                );
                assert!(s.header("semithin-signature").is_some() && !s.body.is_empty());
            }
            assert!(agent.state.last_error.as_deref().is_some_and(|l| l == e));
        }
    }
    assert!(
        evil_seen.lock().unwrap().is_empty(),
        "the other host was asked: {:?}",
        evil_seen.lock().unwrap()
    );
}

#[test]
fn urls_keep_the_configured_host_and_prefix() {
    let key = MachineKey::from_seed([3; 32]);
    let api = Api::new("https://proxy.example:8443/semithin/", key, None).unwrap();
    let u = api.url(&ApiPath::objects()).unwrap();
    assert_eq!(
        u.as_str(),
        "https://proxy.example:8443/semithin/api/v1/objects"
    );
    let key = MachineKey::from_seed([3; 32]);
    let api = Api::new("http://10.0.0.1:8470", key, None).unwrap();
    let u = api
        .url(&ApiPath::new("/api/v1/deltas/ab/cd").unwrap())
        .unwrap();
    assert_eq!(u.as_str(), "http://10.0.0.1:8470/api/v1/deltas/ab/cd");
    for bad in ["http://h:1/?x=1", "http://h:1/#x", "ftp://h/"] {
        let key = MachineKey::from_seed([3; 32]);
        assert!(Api::new(bad, key, None).is_err(), "{bad}");
    }
}

#[test]
fn metadata_urls_and_job_paths_off_the_server_are_refused_before_any_request() {
    let (evil_url, evil_seen) = evil();
    let evil_host = evil_url.trim_start_matches("http://").to_owned();
    let (url, seen) = serve(|_| (404, serde_json::json!({"error": "no"})));
    let api = Api::new(&url, MachineKey::from_seed([4; 32]), None).unwrap();
    // What the TUF client asks for is the base URL followed by a path: that path is checked.
    for rest in [
        format!("@{evil_host}/api/v1/trust/metadata/1.root.json"),
        "/api/v1/trust/metadata/../../../admin/x.json".to_owned(),
        "//x/api/v1/trust/metadata/1.root.json".to_owned(),
    ] {
        let e = api.fetch(&format!("{url}{rest}"), 1000).unwrap_err();
        assert!(
            e.to_string().contains("is not a server path"),
            "{rest}: {e}"
        );
    }
    let e = api
        .fetch(&format!("{evil_url}/api/v1/x"), 1000)
        .unwrap_err();
    assert!(e.to_string().contains("not on the server"), "{e}");
    // A delivery id is part of a path too.
    for d in ["../../admin", "x@y", "a/../b", "a?b"] {
        let e = api.job_progress(d).unwrap_err().to_string();
        assert!(e.contains("is not a server path"), "{d}: {e}");
    }
    assert!(seen.lock().unwrap().is_empty());
    assert!(evil_seen.lock().unwrap().is_empty());
}

/// A server (or a man in the middle) whose check-in answers name `channel`, noting requests.
fn naming_channel(channel: &'static str) -> (String, Arc<Mutex<Vec<Seen>>>) {
    serve(move |s| {
        if s.target == "/api/v1/checkin" {
            let a = serde_json::json!({"status": "accepted", "desired": {
                "channel": channel, "release": "ab".repeat(32),
                "metadata_path": "/api/v1/trust/metadata/",
                "objects_path": "/api/v1/objects"}, "next_checkin_secs": 30});
            (200, a)
        } else {
            (404, serde_json::json!({"error": "no such file"}))
        }
    })
}

/// The `last_error` of the reports the server received.
fn reported_errors(seen: &Arc<Mutex<Vec<Seen>>>) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|s| s.target == "/api/v1/checkin")
        .filter_map(|s| {
            let v: serde_json::Value = serde_json::from_slice(&s.body).ok()?;
            v["report"]["last_error"].as_str().map(str::to_owned)
        })
        .collect()
}

#[test]
fn a_channel_other_than_the_pinned_one_is_refused_reported_and_nothing_is_fetched() {
    let (url, seen) = naming_channel("lab/other");
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        channel: Some("lab/stable".into()),
        ..Config::default()
    };
    let mut agent = agent_of(dir.path(), &url, cfg);
    let e = agent.cycle(0).unwrap_err().to_string();
    assert!(
        e.contains("\"lab/other\"") && e.contains("pinned to \"lab/stable\""),
        "{e}"
    );
    // Reported to the server at once; nothing but check-ins was asked for.
    assert!(
        reported_errors(&seen).iter().any(|r| r.contains("pinned")),
        "{:?}",
        seen.lock().unwrap()
    );
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|s| s.target == "/api/v1/checkin")
    );
    assert_eq!(agent.state.channel.as_deref(), Some("lab/stable"));
    assert!(agent.answer.as_ref().is_some_and(|a| a.desired.is_none()));
}

#[test]
fn without_a_pin_a_move_to_another_channel_is_refused_unless_the_config_follows_the_server() {
    // The machine follows lab/stable (the first channel it was given); a man in the middle
    // names lab/other.
    let (url, seen) = naming_channel("lab/other");
    let dir = tempfile::tempdir().unwrap();
    let mut agent = agent_of(dir.path(), &url, Config::default());
    agent.state.channel = Some("lab/stable".into());
    agent.save().unwrap();
    let e = agent.cycle(0).unwrap_err().to_string();
    assert!(e.contains("nothing signed confirms the move"), "{e}");
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|s| s.target == "/api/v1/checkin")
    );
    assert!(
        reported_errors(&seen)
            .iter()
            .any(|r| r.contains("moves this machine"))
    );
    let saved = State::load(&Layout::new(dir.path()).state()).unwrap();
    assert_eq!(saved.channel.as_deref(), Some("lab/stable"));
    drop(agent);

    // Told to follow the server, it takes the move (and goes on to verify the release).
    let cfg = Config {
        follow_channel_changes: true,
        ..Config::default()
    };
    let mut agent = Agent::open(dir.path(), cfg, Box::new(|_| {})).unwrap();
    agent.cfg.inventory_interval_secs = 0;
    let e = agent.cycle(0).unwrap_err().to_string();
    assert!(!e.contains("channel refused"), "{e}");
    assert_eq!(agent.state.channel.as_deref(), Some("lab/other"));
    // (this machine has no trusted root: verifying the release is where it stops)
    assert!(
        e.contains("no trusted root"),
        "it went on to verify the release: {e}"
    );
}

#[test]
fn the_first_channel_named_is_kept() {
    let (url, _seen) = naming_channel("lab/stable");
    let dir = tempfile::tempdir().unwrap();
    let mut agent = agent_of(dir.path(), &url, Config::default());
    // it goes on to verify (no trusted root here): the channel is kept all the same
    let e = agent.cycle(0).unwrap_err().to_string();
    assert!(e.contains("no trusted root"), "{e}");
    let saved = State::load(&Layout::new(dir.path()).state()).unwrap();
    assert_eq!(saved.channel.as_deref(), Some("lab/stable"));
}
