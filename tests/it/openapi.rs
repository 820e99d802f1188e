//! The OpenAPI document (`GET /openapi.json`) and the reference page
//! (`GET /docs`): the document validates against the official OpenAPI 3.1
//! schema (`fixtures/openapi/`), every route and method the server
//! answers is an operation of it and no other, the requests of the
//! README and of `fixtures/wire/` are valid against the operations'
//! request schemas (and a wire request the server refuses with 400 is
//! not), every example the document gives is valid against its schema,
//! and what the server answers to a tour of every operation is valid
//! against the response schema of its status.

use std::collections::BTreeSet;

use reqwest::Method;
use segq::server::auth::ACCESS;
use segq::server::openapi::{self, DOCS_CSP};
use segq::server::routes;
use serde_json::{json, Value};

use crate::support::server::{cohort_body, users_body, InProcess, Resp, PARTNER_API_KEY};

/// The official OpenAPI 3.1 schema (see `fixtures/openapi/README.md`).
const OAS_SCHEMA: &str = include_str!("../../fixtures/openapi/oas-3.1-schema.json");
const README: &str = include_str!("../../README.md");

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn served() -> (tempfile::TempDir, InProcess) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    crate::support::server::write_config(&data);
    let s = InProcess::start(&data, None);
    (dir, s)
}

fn fetch(s: &InProcess, path: &str) -> Resp {
    let r = s
        .client
        .get(s.url(path))
        .send()
        .expect("the server answers");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Resp {
        status,
        headers,
        text: r.text().expect("a body"),
    }
}

/// A validator of `schema`, whose `$ref`s point into `doc`'s components.
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = match schema {
        Value::Object(_) => schema.clone(),
        // `true` / `false`.
        other => json!({"allOf": [other]}),
    };
    root["components"] = doc["components"].clone();
    jsonschema::draft202012::new(&root)
        .unwrap_or_else(|e| panic!("the schema {schema} does not compile: {e}"))
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// A reference (`{"$ref": "#/..."}`) resolved within `doc`, or `v` itself.
fn deref<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => doc
            .pointer(r.strip_prefix('#').expect("a local reference"))
            .unwrap_or_else(|| panic!("{r} does not resolve")),
        None => v,
    }
}

/// The route template of ACCESS that `path` (no query string) matches.
fn template_of(path: &str) -> Option<&'static str> {
    let parts: Vec<&str> = path.split('/').collect();
    let mut found: Vec<&'static str> = ACCESS
        .iter()
        .map(|(_, r, _)| *r)
        .filter(|r| {
            let t: Vec<&str> = r.split('/').collect();
            t.len() == parts.len()
                && t.iter()
                    .zip(&parts)
                    .all(|(t, p)| t == p || (t.starts_with('{') && !p.is_empty()))
        })
        .collect();
    found.sort_unstable();
    found.dedup();
    // A literal segment wins over a parameter (`…/cohorts/users` over
    // `…/cohorts/{x}`): the most literal segments.
    found
        .into_iter()
        .max_by_key(|r| r.split('/').filter(|s| !s.starts_with('{')).count())
}

/// The JSON request schema of an operation.
fn request_schema<'a>(doc: &'a Value, method: &str, route: &str) -> &'a Value {
    let op = openapi::operation(doc, method, route)
        .unwrap_or_else(|| panic!("{method} {route} is not documented"));
    let body = deref(doc, &op["requestBody"]);
    let schema = &body["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {route} documents no JSON request body"
    );
    schema
}

/// Validates a JSON request body against its operation's schema.
fn request_errors(doc: &Value, method: &str, route: &str, body: &Value) -> Vec<String> {
    errors(&validator(doc, request_schema(doc, method, route)), body)
}

// ----- the document -----

