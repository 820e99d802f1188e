//! `segq loadtest`: a server on loopback with a generated workspace (or a
//! running server, `--server`), sync clients whose cohorts evolve every
//! round, query clients counting the six workload shapes and checking
//! single users, compactions started by the server's own thresholds
//! (lowered for the run); then the figures and a check that every synced
//! cohort holds exactly what its client last had acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Args;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use segq::engine::{CompactionStats, Engine};
use segq::sync::{self, IdKind, Job, NoReply, Reply, RetryPolicy, Syncer, Transport};
use segq::workload::{self, Spec};
use segq::{Error, Partner};

use crate::sync::Http;
use crate::{io_err, Failure};

/// `segq loadtest`.
#[derive(Args)]
pub struct LoadtestArgs {
    /// Users of the generated workspace (`500k`, `10M` also work).
    #[arg(long, default_value = "100000", value_parser = crate::args::users_value)]
    users: u32,
    /// Cohorts of the generated workspace.
    #[arg(long, default_value_t = 20)]
    cohorts: u32,
    /// How long the clients run, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Sync clients (each syncs its own cohort, 4 requests in flight).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    sync_clients: u16,
    /// Query clients (each alternates a count of one of the six workload
    /// shapes and a one-user check).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(0..=64))]
    query_clients: u16,
    /// Members of each synced cohort (default: a tenth of the users); a
    /// tenth of them leave and as many enter every round.
    #[arg(long)]
    members: Option<u32>,
    /// Random seed of the workspace and the clients.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    /// With the server on loopback: compact once the log holds this many
    /// records (one a sync request), checked every 200 ms; a compaction
    /// also starts once half of `--seconds` passed since the last one, so
    /// every run has at least one.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    compact_after_records: u64,
    /// The nice value of the import work: the server's `import_nice` (with
    /// the server on loopback) and the sync clients' threads, which stand
    /// in for partners on machines of their own (0: as the queries).
    #[arg(long, default_value_t = segq::engine::DEFAULT_IMPORT_NICE,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    import_nice: i32,
    /// With the server on loopback: its `compaction_nice`.
    #[arg(long, default_value_t = segq::engine::DEFAULT_COMPACTION_NICE,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    compaction_nice: i32,
    /// Load a running server instead (its base URL): its workspace
    /// `--workspace` must hold the generated workload's users (external
    /// ids `u0` .. `u{--users - 1}`, as `segq snapshot write` makes them);
    /// compactions follow the server's own thresholds.
    #[arg(long)]
    server: Option<String>,
    /// With --server: the workspace.
    #[arg(long, default_value = WS, requires = "server")]
    workspace: String,
    /// With --server: amplitude's partner_api_key (default: the
    /// SEGQ_PARTNER_API_KEY environment variable).
    #[arg(long, requires = "server")]
    partner_api_key: Option<String>,
    /// With --server: a data import key of the workspace for amplitude
    /// (default: SEGQ_DATA_IMPORT_KEY).
    #[arg(long, requires = "server")]
    data_import_key: Option<String>,
    /// With --server: a workspace API key with segments:read, for the
    /// query clients and the final check (default: SEGQ_TOKEN).
    #[arg(long, requires = "server")]
    token: Option<String>,
    /// With --server: the base URL of a read replica of it (`segq serve
    /// --replica-of` its store). Every 200 ms a probe reads the server's
    /// generation and times how long until the replica answers at that
    /// generation or later (the replica lag, shipping included); at equal
    /// generations the two counts must agree.
    #[arg(long, requires = "server")]
    replica: Option<String>,
    /// With --server: the synced cohorts are `PREFIX-0`, `PREFIX-1`, ...
    /// (default `load-RUN`, RUN random: every run syncs cohorts of its
    /// own, since one left by an earlier run would hold members this run
    /// never acknowledged; they stay in the workspace).
    #[arg(long, requires = "server")]
    cohort_prefix: Option<String>,
}

const WS: &str = "load";
const PARTNER_API_KEY: &str = "pk-loadtest-0000";

/// Latencies of one kind of request, in microseconds.
#[derive(Default)]
struct Latencies(Vec<u64>);

