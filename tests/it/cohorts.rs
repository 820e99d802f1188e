//! The cohort catalog: create and rename, cohorts created by a users
//! request, partners kept apart, resolution of filter values, sync stats.

use chrono::{DateTime, Duration};
use segq::cohorts::{Cohort, CohortCatalog, SyncStats, UNMATCHED_SAMPLE};
use segq::engine::WorkspaceHandle;
use segq::import::{parse_cohort_request, CohortRequest, Credentials, UsersRequest};
use segq::segment::{self, Filter};
use segq::{CohortKey, Error, Partner, Workspace};
use serde_json::json;

use crate::support::{
    cohort, fingerprint, import_ok, jan, members, new_user, CLIENT_SECRET, PARTNER_API_KEY,
};

const AMP: Partner = Partner::Amplitude;
const MIX: Partner = Partner::Mixpanel;

/// Three identified users `u-0`, `u-1`, `u-2`, served from memory.
fn workspace() -> WorkspaceHandle {
    let h = WorkspaceHandle::in_memory(Workspace::new("cohorts", 5)).unwrap();
    for u in 0..3 {
        h.upsert_user(new_user(Some(&format!("u-{u}")), &[], &[]))
            .unwrap();
    }
    h
}

fn credentials() -> Credentials {
    Credentials {
        partner_api_key: PARTNER_API_KEY.into(),
        client_secret: CLIENT_SECRET.into(),
    }
}

/// A validated create-or-rename request, applied as the server applies it.
fn upsert(
    h: &WorkspaceHandle,
    partner: Partner,
    cohort_id: &str,
    name: &str,
    created_at: DateTime<chrono::FixedOffset>,
) -> Result<bool, Error> {
    let req = CohortRequest {
        credentials: credentials(),
        cohort_id: cohort_id.into(),
        name: name.into(),
        created_at,
    };
    h.upsert_cohort(partner, &req)
}

fn time(s: &str) -> DateTime<chrono::FixedOffset> {
    DateTime::parse_from_rfc3339(s).unwrap()
}

#[test]
fn upsert_creates_then_renames_keeping_members() {
    let h = workspace();
    let t = time("2021-01-21T19:20:30+05:00");
    assert!(upsert(&h, AMP, "c-9f1e", "Power users", t).unwrap());
    let ws = h.read();
    let c = cohort(&ws, AMP, "c-9f1e");
    assert_eq!(c.name, "Power users");
    assert_eq!(c.created_at, Some(t));
    assert!(c.is_empty());
    assert_eq!(c.sync, SyncStats::default());
    drop(ws);

    import_ok(
        &h,
        AMP,
        "c-9f1e",
        json!([{"user_ids": ["u-0", "u-2"]}]),
        jan(1),
    );
    let r = import_ok(&h, AMP, "c-9f1e", json!([]), jan(1));
    assert!(!r.cohort_created, "the cohorts endpoint created it");

    assert!(!upsert(&h, AMP, "c-9f1e", "Power users (30d)", t).unwrap());
    let ws = h.read();
    let c = cohort(&ws, AMP, "c-9f1e");
    assert_eq!(c.name, "Power users (30d)");
    assert_eq!(members(&ws, AMP, "c-9f1e"), [0, 2]);
    assert_eq!(c.len(), 2);
    assert_eq!(c.sync.matched_total, 2, "a rename keeps sync stats");
    assert_eq!(ws.cohorts.len(), 1);
}

