//! Verification at boot (docs/BOOT.md, "Verification at boot"): the initramfs runs `semithin
//! agent boot-verify` before it mounts the deployment, which puts a tampered deployment back
//! from the local store and refuses one it cannot. `agent boot-verify` on a state directory
//! (with the server stopped: nothing of it needs the network), then the agent's report; and
//! real boots under qemu of a disk whose agent state was deployed by a real server and agent.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::common::{q, sh};
use crate::fleet::{Agent, Server, assert_deployed, wait_updated};
use crate::qemu::{Boot, Kit, Vm, busybox_root, ext4_image, image_file};

/// What the release's init prints about the paths the tampering touches, between markers.
const REPORT_INIT: &str = r#"B=/bin/busybox
echo "SEMITHIN-TEST booted $($B cat /run/semithin/booted)"
echo "tool $($B sha256sum /usr/bin/tool)"
if [ -e /usr/bin/rootshell ]; then echo "rootshell present"; else echo "rootshell absent"; fi
echo "cron.d $($B ls /etc/cron.d | $B tr '\n' ' ')"
echo "x-mode $($B stat -c %a /usr/lib/x)"
echo "alias $($B readlink /usr/bin/alias)"
echo "quarantine $(cd /var/lib/semithin/quarantine && $B find . -type f | $B sort | $B tr '\n' ' ')"
echo SEMITHIN-TEST-END"#;

/// The release: a busybox system whose init reports, with a binary, a cron entry, a directory
/// and a symlink to tamper with.
fn release_tree(kit: &Kit, src: &Path) {
    busybox_root(kit, src, REPORT_INIT);
    sh(&format!(
        "set -e; cd {}; mkdir -p usr/bin usr/lib/x etc/cron.d; cp bin/busybox usr/bin/tool; \
         chmod 0755 usr/bin/tool usr/lib/x; printf 'lib\\n' > usr/lib/x/data; \
         ln -s tool usr/bin/alias; printf '0 3 * * * root /usr/bin/tool true\\n' > etc/cron.d/backup",
        q(src)
    ));
}

/// The tampering of issue 11: a binary's content changed, a setuid file and a cron entry
/// added, a directory's mode changed, a symlink hijacked.
fn tamper(dep: &Path) {
    sh(&format!(
        "set -e; cd {}; cp usr/bin/tool usr/bin/rootshell; chmod 4755 usr/bin/rootshell; \
         printf 'EVIL' | dd of=usr/bin/tool bs=1 seek=4096 conv=notrunc status=none; \
         printf '* * * * * root /usr/bin/rootshell\\n' > etc/cron.d/evil; \
         chmod 0777 usr/lib/x; ln -sfn /tmp/evil usr/bin/alias",
        q(dep)
    ));
}

const TAMPERED: [&str; 5] = [
    "/etc/cron.d/evil",
    "/usr/bin/alias",
    "/usr/bin/rootshell",
    "/usr/bin/tool",
    "/usr/lib/x",
];

/// A machine whose state directory is `state`, running the release of `src`.
fn machine(s: &Server, src: &Path, state: &Path) -> (Agent, String) {
    let t = s.enroll_token(true);
    let release = s.release(src, "lab/stable");
    let mut a = Agent::new(s, "m1", &t);
    a.state = state.to_owned();
    std::fs::create_dir_all(a.log.parent().unwrap()).unwrap();
    assert!(a.once().success(), "{}", a.log());
    s.ok(&["fleet", "assign", "m1", "lab/stable"]);
    assert!(a.once().success(), "{}", a.log());
    wait_updated(s, "m1", &release, 10);
    (a, release)
}

