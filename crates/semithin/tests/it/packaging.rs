//! `packaging/`: the example settings are read by the real parsers, the systemd units run flags
//! the binary has, and the initramfs mount functions assemble a root as docs/BOOT.md says (in a
//! mount namespace of their own, so nothing outlives the test).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::BIN;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging")
        .canonicalize()
        .expect("the packaging directory")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("semithin-packaging")
        .tempdir()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The example with every commented-out `# key = value` line turned into a setting; the number
/// of lines turned.
fn uncommented(example: &str) -> (String, usize) {
    let mut n = 0;
    let mut out = String::new();
    for line in example.lines() {
        let setting = line.strip_prefix("# ").filter(|rest| {
            rest.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
        });
        match setting {
            Some(s) => {
                n += 1;
                out.push_str(s);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    (out, n)
}

#[test]
fn the_example_agent_settings_are_what_the_agent_reads() {
    let path = packaging().join("agent.toml");
    let c = semithin_agent::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.server.as_deref(), Some("https://updates.example.org"));
    assert_eq!(
        c.trusted_root.as_deref(),
        Some(Path::new("/etc/semithin/root.json"))
    );
    assert_eq!(c.health_deadline_secs, 1800);
    assert_eq!(c.health_checks.len(), 1);
    assert!(c.health_checks[0].contains("$SEMITHIN_DEPLOYMENT"));
    assert_eq!(c.labels.get("site").map(String::as_str), Some("school-12"));
    assert_eq!(c.name, None);

    // The commented-out keys are settings too.
    let dir = tempdir();
    let (all, n) = uncommented(&read(&path));
    assert_eq!(
        n, 11,
        "name, token_file, token, channel, follow_channel_changes, etc_upper, backup_dir, \
         boot_loader, esp, boot_options and efivars are \
         commented out:\n{all}"
    );
    let all_path = dir.path().join("all.toml");
    std::fs::write(&all_path, &all).unwrap();
    let c = semithin_agent::Config::load(&all_path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.name.as_deref(), Some("lab-07"));
    assert!(c.token.is_some());
    assert_eq!(c.channel.as_deref(), Some("lab/stable"));
    assert!(!c.follow_channel_changes);
    assert!(c.etc_upper.is_some());
    assert_eq!(
        c.backup_dir.as_deref(),
        Some(Path::new("/var/backups/semithin"))
    );
    assert_eq!(c.boot_loader, semithin_agent::bootloader::Kind::SystemdBoot);
    assert_eq!(c.esp, Path::new("/boot/efi"));
    assert_eq!(c.etc_policy, semithin_agent::config::EtcPolicy::Restore);
    assert!(c.etc_restore().unwrap().len() >= 5);
    assert_eq!(
        c.token_file.as_deref(),
        Some(Path::new("/etc/semithin/enroll-token"))
    );

    // The parser refuses what it does not know, so the checks above mean something.
    let bogus = dir.path().join("bogus.toml");
    std::fs::write(&bogus, format!("healthcheck = []\n{all}")).unwrap();
    let e = semithin_agent::Config::load(&bogus)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field"), "{e}");

    // The binary reads it the same way (`agent status` reads an existing state directory).
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    let out = Command::new(BIN)
        .arg("agent")
        .arg("--config")
        .arg(&path)
        .arg("--state")
        .arg(dir.path().join("state"))
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"]["machine_id"], serde_json::Value::Null, "{v}");
    let out = Command::new(BIN)
        .arg("agent")
        .arg("--config")
        .arg(&bogus)
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("unknown field"), "{}", text(&out));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for a process to end by itself; `None` if it is still running after `secs`.
fn wait_exit(child: &mut Child, secs: u64) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The one `ExecStart=` line of a unit, split into words.
fn exec_start(unit: &str) -> Vec<String> {
    let text = read(&packaging().join("systemd").join(unit));
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("ExecStart="))
        .collect();
    assert_eq!(lines.len(), 1, "{unit} must have one ExecStart= line");
    lines[0].split_whitespace().map(str::to_owned).collect()
}

/// The words of `unit`'s ExecStart with the installed paths replaced by test ones, the binary
/// by the one under test.
fn runnable(unit: &str, replace: &[(&str, &Path)]) -> Command {
    let words = exec_start(unit);
    let mut c = Command::new(BIN);
    for w in &words[1..] {
        match replace.iter().find(|(from, _)| from == w) {
            Some((_, to)) => c.arg(to),
            None => c.arg(w),
        };
    }
    c
}

#[test]
fn the_units_start_the_binary_with_flags_it_has() {
    let units = [
        ("semithin-agent.service", "agent"),
        ("semithin-agent-once.service", "agent"),
        ("semithin-server.service", "serve"),
    ];
    for (unit, sub) in units {
        let words = exec_start(unit);
        assert!(words[0].ends_with("/semithin"), "{unit}: {words:?}");
        assert_eq!(words[1], sub, "{unit}");
        let out = Command::new(BIN).args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let flags: Vec<&str> = help
            .split(|c: char| c.is_whitespace() || matches!(c, ',' | '[' | ']'))
            .filter(|w| w.starts_with("--"))
            .collect();
        for w in words.iter().filter(|w| w.starts_with("--")) {
            let flag = w.split('=').next().unwrap();
            assert!(
                flags.contains(&flag),
                "{unit} uses {flag}, which `semithin {sub} --help` does not list:\n{help}"
            );
        }
    }

    // The daemon and the timer's run are the same command but for --once, on the state
    // directory the boot script expects by default.
    let daemon = exec_start("semithin-agent.service");
    let once = exec_start("semithin-agent-once.service");
    assert_eq!(once.last().map(String::as_str), Some("--once"));
    assert_eq!(daemon[..], once[..once.len() - 1]);
    let state = daemon
        .iter()
        .position(|w| w == "--state")
        .map(|i| daemon[i + 1].clone())
        .expect("--state");
    assert_eq!(state, "/var/lib/semithin");
    let boot = read(&packaging().join("initramfs-tools/scripts/local-bottom/semithin"));
    assert!(boot.contains(&format!("state={state}\n")), "{boot}");

    let timer = read(&packaging().join("systemd/semithin-agent.timer"));
    assert!(
        timer.contains("\nUnit=semithin-agent-once.service\n"),
        "{timer}"
    );
    assert!(timer.contains("\nRandomizedDelaySec="), "{timer}");
    let daemon_unit = read(&packaging().join("systemd/semithin-agent.service"));
    assert!(
        daemon_unit.contains("\nConflicts=semithin-agent-once.service semithin-agent.timer\n"),
        "{daemon_unit}"
    );

    // Both agent command lines run as they are (with a test state directory).
    let dir = tempdir();
    let agent_toml = packaging().join("agent.toml");
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    for unit in ["semithin-agent.service", "semithin-agent-once.service"] {
        let out = runnable(
            unit,
            &[
                ("/etc/semithin/agent.toml", &agent_toml),
                ("/var/lib/semithin", &state_dir),
            ],
        )
        .args(["status", "--json"])
        .output()
        .unwrap();
        assert!(out.status.success(), "{unit}: {}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["report"]["current"],
            serde_json::Value::Null,
            "{unit}: {v}"
        );
        assert_eq!(
            v["report"]["agent_version"],
            env!("CARGO_PKG_VERSION"),
            "{unit}: {v}"
        );
    }
}

#[test]
fn the_server_unit_and_settings_start_a_server() {
    let dir = tempdir();
    let server_toml = packaging().join("server.toml");
    let data = dir.path().join("data");
    let port = free_port();
    let log = dir.path().join("server.log");
    let mut child = runnable(
        "semithin-server.service",
        &[("/etc/semithin/server.toml", &server_toml)],
    )
    .arg("--data")
    .arg(&data)
    .args(["--listen", &format!("127.0.0.1:{port}")])
    .env_remove("SEMITHIN_ADMIN_TOKEN")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let url = format!("http://127.0.0.1:{port}/api/v1/health");
    let http = semithin_agent::http::client_builder(None)
        .unwrap()
        .build()
        .unwrap();
    let start = Instant::now();
    let answer = loop {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("semithin serve exited ({s}):\n{}", read(&log));
        }
        if let Ok(r) = http.get(&url).send() {
            break (r.status().as_u16(), r.text().unwrap());
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server did not answer within 30 s:\n{}",
            read(&log)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = wait_exit(&mut child, 30);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(answer, (200, "ok\n".to_owned()));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}:\n{}",
        read(&log)
    );
    assert!(
        data.join("admin-token").exists(),
        "the data directory is --data's"
    );

    // The commented-out keys are settings too. With all of them the server refuses to start,
    // naming the certificate file that is not there, before it makes anything.
    let (all, n) = uncommented(&read(&server_toml));
    assert_eq!(
        n, 3,
        "admin_token, tls_cert and tls_key are commented out:\n{all}"
    );
    let all_path = dir.path().join("all.toml");
    std::fs::write(&all_path, &all).unwrap();
    let data2 = dir.path().join("data2");
    let serve = |config: &Path, data: &Path| {
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("SEMITHIN_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_exit(&mut child, 60);
        if status.is_none() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        let status =
            status.unwrap_or_else(|| panic!("semithin serve kept running: {}", text(&out)));
        (status, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (status, err) = serve(&all_path, &data2);
    assert!(!status.success());
    assert!(!err.contains("settings file"), "{err}");
    assert!(err.contains("/etc/semithin/tls/cert.pem"), "{err}");
    assert!(
        !data2.exists(),
        "nothing is made before TLS is known good: {err}"
    );

    // Without the TLS lines, the server takes the admin token from the file: no
    // DATA/admin-token is made, and the file's token is the one the admin API takes.
    let plain: String = all
        .lines()
        .filter(|l| !l.starts_with("tls_"))
        .map(|l| format!("{l}\n"))
        .collect();
    let plain_path = dir.path().join("plain.toml");
    std::fs::write(&plain_path, &plain).unwrap();
    let token = plain
        .lines()
        .find_map(|l| l.strip_prefix("admin_token = "))
        .expect("admin_token in the example")
        .trim_matches('"')
        .to_owned();
    let port = free_port();
    let data4 = dir.path().join("data4");
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&plain_path)
        .arg("--data")
        .arg(&data4)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("SEMITHIN_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stats = format!("http://127.0.0.1:{port}/api/v1/admin/stats");
    let start = Instant::now();
    let answer = loop {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("semithin serve exited ({s}):\n{}", read(&log));
        }
        if let Ok(r) = http.get(&stats).bearer_auth(&token).send() {
            break r.status().as_u16();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server did not answer within 30 s:\n{}",
            read(&log)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answer, 200, "{}", read(&log));
    assert!(data4.join("repo/config").exists());
    assert!(!data4.join("admin-token").exists());

    // The parser refuses what it does not know, so the checks above mean something.
    let bogus = dir.path().join("bogus.toml");
    std::fs::write(&bogus, format!("port = 8470\n{}", read(&server_toml))).unwrap();
    let (status, err) = serve(&bogus, &dir.path().join("data3"));
    assert!(!status.success());
    assert!(
        err.contains("settings file") && err.contains("unknown field"),
        "{err}"
    );
}

const INITRAMFS: &str = "initramfs-tools";

fn mount_sh() -> PathBuf {
    packaging().join(INITRAMFS).join("semithin-mount.sh")
}

/// Runs a shell script with `sh` inside a mount namespace of its own (private propagation):
/// every mount it makes goes away with it.
fn in_mount_namespace(dir: &Path, script: &str) -> Output {
    let path = dir.join("test.sh");
    std::fs::write(&path, script).unwrap();
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh"])
        .arg(&path)
        .arg(dir)
        .arg(mount_sh())
        .output()
        .unwrap()
}

/// Shared by the namespace scripts: a fake root partition holding the agent's state with one
/// deployment, and checks. `$1` is the test directory, `$2` semithin-mount.sh.
const SETUP: &str = r#"
set -eu
T=$1
. "$2"
ID=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
S=/var/lib/semithin
fail() { echo "FAIL: $*" >&2; exit 1; }
# Whether something is mounted on $1.
mounted() {
    while read -r _a _b _c _d _m _rest; do
        [ "$_m" = "$1" ] && return 0
    done < /proc/self/mountinfo
    return 1
}
# A root partition at $1: its own /var, the state directory, deployment $ID, current -> it.
make_partition() {
    D=$1$S/deployments/$ID
    mkdir -p "$D/etc" "$D/var/cache" "$D/usr/bin" "$D/dev" "$D/proc" "$D/sys" "$D/run" "$D/sbin" \
        "$1/var/log"
    echo image > "$D/etc/motd"
    printf '#!/bin/sh\necho x\n' > "$D/usr/bin/x"
    echo image > "$D/var/cache/from-image"
    echo partition > "$1/marker"
    ln -s ../lib/systemd/systemd "$D/sbin/init"
    ln -s "deployments/$ID" "$1$S/current"
}
"#;

#[test]
fn the_boot_mount_makes_a_read_only_root_with_a_writable_etc_and_the_partitions_var() {
    let dir = tempdir();
    let script = format!(
        "{SETUP}{}",
        r#"
P=$T/part
N=$T/newroot
mkdir -p "$N"
make_partition "$P"
D=$P$S/deployments/$ID
before=$(sort /proc/self/mountinfo)

semithin_mount "$P" "$S" "$N" /sbin/init 2>"$T/msg" || fail "semithin_mount: $(cat "$T/msg")"
echo "mounted: $(cat "$T/msg")"
[ "$SEMITHIN_ID" = "$ID" ] || fail "SEMITHIN_ID is '$SEMITHIN_ID'"
mounted "$N" && mounted "$N/etc" && mounted "$N/var" || fail "not all of /, /etc, /var are mounted"
[ "$(cat "$N/usr/bin/x")" = "$(cat "$D/usr/bin/x")" ] || fail "the root is not the deployment"

# / is read-only
if out=$(touch "$N/usr/new" 2>&1); then fail "wrote to the root's /usr"; fi
echo "usr: $out"
if out=$(rm "$N/usr/bin/x" 2>&1); then fail "removed a file of the root"; fi
[ -f "$D/usr/bin/x" ] || fail "the deployment lost a file"

# /etc is writable, and writes land in the overlay's upper directory
echo local > "$N/etc/motd"
echo new > "$N/etc/new"
[ "$(cat "$N/etc/motd")" = local ] || fail "the change to /etc/motd is not seen"
[ "$(cat "$P$S/overlay/etc/upper/motd")" = local ] || fail "/etc/motd is not in the upper dir"
[ "$(cat "$P$S/overlay/etc/upper/new")" = new ] || fail "/etc/new is not in the upper dir"
[ "$(cat "$D/etc/motd")" = image ] || fail "the deployment's etc/motd changed"
[ ! -e "$D/etc/new" ] || fail "the deployment got etc/new"

# /var is the partition's own: writes land there, the image's var is not seen, and the state
# directory is at its usual path
echo log > "$N/var/log/boot.log"
[ "$(cat "$P/var/log/boot.log")" = log ] || fail "/var writes do not land on the partition"
[ ! -e "$D/var/log" ] || fail "a /var write landed in the deployment"
[ ! -e "$N/var/cache/from-image" ] || fail "the image's /var shows through"
[ "$(readlink "$N$S/current")" = "deployments/$ID" ] || fail "the state is not at $S"

umount "$N/var"
umount "$N/etc"
umount "$N"
[ "$(sort /proc/self/mountinfo)" = "$before" ] || fail "the unmounts left something"

# A missing or broken current link: a clear message, nothing mounted, nothing made.
try() {
    if semithin_mount "$P" "$S" "$N" "$@" 2>"$T/msg"; then fail "semithin_mount succeeded"; fi
    [ "$(sort /proc/self/mountinfo)" = "$before" ] || fail "a failed semithin_mount mounted something"
    [ -z "$(ls -A "$N")" ] || fail "a failed semithin_mount wrote into the new root"
    echo "message: $(tr '\n' ' ' < "$T/msg")"
}
ln -sfn "deployments/fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210" "$P$S/current"
try
ln -sfn "../../../etc" "$P$S/current"
try
ln -sfn "deployments/$ID/../$ID" "$P$S/current"
try
rm "$P$S/current"
try
echo "deployments/$ID" > "$P$S/current"
try
rm "$P$S/current"
ln -s "deployments/$ID" "$P$S/current"
try /sbin/missing-init
rm -r "$D/var"
try
echo done
"#
    );
    let out = in_mount_namespace(dir.path(), &script);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.ends_with("done\n"), "{all}");
    assert!(
        stdout.contains("mounted: semithin: root is deployment 0123456789abcdef"),
        "{all}"
    );
    assert!(stdout.contains("Read-only file system"), "{all}");
    let messages: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("message: semithin: "))
        .map(str::trim_end)
        .collect();
    let want = [
        "points at deployments/fedcba9876543210",
        "points at '../../../etc', not at deployments/ID",
        "not at deployments/ID",
        "no deployment is current",
        "is not a symlink",
        "has no /sbin/missing-init",
        "has no /var directory to mount on",
    ];
    assert_eq!(messages.len(), want.len(), "{all}");
    for (m, w) in messages.iter().zip(want) {
        assert!(m.contains(w), "expected {w:?} in {m:?}");
    }
    assert!(
        messages[0].ends_with("which is not a directory"),
        "{}",
        messages[0]
    );

    // Outside the namespace: the writes are on the partition, and no mount is left.
    let upper = dir
        .path()
        .join("part/var/lib/semithin/overlay/etc/upper/motd");
    assert_eq!(read(&upper), "local\n");
    assert_eq!(read(&dir.path().join("part/var/log/boot.log")), "log\n");
    let here = read(Path::new("/proc/self/mountinfo"));
    assert!(
        !here.contains(&dir.path().display().to_string()),
        "a mount outlived the namespace:\n{here}"
    );
    dir.close().unwrap();
}

#[test]
fn the_boot_moves_the_partition_aside_and_puts_it_back_when_it_cannot_boot_the_deployment() {
    let dir = tempdir();
    let script = format!(
        "{SETUP}{}",
        r#"
# The initramfs's view: the partition (a tmpfs here) mounted read-only at R.
R=$T/root
Y=$T/run/semithin/sysroot
mkdir -p "$R"
mount -t tmpfs partition "$R"
make_partition "$R"
mount -o remount,ro "$R"
semithin_is_ro "$R" || fail "the partition is not read-only to begin with"

semithin_boot "$R" "$S" "$Y" /sbin/init 2>"$T/msg" || fail "semithin_boot: $(cat "$T/msg")"
echo "booted: $(cat "$T/msg")"
[ "$(cat "$Y/marker")" = partition ] || fail "the partition is not at $Y"
[ ! -e "$R/marker" ] || fail "the root is still the partition"
semithin_is_ro "$Y" && fail "the partition is still read-only"
if touch "$R/usr/new" 2>/dev/null; then fail "the root is writable"; fi
echo e > "$R/etc/e"
[ -f "$Y$S/overlay/etc/upper/e" ] || fail "/etc writes do not land in the overlay"
echo v > "$R/var/log/v"
[ -f "$Y/var/log/v" ] || fail "/var writes do not land on the partition"

# Back to the initramfs's view, then: a deployment that cannot be mounted (the overlay's upper
# directory is a file). The partition goes back to R, read-only again.
umount "$R/var"
umount "$R/etc"
umount "$R"
mount -o move "$Y" "$R"
rm -r "$R$S/overlay/etc/upper"
echo not-a-dir > "$R$S/overlay/etc/upper"
mount -o remount,ro "$R"
before=$(sort /proc/self/mountinfo)
rc=0
semithin_boot "$R" "$S" "$Y" /sbin/init 2>"$T/msg" || rc=$?
[ "$rc" = 1 ] || fail "semithin_boot returned $rc"
echo "message: $(tr '\n' ' ' < "$T/msg")"
[ "$(cat "$R/marker")" = partition ] || fail "the partition is not back at $R"
mounted "$Y" && fail "something is still mounted at $Y"
semithin_is_ro "$R" || fail "the partition is not read-only again"
[ "$(sort /proc/self/mountinfo)" = "$before" ] || fail "the mounts differ from before"

# A broken current link: nothing is moved or remounted at all.
rc=0
semithin_boot "$R" "$S" "$Y" /sbin/missing-init 2>"$T/msg" || rc=$?
[ "$rc" = 1 ] || fail "semithin_boot returned $rc"
echo "message: $(tr '\n' ' ' < "$T/msg")"
[ "$(sort /proc/self/mountinfo)" = "$before" ] || fail "the mounts differ from before"
echo done
"#
    );
    let out = in_mount_namespace(dir.path(), &script);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.ends_with("done\n"), "{all}");
    assert!(
        stdout.contains("booted: semithin: root is deployment"),
        "{all}"
    );
    let messages: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("message: "))
        .collect();
    assert_eq!(messages.len(), 2, "{all}");
    assert!(messages[0].contains("semithin: cannot make"), "{all}");
    assert!(messages[1].contains("has no /sbin/missing-init"), "{all}");
    let here = read(Path::new("/proc/self/mountinfo"));
    assert!(
        !here.contains(&dir.path().display().to_string()),
        "a mount outlived the namespace:\n{here}"
    );
    dir.close().unwrap();
}

