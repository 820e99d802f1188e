//! The durable change log: format round trips, group commit, recovery from
//! crashes at every write and sync, damage, failures, and real files.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use segq::log::{
    create_file, encode_record, open_file, Damage, FaultyFile, LogError, LogFile, LogWriter,
    Replay, HEADER_LEN, MAX_PAYLOAD, RECORD_HEADER_LEN,
};

/// Deterministic bytes for record `i` of length `len`.
fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (i.wrapping_mul(131) as usize + k * 7 + (k >> 8)) as u8)
        .collect()
}

/// "Reboots" on a disk image: a fresh file holding exactly those bytes.
fn reboot(image: Vec<u8>) -> (FaultyFile, Result<(LogWriter, Replay), LogError>) {
    let f = FaultyFile::from_disk(image);
    let r = LogWriter::open(f.clone());
    (f, r)
}

fn seqs_and_payloads(replay: &Replay) -> Vec<(u64, Vec<u8>)> {
    replay
        .records
        .iter()
        .map(|r| (r.seq, r.payload.clone()))
        .collect()
}

#[test]
fn round_trip_of_records_of_various_sizes() {
    let sizes = [0usize, 1, 2, 15, 16, 17, 1000, 1 << 20, 0, 3, 65_536, 1];
    let f = FaultyFile::named("round-trip");
    let w = LogWriter::create(f.clone(), 1).unwrap();
    let mut written = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let p = payload(i as u64, len);
        let seq = w.append(&p).unwrap();
        assert_eq!(seq, i as u64 + 1);
        written.push((seq, p));
    }
    let batch: Vec<Vec<u8>> = (0..5).map(|i| payload(100 + i, i as usize * 3)).collect();
    let seqs = w.append_batch(&batch).unwrap();
    assert_eq!(seqs, 13..18);
    written.extend(seqs.zip(batch));
    assert_eq!(w.durable_seq(), Some(17));
    assert_eq!(f.unsynced_len(), 0, "every acknowledged byte is synced");
    drop(w);

    let (f2, r) = reboot(f.crash(0));
    let (w2, replay) = r.unwrap();
    assert_eq!(seqs_and_payloads(&replay), written);
    let rec = &replay.recovery;
    assert!(rec.is_clean(), "{rec}");
    assert_eq!(
        (rec.first_seq, rec.records, rec.last_seq),
        (1, 17, Some(17))
    );
    assert_eq!((rec.truncated_at, rec.bytes_cut), (None, 0));
    let expected_len: u64 = HEADER_LEN
        + written
            .iter()
            .map(|(_, p)| RECORD_HEADER_LEN + p.len() as u64)
            .sum::<u64>();
    assert_eq!(rec.valid_len, expected_len);
    assert_eq!(rec.file_len, expected_len);

    // Appends continue after the replayed ones.
    assert_eq!(w2.next_seq(), 18);
    assert_eq!(w2.append(b"after reopen").unwrap(), 18);
    drop(w2);
    let (_, r) = reboot(f2.crash(0));
    let (_, replay) = r.unwrap();
    assert_eq!(replay.records.len(), 18);
    assert_eq!(replay.records[17].payload, b"after reopen");
}

#[test]
fn a_payload_over_the_maximum_is_refused_and_nothing_is_appended() {
    let f = FaultyFile::new();
    let w = LogWriter::create(f.clone(), 1).unwrap();
    let big = vec![0u8; MAX_PAYLOAD + 1];
    let err = w.append(&big).unwrap_err();
    assert!(
        matches!(err, LogError::PayloadTooLarge { found } if found == MAX_PAYLOAD + 1),
        "{err}"
    );
    assert!(err.to_string().contains("at most 67108864 bytes"), "{err}");
    let err = w
        .append_batch(&[b"ok".to_vec(), big.clone(), b"ok".to_vec()])
        .unwrap_err();
    assert!(matches!(err, LogError::PayloadTooLarge { .. }));
    assert!(!w.is_poisoned());
    assert_eq!(w.append(b"next").unwrap(), 1, "refused records took no seq");
    drop(w);
    let (_, r) = reboot(f.crash(0));
    assert_eq!(r.unwrap().1.records.len(), 1);
}

