//! Wiring checks of the router over a real socket: that axum's own
//! answers (no route, wrong method, body over the limit) come out as JSON,
//! and that the admin gate and the metrics see every request. The
//! protocol's behaviour is covered by the integration tests.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{serve_with, ServerOptions};
use crate::access::Scope;
use crate::engine::Engine;

struct Server {
    base: String,
    token: String,
    engine: Arc<Engine>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start(options: impl FnOnce(&mut ServerOptions)) -> Server {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (engine, token) = Engine::open(dir.path()).expect("opens");
    let token = token.expect("a new directory makes an admin token");
    let mut opts = ServerOptions::from_config(engine.config());
    options(&mut opts);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let base = format!("http://{}", listener.local_addr().expect("an address"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve_with(engine.clone(), opts, listener, async {
        let _ = rx.await;
    }));
    Server {
        base,
        token,
        engine,
        stop: Some(tx),
        task,
        _dir: dir,
    }
}

impl Server {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let served = (&mut self.task).await.expect("the server task ends");
        served.expect("serves and syncs cleanly");
    }
}

async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body: Value = resp.json().await.expect("a JSON body");
    assert!(ct.starts_with("application/json"), "{ct}");
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_answers_are_json_and_counted() {
    let s = start(|o| o.max_body_bytes = 100).await;
    let c = reqwest::Client::new();

    let (st, body) = json_of(
        c.get(format!("{}/nowhere", s.base))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(st, 404);
    assert!(body["message"].is_string());

    let resp = c
        .get(format!("{}/partners/amplitude/cohorts", s.base))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        resp.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    assert_eq!(json_of(resp).await.0, 405);

    let (st, body) = json_of(
        c.post(format!("{}/partners/nope/cohorts/users", s.base))
            .body("{}")
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(
        (st, body),
        (404, json!({"message": "unknown partner \"nope\""}))
    );

    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(200));
    let (st, body) = json_of(
        c.post(format!("{}/partners/amplitude/cohorts/users", s.base))
            .header("content-type", "application/json")
            .body(big)
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(st, 413);
    assert!(body["message"]
        .as_str()
        .is_some_and(|m| m.contains("100 bytes")));

    let (st, _) = json_of(
        c.post(format!("{}/partners/amplitude/cohorts", s.base))
            .header("content-type", "text/plain")
            .body("{}")
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(st, 415);

    // No credentials in the body: 401 from the protocol parser.
    let (st, body) = json_of(
        c.post(format!("{}/partners/amplitude/cohorts/users", s.base))
            .body("{\"cohort_id\": \"c\", \"cohort_changes\": []}")
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(
        (st, body),
        (401, json!({"message": "Invalid Partner API key"}))
    );

    let resp = c
        .get(format!("{}/admin/workspaces", s.base))
        .bearer_auth("wrong")
        .send()
        .await
        .expect("sent");
    assert!(resp.headers().contains_key("www-authenticate"));
    assert_eq!(json_of(resp).await.0, 401);
    let (st, body) = json_of(
        c.get(format!("{}/admin/workspaces", s.base))
            .bearer_auth(&s.token)
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!((st, body), (200, json!([])));

    let text = c
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("a body");
    for line in [
        "segq_http_requests_total{route=\"unmatched\",status=\"404\"} 1",
        "segq_http_requests_total{route=\"/partners/{partner}/cohorts\",status=\"405\"} 1",
        "segq_http_requests_total{route=\"/partners/{partner}/cohorts/users\",status=\"413\"} 1",
        "segq_http_requests_total{route=\"/admin/workspaces\",status=\"401\"} 1",
        "segq_http_requests_total{route=\"/admin/workspaces\",status=\"200\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    assert!(s.engine.workspace_names().is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_import_streams_and_reports_lines() {
    let s = start(|_| {}).await;
    let c = reqwest::Client::new();
    let admin = |req: reqwest::RequestBuilder| req.bearer_auth(&s.token);
    let (st, _) = json_of(
        admin(c.post(format!("{}/admin/workspaces", s.base)))
            .json(&json!({"name": "acme"}))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(st, 201);
    let key = s
        .engine
        .create_api_key("acme", "import", vec![Scope::UsersWrite])
        .expect("a key")
        .key;
    let admin = |req: reqwest::RequestBuilder| req.bearer_auth(&key);

    let body = "external_id,device_id\nu1,d1\nu2,d1\nbroken\n\nu3,\n";
    let (st, body) = json_of(
        admin(c.post(format!("{}/admin/workspaces/acme/users/import", s.base)))
            .header("content-type", "text/csv")
            .body(body)
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["created"], 2);
    assert_eq!(body["updated"], 0);
    assert_eq!(body["failed"], 2);
    let lines: Vec<u64> = body["errors"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["line"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(lines, vec![3, 4]);

    let (st, _) = json_of(
        admin(c.post(format!("{}/admin/workspaces/acme/users/import", s.base)))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(st, 415);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_names_clashing_in_case_or_naming_a_device_are_refused() {
    let s = start(|_| {}).await;
    let c = reqwest::Client::new();
    let create = |name: &str| {
        c.post(format!("{}/admin/workspaces", s.base))
            .bearer_auth(&s.token)
            .json(&json!({ "name": name }))
            .send()
    };
    let (st, _) = json_of(create("acme").await.expect("sent")).await;
    assert_eq!(st, 201);
    let (st, body) = json_of(create("ACME").await.expect("sent")).await;
    assert_eq!(st, 409, "{body}");
    assert!(body["message"]
        .as_str()
        .is_some_and(|m| m.contains("differs only in case")));
    for device in ["con", "NUL", "com1", "Lpt9"] {
        let (st, body) = json_of(create(device).await.expect("sent")).await;
        assert_eq!(st, 400, "{device}: {body}");
        assert!(body["message"]
            .as_str()
            .is_some_and(|m| m.contains("reserves")));
    }
    assert_eq!(s.engine.workspace_names(), ["acme"]);
    s.stop().await;
}

/// Sends `head` then up to `max` body bytes (stopping when the server
/// closes), while reading the answer until the server closes the
/// connection. Returns the answer and the body bytes the socket took.
async fn send_and_read(base: &str, head: String, chunked: bool, max: usize) -> (String, usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        if wr.write_all(head.as_bytes()).await.is_err() {
            return 0;
        }
        let line = b"{\"external_id\": \"u\"}\n".repeat(3000);
        let mut sent = 0;
        while sent < max {
            let r = if chunked {
                let mut c = format!("{:x}\r\n", line.len()).into_bytes();
                c.extend_from_slice(&line);
                c.extend_from_slice(b"\r\n");
                wr.write_all(&c).await
            } else {
                wr.write_all(&line).await
            };
            if r.is_err() {
                break;
            }
            sent += line.len();
        }
        sent
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        let mut buf = [0u8; 8192];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open");
    let sent = writer.await.expect("the writer ends");
    (String::from_utf8_lossy(&answer).into_owned(), sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_import_over_its_limit_is_413_and_the_connection_closes() {
    const LIMIT: u64 = 100_000;
    let s = start(|o| o.max_import_bytes = Some(LIMIT)).await;
    s.engine.create_workspace("acme").expect("creates");
    let key = s
        .engine
        .create_api_key("acme", "import", vec![Scope::UsersWrite])
        .expect("a key")
        .key;
    let unbounded = 4 * super::error::DRAIN_BYTES;
    // A declared length over the limit (refused before reading), and a
    // chunked body that goes past it (refused while reading).
    for (length, chunked) in [
        (format!("Content-Length: {}\r\n", 1u64 << 40), false),
        ("Transfer-Encoding: chunked\r\n".to_string(), true),
    ] {
        let head = format!(
            "POST /admin/workspaces/acme/users/import HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer {key}\r\nContent-Type: application/x-ndjson\r\n{length}\r\n",
        );
        let (answer, sent) = send_and_read(&s.base, head, chunked, unbounded).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        if chunked {
            assert!(answer.contains("lines up to"), "{answer}");
        }
        // Drained up to a bound, not read on without end.
        assert!(sent < unbounded, "the server read {sent} bytes of the body");
    }
    s.stop().await;
}
