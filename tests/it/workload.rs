//! The generated workload of WORKLOAD.md: deterministic, and of the
//! promised shape.

use std::sync::OnceLock;

use segq::segment::reference;
use segq::workload::{self, cohort_id, CohortKind, Spec, Workload, PARTNER};
use segq::{CohortKey, Error, UserId, UserRef};

const SPEC: Spec = Spec {
    users: 20_000,
    cohorts: 70,
    seed: 7,
};

/// One generated workload shared by the tests that only read it.
fn shared() -> &'static Workload {
    static W: OnceLock<Workload> = OnceLock::new();
    W.get_or_init(|| workload::generate("shared", SPEC).unwrap())
}

fn member_bitmaps(w: &Workload) -> Vec<roaring::RoaringBitmap> {
    (0..w.spec.cohorts)
        .map(|i| {
            w.workspace
                .cohorts
                .get(&CohortKey::new(PARTNER, cohort_id(i)))
                .unwrap()
                .members
                .bitmap()
                .unwrap()
                .into_owned()
        })
        .collect()
}

#[test]
fn generation_is_deterministic_and_depends_on_the_seed() {
    let a = shared();
    let b = workload::generate("again", SPEC).unwrap();
    assert_eq!(a.cohorts, b.cohorts);
    assert_eq!(member_bitmaps(a), member_bitmaps(&b));
    assert_eq!(
        a.workspace.users.buckets().collect::<Vec<_>>(),
        b.workspace.users.buckets().collect::<Vec<_>>()
    );
    for u in (0..SPEC.users).step_by(97) {
        assert_eq!(
            a.workspace.users.get(UserId(u)),
            b.workspace.users.get(UserId(u))
        );
    }

    let c = workload::generate("other", Spec { seed: 8, ..SPEC }).unwrap();
    assert_ne!(
        a.workspace.users.buckets().collect::<Vec<_>>(),
        c.workspace.users.buckets().collect::<Vec<_>>()
    );
    let (ma, mc) = (member_bitmaps(a), member_bitmaps(&c));
    assert!(
        ma.iter().zip(&mc).all(|(x, y)| x != y),
        "every cohort differs with another seed"
    );
}

