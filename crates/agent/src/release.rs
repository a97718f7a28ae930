//! The agent's steps toward a release: trust, verification against the signed metadata, fetching.

use super::*;

impl Agent {
    pub(crate) fn init_trust(&self) -> Result<()> {
        let dir = self.layout.trust();
        if dir.join("root.json").exists() {
            return Ok(());
        }
        let root = self.cfg.trusted_root.as_ref().ok_or_else(|| {
            Error::Config(
                "no trusted root yet: give --trusted-root (the root.json of the server's trust \
                 metadata, shipped with the image)"
                    .into(),
            )
        })?;
        let bytes = std::fs::read(root).map_err(Error::io("reading", root))?;
        semithin_trust::client::init(&dir, &bytes)?;
        Ok(())
    }

    /// A TUF client over the server's metadata at `meta_path`, refreshed.
    pub(crate) fn trust_client(&self, meta_path: &ApiPath) -> Result<Client<'_>> {
        self.init_trust()?;
        let api = self.api();
        let mut client = Client::new(
            &self.layout.trust(),
            &format!("{}{meta_path}", api.base()),
            api,
            Limits::default(),
            now(),
        )?;
        client.refresh()?;
        Ok(client)
    }

    /// Refreshes the TUF metadata and checks that the signed target of `channel` allows
    /// `release` (its release, or an earlier one it lists for a rollout); stores the commit
    /// object.
    pub(crate) fn verify_release(&mut self, channel: &str, release: &str) -> Result<()> {
        self.phase = Phase::Verifying;
        self.init_trust()?;
        let base = self.api().base().to_owned();
        let desired = self.answer.as_ref().and_then(|a| a.desired.clone());
        let meta_path = desired
            .as_ref()
            .map(|d| d.metadata_path.clone())
            .unwrap_or_else(ApiPath::trust_metadata);
        let mut client = self.trust_client(&meta_path)?;
        if self.cfg.channel.is_none()
            && let Some(signed) = self.signed_assignment(&mut client)?
            && signed.as_deref() != Some(channel)
        {
            return Err(Error::Channel(format!(
                "the server names channel {channel:?} for this machine, but its signed \
                 assignment says {}: nothing is fetched",
                signed.map_or("none".to_owned(), |s| format!("{s:?}"))
            )));
        }
        let target = format!("channels/{channel}");
        let info = client.find_target(&target)?.ok_or_else(|| Error::Release {
            release: release.to_owned(),
            reason: format!("the signed metadata has no release for channel {channel}"),
        })?;
        let signed =
            ChannelRelease::from_custom(info.custom.as_ref()).map_err(|e| Error::Release {
                release: release.to_owned(),
                reason: format!("the signed target of channel {channel} is malformed: {e}"),
            })?;
        if !signed.permits(release) {
            return Err(Error::Release {
                release: release.to_owned(),
                reason: format!(
                    "the server asks for it, but the signed release of channel {channel} is {}{}",
                    signed.commit,
                    if signed.allowed.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (allowing {} earlier ones, not this)",
                            signed.allowed.len()
                        )
                    }
                ),
            });
        }
        if signed.commit != release {
            // An earlier release the signature allows (a rollout keeps this machine on it or
            // sends it back): its id is signed, so its commit object is checked by its id.
            return self.store_allowed_commit(release);
        }
        let local = client.download_target(
            &target,
            &info,
            &format!("{base}{}", ApiPath::trust_targets()),
            &self.layout.targets(),
        )?;
        let bytes = std::fs::read(&local).map_err(Error::io("reading", &local))?;
        let id: CommitId = release.parse().map_err(|_| Error::Release {
            release: release.to_owned(),
            reason: "not a commit id".into(),
        })?;
        let obj = VerifiedObject::from_raw(ObjKind::Commit, bytes)?;
        if obj.id() != id.as_bytes() {
            return Err(Error::Release {
                release: release.to_owned(),
                reason: "the signed target does not hold this commit".into(),
            });
        }
        self.repo.objects.put(&obj)?;
        self.repo.objects.flush()?;
        self.verified = Some(release.to_owned());
        Ok(())
    }

    /// The commit object of an allowed earlier release: from the local store when it is there
    /// (the machine ran it), else fetched as one object, which is verified against its id.
    pub(crate) fn store_allowed_commit(&mut self, release: &str) -> Result<()> {
        let id: CommitId = release.parse().map_err(|_| Error::Release {
            release: release.to_owned(),
            reason: "not a commit id".into(),
        })?;
        if !self.repo.objects.contains(ObjKind::Commit, id.as_bytes()) {
            let objects_path = self
                .answer
                .as_ref()
                .and_then(|a| a.desired.as_ref())
                .map(|d| d.objects_path.clone())
                .unwrap_or_else(ApiPath::objects);
            let want = (ObjKind::Commit, *id.as_bytes());
            let stream = self
                .api()
                .objects(&objects_path, vec![format!("commit/{}", id.to_hex())])?;
            transfer::receive(&self.repo.objects, &HashSet::from([want]), stream)?;
            if !self.repo.objects.contains(ObjKind::Commit, id.as_bytes()) {
                return Err(Error::Release {
                    release: release.to_owned(),
                    reason: "the server did not send its commit object".into(),
                });
            }
        }
        self.verified = Some(release.to_owned());
        Ok(())
    }

    /// Fetches every object the release lacks, level by level, in batched streams. Each object
    /// is verified before it is stored; an interrupted fetch keeps what arrived whole.
    pub(crate) fn fetch(&mut self, release: &str, objects_path: &ApiPath) -> Result<u64> {
        self.phase = Phase::Fetching;
        let id: CommitId = release.parse().map_err(|_| Error::Release {
            release: release.to_owned(),
            reason: "not a commit id".into(),
        })?;
        // A delta pack from the running release first; what it leaves out comes as objects.
        let delta_path = self
            .answer
            .as_ref()
            .and_then(|a| a.desired.as_ref())
            .and_then(|d| d.delta_path.clone());
        let current = self.layout.current()?;
        if let (Some(path), Some(cur)) = (delta_path, &current)
            && cur != release
        {
            self.fetch_delta(&path, cur, release)?;
        }
        // A first install on a site sharing through BitTorrent: the full-release pack from the
        // swarm; what it leaves out (nothing, when it applied) comes as objects.
        if current.is_none() && self.cfg.torrent {
            self.fetch_full(release)?;
        }
        let mut stored = 0;
        let mut rounds = 0;
        loop {
            let want = transfer::missing(&self.repo.objects, id)?;
            if want.is_empty() {
                return Ok(stored);
            }
            rounds += 1;
            if rounds > 10_000 {
                return Err(Error::Release {
                    release: release.to_owned(),
                    reason: "fetching does not converge".into(),
                });
            }
            self.say(&format!("fetching {} object(s)", want.len()));
            for batch in want.chunks(fetch_batch()) {
                let refs = batch
                    .iter()
                    .map(|(k, id)| format!("{}/{}", k.name(), hex::encode(id)))
                    .collect();
                let expected: HashSet<_> = batch.iter().copied().collect();
                let stream = self.api().objects(objects_path, refs)?;
                let got = transfer::receive(&self.repo.objects, &expected, stream)?;
                stored += got.stored_bytes;
                if rounds > 2 {
                    crash_point("fetch");
                }
            }
        }
    }

    pub(crate) fn facts(&self) -> Result<(Option<String>, Option<String>)> {
        let current = self.layout.current()?;
        let desired = self
            .answer
            .as_ref()
            .and_then(|a| a.desired.as_ref())
            .map(|d| d.release.to_string());
        Ok((current, desired))
    }
}
