//! `segq serve`: the HTTP server on a data directory.

use std::io::{self, Write};
use std::path::PathBuf;

use clap::Args;

use segq::engine::Config;
use segq::Error;

use crate::data::{self, Access};
use crate::Failure;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// The largest bulk user import body in bytes (0: no limit).
    #[arg(long, default_value_t = segq::server::DEFAULT_MAX_IMPORT_BYTES)]
    max_import_bytes: u64,
    /// Threads that evaluate segment queries chunk by chunk (default: one
    /// per core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    query_threads: Option<u16>,
    /// Threads that serve the HTTP connections (default: half the cores,
    /// at least one). Segment queries that are not O(1) run on the query
    /// threads and the blocking pool, not on these.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    http_threads: Option<u16>,
    /// An object store the data directory is shipped to and restored from:
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`
    /// (credentials from the usual environment variables) or
    /// `file:///folder`. At start, what the store holds past the local
    /// files is restored (an empty data directory gets everything); then
    /// snapshots, log generations and the live log are uploaded in the
    /// background (every `ship_interval_ms`, and at shutdown). The node
    /// takes the store's lease first (`server/LEASE`): it refuses to start
    /// while another node holds it, and stops taking writes if another
    /// node takes it over.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Serves as a read replica of the object store a primary ships to
    /// (the URL its `--store` names): the data directory (empty, or a
    /// replica's) becomes a copy of the store, then new manifests and log
    /// data are applied every `replica_poll_ms`. Counts, estimates,
    /// members and checks are answered; writes are refused, naming the
    /// primary. Each answer carries `X-Replica-Lag-Ms`.
    #[arg(long, value_name = "URL", conflicts_with = "store")]
    replica_of: Option<String>,
}

/// The data directory and the flags that override its configuration
/// (`segq serve` and `segq config` take the same). A flag wins over its
/// `SEGQ_*` environment variable, which wins over `segq.json`.
#[derive(Args)]
pub struct ConfigArgs {
    /// The data directory (created if missing).
    #[arg(long, default_value = "./segq-data")]
    pub data: PathBuf,
    /// Partner requests per data import key per hour (0: no limit);
    /// overrides the configuration file.
    #[arg(long)]
    rate_limit_per_hour: Option<u64>,
    /// The largest partner request body in bytes; overrides the
    /// configuration file.
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// Seconds a connection has to send a request's headers; overrides
    /// the configuration file.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    header_read_timeout_secs: Option<u64>,
    /// Seconds to wait for the next part of a request body; overrides the
    /// configuration file.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    body_read_timeout_secs: Option<u64>,
    /// The slowest average request body rate after the body timeout's
    /// grace, in bytes per second (0: none); overrides the configuration
    /// file.
    #[arg(long)]
    min_body_bytes_per_sec: Option<u64>,
    /// Seconds a kept-alive connection may wait idle for its next request;
    /// overrides the configuration file.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_secs: Option<u64>,
    /// Open connections at most; overrides the configuration file.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// Partner request body bytes held in memory at once, all requests
    /// together; overrides the configuration file.
    #[arg(long)]
    max_buffered_body_bytes: Option<usize>,
}

