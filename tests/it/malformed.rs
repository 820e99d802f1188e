//! Malformed input on the partner endpoints, as a table: every case gets a
//! clear 4xx with a JSON `message`, and the whole table changes nothing
//! (the workspace's cohorts listing and its log file are the same after).
//!
//! Every body carries valid credentials, so that a case the server wrongly
//! accepted would be applied and show up in the comparison.

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::server::{client, cohort_body, users_body, Fixture, Resp};

const COHORT_ID: &str = "cohort_id must be a valid string";
const COHORT_CHANGES: &str = "cohort_changes must be an array of objects each with key user_ids and/or device_ids mapping to an array of strings, or an aliases object";
const TOO_MANY: &str = "Only 1,000 user_ids, device_ids, and aliases are allowed per request";
const NAME: &str = "name must be a non-empty string";
const CREATED_AT: &str = "created_at must be a valid time as an ISO-8601 string";

const USERS: &str = "/partners/amplitude/cohorts/users";
const COHORTS: &str = "/partners/amplitude/cohorts";
const JSON: Option<&str> = Some("application/json");

struct Case {
    name: String,
    method: Method,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// A part of the expected `message`.
    message: &'static str,
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("serialises")
}

/// `n` arrays nested in each other: `[[[...]]]`.
fn nested_arrays(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

/// `n` objects nested in each other: `{"a":{"a":...}}`.
fn nested_objects(n: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n))
}

