//! Acceptance tests of the partner cohort import server: a real `segq
//! serve` process on loopback, driven by a real HTTP client, for every
//! example and error text of PROTOCOL.md, keys, the limits, the admin API,
//! observability, metrics and a restart.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use segq::Partner;
use serde_json::{json, Value};

use crate::support::server::{
    cohort_body, members_on_disk, metric_in, partner_api_key, segq, users_body, Fixture, Resp,
    Server, PARTNER_API_KEY,
};

/// The platform's texts, spelled out here rather than taken from the
/// crate, so that a changed text fails.
const COHORT_ID: &str = "cohort_id must be a valid string";
const COHORT_CHANGES: &str = "cohort_changes must be an array of objects each with key user_ids and/or device_ids mapping to an array of strings, or an aliases object";
const TOO_MANY: &str = "Only 1,000 user_ids, device_ids, and aliases are allowed per request";
const NAME: &str = "name must be a non-empty string";
const CREATED_AT: &str = "created_at must be a valid time as an ISO-8601 string";
const BAD_PARTNER_KEY: &str = "Invalid Partner API key";
const BAD_CLIENT_SECRET: &str = "Invalid client secret";
const PARTNER_NOT_ENABLED: &str = "Partner not enabled for client";

const SUCCESS: &str = r#"{"message":"success"}"#;

fn user(ext: &str) -> Value {
    json!({"external_id": ext})
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn ids(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("u{i}")).collect()
}

#[test]
fn protocol_examples_create_rename_users_and_credential_test() {
    let f = Fixture::new(&[]);
    let (s, ws) = (&f.server, f.ws.as_str());
    for u in ["u-1", "u-2", "u-3"] {
        s.upsert_user(ws, &user(u));
    }
    s.upsert_user(
        ws,
        &json!({"external_id": "ann",
                "aliases": [{"alias_label": "email", "alias_name": "ann@example.com"}]}),
    );

    // The credential test: an empty cohort_changes succeeds and creates
    // nothing; with a wrong secret it fails.
    let r = s.users("amplitude", &users_body(&f.secret, "c-9f1e", json!([])));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["message"], "success");
    assert!(
        s.cohorts(ws).is_empty(),
        "a credential test creates nothing"
    );
    let r = s.users("amplitude", &users_body("dik_nope", "c-9f1e", json!([])));
    assert_eq!(
        (r.status, r.json()),
        (401, json!({"message": BAD_CLIENT_SECRET}))
    );

    // Create: the example, word for word but for the secret.
    let mut create: Value = serde_json::from_str(
        r#"{"partner_api_key": "123456-1234-1234-12345678",
            "client_secret": "234567-2345-2345-23456789",
            "cohort_id": "c-9f1e",
            "name": "Power users (30d)",
            "created_at": "2021-01-21T19:20:30+05:00"}"#,
    )
    .expect("the example is JSON");
    create["client_secret"] = json!(f.secret);
    let r = s.create_cohort("amplitude", &create);
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json(), serde_json::from_str::<Value>(SUCCESS).unwrap());
    let c = s.cohort(ws, "amplitude", "c-9f1e").expect("listed");
    assert_eq!(c["name"], "Power users (30d)");
    assert_eq!(c["size"], 0);
    assert_eq!(c["created_at"], "2021-01-21T19:20:30+05:00");

    // Rename: the same request with another name is 200.
    create["name"] = json!("Power users (7d)");
    let r = s.create_cohort("amplitude", &create);
    assert_eq!(
        (r.status, r.json()["message"].clone()),
        (200, json!("success"))
    );
    let all = s.cohorts(ws);
    assert_eq!(all.len(), 1, "a rename creates no cohort: {all:?}");
    assert_eq!(all[0]["name"], "Power users (7d)");

    // u-3 is a member before the users example removes it.
    let r = s.users(
        "amplitude",
        &users_body(&f.secret, "c-9f1e", json!([{"user_ids": ["u-3"]}])),
    );
    assert_eq!(r.status, 200, "{}", r.text);

    let mut example: Value = serde_json::from_str(
        r#"{"partner_api_key": "123456-1234-1234-12345678",
            "client_secret": "234567-2345-2345-23456789",
            "cohort_id": "c-9f1e",
            "cohort_changes": [
              {"user_ids": ["u-1", "u-2"], "device_ids": [],
               "aliases": [{"alias_name": "ann@example.com", "alias_label": "email"}]},
              {"user_ids": ["u-3"], "should_remove": true}]}"#,
    )
    .expect("the example is JSON");
    example["client_secret"] = json!(f.secret);
    let r = s.users("amplitude", &example);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json(),
        json!({"message": "success", "matched": 4, "unmatched": 0, "refused_device_ids": 0})
    );
    let c = s.cohort(ws, "amplitude", "c-9f1e").expect("listed");
    assert_eq!(c["size"], 3);
    assert_eq!(
        (c["last_added"].clone(), c["last_removed"].clone()),
        (json!(3), json!(1))
    );

    // `should_remove: null` and missing arrays are accepted.
    let r = s.users(
        "amplitude",
        &users_body(
            &f.secret,
            "c-9f1e",
            json!([{"user_ids": ["u-1"], "should_remove": null, "aliases": null}]),
        ),
    );
    assert_eq!((r.status, r.json()["matched"].clone()), (200, json!(1)));

    // Replaying the create is a 200 and changes nothing; ISO-8601 times in
    // UTC (`Z`) and with fractions of a second are accepted.
    let r = s.create_cohort("amplitude", &create);
    assert_eq!(r.status, 200, "{}", r.text);
    for (id, at) in [
        ("c-utc", "2021-01-21T14:20:30Z"),
        ("c-frac", "2021-01-21T19:20:30.125+05:00"),
        ("c-neg", "2021-01-21T09:20:30-05:00"),
    ] {
        let mut b = cohort_body(&f.secret, id, id);
        b["created_at"] = json!(at);
        let r = s.create_cohort("amplitude", &b);
        assert_eq!(r.status, 201, "{at}: {}", r.text);
    }
    let c = s.cohort(ws, "amplitude", "c-9f1e").expect("listed");
    assert_eq!(
        (c["name"].clone(), c["size"].clone()),
        (json!("Power users (7d)"), json!(3))
    );

    let data = f.data();
    f.server.stop();
    assert_eq!(
        members_on_disk(&data, "acme", Partner::Amplitude, "c-9f1e"),
        set(&["u-1", "u-2", "ann"])
    );
}