#[test]
fn a_log_started_after_a_snapshot_begins_at_its_first_seq() {
    let f = FaultyFile::new();
    let w = LogWriter::create(f.clone(), 1001).unwrap();
    assert_eq!(w.first_seq(), 1001);
    assert_eq!(w.durable_seq(), None);
    assert_eq!(w.append(b"x").unwrap(), 1001);
    assert_eq!(w.append(b"y").unwrap(), 1002);
    drop(w);
    let image = f.crash(0);
    assert_eq!(&image[12..20], &1001u64.to_le_bytes());
    let (_, r) = reboot(image);
    let (w, replay) = r.unwrap();
    assert_eq!(replay.recovery.first_seq, 1001);
    assert_eq!(
        replay.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1001, 1002]
    );
    assert_eq!(w.next_seq(), 1003);

    // An empty log reopened keeps its first seq.
    let f = FaultyFile::new();
    drop(LogWriter::create(f.clone(), 77).unwrap());
    let (_, r) = reboot(f.crash(0));
    let (w, replay) = r.unwrap();
    assert!(replay.records.is_empty());
    assert_eq!(replay.recovery.last_seq, None);
    assert_eq!(w.append(b"z").unwrap(), 77);
}

#[test]
fn concurrent_appenders_share_fsyncs() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 500;
    let f = FaultyFile::named("group-commit");
    let w = Arc::new(LogWriter::create(f.clone(), 1).unwrap());
    let syncs_before = f.stats().syncs;
    // A real fsync takes time; while it runs, other appenders queue up.
    f.set_sync_delay(Duration::from_millis(1));

    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let w = Arc::clone(&w);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let item = |i: u64| {
                    let mut p = t.to_le_bytes().to_vec();
                    p.extend_from_slice(&i.to_le_bytes());
                    p.extend(payload(t * 1000 + i, (i % 13) as usize));
                    p
                };
                if t < 6 {
                    for i in 0..PER_THREAD {
                        let p = item(i);
                        got.push((w.append(&p).unwrap(), p));
                    }
                } else {
                    // Two threads append batches of 5: their seqs must be
                    // consecutive, with nothing interleaved.
                    for b in 0..PER_THREAD / 5 {
                        let ps: Vec<Vec<u8>> = (b * 5..b * 5 + 5).map(item).collect();
                        let seqs = w.append_batch(&ps).unwrap();
                        assert_eq!(seqs.end - seqs.start, 5);
                        got.extend(seqs.zip(ps));
                    }
                }
                got
            })
        })
        .collect();
    let mut all = BTreeMap::new();
    for h in handles {
        let got = h.join().unwrap();
        assert!(
            got.windows(2).all(|p| p[0].0 < p[1].0),
            "a thread's seqs increase"
        );
        for (seq, p) in got {
            assert!(all.insert(seq, p).is_none(), "seq {seq} handed out twice");
        }
    }
    let total = THREADS * PER_THREAD;
    assert_eq!(all.len() as u64, total);
    assert_eq!(
        all.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );

    let syncs = f.stats().syncs - syncs_before;
    let stats = w.stats();
    assert_eq!(stats.commits, syncs);
    assert_eq!(stats.records, total);
    assert!(
        syncs * 3 <= total,
        "group commit: {syncs} fsyncs for {total} records"
    );
    eprintln!("group commit: {total} records, {syncs} fsyncs");

    drop(w);
    let (_, r) = reboot(f.crash(0));
    let (_, replay) = r.unwrap();
    assert!(replay.recovery.is_clean());
    let replayed: BTreeMap<u64, Vec<u8>> = seqs_and_payloads(&replay).into_iter().collect();
    assert_eq!(replayed, all);
}

/// The sequential crash scenario: returns whether `create` succeeded, the
/// payloads in seq order (from `FIRST`), and how many were acknowledged.
const FIRST: u64 = 100;
fn scenario(f: &FaultyFile) -> (bool, Vec<Vec<u8>>, usize) {
    let mut written = Vec::new();
    let mut acked = 0;
    let Ok(w) = LogWriter::create(f.clone(), FIRST) else {
        return (false, written, acked);
    };
    // Stops at the first error, as a server whose disk died would.
    let _ = scenario_steps(&w, &mut written, &mut acked);
    (true, written, acked)
}

