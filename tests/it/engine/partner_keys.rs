//! Data import keys and partner authorization: shown once, stored as a
//! digest, rotated and invalidated; a key's last use, logged at most once a
//! minute.

use super::*;

#[test]
fn a_key_is_shown_once_and_only_its_digest_is_stored() {
    let dir = tempdir();
    let engine = open(dir.path());
    engine.create_workspace("acme").unwrap();
    let before = Utc::now();
    let k: NewKey = engine.create_key("acme", Partner::Amplitude).unwrap();
    let after = Utc::now();
    assert!(k.key.len() >= 32, "key too short: {}", k.key.len());
    assert!(k.key.starts_with(&k.prefix));
    assert!(
        !k.prefix.is_empty() && k.prefix.len() <= k.key.len() / 2,
        "prefix {:?} gives away too much of the key",
        k.prefix
    );
    assert_eq!(k.partner, Partner::Amplitude);
    assert!(before - chrono::Duration::milliseconds(1) <= k.created_at && k.created_at <= after);
    assert_ne!(k.id, k.key);

    let listed = engine.list_keys("acme", None).unwrap();
    assert_eq!(
        listed,
        vec![KeyInfo {
            id: k.id.clone(),
            partner: Partner::Amplitude,
            prefix: k.prefix.clone(),
            created_at: k.created_at,
            last_used: None,
            invalidated_at: None,
        }]
    );
    let listed_json = serde_json::to_string(&listed).unwrap();
    assert!(!listed_json.contains(&k.key), "listing shows the key");

    // last_used: set by an authorization, for that key only.
    let other = engine.create_key("acme", Partner::Amplitude).unwrap();
    let used_from = Utc::now();
    authorized(&engine, Partner::Amplitude, &k.key);
    let used_to = Utc::now();
    let listed = engine.list_keys("acme", Some(Partner::Amplitude)).unwrap();
    let of = |id: &str| listed.iter().find(|i| i.id == id).unwrap().clone();
    let used = of(&k.id).last_used.expect("last_used after a request");
    assert!(
        used_from - chrono::Duration::milliseconds(1) <= used && used <= used_to,
        "last_used {used} not within {used_from}..{used_to}"
    );
    assert_eq!(of(&other.id).last_used, None);
    assert!(engine
        .list_keys("acme", Some(Partner::Mixpanel))
        .unwrap()
        .is_empty());

    // Nowhere on disk: only the digest is.
    engine.sync_all().unwrap();
    let log = fs::read(log_path(dir.path(), "acme")).unwrap();
    assert!(
        contains(&log, &keys::digest(&k.key)),
        "the log should hold the key's digest"
    );
    for (path, bytes) in all_files(dir.path()) {
        for secret in [&k.key, &other.key] {
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "a key is stored in {}",
                path.display()
            );
            let hex = keys::hex(secret.as_bytes());
            assert!(!contains(&bytes, hex.as_bytes()), "{}", path.display());
        }
    }
    drop(engine);
    // Reopened: the key still works, found by its digest.
    let engine = open(dir.path());
    assert_eq!(
        authorized(&engine, Partner::Amplitude, &k.key),
        ("acme".to_string(), k.id.clone())
    );
}

