//! The agent's steps on deployments: the switch, health checks, rollback, pruning.

use super::*;

impl Agent {
    pub(crate) fn switch(&mut self, release: &str, previous: Option<String>) -> Result<()> {
        // The trial and the history are saved before the link moves: killed before it moves,
        // the next run sees a trial whose release is not current and forgets it; killed after,
        // the history already holds the running release, so pruning keeps it.
        self.state
            .open_trial(release, previous, now(), self.cfg.health_deadline_secs);
        self.save()?;
        let trial = self.state.trial.clone().expect("just opened");
        deploy::open_boot_trial(&self.layout, &trial)?;
        if let Some(l) = self.cfg.loader()? {
            // The release's entry is booted once; the default stays on the previous one until
            // the release is confirmed, so a boot that never confirms it comes back.
            l.ensure(&self.repo.objects, release)?;
            if let Some(p) = trial.previous.as_deref() {
                l.ensure(&self.repo.objects, p)?;
                l.set_default(p)?;
            }
            l.boot_once(release)?;
            self.say(&format!(
                "boot loader: the next boot runs release {} once (LoaderEntryOneShot)",
                short(release)
            ));
        }
        crash_point("switch-trial");
        deploy::point_current(&self.layout, Some(release))?;
        crash_point("switch-link");
        self.say(&format!("switched to release {}", short(release)));
        crash_point("switch");
        Ok(())
    }

    pub(crate) fn check_health(&mut self) -> Result<()> {
        let trial = self.state.trial.clone().expect("a trial to check");
        self.phase = Phase::Checking;
        self.state.health = Health::Checking;
        // While the trial is open the boot script counts its boots.
        deploy::write_boot_trial(&self.layout, &trial)?;
        let dep = self.layout.deployment(&trial.release);
        let res = deploy::health_checks(
            &self.cfg.health_checks,
            &dep,
            &trial.release,
            Duration::from_secs(self.cfg.health_timeout_secs),
            &self.layout.dir,
        );
        match res {
            Ok(()) => {
                // The boot script's trial goes first: a release confirmed here is never
                // switched back at a later boot.
                deploy::close_boot_trial(&self.layout)?;
                self.state.confirm_trial();
                self.save()?;
                if let Some(l) = self.cfg.loader()? {
                    l.clear_once()?;
                }
                self.say(&format!("release {} is healthy", short(&trial.release)));
                self.prune()?;
                Ok(())
            }
            Err(reason) => self.roll_back(&reason),
        }
    }

    /// Runs the health checks on the release that runs, outside a trial (nothing to roll back
    /// to): they set its health, and say why when they fail.
    pub(crate) fn recheck_health(&mut self, release: &str) -> Result<()> {
        self.phase = Phase::Checking;
        let res = deploy::health_checks(
            &self.cfg.health_checks,
            &self.layout.deployment(release),
            release,
            Duration::from_secs(self.cfg.health_timeout_secs),
            &self.layout.dir,
        );
        self.rechecked = Some(release.to_owned());
        match res {
            Ok(()) => {
                self.state.health = Health::Healthy;
                self.say(&format!(
                    "release {} (running) passed its health checks",
                    short(release)
                ));
            }
            Err(reason) => {
                self.state.health = Health::Failed;
                let e = format!(
                    "release {} (running) fails its health checks: {reason}",
                    short(release)
                );
                self.say(&e);
                self.state.last_error = Some(e);
            }
        }
        self.save()
    }

    pub(crate) fn roll_back(&mut self, reason: &str) -> Result<()> {
        // The rollback is recorded before the link moves back: killed at any later point, the
        // next run finishes it (and records the failure) rather than taking it for a switch that
        // never happened.
        self.state.begin_rollback(reason);
        self.save()?;
        crash_point("rollback-begun");
        let trial = self.state.trial.clone().expect("a trial to roll back");
        let reason = trial
            .rolling_back
            .clone()
            .unwrap_or_else(|| reason.to_owned());
        let back = match trial.previous.as_deref() {
            Some(p) if !self.layout.deployment(p).is_dir() => {
                self.say(&format!(
                    "the previous deployment {} is gone: removing the current link instead",
                    short(p)
                ));
                None
            }
            p => p,
        };
        deploy::point_current(&self.layout, back)?;
        crash_point("rollback-link");
        deploy::close_boot_trial(&self.layout)?;
        self.state.finish_rollback();
        self.save()?;
        if let Some(l) = self.cfg.loader()? {
            l.clear_once()?;
        }
        self.say(&format!(
            "rolled back from release {} to {}: {reason}",
            short(&trial.release),
            back.map(short).unwrap_or("nothing")
        ));
        self.prune()?;
        Ok(())
    }

