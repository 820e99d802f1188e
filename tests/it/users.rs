//! The user registry: dense ids, identifiers, conflicts, random buckets.

use segq::ids::BUCKETS;
use segq::users::{DeviceMatch, MemberId, NewUser, Upserted, UserRecord, UserRegistry};
use segq::{Error, Partner, UserId, UserRef};

use crate::support::new_user;

fn ext(s: &str) -> UserRef {
    UserRef::ExternalId(s.to_string())
}

fn dev(s: &str) -> UserRef {
    UserRef::DeviceId(s.to_string())
}

fn alias(label: &str, name: &str) -> UserRef {
    UserRef::Alias {
        label: label.to_string(),
        name: name.to_string(),
    }
}

/// Every record of the registry, in id order.
fn records(reg: &UserRegistry) -> Vec<UserRecord> {
    (0..reg.len())
        .map(|u| reg.get(UserId(u)).expect("ids are dense").clone())
        .collect()
}

/// A registry with three users:
/// - 0: `ann`, device `d-ann`, alias (email, ann@example.com)
/// - 1: anonymous, device `d-anon`
/// - 2: `bob`, alias (amplitude_id, 42)
fn three() -> UserRegistry {
    let mut reg = UserRegistry::new(1);
    let ann = reg
        .create(new_user(
            Some("ann"),
            &["d-ann"],
            &[("email", "ann@example.com")],
        ))
        .unwrap();
    let anon = reg.create(new_user(None, &["d-anon"], &[])).unwrap();
    let bob = reg
        .create(new_user(Some("bob"), &[], &[("amplitude_id", "42")]))
        .unwrap();
    assert_eq!((ann, anon, bob), (UserId(0), UserId(1), UserId(2)));
    reg
}

/// Asserts that a failed call left the registry exactly as it was, and that
/// the identifiers the call tried to add are still unknown.
fn assert_unchanged(reg: &UserRegistry, before: &[UserRecord], not_added: &[UserRef]) {
    assert_eq!(records(reg), before, "a refused change must change nothing");
    assert_eq!(reg.len() as usize, before.len());
    for r in not_added {
        assert_eq!(reg.lookup(r), None, "{r} must not have been added");
    }
    // The original identifiers still find their holders.
    assert_eq!(reg.lookup(&ext("ann")), Some(UserId(0)));
    assert_eq!(reg.lookup(&dev("d-ann")), Some(UserId(0)));
    assert_eq!(
        reg.lookup(&alias("email", "ann@example.com")),
        Some(UserId(0))
    );
    assert_eq!(reg.lookup(&dev("d-anon")), Some(UserId(1)));
    assert_eq!(reg.lookup(&ext("bob")), Some(UserId(2)));
    assert_eq!(reg.lookup(&alias("amplitude_id", "42")), Some(UserId(2)));
}

#[test]
fn ids_are_dense_in_creation_order_from_zero() {
    let mut reg = UserRegistry::new(0);
    assert!(reg.is_empty());
    assert_eq!(reg.len(), 0);
    assert_eq!(reg.get(UserId(0)), None);
    for i in 0..10u32 {
        let new = if i % 3 == 0 {
            new_user(None, &[&format!("d{i}")], &[])
        } else {
            new_user(Some(&format!("u{i}")), &[], &[])
        };
        assert_eq!(reg.create(new).unwrap(), UserId(i));
        assert_eq!(reg.len(), i + 1);
    }
    assert!(!reg.is_empty());
    assert_eq!(reg.get(UserId(10)), None);
    assert_eq!(reg.bucket(UserId(10)), None);
    assert_eq!(reg.lookup(&ext("u4")), Some(UserId(4)));
    assert_eq!(reg.lookup(&dev("d9")), Some(UserId(9)));
}

