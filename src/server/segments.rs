//! The segment API: audience sizes and estimates, the builder's breakdown,
//! member export, targeting look-ups and saved segments. Every route sits
//! behind a workspace API key ([`super::auth::require_access`]); bodies
//! and responses are JSON but for the member export.
//!
//! | Route | Does |
//! |---|---|
//! | `POST /workspaces/{ws}/segments/count[?explain=true]` | exact count, or an estimate with `"estimate": true` or `{...}` |
//! | `POST /workspaces/{ws}/segments/breakdown` | each top-level filter's count and the running count (estimated with `"estimate"`) |
//! | `POST /workspaces/{ws}/segments/members` | one page of members, JSON Lines or CSV, streamed |
//! | `POST /workspaces/{ws}/segments/check` | is a user (`"user"`) or are users (`"users"`) in the segment |
//! | `POST /workspaces/{ws}/users/segments` | is a user in each of `"segment_ids"` and/or `"filters"` |
//! | `POST /workspaces/{ws}/segments` `{"name","filter"}` | save a segment (201) |
//! | `GET /workspaces/{ws}/segments` | the saved segments |
//! | `GET /workspaces/{ws}/segments/{id}` | one saved segment |
//! | `PUT /workspaces/{ws}/segments/{id}` `{"name"?,"filter"?}` | rename and/or change the filter |
//! | `DELETE /workspaces/{ws}/segments/{id}` | delete |
//! | `GET /workspaces/{ws}/segments/{id}/size[?explain=true]` | a saved segment's count |
//! | `GET /workspaces/{ws}/partners/{partner}/cohorts` | the partner's cohorts, for the builder |
//!
//! A segment is named by `"filter"`, a JSON filter object (see
//! [`crate::segment::json`]; the stored form of a saved segment's filter is
//! accepted too) or a string in the text form (or JSON, if it starts with
//! `{`), or by `"segment_id"` of a saved segment: exactly one of the two.
//! Every answer computed on the workspace carries `"generation"`, the log
//! sequence number of the last change it saw.
//!
//! Every filter, given or saved, is refused (400) past the configured
//! `max_filter_nodes` ([`crate::segment::check_size`]), which bounds a
//! query's work. This module only reads requests and writes responses:
//! the queries are [`crate::query::service`]'s (the command line calls the
//! same), run on a blocking thread, but for O(1) work: a one-cohort count,
//! a live segment's size and a one-user check of a live segment or of a
//! filter of at most
//! [`crate::query::service::QUICK_CHECK_NODES`] nodes are answered on the
//! async worker when the workspace's lock is free (`count_quick`,
//! `check_user_quick`), with no hop to the blocking pool; the member
//! export streams its page in
//! blocks of [`STREAM_BLOCK`] users, taking the workspace's read lock
//! again per block to read their identifiers.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::engine::WorkspaceHandle;
use crate::error::Error;
use crate::ids::{Partner, BUCKETS};
use crate::query::render::{csv_header, render_members, Extras, Format};
use crate::query::service::{
    breakdown, check_user, check_user_quick, check_users, count, count_quick, member_page,
    page_limit, user_segments, CountMode, Sampling, Target, DEFAULT_SAMPLE_BUCKETS, STREAM_BLOCK,
};
use crate::query::Tradeoff;
use crate::query::{self};
use crate::segment::{self, Filter};
use crate::workspace::SavedSegment;

use super::error::{json_response, query_rejection, ApiError};
use super::extract::{parse_user_ref, run_blocking, workspace, Auditor, JsonBody, PathParams};
use super::AppState;

/// The most users one batch check may name.
pub const MAX_CHECK_USERS: usize = 10_000;
/// The most segments and filters one user's check may name.
pub const MAX_USER_SEGMENTS: usize = 1_000;
/// The response header that carries the next page's cursor.
pub const NEXT_CURSOR: &str = "x-next-cursor";
/// The response header that carries the generation a page was computed on.
pub const GENERATION: &str = "x-generation";

/// From a request's `filter` and `segment_id`: exactly one of the two.
pub fn target_from_parts(
    filter: Option<&Value>,
    segment_id: Option<&str>,
) -> std::result::Result<Target, ApiError> {
    match (filter, segment_id) {
        (Some(f), None) => Ok(Target::Filter(parse_filter(f, "filter")?)),
        (None, Some(id)) => Ok(Target::Segment(id.to_string())),
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "name the segment by \"filter\" or by \"segment_id\", not both",
        )),
        (None, None) => Err(ApiError::bad_request(
            "missing \"filter\" (a filter object or its text form) or \"segment_id\"",
        )),
    }
}

