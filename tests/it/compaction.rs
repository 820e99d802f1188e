//! Compaction and recovery: the log folds into a snapshot generation
//! published by the manifest; a crash after any write, fsync or rename of
//! a compaction recovers to exactly the acknowledged changes; corrupt
//! snapshots and manifests are refused with their path; thresholds
//! trigger compaction.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use segq::engine::persist;
use segq::engine::{compact, Engine, Fs, RealFs, WorkspaceHandle};
use segq::import::parse_users_request;
use segq::log::LogWriter;
use segq::snapshot::format::SectionKind;
use segq::users::NewUser;
use segq::{Error, Partner, UserId};
use serde_json::json;

use crate::support::fingerprint;

fn open(dir: &Path) -> Arc<Engine> {
    Engine::open(dir).unwrap().0
}

fn handle(e: &Engine) -> Arc<WorkspaceHandle> {
    e.workspace("w").unwrap()
}

/// Acknowledged writes of every kind, round `r`.
fn writes(h: &WorkspaceHandle, r: u32) {
    let base = r * 100;
    let users: Vec<NewUser> = (base..base + 100)
        .map(|i| NewUser {
            external_id: (i % 5 != 0).then(|| format!("u{i}")),
            devices: vec![format!("d{i}")],
            aliases: if i % 7 == 0 {
                vec![("email".into(), format!("u{i}@x"))]
            } else {
                vec![]
            },
            bucket: None,
        })
        .collect();
    h.upsert_users(users).unwrap();
    let ids: Vec<String> = (base..base + 100)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("u{i}"))
        .collect();
    let body = json!({"partner_api_key": "k", "client_secret": "s", "cohort_id": format!("c{}", r % 2),
        "cohort_changes": [{"user_ids": ids}, {"user_ids": [format!("u{}", base + 3)], "should_remove": true},
                           {"device_ids": [format!("d{}", base + 5)]}]});
    let req = parse_users_request(body.to_string().as_bytes()).unwrap();
    let t = Utc.with_ymd_and_hms(2026, 1, 1 + r % 20, 0, 0, 0).unwrap();
    h.import_users(Partner::Amplitude, &req, t).unwrap();
    h.identify(
        &segq::UserRef::DeviceId(format!("d{}", base + 10)),
        &format!("late{r}"),
    )
    .unwrap();
    h.save_segment(
        None,
        &format!("s{r}"),
        &segq::segment::parse("amplitude_cohorts includes c0").unwrap(),
    )
    .unwrap();
}

