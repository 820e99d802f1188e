//! The chunk-wise evaluator against the reference on a generated workspace
//! of several chunks (the last one partial), with all three container kinds,
//! for the query shapes and random filter trees.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use segq::bitmap_view::{BitmapView, Container, Kernels};
use segq::segment::{chunk, plan, reference, BucketCmp, Filter};
use segq::workload::{self, Spec};
use segq::UserId;

const SPEC: Spec = Spec {
    users: 200_000,
    cohorts: 70,
    seed: 3,
};

fn random_filter(rng: &mut ChaCha8Rng, depth: u32) -> Filter {
    let leaf = |rng: &mut ChaCha8Rng| {
        if rng.gen_bool(0.2) {
            let lo = rng.gen_range(0..10_000u16);
            let hi = rng.gen_range(lo..10_000u16);
            Filter::Bucket(BucketCmp::Between(lo, hi))
        } else {
            let c = workload::cohort_id(rng.gen_range(0..SPEC.cohorts));
            if rng.gen_bool(0.8) {
                Filter::includes(workload::PARTNER, c)
            } else {
                Filter::excludes(workload::PARTNER, c)
            }
        }
    };
    if depth == 0 || rng.gen_bool(0.3) {
        return leaf(rng);
    }
    let n = rng.gen_range(2..5);
    let children = (0..n).map(|_| random_filter(rng, depth - 1)).collect();
    match rng.gen_range(0..3) {
        0 => Filter::And(children),
        1 => Filter::Or(children),
        _ => Filter::And(children).not(),
    }
}

#[test]
fn the_chunk_evaluator_agrees_with_the_reference_across_chunks() {
    let ws = workload::generate("fast", SPEC).unwrap().workspace;

    // The workspace really has every container kind.
    let (mut arrays, mut bitmaps, mut runs) = (0, 0, 0);
    for c in ws.cohorts.iter_sorted() {
        let bytes = segq::query::serialize(c);
        let view = BitmapView::parse(bytes.added.as_deref().unwrap_or_default()).unwrap();
        for (_, cont) in view.iter_containers() {
            match cont {
                Container::Array(_) => arrays += 1,
                Container::Bitmap(_) => bitmaps += 1,
                Container::Run(_) => runs += 1,
            }
        }
    }
    assert!(
        arrays > 0 && bitmaps > 0 && runs > 0,
        "{arrays} {bitmaps} {runs}"
    );

    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut filters: Vec<Filter> = workload::query_shapes(SPEC.cohorts)
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    filters.extend((0..60).map(|_| random_filter(&mut rng, 3)));
    let cache = segq::query::SerialCache::default();
    for f in &filters {
        let (prepared, expected) = agrees_with_the_reference(&ws, f, &cache, &mut rng, 50);
        // The chunk range form gives the same members piecewise.
        let mut pieces = prepared.members_in(0, 2).unwrap();
        pieces |= prepared.members_in(2, 100).unwrap();
        assert_eq!(pieces, expected, "{f}");
    }
}

#[test]
fn a_single_cohort_is_counted_from_its_cardinality_and_an_and_skips_chunks() {
    let ws = workload::generate("fast", SPEC).unwrap().workspace;
    let one = Filter::includes(workload::PARTNER, "c0");
    let p = plan::plan(&ws, &one).unwrap();
    let (n, stats) = chunk::Prepared::new(&ws, &p, &segq::query::Uncached)
        .unwrap()
        .count_with_stats()
        .unwrap();
    assert_eq!(n, reference::count(&ws, &one).unwrap());
    assert_eq!(stats.touched + stats.skipped, 0, "no chunk evaluated");

    // A clustered cohort covers few chunks: ANDed with a large one, the
    // other chunks are skipped.
    let clustered = workload::generate("fast", SPEC)
        .unwrap()
        .cohorts
        .into_iter()
        .find(|c| matches!(c.kind, workload::CohortKind::Clustered { len, .. } if len < 60_000 && len > 100))
        .unwrap();
    let f = Filter::And(vec![
        Filter::includes(workload::PARTNER, "c0"),
        Filter::includes(workload::PARTNER, clustered.cohort_id.clone()),
    ]);
    let p = plan::plan(&ws, &f).unwrap();
    let (n, stats) = chunk::Prepared::new(&ws, &p, &segq::query::Uncached)
        .unwrap()
        .count_with_stats()
        .unwrap();
    assert_eq!(n, reference::count(&ws, &f).unwrap());
    assert_eq!(stats.chunks, 4);
    assert!(stats.skipped >= 1, "{stats:?}");
    assert_eq!(stats.touched + stats.skipped, 4);
}

