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
use utoipa::{IntoParams, ToSchema};

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

use super::admin::Removed;
use super::error::{json_response, query_rejection, ApiError};
use super::extract::{parse_user_ref, run_blocking, workspace, Auditor, JsonBody, PathParams};
use super::openapi::{ErrorBody, Estimate, Filter as FilterSchema, UserRef as UserRefSchema};
use super::AppState;
use crate::attributes::AttributeSummary;

// ----- the bodies' and answers' schemas -----
//
// The bodies are read field by field ([`Fields`]) so that an error names
// the field; these types describe them for the OpenAPI document. Every
// body is an object whose unknown keys are refused, and a `null` field
// counts as absent. A segment is named by exactly one of `filter` and
// `segment_id`.

/// The body of `POST /workspaces/{ws}/segments/count`.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"filter": "amplitude_cohorts includes \"c-9f1e\" and random_bucket < 5000",
    "estimate": {"sample_fraction": 0.05, "seed": 7}}))]
pub struct CountRequest {
    /// The filter to count (or name a saved segment with `segment_id`).
    #[schema(value_type = Option<FilterSchema>)]
    filter: Option<Value>,
    /// A saved segment's id.
    segment_id: Option<String>,
    /// An estimate instead of the exact count.
    #[schema(value_type = Option<Estimate>)]
    estimate: Option<Value>,
    /// With `"estimate": true`: the bucket sample's width, 1..=10000.
    #[schema(minimum = 1, maximum = 10000)]
    sample_buckets: Option<u64>,
    /// With `"estimate": true`: the bucket sample's first bucket, 0..=9999.
    #[schema(minimum = 0, maximum = 9999)]
    sample_start: Option<u64>,
    /// The time relative time tests count back from (RFC 3339).
    #[schema(format = DateTime)]
    now: Option<String>,
}

/// The body of `POST /workspaces/{ws}/segments/breakdown`.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"filter": {"groups": [
    {"filters": [{"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "c-9f1e"}]},
    {"filters": [{"filter": "random_bucket", "comparison": "less_than", "value": 5000}]}]}}))]
pub struct BreakdownRequest {
    /// The filter to break down.
    #[schema(value_type = Option<FilterSchema>)]
    filter: Option<Value>,
    /// A saved segment's id.
    segment_id: Option<String>,
    /// Estimate every row on one chunk sample (as for counts).
    #[schema(value_type = Option<Estimate>)]
    estimate: Option<Value>,
    /// The time relative time tests count back from (RFC 3339).
    #[schema(format = DateTime)]
    now: Option<String>,
}

/// The format of a member page.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberFormat {
    /// JSON Lines (`application/x-ndjson`), the default.
    Jsonl,
    /// CSV with a header line (`text/csv`).
    Csv,
}

/// An optional column of a member page.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberField {
    /// The member's aliases.
    Aliases,
    /// The member's random bucket.
    Bucket,
}

/// The body of `POST /workspaces/{ws}/segments/members`.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"segment_id": "seg_5f2c9e0b7a1d4c3e", "format": "csv", "limit": 1000,
    "fields": ["aliases"]}))]
pub struct MembersRequest {
    /// The filter whose members to list.
    #[schema(value_type = Option<FilterSchema>)]
    filter: Option<Value>,
    /// A saved segment's id.
    segment_id: Option<String>,
    /// `jsonl` (the default) or `csv`.
    #[schema(inline)]
    format: Option<MemberFormat>,
    /// The page size.
    #[schema(minimum = 1)]
    limit: Option<u64>,
    /// The previous page's `X-Next-Cursor`.
    cursor: Option<String>,
    /// Extra columns.
    #[schema(inline)]
    fields: Option<Vec<MemberField>>,
    /// The time relative time tests count back from (RFC 3339).
    #[schema(format = DateTime)]
    now: Option<String>,
}

