//! Custom attributes: set and unset through the users API (one user, bulk
//! JSON Lines and CSV), typed and checked (a wrong type is a 400 naming
//! the attribute and changes nothing), listed for the builder, and kept
//! across restarts (log replay) and compactions (snapshot section).

use std::path::Path;
use std::sync::Arc;

use segq::attributes::{AttrInput, AttrType, AttrValue};
use segq::engine::{Engine, WorkspaceHandle};
use segq::users::NewUser;
use segq::UserRef;
use serde_json::{json, Value};

use crate::support::server::Server;

fn open(dir: &Path) -> Arc<Engine> {
    Engine::open(dir).unwrap().0
}

fn user(i: u32) -> NewUser {
    NewUser {
        external_id: Some(format!("u{i}")),
        ..NewUser::default()
    }
}

fn json_inputs(v: Value) -> Vec<(String, AttrInput)> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), AttrInput::Json(v.clone())))
        .collect()
}

fn values(h: &WorkspaceHandle, i: u32) -> Value {
    let ws = h.read();
    let id = ws
        .users
        .lookup(&UserRef::ExternalId(format!("u{i}")))
        .unwrap();
    Value::Object(
        ws.attributes
            .values_of(id.0)
            .into_iter()
            .map(|(k, v)| (k, v.to_json()))
            .collect(),
    )
}

/// Every user's values, as text (what must survive a restart).
fn all_values(h: &WorkspaceHandle) -> String {
    let ws = h.read();
    (0..ws.users.len())
        .map(|u| format!("{u}: {:?}\n", ws.attributes.values_of(u)))
        .collect()
}

#[test]
fn attributes_are_typed_checked_whole_and_kept_across_restart_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    engine.create_workspace("w").unwrap();
    let h = engine.workspace("w").unwrap();
    h.declare_attribute("lifetime_spend", AttrType::Decimal)
        .unwrap();
    // Declaring another type is refused; the same type is a no-op.
    assert!(h
        .declare_attribute("lifetime_spend", AttrType::Integer)
        .is_err());
    h.declare_attribute("lifetime_spend", AttrType::Decimal)
        .unwrap();
    let batch = (0..50u32)
        .map(|i| {
            let country = ["BR", "DE", "US"][i as usize % 3];
            (
                user(i),
                json_inputs(json!({
                    "country": country,
                    "lifetime_spend": i * 10,
                    "email_subscribed": i % 2 == 0,
                    "last_seen_at": format!("2026-11-{:02}T10:00:00Z", 1 + i % 28),
                    "sessions": i,
                })),
            )
        })
        .collect();
    let r = h.upsert_users_with(batch).unwrap();
    assert!(r.failed.is_empty(), "{r:?}");
    // A declared decimal took integers.
    assert_eq!(values(&h, 3)["lifetime_spend"], json!(30.0));
    assert_eq!(values(&h, 3)["last_seen_at"], json!("2026-11-04T10:00:00Z"));

    // A wrong type names the attribute and changes nothing of the request.
    let before = values(&h, 4);
    let e = h
        .set_attributes(
            &UserRef::ExternalId("u4".into()),
            &json_inputs(json!({"country": "AR", "sessions": "many"})),
        )
        .unwrap_err();
    assert!(e.to_string().contains("attribute sessions"), "{e}");
    assert_eq!(values(&h, 4), before);
    // In a batch, that user is refused whole and the others applied.
    let r = h
        .upsert_users_with(vec![
            (user(60), json_inputs(json!({"sessions": true}))),
            (user(61), json_inputs(json!({"sessions": 7}))),
        ])
        .unwrap();
    assert_eq!((r.created, r.failed.len()), (1, 1), "{r:?}");
    assert!(r.failed[0].1.contains("attribute sessions"), "{r:?}");
    assert!(h
        .read()
        .users
        .lookup(&UserRef::ExternalId("u60".into()))
        .is_none());

    // Unset with null.
    h.set_attributes(
        &UserRef::ExternalId("u5".into()),
        &json_inputs(json!({"country": null, "sessions": 99})),
    )
    .unwrap();
    assert!(values(&h, 5).get("country").is_none());
    assert_eq!(values(&h, 5)["sessions"], json!(99));

    let want = all_values(&h);
    let listed = serde_json::to_value(h.read().attributes.summaries(2)).unwrap();
    drop(h);
    drop(engine);
    // After a restart (log replay) and after a compaction (snapshot).
    let engine = open(dir.path());
    let h = engine.workspace("w").unwrap();
    assert_eq!(all_values(&h), want);
    h.compact().unwrap();
    assert_eq!(all_values(&h), want);
    drop(h);
    drop(engine);
    let engine = open(dir.path());
    let h = engine.workspace("w").unwrap();
    assert_eq!(all_values(&h), want);
    assert_eq!(
        serde_json::to_value(h.read().attributes.summaries(2)).unwrap(),
        listed
    );
    // Changes after the compaction are logged on top of the snapshot.
    h.set_attributes(
        &UserRef::ExternalId("u6".into()),
        &json_inputs(json!({"country": "FR", "lifetime_spend": 1.25})),
    )
    .unwrap();
    let want = all_values(&h);
    drop(h);
    drop(engine);
    let engine = open(dir.path());
    let h = engine.workspace("w").unwrap();
    assert_eq!(all_values(&h), want);
    assert_eq!(
        h.read().attributes.get("lifetime_spend").unwrap().get(6),
        Some(AttrValue::Decimal(12_500))
    );
}