/// Each payload is recorded in `written` before it is appended: a record
/// whose append fails may still be found by recovery.
fn scenario_steps(
    w: &LogWriter,
    written: &mut Vec<Vec<u8>>,
    acked: &mut usize,
) -> Result<(), LogError> {
    for (i, len) in [(0u64, 0usize), (1, 1)] {
        let p = payload(i, len);
        written.push(p.clone());
        w.append(&p)?;
        *acked += 1;
    }
    let ps = vec![payload(2, 20), payload(3, 5), payload(4, 0)];
    written.extend(ps.iter().cloned());
    w.append_batch(&ps)?;
    *acked += 3;

    let p = payload(5, 300);
    written.push(p.clone());
    w.append(&p)?;
    *acked += 1;

    // Two submits, one wait: one write and one sync for both.
    let (a, b) = (payload(6, 9), payload(7, 33));
    written.push(a.clone());
    w.submit(&a)?;
    written.push(b.clone());
    let seq = w.submit(&b)?;
    w.wait_durable(seq)?;
    *acked += 2;

    let p = payload(8, 40);
    written.push(p.clone());
    w.append(&p)?;
    *acked += 1;
    Ok(())
}

/// Checks one crash image: the records recovered are exactly a prefix of
/// those written that holds every acknowledged one, and the log accepts
/// appends afterwards. Returns how many records were recovered.
fn check_image(image: Vec<u8>, created: bool, written: &[Vec<u8>], acked: usize) -> usize {
    let (f, r) = reboot(image.clone());
    let (w, replay) = match r {
        Ok(x) => x,
        Err(e) => {
            assert!(
                !created && e.is_bad_header(),
                "only a log whose creation failed may lack a header: {e}"
            );
            assert!(image.len() < HEADER_LEN as usize);
            return 0;
        }
    };
    let k = replay.records.len();
    assert!(k >= acked, "lost an acknowledged record: {k} < {acked}");
    assert!(k <= written.len());
    for (i, rec) in replay.records.iter().enumerate() {
        assert_eq!(rec.seq, FIRST + i as u64);
        assert_eq!(rec.payload, written[i], "record {} differs", rec.seq);
    }
    let rec = &replay.recovery;
    if rec.bytes_cut > 0 {
        // A crash that keeps a prefix of the bytes can only tear the tail.
        assert!(rec.reason.as_ref().unwrap().is_torn_tail(), "{rec}");
        assert_eq!(f.durable().len() as u64, rec.valid_len, "cut and synced");
    }
    // The log goes on cleanly after recovery.
    assert_eq!(w.append(b"after").unwrap(), FIRST + k as u64);
    drop(w);
    let (_, r) = reboot(f.crash(0));
    let (_, again) = r.unwrap();
    assert!(again.recovery.is_clean());
    assert_eq!(again.records.len(), k + 1);
    k
}

#[test]
fn a_crash_after_any_write_or_sync_loses_nothing_acknowledged() {
    // Count the operations of an uninterrupted run.
    let probe = FaultyFile::new();
    let (created, written, acked) = scenario(&probe);
    assert!(created);
    assert_eq!((written.len(), acked), (9, 9));
    let total_ops = probe.stats().ops;
    assert_eq!(total_ops, 14, "7 writes and 7 syncs");

    let mut images = 0;
    let mut recovered_counts = std::collections::BTreeSet::new();
    for crash_at in 0..=total_ops {
        let f = FaultyFile::named("crash");
        f.crash_after_ops(crash_at);
        let (created, written, acked) = scenario(&f);
        let unsynced = f.unsynced_len();
        // Every possible torn prefix of the unsynced bytes, 0 to all.
        for keep in 0..=unsynced {
            let image = f.crash(keep);
            recovered_counts.insert(check_image(image, created, &written, acked));
            images += 1;
        }
    }
    eprintln!("{images} crash images checked");
    assert!(images > 400, "{images} crash images checked");
    // Every prefix length, from nothing to everything, was reached.
    assert_eq!(recovered_counts, (0..=9).collect());
}

