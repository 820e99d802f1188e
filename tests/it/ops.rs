//! Operations: `/healthz` and `/readyz` (a shutdown delay and a log that
//! refuses writes make the server not ready), request ids on responses and
//! log lines, JSON logs, `SEGQ_*` variables over `segq.json`, and
//! `segq config` with its secrets masked.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::disk_full::put_on;
use crate::support::server::{segq_env, write_config, InProcess, Server, PARTNER_API_KEY};
use segq::log::DiskFull;

/// Polls `f` every 20 ms until it is true or `timeout` passes.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A GET with an `X-Request-Id` header.
fn get_with_id(s: &Server, path: &str, id: &str) -> (u16, Option<String>) {
    let r = s
        .client
        .get(s.url(path))
        .header("x-request-id", id)
        .send()
        .expect("the server answers");
    let echoed = r
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), echoed)
}

fn is_generated_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn healthz_and_readyz_answer_without_a_token() {
    let dir = TempDir::new().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    s.create_workspace("acme");
    let h = s.get("/healthz").expect(200).json();
    assert_eq!(h, json!({"status": "ok"}));
    let r = s.get("/readyz").expect(200).json();
    assert_eq!(r, json!({"status": "ready", "workspaces": 1}));
    // Only GET.
    let r = s.request(Method::POST, "/readyz", None, Vec::new(), false);
    assert_eq!(r.status, 405, "{}", r.text);
    s.stop();
}

#[test]
fn readyz_is_503_during_the_shutdown_delay_while_healthz_stays_200() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start_with_env(&data, &[], &[("SEGQ_SHUTDOWN_DELAY_SECS", "3")]);
    s.get("/readyz").expect(200);
    let started = Instant::now();
    s.terminate();
    let mut body = Value::Null;
    assert!(
        eventually(Duration::from_secs(3), || {
            let r = s.get("/readyz");
            if r.status == 503 {
                body = r.json();
            }
            r.status == 503
        }),
        "/readyz never said 503 after SIGTERM"
    );
    assert_eq!(body["status"], "not ready");
    assert_eq!(body["not_ready"][0]["check"], "shutting_down", "{body}");
    // Still alive, still serving during the delay.
    s.get("/healthz").expect(200);
    assert_eq!(s.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(started.elapsed() >= Duration::from_secs(3));
}

#[test]
fn readyz_is_503_while_a_log_refuses_writes_and_200_once_the_disk_is_back() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    write_config(&data);
    let s = InProcess::start(&data, None);
    s.create_workspace("full");
    s.create_workspace("fine");
    s.upsert_user("full", &json!({"external_id": "u1"}));
    let disk = DiskFull::new();
    put_on(&s.engine().workspace("full").unwrap(), &disk);
    s.get("/readyz").expect(200);

    disk.refuse_writes(true);
    let r = s.admin_post(
        "/admin/workspaces/full/users",
        &json!({"external_id": "u2"}),
    );
    assert_eq!(r.status, 503, "{}", r.text);
    let body = s.get("/readyz").expect(503).json();
    let not_ready = body["not_ready"].as_array().unwrap();
    assert_eq!(not_ready.len(), 1, "{body}");
    assert_eq!(not_ready[0]["check"], "log_writable");
    assert_eq!(not_ready[0]["workspace"], "full");
    // Stays so while the disk refuses (the server retries the reset).
    std::thread::sleep(Duration::from_millis(1500));
    s.get("/readyz").expect(503);

    // Ready again with no write sent: the server resets the log itself.
    disk.refuse_writes(false);
    assert!(
        eventually(Duration::from_secs(10), || s.get("/readyz").status == 200),
        "{}",
        s.get("/readyz").text
    );
    s.upsert_user("full", &json!({"external_id": "u2"}));
    s.stop();
}

