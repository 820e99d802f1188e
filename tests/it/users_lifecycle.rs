//! User lifecycle: users deleted (by each kind of identifier, one and
//! many) leave every cohort, attribute, saved segment, count (NOT, every
//! user and random bucket filters included), member page and check, their
//! identifiers free for a new user and their ids holes; a merge moves the
//! source's device_ids, aliases, cohorts and missing attribute values to
//! the target and deletes the source; a rename frees the old external_id.
//! Each across a restart (the log replayed) and a compaction (the
//! snapshot, which holds none of the deleted users' identifiers), and
//! changes made between a compaction's freeze and its rebase; bad requests
//! change nothing. The HTTP routes end to end.

use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use roaring::RoaringBitmap;
use segq::engine::{Engine, WorkspaceHandle};
use segq::import::parse_users_request;
use segq::query::service::{self, CountMode, Target};
use segq::segment::{reference, AttrCmp, BucketCmp, Filter};
use segq::users::NewUser;
use segq::{Partner, UserId, UserRef};
use serde_json::{json, Value};

use crate::support::server::InProcess;

const P: Partner = Partner::Amplitude;
const EXACT: CountMode = CountMode::Exact { explain: false };

fn open(dir: &Path) -> Arc<Engine> {
    Engine::open(dir).unwrap().0
}

fn handle(e: &Engine) -> Arc<WorkspaceHandle> {
    e.workspace("w").unwrap()
}

fn ext(i: u32) -> UserRef {
    UserRef::ExternalId(format!("u{i}"))
}

/// Users `u{from}..` with a device `d{i}` and an alias `email:{i}@x` each.
fn add_users(h: &WorkspaceHandle, from: u32, n: u32) {
    let users = (from..from + n)
        .map(|i| NewUser {
            external_id: Some(format!("u{i}")),
            devices: vec![format!("d{i}")],
            aliases: vec![("email".into(), format!("{i}@x"))],
            bucket: None,
        })
        .collect();
    let r = h.upsert_users(users).unwrap();
    assert!(r.failed.is_empty(), "{r:?}");
}

fn import(h: &WorkspaceHandle, cohort: &str, add: &[u32]) {
    let ids: Vec<String> = add.iter().map(|u| format!("u{u}")).collect();
    let body = json!({"partner_api_key": "k", "client_secret": "s", "cohort_id": cohort,
        "cohort_changes": [{"user_ids": ids}]});
    let req = parse_users_request(body.to_string().as_bytes()).unwrap();
    h.import_users(P, &req, Utc::now()).unwrap();
}

fn count(h: &WorkspaceHandle, f: &Filter) -> u64 {
    service::count(h, &Target::Filter(f.clone()), EXACT).unwrap()["count"]
        .as_u64()
        .unwrap()
}

fn members(h: &WorkspaceHandle, f: &Filter) -> Vec<u32> {
    service::member_page(h, &Target::Filter(f.clone()), None, 1_000_000)
        .unwrap()
        .members
}

fn check(h: &WorkspaceHandle, f: &Filter, u: &UserRef) -> Value {
    service::check_user(h, &Target::Filter(f.clone()), u).unwrap()
}

/// The filters every test reads: a cohort, NOT of it, every user, a
/// bucket range, and an attribute.
fn filters() -> Vec<Filter> {
    vec![
        Filter::includes(P, "c1"),
        Filter::excludes(P, "c1"),
        Filter::And(vec![]),
        Filter::Bucket(BucketCmp::Lt(5_000)),
        Filter::Not(Box::new(Filter::Bucket(BucketCmp::Lt(5_000)))),
        Filter::Or(vec![
            Filter::includes(P, "c2"),
            Filter::Bucket(BucketCmp::Ge(9_000)),
        ]),
        attr("plan", AttrCmp::Equals("pro".into())),
        attr("plan", AttrCmp::DoesNotExist),
        attr("visits", AttrCmp::Ge("100".parse().unwrap())),
        attr("visits", AttrCmp::Lt("-5".parse().unwrap())),
        attr("subscribed", AttrCmp::IsTrue),
        attr("subscribed", AttrCmp::IsFalse),
    ]
}