#[test]
fn a_deployment_that_fails_its_check_at_boot_is_not_mounted_and_the_partition_goes_back() {
    let dir = tempdir();
    let script = format!(
        "{SETUP}{}",
        r#"
R=$T/root
Y=$T/run/semithin/sysroot
mkdir -p "$R"
mount -t tmpfs partition "$R"
make_partition "$R"
mount -o remount,ro "$R"
# The agent's binary as the hook puts it in the initramfs: here one that says how it was run
# and whether the partition was writable then, and fails or not.
SEMITHIN_BIN=$T/fake-semithin
printf '#!/bin/sh\necho "$*" > %s/args\ntouch "$3/written" && echo rw >> %s/args\nexit $(cat %s/rc)\n' "$T" "$T" "$T" > "$SEMITHIN_BIN"
chmod 0755 "$SEMITHIN_BIN"
before=$(sort /proc/self/mountinfo)

SEMITHIN_VERIFY=full
echo 1 > "$T/rc"
rc=0
semithin_boot "$R" "$S" "$Y" /sbin/init 2>"$T/msg" || rc=$?
[ "$rc" = 1 ] || fail "a failed check: semithin_boot returned $rc"
echo "message: $(tr '\n' ' ' < "$T/msg")"
echo "args: $(tr '\n' ' ' < "$T/args")"
[ "$(cat "$R/marker")" = partition ] || fail "the partition is not back at $R"
semithin_is_ro "$R" || fail "the partition is not read-only again"
[ "$(sort /proc/self/mountinfo)" = "$before" ] || fail "the mounts differ from before"

# semithin.verify=quick (the default) asks the binary for the quick check, which fails alike.
SEMITHIN_VERIFY=quick
rc=0
semithin_boot "$R" "$S" "$Y" /sbin/init 2>"$T/msg" || rc=$?
[ "$rc" = 1 ] || fail "a failed quick check: semithin_boot returned $rc"
echo "quick args: $(tr '\n' ' ' < "$T/args")"
[ "$(sort /proc/self/mountinfo)" = "$before" ] || fail "quick: the mounts differ from before"

rm "$SEMITHIN_BIN"
rc=0
semithin_boot "$R" "$S" "$Y" /sbin/init 2>"$T/msg" || rc=$?
[ "$rc" = 1 ] || fail "no binary: semithin_boot returned $rc"
echo "message: $(tr '\n' ' ' < "$T/msg")"
[ "$(sort /proc/self/mountinfo)" = "$before" ] || fail "the mounts differ from before"

# semithin.verify=off: the binary is not needed.
SEMITHIN_VERIFY=off
semithin_boot "$R" "$S" "$Y" /sbin/init 2>"$T/msg" || fail "verify=off: $(cat "$T/msg")"
[ "$(cat "$Y/marker")" = partition ] || fail "verify=off: the partition is not at $Y"
echo done
"#
    );
    let out = in_mount_namespace(dir.path(), &script);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.ends_with("done\n"), "{all}");
    let args = format!(
        "args: agent --state {}/root/var/lib/semithin boot-verify rw ",
        dir.path().display()
    );
    assert!(stdout.contains(&args), "{args:?} not in {all}");
    let quick = format!(
        "quick args: agent --state {}/root/var/lib/semithin boot-verify --quick rw ",
        dir.path().display()
    );
    assert!(stdout.contains(&quick), "{quick:?} not in {all}");
    let messages: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("message: "))
        .collect();
    assert_eq!(messages.len(), 2, "{all}");
    assert!(
        messages[0].contains("semithin: the deployment failed its verification: it is not booted"),
        "{all}"
    );
    assert!(
        messages[1].contains("fake-semithin is missing, so the deployment cannot be verified"),
        "{all}"
    );
    dir.close().unwrap();
}

