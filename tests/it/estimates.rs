//! Chunk-sampled estimates (`query::sample`) on a generated snapshot whose
//! cohort density and attribute values drift with the user id: the
//! coverage of the 95% interval over random filter trees (over the
//! workspace loaded from it, as the server reads one), the absence of
//! bias, the exact answers where the exact count is no dearer, the
//! caller's trade-offs, and the breakdown on the same sample.

use std::sync::{Arc, OnceLock};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use roaring::RoaringBitmap;

use segq::attributes::{AttrType, Attribute, Attributes};
use segq::ids::Partner;
use segq::query::sample::{sampled_breakdown, sampled_count, SampledCount, Tradeoff};
use segq::query::{Live, SerialCache};
use segq::segment::ast::{AttrCmp, Number};
use segq::segment::chunk::Prepared;
use segq::segment::{plan, BucketCmp, Filter};
use segq::snapshot::meta::{CohortMeta, Meta};
use segq::snapshot::writer::Contents;
use segq::snapshot::Snapshot;
use segq::workspace::Workspace;

/// 160 chunks, the last one partial.
const USERS: u32 = 160 * 65_536 - 12_345;

/// How cohort `i`'s density runs with the user's position `x` in 0..1.
fn density(i: usize, x: f64) -> f64 {
    match i {
        // Large, drifting up or down with sign-up order.
        0 => 0.05 + 0.30 * x,
        1 => 0.40 - 0.30 * x,
        2 => 0.20 + 0.10 * (x * 9.0).sin(),
        3 => 0.10 + 0.25 * x * x,
        // Medium, drifting, one with waves over a few chunks.
        4 => 0.01 + 0.04 * x,
        5 => 0.03 * (1.0 + (x * 40.0).sin()),
        6 => 0.05 - 0.04 * x,
        7 => 0.02,
        // Clustered: 80% of a band of sign-ups.
        8 => {
            if (0.30..0.42).contains(&x) {
                0.8
            } else {
                0.0
            }
        }
        9 => {
            if (0.71..0.76).contains(&x) {
                0.8
            } else {
                0.0
            }
        }
        // Small.
        10 => 0.002 * (1.0 + 3.0 * x),
        _ => 0.0005,
    }
}

const COHORTS: usize = 12;

fn cohort(i: usize) -> String {
    format!("d{i}")
}

/// The generated snapshot (built once for the module's tests).
fn snapshot() -> &'static Arc<Snapshot> {
    static SNAP: OnceLock<Arc<Snapshot>> = OnceLock::new();
    SNAP.get_or_init(|| {
        let mut contents = Contents::new(Meta {
            workspace: "drift".into(),
            seed: 5,
            seq: 0,
            users: USERS,
            cohorts: Vec::new(),
            keys: Vec::new(),
            enabled_partners: Vec::new(),
            data_points: Vec::new(),
            segments: Vec::new(),
            ext: Default::default(),
            api_keys: Default::default(),
            audit: Default::default(),
            history: Default::default(),
        });
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        contents.reserve_buckets(USERS as usize);
        for _ in 0..USERS {
            contents.push_bucket(rng.gen_range(0..10_000));
        }
        let n = f64::from(USERS);
        // Catalog order: by cohort_id.
        let mut ids: Vec<usize> = (0..COHORTS).collect();
        ids.sort_by_key(|&i| cohort(i));
        for i in ids {
            let mut rng = ChaCha8Rng::seed_from_u64(100 + i as u64);
            let mut ids: Vec<u32> = Vec::new();
            // Members drawn block by block of 1,024 users at the block's
            // density: geometric gaps between members.
            for block in (0..USERS).step_by(1_024) {
                let end = (block + 1_024).min(USERS);
                let d = density(i, f64::from(block) / n).clamp(0.0, 1.0);
                if d <= 0.0 {
                    continue;
                }
                let mut u = f64::from(block) - 1.0;
                loop {
                    let r: f64 = rng.gen_range(f64::EPSILON..1.0);
                    u += if d >= 1.0 {
                        1.0
                    } else {
                        (r.ln() / (1.0 - d).ln()).floor() + 1.0
                    };
                    if u >= f64::from(end) {
                        break;
                    }
                    ids.push(u as u32);
                }
            }
            let members = RoaringBitmap::from_sorted_iter(ids).expect("ascending");
            let meta = CohortMeta::unsynced(
                Partner::Amplitude,
                cohort(i),
                cohort(i),
                None,
                members.len(),
            );
            contents
                .push_cohort(meta, |b| {
                    members
                        .serialize_into(b)
                        .map_err(|e| segq::Error::Internal(e.to_string()))
                })
                .expect("a cohort");
        }
        contents.attributes = segq::attributes::codec::encode(&attributes())
            .expect("encodes")
            .into();
        Arc::new(Snapshot::from_bytes(contents.finish().expect("written"), "drift").expect("reads"))
    })
}