#[test]
fn every_error_text_and_no_secret_in_any_response() {
    let f = Fixture::new(&[]);
    let (s, ws) = (&f.server, f.ws.as_str());
    s.upsert_user(ws, &user("u0"));
    let mut answers: Vec<String> = Vec::new();
    let mut check = |r: Resp, status: u16, message: &str, errors: &[&str]| {
        let body = r.json();
        assert_eq!(r.status, status, "{}", r.text);
        assert_eq!(body["message"], message, "{}", r.text);
        if status == 400 {
            assert_eq!(body["errors"], json!(errors), "{}", r.text);
        }
        answers.push(format!("{:?} {}", r.headers, r.text));
    };

    // The five 400 texts.
    let mut b = cohort_body(&f.secret, "c1", "Cohort one");
    b.as_object_mut().unwrap().remove("cohort_id");
    check(
        s.create_cohort("amplitude", &b),
        400,
        COHORT_ID,
        &[COHORT_ID],
    );
    let b = cohort_body(&f.secret, "c1", "");
    check(s.create_cohort("amplitude", &b), 400, NAME, &[NAME]);
    let mut b = cohort_body(&f.secret, "c1", "Cohort one");
    b["created_at"] = json!("21 January 2021");
    check(
        s.create_cohort("amplitude", &b),
        400,
        CREATED_AT,
        &[CREATED_AT],
    );
    // Every problem of a request is listed.
    let mut b = cohort_body(&f.secret, "c1", " ");
    b["created_at"] = json!(17);
    check(
        s.create_cohort("amplitude", &b),
        400,
        NAME,
        &[NAME, CREATED_AT],
    );
    let b = users_body(&f.secret, "c1", json!({"user_ids": ["u0"]}));
    check(
        s.users("amplitude", &b),
        400,
        COHORT_CHANGES,
        &[COHORT_CHANGES],
    );
    let b = users_body(&f.secret, "", json!([]));
    check(s.users("amplitude", &b), 400, COHORT_ID, &[COHORT_ID]);
    let b = users_body(
        &f.secret,
        "c1",
        json!([{"user_ids": ids(0..600)}, {"device_ids": ids(600..1001), "should_remove": true}]),
    );
    check(s.users("amplitude", &b), 400, TOO_MANY, &[TOO_MANY]);

    // A body that is not JSON at all: a clear parse error.
    let r = s.post_raw(
        "/partners/amplitude/cohorts/users",
        Some("application/json"),
        b"cohort_id=c1&user_ids=u0".to_vec(),
    );
    let m = r.message();
    assert!(m.contains("not valid JSON"), "{m}");
    check(r, 400, &m, std::slice::from_ref(&m.as_str()));

    // The three 401 texts.
    let mut b = users_body(&f.secret, "c1", json!([]));
    b["partner_api_key"] = json!("123456-1234-1234-00000000");
    check(s.users("amplitude", &b), 401, BAD_PARTNER_KEY, &[]);
    let b = users_body("234567-2345-2345-23456789", "c1", json!([]));
    check(s.users("amplitude", &b), 401, BAD_CLIENT_SECRET, &[]);
    // The key is amplitude's: mixpanel is not enabled with it.
    let mut b = users_body(&f.secret, "c1", json!([{"user_ids": ["u0"]}]));
    b["partner_api_key"] = json!(partner_api_key("mixpanel"));
    check(s.users("mixpanel", &b), 401, PARTNER_NOT_ENABLED, &[]);
    let mut b = cohort_body(&f.secret, "c1", "Cohort one");
    b["partner_api_key"] = json!(partner_api_key("heap"));
    check(s.create_cohort("heap", &b), 401, PARTNER_NOT_ENABLED, &[]);
    // Amplitude's partner_api_key does not open another partner's door.
    let b = users_body(&f.secret, "c1", json!([]));
    check(s.users("heap", &b), 401, BAD_PARTNER_KEY, &[]);

    // Exactly 1,000 identifiers is allowed.
    let b = users_body(&f.secret, "c1", json!([{"user_ids": ids(0..1000)}]));
    let r = s.users("amplitude", &b);
    assert_eq!(
        (r.json()["matched"].clone(), r.json()["unmatched"].clone()),
        (json!(1), json!(999))
    );
    check(r, 201, "success", &[]);

    for a in &answers {
        assert!(!a.contains(&f.secret), "the secret is echoed: {a}");
        assert!(!a.contains("234567-2345-2345-23456789"), "{a}");
        assert!(!a.contains(PARTNER_API_KEY), "{a}");
    }
    assert_eq!(s.cohorts(ws).len(), 1, "only the valid request created c1");
}

