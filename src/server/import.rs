//! `POST /admin/workspaces/{ws}/users/import`: bulk loading of users over
//! HTTP, in JSON Lines (`Content-Type: application/x-ndjson`) or CSV
//! (`text/csv`); the formats are described in [`crate::bulk`].
//!
//! The body is streamed, never collected whole: chunks go through the
//! shared line parser, users gather in batches of [`crate::bulk::BATCH_SIZE`]
//! and each batch is applied with `WorkspaceHandle::upsert_users` on the
//! blocking pool while the next one is being read. The partner endpoints'
//! body limit does not apply; the server's `max_import_bytes` does (413,
//! with what was applied until then, and `Connection: close` once what the
//! client still sends is drained, up to [`DRAIN_BYTES`]).
//!
//! A malformed line, or a user the engine refuses, is counted in `failed`,
//! reported with its line number (the first 100 by line in `errors`) and
//! skipped: it does not abort the load. The answer is 200 with
//! `{"created", "updated", "failed", "errors": [{"line", "message"}]}`.
//! Only an unusable input (a bad CSV header) is a 400, and earlier batches
//! stay applied in that case as in every other: the load is not a
//! transaction. A batch the workspace cannot store (503, 500) ends the
//! load: the answer names the first line not applied and carries the
//! totals of the batches applied before it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::bulk::{Batch, BulkError, Format, Parsed, Parser, Totals};
use crate::engine::{BatchReport, WorkspaceHandle};
use crate::error::Error;

use super::error::{body_error, json_response, ApiError, DRAIN_BYTES};
use super::extract::{declared_length, workspace, Auditor, PathParams};
use super::AppState;

type Pending = JoinHandle<(Vec<u64>, Result<BatchReport, Error>)>;

/// Applies one batch on the import threads.
fn spawn_batch(state: &AppState, handle: &Arc<WorkspaceHandle>, batch: Batch) -> Pending {
    let handle = handle.clone();
    let span = tracing::Span::current();
    state.imports.spawn(move || {
        let _request = span.enter();
        let lines = batch.lines.clone();
        (lines, handle.upsert_users_with(batch.into_users()))
    })
}

/// Waits for a batch and adds its outcome to the totals. A batch refused
/// as a whole (the workspace could not store it) is an error naming the
/// first line of that batch: nothing of it, nor of what follows, is
/// applied.
async fn settle(pending: Pending, totals: &mut Totals) -> Result<(), ApiError> {
    let (lines, report) = pending
        .await
        .map_err(|e| ApiError::internal(format!("import task failed: {e}")))?;
    match report {
        Ok(report) => {
            totals.add_batch(&lines, report.created, report.updated, report.failed);
            Ok(())
        }
        Err(e) => {
            let mut api = ApiError::from(e);
            if let Some(first) = lines.first() {
                let message = format!("{}; lines from {first} on were not applied", api.message());
                api.body["message"] = json!(message);
            }
            Err(api)
        }
    }
}

/// A parsed line goes to the batch or, failed, straight to the totals.
fn sink(p: Parsed, batch: &mut Batch, totals: &mut Totals) {
    match p.user {
        Ok(u) => batch.push_with(p.line, u, p.attributes),
        Err(message) => totals.fail(p.line, message),
    }
}

/// An error answer with the totals of what was applied before it.
fn partial(mut e: ApiError, mut totals: Totals) -> ApiError {
    totals.finish();
    let message = e.message().to_string();
    let mut body = json!({
        "message": message,
        "created": totals.created,
        "updated": totals.updated,
        "failed": totals.failed,
        "errors": totals.errors,
    });
    if let Some(id) = e.error_id() {
        body["error_id"] = json!(id);
    }
    e.body = body;
    e
}

/// A body over the limit: 413 with `Connection: close`, once what the
/// client still sends has been read and dropped (at most
/// [`DRAIN_BYTES`] more), so that it reads the answer rather than a reset.
async fn too_large<S>(stream: &mut S, message: String) -> ApiError
where
    S: futures_util::Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    drain(stream).await;
    let mut e = ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message);
    e.close = true;
    e
}