#[test]
fn a_crash_during_concurrent_appends_loses_nothing_acknowledged() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 40;
    // At most 4 records per commit: at least 2 + 2 * 160 / 4 = 82 operations
    // run, so every crash point below is reached.
    for crash_at in [3u64, 8, 21, 40, 61, 80] {
        let f = FaultyFile::named("crash-mt");
        f.set_sync_delay(Duration::from_micros(200));
        let w = Arc::new(LogWriter::create(f.clone(), 1).unwrap());
        f.crash_after_ops(crash_at);
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let w = Arc::clone(&w);
                std::thread::spawn(move || {
                    let mut acked = 0u64;
                    for i in 0..PER_THREAD {
                        let mut p = vec![t as u8];
                        p.extend_from_slice(&i.to_le_bytes());
                        p.extend(payload(i, (i * 7 % 50) as usize));
                        match w.append(&p) {
                            Ok(_) => acked += 1,
                            Err(e) => {
                                assert!(e.is_poisoned(), "{e}");
                                break;
                            }
                        }
                    }
                    acked
                })
            })
            .collect();
        let acked: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(f.is_crashed());
        let unsynced = f.unsynced_len();
        let mut keeps = vec![0, 1, 15, 16, 17, unsynced / 3, unsynced / 2, unsynced];
        keeps.retain(|&k| k <= unsynced);
        for keep in keeps {
            let (_, r) = reboot(f.crash(keep));
            let (_, replay) = r.unwrap();
            let mut per_thread = vec![Vec::new(); THREADS as usize];
            for (n, rec) in replay.records.iter().enumerate() {
                assert_eq!(rec.seq, 1 + n as u64);
                let t = rec.payload[0] as usize;
                let i = u64::from_le_bytes(rec.payload[1..9].try_into().unwrap());
                assert_eq!(&rec.payload[9..], payload(i, (i * 7 % 50) as usize));
                per_thread[t].push(i);
            }
            for t in 0..THREADS as usize {
                let got = &per_thread[t];
                // In order, no gaps, every acknowledged one, at most the one
                // that failed beyond.
                assert_eq!(*got, (0..got.len() as u64).collect::<Vec<_>>());
                assert!(got.len() as u64 >= acked[t], "thread {t} lost acked");
                assert!(got.len() as u64 <= acked[t] + 1);
            }
        }
    }
}

/// A log of `n` records of 100 bytes from seq 1, fully synced.
fn hundred_byte_log(n: u64) -> Vec<u8> {
    let f = FaultyFile::new();
    let w = LogWriter::create(f.clone(), 1).unwrap();
    for i in 0..n {
        w.append(&payload(i, 100)).unwrap();
    }
    drop(w);
    f.crash(0)
}
const REC: u64 = RECORD_HEADER_LEN + 100;

#[test]
fn a_flipped_byte_in_the_middle_cuts_the_log_at_that_record() {
    let clean = hundred_byte_log(10);
    let at = HEADER_LEN + 5 * REC; // record 6 (seq 6)

    // In the payload, in the seq, in the stored crc: a checksum mismatch.
    for pos in [at + 16 + 50, at + 5, at + 13] {
        let mut image = clean.clone();
        image[pos as usize] ^= 0x10;
        let (f, r) = reboot(image);
        let (w, replay) = r.unwrap();
        assert_eq!(replay.records.len(), 5);
        let rec = &replay.recovery;
        assert!(
            matches!(rec.reason, Some(Damage::BadChecksum { offset, .. }) if offset == at),
            "{rec}"
        );
        assert_eq!(rec.truncated_at, Some(at));
        assert_eq!(rec.bytes_cut, 5 * REC, "the bad record and the 4 after it");
        assert_eq!(rec.last_seq, Some(5));
        assert!(rec
            .to_string()
            .contains(&format!("cut {} byte(s)", 5 * REC)));
        assert_eq!(f.durable().len() as u64, at, "truncated and synced");
        assert_eq!(w.append(b"new").unwrap(), 6);
    }

    // In the length: the frame no longer matches, whatever it now says.
    let mut image = clean.clone();
    image[at as usize + 1] ^= 0x01; // len 100 -> 356: runs past record 7
    let (_, r) = reboot(image);
    let rec = r.unwrap().1.recovery;
    assert_eq!(rec.truncated_at, Some(at));
    assert!(
        matches!(rec.reason, Some(Damage::BadChecksum { .. })),
        "{rec}"
    );

    let mut image = clean.clone();
    image[at as usize + 3] ^= 0x80; // len > MAX_PAYLOAD
    let (_, r) = reboot(image);
    let rec = r.unwrap().1.recovery;
    assert!(matches!(rec.reason, Some(Damage::Oversized { offset, .. }) if offset == at));

    // A whole record missing in the middle: the next one is out of sequence.
    let mut image = clean.clone();
    image.drain(at as usize..(at + REC) as usize);
    let (_, r) = reboot(image);
    let (_, replay) = r.unwrap();
    assert_eq!(replay.records.len(), 5);
    assert_eq!(
        replay.recovery.reason,
        Some(Damage::WrongSeq {
            offset: at,
            expected: 6,
            found: 7
        })
    );
    assert_eq!(replay.recovery.bytes_cut, 4 * REC);

    // `scan` reports the same without touching the file.
    let mut image = clean.clone();
    image[(at + 40) as usize] ^= 1;
    let mut f = FaultyFile::from_disk(image.clone());
    let replay = LogWriter::scan(&mut f).unwrap();
    assert_eq!(replay.records.len(), 5);
    assert_eq!(replay.recovery.truncated_at, Some(at));
    assert_eq!(f.contents(), image);
    assert_eq!(f.stats().truncates + f.stats().syncs, 0);
}

