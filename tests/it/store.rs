//! The object-store tier: a data directory shipped to a bucket
//! (`object_store`'s in-memory and local-filesystem backends) restores on
//! an empty node with the same answers and keys; a crash between any two
//! uploads leaves a bucket that restores to an acknowledged state; a node
//! behind the bucket catches up; garbage collection keeps what the
//! manifest names; damaged buckets are refused with nothing changed.
//! Only one writer: a second primary is refused naming the lease's holder,
//! a lapsed lease is taken over with the next epoch, the old primary then
//! refuses writes (in process and as a served node), and uploads carry the
//! epoch; the same against a real S3-compatible server (`moto_server`,
//! started by the tests; skipped without it unless `SEGQ_REQUIRE_S3=1`).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use segq::engine::store::{
    Bucket, Lease, LeaseRecord, ObjectBucket, ObjectInfo, ServerState, Shipper, StoreManifest,
    MAX_PIECES,
};
use segq::engine::{Engine, WorkspaceHandle};
use segq::import::{parse_users_request, Credentials};
use segq::users::NewUser;
use segq::{Error, Partner};
use serde_json::json;

use crate::support::fingerprint;
use crate::support::state::State;

/// Fails every put from the `fail_from`-th on (0-based), like a process
/// that died there; counts the puts tried.
struct FailAfter {
    inner: Arc<dyn Bucket>,
    fail_from: usize,
    puts: AtomicUsize,
}

impl Bucket for FailAfter {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn put(&self, key: &str, bytes: Vec<u8>) -> segq::Result<()> {
        let n = self.puts.fetch_add(1, Ordering::SeqCst);
        if n >= self.fail_from {
            return Err(Error::Store {
                location: key.into(),
                reason: format!("crash at put {n}"),
            });
        }
        self.inner.put(key, bytes)
    }
    fn get(&self, key: &str) -> segq::Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn list(&self, prefix: &str) -> segq::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> segq::Result<()> {
        self.inner.delete(key)
    }
}

pub(crate) fn memory() -> Arc<dyn Bucket> {
    Arc::new(ObjectBucket::in_memory().unwrap())
}

/// A bucket in a folder of `dir`, through a `file://` URL.
pub(crate) fn file_bucket(dir: &Path) -> Arc<dyn Bucket> {
    let url = format!("file://{}/bucket", dir.display());
    Arc::new(ObjectBucket::from_url(&url).unwrap())
}

pub(crate) fn no_env(_: &str) -> Option<String> {
    None
}

fn open(dir: &Path, bucket: Option<&dyn Bucket>) -> segq::Result<Arc<Engine>> {
    Engine::open_with_store(dir, &no_env, bucket).map(|(e, _, _)| e)
}

/// Acknowledged writes, round `r`: users, a partner import, a saved
/// segment.
pub(crate) fn writes(h: &WorkspaceHandle, r: u32) {
    let base = r * 50;
    let users: Vec<NewUser> = (base..base + 50)
        .map(|i| NewUser {
            external_id: Some(format!("u{i}")),
            devices: vec![format!("d{i}")],
            aliases: vec![],
            bucket: None,
        })
        .collect();
    h.upsert_users(users).unwrap();
    let ids: Vec<String> = (base..base + 50)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("u{i}"))
        .collect();
    let body = json!({"partner_api_key": "k", "client_secret": "s", "cohort_id": format!("c{}", r % 2),
        "cohort_changes": [{"user_ids": ids}]});
    let req = parse_users_request(body.to_string().as_bytes()).unwrap();
    let t = Utc.with_ymd_and_hms(2026, 1, 1 + r % 20, 0, 0, 0).unwrap();
    h.import_users(Partner::Amplitude, &req, t).unwrap();
    h.save_segment(
        None,
        &format!("s{r}"),
        &segq::segment::parse("amplitude_cohorts includes c0").unwrap(),
    )
    .unwrap();
}

pub(crate) fn count(h: &WorkspaceHandle, filter: &str) -> u64 {
    let f = segq::segment::parse(filter).unwrap();
    let (ws, _) = h.view();
    segq::query::count(&ws, h.bitmaps(), &f, false)
        .unwrap()
        .count
}

/// A workspace restored in `dir` from `bucket`, if the bucket holds one.
fn restored(bucket: &dyn Bucket) -> (tempfile::TempDir, Arc<Engine>) {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), Some(bucket)).unwrap();
    (dir, e)
}

#[test]
fn an_empty_node_restores_the_server_and_its_workspaces_and_answers_the_same() {
    let bucket = memory();
    let a_dir = tempfile::tempdir().unwrap();
    let (a, token, _) = Engine::open_with_store(a_dir.path(), &no_env, None).unwrap();
    let token = token.unwrap();
    a.create_workspace("w").unwrap();
    let key = a.create_key("w", Partner::Amplitude).unwrap();
    let h = a.workspace("w").unwrap();
    writes(&h, 0);
    h.compact().unwrap();
    writes(&h, 1);
    let shipper = Shipper::new(a.clone(), bucket.clone());
    let done = shipper.ship_once().unwrap();
    assert!(done.uploads >= 4, "{done:?}");
    assert_eq!(done.manifests, 1);
    // Nothing new: nothing uploaded.
    assert_eq!(shipper.ship_once().unwrap().uploads, 0);
    let want = fingerprint(&h);
    let want_count = count(
        &h,
        "amplitude_cohorts includes c0 or amplitude_cohorts includes c1",
    );
    let pk = a.config().partner_api_keys[&Partner::Amplitude].clone();

    let b_dir = tempfile::tempdir().unwrap();
    let (b, new_token, report) =
        Engine::open_with_store(b_dir.path(), &no_env, Some(&*bucket)).unwrap();
    assert!(new_token.is_none(), "the admin token comes from the bucket");
    assert!(report.server);
    assert_eq!(report.workspaces.len(), 1);
    let hb = b.workspace("w").unwrap();
    assert_eq!(fingerprint(&hb), want);
    assert_eq!(
        count(
            &hb,
            "amplitude_cohorts includes c0 or amplitude_cohorts includes c1"
        ),
        want_count
    );
    assert!(want_count > 0);
    assert!(b.check_admin_token(&token));
    assert_eq!(b.config().partner_api_keys, a.config().partner_api_keys);
    let creds = Credentials {
        partner_api_key: pk,
        client_secret: key.key.clone(),
    };
    let (hw, _) = b
        .authorize(Partner::Amplitude, &creds)
        .expect("the key is accepted");
    assert_eq!(hw.name(), "w");
    // The restored node takes writes and ships on from where it is.
    writes(&hb, 2);
    let shipper_b = Shipper::new(b.clone(), bucket.clone());
    shipper_b.ship_once().unwrap();
    let (_c_dir, c) = restored(&*bucket);
    assert_eq!(fingerprint(&c.workspace("w").unwrap()), fingerprint(&hb));
}