/// Reads and drops at most [`DRAIN_BYTES`] of what is left of a body.
async fn drain<S>(stream: &mut S)
where
    S: futures_util::Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    let mut drained = 0usize;
    while let Some(Ok(chunk)) = stream.next().await {
        drained += chunk.len();
        if drained > DRAIN_BYTES {
            break;
        }
    }
}

/// A bulk import's answer.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[schema(example = json!({"created": 9998, "updated": 0, "failed": 2, "errors": [
    {"line": 17, "message": "external_id: must be a non-empty string"},
    {"line": 912, "message": "expected 3 fields, found 4"}]}))]
pub struct ImportAnswer {
    /// Users created.
    created: u64,
    /// Users updated.
    updated: u64,
    /// Lines skipped: malformed, or refused by the engine.
    failed: u64,
    /// The first 100 failed lines, by line.
    errors: Vec<ImportLineError>,
}

/// A line an import skipped.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
pub struct ImportLineError {
    /// The line number (1-based; a CSV row that spans lines: the line it
    /// starts on).
    line: u64,
    /// Why it was skipped.
    message: String,
}

/// `POST /admin/workspaces/{ws}/users/import`.
#[utoipa::path(
    post,
    path = "/admin/workspaces/{ws}/users/import",
    operation_id = "import_users",
    tag = "users",
    summary = "Bulk-load users (JSON Lines or CSV, streamed)",
    description = "The body is streamed, in batches applied while the next is read; the \
        partner body limit does not apply, `max_import_bytes` does. A malformed line or a user \
        the engine refuses is counted in `failed`, reported by line number and skipped. Not a \
        transaction: batches applied before an error stay applied.",
    request_body(
        description = "JSON Lines: one user object (as `POST …/users` takes) a line. CSV: a \
            header naming `external_id`, `devices`, `aliases` and `attr:NAME` columns.",
        content(
            (crate::server::openapi::ImportBody = "application/x-ndjson",
             example = json!("{\"external_id\":\"u-1\",\"devices\":[\"ios-1\"]}\n{\"external_id\":\"u-2\"}\n")),
            (crate::server::openapi::ImportBody = "text/csv",
             example = json!("external_id,devices,attr:country\nu-1,ios-1,BR\nu-2,,PT\n")),
        )
    ),
    responses(
        (status = 200, description = "The totals, and the lines skipped.", body = ImportAnswer),
        (status = 400, description = "An unusable input (a bad CSV header); batches before it \
            stay applied.", body = crate::server::openapi::ErrorBody),
        (status = 413, description = "Past `max_import_bytes`: the totals of what was applied \
            until then, and `Connection: close`.", body = crate::server::openapi::ErrorBody),
        (status = 415, description = "Neither `application/x-ndjson` nor `text/csv`.",
         body = crate::server::openapi::ErrorBody,
         example = json!({"message": "send the users as JSON Lines (Content-Type: application/x-ndjson) or CSV (Content-Type: text/csv)"})),
    )
)]
pub async fn import(
    State(state): State<Arc<AppState>>,
    PathParams(ws): PathParams<String>,
    audit: Auditor,
    req: Request,
) -> Result<Response, ApiError> {
    let handle = workspace(&state, &ws)?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let format = Format::from_content_type(content_type).ok_or_else(|| {
        ApiError::unsupported_media_type(
            "send the users as JSON Lines (Content-Type: application/x-ndjson) or CSV (Content-Type: text/csv)",
        )
    })?;
    let limit = state.options.max_import_bytes;
    let declared = declared_length(req.headers());
    let mut stream = req.into_body().into_data_stream();
    if let (Some(limit), Some(declared)) = (limit, declared) {
        if declared > limit {
            return Err(too_large(
                &mut stream,
                format!(
                    "the import body ({declared} bytes) is larger than the limit of {limit} bytes"
                ),
            )
            .await);
        }
    }
    let (totals, mut outcome) = load_totals(&mut stream, format, limit, |b| {
        spawn_batch(&state, &handle, b)
    })
    .await;
    // One audit entry for the request, once its batches are applied (a
    // load that applied nothing records none).
    if totals.created + totals.updated > 0 {
        let mut detail = serde_json::Map::new();
        let format = match format {
            Format::JsonLines => "jsonl",
            Format::Csv => "csv",
        };
        detail.insert("format".into(), json!(format));
        detail.insert("created".into(), json!(totals.created));
        detail.insert("updated".into(), json!(totals.updated));
        detail.insert("failed".into(), json!(totals.failed));
        detail.insert("complete".into(), json!(outcome.is_ok()));
        let span = tracing::Span::current();
        let recorded = tokio::task::spawn_blocking(move || {
            span.in_scope(|| handle.record_audit(&audit.0, "users.imported", "users", detail))
        })
        .await
        .map_err(|e| ApiError::internal(format!("import task failed: {e}")))
        .and_then(|r| r.map_err(ApiError::from));
        if let (Err(e), true) = (recorded, outcome.is_ok()) {
            outcome = Err(e);
        }
    }
    respond(totals, outcome)
}

