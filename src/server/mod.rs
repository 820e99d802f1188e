//! The HTTP server (`segq serve`): axum on a multi-threaded tokio runtime.
//!
//! - [`partner`]: the partner endpoints of PROTOCOL.md;
//! - [`admin`] and [`import`]: the admin API;
//! - [`segments`]: counts, estimates, member export, targeting look-ups
//!   and saved segments;
//! - [`auth`]: who may call each route (the server admin token, or a
//!   workspace API key with a scope);
//! - [`metrics`]: `GET /metrics` and the request counters;
//! - [`ratelimit`]: the per-key token buckets;
//! - [`ops`]: `GET /healthz`, `GET /readyz`, request ids and the request
//!   log line;
//! - [`openapi`]: the OpenAPI 3.1 document (`GET /openapi.json`) and the
//!   reference page (`GET /docs`);
//! - [`console`]: the web console (`GET /` and its assets);
//! - [`error`]: every failure as a JSON response.
//!
//! [`router_with`] builds the whole application for an [`Engine`] (tests drive
//! it directly); [`serve`] runs it on a bound listener until a shutdown
//! future resolves, lets in-flight requests finish, then syncs every log.
//! Blocking engine calls (they may wait for an fsync) run on tokio's
//! blocking pool, never on the async workers; only answers that cost O(1)
//! and take no lock that is not free at once are given on the async
//! workers ([`segments`]).

pub mod admin;
pub mod auth;
pub mod conn;
pub mod console;
pub mod error;
pub mod extract;
pub mod import;
pub mod import_threads;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod partner;
pub mod ratelimit;
pub mod segments;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;

use crate::engine::{Config, Engine};

use error::ApiError;
use metrics::Metrics;
use ratelimit::RateLimiter;

/// The default limit of a bulk import body: 10 GiB.
pub const DEFAULT_MAX_IMPORT_BYTES: u64 = 10 << 30;

/// What the command line may override in the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    /// The largest partner (and admin JSON) request body; 413 above.
    pub max_body_bytes: usize,
    /// Partner requests per data import key per hour; 0 for no limit.
    pub rate_limit_per_hour: u64,
    /// The largest bulk import body; `None` for no limit.
    pub max_import_bytes: Option<u64>,
    /// Timeouts, the connection limit and the body buffering budget.
    pub limits: conn::Limits,
    /// How long `/readyz` answers 503 before the server stops taking
    /// connections, once shutdown begins.
    pub shutdown_delay: std::time::Duration,
    /// The import threads' nice value ([`import_threads`]).
    pub import_nice: i32,
}

impl ServerOptions {
    /// The configuration file's values.
    pub fn from_config(config: &Config) -> Self {
        ServerOptions {
            max_body_bytes: config.max_body_bytes,
            rate_limit_per_hour: config.rate_limit_per_hour,
            max_import_bytes: Some(DEFAULT_MAX_IMPORT_BYTES),
            limits: conn::Limits::from_config(config),
            shutdown_delay: std::time::Duration::from_secs(config.shutdown_delay_secs),
            import_nice: config.import_nice,
        }
    }
}

/// What every handler shares.
pub struct AppState {
    /// The engine the server answers for.
    pub engine: Arc<Engine>,
    /// The server's limits and options.
    pub options: ServerOptions,
    /// The data import keys' rate limiter.
    pub limiter: RateLimiter,
    /// The counters `/metrics` shows.
    pub metrics: Metrics,
    /// The connection gauges and the partner bodies' buffering budget.
    pub(crate) conns: Arc<conn::ConnStats>,
    /// What `/readyz` reads besides the workspaces.
    pub ready: ops::Readiness,
    /// Where partner requests and bulk imports are applied.
    pub imports: import_threads::ImportThreads,
}

impl AppState {
    /// Takes a token from a key's bucket: 429 with `Retry-After` if none.
    pub fn rate_limit(&self, key_id: &str) -> Result<(), ApiError> {
        self.limiter.check(key_id).map_err(|retry_after_secs| {
            self.metrics.record_rate_limited();
            crate::import::ProtocolError::RateLimited { retry_after_secs }.into()
        })
    }
}

