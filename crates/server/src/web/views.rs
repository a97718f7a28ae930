//! The fleet's pages: the overview and the machines (filtered, sorted and paged on the server,
//! so a page of 100,000 machines sends 50 rows); one machine is `machine`.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use semithin_protocol::api::FleetState;
use semithin_protocol::selector::Selector;
use serde::Deserialize;
use sqlx::Row as _;

use super::{Nav, ago, chart, error, fragment, html, page, short, time};
use crate::App;
use crate::fleet::{self, Machine};

/// Machines on one page of the list.
pub const PER_PAGE: usize = 50;
/// Days the overview's chart covers.
const CHART_DAYS: i64 = 14;

/// One bar of a count.
pub struct Count {
    pub name: String,
    pub n: i64,
    /// 0 to 100: its part of the largest.
    pub width: i64,
    /// Where its machines are listed (empty: nowhere).
    pub href: String,
}

fn counts(map: BTreeMap<String, i64>, href: impl Fn(&str) -> String) -> Vec<Count> {
    let max = map.values().copied().max().unwrap_or(0).max(1);
    let mut v: Vec<Count> = map
        .into_iter()
        .map(|(name, n)| Count {
            href: href(&name),
            width: n * 100 / max,
            name,
            n,
        })
        .collect();
    v.sort_by(|a, b| b.n.cmp(&a.n).then_with(|| a.name.cmp(&b.name)));
    v
}

/// `s` for a URL's path segment or query value.
pub(super) fn q(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The fleet counted in one pass.
struct Census {
    total: usize,
    states: BTreeMap<String, i64>,
    health: BTreeMap<String, i64>,
    channels: BTreeMap<String, i64>,
    releases: BTreeMap<String, i64>,
}

/// The fleet counted by `metrics::census` (one pass, shared with `/metrics`), as the overview
/// shows it: only what some machine is in, `(none)` for no channel or no release yet.
fn census(app: &Arc<App>) -> Census {
    let c = super::index::get(app).census.clone();
    let present = |m: BTreeMap<&'static str, i64>| -> BTreeMap<String, i64> {
        m.into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.to_owned(), n))
            .collect()
    };
    let mut channels = c.channels;
    if c.unassigned > 0 {
        channels.insert("(none)".into(), c.unassigned);
    }
    let mut releases: BTreeMap<String, i64> = BTreeMap::new();
    for (r, n) in c.releases {
        let name = r.map_or_else(|| "(none)".to_owned(), |r| r.short().to_string());
        *releases.entry(name).or_default() += n;
    }
    Census {
        total: c.machines as usize,
        states: present(c.states),
        health: present(c.health),
        channels,
        releases,
    }
}

/// A rollout in a list.
pub struct RolloutLine {
    pub id: i64,
    pub channel: String,
    pub release: String,
    pub state: String,
    pub progress: String,
    pub waiting: String,
}

pub fn rollout_line(r: &semithin_protocol::rollout::RolloutInfo) -> RolloutLine {
    let updated: u32 = r.waves.iter().map(|w| w.updated).sum();
    let failed: u32 = r.waves.iter().map(|w| w.failed).sum();
    let machines: u32 = r.waves.iter().map(|w| w.machines).sum();
    RolloutLine {
        id: r.id,
        channel: r.channel.clone(),
        release: short(Some(&r.release)),
        state: r.state.as_str().to_owned(),
        progress: format!(
            "{updated}/{machines} updated, {failed} failed, wave {}",
            r.wave.map(|w| w.to_string()).unwrap_or_else(|| "-".into())
        ),
        waiting: r.waiting.clone().unwrap_or_default(),
    }
}

#[derive(Template)]
#[template(path = "overview_live.html")]
struct OverviewLive {
    total: usize,
    states: Vec<Count>,
    health: Vec<Count>,
    channels: Vec<Count>,
    releases: Vec<Count>,
    chart: String,
    rollouts: Vec<RolloutLine>,
    at: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    nav: Nav,
    live: String,
}

