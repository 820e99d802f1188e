//! The identity-matching rules of PROTOCOL.md ("Matching users"), one test
//! per rule, driven through the JSON bodies the HTTP API receives.

use segq::engine::WorkspaceHandle;
use segq::import::users_success_body;
use segq::{Partner, UserId, UserRef, Workspace};
use serde_json::json;

use crate::support::{cohort, date, fingerprint, import_ok, jan, members, new_user};

const AMP: Partner = Partner::Amplitude;
const MIX: Partner = Partner::Mixpanel;

/// Users:
/// - 0: `u-1`, alias (email, ann@example.com), device `dev-ann`
/// - 1: `u-2`
/// - 2: anonymous, device `anon-dev`
/// - 3: anonymous, device `later-dev` (tests identify it later)
/// - 4: `u-3`, alias (amplitude_id, 42)
/// - 5: anonymous, devices `multi-1` and `multi-2`
fn workspace() -> WorkspaceHandle {
    let h = WorkspaceHandle::in_memory(Workspace::new("matching", 11)).unwrap();
    let users = [
        new_user(Some("u-1"), &["dev-ann"], &[("email", "ann@example.com")]),
        new_user(Some("u-2"), &[], &[]),
        new_user(None, &["anon-dev"], &[]),
        new_user(None, &["later-dev"], &[]),
        new_user(Some("u-3"), &[], &[("amplitude_id", "42")]),
        new_user(None, &["multi-1", "multi-2"], &[]),
    ];
    for (i, u) in users.into_iter().enumerate() {
        let up = h.upsert_user(u).unwrap();
        assert_eq!((up.user, up.created), (UserId(i as u32), true));
    }
    h
}

#[test]
fn external_id_matches_the_user_whose_external_id_it_is() {
    let h = workspace();
    let r = import_ok(&h, AMP, "c", json!([{"user_ids": ["u-2", "u-3"]}]), jan(1));
    assert_eq!(members(&h.read(), AMP, "c"), [1, 4]);
    assert_eq!((r.matched, r.unmatched, r.refused_device_ids), (2, 0, 0));
    assert_eq!((r.added, r.removed), (2, 0));

    // A user_id equal to somebody's device id or alias name is not theirs.
    let r = import_ok(
        &h,
        AMP,
        "c",
        json!([{"user_ids": ["anon-dev", "ann@example.com", "42", "U-1", "u-1 "]}]),
        jan(1),
    );
    assert_eq!(members(&h.read(), AMP, "c"), [1, 4]);
    assert_eq!((r.matched, r.unmatched), (0, 5));
}

#[test]
fn alias_matches_the_user_holding_that_label_and_name_exactly() {
    let h = workspace();
    let r = import_ok(
        &h,
        AMP,
        "c",
        json!([{"aliases": [
            {"alias_name": "ann@example.com", "alias_label": "email"},
            {"alias_name": "42", "alias_label": "amplitude_id"}]}]),
        jan(1),
    );
    assert_eq!(members(&h.read(), AMP, "c"), [0, 4]);
    assert_eq!((r.matched, r.unmatched), (2, 0));

    // The same name under another label, the pair swapped, another case:
    // all match nobody.
    let r = import_ok(
        &h,
        AMP,
        "d",
        json!([{"aliases": [
            {"alias_name": "ann@example.com", "alias_label": "work_email"},
            {"alias_name": "email", "alias_label": "ann@example.com"},
            {"alias_name": "Ann@example.com", "alias_label": "email"},
            {"alias_name": "42", "alias_label": "email"}]}]),
        jan(1),
    );
    assert!(members(&h.read(), AMP, "d").is_empty());
    assert_eq!((r.matched, r.unmatched), (0, 4));
    assert_eq!(
        cohort(&h.read(), AMP, "d").sync.recent_unmatched,
        [
            "alias:work_email:ann@example.com",
            "alias:ann@example.com:email",
            "alias:email:Ann@example.com",
            "alias:email:42",
        ]
    );
}

