//! The fleet as the dashboard lists it: one compact copy of what the machines list filters and
//! sorts by (each machine's state, channel, release, last-seen time, and its name, channel and
//! labels as one lowercase text), in name order, with the overview's census made in the same
//! pass. Reading 100,000 machines one by one (a lock and a few scattered allocations each) costs
//! far more than scanning this, so the pages use it instead of the machines themselves:
//!
//! - It is made at most every [`REFRESH`] in the background while the dashboard is in use (a
//!   page asked for it within [`IDLE`]), so a page never waits for it but the first time and
//!   after an admin change; a page uses one at most [`MAX_AGE`] old.
//! - An admin change of the fleet (accept, reject, labels, channels, enrollments, removals:
//!   [`crate::fleet::Fleet::generation`]) makes the next page wait for a new one, so a page shows
//!   what its user just did. Check-ins and publishes show within [`MAX_AGE`].
//! - The rows of a page are read from the machines themselves, as they are now.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use semithin_protocol::api::FleetState;
use semithin_protocol::ids::ReleaseId;

use crate::App;
use crate::fleet::{self, Machine};
use crate::metrics::Census;

/// How often it is made again while in use.
pub const REFRESH: Duration = Duration::from_secs(1);
/// The oldest a page uses.
pub const MAX_AGE: Duration = Duration::from_secs(3);
/// Seconds without a page asking after which it is no longer made.
pub const IDLE: i64 = 60;

/// A machine in the index.
pub struct Entry {
    pub m: Arc<Machine>,
    pub state: FleetState,
    /// Its channel's rank among the channels by name (0: none).
    pub channel: u32,
    /// Its release's rank among the releases by id (0: none).
    pub current: u32,
    pub seen: i64,
}

pub struct Snapshot {
    made: Instant,
    generation: u64,
    /// In name order.
    pub entries: Vec<Entry>,
    /// The channels by rank (rank - 1).
    pub channels: Vec<String>,
    /// The releases by rank (rank - 1).
    pub releases: Vec<ReleaseId>,
    /// Each entry's name, channel and labels (`k=v`), ASCII-lowercased, separated by NUL.
    text: String,
    /// Where each entry's text starts in `text`.
    starts: Vec<usize>,
    pub census: Census,
}

impl Snapshot {
    /// Marks the entries whose text holds `needle` (lowercase).
    pub fn text_matches(&self, needle: &str) -> Vec<bool> {
        let mut hit = vec![false; self.entries.len()];
        if needle.is_empty() {
            hit.fill(true);
            return hit;
        }
        if needle.contains('\0') {
            return hit;
        }
        for (at, _) in self.text.match_indices(needle) {
            let i = self.starts.partition_point(|&s| s <= at) - 1;
            hit[i] = true;
        }
        hit
    }

    /// The rank of channel `name` (`None`: no machine follows it).
    pub fn channel_rank(&self, name: &str) -> Option<u32> {
        self.channels
            .binary_search_by(|c| c.as_str().cmp(name))
            .ok()
            .map(|i| i as u32 + 1)
    }
}

#[derive(Default)]
pub struct Cache {
    snap: Mutex<Option<Arc<Snapshot>>>,
    /// Held while one is made, so two pages never make one each.
    making: Mutex<()>,
    /// When a page last asked (Unix seconds).
    used: AtomicI64,
    refreshing: AtomicBool,
}

fn lower_into(out: &mut String, s: &str) {
    out.extend(s.chars().map(|c| c.to_ascii_lowercase()));
}