    /// The boot script switched back from a release no trial is recorded for: the failure is
    /// saved first, then the marker removed (killed in between, it is recorded again).
    pub(crate) fn record_boot_failure(&mut self, b: &BootFailure) -> Result<()> {
        let reason = format!(
            "release {} was rolled back at boot: {}",
            short(&b.release),
            b.reason
        );
        self.state.record_failure(&b.release, &reason);
        self.save()?;
        deploy::close_boot_trial(&self.layout)?;
        self.say(&reason);
        Ok(())
    }

    /// Keeps the current deployment and the `keep` newest before it (and, during a trial, its
    /// release and previous deployment); removes the rest.
    pub(crate) fn prune(&mut self) -> Result<()> {
        let current = self.layout.current()?;
        let (history, keep) = plan::keep(
            &self.state.history,
            current.as_deref(),
            self.state.trial.as_ref(),
            1 + self.cfg.keep,
        );
        if history != self.state.history {
            self.state.history = history;
            self.save()?;
        }
        let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
        let removed = deploy::prune(&self.layout, &keep)?;
        for r in &removed {
            self.say(&format!("removed deployment {}", short(r)));
        }
        self.sync_boot_loader(&keep)?;
        if !removed.is_empty() {
            // Objects only the removed deployments needed; a pack mostly alive is left alone.
            let commits: Vec<CommitId> = keep.iter().filter_map(|k| k.parse().ok()).collect();
            let r = semithin_store::gc::gc_releases(&self.repo, &commits, 0.5, &NoProgress)?;
            if r.freed_bytes > 0 {
                self.say(&format!(
                    "freed {} bytes of objects no kept deployment needs",
                    r.freed_bytes
                ));
            }
        }
        self.reseal();
        Ok(())
    }

    /// A deployment just staged from verified objects: verified in full once more (a file
    /// linked from the checkout cache is not read by the staging) and sealed, so that its first
    /// boot needs no full check. Never fails the update: unsealed, that boot verifies it in full.
    pub(crate) fn seal_staged(&mut self, release: &str) {
        let root_owner = rustix::process::geteuid().is_root();
        match repair::seal::verify_and_seal(&self.layout, &self.repo.objects, release, root_owner) {
            Ok(n) => self.say(&format!(
                "verified the deployment of release {} and sealed it ({n} entries)",
                short(release)
            )),
            Err(why) => self.say(&format!(
                "deployment {}: {why}; its next boot verifies it in full",
                short(release)
            )),
        }
    }

    /// After links among the deployments changed (a staging, a pruning, the gc of the checkout
    /// cache: the ctime of every file the current deployment shares changed), the current
    /// deployment is verified in full again and sealed when its seal no longer matches
    /// (`repair::seal::reseal`). What it finds different is left to the agent's verification,
    /// which is made due at once.
    pub(crate) fn reseal(&mut self) {
        if self.cfg.live {
            return;
        }
        let root_owner = rustix::process::geteuid().is_root();
        match repair::seal::reseal(&self.layout, &self.repo.objects, root_owner) {
            Ok(None) => {}
            Ok(Some((release, Ok(n)))) => self.say(&format!(
                "verified the deployment of release {} again and sealed it ({n} entries)",
                short(&release)
            )),
            Ok(Some((release, Err(why)))) => {
                self.say(&format!("deployment {}: {why}", short(&release)));
                self.state.last_verify = 0;
                let _ = self.save();
            }
            Err(e) => self.say(&format!("the seal of the current deployment: {e}")),
        }
    }

    /// The boot loader follows the deployments: outside a trial, the current deployment has
    /// its entry and is the default; entries of releases not in `keep` are removed.
    pub(crate) fn sync_boot_loader(&mut self, keep: &[&str]) -> Result<()> {
        let Some(l) = self.cfg.loader()? else {
            return Ok(());
        };
        let current = self.layout.current()?;
        if self.state.trial.is_none()
            && let Some(c) = current.as_deref()
        {
            if l.ensure(&self.repo.objects, c)? {
                self.say(&format!(
                    "boot loader: entry for release {} written",
                    short(c)
                ));
            }
            if l.default_release().as_deref() != Some(c) {
                l.set_default(c)?;
                self.say(&format!(
                    "boot loader: release {} is the default entry",
                    short(c)
                ));
            }
        }
        for r in l.prune(keep)? {
            self.say(&format!(
                "boot loader: removed the entry of release {}",
                short(&r)
            ));
        }
        Ok(())
    }
}