#[test]
fn the_local_filesystem_backend_from_a_file_url_restores_too() {
    let store_dir = tempfile::tempdir().unwrap();
    let bucket = file_bucket(store_dir.path());
    let a_dir = tempfile::tempdir().unwrap();
    let a = open(a_dir.path(), Some(&*bucket)).unwrap();
    a.create_workspace("w").unwrap();
    let h = a.workspace("w").unwrap();
    writes(&h, 0);
    let shipper = Shipper::new(a.clone(), bucket.clone());
    shipper.ship_once().unwrap();
    assert!(store_dir
        .path()
        .join("bucket/workspaces/w/MANIFEST")
        .is_file());
    // Reopened from the URL: a new client on the same folder.
    let again = file_bucket(store_dir.path());
    let (_d, b) = restored(&*again);
    assert_eq!(fingerprint(&b.workspace("w").unwrap()), fingerprint(&h));
    assert!(ObjectBucket::from_url("ftp://x/y").is_err());
}

/// The scenario of the crash test: writes, shipments and compactions,
/// recording each acknowledged state. Shipments fail once the bucket
/// does (and the test goes on, as the node would).
fn scenario(dir: &Path, bucket: Arc<dyn Bucket>) -> Vec<State> {
    let e = open(dir, None).unwrap();
    let shipper = Shipper::new(e.clone(), bucket);
    let mut acked = Vec::new();
    e.create_workspace("w").unwrap();
    let h = e.workspace("w").unwrap();
    acked.push(fingerprint(&h));
    let _ = shipper.ship_once();
    for r in 0..4 {
        writes(&h, r);
        acked.push(fingerprint(&h));
        let _ = shipper.ship_once();
        if r % 2 == 1 {
            h.compact().unwrap();
            let _ = shipper.ship_once();
        }
    }
    acked
}

#[test]
fn a_crash_between_any_two_uploads_leaves_a_bucket_that_restores_to_an_acknowledged_state() {
    let full = tempfile::tempdir().unwrap();
    let counting = Arc::new(FailAfter {
        inner: memory(),
        fail_from: usize::MAX,
        puts: AtomicUsize::new(0),
    });
    let acked = scenario(full.path(), counting.clone());
    let total = counting.puts.load(Ordering::SeqCst);
    assert!(total >= 12, "{total} puts");
    let (_d, e) = restored(&*counting.inner);
    assert_eq!(
        fingerprint(&e.workspace("w").unwrap()),
        *acked.last().unwrap()
    );
    let mut seen = std::collections::BTreeSet::new();
    for k in 0..total {
        let inner = memory();
        let dir = tempfile::tempdir().unwrap();
        let failing = Arc::new(FailAfter {
            inner: inner.clone(),
            fail_from: k,
            puts: AtomicUsize::new(0),
        });
        let acked = scenario(dir.path(), failing);
        let (_d, e) = restored(&*inner);
        match e.workspace("w") {
            None => {
                seen.insert(usize::MAX);
            }
            Some(h) => {
                let got = fingerprint(&h);
                let at = acked
                    .iter()
                    .position(|s| *s == got)
                    .unwrap_or_else(|| panic!("crash at put {k}: not an acknowledged state"));
                seen.insert(at);
            }
        }
    }
    // The crashes stopped the bucket at several different states.
    assert!(seen.len() >= 4, "{seen:?}");
}

#[test]
fn a_node_behind_the_bucket_catches_up_and_one_up_to_date_is_left_alone() {
    let bucket = memory();
    let a_dir = tempfile::tempdir().unwrap();
    let a = open(a_dir.path(), None).unwrap();
    a.create_workspace("w").unwrap();
    let h = a.workspace("w").unwrap();
    writes(&h, 0);
    let shipper = Shipper::new(a.clone(), bucket.clone());
    shipper.ship_once().unwrap();
    // Node B starts from the bucket, then stops.
    let b_dir = tempfile::tempdir().unwrap();
    let b = open(b_dir.path(), Some(&*bucket)).unwrap();
    let at_first = fingerprint(&b.workspace("w").unwrap());
    drop(b);
    // A goes on: a compaction and more writes, shipped.
    writes(&h, 1);
    h.compact().unwrap();
    writes(&h, 2);
    shipper.ship_once().unwrap();
    for _ in 0..3 {
        // More pieces of the live log.
        writes(&h, 3);
        shipper.ship_once().unwrap();
    }
    let want = fingerprint(&h);
    assert_ne!(want, at_first);
    // B, behind, catches up.
    let (b, _, r) = Engine::open_with_store(b_dir.path(), &no_env, Some(&*bucket)).unwrap();
    assert_eq!(r.workspaces.len(), 1, "{r:?}");
    assert!(!r.server, "B's own segq.json stays");
    assert_eq!(fingerprint(&b.workspace("w").unwrap()), want);
    drop(b);
    // Up to date: nothing restored, nothing changed.
    let (b, _, r) = Engine::open_with_store(b_dir.path(), &no_env, Some(&*bucket)).unwrap();
    assert!(r.workspaces.is_empty(), "{r:?}");
    assert_eq!(fingerprint(&b.workspace("w").unwrap()), want);
    drop(b);
    // Ahead of the bucket (a write not shipped): left alone too.
    let b = open(b_dir.path(), None).unwrap();
    writes(&b.workspace("w").unwrap(), 4);
    let ahead = fingerprint(&b.workspace("w").unwrap());
    drop(b);
    let (b, _, r) = Engine::open_with_store(b_dir.path(), &no_env, Some(&*bucket)).unwrap();
    assert!(r.workspaces.is_empty(), "{r:?}");
    assert_eq!(fingerprint(&b.workspace("w").unwrap()), ahead);
}