#[test]
fn device_id_matches_an_anonymous_user() {
    let h = workspace();
    let r = import_ok(
        &h,
        AMP,
        "c",
        json!([{"device_ids": ["anon-dev", "multi-2"]}]),
        jan(1),
    );
    assert_eq!(members(&h.read(), AMP, "c"), [2, 5]);
    assert_eq!((r.matched, r.unmatched, r.refused_device_ids), (2, 0, 0));
    // Either device of a user with two finds the same user.
    let r = import_ok(
        &h,
        AMP,
        "c",
        json!([{"device_ids": ["multi-1"], "should_remove": true}]),
        jan(1),
    );
    assert_eq!(members(&h.read(), AMP, "c"), [2]);
    assert_eq!(r.removed, 1);
}

#[test]
fn device_id_of_an_identified_user_is_refused_not_matched() {
    let h = workspace();
    // User 0 was identified from the start; its device never matches.
    let r = import_ok(&h, AMP, "c", json!([{"device_ids": ["dev-ann"]}]), jan(1));
    assert!(members(&h.read(), AMP, "c").is_empty());
    assert_eq!((r.matched, r.unmatched, r.refused_device_ids), (0, 0, 1));
    assert_eq!(r.data_points, 0);
}

#[test]
fn device_id_of_a_user_identified_later_is_refused_not_matched() {
    let h = workspace();
    // While anonymous, the device matches: add user 3 to "c".
    let r = import_ok(&h, AMP, "c", json!([{"device_ids": ["later-dev"]}]), jan(1));
    assert_eq!((r.matched, r.added), (1, 1));
    assert_eq!(members(&h.read(), AMP, "c"), [3]);

    assert_eq!(
        h.identify(&UserRef::DeviceId("later-dev".into()), "u-later")
            .unwrap(),
        UserId(3)
    );

    // Now the device is refused: a remove does not remove ...
    let before = h.read().data_points(AMP, date(2));
    let r = import_ok(
        &h,
        AMP,
        "c",
        json!([{"device_ids": ["later-dev"], "should_remove": true}]),
        jan(2),
    );
    assert_eq!(
        members(&h.read(), AMP, "c"),
        [3],
        "a refused device removes nobody"
    );
    assert_eq!(
        (r.matched, r.unmatched, r.refused_device_ids, r.removed),
        (0, 0, 1, 0)
    );
    assert_eq!(
        h.read().data_points(AMP, date(2)),
        before,
        "refused ids cost nothing"
    );
    // ... and an add does not add.
    let r = import_ok(&h, AMP, "d", json!([{"device_ids": ["later-dev"]}]), jan(2));
    assert!(
        members(&h.read(), AMP, "d").is_empty(),
        "a refused device adds nobody"
    );
    assert_eq!((r.matched, r.refused_device_ids, r.added), (0, 1, 0));
    assert!(
        cohort(&h.read(), AMP, "d").sync.recent_unmatched.is_empty(),
        "a refused id is not an unmatched one"
    );
    assert_eq!(cohort(&h.read(), AMP, "c").sync.refused_total, 1);
    assert_eq!(
        users_success_body(&r),
        json!({"message": "success", "matched": 0, "unmatched": 0, "refused_device_ids": 1})
    );

    // The new external_id matches the user.
    import_ok(
        &h,
        AMP,
        "c",
        json!([{"user_ids": ["u-later"], "should_remove": true}]),
        jan(2),
    );
    assert!(members(&h.read(), AMP, "c").is_empty());
}

