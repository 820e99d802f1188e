//! Snapshot files: a workspace written and read back is the same
//! workspace; identifier look-ups and queries run on the mapped file; the
//! documented byte layout is what the code writes; corruption is caught
//! with the file's path; the format fixture of version 1 still reads.

use std::path::Path;

use chrono::{TimeZone, Utc};
use segq::engine::persist;
use segq::segment::{chunk, plan, reference};
use segq::snapshot::format::{ALIGN, ENTRY_LEN, HEADER_LEN, MAGIC, TAIL_LEN, VERSION};
use segq::snapshot::Snapshot;
use segq::workload::{self, Spec};
use segq::workspace::{KeyRecord, SavedSegment};
use segq::{examples, Error, Partner, UserId, UserRef, Workspace};

use crate::support::fingerprint;

const SPEC: Spec = Spec {
    users: 20_000,
    cohorts: 30,
    seed: 21,
};

/// A workspace with every kind of state: generated users and cohorts, the
/// demo's users and wire examples (renames, unmatched ids, a user
/// identified later), a key, a partner enabled, a saved segment.
fn rich_workspace() -> Workspace {
    let ws = workload::generate("snap", SPEC).unwrap().workspace;
    let handle = std::sync::Arc::new(segq::engine::WorkspaceHandle::in_memory(ws).unwrap());
    examples::add_users(&handle).unwrap();
    for (name, text) in examples::WIRE {
        examples::replay(&handle, name, text, examples::demo_now()).unwrap();
    }
    let mut ws = handle.read().clone();
    let t = Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).unwrap();
    ws.keys.insert(
        "key_1".into(),
        KeyRecord {
            id: "key_1".into(),
            partner: Partner::Amplitude,
            digest: [7; 32],
            prefix: "dik_0123".into(),
            created_at: t,
            invalidated_at: Some(t),
            last_used: Some(t),
        },
    );
    ws.enabled_partners.insert(Partner::Amplitude);
    ws.segments.insert(
        "seg_1".into(),
        SavedSegment {
            id: "seg_1".into(),
            name: "Power users".into(),
            filter: segq::segment::parse(
                "amplitude_cohorts includes c0 and not random_bucket < 10",
            )
            .unwrap(),
            created_at: t,
            updated_at: t,
        },
    );
    ws
}

#[test]
fn a_workspace_written_and_read_back_is_the_same() {
    let ws = rich_workspace();
    let bytes = persist::write_snapshot(&ws, 42).unwrap();
    let snap = Snapshot::from_bytes(bytes, "mem").unwrap();
    snap.verify().unwrap();
    assert_eq!(snap.meta().unwrap().seq, 42);
    let back = persist::load_workspace(std::sync::Arc::new(snap)).unwrap();
    assert_eq!(fingerprint(&back), fingerprint(&ws));
}

