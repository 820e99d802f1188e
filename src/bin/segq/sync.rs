//! `segq sync`: keeps a partner cohort on a server equal to a file of
//! identifiers, once or every period ([`segq::sync`] holds the diffing,
//! batching, state and retries; this file the HTTP, the progress bar, the
//! cadence and Ctrl-C).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use segq::sync::{self, IdKind, Job, Layout, NoReply, Observer, Reply, RetryPolicy, Transport};
use segq::{Error, Partner};

use crate::{io_err, Failure};

/// `segq sync`.
#[derive(Args)]
pub struct SyncArgs {
    /// The members file: one identifier a line, or CSV with --column.
    members: PathBuf,
    /// With a CSV members file: the header's column holding the
    /// identifiers.
    #[arg(long)]
    column: Option<String>,
    /// What the identifiers are: external_id, device_id or alias.
    #[arg(long, default_value = "external_id")]
    id_type: String,
    /// With --id-type alias: the aliases' label (each line is an
    /// alias_name).
    #[arg(long)]
    alias_label: Option<String>,
    /// The server's base URL, e.g. https://segq.example.com.
    #[arg(long)]
    server: String,
    /// The partner: amplitude, mixpanel, heap, census, hightouch, segment,
    /// kubit or tinyclues.
    #[arg(long)]
    partner: String,
    /// The partner_api_key (default: the SEGQ_PARTNER_API_KEY environment
    /// variable).
    #[arg(long)]
    partner_api_key: Option<String>,
    /// The data import key, sent as client_secret (default: the
    /// SEGQ_DATA_IMPORT_KEY environment variable).
    #[arg(long)]
    data_import_key: Option<String>,
    /// The cohort's id.
    #[arg(long)]
    cohort_id: String,
    /// The cohort's name (created, or renamed to it, at every run).
    #[arg(long)]
    name: String,
    /// The state file (default: under $SEGQ_SYNC_STATE_DIR, else
    /// $XDG_STATE_HOME/segq/sync, else ~/.local/state/segq/sync).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Sync once and exit (the default).
    #[arg(long, conflicts_with = "every")]
    once: bool,
    /// Sync every period: 1m, 1h, 1d (any whole number of s, m, h or d).
    /// A run that overruns its period skips the runs it overlapped.
    #[arg(long)]
    every: Option<String>,
    /// Send everyone in the file as entered, not only who entered since
    /// the last sync (who left is still removed).
    #[arg(long)]
    full: bool,
    /// Identifiers per request (1 to 1000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=1000))]
    batch_size: u16,
    /// Requests in flight (1 to 64).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=64))]
    in_flight: u8,
    /// Sends of one request at most, the first included (1 to 100).
    #[arg(long, default_value_t = RetryPolicy::default().attempts, value_parser = clap::value_parser!(u32).range(1..=100))]
    attempts: u32,
    /// The first retry's backoff in milliseconds (doubling after each
    /// failure, with jitter).
    #[arg(long, default_value_t = 250)]
    retry_base_ms: u64,
    /// The longest backoff in milliseconds (a 429's Retry-After may ask
    /// for longer and is honoured).
    #[arg(long, default_value_t = 30_000)]
    retry_max_ms: u64,
    /// Seconds a request may take before it is abandoned and retried.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_secs: u64,
    /// Print each run's summary as one JSON line on stdout.
    #[arg(long)]
    json: bool,
}

/// Ctrl-C (or SIGTERM) seen: 0 no, 1 once (finish what is in flight), 2
/// twice (exit now).
static SIGNALS: AtomicU8 = AtomicU8::new(0);

