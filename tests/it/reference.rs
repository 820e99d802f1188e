//! The reference evaluator on a small hand-built workspace whose answers are
//! known.

use segq::cohorts::{Cohort, SyncStats};
use segq::segment::reference::{self, Membership};
use segq::segment::{BucketCmp, Filter};
use segq::users::NewUser;
use segq::{CohortKey, Error, Partner, UserId, UserRef, Workspace};

use crate::support::new_user;

const AMP: Partner = Partner::Amplitude;
const MIX: Partner = Partner::Mixpanel;
const ALL: [u32; 7] = [0, 1, 2, 3, 4, 5, 6];

/// Users (bucket in brackets):
/// - 0 `alice` [0], device `d-alice`, alias (email, alice@example.com)
/// - 1 `bob` [9999]
/// - 2 anonymous [5], device `anon-1`
/// - 3 `carol` [5000], device `d-carol`
/// - 4 anonymous [9998], device `anon-2`
/// - 5 `dave` [1]
/// - 6 anonymous [5], device `d-late`, later identified as `erin`
///
/// Cohorts (name, members):
/// - amplitude `c1` "Power users" {0, 1, 3}
/// - amplitude `c2` "Churn risk" {1, 2, 4}
/// - amplitude `empty` "Empty" {}
/// - amplitude `dup-a` and `dup-b`, both "Dup": {0} and {6}
/// - amplitude `stale` "Stale": {3} plus ids of no user (100, 70000)
/// - mixpanel `c1` "Power users" {5}
fn workspace() -> Workspace {
    let mut ws = Workspace::new("eval", 9);
    let users: [(NewUser, u16); 7] = [
        (
            new_user(
                Some("alice"),
                &["d-alice"],
                &[("email", "alice@example.com")],
            ),
            0,
        ),
        (new_user(Some("bob"), &[], &[]), 9_999),
        (new_user(None, &["anon-1"], &[]), 5),
        (new_user(Some("carol"), &["d-carol"], &[]), 5_000),
        (new_user(None, &["anon-2"], &[]), 9_998),
        (new_user(Some("dave"), &[], &[]), 1),
        (new_user(None, &["d-late"], &[]), 5),
    ];
    for (i, (mut u, bucket)) in users.into_iter().enumerate() {
        u.bucket = Some(bucket);
        assert_eq!(ws.users.create(u).unwrap(), UserId(i as u32));
    }
    ws.users.identify(UserId(6), "erin").unwrap();
    let cohorts: [(Partner, &str, &str, &[u32]); 7] = [
        (AMP, "c1", "Power users", &[0, 1, 3]),
        (AMP, "c2", "Churn risk", &[1, 2, 4]),
        (AMP, "empty", "Empty", &[]),
        (AMP, "dup-a", "Dup", &[0]),
        (AMP, "dup-b", "Dup", &[6]),
        (AMP, "stale", "Stale", &[3, 100, 70_000]),
        (MIX, "c1", "Power users", &[5]),
    ];
    for (partner, id, name, members) in cohorts {
        ws.cohorts
            .insert(Cohort {
                key: CohortKey::new(partner, id),
                name: name.into(),
                created_at: None,
                members: members.iter().copied().collect(),
                sync: SyncStats::default(),
                size_history: Default::default(),
                version: 0,
            })
            .unwrap();
    }
    ws
}

fn ids(ws: &Workspace, f: &Filter) -> Vec<u32> {
    let members: Vec<u32> = reference::members(ws, f)
        .unwrap_or_else(|e| panic!("{f}: {e}"))
        .into_iter()
        .map(UserId::get)
        .collect();
    // count, members and evaluate agree, and contains agrees for every user.
    assert_eq!(
        reference::count(ws, f).unwrap(),
        members.len() as u64,
        "{f}"
    );
    assert_eq!(
        reference::evaluate(ws, f)
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        members,
        "{f}"
    );
    for u in 0..ws.users.len() {
        assert_eq!(
            reference::contains_user(ws, f, UserId(u)).unwrap(),
            members.contains(&u),
            "{f}: user {u}"
        );
    }
    members
}

fn ext(s: &str) -> UserRef {
    UserRef::ExternalId(s.into())
}

fn dev(s: &str) -> UserRef {
    UserRef::DeviceId(s.into())
}

