//! Running programs in a root filesystem: proc, sys and dev mounted for as long as a [`Chroot`]
//! lives and always unmounted when it drops (an error, a panic, an interrupt that made the
//! program fail), daemons kept from starting by a `policy-rc.d` that exists only meanwhile.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Error, Event, apt};

/// `/usr/sbin/policy-rc.d` that refuses every service start (invoke-rc.d's convention).
const POLICY_RC_D: &str =
    "#!/bin/sh\n# semithin image build: no daemon starts in a chroot\nexit 101\n";

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by(|a, b| b.cmp(a));
    out.dedup();
    out
}

/// Unmounts everything at or below `dir` (recursively, then lazily if busy); true when nothing
/// is left mounted there.
pub fn unmount_all(dir: &Path) -> bool {
    for m in mounts_under(dir) {
        let ok = Command::new("umount")
            .arg("-R")
            .arg(&m)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-lR").arg(&m).status();
        }
    }
    mounts_under(dir).is_empty()
}

/// A root filesystem with proc, sys and dev mounted and services blocked, until dropped.
pub struct Chroot {
    root: PathBuf,
    policy: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl Chroot {
    /// Mounts proc, sys and dev (a recursive bind of the host's) below `root`.
    pub fn enter(root: &Path) -> Result<Self, Error> {
        let root = std::fs::canonicalize(root).map_err(Error::io("opening", root))?;
        let mut c = Self {
            root,
            policy: None,
            env: Vec::new(),
        };
        let policy = c.root.join("usr/sbin/policy-rc.d");
        if std::fs::symlink_metadata(&policy).is_err() && c.root.join("usr/sbin").is_dir() {
            std::fs::write(&policy, POLICY_RC_D).map_err(Error::io("writing", &policy))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o755))
                .map_err(Error::io("writing", &policy))?;
            c.policy = Some(policy);
        }
        for (args, dir) in [
            (&["-t", "proc", "proc"][..], "proc"),
            (&["-t", "sysfs", "sysfs"][..], "sys"),
            (&["--rbind", "/dev"][..], "dev"),
        ] {
            let target = c.root.join(dir);
            if std::fs::symlink_metadata(&target).map(|m| m.is_dir()).ok() != Some(true) {
                return Err(Error::Invalid(format!(
                    "{} is not a directory: not a root filesystem",
                    target.display()
                )));
            }
            let out = Command::new("mount")
                .args(args)
                .arg(&target)
                .output()
                .map_err(Error::io("running mount for", &target))?;
            if !out.status.success() {
                return Err(Error::Failed {
                    what: format!("mounting {}", target.display()),
                    detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                });
            }
            if dir == "dev" {
                let _ = Command::new("mount")
                    .args(["--make-rslave"])
                    .arg(&target)
                    .status();
            }
        }
        Ok(c)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Sets a variable for every program run from now on (`SOURCE_DATE_EPOCH`).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Runs `argv` chrooted, apt's environment set; output goes to `report` line by line and
    /// a failure is explained from it (the package or source apt names).
    pub fn run(&self, what: &str, argv: &[&str], report: &dyn Fn(Event)) -> Result<String, Error> {
        let mut cmd = Command::new("chroot");
        cmd.arg(&self.root).args(argv);
        apt_env(&mut cmd);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        run_logged(cmd, what, report)
    }

    /// Runs `argv` chrooted with the terminal (an interactive shell); its exit status.
    pub fn interactive(&self, argv: &[&str]) -> Result<std::process::ExitStatus, Error> {
        Command::new("chroot")
            .arg(&self.root)
            .args(argv)
            .env("SEMITHIN_IMAGE_SHELL", "1")
            .env("PS1", "(image) \\w# ")
            .status()
            .map_err(Error::io("running a shell in", &self.root))
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        for d in ["dev", "sys", "proc"] {
            let _ = unmount_all(&self.root.join(d));
        }
        if let Some(p) = self.policy.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// apt without questions: no prompts, no config file questions, a lock timeout.
pub fn apt_env(cmd: &mut Command) {
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .env("DEBCONF_NONINTERACTIVE_SEEN", "true")
        .env("LC_ALL", "C.UTF-8")
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env_remove("APT_CONFIG");
}

/// Runs `cmd` with stdout and stderr merged, each line given to `report`; the whole output on
/// success, else an error with apt's problem explained (or the last lines).
pub fn run_logged(mut cmd: Command, what: &str, report: &dyn Fn(Event)) -> Result<String, Error> {
    let (reader, writer) = std::io::pipe().map_err(Error::io("making a pipe for", what))?;
    let w2 = writer
        .try_clone()
        .map_err(Error::io("making a pipe for", what))?;
    cmd.stdin(Stdio::null()).stdout(writer).stderr(w2);
    let mut child = cmd.spawn().map_err(Error::io("starting", what))?;
    drop(cmd);
    let mut out = String::new();
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { break };
        report(Event::Line(&line));
        out.push_str(&line);
        out.push('\n');
    }
    let status = child.wait().map_err(Error::io("waiting for", what))?;
    if status.success() {
        return Ok(out);
    }
    if crate::interrupted() {
        return Err(Error::Interrupted);
    }
    let detail = match apt::explain(&out) {
        Some(e) => format!("{e}\n{}", apt::tail(&out, 8)),
        None => apt::tail(&out, 15),
    };
    Err(Error::Failed {
        what: format!("{what} ({status})"),
        detail,
    })
}
