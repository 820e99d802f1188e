//! `GET /metrics`: a small registry of atomic counters rendered in the
//! Prometheus text format (version 0.0.4).
//!
//! - `segq_http_requests_total{route,status}`: requests by route template
//!   (`/partners/{partner}/cohorts`, ...) and response status;
//! - `segq_http_request_duration_seconds{route}`: a latency histogram
//!   (cumulative `_bucket{le=...}`, `_sum`, `_count`);
//! - `segq_identifiers_total{result}`: identifiers the users endpoint
//!   applied, `matched`, `unmatched` or `refused` (device ids of identified
//!   users);
//! - `segq_data_points_total{partner}`: billable data points since start;
//! - `segq_rate_limited_total`: requests refused by the rate limit;
//! - `segq_http_open_connections`: connections open now;
//! - `segq_http_buffered_body_bytes`: partner request body bytes held now
//!   (bounded by `max_buffered_body_bytes`);
//! - `segq_http_connections_closed_total{reason}`: connections the server
//!   closed itself, by `header_timeout`, `idle_timeout`, `body_timeout` or
//!   `evicted` (to make room past `max_connections`);
//! - `segq_result_cache_hits_total{workspace}`,
//!   `segq_result_cache_misses_total{workspace}`: exact counts answered
//!   from, and computed past, a workspace's result cache;
//!   `segq_result_cache_bytes{workspace}` (and `_entries`): what it holds
//!   now, within `result_cache_bytes`;
//! - `segq_bucket_mask_hits_total{workspace}`,
//!   `segq_bucket_mask_misses_total{workspace}`: chunk masks of bucket
//!   ranges read from, and built past, a workspace's mask cache;
//!   `segq_bucket_mask_bytes{workspace}` (and `_ranges`): what it holds
//!   now, within `bucket_mask_cache_bytes`;
//! - `segq_live_segments{workspace}`, `segq_live_segment_bytes{workspace}`:
//!   saved segments kept materialised, and their bitmaps' size;
//! - `segq_compactions_total{workspace}`,
//!   `segq_compaction_failures_total{workspace}`,
//!   `segq_compaction_running{workspace}` (0 or 1),
//!   `segq_compaction_seconds_total{workspace}`,
//!   `segq_compaction_writers_held_seconds_total{workspace}` (of that time,
//!   how long writers were kept out) and
//!   `segq_compaction_last_seconds{workspace}`: the compactions since the
//!   workspace was opened;
//! - with an object store (`--store`): `segq_store_uploads_total`,
//!   `segq_store_upload_failures_total` (shipments that failed),
//!   `segq_store_uploaded_bytes_total`, `segq_store_manifests_total`,
//!   `segq_store_gc_deleted_total`, `segq_store_degraded` (0 or 1),
//!   `segq_store_lease_epoch`, `segq_store_lease_lost` (0 or 1),
//!   `segq_store_last_ship_timestamp_seconds` (the last shipment that
//!   shipped everything), `segq_store_lag_seconds` (since then), and by
//!   workspace `segq_store_shipped_seq` and `segq_store_unshipped_records`
//!   (durable records not in the bucket yet);
//! - on a read replica (`--replica-of`): `segq_replica_lag_seconds` (since
//!   it last held everything the store held), `segq_replica_polls_total`,
//!   `segq_replica_poll_errors_total`, `segq_replica_downloaded_bytes_total`,
//!   `segq_replica_records_applied_total`, `segq_replica_reloads_total`
//!   (workspaces downloaded whole and swapped in),
//!   `segq_replica_snapshot_swaps_total` (new snapshot generations loaded
//!   beside and swapped in), `segq_replica_degraded`
//!   (0 or 1), and by workspace `segq_replica_applied_seq` and
//!   `segq_replica_store_seq` (the last seq the store's manifest names).
//!
//! Routes are fixed when the router is built, so recording a request is a
//! hash lookup and a few relaxed atomic adds: no lock, no allocation.
//! Requests that match no route count under `route="unmatched"`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hashbrown::HashMap;

use crate::cohorts::ChangeReport;
use crate::ids::Partner;

use super::conn::{Closed, ConnStats};
use super::AppState;

/// Upper bounds of the latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The route label of requests no route matched.
pub const UNMATCHED: &str = "unmatched";

/// Status codes are counted in `100..600`.
const STATUSES: usize = 500;

