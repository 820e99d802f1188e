//! Recovery from damaged logs: torn tails are cut and reported, damaged
//! headers stop the open, unacknowledged creations are dropped.

use super::*;

/// Writes after a recovery, checks they are acknowledged, and that they and
/// everything before survive another restart with a clean log.
fn write_after_recovery(dir: &Path, engine: Arc<Engine>, key: &NewKey) {
    let h = handle(&engine, "acme");
    let created = h.upsert_user(new_user(Some("u-after"), &[], &[])).unwrap();
    assert!(created.created);
    let r = import(
        &engine,
        Partner::Amplitude,
        &key.key,
        json!({"cohort_id": "c", "cohort_changes": [{"user_ids": ["u-after", "u-4"]}]}),
        march(2),
    );
    assert_eq!(r.added, 2);
    let k2 = engine.create_key("acme", Partner::Mixpanel).unwrap();
    drop(h);
    let expected = engine_fingerprint(&engine);
    drop(engine);
    let engine = open(dir);
    assert!(
        engine.recoveries().is_empty(),
        "the recovered log should be clean now: {:?}",
        engine.recoveries()
    );
    assert_eq!(engine_fingerprint(&engine), expected);
    assert_eq!(authorized(&engine, Partner::Mixpanel, &k2.key).0, "acme");
    assert_eq!(authorized(&engine, Partner::Amplitude, &key.key).0, "acme");
}

#[test]
fn a_torn_tail_is_cut_and_reported_and_writing_goes_on() {
    // Garbage: a torn frame, a frame whose payload runs past the end, and
    // bytes that are not a record at all.
    let mut torn_payload = Vec::new();
    torn_payload.extend_from_slice(&100u32.to_le_bytes());
    torn_payload.extend_from_slice(&9999u64.to_le_bytes());
    torn_payload.extend_from_slice(&0u32.to_le_bytes());
    torn_payload.extend_from_slice(b"ten bytes!");
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("torn frame", vec![0x10, 0, 0, 0, 7], true),
        ("torn payload", torn_payload, true),
        ("garbage", vec![0xff; 40], false),
    ];
    for (what, garbage, torn) in cases {
        let dir = tempdir();
        let engine = open(dir.path());
        let key = small_workspace(&engine, "acme");
        small_workspace(&engine, "other");
        let acknowledged = engine_fingerprint(&engine);
        drop(engine);

        let path = log_path(dir.path(), "acme");
        let len = file_len(&path);
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&garbage);
        fs::write(&path, &bytes).unwrap();

        let engine = open(dir.path());
        let rec = engine.recoveries();
        assert_eq!(rec.len(), 1, "{what}: {rec:?}");
        let r = &rec[0];
        assert_eq!(r.path, path.display().to_string(), "{what}");
        assert_eq!(r.truncated_at, Some(len), "{what}");
        assert_eq!(r.valid_len, len, "{what}");
        assert_eq!(r.bytes_cut, garbage.len() as u64, "{what}");
        let damage = r.reason.clone().expect("a reason");
        assert_eq!(damage.offset(), len, "{what}");
        assert_eq!(damage.is_torn_tail(), torn, "{what}: {damage:?}");
        assert!(r.to_string().contains(&path.display().to_string()));
        assert_eq!(file_len(&path), len, "{what}: the tail is cut on disk");
        assert_eq!(engine_fingerprint(&engine), acknowledged, "{what}");
        write_after_recovery(dir.path(), engine, &key);
    }
}