#[test]
fn authorization_checks_partner_key_then_secret_then_partner() {
    let dir = tempdir();
    let engine = open(dir.path());
    engine.create_workspace("acme").unwrap();
    let amp = engine.create_key("acme", Partner::Amplitude).unwrap();

    assert_eq!(
        authorized(&engine, Partner::Amplitude, &amp.key),
        ("acme".to_string(), amp.id.clone())
    );
    let unauthorized = |e: ProtocolError, text: &'static str| {
        assert_eq!(e, ProtocolError::Unauthorized(text));
        assert_eq!(e.status(), 401);
        assert!(!e.body().to_string().contains(&amp.key), "secret echoed");
    };
    let amp_pk = partner_key(&engine, Partner::Amplitude);
    let mix_pk = partner_key(&engine, Partner::Mixpanel);

    // Wrong partner_api_key: another partner's, a near miss, empty.
    for pk in [mix_pk.clone(), format!("{amp_pk}x"), String::new()] {
        unauthorized(
            refusal(&engine, Partner::Amplitude, &pk, &amp.key),
            texts::BAD_PARTNER_KEY,
        );
    }
    // The partner_api_key is checked first, even with an unknown secret.
    unauthorized(
        refusal(&engine, Partner::Amplitude, "nope", "nope"),
        texts::BAD_PARTNER_KEY,
    );
    // Unknown client_secret.
    for secret in [
        "234567-2345-2345-23456789".to_string(),
        format!("{}0", amp.key),
        amp.key.to_uppercase(),
        amp.prefix.clone(),
        amp.id.clone(),
        keys::hex(&keys::digest(&amp.key)),
    ] {
        unauthorized(
            refusal(&engine, Partner::Amplitude, &amp_pk, &secret),
            texts::BAD_CLIENT_SECRET,
        );
    }
    // An amplitude key on /partners/mixpanel, with mixpanel's partner key.
    unauthorized(
        refusal(&engine, Partner::Mixpanel, &mix_pk, &amp.key),
        texts::PARTNER_NOT_ENABLED,
    );
    // Even once mixpanel is enabled for the workspace: the key is amplitude's.
    engine.enable_partner("acme", Partner::Mixpanel).unwrap();
    unauthorized(
        refusal(&engine, Partner::Mixpanel, &mix_pk, &amp.key),
        texts::PARTNER_NOT_ENABLED,
    );
    let mix = engine.create_key("acme", Partner::Mixpanel).unwrap();
    assert_eq!(authorized(&engine, Partner::Mixpanel, &mix.key).1, mix.id);
    unauthorized(
        refusal(&engine, Partner::Amplitude, &amp_pk, &mix.key),
        texts::PARTNER_NOT_ENABLED,
    );
}

#[test]
fn keys_rotate_and_invalidate_and_it_survives_reopen() {
    let dir = tempdir();
    let engine = open(dir.path());
    engine.create_workspace("acme").unwrap();
    assert!(handle(&engine, "acme").read().enabled_partners.is_empty());
    let first = engine.create_key("acme", Partner::Amplitude).unwrap();
    assert_eq!(
        handle(&engine, "acme")
            .read()
            .enabled_partners
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        vec![Partner::Amplitude],
        "the first key enables its partner"
    );
    let second = engine.create_key("acme", Partner::Amplitude).unwrap();
    assert_ne!(first.id, second.id);
    assert_ne!(first.key, second.key);
    // Both valid during the rotation.
    assert_eq!(
        authorized(&engine, Partner::Amplitude, &first.key).1,
        first.id
    );
    assert_eq!(
        authorized(&engine, Partner::Amplitude, &second.key).1,
        second.id
    );

    let at = Utc::now();
    engine.invalidate_key("acme", &first.id).unwrap();
    let pk = partner_key(&engine, Partner::Amplitude);
    assert_eq!(
        refusal(&engine, Partner::Amplitude, &pk, &first.key),
        ProtocolError::Unauthorized(texts::BAD_CLIENT_SECRET)
    );
    assert_eq!(
        authorized(&engine, Partner::Amplitude, &second.key).1,
        second.id
    );
    // Invalidating twice is harmless; an unknown id is an error.
    engine.invalidate_key("acme", &first.id).unwrap();
    match engine.invalidate_key("acme", "key_does_not_exist") {
        Err(Error::UnknownKey { id }) => assert_eq!(id, "key_does_not_exist"),
        other => panic!("expected UnknownKey, got {other:?}"),
    }
    // A key id of another workspace is unknown here.
    engine.create_workspace("other").unwrap();
    assert!(matches!(
        engine.invalidate_key("other", &second.id),
        Err(Error::UnknownKey { .. })
    ));
    assert_eq!(
        authorized(&engine, Partner::Amplitude, &second.key).1,
        second.id
    );

    let listed = engine.list_keys("acme", None).unwrap();
    assert_eq!(listed.len(), 2, "invalidated keys stay listed");
    let inv = listed.iter().find(|k| k.id == first.id).unwrap();
    let inv_at = inv.invalidated_at.expect("invalidated_at");
    assert!(inv_at >= at - chrono::Duration::milliseconds(1));
    assert_eq!(
        listed
            .iter()
            .find(|k| k.id == second.id)
            .unwrap()
            .invalidated_at,
        None
    );
    let before = engine_fingerprint(&engine);
    drop(engine);

    let engine = open(dir.path());
    assert_eq!(engine_fingerprint(&engine), before);
    assert_eq!(
        refusal(&engine, Partner::Amplitude, &pk, &first.key),
        ProtocolError::Unauthorized(texts::BAD_CLIENT_SECRET),
        "an invalidated key must stay invalid after a restart"
    );
    assert_eq!(
        authorized(&engine, Partner::Amplitude, &second.key).1,
        second.id
    );
    let listed = engine.list_keys("acme", None).unwrap();
    assert_eq!(
        listed
            .iter()
            .find(|k| k.id == first.id)
            .unwrap()
            .invalidated_at,
        Some(inv_at)
    );
    // The last key can go too: the partner stays enabled, no key works.
    engine.invalidate_key("acme", &second.id).unwrap();
    assert_eq!(
        refusal(&engine, Partner::Amplitude, &pk, &second.key),
        ProtocolError::Unauthorized(texts::BAD_CLIENT_SECRET)
    );
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(
        refusal(&engine, Partner::Amplitude, &pk, &second.key),
        ProtocolError::Unauthorized(texts::BAD_CLIENT_SECRET)
    );
}

