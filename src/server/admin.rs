//! The admin API: workspaces, workspace API keys, data import keys, users,
//! and what operators look at (cohort sync statistics, billable data
//! points). Every route sits behind [`super::auth::require_access`] (its
//! `ACCESS` table says who may call it); bodies and responses are JSON.
//!
//! | Route | Does |
//! |---|---|
//! | `POST /admin/workspaces` `{"name"}` | create (201) or find (200) a workspace |
//! | `GET /admin/workspaces` | `[{"name","users","cohorts"}]` |
//! | `POST /admin/workspaces/{ws}/api_keys` `{"name","scopes"}` | 201 with the new API key, shown once |
//! | `GET /admin/workspaces/{ws}/api_keys` | the API keys, never the key itself |
//! | `DELETE /admin/workspaces/{ws}/api_keys/{id}` | revoke (200; 404 unknown) |
//! | `POST /admin/workspaces/{ws}/partners/{partner}/keys` | 201 with the new key, shown once |
//! | `GET /admin/workspaces/{ws}/keys[?partner=P]` | the keys, never the key itself |
//! | `DELETE /admin/workspaces/{ws}/keys/{id}` | invalidate (200; 404 unknown) |
//! | `POST /admin/workspaces/{ws}/partners/{partner}/enable` | enable a partner |
//! | `POST /admin/workspaces/{ws}/users` | upsert a user (201 created / 200 updated) |
//! | `POST /admin/workspaces/{ws}/users/aliases` | `{"user", "alias_label", "alias_name"}` |
//! | `POST /admin/workspaces/{ws}/users/devices` | `{"user", "device_id"}` |
//! | `POST /admin/workspaces/{ws}/users/identify` | `{"user", "external_id"}` |
//! | `POST /admin/workspaces/{ws}/users/import` | bulk load, see [`super::import`] |
//! | `POST /admin/workspaces/{ws}/users/delete` | `{"users": [user, ...]}`: delete, durably |
//! | `POST /admin/workspaces/{ws}/users/merge` | `{"source": user, "target": user}` |
//! | `POST /admin/workspaces/{ws}/users/rename` | `{"external_id", "new_external_id"}` |
//! | `GET /admin/workspaces/{ws}/cohorts` | per cohort: size and sync statistics |
//! | `DELETE /admin/workspaces/{ws}/cohorts/{partner}/{cohort_id}` | delete a cohort (200; 404 unknown; 409 while a saved segment names it) |
//! | `GET /admin/workspaces/{ws}/data_points` | `[{"partner","day","data_points"}]` |
//! | `GET /admin/workspaces/{ws}/audit[?limit&before&after&order]` | the audit log, a page at a time |
//!
//! Every change a request makes is recorded in the workspace's audit log
//! with it ([`crate::engine::audit`], [`Auditor`]).
//!
//! A user is named (`"user"`) by exactly one identifier:
//! `{"external_id": "u1"}`, `{"device_id": "d1"}` or
//! `{"alias_label": "email", "alias_name": "a@x"}`.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use crate::access::{check_name, parse_scopes};
use crate::attributes::{AttrInput, AttrType};
use crate::bulk::UserJson;
use crate::ids::{Partner, UserId, UserRef};

use super::error::{json_response, query_rejection, ApiError};
use super::extract::{parse_user_ref, run_blocking, workspace, Auditor, JsonBody, PathParams};
use super::openapi::{ErrorBody, UserRef as UserRefSchema};
use super::AppState;
use crate::attributes::AttributeValues;
use crate::engine::{ApiKeyInfo, KeyInfo, NewApiKey, NewKey};

// ----- the answers' schemas (the handlers build them with `json!`) -----

/// A workspace as listed.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct WorkspaceSummary {
    /// Its name.
    name: String,
    /// Its users.
    users: u64,
    /// Its cohorts.
    cohorts: u64,
}

/// A workspace created or found.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct WorkspaceCreated {
    /// Its name.
    name: String,
    /// Whether this request created it.
    created: bool,
}

/// A key revoked or invalidated, or a saved segment deleted.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct Removed {
    /// What was done.
    message: String,
    /// The id of what it was done to.
    id: String,
}

/// A partner enabled.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct PartnerEnabled {
    /// `partner enabled`.
    message: String,
    /// The partner.
    partner: String,
}

/// A user created or updated.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct UserUpserted {
    /// The user's id in the workspace.
    user_id: u64,
    /// Whether this request created the user.
    created: bool,
}

/// The user a change applied to.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct UserIdAnswer {
    /// The user's id in the workspace.
    user_id: u64,
}

/// A user's custom attributes after a change.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct UserAttributes {
    /// The user's id in the workspace.
    user_id: u64,
    /// All the user's values now.
    #[schema(value_type = AttributeValues)]
    attributes: Value,
}

/// An attribute's declared type.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct AttributeDeclared {
    /// The attribute.
    name: String,
    /// Its type.
    #[schema(rename = "type")]
    ty: String,
}

/// A cohort's size and sync statistics.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct CohortStats {
    /// The partner.
    partner: String,
    /// The partner's id of the cohort.
    cohort_id: String,
    /// Its name.
    name: String,
    /// Its members.
    size: u64,
    /// When the partner created it (its `created_at`), if it said.
    #[schema(format = DateTime)]
    created_at: Option<String>,
    /// The last users request.
    #[schema(format = DateTime)]
    last_sync: Option<String>,
    /// Members added by the last users request.
    last_added: u64,
    /// Members removed by the last users request.
    last_removed: u64,
    /// Identifiers matched, all requests together.
    matched_total: u64,
    /// Identifiers that matched nobody, all requests together.
    unmatched_total: u64,
    /// Device ids refused (their user is identified), all requests together.
    refused_total: u64,
    /// The last unmatched identifiers (at most 100, 4 KiB of text).
    recent_unmatched: Vec<String>,
    /// Its size after each of its partner's users requests, oldest
    /// first: the last 256.
    size_history: Vec<SizeAt>,
}

/// A cohort's size after a sync.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct SizeAt {
    /// When the users request was applied.
    #[schema(format = DateTime)]
    at: String,
    /// Its members then.
    size: u64,
}

/// A cohort deleted.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct CohortDeleted {
    /// `cohort deleted`.
    message: String,
    /// The partner.
    partner: String,
    /// The cohort's id.
    cohort_id: String,
}

