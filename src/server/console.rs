//! The web console (`GET /` and `GET /console/{asset}`): a segment
//! builder, the cohorts' sync health and the partner connections with
//! their data import keys, for people who do not work in curl.
//!
//! It is plain HTML, CSS and one JavaScript module (`console/`), compiled
//! into the binary: nothing to build, nothing loaded from anywhere else,
//! which its Content-Security-Policy enforces. It signs in with a
//! workspace API key kept in the tab's session storage and calls the
//! public HTTP API only, like any other client: the pages themselves are
//! public and hold no data.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::extract::PathParams;

/// The page, compiled in.
pub const INDEX_HTML: &str = include_str!("console/index.html");
/// The script (an ES module), compiled in.
pub const APP_JS: &str = include_str!("console/app.js");
/// The styles, compiled in.
pub const STYLE_CSS: &str = include_str!("console/style.css");

/// What the console may load: its own script and styles from this
/// origin, the API from this origin, nothing inline and nothing else.
pub const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The assets under `/console/`: name, content type, text.
const ASSETS: [(&str, &str, &str); 2] = [
    ("app.js", "text/javascript; charset=utf-8", APP_JS),
    ("style.css", "text/css; charset=utf-8", STYLE_CSS),
];

/// A strong validator of everything the console serves: the page and its
/// assets change together, with the binary.
fn etag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [INDEX_HTML, APP_JS, STYLE_CSS] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        let d = h.finalize();
        let hex: String = d[..12].iter().map(|b| format!("{b:02x}")).collect();
        format!("\"{hex}\"")
    })
}

/// An answer with the console's headers: `no-cache` (the browser keeps a
/// copy and revalidates it with the ETag, so a new binary's console is
/// seen at once), the CSP, `nosniff`, and no referrer.
fn asset(headers: &HeaderMap, content_type: &'static str, body: &'static str) -> Response {
    let tag = etag();
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = (StatusCode::OK, body).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(tag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONSOLE_CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// `GET /`.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "console",
    tag = "operations",
    summary = "The web console",
    description = "The console's page: a segment builder with live counts, the cohorts' sync \
        health and the partner connections with their data import keys. It signs in with a \
        workspace API key (kept in the tab's session storage) and calls this API; it loads \
        nothing from another origin. Answers 304 to a matching `If-None-Match`.",
    responses(
        (status = 200, description = "The page.", content_type = "text/html", body = String),
        (status = 304, description = "The copy the browser holds is current."),
    )
)]
pub async fn index(headers: HeaderMap) -> Response {
    asset(&headers, "text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /console/{asset}`.
#[utoipa::path(
    get,
    path = "/console/{asset}",
    operation_id = "console_asset",
    tag = "operations",
    summary = "A script or stylesheet of the web console",
    description = "`app.js` (an ES module) or `style.css`. Answers 304 to a matching \
        `If-None-Match`.",
    responses(
        (status = 200, description = "The asset.",
         content((String = "text/javascript"), (String = "text/css"))),
        (status = 304, description = "The copy the browser holds is current."),
        (status = 404, description = "No such asset.", body = super::openapi::ErrorBody),
    )
)]
pub async fn console_asset(
    headers: HeaderMap,
    PathParams(name): PathParams<String>,
) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|&(_, ty, body)| asset(&headers, ty, body))
        .ok_or_else(|| ApiError::not_found(format!("no console asset {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        for (name, _, _) in ASSETS {
            assert!(INDEX_HTML.contains(&format!("/console/{name}")), "{name}");
        }
        // Nothing inline: the CSP allows no inline script or style.
        assert!(!INDEX_HTML.contains("<script>") && !INDEX_HTML.contains("style="));
        let js = APP_JS.replace("http://www.w3.org/2000/svg", "");
        assert!(!js.contains("http://") && !js.contains("https://"));
        assert!(!STYLE_CSS.contains("url("));
        assert!(!APP_JS.contains("innerHTML") && !APP_JS.contains("eval("));
        assert!(
            !APP_JS.contains("localStorage"),
            "the key is kept per tab only"
        );
    }
}
