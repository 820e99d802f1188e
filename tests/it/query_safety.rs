//! The safety of segment queries at library level: the breakdown is the
//! quadratic definition computed in one pass, on a workspace read in place
//! and on a frozen view (which does not change while writers go on); an
//! estimate's strata are bounded; a snapshot bitmap whose contents
//! disagree with its header is refused when first read instead of
//! counting wrong.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use segq::engine::persist;
use segq::engine::WorkspaceHandle;
use segq::query::{Frozen, Uncached};
use segq::segment::{reference, BucketCmp, Filter};
use segq::snapshot::format::SectionKind;
use segq::snapshot::Snapshot;
use segq::workload::{self, Spec};
use segq::{query, CohortKey, Error, Partner, Workspace};
use serde_json::json;

use crate::support::{import_ok, jan, new_user, rewrite_section};

/// The breakdown by its definition: every filter counted alone, and every
/// prefix of the group counted whole (quadratic in the filters).
fn quadratic_breakdown(ws: &Workspace, filter: &Filter) -> (String, Vec<(String, u64, u64)>) {
    let (op, children): (&str, Vec<Filter>) = match filter {
        Filter::And(c) if !c.is_empty() => ("and", c.clone()),
        Filter::Or(c) if !c.is_empty() => ("or", c.clone()),
        other => ("and", vec![other.clone()]),
    };
    let rows = (0..children.len())
        .map(|i| {
            let own = reference::count(ws, &children[i]).expect("counts");
            let so_far = children[..=i].to_vec();
            let combined = if op == "and" {
                Filter::And(so_far)
            } else {
                Filter::Or(so_far)
            };
            let running = reference::count(ws, &combined).expect("counts");
            (children[i].to_string(), own, running)
        })
        .collect();
    (op.to_string(), rows)
}

fn leaf(rng: &mut ChaCha8Rng, cohorts: u32) -> Filter {
    match rng.gen_range(0..8) {
        0 => {
            let lo = rng.gen_range(0..10_000u16);
            Filter::Bucket(BucketCmp::Between(lo, rng.gen_range(lo..10_000u16)))
        }
        1 => Filter::And(Vec::new()),
        2 => Filter::Or(Vec::new()),
        _ => {
            let c = workload::cohort_id(rng.gen_range(0..cohorts));
            if rng.gen_bool(0.75) {
                Filter::includes(workload::PARTNER, c)
            } else {
                Filter::excludes(workload::PARTNER, c)
            }
        }
    }
}

fn node(rng: &mut ChaCha8Rng, cohorts: u32, depth: u32) -> Filter {
    if depth == 0 || rng.gen_bool(0.5) {
        return leaf(rng, cohorts);
    }
    let children = (0..rng.gen_range(2..4))
        .map(|_| node(rng, cohorts, depth - 1))
        .collect();
    match rng.gen_range(0..3) {
        0 => Filter::And(children),
        1 => Filter::Or(children),
        _ => Filter::Or(children).not(),
    }
}

/// A group of 1 to 40 filters (or a single filter).
fn group(rng: &mut ChaCha8Rng, cohorts: u32) -> Filter {
    let n = rng.gen_range(1..40);
    let children: Vec<Filter> = (0..n).map(|_| node(rng, cohorts, 2)).collect();
    match rng.gen_range(0..5) {
        0 => children
            .into_iter()
            .next()
            .unwrap_or(Filter::And(Vec::new())),
        1 | 2 => Filter::And(children),
        _ => Filter::Or(children),
    }
}

fn check_breakdowns(ws: &Workspace, cohorts: u32, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for case in 0..40 {
        let f = group(&mut rng, cohorts);
        let (op, want) = quadratic_breakdown(ws, &f);
        let (got_op, rows) = query::breakdown(ws, &Uncached, &f).expect("a breakdown");
        let got: Vec<(String, u64, u64)> = rows
            .iter()
            .map(|r| (r.filter.clone(), r.count, r.running))
            .collect();
        assert_eq!((&got_op, &got), (&op, &want), "case {case}: {f}");
        let frozen = Frozen::new(ws, &Uncached, &[&f], false).expect("a view");
        let (fop, frows) = query::breakdown_in(&frozen, &f).expect("a breakdown");
        assert_eq!((fop, frows), (got_op, rows), "frozen, case {case}: {f}");
    }
}

#[test]
fn the_breakdown_is_the_quadratic_definition_in_one_pass() {
    let spec = Spec {
        users: 150_000,
        cohorts: 10,
        seed: 3,
    };
    // In memory.
    let ws = workload::generate("bd", spec).expect("generates").workspace;
    check_breakdowns(&ws, spec.cohorts, 1);

    // Read in place from a snapshot, with changes since: users added past
    // it and members added and removed.
    let snap = Snapshot::from_bytes(persist::write_snapshot(&ws, 1).expect("writes"), "mem")
        .expect("opens");
    let layered = persist::load_workspace(Arc::new(snap)).expect("loads");
    let layered = WorkspaceHandle::in_memory(layered).expect("served");
    for i in 0..3_000 {
        layered
            .upsert_user(new_user(Some(&format!("late{i}")), &[], &[]))
            .expect("a new user");
    }
    let late: Vec<String> = (0..1_000).map(|i| format!("late{i}")).collect();
    let early: Vec<String> = (0..1_000).map(|i| format!("u{}", i * 7)).collect();
    for c in 0..spec.cohorts {
        let id = workload::cohort_id(c);
        import_ok(
            &layered,
            workload::PARTNER,
            &id,
            json!([{"user_ids": late}]),
            jan(2),
        );
        import_ok(
            &layered,
            workload::PARTNER,
            &id,
            json!([{"user_ids": early, "should_remove": c % 2 == 0}]),
            jan(3),
        );
    }
    check_breakdowns(&layered.read(), spec.cohorts, 2);
}

