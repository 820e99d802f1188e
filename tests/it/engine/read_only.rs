//! Opening read-only: reads everything, refuses writes, changes nothing
//! on disk.

use super::*;

#[test]
fn opening_read_only_changes_nothing_and_ignores_a_torn_tail_in_memory() {
    let dir = tempdir();
    let engine = open(dir.path());
    let key = small_workspace(&engine, "acme");
    engine.compact("acme").unwrap();
    import(
        &engine,
        Partner::Amplitude,
        &key.key,
        json!({"cohort_id": "c", "cohort_changes": [{"user_ids": ["u-7"]}]}),
        march(3),
    );
    small_workspace(&engine, "beta");
    let expected: Vec<u32> = members(&engine, "acme", Partner::Amplitude, "c");
    drop(engine);
    // A torn tail on both kinds of log, litter a read-write open removes,
    // and no configuration.
    let acme = dir.path().join("workspaces/acme");
    let acme_log = fs::read_dir(&acme)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "segqlog"))
        .unwrap();
    for log in [acme_log, log_path(dir.path(), "beta")] {
        let mut bytes = fs::read(&log).unwrap();
        bytes.extend_from_slice(&[9, 0, 0, 0, 1, 2]);
        fs::write(&log, bytes).unwrap();
    }
    fs::write(acme.join("snap-00000000000000000009.segqsnap.tmp"), b"x").unwrap();
    fs::remove_file(dir.path().join("segq.json")).unwrap();
    let before = files_fingerprint(dir.path());

    let ro = Engine::open_read_only(dir.path()).unwrap();
    assert!(ro.is_read_only());
    assert_eq!(members(&ro, "acme", Partner::Amplitude, "c"), expected);
    assert_eq!(ro.recoveries().len(), 2, "both torn tails seen");
    // Writes are refused, and change nothing.
    assert!(ro.create_workspace("gamma").is_err());
    assert!(ro.create_key("acme", Partner::Heap).is_err());
    assert!(handle(&ro, "acme")
        .upsert_user(new_user(Some("new"), &[], &[]))
        .is_err());
    assert!(ro.compact("acme").is_err());
    let elsewhere = tempdir();
    assert!(ro
        .restore_workspace("delta", &generated_snapshot(elsewhere.path()))
        .is_err());
    drop(ro);
    assert_eq!(files_fingerprint(dir.path()), before, "nothing changed");

    // Beside a read-write engine holding the LOCK, too.
    let rw = open(dir.path());
    let ro = Engine::open_read_only(dir.path()).unwrap();
    assert_eq!(members(&ro, "acme", Partner::Amplitude, "c"), expected);
    drop((ro, rw));

    // Not a data directory: refused, nothing made.
    let missing = dir.path().join("missing");
    assert!(Engine::open_read_only(&missing).is_err());
    assert!(!missing.exists());
}