#[test]
fn key_rotation_and_invalidation() {
    let f = Fixture::new(&[]);
    let (s, ws) = (&f.server, f.ws.as_str());
    s.upsert_user(ws, &user("u0"));
    s.upsert_user(ws, &user("u1"));
    let first = f.secret.clone();
    let add = |secret: &str, u: &str| {
        s.users(
            "amplitude",
            &users_body(secret, "c1", json!([{"user_ids": [u]}])),
        )
    };
    assert!(add(&first, "u0").status < 300);

    // Rotation: a second key while the first stays valid.
    let (second_id, second) = s.create_key(ws, "amplitude");
    assert_ne!(first, second);
    assert_eq!(add(&first, "u1").status, 200);
    assert_eq!(add(&second, "u1").status, 200);
    let (_, third) = s.create_key(ws, "amplitude");

    let keys = s.admin_get(&format!("/admin/workspaces/{ws}/keys"));
    assert_eq!(keys.status, 200);
    for k in [&first, &second, &third] {
        assert!(!keys.text.contains(k.as_str()), "a listing shows a key");
    }
    let listed = keys.json();
    let listed = listed.as_array().expect("an array");
    assert_eq!(listed.len(), 3);
    let ids: Vec<&str> = listed.iter().filter_map(|k| k["id"].as_str()).collect();
    assert!(ids.contains(&f.key_id.as_str()) && ids.contains(&second_id.as_str()));
    for k in listed {
        let prefix = k["prefix"].as_str().expect("a prefix");
        assert!(prefix.len() >= 4 && prefix.len() < 20, "{prefix}");
        assert!(k["created_at"].is_string());
        assert!(k["invalidated_at"].is_null());
    }
    let first_info = listed
        .iter()
        .find(|k| k["id"] == f.key_id.as_str())
        .unwrap();
    assert!(first.starts_with(first_info["prefix"].as_str().unwrap()));
    assert!(first_info["last_used"].is_string(), "{first_info}");

    // Invalidation: the key's next request is refused; the others work.
    s.admin_delete(&format!("/admin/workspaces/{ws}/keys/{}", f.key_id))
        .expect(200);
    let r = add(&first, "u0");
    assert_eq!(
        (r.status, r.json()),
        (401, json!({"message": BAD_CLIENT_SECRET}))
    );
    let r = s.create_cohort("amplitude", &cohort_body(&first, "c2", "Two"));
    assert_eq!(r.status, 401);
    assert_eq!(add(&second, "u0").status, 200);
    assert_eq!(add(&third, "u0").status, 200);
    let keys = s
        .admin_get(&format!("/admin/workspaces/{ws}/keys?partner=amplitude"))
        .json();
    let gone = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == f.key_id.as_str())
        .expect("an invalidated key is still listed");
    assert!(gone["invalidated_at"].is_string());
    // An unknown key id is a 404.
    let r = s.admin_delete(&format!("/admin/workspaces/{ws}/keys/key_nope"));
    assert_eq!(r.status, 404);
    assert!(r.json()["message"].is_string());
    assert!(s.cohort(ws, "amplitude", "c2").is_none());
}

#[test]
fn a_replayed_request_gives_the_same_state() {
    let f = Fixture::new(&[]);
    let (s, ws) = (&f.server, f.ws.as_str());
    for i in 0..6 {
        s.upsert_user(ws, &user(&format!("u{i}")));
    }
    s.users(
        "amplitude",
        &users_body(&f.secret, "c1", json!([{"user_ids": ["u4", "u5"]}])),
    )
    .expect(201);
    let body = users_body(
        &f.secret,
        "c1",
        json!([{"user_ids": ["u0", "u1", "u2", "nobody"]},
               {"user_ids": ["u1", "u5"], "should_remove": true}]),
    );
    let first = s.users("amplitude", &body).expect(200).json();
    let after_first = s.cohort(ws, "amplitude", "c1").unwrap();
    assert_eq!(after_first["size"], 3, "{after_first}");
    assert_eq!(after_first["last_added"], 3);
    assert_eq!(after_first["last_removed"], 2);
    for _ in 0..2 {
        let again = s.users("amplitude", &body).expect(200).json();
        assert_eq!(again, first, "a replay is answered the same");
        let c = s.cohort(ws, "amplitude", "c1").unwrap();
        assert_eq!(c["size"], after_first["size"]);
        // u1 is added then removed again: the only changes are no-ops or
        // undo each other.
        assert_eq!(c["last_added"], 1, "{c}");
        assert_eq!(c["last_removed"], 1, "{c}");
    }
    let data = f.data();
    f.server.stop();
    assert_eq!(
        members_on_disk(&data, "acme", Partner::Amplitude, "c1"),
        set(&["u0", "u2", "u4"])
    );
}

