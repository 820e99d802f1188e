//! `durability = "object-store"`: a change is acknowledged only once a
//! manifest naming its log record is published in the object store, so a
//! node lost right after an acknowledgment restores with it; writes wake
//! the shipper (they do not wait for the interval); a store that refuses
//! puts fails the write with `NotShipped` (503 over HTTP, the change kept
//! and shipped later); a lost lease answers a waiting write at once; a
//! server with this durability and no `--store` does not start; writes
//! during a compaction and its snapshot's upload are acknowledged from
//! manifests naming the previous snapshot and the logs since it, and
//! garbage collection spares the snapshot uploaded but not yet named.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use segq::engine::store::{Bucket, Shipper, StoreManifest};
use segq::engine::{Engine, WorkspaceHandle};
use segq::users::NewUser;
use segq::Error;
use serde_json::json;

use crate::store::{count, file_bucket, memory, writes, BeforePut};
use crate::support::fingerprint;

/// Configuration from the environment: `durability`, an hour between
/// interval shipments (so that only a write's wake ships in a test), and
/// the ack timeout.
fn env(durability: &'static str, ack_ms: &'static str) -> impl Fn(&str) -> Option<String> {
    move |name: &str| match name {
        "SEGQ_DURABILITY" => Some(durability.into()),
        "SEGQ_SHIP_INTERVAL_MS" => Some("3600000".into()),
        "SEGQ_STORE_LEASE_SECS" => Some("7200".into()),
        "SEGQ_STORE_ACK_TIMEOUT_MS" => Some(ack_ms.into()),
        _ => None,
    }
}

fn open(dir: &Path, var: &dyn Fn(&str) -> Option<String>) -> Arc<Engine> {
    Engine::open_with_store(dir, var, None).unwrap().0
}

/// The last seq the bucket's manifest of `w` names (0: none published).
fn in_bucket(bucket: &dyn Bucket) -> u64 {
    bucket
        .get("workspaces/w/MANIFEST")
        .unwrap()
        .map_or(0, |b| StoreManifest::from_bytes("m", &b).unwrap().end_seq)
}

fn user(i: u32) -> NewUser {
    NewUser {
        external_id: Some(format!("x{i}")),
        devices: vec![],
        aliases: vec![],
        bucket: None,
    }
}

/// A workspace restored on an empty node from `bucket`.
fn restored(bucket: &dyn Bucket) -> (tempfile::TempDir, Arc<WorkspaceHandle>) {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open_with_store(dir.path(), &crate::store::no_env, Some(bucket))
        .unwrap()
        .0;
    let h = e.workspace("w").unwrap();
    (dir, h)
}

#[test]
fn a_change_is_acknowledged_only_once_a_published_manifest_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = file_bucket(tmp.path());
    let e = open(&tmp.path().join("data"), &env("object-store", "60000"));
    e.create_workspace("w").unwrap();
    let h = e.workspace("w").unwrap();
    let thread = Shipper::new(e.clone(), bucket.clone()).start();
    for r in 0..4 {
        writes(&h, r);
        // Acknowledged: in the bucket already, though the interval
        // shipment is an hour away.
        assert!(in_bucket(&*bucket) >= h.log_stats().records, "round {r}");
    }
    let st = e.store_status().unwrap();
    assert!(st.ack_waits.load(Ordering::SeqCst) >= 12);
    assert_eq!(st.ack_timeouts.load(Ordering::SeqCst), 0);
    let mut text = String::new();
    segq::server::metrics::render_store(&e, &mut text);
    assert!(text.contains("segq_store_ack_waits_total"), "{text}");
    // The machine is lost (no last shipment): an empty node restores
    // every acknowledged change.
    std::mem::forget(thread);
    let (_d, r) = restored(&*bucket);
    assert_eq!(fingerprint(&*r), fingerprint(&*h));
}