fn attr(name: &str, cmp: AttrCmp) -> Filter {
    Filter::Attribute {
        attribute: name.into(),
        cmp,
    }
}

/// Checks every way of reading a segment against the reference evaluator
/// (whose universe leaves the deleted users out) and that none of
/// `gone` appears anywhere.
fn assert_consistent(h: &WorkspaceHandle, gone: &RoaringBitmap) {
    let ws = h.read();
    assert!(gone.is_subset(ws.users.deleted()), "{gone:?} deleted");
    let live = ws.users.live_len();
    drop(ws);
    for f in filters() {
        let want: Vec<u32> = {
            let ws = h.read();
            reference::members(&*ws, &f)
                .unwrap()
                .iter()
                .map(|u| u.0)
                .collect()
        };
        assert!(want.iter().all(|u| !gone.contains(*u)), "{f}");
        assert_eq!(count(h, &f), want.len() as u64, "count of {f}");
        // Twice: the second from the result cache.
        assert_eq!(count(h, &f), want.len() as u64, "cached count of {f}");
        assert_eq!(members(h, &f), want, "members of {f}");
    }
    assert_eq!(count(h, &Filter::And(vec![])), live);
    // Saved segments, kept live, agree with a fresh count.
    let ws = h.read();
    let ids: Vec<String> = ws.segments.keys().cloned().collect();
    drop(ws);
    for id in ids {
        let size = h.live().len(&id);
        let fresh = {
            let ws = h.read();
            let f = ws.segments[&id].filter.clone();
            reference::count(&*ws, &f).unwrap()
        };
        assert_eq!(size, Some(fresh), "live segment {id}");
        let page = service::member_page(h, &Target::Segment(id.clone()), None, 1_000_000)
            .unwrap()
            .members;
        assert!(page.iter().all(|u| !gone.contains(*u)), "segment {id}");
    }
}

fn set_up(dir: &Path) -> Arc<Engine> {
    let e = open(dir);
    e.create_workspace("w").unwrap();
    let h = handle(&e);
    add_users(&h, 0, 300);
    import(&h, "c1", &(0..300).step_by(2).collect::<Vec<_>>());
    import(&h, "c2", &(0..300).step_by(3).collect::<Vec<_>>());
    for u in (0..300).step_by(5) {
        h.set_attributes(
            &ext(u),
            &[(
                "plan".into(),
                segq::attributes::AttrInput::Json(json!(if u % 2 == 0 { "pro" } else { "free" })),
            )],
        )
        .unwrap();
    }
    for u in (0..300).step_by(3) {
        let visits = (i64::from(u) * 7919) % 1000 - 10;
        h.set_attributes(
            &ext(u),
            &[
                (
                    "visits".into(),
                    segq::attributes::AttrInput::Json(json!(visits)),
                ),
                (
                    "subscribed".into(),
                    segq::attributes::AttrInput::Json(json!(u % 2 == 0)),
                ),
            ],
        )
        .unwrap();
    }
    for (i, f) in filters().into_iter().enumerate() {
        h.save_segment(None, &format!("s{i}"), &f).unwrap();
    }
    e
}

fn deleted_of(h: &WorkspaceHandle) -> RoaringBitmap {
    (**h.read().users.deleted()).clone()
}

