//! What is measured: the chunk-wise evaluator (`segment::chunk`) against the
//! reference evaluator (`segment::reference`) on the six query shapes of
//! ../shared/WORKLOAD.md, plus a single cohort's count, a one-user check of
//! a five-leaf filter, and the member list of a segment; the fast counts
//! also on rayon pools of 1 and 2 threads; and random-bucket leaves alone,
//! ANDed with a dense and with a sparse set, and the mixed shape without its
//! bucket leaf (what the bucket leaf adds to it); and the fast counts and a
//! one-user check over the workspace as a live server holds it: loaded
//! from a mapped snapshot file, without and with a delta of changes since
//! in memory (`LiveDelta::TYPICAL`: 1% more users, 0.1% of the users added
//! and as many removed in every cohort).
//!
//! With them, on the mapped snapshot: the same counts by CRoaring and
//! roaring-rs (`src/bin/segq/peers.rs`, which `segq bench --peers` uses:
//! bitmaps decoded from the snapshot's bytes, random-bucket leaves as a
//! bitmap built before timing, one thread each), checked against segq's
//! count first; criterion runs each function in turn, so `segq bench
//! --peers` is the one that interleaves them run by run.
//!
//! Beside them, `estimates`: the chunk-sampled estimate at 5% against the
//! exact count, per query shape (`cargo bench --bench evaluator --
//! estimate`; `SEGQ_BENCH_SNAPSHOT=path` reads a snapshot file instead of
//! generating one), and `attributes`: the three custom attribute shapes
//! (`workload::attribute_shapes`, with and without planning;
//! `SEGQ_BENCH_SNAPSHOT` as there, and `SEGQ_BENCH_NO_REFERENCE=1` skips
//! the check against the reference evaluator, minutes at 10M users).
//!
//! How to run: `cargo bench --bench evaluator` (small workload, 100k users);
//! `SEGQ_BENCH_USERS=10000000 SEGQ_BENCH_COHORTS=200 cargo bench --bench
//! evaluator` for the medium workload.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use std::sync::Arc;

use segq::engine::persist;
use segq::segment::{chunk, plan, reference, BucketCmp, Filter};
use segq::snapshot::Snapshot;
use segq::workload::{self, LiveDelta, Spec};
use segq::UserId;

/// The peers, from the command line's source.
#[allow(dead_code)]
#[path = "../src/bin/segq/peers.rs"]
mod peers;

