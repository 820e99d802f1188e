//! `segq serve`: the HTTP server on a data directory.

use std::io;
use std::path::PathBuf;

use clap::Args;

use segq::Error;

use crate::data::{self, Access};
use crate::Failure;

#[derive(Args)]
pub struct ServeArgs {
    /// The data directory (created if missing).
    #[arg(long, default_value = "./segq-data")]
    data: PathBuf,
    /// The address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Partner requests per data import key per hour (0: no limit);
    /// overrides the configuration file.
    #[arg(long)]
    rate_limit_per_hour: Option<u64>,
    /// The largest partner request body in bytes; overrides the
    /// configuration file.
    #[arg(long)]
    max_body_bytes: Option<usize>,
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

/// `segq serve`: opens the data directory, binds, and serves until SIGINT
/// or SIGTERM.
pub fn run(args: ServeArgs) -> Result<(), Failure> {
    if let Some(n) = args.query_threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(usize::from(n))
            .build_global()
            .map_err(|e| Error::Internal(format!("sizing the query threads: {e}")))?;
    }
    let engine = data::open(&args.data, Access::Write)?;
    for r in engine.recoveries() {
        eprintln!("segq: recovered a damaged log: {r}");
    }
    // Fold logs into snapshots when they pass the configured thresholds; a
    // compaction cut short by the process exiting is safe by construction.
    engine.start_compactor(std::time::Duration::from_secs(30));
    let mut options = segq::server::ServerOptions::from_config(engine.config());
    if let Some(n) = args.rate_limit_per_hour {
        options.rate_limit_per_hour = n;
    }
    if let Some(n) = args.max_body_bytes {
        options.max_body_bytes = n;
    }
    options.max_import_bytes = (args.max_import_bytes > 0).then_some(args.max_import_bytes);
    let limits = &mut options.limits;
    if let Some(s) = args.header_read_timeout_secs {
        limits.header_read_timeout = std::time::Duration::from_secs(s);
    }
    if let Some(s) = args.body_read_timeout_secs {
        limits.body_read_timeout = std::time::Duration::from_secs(s);
    }
    if let Some(n) = args.min_body_bytes_per_sec {
        limits.min_body_bytes_per_sec = n;
    }
    if let Some(s) = args.idle_timeout_secs {
        limits.idle_timeout = std::time::Duration::from_secs(s);
    }
    if let Some(n) = args.max_connections {
        limits.max_connections = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(n) = args.max_buffered_body_bytes {
        limits.max_buffered_body_bytes = n;
    }
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
        eprintln!("listening on {addr}");
        // Everything is synced when `serve_with` returns: the process then
        // exits without freeing the in-memory state (seconds for millions
        // of users); the OS reclaims it and releases the directory lock.
        std::mem::forget(engine.clone());
        segq::server::serve_with(engine, options, listener, async {
            segq::server::shutdown_signal().await;
            eprintln!("shutting down: finishing in-flight requests");
        })
        .await
        .map_err(Error::io_at(format!("serving on {addr}")))?;
        eprintln!("stopped");
        Ok::<(), Error>(())
    })?;
    Ok(())
}