#[test]
fn deleted_users_are_in_no_count_page_check_or_segment_across_restart_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let e = set_up(dir.path());
    let h = handle(&e);
    assert_consistent(&h, &RoaringBitmap::new());
    // Warm the caches with every filter first.
    for f in filters() {
        count(&h, &f);
    }
    // One by each kind of identifier, then many at once (some named twice,
    // some unknown).
    let by_kind = [
        UserRef::ExternalId("u0".into()),
        UserRef::DeviceId("d3".into()),
        UserRef::Alias {
            label: "email".into(),
            name: "10@x".into(),
        },
    ];
    for r in &by_kind {
        let d = h.delete_users(std::slice::from_ref(r)).unwrap();
        assert_eq!((d.deleted, d.not_found.len()), (1, 0), "{r}");
    }
    let mut many: Vec<UserRef> = (100..200).map(ext).collect();
    many.push(UserRef::DeviceId("d150".into())); // the same user again
    many.push(UserRef::ExternalId("nobody".into()));
    many.push(UserRef::ExternalId("u0".into())); // deleted already
    let d = h.delete_users(&many).unwrap();
    assert_eq!(d.deleted, 100);
    assert_eq!(d.not_found, vec![101, 102]);
    assert!(d.memberships_removed > 0 && d.values_removed > 0, "{d:?}");
    let gone: RoaringBitmap = [0u32, 3, 10].into_iter().chain(100..200).collect();
    assert_eq!(deleted_of(&h), gone);
    assert_consistent(&h, &gone);
    {
        let ws = h.read();
        for u in &gone {
            assert_eq!(ws.users.get(UserId(u)), None);
            assert!(ws.attributes.values_of(u).is_empty());
            for c in ws.cohorts.iter_sorted() {
                assert!(!c.members.contains(u).unwrap());
            }
        }
        assert_eq!(ws.users.live_len(), 300 - 103);
    }
    // Checks: an identifier of a deleted user names nobody.
    let every = Filter::And(vec![]);
    for r in by_kind.iter().chain([&ext(150)]) {
        let c = check(&h, &every, r);
        assert_eq!(c["member"], false, "{r}: {c}");
        assert!(c["reason"].as_str().unwrap().contains("no user"), "{c}");
    }
    let c = service::check_user(&h, &Target::Segment("seg_missing".into()), &ext(1));
    assert!(c.is_err());

    // Restarted: the log replays the deletions.
    drop(h);
    drop(e);
    let e = open(dir.path());
    let h = handle(&e);
    assert_eq!(deleted_of(&h), gone);
    assert_consistent(&h, &gone);
    // Compacted: the snapshot holds none of their identifiers.
    e.compact("w").unwrap();
    assert_consistent(&h, &gone);
    let snap = h.read().users.snapshot().unwrap().clone();
    for u in &gone {
        for r in [
            UserRef::ExternalId(format!("u{u}")),
            UserRef::DeviceId(format!("d{u}")),
            UserRef::Alias {
                label: "email".into(),
                name: format!("{u}@x"),
            },
        ] {
            assert_eq!(snap.lookup(&r).unwrap(), None, "{r} in the snapshot");
        }
    }
    assert_eq!(snap.version(), 5);
    drop(h);
    drop(e);
    let e = open(dir.path());
    let h = handle(&e);
    assert_eq!(deleted_of(&h), gone);
    assert_consistent(&h, &gone);
    assert_eq!(h.read().users.len(), 300, "deleted ids stay holes");
}

#[test]
fn freed_identifiers_make_a_new_user_and_deleted_ids_are_never_given_again() {
    let dir = tempfile::tempdir().unwrap();
    let e = set_up(dir.path());
    let h = handle(&e);
    h.delete_users(&[ext(299), ext(7)]).unwrap();
    // The freed identifiers, all three kinds, make one new user.
    let up = h
        .upsert_user(NewUser {
            external_id: Some("u7".into()),
            devices: vec!["d7".into(), "d299".into()],
            aliases: vec![("email".into(), "7@x".into())],
            bucket: None,
        })
        .unwrap();
    assert!(up.created);
    assert_eq!(up.user, UserId(300), "a new id, not the hole");
    let ws = h.read();
    assert_eq!(ws.users.lookup(&ext(7)), Some(UserId(300)));
    assert_eq!(
        ws.users.lookup(&UserRef::DeviceId("d299".into())),
        Some(UserId(300))
    );
    assert!(!ws
        .cohorts
        .iter_sorted()
        .iter()
        .any(|c| c.members.contains(300).unwrap()));
    assert!(ws.attributes.values_of(300).is_empty());
    drop(ws);
    // A partner naming u7 now reaches the new user only.
    import(&h, "c1", &[7]);
    assert_eq!(
        check(&h, &Filter::includes(P, "c1"), &ext(7))["user_id"],
        300
    );
    let gone: RoaringBitmap = [7u32, 299].into_iter().collect();
    assert_consistent(&h, &gone);
    // Across compaction and restart, the new holder keeps them.
    e.compact("w").unwrap();
    drop(h);
    drop(e);
    let e = open(dir.path());
    let h = handle(&e);
    assert_eq!(h.read().users.lookup(&ext(7)), Some(UserId(300)));
    assert_consistent(&h, &gone);
}