#[test]
fn lookups_and_queries_run_on_the_mapped_file() {
    let ws = rich_workspace();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.segqsnap");
    std::fs::write(&path, persist::write_snapshot(&ws, 1).unwrap()).unwrap();
    let snap = Snapshot::open(&path).unwrap();
    assert_eq!(snap.users().unwrap(), ws.users.len());
    for u in 0..ws.users.len() {
        let r = ws.users.get(UserId(u)).unwrap();
        if let Some(e) = &r.external_id {
            assert_eq!(
                snap.lookup(&UserRef::ExternalId(e.to_string())).unwrap(),
                Some(UserId(u))
            );
        }
        assert_eq!(
            snap.external_id(UserId(u)).unwrap().as_deref(),
            r.external_id.as_deref()
        );
        for d in &r.devices {
            assert_eq!(
                snap.lookup(&UserRef::DeviceId(d.to_string())).unwrap(),
                Some(UserId(u))
            );
        }
        for (l, n) in &r.aliases {
            let a = UserRef::Alias {
                label: l.to_string(),
                name: n.to_string(),
            };
            assert_eq!(snap.lookup(&a).unwrap(), Some(UserId(u)));
        }
        assert_eq!(snap.buckets().unwrap()[u as usize], r.bucket);
    }
    for nobody in [
        UserRef::ExternalId("nobody".into()),
        UserRef::DeviceId("u1".into()),
        UserRef::Alias {
            label: "email".into(),
            name: "nobody@example.com".into(),
        },
    ] {
        assert_eq!(snap.lookup(&nobody).unwrap(), None);
    }
    // The chunk evaluator over the mapped bitmaps agrees with the
    // reference on the in-memory workspace.
    for (name, f) in workload::query_shapes(SPEC.cohorts) {
        let p = plan::plan(&snap, &f).unwrap();
        let prepared = chunk::Prepared::for_snapshot(&snap, &p).unwrap();
        assert_eq!(
            prepared.count().unwrap(),
            reference::count(&ws, &f).unwrap(),
            "{name}"
        );
        assert_eq!(
            prepared.members().unwrap(),
            reference::evaluate(&ws, &f).unwrap(),
            "{name}"
        );
    }
    // Cohorts by name work on the snapshot as in memory.
    let by_name =
        segq::segment::parse(r#"amplitude_cohorts includes "Power users (90d)""#).unwrap();
    let p = plan::plan(&snap, &by_name).unwrap();
    assert_eq!(
        chunk::Prepared::for_snapshot(&snap, &p)
            .unwrap()
            .count()
            .unwrap(),
        reference::count(&ws, &by_name).unwrap()
    );
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn the_documented_byte_layout_is_what_is_written() {
    let ws = rich_workspace();
    let b = persist::write_snapshot(&ws, 9).unwrap();
    // Header: magic, version, zero flags, zero to byte 64.
    assert_eq!(&b[..8], &MAGIC);
    // Every snapshot holds the compact dictionaries: the newest version.
    assert_eq!(u32_at(&b, 8), VERSION);
    assert!(b[12..HEADER_LEN].iter().all(|&x| x == 0));
    // Tail: table offset, count, table crc, version, tail crc, magic.
    let t = b.len() - TAIL_LEN;
    assert_eq!(&b[t + 24..], &MAGIC);
    assert_eq!(u32_at(&b, t + 16), VERSION);
    assert_eq!(u32_at(&b, t + 20), crc32fast::hash(&b[t..t + 20]));
    let table = u64_at(&b, t) as usize;
    let count = u32_at(&b, t + 8) as usize;
    assert_eq!(table + count * ENTRY_LEN, t);
    assert_eq!(u32_at(&b, t + 12), crc32fast::hash(&b[table..t]));
    // Entries: kind, 0, offset, len, crc, 0; sections 64-aligned, checksummed.
    // Seven: the generated workload's users have custom attributes.
    assert!(!ws.attributes.is_empty());
    assert_eq!(count, 7);
    for e in b[table..t].chunks_exact(ENTRY_LEN) {
        let (off, len) = (u64_at(e, 8) as usize, u64_at(e, 16) as usize);
        assert_eq!(off % ALIGN, 0);
        assert_eq!(u32_at(e, 24), crc32fast::hash(&b[off..off + len]));
        assert_eq!(u32_at(e, 4), 0);
        assert_eq!(u32_at(e, 28), 0);
    }
    // The first section starts right after the header.
    assert_eq!(u64_at(&b[table..], 8), HEADER_LEN as u64);
    // The buckets section is 2 bytes per user, little-endian.
    let snap = Snapshot::from_bytes(b.clone(), "x").unwrap();
    let s = snap
        .sections()
        .iter()
        .find(|s| s.kind.name() == "buckets")
        .unwrap();
    assert_eq!(s.len, 2 * u64::from(ws.users.len()));
    let first = u16::from_le_bytes([b[s.offset as usize], b[s.offset as usize + 1]]);
    assert_eq!(first, ws.users.bucket(UserId(0)).unwrap());
}

#[test]
fn a_flipped_byte_is_caught_and_reported_with_the_path() {
    let ws = workload::generate(
        "flip",
        Spec {
            users: 3_000,
            cohorts: 12,
            seed: 2,
        },
    )
    .unwrap()
    .workspace;
    let good = persist::write_snapshot(&ws, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.segqsnap");
    let shown = path.display().to_string();
    let positions: Vec<usize> = (0..good.len())
        .step_by(61)
        .chain(0..HEADER_LEN)
        .chain(good.len() - 256..good.len())
        .collect();
    for i in positions {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        let err = match Snapshot::open(&path) {
            Err(e) => e,
            Ok(s) => s
                .verify()
                .expect_err(&format!("flipped byte {i} went unnoticed")),
        };
        match err {
            Error::Corrupt { path, .. } => assert_eq!(path, shown, "byte {i}"),
            other => panic!("byte {i}: {other}"),
        }
    }
}

const FIXTURE: &str = "fixtures/snapshot/v1-3000-users.segqsnap";
const FIXTURE_SPEC: Spec = Spec {
    users: 3_000,
    cohorts: 12,
    seed: 5,
};

/// What the fixture must read as, independent of the generator (which may
/// change): users, and each cohort's size and smallest members.
fn fixture_expectations(snap: &Snapshot) -> String {
    let meta = snap.meta().unwrap();
    let mut out = format!("users {} seq {}\n", meta.users, meta.seq);
    for (i, c) in meta.cohorts.iter().enumerate() {
        let first: Vec<u32> = snap.bitmap(i).unwrap().iter().take(5).collect();
        out += &format!("{} {} {} {:?}\n", c.cohort_id, c.name, c.cardinality, first);
    }
    for u in [0u32, 1, 2, 999, 2999] {
        out += &format!(
            "user {u}: {:?} bucket {}\n",
            snap.external_id(UserId(u)).unwrap(),
            snap.buckets().unwrap()[u as usize]
        );
    }
    out
}

#[test]
fn the_version_1_fixture_still_reads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let snap = Snapshot::open(&root.join(FIXTURE)).unwrap();
    snap.verify().unwrap();
    let expected =
        std::fs::read_to_string(root.join("fixtures/snapshot/v1-3000-users.expected")).unwrap();
    assert_eq!(fixture_expectations(&snap), expected);
    assert_eq!(
        snap.lookup(&UserRef::ExternalId("u2999".into()))
            .unwrap()
            .is_some(),
        snap.external_id(UserId(2999)).unwrap().is_some()
    );
}

/// Writes the fixture anew: `cargo test --test it write_the_format_fixture
/// -- --ignored`, only when the format version changes (and keep the old
/// fixture with its reader).
#[test]
#[ignore = "writes fixtures/snapshot; run by hand when the format version changes"]
fn write_the_format_fixture() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ws = workload::generate("fixture", FIXTURE_SPEC)
        .unwrap()
        .workspace;
    std::fs::create_dir_all(root.join("fixtures/snapshot")).unwrap();
    std::fs::write(root.join(FIXTURE), persist::write_snapshot(&ws, 7).unwrap()).unwrap();
    let snap = Snapshot::open(&root.join(FIXTURE)).unwrap();
    std::fs::write(
        root.join("fixtures/snapshot/v1-3000-users.expected"),
        fixture_expectations(&snap),
    )
    .unwrap();
}

#[test]
fn the_streaming_generator_writes_the_snapshot_of_the_generated_workspace() {
    let spec = Spec {
        users: 70_000,
        cohorts: 25,
        seed: 8,
    };
    let ws = workload::generate("g", spec).unwrap().workspace;
    let expected = persist::write_snapshot(&ws, 0).unwrap();
    let (streamed, infos) = workload::write_snapshot("g", spec, Vec::new()).unwrap();
    assert_eq!(infos.len(), 25);
    assert!(streamed == expected, "the two ways of writing differ");
}

/// The snapshot module is storage: bytes, sections, dictionaries and its
/// own persisted types. It imports nothing of the domain (the workspace,
/// users, cohorts, segments, the workload, queries) nor the engine, which
/// converts between the two (`engine::persist`).
#[test]
fn the_snapshot_module_imports_no_domain() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/snapshot");
    let domain = [
        "workspace",
        "users",
        "cohorts",
        "segment",
        "workload",
        "query",
        "engine",
        "import",
        "server",
        "demo",
    ];
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".rs"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "{files:?}");
    for f in files {
        let code = crate::golden::code_of(&format!("src/snapshot/{f}"));
        for m in domain {
            assert!(
                !code.contains(&format!("crate::{m}")),
                "src/snapshot/{f} imports crate::{m}"
            );
        }
    }
}