/// The plans of the attribute `plan`, most common first.
const PLANS: [&str; 4] = ["free", "pro", "team", "enterprise"];

/// Three attributes whose values drift with sign-up order: `sessions`
/// (integer, 70% of users, exponential with a mean from 3 to 33),
/// `plan` (string, 90%, paid plans growing more common) and `subscribed`
/// (boolean, 80%, true from 20% to 70% of them).
fn attributes() -> Attributes {
    let n = f64::from(USERS);
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let (mut sessions, mut plans, mut subscribed) = (Vec::new(), Vec::new(), Vec::new());
    for u in 0..USERS {
        let x = f64::from(u) / n;
        if rng.gen_bool(0.7) {
            let r: f64 = rng.gen_range(f64::EPSILON..1.0);
            sessions.push((u, (-r.ln() * (3.0 + 30.0 * x)) as i64));
        }
        if rng.gen_bool(0.9) {
            let r: f64 = rng.gen();
            let p = if r < 0.6 - 0.3 * x {
                0
            } else if r < 0.85 - 0.2 * x {
                1
            } else if r < 0.97 {
                2
            } else {
                3
            };
            plans.push((u, p));
        }
        if rng.gen_bool(0.8) {
            subscribed.push((u, rng.gen_bool(0.2 + 0.5 * x)));
        }
    }
    let mut a = Attributes::new();
    a.insert(Attribute::build_numbers(
        "sessions",
        AttrType::Integer,
        0,
        sessions.into_iter(),
    ));
    a.insert(Attribute::build_strings(
        "plan",
        PLANS.iter().map(|p| p.to_string()).collect(),
        plans.into_iter(),
    ));
    a.insert(Attribute::build_booleans(
        "subscribed",
        subscribed.into_iter(),
    ));
    a
}

/// The workspace loaded from the snapshot (its attributes decoded), and
/// the cache its in-memory bitmaps are serialized through.
fn workspace() -> &'static (Workspace, SerialCache) {
    static WS: OnceLock<(Workspace, SerialCache)> = OnceLock::new();
    WS.get_or_init(|| {
        let ws = segq::engine::persist::load_workspace(snapshot().clone()).expect("loads");
        (ws, SerialCache::with_bucket_masks(0))
    })
}

fn live() -> Live<'static> {
    let (ws, src) = workspace();
    Live { ws, src }
}

fn exact(f: &Filter) -> u64 {
    let snap: &Snapshot = snapshot();
    let p = plan::plan(snap, f).expect("plans");
    Prepared::for_snapshot(snap, &p)
        .expect("prepares")
        .count()
        .expect("counts")
}

/// A test of one of the attributes.
fn attribute_leaf(rng: &mut ChaCha8Rng) -> Filter {
    let (attribute, cmp) = match rng.gen_range(0..6) {
        0 => {
            let a = rng.gen_range(0..40);
            let b = rng.gen_range(0..40);
            (
                "sessions",
                AttrCmp::Between(Number::int(a.min(b)), Number::int(a.max(b))),
            )
        }
        1 => ("sessions", AttrCmp::Gt(Number::int(rng.gen_range(0..60)))),
        2 => ("sessions", AttrCmp::Le(Number::int(rng.gen_range(0..20)))),
        3 => (
            "plan",
            AttrCmp::Equals(PLANS[rng.gen_range(0..PLANS.len())].into()),
        ),
        4 => ("plan", AttrCmp::DoesNotEqual("free".into())),
        _ => (
            "subscribed",
            if rng.gen_bool(0.5) {
                AttrCmp::IsTrue
            } else {
                AttrCmp::IsFalse
            },
        ),
    };
    Filter::Attribute {
        attribute: attribute.into(),
        cmp,
    }
}