/// Parses a filter given in a request: a JSON filter object (or the stored
/// form of a saved segment's filter), or a string, parsed by
/// [`segment::parse`]. `what` names the field in errors.
pub fn parse_filter(v: &Value, what: &str) -> std::result::Result<Filter, ApiError> {
    // "filter parse error at ..." needs no "filter: " before it.
    let bad = |e: Error| match what {
        "filter" => ApiError::bad_request(e.to_string()),
        _ => ApiError::bad_request(format!("{what}: {e}")),
    };
    match v {
        Value::String(s) => segment::parse(s).map_err(bad),
        Value::Object(_) => {
            let text = v.to_string();
            match segment::json::parse(&text) {
                Ok(f) => Ok(f),
                // The stored form, if it is one, checked (bucket values,
                // cohort values, depth) by reading back its text form;
                // otherwise the JSON form's error.
                Err(e) => serde_json::from_value::<Filter>(v.clone())
                    .ok()
                    .and_then(|f| segment::text::parse(&f.to_string()).ok())
                    .filter(|f| {
                        let mut empty = false;
                        f.for_each_cohort(&mut |_, c, _| empty |= c.is_empty());
                        !empty
                    })
                    .ok_or_else(|| bad(Error::FilterParse(e))),
            }
        }
        _ => Err(ApiError::bad_request(format!(
            "{what} must be a filter object or a string in the text form"
        ))),
    }
}

/// A request body's fields, read one by one so that an error names the
/// field and says what it must be. `null` counts as absent.
pub struct Fields(Map<String, Value>);

impl Fields {
    /// The body's object; a key outside `allowed` is refused.
    pub fn new(body: Value, allowed: &[&str]) -> std::result::Result<Fields, ApiError> {
        let Value::Object(map) = body else {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        };
        if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            let known: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
            return Err(ApiError::bad_request(format!(
                "unknown field {k:?}; expected {}",
                known.join(", ")
            )));
        }
        Ok(Fields(map))
    }

    /// A field's value (`null` is absent).
    pub fn take(&mut self, k: &str) -> Option<Value> {
        self.0.remove(k).filter(|v| !v.is_null())
    }

    fn typed<T>(
        &mut self,
        k: &str,
        what: &str,
        f: impl FnOnce(&Value) -> Option<T>,
    ) -> std::result::Result<Option<T>, ApiError> {
        match self.take(k) {
            None => Ok(None),
            Some(v) => f(&v).map(Some).ok_or_else(|| {
                ApiError::bad_request(format!("{k} must be {what}, found {}", short(&v)))
            }),
        }
    }

    /// The field `k` as a boolean, if present.
    pub fn bool(&mut self, k: &str) -> std::result::Result<Option<bool>, ApiError> {
        self.typed(k, "true or false", Value::as_bool)
    }

    /// The field `k` as a whole number, if present.
    pub fn u64(&mut self, k: &str) -> std::result::Result<Option<u64>, ApiError> {
        self.typed(k, "a whole number", Value::as_u64)
    }

    /// The field `k` as a string, if present.
    pub fn string(&mut self, k: &str) -> std::result::Result<Option<String>, ApiError> {
        self.typed(k, "a string", |v| v.as_str().map(String::from))
    }

    /// The field `k` as an array, if present.
    pub fn array(&mut self, k: &str) -> std::result::Result<Option<Vec<Value>>, ApiError> {
        self.typed(k, "an array", |v| v.as_array().cloned())
    }

    /// The field `k` as an array of strings, if present.
    pub fn strings(&mut self, k: &str) -> std::result::Result<Option<Vec<String>>, ApiError> {
        self.typed(k, "an array of strings", |v| {
            v.as_array()?
                .iter()
                .map(|x| x.as_str().map(String::from))
                .collect()
        })
    }

    /// The `now` relative time tests are read at (RFC 3339), as seconds
    /// since the epoch, if present.
    pub fn now(&mut self) -> std::result::Result<Option<i64>, ApiError> {
        match self.string("now")? {
            None => Ok(None),
            Some(now) => crate::attributes::parse_time(&now)
                .map(Some)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "now must be an RFC 3339 time such as 2026-11-01T10:00:00Z, found {}",
                        short(&Value::String(now.clone()))
                    ))
                }),
        }
    }

    /// The `filter` or `segment_id` naming the segment.
    pub fn target(&mut self) -> std::result::Result<Target, ApiError> {
        let filter = self.take("filter");
        let id = self.string("segment_id")?;
        target_from_parts(filter.as_ref(), id.as_deref())
    }
}

