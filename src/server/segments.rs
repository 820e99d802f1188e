//! The segment API: audience sizes and estimates, the builder's breakdown,
//! member export, targeting look-ups and saved segments. Every route sits
//! behind the admin bearer token ([`super::auth::require_admin`]); bodies
//! and responses are JSON but for the member export.
//!
//! | Route | Does |
//! |---|---|
//! | `POST /workspaces/{ws}/segments/count[?explain=true]` | exact count, or an estimate with `"estimate": true` |
//! | `POST /workspaces/{ws}/segments/breakdown` | each top-level filter's count and the running count |
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
//! query's work. The queries take the workspace's read lock on a blocking
//! thread, and only briefly: counts, estimates and breakdowns take a
//! [`Frozen`] view under it (time proportional to the filter) and evaluate
//! after releasing it; the member export computes its page in chunks of
//! [`PAGE_CHUNK`] members, releasing the lock between them, then streams
//! it in blocks of [`STREAM_BLOCK`] users, taking the lock again per block
//! to read their identifiers; checks hold it for one bounded evaluation.

use std::borrow::Cow;
use std::io::Write as _;
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
use crate::error::{Error, Result};
use crate::ids::{Partner, UserId, UserRef, BUCKETS};
use crate::query::{self, Check, CursorScope};
use crate::segment::fast::Frozen;
use crate::segment::{self, Filter};
use crate::workspace::{SavedSegment, Workspace};

use super::admin::{parse_user_ref, JsonBody, PathParams};
use super::error::{json_response, query_rejection, ApiError};
use super::partner::run_blocking;
use super::AppState;

/// The page size of the member export when the request names none.
pub const DEFAULT_LIMIT: u64 = 10_000;
/// The most users one batch check may name.
pub const MAX_CHECK_USERS: usize = 10_000;
/// The most segments and filters one user's check may name.
pub const MAX_USER_SEGMENTS: usize = 1_000;
/// The default sample of an estimate, in buckets (10% of the users).
pub const DEFAULT_SAMPLE_BUCKETS: u16 = 1_000;
/// Members computed per read lock while a page is gathered.
pub const PAGE_CHUNK: usize = 65_536;
/// Users rendered per read lock while a page is streamed.
pub const STREAM_BLOCK: usize = 4_096;
/// The response header that carries the next page's cursor.
pub const NEXT_CURSOR: &str = "x-next-cursor";
/// The response header that carries the generation a page was computed on.
pub const GENERATION: &str = "x-generation";

/// What a request names: a filter, or a saved segment.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Filter(Filter),
    Segment(String),
}