/// Billable data points of a partner on a UTC day.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct DataPoints {
    /// The partner.
    partner: String,
    /// The UTC day.
    #[schema(format = Date)]
    day: String,
    /// Matched identifiers that day.
    data_points: u64,
}

/// A partner as the workspace's partner page shows it.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct PartnerInfo {
    /// The partner.
    partner: String,
    /// Whether the workspace has enabled it (enabling it, or generating
    /// one of its data import keys).
    enabled: bool,
    /// The partner API key of this deployment, which the partner sends as
    /// `partner_api_key`.
    partner_api_key: String,
    /// The partner's data import keys not invalidated.
    valid_keys: u64,
    /// The partner's cohorts in the workspace.
    cohorts: u64,
}

fn partner(name: &str) -> Result<Partner, ApiError> {
    name.parse::<Partner>()
        .map_err(|e| ApiError::from(crate::error::Error::from(e)))
}

fn user_ref(v: &Value) -> Result<UserRef, ApiError> {
    parse_user_ref(v).map_err(ApiError::bad_request)
}

fn user_id_response(id: UserId) -> Response {
    json_response(StatusCode::OK, json!({"user_id": id.0}))
}

// ----- workspaces -----

/// The body of `POST /admin/workspaces`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceBody {
    /// 1 to 64 ASCII letters, digits, `_` or `-`; not a device name
    /// Windows reserves, not another workspace's name in another case.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    name: String,
}

/// `POST /admin/workspaces`.
#[utoipa::path(
    post,
    path = "/admin/workspaces",
    operation_id = "create_workspace",
    tag = "workspaces",
    summary = "Create (or find) a workspace",
    request_body(content = WorkspaceBody, example = json!({"name": "acme"})),
    responses(
        (status = 201, description = "Created.", body = WorkspaceCreated,
         example = json!({"name": "acme", "created": true})),
        (status = 200, description = "It existed.", body = WorkspaceCreated,
         example = json!({"name": "acme", "created": false})),
        (status = 409, description = "The name differs only in case from another \
            workspace's.", body = ErrorBody),
    )
)]
pub async fn create_workspace(
    State(state): State<Arc<AppState>>,
    audit: Auditor,
    JsonBody(body): JsonBody<WorkspaceBody>,
) -> Result<Response, ApiError> {
    run_blocking(move || {
        let created = audit.run("workspace.created", || {
            state.engine.create_workspace(&body.name)
        })?;
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(json_response(
            status,
            json!({"name": body.name, "created": created}),
        ))
    })
    .await
}

/// `GET /admin/workspaces`.
#[utoipa::path(
    get,
    path = "/admin/workspaces",
    operation_id = "list_workspaces",
    tag = "workspaces",
    summary = "List the workspaces",
    responses(
        (status = 200, description = "Every workspace.", body = Vec<WorkspaceSummary>,
         example = json!([{"name": "acme", "users": 100000, "cohorts": 50}])),
    )
)]
pub async fn list_workspaces(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    run_blocking(move || {
        let list: Vec<Value> = state
            .engine
            .workspace_names()
            .into_iter()
            .filter_map(|name| state.engine.workspace(&name))
            .map(|h| {
                let ws = h.read();
                json!({"name": h.name(), "users": ws.users.live_len(), "cohorts": ws.cohorts.len()})
            })
            .collect();
        Ok(json_response(StatusCode::OK, Value::Array(list)))
    })
    .await
}

// ----- workspace API keys -----

/// The body of `POST /admin/workspaces/{ws}/api_keys`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyBody {
    /// 1 to 100 characters, no control characters.
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// `workspace:admin`, `segments:read`, `users:write` (duplicates are
    /// folded; an unknown one is a 400 naming it).
    #[schema(inline, value_type = Vec<ScopeName>)]
    scopes: Vec<String>,
}

/// A scope of a workspace API key.
#[allow(dead_code)]
#[derive(ToSchema)]
pub enum ScopeName {
    /// The workspace's keys, data import keys, partners, cohorts and
    /// saved segments.
    #[schema(rename = "workspace:admin")]
    WorkspaceAdmin,
    /// Counts, members, checks and the saved segments' reads.
    #[schema(rename = "segments:read")]
    SegmentsRead,
    /// Users and their identifiers and attributes.
    #[schema(rename = "users:write")]
    UsersWrite,
}

/// `POST /admin/workspaces/{ws}/api_keys`: 201 with
/// `{"id","key","name","scopes","created_at"}`, the key shown this once.
#[utoipa::path(
    post,
    path = "/admin/workspaces/{ws}/api_keys",
    operation_id = "create_api_key",
    tag = "workspaces",
    summary = "Create a workspace API key",
    description = "The key (`sqk_…`) is in this answer only; segq keeps its SHA-256 digest.",
    request_body(content = ApiKeyBody,
        example = json!({"name": "ops", "scopes": ["workspace:admin", "segments:read", "users:write"]})),
    responses(
        (status = 201, description = "Created; the key is shown this once.", body = NewApiKey),
        (status = 400, description = "A bad name or an unknown scope.", body = ErrorBody,
         example = json!({"message": "unknown scope \"segments:write\"; expected workspace:admin, segments:read or users:write"})),
    )
)]
pub async fn create_api_key(
    State(state): State<Arc<AppState>>,
    audit: Auditor,
    PathParams(ws): PathParams<String>,
    JsonBody(body): JsonBody<ApiKeyBody>,
) -> Result<Response, ApiError> {
    // An unknown workspace is a 404 before the body is judged.
    workspace(&state, &ws)?;
    check_name(&body.name).map_err(ApiError::bad_request)?;
    let scopes = parse_scopes(&body.scopes).map_err(ApiError::bad_request)?;
    run_blocking(move || {
        let key = audit.run("api_key.created", || {
            state.engine.create_api_key(&ws, &body.name, scopes)
        })?;
        let body = serde_json::to_value(&key).map_err(ApiError::internal)?;
        Ok(json_response(StatusCode::CREATED, body))
    })
    .await
}

/// `GET /admin/workspaces/{ws}/api_keys`.
#[utoipa::path(
    get,
    path = "/admin/workspaces/{ws}/api_keys",
    operation_id = "list_api_keys",
    tag = "workspaces",
    summary = "List a workspace's API keys",
    description = "Never the key nor its digest.",
    responses(
        (status = 200, description = "The keys, revoked ones included.", body = Vec<ApiKeyInfo>,
         example = json!([{"id": "ak_5f2c9e0b7a1d4c3e", "name": "ops", "scopes": ["segments:read"],
                           "created_at": "2026-11-01T10:00:00Z", "revoked_at": null}])),
    )
)]
pub async fn list_api_keys(
    State(state): State<Arc<AppState>>,
    PathParams(ws): PathParams<String>,
) -> Result<Response, ApiError> {
    run_blocking(move || {
        let keys = state.engine.list_api_keys(&ws)?;
        let body = serde_json::to_value(&keys).map_err(ApiError::internal)?;
        Ok(json_response(StatusCode::OK, body))
    })
    .await
}