/// Makes the index: one pass over the fleet, each machine read under its lock.
pub fn make(app: &App) -> Snapshot {
    let generation = app.fleet.generation();
    let published = app.published();
    let machines = app.fleet.all();
    struct Pre {
        name: String,
        m: Arc<Machine>,
        state: FleetState,
        channel: Option<String>,
        current: Option<ReleaseId>,
        seen: i64,
        text: (usize, usize),
    }
    let mut census = Census::new();
    let mut text = String::new();
    let mut pre: Vec<Pre> = Vec::with_capacity(machines.len());
    for m in machines {
        let seen = m.last_seen.load(Ordering::Relaxed);
        let p = fleet::with_state(app, &published, &m, |r, state| {
            census.add(r, state);
            let start = text.len();
            lower_into(&mut text, &r.name);
            text.push('\0');
            if let Some(c) = &r.channel {
                lower_into(&mut text, c);
            }
            text.push('\0');
            for (k, v) in &r.labels {
                lower_into(&mut text, k);
                text.push('=');
                lower_into(&mut text, v);
                text.push('\0');
            }
            Pre {
                name: r.name.clone(),
                m: m.clone(),
                state,
                channel: r.channel.clone(),
                current: r.report.current,
                seen,
                text: (start, text.len()),
            }
        });
        pre.push(p);
    }
    pre.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let mut channels: Vec<String> = pre.iter().filter_map(|p| p.channel.clone()).collect();
    channels.sort_unstable();
    channels.dedup();
    let mut releases: Vec<ReleaseId> = pre.iter().filter_map(|p| p.current).collect();
    releases.sort_unstable();
    releases.dedup();
    let mut sorted = String::with_capacity(text.len());
    let mut starts = Vec::with_capacity(pre.len());
    let entries = pre
        .into_iter()
        .map(|p| {
            starts.push(sorted.len());
            sorted.push_str(text.get(p.text.0..p.text.1).unwrap_or_default());
            let rank = |found: Result<usize, usize>| found.map_or(0, |i| i as u32 + 1);
            Entry {
                channel: p.channel.as_deref().map_or(0, |c| {
                    rank(channels.binary_search_by(|x| x.as_str().cmp(c)))
                }),
                current: p.current.map_or(0, |c| rank(releases.binary_search(&c))),
                m: p.m,
                state: p.state,
                seen: p.seen,
            }
        })
        .collect();
    Snapshot {
        made: Instant::now(),
        generation,
        entries,
        channels,
        releases,
        text: sorted,
        starts,
        census,
    }
}

/// The index for a page (call it off the async threads: it may have to be made). Starts the
/// background refresh when it is not running.
pub fn get(app: &Arc<App>) -> Arc<Snapshot> {
    let cache = &app.web.index;
    cache.used.store(crate::now(), Ordering::Relaxed);
    let fresh =
        |s: &Snapshot| s.generation == app.fleet.generation() && s.made.elapsed() <= MAX_AGE;
    if let Some(s) = cache.snap.lock().expect("lock").clone()
        && fresh(&s)
    {
        return s;
    }
    let _making = cache.making.lock().expect("lock");
    // made by another page meanwhile
    if let Some(s) = cache.snap.lock().expect("lock").clone()
        && fresh(&s)
    {
        return s;
    }
    let s = Arc::new(make(app));
    *cache.snap.lock().expect("lock") = Some(s.clone());
    drop(_making);
    if !cache.refreshing.swap(true, Ordering::AcqRel)
        && let Ok(rt) = tokio::runtime::Handle::try_current()
    {
        rt.spawn(refresh(Arc::downgrade(app)));
    }
    s
}

/// Makes the index again every [`REFRESH`] while pages ask for it.
async fn refresh(app: std::sync::Weak<App>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        // the server's end ends it
        let Some(app) = app.upgrade() else { return };
        let cache = &app.web.index;
        if crate::now() - cache.used.load(Ordering::Relaxed) > IDLE {
            cache.refreshing.store(false, Ordering::Release);
            *cache.snap.lock().expect("lock") = None;
            return;
        }
        let a = app.clone();
        let made = tokio::task::spawn_blocking(move || {
            let cache = &a.web.index;
            let _making = cache.making.lock().expect("lock");
            let s = Arc::new(make(&a));
            *cache.snap.lock().expect("lock") = Some(s);
        })
        .await;
        if made.is_err() {
            cache.refreshing.store(false, Ordering::Release);
            return;
        }
    }
}