fn keys(bucket: &dyn Bucket) -> Vec<String> {
    let mut k: Vec<String> = bucket
        .list("workspaces")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    k.sort();
    k
}

fn manifest(bucket: &dyn Bucket) -> StoreManifest {
    let key = "workspaces/w/MANIFEST";
    StoreManifest::from_bytes(key, &bucket.get(key).unwrap().unwrap()).unwrap()
}

#[test]
fn garbage_collection_deletes_only_what_no_manifest_names_after_the_retention() {
    let bucket = memory();
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), None).unwrap();
    e.create_workspace("w").unwrap();
    let h = e.workspace("w").unwrap();
    let shipper = Shipper::new(e.clone(), bucket.clone());
    writes(&h, 0);
    shipper.ship_once().unwrap();
    h.compact().unwrap();
    shipper.ship_once().unwrap();
    let first_snapshot = manifest(&*bucket).snapshot.unwrap().key;
    // Enough shipments of the live log that its pieces are merged.
    for r in 1..(MAX_PIECES as u32 + 3) {
        h.upsert_users(vec![NewUser {
            external_id: Some(format!("x{r}")),
            devices: vec![],
            aliases: vec![],
            bucket: None,
        }])
        .unwrap();
        shipper.ship_once().unwrap();
    }
    h.compact().unwrap();
    writes(&h, 1);
    shipper.ship_once().unwrap();
    let m = manifest(&*bucket);
    assert!(m.logs.iter().all(|l| l.pieces.len() <= MAX_PIECES));
    let before = keys(&*bucket);
    assert!(before.contains(&first_snapshot));
    // Within the retention period: nothing is deleted.
    assert_eq!(shipper.collect_garbage(Utc::now()).unwrap(), 0);
    assert_eq!(keys(&*bucket), before);
    // After it: everything the manifest does not name.
    let later = Utc::now() + chrono::Duration::hours(2);
    let deleted = shipper.collect_garbage(later).unwrap();
    assert!(deleted > MAX_PIECES as u64, "{deleted} deleted");
    let after = keys(&*bucket);
    assert!(!after.contains(&first_snapshot));
    let mut named: Vec<String> = m
        .snapshot
        .iter()
        .map(|o| o.key.clone())
        .chain(
            m.logs
                .iter()
                .flat_map(|l| l.pieces.iter().map(|p| p.object.key.clone())),
        )
        .chain(["workspaces/w/MANIFEST".to_string()])
        .collect();
    named.sort();
    assert_eq!(after, named);
    let (_d, r) = restored(&*bucket);
    assert_eq!(fingerprint(&r.workspace("w").unwrap()), fingerprint(&h));
}

/// A bucket holding one shipped workspace.
fn shipped() -> (Arc<dyn Bucket>, State) {
    let bucket = memory();
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), None).unwrap();
    e.create_workspace("w").unwrap();
    let h = e.workspace("w").unwrap();
    writes(&h, 0);
    h.compact().unwrap();
    writes(&h, 1);
    Shipper::new(e.clone(), bucket.clone()).ship_once().unwrap();
    (bucket, fingerprint(&h))
}

fn refused(bucket: &dyn Bucket, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let err = open(&data, Some(bucket)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(what), "{what}: {text}");
    assert!(!data.join("segq.json").exists(), "{what}: nothing restored");
    assert!(!data.join("admin-token.sha256").exists());
    assert!(!data.join("workspaces/w").exists());
    assert!(!data.join("store-restore").exists());
}

#[test]
fn a_damaged_or_inconsistent_bucket_is_refused_with_nothing_changed() {
    let (bucket, want) = shipped();
    let m = manifest(&*bucket);
    let snap = m.snapshot.clone().unwrap();
    let piece = m.logs.last().unwrap().pieces.last().unwrap().object.clone();

    // A snapshot with a flipped byte.
    let good = bucket.get(&snap.key).unwrap().unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 1;
    bucket.put(&snap.key, bad).unwrap();
    refused(&*bucket, "checksum mismatch");
    bucket.put(&snap.key, good).unwrap();

    // A log piece missing, then cut short.
    let good = bucket.get(&piece.key).unwrap().unwrap();
    bucket.delete(&piece.key).unwrap();
    refused(&*bucket, "missing");
    bucket
        .put(&piece.key, good[..good.len() - 1].to_vec())
        .unwrap();
    refused(&*bucket, "bytes, the manifest says");
    bucket.put(&piece.key, good).unwrap();

    // The manifest altered by hand (its checksum no longer holds).
    let key = "workspaces/w/MANIFEST";
    let good = bucket.get(key).unwrap().unwrap();
    let text = String::from_utf8(good.clone()).unwrap();
    let edited = text.replacen(
        &format!("\"end_seq\": {}", m.end_seq),
        &format!("\"end_seq\": {}", m.end_seq + 1),
        1,
    );
    assert_ne!(edited, text);
    bucket.put(key, edited.into_bytes()).unwrap();
    refused(&*bucket, "checksum mismatch");

    // Consistent checksums, inconsistent contents: the manifest says the
    // logs hold a record they do not.
    let mut longer = m.clone();
    longer.end_seq += 1;
    bucket.put(key, longer.to_bytes().unwrap()).unwrap();
    refused(&*bucket, "the logs end at seq");

    // A newer format version.
    let newer = text.replacen("\"version\": 1", "\"version\": 2", 1);
    bucket.put(key, newer.into_bytes()).unwrap();
    refused(&*bucket, "version 2 is not supported");
    bucket.put(key, good).unwrap();

    // A damaged server state.
    let state = bucket.get("server/STATE").unwrap().unwrap();
    let mut bad = state.clone();
    let at = bad.len() / 2;
    bad[at] = b'#';
    bucket.put("server/STATE", bad).unwrap();
    refused(&*bucket, "server/STATE");
    bucket.put("server/STATE", state).unwrap();

    // Put right, it restores.
    let (_d, e) = restored(&*bucket);
    assert_eq!(fingerprint(&e.workspace("w").unwrap()), want);
}