/// `DELETE /admin/workspaces/{ws}/api_keys/{id}`.
#[utoipa::path(
    delete,
    path = "/admin/workspaces/{ws}/api_keys/{id}",
    operation_id = "revoke_api_key",
    tag = "workspaces",
    summary = "Revoke a workspace API key",
    description = "The key is refused from the next request on.",
    responses(
        (status = 200, description = "Revoked.", body = Removed,
         example = json!({"message": "API key revoked", "id": "ak_5f2c9e0b7a1d4c3e"})),
        (status = 404, description = "No such key (or no such workspace).", body = ErrorBody,
         example = json!({"message": "no API key \"ak_x\" in this workspace"})),
    )
)]
pub async fn revoke_api_key(
    State(state): State<Arc<AppState>>,
    audit: Auditor,
    PathParams((ws, id)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    run_blocking(move || {
        audit.run("api_key.revoked", || state.engine.revoke_api_key(&ws, &id))?;
        Ok(json_response(
            StatusCode::OK,
            json!({"message": "API key revoked", "id": id}),
        ))
    })
    .await
}

// ----- audit log -----

/// The default page of `GET /admin/workspaces/{ws}/audit`.
pub const AUDIT_DEFAULT_LIMIT: usize = 100;
/// The largest page of `GET /admin/workspaces/{ws}/audit`.
pub const AUDIT_MAX_LIMIT: usize = 1000;

/// The query of `GET /admin/workspaces/{ws}/audit`, read by hand so that
/// each bad value gets its own message.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// At most this many entries: 1 to 1,000 (default 100).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 1000, example = 100)]
    limit: Option<String>,
    /// Only entries with a smaller seq (the next page, newest first).
    #[param(value_type = Option<u64>)]
    before: Option<String>,
    /// Only entries with a larger seq (the next page, oldest first).
    #[param(value_type = Option<u64>)]
    after: Option<String>,
    /// `desc` (newest first, the default) or `asc`.
    #[param(inline, value_type = Option<AuditOrder>)]
    order: Option<String>,
}

/// The order of an audit page.
#[allow(dead_code)]
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum AuditOrder {
    /// Newest first.
    Desc,
    /// Oldest first.
    Asc,
}

/// A page of the audit log.
#[allow(dead_code)]
#[derive(ToSchema)]
#[schema(example = json!({"entries": [{"seq": 7, "at": "2026-11-01T10:00:00.000Z",
    "actor": "ak_5f2c9e0b7a1d4c3e", "action": "segment.updated", "target": "seg_5f2c9e0b7a1d4c3e",
    "detail": {"name": "Power users"}, "address": "10.0.0.7:51812",
    "request_id": "7868f724d7004dc2"}], "next": {"before": 7}, "next_seq": 8}))]
pub struct AuditPage {
    /// The entries, in the order asked.
    entries: Vec<AuditEntryAnswer>,
    /// The query parameter of the next page (`{"before": seq}` newest
    /// first, `{"after": seq}` oldest first); `null` after the last.
    next: Option<AuditNext>,
    /// The seq the next entry recorded will take.
    next_seq: u64,
}

/// The next page's parameter.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct AuditNext {
    /// For `before=`.
    before: Option<u64>,
    /// For `after=`.
    after: Option<u64>,
}

/// One audit entry.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct AuditEntryAnswer {
    /// 1, 2, … per workspace, in the order recorded.
    seq: u64,
    /// When (RFC 3339, milliseconds).
    #[schema(format = DateTime)]
    at: Option<String>,
    /// A workspace API key's id, or `admin` (the server admin token);
    /// never a secret.
    actor: String,
    /// What was done: `api_key.created`, `segment.updated`,
    /// `users.imported`, …
    action: String,
    /// What it was done to: a key or segment id, `user:ID`, a partner,
    /// `partner/cohort_id`.
    target: String,
    /// The particulars (names, scopes, a key's prefix, counts); never a
    /// secret.
    detail: Value,
    /// The client's address (the connection's peer).
    address: String,
    /// The request's `X-Request-Id`.
    request_id: String,
}

fn audit_number(name: &str, v: Option<&str>) -> Result<Option<u64>, ApiError> {
    v.map(|v| {
        v.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "{name} must be an entry's seq (a whole number); found {}",
                crate::error::Echo(v)
            ))
        })
    })
    .transpose()
}

/// `GET /admin/workspaces/{ws}/audit`: the entries with
/// `after < seq < before`, newest first (`order=desc`, the default) or
/// oldest first (`order=asc`), at most `limit` (default 100, at most
/// 1000). The answer's `next` holds the query parameter of the next page
/// (`{"before": seq}` newest first, `{"after": seq}` oldest first), or
/// `null` after the last.
#[utoipa::path(
    get,
    path = "/admin/workspaces/{ws}/audit",
    operation_id = "audit_log",
    tag = "workspaces",
    summary = "Page through the workspace's audit log",
    description = "Every change made through the admin API: when, who (a key's id, or \
        `admin`), what, to what, from which address, with which request id. Entries with \
        `after < seq < before`, newest first by default; `next` is the next page's parameter.",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of entries.", body = AuditPage),
        (status = 400, description = "A bad or unknown parameter, named.", body = ErrorBody,
         example = json!({"message": "limit must be 1 to 1000; found 0"})),
    )
)]
pub async fn audit_log(
    State(state): State<Arc<AppState>>,
    PathParams(ws): PathParams<String>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    let Query(q) = query.map_err(query_rejection)?;
    let limit = match audit_number("limit", q.limit.as_deref())? {
        None => AUDIT_DEFAULT_LIMIT,
        Some(n) if (1..=AUDIT_MAX_LIMIT as u64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "limit must be 1 to {AUDIT_MAX_LIMIT}; found {n}"
            )))
        }
    };
    let before = audit_number("before", q.before.as_deref())?;
    let after = audit_number("after", q.after.as_deref())?;
    let newest_first = match q.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "order must be asc or desc; found {}",
                crate::error::Echo(other)
            )))
        }
    };
    run_blocking(move || {
        let ws = handle.read();
        let (page, more) = ws.audit.page(after, before, newest_first, limit);
        let next = match page.last() {
            Some(last) if more && newest_first => json!({"before": last.seq}),
            Some(last) if more => json!({"after": last.seq}),
            _ => Value::Null,
        };
        let entries: Vec<Value> = page.into_iter().map(audit_entry_json).collect();
        Ok(json_response(
            StatusCode::OK,
            json!({"entries": entries, "next": next, "next_seq": ws.audit.next_seq()}),
        ))
    })
    .await
}