/// `segq sync`. Exits 130 when Ctrl-C interrupted a run before it was
/// done (what was acknowledged is saved).
pub fn run(args: SyncArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let (job, layout) = job_of(&args)?;
    let period = args.every.as_deref().map(sync::parse_period).transpose()?;
    let transport = Http::new(&job.server, Duration::from_secs(args.timeout_secs))?;
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(stop.clone());
    let once = |out: &mut dyn Write| -> Result<sync::Summary, Failure> {
        let members = sync::read_members(&args.members, &layout)?;
        let progress = Progress::new();
        let result = sync::sync_once(&job, &members, &transport, &progress, &stop);
        progress.finish();
        let summary = result?;
        if args.json {
            let line = serde_json::to_string(&summary)
                .map_err(|e| Error::Internal(format!("summary: {e}")))?;
            writeln!(out, "{line}").map_err(io_err)?;
        } else {
            writeln!(out, "{summary}").map_err(io_err)?;
        }
        out.flush().map_err(io_err)?;
        Ok(summary)
    };
    let Some(period) = period else {
        let summary = once(out)?;
        if summary.interrupted {
            return Err(Failure::Exit(130));
        }
        return Ok(());
    };
    loop {
        let started = Instant::now();
        let interrupted = match once(out) {
            Ok(s) => s.interrupted,
            // A periodic sync carries on: the next run tries again (and
            // resumes what this one acknowledged).
            Err(Failure::Lib(e)) => {
                eprintln!("error: {e}");
                false
            }
            Err(f) => return Err(f),
        };
        if stop.load(Ordering::SeqCst) {
            return if interrupted {
                Err(Failure::Exit(130))
            } else {
                Ok(())
            };
        }
        let (next, skipped) = sync::next_start(started, period, Instant::now());
        if skipped > 0 {
            eprintln!(
                "segq sync: the run took {:.1}s, longer than the period: skipping {skipped} run(s)",
                started.elapsed().as_secs_f64()
            );
        }
        while Instant::now() < next {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let left = next.saturating_duration_since(Instant::now());
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }
}

/// The job and the members file's layout from the arguments, keys from the
/// environment where not given.
fn job_of(args: &SyncArgs) -> Result<(Job, Layout), Failure> {
    let partner: Partner = args.partner.parse().map_err(|_| Error::UnknownPartner {
        found: args.partner.clone(),
    })?;
    let kind = IdKind::parse(&args.id_type, args.alias_label.as_deref())?;
    let partner_api_key = secret(
        &args.partner_api_key,
        "SEGQ_PARTNER_API_KEY",
        "--partner-api-key",
    )?;
    let data_import_key = secret(
        &args.data_import_key,
        "SEGQ_DATA_IMPORT_KEY",
        "--data-import-key",
    )?;
    let server = server_url(&args.server)?;
    if args.retry_base_ms == 0 || args.retry_max_ms < args.retry_base_ms {
        return Err(Error::InvalidArgument(
            "--retry-base-ms must be at least 1 and at most --retry-max-ms".into(),
        )
        .into());
    }
    let state = match &args.state {
        Some(p) => p.clone(),
        None => sync::default_state_path(&state_dir(), &server, partner, &args.cohort_id, &kind),
    };
    let layout = match &args.column {
        Some(c) => Layout::Csv { column: c.clone() },
        None => Layout::Lines,
    };
    let job = Job {
        server,
        partner,
        partner_api_key,
        data_import_key,
        cohort_id: args.cohort_id.clone(),
        name: args.name.clone(),
        kind,
        state,
        full: args.full,
        batch_size: usize::from(args.batch_size),
        in_flight: usize::from(args.in_flight),
        retry: RetryPolicy {
            attempts: args.attempts,
            base: Duration::from_millis(args.retry_base_ms),
            max: Duration::from_millis(args.retry_max_ms),
        },
    };
    Ok((job, layout))
}

/// Where state files go by default.
/// A secret given by its flag, else by its environment variable.
pub(crate) fn secret(given: &Option<String>, var: &str, flag: &str) -> Result<String, Failure> {
    match given {
        Some(v) => Ok(v.clone()),
        None => std::env::var(var)
            .map_err(|_| Failure::Other(format!("{flag} is needed (or {var} in the environment)"))),
    }
}

/// A server's base URL, without a trailing `/`.
pub(crate) fn server_url(given: &str) -> Result<String, Failure> {
    let server = given.trim_end_matches('/').to_string();
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        return Err(Error::InvalidArgument(format!(
            "--server {given:?}: expected a URL starting with http:// or https://"
        ))
        .into());
    }
    Ok(server)
}

fn state_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(d) = var("SEGQ_SYNC_STATE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = var("XDG_STATE_HOME") {
        return PathBuf::from(d).join("segq").join("sync");
    }
    if let Some(h) = var("HOME") {
        return PathBuf::from(h).join(".local/state/segq/sync");
    }
    PathBuf::from(".segq-sync")
}

/// Sets `stop` on the first Ctrl-C or SIGTERM (the runs finish the
/// batches in flight and save the state); exits at once on the second.
fn watch_signals(stop: Arc<AtomicBool>) {
    let started = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                #[cfg(unix)]
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                loop {
                    #[cfg(unix)]
                    let got = match term.as_mut() {
                        Some(t) => tokio::select! {
                            r = tokio::signal::ctrl_c() => r.is_ok(),
                            r = t.recv() => r.is_some(),
                        },
                        None => tokio::signal::ctrl_c().await.is_ok(),
                    };
                    #[cfg(not(unix))]
                    let got = tokio::signal::ctrl_c().await.is_ok();
                    if !got {
                        return;
                    }
                    if SIGNALS.fetch_add(1, Ordering::SeqCst) == 0 {
                        stop.store(true, Ordering::SeqCst);
                        eprintln!(
                            "segq sync: stopping: finishing the batches in flight and saving the state (Ctrl-C again to quit at once)"
                        );
                    } else {
                        std::process::exit(130);
                    }
                }
            });
        });
    if let Err(e) = started {
        eprintln!("segq sync: cannot watch for Ctrl-C: {e}");
    }
}

/// The HTTP transport: a blocking client shared by the requests in
/// flight, keep-alive.
pub struct Http {
    client: reqwest::blocking::Client,
    base: String,
}

impl Http {
    pub fn new(base: &str, timeout: Duration) -> Result<Http, Failure> {
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .build()
            .map_err(|e| Failure::Other(format!("cannot make an HTTP client: {e}")))?;
        Ok(Http {
            client,
            base: base.to_string(),
        })
    }
}

impl Transport for Http {
    fn post(&self, path: &str, body: &[u8]) -> Result<Reply, NoReply> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .map_err(|e| NoReply(format!("{url}: {}", chain(&e))))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(retry_after);
        let body = resp
            .text()
            .map_err(|e| NoReply(format!("{url}: reading the response: {}", chain(&e))))?;
        Ok(Reply {
            status,
            retry_after,
            body,
        })
    }
}

/// An error with its sources, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// A `Retry-After` value: seconds, or an HTTP date.
fn retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// A progress bar of identifiers acknowledged, when stderr is a terminal;
/// retries are said on stderr either way.
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new() -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} identifiers ({per_sec}, eta {eta}) {msg}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Progress { bar }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Observer for Progress {
    fn planned(&self, batches: usize, ids: usize) {
        if let Some(b) = &self.bar {
            b.set_length(b.length().unwrap_or(0) + ids as u64);
            b.set_message(format!("{batches} batches"));
        }
    }

    fn acknowledged(&self, ids: usize) {
        if let Some(b) = &self.bar {
            b.inc(ids as u64);
        }
    }

    fn retrying(&self, what: &str, why: &str, wait: Duration) {
        let line = format!(
            "segq sync: {what} failed ({why}); retrying in {:.2}s",
            wait.as_secs_f64()
        );
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }
}
