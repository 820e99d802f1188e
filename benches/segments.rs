//! What is measured: the segment API over HTTP on loopback (the in-process
//! server on 127.0.0.1, a keep-alive blocking client), on a generated
//! workspace put into a data directory through the engine, as the server
//! would have received it (users by `upsert_users` in batches of 100,000,
//! cohort memberships by `import_users` in requests of 1,000 identifiers,
//! identified users by user_id, anonymous ones by device_id):
//!
//! - `count`: the latency of `POST /segments/count` for each of the six
//!   query shapes of ../shared/WORKLOAD.md (exact counts, the filter in
//!   the text form);
//! - `check`: one-user look-ups (`POST /segments/check`, one user of a
//!   four-leaf filter per request; throughput = look-ups per second), from
//!   one client and from four at once, and batches of 1,000 users per
//!   request (users per second); the same look-ups in the library
//!   (`query::check`, `query::check_many`) show what HTTP adds;
//! - `export`: a page of up to 100,000 members streamed as JSON Lines and
//!   as CSV (throughput = users per second).
//!
//! How to run: `cargo bench --bench segments` (1M users, 200 cohorts);
//! `SEGQ_BENCH_USERS=100000 SEGQ_BENCH_COHORTS=50 cargo bench --bench
//! segments` for a quick run. Loading the data directory is timed and
//! printed to stderr before the measurements.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use reqwest::blocking::Client;
use segq::engine::Engine;
use segq::import::{parse_users_request, CohortRequest, Credentials};
use segq::users::NewUser;
use segq::workload::{self, Spec};
use segq::{query, UserId};
use serde_json::{json, Value};

const WS: &str = "bench";

/// Loads the generated workspace into `engine` through its write path.
fn load(engine: &Engine, w: &workload::Workload) {
    let t = Instant::now();
    engine.create_workspace(WS).expect("creates the workspace");
    let handle = engine.workspace(WS).expect("the workspace");
    let ws = &w.workspace;
    let n = ws.users.len();
    for start in (0..n).step_by(100_000) {
        let batch: Vec<NewUser> = (start..(start + 100_000).min(n))
            .map(|u| {
                let r = ws.users.get(UserId(u)).expect("ids are dense");
                NewUser {
                    external_id: r.external_id.as_deref().map(String::from),
                    devices: r.devices.iter().map(|d| d.to_string()).collect(),
                    aliases: r
                        .aliases
                        .iter()
                        .map(|(l, n)| (l.to_string(), n.to_string()))
                        .collect(),
                    bucket: Some(r.bucket),
                }
            })
            .collect();
        let report = handle.upsert_users(batch).expect("loads users");
        assert!(report.failed.is_empty(), "{:?}", &report.failed[..1]);
    }
    let users_took = t.elapsed();

    let credentials = Credentials {
        partner_api_key: "bench".into(),
        client_secret: "bench".into(),
    };
    let mut requests: Vec<Vec<u8>> = Vec::new();
    let mut memberships = 0u64;
    for c in &w.cohorts {
        let cohort = ws
            .cohorts
            .resolve(workload::PARTNER, &c.cohort_id)
            .expect("a generated cohort");
        handle
            .upsert_cohort(
                workload::PARTNER,
                &CohortRequest {
                    credentials: credentials.clone(),
                    cohort_id: c.cohort_id.clone(),
                    name: cohort.name.clone(),
                    created_at: Utc::now().fixed_offset(),
                },
            )
            .expect("creates the cohort");
        let ids: Vec<u32> = cohort.members.iter().unwrap().collect();
        memberships += ids.len() as u64;
        for chunk in ids.chunks(1_000) {
            let (mut user_ids, mut device_ids) = (Vec::new(), Vec::new());
            for &u in chunk {
                let r = ws.users.get(UserId(u)).expect("a member exists");
                match &r.external_id {
                    Some(e) => user_ids.push(e.to_string()),
                    None => device_ids.push(r.devices[0].to_string()),
                }
            }
            let body = json!({"partner_api_key": "bench", "client_secret": "bench",
                "cohort_id": c.cohort_id,
                "cohort_changes": [{"user_ids": user_ids, "device_ids": device_ids}]});
            requests.push(serde_json::to_vec(&body).expect("serialises"));
        }
    }
    let n_requests = requests.len();
    // Requests in parallel, as partners send them: writers share fsyncs.
    requests.into_par_iter().for_each(|body| {
        let req = parse_users_request(&body).expect("a valid request");
        handle
            .import_users(workload::PARTNER, &req, Utc::now())
            .expect("imports");
    });
    eprintln!(
        "loaded {n} users in {users_took:.2?}, then {memberships} memberships of {} cohorts \
         in {n_requests} requests; {:.2?} in all",
        w.cohorts.len(),
        t.elapsed()
    );
}

struct Http {
    client: Client,
    base: String,
    token: String,
}

