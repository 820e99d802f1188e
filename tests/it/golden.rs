//! Golden files: a version 1 log and snapshot, and a log and a version 2
//! snapshot of the kinds added since (custom attributes, attribute and
//! segment filters), written once and read by every later build with the
//! same result, so that a persisted encoding cannot change by accident;
//! and the imports the storage layer may make.

use std::path::Path;

/// The code of a source file (relative to the crate root), without its
/// comments: what it imports, not what its docs link to.
pub fn code_of(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

use std::fmt::Write as _;
use std::sync::Arc;

use segq::access::{AuditEntry, Scope};
use segq::attributes::{AttrType, AttrValue};
use segq::cohorts::{MemberOp, ResolvedChanges};
use segq::engine::persist;
use segq::engine::record::{self, Change};
use segq::log::{FaultyFile, LogWriter};
use segq::segment::{AttrCmp, BucketCmp, Filter, Number, Time};
use segq::snapshot::format::SectionKind;
use segq::snapshot::Snapshot;
use segq::{Partner, UserId, Workspace};

const LOG: &str = "fixtures/log/v1-every-record.segqlog";
const LOG_EXPECTED: &str = "fixtures/log/v1-every-record.expected";
const SNAP: &str = "fixtures/snapshot/v1-every-record.segqsnap";
const SNAP_EXPECTED: &str = "fixtures/snapshot/v1-every-record.expected";
const ATTR_LOG: &str = "fixtures/log/v1-attributes.segqlog";
const ATTR_LOG_EXPECTED: &str = "fixtures/log/v1-attributes.expected";
const ATTR_SNAP: &str = "fixtures/snapshot/v2-attributes.segqsnap";
const ATTR_SNAP_EXPECTED: &str = "fixtures/snapshot/v2-attributes.expected";
const KEYS_LOG: &str = "fixtures/log/v1-api-keys.segqlog";
const KEYS_LOG_EXPECTED: &str = "fixtures/log/v1-api-keys.expected";
const KEYS_SNAP: &str = "fixtures/snapshot/v2-api-keys.segqsnap";
const KEYS_SNAP_EXPECTED: &str = "fixtures/snapshot/v2-api-keys.expected";
const AUDIT_LOG: &str = "fixtures/log/v1-audit.segqlog";
const AUDIT_LOG_EXPECTED: &str = "fixtures/log/v1-audit.expected";
const AUDIT_SNAP: &str = "fixtures/snapshot/v2-audit.segqsnap";
const AUDIT_SNAP_EXPECTED: &str = "fixtures/snapshot/v2-audit.expected";
const LIFE_LOG: &str = "fixtures/log/v1-users-lifecycle.segqlog";
const LIFE_LOG_EXPECTED: &str = "fixtures/log/v1-users-lifecycle.expected";
const LIFE_SNAP: &str = "fixtures/snapshot/v3-users-lifecycle.segqsnap";
const LIFE_SNAP_EXPECTED: &str = "fixtures/snapshot/v3-users-lifecycle.expected";
const V4_LIFE_SNAP: &str = "fixtures/snapshot/v4-users-lifecycle.segqsnap";
const V4_LIFE_SNAP_EXPECTED: &str = "fixtures/snapshot/v4-users-lifecycle.expected";
const V4_IDS_SNAP: &str = "fixtures/snapshot/v4-identifiers.segqsnap";
const V4_IDS_SNAP_EXPECTED: &str = "fixtures/snapshot/v4-identifiers.expected";
const V5_LIFE_SNAP: &str = "fixtures/snapshot/v5-users-lifecycle.segqsnap";
const V5_LIFE_SNAP_EXPECTED: &str = "fixtures/snapshot/v5-users-lifecycle.expected";
const V5_IDS_SNAP: &str = "fixtures/snapshot/v5-identifiers.segqsnap";
const V5_IDS_SNAP_EXPECTED: &str = "fixtures/snapshot/v5-identifiers.expected";

/// A fixture written again by this build: a version 5 file, with the
/// packed dictionaries, holding the same workspace.
fn rewritten_reads_the_same(ws: &Workspace, again: Vec<u8>, old: &[u8]) {
    let snap = Snapshot::from_bytes(again, "again").expect("opens");
    snap.verify().expect("verifies");
    assert_eq!(snap.version(), 5);
    assert!(snap.sections().iter().all(
        |s| !s.kind.is_dictionary() || SectionKind::DICTIONARIES.iter().any(|k| k[0] == s.kind)
    ));
    let old = Snapshot::from_bytes(old.to_vec(), "old").expect("opens");
    assert!(old.version() < 4);
    let ws2 = persist::load_workspace(Arc::new(snap)).expect("loads");
    assert_eq!(describe(&ws2), describe(ws));
}

const HISTORY_SNAP: &str = "fixtures/snapshot/v4-size-history.segqsnap";
const HISTORY_SNAP_EXPECTED: &str = "fixtures/snapshot/v4-size-history.expected";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The name of a record's kind. The match is exhaustive on purpose: a new
/// record kind does not compile here until it is named, and then
/// [`EVERY_KIND`] (and the fixtures) must hold it.
fn kind(c: &Change) -> &'static str {
    match c {
        Change::WorkspaceCreated { .. } => "WorkspaceCreated",
        Change::UserCreated { .. } => "UserCreated",
        Change::DeviceAdded { .. } => "DeviceAdded",
        Change::AliasAdded { .. } => "AliasAdded",
        Change::UserIdentified { .. } => "UserIdentified",
        Change::CohortUpserted { .. } => "CohortUpserted",
        Change::CohortChanged { .. } => "CohortChanged",
        Change::PartnerEnabled { .. } => "PartnerEnabled",
        Change::KeyCreated { .. } => "KeyCreated",
        Change::KeyInvalidated { .. } => "KeyInvalidated",
        Change::Batch(_) => "Batch",
        Change::SegmentSaved { .. } => "SegmentSaved",
        Change::SegmentDeleted { .. } => "SegmentDeleted",
        Change::SeqsAbandoned { .. } => "SeqsAbandoned",
        Change::KeyUsed { .. } => "KeyUsed",
        Change::CohortDeleted { .. } => "CohortDeleted",
        Change::AttributesSet { .. } => "AttributesSet",
        Change::AttributeDeclared { .. } => "AttributeDeclared",
        Change::ApiKeyCreated { .. } => "ApiKeyCreated",
        Change::ApiKeyRevoked { .. } => "ApiKeyRevoked",
        Change::Audited(_) => "Audited",
        Change::UsersDeleted { .. } => "UsersDeleted",
        Change::UserMerged { .. } => "UserMerged",
        Change::ExternalIdRenamed { .. } => "ExternalIdRenamed",
    }
}

/// The record kinds the version 1 log fixture holds (all there were
/// when it was written).
const EVERY_KIND: [&str; 16] = [
    "WorkspaceCreated",
    "UserCreated",
    "DeviceAdded",
    "AliasAdded",
    "UserIdentified",
    "CohortUpserted",
    "CohortChanged",
    "PartnerEnabled",
    "KeyCreated",
    "KeyInvalidated",
    "Batch",
    "SegmentSaved",
    "SegmentDeleted",
    "SeqsAbandoned",
    "KeyUsed",
    "CohortDeleted",
];

/// The record kinds added since, held by the attributes log fixture.
const ATTRIBUTE_KINDS: [&str; 2] = ["AttributesSet", "AttributeDeclared"];

/// The record kinds of workspace API keys, held by the API keys log
/// fixture.
const API_KEY_KINDS: [&str; 2] = ["ApiKeyCreated", "ApiKeyRevoked"];

/// The record kind of the audit log, held by the audit log fixture.
const AUDIT_KINDS: [&str; 1] = ["Audited"];
/// The record kinds of the user lifecycle, held by the lifecycle log
/// fixture.
const LIFECYCLE_KINDS: [&str; 3] = ["UsersDeleted", "UserMerged", "ExternalIdRenamed"];

/// The kinds of a record and of the records nested in it.
fn kinds(c: &Change, out: &mut Vec<&'static str>) {
    out.push(kind(c));
    if let Change::Batch(inner) = c {
        for c in inner {
            kinds(c, out);
        }
    }
}

