//! The two partner endpoints of PROTOCOL.md:
//! `POST /partners/{partner}/cohorts` and
//! `POST /partners/{partner}/cohorts/users`; and segq's own
//! `POST /partners/{partner}/cohorts/delete` (`{"partner_api_key",
//! "client_secret", "cohort_id"}`: 200, 404 for an unknown cohort, 409
//! while a saved segment names it), authenticated the same way.
//!
//! The steps, each answering its own error:
//! 1. the partner in the path (404 for an unknown one);
//! 2. the content type: `application/json` or none (415 otherwise);
//! 3. the body, read whole up to `max_body_bytes` (413 over it), its bytes
//!    taken from the server's body budget until the request is done
//!    (credentials are in the body: nothing is authenticated yet);
//! 4. then, on one blocking thread (the apply waits for an fsync): parse and
//!    validate (400; 401 for missing credentials), `Engine::authorize`
//!    (401), the per-key rate limit (429 with `Retry-After`), and the
//!    durable apply (201 when the cohort was created, 200 otherwise).
//!
//! A library error after authorization becomes a JSON 4xx/5xx
//! ([`ApiError::from_partner`]); nothing in a response echoes a secret.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::cohorts::ChangeReport;
use crate::engine::WorkspaceHandle;
use crate::ids::Partner;
use crate::import::{
    cohort_success_body, parse_cohort_request, parse_delete_request, parse_users_request,
    users_success_body, Credentials, Endpoint, ProtocolError,
};

use super::auth::require_json;
use super::conn::BodyPermit;
use super::error::{json_response, path_rejection, read_unauthenticated_body, ApiError};
use super::extract::on_import_thread;
use super::openapi::ErrorBody;
use super::openapi::Identifier;
use super::AppState;

// ----- the bodies' schemas -----
//
// The bodies are read field by field (`crate::import::parse_*`), so that
// each problem gets the platform's own text; these types only describe
// them for the OpenAPI document (`Deserialize` lets the serde attributes
// shape the schemas). A top-level key the protocol does not name is
// ignored; a `cohort_changes` object's unknown key is refused.

/// The body of `POST /partners/{partner}/cohorts`.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"partner_api_key": "123456-1234-1234-12345678",
    "client_secret": "234567-2345-2345-23456789", "cohort_id": "c-9f1e",
    "name": "Power users (30d)", "created_at": "2021-01-21T19:20:30+05:00"}))]
pub struct CohortBody {
    /// The partner's API key (`partner_api_key` of the server's
    /// configuration).
    #[schema(min_length = 1)]
    partner_api_key: String,
    /// A data import key of the workspace (it names the workspace).
    #[schema(min_length = 1)]
    client_secret: String,
    /// The partner's id of the cohort: not only white space, at most 1,024
    /// bytes.
    #[schema(min_length = 1, pattern = r"\S")]
    cohort_id: String,
    /// The name the segment builder shows: not only white space, at most
    /// 1,024 bytes.
    #[schema(min_length = 1, pattern = r"\S")]
    name: String,
    /// When the partner created the cohort: ISO-8601 with an offset
    /// (`Z`, fractional seconds, or no seconds accepted).
    #[schema(format = DateTime)]
    created_at: String,
}

/// The body of `POST /partners/{partner}/cohorts/users`.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"partner_api_key": "123456-1234-1234-12345678",
    "client_secret": "234567-2345-2345-23456789", "cohort_id": "c-9f1e",
    "cohort_changes": [
        {"user_ids": ["u-1", "u-2"], "device_ids": [],
         "aliases": [{"alias_name": "ann@example.com", "alias_label": "email"}]},
        {"user_ids": ["u-3"], "should_remove": true}]}))]
pub struct UsersBody {
    /// The partner's API key.
    #[schema(min_length = 1)]
    partner_api_key: String,
    /// A data import key of the workspace.
    #[schema(min_length = 1)]
    client_secret: String,
    /// The partner's id of the cohort; a cohort_id never named by the
    /// cohorts endpoint is created, named by its id.
    #[schema(min_length = 1, pattern = r"\S")]
    cohort_id: String,
    /// The changes, applied in order. At most 1,000 identifiers in all
    /// objects together; an empty array tests the credentials and changes
    /// nothing.
    cohort_changes: Vec<CohortChange>,
}