#[test]
fn create_stores_every_identifier_and_lookup_finds_each_kind() {
    let mut reg = UserRegistry::new(0);
    let u = reg
        .create(new_user(
            Some("u-1"),
            &["dev-a", "dev-b"],
            &[("email", "a@example.com"), ("amplitude_id", "7")],
        ))
        .unwrap();
    let rec = reg.get(u).unwrap();
    assert_eq!(rec.external_id.as_deref(), Some("u-1"));
    assert!(!rec.is_anonymous());
    let devices: Vec<&str> = rec.devices.iter().map(|d| &**d).collect();
    assert_eq!(devices, ["dev-a", "dev-b"]);
    let aliases: Vec<(&str, &str)> = rec.aliases.iter().map(|(l, n)| (&**l, &**n)).collect();
    assert_eq!(aliases, [("email", "a@example.com"), ("amplitude_id", "7")]);

    assert_eq!(reg.lookup(&ext("u-1")), Some(u));
    assert_eq!(reg.lookup(&dev("dev-a")), Some(u));
    assert_eq!(reg.lookup(&dev("dev-b")), Some(u));
    assert_eq!(reg.lookup(&alias("email", "a@example.com")), Some(u));
    assert_eq!(reg.lookup(&alias("amplitude_id", "7")), Some(u));
    assert_eq!(reg.match_external_id("u-1"), Some(u));
    assert_eq!(reg.match_alias("email", "a@example.com"), Some(u));

    // Each kind is its own namespace, and an alias is the exact pair.
    assert_eq!(reg.lookup(&ext("dev-a")), None);
    assert_eq!(reg.lookup(&dev("u-1")), None);
    assert_eq!(reg.lookup(&alias("email", "7")), None);
    assert_eq!(reg.lookup(&alias("a@example.com", "email")), None);
    assert_eq!(reg.lookup(&alias("EMAIL", "a@example.com")), None);
    assert_eq!(reg.lookup(&ext("U-1")), None);
}

#[test]
fn alias_pairs_that_concatenate_alike_are_distinct() {
    let mut reg = UserRegistry::new(0);
    let a = reg.create(new_user(None, &[], &[("ab", "c")])).unwrap();
    let b = reg.create(new_user(None, &[], &[("a", "bc")])).unwrap();
    assert_ne!(a, b);
    assert_eq!(reg.lookup(&alias("ab", "c")), Some(a));
    assert_eq!(reg.lookup(&alias("a", "bc")), Some(b));
    assert_eq!(reg.lookup(&alias("abc", "")), None);
}

#[test]
fn an_anonymous_user_has_no_external_id() {
    let reg = three();
    let anon = reg.get(UserId(1)).unwrap();
    assert!(anon.is_anonymous());
    assert_eq!(anon.external_id, None);
    assert_eq!(reg.display_id(UserId(1)), MemberId::Anonymous(UserId(1)));
    assert_eq!(reg.display_id(UserId(1)).to_string(), "user_id:1");
    assert_eq!(reg.display_id(UserId(0)), MemberId::External("ann".into()));
    assert_eq!(reg.display_id(UserId(0)).to_string(), "ann");
}

#[test]
fn upsert_creates_a_new_user_then_adds_identifiers_to_it() {
    let mut reg = UserRegistry::new(3);
    let first = reg
        .upsert(new_user(Some("u-1"), &["dev-a"], &[("email", "a@x")]))
        .unwrap();
    assert_eq!(
        first,
        Upserted {
            user: UserId(0),
            created: true
        }
    );
    let bucket = reg.bucket(UserId(0)).unwrap();

    // Same external_id: adds what is new, keeps what it has, creates nobody.
    let again = reg
        .upsert(NewUser {
            external_id: Some("u-1".into()),
            devices: vec!["dev-a".into(), "dev-b".into()],
            aliases: vec![
                ("email".into(), "a@x".into()),
                ("amplitude_id".into(), "9".into()),
            ],
            bucket: Some((bucket + 1) % BUCKETS),
        })
        .unwrap();
    assert_eq!(
        again,
        Upserted {
            user: UserId(0),
            created: false
        }
    );
    assert_eq!(reg.len(), 1);
    let rec = reg.get(UserId(0)).unwrap();
    let devices: Vec<&str> = rec.devices.iter().map(|d| &**d).collect();
    assert_eq!(devices, ["dev-a", "dev-b"], "no device is held twice");
    let aliases: Vec<(&str, &str)> = rec.aliases.iter().map(|(l, n)| (&**l, &**n)).collect();
    assert_eq!(aliases, [("email", "a@x"), ("amplitude_id", "9")]);
    assert_eq!(rec.bucket, bucket, "the bucket is fixed at creation");
    assert_eq!(reg.lookup(&dev("dev-b")), Some(UserId(0)));
    assert_eq!(reg.lookup(&alias("amplitude_id", "9")), Some(UserId(0)));

    // Upserting exactly what the user holds is a no-op.
    let before = records(&reg);
    let same = reg
        .upsert(new_user(Some("u-1"), &["dev-b"], &[("email", "a@x")]))
        .unwrap();
    assert!(!same.created);
    assert_eq!(records(&reg), before);

    // Without an external_id, upsert always creates.
    let anon = reg.upsert(new_user(None, &["dev-c"], &[])).unwrap();
    assert_eq!(
        anon,
        Upserted {
            user: UserId(1),
            created: true
        }
    );
}