fn table(secret: &str) -> Vec<Case> {
    let users = |changes: Value| users_body(secret, "c1", changes);
    let valid_users =
        users(json!([{"user_ids": ["u2", "u3"]}, {"user_ids": ["u0"], "should_remove": true}]));
    let valid_cohort = cohort_body(secret, "c1", "Renamed");
    let ids = |n: usize| -> Vec<String> { (0..n).map(|i| format!("u{i}")).collect() };
    let with = |base: &Value, key: &str, value: Value| {
        let mut b = base.clone();
        b[key] = value;
        b
    };
    let without = |base: &Value, key: &str| {
        let mut b = base.clone();
        b.as_object_mut().expect("an object").remove(key);
        b
    };
    // The valid users body as text with a raw value for cohort_changes.
    let raw_changes = |raw: &str| -> Vec<u8> {
        let head = bytes(&without(&valid_users, "cohort_changes"));
        let head = String::from_utf8(head).expect("UTF-8");
        let head = head.strip_suffix('}').expect("an object");
        format!("{head},\"cohort_changes\":{raw}}}").into_bytes()
    };

    let mut t: Vec<Case> = Vec::new();
    let mut add = |name: &str, path, body: Vec<u8>, status, message| {
        t.push(Case {
            name: name.to_string(),
            method: Method::POST,
            path,
            content_type: JSON,
            body,
            status,
            message,
        })
    };

    // Not JSON.
    add(
        "not JSON",
        USERS,
        b"{cohort_id: c1}".to_vec(),
        400,
        "not valid JSON",
    );
    add(
        "form data as JSON",
        COHORTS,
        b"cohort_id=c1&name=x".to_vec(),
        400,
        "not valid JSON",
    );
    add(
        "truncated JSON",
        USERS,
        bytes(&valid_users)[..40].to_vec(),
        400,
        "not valid JSON",
    );
    let mut trailing = bytes(&valid_users);
    trailing.extend_from_slice(b" {}");
    add("trailing garbage", USERS, trailing, 400, "not valid JSON");
    add("empty body", USERS, Vec::new(), 400, "empty");
    add("empty body, cohorts", COHORTS, Vec::new(), 400, "empty");
    add("whitespace body", USERS, b" \n\t ".to_vec(), 400, "empty");
    for (name, v) in [
        ("an array", "[]"),
        ("a string", "\"x\""),
        ("a number", "1"),
        ("null", "null"),
        ("a boolean", "true"),
    ] {
        add(
            &format!("{name} as the body"),
            USERS,
            v.as_bytes().to_vec(),
            400,
            "JSON object",
        );
    }
    add(
        "an array of bodies",
        USERS,
        bytes(&json!([valid_users])),
        400,
        "JSON object",
    );
    // Invalid UTF-8, inside a string and outside.
    let mut bad_utf8 =
        b"{\"partner_api_key\":\"123456-1234-1234-12345678\",\"client_secret\":\"".to_vec();
    bad_utf8.extend_from_slice(secret.as_bytes());
    bad_utf8.extend_from_slice(
        b"\",\"cohort_id\":\"c\xff\xfe1\",\"cohort_changes\":[{\"user_ids\":[\"u2\"]}]}",
    );
    add(
        "invalid UTF-8 in a string",
        USERS,
        bad_utf8,
        400,
        "not valid JSON",
    );
    let mut bad_utf8 = bytes(&valid_users);
    bad_utf8.insert(1, 0xC3);
    add(
        "invalid UTF-8 between tokens",
        USERS,
        bad_utf8,
        400,
        "not valid JSON",
    );
    add(
        "a lone surrogate escape",
        USERS,
        raw_changes(r#"[{"user_ids": ["\ud800"]}]"#),
        400,
        "not valid JSON",
    );

    // Wrong types.
    for (name, v) in [
        ("cohort_id a number", json!(7)),
        ("cohort_id null", Value::Null),
        ("cohort_id an array", json!(["c1"])),
        ("cohort_id an object", json!({"id": "c1"})),
        ("cohort_id empty", json!("")),
        ("cohort_id blank", json!("   ")),
    ] {
        add(
            name,
            USERS,
            bytes(&with(&valid_users, "cohort_id", v.clone())),
            400,
            COHORT_ID,
        );
        add(
            name,
            COHORTS,
            bytes(&with(&valid_cohort, "cohort_id", v)),
            400,
            COHORT_ID,
        );
    }
    for (name, v) in [
        ("cohort_changes an object", json!({"user_ids": ["u2"]})),
        ("cohort_changes a string", json!("u2")),
        ("cohort_changes null", Value::Null),
        ("cohort_changes of strings", json!(["u2"])),
        ("cohort_changes of arrays", json!([["u2"]])),
        ("user_ids a string", json!([{"user_ids": "u2"}])),
        ("user_ids with a number", json!([{"user_ids": ["u2", 3]}])),
        ("user_ids with null", json!([{"user_ids": ["u2", null]}])),
        (
            "user_ids with an empty string",
            json!([{"user_ids": ["u2", ""]}]),
        ),
        (
            "user_ids with an object",
            json!([{"user_ids": [{"id": "u2"}]}]),
        ),
        ("device_ids an object", json!([{"device_ids": {"d": 1}}])),
        (
            "aliases an object",
            json!([{"aliases": {"alias_name": "a", "alias_label": "email"}}]),
        ),
        (
            "an alias without a label",
            json!([{"aliases": [{"alias_name": "a"}]}]),
        ),
        (
            "an alias with a numeric name",
            json!([{"aliases": [{"alias_name": 5, "alias_label": "email"}]}]),
        ),
        (
            "an alias with an extra key",
            json!([{"aliases": [{"alias_name": "a", "alias_label": "email", "x": 1}]}]),
        ),
        (
            "should_remove a string",
            json!([{"user_ids": ["u2"], "should_remove": "true"}]),
        ),
        (
            "should_remove a number",
            json!([{"user_ids": ["u2"], "should_remove": 1}]),
        ),
        (
            "a misspelt should_remove",
            json!([{"user_ids": ["u0"], "shouldRemove": true}]),
        ),
        (
            "an unknown key in a change",
            json!([{"user_ids": ["u2"], "emails": ["a@x"]}]),
        ),
    ] {
        add(
            name,
            USERS,
            bytes(&with(&valid_users, "cohort_changes", v)),
            400,
            COHORT_CHANGES,
        );
    }
    for (name, v) in [
        ("name a number", json!(5)),
        ("name null", Value::Null),
        ("name empty", json!("")),
        ("name blank", json!(" \t ")),
    ] {
        add(
            name,
            COHORTS,
            bytes(&with(&valid_cohort, "name", v)),
            400,
            NAME,
        );
    }
    for (name, v) in [
        ("created_at a number", json!(1_611_238_830)),
        ("created_at prose", json!("yesterday")),
        ("created_at a date only", json!("2021-01-21")),
        ("created_at without an offset", json!("2021-01-21T19:20:30")),
        (
            "created_at out of range",
            json!("2021-13-41T25:61:30+05:00"),
        ),
    ] {
        add(
            name,
            COHORTS,
            bytes(&with(&valid_cohort, "created_at", v)),
            400,
            CREATED_AT,
        );
    }
    for (name, key, v) in [
        ("partner_api_key a number", "partner_api_key", json!(123456)),
        ("client_secret null", "client_secret", Value::Null),
        ("client_secret an array", "client_secret", json!([secret])),
        ("client_secret empty", "client_secret", json!("")),
    ] {
        add(
            name,
            USERS,
            bytes(&with(&valid_users, key, v.clone())),
            401,
            "Invalid",
        );
        add(
            name,
            COHORTS,
            bytes(&with(&valid_cohort, key, v)),
            401,
            "Invalid",
        );
    }

    // Missing fields.
    for (key, status, message) in [
        ("partner_api_key", 401, "Invalid Partner API key"),
        ("client_secret", 401, "Invalid client secret"),
        ("cohort_id", 400, COHORT_ID),
        ("cohort_changes", 400, COHORT_CHANGES),
    ] {
        add(
            &format!("users without {key}"),
            USERS,
            bytes(&without(&valid_users, key)),
            status,
            message,
        );
    }
    for (key, status, message) in [
        ("partner_api_key", 401, "Invalid Partner API key"),
        ("client_secret", 401, "Invalid client secret"),
        ("cohort_id", 400, COHORT_ID),
        ("name", 400, NAME),
        ("created_at", 400, CREATED_AT),
    ] {
        add(
            &format!("cohort without {key}"),
            COHORTS,
            bytes(&without(&valid_cohort, key)),
            status,
            message,
        );
    }
    add(
        "an empty object",
        USERS,
        b"{}".to_vec(),
        401,
        "Invalid Partner API key",
    );

    // Huge arrays.
    add(
        "1,001 user_ids",
        USERS,
        bytes(&users(json!([{"user_ids": ids(1001)}]))),
        400,
        TOO_MANY,
    );
    add(
        "10,000 user_ids",
        USERS,
        bytes(&users(json!([{"user_ids": ids(10_000)}]))),
        400,
        TOO_MANY,
    );
    let spread = json!([
        {"user_ids": ids(334)},
        {"device_ids": ids(334), "should_remove": true},
        {"aliases": (0..333).map(|i| json!({"alias_label": "email", "alias_name": format!("{i}@x")})).collect::<Vec<_>>()}
    ]);
    add(
        "1,001 identifiers over three kinds",
        USERS,
        bytes(&users(spread)),
        400,
        TOO_MANY,
    );
    let many_objects: Vec<Value> = (0..1001)
        .map(|i| json!({"user_ids": [format!("u{i}")]}))
        .collect();
    add(
        "1,001 objects of one id",
        USERS,
        bytes(&users(json!(many_objects))),
        400,
        TOO_MANY,
    );

    // Huge strings.
    let over_limit = "x".repeat(segq::engine::DEFAULT_MAX_BODY_BYTES);
    add(
        "a user id over the body limit",
        USERS,
        bytes(&users(json!([{"user_ids": [over_limit.clone()]}]))),
        413,
        "larger than the limit",
    );
    add(
        "a name over the body limit",
        COHORTS,
        bytes(&with(&valid_cohort, "name", json!(over_limit))),
        413,
        "larger than the limit",
    );
    add(
        "a 2 MiB name",
        COHORTS,
        bytes(&with(&valid_cohort, "name", json!("x".repeat(2 << 20)))),
        400,
        "name must be a non-empty string",
    );
    let big = "c".repeat(100 << 10);
    add(
        "a 100 KiB cohort_id",
        USERS,
        bytes(&with(&valid_users, "cohort_id", json!(big.clone()))),
        400,
        COHORT_ID,
    );
    add(
        "a 100 KiB cohort_id, cohorts",
        COHORTS,
        bytes(&with(&valid_cohort, "cohort_id", json!(big.clone()))),
        400,
        COHORT_ID,
    );
    add(
        "a 100 KiB name",
        COHORTS,
        bytes(&with(&valid_cohort, "name", json!(big))),
        400,
        NAME,
    );

    // Deep nesting.
    add(
        "10,000 nested arrays as cohort_changes",
        USERS,
        raw_changes(&nested_arrays(10_000)),
        400,
        "not valid JSON",
    );
    add(
        "10,000 nested objects as cohort_changes",
        USERS,
        raw_changes(&nested_objects(10_000)),
        400,
        "not valid JSON",
    );
    add(
        "100 nested arrays as user_ids",
        USERS,
        raw_changes(&format!("[{{\"user_ids\": {}}}]", nested_arrays(100))),
        400,
        COHORT_CHANGES,
    );
    add(
        "10,000 nested arrays as the body",
        USERS,
        nested_arrays(10_000).into_bytes(),
        400,
        "not valid JSON",
    );
    let mut deep_name = bytes(&without(&valid_cohort, "name"));
    deep_name.pop();
    deep_name.extend_from_slice(format!(",\"name\":{}}}", nested_arrays(10_000)).as_bytes());
    add(
        "10,000 nested arrays as name",
        COHORTS,
        deep_name,
        400,
        "not valid JSON",
    );

    // Wrong methods and content types, with a body that would apply.
    for method in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH] {
        for (path, body) in [(USERS, &valid_users), (COHORTS, &valid_cohort)] {
            t.push(Case {
                name: format!("{method} {path}"),
                method: method.clone(),
                path,
                content_type: JSON,
                body: bytes(body),
                status: 405,
                message: "not allowed",
            });
        }
    }
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/jsonx",
    ] {
        for (path, body) in [(USERS, &valid_users), (COHORTS, &valid_cohort)] {
            t.push(Case {
                name: format!("{ct} to {path}"),
                method: Method::POST,
                path,
                content_type: Some(ct),
                body: bytes(body),
                status: 415,
                message: "content type",
            });
        }
    }
    t
}