/// A value as an error message shows it (cut as every echo is:
/// [`crate::error::Bare`]).
fn short(v: &Value) -> String {
    crate::error::Bare(&v.to_string()).to_string()
}

/// The `?explain=` query string.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainQuery {
    #[serde(default)]
    explain: bool,
}

fn explain_flag(
    q: std::result::Result<Query<ExplainQuery>, QueryRejection>,
) -> std::result::Result<bool, ApiError> {
    q.map(|Query(q)| q.explain).map_err(query_rejection)
}

// ----- counts -----

/// What a request's `"estimate"` asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EstimateAsk {
    /// `true`: the default chunk sample (or, with `sample_buckets` or
    /// `sample_start`, the bucket sample).
    Default,
    /// An object: one trade-off at most, and perhaps a seed.
    Options(Sampling),
}

/// Reads `"estimate"`: `true`/`false`, or an object with at most one of
/// `sample_fraction`, `max_relative_error`, `budget_ms` (a number in its
/// range) and an optional `seed` (a whole number). `None`: no estimate.
pub fn estimate_ask(v: Option<Value>) -> std::result::Result<Option<EstimateAsk>, ApiError> {
    const KEYS: [&str; 3] = ["sample_fraction", "max_relative_error", "budget_ms"];
    let map = match v {
        None | Some(Value::Bool(false)) => return Ok(None),
        Some(Value::Bool(true)) => return Ok(Some(EstimateAsk::Default)),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "estimate must be true, false or an object with one of \"sample_fraction\", \
                 \"max_relative_error\" or \"budget_ms\" (and optionally \"seed\"), found {}",
                short(&other)
            )))
        }
    };
    if let Some(k) = map
        .keys()
        .find(|k| !KEYS.contains(&k.as_str()) && k.as_str() != "seed")
    {
        return Err(ApiError::bad_request(format!(
            "estimate: unknown option {k:?}; expected one of \"sample_fraction\", \
             \"max_relative_error\", \"budget_ms\", and optionally \"seed\""
        )));
    }
    let given: Vec<&str> = KEYS
        .iter()
        .copied()
        .filter(|k| map.contains_key(*k))
        .collect();
    if given.len() > 1 {
        return Err(ApiError::bad_request(format!(
            "estimate: give one of \"sample_fraction\", \"max_relative_error\" and \
             \"budget_ms\", not {}",
            given.join(" and ")
        )));
    }
    let tradeoff = match given.first() {
        None => Tradeoff::Default,
        Some(&k) => {
            let v = &map[k];
            let x = v.as_f64().ok_or_else(|| {
                ApiError::bad_request(format!(
                    "estimate: {k} must be a number, found {}",
                    short(v)
                ))
            })?;
            Tradeoff::parse(k, x).map_err(|e| ApiError::bad_request(format!("estimate: {e}")))?
        }
    };
    let seed = match map.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ApiError::bad_request(format!(
                "estimate: seed must be a whole number, found {}",
                short(v)
            ))
        })?),
    };
    Ok(Some(EstimateAsk::Options(Sampling::new(tradeoff, seed))))
}

/// The count endpoint's body.
pub struct CountBody {
    target: Target,
    now: Option<i64>,
    estimate: Option<EstimateAsk>,
    sample_buckets: Option<u64>,
    sample_start: Option<u64>,
}

impl CountBody {
    fn parse(body: Value) -> std::result::Result<Self, ApiError> {
        let mut f = Fields::new(
            body,
            &[
                "filter",
                "segment_id",
                "estimate",
                "sample_buckets",
                "sample_start",
                "now",
            ],
        )?;
        let estimate = estimate_ask(f.take("estimate"))?;
        let target = f.target()?;
        Ok(CountBody {
            target,
            now: f.now()?,
            estimate,
            sample_buckets: f.u64("sample_buckets")?,
            sample_start: f.u64("sample_start")?,
        })
    }
}

