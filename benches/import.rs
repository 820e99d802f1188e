//! What is measured: acknowledged identifier changes per second through
//! the partner users endpoint (`POST /partners/amplitude/cohorts/users`),
//! end to end over loopback HTTP: a release build of the server runs
//! in-process (`segq::server::serve_with` on a tokio runtime) on a data
//! directory holding a workspace of 1,000,000 users (created beforehand
//! with `WorkspaceHandle::upsert_users`, in batches of 10,000); 4 client
//! threads, each a blocking reqwest client with keep-alive, send batches of
//! 1,000 user ids as partner clients do (about four requests in flight).
//! Each thread alternates adding a batch to a cohort and removing it again,
//! over 4 cohorts and distinct users, so every identifier of every request
//! is a real membership change: a durable (fsynced) log record before the
//! 200. Request bodies are serialized once, up front. The rate limit is off
//! (it would stop a key at 250,000 requests an hour).
//!
//! One criterion iteration is 8 requests per thread (32,000 identifier
//! changes); the throughput is reported in elements (identifier changes)
//! per second. The target is at least 500,000 a second on a 2-core machine.
//!
//! How to run: `cargo bench --bench import` (about a minute, most of it
//! creating the users). `SEGQ_BENCH_IMPORT_USERS=100000 cargo bench --bench
//! import` runs on a smaller workspace. `SEGQ_BENCH_IMPORT_SNAPSHOT=1`
//! compacts the workspace once its users are created, so every identifier
//! is matched through the snapshot's mapped dictionaries (as in a
//! workspace whose users came before its last compaction) rather than the
//! in-memory index. The data directory is a temporary
//! directory (on the same file system as `std::env::temp_dir()`, so `TMPDIR`
//! chooses the disk whose fsync is measured).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use segq::engine::Engine;
use segq::server::{serve_with, ServerOptions};
use segq::users::NewUser;
use segq::Partner;
use serde_json::{json, Value};

const THREADS: usize = 4;
const COHORTS: usize = 4;
const BATCH: usize = 1_000;
/// Add-then-remove pairs per thread per iteration.
const PAIRS: usize = 4;
const USER_BATCH: usize = 10_000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A running server; stopped (and its log synced) on drop.
struct Running {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(engine: Arc<Engine>) -> Running {
    let mut options = ServerOptions::from_config(engine.config());
    options.rate_limit_per_hour = 0;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("binds on loopback");
    let addr = listener.local_addr().expect("an address");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        runtime
            .block_on(serve_with(engine, options, listener, async {
                let _ = rx.await;
            }))
            .expect("serves and syncs");
    });
    Running {
        base: format!("http://{addr}"),
        stop: Some(tx),
        thread: Some(thread),
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("a client")
}

fn bench(c: &mut Criterion) {
    let users = env_or("SEGQ_BENCH_IMPORT_USERS", 1_000_000);
    assert!(users >= THREADS * PAIRS * BATCH, "too few users");
    let dir = tempfile::tempdir().expect("a temp dir");
    let (engine, _) = Engine::open(dir.path()).expect("opens");
    engine.create_workspace("bench").expect("a workspace");
    let handle = engine.workspace("bench").expect("the workspace");
    let t = Instant::now();
    for start in (0..users).step_by(USER_BATCH) {
        let batch = (start..(start + USER_BATCH).min(users))
            .map(|i| NewUser {
                external_id: Some(format!("u{i}")),
                devices: Vec::new(),
                aliases: Vec::new(),
                bucket: None,
            })
            .collect();
        let r = handle.upsert_users(batch).expect("users load");
        assert!(r.failed.is_empty(), "{:?}", &r.failed[..1]);
    }
    eprintln!("created {users} users in {:.2?}", t.elapsed());
    if env_or("SEGQ_BENCH_IMPORT_SNAPSHOT", 0) != 0 {
        let c = handle.compact().expect("compacts");
        eprintln!("compacted them into a snapshot in {} ms", c.took_ms);
        assert_eq!(handle.read().users.len() as usize, users);
    }
    let key = engine
        .create_key("bench", Partner::Amplitude)
        .expect("a key")
        .key;
    let partner_api_key = engine.config().partner_api_keys[&Partner::Amplitude].clone();
    drop(handle);
    let server = start(engine.clone());
    let url = format!("{}/partners/amplitude/cohorts/users", server.base);

    // Per thread: add a batch to a cohort, remove it, next batch. The
    // ranges of users are disjoint between threads and pairs.
    let stride = (users / (THREADS * PAIRS)) / BATCH * BATCH;
    let bodies: Vec<Vec<Vec<u8>>> = (0..THREADS)
        .map(|t| {
            (0..PAIRS)
                .flat_map(|p| {
                    let first = (t * PAIRS + p) * stride;
                    let ids: Vec<String> =
                        (first..first + BATCH).map(|i| format!("u{i}")).collect();
                    let cohort = format!("c{}", (t + p) % COHORTS);
                    [false, true].map(|remove| {
                        let body = json!({
                            "partner_api_key": partner_api_key,
                            "client_secret": key,
                            "cohort_id": cohort,
                            "cohort_changes": [{"user_ids": ids, "should_remove": remove}],
                        });
                        serde_json::to_vec(&body).expect("serialises")
                    })
                })
                .collect()
        })
        .collect();
    let clients: Vec<reqwest::blocking::Client> = (0..THREADS).map(|_| client()).collect();

    // One checked pass: every request matches and changes its 1,000 users.
    for (client, bodies) in clients.iter().zip(&bodies) {
        for body in bodies {
            let r = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .expect("answers");
            assert!(r.status().is_success(), "{}", r.status());
            let v: Value = r.json().expect("JSON");
            assert_eq!(
                (v["matched"].clone(), v["unmatched"].clone()),
                (json!(BATCH), json!(0)),
                "{v}"
            );
        }
    }
    let ws = engine.workspace("bench").expect("the workspace");
    assert_eq!(ws.read().cohorts.len(), COHORTS);
    let changes_per_iter = (THREADS * PAIRS * 2 * BATCH) as u64;

    let mut g = c.benchmark_group("import");
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(changes_per_iter));
    g.bench_function(
        format!("users/{THREADS}clients/{BATCH}ids/{users}users"),
        |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for (client, bodies) in clients.iter().zip(&bodies) {
                        let url = &url;
                        s.spawn(move || {
                            for _ in 0..iters {
                                for body in bodies {
                                    let r = client
                                        .post(url)
                                        .header("content-type", "application/json")
                                        .body(body.clone())
                                        .send()
                                        .expect("answers");
                                    assert_eq!(r.status().as_u16(), 200);
                                    // Read the (small) answer whole: the request is
                                    // acknowledged, and the connection reusable.
                                    r.bytes().expect("a body");
                                }
                            }
                        });
                    }
                });
                start.elapsed()
            })
        },
    );
    g.finish();

    // Every pass leaves the cohorts empty; every identifier was billed.
    let w = ws.read();
    for cohort in w.cohorts.iter_sorted() {
        assert!(
            cohort.is_empty(),
            "{} has {} members",
            cohort.key.cohort_id,
            cohort.len()
        );
    }
    let billed: u64 = w.data_points_by_day().map(|(_, _, n)| n).sum();
    assert_eq!(billed % changes_per_iter, 0);
    eprintln!("{billed} identifier changes acknowledged in all");
    drop(w);
    drop(server);
}

criterion_group!(benches, bench);
criterion_main!(benches);