#[test]
fn the_cohorts_endpoint_creates_then_renames() {
    let h = workspace();
    let body = |name: &str| {
        serde_json::to_vec(&json!({
            "partner_api_key": PARTNER_API_KEY,
            "client_secret": CLIENT_SECRET,
            "cohort_id": "c-1",
            "name": name,
            "created_at": "2021-01-21T19:20:30Z"}))
        .unwrap()
    };
    let req = parse_cohort_request(&body("First")).unwrap();
    assert!(h.upsert_cohort(MIX, &req).unwrap(), "201: created");
    import_ok(&h, MIX, "c-1", json!([{"user_ids": ["u-1"]}]), jan(1));
    let req = parse_cohort_request(&body("Second")).unwrap();
    assert!(!h.upsert_cohort(MIX, &req).unwrap(), "200: renamed");
    let ws = h.read();
    assert_eq!(cohort(&ws, MIX, "c-1").name, "Second");
    assert_eq!(members(&ws, MIX, "c-1"), [1]);
    assert_eq!(
        cohort(&ws, MIX, "c-1").created_at,
        Some(time("2021-01-21T19:20:30Z"))
    );
}

#[test]
fn an_unknown_cohort_id_in_a_users_request_creates_the_cohort_named_by_its_id() {
    let h = workspace();
    let r = import_ok(&h, AMP, "c-new", json!([{"user_ids": ["u-1"]}]), jan(1));
    assert!(r.cohort_created);
    let ws = h.read();
    let c = cohort(&ws, AMP, "c-new");
    assert_eq!(c.name, "c-new");
    assert_eq!(c.created_at, None);
    assert_eq!(members(&ws, AMP, "c-new"), [1]);
    drop(ws);

    // The next request finds it.
    let r = import_ok(&h, AMP, "c-new", json!([{"user_ids": ["u-2"]}]), jan(1));
    assert!(!r.cohort_created);
    // An empty request (a credentials test) creates no phantom cohort.
    let r = import_ok(&h, AMP, "c-empty", json!([]), jan(1));
    assert!(!r.cohort_created);
    assert!(h
        .read()
        .cohorts
        .get(&CohortKey::new(AMP, "c-empty"))
        .is_none());
    let r = import_ok(&h, AMP, "c-empty", json!([{"user_ids": []}]), jan(1));
    assert!(!r.cohort_created);
    assert!(h
        .read()
        .cohorts
        .get(&CohortKey::new(AMP, "c-empty"))
        .is_none());

    // The partner names it later: not a creation, members kept.
    let t = time("2021-01-21T19:20:30+05:00");
    assert!(!upsert(&h, AMP, "c-new", "Named", t).unwrap());
    assert_eq!(cohort(&h.read(), AMP, "c-new").name, "Named");
    assert_eq!(cohort(&h.read(), AMP, "c-new").created_at, Some(t));
    assert_eq!(members(&h.read(), AMP, "c-new"), [1, 2]);

    // A second rename keeps the creation time the cohort has.
    let later = time("2022-02-02T00:00:00Z");
    assert!(!upsert(&h, AMP, "c-new", "Renamed", later).unwrap());
    assert_eq!(cohort(&h.read(), AMP, "c-new").name, "Renamed");
    assert_eq!(cohort(&h.read(), AMP, "c-new").created_at, Some(t));
}