#[test]
fn failed_shipments_are_counted_and_named_as_degraded_and_later_ones_catch_up() {
    let inner = memory();
    let failing = Arc::new(FailAfter {
        inner: inner.clone(),
        fail_from: 0,
        puts: AtomicUsize::new(0),
    });
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), None).unwrap();
    e.create_workspace("w").unwrap();
    writes(&e.workspace("w").unwrap(), 0);
    let shipper = Shipper::new(e.clone(), failing.clone());
    assert!(shipper.ship_once().is_err());
    let st = e.store_status().unwrap();
    assert_eq!(st.failures.load(Ordering::SeqCst), 1);
    let why = st.degraded(Utc::now().timestamp_millis()).unwrap();
    assert!(why.contains("crash at put 0"), "{why}");
    let mut text = String::new();
    segq::server::metrics::render_store(&e, &mut text);
    assert!(
        text.contains("segq_store_upload_failures_total 1"),
        "{text}"
    );
    assert!(text.contains("segq_store_degraded 1"), "{text}");
    // The bucket comes back: the next shipment ships everything.
    let healthy = Shipper::new(e.clone(), inner.clone());
    healthy.ship_once().unwrap();
    let mut text = String::new();
    segq::server::metrics::render_store(&e, &mut text);
    assert!(text.contains("segq_store_uploads_total"), "{text}");
    let (_d, r) = restored(&*inner);
    assert_eq!(
        fingerprint(&r.workspace("w").unwrap()),
        fingerprint(&e.workspace("w").unwrap())
    );
}

#[test]
fn the_background_thread_ships_within_the_interval_and_at_stop() {
    let bucket = memory();
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), None).unwrap();
    e.create_workspace("w").unwrap();
    let h = e.workspace("w").unwrap();
    let thread = Shipper::new(e.clone(), bucket.clone()).start();
    writes(&h, 0);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let shipped = bucket
            .get("workspaces/w/MANIFEST")
            .unwrap()
            .map(|b| StoreManifest::from_bytes("m", &b).unwrap().end_seq);
        if shipped.is_some_and(|s| s >= h.log_stats().records) {
            break;
        }
        assert!(std::time::Instant::now() < until, "not shipped in 10 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    writes(&h, 1);
    thread.stop().unwrap();
    let (_d, r) = restored(&*bucket);
    assert_eq!(fingerprint(&r.workspace("w").unwrap()), fingerprint(&h));
}

#[test]
fn the_server_state_object_reads_its_fixture() {
    let bytes = include_bytes!("../../fixtures/store/STATE.v1.json");
    let s = ServerState::from_bytes("fixture", bytes).unwrap();
    assert_eq!(s.version, 1);
    assert_eq!(s.admin_token_sha256.len(), 64);
    let bytes = include_bytes!("../../fixtures/store/MANIFEST.v1.json");
    let m = StoreManifest::from_bytes("fixture", bytes).unwrap();
    assert_eq!(m.workspace, "w");
    assert_eq!(m.version, 1);
    assert!(m.snapshot.is_some());
    assert!(!m.logs.is_empty());
}

/// Writes the fixtures of the bucket's two formats (run by hand with
/// `--ignored`, once per format version; the files are checked in).
#[test]
#[ignore]
fn write_store_fixtures() {
    let (bucket, _) = shipped();
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/store");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("MANIFEST.v1.json"),
        bucket.get("workspaces/w/MANIFEST").unwrap().unwrap(),
    )
    .unwrap();
    std::fs::write(
        out.join("STATE.v1.json"),
        bucket.get("server/STATE").unwrap().unwrap(),
    )
    .unwrap();
}