#[test]
fn a_release_under_trial_is_booted_once_then_switched_back_unless_confirmed() {
    let dir = tempdir();
    let script = format!(
        "{SETUP}{}",
        r#"
R=$T/root
Y=$T/run/semithin/sysroot
mkdir -p "$R"
mount -t tmpfs partition "$R"
make_partition "$R"
NEW=fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210
cp -a "$R$S/deployments/$ID" "$R$S/deployments/$NEW"
echo new > "$R$S/deployments/$NEW/etc/motd"
# The agent switched to NEW and opened a trial.
ln -sfn "deployments/$NEW" "$R$S/current"
echo "$NEW $ID" > "$R$S/trial"
mount -o remount,ro "$R"
# Back to the initramfs's view after a boot.
unboot() {
    umount "$R/var"
    umount "$R/etc"
    umount "$R"
    mount -o move "$Y" "$R"
    mount -o remount,ro "$R"
}
boot() {
    semithin_boot "$R" "$S" "$Y" /sbin/init 2>"$T/msg" || fail "semithin_boot: $(cat "$T/msg")"
    echo "$1: $(tr '
' ' ' < "$T/msg")"
}
writable() {
    mount -o remount,rw "$R"
    "$@"
    mount -o remount,ro "$R"
}

# The first boot of the trial mounts NEW and counts it.
boot boot1
[ "$SEMITHIN_ID" = "$NEW" ] || fail "the first boot mounted $SEMITHIN_ID"
[ "$(cat "$R/etc/motd")" = new ] || fail "the root is not the new release"
[ "$(cat "$Y$S/trial-boots")" = "$NEW 1" ] || fail "trial-boots: $(cat "$Y$S/trial-boots")"
[ ! -e "$Y$S/trial-failed" ] || fail "a marker after the first boot"
unboot
semithin_is_ro "$R" || fail "the partition is not read-only again"

# Not confirmed: the second boot switches back to ID, says why, and mounts ID.
boot boot2
[ "$SEMITHIN_ID" = "$ID" ] || fail "the second boot mounted $SEMITHIN_ID"
[ "$(cat "$R/etc/motd")" = image ] || fail "the root is not the previous release"
[ "$(readlink "$Y$S/current")" = "deployments/$ID" ] || fail "current: $(readlink "$Y$S/current")"
read -r mrel mreason < "$Y$S/trial-failed"
[ "$mrel" = "$NEW" ] || fail "the marker names $mrel"
echo "marker: $mreason"
[ -f "$Y$S/trial" ] || fail "the trial file is the agent's to remove"
for f in .current.boot.tmp .trial-failed.tmp .trial-boots.tmp; do
    [ ! -e "$Y$S/$f" ] || fail "$f left behind"
done
unboot

# Switched back already: later boots count nothing and change nothing.
boot boot3
[ "$SEMITHIN_ID" = "$ID" ] || fail "the third boot mounted $SEMITHIN_ID"
[ "$(cat "$Y$S/trial-boots")" = "$NEW 1" ] || fail "counted again"
unboot

# A confirmed trial: the agent removed its files; NEW is booted for good.
writable rm "$R$S/trial" "$R$S/trial-boots" "$R$S/trial-failed"
writable ln -sfn "deployments/$NEW" "$R$S/current"
for n in 1 2 3; do
    boot confirmed$n
    [ "$SEMITHIN_ID" = "$NEW" ] || fail "a confirmed release was switched back"
    [ ! -e "$Y$S/trial-boots" ] && [ ! -e "$Y$S/trial-failed" ] || fail "a confirmed release was counted"
    unboot
done

# semithin.tries=2: two boots of the trial, the third switches back.
writable sh -c "echo '$ID $NEW' > '$R$S/trial'; ln -sfn 'deployments/$ID' '$R$S/current'"
SEMITHIN_TRIES=2
boot tries1
[ "$SEMITHIN_ID" = "$ID" ] || fail "tries=2, boot 1 mounted $SEMITHIN_ID"
unboot
boot tries2
[ "$SEMITHIN_ID" = "$ID" ] || fail "tries=2, boot 2 mounted $SEMITHIN_ID"
[ "$(cat "$Y$S/trial-boots")" = "$ID 2" ] || fail "trial-boots: $(cat "$Y$S/trial-boots")"
unboot
boot tries3
[ "$SEMITHIN_ID" = "$NEW" ] || fail "tries=2, boot 3 mounted $SEMITHIN_ID"
unboot

# No previous deployment (the machine ran the base system before): the link is removed, and the
# base system boots, the partition as it was.
writable sh -c "rm '$R$S/trial-failed' '$R$S/trial-boots'; echo '$NEW -' > '$R$S/trial'; ln -sfn 'deployments/$NEW' '$R$S/current'"
SEMITHIN_TRIES=1
boot nothing1
unboot
before=$(sort /proc/self/mountinfo)
rc=0
semithin_boot "$R" "$S" "$Y" /sbin/init 2>"$T/msg" || rc=$?
[ "$rc" = 1 ] || fail "semithin_boot returned $rc"
echo "nothing2: $(tr '
' ' ' < "$T/msg")"
[ ! -e "$R$S/current" ] && [ ! -L "$R$S/current" ] || fail "current is still there"
semithin_is_ro "$R" || fail "the partition is not read-only again"
[ "$(sort /proc/self/mountinfo)" = "$before" ] || fail "the mounts differ from before"
echo done
"#
    );
    let out = in_mount_namespace(dir.path(), &script);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.ends_with("done\n"), "{all}");
    let line = |p: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(p))
            .unwrap_or_else(|| panic!("no line {p}: {all}"))
            .to_owned()
    };
    assert!(line("boot1: ").contains("boot 1 of 1"), "{all}");
    let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    assert!(
        line("boot2: ").contains(&format!("the boot switched back to {id}")),
        "{all}"
    );
    let marker = line("marker: ");
    assert!(
        marker.contains("booted 1 time(s) without being confirmed healthy (semithin.tries=1)"),
        "{all}"
    );
    assert!(!line("boot3: ").contains("under trial"), "{all}");
    assert!(line("tries2: ").contains("boot 2 of 2"), "{all}");
    assert!(
        line("nothing2: ").contains("no previous deployment"),
        "{all}"
    );
    assert!(
        line("nothing2: ").contains("no deployment is current"),
        "{all}"
    );
    let here = read(Path::new("/proc/self/mountinfo"));
    assert!(
        !here.contains(&dir.path().display().to_string()),
        "a mount outlived the namespace:\n{here}"
    );
    dir.close().unwrap();
}

