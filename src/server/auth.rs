//! Request gates shared by the routes: the admin bearer token, and the
//! content types the JSON endpoints accept.
//!
//! Partner credentials travel in the body and are checked by the partner
//! handlers (`Engine::authorize`); the admin API uses
//! `Authorization: Bearer <admin token>`, checked in constant time by
//! `Engine::check_admin_token`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

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

/// Middleware for the admin routes: 401 unless the bearer token is the
/// admin token.
pub async fn require_admin(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let ok = bearer_token(req.headers()).is_some_and(|t| state.engine.check_admin_token(t));
    if !ok {
        return ApiError::admin_unauthorized().into_response();
    }
    next.run(req).await
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
