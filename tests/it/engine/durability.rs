//! Durability and replay: every acknowledged write survives a restart,
//! refused and no-op requests log nothing, a write too large for the log is
//! refused whole.

use super::*;

/// The secrets of the scenario below.
struct Secrets {
    invalidated: NewKey,
    amp: NewKey,
    mix: NewKey,
    beta: NewKey,
}

/// Writes a bit of everything through the engine and the handles, checking
/// each answer on the way.
fn populate(engine: &Engine) -> Secrets {
    assert!(engine.create_workspace("acme").unwrap());
    assert!(engine.create_workspace("beta").unwrap());
    let invalidated = engine.create_key("acme", Partner::Amplitude).unwrap();
    let amp = engine.create_key("acme", Partner::Amplitude).unwrap();
    engine.invalidate_key("acme", &invalidated.id).unwrap();
    let mix = engine.create_key("acme", Partner::Mixpanel).unwrap();
    engine.enable_partner("acme", Partner::Heap).unwrap();
    let beta = engine.create_key("beta", Partner::Amplitude).unwrap();
    let h = handle(engine, "acme");

    // Users, one write at a time.
    let u1 = h
        .upsert_user(new_user(
            Some("u-1"),
            &["d-1"],
            &[("email", "ann@example.com")],
        ))
        .unwrap();
    assert!(u1.created);
    assert!(
        h.upsert_user(new_user(Some("u-2"), &[], &[]))
            .unwrap()
            .created
    );
    assert!(
        h.upsert_user(new_user(Some("u-3"), &[], &[]))
            .unwrap()
            .created
    );
    let anon = h.upsert_user(new_user(None, &["d-anon"], &[])).unwrap();
    assert!(anon.created);
    let later = h.upsert_user(new_user(None, &["d-later"], &[])).unwrap();
    // An existing user gains identifiers.
    let again = h
        .upsert_user(new_user(
            Some("u-1"),
            &["d-1", "d-1b"],
            &[("email", "ann@example.com"), ("amplitude_id", "42")],
        ))
        .unwrap();
    assert_eq!((again.user, again.created), (u1.user, false));
    assert_eq!(
        h.add_alias(&ext("u-2"), "email", "bob@example.com")
            .unwrap(),
        UserId(1)
    );
    assert_eq!(h.add_device(&ext("u-3"), "d-3").unwrap(), UserId(2));
    // An anonymous user is identified: its device no longer matches.
    assert_eq!(
        h.identify(&UserRef::DeviceId("d-later".into()), "u-later")
            .unwrap(),
        later.user
    );
    // A user with an explicit bucket.
    let fixed = NewUser {
        bucket: Some(1234),
        ..new_user(Some("u-fixed"), &[], &[])
    };
    h.upsert_user(fixed).unwrap();

    // A bulk load where some users fail: reported by index, others applied.
    let report = h
        .upsert_users(vec![
            new_user(Some("u-10"), &["d-10"], &[]),
            new_user(Some("u-1"), &[], &[("crm", "c-1")]),
            new_user(Some("u-11"), &["d-1"], &[]), // device held by u-1
            new_user(None, &["d-20"], &[("email", "anon20@example.com")]),
            new_user(Some(""), &[], &[]), // empty external_id
            new_user(Some("u-12"), &[], &[("email", "ann@example.com")]), // alias held by u-1
            new_user(Some("u-10"), &["d-10b"], &[]), // the first of this batch, updated
            new_user(Some("u-13"), &["d-13", "d-13"], &[]), // a device named twice
        ])
        .unwrap();
    assert_eq!((report.created, report.updated), (2, 2), "{report:?}");
    let failed: Vec<usize> = report.failed.iter().map(|(i, _)| *i).collect();
    assert_eq!(failed, vec![2, 4, 5, 7], "{report:?}");
    assert!(report.failed[0].1.contains("d-1"), "{report:?}");
    {
        let ws = h.read();
        assert_eq!(ws.users.match_external_id("u-11"), None);
        assert_eq!(ws.users.match_external_id("u-12"), None);
        assert_eq!(ws.users.match_external_id("u-13"), None);
        let u10 = ws.users.match_external_id("u-10").unwrap();
        assert_eq!(
            ws.users.get(u10).unwrap().devices,
            vec!["d-10".into(), "d-10b".into()] as Vec<Box<str>>
        );
        assert_eq!(ws.users.match_alias("crm", "c-1"), Some(u1.user));
    }

    // Cohorts: created, then renamed (the creation time stays).
    let create = cohort_request(
        engine,
        Partner::Amplitude,
        &amp.key,
        "c-9f1e",
        "Power users",
        "2021-01-21T19:20:30+05:00",
    );
    assert!(h.upsert_cohort(Partner::Amplitude, &create).unwrap());
    let rename = cohort_request(
        engine,
        Partner::Amplitude,
        &amp.key,
        "c-9f1e",
        "Power users (30d)",
        "2022-02-02T00:00:00Z",
    );
    assert!(!h.upsert_cohort(Partner::Amplitude, &rename).unwrap());

    // The PROTOCOL.md example, then the same request replayed.
    let example = json!({
        "cohort_id": "c-9f1e",
        "cohort_changes": [
            {"user_ids": ["u-1", "u-2"], "device_ids": [],
             "aliases": [{"alias_name": "ann@example.com", "alias_label": "email"}]},
            {"user_ids": ["u-3"], "should_remove": true}]});
    let r = import(
        engine,
        Partner::Amplitude,
        &amp.key,
        example.clone(),
        march(1),
    );
    assert_eq!(
        (
            r.matched,
            r.unmatched,
            r.refused_device_ids,
            r.added,
            r.removed
        ),
        (4, 0, 0, 2, 0)
    );
    assert_eq!(r.data_points, 4);
    assert!(!r.cohort_created);
    let r = import(engine, Partner::Amplitude, &amp.key, example, march(1));
    assert_eq!((r.matched, r.added, r.removed), (4, 0, 0), "a replay");
    let acme_members = |c: &str| members(engine, "acme", Partner::Amplitude, c);
    assert_eq!(acme_members("c-9f1e"), vec![0, 1]);

    // Unmatched ids, a matched anonymous device, a refused device, a
    // removal, on another day; the cohort is created by the request.
    let r = import(
        engine,
        Partner::Amplitude,
        &amp.key,
        json!({"cohort_id": "c-new", "cohort_changes": [
            {"user_ids": ["u-3", "nobody"], "device_ids": ["d-anon", "d-later", "d-none"],
             "aliases": [{"alias_name": "x@y", "alias_label": "email"}]},
            {"user_ids": ["u-3", "u-10"], "should_remove": true, "device_ids": null}]}),
        march(2),
    );
    assert_eq!(
        (
            r.matched,
            r.unmatched,
            r.refused_device_ids,
            r.added,
            r.removed
        ),
        (4, 3, 1, 2, 1),
        "{r:?}"
    );
    assert!(r.cohort_created);
    assert_eq!(acme_members("c-new"), vec![anon.user.0]);
    // The credentials test: an empty request changes nothing.
    let r = import(
        engine,
        Partner::Amplitude,
        &amp.key,
        json!({"cohort_id": "c-test", "cohort_changes": []}),
        march(2),
    );
    assert_eq!(r, Default::default());
    // The partner names the cohort the request created.
    let name_it = cohort_request(
        engine,
        Partner::Amplitude,
        &amp.key,
        "c-new",
        "New cohort",
        "2024-03-02T08:00:00.250-07:00",
    );
    assert!(!h.upsert_cohort(Partner::Amplitude, &name_it).unwrap());

    // Mixpanel, through its own key.
    let r = import(
        engine,
        Partner::Mixpanel,
        &mix.key,
        json!({"cohort_id": "c-9f1e", "cohort_changes": [
            {"user_ids": ["u-10", "u-later"], "device_ids": ["d-20"]}]}),
        march(3),
    );
    assert_eq!((r.matched, r.added), (3, 3));

    // The other workspace.
    let hb = handle(engine, "beta");
    hb.upsert_user(new_user(Some("u-1"), &["d-1"], &[]))
        .unwrap();
    let r = import(
        engine,
        Partner::Amplitude,
        &beta.key,
        json!({"cohort_id": "c-9f1e", "cohort_changes": [{"user_ids": ["u-1", "u-2"]}]}),
        march(1),
    );
    assert_eq!((r.matched, r.unmatched), (1, 1));

    Secrets {
        invalidated,
        amp,
        mix,
        beta,
    }
}

