//! The audit log: every change made through the admin API is recorded
//! (who by key id or `admin`, what, on what, from which address, with
//! the request id), refused requests record nothing, entries survive
//! restarts and compactions and are paged both ways, and no secret ever
//! reaches a log line, a response body or an audit entry.

use std::path::{Path, PathBuf};

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::server::{
    cohort_body, note_secret, partner_api_key, segq, users_body, Conn, InProcess, Resp, Server,
    ALL_SCOPES, PARTNERS, PARTNER_API_KEY,
};

/// A request body.
enum Body {
    None,
    Json(Value),
    /// A content type and the bytes.
    Raw(&'static str, String),
}

/// Every answer a test saw, to search for secrets.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    /// A key's creation answer: the one place its secret is shown, so
    /// everything of it but `"key"`.
    fn keep_created(&mut self, r: &Resp) {
        let mut v: Value = serde_json::from_str(&r.text).expect("JSON");
        v.as_object_mut().expect("an object").remove("key");
        self.0.push(v.to_string());
    }

    fn keep(&mut self, r: &Resp) {
        self.0.push(r.text.clone());
        for (name, value) in &r.headers {
            self.0
                .push(format!("{name}: {}", value.to_str().unwrap_or_default()));
        }
    }
}

/// One request with `token` as its bearer token and, if given, an
/// `X-Request-Id`.
fn send(
    c: &Conn,
    method: &str,
    path: &str,
    body: &Body,
    token: Option<&str>,
    request_id: Option<&str>,
) -> Resp {
    let method = Method::from_bytes(method.as_bytes()).expect("a method");
    let mut req = c.client.request(method, c.url(path));
    req = match body {
        Body::None => req,
        Body::Json(v) => req.json(v),
        Body::Raw(ct, text) => req.header("content-type", *ct).body(text.clone()),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(id) = request_id {
        req = req.header("x-request-id", id);
    }
    let r = req.send().expect("the server answers");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Resp {
        status,
        headers,
        text: r.text().expect("a body"),
    }
}

fn call(c: &Conn, method: &str, path: &str, body: Body, token: &str) -> Resp {
    send(c, method, path, &body, Some(token), None)
}

/// Creates an API key of `ws`: `(id, key)`.
fn new_key(c: &Conn, ws: &str, name: &str, scopes: &[&str], token: &str) -> (String, String) {
    let v = call(
        c,
        "POST",
        &format!("/admin/workspaces/{ws}/api_keys"),
        Body::Json(json!({"name": name, "scopes": scopes})),
        token,
    )
    .expect_json(201);
    let key = v["key"].as_str().expect("a key").to_string();
    // Searched for in every server log of the suite, too.
    note_secret(&key);
    (v["id"].as_str().expect("an id").to_string(), key)
}

/// Every audit entry of `ws`, oldest first, read a page of `limit` at a
/// time by following `next`.
fn all_entries(c: &Conn, ws: &str, token: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let mut path = format!("/admin/workspaces/{ws}/audit?order=asc&limit={limit}");
        if let Some(a) = after {
            path.push_str(&format!("&after={a}"));
        }
        let page = call(c, "GET", &path, Body::None, token).expect_json(200);
        let entries = page["entries"].as_array().expect("entries").clone();
        assert!(entries.len() <= limit);
        out.extend(entries);
        match page["next"]["after"].as_u64() {
            Some(a) => after = Some(a),
            None => {
                assert!(page["next"].is_null(), "{page}");
                return out;
            }
        }
    }
}

fn actions(entries: &[Value]) -> Vec<&str> {
    entries
        .iter()
        .map(|e| e["action"].as_str().expect("an action"))
        .collect()
}

fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    crate::support::server::write_config(&data);
    (dir, data)
}

/// What [`make_every_change`] made: the secrets it saw, the workspace
/// key it worked with, and the actions it expects, in order.
struct Made {
    ops_id: String,
    ops: String,
    secrets: Vec<String>,
    expected: Vec<&'static str>,
}

