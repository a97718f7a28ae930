//! One machine's page: its state, facts, labels, releases, packages (the installed ones a live
//! part of their own), jobs and events.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use semithin_protocol::api::MachineStatus;
use semithin_protocol::inventory::Inventory;
use sqlx::Row as _;

use super::views::q;
use super::{Nav, ago, error, fragment, html, page, short, time};
use crate::App;
use crate::fleet::{self, Machine};

/// An event, a job run or a package, as text for a table.
pub struct Event {
    pub at: String,
    pub kind: String,
    pub detail: String,
}

pub struct JobRun {
    pub job: String,
    pub href: String,
    pub action: String,
    pub state: String,
    pub exit_code: String,
    pub started: String,
    pub output: String,
}

#[derive(Template)]
#[template(path = "machine_live.html")]
struct MachineLive {
    self_url: String,
    status: String,
    state: String,
    reason: String,
    channel: String,
    current: String,
    target: String,
    channel_release: String,
    health: String,
    phase: String,
    last_error: String,
    seen: String,
    enrolled: String,
    agent: String,
    labels: Vec<(String, String)>,
    facts: Vec<(String, String)>,
    releases: Vec<Event>,
    events: Vec<Event>,
    jobs: Vec<JobRun>,
    upgradable: Vec<semithin_protocol::inventory::Upgrade>,
    security: usize,
    inventory_at: String,
    installed: Installed,
}

/// The installed packages, a live part of its own (`/machines/NAME/packages`, polled inside the
/// folded list the page keeps open or closed).
#[derive(Template)]
#[template(path = "machine_packages.html")]
struct Installed {
    url: String,
    /// Also replace the count in the list's summary (htmx's out-of-band swap): when it is the
    /// answer to its own poll.
    oob: bool,
    packages: Vec<semithin_protocol::inventory::Package>,
    inventory_at: String,
}

impl Installed {
    fn new(name: &str, inventory: Option<&Inventory>) -> Installed {
        Installed {
            url: format!("/machines/{}/packages", q(name)),
            oob: false,
            packages: inventory.map(|i| i.packages.clone()).unwrap_or_default(),
            inventory_at: inventory.map(|i| time(i.collected_at)).unwrap_or_default(),
        }
    }

    fn summary(&self) -> String {
        if self.inventory_at.is_empty() {
            format!("({})", self.packages.len())
        } else {
            format!(
                "({}), inventory of {}",
                self.packages.len(),
                self.inventory_at
            )
        }
    }
}

/// The inventory a machine last sent.
async fn inventory(app: &App, id: &str) -> crate::Result<Option<Inventory>> {
    Ok(sqlx::query("SELECT data FROM inventory WHERE machine = $1")
        .bind(id)
        .fetch_optional(&app.db)
        .await
        .map_err(|e| crate::Error::db("reading an inventory", e))?
        .and_then(|r| serde_json::from_str(&r.get::<String, _>("data")).ok()))
}

#[derive(Template)]
#[template(path = "machine.html")]
struct MachinePage {
    nav: Nav,
    name: String,
    pending: bool,
    labels_path: String,
    selector_json: String,
    live: String,
}

