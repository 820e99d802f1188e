//! A full disk under a workspace's log: a write the disk refuses is
//! answered 503 and undone (invisible before and after a restart), its
//! sequence numbers are never handed out again, the workspace takes writes
//! again once the disk does (no restart), a refused key invalidation
//! leaves the key usable, every writer of a failed group commit gets an
//! error, shutdown reports every workspace it could not sync, and an undo
//! drops the bucket-range masks its abandoned users had filled.
//!
//! The log of a workspace is put on a [`DiskFull`] through the
//! compaction's `Fs::create_log` seam: a compaction starts the next log on
//! a real file wrapped by the switch.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use segq::engine::{Engine, Fs, RealFs, WorkspaceHandle};
use segq::import::{parse_users_request, Credentials};
use segq::log::{DiskFull, FsFile, LogWriter};
use segq::server::error::status_of;
use segq::users::NewUser;
use segq::{CohortKey, Error, Partner, Workspace};
use serde_json::json;

fn open(dir: &Path) -> Arc<Engine> {
    Engine::open(dir).unwrap().0
}

fn handle(e: &Engine, name: &str) -> Arc<WorkspaceHandle> {
    e.workspace(name).unwrap()
}

/// The real file operations, except that a new log is put on `disk`.
pub(crate) struct OnDiskFs(pub(crate) DiskFull);

impl Fs for OnDiskFs {
    fn write(&mut self, path: &Path, bytes: &[u8]) -> segq::Result<()> {
        RealFs.write(path, bytes)
    }
    fn fsync(&mut self, path: &Path) -> segq::Result<()> {
        RealFs.fsync(path)
    }
    fn rename(&mut self, from: &Path, to: &Path) -> segq::Result<()> {
        RealFs.rename(from, to)
    }
    fn fsync_dir(&mut self, dir: &Path) -> segq::Result<()> {
        RealFs.fsync_dir(dir)
    }
    fn create_log(&mut self, path: &Path, first_seq: u64) -> segq::Result<LogWriter> {
        drop(RealFs.create_log(path, first_seq)?);
        let file = FsFile::open(path).map_err(Error::io_at(path))?;
        Ok(LogWriter::open(self.0.wrap(file))?.0)
    }
    fn remove(&mut self, path: &Path) -> segq::Result<()> {
        RealFs.remove(path)
    }
}

/// Moves the workspace's log onto `disk` (by a compaction).
pub(crate) fn put_on(h: &WorkspaceHandle, disk: &DiskFull) {
    h.compact_with(&mut OnDiskFs(disk.clone())).unwrap();
}

fn user(external_id: &str) -> NewUser {
    NewUser {
        external_id: Some(external_id.to_string()),
        ..NewUser::default()
    }
}

/// A workspace `name` with users u0..u39.
fn workspace(e: &Engine, name: &str) -> Arc<WorkspaceHandle> {
    e.create_workspace(name).unwrap();
    let h = handle(e, name);
    let report = h
        .upsert_users((0..40).map(|i| user(&format!("u{i}"))).collect())
        .unwrap();
    assert_eq!(report.created, 40);
    h
}

/// Adds users `ids` (by external id) to cohort `c`.
fn import(h: &WorkspaceHandle, ids: std::ops::Range<u32>) -> segq::Result<()> {
    let ids: Vec<String> = ids.map(|i| format!("u{i}")).collect();
    let body = json!({"partner_api_key": "k", "client_secret": "s", "cohort_id": "c",
        "cohort_changes": [{"user_ids": ids}]});
    let req = parse_users_request(body.to_string().as_bytes()).unwrap();
    h.import_users(Partner::Amplitude, &req, Utc::now())
        .map(|_| ())
}

fn members(ws: &Workspace) -> Vec<u32> {
    ws.cohorts
        .get(&CohortKey::new(Partner::Amplitude, "c"))
        .map(|c| c.members.iter().expect("readable members").collect())
        .unwrap_or_default()
}

/// The generation a query reports, and the cohort's members it sees.
fn observe(h: &WorkspaceHandle) -> (u64, Vec<u32>) {
    let (ws, generation) = h.view();
    (generation, members(&ws))
}