/// The route templates (the metrics label requests with them).
pub mod routes {
    /// Partner cohort upsert.
    pub const COHORTS: &str = "/partners/{partner}/cohorts";
    /// Partner cohort membership changes.
    pub const COHORT_USERS: &str = "/partners/{partner}/cohorts/users";
    /// Partner cohort deletion.
    pub const COHORT_DELETE: &str = "/partners/{partner}/cohorts/delete";
    /// Prometheus metrics.
    pub const METRICS: &str = "/metrics";
    /// Liveness: 200 while the process serves.
    pub const HEALTHZ: &str = "/healthz";
    /// Readiness: 200, or 503 naming what is not ready.
    pub const READYZ: &str = "/readyz";
    /// The OpenAPI 3.1 document.
    pub const OPENAPI: &str = "/openapi.json";
    /// The API reference page.
    pub const DOCS: &str = "/docs";
    /// The web console's page.
    pub const CONSOLE: &str = "/";
    /// The web console's script and styles.
    pub const CONSOLE_ASSET: &str = "/console/{asset}";
    /// Workspaces: list and create.
    pub const WORKSPACES: &str = "/admin/workspaces";
    /// A workspace's API keys: list and create.
    pub const API_KEYS: &str = "/admin/workspaces/{ws}/api_keys";
    /// Revoke a workspace API key.
    pub const API_KEY: &str = "/admin/workspaces/{ws}/api_keys/{id}";
    /// A workspace's audit log: who changed what through the admin API.
    pub const AUDIT: &str = "/admin/workspaces/{ws}/audit";
    /// Create a data import key for a partner.
    pub const CREATE_KEY: &str = "/admin/workspaces/{ws}/partners/{partner}/keys";
    /// List a workspace's data import keys.
    pub const KEYS: &str = "/admin/workspaces/{ws}/keys";
    /// Invalidate a data import key.
    pub const KEY: &str = "/admin/workspaces/{ws}/keys/{id}";
    /// Enable a partner for a workspace.
    pub const ENABLE_PARTNER: &str = "/admin/workspaces/{ws}/partners/{partner}/enable";
    /// Upsert users.
    pub const USERS: &str = "/admin/workspaces/{ws}/users";
    /// Give a user an alias.
    pub const ALIASES: &str = "/admin/workspaces/{ws}/users/aliases";
    /// Give a user a device_id.
    pub const DEVICES: &str = "/admin/workspaces/{ws}/users/devices";
    /// Identify a user (give it an external_id).
    pub const IDENTIFY: &str = "/admin/workspaces/{ws}/users/identify";
    /// Delete users (by any identifier, in bulk).
    pub const DELETE_USERS: &str = "/admin/workspaces/{ws}/users/delete";
    /// Merge a user into another.
    pub const MERGE_USERS: &str = "/admin/workspaces/{ws}/users/merge";
    /// Rename a user's external_id.
    pub const RENAME_USER: &str = "/admin/workspaces/{ws}/users/rename";
    /// Streamed bulk user import (JSON Lines or CSV).
    pub const IMPORT: &str = "/admin/workspaces/{ws}/users/import";
    /// The cohorts' sync statistics.
    pub const COHORT_STATS: &str = "/admin/workspaces/{ws}/cohorts";
    /// The partners: enabled or not, their partner API keys, their keys.
    pub const PARTNERS: &str = "/admin/workspaces/{ws}/partners";
    /// The billing counters (data points per partner and day).
    pub const DATA_POINTS: &str = "/admin/workspaces/{ws}/data_points";
    /// Delete a cohort.
    pub const COHORT: &str = "/admin/workspaces/{ws}/cohorts/{partner}/{cohort_id}";
    /// Count a segment filter's members (or estimate, with `explain`).
    pub const SEGMENT_COUNT: &str = "/workspaces/{ws}/segments/count";
    /// The segment builder's breakdown of a filter.
    pub const SEGMENT_BREAKDOWN: &str = "/workspaces/{ws}/segments/breakdown";
    /// A page of a segment filter's members.
    pub const SEGMENT_MEMBERS: &str = "/workspaces/{ws}/segments/members";
    /// Check users against a segment filter.
    pub const SEGMENT_CHECK: &str = "/workspaces/{ws}/segments/check";
    /// The saved segments a user is in.
    pub const USER_SEGMENTS: &str = "/workspaces/{ws}/users/segments";
    /// Saved segments: list and create.
    pub const SEGMENTS: &str = "/workspaces/{ws}/segments";
    /// One saved segment: read, change, delete.
    pub const SEGMENT: &str = "/workspaces/{ws}/segments/{id}";
    /// A saved segment's member count.
    pub const SEGMENT_SIZE: &str = "/workspaces/{ws}/segments/{id}/size";
    /// A partner's cohorts in a workspace.
    pub const PARTNER_COHORTS: &str = "/workspaces/{ws}/partners/{partner}/cohorts";
    /// The custom attributes: types, users, common values.
    pub const ATTRIBUTES: &str = "/workspaces/{ws}/attributes";
    /// Declare a custom attribute's type.
    pub const ATTRIBUTE: &str = "/admin/workspaces/{ws}/attributes/{name}";
    /// Set or unset an existing user's custom attributes.
    pub const USER_ATTRIBUTES: &str = "/admin/workspaces/{ws}/users/attributes";

