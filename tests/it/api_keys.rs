//! Workspace API keys: created, listed and revoked per workspace, shown
//! once, durable across restarts and compactions; and the matrix of every
//! route against every kind of caller (no token, a wrong one, the server
//! admin token, a key of another workspace, a key without the route's
//! scope, a key with it), built from one table checked against
//! `server::auth::ACCESS` and the router's routes.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;
use segq::access::Scope;
use segq::server::auth::{Access, ACCESS};
use segq::server::routes::{self, *};
use serde_json::{json, Value};

use crate::support::server::{
    cohort_body, users_body, Conn, InProcess, Resp, Server, ALL_SCOPES, PARTNER_API_KEY,
};

/// A request body.
#[derive(Clone)]
enum Body {
    None,
    Json(Value),
    /// A content type and the bytes.
    Raw(&'static str, String),
}

/// One request with `token` as its bearer token (none if `None`).
fn call(c: &Conn, method: &str, path: &str, body: &Body, token: Option<&str>) -> Resp {
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
    let r = req.send().expect("the server answers");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Resp {
        status,
        headers,
        text: r.text().expect("a body"),
    }
}

/// Creates an API key of `ws` with `token`: `(id, key)`.
fn new_key(c: &Conn, ws: &str, name: &str, scopes: &[&str], token: &str) -> (String, String) {
    let v = call(
        c,
        "POST",
        &format!("/admin/workspaces/{ws}/api_keys"),
        &Body::Json(json!({"name": name, "scopes": scopes})),
        Some(token),
    )
    .expect_json(201);
    (
        v["id"].as_str().expect("an id").to_string(),
        v["key"].as_str().expect("a key").to_string(),
    )
}

fn api_keys(c: &Conn, ws: &str, token: &str) -> Value {
    call(
        c,
        "GET",
        &format!("/admin/workspaces/{ws}/api_keys"),
        &Body::None,
        Some(token),
    )
    .expect_json(200)
}

// ----- creating, listing, revoking -----

#[test]
fn a_key_is_shown_once_listed_without_its_secret_and_revoked_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    s.create_workspace("acme");
    let admin = s.token.clone();

    let created = call(
        &s,
        "POST",
        "/admin/workspaces/acme/api_keys",
        &Body::Json(json!({"name": "dashboard", "scopes": ["segments:read", "segments:read"]})),
        Some(&admin),
    )
    .expect_json(201);
    let (id, key) = (
        created["id"].as_str().unwrap().to_string(),
        created["key"].as_str().unwrap().to_string(),
    );
    // Duplicates folded; the id is public, the key long and random.
    assert_eq!(created["scopes"], json!(["segments:read"]));
    assert_eq!(created["name"], "dashboard");
    assert!(id.starts_with("ak_") && key.starts_with("sqk_") && key.len() == 68);

    // Listed with its id, name, scopes and time, never the key or digest.
    let list = api_keys(&s, "acme", &admin);
    let listed = list.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    let fields: BTreeSet<&str> = listed[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from(["created_at", "id", "name", "revoked_at", "scopes"])
    );
    assert!(!list.to_string().contains(&key[4..]), "{list}");
    assert_eq!(listed[0]["revoked_at"], Value::Null);

    // It works, for its scope only.
    let count = Body::Json(json!({"filter": "random_bucket < 5000"}));
    call(
        &s,
        "POST",
        "/workspaces/acme/segments/count",
        &count,
        Some(&key),
    )
    .expect(200);
    let r = call(
        &s,
        "GET",
        "/admin/workspaces/acme/cohorts",
        &Body::None,
        Some(&key),
    );
    assert_eq!(
        (r.status, r.json()["scope"].clone()),
        (403, json!("workspace:admin"))
    );

    // Revoked: refused by the next request.
    call(
        &s,
        "DELETE",
        &format!("/admin/workspaces/acme/api_keys/{id}"),
        &Body::None,
        Some(&admin),
    )
    .expect(200);
    call(
        &s,
        "POST",
        "/workspaces/acme/segments/count",
        &count,
        Some(&key),
    )
    .expect(401);
    let list = api_keys(&s, "acme", &admin);
    assert!(list[0]["revoked_at"].is_string(), "{list}");
    // Again: nothing changes; an unknown id is a 404 naming it.
    call(
        &s,
        "DELETE",
        &format!("/admin/workspaces/acme/api_keys/{id}"),
        &Body::None,
        Some(&admin),
    )
    .expect(200);
    let r = call(
        &s,
        "DELETE",
        "/admin/workspaces/acme/api_keys/ak_nope",
        &Body::None,
        Some(&admin),
    );
    assert_eq!(r.status, 404);
    assert!(r.message().contains("ak_nope"), "{}", r.text);
    assert_eq!(api_keys(&s, "acme", &admin), list);
}

