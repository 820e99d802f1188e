//! Property test: the reference evaluator against a plain `BTreeSet` model
//! on random workspaces and random filter trees.

use std::collections::BTreeSet;

use proptest::prelude::*;
use segq::cohorts::{Cohort, SyncStats};
use segq::segment::reference::{self, Membership};
use segq::segment::{BucketCmp, Filter};
use segq::users::NewUser;
use segq::{CohortKey, Partner, UserId, UserRef, Workspace};

const PARTNERS: [Partner; 2] = [Partner::Amplitude, Partner::Mixpanel];

/// One generated user.
#[derive(Clone, Debug)]
pub(crate) struct GenUser {
    anonymous: bool,
    bucket: u16,
}

/// One generated cohort: member ids may exceed the user count (ids of no
/// user, as a bulk-loaded cohort could hold); the model ignores those.
#[derive(Clone, Debug)]
pub(crate) struct GenCohort {
    members: BTreeSet<u32>,
}

#[derive(Clone, Debug)]
pub(crate) struct GenWorkspace {
    pub(crate) users: Vec<GenUser>,
    pub(crate) cohorts: Vec<GenCohort>,
}

/// A filter tree whose cohort leaves name a cohort by index (taken modulo
/// the number of cohorts), and by name or by id.
#[derive(Clone, Debug)]
pub(crate) enum GenFilter {
    Cohort {
        index: usize,
        includes: bool,
        by_name: bool,
    },
    Bucket(BucketCmp),
    And(Vec<GenFilter>),
    Or(Vec<GenFilter>),
    Not(Box<GenFilter>),
}

/// Cohort `i` belongs to partner `i % 2` with cohort_id `c{i / 2}`, so the
/// two partners reuse the same cohort_ids.
pub(crate) fn cohort_key(i: usize) -> CohortKey {
    CohortKey::new(PARTNERS[i % 2], format!("c{}", i / 2))
}

fn cohort_name(i: usize) -> String {
    format!("Cohort number {i}")
}

fn bucket_value() -> impl Strategy<Value = u16> {
    prop_oneof![
        7 => 0u16..10_000,
        1 => prop::sample::select(vec![0u16, 1, 9_998, 9_999, 10_000, u16::MAX]),
    ]
}

fn bucket_cmp() -> impl Strategy<Value = BucketCmp> {
    prop_oneof![
        bucket_value().prop_map(BucketCmp::Lt),
        bucket_value().prop_map(BucketCmp::Le),
        bucket_value().prop_map(BucketCmp::Gt),
        bucket_value().prop_map(BucketCmp::Ge),
        // Includes empty ranges (lo > hi) and equal ends.
        (bucket_value(), bucket_value()).prop_map(|(a, b)| BucketCmp::Between(a, b)),
        bucket_value().prop_map(|v| BucketCmp::Between(v, v)),
    ]
}

pub(crate) fn gen_filter() -> impl Strategy<Value = GenFilter> {
    let leaf = prop_oneof![
        3 => (0usize..6, any::<bool>(), prop::bool::weighted(0.2)).prop_map(
            |(index, includes, by_name)| GenFilter::Cohort {
                index,
                includes,
                by_name
            }
        ),
        1 => bucket_cmp().prop_map(GenFilter::Bucket),
    ];
    leaf.prop_recursive(4, 64, 4, |inner| {
        // Mostly 1..=4 children; sometimes none (all users / nobody).
        let children = prop_oneof![
            1 => Just(Vec::new()),
            8 => prop::collection::vec(inner.clone(), 1..=4),
        ];
        prop_oneof![
            2 => children.clone().prop_map(GenFilter::And),
            2 => children.prop_map(GenFilter::Or),
            1 => inner.prop_map(|f| GenFilter::Not(Box::new(f))),
        ]
    })
}

