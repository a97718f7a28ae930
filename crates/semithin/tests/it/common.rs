//! Shared helpers: a repository in a temporary directory, running the binary, building trees,
//! and comparing two trees with the system's own tools.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_semithin");

/// A temporary directory with a fresh repository in `repo/`.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("semithin-test")
            .tempdir()
            .unwrap();
        let repo = dir.path().join("repo");
        let out = Command::new(BIN)
            .arg("repo")
            .arg("init")
            .arg(&repo)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "repo init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Env { dir, repo }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Runs `semithin --repo REPO ARGS`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--repo")
            .arg(&self.repo)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "semithin {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "semithin {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// Runs with `--json` appended and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Commits SOURCE to CHANNEL and returns the commit id.
    pub fn commit(&self, channel: &str, source: &Path) -> String {
        let v = self.json(&["commit", "--channel", channel, source.to_str().unwrap()]);
        v["commit"].as_str().unwrap().to_owned()
    }

    /// Asserts that fsck finds nothing wrong.
    pub fn fsck_ok(&self) {
        let v = self.json(&["fsck"]);
        assert_eq!(v["problems"], serde_json::json!([]), "fsck: {v:#}");
    }
}

/// Runs a shell command, asserting success; returns stdout.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("bash").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// Every entry with path, type, owner, mode, mtime (ns), link target, link count and size (not for
/// directories, whose size is the filesystem's business), then every xattr, as the system's
/// `find` and `getfattr` see them.
pub fn listing(dir: &Path) -> String {
    let d = q(dir);
    sh(&format!(
        "cd {d} && {{ find . ! -type d -printf '%p %y %U %G %m %T@ %l %n %s\\n'; \
         find . -type d -printf '%p %y %U %G %m %T@ %l %n\\n'; }} | LC_ALL=C sort && \
         getfattr -R -d -m - -h -e hex --absolute-names . 2>/dev/null; true"
    ))
}

/// Asserts two trees are the same in content (`diff -r --no-dereference`) and in every metadata
/// field of [`listing`]. diff cannot compare device nodes; their numbers are compared by `stat`.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let real: Vec<&str> = text
        .lines()
        .filter(|l| {
            !(l.contains("is a character special file while file")
                && l.ends_with("is a character special file")
                || l.contains("is a block special file while file")
                    && l.ends_with("is a block special file")
                || l.contains("is a fifo while file") && l.ends_with("is a fifo"))
        })
        .collect();
    assert!(
        real.is_empty(),
        "diff -r found differences:\n{}",
        real.join("\n")
    );
    let (la, lb) = (listing(a), listing(b));
    if la != lb {
        let (fa, fb) = (a.with_extension("listing"), b.with_extension("listing"));
        std::fs::write(&fa, &la).unwrap();
        std::fs::write(&fb, &lb).unwrap();
        let diff = sh(&format!("diff {} {} | head -40; true", q(&fa), q(&fb)));
        panic!(
            "metadata differs between {} and {}:\n{diff}",
            a.display(),
            b.display()
        );
    }
    let devs = |d: &Path| {
        sh(&format!(
            "cd {} && find . \\( -type c -o -type b \\) -exec stat -c '%n %F %t:%T' {{}} + | LC_ALL=C sort",
            q(d)
        ))
    };
    assert_eq!(devs(a), devs(b), "device numbers differ");
}

/// A small root filesystem with every kind of entry and metadata semithin must keep.
pub fn sample_tree(root: &Path) {
    let r = q(root);
    sh(&format!(
        r#"set -e
        mkdir -p {r} && cd {r}
        mkdir -p etc usr/bin usr/lib tmp var/spool/mail home/user dev srv/shared
        echo 'root:x:0:0:root:/root:/bin/bash' > etc/passwd
        printf 'hello\n' > etc/motd
        head -c 3000000 /dev/urandom > usr/lib/big.bin
        : > etc/empty
        printf '#!/bin/sh\necho hi\n' > usr/bin/tool && chmod 0755 usr/bin/tool
        cp usr/bin/tool usr/bin/suid && chmod 4755 usr/bin/suid
        cp usr/bin/tool usr/bin/sgid && chown 0:5 usr/bin/sgid && chmod 2711 usr/bin/sgid
        cp usr/bin/tool usr/bin/ping && setcap cap_net_raw+ep usr/bin/ping
        chmod 1777 tmp && chmod 2775 var/spool/mail && chown 0:8 var/spool/mail
        echo data > home/user/notes && chown -R 1000:1000 home/user && chmod 0700 home/user
        echo acl > srv/shared/file && setfacl -m u:1000:rw srv/shared/file && setfacl -d -m g:100:rx srv/shared
        setfattr -n user.comment -v 'golden image' etc/motd
        setfattr -n trusted.flag -v 1 srv
        echo linked > usr/lib/a && ln usr/lib/a usr/lib/b && ln usr/lib/a etc/c
        ln -s ../lib/big.bin usr/bin/rel-link
        ln -s /etc/passwd usr/bin/abs-link
        ln -s /nonexistent usr/bin/dangling
        mknod dev/null c 1 3 && chmod 666 dev/null
        mknod dev/loop0 b 7 0 && chmod 660 dev/loop0 && chown 0:6 dev/loop0
        mkfifo dev/initctl && chmod 600 dev/initctl
        long=$(printf 'n%.0s' $(seq 1 200))
        mkdir -p deep/$(printf 'd%.0s' $(seq 1 90))/$(printf 'e%.0s' $(seq 1 90))
        echo long > deep/$(printf 'd%.0s' $(seq 1 90))/$(printf 'e%.0s' $(seq 1 90))/$long
        echo bytes > "$(printf 'etc/caf\xe9')"
        touch -d '2024-02-29 12:34:56.123456789' etc/motd
        touch -h -d '2001-01-01 00:00:00' usr/bin/abs-link
        touch -d '1999-12-31 23:59:59' usr/lib
        "#
    ));
}
