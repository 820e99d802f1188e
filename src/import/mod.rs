//! The partner cohort import protocol (../shared/PROTOCOL.md): request
//! types, validation with the platform's error texts, and the response
//! bodies.
//!
//! Everything that speaks the protocol parses here: the HTTP server, the
//! demo and the tests. Parsing is strict about types and changes nothing;
//! a request validated whole is applied by
//! [`WorkspaceHandle`](crate::engine::WorkspaceHandle)
//! (`upsert_cohort`, `import_users`, `delete_cohort`), the one write path.

use chrono::{DateTime, FixedOffset};
use serde_json::{json, Value};

use crate::cohorts::{ChangeReport, CohortChange};

mod wire;

/// The most identifiers (user_ids, device_ids and aliases of all objects
/// together) one users request may carry.
pub const MAX_IDENTIFIERS: usize = 1_000;

/// The platform's error texts, word for word.
pub mod texts {
    /// A cohort_id that is missing or not a valid string.
    pub const COHORT_ID: &str = "cohort_id must be a valid string";
    /// A `cohort_changes` of the wrong shape.
    pub const COHORT_CHANGES: &str = "cohort_changes must be an array of objects each with key user_ids and/or device_ids mapping to an array of strings, or an aliases object";
    /// More than [`MAX_IDENTIFIERS`](super::MAX_IDENTIFIERS) identifiers in one request.
    pub const TOO_MANY: &str =
        "Only 1,000 user_ids, device_ids, and aliases are allowed per request";
    /// A name that is missing or empty.
    pub const NAME: &str = "name must be a non-empty string";
    /// A `created_at` that is not a valid ISO 8601 time.
    pub const CREATED_AT: &str = "created_at must be a valid time as an ISO-8601 string";
    /// A wrong partner API key.
    pub const BAD_PARTNER_KEY: &str = "Invalid Partner API key";
    /// A client secret that is no data import key of the partner.
    pub const BAD_CLIENT_SECRET: &str = "Invalid client secret";
    /// A partner the workspace has not enabled.
    pub const PARTNER_NOT_ENABLED: &str = "Partner not enabled for client";
}

/// A protocol-level failure, with the HTTP status it maps to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// 400 with `{"message", "errors"}`.
    #[error("{message}")]
    BadRequest {
        /// The first error, the platform's `message`.
        message: String,
        /// Every error found.
        errors: Vec<String>,
    },
    /// 401; never carries the secret.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 404: the URL names no partner segq knows.
    #[error("unknown partner {}", crate::error::Echo(.0))]
    UnknownPartner(String),
    /// 413.
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// 429 with `Retry-After`.
    #[error("rate limit exceeded; retry after {retry_after_secs} s")]
    RateLimited {
        /// Seconds until the key's bucket holds a token again.
        retry_after_secs: u64,
    },
}

impl ProtocolError {
    fn bad(errors: Vec<String>) -> Self {
        ProtocolError::BadRequest {
            message: errors.first().cloned().unwrap_or_default(),
            errors,
        }
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            ProtocolError::BadRequest { .. } => 400,
            ProtocolError::Unauthorized(_) => 401,
            ProtocolError::UnknownPartner(_) => 404,
            ProtocolError::PayloadTooLarge { .. } => 413,
            ProtocolError::RateLimited { .. } => 429,
        }
    }

    /// The JSON response body.
    pub fn body(&self) -> Value {
        match self {
            ProtocolError::BadRequest { message, errors } => {
                json!({"message": message, "errors": errors})
            }
            other => json!({"message": other.to_string()}),
        }
    }
}

/// The credentials every request carries in its body.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The partner's API key (`partner_api_key` in `segq.json`).
    pub partner_api_key: String,
    /// The data import key.
    pub client_secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

/// `POST /partners/{partner}/cohorts`.
#[derive(Clone, Debug, PartialEq)]
pub struct CohortRequest {
    /// The partner's credentials.
    pub credentials: Credentials,
    /// The partner's cohort_id.
    pub cohort_id: String,
    /// The cohort's name.
    pub name: String,
    /// When the partner created the cohort.
    pub created_at: DateTime<FixedOffset>,
}

/// `POST /partners/{partner}/cohorts/delete` (segq's own endpoint; the
/// platform has none).
#[derive(Clone, Debug, PartialEq)]
pub struct DeleteRequest {
    /// The partner's credentials.
    pub credentials: Credentials,
    /// The partner's cohort_id.
    pub cohort_id: String,
}

