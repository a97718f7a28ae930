//! The admin API of per-machine configuration (docs/CONFIG.md): variable sets signed by the
//! admin (`semithin var`), the order of label scopes, and the dry run of a machine's templates
//! (`semithin fleet render`). Every route needs the admin token.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use semithin_protocol::api::{Affected, ApiError};
use semithin_protocol::vars::{
    self, LabelOrder, RenderAnswer, RenderRequest, RenderedFile, SignedSet, VarsInfo,
};
use semithin_store::object::EntryKind;
use semithin_store::objects::ObjectStore;
use semithin_template as template;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiErr, ApiResult, admin, parse};
use crate::vars::Refused;
use crate::{App, now};

pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(list, set))
        .routes(routes!(order))
        .routes(routes!(render))
}

#[utoipa::path(get, path = "/api/v1/admin/vars", tag = "vars", summary = "Every variable set and the label order", responses((status = 200, description = "The sets", body = VarsInfo), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn list(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Json<VarsInfo>> {
    admin(&app, &headers)?;
    Ok(Json(app.vars.info()))
}

/// `PUT /api/v1/admin/vars`: a signed set replaces its scope's set (a newer version only).
#[utoipa::path(put, path = "/api/v1/admin/vars", tag = "vars", summary = "Replace a scope's signed variable set", request_body = SignedSet, responses((status = 200, description = "The machines it applies to", body = Affected), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn set(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Affected>> {
    admin(&app, &headers)?;
    let signed: SignedSet = parse(&body)?;
    match app.vars.put(&app.db, &app.fleet, signed, now()).await? {
        Ok(n) => Ok(Json(Affected { machines: n })),
        Err(Refused::Bad(e)) => Err(ApiErr::bad(format!("variable set refused: {e}"))),
        Err(Refused::Stale(e)) => Err(ApiErr(StatusCode::CONFLICT, e)),
    }
}

#[utoipa::path(put, path = "/api/v1/admin/vars/order", tag = "vars", summary = "The order of label scopes", request_body = LabelOrder, responses((status = 200, description = "The machines it applies to", body = Affected), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn order(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Affected>> {
    admin(&app, &headers)?;
    let o: LabelOrder = parse(&body)?;
    vars::check_label_order(&o.keys).map_err(ApiErr::bad)?;
    let n = app.vars.set_order(&app.db, &app.fleet, o).await?;
    Ok(Json(Affected { machines: n }))
}

/// A file of a release by its path (`usr/share/...`), at most `max` bytes; `None` when absent.
fn read_release_file(
    store: &ObjectStore,
    release: semithin_store::CommitId,
    path: &str,
    max: usize,
) -> Result<Option<Vec<u8>>, String> {
    let commit = store.get_commit(&release).map_err(|e| e.to_string())?;
    let mut tree = store.get_tree(&commit.tree).map_err(|e| e.to_string())?;
    let parts: Vec<&str> = path.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let Some(e) = tree.get(part.as_bytes()) else {
            return Ok(None);
        };
        match (&e.kind, i + 1 == parts.len()) {
            (EntryKind::Dir(t), false) => {
                tree = store.get_tree(t).map_err(|e| e.to_string())?;
            }
            (EntryKind::File(c), true) => {
                if c.size > max as u64 {
                    return Err(format!("/{path}: {} bytes; at most {max}", c.size));
                }
                let mut out = Vec::with_capacity(c.size as usize);
                for ch in &c.chunks {
                    out.extend(store.get_chunk(&ch.id).map_err(|e| e.to_string())?);
                }
                return Ok(Some(out));
            }
            _ => return Err(format!("/{path}: not a regular file in the release")),
        }
    }
    Ok(None)
}

/// `POST /api/v1/admin/render`: what a machine renders, with its variables and facts, from the
/// templates of the release it runs (else the one it is told to run).
#[utoipa::path(post, path = "/api/v1/admin/render", tag = "vars", summary = "What a machine's templates render to (a dry run)", request_body = RenderRequest, responses((status = 200, description = "The files and the variables", body = RenderAnswer), (status = "4XX", description = "Refused: `error` says why", body = ApiError)), security(("admin_token" = [])))]
async fn render(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<RenderAnswer>> {
    admin(&app, &headers)?;
    let req: RenderRequest = parse(&body)?;
    let m = app
        .fleet
        .by_name(&req.machine)
        .ok_or_else(|| ApiErr::not_found(format!("no machine named {:?}", req.machine)))?;
    let r = m.snapshot();
    let release = match r.report.current {
        Some(c) => c.into(),
        None => app.target(&r).ok_or_else(|| {
            ApiErr::bad(format!(
                "{} runs no release and is told none: nothing to render",
                r.name
            ))
        })?,
    };
    let store = app.published().store.clone();
    if !store.contains(semithin_store::pack::ObjKind::Commit, release.as_bytes()) {
        return Err(ApiErr::bad(format!(
            "{} runs release {}, which this server's repository does not hold",
            r.name,
            release.to_hex()
        )));
    }
    let (_, sets) = app.vars.applying(&r.name, r.channel.as_deref(), &r.labels);
    let merged = vars::merge(sets.iter().map(|s| s.signed.set.set()));
    let facts = m.facts();
    let ctx = template::context(
        &merged,
        facts.as_deref(),
        &template::Machine {
            name: &r.name,
            channel: r.channel.as_deref(),
        },
    );
    let path = req.path.clone();
    let files = tokio::task::spawn_blocking(move || -> Result<Vec<RenderedFile>, String> {
        let manifest_path = format!("{}/{}", template::DIR, template::MANIFEST);
        let Some(text) = read_release_file(&store, release, &manifest_path, template::MAX_BYTES)?
        else {
            return Err(format!(
                "release {} ships no templates (/{manifest_path})",
                release.to_hex()
            ));
        };
        let text = String::from_utf8(text).map_err(|_| format!("/{manifest_path}: not UTF-8"))?;
        let mut templates = template::parse_manifest(&text).map_err(|e| e.to_string())?;
        if let Some(p) = &path {
            templates.retain(|t| t.target == *p);
            if templates.is_empty() {
                return Err(format!("no template of the release renders {p}"));
            }
        }
        let read = |src: &str| {
            read_release_file(
                &store,
                release,
                &format!("{}/{src}", template::DIR),
                template::MAX_BYTES,
            )?
            .ok_or_else(|| "missing from the release".to_owned())
        };
        let out = template::render_all(&templates, read, &ctx).map_err(|e| e.to_string())?;
        Ok(out
            .into_iter()
            .map(|r| RenderedFile {
                target: r.template.target.clone(),
                template: r.template.source.clone(),
                mode: r.template.mode,
                uid: r.template.uid,
                gid: r.template.gid,
                restart: r.template.restart.clone(),
                content: String::from_utf8_lossy(&r.content).into_owned(),
            })
            .collect())
    })
    .await
    .map_err(ApiErr::internal)?
    .map_err(|e| ApiErr(StatusCode::UNPROCESSABLE_ENTITY, format!("{}: {e}", r.name)))?;
    Ok(Json(RenderAnswer {
        machine: r.name,
        release: release.into(),
        vars: merged,
        files,
    }))
}