#[test]
fn cohorts_of_different_partners_with_the_same_cohort_id_are_distinct() {
    let h = workspace();
    let t = time("2021-01-21T19:20:30Z");
    assert!(upsert(&h, AMP, "c", "Amp", t).unwrap());
    assert!(upsert(&h, MIX, "c", "Mix", t).unwrap());
    import_ok(&h, AMP, "c", json!([{"user_ids": ["u-0"]}]), jan(1));
    let r = import_ok(
        &h,
        Partner::Heap,
        "c",
        json!([{"user_ids": ["u-2"]}]),
        jan(1),
    );
    assert!(r.cohort_created, "heap/c is a new cohort");
    import_ok(&h, MIX, "c", json!([{"user_ids": ["u-1"]}]), jan(1));
    let ws = h.read();

    assert_eq!(ws.cohorts.len(), 3);
    assert_eq!(members(&ws, AMP, "c"), [0]);
    assert_eq!(members(&ws, MIX, "c"), [1]);
    assert_eq!(members(&ws, Partner::Heap, "c"), [2]);
    assert_eq!(cohort(&ws, AMP, "c").name, "Amp");
    assert_eq!(cohort(&ws, MIX, "c").name, "Mix");
    assert_eq!(
        ws.cohorts.resolve(AMP, "c").unwrap().key,
        CohortKey::new(AMP, "c")
    );
    assert_eq!(
        ws.cohorts.resolve(MIX, "Mix").unwrap().key,
        CohortKey::new(MIX, "c")
    );
    // A name of another partner's cohort does not resolve.
    assert!(matches!(
        ws.cohorts.resolve(AMP, "Mix"),
        Err(Error::NoSuchCohort { partner: AMP, .. })
    ));
    let keys: Vec<CohortKey> = ws
        .cohorts
        .iter_sorted()
        .iter()
        .map(|c| c.key.clone())
        .collect();
    assert_eq!(
        keys,
        [
            CohortKey::new(AMP, "c"),
            CohortKey::new(MIX, "c"),
            CohortKey::new(Partner::Heap, "c"),
        ]
    );
}

#[test]
fn resolve_finds_a_cohort_by_id_or_unique_name() {
    let mut ws = workspace().into_workspace();
    ws.upsert_cohort(AMP, "c-1", "Power users", None).unwrap();
    ws.upsert_cohort(AMP, "c-3", "Churn", None).unwrap();
    ws.upsert_cohort(AMP, "c-2", "Churn", None).unwrap();
    ws.upsert_cohort(AMP, "c-4", "c-1", None).unwrap();

    assert_eq!(ws.cohorts.resolve(AMP, "c-1").unwrap().name, "Power users");
    assert_eq!(
        ws.cohorts
            .resolve(AMP, "Power users")
            .unwrap()
            .key
            .cohort_id,
        "c-1"
    );
    assert_eq!(ws.cohorts.resolve(AMP, "c-2").unwrap().name, "Churn");

    // A cohort_id wins over another cohort's name.
    assert_eq!(ws.cohorts.resolve(AMP, "c-1").unwrap().key.cohort_id, "c-1");

    match ws.cohorts.resolve(AMP, "Churn") {
        Err(Error::AmbiguousCohortName { partner, name, ids }) => {
            assert_eq!(partner, AMP);
            assert_eq!(name, "Churn");
            assert_eq!(ids, ["c-2", "c-3"], "ids are listed, sorted");
        }
        other => panic!("expected AmbiguousCohortName, got {other:?}"),
    }
    let err = ws.cohorts.resolve(AMP, "Churn").unwrap_err().to_string();
    assert!(err.contains("c-2") && err.contains("c-3"), "{err}");

    match ws.cohorts.resolve(AMP, "power users") {
        Err(Error::NoSuchCohort { partner, value }) => {
            assert_eq!(partner, AMP);
            assert_eq!(value, "power users");
        }
        other => panic!("expected NoSuchCohort, got {other:?}"),
    }
    assert!(matches!(
        ws.cohorts.resolve(MIX, "c-1"),
        Err(Error::NoSuchCohort { partner: MIX, .. })
    ));

    // After a rename, the old name is gone and the new one resolves.
    ws.upsert_cohort(AMP, "c-3", "Churn (old)", None).unwrap();
    assert_eq!(
        ws.cohorts.resolve(AMP, "Churn").unwrap().key.cohort_id,
        "c-2"
    );
    assert_eq!(
        ws.cohorts
            .resolve(AMP, "Churn (old)")
            .unwrap()
            .key
            .cohort_id,
        "c-3"
    );

    // The segment layer resolves names to ids and reports the same errors.
    let f = Filter::Or(vec![
        Filter::includes(AMP, "Power users"),
        Filter::excludes(AMP, "Churn (old)").not(),
    ]);
    assert_eq!(
        segment::resolve(&ws, &f).unwrap(),
        Filter::Or(vec![
            Filter::includes(AMP, "c-1"),
            Filter::excludes(AMP, "c-3").not(),
        ])
    );
    segment::check_cohorts(&ws, &f).unwrap();
    ws.upsert_cohort(AMP, "c-5", "Churn", None).unwrap();
    let bad = Filter::And(vec![f, Filter::includes(AMP, "Churn")]);
    assert!(matches!(
        segment::resolve(&ws, &bad),
        Err(Error::AmbiguousCohortName { .. })
    ));
    assert!(matches!(
        segment::check_cohorts(&ws, &bad),
        Err(Error::AmbiguousCohortName { .. })
    ));
}