#[test]
fn bad_key_requests_are_a_400_naming_the_problem_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    s.create_workspace("acme");
    let admin = s.token.clone();
    let long = "x".repeat(101);
    for (body, says) in [
        (json!({"name": "", "scopes": ["segments:read"]}), "name"),
        (json!({"name": "  ", "scopes": ["segments:read"]}), "name"),
        (json!({"name": long, "scopes": ["segments:read"]}), "100"),
        (
            json!({"name": "a\u{7}b", "scopes": ["segments:read"]}),
            "control",
        ),
        (json!({"name": "n", "scopes": []}), "at least one"),
        (
            json!({"name": "n", "scopes": ["segments:read", "segments:write"]}),
            "segments:write",
        ),
        (json!({"name": "n", "scopes": "segments:read"}), "sequence"),
        (json!({"name": "n"}), "scopes"),
        (
            json!({"name": "n", "scopes": ["users:write"], "key": "mine"}),
            "key",
        ),
    ] {
        let r = call(
            &s,
            "POST",
            "/admin/workspaces/acme/api_keys",
            &Body::Json(body.clone()),
            Some(&admin),
        );
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(r.message().contains(says), "{body}: {}", r.text);
    }
    assert_eq!(api_keys(&s, "acme", &admin), json!([]));
    // An unknown workspace is a 404 before the body is judged.
    let r = call(
        &s,
        "POST",
        "/admin/workspaces/ghost/api_keys",
        &Body::Json(json!({"name": "", "scopes": []})),
        Some(&admin),
    );
    assert_eq!(r.status, 404, "{}", r.text);
}

/// An in-process server on a fresh data directory (returned with its
/// folder, which must outlive it) with the workspace `acme`.
fn in_process_with_acme() -> (tempfile::TempDir, std::path::PathBuf, InProcess) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    crate::support::server::write_config(&data);
    let s = InProcess::start(&data, None);
    s.create_workspace("acme");
    (dir, data, s)
}