#[test]
fn a_flipped_byte_in_the_header_is_a_clear_error() {
    let clean = hundred_byte_log(3);
    for pos in 0..HEADER_LEN as usize {
        for bit in [0x01u8, 0x80] {
            let mut image = clean.clone();
            image[pos] ^= bit;
            let f = FaultyFile::named("hdr");
            {
                let mut g = f.clone();
                g.append(&image).unwrap();
                g.sync().unwrap();
            }
            let err = LogWriter::open(f.clone()).unwrap_err();
            assert!(err.is_bad_header(), "byte {pos}: {err}");
            let msg = err.to_string();
            assert!(msg.starts_with("memory:hdr: "), "{msg}");
            match pos {
                0..=7 => assert!(matches!(err, LogError::BadMagic { .. }), "{msg}"),
                8..=11 => assert!(
                    matches!(err, LogError::UnsupportedVersion { expected: 1, .. }),
                    "{msg}"
                ),
                _ => assert!(matches!(err, LogError::HeaderChecksum { .. }), "{msg}"),
            }
            // Nothing was cut.
            assert_eq!(f.contents(), image);
            assert_eq!(f.stats().truncates, 0);
        }
    }
    let (_, r) = reboot(b"hello, this is not a log at all".to_vec());
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("not a segq log") && msg.contains("hello, t"),
        "{msg}"
    );
    let (_, r) = reboot(Vec::new());
    assert!(matches!(
        r.unwrap_err(),
        LogError::TruncatedHeader {
            expected: 24,
            found: 0,
            ..
        }
    ));
}