#[test]
fn add_alias_and_add_device_are_idempotent_for_the_same_user() {
    let mut reg = three();
    reg.add_alias(UserId(1), "email", "anon@example.com")
        .unwrap();
    reg.add_device(UserId(2), "d-bob").unwrap();
    let before = records(&reg);
    // Again, and also identifiers the user held from creation.
    reg.add_alias(UserId(1), "email", "anon@example.com")
        .unwrap();
    reg.add_alias(UserId(0), "email", "ann@example.com")
        .unwrap();
    reg.add_device(UserId(2), "d-bob").unwrap();
    reg.add_device(UserId(0), "d-ann").unwrap();
    assert_eq!(records(&reg), before);
    assert_eq!(
        reg.lookup(&alias("email", "anon@example.com")),
        Some(UserId(1))
    );
    assert_eq!(reg.lookup(&dev("d-bob")), Some(UserId(2)));
    assert_eq!(reg.get(UserId(2)).unwrap().devices.len(), 1);
    // An anonymous user with an alias stays anonymous.
    assert!(reg.get(UserId(1)).unwrap().is_anonymous());
}

#[test]
fn identify_gives_an_anonymous_user_its_external_id() {
    let mut reg = three();
    assert_eq!(reg.match_device("d-anon"), DeviceMatch::Matched(UserId(1)));
    let bucket = reg.bucket(UserId(1));
    reg.identify(UserId(1), "carol").unwrap();
    let rec = reg.get(UserId(1)).unwrap();
    assert_eq!(rec.external_id.as_deref(), Some("carol"));
    assert!(!rec.is_anonymous());
    assert_eq!(
        reg.bucket(UserId(1)),
        bucket,
        "the bucket is fixed at creation"
    );
    assert_eq!(reg.lookup(&ext("carol")), Some(UserId(1)));
    assert_eq!(reg.match_external_id("carol"), Some(UserId(1)));
    // The device still finds the user by lookup, but no longer matches it
    // under the import rules.
    assert_eq!(reg.lookup(&dev("d-anon")), Some(UserId(1)));
    assert_eq!(reg.match_device("d-anon"), DeviceMatch::Refused(UserId(1)));
    assert_eq!(reg.len(), 3);

    // Identifying again with the same id is a no-op.
    let before = records(&reg);
    reg.identify(UserId(1), "carol").unwrap();
    assert_eq!(records(&reg), before);
}

#[test]
fn identifying_an_identified_user_with_a_different_id_fails() {
    let mut reg = three();
    let before = records(&reg);
    let err = reg.identify(UserId(0), "ann-2").unwrap_err();
    match err {
        Error::AlreadyIdentified {
            user,
            current,
            requested,
        } => {
            assert_eq!(user, UserId(0));
            assert_eq!(current, "ann");
            assert_eq!(requested, "ann-2");
        }
        other => panic!("expected AlreadyIdentified, got {other:?}"),
    }
    assert_unchanged(&reg, &before, &[ext("ann-2")]);
}

