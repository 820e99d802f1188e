//! The `segq` binary: query counts agree with the library, bad input exits
//! 2 with a positioned message, generate is deterministic.

use segq::segment::{self, reference};
use segq::workload::{self, Spec};

use crate::support::server::segq;

const SIZE: [&str; 6] = ["--users", "3000", "--cohorts", "30", "--seed", "9"];

#[test]
fn query_prints_the_exact_count() {
    let filter = "amplitude_cohorts includes c0 and not amplitude_cohorts includes c1";
    let mut args = vec!["query"];
    args.extend_from_slice(&SIZE);
    args.push(filter);
    let out = segq(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: u64 = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let ws = workload::generate(
        "x",
        Spec {
            users: 3000,
            cohorts: 30,
            seed: 9,
        },
    )
    .unwrap()
    .workspace;
    let f = segment::parse(filter).unwrap();
    assert_eq!(printed, reference::count(&ws, &f).unwrap());
}

#[test]
fn query_members_and_check() {
    let mut args = vec!["query", "--members", "--check", "u1"];
    args.extend_from_slice(&SIZE);
    args.push("random_bucket < 100");
    let out = segq(&args);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() > 5, "about 1% of 3000 users");
    assert!(lines.last().unwrap().starts_with("external_id:u1: "));
}

#[test]
fn a_bad_filter_exits_2_with_line_and_column() {
    let mut args = vec!["query"];
    args.extend_from_slice(&SIZE);
    args.push("amplitude_cohorts contains c0");
    let out = segq(&args);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("line 1, column 19"), "{err}");
}

#[test]
fn an_unknown_cohort_exits_2() {
    let mut args = vec!["query"];
    args.extend_from_slice(&SIZE);
    args.push("amplitude_cohorts includes no-such-cohort");
    let out = segq(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("no-such-cohort"));
}

#[test]
fn generate_is_deterministic() {
    let mut args = vec!["generate"];
    args.extend_from_slice(&SIZE);
    let a = segq(&args);
    let b = segq(&args);
    assert!(a.status.success());
    let fp = |o: &std::process::Output| {
        String::from_utf8(o.stdout.clone())
            .unwrap()
            .lines()
            .find(|l| l.starts_with("fingerprint"))
            .unwrap()
            .to_string()
    };
    assert_eq!(fp(&a), fp(&b));
    let other = [
        "generate",
        "--users",
        "3000",
        "--cohorts",
        "30",
        "--seed",
        "10",
    ];
    assert_ne!(fp(&a), fp(&segq(&other)));
    // The shared workload arguments take `k` (and `M`) sizes.
    let short = [
        "generate",
        "--users",
        "3k",
        "--cohorts",
        "30",
        "--seed",
        "9",
    ];
    assert_eq!(fp(&a), fp(&segq(&short)));
}