#[test]
fn a_merge_moves_identifiers_cohorts_and_missing_values_then_deletes_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let e = set_up(dir.path());
    let h = handle(&e);
    // u9: in c2 (9 % 3), not c1; plan "free". u20: in c1, plan "pro".
    // An anonymous source with a device of its own.
    let anon = h
        .upsert_user(NewUser {
            external_id: None,
            devices: vec!["anon-dev".into()],
            aliases: vec![("cookie".into(), "abc".into())],
            bucket: None,
        })
        .unwrap()
        .user;
    let body = json!({"partner_api_key": "k", "client_secret": "s", "cohort_id": "c3",
        "cohort_changes": [{"device_ids": ["anon-dev"]}]});
    h.import_users(
        P,
        &parse_users_request(body.to_string().as_bytes()).unwrap(),
        Utc::now(),
    )
    .unwrap();
    h.set_attributes(
        &UserRef::DeviceId("anon-dev".into()),
        &[
            (
                "plan".into(),
                segq::attributes::AttrInput::Json(json!("trial")),
            ),
            ("age".into(), segq::attributes::AttrInput::Json(json!(31))),
        ],
    )
    .unwrap();
    let m = h
        .merge_users(&UserRef::DeviceId("anon-dev".into()), &ext(20))
        .unwrap();
    assert_eq!((m.source_user_id, m.target_user_id), (anon.0, 20));
    assert_eq!((m.devices_moved, m.aliases_moved), (1, 1));
    assert_eq!((m.cohorts_joined, m.attributes_taken), (1, 1));
    // An identified source: its external_id is dropped.
    let m = h.merge_users(&ext(9), &ext(20)).unwrap();
    assert_eq!(
        (m.cohorts_joined, m.devices_moved, m.aliases_moved),
        (1, 1, 1)
    );
    let check_target = |h: &WorkspaceHandle| {
        let ws = h.read();
        let t = ws.users.get(UserId(20)).unwrap();
        assert_eq!(t.external_id.as_deref(), Some("u20"));
        let mut devices: Vec<&str> = t.devices.iter().map(|d| &**d).collect();
        devices.sort_unstable();
        assert_eq!(devices, ["anon-dev", "d20", "d9"]);
        assert_eq!(t.aliases.len(), 3);
        for r in [
            UserRef::DeviceId("anon-dev".into()),
            UserRef::DeviceId("d9".into()),
            UserRef::Alias {
                label: "email".into(),
                name: "9@x".into(),
            },
            UserRef::Alias {
                label: "cookie".into(),
                name: "abc".into(),
            },
        ] {
            assert_eq!(ws.users.lookup(&r), Some(UserId(20)), "{r}");
        }
        assert_eq!(
            ws.users.lookup(&ext(9)),
            None,
            "the source's external_id is gone"
        );
        for c in ["c1", "c2", "c3"] {
            assert!(
                ws.cohorts
                    .get(&segq::ids::CohortKey::new(P, c))
                    .unwrap()
                    .members
                    .contains(20)
                    .unwrap(),
                "{c}"
            );
        }
        let values = ws.attributes.values_of(20);
        assert_eq!(
            values["plan"].to_json(),
            json!("pro"),
            "the target's value wins"
        );
        assert_eq!(
            values["age"].to_json(),
            json!(31),
            "the source's fills a gap"
        );
        drop(ws);
        let gone: RoaringBitmap = [9u32, anon.0].into_iter().collect();
        assert_consistent(h, &gone);
    };
    check_target(&h);
    assert_eq!(
        check(&h, &Filter::includes(P, "c3"), &ext(20))["member"],
        true
    );
    // Refused, changing nothing: unknown source or target (named), the
    // same user twice, a deleted one.
    let before = h.read().users.deleted().len();
    let e1 = h.merge_users(&ext(9), &ext(20)).unwrap_err().to_string();
    assert!(e1.contains("u9") && e1.contains("source"), "{e1}");
    let e2 = h.merge_users(&ext(21), &ext(999)).unwrap_err().to_string();
    assert!(e2.contains("u999") && e2.contains("target"), "{e2}");
    let e3 = h
        .merge_users(&ext(21), &UserRef::DeviceId("d21".into()))
        .unwrap_err();
    assert!(matches!(e3, segq::Error::InvalidArgument(_)), "{e3}");
    assert_eq!(h.read().users.deleted().len(), before);
    drop(h);
    drop(e);
    let e = open(dir.path());
    check_target(&handle(&e));
    e.compact("w").unwrap();
    check_target(&handle(&e));
    drop(e);
    let e = open(dir.path());
    check_target(&handle(&e));
}

