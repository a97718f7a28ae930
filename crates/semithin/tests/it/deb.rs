//! The Debian package (packaging/deb/build.sh), built from this build's binary and installed with
//! dpkg into a copy of a debootstrapped root with systemd (tests/fixtures/debian-root.sh systemd;
//! the host's own packages are left alone): the binary runs there, the units it ships pass
//! `systemd-analyze verify`, the man pages and completions are where man and the shells look,
//! the server's user is made, and removing the package leaves the settings (conffiles) only.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{BIN, Env, q, sh};

fn here(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// Runs `script` with `$R` the root, in a mount namespace of its own with /proc mounted in the
/// root (unmounted with the namespace); its output, or a panic with it.
fn in_root(root: &Path, script: &str) -> String {
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "set -eu; R={}; mount -t proc proc \"$R/proc\"; \
             c() {{ chroot \"$R\" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \"$@\"; }}; {script}",
            q(root)
        ))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script}:\n{text}");
    text
}

#[test]
fn slow_the_debian_package_installs_into_a_fresh_root_and_its_units_verify() {
    let env = Env::new();
    let tree = sh(&format!(
        "{} systemd",
        q(&here("tests/fixtures/debian-root.sh"))
    ));
    let root = env.path("root");
    sh(&format!("cp -a {} {}", q(Path::new(tree.trim())), q(&root)));

    let deb = sh(&format!(
        "DEB_COMPRESS=gzip {} {} {}",
        q(&here("packaging/deb/build.sh")),
        q(Path::new(BIN)),
        q(&env.path("out"))
    ));
    let deb = PathBuf::from(deb.trim());
    let name = deb.file_name().unwrap().to_str().unwrap().to_owned();
    let version = sh(&format!("{} --version", q(Path::new(BIN))));
    assert!(
        name.starts_with(&format!(
            "semithin_{}_",
            version.split_whitespace().nth(1).unwrap()
        )),
        "{name}"
    );
    let info = sh(&format!("dpkg-deb -I {}", q(&deb)));
    assert!(info.contains("Depends: libc6"), "{info}");
    std::fs::copy(&deb, root.join("tmp").join(&name)).unwrap();

    let out = in_root(&root, &format!("c dpkg -i /tmp/{name}"));
    assert!(out.contains("Setting up semithin"), "{out}");
    let v = in_root(&root, "c semithin --version");
    assert_eq!(v.trim(), version.trim());
    // what the hook puts into the initramfs: the part of semithin a boot runs
    let v = in_root(&root, "c /usr/lib/semithin/semithin-initrd --version");
    assert_eq!(
        v.split_whitespace().nth(1),
        version.split_whitespace().nth(1),
        "{v}"
    );
    // The units as installed name the binary where the package put it, and systemd accepts them.
    let units = in_root(
        &root,
        "c sh -c 'ls /lib/systemd/system/semithin-*; grep -h ^ExecStart= /lib/systemd/system/semithin-*'",
    );
    for u in [
        "semithin-server.service",
        "semithin-agent.service",
        "semithin-agent-once.service",
        "semithin-agent.timer",
    ] {
        assert!(units.contains(u), "{u} missing:\n{units}");
    }
    assert!(
        units.contains("ExecStart=/usr/bin/semithin serve"),
        "{units}"
    );
    assert!(!units.contains("/usr/local/bin"), "{units}");
    in_root(
        &root,
        "c systemd-analyze verify /lib/systemd/system/semithin-server.service \
         /lib/systemd/system/semithin-agent.service /lib/systemd/system/semithin-agent-once.service \
         /lib/systemd/system/semithin-agent.timer",
    );
    // Nothing was enabled: the admin says whether this is a server or a machine of the fleet.
    assert!(
        !root
            .join("etc/systemd/system/multi-user.target.wants/semithin-server.service")
            .exists()
    );
    // The server's user, its settings readable by it alone, the man pages, the completions.
    let user = in_root(&root, "c getent passwd semithin");
    assert!(user.contains("/var/lib/semithin-server"), "{user}");
    let conf = in_root(&root, "c stat -c '%a %G' /etc/semithin/server.toml");
    assert_eq!(conf.trim(), "640 semithin");
    let man = in_root(
        &root,
        "c sh -c 'zcat /usr/share/man/man1/semithin-fleet-list.1.gz'",
    );
    assert!(
        man.contains("semithin\\-fleet\\-list") || man.contains("semithin-fleet-list"),
        "{man}"
    );
    let bash = std::fs::read_to_string(root.join("usr/share/bash-completion/completions/semithin"))
        .unwrap();
    assert!(
        bash.contains("_semithin()") && bash.contains("fleet"),
        "bash completion"
    );
    assert!(
        root.join("usr/share/zsh/vendor-completions/_semithin")
            .is_file()
    );
    assert!(
        root.join("usr/share/fish/vendor_completions.d/semithin.fish")
            .is_file()
    );
    assert!(
        root.join("usr/share/semithin/initramfs-tools/hooks/semithin")
            .is_file()
    );

    // Removed: the binary and units go, the settings stay until purge.
    in_root(&root, "c dpkg -r semithin");
    assert!(!root.join("usr/bin/semithin").exists());
    assert!(
        !root
            .join("lib/systemd/system/semithin-server.service")
            .exists()
    );
    assert!(root.join("etc/semithin/server.toml").exists());
    in_root(&root, "c dpkg --purge semithin");
    assert!(!root.join("etc/semithin/server.toml").exists());
}

#[test]
fn completions_and_manual_pages_come_from_the_command_line() {
    let env = Env::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let s = String::from_utf8_lossy(&out.stdout);
        // every top-level command is completed
        for c in ["serve", "agent", "fleet", "publish", "image", "profile"] {
            assert!(s.contains(c), "{shell}: {c} missing");
        }
    }
    let bad = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("tcsh"));

    let dir = env.path("man");
    let out = Command::new(BIN)
        .arg("manpages")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in [
        "semithin.1",
        "semithin-serve.1",
        "semithin-fleet-list.1",
        "semithin-image-build.1",
    ] {
        let page = std::fs::read_to_string(dir.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(
            page.starts_with(".ie") || page.contains(".TH"),
            "{p} is not roff"
        );
    }
    let serve = std::fs::read_to_string(dir.join("semithin-serve.1")).unwrap();
    assert!(
        serve.contains("checkin\\-interval"),
        "serve's flags are in its page"
    );
    // a file where the directory should be is refused by name
    let file = env.path("file");
    std::fs::write(&file, "x").unwrap();
    let out = Command::new(BIN)
        .arg("manpages")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
}