#[test]
fn segq_serve_with_a_store_ships_and_a_new_node_starts_from_it_with_the_same_keys() {
    use crate::support::server::{users_body, Server};
    let store = tempfile::tempdir().unwrap();
    let url = format!("file://{}/bucket", store.path().display());
    let a_dir = tempfile::tempdir().unwrap();
    let a = Server::start(&a_dir.path().join("data"), &["--store", &url]);
    a.create_workspace("w");
    let (_, key) = a.create_key("w", "amplitude");
    for u in ["u1", "u2", "u3", "u4", "u5"] {
        a.upsert_user("w", &json!({"external_id": u}));
    }
    a.users(
        "amplitude",
        &users_body(&key, "c1", json!([{"user_ids": ["u1", "u2", "u3"]}])),
    )
    .expect(201);
    let ready = a.get("/readyz").expect_json(200);
    assert!(ready.get("degraded").is_none(), "{ready}");
    let token = a.token.clone();
    // Within the ship interval, the bucket holds the import.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while a.metric("segq_store_manifests_total") < 1.0 {
        assert!(std::time::Instant::now() < until, "nothing shipped");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(a.metric("segq_store_uploads_total") >= 3.0);
    // After the last shipment (at shutdown), a new node on an empty data
    // directory serves the same workspace to the same partner key.
    a.users(
        "amplitude",
        &users_body(&key, "c1", json!([{"user_ids": ["u4"]}])),
    )
    .expect(200);
    a.stop();
    let b_dir = tempfile::tempdir().unwrap();
    let b = Server::restart(&b_dir.path().join("data"), &token, &["--store", &url]);
    assert_eq!(b.size("w", "amplitude", "c1"), 4);
    b.users(
        "amplitude",
        &users_body(&key, "c1", json!([{"user_ids": ["u5"]}])),
    )
    .expect(200);
    assert_eq!(b.size("w", "amplitude", "c1"), 5);
    b.stop();
    // A store that cannot be used stops the start with its reason.
    let out = crate::support::server::segq(&[
        "serve",
        "--data",
        &b_dir.path().join("other").display().to_string(),
        "--store",
        "ftp://host/x",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ftp://host/x"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- The primary's lease ------------------------------------------------

/// Configuration from the environment: a lease of `secs` seconds.
fn lease_env(secs: &'static str) -> impl Fn(&str) -> Option<String> {
    move |name: &str| (name == "SEGQ_STORE_LEASE_SECS").then(|| secs.to_string())
}

type Primary = (Arc<Engine>, Arc<Lease>);

fn primary(
    dir: &Path,
    bucket: &Arc<dyn Bucket>,
    env: &dyn Fn(&str) -> Option<String>,
) -> segq::Result<Primary> {
    Engine::open_primary(dir, env, bucket.clone()).map(|(e, _, _, l)| (e, l))
}

fn lease_record(bucket: &dyn Bucket) -> LeaseRecord {
    LeaseRecord::from_bytes("lease", &bucket.get("server/LEASE").unwrap().unwrap()).unwrap()
}

fn server_state(bucket: &dyn Bucket) -> ServerState {
    ServerState::from_bytes("state", &bucket.get("server/STATE").unwrap().unwrap()).unwrap()
}

fn node_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("node-id")).unwrap()
}

/// A second primary on the store is refused, naming the holder, and
/// changes nothing; the first one's uploads carry its epoch.
fn a_second_primary_is_refused(bucket: Arc<dyn Bucket>) {
    let a_dir = tempfile::tempdir().unwrap();
    let (a, lease) = primary(a_dir.path(), &bucket, &no_env).unwrap();
    assert_eq!(lease.epoch(), 1);
    assert_eq!(lease.node(), node_of(a_dir.path()));
    a.create_workspace("w").unwrap();
    let h = a.workspace("w").unwrap();
    writes(&h, 0);
    h.compact().unwrap();
    writes(&h, 1);
    let shipper = Shipper::with_lease(a.clone(), bucket.clone(), lease.clone());
    shipper.ship_once().unwrap();
    assert_eq!(manifest(&*bucket).epoch, 1);
    assert_eq!(server_state(&*bucket).epoch, 1);
    let held = lease_record(&*bucket);
    assert_eq!((held.node.as_str(), held.epoch), (lease.node(), 1));

    let b_dir = tempfile::tempdir().unwrap();
    let err = primary(b_dir.path(), &bucket, &no_env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("another primary"), "{err}");
    assert!(err.contains(lease.node()), "the holder is named: {err}");
    assert!(
        !b_dir.path().join("workspaces/w").exists(),
        "nothing restored"
    );
    assert_eq!(lease_record(&*bucket), held, "the lease is unchanged");
    // The holder goes on renewing and shipping.
    writes(&h, 2);
    shipper.ship_once().unwrap();
    assert!(lease_record(&*bucket).renewed_at > held.renewed_at);
    // A restore without the lease (no writer) reads what it published.
    let (_d, r) = restored(&*bucket);
    assert_eq!(fingerprint(&r.workspace("w").unwrap()), fingerprint(&h));
}

#[test]
fn a_second_primary_on_an_in_memory_store_is_refused_naming_the_holder() {
    a_second_primary_is_refused(memory());
}

#[test]
fn a_second_primary_on_a_local_filesystem_store_is_refused_naming_the_holder() {
    let store_dir = tempfile::tempdir().unwrap();
    a_second_primary_is_refused(file_bucket(store_dir.path()));
}

#[test]
fn a_store_without_conditional_puts_is_refused_for_a_primary() {
    let plain: Arc<dyn Bucket> = Arc::new(FailAfter {
        inner: memory(),
        fail_from: usize::MAX,
        puts: AtomicUsize::new(0),
    });
    let dir = tempfile::tempdir().unwrap();
    let err = primary(dir.path(), &plain, &no_env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("conditional puts"), "{err}");
}

/// Waits while `held` is set when `key` is a snapshot's (a minute at
/// most, so that a failed test ends): a snapshot upload or read held up.
pub(crate) fn wait_while_held(key: &str, held: &std::sync::atomic::AtomicBool) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while key.ends_with(".segqsnap")
        && held.load(std::sync::atomic::Ordering::SeqCst)
        && std::time::Instant::now() < until
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A bucket that runs `before` ahead of every put (to fail it, or to
/// take time over it); every other operation, conditional puts included,
/// goes to `inner`.
pub(crate) struct BeforePut {
    pub(crate) inner: Arc<dyn Bucket>,
    pub(crate) before: PutHook,
}

/// What [`BeforePut`] runs ahead of a put, given the object's key.
pub(crate) type PutHook = Box<dyn Fn(&str) -> segq::Result<()> + Send + Sync>;

impl Bucket for BeforePut {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn put(&self, key: &str, bytes: Vec<u8>) -> segq::Result<()> {
        (self.before)(key)?;
        self.inner.put(key, bytes)
    }
    fn get(&self, key: &str) -> segq::Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn list(&self, prefix: &str) -> segq::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> segq::Result<()> {
        self.inner.delete(key)
    }
    fn get_versioned(
        &self,
        key: &str,
    ) -> segq::Result<Option<(Vec<u8>, segq::engine::store::ObjectVersion)>> {
        self.inner.get_versioned(key)
    }
    fn put_if(
        &self,
        key: &str,
        bytes: Vec<u8>,
        cond: &segq::engine::store::PutIf,
    ) -> segq::Result<segq::engine::store::Conditional> {
        self.inner.put_if(key, bytes, cond)
    }
}

#[test]
fn a_snapshot_upload_that_outlasts_the_lease_is_published_after_a_renewal() {
    // A 2 s lease publishes within 1.6 s of a renewal; the snapshot's put
    // takes 2.2 s. The manifest goes up in the same shipment, once the
    // lease is renewed; a node that took the lease meanwhile would make
    // that renewal fail instead (the takeover tests below).
    let slow: Arc<dyn Bucket> = Arc::new(BeforePut {
        inner: memory(),
        before: Box::new(|key| {
            if key.ends_with(".segqsnap") {
                std::thread::sleep(std::time::Duration::from_millis(2200));
            }
            Ok(())
        }),
    });
    let dir = tempfile::tempdir().unwrap();
    let (e, lease) = primary(dir.path(), &slow, &lease_env("2")).unwrap();
    e.create_workspace("w").unwrap();
    let h = e.workspace("w").unwrap();
    writes(&h, 0);
    h.compact().unwrap();
    writes(&h, 1);
    let shipper = Shipper::with_lease(e.clone(), slow.clone(), lease.clone());
    let done = shipper.ship_once().unwrap();
    assert_eq!(done.manifests, 1);
    let m = manifest(&*slow);
    assert!(m.snapshot.is_some());
    assert_eq!(lease_record(&*slow).node, node_of(dir.path()));
    let (_d, r) = restored(&*slow);
    assert_eq!(fingerprint(&r.workspace("w").unwrap()), fingerprint(&h));
}

/// Primary A ships; B takes over once A's lease lapses (epoch 2) and
/// restores A's shipped state; A's next shipment finds B's lease: A
/// refuses writes from then on, says so, and publishes nothing more;
/// when A starts again as primary later, B's history replaces what A
/// holds locally that B never had.
fn a_lapsed_lease_is_taken_over(bucket: Arc<dyn Bucket>) {
    let env = lease_env("2");
    let a_dir = tempfile::tempdir().unwrap();
    let (a, lease_a) = primary(a_dir.path(), &bucket, &env).unwrap();
    a.create_workspace("w").unwrap();
    let ha = a.workspace("w").unwrap();
    writes(&ha, 0);
    let ship_a = Shipper::with_lease(a.clone(), bucket.clone(), lease_a.clone());
    ship_a.ship_once().unwrap();
    let shipped_a = fingerprint(&ha);
    let b_dir = tempfile::tempdir().unwrap();
    assert!(primary(b_dir.path(), &bucket, &env).is_err());
    // A stops renewing (paused, cut off); its lease lapses.
    std::thread::sleep(std::time::Duration::from_millis(2300));
    let (b, lease_b) = primary(b_dir.path(), &bucket, &env).unwrap();
    assert_eq!(lease_b.epoch(), 2);
    assert_eq!(lease_record(&*bucket).node, lease_b.node());
    let hb = b.workspace("w").unwrap();
    assert_eq!(fingerprint(&hb), shipped_a);
    writes(&hb, 1);
    let ship_b = Shipper::with_lease(b.clone(), bucket.clone(), lease_b.clone());
    ship_b.ship_once().unwrap();
    assert_eq!(manifest(&*bucket).epoch, 2);
    assert_eq!(server_state(&*bucket).epoch, 2);
    let want = fingerprint(&hb);

    // A, back, took a write it never shipped; its shipment finds B's lease.
    writes(&ha, 5);
    let err = ship_a.ship_once().unwrap_err();
    assert!(matches!(err, Error::NotPrimary { .. }), "{err}");
    assert!(err.to_string().contains(lease_b.node()), "{err}");
    let refused = ha
        .upsert_users(vec![NewUser {
            external_id: Some("late".into()),
            devices: vec![],
            aliases: vec![],
            bucket: None,
        }])
        .unwrap_err();
    assert!(matches!(refused, Error::NotPrimary { .. }), "{refused}");
    assert!(refused.to_string().contains(lease_b.node()), "{refused}");
    assert!(matches!(
        a.create_workspace("v"),
        Err(Error::NotPrimary { .. })
    ));
    assert!(matches!(
        a.create_key("w", Partner::Amplitude),
        Err(Error::NotPrimary { .. })
    ));
    let st = a.store_status().unwrap();
    assert!(st.lease_lost().unwrap().contains(lease_b.node()));
    let why = st.degraded(Utc::now().timestamp_millis()).unwrap();
    assert!(why.contains("lost the lease"), "{why}");
    let mut text = String::new();
    segq::server::metrics::render_store(&a, &mut text);
    assert!(text.contains("segq_store_lease_lost 1"), "{text}");
    assert!(text.contains("segq_store_lease_epoch 1"), "{text}");
    // Nothing of A's reaches the bucket any more.
    assert!(ship_a.ship_once().is_err());
    assert_eq!(manifest(&*bucket).epoch, 2);
    assert_eq!(lease_record(&*bucket).node, lease_b.node());
    let (_d, r) = restored(&*bucket);
    assert_eq!(fingerprint(&r.workspace("w").unwrap()), want);

    // B stops; later A starts again as primary: its local files hold a
    // write B never had, at seqs B used for its own: B's history wins.
    drop(ship_b);
    drop(b);
    drop(ship_a);
    drop(ha);
    drop(a);
    std::thread::sleep(std::time::Duration::from_millis(2300));
    let (a, _, report, lease_a2) =
        Engine::open_primary(a_dir.path(), &env, bucket.clone()).unwrap();
    assert_eq!(lease_a2.epoch(), 3);
    assert_eq!(report.workspaces.len(), 1, "{report:?}");
    assert_eq!(fingerprint(&a.workspace("w").unwrap()), want);
    assert_eq!(
        std::fs::read_to_string(a_dir.path().join("store-epoch")).unwrap(),
        "3"
    );
}

#[test]
fn a_lapsed_lease_is_taken_over_with_the_next_epoch_and_the_old_primary_refuses_writes() {
    a_lapsed_lease_is_taken_over(memory());
}

#[test]
fn a_lapsed_lease_on_a_local_filesystem_store_is_taken_over_too() {
    let store_dir = tempfile::tempdir().unwrap();
    a_lapsed_lease_is_taken_over(file_bucket(store_dir.path()));
}

#[test]
fn the_objects_with_epochs_read_their_fixtures() {
    let bytes = include_bytes!("../../fixtures/store/MANIFEST.v1.epoch.json");
    let m = StoreManifest::from_bytes("fixture", bytes).unwrap();
    assert_eq!((m.workspace.as_str(), m.epoch), ("w", 1));
    let bytes = include_bytes!("../../fixtures/store/STATE.v1.epoch.json");
    assert_eq!(ServerState::from_bytes("fixture", bytes).unwrap().epoch, 1);
    let bytes = include_bytes!("../../fixtures/store/LEASE.v1.json");
    let l = LeaseRecord::from_bytes("fixture", bytes).unwrap();
    assert_eq!(l.epoch, 1);
    assert!(l.expires_at > l.renewed_at);
    // Objects written before leases read with epoch 0.
    let bytes = include_bytes!("../../fixtures/store/MANIFEST.v1.json");
    assert_eq!(
        StoreManifest::from_bytes("fixture", bytes).unwrap().epoch,
        0
    );
}

/// Writes the fixtures of the objects a primary writes (run by hand with
/// `--ignored`; the files are checked in).
#[test]
#[ignore]
fn write_lease_fixtures() {
    let bucket = memory();
    let dir = tempfile::tempdir().unwrap();
    let (e, lease) = primary(dir.path(), &bucket, &no_env).unwrap();
    e.create_workspace("w").unwrap();
    let h = e.workspace("w").unwrap();
    writes(&h, 0);
    h.compact().unwrap();
    writes(&h, 1);
    Shipper::with_lease(e.clone(), bucket.clone(), lease)
        .ship_once()
        .unwrap();
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/store");
    for (key, file) in [
        ("workspaces/w/MANIFEST", "MANIFEST.v1.epoch.json"),
        ("server/STATE", "STATE.v1.epoch.json"),
        ("server/LEASE", "LEASE.v1.json"),
    ] {
        std::fs::write(out.join(file), bucket.get(key).unwrap().unwrap()).unwrap();
    }
}

// ---- Against a real S3-compatible server (moto) ---------------------------

/// `moto_server` on a free port, killed when dropped.
pub(crate) struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts one, or `None` (saying why) when `moto_server` is not
    /// installed; with `SEGQ_REQUIRE_S3=1` that fails the test instead.
    pub(crate) fn start() -> Option<Moto> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let spawned = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var("SEGQ_REQUIRE_S3").as_deref() != Ok("1"),
                    "SEGQ_REQUIRE_S3=1 but moto_server does not start: {e} \
                     (pip install 'moto[server]')"
                );
                eprintln!("skipped: moto_server does not start ({e}); pip install 'moto[server]'");
                return None;
            }
        };
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let client = crate::support::server::client();
        while client.get(&moto.endpoint).send().is_err() {
            assert!(
                std::time::Instant::now() < until,
                "moto_server did not answer in 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Some(moto)
    }

    /// Creates the bucket `name`.
    pub(crate) fn bucket(&self, name: &str) {
        let r = crate::support::server::client()
            .put(format!("{}/{name}", self.endpoint))
            .send()
            .unwrap();
        assert!(
            r.status().is_success(),
            "creating bucket {name}: {}",
            r.status()
        );
    }

    /// The options that point a store at it (dummy credentials).
    pub(crate) fn options(&self) -> Vec<(&'static str, String)> {
        vec![
            ("aws_endpoint", self.endpoint.clone()),
            ("aws_allow_http", "true".into()),
            ("aws_access_key_id", "testing".into()),
            ("aws_secret_access_key", "testing".into()),
            ("aws_region", "us-east-1".into()),
            ("aws_conditional_put", "etag".into()),
        ]
    }

    pub(crate) fn store(&self, url: &str) -> Arc<dyn Bucket> {
        let opts = self.options();
        let opts: Vec<(&str, &str)> = opts.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Arc::new(ObjectBucket::from_url_with(url, &opts).unwrap())
    }
}