#[test]
fn with_local_durability_the_same_changes_are_acknowledged_before_they_are_shipped() {
    // The control: the same writes, acknowledged once fsynced here; the
    // bucket has nothing until the interval shipment.
    let tmp = tempfile::tempdir().unwrap();
    let bucket = memory();
    let e = open(&tmp.path().join("data"), &env("local", "60000"));
    e.create_workspace("w").unwrap();
    let h = e.workspace("w").unwrap();
    let thread = Shipper::new(e.clone(), bucket.clone()).start();
    writes(&h, 0);
    assert!(in_bucket(&*bucket) < h.log_stats().records);
    assert_eq!(
        e.store_status().unwrap().ack_waits.load(Ordering::SeqCst),
        0
    );
    // The last shipment at stop ships them.
    thread.stop().unwrap();
    assert!(in_bucket(&*bucket) >= h.log_stats().records);
}

/// A bucket that refuses every put while the flag it returns is set.
fn flaky(inner: Arc<dyn Bucket>, down: bool) -> (Arc<dyn Bucket>, Arc<AtomicBool>) {
    let flag = Arc::new(AtomicBool::new(down));
    let down = flag.clone();
    let bucket = BeforePut {
        inner,
        before: Box::new(move |key| {
            if down.load(Ordering::SeqCst) {
                return Err(Error::Store {
                    location: key.into(),
                    reason: "the store is down".into(),
                });
            }
            Ok(())
        }),
    };
    (Arc::new(bucket), flag)
}

#[test]
fn a_store_refusing_puts_fails_the_write_after_the_timeout_and_ships_it_later() {
    let tmp = tempfile::tempdir().unwrap();
    let inner = memory();
    let (flaky, down) = flaky(inner.clone(), false);
    let e = open(&tmp.path().join("data"), &env("object-store", "300"));
    e.create_workspace("w").unwrap();
    let h = e.workspace("w").unwrap();
    let thread = Shipper::new(e.clone(), flaky.clone()).start();
    h.upsert_users(vec![user(0)]).unwrap();
    down.store(true, Ordering::SeqCst);
    let err = h.upsert_users(vec![user(1)]).unwrap_err();
    match &err {
        Error::NotShipped {
            name, waited_ms, ..
        } => {
            assert_eq!(name, "w");
            assert_eq!(*waited_ms, 300);
        }
        other => panic!("expected NotShipped, got {other}"),
    }
    assert!(err.to_string().contains("retrying is safe"), "{err}");
    // Applied and durable here all the same; not in the bucket.
    assert_eq!(count(&h, "all"), 2, "the change stays applied");
    assert_eq!(count(&restored(&*inner).1, "all"), 1);
    let st = e.store_status().unwrap();
    assert_eq!(st.ack_timeouts.load(Ordering::SeqCst), 1);
    // The store comes back: a retry (as a client would) is acknowledged
    // once shipped, and the bucket holds both changes.
    down.store(false, Ordering::SeqCst);
    let mut tries = 0;
    while let Err(e) = h.upsert_users(vec![user(1)]) {
        assert!(matches!(e, Error::NotShipped { .. }), "{e}");
        tries += 1;
        assert!(tries < 100, "never shipped again");
    }
    assert_eq!(count(&restored(&*inner).1, "all"), 2);
    thread.stop().unwrap();
}

#[test]
fn a_write_waiting_for_its_shipment_is_refused_at_once_when_the_lease_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let (flaky, _down) = flaky(memory(), true);
    // An hour's timeout: only the lost lease can end the wait.
    let e = open(&tmp.path().join("data"), &env("object-store", "3600000"));
    e.create_workspace("w").unwrap();
    let h = e.workspace("w").unwrap();
    let thread = Shipper::new(e.clone(), flaky).start();
    let fence = e.fence().clone();
    let waiting = std::thread::spawn(move || h.upsert_users(vec![user(0)]));
    std::thread::sleep(Duration::from_millis(200));
    fence.lose("node-b took the store's lease".into());
    match waiting.join().unwrap() {
        Err(Error::NotPrimary { reason }) => assert!(reason.contains("node-b"), "{reason}"),
        other => panic!("expected NotPrimary, got {other:?}"),
    }
    std::mem::forget(thread);
}

