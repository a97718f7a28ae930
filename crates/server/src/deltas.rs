//! Delta packs on the server: static files under DATA/deltas/, `FROM-TO.pack`, written whole
//! (temporary name, fsync, rename) so relays and HTTP caches can carry them as they are.
//!
//! When a channel's release changes, packs from its last K releases to the new one are built in
//! the background at full effort ([`Why::Publish`]). A machine starting from another release of
//! its channel gets a pack built on its first request (quick effort, [`Why::Demand`]) and kept
//! for the next machine; a machine may ask only for packs between releases of its own channel
//! (see `App::delta_allowed`). One pair is built once at a time: whoever asks while it is being
//! built waits for it. Publish builds and on-demand builds have a permit each, so machines
//! asking for packs never hold up the packs a publish prepares.
//!
//! The directory is bounded: past `max_bytes`, the least recently used packs are deleted, never
//! one being sent (each answer holds a [`Served`] lease on its pack until its last byte).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use semithin_delta::build::{Effort, build_in};
use semithin_delta::listing::NOTHING;
use semithin_store::CommitId;
use semithin_store::objects::ObjectStore;
use semithin_store::pack::ObjKind;

use crate::error::{Error, Result};

type Pair = (CommitId, CommitId);

/// Why a pack is built: prepared for a release being published, or asked for by a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    Publish,
    Demand,
}

/// A pack on disk, as long as this is held it is not deleted to make room.
pub struct Served {
    pub path: PathBuf,
    _lease: Arc<()>,
}

/// A pack kept in the directory.
struct Kept {
    bytes: u64,
    /// When it was last asked for, on a counter (larger is more recent).
    used: u64,
    /// Held by every answer sending it.
    lease: Arc<()>,
}

#[derive(Default)]
struct State {
    /// One lock per pair being built (or waited for).
    building: HashMap<Pair, Arc<tokio::sync::Mutex<()>>>,
    /// Pairs a publish prepares that are not built yet: machines that need one wait for it.
    pending: HashSet<Pair>,
    kept: HashMap<Pair, Kept>,
    tick: u64,
}

impl State {
    fn touch(&mut self, pair: Pair) -> Option<Arc<()>> {
        self.tick += 1;
        let tick = self.tick;
        self.kept.get_mut(&pair).map(|k| {
            k.used = tick;
            k.lease.clone()
        })
    }

    fn total(&self) -> u64 {
        self.kept.values().map(|k| k.bytes).sum()
    }

    /// The least recently used packs that are not being sent, to delete until the rest fit.
    fn evict(&mut self, max_bytes: u64) -> Vec<Pair> {
        let mut total = self.total();
        if total <= max_bytes {
            return Vec::new();
        }
        let mut idle: Vec<(u64, Pair, u64)> = self
            .kept
            .iter()
            .filter(|(_, k)| Arc::strong_count(&k.lease) == 1)
            .map(|(p, k)| (k.used, *p, k.bytes))
            .collect();
        idle.sort();
        let mut out = Vec::new();
        for (_, p, bytes) in idle {
            if total <= max_bytes {
                break;
            }
            total -= bytes;
            self.kept.remove(&p);
            out.push(p);
        }
        out
    }
}

pub struct Deltas {
    dir: PathBuf,
    /// How many earlier releases of a channel get a pack to its new release.
    pub sources: usize,
    /// The most the packs kept may take together, in bytes.
    max_bytes: u64,
    state: Mutex<State>,
    /// Builds running at once for publishes, and for machines' requests: packs are CPU-heavy,
    /// check-ins must not starve behind them, and requests must not delay prepared packs.
    publish_permits: tokio::sync::Semaphore,
    demand_permits: tokio::sync::Semaphore,
    /// Packs built and builds failed, for `/metrics`.
    pub builds: prometheus_client::metrics::family::Family<
        crate::metrics::BuildLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

/// Removes a pair's build lock when the last one waiting on it is done, however it ended.
struct Building<'a> {
    deltas: &'a Deltas,
    pair: Pair,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Building<'_> {
    fn drop(&mut self) {
        let mut s = self.deltas.state.lock().expect("lock");
        // the map's copy and ours: nobody else waits for this pair
        if Arc::strong_count(&self.lock) <= 2 {
            s.building.remove(&self.pair);
        }
    }
}

