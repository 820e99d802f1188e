//! What is measured: live segments on a mapped snapshot (by default the
//! medium workload of ../shared/WORKLOAD.md at
//! `/work/bench-data/medium.segqsnap`, or `SEGQ_BENCH_SNAPSHOT`; opened
//! read-only, never written), with ten saved segments of the six query
//! shapes (each shape, and four more over other cohorts), kept live:
//!
//! - `refresh_1000`: bringing every live segment up to date after one
//!   import of 1,000 identifiers (random users added to, then removed
//!   from, cohort c0, which six of the ten segments read), the change
//!   applied untimed and only the refresh timed;
//! - `size` and `check`: a live segment's size, and a one-user check
//!   against it (one bitmap probe).
//!
//! How to run: `cargo bench --bench live`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use segq::cohorts::{MemberOp, ResolvedChanges};
use segq::engine::record::{self, Change};
use segq::segment::Filter;
use segq::snapshot::Snapshot;
use segq::workload::{self, cohort_id, PARTNER};
use segq::workspace::live::{LiveSegments, Touched};
use segq::workspace::source::SerialCache;
use segq::{UserId, Workspace};

fn workspace() -> Workspace {
    let path = std::env::var("SEGQ_BENCH_SNAPSHOT")
        .unwrap_or_else(|_| "/work/bench-data/medium.segqsnap".into());
    let snap = Arc::new(Snapshot::open(std::path::Path::new(&path)).expect("opens the snapshot"));
    let mut ws = segq::engine::persist::load_workspace(snap).expect("loads the workspace");
    let shapes = workload::query_shapes(200);
    let mut filters: Vec<Filter> = shapes.iter().map(|(_, f)| f.clone()).collect();
    // Four more, over other cohorts.
    let c = |i: u32| Filter::includes(PARTNER, cohort_id(i));
    filters.push(Filter::And(vec![c(7), c(8)]));
    filters.push(Filter::Or((40..50).map(c).collect()));
    filters.push(Filter::And(vec![c(0), c(9).not()]));
    filters.push(Filter::Or(vec![c(0), c(61)]));
    let now = record::to_ms(Utc::now());
    for (i, f) in filters.into_iter().enumerate() {
        record::apply(
            &mut ws,
            &Change::SegmentSaved {
                id: format!("s{i}"),
                name: format!("s{i}"),
                filter: f,
                at_ms: now,
            },
        )
        .expect("saves");
    }
    ws
}

fn bench(c: &mut Criterion) {
    let t = Instant::now();
    let mut ws = workspace();
    let src = SerialCache::default();
    let mut live = LiveSegments::build(&ws, &src);
    eprintln!(
        "{} users, {} live segments built in {:?}",
        ws.users.len(),
        live.count(),
        t.elapsed()
    );
    let users = ws.users.len();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut g = c.benchmark_group("live");
    g.sample_size(30).measurement_time(Duration::from_secs(4));
    let mut remove = false;
    g.bench_function("refresh_1000", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let ops: Vec<MemberOp> = (0..1_000)
                    .map(|_| MemberOp {
                        user: UserId(rng.gen_range(0..users)),
                        remove,
                    })
                    .collect();
                remove = !remove;
                let change = Change::CohortChanged {
                    partner: PARTNER,
                    cohort_id: cohort_id(0),
                    at_ms: record::to_ms(Utc::now()),
                    resolved: ResolvedChanges {
                        ops,
                        matched: 1_000,
                        ..ResolvedChanges::default()
                    },
                };
                record::apply(&mut ws, &change).expect("applies");
                let mut touched = Touched::default();
                record::touched(&change, &mut touched);
                let t = Instant::now();
                live.refresh(&ws, &touched, &src);
                total += t.elapsed();
            }
            total
        })
    });
    let probes: Vec<UserId> = (0..1_024)
        .map(|_| UserId(rng.gen_range(0..users)))
        .collect();
    g.bench_function("size", |b| {
        b.iter(|| std::hint::black_box(live.len(std::hint::black_box("s4"))))
    });
    let mut i = 0;
    g.bench_function("check", |b| {
        b.iter(|| {
            i = (i + 1) & 1_023;
            std::hint::black_box(live.contains(std::hint::black_box("s5"), probes[i]))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
