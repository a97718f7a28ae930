//! The OpenAPI 3.1 description of the API, made from the code: every route of the router is
//! registered with `utoipa_axum::routes!`, which takes its path, parameters, bodies and answers
//! from the handler's `#[utoipa::path]` and the wire types' `ToSchema` (crates/protocol), so a
//! route cannot be served without being described. Served at `GET /api/v1/openapi.json`.
//! The two routes whose last parameter takes the rest of the path (axum's `{*path}`, which
//! OpenAPI cannot write) are registered by hand and described through [`Wildcards`].

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// What the description says besides its paths: title, tags, the two ways to authenticate.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "semithin",
        description = "The server of semithin: machines enroll, check in and fetch signed releases; \
            the admin manages the fleet. docs/PROTOCOL.md explains every route in prose; request \
            signing is in docs/PROTOCOL.md, \"Signed requests\".",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    tags(
        (name = "machines", description = "What a machine's agent calls (signed requests)"),
        (name = "admin", description = "The fleet, tokens, stats, trust and the audit log (admin token)"),
        (name = "jobs", description = "Jobs for machines"),
        (name = "rollouts", description = "Releases moved to machines in waves"),
        (name = "vars", description = "Variables of configuration templates"),
        (name = "captures", description = "Machines' captures of their local changes"),
        (name = "apt", description = "The apt caching proxy"),
        (name = "boot", description = "Boot artifacts and network boot"),
        (name = "monitoring", description = "Health, readiness and metrics"),
    ),
    modifiers(&Security)
)]
pub struct ApiDoc;

/// The routes registered by hand (their paths end in a wildcard).
#[derive(OpenApi)]
#[openapi(paths(super::agent::target, super::apt::get))]
pub struct Wildcards;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi
            .components
            .get_or_insert_with(utoipa::openapi::Components::new);
        c.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token (DATA/admin-token), or a dashboard session",
                    ))
                    .build(),
            ),
        );
        c.add_security_scheme(
            "machine_signature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                semithin_protocol::sign::HEADER_SIGNATURE,
                "An ed25519 signature of the request by the machine's enrolled key, with \
                 semithin-machine, semithin-date and semithin-counter (docs/PROTOCOL.md, \
                 \"Signed requests\")",
            ))),
        );
    }
}

/// The whole description: the routes' and the hand-registered ones'.
pub fn document(mut routed: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    routed.merge(Wildcards::openapi());
    routed
}
