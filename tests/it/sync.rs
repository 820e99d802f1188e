//! `segq sync`, the partner sync client: reading members files, diffing
//! against the last sync, batching, the state file and its journal, the
//! retry policy and the cadence (the library, with scripted transports);
//! then the binary against a real server, through a recording proxy that
//! can hold or drop requests, and against a stub that answers scripted
//! statuses.

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use segq::sync::{
    self, parse_members, IdKind, Job, Journal, Layout, NoReply, Plan, Reply, RetryPolicy, State,
    Transport,
};
use segq::Partner;

use crate::support::server::{Fixture, Server, PARTNER_API_KEY};

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> BTreeSet<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

// ----- members files -----

#[test]
fn members_files_read_lines_and_csv_columns() {
    let lines = "u1\n  u2 \r\n\n\tu3\nu1\n";
    assert_eq!(
        parse_members(lines, &Layout::Lines).unwrap(),
        set(&["u1", "u2", "u3"])
    );
    let csv = "email,user_id\n\"a,b@x\",u1\nc@x,\"u\"\"2\"\nd@x,\n\ne@x, u3 \n";
    let by = |c: &str| Layout::Csv { column: c.into() };
    assert_eq!(
        parse_members(csv, &by("user_id")).unwrap(),
        set(&["u1", "u\"2", "u3"])
    );
    assert_eq!(
        parse_members(csv, &by("email")).unwrap(),
        set(&["a,b@x", "c@x", "d@x", "e@x"])
    );
    let err = parse_members(csv, &by("nope")).unwrap_err();
    assert!(err.contains("no column \"nope\""), "{err}");
    let err = parse_members("a,b\nx\n", &by("b")).unwrap_err();
    assert!(err.starts_with("line 2:"), "{err}");
    let err = parse_members("a\n\"x\n", &by("a")).unwrap_err();
    assert!(
        err.contains("line 2: a quoted field is not closed"),
        "{err}"
    );
    assert!(parse_members("", &by("a")).is_err());
}

/// Each CSV rule alone: the members read from the named column.
#[test]
fn members_csv_files_by_the_csv_rules() {
    let by = |c: &str| Layout::Csv { column: c.into() };
    let cases: &[(&str, &str, &[&str])] = &[
        ("quoted", "\"id\",\"x\"\n\"u1\",\"a\"\n", &["u1"]),
        ("embedded comma", "x,id\na,\"u,1\"\n", &["u,1"]),
        (
            "embedded newline",
            "id,x\n\"u\n1\",\"a\nb\"\nu2,c\n",
            &["u\n1", "u2"],
        ),
        ("doubled quote", "id,x\n\"u\"\"1\"\"\",a\n", &["u\"1\""]),
        (
            "CRLF",
            "x,id\r\na,u1\r\n\r\nb,\"u\r\n2\"\r\n",
            &["u1", "u\r\n2"],
        ),
        ("CR alone", "x,id\ra,u1\rb,u2\r", &["u1", "u2"]),
        ("byte-order mark", "\u{feff}id,x\nu1,a\n", &["u1"]),
    ];
    for (name, text, want) in cases {
        let got = parse_members(text, &by("id")).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, set(want), "{name}");
    }
    // A row of another width than the header is an error, as in the bulk
    // import; so is a quote never closed (on the line it opens).
    let err = parse_members("a,b\nx,y,z\n", &by("a")).unwrap_err();
    assert!(err.starts_with("line 2: expected 2 fields"), "{err}");
    let err = parse_members("a,b\n\"x\n\ny,z\n", &by("a")).unwrap_err();
    assert!(
        err.starts_with("line 2: a quoted field is not closed"),
        "{err}"
    );
    // A stray quote reads as the csv crate reads it.
    assert_eq!(
        parse_members("a\nx\"y\n\"z\"w\n", &by("a")).unwrap(),
        set(&["x\"y", "zw"])
    );
}

#[test]
fn a_members_file_that_does_not_read_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.txt");
    std::fs::write(&path, b"u1\n\xff\n").unwrap();
    let e = sync::read_members(&path, &Layout::Lines).unwrap_err();
    assert!(e.to_string().contains("not UTF-8"), "{e}");
    let e = sync::read_members(&dir.path().join("missing"), &Layout::Lines).unwrap_err();
    assert!(matches!(e, segq::Error::Io { .. }), "{e}");
}

// ----- diffing and batching -----

#[test]
fn the_plan_sends_who_entered_and_who_left() {
    let synced = set(&["a", "b", "c"]);
    let target = set(&["b", "c", "d", "e"]);
    let plan = Plan::new(&synced, &target, false, 1000);
    assert_eq!(plan.entered, ["d", "e"]);
    assert_eq!(plan.left, ["a"]);
    // Nothing changed: nothing to send.
    assert!(Plan::new(&target, &target, false, 1000).is_empty());
    // A first sync (nothing synced) sends everyone.
    let first = Plan::new(&BTreeSet::new(), &target, false, 1000);
    assert_eq!(first.entered, ["b", "c", "d", "e"]);
    assert!(first.left.is_empty());
    // A full sync sends everyone again, and still removes who left.
    let full = Plan::new(&synced, &target, true, 1000);
    assert_eq!(full.entered, ["b", "c", "d", "e"]);
    assert_eq!(full.left, ["a"]);
    // Everyone left.
    let gone = Plan::new(&synced, &BTreeSet::new(), false, 1000);
    assert_eq!((gone.entered.len(), gone.left.len()), (0, 3));
}

#[test]
fn the_merged_plan_agrees_with_set_differences_on_random_sets() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for round in 0..200 {
        let mut draw = |n: usize| -> BTreeSet<String> {
            (0..rng.gen_range(0..n))
                .map(|_| format!("u{}", rng.gen_range(0..60)))
                .collect()
        };
        let (synced, target) = (draw(50), draw(50));
        for full in [false, true] {
            let plan = Plan::new(&synced, &target, full, 7);
            let entered: Vec<String> = if full {
                target.iter().cloned().collect()
            } else {
                target.difference(&synced).cloned().collect()
            };
            let left: Vec<String> = synced.difference(&target).cloned().collect();
            assert_eq!(
                (&plan.entered, &plan.left),
                (&entered, &left),
                "round {round}"
            );
            // The same from the state file's sorted lists.
            let (a, b): (Vec<String>, Vec<String>) = (
                synced.iter().cloned().collect(),
                target.iter().cloned().collect(),
            );
            assert_eq!(Plan::between(&a, &b, full, 7), plan, "round {round}");
            // Its places make the new members from the old by moving
            // them (a full plan's, only where no member stayed).
            let (placed, places) = Plan::placed(&a, &b, full, 7);
            assert_eq!(placed, plan, "round {round}");
            let fit = places.fit(a.len(), plan.entered.len(), plan.left.len());
            assert_eq!(fit, !full || synced.intersection(&target).next().is_none());
            if fit {
                assert_eq!(
                    places.apply(a.clone(), plan.entered.clone()),
                    b,
                    "round {round}"
                );
            }
        }
    }
}

#[test]
fn batches_hold_at_most_1000_entered_then_left() {
    let synced = names("old", 0..1500);
    let target = names("new", 0..2001);
    let plan = Plan::new(&synced, &target, false, 5000);
    assert_eq!(plan.batch_size, 1000, "clamped to the protocol's limit");
    let batches = plan.batches();
    let shape: Vec<(usize, bool, usize)> = batches
        .iter()
        .map(|b| (b.index, b.remove, b.ids.len()))
        .collect();
    assert_eq!(
        shape,
        [
            (0, false, 1000),
            (1, false, 1000),
            (2, false, 1),
            (3, true, 1000),
            (4, true, 500)
        ]
    );
    // Every identifier once, in its direction.
    let added: BTreeSet<String> = batches
        .iter()
        .filter(|b| !b.remove)
        .flat_map(|b| b.ids.iter().cloned())
        .collect();
    let removed: BTreeSet<String> = batches
        .iter()
        .filter(|b| b.remove)
        .flat_map(|b| b.ids.iter().cloned())
        .collect();
    assert_eq!((added, removed), (target.clone(), synced.clone()));
    // The same plan names the same batches (what a resume relies on).
    assert_eq!(Plan::new(&synced, &target, false, 5000).batches(), batches);
    let small = Plan::new(&synced, &target, false, 0);
    assert_eq!(small.batch_size, 1);
    assert_eq!(small.batches().len(), 3501);
}