/// Every generation a query reported, with what it saw: a generation is
/// never reported for two different states.
#[derive(Default)]
struct Generations(BTreeMap<u64, Vec<u32>>);

impl Generations {
    fn saw(&mut self, (generation, seen): (u64, Vec<u32>)) -> u64 {
        if let Some(before) = self.0.insert(generation, seen.clone()) {
            assert_eq!(
                before, seen,
                "generation {generation} was reported for two different states"
            );
        }
        generation
    }
}

fn assert_refused(err: &Error, dir: &Path) {
    assert!(matches!(err, Error::NotDurable { .. }), "{err}");
    assert_eq!(status_of(err).as_u16(), 503, "{err}");
    let text = err.to_string();
    assert!(
        !text.contains(&*dir.to_string_lossy()),
        "a path in the message: {text}"
    );
}

#[derive(Clone, Copy, Debug)]
enum Refuse {
    Writes,
    Syncs,
}

impl Refuse {
    fn set(self, disk: &DiskFull, on: bool) {
        match self {
            Refuse::Writes => disk.refuse_writes(on),
            Refuse::Syncs => disk.refuse_syncs(on),
        }
    }
}

#[test]
fn a_write_the_disk_refuses_is_undone_its_seqs_never_return_and_writes_resume_without_restart() {
    for mode in [Refuse::Writes, Refuse::Syncs] {
        let dir = tempfile::tempdir().unwrap();
        let e = open(dir.path());
        let h = workspace(&e, "w");
        import(&h, 0..10).unwrap();
        let disk = DiskFull::new();
        put_on(&h, &disk);
        let mut seen = Generations::default();
        let g0 = seen.saw(observe(&h));
        let acknowledged: Vec<u32> = observe(&h).1;
        assert_eq!(acknowledged.len(), 10);

        // The change is visible while its commit is in flight, and that
        // generation is reported: hold the sync, look, then fill the disk.
        // Refused syncs fail this commit; refused writes come too late for
        // it (its bytes are written) and fail the next one.
        disk.hold_syncs(true);
        let h2 = h.clone();
        let refused = std::thread::spawn(move || import(&h2, 10..20));
        assert!(disk.wait_held(1, Duration::from_secs(30)), "{mode:?}");
        let (g_inflight, inflight) = observe(&h);
        assert_eq!(inflight.len(), 20, "{mode:?}: visible before durable");
        seen.saw((g_inflight, inflight));
        mode.set(&disk, true);
        disk.hold_syncs(false);
        let err = match (mode, refused.join().unwrap()) {
            (Refuse::Syncs, Err(e)) => e,
            (Refuse::Writes, Ok(())) => import(&h, 20..30).unwrap_err(),
            (mode, r) => panic!("{mode:?}: {r:?}"),
        };
        assert_refused(&err, dir.path());
        assert!(disk.refused() > 0);
        let expected_after_refusal = match mode {
            Refuse::Syncs => acknowledged.clone(),
            Refuse::Writes => observe_members_with(&acknowledged, 10..20),
        };
        let g1 = seen.saw(observe(&h));
        assert_eq!(
            observe(&h).1,
            expected_after_refusal,
            "{mode:?}: the refused users are not counted"
        );
        assert!(g1 > g0);

        // While the disk refuses, writes are refused and change nothing.
        for _ in 0..2 {
            let err = h.upsert_user(user("late")).unwrap_err();
            assert_refused(&err, dir.path());
            assert_eq!(h.read().users.match_external_id("late"), None);
            seen.saw(observe(&h));
        }

        // Space returns: writes go through, without a restart.
        mode.set(&disk, false);
        import(&h, 30..35).unwrap();
        h.upsert_user(user("late")).unwrap();
        let (g3, after) = observe(&h);
        seen.saw((g3, after.clone()));
        assert!(g3 > g_inflight, "{mode:?}: {g3} after {g_inflight}");
        assert_eq!(
            after,
            observe_members_with(&expected_after_refusal, 30..35),
            "{mode:?}"
        );

        // A restart finds the same state under the same generation, and
        // the next change gets a generation never reported before.
        drop((h, e));
        let e = open(dir.path());
        let h = handle(&e, "w");
        assert_eq!(observe(&h), (g3, after.clone()), "{mode:?}");
        assert!(h.read().users.match_external_id("late").is_some());
        import(&h, 35..40).unwrap();
        let (g5, last) = observe(&h);
        assert!(
            !seen.0.contains_key(&g5),
            "{mode:?}: generation {g5} reused"
        );
        seen.saw((g5, last));
    }
}