fn inc(id: &str) -> Filter {
    Filter::includes(AMP, id)
}

fn exc(id: &str) -> Filter {
    Filter::excludes(AMP, id)
}

fn bucket(c: BucketCmp) -> Filter {
    Filter::Bucket(c)
}

#[test]
fn includes_is_the_cohorts_members() {
    let ws = workspace();
    assert_eq!(ids(&ws, &inc("c1")), [0, 1, 3]);
    assert_eq!(ids(&ws, &inc("c2")), [1, 2, 4]);
    assert_eq!(ids(&ws, &inc("empty")), [] as [u32; 0]);
    assert_eq!(ids(&ws, &Filter::includes(MIX, "c1")), [5]);
    assert_eq!(
        reference::contains(&ws, &inc("c1"), &ext("alice")).unwrap(),
        Membership::Member(UserId(0))
    );
    assert_eq!(
        reference::contains(&ws, &inc("c1"), &ext("dave")).unwrap(),
        Membership::NotMember(UserId(5))
    );
    assert!(reference::contains(&ws, &inc("c2"), &dev("anon-1"))
        .unwrap()
        .is_member());
}

#[test]
fn does_not_include_is_the_complement_within_existing_users() {
    let ws = workspace();
    assert_eq!(ids(&ws, &exc("c1")), [2, 4, 5, 6]);
    assert_eq!(ids(&ws, &exc("c2")), [0, 3, 5, 6]);
    assert_eq!(ids(&ws, &exc("empty")), ALL);
    assert_eq!(ids(&ws, &Filter::excludes(MIX, "c1")), [0, 1, 2, 3, 4, 6]);
    // A cohort holding ids of no user: they are never in a segment, neither
    // through includes nor through a complement.
    assert_eq!(ids(&ws, &inc("stale")), [3]);
    assert_eq!(ids(&ws, &exc("stale")), [0, 1, 2, 4, 5, 6]);
    assert_eq!(ids(&ws, &inc("stale").not()), [0, 1, 2, 4, 5, 6]);
    assert_eq!(reference::universe(&ws).iter().collect::<Vec<_>>(), ALL);
    assert!(!reference::contains_user(&ws, &inc("stale"), UserId(100)).unwrap());
    assert!(!reference::contains_user(&ws, &exc("empty"), UserId(7)).unwrap());
}

#[test]
fn bucket_comparisons_at_the_edges() {
    use BucketCmp::*;
    let ws = workspace();
    let none: [u32; 0] = [];
    let cases: Vec<(BucketCmp, Vec<u32>)> = vec![
        (Lt(0), none.to_vec()),
        (Lt(1), vec![0]),
        (Lt(2), vec![0, 5]),
        (Lt(10_000), ALL.to_vec()),
        (Le(0), vec![0]),
        (Le(9_999), ALL.to_vec()),
        (Le(u16::MAX), ALL.to_vec()),
        (Gt(9_999), none.to_vec()),
        (Gt(9_998), vec![1]),
        (Gt(u16::MAX), none.to_vec()),
        (Ge(0), ALL.to_vec()),
        (Ge(9_998), vec![1, 4]),
        (Ge(9_999), vec![1]),
        (Ge(10_000), none.to_vec()),
        (Between(5, 5), vec![2, 6]),
        (Between(0, 0), vec![0]),
        (Between(9_999, 9_999), vec![1]),
        (Between(5, 4), none.to_vec()),
        (Between(1, 5), vec![2, 5, 6]),
        (Between(0, 9_999), ALL.to_vec()),
        (Between(9_999, u16::MAX), vec![1]),
        (Between(10_000, u16::MAX), none.to_vec()),
    ];
    for (cmp, expected) in cases {
        assert_eq!(ids(&ws, &bucket(cmp)), expected, "{cmp}");
    }
    assert_eq!(Lt(0).range(), None);
    assert_eq!(Gt(9_999).range(), None);
    assert_eq!(Between(5, 4).range(), None);
    assert_eq!(Between(5, 5).range(), Some((5, 5)));
    assert_eq!(Le(20_000).range(), Some((0, 9_999)));
    assert!(Between(3, 7).accepts(3) && Between(3, 7).accepts(7));
    assert!(!Between(3, 7).accepts(8) && !Between(3, 7).accepts(2));
}