fn count_mode(body: &CountBody, explain: bool) -> std::result::Result<CountMode, ApiError> {
    let buckets = body.sample_buckets.is_some() || body.sample_start.is_some();
    let Some(ask) = body.estimate else {
        if buckets {
            return Err(ApiError::bad_request(
                "sample_buckets and sample_start go with \"estimate\": true",
            ));
        }
        return Ok(CountMode::Exact { explain });
    };
    if explain {
        return Err(ApiError::bad_request(
            "explain applies to exact counts, not to estimates",
        ));
    }
    match ask {
        EstimateAsk::Options(_) if buckets => {
            return Err(ApiError::bad_request(
                "sample_buckets and sample_start go with \"estimate\": true (the bucket \
                 sample), not with estimate options",
            ))
        }
        EstimateAsk::Options(s) => return Ok(CountMode::Sampled(s)),
        EstimateAsk::Default if !buckets => {
            return Ok(CountMode::Sampled(Sampling::new(Tradeoff::Default, None)))
        }
        EstimateAsk::Default => {}
    }
    let width = match body.sample_buckets {
        None => DEFAULT_SAMPLE_BUCKETS,
        Some(w) if (1..=u64::from(BUCKETS)).contains(&w) => w as u16,
        Some(w) => {
            return Err(ApiError::bad_request(format!(
                "sample_buckets must be 1..=10000, found {w}"
            )))
        }
    };
    let start = match body.sample_start {
        None => rand::thread_rng().gen_range(0..BUCKETS),
        Some(s) if s < u64::from(BUCKETS) => s as u16,
        Some(s) => {
            return Err(ApiError::bad_request(format!(
                "sample_start must be 0..=9999, found {s}"
            )))
        }
    };
    Ok(CountMode::Estimate { start, width })
}

/// `POST /workspaces/{ws}/segments/count[?explain=true]`.
pub async fn count_handler(
    State(state): State<Arc<AppState>>,
    PathParams(ws): PathParams<String>,
    query: std::result::Result<Query<ExplainQuery>, QueryRejection>,
    JsonBody(body): JsonBody<Value>,
) -> std::result::Result<Response, ApiError> {
    let explain = explain_flag(query)?;
    let handle = workspace(&state, &ws)?;
    let body = CountBody::parse(body)?;
    let mode = count_mode(&body, explain)?;
    let (target, now) = (body.target, body.now);
    if now.is_none() {
        if let Some(out) = count_quick(&handle, &target, mode) {
            return Ok(json_response(StatusCode::OK, out));
        }
    }
    run_blocking(move || {
        let target = query::service::pin(&handle, target, now)?;
        Ok(json_response(
            StatusCode::OK,
            count(&handle, &target, mode)?,
        ))
    })
    .await
}

/// `GET /workspaces/{ws}/segments/{id}/size[?explain=true]`.
pub async fn size_handler(
    State(state): State<Arc<AppState>>,
    PathParams((ws, id)): PathParams<(String, String)>,
    query: std::result::Result<Query<ExplainQuery>, QueryRejection>,
) -> std::result::Result<Response, ApiError> {
    let explain = explain_flag(query)?;
    let handle = workspace(&state, &ws)?;
    let target = Target::Segment(id);
    let mode = CountMode::Exact { explain };
    let answer = |mut out: Value, target: Target| {
        if let Target::Segment(id) = target {
            out["segment_id"] = Value::String(id);
        }
        json_response(StatusCode::OK, out)
    };
    if let Some(out) = count_quick(&handle, &target, mode) {
        return Ok(answer(out, target));
    }
    run_blocking(move || Ok(answer(count(&handle, &target, mode)?, target))).await
}

// ----- breakdown -----

/// `POST /workspaces/{ws}/segments/breakdown`.
pub async fn breakdown_handler(
    State(state): State<Arc<AppState>>,
    PathParams(ws): PathParams<String>,
    JsonBody(body): JsonBody<Value>,
) -> std::result::Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    let mut f = Fields::new(body, &["filter", "segment_id", "estimate", "now"])?;
    let sampling = estimate_ask(f.take("estimate"))?.map(|ask| match ask {
        EstimateAsk::Default => Sampling::new(Tradeoff::Default, None),
        EstimateAsk::Options(s) => s,
    });
    let (target, now) = (f.target()?, f.now()?);
    run_blocking(move || {
        let target = query::service::pin(&handle, target, now)?;
        Ok(json_response(
            StatusCode::OK,
            breakdown(&handle, &target, sampling)?,
        ))
    })
    .await
}