#[test]
fn a_frozen_view_answers_for_the_moment_it_was_taken() {
    let spec = Spec {
        users: 20_000,
        cohorts: 4,
        seed: 9,
    };
    let mut ws = workload::generate("fz", spec).expect("generates").workspace;
    let f = Filter::Or(vec![
        Filter::includes(workload::PARTNER, workload::cohort_id(0)),
        Filter::Bucket(BucketCmp::Lt(100)),
    ]);
    let before = query::count(&ws, &Uncached, &f, false).unwrap().count;
    // The view borrows nothing of the workspace: it may change meanwhile.
    let frozen = Frozen::new(&ws, &Uncached, &[&f], false).expect("a view");
    let h = WorkspaceHandle::in_memory(ws).expect("served");
    for i in 0..500 {
        h.upsert_user(new_user(Some(&format!("new{i}")), &[], &[]))
            .unwrap();
    }
    let ids: Vec<String> = (0..500).map(|i| format!("new{i}")).collect();
    import_ok(
        &h,
        workload::PARTNER,
        &workload::cohort_id(0),
        json!([{"user_ids": ids}]),
        jan(2),
    );
    ws = h.into_workspace();
    assert_eq!(query::count_in(&frozen, &f, false).unwrap().count, before);
    let after = query::count(&ws, &Uncached, &f, false).unwrap().count;
    assert_eq!(after, before + 500);
    assert_eq!(after, reference::count(&ws, &f).unwrap());
}

#[test]
fn an_estimate_counts_a_bounded_number_of_bucket_ranges() {
    let ws = workload::generate(
        "es",
        Spec {
            users: 5_000,
            cohorts: 2,
            seed: 1,
        },
    )
    .unwrap()
    .workspace;
    let c0 = Filter::includes(workload::PARTNER, workload::cohort_id(0));
    // 64 ranges: estimated; 65: refused with a clear message.
    let cuts = |n: u16| {
        Filter::And(vec![
            c0.clone(),
            Filter::Or(
                (1..n)
                    .map(|i| Filter::Bucket(BucketCmp::Between(i * 100, i * 100)))
                    .collect(),
            )
            .not(),
        ])
    };
    // Each one-bucket range adds two cuts.
    assert!(query::estimate(&ws, &Uncached, &cuts(32), 0, 1_000).is_ok());
    let e = query::estimate(&ws, &Uncached, &cuts(40), 0, 1_000).expect_err("refused");
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("at most 64") && m.contains("exact count")),
        "{e}"
    );
}

#[test]
fn a_bitmap_whose_contents_disagree_with_its_header_is_refused_when_first_read() {
    // 10,000 users; cohort "evens" holds the even ones: one bitmap
    // container of 5,000 members (no runs).
    let mut ws = Workspace::new("corrupt", 5);
    for i in 0..10_000 {
        ws.users
            .create(new_user(Some(&format!("u{i}")), &[], &[]))
            .unwrap();
    }
    let key = CohortKey::new(Partner::Amplitude, "evens");
    ws.cohorts.get_or_create(key.clone()).unwrap().0.members = (0..10_000u32).step_by(2).collect();
    let good = persist::write_snapshot(&ws, 1).unwrap();
    let snap = Snapshot::from_bytes(good.clone(), "good").unwrap();
    let meta = snap.meta().unwrap();
    let at = meta.cohorts[0].offset as usize;
    // The portable format of one bitmap container without runs: cookie,
    // size, key and cardinality, offset, then the 1024 words.
    let words = at + 16;
    let bad = rewrite_section(&good, SectionKind::Bitmaps, |b| {
        assert_eq!(b[words], 0x55, "users 0, 2, 4, 6 in the first byte");
        b[words] |= 0x02; // user 1, whom the header does not count
    });
    let bad = Snapshot::from_bytes(bad, "bad").expect("every checksum holds");
    assert!(matches!(bad.verify(), Err(Error::Corrupt { .. })));
    // Opening reads the headers only (the start-up check has found every
    // checksum right). Reading the bitmap would count `not evens` as
    // 4,999: the first read checks its containers and refuses, every
    // time, naming the cohort.
    let bad = Arc::new(bad);
    let loaded = persist::load_workspace(bad.clone()).expect("opens: headers only");
    let shapes = [
        Filter::excludes(Partner::Amplitude, "evens"),
        Filter::And(vec![
            Filter::includes(Partner::Amplitude, "evens"),
            Filter::Bucket(BucketCmp::Between(0, 4_999)),
        ]),
    ];
    for _ in 0..2 {
        for f in &shapes {
            match query::count(&loaded, &Uncached, f, false) {
                Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("evens"), "{reason}"),
                other => panic!("{f}: counted a corrupt bitmap: {other:?}"),
            }
        }
    }
    // A workspace over the cohort checked when made (a compaction's
    // rebase) refuses at once.
    assert!(matches!(
        segq::cohorts::BaseBitmap::new(bad, 0),
        Err(Error::Corrupt { .. })
    ));
    // The good one loads and counts.
    let loaded = persist::load_workspace(Arc::new(snap)).unwrap();
    let n = query::count(
        &loaded,
        &Uncached,
        &Filter::excludes(Partner::Amplitude, "evens"),
        false,
    )
    .unwrap();
    assert_eq!(n.count, 5_000);
}
