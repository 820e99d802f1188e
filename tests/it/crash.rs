//! Crash safety of the partner import: a `segq serve` child process takes
//! a stream of users requests from a few client threads and is killed with
//! SIGKILL at a random point; after a restart on the same data directory,
//! every acknowledged change is there and no request is half-applied.
//!
//! The workload makes every (cohort, user) pair part of exactly one
//! request of a round: each request adds ten users that are not members
//! and removes ten that are (a baseline, acknowledged before the stream,
//! made them members), plus one identifier that matches nobody. So each
//! request's effect can be read off the state on its own:
//! - acknowledged (2xx): all twenty pairs flipped;
//! - in flight at the kill (the client saw an error): all or none flipped;
//! - never sent: none flipped.
//!
//! The cohorts' sync statistics and the billed data points must agree with
//! the requests found applied (they are written with the membership in one
//! record). Several rounds run on the same data directory, each killing at
//! another point, and every round re-checks the cohorts of the earlier
//! ones, through the admin API of the restarted server and by opening the
//! directory in-process.
//!
//! `SEGQ_CRASH_SEED=<n>` replays a run (the seed is printed).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use segq::{CohortKey, Partner};
use serde_json::{json, Value};

use crate::support::server::{client, cohort_body, open_engine, users_body, Server};

const WS: &str = "crash";
const USERS: usize = 2000;
const ROUNDS: usize = 8;
const COHORTS_PER_ROUND: usize = 6;
/// Users added (and as many removed) by one request.
const HALF: usize = 10;
const THREADS: usize = 3;
/// The longest a round's stream may run before the kill.
const STREAM_LIMIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    NotSent,
    Acked,
    /// The client saw an error: the request may or may not have applied.
    InFlight,
    /// A non-2xx answer: must not happen.
    Refused(u16),
}

struct Request {
    cohort: usize,
    adds: Vec<usize>,
    removes: Vec<usize>,
    body: Value,
}

fn user_name(i: usize) -> String {
    format!("u{i}")
}

fn email(i: usize) -> Value {
    json!({"alias_label": "email", "alias_name": format!("u{i}@example.com")})
}

/// Users by external id or alias, in turn, so both matchers are on the
/// crash path.
fn identifiers(users: &[usize], by_alias: bool) -> (&'static str, Value) {
    if by_alias {
        ("aliases", users.iter().map(|&i| email(i)).collect())
    } else {
        (
            "user_ids",
            users.iter().map(|&i| json!(user_name(i))).collect(),
        )
    }
}

/// The state of the cohorts as read from the data directory.
struct OnDisk {
    members: BTreeMap<String, BTreeSet<usize>>,
    matched: BTreeMap<String, u64>,
    unmatched: BTreeMap<String, u64>,
    data_points: u64,
    recoveries: usize,
}

fn read_data_dir(data: &Path, cohorts: &[String]) -> OnDisk {
    let engine = open_engine(data);
    let handle = engine.workspace(WS).expect("the workspace survives");
    let w = handle.read();
    let mut by_id = HashMap::new();
    for i in 0..USERS {
        let id = w
            .users
            .match_external_id(&user_name(i))
            .unwrap_or_else(|| panic!("user {i} survives"));
        by_id.insert(id.0, i);
    }
    assert_eq!(
        w.users.len() as usize,
        USERS,
        "no user was created by an import"
    );
    let mut out = OnDisk {
        members: BTreeMap::new(),
        matched: BTreeMap::new(),
        unmatched: BTreeMap::new(),
        data_points: w.data_points_by_day().map(|(_, _, n)| n).sum(),
        recoveries: engine.recoveries().len(),
    };
    for c in cohorts {
        let cohort = w
            .cohorts
            .get(&CohortKey::new(Partner::Amplitude, c.as_str()))
            .unwrap_or_else(|| panic!("cohort {c} survives"));
        out.members.insert(
            c.clone(),
            cohort.members.iter().unwrap().map(|u| by_id[&u]).collect(),
        );
        out.matched.insert(c.clone(), cohort.sync.matched_total);
        out.unmatched.insert(c.clone(), cohort.sync.unmatched_total);
    }
    out
}