fn setup(dir: &Path) -> Arc<Engine> {
    let e = open(dir);
    e.create_workspace("w").unwrap();
    e.create_key("w", Partner::Amplitude).unwrap();
    writes(&handle(&e), 0);
    e
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("workspaces/w"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn compaction_keeps_every_change_and_publishes_a_generation() {
    let dir = tempfile::tempdir().unwrap();
    let e = setup(dir.path());
    let h = handle(&e);
    let before = fingerprint(&h);
    let c = h.compact().unwrap();
    assert_eq!(c.generation, 1);
    assert_eq!(
        fingerprint(&h),
        before,
        "compaction changes nothing visible"
    );
    let m = h.manifest().unwrap();
    assert_eq!(
        files(dir.path()),
        vec!["MANIFEST".to_string(), m.log.clone(), m.snapshot.clone()]
    );
    assert_eq!(m.log, compact::log_name(m.seq + 1));
    // Writes after the compaction go to the new log and survive a restart.
    writes(&h, 1);
    let after = fingerprint(&h);
    drop((h, e));
    let e = open(dir.path());
    let h = handle(&e);
    assert_eq!(fingerprint(&h), after);
    // A second generation replaces the first.
    let c2 = h.compact().unwrap();
    assert_eq!(c2.generation, 2);
    let m2 = h.manifest().unwrap();
    assert_eq!(
        files(dir.path()),
        vec!["MANIFEST".to_string(), m2.log, m2.snapshot]
    );
    writes(&h, 2);
    let last = fingerprint(&h);
    drop((h, e));
    assert_eq!(fingerprint(&handle(&open(dir.path()))), last);
}

/// Runs the real operations and stops (with an error, like a crash) after
/// the `crash_after`-th one; counts them.
struct CrashFs {
    ops: usize,
    crash_after: usize,
}

impl CrashFs {
    fn step(&mut self) -> segq::Result<()> {
        self.ops += 1;
        if self.ops == self.crash_after {
            return Err(Error::InvalidArgument(format!(
                "crash after operation {}",
                self.ops
            )));
        }
        Ok(())
    }
}

impl Fs for CrashFs {
    fn write(&mut self, path: &Path, bytes: &[u8]) -> segq::Result<()> {
        RealFs.write(path, bytes)?;
        self.step()
    }
    fn fsync(&mut self, path: &Path) -> segq::Result<()> {
        RealFs.fsync(path)?;
        self.step()
    }
    fn rename(&mut self, from: &Path, to: &Path) -> segq::Result<()> {
        RealFs.rename(from, to)?;
        self.step()
    }
    fn fsync_dir(&mut self, dir: &Path) -> segq::Result<()> {
        RealFs.fsync_dir(dir)?;
        self.step()
    }
    fn create_log(&mut self, path: &Path, first_seq: u64) -> segq::Result<LogWriter> {
        let w = RealFs.create_log(path, first_seq)?;
        self.step()?;
        Ok(w)
    }
    fn remove(&mut self, path: &Path) -> segq::Result<()> {
        RealFs.remove(path)?;
        self.step()
    }
}

#[test]
fn a_crash_after_any_step_of_a_compaction_recovers_exactly_the_acknowledged_changes() {
    // How many operations a compaction makes (first and second generation).
    let count = |second: bool| {
        let dir = tempfile::tempdir().unwrap();
        let e = setup(dir.path());
        let h = handle(&e);
        if second {
            h.compact().unwrap();
            writes(&h, 1);
        }
        let mut fs = CrashFs {
            ops: 0,
            crash_after: usize::MAX,
        };
        h.compact_with(&mut fs).unwrap();
        fs.ops
    };
    for second in [false, true] {
        let n = count(second);
        assert!(n >= 10, "{n} operations");
        for k in 1..=n {
            let dir = tempfile::tempdir().unwrap();
            let e = setup(dir.path());
            let h = handle(&e);
            if second {
                h.compact().unwrap();
                writes(&h, 1);
            }
            let acknowledged = fingerprint(&h);
            let mut fs = CrashFs {
                ops: 0,
                crash_after: k,
            };
            // A crash in the cleanup after the commit point is only
            // reported (litter stays for start-up to remove), so the call
            // may succeed; what matters is what a restart finds.
            let _ = h.compact_with(&mut fs);
            assert_eq!(fs.ops, k, "the crash stopped the compaction");
            drop((h, e));
            let e = open(dir.path());
            let h = handle(&e);
            assert_eq!(
                fingerprint(&h),
                acknowledged,
                "crash after step {k} of {n} (second: {second})"
            );
            // And the workspace goes on: writes, compaction, restart.
            writes(&h, 7);
            h.compact().unwrap();
            writes(&h, 8);
            let later = fingerprint(&h);
            drop((h, e));
            assert_eq!(
                fingerprint(&handle(&open(dir.path()))),
                later,
                "after step {k}"
            );
        }
    }
}

#[test]
fn a_failure_at_the_commit_point_stops_writes_until_restart() {
    let dir = tempfile::tempdir().unwrap();
    let e = setup(dir.path());
    let h = handle(&e);
    let mut total = CrashFs {
        ops: 0,
        crash_after: usize::MAX,
    };
    {
        let d2 = tempfile::tempdir().unwrap();
        let e2 = setup(d2.path());
        handle(&e2).compact_with(&mut total).unwrap();
    }
    // The manifest's rename is the third operation from the end (rename,
    // fsync of the folder, then the cleanup's removal of the old log).
    let mut fs = CrashFs {
        ops: 0,
        crash_after: total.ops - 2,
    };
    let err = h.compact_with(&mut fs).unwrap_err();
    assert!(matches!(err, Error::WorkspaceFailed { .. }), "{err}");
    assert!(matches!(
        h.upsert_user(NewUser {
            external_id: Some("x".into()),
            ..NewUser::default()
        }),
        Err(Error::WorkspaceFailed { .. })
    ));
    let acknowledged = fingerprint(&h);
    drop((h, e));
    assert_eq!(fingerprint(&handle(&open(dir.path()))), acknowledged);
}

fn snapshot_path(dir: &Path) -> PathBuf {
    let m = compact::Manifest::read(&dir.join("workspaces/w"))
        .unwrap()
        .unwrap();
    dir.join("workspaces/w").join(m.snapshot)
}

#[test]
fn a_corrupt_snapshot_or_manifest_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let e = setup(dir.path());
    handle(&e).compact().unwrap();
    drop(e);
    let snap = snapshot_path(dir.path());
    let good = std::fs::read(&snap).unwrap();
    for at in [100, good.len() / 2, good.len() - 40] {
        let mut bad = good.clone();
        bad[at] ^= 1;
        std::fs::write(&snap, &bad).unwrap();
        match Engine::open(dir.path()) {
            Err(Error::Corrupt { path, .. }) => assert_eq!(path, snap.display().to_string()),
            Err(other) => panic!("byte {at}: {other}"),
            Ok(_) => panic!("byte {at}: a corrupt snapshot was served"),
        }
    }
    std::fs::write(&snap, &good).unwrap();
    let manifest = dir.path().join("workspaces/w/MANIFEST");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("\"generation\":1", "\"generation\":2"),
    )
    .unwrap();
    match Engine::open(dir.path()) {
        Err(Error::Corrupt { path, .. }) => assert_eq!(path, manifest.display().to_string()),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a corrupt manifest was accepted"),
    }
    std::fs::write(&manifest, text).unwrap();
    open(dir.path());
}

