//! Every failure the HTTP layer answers, as one type: a status, a JSON body
//! (`{"message": ...}`, plus `"errors"` for the partner protocol's 400s) and
//! an optional `Retry-After`. Library errors ([`Error`]) and protocol errors
//! ([`ProtocolError`]) convert into it, and so do axum's own rejections
//! (body too large, bad path), so that every response is JSON.
//!
//! Server-side failures (internal errors, storage, I/O, corrupt files, a
//! workspace that cannot take writes) are logged to stderr with their
//! detail under a short random error id, and answered (500, or 503) with a
//! generic message and that id (`"error_id"`), so that an operator can
//! find the detail: a response never carries a path, an OS error, a secret
//! or a key.

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::error::Error;
use crate::import::ProtocolError;

use super::conn::{is_body_timeout, BodyBudget, BodyPermit, ConnHandle};

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// The response's status.
    pub status: StatusCode,
    /// The response's JSON body.
    pub body: Value,
    /// Sent as `Retry-After` (429s).
    pub retry_after_secs: Option<u64>,
    /// Sent as `WWW-Authenticate` (admin 401s).
    pub authenticate: bool,
    /// Sent with `Connection: close`: the request's body was not read to
    /// its end, so the connection cannot carry another request.
    pub close: bool,
}

impl ApiError {
    /// A status with `{"message": message}` (cut, as every echo of an
    /// input is: [`crate::error::Clip`]).
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError {
            status,
            body: json!({"message": crate::error::Clip(&message).to_string()}),
            retry_after_secs: None,
            authenticate: false,
            close: false,
        }
    }

    /// A 400 with `{"message": message}`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// A 404 with `{"message": message}`.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// A 415 with `{"message": message}`.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message)
    }

    /// A server-side failure: 500; the detail goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        ApiError::hidden(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal server error",
            detail,
        )
    }

    /// `status` with `what` and a fresh error id; `detail` is logged to
    /// stderr under that id and not sent.
    pub fn hidden(status: StatusCode, what: &str, detail: impl std::fmt::Display) -> Self {
        let id = format!("e-{}", crate::engine::keys::random_hex(6));
        tracing::error!(error_id = %id, status = status.as_u16(), "{detail}");
        let message = format!("{what} (error id {id}; the server log has the detail)");
        let mut e = ApiError::new(status, message.clone());
        e.body = json!({"message": message, "error_id": id});
        e
    }

    /// The error id of a server-side failure.
    pub fn error_id(&self) -> Option<&str> {
        self.body.get("error_id").and_then(Value::as_str)
    }

    /// The admin API's 401.
    pub fn admin_unauthorized() -> Self {
        let mut e = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or invalid token: send Authorization: Bearer <admin token or workspace API key>",
        );
        e.authenticate = true;
        e
    }

    /// The message, for logs and tests.
    pub fn message(&self) -> &str {
        self.body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// A library error met on a partner endpoint after authorization: as
    /// [`From<Error>`], with the protocol's `errors` array on 400s.
    pub fn from_partner(e: Error) -> Self {
        let mut api = ApiError::from(e);
        if api.status == StatusCode::BAD_REQUEST {
            let message = api.message().to_string();
            api.body = json!({"message": message, "errors": [message]});
        }
        api
    }
}

