//! Custom attributes in a snapshot, read in place: a workspace loaded from
//! a snapshot lists its attributes and reads each index only when first
//! needed, writes the unchanged ones back as they were without reading
//! them, refuses a damaged index as corrupt (and `verify_attributes` and
//! restores find it first), and after a compaction's rebase holds the old
//! snapshot no longer.

use std::sync::Arc;

use segq::attributes::{AttrType, AttrValue};
use segq::engine::{persist, Engine};
use segq::query::{self, Uncached};
use segq::segment::ast::{AttrCmp, Number};
use segq::segment::Filter;
use segq::snapshot::format::SectionKind;
use segq::snapshot::Snapshot;
use segq::workload::{self, Spec};
use segq::workspace::Rebase;
use segq::Error;

use crate::support::rewrite_section;

/// Users over two chunks, with the workload's eight attributes.
fn workspace() -> segq::Workspace {
    let spec = Spec {
        users: 90_000,
        cohorts: 4,
        seed: 3,
    };
    workload::generate("attrs", spec).unwrap().workspace
}

fn attributes_section(snap: &Snapshot) -> Vec<u8> {
    snap.attributes_bytes()
        .expect("an attributes section")
        .to_vec()
}

fn spend_between(lo: i64, hi: i64) -> Filter {
    Filter::Attribute {
        attribute: "lifetime_spend".into(),
        cmp: AttrCmp::Between(Number::int(lo), Number::int(hi)),
    }
}

fn count(ws: &segq::Workspace, f: &Filter) -> segq::Result<u64> {
    query::count(ws, &Uncached, f, false).map(|c| c.count)
}

#[test]
fn a_loaded_workspace_reads_each_index_on_first_use_and_writes_unchanged_ones_back_as_they_were() {
    let ws = workspace();
    let bytes = persist::write_snapshot(&ws, 1).unwrap();
    let snap = Arc::new(Snapshot::from_bytes(bytes, "one").unwrap());
    let loaded = persist::load_workspace(snap.clone()).unwrap();
    assert_eq!(loaded.attributes.iter().count(), 8);
    assert!(
        loaded.attributes.iter().all(|a| !a.is_loaded()),
        "the open reads no index"
    );

    // Written back unchanged: the same section, and still nothing read.
    let again = persist::write_snapshot(&loaded, 2).unwrap();
    let again = Snapshot::from_bytes(again, "two").unwrap();
    assert_eq!(attributes_section(&again), attributes_section(&snap));
    assert!(loaded.attributes.iter().all(|a| !a.is_loaded()));

    // Read on first use, and answering as the workspace it came from.
    for f in [
        spend_between(10, 200),
        spend_between(0, 0),
        Filter::Attribute {
            attribute: "country".into(),
            cmp: AttrCmp::Equals("BR".into()),
        },
    ] {
        assert_eq!(count(&loaded, &f).unwrap(), count(&ws, &f).unwrap(), "{f}");
    }
    let read: Vec<&str> = loaded
        .attributes
        .iter()
        .filter(|a| a.is_loaded())
        .map(|a| a.name())
        .collect();
    assert_eq!(read, ["country", "lifetime_spend"]);
    for u in (0..90_000).step_by(997) {
        assert_eq!(loaded.attributes.values_of(u), ws.attributes.values_of(u));
    }
    // Still written back as it was, read or not.
    let third = persist::write_snapshot(&loaded, 3).unwrap();
    let third = Snapshot::from_bytes(third, "three").unwrap();
    assert_eq!(attributes_section(&third), attributes_section(&snap));

    // A change is written from the index: as the eager workspace writes it.
    let (mut a, mut b) = (loaded, ws);
    let sets = vec![
        ("sessions".to_string(), Some(AttrValue::Integer(123_456))),
        ("country".to_string(), None),
    ];
    a.attributes.set(7, &sets).unwrap();
    b.attributes.set(7, &sets).unwrap();
    let (wa, wb) = (
        persist::write_snapshot(&a, 4).unwrap(),
        persist::write_snapshot(&b, 4).unwrap(),
    );
    let (sa, sb) = (
        Snapshot::from_bytes(wa, "a").unwrap(),
        Snapshot::from_bytes(wb, "b").unwrap(),
    );
    assert_eq!(attributes_section(&sa), attributes_section(&sb));
    assert_eq!(
        a.attributes.get("sessions").map(|x| x.ty()),
        Some(AttrType::Integer)
    );
}

