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
use serde_json::Value;

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
use super::extract::run_blocking;
use super::AppState;

/// `POST /partners/{partner}/cohorts`.
pub async fn cohorts(
    State(state): State<Arc<AppState>>,
    partner: Result<Path<String>, PathRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    serve(state, partner, req, Endpoint::Cohorts).await
}

/// `POST /partners/{partner}/cohorts/users`.
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
    run_blocking(move || {
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