#[test]
fn the_served_document_is_valid_openapi_3_1() {
    let (_dir, s) = served();
    let r = fetch(&s, "/openapi.json");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let doc: Value = serde_json::from_str(&r.text).expect("JSON");
    assert_eq!(
        doc,
        openapi::document(),
        "the served document is the built one"
    );
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));

    let oas: Value = serde_json::from_str(OAS_SCHEMA).expect("the vendored schema parses");
    let v = jsonschema::draft202012::new(&oas).expect("the OpenAPI schema compiles");
    let errs = errors(&v, &doc);
    assert!(errs.is_empty(), "not valid OpenAPI 3.1: {errs:#?}");

    // The validator is not vacuous: a document with a broken operation
    // and no info fails it.
    let mut broken = doc.clone();
    broken["paths"]["/healthz"]["get"]["responses"] = json!("none");
    assert!(!v.is_valid(&broken));
    let mut broken = doc.clone();
    broken.as_object_mut().unwrap().remove("info");
    assert!(!v.is_valid(&broken));

    // Every schema of the document is a valid JSON Schema (2020-12) and
    // compiles with its references resolved.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    assert!(schemas.len() > 30, "{}", schemas.len());
    for (name, schema) in schemas {
        assert!(
            jsonschema::meta::is_valid(schema),
            "components.schemas.{name} is not a valid JSON Schema"
        );
        validator(&doc, schema);
    }
}

#[test]
fn every_route_is_an_operation_and_every_operation_a_route() {
    let (_dir, s) = served();
    let doc: Value = serde_json::from_str(&fetch(&s, "/openapi.json").text).unwrap();
    let served: BTreeSet<(String, String)> = ACCESS
        .iter()
        .map(|(m, r, _)| (m.to_ascii_lowercase(), r.to_string()))
        .collect();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(route, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(move |m| (m.to_string(), route.clone()))
        })
        .collect();
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "routes missing from /openapi.json"
    );
    assert_eq!(
        documented.difference(&served).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "operations no route serves"
    );
    let all: BTreeSet<&str> = routes::ALL.iter().copied().collect();
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(all, paths, "routes::ALL and the document's paths differ");
    // The document and the server agree on who may call what.
    for (method, route, access) in ACCESS {
        let op = openapi::operation(&doc, method, route).unwrap();
        assert_eq!(op["x-segq-access"], access.describe(), "{method} {route}");
    }
}

#[test]
fn the_docs_page_renders_the_document_from_this_server_only() {
    let (_dir, s) = served();
    let r = fetch(&s, "/docs");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(
        r.header("content-security-policy").as_deref(),
        Some(DOCS_CSP)
    );
    let html = r.text;
    assert!(html.starts_with("<!doctype html>"), "{}", &html[..40]);
    assert!(
        html.contains("fetch(\"openapi.json\""),
        "it loads the document"
    );
    // Nothing from elsewhere: no URL with a scheme or a protocol-relative
    // one, no external script, style sheet, image or font.
    for needle in [
        "http:", "https:", "//cdn", "src=", "<link", "@import", "url(",
    ] {
        assert!(!html.contains(needle), "/docs holds {needle:?}");
    }
    // The policy forbids loading from any other origin.
    assert!(DOCS_CSP.starts_with("default-src 'none';"));
    assert!(DOCS_CSP.contains("connect-src 'self'"));
    // And the document it fetches is served, unauthenticated, next to it.
    assert_eq!(fetch(&s, "/openapi.json").status, 200);
}

// ----- the examples -----

/// A headless Chromium (or Chrome) to render pages with: `SEGQ_BROWSER`,
/// else the first of the usual names on the `PATH`.
pub fn browser() -> Option<std::path::PathBuf> {
    if let Some(b) = std::env::var_os("SEGQ_BROWSER") {
        return Some(b.into());
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome", "chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// `/docs` as a real browser draws it (headless Chromium, the DOM after
/// its script ran): every operation of the document is an article of the
/// page with the id the page gives it, and no loading error is shown.
/// Without a browser the test says so and passes, unless
/// `SEGQ_REQUIRE_BROWSER` is set, as `.ci/run` sets it (and installs
/// Chromium).
#[test]
fn the_docs_page_renders_every_operation_in_a_browser() {
    let Some(browser) = browser() else {
        assert!(
            std::env::var_os("SEGQ_REQUIRE_BROWSER").is_none(),
            "SEGQ_REQUIRE_BROWSER is set but no chromium is on the PATH (or in SEGQ_BROWSER)"
        );
        eprintln!("no chromium on the PATH: /docs not rendered in a browser");
        return;
    };
    let (_dir, s) = served();
    let doc: Value = serde_json::from_str(&fetch(&s, "/openapi.json").text).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=20000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(s.url("/docs"))
        .output()
        .expect("the browser runs");
    assert!(
        out.status.success(),
        "{} failed: {}",
        browser.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        !dom.contains("class=\"intro error\""),
        "the page shows an error:\n{dom}"
    );
    assert!(
        !dom.contains("Loading the OpenAPI document"),
        "never loaded:\n{dom}"
    );
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            operations += 1;
            let name = op["operationId"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("{m}{path}"));
            let id: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            assert!(
                dom.contains(&format!("<article id=\"op-{id}\"")),
                "{m} {path} (op-{id}) is not drawn"
            );
        }
    }
    assert_eq!(dom.matches("<article ").count(), operations);
    assert_eq!(operations, ACCESS.len());
}