#[test]
fn change_objects_speak_the_protocol() {
    let ids = vec!["x".to_string(), "y".to_string()];
    let change = |kind: &IdKind, ids: &[String], remove: bool| {
        serde_json::to_value(kind.change_body(ids, remove)).unwrap()
    };
    assert_eq!(
        change(&IdKind::ExternalId, &ids, false),
        json!({"user_ids": ["x", "y"]})
    );
    assert_eq!(
        change(&IdKind::DeviceId, &ids, true),
        json!({"device_ids": ["x", "y"], "should_remove": true})
    );
    let alias = IdKind::parse("alias", Some("email")).unwrap();
    assert_eq!(
        change(&alias, &ids[..1], false),
        json!({"aliases": [{"alias_name": "x", "alias_label": "email"}]})
    );
    assert!(IdKind::parse("alias", None).is_err());
    assert!(IdKind::parse("external_id", Some("email")).is_err());
    assert!(IdKind::parse("email", None).is_err());
    // What the server parses, it parses as meant.
    let body = json!({"partner_api_key": "k", "client_secret": "s", "cohort_id": "c",
        "cohort_changes": [change(&IdKind::DeviceId, &ids, true)]});
    let req = segq::import::parse_users_request(&serde_json::to_vec(&body).unwrap()).unwrap();
    assert!(req.cohort_changes[0].should_remove);
    assert_eq!(req.cohort_changes[0].device_ids, ids);
}

// ----- the state file and its journal -----

fn identity() -> segq::sync::state::Identity {
    segq::sync::state::Identity {
        server: "http://127.0.0.1:1/".into(),
        partner: "amplitude".into(),
        cohort_id: "c1".into(),
        id_type: "external_id".into(),
    }
}

#[test]
fn the_state_file_is_replaced_atomically_and_names_its_cohort() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep/state.json");
    let id = identity();
    // No file: a first sync's state.
    let mut s = State::load(&path, &id).unwrap();
    assert_eq!(s, State::new(&id));
    assert_eq!(s.server, "http://127.0.0.1:1");
    s.members = vec!["a".into(), "b".into()];
    s.save(&path).unwrap();
    assert_eq!(State::load(&path, &id).unwrap(), s);
    let files: Vec<String> = std::fs::read_dir(dir.path().join("deep"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["state.json"], "no temporary file is left");
    // Another cohort, server or identifier kind is refused, unchanged.
    for other in [
        segq::sync::state::Identity {
            cohort_id: "c2".into(),
            ..identity()
        },
        segq::sync::state::Identity {
            server: "http://elsewhere".into(),
            ..identity()
        },
        segq::sync::state::Identity {
            id_type: "device_id".into(),
            ..identity()
        },
    ] {
        let e = State::load(&path, &other).unwrap_err();
        assert!(e.to_string().contains("pass another --state"), "{e}");
    }
    // Not a state file.
    std::fs::write(&path, b"{\"members\": []}").unwrap();
    let e = State::load(&path, &id).unwrap_err();
    assert!(matches!(e, segq::Error::Corrupt { .. }), "{e}");
    // Lists out of order or with repeats (edited by hand) would be diffed
    // wrongly: refused, not used.
    for (members, target) in [
        (vec!["b", "a"], None),
        (vec!["a", "a"], None),
        (vec!["a"], Some(vec!["c", "b"])),
    ] {
        let mut bad = s.clone();
        bad.members = members.iter().map(|m| m.to_string()).collect();
        bad.pending = target.map(|t| segq::sync::state::Pending {
            id: "p".into(),
            entered: t.iter().map(|m| m.to_string()).collect(),
            left: vec![],
            full: false,
            batch_size: 1000,
        });
        std::fs::write(&path, serde_json::to_vec(&bad).unwrap()).unwrap();
        let e = State::load(&path, &id).unwrap_err();
        assert!(e.to_string().contains("not sorted"), "{e}");
    }
}

#[test]
fn the_journal_counts_complete_lines_of_its_own_sync() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.json");
    assert!(Journal::acknowledged(&state, "p1").unwrap().is_empty());
    let mut j = Journal::open(&state).unwrap();
    j.record("p0", 7).unwrap();
    j.record("p1", 0).unwrap();
    j.record("p1", 3).unwrap();
    drop(j);
    // A torn line (a crash in the middle of an append) is not an ack ...
    let path = Journal::path_for(&state);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(b"p1 5").unwrap();
    drop(f);
    assert_eq!(
        Journal::acknowledged(&state, "p1").unwrap(),
        BTreeSet::from([0, 3])
    );
    // ... and does not swallow the next record.
    let mut j = Journal::open(&state).unwrap();
    j.record("p1", 9).unwrap();
    assert_eq!(
        Journal::acknowledged(&state, "p1").unwrap(),
        BTreeSet::from([0, 3, 9])
    );
    assert_eq!(
        Journal::acknowledged(&state, "p0").unwrap(),
        BTreeSet::from([7])
    );
    Journal::remove(&state).unwrap();
    Journal::remove(&state).unwrap();
    assert!(Journal::acknowledged(&state, "p1").unwrap().is_empty());
}

#[test]
fn default_state_files_differ_per_cohort_and_server() {
    let d = Path::new("/s");
    let a = sync::default_state_path(
        d,
        "http://h",
        Partner::Amplitude,
        "c/1",
        &IdKind::ExternalId,
    );
    let name = a.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("amplitude-c_1-") && name.ends_with(".json"),
        "{name}"
    );
    let same = sync::default_state_path(
        d,
        "http://h/",
        Partner::Amplitude,
        "c/1",
        &IdKind::ExternalId,
    );
    assert_eq!(a, same);
    for other in [
        sync::default_state_path(
            d,
            "http://h2",
            Partner::Amplitude,
            "c/1",
            &IdKind::ExternalId,
        ),
        sync::default_state_path(d, "http://h", Partner::Heap, "c/1", &IdKind::ExternalId),
        sync::default_state_path(
            d,
            "http://h",
            Partner::Amplitude,
            "c_1",
            &IdKind::ExternalId,
        ),
        sync::default_state_path(d, "http://h", Partner::Amplitude, "c/1", &IdKind::DeviceId),
    ] {
        assert_ne!(a, other);
    }
}

// ----- retries and cadence -----

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap() {
    let policy = RetryPolicy {
        attempts: 5,
        base: Duration::from_millis(100),
        max: Duration::from_millis(1000),
    };
    let mut rng = rand::thread_rng();
    for (retry, full) in [
        (0, 100),
        (1, 200),
        (2, 400),
        (3, 800),
        (4, 1000),
        (40, 1000),
    ] {
        let full = Duration::from_millis(full);
        let mut seen = BTreeSet::new();
        for _ in 0..50 {
            let d = policy.backoff(retry, &mut rng);
            assert!(d >= full / 2 && d <= full, "retry {retry}: {d:?}");
            seen.insert(d);
        }
        assert!(seen.len() > 1, "retry {retry}: no jitter");
    }
}