fn bench(c: &mut Criterion) {
    let spec = Spec::from_env(Spec::SMALL);
    let ws = workload::generate("bench", spec)
        .expect("the workload generates")
        .workspace;
    let cache = segq::query::SerialCache::default();
    let shapes = workload::query_shapes(spec.cohorts);
    let tag = format!("{}users", spec.users);

    let mut g = c.benchmark_group(format!("count/{tag}"));
    g.sample_size(20);
    for (name, filter) in &shapes {
        let p = plan::plan(&ws, filter).expect("plans");
        let prepared = chunk::Prepared::new(&ws, &p, &cache).expect("prepares");
        g.bench_function(format!("fast/{name}"), |b| {
            b.iter(|| prepared.count().expect("counts"))
        });
        g.bench_function(format!("reference/{name}"), |b| {
            b.iter(|| reference::count(&ws, black_box(filter)).expect("counts"))
        });
        g.bench_function(format!("fast-with-planning/{name}"), |b| {
            b.iter(|| {
                let p = plan::plan(&ws, black_box(filter)).expect("plans");
                chunk::Prepared::new(&ws, &p, &cache)
                    .expect("prepares")
                    .count()
                    .expect("counts")
            })
        });
    }
    g.finish();

    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a pool");
        let mut g = c.benchmark_group(format!("count/{tag}/{threads}threads"));
        g.sample_size(20);
        for (name, filter) in shapes.iter().skip(1) {
            let p = plan::plan(&ws, filter).expect("plans");
            let prepared = chunk::Prepared::new(&ws, &p, &cache).expect("prepares");
            g.bench_function(*name, |b| {
                b.iter(|| pool.install(|| prepared.count().expect("counts")))
            });
        }
        g.finish();
    }

    let mut g = c.benchmark_group(format!("other/{tag}"));
    let (_, five) = &shapes[3];
    let p = plan::plan(&ws, five).expect("plans");
    let prepared = chunk::Prepared::new(&ws, &p, &cache).expect("prepares");
    let user = UserId(spec.users / 2 + 1);
    let checker = prepared.checker().expect("parses");
    g.bench_function("contains/five large ANDed", |b| {
        b.iter(|| checker.contains(black_box(user)))
    });
    let single = Filter::includes(workload::PARTNER, "c0");
    g.bench_function("count/single cohort (with planning)", |b| {
        b.iter(|| {
            let p = plan::plan(&ws, black_box(&single)).expect("plans");
            chunk::Prepared::new(&ws, &p, &cache)
                .expect("prepares")
                .count()
                .expect("counts")
        })
    });
    // A segment of about 5% of the users (500,000 on the medium workload).
    let (_, mixed) = &shapes[2];
    let p = plan::plan(&ws, mixed).expect("plans");
    let prepared = chunk::Prepared::new(&ws, &p, &cache).expect("prepares");
    let n = prepared.count().expect("counts");
    g.bench_function(format!("members/{n} members"), |b| {
        b.iter(|| prepared.members().expect("lists"))
    });
    g.finish();

    let mut g = c.benchmark_group(format!("bucket/{tag}"));
    g.sample_size(20);
    let bucket = || Filter::Bucket(BucketCmp::Between(1_000, 5_999));
    let large = |i: u32| Filter::includes(workload::PARTNER, workload::cohort_id(i));
    // The last cohort, for a sparse set: small (0.001%-0.5% of the users)
    // when there are more than 60 cohorts, medium (0.5%-5%) otherwise.
    let sparse = large(spec.cohorts.max(1) - 1);
    let (_, with_bucket) = &shapes[5];
    let without_bucket = match with_bucket {
        Filter::And(c) => Filter::And(
            c.iter()
                .filter(|f| !matches!(f, Filter::Bucket(_)))
                .cloned()
                .collect(),
        ),
        other => other.clone(),
    };
    let filters = [
        ("bucket 1000..=5999 alone", bucket()),
        (
            "bucket AND one large",
            Filter::And(vec![large(0), bucket()]),
        ),
        (
            "bucket AND NOT one large",
            Filter::And(vec![large(0).not(), bucket()]),
        ),
        (
            "bucket AND the last cohort",
            Filter::And(vec![sparse, bucket()]),
        ),
        ("mixed shape without its bucket", without_bucket),
    ];
    for (name, filter) in &filters {
        let p = plan::plan(&ws, filter).expect("plans");
        let prepared = chunk::Prepared::new(&ws, &p, &cache).expect("prepares");
        g.bench_function(*name, |b| b.iter(|| prepared.count().expect("counts")));
    }
    g.finish();

    // As a live server holds the workspace: the snapshot, mapped from a
    // file, plus the changes since in memory (`LiveDelta::TYPICAL`).
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("bench.segqsnap");
    let bytes = persist::write_snapshot(&ws, 0).expect("writes");
    std::fs::write(&path, bytes).expect("writes the file");
    let snap = Arc::new(Snapshot::open(&path).expect("maps"));
    let mapped = persist::load_workspace(snap.clone()).expect("loads");
    let mut live = persist::load_workspace(snap.clone()).expect("loads");
    LiveDelta::TYPICAL.apply(&mut live).expect("applies");
    let live_cache = segq::query::SerialCache::default();
    for (what, w) in [("mapped", &mapped), ("mapped+delta", &live)] {
        let mut g = c.benchmark_group(format!("count/{tag}/{what}"));
        g.sample_size(20);
        for (name, filter) in &shapes {
            let p = plan::plan(w, filter).expect("plans");
            let prepared = chunk::Prepared::new(w, &p, &live_cache).expect("prepares");
            assert_eq!(
                prepared.count().expect("counts"),
                reference::count(w, filter).expect("counts"),
                "{what} {name}"
            );
            g.bench_function(format!("fast/{name}"), |b| {
                b.iter(|| prepared.count().expect("counts"))
            });
        }
        g.finish();
    }
    // The peers, on the mapped snapshot's bitmaps, beside segq's count
    // over the same snapshot.
    let mut g = c.benchmark_group(format!("count/{tag}/peers"));
    g.sample_size(20);
    for (name, filter) in &shapes {
        let p = plan::plan(&*snap, filter).expect("plans");
        let want = chunk::Prepared::for_snapshot(&snap, &p)
            .expect("prepares")
            .count()
            .expect("counts");
        let peers = peers::Peers::new(&snap, &p).expect("the peers read the snapshot");
        assert_eq!(peers.croaring.count(), want, "CRoaring {name}");
        assert_eq!(peers.roaring_rs.count(), want, "roaring-rs {name}");
        g.bench_function(format!("segq/{name}"), |b| {
            b.iter(|| {
                let p = plan::plan(&*snap, black_box(filter)).expect("plans");
                chunk::Prepared::for_snapshot(&snap, &p)
                    .expect("prepares")
                    .count()
                    .expect("counts")
            })
        });
        g.bench_function(format!("croaring/{name}"), |b| {
            b.iter(|| black_box(&peers.croaring).count())
        });
        g.bench_function(format!("roaring-rs/{name}"), |b| {
            b.iter(|| black_box(&peers.roaring_rs).count())
        });
    }
    g.finish();

    let mut g = c.benchmark_group(format!("other/{tag}/mapped+delta"));
    let p = plan::plan(&live, five).expect("plans");
    let prepared = chunk::Prepared::new(&live, &p, &live_cache).expect("prepares");
    let checker = prepared.checker().expect("parses");
    g.bench_function("contains/five large ANDed", |b| {
        b.iter(|| checker.contains(black_box(user)))
    });
    g.finish();
}