#[test]
fn the_users_api_sets_lists_and_refuses_attributes_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &[]);
    s.create_workspace("w");
    let id = s.upsert_user(
        "w",
        &json!({"external_id": "ann", "attributes": {"country": "BR", "lifetime_spend": 120.5,
            "email_subscribed": true, "last_seen_at": "2026-11-01T10:00:00Z"}}),
    );
    // A wrong type: 400 naming the attribute; nothing of the request applied.
    let r = s.admin_post(
        "/admin/workspaces/w/users/attributes",
        &json!({"user": {"external_id": "ann"}, "attributes": {"country": "AR", "email_subscribed": "yes"}}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.message().contains("email_subscribed"), "{}", r.text);
    let r = s
        .admin_post(
            "/admin/workspaces/w/users/attributes",
            &json!({"user": {"external_id": "ann"}, "attributes": {"lifetime_spend": null}}),
        )
        .expect_json(200);
    assert_eq!(r["user_id"], json!(id));
    assert_eq!(
        r["attributes"],
        json!({"country": "BR", "email_subscribed": true, "last_seen_at": "2026-11-01T10:00:00Z"})
    );
    // An unknown user is a 404; a bad name a 400; a bad declared type a 400.
    let r = s.admin_post(
        "/admin/workspaces/w/users/attributes",
        &json!({"user": {"external_id": "nobody"}, "attributes": {"country": "AR"}}),
    );
    assert_eq!(r.status, 404, "{}", r.text);
    let r = s.admin_post(
        "/admin/workspaces/w/users",
        &json!({"external_id": "bob", "attributes": {"bad name": 1}}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    let r = s.admin_put(
        "/admin/workspaces/w/attributes/plan",
        &json!({"type": "colour"}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    s.admin_put(
        "/admin/workspaces/w/attributes/plan",
        &json!({"type": "string"}),
    )
    .expect(200);
    let r = s.admin_put(
        "/admin/workspaces/w/attributes/country",
        &json!({"type": "integer"}),
    );
    assert_eq!(r.status, 400, "{}", r.text);

    // Bulk: JSON Lines and CSV (typed by the attribute, or inferred).
    let jsonl = "{\"external_id\":\"c1\",\"attributes\":{\"country\":\"DE\",\"plan\":\"pro\"}}\n\
                 {\"external_id\":\"c2\",\"attributes\":{\"country\":7}}\n";
    let r = s
        .request(
            reqwest::Method::POST,
            "/admin/workspaces/w/users/import",
            Some("application/x-ndjson"),
            jsonl.as_bytes().to_vec(),
            true,
        )
        .expect_json(200);
    assert_eq!(
        (r["created"].clone(), r["failed"].clone()),
        (json!(1), json!(1)),
        "{r}"
    );
    let csv = "external_id,attr:country,attr:plan,attr:sessions\nc3,US,00123,5\nc4,,free,x\n";
    let r = s
        .request(
            reqwest::Method::POST,
            "/admin/workspaces/w/users/import",
            Some("text/csv"),
            csv.as_bytes().to_vec(),
            true,
        )
        .expect_json(200);
    // c4's "x" is not an integer (sessions took that type from c3's "5"):
    // c4 is refused whole.
    assert_eq!(
        (r["created"].clone(), r["failed"].clone()),
        (json!(1), json!(1)),
        "{r}"
    );

    let list = s
        .admin_get("/workspaces/w/attributes?top=1")
        .expect_json(200);
    let by_name = |n: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} in {list}"))
    };
    assert_eq!(by_name("country")["type"], json!("string"));
    assert_eq!(by_name("country")["users"], json!(3));
    assert_eq!(by_name("country")["distinct_values"], json!(3));
    assert_eq!(
        by_name("country")["common_values"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // "00123" stays a string: plan was declared a string.
    assert_eq!(by_name("plan")["users"], json!(2));
    assert_eq!(by_name("sessions")["type"], json!("integer"));
    assert_eq!(by_name("email_subscribed")["true_users"], json!(1));
    assert_eq!(
        by_name("last_seen_at")["min"],
        json!("2026-11-01T10:00:00Z")
    );
}

#[test]
fn a_count_request_may_pin_now_for_relative_time_tests() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &[]);
    s.create_workspace("w");
    // Seen at 2020-01-01T00:00Z plus i hours, i = 0..100.
    for i in 0..100i64 {
        let t = segq::attributes::format_time(1_577_836_800 + i * 3_600);
        s.upsert_user(
            "w",
            &json!({"external_id": format!("u{i}"), "attributes": {"last_seen_at": t}}),
        );
    }
    let count = |body: Value| {
        s.admin_post("/workspaces/w/segments/count", &body)
            .expect_json(200)["count"]
            .clone()
    };
    let within = json!("attribute last_seen_at within last 1 days");
    let ago = json!("attribute last_seen_at more than 2 days ago");
    // At 2020-01-03T00:00Z: the last day is hours 24..=48; more than two
    // days ago is before hour 0: nobody.
    let now = "2020-01-03T00:00:00Z";
    assert_eq!(count(json!({"filter": within, "now": now})), json!(25));
    assert_eq!(count(json!({"filter": ago, "now": now})), json!(0));
    // At 2020-01-05T12:00Z (hour 108): the last day is hours 84..=99; more
    // than two days ago is before hour 60.
    let now = "2020-01-05T12:00:00Z";
    assert_eq!(count(json!({"filter": within, "now": now})), json!(16));
    assert_eq!(count(json!({"filter": ago, "now": now})), json!(60));
    // Unpinned, the query's own time (years later): nobody in the last
    // day, everybody more than two days ago.
    assert_eq!(count(json!({"filter": within})), json!(0));
    assert_eq!(count(json!({"filter": ago})), json!(100));
    let r = s.admin_post(
        "/workspaces/w/segments/count",
        &json!({"filter": within, "now": "yesterday"}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.message().contains("now"), "{}", r.text);
}

#[test]
fn every_query_endpoint_may_pin_now_through_saved_segments_too() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &[]);
    s.create_workspace("w");
    // Seen at 2020-01-01T00:00Z plus i hours, i = 0..100.
    for i in 0..100i64 {
        let t = segq::attributes::format_time(1_577_836_800 + i * 3_600);
        s.upsert_user(
            "w",
            &json!({"external_id": format!("u{i}"), "attributes": {"last_seen_at": t}}),
        );
    }
    let within = "attribute last_seen_at within last 1 days";
    let saved = s
        .admin_post(
            "/workspaces/w/segments",
            &json!({"name": "recent", "filter": within}),
        )
        .expect_json(201);
    let id = saved["id"].as_str().unwrap().to_string();
    // At 2020-01-03T00:00Z the last day is hours 24..=48: users u24..=u48.
    let now = "2020-01-03T00:00:00Z";
    let post = |path: &str, body: Value| s.admin_post(&format!("/workspaces/w{path}"), &body);
    let count = |body: Value| post("/segments/count", body).expect_json(200)["count"].clone();
    // By saved segment, and through a reference to it.
    assert_eq!(count(json!({"segment_id": id, "now": now})), json!(25));
    let refers = format!("in_segment {id}");
    assert_eq!(count(json!({"filter": refers, "now": now})), json!(25));
    assert_eq!(count(json!({"segment_id": id})), json!(0));
    // Estimates too (a sample of every bucket is exact).
    let e = post(
        "/segments/count",
        json!({"segment_id": id, "now": now, "estimate": true, "sample_buckets": 10000}),
    )
    .expect_json(200);
    assert_eq!(e["estimate"], json!(25), "{e}");
    // Breakdown.
    let b = post(
        "/segments/breakdown",
        json!({"filter": format!("{within} and not in_segment {id}"), "now": now}),
    )
    .expect_json(200);
    let rows = b["rows"].as_array().unwrap();
    assert_eq!(rows[0]["count"], json!(25), "{b}");
    assert_eq!(rows[1]["count"], json!(75), "{b}");
    assert_eq!(rows[1]["running"], json!(0), "{b}");
    // Members.
    let r = post("/segments/members", json!({"segment_id": id, "now": now}));
    assert_eq!(r.status, 200, "{}", r.text);
    let ids: Vec<String> = r
        .text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["external_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let want: Vec<String> = (24..=48).map(|i| format!("u{i}")).collect();
    assert_eq!(ids, want);
    // One-user and batch checks, and one user against many segments.
    let check = |user: &str, pinned: bool| {
        let mut body = json!({"segment_id": id, "user": {"external_id": user}});
        if pinned {
            body["now"] = json!(now);
        }
        post("/segments/check", body).expect_json(200)["member"].clone()
    };
    assert_eq!(check("u30", true), json!(true));
    assert_eq!(check("u30", false), json!(false));
    assert_eq!(check("u60", true), json!(false));
    let r = post(
        "/segments/check",
        json!({"filter": refers, "now": now, "users": [{"external_id": "u23"}, {"external_id": "u24"}]}),
    )
    .expect_json(200);
    assert_eq!(r["results"][0]["member"], json!(false), "{r}");
    assert_eq!(r["results"][1]["member"], json!(true), "{r}");
    let r = post(
        "/users/segments",
        json!({"user": {"external_id": "u40"}, "segment_ids": [id], "filters": [within], "now": now}),
    )
    .expect_json(200);
    assert_eq!(r["results"][0]["member"], json!(true), "{r}");
    assert_eq!(r["results"][0]["segment_id"], json!(id), "{r}");
    assert_eq!(r["results"][1]["member"], json!(true), "{r}");
    // A bad now is a 400 everywhere.
    for path in [
        "/segments/breakdown",
        "/segments/members",
        "/segments/check",
    ] {
        let r = post(
            path,
            json!({"segment_id": id, "now": "soon", "user": {"external_id": "u1"}}),
        );
        assert_eq!(r.status, 400, "{path}: {}", r.text);
        assert!(r.message().contains("now"), "{path}: {}", r.text);
    }
}

/// A numeric range that compares the bit slices is planned as an
/// `attribute_range` leaf, which the chunk evaluator compares last in its
/// AND, among the users the other filters left (and whole under NOT or
/// OR); a range every value meets, or none, stays an ordinary attribute
/// leaf. Counts agree with the values set either way.
#[test]
fn ranges_are_compared_where_the_plan_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &[]);
    s.create_workspace("w");
    // sessions = i for users 0..100; plan "pro" for the even ones.
    for i in 0..100i64 {
        let plan = if i % 2 == 0 { "pro" } else { "free" };
        s.upsert_user(
            "w",
            &json!({"external_id": format!("u{i}"), "attributes": {"sessions": i, "plan": plan}}),
        );
    }
    let explain = |filter: &str| {
        s.admin_post(
            "/workspaces/w/segments/count?explain=true",
            &json!({ "filter": filter }),
        )
        .expect_json(200)
    };
    let kinds = |c: &Value| -> Vec<String> {
        c["explain"]["evaluation_order"]
            .as_array()
            .expect("leaves")
            .iter()
            .map(|l| l["kind"].as_str().expect("a kind").to_string())
            .collect()
    };
    let c = explain("attribute sessions between 10 and 19 and attribute plan equals \"pro\"");
    assert_eq!(c["count"], json!(5), "{c}");
    let mut k = kinds(&c);
    k.sort();
    assert_eq!(k, ["attribute", "attribute_range"], "{c}");
    let leaf = c["explain"]["evaluation_order"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["kind"] == "attribute_range")
        .unwrap()
        .clone();
    assert_eq!(leaf["at_most"], json!(100), "{c}");
    assert_eq!(leaf["attribute"], json!("sessions"), "{c}");
    // Under NOT, in an OR, and dropped from an AND.
    assert_eq!(
        explain("not attribute sessions between 10 and 19")["count"],
        json!(90)
    );
    assert_eq!(
        explain("attribute sessions < 5 or attribute sessions > 94")["count"],
        json!(10)
    );
    assert_eq!(
        explain("attribute plan equals \"pro\" and not attribute sessions >= 50")["count"],
        json!(25)
    );
    // Every value meets it, or none does: answered from the index at once.
    for (f, n) in [
        ("attribute sessions >= 0", 100),
        ("attribute sessions > 1000", 0),
    ] {
        let c = explain(f);
        assert_eq!(c["count"], json!(n), "{f}: {c}");
        assert!(
            !kinds(&c).contains(&"attribute_range".to_string()),
            "{f}: {c}"
        );
    }
}