impl Latencies {
    fn ms(&mut self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let i = ((self.0.len() - 1) as f64 * q).round() as usize;
        self.0[i] as f64 / 1000.0
    }
}

/// What the clients measured.
#[derive(Default)]
struct Figures {
    count: Latencies,
    check: Latencies,
    batch: Latencies,
    /// Batch latencies of requests that overlapped the compaction.
    batch_during_compaction: Latencies,
    count_during_compaction: Latencies,
    check_during_compaction: Latencies,
    errors: BTreeMap<String, u64>,
    changes: u64,
    rounds: u64,
    /// From a state of the server to the replica answering it.
    replica_lag: Latencies,
    /// Probes the replica did not answer within a minute.
    replica_timeouts: u64,
    /// Probes that met the replica at the server's very generation, and
    /// of those, the counts that differed.
    replica_equal: u64,
    replica_mismatches: u64,
}

/// When compactions ran: each started one, and its end once it ended.
#[derive(Default)]
struct Windows(Vec<(Instant, Option<Instant>)>);

impl Windows {
    fn overlaps(&self, start: Instant, end: Instant) -> bool {
        self.0.iter().any(|&(f, t)| match t {
            Some(t) => start < t && end > f,
            None => end > f,
        })
    }

    /// Notes whether a compaction runs now.
    fn note(&mut self, running: bool, now: Instant) {
        let open = matches!(self.0.last(), Some((_, None)));
        if running && !open {
            self.0.push((now, None));
        } else if !running && open {
            if let Some(last) = self.0.last_mut() {
                last.1 = Some(now);
            }
        }
    }
}

struct Shared {
    figures: Mutex<Figures>,
    windows: Mutex<Windows>,
}

impl Shared {
    fn error(&self, what: String) {
        let mut f = self.figures.lock().unwrap_or_else(|p| p.into_inner());
        *f.errors.entry(what).or_default() += 1;
    }
}

/// The HTTP transport, timing every users request.
struct Timed<'a> {
    http: &'a Http,
    shared: &'a Shared,
}

impl Transport for Timed<'_> {
    fn post(&self, path: &str, body: &[u8]) -> Result<Reply, NoReply> {
        let start = Instant::now();
        let r = self.http.post(path, body);
        let end = Instant::now();
        let us = end.duration_since(start).as_micros() as u64;
        match &r {
            Ok(reply) if reply.status < 300 => {
                if path.ends_with("/users") {
                    let during = self
                        .shared
                        .windows
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .overlaps(start, end);
                    let mut f = self
                        .shared
                        .figures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    f.batch.0.push(us);
                    if during {
                        f.batch_during_compaction.0.push(us);
                    }
                }
            }
            Ok(reply) => self.shared.error(format!("sync {}", reply.status)),
            Err(_) => self.shared.error("sync connection".into()),
        }
        r
    }
}

