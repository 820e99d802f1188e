//! Operations: `GET /healthz`, `GET /readyz`, the request id and the
//! request log line.
//!
//! - `/healthz` answers 200 while the process serves at all.
//! - `/readyz` answers 200 when every workspace is loaded and takes
//!   writes, and the server is not shutting down; otherwise 503 with what
//!   is not ready. Both are unauthenticated and cheap: a flag, and for
//!   each workspace two small locks, no disk I/O ([`Readiness`]).
//! - Every request gets an id: the client's `X-Request-Id` when it is
//!   1 to [`MAX_REQUEST_ID_LEN`] visible ASCII characters, else a fresh
//!   one. It is sent back as `X-Request-Id`, and every log line of the
//!   request carries it (one, `answered`, with the status and the
//!   microseconds taken, is written for every request, under the target
//!   [`ACCESS_LOG_TARGET`]) (the `request` span; blocking work carries
//!   the span along, [`super::extract::run_blocking`]).
//! - A workspace whose log failed a write or fsync is not ready until its
//!   log is reset; [`watch_logs`] tries the reset every second, so that it
//!   becomes ready again once the disk takes writes, without waiting for
//!   a write that a load balancer would no longer send.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tracing::Instrument;

use super::AppState;
use crate::engine::Engine;

/// The request id header, in and out.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client request id kept; a longer one is replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// What `/readyz` reads besides the workspaces.
#[derive(Debug, Default)]
pub struct Readiness {
    shutting_down: AtomicBool,
}