/// The kinds of filter node a filter holds (bucket comparisons by theirs).
fn filter_kinds(f: &Filter, out: &mut Vec<&'static str>) {
    match f {
        Filter::Cohort { includes, .. } => {
            out.push(if *includes { "includes" } else { "excludes" })
        }
        Filter::Bucket(b) => out.push(match b {
            BucketCmp::Lt(_) => "lt",
            BucketCmp::Le(_) => "le",
            BucketCmp::Gt(_) => "gt",
            BucketCmp::Ge(_) => "ge",
            BucketCmp::Between(..) => "between",
        }),
        Filter::And(c) => {
            out.push("and");
            c.iter().for_each(|f| filter_kinds(f, out));
        }
        Filter::Or(c) => {
            out.push("or");
            c.iter().for_each(|f| filter_kinds(f, out));
        }
        Filter::Not(c) => {
            out.push("not");
            filter_kinds(c, out);
        }
        Filter::Attribute { cmp, .. } => out.push(attr_kind(cmp)),
        Filter::Segment { included, .. } => out.push(if *included {
            "in_segment"
        } else {
            "not_in_segment"
        }),
    }
}

/// The name of an attribute comparison. Exhaustive on purpose: a new
/// comparison does not compile here until it is named, and then
/// [`ATTRIBUTE_FILTER_KINDS`] (and a fixture) must hold it.
fn attr_kind(cmp: &AttrCmp) -> &'static str {
    match cmp {
        AttrCmp::Equals(_) => "equals",
        AttrCmp::DoesNotEqual(_) => "does_not_equal",
        AttrCmp::IsAnyOf(_) => "is_any_of",
        AttrCmp::MatchesRegex(_) => "matches_regex",
        AttrCmp::StartsWith(_) => "starts_with",
        AttrCmp::Exists => "exists",
        AttrCmp::DoesNotExist => "does_not_exist",
        AttrCmp::Eq(_) => "=",
        AttrCmp::Ne(_) => "!=",
        AttrCmp::Lt(_) => "<",
        AttrCmp::Le(_) => "<=",
        AttrCmp::Gt(_) => ">",
        AttrCmp::Ge(_) => ">=",
        AttrCmp::Between(..) => "number between",
        AttrCmp::IsTrue => "is_true",
        AttrCmp::IsFalse => "is_false",
        AttrCmp::Before(_) => "before",
        AttrCmp::After(_) => "after",
        AttrCmp::WithinLastDays(_) => "within_last_days",
        AttrCmp::WithinLastHours(_) => "within_last_hours",
        AttrCmp::MoreThanDaysAgo(_) => "more_than_days_ago",
    }
}

/// The filter kinds added since the version 1 fixture: every attribute
/// comparison and both segment references, held by the attributes log
/// fixture's segments.
const ATTRIBUTE_FILTER_KINDS: [&str; 23] = [
    "equals",
    "does_not_equal",
    "is_any_of",
    "matches_regex",
    "starts_with",
    "exists",
    "does_not_exist",
    "=",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "number between",
    "is_true",
    "is_false",
    "before",
    "after",
    "within_last_days",
    "within_last_hours",
    "more_than_days_ago",
    "in_segment",
    "not_in_segment",
];

const EVERY_FILTER_KIND: [&str; 10] = [
    "includes", "excludes", "lt", "le", "gt", "ge", "between", "and", "or", "not",
];

/// 2024-01-01T12:00:00Z plus `minutes`, in milliseconds.
fn at(minutes: i64) -> i64 {
    1_704_110_400_000 + minutes * 60_000
}

fn ops(list: &[(u32, bool)]) -> Vec<MemberOp> {
    list.iter()
        .map(|&(u, remove)| MemberOp {
            user: UserId(u),
            remove,
        })
        .collect()
}

fn s(x: &str) -> String {
    x.to_string()
}

/// The records of the log fixture: every kind, every filter node, every
/// partner, a batch inside a batch.
fn every_record() -> Vec<Change> {
    let every_filter = Filter::Or(vec![
        Filter::And(vec![
            Filter::includes(Partner::Amplitude, "a-1"),
            Filter::excludes(Partner::Mixpanel, "m-1"),
            Filter::Bucket(BucketCmp::Lt(5000)),
        ]),
        Filter::Not(Box::new(Filter::Bucket(BucketCmp::Between(10, 20)))),
        Filter::Bucket(BucketCmp::Le(9)),
        Filter::Bucket(BucketCmp::Gt(9990)),
        Filter::Bucket(BucketCmp::Ge(9999)),
        Filter::And(vec![]),
        Filter::Or(vec![]),
    ]);
    let mut records = vec![
        Change::WorkspaceCreated {
            seed: 42,
            at_ms: at(0),
        },
        Change::UserCreated {
            user: UserId(0),
            external_id: Some(s("u-0")),
            devices: vec![s("d-0a"), s("d-0b")],
            aliases: vec![(s("email"), s("ann@example.com"))],
            bucket: 0,
        },
        Change::UserCreated {
            user: UserId(1),
            external_id: None,
            devices: vec![s("d-1")],
            aliases: vec![],
            bucket: 9999,
        },
        Change::UserCreated {
            user: UserId(2),
            external_id: Some(s("u-2")),
            devices: vec![],
            aliases: vec![],
            bucket: 4321,
        },
        Change::DeviceAdded {
            user: UserId(2),
            device_id: s("d-2"),
        },
        Change::AliasAdded {
            user: UserId(1),
            label: s("phone"),
            name: s("+15550100"),
        },
        Change::UserIdentified {
            user: UserId(1),
            external_id: s("u-1"),
        },
        Change::Batch(vec![
            Change::UserCreated {
                user: UserId(3),
                external_id: Some(s("u-3")),
                devices: vec![],
                aliases: vec![],
                bucket: 15,
            },
            Change::Batch(vec![Change::DeviceAdded {
                user: UserId(3),
                device_id: s("d-3"),
            }]),
            Change::Batch(vec![]),
        ]),
    ];
    for p in Partner::ALL {
        records.push(Change::PartnerEnabled { partner: p });
    }
    records.extend([
        Change::CohortUpserted {
            partner: Partner::Amplitude,
            cohort_id: s("a-1"),
            name: s("Power users"),
            created_at: s("2024-01-01T13:00:00+01:00"),
        },
        Change::CohortUpserted {
            partner: Partner::Mixpanel,
            cohort_id: s("m-1"),
            name: s("Churn risk"),
            created_at: s("2024-01-01T12:00:00Z"),
        },
        Change::CohortUpserted {
            partner: Partner::Tinyclues,
            cohort_id: s("t-1"),
            name: s("Gone soon"),
            created_at: s("2024-01-02T00:00:00-05:00"),
        },
        Change::CohortChanged {
            partner: Partner::Amplitude,
            cohort_id: s("a-1"),
            at_ms: at(1),
            resolved: ResolvedChanges {
                ops: ops(&[(0, false), (1, false), (3, false)]),
                matched: 3,
                unmatched: 1,
                refused_device_ids: 0,
                unmatched_sample: vec![s("user_id:nobody")],
            },
        },
        Change::CohortChanged {
            partner: Partner::Amplitude,
            cohort_id: s("a-1"),
            at_ms: at(2),
            resolved: ResolvedChanges {
                ops: ops(&[(1, true), (2, false)]),
                matched: 2,
                unmatched: 0,
                refused_device_ids: 1,
                unmatched_sample: vec![],
            },
        },
        Change::CohortChanged {
            partner: Partner::Mixpanel,
            cohort_id: s("m-1"),
            at_ms: at(60 * 24),
            resolved: ResolvedChanges {
                ops: ops(&[(2, false), (3, false)]),
                matched: 2,
                unmatched: 2,
                refused_device_ids: 0,
                unmatched_sample: vec![s("device_id:x"), s("alias:email:y")],
            },
        },
        Change::CohortChanged {
            partner: Partner::Tinyclues,
            cohort_id: s("t-1"),
            at_ms: at(3),
            resolved: ResolvedChanges {
                ops: ops(&[(0, false)]),
                matched: 1,
                unmatched: 0,
                refused_device_ids: 0,
                unmatched_sample: vec![],
            },
        },
        Change::CohortDeleted {
            partner: Partner::Tinyclues,
            cohort_id: s("t-1"),
            at_ms: at(4),
        },
        Change::KeyCreated {
            id: s("k-1"),
            partner: Partner::Amplitude,
            digest: [0xa5; 32],
            prefix: s("sk_a"),
            at_ms: at(5),
        },
        Change::KeyCreated {
            id: s("k-2"),
            partner: Partner::Heap,
            digest: std::array::from_fn(|i| i as u8),
            prefix: s("sk_h"),
            at_ms: at(6),
        },
        Change::KeyCreated {
            id: s("k-3"),
            partner: Partner::Kubit,
            digest: [0xff; 32],
            prefix: s("sk_k"),
            at_ms: at(7),
        },
        Change::KeyUsed {
            id: s("k-1"),
            at_ms: at(8),
        },
        Change::KeyUsed {
            id: s("k-2"),
            at_ms: at(9),
        },
        Change::KeyInvalidated {
            id: s("k-2"),
            at_ms: at(10),
        },
        Change::SegmentSaved {
            id: s("seg-1"),
            name: s("Every node"),
            filter: every_filter,
            at_ms: at(11),
        },
        Change::SegmentSaved {
            id: s("seg-2"),
            name: s("Amplitude fans"),
            filter: Filter::includes(Partner::Amplitude, "a-1"),
            at_ms: at(12),
        },
        Change::SegmentSaved {
            id: s("seg-2"),
            name: s("Amplitude fans, renamed"),
            filter: Filter::includes(Partner::Amplitude, "a-1").not(),
            at_ms: at(13),
        },
        Change::SegmentSaved {
            id: s("seg-3"),
            name: s("Short-lived"),
            filter: Filter::Bucket(BucketCmp::Lt(1)),
            at_ms: at(14),
        },
        Change::SegmentDeleted { id: s("seg-3") },
        Change::SeqsAbandoned {
            first: 40,
            last: 41,
        },
        Change::SeqsAbandoned {
            first: 40,
            last: 41,
        },
    ]);
    records
}