/// The status a library error maps to. Exhaustive on purpose: a new
/// variant must be given its status here.
pub fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::UnknownPartner { .. }
        | Error::UnknownUser(_)
        | Error::UnknownCohort { .. }
        | Error::NoSuchCohort { .. }
        | Error::UnknownWorkspace { .. }
        | Error::UnknownKey { .. }
        | Error::UnknownApiKey { .. }
        | Error::UnknownSegment { .. }
        | Error::UnknownAttribute { .. } => StatusCode::NOT_FOUND,
        Error::DuplicateExternalId { .. }
        | Error::DuplicateAlias { .. }
        | Error::DuplicateDevice { .. }
        | Error::AlreadyIdentified { .. }
        | Error::AmbiguousCohortName { .. }
        | Error::WorkspaceNameClash { .. }
        | Error::TooManyUsers { .. }
        | Error::TooManyCohorts { .. }
        | Error::CohortInUse { .. }
        | Error::SegmentInUse { .. } => StatusCode::CONFLICT,
        Error::InvalidIdentifier { .. }
        | Error::InvalidCohort(_)
        | Error::FilterParse(_)
        | Error::InvalidArgument(_)
        | Error::FilterTooLarge { .. }
        | Error::InvalidWorkspaceName { .. }
        | Error::ReservedWorkspaceName { .. }
        | Error::InvalidCursor(_)
        | Error::AttributeType { .. } => StatusCode::BAD_REQUEST,
        Error::WorkspaceFailed { .. }
        | Error::NotDurable { .. }
        | Error::NotShipped { .. }
        | Error::Locked { .. }
        | Error::NotPrimary { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::Log(_)
        | Error::Corrupt { .. }
        | Error::Store { .. }
        | Error::Config { .. }
        | Error::ConfigEnv { .. }
        | Error::Io { .. }
        | Error::Internal(_)
        // A sync client's errors are never answered by the server.
        | Error::SyncRefused { .. }
        | Error::SyncGaveUp { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = status_of(&e);
        match &e {
            _ if status == StatusCode::INTERNAL_SERVER_ERROR => ApiError::internal(&e),
            // Their reason names files and OS errors: logged, not sent.
            Error::WorkspaceFailed { name, .. } => ApiError::hidden(
                status,
                &format!("workspace {name:?} cannot store writes now"),
                &e,
            ),
            Error::NotDurable { name, .. } => ApiError::hidden(
                status,
                &format!(
                    "workspace {name:?} could not make the change durable, so it was not applied; try again later"
                ),
                &e,
            ),
            // The store's URL is the operator's business: not sent.
            Error::NotShipped { name, waited_ms, .. } => {
                let mut api = ApiError::hidden(
                    status,
                    &format!(
                        "workspace {name:?} applied the change, but could not put it in the object \
                         store within {waited_ms} ms (durability \"object-store\"); it stays applied \
                         and is shipped once the store takes puts; retrying is safe"
                    ),
                    &e,
                );
                api.retry_after_secs = Some(1);
                api
            }
            // Names the node holding the lease: said, so clients go there.
            Error::NotPrimary { .. } => ApiError::new(status, e.to_string()),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => {
                ApiError::hidden(status, "the service is unavailable", &e)
            }
            _ => ApiError::new(status, e.to_string()),
        }
    }
}

impl From<ProtocolError> for ApiError {
    fn from(e: ProtocolError) -> Self {
        let retry_after_secs = match &e {
            ProtocolError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        };
        ApiError {
            status: StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            body: e.body(),
            retry_after_secs,
            authenticate: false,
            close: false,
        }
    }
}

/// How much of a body over the limit is read and thrown away, so that the
/// client, still sending, reads the 413 instead of a connection reset.
pub const DRAIN_BYTES: usize = 64 << 20;

/// Reads a request body of at most `limit` bytes. A larger one is read on
/// (and dropped) up to [`DRAIN_BYTES`] more, then refused with 413 and
/// `Connection: close`: closing a connection while the client still
/// sends makes the client see a reset rather than the answer. Nothing is
/// reserved from a declared `Content-Length`: memory follows the bytes
/// that arrive.
pub async fn read_body(req: axum::extract::Request, limit: usize) -> Result<Bytes, ApiError> {
    read_body_within(req, limit, None).await.map(|(b, _)| b)
}

