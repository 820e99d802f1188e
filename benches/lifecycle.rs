//! What is measured: deleting 10,000 users in one bulk request of the
//! admin API's shape (`WorkspaceHandle::delete_users`: identifiers looked
//! up, the deletion applied to every cohort, attribute and live segment,
//! its record logged) on the medium workload of ../shared/WORKLOAD.md
//! (10M users, 200 cohorts, seed 42: the snapshot `benches/live.rs` writes
//! once to `target/bench-data/medium-42.segqsnap`, or the file named by
//! `SEGQ_BENCH_SNAPSHOT`), mapped, with ten saved segments kept live (the
//! six query shapes, NOT of a cohort, a bucket range and its NOT, every
//! user). The handle's log is in memory, so the fsync is not timed: `segq
//! users delete` on a data directory times one with it.
//!
//! Each iteration deletes another 10,000 users (external ids of random
//! identified users, none named twice), so nothing is deleted twice.
//!
//! How to run: `cargo bench --bench lifecycle`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use segq::engine::WorkspaceHandle;
use segq::segment::{BucketCmp, Filter};
use segq::snapshot::Snapshot;
use segq::workload::{self, cohort_id, PARTNER};
use segq::UserRef;

#[path = "common/medium.rs"]
mod medium;
use medium::medium_snapshot;

fn bench(c: &mut Criterion) {
    let t = Instant::now();
    let snap = Arc::new(Snapshot::open(&medium_snapshot()).expect("opens the snapshot"));
    let ws = segq::engine::persist::load_workspace(snap).expect("loads the workspace");
    let users = ws.users.len();
    let handle = WorkspaceHandle::in_memory(ws).expect("a handle");
    let mut filters: Vec<Filter> = workload::query_shapes(200)
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    filters.push(Filter::includes(PARTNER, cohort_id(3)).not());
    filters.push(Filter::Bucket(BucketCmp::Lt(500)));
    filters.push(Filter::Bucket(BucketCmp::Lt(500)).not());
    filters.push(Filter::And(vec![]));
    for (i, f) in filters.iter().enumerate() {
        handle
            .save_segment(None, &format!("s{i}"), f)
            .expect("saves");
    }
    // Identified users (one in five is anonymous: `u{n}` names nobody).
    let mut ids: Vec<u32> = (0..users).collect();
    ids.shuffle(&mut ChaCha8Rng::seed_from_u64(7));
    let mut batches = ids
        .into_iter()
        .filter(|&u| handle.read().users.external_id(segq::UserId(u)).is_some())
        .take(10_000 * 200);
    eprintln!(
        "{users} users, {} live segments, ready in {:?}",
        handle.live().count(),
        t.elapsed()
    );
    let mut g = c.benchmark_group("lifecycle");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("delete_10000", |b| {
        b.iter_batched(
            || {
                (&mut batches)
                    .take(10_000)
                    .map(|u| UserRef::ExternalId(format!("u{u}")))
                    .collect::<Vec<_>>()
            },
            |refs| {
                let d = handle.delete_users(&refs).expect("deletes");
                assert_eq!(d.deleted, refs.len() as u64);
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