#[test]
fn an_unknown_cohort_id_is_created_and_named_by_its_id() {
    let f = Fixture::new(&[]);
    let (s, ws) = (&f.server, f.ws.as_str());
    s.upsert_user(ws, &user("u0"));
    let r = s.users(
        "amplitude",
        &users_body(&f.secret, "never-named", json!([{"user_ids": ["u0"]}])),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["message"], "success");
    let c = s.cohort(ws, "amplitude", "never-named").expect("listed");
    assert_eq!(c["name"], "never-named");
    assert_eq!(c["size"], 1);
    assert!(c["created_at"].is_null());
    let listing = s.workspaces();
    assert_eq!(listing[0]["cohorts"], 1, "{listing}");
    // The next request for it is a 200, and the partner may rename it.
    let r = s.users(
        "amplitude",
        &users_body(&f.secret, "never-named", json!([{"user_ids": ["u0"]}])),
    );
    assert_eq!(r.status, 200);
    s.create_cohort(
        "amplitude",
        &cohort_body(&f.secret, "never-named", "Named at last"),
    )
    .expect(200);
    let c = s.cohort(ws, "amplitude", "never-named").expect("listed");
    assert_eq!(
        (c["name"].clone(), c["size"].clone()),
        (json!("Named at last"), json!(1))
    );
}

#[test]
fn identifiers_that_match_nobody_are_counted_and_sampled() {
    let f = Fixture::new(&[]);
    let (s, ws) = (&f.server, f.ws.as_str());
    s.upsert_user(ws, &user("u0"));
    let before = s.workspaces();
    let r = s.users(
        "amplitude",
        &users_body(
            &f.secret,
            "c1",
            json!([{"user_ids": ["u0", "ghost"], "device_ids": ["dev-ghost"],
                    "aliases": [{"alias_label": "email", "alias_name": "ghost@example.com"}]}]),
        ),
    );
    assert_eq!(
        r.json(),
        json!({"message": "success", "matched": 1, "unmatched": 3, "refused_device_ids": 0})
    );
    let c = s.cohort(ws, "amplitude", "c1").unwrap();
    assert_eq!(c["size"], 1);
    assert_eq!(c["unmatched_total"], 3);
    assert_eq!(c["matched_total"], 1);
    let sample: BTreeSet<String> = c["recent_unmatched"]
        .as_array()
        .expect("a sample")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        sample,
        set(&[
            "user_id:ghost",
            "device_id:dev-ghost",
            "alias:email:ghost@example.com"
        ])
    );
    // The import never creates a user.
    assert_eq!(s.workspaces()[0]["users"], before[0]["users"]);
    // Unmatched identifiers are not billed.
    let points = s
        .admin_get(&format!("/admin/workspaces/{ws}/data_points"))
        .json();
    let billed: u64 = points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data_points"].as_u64().unwrap())
        .sum();
    assert_eq!(billed, 1);
}

#[test]
fn a_device_id_of_an_identified_user_is_refused() {
    let f = Fixture::new(&[]);
    let (s, ws) = (&f.server, f.ws.as_str());
    s.upsert_user(ws, &json!({"devices": ["d-anon"]}));
    s.upsert_user(ws, &json!({"external_id": "known", "devices": ["d-known"]}));
    let r = s.users(
        "amplitude",
        &users_body(
            &f.secret,
            "c1",
            json!([{"device_ids": ["d-anon", "d-known"]}]),
        ),
    );
    assert_eq!(
        r.json(),
        json!({"message": "success", "matched": 1, "unmatched": 0, "refused_device_ids": 1})
    );
    assert_eq!(s.size(ws, "amplitude", "c1"), 1);

    // The anonymous user is identified: its device no longer matches, for
    // a removal either.
    s.admin_post(
        &format!("/admin/workspaces/{ws}/users/identify"),
        &json!({"user": {"device_id": "d-anon"}, "external_id": "was-anon"}),
    )
    .expect(200);
    let r = s.users(
        "amplitude",
        &users_body(
            &f.secret,
            "c1",
            json!([{"device_ids": ["d-anon"], "should_remove": true}]),
        ),
    );
    assert_eq!(
        r.json(),
        json!({"message": "success", "matched": 0, "unmatched": 0, "refused_device_ids": 1})
    );
    let c = s.cohort(ws, "amplitude", "c1").unwrap();
    assert_eq!(c["size"], 1, "membership unchanged: {c}");
    assert_eq!(c["refused_total"], 2);
    assert_eq!(
        (c["last_added"].clone(), c["last_removed"].clone()),
        (json!(0), json!(0))
    );
    // By its external id it is removed.
    let r = s.users(
        "amplitude",
        &users_body(
            &f.secret,
            "c1",
            json!([{"user_ids": ["was-anon"], "should_remove": true}]),
        ),
    );
    assert_eq!(r.json()["matched"], 1);
    assert_eq!(s.size(ws, "amplitude", "c1"), 0);
}

#[test]
fn a_body_over_the_limit_is_413() {
    let f = Fixture::new(&["--max-body-bytes", "2048"]);
    let (s, ws) = (&f.server, f.ws.as_str());
    s.upsert_user(ws, &user("u0"));
    let files_before = f.workspace_files();
    let mut many = ids(0..300);
    many.push("u0".into());
    let big = users_body(&f.secret, "c1", json!([{"user_ids": many}]));
    assert!(serde_json::to_vec(&big).unwrap().len() > 2048);
    let r = s.users("amplitude", &big);
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(r.message().contains("2048 bytes"), "{}", r.text);
    let mut b = cohort_body(&f.secret, "c1", &"n".repeat(1000));
    b["pad"] = json!("x".repeat(1100));
    let r = s.create_cohort("amplitude", &b);
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(!r.text.contains(&f.secret));
    assert!(s.cohorts(ws).is_empty());
    assert_eq!(f.workspace_files(), files_before);
    // A body under the limit goes through.
    let r = s.users(
        "amplitude",
        &users_body(&f.secret, "c1", json!([{"user_ids": ["u0"]}])),
    );
    assert_eq!(r.status, 201, "{}", r.text);
}