#[test]
fn every_acknowledged_write_survives_a_restart() {
    let dir = tempdir();
    let engine = open(dir.path());
    let s = populate(&engine);
    let before = engine_fingerprint(&engine);

    // A few things the fingerprint must hold, so that equality means
    // something.
    let acme = &before.workspaces[0];
    assert_eq!(acme.name, "acme");
    assert_eq!(acme.users.len(), 8);
    assert_eq!(acme.users[5].external_id.as_deref(), Some("u-fixed"));
    assert_eq!(acme.users[5].bucket, 1234);
    let c = acme
        .cohorts
        .iter()
        .find(|c| c.key == CohortKey::new(Partner::Amplitude, "c-9f1e"))
        .unwrap();
    assert_eq!(c.name, "Power users (30d)");
    assert_eq!(c.created_at.as_deref(), Some("2021-01-21T19:20:30+05:00"));
    assert_eq!(c.sync.matched_total, 8);
    assert_eq!(c.sync.last_sync, Some(march(1)));
    let c = acme
        .cohorts
        .iter()
        .find(|c| c.key == CohortKey::new(Partner::Amplitude, "c-new"))
        .unwrap();
    assert_eq!(
        c.sync.recent_unmatched,
        ["user_id:nobody", "alias:email:x@y", "device_id:d-none"]
    );
    assert_eq!(c.sync.refused_total, 1);
    assert_eq!(
        c.created_at.as_deref(),
        Some("2024-03-02T08:00:00.250-07:00")
    );
    assert!(!acme.cohorts.iter().any(|c| c.key.cohort_id == "c-test"));
    assert_eq!(
        acme.data_points,
        vec![
            (Partner::Amplitude, day(1), 8),
            (Partner::Amplitude, day(2), 4),
            (Partner::Mixpanel, day(3), 3),
        ]
    );
    assert_eq!(
        acme.enabled_partners,
        vec![Partner::Amplitude, Partner::Mixpanel, Partner::Heap]
    );
    assert_eq!(acme.keys.len(), 3);
    let beta = &before.workspaces[1];
    assert_eq!(beta.data_points, vec![(Partner::Amplitude, day(1), 1)]);
    assert!(beta
        .lookups
        .iter()
        .any(|l| l.contains("device_id:d-1") && l.contains("Refused")));

    drop(engine);
    let engine = open(dir.path());
    assert!(engine.recoveries().is_empty(), "{:?}", engine.recoveries());
    assert_eq!(engine_fingerprint(&engine), before);

    // Keys: still valid, still invalidated, each leading to its workspace.
    let pk = partner_key(&engine, Partner::Amplitude);
    assert_eq!(
        refusal(&engine, Partner::Amplitude, &pk, &s.invalidated.key),
        ProtocolError::Unauthorized(texts::BAD_CLIENT_SECRET)
    );
    assert_eq!(
        authorized(&engine, Partner::Amplitude, &s.amp.key),
        ("acme".into(), s.amp.id.clone())
    );
    assert_eq!(
        authorized(&engine, Partner::Mixpanel, &s.mix.key),
        ("acme".into(), s.mix.id.clone())
    );
    assert_eq!(
        authorized(&engine, Partner::Amplitude, &s.beta.key),
        ("beta".into(), s.beta.id.clone())
    );

    // Replay is deterministic: the replayed state goes on the same way.
    let r = import(
        &engine,
        Partner::Amplitude,
        &s.amp.key,
        json!({"cohort_id": "c-9f1e", "cohort_changes": [{"user_ids": ["u-3"]}]}),
        march(4),
    );
    assert_eq!(r.added, 1);
    let h = handle(&engine, "acme");
    let created = h.upsert_user(new_user(Some("u-new"), &[], &[])).unwrap();
    assert_eq!(created.user, UserId(8), "ids stay dense after replay");
    drop(h);
    let after_more = engine_fingerprint(&engine);
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(engine_fingerprint(&engine), after_more);
}