#[test]
fn a_last_record_cut_in_the_middle_is_dropped() {
    let dir = tempdir();
    let engine = open(dir.path());
    let key = small_workspace(&engine, "acme");
    let path = log_path(dir.path(), "acme");
    let state_before_last = engine_fingerprint(&engine);
    let len_before_last = file_len(&path);
    let r = import(
        &engine,
        Partner::Amplitude,
        &key.key,
        json!({"cohort_id": "c", "cohort_changes": [
            {"user_ids": ["u-10", "u-11", "u-12", "u-13", "u-14"]}]}),
        march(1),
    );
    assert_eq!(r.added, 5);
    drop(engine);
    let len = file_len(&path);
    assert!(len > len_before_last + RECORD_HEADER_LEN);

    // Cut inside the payload, then (another run) inside the frame.
    for cut_at in [
        (len_before_last + len) / 2,
        len_before_last + RECORD_HEADER_LEN / 2,
    ] {
        let dir2 = tempdir();
        copy_dir(dir.path(), dir2.path());
        let path2 = log_path(dir2.path(), "acme");
        let f = fs::OpenOptions::new().write(true).open(&path2).unwrap();
        f.set_len(cut_at).unwrap();
        drop(f);

        let engine = open(dir2.path());
        let rec = engine.recoveries();
        assert_eq!(rec.len(), 1, "{rec:?}");
        assert_eq!(rec[0].truncated_at, Some(len_before_last));
        assert_eq!(rec[0].bytes_cut, cut_at - len_before_last);
        assert!(matches!(
            rec[0].reason,
            Some(Damage::TornPayload { .. } | Damage::TornFrame { .. })
        ));
        assert_eq!(file_len(&path2), len_before_last);
        assert_eq!(engine_fingerprint(&engine), state_before_last);
        write_after_recovery(dir2.path(), engine, &key);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            fs::create_dir_all(&target).unwrap();
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_damaged_log_header_stops_the_open_with_an_error_naming_the_file() {
    let dir = tempdir();
    let engine = open(dir.path());
    small_workspace(&engine, "acme");
    small_workspace(&engine, "other");
    let expected = engine_fingerprint(&engine);
    drop(engine);
    let path = log_path(dir.path(), "acme");
    let good = fs::read(&path).unwrap();
    assert!(good.len() as u64 > HEADER_LEN);

    // Magic, version, first_seq, the header checksum.
    for offset in [0usize, 3, 8, 13, 19, 20, 23] {
        let mut bad = good.clone();
        bad[offset] ^= 0x04;
        fs::write(&path, &bad).unwrap();
        match Engine::open(dir.path()) {
            Ok(_) => panic!("opened with a damaged header (byte {offset})"),
            Err(e) => {
                assert!(
                    matches!(&e, Error::Log(l) if l.is_bad_header()),
                    "byte {offset}: {e:?}"
                );
                assert!(
                    e.to_string().contains(&path.display().to_string()),
                    "byte {offset}: the error should name the log: {e}"
                );
            }
        }
        assert_eq!(
            fs::read(&path).unwrap(),
            bad,
            "byte {offset}: a failed open must not change the log"
        );
    }
    // Repaired, it opens as before.
    fs::write(&path, &good).unwrap();
    let engine = open(dir.path());
    assert!(engine.recoveries().is_empty());
    assert_eq!(engine_fingerprint(&engine), expected);
}

#[test]
fn a_workspace_whose_creation_was_never_acknowledged_is_dropped() {
    let dir = tempdir();
    let engine = open(dir.path());
    small_workspace(&engine, "acme");
    drop(engine);

    // Header only: the creation record never reached the disk.
    let ws = dir.path().join("workspaces");
    fs::create_dir_all(ws.join("ghost")).unwrap();
    drop(segq::log::create_file(ws.join("ghost").join(LOG_FILE), 1).unwrap());
    // Header and a torn creation record.
    fs::create_dir_all(ws.join("torn")).unwrap();
    drop(segq::log::create_file(ws.join("torn").join(LOG_FILE), 1).unwrap());
    let mut bytes = fs::read(ws.join("torn").join(LOG_FILE)).unwrap();
    bytes.extend_from_slice(&[30, 0, 0, 0, 1, 0]);
    fs::write(ws.join("torn").join(LOG_FILE), bytes).unwrap();
    // A folder whose log was never even renamed into place.
    fs::create_dir_all(ws.join("tmponly")).unwrap();
    fs::write(ws.join("tmponly").join(format!("{LOG_FILE}.tmp")), b"SEGQ").unwrap();

    let engine = open(dir.path());
    assert_eq!(engine.workspace_names(), vec!["acme".to_string()]);
    for name in ["ghost", "torn", "tmponly"] {
        assert!(engine.workspace(name).is_none(), "{name}");
        assert!(engine.create_workspace(name).unwrap(), "{name}");
        handle(&engine, name)
            .upsert_user(new_user(Some("u-1"), &[], &[]))
            .unwrap();
    }
    let expected = engine_fingerprint(&engine);
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(
        engine.workspace_names(),
        vec!["acme", "ghost", "tmponly", "torn"]
    );
    assert_eq!(engine_fingerprint(&engine), expected);
}

/// Damage to the first record of a workspace that holds data is not a
/// creation that was never acknowledged: it must not make the workspace
/// (and its log) disappear without a word.
#[test]
fn a_damaged_first_record_does_not_silently_delete_the_workspace() {
    let dir = tempdir();
    let engine = open(dir.path());
    small_workspace(&engine, "acme");
    drop(engine);
    let path = log_path(dir.path(), "acme");
    let mut bytes = fs::read(&path).unwrap();
    let len = bytes.len();
    // A byte of the first record's payload (the WorkspaceCreated change).
    bytes[(HEADER_LEN + RECORD_HEADER_LEN) as usize] ^= 0x01;
    fs::write(&path, &bytes).unwrap();

    let shown = path.display().to_string();
    match Engine::open(dir.path()) {
        Err(e) => assert!(e.to_string().contains(&shown), "{e}"),
        Ok((engine, _)) => {
            let reported = engine.recoveries().iter().any(|r| r.path == shown);
            assert!(
                reported || engine.workspace("acme").is_some(),
                "workspace acme ({len} bytes of log) vanished: not served, not reported \
                 in recoveries(), log file exists: {}",
                path.exists()
            );
        }
    }
}