/// The body of `POST /workspaces/{ws}/segments/check`: one `user`, or
/// `users` (at most 10,000).
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"segment_id": "seg_5f2c9e0b7a1d4c3e", "user": {"external_id": "u-1"}}))]
pub struct CheckRequest {
    /// The filter to check against.
    #[schema(value_type = Option<FilterSchema>)]
    filter: Option<Value>,
    /// A saved segment's id.
    segment_id: Option<String>,
    /// One user.
    #[schema(value_type = Option<UserRefSchema>)]
    user: Option<Value>,
    /// Many users, answered in order.
    #[schema(max_items = 10000)]
    #[schema(value_type = Option<Vec<UserRefSchema>>)]
    users: Option<Vec<Value>>,
    /// The time relative time tests count back from (RFC 3339).
    #[schema(format = DateTime)]
    now: Option<String>,
}

/// The body of `POST /workspaces/{ws}/users/segments`: one user against
/// saved segments and filters (at most 1,000 in all).
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"user": {"external_id": "u-1"}, "segment_ids": ["seg_5f2c9e0b7a1d4c3e"],
    "filters": ["amplitude_cohorts includes \"c-9f1e\""]}))]
pub struct UserSegmentsRequest {
    /// The user.
    #[schema(value_type = UserRefSchema)]
    user: Value,
    /// Saved segments (answered first, in order).
    segment_ids: Option<Vec<String>>,
    /// Filters (answered next, in order).
    #[schema(value_type = Option<Vec<FilterSchema>>)]
    filters: Option<Vec<Value>>,
    /// The time relative time tests count back from (RFC 3339).
    #[schema(format = DateTime)]
    now: Option<String>,
}

/// The body of `POST /workspaces/{ws}/segments`.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Power users, half", "filter":
    "amplitude_cohorts includes \"c-9f1e\" and random_bucket < 5000"}))]
pub struct SegmentCreate {
    /// The segment's name.
    name: String,
    /// Its filter.
    #[schema(value_type = FilterSchema)]
    filter: Value,
}

/// The body of `PUT /workspaces/{ws}/segments/{id}`: a new name, a new
/// filter, or both.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Power users"}))]
pub struct SegmentUpdate {
    /// A new name.
    name: Option<String>,
    /// A new filter.
    #[schema(value_type = Option<FilterSchema>)]
    filter: Option<Value>,
}

/// A count: exact (`count`), or an estimate (`estimate`, `low`, `high`
/// and how it was sampled).
#[allow(dead_code)]
#[derive(ToSchema)]
#[schema(example = json!({"count": 61234, "generation": 1042, "took_us": 180}))]
pub struct CountAnswer {
    /// The exact count (absent from an estimate).
    count: Option<u64>,
    /// The log sequence number the answer was computed on.
    generation: u64,
    /// The time taken, in microseconds.
    took_us: Option<u64>,
    /// With `?explain=true`: the plan.
    #[schema(value_type = Option<Object>)]
    explain: Option<Value>,
    /// A saved segment's size: its id.
    segment_id: Option<String>,
    /// An estimate: the estimated count.
    estimate: Option<f64>,
    /// An estimate: the 95% interval's low end.
    low: Option<f64>,
    /// An estimate: the 95% interval's high end.
    high: Option<f64>,
    /// An estimate: 0.95.
    confidence: Option<f64>,
    /// An estimate: `chunks` or `buckets`.
    design: Option<String>,
    /// An estimate answered exactly (a single cohort, a live segment, a
    /// small plan): `true`, with the reason.
    exact: Option<bool>,
    /// An estimate: sampled users.
    sample_size: Option<u64>,
    /// An estimate: sampled users that matched.
    sample_matches: Option<u64>,
}

