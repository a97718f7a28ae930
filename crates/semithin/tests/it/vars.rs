//! Per-machine configuration on real server and agent processes: templates shipped in the
//! release rendered per machine into the /etc layer from variables signed by the admin and
//! resolved global → channel → labels (in the label order) → machine, plus facts; a change
//! reaching only the machines it applies to; sets not signed by a trusted key refused by the
//! agent; broken templates and bad variables refused with the reason, changing nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::sh;
use crate::fleet::{Agent, Server, image, wait_until};

const MANIFEST: &str = r#"
[[template]]
source = "motd.j2"
target = "/etc/motd"

[[template]]
source = "app.conf.j2"
target = "/etc/app/app.conf"
mode = "0640"
gid = 4
restart = "app.service"
"#;

const MOTD: &str =
    "{{ machine.name }} {{ site_name }} {{ ntp }} {{ facts.dmi_vendor | default('none') }}\n";
const APP: &str = "# for {{ machine.name }}\n{% for s in servers %}server {{ s }}\n{% endfor %}";

/// An image shipping these templates (beside the manifest).
fn image_with(root: &Path, version: u32, templates: &[(&str, &str)]) {
    image(root, version, 2);
    let dir = root.join("usr/share/semithin/templates");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in templates {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

fn keygen(s: &Server, name: &str) -> (String, String) {
    let file = s.path(name);
    let public = s.ok(&["job", "keygen", file.to_str().unwrap()]);
    (file.display().to_string(), public.trim().to_owned())
}

/// A machine with its own facts root (DMI vendor), trusting `key`, recording unit restarts.
fn machine(s: &Server, token: &str, name: &str, key: &str, vendor: &str) -> Agent {
    let mut a = Agent::new(s, name, token);
    let facts = s.path(&format!("facts/{name}"));
    let dmi = facts.join("sys/class/dmi/id");
    std::fs::create_dir_all(&dmi).unwrap();
    std::fs::write(dmi.join("sys_vendor"), format!("{vendor}\n")).unwrap();
    std::fs::create_dir_all(facts.join("proc/sys/kernel")).unwrap();
    std::fs::write(
        facts.join("proc/sys/kernel/hostname"),
        format!("host-{name}\n"),
    )
    .unwrap();
    std::fs::create_dir_all(&a.state).unwrap();
    std::fs::write(
        a.state.join("agent.toml"),
        format!(
            "admin_keys = [\"{key}\"]\nfacts_root = \"{}\"\nfacts_interval_secs = 1\n\
             restart_command = [\"sh\", \"-c\", \"echo \\\"$0\\\" >> {}\"]\n",
            facts.display(),
            restarts(s, name).display()
        ),
    )
    .unwrap();
    a.spawn();
    a
}

fn restarts(s: &Server, name: &str) -> PathBuf {
    s.path(&format!("restarts-{name}"))
}

fn upper(a: &Agent, rel: &str) -> PathBuf {
    a.state.join("overlay/etc/upper").join(rel)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn wait_file(a: &Agent, rel: &str, want: &str) {
    let p = upper(a, rel);
    wait_until(&format!("{} renders {rel} as {want:?}", a.name), 60, || {
        read(&p) == want
    });
}

fn config(s: &Server, name: &str) -> Value {
    s.machine(name)["report"]["config"].clone()
}

fn var(s: &Server, key: &str, scope: &str, assignments: &[&str]) -> String {
    let mut args = vec!["var", "set", "--scope", scope, "--sign-key", key];
    args.extend_from_slice(assignments);
    s.ok(&args)
}

/// Three machines on one channel: m1 (site=a, LENOVO), m2 (site=a, class=lab), m3 (site=b).
struct Fleet {
    s: Server,
    key: String,
    m: Vec<Agent>,
}

fn fleet() -> Fleet {
    let s = Server::start();
    let (key, public) = keygen(&s, "admin.key");
    var(
        &s,
        &key,
        "global",
        &["ntp=pool.example", "servers:=[\"a\",\"b\"]"],
    );
    var(&s, &key, "channel:lab/stable", &["ntp=chan.example"]);
    var(&s, &key, "label:site=a", &["site_name=A"]);
    var(&s, &key, "label:site=b", &["site_name=B"]);
    var(&s, &key, "label:class=lab", &["site_name=LAB"]);
    var(&s, &key, "machine:m2", &["ntp=10.0.0.2"]);
    s.ok(&["var", "order", "site", "class"]);
    let src = s.path("img1");
    image_with(
        &src,
        1,
        &[
            ("templates.toml", MANIFEST),
            ("motd.j2", MOTD),
            ("app.conf.j2", APP),
        ],
    );
    s.release(&src, "lab/stable");
    let t = s.enroll_token(true);
    let m = vec![
        machine(&s, &t, "m1", &public, "LENOVO"),
        machine(&s, &t, "m2", &public, "Dell"),
        machine(&s, &t, "m3", &public, "Dell"),
    ];
    for n in ["m1", "m2", "m3"] {
        wait_until(&format!("{n} enrolled"), 60, || {
            s.get(&format!("/api/v1/admin/machines/{n}")).0 == 200
        });
    }
    s.ok(&["fleet", "label", "m1", "site=a"]);
    s.ok(&["fleet", "label", "m2", "site=a", "class=lab"]);
    s.ok(&["fleet", "label", "m3", "site=b"]);
    s.ok(&["fleet", "assign", "*", "lab/stable"]);
    Fleet { s, key, m }
}

#[test]
fn templates_render_per_machine_in_precedence_and_a_change_reaches_only_its_machines() {
    let Fleet { s, key, m, .. } = fleet();
    // global → channel → label (site, then class: class wins) → machine; facts from each
    // machine
    wait_file(&m[0], "motd", "m1 A chan.example LENOVO\n");
    wait_file(&m[1], "motd", "m2 LAB 10.0.0.2 Dell\n");
    wait_file(&m[2], "motd", "m3 B chan.example Dell\n");
    for a in &m {
        let app = upper(a, "app/app.conf");
        wait_until("app.conf", 30, || app.exists());
        assert_eq!(
            read(&app),
            format!("# for {}\nserver a\nserver b\n", a.name)
        );
        let md = std::fs::metadata(&app).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(md.mode() & 0o7777, 0o640, "{}", a.name);
        assert_eq!(md.gid(), 4);
        // its unit restarted once, after the file was written
        wait_until("restart", 30, || {
            read(&restarts(&s, &a.name)) == "app.service\n"
        });
    }
    wait_until("config reported", 30, || {
        config(&s, "m1")["files"] == json!(2)
    });

    // The order of label scopes decides: site after class, the site wins for m2.
    s.ok(&["var", "order", "class", "site"]);
    wait_file(&m[1], "motd", "m2 A 10.0.0.2 Dell\n");

    // A change to site=a reaches m1 and m2; m3 gets nothing (not woken, no new variables).
    let m3_config = read(&m[2].state.join("config.json"));
    let m3_log = m[2].log().len();
    let out = var(&s, &key, "label:site=a", &["site_name=AA"]);
    assert!(
        out.contains("2 machine(s)") && out.contains("m1") && out.contains("m2"),
        "{out}"
    );
    assert!(!out.contains("m3"), "{out}");
    wait_file(&m[0], "motd", "m1 AA chan.example LENOVO\n");
    wait_file(&m[1], "motd", "m2 AA 10.0.0.2 Dell\n");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(read(&m[2].state.join("config.json")), m3_config);
    assert_eq!(m[2].log().len(), m3_log, "{}", m[2].log());
    assert_eq!(read(&upper(&m[2], "motd")), "m3 B chan.example Dell\n");
    // the app.conf of m1 did not change: its unit was not restarted again
    assert_eq!(read(&restarts(&s, "m1")), "app.service\n");
    // a list changed: app.conf rendered again and its unit restarted, on every machine
    var(&s, &key, "global", &["servers:=[\"c\"]"]);
    wait_file(&m[0], "app/app.conf", "# for m1\nserver c\n");
    wait_until("second restart", 30, || {
        read(&restarts(&s, "m1")) == "app.service\napp.service\n"
    });

    // unset: a template naming the variable fails, the file stays
    s.ok(&[
        "var",
        "unset",
        "--scope",
        "machine:m2",
        "--sign-key",
        &key,
        "ntp",
    ]);
    wait_file(&m[1], "motd", "m2 AA chan.example Dell\n");

    // `var list` shows every scope; the dry run on the server renders what the machine has
    let l: Value = serde_json::from_str(&s.ok(&["var", "list", "--json"])).unwrap();
    assert_eq!(l["label_order"], json!(["class", "site"]));
    let sets = l["sets"].as_array().unwrap();
    assert_eq!(sets.len(), 6, "{l:#}");
    let r = s.ok(&["fleet", "render", "m1", "/etc/motd"]);
    assert!(r.contains("m1 AA chan.example LENOVO"), "{r}");
    assert!(!r.contains("app.conf"), "{r}");
    let r: Value = serde_json::from_str(&s.ok(&["fleet", "render", "m2", "--json"])).unwrap();
    assert_eq!(r["files"].as_array().unwrap().len(), 2, "{r:#}");
    assert_eq!(r["vars"]["site_name"], "AA");

    // A fact changes on m3 (its DMI vendor, a new mainboard): woken, it renders again with it,
    // with no new variables and no new release.
    std::fs::write(s.path("facts/m3/sys/class/dmi/id/sys_vendor"), "HP\n").unwrap();
    s.ok(&["push", "m3"]);
    wait_file(&m[2], "motd", "m3 B chan.example HP\n");
    wait_until("the new fact reported", 30, || {
        s.machine("m3")["facts"]["dmi_vendor"] == "HP"
    });
}

#[test]
fn facts_show_in_fleet_show_and_select_machines() {
    let Fleet { s, m, .. } = fleet();
    wait_until("facts reported", 60, || {
        ["m1", "m2", "m3"]
            .iter()
            .all(|n| s.machine(n)["facts"]["hostname"].is_string())
    });
    let v: Value = serde_json::from_str(&s.ok(&["fleet", "show", "m1", "--json"])).unwrap();
    assert_eq!(v["facts"]["dmi_vendor"], "LENOVO");
    assert_eq!(v["facts"]["hostname"], "host-m1");
    let text = s.ok(&["fleet", "show", "m1"]);
    assert!(
        text.contains("LENOVO") && text.contains("host-m1"),
        "{text}"
    );
    let l: Value =
        serde_json::from_str(&s.ok(&["fleet", "list", "fact.dmi_vendor=LENOVO", "--json"]))
            .unwrap();
    let names: Vec<&str> = l
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["m1"]);
    let l: Value =
        serde_json::from_str(&s.ok(&["fleet", "list", "site=a,fact.dmi_vendor=Dell", "--json"]))
            .unwrap();
    assert_eq!(l.as_array().unwrap().len(), 1);
    assert_eq!(l[0]["name"], "m2");
    let e = s.cli(&["fleet", "list", "fact.colour=red"]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("unknown fact"));
    drop(m);
}

#[test]
fn sets_not_signed_by_a_trusted_key_are_refused_by_the_agent_and_change_nothing() {
    let Fleet { s, m, .. } = fleet();
    wait_file(&m[0], "motd", "m1 A chan.example LENOVO\n");
    // signed by a key the machines do not trust: the server takes it, every agent refuses it
    let (other, _) = keygen(&s, "other.key");
    var(&s, &other, "machine:m1", &["site_name=EVIL"]);
    wait_until("refusal reported", 60, || {
        config(&s, "m1")["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not trust"))
    });
    assert_eq!(read(&upper(&m[0], "motd")), "m1 A chan.example LENOVO\n");

    // A set whose signature does not cover it, or without one: the server refuses it
    let (st, v) = s.put(
        "/api/v1/admin/vars",
        &json!({
            "set": {"scope": "global", "version": 99, "vars": {"ntp": "evil"}},
            "signature": {"key": "11".repeat(32), "signature": "00".repeat(64)}
        }),
    );
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("variable set refused"),
        "{v}"
    );
    let (st, v) = s.put(
        "/api/v1/admin/vars",
        &json!({"set": {"scope": "global", "version": 99, "vars": {}}}),
    );
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("signature"), "{v}");
    // an older version of a scope: refused as stale
    let l: Value = serde_json::from_str(&s.ok(&["var", "list", "--json"])).unwrap();
    assert!(
        l["sets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["vars"]["ntp"] != "evil")
    );

    // A set changed in the server's database (a compromised server): the agent refuses it.
    let mut s = s;
    s.kill();
    let db = s.data.join("fleet.db");
    sh(&format!(
        "python3 -c \"import sqlite3; c = sqlite3.connect('{}'); \
         c.execute(\\\"UPDATE var_sets SET body = replace(body, 'pool.example', 'evil.example') \
         WHERE scope = 'global'\\\"); c.commit()\"",
        db.display()
    ));
    s.restart();
    wait_until("forged set refused", 60, || {
        config(&s, "m2")["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not verify"))
    });
    assert_eq!(read(&upper(&m[1], "motd")), "m2 LAB 10.0.0.2 Dell\n");
    assert_eq!(read(&upper(&m[2], "motd")), "m3 B chan.example Dell\n");
}