fn attr(name: &str, cmp: AttrCmp) -> Filter {
    Filter::Attribute {
        attribute: s(name),
        cmp,
    }
}

/// The records of the API keys log fixture: a user, two workspace API
/// keys (one with every scope, one with one), the first revoked.
fn api_key_records() -> Vec<Change> {
    vec![
        Change::WorkspaceCreated {
            seed: 7,
            at_ms: at(0),
        },
        Change::UserCreated {
            user: UserId(0),
            external_id: Some(s("u-0")),
            devices: vec![],
            aliases: vec![],
            bucket: 12,
        },
        Change::ApiKeyCreated {
            id: s("ak_00000000000000a1"),
            name: s("ops, every scope"),
            scopes: vec![
                Scope::WorkspaceAdmin,
                Scope::SegmentsRead,
                Scope::UsersWrite,
            ],
            digest: [0xa1; 32],
            at_ms: at(1),
        },
        Change::ApiKeyCreated {
            id: s("ak_00000000000000b2"),
            name: s("dashboard"),
            scopes: vec![Scope::SegmentsRead],
            digest: [0xb2; 32],
            at_ms: at(2),
        },
        Change::ApiKeyRevoked {
            id: s("ak_00000000000000a1"),
            at_ms: at(3),
        },
    ]
}

/// The records of the audit log fixture: a workspace created by the
/// server admin token, an API key it created, a data import key and a
/// user that key made, each followed by its audit entry (as the engine
/// logs them: the entry last, in the same commit).
fn audit_records() -> Vec<Change> {
    let entry = |seq: u64, minute: i64, actor: &str, action: &str, target: &str, detail: &str| {
        Change::Audited(AuditEntry {
            seq,
            at_ms: at(minute),
            actor: s(actor),
            action: s(action),
            target: s(target),
            detail: s(detail),
            address: s(if actor == "admin" {
                "127.0.0.1:50100"
            } else {
                "[2001:db8::7]:443"
            }),
            request_id: format!("req-{seq}"),
        })
    };
    vec![
        Change::WorkspaceCreated {
            seed: 7,
            at_ms: at(0),
        },
        entry(1, 0, "admin", "workspace.created", "golden", "{}"),
        Change::ApiKeyCreated {
            id: s("ak_00000000000000c3"),
            name: s("ops"),
            scopes: vec![Scope::WorkspaceAdmin, Scope::UsersWrite],
            digest: [0xc3; 32],
            at_ms: at(1),
        },
        entry(
            2,
            1,
            "admin",
            "api_key.created",
            "ak_00000000000000c3",
            r#"{"name":"ops","scopes":["workspace:admin","users:write"]}"#,
        ),
        Change::KeyCreated {
            id: s("key_00000000000000d4"),
            partner: Partner::Amplitude,
            digest: [0xd4; 32],
            prefix: s("sk_live_d4d4"),
            at_ms: at(2),
        },
        entry(
            3,
            2,
            "ak_00000000000000c3",
            "import_key.created",
            "key_00000000000000d4",
            r#"{"partner":"amplitude","prefix":"sk_live_d4d4"}"#,
        ),
        Change::Batch(vec![
            Change::UserCreated {
                user: UserId(0),
                external_id: Some(s("u-0")),
                devices: vec![],
                aliases: vec![],
                bucket: 12,
            },
            Change::DeviceAdded {
                user: UserId(0),
                device_id: s("d-0"),
            },
        ]),
        entry(
            4,
            3,
            "ak_00000000000000c3",
            "user.upserted",
            "user:0",
            r#"{"users_created":1,"devices_added":1}"#,
        ),
    ]
}

/// The records of the user lifecycle log fixture: users of every kind of
/// identifier in cohorts and with attribute values; one deleted alone,
/// two in one record; an anonymous user merged into an identified one
/// (cohorts, devices, aliases and a value move), an identified one merged
/// (its external_id dropped); an external_id renamed, and the freed
/// identifiers given to a new user; a deletion in a batch.
fn lifecycle_records() -> Vec<Change> {
    let user =
        |u: u32, ext: Option<&str>, dev: &str, alias: &str, bucket: u16| Change::UserCreated {
            user: UserId(u),
            external_id: ext.map(s),
            devices: vec![s(dev)],
            aliases: vec![(s("email"), s(alias))],
            bucket,
        };
    let set = |u: u32, name: &str, v: AttrValue| Change::AttributesSet {
        user: UserId(u),
        values: vec![(s(name), Some(v))],
    };
    vec![
        Change::WorkspaceCreated {
            seed: 11,
            at_ms: at(0),
        },
        user(0, Some("u-0"), "d-0", "0@x", 10),
        user(1, Some("u-1"), "d-1", "1@x", 9_999),
        user(2, None, "d-2", "2@x", 5_000),
        user(3, Some("u-3"), "d-3", "3@x", 0),
        user(4, Some("u-4"), "d-4", "4@x", 4_444),
        user(5, None, "d-5", "5@x", 7_000),
        Change::CohortUpserted {
            partner: Partner::Amplitude,
            cohort_id: s("a-1"),
            name: s("Everyone"),
            created_at: s("2024-01-01T12:00:00Z"),
        },
        Change::CohortChanged {
            partner: Partner::Amplitude,
            cohort_id: s("a-1"),
            at_ms: at(1),
            resolved: ResolvedChanges {
                ops: ops(&[(0, false), (1, false), (2, false), (5, false)]),
                matched: 4,
                unmatched: 0,
                refused_device_ids: 0,
                unmatched_sample: vec![],
            },
        },
        Change::CohortChanged {
            partner: Partner::Mixpanel,
            cohort_id: s("m-1"),
            at_ms: at(2),
            resolved: ResolvedChanges {
                ops: ops(&[(2, false), (3, false)]),
                matched: 2,
                unmatched: 0,
                refused_device_ids: 0,
                unmatched_sample: vec![],
            },
        },
        set(0, "plan", AttrValue::String(s("pro"))),
        set(2, "plan", AttrValue::String(s("trial"))),
        set(2, "age", AttrValue::Integer(31)),
        set(3, "age", AttrValue::Integer(40)),
        Change::SegmentSaved {
            id: s("seg-not"),
            name: s("Not in a-1"),
            filter: Filter::excludes(Partner::Amplitude, "a-1"),
            at_ms: at(3),
        },
        Change::UsersDeleted {
            users: vec![UserId(1)],
            at_ms: at(4),
        },
        Change::UsersDeleted {
            users: vec![UserId(5), UserId(0)],
            at_ms: at(5),
        },
        // Anonymous 2 into identified 3: 3 joins a-1, takes d-2, 2@x and
        // no plan value ("age" it has).
        Change::UserMerged {
            source: UserId(2),
            target: UserId(3),
            at_ms: at(6),
        },
        Change::ExternalIdRenamed {
            user: UserId(3),
            from: s("u-3"),
            to: s("three"),
        },
        // Identified 4 into 3: u-4 is dropped.
        Change::UserMerged {
            source: UserId(4),
            target: UserId(3),
            at_ms: at(7),
        },
        // The freed identifiers make a new user.
        Change::Batch(vec![
            user(6, Some("u-3"), "d-0", "1@x", 1),
            Change::UsersDeleted {
                users: vec![UserId(6)],
                at_ms: at(8),
            },
        ]),
        user(7, Some("u-0"), "d-1", "0@x", 2),
    ]
}

