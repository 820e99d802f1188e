//! Read replicas (`segq serve --replica-of URL`): a replica follows a
//! primary through the object store under imports and compactions, and its
//! answers equal the primary's at every generation it reaches; it refuses
//! writes naming the primary and never compacts; a damaged object leaves it
//! serving what it had until the store checks out again; it refuses a
//! directory that is not a replica's and a store no primary shipped to; as
//! a served node it follows a served primary, carries its lag on every
//! answer and shows it in `/metrics`; the same against a real
//! S3-compatible server (`moto_server`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use segq::engine::replica::Follower;
use segq::engine::store::{Bucket, Lease, ObjectInfo, Shipper};
use segq::engine::{Engine, WorkspaceHandle};
use segq::users::NewUser;
use segq::Error;
use serde_json::json;

use crate::store::{count, file_bucket, memory, no_env, writes, Moto};
use crate::support::fingerprint;

const FILTERS: [&str; 4] = [
    "amplitude_cohorts includes c0",
    "amplitude_cohorts includes c1",
    "amplitude_cohorts includes c0 AND NOT amplitude_cohorts includes c1",
    "amplitude_cohorts includes c0 OR amplitude_cohorts includes c1",
];

struct Primary {
    _dir: tempfile::TempDir,
    engine: Arc<Engine>,
    shipper: Arc<Shipper>,
    lease: Arc<Lease>,
}

fn primary(bucket: &Arc<dyn Bucket>) -> Primary {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _, _, lease) = Engine::open_primary(dir.path(), &no_env, bucket.clone()).unwrap();
    let shipper = Shipper::with_lease(engine.clone(), bucket.clone(), lease.clone());
    Primary {
        _dir: dir,
        engine,
        shipper,
        lease,
    }
}

struct Replica {
    _dir: tempfile::TempDir,
    engine: Arc<Engine>,
    follower: Arc<Follower>,
}

fn replica(bucket: &Arc<dyn Bucket>) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let (engine, manifests) = Engine::open_replica(dir.path(), &no_env, &**bucket).unwrap();
    let follower = Follower::new(engine.clone(), bucket.clone(), manifests).unwrap();
    Replica {
        _dir: dir,
        engine,
        follower,
    }
}