#[test]
fn malformed_requests_get_a_clear_4xx_and_change_nothing() {
    let f = Fixture::new(&[]);
    let (s, ws) = (&f.server, f.ws.as_str());
    for i in 0..5 {
        s.upsert_user(
            ws,
            &json!({"external_id": format!("u{i}"), "devices": [format!("u{i}")]}),
        );
    }
    s.create_cohort("amplitude", &cohort_body(&f.secret, "c1", "One"))
        .expect(201);
    s.users(
        "amplitude",
        &users_body(&f.secret, "c1", json!([{"user_ids": ["u0", "u1"]}])),
    )
    .expect(200);

    // The valid bodies the table breaks are valid: they would change c1.
    let cases = table(&f.secret);
    assert!(cases.len() > 100, "{}", cases.len());
    eprintln!("{} malformed requests", cases.len());

    let before = f.observed();
    let mut failures = Vec::new();
    for case in &cases {
        let r: Resp = s.request(
            case.method.clone(),
            case.path,
            case.content_type,
            case.body.clone(),
            false,
        );
        let ok = (|| -> Result<(), String> {
            if r.status != case.status {
                return Err(format!("status {} (expected {})", r.status, case.status));
            }
            let ct = r.header("content-type").unwrap_or_default();
            if !ct.starts_with("application/json") {
                return Err(format!("content type {ct:?}"));
            }
            let v: Value = serde_json::from_str(&r.text).map_err(|e| format!("not JSON: {e}"))?;
            let message = v["message"].as_str().ok_or("no message")?;
            if !message.contains(case.message) {
                return Err(format!("message {message:?} lacks {:?}", case.message));
            }
            if message.len() > 1000 {
                return Err(format!("a message of {} bytes", message.len()));
            }
            if r.text.contains(&f.secret) {
                return Err("the secret is echoed".into());
            }
            if case.status == 400 && !v["errors"].is_array() {
                return Err("a 400 without errors".into());
            }
            if case.status == 405 && r.header("allow").as_deref() != Some("POST") {
                return Err(format!("Allow: {:?}", r.header("allow")));
            }
            Ok(())
        })();
        if let Err(e) = ok {
            let shown: String = r.text.chars().take(300).collect();
            failures.push(format!("{}: {e}: {shown}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(f.observed(), before, "the table changed something");

    // The bodies the table broke are valid as they are, and change c1: the
    // comparison above would have seen them applied.
    let valid = users_body(
        &f.secret,
        "c1",
        json!([{"user_ids": ["u2", "u3"]}, {"user_ids": ["u0"], "should_remove": true}]),
    );
    let r = s.users("amplitude", &valid).expect(200);
    assert_eq!(r.json()["matched"], 3);
    s.create_cohort("amplitude", &cohort_body(&f.secret, "c1", "Renamed"))
        .expect(200);
    let after = f.observed();
    assert_ne!(after.1, before.1);
    let bytes = |files: &[(String, u64)]| files.iter().map(|(_, n)| n).sum::<u64>();
    assert!(bytes(&after.2) > bytes(&before.2), "the log grew");
}

/// A body over the limit must be answered with a 413 the client can read,
/// every time, and the connection must stay usable or be announced closed.
/// A server that answers as soon as it knows the body is too large and
/// closes the connection with the rest of the body unread gets it reset by
/// the kernel: the client loses the answer (on loopback about 1 in 5
/// requests of 2 MiB, more than half of 8 MiB ones, got a connection error
/// instead of the 413 before the body was drained), and a keep-alive client
/// that did read its 413 sent its next, valid, request down the closed
/// connection and got a transport error for it.
#[test]
fn a_body_over_the_limit_gets_its_413_every_time() {
    // The default limit is 16 MiB; 1 MiB keeps the bodies sent here small.
    let f = Fixture::new(&["--max-body-bytes", "1048576"]);
    let s = &f.server;
    let credential_test = bytes(&users_body(&f.secret, "c1", json!([])));
    let mut lost = Vec::new();
    for size in [2usize << 20, 8 << 20] {
        let body = bytes(&users_body(
            &f.secret,
            "c1",
            json!([{"user_ids": ["x".repeat(size)]}]),
        ));
        let keep_alive = client();
        for attempt in 0..20 {
            match s.try_post(&keep_alive, USERS, JSON, body.clone()) {
                Ok(r) => {
                    assert_eq!(r.status, 413, "{}", r.text);
                    assert!(r.message().contains("larger than the limit"));
                }
                Err(e) => lost.push(format!("{size} bytes, attempt {attempt}: {e:?}")),
            }
            match s.try_post(&keep_alive, USERS, JSON, credential_test.clone()) {
                Ok(r) => assert_eq!(r.status, 200, "{}", r.text),
                Err(e) => lost.push(format!(
                    "the request after {size} bytes, attempt {attempt}: {e:?}"
                )),
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of 80 answers lost:\n{}",
        lost.len(),
        lost.join("\n")
    );
}

/// An identifier longer than any user can hold (1,024 bytes) can never
/// match; it must not be kept whole in the cohort's sample of unmatched
/// identifiers (nor logged whole), or 100 requests of 1 MiB of ids make a
/// cohort hold ~100 MiB of memory and its listing as much. Either the
/// request is refused, or the sample keeps a bounded form of the id.
#[test]
fn an_overlong_identifier_does_not_bloat_the_unmatched_sample() {
    let f = Fixture::new(&[]);
    let (s, ws) = (&f.server, f.ws.as_str());
    s.upsert_user(ws, &json!({"external_id": "u0"}));
    let files_before = f.workspace_files();
    let long = "x".repeat(300 << 10);
    let r = s.users(
        "amplitude",
        &users_body(
            &f.secret,
            "c1",
            json!([{"user_ids": ["u0", long], "device_ids": [long],
                    "aliases": [{"alias_label": "email", "alias_name": long}]}]),
        ),
    );
    let grown: u64 = f
        .workspace_files()
        .iter()
        .zip(&files_before)
        .map(|((_, a), (_, b))| a.saturating_sub(*b))
        .sum();
    if r.status == 400 {
        assert!(r.message().len() < 1000);
        assert_eq!(grown, 0);
        return;
    }
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["unmatched"], 3);
    let listing = s.admin_get(&format!("/admin/workspaces/{ws}/cohorts"));
    let c = s.cohort(ws, "amplitude", "c1").expect("listed");
    let sample = c["recent_unmatched"].as_array().expect("a sample");
    assert_eq!(sample.len(), 3);
    for id in sample {
        let id = id.as_str().expect("a string");
        assert!(id.len() <= 2048, "a sample entry of {} bytes", id.len());
    }
    assert!(
        listing.text.len() < 64 << 10,
        "a listing of {} bytes",
        listing.text.len()
    );
    assert!(
        grown < 64 << 10,
        "the log grew by {grown} bytes for one request"
    );
}