#[test]
fn past_the_rate_limit_a_key_gets_429_with_retry_after() {
    let f = Fixture::new(&["--rate-limit-per-hour", "5"]);
    let (s, ws) = (&f.server, f.ws.as_str());
    s.upsert_user(ws, &user("u0"));
    let (_, other) = s.create_key(ws, "amplitude");
    let body = |secret: &str| users_body(secret, "c1", json!([{"user_ids": ["u0"]}]));
    for i in 0..5 {
        let r = s.users("amplitude", &body(&f.secret));
        assert!(
            r.status == 200 || r.status == 201,
            "request {i}: {}",
            r.text
        );
    }
    let r = s.users("amplitude", &body(&f.secret));
    assert_eq!(r.status, 429, "{}", r.text);
    let retry: u64 = r
        .header("retry-after")
        .expect("a Retry-After header")
        .parse()
        .expect("whole seconds");
    // 5 an hour: one token every 720 s.
    assert!((1..=720).contains(&retry), "{retry}");
    assert!(r.message().contains("rate limit"), "{}", r.text);
    // The cohorts endpoint counts against the same key.
    let r = s.create_cohort("amplitude", &cohort_body(&f.secret, "c1", "One"));
    assert_eq!(r.status, 429);
    // Another key of the same workspace has its own allowance.
    let r = s.users("amplitude", &body(&other));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(s.metric("segq_rate_limited_total"), 2.0);
}

#[test]
fn an_unknown_partner_is_404() {
    let f = Fixture::new(&[]);
    let s = &f.server;
    let b = users_body(&f.secret, "c1", json!([]));
    for path in [
        "/partners/nope/cohorts/users",
        "/partners/nope/cohorts",
        "/partners/Amplitude/cohorts/users",
    ] {
        let r = s.post(path, &b);
        assert_eq!(r.status, 404, "{path}: {}", r.text);
        assert!(r.message().contains("unknown partner"), "{}", r.text);
    }
    let r = s.post("/partners/amplitude/cohort", &b);
    assert_eq!(r.status, 404);
    assert!(r.json()["message"].is_string());
}