/// The log records the sync time with the precision it is given: a restart
/// must not change a cohort's `last_sync`.
#[test]
fn import_time_survives_a_restart_exactly() {
    let dir = tempdir();
    let engine = open(dir.path());
    engine.create_workspace("acme").unwrap();
    let k = engine.create_key("acme", Partner::Amplitude).unwrap();
    handle(&engine, "acme")
        .upsert_user(new_user(Some("u-1"), &[], &[]))
        .unwrap();
    // What a server passes: the current time, with sub-millisecond digits.
    let now = Utc
        .timestamp_opt(1_710_000_000, 123_456_789)
        .single()
        .unwrap();
    import(
        &engine,
        Partner::Amplitude,
        &k.key,
        json!({"cohort_id": "c", "cohort_changes": [{"user_ids": ["u-1"]}]}),
        now,
    );
    let before = engine_fingerprint(&engine);
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(
        engine_fingerprint(&engine),
        before,
        "the state after a restart differs from the acknowledged state"
    );
}

#[test]
fn refused_and_no_op_requests_log_nothing() {
    let dir = tempdir();
    let engine = open(dir.path());
    let s = populate(&engine);
    let path = log_path(dir.path(), "acme");
    let len = file_len(&path);
    let state = engine_fingerprint(&engine);
    let h = handle(&engine, "acme");
    let check = |what: &str| {
        assert_eq!(file_len(&path), len, "{what} wrote to the log");
    };

    // Authorization failures.
    let pk = partner_key(&engine, Partner::Amplitude);
    refusal(&engine, Partner::Amplitude, "bad", &s.amp.key);
    refusal(&engine, Partner::Amplitude, &pk, &s.invalidated.key);
    refusal(
        &engine,
        Partner::Heap,
        &partner_key(&engine, Partner::Heap),
        &s.amp.key,
    );
    check("a refused authorization");

    // Protocol validation failures (the server stops there).
    let bad = json!({"partner_api_key": pk, "client_secret": s.amp.key,
        "cohort_id": "", "cohort_changes": [{"user_ids": [1]}]});
    assert_eq!(
        parse_users_request(&serde_json::to_vec(&bad).unwrap())
            .unwrap_err()
            .status(),
        400
    );

    // Refused by the handle.
    let creds = creds(&engine, Partner::Amplitude, &s.amp.key);
    let blank = UsersRequest {
        credentials: creds.clone(),
        cohort_id: "  ".into(),
        cohort_changes: vec![CohortChange {
            user_ids: vec!["u-1".into()],
            ..Default::default()
        }],
    };
    assert!(matches!(
        h.import_users(Partner::Amplitude, &blank, march(5)),
        Err(Error::InvalidCohort(_))
    ));
    check("an import with a blank cohort_id");
    let nameless = CohortRequest {
        credentials: creds.clone(),
        cohort_id: "c-x".into(),
        name: String::new(),
        created_at: "2024-01-01T00:00:00+00:00".parse().unwrap(),
    };
    assert!(h.upsert_cohort(Partner::Amplitude, &nameless).is_err());
    check("a cohort without a name");
    assert!(matches!(
        h.upsert_user(new_user(Some("u-new"), &["d-1"], &[])),
        Err(Error::DuplicateDevice { .. })
    ));
    assert!(matches!(
        h.upsert_user(new_user(None, &[], &[("email", "ann@example.com")])),
        Err(Error::DuplicateAlias { .. })
    ));
    assert!(matches!(
        h.upsert_user(NewUser {
            bucket: Some(10_000),
            ..new_user(Some("u-bucket"), &[], &[])
        }),
        Err(Error::InvalidArgument(_))
    ));
    check("a refused upsert");
    assert!(matches!(
        h.add_alias(&ext("nobody"), "email", "n@x"),
        Err(Error::UnknownUser(_))
    ));
    assert!(matches!(
        h.add_alias(&ext("u-2"), "email", "ann@example.com"),
        Err(Error::DuplicateAlias { .. })
    ));
    assert!(matches!(
        h.add_device(&ext("u-2"), "d-anon"),
        Err(Error::DuplicateDevice { .. })
    ));
    assert!(matches!(
        h.add_device(&ext("u-2"), ""),
        Err(Error::InvalidIdentifier { .. })
    ));
    assert!(matches!(
        h.identify(&ext("u-1"), "u-other"),
        Err(Error::AlreadyIdentified { .. })
    ));
    assert!(matches!(
        h.identify(&UserRef::DeviceId("d-anon".into()), "u-2"),
        Err(Error::DuplicateExternalId { .. })
    ));
    assert!(matches!(
        h.identify(&UserRef::DeviceId("d-none".into()), "u-x"),
        Err(Error::UnknownUser(_))
    ));
    check("a refused identifier change");
    let all_fail = h
        .upsert_users(vec![
            new_user(Some("u-9"), &["d-1"], &[]),
            new_user(Some(""), &[], &[]),
        ])
        .unwrap();
    assert_eq!(all_fail.failed.len(), 2);
    check("a bulk load where every user fails");
    assert!(matches!(
        engine.invalidate_key("acme", "key_unknown"),
        Err(Error::UnknownKey { .. })
    ));
    check("invalidating an unknown key");

    // No-ops.
    let r = h
        .import_users(
            Partner::Amplitude,
            &users_request(
                &engine,
                Partner::Amplitude,
                &s.amp.key,
                json!({"cohort_id": "c-9f1e", "cohort_changes": [
                    {"user_ids": [], "device_ids": null, "should_remove": null}]}),
            ),
            march(5),
        )
        .unwrap();
    assert_eq!(r, Default::default());
    h.add_alias(&ext("u-2"), "email", "bob@example.com")
        .unwrap();
    h.add_device(&ext("u-3"), "d-3").unwrap();
    h.identify(&ext("u-1"), "u-1").unwrap();
    let same = h
        .upsert_user(new_user(
            Some("u-1"),
            &["d-1"],
            &[("email", "ann@example.com")],
        ))
        .unwrap();
    assert!(!same.created);
    engine.enable_partner("acme", Partner::Heap).unwrap();
    engine.invalidate_key("acme", &s.invalidated.id).unwrap();
    check("a no-op");

    drop(h);
    assert_eq!(
        engine_fingerprint(&engine),
        state,
        "a refused request changed the state"
    );
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(engine_fingerprint(&engine), state);
}

/// A write the log refuses (a record over the log's size limit) must be
/// refused whole: the workspace keeps serving, and the refused user is not
/// visible in memory while missing from the log.
#[test]
fn a_write_too_large_for_the_log_is_refused_without_breaking_the_workspace() {
    let dir = tempdir();
    let engine = open(dir.path());
    engine.create_workspace("acme").unwrap();
    let h = handle(&engine, "acme");
    h.upsert_user(new_user(Some("u-1"), &[], &[])).unwrap();
    let huge = "x".repeat(MAX_PAYLOAD + 1);
    let err = h
        .upsert_user(new_user(Some("u-huge"), &[], &[("blob", &huge)]))
        .expect_err("a record over MAX_PAYLOAD cannot be logged");
    drop(huge);
    assert!(
        !matches!(err, Error::WorkspaceFailed { .. }),
        "one oversized request took the whole workspace down: {err}"
    );
    assert_eq!(
        h.read().users.match_external_id("u-huge"),
        None,
        "a user that was never logged is visible"
    );
    h.upsert_user(new_user(Some("u-2"), &[], &[]))
        .expect("the workspace still takes writes");
}