/// `POST /partners/{partner}/cohorts/users`.
#[derive(Clone, Debug, PartialEq)]
pub struct UsersRequest {
    /// The partner's credentials.
    pub credentials: Credentials,
    /// The partner's cohort_id.
    pub cohort_id: String,
    /// The membership changes, in order.
    pub cohort_changes: Vec<CohortChange>,
}

impl UsersRequest {
    /// Identifiers over all objects.
    pub fn identifiers(&self) -> usize {
        self.cohort_changes
            .iter()
            .map(CohortChange::identifiers)
            .sum()
    }
}

/// Reads a body as a JSON object's fields ([`wire`]), or says what it
/// is instead.
fn parse_body(body: &[u8]) -> Result<wire::Body, ProtocolError> {
    let bad_json = |e: serde_json::Error| {
        let msg = if body.iter().all(u8::is_ascii_whitespace) {
            "request body is empty: expected a JSON object".to_string()
        } else {
            format!("request body is not valid JSON: {e}")
        };
        ProtocolError::bad(vec![msg])
    };
    let Ok(text) = std::str::from_utf8(body) else {
        // Not UTF-8, so not JSON: the parser says where it fails.
        return Err(match serde_json::from_slice::<Value>(body) {
            Err(e) => bad_json(e),
            Ok(_) => ProtocolError::bad(vec!["request body is not valid UTF-8".into()]),
        });
    };
    match wire::read(text).map_err(bad_json)? {
        wire::Read::Object(b) => Ok(b),
        wire::Read::Not(kind) => Err(ProtocolError::bad(vec![format!(
            "request body must be a JSON object, found {kind}"
        )])),
    }
}

fn credentials(b: &wire::Body) -> Result<Credentials, ProtocolError> {
    let partner_api_key = match b.partner_api_key.value() {
        Some(s) if !s.is_empty() => s.clone(),
        _ => return Err(ProtocolError::Unauthorized(texts::BAD_PARTNER_KEY)),
    };
    let client_secret = match b.client_secret.value() {
        Some(s) if !s.is_empty() => s.clone(),
        _ => return Err(ProtocolError::Unauthorized(texts::BAD_CLIENT_SECRET)),
    };
    Ok(Credentials {
        partner_api_key,
        client_secret,
    })
}

fn cohort_id(b: &wire::Body, errors: &mut Vec<String>) -> String {
    match b.cohort_id.value() {
        Some(s) if crate::cohorts::check_cohort_id(s).is_ok() => s.clone(),
        _ => {
            errors.push(texts::COHORT_ID.into());
            String::new()
        }
    }
}

/// Parses a cohort's `created_at`: an ISO-8601 time with an offset
/// (`2021-01-21T19:20:30+05:00`, `...Z`, fractional seconds, or without
/// seconds) that the store can keep.
///
/// This is the one parser of the value: the wire validator, log replay
/// ([`crate::engine::record`]) and snapshot load use it, so whatever a
/// request is allowed to store reads back at start-up. A cohort's time is
/// stored as [`format_created_at`] writes it (RFC 3339), so a time that
/// does not read back from that text as the same instant with the same
/// offset is refused here: years outside 0000 to 9999 (RFC 3339 has four
/// digits), offsets with seconds.
pub fn parse_created_at(s: &str) -> Option<DateTime<FixedOffset>> {
    let t = parse_iso8601(s)?;
    let back = DateTime::parse_from_rfc3339(&format_created_at(&t)).ok()?;
    (back == t && back.offset() == t.offset()).then_some(t)
}

/// How a cohort's `created_at` is stored (log records, snapshots): RFC
/// 3339 with the offset the partner sent. [`parse_created_at`] reads it.
pub fn format_created_at(t: &DateTime<FixedOffset>) -> String {
    t.to_rfc3339()
}

/// The forms of ISO-8601 the wire accepts, before the check that the
/// value can be stored.
fn parse_iso8601(s: &str) -> Option<DateTime<FixedOffset>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t);
    }
    // chrono's `%:z` does not read `Z`; spell UTC as an offset.
    let utc;
    let s = match s.strip_suffix(['Z', 'z']) {
        Some(rest) => {
            utc = format!("{rest}+00:00");
            utc.as_str()
        }
        None => s,
    };
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M%:z")
        .ok()
        .or_else(|| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z").ok())
}