#[test]
fn a_rename_frees_the_old_external_id_across_restart_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let e = set_up(dir.path());
    let h = handle(&e);
    // A snapshot user (from the compaction) and one created since.
    e.compact("w").unwrap();
    add_users(&h, 300, 1);
    assert_eq!(h.rename_external_id("u5", "renamed-5").unwrap(), UserId(5));
    assert_eq!(
        h.rename_external_id("u300", "renamed-300").unwrap(),
        UserId(300)
    );
    // Renamed twice: only the last counts.
    h.rename_external_id("renamed-5", "again-5").unwrap();
    // Refused, changing nothing: unknown, taken, anonymous.
    assert!(matches!(
        h.rename_external_id("nobody", "x").unwrap_err(),
        segq::Error::UnknownUser(_)
    ));
    assert!(matches!(
        h.rename_external_id("u6", "u8").unwrap_err(),
        segq::Error::DuplicateExternalId { .. }
    ));
    assert!(matches!(
        h.rename_external_id("u6", "").unwrap_err(),
        segq::Error::InvalidIdentifier { .. }
    ));
    let check_names = |h: &WorkspaceHandle| {
        let ws = h.read();
        assert_eq!(
            ws.users.lookup(&UserRef::ExternalId("again-5".into())),
            Some(UserId(5))
        );
        assert_eq!(
            ws.users.lookup(&UserRef::ExternalId("renamed-5".into())),
            None
        );
        assert_ne!(ws.users.lookup(&ext(5)), Some(UserId(5)));
        assert_eq!(ws.users.external_id(UserId(5)).as_deref(), Some("again-5"));
        assert_eq!(
            ws.users.lookup(&UserRef::ExternalId("renamed-300".into())),
            Some(UserId(300))
        );
        assert_eq!(ws.users.lookup(&ext(300)), None);
        assert_eq!(ws.users.lookup(&ext(6)), Some(UserId(6)));
        drop(ws);
        // Memberships stay: the user is the same.
        assert_eq!(
            check(
                h,
                &Filter::includes(P, "c2"),
                &UserRef::ExternalId("again-5".into())
            )["member"],
            false
        );
        assert_eq!(
            check(
                h,
                &Filter::includes(P, "c1"),
                &UserRef::ExternalId("again-5".into())
            )["user_id"],
            5
        );
    };
    check_names(&h);
    assert_eq!(h.read().users.lookup(&ext(5)), None);
    // The freed one is free: a new user takes it.
    let up = h
        .upsert_user(NewUser {
            external_id: Some("u5".into()),
            ..NewUser::default()
        })
        .unwrap();
    assert_eq!(up.user, UserId(301));
    drop(h);
    drop(e);
    let e = open(dir.path());
    check_names(&handle(&e));
    e.compact("w").unwrap();
    check_names(&handle(&e));
    assert_eq!(handle(&e).read().users.lookup(&ext(5)), Some(UserId(301)));
    drop(e);
    let e = open(dir.path());
    check_names(&handle(&e));
    assert_eq!(handle(&e).read().users.lookup(&ext(5)), Some(UserId(301)));
}