/// `base` plus the users `extra`, as user ids (u{i} is user i).
fn observe_members_with(base: &[u32], extra: std::ops::Range<u32>) -> Vec<u32> {
    let mut all: Vec<u32> = base.iter().copied().chain(extra).collect();
    all.sort_unstable();
    all.dedup();
    all
}

#[test]
fn a_key_invalidation_the_disk_refuses_leaves_the_key_usable() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let h = workspace(&e, "w");
    let key = e.create_key("w", Partner::Amplitude).unwrap();
    let creds = |e: &Engine| Credentials {
        partner_api_key: e.config().partner_api_keys[&Partner::Amplitude].clone(),
        client_secret: key.key.clone(),
    };
    let disk = DiskFull::new();
    put_on(&h, &disk);
    disk.refuse_writes(true);
    let err = e.invalidate_key("w", &key.id).unwrap_err();
    assert_refused(&err, dir.path());
    assert!(
        e.authorize(Partner::Amplitude, &creds(&e)).is_ok(),
        "the key works while its invalidation is not durable"
    );
    let listed = e.list_keys("w", None).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].invalidated_at, None);

    // After a restart (the disk still full when it stopped) it works too.
    drop((h, e));
    let e = open(dir.path());
    assert!(e.authorize(Partner::Amplitude, &creds(&e)).is_ok());
    e.invalidate_key("w", &key.id).unwrap();
    assert!(e.authorize(Partner::Amplitude, &creds(&e)).is_err());

    // And once the disk takes writes again, the invalidation goes through
    // without a restart.
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let h = workspace(&e, "w");
    let key = e.create_key("w", Partner::Amplitude).unwrap();
    let creds = Credentials {
        partner_api_key: e.config().partner_api_keys[&Partner::Amplitude].clone(),
        client_secret: key.key.clone(),
    };
    let disk = DiskFull::new();
    put_on(&h, &disk);
    disk.refuse_syncs(true);
    assert_refused(&e.invalidate_key("w", &key.id).unwrap_err(), dir.path());
    assert!(e.authorize(Partner::Amplitude, &creds).is_ok());
    disk.refuse_syncs(false);
    e.invalidate_key("w", &key.id).unwrap();
    assert!(e.authorize(Partner::Amplitude, &creds).is_err());
    drop((h, e));
    let e = open(dir.path());
    assert!(e.authorize(Partner::Amplitude, &creds).is_err());
}

