//! Running one program for a job: argv executed directly (never through a shell), chrooted into
//! the sysroot when there is one, in a process group of its own so that a timeout or a cancel
//! ends everything it started; stdout and stderr kept within a bound.

use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use semithin_protocol::job::MAX_OUTPUT;

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Output kept within [`MAX_OUTPUT`]: the first quarter and the last three quarters of it.
#[derive(Default)]
pub struct Output {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    dropped: u64,
}

impl Output {
    const HEAD: usize = MAX_OUTPUT / 4;
    const TAIL: usize = MAX_OUTPUT - MAX_OUTPUT / 4 - 64;

    pub fn push(&mut self, mut b: &[u8]) {
        if self.head.len() < Self::HEAD {
            let n = (Self::HEAD - self.head.len()).min(b.len());
            self.head.extend_from_slice(&b[..n]);
            b = &b[n..];
        }
        self.tail.extend(b);
        while self.tail.len() > Self::TAIL {
            let over = self.tail.len() - Self::TAIL;
            self.tail.drain(..over);
            self.dropped += over as u64;
        }
    }

    pub fn line(&mut self, s: &str) {
        self.push(s.as_bytes());
        self.push(b"\n");
    }

    pub fn text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.head).into_owned();
        if self.dropped > 0 {
            s.push_str(&format!("\n[... {} bytes left out ...]\n", self.dropped));
        }
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        s.push_str(&String::from_utf8_lossy(&tail));
        s
    }
}

/// How a program ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// It exited (with this code; `None`: killed by a signal).
    Exited(Option<i32>),
    TimedOut,
    Cancelled,
}

/// Where and how programs run.
pub struct Runner<'a> {
    /// chroot into this directory first.
    pub root: Option<&'a Path>,
    pub deadline: Instant,
    /// Called about every `poll_every`; true when the job was cancelled.
    pub cancelled: &'a mut dyn FnMut() -> bool,
    pub poll_every: Duration,
}

impl Runner<'_> {
    /// Runs `argv` with `env` (on top of PATH, LANG and HOME), its output added to `out`.
    pub fn run(
        &mut self,
        argv: &[String],
        env: &[(&str, &str)],
        out: &mut Output,
        chroot: bool,
    ) -> Result<End, String> {
        let mut cmd = match self.root.filter(|_| chroot) {
            Some(root) => {
                let mut c = Command::new("chroot");
                c.arg(root).args(argv);
                c
            }
            None => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        cmd.env_clear()
            .env("PATH", PATH)
            .env("LANG", "C.UTF-8")
            .env("HOME", "/root")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("{:?} could not start: {e}", argv[0]))?;
        crate::crash_point("job-running");
        let buf = Arc::new(Mutex::new(std::mem::take(out)));
        let (done_tx, done_rx) = mpsc::channel();
        let pipes: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().expect("piped")),
            Box::new(child.stderr.take().expect("piped")),
        ];
        for mut p in pipes {
            let buf = buf.clone();
            let done = done_tx.clone();
            std::thread::spawn(move || {
                let mut b = [0u8; 8192];
                while let Ok(n) = p.read(&mut b) {
                    if n == 0 {
                        break;
                    }
                    buf.lock().expect("lock").push(&b[..n]);
                }
                let _ = done.send(());
            });
        }
        let kill = |child: &mut std::process::Child| {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        };
        let mut last_poll = Instant::now();
        let end = loop {
            match child.try_wait() {
                Ok(Some(s)) => break End::Exited(s.code()),
                Ok(None) => {}
                Err(e) => {
                    kill(&mut child);
                    return Err(format!("waiting for {:?}: {e}", argv[0]));
                }
            }
            if Instant::now() >= self.deadline {
                kill(&mut child);
                break End::TimedOut;
            }
            if last_poll.elapsed() >= self.poll_every {
                last_poll = Instant::now();
                if (self.cancelled)() {
                    kill(&mut child);
                    break End::Cancelled;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // What is still in the pipes; a process that left the group may hold them open, so the
        // wait is bounded.
        for _ in 0..2 {
            let _ = done_rx.recv_timeout(Duration::from_secs(2));
        }
        *out = std::mem::take(&mut *buf.lock().expect("lock"));
        Ok(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(secs: u64, cancel: &mut dyn FnMut() -> bool) -> Runner<'_> {
        Runner {
            root: None,
            deadline: Instant::now() + Duration::from_secs(secs),
            cancelled: cancel,
            poll_every: Duration::from_millis(100),
        }
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn output_exit_code_timeout_and_cancel() {
        let mut never = || false;
        let mut out = Output::default();
        let end = runner(10, &mut never)
            .run(
                &argv(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
                &[],
                &mut out,
                true,
            )
            .unwrap();
        assert_eq!(end, End::Exited(Some(3)));
        let t = out.text();
        assert!(t.contains("out") && t.contains("err"), "{t}");
        // no shell: the argument is one word
        let mut out = Output::default();
        runner(10, &mut never)
            .run(&argv(&["echo", "$HOME; id"]), &[], &mut out, true)
            .unwrap();
        assert_eq!(out.text(), "$HOME; id\n");
        let start = Instant::now();
        let mut out = Output::default();
        let end = runner(1, &mut never)
            .run(
                &argv(&["sh", "-c", "sleep 30 & sleep 30"]),
                &[],
                &mut out,
                true,
            )
            .unwrap();
        assert_eq!(end, End::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(10));
        let mut yes = || true;
        let end = runner(30, &mut yes)
            .run(&argv(&["sleep", "30"]), &[], &mut Output::default(), true)
            .unwrap();
        assert_eq!(end, End::Cancelled);
        let e = runner(30, &mut never)
            .run(
                &argv(&["/nonexistent/program"]),
                &[],
                &mut Output::default(),
                true,
            )
            .unwrap_err();
        assert!(e.contains("could not start"), "{e}");
    }

    #[test]
    fn output_is_bounded() {
        let mut o = Output::default();
        for _ in 0..10_000 {
            o.push(&[b'x'; 100]);
        }
        o.push(b"the end");
        let t = o.text();
        assert!(t.len() <= MAX_OUTPUT + 64, "{}", t.len());
        assert!(t.ends_with("the end") && t.contains("bytes left out"));
    }
}
