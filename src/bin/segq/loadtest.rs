//! `segq loadtest`: a server on loopback with a generated workspace, sync
//! clients whose cohorts evolve every round, query clients counting the
//! six workload shapes and checking single users, a compaction forced in
//! the middle; then the figures and a check that every synced cohort holds
//! exactly what its client last had acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Args;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use segq::engine::Engine;
use segq::sync::{self, IdKind, Job, NoReply, Reply, RetryPolicy, Transport};
use segq::workload::{self, Spec};
use segq::{CohortKey, Error, Partner, UserRef};

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
}

/// The window of the compaction, as offsets from the start.
#[derive(Default, Clone, Copy)]
struct Window {
    from: Option<Instant>,
    to: Option<Instant>,
}

impl Window {
    fn overlaps(&self, start: Instant, end: Instant) -> bool {
        match (self.from, self.to) {
            (Some(f), Some(t)) => start < t && end > f,
            (Some(f), None) => end > f,
            _ => false,
        }
    }
}

struct Shared {
    figures: Mutex<Figures>,
    window: Mutex<Window>,
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
    fn post(&self, path: &str, body: &Value) -> Result<Reply, NoReply> {
        let start = Instant::now();
        let r = self.http.post(path, body);
        let end = Instant::now();
        let us = end.duration_since(start).as_micros() as u64;
        match &r {
            Ok(reply) if reply.status < 300 => {
                if path.ends_with("/users") {
                    let during = self
                        .shared
                        .window
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
    let dir = std::env::temp_dir().join(format!(
        "segq-loadtest-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = run_in(&args, &dir, out);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(args: &LoadtestArgs, dir: &Path, out: &mut dyn Write) -> Result<(), Failure> {
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
    let config = json!({"partner_api_keys": {"amplitude": PARTNER_API_KEY}});
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
    let base = format!("http://{addr}");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = rt.spawn(segq::server::serve(engine.clone(), listener, async {
        let _ = rx.await;
    }));
    eprintln!(
        "segq loadtest: serving on {base}; {} sync clients, {} query clients, {} s",
        args.sync_clients, args.query_clients, args.seconds
    );

    let shared = Shared {
        figures: Mutex::new(Figures::default()),
        window: Mutex::new(Window::default()),
    };
    let shapes: Vec<String> = workload::query_shapes(spec.cohorts)
        .into_iter()
        .map(|(_, f)| f.to_string())
        .collect();
    let members = args.members.unwrap_or(spec.users / 10).clamp(1, spec.users);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let done = AtomicBool::new(false);
    let mut compaction_ms = 0u64;
    let mut acked: Vec<BTreeSet<String>> = Vec::new();
    std::thread::scope(|s| -> Result<(), Failure> {
        let syncs: Vec<_> = (0..args.sync_clients)
            .map(|i| {
                let (shared, base, secret, dir) = (&shared, &base, &secret, dir);
                s.spawn(move || sync_client(i, args, base, secret, dir, members, deadline, shared))
            })
            .collect();
        for q in 0..args.query_clients {
            let (shared, base, token, shapes, done) = (&shared, &base, &token, &shapes, &done);
            s.spawn(move || query_client(q, args, base, token, shapes, done, shared));
        }
        // The compaction, halfway.
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()) / 2);
        shared.window.lock().unwrap_or_else(|p| p.into_inner()).from = Some(Instant::now());
        let c = engine.compact(WS);
        shared.window.lock().unwrap_or_else(|p| p.into_inner()).to = Some(Instant::now());
        match c {
            Ok(c) => compaction_ms = c.took_ms,
            Err(e) => shared.error(format!("compaction: {e}")),
        }
        for h in syncs {
            acked.push(
                h.join()
                    .map_err(|_| Failure::Other("a sync client panicked".into()))?,
            );
        }
        done.store(true, Ordering::SeqCst);
        Ok(())
    })?;
    let elapsed = start.elapsed().as_secs_f64();

    // Every synced cohort holds exactly what its client last had
    // acknowledged (identifiers that match nobody aside).
    let handle = engine
        .workspace(WS)
        .ok_or_else(|| Failure::Other("the workspace is gone".into()))?;
    let (mut lost, mut extra) = (0u64, 0u64);
    {
        let w = handle.read();
        for (i, want) in acked.iter().enumerate() {
            let key = CohortKey::new(Partner::Amplitude, cohort_of(i as u16));
            let held: BTreeSet<u32> = match w.cohorts.get(&key) {
                Some(c) => c.members.iter()?.collect(),
                None => BTreeSet::new(),
            };
            let want: BTreeSet<u32> = want
                .iter()
                .filter_map(|e| w.users.lookup(&UserRef::ExternalId(e.clone())))
                .map(|u| u.0)
                .collect();
            lost += want.difference(&held).count() as u64;
            extra += held.difference(&want).count() as u64;
        }
    }
    let _ = tx.send(());
    let _ = rt.block_on(served);

    let mut f = shared
        .figures
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    let errors: u64 = f.errors.values().sum();
    let report = json!({
        "users": spec.users,
        "cohorts": spec.cohorts,
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
        "compaction_ms": compaction_ms,
        "during_compaction": {
            "batches": f.batch_during_compaction.0.len(),
            "batch_max_ms": f.batch_during_compaction.ms(1.0),
            "count_p99_ms": f.count_during_compaction.ms(0.99),
            "check_p99_ms": f.check_during_compaction.ms(0.99),
        },
        "errors": errors,
        "errors_by_status": f.errors,
        "lost": lost,
        "extra": extra,
    });
    if args.json {
        writeln!(out, "{report}").map_err(io_err)?;
    } else {
        let r = &report;
        writeln!(
            out,
            "{} users, {} s: {} identifier changes acknowledged ({:.0}/s) in {} rounds, batch p50 {:.2} ms p99 {:.2} ms\n\
             counts: {} (p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms); checks: {} (p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms)\n\
             compaction: {} ms; during it: {} batches (longest {:.2} ms), count p99 {:.2} ms, check p99 {:.2} ms\n\
             errors: {} {}; lost {}, extra {}",
            spec.users, args.seconds, f.changes, r["changes_per_sec"].as_f64().unwrap_or(0.0), f.rounds,
            r["batch_p50_ms"].as_f64().unwrap_or(0.0), r["batch_p99_ms"].as_f64().unwrap_or(0.0),
            r["counts"], r["count_p50_ms"].as_f64().unwrap_or(0.0), r["count_p99_ms"].as_f64().unwrap_or(0.0), r["count_max_ms"].as_f64().unwrap_or(0.0),
            r["checks"], r["check_p50_ms"].as_f64().unwrap_or(0.0), r["check_p99_ms"].as_f64().unwrap_or(0.0), r["check_max_ms"].as_f64().unwrap_or(0.0),
            compaction_ms, r["during_compaction"]["batches"], r["during_compaction"]["batch_max_ms"].as_f64().unwrap_or(0.0),
            r["during_compaction"]["count_p99_ms"].as_f64().unwrap_or(0.0), r["during_compaction"]["check_p99_ms"].as_f64().unwrap_or(0.0),
            errors, r["errors_by_status"], lost, extra
        )
        .map_err(io_err)?;
    }
    if lost > 0 || extra > 0 {
        return Err(Failure::Other(format!(
            "the cohorts differ from what their clients had acknowledged: {lost} lost, {extra} extra"
        )));
    }
    Ok(())
}

fn cohort_of(client: u16) -> String {
    format!("load-{client}")
}

/// One sync client: rounds until the deadline, each a whole sync (the
/// last one is finished, not cut); returns the members last acknowledged.
#[allow(clippy::too_many_arguments)]
fn sync_client(
    i: u16,
    args: &LoadtestArgs,
    base: &str,
    secret: &str,
    dir: &Path,
    members: u32,
    deadline: Instant,
    shared: &Shared,
) -> BTreeSet<String> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed ^ (u64::from(i) << 32));
    let job = Job {
        server: base.to_string(),
        partner: Partner::Amplitude,
        partner_api_key: PARTNER_API_KEY.into(),
        data_import_key: secret.to_string(),
        cohort_id: cohort_of(i),
        name: format!("Load {i}"),
        kind: IdKind::ExternalId,
        state: PathBuf::from(dir).join(format!("sync-{i}.json")),
        full: false,
        batch_size: 1000,
        in_flight: sync::IN_FLIGHT,
        retry: RetryPolicy::default(),
    };
    let Ok(http) = Http::new(base, Duration::from_secs(60)) else {
        shared.error("sync client".into());
        return BTreeSet::new();
    };
    let t = Timed {
        http: &http,
        shared,
    };
    let users = args.users;
    let pick = |rng: &mut rand_chacha::ChaCha8Rng| format!("u{}", rng.gen_range(0..users));
    let mut current: BTreeSet<String> = BTreeSet::new();
    while current.len() < members as usize {
        current.insert(pick(&mut rng));
    }
    let mut last_acked = BTreeSet::new();
    let never = AtomicBool::new(false);
    while Instant::now() < deadline {
        match sync::sync_once(&job, &current, &t, &sync::Quiet, &never) {
            Ok(s) => {
                let mut f = shared.figures.lock().unwrap_or_else(|p| p.into_inner());
                f.changes += s.entered + s.left;
                f.rounds += 1;
                last_acked = current.clone();
            }
            Err(e) => shared.error(format!("sync: {e}")),
        }
        // A tenth leave, as many enter.
        let churn = (members / 10).max(1) as usize;
        let mut v: Vec<String> = current.iter().cloned().collect();
        v.shuffle(&mut rng);
        for gone in v.iter().take(churn) {
            current.remove(gone);
        }
        let mut bound = 0;
        while current.len() < members as usize && bound < 100 * members as usize {
            current.insert(pick(&mut rng));
            bound += 1;
        }
    }
    last_acked
}

/// One query client: counts and checks, alternately, until `done`.
fn query_client(
    q: u16,
    args: &LoadtestArgs,
    base: &str,
    token: &str,
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
        let url = format!("{base}/workspaces/{WS}/segments/{path}");
        let start = Instant::now();
        let r = client.post(&url).bearer_auth(token).json(&body).send();
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
                .window
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