fn seed() -> u64 {
    std::env::var("SEGQ_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        })
}

#[test]
fn sigkill_mid_stream_loses_no_acknowledged_change_and_half_applies_nothing() {
    let started = Instant::now();
    let seed = seed();
    eprintln!("crash test: SEGQ_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("a temp dir");
    let data = dir.path().join("data");

    // Users, a workspace and a key, once.
    let server = Server::start(&data, &[]);
    let token = server.token.clone();
    server.create_workspace(WS);
    let (_, secret) = server.create_key(WS, "amplitude");
    let jsonl: String = (0..USERS)
        .map(|i| {
            format!(
                "{}\n",
                json!({"external_id": user_name(i), "aliases": [email(i)]})
            )
        })
        .collect();
    let r = server.request(
        reqwest::Method::POST,
        &format!("/admin/workspaces/{WS}/users/import"),
        Some("application/x-ndjson"),
        jsonl.into_bytes(),
        true,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["created"], USERS as u64);
    let mut server = Some(server);

    // What the checked rounds hold, and what they billed.
    let mut expected: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let mut expected_matched: BTreeMap<String, u64> = BTreeMap::new();
    let mut expected_unmatched: BTreeMap<String, u64> = BTreeMap::new();
    let mut billed: u64 = 0;
    let mut in_flight_total = 0;

    for round in 0..ROUNDS {
        let s = match server.take() {
            Some(s) => s,
            None => Server::restart(&data, &token, &[]),
        };
        // The restarted server serves what the earlier rounds left.
        for (c, members) in &expected {
            assert_eq!(s.size(WS, "amplitude", c), members.len() as u64, "{c}");
        }

        // This round's cohorts, each with a baseline of members to remove.
        let names: Vec<String> = (0..COHORTS_PER_ROUND)
            .map(|k| format!("r{round}-c{k}"))
            .collect();
        let mut requests: Vec<Request> = Vec::new();
        let mut baseline: Vec<BTreeSet<usize>> = Vec::new();
        for (k, name) in names.iter().enumerate() {
            s.create_cohort("amplitude", &cohort_body(&secret, name, name))
                .expect(201);
            let mut users: Vec<usize> = (0..USERS).collect();
            users.shuffle(&mut rng);
            let mut members = BTreeSet::new();
            for (j, chunk) in users.chunks(2 * HALF).enumerate() {
                let (adds, removes) = chunk.split_at(HALF);
                members.extend(removes.iter().copied());
                let by_alias = j % 2 == 1;
                let (kind, added) = identifiers(adds, by_alias);
                let (_, removed) = identifiers(removes, by_alias);
                // One identifier that matches nobody, as a device id.
                let ghost = format!("ghost-{round}-{k}-{j}");
                let mut add_obj = serde_json::Map::new();
                add_obj.insert(kind.into(), added);
                add_obj.insert("device_ids".into(), json!([ghost]));
                let mut remove_obj = serde_json::Map::new();
                remove_obj.insert(kind.into(), removed);
                remove_obj.insert("should_remove".into(), json!(true));
                let body = users_body(&secret, name, json!([add_obj, remove_obj]));
                requests.push(Request {
                    cohort: k,
                    adds: adds.to_vec(),
                    removes: removes.to_vec(),
                    body,
                });
            }
            let listed: Vec<String> = members.iter().map(|&i| user_name(i)).collect();
            let r = s
                .users(
                    "amplitude",
                    &users_body(&secret, name, json!([{"user_ids": listed}])),
                )
                .expect(200);
            assert_eq!(r.json()["matched"], members.len() as u64);
            billed += members.len() as u64;
            expected_matched.insert(name.clone(), members.len() as u64);
            expected_unmatched.insert(name.clone(), 0);
            baseline.push(members);
        }
        requests.shuffle(&mut rng);
        let requests = Arc::new(requests);
        let outcomes = Arc::new(Mutex::new(vec![Outcome::NotSent; requests.len()]));
        let acked = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));

        // The stream: request i goes to thread i % THREADS, in order.
        let url = s.url("/partners/amplitude/cohorts/users");
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (requests, outcomes, acked, stop, url) = (
                    requests.clone(),
                    outcomes.clone(),
                    acked.clone(),
                    stop.clone(),
                    url.clone(),
                );
                std::thread::spawn(move || {
                    let client = client();
                    for i in (t..requests.len()).step_by(THREADS) {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        outcomes.lock().unwrap()[i] = Outcome::InFlight;
                        let outcome = match client.post(&url).json(&requests[i].body).send() {
                            Ok(r) if r.status().is_success() => {
                                // Only a whole answer is an acknowledgement.
                                match r.text() {
                                    Ok(_) => Outcome::Acked,
                                    Err(_) => Outcome::InFlight,
                                }
                            }
                            Ok(r) => Outcome::Refused(r.status().as_u16()),
                            Err(_) => Outcome::InFlight,
                        };
                        outcomes.lock().unwrap()[i] = outcome;
                        match outcome {
                            Outcome::Acked => {
                                acked.fetch_add(1, Ordering::SeqCst);
                            }
                            _ => break,
                        }
                    }
                })
            })
            .collect();

        // Kill at a random point of the stream: after a random share of it
        // was acknowledged, plus a random sub-request delay.
        let target = rng.gen_range(requests.len() / 10..requests.len() * 7 / 10);
        let jitter = Duration::from_micros(rng.gen_range(0..3000));
        let deadline = Instant::now() + STREAM_LIMIT;
        while acked.load(Ordering::SeqCst) < target && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(jitter);
        s.kill();
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.join().expect("a client thread");
        }
        let outcomes = outcomes.lock().unwrap().clone();
        let count = |o: Outcome| outcomes.iter().filter(|&&x| x == o).count();
        let refused: Vec<_> = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Refused(_)))
            .collect();
        assert!(refused.is_empty(), "refused requests: {refused:?}");
        assert!(
            count(Outcome::Acked) >= target,
            "the stream stalled: {} of {target} acknowledged",
            count(Outcome::Acked)
        );

        // Read the directory the killed server left.
        let all: Vec<String> = expected.keys().cloned().chain(names.clone()).collect();
        let disk = read_data_dir(&data, &all);
        let mut applied_in_flight = 0;
        let mut applied = vec![false; requests.len()];
        for (i, req) in requests.iter().enumerate() {
            let members = &disk.members[&names[req.cohort]];
            let flipped = req.adds.iter().filter(|u| members.contains(u)).count()
                + req.removes.iter().filter(|u| !members.contains(u)).count();
            let n = req.adds.len() + req.removes.len();
            applied[i] = match outcomes[i] {
                Outcome::Acked => {
                    assert_eq!(
                        flipped, n,
                        "round {round}: acknowledged request {i} is lost"
                    );
                    true
                }
                Outcome::InFlight => {
                    assert!(
                        flipped == 0 || flipped == n,
                        "round {round}: request {i} in flight is half-applied ({flipped} of {n})"
                    );
                    applied_in_flight += usize::from(flipped == n);
                    flipped == n
                }
                _ => {
                    assert_eq!(flipped, 0, "round {round}: unsent request {i} applied");
                    false
                }
            };
            if applied[i] {
                let name = &names[req.cohort];
                *expected_matched.get_mut(name).unwrap() += n as u64;
                *expected_unmatched.get_mut(name).unwrap() += 1;
                billed += n as u64;
            }
        }
        // Every pair of the round belongs to one request: nothing else moved.
        for (k, name) in names.iter().enumerate() {
            let mut state = baseline[k].clone();
            for (i, req) in requests.iter().enumerate() {
                if req.cohort == k && applied[i] {
                    state.extend(req.adds.iter().copied());
                    for u in &req.removes {
                        state.remove(u);
                    }
                }
            }
            assert_eq!(disk.members[name], state, "round {round}: {name}");
            expected.insert(name.clone(), state);
        }
        // Earlier rounds are untouched; statistics and billing agree.
        for (c, members) in &expected {
            assert_eq!(&disk.members[c], members, "round {round}: cohort {c}");
        }
        assert_eq!(
            disk.matched, expected_matched,
            "round {round}: matched totals"
        );
        assert_eq!(
            disk.unmatched, expected_unmatched,
            "round {round}: unmatched totals"
        );
        assert_eq!(disk.data_points, billed, "round {round}: data points");

        in_flight_total += count(Outcome::InFlight);
        eprintln!(
            "crash round {round}: {} acknowledged, {} in flight ({applied_in_flight} applied), {} unsent of {}; {} log(s) recovered; {:?} so far",
            count(Outcome::Acked),
            count(Outcome::InFlight),
            count(Outcome::NotSent),
            requests.len(),
            disk.recoveries,
            started.elapsed()
        );
    }
    assert!(in_flight_total > 0, "no kill landed on a request in flight");

    // A last restart serves it all, and stops cleanly.
    let s = Server::restart(&data, &token, &[]);
    for (c, members) in &expected {
        assert_eq!(s.size(WS, "amplitude", c), members.len() as u64, "{c}");
    }
    let r = s.users(
        "amplitude",
        &users_body(&secret, "r0-c0", json!([{"user_ids": ["u0"]}])),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    s.stop();
}