#[test]
fn a_torn_tail_of_the_log_after_a_snapshot_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let e = setup(dir.path());
    let h = handle(&e);
    h.compact().unwrap();
    writes(&h, 1);
    let acknowledged = fingerprint(&h);
    let log = dir
        .path()
        .join("workspaces/w")
        .join(h.manifest().unwrap().log);
    drop((h, e));
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, &[9, 0, 0, 0, 1, 2]).unwrap();
    drop(f);
    let e = open(dir.path());
    assert_eq!(e.recoveries().len(), 1);
    assert_eq!(fingerprint(&handle(&e)), acknowledged);
}

#[test]
fn queries_keep_their_view_while_compaction_runs_and_nothing_is_counted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let e = setup(dir.path());
    let h = handle(&e);
    let f = segq::segment::parse("amplitude_cohorts includes c0 or random_bucket < 3000").unwrap();
    let count = |h: &WorkspaceHandle| {
        let (ws, _) = h.view();
        segq::query::count(&ws, h.bitmaps(), &f, false)
            .unwrap()
            .count
    };
    let before = count(&h);
    let (view, generation) = h.view();
    let h2 = h.clone();
    // Compaction runs while this query's view is held.
    let t = std::thread::spawn(move || h2.compact().unwrap());
    let during = segq::query::count(&view, h.bitmaps(), &f, false)
        .unwrap()
        .count;
    // The compaction moves the live state onto its snapshot under the
    // write lock, once the queries holding the old view are done.
    drop(view);
    let c = t.join().unwrap();
    assert_eq!(during, before);
    assert_eq!(c.seq, generation);
    assert_eq!(count(&h), before);
}

#[test]
fn thresholds_trigger_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let e = setup(dir.path());
    assert!(e.compact_due().is_empty(), "default thresholds are far");
    drop(e);
    // Lower the record threshold in the configuration.
    let cfg = dir.path().join("segq.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    c["compact_after_records"] = json!(3);
    std::fs::write(&cfg, c.to_string()).unwrap();
    let e = open(dir.path());
    let done = e.compact_due();
    assert_eq!(done.len(), 1);
    assert!(done[0].1.is_ok());
    assert!(e.compact_due().is_empty(), "nothing new to fold");
    writes(&handle(&e), 3);
    assert_eq!(e.compact_due().len(), 1);
}

/// Real file operations; the snapshot's first write waits at a gate (so
/// a test can act while a compaction is writing), and the manifest's
/// write can be made to fail like a crash.
struct GateFs {
    entered: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
    fail_manifest: bool,
}