/// `segq loadtest`.
pub fn run(args: LoadtestArgs, out: &mut dyn Write) -> Result<(), Failure> {
    if let Some(server) = &args.server {
        return run_remote(&args, server, out);
    }
    let dir = std::env::temp_dir().join(format!(
        "segq-loadtest-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = run_local(&args, &dir, out);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Where the load goes, and how its compactions are seen.
struct Target {
    base: String,
    workspace: String,
    partner_api_key: String,
    data_import_key: String,
    /// A workspace API key with segments:read.
    token: String,
    /// How often the compactions are looked at.
    poll: Duration,
    /// A read replica of the server, to time its lag.
    replica: Option<String>,
    /// The cohorts synced are `PREFIX-N`.
    cohort_prefix: String,
}

/// The compactions so far, as the target tells them.
type StatsFn<'a> = &'a (dyn Fn() -> Option<CompactionStats> + Sync);

fn run_local(args: &LoadtestArgs, dir: &Path, out: &mut dyn Write) -> Result<(), Failure> {
    let spec = Spec {
        users: args.users,
        cohorts: args.cohorts,
        seed: args.seed,
    };
    let data = dir.join("data");
    let mut mkdir = std::fs::DirBuilder::new();
    mkdir.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut mkdir, 0o700);
    mkdir.create(&data).map_err(|e| Error::io(&data, e))?;
    // Compactions come from the thresholds, lowered for the run: a record
    // count, and an age of half the run so that at least one happens.
    let config = json!({
        "partner_api_keys": {"amplitude": PARTNER_API_KEY},
        "compact_after_records": args.compact_after_records,
        "compact_interval_secs": (args.seconds / 2).max(1),
        "import_nice": args.import_nice,
        "compaction_nice": args.compaction_nice,
    });
    let config_path = data.join("segq.json");
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    open.open(&config_path)
        .and_then(|mut f| f.write_all(config.to_string().as_bytes()))
        .map_err(|e| Error::io(&config_path, e))?;
    let (engine, _admin_token) = Engine::open(&data)?;
    eprintln!(
        "segq loadtest: generating {} users, {} cohorts",
        spec.users, spec.cohorts
    );
    let snap = dir.join("workload.segqsnap");
    let file = std::fs::File::create(&snap).map_err(|e| Error::io(&snap, e))?;
    let (file, _) = workload::write_snapshot(WS, spec, std::io::BufWriter::new(file))?;
    file.into_inner()
        .map_err(|e| Error::io(&snap, e.into_error()))?
        .sync_all()
        .map_err(|e| Error::io(&snap, e))?;
    engine.restore_workspace(WS, &snap)?;
    let _ = std::fs::remove_file(&snap);
    let secret = engine.create_key(WS, Partner::Amplitude)?.key;
    // The query clients' workspace API key (the admin token reads no
    // workspace data).
    let token = engine
        .create_api_key(WS, "loadtest", vec![segq::access::Scope::SegmentsRead])?
        .key;
    let compactor = engine.start_compactor(Duration::from_millis(200))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(format!("a runtime: {e}")))?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| Failure::Other(format!("binding 127.0.0.1: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::Other(format!("the address: {e}")))?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = rt.spawn(segq::server::serve(engine.clone(), listener, async {
        let _ = rx.await;
    }));
    let target = Target {
        base: format!("http://{addr}"),
        workspace: WS.into(),
        partner_api_key: PARTNER_API_KEY.into(),
        data_import_key: secret,
        token,
        poll: Duration::from_millis(5),
        replica: None,
        cohort_prefix: "load".into(),
    };
    let stats = || engine.workspace(WS).map(|h| h.compaction_stats());
    let report = drive(args, &target, &stats);
    let _ = tx.send(());
    let _ = rt.block_on(served);
    drop(engine);
    let _ = compactor.join();
    finish(args, report?, out)
}

fn run_remote(args: &LoadtestArgs, server: &str, out: &mut dyn Write) -> Result<(), Failure> {
    let target = Target {
        base: crate::sync::server_url(server)?,
        workspace: args.workspace.clone(),
        partner_api_key: crate::sync::secret(
            &args.partner_api_key,
            "SEGQ_PARTNER_API_KEY",
            "--partner-api-key",
        )?,
        data_import_key: crate::sync::secret(
            &args.data_import_key,
            "SEGQ_DATA_IMPORT_KEY",
            "--data-import-key",
        )?,
        token: crate::sync::secret(&args.token, "SEGQ_TOKEN", "--token")?,
        poll: Duration::from_millis(50),
        replica: match &args.replica {
            Some(r) => Some(crate::sync::server_url(r)?),
            None => None,
        },
        // Cohorts of this run's own: one left by an earlier run on the
        // same workspace would hold members this run never acknowledged.
        cohort_prefix: args
            .cohort_prefix
            .clone()
            .unwrap_or_else(|| format!("load-{:08x}", rand::random::<u32>())),
    };
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| Failure::Other(format!("cannot make an HTTP client: {e}")))?;
    let url = format!("{}/metrics", target.base);
    let stats = || -> Option<CompactionStats> {
        let text = client.get(&url).send().ok()?.text().ok()?;
        compaction_stats_in(&text, &target.workspace)
    };
    if stats().is_none() {
        return Err(Failure::Other(format!(
            "{url} shows no workspace {:?}: is it the server's?",
            target.workspace
        )));
    }
    let report = drive(args, &target, &stats)?;
    finish(args, report, out)
}