#[test]
fn request_ids_are_echoed_generated_or_replaced() {
    let dir = TempDir::new().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    // Echoed, on any route, answered or refused.
    for path in ["/healthz", "/admin/workspaces", "/no/such/route"] {
        let (_, echoed) = get_with_id(&s, path, "trace-42:a/b");
        assert_eq!(echoed.as_deref(), Some("trace-42:a/b"), "{path}");
    }
    // Generated when none is sent.
    let first = s.get("/healthz").header("x-request-id").unwrap();
    let second = s.get("/healthz").header("x-request-id").unwrap();
    assert!(is_generated_id(&first), "{first}");
    assert_ne!(first, second);
    // Replaced when it is not 1 to 128 visible ASCII characters.
    for bad in ["has space", &"x".repeat(129)] {
        let (status, echoed) = get_with_id(&s, "/healthz", bad);
        assert_eq!(status, 200);
        let echoed = echoed.unwrap();
        assert!(is_generated_id(&echoed), "{bad:?} gave {echoed}");
    }
    let (_, echoed) = get_with_id(&s, "/healthz", &"y".repeat(128));
    assert_eq!(echoed.unwrap(), "y".repeat(128));
    s.stop();
}

#[test]
fn json_logs_are_json_lines_carrying_the_request_id() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    // The first start prints the admin token (not a log line); then JSON.
    let token = Server::start(&data, &[]).stop();
    let token = token
        .lines()
        .find_map(|l| l.strip_prefix("admin token: "))
        .unwrap()
        .to_string();
    for (args, env) in [
        (&["--log-format", "json"][..], &[][..]),
        (&[][..], &[("SEGQ_LOG_FORMAT", "json")][..]),
    ] {
        let s = Server::restart_with_env(&data, &token, args, env);
        let (status, _) = get_with_id(&s, "/admin/workspaces", "json-log-7");
        assert_eq!(status, 401);
        let stderr = s.stop();
        let lines: Vec<Value> = stderr
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let answered: Vec<&Value> = lines
            .iter()
            .filter(|l| l["span"]["request_id"] == "json-log-7")
            .collect();
        assert_eq!(answered.len(), 1, "{stderr}");
        assert_eq!(answered[0]["fields"]["status"], 401);
        assert_eq!(answered[0]["span"]["path"], "/admin/workspaces");
        assert!(lines.iter().any(|l| l["fields"]["message"] == "stopped"));
    }
    // The level: SEGQ_LOG over RUST_LOG (targets match by prefix: the
    // server's `segq::server` is named apart from `segq::serve`, which
    // says where it listens).
    let s = Server::restart_with_env(
        &data,
        &token,
        &[],
        &[
            ("RUST_LOG", "info"),
            ("SEGQ_LOG", "warn,segq::serve=info,segq::server=warn"),
        ],
    );
    get_with_id(&s, "/healthz", "quiet-1");
    let stderr = s.stop();
    assert!(!stderr.contains("quiet-1"), "{stderr}");
    // Text by default, with the request id on the request's line.
    let s = Server::restart(&data, &token, &[]);
    get_with_id(&s, "/healthz", "loud-1");
    let stderr = s.stop();
    let line = stderr.lines().find(|l| l.contains("loud-1")).unwrap();
    assert!(
        line.contains("request_id=loud-1") && line.contains("status=200"),
        "{line}"
    );
    // Access lines are held (here for up to ten seconds) and written,
    // in order, before any other line or, with no other line logged,
    // when the process ends.
    let s = Server::restart_with_env(
        &data,
        &token,
        &[],
        &[
            ("SEGQ_LOG_FLUSH_MS", "10000"),
            (
                "SEGQ_LOG",
                "warn,segq::serve=info,segq::server::access=info",
            ),
        ],
    );
    get_with_id(&s, "/healthz", "held-1");
    get_with_id(&s, "/healthz", "held-2");
    let stderr = s.stop();
    let at = |id: &str| stderr.find(&format!("request_id={id}"));
    assert!(
        at("held-1").is_some() && at("held-1") < at("held-2"),
        "{stderr}"
    );
    // The access log alone can be turned off.
    let s = Server::restart_with_env(
        &data,
        &token,
        &[],
        &[("SEGQ_LOG", "info,segq::server::access=off")],
    );
    get_with_id(&s, "/healthz", "unlogged-1");
    let stderr = s.stop();
    assert!(!stderr.contains("unlogged-1"), "{stderr}");
    assert!(stderr.contains("listening on"), "{stderr}");
}

/// A partner users request of `len` bytes or more.
fn partner_body_of(len: usize) -> Value {
    json!({"partner_api_key": PARTNER_API_KEY, "client_secret": "s", "cohort_id": "c",
        "cohort_changes": [], "pad": "x".repeat(len)})
}