impl Target {
    /// From a request's `filter` and `segment_id`: exactly one of the two.
    pub fn from_parts(
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

    /// The filter, as the workspace holds it now.
    pub fn filter<'a>(&'a self, ws: &'a Workspace) -> Result<Cow<'a, Filter>> {
        match self {
            Target::Filter(f) => Ok(Cow::Borrowed(f)),
            Target::Segment(id) => ws
                .segments
                .get(id)
                .map(|s| Cow::Borrowed(&s.filter))
                .ok_or_else(|| Error::UnknownSegment { id: id.clone() }),
        }
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

fn workspace(state: &AppState, name: &str) -> std::result::Result<Arc<WorkspaceHandle>, ApiError> {
    state.engine.workspace(name).ok_or_else(|| {
        Error::UnknownWorkspace {
            name: name.to_string(),
        }
        .into()
    })
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::Internal(format!("cannot serialise: {e}")))
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

    pub fn bool(&mut self, k: &str) -> std::result::Result<Option<bool>, ApiError> {
        self.typed(k, "true or false", Value::as_bool)
    }

    pub fn u64(&mut self, k: &str) -> std::result::Result<Option<u64>, ApiError> {
        self.typed(k, "a whole number", Value::as_u64)
    }

    pub fn string(&mut self, k: &str) -> std::result::Result<Option<String>, ApiError> {
        self.typed(k, "a string", |v| v.as_str().map(String::from))
    }

    pub fn array(&mut self, k: &str) -> std::result::Result<Option<Vec<Value>>, ApiError> {
        self.typed(k, "an array", |v| v.as_array().cloned())
    }

    pub fn strings(&mut self, k: &str) -> std::result::Result<Option<Vec<String>>, ApiError> {
        self.typed(k, "an array of strings", |v| {
            v.as_array()?
                .iter()
                .map(|x| x.as_str().map(String::from))
                .collect()
        })
    }

    /// The `filter` or `segment_id` naming the segment.
    pub fn target(&mut self) -> std::result::Result<Target, ApiError> {
        let filter = self.take("filter");
        let id = self.string("segment_id")?;
        Target::from_parts(filter.as_ref(), id.as_deref())
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

/// How to count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountMode {
    Exact {
        explain: bool,
    },
    /// `width` buckets from `start`.
    Estimate {
        start: u16,
        width: u16,
    },
}

/// A frozen view of what `target` needs (with every bucket if `buckets`),
/// taken under the workspace's read lock, which is released on return; the
/// filter (checked against `max_filter_nodes`) and the generation seen.
pub fn freeze(
    handle: &WorkspaceHandle,
    target: &Target,
    buckets: bool,
) -> Result<(Frozen, Filter, u64)> {
    let (ws, generation) = handle.view();
    let filter = target.filter(&ws)?;
    handle.check_filter(&filter)?;
    let frozen = Frozen::new(&ws, handle.bitmaps(), &[&filter], buckets)?;
    Ok((frozen, filter.into_owned(), generation))
}

/// The count (or estimate) of a segment, as the count endpoint answers it.
/// Evaluated on a frozen view, without the workspace's lock.
pub fn count(handle: &WorkspaceHandle, target: &Target, mode: CountMode) -> Result<Value> {
    let estimate = matches!(mode, CountMode::Estimate { .. });
    let (frozen, filter, generation) = freeze(handle, target, estimate)?;
    match mode {
        CountMode::Exact { explain } => {
            let c = query::count_in(&frozen, &filter, explain)?;
            let mut out = json!({"count": c.count, "generation": generation, "took_us": c.took_us});
            if let Some(e) = &c.explain {
                out["explain"] = to_value(e)?;
            }
            Ok(out)
        }
        CountMode::Estimate { start, width } => {
            let e = query::estimate_in(&frozen, &filter, start, width)?;
            Ok(json!({
                "estimate": e.estimate,
                "low": e.low,
                "high": e.high,
                "confidence": e.confidence,
                "sample_size": e.sample_size,
                "sample_matches": e.sample_matches,
                "sample_start": start,
                "sample_buckets": width,
                "sampled_ranges": e.sample_buckets,
                "generation": generation,
                "took_us": e.took_us,
            }))
        }
    }
}

/// The breakdown of a segment, as the breakdown endpoint answers it.
/// Evaluated on a frozen view, without the workspace's lock.
pub fn breakdown(handle: &WorkspaceHandle, target: &Target) -> Result<Value> {
    let t = std::time::Instant::now();
    let (frozen, filter, generation) = freeze(handle, target, false)?;
    let (combinator, rows) = query::breakdown_in(&frozen, &filter)?;
    Ok(json!({
        "combinator": combinator,
        "rows": to_value(&rows)?,
        "generation": generation,
        "took_us": t.elapsed().as_micros() as u64,
    }))
}

/// The count endpoint's body.
pub struct CountBody {
    target: Target,
    estimate: bool,
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
            ],
        )?;
        Ok(CountBody {
            target: f.target()?,
            estimate: f.bool("estimate")?.unwrap_or(false),
            sample_buckets: f.u64("sample_buckets")?,
            sample_start: f.u64("sample_start")?,
        })
    }
}