#[test]
fn zero_users_is_refused() {
    let err = workload::generate("none", Spec { users: 0, ..SPEC }).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

#[test]
fn users_have_the_promised_identifiers() {
    let w = shared();
    let users = &w.workspace.users;
    assert_eq!(users.len(), SPEC.users);
    let (mut anonymous, mut aliased) = (0u32, 0u32);
    for u in 0..SPEC.users {
        let rec = users.get(UserId(u)).unwrap();
        match &rec.external_id {
            None => anonymous += 1,
            Some(e) => assert_eq!(&**e, format!("u{u}")),
        }
        let devices: Vec<&str> = rec.devices.iter().map(|d| &**d).collect();
        assert_eq!(devices, [format!("d{u}")]);
        match rec.aliases.as_slice() {
            [] => {}
            [(label, name)] => {
                aliased += 1;
                assert_eq!(&**label, "email");
                assert_eq!(&**name, format!("u{u}@example.com"));
            }
            more => panic!("user {u} has aliases {more:?}"),
        }
        assert!(rec.bucket < 10_000);
    }
    let share = |k: u32| f64::from(k) / f64::from(SPEC.users);
    assert!(
        (0.18..=0.22).contains(&share(anonymous)),
        "anonymous: {}",
        share(anonymous)
    );
    assert!(
        (0.085..=0.115).contains(&share(aliased)),
        "aliased: {}",
        share(aliased)
    );
    // Identifiers find their users.
    assert_eq!(
        users.lookup(&UserRef::DeviceId("d123".into())),
        Some(UserId(123))
    );
    let identified = (0..SPEC.users)
        .find(|&u| !users.get(UserId(u)).unwrap().is_anonymous())
        .unwrap();
    assert_eq!(
        users.lookup(&UserRef::ExternalId(format!("u{identified}"))),
        Some(UserId(identified))
    );

    // Buckets are roughly uniform.
    let mut deciles = [0u32; 10];
    for b in users.buckets() {
        deciles[usize::from(b / 1_000)] += 1;
    }
    for n in deciles {
        assert!((0.085..=0.115).contains(&share(n)), "{deciles:?}");
    }
}

#[test]
fn cohorts_are_within_their_density_bands() {
    let w = shared();
    let n = f64::from(SPEC.users);
    assert_eq!(w.cohorts.len(), 70);
    assert_eq!(w.workspace.cohorts.len(), 70);
    for info in &w.cohorts {
        let (band, lo, hi) = match info.index {
            0..=19 => ("large", 0.05, 0.60),
            20..=59 => ("medium", 0.005, 0.05),
            _ => ("small", 0.000_01, 0.005),
        };
        assert_eq!(info.band, band);
        assert_eq!(info.cohort_id, cohort_id(info.index));
        assert!(
            (lo..=hi).contains(&info.target_density),
            "cohort {}: target {} outside {band}",
            info.index,
            info.target_density
        );
        let c = w
            .workspace
            .cohorts
            .get(&CohortKey::new(PARTNER, cohort_id(info.index)))
            .unwrap();
        assert_eq!(c.len(), info.members);
        assert!(c.members.bitmap().unwrap().max().unwrap_or(0) < SPEC.users);
        assert!(c.name.contains(band));

        let density = info.members as f64 / n;
        let target = info.target_density;
        match info.kind {
            CohortKind::Behavioural { k } => {
                assert_ne!(info.index % 3, 2);
                assert!([0.5, 1.0, 2.0].contains(&k));
                // Large enough to judge: within [0.5x, 2x] of the target.
                if target * n >= 50.0 {
                    assert!(
                        (0.5 * target..=2.0 * target).contains(&density),
                        "behavioural cohort {} (k={k}): {density} vs target {target}",
                        info.index
                    );
                }
            }
            CohortKind::Clustered { start, len } => {
                assert_eq!(info.index % 3, 2);
                assert!(len >= 1 && start + len <= SPEC.users);
                let expected_len = (target / 0.8 * n).round().max(1.0);
                assert!((f64::from(len) - expected_len).abs() <= 1.0);
                // Every member is in the band of consecutive signups ...
                if let (Some(first), Some(last)) = (
                    c.members.bitmap().unwrap().min(),
                    c.members.bitmap().unwrap().max(),
                ) {
                    assert!(
                        first >= start && last < start + len,
                        "cohort {}",
                        info.index
                    );
                }
                // ... and about 80% of the band are members.
                if len >= 100 {
                    let share = info.members as f64 / f64::from(len);
                    assert!(
                        (0.7..=0.9).contains(&share),
                        "clustered cohort {}: {share} of its band",
                        info.index
                    );
                }
                // The density is within its band (with room for the
                // randomness of tiny cohorts).
                if target * n >= 50.0 {
                    assert!(
                        (0.8 * lo..=1.2 * hi).contains(&density),
                        "clustered cohort {}: {density} outside {band}",
                        info.index
                    );
                }
            }
        }
    }
}

#[test]
fn the_query_shapes_all_evaluate() {
    let w = shared();
    let shapes = workload::query_shapes(70);
    assert_eq!(shapes.len(), 6);
    for (name, filter) in &shapes {
        let count =
            reference::count(&w.workspace, filter).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(count <= u64::from(SPEC.users), "{name}");
        let members = reference::members(&w.workspace, filter).unwrap();
        assert_eq!(members.len() as u64, count, "{name}");
        if let Some(&u) = members.first() {
            let r = UserRef::DeviceId(format!("d{}", u.get()));
            assert!(reference::contains(&w.workspace, filter, &r)
                .unwrap()
                .is_member());
        }
    }
    // The shapes name only cohorts that exist, also for small workloads.
    for (users, cohorts) in [(200, 1), (200, 5), (200, 20), (200, 21), (200, 50), (1, 70)] {
        let small = workload::generate(
            "small",
            Spec {
                users,
                cohorts,
                seed: 1,
            },
        )
        .unwrap();
        assert_eq!(small.workspace.users.len(), users);
        for (name, filter) in workload::query_shapes(cohorts) {
            reference::count(&small.workspace, &filter)
                .unwrap_or_else(|e| panic!("{users} users, {cohorts} cohorts, {name}: {e}"));
        }
    }
}

#[test]
fn the_streamed_snapshot_is_the_engines_snapshot_of_the_generated_workspace() {
    for spec in [
        Spec {
            users: 20_000,
            cohorts: 9,
            seed: 11,
        },
        Spec {
            users: 1,
            cohorts: 3,
            seed: 2,
        },
    ] {
        let (streamed, infos) = workload::write_snapshot("gen", spec, Vec::new()).unwrap();
        let generated = workload::generate("gen", spec).unwrap();
        let written = segq::engine::persist::write_snapshot(&generated.workspace, 0).unwrap();
        assert!(streamed == written, "{spec:?}: the bytes differ");
        assert_eq!(infos, generated.cohorts);
    }
}
