//! Concurrency: imports from many threads, a second engine on a live data
//! directory, restores beside key changes and imports.

use super::*;

#[test]
fn concurrent_imports_are_all_applied_and_survive_a_restart() {
    const THREADS: usize = 4;
    const REQUESTS: usize = 50;
    const IDS: usize = 100;
    const USERS: usize = 10_000;
    let dir = tempdir();
    let engine = open(dir.path());
    engine.create_workspace("acme").unwrap();
    let key = engine.create_key("acme", Partner::Amplitude).unwrap();
    let report = handle(&engine, "acme")
        .upsert_users(
            (0..USERS)
                .map(|i| new_user(Some(&format!("u-{i}")), &[], &[]))
                .collect(),
        )
        .unwrap();
    assert_eq!(report.created, USERS as u64);

    // Thread t, request r: 95 users (overlapping between threads and
    // requests) and 5 ids that match nobody, into cohort c-(t % 2).
    let ids = |t: usize, r: usize| -> Vec<String> {
        (0..IDS)
            .map(|j| {
                if j % 20 == 19 {
                    format!("ghost-{t}-{r}-{j}")
                } else {
                    format!("u-{}", (t * 1_700 + r * 97 + j * 3) % USERS)
                }
            })
            .collect()
    };
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let engine = &engine;
            let key = &key;
            scope.spawn(move || {
                for r in 0..REQUESTS {
                    let rep = import(
                        engine,
                        Partner::Amplitude,
                        &key.key,
                        json!({"cohort_id": format!("c-{}", t % 2),
                               "cohort_changes": [{"user_ids": ids(t, r)}]}),
                        march(1),
                    );
                    assert_eq!(
                        (rep.matched, rep.unmatched),
                        (95, 5),
                        "thread {t} request {r}"
                    );
                }
            });
        }
    });

    for c in 0..2 {
        let mut union = BTreeSet::new();
        for t in (0..THREADS).filter(|t| t % 2 == c) {
            for r in 0..REQUESTS {
                for id in ids(t, r) {
                    if let Some(n) = id.strip_prefix("u-") {
                        union.insert(n.parse::<u32>().unwrap());
                    }
                }
            }
        }
        let got = members(&engine, "acme", Partner::Amplitude, &format!("c-{c}"));
        assert_eq!(got, union.into_iter().collect::<Vec<_>>(), "cohort c-{c}");
        let h = handle(&engine, "acme");
        let ws = h.read();
        let sync = &ws
            .cohorts
            .get(&CohortKey::new(Partner::Amplitude, format!("c-{c}")))
            .unwrap()
            .sync;
        let requests = (THREADS / 2 * REQUESTS) as u64;
        assert_eq!(sync.matched_total, 95 * requests);
        assert_eq!(sync.unmatched_total, 5 * requests);
    }
    let total = (THREADS * REQUESTS * 95) as u64;
    assert_eq!(
        handle(&engine, "acme")
            .read()
            .data_points(Partner::Amplitude, day(1)),
        total
    );
    let before = engine_fingerprint(&engine);
    drop(engine);
    let engine = open(dir.path());
    assert!(engine.recoveries().is_empty());
    assert_eq!(engine_fingerprint(&engine), before);
}

/// Two engines on one data directory both append to the same logs, and a
/// restart then cuts the records of one of them: writes that were
/// acknowledged are lost. A second open must be refused while the first is
/// live (or both engines' writes must survive).
#[test]
fn a_second_engine_on_a_live_data_directory_cannot_lose_writes() {
    let dir = tempdir();
    let first = open(dir.path());
    let key = small_workspace(&first, "acme");
    let second = match Engine::open(dir.path()) {
        Err(_) => return, // refused: the data directory is locked
        Ok((e, _)) => e,
    };
    for (engine, id) in [(&first, "u-20"), (&second, "u-21")] {
        let r = import(
            engine,
            Partner::Amplitude,
            &key.key,
            json!({"cohort_id": "c", "cohort_changes": [{"user_ids": [id]}]}),
            march(1),
        );
        assert_eq!(r.added, 1);
    }
    drop(first);
    drop(second);
    let engine = open(dir.path());
    let got = members(&engine, "acme", Partner::Amplitude, "c");
    assert!(
        got.contains(&20) && got.contains(&21),
        "an acknowledged write was lost: members {got:?}, recoveries {:?}",
        engine.recoveries()
    );
}

/// Restores, key creation and invalidation, listing and partner imports run
/// together from several threads. Restores took the table of workspaces and
/// then the key index, authorization the index and then the table: with a
/// key writer waiting between them, each waited for the other forever. A
/// watchdog fails the test instead of letting it hang.
#[test]
fn restores_key_changes_and_imports_together_do_not_deadlock() {
    use std::sync::mpsc;
    use std::time::Duration;
    let dir = tempdir();
    let data = dir.path().join("data");
    let engine = open(&data);
    let file = generated_snapshot(dir.path());
    let key = small_workspace(&engine, "acme");

    let (done, finished) = mpsc::channel::<&'static str>();
    let mut threads = Vec::new();
    for t in 0..2 {
        let (engine, file, done) = (engine.clone(), file.clone(), done.clone());
        threads.push(std::thread::spawn(move || {
            for i in 0..12 {
                engine
                    .restore_workspace(&format!("r-{t}-{i}"), &file)
                    .unwrap();
            }
            done.send("restores").unwrap();
        }));
    }
    for _ in 0..2 {
        let (engine, done) = (engine.clone(), done.clone());
        threads.push(std::thread::spawn(move || {
            for _ in 0..60 {
                let k = engine.create_key("acme", Partner::Mixpanel).unwrap();
                engine.list_keys("acme", None).unwrap();
                engine.invalidate_key("acme", &k.id).unwrap();
            }
            done.send("keys").unwrap();
        }));
    }
    for t in 0..3 {
        let (engine, secret, done) = (engine.clone(), key.key.clone(), done.clone());
        threads.push(std::thread::spawn(move || {
            for i in 0..150 {
                let id = format!("u-{}", (t * 7 + i) % 50);
                let r = import(
                    &engine,
                    Partner::Amplitude,
                    &secret,
                    json!({"cohort_id": "c", "cohort_changes": [{"user_ids": [id]}]}),
                    march(1),
                );
                assert_eq!(r.matched, 1);
                let bad = creds(&engine, Partner::Amplitude, "not-a-key");
                assert!(engine.authorize(Partner::Amplitude, &bad).is_err());
            }
            done.send("imports").unwrap();
        }));
    }
    drop(done);
    for _ in 0..threads.len() {
        match finished.recv_timeout(Duration::from_secs(30)) {
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("no thread finished within 30 s: deadlocked")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("a thread panicked"),
        }
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(engine.workspace_names().len(), 1 + 2 * 12);
}