#[test]
fn bucket_leaves_agree_with_the_reference_at_chunk_edges_and_densities() {
    // Two full chunks and a partial one of 20,000 users: enough words that
    // an AND takes its dense path there too.
    let spec = Spec {
        users: 2 * 65_536 + 20_000,
        cohorts: 70,
        seed: 5,
    };
    let generated = workload::generate("buckets", spec).unwrap();
    let ws = generated.workspace;
    let last = 2 * 65_536usize;
    // A bucket none of the last chunk's users has: the range is empty there.
    let buckets: Vec<u16> = ws.users.buckets().collect();
    let absent = (0..10_000u16)
        .find(|v| !buckets[last..].contains(v))
        .unwrap();
    assert!(buckets[..last].contains(&absent));
    let smallest = generated.cohorts.iter().min_by_key(|c| c.members).unwrap();
    assert!(smallest.members < 2_000, "{}", smallest.members);

    let dense = || Filter::includes(workload::PARTNER, "c0");
    let medium = || Filter::includes(workload::PARTNER, "c25");
    let sparse = || Filter::includes(workload::PARTNER, smallest.cohort_id.clone());
    let ranges = [
        (0, 0),
        (0, 9_998),
        (1, 9_999),
        (0, 9_999),
        (1_000, 5_999),
        (4_321, 4_321),
        (9_999, 9_999),
        (absent, absent),
    ];
    let cache = segq::query::SerialCache::default();
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    for (lo, hi) in ranges {
        let b = || Filter::Bucket(BucketCmp::Between(lo, hi));
        let filters = [
            b(),
            b().not(),
            Filter::And(vec![dense(), b()]),
            Filter::And(vec![medium(), b()]),
            Filter::And(vec![sparse(), b()]),
            Filter::And(vec![dense(), b().not()]),
            Filter::And(vec![sparse(), b().not()]),
            Filter::And(vec![dense().not(), b()]),
            Filter::And(vec![medium().not(), b().not()]),
            Filter::And(vec![
                dense(),
                b(),
                Filter::Bucket(BucketCmp::Between(lo / 2, 5_000)),
            ]),
            Filter::And(vec![
                Filter::Or(vec![dense(), sparse()]),
                medium().not(),
                b(),
            ]),
            Filter::Or(vec![sparse(), b()]),
            Filter::And(vec![Filter::Or(vec![sparse(), b()]), dense()]).not(),
        ];
        for f in &filters {
            agrees_with_the_reference(&ws, f, &cache, &mut rng, 20);
        }
    }
}

/// Checks that the chunk evaluator's count, members and `checks` random
/// one-user checks of `f` are the reference's; returns the prepared plan
/// and the members.
fn agrees_with_the_reference<'w>(
    ws: &'w segq::Workspace,
    f: &Filter,
    cache: &segq::query::SerialCache,
    rng: &mut impl Rng,
    checks: usize,
) -> (chunk::Prepared<'w>, roaring::RoaringBitmap) {
    let p = plan::plan(ws, f).unwrap();
    let prepared = chunk::Prepared::new(ws, &p, cache).unwrap();
    let expected = reference::evaluate(ws, f).unwrap();
    assert_eq!(prepared.count().unwrap(), expected.len(), "{f}");
    // Every kernel level the CPU has counts the same.
    for k in Kernels::available() {
        assert_eq!(prepared.count_with(k).unwrap(), expected.len(), "{f} {k:?}");
    }
    assert_eq!(prepared.members().unwrap(), expected, "{f}");
    for _ in 0..checks {
        let u = rng.gen_range(0..ws.users.len());
        assert_eq!(
            prepared.contains(UserId(u)).unwrap(),
            expected.contains(u),
            "{f} user {u}"
        );
    }
    (prepared, expected)
}

