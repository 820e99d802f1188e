//! What the handlers share: path and JSON body extractors with the API's
//! error answers, the workspace a path names, a request's declared
//! `Content-Length`, the JSON form of a user, and running the blocking
//! part of a request off the async workers.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::engine::audit::{audited, AuditContext, ADMIN_ACTOR};
use crate::engine::{Caller, WorkspaceHandle};
use crate::error::Error;
use crate::ids::UserRef;

use super::auth::require_json;
use super::error::{path_rejection, read_body, ApiError};
use super::ops::RequestId;
use super::AppState;

/// Who makes a request's changes, for the audit log
/// ([`crate::engine::audit`]): the caller [`super::auth::require_access`]
/// let through (a key's id, or `admin`), the connection's peer address
/// (`-` when served without one, as in tests that call the router
/// directly), and the request id. A client's `X-Forwarded-For` and the
/// like are not read: the address is the socket's peer.
#[derive(Clone, Debug)]
pub struct Auditor(pub AuditContext);

impl<S: Send + Sync> FromRequestParts<S> for Auditor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let actor = match parts.extensions.get::<Caller>() {
            Some(Caller::Admin) => ADMIN_ACTOR.to_string(),
            Some(Caller::Key { key_id, .. }) => key_id.clone(),
            // Every audited route sits behind `require_access`.
            Some(Caller::Unknown) | None => {
                return Err(ApiError::internal("an audited route without a caller"))
            }
        };
        let address = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "-".to_string(), |c| c.0.to_string());
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map_or_else(String::new, |r| r.0.clone());
        Ok(Auditor(AuditContext {
            actor,
            address,
            request_id,
        }))
    }
}

impl Auditor {
    /// Runs `f` with the writes it makes audited as `action`
    /// ([`crate::engine::audit::audited`]); call it on the thread that
    /// writes (inside [`run_blocking`]).
    pub fn run<T>(&self, action: &'static str, f: impl FnOnce() -> T) -> T {
        audited(&self.0, action, f)
    }
}

/// Path parameters, with a JSON 400 when they do not decode.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| PathParams(t))
            .map_err(path_rejection)
    }
}

/// A JSON body: `application/json` or no content type, at most the
/// server's `max_body_bytes`, decoded into `T` (400 with serde's message,
/// which names the field, otherwise).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        require_json(req.headers())?;
        let limit = state.options.max_body_bytes;
        let bytes = read_body(req, limit).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "request body is empty: expected a JSON object",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
    }
}

/// The workspace a request's path names (404 if there is none).
pub fn workspace(state: &AppState, name: &str) -> Result<Arc<WorkspaceHandle>, ApiError> {
    state
        .engine
        .workspace(name)
        .ok_or_else(|| unknown_workspace(name))
}

/// The answer for a workspace that is not there (also what a key of
/// another workspace gets, word for word).
pub fn unknown_workspace(name: &str) -> ApiError {
    Error::UnknownWorkspace {
        name: name.to_string(),
    }
    .into()
}

/// The `Content-Length` a request declares, if it declares a valid one.
/// Nothing is reserved from it: it only lets a body that says it is too
/// large be refused before it is read.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Parses the JSON form of a [`UserRef`].
pub fn parse_user_ref(v: &Value) -> Result<UserRef, String> {
    const FORMS: &str = "{\"external_id\": ...}, {\"device_id\": ...} or {\"alias_label\": ..., \"alias_name\": ...}";
    let o: &Map<String, Value> = v
        .as_object()
        .ok_or_else(|| format!("user must be an object: {FORMS}"))?;
    if let Some(k) = o
        .keys()
        .find(|k| !["external_id", "device_id", "alias_label", "alias_name"].contains(&k.as_str()))
    {
        return Err(format!("user: unknown key {k:?}; expected {FORMS}"));
    }
    let field = |k: &str| -> Result<Option<String>, String> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(format!("user.{k} must be a non-empty string")),
        }
    };
    match (
        field("external_id")?,
        field("device_id")?,
        field("alias_label")?,
        field("alias_name")?,
    ) {
        (Some(e), None, None, None) => Ok(UserRef::ExternalId(e)),
        (None, Some(d), None, None) => Ok(UserRef::DeviceId(d)),
        (None, None, Some(label), Some(name)) => Ok(UserRef::Alias { label, name }),
        (None, None, None, None) => Err(format!("user names no identifier; expected {FORMS}")),
        (None, None, _, _) => Err("user: alias_label and alias_name go together".into()),
        _ => Err(format!("user must name exactly one identifier: {FORMS}")),
    }
}

/// Runs the blocking part of an import request on the import threads
/// (`import_threads`: lowered below the queries').
pub async fn on_import_thread<F>(state: &AppState, f: F) -> Result<Response, ApiError>
where
    F: FnOnce() -> Result<Response, ApiError> + Send + 'static,
{
    answered(state.imports.spawn(in_request_span(f))).await
}

/// Runs the blocking part of a request on tokio's blocking pool.
pub async fn run_blocking<F>(f: F) -> Result<Response, ApiError>
where
    F: FnOnce() -> Result<Response, ApiError> + Send + 'static,
{
    answered(tokio::task::spawn_blocking(in_request_span(f))).await
}

/// `f`, run in the request's span (and so with its id) wherever it runs.
fn in_request_span<R>(f: impl FnOnce() -> R) -> impl FnOnce() -> R {
    let span = tracing::Span::current();
    move || span.in_scope(f)
}

/// The answer of a request's blocking part.
async fn answered(
    task: tokio::task::JoinHandle<Result<Response, ApiError>>,
) -> Result<Response, ApiError> {
    task.await
        .map_err(|e| ApiError::internal(format!("request task failed: {e}")))?
}