/// [`read_body`] for a request whose credentials are in its body, so not
/// checked yet: the bytes are taken from the server's [`BodyBudget`]
/// (waiting while it is spent) and held until the permit is dropped, and
/// the connection may be closed meanwhile to make room for another.
pub(crate) async fn read_unauthenticated_body(
    budget: &BodyBudget,
    req: axum::extract::Request,
    limit: usize,
) -> Result<(Bytes, BodyPermit), ApiError> {
    let conn = req.extensions().get::<ConnHandle>().cloned();
    if let Some(c) = &conn {
        c.0.reading_unauthenticated_body(true);
    }
    let read = read_body_within(req, limit, Some(budget)).await;
    if let Some(c) = &conn {
        c.0.reading_unauthenticated_body(false);
    }
    let (bytes, permit) = read?;
    Ok((bytes, permit.unwrap_or_else(|| budget.empty_permit())))
}

async fn read_body_within(
    req: axum::extract::Request,
    limit: usize,
    budget: Option<&BodyBudget>,
) -> Result<(Bytes, Option<BodyPermit>), ApiError> {
    use futures_util::StreamExt;
    let mut stream = req.into_body().into_data_stream();
    let mut permit = budget.map(BodyBudget::empty_permit);
    let mut buf = Vec::new();
    let mut over = false;
    let mut drained = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(body_error)?;
        if !over && buf.len() + chunk.len() <= limit {
            if let (Some(budget), Some(permit)) = (budget, permit.as_mut()) {
                budget.take(permit, chunk.len()).await;
            }
            buf.extend_from_slice(&chunk);
            continue;
        }
        over = true;
        drained += chunk.len();
        if drained > DRAIN_BYTES {
            break;
        }
    }
    if over {
        let mut e = ApiError::from(ProtocolError::PayloadTooLarge { limit });
        e.close = true;
        return Err(e);
    }
    Ok((Bytes::from(buf), permit))
}

/// A request body that could not be read: 408 if it did not arrive in
/// time ([`crate::server::conn::TimedBody`]), 400 otherwise; either way the
/// connection closes.
pub fn body_error(e: axum::Error) -> ApiError {
    let inner = e.into_inner();
    let mut api = if is_body_timeout(inner.as_ref()) {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time",
        )
    } else {
        ApiError::bad_request(format!("could not read the request body: {inner}"))
    };
    api.close = true;
    api
}

/// A path that does not parse (a 400 naming the path).
pub fn path_rejection(r: PathRejection) -> ApiError {
    ApiError::bad_request(format!(
        "invalid path: {}",
        crate::error::Bare(&r.body_text())
    ))
}

/// A query string that does not parse (a 400 naming it).
pub fn query_rejection(r: QueryRejection) -> ApiError {
    ApiError::bad_request(format!(
        "invalid query string: {}",
        crate::error::Bare(&r.body_text())
    ))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body)).into_response();
        if self.close {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.authenticate {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"segq admin\""),
            );
        }
        resp
    }
}

/// The fallback for paths no route serves.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", crate::error::Bare(uri.path())))
}

/// The fallback for a known path with a method it does not serve (axum
/// adds the `Allow` header).
pub async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on this path"),
    )
}