pub(crate) fn gen_workspace() -> impl Strategy<Value = GenWorkspace> {
    let users = prop::collection::vec(
        (prop::bool::weighted(0.3), 0u16..10_000)
            .prop_map(|(anonymous, bucket)| GenUser { anonymous, bucket }),
        0..300,
    );
    users.prop_flat_map(|users| {
        let n = users.len() as u32;
        // A member density (empty and full included), then each user in or
        // out; plus, sometimes, ids of no user (up past a 2^16 chunk).
        let cohort = (
            prop::sample::select(vec![
                0.0, 0.02, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
            ]),
            prop::collection::btree_set(n..n + 70_000, 0..3),
        )
            .prop_flat_map(move |(p, stale)| {
                prop::collection::vec(prop::bool::weighted(p), n as usize).prop_map(move |inside| {
                    let mut members: BTreeSet<u32> = inside
                        .iter()
                        .enumerate()
                        .filter(|(_, &m)| m)
                        .map(|(u, _)| u as u32)
                        .collect();
                    members.extend(&stale);
                    GenCohort { members }
                })
            });
        (Just(users), prop::collection::vec(cohort, 1..6))
            .prop_map(|(users, cohorts)| GenWorkspace { users, cohorts })
    })
}

pub(crate) fn build(g: &GenWorkspace) -> Workspace {
    let mut ws = Workspace::new("props", 0);
    for (u, user) in g.users.iter().enumerate() {
        let id = ws
            .users
            .create(NewUser {
                external_id: (!user.anonymous).then(|| format!("u{u}")),
                devices: vec![format!("d{u}")],
                aliases: Vec::new(),
                bucket: Some(user.bucket),
            })
            .unwrap();
        assert_eq!(id, UserId(u as u32));
    }
    for (i, c) in g.cohorts.iter().enumerate() {
        ws.cohorts
            .insert(Cohort {
                key: cohort_key(i),
                name: cohort_name(i),
                created_at: None,
                members: c.members.iter().copied().collect(),
                sync: SyncStats::default(),
                size_history: Default::default(),
                version: 0,
            })
            .unwrap();
    }
    ws
}

pub(crate) fn to_filter(f: &GenFilter, cohorts: usize) -> Filter {
    match f {
        GenFilter::Cohort {
            index,
            includes,
            by_name,
        } => {
            let i = index % cohorts;
            let key = cohort_key(i);
            Filter::Cohort {
                partner: key.partner,
                cohort: if *by_name {
                    cohort_name(i)
                } else {
                    key.cohort_id
                },
                includes: *includes,
            }
        }
        GenFilter::Bucket(c) => Filter::Bucket(*c),
        GenFilter::And(c) => Filter::And(c.iter().map(|c| to_filter(c, cohorts)).collect()),
        GenFilter::Or(c) => Filter::Or(c.iter().map(|c| to_filter(c, cohorts)).collect()),
        GenFilter::Not(c) => Filter::Not(Box::new(to_filter(c, cohorts))),
    }
}