#[test]
fn invalid_cohort_ids_and_names_are_refused_and_change_nothing() {
    let h = workspace();
    let before = fingerprint(&h);
    let t = time("2021-01-21T19:20:30Z");
    assert!(matches!(
        upsert(&h, AMP, "", "Name", t),
        Err(Error::InvalidCohort(_))
    ));
    assert!(matches!(
        upsert(&h, AMP, "c", "", t),
        Err(Error::InvalidCohort(_))
    ));
    let blank = UsersRequest {
        credentials: credentials(),
        cohort_id: String::new(),
        cohort_changes: vec![],
    };
    assert!(matches!(
        h.import_users(AMP, &blank, jan(1)),
        Err(Error::InvalidCohort(_))
    ));
    // The catalog (what log replay applies) refuses them too.
    let mut ws = h.into_workspace();
    assert!(matches!(
        ws.upsert_cohort(AMP, "", "Name", None),
        Err(Error::InvalidCohort(_))
    ));
    assert!(matches!(
        ws.upsert_cohort(AMP, "c", "", None),
        Err(Error::InvalidCohort(_))
    ));
    let mut catalog = CohortCatalog::new();
    assert!(matches!(
        catalog.get_or_create(CohortKey::new(AMP, "")),
        Err(Error::InvalidCohort(_))
    ));
    assert!(catalog.is_empty());
    assert_eq!(fingerprint(&ws), before);
    assert!(ws.cohorts.is_empty());

    // A rename to an empty name keeps the old name.
    ws.upsert_cohort(AMP, "c", "Name", None).unwrap();
    assert!(ws.upsert_cohort(AMP, "c", "", None).is_err());
    assert_eq!(cohort(&ws, AMP, "c").name, "Name");
}

#[test]
fn by_partner_lists_a_partners_cohorts_by_id() {
    let mut ws = workspace().into_workspace();
    for id in ["b", "a", "c"] {
        ws.upsert_cohort(AMP, id, id, None).unwrap();
    }
    ws.upsert_cohort(MIX, "a", "a", None).unwrap();
    let ids: Vec<&str> = ws
        .cohorts
        .by_partner(AMP)
        .iter()
        .map(|c| c.key.cohort_id.as_str())
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(ws.cohorts.by_partner(MIX).len(), 1);
    assert!(ws.cohorts.by_partner(Partner::Kubit).is_empty());
}

#[test]
fn insert_installs_a_cohort_as_it_is() {
    let mut catalog = CohortCatalog::new();
    let mut c = Cohort {
        key: CohortKey::new(AMP, "bulk"),
        name: "Bulk".into(),
        created_at: None,
        members: [1u32, 5, 70_000].into_iter().collect(),
        sync: SyncStats::default(),
        size_history: Default::default(),
        version: 0,
    };
    catalog.insert(c.clone()).unwrap();
    let got = catalog.get(&c.key).unwrap();
    // Installed as it is, with a fresh version for the caches.
    assert_ne!(got.version, c.version);
    c.version = got.version;
    assert_eq!(got, &c);
    c.key.cohort_id.clear();
    assert!(matches!(catalog.insert(c), Err(Error::InvalidCohort(_))));
    assert_eq!(catalog.len(), 1);
}