#[test]
fn a_failed_sync_poisons_the_writer_until_it_is_reset() {
    let f = FaultyFile::named("sync-fails");
    let w = LogWriter::create(f.clone(), 1).unwrap(); // sync #1
    assert_eq!(w.append(b"one").unwrap(), 1); // sync #2
    f.fail_sync(3);
    let err = w.append(b"two").unwrap_err();
    assert!(
        matches!(
            err,
            LogError::CommitFailed {
                op: "sync",
                first_seq: 2,
                last_seq: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("until it is reset"), "{err}");
    assert!(w.is_poisoned());
    for _ in 0..3 {
        let err = w.append(b"three").unwrap_err();
        assert!(
            matches!(err, LogError::Poisoned { op: "sync", .. }),
            "{err}"
        );
        assert!(err.is_poisoned());
    }
    assert!(w.submit(b"x").is_err());
    assert!(w.append_batch(&[b"y"]).is_err());
    w.wait_durable(1).unwrap(); // still durable
    assert_eq!(w.durable_seq(), Some(1));
    assert_eq!(f.stats().syncs, 3, "nothing was tried after the poison");
    // The failed record is never acknowledged.
    assert!(matches!(
        w.wait_durable(2),
        Err(LogError::CommitFailed { first_seq: 2, .. })
    ));

    // Whatever the failed sync left, a restart finds "one", maybe "two",
    // never "three".
    let unsynced = f.unsynced_len();
    assert!(unsynced > 0);
    for keep in 0..=unsynced {
        let (_, r) = reboot(f.crash(keep));
        let payloads: Vec<Vec<u8>> = r
            .unwrap()
            .1
            .records
            .into_iter()
            .map(|r| r.payload)
            .collect();
        assert!(payloads == [b"one".to_vec()] || payloads == [b"one".to_vec(), b"two".to_vec()]);
    }
}

#[test]
fn a_failed_write_poisons_the_writer_and_its_torn_bytes_are_cut() {
    let f = FaultyFile::named("write-fails");
    let w = LogWriter::create(f.clone(), 1).unwrap(); // write #1
    w.append(b"one").unwrap(); // write #2
    f.fail_write(3, 7); // 7 bytes of the next record land, then an error
    let err = w.append(b"two").unwrap_err();
    assert!(
        matches!(err, LogError::CommitFailed { op: "write", .. }),
        "{err}"
    );
    assert!(matches!(w.append(b"three"), Err(LogError::Poisoned { .. })));
    let (_, r) = reboot(f.crash(usize::MAX));
    let replay = r.unwrap().1;
    assert_eq!(replay.records.len(), 1);
    assert_eq!(
        replay.recovery.reason,
        Some(Damage::TornFrame {
            offset: HEADER_LEN + RECORD_HEADER_LEN + 3,
            available: 7
        })
    );
}

#[test]
fn every_waiter_of_a_failed_batch_gets_an_error() {
    let f = FaultyFile::named("batch-fails");
    f.set_sync_delay(Duration::from_millis(2));
    let w = Arc::new(LogWriter::create(f.clone(), 1).unwrap());
    f.fail_sync(4);
    let handles: Vec<_> = (0..6u8)
        .map(|t| {
            let w = Arc::clone(&w);
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0..50u8 {
                    match w.append(&[t, i]) {
                        Ok(seq) => acked.push(seq),
                        Err(e) => {
                            assert!(e.is_poisoned(), "{e}");
                            return (acked, true);
                        }
                    }
                }
                (acked, false)
            })
        })
        .collect();
    let mut acked = Vec::new();
    for h in handles {
        let (a, failed) = h.join().unwrap();
        assert!(failed, "every thread ends with an error");
        acked.extend(a);
    }
    acked.sort_unstable();
    // Two good commits after the header's sync, then the failure.
    let durable = w.durable_seq().unwrap_or(0);
    assert_eq!(acked, (1..=durable).collect::<Vec<_>>());
    let (_, r) = reboot(f.crash(0));
    assert_eq!(r.unwrap().1.records.len() as u64, durable);
}

#[test]
fn a_real_file_round_trip_with_reopen_and_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("workspace.log");
    let w = create_file(&path, 1).unwrap();
    assert_eq!(w.path(), path.display().to_string());
    let mut written = vec![
        payload(0, 0),
        payload(1, 1),
        payload(2, 1 << 20),
        payload(3, 77),
    ];
    for p in &written {
        w.append(p).unwrap();
    }
    let batch = vec![payload(4, 5), payload(5, 0)];
    assert_eq!(w.append_batch(&batch).unwrap(), 5..7);
    written.extend(batch);
    drop(w);
    assert!(!dir.path().join("workspace.log.tmp").exists());
    assert!(matches!(
        create_file(&path, 1),
        Err(LogError::AlreadyExists { .. })
    ));

    let (w, replay) = open_file(&path).unwrap();
    assert!(replay.recovery.is_clean());
    let got: Vec<Vec<u8>> = replay.records.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(got, written);
    assert_eq!(w.append(b"after reopen").unwrap(), 7);
    written.push(b"after reopen".to_vec());
    drop(w);

    // A torn record at the end, as a crash mid-write leaves it.
    let good_len = std::fs::metadata(&path).unwrap().len();
    let torn = encode_record(8, b"never acknowledged").unwrap();
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(&torn[..20]).unwrap();
    }
    let (w, replay) = open_file(&path).unwrap();
    let rec = &replay.recovery;
    assert_eq!(rec.truncated_at, Some(good_len));
    assert_eq!(rec.bytes_cut, 20);
    assert!(rec.reason.as_ref().unwrap().is_torn_tail(), "{rec}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
    assert_eq!(replay.records.len(), 7);
    assert_eq!(w.append(b"after recovery").unwrap(), 8);
    written.push(b"after recovery".to_vec());
    drop(w);

    let (_, replay) = open_file(&path).unwrap();
    assert!(replay.recovery.is_clean());
    let got: Vec<Vec<u8>> = replay.records.into_iter().map(|r| r.payload).collect();
    assert_eq!(got, written);
}