#[test]
fn every_writer_of_a_failed_group_commit_gets_an_error_and_none_of_their_changes_is_visible() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let h = workspace(&e, "w");
    let disk = DiskFull::new();
    put_on(&h, &disk);
    let base = h.view().1;

    // A first commit is held in its sync; the writers that come meanwhile
    // queue up for the next commit, one group.
    disk.hold_syncs(true);
    let h0 = h.clone();
    let first = std::thread::spawn(move || h0.upsert_user(user("first")));
    assert!(disk.wait_held(1, Duration::from_secs(30)));
    const WRITERS: u64 = 6;
    let group: Vec<_> = (0..WRITERS)
        .map(|i| {
            let h = h.clone();
            std::thread::spawn(move || h.upsert_user(user(&format!("group{i}"))))
        })
        .collect();
    let mut queued = false;
    for _ in 0..3000 {
        if h.view().1 == base + 1 + WRITERS {
            queued = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(queued, "the writers submitted their records");
    // Their changes are visible (not yet durable) ...
    for i in 0..WRITERS {
        assert!(h
            .read()
            .users
            .match_external_id(&format!("group{i}"))
            .is_some());
    }
    // ... and their commit fails.
    disk.refuse_writes(true);
    disk.hold_syncs(false);
    first.join().unwrap().expect("the held commit was written");
    for t in group {
        let err = t.join().unwrap().unwrap_err();
        assert_refused(&err, dir.path());
    }
    let check = |h: &WorkspaceHandle| {
        let ws = h.read();
        assert!(ws.users.match_external_id("first").is_some());
        for i in 0..WRITERS {
            assert_eq!(
                ws.users.match_external_id(&format!("group{i}")),
                None,
                "writer {i} of the failed group is visible"
            );
        }
    };
    check(&h);
    disk.refuse_writes(false);
    h.upsert_user(user("after")).unwrap();
    check(&h);
    drop((h, e));
    let e = open(dir.path());
    let h = handle(&e, "w");
    check(&h);
    assert!(h.read().users.match_external_id("after").is_some());
}

#[test]
fn shutdown_tries_every_workspace_and_reports_each_failure() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let disk = DiskFull::new();
    for name in ["a", "b", "c"] {
        let h = workspace(&e, name);
        if name != "b" {
            put_on(&h, &disk);
        }
    }
    disk.refuse_syncs(true);
    for name in ["a", "c"] {
        assert_refused(
            &handle(&e, name).upsert_user(user("x")).unwrap_err(),
            dir.path(),
        );
    }
    handle(&e, "b").upsert_user(user("x")).unwrap();
    let failed = e.sync_all().unwrap_err();
    let names: Vec<&str> = failed.failures.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "c"], "{failed}");
    for (_, err) in &failed.failures {
        assert_refused(err, dir.path());
    }
    let text = failed.to_string();
    assert!(text.contains("a:") && text.contains("c:"), "{text}");
    // Once the disk takes writes again, shutdown syncs everything.
    disk.refuse_syncs(false);
    e.sync_all().unwrap();
    for name in ["a", "c"] {
        handle(&e, name).upsert_user(user("y")).unwrap();
    }
    e.sync_all().unwrap();
}

/// Users of a bucket range counted through the handle's mask cache, and
/// by the reference.
fn bucket_counts(h: &WorkspaceHandle, lo: u16, hi: u16) -> (u64, u64) {
    use segq::segment::{chunk::Prepared, plan, reference, BucketCmp, Filter};
    let f = Filter::Bucket(BucketCmp::Between(lo, hi));
    let (ws, _) = h.view();
    let p = plan::plan(&*ws, &f).unwrap();
    let fast = Prepared::new(&ws, &p, h.bitmaps())
        .unwrap()
        .count()
        .unwrap();
    (fast, reference::count(&*ws, &f).unwrap())
}

#[test]
fn an_undo_drops_the_bucket_masks_of_a_chunk_its_users_had_filled() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    e.create_workspace("w").unwrap();
    let h = handle(&e, "w");
    let with_bucket = |prefix: &str, n: u32, bucket: u16| -> Vec<NewUser> {
        (0..n)
            .map(|i| NewUser {
                bucket: Some(bucket),
                ..user(&format!("{prefix}{i}"))
            })
            .collect()
    };
    h.upsert_users(with_bucket("a", 65_000, 5)).unwrap();
    let disk = DiskFull::new();
    put_on(&h, &disk);

    // A batch that fills the first chunk, all in bucket 0, visible while
    // its sync is held: a count of bucket 0 keeps that chunk's mask.
    disk.hold_syncs(true);
    let h2 = h.clone();
    let batch = with_bucket("b", 1_000, 0);
    let refused = std::thread::spawn(move || h2.upsert_users(batch));
    assert!(disk.wait_held(1, Duration::from_secs(30)));
    assert_eq!(bucket_counts(&h, 0, 0), (1_000, 1_000));
    let masks = h.bitmaps().bucket_mask_cache().unwrap();
    assert!(masks.stats().bytes > 0, "{:?}", masks.stats());
    disk.refuse_syncs(true);
    disk.hold_syncs(false);
    assert!(refused.join().unwrap().is_err());
    disk.refuse_syncs(false);

    // Undone: the same ids come back in another bucket.
    h.upsert_users(with_bucket("c", 1_000, 9)).unwrap();
    assert_eq!(h.read().users.len(), 66_000);
    assert_eq!(bucket_counts(&h, 0, 0), (0, 0));
    assert_eq!(bucket_counts(&h, 9, 9), (1_000, 1_000));
}
