//! The `Agent`'s steps of per-machine configuration, kept apart from `lib`: facts read and
//! sent when the server lacks them, variable sets taken from check-in answers, templates
//! rendered when the release, the variables or the facts change, units restarted
//! (docs/CONFIG.md; the state is `templates::Rendering`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use semithin_protocol::vars::{Bundle, Facts};
use semithin_template as template;

use crate::error::Result;
use crate::{Agent, facts, now, templates};

/// Longest a unit restart may take.
const RESTART_TIMEOUT: Duration = Duration::from_secs(120);

impl Agent {
    /// Reads the facts again when `facts_interval_secs` passed since the last reading.
    pub(crate) fn read_facts(&mut self) {
        let t = now();
        let due = match &self.facts {
            Some((at, _)) => t - at >= self.cfg.facts_interval_secs.max(1) as i64,
            None => true,
        };
        if due {
            let root = self.cfg.facts_root.clone().unwrap_or_else(|| "/".into());
            self.facts = Some((t, facts::gather(&root)));
        }
    }

    /// The facts, when the server holds others (or none).
    pub(crate) fn facts_to_send(&self) -> Option<Facts> {
        let (_, f) = self.facts.as_ref()?;
        (self.facts_digest.as_deref() != Some(f.digest().as_str())).then(|| f.clone())
    }

    /// Takes a bundle of variable sets from an answer: verified and kept, or refused and
    /// reported; either way it is reported as seen, so the server does not send it again.
    pub(crate) fn take_vars(&mut self, b: &Bundle, channel: Option<&str>) -> Result<()> {
        if self.rendering.seen.as_deref() == Some(b.digest.as_str())
            && self.rendering.bundle.as_ref().map(|h| &h.digest) == Some(&b.digest)
        {
            return Ok(());
        }
        let keys = self.cfg.admin_keys()?;
        let name = self.state.name.clone().unwrap_or_default();
        let channel = channel.or(self.cfg.channel.as_deref());
        match self.rendering.receive(b, &keys, &name, channel) {
            Ok(()) => self.say(&format!(
                "variables: {} set(s) verified ({})",
                b.sets.len(),
                crate::short(&b.digest)
            )),
            Err(e) => self.say(&e),
        }
        self.rendering.save(&templates::path(&self.layout))
    }

    /// Renders the running release's templates when the release, the variables or the facts
    /// changed since the last attempt. True when anything the report says changed.
    pub(crate) fn configure(&mut self) -> Result<bool> {
        let Some(current) = self.layout.current()? else {
            return Ok(false);
        };
        let facts = self.facts.as_ref().map(|(_, f)| f);
        let key = templates::key(&current, &self.rendering, facts);
        if self.rendering.applied.as_deref() == Some(key.as_str())
            || self.rendering.tried.as_deref() == Some(key.as_str())
        {
            return Ok(false);
        }
        let before = self.rendering.report();
        let name = self.state.name.clone().unwrap_or_default();
        let channel = self
            .answer
            .as_ref()
            .and_then(|a| a.desired.as_ref())
            .map(|d| d.channel.clone())
            .or_else(|| self.cfg.channel.clone());
        let ctx = template::context(
            &self.rendering.vars(),
            facts,
            &template::Machine {
                name: &name,
                channel: channel.as_deref(),
            },
        );
        let upper = self
            .cfg
            .etc_upper
            .clone()
            .unwrap_or_else(|| self.layout.etc_upper());
        let etc = templates::write_root(&upper);
        if etc == upper {
            std::fs::create_dir_all(&upper).map_err(crate::Error::io("creating", &upper))?;
        }
        let root = self.layout.deployment(&current);
        self.rendering.tried = Some(key.clone());
        let state = templates::path(&self.layout);
        match templates::render(&mut self.rendering, &root, &etc, &ctx, &state) {
            Ok(out) => {
                self.rendering.applied = Some(key);
                self.rendering.error = None;
                for f in &out.written {
                    self.say(&format!("configuration: rendered {f}"));
                }
                for f in &out.removed {
                    self.say(&format!(
                        "configuration: removed {f} (its template is gone)"
                    ));
                }
                let mut failed = Vec::new();
                for unit in &out.restart {
                    if let Err(e) = self.restart(unit) {
                        failed.push(format!("restarting {unit}: {e}"));
                    }
                }
                if !failed.is_empty() {
                    self.rendering.error = Some(failed.join("; "));
                }
            }
            Err(f) => {
                if f.retry {
                    self.say(&format!(
                        "configuration: writing failed, tried again at the next cycle: {}",
                        f.msg
                    ));
                    self.rendering.tried = None;
                } else {
                    self.say(&format!(
                        "configuration not rendered, the files stay as they were: {}",
                        f.msg
                    ));
                }
                self.rendering.error = Some(f.msg);
            }
        }
        self.rendering.save(&templates::path(&self.layout))?;
        Ok(self.rendering.report() != before)
    }

    /// Runs `restart_command UNIT`, at most [`RESTART_TIMEOUT`].
    fn restart(&self, unit: &str) -> std::result::Result<(), String> {
        let cmd = &self.cfg.restart_command;
        let Some((prog, args)) = cmd.split_first() else {
            return Err("restart_command is empty".into());
        };
        let mut child = Command::new(prog)
            .args(args)
            .arg(unit)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{prog}: {e}"))?;
        let begun = Instant::now();
        loop {
            match child.try_wait().map_err(|e| e.to_string())? {
                Some(s) if s.success() => {
                    self.say(&format!("configuration: restarted {unit}"));
                    return Ok(());
                }
                Some(s) => return Err(format!("{prog} exited with {s}")),
                None if begun.elapsed() > RESTART_TIMEOUT => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{prog} did not finish in {} s",
                        RESTART_TIMEOUT.as_secs()
                    ));
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}