async fn machine_live(app: &App, m: &Machine) -> crate::Result<MachineLive> {
    let i = fleet::info(m, fleet::view(app, &m.snapshot()));
    let events = crate::db::events(&app.db, &m.id, 100).await?;
    let ev = |e: &crate::db::Event| Event {
        at: time(e.at),
        kind: e.kind.clone(),
        detail: e.detail.clone(),
    };
    let releases = events
        .iter()
        .filter(|e| matches!(e.kind.as_str(), "healthy" | "failed" | "rollout"))
        .map(ev)
        .collect();
    let inventory = inventory(app, &m.id).await?;
    let installed = Installed::new(&i.name, inventory.as_ref());
    let runs = sqlx::query(
        "SELECT r.job, r.state, r.exit_code, r.output, r.started_at, r.delivered_at, j.spec \
         FROM job_runs r LEFT JOIN jobs j ON j.id = r.job WHERE r.machine = $1 \
         ORDER BY COALESCE(r.started_at, r.delivered_at, 0) DESC LIMIT 20",
    )
    .bind(&m.id)
    .fetch_all(&app.db)
    .await
    .map_err(|e| crate::Error::db("reading job runs", e))?;
    let jobs = runs
        .iter()
        .map(|r| {
            let job: String = r.get("job");
            let action = r
                .get::<Option<String>, _>("spec")
                .and_then(|s| serde_json::from_str::<semithin_protocol::job::JobSpec>(&s).ok())
                .map(|s| s.action.describe())
                .unwrap_or_default();
            JobRun {
                href: format!("/jobs/{}", q(&job)),
                job: semithin_protocol::ids::short_str(&job).to_owned(),
                action,
                state: r.get("state"),
                exit_code: r
                    .get::<Option<i64>, _>("exit_code")
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                started: r
                    .get::<Option<i64>, _>("started_at")
                    .or(r.get::<Option<i64>, _>("delivered_at"))
                    .map(time)
                    .unwrap_or_default(),
                output: r.get::<Option<String>, _>("output").unwrap_or_default(),
            }
        })
        .collect();
    let facts = i
        .facts
        .as_ref()
        .map(|f| {
            f.flat()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.join(", ")))
                .collect()
        })
        .unwrap_or_default();
    let (mut upgradable, inventory_at) = match inventory {
        Some(inv) => (inv.upgradable, time(inv.collected_at)),
        None => (Vec::new(), String::new()),
    };
    upgradable.sort_by(|a, b| b.security.cmp(&a.security).then(a.name.cmp(&b.name)));
    let rel =
        |r: Option<semithin_protocol::ids::ReleaseId>| short(r.map(|r| r.to_string()).as_deref());
    Ok(MachineLive {
        self_url: format!("/machines/{}", q(&i.name)),
        status: i.status.as_str().to_owned(),
        state: i.state.as_str().to_owned(),
        reason: i.state_reason.clone().unwrap_or_default(),
        channel: i.channel.clone().unwrap_or_else(|| "-".into()),
        current: rel(i.report.current),
        target: rel(i.target),
        channel_release: rel(i.channel_release),
        health: format!("{:?}", i.report.health).to_lowercase(),
        phase: format!("{:?}", i.report.phase).to_lowercase(),
        last_error: i.report.last_error.clone().unwrap_or_default(),
        seen: ago(i.last_seen),
        enrolled: time(i.enrolled_at),
        agent: i.report.agent_version.clone(),
        labels: i.labels.clone().into_iter().collect(),
        facts,
        releases,
        events: events.iter().map(ev).collect(),
        jobs,
        security: upgradable.iter().filter(|u| u.security).count(),
        upgradable,
        inventory_at,
        installed,
    })
}

pub async fn machine(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
    Path(name): Path<String>,
) -> Response {
    let nav = match page(&app, &headers, &uri, "machines") {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let Some(m) = app.fleet.by_name(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            nav,
            format!("no machine named {name:?}"),
        );
    };
    let live = match machine_live(&app, &m).await {
        Ok(l) => l,
        Err(e) => return crate::http::ApiErr::from(e).into_response_page(nav),
    };
    if fragment(&headers) {
        return html(StatusCode::OK, &live);
    }
    let pending = m.row.lock().expect("lock").status == MachineStatus::Pending;
    let rendered = match live.render() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, nav, e.to_string()),
    };
    html(
        StatusCode::OK,
        &MachinePage {
            nav,
            labels_path: format!(
                "/api/v1/admin/machines/{}/labels",
                url::form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
            ),
            selector_json: serde_json::json!({ "selector": name }).to_string(),
            name,
            pending,
            live: rendered,
        },
    )
}

/// `GET /machines/NAME/packages`: the installed packages alone, as the machine's page polls them.
pub async fn machine_packages(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
    Path(name): Path<String>,
) -> Response {
    let nav = match page(&app, &headers, &uri, "machines") {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let Some(m) = app.fleet.by_name(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            nav,
            format!("no machine named {name:?}"),
        );
    };
    match inventory(&app, &m.id).await {
        Ok(inv) => {
            let mut part = Installed::new(&name, inv.as_ref());
            part.oob = true;
            html(StatusCode::OK, &part)
        }
        Err(e) => crate::http::ApiErr::from(e).into_response_page(nav),
    }
}