#[test]
fn lifecycle_changes_between_a_compactions_freeze_and_rebase_stay() {
    // A workspace frozen, then changed, then rebased onto the snapshot of
    // the frozen state: what came after the freeze stays in memory.
    let dir = tempfile::tempdir().unwrap();
    let e = set_up(dir.path());
    let h = handle(&e);
    h.delete_users(&[ext(1)]).unwrap();
    h.rename_external_id("u2", "two").unwrap();
    let frozen = h.read().clone();
    let bytes = segq::engine::persist::write_snapshot(&frozen, 1).unwrap();
    let snap = Arc::new(segq::snapshot::Snapshot::from_bytes(bytes, "frozen").unwrap());
    let mut live = h.read().clone();
    let report = live.delete_users(&[UserId(4), UserId(2)]).unwrap();
    assert!(report.memberships > 0);
    live.users.rename_external_id(UserId(6), "six").unwrap();
    live.users
        .create(NewUser {
            external_id: Some("u4".into()),
            devices: vec!["d2".into()],
            ..NewUser::default()
        })
        .unwrap();
    live.merge_users(UserId(8), UserId(12)).unwrap();
    let before = describe(&live);
    live.rebase(&frozen, snap).unwrap();
    assert_eq!(describe(&live), before);
    let ws = &live;
    assert_eq!(ws.users.lookup(&UserRef::ExternalId("two".into())), None);
    assert_eq!(ws.users.lookup(&ext(4)), Some(UserId(300)));
    assert_eq!(
        ws.users.lookup(&UserRef::DeviceId("d2".into())),
        Some(UserId(300))
    );
    assert_eq!(
        ws.users.lookup(&UserRef::ExternalId("six".into())),
        Some(UserId(6))
    );
    assert_eq!(ws.users.lookup(&ext(6)), None);
    assert_eq!(
        ws.users.lookup(&UserRef::DeviceId("d8".into())),
        Some(UserId(12))
    );
}

/// Every user's identifiers and every cohort's members, as text.
fn describe(ws: &segq::Workspace) -> String {
    let mut out = String::new();
    for u in 0..ws.users.len() {
        out += &format!("{u}: {:?}\n", ws.users.get(UserId(u)));
    }
    for c in ws.cohorts.iter_sorted() {
        out += &format!(
            "{}: {:?}\n",
            c.key,
            c.members.iter().unwrap().collect::<Vec<_>>()
        );
    }
    out
}

// ----- HTTP -----

fn post(s: &InProcess, path: &str, body: Value) -> (u16, Value) {
    let r = s.admin_post(path, &body);
    let v = serde_json::from_str(&r.text).unwrap_or(Value::Null);
    (r.status, v)
}