// ----- member export -----

/// What the streaming body carries from block to block.
struct Streamer {
    handle: Arc<WorkspaceHandle>,
    members: Arc<Vec<u32>>,
    at: usize,
    header: Option<String>,
    format: Format,
    extras: Extras,
}

async fn next_block(
    mut s: Streamer,
) -> std::result::Result<Option<(Bytes, Streamer)>, std::io::Error> {
    if s.at >= s.members.len() && s.header.is_none() {
        return Ok(None);
    }
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(STREAM_BLOCK * 24);
        if let Some(h) = s.header.take() {
            out.extend_from_slice(h.as_bytes());
        }
        let end = (s.at + STREAM_BLOCK).min(s.members.len());
        {
            let ws = s.handle.read();
            render_members(&ws, &s.members[s.at..end], s.format, s.extras, &mut out);
        }
        s.at = end;
        Some((Bytes::from(out), s))
    })
    .await
    .map_err(std::io::Error::other)
}

/// `POST /workspaces/{ws}/segments/members`: one page, streamed; the next
/// page's cursor in `X-Next-Cursor` (absent on the last page).
pub async fn members_handler(
    State(state): State<Arc<AppState>>,
    PathParams(ws): PathParams<String>,
    JsonBody(body): JsonBody<Value>,
) -> std::result::Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    let mut f = Fields::new(
        body,
        &[
            "filter",
            "segment_id",
            "format",
            "limit",
            "cursor",
            "fields",
            "now",
        ],
    )?;
    let (target, now) = (f.target()?, f.now()?);
    let format = Format::parse(f.string("format")?.as_deref().unwrap_or("jsonl"))?;
    let extras = Extras::parse(&f.strings("fields")?.unwrap_or_default())?;
    let limit = match f.take("limit") {
        None => page_limit(None)?,
        Some(v) => page_limit(Some(v.as_u64().ok_or_else(|| {
            ApiError::bad_request(format!(
                "limit must be 1..={}, found {}",
                query::MAX_PAGE,
                short(&v)
            ))
        })?))?,
    };
    let cursor = f.string("cursor")?;
    let h = handle.clone();
    let page = tokio::task::spawn_blocking(move || {
        let target = query::service::pin(&h, target, now)?;
        member_page(&h, &target, cursor.as_deref(), limit)
    })
    .await
    .map_err(|e| ApiError::internal(format!("request task failed: {e}")))??;

    let streamer = Streamer {
        handle,
        members: Arc::new(page.members),
        at: 0,
        header: (format == Format::Csv).then(|| csv_header(extras)),
        format,
        extras,
    };
    let stream = futures_util::stream::try_unfold(streamer, next_block);
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    h.insert(GENERATION, HeaderValue::from(page.generation));
    if let Some(next) = page.next {
        let v = HeaderValue::from_str(&next)
            .map_err(|e| ApiError::internal(format!("cursor header: {e}")))?;
        h.insert(NEXT_CURSOR, v);
    }
    Ok(resp)
}

// ----- targeting look-ups -----

/// `POST /workspaces/{ws}/segments/check`: `"user"` → one answer;
/// `"users"` → `{"results": [...]}` in the same order.
pub async fn check_handler(
    State(state): State<Arc<AppState>>,
    PathParams(ws): PathParams<String>,
    JsonBody(body): JsonBody<Value>,
) -> std::result::Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    let mut f = Fields::new(body, &["filter", "segment_id", "user", "users", "now"])?;
    let (target, now) = (f.target()?, f.now()?);
    match (f.take("user"), f.array("users")?) {
        (Some(u), None) => {
            let user = parse_user_ref(&u).map_err(ApiError::bad_request)?;
            if now.is_none() {
                if let Some(out) = check_user_quick(&handle, &target, &user) {
                    return Ok(json_response(StatusCode::OK, out));
                }
            }
            run_blocking(move || {
                let target = query::service::pin(&handle, target, now)?;
                Ok(json_response(
                    StatusCode::OK,
                    check_user(&handle, &target, &user)?,
                ))
            })
            .await
        }
        (None, Some(list)) => {
            if list.len() > MAX_CHECK_USERS {
                return Err(ApiError::bad_request(format!(
                    "at most {MAX_CHECK_USERS} users per request, found {}",
                    list.len()
                )));
            }
            let users = list
                .iter()
                .enumerate()
                .map(|(i, v)| parse_user_ref(v).map_err(|e| format!("users[{i}]: {e}")))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(ApiError::bad_request)?;
            run_blocking(move || {
                let target = query::service::pin(&handle, target, now)?;
                Ok(json_response(
                    StatusCode::OK,
                    check_users(&handle, &target, &users)?,
                ))
            })
            .await
        }
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "send \"user\" (one user) or \"users\" (a list), not both",
        )),
        (None, None) => Err(ApiError::bad_request(
            "missing \"user\" (one user) or \"users\" (a list of users)",
        )),
    }
}