#[test]
fn a_workspace_and_its_snapshot_resolve_cohort_values_alike() {
    use segq::segment::plan::Catalog;
    let mut ws = Workspace::new("names", 1);
    for (partner, id, name) in [
        (Partner::Amplitude, "z9", "Power"),
        (Partner::Amplitude, "a1", "Power"),
        (Partner::Amplitude, "c3", "c4"),
        (Partner::Amplitude, "c4", "Other"),
        (Partner::Amplitude, "c5", "Solo"),
        (Partner::Mixpanel, "m1", "Solo"),
        (Partner::Mixpanel, "m2", "Power"),
    ] {
        ws.upsert_cohort(partner, id, name, None).unwrap();
    }
    let bytes = persist::write_snapshot(&ws, 1).unwrap();
    let snap = Snapshot::from_bytes(bytes, "mem").unwrap();
    let shown = |r: segq::Result<(String, u64)>| match r {
        Ok((id, n)) => format!("{id} ({n})"),
        Err(e @ (Error::NoSuchCohort { .. } | Error::AmbiguousCohortName { .. })) => {
            format!("error: {e}")
        }
        Err(e) => panic!("unexpected error {e:?}"),
    };
    let cases = [
        (Partner::Amplitude, "Power", "error: amplitude_cohorts: the name \"Power\" is shared by cohorts [\"a1\", \"z9\"]; name one by its cohort_id"),
        (Partner::Amplitude, "c4", "c4 (0)"),
        (Partner::Amplitude, "Other", "c4 (0)"),
        (Partner::Amplitude, "c3", "c3 (0)"),
        (Partner::Amplitude, "Solo", "c5 (0)"),
        (Partner::Mixpanel, "Power", "m2 (0)"),
        (Partner::Amplitude, "m1", "error: amplitude_cohorts has no cohort with id or name \"m1\""),
        (Partner::Amplitude, "nobody", "error: amplitude_cohorts has no cohort with id or name \"nobody\""),
    ];
    for (partner, value, expected) in cases {
        let live = shown(ws.cohort(partner, value));
        let frozen = shown(snap.cohort(partner, value));
        assert_eq!(live, expected, "{partner} {value} in the workspace");
        assert_eq!(frozen, expected, "{partner} {value} in the snapshot");
    }
}

