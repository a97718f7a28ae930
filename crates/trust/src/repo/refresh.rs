//! Signing online roles again before they expire, and what the metadata's state is.

use super::*;

impl TrustRepo {
    /// Fills `pending` with new versions of `from` and every online role after it (targets ->
    /// snapshot -> timestamp), signed with `keys`.
    pub(super) fn renew(
        &self,
        pending: &mut Pending,
        from: Role,
        keys: &BTreeMap<Role, &KeyPair>,
        now: i64,
    ) -> Result<()> {
        let e = &self.config.expires;
        if from == Role::Targets {
            let mut t = self.targets.signed.clone();
            t.version = self.next_version(Role::Targets)?;
            t.expires = clock::format(now + e.targets);
            pending.targets = Some(sign(Role::Targets, &t, &[keys[&Role::Targets]])?);
        }
        if from <= Role::Snapshot {
            let targets = pending.targets.as_ref().unwrap_or(&self.targets);
            pending.snapshot = Some(new_snapshot(
                &self.config,
                now,
                targets,
                &self.delegated_meta_with(&pending.delegated),
                self.next_version(Role::Snapshot)?,
                keys[&Role::Snapshot],
            )?);
        }
        let snapshot = pending.snapshot.as_ref().unwrap_or(&self.snapshot);
        pending.timestamp = Some(new_timestamp(
            &self.config,
            now,
            snapshot,
            self.next_version(Role::Timestamp)?,
            keys[&Role::Timestamp],
        )?);
        Ok(())
    }

    /// Whether an online role needs new metadata: not validly signed under the current root
    /// (an interrupted rotation), or less than `left` (a fraction) of its lifetime left.
    fn due(&self, role: Role, now: i64, left: f64) -> Option<String> {
        let (valid, expires_at, expires) = match role {
            Role::Targets => (
                check_signed(role, &self.targets, &self.root.signed).is_ok(),
                self.targets.expires_at(),
                &self.targets.signed.expires,
            ),
            Role::Snapshot => (
                check_signed(role, &self.snapshot, &self.root.signed).is_ok(),
                self.snapshot.expires_at(),
                &self.snapshot.signed.expires,
            ),
            Role::Timestamp => (
                check_signed(role, &self.timestamp, &self.root.signed).is_ok(),
                self.timestamp.expires_at(),
                &self.timestamp.signed.expires,
            ),
            Role::Root => return None,
        };
        if !valid {
            return Some("not signed by the key the current root names".into());
        }
        let lifetime = self.config.expires.of(role);
        // in whole seconds, rounded down: `left` of a lifetime, at least one second
        let margin = ((lifetime as f64 * left) as i64).max(1);
        if expires_at <= now {
            return Some(format!("expired {expires}"));
        }
        if expires_at - now < margin {
            return Some(if left == 0.5 {
                format!(
                    "expires {expires}, less than half of its lifetime ({}) left",
                    format_duration(lifetime)
                )
            } else {
                format!(
                    "expires {expires}, less than {}% of its lifetime ({}) left",
                    (left * 100.0).round(),
                    format_duration(lifetime)
                )
            });
        }
        None
    }

    /// Signs again the online roles that are due (see [`Self::due`]: less than half of their
    /// lifetime left) and what depends on them; `force` renews the timestamp in any case. Warns
    /// when the root needs the admin.
    pub fn refresh(&mut self, force: bool, now: i64) -> Result<RefreshReport> {
        self.refresh_roles(&Role::ONLINE, 0.5, force, now)
    }