/// `POST /workspaces/{ws}/users/segments`: whether one user is in each of
/// `segment_ids` (results first, in order) and `filters` (then, in order).
pub async fn user_segments_handler(
    State(state): State<Arc<AppState>>,
    PathParams(ws): PathParams<String>,
    JsonBody(body): JsonBody<Value>,
) -> std::result::Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    let mut f = Fields::new(body, &["user", "segment_ids", "filters", "now"])?;
    let now = f.now()?;
    let user = f
        .take("user")
        .ok_or_else(|| ApiError::bad_request("missing \"user\": the user to check"))?;
    let user = parse_user_ref(&user).map_err(ApiError::bad_request)?;
    let ids = f.strings("segment_ids")?;
    let filters = f.array("filters")?;
    if ids.is_none() && filters.is_none() {
        return Err(ApiError::bad_request(
            "missing \"segment_ids\" (saved segments) or \"filters\" (filters)",
        ));
    }
    let ids = ids.unwrap_or_default();
    let filters = filters
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, v)| parse_filter(v, &format!("filters[{i}]")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if ids.len() + filters.len() > MAX_USER_SEGMENTS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_USER_SEGMENTS} segments and filters per request, found {}",
            ids.len() + filters.len()
        )));
    }
    run_blocking(move || {
        Ok(json_response(
            StatusCode::OK,
            user_segments(&handle, &ids, &filters, &user, now)?,
        ))
    })
    .await
}

// ----- saved segments -----

/// A saved segment as the API shows it: the filter as stored (cohorts by
/// cohort_id) in its JSON form and as text.
pub fn segment_json(s: &SavedSegment) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "filter": serde_json::to_value(&s.filter).unwrap_or(Value::Null),
        "text": s.filter.to_string(),
        "created_at": s.created_at.to_rfc3339(),
        "updated_at": s.updated_at.to_rfc3339(),
    })
}

/// `POST /workspaces/{ws}/segments`: 201 with the stored segment.
pub async fn create_segment(
    State(state): State<Arc<AppState>>,
    audit: Auditor,
    PathParams(ws): PathParams<String>,
    JsonBody(body): JsonBody<Value>,
) -> std::result::Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    let mut f = Fields::new(body, &["name", "filter"])?;
    let name = f
        .string("name")?
        .ok_or_else(|| ApiError::bad_request("missing \"name\": the segment's name"))?;
    let filter = f
        .take("filter")
        .ok_or_else(|| ApiError::bad_request("missing \"filter\": the segment's filter"))?;
    let filter = parse_filter(&filter, "filter")?;
    run_blocking(move || {
        let saved = audit.run("segment.created", || {
            handle.save_segment(None, &name, &filter)
        })?;
        let mut resp = json_response(StatusCode::CREATED, segment_json(&saved));
        let location = format!("/workspaces/{}/segments/{}", handle.name(), saved.id);
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        Ok(resp)
    })
    .await
}

/// `GET /workspaces/{ws}/segments`.
pub async fn list_segments(
    State(state): State<Arc<AppState>>,
    PathParams(ws): PathParams<String>,
) -> std::result::Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    run_blocking(move || {
        let ws = handle.read();
        let list: Vec<Value> = ws.segments.values().map(segment_json).collect();
        Ok(json_response(StatusCode::OK, Value::Array(list)))
    })
    .await
}

/// `GET /workspaces/{ws}/segments/{id}`.
pub async fn get_segment(
    State(state): State<Arc<AppState>>,
    PathParams((ws, id)): PathParams<(String, String)>,
) -> std::result::Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    run_blocking(move || {
        let ws = handle.read();
        let s = ws.segments.get(&id).ok_or(Error::UnknownSegment { id })?;
        Ok(json_response(StatusCode::OK, segment_json(s)))
    })
    .await
}