#[test]
fn statuses_are_retried_or_refused_as_the_protocol_asks() {
    use segq::sync::retry::{verdict, Verdict};
    assert_eq!(verdict(200, None), Verdict::Done);
    assert_eq!(verdict(201, None), Verdict::Done);
    let after = Some(Duration::from_secs(3));
    assert_eq!(verdict(429, after), Verdict::Retry { after });
    for s in [500, 502, 503, 504] {
        assert_eq!(verdict(s, None), Verdict::Retry { after: None }, "{s}");
    }
    for s in [301, 400, 401, 403, 404, 409, 413, 415] {
        assert_eq!(verdict(s, None), Verdict::Refuse, "{s}");
    }
}

#[test]
fn periods_parse_and_overrun_runs_are_skipped_not_stacked() {
    for (t, secs) in [
        ("1m", 60),
        ("1h", 3600),
        ("1d", 86_400),
        ("30s", 30),
        ("2h", 7200),
    ] {
        assert_eq!(
            sync::parse_period(t).unwrap(),
            Duration::from_secs(secs),
            "{t}"
        );
    }
    for t in [
        "",
        "m",
        "0m",
        "1",
        "1w",
        "-1m",
        "1.5h",
        "99999999999999999999d",
    ] {
        assert!(sync::parse_period(t).is_err(), "{t}");
    }
    let p = Duration::from_secs(60);
    let t0 = Instant::now();
    // On time: the next tick.
    assert_eq!(
        sync::next_start(t0, p, t0 + Duration::from_secs(5)),
        (t0 + p, 0)
    );
    assert_eq!(sync::next_start(t0, p, t0 + p), (t0 + p, 0));
    // A run of 2.5 periods skips the two ticks it overlapped.
    assert_eq!(
        sync::next_start(t0, p, t0 + Duration::from_secs(150)),
        (t0 + 3 * p, 2)
    );
    assert_eq!(
        sync::next_start(t0, p, t0 + Duration::from_secs(61)),
        (t0 + 2 * p, 1)
    );
}

// ----- the runner with a scripted transport -----

/// A transport that answers each request with the next scripted reply
/// (then 200), records what it was sent, and records sleeps instead of
/// sleeping.
#[derive(Default)]
struct Scripted {
    script: Mutex<VecDeque<Result<Reply, NoReply>>>,
    sent: Mutex<Vec<(String, Value)>>,
    slept: Mutex<Vec<Duration>>,
}

fn reply(status: u16, retry_after: Option<u64>, body: Value) -> Result<Reply, NoReply> {
    Ok(Reply {
        status,
        retry_after: retry_after.map(Duration::from_secs),
        body: body.to_string(),
    })
}

impl Scripted {
    fn new(script: Vec<Result<Reply, NoReply>>) -> Scripted {
        Scripted {
            script: Mutex::new(script.into()),
            ..Default::default()
        }
    }

    fn users_requests(&self) -> Vec<Value> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.ends_with("/users"))
            .map(|(_, b)| b.clone())
            .collect()
    }
}

impl Transport for Scripted {
    fn post(&self, path: &str, body: &[u8]) -> Result<Reply, NoReply> {
        let body: Value = serde_json::from_slice(body).expect("a JSON body");
        self.sent
            .lock()
            .unwrap()
            .push((path.to_string(), body.clone()));
        if path.ends_with("/cohorts") {
            return reply(201, None, json!({"message": "success"}));
        }
        self.script.lock().unwrap().pop_front().unwrap_or_else(|| {
            let n = body["cohort_changes"][0]
                .as_object()
                .and_then(|o| o.values().find_map(Value::as_array))
                .map_or(0, Vec::len);
            reply(
                200,
                None,
                json!({"message": "success", "matched": n, "unmatched": 0}),
            )
        })
    }

    fn sleep(&self, d: Duration) {
        self.slept.lock().unwrap().push(d);
    }
}

fn job(state: &Path) -> Job {
    Job {
        server: "http://stub".into(),
        partner: Partner::Amplitude,
        partner_api_key: PARTNER_API_KEY.into(),
        data_import_key: "secret".into(),
        cohort_id: "c1".into(),
        name: "Cohort one".into(),
        kind: IdKind::ExternalId,
        state: state.to_path_buf(),
        full: false,
        batch_size: 1000,
        in_flight: 4,
        retry: RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        },
    }
}

#[test]
fn a_first_sync_sends_everyone_and_the_next_only_the_changes() {
    let dir = tempfile::tempdir().unwrap();
    let j = job(&dir.path().join("state.json"));
    let t = Scripted::new(vec![]);
    let stop = AtomicBool::new(false);
    let first = names("u", 0..2500);
    let s = sync::sync_once(&j, &first, &t, &sync::Quiet, &stop).unwrap();
    assert_eq!(
        (s.entered, s.left, s.batches, s.matched),
        (2500, 0, 3, 2500)
    );
    let sent = t.users_requests();
    assert_eq!(sent.len(), 3);
    let cohort = &t.sent.lock().unwrap()[0];
    assert_eq!(cohort.0, "/partners/amplitude/cohorts");
    assert_eq!(cohort.1["name"], "Cohort one");
    assert_eq!(cohort.1["client_secret"], "secret");
    assert!(segq::import::parse_cohort_request(&serde_json::to_vec(&cohort.1).unwrap()).is_ok());
    let state = State::load(&j.state, &sync::run::identity(&j)).unwrap();
    assert_eq!(state.members.len(), 2500);
    assert!(state.pending.is_none() && state.synced_at.is_some());
    assert!(!Journal::path_for(&j.state).exists());

    let second = names("u", 500..3000);
    let t = Scripted::new(vec![]);
    let s = sync::sync_once(&j, &second, &t, &sync::Quiet, &stop).unwrap();
    assert_eq!((s.entered, s.left, s.batches), (500, 500, 2));
    let sent = t.users_requests();
    let removes: Vec<&Value> = sent
        .iter()
        .filter(|b| b["cohort_changes"][0]["should_remove"] == true)
        .collect();
    assert_eq!(removes.len(), 1);
    assert_eq!(removes[0]["cohort_changes"][0]["user_ids"][0], "u0");

    let t = Scripted::new(vec![]);
    let s = sync::sync_once(&j, &second, &t, &sync::Quiet, &stop).unwrap();
    assert_eq!((s.entered, s.left, s.batches), (0, 0, 0));
    assert!(t.users_requests().is_empty());
}

#[test]
fn a_429_waits_its_retry_after_and_5xx_and_dropped_connections_back_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = job(&dir.path().join("state.json"));
    j.in_flight = 1;
    let t = Scripted::new(vec![
        reply(429, Some(7), json!({"message": "slow down"})),
        reply(503, None, json!({"message": "busy"})),
        Err(NoReply("connection reset".into())),
        reply(500, None, json!({"message": "oops"})),
    ]);
    let stop = AtomicBool::new(false);
    let s = sync::sync_once(&j, &names("u", 0..10), &t, &sync::Quiet, &stop).unwrap();
    assert_eq!((s.batches, s.retries), (1, 4));
    let sent = t.users_requests();
    assert_eq!(sent.len(), 5, "the same batch, sent five times");
    assert!(sent.iter().all(|b| b == &sent[0]));
    // The slept slices, added up per wait: 7 s as the 429 asked, then
    // backoffs of 100, 200 and 400 ms with jitter.
    let slept = t.slept.lock().unwrap().clone();
    let total: Duration = slept.iter().sum();
    assert!(slept.iter().all(|d| *d <= Duration::from_millis(100)));
    // (retry 1: 100..=200 ms, retry 2: 200..=400, retry 3: 400..=800)
    let backoffs = total - Duration::from_secs(7);
    assert!(
        backoffs >= Duration::from_millis(700) && backoffs <= Duration::from_millis(1400),
        "{total:?}"
    );
}