#[test]
fn s3_conditional_puts_lease_ship_and_restore_an_empty_node() {
    let Some(moto) = Moto::start() else { return };
    moto.bucket("segq");
    let bucket = moto.store("s3://segq/team/prod");
    // The conditional puts themselves.
    use segq::engine::store::{Conditional, PutIf};
    let Conditional::Written(v1) = bucket
        .put_if("probe", b"1".to_vec(), &PutIf::Absent)
        .unwrap()
    else {
        panic!("the first create is written")
    };
    assert_eq!(
        bucket
            .put_if("probe", b"2".to_vec(), &PutIf::Absent)
            .unwrap(),
        Conditional::Conflict
    );
    let Conditional::Written(v2) = bucket
        .put_if("probe", b"3".to_vec(), &PutIf::Matches(v1.clone()))
        .unwrap()
    else {
        panic!("an update at the current version is written")
    };
    assert_eq!(
        bucket
            .put_if("probe", b"4".to_vec(), &PutIf::Matches(v1))
            .unwrap(),
        Conditional::Conflict
    );
    assert_eq!(
        bucket.get_versioned("probe").unwrap().unwrap(),
        (b"3".to_vec(), v2)
    );
    bucket.delete("probe").unwrap();

    // Ship, a second primary refused, a restore on an empty node.
    a_second_primary_is_refused(bucket.clone());
    let keys = bucket.list("workspaces").unwrap();
    assert!(
        keys.iter().any(|o| o.key == "workspaces/w/MANIFEST"),
        "{keys:?}"
    );
}