#[test]
fn enable_partner_without_a_key_and_keys_lead_to_their_own_workspace() {
    let dir = tempdir();
    let engine = open(dir.path());
    engine.create_workspace("acme").unwrap();
    engine.create_workspace("beta").unwrap();

    engine.enable_partner("acme", Partner::Heap).unwrap();
    engine.enable_partner("acme", Partner::Heap).unwrap(); // idempotent
    assert!(handle(&engine, "acme")
        .read()
        .enabled_partners
        .contains(&Partner::Heap));
    assert!(engine.list_keys("acme", None).unwrap().is_empty());
    assert!(handle(&engine, "beta").read().enabled_partners.is_empty());

    let a = engine.create_key("acme", Partner::Amplitude).unwrap();
    let b = engine.create_key("beta", Partner::Amplitude).unwrap();
    assert_eq!(
        authorized(&engine, Partner::Amplitude, &a.key),
        ("acme".to_string(), a.id.clone())
    );
    assert_eq!(
        authorized(&engine, Partner::Amplitude, &b.key),
        ("beta".to_string(), b.id.clone())
    );
    // Each workspace lists its own keys only.
    let ids = |w: &str| -> Vec<String> {
        engine
            .list_keys(w, None)
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect()
    };
    assert_eq!(ids("acme"), vec![a.id.clone()]);
    assert_eq!(ids("beta"), vec![b.id.clone()]);

    // An import through each key lands in its workspace only.
    for (w, key) in [("acme", &a.key), ("beta", &b.key)] {
        engine
            .workspace(w)
            .unwrap()
            .upsert_user(new_user(Some(&format!("{w}-user")), &[], &[]))
            .unwrap();
        let r = import(
            &engine,
            Partner::Amplitude,
            key,
            json!({"cohort_id": "c", "cohort_changes": [
                {"user_ids": ["acme-user", "beta-user"]}]}),
            march(1),
        );
        assert_eq!((r.matched, r.unmatched), (1, 1), "{w}");
    }
    assert_eq!(members(&engine, "acme", Partner::Amplitude, "c"), vec![0]);
    assert_eq!(members(&engine, "beta", Partner::Amplitude, "c"), vec![0]);
    let before = engine_fingerprint(&engine);
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(engine_fingerprint(&engine), before);
    assert!(handle(&engine, "acme")
        .read()
        .enabled_partners
        .contains(&Partner::Heap));
    assert_eq!(authorized(&engine, Partner::Amplitude, &b.key).0, "beta");
}

/// The `KeyUsed` records of a workspace's logs, in order.
fn key_used_records(data: &Path, workspace: &str) -> Vec<(String, i64)> {
    let folder = data.join("workspaces").join(workspace);
    let mut logs: Vec<PathBuf> = fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "segqlog"))
        .collect();
    logs.sort();
    let mut out = Vec::new();
    for path in logs {
        let mut file = segq::log::FsFile::open(&path).unwrap();
        let replay = segq::log::LogWriter::scan(&mut file).unwrap();
        for r in replay.records {
            let change = segq::engine::Change::decode(&r.payload, "log", r.seq).unwrap();
            if let segq::engine::Change::KeyUsed { id, at_ms } = change {
                out.push((id, at_ms));
            }
        }
    }
    out
}