#[test]
fn and_or_not_combine() {
    let ws = workspace();
    assert_eq!(ids(&ws, &Filter::And(vec![inc("c1"), inc("c2")])), [1]);
    assert_eq!(
        ids(&ws, &Filter::Or(vec![inc("c1"), inc("c2")])),
        [0, 1, 2, 3, 4]
    );
    assert_eq!(
        ids(&ws, &Filter::And(vec![inc("c1"), inc("c2").not()])),
        [0, 3]
    );
    assert_eq!(ids(&ws, &Filter::And(vec![inc("c1"), exc("c2")])), [0, 3]);
    assert_eq!(ids(&ws, &inc("c1").not()), ids(&ws, &exc("c1")));
    assert_eq!(ids(&ws, &exc("c1").not()), ids(&ws, &inc("c1")));
    assert_eq!(ids(&ws, &inc("c1").not().not()), [0, 1, 3]);
    assert_eq!(
        ids(
            &ws,
            &Filter::Or(vec![
                Filter::And(vec![inc("c2"), bucket(BucketCmp::Lt(10))]),
                Filter::includes(MIX, "c1"),
            ])
        ),
        [2, 5]
    );
    // De Morgan.
    assert_eq!(
        ids(&ws, &Filter::Or(vec![inc("c1"), inc("c2")]).not()),
        ids(&ws, &Filter::And(vec![exc("c1"), exc("c2")]))
    );
    // A single child is itself.
    assert_eq!(ids(&ws, &Filter::And(vec![inc("c2")])), [1, 2, 4]);
    assert_eq!(ids(&ws, &Filter::Or(vec![inc("c2")])), [1, 2, 4]);
    // The same leaf twice.
    assert_eq!(
        ids(&ws, &Filter::And(vec![inc("c1"), inc("c1")])),
        [0, 1, 3]
    );
    assert_eq!(
        ids(&ws, &Filter::And(vec![inc("c1"), exc("c1")])),
        [] as [u32; 0]
    );
    assert_eq!(ids(&ws, &Filter::Or(vec![inc("c1"), exc("c1")])), ALL);
}

#[test]
fn empty_and_is_every_user_empty_or_is_nobody() {
    let ws = workspace();
    assert_eq!(ids(&ws, &Filter::And(vec![])), ALL);
    assert_eq!(ids(&ws, &Filter::Or(vec![])), [] as [u32; 0]);
    assert_eq!(ids(&ws, &Filter::And(vec![]).not()), [] as [u32; 0]);
    assert_eq!(ids(&ws, &Filter::Or(vec![]).not()), ALL);
    assert_eq!(
        ids(&ws, &Filter::And(vec![Filter::Or(vec![]), inc("c1")])),
        [] as [u32; 0]
    );
    assert_eq!(
        ids(&ws, &Filter::Or(vec![Filter::And(vec![]), inc("c1")])),
        ALL
    );
    // In a workspace without users, every segment is empty.
    let mut empty = Workspace::new("empty", 0);
    empty.upsert_cohort(AMP, "c", "C", None).unwrap();
    for f in [
        Filter::And(vec![]),
        Filter::Or(vec![]).not(),
        exc("c"),
        bucket(BucketCmp::Ge(0)),
    ] {
        assert_eq!(reference::count(&empty, &f).unwrap(), 0, "{f}");
        assert_eq!(
            reference::contains(&empty, &f, &ext("alice")).unwrap(),
            Membership::UnknownUser
        );
    }
}