impl Deltas {
    /// The packs already in `dir` are kept (least recently modified first out); leftover
    /// temporary files of builds that did not finish are removed.
    pub fn new(dir: PathBuf, sources: usize, max_bytes: u64) -> Self {
        let mut state = State::default();
        let mut found = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                    continue;
                }
                let Some(pair) = parse_name(&name) else {
                    continue;
                };
                let Ok(md) = e.metadata() else { continue };
                found.push((md.modified().ok(), pair, md.len()));
            }
        }
        found.sort();
        for (_, pair, bytes) in found {
            state.tick += 1;
            let used = state.tick;
            state.kept.insert(
                pair,
                Kept {
                    bytes,
                    used,
                    lease: Arc::new(()),
                },
            );
        }
        let d = Self {
            dir,
            sources,
            max_bytes,
            state: Mutex::new(state),
            publish_permits: tokio::sync::Semaphore::new(1),
            demand_permits: tokio::sync::Semaphore::new(1),
            builds: Default::default(),
        };
        d.make_room();
        d
    }

    pub fn path(&self, from: &CommitId, to: &CommitId) -> PathBuf {
        self.dir
            .join(format!("{}-{}.pack", from.to_hex(), to.to_hex()))
    }

    /// The size of the pack when it is built.
    pub fn size(&self, from: &CommitId, to: &CommitId) -> Option<u64> {
        let s = self.state.lock().expect("lock");
        s.kept.get(&(*from, *to)).map(|k| k.bytes)
    }

    /// Whether a publish is preparing this pack and it is not built yet.
    pub fn is_pending(&self, from: &CommitId, to: &CommitId) -> bool {
        let s = self.state.lock().expect("lock");
        s.pending.contains(&(*from, *to)) && !s.kept.contains_key(&(*from, *to))
    }

    /// Whether the pack is being built now.
    pub fn is_building(&self, from: &CommitId, to: &CommitId) -> bool {
        self.state
            .lock()
            .expect("lock")
            .building
            .contains_key(&(*from, *to))
    }

    /// The packs kept and their total size, in bytes.
    pub fn usage(&self) -> (usize, u64) {
        let s = self.state.lock().expect("lock");
        (s.kept.len(), s.total())
    }

    /// The pack if it is on disk, leased and marked as used.
    fn existing(&self, pair: Pair) -> Option<Served> {
        let path = self.path(&pair.0, &pair.1);
        let mut s = self.state.lock().expect("lock");
        if !path.exists() {
            s.kept.remove(&pair);
            return None;
        }
        let lease = s.touch(pair)?;
        Some(Served {
            path,
            _lease: lease,
        })
    }

    /// The pack from `from` to `to`, built now if it is not there yet; `None` when the server
    /// does not hold both releases. `from` may be [`NOTHING`]: the full-release pack of `to`.
    pub async fn ensure(
        &self,
        store: Arc<ObjectStore>,
        from: CommitId,
        to: CommitId,
        effort: Effort,
        why: Why,
    ) -> Result<Option<Served>> {
        if from == to
            || (from != NOTHING && !store.contains(ObjKind::Commit, from.as_bytes()))
            || !store.contains(ObjKind::Commit, to.as_bytes())
        {
            return Ok(None);
        }
        let pair = (from, to);
        if let Some(s) = self.existing(pair) {
            return Ok(Some(s));
        }
        let lock = self
            .state
            .lock()
            .expect("lock")
            .building
            .entry(pair)
            .or_default()
            .clone();
        let building = Building {
            deltas: self,
            pair,
            lock,
        };
        let _held = building.lock.lock().await;
        if let Some(s) = self.existing(pair) {
            return Ok(Some(s));
        }
        let permits = match why {
            Why::Publish => &self.publish_permits,
            Why::Demand => &self.demand_permits,
        };
        let _permit = permits.acquire().await.expect("never closed");
        let dir = self.dir.clone();
        let path = self.path(&from, &to);
        let p = path.clone();
        let built =
            tokio::task::spawn_blocking(move || write_pack(&store, &dir, &p, from, to, effort))
                .await
                .map_err(|e| Error::Config(format!("building a delta: {e}")))
                .and_then(|r| r);
        self.builds
            .get_or_create(&crate::metrics::BuildLabels {
                why: match why {
                    Why::Publish => "publish",
                    Why::Demand => "demand",
                },
                result: if built.is_ok() { "built" } else { "failed" },
            })
            .inc();
        let (bytes, secs) = built?;
        tracing::info!(
            from = %from.short(), to = %to.short(), bytes, secs, ?effort, ?why,
            "delta pack built"
        );
        let lease = Arc::new(());
        {
            let mut s = self.state.lock().expect("lock");
            s.tick += 1;
            let used = s.tick;
            s.kept.insert(
                pair,
                Kept {
                    bytes,
                    used,
                    lease: lease.clone(),
                },
            );
        }
        self.make_room();
        Ok(Some(Served {
            path,
            _lease: lease,
        }))
    }

    /// Deletes the least recently used packs not being sent until the rest fit.
    fn make_room(&self) {
        let gone = self.state.lock().expect("lock").evict(self.max_bytes);
        for (from, to) in gone {
            let p = self.path(&from, &to);
            match std::fs::remove_file(&p) {
                Ok(()) => tracing::info!(
                    from = %from.short(), to = %to.short(),
                    "delta pack removed to make room"
                ),
                Err(e) => tracing::warn!(path = %p.display(), error = %e, "removing a delta pack"),
            }
        }
    }
}