/// Healthy (an update done) and failed events per day, the last [`CHART_DAYS`] days.
async fn history(app: &App) -> crate::Result<Vec<(String, u64, u64)>> {
    let today = crate::now() / 86_400;
    let from = today - CHART_DAYS + 1;
    let rows = sqlx::query(
        "SELECT at / 86400 AS day, kind, COUNT(*) AS n FROM events WHERE at >= $1 \
         AND kind IN ('healthy', 'failed') GROUP BY day, kind",
    )
    .bind(from * 86_400)
    .fetch_all(&app.db)
    .await
    .map_err(|e| crate::Error::db("counting events", e))?;
    let mut days: Vec<(String, u64, u64)> = (from..=today)
        .map(|d| {
            let label = jiff::Timestamp::from_second(d * 86_400)
                .map(|t| t.strftime("%m-%d").to_string())
                .unwrap_or_default();
            (label, 0, 0)
        })
        .collect();
    for r in rows {
        let day: i64 = r.get("day");
        let kind: String = r.get("kind");
        let n = u64::try_from(r.get::<i64, _>("n")).unwrap_or(0);
        if let Some(slot) = usize::try_from(day - from)
            .ok()
            .and_then(|i| days.get_mut(i))
        {
            if kind == "healthy" {
                slot.1 += n;
            } else {
                slot.2 += n;
            }
        }
    }
    Ok(days)
}

pub async fn overview(State(app): State<Arc<App>>, headers: HeaderMap, uri: Uri) -> Response {
    let nav = match page(&app, &headers, &uri, "overview") {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let app2 = app.clone();
    // Counting 100,000 machines takes a moment: off the async threads.
    let c = match tokio::task::spawn_blocking(move || census(&app2)).await {
        Ok(c) => c,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, nav, e.to_string()),
    };
    let days = match history(&app).await {
        Ok(d) => d,
        Err(e) => return crate::http::ApiErr::from(e).into_response_page(nav),
    };
    let rollouts = match app.rollouts.list(&app, None).await {
        Ok(list) => list
            .iter()
            .filter(|r| {
                matches!(
                    r.state.as_str(),
                    "publishing" | "running" | "paused" | "halted"
                )
            })
            .map(rollout_line)
            .collect(),
        Err(e) => return crate::http::ApiErr::from(e).into_response_page(nav),
    };
    let live = OverviewLive {
        total: c.total,
        states: counts(c.states, |s| format!("/machines?state={}", q(s))),
        health: counts(c.health, |_| String::new()),
        channels: counts(c.channels, |ch| {
            if ch == "(none)" {
                "/machines?state=unassigned".into()
            } else {
                format!("/machines?channel={}", q(ch))
            }
        }),
        releases: counts(c.releases, |r| {
            if r == "(none)" {
                String::new()
            } else {
                format!("/machines?q={}", q(r))
            }
        }),
        chart: chart::bars(&days, "updates", "failures"),
        rollouts,
        at: time(crate::now()),
    };
    if fragment(&headers) {
        return html(StatusCode::OK, &live);
    }
    let live = match live.render() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, nav, e.to_string()),
    };
    html(StatusCode::OK, &Overview { nav, live })
}

impl crate::http::ApiErr {
    /// An error of the API as a page.
    pub fn into_response_page(self, nav: Nav) -> Response {
        error(self.0, nav, self.1)
    }
}

#[derive(Deserialize, Default, Clone)]
pub struct ListQuery {
    pub q: Option<String>,
    pub selector: Option<String>,
    pub state: Option<String>,
    pub channel: Option<String>,
    pub sort: Option<String>,
    pub desc: Option<String>,
    pub page: Option<usize>,
}

fn some(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl ListQuery {
    /// This query as a URL, with another sort or page.
    fn url(&self, sort: Option<&str>, desc: bool, page: usize) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("q", &self.q),
            ("selector", &self.selector),
            ("state", &self.state),
            ("channel", &self.channel),
        ] {
            if let Some(v) = some(v) {
                s.append_pair(k, v);
            }
        }
        if let Some(sort) = sort {
            s.append_pair("sort", sort);
        }
        if desc {
            s.append_pair("desc", "1");
        }
        if page > 1 {
            s.append_pair("page", &page.to_string());
        }
        format!("/machines?{}", s.finish())
    }
}