#[test]
fn the_entry_the_boot_loader_booted_decides_the_deployment_and_a_trial_it_went_back_from_fails() {
    let dir = tempdir();
    let script = format!(
        "{SETUP}{}",
        r#"
R=$T/root
Y=$T/run/semithin/sysroot
mkdir -p "$R"
mount -t tmpfs partition "$R"
make_partition "$R"
NEW=fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210
cp -a "$R$S/deployments/$ID" "$R$S/deployments/$NEW"
echo new > "$R$S/deployments/$NEW/etc/motd"
mount -o remount,ro "$R"
unboot() {
    umount "$R/var"
    umount "$R/etc"
    umount "$R"
    mount -o move "$Y" "$R"
    mount -o remount,ro "$R"
}
boot() {
    semithin_boot "$R" "$S" "$Y" /sbin/init 2>"$T/msg" || fail "semithin_boot: $(cat "$T/msg")"
    echo "$1: $(tr '
' ' ' < "$T/msg")"
}
writable() {
    mount -o remount,rw "$R"
    "$@"
    mount -o remount,ro "$R"
}

# Without the parameter: what current names, as before.
SEMITHIN_ENTRY=
boot plain
[ "$SEMITHIN_ID" = "$ID" ] || fail "plain mounted $SEMITHIN_ID"
unboot

# The agent switched to NEW under trial; the boot loader boots NEW's entry once: counted.
writable sh -c "echo '$NEW $ID' > '$R$S/trial'; ln -sfn 'deployments/$NEW' '$R$S/current'"
SEMITHIN_ENTRY=$NEW
boot trial1
[ "$SEMITHIN_ID" = "$NEW" ] || fail "trial1 mounted $SEMITHIN_ID"
[ "$(cat "$Y$S/trial-boots")" = "$NEW 1" ] || fail "trial-boots: $(cat "$Y$S/trial-boots")"
unboot

# Not confirmed: the next boot is the previous default, ID's entry. The trial failed.
SEMITHIN_ENTRY=$ID
boot back
[ "$SEMITHIN_ID" = "$ID" ] || fail "back mounted $SEMITHIN_ID"
[ "$(cat "$R/etc/motd")" = image ] || fail "the root is not the previous release"
[ "$(readlink "$Y$S/current")" = "deployments/$ID" ] || fail "current: $(readlink "$Y$S/current")"
read -r mrel mreason < "$Y$S/trial-failed"
[ "$mrel" = "$NEW" ] || fail "the marker names $mrel"
echo "marker: $mreason"
[ ! -e "$Y$S/.current.boot.tmp" ] || fail ".current.boot.tmp left behind"
unboot

# No trial: an entry of another kept deployment boots that deployment and makes it current.
writable rm "$R$S/trial" "$R$S/trial-boots" "$R$S/trial-failed"
SEMITHIN_ENTRY=$NEW
boot other
[ "$SEMITHIN_ID" = "$NEW" ] || fail "other mounted $SEMITHIN_ID"
[ "$(readlink "$Y$S/current")" = "deployments/$NEW" ] || fail "current: $(readlink "$Y$S/current")"
[ ! -e "$Y$S/trial-failed" ] || fail "a marker without a trial"
unboot

# An entry whose deployment is gone, or a bad id: what current names.
SEMITHIN_ENTRY=0000000000000000000000000000000000000000000000000000000000000000
boot gone
[ "$SEMITHIN_ID" = "$NEW" ] || fail "gone mounted $SEMITHIN_ID"
unboot
SEMITHIN_ENTRY='../../etc'
boot bad
[ "$SEMITHIN_ID" = "$NEW" ] || fail "bad mounted $SEMITHIN_ID"
unboot
echo done
"#
    );
    let out = in_mount_namespace(dir.path(), &script);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.ends_with("done\n"), "{all}");
    let line = |p: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(p))
            .unwrap_or_else(|| panic!("no line {p}: {all}"))
            .to_owned()
    };
    let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    assert!(line("trial1: ").contains("boot 1 of 1"), "{all}");
    let marker = line("marker: ");
    assert!(
        marker.contains(&format!(
            "the boot loader booted deployment {id}'s entry, not the one of the release under trial"
        )) && marker.contains(&format!("the boot switched back to {id}")),
        "{all}"
    );
    assert!(
        line("other: ").contains("current now points at it"),
        "{all}"
    );
    assert!(
        line("gone: ").contains("is missing: booting what current names"),
        "{all}"
    );
    assert!(line("bad: ").contains("is not a deployment id"), "{all}");
    dir.close().unwrap();
}