#[test]
fn real_files_that_are_not_logs_are_refused_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "this is a text file, not a log").unwrap();
    let err = open_file(&text).unwrap_err();
    assert!(matches!(err, LogError::BadMagic { .. }));
    assert!(
        err.to_string().starts_with(&text.display().to_string()),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&text).unwrap(),
        b"this is a text file, not a log"
    );

    let empty = dir.path().join("empty.log");
    std::fs::write(&empty, b"").unwrap();
    let err = open_file(&empty).unwrap_err();
    assert!(
        matches!(err, LogError::TruncatedHeader { found: 0, .. }),
        "{err}"
    );

    let missing = dir.path().join("missing.log");
    let err = open_file(&missing).unwrap_err();
    assert!(matches!(err, LogError::Io { op: "open", .. }), "{err}");
    assert!(err.to_string().contains("missing.log"));
}

/// After a failed commit, a reset cuts the file back to its durable end
/// (the failed records' bytes go), fills every abandoned seq, and one
/// burned for an undo, with a filler record, and the writer counts on: no
/// seq is handed out twice, none abandoned is ever acknowledged. A reset
/// the disk refuses leaves the writer poisoned, to be tried again.
#[test]
fn a_reset_cuts_the_failed_records_and_fills_their_seqs_and_appends_go_on() {
    let f = FaultyFile::named("reset");
    let w = LogWriter::create(f.clone(), 1).unwrap(); // write 1, sync 1
    w.append(b"one").unwrap(); // write 2, sync 2
    let durable = f.durable();
    f.fail_write(3, 7);
    let a = w.submit(b"two").unwrap();
    let b = w.submit(b"three").unwrap();
    assert_eq!((a, b), (2, 3));
    for seq in [a, b] {
        let err = w.wait_durable(seq).unwrap_err();
        assert!(
            matches!(
                err,
                LogError::CommitFailed {
                    op: "write",
                    first_seq: 2,
                    last_seq: 3,
                    ..
                }
            ),
            "{err}"
        );
    }
    assert!(matches!(w.submit(b"x"), Err(LogError::Poisoned { .. })));
    let id = w.failure_id().expect("poisoned");

    // The disk still refuses: the reset fails, the file is cut back.
    f.fail_sync(4); // sync 3 syncs the cut, sync 4 the fillers
    let err = w.reset(|_| Ok::<_, LogError>(b"gap".to_vec())).unwrap_err();
    assert!(err.is_poisoned(), "{err}");
    assert!(w.is_poisoned());
    assert_eq!(w.failure_id(), Some(id), "the same failure");
    assert_eq!(f.contents(), durable, "no byte of a failed record is left");
    assert_eq!(f.durable(), durable);

    // An undo takes a seq of its own; then the reset goes through.
    assert_eq!(w.burn_seq(), Some(4));
    let filled = w
        .reset(|seqs| {
            assert_eq!(seqs, 2..5);
            Ok::<_, LogError>(b"gap".to_vec())
        })
        .unwrap();
    assert_eq!(filled, 2..5);
    assert!(!w.is_poisoned());
    assert_eq!(w.failure_id(), None);
    assert_eq!(w.burn_seq(), None, "nothing to burn on a healthy log");
    assert_eq!(w.append(b"four").unwrap(), 5);
    assert!(
        matches!(w.wait_durable(a), Err(LogError::CommitFailed { .. })),
        "an abandoned seq is never acknowledged, even below the durable end"
    );
    w.wait_durable(4).unwrap();
    assert_eq!(w.durable_seq(), Some(5));

    let mut read = Vec::new();
    w.read_durable(&mut |seq, p| read.push((seq, p.to_vec())))
        .unwrap();
    let want: Vec<(u64, Vec<u8>)> = vec![
        (1, b"one".to_vec()),
        (2, b"gap".to_vec()),
        (3, b"gap".to_vec()),
        (4, b"gap".to_vec()),
        (5, b"four".to_vec()),
    ];
    assert_eq!(read, want);
    let (_, r) = reboot(f.crash(0));
    let replay = r.unwrap().1;
    assert!(replay.recovery.is_clean());
    assert_eq!(seqs_and_payloads(&replay), want);
}