/// Chunk-sampled estimates (`query::sample`) against the exact count, both
/// with planning, on a snapshot read in place: per query shape, the exact
/// count and the estimate at a 5% sample (a fixed seed; the shapes the
/// estimator answers exactly say so once, on stderr), and a single
/// cohort's estimate (answered from its stored size). The snapshot is
/// `SEGQ_BENCH_SNAPSHOT` when set (e.g. the medium workload's file),
/// else the workload of `SEGQ_BENCH_USERS` generated into memory.
fn estimates(c: &mut Criterion) {
    use segq::query::sample::{sampled_count, Tradeoff};
    let snap = match std::env::var("SEGQ_BENCH_SNAPSHOT") {
        Ok(path) => Snapshot::open(std::path::Path::new(&path)).expect("the snapshot opens"),
        Err(_) => {
            let spec = Spec::from_env(Spec::SMALL);
            let (bytes, _) =
                workload::write_snapshot("bench", spec, Vec::new()).expect("the workload writes");
            Snapshot::from_bytes(bytes, "bench").expect("the snapshot reads")
        }
    };
    let users = snap.meta().expect("a meta").users;
    let cohorts = snap.meta().expect("a meta").cohorts.len() as u32;
    let mut g = c.benchmark_group(format!("estimate/{users}users"));
    g.sample_size(20);
    let five = Tradeoff::SampleFraction(0.05);
    for (name, filter) in workload::query_shapes(cohorts) {
        let e = sampled_count(&snap, &filter, five, 7).expect("estimates");
        if let Some(why) = &e.sample.exact_reason {
            eprintln!("{name}: answered exactly ({why})");
        }
        g.bench_function(format!("exact/{name}"), |b| {
            b.iter(|| {
                segq::query::count_in(&snap, black_box(&filter), false)
                    .expect("counts")
                    .count
            })
        });
        g.bench_function(format!("5% sample/{name}"), |b| {
            b.iter(|| {
                sampled_count(&snap, black_box(&filter), five, 7)
                    .expect("estimates")
                    .interval
                    .estimate
            })
        });
    }
    g.finish();
}

/// The attribute shapes: each attribute test run on its index when the
/// plan is made, then counted like a cohort leaf; checked against the
/// reference evaluator first. Over the workspace loaded from
/// `SEGQ_BENCH_SNAPSHOT` when set (as `segq bench` runs them, without its
/// live delta), else over the generated workload of `SEGQ_BENCH_USERS`;
/// `SEGQ_BENCH_NO_REFERENCE` skips the check against the reference.
fn attributes(c: &mut Criterion) {
    let (ws, tag) = match std::env::var("SEGQ_BENCH_SNAPSHOT") {
        Ok(path) => {
            let snap = Snapshot::open(std::path::Path::new(&path)).expect("the snapshot opens");
            let users = snap.meta().expect("a meta").users;
            let ws = persist::load_workspace(Arc::new(snap)).expect("the workspace loads");
            (ws, format!("{users}users"))
        }
        Err(_) => {
            let spec = Spec::from_env(Spec::SMALL);
            let ws = workload::generate("bench", spec)
                .expect("the workload generates")
                .workspace;
            (ws, format!("{}users", spec.users))
        }
    };
    // The reference evaluator tests every user's attributes one by one:
    // minutes at 10M users.
    let skip_reference = std::env::var_os("SEGQ_BENCH_NO_REFERENCE").is_some();
    let cache = segq::query::SerialCache::default();
    let mut g = c.benchmark_group(format!("attributes/{tag}"));
    g.sample_size(20);
    for (name, filter) in workload::attribute_shapes(ws.cohorts.len() as u32) {
        let p = plan::plan(&ws, &filter).expect("plans");
        let prepared = chunk::Prepared::new(&ws, &p, &cache).expect("prepares");
        if !skip_reference {
            assert_eq!(
                prepared.count().expect("counts"),
                reference::count(&ws, &filter).expect("counts"),
                "{name}"
            );
        }
        g.bench_function(format!("fast/{name}"), |b| {
            b.iter(|| prepared.count().expect("counts"))
        });
        g.bench_function(format!("fast-with-planning/{name}"), |b| {
            b.iter(|| {
                let p = plan::plan(&ws, black_box(&filter)).expect("plans");
                chunk::Prepared::new(&ws, &p, &cache)
                    .expect("prepares")
                    .count()
                    .expect("counts")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench, attributes, estimates);
criterion_main!(benches);