/// The curl commands of the README's shell blocks: (method, path,
/// JSON body).
fn readme_requests() -> Vec<(String, String, Option<Value>)> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut block = String::new();
    for line in README.lines() {
        if line.starts_with("```") {
            if in_sh {
                out.extend(curl_commands(&block));
                block.clear();
            }
            in_sh = !in_sh && line.trim() == "```sh";
            continue;
        }
        if in_sh {
            block.push_str(line);
            block.push('\n');
        }
    }
    out
}

/// Splits a shell block into its curl commands (continuation lines and
/// multi-line single-quoted arguments joined), and reads each one's
/// method, path and `-d` body.
fn curl_commands(block: &str) -> Vec<(String, String, Option<Value>)> {
    // Words, shell style: single quotes keep everything, `\` + newline
    // continues, `#` at a word's start comments to the line's end.
    let mut commands: Vec<Vec<String>> = vec![Vec::new()];
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = block.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '"' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '"' {
                        break;
                    }
                    word.push(q);
                }
            }
            '\\' if chars.peek() == Some(&'\n') => {
                chars.next();
            }
            '#' if !in_word => {
                for q in chars.by_ref() {
                    if q == '\n' {
                        break;
                    }
                }
                commands.push(Vec::new());
            }
            '\n' | ';' => {
                if in_word {
                    commands.last_mut().unwrap().push(std::mem::take(&mut word));
                    in_word = false;
                }
                commands.push(Vec::new());
            }
            c if c.is_whitespace() => {
                if in_word {
                    commands.last_mut().unwrap().push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        commands.last_mut().unwrap().push(word);
    }
    commands
        .into_iter()
        .filter(|c| c.first().map(String::as_str) == Some("curl"))
        .filter_map(|words| {
            let mut method = None;
            let mut body = None;
            let mut binary = false;
            let mut url = None;
            let mut i = 1;
            while i < words.len() {
                match words[i].as_str() {
                    "-X" => {
                        method = words.get(i + 1).cloned();
                        i += 1;
                    }
                    "-d" | "--data" => {
                        body = words.get(i + 1).cloned();
                        i += 1;
                    }
                    "--data-binary" => {
                        binary = true;
                        i += 1;
                    }
                    "-H" => i += 1,
                    w if w.contains("localhost:") => url = Some(w.to_string()),
                    _ => {}
                }
                i += 1;
            }
            let url = url?;
            let path = url[url.find('/')?..].split('?').next()?.to_string();
            let method = method.unwrap_or_else(|| {
                if body.is_some() || binary {
                    "POST".into()
                } else {
                    "GET".into()
                }
            });
            let body = body.map(|b| {
                serde_json::from_str::<Value>(&b)
                    .unwrap_or_else(|e| panic!("README: the body of {path} is not JSON: {e}\n{b}"))
            });
            Some((method, path, body))
        })
        .collect()
}