/// An audit entry's JSON form.
pub fn audit_entry_json(e: &crate::access::AuditEntry) -> Value {
    let at = chrono::DateTime::from_timestamp_millis(e.at_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let detail: Value = serde_json::from_str(&e.detail).unwrap_or_else(|_| json!(e.detail));
    json!({
        "seq": e.seq,
        "at": at,
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "detail": detail,
        "address": e.address,
        "request_id": e.request_id,
    })
}

// ----- data import keys -----

/// `POST /admin/workspaces/{ws}/partners/{partner}/keys`.
#[utoipa::path(
    post,
    path = "/admin/workspaces/{ws}/partners/{partner}/keys",
    operation_id = "create_data_import_key",
    tag = "data import keys",
    summary = "Generate a data import key",
    description = "The partner's `client_secret` for this workspace; the first one enables the \
        partner. Generating another while the first stays valid is a rotation. No body.",
    responses(
        (status = 201, description = "Created; the key is shown this once.", body = NewKey),
    )
)]
pub async fn create_key(
    State(state): State<Arc<AppState>>,
    audit: Auditor,
    PathParams((ws, p)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    let p = partner(&p)?;
    run_blocking(move || {
        let key = audit.run("import_key.created", || state.engine.create_key(&ws, p))?;
        let body = serde_json::to_value(&key).map_err(ApiError::internal)?;
        Ok(json_response(StatusCode::CREATED, body))
    })
    .await
}

/// The query of `GET /admin/workspaces/{ws}/keys`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeysQuery {
    /// Only this partner's keys.
    #[param(example = "amplitude")]
    partner: Option<String>,
}

/// `GET /admin/workspaces/{ws}/keys[?partner=P]`.
#[utoipa::path(
    get,
    path = "/admin/workspaces/{ws}/keys",
    operation_id = "list_data_import_keys",
    tag = "data import keys",
    summary = "List the data import keys",
    description = "Never the key itself: its id, prefix, partner, creation, last use (exact \
        while segq runs, kept to the minute) and invalidation.",
    params(KeysQuery),
    responses(
        (status = 200, description = "The keys.", body = Vec<KeyInfo>,
         example = json!([{"id": "key_5f2c9e0b7a1d4c3e", "partner": "amplitude", "prefix": "dik_9b1f",
                           "created_at": "2026-11-01T10:00:00Z", "last_used": null, "invalidated_at": null}])),
    )
)]
pub async fn list_keys(
    State(state): State<Arc<AppState>>,
    PathParams(ws): PathParams<String>,
    query: Result<Query<KeysQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(query_rejection)?;
    let p = match q.partner.as_deref() {
        None | Some("") => None,
        Some(p) => Some(
            p.parse::<Partner>()
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        ),
    };
    run_blocking(move || {
        let keys = state.engine.list_keys(&ws, p)?;
        let body = serde_json::to_value(&keys).map_err(ApiError::internal)?;
        Ok(json_response(StatusCode::OK, body))
    })
    .await
}

/// `DELETE /admin/workspaces/{ws}/keys/{id}`.
#[utoipa::path(
    delete,
    path = "/admin/workspaces/{ws}/keys/{id}",
    operation_id = "invalidate_data_import_key",
    tag = "data import keys",
    summary = "Invalidate a data import key",
    responses(
        (status = 200, description = "Invalidated.", body = Removed,
         example = json!({"message": "key invalidated", "id": "key_5f2c9e0b7a1d4c3e"})),
        (status = 404, description = "No such key (or no such workspace).", body = ErrorBody,
         example = json!({"message": "no data import key \"key_x\" in this workspace"})),
    )
)]
pub async fn invalidate_key(
    State(state): State<Arc<AppState>>,
    audit: Auditor,
    PathParams((ws, id)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    run_blocking(move || {
        audit.run("import_key.invalidated", || {
            state.engine.invalidate_key(&ws, &id)
        })?;
        Ok(json_response(
            StatusCode::OK,
            json!({"message": "key invalidated", "id": id}),
        ))
    })
    .await
}

/// `POST /admin/workspaces/{ws}/partners/{partner}/enable`.
#[utoipa::path(
    post,
    path = "/admin/workspaces/{ws}/partners/{partner}/enable",
    operation_id = "enable_partner",
    tag = "data import keys",
    summary = "Enable a partner for a workspace",
    description = "No body.",
    responses(
        (status = 200, description = "Enabled.", body = PartnerEnabled,
         example = json!({"message": "partner enabled", "partner": "amplitude"})),
    )
)]
pub async fn enable_partner(
    State(state): State<Arc<AppState>>,
    audit: Auditor,
    PathParams((ws, p)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    let p = partner(&p)?;
    run_blocking(move || {
        audit.run("partner.enabled", || state.engine.enable_partner(&ws, p))?;
        Ok(json_response(
            StatusCode::OK,
            json!({"message": "partner enabled", "partner": p.as_str()}),
        ))
    })
    .await
}

// ----- users -----

/// `POST /admin/workspaces/{ws}/users`: creates a user, or adds devices and
/// aliases to the user holding `external_id`.
#[utoipa::path(
    post,
    path = "/admin/workspaces/{ws}/users",
    operation_id = "upsert_user",
    tag = "users",
    summary = "Create or update a user",
    description = "Creates a user, or adds device_ids, aliases and attribute values to the user \
        holding `external_id`. A user needs at least one identifier.",
    request_body(content = UserJson,
        example = json!({"external_id": "u-1", "devices": ["ios-1"]})),
    responses(
        (status = 201, description = "Created.", body = UserUpserted,
         example = json!({"user_id": 0, "created": true})),
        (status = 200, description = "Updated.", body = UserUpserted,
         example = json!({"user_id": 0, "created": false})),
        (status = 409, description = "An identifier is held by another user.", body = ErrorBody,
         example = json!({"message": "device_id \"ios-1\" is already held by user 3"})),
    )
)]
pub async fn upsert_user(
    State(state): State<Arc<AppState>>,
    audit: Auditor,
    PathParams(ws): PathParams<String>,
    JsonBody(mut body): JsonBody<UserJson>,
) -> Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    let attributes = body.take_attributes();
    let new = body.into_new_user().map_err(ApiError::bad_request)?;
    run_blocking(move || {
        let up = audit.run("user.upserted", || {
            handle.upsert_user_with(new, &attributes)
        })?;
        let status = if up.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(json_response(
            status,
            json!({"user_id": up.user.0, "created": up.created}),
        ))
    })
    .await
}