#[test]
fn keys_and_revocations_survive_restarts_and_compactions() {
    let (_dir, data, s) = in_process_with_acme();
    let admin = s.token.clone();
    let (_, reader) = new_key(&s, "acme", "reader", &["segments:read"], &admin);
    let (gone_id, gone) = new_key(&s, "acme", "gone", &ALL_SCOPES, &admin);
    let count = Body::Json(json!({"filter": "random_bucket < 5000"}));
    let works = |c: &Conn, key: &str| {
        call(
            c,
            "POST",
            "/workspaces/acme/segments/count",
            &count,
            Some(key),
        )
        .status
    };
    assert_eq!((works(&s, &reader), works(&s, &gone)), (200, 200));
    call(
        &s,
        "DELETE",
        &format!("/admin/workspaces/acme/api_keys/{gone_id}"),
        &Body::None,
        Some(&admin),
    )
    .expect(200);
    let listed = api_keys(&s, "acme", &admin);
    let token = s.stop();

    // Restarted: from the log.
    let s = InProcess::start(&data, Some(token));
    assert_eq!((works(&s, &reader), works(&s, &gone)), (200, 401));
    assert_eq!(api_keys(&s, "acme", &admin), listed);
    // Compacted, then restarted: from the snapshot.
    s.engine().compact("acme").expect("compacts");
    assert_eq!((works(&s, &reader), works(&s, &gone)), (200, 401));
    let (_, late) = new_key(&s, "acme", "late", &["segments:read"], &admin);
    let token = s.stop();
    let folder = data.join("workspaces").join("acme");
    let snapshots = std::fs::read_dir(&folder)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".segqsnap")
        })
        .count();
    assert!(snapshots >= 1, "a snapshot in {}", folder.display());
    let s = InProcess::start(&data, Some(token));
    assert_eq!(
        (works(&s, &reader), works(&s, &gone), works(&s, &late)),
        (200, 401, 200)
    );
    let now = api_keys(&s, "acme", &admin);
    assert_eq!(now.as_array().unwrap()[..2], listed.as_array().unwrap()[..]);
    // Nowhere on disk is a key itself.
    for entry in walk(&data) {
        let bytes = std::fs::read(&entry).unwrap();
        for key in [&reader, &gone, &late] {
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                "{} holds a key",
                entry.display()
            );
        }
    }
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_key_of_another_workspace_gets_the_unknown_workspace_answer_word_for_word() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    s.create_workspace("acme");
    s.create_workspace("other");
    let (_, other) = new_key(&s, "other", "o", &ALL_SCOPES, &s.token);
    let (_, acme) = new_key(&s, "acme", "a", &ALL_SCOPES, &s.token);
    for path in [
        "/workspaces/{ws}/segments",
        "/admin/workspaces/{ws}/cohorts",
        "/admin/workspaces/{ws}/api_keys",
        "/workspaces/{ws}/attributes",
    ] {
        let foreign = call(
            &s,
            "GET",
            &path.replace("{ws}", "acme"),
            &Body::None,
            Some(&other),
        );
        let unknown = call(
            &s,
            "GET",
            &path.replace("{ws}", "ghost"),
            &Body::None,
            Some(&acme),
        );
        assert_eq!((foreign.status, unknown.status), (404, 404), "{path}");
        assert_eq!(
            foreign.text.replace("acme", "ghost"),
            unknown.text,
            "{path}"
        );
        assert_eq!(
            foreign.header("content-type"),
            unknown.header("content-type")
        );
        assert_eq!(foreign.json(), json!({"message": "no workspace \"acme\""}));
    }
    // And as the handler answers the admin token for an unknown workspace.
    let by_key = call(
        &s,
        "GET",
        "/admin/workspaces/ghost/api_keys",
        &Body::None,
        Some(&acme),
    );
    let by_admin = call(
        &s,
        "GET",
        "/admin/workspaces/ghost/api_keys",
        &Body::None,
        Some(&s.token),
    );
    assert_eq!(
        (by_key.status, by_key.text),
        (by_admin.status, by_admin.text)
    );
}

// ----- the matrix -----

/// The credentials of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cred {
    NoToken,
    Wrong,
    ServerAdmin,
    OtherWorkspace,
    WithoutScope,
    WithScope,
}

const CREDS: [Cred; 6] = [
    Cred::NoToken,
    Cred::Wrong,
    Cred::ServerAdmin,
    Cred::OtherWorkspace,
    Cred::WithoutScope,
    Cred::WithScope,
];

/// One row: a route's method and template, a concrete request, and the
/// status of that request when it is let through.
struct Case {
    method: &'static str,
    route: &'static str,
    path: String,
    body: Body,
    ok: u16,
}

/// What the matrix sets up in workspace `acme`: ids the requests use and
/// strings of its data that no refused answer may hold.
struct Setup {
    dik: String,
    spare_dik_id: String,
    seg_id: String,
    spare_seg_id: String,
    spare_api_key_id: String,
    secrets: Vec<String>,
}