    /// Every route.
    pub const ALL: [&str; 42] = [
        COHORTS,
        COHORT_USERS,
        METRICS,
        WORKSPACES,
        API_KEYS,
        API_KEY,
        AUDIT,
        CREATE_KEY,
        KEYS,
        KEY,
        ENABLE_PARTNER,
        USERS,
        ALIASES,
        DEVICES,
        IDENTIFY,
        IMPORT,
        COHORT_STATS,
        DATA_POINTS,
        SEGMENT_COUNT,
        SEGMENT_BREAKDOWN,
        SEGMENT_MEMBERS,
        SEGMENT_CHECK,
        USER_SEGMENTS,
        SEGMENTS,
        SEGMENT,
        SEGMENT_SIZE,
        PARTNER_COHORTS,
        COHORT_DELETE,
        COHORT,
        ATTRIBUTES,
        ATTRIBUTE,
        USER_ATTRIBUTES,
        HEALTHZ,
        READYZ,
        DELETE_USERS,
        MERGE_USERS,
        RENAME_USER,
        OPENAPI,
        DOCS,
        CONSOLE,
        CONSOLE_ASSET,
        PARTNERS,
    ];
}

/// The application with explicit limits.
pub fn router_with(engine: Arc<Engine>, options: ServerOptions) -> io::Result<Router> {
    Ok(build(engine, options)?.0)
}