#[test]
fn unknown_identifiers_match_nobody_and_create_no_user() {
    let h = workspace();
    let users_before = fingerprint(&h).users;
    let r = import_ok(
        &h,
        AMP,
        "c",
        json!([
            {"user_ids": ["ghost", "u-1"], "device_ids": ["ghost-dev"],
             "aliases": [{"alias_name": "ghost@example.com", "alias_label": "email"}]},
            {"user_ids": ["ghost-2"], "should_remove": true}]),
        jan(1),
    );
    assert_eq!(h.read().users.len(), 6, "the import never creates a user");
    assert_eq!(fingerprint(&h).users, users_before);
    for r in [
        UserRef::ExternalId("ghost".into()),
        UserRef::ExternalId("ghost-2".into()),
        UserRef::DeviceId("ghost-dev".into()),
        UserRef::Alias {
            label: "email".into(),
            name: "ghost@example.com".into(),
        },
    ] {
        assert_eq!(h.read().users.lookup(&r), None, "{r}");
    }
    assert_eq!(members(&h.read(), AMP, "c"), [0]);
    assert_eq!((r.matched, r.unmatched, r.refused_device_ids), (1, 4, 0));
    assert_eq!(r.data_points, 1, "unmatched identifiers cost nothing");

    let sync = cohort(&h.read(), AMP, "c").sync.clone();
    assert_eq!(sync.unmatched_total, 4);
    assert_eq!(sync.matched_total, 1);
    // Within an object: user_ids, then aliases, then device_ids.
    assert_eq!(
        sync.recent_unmatched,
        [
            "user_id:ghost",
            "alias:email:ghost@example.com",
            "device_id:ghost-dev",
            "user_id:ghost-2",
        ]
    );
}

#[test]
fn adding_a_member_twice_is_a_no_op() {
    let h = workspace();
    let r = import_ok(
        &h,
        AMP,
        "c",
        json!([
            {"user_ids": ["u-1", "u-1"]},
            {"aliases": [{"alias_name": "ann@example.com", "alias_label": "email"}]}]),
        jan(1),
    );
    assert_eq!(members(&h.read(), AMP, "c"), [0]);
    assert_eq!((r.matched, r.added), (3, 1));

    let state = fingerprint(&h).cohorts[0].members.clone();
    let r = import_ok(&h, AMP, "c", json!([{"user_ids": ["u-1"]}]), jan(1));
    assert_eq!(fingerprint(&h).cohorts[0].members, state);
    assert_eq!((r.matched, r.added, r.removed), (1, 0, 0));
    assert_eq!(cohort(&h.read(), AMP, "c").sync.last_added, 0);
}

#[test]
fn removing_a_non_member_is_a_no_op() {
    let h = workspace();
    import_ok(&h, AMP, "c", json!([{"user_ids": ["u-1"]}]), jan(1));
    let r = import_ok(
        &h,
        AMP,
        "c",
        json!([{"user_ids": ["u-2"], "device_ids": ["anon-dev"], "should_remove": true}]),
        jan(1),
    );
    assert_eq!(members(&h.read(), AMP, "c"), [0]);
    assert_eq!((r.matched, r.removed, r.added), (2, 0, 0));

    // Removing from a cohort that did not exist creates it, empty.
    let r = import_ok(
        &h,
        AMP,
        "new",
        json!([{"user_ids": ["u-1"], "should_remove": true}]),
        jan(1),
    );
    assert!(r.cohort_created);
    assert!(members(&h.read(), AMP, "new").is_empty());
    assert_eq!(r.removed, 0);
}

#[test]
fn replaying_a_request_gives_the_same_state() {
    let requests = [
        (
            "c",
            json!([{"user_ids": ["u-1", "u-2", "ghost"], "device_ids": ["anon-dev"]}]),
        ),
        (
            "c",
            json!([
                {"user_ids": ["u-2"], "should_remove": true},
                {"aliases": [{"alias_name": "42", "alias_label": "amplitude_id"}]}]),
        ),
        (
            "d",
            json!([{"device_ids": ["multi-1", "dev-ann"], "should_remove": null}]),
        ),
    ];
    let h = workspace();
    for (id, changes) in &requests {
        import_ok(&h, AMP, id, changes.clone(), jan(1));
    }
    let once: Vec<_> = ["c", "d"].map(|c| members(&h.read(), AMP, c)).into();
    assert_eq!(once, [vec![0, 2, 4], vec![5]]);

    // Each request replayed right after itself ...
    let twice_each = workspace();
    for (id, changes) in &requests {
        import_ok(&twice_each, AMP, id, changes.clone(), jan(1));
        let after_one = members(&twice_each.read(), AMP, id);
        let r = import_ok(&twice_each, AMP, id, changes.clone(), jan(1));
        assert_eq!(members(&twice_each.read(), AMP, id), after_one);
        assert_eq!((r.added, r.removed), (0, 0), "a replay changes no member");
    }
    // ... and the whole sequence replayed: the same members.
    for (id, changes) in &requests {
        import_ok(&h, AMP, id, changes.clone(), jan(1));
    }
    for ws in [&h, &twice_each] {
        let again: Vec<_> = ["c", "d"].map(|c| members(&ws.read(), AMP, c)).into();
        assert_eq!(again, once);
    }
}