impl ConfigArgs {
    /// Sets the fields given as flags.
    pub fn apply(&self, c: &mut Config) {
        if let Some(n) = self.rate_limit_per_hour {
            c.rate_limit_per_hour = n;
        }
        if let Some(n) = self.max_body_bytes {
            c.max_body_bytes = n;
        }
        if let Some(s) = self.header_read_timeout_secs {
            c.header_read_timeout_secs = s;
        }
        if let Some(s) = self.body_read_timeout_secs {
            c.body_read_timeout_secs = s;
        }
        if let Some(n) = self.min_body_bytes_per_sec {
            c.min_body_bytes_per_sec = n;
        }
        if let Some(s) = self.idle_timeout_secs {
            c.idle_timeout_secs = s;
        }
        if let Some(n) = self.max_connections {
            c.max_connections = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = self.max_buffered_body_bytes {
            c.max_buffered_body_bytes = n;
        }
    }
}

/// Looks an environment variable up (`SEGQ_*` configuration fields).
pub fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `segq config`: the effective configuration (`segq.json`, then the
/// `SEGQ_*` variables, then the flags) as JSON, secrets masked. Reads the
/// file only: creates nothing, takes no lock. The variables used go to
/// stderr.
pub fn show_config(args: ConfigArgs, out: &mut impl Write) -> Result<(), Failure> {
    let path = args.data.join("segq.json");
    let mut config = match Config::load_existing(&path)? {
        Some(c) => c,
        None => {
            eprintln!(
                "{} does not exist: these are the defaults; the first `segq serve` \
                 generates the partner_api_keys",
                path.display()
            );
            Config {
                partner_api_keys: Default::default(),
                ..Config::generate()
            }
        }
    };
    let used = config.apply_env(&env_var)?;
    if !used.is_empty() {
        eprintln!("from the environment: {}", used.join(", "));
    }
    args.apply(&mut config);
    let text = serde_json::to_string_pretty(&config.masked())
        .map_err(|e| Error::Internal(format!("configuration: {e}")))?;
    writeln!(out, "{text}").map_err(crate::io_err)?;
    Ok(())
}

/// `segq serve`: opens the data directory, binds, and serves until SIGINT
/// or SIGTERM.
pub fn run(args: ServeArgs) -> Result<(), Failure> {
    if let Some(n) = args.query_threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(usize::from(n))
            .build_global()
            .map_err(|e| Error::Internal(format!("sizing the query threads: {e}")))?;
    }
    let bucket: Option<std::sync::Arc<dyn segq::engine::store::Bucket>> = match &args.store {
        Some(url) => Some(std::sync::Arc::new(
            segq::engine::store::ObjectBucket::from_url(url)?,
        )),
        None => None,
    };
    let replica: Option<std::sync::Arc<dyn segq::engine::store::Bucket>> = match &args.replica_of {
        Some(url) => Some(std::sync::Arc::new(
            segq::engine::store::ObjectBucket::from_url(url)?,
        )),
        None => None,
    };
    let mut following = None;
    let (engine, lease) = match (&bucket, replica) {
        (Some(b), _) => {
            let (e, l) = data::open_from_store(&args.config.data, b.clone())?;
            (e, Some(l))
        }
        (None, Some(r)) => {
            let (e, f) = data::open_replica(&args.config.data, r)?;
            let every = std::time::Duration::from_millis(e.config().replica_poll_ms.max(1));
            following = Some(f.start(every));
            (e, None)
        }
        (None, None) => (data::open(&args.config.data, Access::Write)?, None),
    };
    if engine.config().durability == segq::engine::Durability::ObjectStore
        && bucket.is_none()
        && following.is_none()
    {
        return Err(Error::Config {
            path: args.config.data.join("segq.json"),
            reason: "durability \"object-store\" acknowledges a change once it is in the object \
                     store, so it needs --store URL (or durability \"local\")"
                .into(),
        }
        .into());
    }
    let shipping = match (bucket, lease) {
        (Some(b), Some(l)) => {
            Some(segq::engine::store::Shipper::with_lease(engine.clone(), b, l).start())
        }
        _ => None,
    };
    for r in engine.recoveries() {
        tracing::warn!("recovered a damaged log: {r}");
    }
    // Fold logs into snapshots when they pass the configured thresholds,
    // looked at every second (two file sizes a workspace); a compaction
    // cut short by the process exiting is safe by construction.
    // A replica's primary compacts: its snapshots come through the store.
    if following.is_none() {
        engine.start_compactor(std::time::Duration::from_secs(1))?;
    }
    let mut config = engine.config().clone();
    args.config.apply(&mut config);
    let mut options = segq::server::ServerOptions::from_config(&config);
    options.max_import_bytes = (args.max_import_bytes > 0).then_some(args.max_import_bytes);
    let listen_err = |e: io::Error| Error::io(&args.listen, e);
    let http_threads = args.http_threads.map_or_else(
        || {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get() / 2)
                .max(1)
        },
        usize::from,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(http_threads)
        .enable_all()
        .build()
        .map_err(Error::io_at("<tokio runtime>"))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(listen_err)?;
        let addr = listener.local_addr().map_err(listen_err)?;
        let signal = segq::server::shutdown_signal();
        tracing::info!("listening on {addr}");
        // Everything is synced when `serve_with` returns: the process then
        // exits without freeing the in-memory state (seconds for millions
        // of users); the OS reclaims it and releases the directory lock.
        std::mem::forget(engine.clone());
        segq::server::serve_with(engine, options, listener, signal)
            .await
            .map_err(Error::io_at(format!("serving on {addr}")))?;
        Ok::<(), Error>(())
    })?;
    if let Some(f) = following {
        f.stop();
    }
    // The logs are synced: ship what they hold a last time.
    if let Some(t) = shipping {
        match t.stop() {
            Ok(s) => tracing::info!(
                uploads = s.uploads,
                bytes = s.bytes,
                "shipped to the object store"
            ),
            Err(e) => tracing::error!("the last shipment to the object store failed: {e}"),
        }
    }
    tracing::info!("stopped");
    Ok(())
}