/// Flips a byte in every chunk of the store: no file can be made anew from it.
fn damage_chunks(repo: &Path) {
    use semithin_store::pack::ObjKind;
    let r = semithin_store::Repo::open(repo, semithin_store::Access::Read).unwrap();
    let mut by_pack = Vec::new();
    for (name, entries) in r.objects.packs().unwrap() {
        let offsets: Vec<u64> = entries
            .iter()
            .filter(|e| e.kind() == ObjKind::Chunk)
            .map(|e| e.offset + e.stored_len as u64 / 2)
            .collect();
        by_pack.push((repo.join(format!("objects/packs/{name}.pack")), offsets));
    }
    drop(r);
    for (p, offsets) in by_pack {
        let mut b = std::fs::read(&p).unwrap();
        for o in offsets {
            b[o as usize] ^= 0x55;
        }
        std::fs::write(&p, b).unwrap();
    }
}

fn sorted(v: &Value) -> Vec<String> {
    let mut p: Vec<String> = v["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect();
    p.sort();
    p
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("semithin-boot")
        .tempdir()
        .unwrap()
}

/// A plain image for the tests without qemu.
fn small_tree(src: &Path) {
    sh(&format!(
        "set -e; mkdir -p {r}; cd {r}; mkdir -p usr/bin usr/lib/x etc/cron.d var dev proc sys run; \
         head -c 300000 /dev/urandom > usr/bin/tool; chmod 0755 usr/bin/tool usr/lib/x; \
         printf 'lib\\n' > usr/lib/x/data; ln -s tool usr/bin/alias; \
         printf '0 3 * * * root /usr/bin/tool\\n' > etc/cron.d/backup",
        r = q(src)
    ));
}

#[test]
fn boot_verify_puts_a_tampered_deployment_back_offline_and_the_agent_reports_it() {
    let mut s = Server::start();
    let src = s.path("img");
    small_tree(&src);
    let state = s.path("machine/var/lib/semithin");
    let (a, release) = machine(&s, &src, &state);
    let dep = a.deployment();
    tamper(&dep);
    // The initramfs has no network: neither does this.
    s.kill();
    let out = a.run(&["boot-verify"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.lines().all(|l| l.starts_with("semithin: ")), "{err}");
    for want in [
        "semithin:   /usr/bin/rootshell: not in the release: a setuid file, mode 4755",
        "semithin:   /etc/cron.d/evil: not in the release: a file",
        "semithin:   /usr/lib/x: mode 0777, the release has 0755",
        "semithin:   /usr/bin/alias: points at /tmp/evil, the release's link points at tool",
        "5 path(s) differed, 5 put back",
    ] {
        assert!(err.contains(want), "{want:?} not in\n{err}");
    }
    assert_deployed(&src, &dep);
    let qdir = sh(&format!("ls -d {}/quarantine/*", q(&state)));
    let qdir = PathBuf::from(qdir.trim());
    assert!(qdir.join("deployment/usr/bin/rootshell").is_file());
    assert!(qdir.join("deployment/etc/cron.d/evil").is_file());
    let record: Value =
        serde_json::from_slice(&std::fs::read(state.join("boot-verify.json")).unwrap()).unwrap();
    assert_eq!(record["integrity"]["at_boot"], json!(true), "{record}");
    assert_eq!(sorted(&record["integrity"]["repaired"]), TAMPERED);

    // Once the system runs, the agent reports what the boot found and put back.
    s.restart();
    assert!(a.once().success(), "{}", a.log());
    assert!(
        a.log().contains(&format!(
            "the check at boot found 5 path(s) different from release {}, put back 5",
            release.get(..12).unwrap()
        )),
        "{}",
        a.log()
    );
    assert!(!state.join("boot-verify.json").exists());
    let m = s.machine("m1");
    let i = &m["report"]["integrity"];
    assert_eq!(i["at_boot"], json!(true), "{m}");
    assert_eq!(i["release"], json!(release), "{m}");
    assert_eq!(sorted(&i["repaired"]), TAMPERED, "{m}");
    assert_eq!(i["tampered"]["count"], json!(0), "{m}");
    let events: Vec<String> = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", e["kind"].as_str().unwrap(), e["detail"]))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e.starts_with(&format!("repaired \"{release} (at boot): 5 path(s)"))),
        "{events:?}"
    );
    let show = s.ok(&["fleet", "show", "m1"]);
    assert!(show.contains("5 put back: "), "{show}");
    assert!(show.contains("(at boot, "), "{show}");
}