/// Parses `stream` and applies its batches with `apply`, one at a time
/// while the next is read; answers with the totals.
#[cfg(test)]
async fn load<S, A>(
    stream: &mut S,
    format: Format,
    limit: Option<u64>,
    apply: A,
) -> Result<Response, ApiError>
where
    S: futures_util::Stream<Item = Result<Bytes, axum::Error>> + Unpin,
    A: FnMut(Batch) -> Pending,
{
    let (totals, outcome) = load_totals(stream, format, limit, apply).await;
    respond(totals, outcome)
}

/// The answer of a load: the totals, or the error with the totals of what
/// was applied before it.
fn respond(mut totals: Totals, outcome: Result<(), ApiError>) -> Result<Response, ApiError> {
    if let Err(e) = outcome {
        return Err(partial(e, totals));
    }
    totals.finish();
    Ok(json_response(
        StatusCode::OK,
        json!({
            "created": totals.created,
            "updated": totals.updated,
            "failed": totals.failed,
            "errors": totals.errors,
        }),
    ))
}

/// Parses `stream` and applies its batches with `apply`, one at a time
/// while the next is read; returns the totals and how it ended (an error
/// is marked to close the connection if the body was not read whole).
async fn load_totals<S, A>(
    stream: &mut S,
    format: Format,
    limit: Option<u64>,
    mut apply: A,
) -> (Totals, Result<(), ApiError>)
where
    S: futures_util::Stream<Item = Result<Bytes, axum::Error>> + Unpin,
    A: FnMut(Batch) -> Pending,
{
    let mut parser = Parser::new(format);
    let mut totals = Totals::default();
    let mut batch = Batch::new();
    let mut pending: Option<Pending> = None;
    let mut read: u64 = 0;

    // Full batches are handed over after each chunk.
    let mut full: Vec<Batch> = Vec::new();

    // A failure while reading or parsing: what was read before it is still
    // applied. A batch that fails stops everything after it.
    let mut outcome: Result<(), ApiError> = Ok(());
    let mut batch_failed = false;
    let mut ended = false;
    'read: loop {
        let Some(chunk) = stream.next().await else {
            ended = true;
            break;
        };
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                outcome = Err(body_error(e));
                ended = true;
                break;
            }
        };
        read += chunk.len() as u64;
        if limit.is_some_and(|l| read > l) {
            outcome = Err(too_large(
                stream,
                format!(
                    "the import body is larger than the limit of {} bytes; lines up to {} were processed",
                    limit.unwrap_or_default(),
                    parser.lines()
                ),
            )
            .await);
            ended = true;
            break;
        }
        let fed = parser.feed(&chunk, &mut |p| {
            sink(p, &mut batch, &mut totals);
            if batch.is_full() {
                full.push(batch.take());
            }
        });
        if let Err(BulkError(msg)) = fed {
            outcome = Err(ApiError::bad_request(msg));
            break;
        }
        for b in full.drain(..) {
            if let Some(p) = pending.take() {
                if let Err(e) = settle(p, &mut totals).await {
                    outcome = Err(e);
                    batch_failed = true;
                    break 'read;
                }
            }
            pending = Some(apply(b));
        }
    }
    if outcome.is_ok() {
        if let Err(BulkError(msg)) = parser.finish(&mut |p| sink(p, &mut batch, &mut totals)) {
            outcome = Err(ApiError::bad_request(msg));
        }
    }
    if let Some(p) = pending.take() {
        if let Err(e) = settle(p, &mut totals).await {
            outcome = Err(e);
            batch_failed = true;
        }
    }
    if !batch_failed && !batch.is_empty() {
        if let Err(e) = settle(apply(batch.take()), &mut totals).await {
            outcome = Err(e);
        }
    }
    if let Err(e) = &mut outcome {
        if !ended {
            // The rest of the body is not read: the connection cannot
            // carry another request.
            drain(stream).await;
            e.close = true;
        }
    }
    (totals, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    /// A body of `n` JSON Lines users, in chunks of 1,000 lines.
    fn body(n: usize) -> impl futures_util::Stream<Item = Result<Bytes, axum::Error>> + Unpin {
        let lines: Vec<String> = (1..=n)
            .map(|i| format!("{{\"external_id\": \"u{i}\"}}\n"))
            .collect();
        let chunks: Vec<Result<Bytes, axum::Error>> = lines
            .chunks(1000)
            .map(|c| Ok(Bytes::from(c.concat())))
            .collect();
        futures_util::stream::iter(chunks)
    }

    #[tokio::test]
    async fn a_failed_batch_answers_with_the_totals_applied_before_it() {
        let batch = crate::bulk::BATCH_SIZE;
        let mut calls = 0;
        let mut stream = body(batch * 3 + 5);
        let result = load(&mut stream, Format::JsonLines, None, |b| {
            calls += 1;
            let fail = calls == 2;
            tokio::task::spawn_blocking(move || {
                let report = if fail {
                    Err(Error::WorkspaceFailed {
                        name: "acme".into(),
                        reason: "I/O error on /data/workspaces/acme/log: disk full".into(),
                    })
                } else {
                    Ok(BatchReport {
                        created: b.users.len() as u64,
                        ..BatchReport::default()
                    })
                };
                (b.lines, report)
            })
        })
        .await;
        let Err(e) = result else {
            panic!("a failed batch is an error")
        };
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        // The first batch was applied; the second failed; nothing after.
        assert_eq!(calls, 2);
        assert_eq!(e.body["created"], batch as u64, "{}", e.body);
        assert_eq!(e.body["updated"], 0);
        assert_eq!(e.body["failed"], 0);
        let message = e.message();
        assert!(
            message.contains(&format!("lines from {} on were not applied", batch + 1)),
            "{message}"
        );
        assert!(!message.contains("/data"), "{message}");
        assert!(e.body["error_id"].is_string(), "{}", e.body);
        // The body was not read to its end: the connection closes.
        assert!(e.close);
    }

    #[tokio::test]
    async fn a_load_without_failures_applies_every_batch() {
        let mut stream = body(crate::bulk::BATCH_SIZE + 7);
        let resp = load(&mut stream, Format::JsonLines, None, |b| {
            tokio::task::spawn_blocking(move || {
                let report = BatchReport {
                    created: b.users.len() as u64,
                    ..BatchReport::default()
                };
                (b.lines, Ok(report))
            })
        })
        .await
        .expect("applied");
        assert_eq!(resp.status(), StatusCode::OK);
    }
}