impl Fs for GateFs {
    fn write(&mut self, path: &Path, bytes: &[u8]) -> segq::Result<()> {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".segqsnap.tmp") {
            self.entered.send(()).unwrap();
            self.release.recv().unwrap();
        }
        if name == "MANIFEST.tmp" && self.fail_manifest {
            return Err(Error::InvalidArgument("crash before the manifest".into()));
        }
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
        RealFs.create_log(path, first_seq)
    }
    fn remove(&mut self, path: &Path) -> segq::Result<()> {
        RealFs.remove(path)
    }
}

/// Starts a compaction that stops at its snapshot write; returns it and
/// the gate's release.
pub(crate) fn compaction_at_the_gate(
    h: &Arc<WorkspaceHandle>,
    fail_manifest: bool,
) -> (
    std::thread::JoinHandle<segq::Result<compact::Compacted>>,
    std::sync::mpsc::Sender<()>,
) {
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let h2 = h.clone();
    let t = std::thread::spawn(move || {
        h2.compact_with(&mut GateFs {
            entered: entered_tx,
            release: release_rx,
            fail_manifest,
        })
    });
    entered
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the compaction reaches its snapshot write");
    (t, release)
}

/// Runs `writes(h, r)` on another thread; fails if it does not finish in
/// time (a writer held off by the compaction).
fn writes_finish(h: &Arc<WorkspaceHandle>, r: u32) {
    let (done_tx, done) = std::sync::mpsc::channel();
    let h2 = h.clone();
    std::thread::spawn(move || {
        writes(&h2, r);
        done_tx.send(()).unwrap();
    });
    done.recv_timeout(std::time::Duration::from_secs(30))
        .expect("writes go on while the snapshot is written");
}

#[test]
fn writes_go_on_while_a_compaction_writes_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let e = setup(dir.path());
    let h = handle(&e);
    let frozen_at = h.view().1;
    let (t, release) = compaction_at_the_gate(&h, false);
    writes_finish(&h, 1);
    let acknowledged = fingerprint(&h);
    release.send(()).unwrap();
    let c = t.join().unwrap().unwrap();
    assert_eq!(
        c.seq, frozen_at,
        "the snapshot holds the state at the freeze"
    );
    assert_eq!(
        fingerprint(&h),
        acknowledged,
        "the writes made meanwhile stay"
    );
    // The writes made meanwhile are in the new generation's log.
    let m = h.manifest().unwrap();
    assert_eq!(m.log, compact::log_name(frozen_at + 1));
    assert!(h.log_backlog().0 > 0);
    drop((h, e));
    assert_eq!(fingerprint(&handle(&open(dir.path()))), acknowledged);
}

#[test]
fn a_workspace_is_not_due_for_compaction_while_one_runs() {
    // The compaction lets go of the file list while it writes its
    // snapshot, so the backlog still counts the logs it sealed; the
    // compactor must not queue a second compaction behind it.
    let dir = tempfile::tempdir().unwrap();
    drop(setup(dir.path()));
    let cfg = dir.path().join("segq.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    c["compact_after_records"] = json!(3);
    std::fs::write(&cfg, c.to_string()).unwrap();
    let e = open(dir.path());
    let h = handle(&e);
    assert!(h.compaction_due(e.config()));
    let (t, release) = compaction_at_the_gate(&h, false);
    assert!(!h.compaction_due(e.config()), "one runs");
    assert!(e.compact_due().is_empty());
    release.send(()).unwrap();
    t.join().unwrap().unwrap();
    assert!(!h.compaction_due(e.config()), "folded");
}

#[test]
fn a_crash_before_the_manifest_keeps_the_writes_made_during_the_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let e = setup(dir.path());
    let h = handle(&e);
    let (t, release) = compaction_at_the_gate(&h, true);
    writes_finish(&h, 1);
    let acknowledged = fingerprint(&h);
    release.send(()).unwrap();
    assert!(t.join().unwrap().is_err());
    assert_eq!(fingerprint(&h), acknowledged);
    // The first log, then the log the compaction started: both replayed.
    drop((h, e));
    let e = open(dir.path());
    let h = handle(&e);
    assert_eq!(fingerprint(&h), acknowledged);
    assert!(h.manifest().is_none(), "no generation was committed");
    writes(&h, 2);
    h.compact().unwrap();
    let later = fingerprint(&h);
    drop((h, e));
    assert_eq!(fingerprint(&handle(&open(dir.path()))), later);
    assert_eq!(files(dir.path()).len(), 3, "{:?}", files(dir.path()));
}