    /// [`Self::refresh`] of some online roles only: those of `roles` that are due, with less
    /// than `left` (a fraction between 0 and 1) of their lifetime left, and what depends on
    /// them among `roles` (snapshot, then timestamp). A role not in `roles` is never signed,
    /// and its key is not read: `semithin serve` renews snapshot and timestamp this way and
    /// leaves targets, which vouches for the releases, to the admin.
    pub fn refresh_roles(
        &mut self,
        roles: &[Role],
        left: f64,
        force: bool,
        now: i64,
    ) -> Result<RefreshReport> {
        if !(left > 0.0 && left < 1.0) {
            return Err(Error::TrustRepo {
                path: self.dir.clone(),
                reason: format!(
                    "renewing with {left} of a lifetime left: it must be between 0 and 1"
                ),
            });
        }
        // What a role renews depends on it (targets -> snapshot -> timestamp): the roles must be
        // a tail of that chain.
        if let Some(gap) = Role::ONLINE
            .into_iter()
            .skip_while(|r| !roles.contains(r))
            .find(|r| !roles.contains(r))
        {
            return Err(Error::TrustRepo {
                path: self.dir.clone(),
                reason: format!("renewing {roles:?} needs {gap} too, which depends on them"),
            });
        }
        let mut reasons = BTreeMap::new();
        let mut warnings = Vec::new();
        let mut written = Vec::new();
        // The assignments are signed again by whoever signs snapshots (the server), with the
        // snapshot. A missing assignments key is a warning, never a reason not to renew
        // snapshot and timestamp.
        let mut delegated = Vec::new();
        if roles.contains(&Role::Snapshot) {
            match self.assignments_due(left, now).and_then(|due| match due {
                true => self
                    .assignments_pending(&BTreeMap::new(), true, now)
                    .map(Some),
                false => Ok(None),
            }) {
                Ok(None) => {}
                Ok(Some((d, _))) => {
                    reasons.insert(
                        assign::ROLE.into(),
                        "due (less than the snapshot's margin of its lifetime left)".into(),
                    );
                    delegated = d;
                }
                Err(e) => warnings.push(format!(
                    "the channel assignments cannot be signed again: {e}; once they expire, \
                     machines refuse to move to another channel. The server needs \
                     REPO/trust/keys/assignments.key, the key the targets role delegates \
                     assignments to"
                )),
            }
        }
        for r in Role::ONLINE {
            if !roles.contains(&r) {
                continue;
            }
            if let Some(why) = self.due(r, now, left) {
                reasons.insert(r.name().to_owned(), why);
            }
        }
        if force && reasons.is_empty() && roles.contains(&Role::Timestamp) {
            reasons.insert("timestamp".into(), "forced".into());
        }
        warnings.extend(self.warnings(now));
        if roles.contains(&Role::Targets) && !self.assignments_enabled() {
            written.extend(self.enable_assignments(now)?);
            reasons.insert(
                assign::ROLE.into(),
                "set up: channel assignments are signed from now on".into(),
            );
        }
        let first = Role::ONLINE.into_iter().find(|r| {
            reasons.contains_key(r.name()) || (*r == Role::Snapshot && !delegated.is_empty())
        });
        if let Some(first) = first {
            let needed: Vec<Role> = Role::ONLINE
                .into_iter()
                .filter(|r| *r >= first && roles.contains(r))
                .collect();
            let keys = self.online_keys(&needed)?;
            let keys: BTreeMap<Role, &KeyPair> = keys.iter().map(|(r, k)| (*r, k)).collect();
            let mut pending = Pending {
                delegated,
                ..Default::default()
            };
            self.renew(&mut pending, first, &keys, now)?;
            self.repair_root_copy()?;
            written.extend(self.write_delegated(pending)?.0);
        }
        Ok(RefreshReport {
            written,
            reasons,
            warnings,
        })
    }

    /// The roles of `roles` that [`Self::refresh_roles`] would sign now, without signing.
    pub fn due_roles(&self, roles: &[Role], left: f64, now: i64) -> Vec<Role> {
        roles
            .iter()
            .copied()
            .filter(|r| *r != Role::Root && self.due(*r, now, left).is_some())
            .collect()
    }

    /// What only the admin can solve (the root key is offline).
    pub fn warnings(&self, now: i64) -> Vec<String> {
        let mut w = Vec::new();
        let left = self.root.expires_at() - now;
        if left < self.config.expires.root / 2 {
            w.push(format!(
                "the root expires {}{}: sign a new root with `semithin trust rotate` (needs the \
                 root key) before then, or clients stop updating",
                self.root.signed.expires,
                if left <= 0 { " (expired)" } else { "" }
            ));
        }
        w
    }

    /// Versions, expiry and keys of every role, and the published targets.
    pub fn status(&self, now: i64) -> Status {
        let root = &self.root.signed;
        let mut roles = BTreeMap::new();
        let mut add = |role: Role, version: u64, expires: &str, expires_at: i64, signed: bool| {
            let rk = &root.roles[role.name()];
            roles.insert(
                role.name().to_owned(),
                RoleStatus {
                    version,
                    expires: expires.to_owned(),
                    expires_in: expires_at - now,
                    signed,
                    keyids: rk.keyids.clone(),
                    threshold: rk.threshold,
                },
            );
        };
        add(
            Role::Root,
            root.version,
            &root.expires,
            self.root.expires_at(),
            check_signed(Role::Root, &self.root, root).is_ok(),
        );
        add(
            Role::Targets,
            self.targets.signed.version,
            &self.targets.signed.expires,
            self.targets.expires_at(),
            check_signed(Role::Targets, &self.targets, root).is_ok(),
        );
        add(
            Role::Snapshot,
            self.snapshot.signed.version,
            &self.snapshot.signed.expires,
            self.snapshot.expires_at(),
            check_signed(Role::Snapshot, &self.snapshot, root).is_ok(),
        );
        add(
            Role::Timestamp,
            self.timestamp.signed.version,
            &self.timestamp.signed.expires,
            self.timestamp.expires_at(),
            check_signed(Role::Timestamp, &self.timestamp, root).is_ok(),
        );
        let targets = self
            .targets
            .signed
            .targets
            .iter()
            .map(|(name, t)| TargetStatus {
                target: name.clone(),
                length: t.length,
                sha256: t.hashes.get("sha256").cloned().unwrap_or_default(),
                custom: t.custom.clone(),
            })
            .collect();
        let mut warnings = self.warnings(now);
        for r in Role::ONLINE {
            if let Some(why) = self.due(r, now, 0.5) {
                let who = if r == Role::Targets {
                    "run `semithin trust refresh` or publish (the targets key signs it)"
                } else {
                    "a running `semithin serve` renews it, or run `semithin trust refresh`"
                };
                warnings.push(format!("{r}: {why}; {who}"));
            }
        }
        let e = self.config.expires;
        Status {
            consistent_snapshot: root.consistent_snapshot,
            roles,
            targets,
            lifetimes: Role::ALL
                .into_iter()
                .map(|r| (r.name().to_owned(), format_duration(e.of(r))))
                .collect(),
            warnings,
        }
    }
}