#[test]
fn changes_apply_in_order() {
    let h = workspace();
    // Add then remove the same user in one request: out.
    let r = import_ok(
        &h,
        AMP,
        "add-remove",
        json!([
            {"user_ids": ["u-1"]},
            {"aliases": [{"alias_name": "ann@example.com", "alias_label": "email"}],
             "should_remove": true}]),
        jan(1),
    );
    assert!(members(&h.read(), AMP, "add-remove").is_empty());
    assert_eq!((r.added, r.removed), (1, 1));

    // Remove then add: in.
    import_ok(
        &h,
        AMP,
        "remove-add",
        json!([{"device_ids": ["anon-dev"]}]),
        jan(1),
    );
    let r = import_ok(
        &h,
        AMP,
        "remove-add",
        json!([
            {"device_ids": ["anon-dev"], "should_remove": true},
            {"device_ids": ["anon-dev"], "should_remove": false}]),
        jan(1),
    );
    assert_eq!(members(&h.read(), AMP, "remove-add"), [2]);
    assert_eq!((r.added, r.removed), (1, 1));

    // Remove then add of a non-member: in; add, remove, add: in.
    import_ok(
        &h,
        AMP,
        "seq",
        json!([
            {"user_ids": ["u-2"], "should_remove": true},
            {"user_ids": ["u-2", "u-3"]},
            {"user_ids": ["u-3"], "should_remove": true},
            {"user_ids": ["u-3"]},
            {"user_ids": ["u-2"], "should_remove": true}]),
        jan(1),
    );
    assert_eq!(members(&h.read(), AMP, "seq"), [4]);
}

#[test]
fn every_matched_add_or_remove_is_one_data_point_per_partner_and_day() {
    let h = workspace();
    assert_eq!(h.read().data_points_by_day().count(), 0);

    // Day 1, amplitude: 3 matched adds, 2 unmatched, 1 refused.
    let r = import_ok(
        &h,
        AMP,
        "c",
        json!([{"user_ids": ["u-1", "u-2", "ghost"],
                "device_ids": ["anon-dev", "ghost-dev", "dev-ann"]}]),
        jan(1),
    );
    assert_eq!(r.data_points, 3);
    assert_eq!(h.read().data_points(AMP, date(1)), 3);
    // A matched remove, and a matched add of an existing member (a no-op
    // for membership, but a matched add all the same).
    let r = import_ok(
        &h,
        AMP,
        "c",
        json!([{"user_ids": ["u-2"], "should_remove": true}, {"user_ids": ["u-1"]}]),
        jan(1),
    );
    assert_eq!(r.data_points, 2);
    assert_eq!(h.read().data_points(AMP, date(1)), 5);
    // Only unmatched and refused ids: nothing billed.
    let r = import_ok(
        &h,
        AMP,
        "c",
        json!([{"user_ids": ["nobody"], "device_ids": ["dev-ann"]}]),
        jan(1),
    );
    assert_eq!(r.data_points, 0);
    // An empty request (a credentials test) costs nothing.
    import_ok(&h, AMP, "c", json!([]), jan(1));
    assert_eq!(h.read().data_points(AMP, date(1)), 5);

    // Day 1, mixpanel: counted apart from amplitude, even for the same
    // cohort_id.
    import_ok(
        &h,
        MIX,
        "c",
        json!([{"aliases": [{"alias_name": "42", "alias_label": "amplitude_id"}],
                "user_ids": ["u-2"]}]),
        jan(1),
    );
    // Day 2, amplitude.
    import_ok(
        &h,
        AMP,
        "other",
        json!([{"device_ids": ["multi-1"]}]),
        jan(2),
    );
    // The day is the UTC day of `now`: one second before and at midnight.
    let before_midnight = jan(2)
        .date_naive()
        .and_hms_opt(23, 59, 59)
        .unwrap()
        .and_utc();
    let midnight = jan(3).date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    import_ok(
        &h,
        AMP,
        "other",
        json!([{"user_ids": ["u-3"]}]),
        before_midnight,
    );
    import_ok(
        &h,
        AMP,
        "other",
        json!([{"user_ids": ["u-3", "u-2"]}]),
        midnight,
    );

    assert_eq!(h.read().data_points(AMP, date(1)), 5);
    assert_eq!(h.read().data_points(MIX, date(1)), 2);
    assert_eq!(h.read().data_points(AMP, date(2)), 2);
    assert_eq!(h.read().data_points(MIX, date(2)), 0);
    assert_eq!(h.read().data_points(AMP, date(3)), 2);
    assert_eq!(h.read().data_points(Partner::Heap, date(1)), 0);
    assert_eq!(
        h.read().data_points_by_day().collect::<Vec<_>>(),
        [
            (AMP, date(1), 5),
            (AMP, date(2), 2),
            (AMP, date(3), 2),
            (MIX, date(1), 2),
        ]
    );
}

