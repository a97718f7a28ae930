//! `POST /api/v1/admin/offline-reports` (`semithin bundle sync`): the check-ins machines of an
//! offline site signed when they imported a bundle (docs/OFFLINE.md), stored as check-ins.
//!
//! Each is verified with the machine's enrolled key, its date judged at the counter's own time
//! (the report is old by design; the signature covers the date and the counter, so neither can
//! be moved), and refused when the server already holds this or a newer counter of the machine:
//! a replay, or a report overtaken by what the machine said since.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use semithin_protocol::api::{
    ApiError, CheckInRequest, MachineStatus, OfflineRefused, OfflineReport, OfflineReports,
    OfflineReportsAnswer, OfflineStored,
};
use semithin_protocol::path::ApiPath;
use semithin_protocol::sign;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiResult, admin, parse};
use crate::App;

/// At most this many reports in one request.
const MAX_REPORTS: usize = 10_000;

pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(offline_reports))
}

#[utoipa::path(post, path = "/api/v1/admin/offline-reports", tag = "admin", summary = "Store the signed reports of machines that imported a bundle offline", request_body = OfflineReports, responses((status = 200, description = "Which reports were stored, which refused and why", body = OfflineReportsAnswer), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn offline_reports(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<OfflineReportsAnswer>> {
    admin(&app, &headers)?;
    let req: OfflineReports = parse(&body)?;
    if req.reports.len() > MAX_REPORTS {
        return Err(super::ApiErr::bad(format!(
            "{} reports in one request: at most {MAX_REPORTS}",
            req.reports.len()
        )));
    }
    let mut out = OfflineReportsAnswer::default();
    for r in &req.reports {
        match store(&app, r).await {
            Ok(s) => {
                tracing::info!(machine = %r.machine, at = s.at, "offline report stored");
                out.stored.push(s);
            }
            Err(reason) => {
                tracing::warn!(machine = %r.machine, %reason, "offline report refused");
                out.refused.push(OfflineRefused {
                    machine: r.machine.clone(),
                    reason,
                });
            }
        }
    }
    Ok(Json(out))
}

/// Verifies and stores one report; the reason it is refused.
async fn store(app: &App, r: &OfflineReport) -> Result<OfflineStored, String> {
    let h = |name: &str| {
        r.headers
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("the {name} header is missing"))
    };
    if h(sign::HEADER_MACHINE)? != r.machine {
        return Err(format!(
            "it is signed as machine {}, not {}",
            h(sign::HEADER_MACHINE)?,
            r.machine
        ));
    }
    let m = app
        .fleet
        .get(&r.machine)
        .ok_or_else(|| format!("no machine {} is enrolled here", r.machine))?;
    let key = m
        .key
        .as_ref()
        .ok_or("the enrolled public key is not a valid ed25519 point")?;
    let signed = sign::Headers {
        date: h(sign::HEADER_DATE)?,
        counter: h(sign::HEADER_COUNTER)?,
        signature: h(sign::HEADER_SIGNATURE)?,
    };
    let date: i64 = signed
        .date
        .parse()
        .map_err(|_| "the date is not a number of seconds".to_owned())?;
    // Judged at its own time: the signature covers the date, and the date must be the
    // counter's, so an old report cannot be made to look new.
    let counter = sign::verify_key_hashed(
        key,
        "POST",
        ApiPath::checkin().as_str(),
        signed,
        blake3::hash(r.body.as_bytes()).as_bytes(),
        date,
    )
    .map_err(|e| format!("its signature does not verify: {e}"))?;
    let name = m.row.lock().expect("lock").name.clone();
    match m.row.lock().expect("lock").status {
        MachineStatus::Accepted => {}
        s => return Err(format!("this machine is {}", s.as_str())),
    }
    let req: CheckInRequest = semithin_protocol::json::from_slice(r.body.as_bytes())
        .map_err(|e| format!("its body is not a check-in: {e}"))?;
    req.check()
        .map_err(|e| format!("its report is refused: {e}"))?;
    {
        let mut w = m.replay.lock().expect("lock");
        let high = w.highest();
        if counter <= high {
            return Err(format!(
                "its counter {counter} is older than what the server has from this machine \
                 ({high}): a replayed report, or one overtaken by a later check-in"
            ));
        }
        w.accept(counter).map_err(|e| e.to_string())?;
    }
    m.store_counter(&app.db)
        .await
        .map_err(|e| format!("storing its counter: {e}"))?;
    m.last_seen.fetch_max(date, Ordering::Relaxed);
    super::agent::store_checkin(app, &m, &req, date)
        .await
        .map_err(|e| format!("storing it: {e}"))?;
    Ok(OfflineStored {
        machine: r.machine.clone(),
        name,
        at: date,
    })
}