fn count_mode(body: &CountBody, explain: bool) -> std::result::Result<CountMode, ApiError> {
    if !body.estimate {
        if body.sample_buckets.is_some() || body.sample_start.is_some() {
            return Err(ApiError::bad_request(
                "sample_buckets and sample_start go with \"estimate\": true",
            ));
        }
        return Ok(CountMode::Exact { explain });
    }
    if explain {
        return Err(ApiError::bad_request(
            "explain applies to exact counts, not to estimates",
        ));
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
    let target = body.target;
    run_blocking(move || {
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
    run_blocking(move || {
        let mut out = count(
            &handle,
            &Target::Segment(id.clone()),
            CountMode::Exact { explain },
        )?;
        out["segment_id"] = Value::String(id);
        Ok(json_response(StatusCode::OK, out))
    })
    .await
}

// ----- breakdown -----

/// `POST /workspaces/{ws}/segments/breakdown`.
pub async fn breakdown_handler(
    State(state): State<Arc<AppState>>,
    PathParams(ws): PathParams<String>,
    JsonBody(body): JsonBody<Value>,
) -> std::result::Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    let target = Fields::new(body, &["filter", "segment_id"])?.target()?;
    run_blocking(move || Ok(json_response(StatusCode::OK, breakdown(&handle, &target)?))).await
}

// ----- member export -----

/// The export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format> {
        match s {
            "jsonl" => Ok(Format::Jsonl),
            "csv" => Ok(Format::Csv),
            other => Err(Error::InvalidArgument(format!(
                "format {other:?}: expected \"jsonl\" or \"csv\""
            ))),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Jsonl => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// The optional columns of an export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extras {
    pub aliases: bool,
    pub bucket: bool,
}

impl Extras {
    pub fn parse<S: AsRef<str>>(fields: &[S]) -> Result<Extras> {
        let mut x = Extras::default();
        for f in fields {
            match f.as_ref() {
                "aliases" => x.aliases = true,
                "bucket" => x.bucket = true,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "unknown field {other:?} in fields: expected \"aliases\" or \"bucket\""
                    )))
                }
            }
        }
        Ok(x)
    }
}

/// Checks a page size: 1..=[`query::MAX_PAGE`].
pub fn page_limit(limit: Option<u64>) -> Result<usize> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        n @ 1.. if n <= query::MAX_PAGE as u64 => Ok(n as usize),
        n => Err(Error::InvalidArgument(format!(
            "limit must be 1..={}, found {n}",
            query::MAX_PAGE
        ))),
    }
}

/// A page of members, gathered.
#[derive(Clone, Debug)]
pub struct MemberPage {
    pub members: Vec<u32>,
    /// The next page's cursor, in its text form.
    pub next: Option<String>,
    /// The generation of the first chunk.
    pub generation: u64,
}

/// Gathers one page: the filter (cohort names resolved to ids, so that a
/// cursor does not depend on how a cohort was named), the cursor checked
/// against it and the workspace ([`CursorScope`]), then `limit` members in chunks of [`PAGE_CHUNK`], the read
/// lock released between chunks.
pub fn member_page(
    handle: &WorkspaceHandle,
    target: &Target,
    cursor: Option<&str>,
    limit: usize,
) -> Result<MemberPage> {
    let (filter, scope, mut from, generation) = {
        let (ws, generation) = handle.view();
        let given = target.filter(&ws)?;
        handle.check_filter(&given)?;
        let filter = segment::resolve(&ws, &given)?;
        let scope = CursorScope::new(&ws, &filter);
        let from = cursor.map(|c| scope.decode(c)).transpose()?;
        (filter, scope, from, generation)
    };
    let mut members: Vec<u32> = Vec::with_capacity(limit.min(PAGE_CHUNK));
    loop {
        let take = (limit - members.len()).min(PAGE_CHUNK);
        let page = {
            let ws = handle.read();
            query::members_page(&ws, handle.bitmaps(), &filter, from, take)?
        };
        members.extend(page.members.iter().map(|u| u.0));
        from = page.next;
        if from.is_none() || members.len() >= limit {
            break;
        }
    }
    Ok(MemberPage {
        members,
        next: from.map(|c| scope.encode(c)),
        generation,
    })
}

/// The CSV header line.
pub fn csv_header(extras: Extras) -> String {
    let mut h = String::from("external_id,user_id");
    if extras.aliases {
        h.push_str(",aliases");
    }
    if extras.bucket {
        h.push_str(",bucket");
    }
    h.push('\n');
    h
}

/// Whether a spreadsheet would read a cell starting so as a formula.
fn formula_like(s: &str) -> bool {
    s.starts_with(['=', '+', '-', '@', '\t', '\r'])
}