#[test]
fn create_claiming_a_taken_identifier_fails_and_changes_nothing() {
    let mut reg = three();
    let before = records(&reg);
    let fresh = [ext("new"), dev("fresh"), alias("email", "fresh@x")];

    let err = reg
        .create(new_user(Some("ann"), &["fresh"], &[("email", "fresh@x")]))
        .unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateExternalId { external_id, holder }
            if external_id == "ann" && *holder == UserId(0)),
        "{err:?}"
    );
    assert_unchanged(&reg, &before, &fresh[1..]);

    // The taken identifier comes after fresh ones: none of them is added.
    let err = reg
        .create(new_user(
            Some("new"),
            &["fresh", "d-anon"],
            &[("email", "fresh@x")],
        ))
        .unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateDevice { device_id, holder }
            if device_id == "d-anon" && *holder == UserId(1)),
        "{err:?}"
    );
    assert_unchanged(&reg, &before, &fresh);

    let err = reg
        .create(new_user(
            Some("new"),
            &["fresh"],
            &[("email", "fresh@x"), ("amplitude_id", "42")],
        ))
        .unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateAlias { label, name, holder }
            if label == "amplitude_id" && name == "42" && *holder == UserId(2)),
        "{err:?}"
    );
    assert_unchanged(&reg, &before, &fresh);
    assert!(err.to_string().contains("already held by user 2"), "{err}");

    // The registry still works after refusals: the next id is 3.
    assert_eq!(
        reg.create(new_user(Some("new"), &[], &[])).unwrap(),
        UserId(3)
    );
}

#[test]
fn upsert_claiming_a_taken_identifier_fails_and_changes_nothing() {
    let mut reg = three();
    let before = records(&reg);

    // Existing user (bob) claiming ann's device, after a fresh one.
    let err = reg
        .upsert(new_user(Some("bob"), &["fresh", "d-ann"], &[]))
        .unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateDevice { device_id, holder }
            if device_id == "d-ann" && *holder == UserId(0)),
        "{err:?}"
    );
    assert_unchanged(&reg, &before, &[dev("fresh")]);

    // Existing user (bob) claiming ann's alias.
    let err = reg
        .upsert(new_user(
            Some("bob"),
            &["fresh"],
            &[("email", "fresh@x"), ("email", "ann@example.com")],
        ))
        .unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateAlias { label, name, holder }
            if label == "email" && name == "ann@example.com" && *holder == UserId(0)),
        "{err:?}"
    );
    assert_unchanged(&reg, &before, &[dev("fresh"), alias("email", "fresh@x")]);

    // A new user claiming bob's alias.
    let err = reg
        .upsert(new_user(Some("new"), &["fresh"], &[("amplitude_id", "42")]))
        .unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateAlias { holder, .. } if *holder == UserId(2)),
        "{err:?}"
    );
    assert_unchanged(&reg, &before, &[ext("new"), dev("fresh")]);

    // A new anonymous user claiming the anonymous user's device.
    let err = reg.upsert(new_user(None, &["d-anon"], &[])).unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateDevice { holder, .. } if *holder == UserId(1)),
        "{err:?}"
    );
    assert_unchanged(&reg, &before, &[]);
}

#[test]
fn add_alias_claiming_a_taken_alias_fails_and_changes_nothing() {
    let mut reg = three();
    let before = records(&reg);
    let err = reg
        .add_alias(UserId(2), "email", "ann@example.com")
        .unwrap_err();
    match &err {
        Error::DuplicateAlias {
            label,
            name,
            holder,
        } => {
            assert_eq!(
                (label.as_str(), name.as_str()),
                ("email", "ann@example.com")
            );
            assert_eq!(*holder, UserId(0));
        }
        other => panic!("expected DuplicateAlias, got {other:?}"),
    }
    assert_unchanged(&reg, &before, &[]);
    // Same name under another label is a different alias, and free.
    reg.add_alias(UserId(2), "work_email", "ann@example.com")
        .unwrap();
    assert_eq!(
        reg.lookup(&alias("work_email", "ann@example.com")),
        Some(UserId(2))
    );
}