/// The builder's breakdown: each filter's own count and the running
/// count as the filters combine.
#[allow(dead_code)]
#[derive(ToSchema)]
#[schema(example = json!({"combinator": "and", "rows": [
    {"filter": "amplitude_cohorts includes \"c-9f1e\"", "count": 3, "running": 3},
    {"filter": "random_bucket < 5000", "count": 50210, "running": 2}],
    "generation": 1042, "took_us": 410}))]
pub struct BreakdownAnswer {
    /// How the top-level filters combine: `and` or `or`.
    combinator: String,
    /// One row per top-level filter (with `low`/`high` and
    /// `running_low`/`running_high` when estimated).
    #[schema(value_type = Vec<Object>)]
    rows: Vec<Value>,
    /// The log sequence number the answer was computed on.
    generation: u64,
    /// The time taken, in microseconds.
    took_us: u64,
}

/// Whether one user is in a segment.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"member": true, "user_id": 0, "generation": 1042}))]
pub struct CheckAnswer {
    /// Whether the user is a member.
    member: bool,
    /// The user's id, when the user exists.
    user_id: Option<u64>,
    /// Why the answer is `false` without a test (an unknown user).
    reason: Option<String>,
    /// The log sequence number the answer was computed on.
    generation: Option<u64>,
    /// In a user's segment list: the saved segment.
    segment_id: Option<String>,
    /// In a user's segment list: the filter, in the text form.
    filter: Option<String>,
}

/// Many answers, in the order asked.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"results": [{"member": true, "user_id": 0},
    {"member": false, "reason": "no user external_id:u-9"}], "generation": 1042}))]
pub struct CheckAnswers {
    /// One answer per user (or segment), in order.
    results: Vec<CheckAnswer>,
    /// The log sequence number the answers were computed on.
    generation: u64,
}

/// A saved segment.
#[allow(dead_code)]
#[derive(ToSchema)]
#[schema(example = json!({"id": "seg_5f2c9e0b7a1d4c3e", "name": "Power users, half",
    "filter": {"and": [{"cohort": {"partner": "amplitude", "cohort": "c-9f1e", "includes": true}},
                       {"bucket": {"lt": 5000}}]},
    "text": "amplitude_cohorts includes \"c-9f1e\" and random_bucket < 5000",
    "created_at": "2026-11-01T10:00:00+00:00", "updated_at": "2026-11-01T10:00:00+00:00"}))]
pub struct SavedSegmentAnswer {
    /// Its id.
    id: String,
    /// Its name.
    name: String,
    /// Its filter as stored (cohorts by cohort_id), accepted back as a
    /// filter.
    #[schema(value_type = Object)]
    filter: Value,
    /// Its filter in the text form.
    text: String,
    /// When it was created.
    #[schema(format = DateTime)]
    created_at: String,
    /// When it was last changed.
    #[schema(format = DateTime)]
    updated_at: String,
}

/// A partner's cohort, for the builder's list.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct PartnerCohort {
    /// The partner's id of the cohort.
    cohort_id: String,
    /// Its name.
    name: String,
    /// Its members.
    size: u64,
    /// Its last users request.
    #[schema(format = DateTime)]
    last_sync: Option<String>,
}

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
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExplainQuery {
    /// Add the plan to an exact count.
    #[serde(default)]
    explain: bool,
}