/// Writes a text cell: a value a spreadsheet would take for a formula
/// (one starting with `=`, `+`, `-`, `@`, a tab or a carriage return) gets
/// a `'` before it, as spreadsheet exporters do; then the cell is quoted
/// if it holds a comma, a quote or a line break.
fn csv_field(out: &mut Vec<u8>, s: &str) {
    let neutralised;
    let s = if formula_like(s) {
        neutralised = format!("'{s}");
        neutralised.as_str()
    } else {
        s
    };
    if s.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        for part in s.split('"').enumerate() {
            if part.0 > 0 {
                out.extend_from_slice(b"\"\"");
            }
            out.extend_from_slice(part.1.as_bytes());
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn aliases_json(out: &mut Vec<u8>, aliases: &[(Box<str>, Box<str>)]) {
    out.push(b'[');
    for (i, (label, name)) in aliases.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"alias_label\":");
        json_string(out, label);
        out.extend_from_slice(b",\"alias_name\":");
        json_string(out, name);
        out.push(b'}');
    }
    out.push(b']');
}

/// Renders members: one JSON object per line
/// (`{"external_id": …}`, or `{"user_id": N}` for an anonymous user, plus
/// `"aliases"` and `"bucket"` when asked), or CSV rows under
/// [`csv_header`], where exactly one of `external_id` and `user_id` is set,
/// `aliases` is the JSON array of the line form (empty when none).
pub fn render_members(
    ws: &Workspace,
    members: &[u32],
    format: Format,
    extras: Extras,
    out: &mut Vec<u8>,
) {
    for &u in members {
        let user = UserId(u);
        let ext = ws.users.external_id(user);
        let rec = extras.aliases.then(|| ws.users.get(user)).flatten();
        let aliases = rec.as_ref().map_or(&[][..], |r| &r.aliases[..]);
        let bucket = ws.users.bucket(user).unwrap_or(0);
        match format {
            Format::Jsonl => {
                match ext {
                    Some(e) => {
                        out.extend_from_slice(b"{\"external_id\":");
                        json_string(out, e);
                    }
                    None => {
                        let _ = write!(out, "{{\"user_id\":{u}");
                    }
                }
                if extras.aliases {
                    out.extend_from_slice(b",\"aliases\":");
                    aliases_json(out, aliases);
                }
                if extras.bucket {
                    let _ = write!(out, ",\"bucket\":{bucket}");
                }
                out.extend_from_slice(b"}\n");
            }
            Format::Csv => {
                match ext {
                    Some(e) => {
                        csv_field(out, e);
                        out.push(b',');
                    }
                    None => {
                        let _ = write!(out, ",{u}");
                    }
                }
                if extras.aliases {
                    out.push(b',');
                    if !aliases.is_empty() {
                        let mut a = Vec::new();
                        aliases_json(&mut a, aliases);
                        csv_field(out, &String::from_utf8_lossy(&a));
                    }
                }
                if extras.bucket {
                    let _ = write!(out, ",{bucket}");
                }
                out.push(b'\n');
            }
        }
    }
}

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
        ],
    )?;
    let target = f.target()?;
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
    let page =
        tokio::task::spawn_blocking(move || member_page(&h, &target, cursor.as_deref(), limit))
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

fn check_json(c: &Check) -> Value {
    let mut o = Map::new();
    o.insert("member".into(), Value::Bool(c.member));
    if let Some(u) = c.user_id {
        o.insert("user_id".into(), json!(u.0));
    }
    if let Some(r) = &c.reason {
        o.insert("reason".into(), Value::String(r.clone()));
    }
    Value::Object(o)
}

/// One user's check, as the check endpoint answers it.
pub fn check_user(handle: &WorkspaceHandle, target: &Target, user: &UserRef) -> Result<Value> {
    let (ws, generation) = handle.view();
    let filter = target.filter(&ws)?;
    handle.check_filter(&filter)?;
    let checks = query::check(&ws, handle.bitmaps(), &[&filter], user)?;
    let mut out = checks.first().map(check_json).unwrap_or_else(|| json!({}));
    out["generation"] = json!(generation);
    Ok(out)
}

