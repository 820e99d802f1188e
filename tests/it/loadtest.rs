//! `segq loadtest` at a small size: sync clients and query clients
//! against a server on loopback (or a running server, `--server`) whose
//! lowered thresholds start compactions, and the final check that every
//! cohort holds exactly what its client last had acknowledged.

use serde_json::Value;

use crate::support::server::{
    open_engine_with_token, partner_api_key, segq_once, write_config, Server,
};

#[test]
fn the_small_load_test_loses_nothing_and_reports_its_figures() {
    let out = segq_once(&[
        "loadtest",
        "--users",
        "20000",
        "--cohorts",
        "10",
        "--members",
        "3000",
        "--seconds",
        "3",
        "--sync-clients",
        "2",
        "--query-clients",
        "2",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    for field in [
        "changes_per_sec",
        "count_p50_ms",
        "count_p99_ms",
        "check_p50_ms",
        "check_p99_ms",
        "compaction_ms",
    ] {
        assert!(r[field].is_number(), "{field} in {r}");
    }
    assert_eq!(
        (&r["errors"], &r["lost"], &r["extra"]),
        (&0.into(), &0.into(), &0.into()),
        "{r}"
    );
    // The first round of each client sends its 3,000 members.
    assert!(r["changes"].as_u64().unwrap() >= 6000, "{r}");
    assert!(r["rounds"].as_u64().unwrap() >= 2, "{r}");
    assert!(
        r["counts"].as_u64().unwrap() > 0 && r["checks"].as_u64().unwrap() > 0,
        "{r}"
    );
    // The lowered thresholds started at least one compaction (no direct
    // call does), and the run saw it.
    assert!(r["compactions"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["compaction_failures"], 0, "{r}");
    assert!(
        r["during_compaction"]["windows"].as_u64().unwrap() >= 1,
        "{r}"
    );
    assert!(r["compaction_writers_held_ms"].is_number(), "{r}");
}

/// Runs `segq loadtest` with `env` set (and no SEGQ_TOKEN inherited).
fn loadtest_with_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_segq"));
    cmd.arg("loadtest").args(args).env_remove("SEGQ_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("segq runs")
}

/// A server whose workspace `load` holds a generated workload of 20,000
/// users, compacting every `records` log records; with its amplitude data
/// import key and a workspace key.
fn loaded_server(dir: &std::path::Path, records: &str) -> (Server, String, String) {
    let data = dir.join("data");
    write_config(&data);
    let (engine, token) = open_engine_with_token(&data);
    let token = token.expect("a new data directory's admin token");
    let snap = dir.join("load.segqsnap");
    let spec = segq::workload::Spec {
        users: 20_000,
        cohorts: 10,
        seed: 7,
    };
    let file = std::fs::File::create(&snap).unwrap();
    segq::workload::write_snapshot("load", spec, std::io::BufWriter::new(file)).unwrap();
    engine.restore_workspace("load", &snap).unwrap();
    drop(engine);
    let server = Server::restart_with_env(
        &data,
        &token,
        &[],
        &[("SEGQ_COMPACT_AFTER_RECORDS", records)],
    );
    let (_, secret) = server.create_key("load", "amplitude");
    let key = server.workspace_key("load").unwrap();
    (server, secret, key)
}

/// `segq loadtest --server` on `server` for `seconds`.
fn load_server(server: &Server, secret: &str, key: &str, seconds: &str) -> std::process::Output {
    load_server_with(server, secret, key, seconds, &[])
}

/// [`load_server`] with more arguments.
fn load_server_with(
    server: &Server,
    secret: &str,
    key: &str,
    seconds: &str,
    more: &[&str],
) -> std::process::Output {
    let base = server.url("");
    let partner_key = partner_api_key("amplitude");
    let mut args = vec![
        "--server",
        base.as_str(),
        "--workspace",
        "load",
        "--users",
        "20000",
        "--cohorts",
        "10",
        "--members",
        "3000",
        "--seconds",
        seconds,
        "--sync-clients",
        "2",
        "--query-clients",
        "2",
        "--json",
    ];
    args.extend_from_slice(more);
    loadtest_with_env(
        &args,
        &[
            ("SEGQ_PARTNER_API_KEY", &partner_key),
            ("SEGQ_DATA_IMPORT_KEY", secret),
            ("SEGQ_TOKEN", key),
        ],
    )
}

#[test]
fn the_load_test_loads_a_running_server_whose_thresholds_start_its_compactions() {
    let dir = tempfile::tempdir().unwrap();
    // Compactions come from the server's own thresholds: every 40 records.
    let (server, secret, key) = loaded_server(dir.path(), "40");
    let out = load_server(&server, &secret, &key, "4");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(r["server"], true, "{r}");
    assert_eq!(
        (&r["errors"], &r["lost"], &r["extra"]),
        (&0.into(), &0.into(), &0.into()),
        "{r}"
    );
    assert!(r["changes"].as_u64().unwrap() >= 6000, "{r}");
    // The server compacted on its own, and the run saw it.
    assert!(r["compactions"].as_u64().unwrap() >= 1, "{r}");
    assert!(
        r["during_compaction"]["windows"].as_u64().unwrap() >= 1,
        "{r}"
    );
    assert!(
        server.metric("segq_compactions_total{workspace=\"load\"}") >= 1.0,
        "{}",
        server.metrics()
    );
    server.stop();
}

#[test]
fn runs_on_one_server_are_each_checked_against_their_own_cohorts() {
    let dir = tempfile::tempdir().unwrap();
    let (server, secret, key) = loaded_server(dir.path(), "1000000");
    let ok = |out: &std::process::Output| -> Value {
        let text = String::from_utf8_lossy(&out.stdout);
        let r: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(out.status.success(), "{r}");
        assert_eq!((&r["lost"], &r["extra"]), (&0.into(), &0.into()), "{r}");
        r
    };
    // A long run, then a shorter one with the same seed: the second ends
    // at an earlier point of the same churn, so the first run's cohorts
    // would hold members it never acknowledged.
    ok(&load_server(&server, &secret, &key, "3"));
    ok(&load_server(&server, &secret, &key, "1"));
    // The same cohorts on purpose: the leftovers are reported.
    let prefix = ["--cohort-prefix", "again"];
    ok(&load_server_with(&server, &secret, &key, "3", &prefix));
    let out = load_server_with(&server, &secret, &key, "1", &prefix);
    let text = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(r["extra"].as_u64().unwrap() > 0, "{r}");
    server.stop();
}

#[test]
fn a_cohort_changed_behind_the_clients_back_is_reported_lost_and_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (server, secret, key) = loaded_server(dir.path(), "1000000");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        // Another client keeps removing u0..u999 from the first client's
        // cohort, until the load test has ended.
        s.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(1500));
            let ids: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let body = crate::support::server::users_body(
                    &secret,
                    "load-0",
                    serde_json::json!([{"user_ids": ids, "should_remove": true}]),
                );
                let _ = server.users("amplitude", &body);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        let out = load_server_with(&server, &secret, &key, "2", &["--cohort-prefix", "load"]);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        out
    });
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(r["lost"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["extra"], 0, "{r}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lost"), "{err}");
    server.stop();
}

#[test]
fn the_load_test_against_a_server_needs_its_keys_and_the_workspace() {
    let out = loadtest_with_env(&["--server", "http://127.0.0.1:9", "--seconds", "1"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--partner-api-key is needed"), "{err}");
    // --workspace and the keys only go with --server.
    let out = loadtest_with_env(&["--workspace", "x", "--seconds", "1"], &[]);
    assert_eq!(out.status.code(), Some(2));
}
