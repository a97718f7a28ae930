//! `GET /metrics`: the server's state and counters in the Prometheus text format, for the
//! admin's monitoring (docs/PROTOCOL.md, "Metrics"). Counters that run all the time (requests
//! and their latency, delta builds, job results) live in [`Metrics`]; what is a state (machines
//! by state and health, rollouts in progress) is counted from the fleet when scraped, so it is
//! never out of date. A registry per scrape over shared handles: no global state.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::{EncodeLabelSet, text::encode};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use semithin_protocol::api::{FleetState, Health, MachineStatus};

use crate::App;

/// Request latency buckets, in seconds: long polls end up in the last ones.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route as declared (`/api/v1/deltas/{from}/{to}`), never the path asked for.
    pub route: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub route: String,
    pub method: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// `publish` (prepared for a release being published) or `demand` (asked for by a machine).
    pub why: &'static str,
    /// `built` or `failed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    health: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutLabels {
    rollout: String,
    channel: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutMachineLabels {
    rollout: String,
    channel: String,
    /// `waiting` (not admitted yet), `admitted` (told the new release), `settled` (updated or
    /// failed there).
    phase: &'static str,
}

/// The counters that run for as long as the server does.
#[derive(Debug)]
pub struct Metrics {
    pub latency: Family<RouteLabels, Histogram>,
    pub responses: Family<StatusLabels, Counter>,
    started: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            latency: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
            responses: Family::default(),
            started: Instant::now(),
        }
    }
}

/// Times every request that matched a route, by the route's template.
pub async fn track(State(app): State<std::sync::Arc<App>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "other".into());
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    let secs = start.elapsed().as_secs_f64();
    let m = &app.metrics;
    m.latency
        .get_or_create(&RouteLabels {
            route: route.clone(),
            method: method.clone(),
        })
        .observe(secs);
    m.responses
        .get_or_create(&StatusLabels {
            route,
            method,
            code: resp.status().as_u16(),
        })
        .inc();
    resp
}

pub const STATES: [FleetState; 12] = [
    FleetState::Pending,
    FleetState::Rejected,
    FleetState::Unassigned,
    FleetState::Unpublished,
    FleetState::NeverSeen,
    FleetState::Updated,
    FleetState::Held,
    FleetState::Updating,
    FleetState::Checking,
    FleetState::Failed,
    FleetState::Failing,
    FleetState::Tampered,
];

fn health_name(h: Health) -> &'static str {
    match h {
        Health::Unknown => "unknown",
        Health::Checking => "checking",
        Health::Healthy => "healthy",
        Health::Failed => "failed",
    }
}

/// What the fleet looks like now, counted in one pass.
#[derive(Clone, Default)]
pub struct Census {
    /// Every state, those no machine is in at 0.
    pub states: BTreeMap<&'static str, i64>,
    /// Accepted machines by the health they reported, every value present.
    pub health: BTreeMap<&'static str, i64>,
    /// Machines following each channel.
    pub channels: BTreeMap<String, i64>,
    /// Machines following no channel.
    pub unassigned: i64,
    /// Machines by the release they run (`None`: none yet).
    pub releases: BTreeMap<Option<semithin_protocol::ids::ReleaseId>, i64>,
    pub machines: i64,
    /// Bytes the machines' BitTorrent clients reported receiving from and sending to peers.
    pub swarm_received: u64,
    pub swarm_sent: u64,
}

impl Census {
    /// Nothing counted yet: every state and health at 0.
    pub fn new() -> Census {
        let mut c = Census::default();
        for s in STATES {
            c.states.insert(s.as_str(), 0);
        }
        for h in [
            Health::Unknown,
            Health::Checking,
            Health::Healthy,
            Health::Failed,
        ] {
            c.health.insert(health_name(h), 0);
        }
        c
    }

    /// Counts a machine, its row and its state.
    pub fn add(&mut self, r: &crate::db::MachineRow, state: FleetState) {
        *self.states.entry(state.as_str()).or_default() += 1;
        if r.status == MachineStatus::Accepted {
            *self.health.entry(health_name(r.report.health)).or_default() += 1;
        }
        match r.channel.as_deref() {
            Some(ch) => match self.channels.get_mut(ch) {
                Some(n) => *n += 1,
                None => {
                    self.channels.insert(ch.to_owned(), 1);
                }
            },
            None => self.unassigned += 1,
        }
        *self.releases.entry(r.report.current).or_default() += 1;
        self.machines += 1;
        if let Some(s) = r.report.swarm {
            self.swarm_received += s.received;
            self.swarm_sent += s.sent;
        }
    }
}

/// The fleet counted now. Nothing is copied for a machine: its state is computed and it is
/// counted under its lock (`fleet::with_state`).
pub fn census(app: &App) -> Census {
    let mut c = Census::new();
    let published = app.published();
    for m in app.fleet.all() {
        crate::fleet::with_state(app, &published, &m, |r, state| c.add(r, state));
    }
    c
}