/// `FROM-TO.pack` of two commit ids.
fn parse_name(name: &str) -> Option<Pair> {
    let (from, to) = name.strip_suffix(".pack")?.split_once('-')?;
    Some((from.parse().ok()?, to.parse().ok()?))
}

fn write_pack(
    store: &ObjectStore,
    dir: &Path,
    path: &Path,
    from: CommitId,
    to: CommitId,
    effort: Effort,
) -> Result<(u64, f64)> {
    use std::io::Write;
    let start = Instant::now();
    std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{}-{}.{seq}.tmp", from.short(), to.short()));
    let result = (|| -> Result<u64> {
        let f = std::fs::File::create(&tmp).map_err(Error::io("creating", &tmp))?;
        let mut w = std::io::BufWriter::new(f);
        let stats = build_in(store, from, to, effort, dir, &mut w).map_err(|e| {
            Error::Config(format!(
                "building the delta {} -> {}: {e}",
                from.short(),
                to.short()
            ))
        })?;
        w.flush().map_err(Error::io("writing", &tmp))?;
        let f = w
            .into_inner()
            .map_err(|e| Error::io("writing", &tmp)(e.into_error()))?;
        f.sync_all().map_err(Error::io("syncing", &tmp))?;
        std::fs::rename(&tmp, path).map_err(Error::io("renaming into", path))?;
        semithin_store::fsutil::sync_dir(dir)?;
        Ok(stats.total_bytes)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok((result?, start.elapsed().as_secs_f64()))
}

impl crate::App {
    /// Starts building, in the background, the packs from the last releases of these channels
    /// to their new release (the previous release first: most machines run it).
    pub(crate) fn prepare_deltas(self: &Arc<Self>, channels: &[String]) {
        let k = self.deltas.sources;
        let published = self.published();
        let mut pairs = Vec::new();
        for c in channels {
            let Some(to) = published.releases.get(c).copied() else {
                continue;
            };
            for from in published.earlier.get(c).into_iter().flatten().take(k) {
                pairs.push((c.clone(), *from, to));
            }
            // first installs take the full-release pack from the swarm (docs/TORRENT.md): made
            // now when machines of the channel have no release yet, else on first request
            if self.torrents.cfg.enabled && self.has_uninstalled(c) {
                pairs.push((c.clone(), NOTHING, to));
            }
        }
        self.prepare_pairs(pairs);
    }

    /// Starts building the packs to `to` from the channel's release and the ones before it,
    /// before `to` is signed (a rollout starting): the same packs its publish would prepare.
    pub fn prepare_release(self: &Arc<Self>, channel: &str, to: CommitId) {
        let published = self.published();
        let mut seen = HashSet::from([to]);
        let froms: Vec<CommitId> = published
            .releases
            .get(channel)
            .into_iter()
            .chain(published.earlier.get(channel).into_iter().flatten())
            .copied()
            .filter(|c| seen.insert(*c))
            .take(self.deltas.sources)
            .collect();
        let pairs = froms.into_iter().map(|f| (channel.to_owned(), f, to));
        self.prepare_pairs(pairs.collect());
    }

    /// Builds these packs one after the other at full effort. Until its pack is built, a
    /// machine on its starting release is told to stay (see `delta_hold`); it is woken when the
    /// pack is there (or could not be made).
    fn prepare_pairs(self: &Arc<Self>, pairs: Vec<(String, CommitId, CommitId)>) {
        let pairs: Vec<_> = {
            let mut guard = self.deltas.state.lock().expect("lock");
            let s = &mut *guard;
            pairs
                .into_iter()
                .filter(|(_, f, t)| !s.kept.contains_key(&(*f, *t)) && s.pending.insert((*f, *t)))
                .collect()
        };
        if pairs.is_empty() {
            return;
        }
        let app = self.clone();
        tokio::spawn(async move {
            for (channel, from, to) in pairs {
                let store = app.published().store.clone();
                let r = app
                    .deltas
                    .ensure(store, from, to, Effort::Full, Why::Publish)
                    .await;
                if let Err(e) = &r {
                    tracing::warn!(error = %e, "building a delta pack");
                }
                app.deltas
                    .state
                    .lock()
                    .expect("lock")
                    .pending
                    .remove(&(from, to));
                for m in app
                    .fleet
                    .select(&semithin_protocol::selector::Selector::All)
                {
                    let r = m.row.lock().expect("lock");
                    if r.channel.as_deref() == Some(channel.as_str())
                        && r.report.current.as_ref().is_some_and(|c| *c == from)
                    {
                        m.wake.notify_one();
                    }
                }
                // its torrent too, made once here: the woken machines that share packs ask
                // for it at once and wait for this one hashing, not each for its own
                if let Ok(Some(built)) = r
                    && app.torrents.cfg.enabled
                {
                    let kind = if from == NOTHING { "full" } else { "delta" };
                    let name = format!("{}-{}.pack", from.to_hex(), to.to_hex());
                    if let Err(e) = app.torrents.of(kind, built.path.clone(), name).await {
                        tracing::warn!(error = %e, "making a delta pack's torrent");
                    }
                }
            }
        });
    }

    /// Why a machine running `from` is told to stay there for now instead of going to `to`:
    /// its pack is being prepared, and fetching without it would cost the fleet far more.
    pub fn delta_hold(&self, from: &CommitId, to: &CommitId) -> Option<String> {
        self.deltas.is_pending(from, to).then(|| {
            format!(
                "release {} waits for its delta pack from {}, which the server is building; \
                 this machine is woken when it is ready",
                to.short(),
                from.short()
            )
        })
    }

    /// For `rollout status`: the packs to `to` from these releases still being built.
    pub fn building_note<'a>(
        &self,
        to: &str,
        froms: impl Iterator<Item = &'a str>,
    ) -> Option<String> {
        let to: CommitId = to.parse().ok()?;
        let mut waiting: Vec<String> = froms
            .filter_map(|f| f.parse::<CommitId>().ok())
            .filter(|f| self.deltas.is_pending(f, &to))
            .map(|f| f.short())
            .collect();
        waiting.sort();
        waiting.dedup();
        (!waiting.is_empty()).then(|| {
            format!(
                "the server is building the delta pack(s) from {} (machines on those releases \
                 wait for them)",
                waiting.join(", ")
            )
        })
    }

    /// Whether machines following `channel` have no release installed yet.
    fn has_uninstalled(&self, channel: &str) -> bool {
        self.fleet
            .select(&semithin_protocol::selector::Selector::All)
            .iter()
            .any(|m| {
                let r = m.row.lock().expect("lock");
                r.channel.as_deref() == Some(channel) && r.report.current.is_none()
            })
    }

    /// A machine's channel and the releases the channel names now: its release and those its
    /// signed target also allows.
    fn channel_now(
        &self,
        m: &crate::db::MachineRow,
    ) -> std::result::Result<(String, Vec<CommitId>), String> {
        let Some(channel) = m.channel.as_deref() else {
            return Err("this machine follows no channel".into());
        };
        let p = self.published();
        let mut now: Vec<CommitId> = p
            .targets
            .get(channel)
            .map(|t| t.allowed.iter().filter_map(|a| a.parse().ok()).collect())
            .unwrap_or_default();
        now.extend(p.releases.get(channel).copied());
        Ok((channel.to_owned(), now))
    }

    /// Whether a machine may have the full-release pack of `to`: what it is told to run, or its
    /// channel's release (or one its signed target also allows).
    pub fn install_allowed(
        &self,
        m: &crate::db::MachineRow,
        to: &CommitId,
    ) -> std::result::Result<(), String> {
        let (channel, now) = self.channel_now(m)?;
        if self.target(m).as_ref() == Some(to) || now.contains(to) {
            Ok(())
        } else {
            Err(format!(
                "{} is not a release this machine is told to run on channel {channel}",
                to.short()
            ))
        }
    }

    /// Whether a machine may have the pack from `from` to `to`: both must be releases of its
    /// channel (the channel's release, those its signed target also allows, or one it pointed
    /// at before), and `to` what the machine is told to run or the channel's release. Anything
    /// else would let one machine make the server build, and keep, packs between any commits.
    pub fn delta_allowed(
        &self,
        m: &crate::db::MachineRow,
        from: &CommitId,
        to: &CommitId,
    ) -> std::result::Result<(), String> {
        let (channel, now) = self.channel_now(m)?;
        let p = self.published();
        let of_channel = |c: &CommitId| {
            now.contains(c) || p.earlier.get(&channel).is_some_and(|e| e.contains(c))
        };
        self.install_allowed(m, to)?;
        if !of_channel(from) {
            return Err(format!(
                "{} was never a release of channel {channel}: fetch objects instead",
                from.short()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use semithin_store::import::{CommitOptions, commit};
    use semithin_store::{Access, NoProgress, Repo};

    fn id(n: u8) -> CommitId {
        CommitId::from_bytes([n; 32])
    }

    #[test]
    fn the_least_recently_used_packs_go_first_never_one_being_sent() {
        let mut s = State::default();
        for (n, bytes) in [(1u8, 40u64), (2, 40), (3, 40)] {
            s.tick += 1;
            let used = s.tick;
            s.kept.insert(
                (id(n), id(n + 10)),
                Kept {
                    bytes,
                    used,
                    lease: Arc::new(()),
                },
            );
        }
        assert!(s.evict(120).is_empty());
        // 1 is used again; 2 is being sent: 3 is the least recently used one that may go
        s.touch((id(1), id(11)));
        let sending = s.touch((id(2), id(12))).unwrap();
        assert_eq!(s.evict(80), vec![(id(3), id(13))]);
        // nothing is idle enough: all that may go goes, the one being sent stays
        assert_eq!(s.evict(10), vec![(id(1), id(11))]);
        assert_eq!(s.total(), 40);
        drop(sending);
        assert_eq!(s.evict(10), vec![(id(2), id(12))]);
        assert_eq!(s.total(), 0);
    }

    /// A repository with three releases of a small tree.
    fn releases(dir: &Path) -> (Arc<ObjectStore>, [CommitId; 3]) {
        let path = dir.join("repo");
        Repo::init(&path, Default::default()).unwrap();
        let repo = Repo::open(&path, Access::Write).unwrap();
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("usr/lib")).unwrap();
        let mut ids = Vec::new();
        for v in 0..3u32 {
            let data: Vec<u8> = (0..200_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(v) >> 13) as u8)
                .collect();
            std::fs::write(src.join("usr/lib/data.bin"), &data).unwrap();
            std::fs::write(src.join(format!("usr/lib/v{v}")), format!("{v}\n")).unwrap();
            let opts = CommitOptions {
                channel: "lab/stable",
                message: "v",
                time: Some(1_700_000_000),
            };
            let c = commit(&repo, &src, &opts, &NoProgress).unwrap();
            ids.push(c.commit.parse().unwrap());
        }
        (Arc::new(repo.objects), [ids[0], ids[1], ids[2]])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_build_leaves_no_lock_and_no_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (store, [a, b, _]) = releases(dir.path());
        // the packs' directory cannot be made: a file is in its way
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, b"").unwrap();
        let d = Deltas::new(blocked.join("deltas"), 3, 1 << 30);
        let e = d
            .ensure(store.clone(), a, b, Effort::Quick, Why::Demand)
            .await;
        assert!(e.is_err());
        assert!(!d.is_building(&a, &b), "the failed build's lock is gone");
        assert!(d.state.lock().unwrap().building.is_empty());
        // once the way is clear, the same pair builds
        let good = dir.path().join("deltas");
        let d = Deltas::new(good.clone(), 3, 1 << 30);
        let built = d.ensure(store, a, b, Effort::Quick, Why::Demand).await;
        assert!(built.unwrap().unwrap().path.exists());
        assert!(d.state.lock().unwrap().building.is_empty());
        let leftovers: Vec<_> = std::fs::read_dir(&good)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pack_directory_stays_bounded_and_packs_being_sent_stay() {
        let dir = tempfile::tempdir().unwrap();
        let (store, [a, b, c]) = releases(dir.path());
        let packs = dir.path().join("deltas");
        // room for nothing: only the packs being sent are kept
        let d = Deltas::new(packs.clone(), 3, 1);
        let ab = d.ensure(store.clone(), a, b, Effort::Quick, Why::Demand);
        let ab = ab.await.unwrap().unwrap();
        let bc = d.ensure(store.clone(), b, c, Effort::Quick, Why::Publish);
        let bc = bc.await.unwrap().unwrap();
        assert!(ab.path.exists() && bc.path.exists());
        drop(ab);
        let ac = d.ensure(store.clone(), a, c, Effort::Quick, Why::Demand);
        let ac = ac.await.unwrap().unwrap();
        assert!(!d.path(&a, &b).exists(), "the idle pack went");
        assert!(
            bc.path.exists() && ac.path.exists(),
            "packs being sent stay"
        );
        assert_eq!(d.usage().0, 2);
        drop((bc, ac));
        // at start, what is on disk counts; past the bound it goes
        std::fs::write(packs.join(".x-y.1.tmp"), b"half a pack").unwrap();
        let d = Deltas::new(packs.clone(), 3, 1);
        assert_eq!(d.usage(), (0, 0));
        assert_eq!(std::fs::read_dir(&packs).unwrap().count(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn machines_asking_for_packs_never_hold_up_the_packs_of_a_publish() {
        let dir = tempfile::tempdir().unwrap();
        let (store, [a, b, c]) = releases(dir.path());
        let d = Arc::new(Deltas::new(dir.path().join("deltas"), 3, 1 << 30));
        // every on-demand build slot is taken (a long build for some machine)
        let busy = d.demand_permits.acquire().await.unwrap();
        let waiting = {
            let d = d.clone();
            let store = store.clone();
            tokio::spawn(async move {
                d.ensure(store, a, c, Effort::Quick, Why::Demand)
                    .await
                    .map(|s| s.is_some())
            })
        };
        let publish = d.ensure(store.clone(), a, b, Effort::Quick, Why::Publish);
        let built = tokio::time::timeout(std::time::Duration::from_secs(60), publish)
            .await
            .expect("the publish build does not wait for machines' builds");
        assert!(built.unwrap().is_some());
        assert!(!waiting.is_finished(), "the machine's build waits its turn");
        drop(busy);
        assert!(waiting.await.unwrap().unwrap());
    }
}