#[test]
fn boot_verify_refuses_a_deployment_the_store_cannot_put_back_and_the_agent_says_why() {
    let mut s = Server::start();
    let src = s.path("img");
    small_tree(&src);
    let state = s.path("machine/var/lib/semithin");
    let (a, release) = machine(&s, &src, &state);
    let dep = a.deployment();
    std::fs::write(dep.join("usr/bin/tool"), "changed").unwrap();
    damage_chunks(&state.join("repo"));
    s.kill();
    let out = a.run(&["boot-verify"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("semithin: error: /usr/bin/tool: could not be put back: ")
            && err.contains("no network at boot"),
        "{err}"
    );
    assert!(
        err.contains("could not be verified or put right from the local store"),
        "{err}"
    );
    // The agent in the system that booted instead reports it: the machine is tampered.
    s.restart();
    let _ = a.once();
    let m = s.machine("m1");
    let e = m["report"]["last_error"].as_str().unwrap_or_default();
    assert!(
        e.contains(&format!(
            "at boot, release {release} was not booted: /usr/bin/tool: could not be put back"
        )),
        "{m}"
    );
    assert_eq!(
        sorted(&m["report"]["integrity"]["tampered"]),
        ["/usr/bin/tool"],
        "{m}"
    );
    let list = s.ok(&["fleet", "list"]);
    assert!(list.contains("m1: tampered: 1 path(s)"), "{list}");
    // There, with the network, the damaged chunks come from the server again, and the next
    // boot finds the deployment whole.
    let out = a.run(&["verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_deployed(&src, &dep);
    let out = a.run(&["boot-verify"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("0 path(s) differed, 0 put back"), "{err}");
}

/// `agent boot-verify ARGS`: (success, stderr), every line of which the console's.
fn boot_verify(a: &Agent, args: &[&str]) -> (bool, String) {
    let mut all = vec!["boot-verify"];
    all.extend_from_slice(args);
    let out = a.run(&all);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.lines().all(|l| l.starts_with("semithin: ")), "{err}");
    (out.status.success(), err)
}

fn boot_record(state: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(state.join("boot-verify.json")).unwrap()).unwrap()
}

#[test]
fn boot_verify_quick_reads_nothing_of_a_sealed_deployment_and_verifies_in_full_once_it_changed() {
    let mut s = Server::start();
    let src = s.path("img");
    small_tree(&src);
    let state = s.path("machine/var/lib/semithin");
    let (a, release) = machine(&s, &src, &state);
    let short = release.get(..12).unwrap();
    let dep = a.deployment();
    // The agent sealed the deployment it staged.
    assert!(
        a.log().contains(&format!(
            "verified the deployment of release {short} and sealed it ("
        )),
        "{}",
        a.log()
    );
    assert!(state.join("seals").join(&release).is_file());
    s.kill();

    // Untouched: nothing is read.
    let (ok, err) = boot_verify(&a, &["--quick"]);
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!("semithin: deployment {short}: "))
            && err.contains(" entries unchanged since verified (quick check, "),
        "{err}"
    );
    assert!(!err.contains("verified against the release"), "{err}");
    let record = boot_record(&state);
    assert_eq!(record["integrity"]["at_boot"], json!(true), "{record}");
    assert_eq!(
        record["integrity"]["boot_check"],
        json!("quick"),
        "{record}"
    );

    // A binary changed in place, same size, its mtime put back: the metadata the quick check
    // looks at differ only in the ctime, which cannot be put back.
    std::thread::sleep(std::time::Duration::from_millis(50));
    sh(&format!(
        "set -e; cd {}; cp -p usr/bin/tool {ref_};          printf 'EVIL' | dd of=usr/bin/tool bs=1 seek=4096 conv=notrunc status=none;          touch -r {ref_} usr/bin/tool; rm {ref_}",
        q(&dep),
        ref_ = q(&s.path("tool.ref"))
    ));
    let (ok, err) = boot_verify(&a, &["--quick"]);
    assert!(ok, "{err}");
    for want in [
        "it changed since its seal was written: verifying it against its release in full",
        "semithin:   /usr/bin/tool: content differs",
        "1 path(s) differed, 1 put back",
        &format!("semithin: deployment {short} sealed ("),
    ] {
        assert!(err.contains(want), "{want:?} not in\n{err}");
    }
    assert_deployed(&src, &dep);
    assert_eq!(
        boot_record(&state)["integrity"]["boot_check"],
        json!("full")
    );

    // Put right and sealed: the next boot's check is quick again.
    let (ok, err) = boot_verify(&a, &["--quick"]);
    assert!(ok, "{err}");
    assert!(
        err.contains(" entries unchanged since verified (quick check, "),
        "{err}"
    );

    // A seal that is not one: verified in full, and sealed anew.
    std::fs::write(state.join("seals").join(&release), "junk\n").unwrap();
    let (ok, err) = boot_verify(&a, &["--quick"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("is not one: verifying it against its release in full"),
        "{err}"
    );
    assert!(err.contains("0 path(s) differed, 0 put back"), "{err}");
    let (ok, err) = boot_verify(&a, &["--quick"]);
    assert!(ok && err.contains("(quick check, "), "{err}");

    // The agent reports the boot's check as quick.
    s.restart();
    assert!(a.once().success(), "{}", a.log());
    let m = s.machine("m1");
    assert_eq!(
        m["report"]["integrity"]["boot_check"],
        json!("quick"),
        "{m}"
    );
    let show = s.ok(&["fleet", "show", "m1"]);
    assert!(
        show.contains("at boot, quick check: unchanged since verified, "),
        "{show}"
    );
}

/// Boots `disk` once with `append`; the console after the machine powered off.
fn boot(kit: &Kit, dir: &Path, disk: &Path, append: &str) -> String {
    let mut vm = Vm::start(&Boot {
        kit,
        disks: vec![disk.to_owned()],
        append: format!("root=/dev/vda {append}"),
        memory_mb: 512,
        console: dir.join("console.log"),
        extra: Vec::new(),
    });
    let text = vm.wait_off(120);
    text.replace('\r', "")
}

/// The root partition: a base system whose init says so, and the agent's state under /var.
fn partition(kit: &Kit, part: &Path) -> PathBuf {
    busybox_root(kit, part, "echo SEMITHIN-TEST base system");
    part.join("var/lib/semithin")
}

#[test]
fn slow_boot_puts_a_tampered_deployment_back_before_booting_it() {
    let kit = Kit::get();
    let s = Server::start();
    let dir = tmp();
    let src = dir.path().join("img");
    release_tree(&kit, &src);
    let part = dir.path().join("part");
    let (a, release) = machine(&s, &src, &partition(&kit, &part));
    let dep = a.deployment();
    let tool_sum = sh(&format!(
        "sha256sum {} | cut -d' ' -f1",
        q(&src.join("usr/bin/tool"))
    ));
    tamper(&dep);
    let disk = dir.path().join("disk.img");
    ext4_image(&part, &disk, 160);
    let console = boot(&kit, dir.path(), &disk, "");

    assert!(
        console.contains(&format!("SEMITHIN-TEST booted {release}")),
        "{console}"
    );
    assert!(
        console.contains("semithin: deployment ")
            && console.contains("5 path(s) differed, 5 put back"),
        "{console}"
    );
    let line = |key: &str| -> String {
        console
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key:?} line in\n{console}"))
            .trim()
            .to_owned()
    };
    assert!(line("tool").starts_with(tool_sum.trim()), "{console}");
    assert_eq!(line("rootshell"), "absent", "{console}");
    assert_eq!(line("cron.d"), "backup", "{console}");
    assert_eq!(line("x-mode"), "755", "{console}");
    assert_eq!(line("alias"), "tool", "{console}");
    let quarantined = line("quarantine");
    for want in [
        "/deployment/usr/bin/rootshell",
        "/deployment/etc/cron.d/evil",
    ] {
        assert!(quarantined.contains(want), "{want} not in {quarantined}");
    }
    // What the boot found is on the disk for the agent to report.
    let record = image_file(&disk, "/var/lib/semithin/boot-verify.json").expect("the record");
    let record: Value = serde_json::from_slice(&record).unwrap();
    assert_eq!(record["integrity"]["at_boot"], json!(true), "{record}");
    assert_eq!(sorted(&record["integrity"]["repaired"]), TAMPERED);
    // The agent on that state directory, as the booted system leaves it, reports it.
    let after = dir.path().join("after");
    std::fs::create_dir(&after).unwrap();
    sh(&format!(
        "debugfs -R 'rdump /var/lib/semithin {}' {} 2>/dev/null",
        q(&after),
        q(&disk)
    ));
    let mut a = a;
    a.state = after.join("semithin");
    assert!(a.once().success(), "{}", a.log());
    let m = s.machine("m1");
    let i = &m["report"]["integrity"];
    assert_eq!(i["at_boot"], json!(true), "{m}");
    assert_eq!(sorted(&i["repaired"]), TAMPERED, "{m}");
    assert_eq!(i["boot_check"], json!("full"), "{m}");

    // That boot put the deployment right and sealed it: the next boot reads none of its files.
    assert!(
        console.contains(&format!(
            "semithin: deployment {} sealed (",
            release.get(..12).unwrap()
        )),
        "{console}"
    );
    let console = boot(&kit, dir.path(), &disk, "");
    assert!(
        console.contains(&format!("SEMITHIN-TEST booted {release}")),
        "{console}"
    );
    assert!(
        console.contains(" entries unchanged since verified (quick check, "),
        "{console}"
    );
    assert!(
        !console.contains("verified against the release in"),
        "{console}"
    );
    let record = image_file(&disk, "/var/lib/semithin/boot-verify.json").expect("the record");
    let record: Value = serde_json::from_slice(&record).unwrap();
    assert_eq!(
        record["integrity"]["boot_check"],
        json!("quick"),
        "{record}"
    );
}