/// A crash at any point of a reset (after a failed sync) finds the
/// durable records, perhaps the fillers, never a failed record.
#[test]
fn a_crash_during_a_reset_never_brings_back_a_failed_record() {
    let setup = || {
        let f = FaultyFile::named("reset-crash");
        let w = LogWriter::create(f.clone(), 1).unwrap();
        w.append(b"one").unwrap();
        f.fail_sync(3);
        assert!(w.append(b"two").is_err());
        (f, w)
    };
    let (f, w) = setup();
    let before = f.stats().ops;
    w.reset(|_| Ok::<_, LogError>(b"gap".to_vec())).unwrap();
    let ops = f.stats().ops - before;
    assert!(ops >= 4, "cut, sync, fillers, sync: {ops}");
    for k in 1..=ops {
        let (f, w) = setup();
        f.crash_after_ops(f.stats().ops + k);
        let _ = w.reset(|_| Ok::<_, LogError>(b"gap".to_vec()));
        for keep in 0..=f.unsynced_len() {
            let (_, r) = reboot(f.crash(keep));
            let payloads: Vec<Vec<u8>> = r
                .unwrap()
                .1
                .records
                .into_iter()
                .map(|r| r.payload)
                .collect();
            assert!(
                payloads == [b"one".to_vec()] || payloads == [b"one".to_vec(), b"gap".to_vec()],
                "crash after op {k} of the reset, {keep} unsynced bytes kept: {payloads:?}"
            );
        }
    }
}

/// The log's errors name the format's constants without importing the
/// encoding (which imports the errors): the constants live apart.
#[test]
fn log_errors_do_not_import_the_format() {
    let errors = crate::golden::code_of("src/log/error.rs");
    assert!(
        !errors.contains("format::"),
        "src/log/error.rs imports format"
    );
    let layout = crate::golden::code_of("src/log/layout.rs");
    assert!(!layout.contains("super::") && !layout.contains("crate::"));
}

#[test]
fn scan_from_reads_only_the_records_after_a_boundary_and_checks_their_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grows.segqlog");
    let w = create_file(&path, 7).unwrap();
    for i in 0..3u8 {
        w.append(&[i; 10]).unwrap();
    }
    let mut f = segq::log::FsFile::open(&path).unwrap();
    let first = LogWriter::scan(&mut f).unwrap();
    let boundary = first.recovery.valid_len;
    for i in 3..5u8 {
        w.append(&[i; 20]).unwrap();
    }
    let mut f = segq::log::FsFile::open(&path).unwrap();
    let all = LogWriter::scan(&mut f).unwrap();
    let tail = LogWriter::scan_from(&mut f, boundary, 10).unwrap();
    assert!(tail.recovery.is_clean(), "{}", tail.recovery);
    assert_eq!(tail.recovery.valid_len, all.recovery.valid_len);
    let seqs: Vec<u64> = tail.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![10, 11]);
    assert_eq!(tail.records[1].payload, vec![4u8; 20]);
    // A seq that does not follow is damage, nothing read.
    let wrong = LogWriter::scan_from(&mut f, boundary, 11).unwrap();
    assert!(matches!(
        wrong.recovery.reason,
        Some(Damage::WrongSeq {
            expected: 11,
            found: 10,
            ..
        })
    ));
    assert!(wrong.records.is_empty());
    // Not at a record boundary: nothing good is read.
    let off = LogWriter::scan_from(&mut f, boundary + 1, 10).unwrap();
    assert!(!off.recovery.is_clean() && off.records.is_empty());
    // Inside the header or past the end: refused.
    assert!(LogWriter::scan_from(&mut f, 3, 7).is_err());
    assert!(LogWriter::scan_from(&mut f, all.recovery.valid_len + 1, 12).is_err());
    // At the end: nothing, clean.
    let end = LogWriter::scan_from(&mut f, all.recovery.valid_len, 12).unwrap();
    assert!(end.recovery.is_clean() && end.records.is_empty());
}
