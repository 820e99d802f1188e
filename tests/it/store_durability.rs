//! `durability = "object-store"`: a change is acknowledged only once a
//! manifest naming its log record is published in the object store, so a
//! node lost right after an acknowledgment restores with it; writes wake
//! the shipper (they do not wait for the interval); a store that refuses
//! puts fails the write with `NotShipped` (503 over HTTP, the change kept
//! and shipped later); a lost lease answers a waiting write at once; a
//! server with this durability and no `--store` does not start.

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