/// The JSON success response.
pub fn json_response(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Partner, UserId};

    #[test]
    fn library_errors_map_to_statuses() {
        let cases: Vec<(Error, u16)> = vec![
            (
                Error::UnknownWorkspace {
                    name: "acme".into(),
                },
                404,
            ),
            (Error::UnknownKey { id: "k1".into() }, 404),
            (Error::UnknownUser("external_id:u1".into()), 404),
            (
                Error::DuplicateExternalId {
                    external_id: "u1".into(),
                    holder: UserId(3),
                },
                409,
            ),
            (
                Error::InvalidIdentifier {
                    kind: "device_id",
                    reason: "must be a non-empty string".into(),
                },
                400,
            ),
            (Error::InvalidWorkspaceName { name: "a b".into() }, 400),
            (
                Error::NoSuchCohort {
                    partner: Partner::Heap,
                    value: "x".into(),
                },
                404,
            ),
        ];
        for (e, status) in cases {
            let text = e.to_string();
            let api = ApiError::from(e);
            assert_eq!(api.status.as_u16(), status, "{text}");
            assert_eq!(api.message(), text);
        }
    }

    #[test]
    fn internal_failures_are_500_with_an_id_and_no_path() {
        let api = ApiError::from(Error::Internal(
            "encoding /data/workspaces/acme/MANIFEST failed".into(),
        ));
        assert_eq!(api.status, StatusCode::INTERNAL_SERVER_ERROR);
        let id = api.error_id().expect("an error id").to_string();
        assert!(id.starts_with("e-") && id.len() == 14, "{id}");
        assert!(api.message().contains(&id), "{}", api.message());
        let body = api.body.to_string();
        assert!(!body.contains('/') && !body.contains("MANIFEST"), "{body}");
        // Each failure its own id.
        let other = ApiError::from(Error::Internal("x".into()));
        assert_ne!(other.error_id(), Some(id.as_str()));
    }

    #[test]
    fn a_503_carries_no_path_nor_os_error() {
        let e = Error::WorkspaceFailed {
            name: "acme".into(),
            reason: "I/O error on /srv/segq/workspaces/acme/log-1.segqlog: No space left on device (os error 28)".into(),
        };
        let api = ApiError::from(e);
        assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE);
        let body = api.body.to_string();
        assert!(
            !body.contains("/srv") && !body.contains("os error"),
            "{body}"
        );
        assert!(body.contains("acme"), "{body}");
        assert!(api.error_id().is_some(), "{body}");

        let api = ApiError::from(Error::NotDurable {
            name: "acme".into(),
            reason: "the log write failed: I/O error on /srv/segq/workspaces/acme/log-1.segqlog: No space left on device (os error 28)".into(),
        });
        assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE);
        let body = api.body.to_string();
        assert!(
            !body.contains("/srv") && !body.contains("os error"),
            "{body}"
        );
        assert!(body.contains("not applied"), "{body}");

        let api = ApiError::from(Error::NotShipped {
            name: "acme".into(),
            store: "s3://segq-prod/eu".into(),
            waited_ms: 10_000,
        });
        assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(api.retry_after_secs, Some(1));
        let body = api.body.to_string();
        assert!(!body.contains("segq-prod"), "{body}");
        assert!(body.contains("retrying is safe"), "{body}");

        let api = ApiError::from(Error::Locked {
            path: "/srv/segq/LOCK".into(),
        });
        assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!api.body.to_string().contains("/srv"), "{}", api.body);
    }

    #[test]
    fn server_failures_hide_their_detail() {
        let e = Error::io("/secret/place/log", std::io::Error::other("disk on fire"));
        let api = ApiError::from(e);
        assert_eq!(api.status, StatusCode::INTERNAL_SERVER_ERROR);
        let body = api.body.to_string();
        assert!(!body.contains("/secret"), "{body}");
        assert!(!body.contains("fire"), "{body}");
        assert!(api.error_id().is_some(), "{body}");
    }

    #[test]
    fn protocol_errors_keep_their_shape_and_retry_after() {
        let api = ApiError::from(ProtocolError::RateLimited {
            retry_after_secs: 7,
        });
        assert_eq!(api.status, StatusCode::TOO_MANY_REQUESTS);
        let resp = api.into_response();
        assert_eq!(
            resp.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from(7u64))
        );
        assert_eq!(
            resp.headers().get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/json"))
        );

        let api = ApiError::from(ProtocolError::PayloadTooLarge { limit: 10 });
        assert_eq!(api.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(api.message().contains("10 bytes"));

        let api = ApiError::from_partner(Error::InvalidCohort(
            "cohort_id must be a valid string".into(),
        ));
        assert_eq!(api.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            api.body,
            json!({"message": "invalid cohort: cohort_id must be a valid string",
                   "errors": ["invalid cohort: cohort_id must be a valid string"]})
        );
    }
}