#[test]
fn ands_and_ors_of_bitmap_containers_agree_with_the_reference_at_every_kernel_level() {
    // The large cohorts are bitmap containers in most chunks: ANDs of up to
    // ten of them (one pass over all the containers, more than one group
    // of inputs), with and without minus children, and ORs of many (several
    // at a time, with arrays and runs mixed in).
    let ws = workload::generate("fast", SPEC).unwrap().workspace;
    let large = |j: u32| Filter::includes(workload::PARTNER, workload::cohort_id(j));
    let mut filters = Vec::new();
    for n in [2u32, 3, 5, 8, 9, 10] {
        filters.push(Filter::And((0..n).map(large).collect()));
        filters.push(Filter::And(
            (0..n).map(large).chain([large(n + 1).not()]).collect(),
        ));
        filters.push(Filter::And(
            (0..n)
                .map(large)
                .chain((10..19).map(|j| large(j).not()))
                .collect(),
        ));
        filters.push(Filter::Or((0..n).map(large).collect()));
        filters.push(Filter::Or((0..n * 6).map(large).collect()));
        filters.push(Filter::And(vec![
            Filter::Or((20..20 + n * 3).map(large).collect()),
            large(n).not(),
        ]));
    }
    let cache = segq::query::SerialCache::default();
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    for f in &filters {
        agrees_with_the_reference(&ws, f, &cache, &mut rng, 10);
    }
}

#[test]
fn segq_kernels_portable_gives_the_same_counts() {
    // The binary with the portable kernels forced: the bench's counts are
    // the reference's (the bench checks every shape's count too).
    let run = |level: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_segq"));
        cmd.args([
            "bench",
            "--users",
            "70000",
            "--cohorts",
            "30",
            "--runs",
            "1",
            "--json",
        ]);
        match level {
            Some(l) => cmd.env("SEGQ_KERNELS", l),
            None => cmd.env_remove("SEGQ_KERNELS"),
        };
        let out = cmd.output().expect("segq runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        v["sizes"][0]["shapes"]
            .as_array()
            .expect("shapes")
            .iter()
            .map(|s| {
                (
                    s["shape"].to_string(),
                    s["count"].as_u64(),
                    s["live_count"].as_u64(),
                )
            })
            .collect::<Vec<_>>()
    };
    let portable = run(Some("portable"));
    assert_eq!(portable.len(), 6);
    assert_eq!(portable, run(None));
    let ws = workload::generate(
        "x",
        Spec {
            users: 70_000,
            cohorts: 30,
            seed: 42,
        },
    )
    .unwrap()
    .workspace;
    for ((name, f), (_, count, _)) in workload::query_shapes(30).into_iter().zip(&portable) {
        assert_eq!(*count, Some(reference::count(&ws, &f).unwrap()), "{name}");
    }
}