fn num(x: &str) -> Number {
    x.parse().expect("a number")
}

fn time(x: &str) -> Time {
    x.parse().expect("a time")
}

/// The records of the attributes log fixture: users, an attribute
/// declared, values of every type set (negative numbers, fractions, a time
/// before the epoch) and unset with null, and saved segments whose
/// filters hold every attribute comparison and both segment references.
fn attribute_records() -> Vec<Change> {
    let set = |user: u32, values: Vec<(&str, Option<AttrValue>)>| Change::AttributesSet {
        user: UserId(user),
        values: values.into_iter().map(|(n, v)| (s(n), v)).collect(),
    };
    let user = |u: u32, bucket: u16| Change::UserCreated {
        user: UserId(u),
        external_id: Some(format!("u-{u}")),
        devices: vec![],
        aliases: vec![],
        bucket,
    };
    let strings = Filter::Or(vec![
        attr("country", AttrCmp::Equals(s("BR"))),
        attr("country", AttrCmp::DoesNotEqual(s("DE"))),
        attr(
            "country",
            AttrCmp::IsAnyOf(vec![s("BR"), s("US"), s("a \"quoted\" value")]),
        ),
        attr("country", AttrCmp::MatchesRegex(s("^(B|U)[A-Z]$"))),
        attr("country", AttrCmp::StartsWith(s("B"))),
        attr("plan", AttrCmp::Exists),
        attr("plan", AttrCmp::DoesNotExist),
    ]);
    let numbers = Filter::Or(vec![
        attr("sessions", AttrCmp::Eq(num("-3"))),
        attr("sessions", AttrCmp::Ne(num("7"))),
        attr("lifetime_spend", AttrCmp::Lt(num("120.5"))),
        attr("lifetime_spend", AttrCmp::Le(num("-0.25"))),
        attr("lifetime_spend", AttrCmp::Gt(num("0.0001"))),
        attr("sessions", AttrCmp::Ge(num("-9223372036854775808"))),
        attr(
            "lifetime_spend",
            AttrCmp::Between(num("-10.5"), num("99.99")),
        ),
    ]);
    let others = Filter::Or(vec![
        attr("email_subscribed", AttrCmp::IsTrue),
        attr("email_subscribed", AttrCmp::IsFalse).not(),
        attr(
            "last_seen_at",
            AttrCmp::Before(time("2026-11-01T10:00:00Z")),
        ),
        attr("last_seen_at", AttrCmp::After(time("1969-12-31T23:59:59Z"))),
        attr("last_seen_at", AttrCmp::WithinLastDays(30)),
        attr("last_seen_at", AttrCmp::WithinLastHours(36)),
        attr("last_seen_at", AttrCmp::MoreThanDaysAgo(365)),
    ]);
    vec![
        Change::WorkspaceCreated {
            seed: 7,
            at_ms: at(0),
        },
        user(0, 17),
        user(1, 9_000),
        user(2, 4_242),
        Change::AttributeDeclared {
            name: s("plan"),
            ty: AttrType::String,
        },
        Change::AttributeDeclared {
            name: s("lifetime_spend"),
            ty: AttrType::Decimal,
        },
        set(
            0,
            vec![
                ("country", Some(AttrValue::String(s("BR")))),
                ("sessions", Some(AttrValue::Integer(-3))),
                ("lifetime_spend", Some(AttrValue::Decimal(1_205_000))),
                ("email_subscribed", Some(AttrValue::Boolean(true))),
                ("last_seen_at", Some(AttrValue::Time(1_793_527_200))),
            ],
        ),
        set(
            1,
            vec![
                ("country", Some(AttrValue::String(s("DE")))),
                ("sessions", Some(AttrValue::Integer(i64::MAX))),
                ("lifetime_spend", Some(AttrValue::Decimal(-2_500))),
                ("email_subscribed", Some(AttrValue::Boolean(false))),
                ("last_seen_at", Some(AttrValue::Time(-1))),
                ("plan", Some(AttrValue::String(s("pro")))),
            ],
        ),
        set(
            2,
            vec![
                ("sessions", Some(AttrValue::Integer(i64::MIN))),
                ("lifetime_spend", Some(AttrValue::Decimal(1))),
            ],
        ),
        // Unset with null, and set again.
        set(
            1,
            vec![
                ("plan", None),
                ("country", Some(AttrValue::String(s("US")))),
                ("email_subscribed", None),
            ],
        ),
        Change::Batch(vec![
            user(3, 0),
            set(3, vec![("country", Some(AttrValue::String(s("BR"))))]),
        ]),
        Change::SegmentSaved {
            id: s("seg-a"),
            name: s("Every attribute comparison"),
            filter: Filter::And(vec![strings, numbers, others]),
            at_ms: at(1),
        },
        Change::SegmentSaved {
            id: s("seg-b"),
            name: s("Inside and outside"),
            filter: Filter::Or(vec![
                Filter::Segment {
                    id: s("seg-a"),
                    included: true,
                },
                Filter::And(vec![
                    Filter::Segment {
                        id: s("seg-a"),
                        included: false,
                    },
                    attr("country", AttrCmp::Equals(s("BR"))),
                ]),
            ]),
            at_ms: at(2),
        },
    ]
}

/// Everything a workspace holds, as text: what a fixture must read as.
fn describe(ws: &Workspace) -> String {
    let mut out = format!("workspace {} seed {}\n", ws.name(), ws.users.seed());
    for u in 0..ws.users.len() {
        // Only a workspace that deleted users has holes: the older
        // fixtures' texts stay as they were written.
        let Some(r) = ws.users.get(UserId(u)) else {
            writeln!(out, "user {u}: deleted").unwrap();
            continue;
        };
        writeln!(out, "user {u}: {r:?}").unwrap();
        // Only for a workspace with attributes: the version 1 fixtures'
        // texts stay as they were written.
        if !ws.attributes.is_empty() {
            writeln!(out, "  attributes {:?}", ws.attributes.values_of(u)).unwrap();
        }
    }
    for a in ws.attributes.iter() {
        writeln!(
            out,
            "attribute {} {} users {}",
            a.name(),
            a.ty(),
            a.has().len()
        )
        .unwrap();
    }
    for c in ws.cohorts.iter_sorted() {
        let members: Vec<u32> = c.members.iter().expect("members read").collect();
        writeln!(
            out,
            "cohort {} name {:?} created_at {:?} members {members:?}\n  sync {:?}",
            c.key, c.name, c.created_at, c.sync
        )
        .unwrap();
    }
    for k in ws.keys.values() {
        writeln!(out, "key {k:?}").unwrap();
    }
    writeln!(out, "partners {:?}", ws.enabled_partners).unwrap();
    for (p, day, n) in ws.data_points_by_day() {
        writeln!(out, "data points {p} {day} {n}").unwrap();
    }
    for seg in ws.segments.values() {
        writeln!(out, "segment {seg:?}\n  text {}", seg.filter).unwrap();
    }
    // Only for a workspace with API keys, as attributes above.
    for k in ws.api_keys.values() {
        writeln!(out, "api key {k:?}").unwrap();
    }
    // Only for a workspace with audit entries, likewise.
    if ws.audit.next_seq() > 1 {
        writeln!(out, "audit next seq {}", ws.audit.next_seq()).unwrap();
    }
    for e in ws.audit.iter() {
        writeln!(out, "audit {e:?}").unwrap();
    }
    out
}