#[test]
fn the_users_delete_merge_and_rename_routes_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = InProcess::start(&data, None);
    s.create_workspace("acme");
    for i in 0..5 {
        s.upsert_user(
            "acme",
            &json!({"external_id": format!("u{i}"), "devices": [format!("d{i}")],
                    "aliases": [{"alias_label": "email", "alias_name": format!("{i}@x")}]}),
        );
    }
    let count = |s: &InProcess, f: &str| {
        s.admin_post("/workspaces/acme/segments/count", &json!({"filter": f}))
            .expect_json(200)["count"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(count(&s, "random_bucket >= 0"), 5);
    let del = "/admin/workspaces/acme/users/delete";
    // Bad input: a 400 naming the position, nothing deleted.
    for bad in [
        json!({"users": []}),
        json!({"users": [{"external_id": "u0"}, {"phone": "1"}]}),
        json!({"users": [{"external_id": "u0"}, "u1"]}),
        json!({"users": [{"external_id": "u0"}], "extra": 1}),
        json!({"user": {"external_id": "u0"}}),
    ] {
        let (status, v) = post(&s, del, bad.clone());
        assert_eq!(status, 400, "{bad}: {v}");
    }
    let (_, v) = post(
        &s,
        del,
        json!({"users": [{"external_id": "u0"}, {"phone": "1"}]}),
    );
    assert!(v["message"].as_str().unwrap().contains("users[1]"), "{v}");
    let too_many: Vec<Value> = (0..100_001)
        .map(|i| json!({"external_id": format!("x{i}")}))
        .collect();
    let (status, v) = post(&s, del, json!({"users": too_many}));
    assert_eq!(status, 400, "{v}");
    assert_eq!(count(&s, "random_bucket >= 0"), 5);
    // By each kind of identifier, and one unknown.
    let (status, v) = post(
        &s,
        del,
        json!({"users": [{"external_id": "u0"}, {"device_id": "d1"},
                         {"alias_label": "email", "alias_name": "2@x"}, {"external_id": "nobody"}]}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["deleted"], 3);
    assert_eq!(v["not_found"], 1);
    assert_eq!(v["not_found_positions"], json!([3]));
    assert_eq!(v["user_ids"], json!([0, 1, 2]));
    assert_eq!(count(&s, "random_bucket >= 0"), 2);
    assert_eq!(
        count(&s, "not random_bucket < 5000") + count(&s, "random_bucket < 5000"),
        2
    );
    let r = s.admin_post(
        "/workspaces/acme/segments/members",
        &json!({"filter": "random_bucket >= 0"}),
    );
    assert_eq!(r.status, 200);
    assert!(
        !r.text.contains("u0") && !r.text.contains("u1") && r.text.contains("u3"),
        "{}",
        r.text
    );
    let r = s
        .admin_post(
            "/workspaces/acme/segments/check",
            &json!({"filter": "random_bucket >= 0", "user": {"device_id": "d1"}}),
        )
        .expect_json(200);
    assert_eq!(r["member"], false);
    let listed = s.admin_get("/admin/workspaces").expect_json(200);
    assert_eq!(listed[0]["users"], 2, "{listed}");

    // Merge: u3 into u4.
    let merge = "/admin/workspaces/acme/users/merge";
    let (status, v) = post(
        &s,
        merge,
        json!({"source": {"external_id": "u3"}, "target": {"device_id": "d4"}}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["source_user_id"].clone(), v["user_id"].clone()),
        (json!(3), json!(4))
    );
    assert_eq!(v["device_ids_moved"], 1);
    let (status, v) = post(
        &s,
        merge,
        json!({"source": {"external_id": "u3"}, "target": {"external_id": "u4"}}),
    );
    assert_eq!(status, 404, "{v}");
    assert!(v["message"].as_str().unwrap().contains("source"), "{v}");
    let (status, v) = post(
        &s,
        merge,
        json!({"source": {"external_id": "u4"}, "target": {"external_id": "zz"}}),
    );
    assert_eq!(status, 404, "{v}");
    assert!(v["message"].as_str().unwrap().contains("target"), "{v}");
    let (status, _) = post(
        &s,
        merge,
        json!({"source": {"external_id": "u4"}, "target": {"device_id": "d3"}}),
    );
    assert_eq!(status, 400, "the same user");
    let r = s
        .admin_post(
            "/workspaces/acme/segments/check",
            &json!({"filter": "random_bucket >= 0", "user": {"device_id": "d3"}}),
        )
        .expect_json(200);
    assert_eq!(
        (r["member"].clone(), r["user_id"].clone()),
        (json!(true), json!(4))
    );

    // Rename.
    let rename = "/admin/workspaces/acme/users/rename";
    s.upsert_user("acme", &json!({"external_id": "u5"}));
    let (status, v) = post(
        &s,
        rename,
        json!({"external_id": "u4", "new_external_id": "u5"}),
    );
    assert_eq!(status, 409, "{v}");
    let (status, v) = post(
        &s,
        rename,
        json!({"external_id": "nobody", "new_external_id": "x"}),
    );
    assert_eq!(status, 404, "{v}");
    let (status, v) = post(
        &s,
        rename,
        json!({"external_id": "u4", "new_external_id": "four"}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["user_id"], 4);
    let r = s.admin_post(
        "/workspaces/acme/segments/members",
        &json!({"filter": "random_bucket >= 0"}),
    );
    assert!(
        r.text.contains("four") && !r.text.contains("u4"),
        "{}",
        r.text
    );

    // All of it after a restart, and after a compaction and a restart.
    let token = s.stop();
    let s = InProcess::start(&data, Some(token));
    assert_eq!(count(&s, "random_bucket >= 0"), 2);
    s.engine().compact("acme").unwrap();
    let token = s.stop();
    let s = InProcess::start(&data, Some(token));
    assert_eq!(count(&s, "random_bucket >= 0"), 2);
    let r = s.admin_post(
        "/workspaces/acme/segments/members",
        &json!({"filter": "random_bucket >= 0"}),
    );
    assert!(
        r.text.contains("four") && r.text.contains("u5") && !r.text.contains("u4"),
        "{}",
        r.text
    );
    let r = s
        .admin_post(
            "/workspaces/acme/segments/check",
            &json!({"filter": "random_bucket >= 0", "user": {"device_id": "d3"}}),
        )
        .expect_json(200);
    assert_eq!(r["user_id"], 4);
}

// ----- the command line -----

#[test]
fn segq_users_delete_merge_and_rename_work_on_a_data_directory() {
    use crate::support::server::segq;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let users = dir.path().join("users.jsonl");
    let lines: String = (0..6)
        .map(|i| format!("{{\"external_id\": \"u{i}\", \"devices\": [\"d{i}\"]}}\n"))
        .collect();
    std::fs::write(&users, lines).unwrap();
    let ids = dir.path().join("delete.txt");
    std::fs::write(&ids, "u0\n\ndevice_id:d1\nnobody\n").unwrap();
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let run = |args: &[&str]| {
        let out = segq(args);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        );
        (out.status.success(), stdout, stderr)
    };
    let (ok, _, stderr) = run(&[
        "users",
        "import",
        &p(&users),
        "--data",
        &p(&data),
        "--workspace",
        "acme",
        "--create-workspace",
    ]);
    assert!(ok, "{stderr}");
    let local = ["--data", &p(&data), "--workspace", "acme"];
    let with = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&local);
        run(&all)
    };
    let (ok, stdout, stderr) = with(&["users", "delete", "--file", &p(&ids), "alias:email:none"]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("deleted 2, not found 2"), "{stdout}");
    let (ok, stdout, stderr) = with(&["users", "merge", "u2", "device_id:d3"]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("merged user 2 into 3"), "{stdout}");
    let (ok, _, stderr) = with(&["users", "merge", "u2", "u3"]);
    assert!(
        !ok && stderr.contains("u2") && stderr.contains("source"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = with(&["users", "rename", "u3", "three"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("user 3: external id three"), "{stdout}");
    let (ok, _, stderr) = with(&["users", "rename", "u4", "u5"]);
    assert!(!ok && stderr.contains("u5"), "{stderr}");
    let (ok, stdout, stderr) = with(&["count", "random_bucket >= 0"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"count\":3"), "{stdout}");
    let (ok, stdout, _) = with(&["members", "random_bucket >= 0", "--format", "csv"]);
    assert!(ok);
    let listed: Vec<&str> = stdout
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(listed, ["three", "u4", "u5"], "{stdout}");
    let (ok, stdout, _) = with(&["check", "random_bucket >= 0", "device_id:d2"]);
    assert!(ok);
    assert!(
        stdout.contains("\"member\":true") && stdout.contains("\"user_id\":3"),
        "{stdout}"
    );
}