#[test]
fn segq_serve_acknowledges_a_partner_import_once_shipped_and_needs_a_store_for_it() {
    use crate::support::server::{segq_env, users_body, Server};
    let store = tempfile::tempdir().unwrap();
    let url = format!("file://{}/bucket", store.path().display());
    let bucket = file_bucket(store.path());
    let env = [
        ("SEGQ_DURABILITY", "object-store"),
        ("SEGQ_SHIP_INTERVAL_MS", "3600000"),
        ("SEGQ_STORE_LEASE_SECS", "7200"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start_with_env(&dir.path().join("data"), &["--store", &url], &env);
    a.create_workspace("w");
    let (_, key) = a.create_key("w", "amplitude");
    for u in ["u1", "u2", "u3"] {
        a.upsert_user("w", &json!({"external_id": u}));
    }
    a.users(
        "amplitude",
        &users_body(&key, "c1", json!([{"user_ids": ["u1", "u2", "u3"]}])),
    )
    .expect(201);
    // Answered: the bucket restores it, with no shipment but the wakes.
    let (_d, r) = restored(&*bucket);
    assert_eq!(count(&r, "amplitude_cohorts includes c1"), 3);
    assert!(a.metric("segq_store_ack_waits_total") >= 5.0);
    a.stop();
    // Without --store, this durability cannot be kept: no start.
    let other = dir.path().join("other");
    let out = segq_env(
        &["serve", "--data", &other.display().to_string()],
        &[("SEGQ_DURABILITY", "object-store")],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs --store"), "{stderr}");
}

/// A bucket whose snapshot puts wait while the flag it returns is set
/// (a minute at most, so that a failed test ends).
fn snapshots_held(inner: Arc<dyn Bucket>) -> (Arc<dyn Bucket>, Arc<AtomicBool>) {
    let flag = Arc::new(AtomicBool::new(false));
    let held = flag.clone();
    let bucket = BeforePut {
        inner,
        before: Box::new(move |key| {
            crate::store::wait_while_held(key, &held);
            Ok(())
        }),
    };
    (Arc::new(bucket), flag)
}

fn manifest_of(bucket: &dyn Bucket) -> StoreManifest {
    StoreManifest::from_bytes("m", &bucket.get("workspaces/w/MANIFEST").unwrap().unwrap()).unwrap()
}

#[test]
fn writes_during_a_compaction_and_its_snapshot_upload_are_acknowledged_from_the_logs() {
    // A 5 s timeout; the compaction's snapshot write, then its upload,
    // are held far longer. Writes meanwhile ride manifests that name the
    // previous snapshot and every log since it.
    let tmp = tempfile::tempdir().unwrap();
    let inner = memory();
    let (bucket, held) = snapshots_held(inner.clone());
    let e = open(&tmp.path().join("data"), &env("object-store", "5000"));
    e.create_workspace("w").unwrap();
    let h = e.workspace("w").unwrap();
    let thread = Shipper::new(e.clone(), bucket.clone()).start();
    writes(&h, 0);
    h.compact().unwrap();
    writes(&h, 1);
    let first = manifest_of(&*inner);
    let previous = first
        .snapshot
        .clone()
        .expect("the first snapshot is in the bucket");
    held.store(true, Ordering::SeqCst);
    // 1. While the compaction writes its snapshot (the shipper reads the
    //    previous snapshot, the sealed log and the fresh one).
    let (compaction, release) = crate::compaction::compaction_at_the_gate(&h, false);
    writes(&h, 2);
    let during = manifest_of(&*inner);
    assert_eq!(during.snapshot.as_ref(), Some(&previous));
    assert_eq!(during.logs.len(), 2, "the sealed log and the fresh one");
    assert!(during.end_seq >= h.log_stats().records);
    release.send(()).unwrap();
    compaction.join().unwrap().unwrap();
    // 2. While its snapshot uploads: the new local snapshot is not in the
    //    bucket, the records after it are.
    for r in 3..6 {
        writes(&h, r);
    }
    let m = manifest_of(&*inner);
    assert_eq!(m.snapshot.as_ref(), Some(&previous));
    assert_eq!(m.manifest, first.manifest, "the previous local manifest");
    assert_eq!(m.logs.len(), 2);
    assert_eq!(m.logs[0], during.logs[0], "the sealed log, whole");
    let st = e.store_status().unwrap();
    assert_eq!(st.ack_timeouts.load(Ordering::SeqCst), 0);
    // The machine is lost now: an empty node restores every change.
    let (_d, r) = restored(&*inner);
    assert_eq!(fingerprint(&*r), fingerprint(&*h));
    // 3. The upload ends: the next manifest names the new snapshot and
    //    only the log after it.
    held.store(false, Ordering::SeqCst);
    let local = h.manifest().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let last = loop {
        let m = manifest_of(&*inner);
        if m.manifest.as_ref() == Some(&local) {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never published: {:?}",
            e.store_status().unwrap().last_error()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_ne!(last.snapshot.as_ref(), Some(&previous));
    assert_eq!(last.logs.len(), 1);
    assert_eq!(last.logs[0].name, local.log);
    thread.stop().unwrap();
    let (_d, r) = restored(&*inner);
    assert_eq!(fingerprint(&*r), fingerprint(&*h));
}

/// A bucket whose snapshot puts, once done, wait while the flag it
/// returns is set (a minute at most): the object is in the bucket, no
/// manifest names it yet.
struct HeldAfterPut {
    inner: Arc<dyn Bucket>,
    held: Arc<AtomicBool>,
}

impl Bucket for HeldAfterPut {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn put(&self, key: &str, bytes: Vec<u8>) -> segq::Result<()> {
        self.inner.put(key, bytes)?;
        crate::store::wait_while_held(key, &self.held);
        Ok(())
    }
    fn get(&self, key: &str) -> segq::Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn list(&self, prefix: &str) -> segq::Result<Vec<segq::engine::store::ObjectInfo>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> segq::Result<()> {
        self.inner.delete(key)
    }
}

#[test]
fn garbage_collection_spares_the_snapshot_whose_upload_is_not_published_yet() {
    let tmp = tempfile::tempdir().unwrap();
    let inner = memory();
    let held = Arc::new(AtomicBool::new(false));
    let bucket: Arc<dyn Bucket> = Arc::new(HeldAfterPut {
        inner: inner.clone(),
        held: held.clone(),
    });
    let e = open(&tmp.path().join("data"), &env("local", "60000"));
    e.create_workspace("w").unwrap();
    let h = e.workspace("w").unwrap();
    let shipper = Shipper::new(e.clone(), bucket.clone());
    let thread = shipper.start();
    writes(&h, 0);
    h.compact().unwrap();
    held.store(true, Ordering::SeqCst);
    thread.ship_now();
    let snapshots = || {
        inner
            .list("workspaces/w/")
            .unwrap()
            .into_iter()
            .filter(|o| o.key.ends_with(".segqsnap"))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while snapshots() == 0 {
        assert!(std::time::Instant::now() < deadline, "never uploaded");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Put, not yet named by a manifest: a collection long past the
    // retention period leaves it alone.
    let later = chrono::Utc::now() + chrono::Duration::days(1);
    shipper.collect_garbage(later).unwrap();
    assert_eq!(snapshots(), 1);
    held.store(false, Ordering::SeqCst);
    thread.stop().unwrap();
    assert!(manifest_of(&*inner).snapshot.is_some());
    let (_d, r) = restored(&*inner);
    assert_eq!(fingerprint(&*r), fingerprint(&*h));
}