/// The application and its connection gauges.
fn build(engine: Arc<Engine>, options: ServerOptions) -> io::Result<(Router, Arc<AppState>)> {
    use routes::*;
    // One body may always be buffered whole.
    let budget = options
        .limits
        .max_buffered_body_bytes
        .max(options.max_body_bytes);
    let conns = Arc::new(conn::ConnStats::new(budget));
    let imports = import_threads::ImportThreads::new(options.import_nice)?;
    let state = Arc::new(AppState {
        engine,
        imports,
        limiter: RateLimiter::new(options.rate_limit_per_hour),
        metrics: Metrics::new(&ALL),
        options,
        conns,
        ready: ops::Readiness::default(),
    });
    let body_limit = DefaultBodyLimit::max(state.options.max_body_bytes);
    // A known path with another method: 405 with a JSON body (and `Allow`).
    let json_405 = |mr: MethodRouter<Arc<AppState>>| mr.fallback(error::method_not_allowed);

    let partner = Router::new()
        .route(COHORTS, json_405(post(partner::cohorts)))
        .route(COHORT_USERS, json_405(post(partner::users)))
        .route(COHORT_DELETE, json_405(post(partner::delete)))
        .layer(body_limit);

    let admin = Router::new()
        .route(
            WORKSPACES,
            json_405(get(admin::list_workspaces).post(admin::create_workspace)),
        )
        .route(
            API_KEYS,
            json_405(get(admin::list_api_keys).post(admin::create_api_key)),
        )
        .route(API_KEY, json_405(delete(admin::revoke_api_key)))
        .route(AUDIT, json_405(get(admin::audit_log)))
        .route(CREATE_KEY, json_405(post(admin::create_key)))
        .route(KEYS, json_405(get(admin::list_keys)))
        .route(KEY, json_405(delete(admin::invalidate_key)))
        .route(ENABLE_PARTNER, json_405(post(admin::enable_partner)))
        .route(USERS, json_405(post(admin::upsert_user)))
        .route(ALIASES, json_405(post(admin::add_alias)))
        .route(DEVICES, json_405(post(admin::add_device)))
        .route(IDENTIFY, json_405(post(admin::identify)))
        .route(DELETE_USERS, json_405(post(admin::delete_users)))
        .route(MERGE_USERS, json_405(post(admin::merge_users)))
        .route(RENAME_USER, json_405(post(admin::rename_user)))
        .route(USER_ATTRIBUTES, json_405(post(admin::set_attributes)))
        .route(ATTRIBUTE, json_405(put(admin::declare_attribute)))
        .route(COHORT_STATS, json_405(get(admin::cohorts)))
        .route(DATA_POINTS, json_405(get(admin::data_points)))
        .route(PARTNERS, json_405(get(admin::partners)))
        .route(COHORT, json_405(delete(admin::delete_cohort)))
        .layer(body_limit)
        // Added after the body limit: the bulk import streams its body
        // under its own limit (`max_import_bytes`).
        .route(IMPORT, json_405(post(import::import)))
        .route_layer(from_fn_with_state(state.clone(), auth::require_access));

    let segment_api = Router::new()
        .route(SEGMENT_COUNT, json_405(post(segments::count_handler)))
        .route(
            SEGMENT_BREAKDOWN,
            json_405(post(segments::breakdown_handler)),
        )
        .route(SEGMENT_MEMBERS, json_405(post(segments::members_handler)))
        .route(SEGMENT_CHECK, json_405(post(segments::check_handler)))
        .route(
            USER_SEGMENTS,
            json_405(post(segments::user_segments_handler)),
        )
        .route(
            SEGMENTS,
            json_405(get(segments::list_segments).post(segments::create_segment)),
        )
        .route(
            SEGMENT,
            json_405(
                get(segments::get_segment)
                    .put(segments::update_segment)
                    .delete(segments::delete_segment),
            ),
        )
        .route(SEGMENT_SIZE, json_405(get(segments::size_handler)))
        .route(PARTNER_COHORTS, json_405(get(segments::partner_cohorts)))
        .route(ATTRIBUTES, json_405(get(segments::attributes)))
        .layer(body_limit)
        .route_layer(from_fn_with_state(state.clone(), auth::require_access));

    let app = Router::new()
        .merge(partner)
        .merge(admin)
        .merge(segment_api)
        .route(METRICS, json_405(get(metrics::handler)))
        .route(HEALTHZ, json_405(get(ops::healthz)))
        .route(READYZ, json_405(get(ops::readyz)))
        .route(OPENAPI, json_405(get(openapi::openapi_json)))
        .route(DOCS, json_405(get(openapi::docs)))
        .route(CONSOLE, json_405(get(console::index)))
        .route(CONSOLE_ASSET, json_405(get(console::console_asset)))
        .fallback(error::not_found)
        .layer(from_fn_with_state(state.clone(), metrics::track))
        .layer(from_fn_with_state(state.clone(), ops::replica_lag))
        .layer(axum::middleware::from_fn(ops::request_id))
        .with_state(state.clone());
    Ok((app, state))
}

/// Serves `engine` on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish and syncs every log. Connections are bounded
/// in number and time as [`conn`] describes.
pub async fn serve<F>(
    engine: Arc<Engine>,
    listener: tokio::net::TcpListener,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let options = ServerOptions::from_config(engine.config());
    serve_with(engine, options, listener, shutdown).await
}

/// [`serve`] with explicit limits.
pub async fn serve_with<F>(
    engine: Arc<Engine>,
    options: ServerOptions,
    listener: tokio::net::TcpListener,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let limits = options.limits.clone();
    let delay = options.shutdown_delay;
    let (app, state) = build(engine.clone(), options)?;
    let watch = tokio::spawn(ops::watch_logs(engine.clone()));
    let ready = state.clone();
    let shutdown = async move {
        shutdown.await;
        ready.ready.set_shutting_down();
        tracing::info!(
            delay_secs = delay.as_secs_f64(),
            "shutting down: not ready; finishing in-flight requests"
        );
        tokio::time::sleep(delay).await;
    };
    let served = conn::run(listener, app, limits, state.conns.clone(), shutdown).await;
    watch.abort();
    served?;
    tokio::task::spawn_blocking(move || engine.sync_all())
        .await
        .map_err(io::Error::other)?
        .map_err(io::Error::other)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. On Unix the handlers are
/// installed when it is called (inside a runtime), not when it is first
/// polled: a signal sent once the server says it listens is never missed.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let int = signal(SignalKind::interrupt()).ok();
        let term = signal(SignalKind::terminate()).ok();
        async move {
            // A handler that could not be installed never resolves.
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(int) => {}
                () = wait(term) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