#[test]
fn environment_variables_win_over_the_file_and_flags_over_them() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let s = Server::start_with_env(&data, &[], &[("SEGQ_MAX_BODY_BYTES", "4096")]);
    let r = s.post("/partners/amplitude/cohorts/users", &partner_body_of(5000));
    assert_eq!(r.status, 413, "{}", r.text);
    let token = s.stop();
    let token = token
        .lines()
        .find_map(|l| l.strip_prefix("admin token: "))
        .unwrap()
        .to_string();
    // The file is not changed: without the variable, the body is taken.
    let s = Server::restart(&data, &token, &[]);
    let r = s.post("/partners/amplitude/cohorts/users", &partner_body_of(5000));
    assert_ne!(r.status, 413, "{}", r.text);
    s.stop();

    let d = data.to_str().unwrap();
    let config = |args: &[&str], env: &[(&str, &str)]| -> Value {
        let out = segq_env(&[&["config", "--data", d], args].concat(), env);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let env = [
        ("SEGQ_MAX_BODY_BYTES", "4096"),
        ("SEGQ_COMPACT_INTERVAL_SECS", "60"),
    ];
    let c = config(&[], &env);
    assert_eq!(c["max_body_bytes"], 4096);
    assert_eq!(c["compact_interval_secs"], 60);
    assert_eq!(config(&[], &[])["max_body_bytes"], 16 << 20);
    let c = config(&["--max-body-bytes", "8192"], &env);
    assert_eq!(c["max_body_bytes"], 8192);
}