#[test]
fn the_admin_api_wants_the_bearer_token() {
    let f = Fixture::new(&[]);
    let (s, ws) = (&f.server, f.ws.as_str());
    let routes: Vec<(reqwest::Method, String, &str)> = vec![
        (reqwest::Method::GET, "/admin/workspaces".into(), ""),
        (
            reqwest::Method::POST,
            "/admin/workspaces".into(),
            r#"{"name":"evil"}"#,
        ),
        (
            reqwest::Method::POST,
            format!("/admin/workspaces/{ws}/partners/heap/keys"),
            "{}",
        ),
        (
            reqwest::Method::GET,
            format!("/admin/workspaces/{ws}/keys"),
            "",
        ),
        (
            reqwest::Method::DELETE,
            format!("/admin/workspaces/{ws}/keys/{}", f.key_id),
            "",
        ),
        (
            reqwest::Method::POST,
            format!("/admin/workspaces/{ws}/users"),
            r#"{"external_id":"x"}"#,
        ),
        (
            reqwest::Method::GET,
            format!("/admin/workspaces/{ws}/cohorts"),
            "",
        ),
        (
            reqwest::Method::GET,
            format!("/admin/workspaces/{ws}/data_points"),
            "",
        ),
    ];
    let client = crate::support::server::client();
    for (method, path, body) in &routes {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Basic YWRtaW46YWRtaW4="),
            Some("Bearer "),
        ] {
            let mut req = client
                .request(method.clone(), s.url(path))
                .header("content-type", "application/json")
                .body(body.to_string());
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let r = req.send().expect("answers");
            assert_eq!(r.status().as_u16(), 401, "{method} {path} with {auth:?}");
            assert!(r.headers().contains_key("www-authenticate"));
            let v: Value = r.json().expect("a JSON body");
            assert!(v["message"]
                .as_str()
                .is_some_and(|m| m.contains("admin token")));
        }
    }
    // Nothing happened: the key still works, no workspace or user appeared.
    let r = s.users("amplitude", &users_body(&f.secret, "c1", json!([])));
    assert_eq!(r.status, 200);
    let all = s.workspaces();
    assert_eq!(all, json!([{"name": "acme", "users": 0, "cohorts": 0}]));
    let keys = s.admin_get(&format!("/admin/workspaces/{ws}/keys")).json();
    assert_eq!(keys.as_array().unwrap().len(), 1);
    // The right token, in any case of the scheme, works.
    let r = client
        .get(s.url("/admin/workspaces"))
        .header("authorization", format!("bearer {}", s.token))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn users_over_http_one_by_one_and_in_bulk() {
    let f = Fixture::new(&[]);
    let (s, ws) = (&f.server, f.ws.as_str());
    let path = |p: &str| format!("/admin/workspaces/{ws}{p}");

    // Create, then update the same external_id.
    let r = s.admin_post(
        &path("/users"),
        &json!({"external_id": "alice", "devices": ["d-a1"]}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let alice = r.json()["user_id"].as_u64().unwrap();
    assert_eq!(r.json()["created"], true);
    let r = s.admin_post(
        &path("/users"),
        &json!({"external_id": "alice", "devices": ["d-a2"],
                "aliases": [{"alias_label": "amplitude_id", "alias_name": "amp-1"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json(), json!({"user_id": alice, "created": false}));
    // Aliases and devices on their own routes.
    let r = s.admin_post(
        &path("/users/aliases"),
        &json!({"user": {"external_id": "alice"}, "alias_label": "email", "alias_name": "alice@x.io"}),
    );
    assert_eq!((r.status, r.json()), (200, json!({"user_id": alice})));
    let r = s.admin_post(
        &path("/users/devices"),
        &json!({"user": {"alias_label": "email", "alias_name": "alice@x.io"}, "device_id": "d-a3"}),
    );
    assert_eq!((r.status, r.json()), (200, json!({"user_id": alice})));
    // An anonymous user, identified later.
    let r = s.admin_post(&path("/users"), &json!({"devices": ["d-b"]}));
    assert_eq!(r.status, 201);
    let bob = r.json()["user_id"].as_u64().unwrap();
    let r = s.admin_post(
        &path("/users/identify"),
        &json!({"user": {"device_id": "d-b"}, "external_id": "bob"}),
    );
    assert_eq!((r.status, r.json()), (200, json!({"user_id": bob})));
    // Refusals: an alias held by another user, an unknown user, a bad body.
    let r = s.admin_post(
        &path("/users/aliases"),
        &json!({"user": {"external_id": "bob"}, "alias_label": "email", "alias_name": "alice@x.io"}),
    );
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.json()["message"].is_string());
    let r = s.admin_post(
        &path("/users/devices"),
        &json!({"user": {"external_id": "carol"}, "device_id": "d-c"}),
    );
    assert_eq!(r.status, 404, "{}", r.text);
    let r = s.admin_post(
        &path("/users"),
        &json!({"external_id": "x", "nickname": "y"}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.message().contains("nickname"), "{}", r.text);
    let r = s.admin_post(&path("/users"), &json!({}));
    assert_eq!(r.status, 400, "{}", r.text);

    // Bulk, JSON Lines: line 3 is not JSON, line 4 has an unknown key,
    // line 5 is blank, line 7 takes a device held by alice.
    let jsonl = [
        r#"{"external_id": "j1"}"#,
        r#"{"external_id": "j2", "devices": ["d-j2"], "aliases": [{"alias_label": "email", "alias_name": "j2@x.io"}]}"#,
        r#"{"external_id": "j3""#,
        r#"{"external_id": "j4", "device": ["d-j4"]}"#,
        "",
        r#"{"devices": ["d-j-anon"]}"#,
        r#"{"external_id": "j5", "devices": ["d-a1"]}"#,
        r#"{"external_id": "j1", "aliases": [{"alias_label": "email", "alias_name": "j1@x.io"}]}"#,
    ]
    .join("\n");
    let r = s.request(
        reqwest::Method::POST,
        &path("/users/import"),
        Some("application/x-ndjson"),
        jsonl.into_bytes(),
        true,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(
        (
            v["created"].clone(),
            v["updated"].clone(),
            v["failed"].clone()
        ),
        (json!(3), json!(1), json!(3)),
        "{v}"
    );
    let lines: Vec<u64> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![3, 4, 7], "{v}");
    for e in v["errors"].as_array().unwrap() {
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    // Bulk, CSV: line 4 has a field too many; line 5 adds a second device
    // to c1 (an update).
    let csv = "external_id,device_id,alias_label,alias_name\n\
               c1,d-c1,email,c1@x.io\n\
               c2,,,\n\
               c3,d-c3,email,c3@x.io,extra\n\
               c1,d-c1b,,\n\
               ,d-c-anon,,\n";
    let r = s.request(
        reqwest::Method::POST,
        &path("/users/import"),
        Some("text/csv"),
        csv.as_bytes().to_vec(),
        true,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(
        (
            v["created"].clone(),
            v["updated"].clone(),
            v["failed"].clone()
        ),
        (json!(3), json!(1), json!(1)),
        "{v}"
    );
    let lines: Vec<u64> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![4], "{v}");
    // A CSV without a usable header is refused whole.
    let r = s.request(
        reqwest::Method::POST,
        &path("/users/import"),
        Some("text/csv"),
        b"name,colour\nx,y\n".to_vec(),
        true,
    );
    assert_eq!(r.status, 400, "{}", r.text);

    // alice, bob, 3 from JSON Lines, 3 from CSV.
    assert_eq!(s.workspaces()[0]["users"], 8);

    // Everything loaded is matched by the partner import.
    let r = s.users(
        "amplitude",
        &users_body(
            &f.secret,
            "c-all",
            json!([{"user_ids": ["alice", "bob", "j1", "j2", "c1", "c2", "j3", "j4", "c3", "j5"],
                    "aliases": [{"alias_label": "amplitude_id", "alias_name": "amp-1"},
                                {"alias_label": "email", "alias_name": "j1@x.io"},
                                {"alias_label": "email", "alias_name": "j2@x.io"},
                                {"alias_label": "email", "alias_name": "c1@x.io"}],
                    "device_ids": ["d-j-anon", "d-c-anon", "d-c1b", "d-a3"]}]),
        ),
    );
    assert_eq!(
        r.json(),
        json!({"message": "success", "matched": 12, "unmatched": 4, "refused_device_ids": 2}),
        "{}",
        r.text
    );
    assert_eq!(s.size(ws, "amplitude", "c-all"), 8);
}

fn parse_time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("a time: {v}")))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

#[test]
fn observability_per_cohort_and_data_points_per_partner_and_day() {
    let f = Fixture::new(&[]);
    let (s, ws) = (&f.server, f.ws.as_str());
    for i in 0..10 {
        s.upsert_user(ws, &user(&format!("u{i}")));
    }
    let (_, heap) = s.create_key(ws, "heap");
    let heap_body = |cohort: &str, changes: Value| {
        let mut b = users_body(&heap, cohort, changes);
        b["partner_api_key"] = json!(partner_api_key("heap"));
        b
    };
    let t0 = Utc::now();
    s.users(
        "amplitude",
        &users_body(&f.secret, "c1", json!([{"user_ids": ids(0..6)}])),
    )
    .expect(201);
    let t1 = Utc::now();
    std::thread::sleep(std::time::Duration::from_millis(20));
    s.users(
        "amplitude",
        &users_body(
            &f.secret,
            "c1",
            json!([{"user_ids": ["u6", "u7", "x1"]},
                   {"user_ids": ["u0", "u1", "u2", "x2"], "should_remove": true}]),
        ),
    )
    .expect(200);
    let t2 = Utc::now();
    s.users("heap", &heap_body("h1", json!([{"user_ids": ids(0..4)}])))
        .expect(201);
    s.users(
        "heap",
        &heap_body("h1", json!([{"user_ids": ["u0"], "should_remove": true}])),
    )
    .expect(200);

    let c1 = s.cohort(ws, "amplitude", "c1").unwrap();
    let last = parse_time(&c1["last_sync"]);
    assert!(
        last > t1 && last <= t2 + chrono::Duration::milliseconds(1),
        "{last} not in ({t1}, {t2}]"
    );
    assert_eq!(c1["size"], 5);
    assert_eq!(
        (c1["last_added"].clone(), c1["last_removed"].clone()),
        (json!(2), json!(3))
    );
    assert_eq!(c1["matched_total"], 11);
    assert_eq!(c1["unmatched_total"], 2);
    assert_eq!(c1["refused_total"], 0);
    assert_eq!(c1["recent_unmatched"], json!(["user_id:x1", "user_id:x2"]));
    let h1 = s.cohort(ws, "heap", "h1").unwrap();
    assert_eq!(h1["size"], 3);
    assert_eq!(
        (h1["last_added"].clone(), h1["last_removed"].clone()),
        (json!(0), json!(1))
    );
    assert_eq!(h1["matched_total"], 5);
    assert!(parse_time(&h1["last_sync"]) >= parse_time(&c1["last_sync"]));
    // The listing is by partner then cohort_id.
    let order: Vec<(String, String)> = s
        .cohorts(ws)
        .iter()
        .map(|c| {
            (
                c["partner"].as_str().unwrap().into(),
                c["cohort_id"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![
            ("amplitude".into(), "c1".into()),
            ("heap".into(), "h1".into())
        ]
    );

    // Data points: every matched add or remove, per partner and UTC day.
    let points = s
        .admin_get(&format!("/admin/workspaces/{ws}/data_points"))
        .json();
    let days = [
        t0.date_naive().to_string(),
        Utc::now().date_naive().to_string(),
    ];
    let mut per_partner = std::collections::BTreeMap::<String, u64>::new();
    for p in points.as_array().unwrap() {
        assert!(
            days.contains(&p["day"].as_str().unwrap().to_string()),
            "{p}"
        );
        *per_partner
            .entry(p["partner"].as_str().unwrap().into())
            .or_default() += p["data_points"].as_u64().unwrap();
    }
    assert_eq!(
        per_partner,
        [("amplitude".to_string(), 11), ("heap".to_string(), 5)]
            .into_iter()
            .collect()
    );
}

#[test]
fn metrics_count_requests_and_identifiers() {
    let f = Fixture::new(&[]);
    let (s, ws) = (&f.server, f.ws.as_str());
    s.upsert_user(ws, &user("u0"));
    s.upsert_user(ws, &user("u1"));
    s.upsert_user(ws, &json!({"external_id": "u2", "devices": ["d2"]}));
    let users_ok =
        r#"segq_http_requests_total{route="/partners/{partner}/cohorts/users",status="200"}"#;
    let users_400 =
        r#"segq_http_requests_total{route="/partners/{partner}/cohorts/users",status="400"}"#;
    let cohorts_201 =
        r#"segq_http_requests_total{route="/partners/{partner}/cohorts",status="201"}"#;
    let latency =
        r#"segq_http_request_duration_seconds_count{route="/partners/{partner}/cohorts/users"}"#;
    let matched = r#"segq_identifiers_total{result="matched"}"#;
    let unmatched = r#"segq_identifiers_total{result="unmatched"}"#;
    let refused = r#"segq_identifiers_total{result="refused"}"#;
    let points = r#"segq_data_points_total{partner="amplitude"}"#;
    let samples = [
        users_ok,
        users_400,
        cohorts_201,
        latency,
        matched,
        unmatched,
        refused,
        points,
    ];
    let before = s.metrics();
    assert!(
        before.contains("# TYPE segq_http_requests_total counter"),
        "{before}"
    );
    assert!(
        before.contains("# TYPE segq_identifiers_total counter"),
        "{before}"
    );

    s.create_cohort("amplitude", &cohort_body(&f.secret, "c1", "One"))
        .expect(201);
    for _ in 0..3 {
        s.users(
            "amplitude",
            &users_body(
                &f.secret,
                "c1",
                json!([{"user_ids": ["u0", "u1", "nobody"], "device_ids": ["d2"]}]),
            ),
        )
        .expect(200);
    }
    s.users("amplitude", &users_body(&f.secret, "c1", json!("x")))
        .expect(400);

    let after = s.metrics();
    let delta = |sample: &str| metric_in(&after, sample) - metric_in(&before, sample);
    let got: Vec<f64> = samples.iter().map(|m| delta(m)).collect();
    assert_eq!(got, vec![3.0, 1.0, 1.0, 4.0, 6.0, 3.0, 3.0, 6.0], "{after}");
    assert!(after
        .lines()
        .any(|l| l.starts_with(r#"segq_http_requests_total{route="/metrics",status="200"}"#)));
}

#[test]
fn a_restart_keeps_everything() {
    let f = Fixture::new(&[]);
    let (ws, data) = (f.ws.clone(), f.data());
    let s = &f.server;
    for i in 0..20 {
        s.upsert_user(&ws, &user(&format!("u{i}")));
    }
    s.upsert_user(&ws, &json!({"devices": ["d-anon"], "aliases": [{"alias_label": "email", "alias_name": "a@x.io"}]}));
    let (second_id, second) = s.create_key(&ws, "amplitude");
    let (_, heap) = s.create_key(&ws, "heap");
    s.create_cohort("amplitude", &cohort_body(&f.secret, "c1", "One"))
        .expect(201);
    s.users(
        "amplitude",
        &users_body(
            &f.secret,
            "c1",
            json!([{"user_ids": ids(0..12)},
                                            {"user_ids": ["u3", "nobody"], "should_remove": true}]),
        ),
    )
    .expect(200);
    s.users(
        "amplitude",
        &users_body(
            &second,
            "c2",
            json!([{"device_ids": ["d-anon"], "user_ids": ["u19"]}]),
        ),
    )
    .expect(201);
    let mut hb = users_body(
        &heap,
        "h1",
        json!([{"aliases": [{"alias_label": "email", "alias_name": "a@x.io"}]}]),
    );
    hb["partner_api_key"] = json!(partner_api_key("heap"));
    s.users("heap", &hb).expect(201);
    s.admin_delete(&format!("/admin/workspaces/{ws}/keys/{second_id}"))
        .expect(200);
    s.create_workspace("other");

    let strip_last_used = |v: Value| -> Value {
        let mut v = v;
        for k in v.as_array_mut().unwrap() {
            k.as_object_mut().unwrap().remove("last_used");
        }
        v
    };
    let before = (
        s.workspaces(),
        s.cohorts(&ws),
        s.admin_get(&format!("/admin/workspaces/{ws}/data_points"))
            .json(),
        strip_last_used(s.admin_get(&format!("/admin/workspaces/{ws}/keys")).json()),
    );
    let token = s.token.clone();

    let stderr = f.server.stop();
    assert!(stderr.contains("stopped"), "{stderr}");
    let c1 = members_on_disk(&data, &ws, Partner::Amplitude, "c1");
    let mut expected: BTreeSet<String> = ids(0..12).into_iter().collect();
    expected.remove("u3");
    assert_eq!(c1, expected);
    assert_eq!(
        members_on_disk(&data, &ws, Partner::Amplitude, "c2"),
        set(&["#20", "u19"])
    );
    assert_eq!(
        members_on_disk(&data, &ws, Partner::Heap, "h1"),
        set(&["#20"])
    );

    let s = Server::restart(&data, &token, &[]);
    assert!(
        !s.stderr_text().contains("admin token:"),
        "{}",
        s.stderr_text()
    );
    let after = (
        s.workspaces(),
        s.cohorts(&ws),
        s.admin_get(&format!("/admin/workspaces/{ws}/data_points"))
            .json(),
        strip_last_used(s.admin_get(&format!("/admin/workspaces/{ws}/keys")).json()),
    );
    assert_eq!(after, before);
    // The keys work as before: the first, not the invalidated one.
    let add = |secret: &str| {
        s.users(
            "amplitude",
            &users_body(secret, "c1", json!([{"user_ids": ["u19"]}])),
        )
    };
    assert_eq!(add(&second).status, 401);
    assert_eq!(add(&f.secret).status, 200);
    assert_eq!(s.size(&ws, "amplitude", "c1"), 12);
    // And a wrong admin token is still refused.
    let r = s.request(
        reqwest::Method::GET,
        "/admin/workspaces",
        None,
        Vec::new(),
        false,
    );
    assert_eq!(r.status, 401);
    s.stop();
}

#[test]
fn query_threads_size_the_evaluator_pool() {
    let f = Fixture::new(&["--query-threads", "3"]);
    assert_eq!(f.server.metric("segq_query_threads"), 3.0);
    let f = Fixture::new(&[]);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(f.server.metric("segq_query_threads"), cores as f64);
    // Zero threads is refused before anything starts.
    let out = segq(&[
        "serve",
        "--query-threads",
        "0",
        "--data",
        "/nonexistent/segq",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--query-threads"), "{stderr}");
}