/// The whole text answer of `/metrics`.
pub fn render(app: &App) -> String {
    let m = &app.metrics;
    let mut r = Registry::with_prefix("semithin");
    let c = &app.counters;
    r.register(
        "checkins",
        "Check-ins answered",
        ConstCounter::new(c.checkins.load(Ordering::Relaxed)),
    );
    r.register(
        "checkins_batched",
        "Check-ins that came in relays' batches (also counted in checkins)",
        ConstCounter::new(c.checkins_batched.load(Ordering::Relaxed)),
    );
    r.register(
        "checkin_batches",
        "Relays' batches of check-ins received",
        ConstCounter::new(c.checkin_batches.load(Ordering::Relaxed)),
    );
    let held: Gauge = Gauge::default();
    held.set(c.polls_held.load(Ordering::Relaxed) as i64);
    r.register(
        "polls_held",
        "Long polls held now (a machine's check-in or a relay's batch, one each)",
        held,
    );
    let sent = Family::<KindLabels, Counter>::default();
    for (kind, v) in [
        ("objects", c.object_bytes_sent.load(Ordering::Relaxed)),
        ("metadata", c.metadata_bytes_sent.load(Ordering::Relaxed)),
        ("delta", c.delta_bytes_sent.load(Ordering::Relaxed)),
    ] {
        sent.get_or_create(&KindLabels { kind }).inc_by(v);
    }
    r.register("sent_bytes", "Bytes sent to machines, by kind", sent);
    r.register(
        "objects_sent",
        "Objects sent to machines",
        ConstCounter::new(c.objects_sent.load(Ordering::Relaxed)),
    );
    let census = census(app);
    let swarm = Family::<DirectionLabels, Gauge>::default();
    for (direction, v) in [
        ("received", census.swarm_received),
        ("sent", census.swarm_sent),
    ] {
        swarm
            .get_or_create(&DirectionLabels { direction })
            .set(i64::try_from(v).unwrap_or(i64::MAX));
    }
    r.register(
        "swarm_bytes",
        "Bytes the machines' BitTorrent clients exchanged with peers, as they last reported (since each agent started)",
        swarm,
    );
    let seeded: u64 = app
        .torrents
        .list()
        .iter()
        .filter_map(|t| app.torrents.uploaded(&t.info_hash))
        .sum();
    r.register(
        "torrent_seeded_bytes",
        "Bytes the server's own seeder uploaded, torrents it still shares",
        ConstCounter::new(seeded),
    );
    let by_state = Family::<StateLabels, Gauge>::default();
    for (state, n) in &census.states {
        by_state.get_or_create(&StateLabels { state }).set(*n);
    }
    r.register(
        "machines",
        "Machines by state (as `semithin fleet list` shows it)",
        by_state,
    );
    let by_health = Family::<HealthLabels, Gauge>::default();
    for (health, n) in &census.health {
        by_health.get_or_create(&HealthLabels { health }).set(*n);
    }
    r.register(
        "machines_health",
        "Accepted machines by the health their agent reported",
        by_health,
    );
    let by_channel = Family::<ChannelLabels, Gauge>::default();
    for (channel, n) in census.channels {
        by_channel.get_or_create(&ChannelLabels { channel }).set(n);
    }
    r.register(
        "machines_channel",
        "Machines by the channel they follow",
        by_channel,
    );
    let rollouts = Family::<RolloutLabels, Gauge>::default();
    let rollout_machines = Family::<RolloutMachineLabels, Gauge>::default();
    for p in app.rollouts.progress() {
        rollouts
            .get_or_create(&RolloutLabels {
                rollout: p.id.to_string(),
                channel: p.channel.clone(),
                state: p.state.as_str().to_owned(),
            })
            .set(i64::from(p.wave));
        for (phase, n) in [
            ("waiting", p.waiting),
            ("admitted", p.admitted),
            ("settled", p.settled),
        ] {
            rollout_machines
                .get_or_create(&RolloutMachineLabels {
                    rollout: p.id.to_string(),
                    channel: p.channel.clone(),
                    phase,
                })
                .set(n as i64);
        }
    }
    r.register(
        "rollout_wave",
        "Active rollouts: the highest wave admitted so far (0 is the canary)",
        rollouts,
    );
    r.register(
        "rollout_machines",
        "Machines of active rollouts by phase",
        rollout_machines,
    );
    r.register(
        "delta_builds",
        "Delta packs built, by why and result",
        app.deltas.builds.clone(),
    );
    r.register(
        "job_results",
        "Job results reported by machines, by outcome",
        app.jobs.results.clone(),
    );
    r.register(
        "http_request_duration_seconds",
        "Time to answer requests (to the answer's start for streams), by route",
        m.latency.clone(),
    );
    r.register(
        "http_responses",
        "Answers by route and status code",
        m.responses.clone(),
    );
    r.register(
        "uptime_seconds",
        "Seconds since the server started",
        ConstCounter::new(m.started.elapsed().as_secs_f64()),
    );
    let mut out = String::new();
    encode(&mut out, &r).expect("writing into a String cannot fail");
    out
}