/// A snapshot whose saved segment's filter is `nots` NOTs around a bucket
/// test, its checksums right: written with a one-leaf filter, whose bytes
/// in the meta section are then replaced.
fn snapshot_with_nested_filter(nots: usize) -> Vec<u8> {
    use segq::snapshot::format::{SectionKind, SnapshotWriter};
    use segq::snapshot::meta::{PBucketCmp, PFilter};
    let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut ws = Workspace::new("deep", 3);
    ws.segments.insert(
        "deep".into(),
        SavedSegment {
            id: "deep".into(),
            name: "deepname".into(),
            filter: segq::segment::parse("random_bucket < 5").unwrap(),
            created_at: t,
            updated_at: t,
        },
    );
    let bytes = persist::write_snapshot(&ws, 1).unwrap();
    let snap = Snapshot::from_bytes(bytes.clone(), "orig").unwrap();
    let leaf = [PFilter::BUCKET as u8, PBucketCmp::LT as u8, 5];
    let mut w = SnapshotWriter::to_version(Vec::new(), snap.version()).unwrap();
    for s in snap.sections() {
        let mut section = bytes[s.offset as usize..(s.offset + s.len) as usize].to_vec();
        if s.kind == SectionKind::Meta {
            let name = section
                .windows(8)
                .position(|w| w == b"deepname")
                .expect("the segment's name")
                + 8;
            assert_eq!(section[name..name + 3], leaf);
            let mut filter = vec![PFilter::NOT as u8; nots];
            filter.extend(leaf);
            section.splice(name..name + 3, filter);
        }
        w.section(s.kind, &section).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn a_snapshot_whose_filter_nests_without_end_is_refused_not_a_crash() {
    let shallow = Snapshot::from_bytes(snapshot_with_nested_filter(3), "shallow").unwrap();
    assert!(persist::load_workspace(std::sync::Arc::new(shallow)).is_ok());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deep.segqsnap");
    std::fs::write(&file, snapshot_with_nested_filter(1_000_000)).unwrap();
    let out = crate::support::server::segq(&["snapshot", "inspect", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("corrupt"), "{stderr}");
    assert!(stderr.contains("nested more than 256 levels"), "{stderr}");
}

#[test]
fn snapshot_verify_checksums_runs_the_start_up_check_alone() {
    let bytes = persist::write_snapshot(&rich_workspace(), 9).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.segqsnap");
    std::fs::write(&file, &bytes).unwrap();
    let run = |args: &[&str]| {
        let out = crate::support::server::segq(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let path = file.to_str().unwrap();
    let (code, text) = run(&["snapshot", "verify", "--checksums", path]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("checksums ok") && text.contains("MiB/s"),
        "{text}"
    );
    // A byte flipped inside the buckets section: the checksums catch it.
    let snap = Snapshot::from_bytes(bytes.clone(), "s").unwrap();
    let buckets = snap
        .sections()
        .iter()
        .find(|s| s.kind == segq::snapshot::format::SectionKind::Buckets)
        .unwrap()
        .offset as usize;
    let mut bad = bytes;
    bad[buckets] ^= 1;
    std::fs::write(&file, &bad).unwrap();
    let (code, text) = run(&["snapshot", "verify", "--checksums", path]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("buckets"), "{text}");
}

#[test]
fn the_start_up_check_computes_checksums_in_parallel_chunks_and_catches_any_flip() {
    let ws = rich_workspace();
    let bytes = persist::write_snapshot(&ws, 9).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.segqsnap");
    std::fs::write(&path, &bytes).unwrap();
    let snap = Snapshot::open(&path).unwrap();
    snap.verify_streaming(&path).unwrap();
    // Chunks of every size from one byte, with one to four workers.
    for (workers, chunk) in [(1, 1), (2, 7), (3, 64), (4, 1000), (2, 1 << 20)] {
        snap.verify_streaming_with(&path, workers, chunk)
            .unwrap_or_else(|e| panic!("{workers} workers, {chunk}-byte chunks: {e}"));
    }
    // A flipped byte in any section is caught, whatever the chunking.
    for s in snap.sections().to_vec() {
        if s.len == 0 {
            continue;
        }
        for at in [s.offset, s.offset + s.len / 2, s.offset + s.len - 1] {
            let mut bad = bytes.clone();
            bad[at as usize] ^= 0x10;
            let p = dir.path().join("bad.segqsnap");
            std::fs::write(&p, &bad).unwrap();
            let e = Snapshot::open(&p)
                .unwrap()
                .verify_streaming_with(&p, 3, 13)
                .unwrap_err();
            assert!(e.to_string().contains(s.kind.name()), "{e}");
        }
    }
}