/// Makes every kind of admin change in workspace `acme` (created here by
/// the admin token with request id `req-create-acme`), and partner
/// requests between them, which record nothing.
fn make_every_change(c: &Conn, admin: &str, seen: &mut Seen) -> Made {
    let mut keep = |r: Resp, status: u16| -> Value {
        let created = serde_json::from_str::<Value>(&r.text)
            .is_ok_and(|v| r.status == 201 && v.get("key").is_some());
        if created {
            seen.keep_created(&r);
        } else {
            seen.keep(&r);
        }
        r.expect_json(status)
    };
    keep(
        send(
            c,
            "POST",
            "/admin/workspaces",
            &Body::Json(json!({"name": "acme"})),
            Some(admin),
            Some("req-create-acme"),
        ),
        201,
    );
    let (ops_id, ops) = new_key(c, "acme", "ops", &ALL_SCOPES, admin);
    let (spare_id, spare) = new_key(c, "acme", "spare", &["segments:read"], &ops);
    let ws = "/admin/workspaces/acme";
    let dik = keep(
        call(
            c,
            "POST",
            &format!("{ws}/partners/amplitude/keys"),
            Body::None,
            &ops,
        ),
        201,
    );
    let dik_secret = dik["key"].as_str().unwrap().to_string();
    note_secret(&dik_secret);
    let spare_dik = keep(
        call(
            c,
            "POST",
            &format!("{ws}/partners/amplitude/keys"),
            Body::None,
            &ops,
        ),
        201,
    );
    let spare_dik_id = spare_dik["id"].as_str().unwrap();
    note_secret(spare_dik["key"].as_str().unwrap());
    keep(
        call(
            c,
            "DELETE",
            &format!("{ws}/keys/{spare_dik_id}"),
            Body::None,
            &ops,
        ),
        200,
    );
    keep(
        call(
            c,
            "POST",
            &format!("{ws}/partners/mixpanel/enable"),
            Body::None,
            &ops,
        ),
        200,
    );
    keep(
        call(
            c,
            "PUT",
            &format!("{ws}/attributes/plan"),
            Body::Json(json!({"type": "string"})),
            &ops,
        ),
        200,
    );
    keep(
        call(
            c,
            "POST",
            &format!("{ws}/users"),
            Body::Json(json!({"external_id": "u1", "devices": ["d1"]})),
            &ops,
        ),
        201,
    );
    keep(
        call(
            c,
            "POST",
            &format!("{ws}/users/aliases"),
            Body::Json(
                json!({"user": {"external_id": "u1"}, "alias_label": "email", "alias_name": "a@x"}),
            ),
            &ops,
        ),
        200,
    );
    keep(
        call(
            c,
            "POST",
            &format!("{ws}/users/devices"),
            Body::Json(json!({"user": {"external_id": "u1"}, "device_id": "d2"})),
            &ops,
        ),
        200,
    );
    keep(
        call(
            c,
            "POST",
            &format!("{ws}/users"),
            Body::Json(json!({"devices": ["d-anon"]})),
            &ops,
        ),
        201,
    );
    keep(
        call(
            c,
            "POST",
            &format!("{ws}/users/identify"),
            Body::Json(json!({"user": {"device_id": "d-anon"}, "external_id": "u2"})),
            &ops,
        ),
        200,
    );
    keep(
        call(
            c,
            "POST",
            &format!("{ws}/users/attributes"),
            Body::Json(json!({"user": {"external_id": "u1"}, "attributes": {"plan": "gold"}})),
            &ops,
        ),
        200,
    );
    let import = keep(
        call(
            c,
            "POST",
            &format!("{ws}/users/import"),
            Body::Raw(
                "application/x-ndjson",
                "{\"external_id\": \"u3\"}\n{\"external_id\": 7}\n{\"external_id\": \"u4\"}\n"
                    .into(),
            ),
            &ops,
        ),
        200,
    );
    assert_eq!(
        (import["created"].clone(), import["failed"].clone()),
        (json!(2), json!(1))
    );
    keep(
        call(
            c,
            "POST",
            &format!("{ws}/users/rename"),
            Body::Json(json!({"external_id": "u3", "new_external_id": "u3b"})),
            &ops,
        ),
        200,
    );
    keep(
        call(
            c,
            "POST",
            &format!("{ws}/users/merge"),
            Body::Json(json!({"source": {"external_id": "u4"}, "target": {"external_id": "u1"}})),
            &ops,
        ),
        200,
    );
    keep(
        call(
            c,
            "POST",
            &format!("{ws}/users/delete"),
            Body::Json(json!({"users": [{"external_id": "u3b"}, {"external_id": "nobody"}]})),
            &ops,
        ),
        200,
    );
    // Partner requests: not admin changes, not audited.
    for cohort in ["c1", "c2"] {
        let r = c.create_cohort("amplitude", &cohort_body(&dik_secret, cohort, "Cohort"));
        keep(r, 201);
    }
    let r = c.users(
        "amplitude",
        &users_body(&dik_secret, "c1", json!([{"user_ids": ["u1", "u2"]}])),
    );
    keep(r, 200);
    let seg = keep(
        call(
            c,
            "POST",
            "/workspaces/acme/segments",
            Body::Json(
                json!({"name": "gold", "filter": "amplitude_cohorts includes_value \"c1\""}),
            ),
            &ops,
        ),
        201,
    );
    let seg_id = seg["id"].as_str().unwrap().to_string();
    keep(
        call(
            c,
            "PUT",
            &format!("/workspaces/acme/segments/{seg_id}"),
            Body::Json(json!({"name": "gold, renamed"})),
            &ops,
        ),
        200,
    );
    keep(
        call(
            c,
            "DELETE",
            &format!("{ws}/cohorts/amplitude/c2"),
            Body::None,
            &ops,
        ),
        200,
    );
    keep(
        call(
            c,
            "DELETE",
            &format!("/workspaces/acme/segments/{seg_id}"),
            Body::None,
            &ops,
        ),
        200,
    );
    keep(
        call(
            c,
            "DELETE",
            &format!("{ws}/api_keys/{spare_id}"),
            Body::None,
            &ops,
        ),
        200,
    );
    let secrets = vec![
        ops.clone(),
        spare,
        dik_secret,
        spare_dik["key"].as_str().unwrap().to_string(),
        PARTNER_API_KEY.to_string(),
    ];
    Made {
        ops_id,
        ops,
        secrets,
        expected: vec![
            "workspace.created",
            "api_key.created",
            "api_key.created",
            "import_key.created",
            "import_key.created",
            "import_key.invalidated",
            "partner.enabled",
            "attribute.declared",
            "user.upserted",
            "user.alias_added",
            "user.device_added",
            "user.upserted",
            "user.identified",
            "user.attributes_set",
            "users.imported",
            "user.renamed",
            "user.merged",
            "users.deleted",
            "segment.created",
            "segment.updated",
            "cohort.deleted",
            "segment.deleted",
            "api_key.revoked",
        ],
    }
}