#[test]
fn an_unknown_cohort_is_an_error() {
    let ws = workspace();
    let unknown = inc("nope");
    let filters = [
        unknown.clone(),
        exc("nope"),
        unknown.clone().not(),
        // Where a short-circuiting reader could skip the leaf.
        Filter::Or(vec![Filter::And(vec![]), unknown.clone()]),
        Filter::And(vec![Filter::Or(vec![]), unknown.clone()]),
        Filter::And(vec![inc("c1"), Filter::includes(MIX, "c2")]),
    ];
    for f in &filters {
        for err in [
            reference::count(&ws, f).unwrap_err(),
            reference::members(&ws, f).unwrap_err(),
            reference::evaluate(&ws, f).unwrap_err(),
            // For a known user, an unknown user, and an unknown device.
            reference::contains(&ws, f, &ext("alice")).unwrap_err(),
            reference::contains(&ws, f, &ext("nobody")).unwrap_err(),
            reference::contains(&ws, f, &dev("nobody")).unwrap_err(),
        ] {
            assert!(
                matches!(err, Error::NoSuchCohort { .. }),
                "{f}: expected NoSuchCohort, got {err:?}"
            );
        }
    }
    // The error names the partner and the value.
    match reference::count(&ws, &Filter::includes(MIX, "c2")) {
        Err(Error::NoSuchCohort { partner, value }) => {
            assert_eq!((partner, value.as_str()), (MIX, "c2"));
        }
        other => panic!("expected NoSuchCohort, got {other:?}"),
    }
    // An ambiguous name is an error too.
    for err in [
        reference::count(&ws, &inc("Dup")).unwrap_err(),
        reference::contains(&ws, &inc("Dup"), &ext("nobody")).unwrap_err(),
    ] {
        match err {
            Error::AmbiguousCohortName { ids, .. } => assert_eq!(ids, ["dup-a", "dup-b"]),
            other => panic!("expected AmbiguousCohortName, got {other:?}"),
        }
    }
}

#[test]
fn contains_looks_users_up_by_any_identifier() {
    let ws = workspace();
    let f = inc("c1");
    // By alias, and by the device of an identified user: a look-up, not the
    // import's matching rules.
    assert_eq!(
        reference::contains(
            &ws,
            &f,
            &UserRef::Alias {
                label: "email".into(),
                name: "alice@example.com".into()
            }
        )
        .unwrap(),
        Membership::Member(UserId(0))
    );
    assert_eq!(
        reference::contains(&ws, &f, &dev("d-alice")).unwrap(),
        Membership::Member(UserId(0))
    );
    assert_eq!(
        reference::contains(&ws, &f, &dev("d-carol")).unwrap(),
        Membership::Member(UserId(3))
    );
    // User 6 was identified after it got its device: both find it.
    let late = Filter::includes(AMP, "dup-b");
    assert_eq!(
        reference::contains(&ws, &late, &dev("d-late")).unwrap(),
        Membership::Member(UserId(6))
    );
    assert_eq!(
        reference::contains(&ws, &late, &ext("erin")).unwrap(),
        Membership::Member(UserId(6))
    );
    assert_eq!(
        reference::contains(&ws, &f, &dev("anon-2")).unwrap(),
        Membership::NotMember(UserId(4))
    );
    assert!(!Membership::NotMember(UserId(4)).is_member());

    // Unknown identifiers, including near misses.
    for r in [
        ext("nobody"),
        ext("Alice"),
        dev("alice"),
        ext("d-alice"),
        UserRef::Alias {
            label: "work_email".into(),
            name: "alice@example.com".into(),
        },
        UserRef::Alias {
            label: "alice@example.com".into(),
            name: "email".into(),
        },
    ] {
        assert_eq!(
            reference::contains(&ws, &f, &r).unwrap(),
            Membership::UnknownUser,
            "{r}"
        );
        assert_eq!(
            reference::contains(&ws, &Filter::And(vec![]), &r).unwrap(),
            Membership::UnknownUser,
            "{r}"
        );
    }
}

#[test]
fn a_cohort_named_by_its_unique_name_evaluates_like_its_id() {
    let ws = workspace();
    let pairs = [
        (inc("Power users"), inc("c1")),
        (exc("Churn risk"), exc("c2")),
        (
            Filter::includes(MIX, "Power users"),
            Filter::includes(MIX, "c1"),
        ),
        (
            Filter::And(vec![inc("Power users"), exc("Churn risk")]),
            Filter::And(vec![inc("c1"), exc("c2")]),
        ),
    ];
    for (by_name, by_id) in &pairs {
        assert_eq!(ids(&ws, by_name), ids(&ws, by_id), "{by_name}");
        for u in ["alice", "bob", "carol", "dave", "erin"] {
            assert_eq!(
                reference::contains(&ws, by_name, &ext(u)).unwrap(),
                reference::contains(&ws, by_id, &ext(u)).unwrap()
            );
        }
    }
    assert_eq!(ids(&ws, &inc("Power users")), [0, 1, 3]);
    assert_eq!(ids(&ws, &Filter::includes(MIX, "Power users")), [5]);
}
