//! The quick answers the server gives on its async workers
//! (`query::service::count_quick`, `check_user_quick`) are the answers of
//! the full paths (`count`, `check_user`), and are given only for O(1)
//! counts and bounded checks.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use segq::engine::persist;
use segq::engine::WorkspaceHandle;
use segq::query::service::{
    check_is_quick, check_user, check_user_quick, count, count_is_quick, count_quick, CountMode,
    Target,
};
use segq::segment::{BucketCmp, Filter};
use segq::snapshot::Snapshot;
use segq::workload::{self, Spec};
use segq::UserRef;
use serde_json::{json, Value};

use crate::support::{import_ok, jan, new_user};

const COHORTS: u32 = 6;

/// A workspace read from a snapshot, with changes since: users created
/// past it, members added and removed.
fn layered() -> WorkspaceHandle {
    let spec = Spec {
        users: 30_000,
        cohorts: COHORTS,
        seed: 5,
    };
    let ws = workload::generate("qa", spec).expect("generates").workspace;
    let snap = Snapshot::from_bytes(persist::write_snapshot(&ws, 1).expect("writes"), "mem")
        .expect("opens");
    let h = WorkspaceHandle::in_memory(persist::load_workspace(Arc::new(snap)).expect("loads"))
        .expect("served");
    for i in 0..500 {
        h.upsert_user(new_user(Some(&format!("late{i}")), &[], &[]))
            .expect("a new user");
    }
    let late: Vec<String> = (0..300).map(|i| format!("late{i}")).collect();
    let early: Vec<String> = (0..300).map(|i| format!("u{}", i * 11)).collect();
    for c in 0..COHORTS {
        let id = workload::cohort_id(c);
        import_ok(
            &h,
            workload::PARTNER,
            &id,
            json!([{"user_ids": late}]),
            jan(2),
        );
        import_ok(
            &h,
            workload::PARTNER,
            &id,
            json!([{"user_ids": early, "should_remove": c % 2 == 0}]),
            jan(3),
        );
    }
    h
}

fn leaf(rng: &mut ChaCha8Rng) -> Filter {
    match rng.gen_range(0..6) {
        0 => {
            let lo = rng.gen_range(0..10_000u16);
            Filter::Bucket(BucketCmp::Between(lo, rng.gen_range(lo..10_000u16)))
        }
        1 => Filter::And(Vec::new()),
        _ => {
            let c = workload::cohort_id(rng.gen_range(0..COHORTS));
            if rng.gen_bool(0.7) {
                Filter::includes(workload::PARTNER, c)
            } else {
                Filter::excludes(workload::PARTNER, c)
            }
        }
    }
}

fn filter(rng: &mut ChaCha8Rng, depth: u32) -> Filter {
    if depth == 0 || rng.gen_bool(0.4) {
        return leaf(rng);
    }
    let children = (0..rng.gen_range(1..4))
        .map(|_| filter(rng, depth - 1))
        .collect();
    match rng.gen_range(0..3) {
        0 => Filter::And(children),
        1 => Filter::Or(children),
        _ => Filter::Or(children).not(),
    }
}

/// An answer without its timing.
fn untimed(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("took_us");
    }
    v
}

fn users(rng: &mut ChaCha8Rng) -> Vec<UserRef> {
    let mut out: Vec<UserRef> = (0..20)
        .map(|_| UserRef::ExternalId(format!("u{}", rng.gen_range(0..30_000))))
        .collect();
    out.extend((0..5).map(|i| UserRef::ExternalId(format!("late{}", i * 97))));
    out.push(UserRef::ExternalId("nobody".into()));
    out.push(UserRef::DeviceId("d3".into()));
    out.push(UserRef::DeviceId("no-such-device".into()));
    out
}

#[test]
fn quick_counts_and_checks_answer_as_the_full_paths() {
    let h = layered();
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let exact = CountMode::Exact { explain: false };
    let mut quick_counts = 0;
    let mut quick_checks = 0;
    for case in 0..300 {
        let f = if case < 2 * COHORTS as usize {
            // Every cohort, included and excluded: the quick counts.
            let c = workload::cohort_id(case as u32 / 2);
            if case % 2 == 0 {
                Filter::includes(workload::PARTNER, c)
            } else {
                Filter::excludes(workload::PARTNER, c)
            }
        } else {
            filter(&mut rng, 3)
        };
        let saved = h
            .save_segment(None, &format!("s{case}"), &f)
            .expect("saved");
        for target in [Target::Filter(f.clone()), Target::Segment(saved.id.clone())] {
            let live = matches!(&target, Target::Segment(id) if h.live().len(id).is_some());
            let quick = count_quick(&h, &target, exact);
            assert_eq!(quick.is_some(), count_is_quick(&f, live, exact), "{f}");
            if let Some(q) = quick {
                quick_counts += 1;
                let full = count(&h, &target, exact).expect("counts");
                assert_eq!(untimed(q), untimed(full), "{f}");
            }
            for mode in [
                CountMode::Exact { explain: true },
                CountMode::Estimate {
                    start: 3,
                    width: 100,
                },
            ] {
                assert_eq!(count_quick(&h, &target, mode), None, "{f}");
            }
            for user in users(&mut rng) {
                let quick = check_user_quick(&h, &target, &user);
                assert_eq!(quick.is_some(), check_is_quick(&f, live), "{f}");
                if let Some(q) = quick {
                    quick_checks += 1;
                    let full = check_user(&h, &target, &user).expect("checks");
                    assert_eq!(q, full, "{f} {user}");
                }
            }
        }
    }
    assert!(quick_counts >= 4 * COHORTS, "{quick_counts}");
    assert!(quick_checks > 1_000, "{quick_checks}");
}

#[test]
fn what_the_quick_paths_do_not_answer_the_full_paths_do() {
    let h = layered();
    let exact = CountMode::Exact { explain: false };
    // Errors: the full path says what is wrong.
    let unknown = Target::Filter(Filter::includes(workload::PARTNER, "no-such-cohort"));
    let user = UserRef::ExternalId("u1".into());
    assert_eq!(count_quick(&h, &unknown, exact), None);
    assert!(count(&h, &unknown, exact).is_err());
    assert_eq!(check_user_quick(&h, &unknown, &user), None);
    assert!(check_user(&h, &unknown, &user).is_err());
    let missing = Target::Segment("no-such-segment".into());
    assert_eq!(count_quick(&h, &missing, exact), None);
    assert_eq!(check_user_quick(&h, &missing, &user), None);
    assert!(check_user(&h, &missing, &user).is_err());
    // Work that is not O(1): a count of several cohorts, a check of a
    // large filter.
    let two = Target::Filter(Filter::And(vec![
        Filter::includes(workload::PARTNER, workload::cohort_id(0)),
        Filter::includes(workload::PARTNER, workload::cohort_id(1)),
    ]));
    assert_eq!(count_quick(&h, &two, exact), None);
    assert!(count(&h, &two, exact).is_ok());
    let wide = Filter::Or(
        (0..70)
            .map(|i| Filter::includes(workload::PARTNER, workload::cohort_id(i % COHORTS)))
            .collect(),
    );
    assert!(!check_is_quick(&wide, false));
    let wide = Target::Filter(wide);
    assert_eq!(check_user_quick(&h, &wide, &user), None);
    assert!(check_user(&h, &wide, &user).is_ok());
}