#[test]
fn every_workload_command_shares_one_definition_of_its_arguments() {
    let help = |cmd: &[&str]| {
        let out = segq(&[cmd, &["--help"]].concat());
        assert!(out.status.success(), "{cmd:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    for cmd in [
        &["generate"][..],
        &["demo"],
        &["query"],
        &["snapshot", "write"],
    ] {
        let text = help(cmd);
        assert!(
            text.contains("Number of users (`500k`, `10M` also work) [default: 100000]"),
            "{cmd:?}: {text}"
        );
        assert!(text.contains("[default: 50]"), "{cmd:?}: {text}");
    }
    // `segq bench` has its own defaults, on the same arguments.
    let text = help(&["bench"]);
    assert!(
        text.contains("(`500k`, `10M` also work) [default: 1000000]"),
        "{text}"
    );
    assert!(text.contains("[default: 200]"), "{text}");
    assert!(text.contains("--seed <SEED>"), "{text}");
    // A size every command takes, and one none does.
    for cmd in [&["generate"][..], &["bench"]] {
        let out = segq(&[cmd, &["--users", "12q"]].concat());
        assert_eq!(out.status.code(), Some(2), "{cmd:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains("expected a number of users"), "{cmd:?}: {err}");
    }
}

// ----- data directories: admin tokens, reading only -----

use std::fs;
use std::path::Path;

use segq::engine::{keys, Engine};
use segq::Partner;

use crate::support::state::files_fingerprint;

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The admin token a command printed, if any.
fn printed_token(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("admin token: "))
        .map(|t| t.trim().to_string())
}

fn stored_digest(data: &Path) -> String {
    fs::read_to_string(data.join("admin-token.sha256"))
        .unwrap()
        .trim()
        .to_string()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[test]
fn commands_that_initialise_a_data_directory_print_its_admin_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.jsonl");
    fs::write(
        &users,
        "{\"external_id\": \"u1\"}\n{\"external_id\": \"u2\"}\n",
    )
    .unwrap();

    // users import without --create-workspace makes nothing.
    let data = dir.path().join("data");
    let out = segq(&[
        "users",
        "import",
        path(&users),
        "--data",
        path(&data),
        "--workspace",
        "acme",
    ]);
    assert!(!out.status.success());
    assert!(!data.exists(), "a data directory was made");

    // With it, the directory is made and its token shown.
    let import = || {
        segq(&[
            "users",
            "import",
            path(&users),
            "--data",
            path(&data),
            "--workspace",
            "acme",
            "--create-workspace",
        ])
    };
    let out = import();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("created 2"), "{stdout}");
    let token = printed_token(&stderr).expect("the new admin token is printed");
    assert_eq!(keys::hex(&keys::digest(&token)), stored_digest(&data));
    let out = import();
    assert!(out.status.success());
    assert_eq!(printed_token(&text(&out).1), None, "shown once only");

    // snapshot compact refuses a directory that is not one.
    let missing = dir.path().join("missing");
    let out = segq(&["snapshot", "compact", "--data", path(&missing)]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("not a segq data directory"));
    assert!(!missing.exists(), "a data directory was made");
    // ... and shows a token it had to make.
    fs::remove_file(data.join("admin-token.sha256")).unwrap();
    let out = segq(&["snapshot", "compact", "--data", path(&data)]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let token = printed_token(&stderr).expect("the new admin token is printed");
    assert_eq!(keys::hex(&keys::digest(&token)), stored_digest(&data));
}

#[test]
fn count_members_and_check_on_a_data_directory_change_nothing_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (engine, _) = Engine::open(&data).unwrap();
    engine.create_workspace("acme").unwrap();
    let h = engine.workspace("acme").unwrap();
    h.upsert_users(
        (0..40)
            .map(|i| segq::users::NewUser {
                external_id: Some(format!("u{i}")),
                ..Default::default()
            })
            .collect(),
    )
    .unwrap();
    let key = engine.create_key("acme", Partner::Amplitude).unwrap();
    let import = |ids: serde_json::Value| {
        let body = serde_json::json!({
            "partner_api_key": engine.config().partner_api_keys[&Partner::Amplitude],
            "client_secret": key.key,
            "cohort_id": "c",
            "cohort_changes": [{"user_ids": ids}],
        });
        let req = segq::import::parse_users_request(&serde_json::to_vec(&body).unwrap()).unwrap();
        let (h, _) = engine
            .authorize(Partner::Amplitude, &req.credentials)
            .unwrap();
        h.import_users(Partner::Amplitude, &req, chrono::Utc::now())
            .unwrap();
    };
    import(serde_json::json!(["u1", "u2", "u3"]));
    engine.compact("acme").unwrap();
    import(serde_json::json!(["u4"]));
    engine.create_workspace("fresh").unwrap();
    drop((h, import));
    drop(engine);

    let ws = data.join("workspaces/acme");
    // A torn tail on the workspace's log (and on a log before any
    // snapshot), litter, and no configuration.
    for log in fs::read_dir(&ws)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "segqlog"))
        .chain([data.join("workspaces/fresh/changes.segqlog")])
    {
        let mut bytes = fs::read(&log).unwrap();
        bytes.extend_from_slice(&[40, 0, 0, 0, 7, 7, 7]);
        fs::write(&log, bytes).unwrap();
    }
    fs::write(ws.join("log-00000000000000000999.segqlog.tmp"), b"litter").unwrap();
    fs::remove_file(data.join("segq.json")).unwrap();

    let filter = "amplitude_cohorts includes c";
    let local = ["--data", path(&data), "--workspace", "acme"];
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&local);
        let out = segq(&all);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stderr}");
        stdout
    };
    let commands: [&[&str]; 3] = [
        &["count", filter],
        &["members", filter, "--format", "csv"],
        &["check", filter, "u4"],
    ];
    for cmd in commands {
        let before = files_fingerprint(&data);
        let out = run(cmd);
        assert_eq!(
            files_fingerprint(&data),
            before,
            "{cmd:?} changed the directory"
        );
        match cmd[0] {
            "count" => assert!(out.contains("\"count\":4"), "{out}"),
            "members" => assert_eq!(out.lines().count(), 5, "{out}"),
            _ => assert!(out.contains("\"member\":true"), "{out}"),
        }
    }
    // While a process holds the directory (a server would), too.
    let (engine, _) = Engine::open(&data).unwrap();
    let out = run(&["count", filter]);
    assert!(out.contains("\"count\":4"), "{out}");
    drop(engine);
}