impl Readiness {
    /// From now on `/readyz` answers 503 (`shutting_down`).
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// What is not ready: `(check, workspace, message)` triples as JSON
/// objects; empty when ready.
fn not_ready(engine: &Engine, ready: &Readiness) -> Vec<Value> {
    let mut out = Vec::new();
    if ready.is_shutting_down() {
        out.push(json!({"check": "shutting_down", "message": "the server is shutting down"}));
    }
    for h in engine.handles() {
        if let Some(reason) = h.write_trouble() {
            out.push(json!({"check": "log_writable", "workspace": h.name(), "message": reason}));
        }
    }
    out
}

/// What works but not as it should, without taking the node out of
/// service: the object store's shipments failing or lagging (imports go
/// on; what is not shipped is at risk with the machine), or the store's
/// lease lost to another node (reads go on; writes are refused).
fn degraded(engine: &Engine) -> Vec<Value> {
    let now = chrono::Utc::now().timestamp_millis();
    engine
        .store_status()
        .and_then(|st| {
            // Lost to another node: the node serves reads, refuses writes.
            let check = if st.lease_lost().is_some() {
                "object_store_lease"
            } else {
                "object_store"
            };
            st.degraded(now).map(|m| (check, m))
        })
        .map(|(check, message)| vec![json!({"check": check, "message": message})])
        .into_iter()
        .chain(
            engine
                .replica_status()
                .and_then(|r| r.degraded(now))
                .map(|message| vec![json!({"check": "replica_lag", "message": message})]),
        )
        .flatten()
        .collect()
}

/// The header a read replica puts on every answer: milliseconds since it
/// last held everything the object store held.
pub static X_REPLICA_LAG_MS: HeaderName = HeaderName::from_static("x-replica-lag-ms");

/// On a read replica: adds [`X_REPLICA_LAG_MS`] to every answer.
pub async fn replica_lag(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if let Some(r) = state.engine.replica_status() {
        let lag = r.lag_ms(chrono::Utc::now().timestamp_millis());
        resp.headers_mut()
            .insert(X_REPLICA_LAG_MS.clone(), HeaderValue::from(lag));
    }
    resp
}

/// `GET /healthz`'s and `GET /readyz`'s answers.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
pub struct Health {
    /// `ok` (`/healthz`), `ready` or `not ready` (`/readyz`).
    status: String,
    /// `/readyz`: the workspaces served.
    workspaces: Option<u64>,
    /// `/readyz` when not ready: what is not.
    not_ready: Option<Vec<NotReady>>,
    /// `/readyz`: what serves but is degraded (`object_store`: shipments
    /// to the object store fail or lag; `object_store_lease`: another
    /// node took the store's lease, and writes are refused;
    /// `replica_lag`: a read replica lags past `replica_max_lag_ms` or
    /// cannot read the store).
    degraded: Option<Vec<NotReady>>,
}

/// What is not ready.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
pub struct NotReady {
    /// `shutting_down` or `log_writable`; under `degraded`,
    /// `object_store`, `object_store_lease` or `replica_lag`.
    check: String,
    /// The workspace whose log does not take writes.
    workspace: Option<String>,
    /// Why.
    message: String,
}

/// `GET /healthz`: the process serves.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    summary = "Liveness",
    description = "200 while the process serves; reads no disk.",
    responses((status = 200, description = "Alive.", body = Health, example = json!({"status": "ok"})))
)]
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: 200 when ready, 503 naming what is not.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    summary = "Readiness",
    description = "Ready when every workspace is loaded, its log takes writes, and the server \
        is not shutting down; reads only flags. `degraded` names what serves but not as it \
        should (`object_store`: shipments to the object store fail or lag) without making the \
        node unready.",
    responses(
        (status = 200, description = "Ready.", body = Health,
         example = json!({"status": "ready", "workspaces": 3})),
        (status = 503, description = "Not ready, and why.", body = Health,
         example = json!({"status": "not ready", "workspaces": 3, "not_ready": [
            {"check": "shutting_down", "message": "the server is shutting down"}]})),
    )
)]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let problems = not_ready(&state.engine, &state.ready);
    let workspaces = state.engine.workspace_names().len();
    let mut body = if problems.is_empty() {
        json!({"status": "ready", "workspaces": workspaces})
    } else {
        json!({"status": "not ready", "workspaces": workspaces, "not_ready": problems})
    };
    let degraded = degraded(&state.engine);
    if !degraded.is_empty() {
        body["degraded"] = Value::from(degraded);
    }
    if problems.is_empty() {
        Json(body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// The id of a request (an extension of every request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub String);

/// A client's request id, if it is one segq keeps: 1 to
/// [`MAX_REQUEST_ID_LEN`] visible ASCII characters (no space, no
/// control character).
pub fn valid_request_id(v: &HeaderValue) -> Option<&str> {
    let b = v.as_bytes();
    if b.is_empty() || b.len() > MAX_REQUEST_ID_LEN || !b.iter().all(|c| c.is_ascii_graphic()) {
        return None;
    }
    v.to_str().ok()
}

/// A fresh request id: 16 hex digits.
///
/// Ids are unique within the process: a count of the requests so far,
/// offset and mixed by a bijection of 64 bits under a key drawn from the
/// OS once per process, so that they differ between processes and do not
/// show the count. They are labels, not secrets: nothing relies on their
/// being unguessable. (A fresh random draw per request cost a system
/// call: about 2% of a one-user check's server time.)
pub fn new_request_id() -> String {
    static KEY: OnceLock<[u64; 2]> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let [k0, k1] = *KEY.get_or_init(|| {
        let half = || u64::from_le_bytes(crate::engine::keys::random_bytes::<8>());
        [half(), half()]
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    crate::engine::keys::hex(&(mix(n.wrapping_add(k0)) ^ k1).to_be_bytes())
}

/// A bijection of `u64` that spreads every input bit over the output
/// (the finaliser of MurmurHash3): distinct counts give distinct ids.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The target of the `answered` line every request logs (the access
/// log): `SEGQ_LOG=info,segq::server::access=off` silences it alone.
pub const ACCESS_LOG_TARGET: &str = "segq::server::access";

/// The outermost layer: gives the request its id, runs it in a `request`
/// span that carries the id, logs one line when it is answered (status
/// and microseconds), and sends the id back.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(valid_request_id)
        .map_or_else(new_request_id, str::to_string);
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    req.extensions_mut().insert(RequestId(id.clone()));
    let start = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.in_scope(|| {
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            status,
            micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
            "answered"
        )
    });
    // Checked above, or made of hex digits: always a valid header value.
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    resp
}

/// Every second, tries to reset the log of each workspace whose log
/// failed (on the blocking pool: a reset truncates and syncs), and logs
/// when a workspace stops or starts taking writes. Runs until dropped.
pub async fn watch_logs(engine: Arc<Engine>) {
    let mut troubled: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let engine = engine.clone();
        let was = troubled.clone();
        let now = tokio::task::spawn_blocking(move || {
            let mut now = BTreeSet::new();
            for h in engine.handles() {
                if h.write_trouble().is_none() {
                    continue;
                }
                if let Err(e) = h.recover() {
                    if !was.contains(h.name()) {
                        tracing::warn!(workspace = h.name(), "not ready: {e}");
                    }
                    now.insert(h.name().to_string());
                }
            }
            // Reset just now, or by a write in the meantime.
            for name in was.difference(&now) {
                if engine
                    .workspace(name)
                    .is_some_and(|h| h.write_trouble().is_none())
                {
                    tracing::info!(workspace = %name, "the change log takes writes again");
                }
            }
            now
        })
        .await;
        if let Ok(now) = now {
            troubled = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_short_visible_ascii() {
        let ok = |s: &str| valid_request_id(&HeaderValue::from_str(s).unwrap()).is_some();
        assert!(ok("abc-123"));
        assert!(ok("a:b/c=d+e_f.g"));
        assert!(ok(&"x".repeat(MAX_REQUEST_ID_LEN)));
        assert!(!ok(&"x".repeat(MAX_REQUEST_ID_LEN + 1)));
        assert!(!ok(""));
        assert!(!ok("has space"));
        assert!(!ok("tab\there"));
        let opaque = HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap();
        assert!(valid_request_id(&opaque).is_none());
        let id = new_request_id();
        assert_eq!(id.len(), 16);
        assert!(ok(&id));
    }

    #[test]
    fn request_ids_do_not_repeat() {
        let ids: std::collections::HashSet<String> =
            (0..20_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 20_000);
        assert!(ids.iter().all(|id| id.len() == 16
            && id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())));
        // Consecutive counts give ids far apart: the count does not show.
        let a = mix(7);
        let b = mix(8);
        assert!((a ^ b).count_ones() > 16, "{a:x} {b:x}");
    }
}