#[test]
fn a_bad_environment_variable_is_a_clear_error_that_changes_nothing() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    for (var, value, says) in [
        ("SEGQ_MAX_BODY_BYTES", "lots", "whole number"),
        ("SEGQ_MAX_BODY_BYTES", "-1", "whole number"),
        ("SEGQ_MAX_BODY_BYTES", "10", "at least 1024"),
        ("SEGQ_IDLE_TIMEOUT_SECS", "0", "at least 1"),
        ("SEGQ_PARTNER_API_KEYS", "[1]", "JSON object"),
        ("SEGQ_PARTNER_API_KEYS", r#"{"nosuch": "k"}"#, "nosuch"),
    ] {
        for args in [&["serve", "--listen", "127.0.0.1:0"][..], &["config"][..]] {
            let cmd = args[0];
            let out = segq_env(&[args, &["--data", d]].concat(), &[(var, value)]);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} {var}={value}: {stderr}");
            assert!(
                stderr.contains(&format!("environment variable {var}")) && stderr.contains(says),
                "{cmd} {var}={value}: {stderr}"
            );
            assert!(out.stdout.is_empty());
            assert!(
                !data.exists(),
                "{cmd} {var}={value} created the data directory"
            );
        }
    }
    // So is a bad log setting.
    let out = segq_env(&["config", "--data", d], &[("SEGQ_LOG_FORMAT", "xml")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("SEGQ_LOG_FORMAT"));
    let out = segq_env(&["config", "--data", d], &[("SEGQ_LOG_FLUSH_MS", "soon")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("environment variable SEGQ_LOG_FLUSH_MS"));
    assert!(!data.exists());
}

fn config_output(data: &Path, env: &[(&str, &str)]) -> (String, String) {
    let out = segq_env(&["config", "--data", data.to_str().unwrap()], env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    (text(&out.stdout), text(&out.stderr))
}

#[test]
fn segq_config_prints_every_field_with_the_secrets_masked() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    write_config(&data);
    let file_before = std::fs::read(data.join("segq.json")).unwrap();
    let (stdout, _) = config_output(&data, &[]);
    assert!(!stdout.contains(PARTNER_API_KEY), "{stdout}");
    assert!(!stdout.contains("pk-heap-0000-test"), "{stdout}");
    let c: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(c["partner_api_keys"]["amplitude"], "********");
    assert_eq!(c["partner_api_keys"].as_object().unwrap().len(), 8);
    for field in segq::engine::Config::fields() {
        assert!(c.get(&field).is_some(), "{field} missing: {stdout}");
    }

    let secret = "pk-from-the-environment-31337";
    let keys = format!(r#"{{"amplitude": "{secret}"}}"#);
    let (stdout, stderr) = config_output(&data, &[("SEGQ_PARTNER_API_KEYS", &keys)]);
    assert!(
        !stdout.contains(secret) && !stderr.contains(secret),
        "{stdout}{stderr}"
    );
    assert!(stderr.contains("SEGQ_PARTNER_API_KEYS"), "{stderr}");
    let c: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(c["partner_api_keys"], json!({"amplitude": "********"}));
    // Nothing written, nothing locked.
    assert_eq!(std::fs::read(data.join("segq.json")).unwrap(), file_before);
    assert!(!data.join("LOCK").exists());
}

/// The nice values of `pid`'s threads, by thread name.
#[cfg(target_os = "linux")]
fn thread_nice(pid: u32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the server's threads");
    for task in tasks.flatten() {
        // A thread that ended meanwhile has no files left.
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(task.path().join("comm")),
            std::fs::read_to_string(task.path().join("stat")),
        ) else {
            continue;
        };
        // After the name's closing parenthesis come fields 3 on; the nice
        // value is field 19.
        let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
        let nice = rest.split(' ').nth(16).expect("a nice field");
        out.push((comm.trim_end().to_string(), nice.parse().expect("a number")));
    }
    out
}

#[cfg(target_os = "linux")]
#[test]
fn imports_and_compactions_give_way_to_queries() {
    use crate::support::server::{cohort_body, users_body};
    let dir = TempDir::new().unwrap();
    let s = Server::start_with_env(
        &dir.path().join("data"),
        &[],
        &[("SEGQ_IMPORT_NICE", "7"), ("SEGQ_COMPACTION_NICE", "12")],
    );
    let nice_of = |threads: &[(String, i32)], wanted: &str| -> Vec<i32> {
        threads
            .iter()
            .filter(|(name, _)| name == wanted)
            .map(|t| t.1)
            .collect()
    };
    let threads = thread_nice(s.pid());
    let base = nice_of(&threads, "segq")[0];
    // Import threads start on demand; the compactor waits on its own.
    assert!(nice_of(&threads, "segq-import").is_empty(), "{threads:?}");
    assert_eq!(nice_of(&threads, "segq-compactor"), vec![base.max(12)]);

    // A partner request is applied on a lowered import thread.
    s.create_workspace("acme");
    let (_, secret) = s.create_key("acme", "amplitude");
    s.create_cohort("amplitude", &cohort_body(&secret, "c1", "One"))
        .expect(201);
    s.users(
        "amplitude",
        &users_body(&secret, "c1", json!([{"user_ids": ["u1", "u2"]}])),
    )
    .expect(200);
    let threads = thread_nice(s.pid());
    let imports = nice_of(&threads, "segq-import");
    assert!(!imports.is_empty(), "{threads:?}");
    assert!(imports.iter().all(|&n| n == base.max(7)), "{threads:?}");

    // A bulk import, then queries: every thread but the import threads
    // and the compactor (HTTP, query pool, blocking pool) is as the
    // process started.
    let ndjson = "{\"external_id\": \"u1\"}\n{\"external_id\": \"u2\"}\n";
    s.request(
        Method::POST,
        "/admin/workspaces/acme/users/import",
        Some("application/x-ndjson"),
        ndjson.into(),
        true,
    )
    .expect(200);
    s.users(
        "amplitude",
        &users_body(&secret, "c1", json!([{"user_ids": ["u1", "u2"]}])),
    )
    .expect(200);
    let filter = json!({"filter": "amplitude_cohorts includes_value \"One\""});
    let count = s
        .request(
            Method::POST,
            "/workspaces/acme/segments/count",
            Some("application/json"),
            serde_json::to_vec(&filter).unwrap(),
            true,
        )
        .expect_json(200);
    assert_eq!(count["count"], 2, "{count}");
    let threads = thread_nice(s.pid());
    let others: Vec<_> = threads
        .iter()
        .filter(|(name, _)| name != "segq-import" && name != "segq-compactor")
        .collect();
    assert!(others.iter().all(|t| t.1 == base), "{threads:?}");
    // Among them the lock holders, which take the import threads' steps
    // under the workspace's lock (`priority::holding_locks`).
    assert!(
        others.iter().any(|t| t.0.starts_with("segq-locks-")),
        "{threads:?}"
    );
}