/// Matching a few identifiers at a time ([`segq::cohorts::Resolving`],
/// as a partner import does under short holds of the read lock) gives
/// exactly what matching them at once gives: the same operations in the
/// same order, the same counts and the same unmatched sample.
#[test]
fn matching_in_steps_is_matching_at_once() {
    use rand::{Rng, SeedableRng};
    use segq::cohorts::{resolve, Alias, CohortChange, Resolving};
    use segq::users::UserRegistry;

    let mut reg = UserRegistry::new(3);
    for i in 0..200 {
        let ext = format!("u{i}");
        let dev = format!("d{i}");
        let email = format!("{i}@example.com");
        // A third anonymous (their devices match), the rest identified
        // (their devices are refused).
        let external = (i % 3 != 0).then_some(ext.as_str());
        reg.create(new_user(external, &[&dev], &[("email", &email)]))
            .unwrap();
    }
    let long = "x".repeat(2000);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for round in 0..200 {
        let mut pick = |known: &str, unknown: &str| -> String {
            match rng.gen_range(0..10) {
                0 => long.clone(),
                1..=3 => format!("{unknown}{}", rng.gen_range(0..10_000)),
                _ => format!("{known}{}", rng.gen_range(0..200)),
            }
        };
        let objects = 1 + round % 4;
        let mut changes = Vec::new();
        for o in 0..objects {
            let n = (round * 7 + o * 13) % 90;
            changes.push(CohortChange {
                user_ids: (0..n).map(|_| pick("u", "nobody-")).collect(),
                device_ids: (0..n / 2).map(|_| pick("d", "no-device-")).collect(),
                aliases: (0..n / 3)
                    .map(|_| Alias {
                        alias_label: "email".into(),
                        alias_name: format!("{}@example.com", pick("", "x")),
                    })
                    .collect(),
                should_remove: o % 2 == 1,
            });
        }
        let whole = resolve(&reg, &changes);
        for step in [1, 2, 3, 5, 64, 1000] {
            let mut r = Resolving::new(&changes);
            let mut steps = 1;
            while !r.step(&reg, step) {
                steps += 1;
            }
            assert_eq!(r.finish(), whole, "round {round}, {step} at a time");
            let total: usize = changes.iter().map(CohortChange::identifiers).sum();
            assert!(
                steps <= total / step + 2,
                "{steps} steps of {step} for {total}"
            );
        }
    }
}