/// Authorizes at `at` and imports, as the server does.
fn import_at(engine: &Engine, secret: &str, user: &str, at: DateTime<Utc>) {
    let req = users_request(
        engine,
        Partner::Amplitude,
        secret,
        json!({"cohort_id": "c", "cohort_changes": [{"user_ids": [user]}]}),
    );
    let (h, _) = engine
        .authorize_at(Partner::Amplitude, &req.credentials, at)
        .unwrap_or_else(|e| panic!("refused: {e:?}"));
    h.import_users(Partner::Amplitude, &req, at).unwrap();
}

/// A time after every real use the test makes (whole milliseconds).
fn later() -> DateTime<Utc> {
    let t = Utc::now() + chrono::Duration::days(1);
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap()
}

fn last_used(engine: &Engine, id: &str) -> Option<DateTime<Utc>> {
    engine
        .list_keys("acme", None)
        .unwrap()
        .into_iter()
        .find(|k| k.id == id)
        .expect("the key is listed")
        .last_used
}

#[test]
fn a_keys_use_is_logged_at_most_once_a_minute_with_the_import() {
    let dir = tempdir();
    let engine = open(dir.path());
    let key = small_workspace(&engine, "acme");
    let before = key_used_records(dir.path(), "acme");
    let t0 = later();
    let secs = |s: i64| t0 + chrono::Duration::seconds(s);
    let h = handle(&engine, "acme");
    let commits = h.log_stats().commits;
    for (i, s) in [0, 1, 10, 30, 59].into_iter().enumerate() {
        import_at(&engine, &key.key, &format!("u-{i}"), secs(s));
    }
    assert_eq!(
        h.log_stats().commits - commits,
        5,
        "one commit per import: the key's use rides with the first"
    );
    assert_eq!(
        last_used(&engine, &key.id),
        Some(secs(59)),
        "exact in memory"
    );
    import_at(&engine, &key.key, "u-9", secs(60));
    import_at(&engine, &key.key, "u-10", secs(61));
    let logged = key_used_records(dir.path(), "acme");
    assert_eq!(
        logged[before.len()..],
        [
            (key.id.clone(), t0.timestamp_millis()),
            (key.id.clone(), secs(60).timestamp_millis())
        ],
        "at most one record per key per minute"
    );
}

#[test]
fn a_keys_last_use_survives_a_restart_and_a_compaction() {
    let dir = tempdir();
    let engine = open(dir.path());
    let key = small_workspace(&engine, "acme");
    let other = engine.create_key("acme", Partner::Amplitude).unwrap();
    let t0 = later();
    let secs = |s: i64| t0 + chrono::Duration::seconds(s);
    import_at(&engine, &key.key, "u-1", secs(0));
    import_at(&engine, &key.key, "u-2", secs(40));
    drop(engine);

    // Kept to the minute: the use logged is at most a minute before the
    // last one.
    let engine = open(dir.path());
    assert_eq!(last_used(&engine, &key.id), Some(secs(0)));
    assert_eq!(last_used(&engine, &other.id), None);
    // A use within the minute of the logged one is not logged again.
    let records = key_used_records(dir.path(), "acme").len();
    import_at(&engine, &key.key, "u-3", secs(50));
    assert_eq!(key_used_records(dir.path(), "acme").len(), records);
    import_at(&engine, &key.key, "u-4", secs(130));
    // A credentials test writes nothing; its use is logged at shutdown.
    engine
        .authorize_at(
            Partner::Amplitude,
            &creds(&engine, Partner::Amplitude, &other.key),
            secs(140),
        )
        .unwrap();
    engine.compact("acme").unwrap();
    engine.sync_all().unwrap();
    drop(engine);

    let engine = open(dir.path());
    assert_eq!(last_used(&engine, &key.id), Some(secs(130)));
    assert_eq!(last_used(&engine, &other.id), Some(secs(140)));
    // Both folded into a snapshot: the logs after it hold no key use.
    engine.compact("acme").unwrap();
    drop(engine);
    assert!(key_used_records(dir.path(), "acme").is_empty());
    let engine = open(dir.path());
    assert_eq!(last_used(&engine, &key.id), Some(secs(130)));
    assert_eq!(last_used(&engine, &other.id), Some(secs(140)));
}
