//! Request gates shared by the routes: who may call each route (the
//! [`ACCESS`] table and [`require_access`]), and the content types the
//! JSON endpoints accept.
//!
//! Partner credentials travel in the body and are checked by the partner
//! handlers (`Engine::authorize`). Every other guarded route takes
//! `Authorization: Bearer <token>`, where the token is the server admin
//! token (checked in constant time) or a workspace API key (its digest
//! looked up, `Engine::caller`):
//!
//! - no token, or one that is neither: 401;
//! - the server admin token manages workspaces and their API keys only:
//!   on a route that needs a scope it gets 403 naming the scope;
//! - a key of another workspace gets the 404 an unknown workspace gets,
//!   word for word, so that workspace names do not leak;
//! - a key of the route's workspace without the scope gets 403 naming
//!   the scope it lacks.

use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::routes::*;
use super::AppState;
use crate::access::Scope;
use crate::engine::Caller;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone: no token is looked at.
    Public,
    /// The partner endpoints: their credentials travel in the body.
    Partner,
    /// The server admin token only.
    ServerAdmin,
    /// The server admin token, or a key of the route's workspace with
    /// `workspace:admin`: the workspace's API keys and its audit log.
    KeysAdmin,
    /// A key of the route's workspace with this scope.
    Scope(Scope),
}

impl Access {
    /// How the README's table names it.
    pub fn describe(self) -> &'static str {
        match self {
            Access::Public => "none",
            Access::Partner => "partner credentials in the body",
            Access::ServerAdmin => "server admin token",
            Access::KeysAdmin => "server admin token or workspace:admin",
            Access::Scope(s) => s.name(),
        }
    }
}

const ADMIN: Access = Access::Scope(Scope::WorkspaceAdmin);
const READ: Access = Access::Scope(Scope::SegmentsRead);
const WRITE: Access = Access::Scope(Scope::UsersWrite);

/// Every route and method the router serves, with who may call it. A
/// guarded route's method missing here answers 405; the test matrix
/// checks this table against the router.
pub const ACCESS: &[(&str, &str, Access)] = &[
    ("GET", HEALTHZ, Access::Public),
    ("GET", READYZ, Access::Public),
    ("GET", METRICS, Access::Public),
    ("GET", OPENAPI, Access::Public),
    ("GET", DOCS, Access::Public),
    ("GET", CONSOLE, Access::Public),
    ("GET", CONSOLE_ASSET, Access::Public),
    ("POST", COHORTS, Access::Partner),
    ("POST", COHORT_USERS, Access::Partner),
    ("POST", COHORT_DELETE, Access::Partner),
    ("GET", WORKSPACES, Access::ServerAdmin),
    ("POST", WORKSPACES, Access::ServerAdmin),
    ("GET", API_KEYS, Access::KeysAdmin),
    ("POST", API_KEYS, Access::KeysAdmin),
    ("DELETE", API_KEY, Access::KeysAdmin),
    ("GET", AUDIT, Access::KeysAdmin),
    ("POST", CREATE_KEY, ADMIN),
    ("GET", KEYS, ADMIN),
    ("DELETE", KEY, ADMIN),
    ("POST", ENABLE_PARTNER, ADMIN),
    ("GET", COHORT_STATS, ADMIN),
    ("GET", DATA_POINTS, ADMIN),
    ("GET", PARTNERS, ADMIN),
    ("DELETE", COHORT, ADMIN),
    ("POST", SEGMENTS, ADMIN),
    ("PUT", SEGMENT, ADMIN),
    ("DELETE", SEGMENT, ADMIN),
    ("POST", USERS, WRITE),
    ("POST", ALIASES, WRITE),
    ("POST", DEVICES, WRITE),
    ("POST", IDENTIFY, WRITE),
    ("POST", IMPORT, WRITE),
    ("POST", DELETE_USERS, WRITE),
    ("POST", MERGE_USERS, WRITE),
    ("POST", RENAME_USER, WRITE),
    ("POST", USER_ATTRIBUTES, WRITE),
    ("PUT", ATTRIBUTE, WRITE),
    ("POST", SEGMENT_COUNT, READ),
    ("POST", SEGMENT_BREAKDOWN, READ),
    ("POST", SEGMENT_MEMBERS, READ),
    ("POST", SEGMENT_CHECK, READ),
    ("POST", USER_SEGMENTS, READ),
    ("GET", SEGMENTS, READ),
    ("GET", SEGMENT, READ),
    ("GET", SEGMENT_SIZE, READ),
    ("GET", PARTNER_COHORTS, READ),
    ("GET", ATTRIBUTES, READ),
];