/// One object of `cohort_changes`: any of the identifier arrays (`null`
/// or absent: none), added, or removed with `should_remove`.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CohortChange {
    /// External ids.
    #[schema(value_type = Option<Vec<Identifier>>)]
    user_ids: Option<Vec<String>>,
    /// Device ids: they match anonymous users only (one of an identified
    /// user is refused and counted in `refused_device_ids`).
    #[schema(value_type = Option<Vec<Identifier>>)]
    device_ids: Option<Vec<String>>,
    /// Aliases.
    aliases: Option<Vec<PartnerAlias>>,
    /// Remove instead of add (`null` or absent: add).
    should_remove: Option<bool>,
}

/// An alias in a partner request.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartnerAlias {
    /// The alias's name (the value).
    #[schema(min_length = 1)]
    alias_name: String,
    /// The alias's label (the namespace: `email`, `amplitude_id`, …).
    #[schema(min_length = 1)]
    alias_label: String,
}

/// The body of `POST /partners/{partner}/cohorts/delete`.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"partner_api_key": "123456-1234-1234-12345678",
    "client_secret": "234567-2345-2345-23456789", "cohort_id": "c-9f1e"}))]
pub struct DeleteBody {
    /// The partner's API key.
    #[schema(min_length = 1)]
    partner_api_key: String,
    /// A data import key of the workspace.
    #[schema(min_length = 1)]
    client_secret: String,
    /// The cohort to delete.
    #[schema(min_length = 1, pattern = r"\S")]
    cohort_id: String,
}

/// The platform's success answer.
#[allow(dead_code)]
#[derive(ToSchema)]
#[schema(example = json!({"message": "success"}))]
pub struct Success {
    /// Always `success`.
    #[schema(pattern = "^success$")]
    message: String,
}

/// The users endpoint's success answer, with what segq adds.
#[allow(dead_code)]
#[derive(ToSchema)]
#[schema(example = json!({"message": "success", "matched": 998, "unmatched": 2, "refused_device_ids": 0}))]
pub struct UsersSuccess {
    /// Always `success`.
    #[schema(pattern = "^success$")]
    message: String,
    /// Identifiers that matched a user (each one billable data point).
    matched: u64,
    /// Identifiers that matched nobody (nothing changed for them).
    unmatched: u64,
    /// Device ids of identified users: refused, as the platform does.
    refused_device_ids: u64,
}

/// `POST /partners/{partner}/cohorts`.
#[utoipa::path(
    post,
    path = "/partners/{partner}/cohorts",
    operation_id = "partner_upsert_cohort",
    tag = "partner",
    summary = "Create or rename a cohort",
    description = "An upsert keyed by (workspace, partner, cohort_id): the workspace is the \
        one the `client_secret` names. Durable (fsynced) before the answer.",
    request_body(content = CohortBody, description = "All fields required."),
    responses(
        (status = 201, description = "The cohort was created.", body = Success),
        (status = 200, description = "The cohort existed: renamed (or unchanged).", body = Success),
        (status = 409, description = "The partner already has `max_cohorts_per_partner` \
            cohorts in the workspace (renames of existing ones go on).", body = ErrorBody,
         example = json!({"message": "amplitude already has 1000 cohorts in workspace \"acme\", the most allowed"})),
    )
)]
pub async fn cohorts(
    State(state): State<Arc<AppState>>,
    partner: Result<Path<String>, PathRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    serve(state, partner, req, Endpoint::Cohorts).await
}

/// `POST /partners/{partner}/cohorts/users`.
#[utoipa::path(
    post,
    path = "/partners/{partner}/cohorts/users",
    operation_id = "partner_cohort_users",
    tag = "partner",
    summary = "Add or remove users of a cohort",
    description = "Applies `cohort_changes` in order: `user_ids` match by external_id, \
        `aliases` by (label, name), `device_ids` only anonymous users. Unknown identifiers \
        never create a user: they are counted as unmatched. Replaying a request gives the \
        same state. Durable (fsynced) before the answer.",
    request_body(content = UsersBody),
    responses(
        (status = 200, description = "Applied.", body = UsersSuccess),
        (status = 201, description = "Applied; the cohort_id was new, so the cohort was \
            created (named by its id).", body = UsersSuccess),
        (status = 409, description = "The cohort would be new, and the partner already has \
            `max_cohorts_per_partner` cohorts in the workspace.", body = ErrorBody),
    )
)]
pub async fn users(
    State(state): State<Arc<AppState>>,
    partner: Result<Path<String>, PathRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    serve(state, partner, req, Endpoint::CohortUsers).await
}

