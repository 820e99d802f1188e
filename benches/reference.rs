//! What is measured: the reference evaluator (whole-bitmap roaring algebra)
//! on the six query shapes of ../shared/WORKLOAD.md, counting and listing
//! members, plus one-user checks. It is the baseline the fast evaluator is
//! compared against.
//!
//! How to run: `cargo bench --bench reference` (small workload: 100k users,
//! 50 cohorts). `SEGQ_BENCH_USERS=10000000 SEGQ_BENCH_COHORTS=200 cargo bench
//! --bench reference` runs it on the medium workload.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use segq::segment::reference;
use segq::workload::{self, Spec};
use segq::UserRef;

fn bench(c: &mut Criterion) {
    let spec = Spec::from_env(Spec::SMALL);
    let ws = workload::generate("bench", spec)
        .expect("the workload generates")
        .workspace;
    let shapes = workload::query_shapes(spec.cohorts);

    let mut g = c.benchmark_group(format!("reference/count/{}users", spec.users));
    for (name, filter) in &shapes {
        g.bench_function(*name, |b| {
            b.iter(|| reference::count(&ws, black_box(filter)).expect("evaluates"))
        });
    }
    g.finish();

    let mut g = c.benchmark_group(format!("reference/members/{}users", spec.users));
    let (name, filter) = &shapes[1];
    g.bench_function(*name, |b| {
        b.iter(|| reference::members(&ws, black_box(filter)).expect("evaluates"))
    });
    g.finish();

    let mut g = c.benchmark_group(format!("reference/contains/{}users", spec.users));
    let (name, filter) = &shapes[3];
    let user = UserRef::ExternalId(format!("u{}", spec.users / 2 + 1));
    g.bench_function(*name, |b| {
        b.iter(|| reference::contains(&ws, black_box(filter), black_box(&user)).expect("evaluates"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