#[test]
fn s3_a_lapsed_lease_is_taken_over_and_the_old_primary_refuses_writes() {
    let Some(moto) = Moto::start() else { return };
    moto.bucket("segq");
    a_lapsed_lease_is_taken_over(moto.store("s3://segq/lease"));
}

#[test]
fn segq_serve_refuses_a_second_primary_and_one_that_lost_its_lease_answers_503() {
    use crate::support::server::{users_body, Server};
    let store = tempfile::tempdir().unwrap();
    let url = format!("file://{}/bucket", store.path().display());
    let env = [("SEGQ_STORE_LEASE_SECS", "2")];
    let a_dir = tempfile::tempdir().unwrap();
    let a_data = a_dir.path().join("data");
    let a = Server::start_with_env(&a_data, &["--store", &url], &env);
    a.create_workspace("w");
    let (_, key) = a.create_key("w", "amplitude");
    for u in ["u1", "u2", "u3"] {
        a.upsert_user("w", &json!({"external_id": u}));
    }
    a.users(
        "amplitude",
        &users_body(&key, "c1", json!([{"user_ids": ["u1", "u2"]}])),
    )
    .expect(201);
    assert_eq!(a.size("w", "amplitude", "c1"), 2);
    let node_a = std::fs::read_to_string(a_data.join("node-id")).unwrap();
    assert_eq!(a.metric("segq_store_lease_epoch"), 1.0);

    // A second server on the same store does not start; it names A.
    let b_dir = tempfile::tempdir().unwrap();
    let b_data = b_dir.path().join("data");
    let out = crate::support::server::segq(&[
        "serve",
        "--data",
        &b_data.display().to_string(),
        "--store",
        &url,
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&node_a), "{stderr}");
    assert!(!b_data.join("workspaces/w").exists());

    // A paused past its lease (a stalled machine): B takes over, and
    // answers from what A shipped.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while a.metric("segq_store_manifests_total") < 1.0
        || a.metric("segq_store_unshipped_records{workspace=\"w\"}") > 0.0
    {
        assert!(std::time::Instant::now() < until, "not shipped");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &a.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let b = Server::restart_with_env(&b_data, &a.token, &["--store", &url], &env);
    signal("-CONT");
    let node_b = std::fs::read_to_string(b_data.join("node-id")).unwrap();
    assert_eq!(b.metric("segq_store_lease_epoch"), 2.0);
    assert_eq!(b.size("w", "amplitude", "c1"), 2);

    // A's next shipment finds B's lease: A refuses writes, naming B.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while a.metric("segq_store_lease_lost") < 1.0 {
        assert!(std::time::Instant::now() < until, "A did not notice");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let r = a.users(
        "amplitude",
        &users_body(&key, "c1", json!([{"user_ids": ["u3"]}])),
    );
    let r = r.expect(503);
    assert!(r.message().contains(&node_b), "{}", r.message());
    let r = a.admin_post("/admin/workspaces", &json!({"name": "v"}));
    assert_eq!(r.status, 503, "{}", r.text);
    let ready = a.get("/readyz").expect_json(200);
    assert_eq!(
        ready["degraded"][0]["check"], "object_store_lease",
        "{ready}"
    );
    // Reads go on at A; writes go to B.
    assert_eq!(a.size("w", "amplitude", "c1"), 2);
    b.users(
        "amplitude",
        &users_body(&key, "c1", json!([{"user_ids": ["u3"]}])),
    )
    .expect(200);
    assert_eq!(b.size("w", "amplitude", "c1"), 3);
    a.stop();
    b.stop();
}

#[test]
fn the_live_log_is_sealed_before_it_would_merge_so_no_log_byte_is_uploaded_twice() {
    let bucket = memory();
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), None).unwrap();
    e.create_workspace("w").unwrap();
    let h = e.workspace("w").unwrap();
    writes(&h, 0);
    h.compact().unwrap();
    let shipper = Shipper::new(e.clone(), bucket.clone());
    let rounds = 3 * MAX_PIECES as u32;
    for r in 1..=rounds {
        writes(&h, r);
        shipper.ship_once().unwrap();
    }
    let m = manifest(&*bucket);
    assert!(m.logs.len() >= 3, "{} logs", m.logs.len());
    let mut part_bytes = 0;
    for log in &m.logs {
        assert!(log.pieces.len() <= MAX_PIECES, "{}", log.name);
        // Contiguous from byte 0: each byte in one piece.
        let mut at = 0;
        for p in &log.pieces {
            assert_eq!(p.start, at, "{}", log.name);
            at = p.end;
        }
        let len = std::fs::metadata(dir.path().join("workspaces/w").join(&log.name))
            .unwrap()
            .len();
        assert_eq!(at, len, "{} is shipped whole", log.name);
        part_bytes += len;
    }
    // Every piece ever put is one the manifest names: none merged away.
    let parts: u64 = bucket
        .list("workspaces")
        .unwrap()
        .iter()
        .filter(|o| o.key.ends_with(".part"))
        .map(|o| o.size)
        .sum();
    assert_eq!(parts, part_bytes, "no log byte was uploaded twice");
    // The sealed chain reopens, and restores on an empty node, the same.
    let want = fingerprint(&h);
    drop(h);
    drop(shipper);
    drop(e);
    let e = open(dir.path(), None).unwrap();
    assert_eq!(fingerprint(&e.workspace("w").unwrap()), want);
    let (_d, r) = restored(&*bucket);
    assert_eq!(fingerprint(&r.workspace("w").unwrap()), want);
    // A compaction folds the whole chain.
    e.workspace("w").unwrap().compact().unwrap();
    let left: Vec<String> = std::fs::read_dir(dir.path().join("workspaces/w"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("log") || n.ends_with(".segqlog"))
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
}