#[test]
fn add_device_claiming_a_taken_device_fails_and_changes_nothing() {
    let mut reg = three();
    let before = records(&reg);
    let err = reg.add_device(UserId(0), "d-anon").unwrap_err();
    match &err {
        Error::DuplicateDevice { device_id, holder } => {
            assert_eq!(device_id, "d-anon");
            assert_eq!(*holder, UserId(1));
        }
        other => panic!("expected DuplicateDevice, got {other:?}"),
    }
    assert_unchanged(&reg, &before, &[]);
    assert_eq!(reg.match_device("d-anon"), DeviceMatch::Matched(UserId(1)));
}

#[test]
fn identify_claiming_a_taken_external_id_fails_and_changes_nothing() {
    let mut reg = three();
    let before = records(&reg);
    let err = reg.identify(UserId(1), "bob").unwrap_err();
    match &err {
        Error::DuplicateExternalId {
            external_id,
            holder,
        } => {
            assert_eq!(external_id, "bob");
            assert_eq!(*holder, UserId(2));
        }
        other => panic!("expected DuplicateExternalId, got {other:?}"),
    }
    assert_unchanged(&reg, &before, &[]);
    assert!(reg.get(UserId(1)).unwrap().is_anonymous());
    assert_eq!(reg.match_device("d-anon"), DeviceMatch::Matched(UserId(1)));
}

#[test]
fn an_identifier_named_twice_in_one_new_user_is_refused() {
    let mut reg = three();
    let before = records(&reg);

    let err = reg
        .create(new_user(Some("new"), &["x", "y", "x"], &[]))
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidIdentifier { kind: "device_id", reason } if reason.contains("twice")),
        "{err:?}"
    );
    assert_unchanged(&reg, &before, &[ext("new"), dev("x"), dev("y")]);

    let err = reg
        .create(new_user(
            Some("new"),
            &[],
            &[("email", "n@x"), ("email", "n@x")],
        ))
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidIdentifier { kind: "alias", reason } if reason.contains("twice")),
        "{err:?}"
    );
    assert_unchanged(&reg, &before, &[ext("new"), alias("email", "n@x")]);

    // The same through upsert of an existing user.
    let err = reg
        .upsert(new_user(Some("bob"), &["x", "x"], &[]))
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::InvalidIdentifier {
                kind: "device_id",
                ..
            }
        ),
        "{err:?}"
    );
    assert_unchanged(&reg, &before, &[dev("x")]);

    // The same name under two labels is two aliases, not one named twice.
    let u = reg
        .create(new_user(
            Some("new"),
            &[],
            &[("email", "n@x"), ("work_email", "n@x")],
        ))
        .unwrap();
    assert_eq!(reg.lookup(&alias("email", "n@x")), Some(u));
    assert_eq!(reg.lookup(&alias("work_email", "n@x")), Some(u));
}

#[test]
fn empty_identifiers_are_refused() {
    let mut reg = three();
    let before = records(&reg);
    let kind_of = |e: Error| match e {
        Error::InvalidIdentifier { kind, .. } => kind,
        other => panic!("expected InvalidIdentifier, got {other:?}"),
    };

    let cases: [(NewUser, &str); 4] = [
        (new_user(Some(""), &["fresh"], &[]), "external_id"),
        (new_user(Some("new"), &["fresh", ""], &[]), "device_id"),
        (new_user(Some("new"), &[], &[("", "x@y")]), "alias_label"),
        (new_user(Some("new"), &[], &[("email", "")]), "alias_name"),
    ];
    for (new, kind) in cases {
        assert_eq!(kind_of(reg.create(new.clone()).unwrap_err()), kind);
        assert_eq!(kind_of(reg.upsert(new).unwrap_err()), kind);
        assert_unchanged(&reg, &before, &[ext("new"), dev("fresh")]);
    }
    assert_eq!(
        kind_of(reg.add_alias(UserId(0), "", "x").unwrap_err()),
        "alias_label"
    );
    assert_eq!(
        kind_of(reg.add_alias(UserId(0), "email", "").unwrap_err()),
        "alias_name"
    );
    assert_eq!(
        kind_of(reg.add_device(UserId(0), "").unwrap_err()),
        "device_id"
    );
    assert_eq!(
        kind_of(reg.identify(UserId(1), "").unwrap_err()),
        "external_id"
    );
    assert_unchanged(&reg, &before, &[]);
}