#[test]
fn a_damaged_index_is_refused_as_corrupt_on_use_and_found_by_verify_and_restore() {
    let ws = workspace();
    let good = persist::write_snapshot(&ws, 1).unwrap();
    let snap = Snapshot::from_bytes(good.clone(), "good").unwrap();
    // The last bitmap of the section is the last attribute's (by name:
    // "sessions"), its last slice: its cookie (12346 or 12347, little
    // endian) zeroed leaves every length in place.
    let section = attributes_section(&snap);
    let at = section
        .windows(2)
        .rposition(|w| w == [0x3a, 0x30] || w == [0x3b, 0x30])
        .expect("a roaring cookie");
    let bad_bytes = rewrite_section(&good, SectionKind::Attributes, |b| b[at..at + 2].fill(0));
    let bad =
        Arc::new(Snapshot::from_bytes(bad_bytes.clone(), "bad").expect("every checksum holds"));

    // Opening reads no index; the damaged one is refused when used.
    let loaded = persist::load_workspace(bad.clone()).unwrap();
    let sessions = Filter::Attribute {
        attribute: "sessions".into(),
        cmp: AttrCmp::Gt(Number::int(10)),
    };
    match count(&loaded, &sessions) {
        Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("sessions"), "{reason}"),
        other => panic!("counted a damaged index: {other:?}"),
    }
    let damage = loaded.attributes.get("sessions").unwrap().damage();
    assert!(damage.is_some_and(|d| d.contains("sessions")), "{damage:?}");
    // The others answer.
    assert_eq!(
        count(&loaded, &spend_between(10, 200)).unwrap(),
        count(&ws, &spend_between(10, 200)).unwrap()
    );

    // Checked whole, it is refused before any use.
    match persist::verify_attributes(&bad) {
        Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("sessions"), "{reason}"),
        other => panic!("verified a damaged index: {other:?}"),
    }
    assert!(persist::verify_attributes(&snap).is_ok());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.segqsnap");
    std::fs::write(&file, &bad_bytes).unwrap();
    let (engine, _) = Engine::open(dir.path().join("data")).unwrap();
    match engine.restore_workspace("restored", &file) {
        Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("sessions"), "{reason}"),
        other => panic!("restored a damaged index: {:?}", other.map(|_| ())),
    }
}

#[test]
fn after_a_rebase_no_attribute_holds_the_old_snapshot() {
    let ws = workspace();
    let first =
        Arc::new(Snapshot::from_bytes(persist::write_snapshot(&ws, 1).unwrap(), "1").unwrap());
    let mut live = persist::load_workspace(first.clone()).unwrap();
    // One index read, one changed, the rest untouched.
    let before = count(&live, &spend_between(10, 200)).unwrap();
    live.attributes
        .set(
            5,
            &[("plan".to_string(), Some(AttrValue::String("pro".into())))],
        )
        .unwrap();
    let frozen = live.clone();
    let second =
        Arc::new(Snapshot::from_bytes(persist::write_snapshot(&frozen, 2).unwrap(), "2").unwrap());
    let r = Rebase::prepare(&frozen, second.clone()).unwrap();
    live.apply_rebase(&frozen, r).unwrap();
    drop(frozen);
    assert_eq!(
        Arc::strong_count(&first),
        1,
        "the first snapshot is held by nothing but this test"
    );
    // The same answers, the read index kept.
    assert!(live.attributes.get("lifetime_spend").unwrap().is_loaded());
    assert_eq!(count(&live, &spend_between(10, 200)).unwrap(), before);
    for u in (0..90_000).step_by(1009) {
        let mut want = ws.attributes.values_of(u);
        if u == 5 {
            want.insert("plan".into(), AttrValue::String("pro".into()));
        }
        assert_eq!(live.attributes.values_of(u), want);
    }

    // Never listed: moved whole.
    drop(live);
    let fresh = persist::load_workspace(second.clone()).unwrap();
    let third = Arc::new(
        Snapshot::from_bytes(persist::write_snapshot(&fresh.clone(), 3).unwrap(), "3").unwrap(),
    );
    let mut fresh = fresh;
    let frozen = fresh.clone();
    let r = Rebase::prepare(&frozen, third).unwrap();
    fresh.apply_rebase(&frozen, r).unwrap();
    drop(frozen);
    assert_eq!(Arc::strong_count(&second), 1);
    assert_eq!(count(&fresh, &spend_between(10, 200)).unwrap(), before);
}