#[test]
fn sync_stats_record_each_request() {
    let h = workspace();
    let t1 = jan(1);
    let r = import_ok(
        &h,
        AMP,
        "c",
        json!([
            {"user_ids": ["u-0", "u-1", "ghost-a"]},
            {"user_ids": ["u-0"], "should_remove": true}]),
        t1,
    );
    assert_eq!((r.added, r.removed, r.matched, r.unmatched), (2, 1, 3, 1));
    let s = cohort(&h.read(), AMP, "c").sync.clone();
    assert_eq!(s.last_sync, Some(t1));
    assert_eq!((s.last_added, s.last_removed), (2, 1));
    assert_eq!(
        (s.matched_total, s.unmatched_total, s.refused_total),
        (3, 1, 0)
    );
    assert_eq!(s.recent_unmatched, ["user_id:ghost-a"]);

    // The next request: last_* are replaced, totals accumulate.
    let t2 = t1 + Duration::minutes(1);
    import_ok(
        &h,
        AMP,
        "c",
        json!([{"user_ids": ["u-1", "u-2", "ghost-b"], "should_remove": true}]),
        t2,
    );
    let s = cohort(&h.read(), AMP, "c").sync.clone();
    assert_eq!(s.last_sync, Some(t2));
    assert_eq!((s.last_added, s.last_removed), (0, 1));
    assert_eq!((s.matched_total, s.unmatched_total), (5, 2));
    assert_eq!(s.recent_unmatched, ["user_id:ghost-a", "user_id:ghost-b"]);
    assert!(members(&h.read(), AMP, "c").is_empty());

    // Another cohort's stats are its own.
    import_ok(&h, AMP, "other", json!([{"user_ids": ["u-2"]}]), t2);
    assert_eq!(cohort(&h.read(), AMP, "c").sync.matched_total, 5);
    assert_eq!(cohort(&h.read(), AMP, "other").sync.matched_total, 1);
}

#[test]
fn recent_unmatched_keeps_the_newest_sample_oldest_first() {
    assert_eq!(UNMATCHED_SAMPLE, 100);
    let h = workspace();
    // One request with 150 unmatched ids: the last 100 are kept.
    let ghosts: Vec<String> = (0..150).map(|i| format!("ghost-{i}")).collect();
    import_ok(&h, AMP, "c", json!([{"user_ids": ghosts}]), jan(1));
    let s = cohort(&h.read(), AMP, "c").sync.clone();
    assert_eq!(s.unmatched_total, 150);
    assert_eq!(s.recent_unmatched.len(), UNMATCHED_SAMPLE);
    assert_eq!(s.recent_unmatched.front().unwrap(), "user_id:ghost-50");
    assert_eq!(s.recent_unmatched.back().unwrap(), "user_id:ghost-149");

    // Ten more: the ten oldest drop out.
    let more: Vec<String> = (0..10).map(|i| format!("d-{i}")).collect();
    import_ok(&h, AMP, "c", json!([{"device_ids": more}]), jan(1));
    let s = cohort(&h.read(), AMP, "c").sync.clone();
    assert_eq!(s.unmatched_total, 160);
    assert_eq!(s.recent_unmatched.len(), UNMATCHED_SAMPLE);
    assert_eq!(s.recent_unmatched.front().unwrap(), "user_id:ghost-60");
    assert_eq!(s.recent_unmatched[89], "user_id:ghost-149");
    assert_eq!(s.recent_unmatched[90], "device_id:d-0");
    assert_eq!(s.recent_unmatched.back().unwrap(), "device_id:d-9");

    // Matched ids do not enter the sample.
    import_ok(&h, AMP, "c", json!([{"user_ids": ["u-0"]}]), jan(1));
    assert_eq!(
        cohort(&h.read(), AMP, "c")
            .sync
            .recent_unmatched
            .back()
            .unwrap(),
        "device_id:d-9"
    );
}