/// Steps 1 to 3, then step 4 ([`answer`]) on a blocking thread, with the
/// engine's keys and the per-key rate limit.
async fn serve(
    state: Arc<AppState>,
    partner: Result<Path<String>, PathRejection>,
    req: Request,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let (partner, body, permit) = read(&state, partner, req).await?;
    let imports = state.clone();
    on_import_thread(&imports, move || {
        let _permit = permit;
        let answered = answer(partner, endpoint, &body, Utc::now(), |credentials| {
            let (handle, key_id) = state.engine.authorize(partner, credentials)?;
            state.rate_limit(&key_id)?;
            Ok(handle)
        })?;
        if let Some(report) = &answered.report {
            state.metrics.record_import(partner, report);
        }
        Ok(json_response(answered.status, answered.body))
    })
    .await
}

/// A partner request's answer.
#[derive(Clone, Debug)]
pub struct Answered {
    /// 201 when the cohort was created, 200 otherwise.
    pub status: StatusCode,
    /// The response's JSON body.
    pub body: Value,
    /// What a users request changed (`None` for a cohort request).
    pub report: Option<ChangeReport>,
}

/// Step 4, once the body is read: parse and validate it, `authorize` its
/// credentials (the workspace they open, or the error to answer), and
/// apply it durably to that workspace. The server runs every partner
/// request through this, and `segq demo` the wire examples, so both
/// answer the same.
pub fn answer(
    partner: Partner,
    endpoint: Endpoint,
    body: &[u8],
    now: DateTime<Utc>,
    authorize: impl FnOnce(&Credentials) -> Result<Arc<WorkspaceHandle>, ApiError>,
) -> Result<Answered, ApiError> {
    let status = |created: bool| {
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        }
    };
    match endpoint {
        Endpoint::Cohorts => {
            let req = parse_cohort_request(body)?;
            let handle = authorize(&req.credentials)?;
            let created = handle
                .upsert_cohort(partner, &req)
                .map_err(ApiError::from_partner)?;
            Ok(Answered {
                status: status(created),
                body: cohort_success_body(),
                report: None,
            })
        }
        Endpoint::CohortUsers => {
            let req = parse_users_request(body)?;
            let handle = authorize(&req.credentials)?;
            let report = handle
                .import_users(partner, &req, now)
                .map_err(ApiError::from_partner)?;
            Ok(Answered {
                status: status(report.cohort_created),
                body: users_success_body(&report),
                report: Some(report),
            })
        }
        Endpoint::CohortDelete => {
            let req = parse_delete_request(body)?;
            let handle = authorize(&req.credentials)?;
            handle
                .delete_cohort(partner, &req.cohort_id)
                .map_err(ApiError::from_partner)?;
            Ok(Answered {
                status: StatusCode::OK,
                body: cohort_success_body(),
                report: None,
            })
        }
    }
}

/// `POST /partners/{partner}/cohorts/delete`.
#[utoipa::path(
    post,
    path = "/partners/{partner}/cohorts/delete",
    operation_id = "partner_delete_cohort",
    tag = "partner",
    summary = "Delete a cohort (segq's own)",
    description = "segq's own endpoint (the platform has none), authenticated as the others. \
        Durable before the answer; a later users request for the same cohort_id creates it \
        again, empty.",
    request_body(content = DeleteBody),
    responses(
        (status = 200, description = "Deleted.", body = Success),
        (status = 404, description = "No such cohort (or an unknown partner in the path).",
         body = ErrorBody),
        (status = 409, description = "Saved segments still use the cohort; the message names \
            them.", body = ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    partner: Result<Path<String>, PathRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    serve(state, partner, req, Endpoint::CohortDelete).await
}

/// Steps 1 to 3: the partner, the content type and the body.
async fn read(
    state: &AppState,
    partner: Result<Path<String>, PathRejection>,
    req: Request,
) -> Result<(Partner, Bytes, BodyPermit), ApiError> {
    let Path(partner) = partner.map_err(path_rejection)?;
    let partner: Partner = partner
        .parse()
        .map_err(|_| ProtocolError::UnknownPartner(partner))?;
    require_json(req.headers())?;
    let limit = state.options.max_body_bytes;
    let (body, permit) = read_unauthenticated_body(&state.conns.budget, req, limit).await?;
    Ok((partner, body, permit))
}