struct RouteMetrics {
    route: &'static str,
    /// By status code - 100.
    statuses: Box<[AtomicU64]>,
    /// Non-cumulative counts per bucket; the last is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl RouteMetrics {
    fn new(route: &'static str) -> Self {
        RouteMetrics {
            route,
            statuses: (0..STATUSES).map(|_| AtomicU64::new(0)).collect(),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

/// The registry.
pub struct Metrics {
    routes: Vec<RouteMetrics>,
    index: HashMap<&'static str, usize>,
    identifiers: [AtomicU64; 3],
    data_points: [AtomicU64; Partner::ALL.len()],
    rate_limited: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry for these route templates (plus [`UNMATCHED`]).
    pub fn new(routes: &[&'static str]) -> Self {
        let mut all: Vec<RouteMetrics> = Vec::with_capacity(routes.len() + 1);
        let mut index = HashMap::new();
        for &r in routes.iter().chain(std::iter::once(&UNMATCHED)) {
            if !index.contains_key(r) {
                index.insert(r, all.len());
                all.push(RouteMetrics::new(r));
            }
        }
        Metrics {
            routes: all,
            index,
            identifiers: std::array::from_fn(|_| AtomicU64::new(0)),
            data_points: std::array::from_fn(|_| AtomicU64::new(0)),
            rate_limited: AtomicU64::new(0),
        }
    }

    fn route(&self, route: &str) -> &RouteMetrics {
        let i = self
            .index
            .get(route)
            .or_else(|| self.index.get(UNMATCHED))
            .copied()
            .unwrap_or(0);
        &self.routes[i]
    }

    /// Counts a finished request.
    pub fn observe(&self, route: &str, status: u16, latency: Duration) {
        let r = self.route(route);
        if let Some(c) = usize::from(status)
            .checked_sub(100)
            .and_then(|i| r.statuses.get(i))
        {
            c.fetch_add(1, Relaxed);
        }
        let secs = latency.as_secs_f64();
        let b = LATENCY_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        r.buckets[b].fetch_add(1, Relaxed);
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        r.sum_nanos.fetch_add(nanos, Relaxed);
        r.count.fetch_add(1, Relaxed);
    }

    /// Counts what a users request applied.
    pub fn record_import(&self, partner: Partner, report: &ChangeReport) {
        self.identifiers[0].fetch_add(report.matched, Relaxed);
        self.identifiers[1].fetch_add(report.unmatched, Relaxed);
        self.identifiers[2].fetch_add(report.refused_device_ids, Relaxed);
        if let Some(i) = Partner::ALL.iter().position(|&p| p == partner) {
            self.data_points[i].fetch_add(report.data_points, Relaxed);
        }
    }

    /// Counts a request refused by the rate limiter.
    pub fn record_rate_limited(&self) {
        self.rate_limited.fetch_add(1, Relaxed);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // `write!` to a String cannot fail.
        let _ = self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) -> std::fmt::Result {
        writeln!(
            out,
            "# HELP segq_http_requests_total HTTP requests by route template and status."
        )?;
        writeln!(out, "# TYPE segq_http_requests_total counter")?;
        for r in &self.routes {
            for (i, c) in r.statuses.iter().enumerate() {
                let n = c.load(Relaxed);
                if n > 0 {
                    writeln!(
                        out,
                        "segq_http_requests_total{{route=\"{}\",status=\"{}\"}} {n}",
                        escape(r.route),
                        i + 100
                    )?;
                }
            }
        }

        writeln!(
            out,
            "# HELP segq_http_request_duration_seconds HTTP request latency by route template."
        )?;
        writeln!(out, "# TYPE segq_http_request_duration_seconds histogram")?;
        for r in &self.routes {
            let count = r.count.load(Relaxed);
            if count == 0 {
                continue;
            }
            let route = escape(r.route);
            let mut cumulative = 0u64;
            for (le, b) in LATENCY_BUCKETS.iter().zip(&r.buckets) {
                cumulative += b.load(Relaxed);
                writeln!(
                    out,
                    "segq_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
                )?;
            }
            cumulative += r.buckets[LATENCY_BUCKETS.len()].load(Relaxed);
            // Concurrent updates may make `count` lag or lead the buckets by
            // a few; +Inf must equal `_count`, so both print one value.
            let total = cumulative.max(count);
            writeln!(
                out,
                "segq_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {total}"
            )?;
            let sum = r.sum_nanos.load(Relaxed) as f64 / 1e9;
            writeln!(
                out,
                "segq_http_request_duration_seconds_sum{{route=\"{route}\"}} {sum}"
            )?;
            writeln!(
                out,
                "segq_http_request_duration_seconds_count{{route=\"{route}\"}} {total}"
            )?;
        }

        writeln!(
            out,
            "# HELP segq_identifiers_total Identifiers applied by the users endpoint, by outcome."
        )?;
        writeln!(out, "# TYPE segq_identifiers_total counter")?;
        for (result, c) in ["matched", "unmatched", "refused"]
            .iter()
            .zip(&self.identifiers)
        {
            writeln!(
                out,
                "segq_identifiers_total{{result=\"{result}\"}} {}",
                c.load(Relaxed)
            )?;
        }

        writeln!(
            out,
            "# HELP segq_data_points_total Billable data points (matched adds and removes) since start, by partner."
        )?;
        writeln!(out, "# TYPE segq_data_points_total counter")?;
        for (p, c) in Partner::ALL.iter().zip(&self.data_points) {
            writeln!(
                out,
                "segq_data_points_total{{partner=\"{p}\"}} {}",
                c.load(Relaxed)
            )?;
        }

        writeln!(
            out,
            "# HELP segq_rate_limited_total Partner requests refused by the per-key rate limit."
        )?;
        writeln!(out, "# TYPE segq_rate_limited_total counter")?;
        writeln!(
            out,
            "segq_rate_limited_total {}",
            self.rate_limited.load(Relaxed)
        )?;
        writeln!(
            out,
            "# HELP segq_query_threads Threads that evaluate segment queries."
        )?;
        writeln!(out, "# TYPE segq_query_threads gauge")?;
        writeln!(out, "segq_query_threads {}", rayon::current_num_threads())?;
        Ok(())
    }
}

/// Escapes a label value (`\`, `"` and newlines).
fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['\\', '"', '\n']) {
        return s.into();
    }
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

/// Middleware: times every request and counts it by route and status.
pub async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let resp = next.run(req).await;
    let route = route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
    state
        .metrics
        .observe(route, resp.status().as_u16(), start.elapsed());
    resp
}

/// The connection layer's gauges and counters, in the text format.
pub(crate) fn render_connections(stats: &ConnStats, out: &mut String) {
    // `write!` to a String cannot fail.
    let _ = (|| -> std::fmt::Result {
        writeln!(
            out,
            "# HELP segq_http_open_connections HTTP connections open now."
        )?;
        writeln!(out, "# TYPE segq_http_open_connections gauge")?;
        writeln!(out, "segq_http_open_connections {}", stats.open())?;
        writeln!(
            out,
            "# HELP segq_http_buffered_body_bytes Partner request body bytes held in memory now."
        )?;
        writeln!(out, "# TYPE segq_http_buffered_body_bytes gauge")?;
        writeln!(out, "segq_http_buffered_body_bytes {}", stats.budget.used())?;
        writeln!(
            out,
            "# HELP segq_http_connections_closed_total Connections the server closed itself, by reason."
        )?;
        writeln!(out, "# TYPE segq_http_connections_closed_total counter")?;
        for why in Closed::ALL {
            writeln!(
                out,
                "segq_http_connections_closed_total{{reason=\"{}\"}} {}",
                why.label(),
                stats.closed(why)
            )?;
        }
        Ok(())
    })();
}

/// One unlabelled sample with its `HELP` and `TYPE` lines.
fn one(out: &mut String, name: &str, kind: &str, help: &str, v: f64) -> std::fmt::Result {
    writeln!(out, "# HELP {name} {help}")?;
    writeln!(out, "# TYPE {name} {kind}")?;
    writeln!(out, "{name} {v}")
}

/// The object store's counters and gauges, when there is one.
pub fn render_store(engine: &crate::engine::Engine, out: &mut String) {
    let Some(st) = engine.store_status() else {
        return;
    };
    let now = chrono::Utc::now().timestamp_millis();
    let last = st.last_success_ms.load(Relaxed);
    let _ = (|| -> std::fmt::Result {
        one(
            out,
            "segq_store_uploads_total",
            "counter",
            "Objects uploaded to the object store.",
            st.uploads.load(Relaxed) as f64,
        )?;
        one(
            out,
            "segq_store_upload_failures_total",
            "counter",
            "Shipments to the object store that failed (tried again with backoff).",
            st.failures.load(Relaxed) as f64,
        )?;
        one(
            out,
            "segq_store_uploaded_bytes_total",
            "counter",
            "Bytes uploaded to the object store.",
            st.bytes.load(Relaxed) as f64,
        )?;
        one(
            out,
            "segq_store_manifests_total",
            "counter",
            "Workspace manifests published.",
            st.manifests.load(Relaxed) as f64,
        )?;
        one(
            out,
            "segq_store_gc_deleted_total",
            "counter",
            "Objects no manifest names deleted after the retention period.",
            st.deleted.load(Relaxed) as f64,
        )?;
        one(
            out,
            "segq_store_ack_waits_total",
            "counter",
            "Writes that waited for their shipment (durability \"object-store\").",
            st.ack_waits.load(Relaxed) as f64,
        )?;
        one(
            out,
            "segq_store_ack_timeouts_total",
            "counter",
            "Writes whose shipment did not come within store_ack_timeout_ms (answered 503).",
            st.ack_timeouts.load(Relaxed) as f64,
        )?;
        one(
            out,
            "segq_store_ack_wait_seconds_total",
            "counter",
            "Seconds writes waited for their shipments, all together.",
            st.ack_wait_ms.load(Relaxed) as f64 / 1000.0,
        )?;
        one(
            out,
            "segq_store_degraded",
            "gauge",
            "1 while shipping fails or lags (see /readyz).",
            if st.degraded(now).is_some() { 1.0 } else { 0.0 },
        )?;
        one(
            out,
            "segq_store_lease_epoch",
            "gauge",
            "The epoch of the store's lease this node took (0: shipping without a lease).",
            st.lease_epoch.load(Relaxed) as f64,
        )?;
        one(
            out,
            "segq_store_lease_lost",
            "gauge",
            "1 once another node took the store's lease: this node neither ships nor takes writes.",
            if st.lease_lost().is_some() { 1.0 } else { 0.0 },
        )?;
        one(
            out,
            "segq_store_last_ship_timestamp_seconds",
            "gauge",
            "When the last shipment that shipped everything ended (0: none yet).",
            last as f64 / 1000.0,
        )?;
        one(
            out,
            "segq_store_lag_seconds",
            "gauge",
            "Seconds since the last shipment that shipped everything.",
            if last > 0 {
                (now - last).max(0) as f64 / 1000.0
            } else {
                0.0
            },
        )?;
        let shipped = st.shipped();
        writeln!(
            out,
            "# HELP segq_store_shipped_seq The last log seq in the object store."
        )?;
        writeln!(out, "# TYPE segq_store_shipped_seq gauge")?;
        for (name, (seq, _)) in &shipped {
            writeln!(
                out,
                "segq_store_shipped_seq{{workspace=\"{}\"}} {seq}",
                escape(name)
            )?;
        }
        writeln!(
            out,
            "# HELP segq_store_unshipped_records Durable log records not in the object store yet."
        )?;
        writeln!(out, "# TYPE segq_store_unshipped_records gauge")?;
        for (name, (seq, durable)) in &shipped {
            writeln!(
                out,
                "segq_store_unshipped_records{{workspace=\"{}\"}} {}",
                escape(name),
                durable.saturating_sub(*seq)
            )?;
        }
        Ok(())
    })();
}

/// A read replica's counters and gauges, when it is one.
pub fn render_replica(engine: &crate::engine::Engine, out: &mut String) {
    let Some(st) = engine.replica_status() else {
        return;
    };
    let now = chrono::Utc::now().timestamp_millis();
    let _ = (|| -> std::fmt::Result {
        one(
            out,
            "segq_replica_lag_seconds",
            "gauge",
            "Seconds since this replica last held everything the object store held.",
            st.lag_ms(now) as f64 / 1000.0,
        )?;
        for (name, help, v) in [
            (
                "segq_replica_polls_total",
                "Looks at the object store.",
                &st.polls,
            ),
            (
                "segq_replica_poll_errors_total",
                "Looks at the object store that failed.",
                &st.poll_errors,
            ),
            (
                "segq_replica_downloaded_bytes_total",
                "Bytes downloaded from the object store.",
                &st.bytes,
            ),
            (
                "segq_replica_records_applied_total",
                "Log records of the primary applied.",
                &st.records,
            ),
            (
                "segq_replica_reloads_total",
                "Workspaces downloaded whole and swapped in after the first copy.",
                &st.reloads,
            ),
            (
                "segq_replica_snapshot_swaps_total",
                "New snapshot generations loaded beside the workspace served and swapped in, without a whole download.",
                &st.swaps,
            ),
        ] {
            one(out, name, "counter", help, v.load(Relaxed) as f64)?;
        }
        one(
            out,
            "segq_replica_degraded",
            "gauge",
            "1 while the replica lags past replica_max_lag_ms or its looks fail (see /readyz).",
            if st.degraded(now).is_some() { 1.0 } else { 0.0 },
        )?;
        let following = st.following();
        writeln!(
            out,
            "# HELP segq_replica_applied_seq The last log seq applied: the generation answered."
        )?;
        writeln!(out, "# TYPE segq_replica_applied_seq gauge")?;
        for (name, f) in &following {
            writeln!(
                out,
                "segq_replica_applied_seq{{workspace=\"{}\"}} {}",
                escape(name),
                f.seq
            )?;
        }
        writeln!(
            out,
            "# HELP segq_replica_store_seq The last log seq the object store's manifest names."
        )?;
        writeln!(out, "# TYPE segq_replica_store_seq gauge")?;
        for (name, f) in &following {
            writeln!(
                out,
                "segq_replica_store_seq{{workspace=\"{}\"}} {}",
                escape(name),
                f.bucket_seq
            )?;
        }
        Ok(())
    })();
}

/// Each workspace's result cache and live segments.
pub fn render_workspaces(engine: &crate::engine::Engine, out: &mut String) {
    type Row = (
        String,
        crate::workspace::cache::Stats,
        usize,
        u64,
        crate::segment::masks::MaskStats,
        crate::engine::CompactionStats,
    );
    let rows: Vec<Row> = engine
        .workspace_names()
        .into_iter()
        .filter_map(|name| {
            let h = engine.workspace(&name)?;
            let stats = h.results().stats();
            let masks = h
                .bitmaps()
                .bucket_mask_cache()
                .map(|m| m.stats())
                .unwrap_or_default();
            let live = h.live();
            let compactions = h.compaction_stats();
            Some((name, stats, live.count(), live.bytes(), masks, compactions))
        })
        .collect();
    let _ = (|| -> std::fmt::Result {
        type Get = fn(&Row) -> f64;
        let series: [(&str, &str, &str, Get); 16] = [
            (
                "segq_result_cache_hits_total",
                "counter",
                "Exact counts answered from the result cache.",
                |r| r.1.hits as f64,
            ),
            (
                "segq_result_cache_misses_total",
                "counter",
                "Exact counts looked up in the result cache and computed.",
                |r| r.1.misses as f64,
            ),
            (
                "segq_result_cache_bytes",
                "gauge",
                "Bytes the result cache holds now.",
                |r| r.1.bytes as f64,
            ),
            (
                "segq_result_cache_entries",
                "gauge",
                "Counts the result cache holds now.",
                |r| r.1.entries as f64,
            ),
            (
                "segq_live_segments",
                "gauge",
                "Saved segments kept materialised.",
                |r| r.2 as f64,
            ),
            (
                "segq_live_segment_bytes",
                "gauge",
                "Bytes of the live segments' bitmaps (serialized size).",
                |r| r.3 as f64,
            ),
            (
                "segq_bucket_mask_hits_total",
                "counter",
                "Chunk masks of bucket ranges read from the mask cache.",
                |r| r.4.hits as f64,
            ),
            (
                "segq_bucket_mask_misses_total",
                "counter",
                "Chunk masks of bucket ranges built from the buckets.",
                |r| r.4.misses as f64,
            ),
            (
                "segq_bucket_mask_bytes",
                "gauge",
                "Bytes the bucket mask cache holds now.",
                |r| r.4.bytes as f64,
            ),
            (
                "segq_bucket_mask_ranges",
                "gauge",
                "Bucket ranges the mask cache holds now.",
                |r| r.4.ranges as f64,
            ),
            (
                "segq_compactions_total",
                "counter",
                "Compactions that committed a snapshot since the workspace was opened.",
                |r| r.5.done as f64,
            ),
            (
                "segq_compaction_failures_total",
                "counter",
                "Compactions that failed since the workspace was opened.",
                |r| r.5.failed as f64,
            ),
            (
                "segq_compaction_running",
                "gauge",
                "Compactions under way now.",
                |r| r.5.running as f64,
            ),
            (
                "segq_compaction_seconds_total",
                "counter",
                "Time spent compacting.",
                |r| r.5.millis as f64 / 1000.0,
            ),
            (
                "segq_compaction_writers_held_seconds_total",
                "counter",
                "Of the compactions' time, how long writers were kept out (queries never are).",
                |r| r.5.writers_held_millis as f64 / 1000.0,
            ),
            (
                "segq_compaction_last_seconds",
                "gauge",
                "The last committed compaction's time.",
                |r| r.5.last_millis as f64 / 1000.0,
            ),
        ];
        for (name, kind, help, get) in series {
            writeln!(out, "# HELP {name} {help}")?;
            writeln!(out, "# TYPE {name} {kind}")?;
            for r in &rows {
                writeln!(out, "{name}{{workspace=\"{}\"}} {}", escape(&r.0), get(r))?;
            }
        }
        Ok(())
    })();
}

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    description = "Requests, statuses and latencies by route, identifiers applied, data points, \
        connections and buffered bodies; per workspace the result and bucket mask caches, \
        the live segments and the compactions.",
    responses(
        (status = 200, description = "The Prometheus text format.",
         content_type = "text/plain; version=0.0.4", body = String,
         example = json!("# TYPE segq_http_requests_total counter\nsegq_http_requests_total{route=\"/healthz\",status=\"200\"} 1\n")),
    )
)]
pub async fn handler(State(state): State<Arc<AppState>>) -> Response {
    let mut text = state.metrics.render();
    render_connections(&state.conns, &mut text);
    render_workspaces(&state.engine, &mut text);
    render_store(&state.engine, &mut text);
    render_replica(&state.engine, &mut text);
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "/partners/{partner}/cohorts/users";

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::new(&[ROUTE, "/metrics"]);
        m.observe(ROUTE, 200, Duration::from_micros(300));
        m.observe(ROUTE, 200, Duration::from_millis(3));
        m.observe(ROUTE, 429, Duration::from_secs(20));
        m.observe("/nowhere", 404, Duration::from_micros(10));
        m.record_import(
            Partner::Heap,
            &ChangeReport {
                matched: 5,
                unmatched: 2,
                refused_device_ids: 1,
                data_points: 5,
                ..ChangeReport::default()
            },
        );
        m.record_rate_limited();
        let text = m.render();
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(has("# TYPE segq_http_requests_total counter"), "{text}");
        assert!(has(
            "segq_http_requests_total{route=\"/partners/{partner}/cohorts/users\",status=\"200\"} 2"
        ));
        assert!(has(
            "segq_http_requests_total{route=\"/partners/{partner}/cohorts/users\",status=\"429\"} 1"
        ));
        assert!(has(
            "segq_http_requests_total{route=\"unmatched\",status=\"404\"} 1"
        ));
        assert!(has("# TYPE segq_http_request_duration_seconds histogram"));
        let b = |le: &str, n: u64| {
            format!(
                "segq_http_request_duration_seconds_bucket{{route=\"{ROUTE}\",le=\"{le}\"}} {n}"
            )
        };
        assert!(has(&b("0.0005", 1)), "{text}");
        assert!(has(&b("0.0025", 1)));
        assert!(has(&b("0.005", 2)));
        assert!(has(&b("10", 2)));
        assert!(has(&b("+Inf", 3)));
        assert!(has(&format!(
            "segq_http_request_duration_seconds_count{{route=\"{ROUTE}\"}} 3"
        )));
        let sum_line = text
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "segq_http_request_duration_seconds_sum{{route=\"{ROUTE}\"}}"
                ))
            })
            .expect("a _sum line");
        let sum: f64 = sum_line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a number");
        assert!((sum - 20.0033).abs() < 1e-6, "{sum}");
        // A route without requests prints no histogram.
        assert!(!text.contains("route=\"/metrics\""));
        assert!(has("segq_identifiers_total{result=\"matched\"} 5"));
        assert!(has("segq_identifiers_total{result=\"unmatched\"} 2"));
        assert!(has("segq_identifiers_total{result=\"refused\"} 1"));
        assert!(has("segq_data_points_total{partner=\"heap\"} 5"));
        assert!(has("segq_data_points_total{partner=\"amplitude\"} 0"));
        assert!(has("segq_rate_limited_total 1"));
        // Every sample line belongs to a family announced by HELP and TYPE.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# HELP {family} "))
                    && text.contains(&format!("# TYPE {family} ")),
                "{l}"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape("/plain/{x}"), "/plain/{x}");
    }
}