/// The check endpoint's answer: one, or many.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum CheckOneOrMany {
    /// For `user`.
    One(CheckAnswer),
    /// For `users`.
    Many(CheckAnswers),
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
#[utoipa::path(
    post,
    path = "/workspaces/{ws}/segments/count",
    operation_id = "count",
    tag = "segments",
    summary = "Count a segment's members, or estimate them",
    description = "The exact count, or with `estimate` an estimate with a 95% interval read \
        from a sample of whole chunks (65,536 consecutive users). An estimate is never dearer \
        than the exact count: when it would be, the answer is exact with `\"exact\": true` and \
        the reason. `?explain=true` adds the plan to an exact count.",
    params(ExplainQuery),
    request_body(content = CountRequest),
    responses(
        (status = 200, description = "The count or estimate.", body = CountAnswer),
        (status = 400, description = "A filter that does not parse or is too large, an unknown \
            field, an estimate option out of range.", body = ErrorBody,
         example = json!({"message": "unknown field \"filters\"; expected \"filter\", \"segment_id\", \"estimate\", \"sample_buckets\", \"sample_start\", \"now\""})),
        (status = 404, description = "No such saved segment, cohort or attribute (or no such \
            workspace).", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    get,
    path = "/workspaces/{ws}/segments/{id}/size",
    operation_id = "segment_size",
    tag = "saved segments",
    summary = "A saved segment's member count",
    description = "O(1): every saved segment is kept live.",
    params(ExplainQuery),
    responses(
        (status = 200, description = "The count.", body = CountAnswer,
         example = json!({"count": 3, "generation": 1042, "took_us": 1, "segment_id": "seg_5f2c9e0b7a1d4c3e"})),
        (status = 404, description = "No such saved segment (or no such workspace).", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    post,
    path = "/workspaces/{ws}/segments/breakdown",
    operation_id = "breakdown",
    tag = "segments",
    summary = "The segment builder's breakdown of a filter",
    description = "Each top-level filter's own count and the running count as the builder \
        combines them, in one pass; with `estimate`, every row on one chunk sample.",
    request_body(content = BreakdownRequest),
    responses(
        (status = 200, description = "The rows.", body = BreakdownAnswer),
        (status = 404, description = "No such saved segment, cohort or attribute (or no such \
            workspace).", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    post,
    path = "/workspaces/{ws}/segments/members",
    operation_id = "members",
    tag = "segments",
    summary = "A page of a segment's members",
    description = "JSON Lines (`{\"external_id\", \"user_id\"}` a line, plus the fields asked \
        for) or CSV, streamed. A cursor is bound to the workspace and the segment it was made \
        for; one from elsewhere, or altered, is a 400. In CSV a text cell a spreadsheet would \
        read as a formula is written with a `'` before it.",
    request_body(content = MembersRequest),
    responses(
        (status = 200, description = "One page.",
         headers(
            ("X-Next-Cursor" = String, description = "The next page's cursor; absent on the last page."),
            ("X-Generation" = u64, description = "The log sequence number the page was computed on."),
         ),
         content(
            (String = "application/x-ndjson",
             example = json!("{\"external_id\":\"u-1\",\"user_id\":0}\n{\"external_id\":\"u-2\",\"user_id\":1}\n")),
            (String = "text/csv",
             example = json!("external_id,user_id\nu-1,0\nu-2,1\n")),
         )),
        (status = 404, description = "No such saved segment, cohort or attribute (or no such \
            workspace).", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    post,
    path = "/workspaces/{ws}/segments/check",
    operation_id = "check",
    tag = "segments",
    summary = "Is a user (or are users) in a segment",
    description = "`user`: one answer; `users` (at most 10,000): `{\"results\"}` in the same \
        order. An unknown user answers `false` with a reason. A saved segment is answered from \
        its live bitmap.",
    request_body(content = CheckRequest),
    responses(
        (status = 200, description = "One answer (`user`), or the list (`users`).",
         body = CheckOneOrMany),
        (status = 404, description = "No such saved segment, cohort or attribute (or no such \
            workspace).", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    post,
    path = "/workspaces/{ws}/users/segments",
    operation_id = "user_segments",
    tag = "segments",
    summary = "Which of these segments is a user in",
    description = "The saved segments first (each answer with its `segment_id`), then the \
        filters (each with its `filter` in the text form), in order; at most 1,000 in all.",
    request_body(content = UserSegmentsRequest),
    responses(
        (status = 200, description = "The answers.", body = CheckAnswers,
         example = json!({"results": [{"segment_id": "seg_5f2c9e0b7a1d4c3e", "member": true, "user_id": 0},
            {"filter": "amplitude_cohorts includes \"c-9f1e\"", "member": true, "user_id": 0}],
            "generation": 1042})),
        (status = 404, description = "No such saved segment (or no such workspace).", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    post,
    path = "/workspaces/{ws}/segments",
    operation_id = "create_segment",
    tag = "saved segments",
    summary = "Save a segment",
    description = "The filter is stored with cohorts by cohort_id, so renames break nothing, and \
        kept live: evaluated once, then updated by each write.",
    request_body(content = SegmentCreate),
    responses(
        (status = 201, description = "Saved.", body = SavedSegmentAnswer,
         headers(("Location" = String, description = "The segment's URL."))),
        (status = 404, description = "A cohort, attribute or saved segment the filter names does \
            not exist (or no such workspace).", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    get,
    path = "/workspaces/{ws}/segments",
    operation_id = "list_segments",
    tag = "saved segments",
    summary = "List the saved segments",
    responses(
        (status = 200, description = "Every saved segment.", body = Vec<SavedSegmentAnswer>),
    )
)]
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
#[utoipa::path(
    get,
    path = "/workspaces/{ws}/segments/{id}",
    operation_id = "get_segment",
    tag = "saved segments",
    summary = "Read a saved segment",
    responses(
        (status = 200, description = "The segment.", body = SavedSegmentAnswer),
        (status = 404, description = "No such saved segment (or no such workspace).", body = ErrorBody,
         example = json!({"message": "no saved segment \"seg_x\" in this workspace"})),
    )
)]
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
#[utoipa::path(
    put,
    path = "/workspaces/{ws}/segments/{id}",
    operation_id = "update_segment",
    tag = "saved segments",
    summary = "Rename a saved segment or change its filter",
    request_body(content = SegmentUpdate),
    responses(
        (status = 200, description = "The segment as now stored.", body = SavedSegmentAnswer),
        (status = 404, description = "No such saved segment (or no such workspace).", body = ErrorBody),
        (status = 409, description = "The new filter would make segments refer to each other \
            in a cycle.", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    delete,
    path = "/workspaces/{ws}/segments/{id}",
    operation_id = "delete_segment",
    tag = "saved segments",
    summary = "Delete a saved segment",
    responses(
        (status = 200, description = "Deleted.", body = Removed,
         example = json!({"message": "segment deleted", "id": "seg_5f2c9e0b7a1d4c3e"})),
        (status = 404, description = "No such saved segment (or no such workspace).", body = ErrorBody),
        (status = 409, description = "Other saved segments use it; the message names them.",
         body = ErrorBody),
    )
)]
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
#[utoipa::path(
    get,
    path = "/workspaces/{ws}/partners/{partner}/cohorts",
    operation_id = "partner_cohorts",
    tag = "segments",
    summary = "A partner's cohorts, for the builder's list",
    responses(
        (status = 200, description = "By cohort_id.", body = Vec<PartnerCohort>,
         example = json!([{"cohort_id": "c-9f1e", "name": "Power users (30d)", "size": 3,
                           "last_sync": "2026-11-01T10:00:00+00:00"}])),
    )
)]
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
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AttributesQuery {
    /// How many common values to show per string attribute (default 10,
    /// at most 100).
    #[param(minimum = 0, example = 10)]
    top: Option<usize>,
}

/// `GET /workspaces/{ws}/attributes`: every custom attribute with its
/// type, how many users have it, and for strings the most common values
/// (for the builder's pickers).
#[utoipa::path(
    get,
    path = "/workspaces/{ws}/attributes",
    operation_id = "attributes",
    tag = "segments",
    summary = "The custom attributes",
    description = "Every custom attribute with its type, how many users have it and, for \
        strings, the most common values (for the builder's pickers).",
    params(AttributesQuery),
    responses(
        (status = 200, description = "The attributes.", body = Vec<AttributeSummary>),
    )
)]
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