/// `POST /workspaces/{ws}/segments/check`: `"user"` → one answer;
/// `"users"` → `{"results": [...]}` in the same order.
pub async fn check_handler(
    State(state): State<Arc<AppState>>,
    PathParams(ws): PathParams<String>,
    JsonBody(body): JsonBody<Value>,
) -> std::result::Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    let mut f = Fields::new(body, &["filter", "segment_id", "user", "users"])?;
    let target = f.target()?;
    match (f.take("user"), f.array("users")?) {
        (Some(u), None) => {
            let user = parse_user_ref(&u).map_err(ApiError::bad_request)?;
            run_blocking(move || {
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
                let (ws, generation) = handle.view();
                let filter = target.filter(&ws)?;
                handle.check_filter(&filter)?;
                let checks = query::check_many(&ws, handle.bitmaps(), &filter, &users)?;
                drop(ws);
                let results: Vec<Value> = checks.iter().map(check_json).collect();
                Ok(json_response(
                    StatusCode::OK,
                    json!({"results": results, "generation": generation}),
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
    let mut f = Fields::new(body, &["user", "segment_ids", "filters"])?;
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
        let (ws, generation) = handle.view();
        let mut all: Vec<&Filter> = Vec::with_capacity(ids.len() + filters.len());
        for id in &ids {
            let s = ws
                .segments
                .get(id)
                .ok_or_else(|| Error::UnknownSegment { id: id.clone() })?;
            all.push(&s.filter);
        }
        all.extend(filters.iter());
        for f in &all {
            handle.check_filter(f)?;
        }
        let checks = query::check(&ws, handle.bitmaps(), &all, &user)?;
        let results: Vec<Value> = checks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut v = check_json(c);
                match ids.get(i) {
                    Some(id) => v["segment_id"] = Value::String(id.clone()),
                    None => {
                        if let Some(f) = all.get(i) {
                            v["filter"] = Value::String(f.to_string());
                        }
                    }
                }
                v
            })
            .collect();
        drop(ws);
        Ok(json_response(
            StatusCode::OK,
            json!({"results": results, "generation": generation}),
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
        let saved = handle.save_segment(None, &name, &filter)?;
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
        let saved = handle.update_segment(&id, name.as_deref(), filter.as_ref())?;
        Ok(json_response(StatusCode::OK, segment_json(&saved)))
    })
    .await
}

/// `DELETE /workspaces/{ws}/segments/{id}`.
pub async fn delete_segment(
    State(state): State<Arc<AppState>>,
    PathParams((ws, id)): PathParams<(String, String)>,
) -> std::result::Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    run_blocking(move || {
        handle.delete_segment(&id)?;
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
    let partner: Partner = partner.parse()?;
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

    #[test]
    fn limits_formats_and_fields() {
        assert_eq!(page_limit(None).ok(), Some(10_000));
        assert_eq!(page_limit(Some(1)).ok(), Some(1));
        assert_eq!(page_limit(Some(1_000_000)).ok(), Some(1_000_000));
        assert!(page_limit(Some(0)).is_err());
        assert!(page_limit(Some(1_000_000_000)).is_err());
        assert!(Format::parse("xml").is_err());
        assert_eq!(
            Extras::parse(&["bucket"]).ok(),
            Some(Extras {
                aliases: false,
                bucket: true
            })
        );
        assert!(Extras::parse(&["email"]).is_err());
    }

    #[test]
    fn csv_quoting() {
        let mut out = Vec::new();
        csv_field(&mut out, "plain");
        out.push(b' ');
        csv_field(&mut out, "a,\"b\"\nc");
        assert_eq!(String::from_utf8_lossy(&out), "plain \"a,\"\"b\"\"\nc\"");
    }

    #[test]
    fn csv_cells_that_look_like_formulas_are_neutralised() {
        let cell = |v: &str| {
            let mut out = Vec::new();
            csv_field(&mut out, v);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            cell("=HYPERLINK(\"http://x\",\"y\")"),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""
        );
        assert_eq!(cell("=1+2"), "'=1+2");
        assert_eq!(cell("+33 1 23"), "'+33 1 23");
        assert_eq!(cell("-2"), "'-2");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell("\tx"), "'\tx");
        assert_eq!(cell("\rx"), "\"'\rx\"");
        // Only the first character counts.
        assert_eq!(cell("a=b"), "a=b");
        assert_eq!(cell("u-1"), "u-1");
    }
}