#[test]
fn every_admin_change_is_recorded_with_its_caller_address_and_request_id() {
    let (_dir, data) = data_dir();
    let s = InProcess::start(&data, None);
    let admin = s.token.clone();
    let mut seen = Seen::default();
    let made = make_every_change(&s, &admin, &mut seen);
    let entries = all_entries(&s, "acme", &made.ops, 1000);
    assert_eq!(actions(&entries), made.expected);
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=entries.len() as u64).collect::<Vec<_>>());

    // Who: the admin token created the workspace and the first key; the
    // key it created made the rest.
    let actors: Vec<&str> = entries
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert_eq!(&actors[..2], ["admin", "admin"]);
    assert!(actors[2..].iter().all(|a| *a == made.ops_id), "{actors:?}");
    // From where: the socket's peer; with the request's id.
    for e in &entries {
        let address = e["address"].as_str().unwrap();
        assert!(address.starts_with("127.0.0.1:"), "{e}");
        assert!(address.parse::<std::net::SocketAddr>().is_ok(), "{e}");
        assert!(!e["request_id"].as_str().unwrap().is_empty(), "{e}");
        assert!(e["at"].as_str().unwrap().ends_with('Z'), "{e}");
    }
    assert_eq!(entries[0]["request_id"], "req-create-acme");
    assert_eq!(entries[0]["target"], "acme");

    // What, on what.
    let by = |action: &str| -> Vec<&Value> {
        entries.iter().filter(|e| e["action"] == action).collect()
    };
    // Users by their internal ids, never by an identifier.
    let user_of = |action: &str| by(action)[0]["target"].as_str().unwrap().to_string();
    assert_eq!(user_of("user.renamed"), user_of("users.deleted"));
    assert_eq!(user_of("user.merged"), user_of("user.alias_added"));
    assert_eq!(
        by("users.deleted")[0]["detail"],
        json!({"users_deleted": 1})
    );
    assert_eq!(
        by("user.renamed")[0]["detail"],
        json!({"external_ids_renamed": 1})
    );
    let merged = &by("user.merged")[0]["detail"];
    assert_eq!(merged["users_merged"], 1);
    assert!(merged["merged_from"].as_str().unwrap().starts_with("user:"));
    for e in &entries {
        for id in ["u3b", "nobody"] {
            assert!(!e.to_string().contains(id), "{e}");
        }
    }
    let created = by("api_key.created");
    assert_eq!(created[0]["target"], made.ops_id.as_str());
    assert_eq!(
        created[0]["detail"],
        json!({"name": "ops", "scopes": ALL_SCOPES})
    );
    let keys = call(
        &s,
        "GET",
        "/admin/workspaces/acme/keys",
        Body::None,
        &made.ops,
    )
    .expect_json(200);
    // Keys created in the same instant list in id order, so each entry
    // is matched to its key by id, not by place.
    let key = |id: &Value| -> Value {
        keys.as_array()
            .and_then(|k| k.iter().find(|k| &k["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("no key {id} in {keys}"))
    };
    let created: Vec<&Value> = by("import_key.created");
    assert_eq!(created.len(), 2);
    for dik in &created {
        let k = key(&dik["target"]);
        assert_eq!(
            dik["detail"],
            json!({"partner": "amplitude", "prefix": k["prefix"]})
        );
    }
    let gone = key(&by("import_key.invalidated")[0]["target"]);
    assert!(gone["invalidated_at"].is_string(), "{gone}");
    assert_ne!(
        created[0]["target"], gone["id"],
        "the first key stays valid"
    );
    assert_eq!(by("partner.enabled")[0]["target"], "mixpanel");
    assert_eq!(
        (
            by("attribute.declared")[0]["target"].clone(),
            by("attribute.declared")[0]["detail"].clone()
        ),
        (json!("plan"), json!({"type": "string"}))
    );
    let upserts = by("user.upserted");
    assert_eq!(upserts[0]["target"], "user:0");
    assert_eq!(upserts[0]["detail"], json!({"users_created": 1}));
    assert_eq!(
        by("user.alias_added")[0]["detail"],
        json!({"aliases_added": 1})
    );
    assert_eq!(
        by("user.device_added")[0]["detail"],
        json!({"devices_added": 1})
    );
    assert_eq!(by("user.identified")[0]["target"], "user:1");
    assert_eq!(
        by("user.attributes_set")[0]["detail"],
        json!({"attribute_values_set": 1})
    );
    assert_eq!(
        by("users.imported")[0]["detail"],
        json!({"format": "jsonl", "created": 2, "updated": 0, "failed": 1, "complete": true})
    );
    let seg = &by("segment.created")[0];
    assert_eq!(seg["detail"], json!({"name": "gold"}));
    assert_eq!(
        by("segment.updated")[0]["detail"],
        json!({"name": "gold, renamed"})
    );
    assert_eq!(by("segment.deleted")[0]["target"], seg["target"]);
    assert_eq!(by("cohort.deleted")[0]["target"], "amplitude/c2");

    // The request id an answer carries is its entry's.
    let r = call(
        &s,
        "POST",
        "/admin/workspaces/acme/users",
        Body::Json(json!({"external_id": "u9"})),
        &made.ops,
    )
    .expect(201);
    let id = r.header("x-request-id").expect("a request id");
    let last = call(
        &s,
        "GET",
        "/admin/workspaces/acme/audit?limit=1",
        Body::None,
        &admin,
    )
    .expect_json(200);
    assert_eq!(last["entries"][0]["request_id"], id.as_str());
    assert_eq!(last["entries"][0]["action"], "user.upserted");
}

#[test]
fn refused_requests_and_requests_that_change_nothing_record_nothing() {
    let (_dir, data) = data_dir();
    let s = InProcess::start(&data, None);
    let admin = s.token.clone();
    let mut seen = Seen::default();
    let made = make_every_change(&s, &admin, &mut seen);
    let ops = made.ops.as_str();
    let (_, reader) = new_key(&s, "acme", "reader", &["segments:read"], &admin);
    s.create_workspace("other");
    let (_, other) = new_key(&s, "other", "other", &ALL_SCOPES, &admin);
    let before = all_entries(&s, "acme", ops, 1000);
    let ws = "/admin/workspaces/acme";
    let j = Body::Json;
    let refused: Vec<(&str, String, Body, &str, u16)> = vec![
        (
            "POST",
            format!("{ws}/users"),
            j(json!({"external_id": 5})),
            ops,
            400,
        ),
        (
            "POST",
            format!("{ws}/users/aliases"),
            j(json!({"user": {"external_id": "nobody"}, "alias_label": "e", "alias_name": "x"})),
            ops,
            404,
        ),
        (
            "POST",
            format!("{ws}/users/attributes"),
            j(json!({"user": {"external_id": "u1"}, "attributes": {"plan": 3}})),
            ops,
            400,
        ),
        (
            "PUT",
            format!("{ws}/attributes/plan"),
            j(json!({"type": "integer"})),
            ops,
            400,
        ),
        (
            "PUT",
            format!("{ws}/attributes/x"),
            j(json!({"type": "colour"})),
            ops,
            400,
        ),
        (
            "POST",
            "/workspaces/acme/segments".into(),
            j(json!({"name": "n", "filter": "amplitude_cohorts includes_value \"nope\""})),
            ops,
            404,
        ),
        (
            "PUT",
            "/workspaces/acme/segments/seg_unknown".into(),
            j(json!({"name": "n"})),
            ops,
            404,
        ),
        (
            "DELETE",
            format!("{ws}/keys/key_unknown"),
            Body::None,
            ops,
            404,
        ),
        (
            "DELETE",
            format!("{ws}/api_keys/ak_unknown"),
            Body::None,
            ops,
            404,
        ),
        (
            "POST",
            format!("{ws}/api_keys"),
            j(json!({"name": "n", "scopes": ["segments:write"]})),
            ops,
            400,
        ),
        (
            "POST",
            format!("{ws}/partners/nobody/keys"),
            Body::None,
            ops,
            404,
        ),
        (
            "DELETE",
            format!("{ws}/cohorts/amplitude/c-none"),
            Body::None,
            ops,
            404,
        ),
        // Callers without the right.
        (
            "POST",
            "/workspaces/acme/segments".into(),
            j(json!({"name": "n", "filter": "random_bucket < 10"})),
            &reader,
            403,
        ),
        (
            "POST",
            format!("{ws}/partners/heap/enable"),
            Body::None,
            &other,
            404,
        ),
        (
            "POST",
            format!("{ws}/partners/heap/enable"),
            Body::None,
            &admin,
            403,
        ),
        (
            "POST",
            format!("{ws}/partners/heap/enable"),
            Body::None,
            "wrong",
            401,
        ),
        // Nothing to change.
        (
            "POST",
            format!("{ws}/partners/mixpanel/enable"),
            Body::None,
            ops,
            200,
        ),
        (
            "POST",
            format!("{ws}/users/devices"),
            j(json!({"user": {"external_id": "u1"}, "device_id": "d2"})),
            ops,
            200,
        ),
        (
            "PUT",
            format!("{ws}/attributes/plan"),
            j(json!({"type": "string"})),
            ops,
            200,
        ),
        (
            "POST",
            format!("{ws}/users/import"),
            Body::Raw("application/x-ndjson", "{\"external_id\": 1}\n".into()),
            ops,
            200,
        ),
        (
            "POST",
            "/admin/workspaces".into(),
            j(json!({"name": "acme"})),
            &admin,
            200,
        ),
    ];
    for (method, path, body, token, status) in refused {
        let r = call(&s, method, &path, body, token);
        assert_eq!(r.status, status, "{method} {path}: {}", r.text);
    }
    // A cohort a saved segment names is not deleted (409).
    let dik = call(
        &s,
        "POST",
        &format!("{ws}/partners/amplitude/keys"),
        Body::None,
        ops,
    )
    .expect_json(201)["key"]
        .as_str()
        .unwrap()
        .to_string();
    let after_key = all_entries(&s, "acme", ops, 1000);
    assert_eq!(after_key.len(), before.len() + 1, "the key's creation");
    s.create_cohort("amplitude", &cohort_body(&dik, "c9", "C9"))
        .expect(201);
    let seg = call(
        &s,
        "POST",
        "/workspaces/acme/segments",
        j(json!({"name": "nine", "filter": "amplitude_cohorts includes_value \"c9\""})),
        ops,
    )
    .expect_json(201);
    let with_segment = all_entries(&s, "acme", ops, 1000);
    call(
        &s,
        "DELETE",
        &format!("{ws}/cohorts/amplitude/c9"),
        Body::None,
        ops,
    )
    .expect(409);
    assert_eq!(all_entries(&s, "acme", ops, 1000), with_segment);
    assert_eq!(with_segment.len(), after_key.len() + 1);
    assert_eq!(with_segment.last().unwrap()["target"], seg["id"]);
    // The refused requests left the log as it was.
    assert_eq!(after_key[..before.len()], before[..]);
}

#[test]
fn entries_page_both_ways_and_survive_restarts_and_compactions() {
    let (_dir, data) = data_dir();
    let s = InProcess::start(&data, None);
    let admin = s.token.clone();
    s.create_workspace("acme");
    let (_, ops) = new_key(&s, "acme", "ops", &ALL_SCOPES, &admin);
    for i in 0..23 {
        call(
            &s,
            "POST",
            "/admin/workspaces/acme/users",
            Body::Json(json!({"external_id": format!("u{i}")})),
            &ops,
        )
        .expect(201);
    }
    let all = all_entries(&s, "acme", &ops, 1000);
    assert_eq!(all.len(), 25, "the workspace, the key and 23 users");
    assert_eq!(all_entries(&s, "acme", &admin, 7), all);
    // Newest first, by `before`.
    let mut newest = Vec::new();
    let mut path = "/admin/workspaces/acme/audit?limit=10".to_string();
    loop {
        let page = call(&s, "GET", &path, Body::None, &ops).expect_json(200);
        newest.extend(page["entries"].as_array().unwrap().iter().cloned());
        assert_eq!(page["next_seq"], 26);
        match page["next"]["before"].as_u64() {
            Some(b) => path = format!("/admin/workspaces/acme/audit?limit=10&before={b}"),
            None => break,
        }
    }
    newest.reverse();
    assert_eq!(newest, all);
    // A window.
    let window = call(
        &s,
        "GET",
        "/admin/workspaces/acme/audit?after=3&before=7&order=asc",
        Body::None,
        &ops,
    )
    .expect_json(200);
    let seqs: Vec<u64> = window["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!((seqs, window["next"].clone()), (vec![4, 5, 6], Value::Null));
    // Bad parameters: 400, saying which.
    for (query, word) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("before=-1", "before"),
        ("after=x", "after"),
        ("order=sideways", "order"),
        ("cursor=5", "cursor"),
    ] {
        let r = call(
            &s,
            "GET",
            &format!("/admin/workspaces/acme/audit?{query}"),
            Body::None,
            &ops,
        );
        assert_eq!(r.status, 400, "{query}: {}", r.text);
        assert!(r.message().contains(word), "{query}: {}", r.text);
    }
    call(
        &s,
        "GET",
        "/admin/workspaces/nope/audit",
        Body::None,
        &admin,
    )
    .expect(404);
    let token = s.stop();

    // Restarted: from the log.
    let s = InProcess::start(&data, Some(token));
    assert_eq!(all_entries(&s, "acme", &ops, 1000), all);
    // Compacted: the snapshot holds them; a change after it is logged.
    s.engine().compact("acme").expect("compacts");
    assert_eq!(all_entries(&s, "acme", &ops, 1000), all);
    call(
        &s,
        "POST",
        "/admin/workspaces/acme/partners/heap/enable",
        Body::None,
        &ops,
    )
    .expect(200);
    let grown = all_entries(&s, "acme", &ops, 1000);
    assert_eq!(grown[..25], all[..]);
    assert_eq!(grown[25]["seq"], 26);
    assert_eq!(grown[25]["action"], "partner.enabled");
    let token = s.stop();
    let s = InProcess::start(&data, Some(token));
    assert_eq!(all_entries(&s, "acme", &ops, 1000), grown);
    // Compacted again with nothing after: the snapshot alone.
    s.engine().compact("acme").expect("compacts");
    let token = s.stop();
    let s = InProcess::start(&data, Some(token));
    assert_eq!(all_entries(&s, "acme", &ops, 1000), grown);
}

/// Every file under `dir`, as bytes, but the configuration (which holds
/// the partner API keys by design).
fn files_under(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else if path.file_name().is_some_and(|n| n != "segq.json") {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
}

#[test]
fn no_secret_reaches_a_log_line_a_response_or_an_audit_entry() {
    let (_dir, data) = data_dir();
    // Debug logging: every line the server writes is searched.
    let s = Server::start_with_env(&data, &[], &[("SEGQ_LOG", "debug")]);
    let admin = s.token.clone();
    let mut seen = Seen::default();
    let made = make_every_change(&s, &admin, &mut seen);
    let mut secrets = made.secrets.clone();
    secrets.extend(PARTNERS.iter().map(|p| partner_api_key(p)));
    // Requests that fail with a secret in them: an invalidated key, a
    // revoked one, a key of another workspace.
    let keys = call(
        &s,
        "GET",
        "/admin/workspaces/acme/keys",
        Body::None,
        &made.ops,
    )
    .expect_json(200);
    let dik = &made.secrets[2];
    // Two keys made in the same millisecond list in id order: find the
    // live one by its prefix, not by its place.
    let dik_id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| dik.starts_with(k["prefix"].as_str().unwrap()))
        .expect("the data import key is listed")["id"]
        .as_str()
        .unwrap();
    call(
        &s,
        "DELETE",
        &format!("/admin/workspaces/acme/keys/{dik_id}"),
        Body::None,
        &made.ops,
    )
    .expect(200);
    let r = s.users(
        "amplitude",
        &users_body(dik, "c1", json!([{"user_ids": ["u1"]}])),
    );
    assert_eq!(r.status, 401, "{}", r.text);
    seen.keep(&r);
    let revoked = &made.secrets[1];
    let r = call(
        &s,
        "POST",
        "/workspaces/acme/segments/count",
        Body::Json(json!({"filter": "random_bucket < 10"})),
        revoked,
    );
    assert_eq!(r.status, 401, "{}", r.text);
    seen.keep(&r);
    // The audit log, through the API and the CLI.
    let page = call(
        &s,
        "GET",
        "/admin/workspaces/acme/audit?limit=1000",
        Body::None,
        &made.ops,
    );
    seen.keep(&page);
    let entries = page.expect_json(200)["entries"].as_array().unwrap().clone();
    assert!(entries.len() >= made.expected.len());
    let cli = segq(&[
        "audit",
        "--workspace",
        "acme",
        "--server",
        &s.url(""),
        "--token",
        &made.ops,
        "--oldest-first",
        "--limit",
        "5",
    ]);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let cli_out = String::from_utf8(cli.stdout).unwrap();
    let first: Vec<Value> = cli_out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let tokenless = segq(&["audit", "--workspace", "acme", "--server", &s.url("")]);
    assert!(!tokenless.status.success());
    let said = String::from_utf8_lossy(&tokenless.stderr);
    assert!(said.contains("workspace:admin"), "{said}");
    let oldest: Vec<Value> = entries.iter().rev().take(5).cloned().collect();
    assert_eq!(first, oldest);
    assert!(String::from_utf8_lossy(&cli.stderr).contains("--after 5"));
    let stderr = s.stop();
    assert!(stderr.lines().count() > 20, "debug logging:\n{stderr}");
    // The data directory read directly.
    let offline = segq(&[
        "audit",
        "--workspace",
        "acme",
        "--data",
        &data.display().to_string(),
    ]);
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    let offline_out = String::from_utf8(offline.stdout).unwrap();
    assert_eq!(offline_out.lines().count(), entries.len().min(100));

    let mut files = Vec::new();
    files_under(&data, &mut files);
    for secret in &secrets {
        // The admin token is printed once, when it is generated (and
        // nowhere else); the rest never.
        for (i, line) in stderr.lines().enumerate() {
            assert!(
                !line.contains(secret.as_str()),
                "log line {i} holds a secret: {line}"
            );
        }
        for text in &seen.0 {
            assert!(
                !text.contains(secret.as_str()),
                "an answer holds a secret: {text}"
            );
        }
        for e in &entries {
            assert!(
                !e.to_string().contains(secret.as_str()),
                "an entry holds a secret: {e}"
            );
        }
        assert!(!cli_out.contains(secret.as_str()) && !offline_out.contains(secret.as_str()));
        for (path, bytes) in &files {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds a secret",
                path.display()
            );
        }
    }
    for text in seen.0.iter().chain(
        entries
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .iter(),
    ) {
        assert!(!text.contains(&admin), "the admin token in {text}");
    }
}

#[test]
fn acknowledged_changes_keep_their_entries_through_a_kill() {
    let (_dir, data) = data_dir();
    let s = Server::start(&data, &[]);
    let admin = s.token.clone();
    s.create_workspace("acme");
    let (_, ops) = new_key(&s, "acme", "ops", &ALL_SCOPES, &admin);
    for i in 0..5 {
        call(
            &s,
            "POST",
            "/workspaces/acme/segments",
            Body::Json(json!({"name": format!("s{i}"), "filter": "random_bucket < 10"})),
            &ops,
        )
        .expect(201);
    }
    let before = all_entries(&s, "acme", &ops, 1000);
    assert_eq!(before.len(), 7);
    // No shutdown, no sync: what was acknowledged is on disk.
    s.kill();
    let s = Server::restart(&data, &admin, &[]);
    assert_eq!(all_entries(&s, "acme", &ops, 1000), before);
}