fn leaf(rng: &mut ChaCha8Rng) -> Filter {
    if rng.gen_bool(0.15) {
        return attribute_leaf(rng);
    }
    if rng.gen_bool(0.2) {
        let a = rng.gen_range(0..10_000u16);
        let b = rng.gen_range(0..10_000u16);
        return Filter::Bucket(match rng.gen_range(0..3) {
            0 => BucketCmp::Lt(a.max(1)),
            1 => BucketCmp::Gt(a),
            _ => BucketCmp::Between(a.min(b), a.max(b)),
        });
    }
    let c = cohort(rng.gen_range(0..COHORTS));
    if rng.gen_bool(0.2) {
        Filter::excludes(Partner::Amplitude, c)
    } else {
        Filter::includes(Partner::Amplitude, c)
    }
}

/// A random tree of cohorts, attribute tests, NOTs and bucket ranges.
fn tree(rng: &mut ChaCha8Rng, depth: u32) -> Filter {
    if depth == 0 || rng.gen_bool(0.3) {
        return leaf(rng);
    }
    let n = rng.gen_range(2..=4);
    let children: Vec<Filter> = (0..n).map(|_| tree(rng, depth - 1)).collect();
    let node = if rng.gen_bool(0.5) {
        Filter::And(children)
    } else {
        Filter::Or(children)
    };
    if rng.gen_bool(0.15) {
        node.not()
    } else {
        node
    }
}

