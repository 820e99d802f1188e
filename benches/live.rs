//! What is measured: live segments on a mapped snapshot (the file named by
//! `SEGQ_BENCH_SNAPSHOT`, opened read-only and never written; else the
//! medium workload of ../shared/WORKLOAD.md, 10M users and 200 cohorts,
//! seed 42, written once to `target/bench-data/medium-42.segqsnap` and
//! reused), with ten saved segments of the six query
//! shapes (each shape, and four more over other cohorts), kept live:
//!
//! - `refresh_1000`: bringing every live segment up to date after one
//!   import of 1,000 identifiers into cohort c0 (which five of the ten
//!   segments read), the change applied untimed and only the refresh
//!   timed. Like the workload's live delta, every cohort first gets
//!   10,000 random members added and 10,000 removed since the snapshot
//!   (untimed, before the live segments are built, which serializes them
//!   as queries would); then the same 1,000 random users are added to and
//!   removed from c0 in turn, so its in-memory delta stays about that size
//!   however many iterations run;
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

#[path = "common/medium.rs"]
mod medium;
use medium::medium_snapshot;

fn workspace() -> Workspace {
    let path = medium_snapshot();
    let snap = Arc::new(Snapshot::open(&path).expect("opens the snapshot"));
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
    let users = ws.users.len();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let change = |cohort: u32, ops: Vec<MemberOp>| Change::CohortChanged {
        partner: PARTNER,
        cohort_id: cohort_id(cohort),
        at_ms: record::to_ms(Utc::now()),
        resolved: ResolvedChanges {
            matched: ops.len() as u64,
            ops,
            ..ResolvedChanges::default()
        },
    };
    // The standing delta: in every cohort, 10,000 added, 10,000 removed.
    for cohort in 0..200 {
        for remove in [false, true] {
            let ops = (0..10_000)
                .map(|_| MemberOp {
                    user: UserId(rng.gen_range(0..users)),
                    remove,
                })
                .collect();
            record::apply(&mut ws, &change(cohort, ops)).expect("applies");
        }
    }
    let src = SerialCache::default();
    let mut live = LiveSegments::build(&ws, &src);
    eprintln!(
        "{} users, {} live segments built in {:?}",
        ws.users.len(),
        live.count(),
        t.elapsed()
    );
    let batch: Vec<UserId> = (0..1_000)
        .map(|_| UserId(rng.gen_range(0..users)))
        .collect();
    let mut g = c.benchmark_group("live");
    g.sample_size(30).measurement_time(Duration::from_secs(4));
    let mut remove = false;
    g.bench_function("refresh_1000", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let ops = batch
                    .iter()
                    .map(|&user| MemberOp { user, remove })
                    .collect();
                remove = !remove;
                let ch = change(0, ops);
                record::apply(&mut ws, &ch).expect("applies");
                let mut touched = Touched::default();
                record::touched(&ch, &mut touched);
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