#[test]
fn a_refusal_is_never_retried_and_keeps_the_sync_pending() {
    for (status, message) in [
        (
            400,
            "Only 1,000 user_ids, device_ids, and aliases are allowed per request",
        ),
        (401, "Invalid client secret"),
        (413, "the body is over the limit"),
        (404, "no such partner"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let j = job(&dir.path().join("state.json"));
        let t = Scripted::new(vec![reply(status, None, json!({"message": message}))]);
        let stop = AtomicBool::new(false);
        let e = sync::sync_once(&j, &names("u", 0..10), &t, &sync::Quiet, &stop).unwrap_err();
        match &e {
            segq::Error::SyncRefused {
                status: s,
                message: m,
                ..
            } => assert_eq!((*s, m.as_str()), (status, message)),
            other => panic!("{status}: {other}"),
        }
        assert!(e.to_string().contains(message));
        assert_eq!(t.users_requests().len(), 1, "{status} was retried");
        assert!(t.slept.lock().unwrap().is_empty());
        let state = State::load(&j.state, &sync::run::identity(&j)).unwrap();
        assert!(state.members.is_empty() && state.pending.is_some());
    }
}

#[test]
fn attempts_run_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = job(&dir.path().join("state.json"));
    j.retry.attempts = 3;
    j.in_flight = 1;
    let t = Scripted::new((0..10).map(|_| reply(502, None, json!({}))).collect());
    let stop = AtomicBool::new(false);
    let e = sync::sync_once(&j, &names("u", 0..10), &t, &sync::Quiet, &stop).unwrap_err();
    assert!(
        matches!(e, segq::Error::SyncGaveUp { attempts: 3, .. }),
        "{e}"
    );
    assert_eq!(t.users_requests().len(), 3);
}

#[test]
fn an_interrupted_sync_resumes_from_its_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = job(&dir.path().join("state.json"));
    j.batch_size = 10;
    j.in_flight = 1;
    j.retry.attempts = 1;
    // Batch 0 and 1 acknowledged, batch 2 refused by a 5xx with no retry
    // left: the sync fails part-way.
    let t = Scripted::new(vec![
        reply(200, None, json!({"matched": 10})),
        reply(200, None, json!({"matched": 10})),
        reply(503, None, json!({})),
    ]);
    let stop = AtomicBool::new(false);
    let target = names("u", 0..50);
    assert!(sync::sync_once(&j, &target, &t, &sync::Quiet, &stop).is_err());
    let first: Vec<Value> = t.users_requests();
    assert_eq!(first.len(), 3);
    // The rerun sends batches 2, 3 and 4 only.
    let t = Scripted::new(vec![]);
    let s = sync::sync_once(&j, &target, &t, &sync::Quiet, &stop).unwrap();
    assert!(s.resumed);
    assert_eq!((s.batches, s.skipped_batches), (3, 2));
    let again = t.users_requests();
    assert_eq!(again.len(), 3);
    assert_eq!(again[0], first[2]);
    for b in &first[..2] {
        assert!(!again.contains(b));
    }
    let state = State::load(&j.state, &sync::run::identity(&j)).unwrap();
    assert_eq!(state.synced(), target);
    assert!(state.pending.is_none());

    // A resume whose file changed meanwhile finishes the interrupted sync,
    // then sends the new difference.
    let mut j2 = j.clone();
    j2.retry.attempts = 1;
    let t = Scripted::new(vec![reply(503, None, json!({}))]);
    let next = names("u", 10..60);
    assert!(sync::sync_once(&j2, &next, &t, &sync::Quiet, &stop).is_err());
    let t = Scripted::new(vec![]);
    let changed = names("u", 20..60);
    let s = sync::sync_once(&j2, &changed, &t, &sync::Quiet, &stop).unwrap();
    assert!(s.resumed);
    let state = State::load(&j.state, &sync::run::identity(&j)).unwrap();
    assert_eq!(state.synced(), changed);
    // What was sent, applied in order to what the cohort held, gives the
    // file: the interrupted sync's two batches, then the new difference.
    assert_eq!(t.users_requests().len(), 3);
    let mut members = names("u", 0..50);
    for b in t.users_requests() {
        let c = &b["cohort_changes"][0];
        for id in c["user_ids"].as_array().unwrap() {
            let id = id.as_str().unwrap().to_string();
            if c["should_remove"] == true {
                members.remove(&id);
            } else {
                members.insert(id);
            }
        }
    }
    assert_eq!(members, changed);
}

#[test]
fn a_stop_starts_no_new_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = job(&dir.path().join("state.json"));
    j.batch_size = 10;
    j.in_flight = 1;
    /// Sets the stop flag while its second batch is in flight.
    struct StopAfter<'a> {
        inner: Scripted,
        stop: &'a AtomicBool,
    }
    impl Transport for StopAfter<'_> {
        fn post(&self, path: &str, body: &[u8]) -> Result<Reply, NoReply> {
            if self.inner.users_requests().len() == 1 {
                self.stop.store(true, Ordering::SeqCst);
            }
            self.inner.post(path, body)
        }
    }
    let stop = AtomicBool::new(false);
    let t = StopAfter {
        inner: Scripted::new(vec![]),
        stop: &stop,
    };
    let target = names("u", 0..50);
    let s = sync::sync_once(&j, &target, &t, &sync::Quiet, &stop).unwrap();
    assert!(s.interrupted);
    assert_eq!(s.batches, 2, "the batch in flight finished, no new one");
    let state = State::load(&j.state, &sync::run::identity(&j)).unwrap();
    let pending = state.pending.expect("still pending");
    assert_eq!(
        Journal::acknowledged(&j.state, &pending.id).unwrap().len(),
        2
    );
    let stop = AtomicBool::new(false);
    let t = Scripted::new(vec![]);
    let s = sync::sync_once(&j, &target, &t, &sync::Quiet, &stop).unwrap();
    assert_eq!((s.batches, s.skipped_batches, s.interrupted), (3, 2, false));
}

// ----- a stub HTTP server and a recording proxy -----

/// What the stub does with a request.
enum Action {
    /// Answers this.
    Respond(u16, Vec<(String, String)>, Value),
    /// Forwards it to the proxy's target and answers what that answered.
    Forward,
    /// Holds it unanswered until [`Stub::release`], then drops the
    /// connection (the request never reached any server).
    Hold,
}

/// A request the stub saw.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    body: Value,
    at: Instant,
    /// The status it was answered with (`None`: dropped).
    status: Option<u16>,
}

type Handler = dyn Fn(&str, &Value, usize) -> Action + Send + Sync;

struct StubInner {
    seen: Mutex<Vec<Seen>>,
    held: Mutex<usize>,
    released: Mutex<bool>,
    cv: Condvar,
    target: Mutex<String>,
    handler: Box<Handler>,
}

/// A stub server (or proxy) on 127.0.0.1. Handler arguments: the path,
/// the JSON body, and how many users requests came before this one.
struct Stub {
    base: String,
    inner: Arc<StubInner>,
}

impl Stub {
    fn start(
        target: &str,
        handler: impl Fn(&str, &Value, usize) -> Action + Send + Sync + 'static,
    ) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let inner = Arc::new(StubInner {
            seen: Mutex::new(Vec::new()),
            held: Mutex::new(0),
            released: Mutex::new(false),
            cv: Condvar::new(),
            target: Mutex::new(target.to_string()),
            handler: Box::new(handler),
        });
        let i = inner.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let i = i.clone();
                std::thread::spawn(move || serve_conn(conn, &i));
            }
        });
        Stub { base, inner }
    }

    fn seen(&self) -> Vec<Seen> {
        self.inner.seen.lock().unwrap().clone()
    }

    fn users(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.ends_with("/cohorts/users"))
            .collect()
    }

    fn held(&self) -> usize {
        *self.inner.held.lock().unwrap()
    }

    /// Drops every held request's connection.
    fn release(&self) {
        *self.inner.released.lock().unwrap() = true;
        self.inner.cv.notify_all();
    }

    fn retarget(&self, target: &str) {
        *self.inner.target.lock().unwrap() = target.to_string();
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.release();
    }
}