/// A workspace's compactions in the Prometheus text of `GET /metrics`.
fn compaction_stats_in(text: &str, workspace: &str) -> Option<CompactionStats> {
    let label = format!(
        "{{workspace=\"{}\"}} ",
        workspace.replace('\\', "\\\\").replace('"', "\\\"")
    );
    let get = |name: &str| -> Option<f64> {
        let prefix = format!("{name}{label}");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
    };
    let ms = |name: &str| get(name).map(|s| (s * 1000.0).round() as u64);
    Some(CompactionStats {
        done: get("segq_compactions_total")? as u64,
        failed: get("segq_compaction_failures_total")? as u64,
        running: get("segq_compaction_running")? as u64,
        millis: ms("segq_compaction_seconds_total")?,
        writers_held_millis: ms("segq_compaction_writers_held_seconds_total")?,
        last_millis: ms("segq_compaction_last_seconds")?,
    })
}

/// Runs the clients against the target, watches its compactions, then
/// checks every synced cohort; returns the figures.
fn drive(args: &LoadtestArgs, target: &Target, stats: StatsFn<'_>) -> Result<Value, Failure> {
    eprintln!(
        "segq loadtest: loading {}; {} sync clients, {} query clients, {} s",
        target.base, args.sync_clients, args.query_clients, args.seconds
    );
    let shared = Shared {
        figures: Mutex::new(Figures::default()),
        windows: Mutex::new(Windows::default()),
    };
    let shapes: Vec<String> = workload::query_shapes(args.cohorts)
        .into_iter()
        .map(|(_, f)| f.to_string())
        .collect();
    let members = args.members.unwrap_or(args.users / 10).clamp(1, args.users);
    let dir = std::env::temp_dir().join(format!(
        "segq-loadtest-state-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let before = stats().unwrap_or_default();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let (done, syncing) = (AtomicBool::new(false), AtomicBool::new(true));
    let mut acked: Vec<BTreeSet<String>> = Vec::new();
    let mut after = before;
    let ran = std::thread::scope(|s| -> Result<(), Failure> {
        let syncs: Vec<_> = (0..args.sync_clients)
            .map(|i| {
                let (shared, dir) = (&shared, &dir);
                s.spawn(move || sync_client(i, args, target, dir, members, deadline, shared))
            })
            .collect();
        for q in 0..args.query_clients {
            let (shared, shapes, done) = (&shared, &shapes, &done);
            s.spawn(move || query_client(q, args, target, shapes, done, shared));
        }
        if let Some(replica) = &target.replica {
            let (shared, shapes, syncing) = (&shared, &shapes, &syncing);
            s.spawn(move || replica_probe(target, replica, &shapes[0], syncing, shared));
        }
        // The compactions, as they start and end.
        let watcher = {
            let (shared, syncing) = (&shared, &syncing);
            s.spawn(move || {
                let mut last = None;
                while syncing.load(Ordering::SeqCst) {
                    if let Some(now) = stats() {
                        let running = now.running > 0
                            || last.is_some_and(|l: CompactionStats| {
                                now.done + now.failed > l.done + l.failed
                            });
                        shared
                            .windows
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .note(running, Instant::now());
                        last = Some(now);
                    }
                    std::thread::sleep(target.poll);
                }
            })
        };
        for h in syncs {
            acked.push(
                h.join()
                    .map_err(|_| Failure::Other("a sync client panicked".into()))?,
            );
        }
        syncing.store(false, Ordering::SeqCst);
        let _ = watcher.join();
        after = stats().unwrap_or(after);
        done.store(true, Ordering::SeqCst);
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&dir);
    ran?;
    let elapsed = start.elapsed().as_secs_f64();

    // Every synced cohort holds exactly what its client last had
    // acknowledged (identifiers that match no user aside).
    let (mut lost, mut extra, mut unmatched) = (0u64, 0u64, 0u64);
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .map_err(|e| Failure::Other(format!("cannot make an HTTP client: {e}")))?;
    for (i, want) in acked.iter().enumerate() {
        let filter = format!("amplitude_cohorts includes {}", cohort_of(target, i as u16));
        let held = cohort_members(&http, target, &filter)?;
        let (missing, unknown) = not_members(&http, target, &filter, want)?;
        lost += missing;
        unmatched += unknown;
        extra += held.difference(want).count() as u64;
    }

    let mut f = shared
        .figures
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    let windows = shared
        .windows
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    let errors: u64 = f.errors.values().sum();
    let compactions = after.done.saturating_sub(before.done);
    Ok(json!({
        "server": args.server.is_some(),
        "users": args.users,
        "cohorts": args.cohorts,
        "seconds": elapsed,
        "sync_clients": args.sync_clients,
        "query_clients": args.query_clients,
        "members_per_cohort": members,
        "rounds": f.rounds,
        "changes": f.changes,
        "changes_per_sec": f.changes as f64 / elapsed,
        "batches": f.batch.0.len(),
        "batch_p50_ms": f.batch.ms(0.5),
        "batch_p99_ms": f.batch.ms(0.99),
        "counts": f.count.0.len(),
        "count_p50_ms": f.count.ms(0.5),
        "count_p99_ms": f.count.ms(0.99),
        "count_max_ms": f.count.ms(1.0),
        "checks": f.check.0.len(),
        "check_p50_ms": f.check.ms(0.5),
        "check_p99_ms": f.check.ms(0.99),
        "check_max_ms": f.check.ms(1.0),
        "compactions": compactions,
        "compaction_failures": after.failed.saturating_sub(before.failed),
        "compaction_ms": after.millis.saturating_sub(before.millis),
        "compaction_writers_held_ms": after.writers_held_millis.saturating_sub(before.writers_held_millis),
        "during_compaction": {
            "windows": windows.0.len(),
            "batches": f.batch_during_compaction.0.len(),
            "batch_max_ms": f.batch_during_compaction.ms(1.0),
            "counts": f.count_during_compaction.0.len(),
            "count_p99_ms": f.count_during_compaction.ms(0.99),
            "checks": f.check_during_compaction.0.len(),
            "check_p99_ms": f.check_during_compaction.ms(0.99),
        },
        "errors": errors,
        "errors_by_status": f.errors,
        "lost": lost,
        "extra": extra,
        "unmatched": unmatched,
        "priorities": {"import_nice": args.import_nice, "compaction_nice": args.compaction_nice},
        "replica": target.replica.as_ref().map(|_| json!({
            "probes": f.replica_lag.0.len(),
            "lag_p50_ms": f.replica_lag.ms(0.5),
            "lag_p99_ms": f.replica_lag.ms(0.99),
            "lag_max_ms": f.replica_lag.ms(1.0),
            "timeouts": f.replica_timeouts,
            "equal_generations": f.replica_equal,
            "mismatches": f.replica_mismatches,
        })),
    }))
}

/// A count's answer and generation at `base`.
fn count_at(
    client: &reqwest::blocking::Client,
    base: &str,
    target: &Target,
    filter: &str,
) -> Option<(u64, u64)> {
    let url = format!("{base}/workspaces/{}/segments/count", target.workspace);
    let r = client
        .post(&url)
        .bearer_auth(&target.token)
        .json(&json!({ "filter": filter }))
        .send()
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let v: Value = r.json().ok()?;
    Some((v["count"].as_u64()?, v["generation"].as_u64()?))
}

/// Every 200 ms while the clients sync: the server's generation, then
/// the time until the replica answers at it or later.
fn replica_probe(
    target: &Target,
    replica: &str,
    filter: &str,
    syncing: &AtomicBool,
    shared: &Shared,
) {
    let Ok(client) = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
    else {
        shared.error("replica probe".into());
        return;
    };
    while syncing.load(Ordering::SeqCst) {
        let t0 = Instant::now();
        let Some((count, generation)) = count_at(&client, &target.base, target, filter) else {
            shared.error("probe of the server".into());
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        loop {
            match count_at(&client, replica, target, filter) {
                Some((c, g)) if g >= generation => {
                    let us = t0.elapsed().as_micros() as u64;
                    let mut f = shared.figures.lock().unwrap_or_else(|p| p.into_inner());
                    f.replica_lag.0.push(us);
                    if g == generation {
                        f.replica_equal += 1;
                        if c != count {
                            f.replica_mismatches += 1;
                        }
                    }
                    break;
                }
                Some(_) => {}
                None => shared.error("probe of the replica".into()),
            }
            if t0.elapsed() > Duration::from_secs(60) {
                shared
                    .figures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .replica_timeouts += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Prints the figures; fails when a cohort differs from what its client
/// had acknowledged.
fn finish(args: &LoadtestArgs, r: Value, out: &mut dyn Write) -> Result<(), Failure> {
    let n = |v: &Value| v.as_f64().unwrap_or(0.0);
    if args.json {
        writeln!(out, "{r}").map_err(io_err)?;
    } else {
        let d = &r["during_compaction"];
        writeln!(
            out,
            "{} users, {:.1} s: {} identifier changes acknowledged ({:.0}/s) in {} rounds, batch p50 {:.2} ms p99 {:.2} ms\n\
             counts: {} (p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms); checks: {} (p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms)\n\
             compactions: {} ({} ms, writers kept out {} ms); during them: {} batches (longest {:.2} ms), count p99 {:.2} ms, check p99 {:.2} ms\n\
             errors: {} {}; lost {}, extra {}",
            r["users"], n(&r["seconds"]), r["changes"], n(&r["changes_per_sec"]), r["rounds"],
            n(&r["batch_p50_ms"]), n(&r["batch_p99_ms"]),
            r["counts"], n(&r["count_p50_ms"]), n(&r["count_p99_ms"]), n(&r["count_max_ms"]),
            r["checks"], n(&r["check_p50_ms"]), n(&r["check_p99_ms"]), n(&r["check_max_ms"]),
            r["compactions"], r["compaction_ms"], r["compaction_writers_held_ms"],
            d["batches"], n(&d["batch_max_ms"]), n(&d["count_p99_ms"]), n(&d["check_p99_ms"]),
            r["errors"], r["errors_by_status"], r["lost"], r["extra"]
        )
        .map_err(io_err)?;
        let rep = &r["replica"];
        if !rep.is_null() {
            writeln!(
                out,
                "replica: {} probes, lag p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {} timeouts; \
                 {} at equal generations, {} counts differed",
                rep["probes"],
                n(&rep["lag_p50_ms"]),
                n(&rep["lag_p99_ms"]),
                n(&rep["lag_max_ms"]),
                rep["timeouts"],
                rep["equal_generations"],
                rep["mismatches"]
            )
            .map_err(io_err)?;
        }
    }
    let (lost, extra) = (
        r["lost"].as_u64().unwrap_or(0),
        r["extra"].as_u64().unwrap_or(0),
    );
    let mismatches = r["replica"]["mismatches"].as_u64().unwrap_or(0);
    if mismatches > 0 {
        return Err(Failure::Other(format!(
            "the replica answered {mismatches} counts unlike the server's at the same generation"
        )));
    }
    if lost > 0 || extra > 0 {
        return Err(Failure::Other(format!(
            "the cohorts differ from what their clients had acknowledged: {lost} lost, {extra} extra"
        )));
    }
    Ok(())
}

fn post(
    http: &reqwest::blocking::Client,
    target: &Target,
    path: &str,
    body: &Value,
) -> Result<reqwest::blocking::Response, Failure> {
    let url = format!(
        "{}/workspaces/{}/segments/{path}",
        target.base, target.workspace
    );
    let resp = http
        .post(&url)
        .bearer_auth(&target.token)
        .json(body)
        .send()
        .map_err(|e| Failure::Other(format!("{url}: {e}")))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        return Err(Failure::Other(format!("{url}: {status}: {text}")));
    }
    Ok(resp)
}

/// The external ids of a segment's members, page by page.
fn cohort_members(
    http: &reqwest::blocking::Client,
    target: &Target,
    filter: &str,
) -> Result<BTreeSet<String>, Failure> {
    let mut held = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut body = json!({"filter": filter, "limit": 1_000_000, "format": "jsonl"});
        if let Some(c) = &cursor {
            body["cursor"] = c.clone().into();
        }
        let resp = post(http, target, "members", &body)?;
        cursor = resp
            .headers()
            .get(segq::server::segments::NEXT_CURSOR)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let text = resp
            .text()
            .map_err(|e| Failure::Other(format!("members of {filter}: {e}")))?;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_str(line)
                .map_err(|e| Failure::Other(format!("members of {filter}: {e}: {line}")))?;
            // Members without an external id were never synced by a client.
            if let Some(e) = v["external_id"].as_str() {
                held.insert(e.to_string());
            }
        }
        if cursor.is_none() {
            return Ok(held);
        }
    }
}

/// Of the users a client had acknowledged, how many exist but are not in
/// the segment, and how many match no user.
fn not_members(
    http: &reqwest::blocking::Client,
    target: &Target,
    filter: &str,
    want: &BTreeSet<String>,
) -> Result<(u64, u64), Failure> {
    let (mut missing, mut unknown) = (0u64, 0u64);
    let want: Vec<&String> = want.iter().collect();
    for block in want.chunks(segq::server::segments::MAX_CHECK_USERS) {
        let users: Vec<Value> = block.iter().map(|e| json!({"external_id": e})).collect();
        let answer: Value = post(
            http,
            target,
            "check",
            &json!({"filter": filter, "users": users}),
        )?
        .json()
        .map_err(|e| Failure::Other(format!("checks of {filter}: {e}")))?;
        let results = answer["results"]
            .as_array()
            .filter(|r| r.len() == block.len())
            .ok_or_else(|| Failure::Other(format!("checks of {filter}: no results in {answer}")))?;
        for r in results {
            match (r["member"].as_bool(), r["user_id"].is_u64()) {
                (Some(true), _) => {}
                (Some(false), true) => missing += 1,
                _ => unknown += 1,
            }
        }
    }
    Ok((missing, unknown))
}

fn cohort_of(target: &Target, client: u16) -> String {
    format!("{}-{client}", target.cohort_prefix)
}

/// One sync client: rounds until the deadline, each a whole sync (the
/// last one is finished, not cut); returns the members last acknowledged.
#[allow(clippy::too_many_arguments)]
fn sync_client(
    i: u16,
    args: &LoadtestArgs,
    target: &Target,
    dir: &Path,
    members: u32,
    deadline: Instant,
    shared: &Shared,
) -> BTreeSet<String> {
    // Before the client starts its HTTP threads: they inherit it.
    if let Err(e) = segq::engine::priority::lower_current_thread(args.import_nice) {
        eprintln!("segq loadtest: sync client {i} at normal priority: {e}");
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed ^ (u64::from(i) << 32));
    let job = Job {
        server: target.base.clone(),
        partner: Partner::Amplitude,
        partner_api_key: target.partner_api_key.clone(),
        data_import_key: target.data_import_key.clone(),
        cohort_id: cohort_of(target, i),
        name: format!("Load {i}"),
        kind: IdKind::ExternalId,
        state: PathBuf::from(dir).join(format!("sync-{i}.json")),
        full: false,
        batch_size: 1000,
        in_flight: sync::IN_FLIGHT,
        retry: RetryPolicy::default(),
    };
    let Ok(http) = Http::new(&target.base, Duration::from_secs(60)) else {
        shared.error("sync client".into());
        return BTreeSet::new();
    };
    let t = Timed {
        http: &http,
        shared,
    };
    let users = args.users;
    // The cohort as user numbers (a bit per user, for picking who enters)
    // and as the sorted identifiers the sync is given. A round changes
    // both by its churn alone: nothing copies the whole cohort.
    let mut held = vec![0u64; (users as usize).div_ceil(64)];
    let mut current: Vec<String> = Vec::with_capacity(members as usize);
    while current.len() < members as usize {
        let u = rng.gen_range(0..users);
        if !flip(&mut held, u, true) {
            current.push(format!("u{u}"));
        }
    }
    current.sort_unstable();
    // Strings laid out in memory in their order make each round's merges
    // a sequential read, not a cache miss per member.
    let mut current: Vec<String> = current.iter().map(|m| m.as_str().to_owned()).collect();
    let mut syncer = Syncer::new(job);
    let never = AtomicBool::new(false);
    while Instant::now() < deadline {
        match syncer.sync(&current, &t, &sync::Quiet, &never) {
            Ok(s) => {
                let mut f = shared.figures.lock().unwrap_or_else(|p| p.into_inner());
                f.changes += s.entered + s.left;
                f.rounds += 1;
            }
            Err(e) => shared.error(format!("sync: {e}")),
        }
        // A tenth leave, as many enter.
        let churn = ((members / 10).max(1) as usize).min(current.len());
        let mut leaving: Vec<usize> =
            rand::seq::index::sample(&mut rng, current.len(), churn).into_vec();
        leaving.sort_unstable();
        // Who enters is drawn among those not in the cohort before the
        // round (not one who is leaving).
        let mut entering = Vec::with_capacity(churn);
        let mut bound = 0;
        while entering.len() < churn && bound < 100 * churn {
            let u = rng.gen_range(0..users);
            if !flip(&mut held, u, true) {
                entering.push(format!("u{u}"));
            }
            bound += 1;
        }
        for &i in &leaving {
            let u = current[i][1..].parse().expect("a generated identifier");
            flip(&mut held, u, false);
        }
        entering.sort_unstable();
        let entering = entering.iter().map(|m| m.as_str().to_owned()).collect();
        current = churned(current, &leaving, entering);
    }
    // The members last acknowledged (a failed last round is an error
    // already, and what it left on the server shows as lost or extra).
    match syncer.state() {
        Ok(state) => state.members.iter().cloned().collect(),
        Err(e) => {
            shared.error(format!("sync state: {e}"));
            BTreeSet::new()
        }
    }
}

/// Sets user `u`'s bit in `held` to `to`; whether it was set.
fn flip(held: &mut [u64], u: u32, to: bool) -> bool {
    let (w, bit) = (u as usize / 64, 1u64 << (u % 64));
    let was = held[w] & bit != 0;
    if to {
        held[w] |= bit;
    } else {
        held[w] &= !bit;
    }
    was
}

/// `current` without the members at `leaving` (sorted indexes), with
/// `entering` (sorted, none of them in `current`): one merge.
fn churned(current: Vec<String>, leaving: &[usize], entering: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(current.len() + entering.len() - leaving.len());
    let mut gone = leaving.iter().copied().peekable();
    let mut new = entering.into_iter().peekable();
    for (i, m) in current.into_iter().enumerate() {
        if gone.next_if_eq(&i).is_some() {
            continue;
        }
        while let Some(e) = new.next_if(|e| *e < m) {
            out.push(e);
        }
        out.push(m);
    }
    out.extend(new);
    out
}

/// One query client: counts and checks, alternately, until `done`.
fn query_client(
    q: u16,
    args: &LoadtestArgs,
    target: &Target,
    shapes: &[String],
    done: &AtomicBool,
    shared: &Shared,
) {
    let Ok(client) = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
    else {
        shared.error("query client".into());
        return;
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed ^ 0xC0FFEE ^ u64::from(q));
    let mut n = 0usize;
    while !done.load(Ordering::SeqCst) {
        let shape = &shapes[n % shapes.len().max(1)];
        let check = n % 2 == 1;
        n += 1;
        let (path, body) = if check {
            let user = format!("u{}", rng.gen_range(0..args.users));
            (
                "check",
                json!({"filter": shape, "user": {"external_id": user}}),
            )
        } else {
            ("count", json!({"filter": shape}))
        };
        let url = format!(
            "{}/workspaces/{}/segments/{path}",
            target.base, target.workspace
        );
        let start = Instant::now();
        let r = client
            .post(&url)
            .bearer_auth(&target.token)
            .json(&body)
            .send();
        let status = match r {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let _ = resp.bytes();
                status
            }
            Err(_) => 0,
        };
        let end = Instant::now();
        let us = end.duration_since(start).as_micros() as u64;
        // "no user holds" is a check's answer, not an error.
        if status == 200 || (check && status == 404) {
            let during = shared
                .windows
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .overlaps(start, end);
            let mut f = shared.figures.lock().unwrap_or_else(|p| p.into_inner());
            let (all, comp) = if check {
                (&mut f.check.0, during)
            } else {
                (&mut f.count.0, during)
            };
            all.push(us);
            if comp {
                if check {
                    f.check_during_compaction.0.push(us);
                } else {
                    f.count_during_compaction.0.push(us);
                }
            }
        } else {
            shared.error(format!("{path} {status}"));
        }
    }
}