/// The body of `POST /admin/workspaces/{ws}/users/attributes`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttributesBody {
    /// The user.
    #[schema(value_type = UserRefSchema)]
    user: Value,
    /// The values to set; `null` unsets one.
    #[schema(value_type = AttributeValues)]
    attributes: serde_json::Map<String, Value>,
}

/// `POST /admin/workspaces/{ws}/users/attributes`: sets (a `null` value
/// unsets) an existing user's custom attributes; answers the user's id
/// and all its values. A value that does not fit its attribute is a 400
/// naming it, and nothing of the request is applied.
#[utoipa::path(
    post,
    path = "/admin/workspaces/{ws}/users/attributes",
    operation_id = "set_user_attributes",
    tag = "users",
    summary = "Set or unset a user's custom attributes",
    description = "A value that does not fit its attribute is a 400 naming it, and nothing of \
        the request is applied.",
    request_body(content = AttributesBody,
        example = json!({"user": {"external_id": "u-1"},
                         "attributes": {"country": "BR", "lifetime_spend": 120.5, "plan": null}})),
    responses(
        (status = 200, description = "The user's id and all its values now.", body = UserAttributes,
         example = json!({"user_id": 0, "attributes": {"country": "BR", "lifetime_spend": 120.5}})),
        (status = 404, description = "No such user (or no such workspace).", body = ErrorBody,
         example = json!({"message": "no user external_id:u-9"})),
    )
)]
pub async fn set_attributes(
    State(state): State<Arc<AppState>>,
    audit: Auditor,
    PathParams(ws): PathParams<String>,
    JsonBody(body): JsonBody<AttributesBody>,
) -> Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    let user = user_ref(&body.user)?;
    let inputs: Vec<(String, AttrInput)> = body
        .attributes
        .into_iter()
        .map(|(k, v)| (k, AttrInput::Json(v)))
        .collect();
    run_blocking(move || {
        let (id, values) = audit.run("user.attributes_set", || {
            handle.set_attributes(&user, &inputs)
        })?;
        let values: serde_json::Map<String, Value> =
            values.into_iter().map(|(k, v)| (k, v.to_json())).collect();
        Ok(json_response(
            StatusCode::OK,
            json!({"user_id": id.0, "attributes": values}),
        ))
    })
    .await
}

/// The body of `PUT /admin/workspaces/{ws}/attributes/{name}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclareBody {
    /// The attribute's type.
    #[serde(rename = "type")]
    #[schema(inline, value_type = AttrTypeName)]
    ty: String,
}

/// A custom attribute's type.
#[allow(dead_code)]
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum AttrTypeName {
    /// Text.
    String,
    /// A whole number.
    Integer,
    /// A decimal number.
    Decimal,
    /// `true` or `false`.
    Boolean,
    /// An RFC 3339 time.
    Time,
}

/// `PUT /admin/workspaces/{ws}/attributes/{name}`: declares an attribute's
/// type (`string`, `integer`, `decimal`, `boolean`, `time`) before any
/// user has it, so that its first values are not left to inference.
#[utoipa::path(
    put,
    path = "/admin/workspaces/{ws}/attributes/{name}",
    operation_id = "declare_attribute",
    tag = "users",
    summary = "Declare a custom attribute's type",
    description = "Before any user has it, so that its first values are not left to inference.",
    request_body(content = DeclareBody, example = json!({"type": "decimal"})),
    responses(
        (status = 200, description = "Declared.", body = AttributeDeclared,
         example = json!({"name": "lifetime_spend", "type": "decimal"})),
    )
)]
pub async fn declare_attribute(
    State(state): State<Arc<AppState>>,
    audit: Auditor,
    PathParams((ws, name)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<DeclareBody>,
) -> Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    let ty = AttrType::parse(&body.ty).ok_or_else(|| {
        ApiError::bad_request(format!(
            "type must be one of string, integer, decimal, boolean, time; found {:?}",
            crate::error::prefix(&body.ty, 64).unwrap_or(&body.ty)
        ))
    })?;
    run_blocking(move || {
        audit.run("attribute.declared", || handle.declare_attribute(&name, ty))?;
        Ok(json_response(
            StatusCode::OK,
            json!({"name": name, "type": ty.name()}),
        ))
    })
    .await
}

/// The body of `POST /admin/workspaces/{ws}/users/aliases`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AliasBody {
    /// The user.
    #[schema(value_type = UserRefSchema)]
    user: Value,
    /// The alias's label.
    #[schema(min_length = 1)]
    alias_label: String,
    /// The alias's name.
    #[schema(min_length = 1)]
    alias_name: String,
}

/// `POST /admin/workspaces/{ws}/users/aliases`.
#[utoipa::path(
    post,
    path = "/admin/workspaces/{ws}/users/aliases",
    operation_id = "add_alias",
    tag = "users",
    summary = "Give a user an alias",
    request_body(content = AliasBody,
        example = json!({"user": {"external_id": "u-1"}, "alias_label": "email", "alias_name": "ann@example.com"})),
    responses(
        (status = 200, description = "Done.", body = UserIdAnswer, example = json!({"user_id": 0})),
        (status = 404, description = "No such user (or no such workspace).", body = ErrorBody),
        (status = 409, description = "Another user holds the alias.", body = ErrorBody),
    )
)]
pub async fn add_alias(
    State(state): State<Arc<AppState>>,
    audit: Auditor,
    PathParams(ws): PathParams<String>,
    JsonBody(body): JsonBody<AliasBody>,
) -> Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    let user = user_ref(&body.user)?;
    run_blocking(move || {
        let id = audit.run("user.alias_added", || {
            handle.add_alias(&user, &body.alias_label, &body.alias_name)
        })?;
        Ok(user_id_response(id))
    })
    .await
}