fn serve_conn(conn: TcpStream, inner: &StubInner) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let seen = Seen {
            path: path.clone(),
            body: body.clone(),
            at: Instant::now(),
            status: None,
        };
        // Counted and recorded under one lock: two requests arriving
        // together must not both see the same number before them.
        let (at, users_before) = {
            let mut s = inner.seen.lock().unwrap();
            let before = s
                .iter()
                .filter(|s| s.path.ends_with("/cohorts/users"))
                .count();
            s.push(seen);
            (s.len() - 1, before)
        };
        let answer = match (inner.handler)(&path, &body, users_before) {
            Action::Respond(status, headers, v) => Some((status, headers, v.to_string())),
            Action::Forward => forward(&inner.target.lock().unwrap().clone(), &path, &body),
            Action::Hold => {
                *inner.held.lock().unwrap() += 1;
                let mut released = inner.released.lock().unwrap();
                let deadline = Instant::now() + Duration::from_secs(120);
                while !*released && Instant::now() < deadline {
                    released = inner
                        .cv
                        .wait_timeout(released, Duration::from_secs(1))
                        .unwrap()
                        .0;
                }
                None
            }
        };
        let Some((status, headers, text)) = answer else {
            return; // dropped: the connection closes
        };
        inner.seen.lock().unwrap()[at].status = Some(status);
        let mut head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            text.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if conn.write_all(head.as_bytes()).is_err() || conn.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

/// Forwards a request; `None` (a dropped connection) when the target does
/// not answer.
/// A response as the stub writes it: status, extra headers, body.
type Answer = (u16, Vec<(String, String)>, String);

fn forward(target: &str, path: &str, body: &Value) -> Option<Answer> {
    thread_local! {
        static CLIENT: reqwest::blocking::Client = crate::support::server::client();
    }
    let r = CLIENT
        .with(|c| c.post(format!("{target}{path}")).json(body).send())
        .ok()?;
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(|v| vec![("retry-after".to_string(), v.to_string())])
        .unwrap_or_default();
    Some((status, headers, r.text().ok()?))
}

/// Polls `f` for at most 60 s.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ----- the binary -----