/// Replays the log fixture's bytes: its records as text (each re-encoded
/// to the same bytes), and the workspace they build.
fn replay(
    bytes: Vec<u8>,
    path: &str,
    record_kinds: &[&str],
    filter_kinds_held: &[&str],
) -> (String, Workspace, u64) {
    let (_, replay) = LogWriter::open(FaultyFile::from_disk(bytes)).expect("the log opens");
    assert!(replay.recovery.is_clean(), "{:?}", replay.recovery);
    let mut text = String::new();
    let mut ws = None;
    let mut seen = Vec::new();
    let mut last = 0;
    for r in &replay.records {
        let change = Change::decode(&r.payload, path, r.seq).expect("a record decodes");
        assert!(
            change.encode().expect("encodes") == r.payload,
            "record {} encodes to other bytes than it was read from",
            r.seq
        );
        kinds(&change, &mut seen);
        writeln!(text, "{} {change:?}", r.seq).unwrap();
        match (&mut ws, &change) {
            (None, Change::WorkspaceCreated { seed, .. }) => {
                ws = Some(Workspace::new("golden", *seed))
            }
            (None, other) => panic!("the first record is {other:?}"),
            (Some(ws), c) => {
                record::apply(ws, c).expect("a record applies");
            }
        }
        last = r.seq;
    }
    let missing: Vec<_> = record_kinds.iter().filter(|k| !seen.contains(k)).collect();
    assert!(missing.is_empty(), "the log fixture lacks {missing:?}");
    let ws = ws.expect("the log holds a workspace");
    let mut nodes = Vec::new();
    for seg in ws.segments.values() {
        filter_kinds(&seg.filter, &mut nodes);
    }
    let missing: Vec<_> = filter_kinds_held
        .iter()
        .filter(|k| !nodes.contains(k))
        .collect();
    assert!(
        missing.is_empty(),
        "the log fixture's segments lack {missing:?}"
    );
    text += "\n";
    text += &describe(&ws);
    (text, ws, last)
}