/// Who may call `method` on `route` (a template of [`super::routes`]);
/// `HEAD` is `GET`'s.
pub fn access_of(method: &Method, route: &str) -> Option<Access> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    ACCESS
        .iter()
        .find(|(m, r, _)| *m == method && *r == route)
        .map(|&(_, _, a)| a)
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// Why a request is refused, or `None` to let it through: the decision
/// of [`require_access`] for a caller, a route's access and the
/// workspace its path names.
pub fn refusal(caller: &Caller, access: Access, ws: Option<&str>) -> Option<ApiError> {
    let (needed, keys_admin) = match access {
        Access::Public | Access::Partner => return None,
        Access::ServerAdmin => {
            return match caller {
                Caller::Admin => None,
                Caller::Unknown => Some(ApiError::admin_unauthorized()),
                Caller::Key { .. } => Some(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "this route needs the server admin token; a workspace API key \
                     cannot manage workspaces",
                )),
            }
        }
        Access::KeysAdmin => (Scope::WorkspaceAdmin, true),
        Access::Scope(s) => (s, false),
    };
    match caller {
        Caller::Unknown => Some(ApiError::admin_unauthorized()),
        Caller::Admin if keys_admin => None,
        Caller::Admin => Some(scope_refused(
            needed,
            format!(
                "the server admin token manages workspaces and their API keys only; \
                 this route needs a workspace API key with scope {needed}"
            ),
        )),
        Caller::Key {
            workspace, scopes, ..
        } => {
            let ws = ws.unwrap_or_default();
            if workspace != ws {
                // Word for word the answer for an unknown workspace.
                return Some(super::extract::unknown_workspace(ws));
            }
            (!scopes.contains(&needed)).then(|| {
                scope_refused(
                    needed,
                    format!("this API key lacks the scope {needed} this route needs"),
                )
            })
        }
    }
}

/// A 403 naming the scope needed (also as `"scope"`).
fn scope_refused(scope: Scope, message: String) -> ApiError {
    let mut e = ApiError::new(StatusCode::FORBIDDEN, message);
    e.body["scope"] = json!(scope.name());
    e
}

/// Middleware for every guarded route: looks up the route's [`Access`]
/// and the caller, and answers 401, 403 or 404 as the module says. A
/// method the table does not list answers 405.
pub async fn require_access(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let Some(access) = access_of(req.method(), &route) else {
        let allow: Vec<&str> = ACCESS
            .iter()
            .filter(|(_, r, _)| *r == route)
            .map(|(m, _, _)| *m)
            .collect();
        let mut resp = super::error::method_not_allowed(req.method().clone())
            .await
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&allow.join(",")) {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        return resp;
    };
    if matches!(access, Access::Public | Access::Partner) {
        return next.run(req).await;
    }
    let caller = match bearer_token(req.headers()) {
        Some(t) => state.engine.caller(t),
        None => Caller::Unknown,
    };
    let (mut parts, body) = req.into_parts();
    let ws = match RawPathParams::from_request_parts(&mut parts, &state).await {
        Ok(params) => params
            .iter()
            .find(|(k, _)| *k == "ws")
            .map(|(_, v)| v.to_string()),
        Err(e) => return e.into_response(),
    };
    if let Some(refused) = refusal(&caller, access, ws.as_deref()) {
        return refused.into_response();
    }
    // Who is calling, for the audit log (`extract::Auditor`).
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, body)).await
}

/// Accepts `application/json` (any parameters, such as a charset) and a
/// missing content type, which real partner clients send; refuses anything
/// else with 415.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if essence.is_empty() || essence.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    Err(ApiError::unsupported_media_type(format!(
        "unsupported content type {:?}: send application/json",
        truncate(essence, 100)
    )))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(name: header::HeaderName, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn json_content_types() {
        assert!(require_json(&HeaderMap::new()).is_ok());
        assert!(require_json(&with(header::CONTENT_TYPE, "application/json")).is_ok());
        assert!(require_json(&with(
            header::CONTENT_TYPE,
            "Application/JSON; charset=UTF-8"
        ))
        .is_ok());
        let e = require_json(&with(header::CONTENT_TYPE, "text/plain")).expect_err("415");
        assert_eq!(e.status.as_u16(), 415);
        assert!(e.message().contains("text/plain"));
        assert!(require_json(&with(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded"
        ))
        .is_err());
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(
            bearer_token(&with(header::AUTHORIZATION, "Bearer abc")),
            Some("abc")
        );
        assert_eq!(
            bearer_token(&with(header::AUTHORIZATION, "bearer  abc ")),
            Some("abc")
        );
        assert_eq!(
            bearer_token(&with(header::AUTHORIZATION, "Basic abc")),
            None
        );
        assert_eq!(bearer_token(&with(header::AUTHORIZATION, "Bearer")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