/// A workspace `acme` with users `u0..u{n}`, and an amplitude key.
fn fixture_with_users(n: usize) -> Fixture {
    let f = Fixture::new(&[]);
    let jsonl: String = (0..n)
        .map(|i| format!("{}\n", json!({"external_id": format!("u{i}"), "aliases": [{"alias_label": "email", "alias_name": format!("u{i}@x")}]})))
        .collect();
    let r = f.server.request(
        reqwest::Method::POST,
        &format!("/admin/workspaces/{}/users/import", f.ws),
        Some("application/x-ndjson"),
        jsonl.into_bytes(),
        true,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    f
}

/// The cohort's members by external id, as the server lists them.
fn members_on(server: &Server, ws: &str, cohort_id: &str) -> BTreeSet<String> {
    let r = server.admin_post(
        &format!("/workspaces/{ws}/segments/members"),
        &json!({"filter": format!("amplitude_cohorts includes_value \"{cohort_id}\""), "limit": 100000}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    r.text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["external_id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Writes a members file, one identifier a line.
fn members_file(dir: &Path, name: &str, ids: &BTreeSet<String>) -> PathBuf {
    let path = dir.join(name);
    let text: String = ids.iter().map(|i| format!("{i}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// The `segq sync` command for cohort `c1` of amplitude at `server`.
fn sync_cmd(server: &str, secret: &str, members: &Path, state: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_segq"));
    c.args(["sync"]);
    if !extra.contains(&"--name") {
        c.args(["--name", "Synced cohort"]);
    }
    c.arg(members)
        .args([
            "--server",
            server,
            "--partner",
            "amplitude",
            "--cohort-id",
            "c1",
        ])
        .args(["--json", "--state"])
        .arg(state)
        .args(["--retry-base-ms", "20", "--retry-max-ms", "200"])
        .args(extra)
        .env("SEGQ_PARTNER_API_KEY", PARTNER_API_KEY)
        .env("SEGQ_DATA_IMPORT_KEY", secret)
        .env("NO_PROXY", "*")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy");
    c
}

/// Runs a sync to its end, with a bound.
fn run_sync(mut c: Command) -> Output {
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_output(child)
}

fn wait_output(mut child: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("segq sync did not end");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// The last summary line of a `--json` run.
fn summary(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_else(|| {
        panic!(
            "no summary; status {:?}, stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(line).unwrap()
}

fn ok_summary(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "status {:?}; stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    summary(out)
}

/// A users request's identifiers, and whether it removes.
fn batch_of(body: &Value) -> (bool, Vec<String>) {
    let c = &body["cohort_changes"];
    assert_eq!(c.as_array().unwrap().len(), 1, "{body}");
    let c = &c[0];
    let ids: Vec<String> = c["user_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    (c["should_remove"] == true, ids)
}

#[test]
fn the_binary_syncs_everyone_first_then_only_the_changes() {
    let f = fixture_with_users(3000);
    let proxy = Stub::start(&f.server.base, |_, _, _| Action::Forward);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");

    // First: everyone, in batches of at most 1,000; one identifier
    // matches nobody.
    let mut first = names("u", 0..2500);
    first.insert("ghost".into());
    let file = members_file(dir.path(), "m1.txt", &first);
    let s = ok_summary(&run_sync(sync_cmd(
        &proxy.base,
        &f.secret,
        &file,
        &state,
        &[],
    )));
    assert_eq!(
        (
            &s["entered"],
            &s["left"],
            &s["batches"],
            &s["matched"],
            &s["unmatched"]
        ),
        (&json!(2501), &json!(0), &json!(3), &json!(2500), &json!(1))
    );
    let sent = proxy.users();
    assert_eq!(sent.len(), 3);
    let mut all = BTreeSet::new();
    for b in &sent {
        let (remove, ids) = batch_of(&b.body);
        assert!(!remove && ids.len() <= 1000);
        all.extend(ids);
    }
    assert_eq!(all, first);
    first.remove("ghost");
    assert_eq!(members_on(&f.server, &f.ws, "c1"), first);
    let listed = f.server.cohort(&f.ws, "amplitude", "c1").unwrap();
    assert_eq!(listed["name"], "Synced cohort");

    // Then only who entered and who left (the ghost too), and a rename.
    let second = names("u", 700..3000);
    let file = members_file(dir.path(), "m2.txt", &second);
    let c = sync_cmd(
        &proxy.base,
        &f.secret,
        &file,
        &state,
        &["--name", "Renamed"],
    );
    let s = ok_summary(&run_sync(c));
    assert_eq!(
        (&s["entered"], &s["left"], &s["batches"]),
        (&json!(500), &json!(701), &json!(2))
    );
    let sent = &proxy.users()[3..];
    let mut shapes: Vec<(bool, usize)> = sent
        .iter()
        .map(|b| {
            let (r, ids) = batch_of(&b.body);
            (r, ids.len())
        })
        .collect();
    shapes.sort();
    assert_eq!(shapes, [(false, 500), (true, 701)]);
    assert_eq!(members_on(&f.server, &f.ws, "c1"), second);
    assert_eq!(
        f.server.cohort(&f.ws, "amplitude", "c1").unwrap()["name"],
        "Renamed"
    );

    // Nothing changed: nothing sent.
    let s = ok_summary(&run_sync(sync_cmd(
        &proxy.base,
        &f.secret,
        &file,
        &state,
        &[],
    )));
    assert_eq!(s["batches"], 0);
    assert_eq!(proxy.users().len(), 5);

    // --full sends everyone again; the membership stays the file.
    let s = ok_summary(&run_sync(sync_cmd(
        &proxy.base,
        &f.secret,
        &file,
        &state,
        &["--full"],
    )));
    assert_eq!((&s["entered"], &s["batches"]), (&json!(2300), &json!(3)));
    assert_eq!(members_on(&f.server, &f.ws, "c1"), second);
}

#[test]
fn aliases_from_a_csv_column_sync_too() {
    let f = fixture_with_users(50);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.csv");
    let mut csv = String::from("name,email\n");
    for i in 0..20 {
        csv.push_str(&format!("\"User, {i}\",u{i}@x\n"));
    }
    std::fs::write(&file, csv).unwrap();
    let state = dir.path().join("state.json");
    let c = sync_cmd(
        &f.server.base,
        &f.secret,
        &file,
        &state,
        &[
            "--column",
            "email",
            "--id-type",
            "alias",
            "--alias-label",
            "email",
        ],
    );
    let s = ok_summary(&run_sync(c));
    assert_eq!((&s["entered"], &s["matched"]), (&json!(20), &json!(20)));
    assert_eq!(members_on(&f.server, &f.ws, "c1"), names("u", 0..20));
}

/// `segq sync` reads a spreadsheet's CSV: a byte-order mark, CRLF line
/// ends, and a name cell holding commas, quotes and a line break.
#[test]
fn a_spreadsheet_csv_members_file_syncs() {
    let f = fixture_with_users(10);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.csv");
    let mut csv = String::from("\u{feff}email,name\r\n");
    for i in 0..5 {
        csv.push_str(&format!("u{i}@x,\"Doe, \"\"J{i}\"\"\r\nSales\"\r\n"));
    }
    std::fs::write(&file, csv).unwrap();
    let state = dir.path().join("state.json");
    let c = sync_cmd(
        &f.server.base,
        &f.secret,
        &file,
        &state,
        &[
            "--column",
            "email",
            "--id-type",
            "alias",
            "--alias-label",
            "email",
        ],
    );
    let s = ok_summary(&run_sync(c));
    assert_eq!((&s["entered"], &s["matched"]), (&json!(5), &json!(5)));
    assert_eq!(members_on(&f.server, &f.ws, "c1"), names("u", 0..5));
}

#[test]
fn a_killed_client_resumes_without_resending_acknowledged_batches() {
    let f = fixture_with_users(2000);
    // Forward the first three batches, hold every later one until
    // released; then forward everything.
    let released = Arc::new(AtomicBool::new(false));
    let r = released.clone();
    let proxy = Stub::start(&f.server.base, move |path, _, before| {
        if path.ends_with("/users") && before >= 3 && !r.load(Ordering::SeqCst) {
            Action::Hold
        } else {
            Action::Forward
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let target = names("u", 0..2000);
    let file = members_file(dir.path(), "m.txt", &target);
    let args = ["--batch-size", "100"];
    let mut child = sync_cmd(&proxy.base, &f.secret, &file, &state, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Four requests held: each worker journaled its previous answer
    // before it took its next batch.
    wait_for("four held requests", || proxy.held() == 4);
    child.kill().unwrap();
    child.wait().unwrap();
    released.store(true, Ordering::SeqCst);
    proxy.release();
    let acked: Vec<Value> = proxy
        .users()
        .into_iter()
        .filter(|s| s.status == Some(200) || s.status == Some(201))
        .map(|s| s.body)
        .collect();
    assert_eq!(acked.len(), 3);
    assert_eq!(members_on(&f.server, &f.ws, "c1").len(), 300);

    // The rerun sends the 17 batches not acknowledged, not the 3 that were.
    let before = proxy.users().len();
    let s = ok_summary(&run_sync(sync_cmd(
        &proxy.base,
        &f.secret,
        &file,
        &state,
        &args,
    )));
    assert_eq!(
        (&s["batches"], &s["skipped_batches"], &s["resumed"]),
        (&json!(17), &json!(3), &json!(true))
    );
    let resent: Vec<Value> = proxy.users()[before..]
        .iter()
        .map(|s| s.body.clone())
        .collect();
    assert_eq!(resent.len(), 17);
    for b in &acked {
        assert!(!resent.contains(b), "an acknowledged batch was sent again");
    }
    assert_eq!(members_on(&f.server, &f.ws, "c1"), target);
    let st = State::load(&state, &state_identity(&proxy.base)).unwrap();
    assert!(st.pending.is_none());
    assert!(!Journal::path_for(&state).exists());
}

fn state_identity(server: &str) -> segq::sync::state::Identity {
    segq::sync::state::Identity {
        server: server.into(),
        partner: "amplitude".into(),
        cohort_id: "c1".into(),
        id_type: "external_id".into(),
    }
}

#[test]
fn a_server_restarted_mid_sync_ends_with_the_same_membership() {
    let f = fixture_with_users(2000);
    let Fixture {
        server,
        ws,
        secret,
        dir: data_dir,
        ..
    } = f;
    let token = server.token.clone();
    // Forward the first five batches, hold later ones until released;
    // after the release, forward everything (to wherever the target is).
    let released = Arc::new(AtomicBool::new(false));
    let r = released.clone();
    let proxy = Stub::start(&server.base, move |path, _, before| {
        if path.ends_with("/users") && before >= 5 && !r.load(Ordering::SeqCst) {
            Action::Hold
        } else {
            Action::Forward
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let target = names("u", 0..2000);
    let file = members_file(dir.path(), "m.txt", &target);
    let child = sync_cmd(
        &proxy.base,
        &secret,
        &file,
        &state,
        &["--batch-size", "100", "--attempts", "100"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_for("four held requests", || proxy.held() == 4);
    // The server dies: the held requests' connections drop, and the
    // client retries against a dead address until the new server is up.
    server.kill();
    released.store(true, Ordering::SeqCst);
    proxy.release();
    std::thread::sleep(Duration::from_millis(200));
    let server = Server::restart(&data_dir.path().join("data"), &token, &[]);
    proxy.retarget(&server.base);
    let out = wait_output(child);
    let s = ok_summary(&out);
    assert!(s["retries"].as_u64().unwrap() >= 4, "{s}");
    assert_eq!(s["batches"], 20);
    // Every batch was acknowledged exactly once.
    let acked: Vec<Value> = proxy
        .users()
        .into_iter()
        .filter(|s| s.status == Some(200) || s.status == Some(201))
        .map(|s| s.body)
        .collect();
    assert_eq!(acked.len(), 20);
    let distinct: BTreeSet<String> = acked.iter().map(|b| b.to_string()).collect();
    assert_eq!(distinct.len(), 20);
    assert_eq!(members_on(&server, &ws, "c1"), target);
}

#[test]
fn the_binary_retries_429_after_its_retry_after_and_5xx() {
    let stub = Stub::start("", |path, _, before| {
        if path.ends_with("/cohorts") {
            return Action::Respond(201, vec![], json!({"message": "success"}));
        }
        match before {
            0 => Action::Respond(
                429,
                vec![("Retry-After".into(), "1".into())],
                json!({"message": "rate limited"}),
            ),
            1 => Action::Respond(503, vec![], json!({"message": "busy"})),
            2 => Action::Respond(500, vec![], json!({"message": "oops"})),
            _ => Action::Respond(
                200,
                vec![],
                json!({"message": "success", "matched": 2, "unmatched": 1, "refused_device_ids": 0}),
            ),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let file = members_file(dir.path(), "m.txt", &set(&["a", "b", "c"]));
    let state = dir.path().join("state.json");
    let s = ok_summary(&run_sync(sync_cmd(
        &stub.base,
        "secret",
        &file,
        &state,
        &[],
    )));
    assert_eq!(
        (&s["batches"], &s["retries"], &s["matched"], &s["unmatched"]),
        (&json!(1), &json!(3), &json!(2), &json!(1))
    );
    let users = stub.users();
    assert_eq!(users.len(), 4);
    assert!(users.iter().all(|u| u.body == users[0].body));
    assert!(
        users[1].at.duration_since(users[0].at) >= Duration::from_secs(1),
        "the retry came before Retry-After"
    );
}

#[test]
fn the_binary_never_retries_400_401_413() {
    for (status, message) in [
        (
            400,
            "Only 1,000 user_ids, device_ids, and aliases are allowed per request",
        ),
        (401, "Invalid client secret"),
        (413, "request body over 16777216 bytes"),
    ] {
        let stub = Stub::start("", move |path, _, _| {
            if path.ends_with("/cohorts") {
                Action::Respond(200, vec![], json!({"message": "success"}))
            } else {
                Action::Respond(
                    status,
                    vec![],
                    json!({"message": message, "errors": [message]}),
                )
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let file = members_file(dir.path(), "m.txt", &names("u", 0..10));
        let state = dir.path().join("state.json");
        let out = run_sync(sync_cmd(&stub.base, "secret", &file, &state, &[]));
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("answered {status}")), "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
        assert!(!stderr.contains("retrying"), "{stderr}");
        assert_eq!(stub.users().len(), 1, "{status} was retried");
    }
}

#[test]
fn a_wrong_key_fails_with_the_servers_message_and_changes_nothing() {
    let f = fixture_with_users(10);
    let dir = tempfile::tempdir().unwrap();
    let file = members_file(dir.path(), "m.txt", &names("u", 0..10));
    let state = dir.path().join("state.json");
    let out = run_sync(sync_cmd(&f.server.base, "not-the-key", &file, &state, &[]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("Invalid client secret"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-key"), "{stderr}");
    assert!(f.server.cohort(&f.ws, "amplitude", "c1").is_none());
    assert!(!state.exists());
    // Bad arguments fail before anything is sent.
    let mut c = sync_cmd(
        &f.server.base,
        &f.secret,
        &file,
        &state,
        &["--id-type", "alias"],
    );
    let out = run_sync({
        c.arg("--every").arg("1w");
        c
    });
    assert_eq!(out.status.code(), Some(2));
    assert!(!state.exists());
}

#[test]
fn ctrl_c_finishes_the_batches_in_flight_and_saves_the_state() {
    let f = fixture_with_users(2000);
    let released = Arc::new(AtomicBool::new(false));
    let r = released.clone();
    // Hold batches from the third on until released, then forward them.
    let proxy = Stub::start(&f.server.base, move |path, _, before| {
        if path.ends_with("/users") && before >= 2 {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !r.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Action::Forward
    });
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let target = names("u", 0..2000);
    let file = members_file(dir.path(), "m.txt", &target);
    let args = ["--batch-size", "100"];
    let mut child = sync_cmd(&proxy.base, &f.secret, &file, &state, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            l.lock().unwrap().push(line);
        }
    });
    wait_for("six users requests", || proxy.users().len() == 6);
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-s", "INT", &pid])
        .status()
        .unwrap()
        .success());
    wait_for("the stopping notice", || {
        lines.lock().unwrap().iter().any(|l| l.contains("stopping"))
    });
    released.store(true, Ordering::SeqCst);
    let out = wait_output(child);
    assert_eq!(out.status.code(), Some(130));
    let s = summary(&out);
    assert_eq!(
        (&s["interrupted"], &s["batches"]),
        (&json!(true), &json!(6))
    );
    assert_eq!(proxy.users().len(), 6, "no batch started after Ctrl-C");
    assert_eq!(members_on(&f.server, &f.ws, "c1").len(), 600);

    let s = ok_summary(&run_sync(sync_cmd(
        &proxy.base,
        &f.secret,
        &file,
        &state,
        &args,
    )));
    assert_eq!(
        (&s["batches"], &s["skipped_batches"]),
        (&json!(14), &json!(6))
    );
    assert_eq!(proxy.users().len(), 20);
    assert_eq!(members_on(&f.server, &f.ws, "c1"), target);
}

#[test]
fn every_period_rereads_the_file_and_ctrl_c_between_runs_exits_cleanly() {
    let stub = Stub::start("", |path, body, _| {
        if path.ends_with("/cohorts") {
            return Action::Respond(200, vec![], json!({"message": "success"}));
        }
        let n = batch_of(body).1.len();
        Action::Respond(200, vec![], json!({"message": "success", "matched": n}))
    });
    let dir = tempfile::tempdir().unwrap();
    let file = members_file(dir.path(), "m.txt", &set(&["a", "b"]));
    let state = dir.path().join("state.json");
    let child = sync_cmd(&stub.base, "secret", &file, &state, &["--every", "1s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the first run's batch", || stub.users().len() == 1);
    // The file changes; a later run sends only the new member.
    let tmp = dir.path().join("m.tmp");
    std::fs::write(&tmp, "a\nb\nc\n").unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    wait_for("a run that sends c", || stub.users().len() == 2);
    wait_for("one more run", || {
        stub.seen()
            .iter()
            .filter(|s| s.path.ends_with("/cohorts"))
            .count()
            >= 3
    });
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-s", "INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = wait_output(child);
    assert_eq!(out.status.code(), Some(0));
    let users = stub.users();
    assert_eq!(users.len(), 2, "no run stacked or resent");
    assert_eq!(
        batch_of(&users[0].body),
        (false, vec!["a".into(), "b".into()])
    );
    assert_eq!(batch_of(&users[1].body), (false, vec!["c".into()]));
    let text = String::from_utf8_lossy(&out.stdout);
    let runs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(runs.len() >= 3, "{text}");
    let sending: Vec<&Value> = runs
        .iter()
        .map(|r| &r["entered"])
        .filter(|e| *e != 0)
        .collect();
    assert_eq!(sending, [&json!(2), &json!(1)], "{text}");
}

// ----- the state's log (version 2), and version 1 files -----

fn log_of(state: &Path) -> String {
    std::fs::read_to_string(segq::sync::Ledger::log_path(state)).unwrap_or_default()
}

#[test]
fn a_sync_writes_its_changes_to_the_log_not_the_whole_cohort() {
    let dir = tempfile::tempdir().unwrap();
    let j = job(&dir.path().join("state.json"));
    let stop = AtomicBool::new(false);
    let t = Scripted::new(vec![]);
    let mut syncer = sync::Syncer::new(j.clone());
    let first = names("u", 0..5000);
    syncer.sync(&first, &t, &sync::Quiet, &stop).unwrap();
    // The state file is written once, before the first record (no
    // members yet); the log holds the plan, then its commit.
    let base = std::fs::read(&j.state).unwrap();
    let written: State = serde_json::from_slice(&base).unwrap();
    assert!(written.members.is_empty());
    let log = log_of(&j.state);
    let kinds: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["record"].clone())
        .collect();
    assert_eq!(kinds, [json!("begin"), json!("commit")]);

    // Ten changes: two lines of about their size; the state file is not
    // written again.
    let mut second = first.clone();
    for i in 0..5 {
        second.remove(&format!("u{i}"));
        second.insert(format!("v{i}"));
    }
    syncer.sync(&second, &t, &sync::Quiet, &stop).unwrap();
    let grown = log_of(&j.state).len() - log.len();
    assert!(grown < 600, "{grown} bytes for ten changes");
    assert_eq!(log_of(&j.state).lines().count(), 4);
    assert_eq!(std::fs::read(&j.state).unwrap(), base);
    // Read from the files by a new client: the same members.
    let st = State::load(&j.state, &sync::run::identity(&j)).unwrap();
    assert_eq!(st.synced(), second);
    assert_eq!(st.members, syncer.state().unwrap().members);

    // Once the log outgrows the state file and 1 MiB, it is folded in.
    let big = names("w", 0..150_000);
    syncer.sync(&big, &t, &sync::Quiet, &stop).unwrap();
    assert!(!segq::sync::Ledger::log_path(&j.state).exists());
    let st: State = serde_json::from_slice(&std::fs::read(&j.state).unwrap()).unwrap();
    assert_eq!((st.version, st.seq), (2, 6));
    assert_eq!(st.synced(), big);
    assert!(st.pending.is_none());
    assert_eq!(State::load(&j.state, &sync::run::identity(&j)).unwrap(), st);
}

#[test]
fn the_log_replays_past_a_torn_line_skips_what_the_file_holds_and_refuses_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let j = job(&dir.path().join("state.json"));
    let id = sync::run::identity(&j);
    let stop = AtomicBool::new(false);
    let t = Scripted::new(vec![]);
    let mut syncer = sync::Syncer::new(j.clone());
    syncer
        .sync(&names("u", 0..10), &t, &sync::Quiet, &stop)
        .unwrap();
    syncer
        .sync(&names("u", 5..15), &t, &sync::Quiet, &stop)
        .unwrap();
    let path = segq::sync::Ledger::log_path(&j.state);
    let log = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 4);

    // The last commit torn (a crash while it was written): the second
    // sync is still pending; a rerun finishes it.
    std::fs::write(
        &path,
        format!("{}\n{}", lines[..3].join("\n"), &lines[3][..12]),
    )
    .unwrap();
    let st = State::load(&j.state, &id).unwrap();
    assert_eq!(st.synced(), names("u", 0..10));
    let p = st.pending.expect("the second sync is pending");
    assert_eq!((p.entered.len(), p.left.len()), (5, 5));
    let mut again = sync::Syncer::new(j.clone());
    let s = again
        .sync(&names("u", 5..15), &t, &sync::Quiet, &stop)
        .unwrap();
    assert!(s.resumed);
    let st = State::load(&j.state, &id).unwrap();
    assert_eq!(st.synced(), names("u", 5..15));
    assert!(st.pending.is_none());

    // Records the state file already holds are skipped: a fold that
    // stopped before it removed the log.
    let log = std::fs::read_to_string(&path).unwrap();
    st.save(&j.state).unwrap();
    assert!(!path.exists());
    std::fs::write(&path, &log).unwrap();
    assert_eq!(State::load(&j.state, &id).unwrap(), st);

    // A record missing in the middle: refused, not guessed around.
    std::fs::remove_file(&j.state).unwrap();
    let mut fresh = sync::Syncer::new(j.clone());
    fresh
        .sync(&names("u", 0..10), &t, &sync::Quiet, &stop)
        .unwrap();
    fresh
        .sync(&names("u", 5..15), &t, &sync::Quiet, &stop)
        .unwrap();
    let log = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
    let e = State::load(&j.state, &id).unwrap_err();
    assert!(matches!(e, segq::Error::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("missing records"), "{e}");
    // A line that is not a record: refused too.
    std::fs::write(&path, "{\"record\":\"begin\"}\n").unwrap();
    let e = State::load(&j.state, &id).unwrap_err();
    assert!(e.to_string().contains("not a sync log record"), "{e}");

    // A log left from a removed state file is removed before a new state
    // file (at record 0) is written: a crash after that write must not
    // find the old records numbered above it.
    let mut older = sync::Syncer::new(j.clone());
    std::fs::remove_file(&path).unwrap();
    older
        .sync(&names("u", 0..10), &t, &sync::Quiet, &stop)
        .unwrap();
    older
        .sync(&names("u", 5..15), &t, &sync::Quiet, &stop)
        .unwrap();
    assert!(path.exists());
    std::fs::remove_file(&j.state).unwrap();
    let opened = sync::Ledger::open(&j.state, &id).unwrap();
    assert!(opened.state().members.is_empty());
    assert!(!path.exists(), "the stale log is gone once opened");
    drop(opened);
    let mut anew = sync::Syncer::new(j.clone());
    anew.sync(&names("u", 0..3), &t, &sync::Quiet, &stop)
        .unwrap();
    let st = State::load(&j.state, &id).unwrap();
    assert_eq!(st.synced(), names("u", 0..3));
}

#[test]
fn a_version_1_state_file_still_reads_and_resumes_its_own_batches() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sync/v1-state.json");
    let state = dir.path().join("state.json");
    std::fs::copy(&fixture, &state).unwrap();
    let mut j = job(&state);
    j.batch_size = 2;
    // Its pending sync's plan: entered d, e, f (batches 0 and 1), left a
    // (batch 2), as version 1 numbered them; batch 0 was acknowledged.
    let st = State::load(&state, &sync::run::identity(&j)).unwrap();
    assert_eq!(st.version, 1);
    assert_eq!(st.members, ["a", "b", "c"]);
    let p = st.pending.clone().unwrap();
    assert_eq!(
        (p.entered, p.left),
        (
            vec!["d".into(), "e".into(), "f".into()],
            vec!["a".to_string()]
        )
    );
    std::fs::write(Journal::path_for(&state), "p1 0\n").unwrap();
    let t = Scripted::new(vec![]);
    let stop = AtomicBool::new(false);
    let target = set(&["b", "c", "d", "e", "f"]);
    let s = sync::sync_once(&j, &target, &t, &sync::Quiet, &stop).unwrap();
    assert!(s.resumed);
    assert_eq!((s.batches, s.skipped_batches), (2, 1));
    let mut sent: Vec<(bool, Vec<String>)> = t.users_requests().iter().map(batch_of).collect();
    sent.sort();
    assert_eq!(
        sent,
        [
            (false, vec!["f".to_string()]),
            (true, vec!["a".to_string()])
        ]
    );
    let st = State::load(&state, &sync::run::identity(&j)).unwrap();
    assert_eq!(st.synced(), target);
    assert!(st.pending.is_none());
}

#[test]
fn members_out_of_order_are_refused_before_any_change_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let j = job(&dir.path().join("state.json"));
    let stop = AtomicBool::new(false);
    let t = Scripted::new(vec![]);
    let mut syncer = sync::Syncer::new(j);
    for bad in [vec!["b", "a"], vec!["a", "a"]] {
        let bad: Vec<String> = bad.into_iter().map(String::from).collect();
        let e = syncer.sync(&bad, &t, &sync::Quiet, &stop).unwrap_err();
        assert!(e.to_string().contains("ascending order"), "{e}");
    }
    assert!(t.users_requests().is_empty());
    let ok: Vec<String> = vec!["a".into(), "b".into()];
    syncer.sync(&ok, &t, &sync::Quiet, &stop).unwrap();
    assert_eq!(syncer.state().unwrap().members, ok);
}

#[test]
fn a_syncer_in_memory_agrees_with_its_files_and_the_server_over_random_syncs() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(29);
    let dir = tempfile::tempdir().unwrap();
    let mut j = job(&dir.path().join("state.json"));
    j.batch_size = 7;
    j.in_flight = 2;
    let id = sync::run::identity(&j);
    let stop = AtomicBool::new(false);
    let mut syncer = sync::Syncer::new(j.clone());
    let mut server: BTreeSet<String> = BTreeSet::new();
    for round in 0..80 {
        let target: BTreeSet<String> = (0..rng.gen_range(0..60))
            .map(|_| format!("u{}", rng.gen_range(0..90)))
            .collect();
        // Now and then a full sync, by a client that reads the files
        // afresh.
        if rng.gen_bool(0.15) {
            let mut full = j.clone();
            full.full = true;
            syncer = sync::Syncer::new(full);
        } else if syncer.job().full {
            syncer = sync::Syncer::new(j.clone());
        }
        let t = Scripted::new(vec![]);
        syncer.sync(&target, &t, &sync::Quiet, &stop).unwrap();
        for (remove, ids) in t.users_requests().iter().map(batch_of) {
            for id in ids {
                if remove {
                    server.remove(&id);
                } else {
                    server.insert(id);
                }
            }
        }
        assert_eq!(server, target, "round {round}: the server");
        let want: Vec<String> = target.iter().cloned().collect();
        assert_eq!(
            syncer.state().unwrap().members,
            want,
            "round {round}: memory"
        );
        assert_eq!(
            State::load(&j.state, &id).unwrap().members,
            want,
            "round {round}: files"
        );
    }
}