#[test]
fn changes_to_an_unknown_user_are_refused() {
    let mut reg = three();
    let before = records(&reg);
    for err in [
        reg.add_alias(UserId(3), "email", "x@y").unwrap_err(),
        reg.add_device(UserId(3), "d-x").unwrap_err(),
        reg.identify(UserId(3), "x").unwrap_err(),
    ] {
        assert!(matches!(err, Error::UnknownUser(_)), "{err:?}");
    }
    assert_unchanged(
        &reg,
        &before,
        &[alias("email", "x@y"), dev("d-x"), ext("x")],
    );
}

#[test]
fn an_explicit_bucket_is_kept_and_must_be_below_10000() {
    let mut reg = UserRegistry::new(0);
    let mut new = new_user(Some("a"), &[], &[]);
    new.bucket = Some(9_999);
    let a = reg.create(new).unwrap();
    assert_eq!(reg.bucket(a), Some(9_999));
    let mut new = new_user(Some("b"), &[], &[]);
    new.bucket = Some(0);
    let b = reg.create(new).unwrap();
    assert_eq!(reg.bucket(b), Some(0));

    let mut new = new_user(Some("c"), &[], &[]);
    new.bucket = Some(BUCKETS);
    let err = reg.create(new).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert_eq!(reg.len(), 2);
    assert_eq!(reg.lookup(&ext("c")), None);
}

#[test]
fn random_buckets_are_in_range_fixed_at_creation_and_roughly_uniform() {
    const N: u32 = 20_000;
    let mut reg = UserRegistry::new(2024);
    for u in 0..N {
        let new = if u % 5 == 0 {
            new_user(None, &[&format!("d{u}")], &[])
        } else {
            new_user(Some(&format!("u{u}")), &[&format!("d{u}")], &[])
        };
        reg.create(new).unwrap();
    }
    let buckets: Vec<u16> = reg.buckets().collect();
    assert_eq!(buckets.len(), N as usize);
    assert!(buckets.iter().all(|&b| b < BUCKETS));
    for (u, &b) in buckets.iter().enumerate() {
        assert_eq!(reg.bucket(UserId(u as u32)), Some(b));
    }

    // Each decile holds 10% +- 1.5% of the users (deterministic for the seed).
    let mut deciles = [0u32; 10];
    for &b in &buckets {
        deciles[usize::from(b / 1_000)] += 1;
    }
    for (i, &n) in deciles.iter().enumerate() {
        let share = f64::from(n) / f64::from(N);
        assert!(
            (0.085..=0.115).contains(&share),
            "decile {i} holds {share:.4} of users: {deciles:?}"
        );
    }
    // Both ends are reachable in principle; at least the extremes are near.
    assert!(buckets.iter().any(|&b| b < 10));
    assert!(buckets.iter().any(|&b| b >= 9_990));

    // Identifier changes never move a bucket.
    for u in (0..N).step_by(5) {
        reg.identify(UserId(u), &format!("late{u}")).unwrap();
    }
    for u in (1..N).step_by(7) {
        reg.add_alias(UserId(u), "email", &format!("{u}@x"))
            .unwrap();
        reg.add_device(UserId(u), &format!("extra{u}")).unwrap();
    }
    reg.upsert(new_user(Some("u1"), &["another"], &[])).unwrap();
    assert_eq!(reg.buckets().collect::<Vec<_>>(), buckets);

    // The same seed draws the same buckets; another seed, others.
    let draw = |seed: u64| {
        let mut r = UserRegistry::new(seed);
        for u in 0..100 {
            r.create(new_user(Some(&format!("u{u}")), &[], &[]))
                .unwrap();
        }
        r.buckets().collect::<Vec<_>>()
    };
    assert_eq!(draw(2024), buckets[..100]);
    assert_ne!(draw(2025), buckets[..100]);
}