#[test]
fn windows_of_ands_of_bitmap_containers_sum_to_each_chunk_s_count() {
    // An AND of cohorts whose containers in a window's chunk are all
    // bitmaps is counted on the window in one pass over the containers'
    // windows: at every width a sample uses (and at widths too narrow for
    // that pass), over full chunks and the partial last one, with and
    // without minus children, and with more inputs than one pass takes,
    // the windows of every chunk sum to its count.
    let ws = workload::generate("fast", SPEC).unwrap().workspace;
    let large = |j: u32| Filter::includes(workload::PARTNER, workload::cohort_id(j));
    let mut filters = Vec::new();
    for n in [2u32, 5, 9] {
        filters.push(Filter::And((0..n).map(large).collect()));
        filters.push(Filter::And(
            (0..n).map(large).chain([large(n + 1).not()]).collect(),
        ));
        filters.push(Filter::And(
            (0..n)
                .map(large)
                .chain((10..19).map(|j| large(j).not()))
                .collect(),
        ));
    }
    let cache = segq::query::SerialCache::default();
    for f in &filters {
        let p = plan::plan(&ws, f).unwrap();
        let prepared = chunk::Prepared::new(&ws, &p, &cache).unwrap();
        let expected = reference::evaluate(&ws, f).unwrap().len();
        let s = prepared.sampler().unwrap();
        let keys: Vec<u32> = (0..prepared.chunk_count()).collect();
        let by_chunk = s.count(&keys);
        assert_eq!(by_chunk.iter().sum::<u64>(), expected, "{f}");
        for parts in [1u32, 2, 8, 16, 64, 128] {
            let windows: Vec<(u32, u32)> = keys
                .iter()
                .flat_map(|&k| (0..parts).map(move |w| (k, w)))
                .collect();
            let counts = s.count_windows(&windows, parts);
            for (k, want) in by_chunk.iter().enumerate() {
                let at = k * parts as usize;
                let got: u64 = counts[at..at + parts as usize].iter().sum();
                assert_eq!(got, *want, "chunk {k} in {parts} windows: {f}");
            }
        }
    }
}

#[test]
fn a_survey_of_consecutive_chunks_finds_what_a_survey_of_scattered_ones_finds() {
    // A survey of consecutive chunks reads a bitmap holding all of them as
    // one run of its containers; a survey with a chunk left out looks each
    // one up. Both must predict the same counts for the chunks they share,
    // and the chunks an AND of bitmaps counts from the survey's containers
    // must count as the exact count counts them.
    let ws = workload::generate("fast", SPEC).unwrap().workspace;
    let cohort = |j: u32| Filter::includes(workload::PARTNER, workload::cohort_id(j));
    let filters = [
        Filter::And(vec![cohort(0), cohort(1)]),
        Filter::And(vec![cohort(0), cohort(1), cohort(2).not()]),
        Filter::And((0..5).map(cohort).collect()),
        // Medium cohorts: arrays, and chunks some of them lack.
        Filter::And(vec![cohort(0), cohort(20), cohort(21).not()]),
        Filter::Or(vec![cohort(0), cohort(20)]),
    ];
    let cache = segq::query::SerialCache::default();
    for f in &filters {
        let p = plan::plan(&ws, f).unwrap();
        let prepared = chunk::Prepared::new(&ws, &p, &cache).unwrap();
        let s = prepared.sampler().unwrap();
        let all: Vec<u32> = (0..prepared.chunk_count()).collect();
        let some: Vec<u32> = all.iter().copied().filter(|&k| k != 1).collect();
        let (whole, gapped) = (s.survey(&all), s.survey(&some));
        let (p_all, p_some) = (whole.predict(), gapped.predict());
        for (j, &k) in some.iter().enumerate() {
            let i = k as usize;
            assert_eq!(p_all[i], p_some[j], "chunk {k}: {f}");
        }
        let exact = s.count(&all);
        let js: Vec<usize> = (0..all.len()).collect();
        let mut counted = 0;
        for (j, n) in whole.count_bitmap_ands(&js).into_iter().enumerate() {
            if let Some(n) = n {
                assert_eq!(n, exact[j], "chunk {j}: {f}");
                counted += 1;
            }
        }
        let and_of_cohorts = matches!(f, Filter::And(_));
        assert_eq!(counted > 0, and_of_cohorts, "{f}: {counted} chunks counted");
    }
}