/// `PUT /workspaces/{ws}/segments/{id}`: rename and/or change the filter.
pub async fn update_segment(
    State(state): State<Arc<AppState>>,
    audit: Auditor,
    PathParams((ws, id)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> std::result::Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    let mut f = Fields::new(body, &["name", "filter"])?;
    let name = f.string("name")?;
    let filter = f
        .take("filter")
        .map(|v| parse_filter(&v, "filter"))
        .transpose()?;
    if name.is_none() && filter.is_none() {
        return Err(ApiError::bad_request(
            "nothing to update: send \"name\" and/or \"filter\"",
        ));
    }
    run_blocking(move || {
        let saved = audit.run("segment.updated", || {
            handle.update_segment(&id, name.as_deref(), filter.as_ref())
        })?;
        Ok(json_response(StatusCode::OK, segment_json(&saved)))
    })
    .await
}

/// `DELETE /workspaces/{ws}/segments/{id}`.
pub async fn delete_segment(
    State(state): State<Arc<AppState>>,
    audit: Auditor,
    PathParams((ws, id)): PathParams<(String, String)>,
) -> std::result::Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    run_blocking(move || {
        audit.run("segment.deleted", || handle.delete_segment(&id))?;
        Ok(json_response(
            StatusCode::OK,
            json!({"message": "segment deleted", "id": id}),
        ))
    })
    .await
}

/// `GET /workspaces/{ws}/partners/{partner}/cohorts`: the partner's cohorts
/// by cohort_id, for the builder's dropdown.
pub async fn partner_cohorts(
    State(state): State<Arc<AppState>>,
    PathParams((ws, partner)): PathParams<(String, String)>,
) -> std::result::Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    let partner: Partner = partner.parse().map_err(Error::from)?;
    run_blocking(move || {
        let ws = handle.read();
        let list: Vec<Value> = ws
            .cohorts
            .by_partner(partner)
            .into_iter()
            .map(|c| {
                json!({
                    "cohort_id": c.key.cohort_id,
                    "name": c.name,
                    "size": c.len(),
                    "last_sync": c.sync.last_sync.map(|t| t.to_rfc3339()),
                })
            })
            .collect();
        Ok(json_response(StatusCode::OK, Value::Array(list)))
    })
    .await
}

/// The query of `GET /workspaces/{ws}/attributes`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributesQuery {
    /// Common values shown per string attribute (default 10, at most 100).
    top: Option<usize>,
}

/// `GET /workspaces/{ws}/attributes`: every custom attribute with its
/// type, how many users have it, and for strings the most common values
/// (for the builder's pickers).
pub async fn attributes(
    State(state): State<Arc<AppState>>,
    PathParams(ws): PathParams<String>,
    query: std::result::Result<Query<AttributesQuery>, QueryRejection>,
) -> std::result::Result<Response, ApiError> {
    let Query(q) = query.map_err(query_rejection)?;
    let handle = workspace(&state, &ws)?;
    let top = q.top.unwrap_or(10).min(100);
    run_blocking(move || {
        let ws = handle.read();
        let list = serde_json::to_value(ws.attributes.summaries(top))
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(json_response(StatusCode::OK, list))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_in_requests() {
        let text = parse_filter(&json!("amplitude_cohorts includes_value \"c1\""), "filter");
        let obj = parse_filter(
            &json!({"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "c1"}),
            "filter",
        );
        let stored = parse_filter(
            &json!({"cohort": {"partner": "amplitude", "cohort": "c1", "includes": true}}),
            "filter",
        );
        let want = Filter::includes(Partner::Amplitude, "c1");
        for got in [text, obj, stored] {
            assert_eq!(got.ok(), Some(want.clone()));
        }
        for bad in [
            json!(3),
            json!(null),
            json!("amplitude_cohorts is \"c1\""),
            json!({"filter": "amplitude_cohorts", "comparison": "equals", "value": "c1"}),
            json!({"bucket": {"lt": 20000}}),
            json!({"cohort": {"partner": "amplitude", "cohort": "", "includes": true}}),
        ] {
            let e = parse_filter(&bad, "filter").expect_err("refused");
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.message().starts_with("filter"), "{}", e.message());
        }
    }
}