#[test]
fn the_initramfs_hook_and_boot_script_are_well_formed() {
    use std::os::unix::fs::PermissionsExt;
    let base = packaging().join(INITRAMFS);
    let hook = base.join("hooks/semithin");
    let boot = base.join("scripts/local-bottom/semithin");
    for f in [&hook, &boot, &mount_sh()] {
        let out = Command::new("sh").arg("-n").arg(f).output().unwrap();
        assert!(out.status.success(), "{}: {}", f.display(), text(&out));
    }
    // initramfs-tools runs hooks and boot scripts with `prereqs` to order them.
    for f in [&hook, &boot] {
        let mode = std::fs::metadata(f).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{} must be executable", f.display());
        let out = Command::new(f).arg("prereqs").output().unwrap();
        assert!(out.status.success(), "{}: {}", f.display(), text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "\n");
    }
    // The boot script sources the functions where the hook puts them, and the hook takes them
    // from where docs/BOOT.md installs them.
    let (hook_text, boot_text) = (read(&hook), read(&boot));
    let in_initramfs = "/usr/lib/semithin/semithin-mount.sh";
    assert!(
        hook_text.contains(&format!("\"${{DESTDIR}}{in_initramfs}\"")),
        "{hook_text}"
    );
    assert!(
        boot_text.contains(&format!("\n. {in_initramfs}\n")),
        "{boot_text}"
    );
    // The binary that verifies the deployment at boot: where the hook puts it is where the
    // functions run it from, and the boot script verifies unless told not to.
    assert!(
        hook_text.contains("copy_exec \"$bin\" /usr/lib/semithin/semithin\n"),
        "{hook_text}"
    );
    assert!(read(&mount_sh()).contains("${SEMITHIN_BIN:-/usr/lib/semithin/semithin}"));
    assert!(
        boot_text.contains("\nSEMITHIN_VERIFY=quick\n"),
        "{boot_text}"
    );
    let installed = "/usr/local/lib/semithin/semithin-mount.sh";
    assert!(
        hook_text.contains(&format!("src={installed}\n")),
        "{hook_text}"
    );
    let doc = read(&packaging().join("../docs/BOOT.md"));
    assert!(
        doc.contains(installed),
        "docs/BOOT.md does not install {installed}"
    );
}