#[test]
fn broken_templates_and_bad_variables_give_clear_errors_and_change_nothing() {
    let Fleet { s, key, m, .. } = fleet();
    wait_file(&m[0], "motd", "m1 A chan.example LENOVO\n");
    // bad variables: refused before anything is stored
    for (args, want) in [
        (vec!["--scope", "global", "Bad-Name=x"], "bad variable name"),
        (vec!["--scope", "global", "facts=x"], "reserved"),
        (vec!["--scope", "team:x", "a=b"], "bad scope"),
        (vec!["--scope", "label:site", "a=b"], "expected key=value"),
        (vec!["--scope", "global", "a:=1.5"], "not an integer"),
        (vec!["--scope", "global", "a:={"], "not JSON"),
    ] {
        let mut a = vec!["var", "set", "--sign-key", key.as_str()];
        a.extend(args.iter());
        let out = s.cli(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{args:?}: {err}"
        );
    }
    let big = format!("a={}", "x".repeat(20_000));
    let out = s.cli(&["var", "set", "--sign-key", &key, "--scope", "global", &big]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most"));
    let l: Value = serde_json::from_str(&s.ok(&["var", "list", "--json"])).unwrap();
    assert_eq!(l["sets"].as_array().unwrap().len(), 6);

    // a release whose template is broken (line 2): named with its line, the files stay
    let src = s.path("img2");
    image_with(
        &src,
        2,
        &[
            ("templates.toml", MANIFEST),
            ("motd.j2", "fine\n{% if ntp %}never closed\n"),
            ("app.conf.j2", APP),
        ],
    );
    let v2 = s.release(&src, "lab/stable");
    wait_until("m1 on v2", 60, || {
        m[0].current().as_deref() == Some(v2.as_str())
    });
    wait_until("error reported", 60, || {
        config(&s, "m1")["error"].as_str().is_some_and(|e| {
            e.contains("motd.j2") && e.contains("/etc/motd") && e.contains("line 2")
        })
    });
    assert_eq!(read(&upper(&m[0], "motd")), "m1 A chan.example LENOVO\n");
    let out = s.cli(&["fleet", "render", "m1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("motd.j2") && err.contains("line 2"),
        "{err}"
    );

    // a template naming a variable no scope sets
    let src = s.path("img3");
    image_with(
        &src,
        3,
        &[
            ("templates.toml", MANIFEST),
            ("motd.j2", "{{ machine.name }}\n{{ no_such_var }}\n"),
            ("app.conf.j2", APP),
        ],
    );
    let v3 = s.release(&src, "lab/stable");
    wait_until("m2 on v3", 60, || {
        m[1].current().as_deref() == Some(v3.as_str())
    });
    wait_until("undefined reported", 60, || {
        config(&s, "m2")["error"].as_str().is_some_and(|e| {
            e.contains("motd.j2") && e.contains("undefined") && e.contains("line 2")
        })
    });
    assert_eq!(read(&upper(&m[1], "motd")), "m2 LAB 10.0.0.2 Dell\n");

    // the variable set: rendered, the error cleared
    var(&s, &key, "global", &["no_such_var=now"]);
    wait_file(&m[1], "motd", "m2\nnow\n");
    wait_until("error cleared", 60, || config(&s, "m2")["error"].is_null());
}

#[test]
fn rendered_files_are_not_etc_drift_but_a_local_edit_of_them_is() {
    let Fleet { s, mut m, .. } = fleet();
    wait_file(&m[0], "motd", "m1 A chan.example LENOVO\n");
    wait_until("app.conf", 30, || upper(&m[0], "app/app.conf").exists());
    // stopped at once: a kill while rendering leaves no file unrecorded
    let a = &mut m[0];
    a.stop();
    let out = a.run(&["verify", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        out.status.success(),
        "{v:#} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        v["etc_drift"],
        json!([]),
        "{v:#} {}",
        read(&a.state.join("config.json"))
    );
    std::fs::write(upper(a, "motd"), "edited by hand\n").unwrap();
    let out = a.run(&["verify", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let drift = v["etc_drift"].to_string();
    assert!(
        drift.contains("/etc/motd") && !drift.contains("app.conf"),
        "{v:#}"
    );
    drop(s);
}