/// A machine's line, the columns of `fleet list`.
pub struct Line {
    pub name: String,
    pub href: String,
    pub status: String,
    pub state: String,
    pub reason: String,
    pub channel: String,
    pub current: String,
    pub target: String,
    pub seen: String,
    pub labels: String,
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn line(app: &App, m: &Machine) -> Line {
    let i = fleet::info(m, fleet::view(app, &m.snapshot()));
    Line {
        href: format!("/machines/{}", q(&i.name)),
        name: i.name,
        status: i.status.as_str().to_owned(),
        state: i.state.as_str().to_owned(),
        reason: i.state_reason.unwrap_or_default(),
        channel: i.channel.unwrap_or_else(|| "-".into()),
        current: short(i.report.current.map(|c| c.to_string()).as_deref()),
        target: short(i.target.map(|c| c.to_string()).as_deref()),
        seen: ago(i.last_seen),
        labels: labels_text(&i.labels),
    }
}

/// The page of machines the query asks for: its lines, how many match, how many pages. The
/// machines are filtered and sorted on the dashboard's index (`web::index`: states, ranks and
/// text of every machine, in name order), the page's lines read from the machines themselves.
fn select(app: &Arc<App>, lq: &ListQuery) -> Result<(Vec<Line>, usize, usize), String> {
    let sel = match some(&lq.selector) {
        Some(s) => Selector::parse(s).map_err(|e| format!("bad selector: {e}"))?,
        None => Selector::All,
    };
    let text = some(&lq.q).map(str::to_lowercase);
    let hex_text = text
        .as_deref()
        .is_some_and(|t| t.bytes().all(|b| b.is_ascii_hexdigit()));
    let want_state = some(&lq.state);
    let want_channel = some(&lq.channel);
    let sort = some(&lq.sort).unwrap_or("name");
    if !matches!(sort, "name" | "state" | "channel" | "seen" | "current") {
        return Err(format!(
            "cannot sort by {sort:?}: by name, state, channel, seen or current"
        ));
    }
    let ix = super::index::get(app);
    let channel = match want_channel {
        Some(c) => match ix.channel_rank(c) {
            Some(r) => Some(r),
            None => return Ok((Vec::new(), 0, 1)),
        },
        None => None,
    };
    // the text: in a name, a channel, a label (`k`, `v` or `k=v`), or a prefix of the release
    let (hits, releases) = match &text {
        Some(t) => {
            let releases: Vec<bool> = std::iter::once(false)
                .chain(
                    ix.releases
                        .iter()
                        .map(|r| hex_text && r.to_string().starts_with(t.as_str())),
                )
                .collect();
            (Some(ix.text_matches(t)), releases)
        }
        None => (None, Vec::new()),
    };
    // states ranked by name, as they sort
    let mut names: Vec<&str> = crate::metrics::STATES.iter().map(|s| s.as_str()).collect();
    names.sort_unstable();
    let state_rank = |s: FleetState| names.iter().position(|n| *n == s.as_str()).unwrap_or(0);
    let mut keyed: Vec<(i64, u32)> = Vec::new();
    for (i, e) in ix.entries.iter().enumerate() {
        if want_state.is_some_and(|w| e.state.as_str() != w)
            || channel.is_some_and(|c| e.channel != c)
            || hits.as_ref().is_some_and(|h| {
                !h[i] && !releases.get(e.current as usize).copied().unwrap_or(false)
            })
        {
            continue;
        }
        if !matches!(sel, Selector::All) {
            let facts = e.m.facts();
            let r = e.m.row.lock().expect("lock");
            if !sel.matches_facts(&r.name, &r.labels, facts.as_deref()) {
                continue;
            }
        }
        let key = match sort {
            "state" => state_rank(e.state) as i64,
            "channel" => i64::from(e.channel),
            "current" => i64::from(e.current),
            "seen" => e.seen,
            _ => 0,
        };
        keyed.push((key, i as u32));
    }
    let total = keyed.len();
    let desc = some(&lq.desc).is_some();
    let pages = total.div_ceil(PER_PAGE).max(1);
    let page = lq.page.unwrap_or(1).clamp(1, pages);
    // Only the page is sorted: the machines before its end are selected (linear), then those
    // before its start, and the page's own 50 sorted. The index is in name order, so the
    // position breaks ties by name.
    let order = |a: &(i64, u32), b: &(i64, u32)| if desc { b.cmp(a) } else { a.cmp(b) };
    let start = (page - 1) * PER_PAGE;
    let end = (start + PER_PAGE).min(total);
    if end < keyed.len() {
        keyed.select_nth_unstable_by(end, order);
        keyed.truncate(end);
    }
    if start > 0 && start < keyed.len() {
        keyed.select_nth_unstable_by(start, order);
    }
    let shown = keyed.get_mut(start..).unwrap_or_default();
    shown.sort_unstable_by(order);
    let lines = shown
        .iter()
        .map(|(_, i)| line(app, &ix.entries[*i as usize].m))
        .collect();
    Ok((lines, total, pages))
}

/// A column heading that sorts by it (and the other way when it is the sort already).
pub struct Heading {
    pub title: &'static str,
    pub href: String,
    pub mark: &'static str,
}

#[derive(Template)]
#[template(path = "machines_live.html")]
struct MachinesLive {
    self_url: String,
    headings: Vec<Heading>,
    lines: Vec<Line>,
    total: usize,
    page: usize,
    pages: usize,
    prev: String,
    next: String,
}

#[derive(Template)]
#[template(path = "machines.html")]
struct Machines {
    nav: Nav,
    q: String,
    selector: String,
    state: String,
    channel: String,
    states: Vec<&'static str>,
    live: String,
}

pub async fn machines(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
    Query(lq): Query<ListQuery>,
) -> Response {
    let nav = match page(&app, &headers, &uri, "machines") {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let app2 = app.clone();
    let lq2 = lq.clone();
    let found = tokio::task::spawn_blocking(move || select(&app2, &lq2)).await;
    let (lines, total, pages) = match found {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, nav, e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, nav, e.to_string()),
    };
    let sort = some(&lq.sort).unwrap_or("name");
    let desc = some(&lq.desc).is_some();
    let page_no = lq.page.unwrap_or(1).clamp(1, pages);
    let headings = [
        "name", "status", "state", "channel", "current", "target", "seen", "labels",
    ]
    .into_iter()
    .map(|c| {
        let sortable = !matches!(c, "status" | "target" | "labels");
        Heading {
            title: c,
            href: if sortable {
                lq.url(Some(c), c == sort && !desc, 1)
            } else {
                String::new()
            },
            mark: if c == sort {
                if desc { " ▼" } else { " ▲" }
            } else {
                ""
            },
        }
    })
    .collect();
    let live = MachinesLive {
        self_url: lq.url(Some(sort), desc, page_no),
        headings,
        lines,
        total,
        page: page_no,
        pages,
        prev: if page_no > 1 {
            lq.url(Some(sort), desc, page_no - 1)
        } else {
            String::new()
        },
        next: if page_no < pages {
            lq.url(Some(sort), desc, page_no + 1)
        } else {
            String::new()
        },
    };
    if fragment(&headers) {
        return html(StatusCode::OK, &live);
    }
    let live = match live.render() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, nav, e.to_string()),
    };
    let field = |v: &Option<String>| some(v).unwrap_or("").to_owned();
    html(
        StatusCode::OK,
        &Machines {
            nav,
            q: field(&lq.q),
            selector: field(&lq.selector),
            state: field(&lq.state),
            channel: field(&lq.channel),
            states: crate::metrics::STATES.iter().map(|s| s.as_str()).collect(),
            live,
        },
    )
}