/// The body of `POST /admin/workspaces/{ws}/users/devices`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceBody {
    /// The user.
    #[schema(value_type = UserRefSchema)]
    user: Value,
    /// The device id to give it.
    #[schema(min_length = 1)]
    device_id: String,
}

/// `POST /admin/workspaces/{ws}/users/devices`.
#[utoipa::path(
    post,
    path = "/admin/workspaces/{ws}/users/devices",
    operation_id = "add_device",
    tag = "users",
    summary = "Give a user a device_id",
    request_body(content = DeviceBody,
        example = json!({"user": {"external_id": "u-1"}, "device_id": "android-2"})),
    responses(
        (status = 200, description = "Done.", body = UserIdAnswer, example = json!({"user_id": 0})),
        (status = 404, description = "No such user (or no such workspace).", body = ErrorBody),
        (status = 409, description = "Another user holds the device_id.", body = ErrorBody),
    )
)]
pub async fn add_device(
    State(state): State<Arc<AppState>>,
    audit: Auditor,
    PathParams(ws): PathParams<String>,
    JsonBody(body): JsonBody<DeviceBody>,
) -> Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    let user = user_ref(&body.user)?;
    run_blocking(move || {
        let id = audit.run("user.device_added", || {
            handle.add_device(&user, &body.device_id)
        })?;
        Ok(user_id_response(id))
    })
    .await
}

/// The body of `POST /admin/workspaces/{ws}/users/identify`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentifyBody {
    /// The (anonymous) user.
    #[schema(value_type = UserRefSchema)]
    user: Value,
    /// The external_id to give it.
    #[schema(min_length = 1)]
    external_id: String,
}

/// `POST /admin/workspaces/{ws}/users/identify`.
#[utoipa::path(
    post,
    path = "/admin/workspaces/{ws}/users/identify",
    operation_id = "identify_user",
    tag = "users",
    summary = "Identify a user (give it an external_id)",
    description = "From then on the partner endpoints no longer match the user by device_id.",
    request_body(content = IdentifyBody,
        example = json!({"user": {"device_id": "web-anon-42"}, "external_id": "u-42"})),
    responses(
        (status = 200, description = "Done.", body = UserIdAnswer, example = json!({"user_id": 41})),
        (status = 404, description = "No such user (or no such workspace).", body = ErrorBody),
        (status = 409, description = "The user is identified already, or another user holds \
            the external_id.", body = ErrorBody),
    )
)]
pub async fn identify(
    State(state): State<Arc<AppState>>,
    audit: Auditor,
    PathParams(ws): PathParams<String>,
    JsonBody(body): JsonBody<IdentifyBody>,
) -> Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    let user = user_ref(&body.user)?;
    run_blocking(move || {
        let id = audit.run("user.identified", || {
            handle.identify(&user, &body.external_id)
        })?;
        Ok(user_id_response(id))
    })
    .await
}

/// The most identifiers one `users/delete` request may name.
pub const MAX_DELETE: usize = 100_000;

/// The body of `POST /admin/workspaces/{ws}/users/delete`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteUsersBody {
    /// The users to delete: 1 to 100,000.
    #[schema(value_type = Vec<UserRefSchema>, min_items = 1, max_items = 100000)]
    users: Vec<Value>,
}

/// What a deletion did.
#[allow(dead_code)]
#[derive(ToSchema)]
#[schema(example = json!({"deleted": 2, "not_found": 1, "not_found_positions": [2],
    "user_ids": [0, 7], "memberships_removed": 5, "attribute_values_removed": 1}))]
pub struct UsersDeleted {
    /// Users deleted (a user named twice is deleted once).
    deleted: u64,
    /// Identifiers nobody holds.
    not_found: u64,
    /// Their positions in `users`.
    not_found_positions: Vec<u64>,
    /// The ids of the users deleted.
    user_ids: Vec<u64>,
    /// Cohort memberships removed.
    memberships_removed: u64,
    /// Custom attribute values removed.
    attribute_values_removed: u64,
}

/// What a merge did.
#[allow(dead_code)]
#[derive(ToSchema)]
#[schema(example = json!({"user_id": 0, "source_user_id": 41, "cohorts_joined": 2,
    "attributes_taken": 1, "device_ids_moved": 1, "aliases_moved": 0}))]
pub struct UsersMerged {
    /// The target user, who remains.
    user_id: u64,
    /// The source user, now deleted.
    source_user_id: u64,
    /// Cohorts the target joined.
    cohorts_joined: u64,
    /// Attribute values the target took (those it had none of).
    attributes_taken: u64,
    /// Device ids moved to the target.
    device_ids_moved: u64,
    /// Aliases moved to the target.
    aliases_moved: u64,
}

/// A renamed user.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct UserRenamed {
    /// The user's id (unchanged).
    user_id: u64,
    /// Its external_id now.
    external_id: String,
}

/// `POST /admin/workspaces/{ws}/users/delete`: deletes every user the
/// identifiers name, durably before the answer. The request is checked
/// whole first (1 to [`MAX_DELETE`] identifiers, each of the `user`
/// forms): a bad one is a 400 naming its position and nothing is deleted.
/// An identifier nobody holds is not an error: its position is listed in
/// `not_found`, so a retried request answers the same users as gone.
#[utoipa::path(
    post,
    path = "/admin/workspaces/{ws}/users/delete",
    operation_id = "delete_users",
    tag = "users",
    summary = "Delete users",
    description = "Deletes every user named: out of every cohort, attribute and saved \
        segment, in no later count, member page, check or estimate, gone from the next \
        snapshot; their identifiers are free at once. Durable before the answer. The request \
        is checked whole first: a bad entry is a 400 naming its position and nothing is \
        deleted. An identifier nobody holds is not an error, so a retry is safe.",
    request_body(content = DeleteUsersBody,
        example = json!({"users": [{"external_id": "u-1"}, {"device_id": "ios-9"},
                                   {"alias_label": "email", "alias_name": "ann@example.com"}]})),
    responses(
        (status = 200, description = "Deleted.", body = UsersDeleted),
        (status = 400, description = "An entry that names no user properly (its position \
            named), or no entries, or too many; nothing is deleted.", body = ErrorBody,
         example = json!({"message": "users[1]: user names no identifier; expected {\"external_id\": ...}, {\"device_id\": ...} or {\"alias_label\": ..., \"alias_name\": ...}"})),
    )
)]
pub async fn delete_users(
    State(state): State<Arc<AppState>>,
    audit: Auditor,
    PathParams(ws): PathParams<String>,
    JsonBody(body): JsonBody<DeleteUsersBody>,
) -> Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    if body.users.is_empty() || body.users.len() > MAX_DELETE {
        return Err(ApiError::bad_request(format!(
            "users must name 1 to {MAX_DELETE} users, found {}",
            body.users.len()
        )));
    }
    let refs = body
        .users
        .iter()
        .enumerate()
        .map(|(i, v)| {
            parse_user_ref(v).map_err(|e| ApiError::bad_request(format!("users[{i}]: {e}")))
        })
        .collect::<Result<Vec<UserRef>, ApiError>>()?;
    run_blocking(move || {
        let report = audit.run("users.deleted", || handle.delete_users(&refs))?;
        Ok(json_response(
            StatusCode::OK,
            json!({
                "deleted": report.deleted,
                "not_found": report.not_found.len(),
                "not_found_positions": report.not_found,
                "user_ids": report.user_ids,
                "memberships_removed": report.memberships_removed,
                "attribute_values_removed": report.values_removed,
            }),
        ))
    })
    .await
}