/// The replica's workspace `name` answers as the primary's: the same
/// generation, state and counts.
fn same_answers(p: &WorkspaceHandle, r: &WorkspaceHandle) {
    assert_eq!(r.view().1, p.view().1, "the same generation");
    assert_eq!(fingerprint(r), fingerprint(p), "the same state");
    for f in FILTERS {
        // A cohort not imported yet is refused alike.
        let answer = |h: &WorkspaceHandle| {
            let f = segq::segment::parse(f).unwrap();
            let (ws, _) = h.view();
            segq::query::count(&ws, h.bitmaps(), &f, false)
                .map(|c| c.count)
                .map_err(|e| e.to_string())
        };
        assert_eq!(answer(r), answer(p), "{f}");
    }
    assert_eq!(
        count(r, FILTERS[0]),
        count(p, FILTERS[0]),
        "c0 is imported in round 0"
    );
    // Saved segments, materialised, too.
    let saved = |h: &WorkspaceHandle| {
        h.read()
            .segments
            .values()
            .map(|s| s.id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(saved(r), saved(p));
}

fn follows_a_primary(bucket: Arc<dyn Bucket>) {
    let p = primary(&bucket);
    p.engine.create_workspace("w").unwrap();
    let h = p.engine.workspace("w").unwrap();
    writes(&h, 0);
    p.shipper.ship_once().unwrap();
    let r = replica(&bucket);
    same_answers(&h, &r.engine.workspace("w").unwrap());
    let mut appended = 0;
    let mut reloaded = 0;
    for round in 1..9u32 {
        writes(&h, round);
        if round % 3 == 0 {
            // A new snapshot generation: downloaded whole, swapped in.
            h.compact().unwrap();
        }
        if round == 4 {
            p.engine.create_workspace("v").unwrap();
            writes(&p.engine.workspace("v").unwrap(), round);
        }
        if round % 2 == 1 {
            // Shipped twice before the replica looks: pieces pile up.
            p.shipper.ship_once().unwrap();
            writes(&h, round + 100);
        }
        p.shipper.ship_once().unwrap();
        let polled = r.follower.poll_once().unwrap();
        appended += polled.records;
        reloaded += polled.reloaded.iter().filter(|n| *n == "w").count();
        same_answers(&h, &r.engine.workspace("w").unwrap());
        if round >= 4 {
            same_answers(
                &p.engine.workspace("v").unwrap(),
                &r.engine.workspace("v").unwrap(),
            );
        }
        // Nothing new: nothing done.
        let again = r.follower.poll_once().unwrap();
        assert_eq!((again.records, again.reloaded.len()), (0, 0), "{again:?}");
    }
    assert!(appended > 0, "records were applied from appended pieces");
    assert_eq!(reloaded, 2, "each compaction's snapshot was swapped in");
    let st = r.follower.status();
    assert!(st.degraded(chrono::Utc::now().timestamp_millis()).is_none());
    let f = st.following();
    assert_eq!(f["w"].seq, h.view().1);
    assert_eq!(f["w"].bucket_seq, f["w"].seq);
    assert_eq!(f["w"].epoch, p.lease.epoch());
    assert!(st.lag_ms(chrono::Utc::now().timestamp_millis()) < 60_000);
}

#[test]
fn a_replica_follows_a_primary_through_an_in_memory_store_and_answers_the_same() {
    follows_a_primary(memory());
}

#[test]
fn a_replica_follows_a_primary_through_a_local_filesystem_store_too() {
    let dir = tempfile::tempdir().unwrap();
    follows_a_primary(file_bucket(dir.path()));
}

#[test]
fn s3_a_replica_follows_a_primary_and_answers_the_same() {
    let Some(moto) = Moto::start() else { return };
    moto.bucket("segq");
    follows_a_primary(moto.store("s3://segq/replica"));
}

#[test]
fn a_replica_refuses_writes_naming_the_primary_and_never_compacts() {
    let bucket = memory();
    let p = primary(&bucket);
    p.engine.create_workspace("w").unwrap();
    let h = p.engine.workspace("w").unwrap();
    writes(&h, 0);
    p.shipper.ship_once().unwrap();
    let r = replica(&bucket);
    r.follower.poll_once().unwrap();
    let rw = r.engine.workspace("w").unwrap();
    let before = fingerprint(&rw);
    let user = NewUser {
        external_id: Some("x".into()),
        devices: vec![],
        aliases: vec![],
        bucket: None,
    };
    let err = rw.upsert_users(vec![user]).unwrap_err();
    assert!(matches!(err, Error::NotPrimary { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("read replica"), "{msg}");
    assert!(
        msg.contains(&bucket.describe()),
        "the store is named: {msg}"
    );
    assert!(msg.contains(p.lease.node()), "the primary is named: {msg}");
    let err = r.engine.create_workspace("x").unwrap_err();
    assert!(matches!(err, Error::NotPrimary { .. }), "{err:?}");
    let err = r
        .engine
        .create_key("w", segq::Partner::Amplitude)
        .unwrap_err();
    assert!(matches!(err, Error::NotPrimary { .. }), "{err:?}");
    let err = r.engine.compact("w").unwrap_err();
    assert!(matches!(err, Error::NotPrimary { .. }), "{err:?}");
    assert!(
        rw.compact().is_err(),
        "a replica's workspace never compacts"
    );
    assert!(r.engine.compact_due().is_empty());
    assert_eq!(fingerprint(&rw), before, "nothing changed");
    // Keys created on the primary authorize on the replica once followed.
    let key = p
        .engine
        .create_api_key("w", "reader", vec![segq::access::Scope::SegmentsRead])
        .unwrap();
    p.shipper.ship_once().unwrap();
    assert!(
        !matches!(r.engine.caller(&key.key), segq::engine::Caller::Key { .. }),
        "not yet followed"
    );
    r.follower.poll_once().unwrap();
    assert!(
        matches!(r.engine.caller(&key.key), segq::engine::Caller::Key { .. }),
        "followed"
    );
}

/// Corrupts every log piece read while `on`.
struct Damaging {
    inner: Arc<dyn Bucket>,
    on: AtomicBool,
}

impl Bucket for Damaging {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn put(&self, key: &str, bytes: Vec<u8>) -> segq::Result<()> {
        self.inner.put(key, bytes)
    }
    fn get(&self, key: &str) -> segq::Result<Option<Vec<u8>>> {
        let mut got = self.inner.get(key)?;
        if self.on.load(Ordering::SeqCst) && key.ends_with(".part") {
            if let Some(b) = got.as_mut().and_then(|b| b.last_mut()) {
                *b ^= 0x55;
            }
        }
        Ok(got)
    }
    fn list(&self, prefix: &str) -> segq::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> segq::Result<()> {
        self.inner.delete(key)
    }
}

#[test]
fn a_damaged_object_leaves_the_replica_serving_what_it_had_until_the_store_checks_out() {
    let bucket = memory();
    let p = primary(&bucket);
    p.engine.create_workspace("w").unwrap();
    let h = p.engine.workspace("w").unwrap();
    writes(&h, 0);
    p.shipper.ship_once().unwrap();
    let damaging = Arc::new(Damaging {
        inner: bucket.clone(),
        on: AtomicBool::new(false),
    });
    let as_bucket: Arc<dyn Bucket> = damaging.clone();
    let r = replica(&as_bucket);
    let rw = r.engine.workspace("w").unwrap();
    let (had, gen) = (fingerprint(&rw), rw.view().1);
    writes(&h, 1);
    p.shipper.ship_once().unwrap();
    damaging.on.store(true, Ordering::SeqCst);
    let err = r.follower.poll_once().unwrap_err().to_string();
    assert!(err.contains("checksum"), "{err}");
    let served = r.engine.workspace("w").unwrap();
    assert_eq!((fingerprint(&served), served.view().1), (had, gen));
    let now = chrono::Utc::now().timestamp_millis();
    let degraded = r.follower.status().degraded(now).unwrap();
    assert!(degraded.contains("checksum"), "{degraded}");
    assert_eq!(r.follower.status().poll_errors.load(Ordering::Relaxed), 1);
    // Again while damaged: still what it had (a whole download fails too).
    assert!(r.follower.poll_once().is_err());
    assert_eq!(r.engine.workspace("w").unwrap().view().1, gen);
    damaging.on.store(false, Ordering::SeqCst);
    let polled = r.follower.poll_once().unwrap();
    assert!(
        polled.reloaded.is_empty() && polled.records > 0,
        "nothing was applied: the pieces are fetched again, not the workspace: {polled:?}"
    );
    same_answers(&h, &r.engine.workspace("w").unwrap());
    assert!(r
        .follower
        .status()
        .degraded(chrono::Utc::now().timestamp_millis())
        .is_none());
}

#[test]
fn a_replica_refuses_a_directory_that_is_not_a_replicas_and_a_store_with_no_primary() {
    let bucket = memory();
    // No primary shipped yet.
    let empty = tempfile::tempdir().unwrap();
    let err = Engine::open_replica(empty.path(), &no_env, &*bucket)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no primary has shipped"), "{err}");
    let p = primary(&bucket);
    p.engine.create_workspace("w").unwrap();
    writes(&p.engine.workspace("w").unwrap(), 0);
    p.shipper.ship_once().unwrap();
    // A primary's own data directory is never overwritten.
    let local = tempfile::tempdir().unwrap();
    {
        let (e, _) = Engine::open(local.path()).unwrap();
        e.create_workspace("mine").unwrap();
    }
    let err = Engine::open_replica(local.path(), &no_env, &*bucket)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a read replica's"), "{err}");
    assert!(local.path().join("workspaces/mine").exists());
    assert!(!local.path().join("workspaces/w").exists());
    // A replica's directory opens again (a restart), copied anew.
    let r = replica(&bucket);
    let dir = r._dir.path().to_path_buf();
    drop(r);
    let (e, m) = Engine::open_replica(&dir, &no_env, &*bucket).unwrap();
    assert_eq!(m.len(), 1);
    assert!(e.workspace("w").is_some());
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ok() {
        assert!(std::time::Instant::now() < until, "{what}: not in 30 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn served_count(base: &str, key: &str, filter: &str) -> (u64, u64, Option<String>) {
    let r = crate::support::server::client()
        .post(format!("{base}/workspaces/w/segments/count"))
        .bearer_auth(key)
        .json(&json!({ "filter": filter }))
        .send()
        .unwrap();
    let lag = r
        .headers()
        .get("x-replica-lag-ms")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = r.json().unwrap();
    (
        v["count"].as_u64().unwrap(),
        v["generation"].as_u64().unwrap(),
        lag,
    )
}

#[test]
fn segq_serve_replica_of_follows_a_served_primary_and_refuses_writes() {
    use crate::support::server::{users_body, Server};
    let store = tempfile::tempdir().unwrap();
    let url = format!("file://{}/bucket", store.path().display());
    let env = [
        ("SEGQ_SHIP_INTERVAL_MS", "100"),
        ("SEGQ_REPLICA_POLL_MS", "50"),
    ];
    let a_dir = tempfile::tempdir().unwrap();
    let a = Server::start_with_env(&a_dir.path().join("data"), &["--store", &url], &env);
    a.create_workspace("w");
    let (_, secret) = a.create_key("w", "amplitude");
    for u in ["u1", "u2", "u3", "u4"] {
        a.upsert_user("w", &json!({"external_id": u}));
    }
    a.users(
        "amplitude",
        &users_body(&secret, "c1", json!([{"user_ids": ["u1", "u2"]}])),
    )
    .expect(201);
    let key = a.workspace_key("w").unwrap();
    let filter = "amplitude_cohorts includes c1";
    let gen_a = served_count(&a.url(""), &key, filter).1;
    wait_for("the first shipment", || {
        a.metric("segq_store_manifests_total") >= 1.0
            && a.metric("segq_store_unshipped_records{workspace=\"w\"}") == 0.0
    });
    let b_dir = tempfile::tempdir().unwrap();
    let b = Server::restart_with_env(
        &b_dir.path().join("data"),
        &a.token,
        &["--replica-of", &url],
        &env,
    );
    let (n, gen, lag) = served_count(&b.url(""), &key, filter);
    assert_eq!((n, gen), (2, gen_a));
    assert!(lag.is_some(), "a replica's answers carry its lag");
    assert!(
        served_count(&a.url(""), &key, filter).2.is_none(),
        "a primary's do not"
    );
    // An import on the primary reaches the replica.
    a.users(
        "amplitude",
        &users_body(&secret, "c1", json!([{"user_ids": ["u3", "u4"]}])),
    )
    .expect(200);
    let want = served_count(&a.url(""), &key, filter);
    assert_eq!(want.0, 4);
    wait_for("the import on the replica", || {
        let got = served_count(&b.url(""), &key, filter);
        (got.0, got.1) == (want.0, want.1)
    });
    // Writes are refused, naming the primary.
    let r = b.users(
        "amplitude",
        &users_body(&secret, "c1", json!([{"user_ids": ["u1"]}])),
    );
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.text.contains("read replica"), "{}", r.text);
    let node = std::fs::read_to_string(a_dir.path().join("data/node-id")).unwrap();
    assert!(r.text.contains(node.trim()), "{}", r.text);
    let r = b.admin_post("/admin/workspaces", &json!({"name": "x"}));
    assert_eq!(r.status, 503, "{}", r.text);
    // Its lag and the seqs applied are in /metrics; it is ready.
    assert_eq!(
        b.metric("segq_replica_applied_seq{workspace=\"w\"}"),
        want.1 as f64
    );
    assert!(b.metric("segq_replica_polls_total") >= 1.0);
    assert!(b.metric("segq_replica_lag_seconds") < 30.0);
    let ready = b.get("/readyz").expect_json(200);
    assert!(ready.get("degraded").is_none(), "{ready}");
    b.stop();
    a.stop();
}

#[test]
fn a_replica_follows_sealed_logs_without_downloading_the_workspace_again() {
    let bucket = memory();
    let p = primary(&bucket);
    p.engine.create_workspace("w").unwrap();
    let h = p.engine.workspace("w").unwrap();
    writes(&h, 0);
    h.compact().unwrap();
    p.shipper.ship_once().unwrap();
    let r = replica(&bucket);
    let logs = |b: &Arc<dyn Bucket>| {
        segq::engine::store::StoreManifest::from_bytes(
            "m",
            &b.get("workspaces/w/MANIFEST").unwrap().unwrap(),
        )
        .unwrap()
        .logs
        .len()
    };
    for round in 1..=(3 * segq::engine::store::MAX_PIECES as u32) {
        writes(&h, round);
        p.shipper.ship_once().unwrap();
        // Looks every third shipment: seals land between looks too.
        if round % 3 == 0 {
            let polled = r.follower.poll_once().unwrap();
            assert!(polled.reloaded.is_empty(), "round {round}: {polled:?}");
            same_answers(&h, &r.engine.workspace("w").unwrap());
        }
    }
    assert!(logs(&bucket) >= 3, "the live log was sealed");
    assert_eq!(
        r.follower.status().reloads.load(Ordering::Relaxed),
        0,
        "never downloaded whole"
    );
}

/// A bucket whose snapshot reads wait while `held` is set (a minute at
/// most, so that a failed test ends).
/// A bucket whose reads of the keys `holds` picks wait while `held` is
/// set (a minute at most, so that a failed test ends); `waiting` says
/// one does.
struct HeldReads {
    inner: Arc<dyn Bucket>,
    holds: fn(&str) -> bool,
    held: Arc<AtomicBool>,
    waiting: Arc<AtomicBool>,
}

impl HeldReads {
    /// Over `inner`, holding the reads `holds` picks once `held` is set.
    fn over(inner: &Arc<dyn Bucket>, holds: fn(&str) -> bool, held: &Arc<AtomicBool>) -> Self {
        HeldReads {
            inner: inner.clone(),
            holds,
            held: held.clone(),
            waiting: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// A snapshot's reads.
fn snapshot_reads(key: &str) -> bool {
    key.ends_with(".segqsnap")
}

/// The reads of the thread that loads a new snapshot beside the
/// workspace served.
fn build_reads(_: &str) -> bool {
    std::thread::current().name() == Some("segq-replica-build")
}

impl Bucket for HeldReads {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn put(&self, key: &str, bytes: Vec<u8>) -> segq::Result<()> {
        self.inner.put(key, bytes)
    }
    fn get(&self, key: &str) -> segq::Result<Option<Vec<u8>>> {
        if (self.holds)(key) {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while self.held.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                self.waiting.store(true, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        self.inner.get(key)
    }
    fn list(&self, prefix: &str) -> segq::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> segq::Result<()> {
        self.inner.delete(key)
    }
}

/// A primary whose workspace `w` (returned) holds records before and
/// after a compaction, shipped.
fn compacted_primary(bucket: &Arc<dyn Bucket>) -> (Primary, Arc<WorkspaceHandle>) {
    let p = primary(bucket);
    p.engine.create_workspace("w").unwrap();
    let h = p.engine.workspace("w").unwrap();
    writes(&h, 0);
    h.compact().unwrap();
    writes(&h, 10);
    p.shipper.ship_once().unwrap();
    (p, h)
}

#[test]
fn a_snapshot_loaded_beside_catches_up_on_its_own_thread_so_the_swap_applies_little() {
    let bucket = memory();
    let (p, h) = compacted_primary(&bucket);
    let held = Arc::new(AtomicBool::new(true));
    let slow = HeldReads::over(&bucket, build_reads, &held);
    let waiting = slow.waiting.clone();
    let slow: Arc<dyn Bucket> = Arc::new(slow);
    let r = replica(&slow);
    let rw = || r.engine.workspace("w").unwrap();
    let (t, release) = crate::compaction::compaction_at_the_gate(&h, false);
    writes(&h, 1);
    p.shipper.ship_once().unwrap();
    r.follower.poll_once().unwrap();
    release.send(()).unwrap();
    t.join().unwrap().unwrap();
    writes(&h, 2);
    p.shipper.ship_once().unwrap();
    // The new snapshot downloads, loads, and its catch-up waits.
    wait_for("the new snapshot loaded beside", || {
        r.follower.poll_once().unwrap();
        waiting.load(Ordering::SeqCst)
    });
    // Meanwhile the workspace served follows the primary.
    for round in 3..6 {
        writes(&h, round);
        p.shipper.ship_once().unwrap();
        let polled = r.follower.poll_once().unwrap();
        assert!(polled.records > 0, "{polled:?}");
        same_answers(&h, &rw());
    }
    assert_eq!(r.follower.status().swaps.load(Ordering::Relaxed), 0);
    // Let go, it applies those records on its own thread: the poll that
    // swaps it in has none left to apply.
    held.store(false, Ordering::SeqCst);
    let mut swapped = None;
    wait_for("the new snapshot swapped in", || {
        let polled = r.follower.poll_once().unwrap();
        let done = r.follower.status().swaps.load(Ordering::Relaxed) == 1;
        if done {
            swapped = Some(polled);
        }
        done
    });
    let swapped = swapped.unwrap();
    assert_eq!(swapped.records, 0, "{swapped:?}");
    swapped_in_and_following(&p, &h, &r, 6);
}

#[test]
fn a_replica_follows_the_logs_through_a_compaction_while_the_new_snapshot_downloads() {
    let bucket = memory();
    let (p, h) = compacted_primary(&bucket);
    let held = Arc::new(AtomicBool::new(false));
    let slow: Arc<dyn Bucket> = Arc::new(HeldReads::over(&bucket, snapshot_reads, &held));
    let r = replica(&slow);
    let rw = || r.engine.workspace("w").unwrap();
    // The primary compacts; shipped meanwhile, the bucket names the
    // fresh log beside the sealed one before it names the new snapshot.
    let (t, release) = crate::compaction::compaction_at_the_gate(&h, false);
    writes(&h, 1);
    p.shipper.ship_once().unwrap();
    r.follower.poll_once().unwrap();
    same_answers(&h, &rw());
    release.send(()).unwrap();
    t.join().unwrap().unwrap();
    // The new snapshot cannot be read yet: the records after it are
    // applied from the fresh log all the same, poll after poll.
    held.store(true, Ordering::SeqCst);
    for round in 2..5 {
        writes(&h, round);
        p.shipper.ship_once().unwrap();
        let polled = r.follower.poll_once().unwrap();
        assert!(polled.reloaded.is_empty(), "{polled:?}");
        assert!(polled.records > 0, "{polled:?}");
        same_answers(&h, &rw());
    }
    assert_eq!(r.follower.status().reloads.load(Ordering::Relaxed), 0);
    // Once it is here, a workspace is loaded from it and the logs already
    // followed, on a thread of its own, and swapped in at the same
    // generation: the polls download the snapshot and nothing else (no
    // log again), and nothing is downloaded whole.
    let snapshot = h.manifest().unwrap().snapshot;
    let snapshot = std::fs::metadata(p.engine.dir().join("workspaces/w").join(snapshot))
        .unwrap()
        .len();
    held.store(false, Ordering::SeqCst);
    let mut fetched = 0;
    wait_for("the new snapshot swapped in", || {
        fetched += r.follower.poll_once().unwrap().bytes;
        r.follower.status().swaps.load(Ordering::Relaxed) == 1
    });
    assert_eq!(fetched, snapshot, "the snapshot only");
    swapped_in_and_following(&p, &h, &r, 5);
}

/// After a new snapshot generation was swapped in without a whole
/// download: the replica answers as `h`, holds its manifest, has nothing
/// left beside, and follows the records of `round` in the same way.
fn swapped_in_and_following(p: &Primary, h: &WorkspaceHandle, r: &Replica, round: u32) {
    let rw = || r.engine.workspace("w").unwrap();
    assert_eq!(r.follower.status().reloads.load(Ordering::Relaxed), 0);
    same_answers(h, &rw());
    assert_eq!(rw().manifest(), h.manifest());
    nothing_staged(r);
    writes(h, round);
    p.shipper.ship_once().unwrap();
    let polled = r.follower.poll_once().unwrap();
    assert!(
        polled.reloaded.is_empty() && polled.records > 0,
        "{polled:?}"
    );
    same_answers(h, &rw());
}

/// No snapshot or workspace is left beside the one served (the one
/// swapped out is removed on a thread of its own).
fn nothing_staged(r: &Replica) {
    let left = |dir: &str| -> Vec<_> {
        std::fs::read_dir(r.engine.dir().join(dir))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
    };
    for dir in ["replica-prefetch", "replica-staging"] {
        assert!(left(dir).is_empty(), "{dir}: {:?}", left(dir));
    }
    wait_for("the workspace swapped out removed", || {
        left("replica-retired").is_empty()
    });
}

#[test]
fn a_replica_swaps_in_the_newest_snapshot_when_the_primary_compacts_twice_during_a_download() {
    let bucket = memory();
    let (p, h) = compacted_primary(&bucket);
    let held = Arc::new(AtomicBool::new(true));
    let slow: Arc<dyn Bucket> = Arc::new(HeldReads::over(&bucket, snapshot_reads, &held));
    // The first copy reads the snapshot whole: let through.
    held.store(false, Ordering::SeqCst);
    let r = replica(&slow);
    held.store(true, Ordering::SeqCst);
    let rw = || r.engine.workspace("w").unwrap();
    // Two compactions, each shipped while it runs and once it is done;
    // the first new snapshot's download is held throughout.
    for round in [1, 3] {
        let (t, release) = crate::compaction::compaction_at_the_gate(&h, false);
        writes(&h, round);
        p.shipper.ship_once().unwrap();
        r.follower.poll_once().unwrap();
        same_answers(&h, &rw());
        release.send(()).unwrap();
        t.join().unwrap().unwrap();
        writes(&h, round + 1);
        p.shipper.ship_once().unwrap();
        let polled = r.follower.poll_once().unwrap();
        assert!(
            polled.reloaded.is_empty() && polled.records > 0,
            "{polled:?}"
        );
        same_answers(&h, &rw());
    }
    // Released: the first download ends, is dropped for the newer
    // snapshot, which is downloaded, loaded and swapped in.
    held.store(false, Ordering::SeqCst);
    wait_for("the newest snapshot swapped in", || {
        r.follower.poll_once().unwrap();
        same_answers(&h, &rw());
        r.follower.status().swaps.load(Ordering::Relaxed) == 1
    });
    swapped_in_and_following(&p, &h, &r, 6);
}