fn read(file: &str) -> Vec<u8> {
    std::fs::read(root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn read_text(file: &str) -> String {
    std::fs::read_to_string(root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// A golden snapshot's bytes opened as a workspace: mapped, checked
/// whole, loaded; with its log sequence number.
fn open_golden(bytes: &[u8], path: &str) -> (Arc<Snapshot>, Workspace, u64) {
    let snap = Arc::new(Snapshot::from_bytes(bytes.to_vec(), path).expect("opens"));
    snap.verify().expect("verifies");
    let ws = persist::load_workspace(snap.clone()).expect("loads");
    let seq = snap.meta().expect("meta").seq;
    (snap, ws, seq)
}

#[test]
fn the_version_1_log_fixture_replays_as_expected() {
    let (text, _, _) = replay(read(LOG), LOG, &EVERY_KIND, &EVERY_FILTER_KIND);
    assert_eq!(text, read_text(LOG_EXPECTED));
}

#[test]
fn the_version_1_snapshot_of_every_record_reads_as_expected() {
    let bytes = read(SNAP);
    let (snap, ws, seq) = open_golden(&bytes, SNAP);
    assert_eq!(
        format!("seq {seq}\n{}", describe(&ws)),
        read_text(SNAP_EXPECTED)
    );
    // Written again, it is a version 5 file that reads the same.
    let again = persist::write_snapshot(&ws, seq).expect("writes");
    let snap2 = Arc::new(Snapshot::from_bytes(again, "again").expect("opens"));
    assert_eq!((snap.version(), snap2.version()), (1, 5));
    let ws2 = persist::load_workspace(snap2).expect("loads");
    assert_eq!(describe(&ws2), describe(&ws));
}

#[test]
fn the_attributes_log_fixture_replays_as_expected() {
    let (text, _, _) = replay(
        read(ATTR_LOG),
        ATTR_LOG,
        &ATTRIBUTE_KINDS,
        &ATTRIBUTE_FILTER_KINDS,
    );
    assert_eq!(text, read_text(ATTR_LOG_EXPECTED));
}

#[test]
fn the_attributes_snapshot_reads_as_expected_and_writes_the_same_bytes() {
    let bytes = read(ATTR_SNAP);
    let (snap, ws, seq) = open_golden(&bytes, ATTR_SNAP);
    assert_eq!(snap.version(), 2);
    assert_eq!(
        format!("seq {seq}\n{}", describe(&ws)),
        read_text(ATTR_SNAP_EXPECTED)
    );
    // Written again: a version 5 file (packed dictionaries) that reads
    // the same; fixtures/snapshot/v4-* pin the version 4 bytes.
    let again = persist::write_snapshot(&ws, seq).expect("writes");
    rewritten_reads_the_same(&ws, again, &bytes);
    // And the log fixture builds the workspace it holds.
    let (_, from_log, last) = replay(
        read(ATTR_LOG),
        ATTR_LOG,
        &ATTRIBUTE_KINDS,
        &ATTRIBUTE_FILTER_KINDS,
    );
    assert_eq!((describe(&from_log), last), (describe(&ws), seq));
}

#[test]
fn the_api_keys_log_fixture_replays_as_expected() {
    let (text, _, _) = replay(read(KEYS_LOG), KEYS_LOG, &API_KEY_KINDS, &[]);
    assert_eq!(text, read_text(KEYS_LOG_EXPECTED));
}

#[test]
fn the_api_keys_snapshot_reads_as_expected_and_writes_the_same_bytes() {
    let bytes = read(KEYS_SNAP);
    let (_, ws, seq) = open_golden(&bytes, KEYS_SNAP);
    assert_eq!(
        format!("seq {seq}\n{}", describe(&ws)),
        read_text(KEYS_SNAP_EXPECTED)
    );
    let again = persist::write_snapshot(&ws, seq).expect("writes");
    rewritten_reads_the_same(&ws, again, &bytes);
    let (_, from_log, last) = replay(read(KEYS_LOG), KEYS_LOG, &API_KEY_KINDS, &[]);
    assert_eq!((describe(&from_log), last), (describe(&ws), seq));
}

#[test]
fn the_audit_log_fixture_replays_as_expected() {
    let (text, ws, _) = replay(read(AUDIT_LOG), AUDIT_LOG, &AUDIT_KINDS, &[]);
    assert_eq!(text, read_text(AUDIT_LOG_EXPECTED));
    let seqs: Vec<u64> = ws.audit.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(ws.audit.next_seq(), 5);
}

#[test]
fn the_audit_snapshot_reads_as_expected_and_writes_the_same_bytes() {
    let bytes = read(AUDIT_SNAP);
    let (_, ws, seq) = open_golden(&bytes, AUDIT_SNAP);
    assert_eq!(
        format!("seq {seq}\n{}", describe(&ws)),
        read_text(AUDIT_SNAP_EXPECTED)
    );
    let again = persist::write_snapshot(&ws, seq).expect("writes");
    rewritten_reads_the_same(&ws, again, &bytes);
    let (_, from_log, last) = replay(read(AUDIT_LOG), AUDIT_LOG, &AUDIT_KINDS, &[]);
    assert_eq!((describe(&from_log), last), (describe(&ws), seq));
}

/// The snapshots written before the audit log read with none, and their
/// meta sections end where they did (nothing is appended for an empty
/// audit log).
#[test]
fn snapshots_before_the_audit_log_read_with_an_empty_one() {
    for path in [SNAP, ATTR_SNAP, KEYS_SNAP] {
        let snap = Arc::new(Snapshot::from_bytes(read(path), path).expect("opens"));
        let ws = persist::load_workspace(snap).expect("loads");
        assert!(ws.audit.is_empty(), "{path}");
        assert_eq!(ws.audit.next_seq(), 1, "{path}");
    }
}

/// The cohorts' size histories, as text (not part of [`describe`], whose
/// texts the fixtures written before the histories hold).
fn describe_history(ws: &Workspace) -> String {
    let mut out = String::new();
    for c in ws.cohorts.iter_sorted() {
        if !c.size_history.is_empty() {
            writeln!(out, "size history {} {:?}", c.key, c.size_history).unwrap();
        }
    }
    out
}

/// A snapshot with cohort size histories (the meta section's trailing
/// `HistoryExt`, after empty `MetaExt`, `ApiKeysExt` and `AuditExt`):
/// written from the every-record log's replay, it reads as its text says,
/// writes back to the same bytes, and holds what the replay derives.
#[test]
fn the_size_history_snapshot_reads_as_expected_and_writes_the_same_bytes() {
    let bytes = read(HISTORY_SNAP);
    let (snap, ws, seq) = open_golden(&bytes, HISTORY_SNAP);
    assert!(!snap.meta().expect("meta").history.cohorts.is_empty());
    assert_eq!(
        format!("seq {seq}\n{}{}", describe(&ws), describe_history(&ws)),
        read_text(HISTORY_SNAP_EXPECTED)
    );
    let again = persist::write_snapshot_at(&ws, seq, 4).expect("writes");
    assert!(
        again == bytes,
        "the size history snapshot writes to other bytes than it was read from"
    );
    // Written by this build: a version 5 file with the same histories.
    let v5 = Snapshot::from_bytes(persist::write_snapshot(&ws, seq).expect("writes"), "v5")
        .expect("opens");
    v5.verify().expect("verifies");
    assert_eq!(v5.version(), 5);
    let ws5 = persist::load_workspace(Arc::new(v5)).expect("loads");
    assert_eq!(
        (describe(&ws5), describe_history(&ws5)),
        (describe(&ws), describe_history(&ws))
    );
    let (_, from_log, last) = replay(read(LOG), LOG, &EVERY_KIND, &[]);
    assert_eq!(
        (describe(&from_log), describe_history(&from_log), last),
        (describe(&ws), describe_history(&ws), seq)
    );
}

/// The snapshots written before the size histories read with none.
#[test]
fn snapshots_before_the_size_histories_read_with_none() {
    for path in [
        SNAP,
        ATTR_SNAP,
        KEYS_SNAP,
        AUDIT_SNAP,
        LIFE_SNAP,
        V4_LIFE_SNAP,
        V4_IDS_SNAP,
    ] {
        let snap = Arc::new(Snapshot::from_bytes(read(path), path).expect("opens"));
        assert!(
            snap.meta().expect("meta").history.cohorts.is_empty(),
            "{path}"
        );
        let ws = persist::load_workspace(snap).expect("loads");
        assert_eq!(describe_history(&ws), "", "{path}");
    }
}

/// Writes the size history fixture (`cargo test --test it
/// write_the_size_history_fixture -- --ignored`): once, when it was
/// added; never rewritten.
#[test]
#[ignore = "writes the size history fixture in fixtures/snapshot; run by hand"]
fn write_the_size_history_fixture() {
    let (_, ws, seq) = replay(read(LOG), LOG, &EVERY_KIND, &[]);
    assert!(!describe_history(&ws).is_empty());
    std::fs::write(
        root().join(HISTORY_SNAP),
        persist::write_snapshot(&ws, seq).unwrap(),
    )
    .unwrap();
    let snap = Arc::new(Snapshot::open(&root().join(HISTORY_SNAP)).unwrap());
    let loaded = persist::load_workspace(snap).unwrap();
    std::fs::write(
        root().join(HISTORY_SNAP_EXPECTED),
        format!(
            "seq {seq}\n{}{}",
            describe(&loaded),
            describe_history(&loaded)
        ),
    )
    .unwrap();
}

/// Writes the audit fixtures (`cargo test --test it
/// write_the_audit_fixtures -- --ignored`): once, when they were added;
/// never rewritten.
#[test]
#[ignore = "writes the audit fixtures in fixtures/log and fixtures/snapshot; run by hand"]
fn write_the_audit_fixtures() {
    let file = FaultyFile::named("golden-audit");
    let log = LogWriter::create(file.clone(), 1).unwrap();
    for c in audit_records() {
        log.append(&c.encode().unwrap()).unwrap();
    }
    drop(log);
    let bytes = file.contents();
    std::fs::write(root().join(AUDIT_LOG), &bytes).unwrap();
    let (text, ws, seq) = replay(bytes, AUDIT_LOG, &AUDIT_KINDS, &[]);
    std::fs::write(root().join(AUDIT_LOG_EXPECTED), text).unwrap();
    std::fs::write(
        root().join(AUDIT_SNAP),
        persist::write_snapshot(&ws, seq).unwrap(),
    )
    .unwrap();
    let snap = Arc::new(Snapshot::open(&root().join(AUDIT_SNAP)).unwrap());
    let loaded = persist::load_workspace(snap).unwrap();
    std::fs::write(
        root().join(AUDIT_SNAP_EXPECTED),
        format!("seq {seq}\n{}", describe(&loaded)),
    )
    .unwrap();
}

/// Writes the API keys fixtures (`cargo test --test it
/// write_the_api_key_fixtures -- --ignored`): once, when they were added;
/// never rewritten.
#[test]
#[ignore = "writes the API keys fixtures in fixtures/log and fixtures/snapshot; run by hand"]
fn write_the_api_key_fixtures() {
    let file = FaultyFile::named("golden-api-keys");
    let log = LogWriter::create(file.clone(), 1).unwrap();
    for c in api_key_records() {
        log.append(&c.encode().unwrap()).unwrap();
    }
    drop(log);
    let bytes = file.contents();
    std::fs::write(root().join(KEYS_LOG), &bytes).unwrap();
    let (text, ws, seq) = replay(bytes, KEYS_LOG, &API_KEY_KINDS, &[]);
    std::fs::write(root().join(KEYS_LOG_EXPECTED), text).unwrap();
    std::fs::write(
        root().join(KEYS_SNAP),
        persist::write_snapshot(&ws, seq).unwrap(),
    )
    .unwrap();
    let snap = Arc::new(Snapshot::open(&root().join(KEYS_SNAP)).unwrap());
    let loaded = persist::load_workspace(snap).unwrap();
    std::fs::write(
        root().join(KEYS_SNAP_EXPECTED),
        format!("seq {seq}\n{}", describe(&loaded)),
    )
    .unwrap();
}

/// Writes the attributes fixtures (`cargo test --test it
/// write_the_attribute_fixtures -- --ignored`): once, when they were
/// added; like the version 1 fixtures, never rewritten.
#[test]
#[ignore = "writes the attributes fixtures in fixtures/log and fixtures/snapshot; run by hand"]
fn write_the_attribute_fixtures() {
    let file = FaultyFile::named("golden-attributes");
    let log = LogWriter::create(file.clone(), 1).unwrap();
    for c in attribute_records() {
        log.append(&c.encode().unwrap()).unwrap();
    }
    drop(log);
    let bytes = file.contents();
    std::fs::write(root().join(ATTR_LOG), &bytes).unwrap();
    let (text, ws, seq) = replay(bytes, ATTR_LOG, &ATTRIBUTE_KINDS, &ATTRIBUTE_FILTER_KINDS);
    std::fs::write(root().join(ATTR_LOG_EXPECTED), text).unwrap();
    std::fs::write(
        root().join(ATTR_SNAP),
        persist::write_snapshot(&ws, seq).unwrap(),
    )
    .unwrap();
    let snap = Arc::new(Snapshot::open(&root().join(ATTR_SNAP)).unwrap());
    let loaded = persist::load_workspace(snap).unwrap();
    std::fs::write(
        root().join(ATTR_SNAP_EXPECTED),
        format!("seq {seq}\n{}", describe(&loaded)),
    )
    .unwrap();
}

/// Writes the fixtures anew: `cargo test --test it write_the_golden_fixtures
/// -- --ignored`. Only for a new format version: a fixture of a version
/// segq writes is never rewritten (old files must keep reading), a new
/// record kind gets a fixture of its own beside these.
#[test]
#[ignore = "writes fixtures/log and fixtures/snapshot; run by hand for a new format version"]
fn write_the_golden_fixtures() {
    let file = FaultyFile::named("golden");
    let log = LogWriter::create(file.clone(), 1).unwrap();
    for c in every_record() {
        log.append(&c.encode().unwrap()).unwrap();
    }
    drop(log);
    let bytes = file.contents();
    std::fs::create_dir_all(root().join("fixtures/log")).unwrap();
    std::fs::write(root().join(LOG), &bytes).unwrap();
    let (text, ws, seq) = replay(bytes, LOG, &EVERY_KIND, &EVERY_FILTER_KIND);
    std::fs::write(root().join(LOG_EXPECTED), text).unwrap();
    std::fs::write(
        root().join(SNAP),
        persist::write_snapshot(&ws, seq).unwrap(),
    )
    .unwrap();
    let snap = Arc::new(Snapshot::open(&root().join(SNAP)).unwrap());
    let loaded = persist::load_workspace(snap).unwrap();
    std::fs::write(
        root().join(SNAP_EXPECTED),
        format!("seq {seq}\n{}", describe(&loaded)),
    )
    .unwrap();
}

/// The bytes of a `SegmentSaved` record whose filter is `nots` NOTs around
/// a bucket test (tags as `engine::persist::record` writes them).
fn segment_saved_nesting(nots: usize) -> Vec<u8> {
    let mut bytes = vec![persist::record::Record::SEGMENT_SAVED as u8];
    bytes.extend([1, b's', 1, b'n']); // id "s", name "n"
    bytes.extend(vec![segq::snapshot::meta::PFilter::NOT as u8; nots]);
    bytes.extend([segq::snapshot::meta::PFilter::BUCKET as u8, 0, 5]);
    bytes.push(0); // at_ms
    bytes
}

#[test]
fn a_record_nested_without_end_is_corrupt_not_a_stack_overflow() {
    assert!(matches!(
        Change::decode(&segment_saved_nesting(10), LOG, 1),
        Ok(Change::SegmentSaved { .. })
    ));
    for bytes in [
        segment_saved_nesting(1_000_000),
        // A batch of one batch of one batch ...
        [persist::record::Record::BATCH as u8, 1].repeat(1_000_000),
    ] {
        match Change::decode(&bytes, LOG, 7) {
            Err(e @ segq::Error::Corrupt { .. }) => {
                let e = e.to_string();
                assert!(e.contains("record 7 does not decode"), "{e}");
                assert!(e.contains("nested more than"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn the_deepest_filters_the_parsers_accept_are_logged_and_read_back() {
    let leaf = "random_bucket < 5";
    // Each level of parentheses makes an Or over an And: two levels of the
    // tree per level of the text.
    let text = format!(
        "{}{leaf}{}",
        "(all or all and ".repeat(segq::segment::text::MAX_DEPTH),
        ")".repeat(segq::segment::text::MAX_DEPTH)
    );
    let nots = format!("{}{leaf}", "not ".repeat(segq::segment::text::MAX_DEPTH));
    for filter in [text, nots] {
        let filter = segq::segment::parse(&filter).expect("parses");
        let change = Change::SegmentSaved {
            id: s("deep"),
            name: s("deep"),
            filter,
            at_ms: 0,
        };
        let bytes = change.encode().expect("encodes");
        assert_eq!(Change::decode(&bytes, LOG, 1).expect("decodes"), change);
    }
}

#[test]
fn the_users_lifecycle_log_fixture_replays_as_expected() {
    let (text, _, _) = replay(read(LIFE_LOG), LIFE_LOG, &LIFECYCLE_KINDS, &[]);
    assert_eq!(text, read_text(LIFE_LOG_EXPECTED));
}

#[test]
fn the_users_lifecycle_snapshot_reads_as_expected_and_writes_the_same_bytes() {
    let bytes = read(LIFE_SNAP);
    let (snap, ws, seq) = open_golden(&bytes, LIFE_SNAP);
    assert_eq!(snap.version(), 3);
    assert_eq!(
        format!("seq {seq}\n{}", describe(&ws)),
        read_text(LIFE_SNAP_EXPECTED)
    );
    let again = persist::write_snapshot(&ws, seq).expect("writes");
    rewritten_reads_the_same(&ws, again, &bytes);
    let (_, from_log, last) = replay(read(LIFE_LOG), LIFE_LOG, &LIFECYCLE_KINDS, &[]);
    assert_eq!((describe(&from_log), last), (describe(&ws), seq));
    // Nothing of a deleted user is in its dictionaries: every identifier
    // they held is free, or held by whoever holds it now.
    for (r, holder) in [
        (segq::UserRef::ExternalId(s("u-1")), None),
        (segq::UserRef::ExternalId(s("u-4")), None),
        (segq::UserRef::ExternalId(s("u-3")), None),
        (segq::UserRef::ExternalId(s("u-0")), Some(UserId(7))),
        (segq::UserRef::DeviceId(s("d-1")), Some(UserId(7))),
        (segq::UserRef::DeviceId(s("d-2")), Some(UserId(3))),
        (segq::UserRef::DeviceId(s("d-5")), None),
    ] {
        assert_eq!(snap.lookup(&r).expect("looks up"), holder, "{r}");
    }
}

/// Writes the users lifecycle fixtures (`cargo test --test it
/// write_the_users_lifecycle_fixtures -- --ignored`): once, when they
/// were added; never rewritten.
#[test]
#[ignore = "writes the users lifecycle fixtures in fixtures/log and fixtures/snapshot; run by hand"]
fn write_the_users_lifecycle_fixtures() {
    let file = FaultyFile::named("golden-users-lifecycle");
    let log = LogWriter::create(file.clone(), 1).unwrap();
    for c in lifecycle_records() {
        log.append(&c.encode().unwrap()).unwrap();
    }
    drop(log);
    let bytes = file.contents();
    std::fs::write(root().join(LIFE_LOG), &bytes).unwrap();
    let (text, ws, seq) = replay(bytes, LIFE_LOG, &LIFECYCLE_KINDS, &[]);
    std::fs::write(root().join(LIFE_LOG_EXPECTED), text).unwrap();
    std::fs::write(
        root().join(LIFE_SNAP),
        persist::write_snapshot(&ws, seq).unwrap(),
    )
    .unwrap();
    let snap = Arc::new(Snapshot::open(&root().join(LIFE_SNAP)).unwrap());
    let loaded = persist::load_workspace(snap).unwrap();
    std::fs::write(
        root().join(LIFE_SNAP_EXPECTED),
        format!("seq {seq}\n{}", describe(&loaded)),
    )
    .unwrap();
}

/// A workspace whose identifiers stress the compact dictionaries: unicode,
/// 1,024-byte ids, long shared prefixes, several devices and aliases per
/// user, anonymous users, and users with no identifier at all.
fn identifiers_workspace() -> Workspace {
    let mut ws = Workspace::new("golden", 17);
    let long = "p".repeat(1_020);
    for u in 0..70u32 {
        let external_id = match u % 5 {
            0 => None,
            1 => Some(format!("{long}{u:04}")),
            2 => Some(format!("ünïcødé-用户-{u}")),
            _ => Some(format!("u{u}")),
        };
        let devices = match u % 7 {
            0 => vec![],
            3 => vec![format!("d{u}"), format!("d{u}-b"), format!("{long}d{u:03}")],
            _ => vec![format!("d{u}")],
        };
        let aliases = if u % 4 == 1 {
            vec![
                ("email".to_string(), format!("{u}@example.com")),
                ("phône".to_string(), format!("+33 {u}")),
            ]
        } else {
            vec![]
        };
        if u == 69 {
            // The last user holds nothing: past every dictionary's end.
            ws.users
                .create(segq::users::NewUser {
                    bucket: Some(1),
                    ..Default::default()
                })
                .expect("creates");
            continue;
        }
        ws.users
            .create(segq::users::NewUser {
                external_id,
                devices,
                aliases,
                bucket: Some((u * 137 % 10_000) as u16),
            })
            .expect("creates");
    }
    ws
}

/// What the identifier look-ups of a snapshot answer, as text.
fn describe_lookups(snap: &Snapshot, ws: &Workspace) -> String {
    let mut out = String::new();
    for u in 0..ws.users.len() {
        let r = ws.users.get(UserId(u)).expect("a user");
        let mut refs: Vec<segq::UserRef> = Vec::new();
        refs.extend(
            r.external_id
                .iter()
                .map(|e| segq::UserRef::ExternalId(e.to_string())),
        );
        refs.extend(
            r.devices
                .iter()
                .map(|d| segq::UserRef::DeviceId(d.to_string())),
        );
        refs.extend(r.aliases.iter().map(|(l, n)| segq::UserRef::Alias {
            label: l.to_string(),
            name: n.to_string(),
        }));
        for r in refs {
            assert_eq!(snap.lookup(&r).expect("looks up"), Some(UserId(u)), "{r}");
        }
        writeln!(
            out,
            "user {u}: {:?}",
            snap.external_id(UserId(u)).expect("reads")
        )
        .unwrap();
    }
    for unknown in ["", "u0", "u", "d", "d3-", "x"] {
        assert_eq!(
            snap.lookup(&segq::UserRef::ExternalId(unknown.into()))
                .expect("looks up"),
            None
        );
        assert_eq!(
            snap.lookup(&segq::UserRef::DeviceId(unknown.into()))
                .expect("looks up"),
            None
        );
    }
    out
}

#[test]
fn the_version_4_users_lifecycle_snapshot_reads_as_the_version_3_one_and_writes_the_same_bytes() {
    let bytes = read(V4_LIFE_SNAP);
    let (snap, ws, seq) = open_golden(&bytes, V4_LIFE_SNAP);
    assert_eq!(snap.version(), 4);
    let text = format!("seq {seq}\n{}", describe(&ws));
    assert_eq!(text, read_text(V4_LIFE_SNAP_EXPECTED));
    // The same workspace as the version 3 fixture holds.
    assert_eq!(text, read_text(LIFE_SNAP_EXPECTED));
    let again = persist::write_snapshot_at(&ws, seq, 4).expect("writes");
    assert!(
        again == bytes,
        "the version 4 users lifecycle snapshot writes to other bytes than it was read from"
    );
    // This build writes it as the version 5 fixture.
    let v5 = persist::write_snapshot(&ws, seq).expect("writes");
    assert!(
        v5 == read(V5_LIFE_SNAP),
        "the version 4 users lifecycle snapshot is written again as other bytes than the version 5 fixture"
    );
}

#[test]
fn the_version_4_identifiers_snapshot_reads_as_expected_and_writes_the_same_bytes() {
    let bytes = read(V4_IDS_SNAP);
    let (snap, ws, _) = open_golden(&bytes, V4_IDS_SNAP);
    assert_eq!(snap.version(), 4);
    let text = format!("{}\n{}", describe(&ws), describe_lookups(&snap, &ws));
    assert_eq!(text, read_text(V4_IDS_SNAP_EXPECTED));
    // It holds the workspace it was written from.
    assert_eq!(describe(&ws), describe(&identifiers_workspace()));
    let again = persist::write_snapshot_at(&ws, 0, 4).expect("writes");
    assert!(
        again == bytes,
        "the version 4 identifiers snapshot writes to other bytes than it was read from"
    );
    let v5 = persist::write_snapshot(&ws, 0).expect("writes");
    assert!(
        v5 == read(V5_IDS_SNAP),
        "the version 4 identifiers snapshot is written again as other bytes than the version 5 fixture"
    );
}

/// A version 5 fixture's text: the identifiers one with its look-ups, the
/// users lifecycle one with its log seq (as their version 4 texts).
fn describe_identifier_fixture(path: &str, snap: &Snapshot, ws: &Workspace) -> String {
    if path == V5_IDS_SNAP {
        format!("{}\n{}", describe(ws), describe_lookups(snap, ws))
    } else {
        let seq = snap.meta().expect("meta").seq;
        format!("seq {seq}\n{}", describe(ws))
    }
}

/// The version 5 fixtures (packed dictionaries) hold the same workspaces
/// as the version 4 ones, read as their texts say, verify whole, and write
/// back to the same bytes.
#[test]
fn the_version_5_snapshots_read_as_the_version_4_ones_and_write_the_same_bytes() {
    for (path, expected, v4_expected) in [
        (V5_LIFE_SNAP, V5_LIFE_SNAP_EXPECTED, V4_LIFE_SNAP_EXPECTED),
        (V5_IDS_SNAP, V5_IDS_SNAP_EXPECTED, V4_IDS_SNAP_EXPECTED),
    ] {
        let bytes = read(path);
        let (snap, ws, seq) = open_golden(&bytes, path);
        assert_eq!(snap.version(), 5);
        let text = describe_identifier_fixture(path, &snap, &ws);
        assert_eq!(text, read_text(expected), "{path}");
        assert_eq!(text, read_text(v4_expected), "{path}");
        let again = persist::write_snapshot(&ws, seq).expect("writes");
        assert!(
            again == bytes,
            "{path} writes to other bytes than it was read from"
        );
    }
}

/// Writes the version 5 fixtures (`cargo test --test it
/// write_the_version_5_fixtures -- --ignored`) from the version 4 ones:
/// once, when the packed dictionaries were added; never rewritten.
#[test]
#[ignore = "writes the version 5 fixtures in fixtures/snapshot; run by hand"]
fn write_the_version_5_fixtures() {
    for (from, to, expected) in [
        (V4_LIFE_SNAP, V5_LIFE_SNAP, V5_LIFE_SNAP_EXPECTED),
        (V4_IDS_SNAP, V5_IDS_SNAP, V5_IDS_SNAP_EXPECTED),
    ] {
        let snap = Arc::new(Snapshot::open(&root().join(from)).unwrap());
        let seq = snap.meta().unwrap().seq;
        let ws = persist::load_workspace(snap).unwrap();
        std::fs::write(root().join(to), persist::write_snapshot(&ws, seq).unwrap()).unwrap();
        let snap = Arc::new(Snapshot::open(&root().join(to)).unwrap());
        let loaded = persist::load_workspace(snap.clone()).unwrap();
        let text = describe_identifier_fixture(to, &snap, &loaded);
        std::fs::write(root().join(expected), text).unwrap();
    }
}

/// Writes the version 4 fixtures (`cargo test --test it
/// write_the_version_4_fixtures -- --ignored`): once, when the compact
/// dictionaries were added; never rewritten.
#[test]
#[ignore = "writes the version 4 fixtures in fixtures/snapshot; run by hand"]
fn write_the_version_4_fixtures() {
    let (_, ws, seq) = replay(read(LIFE_LOG), LIFE_LOG, &LIFECYCLE_KINDS, &[]);
    std::fs::write(
        root().join(V4_LIFE_SNAP),
        persist::write_snapshot(&ws, seq).unwrap(),
    )
    .unwrap();
    let snap = Arc::new(Snapshot::open(&root().join(V4_LIFE_SNAP)).unwrap());
    let loaded = persist::load_workspace(snap).unwrap();
    std::fs::write(
        root().join(V4_LIFE_SNAP_EXPECTED),
        format!("seq {seq}\n{}", describe(&loaded)),
    )
    .unwrap();

    let ws = identifiers_workspace();
    std::fs::write(
        root().join(V4_IDS_SNAP),
        persist::write_snapshot(&ws, 0).unwrap(),
    )
    .unwrap();
    let snap = Arc::new(Snapshot::open(&root().join(V4_IDS_SNAP)).unwrap());
    let loaded = persist::load_workspace(snap.clone()).unwrap();
    std::fs::write(
        root().join(V4_IDS_SNAP_EXPECTED),
        format!(
            "{}\n{}",
            describe(&loaded),
            describe_lookups(&snap, &loaded)
        ),
    )
    .unwrap();
}