#[test]
fn a_log_that_starts_past_the_end_of_the_chain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = setup(dir.path());
    handle(&e).compact().unwrap();
    drop(e);
    let stray = dir
        .path()
        .join("workspaces/w")
        .join(compact::log_name(1_000));
    segq::log::create_file(&stray, 1_000).unwrap();
    match Engine::open(dir.path()) {
        Err(Error::Corrupt { path, reason }) => {
            assert_eq!(path, stray.display().to_string());
            assert!(reason.contains("starts at seq 1000"), "{reason}");
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a gap between logs went unnoticed"),
    }
}

#[test]
fn a_compacted_workspace_holds_only_the_changes_since_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let e = setup(dir.path());
    let h = handle(&e);
    let in_memory = |h: &WorkspaceHandle| {
        let ws = h.read();
        let changed: u64 = ws
            .cohorts
            .iter_sorted()
            .iter()
            .map(|c| c.members.added().len() + c.members.removed().len())
            .sum();
        (ws.users.delta_size(), changed)
    };
    assert_eq!(in_memory(&h).0 .0, 100, "before: every user in memory");
    h.compact().unwrap();
    assert_eq!(in_memory(&h), ((0, 0), 0), "after: all read from the map");
    writes(&h, 1);
    let ((users, identifiers), changed) = in_memory(&h);
    assert_eq!(users, 100);
    // 80 external ids, 100 devices, 14 aliases, one late identification.
    assert_eq!(identifiers, 195);
    assert!(changed > 0);
    let acknowledged = fingerprint(&h);
    drop((h, e));
    let e = open(dir.path());
    let h = handle(&e);
    assert_eq!(in_memory(&h).0 .0, 100, "a restart replays only the log");
    assert_eq!(fingerprint(&h), acknowledged);
}

#[test]
fn a_workspace_restored_from_a_snapshot_file_serves_it_and_takes_writes() {
    let spec = segq::workload::Spec {
        users: 30_000,
        cohorts: 12,
        seed: 5,
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gen.segqsnap");
    let (bytes, _) = segq::workload::write_snapshot("gen", spec, Vec::new()).unwrap();
    std::fs::write(&file, &bytes).unwrap();
    let generated = segq::workload::generate("gen", spec).unwrap().workspace;
    let data = dir.path().join("data");
    let e = open(&data);

    // A damaged file is refused with its path, and nothing is created.
    let bad = dir.path().join("bad.segqsnap");
    let mut damaged = bytes.clone();
    let at = damaged.len() / 2;
    damaged[at] ^= 0x10;
    std::fs::write(&bad, &damaged).unwrap();
    match e.restore_workspace("r", &bad) {
        Err(Error::Corrupt { path, .. }) => assert_eq!(path, bad.display().to_string()),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(e.workspace("r").is_none());
    assert!(!data.join("workspaces/r/MANIFEST").exists());

    let h = e.restore_workspace("r", &file).unwrap();
    assert_eq!(h.name(), "r");
    {
        let ws = h.read();
        assert_eq!(ws.users.len(), spec.users);
        assert_eq!(ws.users.delta_size(), (0, 0), "served from the file");
        for u in (0..spec.users).step_by(997) {
            let id = UserId(u);
            let rec = generated.users.get(id).unwrap();
            assert_eq!(ws.users.get(id), Some(rec.clone()));
            if let Some(ext) = &rec.external_id {
                let r = segq::UserRef::ExternalId(ext.to_string());
                assert_eq!(ws.users.lookup(&r), Some(id));
            }
        }
        let f = segq::segment::parse(
            "amplitude_cohorts includes c0 and not amplitude_cohorts includes c3",
        )
        .unwrap();
        assert_eq!(
            segq::segment::reference::count(&*ws, &f).unwrap(),
            segq::segment::reference::count(&generated, &f).unwrap()
        );
    }
    assert!(
        e.restore_workspace("r", &file).is_err(),
        "a workspace is not restored over"
    );
    // It takes writes, and a restart finds the file and the writes.
    e.create_key("r", Partner::Amplitude).unwrap();
    h.upsert_user(NewUser {
        external_id: Some("after-restore".into()),
        ..NewUser::default()
    })
    .unwrap();
    let acknowledged = persist::write_snapshot(&h.read(), 0).unwrap();
    drop((h, e));
    let e = open(&data);
    let h = e.workspace("r").unwrap();
    assert!(persist::write_snapshot(&h.read(), 0).unwrap() == acknowledged);
    assert_eq!(h.read().users.len(), spec.users + 1);
}

#[test]
fn files_of_a_restore_that_stopped_do_not_block_the_name_or_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let e = open(&data);
    // What a restore leaves when it stops before its manifest: a snapshot
    // and the empty log after it (here seq 5000).
    let folder = data.join("workspaces/late");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join(compact::snapshot_name(1)), b"partial").unwrap();
    segq::log::create_file(folder.join(compact::log_name(5_001)), 5_001).unwrap();
    assert!(e.create_workspace("late").unwrap());
    e.create_key("late", Partner::Amplitude).unwrap();
    let h = e.workspace("late").unwrap();
    h.upsert_user(NewUser {
        external_id: Some("u1".into()),
        ..NewUser::default()
    })
    .unwrap();
    drop((h, e));
    let e = open(&data);
    assert_eq!(e.workspace("late").unwrap().read().users.len(), 1);
    let mut left: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    left.sort();
    assert_eq!(left, vec![segq::engine::LOG_FILE.to_string()]);
}