fn set_up(s: &Server) -> Setup {
    s.create_workspace("acme");
    s.create_workspace("other");
    let (dik_id, dik) = s.create_key("acme", "amplitude");
    let (spare_dik_id, _) = s.create_key("acme", "amplitude");
    s.upsert_user("acme", &json!({"external_id": "u-secret-1"}));
    s.upsert_user("acme", &json!({"devices": ["d-anon-secret"]}));
    for spare in ["u-spare-del", "u-merge-src", "u-merge-dst", "u-rename-old"] {
        s.upsert_user("acme", &json!({"external_id": spare}));
    }
    for cohort in ["c-secret", "c-spare"] {
        s.create_cohort("amplitude", &cohort_body(&dik, cohort, "Secret cohort"))
            .expect(201);
    }
    s.users(
        "amplitude",
        &users_body(&dik, "c-secret", json!([{"user_ids": ["u-secret-1"]}])),
    )
    .expect(200);
    let seg = |name: &str| {
        s.admin_post(
            "/workspaces/acme/segments",
            &json!({"name": name, "filter": "amplitude_cohorts includes_value \"c-secret\""}),
        )
        .expect_json(201)["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let seg_id = seg("seg-secret");
    let spare_seg_id = seg("seg-secret-spare");
    s.admin_post(
        "/admin/workspaces/acme/users/attributes",
        &json!({"user": {"external_id": "u-secret-1"}, "attributes": {"plan_secret": "gold-secret"}}),
    )
    .expect(200);
    let (spare_api_key_id, spare_api_key) =
        new_key(s, "acme", "spare", &["segments:read"], &s.token);
    let secrets = [
        "u-secret-1",
        "d-anon-secret",
        "c-secret",
        "Secret cohort",
        "seg-secret",
        "plan_secret",
        "gold-secret",
    ]
    .iter()
    .map(|x| x.to_string())
    .chain([
        dik_id,
        dik.clone(),
        spare_dik_id.clone(),
        seg_id.clone(),
        spare_seg_id.clone(),
        spare_api_key_id.clone(),
        spare_api_key,
    ])
    .collect();
    Setup {
        dik,
        spare_dik_id,
        seg_id,
        spare_seg_id,
        spare_api_key_id,
        secrets,
    }
}

/// Every route and method, with a request that succeeds once let through.
fn cases(st: &Setup) -> Vec<Case> {
    let j = Body::Json;
    let user = json!({"external_id": "u-secret-1"});
    let case = |method, route, path: &str, body, ok| Case {
        method,
        route,
        path: path.to_string(),
        body,
        ok,
    };
    vec![
        case("GET", HEALTHZ, "/healthz", Body::None, 200),
        case("GET", READYZ, "/readyz", Body::None, 200),
        case("GET", METRICS, "/metrics", Body::None, 200),
        case("GET", OPENAPI, "/openapi.json", Body::None, 200),
        case("GET", DOCS, "/docs", Body::None, 200),
        case("GET", CONSOLE, "/", Body::None, 200),
        case("GET", CONSOLE_ASSET, "/console/app.js", Body::None, 200),
        case(
            "GET",
            PARTNERS,
            "/admin/workspaces/acme/partners",
            Body::None,
            200,
        ),
        case(
            "POST",
            COHORTS,
            "/partners/amplitude/cohorts",
            j(cohort_body(&st.dik, "c-secret", "Secret cohort")),
            200,
        ),
        case(
            "POST",
            COHORT_USERS,
            "/partners/amplitude/cohorts/users",
            j(users_body(
                &st.dik,
                "c-secret",
                json!([{"user_ids": ["u-secret-1"]}]),
            )),
            200,
        ),
        case(
            "POST",
            COHORT_DELETE,
            "/partners/amplitude/cohorts/delete",
            j(
                json!({"partner_api_key": PARTNER_API_KEY, "client_secret": st.dik, "cohort_id": "c-none"}),
            ),
            404,
        ),
        case("GET", WORKSPACES, "/admin/workspaces", Body::None, 200),
        case(
            "POST",
            WORKSPACES,
            "/admin/workspaces",
            j(json!({"name": "acme"})),
            200,
        ),
        case(
            "GET",
            API_KEYS,
            "/admin/workspaces/acme/api_keys",
            Body::None,
            200,
        ),
        case(
            "POST",
            API_KEYS,
            "/admin/workspaces/acme/api_keys",
            j(json!({"name": "matrix", "scopes": ["segments:read"]})),
            201,
        ),
        case(
            "DELETE",
            API_KEY,
            &format!("/admin/workspaces/acme/api_keys/{}", st.spare_api_key_id),
            Body::None,
            200,
        ),
        case(
            "GET",
            AUDIT,
            "/admin/workspaces/acme/audit?limit=5",
            Body::None,
            200,
        ),
        case(
            "POST",
            CREATE_KEY,
            "/admin/workspaces/acme/partners/amplitude/keys",
            Body::None,
            201,
        ),
        case("GET", KEYS, "/admin/workspaces/acme/keys", Body::None, 200),
        case(
            "DELETE",
            KEY,
            &format!("/admin/workspaces/acme/keys/{}", st.spare_dik_id),
            Body::None,
            200,
        ),
        case(
            "POST",
            ENABLE_PARTNER,
            "/admin/workspaces/acme/partners/mixpanel/enable",
            Body::None,
            200,
        ),
        case(
            "GET",
            COHORT_STATS,
            "/admin/workspaces/acme/cohorts",
            Body::None,
            200,
        ),
        case(
            "GET",
            DATA_POINTS,
            "/admin/workspaces/acme/data_points",
            Body::None,
            200,
        ),
        case(
            "DELETE",
            COHORT,
            "/admin/workspaces/acme/cohorts/amplitude/c-spare",
            Body::None,
            200,
        ),
        case(
            "POST",
            SEGMENTS,
            "/workspaces/acme/segments",
            j(json!({"name": "matrix", "filter": "random_bucket < 5000"})),
            201,
        ),
        case(
            "PUT",
            SEGMENT,
            &format!("/workspaces/acme/segments/{}", st.seg_id),
            j(json!({"name": "seg-secret", "filter": "random_bucket < 6000"})),
            200,
        ),
        case(
            "DELETE",
            SEGMENT,
            &format!("/workspaces/acme/segments/{}", st.spare_seg_id),
            Body::None,
            200,
        ),
        case(
            "POST",
            USERS,
            "/admin/workspaces/acme/users",
            j(user.clone()),
            200,
        ),
        case(
            "POST",
            ALIASES,
            "/admin/workspaces/acme/users/aliases",
            j(json!({"user": user, "alias_label": "email", "alias_name": "m@x"})),
            200,
        ),
        case(
            "POST",
            DEVICES,
            "/admin/workspaces/acme/users/devices",
            j(json!({"user": user, "device_id": "d-matrix"})),
            200,
        ),
        case(
            "POST",
            IDENTIFY,
            "/admin/workspaces/acme/users/identify",
            j(json!({"user": {"device_id": "d-anon-secret"}, "external_id": "u-ident"})),
            200,
        ),
        case(
            "POST",
            IMPORT,
            "/admin/workspaces/acme/users/import",
            Body::Raw(
                "application/x-ndjson",
                "{\"external_id\": \"u-imp\"}\n".into(),
            ),
            200,
        ),
        case(
            "POST",
            USER_ATTRIBUTES,
            "/admin/workspaces/acme/users/attributes",
            j(json!({"user": user, "attributes": {"plan_secret": "silver"}})),
            200,
        ),
        case(
            "PUT",
            ATTRIBUTE,
            "/admin/workspaces/acme/attributes/age",
            j(json!({"type": "integer"})),
            200,
        ),
        case(
            "POST",
            SEGMENT_COUNT,
            "/workspaces/acme/segments/count",
            j(json!({"filter": "random_bucket < 5000"})),
            200,
        ),
        case(
            "POST",
            SEGMENT_BREAKDOWN,
            "/workspaces/acme/segments/breakdown",
            j(
                json!({"filter": "amplitude_cohorts includes_value \"c-secret\" and random_bucket < 5000"}),
            ),
            200,
        ),
        case(
            "POST",
            SEGMENT_MEMBERS,
            "/workspaces/acme/segments/members",
            j(json!({"filter": "random_bucket >= 0"})),
            200,
        ),
        case(
            "POST",
            SEGMENT_CHECK,
            "/workspaces/acme/segments/check",
            j(json!({"filter": "random_bucket >= 0", "user": user})),
            200,
        ),
        case(
            "POST",
            USER_SEGMENTS,
            "/workspaces/acme/users/segments",
            j(json!({"user": user, "segment_ids": [st.seg_id]})),
            200,
        ),
        case(
            "GET",
            SEGMENTS,
            "/workspaces/acme/segments",
            Body::None,
            200,
        ),
        case(
            "GET",
            SEGMENT,
            &format!("/workspaces/acme/segments/{}", st.seg_id),
            Body::None,
            200,
        ),
        case(
            "GET",
            SEGMENT_SIZE,
            &format!("/workspaces/acme/segments/{}/size", st.seg_id),
            Body::None,
            200,
        ),
        case(
            "GET",
            PARTNER_COHORTS,
            "/workspaces/acme/partners/amplitude/cohorts",
            Body::None,
            200,
        ),
        case(
            "GET",
            ATTRIBUTES,
            "/workspaces/acme/attributes",
            Body::None,
            200,
        ),
        case(
            "POST",
            DELETE_USERS,
            "/admin/workspaces/acme/users/delete",
            j(json!({"users": [{"external_id": "u-spare-del"}]})),
            200,
        ),
        case(
            "POST",
            MERGE_USERS,
            "/admin/workspaces/acme/users/merge",
            j(
                json!({"source": {"external_id": "u-merge-src"}, "target": {"external_id": "u-merge-dst"}}),
            ),
            200,
        ),
        case(
            "POST",
            RENAME_USER,
            "/admin/workspaces/acme/users/rename",
            j(json!({"external_id": "u-rename-old", "new_external_id": "u-rename-new"})),
            200,
        ),
    ]
}

/// What a credential must get on a route of `access` whose request
/// succeeds with `ok`: the status, and the scope a 403 names.
fn expected(access: Access, cred: Cred, ok: u16) -> (u16, Option<Scope>) {
    match (access, cred) {
        (Access::Public | Access::Partner, _) => (ok, None),
        (_, Cred::NoToken | Cred::Wrong) => (401, None),
        (Access::ServerAdmin, Cred::ServerAdmin) => (ok, None),
        // No workspace key may manage workspaces.
        (Access::ServerAdmin, _) => (403, None),
        (Access::KeysAdmin, Cred::ServerAdmin) => (ok, None),
        (Access::KeysAdmin | Access::Scope(_), Cred::OtherWorkspace) => (404, None),
        (Access::KeysAdmin, Cred::WithoutScope) => (403, Some(Scope::WorkspaceAdmin)),
        (Access::KeysAdmin, Cred::WithScope) => (ok, None),
        (Access::Scope(s), Cred::ServerAdmin | Cred::WithoutScope) => (403, Some(s)),
        (Access::Scope(_), Cred::WithScope) => (ok, None),
    }
}

#[test]
fn the_access_table_names_every_route_and_method_the_router_serves() {
    let table: BTreeSet<&str> = ACCESS.iter().map(|(_, r, _)| *r).collect();
    let all: BTreeSet<&str> = routes::ALL.iter().copied().collect();
    assert_eq!(all.len(), routes::ALL.len(), "a route listed twice");
    assert_eq!(table, all, "routes::ALL and auth::ACCESS differ");
    let pairs: BTreeSet<(&str, &str)> = ACCESS.iter().map(|(m, r, _)| (*m, *r)).collect();
    assert_eq!(
        pairs.len(),
        ACCESS.len(),
        "a method of a route listed twice"
    );

    // Probed on a server: a method answers other than 405 exactly when
    // the table lists it.
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    let st = set_up(&s);
    let paths: BTreeMap<&str, String> = cases(&st).into_iter().map(|c| (c.route, c.path)).collect();
    for route in routes::ALL {
        let path = &paths[route];
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let r = call(&s, method, path, &Body::None, None);
            assert_eq!(
                r.status != 405,
                pairs.contains(&(method, route)),
                "{method} {path}: {}",
                r.text
            );
        }
    }
}

#[test]
fn every_route_answers_every_kind_of_caller_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    let st = set_up(&s);
    let admin = s.token.clone();
    let (_, other) = new_key(&s, "other", "other", &ALL_SCOPES, &admin);
    let mut secrets = st.secrets.clone();
    // Per scope: a key of acme with it alone, and one with all the others.
    let mut with = BTreeMap::new();
    let mut without = BTreeMap::new();
    for scope in Scope::ALL {
        let others: Vec<&str> = Scope::ALL
            .iter()
            .filter(|x| **x != scope)
            .map(|x| x.name())
            .collect();
        let (id, key) = new_key(&s, "acme", "with", &[scope.name()], &admin);
        secrets.extend([id, key.clone()]);
        with.insert(scope, key);
        let (id, key) = new_key(&s, "acme", "without", &others, &admin);
        secrets.extend([id, key.clone()]);
        without.insert(scope, key);
    }
    let (_, all_scopes) = new_key(&s, "acme", "all", &ALL_SCOPES, &admin);

    let cases = cases(&st);
    let listed: BTreeSet<(&str, &str)> = cases.iter().map(|c| (c.method, c.route)).collect();
    let table: BTreeSet<(&str, &str)> = ACCESS.iter().map(|(m, r, _)| (*m, *r)).collect();
    assert_eq!(listed, table, "the matrix and auth::ACCESS differ");
    assert_eq!(listed.len(), cases.len());

    let mut checked = 0;
    for c in &cases {
        let access = ACCESS
            .iter()
            .find(|(m, r, _)| *m == c.method && *r == c.route)
            .map(|&(_, _, a)| a)
            .unwrap();
        for cred in CREDS {
            let token: Option<String> = match (cred, access) {
                (Cred::NoToken, _) => None,
                (Cred::Wrong, _) => Some(format!("sqk_{}", "0".repeat(64))),
                (Cred::ServerAdmin, _) => Some(admin.clone()),
                (Cred::OtherWorkspace, _) => Some(other.clone()),
                (Cred::WithoutScope, Access::Scope(sc)) => Some(without[&sc].clone()),
                (Cred::WithoutScope, Access::KeysAdmin) => {
                    Some(without[&Scope::WorkspaceAdmin].clone())
                }
                (Cred::WithScope, Access::Scope(sc)) => Some(with[&sc].clone()),
                (Cred::WithScope, Access::KeysAdmin) => Some(with[&Scope::WorkspaceAdmin].clone()),
                // Public and partner routes, and the server admin's: a
                // key of the workspace with every scope.
                (Cred::WithoutScope | Cred::WithScope, _) => Some(all_scopes.clone()),
            };
            // Requests that change something run once let through: the
            // admin token's on the admin routes, the key's on the others.
            let (want, scope) = expected(access, cred, c.ok);
            let r = call(&s, c.method, &c.path, &c.body, token.as_deref());
            let what = format!("{cred:?} {} {}", c.method, c.path);
            assert_eq!(r.status, want, "{what}: {}", r.text);
            checked += 1;
            if want == c.ok && !matches!(want, 401 | 403) {
                continue;
            }
            // A refusal: JSON with a message (and the scope), no data.
            let body = r.json();
            let keys: BTreeSet<&str> = body
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            match scope {
                Some(sc) => {
                    assert_eq!(keys, BTreeSet::from(["message", "scope"]), "{what}");
                    assert_eq!(body["scope"], sc.name(), "{what}");
                    assert!(r.message().contains(sc.name()), "{what}: {}", r.text);
                }
                None => assert_eq!(keys, BTreeSet::from(["message"]), "{what}"),
            }
            if want == 401 {
                assert!(r.header("www-authenticate").is_some(), "{what}");
            }
            if want == 404 {
                assert_eq!(body, json!({"message": "no workspace \"acme\""}), "{what}");
            }
            for secret in &secrets {
                assert!(!r.text.contains(secret.as_str()), "{what}: {}", r.text);
            }
        }
    }
    assert_eq!(checked, ACCESS.len() * CREDS.len());
}