impl Http {
    fn post(&self, path: &str, body: &Value) -> reqwest::blocking::Response {
        let r = self
            .client
            .post(format!("{}/workspaces/{WS}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .expect("the server answers");
        assert_eq!(r.status().as_u16(), 200, "{path} {body}");
        r
    }

    fn post_json(&self, path: &str, body: &Value) -> Value {
        self.post(path, body).json().expect("a JSON answer")
    }
}

fn bench(c: &mut Criterion) {
    let spec = Spec::from_env(Spec {
        users: 1_000_000,
        cohorts: 200,
        seed: Spec::SMALL.seed,
    });
    let w = workload::generate("generated", spec).expect("the workload generates");
    let dir = tempfile::tempdir().expect("a temp dir");
    let (engine, token) = Engine::open(dir.path()).expect("opens");
    token.expect("a new admin token");
    load(&engine, &w);
    // The queries' workspace API key (the admin token reads no workspace
    // data).
    let token = engine
        .create_api_key(WS, "bench", vec![segq::access::Scope::SegmentsRead])
        .expect("a workspace API key")
        .key;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("binds");
    let base = format!("http://{}", listener.local_addr().expect("an address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(segq::server::serve(Arc::clone(&engine), listener, async {
        let _ = stopped.await;
    }));
    let http = Http {
        client: Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(600))
            .build()
            .expect("a client"),
        base,
        token,
    };

    let shapes = workload::query_shapes(spec.cohorts);
    // The loaded workspace answers as the generated one.
    let src = segq::query::SerialCache::default();
    for (name, filter) in &shapes {
        let want = query::count(&w.workspace, &src, filter, false)
            .expect("counts")
            .count;
        let got = http.post_json("/segments/count", &json!({"filter": filter.to_string()}));
        assert_eq!(got["count"], want, "{name}");
    }
    let tag = format!("{}users", spec.users);

    let mut g = c.benchmark_group(format!("segments/count/{tag}"));
    g.sample_size(30);
    for (name, filter) in &shapes {
        let body = json!({"filter": filter.to_string()});
        g.bench_function(*name, |b| {
            b.iter(|| http.post_json("/segments/count", &body))
        });
    }
    g.finish();

    let (_, target) = &shapes[2];
    let target = target.to_string();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let users: Vec<Value> = (0..4_096)
        .map(|_| {
            let u = rng.gen_range(0..spec.users);
            if u % 3 == 0 {
                json!({"device_id": format!("d{u}")})
            } else {
                json!({"external_id": format!("u{u}")})
            }
        })
        .collect();
    let mut g = c.benchmark_group(format!("segments/check/{tag}"));
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("one user", |b| {
        b.iter(|| {
            i = (i + 1) % users.len();
            http.post_json(
                "/segments/check",
                &json!({"filter": target, "user": users[i]}),
            )
        })
    });
    // Four clients at once (each request as above); throughput is the
    // total of look-ups per second.
    g.bench_function("one user, 4 concurrent clients", |b| {
        b.iter_custom(|iters| {
            let per = iters.div_ceil(4);
            let t = Instant::now();
            std::thread::scope(|s| {
                for k in 0..4 {
                    let (http, users, target) = (&http, &users, &target);
                    s.spawn(move || {
                        for j in 0..per as usize {
                            let u = &users[(k * 1_000 + j) % users.len()];
                            http.post_json(
                                "/segments/check",
                                &json!({"filter": target, "user": u}),
                            );
                        }
                    });
                }
            });
            t.elapsed().mul_f64(iters as f64 / (per * 4) as f64)
        })
    });
    // The same look-up in the library, without HTTP: what the transport
    // costs.
    let refs: Vec<segq::UserRef> = users
        .iter()
        .map(|u| segq::server::extract::parse_user_ref(u).expect("a user"))
        .collect();
    let filter = segq::segment::parse(&target).expect("parses");
    let handle = engine.workspace(WS).expect("the workspace");
    let mut j = 0usize;
    g.bench_function("one user, in the library", |b| {
        b.iter(|| {
            j = (j + 1) % refs.len();
            let ws = handle.read();
            query::check(&ws, handle.bitmaps(), &[&filter], &refs[j]).expect("checks")
        })
    });
    g.throughput(Throughput::Elements(1_000));
    g.bench_function("batch of 1000 users, in the library", |b| {
        b.iter(|| {
            let ws = handle.read();
            query::check_many(&ws, handle.bitmaps(), &filter, &refs[..1_000]).expect("checks")
        })
    });
    let batch = json!({"filter": target, "users": users[..1_000]});
    g.bench_function("batch of 1000 users", |b| {
        b.iter(|| http.post_json("/segments/check", &batch))
    });
    g.finish();

    let (_, large) = &shapes[0];
    let large = large.to_string();
    let page = http
        .post(
            "/segments/members",
            &json!({"filter": large, "limit": 100_000}),
        )
        .text()
        .expect("a page")
        .lines()
        .count();
    let mut g = c.benchmark_group(format!("segments/export/{tag}"));
    g.sample_size(10);
    g.throughput(Throughput::Elements(page as u64));
    for format in ["jsonl", "csv"] {
        let body = json!({"filter": large, "limit": 100_000, "format": format});
        g.bench_function(format!("{page} users {format}"), |b| {
            b.iter(|| {
                http.post("/segments/members", &body)
                    .bytes()
                    .expect("the page")
                    .len()
            })
        });
    }
    g.finish();

    let _ = stop.send(());
    rt.block_on(server)
        .expect("the server task ends")
        .expect("serves and syncs");
    // Exit without freeing millions of users one by one.
    std::mem::forget(w);
    std::mem::forget(engine);
}

criterion_group!(benches, bench);
criterion_main!(benches);