#[test]
fn a_backup_is_not_restored_beside_the_workspace_whose_keys_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let e = setup(dir.path());
    let backup = dir.path().join("backup.segqsnap");
    std::fs::write(
        &backup,
        persist::write_snapshot(&handle(&e).read(), 0).unwrap(),
    )
    .unwrap();
    match e.restore_workspace("copy", &backup) {
        Err(Error::InvalidArgument(m)) => {
            assert!(m.contains("is a key of workspace w"), "{m}")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(e.workspace("copy").is_none());
    // Once the key is invalidated in the original, the copy may hold it
    // (as invalidated there too: its snapshot is taken again).
    let id = handle(&e).read().keys.keys().next().unwrap().clone();
    e.invalidate_key("w", &id).unwrap();
    std::fs::write(
        &backup,
        persist::write_snapshot(&handle(&e).read(), 0).unwrap(),
    )
    .unwrap();
    e.restore_workspace("copy", &backup).unwrap();
    drop(e);
    let e = open(dir.path());
    assert!(e.workspace("copy").is_some() && e.workspace("w").is_some());
}

#[test]
fn a_workspace_counts_its_compactions_their_time_and_how_long_writers_waited() {
    let dir = tempfile::tempdir().unwrap();
    let e = setup(dir.path());
    let h = handle(&e);
    assert_eq!(
        h.compaction_stats(),
        segq::engine::CompactionStats::default()
    );
    let c = h.compact().unwrap();
    assert!(c.writers_held_ms <= c.took_ms, "{c:?}");
    let s = h.compaction_stats();
    assert_eq!((s.done, s.failed, s.running), (1, 0, 0), "{s:?}");
    assert_eq!(s.last_millis, c.took_ms);
    assert!(
        s.millis >= c.took_ms && s.writers_held_millis <= s.millis,
        "{s:?}"
    );
    // A compaction that fails before its commit point counts as failed.
    writes(&h, 1);
    let mut fs = CrashFs {
        ops: 0,
        crash_after: 1,
    };
    assert!(h.compact_with(&mut fs).is_err());
    let s = h.compaction_stats();
    assert_eq!((s.done, s.failed, s.running), (1, 1, 0), "{s:?}");
}

/// The three identifier dictionaries of the snapshot `h`'s users are read
/// from, as bytes.
fn dictionaries(h: &WorkspaceHandle) -> Vec<Vec<u8>> {
    let ws = h.read();
    let snap = ws.users.snapshot().expect("on a snapshot").clone();
    SectionKind::DICTIONARIES
        .iter()
        .map(|k| snap.section_bytes(k[0]).expect("a version 5 file").to_vec())
        .collect()
}

#[test]
fn a_compaction_copies_the_dictionaries_only_while_no_user_changed() {
    use segq::UserRef::{Alias, DeviceId, ExternalId};
    let dir = tempfile::tempdir().unwrap();
    let e = setup(dir.path());
    let h = handle(&e);
    h.compact().unwrap();
    assert!(h.read().users.unchanged_snapshot().is_some());
    let first = dictionaries(&h);

    // Cohort changes only: the dictionaries are the same bytes.
    let body = json!({"partner_api_key": "k", "client_secret": "s", "cohort_id": "c9",
        "cohort_changes": [{"user_ids": ["u1", "u2", "u3"]}]});
    let req = parse_users_request(body.to_string().as_bytes()).unwrap();
    h.import_users(Partner::Amplitude, &req, Utc::now())
        .unwrap();
    assert!(h.read().users.unchanged_snapshot().is_some());
    h.compact().unwrap();
    assert_eq!(dictionaries(&h), first);

    // Each kind of change to users: the registry no longer says it is
    // unchanged, and the next snapshot's own dictionaries hold the change
    // (found, and gone, reading the file, not the memory).
    type Change = Box<dyn Fn(&WorkspaceHandle)>;
    let u = |s: &str| ExternalId(s.to_string());
    let d = |s: &str| DeviceId(s.to_string());
    let steps: Vec<(&str, Change, Vec<segq::UserRef>, Vec<segq::UserRef>)> = vec![
        (
            "a new user",
            Box::new(|h| {
                h.upsert_user(NewUser {
                    external_id: Some("new1".into()),
                    devices: vec!["dnew1".into()],
                    aliases: vec![],
                    bucket: None,
                })
                .unwrap();
            }),
            vec![u("new1"), d("dnew1")],
            vec![],
        ),
        (
            "a device for a snapshot user",
            Box::new(|h| {
                h.add_device(&ExternalId("u1".into()), "dx1").unwrap();
            }),
            vec![d("dx1")],
            vec![],
        ),
        (
            "an alias for a snapshot user",
            Box::new(|h| {
                h.add_alias(&ExternalId("u2".into()), "email", "two@x")
                    .unwrap();
            }),
            vec![Alias {
                label: "email".into(),
                name: "two@x".into(),
            }],
            vec![],
        ),
        (
            "an anonymous snapshot user identified",
            Box::new(|h| {
                h.identify(&DeviceId("d5".into()), "five").unwrap();
            }),
            vec![u("five")],
            vec![],
        ),
        (
            "a rename",
            Box::new(|h| {
                h.rename_external_id("u1", "u1b").unwrap();
            }),
            vec![u("u1b"), d("dx1")],
            vec![u("u1")],
        ),
        (
            "a deletion",
            Box::new(|h| {
                h.delete_users(&[ExternalId("u2".into())]).unwrap();
            }),
            vec![],
            vec![u("u2"), d("d2")],
        ),
        (
            "a merge",
            Box::new(|h| {
                h.merge_users(&ExternalId("u3".into()), &ExternalId("u4".into()))
                    .unwrap();
            }),
            vec![u("u4")],
            vec![u("u3")],
        ),
    ];
    for (what, change, found, gone) in steps {
        change(&h);
        assert!(h.read().users.unchanged_snapshot().is_none(), "{what}");
        h.compact().unwrap();
        assert!(h.read().users.unchanged_snapshot().is_some(), "{what}");
        let ws = h.read();
        let snap = ws.users.snapshot().unwrap().clone();
        for r in &found {
            let holder = snap.lookup(r).unwrap();
            assert!(holder.is_some(), "{what}: {r:?} is in the file");
            assert_eq!(holder, ws.users.lookup(r), "{what}: {r:?}");
        }
        for r in &gone {
            assert_eq!(
                snap.lookup(r).unwrap(),
                None,
                "{what}: {r:?} is not in the file"
            );
            assert_eq!(ws.users.lookup(r), None, "{what}: {r:?} is gone");
        }
    }
    // The merged device moved to its target, in the file.
    let ws = h.read();
    let snap = ws.users.snapshot().unwrap().clone();
    assert_eq!(
        snap.lookup(&d("d3")).unwrap(),
        ws.users.lookup(&u("u4")),
        "the merged device is the target's"
    );
}