#[test]
fn match_device_follows_the_import_rules() {
    let mut reg = three();
    assert_eq!(reg.match_device("d-anon"), DeviceMatch::Matched(UserId(1)));
    assert_eq!(reg.match_device("d-ann"), DeviceMatch::Refused(UserId(0)));
    assert_eq!(reg.match_device("nobody"), DeviceMatch::Unknown);
    reg.identify(UserId(1), "late").unwrap();
    assert_eq!(reg.match_device("d-anon"), DeviceMatch::Refused(UserId(1)));
}

#[test]
fn user_refs_parse_from_the_command_line_form() {
    assert_eq!(UserRef::parse_cli("u-1").unwrap(), ext("u-1"));
    assert_eq!(UserRef::parse_cli("external_id:u-1").unwrap(), ext("u-1"));
    assert_eq!(UserRef::parse_cli("device_id:d-1").unwrap(), dev("d-1"));
    assert_eq!(
        UserRef::parse_cli("alias:email:ann@example.com").unwrap(),
        alias("email", "ann@example.com")
    );
    // Only the first colon after the label splits.
    assert_eq!(
        UserRef::parse_cli("alias:url:http://x").unwrap(),
        alias("url", "http://x")
    );
    assert!(matches!(
        UserRef::parse_cli("alias:nolabel").map_err(Error::from),
        Err(Error::InvalidIdentifier { kind: "alias", .. })
    ));
    for r in [ext("u-1"), dev("d-1"), alias("email", "a@b")] {
        assert_eq!(UserRef::parse_cli(&r.to_string()).unwrap(), r);
    }
}

/// `ids` is below `error`: its parse failures are types of its own,
/// converted into [`Error`] where they meet it.
#[test]
fn ids_do_not_import_the_error_type() {
    let ids = crate::golden::code_of("src/ids.rs");
    assert!(!ids.contains("crate::error"), "src/ids.rs imports error");
    assert!(matches!(
        "Amplitude".parse::<Partner>().map_err(Error::from),
        Err(Error::UnknownPartner { found }) if found == "Amplitude"
    ));
}

/// The stamp a partner import's matching ahead of its write is checked
/// against: every change of a user or an identifier gives a new one,
/// reads and clones do not, and registries made apart never share one.
#[test]
fn the_stamp_changes_with_every_change_of_a_user_or_an_identifier() {
    let mut reg = three();
    assert_ne!(reg.stamp(), three().stamp());
    assert_ne!(UserRegistry::new(1).stamp(), UserRegistry::new(1).stamp());
    let copy = reg.clone();
    let first = reg.stamp();
    assert_eq!(copy.stamp(), first);
    let _ = reg.lookup(&ext("ann"));
    let _ = reg.match_external_id("bob");
    let _ = reg.match_device("d-anon");
    let _ = reg.match_alias("email", "ann@example.com");
    assert_eq!(reg.stamp(), first, "reads keep the stamp");

    let mut seen = vec![first];
    let mut changed = |reg: &UserRegistry, what: &str| {
        assert!(!seen.contains(&reg.stamp()), "{what} kept an old stamp");
        seen.push(reg.stamp());
    };
    reg.create(new_user(Some("cat"), &[], &[])).unwrap();
    changed(&reg, "create");
    reg.upsert(new_user(Some("cat"), &["d-cat"], &[])).unwrap();
    changed(&reg, "upsert");
    reg.add_alias(UserId(1), "email", "anon@example.com")
        .unwrap();
    changed(&reg, "add_alias");
    reg.add_device(UserId(2), "d-bob").unwrap();
    changed(&reg, "add_device");
    reg.identify(UserId(1), "anon").unwrap();
    changed(&reg, "identify");
    reg.rename_external_id(UserId(0), "ann-2").unwrap();
    changed(&reg, "rename_external_id");
    reg.move_identifiers(UserId(2), UserId(0)).unwrap();
    changed(&reg, "move_identifiers");
    reg.delete(UserId(2)).unwrap();
    changed(&reg, "delete");
    assert_eq!(copy.stamp(), first, "the clone keeps its own");
}