/// The body of `POST /admin/workspaces/{ws}/users/merge`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeBody {
    /// The user merged away (deleted).
    #[schema(value_type = UserRefSchema)]
    source: Value,
    /// The user that remains.
    #[schema(value_type = UserRefSchema)]
    target: Value,
}

/// `POST /admin/workspaces/{ws}/users/merge`: merges the source user into
/// the target (the platform's merge: the target keeps its identifiers and
/// gains the source's device_ids, aliases, cohorts and the attribute
/// values it lacks; the source and its external_id are gone). 404 names
/// the unknown one; the same user for both is a 400.
#[utoipa::path(
    post,
    path = "/admin/workspaces/{ws}/users/merge",
    operation_id = "merge_users",
    tag = "users",
    summary = "Merge a user into another",
    description = "The platform's merge: the target keeps its identifiers and gains the \
        source's device ids and aliases (the source's external_id is dropped: rename first to \
        keep it), joins every cohort the source is in, and takes the source's value of each \
        attribute it has none of; then the source is deleted. Durable before the answer.",
    request_body(content = MergeBody,
        example = json!({"source": {"device_id": "web-anon-42"}, "target": {"external_id": "u-1"}})),
    responses(
        (status = 200, description = "Merged.", body = UsersMerged),
        (status = 400, description = "A bad user, or the same user for both.", body = ErrorBody),
        (status = 404, description = "No such user (the message says which), or no such \
            workspace.", body = ErrorBody,
         example = json!({"message": "no user external_id:u9 (the source)"})),
    )
)]
pub async fn merge_users(
    State(state): State<Arc<AppState>>,
    audit: Auditor,
    PathParams(ws): PathParams<String>,
    JsonBody(body): JsonBody<MergeBody>,
) -> Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    let source =
        parse_user_ref(&body.source).map_err(|e| ApiError::bad_request(format!("source: {e}")))?;
    let target =
        parse_user_ref(&body.target).map_err(|e| ApiError::bad_request(format!("target: {e}")))?;
    run_blocking(move || {
        let m = audit.run("user.merged", || handle.merge_users(&source, &target))?;
        Ok(json_response(
            StatusCode::OK,
            json!({
                "source_user_id": m.source_user_id,
                "user_id": m.target_user_id,
                "cohorts_joined": m.cohorts_joined,
                "attributes_taken": m.attributes_taken,
                "device_ids_moved": m.devices_moved,
                "aliases_moved": m.aliases_moved,
            }),
        ))
    })
    .await
}

/// The body of `POST /admin/workspaces/{ws}/users/rename`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameBody {
    /// The user's external_id now.
    #[schema(min_length = 1)]
    external_id: String,
    /// The external_id it answers to from now on.
    #[schema(min_length = 1)]
    new_external_id: String,
}

/// `POST /admin/workspaces/{ws}/users/rename`: the user holding
/// `external_id` holds `new_external_id` from now on (the old one is
/// free). 404 for an unknown `external_id`, 409 when the new one is
/// another user's.
#[utoipa::path(
    post,
    path = "/admin/workspaces/{ws}/users/rename",
    operation_id = "rename_user",
    tag = "users",
    summary = "Rename a user's external_id",
    description = "The same user, memberships and values answer to the new external_id from \
        now on, and the old one is free. Renaming to the same id changes nothing.",
    request_body(content = RenameBody,
        example = json!({"external_id": "u-1", "new_external_id": "customer-1"})),
    responses(
        (status = 200, description = "Renamed.", body = UserRenamed,
         example = json!({"user_id": 0, "external_id": "customer-1"})),
        (status = 400, description = "An anonymous user (identify it instead), or a bad id.",
         body = ErrorBody),
        (status = 404, description = "No user holds `external_id` (or no such workspace).",
         body = ErrorBody),
        (status = 409, description = "Another user holds `new_external_id`.", body = ErrorBody),
    )
)]
pub async fn rename_user(
    State(state): State<Arc<AppState>>,
    audit: Auditor,
    PathParams(ws): PathParams<String>,
    JsonBody(body): JsonBody<RenameBody>,
) -> Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    run_blocking(move || {
        let id = audit.run("user.renamed", || {
            handle.rename_external_id(&body.external_id, &body.new_external_id)
        })?;
        Ok(json_response(
            StatusCode::OK,
            json!({"user_id": id.0, "external_id": body.new_external_id}),
        ))
    })
    .await
}

// ----- observability -----