/// The model: plain set algebra over the user ids `0..n`.
fn model(g: &GenWorkspace, f: &GenFilter) -> BTreeSet<u32> {
    let n = g.users.len() as u32;
    let all: BTreeSet<u32> = (0..n).collect();
    match f {
        GenFilter::Cohort {
            index, includes, ..
        } => {
            let members: BTreeSet<u32> = g.cohorts[index % g.cohorts.len()]
                .members
                .iter()
                .copied()
                .filter(|&u| u < n)
                .collect();
            if *includes {
                members
            } else {
                all.difference(&members).copied().collect()
            }
        }
        GenFilter::Bucket(cmp) => {
            let accepts = |b: u16| match *cmp {
                BucketCmp::Lt(v) => b < v,
                BucketCmp::Le(v) => b <= v,
                BucketCmp::Gt(v) => b > v,
                BucketCmp::Ge(v) => b >= v,
                BucketCmp::Between(lo, hi) => lo <= b && b <= hi,
            };
            (0..n)
                .filter(|&u| accepts(g.users[u as usize].bucket))
                .collect()
        }
        GenFilter::And(children) => children.iter().fold(all, |acc, c| {
            acc.intersection(&model(g, c)).copied().collect()
        }),
        GenFilter::Or(children) => children.iter().flat_map(|c| model(g, c)).collect(),
        GenFilter::Not(c) => all.difference(&model(g, c)).copied().collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_reference_evaluator_agrees_with_a_set_model(
        g in gen_workspace(),
        f in gen_filter(),
    ) {
        let ws = build(&g);
        let filter = to_filter(&f, g.cohorts.len());
        let expected = model(&g, &f);

        prop_assert_eq!(reference::count(&ws, &filter).unwrap(), expected.len() as u64);
        let members: Vec<u32> = reference::members(&ws, &filter)
            .unwrap()
            .into_iter()
            .map(UserId::get)
            .collect();
        prop_assert_eq!(&members, &expected.iter().copied().collect::<Vec<_>>());

        for (u, user) in g.users.iter().enumerate() {
            let r = if user.anonymous {
                UserRef::DeviceId(format!("d{u}"))
            } else {
                UserRef::ExternalId(format!("u{u}"))
            };
            let id = UserId(u as u32);
            let want = if expected.contains(&id.get()) {
                Membership::Member(id)
            } else {
                Membership::NotMember(id)
            };
            prop_assert_eq!(reference::contains(&ws, &filter, &r).unwrap(), want, "user {}", u);
        }
        prop_assert_eq!(
            reference::contains(&ws, &filter, &UserRef::ExternalId("nobody".into())).unwrap(),
            Membership::UnknownUser
        );
    }
}

/// Checks the planner's normal form: NOT only over leaves and ORs, no AND
/// directly in an AND nor OR in an OR, no All/Nothing inside a composite,
/// AND children in ascending size order.
fn normalised(p: &segq::segment::plan::Plan, users: u64, top: bool) -> Result<(), String> {
    use segq::segment::plan::Plan;
    match p {
        Plan::All | Plan::Nothing if !top => Err(format!("{p:?} inside a composite")),
        Plan::All | Plan::Nothing | Plan::Leaf(_) => Ok(()),
        Plan::Not { child } => match **child {
            Plan::Leaf(_) | Plan::Or { .. } => normalised(child, users, false),
            _ => Err(format!("NOT over {child:?}")),
        },
        Plan::And { all, minus } => {
            if all.len() + minus.len() < 2 && !(all.is_empty() && minus.len() == 1) {
                return Err(format!("AND of one: {p:?}"));
            }
            for c in all.iter().chain(minus) {
                if matches!(c, Plan::And { .. } | Plan::Not { .. }) {
                    return Err(format!("{c:?} directly in an AND"));
                }
                normalised(c, users, false)?;
            }
            let sizes: Vec<u64> = all.iter().map(|c| c.upper_bound(users)).collect();
            if sizes.windows(2).any(|w| w[0] > w[1]) {
                return Err(format!("AND children out of size order: {sizes:?}"));
            }
            Ok(())
        }
        Plan::Or { any } => {
            if any.len() < 2 {
                return Err(format!("OR of {}", any.len()));
            }
            for c in any {
                if matches!(c, Plan::Or { .. }) {
                    return Err(format!("{c:?} directly in an OR"));
                }
                normalised(c, users, false)?;
            }
            Ok(())
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_plan_means_the_filter_and_is_normalised(
        g in gen_workspace(),
        f in gen_filter(),
    ) {
        use segq::segment::plan;
        let ws = build(&g);
        let filter = to_filter(&f, g.cohorts.len());
        let expected = model(&g, &f);
        let p = plan::plan(&ws, &filter).unwrap();
        let users = u64::from(ws.users.len());
        prop_assert_eq!(normalised(&p, users, true), Ok(()), "plan {:?}", p);
        let again = plan::to_filter(&p);
        prop_assert_eq!(reference::count(&ws, &again).unwrap(), expected.len() as u64, "plan {}", p);
        for leaf in p.leaves() {
            if let plan::Leaf::Cohort { partner, cohort_id, cardinality } = leaf {
                let c = ws.cohorts.resolve(*partner, cohort_id).unwrap();
                prop_assert_eq!(*cardinality, c.len());
                prop_assert!(*cardinality > 0, "empty cohorts are folded away");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_chunk_evaluator_agrees_with_the_reference(
        g in gen_workspace(),
        f in gen_filter(),
    ) {
        use segq::segment::{chunk, plan};
        let ws = build(&g);
        let filter = to_filter(&f, g.cohorts.len());
        let expected = model(&g, &f);
        let p = plan::plan(&ws, &filter).unwrap();
        let prepared = chunk::Prepared::new(&ws, &p, &segq::query::Uncached).unwrap();
        prop_assert_eq!(prepared.count().unwrap(), expected.len() as u64, "plan {}", p);
        let members: Vec<u32> = prepared.members().unwrap().iter().collect();
        prop_assert_eq!(&members, &expected.iter().copied().collect::<Vec<_>>());
        for u in 0..g.users.len() as u32 {
            prop_assert_eq!(prepared.contains(UserId(u)).unwrap(), expected.contains(&u), "user {}", u);
        }
    }
}
