//! `POST /admin/workspaces/{ws}/users/import`: bulk loading of users over
//! HTTP, in JSON Lines (`Content-Type: application/x-ndjson`) or CSV
//! (`text/csv`); the formats are described in [`crate::bulk`].
//!
//! The body is streamed, never collected whole: chunks go through the
//! shared line parser, users gather in batches of [`crate::bulk::BATCH_SIZE`]
//! and each batch is applied with `WorkspaceHandle::upsert_users` on the
//! blocking pool while the next one is being read. The partner endpoints'
//! body limit does not apply; the server's `max_import_bytes` does (413,
//! with what was applied until then).
//!
//! A malformed line, or a user the engine refuses, is counted in `failed`,
//! reported with its line number (the first 100 by line in `errors`) and
//! skipped: it does not abort the load. The answer is 200 with
//! `{"created", "updated", "failed", "errors": [{"line", "message"}]}`.
//! Only an unusable input (a bad CSV header) is a 400, and earlier batches
//! stay applied in that case as in every other: the load is not a
//! transaction.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::bulk::{Batch, BulkError, Format, Parsed, Parser, Totals};
use crate::engine::{BatchReport, WorkspaceHandle};
use crate::error::Error;

use super::admin::PathParams;
use super::error::{json_response, ApiError};
use super::AppState;

type Pending = JoinHandle<(Vec<u64>, Result<BatchReport, Error>)>;

/// Applies one batch on the blocking pool.
fn spawn_batch(handle: &Arc<WorkspaceHandle>, batch: Batch) -> Pending {
    let handle = handle.clone();
    tokio::task::spawn_blocking(move || {
        let Batch { users, lines } = batch;
        (lines, handle.upsert_users(users))
    })
}

/// Waits for a batch and adds its outcome to the totals.
async fn settle(pending: Pending, totals: &mut Totals) -> Result<(), ApiError> {
    let (lines, report) = pending
        .await
        .map_err(|e| ApiError::internal(format!("import task failed: {e}")))?;
    let report = report?;
    totals.add_batch(&lines, report.created, report.updated, report.failed);
    Ok(())
}

/// A parsed line goes to the batch or, failed, straight to the totals.
fn sink(p: Parsed, batch: &mut Batch, totals: &mut Totals) {
    match p.user {
        Ok(u) => batch.push(p.line, u),
        Err(message) => totals.fail(p.line, message),
    }
}

fn partial(status: StatusCode, message: String, mut totals: Totals) -> ApiError {
    totals.finish();
    let mut e = ApiError::new(status, message.clone());
    e.body = json!({
        "message": message,
        "created": totals.created,
        "updated": totals.updated,
        "failed": totals.failed,
        "errors": totals.errors,
    });
    e
}

/// `POST /admin/workspaces/{ws}/users/import`.
pub async fn import(
    State(state): State<Arc<AppState>>,
    PathParams(ws): PathParams<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let handle = state.engine.workspace(&ws).ok_or_else(|| {
        ApiError::from(Error::UnknownWorkspace {
            name: ws.to_string(),
        })
    })?;
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
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let (Some(limit), Some(declared)) = (limit, declared) {
        if declared > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the import body ({declared} bytes) is larger than the limit of {limit} bytes"
                ),
            ));
        }
    }

    let mut stream = req.into_body().into_data_stream();
    let mut parser = Parser::new(format);
    let mut totals = Totals::default();
    let mut batch = Batch::new();
    let mut pending: Option<Pending> = None;
    let mut read: u64 = 0;

    // Full batches are handed over after each chunk.
    let mut full: Vec<Batch> = Vec::new();

    let mut outcome: Result<(), ApiError> = Ok(());
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                outcome = Err(super::error::body_error(e));
                break;
            }
        };
        read += chunk.len() as u64;
        if limit.is_some_and(|l| read > l) {
            outcome = Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the import body is larger than the limit of {} bytes; lines up to {} were processed",
                    limit.unwrap_or_default(),
                    parser.lines()
                ),
            ));
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
                settle(p, &mut totals).await?;
            }
            pending = Some(spawn_batch(&handle, b));
        }
    }
    if outcome.is_ok() {
        if let Err(BulkError(msg)) = parser.finish(&mut |p| sink(p, &mut batch, &mut totals)) {
            outcome = Err(ApiError::bad_request(msg));
        }
    }
    // What was read before a failure is still applied: the response then
    // says what was.
    if let Some(p) = pending.take() {
        settle(p, &mut totals).await?;
    }
    if !batch.is_empty() {
        settle(spawn_batch(&handle, batch.take()), &mut totals).await?;
    }
    if let Err(e) = outcome {
        let message = e.message().to_string();
        return Err(partial(e.status, message, totals));
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