/// `GET /admin/workspaces/{ws}/cohorts`: every cohort, by partner then
/// cohort_id, with its size and sync statistics.
#[utoipa::path(
    get,
    path = "/admin/workspaces/{ws}/cohorts",
    operation_id = "cohort_stats",
    tag = "cohorts",
    summary = "Every cohort's size and sync statistics",
    responses(
        (status = 200, description = "By partner, then cohort_id.", body = Vec<CohortStats>,
         example = json!([{"partner": "amplitude", "cohort_id": "c-9f1e", "name": "Power users (30d)",
            "size": 3, "created_at": "2021-01-21T19:20:30+05:00", "last_sync": "2026-11-01T10:00:00+00:00",
            "last_added": 3, "last_removed": 0, "matched_total": 3, "unmatched_total": 1,
            "refused_total": 0, "recent_unmatched": ["nobody-1"],
            "size_history": [{"at": "2026-11-01T10:00:00+00:00", "size": 3}]}])),
    )
)]
pub async fn cohorts(
    State(state): State<Arc<AppState>>,
    PathParams(ws): PathParams<String>,
) -> Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    run_blocking(move || {
        let ws = handle.read();
        let list: Vec<Value> = ws
            .cohorts
            .iter_sorted()
            .into_iter()
            .map(|c| {
                let s = &c.sync;
                json!({
                    "partner": c.key.partner.as_str(),
                    "cohort_id": c.key.cohort_id,
                    "name": c.name,
                    "size": c.len(),
                    "created_at": c.created_at.map(|t| t.to_rfc3339()),
                    "last_sync": s.last_sync.map(|t| t.to_rfc3339()),
                    "last_added": s.last_added,
                    "last_removed": s.last_removed,
                    "matched_total": s.matched_total,
                    "unmatched_total": s.unmatched_total,
                    "refused_total": s.refused_total,
                    "recent_unmatched": s.recent_unmatched,
                    "size_history": c.size_history.iter().filter_map(|&(ms, n)| {
                        let at = chrono::DateTime::from_timestamp_millis(ms)?;
                        Some(json!({"at": at.to_rfc3339(), "size": n}))
                    }).collect::<Vec<Value>>(),
                })
            })
            .collect();
        Ok(json_response(StatusCode::OK, Value::Array(list)))
    })
    .await
}

/// `DELETE /admin/workspaces/{ws}/cohorts/{partner}/{cohort_id}`.
#[utoipa::path(
    delete,
    path = "/admin/workspaces/{ws}/cohorts/{partner}/{cohort_id}",
    operation_id = "delete_cohort",
    tag = "cohorts",
    summary = "Delete a cohort",
    responses(
        (status = 200, description = "Deleted, durably.", body = CohortDeleted,
         example = json!({"message": "cohort deleted", "partner": "amplitude", "cohort_id": "c-9f1e"})),
        (status = 404, description = "No such cohort (or no such workspace).", body = ErrorBody),
        (status = 409, description = "Saved segments use it; the message names them.", body = ErrorBody,
         example = json!({"message": "cohort amplitude/c-9f1e is used by saved segments \"seg_1\"; delete or change them first"})),
    )
)]
pub async fn delete_cohort(
    State(state): State<Arc<AppState>>,
    audit: Auditor,
    PathParams((ws, p, cohort_id)): PathParams<(String, String, String)>,
) -> Result<Response, ApiError> {
    let p = partner(&p)?;
    let handle = workspace(&state, &ws)?;
    run_blocking(move || {
        audit.run("cohort.deleted", || handle.delete_cohort(p, &cohort_id))?;
        Ok(json_response(
            StatusCode::OK,
            json!({"message": "cohort deleted", "partner": p.as_str(), "cohort_id": cohort_id}),
        ))
    })
    .await
}

/// `GET /admin/workspaces/{ws}/data_points`: billable data points by
/// partner and UTC day.
#[utoipa::path(
    get,
    path = "/admin/workspaces/{ws}/data_points",
    operation_id = "data_points",
    tag = "cohorts",
    summary = "Billable data points by partner and UTC day",
    responses(
        (status = 200, description = "Every matched identifier is one data point.",
         body = Vec<DataPoints>,
         example = json!([{"partner": "amplitude", "day": "2026-11-01", "data_points": 998}])),
    )
)]
pub async fn data_points(
    State(state): State<Arc<AppState>>,
    PathParams(ws): PathParams<String>,
) -> Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    run_blocking(move || {
        let ws = handle.read();
        let list: Vec<Value> = ws
            .data_points_by_day()
            .map(|(p, day, n)| {
                json!({"partner": p.as_str(), "day": day.to_string(), "data_points": n})
            })
            .collect();
        Ok(json_response(StatusCode::OK, Value::Array(list)))
    })
    .await
}

/// `GET /admin/workspaces/{ws}/partners`: every partner, with what a
/// workspace admin needs to connect it.
#[utoipa::path(
    get,
    path = "/admin/workspaces/{ws}/partners",
    operation_id = "partners",
    tag = "data import keys",
    summary = "The partners and their connection",
    description = "Every partner: whether the workspace enabled it, the deployment's partner \
        API key it sends, how many of its data import keys are valid and how many cohorts it \
        has synced. The data import keys themselves are never shown again.",
    responses(
        (status = 200, description = "Every partner, in the protocol's order.", body = Vec<PartnerInfo>,
         example = json!([{"partner": "amplitude", "enabled": true,
                           "partner_api_key": "123456-1234-1234-12345678", "valid_keys": 1, "cohorts": 4}])),
    )
)]
pub async fn partners(
    State(state): State<Arc<AppState>>,
    PathParams(ws): PathParams<String>,
) -> Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    let api_keys = state.engine.config().partner_api_keys.clone();
    run_blocking(move || {
        let ws = handle.read();
        let list: Vec<Value> = Partner::ALL
            .iter()
            .map(|&p| {
                let valid_keys = ws
                    .keys
                    .values()
                    .filter(|k| k.partner == p && k.invalidated_at.is_none())
                    .count();
                json!({
                    "partner": p.as_str(),
                    "enabled": ws.enabled_partners.contains(&p),
                    "partner_api_key": api_keys.get(&p).cloned().unwrap_or_default(),
                    "valid_keys": valid_keys,
                    "cohorts": ws.cohorts.by_partner(p).len(),
                })
            })
            .collect();
        Ok(json_response(StatusCode::OK, Value::Array(list)))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_refs() {
        assert_eq!(
            parse_user_ref(&json!({"external_id": "u1"})),
            Ok(UserRef::ExternalId("u1".into()))
        );
        assert_eq!(
            parse_user_ref(&json!({"device_id": "d1", "external_id": null})),
            Ok(UserRef::DeviceId("d1".into()))
        );
        assert_eq!(
            parse_user_ref(&json!({"alias_label": "email", "alias_name": "a@x"})),
            Ok(UserRef::Alias {
                label: "email".into(),
                name: "a@x".into()
            })
        );
        for bad in [
            json!("u1"),
            json!({}),
            json!({"external_id": ""}),
            json!({"external_id": 3}),
            json!({"external_id": "u1", "device_id": "d1"}),
            json!({"alias_label": "email"}),
            json!({"user_id": "u1"}),
        ] {
            assert!(parse_user_ref(&bad).is_err(), "{bad}");
        }
        assert!(
            parse_user_ref(&json!({"alias_name": "x"})).is_err_and(|e| e.contains("go together"))
        );
    }
}