#[test]
fn slow_boot_refuses_a_deployment_that_cannot_be_put_back_and_says_why() {
    let kit = Kit::get();
    let s = Server::start();
    let dir = tmp();
    let src = dir.path().join("img");
    release_tree(&kit, &src);
    let part = dir.path().join("part");
    let state = partition(&kit, &part);
    let (a, _) = machine(&s, &src, &state);
    tamper(&a.deployment());
    damage_chunks(&state.join("repo"));
    let disk = dir.path().join("disk.img");
    ext4_image(&part, &disk, 160);
    let console = boot(&kit, dir.path(), &disk, "");

    assert!(console.contains("SEMITHIN-TEST base system"), "{console}");
    assert!(!console.contains("SEMITHIN-TEST booted"), "{console}");
    for want in [
        "semithin: error: /usr/bin/tool: could not be put back: ",
        "semithin: the deployment failed its verification: it is not booted",
        "semithin: booting the root partition itself",
    ] {
        assert!(console.contains(want), "{want:?} not in\n{console}");
    }
    let record = image_file(&disk, "/var/lib/semithin/boot-verify.json").expect("the record");
    let record: Value = serde_json::from_slice(&record).unwrap();
    assert!(
        sorted(&record["integrity"]["tampered"]).contains(&"/usr/bin/tool".to_owned()),
        "{record}"
    );

    // semithin.verify=off boots it as it is.
    let console = boot(&kit, dir.path(), &disk, "semithin.verify=off");
    assert!(console.contains("SEMITHIN-TEST booted"), "{console}");
    assert!(
        console.contains(
            "semithin: semithin.verify=off: the deployment is booted without being verified"
        ),
        "{console}"
    );
}