/// The mean of signed errors and its standard error.
fn mean_and_se(errors: &[f64]) -> (f64, f64) {
    let n = errors.len() as f64;
    let mean = errors.iter().sum::<f64>() / n;
    let sd = (errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    (mean, sd / n.sqrt())
}

/// 93-97% of 1,000 intervals cover, and the mean signed error is within
/// one standard error of zero.
fn covers_95_percent_without_bias(covered: u32, mean: f64, se: f64) {
    assert!(
        (930..=970).contains(&covered),
        "coverage {covered} of 1000 outside 93-97%"
    );
    assert!(
        mean.abs() <= se,
        "mean signed error {mean:.1} past one standard error {se:.1}"
    );
}

fn covers(e: &SampledCount, truth: u64) -> bool {
    e.interval.low <= truth && truth <= e.interval.high
}

#[test]
fn intervals_cover_the_true_count_about_95_percent_of_the_time_without_bias() {
    let view = live();
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let tradeoffs = [
        Tradeoff::Default,
        Tradeoff::SampleFraction(0.1),
        Tradeoff::SampleFraction(0.2),
    ];
    let (mut sampled, mut covered, mut exact_answers) = (0u32, 0u32, 0u32);
    let mut errors: Vec<f64> = Vec::new();
    let mut trees = 0;
    let mut by_design = [(0u32, 0u32); 3];
    let mut with_attributes = 0u32;
    // Sampled in windows of chunks (few chunks evaluated), and covered.
    let mut windowed = (0u32, 0u32);
    while sampled < 1_000 {
        trees += 1;
        assert!(trees < 5_000, "too few trees are sampled");
        let f = tree(&mut rng, 3);
        let truth = segq::query::count_in(&view, &f, false)
            .expect("counts")
            .count;
        let t = tradeoffs[trees % tradeoffs.len()];
        let e = sampled_count(&view, &f, t, rng.gen()).expect("estimates");
        if e.sample.exact {
            assert_eq!(e.interval.estimate, truth, "{f}");
            assert_eq!((e.interval.low, e.interval.high), (truth, truth));
            exact_answers += 1;
            continue;
        }
        assert!(e.interval.low <= e.interval.estimate && e.interval.estimate <= e.interval.high);
        assert!(e.sample.sample_chunks < e.sample.chunks / 2, "{e:?}");
        sampled += 1;
        let mut tests_attributes = false;
        f.for_each_attribute(&mut |_| tests_attributes = true);
        with_attributes += u32::from(tests_attributes);
        covered += u32::from(covers(&e, truth));
        if e.sample.chunk_parts > 1 {
            windowed.0 += 1;
            windowed.1 += u32::from(covers(&e, truth));
        }
        let k = match t {
            Tradeoff::Default => 0,
            Tradeoff::SampleFraction(x) if x < 0.15 => 1,
            _ => 2,
        };
        by_design[k].0 += 1;
        by_design[k].1 += u32::from(covers(&e, truth));
        errors.push(e.interval.estimate as f64 - truth as f64);
    }
    eprintln!("(cases, covered) at 5%, 10%, 20%: {by_design:?}; in windows: {windowed:?}");
    let (mean, se) = mean_and_se(&errors);
    println!(
        "{sampled} sampled ({exact_answers} exact) of {trees} trees, {with_attributes} of them \
         testing attributes: {covered} covered; mean signed error {mean:.1} users, \
         standard error {se:.1}"
    );
    assert!(
        with_attributes >= 200,
        "{with_attributes} trees test attributes"
    );
    covers_95_percent_without_bias(covered, mean, se);
}

/// A sample over few chunks counts windows of them: over random trees
/// (cohorts of every container kind, attributes, NOTs, bucket ranges, the
/// partial last chunk), every chunk's windows sum to its count, at every
/// width a sample uses.
#[test]
fn windows_of_a_chunk_sum_to_its_count() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let view = live();
    let keys: Vec<u32> = (0..160).collect();
    for _ in 0..40 {
        let f = tree(&mut rng, 3);
        let p = plan::plan(segq::query::View::catalog(&view), &f).expect("plans");
        let prepared = segq::query::View::prepare(&view, &p).expect("prepares");
        let s = prepared.sampler().expect("a sampler");
        let by_chunk = s.count(&keys);
        let parts = [2u32, 8, 16][rng.gen_range(0..3)];
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

/// The same over trees whose exact count evaluates few chunks (an AND
/// led by a clustered cohort, about 8 or 20 chunks): the sample is drawn
/// in windows of those chunks, and its intervals cover as well, without
/// bias.
#[test]
fn windowed_samples_cover_the_true_count_about_95_percent_of_the_time_without_bias() {
    let view = live();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let fractions = [0.05, 0.1, 0.2];
    let (mut sampled, mut covered, mut trees) = (0u32, 0u32, 0u32);
    let mut errors: Vec<f64> = Vec::new();
    let mut parts_seen = std::collections::BTreeMap::new();
    while sampled < 1_000 {
        trees += 1;
        assert!(trees < 5_000, "too few trees are sampled");
        let band = Filter::includes(Partner::Amplitude, cohort([8, 9][rng.gen_range(0..2)]));
        let f = Filter::And(vec![band, tree(&mut rng, 2), tree(&mut rng, 2)]);
        let truth = segq::query::count_in(&view, &f, false)
            .expect("counts")
            .count;
        let t = Tradeoff::SampleFraction(fractions[trees as usize % fractions.len()]);
        let e = sampled_count(&view, &f, t, rng.gen()).expect("estimates");
        if e.sample.exact {
            assert_eq!(e.interval.estimate, truth, "{f}");
            continue;
        }
        if e.sample.evaluated_chunks > 21 {
            // The plan led the AND with another leaf (the evaluator skips
            // chunks by its first cohort leaf only): whole chunks.
            continue;
        }
        assert!(e.sample.chunk_parts > 1, "{e:?}");
        *parts_seen.entry(e.sample.chunk_parts).or_insert(0u32) += 1;
        sampled += 1;
        covered += u32::from(covers(&e, truth));
        errors.push(e.interval.estimate as f64 - truth as f64);
    }
    let (mean, se) = mean_and_se(&errors);
    println!(
        "{sampled} sampled in windows of {trees} trees (windows per chunk: {parts_seen:?}): \
         {covered} covered; mean signed error {mean:.1} users, standard error {se:.1}"
    );
    covers_95_percent_without_bias(covered, mean, se);
}

#[test]
fn the_exact_count_answers_where_it_is_no_dearer() {
    let snap: &Snapshot = snapshot();
    let c = |i: usize| Filter::includes(Partner::Amplitude, cohort(i));
    // One cohort: its stored cardinality, whatever the trade-off.
    for t in [
        Tradeoff::Default,
        Tradeoff::SampleFraction(0.01),
        Tradeoff::MaxRelativeError(0.5),
        Tradeoff::BudgetMs(1.0),
    ] {
        let e = sampled_count(snap, &c(0), t, 1).expect("answers");
        assert!(e.sample.exact, "{e:?}");
        assert_eq!(e.interval.estimate, exact(&c(0)));
        assert_eq!(e.relative_error, Some(0.0));
        assert!(e
            .sample
            .exact_reason
            .as_deref()
            .is_some_and(|r| r.contains("stored")));
        assert_eq!(e.sample.option, t.name());
    }
    // An AND led by a small band: its exact count reads few chunks.
    let small = Filter::And(vec![c(9), c(0), c(1)]);
    let e = sampled_count(snap, &small, Tradeoff::Default, 1).expect("answers");
    assert!(e.sample.exact, "{e:?}");
    assert_eq!(e.interval.estimate, exact(&small));
    // Half the chunks or more: exact.
    let big = Filter::Or(vec![c(0), c(1), c(2)]);
    let e = sampled_count(snap, &big, Tradeoff::SampleFraction(0.6), 1).expect("answers");
    assert!(e.sample.exact, "{e:?}");
    assert_eq!(e.interval.estimate, exact(&big));
    // The same at 5%: sampled, 8 chunks in 4 strata.
    let e = sampled_count(snap, &big, Tradeoff::Default, 1).expect("answers");
    assert!(!e.sample.exact, "{e:?}");
    assert_eq!((e.sample.sample_chunks, e.sample.strata), (8, 4));
    assert_eq!(e.sample.chunks, 160);
    assert!(e.interval.low < e.interval.high);
    // The same seed draws the same chunks; another, others.
    assert_eq!(
        sampled_count(snap, &big, Tradeoff::Default, 1)
            .expect("answers")
            .interval,
        e.interval
    );
}

/// An AND with a clustered cohort evaluates only the chunks of its band:
/// the sample is drawn there, so every draw finds matches (drawn over all
/// 160 chunks, 8 picks in 4 strata would miss the band about a quarter of
/// the time).
#[test]
fn the_sample_is_drawn_among_the_chunks_the_exact_count_evaluates() {
    let snap: &Snapshot = snapshot();
    let c = |i: usize| Filter::includes(Partner::Amplitude, cohort(i));
    // Work enough not to be answered exactly: 15 units a chunk.
    let band = Filter::And(vec![
        c(8),
        Filter::Or((0..6).map(c).collect()),
        Filter::Bucket(BucketCmp::Lt(5_000)),
    ]);
    // The band: 30% to 42% of the users, the chunks where cohort 8 has a
    // container.
    let banded = snap
        .bitmap(
            snap.cohort_index(&segq::ids::CohortKey::new(Partner::Amplitude, cohort(8)))
                .expect("reads")
                .expect("a cohort"),
        )
        .expect("parses")
        .containers() as u32;
    assert!((18..=21).contains(&banded), "{banded}");
    for seed in 0..20 {
        let e = sampled_count(snap, &band, Tradeoff::Default, seed).expect("estimates");
        assert!(!e.sample.exact, "{e:?}");
        assert_eq!(e.sample.evaluated_chunks, banded);
        assert_eq!(e.sample.chunks, 160);
        // 5% of about 20 chunks is one: each is cut into 8 windows, and 8
        // of those (4 strata) are drawn, in at most 8 chunks of the band.
        assert_eq!((e.sample.chunk_parts, e.sample.sample_units), (8, 8));
        assert!(e.sample.sample_chunks <= 8, "{e:?}");
        assert_eq!(e.sample.sample_users, 8 * 65_536 / 8);
        assert!(e.interval.sample_matches > 0, "seed {seed}: {e:?}");
    }
}

#[test]
fn a_relative_error_or_a_budget_sizes_the_sample() {
    let snap: &Snapshot = snapshot();
    let c = |i: usize| Filter::includes(Partner::Amplitude, cohort(i));
    let f = Filter::Or(vec![
        Filter::And(vec![c(0), c(2)]),
        Filter::And(vec![c(4), Filter::excludes(Partner::Amplitude, cohort(1))]),
    ]);
    let truth = exact(&f);
    // Tighter targets sample more chunks, each answer reaching about its
    // target and covering the count; past what a sample can reach, exact.
    let mut last = 0;
    let mut between = false;
    for e in [0.5, 0.02, 0.005, 0.0001] {
        let a = sampled_count(snap, &f, Tradeoff::MaxRelativeError(e), 3).expect("answers");
        assert!(covers(&a, truth), "{a:?} vs {truth}");
        assert_eq!(
            (a.sample.option, a.sample.option_value),
            ("max_relative_error", e)
        );
        assert!(a.sample.sample_chunks >= last, "{a:?}");
        last = a.sample.sample_chunks;
        if a.sample.exact {
            assert_eq!(a.interval.estimate, truth);
            continue;
        }
        assert_eq!(a.sample.pilot_chunks, 8, "a pilot of the smallest sample");
        let rel = a.relative_error.expect("a relative error");
        assert!(rel < 2.0 * e, "aimed at {e}: {rel}");
        between |= a.sample.sample_chunks > 8;
    }
    assert!(between, "some target sized a sample past the pilot's");
    assert_eq!(last, 160, "the tightest target is counted exactly");
    // A budget: a generous one fits the exact count, a tiny one the
    // smallest sample.
    let e = sampled_count(snap, &f, Tradeoff::BudgetMs(60_000.0), 3).expect("answers");
    assert!(e.sample.exact && e.interval.estimate == truth, "{e:?}");
    let e = sampled_count(snap, &f, Tradeoff::BudgetMs(0.001), 3).expect("answers");
    assert!(!e.sample.exact, "{e:?}");
    assert_eq!(e.sample.sample_chunks, 8);
    assert_eq!(e.sample.option, "budget_ms");
}

#[test]
fn a_breakdown_estimates_every_row_on_the_count_s_sample() {
    let snap: &Snapshot = snapshot();
    let c = |i: usize| Filter::includes(Partner::Amplitude, cohort(i));
    let parts = vec![
        c(0),
        Filter::Or(vec![c(2), c(5)]),
        Filter::excludes(Partner::Amplitude, cohort(3)),
        Filter::Bucket(BucketCmp::Lt(5_000)),
    ];
    for (f, op) in [
        (Filter::And(parts.clone()), "and"),
        (Filter::Or(parts.clone()), "or"),
    ] {
        let t = Tradeoff::SampleFraction(0.1);
        let (got_op, rows, info) = sampled_breakdown(snap, &f, t, 9).expect("a breakdown");
        assert_eq!(got_op, op);
        assert!(!info.exact, "{info:?}");
        assert_eq!(info.sample_chunks, 16);
        // The last running count is the whole filter's, on the chunks the
        // sampled count with the same seed reads: the same users, the
        // same matches among them.
        let whole = sampled_count(snap, &f, t, 9).expect("a count");
        assert!(!whole.sample.exact);
        assert_eq!(info.sample_users, whole.sample.sample_users);
        assert_eq!(
            rows.last().map(|r| r.running.sample_matches),
            Some(whole.interval.sample_matches)
        );
        let truth = exact(&f);
        let last = rows.last().expect("rows").running;
        assert!(
            last.low <= truth && truth <= last.high,
            "{last:?} vs {truth}"
        );
        // Each row's own count is that filter's sampled count on the same
        // chunks, and every interval holds its estimate.
        for (row, part) in rows.iter().zip(&parts) {
            assert_eq!(row.filter, part.to_string());
            assert!(row.count.low <= row.count.estimate && row.count.estimate <= row.count.high);
            assert!(
                row.running.low <= row.running.estimate && row.running.estimate <= row.running.high
            );
            let _ = exact(part);
        }
        // The first row's running count is its own.
        assert_eq!(rows[0].count, rows[0].running);
    }
    // A small breakdown is exact, as the exact breakdown answers it.
    let tiny = Filter::And(vec![c(11)]);
    let (_, rows, info) = sampled_breakdown(snap, &tiny, Tradeoff::Default, 1).expect("answers");
    assert!(info.exact, "{info:?}");
    assert_eq!(rows[0].running.estimate, exact(&tiny));
}