/// Parses and validates a create-or-rename request. Credentials are only
/// checked for presence here; the server checks their values.
pub fn parse_cohort_request(body: &[u8]) -> Result<CohortRequest, ProtocolError> {
    let b = parse_body(body)?;
    let credentials = credentials(&b)?;
    let mut errors = Vec::new();
    let cohort_id = cohort_id(&b, &mut errors);
    let name = match b.name.value() {
        Some(s) if crate::cohorts::check_cohort_name(s).is_ok() => s.clone(),
        _ => {
            errors.push(texts::NAME.into());
            String::new()
        }
    };
    let created_at = b.created_at.value().and_then(|s| parse_created_at(s));
    if created_at.is_none() {
        errors.push(texts::CREATED_AT.into());
    }
    match created_at {
        Some(created_at) if errors.is_empty() => Ok(CohortRequest {
            credentials,
            cohort_id,
            name,
            created_at,
        }),
        _ => Err(ProtocolError::bad(errors)),
    }
}

/// Parses and validates a delete request: credentials (presence) and
/// `cohort_id`, as the other endpoints check them.
pub fn parse_delete_request(body: &[u8]) -> Result<DeleteRequest, ProtocolError> {
    let b = parse_body(body)?;
    let credentials = credentials(&b)?;
    let mut errors = Vec::new();
    let cohort_id = cohort_id(&b, &mut errors);
    if !errors.is_empty() {
        return Err(ProtocolError::bad(errors));
    }
    Ok(DeleteRequest {
        credentials,
        cohort_id,
    })
}

/// An identifier the protocol accepts: a non-empty string. One longer
/// than [`MAX_IDENTIFIER_BYTES`](crate::users::MAX_IDENTIFIER_BYTES) can
/// never match: [`crate::cohorts::resolve`] counts it as unmatched (the
/// platform never fails a batch for an unknown id) and samples only its
/// beginning.
fn identifier_ok(s: &str) -> bool {
    !s.is_empty()
}

/// Parses and validates an add-or-remove-users request.
pub fn parse_users_request(body: &[u8]) -> Result<UsersRequest, ProtocolError> {
    let mut b = parse_body(body)?;
    let credentials = credentials(&b)?;
    let mut errors = Vec::new();
    let cohort_id = cohort_id(&b, &mut errors);
    let cohort_changes = match std::mem::take(&mut b.cohort_changes) {
        wire::Field::Value(c) => {
            let n: usize = c.iter().map(CohortChange::identifiers).sum();
            if n > MAX_IDENTIFIERS {
                errors.push(texts::TOO_MANY.into());
            }
            c
        }
        _ => {
            errors.push(texts::COHORT_CHANGES.into());
            Vec::new()
        }
    };
    if !errors.is_empty() {
        return Err(ProtocolError::bad(errors));
    }
    Ok(UsersRequest {
        credentials,
        cohort_id,
        cohort_changes,
    })
}

/// The success body of the users endpoint.
pub fn users_success_body(report: &ChangeReport) -> Value {
    json!({
        "message": "success",
        "matched": report.matched,
        "unmatched": report.unmatched,
        "refused_device_ids": report.refused_device_ids,
    })
}

/// The success body of the cohorts endpoint.
pub fn cohort_success_body() -> Value {
    json!({"message": "success"})
}

/// The partner endpoints.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /partners/{partner}/cohorts`
    Cohorts,
    /// `POST /partners/{partner}/cohorts/users`
    CohortUsers,
    /// `POST /partners/{partner}/cohorts/delete`
    CohortDelete,
}

impl Endpoint {
    /// Splits a request path into its partner and endpoint:
    /// `/partners/amplitude/cohorts/users` -> (`amplitude`, CohortUsers).
    pub fn route(path: &str) -> Option<(&str, Endpoint)> {
        let rest = path.strip_prefix("/partners/")?;
        let (partner, tail) = rest.split_once('/')?;
        match tail {
            "cohorts" => Some((partner, Endpoint::Cohorts)),
            "cohorts/users" => Some((partner, Endpoint::CohortUsers)),
            "cohorts/delete" => Some((partner, Endpoint::CohortDelete)),
            _ => None,
        }
    }
}