#[test]
fn the_readme_requests_are_valid_against_the_schemas() {
    let doc = openapi::document();
    let requests = readme_requests();
    let mut checked = 0;
    for (method, path, body) in &requests {
        let route = template_of(path)
            .unwrap_or_else(|| panic!("README: {method} {path} is no route of the server"));
        let op = openapi::operation(&doc, method, route)
            .unwrap_or_else(|| panic!("README: {method} {route} is not documented"));
        let Some(body) = body else { continue };
        assert!(op.get("requestBody").is_some(), "{method} {route}");
        let errs = request_errors(&doc, method, route, body);
        assert!(
            errs.is_empty(),
            "README: {method} {path}: {errs:#?}\n{body}"
        );
        checked += 1;
    }
    // Creating a workspace, an API key, a user, and a partner's users
    // request at least.
    assert!(
        checked >= 4,
        "only {checked} README requests found: {requests:?}"
    );

    // The filters of the README's JSON form section are filters.
    let filter = json!({"$ref": "#/components/schemas/Filter"});
    let v = validator(&doc, &filter);
    let section = &README[README.find("### JSON form").expect("the JSON form section")..];
    let section = &section[..section.find("### Meaning").expect("its end")];
    let mut filters = 0;
    for block in section.split("```json").skip(1) {
        let block = &block[..block.find("```").expect("a closed block")];
        let values: Vec<Value> = match serde_json::from_str(block) {
            Ok(v) => vec![v],
            Err(_) => block
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).expect("one filter a line"))
                .collect(),
        };
        for f in values {
            let errs = errors(&v, &f);
            assert!(errs.is_empty(), "README filter {f}: {errs:#?}");
            filters += 1;
        }
    }
    assert!(filters >= 14, "{filters}");
    // And what is not a filter is not.
    for bad in [
        json!({"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "c", "x": 1}),
        json!({"and": "x"}),
        json!(3),
        json!({"groups": []}),
    ] {
        assert!(!v.is_valid(&bad), "{bad}");
    }
}

#[test]
fn the_wire_fixtures_are_judged_by_the_schemas_as_by_the_server() {
    use segq::engine::WorkspaceHandle;
    use segq::examples;
    let doc = openapi::document();
    let ws = segq::Workspace::new("wire", 1);
    let handle = std::sync::Arc::new(WorkspaceHandle::in_memory(ws).unwrap());
    examples::add_users(&handle).unwrap();
    let mut refused = 0;
    for (name, text) in examples::WIRE {
        let ex: Value = serde_json::from_str(text).unwrap();
        let path = ex["path"].as_str().unwrap();
        let route = template_of(path).unwrap_or_else(|| panic!("{name}: {path}"));
        let errs = request_errors(&doc, "POST", route, &ex["body"]);
        let replayed = examples::replay(&handle, name, text, examples::demo_now()).unwrap();
        // The server refuses a body as malformed exactly when the schema
        // does (a 401 is about the credentials' values, not the shape).
        assert_eq!(
            replayed.status == 400,
            !errs.is_empty(),
            "{name}: the server answers {}, the schema says {errs:#?}",
            replayed.status
        );
        refused += usize::from(replayed.status == 400);
        // And the answer is the one documented for its status.
        let resp = response_errors(&doc, "POST", route, replayed.status, &replayed.body);
        assert!(resp.is_empty(), "{name}: {resp:#?}");
    }
    assert!(refused >= 1, "a malformed wire example is checked");
}

#[test]
fn every_documented_example_is_valid_against_its_schema() {
    let doc = openapi::document();
    let mut checked = 0;
    // Schemas' own examples.
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        let v = validator(&doc, schema);
        let examples = schema
            .get("examples")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .chain(schema.get("example").cloned());
        for ex in examples {
            let errs = errors(&v, &ex);
            assert!(errs.is_empty(), "{name}: example {ex}: {errs:#?}");
            checked += 1;
        }
    }
    // Operations' request and response examples.
    let media_examples = |media: &Value| -> Vec<Value> {
        let mut out: Vec<Value> = media.get("example").cloned().into_iter().collect();
        if let Some(map) = media.get("examples").and_then(Value::as_object) {
            out.extend(map.values().map(|e| deref(&doc, e)["value"].clone()));
        }
        out
    };
    for (route, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            let mut media: Vec<(String, &Value)> = Vec::new();
            if let Some(b) = op.get("requestBody") {
                for (ct, c) in deref(&doc, b)["content"].as_object().unwrap() {
                    media.push((format!("{m} {route} request {ct}"), c));
                }
            }
            for (status, r) in op["responses"].as_object().unwrap() {
                if let Some(content) = deref(&doc, r).get("content").and_then(Value::as_object) {
                    for (ct, c) in content {
                        media.push((format!("{m} {route} {status} {ct}"), c));
                    }
                }
            }
            for (at, c) in media {
                let v = validator(&doc, &c["schema"]);
                for ex in media_examples(c) {
                    let errs = errors(&v, &ex);
                    assert!(errs.is_empty(), "{at}: example {ex}: {errs:#?}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 60, "{checked}");
}

// ----- the answers -----

/// Why `body`, answered with `status` to `method route`, is not what the
/// document says (empty when it is).
fn response_errors(
    doc: &Value,
    method: &str,
    route: &str,
    status: u16,
    body: &Value,
) -> Vec<String> {
    let op = openapi::operation(doc, method, route)
        .unwrap_or_else(|| panic!("{method} {route} is not documented"));
    let Some(r) = op["responses"].get(status.to_string()) else {
        return vec![format!(
            "{method} {route}: status {status} is not documented"
        )];
    };
    let r = deref(doc, r);
    let Some(schema) = r["content"].get("application/json").map(|c| &c["schema"]) else {
        return vec![format!(
            "{method} {route} {status}: no JSON answer documented"
        )];
    };
    errors(&validator(doc, schema), body)
        .into_iter()
        .map(|e| format!("{method} {route} {status}: {e}\n{body}"))
        .collect()
}

/// Every operation called as a client would, and each answer checked
/// against the document: every route, its success and its usual errors.
#[test]
fn the_answers_are_what_the_document_says() {
    let (_dir, s) = served();
    let doc = openapi::document();
    let called: std::cell::RefCell<BTreeSet<(String, &'static str)>> = Default::default();
    let call = |method: &str, path: &str, body: Option<Value>, token: Option<&str>, want: u16| {
        let route = template_of(path.split('?').next().unwrap()).expect("a route");
        let mut req = s
            .client
            .request(Method::from_bytes(method.as_bytes()).unwrap(), s.url(path));
        if let Some(b) = &body {
            req = req.json(b);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().expect("the server answers");
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = r.text().unwrap();
        assert_eq!(status, want, "{method} {path}: {text}");
        let op = openapi::operation(&doc, method, route).unwrap();
        assert!(
            op["responses"].get(status.to_string()).is_some(),
            "{method} {route}: {status} is not documented"
        );
        if ct.starts_with("application/json") {
            let v: Value = serde_json::from_str(&text).unwrap();
            let errs = response_errors(&doc, method, route, status, &v);
            assert!(errs.is_empty(), "{errs:#?}");
        } else {
            let documented = deref(&doc, &op["responses"][status.to_string()])["content"]
                .as_object()
                .unwrap()
                .keys()
                .any(|k| ct.starts_with(k.as_str()));
            assert!(
                documented,
                "{method} {route} {status}: {ct} is not documented"
            );
        }
        called.borrow_mut().insert((method.to_string(), route));
        text
    };
    let admin = s.token.clone();
    let admin = Some(admin.as_str());

    call("GET", "/healthz", None, None, 200);
    call("GET", "/readyz", None, None, 200);
    call("GET", "/metrics", None, None, 200);
    call("GET", "/openapi.json", None, None, 200);
    call("GET", "/docs", None, None, 200);
    call("GET", "/", None, None, 200);
    call("GET", "/console/app.js", None, None, 200);
    call("GET", "/console/style.css", None, None, 200);
    call("GET", "/console/nope.js", None, None, 404);

    call(
        "POST",
        "/admin/workspaces",
        Some(json!({"name": "acme"})),
        admin,
        201,
    );
    call(
        "POST",
        "/admin/workspaces",
        Some(json!({"name": "acme"})),
        admin,
        200,
    );
    call(
        "POST",
        "/admin/workspaces",
        Some(json!({"name": "a b"})),
        admin,
        400,
    );
    call("GET", "/admin/workspaces", None, None, 401);
    call("GET", "/admin/workspaces", None, admin, 200);
    let created = call(
        "POST",
        "/admin/workspaces/acme/api_keys",
        Some(json!({"name": "ops", "scopes": ["workspace:admin", "segments:read", "users:write"]})),
        admin,
        201,
    );
    let created: Value = serde_json::from_str(&created).unwrap();
    let key_text = created["key"].as_str().unwrap().to_string();
    let key = Some(key_text.as_str());
    let reader = call(
        "POST",
        "/admin/workspaces/acme/api_keys",
        Some(json!({"name": "reader", "scopes": ["segments:read"]})),
        key,
        201,
    );
    let reader: Value = serde_json::from_str(&reader).unwrap();
    call(
        "POST",
        "/admin/workspaces/acme/api_keys",
        Some(json!({"name": "x", "scopes": ["segments:write"]})),
        key,
        400,
    );
    call("GET", "/admin/workspaces/acme/api_keys", None, key, 200);
    call("GET", "/admin/workspaces/nope/api_keys", None, key, 404);
    call("GET", "/admin/workspaces", None, key, 403);

    let dik = call(
        "POST",
        "/admin/workspaces/acme/partners/amplitude/keys",
        None,
        key,
        201,
    );
    let dik: Value = serde_json::from_str(&dik).unwrap();
    let secret = dik["key"].as_str().unwrap().to_string();
    call(
        "GET",
        "/admin/workspaces/acme/keys?partner=amplitude",
        None,
        key,
        200,
    );
    call(
        "POST",
        "/admin/workspaces/acme/partners/mixpanel/enable",
        None,
        key,
        200,
    );
    call(
        "POST",
        "/admin/workspaces/acme/partners/mixpanel/enable",
        None,
        admin,
        403,
    );

    call(
        "POST",
        "/admin/workspaces/acme/users",
        Some(json!({"external_id": "u-1", "devices": ["ios-1"],
                    "aliases": [{"alias_label": "email", "alias_name": "ann@example.com"}],
                    "attributes": {"country": "BR"}})),
        key,
        201,
    );
    call(
        "POST",
        "/admin/workspaces/acme/users",
        Some(json!({"external_id": "u-1", "devices": ["ios-2"]})),
        key,
        200,
    );
    call(
        "POST",
        "/admin/workspaces/acme/users",
        Some(json!({"devices": ["web-anon-42"]})),
        key,
        201,
    );
    call(
        "POST",
        "/admin/workspaces/acme/users/aliases",
        Some(json!({"user": {"external_id": "u-1"}, "alias_label": "crm", "alias_name": "c-1"})),
        key,
        200,
    );
    call(
        "POST",
        "/admin/workspaces/acme/users/devices",
        Some(json!({"user": {"external_id": "u-1"}, "device_id": "android-2"})),
        key,
        200,
    );
    call(
        "POST",
        "/admin/workspaces/acme/users/devices",
        Some(json!({"user": {"external_id": "u-9"}, "device_id": "android-3"})),
        key,
        404,
    );
    call(
        "POST",
        "/admin/workspaces/acme/users/identify",
        Some(json!({"user": {"device_id": "web-anon-42"}, "external_id": "u-42"})),
        key,
        200,
    );
    call(
        "POST",
        "/admin/workspaces/acme/users/identify",
        Some(json!({"user": {"external_id": "u-42"}, "external_id": "u-1"})),
        key,
        409,
    );
    call(
        "PUT",
        "/admin/workspaces/acme/attributes/lifetime_spend",
        Some(json!({"type": "decimal"})),
        key,
        200,
    );
    call(
        "POST",
        "/admin/workspaces/acme/users/attributes",
        Some(json!({"user": {"external_id": "u-1"},
                    "attributes": {"lifetime_spend": 120.5, "email_subscribed": true}})),
        key,
        200,
    );
    // The bulk import answers JSON to a body of another content type.
    let r = s
        .client
        .post(s.url("/admin/workspaces/acme/users/import"))
        .header("content-type", "application/x-ndjson")
        .bearer_auth(&key_text)
        .body("{\"external_id\":\"u-2\"}\n{\"external_id\":\"\"}\n")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().unwrap();
    let errs = response_errors(&doc, "POST", routes::IMPORT, 200, &v);
    assert!(errs.is_empty(), "{errs:#?}");
    called.borrow_mut().insert(("POST".into(), routes::IMPORT));

    // The partner endpoints.
    call(
        "POST",
        "/partners/amplitude/cohorts",
        Some(cohort_body(&secret, "c-9f1e", "Power users (30d)")),
        None,
        201,
    );
    call(
        "POST",
        "/partners/amplitude/cohorts",
        Some(cohort_body(&secret, "c-9f1e", "")),
        None,
        400,
    );
    call(
        "POST",
        "/partners/amplitude/cohorts/users",
        Some(users_body(
            &secret,
            "c-9f1e",
            json!([{"user_ids": ["u-1", "nobody"], "device_ids": ["web-anon-42"]}]),
        )),
        None,
        200,
    );
    call(
        "POST",
        "/partners/amplitude/cohorts/users",
        Some(users_body("wrong", "c-9f1e", json!([]))),
        None,
        401,
    );
    call(
        "POST",
        "/partners/nope/cohorts/users",
        Some(users_body(&secret, "c-9f1e", json!([]))),
        None,
        404,
    );
    call(
        "POST",
        "/partners/amplitude/cohorts/users",
        Some(users_body(&secret, "c-2", json!([{"user_ids": ["u-2"]}]))),
        None,
        201,
    );
    call("GET", "/admin/workspaces/acme/cohorts", None, key, 200);
    call("GET", "/admin/workspaces/acme/data_points", None, key, 200);
    call("GET", "/admin/workspaces/acme/partners", None, key, 200);

    // Segments.
    let f = json!("amplitude_cohorts includes \"c-9f1e\"");
    call(
        "POST",
        "/workspaces/acme/segments/count",
        Some(json!({"filter": f})),
        key,
        200,
    );
    call(
        "POST",
        "/workspaces/acme/segments/count?explain=true",
        Some(json!({"filter": {"and": [
            {"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "c-9f1e"},
            {"filter": "random_bucket", "comparison": "less_than", "value": 5000}]}})),
        key,
        200,
    );
    call(
        "POST",
        "/workspaces/acme/segments/count",
        Some(json!({"filter": {"or": [
            {"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "c-9f1e"},
            {"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "c-2"}]},
            "estimate": {"sample_fraction": 0.5, "seed": 1}})),
        key,
        200,
    );
    call(
        "POST",
        "/workspaces/acme/segments/count",
        Some(json!({"filter": f, "estimate": true, "sample_buckets": 100, "sample_start": 0})),
        key,
        200,
    );
    call(
        "POST",
        "/workspaces/acme/segments/count",
        Some(json!({"filters": f})),
        key,
        400,
    );
    call(
        "POST",
        "/workspaces/acme/segments/count",
        Some(json!({"filter": f})),
        Some(reader["key"].as_str().unwrap()),
        200,
    );
    call(
        "POST",
        "/workspaces/acme/segments/count",
        Some(json!({"filter": f})),
        admin,
        403,
    );
    call(
        "POST",
        "/workspaces/acme/segments/breakdown",
        Some(json!({"filter": {"groups": [
            {"filters": [{"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "c-9f1e"}]},
            {"filters": [{"filter": "random_bucket", "comparison": "less_than", "value": 5000}]}]}})),
        key,
        200,
    );
    call(
        "POST",
        "/workspaces/acme/segments/members",
        Some(json!({"filter": f, "limit": 1})),
        key,
        200,
    );
    call(
        "POST",
        "/workspaces/acme/segments/members",
        Some(json!({"filter": f, "format": "csv", "fields": ["aliases", "bucket"]})),
        key,
        200,
    );
    call(
        "POST",
        "/workspaces/acme/segments/check",
        Some(json!({"filter": f, "user": {"external_id": "u-1"}})),
        key,
        200,
    );
    call(
        "POST",
        "/workspaces/acme/segments/check",
        Some(json!({"filter": f, "users": [{"external_id": "u-1"}, {"device_id": "nope"}]})),
        key,
        200,
    );
    let saved = call(
        "POST",
        "/workspaces/acme/segments",
        Some(
            json!({"name": "power", "filter": "amplitude_cohorts includes \"c-9f1e\" and random_bucket < 5000"}),
        ),
        key,
        201,
    );
    let saved: Value = serde_json::from_str(&saved).unwrap();
    let id = saved["id"].as_str().unwrap();
    call(
        "POST",
        "/workspaces/acme/users/segments",
        Some(
            json!({"user": {"alias_label": "email", "alias_name": "ann@example.com"},
                    "segment_ids": [id], "filters": [f]}),
        ),
        key,
        200,
    );
    call("GET", "/workspaces/acme/segments", None, key, 200);
    call(
        "GET",
        &format!("/workspaces/acme/segments/{id}"),
        None,
        key,
        200,
    );
    call("GET", "/workspaces/acme/segments/seg_nope", None, key, 404);
    call(
        "PUT",
        &format!("/workspaces/acme/segments/{id}"),
        Some(json!({"name": "power users", "filter": saved["filter"].clone()})),
        key,
        200,
    );
    call(
        "GET",
        &format!("/workspaces/acme/segments/{id}/size"),
        None,
        key,
        200,
    );
    call(
        "DELETE",
        "/admin/workspaces/acme/cohorts/amplitude/c-9f1e",
        None,
        key,
        409,
    );
    call(
        "GET",
        "/workspaces/acme/partners/amplitude/cohorts",
        None,
        key,
        200,
    );
    call("GET", "/workspaces/acme/attributes?top=5", None, key, 200);
    call(
        "DELETE",
        &format!("/workspaces/acme/segments/{id}"),
        None,
        key,
        200,
    );
    call(
        "DELETE",
        "/admin/workspaces/acme/cohorts/amplitude/c-9f1e",
        None,
        key,
        200,
    );
    call(
        "POST",
        "/partners/amplitude/cohorts/delete",
        Some(
            json!({"partner_api_key": PARTNER_API_KEY, "client_secret": secret,
                    "cohort_id": "c-2"}),
        ),
        None,
        200,
    );
    call(
        "DELETE",
        &format!(
            "/admin/workspaces/acme/keys/{}",
            dik["id"].as_str().unwrap()
        ),
        None,
        key,
        200,
    );
    call(
        "DELETE",
        "/admin/workspaces/acme/keys/key_nope",
        None,
        key,
        404,
    );
    call(
        "DELETE",
        &format!(
            "/admin/workspaces/acme/api_keys/{}",
            reader["id"].as_str().unwrap()
        ),
        None,
        key,
        200,
    );

    call(
        "GET",
        "/admin/workspaces/acme/audit?limit=2",
        None,
        key,
        200,
    );
    call(
        "GET",
        "/admin/workspaces/acme/audit?order=asc&after=1",
        None,
        admin,
        200,
    );
    call(
        "GET",
        "/admin/workspaces/acme/audit?limit=0",
        None,
        key,
        400,
    );

    // The user lifecycle.
    call(
        "POST",
        "/admin/workspaces/acme/users",
        Some(json!({"devices": ["web-anon-7"], "attributes": {"country": "PT"}})),
        key,
        201,
    );
    call(
        "POST",
        "/admin/workspaces/acme/users/merge",
        Some(json!({"source": {"device_id": "web-anon-7"}, "target": {"external_id": "u-2"}})),
        key,
        200,
    );
    call(
        "POST",
        "/admin/workspaces/acme/users/merge",
        Some(json!({"source": {"external_id": "u-9"}, "target": {"external_id": "u-2"}})),
        key,
        404,
    );
    call(
        "POST",
        "/admin/workspaces/acme/users/rename",
        Some(json!({"external_id": "u-2", "new_external_id": "customer-2"})),
        key,
        200,
    );
    call(
        "POST",
        "/admin/workspaces/acme/users/rename",
        Some(json!({"external_id": "customer-2", "new_external_id": "u-1"})),
        key,
        409,
    );
    call(
        "POST",
        "/admin/workspaces/acme/users/delete",
        Some(json!({"users": [{"external_id": "customer-2"}, {"external_id": "nobody"}]})),
        key,
        200,
    );
    call(
        "POST",
        "/admin/workspaces/acme/users/delete",
        Some(json!({"users": [{"external_id": "u-1"}, {}]})),
        key,
        400,
    );

    // Every operation was called.
    let all: BTreeSet<(String, &'static str)> =
        ACCESS.iter().map(|(m, r, _)| (m.to_string(), *r)).collect();
    let called = called.borrow();
    let missed: Vec<_> = all.difference(&called).collect();
    assert!(
        missed.is_empty(),
        "operations the tour did not call: {missed:?}"
    );
}