#[test]
fn a_backup_restored_beside_its_workspace_does_not_bring_a_second_life_to_its_keys() {
    let (dir, data, s) = in_process_with_acme();
    let admin = s.token.clone();
    let (id, key) = new_key(&s, "acme", "k", &["segments:read"], &admin);
    s.engine().compact("acme").expect("compacts");
    let folder = data.join("workspaces").join("acme");
    let snap = walk(&folder)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".segqsnap"))
        .expect("a snapshot");
    let backup = dir.path().join("backup.segqsnap");
    std::fs::copy(&snap, &backup).unwrap();

    // Valid in acme, or revoked there: the copy is refused, naming the key.
    for revoke in [false, true] {
        if revoke {
            call(
                &s,
                "DELETE",
                &format!("/admin/workspaces/acme/api_keys/{id}"),
                &Body::None,
                Some(&admin),
            )
            .expect(200);
        }
        let e = s
            .engine()
            .restore_workspace("copy", &backup)
            .expect_err("refused");
        assert!(e.to_string().contains(&id), "{e}");
        assert!(s.engine().workspace("copy").is_none());
    }
    let count = Body::Json(json!({"filter": "random_bucket < 5000"}));
    let r = call(
        &s,
        "POST",
        "/workspaces/copy/segments/count",
        &count,
        Some(&key),
    );
    assert_eq!(r.status, 401, "{}", r.text);
}

#[test]
fn the_cli_takes_a_workspace_key_from_segq_token_and_says_what_the_admin_token_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    s.create_workspace("acme");
    let (_, key) = new_key(&s, "acme", "cli", &["segments:read"], &s.token);
    let count = |token: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_segq"))
            .args(["count", "random_bucket < 5000", "--server", &s.base])
            .args(["--workspace", "acme"])
            .env("SEGQ_TOKEN", token)
            .output()
            .expect("segq runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = count(&key);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"count\""), "{out}");
    let (code, _, err) = count(&s.token);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("403") && err.contains("segments:read"),
        "{err}"
    );
}
